"""The tcp data path end to end: real `lb run`, real backend processes, loopback."""

from __future__ import annotations

import hashlib
import os
import selectors
import signal
import socket
import threading
import time

import psutil
import pytest

from backend_server import SPEAK_BYTES, TRANSFORM, speak_payload
from conftest import free_port, lb_config, wait_for

GIB = 1 << 30
CHUNK = 1 << 20


def roundtrip(port: int, payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    """One connection: send payload, half-close, read the backend's answer to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
        return bytes(out)


def hello_name(port: int, timeout: float = 5.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        return f.readline().decode().strip()


@pytest.mark.parametrize("workers", [1, 4])
def test_one_gib_each_way_is_byte_exact(workers, backends, run_lb):
    backend = backends("b1")
    port = free_port()
    run_lb(lb_config(port, [backend], workers=workers))

    block = os.urandom(CHUNK)
    sent_hash, expected_back, got_back = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    translated = block.translate(TRANSFORM)
    for _ in range(GIB // CHUNK):
        sent_hash.update(block)
        expected_back.update(translated)

    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    errors = []

    def send_all():
        try:
            view = memoryview(block)
            for _ in range(GIB // CHUNK):
                s.sendall(view)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(e)

    sender = threading.Thread(target=send_all)
    sender.start()
    received = 0
    buf = bytearray(CHUNK)
    while n := s.recv_into(buf):
        got_back.update(memoryview(buf)[:n])
        received += n
    sender.join()
    s.close()
    assert not errors
    assert received == GIB
    assert got_back.hexdigest() == expected_back.hexdigest()


def test_client_half_close_reaches_backend(backends, run_lb):
    """Client sends and shuts down its write side; the backend sees EOF after every
    byte and can still answer on the same connection."""
    backend = backends("b1", mode="drain-report")
    port = free_port()
    run_lb(lb_config(port, [backend]))
    payload = os.urandom(3 * CHUNK + 17)
    answer = roundtrip(port, payload)
    assert answer == f"ok {len(payload)}\n".encode()
    assert backend.report() == f"received {len(payload)} {hashlib.sha256(payload).hexdigest()}"


def test_backend_half_close_reaches_client(backends, run_lb):
    """The backend speaks, then shuts down its write side; the client reads to EOF
    and can still send on the same connection, byte-exact."""
    backend = backends("b1", mode="speak-first")
    port = free_port()
    run_lb(lb_config(port, [backend]))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
        assert bytes(got) == speak_payload()
        assert len(got) == SPEAK_BYTES
        after = os.urandom(CHUNK + 5)
        s.sendall(after)
        s.shutdown(socket.SHUT_WR)
        assert backend.report() == f"received {len(after)} {hashlib.sha256(after).hexdigest()}"


def test_2000_concurrent_connections(backends, run_lb):
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend], workers=2))
    n = 2000
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
        # every connection open at once, each carrying its own message both ways
        for i, s in enumerate(socks):
            s.sendall(b"conn %06d\n" % i)
        for i, s in enumerate(socks):
            want = (b"conn %06d\n" % i).translate(TRANSFORM)
            got = b""
            while len(got) < len(want):
                chunk = s.recv(len(want) - len(got))
                assert chunk, f"connection {i} closed early"
                got += chunk
            assert got == want
        assert lb.backend_stats(0)["active"] == n
        assert sum(w["active"] for w in lb.worker_stats()) == n
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: lb.backend_stats(0)["active"] == 0, 10, "connections to be released")
    assert lb.backend_stats(0)["total"] == n


@pytest.mark.parametrize("workers", [1, 2])
def test_weighted_round_robin_1_to_3(workers, backends, run_lb):
    light = backends("light", hello=True)
    heavy = backends("heavy", hello=True)
    port = free_port()
    run_lb(lb_config(port, [(light.address, "light", 100), (heavy.address, "heavy", 300)], workers=workers))
    n = 2000
    counts = {"light": 0, "heavy": 0}
    for _ in range(n):
        counts[hello_name(port)] += 1
    share = counts["light"] / n
    assert abs(share - 0.25) <= 0.25 * 0.02, counts


def test_weighted_least_connections_follows_weights(backends, run_lb):
    """Held connections spread 1:3 when weights are 1:3, counted across workers."""
    light = backends("light", hello=True)
    heavy = backends("heavy", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [(light.address, "light", 100), (heavy.address, "heavy", 300)],
                          workers=2, algorithm="leastconn"))
    socks, counts = [], {"light": 0, "heavy": 0}
    try:
        for _ in range(400):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            counts[s.makefile("rb").readline().decode().strip()] += 1
        assert abs(counts["light"] - 100) <= 4, counts
        assert lb.backend_stats(0)["active"] + lb.backend_stats(1)["active"] == 400
    finally:
        for s in socks:
            s.close()


def test_refused_backend_is_skipped(backends, run_lb):
    live = backends("live", hello=True)
    dead_port = free_port()  # nothing listens there: connect is refused
    port = free_port()
    lb = run_lb(lb_config(port, [(f"127.0.0.1:{dead_port}", "dead", 100), (live.address, "live", 100)]))
    for i in range(200):
        assert hello_name(port) == "live", f"connection {i}"
    dead = lb.backend_stats(0)
    # each try was refused until passive health ejected it (5 failures in a row)
    assert dead["connect_errors"] >= 5 and dead["active"] == 0
    info = lb.shm.backend(0, 0)
    assert (info["health"], info["down_reason"]) == ("down", 6), info  # REASON_PASSIVE
    assert lb.backend_stats(1)["total"] == 200


def test_connect_timeout_moves_on(backends, run_lb):
    """A backend whose accept queue is full drops SYNs: the connect times out after
    connect_timeout and the next backend serves the client."""
    live = backends("live", hello=True)
    black = socket.socket()
    black.bind(("127.0.0.1", 0))
    black.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    for f in fillers:
        f.setblocking(False)
        f.connect_ex(black.getsockname())
    port = free_port()
    lb = run_lb(lb_config(port, [(f"127.0.0.1:{black.getsockname()[1]}", "black", 100),
                                 (live.address, "live", 100)],
                          connect_timeout="300ms", pool_extra="retries = 2"))
    try:
        names = [hello_name(port, timeout=10) for _ in range(4)]
        assert names == ["live"] * 4
        assert lb.backend_stats(0)["connect_timeouts"] >= 1
    finally:
        black.close()
        for f in fillers:
            f.close()


def test_no_backend_closes_client(run_lb):
    port = free_port()
    lb = run_lb(lb_config(port, [(f"127.0.0.1:{free_port()}", "dead", 100)]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(1) == b""
    assert lb.worker_stats()[0]["no_backend"] == 1


def test_idle_timeout_closes_both_sides(backends, run_lb):
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend], listener_extra='idle_timeout = "300ms"'))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x".translate(TRANSFORM)
        started = time.monotonic()
        assert s.recv(1) == b""  # lb closed the idle connection
        assert 0.25 <= time.monotonic() - started < 3
    assert lb.worker_stats()[0]["idle_timeouts"] == 1
    wait_for(lambda: lb.backend_stats(0)["active"] == 0, 5, "the backend side to be closed")


def test_kill_9_worker_is_respawned_and_service_continues(backends, run_lb):
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend], workers=2))
    stop = threading.Event()
    results = []  # (start time, ok)

    def load():
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = roundtrip(port, b"hello") == b"hello".translate(TRANSFORM)
            except OSError:
                ok = False
            results.append((started, ok))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) > 200, 10, "load to run")
        victim = lb.worker_pid(0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        try:
            psutil.Process(victim).wait(timeout=5)
        except psutil.NoSuchProcess:
            pass                         # the supervisor reaped it first
        gone_at = time.monotonic()
        new_pid = wait_for(lambda: (lb.worker_pid(0) not in (0, victim)) and lb.all_workers_running()
                           and lb.worker_pid(0), 1.0, "worker 0 to be respawned")
        respawn_s = time.monotonic() - killed_at
        wait_for(lambda: sum(1 for t0, _ in results if t0 > gone_at) > 300, 20, "load after the respawn")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert new_pid != victim and respawn_s < 1.0
    after = [ok for t0, ok in results if t0 > gone_at]
    assert all(after), f"{after.count(False)} of {len(after)} new connections failed after the kill"
    assert "worker 0 (pid %d) died: killed by SIGKILL; respawning" % victim in lb.log()


def test_graceful_stop_lets_open_connections_finish(backends, run_lb):
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend], workers=2))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"a")
    assert s.recv(1) == b"a".translate(TRANSFORM)
    lb.proc.send_signal(signal.SIGTERM)
    # new connections are refused once the listening sockets are closed
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) != 0, 5, "listener to close")
    # the open one still flows both ways
    s.sendall(b"still here")
    got = b""
    while len(got) < 10:
        got += s.recv(10 - len(got))
    assert got == b"still here".translate(TRANSFORM)
    assert lb.proc.poll() is None
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b""
    s.close()
    assert lb.proc.wait(10) == 0


def test_fast_stop_closes_everything(backends, run_lb):
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend]))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"a")
    assert s.recv(1) == b"a".translate(TRANSFORM)
    lb.proc.send_signal(signal.SIGINT)
    assert lb.proc.wait(5) == 0
    try:
        assert s.recv(1) == b""
    except ConnectionResetError:
        pass
    s.close()


def test_fd_limit_pauses_accepting_without_refusing(backends, run_lb):
    """With few fds, a worker stops accepting before it runs out, says so in its
    counters, and serves the waiting clients once others leave."""
    import resource

    backend = backends("b1")
    port = free_port()

    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))

    lb = run_lb(lb_config(port, [backend]), preexec_fn=low_nofile)
    held = []
    try:
        for _ in range(80):  # more pairs than the worker may hold
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(s)
        wait_for(lambda: lb.worker_stats()[0]["paused_now"], 5, "the worker to pause accepting")
        stats = lb.worker_stats()[0]
        assert stats["accept_paused"] >= 1
        assert stats["active"] < 80
        served = stats["active"]
        # release the served ones: the queued clients get their turn
        for s in held[:served]:
            s.close()
        for i, s in enumerate(held[served:]):
            s.sendall(b"q")
            assert s.recv(1) == b"q".translate(TRANSFORM), f"queued client {i}"
    finally:
        for s in held:
            s.close()


def test_ipv6_listener_and_backend(backends, run_lb):
    if not socket.has_ipv6:
        pytest.fail("IPv6 loopback is expected on this machine")
    backend = backends("v6", host="::1", hello=True)
    port = free_port("::1")
    run_lb(lb_config(port, [backend], bind_host="::1"))
    with socket.create_connection(("::1", port), timeout=5) as s:
        assert s.makefile("rb").readline() == b"v6\n"


def hello_name_from(port: int, source: str, timeout: float = 5.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        return s.makefile("rb").readline().decode().strip()


def test_maglev_source_ip_pins_each_client_to_its_table_slot(backends, run_lb):
    from lb._fastpath import hash64, maglev_table

    servers = [backends(f"m{i}", hello=True) for i in range(3)]
    port = free_port()
    table_size = 251
    run_lb(lb_config(port, servers, algorithm="maglev",
                     pool_extra=f'hash_key = "source_ip"\ntable_size = {table_size}'))
    names = [s.name for s in servers]
    table = maglev_table(names, [100] * 3, table_size)
    seen = set()
    for last in range(1, 40):
        source = f"127.0.0.{last}"
        expected = names[table[hash64(socket.inet_aton(source)) % table_size]]
        for _ in range(3):  # every connection of a client lands on the same backend
            assert hello_name_from(port, source) == expected, source
        seen.add(expected)
    assert seen == set(names)


def test_maglev_source_addr_spreads_one_client(backends, run_lb):
    servers = [backends(f"m{i}", hello=True) for i in range(3)]
    port = free_port()
    run_lb(lb_config(port, servers, algorithm="maglev", pool_extra='hash_key = "source_addr"'))
    names = {hello_name(port) for _ in range(60)}
    assert names == {s.name for s in servers}


def test_bounded_loads_spread_held_connections_of_one_key(backends, run_lb):
    """Every connection has the same key; with balance_factor 1.25 none of the
    three backends holds more than its bound, ceil(1.25 * total / 3)."""
    servers = [backends(f"m{i}", hello=True) for i in range(3)]
    port = free_port()
    lb = run_lb(lb_config(port, servers, algorithm="maglev", workers=2,
                          pool_extra='hash_key = "source_ip"\nbalance_factor = 1.25'))
    held = []
    try:
        for total in range(1, 61):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(s)
            s.makefile("rb").readline()
            counts = [lb.backend_stats(i)["active"] for i in range(3)]
            assert sum(counts) == total
            assert max(counts) <= -(-125 * total // 300), counts
    finally:
        for s in held:
            s.close()


# ---- global.io_uring: a turn's calls submitted together (lb/fastpath/uring.pxi) ----


def _io_uring_allowed() -> bool:
    """Whether this kernel gives an unprivileged process an io_uring (6.0+ for
    the ring lb asks for, and not switched off by the sysctl)."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            if f.read().strip() != "0":
                return False
    except FileNotFoundError:
        pass
    return tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit()) >= (6, 0)


