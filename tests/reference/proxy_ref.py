"""The pure-Python reference of the PROXY protocol header (HAProxy's
doc/proxy-protocol.txt), with the readings lb/fastpath/proxy_proto.pxi lists.

Two functions, the same API as the compiled wrappers in ``lb._fastpath``:

- ``build(version, src_ip, src_port, dst_ip, dst_port) -> bytes``
  (``proxy_header``): version 1 or 2; an ip of None is no address at all.
- ``parse(data) -> (status, consumed, src, dst)`` (``proxy_parse_header``):
  status 0 done, -1 incomplete (``data`` is a prefix of a valid header), -2
  invalid; ``src``/``dst`` are ``(ip, port)`` or None ("keep the real peer").

Written the other way round from the compiled parser: v1 is split into its
space-separated fields, every field followed by a space is judged whole
(regular expressions, ``ipaddress``), and the last one as a prefix. The grammar
of a dotted quad and of a port is closed under prefixes (every prefix of a
valid one, "" aside, is valid), so a prefix is fine when it matches the whole
grammar or is empty. IPv6 text is judged only whole: before its SP, any 45
bytes of hex digits, ':' and '.' may still become one.
"""

from __future__ import annotations

import ipaddress
import re
import socket

INCOMPLETE = -1
INVALID = -2
V1_MAX = 107
V2_MAX_LEN = 536
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_PORT = rb"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
IP4_WHOLE = re.compile(rb"(?:%s\.){3}%s" % (_OCTET, _OCTET))
IP4_PREFIX = re.compile(rb"(?:%s\.){0,3}%s?" % (_OCTET, _OCTET))
IP6_CHARS = re.compile(rb"[0-9A-Fa-f:.]{0,45}")
PORT_WHOLE = re.compile(_PORT)
PORT_PREFIX = re.compile(_PORT + rb"?")
LAST_FIELD = re.compile(rb"(%s)(\r\n|\r)?" % _PORT)     # the destination port and the CRLF


class _Invalid(Exception):
    pass


class _Incomplete(Exception):
    pass


def _addr(ip: str | None, port: int) -> tuple[int, bytes, int] | None:
    if ip is None:
        return None
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return family, socket.inet_pton(family, ip), port


def _text(family: int, packed: bytes) -> str:
    return socket.inet_ntop(family, packed)


def build(version: int | str, src_ip: str | None, src_port: int, dst_ip: str | None, dst_port: int) -> bytes:
    version = {"v1": 1, "v2": 2}.get(version, version)
    src, dst = _addr(src_ip, src_port), _addr(dst_ip, dst_port)
    known = src is not None and dst is not None and src[0] == dst[0]
    if version == 1:
        if not known:
            return b"PROXY UNKNOWN\r\n"
        proto = "TCP4" if src[0] == socket.AF_INET else "TCP6"
        line = f"PROXY {proto} {_text(src[0], src[1])} {_text(dst[0], dst[1])} {src[2]} {dst[2]}\r\n"
        return line.encode()
    if version != 2:
        raise ValueError(f"unknown PROXY protocol version {version!r}")
    if not known:
        return SIGNATURE + bytes([0x21, 0x00]) + (0).to_bytes(2, "big")
    block = src[1] + dst[1] + src[2].to_bytes(2, "big") + dst[2].to_bytes(2, "big")
    family = 0x11 if src[0] == socket.AF_INET else 0x21
    return SIGNATURE + bytes([0x21, family]) + len(block).to_bytes(2, "big") + block


# ---- v1 ------------------------------------------------------------------------


def _literal_prefix(got: bytes, literal: bytes) -> None:
    """got must be literal, or (at the end of the input) a prefix of it."""
    if not literal.startswith(got[: len(literal)]):
        raise _Invalid
    if len(got) < len(literal):
        raise _Incomplete


def _ip6_whole(field: bytes) -> bytes:
    if not field or not IP6_CHARS.fullmatch(field):
        raise _Invalid
    try:
        return ipaddress.IPv6Address(field.decode()).packed
    except ValueError:
        raise _Invalid from None


def _v1_unknown(rest: bytes) -> int:
    """rest follows "PROXY "; returns the length of the line after it."""
    _literal_prefix(rest, b"UNKNOWN")
    tail = rest[7:]
    if not tail:
        raise _Incomplete
    if tail[:1] == b" ":
        ends = [i for i in (tail.find(b"\r"), tail.find(b"\n")) if i >= 0]
        if not ends:
            raise _Incomplete
        end = min(ends)
        if tail[end:end + 1] == b"\n":
            raise _Invalid
        tail_crlf = tail[end:]
        _literal_prefix(tail_crlf, b"\r\n")
        return 7 + end + 2
    _literal_prefix(tail, b"\r\n")
    return 7 + 2


