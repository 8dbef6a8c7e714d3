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
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from backend_server import SPEAK_BYTES, TRANSFORM, speak_payload
from conftest import LbProcess, free_port, wait_for
from http_origin import Origin, payload
from tests.reference import proxy_ref
from tls_certs import CA
from tls_client import MemTls, client_context, describe, handshake

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
    run_dir = admin_dir or tempfile.mkdtemp(prefix="lb-test-")
    text = textwrap.dedent(f"""\
        [global]
        workers = {workers}
        drain_timeout = "5s"
        admin_socket = "{run_dir}/admin.sock"
        state_file = "{run_dir}/state.json"

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


def lb_cli(config_path, *args, timeout: float = 30) -> subprocess.CompletedProcess:
    """`lb -c FILE ARGS...` of this checkout."""
    return subprocess.run([sys.executable, "-m", "lb", "-c", str(config_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def tls_failed(lb: LbProcess) -> dict:
    """workers[].tls_failed, summed over the workers."""
    out = dict.fromkeys(REASONS, 0)
    for w in lb.worker_stats():
        for reason, n in w["tls_failed"].items():
            out[reason] += n
    return out


def handshakes(lb: LbProcess) -> int:
    return sum(w["tls_handshakes"] for w in lb.worker_stats())


@pytest.fixture
def origins():
    started: list[Origin] = []

    def start(name: str = "o") -> Origin:
        o = Origin(name)
        started.append(o)
        return o

    yield start
    for o in started:
        o.stop()


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


def split_response(raw: bytes) -> tuple[str, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], fields, body


def has_openssl() -> bool:
    return shutil.which("openssl") is not None


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


@pytest.mark.skipif(not has_openssl(), reason="needs the openssl command")
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
