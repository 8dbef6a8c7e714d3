"""The [pools.NAME] sections: a pool's balancing and timeouts, its active
health checks ([pools.NAME.health]), passive ejection ([pools.NAME.passive])
and its backends ([[pools.NAME.backends]])."""

from __future__ import annotations

import dataclasses
import math
import re

from lb.config import tls as tls_section
from lb.config.tls import BackendTls
from lb.config.values import (
    MAX_POOL_NAME_BYTES,
    MIN_TIMEOUT,
    TCHAR_SYMBOLS,
    TOKEN,
    ConfigError,
    Context,
    Table,
    check_name,
    check_url_path,
    format_seconds,
    parse_backend_address,
    warn_set_but_unused,
)

MAX_TABLE_SIZE = 10_000_000
MAX_BACKENDS_PER_POOL = 32767  # a pool's slots (twice its backends) are 16-bit in Maglev tables
MAX_EXPECT_BODY = 1024  # bytes; an http check reads at most 16 KiB of the response

ALGORITHMS = ("roundrobin", "leastconn", "p2c", "random", "maglev")
SEND_PROXY = ("off", "v1", "v2")
HEALTH_TYPES = ("tcp", "http", "none")
HASH_KEYS_L4 = ("source_ip", "source_addr")
HASH_KEY_PREFIXES = ("header", "cookie", "query")  # "PREFIX:NAME", http only

# Pool keys only http listeners act on; a tcp listener ignores them.
HTTP_POOL_KEYS = (
    "response_timeout",
    "keepalive_max_idle",
    "keepalive_timeout",
    "sticky_cookie",
    "protocol",
    "cdn_id",
)
PROTOCOLS = ("http/1.1", "h2")
NAMED = True
KEYS = (
    "algorithm",
    "hash_key",
    "balance_factor",
    "table_size",
    "send_proxy",
    "connect_timeout",
    "retries",
    *HTTP_POOL_KEYS,
    "health",
    "passive",
    "backends",
    "tls",
)
HEALTH_KEYS = (
    "type",
    "path",
    "expect_status",
    "interval",
    "timeout",
    "rise",
    "fall",
    "slowstart",
    "method",
    "host",
    "expect_body",
    "fast_interval",
    "down_interval",
)
PASSIVE_KEYS = ("consecutive_failures", "eject_time", "max_ejected_percent")
BACKEND_KEYS = ("address", "name", "weight", "backup")


@dataclasses.dataclass(frozen=True)
class Backend:
    address: str  # as written
    host: str  # resolved numeric IP
    port: int
    family: int
    name: str
    weight: int
    backup: bool


@dataclasses.dataclass(frozen=True)
class Health:
    type: str
    path: str
    expect_status: tuple[int, int]
    interval: float
    timeout: float
    rise: int
    fall: int
    slowstart: float
    method: str = "GET"
    host: str = ""  # Host header of http checks; "" = the backend's address
    expect_body: str = ""  # a substring the response must contain; "" = any
    fast_interval: float = 0.0  # while a backend is changing state; 0 = interval
    down_interval: float = 0.0  # while a backend is down; 0 = interval


@dataclasses.dataclass(frozen=True)
class Passive:
    """Outlier ejection from the workers' own connect failures."""

    consecutive_failures: int = 5  # 0 = off
    eject_time: float = 30.0
    max_ejected_percent: int = 50


