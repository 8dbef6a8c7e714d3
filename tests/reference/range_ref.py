"""Pure-Python reference of how a cache hit reads a Range (lb/fastpath/cache.pxi
range_parse, docs/cache.md "Range requests"): RFC 9110 14.1 byte ranges, with
lb's choices of what to ignore (RFC 9110 14.2 lets a server ignore any Range)."""

from __future__ import annotations

MAX_RANGES = 32
CAP = 1 << 60                        # numbers are capped here: a huge first-pos is past the end
OWS = b" \t"


def _number(digits: bytes) -> int | None:
    if not digits or not all(0x30 <= c <= 0x39 for c in digits):
        return None
    return min(int(digits), CAP)


def _spec(s: bytes, length: int):
    """(first, last), "unsat", or None for a range-spec that is not a byte range."""
    if s.startswith(b"-"):
        n = _number(s[1:])
        if n is None:
            return None
        if n == 0 or length == 0:
            return "unsat"
        return (length - n if n < length else 0, length - 1)
    a_text, dash, b_text = s.partition(b"-")
    a = _number(a_text)
    if a is None or not dash:
        return None
    if b_text:
        b = _number(b_text)
        if b is None or b < a:
            return None
    else:
        b = length
    if a >= length:
        return "unsat"
    return (a, min(b, length - 1))


def parse(value: bytes, length: int) -> tuple[str, list[tuple[int, int]]]:
    v = value.strip(OWS)
    if len(v) < 7 or v[:6].lower() != b"bytes=":
        return "none", []
    out: list[tuple[int, int]] = []
    unsat = total = 0
    for element in v[6:].split(b","):
        element = element.strip(OWS)
        if not element:
            continue                 # empty list elements (RFC 9110 5.6.1.2)
        if len(out) + unsat == MAX_RANGES:
            return "none", []        # too many: ignored
        r = _spec(element, length)
        if r is None:
            return "none", []
        if r == "unsat":
            unsat += 1
            continue
        total += r[1] - r[0] + 1
        if total > length:
            return "none", []        # more than the body: overlaps, ignored
        out.append(r)
    if not out:
        return ("unsat" if unsat else "none"), []
    return ("one" if len(out) == 1 else "multi"), out
