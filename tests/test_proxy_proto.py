"""The PROXY protocol header (lb/fastpath/proxy_proto.pxi): the compiled code against the reference.

Every table runs on both implementations (ids ``py``: tests/reference/proxy_ref.py;
``c``: ``lb._fastpath``'s ``proxy_header`` / ``proxy_parse_header``, the code the
workers run), and hypothesis compares the two on generated input, valid and
invalid mixed. Without the compiled functions every ``c`` test fails.
"""

from __future__ import annotations

import ipaddress
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import proxy_ref

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
DONE, INCOMPLETE, INVALID = 0, -1, -2


def _compiled():
    import lb._fastpath as fastpath

    for name in ("proxy_header", "proxy_parse_header"):
        if not hasattr(fastpath, name):
            pytest.fail(f"lb._fastpath has no {name}: the compiled PROXY protocol code is not built")
    return types.SimpleNamespace(build=fastpath.proxy_header, parse=fastpath.proxy_parse_header)


@pytest.fixture(params=["py", "c"])
def impl(request):
    if request.param == "py":
        return proxy_ref
    return _compiled()


def v2(command: int, family: int, block: bytes, length: int | None = None, version: int = 2) -> bytes:
    n = len(block) if length is None else length
    return SIG + bytes([(version << 4) | command, family]) + n.to_bytes(2, "big") + block


V4_BLOCK = bytes([192, 0, 2, 7, 10, 0, 0, 1]) + (51000).to_bytes(2, "big") + (443).to_bytes(2, "big")
V6_BLOCK = (ipaddress.IPv6Address("2001:db8::7").packed + ipaddress.IPv6Address("2001:db8::1").packed
            + (1).to_bytes(2, "big") + (65535).to_bytes(2, "big"))
TLV = bytes([0x04, 0x00, 0x03]) + b"abc"   # PP2_TYPE_NOOP with 3 bytes
LONGEST_V6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

