"""The [auth.NAME] sections: how the requests of a listener or a route prove
who they are (their `auth` key, read here too: parse_auth_name). This build
has API keys (type = "api_key"): the SHA-256 of each key, with its identity,
in a keys file that `lb key add|revoke` also writes; and HTTP Basic (type =
"basic") against an htpasswd file of bcrypt or SHA-2 crypt hashes; and JWT
(type = "jwt") against the keys of a JWKS file (lb/config/jwks.py).

The keys file: one key a line, `<sha256 hex> <identity>`, `#` comments.
The keys themselves are never stored: a client's key is hashed per request
and looked up (lb/fastpath/auth.pxi)."""

from __future__ import annotations

import dataclasses
import re

from lb.config.headers import check_header_name
from lb.config.jwks import JwtKey, file_stamp, read_jwks
from lb.config.values import ConfigError, Context, Table, check_absolute_path, did_you_mean, string_list

NAMED = True
# type and the api_key keys, then the keys of the types to come (contract spellings)
KEYS = ("type", "keys_file", "header", "query", "identity_header", "strip", "htpasswd", "cache_ttl", "cache_size",
        "jwks", "issuer", "audience", "leeway", "claims_to_headers", "cookie", "required_claims", "max_token_size")
TYPES = ("api_key", "basic", "jwt")
TYPE_KEYS = {"api_key": ("keys_file", "header", "query", "identity_header", "strip"),
             "basic": ("htpasswd", "identity_header", "strip", "cache_ttl", "cache_size"),
             "jwt": ("jwks", "issuer", "audience", "leeway", "claims_to_headers", "cookie", "required_claims",
                     "max_token_size", "cache_size")}
DEFAULT_IDENTITY_HEADER = {"api_key": "X-Api-Identity", "basic": "X-Auth-User"}
# htpasswd hashes lb checks (libxcrypt): bcrypt and SHA-2 crypt
HASH_PREFIXES = ("$2y$", "$2b$", "$2a$", "$5$", "$6$")
USER = re.compile(r"[^:\s]{1,63}")
MAX_KEYS = 65536  # AUTH_MAX_KEYS of the data plane
IDENTITY = re.compile(r"[A-Za-z0-9_.@:+=-]{1,63}")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_QUERY_NAME = re.compile(r"[A-Za-z0-9_.~-]+")
_LINE = re.compile(r"([0-9a-fA-F]{64})\s+(\S+)")
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_CLAIM = re.compile(r"[\x21-\x7e]{1,64}")
JWT_MAX_LIST = 16  # audiences, required claims, claims_to_headers (the data plane's JWT_MAX_LIST)


@dataclasses.dataclass(frozen=True)
class Auth:
    name: str
    type: str
    keys_file: str
    header: str = "X-Api-Key"  # where the key comes, as written
    query: str = ""  # or this query parameter ("" = the header)
    identity_header: str = "X-Api-Identity"
    strip: bool = True  # remove the key (its header, its query parameter; basic: Authorization) before the backend
    # (sha256 bytes, identity) of each key in the file, in file order
    keys: tuple[tuple[bytes, str], ...] = dataclasses.field(default=(), compare=False, repr=False)
    htpasswd: str = ""  # basic: the users' file
    cache_ttl: float = 60.0  # basic: how long a success is remembered
    cache_size: int = 4096  # basic: successes remembered per worker
    # basic: (user, hash) of each user of the file
    users: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False, repr=False)
    jwks: str = ""  # jwt: the keys' file
    jwt_keys: tuple[JwtKey, ...] = dataclasses.field(default=(), compare=False, repr=False)
    jwks_stamp: object = dataclasses.field(default=None, compare=False, repr=False)  # the file when read
    issuer: str = ""  # jwt: the iss a token must have ("" = any)
    audience: tuple[str, ...] = ()  # jwt: one of these must be in its aud (none: a token with an aud is refused)
    leeway: float = 60.0  # jwt: clock skew allowed on exp, nbf and iat
    claims_to_headers: tuple[tuple[str, str], ...] = ()  # jwt: (claim, header) forwarded to the backend
    cookie: str = ""  # jwt: a cookie that may carry the token (after Authorization: Bearer)
    required_claims: tuple[str, ...] = ("exp",)  # jwt: claims a token must have
    max_token_size: int = 8192  # jwt: bytes of a token; more is refused


def parse(tables: list[tuple[str, Table]], ctx: Context) -> dict[str, Auth]:
    return {name: _parse_auth(name, t) for name, t in tables}


def _parse_auth(name: str, t: Table) -> Auth:
    if not NAME.fullmatch(name):
        raise ConfigError(t.path, f"auth name {name!r}: letters, digits, '_', '.' and '-', up to 63")
    kind = t.string("type")
    if kind not in TYPES:
        raise ConfigError(t.path_of("type"), f"unknown type {kind!r} (one of {', '.join(TYPES)})")
    for key in KEYS:
        if t.has(key) and key != "type" and key not in TYPE_KEYS[kind]:
            raise ConfigError(t.path_of(key), f'not a key of type = "{kind}"')
    if kind == "basic":
        return _parse_basic(name, t)
    if kind == "jwt":
        return _parse_jwt(name, t)
    keys_file = t.string("keys_file")
    check_absolute_path(keys_file, t.path_of("keys_file"))
    header = t.string("header", "X-Api-Key")
    check_header_name(header, t.path_of("header"))
    query = t.string("query", "")
    if query and not _QUERY_NAME.fullmatch(query):
        raise ConfigError(t.path_of("query"), f"invalid query parameter name {query!r}")
    if query and t.has("header"):
        raise ConfigError(t.path_of("query"), "and header exclude each other: the key comes in one place")
    identity_header = t.string("identity_header", DEFAULT_IDENTITY_HEADER["api_key"])
    check_header_name(identity_header, t.path_of("identity_header"))
    strip = t.boolean("strip", True)
    return Auth(name=name, type=kind, keys_file=keys_file, header=header, query=query,
                identity_header=identity_header, strip=strip,
                keys=read_keys(keys_file, t.path_of("keys_file")))


