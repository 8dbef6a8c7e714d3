"""The pure-Python reference of backend selection: docs/selection.md, literally.

This module offers the same API as the compiled one in ``lb._fastpath``
(``hash64``, ``maglev_table``, ``Selector``, and the two bench helpers), keeps
its state in plain Python objects, and is written to be read against the
specification: one function per rule, in the order the document gives them.
The tests run every scenario against both and compare them pick for pick.

A ``Selector`` is one pool as the data plane sees it: backend slots
``0..n-1`` (the list positions), per-slot admin state, health and weight (the
single-writer fields of shared memory), per-row active-connection counters
(one row per worker), and per-row private state (the smooth round-robin
scores, the leastconn cursor, the splitmix64 generator). ``row`` arguments say
which worker is acting.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

__all__ = ["ALGORITHMS", "ADMIN_STATES", "Selector", "SplitMix64", "hash64", "maglev_table"]

ALGORITHMS = ("roundrobin", "leastconn", "random", "p2c", "maglev")
ADMIN_STATES = ("ready", "drain", "maint")
MAX_WEIGHT = 1000

MASK64 = (1 << 64) - 1


# ---- The hash: XXH64 -------------------------------------------------------------
#
# The published algorithm (github.com/Cyan4973/xxHash, doc/xxhash_spec.md),
# every operation taken mod 2^64.

PRIME64_1 = 0x9E3779B185EBCA87
PRIME64_2 = 0xC2B2AE3D27D4EB4F
PRIME64_3 = 0x165667B19E3779F9
PRIME64_4 = 0x85EBCA77C2B2AE63
PRIME64_5 = 0x27D4EB2F165667C5


def _rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK64


def _read_u64(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 8], "little")


def _read_u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def _xxh64_round(acc: int, lane: int) -> int:
    acc = (acc + lane * PRIME64_2) & MASK64
    acc = _rotl64(acc, 31)
    return (acc * PRIME64_1) & MASK64


def _xxh64_merge(acc: int, lane_acc: int) -> int:
    acc ^= _xxh64_round(0, lane_acc)
    return (acc * PRIME64_1 + PRIME64_4) & MASK64


def _xxh64_avalanche(h: int) -> int:
    h ^= h >> 33
    h = (h * PRIME64_2) & MASK64
    h ^= h >> 29
    h = (h * PRIME64_3) & MASK64
    h ^= h >> 32
    return h


def hash64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` with ``seed``: equals ``xxhash.xxh64_intdigest(data, seed)``."""
    data = bytes(data)
    seed &= MASK64
    length = len(data)
    at = 0
    if length >= 32:
        v1 = (seed + PRIME64_1 + PRIME64_2) & MASK64
        v2 = (seed + PRIME64_2) & MASK64
        v3 = seed
        v4 = (seed - PRIME64_1) & MASK64
        while at + 32 <= length:
            v1 = _xxh64_round(v1, _read_u64(data, at))
            v2 = _xxh64_round(v2, _read_u64(data, at + 8))
            v3 = _xxh64_round(v3, _read_u64(data, at + 16))
            v4 = _xxh64_round(v4, _read_u64(data, at + 24))
            at += 32
        h = (_rotl64(v1, 1) + _rotl64(v2, 7) + _rotl64(v3, 12) + _rotl64(v4, 18)) & MASK64
        for v in (v1, v2, v3, v4):
            h = _xxh64_merge(h, v)
    else:
        h = (seed + PRIME64_5) & MASK64
    h = (h + length) & MASK64
    while at + 8 <= length:
        h ^= _xxh64_round(0, _read_u64(data, at))
        h = (_rotl64(h, 27) * PRIME64_1 + PRIME64_4) & MASK64
        at += 8
    if at + 4 <= length:
        h ^= (_read_u32(data, at) * PRIME64_1) & MASK64
        h = (_rotl64(h, 23) * PRIME64_2 + PRIME64_3) & MASK64
        at += 4
    while at < length:
        h ^= (data[at] * PRIME64_5) & MASK64
        h = (_rotl64(h, 11) * PRIME64_1) & MASK64
        at += 1
    return _xxh64_avalanche(h)


# ---- Random numbers: splitmix64 ---------------------------------------------------


class SplitMix64:
    """One worker's generator; its state ``s`` starts at the worker's seed."""

    def __init__(self, seed: int):
        self.s = seed & MASK64

    def next(self) -> int:
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


