"""`lb limits`: the rate and concurrency limits ([limits.NAME]) of the running
daemon: their decisions, and a limit's most active keys, read from the tables
the workers share. `show -c FILE` reads a config file instead (no counts)."""

import sys

import click

from lb import config
from lb.cli import render
from lb.cli.app import EXIT_USAGE, LIMIT, App, print_json


@click.group()
def limits() -> None:
    """Show the rate and concurrency limits of the running lb."""


@limits.command()
@click.argument("name", required=False, type=LIMIT)
@click.option("-n", "--top", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="How many keys to list, most active first.")
@click.option("-c", "--config", "config_path", metavar="FILE",
              help="Read the limits of this config file instead of asking the running lb (no counts then).")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def show(app: App, name: str | None, top: int, config_path: str | None, as_json: bool) -> None:
    """Every limit with its decisions (admitted, refused over the rate or over
    `concurrent`, requests without the key, keys that found the table full,
    evictions), or limit NAME and its top keys by current rate: requests per
    period over a sliding window, refusals, requests in flight, and how many
    requests the key may still send at once."""
    if config_path:
        result = _show_from_config(config_path, name)
    else:
        args = {"name": name, "top": top} if name is not None else {}
        result = app.call("limits.show", args)
    if as_json:
        print_json(result)
        return
    items = result.get("limits") or []
    lines = render.limit_lines(items)
    if name is not None and not config_path:
        for item in items:
            lines += [""] + render.limit_key_lines(item)
    click.echo("\n".join(lines))


def _show_from_config(path: str, name: str | None) -> dict:
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    if name is not None and name not in cfg.limits:
        click.echo(f"error: {path} has no limit {name!r} (limits: {', '.join(cfg.limits) or 'none'})", err=True)
        sys.exit(1)

    class _Gen:  # what lb.control.limits.users reads of a generation
        config = cfg

    from lb.control.limits import users

    out = []
    for lname, lim in cfg.limits.items():
        if name is not None and lname != name:
            continue
        out.append({"name": lname, "key": lim.key, "rate": lim.rate_text or None, "burst": lim.burst,
                    "concurrent": lim.concurrent, "dry_run": lim.dry_run, "on_full": lim.on_full,
                    "capacity": lim.capacity, "used_by": users(_Gen, lname), "counts": {}})
    return {"limits": out}
