"""gRPC end to end, and HTTP/2 to backends (lb/fastpath/h2_backend.pxi): a
grpcio client -> lb (an h2c listener, and a TLS listener with ALPN h2) -> a
grpcio server behind a pool with protocol = "h2".

The service is registered with raw-bytes (de)serializers, so no protobuf code
is generated: every payload is checked byte for byte, some larger than the
64 KiB windows to exercise flow control both ways.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from concurrent import futures

import grpc
import pytest

from conftest import free_port
from tls_certs import CA
from tls_servers import lb_toml, listener_toml, pool_toml

SERVICE = "lbtest.Echo"


def blob(n: int, seed: int = 0) -> bytes:
    """n bytes that differ from one offset to the next (a shifted or lost
    block shows)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:n])


class Backend:
    """A grpcio server: unary, server-streaming, client-streaming and bidi
    calls on raw bytes, one that fails with NOT_FOUND, one that never
    answers, and one that waits until n calls are in at once. peers holds
    every TCP connection (address:port) it saw a call on."""

    def __init__(self, barrier_parties: int = 1, tls=None):
        self.port = free_port()
        self.peers: set[str] = set()
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(barrier_parties)
        self.never = threading.Event()
        self.seen_metadata: list[tuple] = []
        ident = lambda b: b  # noqa: E731
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, ident, ident),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, ident, ident),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, ident, ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, ident, ident),
            "Missing": grpc.unary_unary_rpc_method_handler(self.missing, ident, ident),
            "Never": grpc.unary_unary_rpc_method_handler(self.never_answers, ident, ident),
            "Together": grpc.unary_unary_rpc_method_handler(self.together, ident, ident),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=48))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if tls is None:
            self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            creds = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
            self.server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _seen(self, context):
        with self.lock:
            self.peers.add(context.peer())

    def unary(self, request: bytes, context) -> bytes:
        self._seen(context)
        md = tuple(context.invocation_metadata())
        self.seen_metadata.append(md)
        echo = [(k, v) for k, v in md if k.startswith("x-")]
        context.send_initial_metadata([("x-initial", "yes")] + echo)
        context.set_trailing_metadata([("x-trailing", "done"), ("x-len-bin", len(request).to_bytes(4, "big"))])
        return hashlib.sha256(request).digest() + request[::-1]

    def server_stream(self, request: bytes, context):
        self._seen(context)
        count, size = int.from_bytes(request[:4], "big"), int.from_bytes(request[4:8], "big")
        for i in range(count):
            yield blob(size, i)

    def client_stream(self, requests, context) -> bytes:
        self._seen(context)
        h = hashlib.sha256()
        n = 0
        for r in requests:
            h.update(r)
            n += 1
        return n.to_bytes(4, "big") + h.digest()

    def bidi(self, requests, context):
        self._seen(context)
        for r in requests:
            yield r[::-1]

    def missing(self, request: bytes, context) -> bytes:
        self._seen(context)
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    def never_answers(self, request: bytes, context) -> bytes:
        self._seen(context)
        self.never.wait(30)          # (the client's deadline ends the call first)
        return b""

    def together(self, request: bytes, context) -> bytes:
        self._seen(context)
        self.barrier.wait(30)        # every call of the batch is at the backend at once
        return request

    def stop(self):
        self.never.set()
        self.server.stop(0)