def _has_io_uring(pid: int) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    return any(os.readlink(f"{fd_dir}/{fd}") == "anon_inode:[io_uring]" for fd in os.listdir(fd_dir))


@pytest.mark.parametrize("io_uring", [True, False])
def test_tcp_worker_uses_an_io_uring_unless_switched_off(io_uring, backends, run_lb):
    """The worker of a tcp listener holds a ring when the kernel allows one and
    global.io_uring is on, and none when it is off; bytes are intact either way."""
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend], global_extra=f"io_uring = {str(io_uring).lower()}"))
    assert roundtrip(port, b"hello") == b"hello".translate(TRANSFORM)
    assert _has_io_uring(lb.worker_pid(0)) == (io_uring and _io_uring_allowed())


def test_ring_path_many_connections_ping_pong_byte_exact(backends, run_lb):
    """Many connections exchanging messages at once: each turn's calls for all of
    them go through the ring together; every answer belongs to its connection."""
    backend = backends("b1")
    port = free_port()
    run_lb(lb_config(port, [backend], global_extra='splice = "never"'))
    conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
    try:
        for rnd in range(30):
            msgs = [os.urandom(1 + (i * 977 + rnd * 131) % 3000) for i in range(len(conns))]
            for s, m in zip(conns, msgs):
                s.sendall(m)
            for s, m in zip(conns, msgs):
                want = m.translate(TRANSFORM)
                got = bytearray()
                while len(got) < len(want):
                    chunk = s.recv(len(want) - len(got))
                    assert chunk, "connection closed early"
                    got += chunk
                assert bytes(got) == want
    finally:
        for s in conns:
            s.close()


