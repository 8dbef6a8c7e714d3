"""`lb top`: `lb status` redrawn every interval, with rates."""

import shutil
import sys
import time

import click

from lb import admin_client
from lb.cli import render
from lb.cli.app import App

CLEAR = "\033[H\033[2J"
ALT_SCREEN_ON, ALT_SCREEN_OFF = "\033[?1049h\033[?25l", "\033[?25h\033[?1049l"


def _fit(lines: list[str]) -> str:
    """One screen: lines cut at the terminal's width, the list at its height."""
    size = shutil.get_terminal_size()
    return "\n".join(line[: size.columns] for line in lines[: max(1, size.lines - 1)])


def _status(app: App) -> dict:
    """A closed connection is tried again once: a daemon that stopped is then
    reported as not running rather than as a broken answer."""
    try:
        return app.client.call("status")
    except admin_client.AdminError as e:
        if e.code != "protocol":
            raise
    return app.client.call("status")


@click.command()
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, metavar="SECONDS",
              help="Time between two screens.")
@click.option("--iterations", type=click.IntRange(min=1), metavar="N",
              help="Stop after N screens (default: run until Ctrl-C).")
@click.option("--by", type=click.Choice(["client", "path", "status"]),
              help="Show the heaviest clients, paths or statuses of the last 30-60 s instead.")
@click.option("-n", "count", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="With --by: how many.")
@click.pass_obj
def top(app: App, interval: float, iterations: int | None, by: str | None, count: int) -> None:
    """A live view of the running lb: `lb status` on one screen, redrawn every
    interval, with each backend's connections and bytes per second and the
    last minute's p50 and p99 response times.

    With --by client|path|status: the heaviest clients (addresses), paths
    (without the query) or response statuses of the last 30 to 60 seconds,
    merged over the workers. Clients and paths come from a sketch each worker
    keeps (Space-Saving, 64 keys an epoch): a count may be over by at most
    its ERROR column; statuses are exact.

    On a terminal the screen is cleared and redrawn; otherwise every screen is
    printed after the previous one, followed by an empty line. Ctrl-C quits."""
    tty = sys.stdout.isatty()
    before, before_at = None, 0.0
    shown = 0
    error = None
    if tty:
        sys.stdout.write(ALT_SCREEN_ON)
    try:
        while True:
            try:
                status = app.client.call("top", {"by": by, "n": count}) if by else _status(app)
            except (admin_client.DaemonUnreachable, admin_client.AdminError) as e:
                error = e  # reported once the screen is back
                break
            now = time.monotonic()
            if by:
                lines = render.top_lines(status)
            else:
                rates = render.rates(before, status, now - before_at) if before else {}
                lines = render.status_lines(status, rates)
            if tty:
                sys.stdout.write(CLEAR + _fit(lines))
                sys.stdout.flush()
            else:
                click.echo("\n".join(lines) + "\n")
            before, before_at = status, now
            shown += 1
            if iterations and shown >= iterations:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            sys.stdout.write(ALT_SCREEN_OFF)
            sys.stdout.flush()
    if error is not None:
        app.report(error)
