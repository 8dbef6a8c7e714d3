"""Overload: max_connections (global and per listener, node-wide) and running
out of file descriptors. Past a limit, clients wait in the kernel's accept
queue and are served once room is back; no established client is closed to
make room, and none is refused by lb."""

from __future__ import annotations

import os
import resource
import socket
import textwrap

import psutil
import pytest

from conftest import free_port, global_toml, lb_config, wait_for
from test_admin import lb_ok, status_json

TRANSFORM = bytes((b ^ 0x5A) for b in range(256))


def round_trip(s: socket.socket, data: bytes = b"ping") -> None:
    """Bytes through lb and the transforming backend and back, intact."""
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(len(data) - len(got))
        assert chunk, "lb closed the connection"
        got += chunk
    assert got == data.translate(TRANSFORM)


def nothing_yet(s: socket.socket) -> bool:
    """No byte (and no close) has come: the client is not being served."""
    s.setblocking(False)
    try:
        s.recv(1)
    except BlockingIOError:
        return True
    finally:
        s.setblocking(True)
    return False


def connect(port: int) -> socket.socket:
    # the kernel completes the handshake even while lb does not accept: the
    # client waits in the accept queue
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def limited(lb) -> int:
    return sum(w["accept_limited"] for w in lb.worker_stats())


def two_listeners_config(port_a: int, port_b: int, backend, *, workers: int, global_max: int = 0,
                         max_a: int = 0, run_dir=None) -> str:
    text = global_toml(workers, run_dir=str(run_dir) if run_dir else None)
    if global_max:
        text += f"max_connections = {global_max}\n"
    text += textwrap.dedent(f"""
        [listeners.a]
        bind = ["127.0.0.1:{port_a}"]
        mode = "tcp"
        pool = "p"
        max_connections = {max_a}

        [listeners.b]
        bind = ["127.0.0.1:{port_b}"]
        mode = "tcp"
        pool = "p"

        [pools.p]
        [pools.p.health]
        type = "none"
        [[pools.p.backends]]
        address = "{backend.address}"
        """)
    return text


@pytest.mark.parametrize("workers", [1, 2])
def test_listener_max_connections_queues_clients_node_wide(backends, run_lb, workers, tmp_path):
    """A listener at max_connections (counted over every worker) accepts no more:
    the next client waits in the backlog, the connected ones keep working, and
    the waiting one is served as soon as one of them leaves. The other listener
    is not limited by it."""
    backend = backends("b1")
    port_a, port_b = free_port(), free_port()
    lb = run_lb(two_listeners_config(port_a, port_b, backend, workers=workers, max_a=2, run_dir=tmp_path))
    held = [connect(port_a), connect(port_a)]
    try:
        for s in held:                       # one at a time: both are in, whichever worker took them
            round_trip(s)
        assert lb.shm.listener_stats(0)["active"] == 2
        waiting = connect(port_a)
        held.append(waiting)
        wait_for(lambda: lb.shm.listener_stats(0)["limited"] >= 1, 5, "listener a to pause at its limit")
        assert nothing_yet(waiting)
        assert lb.shm.listener_stats(0)["active"] == 2
        assert any(w["paused_now"] for w in lb.worker_stats())
        # lb status says so: the listener's count, the worker's pause (a "*": now)
        wait_for((tmp_path / "admin.sock").exists, 10, "the admin socket")
        st = status_json(tmp_path / "admin.sock")
        a = st["listeners"][0]
        # (a worker that took both clients in one batch paused at the limit
        # then, the one the third client came to pauses too: one or two)
        assert (a["name"], a["max_connections"], a["active"]) == ("a", 2, 2) and a["limited"] >= 1
        assert sum(w["accept_limited"] for w in st["workers"]) == a["limited"]
        text = lb_ok(tmp_path / "admin.sock", "status")
        rows = [line.split() for line in text.split("RESTARTS", 1)[1].splitlines()[1:1 + workers]]
        # PAUSED (for fds: none, "*": not accepting now), LIMITED, RESTARTS
        assert any(row[-3] == "0*" and int(row[-2]) >= 1 and row[-1] == "0" for row in rows), text
        for s in held[:2]:                   # the connected clients are not disturbed
            round_trip(s, b"still served")
        with connect(port_b) as other:       # another listener: no limit
            round_trip(other)
        held[0].close()
        round_trip(waiting, b"my turn")      # served without sending again
        assert lb.shm.listener_stats(0)["active"] == 2
        assert lb.shm.listener_stats(0)["accepted"] == 3
    finally:
        for s in held:
            s.close()