@dataclasses.dataclass(frozen=True)
class Pool:
    name: str
    algorithm: str
    hash_key: str
    balance_factor: float
    table_size: int
    send_proxy: str
    connect_timeout: float
    retries: int
    health: Health
    backends: tuple[Backend, ...]
    passive: Passive = Passive()
    # http only: backend inactivity while a response is awaited or received
    response_timeout: float = 60.0
    keepalive_max_idle: int = 256  # idle backend connections kept per worker per backend; 0 = no reuse
    keepalive_timeout: float = 30.0  # an idle backend connection is closed after this
    sticky_cookie: str = ""  # cookie name lb inserts for sticky sessions; "" = off
    tls: BackendTls | None = None  # [pools.NAME.tls]: TLS to the backends; None = plain
    protocol: str = "http/1.1"  # http only: "h2" speaks HTTP/2 to the backends (h2c, or h2 by ALPN over TLS)
    cdn_id: str = "lb"  # hash_key = "cache_key" (a tier of lb nodes): the CDN-Loop id sent, and refused back (508)


def parse(tables: list[tuple[str, Table]], ctx: Context) -> dict[str, Pool]:
    return {name: _parse_pool(name, t, ctx.warnings) for name, t in tables}


def needs_http(hash_key: str) -> bool:
    return hash_key not in HASH_KEYS_L4


# ---- Values ------------------------------------------------------------------

_STATUS_RANGE = re.compile(r"([0-9]{3})(?:-([0-9]{3}))?")
_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
_CDN_HOST = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}")
_HOST_HEADER = re.compile(r"[A-Za-z0-9.:\[\]_-]{1,253}")


def _check_hash_key(value: str, path: str) -> str:
    if value in HASH_KEYS_L4 or value in ("path", "cache_key"):
        return value
    prefix, sep, name = value.partition(":")
    if sep and prefix in HASH_KEY_PREFIXES:
        if not TOKEN.fullmatch(name):
            raise ConfigError(path, f"{value!r}: {prefix} name must be a non-empty token")
        return value
    valid = "source_ip, source_addr, path, cache_key, header:NAME, cookie:NAME, query:NAME"
    raise ConfigError(path, f"{value!r} is not one of {valid}")


def _parse_cdn_id(value: str, path: str) -> str:
    """RFC 8586 cdn-id: a host[:port] or a pseudonym (a token), without ',' or ';'."""
    if not (TOKEN.fullmatch(value) or _CDN_HOST.fullmatch(value)) or len(value) > 64:
        raise ConfigError(path, f"{value!r}: a name (a token like \"lb\" or \"cdn.example.com\"), at most 64 bytes")
    return value


def _parse_status_range(value: str, path: str) -> tuple[int, int]:
    m = _STATUS_RANGE.fullmatch(value)
    if not m:
        raise ConfigError(path, f'invalid status range {value!r} (use e.g. "200" or "200-399")')
    lo = int(m[1])
    hi = int(m[2] or m[1])
    if not 100 <= lo <= 599 or not 100 <= hi <= 599:
        raise ConfigError(path, f"status codes in {value!r} must be within 100..599")
    if lo > hi:
        raise ConfigError(path, f"status range {value!r} is reversed")
    return lo, hi


def _parse_method(value: str, path: str) -> str:
    if not _METHOD.fullmatch(value):
        raise ConfigError(path, f"invalid HTTP method {value!r} (e.g. \"GET\", \"HEAD\")")
    return value


def _parse_check_host(value: str, path: str) -> str:
    if value and not _HOST_HEADER.fullmatch(value):
        raise ConfigError(path, f"invalid Host header value {value!r}")
    return value


def _parse_sticky_cookie(value: str, path: str) -> str:
    if value and not TOKEN.fullmatch(value):
        raise ConfigError(path, f"invalid cookie name {value!r} (a token: letters, digits and {TCHAR_SYMBOLS})")
    return value


def _is_prime(n: int) -> bool:
    if n < 4:
        return n >= 2
    if n % 2 == 0 or n % 3 == 0:
        return False
    # Trial division by 6k +- 1 is instant for n up to MAX_TABLE_SIZE.
    for k in range(5, math.isqrt(n) + 1, 6):
        if n % k == 0 or n % (k + 2) == 0:
            return False
    return True


def _next_prime(n: int) -> int:
    while not _is_prime(n):
        n += 1
    return n


