"""`lb backend`: change one backend of a pool in the running daemon. Every
change is kept in global.state_file, so a restart or reload keeps it."""

import click

from lb.cli.app import BACKEND, POOL, App, print_json

# A remove that waits is answered when the backend drained or its timeout
# passed; the answer may take this much longer than the timeout.
ANSWER_MARGIN = 10.0


@click.group()
def backend() -> None:
    """Add, remove, weigh and drain backends of the running lb."""


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")(f)


@backend.command()
@click.argument("pool", type=POOL)
@click.argument("address", metavar="ADDR")
@click.option("--name", metavar="NAME", help="Backend name (default: its address).")
@click.option("--weight", type=click.IntRange(0, 1000), default=100, show_default=True)
@click.option("--backup", is_flag=True, help="Serve only while no primary backend can.")
@_json_option
@click.pass_obj
def add(app: App, pool: str, address: str, name: str | None, weight: int, backup: bool, as_json: bool) -> None:
    """Add a backend at ADDR (host:port) to POOL; it takes traffic at once."""
    args = {"pool": pool, "address": address, "weight": weight, "backup": backup}
    if name:
        args["name"] = name
    result = app.call("backend.add", args)
    if as_json:
        print_json(result)
        return
    click.echo(f"pool {result.get('pool', pool)}: added {result.get('name', name or address)} ({address}), "
               f"weight {weight}{', backup' if backup else ''}")


@backend.command()
@click.argument("pool", type=POOL)
@click.argument("name", type=BACKEND)
@click.option("--wait", is_flag=True, help="Answer once its connections are done (or the timeout passed).")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="How long --wait waits (implies --wait; default: global.drain_timeout).")
@_json_option
@click.pass_obj
def remove(app: App, pool: str, name: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Drain backend NAME of POOL, then remove it.

    New connections stop going to it at once; its open connections go on.
    With --wait the command returns once they are all closed, or once the
    timeout passed (then it says so; the backend is removed either way)."""
    args = {"pool": pool, "name": name}
    wait = wait or timeout is not None
    answer_timeout = False  # the client's default: the daemon answers at once
    if wait:
        args["wait"] = True
        answer_timeout = None
        if timeout is not None:
            args["timeout"] = timeout
            answer_timeout = timeout + ANSWER_MARGIN
    result = app.call("backend.remove", args, timeout=answer_timeout)
    if as_json:
        print_json(result)
        return
    click.echo(f"pool {result.get('pool', pool)}: removed {result.get('name', name)}")
    if wait and result.get("drained") is False:
        click.echo(f"warning: {name} still had open connections when the timeout passed", err=True)


@backend.command("set-weight")
@click.argument("pool", type=POOL)
@click.argument("name", type=BACKEND)
@click.argument("weight", type=click.IntRange(0, 1000))
@_json_option
@click.pass_obj
def set_weight(app: App, pool: str, name: str, weight: int, as_json: bool) -> None:
    """Set the weight of backend NAME of POOL (0..1000; 0 takes no new connections)."""
    result = app.call("backend.set_weight", {"pool": pool, "name": name, "weight": weight})
    if as_json:
        print_json(result)
        return
    click.echo(f"pool {result.get('pool', pool)}: {result.get('name', name)} weight {result.get('weight', weight)}")


def _state_command(state: str, doc: str):
    @click.argument("pool", type=POOL)
    @click.argument("name", type=BACKEND)
    @_json_option
    @click.pass_obj
    def command(app: App, pool: str, name: str, as_json: bool) -> None:
        result = app.call("backend.set_state", {"pool": pool, "name": name, "state": state})
        if as_json:
            print_json(result)
            return
        click.echo(f"pool {result.get('pool', pool)}: {result.get('name', name)} {result.get('state', state)}")

    command.__doc__ = doc
    return backend.command(state)(command)


_state_command("drain", """Stop new connections to backend NAME of POOL; open ones go on.""")
_state_command("maint", """Put backend NAME of POOL in maintenance: no new connections, no health checks.""")
_state_command("ready", """Give backend NAME of POOL traffic again (after drain or maint).""")
