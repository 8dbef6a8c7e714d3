"""An HTTP/1.1 origin inside the test process that records everything it receives.

The http end-to-end tests must know what lb sent the backend, not only what
the client got back: a rejected request must never reach it, a response that
broke the rules must close its connection. So this backend keeps, for every
connection it accepted, every byte in order and every complete request, and
answers each request with ``respond(conn, info)`` (``info`` from the
reference parser; default: 200 with a 3-byte body, keep-alive).

One thread runs one selector over the listening socket and the connections.
``sync()`` makes that thread accept every connection waiting in the kernel and
read every byte waiting on every connection, then returns a snapshot: once a
client has lb's answer, whatever lb sent the backend before it is in the
kernel (loopback delivers within the send), so the snapshot has it. This is
the synchronisation the tests use instead of sleeping.
"""

from __future__ import annotations

import queue
import selectors
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from tests.reference import http_ref

OK_BODY = b"ok\n"
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n" + OK_BODY


@dataclass
class BackendConn:
    id: int
    sock: socket.socket
    data: bytearray = field(default_factory=bytearray)  # every byte received, in order
    requests: list = field(default_factory=list)        # (info, raw bytes) of each complete request
    unparsable: bool = False                            # bytes came that are not a request
    eof: bool = False                                   # lb closed (or reset) the connection
    pending: bytearray = field(default_factory=bytearray)

    def targets(self) -> list[bytes]:
        return [info["target"] for info, _raw in self.requests]


class Snapshot(NamedTuple):
    conns: int
    bytes: int
    requests: int


def answer_ok(conn: BackendConn, info: dict) -> tuple[bytes, bool]:
    """200, 3-byte body, the connection kept."""
    return OK_RESPONSE, False


class RecordingBackend:
    def __init__(self, respond: Callable[[BackendConn, dict], tuple[bytes, bool]] = answer_ok):
        """respond(conn, info) -> (bytes to send, close the connection after them)."""
        self.respond = respond
        self.conns: list[BackendConn] = []
        self.log: list[tuple[BackendConn, dict, bytes]] = []  # every request, in the order it came
        self.errors: list[str] = []
        self._sel = selectors.DefaultSelector()
        self._listen = socket.socket()
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(128)
        self._listen.setblocking(False)
        self.port = self._listen.getsockname()[1]
        self._ctl_r, self._ctl_w = socket.socketpair()
        self._sel.register(self._listen, selectors.EVENT_READ, "listen")
        self._sel.register(self._ctl_r, selectors.EVENT_READ, "ctl")
        self._snapshots: queue.Queue[Snapshot] = queue.Queue()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="recording-backend", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- the test's side ----

    def sync(self, timeout: float = 5.0) -> Snapshot:
        """Take in everything the kernel holds for this backend, then count."""
        self._ctl_w.send(b"s")
        return self._snapshots.get(timeout=timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "the backend"):
        """Wait until predicate() holds; it is checked after every event the
        backend handles (a guard timeout, not a pause)."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def close(self):
        self._ctl_w.send(b"q")
        self._thread.join(5)
        for c in self.conns:
            c.sock.close()
        self._listen.close()
        self._ctl_r.close()
        self._ctl_w.close()
        self._sel.close()

    # ---- the backend's thread ----

    def _snapshot(self) -> Snapshot:
        return Snapshot(len(self.conns), sum(len(c.data) for c in self.conns),
                        sum(len(c.requests) for c in self.conns))

    def _run(self):
        while True:
            for key, _events in self._sel.select():
                if key.data == "listen":
                    self._accept_all()
                elif key.data == "ctl":
                    for cmd in self._ctl_r.recv(64):
                        if cmd == ord("q"):
                            return
                        self._accept_all()
                        for c in self.conns:
                            self._read(c)
                        self._snapshots.put(self._snapshot())
                else:
                    self._read(key.data)
            with self._changed:
                self._changed.notify_all()

    def _accept_all(self):
        while True:
            try:
                sock, _ = self._listen.accept()
            except BlockingIOError:
                return
            sock.setblocking(True)  # replies go with sendall; reads never wait (MSG_DONTWAIT)
            c = BackendConn(len(self.conns), sock)
            self.conns.append(c)
            self._sel.register(sock, selectors.EVENT_READ, c)

    def _read(self, c: BackendConn):
        while not c.eof:
            try:
                data = c.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except ConnectionError:
                data = b""
            if not data:
                c.eof = True
                self._sel.unregister(c.sock)
                return
            c.data += data
            c.pending += data
            self._serve(c)

    def _serve(self, c: BackendConn):
        """Answer every complete request in c.pending."""
        while c.pending and not c.unparsable:
            status, head_len, info = http_ref.parse_request(bytes(c.pending))
            if status == -1:
                return
            if status != 0:
                c.unparsable = True
                return
            if info["chunked"]:
                body_status, body_len, _body, _trailers = http_ref.parse_chunked(bytes(c.pending[head_len:]))
                if body_status == -1:
                    return
                if body_status != 0:
                    c.unparsable = True
                    return
            else:
                body_len = info["content_length"] or 0
                if len(c.pending) < head_len + body_len:
                    return
            raw = bytes(c.pending[:head_len + body_len])
            del c.pending[:head_len + body_len]
            c.requests.append((info, raw))
            self.log.append((c, info, raw))
            reply, close = self.respond(c, info)
            try:
                if reply:
                    c.sock.sendall(reply)
                if close:
                    c.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                self.errors.append(f"conn {c.id}: {e}")


def lb_before(tmp_path_factory, name: str, respond=None):
    """A module's rig: an http listener of one lb whose only backend is a
    RecordingBackend; yields (lb, backend, port) and, at the end, stops both
    and fails on any error the backend recorded."""
    from conftest import LbProcess, free_port, lb_config
    import signal
    backend = RecordingBackend(respond) if respond else RecordingBackend()
    port = free_port()
    lb = LbProcess(lb_config(port, [(backend.address, "rec", 100)], mode="http"), tmp_path_factory.mktemp(name))
    try:
        yield lb, backend, port
    finally:
        lb.stop(signal.SIGINT)
        backend.close()
    assert not backend.errors, backend.errors
