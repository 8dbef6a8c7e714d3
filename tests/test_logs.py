"""Access logs and request ids (docs/observability.md) end to end: a real
`lb run`, real clients and origins on loopback, the lines read back from the
file (or the syslog datagrams) the logger process writes. Nothing here sleeps
to synchronise: lines are polled for with a deadline."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import free_port, global_toml, wait_for
from http_origin import Origin
from lb import config
from lb.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
HEX32 = re.compile(r"[0-9a-f]{32}")


class _Any:
    def __eq__(self, other):
        return True

    def __repr__(self):
        return "ANY"


ANY = _Any()


# ---- set-up ----------------------------------------------------------------------------

def log_toml(target: str, fmt: str = "json", sample: float = 1.0, name: str = "access") -> str:
    return f'\n[logs.{name}]\nformat = {json.dumps(fmt)}\ntarget = "{target}"\nsample = {sample}\n'


def http_lb_config(port: int, pools: dict, *, listener: str = "", logs: str = "", workers: int = 1,
                   pool_extra: str = "", global_extra: str = "", default: str | None = "p",
                   connect_timeout: str = "1s") -> str:
    """An http listener "web" on port; pools: name -> [Origin or (name, address)]."""
    text = global_toml(workers) + global_extra + textwrap.dedent(f"""
        [listeners.web]
        bind = ["127.0.0.1:{port}"]
        mode = "http"
        """)
    if default:
        text += f'pool = "{default}"\n'
    text += textwrap.dedent(listener) + "\n"
    for pool, members in pools.items():
        text += f'[pools.{pool}]\nconnect_timeout = "{connect_timeout}"\n{pool_extra}\n[pools.{pool}.health]\ntype = "none"\n\n'
        for m in members:
            name, address = (m.name, m.address) if isinstance(m, Origin) else m
            text += f'[[pools.{pool}.backends]]\naddress = "{address}"\nname = "{name}"\n\n'
    return text + logs


def lines_of(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path: Path, n: int, timeout: float = 10.0) -> list[dict]:
    """The first n json lines of the file, once there are n."""
    wait_for(lambda: len(lines_of(path)) >= n, timeout, f"{n} lines in {path} (have {len(lines_of(path))})")
    return [json.loads(line) for line in lines_of(path)]


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send a request on a new connection and read the response until lb closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
    return bytes(out)


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes, int, int]:
    """GET with Connection: close; (status, headers, body, bytes sent, bytes received)."""
    head = f"GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    request = (head + "\r\n").encode()
    raw = raw_exchange(port, request)
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = top.decode("latin-1").split("\r\n")
    hdrs = {}
    for f in fields:
        k, _, v = f.partition(":")
        hdrs.setdefault(k.strip().lower(), []).append(v.strip())
    return int(status_line.split()[1]), hdrs, body, len(request), len(raw)


def lb_cli(config_path, *args, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", "-c", str(config_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def lb_status(lbp) -> dict:
    r = lb_cli(lbp.config_path, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class SilentBackend:
    """Accepts, reads, and (mode) answers nothing, closes at once, or resets."""

    def __init__(self, mode: str = "silent"):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.conns = []
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c):
        try:
            c.recv(65536)
            if self.mode == "close":
                c.close()
            elif self.mode == "reset":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                c.close()
        except OSError:
            pass

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def silent():
    made = []

    def start(mode="silent"):
        b = SilentBackend(mode)
        made.append(b)
        return b

    yield start
    for b in made:
        b.stop()


# ---- config ----------------------------------------------------------------------------

BASE = '[pools.p]\n[[pools.p.backends]]\naddress = "127.0.0.1:9"\n[listeners.w]\nbind = "127.0.0.1:1"\npool = "p"\n'


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^logs\.a\.format: unknown field \{stauts\} \(did you mean 'status'\?\)"):
        config.loads(BASE + '[logs.a]\nformat = "{client} {stauts}"\n')
    with pytest.raises(ConfigError, match=r"^logs\.a\.target: invalid target 'syslog:tcp:1.2.3.4:514'"):
        config.loads(BASE + '[logs.a]\ntarget = "syslog:tcp:1.2.3.4:514"\n')
    with pytest.raises(ConfigError, match=r"^logs\.a\.target: directory '/nonexistent/dir' does not exist"):
        config.loads(BASE + '[logs.a]\ntarget = "file:/nonexistent/dir/access.log"\n')
    with pytest.raises(ConfigError, match=r"^logs\.a\.sample: 1.5 is out of range"):
        config.loads(BASE + '[logs.a]\nsample = 1.5\n')
    with pytest.raises(ConfigError, match=r"^listeners\.w\.logs\[0\]: unknown log 'acess' \(did you mean 'access'\?\)"):
        config.loads(BASE + 'logs = ["acess"]\n[logs.access]\n')
    with pytest.raises(ConfigError, match=r"^global\.log_ring: 1000 is not a power of two"):
        config.loads('[global]\nlog_ring = 1000\n' + BASE)
    with pytest.raises(ConfigError, match=r'^listeners\.t\.request_id: needs mode = "http"'):
        config.loads(BASE + '[listeners.t]\nbind = "127.0.0.1:2"\nmode = "tcp"\npool = "p"\nrequest_id = true\n')


def test_every_listener_uses_every_log_unless_it_names_its_own():
    cfg = config.loads(BASE + 'logs = ["b"]\n[listeners.x]\nbind = "127.0.0.1:2"\npool = "p"\n'
                              '[listeners.off]\nbind = "127.0.0.1:3"\npool = "p"\nlog = false\n'
                              '[logs.a]\n[logs.b]\nformat = "json"\n')
    assert [l.name for l in cfg.listeners["w"].logs] == ["b"]
    assert [l.name for l in cfg.listeners["x"].logs] == ["a", "b"]
    assert cfg.listeners["off"].logs == ()
    # request ids come with logging, and go with it
    assert cfg.listeners["x"].request_id == "X-Request-Id"
    assert cfg.listeners["off"].request_id == ""


# ---- http ------------------------------------------------------------------------------

def test_n_requests_give_n_json_lines_with_the_right_fields(tmp_path, run_lb):
    a, b = Origin("alpha"), Origin("beta")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        lbp = run_lb(http_lb_config(port, {"p": [a, b]}, logs=log_toml(f"file:{log}")))
        seen = []
        for i in range(20):
            status, hdrs, body, sent, received = get(port, f"/item/{i}?q=1", {"User-Agent": "pytest/1"})
            assert status == 200
            seen.append((json.loads(body)["name"], sent, received, hdrs["x-request-id"][0]))
        lines = wait_lines(log, 20)
        assert len(lines) == 20
        for i, (line, (backend, sent, received, rid)) in enumerate(zip(lines, seen)):
            assert line["method"] == "GET" and line["path"] == f"/item/{i}?q=1" and line["host"] == "test.local"
            assert line["status"] == 200 and line["backend"] == backend and line["pool"] == "p"
            assert line["listener"] == "web" and line["route"] is None and line["mode"] == "http"
            assert line["client"] == "127.0.0.1" and line["termination"] == "ok"
            assert line["bytes_in"] == sent and line["bytes_out"] == received
            assert line["user_agent"] == "pytest/1" and line["request_id"] == rid
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
            assert 0 <= line["request_ms"] <= line["connect_ms"] <= line["response_ms"] <= line["duration_ms"]
        assert {line["backend"] for line in lines} == {"alpha", "beta"}
        assert lb_status(lbp)["access_logs"]["drops"] == 0
    finally:
        a.stop()
        b.stop()


def test_request_body_and_keep_alive_exchanges_each_counted(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        run_lb(http_lb_config(port, {"p": [o]}, logs=log_toml(f"file:{log}")))
        body = b"x" * 5000
        req1 = (b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + body)
        req2 = b"GET /second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(req1)
            s.sendall(req2)
            raw = bytearray()
            while chunk := s.recv(65536):
                raw += chunk
        first, second = wait_lines(log, 2)
        assert (first["method"], first["path"], first["bytes_in"]) == ("POST", "/up", len(req1))
        assert (second["path"], second["bytes_in"]) == ("/second", len(req2))
        assert first["bytes_out"] + second["bytes_out"] == len(raw)
        assert first["client_port"] == second["client_port"]
    finally:
        o.stop()


def test_a_custom_format_and_combined(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        custom, combined = tmp_path / "custom.log", tmp_path / "combined.log"
        logs = (log_toml(f"file:{custom}", "{method} {path} {status} {backend} {{literal}} {termination}", name="c")
                + log_toml(f"file:{combined}", "combined", name="d"))
        run_lb(http_lb_config(port, {"p": [o]}, logs=logs))
        get(port, '/a%22b', {"User-Agent": 'ua "quoted"\\', "Referer": "http://r/"})
        wait_for(lambda: lines_of(custom) and lines_of(combined), 10, "both logs")
        assert lines_of(custom) == ['GET /a%22b 200 o {literal} ok']
        line = lines_of(combined)[0]
        assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /a%22b HTTP/1\.1" 200 \d+ '
                            r'"http://r/" "ua \\x22quoted\\x22\\x5c"', line), line
    finally:
        o.stop()


# ---- termination reasons ------------------------------------------------------------------

def test_termination_reasons(tmp_path, run_lb, silent):
    o = Origin("o")
    quiet, closer = silent("silent"), silent("close")
    # a backend that never completes a connect: a full accept queue
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname())
    try:
        port = free_port()
        log = tmp_path / "access.log"
        dead = free_port()
        listener = f"""
            http_request_timeout = "300ms"
            [[listeners.web.routes]]
            path_prefix = "/quiet/"
            pool = "quiet"
            [[listeners.web.routes]]
            name = "closer"
            path_prefix = "/closer/"
            pool = "closer"
            [[listeners.web.routes]]
            path_prefix = "/dead/"
            pool = "dead"
            [[listeners.web.routes]]
            path_prefix = "/full/"
            pool = "full"
            [[listeners.web.routes]]
            path_prefix = "/ok/"
            pool = "p"
            """
        pools = {"p": [o], "quiet": [("q", quiet.address)], "closer": [("c", closer.address)],
                 "dead": [("d", f"127.0.0.1:{dead}")], "full": [("f", "127.0.0.1:%d" % full.getsockname()[1])]}
        run_lb(http_lb_config(port, pools, listener=listener, default=None, logs=log_toml(f"file:{log}"),
                              pool_extra='response_timeout = "1s"\nretries = 0\n', connect_timeout="300ms"))
        expect = []
        # lb's 4xx: no route matches, the route step refused it
        assert get(port, "/nowhere")[0] == 404
        expect.append((404, "refused:route", None))
        # malformed
        assert raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").startswith(b"HTTP/1.1 400")
        expect.append((400, "bad_request", None))
        # the head does not come in time
        assert raw_exchange(port, b"GET / HTTP/1.1\r\n").startswith(b"HTTP/1.1 408")
        expect.append((408, "request_timeout", None))
        # nothing listens there
        assert get(port, "/dead/")[0] == 503
        expect.append((503, "backend_refused", "d"))
        # the connect never completes
        assert get(port, "/full/")[0] == 503
        expect.append((503, "connect_timeout", "f"))
        # the backend closes without answering (the request could go elsewhere: a 503)
        assert get(port, "/closer/")[0] == 503
        expect.append((503, "backend_reset", "c"))
        # the backend says nothing
        assert get(port, "/quiet/")[0] == 504
        expect.append((504, "server_timeout", "q"))
        # the client leaves in the middle of its request body
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /quiet/ HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        expect.append((None, "client_abort", ANY))             # (connected or not, as its FIN came)
        # the client resets while its answer is awaited
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /quiet/ HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: len(quiet.conns) >= 2, 5, "the request at the backend")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()
        expect.append((None, "client_abort", "q"))
        assert get(port, "/ok/")[0] == 200
        expect.append((200, "ok", "o"))
        lines = wait_lines(log, len(expect))
        got = [(line["status"], line["termination"], line["backend"]) for line in lines]
        assert got == expect
        assert lines[0]["pool"] is None and lines[-1]["route"] == "routes[4]"
    finally:
        o.stop()
        filler.close()
        full.close()


# ---- tcp ---------------------------------------------------------------------------------

def tcp_config(port: int, backends: list[tuple[str, str]], logs: str, workers: int = 1, extra: str = "") -> str:
    text = global_toml(workers) + textwrap.dedent(f"""
        [listeners.t]
        bind = ["127.0.0.1:{port}"]
        mode = "tcp"
        pool = "p"
        {extra}
        [pools.p]
        connect_timeout = "1s"
        retries = 0
        [pools.p.health]
        type = "none"
        """)
    for name, address in backends:
        text += f'[[pools.p.backends]]\naddress = "{address}"\nname = "{name}"\n'
    return text + logs


def test_tcp_connections_are_logged(tmp_path, run_lb, backends):
    echo = backends("echo", mode="transform")
    port = free_port()
    log = tmp_path / "access.log"
    run_lb(tcp_config(port, [("e", echo.address)], log_toml(f"file:{log}")))
    sizes = [10, 1000, 70000]
    for n in sizes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"z" * n)
            s.shutdown(socket.SHUT_WR)
            got = 0
            while chunk := s.recv(65536):
                got += len(chunk)
        assert got == n
    lines = wait_lines(log, 3)
    for line, n in zip(lines, sizes):
        assert (line["mode"], line["protocol"], line["backend"], line["termination"]) == ("tcp", "TCP", "e", "ok")
        assert line["bytes_in"] == n and line["bytes_out"] == n
        assert line["method"] is None and line["status"] is None
        assert 0 <= line["connect_ms"] <= line["duration_ms"]


def test_tcp_refused_backend_and_client_reset(tmp_path, run_lb, backends):
    port = free_port()
    log = tmp_path / "access.log"
    run_lb(tcp_config(port, [("d", f"127.0.0.1:{free_port()}")], log_toml(f"file:{log}")))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(10) == b""
    (line,) = wait_lines(log, 1)
    assert (line["termination"], line["backend"]) == ("backend_refused", "d")


# ---- sampling ------------------------------------------------------------------------------

def test_sampling_keeps_every_error(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        listener = '[[listeners.web.routes]]\nmethods = ["GET"]\npool = "p"\n'
        run_lb(http_lb_config(port, {"p": [o]}, listener=listener, default=None,
                              logs=log_toml(f"file:{log}", sample=0.0)))
        for _ in range(30):
            assert get(port, "/")[0] == 200
        assert get(port, "/status/500")[0] == 500
        assert raw_exchange(port, b"DELETE / HTTP/1.1\r\nHost: h\r\n\r\n").startswith(b"HTTP/1.1 404")
        # one worker: its records reach the logger in order, so the last error
        # line comes after every sampled-out one would have
        lines = wait_lines(log, 2)
        assert [(line["status"], line["termination"]) for line in lines] == [(500, "ok"), (404, "refused:route")]
    finally:
        o.stop()


# ---- request ids ----------------------------------------------------------------------------

def test_request_ids_generated_preserved_and_returned(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        run_lb(http_lb_config(port, {"p": [o]}, workers=2, logs=log_toml(f"file:{log}")))
        ids = set()
        for i in range(40):
            status, hdrs, body, _, _ = get(port, f"/{i}")
            (rid,) = hdrs["x-request-id"]
            assert HEX32.fullmatch(rid)
            sent = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-request-id"]
            assert sent == [rid]
            ids.add(rid)
        assert len(ids) == 40
        # both workers served, each with its own random prefix
        lines = wait_lines(log, 40)
        assert len({line["worker"] for line in lines}) == 2
        assert len({line["request_id"][:16] for line in lines}) == 2
        assert {line["request_id"] for line in lines} == ids
        # a client's id is passed on once, returned, and logged
        status, hdrs, body, _, _ = get(port, "/mine", {"X-Request-ID": "abc-123"})
        assert hdrs["x-request-id"] == ["abc-123"]
        sent = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-request-id"]
        assert sent == ["abc-123"]
        assert wait_lines(log, 41)[-1]["request_id"] == "abc-123"
        # lb's own answers carry one too
        raw = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400") and re.search(rb"\r\nX-Request-Id: [0-9a-f]{32}\r\n", raw)
    finally:
        o.stop()


def test_request_id_header_name_and_off(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        run_lb(http_lb_config(port, {"p": [o]}, listener='request_id = "X-Trace"\n', logs=log_toml(f"file:{log}")))
        status, hdrs, body, _, _ = get(port, "/", {"X-Request-Id": "not-this"})
        (rid,) = hdrs["x-trace"]
        sent = json.loads(body)["headers"]
        assert HEX32.fullmatch(rid) and ["X-Trace", rid] in sent and ["X-Request-Id", "not-this"] in sent
        assert wait_lines(log, 1)[0]["request_id"] == rid
        port2 = free_port()
        run_lb(http_lb_config(port2, {"p": [o]}, listener="request_id = false\n", logs=log_toml(f"file:{log}")))
        status, hdrs, body, _, _ = get(port2, "/")
        assert "x-request-id" not in hdrs
        assert not [k for k, _ in json.loads(body)["headers"] if k.lower() == "x-request-id"]
    finally:
        o.stop()


def test_an_error_page_carries_the_request_id(tmp_path, run_lb):
    port = free_port()
    log = tmp_path / "access.log"
    run_lb(http_lb_config(port, {"p": [("d", f"127.0.0.1:{free_port()}")]}, logs=log_toml(f"file:{log}")))
    status, hdrs, _, _, _ = get(port, "/")
    assert status == 503
    (rid,) = hdrs["x-request-id"]
    assert wait_lines(log, 1)[0]["request_id"] == rid


# ---- rotation ----------------------------------------------------------------------------------

def _requests_in_thread(port: int, stop: threading.Event, count: list):
    """GETs on a kept-alive connection, counted when answered. A connection
    lb closed while idle (a worker draining after a reload) is made again and
    the request sent again, as clients do: lb had not read it, so it made no
    line."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while not stop.is_set():
        try:
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            c.close()
            continue
        assert r.status == 200
        count[0] += 1