# ---- maglev: building the table -------------------------------------------------------


@dataclasses.dataclass
class _MaglevEntry:
    index: int  # position in the caller's lists
    weight: int
    offset: int
    skip: int
    next: int = 0
    target: int = 0


def maglev_table(names: Sequence[str], weights: Sequence[int], table_size: int) -> list[int]:
    """The weighted Maglev table of size ``table_size`` for these (name, weight) entries.

    The entries may come in any order; the result holds, for every table
    position, the index of the chosen entry in the input lists, or -1 everywhere
    when no entry has a weight above 0. Entries of weight 0 are left out.
    """
    if len(names) != len(weights):
        raise ValueError("names and weights differ in length")
    m = table_size
    if m < 2:
        raise ValueError(f"table_size must be a prime of at least 2, got {m}")
    table = [-1] * m

    # 1. Sort by name, bytewise UTF-8: the table depends on names and weights only.
    indices = [i for i in range(len(names)) if weights[i] > 0]
    indices.sort(key=lambda i: names[i].encode("utf-8"))
    if not indices:
        return table

    # 2. Each entry's preference list: offset, skip; next = 0, target = 0.
    entries = []
    for i in indices:
        name = names[i].encode("utf-8")
        entries.append(
            _MaglevEntry(
                index=i,
                weight=weights[i],
                offset=hash64(name, 0) % m,
                skip=hash64(name, 1) % (m - 1) + 1,
            )
        )
    maxw = max(e.weight for e in entries)

    # 3. Weighted turns until the table is full.
    filled = 0
    iteration = 0
    while filled < m:
        iteration += 1
        for e in entries:
            if filled == m:
                break
            if iteration * e.weight < e.target:
                continue  # not this entry's turn in this iteration
            e.target += maxw
            while True:
                c = (e.offset + e.skip * e.next) % m
                e.next += 1
                if table[c] == -1:
                    break
            table[c] = e.index
            filled += 1
    return table


def bench_maglev_build(names: Sequence[str], weights: Sequence[int], table_size: int, repeat: int) -> float:
    """Seconds per build of ``maglev_table``, the mean of ``repeat`` builds."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        maglev_table(names, weights, table_size)
    return (time.perf_counter() - t0) / repeat


# ---- A pool ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Backend:
    name: str
    weight: int  # the weight in effect
    backup: bool
    admin: str = "ready"
    up: bool = True
    in_use: bool = True


@dataclasses.dataclass
class _Row:
    """One worker's private state."""

    current: list[int]  # roundrobin scores, per slot
    seen_generation: int  # the pool generation `current` belongs to
    cursor: int  # leastconn
    rng: SplitMix64  # random, p2c


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


