"""Header rules (the request_headers and response_headers tables of listeners
and routes) and the checks of header names and field values."""

from __future__ import annotations

import dataclasses

from lb.config.values import TCHAR_SYMBOLS, TOKEN, ConfigError, Table, join, wrong_type

HEADER_RULE_KEYS = ("set", "add", "remove")
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


@dataclasses.dataclass(frozen=True)
class HeaderRules:
    """Rewrites of one message's header fields, each list in file order.

    A name appears in at most one of the three lists (case-insensitively), so
    the order in which they are applied does not change the result.
    """

    set: tuple[tuple[str, str], ...] = ()  # (name as written, value): replaces every field of that name
    add: tuple[tuple[str, str], ...] = ()  # (name as written, value): appended even if present
    remove: tuple[str, ...] = ()  # lower case


def check_header_name(name: str, path: str) -> str:
    if not TOKEN.fullmatch(name):
        raise ConfigError(path, f"invalid header name {name!r} (a token: letters, digits and {TCHAR_SYMBOLS})")
    return name


def check_field_value(value: str, path: str) -> str:
    for c in value:
        if ord(c) < 0x20 or ord(c) == 0x7F:
            # CR or LF would end the field early and let the rest pass as another field.
            raise ConfigError(path, f"contains the control character {c!r} (no CR, LF, NUL, TAB or other control)")
    if value != value.strip(" "):
        # A recipient strips them, so the value would never be seen as written.
        raise ConfigError(path, f"{value!r} starts or ends with a space")
    return value


def check_rewritable(name: str, path: str) -> None:
    if name.lower() in MANAGED_HEADERS:
        raise ConfigError(
            path,
            f"{name!r} may not be set, added or removed: lb manages the hop-by-hop fields, "
            "Content-Length and Host itself",
        )


def parse_header_rules(parent: Table, key: str) -> HeaderRules:
    """The request_headers or response_headers table at ``key``, lists in file order."""
    t = parent.table(key, HEADER_RULE_KEYS)
    seen: dict[str, str] = {}  # lower-case name -> path of its entry

    def claim(name: str, path: str) -> None:
        check_header_name(name, path)
        check_rewritable(name, path)
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
            path = join(t.path_of(key), name)
            claim(name, path)
            if not isinstance(value, str):
                raise wrong_type(path, value, "a string")
            pairs[key].append((name, check_field_value(value, path)))
    names = t.get("remove", [], "a list of header names", lambda v: isinstance(v, list))
    remove = []
    for i, name in enumerate(names):
        path = f"{t.path_of('remove')}[{i}]"
        if not isinstance(name, str):
            raise wrong_type(path, name, "a string")
        claim(name, path)
        remove.append(name.lower())
    return HeaderRules(set=tuple(pairs["set"]), add=tuple(pairs["add"]), remove=tuple(remove))