def test_rename_and_sigusr1_lose_no_line(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        lbp = run_lb(http_lb_config(port, {"p": [o]}, logs=log_toml(f"file:{log}")))
        stop, count = threading.Event(), [0]
        t = threading.Thread(target=_requests_in_thread, args=(port, stop, count))
        t.start()
        try:
            wait_for(lambda: len(lines_of(log)) >= 50, 10, "lines before the rotation")
            os.rename(log, tmp_path / "access.log.1")        # logrotate's rename
            lbp.proc.send_signal(signal.SIGUSR1)               # its postrotate
            wait_for(lambda: len(lines_of(log)) >= 50, 10, "lines in the new file")
        finally:
            stop.set()
            t.join()
        wait_for(lambda: len(lines_of(log)) + len(lines_of(tmp_path / "access.log.1")) >= count[0], 10,
                 "every line")
        assert len(lines_of(log)) + len(lines_of(tmp_path / "access.log.1")) == count[0]
    finally:
        o.stop()


def test_lb_logs_reopen(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        lbp = run_lb(http_lb_config(port, {"p": [o]}, logs=log_toml(f"file:{log}")))
        get(port, "/before")
        wait_lines(log, 1)
        os.rename(log, tmp_path / "old.log")
        r = lb_cli(lbp.config_path, "logs", "reopen")
        assert r.returncode == 0, r.stderr
        assert "reopened" in r.stdout
        assert log.exists()                                    # reopened before the answer
        get(port, "/after")
        assert [line["path"] for line in wait_lines(log, 1)] == ["/after"]
        assert [json.loads(line)["path"] for line in lines_of(tmp_path / "old.log")] == ["/before"]
    finally:
        o.stop()


# ---- syslog ---------------------------------------------------------------------------------------

RFC5424 = re.compile(r"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) lb (\d+) access - (.*)", re.S)


def test_syslog_over_udp_is_rfc5424(tmp_path, run_lb):
    o = Origin("o")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    try:
        port = free_port()
        logs = log_toml(f"syslog:udp:127.0.0.1:{rx.getsockname()[1]}", "json") + 'facility = "local3"\n'
        run_lb(http_lb_config(port, {"p": [o]}, logs=logs))
        for i in range(3):
            get(port, f"/s{i}")
        for i in range(3):
            datagram = rx.recv(65536).decode()
            m = RFC5424.fullmatch(datagram)
            assert m, datagram
            assert int(m[1]) == 19 * 8 + 6                       # local3.info
            assert json.loads(m[5])["path"] == f"/s{i}"
    finally:
        rx.close()
        o.stop()


def test_syslog_over_a_unix_socket(tmp_path, run_lb):
    o = Origin("o")
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(10)
    try:
        port = free_port()
        run_lb(http_lb_config(port, {"p": [o]}, logs=log_toml(f"syslog:unix:{path}", "{method} {path} {status}")))
        get(port, "/u")
        m = RFC5424.fullmatch(rx.recv(65536).decode())
        assert m and m[5] == "GET /u 200"
    finally:
        rx.close()
        o.stop()


# ---- rings ----------------------------------------------------------------------------------------

def test_a_full_ring_counts_its_drops(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        lbp = run_lb(http_lb_config(port, {"p": [o]}, global_extra="log_ring = 2\n", logs=log_toml(f"file:{log}")))
        n = 300
        # pipelined: the worker answers them faster than the logger's next look at its ring
        burst = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * (n - 1) + b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        raw = raw_exchange(port, burst, timeout=20)
        assert raw.count(b"HTTP/1.1 200") == n

        def settled():
            s = lb_status(lbp)["access_logs"]
            return s if s["drops"] + len(lines_of(log)) == n else None

        s = wait_for(settled, 10, "every record written or dropped")
        assert s["drops"] > 0 and s["ring_records"] == 2
        r = lb_cli(lbp.config_path, "status")
        assert f"{s['drops']} record(s) dropped" in r.stdout
    finally:
        o.stop()


def test_a_burst_at_the_default_ring_drops_nothing(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        lbp = run_lb(http_lb_config(port, {"p": [o]}, logs=log_toml(f"file:{log}")))
        n = 2000
        burst = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * (n - 1) + b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        assert raw_exchange(port, burst, timeout=30).count(b"HTTP/1.1 200") == n
        wait_lines(log, n)
        s = lb_status(lbp)["access_logs"]
        assert s["drops"] == 0 and s["lines"] == n
    finally:
        o.stop()


# ---- the logger process ---------------------------------------------------------------------------

def test_a_killed_logger_is_respawned(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        lbp = run_lb(http_lb_config(port, {"p": [o]}, logs=log_toml(f"file:{log}")))
        old = wait_for(lambda: lb_status(lbp)["access_logs"]["logger"]["pid"], 10, "the logger")
        assert psutil.Process(old).name() == "lb-logger"
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (lambda p: p if p and p != old else None)(
            lb_status(lbp)["access_logs"]["logger"]["pid"]), 10, "a new logger")
        assert lb_status(lbp)["access_logs"]["logger"]["restarts"] == 1
        get(port, "/after")
        assert wait_lines(log, 1)[-1]["path"] == "/after"
        assert new != old
    finally:
        o.stop()


def test_a_bad_log_config_on_reload_keeps_the_running_one(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        text = http_lb_config(port, {"p": [o]}, logs=log_toml(f"file:{log}"))
        lbp = run_lb(text)
        lbp.config_path.write_text(text.replace('format = "json"', 'format = "{nope}"'))
        r = lb_cli(lbp.config_path, "reload")
        assert r.returncode == 2 and "logs.access.format: unknown field {nope}" in r.stderr
        get(port, "/still")
        assert wait_lines(log, 1)[0]["path"] == "/still"
    finally:
        o.stop()


def test_no_logs_no_logger_no_request_id(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        lbp = run_lb(http_lb_config(port, {"p": [o]}))
        status, hdrs, _, _, _ = get(port, "/")
        assert status == 200 and "x-request-id" not in hdrs
        assert lb_status(lbp)["access_logs"] is None
        assert "lb-logger" not in [p.name() for p in psutil.Process(lbp.proc.pid).children()]
        r = lb_cli(lbp.config_path, "logs", "reopen")
        assert r.returncode != 0 and "no access log" in r.stderr
    finally:
        o.stop()


# ---- TLS -----------------------------------------------------------------------------------------

def test_tls_version_cipher_and_sni_are_logged(tmp_path, run_lb, backends):
    import ssl

    from tls_certs import CA

    ca = CA(tmp_path / "ca")
    leaf = ca.leaf("a", ("a.test",))
    o = Origin("o")
    try:
        port, tport = free_port(), free_port()
        log = tmp_path / "access.log"
        tls = f'[listeners.web.tls]\ncertificates = [{{ cert = "{leaf.cert}", key = "{leaf.key}" }}]\n'
        text = http_lb_config(port, {"p": [o]}, listener=tls, logs=log_toml(f"file:{log}"))
        text += textwrap.dedent(f"""
            [listeners.t]
            bind = ["127.0.0.1:{tport}"]
            mode = "tcp"
            pool = "p"
            [listeners.t.tls]
            certificates = [{{ cert = "{leaf.cert}", key = "{leaf.key}" }}]
            """)
        run_lb(text)
        ctx = ssl.create_default_context(cafile=str(ca.path))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="a.test") as s:
                s.sendall(b"GET /tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
                version, cipher = s.version(), s.cipher()[0]
        (line,) = wait_lines(log, 1)
        assert (line["tls_version"], line["tls_cipher"], line["sni"]) == (version, cipher, "a.test")
        assert line["path"] == "/tls" and line["status"] == 200
        # a tcp TLS listener: a client that is not TLS fails its handshake
        with socket.create_connection(("127.0.0.1", tport), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x00\x05hello")
            while s.recv(65536):
                pass
        line = wait_lines(log, 2)[1]
        assert (line["mode"], line["termination"], line["backend"], line["tls_version"]) == (
            "tcp", "tls_handshake", None, None)
        # an http TLS listener: the same, logged as an exchange without a request
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x00\x05hello")
            while s.recv(65536):
                pass
        line = wait_lines(log, 3)[2]
        assert (line["mode"], line["termination"], line["method"], line["status"]) == (
            "http", "tls_handshake", None, None)
    finally:
        o.stop()


# ---- the daemon's life: reload, stop, stdout ------------------------------------------------------

def test_a_reload_under_traffic_loses_no_line(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        lbp = run_lb(http_lb_config(port, {"p": [o]}, workers=2, logs=log_toml(f"file:{log}")))
        stop, count = threading.Event(), [0]
        t = threading.Thread(target=_requests_in_thread, args=(port, stop, count))
        t.start()
        try:
            wait_for(lambda: len(lines_of(log)) >= 50, 10, "lines before the reload")
            r = lb_cli(lbp.config_path, "reload")
            assert r.returncode == 0, r.stderr
            after = count[0] + 50
            wait_for(lambda: len(lines_of(log)) >= after, 20, "lines after the reload")
        finally:
            stop.set()
            t.join()
        # the old generation's logger wrote its workers' last lines, then left
        wait_for(lambda: len(lines_of(log)) >= count[0], 20, "every line")
        assert len(lines_of(log)) == count[0]
        status = lb_status(lbp)
        assert status["access_logs"]["drops"] == 0
    finally:
        o.stop()


def test_a_stop_writes_the_last_lines(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log = tmp_path / "access.log"
        lbp = run_lb(http_lb_config(port, {"p": [o]}, logs=log_toml(f"file:{log}")))
        for i in range(30):
            get(port, f"/{i}")
        assert lbp.stop(signal.SIGTERM) == 0
        assert len(lines_of(log)) == 30
    finally:
        o.stop()


def test_stdout_is_the_default_target(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        lbp = run_lb(http_lb_config(port, {"p": [o]}, logs="\n[logs.access]\n"))
        get(port, "/to-stdout", {"User-Agent": "ua"})
        wait_for(lambda: re.search(r'"GET /to-stdout HTTP/1\.1" 200 \d+ "-" "ua"', lbp.log()), 10, "the line")
    finally:
        o.stop()


def test_odd_bytes_stay_one_valid_line(tmp_path, run_lb):
    o = Origin("o")
    try:
        port = free_port()
        log, text = tmp_path / "access.log", tmp_path / "text.log"
        run_lb(http_lb_config(port, {"p": [o]}, logs=log_toml(f"file:{log}")
                              + log_toml(f"file:{text}", "{user_agent}|{host}", name="text")))
        ua = b'a\tb\xe9"\\ ' + "ü€".encode()
        raw = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: " + ua + b"\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200")
        (line,) = wait_lines(log, 1)
        # well-formed UTF-8 as it is, a stray byte as \u00XX: valid JSON always
        assert line["user_agent"] == 'a\tb\u00e9"\\ ü€', ua
        wait_for(lambda: lines_of(text), 10, "the text line")
        assert lines_of(text) == ["a\\x09b\\xe9\\x22\\x5c \\xc3\\xbc\\xe2\\x82\\xac|h"]
    finally:
        o.stop()