# ---- Tables ------------------------------------------------------------------


def _parse_health(t: Table, warnings: list[str]) -> Health:
    health = Health(
        type=t.choice("type", "tcp", HEALTH_TYPES),
        path=check_url_path(t.string("path", "/healthz"), t.path_of("path")),
        expect_status=_parse_status_range(t.string("expect_status", "200-399"), t.path_of("expect_status")),
        interval=t.duration("interval", "2s", MIN_TIMEOUT),
        timeout=t.duration("timeout", "1s", MIN_TIMEOUT),
        rise=t.integer("rise", 2, 1, 100),
        fall=t.integer("fall", 3, 1, 100),
        slowstart=t.duration("slowstart", "0s"),
        method=_parse_method(t.string("method", "GET"), t.path_of("method")),
        host=_parse_check_host(t.string("host", ""), t.path_of("host")),
        expect_body=t.string("expect_body", ""),
        fast_interval=t.duration("fast_interval", "0s"),
        down_interval=t.duration("down_interval", "0s"),
    )
    if len(health.expect_body.encode()) > MAX_EXPECT_BODY:
        raise ConfigError(t.path_of("expect_body"), f"longer than {MAX_EXPECT_BODY} bytes")
    for key in ("fast_interval", "down_interval"):
        if t.has(key) and getattr(health, key) < MIN_TIMEOUT:
            raise ConfigError(t.path_of(key), "must be at least 1ms")
    if health.type != "http":
        warn_set_but_unused(t, ("path", "expect_status", "method", "host", "expect_body"), 'type = "http"', warnings)
    if health.type != "none" and health.timeout > health.interval:
        warnings.append(
            f"{t.path_of('timeout')}: {format_seconds(health.timeout)} is longer than "
            f"the interval ({format_seconds(health.interval)}) between checks"
        )
    return health


def _parse_passive(t: Table) -> Passive:
    return Passive(
        consecutive_failures=t.integer("consecutive_failures", 5, 0, 1000),
        eject_time=t.duration("eject_time", "30s", MIN_TIMEOUT),
        max_ejected_percent=t.integer("max_ejected_percent", 50, 0, 100),
    )


def _parse_backends(t: Table) -> tuple[Backend, ...]:
    backends: list[Backend] = []
    names: dict[str, int] = {}
    addresses: dict[tuple[int, str, int], int] = {}
    for i, bt in enumerate(t.array_of_tables("backends", BACKEND_KEYS)):
        backend = _parse_backend(bt)
        # An unnamed backend is named by its address, so point there.
        name_path = bt.path_of("name" if bt.has("name") else "address")
        if backend.name in names:
            raise ConfigError(
                name_path, f"duplicate backend name {backend.name!r} (also backends[{names[backend.name]}])"
            )
        key = (backend.family, backend.host, backend.port)
        if key in addresses:
            raise ConfigError(
                bt.path_of("address"),
                f"duplicate backend address {backend.address!r} (also backends[{addresses[key]}])",
            )
        names[backend.name] = addresses[key] = i
        backends.append(backend)
    return tuple(backends)


def _parse_backend(t: Table) -> Backend:
    address = t.string("address")
    host, port, family = parse_backend_address(address, t.path_of("address"))
    name = t.string("name", address)
    check_name(name, t.path_of("name" if t.has("name") else "address"), "backend name")
    return Backend(
        address=address,
        host=host,
        port=port,
        family=family,
        name=name,
        weight=t.integer("weight", 100, 0, 1000),
        backup=t.boolean("backup", False),
    )


