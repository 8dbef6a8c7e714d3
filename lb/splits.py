"""The bucket layout of a split: which variant each of its BUCKETS users is in.

A user is a bucket (lb's cookie holds it, or a hash of the sticky key picks
it), and the table maps buckets to variants. The table is laid out once from
the config's weights, then changed only by moves, so that:

- a variant whose weight rises only gains users, one whose weight falls only
  loses users, and a variant whose weight stays keeps every one of its users,
  whatever the number of variants;
- exactly weight * BUCKETS / 100 buckets are in each variant.

The first layout is contiguous, in the order written: the first variant from
bucket 0 up, the next after it, and so on. A change then takes, from each
variant that shrinks, the buckets it must give up (the baseline, variant 0,
gives its highest; every other variant its lowest), and hands them, in
bucket order, to the variants that grow, in the order written. With two
variants this keeps the layout contiguous: the canary holds the top buckets
and grows down into the baseline's, shrinks back up, and a user's variant is
a plain function of the weights. With more it is the history of changes
that decides which buckets moved, so the table itself is kept (the state
file holds it, as runs) and carried over reloads and restarts; a fresh
layout from the weights alone would move users between variants whose
weights did not change.
"""

from __future__ import annotations

BUCKETS = 10000  # SPLIT_BUCKETS of the data plane
PER_PERCENT = BUCKETS // 100


def initial(weights) -> bytearray:
    """The contiguous layout of these weights (percent, in variant order)."""
    table = bytearray()
    for v, w in enumerate(weights):
        table += bytes([v]) * (w * PER_PERCENT)
    assert len(table) == BUCKETS, weights
    return table


def counts(table) -> list[int]:
    out = [0] * (max(table) + 1 if table else 0)
    for v in table:
        out[v] += 1
    return out


def move(table, weights) -> bytearray:
    """The table after a change to these weights, moving only what must move."""
    table = bytearray(table)
    n = len(weights)
    have = [0] * n
    for v in table:
        have[v] += 1
    want = [w * PER_PERCENT for w in weights]
    freed: list[int] = []
    for v in range(n):
        give = have[v] - want[v]
        if give <= 0:
            continue
        mine = [b for b in range(BUCKETS) if table[b] == v]
        # the baseline shrinks from the top, the others from the bottom: two
        # variants then stay contiguous, the canary at the top
        freed += mine[-give:] if v == 0 else mine[:give]
    freed.sort()
    at = 0
    for v in range(n):
        take = want[v] - have[v]
        for b in freed[at:at + max(0, take)]:
            table[b] = v
        at += max(0, take)
    return table


def to_runs(table) -> list[list[int]]:
    """[[variant, length], ...]: how the state file keeps a table."""
    runs: list[list[int]] = []
    for v in table:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return runs


def from_runs(runs, n_variants: int) -> bytearray | None:
    """The table of to_runs' output; None when it is not one of n_variants' tables."""
    table = bytearray()
    try:
        for v, length in runs:
            if not (isinstance(v, int) and isinstance(length, int) and 0 <= v < n_variants and length > 0):
                return None
            table += bytes([v]) * length
    except (TypeError, ValueError):
        return None
    return table if len(table) == BUCKETS else None


def weights_of(table, n_variants: int) -> list[int]:
    c = [0] * n_variants
    for v in table:
        c[v] += 1
    return [x // PER_PERCENT for x in c]
