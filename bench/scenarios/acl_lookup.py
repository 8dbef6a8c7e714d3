"""acl_lookup: an ACL of a million prefixes, loaded and looked up.

No proxy runs: the harness calls `measure_local` in its own process. For each
address family, a million random distinct prefixes (one in twenty an
exclusion, many nested) are parsed, compiled and published into a
shared-memory region, as the supervisor does at a reload or `lb acl load`;
then a million random addresses are looked up by the workers' own lookup,
timed in C (best of 3), and the same for a list clustered in one block (an
operator's 10/8, an ISP's 2001:db8::/32), where the bucket index must still
keep a lookup short. Targets (issue 13): a million prefixes load in under
2 s, a lookup costs under 100 ns.
"""

from __future__ import annotations

import ipaddress
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


def _spread(rnd: random.Random, n: int, version: int) -> list[str]:
    bits = 32 if version == 4 else 128
    lo, hi = (8, 32) if version == 4 else (16, 64)
    nets: dict[tuple[int, int], bool] = {}
    while len(nets) < n:
        plen = rnd.randint(lo, hi) if rnd.random() < 0.97 else rnd.randint(0, lo)
        a = rnd.getrandbits(bits) & ~((1 << (bits - plen)) - 1)
        nets[(a, plen)] = rnd.random() < 0.05
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return [f"{'!' if excluded else ''}{cls(a)}/{plen}" for (a, plen), excluded in nets.items()]


def _clustered(rnd: random.Random, within: str, lengths: tuple[int, int]) -> list[str]:
    net = ipaddress.ip_network(within)
    bits = net.max_prefixlen
    nets = set()
    while len(nets) < CLUSTERED:
        plen = rnd.randint(*lengths)
        a = (int(net.network_address) | rnd.getrandbits(bits - net.prefixlen)) & ~((1 << (bits - plen)) - 1)
        nets.add((a, plen))
    cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
    return [f"{cls(a)}/{plen}" for a, plen in sorted(nets)]


def measure_local(ctx) -> dict:
    from lb._fastpath import AclSet, Shm, acl_lookup_ns

    rnd = random.Random(13)
    points = []
    with tempfile.TemporaryDirectory() as d:
        shm = Shm.create(os.path.join(d, "acl.shm"), [("p", 64, "roundrobin", 0, "", 0)], 1, os.getpid(),
                         acls=["a"], n_rules=1)
        try:
            cases = [(f"IPv{v}, {MILLION:,} spread", v, _spread(rnd, MILLION, v), None) for v in (4, 6)]
            cases += [(f"IPv4, {CLUSTERED:,} in 10/8", 4, _clustered(rnd, "10.0.0.0/8", (16, 32)), "10.0.0.0/8"),
                      (f"IPv6, {CLUSTERED:,} in 2001:db8::/32", 6,
                       _clustered(rnd, "2001:db8::/32", (48, 64)), "2001:db8::/32")]
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
