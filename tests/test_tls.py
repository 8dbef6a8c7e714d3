"""TLS termination (docs/tls.md, configuration section 3c) end to end: a real
`lb run`, real clients (Python's ssl, curl, openssl s_client where Python
cannot say what is needed) and real origins and backends, on loopback.

Which certificate was served is read from the handshake (the SHA-256 of the
leaf); what the backend got is read from its own report (tests/http_origin.py
echoes the request, tests/backend_server.py reports what it received). The
certificates are made by tests/tls_certs.py for each module run.
"""

from __future__ import annotations

import contextlib
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backend_server import SPEAK_BYTES, TRANSFORM, speak_payload
from conftest import LbProcess, free_port, global_toml, wait_for
from http_origin import Origin, payload, ws_accept, ws_frame, ws_read_frame
from tests.reference import proxy_ref
from tls_certs import CA
from tls_client import MemTls, client_context, describe, handshake, lb_cli, read_until_closed

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
REASONS = ("timeout", "plain_http", "negotiation", "client_cert", "protocol", "closed")
PLAIN_HTTP_BODY = b"400 Bad Request: this port speaks HTTPS (TLS) only.\n"


# ---- certificates ------------------------------------------------------------------------

class Pki:
    """Every certificate the tests serve, made once per module."""

    def __init__(self, d: Path):
        self.dir = d
        self.ca = CA(d / "ca")
        leaf = self.ca.leaf
        self.default = leaf("default", ("default.test",))
        self.a = leaf("a", ("a.test",))
        self.b = leaf("b", ("b.test", "www.b.test"), kind="rsa")
        self.c = leaf("c", ("c.test",))
        self.b2 = leaf("b2", ("b2.test", "b.test"))            # claims b.test too, listed after b
        self.wild = leaf("wild", ("*.example.test",))
        self.w = leaf("w", ("w.example.test",))                # an exact name under the wildcard
        self.dual_ec = leaf("dual-ec", ("dual.test",))
        self.dual_rsa = leaf("dual-rsa", ("dual.test",), kind="rsa")
        self.rsa_only = leaf("rsa-only", ("rsa.test",), kind="rsa")

    @property
    def ca_path(self) -> Path:
        return self.ca.path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def certs_toml(*leaves) -> str:
    """The certificates key for leaves, in order (a combined .pem: no key)."""
    items = []
    for leaf in leaves:
        if leaf.key == leaf.cert:
            items.append(f'{{ cert = "{leaf.cert}" }}')
        else:
            items.append(f'{{ cert = "{leaf.cert}", key = "{leaf.key}" }}')
    return "certificates = [\n  " + ",\n  ".join(items) + ",\n]\n"


# ---- lb ----------------------------------------------------------------------------------

def tls_config(port: int, members, tls: str, *, mode: str = "http", listener: str = "", pool: str = "",
               workers: int = 1, admin_dir: str | None = None) -> str:
    """A TLS listener "web" on port in front of pool "p". members: Origins or
    Backends (anything with .name and .address). tls: the TOML lines of
    [listeners.web.tls]; listener: more keys of the listener."""
    text = global_toml(workers, admin_dir) + textwrap.dedent(f"""\

        [listeners.web]
        bind = ["127.0.0.1:{port}"]
        mode = "{mode}"
        pool = "p"
        """)
    text += textwrap.dedent(listener).strip() + "\n\n[listeners.web.tls]\n" + textwrap.dedent(tls).strip() + "\n\n"
    text += f'[pools.p]\nalgorithm = "roundrobin"\nconnect_timeout = "1s"\n{textwrap.dedent(pool).strip()}\n\n'
    text += '[pools.p.health]\ntype = "none"\n\n'
    for m in members:
        text += f'[[pools.p.backends]]\naddress = "{m.address}"\nname = "{m.name}"\n\n'
    return text


def tls_failed(lb: LbProcess) -> dict:
    """workers[].tls_failed, summed over the workers."""
    out = dict.fromkeys(REASONS, 0)
    for w in lb.worker_stats():
        for reason, n in w["tls_failed"].items():
            out[reason] += n
    return out


def handshakes(lb: LbProcess) -> int:
    return sum(w["tls_handshakes"] for w in lb.worker_stats())


@contextlib.contextmanager
def https(port: int, ctx: ssl.SSLContext, timeout: float = 10):
    """A keep-alive client (no SNI: it connects to an address), closed after the block."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    try:
        yield conn
    finally:
        conn.close()


def echo_of(conn: http.client.HTTPSConnection, method: str = "GET", target: str = "/", body=None,
            headers=None, **kw) -> dict:
    conn.request(method, target, body=body, headers=headers or {}, **kw)
    r = conn.getresponse()
    data = r.read()
    assert r.status == 200, (r.status, data[:200])
    return json.loads(data)


def field(echo: dict, name: str) -> list[str]:
    """The values of a request field as the origin received it."""
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


def https_get_raw(port: int, ctx: ssl.SSLContext, request: bytes, server_hostname: str | None = None,
                  prefix: bytes = b"") -> bytes:
    """prefix + ClientHello in one write, then one request; the answer to EOF."""
    with MemTls(port, ctx, server_hostname) as t:
        t.handshake(prefix)
        t.send(request)
        return t.recv_to_eof()


def read_response(t: MemTls) -> tuple[str, dict, bytes]:
    """One response with a Content-Length from a TLS connection that stays open."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = t.recv()
        assert chunk, f"closed before a whole head: {bytes(buf)!r}"
        buf += chunk
    status, fields, body = split_response(bytes(buf))
    n = int(fields["content-length"][0])
    if len(body) > n:
        t.unread(body[n:])
        return status, fields, body[:n]
    return status, fields, body + t.recv_exact(n - len(body))


def split_response(raw: bytes) -> tuple[str, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], fields, body