def _v1(line: bytes):
    _literal_prefix(line, b"PROXY ")
    rest = line[6:]
    if not rest:
        raise _Incomplete
    if rest[:1] == b"U":
        return 6 + _v1_unknown(rest), None, None
    # protocol, source, destination, source port, and "destination port CRLF ..."
    *whole, last = rest.split(b" ", 4)
    family = _v1_protocol(whole[0] if whole else last, whole=bool(whole))
    values = []
    for index, field in enumerate(whole[1:], start=1):
        values.append(_v1_address(family, field, True) if index < 3 else _v1_port(field, True))
    if len(whole) < 4:
        if 1 <= len(whole) < 3:
            _v1_address(family, last, whole=False)
        elif len(whole) == 3:
            _v1_port(last, whole=False)
        raise _Incomplete
    m = LAST_FIELD.match(last)
    if not m:
        if last:
            raise _Invalid
        raise _Incomplete
    if m.group(2) != b"\r\n":
        if m.end() < len(last):
            raise _Invalid    # after the digits, a byte that is not CR, or after CR one that is not LF
        raise _Incomplete
    consumed = 6 + len(rest) - len(last) + m.end()
    src = (_text(family, values[0]), values[2])
    dst = (_text(family, values[1]), int(m.group(1)))
    return consumed, src, dst


def _v1_protocol(field: bytes, whole: bool) -> int:
    for name, family in ((b"TCP4", socket.AF_INET), (b"TCP6", socket.AF_INET6)):
        if field == name:
            return family
        if not whole and name.startswith(field):
            return family
    raise _Invalid


def _v1_address(family: int, field: bytes, whole: bool) -> bytes:
    if family == socket.AF_INET:
        if whole:
            if not IP4_WHOLE.fullmatch(field):
                raise _Invalid
            return socket.inet_aton(field.decode())
        if not IP4_PREFIX.fullmatch(field):
            raise _Invalid
        return b""
    if whole:
        return _ip6_whole(field)
    if not IP6_CHARS.fullmatch(field):
        raise _Invalid
    return b""


def _v1_port(field: bytes, whole: bool) -> int:
    if not (PORT_WHOLE if whole else PORT_PREFIX).fullmatch(field):
        raise _Invalid
    return int(field) if field else 0


def _parse_v1(data: bytes):
    try:
        consumed, src, dst = _v1(data[:V1_MAX])
    except _Invalid:
        return INVALID, 0, None, None
    except _Incomplete:
        # the line must end within 107 bytes
        return (INVALID if len(data) >= V1_MAX else INCOMPLETE), 0, None, None
    return 0, consumed, src, dst


# ---- v2 ------------------------------------------------------------------------

# the family byte: (family, address block length) for the PROXY command
V2_FAMILIES = {0x00: (None, 0), 0x11: (socket.AF_INET, 12), 0x21: (socket.AF_INET6, 36), 0x31: (None, 216)}


def _parse_v2(data: bytes):
    if not SIGNATURE.startswith(data[:12]):
        return INVALID, 0, None, None
    if len(data) < 13:
        return INCOMPLETE, 0, None, None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command not in (0, 1):
        return INVALID, 0, None, None
    if len(data) < 14:
        return INCOMPLETE, 0, None, None
    if command == 1 and data[13] not in V2_FAMILIES:
        return INVALID, 0, None, None
    if len(data) < 16:
        return INCOMPLETE, 0, None, None
    length = int.from_bytes(data[14:16], "big")
    family, minimum = V2_FAMILIES[data[13]] if command == 1 else (None, 0)
    if length > V2_MAX_LEN or length < minimum:
        return INVALID, 0, None, None
    if len(data) < 16 + length:
        return INCOMPLETE, 0, None, None
    if family is None:
        return 0, 16 + length, None, None
    size = 4 if family == socket.AF_INET else 16
    block = data[16:16 + length]
    src_ip, dst_ip = block[:size], block[size:2 * size]
    src_port = int.from_bytes(block[2 * size:2 * size + 2], "big")
    dst_port = int.from_bytes(block[2 * size + 2:2 * size + 4], "big")
    return 0, 16 + length, (_text(family, src_ip), src_port), (_text(family, dst_ip), dst_port)


def parse(data: bytes):
    data = bytes(data)
    if not data:
        return INCOMPLETE, 0, None, None
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    return INVALID, 0, None, None