class Site:
    """lb in front of the backend: "plain" (h2c and HTTP/1.1) and "web"
    (TLS, ALPN h2), pool "g" with protocol = "h2"."""

    def __init__(self, run_lb, ca: CA, backend: Backend, *, pool_tls: str | None = None, workers: int = 1):
        self.ca = ca
        self.site = self.ca.leaf("site", ("site.test", "127.0.0.1"))
        self.plain_port = free_port()
        self.tls_port = free_port()
        plain = listener_toml("plain", self.plain_port, "g") + "\n[listeners.plain.http2]\nh2c = true\n"
        web = listener_toml("web", self.tls_port, "g") + (
            f'\n[listeners.web.tls]\ncertificates = [{{ cert = "{self.site.cert}", key = "{self.site.key}" }}]\n'
            'alpn = ["h2"]\n')
        pool = pool_toml("g", [("b1", backend.address)], extra='protocol = "h2"', tls=pool_tls,
                         health='type = "tcp"\ninterval = "1s"')
        self.lb = run_lb(lb_toml(plain, web, pool, workers=workers))

    def channel(self, tls: bool) -> grpc.Channel:
        if not tls:
            return grpc.insecure_channel(f"127.0.0.1:{self.plain_port}")
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca.path.read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{self.tls_port}", creds,
                                   options=(("grpc.ssl_target_name_override", "site.test"),))


@pytest.fixture
def backend():
    b = Backend(barrier_parties=24)
    yield b
    b.stop()


@pytest.fixture
def site(run_lb, tmp_path, backend):
    return Site(run_lb, CA(tmp_path / "pki"), backend)


def method(ch: grpc.Channel, kind: str, name: str):
    return getattr(ch, kind)(f"/{SERVICE}/{name}")


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_unary_with_metadata_both_ways_and_large_payloads(site, tls):
    with site.channel(tls) as ch:
        call = method(ch, "unary_unary", "Unary")
        for size in (0, 1, 1000, 70_000, 300_000):
            req = blob(size, size)
            resp, c = call.with_call(req, metadata=(("x-tag", f"t{size}"), ("x-raw-bin", b"\x00\xff\x01")),
                                     timeout=20)
            assert resp == hashlib.sha256(req).digest() + req[::-1]
            initial = dict(c.initial_metadata())
            assert initial["x-initial"] == "yes" and initial["x-tag"] == f"t{size}"
            assert initial["x-raw-bin"] == b"\x00\xff\x01"
            trailing = dict(c.trailing_metadata())
            assert trailing["x-trailing"] == "done" and trailing["x-len-bin"] == size.to_bytes(4, "big")
            assert c.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_streaming_calls_byte_for_byte(site, tls):
    with site.channel(tls) as ch:
        got = list(method(ch, "unary_stream", "ServerStream")((12).to_bytes(4, "big") + (100_000).to_bytes(4, "big"),
                                                              timeout=30))
        assert got == [blob(100_000, i) for i in range(12)]
        parts = [blob(70_000 + i, 100 + i) for i in range(15)]
        resp = method(ch, "stream_unary", "ClientStream")(iter(parts), timeout=30)
        assert resp == (15).to_bytes(4, "big") + hashlib.sha256(b"".join(parts)).digest()
        parts = [blob(n, n) for n in (5, 90_000, 1, 200_000, 17)]
        got = list(method(ch, "stream_stream", "Bidi")(iter(parts), timeout=30))
        assert got == [p[::-1] for p in parts]


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_a_non_ok_status_arrives_in_trailers(site, tls):
    with site.channel(tls) as ch:
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "unary_unary", "Missing")(b"thing-42", timeout=20)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "no such thing: thing-42"
        # and the connection goes on serving
        assert method(ch, "unary_unary", "Unary")(b"ok", timeout=20) == hashlib.sha256(b"ok").digest() + b"ko"


def test_a_deadline_ends_the_call_and_lb_serves_on(site):
    with site.channel(False) as ch:
        with pytest.raises(grpc.RpcError) as e:
            method(ch, "unary_unary", "Never")(b"x", timeout=0.5)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert method(ch, "unary_unary", "Unary")(b"after", timeout=20) == \
            hashlib.sha256(b"after").digest() + b"retfa"