def s_client(port: int, *args: str, servername: str | None = None, timeout: float = 15) -> subprocess.CompletedProcess:
    """`openssl s_client` for what Python's ssl cannot ask for (signature
    algorithms, groups, TLS 1.3 suites); it sends nothing and quits after the
    handshake: exit 0 when the handshake was done, the leaf on stdout."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args]
    cmd += ["-servername", servername] if servername else ["-noservername"]
    return subprocess.run(cmd, input="", capture_output=True, text=True, timeout=timeout)


def s_client_cert(out: str) -> str | None:
    """The SHA-256 of the leaf s_client printed (-showcerts), or None."""
    m = re.search(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", out, re.S)
    if not m:
        return None
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(m.group(0))).hexdigest()


# ---- 1. SNI ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sni_lb(pki, tmp_path_factory):
    """An http listener with a default (listed first), three names, a name
    claimed by two certificates, a wildcard and an exact name under it."""
    origin = Origin("o")
    port = free_port()
    tls = certs_toml(pki.default, pki.a, pki.b, pki.c, pki.b2, pki.wild, pki.w)
    lb = LbProcess(tls_config(port, [origin], tls), tmp_path_factory.mktemp("sni"))
    yield port
    lb.stop()
    origin.stop()


SNI_CASES = [
    ("a.test", "a"),
    ("b.test", "b"),                 # also claimed by b2, listed after: the first listed wins
    ("www.b.test", "b"),             # a certificate's second name
    ("b2.test", "b2"),
    ("c.test", "c"),
    ("default.test", "default"),
    (None, "default"),               # no SNI
    ("unknown.test", "default"),
    ("x.example.test", "wild"),
    ("w.example.test", "w"),         # an exact name wins over the wildcard
    ("a.b.example.test", "default"),  # a wildcard covers one label, not two
    ("example.test", "default"),     # nor none
    ("xexample.test", "default"),
    ("A.TEST", "a"),                 # names compare without regard to case
    ("X.Example.TEST", "wild"),
    ("a.test.", "a"),                # a trailing dot names the same host
    ("x.example.test.", "wild"),
    ("test", "default"),
]


@pytest.mark.parametrize("name,want", SNI_CASES, ids=[str(c[0]) for c in SNI_CASES])
def test_sni_picks_the_certificate(sni_lb, pki, name, want):
    peer = handshake(sni_lb, client_context(pki.ca_path), name)
    got = {getattr(pki, k).fingerprint: k for k in ("default", "a", "b", "b2", "c", "wild", "w")}
    assert got.get(peer.fingerprint) == want


def test_sni_curl_verifies_each_name(sni_lb, pki):
    """curl with real verification (host name included) on each name, through
    to the origin: SNI, chain and the name in the certificate agree."""
    for host in ("a.test", "www.b.test", "c.test", "anything.example.test", "w.example.test"):
        res = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(pki.ca_path),
                              "--resolve", f"{host}:{sni_lb}:127.0.0.1", f"https://{host}:{sni_lb}/sni"],
                             capture_output=True, text=True, timeout=20)
        assert res.returncode == 0, (host, res.stderr)
        assert json.loads(res.stdout)["target"] == "/sni"


def test_sni_curl_refuses_a_name_served_the_default(sni_lb, pki):
    """A name lb has no certificate for gets the default, which curl rightly refuses (exit 60)."""
    res = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca_path), "--resolve",
                          f"nothing.test:{sni_lb}:127.0.0.1", f"https://nothing.test:{sni_lb}/"],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 60, res.stderr


# ---- 2. ECDSA and RSA for one name -------------------------------------------------------

TLS12_RSA = dict(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
TLS12_ECDSA = dict(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")


@pytest.fixture(params=["ecdsa-first", "rsa-first"])
def dual_lb(request, pki, origins, run_lb):
    port = free_port()
    pair = (pki.dual_ec, pki.dual_rsa) if request.param == "ecdsa-first" else (pki.dual_rsa, pki.dual_ec)
    run_lb(tls_config(port, [origins()], certs_toml(pki.default, *pair)))
    return port


@pytest.mark.parametrize("client,want", [
    ({}, "dual_ec"),                           # TLS 1.3, every signature algorithm
    (dict(maximum_version=ssl.TLSVersion.TLSv1_2), "dual_ec"),
    (TLS12_RSA, "dual_rsa"),
    (TLS12_ECDSA, "dual_ec"),
], ids=["default", "tls12", "tls12-rsa-only", "tls12-ecdsa-only"])
def test_ecdsa_and_rsa_for_one_name(dual_lb, pki, client, want):
    peer = handshake(dual_lb, client_context(pki.ca_path, **client), "dual.test")
    assert peer.fingerprint == getattr(pki, want).fingerprint


@pytest.mark.parametrize("sigalgs,want", [
    ("rsa_pss_rsae_sha256:rsa_pkcs1_sha256", "dual_rsa"),
    ("ecdsa_secp256r1_sha256", "dual_ec"),
])
def test_ecdsa_and_rsa_tls13_by_signature_algorithms(dual_lb, pki, sigalgs, want):
    """TLS 1.3 has no RSA-only cipher suite: a client says it with its
    signature algorithms (Python's ssl cannot)."""
    res = s_client(dual_lb, "-tls1_3", "-sigalgs", sigalgs, "-CAfile", str(pki.ca_path), "-verify_return_error",
                   servername="dual.test")
    assert res.returncode == 0, res.stderr
    assert s_client_cert(res.stdout) == getattr(pki, want).fingerprint


def test_rsa_only_client_to_a_pair_as_the_default(pki, origins, run_lb):
    """The pair is the default: a client without SNI gets the key type it can use."""
    port = free_port()
    run_lb(tls_config(port, [origins()], certs_toml(pki.dual_ec, pki.dual_rsa)))
    assert handshake(port, client_context(pki.ca_path, **TLS12_RSA)).fingerprint == pki.dual_rsa.fingerprint
    assert handshake(port, client_context(pki.ca_path)).fingerprint == pki.dual_ec.fingerprint


# ---- versions, ciphers, resumption ---------------------------------------------------------

INTERMEDIATE_TLS12 = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                      "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                      "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
                      "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305"]
INTERMEDIATE_TLS13 = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]


@pytest.fixture(scope="module")
def pair_lb(pki, tmp_path_factory):
    """An http listener whose default is an ECDSA and RSA pair (dual.test)."""
    origin = Origin("o")
    port = free_port()
    lb = LbProcess(tls_config(port, [origin], certs_toml(pki.dual_ec, pki.dual_rsa), workers=2),
                   tmp_path_factory.mktemp("pair"))
    yield port, lb
    lb.stop()
    origin.stop()


@pytest.mark.parametrize("cipher", INTERMEDIATE_TLS12)
def test_every_intermediate_tls12_cipher_negotiates(pair_lb, pki, cipher):
    port, _lb = pair_lb
    peer = handshake(port, client_context(pki.ca_path, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers=cipher))
    assert (peer.version, peer.cipher) == ("TLSv1.2", cipher)
    want = pki.dual_ec if "ECDSA" in cipher else pki.dual_rsa
    assert peer.fingerprint == want.fingerprint


@pytest.mark.parametrize("suite", INTERMEDIATE_TLS13)
def test_every_tls13_suite_negotiates(pair_lb, pki, suite):
    port, _lb = pair_lb
    res = s_client(port, "-tls1_3", "-ciphersuites", suite, "-CAfile", str(pki.ca_path), "-verify_return_error")
    assert res.returncode == 0, res.stderr
    assert re.search(rf"Cipher is {suite}\b", res.stdout), res.stdout


@pytest.mark.parametrize("order", [
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305",
])
def test_the_clients_cipher_preference_is_followed(pair_lb, pki, order):
    port, _lb = pair_lb
    peer = handshake(port, client_context(pki.ca_path, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers=order))
    assert peer.cipher == order.split(":")[0]


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_resumption_across_workers(pair_lb, pki, version):
    """Tickets are sealed with keys the workers share (the contexts are built
    before the fork): every connection resumes, whichever worker takes it;
    counted in tls_resumed."""
    port, lb = pair_lb
    v = getattr(ssl.TLSVersion, version)
    ctx = client_context(pki.ca_path, minimum_version=v, maximum_version=v)
    before = sum(w["tls_resumed"] for w in lb.worker_stats())

    def connect(session=None):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="dual.test", session=session) as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: dual.test\r\n\r\n")
                assert t.recv(12) == b"HTTP/1.1 200"     # TLS 1.3: the tickets came before it
                return t.session, t.session_reused

    session, reused = connect()
    assert not reused
    for _ in range(8):
        _s, reused = connect(session)
        assert reused
    wait_for(lambda: sum(w["tls_resumed"] for w in lb.worker_stats()) - before == 8, 5, "8 resumptions counted")


# ---- 3. ALPN -----------------------------------------------------------------------------

@pytest.fixture
def http_lb(pki, origins, run_lb):
    """An http TLS listener (default and a.test) in front of one origin: (port, lb, origin)."""
    o = origins()
    port = free_port()
    lb = run_lb(tls_config(port, [o], certs_toml(pki.default, pki.a)))
    return port, lb, o


GET_CLOSE = b"GET /alpn HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("offer,want", [
    (["h2", "http/1.1"], "http/1.1"),
    (["http/1.1"], "http/1.1"),
    (["h2"], None),                  # nothing in common: no ALPN answer, and the connection goes on
    (["h2", "spdy/3"], None),
], ids=["h2-and-http1.1", "http1.1", "h2-only", "h2-spdy"])
def test_alpn_on_http_listener(http_lb, pki, offer, want):
    port, _lb, _o = http_lb
    for name in ("a.test", None):            # with and without an SNI switch of context
        with MemTls(port, client_context(pki.ca_path, alpn=offer), name) as t:
            assert t.handshake().alpn == want
            t.send(GET_CLOSE)
            status, _fields, body = split_response(t.recv_to_eof())
        assert status == "HTTP/1.1 200 OK"
        assert json.loads(body)["target"] == "/alpn"


