"""What each fuzzer checks, one function per target: bytes in, an exception
out when something is wrong. A crash of the compiled code is AddressSanitizer's
to report; a disagreement with the pure-Python reference of the same rules
(tests/reference), or a promise of docs/http-parser.md broken, raises
AssertionError. Importable without atheris: tests/test_fuzz_cases.py runs
every seed and every saved crash through these functions in the normal suite.
"""

from __future__ import annotations

import json
import struct

import lb._fastpath as fastpath
from tests.reference import http_ref, jwt_ref, proxy_ref, range_ref


def _fields_as_tuples(result):
    status, consumed, info = result
    if info is not None:
        info = {**info, "fields": [tuple(f) for f in info["fields"]]}
    return status, consumed, info


def _pieces(data: bytes, seed: int) -> list[bytes]:
    step = ((seed >> 1) & 7) + 1     # 1 to 8 bytes: a worker's reads at their smallest
    return [data[i:i + step] for i in range(0, len(data), step)]


def _streamed_as_whole(stream, data: bytes, seed: int, whole) -> None:
    """Fed in pieces (as a worker reads), a parser that resumes decides as on
    the whole input, at the same byte (docs/http-parser.md)."""
    got = stream(_pieces(data, seed))
    assert got == whole, (got, whole)


def http_request(data: bytes) -> None:
    """The compiled request parser decides as the reference does, with the
    default limits and with small ones (data[0] picks; the rest is the input),
    whole and in pieces."""
    if not data:
        return
    seed = data[0]
    limits = {} if seed & 1 else {"max_target": 64, "max_head": 256, "max_fields": 4}
    data = data[1:]
    got = _fields_as_tuples(fastpath.http_parse_request(data, **limits))
    want = _fields_as_tuples(http_ref.parse_request(data, **limits))
    assert got == want, (got, want)
    _streamed_as_whole(lambda p: _fields_as_tuples(fastpath.http_request_stream(p, **limits)), data, seed,
                       got)


def http_response(data: bytes) -> None:
    if not data:
        return
    seed = data[0]
    max_head = 65536 if seed & 1 else 128
    data = data[1:]
    got = _fields_as_tuples(fastpath.http_parse_response(data, max_head=max_head))
    want = _fields_as_tuples(http_ref.parse_response(data, max_head=max_head))
    assert got == want, (got, want)
    _streamed_as_whole(lambda p: fastpath.http_response_stream(p, max_head=max_head), data, seed,
                       got[:2])


def chunked(data: bytes) -> None:
    """The whole-body decoder agrees with the reference, and the streaming
    framer the proxy runs decides the same however the body is cut (data[0]
    seeds where the cuts fall)."""
    if not data:
        return
    seed, data = data[0], data[1:]
    max_head = 16384 if seed & 1 else 64
    got = fastpath.http_parse_chunked(data, max_head=max_head)
    want = http_ref.parse_chunked(data, max_head=max_head)
    assert tuple(got[:3]) == tuple(want[:3]), (got[:3], want[:3])
    assert [tuple(f) for f in got[3]] == [tuple(f) for f in want[3]]
    # pieces of 1 to 8 bytes: a chunk line or trailer section in pieces costs
    # work linear in its length (docs/http-parser.md)
    whole = (got[0], got[1]) if got[0] != -1 else (-1, 0)
    _streamed_as_whole(lambda p: fastpath.http_chunk_stream(p, max_head=max_head), data, seed, whole)


def proxy(data: bytes) -> None:
    got = fastpath.proxy_parse_header(data)
    assert got == proxy_ref.parse(data), (got, proxy_ref.parse(data))


def config(data: bytes) -> None:
    """Any text is a config or a ConfigError naming the key; nothing else
    (a TypeError, a KeyError) may escape the loader."""
    from lb import config as config_mod

    text = data.decode("utf-8", "replace")
    try:
        config_mod.loads(text, source="fuzz.toml")
    except config_mod.ConfigError:
        pass


def _tls_plan(data: bytes) -> tuple[bytes, bool]:
    """The application data tlsr_feed's client seals, in order, and whether
    every record is sealed (no raw bytes on the wire); as tlsr_feed reads data."""
    p, n, out, sealed_only = 1, len(data), bytearray(), True
    tls13 = bool(data[0] & 1)
    while p < n:
        ctype = data[p]
        ln = struct.unpack(">H", data[p + 1:p + 3])[0] if p + 2 < n else 0
        p = min(p + 3, n)
        ln = min(ln, n - p, 16384)
        payload = data[p:p + ln]
        if ctype == 0xFF:
            sealed_only = False
        elif tls13:
            # the inner plaintext is content, type, zeros: a type of 0 is
            # padding, and the last byte that is not 0 is the type
            inner = (payload + bytes([ctype])).rstrip(b"\0")
            if inner[-1:] == b"\x17":
                out += inner[:-1]
        elif ctype == 23:
            out += payload
        p += ln
    return bytes(out), sealed_only


def tls_record(data: bytes) -> None:
    """The record layer gives out application data only as sealed: what it
    reads is a prefix of what the client sealed as application data (all of
    it, when nothing else was on the wire and the stream ended cleanly)."""
    if not data:
        return
    got, ended, bad = fastpath.tlsr_feed(data)
    assert ended in ("eof", "error"), ended
    sent, sealed_only = _tls_plan(data)
    if sealed_only:
        assert sent.startswith(got), (got[:64], sent[:64])
    assert bad in (0, 1), bad


def jwt(data: bytes) -> None:
    """JWT's strict parsers agree with their references (data[0] bit 0: the
    JSON checker, else the base64url decoder); in an object both accept, the
    lookup of each top-level member gives that member's value."""
    if not data:
        return
    json_mode, data = data[0] & 1, data[1:]
    if not json_mode:
        got = fastpath.jwt_b64url_decode(data)
        assert got == jwt_ref.b64url_decode(data), (got, data)
        return
    want = jwt_ref.json_object(data)
    assert fastpath.jwt_json_check(data) == (want is not None), data
    if want is None:
        return
    for name in list(want)[:8]:
        raw = fastpath.jwt_json_member(data, name.encode())
        assert raw is not None and json.loads(raw) == want[name], (name, raw)
    assert fastpath.jwt_json_member(data, b"\x00not a member") is None


RANGE_LENGTHS = (0, 1, 10, 4096, 100000, 300000, 1 << 32, (1 << 60) - 1)


def cache_range(data: bytes) -> None:
    """A cache hit reads a Range as the reference does (data[0] picks the
    stored body's length), and what it answers stays inside the body."""
    if not data:
        return
    length = RANGE_LENGTHS[data[0] % len(RANGE_LENGTHS)]
    value = data[1:]
    got = fastpath.cache_range_parse(value, length)
    want = range_ref.parse(value, length)
    assert (got[0], list(got[1])) == want, (got, want)
    assert sum(b - a + 1 for a, b in got[1]) <= length and all(0 <= a <= b < length for a, b in got[1])


TARGETS = {
    "http_request": http_request,
    "http_response": http_response,
    "chunked": chunked,
    "proxy": proxy,
    "config": config,
    "tls_record": tls_record,
    "jwt": jwt,
    "cache_range": cache_range,
}
