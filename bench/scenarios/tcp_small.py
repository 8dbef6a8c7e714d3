"""tcp_small: keep-alive GET /small (about 100 bytes) through each proxy in tcp mode.

Measures request rate and p99 latency when per-request work dominates: every
proxy forwards small reads and writes on 64 long-lived connections.
"""

from bench import harness

NAME = "tcp_small"
ORDER = 10
KIND = "wrk"
SUMMARY = "keep-alive GET /small (100 B body), tcp mode: cpu/req, req/s, p99"
TARGETS = harness.TARGET_NAMES
METRICS = harness.WRK_METRICS + harness.WRK_EXTRA_METRICS


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/small")