def _parse_basic(name: str, t: Table) -> Auth:
    htpasswd = t.string("htpasswd")
    check_absolute_path(htpasswd, t.path_of("htpasswd"))
    identity_header = t.string("identity_header", DEFAULT_IDENTITY_HEADER["basic"])
    check_header_name(identity_header, t.path_of("identity_header"))
    return Auth(name=name, type="basic", keys_file="", header="Authorization", identity_header=identity_header,
                strip=t.boolean("strip", True), htpasswd=htpasswd,
                cache_ttl=t.duration("cache_ttl", "60s"), cache_size=t.integer("cache_size", 4096, 0, 1 << 20),
                users=read_htpasswd(htpasswd, t.path_of("htpasswd")))


def _parse_jwt(name: str, t: Table) -> Auth:
    jwks = t.string("jwks")
    check_absolute_path(jwks, t.path_of("jwks"))
    raw = t.get("audience", [], "a string or a list of strings", lambda v: isinstance(v, (str, list)))
    if isinstance(raw, str):
        audience: tuple[str, ...] = (raw,) if raw else ()
    else:
        audience = tuple(a for a, _ in string_list(t, "audience", []))
    required = tuple(string_list(t, "required_claims", ["exp"]))
    for claim, path in required:
        if not _CLAIM.fullmatch(claim):
            raise ConfigError(path, f"invalid claim name {claim!r}")
    headers = t.get("claims_to_headers", {}, "a table of claim = header name", lambda v: isinstance(v, dict))
    claims = []
    for claim, header in headers.items():
        path = f"{t.path_of('claims_to_headers')}.{claim}"
        if not _CLAIM.fullmatch(claim):
            raise ConfigError(path, f"invalid claim name {claim!r}")
        if not isinstance(header, str):
            raise ConfigError(path, "must be a header name (a string)")
        check_header_name(header, path)
        if header.lower() in ("authorization", "host", "content-length", "transfer-encoding", "connection",
                              "cookie"):
            raise ConfigError(path, f"{header!r} is not a header a claim may replace")
        claims.append((claim, header))
    lowers = [h.lower() for _, h in claims]
    if len(set(lowers)) != len(lowers):
        raise ConfigError(t.path_of("claims_to_headers"), "two claims into the same header")
    for key, items in (("audience", audience), ("required_claims", required), ("claims_to_headers", claims)):
        if len(items) > JWT_MAX_LIST:
            raise ConfigError(t.path_of(key), f"at most {JWT_MAX_LIST}")
    if any(len(a.encode()) > 255 for a in audience):
        raise ConfigError(t.path_of("audience"), "an audience of more than 255 bytes")
    issuer = t.string("issuer", "")
    if len(issuer.encode()) > 255:
        raise ConfigError(t.path_of("issuer"), "more than 255 bytes")
    cookie = t.string("cookie", "")
    if cookie and not _COOKIE_NAME.fullmatch(cookie):
        raise ConfigError(t.path_of("cookie"), f"invalid cookie name {cookie!r}")
    stamp = file_stamp(jwks)
    return Auth(name=name, type="jwt", keys_file="", header="Authorization", identity_header="", strip=False,
                jwks=jwks, jwt_keys=read_jwks(jwks, t.path_of("jwks")), jwks_stamp=stamp, issuer=issuer,
                audience=audience,
                leeway=t.duration("leeway", "60s"), claims_to_headers=tuple(claims), cookie=cookie,
                required_claims=tuple(c for c, _ in required),
                max_token_size=t.integer("max_token_size", 8192, 256, 65536),
                cache_size=t.integer("cache_size", 4096, 0, 1 << 20))


def read_htpasswd(path: str, key_path: str) -> tuple[tuple[str, str], ...]:
    """The users of an htpasswd file: "user:hash" lines, bcrypt or SHA-2
    crypt hashes (those lb checks off the event loop); an error names the
    file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(key_path, f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        user, sep, hashed = text.partition(":")
        if not sep or not USER.fullmatch(user):
            raise ConfigError(key_path, f"{path} line {number}: not 'user:hash'")
        if not hashed.startswith(HASH_PREFIXES):
            raise ConfigError(key_path, f"{path} line {number}: user {user!r}: not a bcrypt ($2y$, $2b$) or SHA-2 "
                                        f"crypt ($5$, $6$) hash (htpasswd -B makes bcrypt)")
        if user in users:
            raise ConfigError(key_path, f"{path} line {number}: user {user!r} again")
        users[user] = hashed
    return tuple(users.items())


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
