"""HTTP/2 to backends (lb/fastpath/h2_backend.pxi), against an h2c origin on
python-h2 (tests/h2_origin.py) whose behaviour each path chooses: multiplexed
connections, the backend's stream limit, GOAWAY, streams reset by the
backend, and flow control that keeps a slow client stream from holding the
others. gRPC end to end is in test_grpc.py."""

from __future__ import annotations

import os
import socket

import pytest

from conftest import free_port, wait_for
from h2_client import H2Client
from h2_origin import H2Origin
from http_origin import payload
from tls_servers import lb_toml, listener_toml, pool_toml


class Site:
    """Listener "plain" (h2c and HTTP/1.1) in front of pool "p", protocol h2."""

    def __init__(self, run_lb, origin: H2Origin, *, pool_extra: str = "", retries: int = 2, http2: str = "",
                 sections=()):
        self.port = free_port()
        plain = listener_toml("plain", self.port, "p") + f"\n[listeners.plain.http2]\nh2c = true\n{http2}\n"
        pool = pool_toml("p", [("o1", origin.address)], extra=f'protocol = "h2"\nretries = {retries}\n{pool_extra}')
        self.lb = run_lb(lb_toml(plain, pool, *sections))

    def client(self, **kw) -> H2Client:
        return H2Client(self.port, **kw)

    def http11(self, request: bytes) -> tuple[bytes, dict, bytes]:
        """One HTTP/1.1 exchange (Connection: close): status line, head fields, the rest."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        fields = {}
        for line in lines:
            k, _, v = line.decode().partition(":")
            fields[k.strip().lower()] = v.strip()
        return status, fields, rest


@pytest.fixture
def origin():
    o = H2Origin()
    yield o
    o.stop()


@pytest.fixture
def site(run_lb, origin):
    return Site(run_lb, origin)


def test_an_http11_request_reaches_an_h2_backend_and_comes_back(site, origin):
    body = os.urandom(150_000)
    status, fields, rest = site.http11(b"POST /echo HTTP/1.1\r\nHost: h.test\r\nTE: trailers\r\nConnection: close\r\n"
                                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert status.startswith(b"HTTP/1.1 200"), status
    assert fields["x-method"] == "POST" and fields["x-te"] == "trailers"
    # the origin sent no content-length: the body comes chunked
    assert fields["transfer-encoding"] == "chunked"
    got, pos = b"", 0
    while True:
        eol = rest.index(b"\r\n", pos)
        n = int(rest[pos:eol], 16)
        if n == 0:
            break
        got += rest[eol + 2:eol + 2 + n]
        pos = eol + 4 + n
    assert got == body
    path, head, seen = origin.requests[-1]
    assert (path, head[":method"], head[":authority"], head[":scheme"], seen) == ("/echo", "POST", "h.test", "http",
                                                                                   body)
    assert "connection" not in head and "transfer-encoding" not in head


def test_an_http10_client_gets_a_body_that_ends_with_the_connection(site):
    """HTTP/1.0 cannot read chunked: a body of unknown length from the h2
    backend ends, for it, with the connection."""
    body = os.urandom(90_000)
    status, fields, rest = site.http11(b"POST /echo HTTP/1.0\r\nHost: h.test\r\nContent-Length: %d\r\n\r\n" % len(body)
                                       + body)
    assert status.startswith(b"HTTP/1.") and b" 200" in status, status
    assert "transfer-encoding" not in fields and "content-length" not in fields
    assert rest == body


def test_access_logs_name_the_backend_and_status_as_over_http11(run_lb, origin, tmp_path):
    log = tmp_path / "access.log"
    logs = (f'[logs.access]\nformat = "{{protocol}} {{method}} {{path}} {{status}} {{pool}} {{backend}}"\n'
            f'target = "file:{log}"\n')
    site = Site(run_lb, origin, sections=[logs])
    with site.client() as c:
        assert c.response(c.request("/bytes/5")).status == 200
        assert c.response(c.request("/reset-mid")).reset == "INTERNAL_ERROR"
    site.http11(b"GET /bytes/7 HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 3, 10, "three log lines")
    lines = log.read_text().splitlines()
    assert sorted(lines) == sorted(["HTTP/2.0 GET /bytes/5 200 p o1", "HTTP/2.0 GET /reset-mid 200 p o1",
                                    "HTTP/1.1 GET /bytes/7 200 p o1"]), lines


def test_te_other_than_trailers_does_not_reach_the_backend(site, origin):
    status, fields, _ = site.http11(b"GET /echo HTTP/1.1\r\nHost: h.test\r\nTE: gzip\r\nConnection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and fields["x-te"] == ""


def test_a_known_length_passes_through(site):
    status, fields, rest = site.http11(b"GET /bytes/100000 HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and fields["content-length"] == "100000"
    assert "transfer-encoding" not in fields and rest == payload(100000)


def test_streams_share_one_backend_connection_and_a_slow_one_holds_no_other(site, origin):
    """A client that does not read one response: that stream waits within its
    windows (the backend's send blocks on it), while other streams of the same
    backend connection are answered; then the slow one comes whole."""
    with site.client(auto_window=False) as c:
        slow = c.request("/bytes/3000000")
        wait_for(lambda: origin.blocked, 10, "the origin to be held by the slow stream's window")
        for i in range(5):
            body = os.urandom(20_000 + i)
            sid = c.request("/echo", "POST", body=body)
            c.open_window(sid, 40_000)
            r = c.response(sid)
            assert r.status == 200 and bytes(r.body) == body
        assert not c.responses[slow].done
        c.open_window(slow, 3_000_000)
        r = c.response(slow, timeout=30)
        assert r.status == 200 and bytes(r.body) == payload(3000000)
    assert origin.connections == 1


def test_an_upload_the_backend_does_not_read_holds_no_other_stream(run_lb, origin):
    """The backend takes no more of one upload than its stream window (it never
    gives it back), while the other streams on the same backend connection,
    uploads too, go through."""
    # (the client connection's window has room beside the held upload, which lb
    # does not read past what the backend took: the listener's flow control)
    site = Site(run_lb, origin, http2="initial_window_size = 1048576\nconnection_window_size = 4194304")
    with site.client() as c:
        held = c.request("/hold-upload", "POST", end=False)
        c.send_body(held, os.urandom(1_000_000), end=False)     # (within lb's window: sent at once)
        wait_for(lambda: sum(origin.held.values()) >= 65535, 10, "the origin's window to fill")
        for i in range(4):
            body = os.urandom(150_000 + i)
            r = c.response(c.request("/echo", "POST", body=body), timeout=20)
            assert r.status == 200 and bytes(r.body) == body
        assert list(origin.held.values()) == [65535]              # the backend's window, not a byte more
        assert not c.responses[held].done
    assert origin.connections == 1


def test_past_the_backends_stream_limit_another_connection_is_opened(run_lb):
    origin = H2Origin(max_concurrent_streams=2)
    try:
        site = Site(run_lb, origin)
        with site.client(auto_window=False) as c:
            c.open_window(c.request("/bytes/10"), 100)      # (the backend's SETTINGS are known from here on)
            r = c.response(1)
            assert r.status == 200
            held = [c.request("/bytes/500000") for _ in range(6)]
            wait_for(lambda: len(origin.blocked) == 6, 10, "six responses held at the origin")
            assert origin.connections == 3
            for sid in held:
                c.open_window(sid, 500_000)
            for sid in held:
                assert bytes(c.response(sid, timeout=30).body) == payload(500000)
    finally:
        origin.stop()


def test_a_goaway_sends_the_unprocessed_request_again_on_a_new_connection(site, origin):
    """A POST (never sent twice otherwise) above the GOAWAY's last stream id
    was not processed (RFC 9113 6.8): lb sends it again, whole."""
    body = os.urandom(5000)
    status, fields, _ = site.http11(b"POST /goaway-once HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n"
                                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert status.startswith(b"HTTP/1.1 200"), status
    assert fields["x-conn"] == "2"
    assert [(p, b) for p, _, b in origin.requests] == [("/goaway-once", body), ("/goaway-once", body)]
    assert origin.connections == 2


def test_a_backend_connection_lost_under_a_request(site, origin):
    """A connection that served before drops while a request is on it: a GET
    is sent again on a new connection to the same backend, a POST is answered
    502, as with a kept-alive HTTP/1.1 connection; the next request gets a
    new connection."""
    status, fields, _ = site.http11(b"GET /echo HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and fields["x-conn"] == "1"
    status, fields, _ = site.http11(b"GET /die-once HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and fields["x-method"] == "GET" and fields["x-conn"] == "2"
    status, _, _ = site.http11(b"POST /die-once HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n"
                               b"Content-Length: 3\r\n\r\nabc")
    assert status.startswith(b"HTTP/1.1 502"), status
    assert [(p, h[":method"]) for p, h, _ in origin.requests] == [
        ("/echo", "GET"), ("/die-once", "GET"), ("/die-once", "GET"), ("/die-once", "POST")]
    status, fields, _ = site.http11(b"GET /echo HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and fields["x-conn"] == "3"


def test_a_stream_reset_mid_response_is_cut_for_the_client(site):
    with site.client() as c:
        r = c.response(c.request("/reset-mid"))
        # (whether the head got out before the reset is nghttp2's to decide)
        assert r.reset == "INTERNAL_ERROR" and not r.ended
        # the connection serves on
        assert c.response(c.request("/bytes/10")).body == payload(10)
    status, fields, rest = site.http11(b"GET /reset-mid HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and fields["transfer-encoding"] == "chunked"
    assert not rest.endswith(b"0\r\n\r\n")        # cut: never a complete-looking response


def test_a_backend_that_refuses_the_connection_gives_502_or_503(run_lb):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                                 # nothing listens there
    o = H2Origin()
    o.address = f"127.0.0.1:{port}"
    try:
        site = Site(run_lb, o, retries=1)
        status, _, _ = site.http11(b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
        assert status.split()[1] in (b"502", b"503"), status
    finally:
        o.stop()
