"""Heads, chunk-size lines and trailer sections that arrive in pieces.

A worker parses what it has read so far after every read. The parsers resume
where the last call stopped (the first incomplete line, with the complete
fields before it counted; a chunk line's state machine where it was), so a
head, chunk line or trailer section read a byte at a time costs work in
proportion to its size, not to its size squared; and the answer is the one
the whole bytes get at once: the same fields, the same error, at the same
byte, the same size limit. The work is counted, not timed: the compiled
module counts the bytes its parsers are handed (`http_scan_work`), and the
streaming wrappers (`http_request_stream`, `http_response_stream`,
`http_chunk_stream`) feed pieces exactly as a worker's reads do.
"""

from __future__ import annotations

import random
import socket

import pytest

import lb._fastpath as fp
from http_client import read_to_eof
from recording_backend import lb_before
from test_http_msg import EARLY as EARLY_RESPONSES
from test_http_msg import MALFORMED_RESPONSES, VALID_RESPONSES
from test_http_parser import CHUNKED_MALFORMED, CHUNKED_VALID, EARLY, MALFORMED, VALID

# Linear: the bytes of the message, looked through for line ends once, parsed
# again while a line doubles, and once more from the start when it is whole.
# Re-parsing from the start on every byte would be about n*n/2.
WORK_PER_BYTE = 8


def pieces(data: bytes, how: str):
    if how == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    if how == "sevens":
        return [data[i:i + 7] for i in range(0, len(data), 7)]
    rnd = random.Random(len(data))           # "random": uneven pieces, the same each run
    out, i = [], 0
    while i < len(data):
        k = rnd.choice((1, 1, 2, 3, 5, 64, 700))
        out.append(data[i:i + k])
        i += k
    return out


