"""cache_hit: cache hits of a small and a 100 KiB response, lb's cache against nginx proxy_cache and Varnish, same run.

The origin sends both bodies with `Cache-Control: max-age=3600`. Each proxy
caches them: lb with a `[caches.bench]` of 256m on its listener (shared
memory, hits answered by the compiled loop), nginx with `proxy_cache` (a
keys zone in shared memory, the bodies in files, read through the page
cache), Varnish with 256m of malloc storage, one thread pool and the
built-in VCL (harness.VarnishTarget). One request fills the cache, then wrk runs GET /cached (100 B),
GET /cached100k with `Range: bytes=1000-4999` (a 4,000-byte 206 cut from the
stored object) and GET /cached100k, on 64 keep-alive connections; nginx is
restarted with `sendfile on` (and filled again) for the last one, its better
setting there. The origin sees no request
during the runs (checked for lb and Varnish by their hit counters). Issue 15's
targets: req/s at least 1.0x, CPU per request at most 0.85x the better of
nginx and Varnish, for both sizes.
HAProxy's cache is left out (its objects are limited to a buffer by default).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

from bench import harness

NAME = "cache_hit"
ORDER = 57
KIND = "wrk"
MODE = "http"
SUMMARY = "cache hits, GET 100 B and 100 KiB: lb's cache vs nginx proxy_cache and Varnish (cpu/req, req/s)"
TARGETS = ("nginx", "varnish", "lb", harness.BASELINE)   # lb-base with --baseline: a change before and after
BEST_OF = ("nginx", "varnish")
METRICS = (
    harness.CPU_US_REQ_METRIC,
    harness.REQ_S_METRIC,
    harness.P99_METRIC,
    harness.Metric("cpu_us_req_100k", "100k us/req", ",.1f", "lower"),
    harness.Metric("req_s_100k", "100k req/s", ",.0f", "higher"),
    harness.Metric("p99_ms_100k", "100k p99 ms", ",.2f", "lower"),
    harness.Metric("cpu_us_req_range", "range us/req", ",.1f", "lower"),
    harness.Metric("hit_pct", "hit %", ".1f"),
)
GOALS = {"cpu_us_req": 0.85, "req_s": 1.0, "cpu_us_req_100k": 0.85, "req_s_100k": 1.0}


def _configure(target, sendfile: bool = False) -> None:
    if target.name in ("lb", harness.BASELINE):
        target.listener_extra = 'cache = "bench"\n'
        target.config_extra = '\n[caches.bench]\nsize = "256m"\nmax_object_size = "1m"\n'
    elif target.name == "varnish":
        target.storage = "256m"
    else:
        (target.dir / "cache").mkdir(exist_ok=True)
        (target.dir / "cache").chmod(0o777)
        target.http_extra = (f"proxy_cache_path {target.dir}/cache levels=1:2 keys_zone=bench:16m "
                             "max_size=256m inactive=60m use_temp_path=off;"
                             + (" sendfile on;" if sendfile else ""))
        target.location_extra = "proxy_cache bench;"


def _start(target, sendfile: bool = False) -> None:
    """(Re)start the target with the scenario's cache, and fill it."""
    target.stop()
    _configure(target, sendfile)
    target.start()
    for path in ("/cached", "/cached100k"):
        with urllib.request.urlopen(target.url(path), timeout=5) as r:
            r.read()


def _hits(target) -> tuple[int, int] | None:
    """(hits, lookups) from the proxy's own counters; None for nginx (it has none)."""
    if target.name == "varnish":
        out = subprocess.run([harness.find_tool("varnishstat") or "varnishstat", "-n", str(target.dir / "varnishd"), "-1",
                              "-f", "MAIN.cache_hit", "-f", "MAIN.cache_miss"],
                             capture_output=True, text=True, timeout=10)
        counts = dict(line.split()[:2] for line in out.stdout.splitlines() if line.startswith("MAIN."))
        if out.returncode != 0 or len(counts) != 2:
            return None
        hit, miss = int(counts["MAIN.cache_hit"]), int(counts["MAIN.cache_miss"])
        return hit, hit + miss
    if target.name not in ("lb", harness.BASELINE):
        return None
    reply = json.loads(harness._unix_exchange(target.dir / "admin.sock",
                                              b'{"v": 1, "cmd": "cache.stats"}\n', lines=1))
    c = reply["result"]["caches"][0]["counts"]
    return c["hit"], c["hit"] + c["miss"] + c["stale"] + c["bypass"]


def measure(ctx, target):
    _start(target)
    small = harness.wrk_measure(ctx, target, "/cached")
    part = harness.wrk_measure(ctx, target, "/cached100k", headers=("Range: bytes=1000-4999",))
    if target.name == "nginx":
        # Each nginx figure from its better setting (bench/README.md): its
        # default, sendfile off, for 100 B and ranges (sendfile on costs it
        # a third more there); sendfile on for 100 KiB, where it saves the
        # copy of the body (about 40% of its CPU per request).
        _start(target, sendfile=True)
    big = harness.wrk_measure(ctx, target, "/cached100k")
    hits = _hits(target)
    hit_pct = 100.0 * hits[0] / hits[1] if hits and hits[1] else None
    if hit_pct is not None:
        harness.log(f"  {target.name}: {hit_pct:.2f}% of requests were cache hits")
    return {**small, "cpu_us_req_100k": big.get("cpu_us_req"), "req_s_100k": big.get("req_s"),
            "p99_ms_100k": big.get("p99_ms"), "cpu_us_req_range": part.get("cpu_us_req"),
            "hit_pct": hit_pct}
