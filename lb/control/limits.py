"""`limits.show` (lb/cli/limits.py) and the limits' part of `status`: every
[limits.NAME] with its decisions summed over the workers, and a limit's most
active keys read from its table in shared memory. Also what a reload carries
over: the keys' buckets (same hash seed, so the new table finds them) and the
decision counts."""

from __future__ import annotations

import ipaddress
import time

from lb.admin import AdminError

DEFAULT_TOP = 20
MAX_TOP = 10000


def _index(gen, name) -> int:
    if not isinstance(name, str):
        raise AdminError("invalid", "argument 'name' (a limit name) is required")
    if name not in gen.config.limits:
        known = ", ".join(gen.config.limits) or "none"
        raise AdminError("not_found", f"no limit {name!r} (limits: {known})")
    return list(gen.config.limits).index(name)


def users(gen, name: str) -> list[str]:
    """Where a limit is applied: "listener L" or "listener L route R"."""
    out = []
    for lname, listener in gen.config.listeners.items():
        if name in listener.limits:
            out.append(f"listener {lname}")
        for route in listener.routes:
            if name in getattr(route, "limits", ()):
                out.append(f"listener {lname} route {route.name}")
    return out


def summary(gen, name: str) -> dict:
    limit = gen.config.limits[name]
    counts = gen.shm.limit_counts(_index(gen, name))
    return {"name": name, "key": limit.key, "rate": limit.rate_text or None, "burst": limit.burst,
            "concurrent": limit.concurrent, "dry_run": limit.dry_run, "on_full": limit.on_full,
            "capacity": limit.capacity, "used_by": users(gen, name), "counts": counts,
            "refused": counts["refused_rate"] + counts["refused_concurrent"]}


def status(gen) -> list[dict]:
    return [summary(gen, name) for name in gen.config.limits]


def _key_text(kind: int, raw: bytes, limit) -> str:
    if kind == 4:
        return f"{ipaddress.IPv4Address(raw[:4])}" + (f"/{limit.ipv4_prefix}" if limit.ipv4_prefix < 32 else "")
    if kind == 6:
        return f"{ipaddress.IPv6Address(raw[:16])}" + (f"/{limit.ipv6_prefix}" if limit.ipv6_prefix < 128 else "")
    return raw.decode("utf-8", "backslashreplace")


def top_keys(gen, name: str, n: int) -> list[dict]:
    """The keys of limit `name` by current rate (requests per period over a
    sliding window), then by how far ahead of now their bucket is."""
    index = _index(gen, name)
    limit = gen.config.limits[name]
    rows = gen.shm.limit_keys(index)
    rows.sort(key=lambda r: (r[2], r[3], r[4]), reverse=True)
    out = []
    for kind, raw, rate, ahead_ns, inflight, refused in rows[:n]:
        item = {"key": _key_text(kind, raw, limit), "truncated": kind == 0 and len(raw) >= 30,
                "rate": round(rate, 2), "in_flight": inflight, "refused": refused}
        if limit.rate:
            # requests the key may still send at once (burst + 1 when idle)
            emission = limit.period_ns // limit.rate
            tolerance = emission * limit.burst
            item["remaining"] = max(0, (tolerance - ahead_ns) // emission + 1) if ahead_ns <= tolerance else 0
            item["full_in"] = round(ahead_ns / 1e9, 3)
        out.append(item)
    return out


def show(sup, args: dict) -> dict:
    """Every limit with its counts; with "name", that one and its top keys
    ("top": how many, default 20)."""
    gen = sup.gen
    name = args.get("name")
    if name is None:
        return {"limits": status(gen)}
    top = args.get("top", DEFAULT_TOP)
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TOP:
        raise AdminError("invalid", f"argument 'top' must be 1..{MAX_TOP}")
    started = time.monotonic()
    item = summary(gen, name)
    item["top"] = top_keys(gen, name, top)
    item["scan_ms"] = round((time.monotonic() - started) * 1000, 1)
    return {"limits": [item]}


# ---- across a reload (the supervisor's _new_generation, _carry_over and _fold_drained) --

def seeds(old) -> dict[str, int]:
    """The key-hash seed of each limit of the old generation, for the new region."""
    if old is None:
        return {}
    return {name: old.shm.limit_seed(i) for i, name in enumerate(old.config.limits)}


def carry_over(old, new) -> None:
    """Limits of the same name and key keep their keys' buckets and their counts."""
    for i, (name, limit) in enumerate(new.config.limits.items()):
        before = old.config.limits.get(name)
        if before is None:
            continue
        oi = list(old.config.limits).index(name)
        counts = old.shm.limit_counts(oi)
        new.shm.add_carried_limit(new.carried_row, i, counts)
        old.limits_handed_over[name] = counts
        if before.key == limit.key and (before.ipv4_prefix, before.ipv6_prefix) == (limit.ipv4_prefix,
                                                                                  limit.ipv6_prefix):
            new.shm.limit_carry(i, old.shm, oi)


def fold_counts(new_names: list, old_names: list, handed_over: dict, counts_of, add) -> None:
    """What an old generation counted after the reload (beyond what it handed
    over), added to the live generation's entry of the same name: add(i, delta).
    Shared by the limits' and the auths' counts."""
    for i, name in enumerate(new_names):
        before = handed_over.get(name)
        if before is None or name not in old_names:
            continue
        after = counts_of(old_names.index(name))
        delta = {k: after[k] - before[k] for k in after if after[k] > before[k]}
        if delta:
            add(i, delta)


def fold_drained(old, new) -> None:
    """What an old generation counted after the reload, into the live one."""
    fold_counts(list(new.config.limits), list(old.config.limits), old.limits_handed_over, old.shm.limit_counts,
                lambda i, delta: new.shm.add_carried_limit(new.carried_row, i, delta))
