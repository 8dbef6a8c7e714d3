"""Malformed requests end to end: a real `lb run` (mode = "http", one worker) in
front of a backend that records every byte it receives (tests/recording_backend.py).

For every case the client sends raw bytes and reads to EOF, and the test checks
the exact status of lb's built-in page, that it says `connection: close`, that
lb closed the connection (EOF, not a reset, not a guard timeout), and that the
backend received no byte of it. The rules are docs/http-parser.md's; each case
is also checked against the reference parser (tests/reference/http_ref.py), so
the table cannot drift from the document.

Three listeners share the lb: `main` with the default limits, `small` with
max_target = 64, max_header_size = 1024, max_header_count = 4, and `slow`
with http_request_timeout = "300ms" for the slowloris cases.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import NamedTuple

import pytest

from conftest import LbProcess, free_port, lb_config
from http_client import assert_error_page, exchange, parse_responses, read_to_eof
from recording_backend import OK_BODY, RecordingBackend
from tests.reference import http_ref

CRLF = b"\r\n"
HOST = b"Host: example.com"

SMALL_LIMITS = {"max_target": 64, "max_head": 1024, "max_fields": 4}
LISTENER_LIMITS = {"main": {}, "small": SMALL_LIMITS}


# ---- the rig: one lb, one recording backend, for the whole module ---------------------------------


class Rig(NamedTuple):
    lb: LbProcess
    backend: RecordingBackend
    ports: dict


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    backend = RecordingBackend()
    ports = {"main": free_port(), "small": free_port(), "slow": free_port()}
    config = lb_config(ports["main"], [(backend.address, "rec", 100)], mode="http") + f"""
[listeners.small]
bind = ["127.0.0.1:{ports['small']}"]
mode = "http"
pool = "p"
max_target = 64
max_header_size = 1024
max_header_count = 4

