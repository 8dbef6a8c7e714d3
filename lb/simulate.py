"""Preview a change to a pool before making it: `lb pool simulate`.

For a Maglev pool both tables are built with the compiled builder (the very
code the supervisor runs), and the report says which fraction of the table,
and so of the flows, would move to another backend, how much of that is not
forced by the change (flows moved away from a backend that stays), each
backend's share before and after, and the balance (max share / mean share).
For the other algorithms traffic follows the weights, so the report gives the
weight shares only.

Which backends take traffic follows the data plane (docs/selection.md): the
primaries of weight > 0, or only when there is none, the backups. The preview
works from the config alone: every backend counts as up and ready.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from lb import config

__all__ = ["Member", "SimulateError", "format_report", "parse_add", "parse_weight", "simulate"]

DEFAULT_WEIGHT = 100
HASH_ALGORITHMS = ("maglev",)


class SimulateError(ValueError):
    """A change that cannot be applied to the pool (unknown name, bad weight...)."""


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    weight: int
    backup: bool = False


# ---- the change ----------------------------------------------------------------------------


def _check_weight(text: str, what: str) -> int:
    try:
        weight = int(text)
    except ValueError:
        raise SimulateError(f"{what}: weight {text!r} is not an integer") from None
    if not 0 <= weight <= 1000:
        raise SimulateError(f"{what}: weight {weight} is out of range (0..1000)")
    return weight


def parse_add(text: str) -> tuple[str, int]:
    """``ADDR[=WEIGHT]`` -> (name, weight); the name of an added backend is its address."""
    addr, sep, weight_text = text.rpartition("=")
    if not sep:
        addr, weight_text = text, ""
    host, colon, port = addr.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SimulateError(f"--add {text}: expected HOST:PORT[=WEIGHT], e.g. 10.0.0.5:8080=100")
    name_bytes = len(addr.encode("utf-8"))
    if name_bytes > config.MAX_NAME_BYTES or not addr.isprintable():
        raise SimulateError(
            f"--add {text}: not a usable backend name (printable, at most {config.MAX_NAME_BYTES} bytes)"
        )
    weight = _check_weight(weight_text, f"--add {text}") if sep else DEFAULT_WEIGHT
    return addr, weight


def parse_weight(text: str) -> tuple[str, int]:
    """``NAME=W`` -> (name, weight)."""
    name, sep, weight_text = text.rpartition("=")
    if not sep or not name:
        raise SimulateError(f"--weight {text}: expected NAME=WEIGHT")
    return name, _check_weight(weight_text, f"--weight {text}")


def _find(members: list[Member], name: str, addresses: dict[str, str], option: str) -> int:
    """The index of the backend called ``name`` (or, failing that, at that address)."""
    for i, m in enumerate(members):
        if m.name == name:
            return i
    named = addresses.get(name)
    if named is not None:
        for i, m in enumerate(members):
            if m.name == named:
                return i
    known = ", ".join(m.name for m in members) or "none"
    raise SimulateError(f"{option} {name}: no such backend in the pool (backends: {known})")


def apply_changes(
    members: Sequence[Member],
    addresses: dict[str, str],
    remove: Iterable[str] = (),
    add: Iterable[tuple[str, int]] = (),
    weights: Iterable[tuple[str, int]] = (),
) -> list[Member]:
    """The pool after removing, then adding, then re-weighting backends."""
    after = list(members)
    for name in remove:
        del after[_find(after, name, addresses, "--remove")]
    for name, weight in add:
        if any(m.name == name for m in after):
            raise SimulateError(f"--add {name}: a backend of that name is already in the pool")
        if any(m.name == addresses.get(name) for m in after):
            raise SimulateError(f"--add {name}: that address is already in the pool, as {addresses[name]!r}")
        after.append(Member(name, weight))
    for name, weight in weights:
        i = _find(after, name, addresses, "--weight")
        after[i] = dataclasses.replace(after[i], weight=weight)
    return after


# ---- the figures ----------------------------------------------------------------------------


def serving(members: Sequence[Member]) -> list[int]:
    """Indices of the backends that take traffic: primaries of weight > 0, else backups."""
    for backup in (False, True):
        chosen = [i for i, m in enumerate(members) if m.weight > 0 and m.backup == backup]
        if chosen:
            return chosen
    return []


def _table(members: Sequence[Member], table_size: int) -> list[str | None]:
    """The Maglev table as backend names (None where empty)."""
    from lb._fastpath import maglev_table

    chosen = serving(members)
    table = maglev_table([members[i].name for i in chosen], [members[i].weight for i in chosen], table_size)
    return [members[chosen[k]].name if k >= 0 else None for k in table]


def _slot_shares(table: list[str | None]) -> dict[str, float]:
    counts: dict[str, int] = {}
    for name in table:
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return {name: count / len(table) for name, count in counts.items()}


def _weight_shares(members: Sequence[Member]) -> dict[str, float]:
    chosen = serving(members)
    total = sum(members[i].weight for i in chosen)
    return {members[i].name: members[i].weight / total for i in chosen}


def _max_over_avg(shares: dict[str, float], members: Sequence[Member]) -> float | None:
    """Max share / mean share over the backends that take traffic (None if there is none)."""
    values = [shares.get(members[i].name, 0.0) for i in serving(members)]
    if not values or sum(values) == 0:
        return None
    return max(values) / (sum(values) / len(values))


def _max_over_expected(shares: dict[str, float], members: Sequence[Member]) -> float | None:
    """Max of share / weight share: how far the table strays from the weights."""
    expected = _weight_shares(members)
    if not expected:
        return None
    return max(shares.get(name, 0.0) / want for name, want in expected.items())


def simulate(
    pool: config.Pool,
    remove: Iterable[str] = (),
    add: Iterable[tuple[str, int]] = (),
    weights: Iterable[tuple[str, int]] = (),
) -> dict:
    """The report on changing ``pool`` as given; fractions are 0..1."""
    before = [Member(b.name, b.weight, b.backup) for b in pool.backends]
    addresses = {b.address: b.name for b in pool.backends}
    after = apply_changes(before, addresses, remove, add, weights)
    hashed = pool.algorithm in HASH_ALGORITHMS

    report: dict = {
        "pool": pool.name,
        "algorithm": pool.algorithm,
        "hash": hashed,
        "table_size": pool.table_size if hashed else None,
        "moved_fraction": None,
        "unforced_moved_fraction": None,
    }
    if hashed:
        old, new = _table(before, pool.table_size), _table(after, pool.table_size)
        staying = set(new) - {None}
        moved = sum(1 for a, b in zip(old, new) if a != b)
        # Not forced: the slot's backend takes traffic after the change too, yet lost the slot.
        unforced = sum(1 for a, b in zip(old, new) if a != b and a in staying)
        report["moved_fraction"] = moved / pool.table_size
        report["unforced_moved_fraction"] = unforced / pool.table_size
        share_before, share_after = _slot_shares(old), _slot_shares(new)
    else:
        share_before, share_after = _weight_shares(before), _weight_shares(after)

    report["max_over_avg_before"] = _max_over_avg(share_before, before)
    report["max_over_avg_after"] = _max_over_avg(share_after, after)
    report["max_over_expected_before"] = _max_over_expected(share_before, before)
    report["max_over_expected_after"] = _max_over_expected(share_after, after)

    names = list(dict.fromkeys([m.name for m in before] + [m.name for m in after]))
    weight_of = [{m.name: m.weight for m in side} for side in (before, after)]
    report["shares"] = {name: [share_before.get(name, 0.0), share_after.get(name, 0.0)] for name in names}
    report["weights"] = {name: [weight_of[0].get(name), weight_of[1].get(name)] for name in names}
    report["backups"] = sorted({m.name for m in before + after if m.backup})
    return report


# ---- human output ----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_report(report: dict) -> str:
    if report["hash"]:
        head = f"pool {report['pool']}: {report['algorithm']}, table of {report['table_size']} slots"
        share_label = "slots"
    else:
        head = f"pool {report['pool']}: {report['algorithm']} (not hashed: shares follow the weights)"
        share_label = "weight"
    backups = set(report["backups"])
    rows = []
    for name, (before, after) in report["shares"].items():
        w0, w1 = report["weights"][name]
        if w0 is None:
            note = "added"
        elif w1 is None:
            note = "removed"
        elif w0 != w1:
            note = "re-weighted"
        else:
            note = ""
        if name in backups:
            note = (note + ", backup").lstrip(", ")
        weight = f"{'-' if w0 is None else w0} -> {'-' if w1 is None else w1}"
        rows.append((name, weight, _pct(before), _pct(after), f"{100 * (after - before):+.2f}%", note))
    header = ("backend", "weight", f"{share_label} before", f"{share_label} after", "change", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [head, ""]
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [r[i].rjust(widths[i]) for i in (2, 3, 4)]
        lines.append("  ".join(cells + [r[5]]).rstrip())
    lines.append("")
    if report["hash"]:
        lines.append(f"moved:       {_pct(report['moved_fraction'])} of the table (and of the flows)")
        lines.append(f"not forced:  {_pct(report['unforced_moved_fraction'])} (moved from backends that stay)")
    lines.append(
        f"balance:     max/avg share {_ratio(report['max_over_avg_before'])} before, "
        f"{_ratio(report['max_over_avg_after'])} after"
    )
    if report["hash"]:
        lines.append(
            f"vs weights:  max share/weight share {_ratio(report['max_over_expected_before'])} before, "
            f"{_ratio(report['max_over_expected_after'])} after"
        )
    return "\n".join(lines)
