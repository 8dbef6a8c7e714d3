"""lb's own TLS record layer (docs/tls.md, "After the handshake"): OpenSSL does
the handshake, then lb carries the connection with the traffic keys alone and
frees the SSL object. These tests hold it to what a client relies on: every
suite of the default profile carries bytes intact both ways, before and after
a resumption; key updates both ways (RFC 8446 4.6.3); renegotiation refused as
OpenSSL refuses it; a forged or oversized record ends that connection with the
right alert, counted, and nobody else's; connections the record layer does not
take (client certificates, a non-AEAD suite) stay with OpenSSL and work.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import ssl
import subprocess
import time

import pytest

from conftest import free_port, wait_for
from http_origin import payload
from tests.test_tls import Pki, certs_toml, client_context, echo_of, https, tls_config
from tls_client import MemTls

MIB = 1 << 20

# (listener settings, client settings): one per AEAD suite of the intermediate profile
SUITES = {
    "tls13-aes128gcm": ('ciphersuites = "TLS_AES_128_GCM_SHA256"', None, "TLS_AES_128_GCM_SHA256"),
    "tls13-aes256gcm": ('ciphersuites = "TLS_AES_256_GCM_SHA384"', None, "TLS_AES_256_GCM_SHA384"),
    "tls13-chacha20": ('ciphersuites = "TLS_CHACHA20_POLY1305_SHA256"', None, "TLS_CHACHA20_POLY1305_SHA256"),
    "tls12-aes128gcm": ("", "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    "tls12-aes256gcm": ("", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    "tls12-chacha20": ("", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305"),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def stat(lb, name: str) -> int:
    return sum(w[name] for w in lb.worker_stats())


def suite_context(pki, suite: str) -> ssl.SSLContext:
    _listener, cipher, _want = SUITES[suite]
    if cipher is None:
        return client_context(pki.ca_path, minimum_version=ssl.TLSVersion.TLSv1_3)
    return client_context(pki.ca_path, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers=cipher)


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_carries_bytes_intact(pki, origins, run_lb, suite):
    """1 MiB up, 1 MiB down (length and chunked) and small exchanges on one
    connection, then again on a resumed session: every byte checked, and each
    handshake handed to the record layer."""
    listener_tls, _cipher, want = SUITES[suite]
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default) + listener_tls))
    ctx = suite_context(pki, suite)
    big = os.urandom(MIB)
    session = None
    for round_ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            with ctx.wrap_socket(s, session=session) as t:
                assert t.cipher()[0] == want
                assert t.session_reused == (round_ == 1)
                t.sendall(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
                echo = json.loads(read_body(t))
                assert (echo["body_len"], echo["body_sha256"]) == (len(big), hashlib.sha256(big).hexdigest())
                for target in (f"/bytes/{MIB}", f"/bytes/{MIB}?chunked=1&piece=65536"):
                    t.sendall(f"GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
                    assert read_body(t) == payload(MIB), target
                for i in range(20):
                    t.sendall(f"GET /small/{i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
                    assert json.loads(read_body(t))["target"] == f"/small/{i}"
                session = t.session
    wait_for(lambda: stat(lb, "tls_record_layer") == 2, 5, "both handshakes on the record layer")
    assert stat(lb, "tls_resumed") == 1 and stat(lb, "tls_bad_records") == 0


def read_body(t: ssl.SSLSocket) -> bytes:
    """One HTTP/1.1 response's body (Content-Length or chunked) from t."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        buf += t.recv(65536) or b""
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in
              (line.decode().partition(":") for line in head.split(b"\r\n")[1:])}
    assert head.startswith(b"HTTP/1.1 200"), head
    body = bytearray(rest)
    if "content-length" in fields:
        n = int(fields["content-length"])
        while len(body) < n:
            chunk = t.recv(65536)
            assert chunk, "closed inside a body"
            body += chunk
        return bytes(body[:n])
    out = bytearray()                    # chunked
    while True:
        while b"\r\n" not in body:
            body += t.recv(65536)
        size_line, _, body = bytes(body).partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        body = bytearray(body)
        while len(body) < size + 2:
            body += t.recv(65536)
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2:]


class SClient:
    """`openssl s_client` driven line by line: its one-letter commands (k, K:
    key updates; R: renegotiation) act only at the start of a read of stdin,
    so each line is written after the answer to the one before has come."""

    def __init__(self, port: int, *args: str):
        self.p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-noservername",
                                   "-msg", "-crlf", *args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        os.set_blocking(self.p.stdout.fileno(), False)
        self.out = b""
        self.until(b"Verify return code")

    def until(self, marker: bytes, timeout: float = 10, since: int | None = None) -> bytes:
        """Read the output until marker appears after offset since (default:
        after what was read before); what came from there."""
        start = len(self.out) if since is None else since
        deadline = time.monotonic() + timeout
        while marker not in self.out[start:]:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {self.out[start:][-2000:]!r}"
            if select.select([self.p.stdout], [], [], left)[0]:
                chunk = self.p.stdout.read()
                if not chunk:
                    assert marker in self.out[start:], f"s_client ended: {self.out[-2000:]!r}"
                self.out += chunk or b""
        return self.out[start:]

    def line(self, text: str):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def get(self, path: str) -> bytes:
        self.line(f"GET {path} HTTP/1.1\nHost: a.test\n\n")
        return self.until(b'"continue_sent"')

    def close(self):
        self.p.kill()
        self.p.wait()