class Selector:
    """One pool, its counters and every worker's selection state, in plain Python."""

    def __init__(
        self,
        algorithm: str,
        names: Sequence[str],
        weights: Sequence[int],
        *,
        table_size: int = 65537,
        balance_factor: float = 0.0,
        seed: int = 1,
        backups: Sequence[bool] | None = None,
        rows: int = 1,
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        if len(names) != len(weights):
            raise ValueError("names and weights differ in length")
        if backups is None:
            backups = [False] * len(names)
        if len(backups) != len(names):
            raise ValueError("backups and names differ in length")
        if rows < 1:
            raise ValueError("rows must be at least 1")
        for w in weights:
            _check_weight(w)
        self.algorithm = algorithm
        self.table_size = table_size
        self.balance_factor = balance_factor
        self.backends = [_Backend(n, w, bool(b)) for n, w, b in zip(names, weights, backups)]
        n = len(self.backends)
        self.rows = rows
        self._active = [[0] * n for _ in range(rows)]  # [row][slot]
        self._pool_active = [0] * rows  # [row]
        self._generation = 1
        self._row_state = [
            _Row(current=[0] * n, seen_generation=self._generation, cursor=row, rng=SplitMix64(seed + row))
            for row in range(rows)
        ]
        self._table: list[int] = []
        self._table_weight = 0  # W: the sum of the weights entered in the live table
        if algorithm == "maglev":
            self._build_table()

    # -- writers (supervisor, checker) -------------------------------------------

    def set_weight(self, slot: int, weight: int) -> None:
        _check_weight(weight)
        self.backends[self._slot(slot)].weight = weight
        self._generation += 1

    def set_health(self, slot: int, up: bool) -> None:
        self.backends[self._slot(slot)].up = bool(up)
        self._generation += 1

    def set_admin(self, slot: int, state: str) -> None:
        if state not in ADMIN_STATES:
            raise ValueError(f"admin state must be one of {', '.join(ADMIN_STATES)}, got {state!r}")
        self.backends[self._slot(slot)].admin = state
        self._generation += 1

    def rebuild(self) -> None:
        """Build the Maglev table from the backends as they are now, then flip to it.

        The flip changes which table is live, not the pool's generation (which
        counts changes of backend fields).
        """
        if self.algorithm == "maglev":
            self._build_table()

    def generation(self) -> int:
        return self._generation

    def table(self) -> list[int]:
        return list(self._table)

    # -- counters (each worker its own row) ----------------------------------------

    def take(self, slot: int, row: int = 0) -> None:
        self._active[self._row(row)][self._slot(slot)] += 1
        self._pool_active[row] += 1

    def drop(self, slot: int, row: int = 0) -> None:
        self._active[self._row(row)][self._slot(slot)] -= 1
        self._pool_active[row] -= 1

    def active(self, slot: int) -> int:
        """Connections open to ``slot``, summed over every worker."""
        slot = self._slot(slot)
        return sum(self._active[row][slot] for row in range(self.rows))

    def pool_active(self) -> int:
        return sum(self._pool_active)

    def _slot(self, slot: int) -> int:
        if not 0 <= slot < len(self.backends):
            raise IndexError(f"slot {slot} out of range")
        return slot

    def _row(self, row: int) -> int:
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} out of range")
        return row

    # -- the common rule -------------------------------------------------------------

    def _usable(self, slot: int) -> bool:
        b = self.backends[slot]
        return b.in_use and b.admin == "ready" and b.up and b.weight > 0

    def _candidate(self, slot: int, tried: Sequence[int], backup: bool) -> bool:
        return self._usable(slot) and self.backends[slot].backup == backup and slot not in tried

    def _candidates(self, tried: Sequence[int], backup: bool) -> list[int]:
        return [slot for slot in range(len(self.backends)) if self._candidate(slot, tried, backup)]

    def pick(self, key: bytes = b"", tried: Sequence[int] = (), row: int = 0) -> int:
        """The slot for a new connection (with ``key``, having tried ``tried``), or -1."""
        tried = tuple(tried)
        state = self._row_state[self._row(row)]
        if self.algorithm == "roundrobin":
            return self._pick_roundrobin(state, tried)
        if self.algorithm == "leastconn":
            return self._pick_leastconn(state, tried)
        if self.algorithm == "random":
            return self._pick_random(state, tried)
        if self.algorithm == "p2c":
            return self._pick_p2c(state, tried)
        return self._pick_maglev(bytes(key), tried)

    # -- roundrobin: smooth weighted round robin ---------------------------------------

    def _pick_roundrobin(self, state: _Row, tried: tuple[int, ...]) -> int:
        if state.seen_generation != self._generation:
            state.current = [0] * len(self.backends)
            state.seen_generation = self._generation
        for backup in (False, True):
            candidates = self._candidates(tried, backup)
            if not candidates:
                continue
            total = 0
            for slot in candidates:
                state.current[slot] += self.backends[slot].weight
                total += self.backends[slot].weight
            best = candidates[0]
            for slot in candidates:
                if state.current[slot] > state.current[best]:
                    best = slot  # strictly larger: the first in slot order wins ties
            state.current[best] -= total
            return best
        return -1

    # -- leastconn: weighted least connections --------------------------------------------

    def _pick_leastconn(self, state: _Row, tried: tuple[int, ...]) -> int:
        n = len(self.backends)
        if n == 0:
            return -1
        start = state.cursor % n
        state.cursor += 1
        walk = [(start + k) % n for k in range(n)]
        for backup in (False, True):
            best = -1
            for slot in walk:
                if not self._candidate(slot, tried, backup):
                    continue
                if best < 0 or self._lighter(slot, best):
                    best = slot  # strictly lighter: the first in walk order wins ties
            if best >= 0:
                return best
        return -1

    def _lighter(self, i: int, j: int) -> bool:
        """(active(i)+1)/weight(i) < (active(j)+1)/weight(j), without division."""
        return (self.active(i) + 1) * self.backends[j].weight < (self.active(j) + 1) * self.backends[i].weight

    # -- random: weighted random ----------------------------------------------------------

    def _pick_random(self, state: _Row, tried: tuple[int, ...]) -> int:
        for backup in (False, True):
            candidates = self._candidates(tried, backup)
            if not candidates:
                continue
            total = sum(self.backends[slot].weight for slot in candidates)
            r = state.rng.next() % total
            cumulative = 0
            for slot in candidates:
                cumulative += self.backends[slot].weight
                if cumulative > r:
                    return slot
        return -1

    # -- p2c: power of two choices ----------------------------------------------------------

    def _pick_p2c(self, state: _Row, tried: tuple[int, ...]) -> int:
        for backup in (False, True):
            candidates = self._candidates(tried, backup)
            k = len(candidates)
            if k == 0:
                continue
            if k == 1:
                return candidates[0]
            a = state.rng.next() % k
            b = (a + 1 + state.rng.next() % (k - 1)) % k
            slot_a, slot_b = candidates[a], candidates[b]
            if self._lighter(slot_b, slot_a):
                return slot_b
            return slot_a
        return -1

    # -- maglev -------------------------------------------------------------------------------

    def _hashable(self, slot: int) -> bool:
        """Usable, except that a draining backend is hashable too: drain stops the
        connections a balancer places, while flows that hash to it finish there."""
        b = self.backends[slot]
        return b.in_use and b.admin in ("ready", "drain") and b.up and b.weight > 0

    def _build_table(self) -> None:
        """Enter the hashable primaries in a new table, or only when there is
        none, the hashable backups (the build chooses the kind)."""
        entered = []
        for backup in (False, True):
            entered = [
                slot
                for slot in range(len(self.backends))
                if self._hashable(slot) and self.backends[slot].backup == backup
            ]
            if entered:
                break
        names = [self.backends[slot].name for slot in entered]
        weights = [self.backends[slot].weight for slot in entered]
        table = maglev_table(names, weights, self.table_size)
        self._table = [entered[i] if i >= 0 else -1 for i in table]
        self._table_weight = sum(weights)

    def _bounded(self) -> bool:
        return self.balance_factor > 1

    def _full(self, slot: int, pool_active: int) -> bool:
        """Bounded loads: would one more connection take ``slot`` past its bound?"""
        c_milli = _round_half_up(self.balance_factor * 1000)
        bound = _ceil_div(c_milli * (pool_active + 1) * self.backends[slot].weight, 1000 * self._table_weight)
        return self.active(slot) + 1 > bound

    def _pick_maglev(self, key: bytes, tried: tuple[int, ...]) -> int:
        """The first entry from the key's position on that is hashable, not yet
        tried and (with bounded loads) not full; entries of either kind, as the
        build already chose the kind. When every entry is full (only possible
        while weights changed since the build), the first hashable untried one."""
        m = self.table_size
        if not self._table or self._table[0] < 0:
            return -1  # nothing was entered at the last build
        pos = hash64(key, 0) % m
        pool_active = self.pool_active()
        for bounded in ((True, False) if self._bounded() else (False,)):
            for step in range(m):
                slot = self._table[(pos + step) % m]
                if not self._hashable(slot) or slot in tried:
                    continue
                if bounded and self._full(slot, pool_active):
                    continue
                return slot
        return -1

    # -- bench ---------------------------------------------------------------------------------

    def bench_pick(self, n: int, key_len: int = 16) -> float:
        """Nanoseconds per pick over ``n`` picks with fresh ``key_len``-byte keys.

        The keys are made before the clock starts (making them in Python would
        cost more than the compiled pick being compared); hashing is timed.
        """
        rng = SplitMix64(12345)
        keys = []
        for _ in range(n):
            words = (key_len + 7) // 8
            raw = b"".join(rng.next().to_bytes(8, "little") for _ in range(words))
            keys.append(raw[:key_len])
        t0 = time.perf_counter_ns()
        for key in keys:
            self.pick(key)
        return (time.perf_counter_ns() - t0) / max(n, 1)


def _check_weight(weight: int) -> None:
    if not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be within 0..{MAX_WEIGHT}, got {weight}")