def _parse_pool(name: str, t: Table, warnings: list[str]) -> Pool:
    check_name(name, t.path, "pool name", MAX_POOL_NAME_BYTES)
    balance_factor = t.number("balance_factor", 0)
    # c = 1.0 would demand a perfectly even load, which bounded loads cannot meet.
    if not (balance_factor == 0 or 1.0 < balance_factor <= 100):
        raise ConfigError(
            t.path_of("balance_factor"), f"must be 0 (off) or above 1.0 and at most 100, got {balance_factor:g}"
        )
    table_size = t.integer("table_size", 65537, 1, MAX_TABLE_SIZE)
    if not _is_prime(table_size):
        raise ConfigError(
            t.path_of("table_size"), f"{table_size} is not prime (the next prime is {_next_prime(table_size)})"
        )
    pool = Pool(
        name=name,
        algorithm=t.choice("algorithm", "roundrobin", ALGORITHMS),
        hash_key=_check_hash_key(t.string("hash_key", "source_ip"), t.path_of("hash_key")),
        balance_factor=balance_factor,
        table_size=table_size,
        send_proxy=t.choice("send_proxy", "off", SEND_PROXY),
        connect_timeout=t.duration("connect_timeout", "3s", MIN_TIMEOUT),
        retries=t.integer("retries", 2, 0, 10),
        response_timeout=t.duration("response_timeout", "60s", MIN_TIMEOUT),
        keepalive_max_idle=t.integer("keepalive_max_idle", 256, 0, 10000),
        keepalive_timeout=t.duration("keepalive_timeout", "30s", MIN_TIMEOUT),
        sticky_cookie=_parse_sticky_cookie(t.string("sticky_cookie", ""), t.path_of("sticky_cookie")),
        health=_parse_health(t.table("health", HEALTH_KEYS), warnings),
        passive=_parse_passive(t.table("passive", PASSIVE_KEYS)),
        backends=_parse_backends(t),
        tls=tls_section.parse_pool(t.table("tls", tls_section.POOL_KEYS), warnings) if t.has("tls") else None,
        protocol=t.choice("protocol", "http/1.1", PROTOCOLS),
        cdn_id=_parse_cdn_id(t.string("cdn_id", "lb"), t.path_of("cdn_id")),
    )
    if pool.protocol == "h2":
        # one HTTP/2 connection carries many clients' requests: a PROXY header
        # could name only one of them
        if pool.send_proxy != "off":
            raise ConfigError(t.path_of("protocol"), 'send_proxy cannot be used with protocol = "h2"')
        # health checks of an h2 pool never speak HTTP/1.1, which an HTTP/2-only backend refuses
        if pool.health.type == "http":
            raise ConfigError(
                t.path_of("protocol"), 'health.type = "http" checks speak HTTP/1.1; use "tcp" with protocol = "h2"'
            )
    if len(pool.backends) > MAX_BACKENDS_PER_POOL:
        raise ConfigError(t.path_of("backends"), f"{len(pool.backends)} backends; at most {MAX_BACKENDS_PER_POOL}")
    if t.has("cdn_id") and not (pool.algorithm == "maglev" and pool.hash_key == "cache_key"):
        warnings.append(f'{t.path_of("cdn_id")}: has no effect unless algorithm = "maglev" and hash_key = "cache_key"')
    if pool.algorithm == "maglev":
        _warn_small_maglev_table(pool, t.path_of("table_size"), warnings)
    else:
        warn_set_but_unused(t, ("hash_key", "table_size"), 'algorithm = "maglev"', warnings)
    return pool


def _warn_small_maglev_table(pool: Pool, path: str, warnings: list[str]) -> None:
    # Maglev's spread between backends is within about 1% only when the
    # table has at least 100 slots per backend (Maglev paper, section 5.3).
    wanted = 100 * len(pool.backends)
    if pool.table_size >= wanted:
        return
    suggestion = _next_prime(wanted)
    advice = (
        f"use a prime of at least {wanted}, e.g. {suggestion}, for an even spread"
        if suggestion <= MAX_TABLE_SIZE
        else "expect an uneven spread"
    )
    warnings.append(f"{path}: {pool.table_size} is smaller than 100x the {len(pool.backends)} backends; {advice}")