@pytest.mark.parametrize("io_uring", ["true", "false"])
def test_ring_path_slow_reader_bulk_byte_exact_then_half_close(io_uring, backends, run_lb):
    """Bulk with splice off moves 16 KiB at a time through the ring; a client that
    reads slowly makes its sends short or refused (EAGAIN), which must only
    pause that direction: every byte arrives, in order, and the half-close after
    the last one reaches the backend, whose own EOF then reaches the client."""
    backend = backends("b1")
    port = free_port()
    run_lb(lb_config(port, [backend], global_extra=f'splice = "never"\nio_uring = {io_uring}'))
    payload = os.urandom(24 * CHUNK + 4099)
    expected = hashlib.sha256(payload.translate(TRANSFORM)).hexdigest()
    s = socket.socket()
    # (before connect, so that the window is scaled for it: a small window keeps
    # lb's sends to this client short or refused while it reads slowly)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    errors = []

    def send_all():
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(e)

    sender = threading.Thread(target=send_all)
    sender.start()
    got, received = hashlib.sha256(), 0
    while received < 2 * CHUNK:
        chunk = s.recv(1000)                 # slowly at first: lb's sends to the client stall
        assert chunk
        got.update(chunk)
        received += len(chunk)
    while chunk := s.recv(CHUNK):
        got.update(chunk)
        received += len(chunk)
    sender.join()
    s.close()
    assert not errors
    assert received == len(payload)
    assert got.hexdigest() == expected


@pytest.mark.parametrize("io_uring", ["true", "false"])
def test_backend_reset_mid_exchange_resets_the_client(io_uring, run_lb):
    """A backend that resets an established connection: lb's failed call (a
    result of the ring's round, or a direct recv) resets the client too."""
    srv = socket.create_server(("127.0.0.1", 0))
    got = []

    def backend():
        conn, _ = srv.accept()
        with conn:
            got.append(conn.recv(5))
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    t = threading.Thread(target=backend)
    t.start()
    port = free_port()
    run_lb(lb_config(port, [(f"127.0.0.1:{srv.getsockname()[1]}", "r", 100)],
                     global_extra=f"io_uring = {io_uring}"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"hello")
            with pytest.raises(ConnectionResetError):
                while s.recv(100):
                    pass
    finally:
        t.join()
        srv.close()
    assert got == [b"hello"]
