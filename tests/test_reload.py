"""Reload and recycling details beyond the CLI tests: listeners added and
removed by a reload, counters and health carried over, and the worker memory
guard replacing a worker without dropping a connection."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import psutil

from backend_server import TRANSFORM
from conftest import free_port, lb_config, process_gone, wait_for


def lb_cli(lb, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", "-c", str(lb.config_path), *args],
                          capture_output=True, text=True, timeout=30)


def echo_once(port: int, payload: bytes = b"x") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(len(payload) - len(got))
            assert chunk, "closed early"
            got += chunk
        return got


def test_reload_adds_and_removes_listeners_and_keeps_counters(backends, run_lb):
    backend = backends("b1")
    port, port2 = free_port(), free_port()
    lb = run_lb(lb_config(port, [backend], workers=2))
    for _ in range(10):
        assert echo_once(port) == b"x".translate(TRANSFORM)
    total_before = lb.backend_stats(0)["total"]
    assert total_before == 10

    # add a second listener on the same pool
    text = lb.config_path.read_text()
    lb.config_path.write_text(text + f'\n[listeners.second]\nbind = ["127.0.0.1:{port2}"]\nmode = "tcp"\npool = "p"\n')
    result = lb_cli(lb, "reload")
    assert result.returncode == 0, result.stderr
    assert echo_once(port2) == b"x".translate(TRANSFORM)
    assert echo_once(port) == b"x".translate(TRANSFORM)

    # the status of the new generation counts what the old one served
    status = lb_cli(lb, "status", "--json")
    import json
    doc = json.loads(status.stdout)
    assert doc["generation"] == 2
    assert doc["pools"]["p"]["backends"]["b1"]["total"] == total_before + 2

    # remove the first listener: its port stops accepting once the old generation is gone
    lb.config_path.write_text(text.replace(f'bind = ["127.0.0.1:{port}"]', f'bind = ["127.0.0.1:{port2}"]')
                              .replace("[listeners.t]", "[listeners.t2]"))
    result = lb_cli(lb, "reload")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) != 0, 10, "the removed listener to close")
    assert echo_once(port2) == b"x".translate(TRANSFORM)


def test_memory_guard_replaces_a_worker_without_dropping_its_connections(backends, run_lb):
    """max_worker_rss below any worker's size: the supervisor starts a new
    worker first, then the old one drains: a held connection keeps flowing and
    new connections keep succeeding."""
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend], workers=1, global_extra='max_worker_rss = "1MiB"'))
    first = lb.worker_pid(0)
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    held.sendall(b"a")
    assert held.recv(1) == b"a".translate(TRANSFORM)
    sup = psutil.Process(lb.proc.pid)

    def replaced():
        workers = [c for c in sup.children() if c.name().startswith("lb-worker")]
        return [c.pid for c in workers if c.pid != first]

    new_pids = wait_for(replaced, 10, "a replacement worker")
    assert new_pids
    # the old worker still holds and serves the connection it had
    held.sendall(b"still")
    got = b""
    while len(got) < 5:
        got += held.recv(5 - len(got))
    assert got == b"still".translate(TRANSFORM)
    for _ in range(20):
        assert echo_once(port) == b"x".translate(TRANSFORM)
    held.close()
    wait_for(lambda: process_gone(first), 10, "the old worker to finish draining")
    assert "over max_worker_rss" in lb.log()


def fd_kinds(pid: int) -> dict[str, int]:
    """The process's fds by what they are ("anon_inode:[eventpoll]", a file's
    path), sockets and pipes left out: those come and go with connections."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue                     # closed meanwhile
        if not target.startswith(("socket:", "pipe:")):
            kinds[target] = kinds.get(target, 0) + 1
    return kinds


def test_children_forked_after_a_reload_hold_only_their_own_fds(backends, run_lb):
    """A worker or checker of a later generation is forked from the
    supervisor's running loop: it must not keep a copy of that loop's epoll
    (nor anything else of the supervisor's). Each child has exactly its own
    epoll, and the fds the first generation's children had."""
    backend = backends("b1")
    port = free_port()
    lb = run_lb(lb_config(port, [backend], workers=1))
    sup = psutil.Process(lb.proc.pid)

    def first_generation():
        # (polled: the workers are up, a checker just forked may not yet be
        # renamed nor have opened its epoll)
        kids = {c.pid: c.name() for c in sup.children()}
        kinds = {name: fd_kinds(pid) for pid, name in kids.items()}
        return (kids, kinds) if all(k.get("anon_inode:[eventpoll]") == 1 for k in kinds.values()) else None

    first, before = wait_for(first_generation, 10, "the first generation's children, each with its epoll")
    result = lb_cli(lb, "reload")
    assert result.returncode == 0, result.stderr

    def second_generation():
        kids = {c.pid: c.name() for c in sup.children() if c.pid not in first}
        return kids if set(kids.values()) == set(first.values()) else None

    later = wait_for(second_generation, 10, "the second generation")
    assert echo_once(port) == b"x".translate(TRANSFORM)
    for pid, name in later.items():
        # (polled: a child just forked is still opening its own)
        wait_for(lambda: fd_kinds(pid) == before[name], 10, f"{name}'s fds as the first generation's")


def test_a_supervisor_that_starts_removes_the_regions_of_those_that_are_gone(backends, run_lb):
    """A supervisor killed by SIGKILL leaves its region in /dev/shm; the next
    lb to start removes it (its memory, and a pid that would come round
    again), and keeps the regions of instances still running."""
    child = subprocess.Popen(["true"])
    child.wait()
    stale = f"/dev/shm/lb-{child.pid}.shm"
    with open(stale, "wb") as f:
        f.write(b"\0" * 4096)
    try:
        first = run_lb(lb_config(free_port(), [backends("b1")], workers=1))
        assert not os.path.exists(stale)
        assert re.search(r"removed [1-9]\d* shared-memory region\(s\) of lb instances that are gone", first.log())
        second = run_lb(lb_config(free_port(), [backends("b2")], workers=1))
        assert os.path.exists(first.shm_path) and os.path.exists(second.shm_path)
    finally:
        if os.path.exists(stale):
            os.unlink(stale)
