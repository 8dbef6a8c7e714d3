"""The admin socket's server side (docs/admin.md), run inside the supervisor's
loop: a UNIX socket, one JSON object per line each way, peers checked by
SO_PEERCRED. The verbs themselves are lb.control's (`lb.control.VERBS`)."""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("lb")

PROTOCOL = 1
MAX_REQUEST = 64 * 1024
SEND_TIMEOUT = 2.0


class AdminError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Pending:
    """A verb whose answer waits for a condition (e.g. a backend to drain)."""

    done: Callable[[], bool]
    finish: Callable[[bool], dict]  # called with True when done, False at the deadline
    deadline: float


@dataclass
class Peer:
    sock: socket.socket
    pid: int
    uid: int
    gid: int
    buf: bytearray = field(default_factory=bytearray)
    pending: Pending | None = None
    queued: list = field(default_factory=list)  # requests read while one is pending


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


class Access:
    """Who may use the socket: root, the supervisor's own uid, the configured
    user, and members of the configured group (primary or supplementary)."""

    def __init__(self, user: str, group: str):
        self.user, self.group = user, group
        self.uids = {0, os.geteuid()}
        self.gid = None
        try:
            self.uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            pass
        try:
            self.gid = grp.getgrnam(group).gr_gid
        except KeyError:
            pass

    def allows(self, uid: int, gid: int) -> bool:
        if uid in self.uids:
            return True
        if self.gid is None:
            return False
        if gid == self.gid:
            return True
        try:
            entry = pwd.getpwuid(uid)
            return self.gid in os.getgrouplist(entry.pw_name, entry.pw_gid)
        except KeyError:
            return False

    def rule(self) -> str:
        own = "" if os.geteuid() == 0 else f", uid {os.geteuid()} (lb's own)"
        return f"root{own}, user {self.user!r} and members of group {self.group!r}"


class AdminServer:
    def __init__(self, path: str, access: Access, dispatch: Callable[[str, dict], object]):
        self.path = path
        self.access = access
        self.dispatch = dispatch
        self.sock: socket.socket | None = None
        self.peers: dict[int, Peer] = {}

    # ---- the listening socket ----------------------------------------------------

    def open(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
                raise OSError(f"another lb serves the admin socket {self.path}")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(self.path)  # left by an instance that died
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o660)
        if os.geteuid() == 0 and self.access.gid is not None:
            os.chown(self.path, 0, self.access.gid)
        sock.listen(16)
        sock.setblocking(False)
        self.sock = sock

    def stop_listening(self, selector) -> None:
        """A stop began: no new admin clients; answer the waiting ones."""
        if self.sock is None:
            return
        selector.unregister(self.sock)
        self.sock.close()
        self.sock = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        for peer in self.peers.values():
            if peer.pending is not None:
                peer.pending = None
                self._send(peer.sock, {"v": PROTOCOL, "ok": False, "code": "failed", "error": "lb is stopping"})

    def close(self) -> None:
        for peer in list(self.peers.values()):
            self._drop(peer)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def fds(self) -> list[int]:
        """Every fd this server holds: a forked child closes them."""
        out = [p.sock.fileno() for p in self.peers.values()]
        if self.sock is not None:
            out.append(self.sock.fileno())
        return out

    # ---- events, from the supervisor's selector ----------------------------------

    def on_accept(self, selector) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            pid, uid, gid = peer_credentials(conn)
            conn.settimeout(SEND_TIMEOUT)
            if not self.access.allows(uid, gid):
                log.warning("admin socket: refused pid %d uid %d gid %d (allowed: %s)", pid, uid, gid,
                            self.access.rule())
                self._send(conn, {"v": PROTOCOL, "ok": False, "code": "denied",
                                  "error": f"uid {uid} may not use the admin socket; allowed: {self.access.rule()}"})
                conn.close()
                continue
            peer = Peer(conn, pid, uid, gid)
            self.peers[conn.fileno()] = peer
            selector.register(conn, 1, ("admin-peer", peer))

    def on_readable(self, selector, peer: Peer) -> None:
        line = b""
        try:
            data = peer.sock.recv(65536)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        except OSError:
            data = b""
        if not data:
            selector.unregister(peer.sock)
            self._drop(peer)
            return
        peer.buf += data
        while b"\n" in peer.buf:
            line, _, rest = bytes(peer.buf).partition(b"\n")
            peer.buf = bytearray(rest)
            if len(line) > MAX_REQUEST:
                break  # refused below, with the connection
            if peer.pending is not None:
                peer.queued.append(line)
            else:
                self._handle(peer, line)
        if len(peer.buf) > MAX_REQUEST or len(line) > MAX_REQUEST:
            self._send(peer.sock, {"v": PROTOCOL, "ok": False, "code": "invalid",
                                   "error": f"request larger than {MAX_REQUEST} bytes"})
            selector.unregister(peer.sock)
            self._drop(peer)

    def tick(self) -> None:
        """Answer the verbs waiting on a condition that now holds (or timed out)."""
        now = time.monotonic()
        for peer in list(self.peers.values()):
            p = peer.pending
            if p is None:
                continue
            done = p.done()
            if done or now >= p.deadline:
                peer.pending = None
                self._reply(peer, lambda: p.finish(done))
                while peer.queued and peer.pending is None:
                    self._handle(peer, peer.queued.pop(0))

    # ---- requests -----------------------------------------------------------------

    def _handle(self, peer: Peer, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._send(peer.sock, {"v": PROTOCOL, "ok": False, "code": "invalid", "error": f"bad request: {e}"})
            return
        if req.get("v") != PROTOCOL:
            self._send(peer.sock, {"v": PROTOCOL, "ok": False, "code": "version",
                                   "error": f"protocol version {req.get('v')!r} not supported (this lb: {PROTOCOL})"})
            return
        cmd, args = req.get("cmd"), req.get("args") or {}
        if not isinstance(cmd, str) or not isinstance(args, dict):
            self._send(peer.sock, {"v": PROTOCOL, "ok": False, "code": "invalid", "error": "cmd and args expected"})
            return
        log.debug("admin: uid %d: %s %s", peer.uid, cmd, args)
        self._reply(peer, lambda: self.dispatch(cmd, args))

    def _reply(self, peer: Peer, call: Callable[[], object]) -> None:
        try:
            result = call()
        except AdminError as e:
            self._send(peer.sock, {"v": PROTOCOL, "ok": False, "code": e.code, "error": e.message})
            return
        except Exception as e:  # a bug must not take the supervisor down
            log.exception("admin: command failed")
            self._send(peer.sock, {"v": PROTOCOL, "ok": False, "code": "failed", "error": f"internal error: {e}"})
            return
        if isinstance(result, Pending):
            peer.pending = result
            return
        self._send(peer.sock, {"v": PROTOCOL, "ok": True, "result": result})

    @staticmethod
    def _send(sock: socket.socket, obj: dict) -> None:
        try:
            sock.sendall(json.dumps(obj).encode() + b"\n")
        except OSError:
            pass

    def _drop(self, peer: Peer) -> None:
        self.peers.pop(peer.sock.fileno(), None)
        peer.sock.close()
