"""The PROXY protocol on the tcp data path, end to end: a real `lb run`, real
nginx reading what send_proxy sends, and clients sending accept_proxy headers."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import free_port, lb_config, wait_for
from tests.reference import proxy_ref

FAKE_V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n"
FAKE_V2 = proxy_ref.build(2, "192.0.2.7", 40000, "198.51.100.1", 443)
FAKE_V6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n"
FAKE_ANNOUNCED = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n"


class Recorder:
    """A backend that records every connection's bytes: it reads to EOF, puts
    them on a queue, answers "got N" and closes."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port = self.sock.getsockname()[1]
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.entry = (self.address, "rec", 100)     # for lb_config
        self.received: queue.Queue[bytes] = queue.Queue()
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket):
        with conn:
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
            self.received.put(bytes(data))
            conn.sendall(b"got %d\n" % len(data))

    def next(self, timeout: float = 10) -> bytes:
        return self.received.get(timeout=timeout)

    def close(self):
        self.sock.close()


@pytest.fixture
def recorder():
    started = []

    def start(host: str = "127.0.0.1") -> Recorder:
        r = Recorder(host)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


def exchange(port: int, *pieces: bytes, host: str = "127.0.0.1", source: str | None = None,
             timeout: float = 10) -> bytes:
    """Connect, send the pieces (one send each, no delay), half-close, read to EOF."""
    with socket.create_connection((host, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            s.sendall(piece)
        s.shutdown(socket.SHUT_WR)
        out = bytearray()
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return bytes(out)


def header_of(data: bytes) -> tuple[bytes, bytes]:
    """(the PROXY header at the start of data, the bytes after it)."""
    status, consumed, _, _ = proxy_ref.parse(data)
    assert status == 0, data[:120]
    return data[:consumed], data[consumed:]


# ---- send_proxy, read by nginx ---------------------------------------------------------


class Nginx:
    """nginx with an http server that expects a PROXY header on every connection,
    logs $proxy_protocol_* to an access log and answers them in the body."""

    def __init__(self, tmp_path, nginx: str):
        self.dir = tmp_path / "nginx"
        self.dir.mkdir()
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.access_log = self.dir / "access.log"
        temp = "\n    ".join(f"{name}_temp_path {self.dir}/{name};"
                             for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = f"""\
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    log_format pp '$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr '
                  '$proxy_protocol_server_port $remote_addr';
    access_log {self.access_log} pp;
    {temp}
    server {{
        listen 127.0.0.1:{self.port} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 "from $proxy_protocol_addr $proxy_protocol_port\\n";
        }}
        location /xff {{
            default_type text/plain;
            return 200 "from $proxy_protocol_addr xff $http_x_forwarded_for\\n";
        }}
    }}
}}
"""
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen([nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                      "-e", str(self.dir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "wb"))
        # nginx writes its pid file after it has opened its listening sockets
        wait_for(lambda: self._alive() and (self.dir / "nginx.pid").exists(), 10, "nginx to listen")

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {(self.dir / 'stderr.log').read_text()}"
                                 f"{(self.dir / 'error.log').read_text()}")
        return True

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def nginx(tmp_path):
    from bench.harness import find_tool

    path = find_tool("nginx")
    if path is None:
        pytest.fail("nginx is needed for the send_proxy tests (apt-get install nginx-light)")
    server = Nginx(tmp_path, path)
    yield server
    server.stop()


def http_get(port: int, host: str = "127.0.0.1", source: str | None = None) -> tuple[bytes, tuple]:
    """One GET with Connection: close; (the body, the client's own address)."""
    with socket.create_connection((host, port), timeout=10,
                                  source_address=(source, 0) if source else None) as s:
        me = s.getsockname()
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = bytes(out).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), out
    return body, me


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_send_proxy_nginx_sees_the_client_address(version, nginx, run_lb):
    port = free_port()
    run_lb(lb_config(port, [(f"127.0.0.1:{nginx.port}", "nginx", 100)], pool_extra=f'send_proxy = "{version}"'))
    seen = []
    for _ in range(3):
        body, (ip, client_port) = http_get(port, source="127.0.0.5")
        assert ip == "127.0.0.5"
        assert body == f"from 127.0.0.5 {client_port}\n".encode()
        seen.append(f"127.0.0.5 {client_port} 127.0.0.1 {port} 127.0.0.1")
    # nginx logs a request before it closes the connection, and the client read to EOF
    wait_for(lambda: nginx.log_lines() == seen, 5, "nginx's access log")


def test_send_proxy_v1_over_ipv6(nginx, run_lb):
    """An IPv6 client of an IPv6 listener: nginx, on IPv4, reads a TCP6 header."""
    port = free_port("::1")
    run_lb(lb_config(port, [(f"127.0.0.1:{nginx.port}", "nginx", 100)], bind_host="::1",
                     pool_extra='send_proxy = "v1"'))
    body, (_, client_port, *_) = http_get(port, host="::1")
    assert body == f"from ::1 {client_port}\n".encode()
    wait_for(lambda: nginx.log_lines() == [f"::1 {client_port} ::1 {port} 127.0.0.1"], 5, "nginx's access log")


def test_send_proxy_header_comes_before_client_bytes_and_after_a_retry(recorder, run_lb):
    """The header is the first thing every backend connection carries, also on
    the backend a refused connect moved on to; the client's bytes follow intact."""
    rec = recorder()
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    lb = run_lb(lb_config(port, [(dead, "dead", 100), rec.entry], pool_extra='send_proxy = "v1"'))
    payload = os.urandom(200_000)
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            me = s.getsockname()
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            answer = s.makefile("rb").read()
        header, rest = header_of(rec.next())
        assert header == b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n" % (me[1], port)
        assert rest == payload
        assert answer == b"got %d\n" % (len(header) + len(payload))
    assert lb.backend_stats(0)["connect_errors"] >= 1       # some went to the dead one first
    assert rec.accepted == 4


def test_send_proxy_stream_is_header_then_payload(recorder, run_lb):
    rec = recorder()
    port = free_port()
    run_lb(lb_config(port, [rec.entry], pool_extra='send_proxy = "v2"'))
    payload = os.urandom(100_000)
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.9", 0)) as s:
        me = s.getsockname()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        s.makefile("rb").read()
    header, rest = header_of(rec.next())
    assert header == proxy_ref.build(2, "127.0.0.9", me[1], "127.0.0.1", port)
    assert rest == payload


# ---- accept_proxy --------------------------------------------------------------------------


def accept_proxy_lb(run_lb, rec, send_proxy="v1", listener_extra=""):
    port = free_port()
    lb = run_lb(lb_config(port, [rec.entry], pool_extra=f'send_proxy = "{send_proxy}"',
                          listener_extra="accept_proxy = true\n" + listener_extra))
    return port, lb


@pytest.mark.parametrize("incoming", [FAKE_V1, FAKE_V2], ids=["v1", "v2"])
def test_accept_proxy_takes_the_client_address_from_the_header(incoming, recorder, run_lb):
    rec = recorder()
    port, _ = accept_proxy_lb(run_lb, rec)
    # the header and data in one segment: the data must not be lost
    answer = exchange(port, incoming + b"hello")
    assert rec.next() == FAKE_ANNOUNCED + b"hello"
    assert answer == b"got %d\n" % len(FAKE_ANNOUNCED + b"hello")


def test_accept_proxy_header_in_pieces(recorder, run_lb):
    rec = recorder()
    port, _ = accept_proxy_lb(run_lb, rec, send_proxy="v2")
    exchange(port, FAKE_V2[:5], FAKE_V2[5:14], FAKE_V2[14:] + b"x" * 70000, b"tail")
    assert rec.next() == FAKE_V2 + b"x" * 70000 + b"tail"


def test_accept_proxy_ipv6_source_to_v2(recorder, run_lb):
    rec = recorder()
    port, _ = accept_proxy_lb(run_lb, rec, send_proxy="v2")
    exchange(port, FAKE_V6 + b"six")
    assert rec.next() == proxy_ref.build(2, "2001:db8::7", 40000, "2001:db8::1", 443) + b"six"


def test_accept_proxy_without_send_proxy_strips_the_header(recorder, run_lb):
    rec = recorder()
    port, _ = accept_proxy_lb(run_lb, rec, send_proxy="off")
    exchange(port, FAKE_V1 + b"just data")
    assert rec.next() == b"just data"


@pytest.mark.parametrize("incoming", [b"PROXY UNKNOWN\r\n", proxy_ref.SIGNATURE + b"\x20\x00\x00\x00"],
                         ids=["v1-unknown", "v2-local"])
def test_accept_proxy_unknown_or_local_keeps_the_real_peer(incoming, recorder, run_lb):
    rec = recorder()
    port, _ = accept_proxy_lb(run_lb, rec)
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.3", 0)) as s:
        me = s.getsockname()
        s.sendall(incoming + b"data")
        s.shutdown(socket.SHUT_WR)
        s.makefile("rb").read()
    assert rec.next() == b"PROXY TCP4 127.0.0.3 127.0.0.1 %d %d\r\ndata" % (me[1], port)


@pytest.mark.parametrize("bad", [b"GET / HTTP/1.1\r\n\r\n", b"PROXY TCP4 192.0.2.07 1.2.3.4 1 2\r\n",
                                 proxy_ref.SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
                                 b"PROXY UNKNOWN " + b"x" * 200],
                         ids=["http", "leading-zero", "v2-version-3", "too-long"])
def test_accept_proxy_invalid_header_closes_without_backend(bad, recorder, run_lb):
    rec = recorder()
    port, lb = accept_proxy_lb(run_lb, rec)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(bad)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    # the worker decided on the header before the client saw the close: nothing connected
    assert lb.backend_stats(0)["total"] == 0
    wait_for(lambda: sum(w["active"] for w in lb.worker_stats()) == 0, 5, "the client to be released")
    # and the next, valid, client is the recorder's first connection
    exchange(port, FAKE_V1 + b"ok")
    assert rec.next() == FAKE_ANNOUNCED + b"ok"
    assert rec.accepted == 1


def test_accept_proxy_truncated_header_then_eof_closes_without_backend(recorder, run_lb):
    rec = recorder()
    port, lb = accept_proxy_lb(run_lb, rec)
    assert exchange(port, FAKE_V2[:20]) == b""
    assert exchange(port, FAKE_V1[:-1]) == b""
    assert lb.backend_stats(0)["total"] == 0 and rec.accepted == 0


def test_accept_proxy_header_timeout(recorder, run_lb):
    """No complete header within min(idle_timeout, 10 s): the client is closed."""
    rec = recorder()
    port, lb = accept_proxy_lb(run_lb, rec, listener_extra='idle_timeout = "300ms"')
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(FAKE_V1[:10])
        started = time.monotonic()
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        assert 0.25 <= time.monotonic() - started < 3
    assert lb.worker_stats()[0]["idle_timeouts"] == 1
    assert lb.backend_stats(0)["total"] == 0 and rec.accepted == 0


def test_accept_proxy_source_is_the_hash_key(backends, run_lb):
    """maglev on source_ip hashes the header's source, not the connection's."""
    from lb._fastpath import hash64, maglev_table

    servers = [backends(f"m{i}", hello=True) for i in range(3)]
    port = free_port()
    table_size = 251
    run_lb(lb_config(port, servers, algorithm="maglev", listener_extra="accept_proxy = true",
                     pool_extra=f'hash_key = "source_ip"\ntable_size = {table_size}'))
    names = [s.name for s in servers]
    table = maglev_table(names, [100] * 3, table_size)
    seen = set()
    for last in range(1, 30):
        source = f"192.0.2.{last}"
        expected = names[table[hash64(socket.inet_aton(source)) % table_size]]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"PROXY TCP4 %s 127.0.0.1 1234 %d\r\n" % (source.encode(), port))
            assert s.makefile("rb").readline().decode().strip() == expected, source
        seen.add(expected)
    assert seen == set(names)


def test_without_accept_proxy_a_proxy_header_is_data(recorder, run_lb):
    rec = recorder()
    port = free_port()
    run_lb(lb_config(port, [rec.entry]))
    exchange(port, FAKE_V1 + b"hello")
    assert rec.next() == FAKE_V1 + b"hello"
    exchange(port, FAKE_V2)
    assert rec.next() == FAKE_V2


def test_without_accept_proxy_send_proxy_puts_ours_first(recorder, run_lb):
    rec = recorder()
    port = free_port()
    run_lb(lb_config(port, [rec.entry], pool_extra='send_proxy = "v1"'))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        me = s.getsockname()
        s.sendall(FAKE_V1 + b"hello")
        s.shutdown(socket.SHUT_WR)
        s.makefile("rb").read()
    assert rec.next() == b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n" % (me[1], port) + FAKE_V1 + b"hello"


# ---- the same in http mode ---------------------------------------------------------------


def keepalive_gets(port: int, paths, source: str) -> tuple[list[bytes], int]:
    """GETs on one kept-alive connection from source; (the bodies, the client's port)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    bodies = []
    try:
        for path in paths:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200
            bodies.append(resp.read())
        return bodies, conn.sock.getsockname()[1]
    finally:
        conn.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_http_send_proxy_each_client_is_announced_as_itself(version, nginx, run_lb):
    """Backend connections that carry a PROXY header are kept per client, never
    shared: two clients in turn, each with kept-alive requests, are each seen
    with their own address and port."""
    port = free_port()
    run_lb(lb_config(port, [(f"127.0.0.1:{nginx.port}", "nginx", 100)], mode="http",
                     pool_extra=f'send_proxy = "{version}"'))
    for source in ("127.0.0.5", "127.0.0.6", "127.0.0.5"):
        bodies, client_port = keepalive_gets(port, ["/", "/", "/"], source)
        assert bodies == [f"from {source} {client_port}\n".encode()] * 3


def test_http_accept_proxy_address_is_forwarded(nginx, run_lb):
    """A PROXY header from the client (v1 and v2) names the client: the backend's
    PROXY header and X-Forwarded-For both carry that address."""
    from lb._fastpath import proxy_header

    port = free_port()
    run_lb(lb_config(port, [(f"127.0.0.1:{nginx.port}", "nginx", 100)], mode="http",
                     listener_extra="accept_proxy = true", pool_extra='send_proxy = "v1"'))
    for version in ("v1", "v2"):
        header = proxy_header(version, "192.0.2.7", 40000, "127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(header + b"GET /xff HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.1.1.1\r\n"
                      b"Connection: close\r\n\r\n")
            out = bytearray()
            while chunk := s.recv(65536):
                out += chunk
        assert out.startswith(b"HTTP/1.1 200"), out
        assert out.endswith(b"from 192.0.2.7 xff 10.1.1.1, 192.0.2.7\n"), out


def test_http_accept_proxy_invalid_header_closes_without_backend(recorder, run_lb):
    rec = recorder()
    port = free_port()
    lb = run_lb(lb_config(port, [rec.entry], mode="http", listener_extra="accept_proxy = true"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            assert s.recv(65536) == b""
        except ConnectionResetError:
            pass
    # the worker decided on the header before the client saw the close
    assert lb.backend_stats(0)["total"] == 0
    assert rec.accepted == 0
