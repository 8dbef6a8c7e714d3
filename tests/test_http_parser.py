"""The HTTP/1.1 request parser (docs/http-parser.md): the compiled code against the reference.

Every table is run on both implementations (ids ``py``: the pure-Python
reference in tests/reference/http_ref.py; ``c``: ``lb._fastpath``'s
``http_parse_request`` / ``http_parse_chunked``, the code the workers run),
and hypothesis compares the two on generated input, valid and invalid mixed.
Without the compiled functions every ``c`` test fails; none is skipped.

Where the document leaves a choice open, the reading taken is the one the
reference's docstring lists; the cases that depend on it have ids starting
with ``reading-``.
"""

from __future__ import annotations

import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import http_ref

CRLF = b"\r\n"
HOST = b"Host: example.com"


def _missing(name):
    def fail(*args, **kwargs):
        pytest.fail(f"lb._fastpath has no {name}: the compiled HTTP parser is not built")

    return fail


def _compiled():
    # No fallback: without the compiled parser every `c` test must fail, not skip.
    import lb._fastpath as fastpath

    return types.SimpleNamespace(
        parse_request=getattr(fastpath, "http_parse_request", _missing("http_parse_request")),
        parse_chunked=getattr(fastpath, "http_parse_chunked", _missing("http_parse_chunked")),
        compiled=hasattr(fastpath, "http_parse_request") and hasattr(fastpath, "http_parse_chunked"),
    )


@pytest.fixture(params=["py", "c"])
def impl(request):
    """The parser under test: the reference (py) or the compiled one (c)."""
    if request.param == "py":
        return http_ref
    return _compiled()


def head(line: bytes = b"GET / HTTP/1.1", *fields: bytes, leading: bytes = b"", end: bytes = CRLF) -> bytes:
    """A request head: ``leading``, the line, each field line, then ``end``."""
    return leading + line + CRLF + b"".join(f + CRLF for f in fields) + end


def h11(*fields: bytes) -> bytes:
    """GET / HTTP/1.1 with a Host, then ``fields``."""
    return head(b"GET / HTTP/1.1", HOST, *fields)


