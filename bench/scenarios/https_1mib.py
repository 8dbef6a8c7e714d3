"""https_1mib: keep-alive GET /1m (a 1 MiB body) over TLS that each proxy terminates.

http_1mib behind TLS: the 1 MiB body comes from the origin in plain HTTP and
leaves every proxy encrypted, in records of up to 16 KiB (each proxy's
default), over a kept-alive TLS connection: the bulk encryption path. No
splice is possible on the client side. The TLS issue sets no target here;
lb/best is reported.
"""

from bench import harness

NAME = "https_1mib"
ORDER = 85
KIND = "wrk"
MODE = "https"
SUMMARY = "keep-alive GET /1m (1 MiB body) over TLS, http mode: cpu/req, req/s, p99, GB/s"
TARGETS = harness.PROXY_NAMES
METRICS = (harness.WRK_GBPS_METRICS + harness.WRK_EXTRA_METRICS + (harness.ORIGIN_CONNS_METRIC,)
           + harness.TLS_METRICS)
GOALS = {}


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/1m", gbps=True)