HOW = ["bytes", "sevens", "random"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name,data,limits,expected", VALID, ids=[c[0] for c in VALID])
def test_valid_request_in_pieces_parses_as_a_whole(name, data, limits, expected, how):
    assert fp.http_request_stream(pieces(data, how), **limits) == fp.http_parse_request(data, **limits)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name,data,limits,status", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_request_in_pieces_gets_the_same_error(name, data, limits, status, how):
    assert fp.http_request_stream(pieces(data, how), **limits) == (status, 0, None)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name,data,max_head,expected", VALID_RESPONSES, ids=[c[0] for c in VALID_RESPONSES])
def test_valid_response_in_pieces_parses_as_a_whole(name, data, max_head, expected, how):
    kwargs = {} if max_head is None else {"max_head": max_head}
    whole = fp.http_parse_response(data, **kwargs)
    assert whole[0] == 0
    assert fp.http_response_stream(pieces(data, how), **kwargs) == (0, whole[1])


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name,data,max_head", MALFORMED_RESPONSES, ids=[c[0] for c in MALFORMED_RESPONSES])
def test_malformed_response_in_pieces_is_refused(name, data, max_head, how):
    kwargs = {} if max_head is None else {"max_head": max_head}
    assert fp.http_response_stream(pieces(data, how), **kwargs) == (502, 0)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name,data,body,trailers", CHUNKED_VALID, ids=[c[0] for c in CHUNKED_VALID])
def test_chunked_body_in_pieces_ends_where_the_whole_does(name, data, body, trailers, how):
    assert fp.http_chunk_stream(pieces(data, how)) == (0, len(data))


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name,data,limits", CHUNKED_MALFORMED, ids=[c[0] for c in CHUNKED_MALFORMED])
def test_malformed_chunked_body_in_pieces_is_refused(name, data, limits, how):
    assert fp.http_chunk_stream(pieces(data, how), **limits) == (400, 0)


@pytest.mark.parametrize("name,data,status", EARLY, ids=[c[0] for c in EARLY])
def test_request_cut_short_is_decided_at_the_offending_byte_in_pieces(name, data, status):
    """An error in a line still incomplete is not left for the line's end."""
    assert fp.http_parse_request(data)[0] == status
    for how in HOW:
        assert fp.http_request_stream(pieces(data, how)) == (status, 0, None), how


LONG = b"a" * 300
LONG_EARLY = [
    ("target-nul-past-64", b"GET /" + LONG + b"\x00", 400),
    ("target-high-byte-past-64", b"GET /" + LONG + b"\x80", 400),
    ("version-2-after-long-target", b"GET /" + LONG + b" HTTP/2.0\r\n", 505),
    ("version-letter-after-long-target", b"GET /" + LONG + b" HTTX", 400),
    ("target-over-max-target", b"GET /" + b"a" * 64, 414),
    ("value-ctl-in-long-value", b"GET / HTTP/1.1\r\nX: " + LONG + b"\x01", 400),
    ("value-bare-cr-in-long-value", b"GET / HTTP/1.1\r\nX: " + LONG + b"\rY", 400),
    ("name-space-in-long-name", b"GET / HTTP/1.1\r\nX" + LONG + b" ", 400),
    ("obs-fold-after-long-field", b"GET / HTTP/1.1\r\nX: " + LONG + b"\r\n ", 400),
    ("field-over-max-fields", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + LONG + b"\r\nY", 431),
]


@pytest.mark.parametrize("name,data,status", LONG_EARLY, ids=[c[0] for c in LONG_EARLY])
def test_long_line_cut_short_is_decided_at_the_offending_byte_in_pieces(name, data, status):
    limits = {"max_target": 60} if name == "target-over-max-target" else \
        {"max_fields": 2} if name == "field-over-max-fields" else {}
    assert fp.http_parse_request(data, **limits) == (status, 0, None)
    for how in HOW:
        assert fp.http_request_stream(pieces(data, how), **limits) == (status, 0, None), how


LONG_EARLY_BODIES = [
    ("ext-bad-after-long-name", b"5;" + LONG + b"@"),
    ("ext-ws-before-cr-after-long-value", b"5;a=" + LONG + b" \r"),
    ("ext-ctl-in-long-quoted", b'5;a="' + LONG + b"\x01"),
    ("trailer-ctl-in-long-value", b"0\r\nT: " + LONG + b"\x00"),
    ("trailer-bare-cr-in-long-value", b"0\r\nT: " + LONG + b"\rX"),
]


@pytest.mark.parametrize("name,data", LONG_EARLY_BODIES, ids=[c[0] for c in LONG_EARLY_BODIES])
def test_long_chunk_line_or_trailer_cut_short_is_decided_at_the_offending_byte(name, data):
    assert fp.http_parse_chunked(data)[0] == 400
    for how in HOW:
        assert fp.http_chunk_stream(pieces(data, how)) == (400, 0), how


@pytest.mark.parametrize("name,data,status", EARLY_RESPONSES, ids=[c[0] for c in EARLY_RESPONSES])
def test_response_cut_short_is_decided_at_the_offending_byte_in_pieces(name, data, status):
    for how in HOW:
        assert fp.http_response_stream(pieces(data, how)) == (status, 0), how


@pytest.mark.parametrize("name,data,limits", CHUNKED_MALFORMED, ids=[c[0] for c in CHUNKED_MALFORMED])
def test_chunked_prefix_in_pieces_decides_as_the_whole_prefix(name, data, limits):
    """Every prefix of a malformed body: incomplete or already 400, as the
    whole-body parser says of that prefix, however it is cut."""
    for k in range(1, len(data) + 1, max(1, len(data) // 200)):
        whole = fp.http_parse_chunked(data[:k], **limits)
        want = (whole[0], whole[1]) if whole[0] != -1 else (-1, 0)
        assert fp.http_chunk_stream(pieces(data[:k], "bytes"), **limits) == want, k


# ---- the work is linear ---------------------------------------------------------------------

def many_fields(n: int, prefix: bytes = b"X-F") -> bytes:
    return b"".join(prefix + b"%d: %s\r\n" % (i, b"v" * 40) for i in range(n))


REQUEST_16K = b"GET /a HTTP/1.1\r\nHost: example.com\r\n" + many_fields(250) + b"\r\n"
ONE_LONG_FIELD = b"GET /a HTTP/1.1\r\nHost: example.com\r\nX-Long: " + b"v" * 16000 + b"\r\n\r\n"
RESPONSE_16K = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + many_fields(250) + b"\r\n"
TRAILERS_16K = b"5\r\nhello\r\n0\r\n" + many_fields(250, b"T") + b"\r\n"
LONG_CHUNK_LINE = b"5;" + b";".join(b"e%d=v" % i for i in range(550)) + b"\r\nhello\r\n0\r\n\r\n"


def work_of(feed) -> int:
    fp.http_scan_work()
    feed()
    return fp.http_scan_work()


def test_request_head_a_byte_at_a_time_costs_linear_work():
    assert len(REQUEST_16K) > 12000
    limits = dict(max_head=32768, max_fields=256)
    got = None

    def feed():
        nonlocal got
        got = fp.http_request_stream(pieces(REQUEST_16K, "bytes"), **limits)

    work = work_of(feed)
    assert got == fp.http_parse_request(REQUEST_16K, **limits) and got[0] == 0
    assert len(got[2]["fields"]) == 251
    assert work <= WORK_PER_BYTE * len(REQUEST_16K), work


def test_one_long_field_a_byte_at_a_time_costs_linear_work():
    got = None

    def feed():
        nonlocal got
        got = fp.http_request_stream(pieces(ONE_LONG_FIELD, "bytes"), max_head=32768)

    work = work_of(feed)
    assert got[0] == 0 and got[2]["fields"][1] == (b"X-Long", b"v" * 16000)
    assert work <= WORK_PER_BYTE * len(ONE_LONG_FIELD), work


def test_response_head_a_byte_at_a_time_costs_linear_work():
    got = None

    def feed():
        nonlocal got
        got = fp.http_response_stream(pieces(RESPONSE_16K, "bytes"))

    work = work_of(feed)
    assert got == (0, len(RESPONSE_16K))
    assert work <= WORK_PER_BYTE * len(RESPONSE_16K), work


def test_trailers_a_byte_at_a_time_cost_linear_work():
    got = None

    def feed():
        nonlocal got
        got = fp.http_chunk_stream(pieces(TRAILERS_16K, "bytes"), max_head=32768)

    work = work_of(feed)
    assert got == (0, len(TRAILERS_16K))
    assert fp.http_parse_chunked(TRAILERS_16K, max_head=32768)[3][-1] == (b"T249", b"v" * 40)
    assert work <= WORK_PER_BYTE * len(TRAILERS_16K), work


def test_chunk_line_a_byte_at_a_time_costs_linear_work():
    assert 3000 < len(LONG_CHUNK_LINE.split(b"\r\n")[0]) <= 4096
    got = None

    def feed():
        nonlocal got
        got = fp.http_chunk_stream(pieces(LONG_CHUNK_LINE, "bytes"))

    work = work_of(feed)
    assert got == (0, len(LONG_CHUNK_LINE))
    assert work <= WORK_PER_BYTE * len(LONG_CHUNK_LINE), work


# ---- the limits hold a byte at a time -------------------------------------------------------

def test_oversized_head_a_byte_at_a_time_is_431():
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"v" * 17000 + b"\r\n\r\n"
    assert fp.http_parse_request(data) == (431, 0, None)
    assert fp.http_request_stream(pieces(data, "bytes")) == (431, 0, None)
    # decided once the head passes max_head, not at its end: the rest is never offered
    assert fp.http_request_stream(pieces(data[:16385], "bytes")) == (431, 0, None)


def test_too_many_fields_a_byte_at_a_time_is_431():
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + many_fields(100) + b"\r\n"
    assert fp.http_request_stream(pieces(data, "bytes")) == (431, 0, None)


def test_oversized_response_head_a_byte_at_a_time_is_502():
    data = b"HTTP/1.1 200 OK\r\n" + many_fields(200) + b"\r\n"
    assert fp.http_response_stream(pieces(data, "bytes"), max_head=4096) == (502, 0)


def test_oversized_trailers_a_byte_at_a_time_are_400():
    data = b"0\r\n" + many_fields(100, b"T") + b"\r\n"
    assert fp.http_chunk_stream(pieces(data, "bytes"), max_head=4096) == (400, 0)
    assert fp.http_chunk_stream(pieces(data, "bytes"), max_head=8192) == (0, len(data))


def test_oversized_chunk_line_a_byte_at_a_time_is_400():
    data = b"5;x=" + b"a" * 4100 + b"\r\nhello\r\n0\r\n\r\n"
    assert fp.http_chunk_stream(pieces(data, "bytes")) == (400, 0)


def test_bad_byte_in_a_complete_line_is_refused_at_that_line():
    """A line that ends is judged when it ends, even deep in a slow head."""
    good = b"GET / HTTP/1.1\r\nHost: a\r\n" + many_fields(50)
    bad = good + b"X-Bad: a\x01b\r\n"
    assert fp.http_request_stream(pieces(good, "bytes"), max_head=65536) == (-1, 0, None)
    assert fp.http_request_stream(pieces(bad, "bytes"), max_head=65536) == (400, 0, None)


# ---- through lb: a slow client's head and trailers reach the backend intact ----------------

@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    yield from lb_before(tmp_path_factory, "lb-resume")


def dribble(port: int, data: bytes, size: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(0, len(data), size):
                s.sendall(data[i:i + size])
        except (BrokenPipeError, ConnectionResetError):
            pass                                        # lb answered before the end (431)
        return read_to_eof(s)


def test_head_and_trailers_sent_in_small_pieces_reach_the_backend_intact(rig):
    lb, backend, port = rig
    fields = many_fields(60)
    head = (b"POST /slow HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
            + fields + b"\r\n")
    body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n" + many_fields(60, b"T") + b"\r\n"
    mark = len(backend.log)
    answer = dribble(port, head + body, 3)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    backend.sync()
    [(_conn, info, raw)] = backend.log[mark:]
    sent_head, _, sent_body = raw.partition(b"\r\n\r\n")
    assert info["target"] == b"/slow"
    assert fields.rstrip(b"\r\n") in sent_head          # every field, in order, as sent
    assert sent_body == body                            # chunk lines, data and trailers intact


def test_oversized_head_sent_in_small_pieces_is_431_and_never_forwarded(rig):
    lb, backend, port = rig
    before = backend.sync()
    data = b"GET / HTTP/1.1\r\nHost: example.com\r\n" + many_fields(400)
    answer = dribble(port, data, 64)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert backend.sync().requests == before.requests
