"""lb's TLS 1.3 record layer against records a test writes byte by byte
(RFC 8446 section 5): the client's traffic secrets come from its own key log
(Python's ssl), so the test seals whatever it wants under the client's key and
opens lb's answers under lb's. Each case is one thing a peer may send after
the handshake, legal or not, and what lb must do about it: go on serving,
or send the alert the RFC names and close.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from conftest import free_port, wait_for
from tests.test_tls import Pki, certs_toml, client_context, tls_config
from tls_client import MemTls

ALERTS = {10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow", 47: "illegal_parameter",
          50: "decode_error"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    info = struct.pack(">HB", length, 6 + len(label)) + b"tls13 " + label + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


class Direction:
    """One direction's key, IV and sequence number (TLS_AES_128_GCM_SHA256)."""

    def __init__(self, secret: bytes):
        self.set(secret)

    def set(self, secret: bytes):
        self.secret = secret
        self.aead = AESGCM(expand_label(secret, b"key", 16))
        self.iv = expand_label(secret, b"iv", 12)
        self.seq = 0

    def update(self):
        self.set(expand_label(self.secret, b"traffic upd", 32))

    def nonce(self) -> bytes:
        n = bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big")))
        self.seq += 1
        return n


class Wire:
    """A TLS 1.3 connection to lb after a handshake done by Python's ssl, on
    which the test writes and reads records itself."""

    def __init__(self, port: int, pki: Pki, keylog):
        ctx = client_context(pki.ca_path, minimum_version=ssl.TLSVersion.TLSv1_3)
        ctx.keylog_filename = str(keylog)
        self.t = MemTls(port, ctx)
        self.t.handshake()
        secrets = {f[0]: f[2] for f in (line.split() for line in keylog.read_text().splitlines())
                   if len(f) == 3 and not f[0].startswith("#")}
        self.tx = Direction(bytes.fromhex(secrets["CLIENT_TRAFFIC_SECRET_0"]))
        self.rx = Direction(bytes.fromhex(secrets["SERVER_TRAFFIC_SECRET_0"]))
        self.rx_bytes = self.t.inc.read()
        self.rx_updates = 0                     # lb's KeyUpdates seen       # what the client's ssl read beyond the handshake
        self.sock = self.t.sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def seal(self, ctype: int, content: bytes, padding: int = 0, outer: int = 23) -> bytes:
        inner = content + bytes([ctype]) + bytes(padding)
        header = struct.pack(">BHH", outer, 0x0303, len(inner) + 16)
        return header + self.tx.aead.encrypt(self.tx.nonce(), inner, header)

    def send(self, *records: bytes):
        self.sock.sendall(b"".join(records))

    def data(self, content: bytes, **kw) -> bytes:
        return self.seal(23, content, **kw)

    def records(self):
        """lb's records, opened: (type, content), until lb closes."""
        while True:
            buf = self.rx_bytes
            while len(buf) >= 5 and len(buf) >= 5 + struct.unpack(">H", buf[3:5])[0]:
                n = struct.unpack(">H", buf[3:5])[0]
                header, body, buf = buf[:5], buf[5:5 + n], buf[5 + n:]
                self.rx_bytes = buf
                inner = self.rx.aead.decrypt(self.rx.nonce(), body, header).rstrip(b"\x00")
                ctype, content = inner[-1], inner[:-1]
                if ctype == 22 and content[:1] == b"\x18":   # lb's key update: its next records use the next key
                    self.rx.update()
                    self.rx_updates += 1
                yield ctype, content
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                chunk = b""
            if not chunk:
                return
            self.rx_bytes += chunk

    def response(self) -> dict:
        """The next http response's JSON body (the origin's echo)."""
        got = b""
        for ctype, content in self.records():
            if ctype == 22 and content[:1] in (b"\x04", b"\x18"):
                continue                 # a session ticket, a key update
            assert ctype == 23, (ctype, content)
            got += content
            head, sep, rest = got.partition(b"\r\n\r\n")
            if sep:
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                if len(rest) >= length:
                    return json.loads(rest[:length])
        raise AssertionError(f"lb closed before a response: {got[:200]!r}")

    def alert(self) -> str:
        """The fatal alert lb ends the connection with (tickets and data before it skipped)."""
        for ctype, content in self.records():
            if ctype == 21:
                assert content[0] == 2, content
                return ALERTS.get(content[1], str(content[1]))
        raise AssertionError("lb closed without an alert")

    def close(self):
        self.t.close()


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()


@pytest.fixture
def wire(pki, origins, run_lb, tmp_path):
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default) + 'ciphersuites = "TLS_AES_128_GCM_SHA256"'))
    opened = []

    def connect() -> Wire:
        w = Wire(port, pki, tmp_path / f"keylog{len(opened)}")
        opened.append(w)
        return w

    connect.lb = lb
    yield connect
    for w in opened:
        w.close()


def bad_records(lb) -> int:
    return sum(w["tls_bad_records"] for w in lb.worker_stats())


def test_padding_and_records_cut_anywhere_are_read(wire):
    """A request in three records, padded with zeros (RFC 8446 5.4), then one
    whose content is a single byte: all of it reaches the origin."""
    w = wire()
    r = request("/padded")
    w.send(w.data(r[:5], padding=100), w.data(r[5:20], padding=1), w.data(r[20:], padding=3000))
    assert w.response()["target"] == "/padded"
    r = request("/bytewise")
    w.send(*(w.data(r[i:i + 1]) for i in range(len(r))))
    assert w.response()["target"] == "/bytewise"


