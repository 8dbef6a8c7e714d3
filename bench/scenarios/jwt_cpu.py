"""jwt_cpu: CPU per request of lb plain, with an ES256 JWT verified on every request, and with a cached token.

keep-alive GET /small through an lb http listener, as http_small, three times
in one run: plain (no auth); then with a JWT auth
([auth.NAME] type = "jwt", docs/gateway.md) whose JWKS holds one P-256 key,
the token's `sub` forwarded as a header. With one token on every request
(wrk -H; the auth is on a route taken by requests with Authorization, as
the harness's readiness probe has none): after the first request its
signature comes from the worker's cache,
so each request pays the token's parse, its claims and the cache lookup. With
a new token on every request (bench/jwt_tokens.lua cycles through 20,000
ES256 tokens, the auth's cache at its 16-slot minimum): each request pays an
ECDSA P-256 verification too. Only lb runs (HAProxy and nginx have no part in
it). The issue's target (issue 13): a cached token adds at most 20% CPU per
request (`cached +%`); `es256 us` is the uncached verification's own cost per
request, uncached minus cached. `check us` and `cached check us` time the
auth step's token check alone, in this process, on the CPU clock
(lb._fastpath.jwt_check_loop, the workers' code): steadier on a busy machine
than differences of two runs. `handoff us` is the CPU of handing an empty job
to a thread and back through an eventfd (lb._fastpath.jwt_handoff_cost), as
HTTP Basic's verifier threads do: what verifying off the loop would add to
each verification.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from bench import harness

NAME = "jwt_cpu"
ORDER = 56
KIND = "wrk"
MODE = "http"
SUMMARY = ("keep-alive GET /small, http mode: lb plain vs lb with an ES256 JWT, cached and verified on every "
           "request (cpu/req, +%, us)")
TARGETS = ("lb", harness.BASELINE)
METRICS = (
    harness.CPU_US_REQ_METRIC,             # with a cached token
    harness.Metric("cpu_us_req_plain", "plain us/req", ",.1f"),
    harness.Metric("cached_overhead_pct", "cached +%", "+.1f"),
    harness.Metric("cpu_us_req_uncached", "uncached us/req", ",.1f"),
    harness.Metric("es256_verify_us", "es256 us", ",.1f"),
    harness.Metric("check_us_uncached", "check us", ",.1f"),
    harness.Metric("check_us_cached", "cached check us", ",.2f"),
    harness.Metric("handoff_us", "handoff us", ",.1f"),
    harness.Metric("req_s_plain", "plain req/s", ",.0f"),
    harness.REQ_S_METRIC,
    harness.Metric("req_s_uncached", "uncached req/s", ",.0f"),
    harness.P99_METRIC,
    harness.Metric("other_cpu_pct", "other cpu %", ".0f"),
)
TOKENS = 20_000
LIMIT_PCT = 20.0
SCRIPT = Path(__file__).resolve().parent.parent / "jwt_tokens.lua"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_tokens(directory: Path) -> tuple[Path, Path, str]:
    """A JWKS of one P-256 key, TOKENS tokens it signed (one a line), and one more."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_numbers()
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
                                          "x": b64(pub.x.to_bytes(32, "big")), "y": b64(pub.y.to_bytes(32, "big"))}]}))
    header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench"}).encode())
    exp = int(time.time()) + 6 * 3600

    def token(i: int) -> str:
        payload = b64(json.dumps({"sub": f"user{i}", "iss": "https://issuer.example", "exp": exp,
                                  "jti": f"{i:08d}"}).encode())
        signing_input = f"{header}.{payload}"
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    tokens = directory / "tokens.txt"
    tokens.write_text("".join(token(i) + "\n" for i in range(TOKENS)))
    return jwks, tokens, token(TOKENS)


def check_alone(jwks: Path, token: str) -> tuple[float, float]:
    """CPU microseconds of one token check, with its signature verified and from the cache."""
    from lb import config
    from lb._fastpath import jwt_check_loop
    from lb.config.jwks import pack

    auth = config.loads(f'[auth.a]\ntype = "jwt"\njwks = "{jwks}"\nissuer = "https://issuer.example"\n'
                        'claims_to_headers = { sub = "X-User" }\n[listeners.w]\nbind = ["127.0.0.1:1"]\n'
                        'mode = "http"\npool = "p"\nauth = "a"\n[pools.p]\n[[pools.p.backends]]\n'
                        'address = "127.0.0.1:9"\n').auth["a"]
    blob, n = pack(auth.jwt_keys), len(auth.jwt_keys)
    ok_u, _, uncached = jwt_check_loop(auth, blob, n, token.encode(), 2000, False)
    ok_c, hit, cached = jwt_check_loop(auth, blob, n, token.encode(), 100_000, True)
    if not (ok_u and ok_c and hit):
        raise harness.BenchError("the token does not check in process")
    return uncached * 1e6, cached * 1e6


def refused(result: dict, what: str) -> None:
    n = result["errors"].get("non_2xx_3xx")
    if n:
        raise harness.BenchError(f"{n} requests refused {what}: the tokens or the JWKS are wrong")


def measure(ctx, target):
    plain = harness.wrk_measure(ctx, target, "/small")
    jwks, tokens, one = make_tokens(target.dir)
    target.stop()
    # on a route that requests with Authorization take: the harness's readiness
    # probe (GET /small without a token) keeps the listener's plain path
    target.listener_extra = '''
  [[listeners.bench.routes]]
  header = "Authorization"
  pool = "origin"
  auth = "bench_jwt"
'''
    # cache_size 0: the cache's minimum of 16 slots, which 20,000 tokens in turn never hit
    target.config_extra = (f'\n[auth.bench_jwt]\ntype = "jwt"\njwks = "{jwks}"\ncache_size = 0\n'
                           'issuer = "https://issuer.example"\nclaims_to_headers = { sub = "X-User" }\n')
    target.start()
    cached = harness.wrk_measure(ctx, target, "/small", headers=(f"Authorization: Bearer {one}",))
    refused(cached, "with one token")
    uncached = harness.wrk_measure(ctx, target, "/small", env={"LB_BENCH_TOKENS": str(tokens)},
                                   script=str(SCRIPT))
    refused(uncached, "with a token each")
    p, c, u = plain.get("cpu_us_req"), cached.get("cpu_us_req"), uncached.get("cpu_us_req")
    overhead = 100.0 * (c / p - 1) if p and c else None
    verify = u - c if u and c else None
    if overhead is not None and verify is not None:
        harness.log(f"  {target.name}: plain {p:.2f} us/req, a cached ES256 token {c:.2f} ({overhead:+.1f}%; target "
                    f"at most +{LIMIT_PCT:.0f}%), a token verified each request {u:.2f}: {verify:.1f} us per ES256 "
                    f"verification")
    from lb._fastpath import jwt_handoff_cost

    check_uncached, check_cached = check_alone(jwks, one)
    handoff = min(jwt_handoff_cost(20_000) for _ in range(3)) * 1e6
    harness.log(f"  {target.name}: the token check alone: {check_uncached:.1f} us verified, {check_cached:.2f} us "
                f"from the cache; a hand-off to a thread and back {handoff:.1f} us")
    return {**cached, "handoff_us": handoff, "check_us_uncached": check_uncached, "check_us_cached": check_cached,
            "cpu_us_req_plain": p, "req_s_plain": plain.get("req_s"), "cached_overhead_pct": overhead,
            "cpu_us_req_uncached": u, "req_s_uncached": uncached.get("req_s"), "es256_verify_us": verify}
