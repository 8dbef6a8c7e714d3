"""The config contract (DESIGN.md section 4): lb.config and `lb check`."""

import hashlib
import importlib.util
import json
import pathlib
import socket
import tomllib

import pytest
from click.testing import CliRunner

import lb
from lb import config
from lb.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent


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

[listeners.web]
bind = ["0.0.0.0:8080", "[::1]:8080"]
mode = "http"
pool = "app"
accept_proxy = true
idle_timeout = "30s"
backlog = 1024

  [[listeners.web.routes]]
  host = "API.example.com"
  path_prefix = "/v1/"
  pool = "api"

  [[listeners.web.routes]]
  host = "*.static.example.com"
  pool = "app"

[listeners.db]
bind = "*:5432"
mode = "tcp"
pool = "api"

[pools.app]
algorithm = "maglev"
hash_key = "cookie:session"
balance_factor = 1.25
table_size = 251
send_proxy = "v2"
connect_timeout = "500ms"
retries = 0

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

  [[pools.api.backends]]
  address = "10.0.1.1:9000"
"""


def test_full_config_loads_every_key():
    cfg = config.loads(FULL, source="full.toml")

    g = cfg.global_
    assert (g.workers, g.admin_socket, g.state_file) == (4, "/tmp/lb/admin.sock", "/tmp/lb/state.json")
    assert (g.user, g.group, g.drain_timeout, g.splice) == ("www", "www-data", 90.0, "never")
    assert g.max_worker_rss == 512 << 20
    assert g.worker_count() == 4

    assert list(cfg.listeners) == ["web", "db"]
    web = cfg.listeners["web"]
    assert [str(b) for b in web.bind] == ["0.0.0.0:8080", "[::1]:8080"]
    assert [b.family for b in web.bind] == [socket.AF_INET, socket.AF_INET6]
    assert (web.mode, web.pool, web.accept_proxy, web.idle_timeout, web.backlog) == ("http", "app", True, 30.0, 1024)
    assert web.routes == (
        config.Route(host="api.example.com", path_prefix="/v1/", pool="api"),
        config.Route(host="*.static.example.com", path_prefix=None, pool="app"),
    )
    db = cfg.listeners["db"]
    assert db.bind == (config.BindAddr("0.0.0.0", 5432, socket.AF_INET),)
    assert (db.mode, db.pool, db.routes) == ("tcp", "api", ())

    assert list(cfg.pools) == ["app", "api"]
    app = cfg.pools["app"]
    assert (app.algorithm, app.hash_key, app.balance_factor, app.table_size) == ("maglev", "cookie:session", 1.25, 251)
    assert (app.send_proxy, app.connect_timeout, app.retries) == ("v2", 0.5, 0)
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
    assert (cfg.source, cfg.warnings) == ("full.toml", ())
    assert cfg.sha256 == hashlib.sha256(FULL.encode()).hexdigest()


def _keys(table: dict, prefix: str = "") -> set[str]:
    """Key paths of a parsed TOML document with names and indexes replaced by '*'."""
    out = set()
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if prefix in ("listeners", "pools"):
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
        "listeners.*": config.LISTENER_KEYS,
        "listeners.*.routes": config.ROUTE_KEYS,
        "pools.*": config.POOL_KEYS,
        "pools.*.health": config.HEALTH_KEYS,
        "pools.*.passive": config.PASSIVE_KEYS,
        "pools.*.backends": config.BACKEND_KEYS,
    }
    return {f"{section}.{key}" for section, keys in sections.items() for key in keys}


def test_full_config_really_sets_every_key():
    assert _contract_keys() <= _keys(tomllib.loads(FULL))


def test_every_key_is_documented():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for path in sorted(_contract_keys()):
        key = path.rsplit(".", 1)[1]
        assert f"`{key}`" in docs or f"{key} =" in docs, f"{path} is not documented"


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
    pool = cfg.pools["app"]
    assert (pool.algorithm, pool.hash_key, pool.balance_factor, pool.table_size) == (
        "roundrobin",
        "source_ip",
        0,
        65537,
    )
    assert (pool.send_proxy, pool.connect_timeout, pool.retries) == ("off", 3.0, 2)
    assert pool.health == config.Health("tcp", "/healthz", (200, 399), 2.0, 1.0, 2, 3, 0.0)
    assert pool.backends[0] == config.Backend("10.0.0.1:80", "10.0.0.1", 80, socket.AF_INET, "10.0.0.1:80", 100, False)
    assert cfg.source == "<string>"


def test_default_mode_is_http():
    cfg = config.loads(MINIMAL.replace('mode = "tcp"\n', ""))
    assert cfg.listeners["web"].mode == "http"


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
    assert (out["listeners"], out["pools"], out["backends"], out["warnings"]) == (2, 2, 3, [])
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
