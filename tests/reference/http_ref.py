"""The pure-Python reference of the HTTP/1.1 parsers: docs/http-parser.md, literally.

Four functions, the same API as the compiled ones in ``lb._fastpath``
(``http_parse_request``, ``http_parse_chunked``, ``http_parse_response`` and
``http_chunk_stream``):

- ``parse_request(data, max_target, max_head, max_fields) -> (status, consumed, info)``
- ``parse_chunked(data, max_head) -> (status, consumed, body, trailers)``
- ``parse_response(data, max_head) -> (status, consumed, info)``: a response
  head from a backend (status 0, -1 or 502)
- ``chunk_stream(pieces, max_head) -> (status, consumed)``: a chunked body
  given in pieces, as the proxy reads it; by definition the whole-body decision

The head is read front to back, one byte at a time, through a ``_Reader``
that raises ``_Incomplete`` at the end of the input and ``_Reject(431)`` at
byte ``max_head + 1`` (that byte is never looked at). Every syntax rule
(rules 1 to 3) raises ``_Reject`` at the first byte that can no longer be
part of a valid head, so the first offending byte decides the status; the
rules 4 to 9 are then checked in their order on the complete head.

Readings chosen where the document leaves room (each is marked "Reading:"
where it is applied):

- ``consumed`` counts the skipped leading empty lines too (it is where the
  body starts in ``data``), and so does the ``max_head`` limit; with
  ``-1`` the result is ``(-1, 0, None)``.
- When a limit and a syntax error fall on the same byte: the byte past
  ``max_head`` is never examined (431 wins); the target byte past
  ``max_target`` is examined first (an invalid byte, or a byte that breaks
  the target's form, is 400; otherwise 414); a line starting with SP or
  HTAB is not a field (400), any other line start but CR is the first byte
  of a field (431 when ``max_fields`` fields came before it).
- A bare CR offends at the byte after it (the one that is not LF); the
  fifth leading empty line offends at its CR (nothing can make it valid).
- The target's form offends at the first byte that no valid form can
  continue (``GET f`` is already 400; ``GET *`` is 400 at the ``*``).
- ``CONNECT`` is decided (405) at the SP that ends the method; ``505`` at
  the LF that ends a well-formed request line.
- Host's reg-name may be empty, as in RFC 3986 (``Host: :80`` is valid);
  an IP-literal may not (``Host: []`` is 400).
- Field names are matched case-insensitively; several ``Connection`` or
  ``Transfer-Encoding`` fields form one comma-separated list; every
  ``Expect`` field must be exactly ``100-continue`` (two such fields are
  fine, one ``Expect: 100-continue, 100-continue`` is 417).
- Chunked: any number of extensions, RFC 9112's
  ``*( BWS ";" BWS token [ BWS "=" BWS (token / quoted-string) ] )``:
  whitespace only before ";" or around "=", never before the CRLF ("1 CRLF"
  and "1;a CRLF" with a SP after the a are 400, "1 ;a CRLF" is valid); the trailer section (after the last chunk's line,
  up to and including its final CRLF) may take at most ``max_head`` bytes,
  past it 400; at most ``MAX_TRAILER_FIELDS`` (256) trailer fields, the
  first byte of one more is 400 (as ``max_fields`` for a head); the
  forbidden trailer fields are checked once the trailer section is complete.
- Responses: the head is read in byte order like a request's (the byte past
  ``max_head`` is never examined); the status code is judged (100..599) once
  its three digits are in; at most ``MAX_RESPONSE_FIELDS`` (256) fields; the
  framing rules are checked once the head is complete. Every error is 502.
"""

from __future__ import annotations

__all__ = ["parse_request", "parse_chunked", "parse_response", "chunk_stream", "is_tchar"]

CR = 0x0D
LF = 0x0A
SP = 0x20
HTAB = 0x09

MAX_LEADING_EMPTY_LINES = 4
MAX_CHUNK_LINE = 4096
MAX_METHOD = 32
MAX_CONTENT_LENGTH_DIGITS = 18
MAX_CHUNK_SIZE_DIGITS = 16
MAX_TRAILER_FIELDS = 256
MAX_RESPONSE_FIELDS = 256

TCHAR_SYMBOLS = b"!#$%&'*+-.^_`|~"
HEXDIGITS = b"0123456789abcdefABCDEF"
REG_NAME_SYMBOLS = b"-._~!$&'()*+,;=%"


