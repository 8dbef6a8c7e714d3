"""The split keys of http listeners and routes: `split`, `split_sticky`,
`split_override`, `split_override_allow` (docs/splits.md).

A split sends each user to one of its variants (pools) by weight, and keeps
them there. It is named for `lb split` and `lb rollout` by where it is: a
listener's own split by the listener's name, a route's by the route's name
(or "LISTENER/ROUTE" where that name is not unique among the splits).
"""

from __future__ import annotations

import dataclasses
import re

from lb.config.headers import check_header_name
from lb.config.values import ConfigError, Table, did_you_mean, string_list, warn_set_but_unused, wrong_type

KEYS = ("split", "split_sticky", "split_override", "split_override_allow")
VARIANT_KEYS = ("pool", "weight")
MAX_VARIANTS = 8  # SPLIT_MAX_VARIANTS of the data plane
DEFAULT_STICKY = "cookie:lb_variant"
STICKY_KINDS = ("cookie:NAME", "header:NAME", "source_ip")
OVERRIDE_KINDS = ("header:NAME", "cookie:NAME")
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclasses.dataclass(frozen=True)
class Split:
    variants: tuple[tuple[str, int], ...]  # (pool, weight in percent), in the order written; weights sum to 100
    sticky: str = DEFAULT_STICKY  # "cookie:NAME" | "header:NAME" | "source_ip"
    override: str = ""  # "header:NAME" | "cookie:NAME": a request may name its variant's pool; "" = off
    override_allow: tuple[str, ...] = ()  # ACLs whose addresses may override; () = anyone, where override is set
    name: str = ""  # as lb split and lb rollout address it

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(pool for pool, _ in self.variants)

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(weight for _, weight in self.variants)


def check_weights(weights, pools) -> str:
    """Why these weights cannot be a split's ("" when they can)."""
    if len(weights) != len(pools):
        return f"{len(weights)} weights for {len(pools)} variants"
    for pool, w in zip(pools, weights):
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 100:
            return f"{pool}: weight {w!r} is not a whole percent 0..100"
    if sum(weights) != 100:
        return f"the weights sum to {sum(weights)}, not 100"
    return ""


def _kind(t: Table, key: str, kinds: tuple[str, ...], default: str) -> str:
    value = t.string(key, default)
    if value == "source_ip" and "source_ip" in kinds:
        return value
    kind, sep, name = value.partition(":")
    if not sep or f"{kind}:NAME" not in kinds or not name:
        raise ConfigError(t.path_of(key), f"{value!r} is not one of {', '.join(kinds)}")
    if kind == "header":
        check_header_name(name, t.path_of(key))
    elif not _COOKIE_NAME.fullmatch(name):
        raise ConfigError(t.path_of(key), f"invalid cookie name {name!r}")
    return value


def pool_of(t: Table, split: Split | None, pools: dict) -> str | None:
    """The `pool` beside a split: one of its variants (what tools show as the
    listener's or route's pool), else the first variant's; None without a split."""
    if split is None:
        return None
    if not t.has("pool"):
        return split.pools[0]
    pool = t.string("pool")
    if pool not in split.pools:
        raise ConfigError(t.path_of("pool"), f"{pool!r} is not one of the split's pools ({', '.join(split.pools)})")
    return pool


def parse(t: Table, pools: dict, acls: dict, warnings: list[str]) -> Split | None:
    """A listener's or route's split keys; None when it has no split."""
    if not t.has("split"):
        warn_set_but_unused(t, KEYS[1:], "split is set", warnings)
        return None
    raw = t.get("split", None, "an array of tables", lambda v: isinstance(v, list))
    if not 2 <= len(raw) <= MAX_VARIANTS:
        raise ConfigError(t.path_of("split"), f"{len(raw)} variants; a split has 2 to {MAX_VARIANTS}")
    variants: list[tuple[str, int]] = []
    for i, data in enumerate(raw):
        path = f"{t.path_of('split')}[{i}]"
        if not isinstance(data, dict):
            raise wrong_type(path, data, "a table { pool = ..., weight = ... }")
        v = Table(data, path, VARIANT_KEYS)
        pool = v.string("pool")
        if pool not in pools:
            hint = did_you_mean(pool, list(pools))
            raise ConfigError(v.path_of("pool"), f"unknown pool {pool!r}" + (f" ({hint})" if hint else ""))
        if any(pool == p for p, _ in variants):
            raise ConfigError(v.path_of("pool"), f"pool {pool!r} is already a variant of this split")
        variants.append((pool, v.integer("weight", 0, 0, 100)))
    why = check_weights([w for _, w in variants], [p for p, _ in variants])
    if why:
        raise ConfigError(t.path_of("split"), why)
    allow = []
    if t.has("split_override_allow") and not t.has("split_override"):
        warn_set_but_unused(t, ("split_override_allow",), "split_override is set", warnings)
    elif t.has("split_override_allow"):
        for name, path in string_list(t, "split_override_allow", [], "a list of ACL names"):
            if name not in acls:
                hint = did_you_mean(name, list(acls))
                raise ConfigError(path, f"unknown ACL {name!r}" + (f" ({hint})" if hint else ""))
            allow.append(name)
    return Split(
        variants=tuple(variants),
        sticky=_kind(t, "split_sticky", STICKY_KINDS, DEFAULT_STICKY),
        override=_kind(t, "split_override", OVERRIDE_KINDS, "") if t.has("split_override") else "",
        override_allow=tuple(allow),
    )


def name_splits(listeners: dict) -> dict:
    """The listeners with every split named (Split.name), unique in the config."""
    sites = []  # (listener name, route index or -1, bare name)
    for lname, listener in listeners.items():
        if listener.split is not None:
            sites.append((lname, -1, lname))
        for i, route in enumerate(listener.routes):
            if route.split is not None:
                sites.append((lname, i, route.name))
    bare = [s[2] for s in sites]
    out = dict(listeners)
    for lname, i, name in sites:
        if i >= 0 and bare.count(name) > 1:
            name = f"{lname}/{name}"
        if i < 0:
            out[lname] = dataclasses.replace(out[lname], split=dataclasses.replace(out[lname].split, name=name))
        else:
            listener = out[lname]
            routes = list(listener.routes)
            routes[i] = dataclasses.replace(routes[i], split=dataclasses.replace(routes[i].split, name=name))
            out[lname] = dataclasses.replace(listener, routes=tuple(routes))
    return out


def config_splits(listeners) -> list[Split]:
    """Every split of the config, in config order: the shared-memory order."""
    out = []
    for listener in listeners.values():
        if listener.split is not None:
            out.append(listener.split)
        out.extend(route.split for route in listener.routes if route.split is not None)
    return out
