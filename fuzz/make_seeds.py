"""Write the seed corpora (fuzz/seeds/TARGET/) from the cases the tests already
hold: `python fuzz/make_seeds.py`. Each seed starts with the byte each target
reads first (its limits, its connection), then the input. The seeds are
committed; run this again when the test cases change."""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_http_framing as framing  # noqa: E402
import test_http_msg as msg  # noqa: E402
import test_http_parser as parser  # noqa: E402
import test_http_response as response  # noqa: E402
from tests.reference import proxy_ref  # noqa: E402


MAX_SEED = 20000                     # the fuzzers' -max_len: the limit cases of 64 KiB heads stay in the tests


def tls_records(*records: tuple[int, bytes]) -> bytes:
    return b"".join(bytes([t]) + struct.pack(">H", len(d)) + d for t, d in records)


def seeds() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {name: [] for name in
                                   ("http_request", "http_response", "chunked", "proxy", "config", "tls_record", "jwt",
                                    "cache_range")}
    for case in parser.VALID + parser.MALFORMED:
        out["http_request"] += [b"\x01" + case[1], b"\x00" + case[1]]
    for name, lines, body, _want in framing.REQUEST_FORMS:
        out["http_request"].append(b"\x01POST / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n\r\n" + body)
    for case in msg.VALID_RESPONSES + msg.MALFORMED_RESPONSES:
        out["http_response"] += [b"\x01" + case[1], b"\x00" + case[1]]
    for case in response.BAD_RESPONSES:
        out["http_response"].append(b"\x01" + case[1])
    for case in parser.CHUNKED_VALID + parser.CHUNKED_MALFORMED + msg.STREAM_BODIES:
        out["chunked"] += [b"\x01" + case[1], b"\x0e" + case[1]]
    for version in (1, 2):
        for src, dst in ((("192.0.2.1", 1234), ("198.51.100.2", 80)), (("2001:db8::1", 1), ("2001:db8::2", 443)),
                         ((None, 0), (None, 0))):
            out["proxy"].append(proxy_ref.build(version, src[0], src[1], dst[0], dst[1]))
    out["proxy"] += [b"PROXY UNKNOWN\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET /", b"\r\n\r\n\x00\r\nQUIT\n!\x11\x00\x0c"]
    import test_config
    out["config"] += [test_config.FULL.encode(), test_config.MINIMAL.encode(),
                      (ROOT / "packaging" / "lb.toml").read_bytes()]
    hello = tls_records((23, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    for sel in range(8):
        out["tls_record"].append(bytes([sel]) + hello)
    out["tls_record"] += [
        b"\x01" + tls_records((23, b"a"), (22, bytes([24, 0, 0, 1, 1])), (23, b"b")),   # a key update
        b"\x01" + tls_records((23, b"a"), (21, b"\x01\x00")),                            # close_notify
        b"\x00" + tls_records((22, bytes([1, 0, 0, 4, 3, 3, 0, 0])), (23, b"c")),        # renegotiation
        b"\x00" + tls_records((23, b"a"), (0xFF, b"\x17\x03\x03\x00\x20" + b"x" * 32)),  # a forged record
        b"\x01" + tls_records((23, b""), (23, b""), (21, b"\x02\x28")),                 # empty records, a fatal alert
    ]
    # jwt: the JSON cases of the tests (\x01), and the parts of the attack tokens,
    # as base64url (\x00) and decoded (\x01)
    import test_jwt
    out["jwt"] += [b"\x01" + case for case in test_jwt.JSON_CASES]
    for _what, tok in test_jwt.attack_tokens(test_jwt.Keys())[:60]:
        for part in tok.split(".")[:3]:
            out["jwt"].append(b"\x00" + part.encode())
            decoded = test_jwt.jwt_b64url_decode(part.encode())
            if decoded:
                out["jwt"].append(b"\x01" + decoded)
    # cache_range: the Range values of the cache's tests, against each stored length
    import test_cache
    for spec in test_cache.RANGE_SPECS:
        for sel in (1, 4, 5):
            out["cache_range"].append(bytes([sel]) + spec.encode())
    return out


def main() -> None:
    base = ROOT / "fuzz" / "seeds"
    for target, items in seeds().items():
        d = base / target
        d.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():
            f.unlink()
        for data in items:
            if len(data) <= MAX_SEED:
                (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)
        print(f"{target}: {len(os.listdir(d))} seeds")


if __name__ == "__main__":
    main()
