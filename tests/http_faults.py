"""HTTP/1.1 backends that misbehave on purpose, and a small client, for
tests/test_http_faults.py.

A FaultBackend is an asyncio server on its own thread in the test process. It
counts every request it receives, by method and target, before it does
anything with it, so a test can assert "sent exactly once" (or never) as soon
as its client has an answer. What it does with a request is its behaviour,
chosen per target (`faults`) or for all (`default`):

- ok: 200 with body "<name> <connection number> <method> <target>\n",
  Content-Length, keep-alive.
- reset: close with SO_LINGER 0 (a RST) before any response byte.
- close: close (a FIN) before any response byte.
- silent: never answer; the connection stays open until lb closes it.
- short: a head with Content-Length 1000, 10 body bytes, then close.
- half_head: half a response head, then close.

Per connection: `close_after=N` closes (FIN, no `Connection: close` header)
after answering N requests; `drop_after=N` answers N requests and closes on
the next one without answering it (a keep-alive connection the backend gave
up on while lb was sending on it); `idle_close=SECONDS` closes a connection
idle that long between requests (and counts it, for wait_idle_closes).

kill() is what kill -9 does to a server: the listening socket closes (new
connections are refused), every open connection is reset, and nothing more is
sent. A response is never cut in the middle by it (the loop is one thread).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections import Counter

BEHAVIOURS = ("ok", "reset", "close", "silent", "short", "half_head")


def parse_fields(head: bytes) -> dict[str, str]:
    """The fields of a head (its first line skipped), names in lower case; a
    name seen twice keeps its last value."""
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return fields


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """A request head: method, target, fields."""
    method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    return method, target, parse_fields(head)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST: SO_LINGER on, timeout 0."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultBackend:
    def __init__(self, name: str, default: str = "ok", faults: dict[str, str] | None = None, *,
                 close_after: int = 0, drop_after: int = 0, idle_close: float | None = None):
        assert default in BEHAVIOURS and all(b in BEHAVIOURS for b in (faults or {}).values())
        self.name = name
        self.default = default
        self.faults = dict(faults or {})
        self.close_after = close_after
        self.drop_after = drop_after
        self.idle_close = idle_close
        self.requests: Counter[tuple[str, str]] = Counter()
        self.headers: list[dict[str, str]] = []     # the fields of every request, in order
        self.connections = 0
        self.idle_closes = 0
        self.killed = False
        self._cond = threading.Condition()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=f"backend-{name}", daemon=True)
        self._thread.start()
        ready.wait(10)
        self.port = self.server.sockets[0].getsockname()[1]

    # ---- the test's side ---------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, method: str | None = None, target: str | None = None) -> int:
        with self._cond:
            return sum(n for (m, t), n in self.requests.items()
                       if (method is None or m == method) and (target is None or t == target))

    def wait_idle_closes(self, n: int, timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.idle_closes >= n, timeout), \
                f"{self.name}: {self.idle_closes} idle closes, waited for {n}"

    def kill(self) -> None:
        asyncio.run_coroutine_threadsafe(self._kill(), self.loop).result(10)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if not self.killed:
            self.kill()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    # ---- the server --------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024, limit=1 << 20))
        ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def _kill(self) -> None:
        self.killed = True
        self.server.close()
        for writer in list(self._writers):
            reset(writer)
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.killed:
            reset(writer)
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        with self._cond:
            self.connections += 1
            conn_no = self.connections
        try:
            await self._requests(reader, writer, conn_no)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _requests(self, reader, writer, conn_no: int) -> None:
        answered = 0
        while True:
            try:
                if answered and self.idle_close is not None:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_close)
                else:
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.TimeoutError:
                writer.close()
                with self._cond:
                    self.idle_closes += 1
                    self._cond.notify_all()
                return
            except asyncio.IncompleteReadError:
                writer.close()
                return
            method, target, fields = parse_head(head)
            length = int(fields.get("content-length", "0"))
            if length:
                await reader.readexactly(length)
            with self._cond:
                self.requests[(method, target)] += 1
                self.headers.append(fields)
                self._cond.notify_all()
            behaviour = self.faults.get(target.split("?")[0], self.default)
            if self.drop_after and answered >= self.drop_after:
                behaviour = "close"
            if behaviour == "reset":
                reset(writer)
                return
            if behaviour == "close":
                writer.close()
                return
            if behaviour == "silent":
                await reader.read()          # until lb gives up on it
                writer.close()
                return
            if behaviour == "half_head":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
                await writer.drain()
                writer.close()
                return
            if behaviour == "short":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
                await writer.drain()
                writer.close()
                return
            body = f"{self.name} {conn_no} {method} {target}\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            answered += 1
            if self.close_after and answered >= self.close_after:
                writer.close()
                return


class Blackhole:
    """A port where a connect hangs: a listener with backlog 0 and one
    connection it never accepts, so its accept queue is full and the kernel
    drops every further SYN (no answer at all, as from a host that is gone)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


def refused_port() -> int:
    """A port nothing listens on (and nothing will while the test runs: it was
    just free, and ephemeral ports are not handed out to listeners)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a client that shows exactly what came back ---------------------------------------------


class Response:
    def __init__(self, status: int, head: bytes, body: bytes, complete: bool):
        self.status = status
        self.head = head
        self.body = body
        self.complete = complete     # False: the connection ended before the body did
        self.fields = parse_fields(head)

    @property
    def raw(self) -> bytes:
        return self.head + self.body

    def header(self, name: str) -> str | None:
        return self.fields.get(name.lower())

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"

    @property
    def text(self) -> str:
        return self.body.decode("latin-1")


class NoResponse(Exception):
    """The connection ended (EOF or reset) before any response byte."""


class HttpClient:
    """One client connection to lb, kept open between requests."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def send(self, data: bytes) -> None:
        if self.sock is None:
            self.connect()
        self.sock.sendall(data)

    def read_response(self, head_request: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            chunk = self._recv()
            if not chunk:
                got, self.buf = self.buf, b""
                self.close()
                if got:
                    return Response(0, got, b"", False)
                raise NoResponse()
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        head += b"\r\n\r\n"
        status = int(head.split(b" ", 2)[1])
        fields = parse_fields(head)
        length = 0 if head_request or status in (204, 304) else int(fields.get("content-length", "-1"))
        complete = True
        if length >= 0:
            while len(rest) < length:
                chunk = self._recv()
                if not chunk:
                    complete = False
                    break
                rest += chunk
            body, self.buf = rest[:length], rest[length:]
        else:                        # delimited by close
            while chunk := self._recv():
                rest += chunk
            body, self.buf = rest, b""
        response = Response(status, head, body, complete)
        if not complete or length < 0 or response.closes:
            self.close()
        return response

    def request(self, method: str = "GET", target: str = "/", headers: dict[str, str] | None = None,
                body: bytes = b"") -> Response:
        fields = {"Host": "test", **(headers or {})}
        if body or method in ("POST", "PUT"):
            fields["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        self.send(head.encode() + body)
        return self.read_response(head_request=method == "HEAD")


def request(port: int, method: str = "GET", target: str = "/", headers=None, body: bytes = b"",
            timeout: float = 5.0) -> Response:
    """One request on its own connection."""
    c = HttpClient(port, timeout)
    try:
        return c.request(method, target, headers, body)
    finally:
        c.close()


def wait_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the peer sends until it closes, and how long that took."""
    sock.settimeout(timeout)
    t0 = time.monotonic()
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - t0
