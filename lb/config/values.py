"""What every config section shares: the table reader, ConfigError and its key
paths, and the value types and checks more than one section uses (durations,
sizes, addresses, names, paths, tokens) with the limits they enforce.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable
from decimal import Decimal

# Limits. The shared-memory layout (lb/_fastpath.pxd) has fixed-size name
# fields with a terminating NUL, so names must fit them.
MAX_NAME_BYTES = 63  # shm_backend.name is char[64]
MAX_POOL_NAME_BYTES = 39  # shm_pool.name is char[40]
MIN_TIMEOUT = 0.001  # the data plane and the checker keep time in milliseconds


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


@dataclasses.dataclass
class Context:
    """What a section's ``parse`` gets besides its own tables."""

    warnings: list[str] = dataclasses.field(default_factory=list)
    # The sections parsed so far, by top-level key: a section may refer only
    # to those listed before it in lb.config.SECTIONS.
    sections: dict[str, object] = dataclasses.field(default_factory=dict)


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


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


# ---- Reading TOML tables -----------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
REQUIRED = object()


def join(path: str, key: str) -> str:
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


def wrong_type(path: str, value: object, expected: str) -> ConfigError:
    actual = _type_name(value)
    shown = f" ({json.dumps(value)})" if actual in ("boolean", "integer", "float", "string") else ""
    return ConfigError(path, f"expected {expected}, got {_a(actual)}{shown}")


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else ""


class Table:
    """One TOML table being read: knows its key path and rejects unknown keys up front."""

    def __init__(self, data: dict, path: str, known: tuple[str, ...]):
        self.path = path
        self._data = data
        for key in data:
            if key not in known:
                hint = did_you_mean(key, known) or f"valid keys: {', '.join(known)}"
                raise ConfigError(join(path, key), f"unknown key ({hint})")

    def path_of(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: object, expected: str, ok: Callable[[object], bool]) -> object:
        """The value at ``key`` if ``ok(value)``; ``default`` when absent (REQUIRED: an error)."""
        if key not in self._data:
            if default is REQUIRED:
                raise ConfigError(self.path_of(key), "required key is missing")
            return default
        value = self._data[key]
        if not ok(value):
            raise wrong_type(self.path_of(key), value, expected)
        return value

    def string(self, key: str, default: object = REQUIRED) -> str | None:
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
            raise ConfigError(self.path_of(key), f"must be at least {format_seconds(minimum)}, got {raw!r}")
        return seconds

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            hint = did_you_mean(value, choices)
            raise ConfigError(
                self.path_of(key),
                f"{value!r} is not one of {', '.join(choices)}" + (f" ({hint})" if hint else ""),
            )
        return value

    def table(self, key: str, known: tuple[str, ...]) -> Table:
        """A sub-table; an absent one reads as empty, so every key takes its default."""
        data = self.get(key, {}, "a table", lambda v: isinstance(v, dict))
        return Table(data, self.path_of(key), known)

    def named_tables(self, key: str, known: tuple[str, ...]) -> list[tuple[str, Table]]:
        """``[key.NAME]`` sections, in file order."""
        section = self.get(key, {}, "a table", lambda v: isinstance(v, dict))
        out = []
        for name, data in section.items():
            path = join(self.path_of(key), name)
            if not isinstance(data, dict):
                raise wrong_type(path, data, f"a table ([{path}])")
            out.append((name, Table(data, path, known)))
        return out

    def array_of_tables(self, key: str, known: tuple[str, ...]) -> list[Table]:
        """``[[key]]`` entries, in file order; absent reads as empty."""
        items = self.get(key, [], "an array of tables", lambda v: isinstance(v, list))
        out = []
        for i, data in enumerate(items):
            path = f"{self.path_of(key)}[{i}]"
            if not isinstance(data, dict):
                raise wrong_type(path, data, "a table")
            out.append(Table(data, path, known))
        return out


def string_list(t: Table, key: str, default: object, expected: str = "a list of strings") -> list[tuple[str, str]]:
    """A list of strings, each with its key path ([i])."""
    value = t.get(key, default, expected, lambda v: isinstance(v, list))
    out = []
    for i, item in enumerate(value):
        path = f"{t.path_of(key)}[{i}]"
        if not isinstance(item, str):
            raise wrong_type(path, item, "a string")
        out.append((item, path))
    return out


def warn_set_but_unused(t: Table, keys: tuple[str, ...], condition: str, warnings: list[str]) -> None:
    for key in keys:
        if t.has(key):
            warnings.append(f"{t.path_of(key)}: has no effect unless {condition}")


# ---- Values ------------------------------------------------------------------

_PORT = re.compile(r"[0-9]+")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_IPV4_LIKE = re.compile(r"[0-9.]+")  # all digits and dots: meant as an IPv4 literal, never a name
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
TCHAR_SYMBOLS = "!#$%&'*+-.^_`|~"


@dataclasses.dataclass(frozen=True)
class BindAddr:
    host: str  # numeric, canonical form ("0.0.0.0" for "*")
    port: int
    family: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"{host}:{self.port}"


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


def parse_bind(text: str, path: str) -> BindAddr:
    host, port, bracketed = _split_host_port(text, path)
    if host == "*" and not bracketed:
        host = "0.0.0.0"
    ip = _parse_ip(host, path, bracketed)
    # Canonical form, so "[::0]:80" and "[::]:80" count as the same address.
    return BindAddr(str(ip), port, _family(ip))


def parse_backend_address(text: str, path: str = "address") -> tuple[str, int, int]:
    """A backend address ("10.0.0.1:80", "[::1]:80", "name:80") -> (numeric host,
    port, family); host names are resolved now. ConfigError when it is not one."""
    host, port, bracketed = _split_host_port(text, path)
    if bracketed or _IPV4_LIKE.fullmatch(host):
        ip = _parse_ip(host, path, bracketed)
        if ip.is_unspecified:
            raise ConfigError(path, f"{host} is the unspecified address, not one a backend can have")
        return str(ip), port, _family(ip)
    if not HOSTNAME.fullmatch(host):
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


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?")
_SIZE_UNITS = {None: 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30}


def parse_size(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(path, f"expected a size like \"512MiB\" or 0, got {_type_name(value)}")
    m = _SIZE.fullmatch(str(value).strip())
    if not m:
        raise ConfigError(path, f"invalid size {value!r} (use e.g. \"512MiB\", \"2GiB\", or 0 for off)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def check_name(name: str, path: str, what: str, max_bytes: int = MAX_NAME_BYTES) -> None:
    if not name:
        raise ConfigError(path, f"{what} must not be empty")
    if len(name.encode("utf-8")) > max_bytes:
        raise ConfigError(path, f"{what} {name!r} is longer than {max_bytes} bytes")
    if not name.isprintable():
        raise ConfigError(path, f"{what} {name!r} contains unprintable characters")


def check_url_path(value: str, path: str) -> str:
    if not value.startswith("/"):
        raise ConfigError(path, f"{value!r} must start with '/'")
    # The value goes on an HTTP request line or is compared with one.
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(path, f"{value!r} contains spaces or control characters")
    return value


def check_absolute_path(value: str, path: str) -> str:
    if not value:
        raise ConfigError(path, "must not be empty")
    if not os.path.isabs(value):
        raise ConfigError(path, f"{value!r} is not an absolute path")
    if "\0" in value:
        raise ConfigError(path, "contains a NUL character")
    return value
