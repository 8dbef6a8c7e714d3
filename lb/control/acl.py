"""`acl.show`, `acl.add`, `acl.remove` and `acl.load` (lb/cli/acl.py): the ACLs
of the generation in force, changed live. A change is made on the supervisor's
copy of the ACL's prefixes, compiled into the half of its table the workers do
not use, and flipped to (AclSet.publish): workers see it at their next lookup,
without a reload. It is recorded in the state file before the client hears
back, and replayed over every new generation (apply_state).

The state file keeps, per ACL, the outcome of runtime changes rather than
their history: the file last loaded (which stands in for the config's
prefixes), and each prefix touched since, with what it is now (included,
excluded or absent). Replaying that is exact whatever the order of changes."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from lb import config as config_mod
from lb.admin import AdminError
from lb.control.backend import save_state
from lb.state import StateFile

if TYPE_CHECKING:
    from lb.supervisor import Generation

log = logging.getLogger("lb")

# Prefixes one add or remove may carry (the admin request is 64 KiB at most);
# more go through a file: `lb acl load`.
MAX_PREFIXES_PER_CHANGE = 4096


def _key(prefix: str) -> tuple[str, str]:
    """(prefix without its sign, "include" or "exclude")."""
    return (prefix[1:], "exclude") if prefix.startswith("!") else (prefix, "include")


def read_file_set(path: str):
    """The prefixes of a file, finished: (AclSet, None), or (None, why not).
    The supervisor reads it with its own rights (root, often) for whoever may
    use the admin socket: why not names the line and what is wrong, never
    what the line holds."""
    from lb._fastpath import ACL_SOURCES, AclParseError, AclSet

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror}"
    entries = AclSet()
    try:
        entries.parse_text(data, ACL_SOURCES["file"])
        entries.finish()
    except AclParseError as e:
        return None, f"{path} line {e.line}: {e.reason}"
    except ValueError as e:  # a conflict or too many: prefixes, not the file's other content
        return None, f"{path}: {e}"
    return entries, None


def _set_prefix(entries, prefix: str, state: str) -> bool:
    """Make prefix (without sign) included, excluded or absent; whether anything changed."""
    if state == "absent":
        return entries.change(prefix, False)[1] or entries.change("!" + prefix, False)[1]
    return entries.change(prefix if state == "include" else "!" + prefix, True)[1]


def apply_state(state: StateFile, gen: Generation) -> None:
    """The ACLs of a new generation: the config's prefixes, then the runtime
    changes of the state file over them; every ACL's table published."""
    gen.acls = {name: acl.entries.copy() for name, acl in gen.config.acls.items()}
    for name, entry in state.acls().items():
        if name not in gen.acls:
            log.warning("state file: ACL %r is not in the config any more; its runtime changes are skipped", name)
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("prefixes", {}), dict):
            log.warning("state file: ACL %r: its entry is not a table of prefixes; skipped", name)
            continue
        if entry.get("file"):
            loaded, why = read_file_set(entry["file"])
            if loaded is None:
                log.warning("state file: ACL %r: the file loaded at run time is unusable (%s); "
                            "the config's prefixes serve instead", name, why)
            else:
                gen.acls[name] = loaded
        for prefix, what in entry.get("prefixes", {}).items():
            if what not in ("include", "exclude", "absent") or not isinstance(prefix, str):
                log.warning("state file: ACL %r: %r: %r is not include, exclude or absent; skipped",
                            name, prefix, what)
                continue
            try:
                _set_prefix(gen.acls[name], prefix, what)
            except ValueError as e:
                log.warning("state file: ACL %r: %s skipped: %s", name, prefix, e)
    for index, name in enumerate(gen.config.acls):
        gen.acls[name].publish(gen.shm, index)


def _acl_arg(sup, args: dict) -> tuple[int, str]:
    name = args.get("name")
    if not isinstance(name, str):
        raise AdminError("invalid", "argument 'name' (an ACL name) is required")
    if name not in sup.gen.acls:
        known = ", ".join(sup.gen.acls) or "none"
        raise AdminError("not_found", f"no ACL {name!r} (ACLs: {known}); new ACLs come with a reload")
    return list(sup.gen.config.acls).index(name), name


def summary(gen: Generation, name: str, index: int) -> dict:
    acl = gen.config.acls[name]
    entries = gen.acls[name]
    return {"name": name, "ipv4": entries.ipv4, "ipv6": entries.ipv6, "generation": gen.shm.acl_generation(index),
            "config": {"cidrs": len(acl.cidrs), "file": acl.file or None}}


def rules_with_counts(gen: Generation) -> list[dict]:
    """Every allow/deny rule of the listeners and routes with its decisions."""
    counts = gen.shm.acl_rule_counts()
    rules = config_mod.access_rules(gen.config.listeners)
    return [{**rule, "count": count} for rule, count in zip(rules, counts)]


def show(sup, args: dict) -> dict:
    """Every ACL (or one, "name"), the rules using it and their decisions;
    with "address", which entry decides for it; with "prefixes", every entry."""
    gen = sup.gen
    names = [_acl_arg(sup, args)[1]] if args.get("name") is not None else list(gen.config.acls)
    rules = rules_with_counts(gen)
    out = []
    for name in names:
        index = list(gen.config.acls).index(name)
        item = summary(gen, name, index)
        item["state"] = sup.state.acls().get(name, {})
        item["rules"] = [r for r in rules if r["acl"] == name]
        address = args.get("address")
        if address is not None:
            if not isinstance(address, str):
                raise AdminError("invalid", "address must be a string")
            item["address"] = address_verdict(gen.acls[name], address)
            from lb._fastpath import acl_lookup

            try:
                item["address"]["served"] = acl_lookup(gen.shm, index, [address])[0]
            except ValueError as e:
                raise AdminError("invalid", str(e)) from None
        if args.get("prefixes"):
            item["prefixes"] = gen.acls[name].prefixes()
        out.append(item)
    return {"acls": out}


