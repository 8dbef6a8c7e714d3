"""http_small: keep-alive GET /small (about 100 bytes) through each proxy in http mode.

Measures request rate and p99 latency of a reverse proxy when per-request work
dominates: parse the request, add X-Forwarded-*, pick a backend, forward over
a kept-alive origin connection, parse and forward the response, on 64
long-lived client connections. Issue 5's targets: req/s at least, and p99 at
most, those of the better of HAProxy and nginx.
"""

from bench import harness

NAME = "http_small"
ORDER = 50
KIND = "wrk"
MODE = "http"
SUMMARY = "keep-alive GET /small (100 B body), http mode: cpu/req, req/s, p99"
TARGETS = harness.TARGET_NAMES
METRICS = harness.WRK_METRICS + harness.WRK_EXTRA_METRICS + (harness.ORIGIN_CONNS_METRIC,)
GOALS = {"req_s": 1.0, "p99_ms": 1.0}


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/small")
