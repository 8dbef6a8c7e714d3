"""https_resume: one new TLS connection per request, resuming the previous session (GET /small, Connection: close).

https_connrate as wrk does it by itself: it keeps each connection's TLS
session and offers its latest ticket on the next connection, so a proxy
that accepts it and sends a new ticket each time makes every handshake after
the first a TLS 1.3 resumption (PSK with X25519: no certificate, no
signature). A proxy that sends no new ticket on a resumed handshake gets
every other connection as a full handshake instead (OpenSSL's client uses a
TLS 1.3 ticket once): the `resumed %` column shows which it was. No target;
lb/best is reported.
"""

from bench import harness

NAME = "https_resume"
ORDER = 95
KIND = "wrk"
MODE = "https"
SUMMARY = "new TLS connection per request, resumed by ticket (GET /small, Connection: close): cpu/req, req/s, p99"
TARGETS = harness.PROXY_NAMES
METRICS = harness.HTTPS_WRK_METRICS
GOALS = {}


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/small", headers=("Connection: close",))
