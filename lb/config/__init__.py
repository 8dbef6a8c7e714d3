"""Parse and validate lb.toml, the configuration contract of DESIGN.md section 4.

Everything a start would check is checked here, so `lb check` and a reload can
refuse a bad file before it reaches the running balancer. Every error names the
offending key by its path: ``pools.app.backends[2].address: port out of range``.
The result is a tree of frozen dataclasses; nothing downstream re-validates.

One module per top-level section, listed in SECTIONS below: global_ ([global]),
pools ([pools.NAME]), listeners ([listeners.NAME]), ha ([ha]). What they share is in
values (the table reader, ConfigError, durations, sizes, addresses, names) and
headers (the header rules of listeners and routes); tls is the [listeners.NAME.tls]
table of a listener. This module reads the
file, runs the sections in order, then the checks that span sections;
check_runnable adds what only this build's data plane can tell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import keyword
import re
import tomllib

from lb.config import acls, auth, caches, global_, ha, limits, listeners, logs, pools
from lb.config.acls import KEYS as ACL_KEYS
from lb.config.acls import Access, Acl, access_rules
from lb.config.global_ import KEYS as GLOBAL_KEYS
from lb.config.global_ import METRICS_KEYS as GLOBAL_METRICS_KEYS
from lb.config.global_ import MAX_WORKERS, GlobalSettings
from lb.config.ha import HaSettings, Vip
from lb.config.headers import HEADER_RULE_KEYS, MANAGED_HEADERS, HeaderRules
from lb.config.auth import KEYS as AUTH_KEYS
from lb.config.auth import Auth
from lb.config.caches import KEYS as CACHE_KEYS
from lb.config.caches import Cache
from lb.config.limits import KEYS as LIMIT_KEYS
from lb.config.limits import Limit
from lb.config.listeners import KEYS as LISTENER_KEYS
from lb.config.logs import KEYS as LOG_KEYS
from lb.config.logs import LogSettings
from lb.config.listeners import HTTP2_KEYS, HTTP_LISTENER_KEYS, ROUTE_KEYS, Http2Settings, HttpSettings, Listener, Route
from lb.config.pools import KEYS as POOL_KEYS
from lb.config.splits import VARIANT_KEYS as SPLIT_VARIANT_KEYS
from lb.config.splits import Split
from lb.config.mirror import MIRROR_KEYS, Mirror
from lb.config.tls import CERTIFICATE_KEYS as TLS_CERTIFICATE_KEYS
from lb.config.tls import CLIENT_HEADER_KEYS as TLS_CLIENT_HEADER_KEYS
from lb.config.tls import GLOBAL_KEYS as GLOBAL_TLS_KEYS
from lb.config.tls import KEYS as TLS_KEYS
from lb.config.tls import POOL_KEYS as POOL_TLS_KEYS
from lb.config.tls import BackendTls, Certificate, TicketSettings, TlsSettings
from lb.config.pools import (
    BACKEND_KEYS,
    HEALTH_KEYS,
    HTTP_POOL_KEYS,
    PASSIVE_KEYS,
    Backend,
    Health,
    Passive,
    Pool,
    needs_http,
)
from lb.config.values import (
    MAX_NAME_BYTES,
    BindAddr,
    ConfigError,
    Context,
    Table,
    join,
    parse_backend_address,
    parse_duration,
    warn_set_but_unused,
)

__all__ = [
    "ACL_KEYS",
    "Access",
    "AUTH_KEYS",
    "Auth",
    "Acl",
    "access_rules",
    "BACKEND_KEYS",
    "BackendTls",
    "Backend",
    "BindAddr",
    "CACHE_KEYS",
    "Cache",
    "Config",
    "ConfigError",
    "GLOBAL_KEYS",
    "GLOBAL_METRICS_KEYS",
    "GLOBAL_TLS_KEYS",
    "GlobalSettings",
    "HaSettings",
    "HEADER_RULE_KEYS",
    "HEALTH_KEYS",
    "HTTP2_KEYS",
    "HTTP_LISTENER_KEYS",
    "HTTP_POOL_KEYS",
    "HeaderRules",
    "Health",
    "Http2Settings",
    "HttpSettings",
    "LIMIT_KEYS",
    "Limit",
    "LISTENER_KEYS",
    "LOG_KEYS",
    "LogSettings",
    "Listener",
    "MANAGED_HEADERS",
    "MAX_NAME_BYTES",
    "MAX_WORKERS",
    "PASSIVE_KEYS",
    "POOL_KEYS",
    "POOL_TLS_KEYS",
    "Passive",
    "Pool",
    "ROUTE_KEYS",
    "Route",
    "SECTIONS",
    "SPLIT_VARIANT_KEYS",
    "MIRROR_KEYS",
    "Mirror",
    "Split",
    "TLS_CERTIFICATE_KEYS",
    "TLS_CLIENT_HEADER_KEYS",
    "TLS_KEYS",
    "TOP_KEYS",
    "Certificate",
    "TicketSettings",
    "Vip",
    "TlsSettings",
    "check_runnable",
    "load",
    "loads",
    "parse_backend_address",
    "parse_duration",
]

# The top-level sections, in the order they are parsed: a section may refer to
# the ones before it (listeners and routes name pools). Each module has
#   NAMED  True for [KEY.NAME] tables, one per name; False for one [KEY] table
#   KEYS   the keys of that table (of each [KEY.NAME] table), in contract order
#   parse(tables, ctx)  its [KEY] Table, or (name, Table) pairs in file order
#                       when NAMED -> its part of Config; warnings go to ctx
# and its result is the Config field of the same name (global_ for "global").
SECTIONS = (
    ("global", global_),
    ("acls", acls),
    ("limits", limits),
    ("auth", auth),
    ("caches", caches),
    ("pools", pools),
    ("logs", logs),
    ("listeners", listeners),
    ("ha", ha),
)
# Unknown keys are errors, here as in every table: a typo must not silently
# fall back to a default. Sorted: messages list them, and parse order is no
# order for a reader.
TOP_KEYS = tuple(sorted(key for key, _ in SECTIONS))


@dataclasses.dataclass(frozen=True)
class Config:
    global_: GlobalSettings
    listeners: dict[str, Listener]
    pools: dict[str, Pool]
    acls: dict[str, Acl]
    limits: dict[str, Limit]
    auth: dict[str, Auth]
    caches: dict[str, Cache]
    logs: dict[str, LogSettings]
    ha: HaSettings
    source: str
    sha256: str
    warnings: tuple[str, ...]


# ---- Entry points --------------------------------------------------------------


def load(path: str) -> Config:
    """Read and validate the config file at ``path``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read config file: {e.strerror}", source=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"not UTF-8 text (bad byte at offset {e.start})", source=path) from None
    return _build(text, path, hashlib.sha256(raw).hexdigest())


