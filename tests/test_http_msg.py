"""Response heads from backends and chunked bodies read as a stream
(lb/fastpath/http_msg.pxi): the compiled code against the reference.

Every table runs on both implementations (ids ``py``: tests/reference/http_ref.py's
``parse_response`` / ``chunk_stream``; ``c``: ``lb._fastpath``'s
``http_parse_response`` / ``http_chunk_stream``, the code the workers run), and
hypothesis compares them on generated input. The streaming framer is also held
to the whole-body parser (``http_parse_chunked``): however a body is cut into
pieces, the decision and the length are the same. No ``c`` test is skipped
when the compiled functions are missing: it fails.
"""

from __future__ import annotations

import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import http_ref

CRLF = b"\r\n"


def _missing(name):
    def fail(*args, **kwargs):
        pytest.fail(f"lb._fastpath has no {name}: the compiled HTTP engine is not built")

    return fail


def _compiled():
    import lb._fastpath as fastpath

    return types.SimpleNamespace(
        parse_response=getattr(fastpath, "http_parse_response", _missing("http_parse_response")),
        chunk_stream=getattr(fastpath, "http_chunk_stream", _missing("http_chunk_stream")),
        parse_chunked=getattr(fastpath, "http_parse_chunked", _missing("http_parse_chunked")),
    )


@pytest.fixture(params=["py", "c"])
def impl(request):
    if request.param == "py":
        return http_ref
    return _compiled()


def plain(result):
    """A parse_response result with the fields as tuples (the compiled one's are too, but
    keep the comparison independent of that)."""
    status, consumed, info = result
    if info is not None:
        info = {**info, "fields": [tuple(f) for f in info["fields"]]}
    return status, consumed, info


def resp(line: bytes = b"HTTP/1.1 200 OK", *fields: bytes, end: bytes = CRLF) -> bytes:
    return line + CRLF + b"".join(f + CRLF for f in fields) + end