class _Incomplete(Exception):
    """The input ended before the head (or body) did, and before any error."""


class _Reject(Exception):
    """The input is invalid: ``status`` says how."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


# ---- character classes ------------------------------------------------------------------


def is_tchar(b: int) -> bool:
    """RFC 9110 token character: ``!#$%&'*+-.^_`|~``, digits, letters."""
    return (0x30 <= b <= 0x39) or (0x41 <= b <= 0x5A) or (0x61 <= b <= 0x7A) or b in TCHAR_SYMBOLS


def is_token(s: bytes) -> bool:
    return len(s) > 0 and all(is_tchar(b) for b in s)


def is_digit(b: int) -> bool:
    return 0x30 <= b <= 0x39


def is_hexdig(b: int) -> bool:
    return b in HEXDIGITS


def is_target_byte(b: int) -> bool:
    """0x21..0x7E: no SP, no CTL, no DEL, no byte >= 0x80."""
    return 0x21 <= b <= 0x7E


def is_value_byte(b: int) -> bool:
    """HTAB, SP, 0x21..0x7E and obs-text 0x80..0xFF (not NUL, other CTLs, DEL)."""
    return b == HTAB or b == SP or 0x21 <= b <= 0x7E or b >= 0x80


def is_ows(b: int) -> bool:
    return b == SP or b == HTAB


def strip_ows(s: bytes) -> bytes:
    return s.strip(b" \t")


# ---- reading bytes in order -------------------------------------------------------------------


class _Reader:
    """A cursor over ``data``. ``limit``: the index of the first byte that must
    not be reached (``max_head``); reaching it with more input is a 431."""

    def __init__(self, data: bytes, pos: int = 0, limit: int | None = None, limit_status: int = 431):
        self.data = data
        self.pos = pos
        self.limit = limit
        self.limit_status = limit_status

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise _Incomplete()
        if self.limit is not None and self.pos >= self.limit:
            # Reading: the byte past the limit is never examined, so the limit
            # wins over any syntax error of that byte.
            raise _Reject(self.limit_status)
        return self.data[self.pos]

    def take(self) -> int:
        b = self.peek()
        self.pos += 1
        return b

    def expect_lf_after_cr(self) -> None:
        """The CR just taken must be followed by LF: else it is a bare CR (400),
        offending at the byte after it."""
        if self.take() != LF:
            raise _Reject(400)

    def expect_crlf(self) -> None:
        """Exactly CRLF here: anything else (a bare LF included) is 400."""
        if self.take() != CR:
            raise _Reject(400)
        self.expect_lf_after_cr()


# ---- rule 1: leading empty lines -----------------------------------------------------------------


def _skip_leading_empty_lines(r: _Reader) -> None:
    """Up to 4 CRLF before the request line are skipped; a fifth is 400 (at its
    CR: a CR cannot start a method either). A bare LF fails at the method."""
    skipped = 0
    while r.peek() == CR:
        if skipped == MAX_LEADING_EMPTY_LINES:
            raise _Reject(400)
        r.take()
        r.expect_lf_after_cr()
        skipped += 1


# ---- rule 2: the request line ----------------------------------------------------------------------


def _read_method(r: _Reader) -> bytes:
    """1..32 tchar, then one SP. CONNECT: 405, decided at that SP."""
    method = bytearray()
    while True:
        b = r.take()
        if b == SP:
            if not method:
                raise _Reject(400)  # leading SP: an empty method
            break
        if not is_tchar(b):
            raise _Reject(400)  # TAB, CTL, obs-text, separators, CR, LF
        if len(method) == MAX_METHOD:
            raise _Reject(400)  # a 33rd method byte
        method.append(b)
    if bytes(method) == b"CONNECT":
        raise _Reject(405)  # a reverse proxy does not tunnel
    return bytes(method)


def _target_form_allows(method: bytes, target: bytes) -> bool:
    """Can a valid target start with ``target`` (the bytes so far, not empty)?

    origin-form: "/" then anything; absolute-form: "http://" or "https://"
    (case-insensitive scheme) then at least one byte; asterisk-form: "*"
    alone, only with OPTIONS.
    """
    first = target[0]
    if first == ord("/"):
        return True
    if first == ord("*"):
        return method == b"OPTIONS" and len(target) == 1
    lowered = target.lower()
    for scheme in (b"http://", b"https://"):
        n = min(len(lowered), len(scheme))
        if lowered[:n] == scheme[:n]:
            return True
    return False