[listeners.slow]
bind = ["127.0.0.1:{ports['slow']}"]
mode = "http"
pool = "p"
http_request_timeout = "300ms"
"""
    lb = LbProcess(config, tmp_path_factory.mktemp("lb-malformed"))
    try:
        yield Rig(lb, backend, ports)
    finally:
        lb.stop(signal.SIGINT)
        backend.close()
    assert not os.path.exists(lb.shm_path), "shared memory left behind"
    assert not backend.errors, backend.errors


# ---- the table ----------------------------------------------------------------------------------------


def req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return line + CRLF + b"".join(f + CRLF for f in fields) + CRLF + body


def get(*fields: bytes) -> bytes:
    """GET / HTTP/1.1 with a Host, then fields."""
    return req(b"GET / HTTP/1.1", HOST, *fields)


def line(request_line: bytes) -> bytes:
    """A request line alone with a valid Host after it."""
    return req(request_line, HOST)


CHUNKED_HEAD = req(b"POST /upload HTTP/1.1", HOST, b"Transfer-Encoding: chunked")


def chunked(body: bytes) -> bytes:
    """A chunked POST; the body is small, so lb holds it whole before any backend."""
    return CHUNKED_HEAD + body


# (id, listener, raw request, status). Head cases are checked against
# http_ref.parse_request with the listener's limits, body cases against
# http_ref.parse_chunked.
MALFORMED = [
    # -- the request line: method
    ("method-bad-char", "main", line(b"GE(T / HTTP/1.1"), 400),
    ("method-at-sign", "main", line(b"G@T / HTTP/1.1"), 400),
    ("method-obs-text", "main", line(b"G\xc9T / HTTP/1.1"), 400),
    ("method-nul", "main", line(b"G\x00T / HTTP/1.1"), 400),
    ("method-33-bytes", "main", line(b"A" * 33 + b" / HTTP/1.1"), 400),
    ("connect-authority", "main", req(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"), 405),
    ("connect-origin-form", "main", line(b"CONNECT / HTTP/1.1"), 405),
    # -- the request line: separators
    ("leading-space", "main", line(b" GET / HTTP/1.1"), 400),
    ("two-spaces-after-method", "main", line(b"GET  / HTTP/1.1"), 400),
    ("two-spaces-before-version", "main", line(b"GET /  HTTP/1.1"), 400),
    ("tab-after-method", "main", line(b"GET\t/ HTTP/1.1"), 400),
    ("trailing-space", "main", line(b"GET / HTTP/1.1 "), 400),
    ("missing-target", "main", line(b"GET HTTP/1.1"), 400),
    ("missing-version", "main", line(b"GET /"), 400),
    ("method-only", "main", line(b"GET"), 400),
    ("five-leading-empty-lines", "main", CRLF * 5 + get(), 400),
    ("leading-bare-lf", "main", b"\n" + get(), 400),
    ("request-line-bare-lf", "main", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("request-line-bare-cr", "main", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    # -- the request line: target
    ("target-space-inside", "main", line(b"GET /a b HTTP/1.1"), 400),
    ("target-ctl", "main", line(b"GET /a\x01b HTTP/1.1"), 400),
    ("target-del", "main", line(b"GET /a\x7f HTTP/1.1"), 400),
    ("target-utf8", "main", line(b"GET /caf\xc3\xa9 HTTP/1.1"), 400),
    ("target-not-a-form", "main", line(b"GET foo HTTP/1.1"), 400),
    ("target-scheme-only", "main", line(b"GET http:// HTTP/1.1"), 400),
    ("target-ftp", "main", line(b"GET ftp://example.com/ HTTP/1.1"), 400),
    ("asterisk-with-get", "main", line(b"GET * HTTP/1.1"), 400),
    ("asterisk-then-more", "main", line(b"OPTIONS *a HTTP/1.1"), 400),
    ("http2-preface", "main", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    # -- the request line: version
    ("version-lowercase", "main", line(b"GET / http/1.1"), 400),
    ("version-1.1x", "main", line(b"GET / HTTP/1.1x"), 400),
    ("version-1.10", "main", line(b"GET / HTTP/1.10"), 400),
    ("version-no-minor", "main", line(b"GET / HTTP/1"), 400),
    ("version-2-no-minor", "main", line(b"GET / HTTP/2"), 400),
    ("version-0.9", "main", line(b"GET / HTTP/0.9"), 400),
    ("version-10.0", "main", line(b"GET / HTTP/10.0"), 400),
    ("version-2.0", "main", line(b"GET / HTTP/2.0"), 505),
    ("version-3.0", "main", line(b"GET / HTTP/3.0"), 505),
    ("version-2.0-before-field-error", "main", b"GET / HTTP/2.0\r\nX: \x00\r\n\r\n", 505),
    # -- fields
    ("space-before-colon", "main", get(b"X-Foo : bar"), 400),
    ("tab-before-colon", "main", get(b"X-Foo\t: bar"), 400),
    ("space-before-colon-host", "main", req(b"GET / HTTP/1.1", b"Host : example.com"), 400),
    ("obs-fold-space", "main", get(b"X-Foo: a", b" b"), 400),
    ("obs-fold-tab", "main", get(b"X-Foo: a", b"\tb"), 400),
    ("whitespace-before-first-field", "main", req(b"GET / HTTP/1.1", b" Host: example.com"), 400),
    ("nul-in-value", "main", get(b"X-Foo: a\x00b"), 400),
    ("ctl-in-value", "main", get(b"X-Foo: a\x01b"), 400),
    ("esc-in-value", "main", get(b"X-Foo: \x1b[1m"), 400),
    ("del-in-value", "main", get(b"X-Foo: a\x7fb"), 400),
    ("bare-cr-in-value", "main", get(b"X-Foo: a\rb"), 400),
    ("bare-lf-in-value", "main", get(b"X-Foo: a\nb"), 400),
    ("field-ends-bare-lf", "main", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("head-ends-bare-lf", "main", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("bare-lf-everywhere", "main", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("head-ends-bare-cr", "main", b"GET / HTTP/1.1\r\nHost: a\r\n\rX", 400),
    ("no-colon", "main", get(b"X-Foo bar"), 400),
    ("empty-name", "main", get(b": bar"), 400),
    ("name-bad-char", "main", get(b"X(Foo): bar"), 400),
    ("name-nul", "main", get(b"X\x00: bar"), 400),
    ("name-obs-text", "main", get(b"X-F\xf6o: bar"), 400),
    # -- Host
    ("host-missing", "main", req(b"GET / HTTP/1.1", b"X-Foo: bar"), 400),
    ("host-missing-no-fields", "main", req(b"GET / HTTP/1.1"), 400),
    ("host-repeated", "main", get(HOST), 400),
    ("host-repeated-other-case", "main", get(b"HOST: other.example"), 400),
    ("host-repeated-http10", "main", req(b"GET / HTTP/1.0", HOST, HOST), 400),
    ("host-space", "main", req(b"GET / HTTP/1.1", b"Host: a b"), 400),
    ("host-userinfo", "main", req(b"GET / HTTP/1.1", b"Host: user@example.com"), 400),
    ("host-slash", "main", req(b"GET / HTTP/1.1", b"Host: a/b"), 400),
    ("host-empty-port", "main", req(b"GET / HTTP/1.1", b"Host: a:"), 400),
    ("host-port-6-digits", "main", req(b"GET / HTTP/1.1", b"Host: a:123456"), 400),
    ("host-two-ports", "main", req(b"GET / HTTP/1.1", b"Host: a:1:2"), 400),
    ("host-ipv6-unclosed", "main", req(b"GET / HTTP/1.1", b"Host: [::1"), 400),
    ("host-ipv6-empty", "main", req(b"GET / HTTP/1.1", b"Host: []"), 400),
    ("host-obs-text", "main", req(b"GET / HTTP/1.1", b"Host: caf\xc3\xa9"), 400),
    # -- Content-Length
    ("te-and-cl-smuggling", "main",
     req(b"POST / HTTP/1.1", HOST, b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nX"), 400),
    ("cl-and-te", "main",
     req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"), 400),
    ("cl-duplicate-equal", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: 3", b"Content-Length: 3",
                                       body=b"abc"), 400),
    ("cl-duplicate-different", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: 3", b"content-length: 4",
                                           body=b"abcd"), 400),
    ("cl-list", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: 3, 3", body=b"abc"), 400),
    ("cl-plus", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: +3", body=b"abc"), 400),
    ("cl-minus", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: -1"), 400),
    ("cl-hex", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: 0x3", body=b"abc"), 400),
    ("cl-inner-space", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: 1 2"), 400),
    ("cl-empty", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length:"), 400),
    ("cl-19-digits", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: " + b"1" * 19), 400),
    # -- Transfer-Encoding
    ("te-gzip", "main", req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: gzip"), 501),
    ("te-identity", "main", req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: identity"), 501),
    ("te-gzip-then-chunked", "main", req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: gzip, chunked"), 501),
    ("te-chunked-then-gzip", "main", req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: chunked, gzip"), 501),
    ("te-chunked-with-parameter", "main", req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: chunked;q=1"), 501),
    ("te-chunked-twice", "main", req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: chunked, chunked"), 400),
    ("te-chunked-in-two-fields", "main",
     req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400),
    ("te-empty", "main", req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding:"), 400),
    ("te-only-commas", "main", req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: , ,"), 400),
    ("te-http10", "main", req(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400),
    ("te-unknown-before-bad-expect", "main",
     req(b"POST / HTTP/1.1", HOST, b"Transfer-Encoding: gzip", b"Expect: nothing"), 501),
    # -- chunked bodies (small: held whole before a backend is chosen)
    ("chunk-size-not-hex", "main", chunked(b"g\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-size-0x", "main", chunked(b"0x1\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", "main", chunked(b"-1\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", "main", chunked(b"\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-size-17-digits", "main", chunked(b"0" * 16 + b"1\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-size-trailing-space", "main", chunked(b"1 \r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-size-bare-lf", "main", chunked(b"1\nx\r\n0\r\n\r\n"), 400),
    ("chunk-data-longer-than-size", "main", chunked(b"1\r\nxy\r\n0\r\n\r\n"), 400),
    ("chunk-data-then-lf", "main", chunked(b"1\r\nx\n0\r\n\r\n"), 400),
    ("chunk-data-then-bare-cr", "main", chunked(b"1\r\nx\r0\r\n\r\n"), 400),
    ("chunk-line-too-long", "main", chunked(b"1;" + b"a" * 4095 + b"\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-ext-empty", "main", chunked(b"1;\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-ext-trailing-space", "main", chunked(b"1;a \r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-ext-no-value", "main", chunked(b"1;a=\r\nx\r\n0\r\n\r\n"), 400),
    ("chunk-ext-quoted-ctl", "main", chunked(b'1;a="b\x01"\r\nx\r\n0\r\n\r\n'), 400),
    ("chunk-ext-bad-byte", "main", chunked(b"1;a,b\r\nx\r\n0\r\n\r\n"), 400),
    ("trailer-content-length", "main", chunked(b"1\r\nx\r\n0\r\nContent-Length: 1\r\n\r\n"), 400),
    ("trailer-transfer-encoding", "main", chunked(b"0\r\ntransfer-encoding: chunked\r\n\r\n"), 400),
    ("trailer-host", "main", chunked(b"0\r\nX-Sum: 1\r\nHOST: a\r\n\r\n"), 400),
    ("trailer-obs-fold", "main", chunked(b"0\r\nX: 1\r\n 2\r\n\r\n"), 400),
    ("trailer-nul", "main", chunked(b"0\r\nX: \x00\r\n\r\n"), 400),
    ("trailer-space-before-colon", "main", chunked(b"0\r\nX : 1\r\n\r\n"), 400),
    ("trailer-too-large", "main", chunked(b"0\r\nX: " + b"y" * 16400 + b"\r\n\r\n"), 400),
    ("trailer-257-fields", "main", chunked(b"0\r\n" + b"t: 1\r\n" * 257 + b"\r\n"), 400),
    # -- Expect
    ("expect-other", "main", get(b"Expect: foo"), 417),
    ("expect-continue-and-other", "main", get(b"Expect: 100-continue, foo"), 417),
    ("expect-empty", "main", get(b"Expect:"), 417),
    ("expect-with-body", "main", req(b"POST / HTTP/1.1", HOST, b"Content-Length: 3", b"Expect: 200-ok",
                                     body=b"abc"), 417),
    # -- limits: the defaults (main) and configured ones (small)
    ("target-8193", "main", line(b"GET /" + b"a" * 8192 + b" HTTP/1.1"), 414),
    ("head-16385", "main", get(b"X-Big: " + b"v" * 16384), 431),
    ("fields-101", "main", get(*[b"X-%d: y" % i for i in range(100)]), 431),
    ("small-target-65", "small", line(b"GET /" + b"a" * 64 + b" HTTP/1.1"), 414),
    ("small-target-65-line-unfinished", "small", b"GET /" + b"a" * 64, 414),
    ("small-head-1025", "small", get(b"X-Big: " + b"v" * 1000), 431),
    ("small-head-unfinished", "small", b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 1100, 431),
    ("small-fields-5", "small", get(b"A: 1", b"B: 2", b"C: 3", b"D: 4"), 431),
]



def _small_valid() -> bytes:
    """A request exactly at the small listener's limits: a 64-byte target, 4
    fields, a 1024-byte head."""
    base = req(b"GET /" + b"a" * 63 + b" HTTP/1.1", HOST, b"A: 1", b"B: 2", b"C: ")
    return req(b"GET /" + b"a" * 63 + b" HTTP/1.1", HOST, b"A: 1", b"B: 2", b"C: " + b"c" * (1024 - len(base)))


SMALL_VALID = _small_valid()


def test_table_is_big_distinct_and_covers_every_status():
    assert len(MALFORMED) >= 60
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)
    assert len({(case[1], case[2]) for case in MALFORMED}) == len(MALFORMED)
    assert {case[3] for case in MALFORMED} == {400, 405, 414, 417, 431, 501, 505}


@pytest.mark.parametrize("name,listener,data,status", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_table_agrees_with_the_reference(name, listener, data, status):
    limits = LISTENER_LIMITS[listener]
    if data.startswith(CHUNKED_HEAD):
        assert http_ref.parse_request(data, **limits)[:2] == (0, len(CHUNKED_HEAD))
        assert http_ref.parse_chunked(data[len(CHUNKED_HEAD):])[0] == status
    else:
        assert http_ref.parse_request(data, **limits) == (status, 0, None)


@pytest.mark.parametrize("name,listener,data,status", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_request(rig, name, listener, data, status):
    before = rig.backend.sync()
    responses = parse_responses(exchange(rig.ports[listener], data))
    assert [r.status for r in responses] == [status]
    assert_error_page(responses[0], status)
    after = rig.backend.sync()
    assert (after.bytes, after.requests) == (before.bytes, before.requests), "the backend saw the request"


def test_small_limits_let_a_request_at_them_through(rig):
    """The small listener's limits are the configured ones, not smaller."""
    assert http_ref.parse_request(SMALL_VALID, **SMALL_LIMITS)[:2] == (0, len(SMALL_VALID)) == (0, 1024)
    before = rig.backend.sync()
    with socket.create_connection(("127.0.0.1", rig.ports["small"]), timeout=5) as s:
        s.sendall(SMALL_VALID)
        s.shutdown(socket.SHUT_WR)
        responses = parse_responses(read_to_eof(s))
    assert [(r.status, r.body) for r in responses] == [(200, OK_BODY)]
    assert rig.backend.sync().requests == before.requests + 1


