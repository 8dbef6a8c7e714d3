"""metrics_scrape: a Prometheus scrape of 10 pools x 1,000 backends, and what
it costs a worker.

No proxy runs: the harness calls `measure_local` in its own process. A config
of 10 pools of 1,000 backends each behind one http listener is made into a
shared-memory region as the supervisor makes it (4 worker rows, as with two
workers), every worker row of every entity is filled with counts, and the
scrape is rendered by the supervisor's own code (lb.metrics.render_chunks,
the pieces the endpoint sends one after the other), many times: the time per scrape (target: under 100 ms), its size and lines.

Then the workers' side: the `metrics` step itself (lb._fastpath
metrics_step_ns, the workers' compiled code, timed in C) counts exchanges
spread over the 10,000 backends, alone and then while another process
scrapes the same region back to back, as a Prometheus scraping every few
seconds never would, and with a scrape a second (four times Prometheus'
usual rate). The ratios say what scrapes cost a worker; the step
never waits for a scrape (there is no lock), so only shared cache lines can
slow it.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time
import types

NAME = "metrics_scrape"
ORDER = 103
KIND = "local"
SUMMARY = "a scrape of 10 pools x 1,000 backends: ms per scrape; the worker's metrics step alone and during scrapes"
TARGETS = ()
METRICS = ()

POOLS = 10
BACKENDS = 1000
ROWS = 5          # 2 workers, 2 spares, the carried row
SCRAPES = 15
STEPS = 2_000_000
STEPS_PACED = 30_000_000   # a few seconds: a paced scrape falls within
PACED_INTERVAL = 1.0       # a scrape a second, four times Prometheus' usual
SCRAPE_LIMIT_MS = 100.0


def _config_text() -> str:
    parts = ['[listeners.web]\nbind = ["127.0.0.1:1"]\nmode = "http"\npool = "p0"\n']
    for r in range(4):
        parts.append(f'[[listeners.web.routes]]\nname = "r{r}"\npath_prefix = "/r{r}/"\npool = "p{r}"\n')
    for p in range(POOLS):
        parts.append(f'[pools.p{p}]\n[pools.p{p}.health]\ntype = "tcp"\n')
        parts.extend(f'[[pools.p{p}.backends]]\naddress = "10.{p}.{b // 250}.{b % 250 + 1}:8080"\nname = "b{b}"\n'
                     for b in range(BACKENDS))
    return "\n".join(parts)


def _scrape_loop(path: str, stop, count, interval: float) -> None:
    from lb._fastpath import Shm

    shm = Shm.attach(path)
    n = 0
    while not stop.is_set():
        shm.metrics_totals([0, 1, ROWS - 1])
        n += 1
        if interval:
            stop.wait(interval)
    count.value = n


def _steps_beside_scrapes(path, region, n_slots, steps: int, interval: float) -> tuple[float, float]:
    """ns per step while another process sums the rows every interval (0:
    back to back), and the sums per second it made."""
    from lb._fastpath import metrics_step_ns

    mp = multiprocessing.get_context("fork")
    stop, count = mp.Event(), mp.Value("q", 0)
    scraper = mp.Process(target=_scrape_loop, args=(path, stop, count, interval))
    scraper.start()
    try:
        time.sleep(0.2)
        t0 = time.perf_counter()
        ns = min(metrics_step_ns(region, 0, steps, n_slots, seed=17 + k) for k in range(2))
        span = time.perf_counter() - t0
    finally:
        stop.set()
        scraper.join(10)
    return ns, count.value / span


def measure_local(ctx) -> dict:
    from lb import config as config_mod
    from lb import metrics
    from lb import shm as shm_mod
    from lb._fastpath import METRIC_WORDS, Shm, metrics_step_ns

    cfg = config_mod.loads(_config_text())
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "metrics.shm")
        region = shm_mod.create_for_config(cfg, ROWS, path)
        try:
            n_slots = sum(region.pool_capacity(i) for i in range(region.n_pools))
            # the two workers' rows and the carried row count something (as after a
            # reload); the spare rows stay empty, as until a worker is replaced
            for row in (0, 1, ROWS - 1):
                metrics_step_ns(region, row, 200_000, n_slots, seed=row + 1)
            gen = types.SimpleNamespace(
                number=1, config=cfg, shm=region, carried_row=ROWS - 1,
                slots=[types.SimpleNamespace(row=r) for r in range(2)],
                backends={name: {b.name: i for i, b in enumerate(p.backends)} for name, p in cfg.pools.items()},
                metrics_handed_over={}, metrics_label_cache=None)
            sup = types.SimpleNamespace(gen=gen, old=[], children={}, started=time.time(),
                                        metrics_history=metrics.History())
            times, size = [], 0
            for _ in range(SCRAPES):
                t0 = time.perf_counter()
                chunks = metrics.render_chunks(sup)   # as the server sends them
                times.append((time.perf_counter() - t0) * 1000)
                size = sum(len(c) for c in chunks)
            lines = sum(c.count(b"\n") for c in chunks)
            t0 = time.perf_counter()
            for _ in range(5):
                region.metrics_totals(metrics.counted_rows(gen))
            sum_ms = (time.perf_counter() - t0) * 1000 / 5
            t0 = time.perf_counter()
            metrics.stats_document(sup)
            stats_ms = (time.perf_counter() - t0) * 1000

            # alone and paced in turn, the best of each: the machine's other load
            # falls on both alike
            alone, paced_ns = float("inf"), float("inf")
            for k in range(2):
                alone = min(alone, metrics_step_ns(region, 0, STEPS_PACED, n_slots, seed=7 + k))
                paced_ns = min(paced_ns, _steps_beside_scrapes(path, region, n_slots, STEPS_PACED, PACED_INTERVAL)[0])
            busy_ns, busy_rate = _steps_beside_scrapes(path, region, n_slots, STEPS, 0.0)
        finally:
            region.unlink()
    median = statistics.median(times)
    return {"pools": POOLS, "backends": POOLS * BACKENDS, "scrape_ms_median": median, "scrape_ms_max": max(times),
            "scrape_bytes": size, "scrape_lines": lines, "sum_rows_ms": sum_ms, "stats_json_ms": stats_ms,
            "step_ns_alone": alone, "step_ns_back_to_back": busy_ns, "sums_per_s_back_to_back": busy_rate,
            "step_ns_paced": paced_ns, "paced_interval_s": PACED_INTERVAL,
            "limit_ms": SCRAPE_LIMIT_MS, "targets_met": median < SCRAPE_LIMIT_MS,
            "words_per_entity": METRIC_WORDS}


def format_local(result: dict) -> str:
    lines = [f"== {NAME}: {SUMMARY}"]
    if not result.get("ok"):
        return "\n".join(lines + [f"   FAILED: {result.get('error')}"])
    r = result
    lines += [
        f"   {r['pools']} pools x {r['backends'] // r['pools']:,} backends: scrape {r['scrape_ms_median']:.1f} ms "
        f"(median of {SCRAPES}, max {r['scrape_ms_max']:.1f}), {r['scrape_bytes'] / 1e6:.1f} MB, "
        f"{r['scrape_lines']:,} lines; target < {r['limit_ms']:g} ms: {'met' if r['targets_met'] else 'MISSED'}",
        f"   of which summing the worker rows: {r['sum_rows_ms']:.1f} ms; /stats.json: {r['stats_json_ms']:.1f} ms",
        f"   worker's metrics step, ns/exchange: {r['step_ns_alone']:.1f} alone; "
        f"{r['step_ns_paced']:.1f} with a scrape every {r['paced_interval_s']:g} s "
        f"({r['step_ns_paced'] / r['step_ns_alone']:.2f}x); {r['step_ns_back_to_back']:.1f} with the rows summed "
        f"back to back ({r['sums_per_s_back_to_back']:.0f}/s, {r['step_ns_back_to_back'] / r['step_ns_alone']:.2f}x)",
    ]
    return "\n".join(lines)
