"""`lb run` and `lb demo`: start the balancer in the foreground."""

from __future__ import annotations

import sys

import click

from lb import config as config_mod
from lb.cli.app import config_option

EXIT_CONFIG = 2


def load_runnable(path: str):
    try:
        cfg = config_mod.load(path)
        config_mod.check_runnable(cfg)
    except config_mod.ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_CONFIG)
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    return cfg


@click.command()
@config_option("Config file to run")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run(config_path: str, log_level: str) -> None:
    """Run the balancer in the foreground, logging to stderr.

    SIGTERM stops gracefully (connections finish, up to global.drain_timeout);
    SIGINT stops at once. Started as root, lb binds its listeners, then runs
    workers and the checker as global.user / global.group. Under systemd
    (Type=notify) it reports READY=1, RELOADING=1 and STOPPING=1 to
    $NOTIFY_SOCKET; without it, nothing changes."""
    from lb import log
    from lb._fastpath import TlsError
    from lb.privileges import PrivilegeError
    from lb.supervisor import Supervisor

    log.setup(log_level)
    cfg = load_runnable(config_path)
    try:
        code = Supervisor(cfg).run()
    except (OSError, PrivilegeError, TlsError) as e:  # TlsError: a certificate replaced since the check
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    sys.exit(code)


@click.command()
@click.option("--port", default=8080, show_default=True, help="Port lb listens on (127.0.0.1).")
def demo(port: int) -> None:
    """Start lb on 127.0.0.1:PORT in front of two demo backends it starts itself."""
    from lb import demo as demo_mod

    sys.exit(demo_mod.run(port))
