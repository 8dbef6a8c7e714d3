"""tcp listeners with forward = "sockmap": once a pair is established, the
kernel moves its bytes (BPF sk_skb verdict over a SOCKHASH). What users rely
on: every byte, in order, both ways, whatever was in flight at the handoff;
the ends (half-close, resets, timeouts, reloads) as without the option; right
byte counters; and plain forwarding in lb when the kernel refuses bpf(2)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from conftest import free_port, lb_config, wait_for
from lb.config import ConfigError, loads as load_text

SOCKMAP = 'forward = "sockmap"'


class Server:
    """A backend on its own thread per connection, running handler(conn)."""

    def __init__(self, handler):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.entry = (f"127.0.0.1:{self.port}", "b", 100)
        self.handler = handler
        self.conns: list[socket.socket] = []
        self.errors: list[BaseException] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            self.handler(conn)
        except OSError as e:
            self.errors.append(e)
        except BaseException as e:   # an assertion in a handler fails the test that reads errors
            self.errors.append(e)
        finally:
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def servers():
    started = []

    def start(handler) -> Server:
        s = Server(handler)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def echo(conn):
    while chunk := conn.recv(262144):
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)


def read_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(min(n - len(out), 1 << 20))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def read_to_eof(s: socket.socket) -> bytes:
    out = bytearray()
    while chunk := s.recv(1 << 20):
        out += chunk
    return bytes(out)


def _kernel_allows_bpf() -> str:
    """'' when this process may create a SOCKHASH map (what a worker does at
    start), else why not: containers often refuse bpf(2), and lb then
    forwards in user space (test_fallback_when_bpf_is_refused)."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(struct.pack("IIII", 18, 8, 8, 16) + bytes(112), 128)  # BPF_MAP_TYPE_SOCKHASH
    fd = libc.syscall(321, 0, attr, 128)   # bpf(BPF_MAP_CREATE) on x86_64
    if fd < 0:
        return f"the kernel refuses bpf(2) here ({os.strerror(ctypes.get_errno())})"
    os.close(fd)
    return ""


BPF_REFUSED = _kernel_allows_bpf() if os.uname().machine == "x86_64" else "bpf(2) probe written for x86_64"


def require_kernel_path():
    if BPF_REFUSED and not os.environ.get("LB_SOCKMAP_FAIL"):
        pytest.skip(BPF_REFUSED)


def start_sockmap(run_lb, server, listener_extra: str = "", **kwargs):
    require_kernel_path()
    port = free_port()
    require_kernel_path()
    lb = run_lb(lb_config(port, [server.entry], listener_extra=SOCKMAP + "\n" + listener_extra, **kwargs))
    return lb, port


def stat(lb, key: str) -> int:
    return sum(w[key] for w in lb.worker_stats())


