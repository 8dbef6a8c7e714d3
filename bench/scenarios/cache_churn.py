"""cache_churn: lb's cache under random keys, its size bound and the workers' memory.

lb alone (and lb-base), not in the default run. The listener caches in a
16m `[caches.bench]`; wrk (bench/cache_churn.lua) asks for a random key of
200,000 on every request, 70% for the 100-byte object and 30% for the 100
KiB one (a query string the origin ignores and the cache keys on), so that
nearly every request is a miss that is stored and evicts others. After an
untimed run as long as the timed one, the workers' RSS is taken; then the
timed run, with the cache's occupancy read from the admin socket twice a
second; then the RSS again. Issue 15's acceptance: the size stays bounded
(`max used %` at most 100) and memory flat (`rss +%` near zero): the bound
tests/test_cache_bound.py holds lb to, over a longer run.
"""

from __future__ import annotations

import json
import threading
import time

import psutil

from bench import harness

NAME = "cache_churn"
ORDER = 58
KIND = "wrk"
MODE = "http"
SUMMARY = "random keys through a 16m cache: lb's occupancy against its size and the workers' RSS growth"
TARGETS = ("lb", harness.BASELINE)
SIZE = 16 << 20
METRICS = (
    harness.CPU_US_REQ_METRIC,
    harness.REQ_S_METRIC,
    harness.P99_METRIC,
    harness.Metric("hit_pct", "hit %", ".1f"),
    harness.Metric("evicted", "evicted", ",.0f"),
    harness.Metric("max_used_pct", "max used %", ".1f"),
    harness.Metric("rss_mib", "rss MiB", ",.1f"),
    harness.Metric("rss_growth_kib", "rss +KiB", "+,.0f"),
    harness.Metric("rss_growth_pct", "rss +%", "+.2f"),
)
SCRIPT = str(harness.REPO_ROOT / "bench" / "cache_churn.lua")


def _stats(target) -> dict | None:
    try:
        reply = json.loads(harness._unix_exchange(target.dir / "admin.sock",
                                                  b'{"v": 1, "cmd": "cache.stats"}\n', lines=1))
        return reply["result"]["caches"][0]["counts"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _rss(target) -> int:
    """The workers' and the checker's RSS, summed (the supervisor's is not the data path's)."""
    total = 0
    for p in target.candidates():
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(ctx, target):
    target.stop()
    target.listener_extra = 'cache = "bench"\n'
    target.config_extra = f'\n[caches.bench]\nsize = "{SIZE >> 20}m"\nmax_object_size = "1m"\n'
    target.start()
    seconds = max(1, round(ctx.opts.duration_s))
    harness.log(f"  {target.name}: untimed churn of {seconds}s, so that the workers' pools reach their size")
    harness.run_wrk(ctx, target.url("/cached"), seconds, script=SCRIPT)
    rss0 = _rss(target)
    before = _stats(target) or {}
    peak = {"used": 0}
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            st = _stats(target)
            if st:
                peak["used"] = max(peak["used"], st["bytes"], st["blocks_used"] * 4096)
                peak["size"] = st["size"]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = harness.wrk_measure(ctx, target, "/cached", script=SCRIPT)
    finally:
        done.set()
        sampler.join()
    rss1 = _rss(target)
    after = _stats(target) or {}
    looked = sum(after.get(k, 0) - before.get(k, 0) for k in ("hit", "miss", "stale", "bypass"))
    hits = after.get("hit", 0) - before.get("hit", 0)
    size = peak.get("size") or after.get("size") or SIZE
    out = {**result,
           "hit_pct": 100.0 * hits / looked if looked else None,
           "evicted": after.get("evicted", 0) - before.get("evicted", 0),
           "max_used_pct": 100.0 * peak["used"] / size if peak["used"] else None,
           "rss_mib": rss1 / harness.ONE_MIB,
           "rss_growth_kib": (rss1 - rss0) / 1024,
           "rss_growth_pct": 100.0 * (rss1 - rss0) / rss0 if rss0 else None}
    harness.log(f"  {target.name}: RSS {rss0 / harness.ONE_MIB:.1f} -> {rss1 / harness.ONE_MIB:.1f} MiB, "
                f"cache at most {out['max_used_pct'] or 0:.1f}% of its {size / harness.ONE_MIB:.1f} MiB, "
                f"{out['evicted']:,} evicted")
    return out
