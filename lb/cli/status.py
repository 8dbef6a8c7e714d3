"""`lb status`: everything the running daemon knows, once."""

import click

from lb.cli import render
from lb.cli.app import App, print_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's status object as JSON on stdout.")
@click.pass_obj
def status(app: App, as_json: bool) -> None:
    """Listeners, pools, backends and workers of the running lb.

    Per backend: health, admin state, weight and weight in effect, active and
    total connections, connect errors and timeouts, bytes in and out, and the
    last check. Per worker: pid, generation, state, CPU, RSS, open fds. A pool
    that can take no connection says why. With --json, the status verb's
    result as is (docs/admin.md)."""
    result = app.call("status")
    if as_json:
        print_json(result)
        return
    click.echo("\n".join(render.status_lines(result)))