def echo_through(port: int, payload: bytes, warm_up: bool = False) -> bytes:
    """Send payload while reading the echo on another thread; then half-close.
    warm_up: one round trip first, so the pair is idle once (and in the maps:
    a pair enters when lb holds none of its bytes) before the payload."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        if warm_up:
            s.sendall(b"hi")
            assert read_exactly(s, 2) == b"hi"
        got = []
        reader = threading.Thread(target=lambda: got.append(read_to_eof(s)))
        reader.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reader.join(60)
        assert got, "the echo did not end"
        return got[0]


def test_large_random_transfer_both_ways_intact_and_counted(run_lb, servers):
    server = servers(echo)
    lb, port = start_sockmap(run_lb, server)
    payload = os.urandom(12 << 20)
    got = echo_through(port, payload, warm_up=True)
    assert len(got) == len(payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    wait_for(lambda: stat(lb, "active") == 0, 10, "the pair to close")
    assert stat(lb, "sockmap_pairs") == 1
    assert stat(lb, "sockmap_fallbacks") == 0
    # what the kernel moved is counted like what lb moves (from TCP_INFO)
    assert stat(lb, "bytes_in") == len(payload) + 2
    assert stat(lb, "bytes_out") == len(payload) + 2
    assert lb.backend_stats(0)["bytes_in"] == len(payload) + 2
    assert lb.backend_stats(0)["bytes_out"] == len(payload) + 2
    assert not server.errors


def test_many_concurrent_pairs(run_lb, servers):
    server = servers(echo)
    lb, port = start_sockmap(run_lb, server)
    payloads = [os.urandom(200_000 + i * 997) for i in range(24)]
    results: dict[int, bytes] = {}

    def one(i):
        results[i] = echo_through(port, payloads[i], warm_up=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, p in enumerate(payloads):
        assert results.get(i) == p, f"pair {i}"
    wait_for(lambda: stat(lb, "active") == 0, 10, "every pair to close")
    assert stat(lb, "sockmap_pairs") == len(payloads)
    assert stat(lb, "bytes_in") == sum(map(len, payloads)) + 2 * len(payloads)


def greeting_line_echo(conn):
    """Speaks first (the greeting is in flight while lb hands the pair over),
    then answers each line with its echo."""
    conn.sendall(b"hello\n")
    f = conn.makefile("rb")
    while line := f.readline():
        conn.sendall(b"re:" + line)


def test_bytes_in_flight_at_the_handoff_are_delivered_first(run_lb, servers):
    """The client sends its pipelined requests right after connect (before lb
    has connected to the backend), the backend greets at once: bytes queued
    in either socket when the pair enters the maps must arrive, in order, and
    before anything the kernel redirects later, with nothing more to come to
    push them through."""
    server = servers(greeting_line_echo)
    lb, port = start_sockmap(run_lb, server)
    for round_ in range(40):
        lines = [b"%d-%d %s\n" % (round_, i, os.urandom(8).hex().encode()) for i in range(1 + round_ % 7)]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"".join(lines))
            expect = b"hello\n" + b"".join(b"re:" + line for line in lines)
            assert read_exactly(s, len(expect)) == expect
            # and later traffic, now by the kernel, still in order
            more = [b"late-%d\n" % i for i in range(5)]
            s.sendall(b"".join(more))
            assert read_exactly(s, sum(len(m) + 3 for m in more)) == b"".join(b"re:" + m for m in more)
    wait_for(lambda: stat(lb, "active") == 0, 10, "the pairs to close")
    assert stat(lb, "sockmap_pairs") == 40
    assert not server.errors


def test_client_half_close_delivers_everything_then_the_answer(run_lb, servers):
    received = []

    def sink_then_answer(conn):
        data = read_to_eof(conn)
        received.append(data)
        conn.sendall(b"got %d\n" % len(data))

    server = servers(sink_then_answer)
    lb, port = start_sockmap(run_lb, server)
    payload = os.urandom(6 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"x")
        wait_for(lambda: stat(lb, "sockmap_pairs") == 1, 10, "the pair to enter the maps")
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b"got %d\n" % (len(payload) + 1)
    assert received == [b"x" + payload]
    wait_for(lambda: stat(lb, "active") == 0, 10, "the pair to close")
    assert stat(lb, "bytes_in") == len(payload) + 1


def test_backend_half_close_then_client_keeps_sending(run_lb, servers):
    tail = []
    body = os.urandom(3 << 20)

    def speak_then_listen(conn):
        conn.sendall(b"ready\n")
        assert conn.recv(1) == b"g"
        conn.sendall(body)
        conn.shutdown(socket.SHUT_WR)
        tail.append(read_to_eof(conn))

    server = servers(speak_then_listen)
    lb, port = start_sockmap(run_lb, server)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        assert read_exactly(s, 6) == b"ready\n"
        wait_for(lambda: stat(lb, "sockmap_pairs") == 1, 10, "the pair to enter the maps")
        s.sendall(b"g")
        assert read_to_eof(s) == body
        late = os.urandom(1 << 20)
        s.sendall(late)
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: tail, 10, "the backend to read the client's bytes to EOF")
    assert tail == [late]
    assert not server.errors
    wait_for(lambda: stat(lb, "active") == 0, 10, "the pair to close")
    assert stat(lb, "bytes_out") == len(body) + 6
    assert stat(lb, "bytes_in") == len(late) + 1


def test_client_reset_closes_the_backend(run_lb, servers):
    ends = []

    def wait_end(conn):
        conn.sendall(b"ready\n")
        try:
            ends.append(read_to_eof(conn))
        except ConnectionResetError:
            ends.append("reset")

    server = servers(wait_end)
    lb, port = start_sockmap(run_lb, server)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert read_exactly(s, 6) == b"ready\n"
    wait_for(lambda: stat(lb, "sockmap_pairs") == 1, 10, "the pair to enter the maps")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    wait_for(lambda: ends, 10, "the backend to see the end")
    wait_for(lambda: stat(lb, "active") == 0, 10, "lb to close the pair")
    assert lb.backend_stats(0)["active"] == 0


def test_backend_death_closes_the_client(run_lb, servers):
    def die(conn):
        conn.sendall(b"ready\n")
        conn.recv(1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    server = servers(die)
    lb, port = start_sockmap(run_lb, server)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert read_exactly(s, 6) == b"ready\n"
        wait_for(lambda: stat(lb, "sockmap_pairs") == 1, 10, "the pair to enter the maps")
        s.sendall(b"!")
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    wait_for(lambda: stat(lb, "active") == 0, 10, "lb to close the pair")


def test_idle_timeout_counts_kernel_traffic_as_activity(run_lb, servers):
    server = servers(echo)
    lb, port = start_sockmap(run_lb, server, listener_extra='idle_timeout = "1s"')
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # 3 s of traffic that lb never sees, one message every 300 ms: not idle
        for i in range(10):
            s.sendall(b"ping %d\n" % i)
            assert read_exactly(s, 7) == b"ping %d\n" % i
            threading.Event().wait(0.3)
        assert stat(lb, "sockmap_pairs") == 1
        assert stat(lb, "idle_timeouts") == 0
        # then silence: closed for idleness
        assert read_to_eof(s) == b""
    assert stat(lb, "idle_timeouts") == 1
    wait_for(lambda: stat(lb, "active") == 0, 10, "the pair to close")


def test_reload_drains_pairs_in_the_maps(run_lb, servers):
    server = servers(echo)
    lb, port = start_sockmap(run_lb, server)
    old_pid = lb.worker_pid(0)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"before\n")
        assert read_exactly(s, 7) == b"before\n"
        wait_for(lambda: lb.shm.worker_stats(0)["sockmap_pairs"] == 1, 10, "the pair to enter the maps")
        result = subprocess.run([sys.executable, "-m", "lb", "-c", str(lb.config_path), "reload"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        # the old worker drains: the pair keeps working...
        payload = os.urandom(1 << 20)
        s.sendall(payload)
        assert read_exactly(s, len(payload)) == payload
        # ...new clients reach the new generation
        assert echo_through(port, b"new\n") == b"new\n"
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b""
    # and the old worker ends once its last pair closed
    wait_for(lambda: not _alive(old_pid), 10, "the old worker to exit")


def _alive(pid: int) -> bool:
    from conftest import process_gone
    return not process_gone(pid)


def test_fallback_when_bpf_is_refused(run_lb, servers, monkeypatch):
    monkeypatch.setenv("LB_SOCKMAP_FAIL", "1")
    server = servers(echo)
    lb, port = start_sockmap(run_lb, server)
    payload = os.urandom(2 << 20)
    # (warm_up: each pair is idle once, when it would have been handed over)
    assert echo_through(port, payload, warm_up=True) == payload
    assert echo_through(port, b"again", warm_up=True) == b"again"
    wait_for(lambda: stat(lb, "active") == 0, 10, "the pairs to close")
    assert stat(lb, "sockmap_pairs") == 0
    assert stat(lb, "sockmap_fallbacks") == 2
    assert stat(lb, "bytes_in") == len(payload) + 5 + 4
    assert lb.log().count('forward = "sockmap": the kernel refused BPF_MAP_CREATE') == 1


def test_a_reader_far_behind_gets_its_pair_reset_not_unbounded_kernel_memory(run_lb, servers):
    """The kernel queues redirected bytes for a slow reader without limit (no
    backpressure of its own, docs/tcp.md): lb bounds that memory by resetting
    the pair, explicitly, once a direction holds more than its bound."""
    go = threading.Event()
    ends = []

    def stalled(conn):
        conn.sendall(b"ready\n")
        go.wait(30)
        try:
            read_to_eof(conn)
            ends.append("eof")
        except ConnectionResetError:
            ends.append("reset")

    server = servers(stalled)
    port = free_port()
    require_kernel_path()
    lb = run_lb(lb_config(port, [server.entry], listener_extra=SOCKMAP
                          + '\n[logs.access]\nformat = "json"\ntarget = "stdout"\n'))
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert read_exactly(s, 6) == b"ready\n"
    wait_for(lambda: stat(lb, "sockmap_pairs") == 1, 10, "the pair to enter the maps")
    chunk = os.urandom(1 << 20)
    sent = 0
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        while sent < (1 << 30):
            s.sendall(chunk)
            sent += len(chunk)
    s.close()
    go.set()
    # about 32 MiB (the bound) plus what arrives in one 10 ms check, not the 1 GiB offered
    assert sent < (256 << 20), sent
    assert stat(lb, "sockmap_overruns") == 1
    wait_for(lambda: stat(lb, "active") == 0, 10, "the pair to close")
    wait_for(lambda: ends, 10, "the backend to see the end")
    assert ends == ["reset"]
    wait_for(lambda: '"termination":"lb_error"' in lb.log().replace(" ", ""), 10, "the access log record")


@pytest.mark.parametrize("extra,message", [
    ('mode = "http"', 'needs mode = "tcp"'),
    ('tls_passthrough = true', "needs a plain listener"),
])
def test_config_refuses_sockmap_where_bytes_are_not_opaque(extra, message):
    text = f"""
