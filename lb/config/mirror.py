"""The `mirror` key of http listeners and routes: a share of their requests
copied to a shadow pool, fire and forget (docs/splits.md, "Mirroring")."""

from __future__ import annotations

import dataclasses

from lb.config.values import ConfigError, Table, did_you_mean, parse_size, wrong_type

KEYS = ("mirror",)
MIRROR_KEYS = ("pool", "percent", "timeout", "max_concurrent", "max_body")
MAX_BODY = 1 << 20  # a copy is held in memory until the shadow took it


@dataclasses.dataclass(frozen=True)
class Mirror:
    pool: str
    percent: float = 100.0  # of the requests, drawn at random
    timeout: float = 1.0  # seconds a copy may live: connect, send, the answer read and thrown away
    max_concurrent: int = 100  # copies in flight at once, per worker; more are dropped
    max_body: int = 65536  # bytes of a copy (head and body, as sent); bigger requests are not copied


def parse(t: Table, pools: dict) -> Mirror | None:
    if not t.has("mirror"):
        return None
    raw = t.get("mirror", None, "a table { pool = ..., percent = ... }", lambda v: isinstance(v, dict))
    m = Table(raw, t.path_of("mirror"), MIRROR_KEYS)
    pool = m.string("pool")
    if pool not in pools:
        hint = did_you_mean(pool, list(pools))
        raise ConfigError(m.path_of("pool"), f"unknown pool {pool!r}" + (f" ({hint})" if hint else ""))
    if getattr(pools[pool], "tls", None) is not None:
        raise ConfigError(m.path_of("pool"), f"pool {pool!r} speaks TLS to its backends; a mirror copies in plain")
    percent = m.number("percent", 100.0)
    if not 0 <= percent <= 100:
        raise ConfigError(m.path_of("percent"), f"{percent} is not a percent 0..100")
    max_body = parse_size(m.get("max_body", "64KiB", "a size", lambda v: isinstance(v, (int, str))
                                and not isinstance(v, bool)), m.path_of("max_body"))
    if not 0 < max_body <= MAX_BODY:
        raise ConfigError(m.path_of("max_body"), f"{max_body} bytes: a copy is 1 byte to 1MiB")
    return Mirror(pool=pool, percent=percent, timeout=m.duration("timeout", "1s", 0.001),
                  max_concurrent=m.integer("max_concurrent", 100, 1, 100000), max_body=max_body)
