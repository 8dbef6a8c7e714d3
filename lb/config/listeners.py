"""The [listeners.NAME] sections: a listener's addresses, mode and pool, its
http settings, and its routes ([[listeners.NAME.routes]]) to other pools."""

from __future__ import annotations

import dataclasses

from lb.config import tls as tls_section
from lb.config.acls import ACCESS_KEYS, Access, Acl, parse_access
from lb.config.auth import Auth, parse_auth_name
from lb.config.caches import parse_cache_name
from lb.config.limits import LIMITS_KEY, Limit, parse_limit_names
from lb.config.headers import HeaderRules, check_field_value, check_header_name, parse_header_rules
from lb.config.global_ import MAX_CONNECTIONS
from lb.config.logs import LogSettings, listener_logs
from lb.config.pools import Pool
from lb.config import splits as splits_section
from lb.config.splits import Split
from lb.config import mirror as mirror_section
from lb.config.mirror import Mirror
from lb.config.tls import TlsSettings
from lb.config.values import (
    HOSTNAME,
    MIN_TIMEOUT,
    REQUIRED,
    TOKEN,
    BindAddr,
    ConfigError,
    Context,
    Table,
    check_name,
    check_url_path,
    did_you_mean,
    parse_bind,
    parse_size,
    string_list,
    wrong_type,
)

MODES = ("tcp", "http")
FORWARDED_MODES = ("x-forwarded", "forwarded", "both", "none")
# Ranges of the http listener limits, as the data plane's contract sets them.
MIN_HEADER_SIZE = 1024
MAX_HEADER_SIZE = 32768
MAX_TARGET = 65536
MAX_HEADER_COUNT = 256

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
    "max_body_size",
    "request_id",
    "http2",
    "auth",
    "cache",
    *splits_section.KEYS,
    *mirror_section.KEYS,
)
HTTP2_KEYS = ("h2c", "max_concurrent_streams", "initial_window_size", "connection_window_size", "max_frame_size",
              "max_glitches")
NAMED = True
FORWARD_MODES = ("userspace", "sockmap")
KEYS = ("bind", "mode", "pool", "accept_proxy", "idle_timeout", "backlog", "max_connections", "tls", "tls_passthrough",
        "forward",
        "logs", "log", *ACCESS_KEYS, LIMITS_KEY, *HTTP_LISTENER_KEYS)
DEFAULT_REQUEST_ID = "X-Request-Id"
# What a route of a tls_passthrough listener may say: it matches the server name
# of the ClientHello, nothing of the request (which stays encrypted).
PASSTHROUGH_ROUTE_KEYS = ("name", "host", "pool")
ROUTE_KEYS = (
    "name",
    "host",
    "path_prefix",
    "path",
    "methods",
    "header",
    "header_value",
    "pool",
    "request_headers",
    "response_headers",
    *ACCESS_KEYS,
    "max_body_size",
    LIMITS_KEY,
    "auth",
    "cache",
    *splits_section.KEYS,
    *mirror_section.KEYS,
)
ROUTE_MATCHERS = ("host", "path_prefix", "path", "methods", "header")


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
    access: Access | None = None  # allow/deny by ACL: 403 for a refused client
    name: str = ""  # as logs and status show it: `name`, else "routes[INDEX]"
    max_body_size: int | None = None  # bytes; 0: no limit; None: the listener's
    limits: tuple[str, ...] = ()  # [limits.NAME] applied to its requests, after the listener's
    auth: str = ""  # [auth.NAME] its requests must pass (instead of the listener's); "" = the listener's
    cache: str = ""  # [caches.NAME] its GET/HEAD requests are served from (instead of the listener's); "" = the listener's
    split: Split | None = None  # weighted variants instead of one pool (pool: the first variant's)
    mirror: Mirror | None = None  # a share of its requests copied to a shadow pool; None: the listener's


