"""API keys ([auth.NAME] type = "api_key", docs/gateway.md): 401 with
WWW-Authenticate for a missing or unknown key (the backend never sees the
request), the identity forwarded and the key removed, keys added and revoked
live by `lb key` (in force for the next request, kept in the keys file), and
limits keyed by the identity."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import free_port, lb_config, wait_for
from http_client import assert_error_page, parse_responses, read_to_eof
from lb import config
from lb._fastpath import phase_plan
from lb.shm import create_for_config

ROOT = Path(__file__).resolve().parent.parent
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_file(tmp_path, **keys) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("# test keys\n" + "".join(f"{sha(k)} {ident}  # {ident}\n" for ident, k in keys.items()))
    return path


def auth_config(path, extra: str = "", listener_extra: str = "") -> str:
    return textwrap.dedent(f"""\
        [auth.api]
        type = "api_key"
        keys_file = "{path}"
        {extra}
        [listeners.w]
        bind = ["127.0.0.1:1"]
        pool = "p"
        auth = "api"
        {listener_extra}
        [pools.p]
        [[pools.p.backends]]
        address = "127.0.0.1:9"
        """)


def test_the_table_finds_a_key_by_its_hash_and_publishes_flip(tmp_path):
    cfg = config.loads(auth_config(keys_file(tmp_path, alice=ALICE)))
    assert cfg.auth["api"].keys == ((bytes.fromhex(sha(ALICE)), "alice"),)
    assert phase_plan(cfg.listeners["w"])["request"] == ["route", "auth"]
    shm = create_for_config(cfg, 3, str(tmp_path / "lb.shm"))
    try:
        assert shm.auth_lookup(0, ALICE.encode()) == "alice"
        assert shm.auth_lookup(0, BOB.encode()) is None
        many = [(hashlib.sha256(b"k%d" % i).digest(), f"id{i}") for i in range(5000)]
        shm.auth_publish(0, many)
        assert all(shm.auth_lookup(0, b"k%d" % i) == f"id{i}" for i in range(0, 5000, 7))
        assert shm.auth_lookup(0, ALICE.encode()) is None
        shm.auth_publish(0, [])
        assert shm.auth_lookup(0, b"k1") is None
    finally:
        shm.unlink()


@pytest.mark.parametrize("extra, listener_extra, message", [
    ('', 'mode = "tcp"', 'listeners.w.auth: needs mode = "http"'),
    ('jwks = "/x"', "", 'auth.api.jwks: not a key of type = "api_key"'),
    ('query = "api_key"\nheader = "X-Key"', "", "auth.api.query: and header exclude each other"),
    ('identity_header = "X Id"', "", "auth.api.identity_header"),
])
def test_bad_auth_is_named_by_key_path(tmp_path, extra, listener_extra, message):
    text = auth_config(keys_file(tmp_path, alice=ALICE), extra, listener_extra)
    with pytest.raises(config.ConfigError) as e:
        config.loads(text)
    assert message in str(e.value)


def test_other_types_and_bad_key_files_are_refused(tmp_path):
    with pytest.raises(config.ConfigError, match=r"auth.api.type: unknown type 'oauth' \(one of api_key, basic, jwt\)"):
        config.loads(auth_config(tmp_path / "k").replace('type = "api_key"', 'type = "oauth"'))
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{sha(ALICE)} alice\nnot-a-hash bob\n")
    with pytest.raises(config.ConfigError, match=r"auth.api.keys_file: .*bad.txt line 2: not '<sha256 hex> <identity>'"):
        config.loads(auth_config(bad))
    bad.write_text(f"{sha(ALICE)} alice\n{sha(ALICE)} bob\n")
    with pytest.raises(config.ConfigError, match=r"line 2: the same key as 'alice'"):
        config.loads(auth_config(bad))


# ---- in a running lb ------------------------------------------------------------------------

def lb_cli(sock, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", "--socket", str(sock), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def start(run_lb, tmp_path, origin, auth_extra="", listener_extra="", more=""):
    sock = tmp_path / "admin.sock"
    port = free_port()
    path = keys_file(tmp_path, alice=ALICE)
    extra = f'admin_socket = "{sock}"\nstate_file = "{tmp_path / "state.json"}"'
    lb = run_lb(lb_config(port, [(origin.address, "o", 100)], global_extra=extra, mode="http",
                          listener_extra=listener_extra)
                + f'\n[auth.api]\ntype = "api_key"\nkeys_file = "{path}"\n{auth_extra}\n{more}')
    wait_for(sock.exists, 10, "the admin socket")
    return lb, sock, port, path


def request(port: int, headers: str = "", target: str = "/"):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        return parse_responses(read_to_eof(s))[0]


def origin_saw(origin, seen: list, what: str, n: int) -> None:
    """Wait until the origin reported n requests whose line has `what` (its
    reports come through a pipe, after its answers may have)."""
    def count():
        seen.extend(origin.requests())
        return len([line for line in seen if line.startswith("request") and what in line]) == n
    wait_for(count, 10, f"the origin to report {n} requests of {what}")


def echoed_headers(response) -> dict:
    return {name.lower(): value for name, value in json.loads(response.body)["headers"]}


def test_a_request_needs_a_known_key_and_the_backend_learns_who(origins, run_lb, tmp_path):
    origin = origins()
    lb, sock, port, _ = start(run_lb, tmp_path, origin, listener_extra='auth = "api"')
    for headers in ("", f"X-Api-Key: {BOB}\r\n", "X-Api-Key: \r\n"):
        r = request(port, headers)
        assert_error_page(r, 401)
        assert r.headers["www-authenticate"] == 'ApiKey realm="api"'
    assert not [line for line in origin.requests() if line.startswith("request")]
    r = request(port, f"X-Api-Key: {ALICE}\r\nX-Api-Identity: mallory\r\n")
    assert r.status == 200
    seen = echoed_headers(r)
    assert seen["x-api-identity"] == "alice"          # the client's own copy is gone
    assert "x-api-key" not in seen                     # strip = true by default
    counts = json.loads(lb_cli(sock, "key", "list", "api", "--json").stdout)["counts"]
    assert counts == {"ok": 1, "missing": 2, "invalid": 1, "verified": 0, "cached": 0, "busy": 0}


def test_keys_added_and_revoked_live_and_kept_in_the_file(origins, run_lb, tmp_path):
    origin = origins()
    lb, sock, port, path = start(run_lb, tmp_path, origin, listener_extra='auth = "api"')
    added = lb_cli(sock, "key", "add", "api", "bob", "--json")
    assert added.returncode == 0, added.stderr
    bob = json.loads(added.stdout)["key"]
    # in force for the next request once the command returned: no reload, no wait
    assert request(port, f"X-Api-Key: {bob}\r\n").status == 200
    assert f"{sha(bob)} bob" in path.read_text() and bob not in path.read_text()
    listed = json.loads(lb_cli(sock, "key", "list", "api", "--json").stdout)["keys"]
    assert [k["identity"] for k in listed] == ["alice", "bob"]
    revoked = lb_cli(sock, "key", "revoke", "api", "alice")
    assert revoked.returncode == 0, revoked.stderr
    assert request(port, f"X-Api-Key: {ALICE}\r\n").status == 401
    assert request(port, f"X-Api-Key: {bob}\r\n").status == 200
    assert lb_cli(sock, "key", "revoke", "api", "alice").returncode == 1   # not there any more
    # a reload reads the file: bob stays, alice stays revoked
    assert lb_cli(sock, "reload").returncode == 0
    assert request(port, f"X-Api-Key: {bob}\r\n").status == 200
    assert request(port, f"X-Api-Key: {ALICE}\r\n").status == 401


def test_a_route_with_a_query_key_and_a_limit_per_identity(origins, run_lb, tmp_path):
    origin = origins()
    path = tmp_path / "q.txt"
    path.write_text(f"{sha(ALICE)} alice\n{sha(BOB)} bob\n")
    more = (f'[auth.q]\ntype = "api_key"\nkeys_file = "{path}"\nquery = "api_key"\n'
            '[limits.per_key]\nkey = "api_key"\nrate = "1/1h"\nburst = 1\n')
    lb, sock, port, _ = start(run_lb, tmp_path, origin, more=more, listener_extra=(
        '\n  [[listeners.t.routes]]\n  path_prefix = "/api/"\n  pool = "p"\n  auth = "q"\n'
        '  limits = ["per_key"]\n'))
    assert request(port, "", "/free").status == 200                 # no auth outside the route
    assert request(port, "", "/api/x").status == 401
    r = request(port, "", f"/api/x?api_key={ALICE}")
    assert r.status == 200 and echoed_headers(r)["x-api-identity"] == "alice"
    # the backend never gets the key: the parameter is cut out of the target
    assert json.loads(r.body)["target"] == "/api/x"
    r = request(port, "", f"/api/x?a=1&api_key={ALICE}")
    assert r.status == 200 and json.loads(r.body)["target"] == "/api/x?a=1"
    assert request(port, "", f"/api/x?api_key={ALICE}").status == 429   # alice's burst is spent
    r = request(port, "", f"/api/x?api_key={BOB}&b=2")                 # bob has his own
    assert r.status == 200 and json.loads(r.body)["target"] == "/api/x?b=2"
    shown = json.loads(lb_cli(sock, "limits", "show", "per_key", "--json").stdout)["limits"][0]["top"]
    assert sorted(k["key"] for k in shown) == ["alice", "bob"]


# ---- HTTP Basic ------------------------------------------------------------------------------

def crypt_hash(password: str, method: str, rounds: int | None = None) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(getattr(crypt, method), rounds=rounds))


def basic(user: str, password: str) -> str:
    import base64

    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() + "\r\n"


def start_basic(run_lb, tmp_path, origin, users: dict, extra: str = "", workers: int = 1):
    sock = tmp_path / "admin.sock"
    port = free_port()
    path = tmp_path / "htpasswd"
    path.write_text("# users\n" + "".join(f"{u}:{h}\n" for u, h in users.items()))
    gextra = f'admin_socket = "{sock}"\nstate_file = "{tmp_path / "state.json"}"'
    lb = run_lb(lb_config(port, [(origin.address, "o", 100)], global_extra=gextra, mode="http", workers=workers,
                          listener_extra='\n  [[listeners.t.routes]]\n  path_prefix = "/private/"\n  pool = "p"\n'
                                         '  auth = "staff"\n')
                + f'\n[auth.staff]\ntype = "basic"\nhtpasswd = "{path}"\n{extra}\n')
    wait_for(sock.exists, 10, "the admin socket")
    return lb, sock, port


def status_auth(sock) -> dict:
    return {a["name"]: a for a in json.loads(lb_cli(sock, "status", "--json").stdout)["auth"]}


def test_basic_checks_bcrypt_and_sha2_crypt_off_the_loop_and_caches_successes(origins, run_lb, tmp_path):
    origin = origins()
    users = {"ann": crypt_hash("ann-pw", "METHOD_BLOWFISH", 1 << 4), "ben": crypt_hash("ben-pw", "METHOD_SHA512"),
             "cy": crypt_hash("cy-pw", "METHOD_SHA256")}
    lb, sock, port = start_basic(run_lb, tmp_path, origin, users)
    assert request(port, "", "/open").status == 200
    for headers in ("", basic("ann", "wrong"), basic("nobody", "x"), "Authorization: Basic !!!\r\n",
                    "Authorization: Bearer abc\r\n"):
        r = request(port, headers, "/private/x")
        assert_error_page(r, 401)
        assert r.headers["www-authenticate"] == 'Basic realm="staff", charset="UTF-8"'
    for user in users:
        r = request(port, basic(user, f"{user}-pw") + "X-Auth-User: mallory\r\n", "/private/x")
        assert r.status == 200, user
        seen = echoed_headers(r)
        assert seen["x-auth-user"] == user and "authorization" not in seen
    seen: list = []
    origin_saw(origin, seen, "/private/", 3)      # the 401s never reached it
    # the same credentials again: from the cache, no second slow hash
    assert request(port, basic("ann", "ann-pw"), "/private/y").status == 200
    counts = status_auth(sock)["staff"]["counts"]
    assert (counts["ok"], counts["cached"], counts["verified"]) == (4, 1, 4)
    assert counts["missing"] == 2 and counts["invalid"] == 3


def test_a_wrong_password_under_a_slow_hash_blocks_no_other_client(origins, run_lb, tmp_path):
    """bcrypt cost 14 takes a second or more here: while a wrong password is
    being checked, the worker's one event loop serves other clients, and a
    cached user, at once."""
    origin = origins()
    users = {"slow": crypt_hash("right", "METHOD_BLOWFISH", 1 << 14), "fast": crypt_hash("pw", "METHOD_SHA256")}
    lb, sock, port = start_basic(run_lb, tmp_path, origin, users)
    assert request(port, basic("fast", "pw"), "/private/warm").status == 200
    pending = socket.create_connection(("127.0.0.1", port), timeout=30)
    pending.sendall(f"GET /private/x HTTP/1.1\r\nHost: x\r\n{basic('slow', 'wrong')}\r\n".encode())
    # lb took its head (and parked it for the check) before the others come
    wait_for(lambda: lb.shm.worker_stats(0)["http_requests"] == 2, 10, "the request taken")
    # answered while the slow check is still running
    for _ in range(3):
        assert request(port, "", "/open").status == 200
        assert request(port, basic("fast", "pw"), "/private/y").status == 200
    pending.setblocking(False)
    with pytest.raises(BlockingIOError):
        pending.recv(1)              # the wrong password's answer has not come yet
    pending.settimeout(60)
    r = parse_responses(read_to_eof(pending))[0]
    assert_error_page(r, 401)
    pending.close()
    counts = status_auth(sock)["staff"]["counts"]
    assert counts["invalid"] == 1 and counts["cached"] == 3


def test_bad_htpasswd_lines_are_named(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text("ann:$2y$05$abcdefghijklmnopqrstuu5s2v8.xPLGhJgZb3ngf1G9lJXBb0D2a\nben:{SHA}abc\n")
    text = auth_config(path).replace('type = "api_key"\n        keys_file', 'type = "basic"\n        htpasswd')
    text = textwrap.dedent(f"""\
        [auth.api]
        type = "basic"
        htpasswd = "{path}"
        [listeners.w]
        bind = ["127.0.0.1:1"]
        pool = "p"
        auth = "api"
        [pools.p]
        [[pools.p.backends]]
        address = "127.0.0.1:9"
        """)
    with pytest.raises(config.ConfigError, match=r"auth.api.htpasswd: .*htpasswd line 2: user 'ben': not a bcrypt"):
        config.loads(text)
    with pytest.raises(config.ConfigError, match=r'auth.api.keys_file: not a key of type = "basic"'):
        config.loads(text.replace('htpasswd = "', 'keys_file = "/x"\nhtpasswd = "'))


def test_a_parked_request_keeps_its_own_client_certificate_fields(origins, run_lb, tmp_path):
    """On a TLS listener with client certificates, the fields the client_cert
    step wrote for a request are the connection's own when it resumes after
    its password check, whatever other clients' requests wrote meanwhile."""
    import ssl
    import threading

    from tests.test_tls import Pki, certs_toml, client_context, echo_of, https, tls_config

    pki = Pki(tmp_path / "pki")
    port = free_port()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"slow:{crypt_hash('pw', 'METHOD_BLOWFISH', 1 << 13)}\n"
                        f"fast:{crypt_hash('pw', 'METHOD_SHA256')}\n")
    tls = certs_toml(pki.default) + f'client_ca = "{pki.ca_path}"\nclient_verify = "required"'
    lb = run_lb(tls_config(port, [origins()], tls, listener='auth = "staff"')
                + f'\n[auth.staff]\ntype = "basic"\nhtpasswd = "{htpasswd}"\n')

    def context(name):
        leaf = pki.ca.leaf(name, (name,), client=True)
        ctx = client_context(pki.ca_path)
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
        return ctx

    import base64

    def creds(user):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()}

    got = {}

    def slow():
        with https(port, context("client-slow"), timeout=60) as conn:
            got["echo"] = echo_of(conn, "GET", "/slow", headers=creds("slow"))

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: sum(w["http_requests"] for w in lb.worker_stats()) == 1, 20, "the slow request taken")
    with https(port, context("client-fast")) as conn:
        for _ in range(3):
            fields = {n.lower(): v for n, v in echo_of(conn, "GET", "/fast", headers=creds("fast"))["headers"]}
            assert "CN=client-fast" in fields["x-client-cert-subject"]
    t.join(60)
    fields = {n.lower(): v for n, v in got["echo"]["headers"]}
    assert "CN=client-slow" in fields["x-client-cert-subject"] and fields["x-auth-user"] == "slow"
