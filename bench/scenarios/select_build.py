"""select_build: Maglev table build time, compiled against the pure-Python reference.

No proxy runs: the harness calls `measure_local` in its own process. The
compiled figure is `lb._fastpath.bench_maglev_build` (the best of several
builds timed in compiled code: hashing, sorting and filling); the reference
(tests/reference/select_ref.py) is built once per point, timed in Python, and
its table is compared with the compiled one. Weights are random 1..1000 with
a fixed seed; names look like addresses, as the config makes them.
"""

from __future__ import annotations

import random
import time

from bench import harness

NAME = "select_build"
ORDER = 100
KIND = "local"
SUMMARY = "Maglev table build, compiled vs reference: N = 10..10000 backends, M = 65537, 655373"
TARGETS = ()
METRICS = ()

SIZES = (10, 100, 1000, 10_000)
TABLE_SIZES = (65537, 655373)
# The targets: (N, M) -> compiled build time limit, milliseconds.
LIMITS_MS = {(1000, 65537): 2.0, (1000, 655373): 25.0}
SEED = 1


def pool(n: int) -> tuple[list[str], list[int]]:
    rnd = random.Random(SEED)
    names = [f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}:8080" for i in range(n)]
    return names, [rnd.randint(1, 1000) for _ in range(n)]


def measure_local(ctx) -> dict:
    fast, ref = harness.selection_modules("bench_maglev_build")
    points = []
    for m in TABLE_SIZES:
        for n in SIZES:
            names, weights = pool(n)
            repeat = 20 if m < 100_000 else 5
            compiled_s = fast.bench_maglev_build(names, weights, m, repeat)
            t0 = time.perf_counter()
            ref_table = ref.maglev_table(names, weights, m)
            reference_s = time.perf_counter() - t0
            equal = fast.maglev_table(names, weights, m) == ref_table
            harness.log(f"  {NAME}: N={n} M={m}: compiled {compiled_s * 1e3:.3f} ms, "
                        f"reference {reference_s * 1e3:.0f} ms")
            points.append({
                "n": n, "m": m,
                "compiled_ms": compiled_s * 1e3,
                "reference_ms": reference_s * 1e3,
                "speedup": reference_s / compiled_s if compiled_s > 0 else None,
                "tables_equal": equal,
            })
    targets = []
    for (n, m), limit in LIMITS_MS.items():
        got = next(p["compiled_ms"] for p in points if p["n"] == n and p["m"] == m)
        targets.append({"what": f"build N={n} M={m}", "limit_ms": limit, "compiled_ms": got, "met": got <= limit})
    return {
        "weights": f"random 1..1000 (seed {SEED})",
        "compiled": f"best of 20 builds (M < 100000) or 5, timed in compiled code",
        "reference": "one build per point, timed in Python",
        "points": points,
        "targets": targets,
        "targets_met": all(t["met"] for t in targets),
        "tables_equal": all(p["tables_equal"] for p in points),
    }


def format_local(result: dict) -> str:
    lines = [f"== {NAME}: {SUMMARY}"]
    if not result.get("ok"):
        return "\n".join(lines + [f"   FAILED: {result.get('error')}"])
    lines.append(f"   weights {result['weights']}; compiled: {result['compiled']}; reference: {result['reference']}")
    lines.append(f"   {'N':>6} {'M':>8} {'compiled ms':>12} {'reference ms':>13} {'ref/compiled':>13}  same table")
    for p in result["points"]:
        speedup = f"{p['speedup']:,.0f}x" if p["speedup"] else "-"
        lines.append(f"   {p['n']:>6} {p['m']:>8} {p['compiled_ms']:>12.3f} {p['reference_ms']:>13.1f} "
                     f"{speedup:>13}  {'yes' if p['tables_equal'] else 'NO'}")
    lines.append("   targets:")
    for t in result["targets"]:
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"     {t['what']:<22} <= {t['limit_ms']:g} ms: {t['compiled_ms']:.3f} ms  {verdict}")
    return "\n".join(lines)
