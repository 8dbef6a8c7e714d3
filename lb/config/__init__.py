"""Parse and validate lb.toml, the configuration contract of DESIGN.md section 4.

Everything a start would check is checked here, so `lb check` and a reload can
refuse a bad file before it reaches the running balancer. Every error names the
offending key by its path: ``pools.app.backends[2].address: port out of range``.
The result is a tree of frozen dataclasses; nothing downstream re-validates.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable
from decimal import Decimal

__all__ = [
    "Backend",
    "BindAddr",
    "Config",
    "ConfigError",
    "GlobalSettings",
    "HeaderRules",
    "Health",
    "HttpSettings",
    "Listener",
    "Pool",
    "Route",
    "load",
    "loads",
    "parse_duration",
]

# Limits. The shared-memory layout (lb/_fastpath.pxd) has fixed-size name
# fields with a terminating NUL, so names must fit them.
MAX_WORKERS = 64
MAX_TABLE_SIZE = 10_000_000
MAX_NAME_BYTES = 63  # shm_backend.name is char[64]
MAX_POOL_NAME_BYTES = 39  # shm_pool.name is char[40]
UNIX_PATH_MAX = 107  # sun_path is char[108], NUL included
MIN_TIMEOUT = 0.001  # the data plane and the checker keep time in milliseconds

MODES = ("tcp", "http")
ALGORITHMS = ("roundrobin", "leastconn", "p2c", "random", "maglev")
SEND_PROXY = ("off", "v1", "v2")
HEALTH_TYPES = ("tcp", "http", "none")
SPLICE_MODES = ("auto", "always", "never")
HASH_KEYS_L4 = ("source_ip", "source_addr")
HASH_KEY_PREFIXES = ("header", "cookie", "query")  # "PREFIX:NAME", http only
FORWARDED_MODES = ("x-forwarded", "forwarded", "both", "none")
# Header fields lb itself manages on every message: hop-by-hop fields (RFC 9110
# section 7.6.1, plus the non-standard Proxy-Connection) and the framing and
# routing fields. A header rule on one of them could break message framing or
# routing, so it is an error.
MANAGED_HEADERS = (
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
    "host",
)
# Ranges of the http listener limits, as the data plane's contract sets them.
MIN_HEADER_SIZE = 1024
MAX_HEADER_SIZE = 32768
MAX_TARGET = 65536
MAX_HEADER_COUNT = 256

# Known keys per table, in the order of the contract. Unknown keys are errors:
# a typo must not silently fall back to a default.
TOP_KEYS = ("global", "listeners", "pools")
GLOBAL_KEYS = ("workers", "admin_socket", "state_file", "user", "group", "drain_timeout", "splice", "max_worker_rss")
# Listener keys that need mode = "http"; the rest are valid in both modes.
HTTP_LISTENER_KEYS = (
    "routes",
    "http_request_timeout",
    "keepalive_timeout",
    "max_target",
    "max_header_size",
    "max_header_count",
    "forwarded",
    "hide_server",
    "request_headers",
    "response_headers",
)
LISTENER_KEYS = ("bind", "mode", "pool", "accept_proxy", "idle_timeout", "backlog", *HTTP_LISTENER_KEYS)
ROUTE_KEYS = (
    "host",
    "path_prefix",
    "path",
    "methods",
    "header",
    "header_value",
    "pool",
    "request_headers",
    "response_headers",
)
ROUTE_MATCHERS = ("host", "path_prefix", "path", "methods", "header")
HEADER_RULE_KEYS = ("set", "add", "remove")
# Pool keys only http listeners act on; a tcp listener ignores them.
HTTP_POOL_KEYS = ("response_timeout", "keepalive_max_idle", "keepalive_timeout", "sticky_cookie")
POOL_KEYS = (
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
MAX_BACKENDS_PER_POOL = 32767  # a pool's slots (twice its backends) are 16-bit in Maglev tables
MAX_EXPECT_BODY = 1024  # bytes; an http check reads at most 16 KiB of the response
BACKEND_KEYS = ("address", "name", "weight", "backup")


class ConfigError(Exception):
    """A config that must not be started. ``path`` names the key ("" for the file)."""

    def __init__(self, path: str, message: str, source: str = ""):
        self.path = path
        self.message = message
        self.source = source
        super().__init__(path, message)

    def __str__(self) -> str:
        where = self.path or self.source
        return f"{where}: {self.message}" if where else self.message


# ---- Result ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BindAddr:
    host: str  # numeric, canonical form ("0.0.0.0" for "*")
    port: int
    family: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"{host}:{self.port}"


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


@dataclasses.dataclass(frozen=True)
class HeaderRules:
    """Rewrites of one message's header fields, each list in file order.

    A name appears in at most one of the three lists (case-insensitively), so
    the order in which they are applied does not change the result.
    """

    set: tuple[tuple[str, str], ...] = ()  # (name as written, value): replaces every field of that name
    add: tuple[tuple[str, str], ...] = ()  # (name as written, value): appended even if present
    remove: tuple[str, ...] = ()  # lower case


@dataclasses.dataclass(frozen=True)
class Route:
    host: str | None  # lower case; "*.example.com" matches any subdomain
    path_prefix: str | None
    pool: str
    path: str | None = None  # the path (before "?") equals it
    methods: tuple[str, ...] = ()  # any of them; case-sensitive
    header: str | None = None  # lower case; a field of that name must be present
    header_value: str | None = None  # with header: its value equals this exactly
    request_headers: HeaderRules = HeaderRules()
    response_headers: HeaderRules = HeaderRules()


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """The http-only settings of a listener (Listener.http); defaults on a tcp listener."""

    request_timeout: float = 10.0  # key http_request_timeout
    keepalive_timeout: float = 60.0
    max_target: int = 8192
    max_header_size: int = 16384
    max_header_count: int = 100
    forwarded: str = "x-forwarded"
    hide_server: bool = False
    request_headers: HeaderRules = HeaderRules()
    response_headers: HeaderRules = HeaderRules()


@dataclasses.dataclass(frozen=True)
class Listener:
    name: str
    bind: tuple[BindAddr, ...]
    mode: str
    pool: str | None
    accept_proxy: bool
    routes: tuple[Route, ...]
    idle_timeout: float
    backlog: int
    http: HttpSettings = HttpSettings()


@dataclasses.dataclass(frozen=True)
class GlobalSettings:
    workers: int  # as written; 0 means one per CPU
    admin_socket: str
    state_file: str
    user: str
    group: str
    drain_timeout: float
    splice: str
    max_worker_rss: int = 0  # bytes; a worker over it is replaced (new first, old drains); 0 = off
    # Whether user or group is written in the file. When started as root, a
    # missing account is an error if it was named, and only a warning (lb keeps
    # running as root) for the default "lb" the packages create.
    account_explicit: bool = dataclasses.field(default=False, compare=False)

    def worker_count(self) -> int:
        """Workers to run: as configured, or one per CPU this process may use."""
        if self.workers:
            return self.workers
        # The affinity mask, not the machine's CPU count, is what a container
        # or `taskset` lets us use; cap it so shared memory stays sized by
        # the same maximum the config enforces.
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS)


@dataclasses.dataclass(frozen=True)
class Config:
    global_: GlobalSettings
    listeners: dict[str, Listener]
    pools: dict[str, Pool]
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


_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:us|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)")
_UNIT_SECONDS = {
    "us": Decimal("0.000001"),
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_DURATION_HINT = '(use e.g. "500ms", "2s", "1m")'


def parse_duration(s: str) -> float:
    """Seconds in a duration string: "250us", "500ms", "2s", "1m30s", "1.5h".

    Raises ValueError with a message fit to follow a key path.
    """
    if not isinstance(s, str):
        # A bare number would be ambiguous (seconds? milliseconds?), so the
        # contract makes every duration a string with a unit.
        raise ValueError(f'invalid duration {json.dumps(s)} (durations are strings, e.g. "500ms", "2s", "1m")')
    if not _DURATION.fullmatch(s):
        raise ValueError(f"invalid duration {s!r} {_DURATION_HINT}")
    # Decimal arithmetic, so "1m30s" or "100ms" are rounded once, not per part.
    total = sum(Decimal(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART.findall(s))
    return float(total)


# ---- Reading TOML tables -----------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_REQUIRED = object()


def _join(path: str, key: str) -> str:
    """Extend a key path, quoting keys that TOML would quote (so paths stay unambiguous)."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def _type_name(value: object) -> str:
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "boolean"
    for kind, name in ((int, "integer"), (float, "float"), (str, "string"), (list, "array"), (dict, "table")):
        if isinstance(value, kind):
            return name
    return "date/time"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _wrong_type(path: str, value: object, expected: str) -> ConfigError:
    actual = _type_name(value)
    shown = f" ({json.dumps(value)})" if actual in ("boolean", "integer", "float", "string") else ""
    return ConfigError(path, f"expected {expected}, got {_a(actual)}{shown}")


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else ""


