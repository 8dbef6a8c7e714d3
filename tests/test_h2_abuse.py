"""HTTP/2 floods and malformed requests (lb/fastpath/h2.pxi): each gets the
protocol's answer (a stream error or a connection error), no malformed
request reaches the origin, and the worker's memory stays bounded while the
connection is cut off long before the client ran out of frames to send.

Frames are written by hand (tests/h2_client.py `frame`, HPACK from the
connection's own encoder), since a well-behaved client library refuses to
make them."""

from __future__ import annotations

import struct
import time

import psutil
import pytest

from conftest import free_port, wait_for
from h2_client import END_HEADERS, END_STREAM, H2Client, Response, frame
from http_origin import Origin
from tls_servers import lb_toml, listener_toml, pool_toml

MiB = 1024 * 1024


@pytest.fixture
def origin():
    o = Origin("o")
    yield o
    o.stop()


class Edge:
    """An h2c listener in front of one origin."""

    def __init__(self, run_lb, origin, h2: str = ""):
        self.port = free_port()
        listener = listener_toml("h2", self.port, "p") + f"\n[listeners.h2.http2]\nh2c = true\n{h2}\n"
        self.lb = run_lb(lb_toml(listener, pool_toml("p", [("o", origin.address)])))
        self.origin = origin
        self.worker = psutil.Process(self.lb.worker_pid(0))

    def client(self, **kw) -> H2Client:
        c = H2Client(self.port, **kw)
        c.pump(lambda: c.server_settings)          # lb's SETTINGS in (and acknowledged)
        return c

    def rss(self) -> int:
        return self.worker.memory_info().rss

    def stats(self, key: str) -> int:
        return sum(w[key] for w in self.lb.worker_stats())

    def still_serves(self):
        """A fresh connection gets an answer; the origin saw only that request
        since the abuse began (every request line it reported)."""
        with self.client() as c:
            r = c.response(c.request("/after"))
            assert r.status == 200
        seen = []
        wait_for(lambda: seen.extend(line.split()[-1] for line in self.origin.requests()) or "/after" in seen,
                 10, "the origin's report")
        assert seen == ["/after"], seen


@pytest.fixture
def edge(run_lb, origin):
    return Edge(run_lb, origin)


