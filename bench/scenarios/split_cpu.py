"""split_cpu: CPU per request of lb with a weighted split against lb without one, same run.

keep-alive GET /small through an lb http listener, as http_small, twice: plain
(the default config), then with the listener's requests split 50/50 between
two pools of the same origin (`split`, docs/splits.md), each pool with the
same idle-connection pool as the plain one. wrk sends no cookie, so every
request is a new user: it draws a bucket and its response carries lb's
Set-Cookie, the split's dearest path. A third run sends the cookie lb gave
a first request, as every returning user's browser does: its request only
reads the cookie (`returning +%`). Only lb runs. The issue's target
(issue 16): a split adds at most 3% to the CPU per request; `split +%` (new
users) and `returning +%` are that figure for both kinds of request.
"""

from __future__ import annotations

import urllib.request

from bench import harness

NAME = "split_cpu"
ORDER = 57
KIND = "wrk"
MODE = "http"
SUMMARY = "keep-alive GET /small, http mode: lb plain vs lb with a 50/50 split of two pools (cpu/req, +%)"
TARGETS = ("lb", harness.BASELINE)
METRICS = (
    harness.CPU_US_REQ_METRIC,             # with the split
    harness.Metric("cpu_us_req_plain", "plain us/req", ",.1f"),
    harness.Metric("split_overhead_pct", "split +%", "+.1f"),
    harness.Metric("returning_overhead_pct", "returning +%", "+.1f"),
    harness.Metric("req_s_plain", "plain req/s", ",.0f"),
    harness.REQ_S_METRIC,
    harness.P99_METRIC,
)
LIMIT_PCT = 3.0


def measure(ctx, target):
    plain = harness.wrk_measure(ctx, target, "/small")
    target.stop()
    origin = ctx.origin.addr
    target.listener_extra = 'split = [{ pool = "origin", weight = 50 }, { pool = "origin2", weight = 50 }]\n'
    target.config_extra = (f'\n[pools.origin2]\nalgorithm = "roundrobin"\nkeepalive_max_idle = {target.origin_idle}\n'
                           f'  [pools.origin2.health]\n  type = "none"\n'
                           f'  [[pools.origin2.backends]]\n  address = "{origin[0]}:{origin[1]}"\n')
    target.start()
    split = harness.wrk_measure(ctx, target, "/small")
    with urllib.request.urlopen(target.url("/small"), timeout=10) as first:
        cookie = first.headers["Set-Cookie"].split(";")[0]
    returning = harness.wrk_measure(ctx, target, "/small", headers=(f"Cookie: {cookie}",))
    overhead = _pct(split, plain)
    returning_overhead = _pct(returning, plain)
    if overhead is not None and returning_overhead is not None:
        harness.log(f"  {target.name}: the split adds {overhead:+.1f}% CPU per request for new users and "
                    f"{returning_overhead:+.1f}% for returning ones ({plain['cpu_us_req']:.2f} -> "
                    f"{split['cpu_us_req']:.2f} / {returning['cpu_us_req']:.2f} us; target at most +{LIMIT_PCT:.0f}%)")
    return {**split, "cpu_us_req_plain": plain.get("cpu_us_req"), "req_s_plain": plain.get("req_s"),
            "split_overhead_pct": overhead, "returning_overhead_pct": returning_overhead}


def _pct(run: dict, plain: dict) -> float | None:
    if run.get("cpu_us_req") and plain.get("cpu_us_req"):
        return 100.0 * (run["cpu_us_req"] / plain["cpu_us_req"] - 1)
    return None
