"""tcp_1mib: keep-alive GET /1m (a 1 MiB body) through each proxy in tcp mode.

Measures bulk throughput: bytes per second through one worker, where the copy
path (recv/send versus splice) decides the result.
"""

from bench import harness

NAME = "tcp_1mib"
ORDER = 20
KIND = "wrk"
SUMMARY = "keep-alive GET /1m (1 MiB body), tcp mode: cpu/req, req/s, p99, GB/s"
TARGETS = harness.TARGET_NAMES
METRICS = harness.WRK_GBPS_METRICS + harness.WRK_EXTRA_METRICS


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/1m", gbps=True)
