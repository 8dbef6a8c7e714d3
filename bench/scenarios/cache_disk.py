"""cache_disk: hits of a working set larger than memory, lb's disk tier against nginx proxy_cache, same run.

2,000 objects of 100 KiB (200 MiB, GET /cached100k?k=N, `max-age=3600`),
asked for at random (bench/cache_keys.lua) after one request each filled
the caches. lb's cache has a memory tier of 16 MiB and a disk tier of
512 MiB (docs/cache.md "Disk tier"): most requests are a memory miss, a
disk hit, a promotion into memory (a copy and a checksum) and the answer.
nginx's proxy_cache keeps every body in a file and answers with sendfile
from the page cache. Both files sit in the page cache here: this measures
the CPU of the tiers, not the disk.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from bench import harness

NAME = "cache_disk"
ORDER = 58
KIND = "wrk"
MODE = "http"
SUMMARY = "cache hits over a 200 MiB working set: lb's 16 MiB memory + disk tier vs nginx proxy_cache (cpu/req, req/s)"
TARGETS = ("nginx", "lb", harness.BASELINE)   # lb-base with --baseline: a change before and after
METRICS = (
    harness.CPU_US_REQ_METRIC,
    harness.REQ_S_METRIC,
    harness.P99_METRIC,
    harness.Metric("hit_pct", "hit %", ".1f"),
    harness.Metric("disk_hit_pct", "disk hit %", ".1f"),
)
GOALS = {}
KEYS = 2000
SCRIPT = Path(__file__).resolve().parent.parent / "cache_keys.lua"


def _configure(target) -> None:
    if target.name in ("lb", harness.BASELINE):
        target.listener_extra = 'cache = "bench"\n'
        target.config_extra = (f'\n[caches.bench]\nsize = "16m"\nmax_object_size = "1m"\n'
                               f'disk = "{target.dir}"\ndisk_size = "512m"\n')
    else:
        (target.dir / "cache").mkdir(exist_ok=True)
        (target.dir / "cache").chmod(0o777)
        target.http_extra = (f"proxy_cache_path {target.dir}/cache levels=1:2 keys_zone=bench:16m "
                             "max_size=512m inactive=60m use_temp_path=off;")
        target.location_extra = "proxy_cache bench;"


def _counts(target) -> tuple[float, float] | None:
    if target.name not in ("lb", harness.BASELINE):
        return None
    reply = json.loads(harness._unix_exchange(target.dir / "admin.sock",
                                              b'{"v": 1, "cmd": "cache.stats"}\n', lines=1))
    item = reply["result"]["caches"][0]
    c, d = item["counts"], item["disk"]
    return c["hit"], c["hit"] + c["miss"] + c["stale"] + c["bypass"], d["hit"]


def measure(ctx, target):
    target.stop()
    _configure(target)
    target.start()
    for k in range(1, KEYS + 1):
        with urllib.request.urlopen(target.url(f"/cached100k?k={k}"), timeout=5) as r:
            r.read()
    before = _counts(target)
    result = harness.wrk_measure(ctx, target, "/cached100k", env={"LB_BENCH_KEYS": str(KEYS)}, script=str(SCRIPT))
    after = _counts(target)
    if before and after and after[1] > before[1]:
        looked = after[1] - before[1]
        result["hit_pct"] = 100.0 * (after[0] - before[0]) / looked
        result["disk_hit_pct"] = 100.0 * (after[2] - before[2]) / looked
        harness.log(f"  lb: {result['hit_pct']:.1f}% hits, {result['disk_hit_pct']:.1f}% from the disk tier")
    return result
