"""tcp_connrate: one new TCP connection per request (GET /small, Connection: close).

Measures connection setup and teardown cost: accept, backend connect, two
closes per request. The origin closes first, so TIME_WAIT stays on the
origin's side and ephemeral ports do not run out.
"""

from bench import harness

NAME = "tcp_connrate"
ORDER = 30
KIND = "wrk"
SUMMARY = "new connection per request (GET /small, Connection: close): cpu/req, req/s, p99"
TARGETS = harness.TARGET_NAMES
METRICS = harness.WRK_METRICS + harness.WRK_EXTRA_METRICS


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/small", headers=("Connection: close",))