def test_key_updates_both_ways(pki, origins, run_lb):
    """The client updates its keys (k), and asks lb to update its own (K):
    requests go on being read, and lb answers K with its own KeyUpdate
    (update_not_requested) before its next record, after which its responses
    still decrypt."""
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default)))
    c = SClient(port, "-tls1_3", "-CAfile", str(pki.ca_path))
    try:
        assert b'"target": "/1"' in c.get("/1")
        c.line("k\n")
        c.until(b">>> TLS 1.3, Handshake [length 0005], KeyUpdate\n    18 00 00 01 00")
        assert b'"target": "/2"' in c.get("/2")
        c.line("K\n")
        c.until(b">>> TLS 1.3, Handshake [length 0005], KeyUpdate\n    18 00 00 01 01")
        # lb's own, update_not_requested, before its next record
        out = c.get("/3")
        assert b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate\n    18 00 00 01 00" in out
        assert b'"target": "/3"' in out
        for i in range(4, 7):
            assert f'"target": "/{i}"'.encode() in c.get(f"/{i}")
    finally:
        c.close()
    assert stat(lb, "tls_record_layer") == 1 and stat(lb, "tls_bad_records") == 0


def test_renegotiation_is_refused_with_a_warning(pki, origins, run_lb):
    """TLS 1.2: a client's renegotiation gets a no_renegotiation warning, as
    from OpenSSL with renegotiation off; lb goes on serving everyone."""
    port = free_port()
    run_lb(tls_config(port, [origins()], certs_toml(pki.default)))
    c = SClient(port, "-tls1_2", "-CAfile", str(pki.ca_path))
    try:
        assert b'"target": "/1"' in c.get("/1")
        c.line("R\n")
        assert b"<<< TLS 1.2, Alert [length 0002], warning no_renegotiation" in c.until(b"no_renegotiation")
    finally:
        c.close()
    with https(port, client_context(pki.ca_path)) as conn:
        assert echo_of(conn, "GET", "/after")["target"] == "/after"


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("damage", ["forged", "oversized"])
def test_a_bad_record_ends_that_connection_with_its_alert(pki, origins, run_lb, version, damage):
    """A record whose tag does not verify gets bad_record_mac; one longer than
    the protocol allows gets record_overflow (before lb waits for its bytes).
    The connection closes, tls_bad_records counts it, and a client beside it
    is served throughout."""
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default)))
    v = ssl.TLSVersion.TLSv1_2 if version == "tls12" else ssl.TLSVersion.TLSv1_3
    ctx = client_context(pki.ca_path, minimum_version=v, maximum_version=v)
    with https(port, client_context(pki.ca_path)) as bystander:
        assert echo_of(bystander, "GET", "/before")["target"] == "/before"
        with MemTls(port, ctx) as t:
            t.handshake()
            if damage == "forged":
                t.obj.write(b"GET /forged HTTP/1.1\r\nHost: a.test\r\n\r\n")
                record = bytearray(t.out.read())
                record[-1] ^= 0x01               # the last byte of the tag
                t.sock.sendall(bytes(record))
                alert = "BAD_RECORD_MAC"
            else:
                t.sock.sendall(b"\x17\x03\x03\x50\x00" + bytes(64))   # 20480 bytes claimed
                alert = "RECORD_OVERFLOW"
            with pytest.raises(ssl.SSLError, match=alert):
                t.recv_to_eof()
        assert echo_of(bystander, "GET", "/after")["target"] == "/after"
    assert stat(lb, "tls_bad_records") == 1


