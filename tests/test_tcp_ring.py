"""tcp pairs forwarded on the io_uring (lb/fastpath/uring.pxi: receives kept
posted, sends submitted with the wait) and on the epoll loop (io_uring = false):
the same bytes, backpressure, half-closes, resets, timeouts and no leak."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import psutil
import pytest

from backend_server import TRANSFORM
from conftest import free_port, lb_config, wait_for

RING = pytest.mark.parametrize("io_uring", ["true", "false"])


def _lb(run_lb, backend: str, io_uring: str, *, splice: str = "auto", listener_extra: str = ""):
    port = free_port()
    lb = run_lb(lb_config(port, [(backend, "b", 100)], listener_extra=listener_extra,
                          global_extra=f'io_uring = {io_uring}\nsplice = "{splice}"'))
    return port, lb


class ThreadBackend:
    """A listening socket whose each connection runs handler(conn) in a thread;
    what the handlers record goes to .results, their exceptions to .errors."""

    def __init__(self, handler):
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.srv.getsockname()[1]}"
        self.handler = handler
        self.results: list = []
        self.errors: list = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.srv.accept()
        try:
            with conn:
                conn.settimeout(20)
                self.results.append(self.handler(conn))
        except Exception as e:  # noqa: BLE001 (reported by the test)
            self.errors.append(e)
        finally:
            self.done.set()

    def finish(self):
        assert self.done.wait(30), "the backend's handler did not finish"
        self.srv.close()
        assert not self.errors, self.errors
        return self.results[0]


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "closed early"
        out += chunk
    return bytes(out)


def recv_to_eof(s: socket.socket) -> bytes:
    out = bytearray()
    while chunk := s.recv(65536):
        out += chunk
    return bytes(out)


@RING
def test_many_connections_small_and_bulk_messages_byte_exact(io_uring, backends, run_lb):
    """Many pairs at once, small messages and messages past 16 KiB (the bulk ones
    leave the ring for splice): every answer is its own connection's, intact,
    and the pairs keep working after the switch."""
    backend = backends("b1")
    port, _ = _lb(run_lb, backend.address, io_uring)
    conns = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(48)]
    try:
        for rnd in range(12):
            sizes = [1 + (i * 977 + rnd * 131) % 3000 if (i + rnd) % 5 else 40000 + i * 333
                     for i in range(len(conns))]
            msgs = [os.urandom(n) for n in sizes]
            for s, m in zip(conns, msgs):
                s.sendall(m)
            for s, m in zip(conns, msgs):
                assert recv_exact(s, len(m)) == m.translate(TRANSFORM)
    finally:
        for s in conns:
            s.close()


@RING
def test_slow_reader_stops_reading_from_its_peer(io_uring, run_lb):
    """A client that reads nothing: lb stops reading from the backend once the
    client's socket is full, so the backend blocks after what the sockets'
    buffers hold (not after all it wants to send), and the client later gets
    every byte in order."""
    rmem_max = int(open("/proc/sys/net/ipv4/tcp_rmem").read().split()[2])
    wmem_max = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2])
    # the backend's send buffer, lb's receive buffer from it, lb's send buffer to
    # the client, the client's receive buffer, lb's own buffers: and a margin
    bound = 2 * wmem_max + rmem_max + (1 << 20) + (4 << 20)
    block = os.urandom(1 << 16)
    blocked = threading.Event()

    def handler(conn):
        conn.settimeout(2)
        sent, h = 0, hashlib.sha256()
        while sent < 2 * bound:
            try:
                n = conn.send(block)
            except TimeoutError:
                break                    # blocked: nobody reads on the way
            h.update(block[:n])
            sent += n
        blocked.set()
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(30)
        recv_to_eof(conn)
        return sent, h.hexdigest()

    be = ThreadBackend(handler)
    port, _ = _lb(run_lb, be.address, io_uring, splice="never")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(60)
    s.connect(("127.0.0.1", port))
    try:
        assert blocked.wait(60)
        got = hashlib.sha256()
        received = 0
        while chunk := s.recv(1 << 20):
            got.update(chunk)
            received += len(chunk)
        s.shutdown(socket.SHUT_WR)
    finally:
        s.close()
    sent, digest = be.finish()
    assert sent < bound, f"the backend could send {sent} bytes to a client that read none"
    assert (received, got.hexdigest()) == (sent, digest)


def _exchange(s: socket.socket, conn_side=False):
    """One small message each way, so that the pair is established and on its
    forwarding path (the ring adopts a pair after its first bytes)."""
    if conn_side:
        assert recv_exact(s, 5) == b"hello"
        s.sendall(b"HELLO")
    else:
        s.sendall(b"hello")
        assert recv_exact(s, 5) == b"HELLO"


@RING
def test_client_half_close_after_an_exchange(io_uring, run_lb):
    """The client's FIN reaches the backend after its last bytes; the backend
    can still answer, and its answer and then its FIN reach the client."""
    def handler(conn):
        _exchange(conn, True)
        rest = recv_to_eof(conn)
        conn.sendall(b"bye after " + rest)
        return rest

    be = ThreadBackend(handler)
    port, lb = _lb(run_lb, be.address, io_uring)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        _exchange(s)
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        assert recv_to_eof(s) == b"bye after last words"
    assert be.finish() == b"last words"
    wait_for(lambda: lb.worker_stats()[0]["active"] == 0, 10, "the pair to be closed")


@RING
def test_backend_half_close_after_an_exchange(io_uring, run_lb):
    """The backend's FIN reaches the client after its last bytes; the client
    can still send, and its bytes and then its FIN reach the backend."""
    def handler(conn):
        _exchange(conn, True)
        conn.sendall(b"that is all")
        conn.shutdown(socket.SHUT_WR)
        return recv_to_eof(conn)

    be = ThreadBackend(handler)
    port, lb = _lb(run_lb, be.address, io_uring)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        _exchange(s)
        assert recv_to_eof(s) == b"that is all"
        s.sendall(b"one more thing")
        s.shutdown(socket.SHUT_WR)
        assert be.finish() == b"one more thing"
        assert recv_to_eof(s) == b""
    wait_for(lambda: lb.worker_stats()[0]["active"] == 0, 10, "the pair to be closed")


@RING
def test_client_reset_resets_the_backend(io_uring, run_lb):
    """A client that resets an established pair: the backend gets a reset too
    (not a FIN that would pass for a complete request)."""
    def handler(conn):
        _exchange(conn, True)
        try:
            data = conn.recv(100)
        except ConnectionResetError:
            return "reset"
        return data

    be = ThreadBackend(handler)
    port, lb = _lb(run_lb, be.address, io_uring)
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    _exchange(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    assert be.finish() == "reset"
    wait_for(lambda: lb.worker_stats()[0]["active"] == 0, 10, "the pair to be closed")


@RING
def test_idle_timeout_closes_a_pair_after_an_exchange(io_uring, run_lb):
    """A pair idle past idle_timeout is closed on both sides, and counted."""
    def handler(conn):
        _exchange(conn, True)
        return recv_to_eof(conn)

    be = ThreadBackend(handler)
    port, lb = _lb(run_lb, be.address, io_uring, listener_extra='idle_timeout = "300ms"')
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        _exchange(s)
        assert recv_to_eof(s) == b""
    assert be.finish() == b""
    assert lb.worker_stats()[0]["idle_timeouts"] == 1
    wait_for(lambda: lb.worker_stats()[0]["active"] == 0, 10, "the pair to be closed")


def _churn(port: int, n: int, batch: int = 50):
    for start in range(0, n, batch):
        socks = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(batch)]
        for i, s in enumerate(socks):
            s.sendall(b"churn %06d" % (start + i))
        for i, s in enumerate(socks):
            want = (b"churn %06d" % (start + i)).translate(TRANSFORM)
            assert recv_exact(s, len(want)) == want
        for i, s in enumerate(socks):
            if i % 3 == 0:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            elif i % 3 == 1:
                s.shutdown(socket.SHUT_WR)
            s.close()


@RING
def test_connection_churn_leaves_no_fd_or_memory_behind(io_uring, backends, run_lb):
    """Thousands of pairs opened, used and ended (FIN, half-close, reset): the
    worker's fds come back to what they were and its RSS stays flat once
    warm (a pair the ring still named would never be freed: its memory would
    grow with the churn)."""
    backend = backends("b1")
    port, lb = _lb(run_lb, backend.address, io_uring)
    worker = psutil.Process(lb.worker_pid(0))
    _churn(port, 600)
    wait_for(lambda: lb.worker_stats()[0]["active"] == 0, 20, "the warm-up's pairs to be closed")
    fds, rss = worker.num_fds(), worker.memory_info().rss
    _churn(port, 3000)
    wait_for(lambda: lb.worker_stats()[0]["active"] == 0, 20, "the pairs to be closed")
    wait_for(lambda: worker.num_fds() == fds, 10, "the worker's fds to come back")
    grown = worker.memory_info().rss - rss
    assert grown < (1 << 20), f"RSS grew by {grown} bytes over 3000 pairs"
    assert lb.backend_stats(0)["total"] == 3600


@RING
def test_slow_readers_do_not_starve_other_pairs(io_uring, run_lb):
    """Many clients that read nothing while their backends push as fast as
    they can: what lb holds for them must not take the buffers that other
    pairs receive into; a pair opened meanwhile still exchanges its bytes."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=64)
    block = os.urandom(1 << 16)
    n_push = 24
    blocked = threading.Semaphore(0)
    stop = threading.Event()
    threads = []

    def push(conn):
        conn.settimeout(1)
        while not stop.is_set():
            try:
                conn.send(block)
            except TimeoutError:
                break
            except OSError:
                return
        blocked.release()
        stop.wait(60)

    def echo(conn):
        conn.settimeout(30)
        while data := conn.recv(65536):
            conn.sendall(data.upper())

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            kind = recv_exact(conn, 4)
            t = threading.Thread(target=push if kind == b"push" else echo, args=(conn,), daemon=True)
            t.start()
            threads.append((t, conn))

    threading.Thread(target=serve, daemon=True).start()
    port, _ = _lb(run_lb, f"127.0.0.1:{srv.getsockname()[1]}", io_uring, splice="never")
    pushers = []
    try:
        for _ in range(n_push):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.settimeout(30)
            s.connect(("127.0.0.1", port))
            s.sendall(b"push")
            pushers.append(s)
        for _ in range(n_push):
            assert blocked.acquire(timeout=60), "a pushing backend never blocked"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"echo")
            for i in range(20):
                msg = b"message %d " % i * (1 + i * 50)
                s.sendall(msg)
                assert recv_exact(s, len(msg)) == msg.upper()
    finally:
        stop.set()
        for s in pushers:
            s.close()
        srv.close()
        for _, conn in threads:
            conn.close()