class _Table:
    """One TOML table being read: knows its key path and rejects unknown keys up front."""

    def __init__(self, data: dict, path: str, known: tuple[str, ...]):
        self.path = path
        self._data = data
        for key in data:
            if key not in known:
                hint = _did_you_mean(key, known) or f"valid keys: {', '.join(known)}"
                raise ConfigError(_join(path, key), f"unknown key ({hint})")

    def path_of(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: object, expected: str, ok: Callable[[object], bool]) -> object:
        """The value at ``key`` if ``ok(value)``; ``default`` when absent (_REQUIRED: an error)."""
        if key not in self._data:
            if default is _REQUIRED:
                raise ConfigError(self.path_of(key), "required key is missing")
            return default
        value = self._data[key]
        if not ok(value):
            raise _wrong_type(self.path_of(key), value, expected)
        return value

    def string(self, key: str, default: object = _REQUIRED) -> str | None:
        return self.get(key, default, "a string", lambda v: isinstance(v, str))

    def boolean(self, key: str, default: bool) -> bool:
        return self.get(key, default, "a boolean (true or false)", lambda v: isinstance(v, bool))

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.get(key, default, "an integer", lambda v: _type_name(v) == "integer")
        if not lo <= value <= hi:
            raise ConfigError(self.path_of(key), f"{value} is out of range ({lo}..{hi})")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.get(key, default, "a number", lambda v: _type_name(v) in ("integer", "float"))
        return float(value)

    def duration(self, key: str, default: str, minimum: float = 0.0) -> float:
        raw = self._data.get(key, default)
        try:
            seconds = parse_duration(raw)
        except ValueError as e:
            raise ConfigError(self.path_of(key), str(e)) from None
        if seconds < minimum:
            raise ConfigError(self.path_of(key), f"must be at least {_format_seconds(minimum)}, got {raw!r}")
        return seconds

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            hint = _did_you_mean(value, choices)
            raise ConfigError(
                self.path_of(key),
                f"{value!r} is not one of {', '.join(choices)}" + (f" ({hint})" if hint else ""),
            )
        return value

    def table(self, key: str, known: tuple[str, ...]) -> _Table:
        """A sub-table; an absent one reads as empty, so every key takes its default."""
        data = self.get(key, {}, "a table", lambda v: isinstance(v, dict))
        return _Table(data, self.path_of(key), known)

    def named_tables(self, key: str, known: tuple[str, ...]) -> list[tuple[str, _Table]]:
        """``[key.NAME]`` sections, in file order."""
        section = self.get(key, {}, "a table", lambda v: isinstance(v, dict))
        out = []
        for name, data in section.items():
            path = _join(self.path_of(key), name)
            if not isinstance(data, dict):
                raise _wrong_type(path, data, f"a table ([{path}])")
            out.append((name, _Table(data, path, known)))
        return out

    def array_of_tables(self, key: str, known: tuple[str, ...]) -> list[_Table]:
        """``[[key]]`` entries, in file order; absent reads as empty."""
        items = self.get(key, [], "an array of tables", lambda v: isinstance(v, list))
        out = []
        for i, data in enumerate(items):
            path = f"{self.path_of(key)}[{i}]"
            if not isinstance(data, dict):
                raise _wrong_type(path, data, "a table")
            out.append(_Table(data, path, known))
        return out


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