def _target_form_complete(method: bytes, target: bytes) -> bool:
    """Is ``target`` (ended by its SP) one of the three forms?"""
    if not _target_form_allows(method, target):
        return False
    lowered = target.lower()
    if target[0] in b"/*":
        return True
    for scheme in (b"http://", b"https://"):
        if lowered.startswith(scheme) and len(target) > len(scheme):
            return True
    return False


def _read_target(r: _Reader, method: bytes, max_target: int) -> bytes:
    """1 or more bytes in 0x21..0x7E, then one SP. Longer than max_target: 414,
    decided at target byte max_target + 1 even before the line ends."""
    target = bytearray()
    while True:
        b = r.take()
        if b == SP:
            if not target:
                raise _Reject(400)  # two SPs after the method
            if not _target_form_complete(method, bytes(target)):
                raise _Reject(400)  # e.g. "http://" alone, "htt"
            return bytes(target)
        if not is_target_byte(b):
            raise _Reject(400)  # CTL, DEL, >= 0x80, TAB, CR, LF
        target.append(b)
        if not _target_form_allows(method, bytes(target)):
            raise _Reject(400)  # "foo", "*" with GET, "*x"
        # Reading: the byte past max_target is examined (above) before it counts.
        if len(target) > max_target:
            raise _Reject(414)


def _read_version(r: _Reader) -> int:
    """``HTTP/1.0`` -> 10, ``HTTP/1.1`` or ``HTTP/1.<other digit>`` -> 11,
    ``HTTP/<2..9>.<digit>`` -> 505, anything else 400; then CRLF. The 505 is
    decided at the LF that ends the line."""
    for expected in b"HTTP/":
        if r.take() != expected:
            raise _Reject(400)  # lower-case "http/", a second SP, ...
    major = r.take()
    if not (is_digit(major) and major != ord("0")):
        raise _Reject(400)  # "HTTP/0.9", "HTTP/x"
    if r.take() != ord("."):
        raise _Reject(400)  # "HTTP/10.0", "HTTP/2"
    minor = r.take()
    if not is_digit(minor):
        raise _Reject(400)
    r.expect_crlf()  # "HTTP/1.1x", "HTTP/1.10", "HTTP/1.1 ", a bare LF: 400
    if major != ord("1"):
        raise _Reject(505)
    return 10 if minor == ord("0") else 11


# ---- rule 3: the fields ----------------------------------------------------------------------------


def _read_fields(r: _Reader, max_fields: int | None) -> list[tuple[bytes, bytes]]:
    """``name ":" OWS value OWS CRLF`` lines up to the empty line (taken)."""
    fields: list[tuple[bytes, bytes]] = []
    while True:
        b = r.peek()
        if b == CR:
            r.take()
            r.expect_lf_after_cr()
            return fields  # the empty line: the end
        if is_ows(b):
            raise _Reject(400)  # obs-fold, or whitespace before the first field
        if max_fields is not None and len(fields) == max_fields:
            # Reading: any other line start but CR is the first byte of a field.
            raise _Reject(431)
        fields.append(_read_field_line(r))


def _read_field_line(r: _Reader) -> tuple[bytes, bytes]:
    name = bytearray()
    while True:
        b = r.take()
        if b == ord(":"):
            if not name:
                raise _Reject(400)  # empty name
            break
        if not is_tchar(b):
            raise _Reject(400)  # SP/HTAB before the colon, no colon (CR, LF), bad byte
        name.append(b)
    value = bytearray()
    while True:
        b = r.take()
        if b == CR:
            r.expect_lf_after_cr()
            break
        if not is_value_byte(b):
            raise _Reject(400)  # NUL, other CTLs, DEL, a bare LF
        value.append(b)
    return bytes(name), strip_ows(bytes(value))


# ---- rules 4 to 9: the complete head ------------------------------------------------------------------


def _values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """The values of every field called ``name`` (case-insensitive), in order."""
    return [value for field_name, value in fields if field_name.lower() == name]