def prefixes(data: bytes):
    n = len(data)
    if n <= 400:
        return range(n)
    return sorted({*range(100), *range(n - 30, n), *range(0, n, max(1, n // 20))} & set(range(n)))


# ---- response heads: valid ------------------------------------------------------------------------
#
# (id, data, max_head or None for the default, the info entries that must hold)

INFO_KEYS = {"status", "reason", "version", "keep_alive", "chunked", "content_length", "fields"}

VALID_RESPONSES = [
    ("ok-cl", resp(b"HTTP/1.1 200 OK", b"Content-Length: 5"), None,
     dict(status=200, reason=b"OK", version=11, keep_alive=True, chunked=False, content_length=5,
          fields=[(b"Content-Length", b"5")])),
    ("no-reason", resp(b"HTTP/1.1 204"), None, dict(status=204, reason=b"", content_length=None)),
    ("empty-reason", resp(b"HTTP/1.1 200 "), None, dict(reason=b"")),
    ("reason-kept-as-sent", resp(b"HTTP/1.1 200  Very\tOK \xe9 "), None, dict(reason=b" Very\tOK \xe9 ")),
    ("reason-visible", resp(b"HTTP/1.1 404 Not: Found (really) ?!"), None, dict(status=404)),
    ("http10", resp(b"HTTP/1.0 200 OK"), None, dict(version=10, keep_alive=False)),
    ("http10-keep-alive", resp(b"HTTP/1.0 200 OK", b"Connection: Keep-Alive"), None,
     dict(version=10, keep_alive=True)),
    ("http10-keep-alive-close", resp(b"HTTP/1.0 200 OK", b"Connection: keep-alive, close"), None,
     dict(keep_alive=False)),
    ("http11-close", resp(b"HTTP/1.1 200 OK", b"connection: CLOSE"), None, dict(keep_alive=False)),
    ("http11-close-second-field", resp(b"HTTP/1.1 200 OK", b"Connection: foo", b"Connection: close"), None,
     dict(keep_alive=False)),
    ("minor-9", resp(b"HTTP/1.9 200 OK"), None, dict(version=11, keep_alive=True)),
    ("status-100", resp(b"HTTP/1.1 100 Continue"), None, dict(status=100)),
    ("status-101", resp(b"HTTP/1.1 101 Switching Protocols", b"Connection: upgrade", b"Upgrade: websocket"),
     None, dict(status=101, keep_alive=True)),
    ("status-599", resp(b"HTTP/1.1 599 x"), None, dict(status=599)),
    ("chunked", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"), None,
     dict(chunked=True, content_length=None, keep_alive=True)),
    ("chunked-last-after-gzip", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, Chunked"), None,
     dict(chunked=True)),
    ("chunked-two-fields", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip", b"transfer-encoding: chunked"),
     None, dict(chunked=True)),
    ("chunked-empty-elements", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: , chunked ,"), None,
     dict(chunked=True)),
    ("te-gzip-until-close", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip"), None,
     dict(chunked=False, content_length=None, keep_alive=False)),
    ("te-chunked-parameter-is-another-coding", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked;x=1"), None,
     dict(chunked=False, keep_alive=False)),
    ("no-framing", resp(b"HTTP/1.1 200 OK"), None, dict(chunked=False, content_length=None, keep_alive=True)),
    ("cl-0", resp(b"HTTP/1.1 200 OK", b"Content-Length: 0"), None, dict(content_length=0)),
    ("cl-leading-zeros", resp(b"HTTP/1.1 200 OK", b"Content-Length: 007"), None, dict(content_length=7)),
    ("cl-18-digits", resp(b"HTTP/1.1 200 OK", b"Content-Length: " + b"9" * 18), None,
     dict(content_length=10**18 - 1)),
    ("cl-ows", resp(b"HTTP/1.1 200 OK", b"Content-Length:\t 12 "), None, dict(content_length=12)),
    ("fields-ows-trimmed", resp(b"HTTP/1.1 200 OK", b"A:  x y ", b"B:\tz\t", b"C:", b"D: \xff\x80"), None,
     dict(fields=[(b"A", b"x y"), (b"B", b"z"), (b"C", b""), (b"D", b"\xff\x80")])),
    ("fields-256", resp(b"HTTP/1.1 200 OK", *[b"X-%d: v" % i for i in range(256)]), None, dict(status=200)),
    ("head-exactly-max-head", resp(b"HTTP/1.1 200 OK", b"X: 12345"), 29, dict(status=200)),
]


@pytest.mark.parametrize("name,data,max_head,expected", VALID_RESPONSES, ids=[c[0] for c in VALID_RESPONSES])
def test_valid_response(impl, name, data, max_head, expected):
    kwargs = {} if max_head is None else {"max_head": max_head}
    status, consumed, info = plain(impl.parse_response(data, **kwargs))
    assert (status, consumed) == (0, len(data))
    assert set(info) == INFO_KEYS
    for key, value in expected.items():
        assert info[key] == value, key
    # the body (or the next response) is not the head's business
    assert plain(impl.parse_response(data + b"\x00junk\r\n", **kwargs)) == (0, len(data), info)


@pytest.mark.parametrize("name,data,max_head,expected", VALID_RESPONSES, ids=[c[0] for c in VALID_RESPONSES])
def test_valid_response_prefixes_are_incomplete(impl, name, data, max_head, expected):
    kwargs = {} if max_head is None else {"max_head": max_head}
    for k in prefixes(data):
        assert impl.parse_response(data[:k], **kwargs) == (-1, 0, None), (k, data[:k][-30:])


# ---- response heads: malformed (502) ----------------------------------------------------------------
#
# (id, data, max_head or None)

MALFORMED_RESPONSES = [
    # the status line
    ("lowercase-http", resp(b"http/1.1 200 OK"), None),
    ("http2", resp(b"HTTP/2 200"), None),
    ("http2.0", resp(b"HTTP/2.0 200 OK"), None),
    ("http0.9", resp(b"HTTP/0.9 200 OK"), None),
    ("minor-not-digit", resp(b"HTTP/1.x 200 OK"), None),
    ("comma-version", resp(b"HTTP/1,1 200 OK"), None),
    ("no-status-line", b"ok\r\n\r\n", None),
    ("icy", resp(b"ICY 200 OK"), None),
    ("leading-crlf", CRLF + resp(), None),
    ("leading-space", b" " + resp(), None),
    ("two-sp-before-code", resp(b"HTTP/1.1  200 OK"), None),
    ("tab-before-code", resp(b"HTTP/1.1\t200 OK"), None),
    ("no-sp-before-code", resp(b"HTTP/1.1200 OK"), None),
    ("code-2-digits", resp(b"HTTP/1.1 20 OK"), None),
    ("code-4-digits", resp(b"HTTP/1.1 2000 OK"), None),
    ("code-letter", resp(b"HTTP/1.1 2x0 OK"), None),
    ("code-099", resp(b"HTTP/1.1 099 Low"), None),
    ("code-000", resp(b"HTTP/1.1 000 Zero"), None),
    ("code-600", resp(b"HTTP/1.1 600 High"), None),
    ("code-999", resp(b"HTTP/1.1 999 High"), None),
    ("code-then-tab", resp(b"HTTP/1.1 200\tOK"), None),
    ("code-then-letter", resp(b"HTTP/1.1 200X"), None),
    ("reason-nul", resp(b"HTTP/1.1 200 O\x00K"), None),
    ("reason-ctl", resp(b"HTTP/1.1 200 O\x1bK"), None),
    ("reason-del", resp(b"HTTP/1.1 200 OK\x7f"), None),
    ("reason-bare-cr", resp(b"HTTP/1.1 200 O\rK"), None),
    ("status-line-bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", None),
    ("no-reason-bare-lf", b"HTTP/1.1 204\n\r\n", None),
    ("all-bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", None),
    # the fields (rule 3)
    ("space-before-colon", resp(b"HTTP/1.1 200 OK", b"Content-Length : 0"), None),
    ("tab-before-colon", resp(b"HTTP/1.1 200 OK", b"X\t: 1"), None),
    ("obs-fold", resp(b"HTTP/1.1 200 OK", b"X-A: 1", b" 2"), None),
    ("obs-fold-htab", resp(b"HTTP/1.1 200 OK", b"X-A: 1", b"\t2"), None),
    ("leading-space-field", resp(b"HTTP/1.1 200 OK", b" X: 1"), None),
    ("nul-in-value", resp(b"HTTP/1.1 200 OK", b"X: a\x00b"), None),
    ("ctl-in-value", resp(b"HTTP/1.1 200 OK", b"X: a\x01b"), None),
    ("del-in-value", resp(b"HTTP/1.1 200 OK", b"X: a\x7f"), None),
    ("bare-cr-in-value", resp(b"HTTP/1.1 200 OK", b"X: a\rb"), None),
    ("bare-lf-in-value", resp(b"HTTP/1.1 200 OK", b"X: a\nb"), None),
    ("bare-lf-field-end", b"HTTP/1.1 200 OK\r\nX: 1\n\r\n", None),
    ("bare-lf-final", b"HTTP/1.1 200 OK\r\nX: 1\r\n\n", None),
    ("bare-cr-final", b"HTTP/1.1 200 OK\r\nX: 1\r\n\rX", None),
    ("no-colon", resp(b"HTTP/1.1 200 OK", b"X-Foo bar"), None),
    ("empty-name", resp(b"HTTP/1.1 200 OK", b": bar"), None),
    ("bad-name", resp(b"HTTP/1.1 200 OK", b"X(1): bar"), None),
    ("name-obs-text", resp(b"HTTP/1.1 200 OK", b"X\xe9: bar"), None),
    ("fields-257", resp(b"HTTP/1.1 200 OK", *[b"X-%d: v" % i for i in range(257)]), None),
    # framing
    ("cl-twice-equal", resp(b"HTTP/1.1 200 OK", b"Content-Length: 2", b"Content-Length: 2"), None),
    ("cl-twice-different", resp(b"HTTP/1.1 200 OK", b"Content-Length: 2", b"content-length: 3"), None),
    ("cl-list", resp(b"HTTP/1.1 200 OK", b"Content-Length: 2, 2"), None),
    ("cl-plus", resp(b"HTTP/1.1 200 OK", b"Content-Length: +2"), None),
    ("cl-minus", resp(b"HTTP/1.1 200 OK", b"Content-Length: -2"), None),
    ("cl-hex", resp(b"HTTP/1.1 200 OK", b"Content-Length: 0x2"), None),
    ("cl-inner-space", resp(b"HTTP/1.1 200 OK", b"Content-Length: 1 2"), None),
    ("cl-empty", resp(b"HTTP/1.1 200 OK", b"Content-Length:"), None),
    ("cl-19-digits", resp(b"HTTP/1.1 200 OK", b"Content-Length: " + b"1" * 19), None),
    ("cl-with-te", resp(b"HTTP/1.1 200 OK", b"Content-Length: 2", b"Transfer-Encoding: chunked"), None),
    ("te-with-cl", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Content-Length: 2"), None),
    ("te-gzip-with-cl", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip", b"Content-Length: 2"), None),
    ("te-chunked-not-last", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked, gzip"), None),
    ("te-chunked-not-last-two-fields",
     resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"), None),
    ("te-chunked-twice", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked, chunked"), None),
    ("te-chunked-twice-two-fields",
     resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Transfer-Encoding: CHUNKED"), None),
    ("te-empty", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding:"), None),
    ("te-only-commas", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: , ,"), None),
    # the head limit
    ("head-too-large", resp(b"HTTP/1.1 200 OK", b"X: " + b"v" * 65536), None),
    ("head-too-large-incomplete", b"HTTP/1.1 200 OK\r\nX: " + b"v" * 65536, None),
    ("head-one-past-max-head", resp(b"HTTP/1.1 200 OK", b"X: 12345"), 28),
    ("status-line-past-max-head", b"HTTP/1.1 200 OK\r\n\r\n", 10),
    ("reading-limit-before-bad-byte", b"HTTP/1.1 200 OK\r\n\x00", 17),
]


def test_malformed_response_table_is_distinct():
    assert len({c[0] for c in MALFORMED_RESPONSES}) == len(MALFORMED_RESPONSES)
    assert len({(c[1], c[2]) for c in MALFORMED_RESPONSES}) == len(MALFORMED_RESPONSES)


@pytest.mark.parametrize("name,data,max_head", MALFORMED_RESPONSES, ids=[c[0] for c in MALFORMED_RESPONSES])
def test_malformed_response(impl, name, data, max_head):
    kwargs = {} if max_head is None else {"max_head": max_head}
    assert impl.parse_response(data, **kwargs) == (502, 0, None)
    for k in prefixes(data):
        assert impl.parse_response(data[:k], **kwargs) in ((-1, 0, None), (502, 0, None)), k


# (id, a head cut short, the decision already taken)
EARLY = [
    ("h", b"h", 502),
    ("http2-at-the-2", b"HTTP/2", 502),
    ("code-short-at-sp", b"HTTP/1.1 20 ", 502),
    ("code-out-of-range-at-its-last-digit", b"HTTP/1.1 600", 502),
    ("code-then-letter", b"HTTP/1.1 200X", 502),
    ("reason-nul", b"HTTP/1.1 200 O\x00", 502),
    ("bare-lf-after-reason", b"HTTP/1.1 200 OK\n", 502),
    ("obs-fold-at-its-sp", b"HTTP/1.1 200 OK\r\nX: 1\r\n ", 502),
    ("code-complete", b"HTTP/1.1 200", -1),
    ("cr-pending", b"HTTP/1.1 200 OK\r", -1),
    # framing waits for the end of the head
    ("two-cl-wait", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n", -1),
    ("te-cl-wait", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r", -1),
]


@pytest.mark.parametrize("name,data,status", EARLY, ids=[c[0] for c in EARLY])
def test_response_decided_at_the_offending_byte(impl, name, data, status):
    assert impl.parse_response(data) == (status, 0, None)


def test_response_head_limit_to_the_byte(impl):
    data = resp(b"HTTP/1.1 200 OK", b"X: 12345")
    assert impl.parse_response(data, max_head=len(data))[:2] == (0, len(data))
    assert impl.parse_response(data, max_head=len(data) - 1) == (502, 0, None)
    assert impl.parse_response(data[:-1], max_head=len(data) - 1) == (-1, 0, None)
    assert impl.parse_response(b"HTTP/1.1", max_head=8) == (-1, 0, None)
    assert impl.parse_response(b"HTTP/1.1 ", max_head=8) == (502, 0, None)
    assert impl.parse_response(b"", max_head=0) == (-1, 0, None)
    assert impl.parse_response(b"H", max_head=0) == (502, 0, None)


def test_default_max_head_is_the_engines_buffer(impl):
    """Without max_head the limit is 65536 bytes, the engine's response buffer."""
    pad = b"X: " + b"v" * (65536 - len(resp(b"HTTP/1.1 200 OK", b"X: ")))
    data = resp(b"HTTP/1.1 200 OK", pad)
    assert len(data) == 65536
    assert impl.parse_response(data)[:2] == (0, 65536)
    assert impl.parse_response(resp(b"HTTP/1.1 200 OK", pad + b"v")) == (502, 0, None)


# ---- chunked bodies as a stream --------------------------------------------------------------------

STREAM_BODIES = [
    # (id, body, max_head or None)
    ("last-only", b"0\r\n\r\n", None),
    ("one", b"5\r\nhello\r\n0\r\n\r\n", None),
    ("several", b"3\r\nabc\r\n1\r\nd\r\n6\r\nefghij\r\n0\r\n\r\n", None),
    ("data-with-crlf", b"4\r\n\r\n\r\n\r\n0\r\n\r\n", None),
    ("extensions", b'1;a=b; c="d\\"e" ;f\r\nx\r\n0;last\r\n\r\n', None),
    ("trailers", b"2\r\nab\r\n0\r\nX-Sum: 1\r\nY:\r\n\r\n", None),
    ("big-chunk", b"%x\r\n" % 70000 + b"z" * 70000 + b"\r\n0\r\n\r\n", None),
    ("then-next-message", b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n\x00", None),
    ("bad-size", b"1\r\na\r\ng\r\nb\r\n0\r\n\r\n", None),
    ("size-17-digits", b"0" * 16 + b"1\r\na\r\n0\r\n\r\n", None),
    ("data-too-long", b"1\r\nab\r\n0\r\n\r\n", None),
    ("data-then-lf", b"1\r\na\n0\r\n\r\n", None),
    ("ext-trailing-space", b"1;a \r\na\r\n0\r\n\r\n", None),
    ("size-bare-lf", b"1\na\r\n0\r\n\r\n", None),
    ("trailer-host", b"0\r\nHost: a\r\n\r\n", None),
    ("trailer-obs-fold", b"0\r\nX: 1\r\n 2\r\n\r\n", None),
    ("trailer-too-large", b"0\r\nX: " + b"y" * 30 + b"\r\n\r\n", 20),
    ("trailers-257", b"0\r\n" + b"t: 1\r\n" * 257 + b"\r\n", None),
    ("chunk-line-4096", b"1;" + b"a" * 4094 + b"\r\nx\r\n0\r\n\r\n", None),
    ("chunk-line-4097", b"1;" + b"a" * 4095 + b"\r\nx\r\n0\r\n\r\n", None),
    ("incomplete-data", b"5\r\nhel", None),
    ("incomplete-trailers", b"0\r\nX: 1\r\n", None),
]


def whole(c, body: bytes, max_head: int) -> tuple[int, int]:
    """The whole-body parser's decision, as a stream would report it."""
    status, consumed = c.parse_chunked(body, max_head=max_head)[:2]
    return status, consumed


def splits(body: bytes):
    """Ways to cut body into pieces: every two-piece cut, single bytes, and a few
    pieces with empty ones among them."""
    yield [body]
    for k in range(len(body) + 1) if len(body) <= 300 else range(0, len(body) + 1, 97):
        yield [body[:k], body[k:]]
    if len(body) <= 5000:
        yield [body[i:i + 1] for i in range(len(body))]
    third = len(body) // 3
    yield [b"", body[:third], b"", body[third:2 * third], body[2 * third:], b""]


@pytest.mark.parametrize("name,body,max_head", STREAM_BODIES, ids=[c[0] for c in STREAM_BODIES])
def test_chunk_stream_is_the_whole_body_decision(impl, name, body, max_head):
    max_head = 16384 if max_head is None else max_head
    expected = whole(_compiled(), body, max_head)
    assert expected == http_ref.parse_chunked(body, max_head=max_head)[:2]
    for pieces in splits(body):
        assert impl.chunk_stream(pieces, max_head=max_head) == expected, [len(p) for p in pieces]


def test_chunk_stream_cases_cover_every_outcome():
    outcomes = {whole(_compiled(), body, max_head or 16384)[0] for _, body, max_head in STREAM_BODIES}
    assert outcomes == {0, -1, 400}


def test_chunk_stream_stops_at_the_end_of_the_body(impl):
    body = b"3\r\nabc\r\n0\r\n\r\n"
    assert impl.chunk_stream([body, b"HTTP/1.1 200 OK\r\n"]) == (0, len(body))
    assert impl.chunk_stream([body + b"\x00\x00", b"garbage"]) == (0, len(body))
    assert impl.chunk_stream([]) == (-1, 0)
    assert impl.chunk_stream([b"", b""]) == (-1, 0)


def test_chunk_stream_line_limit_across_pieces(impl):
    """A chunk line sent a byte at a time still ends within 4096 bytes."""
    line = b"1;" + b"a" * 4095
    assert impl.chunk_stream([line[i:i + 1] for i in range(len(line))] + [b"\r\nx\r\n0\r\n\r\n"]) == (400, 0)
    assert impl.chunk_stream([line[:-1][i:i + 100] for i in range(0, len(line) - 1, 100)]) == (-1, 0)


# ---- generated input ------------------------------------------------------------------------------------

INTERESTING_BYTES = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x22, 0x2C, 0x3A, 0x3B, 0x3D, 0x5C, 0x7F, 0x80, 0xFF]
NOISY_ALPHABET = "".join(map(chr, INTERESTING_BYTES + list(range(0x21, 0x7F))))
ANY_BYTE = "".join(map(chr, range(256)))
TCHAR_ALPHABET = "".join(chr(b) for b in range(256) if http_ref.is_tchar(b))


def noisy_bytes(max_size: int = 10):
    return st.one_of(st.text(NOISY_ALPHABET, max_size=max_size),
                     st.text(ANY_BYTE, max_size=max_size)).map(lambda t: t.encode("latin-1"))


def tchar_text(min_size: int = 1, max_size: int = 8):
    return st.text(TCHAR_ALPHABET, min_size=min_size, max_size=max_size).map(lambda t: t.encode("ascii"))


def mostly(percent: int, common, rare):
    """``common`` about ``percent`` % of the time, else ``rare`` (strategies or lists)."""
    common = st.sampled_from(common) if isinstance(common, list) else common
    rare = st.sampled_from(rare) if isinstance(rare, list) else rare
    return st.one_of([common] * max(1, round(percent / (100 - percent))) + [rare])


DIGIT = st.sampled_from(b"0123456789").map(lambda d: bytes([d]))
BUILT_STATUS_LINES = st.tuples(
    st.just(b"HTTP/1."), DIGIT, st.just(b" "), DIGIT, DIGIT, DIGIT,
    st.one_of(st.just(b""), st.tuples(st.just(b" "), noisy_bytes(8)).map(b"".join)),
).map(b"".join)
STATUS_LINES = mostly(
    85,
    st.one_of(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 404 Not Found", b"HTTP/1.1 204", b"HTTP/1.1 100 Continue",
                               b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 304 ", b"HTTP/1.9 599 x"]),
              BUILT_STATUS_LINES),
    st.one_of(st.sampled_from([b"HTTP/2.0 200 OK", b"http/1.1 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK",
                               b"HTTP/1.1 099 x", b"HTTP/1.1 600 x", b"HTTP/1.1 200X", b"HTTP/1.1  200 OK",
                               b"HTTP/1.1 200\tOK", b"HTTP/1.x 200 OK", b"", b"HTTP/1.1 200 O\x00K", b"ICY 200 OK"]),
              noisy_bytes(16)),
)
LINE_ENDS = mostly(95, [b"\r\n"], [b"\n", b"\r", b"\r\r\n", b" \r\n", b"\n\r", b""])
OWS = mostly(70, [b""], [b" ", b"\t", b" \t "])
COLONS = mostly(93, [b": ", b":"], [b":\t", b" :", b"", b"\t:", b"::"])

RESPONSE_FIELD_KINDS = [
    (b"Content-Length", [b"0", b"5", b"007"], [b"+5", b"5, 5", b"0x5", b"1" * 18, b"1" * 19, b"", b"5 5", b"-1"]),
    (b"Transfer-Encoding", [b"chunked", b"Chunked", b"gzip, chunked"],
     [b"gzip", b"chunked, gzip", b"chunked, chunked", b"chunked;q=1", b", ,", b"", b",chunked,", b"identity"]),
    (b"Connection", [b"close", b"keep-alive", b"Upgrade", b"Keep-Alive, close"], [b"CLOSE", b"foo,,bar", b""]),
    (b"Server", [b"test/1.0"], [b""]),
    (b"Set-Cookie", [b"a=b; Path=/"], [b"a=\xff"]),
    (b"X-Foo", [b"bar", b"a b", b""], [b"caf\xc3\xa9", b"a\x00b", b"a\rb", b"a\nb", b"\x7f", b"a\tb"]),
]


def _response_field(name: bytes, usual: list[bytes], unusual: list[bytes]):
    names = mostly(85, st.just(name), [name.lower(), name.upper()])
    values = mostly(80, usual, st.one_of(st.sampled_from(unusual), tchar_text(0, 8), noisy_bytes(10)))
    return st.tuples(names, values)


NAME_VALUE = mostly(90, st.one_of([_response_field(*kind) for kind in RESPONSE_FIELD_KINDS]),
                    st.tuples(st.one_of(tchar_text(1, 6), noisy_bytes(4)), st.one_of(tchar_text(0, 8), noisy_bytes(8))))


@st.composite
def response_field_lines(draw):
    if draw(st.integers(0, 99)) < 5:
        return draw(OWS) + draw(st.one_of(tchar_text(0, 8), noisy_bytes(10))) + draw(LINE_ENDS)
    name, value = draw(NAME_VALUE)
    return name + draw(COLONS) + draw(OWS) + value + draw(OWS) + draw(LINE_ENDS)


@st.composite
def responses(draw):
    """(data, max_head, split): a response head mixing valid and invalid pieces,
    sometimes with about 256 fields, some bytes after it, a limit and a split."""
    fields = draw(st.lists(response_field_lines(), max_size=6))
    if draw(st.integers(0, 99)) < 3:
        fields.insert(draw(st.integers(0, len(fields))), b"X-Many: 1\r\n" * draw(st.integers(250, 258)))
    data = draw(STATUS_LINES) + draw(LINE_ENDS) + b"".join(fields) + draw(LINE_ENDS) + draw(noisy_bytes(6))
    max_head = draw(mostly(75, st.just(65536), st.integers(0, 160)))
    return data, max_head, draw(st.integers(0, len(data)))


CHUNK_EXTENSIONS = mostly(
    60, [b""],
    st.one_of(st.sampled_from([b";a", b";a=b", b"; a = b", b';a="x y\\""', b";a;b=c", b";", b";=", b" ;a", b";a ",
                               b";a=", b";a=b c", b';a="', b';a="\x01"', b";\xe9", b"\t", b"\t;a"]),
              st.tuples(st.just(b";"), OWS, tchar_text(0, 4), st.sampled_from([b"", b"=", b" = "]),
                        tchar_text(0, 4) | noisy_bytes(4)).map(b"".join)),
)
TRAILER_KINDS = [(b"X-Sum", [b"abc", b""], [b"\x00", b"a\rb"]), (b"Host", [b"a"], []),
                 (b"Content-Length", [b"1"], []), (b"Transfer-Encoding", [b"chunked"], [])]


@st.composite
def chunked_bodies(draw):
    """(body, max_head): chunks with sizes right or wrong, extensions, data
    endings, a last chunk and trailers, valid and invalid pieces mixed."""
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.one_of(st.binary(max_size=20), noisy_bytes(20)))
        size = len(data) + draw(mostly(90, st.just(0), st.sampled_from([1, -1])))
        digits = b"%x" % max(size, 0)
        digits = draw(mostly(90, [digits, digits.upper(), b"0" * draw(st.integers(0, 16)) + digits],
                             [b"", b"-" + digits, b"g", b"0x" + digits, b" " + digits]))
        out += digits + draw(CHUNK_EXTENSIONS) + draw(LINE_ENDS) + data + draw(LINE_ENDS)
    out += draw(mostly(90, [b"0", b"000"], [b"0" * 17, b"", b"0 "])) + draw(CHUNK_EXTENSIONS) + draw(LINE_ENDS)
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 99)) < 70:
            name, usual, unusual = draw(st.sampled_from(TRAILER_KINDS))
            out += name + draw(COLONS) + draw(OWS) + draw(st.sampled_from(usual + unusual)) + draw(LINE_ENDS)
        else:
            out += draw(response_field_lines())
    if draw(st.integers(0, 99)) < 3:
        out += b"t: 1\r\n" * draw(st.integers(250, 258))
    out += draw(LINE_ENDS) + draw(noisy_bytes(4))
    return out, draw(mostly(70, st.just(16384), st.integers(0, 60)))


@st.composite
def cut(draw, data: bytes):
    """data in pieces: sorted cut points (repeats make empty pieces), or single bytes."""
    if draw(st.integers(0, 99)) < 10:
        return [data[i:i + 1] for i in range(len(data))]
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# Sized so that the whole file runs in a few seconds.
DIFFERENTIAL = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def test_differential_responses():
    c = _compiled()

    @DIFFERENTIAL
    @given(responses())
    def check(case):
        data, max_head, split = case
        for piece in (data, data[:split]):
            assert plain(c.parse_response(piece, max_head=max_head)) == http_ref.parse_response(piece, max_head), \
                (piece, max_head)

    check()


@PROPERTY
@given(case=responses())
def test_generated_response_prefix_is_incomplete_or_the_same(impl, case):
    """Every decision is taken at one byte: a prefix is -1 or the whole's result."""
    data, max_head, split = case
    full = plain(impl.parse_response(data, max_head=max_head))
    part = plain(impl.parse_response(data[:split], max_head=max_head))
    assert part in ((-1, 0, None), full)


def test_differential_chunk_stream():
    """The compiled stream, under any cut, against the compiled whole-body parser
    and the reference."""
    c = _compiled()

    @DIFFERENTIAL
    @given(chunked_bodies(), st.data())
    def check(case, data):
        body, max_head = case
        expected = whole(c, body, max_head)
        assert expected == http_ref.chunk_stream([body], max_head), (body, max_head)
        pieces = data.draw(cut(body))
        assert c.chunk_stream(pieces, max_head=max_head) == expected, ([len(p) for p in pieces], body, max_head)

    check()