@dataclasses.dataclass(frozen=True)
class Http2Settings:
    """[listeners.NAME.http2]: HTTP/2 to clients. TLS listeners speak it when
    their tls.alpn offers "h2"; plain ones when h2c is on (prior knowledge)."""

    h2c: bool = False
    max_concurrent_streams: int = 100
    initial_window_size: int = 65535  # bytes of a request body in flight per stream
    connection_window_size: int = 1048576  # ... and per connection
    max_frame_size: int = 16384
    max_glitches: int = 1000  # frames that do no work (floods, resets of unanswered streams) before GOAWAY


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
    max_body_size: int = 0  # bytes of a request body; 0: no limit
    http2: Http2Settings = Http2Settings()


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
    tls: TlsSettings | None = None  # [listeners.NAME.tls]; None: plain sockets
    tls_passthrough: bool = False  # tcp: the ClientHello's server name picks the pool (routes' host)
    access: Access | None = None  # allow/deny by ACL at accept, before a byte is read
    logs: tuple[LogSettings, ...] = ()  # the access logs its exchanges and connections go to
    request_id: str = ""  # http: the request-id header's name; "" = off
    limits: tuple[str, ...] = ()  # [limits.NAME]: tcp, per connection at accept; http, per request
    auth: str = ""  # http: [auth.NAME] every request must pass (a route may name its own); "" = none
    max_connections: int = 0  # client connections of this listener open at once, all workers; 0 = no limit
    forward: str = "userspace"  # tcp: "sockmap" = established pairs' bytes moved by the kernel (BPF)
    cache: str = ""  # http: [caches.NAME] its requests are served from (a route may name its own); "" = none
    split: Split | None = None  # http: the variants of requests no route takes (pool: the first variant's)
    mirror: Mirror | None = None  # http: a share of its requests (but those of routes with their own) copied


def parse(tables: list[tuple[str, Table]], ctx: Context) -> dict[str, Listener]:
    pools = ctx.sections["pools"]
    acls = ctx.sections["acls"]
    limits = ctx.sections.get("limits", {})
    auths = ctx.sections.get("auth", {})
    caches = ctx.sections.get("caches", {})
    logs = ctx.sections.get("logs", {})
    bound: dict[BindAddr, str] = {}
    rules = [0]  # numbers the ACL decision counters, in file order
    listeners = {name: _parse_listener(name, t, pools, acls, bound, ctx.warnings, rules, logs, limits, auths,
                                       caches)
                 for name, t in tables}
    if not listeners:
        raise ConfigError("listeners", "at least one listener is required")
    return splits_section.name_splits(listeners)


def _parse_bind_list(t: Table) -> list[tuple[str, str]]:
    """The bind addresses with the key path of each; one string is accepted for a list of one."""
    value = t.get("bind", REQUIRED, "a list of addresses", lambda v: isinstance(v, (str, list)))
    if isinstance(value, str):
        return [(value, t.path_of("bind"))]
    if not value:
        raise ConfigError(t.path_of("bind"), "at least one address is required")
    return string_list(t, "bind", REQUIRED, "a list of addresses")


def _check_pool_ref(pool: str, path: str, pools: dict[str, Pool]) -> str:
    if pool not in pools:
        hint = did_you_mean(pool, list(pools))
        raise ConfigError(path, f"unknown pool {pool!r}" + (f" ({hint})" if hint else ""))
    return pool


def _parse_route_host(value: str, path: str) -> str:
    host = value.lower()  # host names compare without case
    name = host[2:] if host.startswith("*.") else host
    if not HOSTNAME.fullmatch(name):
        raise ConfigError(path, f'invalid host {value!r} (use an exact name or "*.example.com")')
    return host


def _parse_route_path(value: str, path: str) -> str:
    check_url_path(value, path)
    # Routes compare the path alone: the query and a fragment never reach it.
    for c in "?#":
        if c in value:
            raise ConfigError(path, f"{value!r} contains {c!r}; routes match the path, before any query")
    return value


def _parse_methods(t: Table, warnings: list[str]) -> tuple[str, ...]:
    value = t.get("methods", [], "a list of methods", lambda v: isinstance(v, list))
    if not value:
        raise ConfigError(t.path_of("methods"), 'at least one method is required (e.g. ["GET", "HEAD"])')
    methods: dict[str, int] = {}
    for i, method in enumerate(value):
        path = f"{t.path_of('methods')}[{i}]"
        if not isinstance(method, str):
            raise wrong_type(path, method, "a string")
        if not TOKEN.fullmatch(method):
            raise ConfigError(path, f"invalid method {method!r} (a token, e.g. \"GET\")")
        if method in methods:
            raise ConfigError(path, f"duplicate method {method!r} (also methods[{methods[method]}])")
        if method != method.upper():
            # Methods compare case-sensitively, and clients send them in upper case.
            warnings.append(f"{path}: {method!r} matches only that exact case, not {method.upper()!r}")
        methods[method] = i
    return tuple(methods)


