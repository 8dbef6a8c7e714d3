"""A backend for the tests, run as its own process: `python backend_server.py
--port P --name N [--hello] [--report-connections]
[--mode transform|drain-report|speak-first|http|flap]`.

- transform: every byte received is sent back through TRANSFORM (so a proxy
  that looped bytes back itself, instead of through this backend, would fail);
  on EOF from the client it flushes, shuts down its write side and closes.
- drain-report: reads to EOF, then prints "received <n> <sha256>" on stdout
  and answers "ok <n>\n" before closing (tests client -> backend half-close).
- speak-first: sends SPEAK_BYTES bytes then shuts down its write side, keeps
  reading to EOF, then prints "received <n> <sha256>" (tests backend -> client
  half-close: the client must still be able to send after the backend's FIN).
- http: reads one request head and answers it with --status and --body
  (`Connection: close`), then closes: a backend for http health checks.
- flap: like transform, but the listening socket is closed and opened again
  every --flap-ms milliseconds (refused while closed); prints
  "closed <time.time()>" and "open <time.time()>" at each toggle.
--hello: first send "<name>\n" on every connection.
--report-connections: print "accepted" for every connection accepted.
Prints "ready <port>" once listening.
"""

import argparse
import asyncio
import hashlib
import resource
import socket
import sys
import time

TRANSFORM = bytes((b ^ 0x5A) for b in range(256))
SPEAK_BYTES = 1 << 20


def speak_payload() -> bytes:
    return bytes(i % 251 for i in range(SPEAK_BYTES))


class Transform(asyncio.Protocol):
    def __init__(self, hello: bytes):
        self.hello = hello

    def connection_made(self, transport):
        self.t = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.hello:
            transport.write(self.hello)

    def data_received(self, data):
        self.t.write(data.translate(TRANSFORM))

    # flow control: stop reading while the peer is not reading our replies
    def pause_writing(self):
        self.t.pause_reading()

    def resume_writing(self):
        self.t.resume_reading()

    def eof_received(self):
        self.t.write_eof()
        return True  # keep the transport; it closes once the write buffer is flushed

    def connection_lost(self, exc):
        pass


class DrainReport(asyncio.Protocol):
    def __init__(self, hello: bytes, speak_first: bool):
        self.hello = hello
        self.speak_first = speak_first
        self.n = 0
        self.h = hashlib.sha256()

    def connection_made(self, transport):
        self.t = transport
        if self.hello:
            transport.write(self.hello)
        if self.speak_first:
            transport.write(speak_payload())
            transport.write_eof()

    def data_received(self, data):
        self.n += len(data)
        self.h.update(data)

    def eof_received(self):
        print(f"received {self.n} {self.h.hexdigest()}", flush=True)
        if not self.speak_first:
            self.t.write(f"ok {self.n}\n".encode())
        self.t.close()
        return True


class HttpAnswer(asyncio.Protocol):
    """Answers the first request head with a fixed status and body, then closes."""

    def __init__(self, status: int, body: bytes):
        self.response = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Status'}\r\n"
                         f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n").encode() + body
        self.buf = b""

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.buf += data
        if b"\r\n\r\n" in self.buf and self.response:
            self.t.write(self.response)
            self.response = b""
            self.t.close()

    def eof_received(self):
        self.t.close()


class Reporting:
    """Wraps a protocol factory: prints "accepted" for each new connection."""

    def __init__(self, factory):
        self.factory = factory

    def __call__(self):
        print("accepted", flush=True)
        return self.factory()


async def flap(loop, factory, args, server):
    """Close the listener and open it again, every args.flap_ms, forever."""
    port = server.sockets[0].getsockname()[1]
    period = args.flap_ms / 1000
    while True:
        await asyncio.sleep(period)
        server.close()
        print(f"closed {time.time():.3f}", flush=True)
        await asyncio.sleep(period)
        server = await loop.create_server(factory, args.host, port, backlog=4096, reuse_address=True)
        print(f"open {time.time():.3f}", flush=True)


async def main(args):
    hello = f"{args.name}\n".encode() if args.hello else b""
    loop = asyncio.get_running_loop()
    if args.mode in ("transform", "flap"):
        factory = lambda: Transform(hello)  # noqa: E731
    elif args.mode == "http":
        factory = lambda: HttpAnswer(args.status, args.body.encode())  # noqa: E731
    else:
        factory = lambda: DrainReport(hello, args.mode == "speak-first")  # noqa: E731
    if args.report_connections:
        factory = Reporting(factory)
    server = await loop.create_server(factory, args.host, args.port, backlog=4096, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    if args.mode == "flap":
        await flap(loop, factory, args, server)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="backend")
    ap.add_argument("--hello", action="store_true")
    ap.add_argument("--mode", default="transform",
                    choices=["transform", "drain-report", "speak-first", "http", "flap"])
    ap.add_argument("--report-connections", action="store_true")
    ap.add_argument("--status", type=int, default=200, help="http: the status of every answer")
    ap.add_argument("--body", default="ok\n", help="http: the body of every answer")
    ap.add_argument("--flap-ms", type=int, default=300, help="flap: listener open/closed period")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        sys.exit(0)