def _list_elements(values: list[bytes]) -> list[bytes]:
    """Several fields form one comma-separated list; OWS around commas and empty
    elements are dropped; the elements are lower-cased (compared case-insensitively)."""
    elements = []
    for value in values:
        for element in value.split(b","):
            element = strip_ows(element)
            if element:
                elements.append(element.lower())
    return elements


def _valid_host(value: bytes) -> bool:
    """Empty, or ``host [":" port]``: host a reg-name (letters, digits,
    ``-._~!$&'()*+,;=%``) or an IP-literal ``[...]`` of hex digits, ":" and
    "."; port 1..5 digits. Reading: the reg-name may be empty (RFC 3986),
    the IP-literal not."""
    if value == b"":
        return True
    if value.startswith(b"["):
        close = value.find(b"]")
        if close < 0:
            return False
        inside, rest = value[1:close], value[close + 1 :]
        if not inside or not all(is_hexdig(b) or b in b":." for b in inside):
            return False
    else:
        host, colon, port = value.partition(b":")
        if not all(is_digit(b) or (0x41 <= b <= 0x5A) or (0x61 <= b <= 0x7A) or b in REG_NAME_SYMBOLS for b in host):
            return False
        rest = colon + port
    if rest == b"":
        return True
    port = rest[1:]
    return rest[:1] == b":" and 1 <= len(port) <= 5 and all(is_digit(b) for b in port)


def _check_head(method: bytes, target: bytes, version: int, fields: list[tuple[bytes, bytes]]) -> dict:
    """Rules 4 to 9, in order; the first that fails raises its status."""
    # 4. Host
    hosts = _values(fields, b"host")
    if version == 11 and len(hosts) != 1:
        raise _Reject(400)
    if version == 10 and len(hosts) > 1:
        raise _Reject(400)
    host = hosts[0] if hosts else None
    if host is not None and not _valid_host(host):
        raise _Reject(400)

    # 5. Content-Length
    lengths = _values(fields, b"content-length")
    content_length = None
    for value in lengths:
        if not (1 <= len(value) <= MAX_CONTENT_LENGTH_DIGITS and all(is_digit(b) for b in value)):
            raise _Reject(400)
    if len(lengths) >= 2:
        raise _Reject(400)
    if lengths:
        content_length = int(lengths[0])

    # 6. Transfer-Encoding
    encodings = _values(fields, b"transfer-encoding")
    chunked = False
    if encodings:
        if version == 10:
            raise _Reject(400)
        if lengths:
            raise _Reject(400)
        codings = _list_elements(encodings)
        if not codings:
            raise _Reject(400)
        if any(coding != b"chunked" for coding in codings):
            raise _Reject(501)  # parameters (";...") make a coding unknown too
        if len(codings) > 1:
            raise _Reject(400)  # "chunked" more than once (being the only coding, it is last)
        chunked = True

    # 7. Connection
    tokens = _list_elements(_values(fields, b"connection"))
    close = b"close" in tokens
    keep_alive_token = b"keep-alive" in tokens
    upgrade_token = b"upgrade" in tokens
    keep_alive = (version == 11 and not close) or (version == 10 and keep_alive_token and not close)

    # 8. Expect
    expects = _values(fields, b"expect")
    expect_continue = False
    if expects:
        # Reading: each Expect field is exactly 100-continue.
        if any(value.lower() != b"100-continue" for value in expects):
            raise _Reject(417)
        expect_continue = True

    # 9. Upgrade
    upgrade = upgrade_token and bool(_values(fields, b"upgrade"))

    return {
        "method": method,
        "target": target,
        "version": version,
        "host": host,
        "content_length": content_length,
        "chunked": chunked,
        "keep_alive": keep_alive,
        "upgrade": upgrade,
        "expect_continue": expect_continue,
        "fields": fields,
    }


# ---- the request head ------------------------------------------------------------------------------


def parse_request(
    data: bytes, max_target: int = 8192, max_head: int = 16384, max_fields: int = 100
) -> tuple[int, int, dict | None]:
    """``(0, consumed, info)``, ``(-1, 0, None)`` or ``(status, 0, None)``."""
    data = bytes(data)
    r = _Reader(data, limit=max_head, limit_status=431)
    try:
        _skip_leading_empty_lines(r)
        method = _read_method(r)
        target = _read_target(r, method, max_target)
        version = _read_version(r)
        fields = _read_fields(r, max_fields)
        info = _check_head(method, target, version, fields)
    except _Incomplete:
        return -1, 0, None
    except _Reject as e:
        return e.status, 0, None
    return 0, r.pos, info