def _parse_passthrough_route(t: Table, pools: dict[str, Pool]) -> Route:
    for key in ROUTE_KEYS:
        if t.has(key) and key not in PASSTHROUGH_ROUTE_KEYS:
            raise ConfigError(t.path_of(key), "a tls_passthrough route matches the ClientHello's server name: "
                                              "only host and pool apply")
    return Route(host=_parse_route_host(t.string("host"), t.path_of("host")), path_prefix=None,
                 pool=_check_pool_ref(t.string("pool"), t.path_of("pool"), pools))


def _parse_route(t: Table, pools: dict[str, Pool], warnings: list[str], acls: dict[str, Acl],
                 rules: list[int], limits: dict[str, Limit], auths: dict[str, Auth], caches: dict) -> Route:
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
    split = splits_section.parse(t, pools, acls, warnings)
    return Route(
        host=None if host is None else _parse_route_host(host, t.path_of("host")),
        path_prefix=None if path_prefix is None else _parse_route_path(path_prefix, t.path_of("path_prefix")),
        path=None if path is None else _parse_route_path(path, t.path_of("path")),
        methods=_parse_methods(t, warnings) if t.has("methods") else (),
        header=None if header is None else check_header_name(header, t.path_of("header")).lower(),
        header_value=None if header_value is None else check_field_value(header_value, t.path_of("header_value")),
        pool=splits_section.pool_of(t, split, pools) if split is not None else _check_pool_ref(t.string("pool"), t.path_of("pool"), pools),
        request_headers=parse_header_rules(t, "request_headers"),
        response_headers=parse_header_rules(t, "response_headers"),
        access=parse_access(t, acls, rules),
        max_body_size=parse_body_size(t) if t.has("max_body_size") else None,
        limits=parse_limit_names(t, limits, "http"),
        auth=parse_auth_name(t, auths),
        cache=parse_cache_name(t, caches),
        split=split,
        mirror=mirror_section.parse(t, pools),
    )


def _parse_http_settings(t: Table) -> HttpSettings:
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
        request_headers=parse_header_rules(t, "request_headers"),
        response_headers=parse_header_rules(t, "response_headers"),
        max_body_size=parse_body_size(t),
        http2=_parse_http2(t.table("http2", HTTP2_KEYS)) if t.has("http2") else Http2Settings(),
    )


def _parse_http2(t: Table) -> Http2Settings:
    # the bounds are RFC 9113's (section 6.5.2), the stream count a sane cap
    return Http2Settings(
        h2c=t.boolean("h2c", False),
        max_concurrent_streams=t.integer("max_concurrent_streams", 100, 1, 10000),
        initial_window_size=t.integer("initial_window_size", 65535, 1024, 2**31 - 1),
        connection_window_size=t.integer("connection_window_size", 1048576, 65535, 2**31 - 1),
        max_frame_size=t.integer("max_frame_size", 16384, 16384, 2**24 - 1),
        max_glitches=t.integer("max_glitches", 1000, 10, 1000000),
    )


def parse_body_size(t: Table) -> int:
    """max_body_size: a size ("10MiB", 1048576) or 0 for none."""
    value = t.get("max_body_size", 0, "a size", lambda v: isinstance(v, (int, str)) and not isinstance(v, bool))
    if isinstance(value, int) and value < 0:
        raise ConfigError(t.path_of("max_body_size"), f"{value} is negative (0 means no limit)")
    return parse_size(value, t.path_of("max_body_size"))


