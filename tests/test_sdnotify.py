"""sd_notify: lb tells a service manager (systemd, Type=notify) when it is
ready, reloading and stopping. The test plays systemd: it binds the datagram
socket named by NOTIFY_SOCKET and reads what `lb run` sends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from daemon_helpers import EchoBackend, NotifySocket, free_port, round_trip, write_config
from lb import sdnotify

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def test_lifecycle_messages(tmp_path, notify_socket):
    backend = EchoBackend("b0")
    port = free_port()
    config = write_config(tmp_path / "lb.toml", port, [backend.port], workers=2)
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.path)
    log = open(tmp_path / "lb.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "lb", "run", "-c", config], cwd=REPO, env=env, stderr=log)
    try:
        ready = notify_socket.expect("READY", proc=proc)
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("serving: 2 worker(s)")
        assert notify_socket.messages == [ready], "READY=1 is the first message"
        # by READY=1 every child is forked and the listener accepts
        assert len(psutil.Process(proc.pid).children()) == 3  # 2 workers, the checker
        assert round_trip(port, b"x" * 5000) == ("b0", b"x" * 5000)

        # reload: RELOADING=1 with the time it began (CLOCK_MONOTONIC, µs), then READY=1
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = notify_socket.expect("RELOADING", proc=proc)
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        assert notify_socket.expect("READY", proc=proc)["READY"] == "1"
        assert round_trip(port, b"after reload") == ("b0", b"after reload")

        # stop: STOPPING=1 as it begins, then a clean exit
        proc.send_signal(signal.SIGTERM)
        stopping = notify_socket.expect("STOPPING", proc=proc)
        assert stopping["STOPPING"] == "1"
        assert proc.wait(timeout=15) == 0
        assert [next(iter(m)) for m in notify_socket.messages] == ["READY", "RELOADING", "READY", "STOPPING"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        backend.close()


def test_fast_stop_sends_stopping(tmp_path, notify_socket):
    backend = EchoBackend("b0")
    port = free_port()
    config = write_config(tmp_path / "lb.toml", port, [backend.port], workers=1)
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.path)
    proc = subprocess.Popen([sys.executable, "-m", "lb", "run", "-c", config], cwd=REPO, env=env,
                            stderr=subprocess.DEVNULL)
    try:
        notify_socket.expect("READY", proc=proc)
        proc.send_signal(signal.SIGINT)
        assert notify_socket.expect("STOPPING", proc=proc)["STATUS"] == "stopping (fast)"
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        backend.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False


def test_abstract_socket_one_datagram(monkeypatch):
    name = f"lb-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.reloading("reloading") is True
        sock.settimeout(5)
        lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    assert lines[2] == "STATUS=reloading"


def test_unreachable_socket_does_not_raise(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.stopping() is False