# (id, header, (consumed, src, dst)); every case is also run with bytes after it
VALID = [
    ("v1-tcp4", b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n", (("192.0.2.7", 51000), ("10.0.0.1", 443))),
    ("v1-tcp4-port-bounds", b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
     (("0.0.0.0", 0), ("255.255.255.255", 65535))),
    ("v1-tcp4-zero-octets", b"PROXY TCP4 10.0.100.0 1.20.0.9 9 10\r\n", (("10.0.100.0", 9), ("1.20.0.9", 10))),
    ("v1-tcp6", b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n", (("2001:db8::7", 1), ("2001:db8::1", 65535))),
    ("v1-tcp6-longest", f"PROXY TCP6 {LONGEST_V6} {LONGEST_V6} 65535 65535\r\n".encode(),
     ((LONGEST_V6, 65535), (LONGEST_V6, 65535))),
    ("v1-tcp6-upper-and-mapped", b"PROXY TCP6 2001:DB8:0:0::7 ::ffff:192.0.2.7 80 8080\r\n",
     (("2001:db8::7", 80), ("::ffff:192.0.2.7", 8080))),
    ("v1-tcp6-loopback", b"PROXY TCP6 ::1 :: 5 6\r\n", (("::1", 5), ("::", 6))),
    ("v1-unknown", b"PROXY UNKNOWN\r\n", (None, None)),
    ("v1-unknown-with-addresses", b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n", (None, None)),
    ("v1-unknown-anything", b"PROXY UNKNOWN \x00\xff anything at all  \t\r\n", (None, None)),
    ("v1-unknown-107-bytes", b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n", (None, None)),
    ("v2-tcp4", v2(1, 0x11, V4_BLOCK), (("192.0.2.7", 51000), ("10.0.0.1", 443))),
    ("v2-tcp6", v2(1, 0x21, V6_BLOCK), (("2001:db8::7", 1), ("2001:db8::1", 65535))),
    ("v2-tcp4-tlvs", v2(1, 0x11, V4_BLOCK + TLV), (("192.0.2.7", 51000), ("10.0.0.1", 443))),
    ("v2-tcp6-tlvs", v2(1, 0x21, V6_BLOCK + TLV + TLV), (("2001:db8::7", 1), ("2001:db8::1", 65535))),
    ("v2-local", v2(0, 0x00, b""), (None, None)),
    ("v2-local-ignores-the-block", v2(0, 0x11, V4_BLOCK), (None, None)),
    ("v2-local-ignores-the-family", v2(0, 0xFF, b"xyz"), (None, None)),
    ("v2-unspec", v2(1, 0x00, b""), (None, None)),
    ("v2-unspec-with-bytes", v2(1, 0x00, b"ignored"), (None, None)),
    ("v2-unix-stream", v2(1, 0x31, b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")), (None, None)),
    ("v2-longest", v2(1, 0x11, V4_BLOCK + b"\0" * (536 - 12)), (("192.0.2.7", 51000), ("10.0.0.1", 443))),
]


@pytest.mark.parametrize("name,header,addrs", VALID, ids=[c[0] for c in VALID])
def test_valid_header(impl, name, header, addrs):
    for after in (b"", b"GET / HTTP/1.1\r\n", b"\r\n\r\n\x00", SIG):
        assert impl.parse(header + after) == (DONE, len(header), *addrs)


@pytest.mark.parametrize("name,header,addrs", VALID, ids=[c[0] for c in VALID])
def test_every_prefix_of_a_valid_header_is_incomplete(impl, name, header, addrs):
    for n in range(len(header)):
        assert impl.parse(header[:n]) == (INCOMPLETE, 0, None, None), header[:n]


def test_v1_length_limit_to_the_byte(impl):
    line = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(line) == 107 and impl.parse(line)[0] == DONE
    longer = b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"
    assert impl.parse(longer[:106]) == (INCOMPLETE, 0, None, None)
    assert impl.parse(longer[:107])[0] == INVALID   # byte 107 is not the LF: no room left for it
    assert impl.parse(b"PROXY UNKNOWN " + b"x" * 200)[0] == INVALID


def test_v2_length_cap(impl):
    """v2's length field is capped at 536 (a header of at most 552 bytes)."""
    assert impl.parse(v2(1, 0x00, b"\0" * 536))[:2] == (DONE, 552)
    assert impl.parse(v2(1, 0x00, b"", length=537))[0] == INVALID
    assert impl.parse(v2(1, 0x00, b"", length=0xFFFF))[0] == INVALID


T4 = b"PROXY TCP4 "
T6 = b"PROXY TCP6 "
# (id, bytes, decided at): the shortest prefix that is invalid; every shorter one is incomplete
MALFORMED = [
    ("first-byte-x", b"X", 1),
    ("http-request", b"GET / HTTP/1.1\r\n", 1),
    ("lower-case-proxy", b"proxy TCP4 ", 1),
    ("tls-hello", b"\x16\x03\x01\x02\x00", 1),
    ("nul", b"\x00", 1),
    ("proxy-no-space", b"PROXYTCP4", 6),
    ("proxy-double-space", b"PROXY  TCP4", 7),
    ("proxy-tab", b"PROXY\tTCP4", 6),
    ("protocol-lower", b"PROXY tcp4 ", 7),
    ("protocol-tcp5", b"PROXY TCP5 ", 10),
    ("protocol-udp4", b"PROXY UDP4 ", 8),
    ("protocol-no-space", b"PROXY TCP41.2.3.4", 11),
    ("unknown-suffix", b"PROXY UNKNOWNX\r\n", 14),
    ("unknown-lf-only", b"PROXY UNKNOWN\n", 14),
    ("unknown-cr-cr", b"PROXY UNKNOWN\r\r\n", 15),
    ("unknown-lf-in-rest", b"PROXY UNKNOWN a\nb\r\n", 16),
    ("unknown-lower", b"PROXY unknown\r\n", 7),
    ("address-double-space", T4 + b"1.2.3.4  5.6.7.8 1 2\r\n", 20),
    ("address-leading-zero", T4 + b"01.2.3.4 5.6.7.8 1 2\r\n", 13),
    ("address-leading-zeros-later", T4 + b"1.2.3.004 5.6.7.8 1 2\r\n", 19),
    ("address-octet-256", T4 + b"1.2.3.256 5.6.7.8 1 2\r\n", 20),
    ("address-octet-1000", T4 + b"1000.2.3.4 5.6.7.8 1 2\r\n", 15),
    ("address-three-octets", T4 + b"1.2.3 5.6.7.8 1 2\r\n", 17),
    ("address-five-octets", T4 + b"1.2.3.4.5 5.6.7.8 1 2\r\n", 19),
    ("address-empty-octet", T4 + b"1..3.4 5.6.7.8 1 2\r\n", 14),
    ("address-trailing-dot", T4 + b"1.2.3. 5.6.7.8 1 2\r\n", 18),
    ("address-empty", T4 + b" 5.6.7.8 1 2\r\n", 12),
    ("address-hostname", T4 + b"localhost 5.6.7.8 1 2\r\n", 12),
    ("address-ipv6-in-tcp4", T4 + b"::1 ::1 1 2\r\n", 12),
    ("address-ipv4-in-tcp6", T6 + b"1.2.3.4 5.6.7.8 1 2\r\n", 19),
    ("address-ipv6-triple-colon", T6 + b"::: ::1 1 2\r\n", 15),
    ("address-ipv6-two-gaps", T6 + b"1::2::3 ::1 1 2\r\n", 19),
    ("address-ipv6-five-digits", T6 + b"12345::1 ::1 1 2\r\n", 20),
    ("address-ipv6-nine-groups", T6 + b"1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", 29),
    ("address-ipv6-zone", T6 + b"fe80::1%eth0 ::1 1 2\r\n", 19),
    ("address-ipv6-46-bytes", T6 + b"0" * 46, 57),
    ("address-ipv6-leading-zero-v4", T6 + b"::ffff:1.2.3.04 ::1 1 2\r\n", 27),
    ("address-missing-destination", T4 + b"1.2.3.4 1 2\r\n", 21),
    ("port-leading-zero", T4 + b"1.2.3.4 5.6.7.8 080 2\r\n", 29),
    ("port-double-zero", T4 + b"1.2.3.4 5.6.7.8 1 00\r\n", 31),
    ("port-65536", T4 + b"1.2.3.4 5.6.7.8 65536 2\r\n", 32),
    ("port-99999", T4 + b"1.2.3.4 5.6.7.8 1 99999\r\n", 34),
    ("port-six-digits", T4 + b"1.2.3.4 5.6.7.8 1 100000\r\n", 35),
    ("port-negative", T4 + b"1.2.3.4 5.6.7.8 -1 2\r\n", 28),
    ("port-plus", T4 + b"1.2.3.4 5.6.7.8 1 +2\r\n", 30),
    ("port-hex", T4 + b"1.2.3.4 5.6.7.8 0x50 2\r\n", 29),
    ("port-empty", T4 + b"1.2.3.4 5.6.7.8  2\r\n", 28),
    ("port-missing", T4 + b"1.2.3.4 5.6.7.8 1\r\n", 29),
    ("port-extra-field", T4 + b"1.2.3.4 5.6.7.8 1 2 3\r\n", 31),
    ("crlf-missing-lf-only", T4 + b"1.2.3.4 5.6.7.8 1 2\n", 31),
    ("crlf-cr-cr", T4 + b"1.2.3.4 5.6.7.8 1 2\r\r", 32),
    ("crlf-trailing-space", T4 + b"1.2.3.4 5.6.7.8 1 2 \r\n", 31),
    ("crlf-tab", T4 + b"1.2.3.4 5.6.7.8 1 2\t\r\n", 31),
    ("v1-too-long", b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", 107),
    ("v1-too-long-no-crlf", b"PROXY UNKNOWN " + b"y" * 300, 107),
    ("v2-signature-first-bytes", b"\r\n\r\r", 4),
    ("v2-signature-nul", b"\r\n\r\n\x01", 5),
    ("v2-signature-quit", b"\r\n\r\n\x00\r\nQUIT\r", 12),
    ("v2-version-1", v2(1, 0x11, V4_BLOCK, version=1), 13),
    ("v2-version-3", v2(1, 0x11, V4_BLOCK, version=3), 13),
    ("v2-version-0", v2(1, 0x11, V4_BLOCK, version=0), 13),
    ("v2-command-2", v2(2, 0x11, V4_BLOCK), 13),
    ("v2-command-f", v2(15, 0x11, V4_BLOCK), 13),
    ("v2-udp4", v2(1, 0x12, V4_BLOCK), 14),
    ("v2-udp6", v2(1, 0x22, V6_BLOCK), 14),
    ("v2-unix-dgram", v2(1, 0x32, b"\0" * 216), 14),
    ("v2-family-4", v2(1, 0x41, V4_BLOCK), 14),
    ("v2-transport-3", v2(1, 0x13, V4_BLOCK), 14),
    ("v2-inet-no-transport", v2(1, 0x10, V4_BLOCK), 14),
    ("v2-inet-short", v2(1, 0x11, V4_BLOCK[:11]), 16),
    ("v2-inet6-short", v2(1, 0x21, V6_BLOCK[:35]), 16),
    ("v2-inet6-with-inet-length", v2(1, 0x21, V4_BLOCK), 16),
    ("v2-unix-short", v2(1, 0x31, b"\0" * 215), 16),
    ("v2-length-537", v2(1, 0x00, b"\0" * 537), 16),
    ("v2-length-max", v2(1, 0x00, b"", length=0xFFFF), 16),
]


def test_malformed_table_is_distinct():
    assert len({case[1] for case in MALFORMED}) == len(MALFORMED)
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize("name,data,at", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_header_is_invalid_at_its_first_offending_byte(impl, name, data, at):
    assert impl.parse(data) == (INVALID, 0, None, None)
    for n in range(len(data) + 1):
        want = INVALID if n >= at else INCOMPLETE
        assert impl.parse(data[:n]) == (want, 0, None, None), (n, data[:n])


def test_truncated_v2_is_incomplete(impl):
    for header in (v2(1, 0x11, V4_BLOCK), v2(1, 0x21, V6_BLOCK + TLV), v2(0, 0x00, b"\0" * 536)):
        for n in range(len(header)):
            assert impl.parse(header[:n])[0] == INCOMPLETE


# ---- building ---------------------------------------------------------------------------

BUILD = [
    (1, ("192.0.2.7", 51000, "10.0.0.1", 443), b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n"),
    (1, ("2001:db8::7", 1, "2001:db8::1", 65535), b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n"),
    (1, ("2001:DB8:0::7", 1, "::1", 0), b"PROXY TCP6 2001:db8::7 ::1 1 0\r\n"),
    (1, ("192.0.2.7", 1, "::1", 2), b"PROXY UNKNOWN\r\n"),
    (1, (None, 0, None, 0), b"PROXY UNKNOWN\r\n"),
    (2, ("192.0.2.7", 51000, "10.0.0.1", 443), v2(1, 0x11, V4_BLOCK)),
    (2, ("2001:db8::7", 1, "2001:db8::1", 65535), v2(1, 0x21, V6_BLOCK)),
    (2, ("::1", 1, "127.0.0.1", 2), v2(1, 0x00, b"")),
    ("v2", (None, 0, "127.0.0.1", 2), v2(1, 0x00, b"")),
]


@pytest.mark.parametrize("version,addrs,header", BUILD)
def test_build(impl, version, addrs, header):
    assert impl.build(version, *addrs) == header


def test_build_rejects_unknown_version():
    with pytest.raises((ValueError, TypeError)):
        _compiled().build(3, "1.2.3.4", 1, "1.2.3.4", 2)
    with pytest.raises(ValueError):
        _compiled().build(1, "not-an-ip", 1, "1.2.3.4", 2)


# ---- generated input ---------------------------------------------------------------------

ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.one_of(
    st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1)),
    st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**32)),            # ::a.b.c.d, ::x
    st.builds(lambda n: "::ffff:" + str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1)),
    st.builds(lambda n: ipaddress.IPv6Address(n).exploded, st.integers(0, 2**128 - 1)),
)
ports = st.one_of(st.integers(0, 65535), st.sampled_from([0, 1, 9, 10, 99, 100, 65535]))
endpoints = st.one_of(
    st.tuples(ipv4, ports, ipv4, ports),
    st.tuples(ipv6, ports, ipv6, ports),
    st.tuples(st.one_of(ipv4, ipv6, st.none()), ports, st.one_of(ipv4, ipv6, st.none()), ports),
)

NOISE = st.sampled_from([b" ", b"  ", b"\r", b"\n", b"\r\n", b".", b":", b"0", b"00", b"9", b"255", b"256", b"-",
                         b"P", b"PROXY", b"TCP4", b"TCP6", b"UNKNOWN", b"\x00", b"\xff", b"a", b"G", b"::", b"%",
                         b"65535", b"65536", b"\t", SIG[:5]])
OCTETS = st.one_of(st.integers(0, 255).map(lambda n: b"%d" % n),
                   st.sampled_from([b"", b"00", b"01", b"256", b"999", b"1000", b"-1", b"a", b"0x1"]))
V4_TEXT = st.one_of(ipv4.map(str.encode), st.lists(OCTETS, min_size=1, max_size=6).map(b".".join))
V6_TEXT = st.one_of(
    ipv6.map(str.encode),
    ipv6.map(str.upper).map(str.encode),
    st.text("0123456789abcdefABCDEF:.", max_size=48).map(str.encode),
    st.sampled_from([b":::", b"1::2::3", b"::1%lo", b"1:2:3:4:5:6:7:8:9", b"12345::", b"::ffff:1.2.3.04",
                     b"::1.2.3", b"1:2:3:4:5:6:7::", b"::1:2:3:4:5:6:7", b"1:2:3:4:5:6:1.2.3.4",
                     b"1:2:3:4:5:6:7:1.2.3.4", b"::ffff:256.1.1.1", b"1.2.3.4", b"::", b":1", b"1:"]),
)
PORT_TEXT = st.one_of(ports.map(lambda n: b"%d" % n),
                      st.sampled_from([b"", b"0", b"00", b"007", b"65536", b"99999", b"100000", b"+1", b"-1", b"1a"]))
SEP = st.one_of(st.just(b" "), st.just(b" "), st.just(b" "), st.just(b" "), st.sampled_from([b"", b"  ", b"\t"]))
ENDS = st.one_of(st.just(b"\r\n"), st.just(b"\r\n"), st.sampled_from([b"", b"\r", b"\n", b"\n\r", b" \r\n", b"\r\r\n"]))


@st.composite
def v1_lines(draw):
    """A v1 line from valid and invalid pieces, then some bytes."""
    proto = draw(st.one_of(st.sampled_from([b"TCP4", b"TCP6"]), st.sampled_from([b"UNKNOWN", b"TCP", b"UDP4", b"tcp4"])))
    if proto == b"UNKNOWN":
        rest = draw(st.one_of(st.just(b""), st.binary(max_size=100).map(lambda b: b" " + b)))
        return b"PROXY " + proto + rest + draw(ENDS) + draw(st.binary(max_size=4))
    addr = V6_TEXT if draw(st.booleans()) == (proto == b"TCP6") else V4_TEXT
    if draw(st.integers(0, 9)) == 0:
        addr = st.one_of(V4_TEXT, V6_TEXT)
    pieces = [b"PROXY", draw(SEP), proto, draw(SEP), draw(addr), draw(SEP), draw(addr), draw(SEP),
              draw(PORT_TEXT), draw(SEP), draw(PORT_TEXT), draw(ENDS), draw(st.binary(max_size=4))]
    return b"".join(pieces)


@st.composite
def v2_headers(draw):
    """A v2 header with right or wrong version, command, family and length."""
    version = draw(st.one_of(st.just(2), st.just(2), st.integers(0, 15)))
    command = draw(st.one_of(st.sampled_from([0, 1, 1]), st.integers(0, 15)))
    family = draw(st.one_of(st.sampled_from([0x11, 0x21, 0x00, 0x31]), st.integers(0, 255)))
    size = {0x11: 12, 0x21: 36, 0x31: 216}.get(family, 0)
    block = draw(st.binary(min_size=size, max_size=size)) + draw(st.one_of(st.just(b""), st.binary(max_size=30)))
    length = draw(st.one_of(st.just(len(block)), st.just(len(block)),
                            st.integers(0, 600), st.sampled_from([535, 536, 537, 0xFFFF])))
    if length > len(block):
        block += b"\0" * min(length - len(block), 600)
    sig = draw(st.one_of(st.just(SIG), st.just(SIG), st.just(SIG),
                         st.binary(min_size=12, max_size=12), st.just(SIG[:11] + b"\r")))
    head = sig + bytes([(version << 4) | command, family]) + length.to_bytes(2, "big")
    return head + block + draw(st.binary(max_size=4))


@st.composite
def mutated(draw):
    """A valid header with one byte changed, inserted or removed."""
    version = draw(st.sampled_from([1, 2]))
    data = bytearray(proxy_ref.build(version, *draw(endpoints)))
    at = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["replace", "insert", "delete"]))
    byte = draw(st.one_of(NOISE, st.binary(min_size=1, max_size=1)))
    if kind == "replace":
        data[at:at + 1] = byte
    elif kind == "insert":
        data[at:at] = byte
    else:
        del data[at]
    return bytes(data)


INPUTS = st.one_of(
    endpoints.flatmap(lambda e: st.sampled_from([1, 2]).map(lambda v: proxy_ref.build(v, *e))),
    v1_lines(), v1_lines(), v2_headers(), mutated(), mutated(),
    st.binary(max_size=40), st.binary(max_size=40).map(lambda b: b"P" + b), st.binary(max_size=40).map(lambda b: b"\r" + b),
)

DIFFERENTIAL = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_differential_parse():
    c = _compiled()

    @DIFFERENTIAL
    @given(INPUTS, st.integers(0, 200))
    def check(data, split):
        for piece in (data, data[:split]):
            assert c.parse(piece) == proxy_ref.parse(piece), piece

    check()


def test_differential_build_and_round_trip():
    c = _compiled()

    @settings(max_examples=1000, deadline=None)
    @given(st.sampled_from([1, 2]), endpoints)
    def check(version, ends):
        header = c.build(version, *ends)
        assert header == proxy_ref.build(version, *ends)
        status, consumed, src, dst = c.parse(header + b"data")
        assert (status, consumed) == (DONE, len(header))
        src_ip, src_port, dst_ip, dst_port = ends
        known = src_ip is not None and dst_ip is not None and (":" in src_ip) == (":" in dst_ip)
        if known:
            assert ipaddress.ip_address(src[0]) == ipaddress.ip_address(src_ip) and src[1] == src_port
            assert ipaddress.ip_address(dst[0]) == ipaddress.ip_address(dst_ip) and dst[1] == dst_port
        else:
            assert (src, dst) == (None, None)

    check()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=INPUTS)
def test_generated_prefix_is_incomplete_or_the_same(impl, data):
    """A decision, once taken at a byte, holds for every longer input."""
    whole = impl.parse(data)
    for n in range(len(data)):
        part = impl.parse(data[:n])
        assert part == (INCOMPLETE, 0, None, None) or part == whole or (
            whole[0] == DONE and part[0] == DONE and part[1] == whole[1]), (data[:n], part, whole)
        if part[0] == DONE:
            assert part == whole