[global]
workers = 1
[listeners.t]
bind = ["127.0.0.1:{free_port()}"]
{extra}
pool = "p"
forward = "sockmap"
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:1"
"""
    if "mode" not in extra:
        text = text.replace("[listeners.t]\n", '[listeners.t]\nmode = "tcp"\n')
    with pytest.raises(ConfigError) as e:
        load_text(text)
    assert "listeners.t.forward" in str(e.value)
    assert message in str(e.value)


def test_config_forward_default_and_unknown_value():
    base = f"""
[listeners.t]
bind = ["127.0.0.1:{free_port()}"]
mode = "tcp"
pool = "p"
{{}}
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:1"
"""
    assert load_text(base.format("")).listeners["t"].forward == "userspace"
    assert load_text(base.format(SOCKMAP)).listeners["t"].forward == "sockmap"
    with pytest.raises(ConfigError) as e:
        load_text(base.format('forward = "ebpf"'))
    assert "listeners.t.forward" in str(e.value)


def test_access_log_counts_the_kernels_bytes(run_lb, servers, tmp_path):
    import json

    server = servers(echo)
    log = tmp_path / "access.log"
    port = free_port()
    require_kernel_path()
    lb = run_lb(lb_config(port, [server.entry], listener_extra=SOCKMAP)
                + f'\n[logs.access]\nformat = "json"\ntarget = "file:{log}"\n')
    payload = os.urandom(3 << 20)
    assert echo_through(port, payload, warm_up=True) == payload
    wait_for(lambda: log.exists() and log.read_text().strip(), 10, "the access log record")
    line = json.loads(log.read_text().splitlines()[0])
    assert (line["bytes_in"], line["bytes_out"]) == (len(payload) + 2, len(payload) + 2)
    assert line["termination"] == "ok"
    assert stat(lb, "sockmap_pairs") == 1


def test_worker_killed_ends_its_pairs_and_a_new_worker_serves(run_lb, servers):
    server = servers(echo)
    lb, port = start_sockmap(run_lb, server)
    old_pid = lb.worker_pid(0)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"one\n")
    assert read_exactly(s, 4) == b"one\n"
    wait_for(lambda: lb.shm.worker_stats(0)["sockmap_pairs"] == 1, 10, "the pair to enter the maps")
    os.kill(old_pid, signal.SIGKILL)
    # the kernel closes the worker's sockets, and with them the maps: the
    # client sees the end, it is not left hanging on a pair nobody owns
    try:
        assert s.recv(100) == b""
    except ConnectionResetError:
        pass
    s.close()
    wait_for(lambda: lb.worker_pid(0) not in (0, old_pid), 10, "the worker to be respawned")
    assert echo_through(port, b"after\n", warm_up=True) == b"after\n"


def test_proxy_headers_both_ways_then_the_kernel(run_lb, servers):
    """accept_proxy: lb reads the client's header (those bytes are lb's, not
    forwarded); send_proxy: lb sends its own before anything else. The pair
    goes to the kernel only once that header is out: the backend reads the
    header, then the client's bytes, in order."""
    headers = []

    def expect_header_then_echo(conn):
        f = conn.makefile("rb")
        headers.append(f.readline())
        while line := f.readline():
            conn.sendall(line)

    server = servers(expect_header_then_echo)
    port = free_port()
    require_kernel_path()
    lb = run_lb(lb_config(port, [server.entry], listener_extra=SOCKMAP + "\naccept_proxy = true",
                          pool_extra='send_proxy = "v1"'))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        lines = [b"line %d %s\n" % (i, os.urandom(4).hex().encode()) for i in range(50)]
        s.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n" + b"".join(lines[:5]))
        assert read_exactly(s, sum(map(len, lines[:5]))) == b"".join(lines[:5])
        wait_for(lambda: stat(lb, "sockmap_pairs") == 1, 10, "the pair to enter the maps")
        s.sendall(b"".join(lines[5:]))
        assert read_exactly(s, sum(map(len, lines[5:]))) == b"".join(lines[5:])
    assert headers == [b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n"]
    wait_for(lambda: stat(lb, "active") == 0, 10, "the pair to close")
    assert stat(lb, "bytes_out") == sum(map(len, lines))
