"""`lb logs`: the access logs of the running daemon."""

import click

from lb.cli.app import App, print_json


@click.group()
def logs() -> None:
    """Access logs (docs/observability.md)."""


@logs.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def reopen(app: App, as_json: bool) -> None:
    """Reopen the access-log files, after logrotate renamed them: lines
    written before this returns are in the old files, the rest in new ones,
    none lost. SIGUSR1 to the daemon does the same (without the wait)."""
    result = app.call("logs.reopen")
    if as_json:
        print_json(result)
        return
    click.echo("access-log files reopened")