# ---- chunked bodies ---------------------------------------------------------------------------------


def _read_chunk_size(r: _Reader) -> int:
    """1..16 HEXDIG."""
    digits = bytearray()
    while is_hexdig(r.peek()):
        if len(digits) == MAX_CHUNK_SIZE_DIGITS:
            raise _Reject(400)  # a 17th digit
        digits.append(r.take())
    if not digits:
        raise _Reject(400)  # empty, "-1", "x", " 1"
    return int(digits, 16)


def _read_token(r: _Reader) -> None:
    if not is_tchar(r.take()):
        raise _Reject(400)
    while is_tchar(r.peek()):
        r.take()


def _skip_ows(r: _Reader) -> None:
    while is_ows(r.peek()):
        r.take()


def _read_quoted_string(r: _Reader) -> None:
    """DQUOTE *( qdtext / quoted-pair ) DQUOTE (RFC 9110 5.6.4); the opening
    DQUOTE is already taken."""
    while True:
        b = r.take()
        if b == ord('"'):
            return
        if b == ord("\\"):
            escaped = r.take()
            if not (escaped == HTAB or escaped == SP or 0x21 <= escaped <= 0x7E or escaped >= 0x80):
                raise _Reject(400)
        elif not (b == HTAB or b == SP or b == 0x21 or 0x23 <= b <= 0x5B or 0x5D <= b <= 0x7E or b >= 0x80):
            raise _Reject(400)


def _read_chunk_extensions_and_crlf(r: _Reader) -> None:
    """``*( BWS ";" BWS token [ BWS "=" BWS (token / quoted-string) ] ) CRLF``
    (RFC 9112 7.1.1): whitespace only before a ";" or around "="; before the
    CRLF (after the size, a name or a value) it is 400."""
    ws = False
    while True:
        if is_ows(r.peek()):
            ws = True
            _skip_ows(r)
        b = r.take()
        if b == CR:
            if ws:
                raise _Reject(400)  # "1 CRLF", "1;a CRLF" with a SP after the a
            r.expect_lf_after_cr()
            return
        if b != ord(";"):
            raise _Reject(400)  # a bare LF, any other byte
        _skip_ows(r)
        _read_token(r)
        ws = is_ows(r.peek())
        _skip_ows(r)
        if r.peek() == ord("="):
            r.take()
            _skip_ows(r)
            if r.peek() == ord('"'):
                r.take()
                _read_quoted_string(r)
            else:
                _read_token(r)
            ws = False


def parse_chunked(data: bytes, max_head: int = 16384) -> tuple[int, int, bytes, list]:
    """``(0, consumed, body, trailers)``, ``(-1, 0, b"", [])`` or ``(400, 0, b"", [])``."""
    data = bytes(data)
    r = _Reader(data)
    body = bytearray()
    try:
        while True:
            # a chunk line (size, extensions, CRLF) takes at most MAX_CHUNK_LINE
            # bytes before its CRLF; reaching past that with more input: 400
            line = _Reader(data, r.pos, limit=r.pos + MAX_CHUNK_LINE + 2, limit_status=400)
            size = _read_chunk_size(line)
            _read_chunk_extensions_and_crlf(line)
            r.pos = line.pos
            if size == 0:
                break
            if len(data) - r.pos < size:
                raise _Incomplete()
            body += data[r.pos : r.pos + size]
            r.pos += size
            r.expect_crlf()
        # The trailer section follows rule 3 and counts toward max_head; past
        # it, 400 (the body's only error status).
        trailer_reader = _Reader(data, r.pos, limit=r.pos + max_head, limit_status=400)
        trailers = _read_fields(trailer_reader, MAX_TRAILER_FIELDS)  # its 431 is a 400 here
        for name, _value in trailers:
            if name.lower() in (b"content-length", b"transfer-encoding", b"host"):
                raise _Reject(400)
    except _Incomplete:
        return -1, 0, b"", []
    except _Reject:
        return 400, 0, b"", []
    return 0, trailer_reader.pos, bytes(body), trailers


