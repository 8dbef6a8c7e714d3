"""`lb split`: the weighted splits (A/B tests, canaries) of the running daemon,
shown with each variant's figures and changed live. A change moves only the
users it must, is in force at the workers' next request, without a reload, and
is kept in global.state_file, so a restart or reload keeps it (docs/splits.md).
`show -c FILE` reads a config file instead of asking the daemon."""

import click

from lb import config
from lb.cli.app import EXIT_USAGE, App, print_json


@click.group()
def split() -> None:
    """Show and change the weighted splits of the running lb."""


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}ms"


def split_lines(splits: list[dict]) -> list[str]:
    lines = []
    for s in splits:
        override = f", override {s['override']}" if s.get("override") else ""
        lines.append(f"{s['name']}: sticky {s['sticky']}{override}")
        lines.append(f"  {'POOL':<20} {'WEIGHT':>6} {'REQUESTS':>10} {'5XX':>8} {'P50':>9} {'P99':>9}")
        for v in s["variants"]:
            req = "-" if v.get("requests") is None else str(v["requests"])
            err = "-" if v.get("5xx") is None else str(v["5xx"])
            lines.append(f"  {v['pool']:<20} {v['weight']:>5}% {req:>10} {err:>8} {_ms(v.get('p50_ms')):>9} "
                         f"{_ms(v.get('p99_ms')):>9}")
    return lines


@split.command()
@click.argument("name", required=False)
@click.option("-c", "--config", "config_path", metavar="FILE",
              help="Read the splits of this config file instead of asking the running lb (no figures then).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON on stdout.")
@click.pass_obj
def show(app: App, name: str | None, config_path: str | None, as_json: bool) -> None:
    """Every split, or split NAME (a route's name, or a listener's for its own
    split): each variant's weight, requests, 5xx answers and the last
    minute's p50 and p99."""
    if config_path:
        from lb.config.splits import config_splits

        try:
            cfg = config.load(config_path)
        except config.ConfigError as e:
            click.echo(f"error: {e}", err=True)
            raise SystemExit(EXIT_USAGE)
        splits = [{"name": s.name, "sticky": s.sticky, "override": s.override,
                   "override_allow": list(s.override_allow),
                   "variants": [{"pool": p, "weight": w} for p, w in s.variants]}
                  for s in config_splits(cfg.listeners) if name is None or s.name == name]
        if name is not None and not splits:
            click.echo(f"error: {config_path} has no split {name!r}", err=True)
            raise SystemExit(1)
        result = {"splits": splits}
    else:
        result = app.call("split.show", {"name": name} if name else {})
    if as_json:
        print_json(result)
        return
    click.echo("\n".join(split_lines(result["splits"])) if result["splits"] else "no splits")


def parse_pairs(pairs: tuple[str, ...]) -> dict:
    weights = {}
    for pair in pairs:
        pool, sep, value = pair.partition("=")
        if not sep or not pool:
            raise click.BadParameter(f"{pair!r} is not POOL=WEIGHT", param_hint="WEIGHTS")
        try:
            weights[pool] = int(value.rstrip("%"))
        except ValueError:
            raise click.BadParameter(f"{pair!r}: the weight is a whole percent", param_hint="WEIGHTS") from None
    return weights


@split.command("set")
@click.argument("name")
@click.argument("weights", nargs=-1, required=True, metavar="POOL=WEIGHT...")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def set_(app: App, name: str, weights: tuple[str, ...], as_json: bool) -> None:
    """Set the weights (whole percents summing to 100) of split NAME's
    variants; one variant left out takes the rest: `lb split set api
    canary=25`. Only users of the variants that lose weight move, into those
    that gain it."""
    result = app.call("split.set", {"name": name, "weights": parse_pairs(weights)})
    if as_json:
        print_json(result)
        return
    click.echo(f"{result['name']}: " + " ".join(f"{v['pool']}={v['weight']}" for v in result["variants"]))
