"""The privilege drop, without packages: started as root, lb binds and
creates its shared memory, then workers and the checker run as global.user /
global.group (here the system's nobody / nogroup) and cannot become root
again; a missing account named in the file fails the start before anything
is bound."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_for
from daemon_helpers import EchoBackend, NotifySocket, free_port, round_trip, wait_children, write_config
from lb import privileges

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop happens only when started as root")


def _account(user: str, group: str) -> tuple[int, int]:
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"no {user}:{group} account on this system")


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


class Daemon:
    """`python -m lb run` from the tree, ready once it sent READY=1."""

    def __init__(self, tmp_path, config: str):
        self.notify = NotifySocket(str(tmp_path / "notify.sock"))
        self.log_path = tmp_path / "lb.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        self.proc = subprocess.Popen([sys.executable, "-m", "lb", "run", "-c", config], cwd=REPO, env=env,
                                     stderr=self.log)

    def ready(self) -> None:
        try:
            self.notify.expect("READY", proc=self.proc)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log_path.read_text()}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.notify.close()
        return self.proc.returncode


def test_workers_and_checker_run_as_the_account(tmp_path):
    uid, gid = _account("nobody", "nogroup")
    backend = EchoBackend("b0")
    port = free_port()
    config = write_config(tmp_path / "lb.toml", port, [backend.port], workers=2,
                          global_extra='user = "nobody"\ngroup = "nogroup"\n')
    lb = Daemon(tmp_path, config)
    try:
        lb.ready()
        kids = wait_children(lb.proc.pid, 3)
        assert sorted(kids) == ["lb-checker", "lb-worker-0", "lb-worker-1"]
        for name, p in kids.items():
            assert tuple(p.uids()) == (uid, uid, uid), name
            assert tuple(p.gids()) == (gid, gid, gid), name
            status = _status(p.pid)
            assert status["Groups"].split() == [str(gid)], name  # no supplementary group left
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, name
        # the supervisor keeps root, to signal and respawn them
        assert tuple(psutil.Process(lb.proc.pid).uids()) == (0, 0, 0)
        # its shared memory now belongs to the account, still private to it
        shm = os.stat(f"/dev/shm/lb-{lb.proc.pid}.shm")
        assert (shm.st_uid, shm.st_gid, stat.S_IMODE(shm.st_mode)) == (uid, gid, 0o600)

        for i in range(8):  # both workers take connections (SO_REUSEPORT spreads them)
            payload = os.urandom(20000 + i)
            assert round_trip(port, payload) == ("b0", payload)
        # a few health checks, run by a checker that is nobody now
        from lb._fastpath import Shm

        region = Shm.attach(f"/dev/shm/lb-{lb.proc.pid}.shm")
        wait_for(lambda: region.checks_total >= 4, 10, "health checks as nobody")
        assert all(p.is_running() for p in kids.values()), "a child died after dropping privileges"
        assert "died" not in lb.log_path.read_text()
    finally:
        code = lb.stop()
        backend.close()
    assert code == 0, lb.log_path.read_text()
    assert "children run as nobody:nogroup" in lb.log_path.read_text()


def test_missing_account_fails_before_binding(tmp_path):
    port = free_port()
    config = write_config(tmp_path / "lb.toml", port, [free_port()], workers=1,
                          global_extra='user = "lb-test-no-such-user"\n')
    run = subprocess.run([sys.executable, "-m", "lb", "run", "-c", config], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 1
    assert "global.user: no user 'lb-test-no-such-user'" in run.stderr
    assert "starting" not in run.stderr  # nothing was bound, forked or created
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_default_account(tmp_path):
    """No user or group in the file: the default "lb" account when it exists
    (the packages create it); else a warning, and the children stay root."""
    backend = EchoBackend("b0")
    port = free_port()
    config = write_config(tmp_path / "lb.toml", port, [backend.port], workers=1)
    lb = Daemon(tmp_path, config)
    try:
        lb.ready()
        kids = wait_children(lb.proc.pid, 2)
        try:
            expected = pwd.getpwnam("lb").pw_uid
        except KeyError:
            expected = 0
            assert "global.user: no user 'lb'" in lb.log_path.read_text()
        assert {p.uids().real for p in kids.values()} == {expected}
        assert round_trip(port, b"hello") == ("b0", b"hello")
    finally:
        lb.stop()
        backend.close()


def test_drop_is_for_good():
    uid, gid = _account("nobody", "nogroup")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            privileges.drop(uid, gid)
            try:
                os.setuid(0)
                verdict = b"regained root"
            except PermissionError:
                verdict = f"ok {os.getresuid()} {os.getresgid()} {os.getgroups()}".encode()
            os.write(w, verdict)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    verdict = os.read(r, 200).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert verdict == f"ok {(uid,) * 3} {(gid,) * 3} {[gid]}"


def test_resolve_names_the_key():
    with pytest.raises(privileges.PrivilegeError, match=r"^global\.user: no user 'lb-test-nobody-here'"):
        privileges.resolve("lb-test-nobody-here", "nogroup")
    with pytest.raises(privileges.PrivilegeError, match=r"^global\.group: no group 'lb-test-nogroup-here'"):
        privileges.resolve("nobody", "lb-test-nogroup-here")
    with pytest.raises(privileges.PrivilegeError, match=r"^global\.user: workers must not run as root"):
        privileges.resolve("root", "nogroup")
    account = privileges.resolve("nobody", "nogroup")
    assert (account.uid, account.gid) == _account("nobody", "nogroup")