# ---- a valid request, then garbage on the same connection ------------------------------------------

PIPELINED_GARBAGE = [
    # (id, a valid request, what follows it)
    ("nul-bytes", get(), b"\x00\x01\x02 garbage\r\n\r\n"),
    ("bare-lf-request", get(), b"GET / HTTP/1.1\nHost: a\n\n"),
    ("bad-second-head", get(), b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
    ("after-cl-body", req(b"POST /form HTTP/1.1", HOST, b"Content-Length: 5", body=b"hello"),
     b"hello again\r\n\r\n"),
    ("body-longer-than-cl", req(b"POST /form HTTP/1.1", HOST, b"Content-Length: 2", body=b"ab"),
     b"cdef\r\n\r\n"),
    ("after-chunked-body", chunked(b"5\r\nhello\r\n0\r\n\r\n"), b"0\r\n\r\n"),
]


@pytest.mark.parametrize("name,first,garbage", PIPELINED_GARBAGE, ids=[c[0] for c in PIPELINED_GARBAGE])
def test_valid_request_then_garbage(rig, name, first, garbage):
    """The first request is answered (200 from the backend), the garbage gets 400,
    lb closes, and the backend saw exactly the first request and nothing else."""
    status, head_len, info = http_ref.parse_request(first)
    assert status == 0 and http_ref.parse_request(garbage)[0] == 400
    before = rig.backend.sync()
    responses = parse_responses(exchange(rig.ports["main"], first + garbage))
    assert [r.status for r in responses] == [200, 400]
    assert responses[0].body == OK_BODY
    assert_error_page(responses[1], 400)
    after = rig.backend.sync()
    assert after.requests == before.requests + 1
    [(_conn, seen, raw_seen)] = rig.backend.log[before.requests:]
    assert after.bytes - before.bytes == len(raw_seen), "bytes after the first request reached the backend"
    assert (seen["method"], seen["target"]) == (info["method"], info["target"])
    assert raw_seen.endswith(first[head_len:])  # its body, whole


# ---- slowloris: http_request_timeout -------------------------------------------------------------------


def test_request_head_timeout_408(rig):
    before = rig.backend.sync()
    started = time.monotonic()
    responses = parse_responses(exchange(rig.ports["slow"], b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: 1"))
    assert time.monotonic() - started >= 0.25
    assert [r.status for r in responses] == [408]
    assert_error_page(responses[0], 408)
    assert rig.backend.sync().bytes == before.bytes


def test_request_timeout_counts_from_accept_with_no_byte(rig):
    responses = parse_responses(exchange(rig.ports["slow"], b""))
    assert [r.status for r in responses] == [408]
    assert_error_page(responses[0], 408)


def test_slowloris_trickle_408(rig):
    """A byte every 50 ms keeps the connection active, but the head must be
    complete within http_request_timeout of the accept, not of the last byte."""
    before = rig.backend.sync()
    done = threading.Event()
    with socket.create_connection(("127.0.0.1", rig.ports["slow"]), timeout=5) as s:
        def trickle():
            head = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: " + b"z" * 1000
            for i in range(len(head)):
                if done.is_set():
                    return
                try:
                    s.send(head[i:i + 1])
                except OSError:
                    return
                time.sleep(0.05)  # the client's pace, not a wait for lb

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            raw = read_to_eof(s)
        finally:
            done.set()
            sender.join()
    responses = parse_responses(raw)
    assert [r.status for r in responses] == [408]
    assert_error_page(responses[0], 408)
    assert rig.backend.sync().bytes == before.bytes


def test_keep_alive_request_head_timeout_408(rig):
    """The second request's head has http_request_timeout from its first byte."""
    before = rig.backend.sync()
    with socket.create_connection(("127.0.0.1", rig.ports["slow"]), timeout=5) as s:
        s.sendall(get())
        head = b""
        while not head.endswith(OK_BODY):
            chunk = s.recv(65536)
            assert chunk, "lb closed after the first response"
            head += chunk
        assert parse_responses(head)[0].status == 200
        s.sendall(b"GET /second HTTP/1.1\r\nHost: example.com\r\n")
        responses = parse_responses(read_to_eof(s))
    assert [r.status for r in responses] == [408]
    assert_error_page(responses[0], 408)
    assert rig.backend.sync().requests == before.requests + 1
