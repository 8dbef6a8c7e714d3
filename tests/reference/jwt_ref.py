"""Pure-Python references of JWT's strict parsers (lb/fastpath/jwt_parse.pxi):
what the compiled base64url decoder and JSON checker accept, written with the
standard library. tests/test_jwt.py and the `jwt` fuzz target compare them."""

from __future__ import annotations

import base64
import json

B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
MAX_DEPTH = 16
MAX_MEMBERS = 64
MAX_NAME = 256


def b64url_decode(data: bytes) -> bytes | None:
    """The bytes of unpadded base64url in its one canonical spelling, or None."""
    if len(data) % 4 == 1 or any(c not in B64URL_ALPHABET for c in data):
        return None
    out = base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    return out if base64.urlsafe_b64encode(out).rstrip(b"=") == data else None


def json_object(data: bytes):
    """The object lb's checker accepts, or None: UTF-8, RFC 8259 (no NaN or
    Infinity), an object at the top, no duplicate member at any depth, no lone
    surrogate, at most 16 levels, 64 members an object, names of 256 bytes."""
    def no_dups(pairs):
        names = [k for k, _ in pairs]
        if (len(set(names)) != len(names) or len(names) > MAX_MEMBERS
                or any(len(k.encode("utf-8", "surrogatepass")) > MAX_NAME for k in names)):
            raise ValueError("duplicate, too many or too long")
        return dict(pairs)

    def depth(v) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    def strings(v):
        if isinstance(v, dict):
            for k, x in v.items():
                yield k
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str):
            yield v

    def bad_constant(name):
        raise ValueError(name)

    try:
        v = json.loads(data.decode("utf-8"), object_pairs_hook=no_dups, parse_constant=bad_constant)
        for s in strings(v):
            s.encode("utf-8")        # a lone surrogate from a \u escape
    except (ValueError, UnicodeError, RecursionError):
        return None
    return v if isinstance(v, dict) and depth(v) <= MAX_DEPTH else None
