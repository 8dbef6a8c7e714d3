"""The config contract (DESIGN.md section 4): lb.config and `lb check`."""

import base64
import hashlib
import importlib.util
import json
import pathlib
import socket
import tempfile
import textwrap
import tomllib

import pytest
from click.testing import CliRunner

import lb
from lb import config
from lb.config import ConfigError
from tests.tls_certs import CA

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Certificates for the TLS keys of FULL: a config check reads them.
TLS_DIR = pathlib.Path(tempfile.mkdtemp(prefix="lb-test-config-"))
TLS_CA = CA(TLS_DIR / "ca")
TLS_LEAF = TLS_CA.leaf("web", ("www.example.com", "example.com"), kind="rsa")
TLS_DIR_LEAF = TLS_CA.leaf("api", ("api.example.com",), combined=True, directory=TLS_DIR / "certs")
TLS_CLIENT = TLS_CA.leaf("lb-client", ("lb",), client=True, directory=TLS_DIR / "client")
TICKET_KEYS = [bytes(range(i, i + 80)) for i in range(4)]
(TLS_DIR / "tickets").write_text("# the oldest first\n" + "".join(base64.b64encode(k).decode() + "\n" for k in TICKET_KEYS))


def _check_command():
    try:
        from lb.cli.check import check
    except ImportError:
        # lb/cli/__init__.py imports every command module; while one of them
        # is still being written, load this command's module on its own.
        spec = importlib.util.spec_from_file_location(
            "_lb_cli_check", pathlib.Path(lb.__file__).parent / "cli" / "check.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        check = module.check
    return check


ACL_FILE = TLS_DIR / "blocked.txt"
ACL_FILE.write_text("# abusers\n192.0.2.0/24\n\n198.51.100.7  # one address\n2001:db8:bad::/48\n")
API_KEYS_FILE = TLS_DIR / "keys.txt"
API_KEYS_FILE.write_text(bytes(range(32)).hex() + " ci\n")
HTPASSWD_FILE = TLS_DIR / "htpasswd"
HTPASSWD_FILE.write_text("ci:$2y$05$abcdefghijklmnopqrstuu5ZqXyVp0mm5L1JxwKvYbS0wPXzTrbKa\n")
JWKS_FILE = TLS_DIR / "jwks.json"
JWKS_FILE.write_text('{"keys": [{"kty": "oct", "kid": "ci", "alg": "HS256", "k": "' + "A" * 43 + '"}]}')

# Every key of the contract, none at its default.
FULL = """
[global]
workers = 4
admin_socket = "/tmp/lb/admin.sock"
state_file = "/tmp/lb/state.json"
user = "www"
group = "www-data"
drain_timeout = "1m30s"
splice = "never"
max_worker_rss = "512MiB"
log_ring = 4096
max_connections = 20000
io_uring = false

  [global.tls]
  tickets = false
  ticket_keys = "TLS_TICKETS"
  ticket_rotate = "30m"

  [global.metrics]
  bind = "127.0.0.1:9100"
  backend_histograms = ["response", "connect"]

[acls.office]
cidrs = ["10.0.0.0/8", "2001:db8::/32", "!10.66.0.0/16"]

[acls.blocked]
file = "ACL_FILE"

[limits.per_ip]
key = "source_ip"
rate = "100/10s"
burst = 20
concurrent = 10
ipv4_prefix = 24
ipv6_prefix = 64
capacity = 131072
on_full = "refuse"
dry_run = true

[limits.per_user]
key = "header:X-User"
rate = "5/s"

[auth.api]
type = "api_key"
keys_file = "API_KEYS_FILE"
header = "X-Key"
identity_header = "X-Client"
strip = false

[auth.partners]
type = "api_key"
keys_file = "API_KEYS_FILE"
query = "key"
strip = false

[caches.static]
size = "256m"
max_object_size = "8m"
tag_header = "Surrogate-Key"
purge_allow = ["office"]
disk = "/var/tmp"
disk_size = "64m"
range_fill = false

[caches.api]
size = "64m"
key_host = false
key_query = "sort"
key_query_drop = ["utm_*", "fbclid"]
key_headers = ["Accept-Language"]

[caches.edge]
key_query_keep = ["id"]

[auth.staff]
type = "basic"
htpasswd = "HTPASSWD_FILE"
cache_ttl = "5m"
cache_size = 100

[auth.sso]
type = "jwt"
jwks = "JWKS_FILE"
issuer = "https://sso.example"
audience = ["api://web", "api://partners"]
leeway = "10s"
claims_to_headers = { sub = "X-User", tenant = "X-Tenant" }
cookie = "sso_token"
required_claims = ["exp", "sub"]
max_token_size = 4096
cache_size = 1024

[listeners.web]
bind = ["0.0.0.0:8080", "[::1]:8080"]
mode = "http"
pool = "app"
accept_proxy = true
allow = ["office"]
deny = ["blocked"]
limits = ["per_ip"]
auth = "api"
cache = "static"
idle_timeout = "30s"
backlog = 1024
max_connections = 5000
http_request_timeout = "5s"
keepalive_timeout = "2m"
max_target = 4096
max_header_size = 8192
max_header_count = 50
forwarded = "both"
hide_server = true
max_body_size = "10MiB"
logs = ["access", "audit"]
request_id = "X-Trace-Id"

  [listeners.web.tls]
  certificates = [{ cert = "TLS_CERT", key = "TLS_KEY" }]
  directory = "TLS_CERTS_DIR"
  alpn = ["http/1.1", "x-test"]
  protocols = ["TLSv1.3"]
  ciphers = "ECDHE-RSA-AES128-GCM-SHA256"
  ciphersuites = "TLS_AES_256_GCM_SHA384"
  groups = "X25519"
  handshake_timeout = "3s"
  hsts = "max-age=31536000; includeSubDomains"
  client_ca = "TLS_CA_FILE"
  client_verify = "optional"
  client_headers = { subject = "X-SSL-Client-DN", fingerprint = "X-SSL-Client-SHA256", verify = "X-SSL-Client-Verify" }

  [listeners.web.http2]
  h2c = true
  max_concurrent_streams = 50
  initial_window_size = 131072
  connection_window_size = 2097152
  max_frame_size = 32768
  max_glitches = 500

  [listeners.web.request_headers]
  set = { "X-Env" = "prod", "X-Tier" = "web" }
  add = { "X-Via-Lb" = "1" }
  remove = ["X-Debug", "X-Internal"]

  [listeners.web.response_headers]
  set = { "Strict-Transport-Security" = "max-age=63072000" }
  add = { "X-Served-By" = "lb" }
  remove = ["X-Powered-By"]

  [[listeners.web.routes]]
  name = "api"
  host = "API.example.com"
  path_prefix = "/v1/"
  pool = "api"
  allow = ["office"]
  deny = ["blocked"]
  max_body_size = 0
  limits = ["per_user"]
  cache = "api"
  auth = "partners"

  [[listeners.web.routes]]
  host = "*.static.example.com"
  pool = "app"

  [[listeners.web.routes]]
  path = "/upload"
  methods = ["POST", "PUT"]
  header = "X-Canary"
  header_value = "yes"
  pool = "app"

    [listeners.web.routes.request_headers]
    set = { "X-Route" = "upload" }
    add = { "X-Upload" = "1" }
    remove = ["Cookie"]

    [listeners.web.routes.response_headers]
    set = { "Cache-Control" = "no-store" }
    add = { "X-Route" = "upload" }
    remove = ["ETag"]

  [[listeners.web.routes]]
  name = "beta"
  path_prefix = "/beta/"
  split = [{ pool = "app", weight = 90 }, { pool = "api", weight = 10 }]
  split_sticky = "header:X-User"
  split_override = "header:X-Variant"
  split_override_allow = ["office"]
  mirror = { pool = "api", percent = 5, timeout = "500ms", max_concurrent = 10, max_body = "16KiB" }

[listeners.ab]
bind = "127.0.0.1:8090"
split = [{ pool = "app", weight = 50 }, { pool = "api", weight = 50 }]
split_sticky = "source_ip"
split_override = "cookie:variant"
split_override_allow = ["office"]
mirror = { pool = "api", percent = 10, timeout = "2s", max_concurrent = 50, max_body = "64KiB" }

[listeners.db]
bind = "*:5432"
mode = "tcp"
pool = "api"
tls_passthrough = true
log = "audit"

[listeners.raw]
bind = "*:6000"
mode = "tcp"
pool = "api"
forward = "sockmap"

[logs.access]
format = "json"
target = "file:/tmp/lb-access.log"
sample = 0.5
facility = "local7"

[logs.audit]
format = "{time} {client} {status}"
target = "syslog:udp:127.0.0.1:514"

[pools.app]
algorithm = "maglev"
hash_key = "cookie:session"
balance_factor = 1.25
table_size = 251
send_proxy = "v2"
connect_timeout = "500ms"
retries = 0
response_timeout = "30s"
keepalive_max_idle = 0
keepalive_timeout = "5s"
sticky_cookie = "lb_srv"

  [pools.app.tls]
  verify = true
  ca = "TLS_CA_FILE"
  sni = "App.Internal.example."
  cert = "TLS_CLIENT_CERT"
  key = "TLS_CLIENT_KEY"

  [pools.app.health]
  type = "http"
  path = "/status"
  expect_status = "204"
  interval = "5s"
  timeout = "250ms"
  rise = 1
  fall = 5
  slowstart = "1m"
  method = "HEAD"
  host = "app.internal"
  expect_body = "ok"
  fast_interval = "1s"
  down_interval = "10s"

  [pools.app.passive]
  consecutive_failures = 3
  eject_time = "10s"
  max_ejected_percent = 30

  [[pools.app.backends]]
  address = "10.0.0.11:8080"
  name = "app1"
  weight = 0
  backup = true

  [[pools.app.backends]]
  address = "[2001:db8::12]:8080"

[pools.api]
algorithm = "leastconn"
protocol = "h2"

  [[pools.api.backends]]
  address = "10.0.1.1:9000"

[pools.parents]
algorithm = "maglev"
hash_key = "cache_key"
cdn_id = "cdn.example.net"

  [[pools.parents.backends]]
  address = "10.0.2.1:80"
""".replace("ACL_FILE", str(ACL_FILE)).replace("API_KEYS_FILE", str(API_KEYS_FILE)).replace("HTPASSWD_FILE", str(HTPASSWD_FILE)).replace("JWKS_FILE", str(JWKS_FILE)).replace("TLS_CERTS_DIR", str(TLS_DIR / "certs")).replace("TLS_TICKETS", str(TLS_DIR / "tickets")).replace(
    "TLS_CA_FILE", str(TLS_CA.path)).replace("TLS_CLIENT_CERT", str(TLS_CLIENT.cert)).replace(
    "TLS_CLIENT_KEY", str(TLS_CLIENT.key)).replace("TLS_CERT", str(TLS_LEAF.cert)).replace(
    "TLS_KEY", str(TLS_LEAF.key))


def test_full_config_loads_every_key():
    cfg = config.loads(FULL, source="full.toml")

    g = cfg.global_
    assert (g.workers, g.admin_socket, g.state_file) == (4, "/tmp/lb/admin.sock", "/tmp/lb/state.json")
    assert (g.user, g.group, g.drain_timeout, g.splice) == ("www", "www-data", 90.0, "never")
    assert g.max_worker_rss == 512 << 20
    assert g.max_connections == 20000
    assert g.io_uring is False
    assert (g.tls.enabled, g.tls.keys_file, g.tls.rotate) == (False, str(TLS_DIR / "tickets"), 1800.0)
    assert (g.tls.keys, g.tls.current) == (tuple(TICKET_KEYS[1:]), 1)
    assert g.worker_count() == 4

    assert list(cfg.listeners) == ["web", "ab", "db", "raw"]
    assert (cfg.listeners["raw"].forward, cfg.listeners["db"].forward) == ("sockmap", "userspace")
    web = cfg.listeners["web"]
    assert web.routes[-1].split == config.Split(
        variants=(("app", 90), ("api", 10)), sticky="header:X-User", override="header:X-Variant",
        override_allow=("office",), name="beta")
    assert web.routes[-1].mirror == config.Mirror(pool="api", percent=5.0, timeout=0.5, max_concurrent=10,
                                                  max_body=16384)
    assert cfg.listeners["ab"].mirror == config.Mirror(pool="api", percent=10.0, timeout=2.0, max_concurrent=50,
                                                       max_body=65536)
    assert cfg.listeners["ab"].split == config.Split(
        variants=(("app", 50), ("api", 50)), sticky="source_ip", override="cookie:variant",
        override_allow=("office",), name="ab")
    assert [str(b) for b in web.bind] == ["0.0.0.0:8080", "[::1]:8080"]
    assert [b.family for b in web.bind] == [socket.AF_INET, socket.AF_INET6]
    assert (web.mode, web.pool, web.accept_proxy, web.idle_timeout, web.backlog) == ("http", "app", True, 30.0, 1024)
    assert web.max_connections == 5000
    tls = web.tls
    assert [(c.cert, c.key) for c in tls.certificates] == [
        (str(TLS_LEAF.cert), str(TLS_LEAF.key)), (str(TLS_DIR_LEAF.cert), str(TLS_DIR_LEAF.cert))]
    assert [c.names for c in tls.certificates] == [("www.example.com", "example.com"), ("api.example.com",)]
    assert [c.key_type for c in tls.certificates] == ["RSA", "ECDSA"]
    assert tls.certificates[0].sha256 == TLS_LEAF.fingerprint
    assert (tls.alpn, tls.protocols, tls.ciphers, tls.ciphersuites, tls.groups) == (
        ("http/1.1", "x-test"), ("TLSv1.3",), "ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_256_GCM_SHA384", "X25519")
    assert (tls.handshake_timeout, tls.hsts) == (3.0, "max-age=31536000; includeSubDomains")
    assert (tls.client_ca, tls.client_verify, tls.client_headers) == (
        str(TLS_CA.path), "optional", ("X-SSL-Client-DN", "X-SSL-Client-SHA256", "X-SSL-Client-Verify"))
    assert cfg.listeners["db"].tls is None
    ptls = cfg.pools["app"].tls
    assert (ptls.verify, ptls.ca, ptls.sni) == (True, str(TLS_CA.path), "app.internal.example")
    assert (ptls.client.cert, ptls.client.key, ptls.client.sha256) == (
        str(TLS_CLIENT.cert), str(TLS_CLIENT.key), TLS_CLIENT.fingerprint)
    assert cfg.pools["api"].tls is None
    assert web.http == config.HttpSettings(
        request_timeout=5.0,
        keepalive_timeout=120.0,
        max_target=4096,
        max_header_size=8192,
        max_header_count=50,
        forwarded="both",
        hide_server=True,
        max_body_size=10 << 20,
        request_headers=config.HeaderRules(
            set=(("X-Env", "prod"), ("X-Tier", "web")),
            add=(("X-Via-Lb", "1"),),
            remove=("x-debug", "x-internal"),
        ),
        response_headers=config.HeaderRules(
            set=(("Strict-Transport-Security", "max-age=63072000"),),
            add=(("X-Served-By", "lb"),),
            remove=("x-powered-by",),
        ),
        http2=config.Http2Settings(h2c=True, max_concurrent_streams=50, initial_window_size=131072,
                                   connection_window_size=2097152, max_frame_size=32768, max_glitches=500),
    )
    assert web.access == config.Access(allow=("office",), deny=("blocked",), rule=0)
    assert web.limits == ("per_ip",)
    assert cfg.limits["per_ip"] == config.Limit(
        name="per_ip", key="source_ip", rate=100, period=10.0, burst=20, concurrent=10, ipv4_prefix=24,
        ipv6_prefix=64, capacity=131072, on_full="refuse", dry_run=True)
    assert (cfg.limits["per_user"].key, cfg.limits["per_user"].rate_text) == ("header:X-User", "5/1s")
    assert web.auth == "api" and web.routes[0].auth == "partners"
    assert web.cache == "static" and web.routes[0].cache == "api"
    assert cfg.caches["static"] == config.Cache(name="static", size=256 << 20, max_object_size=8 << 20,
                                                tag_header="Surrogate-Key", purge_allow=("office",),
                                                disk="/var/tmp/lb-cache-static.dat", disk_size=64 << 20,
                                                range_fill=False)
    assert cfg.caches["api"] == config.Cache(name="api", size=64 << 20, max_object_size=4 << 20, key_host=False,
                                             key_query="sort", key_query_drop=("utm_*", "fbclid"),
                                             key_headers=("accept-language",))
    assert cfg.caches["edge"].key_query_keep == ("id",)
    assert cfg.auth["api"] == config.Auth(name="api", type="api_key", keys_file=str(API_KEYS_FILE), header="X-Key",
                                          identity_header="X-Client", strip=False)
    assert cfg.auth["api"].keys == ((bytes(range(32)), "ci"),)
    assert (cfg.auth["partners"].query, cfg.auth["partners"].strip) == ("key", False)
    assert (cfg.auth["staff"].users, cfg.auth["staff"].cache_ttl, cfg.auth["staff"].cache_size) == (
        (("ci", HTPASSWD_FILE.read_text().split(":", 1)[1].strip()),), 300.0, 100)
    sso = cfg.auth["sso"]
    assert (sso.jwks, sso.issuer, sso.audience, sso.leeway, sso.claims_to_headers, sso.cookie, sso.required_claims,
            sso.max_token_size, sso.cache_size) == (
        str(JWKS_FILE), "https://sso.example", ("api://web", "api://partners"), 10.0,
        (("sub", "X-User"), ("tenant", "X-Tenant")), "sso_token", ("exp", "sub"), 4096, 1024)
    assert [(k.kid, k.algs, k.data) for k in sso.jwt_keys] == [("ci", ("HS256",), bytes(32))]
    assert (cfg.acls["office"].ipv4, cfg.acls["office"].ipv6, cfg.acls["office"].cidrs) == (
        2, 1, ("10.0.0.0/8", "2001:db8::/32", "!10.66.0.0/16"))
    assert (cfg.acls["blocked"].ipv4, cfg.acls["blocked"].ipv6, cfg.acls["blocked"].file) == (2, 1, str(ACL_FILE))
    assert web.routes[:-1] == (
        config.Route(host="api.example.com", path_prefix="/v1/", pool="api", name="api", max_body_size=0,
                     access=config.Access(allow=("office",), deny=("blocked",), rule=3), limits=("per_user",),
                     auth="partners", cache="api"),
        config.Route(host="*.static.example.com", path_prefix=None, pool="app", name="routes[1]"),
        config.Route(
            host=None,
            path_prefix=None,
            pool="app",
            path="/upload",
            methods=("POST", "PUT"),
            header="x-canary",
            header_value="yes",
            request_headers=config.HeaderRules(
                set=(("X-Route", "upload"),), add=(("X-Upload", "1"),), remove=("cookie",)
            ),
            response_headers=config.HeaderRules(
                set=(("Cache-Control", "no-store"),), add=(("X-Route", "upload"),), remove=("etag",)
            ),
            name="routes[2]",
        ),
    )
    assert g.log_ring == 4096
    assert [l.name for l in web.logs] == ["access", "audit"] and web.request_id == "X-Trace-Id"
    assert [l.name for l in cfg.listeners["db"].logs] == ["audit"] and cfg.listeners["db"].request_id == ""
    access, audit = cfg.logs["access"], cfg.logs["audit"]
    assert (access.json, str(access.target), access.sample, access.facility) == (
        True, "file:/tmp/lb-access.log", 0.5, 23)
    assert (audit.json, str(audit.target), audit.ops) == (
        False, "syslog:udp:127.0.0.1:514", (("", "time"), (" ", "client"), (" ", "status"), ("", None)))
    db = cfg.listeners["db"]
    assert db.bind == (config.BindAddr("0.0.0.0", 5432, socket.AF_INET),)
    assert (db.mode, db.pool, db.routes, db.http) == ("tcp", "api", (), config.HttpSettings())
    assert (db.tls_passthrough, web.tls_passthrough) == (True, False)

    assert list(cfg.pools) == ["app", "api", "parents"]
    assert (cfg.pools["parents"].hash_key, cfg.pools["parents"].cdn_id) == ("cache_key", "cdn.example.net")
    app = cfg.pools["app"]
    assert (app.algorithm, app.hash_key, app.balance_factor, app.table_size) == ("maglev", "cookie:session", 1.25, 251)
    assert (app.send_proxy, app.connect_timeout, app.retries) == ("v2", 0.5, 0)
    assert (app.response_timeout, app.keepalive_max_idle, app.keepalive_timeout, app.sticky_cookie) == (
        30.0,
        0,
        5.0,
        "lb_srv",
    )
    assert app.health == config.Health(
        type="http",
        path="/status",
        expect_status=(204, 204),
        interval=5.0,
        timeout=0.25,
        rise=1,
        fall=5,
        slowstart=60.0,
        method="HEAD",
        host="app.internal",
        expect_body="ok",
        fast_interval=1.0,
        down_interval=10.0,
    )
    assert app.passive == config.Passive(consecutive_failures=3, eject_time=10.0, max_ejected_percent=30)
    assert cfg.pools["api"].passive == config.Passive()
    assert app.backends == (
        config.Backend("10.0.0.11:8080", "10.0.0.11", 8080, socket.AF_INET, "app1", 0, True),
        config.Backend("[2001:db8::12]:8080", "2001:db8::12", 8080, socket.AF_INET6, "[2001:db8::12]:8080", 100, False),
    )
    assert cfg.pools["api"].algorithm == "leastconn"
    assert (app.protocol, cfg.pools["api"].protocol) == ("http/1.1", "h2")
    assert (cfg.source, cfg.warnings) == ("full.toml", ())
    assert cfg.sha256 == hashlib.sha256(FULL.encode()).hexdigest()


def _keys(table: dict, prefix: str = "") -> set[str]:
    """Key paths of a parsed TOML document with names and indexes replaced by '*'."""
    out = set()
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if prefix in ("listeners", "pools", "acls", "logs", "auth", "caches"):
            path = f"{prefix}.*"
        out.add(path)
        if isinstance(value, dict):
            out |= _keys(value, path)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out |= _keys(item, path)
    return out


def _contract_keys() -> set[str]:
    sections = {
        "global": config.GLOBAL_KEYS,
        "global.tls": config.GLOBAL_TLS_KEYS,
        "global.metrics": config.GLOBAL_METRICS_KEYS,
        "listeners.*": config.LISTENER_KEYS,
        "listeners.*.routes": config.ROUTE_KEYS,
        "listeners.*.split": config.SPLIT_VARIANT_KEYS,
        "listeners.*.routes.split": config.SPLIT_VARIANT_KEYS,
        "listeners.*.mirror": config.MIRROR_KEYS,
        "listeners.*.routes.mirror": config.MIRROR_KEYS,
        "listeners.*.request_headers": config.HEADER_RULE_KEYS,
        "listeners.*.response_headers": config.HEADER_RULE_KEYS,
        "listeners.*.routes.request_headers": config.HEADER_RULE_KEYS,
        "listeners.*.routes.response_headers": config.HEADER_RULE_KEYS,
        "listeners.*.tls": config.TLS_KEYS,
        "listeners.*.http2": config.HTTP2_KEYS,
        "listeners.*.tls.certificates": config.TLS_CERTIFICATE_KEYS,
        "listeners.*.tls.client_headers": config.TLS_CLIENT_HEADER_KEYS,
        "pools.*": config.POOL_KEYS,
        "pools.*.health": config.HEALTH_KEYS,
        "pools.*.passive": config.PASSIVE_KEYS,
        "pools.*.backends": config.BACKEND_KEYS,
        "pools.*.tls": config.POOL_TLS_KEYS,
        "acls.*": config.ACL_KEYS,
        "logs.*": config.LOG_KEYS,
        "caches.*": config.CACHE_KEYS,
        "auth.*": config.AUTH_KEYS,
    }
    return {f"{section}.{key}" for section, keys in sections.items() for key in keys}


def test_full_config_really_sets_every_key():
    assert _contract_keys() <= _keys(tomllib.loads(FULL))


def test_every_key_is_documented():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for path in sorted(_contract_keys()):
        key = path.rsplit(".", 1)[1]
        assert f"`{key}`" in docs or f"{key} =" in docs, f"{path} is not documented"


@pytest.mark.parametrize("heading", ["## 7. A complete example", "## 7b. An http example"])
def test_documented_examples_are_valid(heading):
    docs = (ROOT / "docs" / "configuration.md").read_text()
    section = docs.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    assert config.loads(textwrap.dedent(section)).warnings == ()


MINIMAL = """
[listeners.web]
bind = ["127.0.0.1:8080"]
mode = "tcp"
pool = "app"

[[pools.app.backends]]
address = "10.0.0.1:80"
"""


def test_defaults():
    cfg = config.loads(MINIMAL)
    assert cfg.global_ == config.GlobalSettings(
        workers=0,
        admin_socket="/run/lb/admin.sock",
        state_file="/var/lib/lb/state.json",
        user="lb",
        group="lb",
        drain_timeout=30.0,
        splice="auto",
    )
    assert 1 <= cfg.global_.worker_count() <= config.MAX_WORKERS
    web = cfg.listeners["web"]
    assert (web.accept_proxy, web.routes, web.idle_timeout, web.backlog) == (False, (), 600.0, 4096)
    assert web.max_connections == 0 and cfg.global_.max_connections == 0
    assert cfg.global_.io_uring is True
    pool = cfg.pools["app"]
    assert (pool.algorithm, pool.hash_key, pool.balance_factor, pool.table_size) == (
        "roundrobin",
        "source_ip",
        0,
        65537,
    )
    assert (pool.send_proxy, pool.connect_timeout, pool.retries) == ("off", 3.0, 2)
    assert (pool.response_timeout, pool.keepalive_max_idle, pool.keepalive_timeout, pool.sticky_cookie) == (
        60.0,
        256,
        30.0,
        "",
    )
    assert web.http == config.HttpSettings()
    assert pool.health == config.Health("tcp", "/healthz", (200, 399), 2.0, 1.0, 2, 3, 0.0)
    assert pool.backends[0] == config.Backend("10.0.0.1:80", "10.0.0.1", 80, socket.AF_INET, "10.0.0.1:80", 100, False)
    assert cfg.source == "<string>"


def test_default_mode_is_http():
    cfg = config.loads(MINIMAL.replace('mode = "tcp"\n', ""))
    assert cfg.listeners["web"].mode == "http"


def test_http_defaults():
    web = config.loads(MINIMAL.replace('mode = "tcp"\n', "")).listeners["web"]
    # The contract's defaults, spelt out, so a change to the dataclass shows here.
    assert web.http == config.HttpSettings(
        request_timeout=10.0,
        keepalive_timeout=60.0,
        max_target=8192,
        max_header_size=16384,
        max_header_count=100,
        forwarded="x-forwarded",
        hide_server=False,
        request_headers=config.HeaderRules(set=(), add=(), remove=()),
        response_headers=config.HeaderRules(set=(), add=(), remove=()),
    )


def test_unreferenced_pool_may_have_no_backends():
    cfg = config.loads(MINIMAL + '\n[pools.spare]\nalgorithm = "leastconn"\n')
    assert cfg.pools["spare"].backends == ()


def _cfg(listener="", pool="", backend="", tail=""):
    """A valid config with lines added to the listener, the pool, its backend, and after them all."""
    return f"""
[listeners.web]
bind = ["127.0.0.1:8080"]
mode = "tcp"
pool = "app"
{listener}

[pools.app]
{pool}

[[pools.app.backends]]
address = "10.0.0.1:80"
{backend}
{tail}
"""


def _without(text: str, line: str) -> str:
    assert line in text
    return text.replace(line, "", 1)


HTTP_LISTENER = '[listeners.web]\nbind = "127.0.0.1:80"\n'
POOL_APP = '\n[[pools.app.backends]]\naddress = "10.0.0.1:80"\n'


def _route(lines: str) -> str:
    """An http listener with one route made of ``lines``, and pool "app"."""
    return HTTP_LISTENER + "[[listeners.web.routes]]\n" + lines + POOL_APP


def _http(lines: str) -> str:
    """An http listener with pool "app" and ``lines`` added to it."""
    return HTTP_LISTENER + 'pool = "app"\n' + lines + POOL_APP


def _rules(lines: str, table: str = "listeners.web.request_headers") -> str:
    """An http listener whose header rules table ``table`` holds ``lines``."""
    if table.startswith("listeners.web.routes."):
        return _route(f'path = "/"\npool = "app"\n[{table}]\n{lines}\n')
    return _http(f"[{table}]\n{lines}\n")


BAD = [
    # file level and types
    ("[listeners.web\n", "", "line 1"),
    (_cfg(tail="[globl]\nworkers = 1"), "globl", "did you mean 'global'"),
    ("", "listeners", "at least one listener"),
    ("listeners = 5\n", "listeners", "table"),
    ("[listeners]\nweb = 5\n", "listeners.web", "table"),
    (_cfg(tail="[global]\nworkers = true"), "global.workers", "boolean"),
    (_cfg(tail="[global]\nworkers = 65"), "global.workers", "out of range"),
    (_cfg(tail="[global]\nworkers = 1.5"), "global.workers", "integer"),
    # global
    (_cfg(tail='[global]\nadmin_socket = "run/admin.sock"'), "global.admin_socket", "absolute"),
    (_cfg(tail=f'[global]\nadmin_socket = "/{"x" * 120}"'), "global.admin_socket", "UNIX socket"),
    (_cfg(tail='[global]\nstate_file = ""'), "global.state_file", "empty"),
    (_cfg(tail='[global]\nuser = ""'), "global.user", "empty"),
    (_cfg(tail="[global]\ngroup = 0"), "global.group", "string"),
    (_cfg(tail='[global]\ndrain_timeout = "30"'), "global.drain_timeout", "invalid duration"),
    (_cfg(tail="[global]\ndrain_timeout = 30"), "global.drain_timeout", "durations are strings"),
    (_cfg(tail='[global]\nsplice = "sometimes"'), "global.splice", "auto, always, never"),
    (_cfg(tail='[global]\nio_uring = "yes"'), "global.io_uring", "boolean"),
    # listeners: bind
    (_without(_cfg(), 'bind = ["127.0.0.1:8080"]\n'), "listeners.web.bind", "missing"),
    (_cfg().replace('["127.0.0.1:8080"]', "[]"), "listeners.web.bind", "at least one"),
    (_cfg().replace('["127.0.0.1:8080"]', "8080"), "listeners.web.bind", "list of addresses"),
    (_cfg().replace('["127.0.0.1:8080"]', "[8080]"), "listeners.web.bind[0]", "string"),
    (_cfg().replace("127.0.0.1:8080", "127.0.0.1:70000"), "listeners.web.bind[0]", "port out of range"),
    (_cfg().replace("127.0.0.1:8080", "127.0.0.1:0"), "listeners.web.bind[0]", "port out of range"),
    (_cfg().replace("127.0.0.1:8080", "127.0.0.1"), "listeners.web.bind[0]", "missing port"),
    (_cfg().replace("127.0.0.1:8080", "127.0.0.1:http"), "listeners.web.bind[0]", "invalid port"),
    (_cfg().replace("127.0.0.1:8080", "10.0.0.300:80"), "listeners.web.bind[0]", "invalid IP"),
    (_cfg().replace("127.0.0.1:8080", "localhost:80"), "listeners.web.bind[0]", "invalid IP"),
    (_cfg().replace("127.0.0.1:8080", "::1:80"), "listeners.web.bind[0]", "brackets"),
    (_cfg().replace("127.0.0.1:8080", "[127.0.0.1]:80"), "listeners.web.bind[0]", "IPv6"),
    (_cfg().replace('"127.0.0.1:8080"', '"[::]:80", "[::0]:80"'), "listeners.web.bind[1]", "already bound"),
    (
        _cfg(tail='[listeners.other]\nbind = "*:8080"\npool = "app"\n[listeners.more]\nbind = "0.0.0.0:8080"'),
        "listeners.more.bind",
        "already bound by listener 'other'",
    ),
    # listeners: the rest
    (_cfg().replace('mode = "tcp"', 'mode = "udp"'), "listeners.web.mode", "tcp, http"),
    (_without(_cfg(), 'pool = "app"\n'), "listeners.web.pool", "required"),
    (HTTP_LISTENER + POOL_APP, "listeners.web.pool", "route"),
    (_cfg().replace('pool = "app"', 'pool = "apq"'), "listeners.web.pool", "unknown pool 'apq' (did you mean 'app'?)"),
    (_cfg(listener="accept_proxy = 1"), "listeners.web.accept_proxy", "boolean"),
    (_cfg(listener='idle_timeout = "0s"'), "listeners.web.idle_timeout", "at least 1ms"),
    (_cfg(listener="backlog = 0"), "listeners.web.backlog", "out of range"),
    (_cfg(listener="backlog = 65536"), "listeners.web.backlog", "out of range"),
    (_cfg(listener="max_connections = -1"), "listeners.web.max_connections", "out of range"),
    (_cfg(listener='max_connections = "10"'), "listeners.web.max_connections", "integer"),
    (_cfg(listener="pol = 'app'"), "listeners.web.pol", "did you mean 'pool'"),
    (
        _cfg(listener='[[listeners.web.routes]]\nhost = "a.example.com"\npool = "app"'),
        "listeners.web.routes",
        'mode = "http"',
    ),
    ('[listeners."a.b"]\nmode = "tcp"\n', 'listeners."a.b".bind', "missing"),
    ('[listeners.""]\nbind = "127.0.0.1:80"\n', 'listeners.""', "empty"),
    # routes
    (_route('pool = "app"\n'), "listeners.web.routes[0]", "host, path_prefix"),
    (_route('host = "a.*.com"\npool = "app"\n'), "listeners.web.routes[0].host", "*.example.com"),
    (_route('host = "a b"\npool = "app"\n'), "listeners.web.routes[0].host", "invalid host"),
    (_route('path_prefix = "v1/"\npool = "app"\n'), "listeners.web.routes[0].path_prefix", "start with '/'"),
    (_route('path_prefix = "/a b"\npool = "app"\n'), "listeners.web.routes[0].path_prefix", "spaces"),
    (_route('path_prefix = "/v1/"\n'), "listeners.web.routes[0].pool", "missing"),
    (_route('path_prefix = "/v1/"\npool = "foo"\n'), "listeners.web.routes[0].pool", "unknown pool 'foo'"),
    (HTTP_LISTENER + "routes = 3\n" + POOL_APP, "listeners.web.routes", "array"),
    (_route('header_value = "1"\npool = "app"\n'), "listeners.web.routes[0]", "at least one of"),
    (_route('path = "/"\nheader_value = "1"\npool = "app"\n'), "listeners.web.routes[0].header_value", "needs"),
    (_route('path = "/a"\npath_prefix = "/"\npool = "app"\n'), "listeners.web.routes[0].path", "exclude each other"),
    (_route('path = "a"\npool = "app"\n'), "listeners.web.routes[0].path", "start with '/'"),
    (_route('path = "/a\\tb"\npool = "app"\n'), "listeners.web.routes[0].path", "control characters"),
    (_route('path = "/a?b=1"\npool = "app"\n'), "listeners.web.routes[0].path", "contains '?'"),
    (_route('path_prefix = "/a#b"\npool = "app"\n'), "listeners.web.routes[0].path_prefix", "contains '#'"),
    (_route('path = 1\npool = "app"\n'), "listeners.web.routes[0].path", "string"),
    (_route('methods = []\npool = "app"\n'), "listeners.web.routes[0].methods", "at least one method"),
    (_route('methods = "GET"\npool = "app"\n'), "listeners.web.routes[0].methods", "list of methods"),
    (_route('methods = [1]\npool = "app"\n'), "listeners.web.routes[0].methods[0]", "string"),
    (_route('methods = ["GET", "GE T"]\npool = "app"\n'), "listeners.web.routes[0].methods[1]", "invalid method"),
    (_route('methods = [""]\npool = "app"\n'), "listeners.web.routes[0].methods[0]", "invalid method"),
    (_route('methods = ["GET", "PUT", "GET"]\npool = "app"\n'), "listeners.web.routes[0].methods[2]", "methods[0]"),
    (_route('header = "X User"\npool = "app"\n'), "listeners.web.routes[0].header", "invalid header name"),
    (_route('header = ""\npool = "app"\n'), "listeners.web.routes[0].header", "invalid header name"),
    (_route('header = "X-A:"\npool = "app"\n'), "listeners.web.routes[0].header", "invalid header name"),
    (_route('header = ["X-A"]\npool = "app"\n'), "listeners.web.routes[0].header", "string"),
    (_route('header = "X"\nheader_value = "a\\r\\nb"\npool = "app"'), "listeners.web.routes[0].header_value", "'\\r'"),
    (_route('header = "X"\nheader_value = "a\\u0000"\npool = "app"'), "listeners.web.routes[0].header_value", "'\\x00'"),
    (_route('header = "X"\nheader_value = "a "\npool = "app"\n'), "listeners.web.routes[0].header_value", "space"),
    (_route('header = "X"\nheader_value = 1\npool = "app"\n'), "listeners.web.routes[0].header_value", "string"),
    (_route('methd = ["GET"]\npool = "app"\n'), "listeners.web.routes[0].methd", "did you mean 'methods'"),
    (
        _route('path = "/a"\npool = "app"\n[[listeners.web.routes]]\npath = "/b?"\npool = "app"\n'),
        "listeners.web.routes[1].path",
        "'?'",
    ),
    # http listener settings
    (_http('http_request_timeout = "0s"\n'), "listeners.web.http_request_timeout", "at least 1ms"),
    (_http('http_request_timeout = "10"\n'), "listeners.web.http_request_timeout", "invalid duration"),
    (_http("http_request_timeout = 10\n"), "listeners.web.http_request_timeout", "durations are strings"),
    (_http('keepalive_timeout = "0ms"\n'), "listeners.web.keepalive_timeout", "at least 1ms"),
    (_http("max_target = 0\n"), "listeners.web.max_target", "out of range (1..65536)"),
    (_http("max_target = 65537\n"), "listeners.web.max_target", "out of range (1..65536)"),
    (_http("max_target = 16384\n"), "listeners.web.max_target", "16384 must be less than max_header_size (16384)"),
    (_http("max_header_size = 4096\n"), "listeners.web.max_target", "default 8192 must be less than max_header_size"),
    (_http("max_header_size = 1023\n"), "listeners.web.max_header_size", "out of range (1024..32768)"),
    (_http("max_header_size = 32769\n"), "listeners.web.max_header_size", "out of range (1024..32768)"),
    (_http('max_header_size = "16KiB"\n'), "listeners.web.max_header_size", "integer"),
    (_http("max_header_count = 0\n"), "listeners.web.max_header_count", "out of range (1..256)"),
    (_http("max_header_count = 257\n"), "listeners.web.max_header_count", "out of range (1..256)"),
    (_http('forwarded = "x-forwarded-for"\n'), "listeners.web.forwarded", "did you mean 'x-forwarded'"),
    (_http('forwarded = "xff"\n'), "listeners.web.forwarded", "x-forwarded, forwarded, both, none"),
    (_http('hide_server = "yes"\n'), "listeners.web.hide_server", "boolean"),
    (_http("request_headers = 1\n"), "listeners.web.request_headers", "table"),
    (_http("max_targt = 100\n"), "listeners.web.max_targt", "did you mean 'max_target'"),
    # header rules
    (_rules('sett = { "X-A" = "1" }'), "listeners.web.request_headers.sett", "did you mean 'set'"),
    (_rules('set = ["X-A"]'), "listeners.web.request_headers.set", "table of header names"),
    (_rules('add = "X-A"'), "listeners.web.request_headers.add", "table of header names"),
    (_rules('set = { "X-A" = 1 }'), "listeners.web.request_headers.set.X-A", "string"),
    (_rules('set.X-A.b = "1"'), "listeners.web.request_headers.set.X-A", "got a table"),
    (_rules('set = { "X A" = "1" }'), 'listeners.web.request_headers.set."X A"', "invalid header name"),
    (_rules('add = { "X:A" = "1" }'), 'listeners.web.request_headers.add."X:A"', "invalid header name"),
    (_rules('add = { "" = "1" }'), 'listeners.web.request_headers.add.""', "invalid header name"),
    (_rules('set = { "X-Ä" = "1" }'), 'listeners.web.request_headers.set."X-\\u00c4"', "invalid header name"),
    (_rules('set = { "X(A)" = "1" }'), 'listeners.web.request_headers.set."X(A)"', "invalid header name"),
    (_rules('set = { "X-A" = "a\\nb" }'), "listeners.web.request_headers.set.X-A", "'\\n'"),
    (_rules('set = { "X-A" = "a\\rb" }'), "listeners.web.request_headers.set.X-A", "'\\r'"),
    (_rules('add = { "X-A" = "\\u0000" }'), "listeners.web.request_headers.add.X-A", "'\\x00'"),
    (_rules('add = { "X-A" = "a\\tb" }'), "listeners.web.request_headers.add.X-A", "'\\t'"),
    (_rules('add = { "X-A" = "a\\u007f" }'), "listeners.web.request_headers.add.X-A", "'\\x7f'"),
    (_rules('add = { "X-A" = "\\u001b[0m" }'), "listeners.web.request_headers.add.X-A", "'\\x1b'"),
    (_rules('set = { "X-A" = " a" }'), "listeners.web.request_headers.set.X-A", "starts or ends with a space"),
    (_rules('remove = "X-A"'), "listeners.web.request_headers.remove", "list of header names"),
    (_rules("remove = [1]"), "listeners.web.request_headers.remove[0]", "string"),
    (_rules('remove = ["X-A", "X A"]'), "listeners.web.request_headers.remove[1]", "invalid header name"),
    (
        _rules('set = { "X-A" = "1" }\nadd = { "x-a" = "2" }'),
        "listeners.web.request_headers.add.x-a",
        "'x-a' is already at listeners.web.request_headers.set.X-A",
    ),
    (
        _rules('set = { "X-A" = "1", "x-A" = "2" }'),
        "listeners.web.request_headers.set.x-A",
        "already at listeners.web.request_headers.set.X-A",
    ),
    (
        _rules('add = { "X-A" = "1" }\nremove = ["X-B", "X-a"]'),
        "listeners.web.request_headers.remove[1]",
        "already at listeners.web.request_headers.add.X-A",
    ),
    (
        _rules('remove = ["X-A", "x-a"]'),
        "listeners.web.request_headers.remove[1]",
        "already at listeners.web.request_headers.remove[0]",
    ),
    (_rules('set = { "Host" = "a" }'), "listeners.web.request_headers.set.Host", "may not be set, added or removed"),
    (
        _rules('remove = ["Server", "Transfer-Encoding"]', "listeners.web.response_headers"),
        "listeners.web.response_headers.remove[1]",
        "may not be set",
    ),
    (
        _rules('set = { "X-A" = "a\\nb" }', "listeners.web.response_headers"),
        "listeners.web.response_headers.set.X-A",
        "control character",
    ),
    (
        _rules('add = { "Content-Length" = "0" }', "listeners.web.routes.request_headers"),
        "listeners.web.routes[0].request_headers.add.Content-Length",
        "may not be set",
    ),
    (
        _rules('remove = ["Set Cookie"]', "listeners.web.routes.response_headers"),
        "listeners.web.routes[0].response_headers.remove[0]",
        "invalid header name",
    ),
    (
        _rules("rmove = []", "listeners.web.routes.response_headers"),
        "listeners.web.routes[0].response_headers.rmove",
        "did you mean 'remove'",
    ),
    # pools
    (_cfg(pool='algorithm = "roundrobbin"'), "pools.app.algorithm", "did you mean 'roundrobin'"),
    (_cfg(pool='hash_key = "header:"'), "pools.app.hash_key", "token"),
    (_cfg(pool='hash_key = "cookie:a b"'), "pools.app.hash_key", "token"),
    (_cfg(pool='hash_key = "client"'), "pools.app.hash_key", "source_ip"),
    (_cfg(pool='hash_key = "header:X-User"'), "pools.app.hash_key", "tcp listener 'web'"),
    (_cfg(pool="balance_factor = 1.0"), "pools.app.balance_factor", "must be 0 (off)"),
    (_cfg(pool="balance_factor = 100.5"), "pools.app.balance_factor", "must be 0 (off)"),
    (_cfg(pool="balance_factor = nan"), "pools.app.balance_factor", "must be 0 (off)"),
    (_cfg(pool='balance_factor = "1.5"'), "pools.app.balance_factor", "number"),
    (_cfg(pool="table_size = 65536"), "pools.app.table_size", "65536 is not prime"),
    (_cfg(pool="table_size = 1"), "pools.app.table_size", "not prime"),
    (_cfg(pool="table_size = 10000019"), "pools.app.table_size", "out of range"),
    (_cfg(pool='send_proxy = "v3"'), "pools.app.send_proxy", "off, v1, v2"),
    (_cfg(pool='connect_timeout = "0ms"'), "pools.app.connect_timeout", "at least 1ms"),
    (_cfg(pool="retries = 11"), "pools.app.retries", "out of range"),
    (_cfg(pool="retries = -1"), "pools.app.retries", "out of range"),
    (_cfg(pool="health = true"), "pools.app.health", "table"),
    (_cfg(pool='response_timeout = "0s"'), "pools.app.response_timeout", "at least 1ms"),
    (_cfg(pool="response_timeout = 60"), "pools.app.response_timeout", "durations are strings"),
    (_cfg(pool="keepalive_max_idle = -1"), "pools.app.keepalive_max_idle", "out of range (0..10000)"),
    (_cfg(pool="keepalive_max_idle = 10001"), "pools.app.keepalive_max_idle", "out of range (0..10000)"),
    (_cfg(pool='keepalive_max_idle = "16"'), "pools.app.keepalive_max_idle", "integer"),
    (_cfg(pool='keepalive_timeout = "0s"'), "pools.app.keepalive_timeout", "at least 1ms"),
    (_cfg(pool='keepalive_timeout = "30"'), "pools.app.keepalive_timeout", "invalid duration"),
    (_cfg(pool='sticky_cookie = "a b"'), "pools.app.sticky_cookie", "invalid cookie name"),
    (_cfg(pool='sticky_cookie = "srv=1"'), "pools.app.sticky_cookie", "invalid cookie name"),
    (_cfg(pool='sticky_cookie = "srv;"'), "pools.app.sticky_cookie", "invalid cookie name"),
    (_cfg(pool="sticky_cookie = true"), "pools.app.sticky_cookie", "string"),
    (_cfg(pool='stick_cookie = "srv"'), "pools.app.stick_cookie", "did you mean 'sticky_cookie'"),
    (_cfg(pool='protocol = "h3"'), "pools.app.protocol", "http/1.1, h2"),
    (_cfg(pool='protocol = "h2"\nsend_proxy = "v1"'), "pools.app.protocol", "send_proxy"),
    (_cfg(pool='protocol = "h2"\n[pools.app.health]\ntype = "http"'), "pools.app.protocol", 'use "tcp"'),
    (_cfg().split("[pools.app]")[0] + "[pools]\napp = 5\n", "pools.app", "table"),
    (f"[pools.{'p' * 40}]\n" + POOL_APP, f"pools.{'p' * 40}", "39 bytes"),
    # health
    (_cfg(tail='[pools.app.health]\ntype = "udp"'), "pools.app.health.type", "tcp, http, none"),
    (_cfg(tail='[pools.app.health]\npath = "healthz"'), "pools.app.health.path", "start with '/'"),
    (_cfg(tail='[pools.app.health]\nexpect_status = "2xx"'), "pools.app.health.expect_status", "200-399"),
    (_cfg(tail='[pools.app.health]\nexpect_status = "200-600"'), "pools.app.health.expect_status", "100..599"),
    (_cfg(tail='[pools.app.health]\nexpect_status = "399-200"'), "pools.app.health.expect_status", "reversed"),
    (_cfg(tail="[pools.app.health]\nexpect_status = 200"), "pools.app.health.expect_status", "string"),
    (_cfg(tail='[pools.app.health]\ninterval = "0s"'), "pools.app.health.interval", "at least"),
    (_cfg(tail='[pools.app.health]\ntimeout = "1 s"'), "pools.app.health.timeout", "invalid duration"),
    (_cfg(tail="[pools.app.health]\nrise = 0"), "pools.app.health.rise", "out of range"),
    (_cfg(tail="[pools.app.health]\nfall = 101"), "pools.app.health.fall", "out of range"),
    (_cfg(tail='[pools.app.health]\nslowstart = "-1s"'), "pools.app.health.slowstart", "invalid duration"),
    (_cfg(tail='[pools.app.health]\nmethod = "get me"'), "pools.app.health.method", "invalid HTTP method"),
    ('[global]\nmax_worker_rss = "lots"\n' + _cfg(), "global.max_worker_rss", "invalid size"),
    (_cfg(tail='[pools.app.health]\nhost = "a b"'), "pools.app.health.host", "invalid Host"),
    (_cfg(tail='[pools.app.health]\nfast_interval = "0s"'), "pools.app.health.fast_interval", "at least"),
    (_cfg(tail='[pools.app.passive]\nmax_ejected_percent = 101'), "pools.app.passive.max_ejected_percent", "101"),
    (_cfg(tail='[pools.app.passive]\nconsecutive_failure = 3'), "pools.app.passive.consecutive_failure", "consecutive_failures"),
    (_cfg(tail="[pools.app.health]\nhelth = 1"), "pools.app.health.helth", "unknown key"),
    # backends
    (_cfg().split("[[pools.app.backends]]")[0], "pools.app.backends", "no backends"),
    (_cfg().split("[[pools.app.backends]]")[0] + "backends = []\n", "pools.app.backends", "no backends"),
    (_cfg().split("[[pools.app.backends]]")[0] + 'backends = "10.0.0.1:80"\n', "pools.app.backends", "array"),
    (_cfg().split("[[pools.app.backends]]")[0] + 'backends = ["10.0.0.1:80"]\n', "pools.app.backends[0]", "table"),
    (_without(_cfg(backend='name = "a"'), 'address = "10.0.0.1:80"\n'), "pools.app.backends[0].address", "missing"),
    (_cfg().replace("10.0.0.1:80", "10.0.0.1:65536"), "pools.app.backends[0].address", "port out of range"),
    (_cfg().replace("10.0.0.1:80", "10.0.0.1"), "pools.app.backends[0].address", "missing port"),
    (_cfg().replace("10.0.0.1:80", "0.0.0.0:80"), "pools.app.backends[0].address", "unspecified"),
    (_cfg().replace("10.0.0.1:80", "bad_host!:80"), "pools.app.backends[0].address", "invalid host name"),
    (_cfg().replace("10.0.0.1:80", "[fe80::zz]:80"), "pools.app.backends[0].address", "invalid IP"),
    (_cfg(backend="adress = 'x'"), "pools.app.backends[0].adress", "did you mean 'address'"),
    (_cfg(backend="weight = 1001"), "pools.app.backends[0].weight", "out of range"),
    (_cfg(backend="weight = -1"), "pools.app.backends[0].weight", "out of range"),
    (_cfg(backend="weight = true"), "pools.app.backends[0].weight", "integer"),
    (_cfg(backend='backup = "no"'), "pools.app.backends[0].backup", "boolean"),
    (_cfg(backend='name = ""'), "pools.app.backends[0].name", "empty"),
    (_cfg(backend=f'name = "{"n" * 64}"'), "pools.app.backends[0].name", "63 bytes"),
    (_cfg(backend='name = "a\\tb"'), "pools.app.backends[0].name", "unprintable"),
    (
        _cfg(tail='[[pools.app.backends]]\naddress = "10.0.0.2:80"\nname = "10.0.0.1:80"'),
        "pools.app.backends[1].name",
        "duplicate backend name '10.0.0.1:80'",
    ),
    (
        _cfg(backend='name = "app1"', tail='[[pools.app.backends]]\naddress = "10.0.0.1:80"\nname = "app2"'),
        "pools.app.backends[1].address",
        "duplicate backend address",
    ),
]


@pytest.mark.parametrize("text,path,word", BAD, ids=[f"{i:02}-{path or 'file'}" for i, (_, path, _) in enumerate(BAD)])
def test_bad_config_names_the_key(text, path, word):
    with pytest.raises(ConfigError) as info:
        config.loads(text, source="lb.toml")
    e = info.value
    assert e.path == path
    assert word in e.message
    assert str(e) == f"{path or 'lb.toml'}: {e.message}"


# A valid value for every key that needs mode = "http".
HTTP_LISTENER_VALUES = {
    "routes": '[[listeners.web.routes]]\nhost = "a.example.com"\npool = "app"',
    "http_request_timeout": 'http_request_timeout = "5s"',
    "keepalive_timeout": 'keepalive_timeout = "5s"',
    "max_target": "max_target = 100",
    "max_header_size": "max_header_size = 10000",
    "max_header_count": "max_header_count = 10",
    "forwarded": 'forwarded = "none"',
    "hide_server": "hide_server = false",
    "request_headers": "request_headers = {}",
    "response_headers": '[listeners.web.response_headers]\nremove = ["Server"]',
    "max_body_size": 'max_body_size = "1MiB"',
    "request_id": 'request_id = "X-Request-Id"',
    "auth": 'auth = "api"\n[auth.api]\ntype = "api_key"\nkeys_file = "/nonexistent/lb-keys.txt"',
    "http2": "[listeners.web.http2]\nh2c = true",
    "cache": 'cache = "c"\n[caches.c]\nsize = "1m"',
    "split": 'split = [{ pool = "app", weight = 100 }, { pool = "app2", weight = 0 }]\n'
             '[pools.app2]\n[[pools.app2.backends]]\naddress = "10.0.0.2:80"',
    "split_sticky": 'split_sticky = "source_ip"',
    "split_override": 'split_override = "header:X-Variant"',
    "split_override_allow": 'split_override_allow = ["office"]',
    "mirror": 'mirror = { pool = "app", percent = 10 }',
}


def test_every_http_listener_key_has_a_value_here():
    assert set(HTTP_LISTENER_VALUES) == set(config.HTTP_LISTENER_KEYS)


@pytest.mark.parametrize("key", config.HTTP_LISTENER_KEYS)
def test_http_listener_keys_need_http_mode(key):
    line = HTTP_LISTENER_VALUES[key]
    with pytest.raises(ConfigError) as info:
        config.loads(_cfg(listener=line))
    assert (info.value.path, info.value.message) == (f"listeners.web.{key}", 'needs mode = "http"')
    # The same line is valid on an http listener.
    config.loads(_cfg(listener=line).replace('mode = "tcp"', 'mode = "http"'))


@pytest.mark.parametrize("name", config.MANAGED_HEADERS)
@pytest.mark.parametrize("form", ['set = {{ "{0}" = "x" }}', 'add = {{ "{0}" = "x" }}', 'remove = ["{0}"]'])
def test_managed_headers_may_not_be_rewritten(name, form):
    written = name.title()  # names compare without case
    key = form.split(" ")[0]
    with pytest.raises(ConfigError) as info:
        config.loads(_rules(form.format(written)))
    path = f"listeners.web.request_headers.{key}" + ("[0]" if key == "remove" else f".{written}")
    assert info.value.path == path
    assert info.value.message.startswith(f"{written!r} may not be set, added or removed")


def test_bad_configs_are_distinct():
    assert len({text for text, _, _ in BAD}) == len(BAD)


def test_duration_error_message():
    with pytest.raises(ConfigError) as info:
        config.loads(_cfg(pool='connect_timeout = "3 secs"'))
    assert str(info.value) == """pools.app.connect_timeout: invalid duration '3 secs' (use e.g. "500ms", "2s", "1m")"""


def test_toml_syntax_error_gives_line_and_column():
    with pytest.raises(ConfigError) as info:
        config.loads("[global]\nworkers = = 1\n", source="lb.toml")
    assert info.value.path == ""
    assert str(info.value).startswith("lb.toml: TOML syntax error at line 2, column ")


def test_duplicate_toml_key_is_a_syntax_error():
    with pytest.raises(ConfigError, match="TOML syntax error at line 3"):
        config.loads("[global]\nworkers = 1\nworkers = 2\n")


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        config.loads(_cfg(tail="[global]\nzzz = 1"))
    assert info.value.path == "global.zzz"
    assert "valid keys: workers, admin_socket" in info.value.message


@pytest.fixture
def fake_dns(monkeypatch):
    answers = {"app.internal": [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::7", 80, 0, 0))]}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_backend_host_name_is_resolved_at_load(fake_dns):
    backend = config.loads(_cfg().replace("10.0.0.1:80", "app.internal:80")).pools["app"].backends[0]
    assert (backend.address, backend.host, backend.port) == ("app.internal:80", "2001:db8::7", 80)
    assert (backend.family, backend.name) == (socket.AF_INET6, "app.internal:80")


def test_unresolvable_backend_names_the_key(fake_dns):
    with pytest.raises(ConfigError) as info:
        config.loads(_cfg().replace("10.0.0.1:80", "nowhere.internal:80"))
    assert info.value.path == "pools.app.backends[0].address"
    assert info.value.message == "cannot resolve 'nowhere.internal': Name or service not known"


def _maglev(n_backends: int, table_size: int = 65537) -> str:
    backends = "".join(
        f'[[pools.app.backends]]\naddress = "10.{i // 65536}.{i // 256 % 256}.{i % 256}:80"\n'
        for i in range(n_backends)
    )
    return f"""
[listeners.web]
bind = "127.0.0.1:80"
mode = "tcp"
pool = "app"

[pools.app]
algorithm = "maglev"
table_size = {table_size}

{backends}"""


def test_small_maglev_table_is_a_warning():
    cfg = config.loads(_maglev(1000))
    assert cfg.warnings == (
        "pools.app.table_size: 65537 is smaller than 100x the 1000 backends; "
        "use a prime of at least 100000, e.g. 100003, for an even spread",
    )
    assert config.loads(_maglev(655)).warnings == ()


def test_maglev_only_keys_warn_on_other_algorithms():
    cfg = config.loads(_cfg(pool='hash_key = "source_addr"\ntable_size = 251'))
    assert cfg.warnings == (
        'pools.app.hash_key: has no effect unless algorithm = "maglev"',
        'pools.app.table_size: has no effect unless algorithm = "maglev"',
    )


def test_health_warnings():
    cfg = config.loads(_cfg(tail='[pools.app.health]\npath = "/up"\ninterval = "1s"\ntimeout = "2s"'))
    assert cfg.warnings == (
        'pools.app.health.path: has no effect unless type = "http"',
        "pools.app.health.timeout: 2s is longer than the interval (1s) between checks",
    )


def test_http_hash_key_is_fine_for_http_listeners():
    text = HTTP_LISTENER + 'pool = "app"\n[pools.app]\nalgorithm = "maglev"\nhash_key = "header:X-User"\n' + POOL_APP
    assert config.loads(text).pools["app"].hash_key == "header:X-User"


def _routes(text: str) -> tuple:
    return config.loads(text).listeners["web"].routes


@pytest.mark.parametrize(
    "lines,fields",
    [
        ('host = "Example.COM"', {"host": "example.com"}),
        ('host = "*.Example.com"', {"host": "*.example.com"}),
        ('path_prefix = "/v1/"', {"path_prefix": "/v1/"}),
        ('path = "/"', {"path": "/"}),
        ('path = "/a/b.html"', {"path": "/a/b.html"}),
        ('methods = ["GET"]', {"methods": ("GET",)}),
        ('methods = ["PUT", "POST", "M-SEARCH"]', {"methods": ("PUT", "POST", "M-SEARCH")}),
        ('header = "X-Canary"', {"header": "x-canary"}),
        ('header = "X-Canary"\nheader_value = "Yes, Please"', {"header": "x-canary", "header_value": "Yes, Please"}),
        ('header = "X-Canary"\nheader_value = ""', {"header": "x-canary", "header_value": ""}),
        ('header = "Upgrade"\nheader_value = "websocket"', {"header": "upgrade", "header_value": "websocket"}),
        ('header = "X-Name"\nheader_value = "Zoë"', {"header": "x-name", "header_value": "Zoë"}),
        (
            'host = "api.example.com"\npath = "/login"\nmethods = ["POST"]\nheader = "Cookie"',
            {"host": "api.example.com", "path": "/login", "methods": ("POST",), "header": "cookie"},
        ),
    ],
)
def test_route_matchers(lines, fields):
    expected = {"host": None, "path_prefix": None, "pool": "app", "name": "routes[0]", **fields}
    assert _routes(_route(lines + '\npool = "app"\n')) == (config.Route(**expected),)


def test_routes_keep_file_order():
    text = _route('path = "/b"\npool = "app"\n[[listeners.web.routes]]\npath = "/a"\npool = "app"\n')
    assert [route.path for route in _routes(text)] == ["/b", "/a"]


def test_header_rules_keep_order_and_case():
    rules = config.loads(
        _rules('set = { "X-Zeta" = "1", "x-alpha" = "" }\nadd = { "Via" = "1.1 lb", "A" = "b" }\nremove = ["X-Z", "Srv"]')
    ).listeners["web"].http.request_headers
    # set and add keep the names as written (they are sent so); remove lists compare in lower case.
    assert rules == config.HeaderRules(
        set=(("X-Zeta", "1"), ("x-alpha", "")), add=(("Via", "1.1 lb"), ("A", "b")), remove=("x-z", "srv")
    )


@pytest.mark.parametrize(
    "lines",
    [
        'request_headers = {}',
        "[listeners.web.request_headers]\n",
        "[listeners.web.request_headers]\nset = {}\nadd = {}\nremove = []",
    ],
)
def test_empty_header_rules(lines):
    assert config.loads(_http(lines + "\n")).listeners["web"].http.request_headers == config.HeaderRules()


def test_header_rules_forms():
    text = _http(
        'request_headers.set.X-Env = "prod"\n'
        'request_headers.add."X-Via-Lb" = "1"\n'
        "response_headers = { remove = [\"X-Powered-By\"], set = { \"X-Frame-Options\" = \"DENY\" } }\n"
    )
    http = config.loads(text).listeners["web"].http
    assert http.request_headers == config.HeaderRules(set=(("X-Env", "prod"),), add=(("X-Via-Lb", "1"),))
    assert http.response_headers == config.HeaderRules(set=(("X-Frame-Options", "DENY"),), remove=("x-powered-by",))


def test_header_rule_names_and_values():
    # Every token character in a name; printable text, inner spaces and non-ASCII in a value.
    name = "!#$%&'*+-.^_`|~09azAZ"
    value = 'a b, c="d"; ünïcode €'
    text = _rules(f"set = {{ {json.dumps(name)} = {json.dumps(value, ensure_ascii=False)} }}")
    assert config.loads(text).listeners["web"].http.request_headers.set == ((name, value),)


def test_route_header_rules():
    text = _route(
        'path_prefix = "/api/"\npool = "app"\n'
        "[listeners.web.routes.request_headers]\n"
        'set = { "X-Api" = "1" }\n'
        "[listeners.web.routes.response_headers]\n"
        'remove = ["X-Internal"]\n'
    )
    (route,) = _routes(text)
    assert route.request_headers == config.HeaderRules(set=(("X-Api", "1"),))
    assert route.response_headers == config.HeaderRules(remove=("x-internal",))
    # A name the listener's rules use may appear again in a route's: they are separate tables.
    text2 = text.replace(HTTP_LISTENER, HTTP_LISTENER + 'request_headers.set.X-Api = "0"\n', 1)
    assert config.loads(text2).listeners["web"].http.request_headers.set == (("X-Api", "0"),)


@pytest.mark.parametrize(
    "lines,fields",
    [
        ("max_header_size = 1024\nmax_target = 1", {"max_header_size": 1024, "max_target": 1}),
        ("max_header_size = 1024\nmax_target = 1023", {"max_header_size": 1024, "max_target": 1023}),
        ("max_header_size = 32768\nmax_target = 32767", {"max_header_size": 32768, "max_target": 32767}),
        ("max_header_size = 8193", {"max_header_size": 8193, "max_target": 8192}),
        ("max_header_count = 1", {"max_header_count": 1}),
        ("max_header_count = 256", {"max_header_count": 256}),
        ('http_request_timeout = "1ms"', {"request_timeout": 0.001}),
        ('http_request_timeout = "1m"\nkeepalive_timeout = "1h"', {"request_timeout": 60, "keepalive_timeout": 3600}),
        ('forwarded = "x-forwarded"', {"forwarded": "x-forwarded"}),
        ('forwarded = "forwarded"', {"forwarded": "forwarded"}),
        ('forwarded = "both"', {"forwarded": "both"}),
        ('forwarded = "none"', {"forwarded": "none"}),
        ("hide_server = true", {"hide_server": True}),
    ],
)
def test_http_listener_settings(lines, fields):
    assert config.loads(_http(lines + "\n")).listeners["web"].http == config.HttpSettings(**fields)


def test_accept_proxy_in_both_modes():
    assert config.loads(_cfg(listener="accept_proxy = true")).listeners["web"].accept_proxy is True
    assert config.loads(_http("accept_proxy = true\n")).listeners["web"].accept_proxy is True


@pytest.mark.parametrize(
    "lines,fields",
    [
        ("keepalive_max_idle = 0", {"keepalive_max_idle": 0}),
        ("keepalive_max_idle = 10000", {"keepalive_max_idle": 10000}),
        ('response_timeout = "1ms"', {"response_timeout": 0.001}),
        ('response_timeout = "5m"\nkeepalive_timeout = "90s"', {"response_timeout": 300.0, "keepalive_timeout": 90.0}),
        ('sticky_cookie = ""', {"sticky_cookie": ""}),
        ('sticky_cookie = "SERVERID"', {"sticky_cookie": "SERVERID"}),
        ('sticky_cookie = "lb.srv-1_x"', {"sticky_cookie": "lb.srv-1_x"}),
    ],
)
def test_http_pool_settings(lines, fields):
    pool = config.loads(_http(f"[pools.app]\n{lines}\n")).pools["app"]
    defaults = {"response_timeout": 60.0, "keepalive_max_idle": 256, "keepalive_timeout": 30.0, "sticky_cookie": ""}
    got = {key: getattr(pool, key) for key in defaults}
    assert got == {**defaults, **fields}


def test_http_pool_keys_warn_on_a_pool_only_tcp_listeners_use():
    cfg = config.loads(_cfg(pool='sticky_cookie = "srv"\nresponse_timeout = "5s"'))
    assert cfg.pools["app"].sticky_cookie == "srv"
    assert cfg.warnings == (
        "pools.app.response_timeout: has no effect unless an http listener uses this pool",
        "pools.app.sticky_cookie: has no effect unless an http listener uses this pool",
    )


def test_http_pool_keys_do_not_warn_when_an_http_listener_uses_the_pool():
    text = _cfg(
        pool='keepalive_timeout = "5s"',
        tail='[listeners.www]\nbind = "127.0.0.1:80"\n[[listeners.www.routes]]\npath = "/"\npool = "app"',
    )
    assert config.loads(text).warnings == ()
    # Nor on a pool no listener uses (yet).
    assert config.loads(_cfg(tail='[pools.spare]\nkeepalive_max_idle = 4')).warnings == ()


def test_lower_case_method_is_a_warning():
    cfg = config.loads(_route('methods = ["GET", "purge"]\npool = "app"\n'))
    assert cfg.listeners["web"].routes[0].methods == ("GET", "purge")
    assert cfg.warnings == ("listeners.web.routes[0].methods[1]: 'purge' matches only that exact case, not 'PURGE'",)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("250us", 0.00025),
        ("1.5s", 1.5),
        ("100ms", 0.1),
        ("1h1m1s1ms", 3661.001),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "3", "3 secs", "-1s", "1d", "s", "1.s", " 2s", "2S", "1m 30s", 3, 1.5, None, True]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        config.parse_duration(text)


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text(MINIMAL)
    cfg = config.load(str(path))
    assert (cfg.source, cfg.sha256) == (str(path), hashlib.sha256(path.read_bytes()).hexdigest())


def test_load_missing_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.path == ""
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_load_rejects_non_utf8(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(path))


# ---- lb check -------------------------------------------------------------------


@pytest.fixture
def run_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = _check_command()

    def run(text, *args, env=None):
        pathlib.Path("lb.toml").write_text(text)
        return CliRunner().invoke(command, ["-c", "lb.toml", *args], env=env)

    return run


def test_check_ok(run_check):
    result = run_check(_cfg(tail='[[pools.app.backends]]\naddress = "10.0.0.2:80"'))
    assert result.exit_code == 0, result.output
    assert result.stdout == "lb.toml: ok (1 listener, 1 pool, 2 backends)\n"
    assert result.stderr == ""


def test_check_prints_warnings_to_stderr(run_check):
    result = run_check(_maglev(700))
    assert result.exit_code == 0
    assert result.stdout == "lb.toml: ok (1 listener, 1 pool, 700 backends)\n"
    assert result.stderr.startswith("warning: pools.app.table_size: 65537 is smaller than 100x the 700 backends")


def test_check_json(run_check):
    result = run_check(FULL, "--json")
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert out["ok"] is True
    assert (out["listeners"], out["pools"], out["backends"], out["warnings"]) == (4, 3, 4, [])
    assert out["sha256"] == hashlib.sha256(FULL.encode()).hexdigest()


def test_check_bad_config_exits_2(run_check):
    result = run_check(_cfg(pool="retries = 11"))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "error: pools.app.retries: 11 is out of range (0..10)\n"


def test_check_syntax_error_names_the_file(run_check):
    result = run_check("[listeners\n")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: lb.toml: TOML syntax error at line 1")


def test_check_bad_config_json(run_check):
    result = run_check(_cfg(pool='algorithm = "fastest"'), "--json")
    assert result.exit_code == 2
    out = json.loads(result.stdout)
    assert (out["ok"], out["path"]) == (False, "pools.app.algorithm")


def test_check_reads_lb_config_from_the_environment(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(MINIMAL)
    result = CliRunner().invoke(_check_command(), [], env={"LB_CONFIG": str(path)})
    assert result.exit_code == 0
    assert result.stdout == f"{path}: ok (1 listener, 1 pool, 1 backend)\n"


def test_check_missing_file_exits_2(tmp_path):
    result = CliRunner().invoke(_check_command(), ["-c", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'none.toml'}: cannot read config file")


def test_check_refuses_what_this_build_does_not_serve(run_check, monkeypatch):
    # `lb check` runs what a start and a reload run after load: check_runnable.
    import lb._fastpath

    monkeypatch.setattr(lb._fastpath, "IMPLEMENTED_ALGORITHMS", frozenset({"roundrobin"}))
    result = run_check(_cfg(pool='algorithm = "leastconn"'))
    assert result.exit_code == 2
    assert result.stderr == (
        "error: pools.app.algorithm: 'leastconn' is not in this build yet; use one of ['roundrobin']\n"
    )
