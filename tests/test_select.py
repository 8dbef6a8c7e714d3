"""Backend selection (docs/selection.md): the compiled code against the reference.

Every behaviour is checked on both implementations (ids ``py``: the pure-Python
reference in tests/reference/select_ref.py; ``c``: lb._fastpath, the code the
workers run), and the two are compared pick for pick and table for table.
Seeds are fixed: a failure reproduces.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import select_ref

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ("roundrobin", "leastconn", "random", "p2c", "maglev")
SMALL_PRIMES = (2, 3, 5, 13, 101, 251, 1009, 4099)
M = 65537  # the default table size


def _compiled():
    # No fallback: without the compiled module (or its selection API) every
    # `c` test must fail, not skip.
    import lb._fastpath

    return lb._fastpath


@pytest.fixture(params=["py", "c"])
def impl(request):
    """The module under test: the reference (py) or the compiled one (c)."""
    return select_ref if request.param == "py" else _compiled()


# ---- helpers -------------------------------------------------------------------------------


def selector(mod, algorithm, names, weights, **kwargs):
    return mod.Selector(algorithm, list(names), list(weights), **kwargs)


def addr_names(n: int) -> list[str]:
    """Backend names as the config makes them by default: the address."""
    return [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(n)]


def random_names(rnd: random.Random, n: int) -> list[str]:
    """Unique names of printable characters, some non-ASCII, some prefixes of others
    (bytewise order puts "ab" before "ab0"), so the sort is really exercised."""
    alphabet = string.ascii_letters + string.digits + ".:-_[]" + "éßλ中🙂"
    names: set[str] = set()
    while len(names) < n:
        kind = rnd.random()
        if kind < 0.2 and names:
            name = rnd.choice(sorted(names)) + rnd.choice(alphabet)
        elif kind < 0.4:
            name = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}:{rnd.randrange(1, 65536)}"
        else:
            name = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 20)))
        if len(name.encode()) <= 63:
            names.add(name)
    out = sorted(names)
    rnd.shuffle(out)
    return out


def random_keys(rnd: random.Random, n: int, length: int = 16) -> list[bytes]:
    return [rnd.randbytes(length) for _ in range(n)]


def zipf_keys(rnd: random.Random, n: int, s: float = 1.1, distinct: int = 10_000) -> list[bytes]:
    """n keys of 16 bytes; the key of rank k comes with probability ~ 1/k^s."""
    population = random_keys(rnd, distinct)
    weights = [1.0 / k**s for k in range(1, distinct + 1)]
    return rnd.choices(population, weights=weights, k=n)


def named_table(names, table) -> list[str]:
    return [names[i] for i in table]


def table_digest(names, table) -> str:
    return hashlib.sha256("\n".join(named_table(names, table)).encode()).hexdigest()


def usable_table(mod, names, weights, usable: list[int], table_size: int) -> list[int]:
    """The table a Selector should hold: maglev_table over the usable slots, as slots."""
    table = mod.maglev_table([names[s] for s in usable], [weights[s] for s in usable], table_size)
    return [usable[i] if i >= 0 else -1 for i in table]


# ---- XXH64 -------------------------------------------------------------------------------


def test_hash64_equals_xxhash(impl):
    rnd = random.Random(64)
    lengths = list(range(0, 72)) + [100, 255, 1000, 4096]
    for length in lengths:
        data = rnd.randbytes(length)
        for seed in (0, 1, 2**31, 2**64 - 1, rnd.getrandbits(64)):
            assert impl.hash64(data, seed) == xxhash.xxh64_intdigest(data, seed), (length, seed)
    assert impl.hash64(b"") == xxhash.xxh64_intdigest(b"", 0)


# ---- Maglev: building ----------------------------------------------------------------------


@pytest.mark.parametrize("n,table_size", [(1, 13), (7, 251), (10, M), (100, M), (333, M)])
def test_maglev_equal_weights_gives_floor_or_ceil(impl, n, table_size):
    names = addr_names(n)
    table = impl.maglev_table(names, [100] * n, table_size)
    assert len(table) == table_size
    counts = Counter(table)
    assert set(counts) == set(range(n))
    lo, hi = table_size // n, -(-table_size // n)
    assert all(lo <= c <= hi for c in counts.values()), (min(counts.values()), max(counts.values()), lo, hi)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_maglev_weighted_table_is_proportional(impl, seed):
    """N=100, random weights 1..1000: every backend's slots within 1% of its
    share (or within 2 slots where 1% is less: a weight-1 backend expects
    about one slot, and slots are whole)."""
    rnd = random.Random(seed)
    n = 100
    names = random_names(rnd, n)
    weights = [rnd.randint(1, 1000) for _ in range(n)]
    table = impl.maglev_table(names, weights, M)
    counts = Counter(table)
    total = sum(weights)
    assert -1 not in counts
    spread = 0.0
    for i in range(n):
        expected = M * weights[i] / total
        assert abs(counts[i] - expected) <= max(0.01 * expected, 2), (names[i], weights[i], counts[i], expected)
        spread += abs(counts[i] / M - weights[i] / total)
    assert spread <= 0.01


def test_maglev_zero_weights_and_empty(impl):
    names = ["a", "b", "c", "d"]
    table = impl.maglev_table(names, [0, 100, 0, 50], 101)
    assert set(table) == {1, 3}
    assert impl.maglev_table(names, [0, 0, 0, 0], 101) == [-1] * 101
    assert impl.maglev_table([], [], 13) == [-1] * 13
    # A weight-0 entry changes nothing for the others.
    assert named_table(names, table) == named_table(["b", "d"], impl.maglev_table(["b", "d"], [100, 50], 101))


def test_maglev_compiled_table_equals_reference():
    fast = _compiled()
    rnd = random.Random(2016)
    cases = []
    for _ in range(200):
        table_size = rnd.choice(SMALL_PRIMES)
        n = rnd.choice([0, 1, 2, 3, rnd.randint(1, 40)])
        cases.append((table_size, n, lambda: rnd.randint(0, 1000) if rnd.random() < 0.9 else 0))
    for n in (10, 100, 1000):
        cases.append((M, n, lambda: rnd.randint(1, 1000)))
    cases.append((M, 100, lambda: 100))
    for table_size, n, weight in cases:
        names = random_names(rnd, n)
        weights = [weight() for _ in range(n)]
        expected = select_ref.maglev_table(names, weights, table_size)
        assert fast.maglev_table(names, weights, table_size) == expected, (table_size, names, weights)


_names = st.lists(
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
        lambda name: name.isprintable() and len(name.encode()) <= 63
    ),
    unique=True,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), names=_names, table_size=st.sampled_from(SMALL_PRIMES))
def test_maglev_tables_equal_on_generated_pools(data, names, table_size):
    fast = _compiled()
    weights = data.draw(st.lists(st.integers(0, 1000), min_size=len(names), max_size=len(names)))
    assert fast.maglev_table(names, weights, table_size) == select_ref.maglev_table(names, weights, table_size)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), seed=st.integers(0, 2**64 - 1))
def test_hash64_equal_on_generated_input(data, seed):
    expected = xxhash.xxh64_intdigest(data, seed)
    assert select_ref.hash64(data, seed) == expected
    assert _compiled().hash64(data, seed) == expected


def test_maglev_table_ignores_config_order(impl):
    rnd = random.Random(7)
    names = random_names(rnd, 50)
    weights = [rnd.randint(1, 1000) for _ in names]
    reference = named_table(names, impl.maglev_table(names, weights, M))
    for _ in range(5):
        order = list(range(len(names)))
        rnd.shuffle(order)
        shuffled_names = [names[i] for i in order]
        shuffled_weights = [weights[i] for i in order]
        assert named_table(shuffled_names, impl.maglev_table(shuffled_names, shuffled_weights, M)) == reference


_OTHER_PROCESS = """
import hashlib, importlib, json, random, sys
mod = importlib.import_module(sys.argv[1])
names, weights, table_size, seed = json.loads(sys.argv[2])
order = list(range(len(names)))
random.Random(seed).shuffle(order)
names = [names[i] for i in order]
weights = [weights[i] for i in order]
table = mod.maglev_table(names, weights, table_size)
print(hashlib.sha256("\\n".join(names[i] for i in table).encode()).hexdigest())
"""


@pytest.mark.parametrize("impl_name", ["py", "c"])
def test_maglev_table_identical_in_another_process(impl_name):
    """Another node (another process, its own hash seed) builds the same table
    from the same pool written in another order."""
    mod = select_ref if impl_name == "py" else _compiled()
    rnd = random.Random(11)
    names = random_names(rnd, 100)
    weights = [rnd.randint(1, 1000) for _ in names]
    here = table_digest(names, mod.maglev_table(names, weights, M))
    module = "tests.reference.select_ref" if impl_name == "py" else "lb._fastpath"
    out = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, module, json.dumps([names, weights, M, 99])],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here


def test_maglev_removing_one_of_100_moves_little(impl):
    """M=65537: removing 1 of 100 equal backends moves at most 1.7% of the slots,
    of which the removed backend's 1% are forced."""
    n = 100
    names = addr_names(n)
    before = impl.maglev_table(names, [100] * n, M)
    for removed in (0, 42):
        keep = [i for i in range(n) if i != removed]
        after = [keep[i] for i in impl.maglev_table([names[i] for i in keep], [100] * (n - 1), M)]
        moved = sum(a != b for a, b in zip(before, after))
        forced = sum(a == removed for a in before)
        assert forced in (M // n, -(-M // n))
        assert removed not in after
        assert moved <= 0.017 * M, moved / M


# ---- Maglev: picking --------------------------------------------------------------------------


def test_maglev_pick_is_the_table_entry_of_the_key(impl):
    rnd = random.Random(5)
    names = addr_names(10)
    sel = selector(impl, "maglev", names, [100] * 10, table_size=4099)
    table = sel.table()
    assert table == usable_table(impl, names, [100] * 10, list(range(10)), 4099)
    for key in random_keys(rnd, 300) + [b"", b"x"]:
        assert sel.pick(key) == table[impl.hash64(key, 0) % 4099]


def test_maglev_walks_past_a_down_backend_until_rebuild(impl):
    rnd = random.Random(6)
    names = addr_names(10)
    size = 4099
    sel = selector(impl, "maglev", names, [100] * 10, table_size=size)
    table = sel.table()
    keys = random_keys(rnd, 400)
    before = {key: sel.pick(key) for key in keys}
    down = 3
    sel.set_health(down, False)
    assert sel.table() == table  # no rebuild yet
    hit = 0
    for key in keys:
        pos = impl.hash64(key, 0) % size
        step = 0
        while table[(pos + step) % size] == down:
            step += 1
        expected = table[(pos + step) % size]
        assert sel.pick(key) == expected
        if before[key] == down:
            hit += 1
            assert step > 0
        else:
            assert expected == before[key]  # flows of the others stay put
    assert hit > 0
    sel.rebuild()
    assert sel.table() == usable_table(impl, names, [100] * 10, [s for s in range(10) if s != down], size)
    assert down not in sel.table()


def test_maglev_rebuild_enters_hashable_backends_only(impl):
    """Down, maintenance and weight 0 leave the table at the next build; a
    draining backend stays in it (its flows finish there)."""
    names = addr_names(8)
    weights = [100, 200, 300, 400, 500, 600, 700, 800]
    size = 1009
    sel = selector(impl, "maglev", names, weights, table_size=size)
    gen = sel.generation()
    sel.set_health(1, False)
    sel.set_admin(2, "drain")
    sel.set_admin(3, "maint")
    sel.set_weight(4, 0)
    sel.set_weight(5, 50)
    assert sel.generation() > gen
    sel.rebuild()
    now = [100, 200, 300, 400, 0, 50, 700, 800]
    assert sel.table() == usable_table(impl, names, now, [0, 2, 5, 6, 7], size)
    sel.set_health(1, True)
    sel.set_admin(2, "ready")
    sel.set_admin(3, "ready")
    sel.set_weight(4, 500)
    sel.set_weight(5, 600)
    sel.rebuild()
    assert sel.table() == usable_table(impl, names, weights, list(range(8)), size)


def test_maglev_selector_tables_equal_between_implementations():
    fast = _compiled()
    rnd = random.Random(17)
    for _ in range(20):
        n = rnd.randint(1, 30)
        names = random_names(rnd, n)
        weights = [rnd.randint(0, 1000) for _ in range(n)]
        backups = [rnd.random() < 0.2 for _ in range(n)]
        size = rnd.choice(SMALL_PRIMES[2:])
        sels = [selector(mod, "maglev", names, weights, table_size=size, backups=backups) for mod in (select_ref, fast)]
        assert sels[0].table() == sels[1].table()
        for _ in range(5):
            change(rnd, sels, n)
            for sel in sels:
                sel.rebuild()
            assert sels[0].table() == sels[1].table()


# ---- Bounded loads ----------------------------------------------------------------------------


def bound(c: float, pool_active: int, weight: int, table_weight: int) -> int:
    """ceil(C * A * weight / (1000 * W)), C = round(c * 1000): A counts the connections placed."""
    c_milli = int(c * 1000 + 0.5)
    return -(-(c_milli * pool_active * weight) // (1000 * table_weight))


def test_bounded_loads_keep_every_backend_under_its_bound(impl):
    """c = 1.25, Zipf(1.1) keys, 10,000 picks with every connection held: no
    backend ever holds more than its bound."""
    rnd = random.Random(1100)
    n = 20
    names = addr_names(n)
    weights = [rnd.randint(50, 200) for _ in range(n)]
    total = sum(weights)
    keys = zipf_keys(rnd, 10_000)
    sel = selector(impl, "maglev", names, weights, balance_factor=1.25, rows=2)
    active = [0] * n
    for i, key in enumerate(keys):
        slot = sel.pick(key, row=i % 2)
        assert 0 <= slot < n, (i, slot)
        sel.take(slot, row=i % 2)
        active[slot] += 1
        placed = i + 1
        assert active[slot] <= bound(1.25, placed, weights[slot], total), (i, slot, active[slot])
    assert all(active[s] <= bound(1.25, len(keys), weights[s], total) for s in range(n))
    assert [sel.active(s) for s in range(n)] == active
    assert sel.pool_active() == len(keys)

    # Without the bound the same keys overload some backend: the test has teeth.
    plain = selector(impl, "maglev", names, weights)
    unbounded = Counter(plain.pick(key) for key in keys)
    assert any(unbounded[s] > bound(1.25, len(keys), weights[s], total) for s in range(n))


def test_bounded_walk_is_deterministic(impl):
    rnd = random.Random(12)
    n = 8
    names = addr_names(n)
    sel = selector(impl, "maglev", names, [100] * n, balance_factor=1.5, table_size=1009)
    for slot, load in enumerate([9, 0, 3, 12, 1, 0, 7, 2]):
        for _ in range(load):
            sel.take(slot)
    for key in random_keys(rnd, 300):
        first = sel.pick(key)
        assert first >= 0
        assert all(sel.pick(key) == first for _ in range(3))
        # The pick is the first non-full candidate in table order from the key's position.
        pool_active = sel.pool_active()
        table = sel.table()
        pos = impl.hash64(key, 0) % 1009
        step = 0
        while sel.active(table[(pos + step) % 1009]) + 1 > bound(1.5, pool_active + 1, 100, 100 * n):
            step += 1
        assert first == table[(pos + step) % 1009]


def test_bounded_picks_equal_between_implementations():
    fast = _compiled()
    rnd = random.Random(1250)
    for trial in range(3):
        n = rnd.randint(3, 25)
        names = random_names(rnd, n)
        weights = [rnd.randint(1, 1000) for _ in range(n)]
        c = rnd.choice([1.1, 1.25, 2.0])
        sels = [
            selector(mod, "maglev", names, weights, balance_factor=c, table_size=4099, rows=3)
            for mod in (select_ref, fast)
        ]
        run_and_compare(rnd, sels, n, steps=1500, keys=zipf_keys(rnd, 1500), changes=trial > 0)


# ---- roundrobin --------------------------------------------------------------------------------


def test_swrr_sequence_of_5_1_1(impl):
    sel = selector(impl, "roundrobin", ["a", "b", "c"], [5, 1, 1])
    assert [sel.pick() for _ in range(14)] == [0, 0, 1, 0, 2, 0, 0] * 2


def test_swrr_gives_exact_shares_per_window(impl):
    rnd = random.Random(3)
    weights = [rnd.randint(1, 20) for _ in range(6)]
    sel = selector(impl, "roundrobin", addr_names(6), weights)
    for _ in range(3):
        window = Counter(sel.pick() for _ in range(sum(weights)))
        assert [window[s] for s in range(6)] == weights


def test_swrr_restarts_when_the_generation_changes(impl):
    sel = selector(impl, "roundrobin", ["a", "b", "c"], [5, 1, 1])
    assert [sel.pick() for _ in range(3)] == [0, 0, 1]
    gen = sel.generation()
    sel.set_weight(0, 5)  # same weight, but a write: the scores start over
    assert sel.generation() != gen
    assert [sel.pick() for _ in range(7)] == [0, 0, 1, 0, 2, 0, 0]


def test_swrr_sequences_equal_between_implementations():
    fast = _compiled()
    rnd = random.Random(1)
    for _ in range(12):
        n = rnd.randint(1, 16)
        names = addr_names(n)
        weights = [rnd.randint(0, 1000) if rnd.random() < 0.9 else 0 for _ in range(n)]
        backups = [rnd.random() < 0.15 for _ in range(n)]
        sels = [selector(mod, "roundrobin", names, weights, backups=backups, rows=2) for mod in (select_ref, fast)]
        run_and_compare(rnd, sels, n, steps=1500, rows=2)


# ---- leastconn, random, p2c ------------------------------------------------------------------------


def test_leastconn_cursor_starts_at_the_row(impl):
    sel = selector(impl, "leastconn", addr_names(5), [100] * 5, rows=5)
    assert [sel.pick(row=r) for r in range(5)] == [0, 1, 2, 3, 4]
    assert [sel.pick(row=0) for _ in range(6)] == [1, 2, 3, 4, 0, 1]


def test_leastconn_follows_weights(impl):
    sel = selector(impl, "leastconn", ["a", "b"], [300, 100])
    for _ in range(400):
        sel.take(sel.pick())
    assert (sel.active(0), sel.active(1)) == (300, 100)


def test_leastconn_sums_every_row(impl):
    sel = selector(impl, "leastconn", ["a", "b", "c"], [100] * 3, rows=2)
    sel.take(0, row=1)
    sel.take(1, row=1)
    assert sel.pick(row=0) == 2  # the loads of row 1 count for row 0 too
    assert sel.active(0) == 1 and sel.pool_active() == 2
    sel.drop(0, row=1)
    assert sel.active(0) == 0 and sel.pool_active() == 1


def test_random_follows_weights(impl):
    sel = selector(impl, "random", ["a", "b", "c"], [100, 300, 600], seed=42)
    counts = Counter(sel.pick() for _ in range(20_000))
    for slot, share in enumerate([0.1, 0.3, 0.6]):
        assert abs(counts[slot] / 20_000 - share) < 0.015, counts


def test_random_and_p2c_depend_on_seed_and_row(impl):
    for algorithm in ("random", "p2c"):
        a = selector(impl, algorithm, addr_names(8), [100] * 8, seed=1, rows=2)
        b = selector(impl, algorithm, addr_names(8), [100] * 8, seed=1, rows=2)
        c = selector(impl, algorithm, addr_names(8), [100] * 8, seed=2, rows=2)
        seq_a = [a.pick(row=0) for _ in range(50)]
        assert seq_a == [b.pick(row=0) for _ in range(50)]
        assert seq_a != [c.pick(row=0) for _ in range(50)]
        # the row's generator starts at seed + row: row 1 of seed 1 is row 0 of seed 2
        d = selector(impl, algorithm, addr_names(8), [100] * 8, seed=2)
        assert [a.pick(row=1) for _ in range(50)] == [d.pick(row=0) for _ in range(50)]


def test_random_draws_splitmix64(impl):
    """One draw per pick: r = next() mod total, from state seed + row."""
    weights = [7, 100, 1, 50, 1000]
    for seed, row in [(1, 0), (1, 2), (12345, 1), (2**63, 1)]:
        sel = selector(impl, "random", addr_names(5), weights, seed=seed, rows=3)
        rng = select_ref.SplitMix64(seed + row)
        for _ in range(200):
            r = rng.next() % sum(weights)
            expected = next(i for i in range(5) if sum(weights[: i + 1]) > r)
            assert sel.pick(row=row) == expected


def test_row_seed_wraps_mod_2_64(impl):
    """The state is a uint64: seed + row wraps (row 1 of seed 2^64-1 starts at 0)."""
    sel = selector(impl, "random", addr_names(5), [1, 2, 3, 4, 5], seed=2**64 - 1, rows=2)
    same = selector(impl, "random", addr_names(5), [1, 2, 3, 4, 5], seed=0)
    assert [sel.pick(row=1) for _ in range(50)] == [same.pick() for _ in range(50)]


def test_p2c_draws_two_distinct_candidates(impl):
    sel = selector(impl, "p2c", ["a", "b", "c", "d"], [100] * 4, seed=9)
    rng = select_ref.SplitMix64(9)
    loads = [5, 0, 2, 9]
    for slot, load in enumerate(loads):
        for _ in range(load):
            sel.take(slot)
    for _ in range(300):
        a = rng.next() % 4
        b = (a + 1 + rng.next() % 3) % 4
        expected = b if loads[b] < loads[a] else a
        assert sel.pick() == expected
    only = selector(impl, "p2c", ["a", "b"], [100, 100])
    only.set_health(0, False)
    assert [only.pick() for _ in range(5)] == [1] * 5


@pytest.mark.parametrize("algorithm", ["leastconn", "random", "p2c"])
def test_sequences_equal_between_implementations(algorithm):
    """Random pools, the same seed, the same takes, drops and state changes:
    thousands of picks, identical on both."""
    fast = _compiled()
    rnd = random.Random(ALGORITHMS.index(algorithm))
    for _ in range(10):
        n = rnd.randint(1, 20)
        names = addr_names(n)
        weights = [rnd.randint(1, 1000) if rnd.random() < 0.9 else 0 for _ in range(n)]
        backups = [rnd.random() < 0.15 for _ in range(n)]
        seed = rnd.getrandbits(64)
        sels = [
            selector(mod, algorithm, names, weights, backups=backups, seed=seed, rows=3) for mod in (select_ref, fast)
        ]
        run_and_compare(rnd, sels, n, steps=1000)


def change(rnd: random.Random, sels, n: int) -> None:
    """One random write of a backend field, the same on every selector."""
    slot = rnd.randrange(n)
    what = rnd.choice(("weight", "health", "admin"))
    # Biased towards usable, so that pools do not drift into having no backend.
    weight = 0 if rnd.random() < 0.15 else rnd.randint(1, 1000)
    up = rnd.random() < 0.7
    admin = rnd.choice(("ready", "ready", "ready", "drain", "maint"))
    for sel in sels:
        if what == "weight":
            sel.set_weight(slot, weight)
        elif what == "health":
            sel.set_health(slot, up)
        else:
            sel.set_admin(slot, admin)


def run_and_compare(rnd, sels, n, steps, *, rows=3, keys=None, changes=True):
    """Drive both selectors through the same picks (random rows, tried sets,
    takes and drops, backend changes, rebuilds) and require the same answers."""
    held: list[tuple[int, int]] = []  # (slot, row) of open connections
    for step in range(steps):
        row = rnd.randrange(rows)
        key = keys[step] if keys is not None else rnd.randbytes(16)
        tried = tuple(rnd.sample(range(n), rnd.randint(1, min(n, 3)))) if rnd.random() < 0.15 else ()
        picks = [sel.pick(key, tried, row) for sel in sels]
        assert picks[0] == picks[1], (step, picks, tried, row)
        slot = picks[0]
        if slot >= 0:
            assert slot not in tried
            if rnd.random() < 0.7:
                for sel in sels:
                    sel.take(slot, row)
                held.append((slot, row))
        if held and rnd.random() < 0.3:
            slot, row = held.pop(rnd.randrange(len(held)))
            for sel in sels:
                sel.drop(slot, row)
        if changes and rnd.random() < 0.02:
            change(rnd, sels, n)
            if rnd.random() < 0.5:
                for sel in sels:
                    sel.rebuild()
    for slot in range(n):
        assert sels[0].active(slot) == sels[1].active(slot)
    assert sels[0].pool_active() == sels[1].pool_active() == len(held)


# ---- the common rules: backups, tried slots, unusable backends --------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_backups_only_when_no_primary(impl, algorithm):
    rnd = random.Random(8)
    names = addr_names(6)
    backups = [False, False, False, False, True, True]
    sel = selector(impl, algorithm, names, [100, 200, 300, 400, 100, 100], backups=backups, table_size=1009)
    keys = random_keys(rnd, 100)

    def picks():
        return {sel.pick(key) for key in keys}

    assert picks() <= {0, 1, 2, 3}
    # Every way of not being usable: down, in maintenance, weight 0.
    sel.set_health(0, False)
    sel.set_admin(1, "maint")
    sel.set_weight(2, 0)
    sel.rebuild()
    assert picks() == {3}
    sel.set_health(3, False)
    sel.rebuild()
    assert picks() == {4, 5}
    sel.set_health(4, False)
    sel.rebuild()
    assert picks() == {5}
    sel.set_admin(5, "maint")
    sel.rebuild()
    assert picks() == {-1}
    sel.set_admin(1, "ready")
    sel.set_admin(5, "ready")
    sel.rebuild()
    assert picks() == {1}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_drain(impl, algorithm):
    """A draining backend gets no new connection from a balancing algorithm;
    with maglev the flows that hash to it still finish there, also after a
    rebuild."""
    rnd = random.Random(10)
    sel = selector(impl, algorithm, addr_names(4), [100] * 4, table_size=1009)
    keys = random_keys(rnd, 200)
    before = [sel.pick(key) for key in keys]
    assert 2 in before
    sel.set_admin(2, "drain")
    sel.rebuild()
    after = [sel.pick(key) for key in keys]
    if algorithm == "maglev":
        assert after == before
        assert 2 in sel.table()
    else:
        assert 2 not in after and -1 not in after


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tried_slots_are_skipped(impl, algorithm):
    rnd = random.Random(9)
    n = 8
    sel = selector(impl, algorithm, addr_names(n), [rnd.randint(1, 1000) for _ in range(n)], table_size=1009)
    for key in random_keys(rnd, 300):
        tried = rnd.sample(range(n), rnd.randint(0, n - 1))
        slot = sel.pick(key, tried)
        assert 0 <= slot < n and slot not in tried
    assert sel.pick(b"k", list(range(n))) == -1
    left = [s for s in range(n) if s != 5]
    assert all(sel.pick(key, left) == 5 for key in random_keys(rnd, 20))


@pytest.mark.parametrize("algorithm", ["roundrobin", "leastconn", "random", "p2c"])
def test_tried_primaries_fall_back_to_backups(impl, algorithm):
    sel = selector(impl, algorithm, ["a", "b", "c"], [100, 100, 100], backups=[False, False, True])
    assert sel.pick(b"", [0, 1]) == 2
    assert sel.pick(b"", [0]) == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_backend(impl, algorithm):
    sel = selector(impl, algorithm, ["a", "b"], [0, 0], table_size=13)
    assert sel.pick(b"x") == -1
    sel.set_weight(1, 10)
    sel.rebuild()
    assert sel.pick(b"x") == 1


# ---- a table flip under concurrent picks ----------------------------------------------------------

_DEAD = (3, 7, 9)


def _picker(sel, row: int, n: int, started, stop, results) -> None:
    rnd = random.Random(row)
    bad: list[int] = []
    count = 0
    started.set()
    while not stop.is_set():
        for _ in range(500):
            slot = sel.pick(rnd.randbytes(16), (), row)
            if not 0 <= slot < n or slot in _DEAD:
                bad.append(slot)
        count += 500
    results.send((count, bad[:20], len(bad)))
    results.close()


def test_table_flip_under_concurrent_picks_from_4_processes():
    fast = _compiled()
    n = 16
    names = addr_names(n)
    sel = fast.Selector("maglev", names, [100] * n, table_size=M, rows=4)
    sel.set_health(3, False)
    sel.set_health(7, False)
    sel.set_admin(9, "maint")
    sel.rebuild()
    assert not set(_DEAD) & set(sel.table())
    sel.set_health(3, True)  # still in no table: then down again, for good
    sel.set_health(3, False)

    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    procs, pipes, starts = [], [], []
    for row in range(4):
        started = ctx.Event()
        receiver, sender = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_picker, args=(sel, row, n, started, stop, sender))
        p.start()
        sender.close()
        procs.append(p)
        pipes.append(receiver)
        starts.append(started)
    try:
        for started in starts:
            assert started.wait(30)
        rnd = random.Random(4)
        live = [s for s in range(n) if s not in _DEAD]
        flips = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for slot in rnd.sample(live, 3):
                sel.set_weight(slot, rnd.randint(1, 1000))
            sel.rebuild()
            flips += 1
    finally:
        stop.set()
        results = [pipe.recv() if pipe.poll(30) else None for pipe in pipes]
        for p in procs:
            p.join(30)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert flips >= 20
    for row, result in enumerate(results):
        assert result is not None, f"picker {row} sent nothing"
        count, sample, n_bad = result
        assert count > 0
        assert n_bad == 0, (row, sample)
