"""`lb pool`: commands about pools. `list` and `show` ask the running daemon;
`simulate` previews a change to a pool of a config file; `fingerprint` asks
either."""

import json
import sys

import click

from lb import config
from lb.cli import render
from lb.cli.app import POOL, App, config_option, print_json

EXIT_CONFIG = 2  # the project's exit code for usage and config errors


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_CONFIG)


@click.group()
def pool() -> None:
    """Commands about pools of backends."""


@pool.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def list_pools(app: App, as_json: bool) -> None:
    """The pools of the running lb: algorithm, backends, how many are up,
    active connections."""
    result = app.call("pool.list")
    if as_json:
        print_json(result)
        return
    click.echo("\n".join(render.pool_list_lines(result.get("pools") or [])))


@pool.command()
@click.argument("pool_name", metavar="POOL", type=POOL)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def show(app: App, pool_name: str, as_json: bool) -> None:
    """One pool of the running lb, backend by backend, as `lb status` shows it."""
    result = app.call("pool.show", {"pool": pool_name})
    if as_json:
        print_json(result)
        return
    click.echo("\n".join(render.pool_lines(pool_name, result)))


@pool.command()
@config_option("Config file with the pool")
@click.argument("pool_name", metavar="POOL")
@click.option(
    "--remove", "remove", metavar="NAME", multiple=True,
    help="Remove this backend (by name or address). Repeatable.",
)
@click.option(
    "--add", "add", metavar="ADDR[=WEIGHT]", multiple=True,
    help="Add a backend named by its address, weight 100 unless given. Repeatable.",
)
@click.option(
    "--weight", "weight", metavar="NAME=W", multiple=True,
    help="Set a backend's weight (0..1000). Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on stdout.")
def simulate(config_path: str, pool_name: str, remove: tuple[str, ...], add: tuple[str, ...],
             weight: tuple[str, ...], as_json: bool) -> None:
    """Preview a change to POOL: which share of flows would move.

    Changes apply in this order: --remove, --add, --weight. For a maglev pool
    both tables are built (table_size from the pool) and compared: the fraction
    of slots, and so of flows, that move; how much of that is not forced (flows
    moved away from backends that stay); each backend's share before and
    after; max/avg share. For other algorithms traffic follows the weights, so
    only the weight shares are shown. Nothing runs or connects: the preview
    reads the config file, with every backend taken as up.

    With --json the keys are moved_fraction, unforced_moved_fraction (null for
    unhashed pools), max_over_avg_before, max_over_avg_after and shares
    (name -> [before, after]); fractions are 0..1.
    """
    from lb import simulate as sim

    try:
        cfg = config.load(config_path)
    except config.ConfigError as e:
        _fail(str(e))
    if pool_name not in cfg.pools:
        known = ", ".join(cfg.pools) or "none"
        _fail(f"{cfg.source}: no pool {pool_name!r} (pools: {known})")
    try:
        adds = [sim.parse_add(text) for text in add]
        weights = [sim.parse_weight(text) for text in weight]
        report = sim.simulate(cfg.pools[pool_name], remove=remove, add=adds, weights=weights)
    except sim.SimulateError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(sim.format_report(report))


@pool.command()
@click.argument("pool_name", metavar="POOL", type=POOL)
@click.option("-c", "--config", "config_path", metavar="FILE",
              help="Compute it from this config file (every backend up) instead of asking the running lb.")
@click.option("--json", "as_json", is_flag=True, help="Print the fingerprint as one JSON object on stdout.")
@click.pass_obj
def fingerprint(app: App, pool_name: str, config_path: str | None, as_json: bool) -> None:
    """A digest of POOL's Maglev table, to compare nodes.

    Two nodes with the same digest send every flow key to the same backend.
    The table depends only on the backends' names and weights (and
    table_size), never on their order or on the node. Without -c, the
    running lb's table as its workers read it now (backends that are down are
    not in it); with -c, the table the config builds with every backend up.
    Pools that do not hash get a digest of their backends' weights."""
    from lb import ha

    if config_path is None:
        result = app.call("pool.fingerprint", {"pool": pool_name})
    else:
        try:
            cfg = config.load(config_path)
        except config.ConfigError as e:
            _fail(str(e))
        if pool_name not in cfg.pools:
            _fail(f"{cfg.source}: no pool {pool_name!r} (pools: {', '.join(cfg.pools) or 'none'})")
        result = ha.config_fingerprint(cfg.pools[pool_name])
    if as_json:
        print_json(result)
        return
    click.echo(f"{result['fingerprint']}  {result['pool']} ({result['algorithm']}, {result['backends']} backends"
               + (f", table {result['table_size']}" if result["table_size"] else "") + ")")