def test_many_concurrent_streams_share_few_backend_connections(site, backend):
    """24 calls at the backend at once (its handlers wait for each other) from
    three clients: lb multiplexes them on one connection to the backend."""
    chans = [site.channel(i == 2) for i in range(3)]
    try:
        calls = [method(chans[i % 3], "unary_unary", "Together").future(b"n%d" % i, timeout=30) for i in range(24)]
        assert [c.result() for c in calls] == [b"n%d" % i for i in range(24)]
    finally:
        for ch in chans:
            ch.close()
    assert len(backend.peers) == 1, backend.peers


def read_chunked(f) -> tuple[bytes, dict]:
    body = b""
    while True:
        size = int(f.readline().split(b";")[0], 16)
        if size == 0:
            break
        body += f.read(size)
        assert f.read(2) == b"\r\n"
    trailers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        trailers[k.strip().lower()] = v.strip()
    return body, trailers


def test_an_http11_client_gets_the_h2_response_converted_back(site):
    req = blob(100_000, 7)
    framed = b"\x00" + len(req).to_bytes(4, "big") + req
    with socket.create_connection(("127.0.0.1", site.plain_port), timeout=20) as s:
        s.sendall((f"POST /{SERVICE}/Unary HTTP/1.1\r\nHost: g.test\r\nContent-Type: application/grpc\r\n"
                   f"TE: trailers\r\nContent-Length: {len(framed)}\r\n\r\n").encode() + framed)
        f = s.makefile("rb")
        status = f.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        headers = {}
        while (line := f.readline()) != b"\r\n":
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        assert headers["content-type"] == "application/grpc"
        assert headers["transfer-encoding"] == "chunked"
        body, trailers = read_chunked(f)
    want = hashlib.sha256(req).digest() + req[::-1]
    assert body == b"\x00" + len(want).to_bytes(4, "big") + want
    assert trailers["grpc-status"] == "0" and trailers["x-trailing"] == "done"


def test_a_stream_the_backend_resets_is_a_502(site, backend):
    """Without te: trailers a grpcio server resets the stream (INTERNAL_ERROR)
    before any response: lb answers 502, as for any backend that fails a
    request it cannot send again (a POST)."""
    with socket.create_connection(("127.0.0.1", site.plain_port), timeout=20) as s:
        s.sendall((f"POST /{SERVICE}/Unary HTTP/1.1\r\nHost: g.test\r\nContent-Type: application/grpc\r\n"
                   "Content-Length: 5\r\n\r\n").encode() + b"\x00\x00\x00\x00\x00")
        status = s.makefile("rb").readline()
    assert status.startswith(b"HTTP/1.1 502"), status
    # the backend connection serves on for the others
    with site.channel(False) as ch:
        assert method(ch, "unary_unary", "Unary")(b"x", timeout=20) == hashlib.sha256(b"x").digest() + b"x"
    assert len(backend.peers) == 1


def test_h2_over_tls_to_the_backend_by_alpn(run_lb, tmp_path):
    """A pool with [pools.X.tls]: HTTP/2 to the backend over TLS, chosen by
    ALPN (grpcio's server speaks nothing else), the certificate verified."""
    ca = CA(tmp_path / "pki")
    leaf = ca.leaf("grpc-backend", ("backend.test",))
    backend = Backend(tls=leaf)
    try:
        site = Site(run_lb, ca, backend, pool_tls=f'ca = "{ca.path}"\nsni = "backend.test"')
        with site.channel(True) as ch:
            req = blob(200_000, 3)
            resp, c = method(ch, "unary_unary", "Unary").with_call(req, metadata=(("x-tag", "tls"),), timeout=20)
            assert resp == hashlib.sha256(req).digest() + req[::-1]
            assert dict(c.initial_metadata())["x-tag"] == "tls"
            got = list(method(ch, "unary_stream", "ServerStream")((3).to_bytes(4, "big") + (90_000).to_bytes(4, "big"),
                                                                  timeout=20))
            assert got == [blob(90_000, i) for i in range(3)]
    finally:
        backend.stop()
