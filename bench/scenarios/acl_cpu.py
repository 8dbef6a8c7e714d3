"""acl_cpu: CPU per request of lb with a 100,000-prefix ACL and a rate limit against lb without them, same run.

keep-alive GET /small through an lb http listener, as http_small, twice: plain
(the default config), then with a 100,000-prefix ACL (random IPv4 prefixes of
/8 to /32 and some IPv6 ones, none covering the loopback client) that the
listener denies at accept and a route matching every request (`path_prefix =
"/"`) denies again on each request, and a rate limit by client address on
the listener (`[limits.per_ip]`, a rate no run reaches): every request pays a
route match, a lookup, and a limit decision against the shared table (one
key, the loopback client: the hottest entry there can be). Only lb runs
(HAProxy and nginx have no part in it). The issue's target (issue 13): the
ACL and the rate limit add at most 10% to the CPU per request; `acl+limit +%`
is that figure.
"""

from __future__ import annotations

import random

from bench import harness

NAME = "acl_cpu"
ORDER = 55
KIND = "wrk"
MODE = "http"
SUMMARY = "keep-alive GET /small, http mode: lb plain vs lb with a 100,000-prefix ACL and a rate limit (cpu/req, +%)"
TARGETS = ("lb", harness.BASELINE)
METRICS = (
    harness.CPU_US_REQ_METRIC,             # with the ACL
    harness.Metric("cpu_us_req_plain", "plain us/req", ",.1f"),
    harness.Metric("acl_overhead_pct", "acl+limit +%", "+.1f"),
    harness.Metric("req_s_plain", "plain req/s", ",.0f"),
    harness.REQ_S_METRIC,
    harness.P99_METRIC,
    harness.Metric("other_cpu_pct", "other cpu %", ".0f"),
)
PREFIXES = 100_000
LIMIT_PCT = 10.0
SEED = 13


def write_prefixes(path) -> None:
    rnd = random.Random(SEED)
    lines = set()
    while len(lines) < PREFIXES:
        if rnd.random() < 0.9:
            plen = rnd.randint(8, 32)
            a = rnd.getrandbits(32) & ~((1 << (32 - plen)) - 1)
            if a >> 24 == 127:
                continue
            lines.add(f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{plen}")
        else:
            plen = rnd.randint(16, 64)
            a = (0x2000 << 112 | rnd.getrandbits(125)) & ~((1 << (128 - plen)) - 1)
            lines.add(":".join(f"{(a >> s) & 0xffff:x}" for s in range(112, -1, -16)) + f"/{plen}")
    path.write_text("# acl_cpu: random prefixes, none of them the client's\n" + "\n".join(sorted(lines)) + "\n")


def measure(ctx, target):
    plain = harness.wrk_measure(ctx, target, "/small")
    acl_file = target.dir / "blocklist.txt"
    write_prefixes(acl_file)
    target.stop()
    target.listener_extra = """deny = ["blocklist"]
limits = ["per_ip"]

  [[listeners.bench.routes]]
  path_prefix = "/"
  pool = "origin"
  deny = ["blocklist"]
"""
    # a rate far above what one wrk run sends: every request is decided, none refused
    target.config_extra = (f'\n[acls.blocklist]\nfile = "{acl_file}"\n'
                           '\n[limits.per_ip]\nrate = "100000000/1s"\nburst = 1000000\n')
    target.start()
    acl = harness.wrk_measure(ctx, target, "/small")
    refused = acl["errors"].get("non_2xx_3xx")
    if refused:
        raise harness.BenchError(f"{refused} requests refused: the ACL covers the client, or the limit refused")
    overhead = (100.0 * (acl["cpu_us_req"] / plain["cpu_us_req"] - 1)
                if acl.get("cpu_us_req") and plain.get("cpu_us_req") else None)
    if overhead is not None:
        harness.log(f"  {target.name}: the ACL and the limit add {overhead:+.1f}% CPU per request "
                    f"({plain['cpu_us_req']:.2f} -> {acl['cpu_us_req']:.2f} us; target at most +{LIMIT_PCT:.0f}%)")
    return {**acl, "cpu_us_req_plain": plain.get("cpu_us_req"), "req_s_plain": plain.get("req_s"),
            "acl_overhead_pct": overhead}
