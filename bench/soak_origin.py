"""An HTTP/1.1 origin for `python -m bench soak`, one process per backend.

    python -m bench.soak_origin PORT NAME

One process each, so that the soak can kill one with SIGKILL (a backend that
flaps) and start it again on the same port. Threads, blocking sockets,
keep-alive; it answers

    GET /small          SMALL (100 bytes)
    GET /bytes/N        pattern(N): N bytes the client checks by digest
    POST /upload        the body's length and SHA-256, as "LEN HEX"
    GET /healthz        "ok" (the health checks)

every response with a Content-Length and `X-Backend: NAME`.
"""

from __future__ import annotations

import hashlib
import random
import socket
import socketserver
import sys

SMALL = b"lb soak: a small response, 100 bytes long, from one of the soak's origins..........................\n"
assert len(SMALL) == 100
_BLOCK = random.Random(18).randbytes(65536)


def pattern(n: int) -> bytes:
    """n bytes that are not one byte repeated: a body cut or shifted anywhere has another digest."""
    whole, rest = divmod(n, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:rest]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Handler(socketserver.StreamRequestHandler):
    rbufsize = 65536

    def handle(self):
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while self.one():
                pass
        except (ConnectionError, OSError):
            pass

    def one(self) -> bool:
        line = self.rfile.readline(65537)
        if not line:
            return False
        method, target, _version = line.decode("latin-1").split(" ", 2)
        length, close = 0, False
        while True:
            field = self.rfile.readline(65537)
            if field in (b"\r\n", b"\n", b""):
                break
            name, _, value = field.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value == "close":
                close = True
        if method == "POST":
            h, left = hashlib.sha256(), length
            while left:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    return False         # an aborted upload: the client left
                h.update(chunk)
                left -= len(chunk)
            body = f"{length} {h.hexdigest()}".encode()
        elif target == "/small":
            body = SMALL
        elif target.startswith("/bytes/"):
            body = pattern(int(target[len("/bytes/"):]))
        elif target == "/healthz":
            body = b"ok"
        else:
            self.wfile.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return not close
        head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Backend: {self.server.name}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n").encode()
        self.wfile.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.wfile.write(body)
        return not close


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True       # restarted on its port while old connections sit in TIME_WAIT
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, port: int, name: str):
        self.name = name
        super().__init__(("127.0.0.1", port), Handler)


def main(argv: list[str]) -> int:
    port, name = int(argv[0]), argv[1]
    with Server(port, name) as server:
        print("ready", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