def test_close_notify_from_the_client_ends_the_request_stream(pki, origins, run_lb):
    """After a response, the client's close_notify and FIN: lb answers with its
    own close_notify, and the connection is gone from the worker."""
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default)))
    with MemTls(port, client_context(pki.ca_path)) as t:
        t.handshake(then=b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\n")
        body = t.recv()
        while b'"continue_sent"' not in body:
            body += t.recv()
        t.close_write()
        assert t.recv_to_eof() == b"" and t.close_notify
    wait_for(lambda: stat(lb, "active") == 0, 5, "the connection closed")


def test_a_cbc_suite_stays_with_openssl(pki, origins, run_lb):
    """A TLS 1.2 suite that is not AEAD (configured on purpose) stays with
    OpenSSL: it works as before, and tls_record_layer does not count it."""
    port = free_port()
    tls = certs_toml(pki.default) + 'protocols = ["TLSv1.2"]\nciphers = "ECDHE-ECDSA-AES128-SHA256"'
    ctx = client_context(pki.ca_path, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA256")
    lb = run_lb(tls_config(port, [origins()], tls))
    with https(port, ctx) as conn:
        for i in range(3):
            assert echo_of(conn, "GET", f"/{i}")["target"] == f"/{i}"
        conn.request("GET", f"/bytes/{MIB}")
        assert conn.getresponse().read() == payload(MIB)
    assert stat(lb, "tls_handshakes") == 1 and stat(lb, "tls_record_layer") == 0


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_client_certificate_fields_after_the_hand_over(pki, origins, run_lb, tmp_path, version):
    """With client certificates, the record layer takes the connection too:
    the certificate's subject and fingerprint, summed up before the SSL
    object went, reach the backend with every request of the connection."""
    port = free_port()
    client = pki.ca.leaf("client-x", ("client-x",), client=True)
    tls = certs_toml(pki.default) + f'client_ca = "{pki.ca_path}"\nclient_verify = "required"'
    lb = run_lb(tls_config(port, [origins()], tls))
    v = ssl.TLSVersion.TLSv1_2 if version == "tls12" else ssl.TLSVersion.TLSv1_3
    ctx = client_context(pki.ca_path, minimum_version=v, maximum_version=v)
    ctx.load_cert_chain(str(client.cert), str(client.key))
    with https(port, ctx) as conn:
        for i in range(3):
            echo = echo_of(conn, "GET", f"/{i}")
            fields = {n.lower(): v for n, v in echo["headers"]}
            assert fields["x-client-cert-sha256"] == client.fingerprint, fields
            assert "CN=client-x" in fields["x-client-cert-subject"]
            assert fields["x-client-cert-verify"] == "SUCCESS"
    assert stat(lb, "tls_record_layer") == 1


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_records_cut_anywhere_on_the_wire(pki, origins, run_lb, version):
    """Forty pipelined requests, some with bodies, as TLS records cut into
    segments of 1 to 700 bytes at random: lb reassembles every record and
    answers every request in order."""
    import random
    rnd = random.Random(7)
    port = free_port()
    run_lb(tls_config(port, [origins()], certs_toml(pki.default)))
    v = ssl.TLSVersion.TLSv1_2 if version == "tls12" else ssl.TLSVersion.TLSv1_3
    with MemTls(port, client_context(pki.ca_path, minimum_version=v, maximum_version=v)) as t:
        t.handshake()
        t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bodies = [os.urandom(rnd.choice((0, 1, 300, 20000))) for _ in range(40)]
        for i, body in enumerate(bodies):
            t.obj.write(f"POST /cut/{i} HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                        + body)
        wire = t.out.read()
        pos = 0
        while pos < len(wire):
            n = rnd.randint(1, 700)
            t.sock.sendall(wire[pos:pos + n])
            pos += n
        got = b""
        for i, body in enumerate(bodies):
            while True:
                head, sep, rest = got.partition(b"\r\n\r\n")
                if sep:
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:")))
                    if len(rest) >= length:
                        break
                got += t.recv()
            echo = json.loads(rest[:length])
            assert (echo["target"], echo["body_sha256"]) == (f"/cut/{i}", hashlib.sha256(body).hexdigest())
            got = rest[length:]


def test_a_run_of_key_updates_is_a_flood(pki, origins, run_lb):
    """Records that carry no data cost lb work and give nothing: after 32 in a
    row (OpenSSL's limit) the connection ends with unexpected_message. Asking
    for lb's key update again and again gets one answer at lb's next record,
    not one per request."""
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default)))
    c = SClient(port, "-tls1_3", "-CAfile", str(pki.ca_path))
    try:
        assert b'"target": "/1"' in c.get("/1")
        for _ in range(3):
            c.line("K\n")
            c.until(b">>> TLS 1.3, Handshake [length 0005], KeyUpdate\n    18 00 00 01 01")
        out = c.get("/2")
        assert out.count(b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate") == 1
        flood = len(c.out)
        for _ in range(33):
            c.line("K\n")
            c.until(b"KeyUpdate\n    18 00 00 01 01")
        c.until(b"<<< TLS 1.3, Alert [length 0002], fatal unexpected_message", since=flood)
    finally:
        c.close()
    wait_for(lambda: stat(lb, "tls_bad_records") == 1, 5, "the flood counted")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_max_fragment_length_is_kept(pki, origins, run_lb, version):
    """A client that negotiated 512-byte records (RFC 6066) gets them: its
    connection stays with OpenSSL, which keeps to the limit."""
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default)))
    c = SClient(port, version, "-maxfraglen", "512", "-CAfile", str(pki.ca_path))
    try:
        c.line("GET /bytes/100000 HTTP/1.1\nHost: a.test\n\n")
        c.until(b"HTTP/1.1 200")
        c.get("/after")
    finally:
        c.close()
    assert stat(lb, "tls_record_layer") == 0 and stat(lb, "tls_bad_records") == 0
