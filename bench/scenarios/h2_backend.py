"""h2_backend: h2_small with HTTP/2 to the origin as well.

h2load (one thread) on 16 TLS connections, ALPN h2, up to 32 requests in
flight on each, GET /small; each proxy sends every stream on as an HTTP/2
stream to the origin's h2c port: HAProxy `proto h2` (streams multiplexed on
its origin connections), nginx `grpc_pass` (its only HTTP/2 upstream: one
stream per kept-alive origin connection), lb a pool with `protocol = "h2"`
(multiplexed, up to the origin's SETTINGS_MAX_CONCURRENT_STREAMS per
connection). The figures are the cost of HTTP/2 on both sides per request.
"""

from bench import harness

NAME = "h2_backend"
ORDER = 86
KIND = "h2load"
MODE = "h2b"
SUMMARY = "GET /small over HTTP/2 and TLS, HTTP/2 (h2c) to the origin, h2load -c16 -m32: cpu/req, req/s, p99"
TARGETS = harness.PROXY_NAMES
CONNECTIONS = 16
STREAMS = 32
METRICS = harness.HTTPS_WRK_METRICS
GOALS = {"cpu_us_req": 0.85, "req_s": 1.0}


def measure(ctx, target):
    return harness.h2load_measure(ctx, target, "/small", CONNECTIONS, STREAMS)