def test_global_max_connections_counts_every_listener(backends, run_lb):
    backend = backends("b1")
    port_a, port_b = free_port(), free_port()
    lb = run_lb(two_listeners_config(port_a, port_b, backend, workers=2, global_max=2))
    a = connect(port_a)
    b = connect(port_b)
    waiting = None
    try:
        round_trip(a)
        round_trip(b)
        waiting = connect(port_a)
        wait_for(lambda: limited(lb) >= 1, 5, "a worker to pause at global.max_connections")
        assert nothing_yet(waiting)
        round_trip(a, b"a still served")
        b.close()                            # room on the node: the waiting client on the other listener gets it
        round_trip(waiting, b"my turn")
        status = lb.shm.listener_stats(0)
        assert status["active"] == 2 and status["accepted"] == 2
    finally:
        for s in (a, b, waiting):
            if s is not None:
                s.close()


def test_http_listener_max_connections(origins, run_lb):
    """A keep-alive client holds its place; the next one waits until it leaves."""
    from test_http import http_config

    o = origins("o")
    port = free_port()
    lb = run_lb(http_config(port, {"p": [o]}, listener="max_connections = 1\n"))
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    first = connect(port)
    second = None
    try:
        first.sendall(request)
        assert first.recv(65536).startswith(b"HTTP/1.1 200")
        second = connect(port)
        second.sendall(request)
        wait_for(lambda: lb.shm.listener_stats(0)["limited"] >= 1, 5, "the listener to pause at its limit")
        assert nothing_yet(second)
        first.sendall(request)               # keep-alive: still served
        assert first.recv(65536).startswith(b"HTTP/1.1 200")
        first.close()
        assert second.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        first.close()
        if second is not None:
            second.close()


def set_nofile(pid: int, soft: int) -> None:
    """prlimit(2) on a worker: from a child with the worker's uid and gid, as
    the worker may run as the lb account (when it exists) and root may lack
    CAP_SYS_RESOURCE here (a container)."""
    uids, gids = psutil.Process(pid).uids(), psutil.Process(pid).gids()
    child = os.fork()
    if child == 0:
        try:
            os.setgid(gids.real)
            os.setuid(uids.real)
            _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitpid(child, 0)[1] == 0, f"prlimit on worker {pid} failed"


def test_emfile_pauses_accepting_and_resumes(backends, run_lb):
    """A worker whose RLIMIT_NOFILE is lowered under it (so that its own fd
    budget does not see it coming) gets EMFILE from accept: it stops accepting
    (one failed accept, no busy loop on the still-readable listener), its
    connected client keeps working, and the queued clients are served once fds
    are back: a raised limit (found by its retry), or a client that leaves."""
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend]))
    pid = lb.worker_pid(0)
    held = []
    try:
        # room for exactly one client and its backend
        set_nofile(pid, psutil.Process(pid).num_fds() + 2)
        held.append(connect(port))
        round_trip(held[0])
        held.append(connect(port))
        wait_for(lambda: lb.worker_stats()[0]["accept_fd_errors"] >= 1, 5, "accept to fail with EMFILE")
        stats = lb.worker_stats()[0]
        assert stats["paused_now"] and stats["accept_paused"] >= 1
        assert nothing_yet(held[1])
        round_trip(held[0], b"still served")
        # fds are back without any close here: the retry finds them
        set_nofile(pid, psutil.Process(pid).num_fds() + 16)
        round_trip(held[1], b"served after the limit rose")
        # once failed, never tried again while paused: no accept in a loop
        assert lb.worker_stats()[0]["accept_fd_errors"] == 1
        wait_for(lambda: not lb.worker_stats()[0]["paused_now"], 5, "accepting to resume")

        # full again: now a client leaving makes the room
        set_nofile(pid, psutil.Process(pid).num_fds())
        held.append(connect(port))
        wait_for(lambda: lb.worker_stats()[0]["accept_fd_errors"] >= 2, 5, "accept to fail again")
        assert nothing_yet(held[2])
        round_trip(held[1], b"still served")
        held[0].close()
        round_trip(held[2], b"my turn")
        assert lb.backend_stats(0)["connect_errors"] == 0
    finally:
        for s in held:
            s.close()


def test_no_fd_for_the_backend_is_not_the_backends_fault(origins, run_lb):
    """With an fd for the client but none for its backend connection, the
    client gets a 503, the backend is not counted as failing (no passive
    ejection of a healthy pool for lb's own shortage), and accepting pauses
    until fds are back."""
    from test_http import http_config

    o = origins("o")
    port = free_port()
    lb = run_lb(http_config(port, {"p": [o]}))
    pid = lb.worker_pid(0)
    set_nofile(pid, psutil.Process(pid).num_fds() + 1)
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 503")
    # (accept(2) takes an fd before it looks at the queue: the next accept of
    # the batch may have failed first, with nothing queued)
    assert lb.worker_stats()[0]["accept_fd_errors"] >= 1
    assert lb.backend_stats(0)["connect_errors"] == 0
    set_nofile(pid, psutil.Process(pid).num_fds() + 16)
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