def chunk_stream(pieces, max_head: int = 16384) -> tuple[int, int]:
    """A chunked body read in ``pieces``: ``(0, consumed)`` once complete,
    ``(-1, 0)`` when the pieces end first, ``(400, 0)``. However the body is
    split, the decision is the whole body's (``parse_chunked``)."""
    status, consumed, _body, _trailers = parse_chunked(b"".join(bytes(p) for p in pieces), max_head)
    return status, consumed


# ---- responses ------------------------------------------------------------------------------------


def _read_status_line(r: _Reader) -> tuple[int, int, bytes]:
    """``HTTP/1.<digit> SP <3 digits> [SP reason] CRLF`` -> (version, status, reason).

    ``HTTP/1.0`` is version 10, any other minor digit 11. The status is
    100..599, judged once its three digits are in. The reason is every byte
    up to the CR (HTAB, SP, visible, obs-text; no other CTL, no DEL), kept
    as sent; without it the code is followed by CRLF at once."""
    for expected in b"HTTP/1.":
        if r.take() != expected:
            raise _Reject(502)  # "http/1.1", "HTTP/2.0", "HTTP/1,1"
    minor = r.take()
    if not is_digit(minor):
        raise _Reject(502)
    if r.take() != SP:
        raise _Reject(502)
    code = 0
    for _ in range(3):
        d = r.take()
        if not is_digit(d):
            raise _Reject(502)  # "20 OK", "2x0"
        code = code * 10 + d - 0x30
    if not 100 <= code <= 599:
        raise _Reject(502)
    reason = bytearray()
    b = r.take()
    if b == SP:
        while True:
            b = r.take()
            if b == CR:
                break
            if (b < 0x20 and b != HTAB) or b == 0x7F:
                raise _Reject(502)  # NUL, a bare LF, other CTLs, DEL
            reason.append(b)
    elif b != CR:
        raise _Reject(502)  # "2000", "200\n", "200\t"
    r.expect_lf_after_cr()
    return (10 if minor == ord("0") else 11), code, bytes(reason)


def _check_response_framing(version: int, fields: list[tuple[bytes, bytes]]) -> dict:
    """RFC 9112 6.3, strictly: anything two parsers could frame apart is 502.

    At most one ``Content-Length``, of 1..18 digits. ``Transfer-Encoding``
    (all its fields one list) never with ``Content-Length``, not empty,
    ``chunked`` at most once and then last; other codings are allowed (the
    body then runs until the backend closes, so the connection is not kept).
    """
    lengths = _values(fields, b"content-length")
    if len(lengths) > 1:
        raise _Reject(502)
    for value in lengths:
        if not (1 <= len(value) <= MAX_CONTENT_LENGTH_DIGITS and all(is_digit(b) for b in value)):
            raise _Reject(502)
    encodings = _values(fields, b"transfer-encoding")
    chunked = False
    close = False
    if encodings:
        codings = _list_elements(encodings)
        if lengths or not codings:
            raise _Reject(502)
        n_chunked = codings.count(b"chunked")
        if n_chunked > 1 or (n_chunked == 1 and codings[-1] != b"chunked"):
            raise _Reject(502)
        chunked = n_chunked == 1
        close = not chunked  # delimited by close
    tokens = _list_elements(_values(fields, b"connection"))
    close = close or b"close" in tokens
    return {
        "version": version,
        "keep_alive": not close and (version == 11 or b"keep-alive" in tokens),
        "chunked": chunked,
        "content_length": int(lengths[0]) if lengths else None,
    }


def parse_response(data: bytes, max_head: int = 65536) -> tuple[int, int, dict | None]:
    """``(0, consumed, info)``, ``(-1, 0, None)`` or ``(502, 0, None)``.

    ``info``: ``status``, ``reason``, ``version`` (10 or 11), ``keep_alive``,
    ``chunked``, ``content_length`` (int or None), ``fields`` (as for
    requests: values without surrounding whitespace). The head must end within
    ``max_head`` bytes; fields follow rule 3, at most ``MAX_RESPONSE_FIELDS``."""
    data = bytes(data)
    r = _Reader(data, limit=max_head, limit_status=502)
    try:
        version, code, reason = _read_status_line(r)
        fields = _read_fields(r, MAX_RESPONSE_FIELDS)
        info = _check_response_framing(version, fields)
    except _Incomplete:
        return -1, 0, None
    except _Reject:
        return 502, 0, None
    return 0, r.pos, {"status": code, "reason": reason, **info, "fields": fields}