def loads(text: str, source: str = "<string>") -> Config:
    """Validate config text; ``source`` names it in messages and in Config.source."""
    return _build(text, source, hashlib.sha256(text.encode("utf-8")).hexdigest())


_TOML_POSITION = re.compile(r"\s*\((at (?:line \d+, column \d+|end of document))\)$")


def _parse_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib says "Invalid value (at line 3, column 5)"; lead with the position.
        reason = str(e)
        m = _TOML_POSITION.search(reason)
        message = f"TOML syntax error {m[1]}: {reason[: m.start()]}" if m else f"TOML syntax error: {reason}"
        raise ConfigError("", message, source=source) from None


def _build(text: str, source: str, sha256: str) -> Config:
    root = Table(_parse_toml(text, source), "", TOP_KEYS)
    ctx = Context()
    tables: dict[str, object] = {}  # as read, for the checks that need what was written
    for key, module in SECTIONS:
        # Every table of a section is read (unknown keys refused) before any is parsed.
        tables[key] = root.named_tables(key, module.KEYS) if module.NAMED else root.table(key, module.KEYS)
        ctx.sections[key] = module.parse(tables[key], ctx)
    _check_pool_users(ctx.sections["listeners"], ctx.sections["pools"])
    _warn_http_pool_keys(tables["pools"], ctx.sections["listeners"], ctx.warnings)
    return Config(
        **{_field(key): section for key, section in ctx.sections.items()},
        source=source,
        sha256=sha256,
        warnings=tuple(ctx.warnings),
    )


def _field(key: str) -> str:
    """The Config field of a top-level section: its key, with a "_" after a Python keyword."""
    return f"{key}_" if keyword.iskeyword(key) else key


def check_runnable(cfg: Config) -> None:
    """What this build's data plane serves; anything else is refused by key path.

    A start, a reload and `lb check` run it after load. The compiled module is
    imported here, not at the top, so lb.config imports without a built data plane.
    """
    from lb._fastpath import IMPLEMENTED_ALGORITHMS

    for name, pool in cfg.pools.items():
        if pool.algorithm not in IMPLEMENTED_ALGORITHMS:
            raise ConfigError(
                f"pools.{name}.algorithm",
                f"'{pool.algorithm}' is not in this build yet; use one of {sorted(IMPLEMENTED_ALGORITHMS)}",
            )


# ---- Whole-file checks ---------------------------------------------------------


def _check_pool_users(listeners: dict[str, Listener], pools: dict[str, Pool]) -> None:
    """Pools a listener sends traffic to need backends, and tcp ones an L4 hash key."""
    for listener in listeners.values():
        used = dict.fromkeys([listener.pool, *(route.pool for route in listener.routes)])
        for name in (n for n in used if n is not None):
            pool = pools[name]
            pool_path = join("pools", name)
            if not pool.backends:
                raise ConfigError(
                    join(pool_path, "backends"), f"pool is used by listener {listener.name!r} but has no backends"
                )
            if listener.mode == "tcp" and needs_http(pool.hash_key):
                raise ConfigError(
                    join(pool_path, "hash_key"),
                    f"{pool.hash_key!r} needs HTTP, but tcp listener {listener.name!r} uses this pool",
                )


def _warn_http_pool_keys(
    pool_tables: list[tuple[str, Table]], listeners: dict[str, Listener], warnings: list[str]
) -> None:
    """http-only keys set on a pool that only tcp listeners use have no effect."""
    modes: dict[str, set[str]] = {}
    for listener in listeners.values():
        for name in (listener.pool, *(route.pool for route in listener.routes)):
            if name is not None:
                modes.setdefault(name, set()).add(listener.mode)
    for name, t in pool_tables:
        if modes.get(name) == {"tcp"}:
            warn_set_but_unused(t, HTTP_POOL_KEYS, "an http listener uses this pool", warnings)
