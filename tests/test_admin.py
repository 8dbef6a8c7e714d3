"""The control plane (docs/admin.md) from the client side: the `lb` commands
that talk to a running daemon.

First the client alone, against a tiny fake daemon in a thread (framing, the
request of each command, exit codes, --json, socket selection, completion);
then the real CLI (`python -m lb ...` in a subprocess) against a real `lb run`:
every change visible in traffic and in `lb status --json`, kept across a
restart, refused to a uid that is not allowed, and reloads and a worker's
death that drop nothing they should not.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner

from backend_server import TRANSFORM
from conftest import free_port, lb_config, wait_for
from lb import __version__
from lb.cli import main

ROOT = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

# ---- the client against a fake daemon ------------------------------------------------


class FakeDaemon:
    """A UNIX socket served by a thread: every request line is recorded (raw and
    parsed) and answered with answer(request) -> response dict, or the
    connection is closed when it returns None. greeting: sent at accept, before
    anything is read, and the connection closed (what a refused peer gets)."""

    def __init__(self, path: Path, answer=None, greeting: dict | None = None):
        self.path = str(path)
        self.answer = answer or (lambda req: {"v": 1, "ok": True, "result": {}})
        self.greeting = greeting
        self.raw: list[bytes] = []
        self.requests: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn):
        with conn:
            if self.greeting is not None:
                conn.sendall(json.dumps(self.greeting).encode() + b"\n")
                return
            buf = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.raw.append(line + b"\n")
                    request = json.loads(line)
                    self.requests.append(request)
                    response = self.answer(request)
                    if response is None:
                        return
                    conn.sendall(json.dumps(response).encode() + b"\n")

    def close(self):
        self.sock.close()


@pytest.fixture
def fake(tmp_path):
    started = []

    def start(answer=None, greeting=None, name="fake.sock") -> FakeDaemon:
        d = FakeDaemon(tmp_path / name, answer, greeting)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def ok(result):
    return lambda req: {"v": 1, "ok": True, "result": result}


def invoke(*args, env=None):
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


# The example of docs/admin.md, with a second pool that can take no connection.
STATUS = {
    "version": "0.1.0", "pid": 1234, "uptime": 12.5, "generation": 2,
    "config": {"path": "/etc/lb/lb.toml", "sha256": "ab" * 32},
    "listeners": [{"name": "web", "bind": ["0.0.0.0:80"], "mode": "tcp", "pool": "app"}],
    "pools": {
        "app": {
            "algorithm": "roundrobin", "empty_because": None,
            "backends": {
                "app1": {"address": "10.0.0.11:8080", "health": "up", "admin": "ready",
                         "weight": 100, "eff_weight": 100, "backup": False,
                         "active": 3, "total": 120, "bytes_in": 1024, "bytes_out": 65536,
                         "connect_errors": 0, "connect_timeouts": 0,
                         "check": "passed, check took 0.2ms", "down_reason": None}}},
        "api": {
            "algorithm": "maglev", "empty_because": "no backend can take connections: api1 drain",
            "backends": {
                "api1": {"address": "10.0.0.21:9000", "health": "up", "admin": "drain",
                         "weight": 100, "eff_weight": 100, "backup": False,
                         "active": 0, "total": 7, "bytes_in": 0, "bytes_out": 0,
                         "connect_errors": 2, "connect_timeouts": 1,
                         "check": None, "down_reason": None}}},
    },
    "workers": [{"index": 0, "pid": 1240, "generation": 2, "state": "running",
                 "cpu_percent": 1.5, "rss": 17000000, "open_fds": 12,
                 "active": 3, "accepted": 120, "accept_paused": 0, "restarts": 0},
                {"index": 0, "pid": 1200, "generation": 1, "state": "draining",
                 "cpu_percent": 0.0, "rss": 16000000, "open_fds": 9,
                 "active": 1, "accepted": 80, "accept_paused": 0, "restarts": 0}],
    "checker": {"pid": 1242, "restarts": 0},
}


def test_one_request_line_and_the_result_as_json(fake):
    d = fake(ok(STATUS))
    code, out, err = invoke("--socket", d.path, "status", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == STATUS
    assert d.raw == [b'{"v": 1, "cmd": "status"}\n']


@pytest.mark.parametrize("argv, cmd, args", [
    (["pool", "list"], "pool.list", None),
    (["pool", "show", "app"], "pool.show", {"pool": "app"}),
    (["backend", "add", "app", "10.0.0.5:80"], "backend.add",
     {"pool": "app", "address": "10.0.0.5:80", "weight": 100, "backup": False}),
    (["backend", "add", "app", "10.0.0.5:80", "--name", "n5", "--weight", "7", "--backup"], "backend.add",
     {"pool": "app", "address": "10.0.0.5:80", "name": "n5", "weight": 7, "backup": True}),
    (["backend", "remove", "app", "app1"], "backend.remove", {"pool": "app", "name": "app1"}),
    (["backend", "remove", "app", "app1", "--wait"], "backend.remove", {"pool": "app", "name": "app1", "wait": True}),
    (["backend", "remove", "app", "app1", "--timeout", "2.5"], "backend.remove",
     {"pool": "app", "name": "app1", "wait": True, "timeout": 2.5}),
    (["backend", "set-weight", "app", "app1", "0"], "backend.set_weight", {"pool": "app", "name": "app1", "weight": 0}),
    (["backend", "drain", "app", "app1"], "backend.set_state", {"pool": "app", "name": "app1", "state": "drain"}),
    (["backend", "maint", "app", "app1"], "backend.set_state", {"pool": "app", "name": "app1", "state": "maint"}),
    (["backend", "ready", "app", "app1"], "backend.set_state", {"pool": "app", "name": "app1", "state": "ready"}),
    (["reload"], "reload", None),
    (["acl", "show"], "acl.show", None),
    (["acl", "show", "office", "10.1.2.3", "--prefixes"], "acl.show",
     {"name": "office", "address": "10.1.2.3", "prefixes": True}),
    (["acl", "add", "office", "10.0.0.0/8", "!10.1.0.0/16"], "acl.add",
     {"name": "office", "prefixes": ["10.0.0.0/8", "!10.1.0.0/16"]}),
    (["acl", "remove", "office", "10.0.0.0/8"], "acl.remove", {"name": "office", "prefixes": ["10.0.0.0/8"]}),
    (["acl", "load", "office", "/etc/lb/office.txt"], "acl.load", {"name": "office", "file": "/etc/lb/office.txt"}),
    (["stop"], "stop", {"fast": False}),
    (["stop", "--fast"], "stop", {"fast": True}),
])
def test_each_command_is_one_verb(fake, argv, cmd, args):
    d = fake(ok({"pools": [], "backends": {}, "generation": 3, "config": {}, "stopping": "graceful"}))
    code, out, err = invoke("--socket", d.path, *argv)
    assert code == 0, err
    expected = {"v": 1, "cmd": cmd}
    if args is not None:
        expected["args"] = args
    assert d.requests == [expected]


@pytest.mark.parametrize("code, exit_code", [
    ("invalid", 2), ("config", 2), ("not_found", 1), ("conflict", 1), ("failed", 1), ("denied", 1),
    ("version", 1), ("something_new", 1),
])
def test_error_codes_map_to_exit_codes(fake, code, exit_code):
    d = fake(lambda req: {"v": 1, "ok": False, "code": code, "error": f"it went wrong ({code})"})
    rc, out, err = invoke("--socket", d.path, "backend", "drain", "app", "x")
    assert rc == exit_code
    assert out == ""
    assert f"it went wrong ({code})" in err and err.startswith("error: ")


def test_reload_refused_prints_the_key_path(fake):
    message = "pools.app.backends[2].address: port out of range"
    d = fake(lambda req: {"v": 1, "ok": False, "code": "config", "error": message})
    rc, out, err = invoke("--socket", d.path, "reload")
    assert rc == 2
    assert err.splitlines()[0] == f"error: {message}"
    assert "previous" in err


def test_reload_prints_the_generation(fake):
    d = fake(ok({"generation": 7, "config": {"path": "/etc/lb/lb.toml", "sha256": "cd" * 32}}))
    rc, out, err = invoke("--socket", d.path, "reload")
    assert rc == 0
    assert "generation 7" in out


def test_every_read_and_write_command_has_json(fake):
    result = {"pool": "app", "name": "app1", "weight": 5}
    d = fake(ok(result))
    for argv in (["backend", "set-weight", "app", "app1", "5"], ["pool", "list"], ["pool", "show", "app"],
                 ["reload"], ["stop"], ["backend", "add", "app", "1.2.3.4:5"], ["backend", "remove", "app", "x"],
                 ["backend", "ready", "app", "x"], ["acl", "show"], ["acl", "add", "a", "10.0.0.0/8"],
                 ["acl", "remove", "a", "10.0.0.0/8"], ["acl", "load", "a", "/tmp/a.txt"]):
        rc, out, err = invoke("--socket", d.path, *argv, "--json")
        assert rc == 0, (argv, err)
        assert json.loads(out) == result, argv


def test_status_table(fake):
    d = fake(ok(STATUS))
    rc, out, err = invoke("--socket", d.path, "status")
    assert rc == 0, err
    assert "generation 2" in out and "/etc/lb/lb.toml" in out and "abababababab" in out
    for word in ("web", "0.0.0.0:80", "app1", "10.0.0.11:8080", "passed, check took 0.2ms", "1240", "draining",
                 "16.2M", "64.0K"):
        assert word in out, word
    assert "! no backend can take connections: api1 drain" in out
    # the pool that can take connections has no such line
    app_section = out.split("pool app")[1].split("pool api")[0]
    assert "!" not in app_section


def test_top_redraws_with_rates(fake):
    totals = iter(range(0, 10_000, 50))

    def answer(req):
        s = json.loads(json.dumps(STATUS))
        s["pools"]["app"]["backends"]["app1"]["total"] = next(totals)
        return {"v": 1, "ok": True, "result": s}

    d = fake(answer)
    rc, out, err = invoke("--socket", d.path, "top", "--iterations", "3", "--interval", "0.1")
    assert rc == 0, err
    assert out.count("pool app") == 3
    assert "CONN/S" in out
    # three status requests on one connection
    assert [r["cmd"] for r in d.requests] == ["status"] * 3


def test_top_ends_with_exit_3_when_the_daemon_goes(fake):
    answers = iter([ok(STATUS)(None), None, None])
    d = fake(lambda req: next(answers))
    rc, out, err = invoke("--socket", d.path, "top", "--interval", "0.1")
    assert out.count("pool app") == 1
    assert rc == 1 and "closed the connection without answering" in err
    d.close()
    os.unlink(d.path)
    rc, out, err = invoke("--socket", d.path, "top")
    assert rc == 3 and "not running" in err


def test_not_running_is_exit_3(tmp_path):
    path = tmp_path / "none.sock"
    rc, out, err = invoke("--socket", str(path), "status")
    assert rc == 3
    assert err == f"error: lb is not running (no socket at {path})\n"
    # a socket file left behind, with nothing listening
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    rc, out, err = invoke("--socket", str(path), "backend", "drain", "p", "b")
    assert rc == 3
    assert err.startswith("error: lb is not running") and str(path) in err


def test_socket_unreachable_for_permissions_is_exit_3():
    """A socket this user may not connect to (mode 0600, owned by root)."""
    directory = tempfile.mkdtemp(prefix="lb-admin-")
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "admin.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen(1)
        os.chmod(path, 0o600)
        proc = subprocess.run([*NOBODY, sys.executable, "-m", "lb", "--socket", path, "status"],
                              capture_output=True, text=True, cwd=ROOT, timeout=30)
        s.close()
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr == f"error: cannot reach lb at {path}: permission denied\n"
    finally:
        shutil.rmtree(directory)


def test_refused_at_accept_is_still_read(fake):
    """The daemon answers `denied` at accept and closes, maybe before our request
    is written: the answer is read either way."""
    d = fake(greeting={"v": 1, "ok": False, "code": "denied", "error": "uid 65534 may not use the admin socket"})
    for _ in range(20):
        rc, out, err = invoke("--socket", d.path, "status")
        assert rc == 1
        assert "denied" in err and "uid 65534" in err


def test_closed_without_an_answer_is_exit_1(fake):
    d = fake(lambda req: None)
    rc, out, err = invoke("--socket", d.path, "status")
    assert rc == 1
    assert "closed the connection without answering" in err


def test_which_socket(fake, tmp_path):
    by_env = fake(ok({"pools": [{"name": "env"}]}), name="env.sock")
    by_option = fake(ok({"pools": [{"name": "option"}]}), name="option.sock")
    by_config = fake(ok({"pools": [{"name": "config"}]}), name="config.sock")
    config = tmp_path / "lb.toml"
    config.write_text(f'[global]\nadmin_socket = "{by_config.path}"\nworkers = "oops, invalid"\n')

    def pools(*args, env=None):
        rc, out, err = invoke(*args, "pool", "list", "--json", env=env)
        assert rc == 0, err
        return json.loads(out)["pools"][0]["name"]

    assert pools("--socket", by_option.path) == "option"
    assert pools(env={"LB_ADMIN_SOCKET": by_env.path}) == "env"
    assert pools("--socket", by_option.path, env={"LB_ADMIN_SOCKET": by_env.path}) == "option"
    # a config the daemon would refuse still names its socket
    assert pools("-c", str(config)) == "config"
    assert pools("-c", str(config), env={"LB_ADMIN_SOCKET": by_env.path}) == "env"
    # nothing given: the default socket (no daemon there in a test)
    rc, out, err = invoke("status", env={"LB_ADMIN_SOCKET": None})
    assert rc == 3 and "/run/lb/admin.sock" in err
    config.write_text("[global\n")
    rc, out, err = invoke("-c", str(config), "status")
    assert rc == 2 and "TOML" in err
    assert "LB_ADMIN_SOCKET" in invoke("--help")[1]


def complete(args: list[str], incomplete: str) -> list[str]:
    items = ShellComplete(main, {}, "lb", "_LB_COMPLETE").get_completions(args, incomplete)
    return [item.value for item in items]


def test_completion_of_pool_and_backend_names(fake, tmp_path):
    def answer(req):
        if req["cmd"] == "pool.list":
            return {"v": 1, "ok": True, "result": {"pools": [{"name": "app"}, {"name": "api"}, {"name": "web"}]}}
        if req["cmd"] == "pool.show" and req["args"]["pool"] == "app":
            return {"v": 1, "ok": True, "result": {"name": "app", "backends": {"app1": {}, "app2": {}, "x": {}}}}
        return {"v": 1, "ok": False, "code": "not_found", "error": "no"}

    d = fake(answer)
    assert complete(["--socket", d.path, "pool", "show"], "a") == ["app", "api"]
    assert complete(["--socket", d.path, "backend", "drain"], "") == ["app", "api", "web"]
    assert complete(["--socket", d.path, "backend", "set-weight", "app"], "app") == ["app1", "app2"]
    assert complete(["--socket", d.path, "backend", "remove", "api"], "") == []
    # no daemon: nothing, silently
    missing = str(tmp_path / "missing.sock")
    assert complete(["--socket", missing, "pool", "show"], "") == []
    assert complete(["--socket", missing, "backend", "maint", "app"], "") == []


# ---- the real CLI against a real daemon -----------------------------------------------


def lb_cli(sock, *args, user: list[str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*(user or []), sys.executable, "-m", "lb", "--socket", str(sock), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def lb_ok(sock, *args) -> str:
    proc = lb_cli(sock, *args)
    assert proc.returncode == 0, f"lb {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def status_json(sock) -> dict:
    return json.loads(lb_ok(sock, "status", "--json"))


def start_lb(run_lb, tmp_path, backends, sock_dir: Path | None = None, **kwargs):
    """A daemon with its admin socket and state file under the test's directory."""
    sock = (sock_dir or tmp_path) / "admin.sock"
    port = kwargs.pop("port", None) or free_port()
    extra = f'admin_socket = "{sock}"\nstate_file = "{tmp_path / "state.json"}"'
    lb = run_lb(lb_config(port, backends, global_extra=extra, **kwargs))
    wait_for(sock.exists, 10, "the admin socket")
    return lb, sock, port