# ---- Values ------------------------------------------------------------------

_PORT = re.compile(r"[0-9]+")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_IPV4_LIKE = re.compile(r"[0-9.]+")  # all digits and dots: meant as an IPv4 literal, never a name
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_STATUS_RANGE = re.compile(r"([0-9]{3})(?:-([0-9]{3}))?")


def _split_host_port(text: str, path: str) -> tuple[str, int, bool]:
    """Split "host:port" or "[v6]:port" into (host, port, bracketed)."""
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(path, f"missing ']' in {text!r}")
        if not rest:
            raise ConfigError(path, f"missing port in {text!r} (write HOST:PORT)")
        if not rest.startswith(":"):
            raise ConfigError(path, f"expected ':PORT' after ']' in {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(path, f"missing port in {text!r} (write HOST:PORT)")
        if ":" in host:
            raise ConfigError(path, f'IPv6 addresses need brackets: "[ADDRESS]:PORT", got {text!r}')
    if not host:
        raise ConfigError(path, f"missing host in {text!r}")
    if not port_text:
        raise ConfigError(path, f"missing port in {text!r}")
    if not _PORT.fullmatch(port_text):
        raise ConfigError(path, f"invalid port {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(path, f"port out of range ({port}; use 1..65535)")
    return host, port, bracketed


def _parse_ip(host: str, path: str, bracketed: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(path, f"invalid IP address {host!r}") from None
    if bracketed and ip.version == 4:
        raise ConfigError(path, f"brackets are for IPv6 addresses only: {host!r}")
    return ip


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _parse_bind(text: str, path: str) -> BindAddr:
    host, port, bracketed = _split_host_port(text, path)
    if host == "*" and not bracketed:
        host = "0.0.0.0"
    ip = _parse_ip(host, path, bracketed)
    # Canonical form, so "[::0]:80" and "[::]:80" count as the same address.
    return BindAddr(str(ip), port, _family(ip))


def parse_backend_address(text: str, path: str = "address") -> tuple[str, int, int]:
    """A backend address ("10.0.0.1:80", "[::1]:80", "name:80") -> (numeric host,
    port, family), as the config parses it; ConfigError when it is not one."""
    return _resolve_backend(text, path)


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?")
_SIZE_UNITS = {None: 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30}


def _parse_size(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(path, f"expected a size like \"512MiB\" or 0, got {_type_name(value)}")
    m = _SIZE.fullmatch(str(value).strip())
    if not m:
        raise ConfigError(path, f"invalid size {value!r} (use e.g. \"512MiB\", \"2GiB\", or 0 for off)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def _resolve_backend(text: str, path: str) -> tuple[str, int, int]:
    """A backend address -> (numeric host, port, family); host names are resolved now."""
    host, port, bracketed = _split_host_port(text, path)
    if bracketed or _IPV4_LIKE.fullmatch(host):
        ip = _parse_ip(host, path, bracketed)
        if ip.is_unspecified:
            raise ConfigError(path, f"{host} is the unspecified address, not one a backend can have")
        return str(ip), port, _family(ip)
    if not _HOSTNAME.fullmatch(host):
        raise ConfigError(path, f"invalid host name {host!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(path, f"cannot resolve {host!r}: {e.strerror}") from None
    # The first answer follows the resolver's own preference order (gai.conf).
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return sockaddr[0], port, family
    raise ConfigError(path, f"cannot resolve {host!r}: no IPv4 or IPv6 address")


def _check_name(name: str, path: str, what: str, max_bytes: int = MAX_NAME_BYTES) -> None:
    if not name:
        raise ConfigError(path, f"{what} must not be empty")
    if len(name.encode("utf-8")) > max_bytes:
        raise ConfigError(path, f"{what} {name!r} is longer than {max_bytes} bytes")
    if not name.isprintable():
        raise ConfigError(path, f"{what} {name!r} contains unprintable characters")


def _check_url_path(value: str, path: str) -> str:
    if not value.startswith("/"):
        raise ConfigError(path, f"{value!r} must start with '/'")
    # The value goes on an HTTP request line or is compared with one.
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(path, f"{value!r} contains spaces or control characters")
    return value


def _check_absolute_path(value: str, path: str) -> str:
    if not value:
        raise ConfigError(path, "must not be empty")
    if not os.path.isabs(value):
        raise ConfigError(path, f"{value!r} is not an absolute path")
    if "\0" in value:
        raise ConfigError(path, "contains a NUL character")
    return value


def _check_hash_key(value: str, path: str) -> str:
    if value in HASH_KEYS_L4 or value == "path":
        return value
    prefix, sep, name = value.partition(":")
    if sep and prefix in HASH_KEY_PREFIXES:
        if not _TOKEN.fullmatch(name):
            raise ConfigError(path, f"{value!r}: {prefix} name must be a non-empty token")
        return value
    valid = "source_ip, source_addr, path, header:NAME, cookie:NAME, query:NAME"
    raise ConfigError(path, f"{value!r} is not one of {valid}")


def _needs_http(hash_key: str) -> bool:
    return hash_key not in HASH_KEYS_L4


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


# ---- Sections ------------------------------------------------------------------


def _parse_global(t: _Table) -> GlobalSettings:
    admin_socket = _check_absolute_path(t.string("admin_socket", "/run/lb/admin.sock"), t.path_of("admin_socket"))
    if len(admin_socket.encode("utf-8")) > UNIX_PATH_MAX:
        raise ConfigError(
            t.path_of("admin_socket"), f"longer than {UNIX_PATH_MAX} bytes, the limit for a UNIX socket path"
        )
    return GlobalSettings(
        workers=t.integer("workers", 0, 0, MAX_WORKERS),
        admin_socket=admin_socket,
        state_file=_check_absolute_path(t.string("state_file", "/var/lib/lb/state.json"), t.path_of("state_file")),
        # Only syntax here: `lb check` must work where the account does not exist.
        user=_nonempty(t, "user", "lb"),
        group=_nonempty(t, "group", "lb"),
        drain_timeout=t.duration("drain_timeout", "30s"),
        max_worker_rss=_parse_size(
            t.get("max_worker_rss", 0, "a size", lambda v: isinstance(v, (int, str)) and not isinstance(v, bool)),
            t.path_of("max_worker_rss"),
        ),
        splice=t.choice("splice", "auto", SPLICE_MODES),
        account_explicit=t.has("user") or t.has("group"),
    )


def _nonempty(t: _Table, key: str, default: str) -> str:
    value = t.string(key, default)
    if not value:
        raise ConfigError(t.path_of(key), "must not be empty")
    return value


def _parse_health(t: _Table, warnings: list[str]) -> Health:
    health = Health(
        type=t.choice("type", "tcp", HEALTH_TYPES),
        path=_check_url_path(t.string("path", "/healthz"), t.path_of("path")),
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
        _warn_set_but_unused(t, ("path", "expect_status", "method", "host", "expect_body"), 'type = "http"', warnings)
    if health.type != "none" and health.timeout > health.interval:
        warnings.append(
            f"{t.path_of('timeout')}: {_format_seconds(health.timeout)} is longer than "
            f"the interval ({_format_seconds(health.interval)}) between checks"
        )
    return health


_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
_HOST_HEADER = re.compile(r"[A-Za-z0-9.:\[\]_-]{1,253}")


def _parse_method(value: str, path: str) -> str:
    if not _METHOD.fullmatch(value):
        raise ConfigError(path, f"invalid HTTP method {value!r} (e.g. \"GET\", \"HEAD\")")
    return value


def _parse_check_host(value: str, path: str) -> str:
    if value and not _HOST_HEADER.fullmatch(value):
        raise ConfigError(path, f"invalid Host header value {value!r}")
    return value


def _parse_passive(t: _Table) -> Passive:
    return Passive(
        consecutive_failures=t.integer("consecutive_failures", 5, 0, 1000),
        eject_time=t.duration("eject_time", "30s", MIN_TIMEOUT),
        max_ejected_percent=t.integer("max_ejected_percent", 50, 0, 100),
    )


def _warn_set_but_unused(t: _Table, keys: tuple[str, ...], condition: str, warnings: list[str]) -> None:
    for key in keys:
        if t.has(key):
            warnings.append(f"{t.path_of(key)}: has no effect unless {condition}")


def _parse_backends(t: _Table) -> tuple[Backend, ...]:
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


def _parse_backend(t: _Table) -> Backend:
    address = t.string("address")
    host, port, family = _resolve_backend(address, t.path_of("address"))
    name = t.string("name", address)
    _check_name(name, t.path_of("name" if t.has("name") else "address"), "backend name")
    return Backend(
        address=address,
        host=host,
        port=port,
        family=family,
        name=name,
        weight=t.integer("weight", 100, 0, 1000),
        backup=t.boolean("backup", False),
    )


def _parse_pool(name: str, t: _Table, warnings: list[str]) -> Pool:
    _check_name(name, t.path, "pool name", MAX_POOL_NAME_BYTES)
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
    )
    if len(pool.backends) > MAX_BACKENDS_PER_POOL:
        raise ConfigError(t.path_of("backends"), f"{len(pool.backends)} backends; at most {MAX_BACKENDS_PER_POOL}")
    if pool.algorithm == "maglev":
        _warn_small_maglev_table(pool, t.path_of("table_size"), warnings)
    else:
        _warn_set_but_unused(t, ("hash_key", "table_size"), 'algorithm = "maglev"', warnings)
    return pool


def _parse_sticky_cookie(value: str, path: str) -> str:
    if value and not _TOKEN.fullmatch(value):
        raise ConfigError(path, f"invalid cookie name {value!r} (a token: letters, digits and {_TCHAR_SYMBOLS})")
    return value


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


def _parse_bind_list(t: _Table) -> list[tuple[str, str]]:
    """The bind addresses with the key path of each; one string is accepted for a list of one."""
    value = t.get("bind", _REQUIRED, "a list of addresses", lambda v: isinstance(v, (str, list)))
    if isinstance(value, str):
        return [(value, t.path_of("bind"))]
    if not value:
        raise ConfigError(t.path_of("bind"), "at least one address is required")
    out = []
    for i, item in enumerate(value):
        path = f"{t.path_of('bind')}[{i}]"
        if not isinstance(item, str):
            raise _wrong_type(path, item, "a string")
        out.append((item, path))
    return out


def _check_pool_ref(pool: str, path: str, pools: dict[str, Pool]) -> str:
    if pool not in pools:
        hint = _did_you_mean(pool, list(pools))
        raise ConfigError(path, f"unknown pool {pool!r}" + (f" ({hint})" if hint else ""))
    return pool


def _parse_route_host(value: str, path: str) -> str:
    host = value.lower()  # host names compare without case
    name = host[2:] if host.startswith("*.") else host
    if not _HOSTNAME.fullmatch(name):
        raise ConfigError(path, f'invalid host {value!r} (use an exact name or "*.example.com")')
    return host


def _parse_route_path(value: str, path: str) -> str:
    _check_url_path(value, path)
    # Routes compare the path alone: the query and a fragment never reach it.
    for c in "?#":
        if c in value:
            raise ConfigError(path, f"{value!r} contains {c!r}; routes match the path, before any query")
    return value


def _parse_methods(t: _Table, warnings: list[str]) -> tuple[str, ...]:
    value = t.get("methods", [], "a list of methods", lambda v: isinstance(v, list))
    if not value:
        raise ConfigError(t.path_of("methods"), 'at least one method is required (e.g. ["GET", "HEAD"])')
    methods: dict[str, int] = {}
    for i, method in enumerate(value):
        path = f"{t.path_of('methods')}[{i}]"
        if not isinstance(method, str):
            raise _wrong_type(path, method, "a string")
        if not _TOKEN.fullmatch(method):
            raise ConfigError(path, f"invalid method {method!r} (a token, e.g. \"GET\")")
        if method in methods:
            raise ConfigError(path, f"duplicate method {method!r} (also methods[{methods[method]}])")
        if method != method.upper():
            # Methods compare case-sensitively, and clients send them in upper case.
            warnings.append(f"{path}: {method!r} matches only that exact case, not {method.upper()!r}")
        methods[method] = i
    return tuple(methods)


def _parse_route(t: _Table, pools: dict[str, Pool], warnings: list[str]) -> Route:
    if not any(t.has(key) for key in ROUTE_MATCHERS):
        raise ConfigError(t.path, f"a route needs at least one of {', '.join(ROUTE_MATCHERS)}")
    host = t.string("host", None)
    path_prefix = t.string("path_prefix", None)
    path = t.string("path", None)
    if path is not None and path_prefix is not None:
        raise ConfigError(t.path_of("path"), "path and path_prefix exclude each other (path matches the whole path)")
    header = t.string("header", None)
    header_value = t.string("header_value", None)
    if header_value is not None and header is None:
        raise ConfigError(t.path_of("header_value"), "needs header, the name of the field to compare")
    return Route(
        host=None if host is None else _parse_route_host(host, t.path_of("host")),
        path_prefix=None if path_prefix is None else _parse_route_path(path_prefix, t.path_of("path_prefix")),
        path=None if path is None else _parse_route_path(path, t.path_of("path")),
        methods=_parse_methods(t, warnings) if t.has("methods") else (),
        header=None if header is None else _check_header_name(header, t.path_of("header")).lower(),
        header_value=None if header_value is None else _check_field_value(header_value, t.path_of("header_value")),
        pool=_check_pool_ref(t.string("pool"), t.path_of("pool"), pools),
        request_headers=_parse_header_rules(t.table("request_headers", HEADER_RULE_KEYS)),
        response_headers=_parse_header_rules(t.table("response_headers", HEADER_RULE_KEYS)),
    )


_TCHAR_SYMBOLS = "!#$%&'*+-.^_`|~"


def _check_header_name(name: str, path: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ConfigError(path, f"invalid header name {name!r} (a token: letters, digits and {_TCHAR_SYMBOLS})")
    return name


def _check_field_value(value: str, path: str) -> str:
    for c in value:
        if ord(c) < 0x20 or ord(c) == 0x7F:
            # CR or LF would end the field early and let the rest pass as another field.
            raise ConfigError(path, f"contains the control character {c!r} (no CR, LF, NUL, TAB or other control)")
    if value != value.strip(" "):
        # A recipient strips them, so the value would never be seen as written.
        raise ConfigError(path, f"{value!r} starts or ends with a space")
    return value


def _check_rewritable(name: str, path: str) -> None:
    if name.lower() in MANAGED_HEADERS:
        raise ConfigError(
            path,
            f"{name!r} may not be set, added or removed: lb manages the hop-by-hop fields, "
            "Content-Length and Host itself",
        )


def _parse_header_rules(t: _Table) -> HeaderRules:
    """A request_headers or response_headers table, lists in file order."""
    seen: dict[str, str] = {}  # lower-case name -> path of its entry

    def claim(name: str, path: str) -> None:
        _check_header_name(name, path)
        _check_rewritable(name, path)
        # One entry per name keeps the result independent of the order in
        # which set, add and remove are applied.
        lower = name.lower()
        if lower in seen:
            raise ConfigError(
                path, f"{name!r} is already at {seen[lower]} (one entry per name, of any case, in set, add and remove)"
            )
        seen[lower] = path

    pairs: dict[str, list[tuple[str, str]]] = {}
    for key in ("set", "add"):
        table = t.get(key, {}, "a table of header names to values", lambda v: isinstance(v, dict))
        pairs[key] = []
        for name, value in table.items():
            path = _join(t.path_of(key), name)
            claim(name, path)
            if not isinstance(value, str):
                raise _wrong_type(path, value, "a string")
            pairs[key].append((name, _check_field_value(value, path)))
    names = t.get("remove", [], "a list of header names", lambda v: isinstance(v, list))
    remove = []
    for i, name in enumerate(names):
        path = f"{t.path_of('remove')}[{i}]"
        if not isinstance(name, str):
            raise _wrong_type(path, name, "a string")
        claim(name, path)
        remove.append(name.lower())
    return HeaderRules(set=tuple(pairs["set"]), add=tuple(pairs["add"]), remove=tuple(remove))


def _parse_http_settings(t: _Table) -> HttpSettings:
    max_header_size = t.integer("max_header_size", 16384, MIN_HEADER_SIZE, MAX_HEADER_SIZE)
    max_target = t.integer("max_target", 8192, 1, MAX_TARGET)
    if max_target >= max_header_size:
        # The target is part of the request line, which is part of the head.
        written = f"{max_target}" if t.has("max_target") else f"the default {max_target}"
        raise ConfigError(
            t.path_of("max_target"), f"{written} must be less than max_header_size ({max_header_size})"
        )
    return HttpSettings(
        request_timeout=t.duration("http_request_timeout", "10s", MIN_TIMEOUT),
        keepalive_timeout=t.duration("keepalive_timeout", "60s", MIN_TIMEOUT),
        max_target=max_target,
        max_header_size=max_header_size,
        max_header_count=t.integer("max_header_count", 100, 1, MAX_HEADER_COUNT),
        forwarded=t.choice("forwarded", "x-forwarded", FORWARDED_MODES),
        hide_server=t.boolean("hide_server", False),
        request_headers=_parse_header_rules(t.table("request_headers", HEADER_RULE_KEYS)),
        response_headers=_parse_header_rules(t.table("response_headers", HEADER_RULE_KEYS)),
    )


def _parse_listener(
    name: str, t: _Table, pools: dict[str, Pool], bound: dict[BindAddr, str], warnings: list[str]
) -> Listener:
    """One [listeners.NAME] table; ``bound`` maps addresses taken so far to their listener."""
    _check_name(name, t.path, "listener name")
    bind = []
    for text, path in _parse_bind_list(t):
        addr = _parse_bind(text, path)
        # Two sockets on one address would split its traffic between two listeners.
        if addr in bound:
            raise ConfigError(path, f"{addr} is already bound by listener {bound[addr]!r}")
        bound[addr] = name
        bind.append(addr)
    mode = t.choice("mode", "http", MODES)
    pool = t.string("pool", None)
    if pool is None and mode == "tcp":
        raise ConfigError(t.path_of("pool"), 'required key is missing (mode = "tcp" needs a pool)')
    if pool is not None:
        _check_pool_ref(pool, t.path_of("pool"), pools)
    if mode != "http":
        for key in HTTP_LISTENER_KEYS:
            if t.has(key):
                raise ConfigError(t.path_of(key), 'needs mode = "http"')
    # Before the routes, so errors come in file order ([[routes]] follow the listener's keys).
    http = _parse_http_settings(t) if mode == "http" else HttpSettings()
    routes = tuple(_parse_route(rt, pools, warnings) for rt in t.array_of_tables("routes", ROUTE_KEYS))
    if pool is None and not routes:
        raise ConfigError(t.path_of("pool"), "required key is missing (a listener needs a pool or at least one route)")
    return Listener(
        name=name,
        bind=tuple(bind),
        mode=mode,
        pool=pool,
        accept_proxy=t.boolean("accept_proxy", False),
        routes=routes,
        idle_timeout=t.duration("idle_timeout", "10m", MIN_TIMEOUT),
        backlog=t.integer("backlog", 4096, 1, 65535),
        http=http,
    )


# ---- Whole-file checks ---------------------------------------------------------


def _check_pool_users(listeners: dict[str, Listener], pools: dict[str, Pool]) -> None:
    """Pools a listener sends traffic to need backends, and tcp ones an L4 hash key."""
    for listener in listeners.values():
        used = dict.fromkeys([listener.pool, *(route.pool for route in listener.routes)])
        for name in (n for n in used if n is not None):
            pool = pools[name]
            pool_path = _join("pools", name)
            if not pool.backends:
                raise ConfigError(
                    _join(pool_path, "backends"), f"pool is used by listener {listener.name!r} but has no backends"
                )
            if listener.mode == "tcp" and _needs_http(pool.hash_key):
                raise ConfigError(
                    _join(pool_path, "hash_key"),
                    f"{pool.hash_key!r} needs HTTP, but tcp listener {listener.name!r} uses this pool",
                )


def _warn_http_pool_keys(
    pool_tables: list[tuple[str, _Table]], listeners: dict[str, Listener], warnings: list[str]
) -> None:
    """http-only keys set on a pool that only tcp listeners use have no effect."""
    modes: dict[str, set[str]] = {}
    for listener in listeners.values():
        for name in (listener.pool, *(route.pool for route in listener.routes)):
            if name is not None:
                modes.setdefault(name, set()).add(listener.mode)
    for name, t in pool_tables:
        if modes.get(name) == {"tcp"}:
            _warn_set_but_unused(t, HTTP_POOL_KEYS, "an http listener uses this pool", warnings)


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
    root = _Table(_parse_toml(text, source), "", TOP_KEYS)
    warnings: list[str] = []
    global_ = _parse_global(root.table("global", GLOBAL_KEYS))
    pool_tables = root.named_tables("pools", POOL_KEYS)
    pools = {name: _parse_pool(name, t, warnings) for name, t in pool_tables}
    bound: dict[BindAddr, str] = {}
    listeners = {
        name: _parse_listener(name, t, pools, bound, warnings)
        for name, t in root.named_tables("listeners", LISTENER_KEYS)
    }
    if not listeners:
        raise ConfigError("listeners", "at least one listener is required")
    _check_pool_users(listeners, pools)
    _warn_http_pool_keys(pool_tables, listeners, warnings)
    return Config(
        global_=global_,
        listeners=listeners,
        pools=pools,
        source=source,
        sha256=sha256,
        warnings=tuple(warnings),
    )
