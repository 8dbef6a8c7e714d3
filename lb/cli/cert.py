"""`lb cert`: the certificates of the TLS listeners. `list` asks the running
daemon, or reads a config file with -c; `reload` reads them again in the
running daemon without dropping a connection."""

import sys
import time

import click

from lb import config
from lb.cli import render
from lb.cli.app import App, print_json

# A reload starts a new generation of workers before it answers.
RELOAD_TIMEOUT = 60.0
EXIT_CONFIG = 2


@click.group()
def cert() -> None:
    """Certificates of the TLS listeners."""


@cert.command("list")
@click.option("-c", "--config", "config_path", metavar="FILE",
              help="Read the certificates of this config file instead of asking the running lb.")
@click.option("--json", "as_json", is_flag=True, help="Print the certificates as JSON on stdout.")
@click.pass_obj
def list_certificates(app: App, config_path: str | None, as_json: bool) -> None:
    """Every certificate the TLS listeners serve: listener, names, key type,
    time left, issuer, SHA-256 fingerprint and file. The first certificate of
    a listener (marked *) is the one clients that name no known host get."""
    if config_path:
        from lb import tls

        try:
            result = {"certificates": tls.certificate_rows(config.load(config_path))}
        except config.ConfigError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_CONFIG)
    else:
        result = app.call("cert.list")
    if as_json:
        print_json(result)
        return
    click.echo("\n".join(render.cert_lines(result.get("certificates") or [], time.time())))


@cert.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def reload(app: App, as_json: bool) -> None:
    """Read the certificates of the running config again (its files and
    directories; the config file itself is not read again) and serve them:
    new connections get the new ones, connections already open keep theirs,
    nothing is dropped. A certificate that is refused (key mismatch, broken
    chain, expired) changes nothing: the error names its key, exit code 2."""
    result = app.call("cert.reload", timeout=RELOAD_TIMEOUT,
                      notes={"config": "nothing changed: the certificates in use keep being served"})
    if as_json:
        print_json(result)
        return
    click.echo(f"certificates reloaded: generation {result.get('generation')}")
    click.echo("\n".join(render.cert_lines(result.get("certificates") or [], time.time())))
