"""Framing is lb's own: a request or response forwarded with a body carries the
framing lb validated, in its one canonical form (one `Content-Length: N` of
the value it parsed, or `Transfer-Encoding` with the codings in lower case,
", " between them: a request's is exactly `chunked`), never the header text
as the client or the backend sent it. A form lb accepts but another parser
might read otherwise (case, whitespace, empty list elements, an empty field
beside another, leading zeros, a framing field named in Connection) reaches
the other side only in that form. The body goes through byte for byte.

One `lb run` (http, one worker) in front of a recording backend
(tests/recording_backend.py), which keeps the raw bytes of every request and
answers `GET /resp/<case>` with that case's raw response.
"""

from __future__ import annotations

import re
import socket

import pytest

from http_client import read_to_eof
from recording_backend import OK_RESPONSE, lb_before
from tests.reference import http_ref

FRAMING = re.compile(rb"^(content-length|transfer-encoding)\s*:", re.I | re.M)
CHUNKED_BODY = b"5\r\nhello\r\n3;ext=1\r\n, w\r\n0\r\nX-Trailer: t\r\n\r\n"
PLAIN_BODY = b"hello"

# (id, the request's framing lines, its body, the framing line the backend must get)
REQUEST_FORMS = [
    ("te-chunked", b"Transfer-Encoding: chunked", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-upper-value", b"Transfer-Encoding: CHUNKED", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-mixed-value", b"Transfer-Encoding: ChUnKeD", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-lower-name", b"transfer-encoding: chunked", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-upper-name", b"TRANSFER-ENCODING: chunked", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-no-space", b"Transfer-Encoding:chunked", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-tabs-spaces", b"Transfer-Encoding: \t chunked \t", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-leading-comma", b"Transfer-Encoding: , chunked", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-trailing-comma", b"Transfer-Encoding: chunked ,", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-empty-elements", b"Transfer-Encoding: ,, chunked,,", CHUNKED_BODY, b"Transfer-Encoding: chunked"),
    ("te-empty-field-first", b"Transfer-Encoding:\r\nTransfer-Encoding: chunked", CHUNKED_BODY,
     b"Transfer-Encoding: chunked"),
    ("te-comma-field-first", b"Transfer-Encoding: ,\r\nTransfer-Encoding: chunked", CHUNKED_BODY,
     b"Transfer-Encoding: chunked"),
    ("te-named-in-connection", b"Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding", CHUNKED_BODY,
     b"Transfer-Encoding: chunked"),
    ("cl", b"Content-Length: 5", PLAIN_BODY, b"Content-Length: 5"),
    ("cl-lower-name", b"content-length: 5", PLAIN_BODY, b"Content-Length: 5"),
    ("cl-upper-no-space", b"CONTENT-LENGTH:5", PLAIN_BODY, b"Content-Length: 5"),
    ("cl-whitespace", b"Content-Length: \t 5 \t", PLAIN_BODY, b"Content-Length: 5"),
    ("cl-leading-zeros", b"Content-Length: 0005", PLAIN_BODY, b"Content-Length: 5"),
    # a hop-by-hop listing must not strip the framing: the body would become the next request
    ("cl-named-in-connection", b"Content-Length: 5\r\nConnection: content-length", PLAIN_BODY, b"Content-Length: 5"),
]

# framing lb does not accept: 400, and the backend never sees the request
REJECTED_REQUESTS = [
    ("cl-repeated-identical", b"Content-Length: 5\r\nContent-Length: 5", PLAIN_BODY),
    ("cl-list-identical", b"Content-Length: 5, 5", PLAIN_BODY),
    ("cl-and-te", b"Content-Length: 5\r\nTransfer-Encoding: chunked", CHUNKED_BODY),
]

# (id, the backend's framing lines, its body, the framing line the client must get, backend closes after)
RESPONSE_FORMS = [
    ("te-chunked", b"Transfer-Encoding: chunked", CHUNKED_BODY, b"Transfer-Encoding: chunked", False),
    ("te-upper-value", b"Transfer-Encoding: CHUNKED", CHUNKED_BODY, b"Transfer-Encoding: chunked", False),
    ("te-lower-name-spaces", b"transfer-encoding:   Chunked  ", CHUNKED_BODY, b"Transfer-Encoding: chunked", False),
    ("te-empty-elements", b"Transfer-Encoding: ,chunked,", CHUNKED_BODY, b"Transfer-Encoding: chunked", False),
    ("te-empty-field-first", b"Transfer-Encoding:\r\nTransfer-Encoding: chunked", CHUNKED_BODY,
     b"Transfer-Encoding: chunked", False),
    ("te-gzip-chunked", b"Transfer-Encoding: GZIP ,Chunked", CHUNKED_BODY, b"Transfer-Encoding: gzip, chunked", False),
    ("te-two-fields", b"Transfer-Encoding: gzip\r\nTRANSFER-ENCODING: chunked", CHUNKED_BODY,
     b"Transfer-Encoding: gzip, chunked", False),
    ("te-gzip-until-close", b"Transfer-Encoding: Gzip", b"until the backend closes",
     b"Transfer-Encoding: gzip", True),
    ("cl", b"Content-Length: 5", PLAIN_BODY, b"Content-Length: 5", False),
    ("cl-lower-no-space", b"content-length:5", PLAIN_BODY, b"Content-Length: 5", False),
    ("cl-whitespace", b"Content-Length:\t5 ", PLAIN_BODY, b"Content-Length: 5", False),
    ("cl-leading-zeros", b"Content-Length: 00005", PLAIN_BODY, b"Content-Length: 5", False),
    ("cl-named-in-connection", b"Content-Length: 5\r\nConnection: Content-Length", PLAIN_BODY,
     b"Content-Length: 5", False),
]


def respond(conn, info):
    target = info["target"]
    if target.startswith(b"/resp/"):
        name = target[len(b"/resp/"):].decode()
        for case, lines, body, _want, close in RESPONSE_FORMS:
            if case == name:
                return b"HTTP/1.1 200 OK\r\nX-Case: " + name.encode() + b"\r\n" + lines + b"\r\n\r\n" + body, close
        raise AssertionError(f"no such case {name}")
    return OK_RESPONSE, False


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    yield from lb_before(tmp_path_factory, "lb-framing", respond)


def send(port: int, head: bytes, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head + body)
        return read_to_eof(s)


def framing_lines(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n")[1:] if FRAMING.match(line)]


@pytest.mark.parametrize("name,lines,body,want", REQUEST_FORMS, ids=[c[0] for c in REQUEST_FORMS])
def test_request_framing_reaches_the_backend_in_canonical_form(rig, name, lines, body, want):
    lb, backend, port = rig
    head = b"POST /up HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n" + lines + b"\r\n\r\n"
    assert http_ref.parse_request(head + body)[0] == 0, "a form lb accepts"
    mark = len(backend.log)
    answer = send(port, head, body)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    backend.sync()
    [(_conn, info, raw)] = backend.log[mark:]
    sent_head, _, sent_body = raw.partition(b"\r\n\r\n")
    assert framing_lines(sent_head) == [want]
    assert sent_body == body                 # chunks, extensions and trailers as the client sent them
    assert (info["chunked"], info["content_length"]) == ((True, None) if b"chunked" in want else (False, 5))


@pytest.mark.parametrize("name,lines,body", REJECTED_REQUESTS, ids=[c[0] for c in REJECTED_REQUESTS])
def test_framing_lb_does_not_accept_never_reaches_the_backend(rig, name, lines, body):
    lb, backend, port = rig
    head = b"POST /up HTTP/1.1\r\nHost: example.com\r\n" + lines + b"\r\n\r\n"
    before = backend.sync()
    assert send(port, head, body).startswith(b"HTTP/1.1 400 ")
    assert backend.sync().requests == before.requests


@pytest.mark.parametrize("name,lines,body,want,close", RESPONSE_FORMS, ids=[c[0] for c in RESPONSE_FORMS])
def test_response_framing_reaches_the_client_in_canonical_form(rig, name, lines, body, want, close):
    lb, backend, port = rig
    raw = send(port, b"GET /resp/" + name.encode() + b" HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
               b"")
    head, _, got_body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nX-Case: " + name.encode() in head
    assert framing_lines(head) == [want]
    assert got_body == body
