"""select_pick: picks per second of every selection algorithm, compiled vs reference.

No proxy runs: the harness calls `measure_local` in its own process. Each
algorithm picks from a pool of N backends (random weights 1..1000, 2 worker
rows) that holds 1000 connections spread unevenly over its backends, so that
leastconn and p2c compare real loads and bounded loads walks past full
backends. Every pick gets a fresh 16-byte key that is hashed (XXH64) in the
pick, whether the algorithm uses it or not.

Compiled: `Selector.bench_pick`, a loop in compiled code that makes the key,
hashes it and picks (best of 3). Reference: `select_ref.Selector.bench_pick`,
the same picks in Python (keys made before the clock starts). Target: one
compiled pick, hashing included, in at most 40 ns.
"""

from __future__ import annotations

import random

from bench import harness

NAME = "select_pick"
ORDER = 101
KIND = "local"
SUMMARY = "picks/s per algorithm with 16-byte key hashing, compiled vs reference, N = 10, 100"
TARGETS = ()
METRICS = ()

VARIANTS = (  # (label, algorithm, balance_factor)
    ("roundrobin", "roundrobin", 0.0),
    ("leastconn", "leastconn", 0.0),
    ("random", "random", 0.0),
    ("p2c", "p2c", 0.0),
    ("maglev", "maglev", 0.0),
    ("maglev c=1.25", "maglev", 1.25),
)
SIZES = (10, 100)
ROWS = 2
HELD = 1000
COMPILED_PICKS = 1_000_000
REFERENCE_PICKS = 3000
KEY_LEN = 16
LIMIT_NS = 40.0
SEED = 1


def make_selector(mod, algorithm: str, n: int, balance_factor: float):
    rnd = random.Random(SEED)
    names = [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(n)]
    weights = [rnd.randint(1, 1000) for _ in range(n)]
    sel = mod.Selector(algorithm, names, weights, balance_factor=balance_factor, seed=SEED, rows=ROWS)
    # Held connections, skewed (Zipf-like over the slots), spread over the rows.
    skew = [1.0 / (i + 1) for i in range(n)]
    for k in range(HELD):
        slot = rnd.choices(range(n), weights=skew)[0]
        sel.take(slot, k % ROWS)
    return sel


def measure_local(ctx) -> dict:
    fast, ref = harness.selection_modules("Selector")
    points = []
    for n in SIZES:
        for label, algorithm, c in VARIANTS:
            compiled_sel = make_selector(fast, algorithm, n, c)
            compiled_ns = min(compiled_sel.bench_pick(COMPILED_PICKS, KEY_LEN) for _ in range(3))
            reference_ns = make_selector(ref, algorithm, n, c).bench_pick(REFERENCE_PICKS, KEY_LEN)
            harness.log(f"  {NAME}: {label} N={n}: compiled {compiled_ns:.1f} ns, reference {reference_ns:,.0f} ns")
            points.append({
                "algorithm": label, "n": n,
                "compiled_ns": compiled_ns,
                "compiled_picks_s": 1e9 / compiled_ns if compiled_ns > 0 else None,
                "reference_ns": reference_ns,
                "reference_picks_s": 1e9 / reference_ns if reference_ns > 0 else None,
                "speedup": reference_ns / compiled_ns if compiled_ns > 0 else None,
                "met": compiled_ns <= LIMIT_NS,
            })
    return {
        "pool": {"weights": f"random 1..1000 (seed {SEED})", "rows": ROWS, "held_connections": HELD,
                 "key_bytes": KEY_LEN},
        "compiled": f"Selector.bench_pick, {COMPILED_PICKS} picks, best of 3",
        "reference": f"select_ref Selector.bench_pick, {REFERENCE_PICKS} picks",
        "limit_ns": LIMIT_NS,
        "points": points,
        "targets_met": all(p["met"] for p in points),
    }


def format_local(result: dict) -> str:
    lines = [f"== {NAME}: {SUMMARY}"]
    if not result.get("ok"):
        return "\n".join(lines + [f"   FAILED: {result.get('error')}"])
    pool = result["pool"]
    lines.append(f"   weights {pool['weights']}, {pool['rows']} worker rows, {pool['held_connections']} connections "
                 f"held (skewed); compiled: {result['compiled']}; reference: {result['reference']}")
    lines.append(f"   {'algorithm':<14} {'N':>4} {'compiled ns':>12} {'compiled picks/s':>17} "
                 f"{'reference ns':>13} {'ref picks/s':>12} {'ref/compiled':>13}  <= {result['limit_ns']:g} ns")
    for p in result["points"]:
        lines.append(f"   {p['algorithm']:<14} {p['n']:>4} {p['compiled_ns']:>12.1f} {p['compiled_picks_s']:>17,.0f} "
                     f"{p['reference_ns']:>13,.0f} {p['reference_picks_s']:>12,.0f} {p['speedup']:>12,.0f}x  "
                     f"{'met' if p['met'] else 'MISSED'}")
    return "\n".join(lines)