def hello(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.makefile("rb").readline().decode().strip()


def names(port: int, n: int) -> collections.Counter:
    return collections.Counter(hello(port) for _ in range(n))


def exchange(s: socket.socket, message: bytes) -> None:
    """Send one message on a transform connection and read its answer."""
    s.sendall(message)
    want = message.translate(TRANSFORM)
    got = b""
    while len(got) < len(want):
        chunk = s.recv(len(want) - len(got))
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    if got != want:
        raise AssertionError(f"wrong answer {got!r}")


def test_read_commands_against_the_daemon(backends, run_lb, tmp_path):
    b1, b2 = backends("b1", hello=True), backends("b2", hello=True)
    lb, sock, port = start_lb(run_lb, tmp_path, [b1, b2], workers=2)
    st = status_json(sock)
    config_bytes = lb.config_path.read_bytes()
    assert st["pid"] == lb.proc.pid and st["generation"] == 1 and st["uptime"] >= 0
    assert st["config"] == {"path": str(lb.config_path), "sha256": hashlib.sha256(config_bytes).hexdigest()}
    assert st["listeners"] == [{"name": "t", "bind": [f"127.0.0.1:{port}"], "mode": "tcp", "pool": "p",
                                "max_connections": 0, "active": 0, "accepted": 0, "limited": 0}]
    assert st["max_connections"] == 0
    pool = st["pools"]["p"]
    assert pool["algorithm"] == "roundrobin" and pool["empty_because"] is None
    assert set(pool["backends"]) == {"b1", "b2"}
    keys = {"address", "health", "admin", "weight", "eff_weight", "backup", "active", "total", "bytes_in",
            "bytes_out", "connect_errors", "connect_timeouts", "check", "down_reason"}
    for name, b in pool["backends"].items():
        assert keys <= set(b), keys - set(b)
        assert (b["address"], b["health"], b["admin"], b["weight"]) == ((b1 if name == "b1" else b2).address, "up",
                                                                         "ready", 100)
    assert [w["index"] for w in st["workers"]] == [0, 1]
    for w in st["workers"]:
        assert {"pid", "generation", "state", "cpu_percent", "rss", "open_fds", "active", "accepted",
                "accept_paused", "restarts"} <= set(w)
        assert w["generation"] == 1 and w["state"] == "running" and w["rss"] > 0 and w["open_fds"] > 0
    assert st["checker"]["pid"] > 0

    names(port, 10)
    st = status_json(sock)
    assert sum(b["total"] for b in st["pools"]["p"]["backends"].values()) == 10
    assert sum(w["accepted"] for w in st["workers"]) == 10

    assert json.loads(lb_ok(sock, "pool", "list", "--json")) == {
        "pools": [{"name": "p", "algorithm": "roundrobin", "backends": 2, "up": 2, "active": 0}]}
    shown = json.loads(lb_ok(sock, "pool", "show", "p", "--json"))
    assert set(shown["backends"]) == {"b1", "b2"} and shown["empty_because"] is None

    text = lb_ok(sock, "status")
    assert "b1" in text and b2.address in text and f"pid {lb.proc.pid}" in text
    assert "p" in lb_ok(sock, "pool", "list")
    top = lb_ok(sock, "top", "--iterations", "2", "--interval", "0.2")
    assert top.count("pool p") == 2

    # errors of the daemon, by exit code
    for args, rc, words in [
        (["pool", "show", "nosuch"], 1, "nosuch"),
        (["backend", "drain", "p", "nosuch"], 1, "nosuch"),
        (["backend", "add", "p", b1.address, "--name", "b1"], 1, "b1"),
        (["backend", "add", "p", "not an address"], 2, "address"),
    ]:
        proc = lb_cli(sock, *args)
        assert proc.returncode == rc and words in proc.stderr and proc.stdout == "", (args, proc)

    # completion from the running daemon
    assert complete(["--socket", str(sock), "backend", "drain"], "") == ["p"]
    assert complete(["--socket", str(sock), "backend", "drain", "p"], "b") == ["b1", "b2"]


def test_changes_show_in_traffic_and_status_and_outlive_a_restart(backends, run_lb, tmp_path):
    b1, b2 = backends("b1", hello=True), backends("b2", hello=True)
    lb, sock, port = start_lb(run_lb, tmp_path, [b1, b2], workers=2)
    config_text = lb.config_path.read_text()

    def backend_status(name):
        return status_json(sock)["pools"]["p"]["backends"].get(name)

    # drain: no new connection to b1; one already open to it goes on
    held = None
    for _ in range(10):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if s.makefile("rb").readline() == b"b1\n":
            held = s
            break
        s.close()
    assert held is not None
    assert "drain" in lb_ok(sock, "backend", "drain", "p", "b1")
    assert names(port, 40) == {"b2": 40}
    exchange(held, b"still here\n")
    held.close()
    assert backend_status("b1")["admin"] == "drain"

    # weight: b1 300, b2 100 -> three quarters to b1
    lb_ok(sock, "backend", "ready", "p", "b1")
    lb_ok(sock, "backend", "set-weight", "p", "b1", "300")
    counts = names(port, 400)
    assert abs(counts["b1"] / 400 - 0.75) <= 0.05, counts
    b = backend_status("b1")
    assert (b["admin"], b["weight"], b["eff_weight"]) == ("ready", 300, 300)

    # add: traffic within a second
    b3 = backends("b3", hello=True)
    added = json.loads(lb_ok(sock, "backend", "add", "p", b3.address, "--name", "b3", "--json"))
    assert added["pool"] == "p" and added["name"] == "b3" and isinstance(added["slot"], int)
    t0 = time.monotonic()
    while hello(port) != "b3":
        assert time.monotonic() - t0 < 1.0, "the added backend got no connection within 1s"
    assert backend_status("b3")["address"] == b3.address

    # remove, waiting for an open connection: the timeout passes, not drained
    held = None
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if s.makefile("rb").readline() == b"b2\n":
            held = s
            break
        s.close()
    assert held is not None
    t0 = time.monotonic()
    proc = lb_cli(sock, "backend", "remove", "p", "b2", "--timeout", "1")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 >= 1.0
    assert "still had open connections" in proc.stderr
    held.close()
    counts = names(port, 60)
    assert "b2" not in counts and set(counts) == {"b1", "b3"}
    assert backend_status("b2") is None

    lb_ok(sock, "backend", "maint", "p", "b1")
    assert names(port, 20) == {"b3": 20}

    # restart: same config, same state file
    assert "graceful" in lb_ok(sock, "stop")
    assert lb.proc.wait(15) == 0
    wait_for(lambda: not sock.exists(), 5, "the admin socket to go")
    assert json.loads((tmp_path / "state.json").read_text())
    lb, sock, port = start_lb(run_lb, tmp_path, [b1, b2], workers=2, port=port)
    assert lb.config_path.read_text() == config_text
    backends_now = status_json(sock)["pools"]["p"]["backends"]
    assert set(backends_now) == {"b1", "b3"}
    assert (backends_now["b1"]["admin"], backends_now["b1"]["weight"]) == ("maint", 300)
    assert backends_now["b3"]["address"] == b3.address
    assert names(port, 20) == {"b3": 20}
    lb_ok(sock, "backend", "ready", "p", "b1")
    counts = names(port, 400)
    assert set(counts) == {"b1", "b3"} and abs(counts["b1"] / 400 - 0.75) <= 0.05, counts


def test_a_uid_not_allowed_is_refused(backends, run_lb, tmp_path):
    # the socket lives where `nobody` can reach it (a test's tmp_path is 0700)
    sock_dir = Path(tempfile.mkdtemp(prefix="lb-admin-"))
    try:
        os.chmod(sock_dir, 0o755)
        lb, sock, port = start_lb(run_lb, tmp_path, [backends("b1")], sock_dir=sock_dir)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        # the file mode keeps others out before lb sees them
        proc = lb_cli(sock, "status", user=NOBODY)
        assert proc.returncode == 3 and "permission denied" in proc.stderr
        # connectable by anyone: now the peer-credential check refuses
        os.chmod(sock, 0o666)
        child = subprocess.Popen([*NOBODY, sys.executable, "-m", "lb", "--socket", str(sock), "backend", "drain",
                                  "p", "b1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        out, err = child.communicate(timeout=30)
        assert child.returncode == 1, err
        assert "denied" in err and out == ""
        log_line = wait_for(lambda: next((line for line in lb.log().splitlines() if "uid 65534" in line), None),
                            5, "the refusal in lb's log")
        assert f"pid {child.pid}" in log_line
        # nothing changed; root is served
        assert status_json(sock)["pools"]["p"]["backends"]["b1"]["admin"] == "ready"
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_reload_with_an_invalid_config_keeps_the_old_one(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    lb, sock, port = start_lb(run_lb, tmp_path, [b1])
    good = lb.config_path.read_text()
    assert "generation 2" in lb_ok(sock, "reload")
    before = status_json(sock)
    lb.config_path.write_text(good.replace("weight = 100", "weight = 5000"))
    proc = lb_cli(sock, "reload")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: pools.p.backends[0].weight: ")
    assert proc.stdout == ""
    assert names(port, 5) == {"b1": 5}
    after = status_json(sock)
    assert after["generation"] == 2 and after["config"] == before["config"]
    assert after["pools"]["p"]["backends"]["b1"]["weight"] == 100
    lb.config_path.write_text(good)
    assert json.loads(lb_ok(sock, "reload", "--json"))["generation"] == 3


class Churn:
    """Threads opening new connections as fast as they can, each carrying one
    message both ways. Every attempt is recorded as (start time, error or None)."""

    def __init__(self, port: int, threads: int = 4):
        self.port = port
        self.stop = threading.Event()
        self.attempts: list[tuple[float, str | None]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, i: int):
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    exchange(s, b"churn %d %d\n" % (i, n))
                self.attempts.append((started, None))
            except (OSError, AssertionError) as e:
                self.attempts.append((started, repr(e)))
            n += 1

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.attempts


class LongLived:
    """One connection exchanging a message every few milliseconds."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.stop = threading.Event()
        self.exchanges = 0
        self.error = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        try:
            while not self.stop.is_set():
                exchange(self.sock, b"long-lived %d\n" % self.exchanges)
                self.exchanges += 1
                time.sleep(0.005)
        except (OSError, AssertionError) as e:
            self.error = repr(e)

    def finish(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_twenty_reloads_drop_nothing(backends, run_lb, tmp_path):
    # old generations keep their connections for drain_timeout: longer than the test
    lb, sock, port = start_lb(run_lb, tmp_path, [backends("b1"), backends("b2")], workers=2, drain_timeout="120s")
    good = lb.config_path.read_text()
    churn = Churn(port)
    long_lived = LongLived(port)
    try:
        time.sleep(0.2)
        for i in range(20):
            lb.config_path.write_text(good + (f"# reload {i}\n" if i % 2 == 0 else ""))
            result = json.loads(lb_ok(sock, "reload", "--json"))
            assert result["generation"] == i + 2
            assert result["config"]["sha256"] == hashlib.sha256(lb.config_path.read_bytes()).hexdigest()
        time.sleep(0.2)
        workers = status_json(sock)["workers"]
    finally:
        attempts = churn.finish()
        long_lived.finish()
    failed = [e for _, e in attempts if e]
    assert not failed, f"{len(failed)} of {len(attempts)} new connections failed: {failed[:5]}"
    assert len(attempts) > 100
    assert long_lived.error is None, long_lived.error
    assert long_lived.exchanges > 100
    # the long-lived connection keeps a worker of an old generation draining
    assert {w["generation"] for w in workers if w["state"] == "running"} == {21}
    assert any(w["state"] == "draining" and w["generation"] < 21 for w in workers), workers


def test_kill_9_of_a_worker_fails_only_its_connections(backends, run_lb, tmp_path):
    lb, sock, port = start_lb(run_lb, tmp_path, [backends("b1"), backends("b2")], workers=2)
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
    for i, s in enumerate(conns):
        exchange(s, b"open %d\n" % i)
    workers = status_json(sock)["workers"]
    victim = workers[0]
    assert sum(w["active"] for w in workers) == 40
    assert 0 < victim["active"] < 40, workers
    churn = Churn(port)
    try:
        time.sleep(0.3)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        def respawned():
            ws = status_json(sock)["workers"]
            w = next(w for w in ws if w["index"] == victim["index"] and w["state"] == "running")
            return w["pid"] not in (0, victim["pid"]) and w["restarts"] == victim["restarts"] + 1

        wait_for(respawned, 10, "the worker to be respawned", interval=0.1)
        time.sleep(0.3)
    finally:
        attempts = churn.finish()
    failed_conns = 0
    for i, s in enumerate(conns):
        try:
            exchange(s, b"after %d\n" % i)
        except (OSError, ConnectionError):
            failed_conns += 1
        s.close()
    # exactly the connections open on the killed worker failed
    assert failed_conns == victim["active"]
    late_failures = [e for started, e in attempts if e and started > killed_at]
    assert not late_failures, f"connections begun after the kill failed: {late_failures[:5]}"
    assert sum(1 for started, _ in attempts if started > killed_at) > 50


def test_protocol_edges_of_the_daemon(backends, run_lb, tmp_path):
    """docs/admin.md's framing and error codes, below the CLI."""
    lb, sock, port = start_lb(run_lb, tmp_path, [backends("b1")])

    def session(*lines: bytes) -> list[dict | None]:
        """Send lines on one connection; the answers, then None once it is closed."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            try:
                s.sendall(b"".join(lines))
            except (BrokenPipeError, ConnectionResetError):
                pass
            f = s.makefile("rb")
            out = []
            for _ in lines:
                try:
                    line = f.readline()
                except ConnectionResetError:
                    line = b""
                out.append(json.loads(line) if line else None)
                if not line:
                    break
            return out

    # several requests on one connection: one answer each, in order
    answers = session(b'{"v": 1, "cmd": "hello"}\n', b'{"v": 1, "cmd": "pool.list"}\n',
                      b'{"v": 1, "cmd": "pool.show", "args": {"pool": "nosuch"}}\n')
    assert answers[0] == {"v": 1, "ok": True, "result": {"version": __version__, "protocol": 1, "pid": lb.proc.pid}}
    assert answers[1]["ok"] and answers[1]["result"]["pools"][0]["name"] == "p"
    assert (answers[2]["ok"], answers[2]["code"]) == (False, "not_found") and "nosuch" in answers[2]["error"]
    assert session(b'{"v": 2, "cmd": "hello"}\n')[0]["code"] == "version"
    assert session(b'{"v": 1, "cmd": "no.such.verb"}\n')[0]["code"] == "invalid"
    # a bad argument is `invalid`, and changes nothing
    bad = session(json.dumps({"v": 1, "cmd": "backend.remove",
                              "args": {"pool": "p", "name": "b1", "wait": True, "timeout": "soon"}}).encode() + b"\n")
    assert bad[0]["code"] == "invalid", bad
    assert status_json(sock)["pools"]["p"]["backends"]["b1"]["admin"] == "ready"
    # a request over 64 KiB is refused and the connection closed
    big = json.dumps({"v": 1, "cmd": "hello", "args": {"pad": "x" * 100_000}}).encode() + b"\n"
    answers = session(big, b'{"v": 1, "cmd": "hello"}\n')
    assert answers[0] is None or (answers[0]["ok"] is False and answers[1] is None), answers
