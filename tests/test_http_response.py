"""Response strictness end to end: a backend that answers with a malformed
response gets its client a 502, and that backend connection is closed, never
reused: the next request goes on another connection.

One `lb run` (mode = "http", one worker) in front of a recording backend
(tests/recording_backend.py) that answers `GET /bad/<case>` with the case's
raw bytes and keeps the connection open (so lb could reuse it if it wrongly
kept it), `GET /silent` with nothing (the pool's response_timeout is 300 ms),
and anything else with a valid 200. The last tests hold the engine to its
promise around request bodies: a chunked upload of any shape reaches the
backend whole.
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

from conftest import LbProcess, free_port, lb_config
from http_client import assert_error_page, parse_responses, read_to_eof
from recording_backend import OK_BODY, OK_RESPONSE, RecordingBackend
from tests.reference import http_ref

HOST = b"Host: example.com"

# (id, the backend's raw answer, whether the backend closes after it). Each is
# 502 for the reference (checked below) and complete enough to be judged at once.
BAD_RESPONSES = [
    ("status-lowercase-http", b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("status-http2", b"HTTP/2 200\r\nContent-Length: 2\r\n\r\nok", False),
    ("status-http2.0", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("status-two-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("status-four-digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("status-600", b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok", False),
    ("status-no-space", b"HTTP/1.1200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    ("status-reason-nul", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok", False),
    ("no-status-line", b"ok\r\n", False),
    ("status-line-bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok", False),
    ("all-bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", False),
    ("field-bare-lf", b"HTTP/1.1 200 OK\r\nContent-Length: 2\nX: 1\r\n\r\nok", False),
    ("field-bare-cr", b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok", False),
    ("two-content-length-equal", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", False),
    ("two-content-length-different", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", False),
    ("content-length-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", False),
    ("content-length-sign", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", False),
    ("content-length-with-te",
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    ("te-chunked-not-last", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    ("te-chunked-twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nok\r\n0\r\n\r\n", False),
    ("te-empty", b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nContent-Length: 2\r\n\r\nok", False),
    ("nul-in-field", b"HTTP/1.1 200 OK\r\nX-Foo: a\x00b\r\nContent-Length: 2\r\n\r\nok", False),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-Foo: a\r\n b\r\nContent-Length: 2\r\n\r\nok", False),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", False),
    ("no-colon", b"HTTP/1.1 200 OK\r\nX-Foo\r\nContent-Length: 2\r\n\r\nok", False),
    ("fields-257", b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 257 + b"Content-Length: 2\r\n\r\nok", False),
    ("head-cut-short-then-close", b"HTTP/1.1 200 OK\r\nContent-Len", True),
]


def respond(conn, info):
    target = info["target"]
    if target.startswith(b"/bad/"):
        name = target[len(b"/bad/"):].decode()
        for case_name, raw, close in BAD_RESPONSES:
            if case_name == name:
                return raw, close
        raise AssertionError(f"no such case {name}")
    if target == b"/silent":
        return b"", False  # never answers: lb's response_timeout ends it
    return OK_RESPONSE, False


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    backend = RecordingBackend(respond)
    port = free_port()
    lb = LbProcess(lb_config(port, [(backend.address, "rec", 100)], mode="http",
                             pool_extra='response_timeout = "300ms"'),
                   tmp_path_factory.mktemp("lb-response"))
    try:
        yield lb, backend, port
    finally:
        lb.stop(signal.SIGINT)
        backend.close()
    assert not os.path.exists(lb.shm_path), "shared memory left behind"
    assert not backend.errors, backend.errors


def one_request(port: int, target: bytes) -> list:
    """One request on its own connection, Connection: close (lb closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"\r\nConnection: close\r\n\r\n")
        return parse_responses(read_to_eof(s))


def test_bad_responses_are_502_for_the_reference():
    for name, raw, _close in BAD_RESPONSES:
        assert http_ref.parse_response(raw)[0] == (-1 if name.endswith("-then-close") else 502), name


@pytest.mark.parametrize("name,raw,close", BAD_RESPONSES, ids=[c[0] for c in BAD_RESPONSES])
def test_malformed_response_is_502_and_never_reused(rig, name, raw, close):
    lb, backend, port = rig
    # a good exchange first: lb parks that connection and takes it again next
    assert [(r.status, r.body) for r in one_request(port, b"/ok")] == [(200, OK_BODY)]
    before = backend.sync()

    responses = one_request(port, b"/bad/" + name.encode())
    assert [r.status for r in responses] == [502]
    assert_error_page(responses[0], 502)
    [(bad_conn, info, _raw)] = backend.log[before.requests:]
    assert info["target"] == b"/bad/" + name.encode()
    # lb closed the connection that carried the bad response
    backend.wait_for(lambda: bad_conn.eof, what=f"lb to close backend connection {bad_conn.id}")

    mark = len(backend.log)
    assert [(r.status, r.body) for r in one_request(port, b"/after")] == [(200, OK_BODY)]
    [(next_conn, info, _raw)] = backend.log[mark:]
    assert info["target"] == b"/after"
    assert next_conn is not bad_conn
    assert bad_conn.targets()[-1] == b"/bad/" + name.encode()  # nothing came after it there


def test_silent_backend_is_504_and_its_connection_closed(rig):
    """No response byte within the pool's response_timeout: 504 (sent at once,
    not after the close linger), and that backend connection is dropped."""
    lb, backend, port = rig
    mark = len(backend.log)
    responses = one_request(port, b"/silent")
    assert [r.status for r in responses] == [504]
    assert_error_page(responses[0], 504)
    [(silent_conn, info, _raw)] = backend.log[mark:]
    assert info["target"] == b"/silent"
    backend.wait_for(lambda: silent_conn.eof, what="lb to close the silent connection")


# ---- chunked uploads of any shape reach the backend whole ----------------------------------------------


@pytest.mark.parametrize("first", range(60000, 60006))
def test_chunked_upload_across_the_buffer_end(rig, first):
    """A chunk line or the CRLF after chunk data that falls at the end of lb's
    64 KiB upstream buffer must not stall the upload (it once did, until the
    idle timeout reset it). After a large chunk come 6-byte chunks, so the
    buffer's end falls among them whatever the head's length; the six sizes of
    the large one put it at each of their six bytes."""
    lb, backend, port = rig
    body = b"%x\r\n" % first + b"x" * first + b"\r\n" + b"1\r\ny\r\n" * 2000 + b"0\r\n\r\n"
    mark = len(backend.log)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\n" + HOST + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                  + body)
        responses = parse_responses(read_to_eof(s))
    assert [(r.status, r.body) for r in responses] == [(200, OK_BODY)]
    [(_conn, info, raw)] = backend.log[mark:]
    assert info["target"] == b"/upload" and raw.endswith(b"\r\n\r\n" + body)  # forwarded verbatim, whole
