"""https_small: keep-alive GET /small (about 100 bytes) over TLS that each proxy terminates.

http_small behind TLS: the same reverse proxying to the same plain-HTTP
origin, with every request and response also decrypted and encrypted on 64
long-lived TLS connections (wrk `https://`). Handshakes are a handful per run
(wrk's 64 connections): the figures are the record layer's cost per request.
The TLS issue's targets: CPU per request at most 0.85x, and req/s at least,
those of the better of HAProxy and nginx.
"""

from bench import harness

NAME = "https_small"
ORDER = 80
KIND = "wrk"
MODE = "https"
SUMMARY = "keep-alive GET /small (100 B body) over TLS, http mode: cpu/req, req/s, p99"
TARGETS = harness.PROXY_NAMES
METRICS = harness.HTTPS_WRK_METRICS
GOALS = {"cpu_us_req": 0.85, "req_s": 1.0}


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/small")
