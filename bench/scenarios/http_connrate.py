"""http_connrate: one new client connection per request (GET /small, Connection: close), http mode.

Measures client connection setup and teardown around one parsed request: the
proxy accepts, answers with `connection: close` and closes, while its origin
connections stay open and are reused (the `origin conns` column shows how
many it opened). The proxy closes first, so TIME_WAIT stays on its listening
side and ephemeral ports do not run out. Issue 5 sets no target here; lb/best
is reported all the same.
"""

from bench import harness

NAME = "http_connrate"
ORDER = 70
KIND = "wrk"
MODE = "http"
SUMMARY = "new client connection per request (GET /small, Connection: close), http mode: cpu/req, req/s, p99"
TARGETS = harness.TARGET_NAMES
METRICS = harness.WRK_METRICS + harness.WRK_EXTRA_METRICS + (harness.ORIGIN_CONNS_METRIC,)
GOALS = {}


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/small", headers=("Connection: close",))
