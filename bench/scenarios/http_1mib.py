"""http_1mib: keep-alive GET /1m (a 1 MiB body) through each proxy in http mode.

Measures bulk throughput of a reverse proxy: a response head to parse, then a
1 MiB Content-Length body to move through one worker. Issue 5's target: GB/s
at least that of the better of HAProxy and nginx.
"""

from bench import harness

NAME = "http_1mib"
ORDER = 60
KIND = "wrk"
MODE = "http"
SUMMARY = "keep-alive GET /1m (1 MiB body), http mode: cpu/req, req/s, p99, GB/s"
TARGETS = harness.TARGET_NAMES
METRICS = harness.WRK_GBPS_METRICS + harness.WRK_EXTRA_METRICS + (harness.ORIGIN_CONNS_METRIC,)
GOALS = {"gbps": 1.0}


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/1m", gbps=True)
