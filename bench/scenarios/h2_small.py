"""h2_small: GET /small (about 100 bytes) over HTTP/2, many streams on each TLS connection.

https_small with HTTP/2 to the client: h2load (one thread) on 16 TLS
connections that each proxy terminates with the run's certificate, ALPN h2,
up to 32 requests in flight on each (512 streams), for --duration after an
untimed --warmup run. Each proxy forwards every stream as an HTTP/1.1 request
over its kept-alive origin connections, so the figures are the HTTP/2 layer's
cost per request (framing, HPACK, flow control) on top of https_small's.
Issue 19's targets: CPU per request at most 0.85x, and req/s at least, those
of the better of HAProxy and nginx.
"""

from bench import harness

NAME = "h2_small"
ORDER = 85
KIND = "h2load"
MODE = "h2"
SUMMARY = "GET /small (100 B body) over HTTP/2 and TLS, h2load -c16 -m32: cpu/req, req/s, p99"
TARGETS = harness.PROXY_NAMES
CONNECTIONS = 16
STREAMS = 32        # requests in flight per connection: below every proxy's stream limit (lb and HAProxy 100, nginx 128)
METRICS = harness.HTTPS_WRK_METRICS
GOALS = {"cpu_us_req": 0.85, "req_s": 1.0}


def measure(ctx, target):
    return harness.h2load_measure(ctx, target, "/small", CONNECTIONS, STREAMS)