def _parse_listener(
    name: str, t: Table, pools: dict[str, Pool], acls: dict[str, Acl], bound: dict[BindAddr, str],
    warnings: list[str], rules: list[int], logs: dict[str, LogSettings], limits: dict[str, Limit],
    auths: dict[str, Auth], caches: dict,
) -> Listener:
    """One [listeners.NAME] table; ``bound`` maps addresses taken so far to their listener."""
    check_name(name, t.path, "listener name")
    bind = []
    for text, path in _parse_bind_list(t):
        addr = parse_bind(text, path)
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
    passthrough = t.boolean("tls_passthrough", False)
    if passthrough and mode != "tcp":
        raise ConfigError(t.path_of("tls_passthrough"),
                          'needs mode = "tcp" (an http listener reads requests: terminate TLS with its tls table)')
    if passthrough and t.has("tls"):
        raise ConfigError(t.path_of("tls_passthrough"), "and tls exclude each other: lb passes TLS on, or ends it")
    forward = t.choice("forward", "userspace", FORWARD_MODES)
    if forward == "sockmap":
        if mode != "tcp":
            raise ConfigError(t.path_of("forward"), '"sockmap" needs mode = "tcp" (the kernel moves opaque bytes)')
        if passthrough or t.has("tls"):
            raise ConfigError(t.path_of("forward"), '"sockmap" needs a plain listener (no tls, no tls_passthrough)')
        if pool is not None and pools[pool].tls is not None:
            raise ConfigError(t.path_of("forward"), f'"sockmap" needs plain backends (pools.{pool}.tls is set)')
    if mode != "http":
        for key in HTTP_LISTENER_KEYS:
            if t.has(key) and not (key == "routes" and passthrough):
                raise ConfigError(t.path_of(key), 'needs mode = "http"')
    # Before the routes, so errors come in file order ([[routes]] follow the listener's keys).
    http = _parse_http_settings(t) if mode == "http" else HttpSettings()
    split = splits_section.parse(t, pools, acls, warnings) if mode == "http" else None
    if split is not None:
        pool = splits_section.pool_of(t, split, pools)
    access = parse_access(t, acls, rules)
    limit_names = parse_limit_names(t, limits, mode)
    tls = tls_section.parse(t.table("tls", tls_section.KEYS), mode, warnings) if t.has("tls") else None
    if passthrough:
        routes = tuple(_parse_passthrough_route(rt, pools) for rt in t.array_of_tables("routes", ROUTE_KEYS))
    else:
        routes = tuple(_parse_route(rt, pools, warnings, acls, rules, limits, auths, caches)
                       for rt in t.array_of_tables("routes", ROUTE_KEYS))
    routes = _name_routes(routes, t)
    listener_log = listener_logs(t, mode, logs)
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
        max_connections=t.integer("max_connections", 0, 0, MAX_CONNECTIONS),
        http=http,
        tls=tls,
        tls_passthrough=passthrough,
        access=access,
        logs=listener_log,
        request_id=_parse_request_id(t, mode, bool(listener_log)),
        limits=limit_names,
        auth=parse_auth_name(t, auths),
        forward=forward,
        cache=parse_cache_name(t, caches),
        split=split,
        mirror=mirror_section.parse(t, pools) if mode == "http" else None,
    )


def _name_routes(routes: tuple[Route, ...], t: Table) -> tuple[Route, ...]:
    """Each route's name as written, else its position; names are unique."""
    out = []
    seen: dict[str, int] = {}
    raw = t.get("routes", [], "an array of tables", lambda v: isinstance(v, list))
    for i, (route, data) in enumerate(zip(routes, raw)):
        path = f"{t.path_of('routes')}[{i}].name"
        name = data.get("name")
        if name is None:
            name = f"routes[{i}]"
        elif not isinstance(name, str):
            raise wrong_type(path, name, "a string")
        else:
            check_name(name, path, "route name")
        if name in seen:
            raise ConfigError(path, f"duplicate route name {name!r} (also routes[{seen[name]}])")
        seen[name] = i
        out.append(dataclasses.replace(route, name=name))
    return tuple(out)


def _parse_request_id(t: Table, mode: str, logged: bool) -> str:
    """The request-id header: on by default where an access log serves the
    listener (lines and backends then share one id per request)."""
    if not t.has("request_id"):
        return DEFAULT_REQUEST_ID if mode == "http" and logged else ""
    value = t.get("request_id", None, 'a header name, true or false', lambda v: isinstance(v, (str, bool)))
    if value is False:
        return ""
    if value is True:
        return DEFAULT_REQUEST_ID
    check_header_name(value, t.path_of("request_id"))
    return value
