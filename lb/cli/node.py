"""`lb node`: this node as a member of an [ha] cluster: drain it before
maintenance, take it back after."""

import click

from lb.cli.app import App, print_json

ANSWER_MARGIN = 5.0  # seconds the client waits past the daemon's own timeout


def _health_text(health: dict | None) -> str:
    if not health:
        return "no health file"
    state = "healthy" if health.get("healthy") else "unhealthy"
    reasons = health.get("reasons") or []
    return f"{health.get('path')}: {state}" + (f" ({'; '.join(reasons)})" if reasons else "")


@click.group()
def node() -> None:
    """This node in an [ha] cluster (docs/ha.md)."""


@node.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def status(app: App, as_json: bool) -> None:
    """Drained or not, the health file's verdict, the VIPs held, open connections."""
    result = app.call("node.status")
    if as_json:
        print_json(result)
        return
    click.echo(f"mode {result['mode']}, {'drained' if result['drained'] else 'in service'}, "
               f"{result['active']} active connection(s)")
    click.echo(_health_text(result.get("health")))
    if result.get("vips"):
        click.echo(f"VIPs: {', '.join(result['vips'])}; held here: {', '.join(result['holds']) or 'none'}")
    announce = result.get("announce")
    if announce:
        routes = ", ".join(announce["routes"]) or "none"
        click.echo(f"BGP: {'announcing' if announce['announced'] else 'withdrawn'}; "
                   f"routes in kernel table {announce['table']}: {routes}"
                   + (f"; error: {announce['error']}" if announce.get("error") else ""))


@node.command()
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="How long to wait for the connections to finish. Default: global.drain_timeout.")
@click.option("--no-wait", is_flag=True, help="Return once the VIPs are given up; do not wait for connections.")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def drain(app: App, timeout: float | None, no_wait: bool, as_json: bool) -> None:
    """Give up the VIPs and wait until this node carries no connection.

    The health file turns unhealthy, so keepalived hands the VIPs to a peer
    (VRRP), or the VIP routes are withdrawn through BIRD (BGP); established
    connections go on until they finish. Exits 0 when the node is
    empty, 1 when connections were still open at the timeout. The node stays
    drained, across restarts too, until `lb node undrain`."""
    args: dict = {"wait": not no_wait}
    answer_timeout = None
    if timeout is not None:
        args["timeout"] = timeout
        answer_timeout = timeout + ANSWER_MARGIN
    result = app.call("node.drain", args, timeout=answer_timeout if not no_wait else False)
    if as_json:
        print_json(result)
    elif no_wait:
        click.echo(f"node drained; {result['active']} connection(s) still open")
    elif result["empty"]:
        click.echo(f"node drained and empty after {result['waited']:.1f}s")
    else:
        click.echo(f"node drained; {result['active']} connection(s) still open at the timeout", err=True)
    if not no_wait and not result["empty"]:
        raise SystemExit(1)


@node.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def undrain(app: App, as_json: bool) -> None:
    """Take this node back into service: the health file follows lb's health
    again, and keepalived takes the VIPs back if ha.preempt allows it."""
    result = app.call("node.undrain")
    if as_json:
        print_json(result)
        return
    click.echo(f"node in service; {_health_text(result.get('health'))}")