def prefixes(data: bytes):
    """Every proper prefix of short inputs; a sample (all the ends) of long ones."""
    n = len(data)
    if n <= 400:
        return range(n)
    ks = set(range(0, 100)) | set(range(n - 30, n)) | set(range(0, n, n // 20))
    return sorted(k for k in ks if 0 <= k < n)


# ---- malformed requests ---------------------------------------------------------------------
#
# (id, data, limits, expected status). Limits default to the document's.

LONG_TARGET = b"/" + b"a" * 8192  # 8193 bytes
BIG_VALUE = b"X-Big: " + b"v" * 16400

MALFORMED = [
    # -- framing: Content-Length and Transfer-Encoding (rules 5, 6)
    ("te-and-cl", h11(b"Transfer-Encoding: chunked", b"Content-Length: 5"), {}, 400),
    ("cl-and-te", h11(b"Content-Length: 5", b"Transfer-Encoding: chunked"), {}, 400),
    ("cl-duplicate-equal", h11(b"Content-Length: 5", b"Content-Length: 5"), {}, 400),
    ("cl-duplicate-different", h11(b"Content-Length: 5", b"Content-Length: 6"), {}, 400),
    ("cl-duplicate-case", h11(b"Content-Length: 5", b"content-length: 5"), {}, 400),
    ("cl-plus", h11(b"Content-Length: +5"), {}, 400),
    ("cl-minus", h11(b"Content-Length: -5"), {}, 400),
    ("cl-inner-space", h11(b"Content-Length: 5 5"), {}, 400),
    ("cl-comma-list", h11(b"Content-Length: 5, 5"), {}, 400),
    ("cl-comma-trailing", h11(b"Content-Length: 5,"), {}, 400),
    ("cl-hex-0x", h11(b"Content-Length: 0x5"), {}, 400),
    ("cl-hex-letter", h11(b"Content-Length: a"), {}, 400),
    ("cl-19-digits", h11(b"Content-Length: " + b"1" * 19), {}, 400),
    ("cl-19-digits-leading-zeros", h11(b"Content-Length: " + b"0" * 19), {}, 400),
    ("cl-empty", h11(b"Content-Length:"), {}, 400),
    ("cl-decimal", h11(b"Content-Length: 5.0"), {}, 400),
    ("cl-obs-text-digit", h11(b"Content-Length: \xd9\xa5"), {}, 400),
    ("te-gzip", h11(b"Transfer-Encoding: gzip"), {}, 501),
    ("te-identity", h11(b"Transfer-Encoding: identity"), {}, 501),
    ("te-gzip-chunked", h11(b"Transfer-Encoding: gzip, chunked"), {}, 501),
    ("te-chunked-gzip", h11(b"Transfer-Encoding: chunked, gzip"), {}, 501),
    ("te-chunked-then-gzip-field", h11(b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"), {}, 501),
    ("te-chunked-chunked", h11(b"Transfer-Encoding: chunked, chunked"), {}, 400),
    ("te-chunked-twice-two-fields", h11(b"Transfer-Encoding: chunked", b"transfer-encoding: CHUNKED"), {}, 400),
    ("te-parameters", h11(b"Transfer-Encoding: chunked;q=1"), {}, 501),
    ("te-parameters-space", h11(b"Transfer-Encoding: chunked ; foo"), {}, 501),
    ("te-empty", h11(b"Transfer-Encoding:"), {}, 400),
    ("te-only-commas", h11(b"Transfer-Encoding: , ,"), {}, 400),
    ("te-http10", head(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked"), {}, 400),
    ("te-http10-gzip", head(b"POST / HTTP/1.0", b"Transfer-Encoding: gzip"), {}, 400),
    ("te-http10-with-cl", head(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", b"Content-Length: 1"), {}, 400),
    ("te-chunk-typo", h11(b"Transfer-Encoding: chunke"), {}, 501),
    # -- field syntax (rule 3)
    ("space-before-colon", h11(b"X-Foo : bar"), {}, 400),
    ("tab-before-colon", h11(b"X-Foo\t: bar"), {}, 400),
    ("space-before-colon-host", head(b"GET / HTTP/1.1", b"Host : example.com"), {}, 400),
    ("obs-fold-sp", h11(b"X-Foo: a", b" b"), {}, 400),
    ("obs-fold-htab", h11(b"X-Foo: a", b"\tb"), {}, 400),
    ("leading-whitespace-line", head(b"GET / HTTP/1.1", b" Host: example.com"), {}, 400),
    ("leading-whitespace-line-only", head(b"GET / HTTP/1.1", b" ", HOST), {}, 400),
    ("nul-in-value", h11(b"X-Foo: a\x00b"), {}, 400),
    ("ctl-01-in-value", h11(b"X-Foo: a\x01b"), {}, 400),
    ("esc-in-value", h11(b"X-Foo: \x1b[1m"), {}, 400),
    ("vt-in-value", h11(b"X-Foo: a\x0bb"), {}, 400),
    ("del-in-value", h11(b"X-Foo: a\x7fb"), {}, 400),
    ("bare-cr-in-value", h11(b"X-Foo: a\rb"), {}, 400),
    ("bare-lf-in-value", h11(b"X-Foo: a\nb"), {}, 400),
    ("cr-cr-lf-after-value", h11(b"X-Foo: a\r"), {}, 400),
    ("bare-lf-field-ending", b"GET / HTTP/1.1\r\nHost: example.com\nX: y\r\n\r\n", {}, 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: example.com\r\n\r\n", {}, 400),
    ("bare-lf-final-line", b"GET / HTTP/1.1\r\nHost: example.com\r\n\n", {}, 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: example.com\n\n", {}, 400),
    ("bare-cr-final-line", b"GET / HTTP/1.1\r\nHost: example.com\r\n\rX", {}, 400),
    ("no-colon", h11(b"X-Foo bar"), {}, 400),
    ("no-colon-name-only", h11(b"X-Foo"), {}, 400),
    ("empty-name", h11(b": bar"), {}, 400),
    ("bad-name-byte", h11(b"X(Foo): bar"), {}, 400),
    ("bad-name-obs-text", h11(b"X-F\xf6o: bar"), {}, 400),
    ("bad-name-nul", h11(b"X\x00: bar"), {}, 400),
    # -- the request line (rule 2)
    ("double-sp-after-method", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("double-sp-before-version", b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("tab-after-method", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("tab-before-version", b"GET /\tHTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("leading-sp", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("trailing-sp", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", {}, 400),
    ("missing-version", b"GET /\r\nHost: a\r\n\r\n", {}, 400),
    ("missing-version-after-sp", b"GET / \r\nHost: a\r\n\r\n", {}, 400),
    ("missing-target", b"GET HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("method-only", b"GET\r\nHost: a\r\n\r\n", {}, 400),
    ("empty-request-line", b"\r\n" * 4 + b" \r\n\r\n", {}, 400),
    ("lowercase-http", b"GET / http/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("version-1.1x", b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", {}, 400),
    ("version-1.10", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", {}, 400),
    ("version-1", b"GET / HTTP/1\r\nHost: a\r\n\r\n", {}, 400),
    ("version-2", b"GET / HTTP/2\r\nHost: a\r\n\r\n", {}, 400),
    ("version-10.0", b"GET / HTTP/10.0\r\nHost: a\r\n\r\n", {}, 400),
    ("version-0.9", b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", {}, 400),
    ("version-1.x", b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", {}, 400),
    ("version-2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", {}, 505),
    ("version-3.0", b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", {}, 505),
    ("version-9.9", b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", {}, 505),
    ("version-2.0-before-field-error", b"GET / HTTP/2.0\r\nX: \x00\r\n\r\n", {}, 505),
    ("version-2.0x", b"GET / HTTP/2.0x\r\nHost: a\r\n\r\n", {}, 400),
    ("method-bad-paren", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("method-bad-at", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("method-bad-comma", b"GET, / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("method-obs-text", b"G\xc9T / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("method-nul", b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("method-33-bytes", b"A" * 33 + b" / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", {}, 405),
    ("connect-origin-form", b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", {}, 405),
    ("target-sp-inside", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-tab-inside", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-ctl", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-nul", b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-del", b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-0x80", b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-utf8", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-not-a-form", b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-scheme-only", b"GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-https-scheme-only", b"GET HTTPS:// HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-ftp", b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-scheme-no-slashes", b"GET http:a HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("target-h", b"GET h HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("asterisk-get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("asterisk-options-lowercase", b"options * HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    ("asterisk-then-more", b"OPTIONS *a HTTP/1.1\r\nHost: a\r\n\r\n", {}, 400),
    # -- Host (rule 4)
    ("host-missing-11", head(b"GET / HTTP/1.1", b"X-Foo: bar"), {}, 400),
    ("host-missing-11-no-fields", head(b"GET / HTTP/1.1"), {}, 400),
    ("host-repeated-11", h11(HOST), {}, 400),
    ("host-repeated-11-case", h11(b"HOST: example.com"), {}, 400),
    ("host-repeated-10", head(b"GET / HTTP/1.0", HOST, HOST), {}, 400),
    ("host-space", head(b"GET / HTTP/1.1", b"Host: a b"), {}, 400),
    ("host-userinfo", head(b"GET / HTTP/1.1", b"Host: user@a"), {}, 400),
    ("host-slash", head(b"GET / HTTP/1.1", b"Host: a/b"), {}, 400),
    ("host-empty-port", head(b"GET / HTTP/1.1", b"Host: a:"), {}, 400),
    ("host-port-6-digits", head(b"GET / HTTP/1.1", b"Host: a:123456"), {}, 400),
    ("host-port-letter", head(b"GET / HTTP/1.1", b"Host: a:8x"), {}, 400),
    ("host-two-ports", head(b"GET / HTTP/1.1", b"Host: a:1:2"), {}, 400),
    ("host-ipv6-unclosed", head(b"GET / HTTP/1.1", b"Host: [::1"), {}, 400),
    ("host-ipv6-bad-char", head(b"GET / HTTP/1.1", b"Host: [::g]"), {}, 400),
    ("host-ipv6-junk-after", head(b"GET / HTTP/1.1", b"Host: [::1]x"), {}, 400),
    ("host-obs-text", head(b"GET / HTTP/1.1", b"Host: caf\xc3\xa9"), {}, 400),
    ("host-colon-only", head(b"GET / HTTP/1.1", b"Host: :"), {}, 400),
    ("reading-host-ipv6-empty", head(b"GET / HTTP/1.1", b"Host: []"), {}, 400),
    # -- Expect (rule 8)
    ("expect-other", h11(b"Expect: foo"), {}, 417),
    ("expect-suffix", h11(b"Expect: 100-continue-x"), {}, 417),
    ("expect-list", h11(b"Expect: 100-continue, foo"), {}, 417),
    ("expect-empty", h11(b"Expect:"), {}, 417),
    ("expect-twice-in-one-field", h11(b"Expect: 100-continue, 100-continue"), {}, 417),
    ("expect-second-field-empty", h11(b"Expect: 100-continue", b"Expect:"), {}, 417),
    # -- leading empty lines (rule 1)
    ("five-leading-crlf", CRLF * 5 + h11(), {}, 400),
    ("leading-bare-lf", b"\n" + h11(), {}, 400),
    ("leading-bare-cr", b"\r\n\r\r\n" + h11(), {}, 400),
    # -- limits
    ("target-8193", head(b"GET " + LONG_TARGET + b" HTTP/1.1", HOST), {}, 414),
    ("target-8193-line-incomplete", b"GET " + LONG_TARGET, {}, 414),
    ("target-small-limit", b"GET /abcdef HTTP/1.1\r\nHost: a\r\n\r\n", {"max_target": 5}, 414),
    ("head-too-large", h11(BIG_VALUE), {}, 431),
    ("head-too-large-incomplete", b"GET / HTTP/1.1\r\nHost: a\r\n" + BIG_VALUE, {}, 431),
    ("head-too-large-empty-lines", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"Y: " + b"z" * 16000, {}, 431),
    ("fields-101", h11(*[b"X-%d: y" % i for i in range(100)]), {}, 431),
    ("fields-small-limit", h11(b"A: 1", b"B: 2"), {"max_fields": 2}, 431),
    ("reading-target-limit-tie-ctl", b"GET /ab\x01 HTTP/1.1\r\n", {"max_target": 3}, 400),
    ("reading-target-limit-tie-cr", b"GET /ab\r\n", {"max_target": 3}, 400),
    ("reading-head-limit-tie-nul", b"GET / HTTP/1.1\r\n\x00", {"max_head": 16}, 431),
    ("reading-fields-limit-tie-sp", b"GET / HTTP/1.0\r\n folded\r\n\r\n", {"max_fields": 0}, 400),
    ("reading-fields-limit-tie-fold", b"GET / HTTP/1.0\r\nA: 1\r\n\tfolded\r\n\r\n", {"max_fields": 1}, 400),
    ("reading-fields-limit-tie-colon", b"GET / HTTP/1.0\r\nA: 1\r\n: 2\r\n\r\n", {"max_fields": 1}, 431),
    ("reading-fields-limit-tie-lf", b"GET / HTTP/1.0\r\n\n", {"max_fields": 0}, 431),
    # -- which rule wins
    ("first-error-in-byte-order", b"GET / HTTP/1.1\r\nX: \x00\r\n" + b"Y: z\r\n" * 200, {}, 400),
    ("host-before-framing", head(b"GET / HTTP/1.1", b"Transfer-Encoding: gzip"), {}, 400),
    ("cl-before-te", h11(b"Content-Length: x", b"Transfer-Encoding: gzip"), {}, 400),
    ("te-before-expect", h11(b"Transfer-Encoding: gzip", b"Expect: foo"), {}, 501),
    ("cl-before-expect", h11(b"Content-Length: 1, 1", b"Expect: foo"), {}, 400),
    ("syntax-before-host", head(b"GET / HTTP/1.1", b"X: \x7f"), {}, 400),
]


def test_malformed_table_is_big_and_distinct():
    assert len(MALFORMED) >= 70
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)
    assert len({(case[1], tuple(sorted(case[2].items()))) for case in MALFORMED}) == len(MALFORMED)
    assert {case[3] for case in MALFORMED} == {400, 405, 414, 417, 431, 501, 505}


@pytest.mark.parametrize("name,data,limits,status", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_request(impl, name, data, limits, status):
    assert impl.parse_request(data, **limits) == (status, 0, None)


@pytest.mark.parametrize("name,data,limits,status", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_request_prefixes(impl, name, data, limits, status):
    """A prefix is incomplete or already the same error, never another one."""
    for k in prefixes(data):
        result = impl.parse_request(data[:k], **limits)
        assert result in ((-1, 0, None), (status, 0, None)), (k, data[:k][-40:], result)


# ---- valid requests ---------------------------------------------------------------------------
#
# (id, data, limits, the info fields that must hold). `fields` is checked whenever given.

VALID = [
    ("get-11", h11(), {}, dict(method=b"GET", target=b"/", version=11, host=b"example.com", keep_alive=True,
                               content_length=None, chunked=False, upgrade=False, expect_continue=False,
                               fields=[(b"Host", b"example.com")])),
    ("get-11-close", h11(b"Connection: close"), {}, dict(keep_alive=False)),
    ("get-11-close-case", h11(b"connection: CLOSE"), {}, dict(keep_alive=False)),
    ("get-11-close-in-list", h11(b"Connection: foo, close"), {}, dict(keep_alive=False)),
    ("get-11-close-second-field", h11(b"Connection: foo", b"Connection:  Close "), {}, dict(keep_alive=False)),
    ("get-11-keep-alive", h11(b"Connection: Keep-Alive"), {}, dict(keep_alive=True)),
    ("get-11-other-token", h11(b"Connection: closed"), {}, dict(keep_alive=True)),
    ("get-10", head(b"GET / HTTP/1.0"), {}, dict(version=10, host=None, keep_alive=False, fields=[])),
    ("get-10-keep-alive", head(b"GET / HTTP/1.0", b"Connection: keep-alive"), {}, dict(keep_alive=True)),
    ("get-10-keep-alive-case", head(b"GET / HTTP/1.0", b"Connection: KEEP-ALIVE"), {}, dict(keep_alive=True)),
    ("get-10-keep-alive-close", head(b"GET / HTTP/1.0", b"Connection: keep-alive, close"), {}, dict(keep_alive=False)),
    ("get-10-host", head(b"GET / HTTP/1.0", HOST), {}, dict(version=10, host=b"example.com")),
    ("version-1.2", head(b"GET / HTTP/1.2", HOST), {}, dict(version=11, keep_alive=True)),
    ("version-1.9", head(b"GET / HTTP/1.9", HOST), {}, dict(version=11)),
    ("upgrade", h11(b"Connection: Upgrade", b"Upgrade: websocket"), {}, dict(upgrade=True, keep_alive=True)),
    ("upgrade-in-list", h11(b"Upgrade: h2c", b"Connection: keep-alive,upgrade"), {}, dict(upgrade=True)),
    ("upgrade-field-only", h11(b"Upgrade: websocket"), {}, dict(upgrade=False)),
    ("upgrade-token-only", h11(b"Connection: upgrade"), {}, dict(upgrade=False)),
    ("expect-continue", h11(b"Expect: 100-continue"), {}, dict(expect_continue=True)),
    ("expect-continue-case", h11(b"expect: 100-Continue "), {}, dict(expect_continue=True)),
    ("cl-0", h11(b"Content-Length: 0"), {}, dict(content_length=0, chunked=False)),
    ("cl-42", h11(b"Content-Length: 42"), {}, dict(content_length=42)),
    ("cl-leading-zeros", h11(b"Content-Length: 007"), {}, dict(content_length=7)),
    ("cl-18-digits", h11(b"Content-Length: " + b"9" * 18), {}, dict(content_length=10**18 - 1)),
    ("cl-ows", h11(b"Content-Length:\t 5 \t"), {}, dict(content_length=5)),
    ("te-chunked", h11(b"Transfer-Encoding: chunked"), {}, dict(chunked=True, content_length=None)),
    ("te-chunked-case", h11(b"transfer-encoding: ChUnKeD"), {}, dict(chunked=True)),
    ("te-chunked-empty-elements", h11(b"Transfer-Encoding: , chunked ,"), {}, dict(chunked=True)),
    ("te-chunked-empty-field", h11(b"Transfer-Encoding:", b"Transfer-Encoding: chunked"), {}, dict(chunked=True)),
    ("ows-trimmed", h11(b"X-A:   a b  ", b"X-B:\tc\t", b"X-C:d", b"X-E:", b"X-F: \t "), {},
     dict(fields=[(b"Host", b"example.com"), (b"X-A", b"a b"), (b"X-B", b"c"), (b"X-C", b"d"), (b"X-E", b""),
                  (b"X-F", b"")])),
    ("obs-text-value", h11(b"X-Name: caf\xc3\xa9 \xff\x80"), {},
     dict(fields=[(b"Host", b"example.com"), (b"X-Name", b"caf\xc3\xa9 \xff\x80")])),
    ("inner-htab-value", h11(b"X: a\tb"), {}, dict(fields=[(b"Host", b"example.com"), (b"X", b"a\tb")])),
    ("name-case-kept", head(b"GET / HTTP/1.1", b"hOsT: example.com", b"x-WEIRD_name!: 1"), {},
     dict(host=b"example.com", fields=[(b"hOsT", b"example.com"), (b"x-WEIRD_name!", b"1")])),
    ("options-asterisk", head(b"OPTIONS * HTTP/1.1", HOST), {}, dict(method=b"OPTIONS", target=b"*")),
    ("absolute-form", head(b"GET http://example.com/a?b HTTP/1.1", HOST), {}, dict(target=b"http://example.com/a?b")),
    ("absolute-form-https-case", head(b"GET HtTpS://x HTTP/1.1", HOST), {}, dict(target=b"HtTpS://x")),
    ("options-absolute", head(b"OPTIONS http://a HTTP/1.1", HOST), {}, dict(target=b"http://a")),
    ("target-all-visible", head(b"GET /!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ HTTP/1.1", HOST), {},
     dict(target=b"/!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")),
    ("method-symbols", head(b"M-SEARCH / HTTP/1.1", HOST), {}, dict(method=b"M-SEARCH")),
    ("method-lowercase", head(b"get / HTTP/1.1", HOST), {}, dict(method=b"get")),
    ("method-connect-lowercase", head(b"connect / HTTP/1.1", HOST), {}, dict(method=b"connect")),
    ("method-tchar", head(b"!#$%&'*+-.^_`|~09azAZ / HTTP/1.1", HOST), {}, dict(method=b"!#$%&'*+-.^_`|~09azAZ")),
    ("method-32-bytes", head(b"A" * 32 + b" / HTTP/1.1", HOST), {}, dict(method=b"A" * 32)),
    ("host-empty", head(b"GET / HTTP/1.1", b"Host:"), {}, dict(host=b"")),
    ("host-port", head(b"GET / HTTP/1.1", b"Host: a.b-c_~:65535"), {}, dict(host=b"a.b-c_~:65535")),
    ("host-reg-name-symbols", head(b"GET / HTTP/1.1", b"Host: x!$&'()*+,;=%41"), {}, dict(host=b"x!$&'()*+,;=%41")),
    ("host-ipv6", head(b"GET / HTTP/1.1", b"Host: [::1]:8080"), {}, dict(host=b"[::1]:8080")),
    ("reading-host-port-only", head(b"GET / HTTP/1.1", b"Host: :80"), {}, dict(host=b":80")),
    ("reading-expect-twice", h11(b"Expect: 100-continue", b"Expect: 100-CONTINUE"), {}, dict(expect_continue=True)),
    ("host-ipv4-in-ipv6", head(b"GET / HTTP/1.1", b"Host: [::ffff:10.0.0.1]"), {}, dict(host=b"[::ffff:10.0.0.1]")),
    ("leading-4-crlf", CRLF * 4 + h11(), {}, dict(method=b"GET")),
    ("leading-1-crlf", CRLF + h11(), {}, dict(method=b"GET")),
    ("target-8192", head(b"GET /" + b"a" * 8191 + b" HTTP/1.1", HOST), {}, dict(target=b"/" + b"a" * 8191)),
    ("fields-100", h11(*[b"X-%d: y" % i for i in range(99)]), {}, dict(keep_alive=True)),
    ("small-limits-exact", b"GET /ab HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n",
     {"max_target": 3, "max_head": 37, "max_fields": 2}, dict(target=b"/ab")),
    ("max-fields-0-no-fields", head(b"GET / HTTP/1.0"), {"max_fields": 0}, dict(fields=[])),
]


def _head_of_size(size: int) -> bytes:
    base = h11(b"X-Pad: ")
    pad = size - len(base)
    return h11(b"X-Pad: " + b"p" * pad)


VALID.append(("head-exactly-max", _head_of_size(16384), {}, dict(method=b"GET")))


@pytest.mark.parametrize("name,data,limits,expected", VALID, ids=[case[0] for case in VALID])
def test_valid_request(impl, name, data, limits, expected):
    status, consumed, info = impl.parse_request(data, **limits)
    assert (status, consumed) == (0, len(data))
    assert set(info) == {"method", "target", "version", "host", "content_length", "chunked", "keep_alive",
                         "upgrade", "expect_continue", "fields"}
    for key, value in expected.items():
        assert info[key] == value, key
    assert [tuple(f) for f in info["fields"]] == http_ref.parse_request(data, **limits)[2]["fields"]


@pytest.mark.parametrize("name,data,limits,expected", VALID, ids=[case[0] for case in VALID])
def test_valid_request_prefixes_are_incomplete(impl, name, data, limits, expected):
    for k in prefixes(data):
        assert impl.parse_request(data[:k], **limits) == (-1, 0, None), (k, data[:k][-40:])


def test_valid_request_then_garbage(impl):
    """The garbage after a head is the next request's problem."""
    for first in (h11(), h11(b"Content-Length: 3"), CRLF * 2 + head(b"GET / HTTP/1.0"), _head_of_size(16384)):
        for garbage in (b"\x00\xff garbage\n", b"GET / HTTP/1.1\r\n", b"\r\n" * 10, b"x" * 20000):
            status, consumed, info = impl.parse_request(first + garbage)
            assert (status, consumed) == (0, len(first))
            assert info == http_ref.parse_request(first)[2]


def test_pipelined_requests(impl):
    first, second = h11(b"Content-Length: 0"), head(b"POST /b HTTP/1.1", HOST, b"Connection: close")
    status, consumed, info = impl.parse_request(first + second)
    assert (status, consumed, info["target"]) == (0, len(first), b"/")
    status, consumed, info = impl.parse_request((first + second)[consumed:])
    assert (status, consumed, info["target"], info["keep_alive"]) == (0, len(second), b"/b", False)


# ---- limits, to the byte -----------------------------------------------------------------------


def test_head_limit_to_the_byte(impl):
    data = h11(b"X: 12345")
    assert impl.parse_request(data, max_head=len(data))[:2] == (0, len(data))
    assert impl.parse_request(data, max_head=len(data) - 1) == (431, 0, None)
    # max_head bytes seen without the end, and no more: still incomplete
    assert impl.parse_request(data[:-1], max_head=len(data) - 1) == (-1, 0, None)
    # the leading empty lines count (reading)
    assert impl.parse_request(CRLF + data, max_head=len(data)) == (431, 0, None)


def test_target_limit_to_the_byte(impl):
    assert impl.parse_request(b"GET /abc HTTP/1.1\r\nHost: a\r\n\r\n", max_target=4)[0] == 0
    assert impl.parse_request(b"GET /abcd HTTP/1.1\r\nHost: a\r\n\r\n", max_target=4) == (414, 0, None)
    assert impl.parse_request(b"GET /abc", max_target=4) == (-1, 0, None)
    assert impl.parse_request(b"GET /abcd", max_target=4) == (414, 0, None)
    assert impl.parse_request(b"GET /" + b"a" * 8191) == (-1, 0, None)
    assert impl.parse_request(b"GET /" + b"a" * 8192) == (414, 0, None)


def test_fields_limit_to_the_byte(impl):
    fields = [b"X-%d: y" % i for i in range(4)]
    assert impl.parse_request(h11(*fields[:3]), max_fields=4)[0] == 0
    assert impl.parse_request(h11(*fields), max_fields=4) == (431, 0, None)
    at = len(head(b"GET / HTTP/1.1", HOST, *fields[:3], end=b""))
    data = h11(*fields)
    assert impl.parse_request(data[:at], max_fields=4) == (-1, 0, None)
    assert impl.parse_request(data[: at + 1], max_fields=4) == (431, 0, None)


def test_leading_empty_lines(impl):
    for n in range(5):
        data = CRLF * n + h11()
        assert impl.parse_request(data)[:2] == (0, len(data))
    assert impl.parse_request(CRLF * 4) == (-1, 0, None)
    assert impl.parse_request(CRLF * 3 + b"\r") == (-1, 0, None)
    assert impl.parse_request(CRLF * 5) == (400, 0, None)


# (id, a head cut short, the status already decided: -1 when not yet)
EARLY = [
    ("method-bad-byte", b"GE(", 400),
    ("double-sp", b"GET  ", 400),
    ("target-nul", b"GET /\x00", 400),
    ("lowercase-version", b"GET / http", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nX : ", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nX: a\x00", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nX: a\r\n ", 400),
    ("bare-lf", b"GET / HTTP/1.1\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\rx", 400),
    ("cr-pending", b"GET / HTTP/1.1\r", -1),
    ("connect-at-its-sp", b"CONNECT ", 405),
    ("connect-not-yet", b"CONNECT", -1),
    ("version-2.0-not-yet", b"GET / HTTP/2.0\r", -1),
    ("version-2.0-at-lf", b"GET / HTTP/2.0\r\n", 505),
    # rules 4 to 9 wait for the end of the head
    ("bad-cl-waits", b"GET / HTTP/1.1\r\nContent-Length: x\r\n", -1),
    ("bad-expect-waits", b"GET / HTTP/1.1\r\nExpect: x\r\n", -1),
    ("no-host-waits", b"GET / HTTP/1.1\r\nX: y\r\n", -1),
    ("te-gzip-waits", b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r", -1),
    # readings: a target that no form can continue fails at that byte; the
    # fifth leading empty line fails at its CR
    ("reading-target-form-f", b"GET f", 400),
    ("reading-target-form-htx", b"GET htx", 400),
    ("reading-target-asterisk-get", b"GET *", 400),
    ("reading-target-asterisk-then-more", b"OPTIONS *a", 400),
    ("reading-target-form-before-length", b"GET " + b"a" * 9000, 400),
    ("reading-fifth-empty-line-cr", CRLF * 4 + b"\r", 400),
    ("target-form-not-yet", b"GET http:/", -1),
]


@pytest.mark.parametrize("name,data,status", EARLY, ids=[case[0] for case in EARLY])
def test_decided_at_the_offending_byte(impl, name, data, status):
    """A syntax error needs no more input than its own byte (a bare CR: the
    byte after it); rules 4 to 9 wait for the whole head."""
    assert impl.parse_request(data) == (status, 0, None)


# ---- chunked bodies --------------------------------------------------------------------------------

CHUNKED_VALID = [
    # RFC 9112 7.1.1: BWS before ";" and around "="
    ("ext-bws-before-semicolon", b"1 ;a\r\na\r\n0\r\n\r\n", b"a", []),
    ("ext-bws-around-equals", b"1;a = b\r\na\r\n0\r\n\r\n", b"a", []),
    ("last-only", b"0\r\n\r\n", b"", []),
    ("one", b"5\r\nhello\r\n0\r\n\r\n", b"hello", []),
    ("several", b"3\r\nabc\r\n1\r\nd\r\n6\r\nefghij\r\n0\r\n\r\n", b"abcdefghij", []),
    ("uppercase-hex", b"A\r\n0123456789\r\nF\r\n" + b"f" * 15 + b"\r\n0\r\n\r\n", b"0123456789" + b"f" * 15, []),
    ("mixed-case-hex", b"1a\r\n" + b"x" * 26 + b"\r\n1A\r\n" + b"y" * 26 + b"\r\n0\r\n\r\n", b"x" * 26 + b"y" * 26, []),
    ("leading-zeros-16", b"0" * 15 + b"1\r\nz\r\n" + b"0" * 16 + b"\r\n\r\n", b"z", []),
    ("data-with-crlf", b"4\r\n\r\n\r\n\r\n0\r\n\r\n", b"\r\n\r\n", []),
    ("data-binary", b"3\r\n\x00\xff\n\r\n0\r\n\r\n", b"\x00\xff\n", []),
    ("ext-name", b"1;foo\r\na\r\n0\r\n\r\n", b"a", []),
    ("ext-name-value", b"1;foo=bar\r\na\r\n0;last\r\n\r\n", b"a", []),
    ("ext-ows", b"1; foo = bar\r\na\r\n0\r\n\r\n", b"a", []),
    ("ext-quoted", b'1;foo="b a\\"r;\\\\"\r\na\r\n0\r\n\r\n', b"a", []),
    ("ext-quoted-empty", b'1;foo=""\r\na\r\n0\r\n\r\n', b"a", []),
    ("ext-several", b"1;a;b=c; d=\"e\"\r\na\r\n0\r\n\r\n", b"a", []),
    ("ext-tab", b"1;\tfoo\t=\tbar\r\na\r\n0\r\n\r\n", b"a", []),
    ("trailer", b"1\r\na\r\n0\r\nX-Sum: abc\r\n\r\n", b"a", [(b"X-Sum", b"abc")]),
    ("trailers-ows", b"0\r\nA:  1 \r\nB:\t2\r\nC:\r\n\r\n", b"", [(b"A", b"1"), (b"B", b"2"), (b"C", b"")]),
    ("trailer-obs-text", b"0\r\nA: \xe9\xff\r\n\r\n", b"", [(b"A", b"\xe9\xff")]),
    ("last-chunk-zeros", b"000\r\n\r\n", b"", []),
    ("trailers-256", b"0\r\n" + b"t: 1\r\n" * 256 + b"\r\n", b"", [(b"t", b"1")] * 256),
]


@pytest.mark.parametrize("name,data,body,trailers", CHUNKED_VALID, ids=[c[0] for c in CHUNKED_VALID])
def test_chunked_valid(impl, name, data, body, trailers):
    status, consumed, got_body, got_trailers = impl.parse_chunked(data)
    assert (status, consumed, got_body, [tuple(t) for t in got_trailers]) == (0, len(data), body, trailers)
    # what follows the body is not its problem
    status, consumed, got_body, _ = impl.parse_chunked(data + b"GET / HTTP/1.1\r\n\x00")
    assert (status, consumed, got_body) == (0, len(data), body)


@pytest.mark.parametrize("name,data,body,trailers", CHUNKED_VALID, ids=[c[0] for c in CHUNKED_VALID])
def test_chunked_prefixes_are_incomplete(impl, name, data, body, trailers):
    for k in range(len(data)):
        assert impl.parse_chunked(data[:k])[0] == -1, (k, data[:k])


CHUNKED_MALFORMED = [
    ("size-empty", b"\r\na\r\n0\r\n\r\n", {}),
    ("size-non-hex", b"g\r\na\r\n0\r\n\r\n", {}),
    ("size-0x", b"0x1\r\na\r\n0\r\n\r\n", {}),
    ("size-17-digits", b"0" * 16 + b"1\r\na\r\n0\r\n\r\n", {}),
    ("size-17-digits-zero", b"0" * 17 + b"\r\n\r\n", {}),
    ("size-negative", b"-1\r\na\r\n0\r\n\r\n", {}),
    ("size-plus", b"+1\r\na\r\n0\r\n\r\n", {}),
    ("size-leading-sp", b" 1\r\na\r\n0\r\n\r\n", {}),
    ("size-trailing-sp", b"1 \r\na\r\n0\r\n\r\n", {}),
    ("size-trailing-htab", b"1\t\r\na\r\n0\r\n\r\n", {}),
    ("size-bare-lf", b"1\na\r\n0\r\n\r\n", {}),
    ("size-bare-cr", b"1\ra\r\n0\r\n\r\n", {}),
    ("size-lf-last", b"0\n\r\n", {}),
    ("data-too-long", b"1\r\nab\r\n0\r\n\r\n", {}),
    ("data-no-crlf", b"1\r\naxy0\r\n\r\n", {}),
    ("data-then-lf", b"1\r\na\n0\r\n\r\n", {}),
    ("data-then-cr", b"1\r\na\r0\r\n\r\n", {}),
    ("data-then-sp-crlf", b"1\r\na \r\n0\r\n\r\n", {}),
    ("ext-empty", b"1;\r\na\r\n0\r\n\r\n", {}),
    ("ext-no-name", b"1;=a\r\na\r\n0\r\n\r\n", {}),
    ("ext-no-value", b"1;a=\r\na\r\n0\r\n\r\n", {}),
    ("ext-trailing-ows", b"1;a \r\na\r\n0\r\n\r\n", {}),
    ("ext-value-trailing-ows", b"1;a=b \r\na\r\n0\r\n\r\n", {}),
    ("ext-two-words", b"1;a b\r\na\r\n0\r\n\r\n", {}),
    ("ext-value-two-words", b"1;a=b c\r\na\r\n0\r\n\r\n", {}),
    ("ext-comma", b"1;a,b\r\na\r\n0\r\n\r\n", {}),
    ("ext-bad-byte", b"1;a\x00\r\na\r\n0\r\n\r\n", {}),
    ("ext-quoted-ctl", b'1;a="b\x01"\r\na\r\n0\r\n\r\n', {}),
    ("ext-quoted-bare-lf", b'1;a="b\n"\r\na\r\n0\r\n\r\n', {}),
    ("ext-quoted-then-junk", b'1;a="b"c\r\na\r\n0\r\n\r\n', {}),
    ("ext-obs-text-token", b"1;\xe9\r\na\r\n0\r\n\r\n", {}),
    ("ext-bare-lf", b"1;a\na\r\n0\r\n\r\n", {}),
    ("trailer-content-length", b"0\r\nContent-Length: 1\r\n\r\n", {}),
    ("trailer-transfer-encoding", b"0\r\ntransfer-encoding: chunked\r\n\r\n", {}),
    ("trailer-host", b"0\r\nHOST: a\r\n\r\n", {}),
    ("trailer-forbidden-after-other", b"0\r\nX: 1\r\nHost: a\r\n\r\n", {}),
    ("trailer-obs-fold", b"0\r\nX: 1\r\n 2\r\n\r\n", {}),
    ("trailer-leading-space", b"0\r\n X: 1\r\n\r\n", {}),
    ("trailer-no-colon", b"0\r\nX\r\n\r\n", {}),
    ("trailer-space-before-colon", b"0\r\nX : 1\r\n\r\n", {}),
    ("trailer-nul", b"0\r\nX: \x00\r\n\r\n", {}),
    ("trailer-bare-lf", b"0\r\nX: 1\n\r\n", {}),
    ("trailer-final-bare-lf", b"0\r\nX: 1\r\n\n", {}),
    ("trailer-final-bare-cr", b"0\r\n\rX", {}),
    ("trailer-too-large", b"0\r\nX: " + b"y" * 30 + b"\r\n\r\n", {"max_head": 20}),
    ("trailer-too-large-incomplete", b"0\r\nX: " + b"y" * 30, {"max_head": 20}),
    ("trailer-257-fields", b"0\r\n" + b"t: 1\r\n" * 257 + b"\r\n", {}),
    ("trailer-too-large-default", b"0\r\nX: " + b"y" * 16400 + b"\r\n\r\n", {}),
]


def test_chunked_malformed_table_is_distinct():
    assert len({case[0] for case in CHUNKED_MALFORMED}) == len(CHUNKED_MALFORMED)
    assert len({case[1] for case in CHUNKED_MALFORMED}) == len(CHUNKED_MALFORMED)


@pytest.mark.parametrize("name,data,limits", CHUNKED_MALFORMED, ids=[c[0] for c in CHUNKED_MALFORMED])
def test_chunked_malformed(impl, name, data, limits):
    assert impl.parse_chunked(data, **limits)[0] == 400
    for k in prefixes(data):
        assert impl.parse_chunked(data[:k], **limits)[0] in (-1, 400), k


def test_chunked_trailer_limit_to_the_byte(impl):
    trailer = b"X: 1234\r\n\r\n"
    data = b"0\r\n" + trailer
    assert impl.parse_chunked(data, max_head=len(trailer))[:2] == (0, len(data))
    assert impl.parse_chunked(data, max_head=len(trailer) - 1)[0] == 400
    assert impl.parse_chunked(data[:-1], max_head=len(trailer) - 1)[0] == -1


def test_chunked_incomplete(impl):
    for data in (b"", b"5", b"5\r", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r", b"5\r\nhello\r\n0",
                 b"0\r\n", b"0\r\nX: 1\r\n", b"0\r\n\r", b'1;a="b', b"1;a = ", b"F" * 16,
                 b"ffffffffffffffff\r\nabc", b"0\r\nContent-Length: 1\r\n"):
        assert impl.parse_chunked(data)[0] == -1, data


# ---- generated input: the compiled parser against the reference ---------------------------------

INTERESTING_BYTES = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x22, 0x2C, 0x3A, 0x3B, 0x3D, 0x5C, 0x7F, 0x80, 0xFF]
TCHARS = sorted(b for b in range(256) if http_ref.is_tchar(b))

# Byte strings as latin-1 text: one draw each (cheap), mostly of the interesting and
# printable bytes, sometimes of any byte.
NOISY_ALPHABET = "".join(map(chr, INTERESTING_BYTES + list(range(0x21, 0x7F))))
ANY_BYTE = "".join(map(chr, range(256)))


def noisy_bytes(max_size: int = 10, min_size: int = 0):
    return st.one_of(
        st.text(NOISY_ALPHABET, min_size=min_size, max_size=max_size),
        st.text(ANY_BYTE, min_size=min_size, max_size=max_size),
    ).map(lambda text: text.encode("latin-1"))


def tchar_text(min_size: int = 1, max_size: int = 8):
    alphabet = "".join(map(chr, TCHARS))
    return st.text(alphabet, min_size=min_size, max_size=max_size).map(lambda text: text.encode("ascii"))


def mostly(percent: int, common, rare):
    """``common`` (a strategy, or a list to pick from) about ``percent`` % of the
    time, else ``rare`` (one_of with ``common`` repeated: one draw, cheap)."""
    common = st.sampled_from(common) if isinstance(common, list) else common
    rare = st.sampled_from(rare) if isinstance(rare, list) else rare
    k = max(1, round(percent / (100 - percent)))
    return st.one_of([common] * k + [rare])


METHODS = mostly(90, [b"GET", b"POST", b"OPTIONS", b"HEAD", b"PUT"],
                 st.one_of(st.sampled_from([b"CONNECT", b"get", b"M-SEARCH", b"", b"A" * 32, b"A" * 33, b"GE(T",
                                            b"CONNECTX", b"connect"]), tchar_text(1, 6), noisy_bytes(4)))
SEPARATORS = mostly(96, [b" "], [b"  ", b"\t", b"", b" \t"])
TARGETS = mostly(88, st.one_of(st.sampled_from([b"/", b"/index.html?q=1&r=%20", b"http://example.com/x", b"*"]),
                               st.builds(lambda t: b"/" + t, tchar_text(0, 12))),
                 st.one_of(st.sampled_from([b"HTTPS://h:1/x", b"http://", b"https:/", b"foo", b"h", b"/a b", b"ftp://x",
                                            b"/" + b"z" * 40, b"*x", b"/\x80"]), noisy_bytes(6)))
VERSIONS = mostly(88, [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"],
                  st.one_of(st.sampled_from([b"HTTP/1.2", b"HTTP/1.9", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/0.9",
                                             b"http/1.1", b"HTTP/1.1x", b"HTTP/1", b"HTTP/10.0", b"HTTP/1.1 ", b"",
                                             b"HTTP/1.x", b"HTTP/2.0x"]), noisy_bytes(9)))
LINE_ENDS = mostly(96, [b"\r\n"], [b"\n", b"\r", b"\r\r\n", b" \r\n", b"\n\r", b""])
LEADING = mostly(85, [b""], [b"\r\n", b"\r\n" * 4, b"\r\n" * 5, b"\n", b"\r\r\n", b" ", b"\r\n\r"])
OWS = mostly(70, [b""], [b" ", b"\t", b" \t "])
COLONS = mostly(93, [b": ", b":"], [b":\t", b" :", b":  ", b"", b"\t:", b"::"])

# (name, usual values, unusual or invalid values)
FIELD_KINDS = [
    (b"Host", [b"example.com", b"a:80", b"[::1]:8080"],
     [b"", b":80", b"a b", b"a:123456", b"[::1", b"caf\xc3\xa9", b"a:", b"[]"]),
    (b"Content-Length", [b"0", b"5", b"007"], [b"+5", b"5, 5", b"0x5", b"1" * 18, b"1" * 19, b"", b"5 5"]),
    (b"Transfer-Encoding", [b"chunked", b"Chunked", b" chunked"],
     [b"gzip", b"gzip, chunked", b"chunked, gzip", b"chunked, chunked", b"chunked;q=1", b", ,", b"", b",chunked,"]),
    (b"Connection", [b"close", b"keep-alive", b"Upgrade", b"keep-alive, upgrade"], [b"CLOSE", b"foo,,bar", b""]),
    (b"Expect", [b"100-continue"], [b"100-Continue", b"foo", b"", b"100-continue, 100-continue"]),
    (b"Upgrade", [b"websocket"], [b""]),
    (b"X-Foo", [b"bar", b"a b", b""], [b"caf\xc3\xa9", b"\xff", b"a\x00b", b"a\rb", b"a\nb", b"\x7f", b"a\tb"]),
    (b"Accept", [b"*/*"], [b"text/html;q=0.9"]),
]


def _known_field(name: bytes, usual: list[bytes], unusual: list[bytes]):
    """(name in any case, a usual or unusual value) of one known field."""
    names = mostly(85, st.just(name), [name.lower(), name.upper()])
    values = mostly(80, usual, st.one_of(st.sampled_from(unusual), tchar_text(0, 8), noisy_bytes(10)))
    return st.tuples(names, values)


KNOWN_FIELDS = st.one_of([_known_field(*kind) for kind in FIELD_KINDS])
OTHER_FIELDS = st.tuples(
    st.one_of(tchar_text(1, 6), noisy_bytes(4), st.sampled_from([b"Bad Name", b"", b"X\x00", b"\xe9", b"X-Foo "])),
    st.one_of(tchar_text(0, 8), noisy_bytes(10)),
)
NAME_VALUE = mostly(90, KNOWN_FIELDS, OTHER_FIELDS)


@st.composite
def field_lines(draw):
    """One field line: a known field (its name in any case) with a usual or
    unusual value, or a random name, or (rarely) an obs-fold or junk line."""
    if draw(st.integers(0, 99)) < 5:
        return draw(OWS) + draw(st.one_of(tchar_text(0, 8), noisy_bytes(10))) + draw(LINE_ENDS)
    name, value = draw(NAME_VALUE)
    return name + draw(COLONS) + draw(OWS) + value + draw(OWS) + draw(LINE_ENDS)


LIMITS = mostly(75, st.just({}), st.fixed_dictionaries({"max_target": st.integers(0, 30),
                                                        "max_head": st.integers(0, 160),
                                                        "max_fields": st.integers(0, 6)}))


@st.composite
def requests(draw):
    """(data, limits, split): a request head mixing valid and invalid pieces,
    some bytes after it, the limits to parse it with, and a split point."""
    line = draw(LEADING) + draw(METHODS) + draw(SEPARATORS) + draw(TARGETS) + draw(SEPARATORS) + draw(VERSIONS)
    fields = draw(st.lists(field_lines(), max_size=6))
    if draw(st.integers(0, 99)) < 85:
        fields.insert(draw(st.integers(0, len(fields))), b"Host: example.com\r\n")
    if draw(st.integers(0, 99)) < 10:
        fields += [b"Connection: keep-alive, Upgrade\r\n", b"Upgrade: websocket\r\n"]
    data = line + draw(LINE_ENDS) + b"".join(fields) + draw(LINE_ENDS) + draw(noisy_bytes(6))
    return data, draw(LIMITS), draw(st.integers(0, len(data)))


CHUNK_EXTENSIONS = mostly(
    60, [b""],
    st.one_of(
        st.sampled_from([b";a", b";a=b", b"; a = b", b';a="x y\\""', b";a;b=c", b";", b";=", b" ;a", b";a ", b";a=",
                         b";a=b c", b';a="', b';a="\x01"', b";\xe9", b"\t", b";a=b ", b"\t;a"]),
        st.tuples(st.just(b";"), OWS, tchar_text(0, 4), st.sampled_from([b"", b"=", b" = "]),
                  tchar_text(0, 4) | noisy_bytes(4)).map(b"".join),
    ),
)
CHUNK_DATA = st.one_of(st.binary(max_size=20), noisy_bytes(20))
TRAILER_KINDS = [(b"X-Sum", [b"abc", b""], [b"\x00", b"a\rb"]), (b"Host", [b"a"], []),
                 (b"Content-Length", [b"1"], []), (b"Transfer-Encoding", [b"chunked"], [])]


@st.composite
def chunked_bodies(draw):
    """(data, max_head, split): chunks with sizes right or wrong, extensions,
    data endings, a last chunk and trailers, valid and invalid pieces mixed."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(CHUNK_DATA)
        size = len(data) + draw(mostly(90, st.just(0), st.sampled_from([1, -1])))
        digits = b"%x" % max(size, 0)
        digits = draw(mostly(90, [digits, digits.upper(), b"0" * draw(st.integers(0, 16)) + digits],
                             [b"", b"-" + digits, b"g", b"0x" + digits, b" " + digits]))
        out += digits + draw(CHUNK_EXTENSIONS) + draw(LINE_ENDS) + data + draw(LINE_ENDS)
    out += draw(mostly(90, [b"0", b"000"], [b"0" * 17, b"", b"0 ", b"00000000000000000"]))
    out += draw(CHUNK_EXTENSIONS) + draw(LINE_ENDS)
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 99)) < 70:
            name, usual, unusual = draw(st.sampled_from(TRAILER_KINDS))
            out += name + draw(COLONS) + draw(OWS) + draw(st.sampled_from(usual + unusual)) + draw(LINE_ENDS)
        else:
            out += draw(field_lines())
    out += draw(LINE_ENDS) + draw(noisy_bytes(4))
    max_head = draw(mostly(70, st.just(16384), st.integers(0, 60)))
    return out, max_head, draw(st.integers(0, len(out)))


# Sized so that the whole file runs in about 15 s on the 2-core machine.
DIFFERENTIAL_REQUESTS = settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIFFERENTIAL_CHUNKED = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def test_differential_requests():
    c = _compiled()
    if not c.compiled:
        pytest.fail("lb._fastpath has no http_parse_request / http_parse_chunked")

    @DIFFERENTIAL_REQUESTS
    @given(requests())
    def check(case):
        data, limits, split = case
        for piece in (data, data[:split]):
            expected = http_ref.parse_request(piece, **limits)
            got = c.parse_request(piece, **limits)
            if got[2] is not None:
                got = (got[0], got[1], {**got[2], "fields": [tuple(f) for f in got[2]["fields"]]})
            assert got == expected, (piece, limits)

    check()


def test_differential_chunked():
    c = _compiled()
    if not c.compiled:
        pytest.fail("lb._fastpath has no http_parse_request / http_parse_chunked")

    @DIFFERENTIAL_CHUNKED
    @given(chunked_bodies())
    def check(case):
        data, max_head, split = case
        for piece in (data, data[:split]):
            expected = http_ref.parse_chunked(piece, max_head=max_head)
            got = c.parse_chunked(piece, max_head=max_head)
            assert got[0] == expected[0], (piece, max_head, got, expected)
            if expected[0] == 0:
                assert (got[1], got[2], [tuple(t) for t in got[3]]) == expected[1:], (piece, max_head)

    check()


@PROPERTY
@given(case=requests())
def test_generated_prefix_is_incomplete_or_the_same(impl, case):
    """Every decision is taken at one byte: a prefix is -1 or the whole's result."""
    data, limits, split = case
    whole = impl.parse_request(data, **limits)
    part = impl.parse_request(data[:split], **limits)
    assert part in ((-1, 0, None), whole) or (whole[0] == 0 and split >= whole[1] and part == whole)


@PROPERTY
@given(case=chunked_bodies())
def test_generated_chunked_prefix_is_incomplete_or_the_same(impl, case):
    data, max_head, split = case
    whole = impl.parse_chunked(data, max_head=max_head)
    part = impl.parse_chunked(data[:split], max_head=max_head)
    assert part[0] == -1 or part == whole


def test_chunk_line_length_is_bounded(impl):
    """A chunk's size line may take 4096 bytes before its CRLF, not more: the
    proxy never buffers an endless chunk line."""
    ext = b";" + b"a" * 4090  # 1 + 1 + 4090 = 4092 bytes with the size
    ok = b"1" + ext + b"\r\nx\r\n0\r\n\r\n"
    assert impl.parse_chunked(ok)[:3] == (0, len(ok), b"x")
    line = b"1;" + b"a" * 4094  # 4096 bytes before the CRLF: the most allowed
    assert impl.parse_chunked(line + b"\r\nx\r\n0\r\n\r\n")[0] == 0
    longer = b"1;" + b"a" * 4095  # 4097
    assert impl.parse_chunked(longer + b"\r\nx\r\n0\r\n\r\n")[0] == 400
    assert impl.parse_chunked(b"1;" + b"a" * 100000)[0] == 400
    assert impl.parse_chunked(b"1;" + b"a" * 4000)[0] == -1
