"""acl_lookup: an ACL of a million prefixes, loaded and looked up.

No proxy runs: the harness calls `measure_local` in its own process. For each
address family, a million random distinct prefixes (one in twenty an
exclusion, many nested: the lists tests/test_acl.py checks against the
reference, tests/reference/acl_ref.py) are parsed, compiled and published into a
shared-memory region, as the supervisor does at a reload or `lb acl load`;
then a million random addresses are looked up by the workers' own lookup,
timed in C (best of 3), and the same for a list clustered in one block (an
operator's 10/8, an ISP's 2001:db8::/32), where the bucket index must still
keep a lookup short. Targets (issue 13): a million prefixes load in under
2 s, a lookup costs under 100 ns.
"""

from __future__ import annotations

import os
import random
import tempfile
import time

NAME = "acl_lookup"
ORDER = 102
KIND = "local"
SUMMARY = "a million-prefix ACL: load time and ns per lookup, IPv4 and IPv6, spread and clustered"
TARGETS = ()
METRICS = ()

MILLION = 1_000_000
CLUSTERED = 300_000
LOOKUPS = 1_000_000
LOAD_LIMIT_S = 2.0
LOOKUP_LIMIT_NS = 100.0


def measure_local(ctx) -> dict:
    from lb._fastpath import AclSet, Shm, acl_lookup_ns

    from tests.reference.acl_ref import clustered_prefixes, random_prefixes

    rnd = random.Random(13)
    points = []
    with tempfile.TemporaryDirectory() as d:
        shm = Shm.create(os.path.join(d, "acl.shm"), [("p", 64, "roundrobin", 0, "", 0)], 1, os.getpid(),
                         acls=["a"], n_rules=1)
        try:
            cases = [(f"IPv{v}, {MILLION:,} spread", v, random_prefixes(rnd, MILLION, v), None) for v in (4, 6)]
            cases += [(f"IPv4, {CLUSTERED:,} in 10/8", 4, clustered_prefixes(rnd, "10.0.0.0/8", (16, 32), CLUSTERED), "10.0.0.0/8"),
                      (f"IPv6, {CLUSTERED:,} in 2001:db8::/32", 6,
                       clustered_prefixes(rnd, "2001:db8::/32", (48, 64), CLUSTERED), "2001:db8::/32")]
            for label, version, prefixes, within in cases:
                data = "\n".join(prefixes).encode()
                t0 = time.perf_counter()
                entries = AclSet()
                entries.parse_text(data)
                entries.finish()
                entries.publish(shm, 0)
                load_s = time.perf_counter() - t0
                ns = min(acl_lookup_ns(shm, 0, version, LOOKUPS, seed=k + 1, within=within)[0] for k in range(3))
                points.append({"case": label, "prefixes": len(prefixes), "load_s": load_s, "lookup_ns": ns,
                               "met": load_s < LOAD_LIMIT_S and ns < LOOKUP_LIMIT_NS})
        finally:
            shm.unlink()
    return {"lookups": LOOKUPS, "load_limit_s": LOAD_LIMIT_S, "lookup_limit_ns": LOOKUP_LIMIT_NS,
            "points": points, "targets_met": all(p["met"] for p in points)}


def format_local(result: dict) -> str:
    lines = [f"== {NAME}: {SUMMARY}"]
    if not result.get("ok"):
        return "\n".join(lines + [f"   FAILED: {result.get('error')}"])
    lines.append(f"   {'list':<34} {'load s':>8} {'ns/lookup':>10}  targets: load < {result['load_limit_s']:g} s, "
                 f"lookup < {result['lookup_limit_ns']:g} ns")
    for p in result["points"]:
        lines.append(f"   {p['case']:<34} {p['load_s']:>8.2f} {p['lookup_ns']:>10.1f}  {'met' if p['met'] else 'MISSED'}")
    return "\n".join(lines)
