"""https_connrate: one new TLS connection per request, each a full handshake (GET /small, Connection: close).

http_connrate behind TLS: every request pays for a new TLS connection as a
first-time visitor's: a full TLS 1.3 handshake (X25519, an ECDSA P-256
signature, the run's chain sent), the proxy's two session tickets, one
request, the close. wrk by itself would resume its previous session on every
reconnect, so here it runs with bench/fresh_tls_session.c preloaded, which
makes it forget that session: the proxies run exactly the config of
https_small, only the client never resumes (the `resumed %` column shows 0
where the proxy counts). https_resume measures the resumed handshake. The TLS
issue's target: CPU per new connection at most that of the better of HAProxy
and nginx.
"""

from bench import harness

NAME = "https_connrate"
ORDER = 90
KIND = "wrk"
MODE = "https"
SUMMARY = "new TLS connection per request, full handshake (GET /small, Connection: close): cpu/req, req/s, p99"
TARGETS = harness.PROXY_NAMES
METRICS = harness.HTTPS_WRK_METRICS
GOALS = {"cpu_us_req": 1.0}


def measure(ctx, target):
    return harness.wrk_measure(ctx, target, "/small", headers=("Connection: close",),
                               env=ctx.fresh_tls_env())
