"""An HTTP/1.1 origin for the http tests, run as its own process:
`python http_origin.py --name N [--host H] [--port P]`. Prints "ready <port>"
once listening, then "request <conn> <n> <METHOD> <target>" for every request
head it reads (conn: the connection's number at this origin, n: the request's
number on that connection, from 1).

It answers, on any connection, with one thread per connection:

- `/bytes/N`: N bytes of `payload(N)`, with Content-Length, or chunked in
  pieces of `piece` bytes (default 10000) with `?chunked=1`, then the trailer
  fields given as `t=Name:Value` (repeatable). HEAD: the same
  head, no body. An HTTP/1.0 request never gets chunked: `?chunked=1` then
  sends the body delimited by the close of the connection.
- `/status/CODE`: that status; no body for 1xx, 204 and 304, otherwise
  "status CODE\n".
- `/ws` with `Upgrade: websocket`: the RFC 6455 handshake, then every data
  frame echoed back as it came (opcode and FIN kept), ping answered by pong,
  and a close frame echoed before the connection is closed. `?greet=TEXT`:
  a text frame of TEXT goes out in the same write as the 101.
- anything else: a JSON echo of the request (`echo` below).

Any target may carry, in its query:
- `h=Name:Value` (percent-encoded, repeatable): a field added to the
  response head as it is;
- `close=1`: answer with `Connection: close` and close;
- `drop=1`: answer as if the connection stayed open, then close it (an
  origin's keep-alive timeout);
- `drop_next=1`: answer, then read the next request head on that
  connection, report "dropped <conn> <n> <METHOD> <target>" and close
  without an answer (the same timeout, hit while a request was on its way);
- `report_sent=1`: report "sent <conn> <n>" once the whole response is
  written (handed to the kernel).
Every response carries `Server: http-origin/<name>`.

A request that says `Expect: 100-continue` gets `HTTP/1.1 100 Continue` before
its body is read. Request bodies are read by Content-Length or chunked (the
chunks decoded, trailers kept).

The echo (application/json) holds: name, conn, n (as above), peer_port (the
port the connection came from), method, target, version ("HTTP/1.1"), headers
(a list of [name, value] in the order received, names as sent), framing
("length", "chunked" or "none"), body (base64), body_len, body_sha256,
trailers (as headers), continue_sent (a 100 went out first).

The helpers at the end (`payload`, `ws_frame`, `ws_read_frame`, `Origin`) are
shared with the tests.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import resource
import socket
import socketserver
import struct
import sys
import threading
from pathlib import Path

from reporting_process import ReportingProcess
from urllib.parse import parse_qsl, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PATTERN = bytes(range(251)) * 64           # a prime period: shifted pieces never line up by chance

REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
           301: "Moved Permanently", 304: "Not Modified", 400: "Bad Request", 404: "Not Found",
           500: "Internal Server Error"}


def payload(n: int, offset: int = 0) -> bytes:
    """The deterministic body of /bytes/N: byte i is (i + offset) % 251."""
    reps = (n + offset) // len(PATTERN) + 1
    return (PATTERN * reps)[offset:offset + n]


# ---- WebSocket frames (RFC 6455 section 5) --------------------------------------------

def ws_frame(opcode: int, data: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame; clients pass a 4-byte mask (they must mask), servers none."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask is not None else 0
    n = len(data)
    if n < 126:
        head.append(bit | n)
    elif n < 65536:
        head.append(bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", n)
    if mask is not None:
        head += mask
        data = ws_unmask(data, mask)
    return bytes(head) + data


def ws_unmask(data: bytes, mask: bytes) -> bytes:
    """XOR with the repeated 4-byte mask (its own inverse)."""
    if not data:
        return b""
    key = int.from_bytes((mask * (len(data) // 4 + 1))[:len(data)], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(len(data), "big")


def read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"wanted {n} bytes, got {len(data)}")
    return data


def ws_read_frame(f) -> tuple[bool, int, bytes, bool]:
    """(fin, opcode, unmasked payload, was masked) of the next frame from a
    buffered binary reader."""
    b0, b1 = read_exact(f, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(f, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(f, 8))[0]
    masked = bool(b1 & 0x80)
    mask = read_exact(f, 4) if masked else None
    data = read_exact(f, n)
    if mask is not None:
        data = ws_unmask(data, mask)
    return bool(b0 & 0x80), b0 & 0x0F, data, masked


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


# ---- the server ---------------------------------------------------------------------------

class Request:
    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers               # [(name as sent, value)]
        self.body = b""
        self.trailers = []
        self.framing = "none"
        self.continue_sent = False
        url = urlsplit(target)
        self.path = url.path
        self.query = parse_qsl(url.query, keep_blank_values=True)

    def get(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def tokens(self, name: str) -> list[str]:
        return [t.strip().lower() for v in self.get(name) for t in v.split(",") if t.strip()]

    @property
    def keep_alive(self) -> bool:
        conn = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


def read_head(f) -> Request | None:
    line = f.readline(65537)
    while line in (b"\r\n", b"\n"):              # RFC 9112 2.2: empty lines before a request
        line = f.readline(65537)
    if not line:
        return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ")
    headers = []
    while True:
        line = f.readline(65537)
        if not line:
            raise EOFError("head cut short")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
        headers.append((name, value.strip(" \t")))
    return Request(method, target, version, headers)


def read_chunked(f, req: Request) -> bytes:
    body = bytearray()
    while True:
        size_line = f.readline(4096).decode("latin-1")
        size = int(size_line.split(";")[0].strip(), 16)
        if size == 0:
            break
        body += read_exact(f, size)
        if read_exact(f, 2) != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")
    while True:
        line = f.readline(65537)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
        req.trailers.append((name, value.strip(" \t")))
    return bytes(body)


class OriginHandler(socketserver.StreamRequestHandler):
    server: "OriginServer"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.lock:
            self.server.conns += 1
            self.conn_no = self.server.conns
        self.n = 0

    def report(self, line: str):
        with self.server.lock:
            print(line, flush=True)

    def handle(self):
        f = self.rfile
        try:
            while True:
                req = read_head(f)
                if req is None:
                    return
                self.n += 1
                self.report(f"request {self.conn_no} {self.n} {req.method} {req.target}")
                if "100-continue" in [v.lower() for v in req.get("expect")] and req.version == "HTTP/1.1":
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    req.continue_sent = True
                if "chunked" in req.tokens("transfer-encoding"):
                    req.framing = "chunked"
                    req.body = read_chunked(f, req)
                elif req.get("content-length"):
                    req.framing = "length"
                    req.body = read_exact(f, int(req.get("content-length")[0]))
                if req.path == "/ws" and "websocket" in req.tokens("upgrade"):
                    self.websocket(req)
                    return
                if not self.answer(req):
                    return
                if ("drop_next", "1") in req.query:
                    nxt = read_head(f)            # the next request is read, never answered
                    if nxt is not None:
                        self.report(f"dropped {self.conn_no} {self.n + 1} {nxt.method} {nxt.target}")
                    return
        except (EOFError, ConnectionError, ValueError):
            return

    def answer(self, req: Request) -> bool:
        """Write the response; False when the connection closes after it."""
        extra = [tuple(v.split(":", 1)) for k, v in req.query if k == "h"]
        extra = [(n, v.strip()) for n, v in extra]
        close = not req.keep_alive or ("close", "1") in req.query
        chunked = False
        head_only = req.method == "HEAD"
        if req.path.startswith("/bytes/"):
            status = 200
            body = payload(int(req.path[len("/bytes/"):]))
            ctype = "application/octet-stream"
            chunked = ("chunked", "1") in req.query
            piece = int(dict(req.query).get("piece", "10000"))
        elif req.path.startswith("/status/"):
            status = int(req.path[len("/status/"):])
            body = b"" if status < 200 or status in (204, 304) else f"status {status}\n".encode()
            ctype = "text/plain"
        else:
            status = 200
            ctype = "application/json"
            body = json.dumps(self.echo(req)).encode()
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Server: http-origin/{self.server.name}",
                f"Content-Type: {ctype}"]
        until_close = False
        if chunked and req.version == "HTTP/1.0":
            until_close = close = True            # 1.0 cannot take chunks: the close delimits the body
        elif chunked:
            head.append("Transfer-Encoding: chunked")
        elif not (status < 200 or status in (204, 304)):
            head.append(f"Content-Length: {len(body)}")
        if close:
            head.append("Connection: close")
        elif req.version == "HTTP/1.0":
            head.append("Connection: keep-alive")
        head += [f"{n}: {v}" for n, v in extra]
        out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if head_only:
            self.wfile.write(out)
        elif chunked and not until_close:
            self.wfile.write(out)
            for i in range(0, len(body), piece):
                part = body[i:i + piece]
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            trailers = "".join(f"{v}\r\n" for k, v in req.query if k == "t")
            self.wfile.write(b"0\r\n" + trailers.encode("latin-1") + b"\r\n")
        else:
            self.wfile.write(out + body)
        if ("report_sent", "1") in req.query:
            self.report(f"sent {self.conn_no} {self.n}")
        if close or ("drop", "1") in req.query:
            self.connection.shutdown(socket.SHUT_WR)
            return False
        return True

    def echo(self, req: Request) -> dict:
        return {
            "name": self.server.name, "conn": self.conn_no, "n": self.n,
            "peer_port": self.client_address[1],
            "method": req.method, "target": req.target, "version": req.version,
            "headers": req.headers, "framing": req.framing,
            "body": base64.b64encode(req.body).decode(), "body_len": len(req.body),
            "body_sha256": hashlib.sha256(req.body).hexdigest(),
            "trailers": req.trailers, "continue_sent": req.continue_sent,
        }

    def websocket(self, req: Request):
        key = req.get("sec-websocket-key")[0]
        greet = dict(req.query).get("greet")
        self.wfile.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {ws_accept(key)}\r\n"
                          f"Server: http-origin/{self.server.name}\r\n\r\n").encode()
                         + (ws_frame(1, greet.encode()) if greet is not None else b""))
        while True:
            fin, opcode, data, masked = ws_read_frame(self.rfile)
            if not masked:                        # RFC 6455 5.1: a server closes on an unmasked frame
                self.wfile.write(ws_frame(8, struct.pack("!H", 1002)))
                return
            if opcode == 8:
                self.wfile.write(ws_frame(8, data))
                self.connection.shutdown(socket.SHUT_WR)
                return
            if opcode == 9:
                self.wfile.write(ws_frame(10, data))
                continue
            self.wfile.write(ws_frame(opcode, data, fin=fin))


class OriginServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.conns = 0
        super().__init__(addr, OriginHandler)


# ---- the process, seen from the tests ----------------------------------------------------

class Origin(ReportingProcess):
    """A http_origin.py process; `name` is what its echoes and Server field say."""

    def __init__(self, name: str, host: str = "127.0.0.1"):
        self.name = name
        self.host = host
        super().__init__([sys.executable, str(Path(__file__)), "--name", name, "--host", host], f"origin {name}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def requests(self) -> list[str]:
        """The "request ..." lines reported so far and not yet taken."""
        return self.drain_lines()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="origin")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = OriginServer((args.host, args.port), args.name)
    print(f"ready {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        os._exit(0)


if __name__ == "__main__":
    main()
