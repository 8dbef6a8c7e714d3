"""The fuzzers' inputs as regression tests: every seed (fuzz/seeds) and every
input a fuzzer once found a fault with (fuzz/crashes) goes through its target
(fuzz/targets.py) on the normal build, without atheris. A target compares the
compiled parser with its reference, or checks what the TLS record layer gives
out against what its client sealed."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from fuzz.targets import TARGETS

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"


def cases(kind: str) -> list:
    return [pytest.param(target, f, id=f"{target}/{f.name}")
            for target in TARGETS for f in sorted((FUZZ / kind / target).glob("*"))]


def test_every_target_has_seeds():
    assert all(any((FUZZ / "seeds" / t).iterdir()) for t in TARGETS)


@pytest.mark.parametrize("target", list(TARGETS))
def test_seeds(target):
    for f in sorted((FUZZ / "seeds" / target).iterdir()):
        TARGETS[target](f.read_bytes())


@pytest.mark.parametrize("target,path", cases("crashes") or [pytest.param(None, None, id="none-yet")])
def test_saved_crashes(target, path):
    if target is None:
        return                       # none found so far; the parameter keeps the test listed
    TARGETS[target](path.read_bytes())


def records(*items: tuple[int, bytes]) -> bytes:
    return b"".join(bytes([t]) + struct.pack(">H", len(d)) + d for t, d in items)


@pytest.mark.parametrize("selector", range(8), ids=lambda s: f"{'tls13' if s & 1 else 'tls12'}-aead{(s >> 1) & 3}")
def test_tls_record_entry_point_reads_what_was_sealed(selector):
    """The made-up connection of the TLS record fuzzer works: sealed records
    come out as sent, a forged one ends the stream as a bad record."""
    from lb._fastpath import tlsr_feed

    data = [b"x" * 16384, b"GET / HTTP/1.1\r\n", b"", b"tail"]
    assert tlsr_feed(bytes([selector]) + records(*[(23, d) for d in data])) == (b"".join(data), "eof", 0)
    forged = b"\x17\x03\x03\x00\x20" + b"\x00" * 32
    assert tlsr_feed(bytes([selector]) + records((23, b"ok"), (0xFF, forged), (23, b"never"))) == (b"ok", "error", 1)


def test_tls_record_entry_point_follows_a_key_update():
    from lb._fastpath import tlsr_feed

    key_update = bytes([24, 0, 0, 1, 1])
    assert tlsr_feed(b"\x01" + records((23, b"before "), (22, key_update), (23, b"after"))) == \
        (b"before after", "eof", 0)
