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
    ('query = "api_key"\nstrip = true', "", "auth.api.strip: a key in the query is not removed"),
    ('identity_header = "X Id"', "", "auth.api.identity_header"),
])
def test_bad_auth_is_named_by_key_path(tmp_path, extra, listener_extra, message):
    text = auth_config(keys_file(tmp_path, alice=ALICE), extra, listener_extra)
    with pytest.raises(config.ConfigError) as e:
        config.loads(text)
    assert message in str(e.value)


def test_other_types_and_bad_key_files_are_refused(tmp_path):
    with pytest.raises(config.ConfigError, match=r"auth.api.type: 'jwt' is not in this build yet"):
        config.loads(auth_config(tmp_path / "k").replace('type = "api_key"', 'type = "jwt"'))
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
    assert counts == {"ok": 1, "missing": 2, "invalid": 1}


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
    more = (f'[auth.q]\ntype = "api_key"\nkeys_file = "{path}"\nquery = "api_key"\nstrip = false\n'
            '[limits.per_key]\nkey = "api_key"\nrate = "1/1h"\nburst = 1\n')
    lb, sock, port, _ = start(run_lb, tmp_path, origin, more=more, listener_extra=(
        '\n  [[listeners.t.routes]]\n  path_prefix = "/api/"\n  pool = "p"\n  auth = "q"\n'
        '  limits = ["per_key"]\n'))
    assert request(port, "", "/free").status == 200                 # no auth outside the route
    assert request(port, "", "/api/x").status == 401
    r = request(port, "", f"/api/x?api_key={ALICE}")
    assert r.status == 200 and echoed_headers(r)["x-api-identity"] == "alice"
    assert request(port, "", f"/api/x?a=1&api_key={ALICE}").status == 200
    assert request(port, "", f"/api/x?api_key={ALICE}").status == 429   # alice's burst is spent
    assert request(port, "", f"/api/x?api_key={BOB}").status == 200     # bob has his own
    shown = json.loads(lb_cli(sock, "limits", "show", "per_key", "--json").stdout)["limits"][0]["top"]
    assert sorted(k["key"] for k in shown) == ["alice", "bob"]
