"""`lb reload` and `lb stop`: the running daemon as a whole."""

import click

from lb.cli.app import App, print_json

# A reload reads and checks the config (resolving host names) and starts a new
# generation of workers before it answers.
RELOAD_TIMEOUT = 60.0


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def reload(app: App, as_json: bool) -> None:
    """Read the config file again and switch to it without dropping a connection.

    Prints the new generation. A config the daemon refuses changes nothing:
    lb goes on serving the one it has, and the error, led by its key path as
    `lb check` prints it, goes to stderr with exit code 2. SIGHUP reloads the
    same way."""
    result = app.call("reload", timeout=RELOAD_TIMEOUT,
                      notes={"config": "the config was refused; lb goes on serving its previous one"})
    if as_json:
        print_json(result)
        return
    config = result.get("config") or {}
    sha = (config.get("sha256") or "-")[:12]
    click.echo(f"reloaded: generation {result.get('generation')} (config {config.get('path', '-')}, sha256 {sha})")


@click.command()
@click.option("--fast", is_flag=True, help="Close every connection now instead of letting them finish.")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def stop(app: App, fast: bool, as_json: bool) -> None:
    """Stop the running lb.

    Graceful (the default, like SIGTERM): listeners close at once, open
    connections finish, for up to global.drain_timeout. --fast (like SIGINT):
    everything closes now. Returns as soon as the stop has begun."""
    result = app.call("stop", {"fast": fast})
    if as_json:
        print_json(result)
        return
    click.echo(f"lb is stopping ({result.get('stopping', 'fast' if fast else 'graceful')})")