def test_alpn_curl_negotiates_http11(http_lb, pki):
    port, _lb, _o = http_lb
    res = subprocess.run(["curl", "-sSv", "--fail", "--http2", "-o", "/dev/null", "-w", "%{http_version}",
                          "--cacert", str(pki.ca_path), "--resolve", f"a.test:{port}:127.0.0.1",
                          f"https://a.test:{port}/"], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "1.1"
    assert re.search(r"ALPN.*accepted.*http/1\.1", res.stderr), res.stderr


@pytest.mark.parametrize("alpn,offer,want", [
    ('alpn = ["foo/1", "bar"]', ["bar", "foo/1"], "foo/1"),   # the listener's preference
    ('alpn = ["foo/1", "bar"]', ["bar"], "bar"),
    ('alpn = ["foo/1", "bar"]', ["baz"], None),
    ("", ["http/1.1"], None),                                  # tcp listeners offer none by default
], ids=["listener-preference", "second", "none-in-common", "tcp-default-none"])
def test_alpn_on_tcp_listener(pki, backends, run_lb, alpn, offer, want):
    b = backends("b1")
    port = free_port()
    run_lb(tls_config(port, [b], certs_toml(pki.default) + alpn, mode="tcp"))
    with MemTls(port, client_context(pki.ca_path, alpn=offer)) as t:
        assert t.handshake().alpn == want
        t.send(b"hello")
        assert t.recv_exact(5) == b"hello".translate(TRANSFORM)


# ---- 4. http mode through TLS ------------------------------------------------------------

def test_curl_through_tls_to_origin(http_lb, pki):
    """curl verifies lb's certificate for a.test; the origin gets the request
    with X-Forwarded-Proto https (a client's own value replaced)."""
    port, _lb, _o = http_lb
    res = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(pki.ca_path), "-H", "X-Forwarded-Proto: http",
                          "--resolve", f"a.test:{port}:127.0.0.1", f"https://a.test:{port}/hello?x=1"],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    echo = json.loads(res.stdout)
    assert echo["target"] == "/hello?x=1"
    assert field(echo, "X-Forwarded-Proto") == ["https"]
    assert field(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert field(echo, "Host") == [f"a.test:{port}"]


def test_forwarded_both_says_https(pki, origins, run_lb):
    port = free_port()
    run_lb(tls_config(port, [origins()], certs_toml(pki.default), listener='forwarded = "both"'))
    with https(port, client_context(pki.ca_path)) as conn:
        echo = echo_of(conn, headers={"Host": "a.test", "Forwarded": "for=192.0.2.1;proto=http"})
    assert field(echo, "X-Forwarded-Proto") == ["https"]
    assert field(echo, "Forwarded") == ['for=192.0.2.1;proto=http, for=127.0.0.1;host="a.test";proto=https']


def test_keepalive_bodies_byte_exact(http_lb, pki):
    """Several requests on one TLS connection (one handshake): 5 MiB up with
    Content-Length and chunked, 5 MiB down with Content-Length and chunked,
    every byte checked."""
    port, lb, _o = http_lb
    before = handshakes(lb)
    big = os.urandom(5 * MIB)
    digest = hashlib.sha256(big).hexdigest()
    with https(port, client_context(pki.ca_path)) as conn:
        e1 = echo_of(conn, "POST", "/up", body=big)
        assert (e1["body_len"], e1["body_sha256"], e1["framing"]) == (len(big), digest, "length")

        pieces = (big[i:i + 100_000] for i in range(0, len(big), 100_000))
        e2 = echo_of(conn, "POST", "/up-chunked", body=pieces, encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        assert (e2["body_len"], e2["body_sha256"]) == (len(big), digest)

        for target in (f"/bytes/{5 * MIB}", f"/bytes/{5 * MIB}?chunked=1&piece=65536"):
            conn.request("GET", target)
            r = conn.getresponse()
            data = r.read()
            assert r.status == 200
            assert len(data) == 5 * MIB and data == payload(5 * MIB), target

        e3 = echo_of(conn, "GET", "/last")
        # one origin connection and one TLS handshake carried them all
        assert (e1["conn"], e2["conn"], e3["conn"]) == (e1["conn"],) * 3
        assert (e1["n"], e2["n"], e3["n"]) == (1, 2, 5)
    assert handshakes(lb) - before == 1


@pytest.mark.parametrize("hsts", ["max-age=63072000; includeSubDomains", ""], ids=["hsts", "no-hsts"])
def test_hsts(pki, origins, run_lb, hsts):
    """With hsts, every response carries exactly lb's value (an origin's own is
    replaced); without it, lb adds none and the origin's passes through."""
    port = free_port()
    run_lb(tls_config(port, [origins()], certs_toml(pki.default) + (f'hsts = "{hsts}"' if hsts else "")))
    with https(port, client_context(pki.ca_path)) as conn:
        conn.request("GET", "/plain")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        assert r.headers.get_all("Strict-Transport-Security") == ([hsts] if hsts else None)
        conn.request("GET", "/status/404?h=Strict-Transport-Security:max-age%3D1")
        r = conn.getresponse()
        r.read()
        assert r.status == 404
        assert r.headers.get_all("Strict-Transport-Security") == [hsts or "max-age=1"]


@pytest.mark.parametrize("rules,want", [
    ('[listeners.web.response_headers]\nset = { "Strict-Transport-Security" = "max-age=1" }', ["max-age=1"]),
    ('[listeners.web.response_headers]\nremove = ["Strict-Transport-Security"]', None),
    ('[[listeners.web.routes]]\npath_prefix = "/"\npool = "p"\n'
     '[listeners.web.routes.response_headers]\nset = { "Strict-Transport-Security" = "max-age=2" }', ["max-age=2"]),
], ids=["listener-set", "listener-remove", "route-set"])
def test_response_header_rules_win_over_hsts(pki, origins, run_lb, rules, want):
    port = free_port()
    text = tls_config(port, [origins()], certs_toml(pki.default) + 'hsts = "max-age=600"')
    run_lb(text.replace("[pools.p]\n", rules + "\n\n[pools.p]\n", 1))
    with https(port, client_context(pki.ca_path)) as conn:
        conn.request("GET", "/x")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        assert r.headers.get_all("Strict-Transport-Security") == want


def test_hsts_on_lbs_own_error_page(pki, run_lb):
    """docs/tls.md: with hsts set, *every* final response carries it, lb's own
    pages too (here a 503: the pool's only backend refuses connections)."""
    port = free_port()

    class Dead:
        name, address = "dead", f"127.0.0.1:{free_port()}"

    run_lb(tls_config(port, [Dead], certs_toml(pki.default) + 'hsts = "max-age=600"'))
    with MemTls(port, client_context(pki.ca_path)) as t:
        t.handshake()
        t.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        status, fields, _body = split_response(t.recv_to_eof())
    assert status.split(" ")[1] in ("502", "503")
    assert fields.get("strict-transport-security") == ["max-age=600"]


def test_pipelined_requests_beyond_one_buffer(http_lb, pki):
    """120 requests of 1.5 KB each in one TLS write (far more than lb's 64 KiB
    request buffer): what OpenSSL decoded and lb had no room for yet must not
    wait for an event that will not come; all are answered, in order."""
    port, _lb, _o = http_lb
    n = 120
    pad = "x" * 1500
    burst = b"".join(f"GET /p/{i} HTTP/1.1\r\nHost: a.test\r\nX-Pad: {pad}\r\n\r\n".encode() for i in range(n))
    assert len(burst) > 2 * 65536
    with MemTls(port, client_context(pki.ca_path), timeout=10) as t:
        t.handshake()
        t.send(burst)
        for i in range(n):
            status, _fields, body = read_response(t)
            assert status == "HTTP/1.1 200 OK"
            assert json.loads(body)["target"] == f"/p/{i}"


def test_websocket_through_tls(http_lb, pki):
    """An upgrade turns the TLS session into a tunnel: a frame the origin sends
    with its 101 arrives, frames of every size come back, 1 MiB both ways."""
    port, _lb, _o = http_lb
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with client_context(pki.ca_path).wrap_socket(s, server_hostname="a.test") as t:
            t.sendall(f"GET /ws?greet=hello HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                      .encode())
            f = t.makefile("rb")
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += f.readline()
            assert head.startswith(b"HTTP/1.1 101 ")
            assert f"Sec-WebSocket-Accept: {ws_accept(key)}".encode() in head
            assert ws_read_frame(f) == (True, 1, b"hello", False)
            for opcode, data in [(1, b"hi"), (2, os.urandom(70000)), (2, os.urandom(MIB)), (9, b"ping")]:
                t.sendall(ws_frame(opcode, data, mask=os.urandom(4)))
                assert ws_read_frame(f) == (True, 10 if opcode == 9 else opcode, data, False)
            close = struct.pack("!H", 1000) + b"bye"
            t.sendall(ws_frame(8, close, mask=os.urandom(4)))
            assert ws_read_frame(f) == (True, 8, close, False)
            assert f.read() == b""


CLOSE_CASES = {
    # how the connection ends -> the request
    "connection-close": b"GET /a HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    "http10-body-to-close": b"GET /bytes/100000?chunked=1 HTTP/1.0\r\nHost: a.test\r\n\r\n",
    "keepalive-timeout": b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n",
    "error-page": b"GET /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: x\r\n\r\n",
}


@pytest.mark.parametrize("how", CLOSE_CASES)
def test_http_close_sends_close_notify(pki, origins, run_lb, how):
    """docs/tls.md: lb sends close_notify before its FIN, however the
    connection ends (a client cannot tell a body delimited by the close from a
    truncated one otherwise)."""
    port = free_port()
    run_lb(tls_config(port, [origins()], certs_toml(pki.default), listener='keepalive_timeout = "300ms"'))
    request = CLOSE_CASES[how]
    with MemTls(port, client_context(pki.ca_path)) as t:
        t.handshake()
        t.send(request)
        data = t.recv_to_eof()
        assert data.startswith(b"HTTP/1.1 ")
        if how == "http10-body-to-close":
            assert split_response(data)[2] == payload(100000)
        assert t.close_notify, "lb closed with a bare FIN"


# ---- 5. tcp mode through TLS -------------------------------------------------------------

VERSIONS = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


def tcp_lb(pki, run_lb, backend, **kw):
    port = free_port()
    lb = run_lb(tls_config(port, [backend], certs_toml(pki.default), mode="tcp", **kw))
    return port, lb


@pytest.mark.parametrize("version", VERSIONS)
def test_tcp_bytes_both_ways_at_once(pki, backends, run_lb, version):
    """3 MiB sent while the transformed answer comes back, from one client
    thread that never waits for one direction to finish; then the client's
    close_notify and FIN reach the backend as an EOF, and lb ends with
    close_notify before its FIN."""
    port, _lb = tcp_lb(pki, run_lb, backends("b1"))
    data = os.urandom(3 * MIB + 1234)
    ctx = client_context(pki.ca_path, minimum_version=VERSIONS[version], maximum_version=VERSIONS[version])
    with MemTls(port, ctx, timeout=20) as t:
        assert t.handshake().version == {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}[version]
        got = t.pump(data, len(data))
        assert len(got) == len(data)
        assert got == data.translate(TRANSFORM)
        assert t.close_notify, "lb closed with a bare FIN"


@pytest.mark.parametrize("version", VERSIONS)
def test_tcp_client_half_close(pki, backends, run_lb, version):
    """The client sends, then close_notify and FIN (SSL unwrap, then
    shutdown(SHUT_WR)): the backend sees every byte then EOF, and its answer,
    written after that EOF, still reaches the client."""
    backend = backends("b1", mode="drain-report")
    port, _lb = tcp_lb(pki, run_lb, backend)
    data = os.urandom(2 * MIB + 7)
    ctx = client_context(pki.ca_path, minimum_version=VERSIONS[version], maximum_version=VERSIONS[version])
    with MemTls(port, ctx) as t:
        t.handshake()
        t.send(data)
        t.close_write()
        assert backend.report() == f"received {len(data)} {hashlib.sha256(data).hexdigest()}"
        assert t.recv_to_eof() == f"ok {len(data)}\n".encode()
        assert t.close_notify


@pytest.mark.parametrize("version", VERSIONS)
def test_tcp_backend_speaks_first_and_half_closes(pki, backends, run_lb, version):
    """The backend sends 1 MiB before the client says anything, then its FIN:
    the client reads it all and lb's close_notify; the client can still send,
    and the backend gets those bytes."""
    backend = backends("b1", mode="speak-first")
    port, _lb = tcp_lb(pki, run_lb, backend)
    ctx = client_context(pki.ca_path, minimum_version=VERSIONS[version], maximum_version=VERSIONS[version])
    with MemTls(port, ctx) as t:
        t.handshake()
        got = t.recv_to_eof()
        assert len(got) == SPEAK_BYTES and got == speak_payload()
        assert t.close_notify
        after = os.urandom(MIB + 5)
        t.send(after)
        t.close_write()
        assert backend.report() == f"received {len(after)} {hashlib.sha256(after).hexdigest()}"


def test_tcp_backend_greets_first(pki, backends, run_lb):
    """A backend that speaks as soon as it is connected (a banner): the
    greeting reaches a client that has sent nothing after its handshake."""
    port, _lb = tcp_lb(pki, run_lb, backends("greeter", hello=True))
    with MemTls(port, client_context(pki.ca_path)) as t:
        t.handshake()
        assert t.recv_exact(len(b"greeter\n")) == b"greeter\n"
        t.send(b"abc")
        assert t.recv_exact(3) == b"abc".translate(TRANSFORM)


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_data_in_the_same_write_as_the_clients_finished(pki, origins, backends, run_lb, mode):
    """The first bytes come in one segment with the client's last handshake
    flight: lb must look for them after the handshake, no further event comes."""
    port = free_port()
    member = origins() if mode == "http" else backends("b1")
    run_lb(tls_config(port, [member], certs_toml(pki.default), mode=mode))
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(pki.ca_path, minimum_version=version, maximum_version=version)
        with MemTls(port, ctx, timeout=5) as t:
            if mode == "http":
                t.handshake(then=b"GET /early HTTP/1.1\r\nHost: a.test\r\n\r\n")
                status, _fields, body = read_response(t)
                assert status == "HTTP/1.1 200 OK" and json.loads(body)["target"] == "/early"
            else:
                t.handshake(then=b"early bytes")
                assert t.recv_exact(11) == b"early bytes".translate(TRANSFORM)


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_client_hello_one_byte_per_segment(pki, origins, backends, run_lb, mode):
    """A ClientHello (and, with accept_proxy, the PROXY header before it) that
    arrives one byte per segment: every byte an event, the handshake goes on."""
    port = free_port()
    member = origins() if mode == "http" else backends("b1")
    run_lb(tls_config(port, [member], certs_toml(pki.default, pki.a), mode=mode, listener="accept_proxy = true"))
    with MemTls(port, client_context(pki.ca_path), "a.test") as t:
        t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = PROXY_HEADERS["v1"] + t.client_hello()
        for i in range(len(first)):
            t.sock.sendall(first[i:i + 1])
        assert t.handshake().fingerprint == pki.a.fingerprint   # the rest of it
        if mode == "http":
            t.send(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
            status, _fields, body = read_response(t)
            assert status == "HTTP/1.1 200 OK"
            assert field(json.loads(body), "X-Forwarded-For") == ["192.0.2.7"]
        else:
            t.send(b"slow")
            assert t.recv_exact(4) == b"slow".translate(TRANSFORM)


def test_http_request_then_client_half_close(http_lb, pki):
    """A client that sends its request then close_notify and FIN (as
    `printf ... | openssl s_client` does) still gets the answer."""
    port, _lb, _o = http_lb
    with MemTls(port, client_context(pki.ca_path)) as t:
        t.handshake()
        t.send(b"GET /half HTTP/1.1\r\nHost: a.test\r\n\r\n")
        t.close_write()
        status, _fields, body = split_response(t.recv_to_eof())
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(body)["target"] == "/half"


def test_many_tls_connections_at_once(pki, backends, run_lb):
    """300 TLS connections open at the same time over two workers, each with
    its own bytes both ways; every handshake counted once."""
    port, lb = tcp_lb(pki, run_lb, backends("b1"), workers=2)
    ctx = client_context(pki.ca_path)
    conns = []
    try:
        for _ in range(300):
            t = MemTls(port, ctx)
            conns.append(t)
            t.sock.sendall(t.client_hello())       # every handshake under way at once
        for t in conns:
            t.handshake()
        for i, t in enumerate(conns):
            t.send(b"conn %06d" % i)
        for i, t in enumerate(conns):
            assert t.recv_exact(11) == (b"conn %06d" % i).translate(TRANSFORM)
        assert sum(w["active"] for w in lb.worker_stats()) == 300
    finally:
        for t in conns:
            t.close()
    assert handshakes(lb) == 300
    wait_for(lambda: sum(w["active"] for w in lb.worker_stats()) == 0, 10, "the connections to be released")


# ---- 6. bad input: each closes only that connection, counted by reason --------------------

HANDSHAKE_TIMEOUT = 0.3


class Guarded:
    """A TLS listener with handshake_timeout 300ms, and a good client that
    opened its connection before anything bad happened and is checked after."""

    def __init__(self, mode, port, lb, member, pki):
        self.mode, self.port, self.lb, self.member = mode, port, lb, member
        self.ctx = client_context(pki.ca_path)
        if mode == "http":
            self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.ctx, timeout=10)
        else:
            self.conn = MemTls(port, self.ctx)
            self.conn.handshake()
        self.n = 0
        self.check_good()

    def check_good(self):
        """The good connection still works; no backend heard of anything else."""
        self.n += 1
        if self.mode == "http":
            echo = echo_of(self.conn, target=f"/good/{self.n}")
            assert (echo["conn"], echo["n"]) == (1, self.n)
            # the origin got this connection's requests and nothing else
            assert self.member.report() == f"request 1 {self.n} GET /good/{self.n}"
            assert self.member.drain_lines() == []
        else:
            msg = b"good %d" % self.n
            self.conn.send(msg)
            assert self.conn.recv_exact(len(msg)) == msg.translate(TRANSFORM)
            if self.n == 1:
                assert self.member.report() == "accepted"
            assert self.member.drain_lines() == []

    def close(self):
        self.conn.close()


@pytest.fixture(params=["http", "tcp"])
def guarded(request, pki, origins, backends, run_lb):
    mode = request.param
    member = origins() if mode == "http" else backends("b1", extra_args=["--report-connections"])
    port = free_port()
    tls = certs_toml(pki.default) + f'handshake_timeout = "{int(HANDSHAKE_TIMEOUT * 1000)}ms"'
    lb = run_lb(tls_config(port, [member], tls, mode=mode))
    g = Guarded(mode, port, lb, member, pki)
    yield g
    g.close()


def client_hello(ctx: ssl.SSLContext | None = None, name: str | None = "a.test") -> bytes:
    mem = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = (ctx or client_context()).wrap_bio(*mem, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return mem[1].read()


def bad_plain_http(g: Guarded):
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"GET /index.html HTTP/1.1\r\nHost: a.test\r\nUser-Agent: plain\r\n\r\n")
        data, how = read_until_closed(s)
    if g.mode == "http":
        assert how == "eof"          # the answer is read first: the close is a FIN, not a reset
        status, fields, body = split_response(data)
        assert status == "HTTP/1.1 400 Bad Request"
        assert fields["connection"] == ["close"]
        assert body == PLAIN_HTTP_BODY
    else:
        assert data == b""


def bad_connect_method(g: Guarded):
    """A proxy request (CONNECT) is plain HTTP too."""
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
        data, _how = read_until_closed(s)
    if g.mode == "http":
        assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n") and data.endswith(PLAIN_HTTP_BODY)
    else:
        assert data == b""


def bad_garbage(g: Guarded):
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(bytes(range(256)) * 4)
        data, _how = read_until_closed(s)
    assert not data.startswith(b"HTTP/")


def bad_garbage_record(g: Guarded):
    """A handshake record that holds no valid handshake message."""
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x08" + b"\x01\x00\x00\x04\xff\xff\xff\xff")
        data, _how = read_until_closed(s)
    assert data == b"" or data[0] == 0x15   # nothing, or an alert record


def timed_close(g: Guarded, first: bytes) -> float:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        if first:
            s.sendall(first)
        data, _how = read_until_closed(s)
    assert data == b"" or data[0] == 0x15
    return time.monotonic() - t0


def bad_silent(g: Guarded):
    elapsed = timed_close(g, b"")
    assert HANDSHAKE_TIMEOUT - 0.02 <= elapsed < HANDSHAKE_TIMEOUT + 3


def bad_half_hello_then_silent(g: Guarded):
    """The timeout covers the whole handshake, not its first byte."""
    hello = client_hello()
    elapsed = timed_close(g, hello[:len(hello) // 2])
    assert HANDSHAKE_TIMEOUT - 0.02 <= elapsed < HANDSHAKE_TIMEOUT + 3


def bad_half_hello_then_fin(g: Guarded):
    hello = client_hello()
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(hello[:len(hello) // 2])
        s.shutdown(socket.SHUT_WR)
        data, _how = read_until_closed(s)
    assert data == b"" or data[0] == 0x15


def bad_half_hello_then_reset(g: Guarded):
    hello = client_hello()
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    s.sendall(hello[:len(hello) // 2])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def python_handshake_fails(g: Guarded, **opts):
    with pytest.raises(ssl.SSLError):
        handshake(g.port, client_context(**opts), "a.test")


def bad_tls11(g: Guarded):
    python_handshake_fails(g, minimum_version=ssl.TLSVersion.TLSv1_1, maximum_version=ssl.TLSVersion.TLSv1_1,
                           ciphers="DEFAULT:@SECLEVEL=0")


def bad_cipher(g: Guarded):
    """TLS 1.2 with only a cipher that has no forward secrecy (not offered)."""
    python_handshake_fails(g, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-GCM-SHA256")


def bad_cipher_for_the_key(g: Guarded):
    """TLS 1.2 with only RSA suites against an ECDSA-only certificate."""
    python_handshake_fails(g, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")


def s_client_fails(g: Guarded, *args):
    res = s_client(g.port, *args, servername="a.test")
    assert res.returncode != 0, res.stdout


def bad_tls13_suite(g: Guarded):
    s_client_fails(g, "-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256")


def bad_group(g: Guarded):
    s_client_fails(g, "-tls1_3", "-groups", "ffdhe2048")


def bad_sigalg(g: Guarded):
    """TLS 1.3, RSA signatures only, against an ECDSA-only certificate."""
    s_client_fails(g, "-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256:rsa_pkcs1_sha256")


BAD_INPUT = [
    (bad_plain_http, "plain_http"),
    (bad_connect_method, "plain_http"),
    (bad_garbage, "protocol"),
    (bad_garbage_record, "protocol"),
    (bad_silent, "timeout"),
    (bad_half_hello_then_silent, "timeout"),
    (bad_half_hello_then_fin, "closed"),
    (bad_half_hello_then_reset, "closed"),
    (bad_tls11, "negotiation"),
    (bad_cipher, "negotiation"),
    (bad_cipher_for_the_key, "negotiation"),
    (bad_tls13_suite, "negotiation"),
    (bad_group, "negotiation"),
    (bad_sigalg, "negotiation"),
]


@pytest.mark.parametrize("bad,reason", BAD_INPUT, ids=[f[0].__name__[4:] for f in BAD_INPUT])
def test_bad_input_counted_by_reason(guarded, bad, reason):
    g = guarded
    before = tls_failed(g.lb)
    bad(g)
    wait_for(lambda: sum(tls_failed(g.lb).values()) > sum(before.values()), 5, "tls_failed to count it")
    after = tls_failed(g.lb)
    assert {k: after[k] - before[k] for k in REASONS} == {k: int(k == reason) for k in REASONS}
    g.check_good()
    # nothing else was counted meanwhile (the good connection's request included)
    assert tls_failed(g.lb) == after


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_plain_http_any_method_is_answered(http_lb, method):
    """Plain HTTP is plain HTTP whatever its method: the 400 that says the port
    speaks HTTPS, then a clean close, counted as plain_http."""
    port, lb, _o = http_lb
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"{method} /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n".encode())
        data, how = read_until_closed(s)
    assert how == "eof"
    status, _fields, body = split_response(data)
    assert (status, body) == ("HTTP/1.1 400 Bad Request", PLAIN_HTTP_BODY)
    assert tls_failed(lb)["plain_http"] == 1


def test_tls_failed_in_lb_status(guarded):
    """The counters are what `lb status --json` shows, per worker."""
    bad_garbage(guarded)
    bad_plain_http(guarded)
    wait_for(lambda: tls_failed(guarded.lb)["plain_http"] == 1, 5, "the plain HTTP client to be counted")
    res = lb_cli(guarded.lb.config_path, "status", "--json")
    assert res.returncode == 0, res.stderr
    workers = json.loads(res.stdout)["workers"]
    assert [w["tls_failed"] for w in workers] == [dict(timeout=0, plain_http=1, negotiation=0, client_cert=0,
                                                      protocol=1, closed=0)]
    assert workers[0]["tls_handshakes"] == 1      # the good client


@pytest.mark.parametrize("protocols,client,refused", [
    ('["TLSv1.3"]', ssl.TLSVersion.TLSv1_2, True),
    ('["TLSv1.3"]', ssl.TLSVersion.TLSv1_3, False),
    ('["TLSv1.2"]', ssl.TLSVersion.TLSv1_3, True),
    ('["TLSv1.2"]', ssl.TLSVersion.TLSv1_2, False),
], ids=["tls13-listener-tls12-client", "tls13-both", "tls12-listener-tls13-client", "tls12-both"])
def test_protocols_setting(pki, origins, run_lb, protocols, client, refused):
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default) + f"protocols = {protocols}"))
    ctx = client_context(pki.ca_path, minimum_version=client, maximum_version=client)
    if refused:
        with pytest.raises(ssl.SSLError):
            handshake(port, ctx)
        wait_for(lambda: tls_failed(lb)["negotiation"] == 1, 5, "the refused version to be counted")
    else:
        assert handshake(port, ctx).version == client.name.replace("_", ".")


# ---- 7. PROXY protocol, then TLS on the same socket ---------------------------------------

PROXY_HEADERS = {
    "v1": b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n",
    "v2": proxy_ref.build(2, "192.0.2.7", 40000, "198.51.100.1", 443),
}


@pytest.mark.parametrize("version", PROXY_HEADERS)
@pytest.mark.parametrize("together", [True, False], ids=["one-write", "two-writes"])
def test_proxy_header_then_tls_http(pki, origins, run_lb, version, together):
    """accept_proxy on a TLS http listener: the PROXY header and the
    ClientHello in one segment (or two writes); lb takes exactly the header
    and the handshake starts at the next byte; the origin sees the header's
    client."""
    port = free_port()
    run_lb(tls_config(port, [origins()], certs_toml(pki.default, pki.a), listener="accept_proxy = true"))
    header = PROXY_HEADERS[version]
    with MemTls(port, client_context(pki.ca_path), "a.test") as t:
        if together:
            peer = t.handshake(header)
        else:
            t.sock.sendall(header)
            peer = t.handshake()
        assert peer.fingerprint == pki.a.fingerprint
        t.send(b"GET /proxied HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        status, _fields, body = split_response(t.recv_to_eof())
    assert status == "HTTP/1.1 200 OK"
    echo = json.loads(body)
    assert field(echo, "X-Forwarded-For") == ["192.0.2.7"]
    assert field(echo, "X-Forwarded-Proto") == ["https"]


class Recorder:
    """A backend that keeps every byte of one connection, to its EOF."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.name, self.address = "rec", f"127.0.0.1:{self.sock.getsockname()[1]}"

    def take(self, timeout: float = 10) -> bytes:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(timeout)
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(b"got %d\n" % len(data))
        return bytes(data)


@pytest.mark.parametrize("version", PROXY_HEADERS)
def test_proxy_header_then_tls_tcp_send_proxy(pki, run_lb, version):
    """tcp mode: accept_proxy and TLS on the client side, send_proxy to the
    backend: the backend gets lb's own v1 header for the client the incoming
    header named, then the decrypted bytes."""
    rec = Recorder()
    port = free_port()
    run_lb(tls_config(port, [rec], certs_toml(pki.default), mode="tcp", listener="accept_proxy = true",
                      pool='send_proxy = "v1"'))
    data = os.urandom(100_000)
    with MemTls(port, client_context(pki.ca_path)) as t:
        t.handshake(PROXY_HEADERS[version])
        t.send(data)
        t.close_write()
        got = rec.take()
        assert t.recv_to_eof() == b"got %d\n" % len(got)
    rec.sock.close()
    assert got == b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n" + data


# ---- 8. config errors, with key paths (lb check) ------------------------------------------

@pytest.fixture(scope="module")
def bad_pki(pki, tmp_path_factory):
    """Files a config check must refuse, or warn about."""
    d = tmp_path_factory.mktemp("bad")
    other = CA(d / "other", name="other CA")
    files = {}
    # a's certificate, then a CA that did not issue it
    files["broken_chain"] = d / "broken-chain.crt"
    files["broken_chain"].write_bytes(pki.a.cert.read_bytes().split(b"-----END CERTIFICATE-----\n")[0]
                                      + b"-----END CERTIFICATE-----\n" + other.path.read_bytes())
    files["expired"] = pki.ca.leaf("expired", ("expired.test",), days=-1, start_days=-30, directory=d)
    files["soon"] = pki.ca.leaf("soon", ("soon.test",), days=5, directory=d)
    files["not_yet"] = pki.ca.leaf("notyet", ("notyet.test",), start_days=2, directory=d)
    files["no_pem"] = d / "no-pem.crt"
    files["no_pem"].write_text("this is not a certificate\n")
    files["bad_key"] = d / "bad.key"
    files["bad_key"].write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    lonely = d / "lonely"
    lonely.mkdir()
    shutil.copy(pki.a.cert, lonely / "site.crt")       # its site.key is missing
    files["lonely_dir"] = lonely
    expired_in_dir = d / "expired-in-dir"
    expired_in_dir.mkdir()
    shutil.copy(pki.a.cert, expired_in_dir / "a.crt")
    shutil.copy(pki.a.key, expired_in_dir / "a.key")
    shutil.copy(files["expired"].cert, expired_in_dir / "old.crt")
    shutil.copy(files["expired"].key, expired_in_dir / "old.key")
    files["expired_dir"] = expired_in_dir
    return files


def check_config(tmp_path: Path, tls: str, mode: str = "http",
                 listener: str = "") -> tuple[subprocess.CompletedProcess, dict]:
    """`lb check --json -c FILE` of a config with that TLS table: (the process, its JSON)."""
    class Member:
        name, address = "b", "127.0.0.1:9"

    path = tmp_path / "check.toml"
    path.write_text(tls_config(9, [Member], tls, mode=mode, listener=listener, admin_dir=str(tmp_path)))
    res = subprocess.run([sys.executable, "-m", "lb", "check", "--json", "-c", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    return res, json.loads(res.stdout)


CERTS = "listeners.web.tls.certificates"
CONFIG_ERRORS = [
    # id, tls table (a function of pki and bad files), mode, key path, message (regex)
    ("key-not-matching", lambda p, b: f'certificates = [{{ cert = "{p.default.cert}", key = "{p.default.key}" }},'
                                      f' {{ cert = "{p.a.cert}", key = "{p.c.key}" }}]',
     "http", f"{CERTS}[1]", r"c\.key is not the key of .*a\.crt"),
    ("key-of-another-type", lambda p, b: f'certificates = [{{ cert = "{p.a.cert}", key = "{p.b.key}" }}]',
     "http", f"{CERTS}[0]", r"b\.key is not the key of .*a\.crt"),
    ("broken-chain", lambda p, b: f'certificates = [{{ cert = "{b["broken_chain"]}", key = "{p.a.key}" }}]',
     "http", f"{CERTS}[0]", r"broken chain: certificate 1 \(CN=a\.test\) is not issued by certificate 2 "
                            r"\(CN=other CA\)"),
    ("expired", lambda p, b: f'certificates = [{{ cert = "{b["expired"].cert}", key = "{b["expired"].key}" }}]',
     "http", f"{CERTS}[0]", r"expired\.crt: expired on \d{4}-\d\d-\d\d"),
    ("missing-file", lambda p, b: f'certificates = [{{ cert = "{p.dir}/nowhere.crt", key = "{p.a.key}" }}]',
     "http", f"{CERTS}[0]", r"nowhere\.crt"),
    ("missing-key-file", lambda p, b: f'certificates = [{{ cert = "{p.a.cert}", key = "{p.dir}/nowhere.key" }}]',
     "http", f"{CERTS}[0]", r"nowhere\.key"),
    ("no-pem", lambda p, b: f'certificates = [{{ cert = "{b["no_pem"]}", key = "{p.a.key}" }}]',
     "http", f"{CERTS}[0]", r"no-pem\.crt holds no PEM certificate"),
    ("bad-key", lambda p, b: f'certificates = [{{ cert = "{p.a.cert}", key = "{b["bad_key"]}" }}]',
     "http", f"{CERTS}[0]", r"bad\.key: not a usable private key"),
    ("combined-without-key", lambda p, b: f'certificates = [{{ cert = "{p.a.cert}" }}]',
     "http", f"{CERTS}[0]", r"a\.crt: not a usable private key"),
    ("relative-path", lambda p, b: 'certificates = [{ cert = "a.crt", key = "a.key" }]',
     "http", f"{CERTS}[0].cert", r"absolute"),
    ("no-certificate", lambda p, b: 'alpn = ["http/1.1"]', "http", CERTS, r"at least one certificate"),
    ("unknown-cipher",
     lambda p, b: f'{certs_toml(p.a)}ciphers = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA257"',
     "http", "listeners.web.tls.ciphers", r"'ECDHE-RSA-AES128-GCM-SHA257' is not known"),
    ("cipher-list-selects-nothing", lambda p, b: f'{certs_toml(p.a)}ciphers = "!ALL"',
     "http", "listeners.web.tls.ciphers", r"."),
    ("unknown-ciphersuite", lambda p, b: f'{certs_toml(p.a)}ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_999"',
     "http", "listeners.web.tls.ciphersuites", r"'TLS_AES_999' is not known"),
    ("unknown-group", lambda p, b: f'{certs_toml(p.a)}groups = "X25519:P-999"',
     "http", "listeners.web.tls.groups", r"'P-999' is not known"),
    ("old-protocol", lambda p, b: f'{certs_toml(p.a)}protocols = ["TLSv1.2", "TLSv1.1"]',
     "http", "listeners.web.tls.protocols[1]", r"'TLSv1\.1' is not one of"),
    ("hsts-on-tcp", lambda p, b: f'{certs_toml(p.a)}hsts = "max-age=600"',
     "tcp", "listeners.web.tls.hsts", r'needs mode = "http"'),
    ("hsts-malformed", lambda p, b: f'{certs_toml(p.a)}hsts = "max-age=forever"',
     "http", "listeners.web.tls.hsts", r"not a Strict-Transport-Security value"),
    ("empty-alpn-id", lambda p, b: f'{certs_toml(p.a)}alpn = ["h2", ""]',
     "http", "listeners.web.tls.alpn[1]", r"not an ALPN protocol id"),
    ("crt-without-key-in-directory", lambda p, b: f'directory = "{b["lonely_dir"]}"',
     "http", "listeners.web.tls.directory", r"site\.crt has no key beside it \(site\.key\)"),
    ("expired-in-directory", lambda p, b: f'{certs_toml(p.default)}directory = "{b["expired_dir"]}"',
     "http", "listeners.web.tls.directory (old.crt)", r"old\.crt: expired on"),
    ("missing-directory", lambda p, b: f'directory = "{p.dir}/no-such-dir"',
     "http", "listeners.web.tls.directory", r"cannot read"),
    ("misspelt-key", lambda p, b: f'{certs_toml(p.a)}handshake_timout = "5s"',
     "http", "listeners.web.tls.handshake_timout", r"handshake_timeout"),
]


@pytest.mark.parametrize("make,mode,path,message", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_config_error_names_its_key(pki, bad_pki, tmp_path, make, mode, path, message):
    res, doc = check_config(tmp_path, make(pki, bad_pki), mode=mode)
    assert res.returncode == 2, res.stdout
    assert doc["ok"] is False
    assert doc["path"] == path, doc
    assert re.search(message, doc["message"]), doc


def test_config_error_text_output(pki, tmp_path):
    """Without --json: `error: <key path>: <message>` on stderr, exit 2."""
    path = tmp_path / "lb.toml"

    class Member:
        name, address = "b", "127.0.0.1:9"

    path.write_text(tls_config(9, [Member], f'certificates = [{{ cert = "{pki.a.cert}", key = "{pki.b.key}" }}]',
                               admin_dir=str(tmp_path)))
    res = subprocess.run([sys.executable, "-m", "lb", "check", "-c", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr == f"error: {CERTS}[0]: {pki.b.key} is not the key of {pki.a.cert}\n", res.stderr


@pytest.mark.parametrize("which,warning", [
    ("soon", r"expires in [45]\.\d days"),
    ("not_yet", r"is not valid yet"),
])
def test_config_warns_but_accepts(pki, bad_pki, tmp_path, which, warning):
    leaf = bad_pki[which]
    res, doc = check_config(tmp_path, certs_toml(pki.default, leaf))
    assert res.returncode == 0, res.stdout
    assert doc["ok"] is True
    assert len(doc["warnings"]) == 1
    assert doc["warnings"][0].startswith(f"{CERTS}[1]: {leaf.cert}")
    assert re.search(warning, doc["warnings"][0]), doc["warnings"]


def test_config_no_warning_for_a_good_certificate(pki, tmp_path):
    res, doc = check_config(tmp_path, certs_toml(pki.default, pki.a, pki.b))
    assert res.returncode == 0, res.stdout
    assert doc["warnings"] == []


# ---- 9. reload ---------------------------------------------------------------------------

def install(leaf, d: Path, stem: str = "site"):
    """Copy a leaf's files to d/STEM.crt and d/STEM.key (replacing them, as a renewal does)."""
    for src, ext in ((leaf.cert, "crt"), (leaf.key, "key")):
        tmp = d / f".{stem}.{ext}.new"
        shutil.copy(src, tmp)
        os.replace(tmp, d / f"{stem}.{ext}")


class Site:
    """What tests serve from fixed paths: d/site.crt and d/site.key."""

    def __init__(self, d: Path):
        self.dir = d
        self.cert, self.key = d / "site.crt", d / "site.key"


@pytest.fixture
def site_lb(pki, origins, run_lb, tmp_path):
    """An http listener serving tmp/site/site.crt (a.test at first)."""
    site = Site(tmp_path / "site")
    site.dir.mkdir()
    install(pki.a, site.dir)
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(site)))
    return port, lb, site


def test_reload_refused_keeps_the_old_certificate(pki, bad_pki, site_lb):
    port, lb, site = site_lb
    ctx = client_context(pki.ca_path)
    text = lb.config_path.read_text()

    # a config whose key is not the certificate's
    lb.config_path.write_text(text.replace(str(site.key), str(pki.b.key)))
    res = lb_cli(lb.config_path, "reload")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"{CERTS}[0]" in res.stderr and "is not the key of" in res.stderr, res.stderr
    assert handshake(port, ctx, "a.test").fingerprint == pki.a.fingerprint

    # the config unchanged, its certificate file replaced by an expired one
    lb.config_path.write_text(text)
    install(bad_pki["expired"], site.dir)
    res = lb_cli(lb.config_path, "reload")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"{CERTS}[0]" in res.stderr and "expired on" in res.stderr, res.stderr
    assert handshake(port, ctx, "a.test").fingerprint == pki.a.fingerprint
    with https(port, ctx) as conn:
        assert echo_of(conn, target="/still")["target"] == "/still"


def test_reload_serves_a_renewed_certificate(pki, site_lb):
    """The certificate files are replaced in place (a renewal) and lb reloaded:
    new connections get the new certificate; a TLS connection of the old
    generation in the middle of a 32 MiB response gets all of it, on its own
    session, and lb, draining, closes it and an idle keep-alive connection
    (docs/http.md: a graceful stop closes idle ones)."""
    port, lb, site = site_lb
    ctx = client_context(pki.ca_path)
    renewed = pki.ca.leaf("a-renewed", ("a.test",), directory=site.dir.parent)
    size = 32 * MIB
    with MemTls(port, ctx, "a.test") as busy, MemTls(port, ctx, "a.test") as idle:
        assert busy.handshake().fingerprint == pki.a.fingerprint
        idle.handshake()
        idle.send(b"GET /idle HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert read_response(idle)[0] == "HTTP/1.1 200 OK"
        busy.send(f"GET /bytes/{size} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        first = busy.recv_exact(MIB)

        install(renewed, site.dir)
        res = lb_cli(lb.config_path, "reload")
        assert res.returncode == 0, res.stderr
        wait_for(lambda: handshake(port, ctx, "a.test").fingerprint == renewed.fingerprint, 5,
                 "new connections to get the renewed certificate")

        head, _, body = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and f"Content-Length: {size}".encode() in head
        body += busy.recv_exact(size - len(body))
        assert body == payload(size)
        assert describe(busy.obj).fingerprint == pki.a.fingerprint
        # the old generation drains: it ends both connections once they are idle
        assert busy.recv_to_eof() == b""
        assert idle.recv_to_eof() == b""


def test_cert_reload_under_load_drops_nothing(pki, origins, run_lb, tmp_path):
    """`lb cert reload` while clients keep requesting, on new connections and on
    kept-alive ones: not one request fails, new connections get the new
    certificate, and a connection opened before keeps its own. The old
    generation closes kept-alive connections once they are idle (docs/http.md);
    the client then does what HTTP clients do (RFC 9112 9.3.1): it sends its
    idempotent request again on a new connection, once."""
    import threading

    site = Site(tmp_path / "site")
    site.dir.mkdir()
    install(pki.a, site.dir)
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(site), workers=2))
    ctx = client_context(pki.ca_path)
    renewed = pki.ca.leaf("a-renewed-load", ("a.test",), directory=tmp_path)
    stop = threading.Event()
    results: list[tuple[str, bool]] = []   # (kind, ok)

    def fresh_connections():
        while not stop.is_set():
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
                conn.request("GET", "/fresh", headers={"Host": "a.test"})
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            results.append(("fresh", ok))

    def kept_alive(conn):
        while not stop.is_set():
            for attempt in range(2):
                try:
                    conn.request("GET", "/kept", headers={"Host": "a.test"})
                    r = conn.getresponse()
                    ok = r.status == 200 and bool(r.read())
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    # closed while idle, before any answer: again, on a new connection
                    conn.close()
                    ok = False
                except (OSError, http.client.HTTPException):
                    ok = False
                    break
            results.append(("kept", ok))

    kept = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    kept.request("GET", "/first", headers={"Host": "a.test"})
    assert kept.getresponse().read()
    before = hashlib.sha256(kept.sock.getpeercert(binary_form=True)).hexdigest()
    threads = [threading.Thread(target=fresh_connections) for _ in range(3)] + [
        threading.Thread(target=kept_alive, args=(kept,))]
    for th in threads:
        th.start()
    try:
        wait_for(lambda: len(results) > 100, 20, "load to run")
        install(renewed, site.dir)
        res = lb_cli(lb.config_path, "cert", "reload")
        assert res.returncode == 0, res.stderr
        wait_for(lambda: handshake(port, ctx, "a.test").fingerprint == renewed.fingerprint, 5,
                 "new connections to get the renewed certificate")
        n = len(results)
        wait_for(lambda: len(results) > n + 100, 20, "load after the swap")
    finally:
        stop.set()
        for th in threads:
            th.join()
    kept.close()
    failed = [kind for kind, ok in results if not ok]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert before == pki.a.fingerprint
    assert any(kind == "kept" for kind, _ in results[n:]), "the kept-alive connection went on after the swap"


def test_reload_keeps_tcp_tls_connections(pki, backends, run_lb, tmp_path):
    """tcp mode: a TLS connection of the old generation keeps moving bytes after
    the reload, while new ones get the new certificate."""
    site = Site(tmp_path / "site")
    site.dir.mkdir()
    install(pki.a, site.dir)
    port = free_port()
    lb = run_lb(tls_config(port, [backends("b1")], certs_toml(site), mode="tcp"))
    ctx = client_context(pki.ca_path)
    with MemTls(port, ctx, "a.test") as old:
        old.handshake()
        old.send(b"before")
        assert old.recv_exact(6) == b"before".translate(TRANSFORM)
        install(pki.c, site.dir)
        res = lb_cli(lb.config_path, "reload")
        assert res.returncode == 0, res.stderr
        wait_for(lambda: handshake(port, ctx).fingerprint == pki.c.fingerprint, 5, "the new certificate")
        for _ in range(3):
            msg = os.urandom(50_000)
            old.send(msg)
            assert old.recv_exact(len(msg)) == msg.translate(TRANSFORM)
        assert describe(old.obj).fingerprint == pki.a.fingerprint


# ---- 10. directory -----------------------------------------------------------------------

@pytest.fixture
def site_dir(pki, tmp_path):
    """first.pem (combined), site2.crt + site2.key, and files that are not read."""
    d = tmp_path / "sites"
    leaves = {
        "first": pki.ca.leaf("first", ("first.test",), combined=True, directory=d),
        "site2": pki.ca.leaf("site2", ("site2.test",), kind="rsa", directory=d),
    }
    (d / "README").write_text("not a certificate\n")
    (d / "notes.txt").write_text("-----BEGIN CERTIFICATE-----\nnot read\n")
    shutil.copy(pki.c.key, d / "orphan.key")
    return d, leaves


def test_directory_by_sni(pki, site_dir, origins, run_lb):
    d, leaves = site_dir
    port = free_port()
    run_lb(tls_config(port, [origins()], f'directory = "{d}"'))
    ctx = client_context(pki.ca_path)
    assert handshake(port, ctx, "first.test").fingerprint == leaves["first"].fingerprint
    assert handshake(port, ctx, "site2.test").fingerprint == leaves["site2"].fingerprint
    # no certificates: the first of the directory, in name order, is the default
    assert handshake(port, ctx, "other.test").fingerprint == leaves["first"].fingerprint
    assert handshake(port, ctx).fingerprint == leaves["first"].fingerprint


def test_directory_after_certificates_and_reread_by_reload(pki, site_dir, origins, run_lb):
    d, leaves = site_dir
    port = free_port()
    lb = run_lb(tls_config(port, [origins()], certs_toml(pki.default) + f'directory = "{d}"'))
    ctx = client_context(pki.ca_path)
    assert handshake(port, ctx, "site2.test").fingerprint == leaves["site2"].fingerprint
    assert handshake(port, ctx, "other.test").fingerprint == pki.default.fingerprint
    assert handshake(port, ctx, "site3.test").fingerprint == pki.default.fingerprint
    site3 = pki.ca.leaf("site3", ("site3.test",), combined=True, directory=d)
    res = lb_cli(lb.config_path, "reload")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: handshake(port, ctx, "site3.test").fingerprint == site3.fingerprint, 5,
             "the directory's new certificate")
    assert handshake(port, ctx, "first.test").fingerprint == leaves["first"].fingerprint


# ---- client certificates -----------------------------------------------------------------

@pytest.fixture(scope="module")
def client_pki(tmp_path_factory):
    """A client CA and two clients of it, and a client of another CA."""
    d = tmp_path_factory.mktemp("client-pki")
    ca = CA(d / "ca", "client CA")
    other = CA(d / "other", "other client CA")
    return {"ca": ca, "alice": ca.leaf("alice", ("alice",), client=True),
            "bob": ca.leaf("bob", ("bob",), client=True, kind="rsa"),
            "mallory": other.leaf("mallory", ("mallory",), client=True)}


def client_cert_ctx(pki, leaf=None) -> ssl.SSLContext:
    ctx = client_context(pki.ca_path)
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    return ctx


def mtls_lb(pki, client_pki, origins, run_lb, verify: str, listener: str = ""):
    port = free_port()
    tls = certs_toml(pki.a) + f'client_ca = "{client_pki["ca"].path}"\nclient_verify = "{verify}"\n'
    lb = run_lb(tls_config(port, [origins()], tls, listener=listener))
    return port, lb


def request_or_refusal(port: int, ctx: ssl.SSLContext, headers=None):
    """The origin's echo of one request, or the ssl error that refused it (in
    TLS 1.3 the server judges the client's certificate after its own Finished,
    so the refusal shows at the first read)."""
    try:
        with https(port, ctx) as conn:
            return echo_of(conn, headers=headers)
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected) as e:
        return e


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_certificate_required(pki, client_pki, origins, run_lb, version):
    port, lb = mtls_lb(pki, client_pki, origins, run_lb, "required")
    ok = client_cert_ctx(pki, client_pki["alice"])
    ok.maximum_version = ok.minimum_version = version
    echo = request_or_refusal(port, ok, headers={"X-Client-Cert-Verify": "FORGED", "X-Client-Cert-Subject": "CN=x"})
    assert isinstance(echo, dict), echo
    assert field(echo, "X-Client-Cert-Subject") == ["CN=alice"]
    assert field(echo, "X-Client-Cert-Sha256") == [client_pki["alice"].fingerprint]
    assert field(echo, "X-Client-Cert-Verify") == ["SUCCESS"]
    for leaf in (None, client_pki["mallory"]):     # no certificate; one from another CA
        ctx = client_cert_ctx(pki, leaf)
        ctx.maximum_version = ctx.minimum_version = version
        assert not isinstance(request_or_refusal(port, ctx), dict)
    wait_for(lambda: tls_failed(lb)["client_cert"] == 2, 5, "both refusals to be counted as client_cert")
    assert tls_failed(lb) == dict(dict.fromkeys(REASONS, 0), client_cert=2)


def test_client_certificate_optional(pki, client_pki, origins, run_lb):
    port, lb = mtls_lb(pki, client_pki, origins, run_lb, "optional")
    # without one: the backend is told NONE, and what the client claimed is gone
    echo = request_or_refusal(port, client_cert_ctx(pki), headers={
        "X-Client-Cert-Subject": "CN=alice", "X-Client-Cert-Sha256": "00" * 32, "X-Client-Cert-Verify": "SUCCESS"})
    assert (field(echo, "X-Client-Cert-Subject"), field(echo, "X-Client-Cert-Sha256"),
            field(echo, "X-Client-Cert-Verify")) == ([], [], ["NONE"])
    echo = request_or_refusal(port, client_cert_ctx(pki, client_pki["bob"]))
    assert (field(echo, "X-Client-Cert-Subject"), field(echo, "X-Client-Cert-Verify")) == (["CN=bob"], ["SUCCESS"])
    # a certificate that does not verify is refused even when optional
    assert not isinstance(request_or_refusal(port, client_cert_ctx(pki, client_pki["mallory"])), dict)
    wait_for(lambda: tls_failed(lb)["client_cert"] == 1, 5, "the refusal to be counted")


def test_client_certificate_fields_renamed_and_kept_by_resumption(pki, client_pki, origins, run_lb):
    port = free_port()
    tls = (certs_toml(pki.a) + f'client_ca = "{client_pki["ca"].path}"\n'
           'client_headers = { subject = "X-SSL-Client-DN", fingerprint = "X-SSL-Client-SHA256", '
           'verify = "X-SSL-Client-Verify" }\n')
    run_lb(tls_config(port, [origins()], tls))
    ctx = client_cert_ctx(pki, client_pki["alice"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2     # a session to resume at once
    session = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            with ctx.wrap_socket(s, session=session) as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := t.recv(65536):
                    data += chunk
                reused, session = t.session_reused, t.session
        echo = json.loads(split_response(data)[2])
        assert field(echo, "X-SSL-Client-DN") == ["CN=alice"]
        assert field(echo, "X-SSL-Client-SHA256") == [client_pki["alice"].fingerprint]
        assert field(echo, "X-Client-Cert-Subject") == []
    assert reused, "the second connection resumed"
