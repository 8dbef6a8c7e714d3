"""The [acls.NAME] sections: sets of IPv4 and IPv6 prefixes, inline (cidrs)
and from a file (one a line), that listeners and routes allow or deny by name
(their `allow` and `deny` keys, read here too: parse_access).

The prefixes are parsed by the compiled module (lb._fastpath.AclSet), which
reads a million-line file in a fraction of a second; it is imported when a
config has ACLs, so lb.config still imports without a built data plane.
"""

from __future__ import annotations

import dataclasses

from lb.config.values import ConfigError, Context, Table, check_absolute_path, check_name, did_you_mean, string_list

NAMED = True
KEYS = ("cidrs", "file")
# Keys of listeners and routes that name ACLs.
ACCESS_KEYS = ("allow", "deny")
MAX_ACL_NAME_BYTES = 63  # shm_acl.name is char[64]
MAX_PER_LIST = 16  # ACL_MAX_PER_LIST of the data plane


@dataclasses.dataclass(frozen=True)
class Acl:
    name: str
    cidrs: tuple[str, ...]  # as written
    file: str  # "" = none
    # the parsed prefixes (an lb._fastpath.AclSet, finished); compared by
    # what was written, not by identity
    entries: object = dataclasses.field(compare=False, repr=False, default=None)

    @property
    def ipv4(self) -> int:
        return self.entries.ipv4

    @property
    def ipv6(self) -> int:
        return self.entries.ipv6


@dataclasses.dataclass(frozen=True)
class Access:
    """The allow and deny lists of a listener or a route. Deny wins: an address
    in a deny ACL is refused; with an allow list, one in none of its ACLs too."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    # its first decision counter: deny[i] is rule + i, allow[j] rule +
    # len(deny) + j, the default (no ACL of either list matched) the next one
    rule: int = 0

    @property
    def n_rules(self) -> int:
        return len(self.deny) + len(self.allow) + 1


def parse(tables: list[tuple[str, Table]], ctx: Context) -> dict[str, Acl]:
    return {name: _parse_acl(name, t) for name, t in tables}


def _parse_acl(name: str, t: Table) -> Acl:
    from lb._fastpath import ACL_SOURCES, AclConflict, AclParseError, AclSet

    check_name(name, t.path, "ACL name", MAX_ACL_NAME_BYTES)
    if not (t.has("cidrs") or t.has("file")):
        raise ConfigError(t.path, "an ACL needs cidrs, a file, or both")
    entries = AclSet()
    cidrs = string_list(t, "cidrs", [], "a list of prefixes")
    for i, (text, path) in enumerate(cidrs):
        try:
            entries.parse_one(text, i, ACL_SOURCES["cidrs"])
        except AclParseError as e:
            raise ConfigError(path, e.message) from None
    file = t.string("file", "")
    if file:
        check_absolute_path(file, t.path_of("file"))
        try:
            with open(file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError(t.path_of("file"), f"cannot read {file}: {e.strerror}") from None
        try:
            entries.parse_text(data, ACL_SOURCES["file"])
        except AclParseError as e:
            raise ConfigError(t.path_of("file"), f"{file} line {e.line}: {e.message}") from None
    try:
        entries.finish()
    except AclConflict as e:
        raise ConfigError(t.path, f"{e.prefix} is both included and excluded "
                                  f"({_where(t, file, e.first)} and {_where(t, file, e.second)})") from None
    except ValueError as e:
        raise ConfigError(t.path, str(e)) from None
    return Acl(name=name, cidrs=tuple(text for text, _ in cidrs), file=file, entries=entries)


def _where(t: Table, file: str, place: tuple[int, int]) -> str:
    from lb._fastpath import ACL_SOURCES

    src, line = place
    if src == ACL_SOURCES["cidrs"]:
        return f"{t.path_of('cidrs')}[{line}]"
    return f"{file} line {line}"


def parse_access(t: Table, acls: dict[str, Acl], counter: list[int]) -> Access | None:
    """The allow and deny keys of a listener or route table, or None when it
    has neither; counter[0] numbers the decision counters (in file order)."""
    lists = {}
    for key in ACCESS_KEYS:
        names: dict[str, str] = {}
        for name, path in string_list(t, key, [], "a list of ACL names"):
            if name not in acls:
                hint = did_you_mean(name, list(acls))
                raise ConfigError(path, f"unknown ACL {name!r}" + (f" ({hint})" if hint else
                                                                   " (define it in an [acls.NAME] table)"))
            if name in names:
                raise ConfigError(path, f"{name!r} is already in this list ({names[name]})")
            names[name] = path
        if len(names) > MAX_PER_LIST:
            raise ConfigError(t.path_of(key), f"at most {MAX_PER_LIST} ACLs in one list")
        lists[key] = tuple(names)
    if not lists["allow"] and not lists["deny"]:
        return None
    both = set(lists["allow"]) & set(lists["deny"])
    if both:
        raise ConfigError(t.path_of("deny"), f"{sorted(both)[0]!r} is in allow too: deny would always win")
    access = Access(allow=lists["allow"], deny=lists["deny"], rule=counter[0])
    counter[0] += access.n_rules
    return access


def access_rules(listeners) -> list[dict]:
    """Every decision counter, in counter order: where it is (listener, and
    route index or None), what it is (deny NAME, allow NAME, or the default)
    and which decision it counts."""
    rules: list[dict] = []
    for listener in listeners.values():
        sites = [(None, listener)] + [(i, route) for i, route in enumerate(listener.routes)]
        for route_index, site in sites:
            access = getattr(site, "access", None)
            if access is None:
                continue
            assert access.rule == len(rules)
            where = {"listener": listener.name, "route": route_index,
                     "route_name": getattr(site, "name", None) if route_index is not None else None}
            for name in access.deny:
                rules.append({**where, "rule": f"deny {name}", "acl": name, "decision": "denied"})
            for name in access.allow:
                rules.append({**where, "rule": f"allow {name}", "acl": name, "decision": "allowed"})
            rules.append({**where, "rule": "not in allow list" if access.allow else "default",
                          "acl": None, "decision": "denied" if access.allow else "allowed"})
    return rules
