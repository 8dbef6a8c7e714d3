"""The [auth.NAME] sections: how the requests of a listener or a route prove
who they are (their `auth` key, read here too: parse_auth_name). This build
has API keys (type = "api_key"): the SHA-256 of each key, with its identity,
in a keys file that `lb key add|revoke` also writes. JWT and HTTP Basic
(DESIGN.md 4b) are refused by name until they come.

The keys file: one key a line, `<sha256 hex> <identity>`, `#` comments.
The keys themselves are never stored: a client's key is hashed per request
and looked up (lb/fastpath/auth.pxi)."""

from __future__ import annotations

import dataclasses
import re

from lb.config.headers import check_header_name
from lb.config.values import ConfigError, Context, Table, check_absolute_path, did_you_mean

NAMED = True
# type and the api_key keys, then the keys of the types to come (contract spellings)
KEYS = ("type", "keys_file", "header", "query", "identity_header", "strip",
        "jwks", "issuer", "audience", "leeway", "claims_to_headers", "htpasswd")
TYPES = ("api_key",)
LATER_TYPES = ("jwt", "basic")
API_KEY_KEYS = ("keys_file", "header", "query", "identity_header", "strip")
MAX_KEYS = 65536  # AUTH_MAX_KEYS of the data plane
IDENTITY = re.compile(r"[A-Za-z0-9_.@:+=-]{1,63}")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_QUERY_NAME = re.compile(r"[A-Za-z0-9_.~-]+")
_LINE = re.compile(r"([0-9a-fA-F]{64})\s+(\S+)")


@dataclasses.dataclass(frozen=True)
class Auth:
    name: str
    type: str
    keys_file: str
    header: str = "X-Api-Key"  # where the key comes, as written
    query: str = ""  # or this query parameter ("" = the header)
    identity_header: str = "X-Api-Identity"
    strip: bool = True  # remove the key's header before the backend
    # (sha256 bytes, identity) of each key in the file, in file order
    keys: tuple[tuple[bytes, str], ...] = dataclasses.field(default=(), compare=False, repr=False)


def parse(tables: list[tuple[str, Table]], ctx: Context) -> dict[str, Auth]:
    return {name: _parse_auth(name, t) for name, t in tables}


def _parse_auth(name: str, t: Table) -> Auth:
    if not NAME.fullmatch(name):
        raise ConfigError(t.path, f"auth name {name!r}: letters, digits, '_', '.' and '-', up to 63")
    kind = t.string("type")
    if kind in LATER_TYPES:
        raise ConfigError(t.path_of("type"), f"{kind!r} is not in this build yet; use \"api_key\"")
    if kind not in TYPES:
        raise ConfigError(t.path_of("type"), f"unknown type {kind!r} (one of {', '.join(TYPES + LATER_TYPES)})")
    for key in KEYS:
        if t.has(key) and key != "type" and key not in API_KEY_KEYS:
            raise ConfigError(t.path_of(key), f'not a key of type = "{kind}"')
    keys_file = t.string("keys_file")
    check_absolute_path(keys_file, t.path_of("keys_file"))
    header = t.string("header", "X-Api-Key")
    check_header_name(header, t.path_of("header"))
    query = t.string("query", "")
    if query and not _QUERY_NAME.fullmatch(query):
        raise ConfigError(t.path_of("query"), f"invalid query parameter name {query!r}")
    if query and t.has("header"):
        raise ConfigError(t.path_of("query"), "and header exclude each other: the key comes in one place")
    identity_header = t.string("identity_header", "X-Api-Identity")
    check_header_name(identity_header, t.path_of("identity_header"))
    strip = t.boolean("strip", True)
    if query and t.has("strip") and strip:
        raise ConfigError(t.path_of("strip"), "a key in the query is not removed from the target (it reaches "
                                              "the backend); set strip = false to say so")
    return Auth(name=name, type=kind, keys_file=keys_file, header=header, query=query,
                identity_header=identity_header, strip=strip and not query,
                keys=read_keys(keys_file, t.path_of("keys_file")))


def read_keys(path: str, key_path: str = "") -> tuple[tuple[bytes, str], ...]:
    """The keys of a keys file; an error names the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return ()  # no key yet: `lb key add` creates it
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(key_path, f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return parse_keys(lines, path, key_path)


def parse_keys(lines: list[str], path: str, key_path: str = "") -> tuple[tuple[bytes, str], ...]:
    keys: dict[bytes, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        m = _LINE.fullmatch(text)
        if not m:
            raise ConfigError(key_path, f"{path} line {number}: not '<sha256 hex> <identity>'")
        if not IDENTITY.fullmatch(m[2]):
            raise ConfigError(key_path, f"{path} line {number}: identity {m[2]!r}: letters, digits and "
                                        f"_.@:+=- up to 63")
        digest = bytes.fromhex(m[1])
        if digest in keys:
            raise ConfigError(key_path, f"{path} line {number}: the same key as {keys[digest]!r}")
        keys[digest] = m[2]
    if len(keys) > MAX_KEYS:
        raise ConfigError(key_path, f"{path}: more than {MAX_KEYS} keys")
    return tuple(keys.items())


def format_keys(keys) -> str:
    return "".join(f"{digest.hex()} {identity}\n" for digest, identity in keys)


def parse_auth_name(t: Table, auths: dict[str, Auth]) -> str:
    """The `auth` key of a listener or route: an [auth.NAME], or ""."""
    name = t.string("auth", "")
    if name and name not in auths:
        hint = did_you_mean(name, list(auths))
        raise ConfigError(t.path_of("auth"), f"unknown auth {name!r}" + (f" ({hint})" if hint else
                                                                          " (define it in an [auth.NAME] table)"))
    return name
