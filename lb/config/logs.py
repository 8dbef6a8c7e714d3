"""The [logs.NAME] sections: access logs (docs/observability.md).

Each names a format (combined, json, or a custom "{field} {field}" line), a
target (stdout, a file, syslog over UDP or a UNIX socket) and a sample rate.
Every listener uses every log unless it names its own (listeners.NAME.logs).
The field names are the compiled formatter's (lb._fastpath.LOG_FIELDS); they
are listed here too, so `lb check` works without a built data plane.
"""

from __future__ import annotations

import dataclasses
import os
import re

from lb.config.values import ConfigError, Context, Table, check_absolute_path, check_name, did_you_mean
from lb.config.values import parse_backend_address

NAMED = True
KEYS = ("format", "target", "sample", "facility")

# The fields a line may show; json lines show them all, by these names.
FIELDS = (
    "time", "time_local", "client", "client_port", "listener", "route", "pool", "backend", "mode", "method",
    "host", "path", "protocol", "status", "bytes_in", "bytes_out", "duration_ms", "request_ms", "connect_ms",
    "response_ms", "termination", "request_id", "tls_version", "tls_cipher", "sni", "user_agent", "referer",
    "tries", "worker",
)
# Apache's and nginx's "combined" (bytes_out counts the whole response, head included)
COMBINED = '{client} - - [{time_local}] "{method} {path} {protocol}" {status} {bytes_out_clf} "{referer}" "{user_agent}"'
FORMATS = ("combined", "json")
# RFC 5424 facilities lb may log as
FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "local0": 16, "local1": 17, "local2": 18,
              "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23}
TARGET_HINT = 'use "stdout", "file:/path", "syslog:udp:HOST:PORT" or "syslog:unix:/dev/log"'
_FIELD = re.compile(r"\{([^{}]*)\}")


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str  # stdout | file | syslog_udp | syslog_unix
    path: str = ""  # file, syslog_unix
    host: str = ""  # syslog_udp
    port: int = 0
    family: int = 0

    def __str__(self) -> str:
        if self.kind == "stdout":
            return "stdout"
        if self.kind == "file":
            return f"file:{self.path}"
        if self.kind == "syslog_unix":
            return f"syslog:unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"syslog:udp:{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class LogSettings:
    name: str
    format: str  # "combined", "json", or the custom line as written
    ops: tuple[tuple[str, str | None], ...]  # the line as (literal, field) pieces, the last field None
    json: bool
    target: Target
    sample: float
    facility: int


def parse(tables: list[tuple[str, Table]], ctx: Context) -> dict[str, LogSettings]:
    return {name: _parse_log(name, t) for name, t in tables}


def _parse_log(name: str, t: Table) -> LogSettings:
    check_name(name, t.path, "log name")
    fmt = t.string("format", "combined")
    if fmt == "json":
        ops = json_ops()
    else:
        ops = custom_ops(COMBINED if fmt == "combined" else fmt, t.path_of("format"))
    sample = t.number("sample", 1.0)
    if not 0.0 <= sample <= 1.0:
        raise ConfigError(t.path_of("sample"), f"{sample:g} is out of range (0.0..1.0; errors are always logged)")
    facility = t.choice("facility", "local0", tuple(FACILITIES))
    return LogSettings(name=name, format=fmt, ops=ops, json=fmt == "json",
                       target=parse_target(t.string("target", "stdout"), t.path_of("target")),
                       sample=sample, facility=FACILITIES[facility])


def json_ops() -> tuple[tuple[str, str | None], ...]:
    ops = [("{" if i == 0 else ",") + f'"{field}":' for i, field in enumerate(FIELDS) if field != "time_local"]
    names = [field for field in FIELDS if field != "time_local"]
    return (*zip(ops, names), ("}", None))


def custom_ops(line: str, path: str) -> tuple[tuple[str, str | None], ...]:
    """A "{field} {field}" line as (literal, field) pieces; "{{" and "}}" are
    braces. An unknown field is an error naming it."""
    if "\n" in line or "\r" in line:
        raise ConfigError(path, "a log line cannot contain a line break")
    ops = []
    pos = 0
    lit = ""
    work = line.replace("{{", "\0").replace("}}", "\1")
    for m in _FIELD.finditer(work):
        lit += work[pos:m.start()]
        if "{" in lit or "}" in lit:
            raise ConfigError(path, 'unbalanced brace (write "{{" or "}}" for a brace of its own)')
        field = m.group(1)
        if field not in FIELDS and field != "bytes_out_clf":
            hint = did_you_mean(field, FIELDS)
            raise ConfigError(path, f"unknown field {{{field}}}" + (f" ({hint})" if hint else
                                                                     f" (fields: {', '.join(FIELDS)})"))
        ops.append((_unescape(lit), field))
        lit = ""
        pos = m.end()
    rest = work[pos:]
    if "{" in rest or "}" in rest:
        raise ConfigError(path, 'unbalanced brace (write "{{" or "}}" for a brace of its own)')
    ops.append((_unescape(rest), None))
    if len(ops) == 1:
        raise ConfigError(path, f'no field in the line (a format is "combined", "json" or e.g. '
                                f'"{{client}} {{method}} {{path}} {{status}}")')
    return tuple(ops)


def _unescape(s: str) -> str:
    return s.replace("\0", "{").replace("\1", "}")


def parse_target(text: str, path: str) -> Target:
    if text == "stdout":
        return Target("stdout")
    if text.startswith("file:"):
        file = check_absolute_path(text[5:], path)
        directory = os.path.dirname(file)
        if not os.path.isdir(directory):
            raise ConfigError(path, f"directory {directory!r} does not exist")
        return Target("file", path=file)
    if text.startswith("syslog:unix:"):
        return Target("syslog_unix", path=check_absolute_path(text[12:], path))
    if text.startswith("syslog:udp:"):
        host, port, family = parse_backend_address(text[11:], path)
        return Target("syslog_udp", host=host, port=port, family=family)
    raise ConfigError(path, f"invalid target {text!r} ({TARGET_HINT})")


def listener_logs(t: Table, mode: str, logs: dict[str, LogSettings]) -> tuple[LogSettings, ...]:
    """A listener's logs: what its `logs` (or `log`) names, else every one.
    `logs = []` or `log = false` turns access logging off for it."""
    if t.has("logs") and t.has("log"):
        raise ConfigError(t.path_of("log"), "and logs exclude each other (log names one, logs a list)")
    if t.has("log"):
        value = t.get("log", None, "a log name or false", lambda v: isinstance(v, str) or v is False)
        names = [] if value is False else [(value, t.path_of("log"))]
    elif t.has("logs"):
        value = t.get("logs", [], "a list of log names", lambda v: isinstance(v, list))
        names = []
        for i, item in enumerate(value):
            item_path = f"{t.path_of('logs')}[{i}]"
            if not isinstance(item, str):
                raise ConfigError(item_path, "expected a log name (a string)")
            names.append((item, item_path))
    else:
        return tuple(logs.values())
    out = []
    for name, path in names:
        if name not in logs:
            hint = did_you_mean(name, list(logs))
            raise ConfigError(path, f"unknown log {name!r}" + (f" ({hint})" if hint else
                                                                " (define it as a [logs.NAME] table)"))
        out.append(logs[name])
    return tuple(out)
