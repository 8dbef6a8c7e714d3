"""The [limits.NAME] sections: rate and concurrency limits per key (a client
address or its /24 or /64, a header, a cookie, an API key's identity, a claim
of a verified JWT), that listeners and routes
apply by name (their `limits` key, read here too: parse_limit_names).

The data plane keeps one table per limit in shared memory, shared by every
worker (lb/fastpath/limits.pxi): the limit holds for the node, however many
workers serve it. docs/gateway.md describes the decisions.
"""

from __future__ import annotations

import dataclasses
import re

from lb.config.headers import check_header_name
from lb.config.values import ConfigError, Context, Table, did_you_mean, parse_duration, string_list

NAMED = True
KEYS = ("key", "rate", "burst", "concurrent", "ipv4_prefix", "ipv6_prefix", "capacity", "on_full", "dry_run")
# The key of listeners and routes that names limits.
LIMITS_KEY = "limits"
KEY_KINDS = ("source_ip", "header:NAME", "cookie:NAME", "api_key", "jwt:CLAIM")
_CLAIM = re.compile(r"[\x21-\x7e]{1,63}")
ON_FULL = ("admit", "refuse")
MAX_PER_LIST = 4  # LIMIT_MAX_PER_LIST of the data plane
MIN_CAPACITY = 64  # at least a probe window (LIMIT_PROBE, 32) of slots, and some room
MAX_CAPACITY = 1 << 24  # 1 GiB of entries
DEFAULT_CAPACITY = 65536
MAX_RATE = (1 << 32) - 1
MAX_PERIOD_S = 86400
# RateLimit-Policy carries the name in a quoted string (RFC 8941 sf-string):
# names that need no escaping there, nor in a log or a command line.
NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\S+)\s*")
_UNITS = {"s": "1s", "m": "1m", "h": "1h", "ms": "1ms"}
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclasses.dataclass(frozen=True)
class Limit:
    name: str
    key: str  # "source_ip", "header:NAME" (as written), "cookie:NAME"
    rate: int  # requests per period; 0: no rate (concurrent only)
    period: float  # seconds
    burst: int
    concurrent: int  # requests (tcp: connections) in flight per key; 0: no limit
    ipv4_prefix: int = 32  # source_ip: the key is the address's first bits
    ipv6_prefix: int = 128
    capacity: int = DEFAULT_CAPACITY  # keys the table holds, a power of two
    on_full: str = "admit"  # a new key when no slot is free and none can be evicted
    dry_run: bool = False  # count what would be refused, refuse nothing

    @property
    def period_ns(self) -> int:
        return round(self.period * 1e9)

    @property
    def key_kind(self) -> str:
        return self.key.partition(":")[0]

    @property
    def rate_text(self) -> str:
        """"100/10s", "6/1m", "1/1h": the rate as a config would write it."""
        if not self.rate:
            return ""
        p = self.period
        for unit, seconds in (("h", 3600), ("m", 60), ("s", 1)):
            if p >= seconds and p % seconds == 0:
                return f"{self.rate}/{p // seconds:g}{unit}"
        return f"{self.rate}/{p * 1000:g}ms"


def parse(tables: list[tuple[str, Table]], ctx: Context) -> dict[str, Limit]:
    return {name: _parse_limit(name, t) for name, t in tables}


def parse_rate(text: str, path: str) -> tuple[int, float]:
    """"100/10s" -> (100, 10.0); "100/s", "6/m" and "1/h" are one unit."""
    m = _RATE.fullmatch(text)
    if not m:
        raise ConfigError(path, f'invalid rate {text!r} (requests per period, e.g. "100/10s" or "20/s")')
    count, period = int(m[1]), m[2]
    try:
        seconds = parse_duration(_UNITS.get(period, period))
    except ValueError as e:
        raise ConfigError(path, f"rate {text!r}: {e}") from None
    if not 1 <= count <= MAX_RATE:
        raise ConfigError(path, f"rate {text!r}: the count must be 1..{MAX_RATE}")
    if not 0.001 <= seconds <= MAX_PERIOD_S:
        raise ConfigError(path, f"rate {text!r}: the period must be 1ms..24h")
    if seconds * 1e9 / count < 1:
        raise ConfigError(path, f"rate {text!r}: over one request per nanosecond")
    return count, seconds