def address_verdict(entries, address: str) -> dict:
    try:
        found = entries.longest_match(address)
    except ValueError as e:
        raise AdminError("invalid", str(e)) from None
    if found is None:
        return {"address": address, "match": False, "prefix": None}
    prefix, included = found
    return {"address": address, "match": included, "prefix": prefix if included else "!" + prefix}


def _publish(sup, entries, name: str, index: int) -> int:
    """Compile entries into ACL index's table and make them the set in force."""
    try:
        generation = entries.publish(sup.gen.shm, index)
    except OSError as e:
        raise AdminError("failed", f"ACL {name!r} unchanged: no room for its table in shared memory "
                                   f"({e.strerror})") from None
    sup.gen.acls[name] = entries
    return generation


def _change(sup, args: dict, add: bool) -> dict:
    index, name = _acl_arg(sup, args)
    prefixes = args.get("prefixes")
    if (not isinstance(prefixes, list) or not prefixes or not all(isinstance(p, str) for p in prefixes)
            or len(prefixes) > MAX_PREFIXES_PER_CHANGE):
        raise AdminError("invalid", f"argument 'prefixes' (1 to {MAX_PREFIXES_PER_CHANGE} prefixes) is required; "
                                    "more go through a file: lb acl load")
    from lb._fastpath import AclParseError, AclSet

    # every prefix checked before any is applied: a bad one changes nothing
    check = AclSet()
    for i, prefix in enumerate(prefixes):
        try:
            check.parse_one(prefix, i + 1)
        except AclParseError as e:
            raise AdminError("invalid", e.message) from None
    # changed on a copy, which replaces the set in force once its table is
    # published: a table that cannot be published changes nothing
    entries = sup.gen.acls[name].copy()
    changed, unchanged = [], []
    outcome: dict[str, str] = {}
    full = None
    for prefix in prefixes:
        try:
            canonical, did = entries.change(prefix, add)
        except ValueError as e:  # the ACL is full: what changed before stays, and is kept
            full = f"ACL {name!r}: {e}; {len(changed)} prefix(es) added before it"
            break
        if canonical is None:
            unchanged.append(prefix.strip())
            continue
        (changed if did else unchanged).append(canonical)
        bare, sign = _key(canonical)
        outcome[bare] = sign if add else "absent"
    if changed:
        generation = _publish(sup, entries, name, index)
        sup.state.acls().setdefault(name, {}).setdefault("prefixes", {}).update(outcome)
        save_state(sup.state)
        log.info("admin: ACL %s: %s %s (generation %d)", name, "added" if add else "removed",
                 ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else ""),
                 generation)
    if full:
        raise AdminError("failed", full)
    if not changed and not add:
        raise AdminError("not_found", f"ACL {name!r} holds none of {', '.join(unchanged)}")
    return {**summary(sup.gen, name, index), "changed": changed, "unchanged": unchanged}


def add(sup, args: dict) -> dict:
    """Add prefixes ("!prefix": an exclusion) to an ACL; a prefix already
    there with the other sign changes sign."""
    return _change(sup, args, True)


def remove(sup, args: dict) -> dict:
    """Remove prefixes, written as they are in the ACL ("!" for an exclusion)."""
    return _change(sup, args, False)


def load(sup, args: dict) -> dict:
    """Replace an ACL's prefixes with those of a file (read by the daemon),
    at once; the runtime changes before it are dropped. The state file keeps
    the file's path: a restart reads it again."""
    index, name = _acl_arg(sup, args)
    path = args.get("file")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise AdminError("invalid", "argument 'file' (an absolute path) is required")
    entries, why = read_file_set(path)
    if entries is None:
        raise AdminError("invalid", why)
    generation = _publish(sup, entries, name, index)
    sup.state.acls()[name] = {"file": path, "prefixes": {}}
    save_state(sup.state)
    log.info("admin: ACL %s loaded from %s: %d IPv4 and %d IPv6 prefixes (generation %d)", name, path,
             entries.ipv4, entries.ipv6, generation)
    return summary(sup.gen, name, index)


# ---- counters across a reload (the supervisor's _carry_over and _fold_drained) -------

def _rule_keys(gen: Generation) -> list[tuple]:
    return [(r["listener"], r["route"], r["rule"]) for r in config_mod.access_rules(gen.config.listeners)]


def carry_over(old: Generation, new: Generation) -> None:
    """Rules matched by listener, route and rule keep their counts."""
    old_counts = dict(zip(_rule_keys(old), old.shm.acl_rule_counts()))
    for rule, key in enumerate(_rule_keys(new)):
        if key in old_counts:
            new.shm.add_carried_rule(new.carried_row, rule, old_counts[key])
            old.rules_handed_over[key] = old_counts[key]


def fold_drained(old: Generation, new: Generation) -> None:
    """What an old generation counted after the reload, into the live one."""
    after = dict(zip(_rule_keys(old), old.shm.acl_rule_counts()))
    for rule, key in enumerate(_rule_keys(new)):
        before = old.rules_handed_over.get(key)
        if before is not None and after.get(key, before) > before:
            new.shm.add_carried_rule(new.carried_row, rule, after[key] - before)