def test_the_largest_record_is_read_and_a_larger_one_refused(wire):
    w = wire()
    body = b"x" * (16384 - 80)
    head = f"POST /max HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    record = head + body[:16384 - len(head)]
    w.send(w.data(record), w.data(body[16384 - len(head):]))
    echo = w.response()
    assert (echo["target"], echo["body_len"]) == ("/max", len(body))
    w.send(w.data(b"y" * 16385))
    assert w.alert() == "record_overflow"


def test_empty_records_are_fine_until_they_are_a_flood(wire):
    w = wire()
    w.send(*(w.data(b"") for _ in range(20)), w.data(request("/after-empty")))
    assert w.response()["target"] == "/after-empty"
    w.send(*(w.data(b"", padding=7) for _ in range(33)))
    assert w.alert() == "unexpected_message"


def test_a_key_update_cut_across_records(wire):
    """The client's KeyUpdate in two records, the second ending its record:
    lb reads on under the next key, and answers the request for its own."""
    w = wire()
    msg = b"\x18\x00\x00\x01\x01"
    w.send(w.seal(22, msg[:2]), w.seal(22, msg[2:]))
    w.tx.update()
    w.send(w.data(request("/after-update")))
    assert w.response()["target"] == "/after-update"
    assert w.rx_updates == 1


@pytest.mark.parametrize("case,alert", [
    ("key-update-then-data-in-one-record", "unexpected_message"),
    ("key-update-value-2", "illegal_parameter"),
    ("key-update-long", "decode_error"),
    ("client-hello", "unexpected_message"),
    ("new-session-ticket", "unexpected_message"),
    ("no-content-type", "unexpected_message"),
    ("change-cipher-spec-inner", "unexpected_message"),
    ("unknown-inner-type", "unexpected_message"),
    ("plaintext-handshake-record", "unexpected_message"),
    ("alert-three-bytes", "decode_error"),
    ("alert-level-3", "illegal_parameter"),
    ("empty-handshake-fragment", "unexpected_message"),
    ("data-inside-a-handshake-message", "unexpected_message"),
    ("forged-tag", "bad_record_mac"),
])
def test_what_breaks_the_protocol_gets_its_alert(wire, case, alert):
    """RFC 8446 5 and 6: each of these ends the connection with its alert,
    counted in tls_bad_records; a connection beside it is served."""
    w = wire()
    bystander = wire()
    records = {
        "key-update-then-data-in-one-record": lambda: w.seal(22, b"\x18\x00\x00\x01\x00" + b"x"),
        "key-update-value-2": lambda: w.seal(22, b"\x18\x00\x00\x01\x02"),
        "key-update-long": lambda: w.seal(22, b"\x18\x00\x00\x02\x00\x00"),
        "client-hello": lambda: w.seal(22, b"\x01\x00\x00\x04abcd"),
        "new-session-ticket": lambda: w.seal(22, b"\x04\x00\x00\x01\x00"),
        "no-content-type": lambda: _no_type(w),
        "change-cipher-spec-inner": lambda: w.seal(20, b"\x01"),
        "unknown-inner-type": lambda: w.seal(99, b"hello"),
        "plaintext-handshake-record": lambda: b"\x16\x03\x03\x00\x05\x18\x00\x00\x01\x00",
        "alert-three-bytes": lambda: w.seal(21, b"\x01\x00\x00"),
        "alert-level-3": lambda: w.seal(21, b"\x03\x00"),
        "empty-handshake-fragment": lambda: w.seal(22, b""),
        "data-inside-a-handshake-message": lambda: w.seal(22, b"\x18\x00") + w.data(b"GET"),
        "forged-tag": lambda: _forged(w),
    }
    w.send(records[case]())
    assert w.alert() == alert
    bystander.send(bystander.data(request("/beside")))
    assert bystander.response()["target"] == "/beside"
    wait_for(lambda: bad_records(wire.lb) == 1, 5, "counted")


def _no_type(w: Wire) -> bytes:
    """A record whose inner plaintext is all zeros: no content type."""
    inner = bytes(10)
    header = struct.pack(">BHH", 23, 0x0303, len(inner) + 16)
    return header + w.tx.aead.encrypt(w.tx.nonce(), inner, header)


def _forged(w: Wire) -> bytes:
    record = bytearray(w.data(request("/forged")))
    record[8] ^= 0x40
    return bytes(record)


def test_user_canceled_is_a_warning(wire):
    """user_canceled (a warning) does not end the connection (RFC 8446 6.1)."""
    w = wire()
    w.send(w.seal(21, b"\x01\x5a"), w.data(request("/after-cancel")))
    assert w.response()["target"] == "/after-cancel"


def test_close_notify_after_a_request_without_a_fin(wire):
    """A request, then close_notify in the same segment, the socket left open:
    lb answers the request and ends with its own close_notify."""
    w = wire()
    w.send(w.data(request("/last")) + w.seal(21, b"\x01\x00"))
    assert w.response()["target"] == "/last"
    tail = list(w.records())
    assert (21, b"\x01\x00") in tail