def get_block(c: H2Client, path: str = "/x", extra=()) -> bytes:
    return c.header_block([(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", path),
                           *extra])


def flood(c: H2Client, frames: bytes, copies: int) -> int:
    """Send copies of frames in large writes until lb closes; the copies sent.
    Once lb has said GOAWAY it reads the rest without looking at it (a
    lingering close), so a client may well send them all."""
    batch = 200
    sent = 0
    while sent < copies:
        if not c.raw(frames * batch):
            break
        sent += batch
    return sent


def assert_cut_off(edge, c: H2Client, error: str, before_rss: int):
    c.wait_closed()
    assert c.goaway_error == error, c.goaway_error
    assert edge.rss() - before_rss < 32 * MiB
    assert edge.stats("h2_refused") >= 1


# ---- floods ------------------------------------------------------------------------------------

def test_rapid_reset_ends_the_connection_and_reaches_no_backend(edge):
    rss = edge.rss()
    with edge.client() as c:
        frames = bytearray()
        for i in range(5000):
            sid = 1 + 2 * i
            frames += frame("HEADERS", END_HEADERS | END_STREAM, sid, get_block(c, f"/r{i}"))
            frames += frame("RST_STREAM", 0, sid, struct.pack("!I", 8))   # CANCEL
        for i in range(0, len(frames), 65536):
            if not c.raw(bytes(frames[i:i + 65536])):
                break
        assert_cut_off(edge, c, "ENHANCE_YOUR_CALM", rss)
    edge.still_serves()


def test_continuation_flood_is_a_connection_error(edge):
    rss = edge.rss()
    with edge.client() as c:
        c.raw(frame("HEADERS", 0, 1, get_block(c)))
        one = frame("CONTINUATION", 0, 1, c.header_block([("x-pad", "y" * 40)]))
        flood(c, one, 100000)
        c.wait_closed()
        assert c.goaway_error == "ENHANCE_YOUR_CALM"
    assert edge.rss() - rss < 32 * MiB
    edge.still_serves()


def test_hpack_bomb_is_cut_off(edge):
    rss = edge.rss()
    with edge.client() as c:
        # one 4000-byte field into the dynamic table, then one-byte references to it
        big = c.header_block([("x-bomb", "b" * 4000)])
        block = get_block(c) + big + bytes([0xbe]) * 12000
        c.raw(frame("HEADERS", END_HEADERS | END_STREAM, 1, block[:16384]))
        for i in range(16384, len(block), 16384):
            c.raw(frame("CONTINUATION", END_HEADERS if i + 16384 >= len(block) else 0, 1, block[i:i + 16384]))
        assert_cut_off(edge, c, "ENHANCE_YOUR_CALM", rss)
    edge.still_serves()


@pytest.mark.parametrize("kind", ["settings", "ping", "window_update"])
def test_control_frame_floods(edge, kind):
    one = {"settings": frame("SETTINGS", 0, 0),
           "ping": frame("PING", 0, 0, b"12345678"),
           "window_update": frame("WINDOW_UPDATE", 0, 0, struct.pack("!I", 1))}[kind]
    rss = edge.rss()
    with edge.client() as c:
        flood(c, one, 200000)
        assert_cut_off(edge, c, "ENHANCE_YOUR_CALM", rss)
        assert c.pings_acked <= 1100        # frames past the budget are read and dropped, not answered
    edge.still_serves()


def test_empty_data_frame_flood(edge):
    rss = edge.rss()
    with edge.client() as c:
        block = c.header_block([(":method", "POST"), (":scheme", "http"), (":authority", "a.test"), (":path", "/p")])
        c.raw(frame("HEADERS", END_HEADERS, 1, block))
        flood(c, frame("DATA", 0, 1), 200000)
        assert_cut_off(edge, c, "ENHANCE_YOUR_CALM", rss)
    edge.still_serves()


def test_window_overflow_is_a_flow_control_error(edge):
    with edge.client() as c:
        c.raw(frame("WINDOW_UPDATE", 0, 0, struct.pack("!I", 2**31 - 1)))
        c.wait_closed()
        assert c.goaway_error == "FLOW_CONTROL_ERROR"
    with edge.client() as c:
        c.raw(frame("HEADERS", END_HEADERS, 1, c.header_block([
            (":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/w"), ("content-length", "5")])))
        c.raw(frame("WINDOW_UPDATE", 0, 1, struct.pack("!I", 2**31 - 1)))
        assert c.response(1).reset == "FLOW_CONTROL_ERROR"
        c.raw(frame("HEADERS", END_HEADERS | END_STREAM, 3, get_block(c, "/fine")))
        r = c.response(3)                                          # the connection goes on
        assert r.ended and dict(r.headers)[b":status"] == b"200"
    seen = []
    wait_for(lambda: seen.extend(line.split()[-1] for line in edge.origin.requests()) or "/fine" in seen, 10,
             "the origin's report")
    assert seen == ["/fine"]


def test_too_many_streams_are_refused_one_by_one(run_lb, origin):
    """A stream past SETTINGS_MAX_CONCURRENT_STREAMS gets RST_STREAM
    REFUSED_STREAM (RFC 9113 5.1.2, as from HAProxy and nginx): the client may
    send it again, and the connection and its other streams go on. Nothing of a
    refused stream reaches the origin."""
    edge = Edge(run_lb, origin, h2="max_concurrent_streams = 5")
    with edge.client() as c:
        assert c.server_settings[h2_settings().MAX_CONCURRENT_STREAMS] == 5
        # five requests whose bodies are still to come, then two more
        for i in range(7):
            c.raw(frame("HEADERS", END_HEADERS, 1 + 2 * i, c.header_block([
                (":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", f"/s{i}"),
                ("content-length", "3")])))
        c.pump(lambda: all(c.responses.get(sid) and c.responses[sid].reset for sid in (11, 13)))
        assert c.responses[11].reset == c.responses[13].reset == "REFUSED_STREAM"
        assert c.goaway is None
        for i in range(5):
            c.raw(frame("DATA", END_STREAM, 1 + 2 * i, b"abc"))
        c.pump(lambda: all(c.responses.get(1 + 2 * i) and c.responses[1 + 2 * i].ended for i in range(5)))
        assert [c.responses[1 + 2 * i].status for i in range(5)] == [200] * 5
        # once there is room, the refused request is taken
        c.raw(frame("HEADERS", END_HEADERS | END_STREAM, 15, c.header_block([
            (":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/again")])))
        c.pump(lambda: c.responses.get(15) and c.responses[15].ended)
        assert c.responses[15].status == 200 and c.goaway is None
    seen = []
    wait_for(lambda: seen.extend(line.split()[-1] for line in edge.origin.requests()) or "/again" in seen, 10,
             "the origin's report")
    assert sorted(seen) == ["/again", "/s0", "/s1", "/s2", "/s3", "/s4"], seen


def test_a_client_that_keeps_overshooting_the_stream_limit_is_ended(run_lb, origin):
    """Refused streams cost the client its glitch budget: one that keeps
    opening them gets GOAWAY ENHANCE_YOUR_CALM, and the origin sees none."""
    edge = Edge(run_lb, origin, h2="max_concurrent_streams = 2\nmax_glitches = 20")
    with edge.client() as c:
        for i in range(40):
            if not c.raw(frame("HEADERS", END_HEADERS, 1 + 2 * i, c.header_block([
                    (":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", f"/s{i}"),
                    ("content-length", "3")]))):
                break
        c.wait_closed()
        assert c.goaway_error in ("ENHANCE_YOUR_CALM", "PROTOCOL_ERROR")
    edge.still_serves()


def h2_settings():
    import h2.settings
    return h2.settings.SettingCodes


# ---- malformed requests: a stream error, and nothing reaches the origin --------------------------

BASE = [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", "/bad")]
MALFORMED = {
    "missing :path": [(":method", "GET"), (":scheme", "http"), (":authority", "a.test")],
    "missing :method": [(":scheme", "http"), (":authority", "a.test"), (":path", "/bad")],
    "unknown pseudo-header": BASE + [(":foo", "bar")],
    "pseudo-header after a field": [(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":path", "/bad")],
    "duplicate :path": BASE + [(":path", "/other")],
    "upper-case field name": BASE + [("X-Upper", "1")],
    "connection field": BASE + [("connection", "keep-alive")],
    "keep-alive field": BASE + [("keep-alive", "timeout=5")],
    "transfer-encoding field": BASE + [("transfer-encoding", "chunked")],
    "upgrade field": BASE + [("upgrade", "websocket")],
    "te other than trailers": BASE + [("te", "gzip")],
    "CR LF in a value": BASE + [("x-a", "1\r\nx-injected: 2")],
    "LF in a value": BASE + [("x-a", "1\nGET /smuggled HTTP/1.1")],
    "NUL in a value": BASE + [("x-a", "1\x002")],
    "space in a field name": BASE + [("x a", "1")],
    "colon in a field name": BASE + [("x:a", "1")],
    "space in :path": [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"),
                       (":path", "/a HTTP/1.1\r\nHost: evil")],
    "space in :method": [(":method", "GET /x"), (":scheme", "http"), (":authority", "a.test"), (":path", "/bad")],
    "empty :path": [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", "")],
    "two content-lengths that differ": BASE + [("content-length", "1"), ("content-length", "2")],
    "content-length not a number": BASE + [("content-length", "1x")],
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_request_is_refused_and_never_reaches_the_origin(edge, case):
    with edge.client() as c:
        c.raw(frame("HEADERS", END_HEADERS | END_STREAM, 1, c.header_block(MALFORMED[case])))
        c.pump(lambda: (1 in c.responses and c.responses[1].done) or c.goaway is not None)
        r = c.responses.get(1) or Response()
        # the protocol's answer: a stream error (or lb's 400 to a request
        # HTTP/2 allows but HTTP/1.1 cannot carry)
        assert r.reset == "PROTOCOL_ERROR" or (r.ended and r.status == 400) or \
            c.goaway_error == "PROTOCOL_ERROR", (r, c.goaway_error)
    edge.still_serves()


@pytest.mark.parametrize("declared,sent", [(10, 5), (3, 10), (0, 1)])
def test_content_length_must_equal_the_data_sent(edge, declared, sent):
    with edge.client() as c:
        c.raw(frame("HEADERS", END_HEADERS, 1, c.header_block([
            (":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/cl"),
            ("content-length", str(declared))])))
        c.raw(frame("DATA", END_STREAM, 1, b"d" * sent))
        r = c.response(1)
        assert r.reset == "PROTOCOL_ERROR", r
    edge.still_serves()


def test_a_refused_header_block_leaves_the_connection_usable(run_lb, origin):
    """The header block timer (http_request_timeout) stops when nghttp2
    refuses a block midway, as when the block ends."""
    edge = Edge(run_lb, origin, h2="")
    edge.lb.stop()
    port = free_port()
    listener = listener_toml("h2", port, "p", extra='http_request_timeout = "200ms"') + "\n[listeners.h2.http2]\nh2c = true\n"
    edge.lb = run_lb(lb_toml(listener, pool_toml("p", [("o", origin.address)])))
    edge.port = port
    with edge.client() as c:
        c.raw(frame("HEADERS", END_HEADERS | END_STREAM, 1, c.header_block(BASE + [("connection", "x")])))
        assert c.response(1).reset == "PROTOCOL_ERROR"
        # longer than http_request_timeout: no event to wait for, only the
        # absence of a GOAWAY
        time.sleep(0.5)
        c.raw(frame("HEADERS", END_HEADERS | END_STREAM, 3, get_block(c, "/after")))
        r = c.response(3)
        assert r.ended and dict(r.headers)[b":status"] == b"200" and c.goaway is None