def _parse_key(t: Table) -> str:
    path = t.path_of("key")
    key = t.string("key", "source_ip")
    kind, sep, name = key.partition(":")
    if kind in ("source_ip", "api_key") and not sep:
        return key
    if kind == "header" and name:
        check_header_name(name, path)
        return key
    if kind == "cookie" and name:
        if not _COOKIE_NAME.fullmatch(name):
            raise ConfigError(path, f"invalid cookie name {name!r}")
        return key
    if kind == "jwt" and name:
        # requests without a verified token (no jwt auth on their route) are not limited
        if not _CLAIM.fullmatch(name):
            raise ConfigError(path, f"invalid claim name {name!r}")
        return key
    raise ConfigError(path, f"invalid key {key!r} (one of {', '.join(KEY_KINDS)})")


def _parse_limit(name: str, t: Table) -> Limit:
    if not NAME.fullmatch(name):
        raise ConfigError(t.path, f"limit name {name!r}: letters, digits, '_', '.' and '-', up to 63")
    key = _parse_key(t)
    rate, period = parse_rate(t.string("rate"), t.path_of("rate")) if t.has("rate") else (0, 1.0)
    burst = t.integer("burst", 0, 0, MAX_RATE)
    concurrent = t.integer("concurrent", 0, 0, 1 << 30)
    if burst and not rate:
        raise ConfigError(t.path_of("burst"), "needs a rate")
    if not rate and not concurrent:
        raise ConfigError(t.path, "a limit needs a rate, concurrent, or both")
    if rate and period * 1e9 / rate * (burst + 1) >= 1 << 62:
        raise ConfigError(t.path_of("burst"), f"{burst}: the burst spans more time than lb can count")
    capacity = t.integer("capacity", DEFAULT_CAPACITY, MIN_CAPACITY, MAX_CAPACITY)
    if capacity & (capacity - 1):
        raise ConfigError(t.path_of("capacity"), f"{capacity} is not a power of two (e.g. 65536, 1048576)")
    for k in ("ipv4_prefix", "ipv6_prefix"):
        if t.has(k) and key != "source_ip":
            raise ConfigError(t.path_of(k), 'needs key = "source_ip"')
    return Limit(
        name=name, key=key, rate=rate, period=period, burst=burst, concurrent=concurrent,
        ipv4_prefix=t.integer("ipv4_prefix", 32, 0, 32), ipv6_prefix=t.integer("ipv6_prefix", 128, 0, 128),
        capacity=capacity, on_full=t.choice("on_full", "admit", ON_FULL), dry_run=t.boolean("dry_run", False),
    )


def parse_limit_names(t: Table, limits: dict[str, Limit], mode: str) -> tuple[str, ...]:
    """The `limits` key of a listener or route table: names of [limits.NAME]
    tables, in order. A tcp listener has no request to read a key from: only
    source_ip limits apply there (per connection)."""
    names: dict[str, str] = {}
    for name, path in string_list(t, LIMITS_KEY, [], "a list of limit names"):
        limit = limits.get(name)
        if limit is None:
            hint = did_you_mean(name, list(limits))
            raise ConfigError(path, f"unknown limit {name!r}" + (f" ({hint})" if hint else
                                                                 " (define it in a [limits.NAME] table)"))
        if name in names:
            raise ConfigError(path, f"{name!r} is already in this list ({names[name]})")
        if mode == "tcp" and limit.key != "source_ip":
            raise ConfigError(path, f"limit {name!r} is keyed by {limit.key!r}: a tcp listener has only the "
                                    f"client's address (source_ip)")
        names[name] = path
    if len(names) > MAX_PER_LIST:
        raise ConfigError(t.path_of(LIMITS_KEY), f"at most {MAX_PER_LIST} limits in one list")
    return tuple(names)
