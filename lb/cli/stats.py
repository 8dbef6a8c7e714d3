"""`lb stats`: traffic and response times per listener, route, pool and backend."""

import click

from lb.cli import render
from lb.cli.app import App, print_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's stats object as JSON on stdout.")
@click.pass_obj
def stats(app: App, as_json: bool) -> None:
    """Requests, their rate, 5xx answers, failed exchanges and the last
    minute's response-time percentiles (p50, p99) of every listener, route,
    pool and backend of the running lb.

    Percentiles come from the latency histograms the workers keep (fixed
    buckets, docs/observability.md), over the last minute; in lb's first
    seconds, since its start. With --json, the stats verb's result as is
    (the same document as the metrics endpoint's /stats.json)."""
    result = app.call("stats")
    if as_json:
        print_json(result)
        return
    click.echo("\n".join(render.stats_lines(result)))
