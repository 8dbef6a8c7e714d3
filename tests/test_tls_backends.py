"""TLS to backends (configuration section 6b, docs/tls.md "TLS to backends")
and TLS health checks, end to end: a real `lb run` in front of a real nginx
serving TLS (tests/tls_servers.py), and, in tcp mode, TLS servers in the test
process that record what each connection showed.

What the origin saw of lb's TLS connection (the server name, whether the
session was resumed, which connection and which request on it, lb's client
certificate) is read from nginx's own answer and access log; which
certificate lb accepted is decided by which origin answered.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from backend_server import TRANSFORM
from conftest import free_port, wait_for
from tls_certs import CA
from tls_servers import Nginx, NginxSite, lb_toml, listener_toml, pool_toml, tls_servers  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN_ISSUER = "TLS handshake failed (certificate: unable to get local issuer certificate)"
SELF_SIGNED_IN_CHAIN = "TLS handshake failed (certificate: self-signed certificate in certificate chain)"
SERVICE_UNAVAILABLE = b"503 Service Unavailable\n"


# ---- certificates and the nginx ------------------------------------------------------------

class Pki:
    def __init__(self, d: Path):
        self.ca = CA(d / "ca", "backend CA")
        self.other = CA(d / "other", "other CA")
        self.client_ca = CA(d / "client", "lb client CA")
        self.origin = self.ca.leaf("origin", ("127.0.0.1", "origin.test"))      # IP SAN and DNS name
        self.dns_only = self.ca.leaf("dns-only", ("origin.test",))             # no IP SAN
        self.stranger = self.other.leaf("stranger", ("127.0.0.1", "origin.test"))
        # the same leaf served without its CA: nothing in the chain lb is given says who issued it
        self.stranger_alone = d / "stranger-alone.crt"
        pem = self.stranger.cert.read_text()
        self.stranger_alone.write_text(pem[:pem.index("-----END CERTIFICATE-----") + 26])
        self.lb_client = self.client_ca.leaf("lb-proxy", ("lb-proxy",), client=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("backend-pki"))


@pytest.fixture(scope="module")
def nginx(pki, tmp_path_factory):
    """One nginx, one TLS site per kind of origin the tests need."""
    o = pki.origin
    ng = Nginx([
        NginxSite("good", o.cert, o.key),
        NginxSite("good12", o.cert, o.key, protocols="TLSv1.2"),
        NginxSite("dns-only", pki.dns_only.cert, pki.dns_only.key),
        NginxSite("stranger", pki.stranger.cert, pki.stranger.key),
        NginxSite("stranger-alone", pki.stranger_alone, pki.stranger.key),
        NginxSite("mtls", o.cert, o.key, client_ca=pki.client_ca.path),
        NginxSite("proxied", o.cert, o.key, proxy_protocol=True),
    ], tmp_path_factory.mktemp("nginx"))
    yield ng
    ng.stop()


def member(ng: Nginx, site: str) -> tuple[str, str]:
    return site, ng[site].address


def http_lb(run_lb, members, tls: str, *, pool_extra: str = "", health: str = 'type = "none"',
            passive: str = "", workers: int = 1):
    """A plain http listener in front of pool p, which speaks TLS to members: (port, lb)."""
    port = free_port()
    lb = run_lb(lb_toml(listener_toml("web", port, "p"),
                        pool_toml("p", members, tls=tls, extra=pool_extra, health=health, passive=passive),
                        workers=workers))
    return port, lb


def get(port: int, target: str = "/", conn: http.client.HTTPConnection | None = None):
    """(status, body) of one GET; on conn when given (kept alive), else on a new connection."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", target)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        if own:
            c.close()


def origin_saw(port: int, target: str = "/", conn=None) -> dict:
    """What the origin saw of a request that must succeed."""
    status, body = get(port, target, conn)
    assert status == 200, (status, body[:300])
    return json.loads(body)


def lb_cli(config_path, *args, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", "-c", str(config_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def status_backends(lb, pool: str = "p") -> dict:
    res = lb_cli(lb.config_path, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["pools"][pool]["backends"]


def ca_toml(pki, extra: str = "") -> str:
    return f'ca = "{pki.ca.path}"\n' + extra


# ---- http mode: verification -----------------------------------------------------------------

def test_verified_by_ip_address(pki, nginx, run_lb):
    """No sni: lb sends no server name, and the origin's certificate must be
    for its IP address (an IP SAN 127.0.0.1)."""
    port, lb = http_lb(run_lb, [member(nginx, "good")], ca_toml(pki))
    echo = origin_saw(port, "/by-ip")
    assert (echo["site"], echo["uri"], echo["sni"], echo["protocol"]) == ("good", "/by-ip", "", "TLSv1.3")
    assert lb.backend_stats(0)["connect_errors"] == 0


def test_verified_by_sni_name(pki, nginx, run_lb):
    """sni: the origin sees that server name, and a certificate for the name
    (without an IP SAN) is accepted."""
    port, _lb = http_lb(run_lb, [member(nginx, "dns-only")], ca_toml(pki, 'sni = "origin.test"'))
    echo = origin_saw(port, "/by-name")
    assert (echo["site"], echo["sni"]) == ("dns-only", "origin.test")


@pytest.mark.parametrize("site,sni", [
    ("dns-only", ""),                # no sni: the certificate has no IP SAN for 127.0.0.1
    ("good", "other.test"),          # sni: the certificate is not for that name
    ("stranger", ""),                # issued by a CA lb does not trust
], ids=["no-ip-san", "name-mismatch", "unknown-ca"])
def test_refused_certificate_is_a_failed_connect(pki, nginx, run_lb, site, sni):
    """A certificate lb refuses: no request reaches the origin, the client gets
    lb's 503 (no backend could be connected, docs/http.md), and the backend's
    connect_errors and the worker's no_backend count it."""
    tls = ca_toml(pki, f'sni = "{sni}"' if sni else "")
    port, lb = http_lb(run_lb, [member(nginx, site)], tls)
    before = len(nginx.access(site))
    status, body = get(port, "/refused")
    assert (status, body) == (503, SERVICE_UNAVAILABLE)
    assert len(nginx.access(site)) == before, "a request reached the origin"
    assert lb.backend_stats(0)["connect_errors"] == 1
    assert sum(w["no_backend"] for w in lb.worker_stats()) == 1


def test_verify_false_accepts_any_certificate(pki, nginx, run_lb):
    port, _lb = http_lb(run_lb, [member(nginx, "stranger")], "verify = false")
    assert origin_saw(port)["site"] == "stranger"


def test_bad_backend_skipped_every_request_served_by_the_good_one(pki, nginx, run_lb):
    """Two backends, the second with a certificate of an unknown CA: each
    request the pool sends there goes on to the good one; the bad one's
    refusals are counted as connect errors."""
    port, lb = http_lb(run_lb, [member(nginx, "good"), member(nginx, "stranger")], ca_toml(pki),
                       passive="consecutive_failures = 0")
    for i in range(8):
        assert origin_saw(port, f"/skip-bad/{i}")["site"] == "good"
    assert lb.backend_stats(0)["connect_errors"] == 0
    assert lb.backend_stats(1)["connect_errors"] >= 3      # roundrobin picked it about every other request
    assert not [r for r in nginx.access("stranger") if r["uri"].startswith("/skip-bad/")]


def test_passive_ejection_counts_tls_handshake_failures(pki, nginx, run_lb):
    """docs (6b): a backend whose handshake fails is a failed connect, and
    "passive ejection counts it": with consecutive_failures = 3, the backend
    whose certificate lb refuses is ejected after 3 refusals in a row."""
    port, lb = http_lb(run_lb, [member(nginx, "good"), member(nginx, "stranger")], ca_toml(pki),
                       passive='consecutive_failures = 3\neject_time = "30s"')
    for i in range(12):
        assert origin_saw(port, f"/e{i}")["site"] == "good"
    assert lb.backend_stats(1)["connect_errors"] >= 3
    wait_for(lambda: lb.shm.backend(0, 1)["health"] == "down", 3,
             "the backend whose handshakes fail to be ejected "
             f"(consecutive failures seen: {lb.backend_stats(1).get('consecutive_failures')})")


# ---- http mode: connections and sessions ---------------------------------------------------------

def test_keepalive_reuses_one_tls_connection(pki, nginx, run_lb):
    """Requests one after the other, from one client connection and from new
    ones: they all ride one kept-alive TLS connection to the origin."""
    port, _lb = http_lb(run_lb, [member(nginx, "good")], ca_toml(pki))
    seen = []
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(3):
        seen.append(origin_saw(port, conn=client))
    client.close()
    for _ in range(3):
        seen.append(origin_saw(port))
    assert len({e["connection"] for e in seen}) == 1, seen
    assert [int(e["requests"]) for e in seen] == [1, 2, 3, 4, 5, 6]
    assert seen[0]["reused"] == "."


@pytest.mark.parametrize("site", ["good", "good12"], ids=["tls13", "tls12"])
def test_new_backend_connections_resume_the_session(pki, nginx, run_lb, site):
    """keepalive_max_idle = 0: every request opens a new TLS connection to the
    origin; the first is a full handshake, the next ones resume lb's session
    with that backend."""
    port, _lb = http_lb(run_lb, [member(nginx, site)], ca_toml(pki), pool_extra="keepalive_max_idle = 0")
    seen = [origin_saw(port, f"/s{i}") for i in range(4)]
    assert len({e["connection"] for e in seen}) == 4, seen
    assert {e["protocol"] for e in seen} == {"TLSv1.3" if site == "good" else "TLSv1.2"}
    assert [e["reused"] for e in seen] == [".", "r", "r", "r"]


def test_each_backend_resumes_its_own_session(pki, nginx, run_lb):
    """Two backends of one pool (one TLS 1.3, one TLS 1.2 only), taken in
    turn on new connections: each resumes the session lb made with it."""
    port, _lb = http_lb(run_lb, [member(nginx, "good"), member(nginx, "good12")], ca_toml(pki),
                        pool_extra="keepalive_max_idle = 0")
    seen = [origin_saw(port, f"/two/{i}") for i in range(6)]
    by_site = {site: [(e["protocol"], e["reused"]) for e in seen if e["site"] == site] for site in ("good", "good12")}
    assert by_site == {"good": [("TLSv1.3", "."), ("TLSv1.3", "r"), ("TLSv1.3", "r")],
                       "good12": [("TLSv1.2", "."), ("TLSv1.2", "r"), ("TLSv1.2", "r")]}


def test_send_proxy_in_clear_before_the_handshake_http(pki, nginx, run_lb):
    """http mode, send_proxy with TLS: nginx (`listen ... ssl proxy_protocol`)
    reads lb's PROXY header before the handshake and sees the client's address."""
    port, _lb = http_lb(run_lb, [member(nginx, "proxied")], ca_toml(pki), pool_extra='send_proxy = "v1"')
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.connect()
    client_port = c.sock.getsockname()[1]
    echo = origin_saw(port, "/proxied", conn=c)
    c.close()
    assert (echo["site"], echo["proxy_addr"], echo["proxy_port"]) == ("proxied", "127.0.0.1", str(client_port))


def test_tls_pool_in_front_of_a_plain_backend(pki, run_lb, backends):
    """A pool with TLS whose backend speaks plain text (a greeting as soon as
    it is connected): that is no TLS answer, so the check says the handshake
    failed (no certificate to blame) and no request gets through (503)."""
    b = backends("plain", hello=True)
    port, lb = http_lb(run_lb, [("plain", b.address)], ca_toml(pki), health=checks("tcp"))
    status_b = wait_health(lb, {"plain": "down"})
    assert status_b["plain"]["down_reason"].startswith("TLS handshake failed, check took"), status_b["plain"]
    assert get(port) == (503, SERVICE_UNAVAILABLE)


# ---- http mode: lb's client certificate -------------------------------------------------------

def test_client_certificate_to_an_origin_that_requires_one(pki, nginx, run_lb):
    tls = ca_toml(pki, f'cert = "{pki.lb_client.cert}"\nkey = "{pki.lb_client.key}"')
    port, _lb = http_lb(run_lb, [member(nginx, "mtls")], tls)
    echo = origin_saw(port, "/mtls")
    assert (echo["site"], echo["client_dn"], echo["client_verify"]) == ("mtls", "CN=lb-proxy", "SUCCESS")


def test_no_client_certificate_the_origin_refuses(pki, nginx, run_lb):
    """Without cert/key, nginx (ssl_verify_client on) answers its own 400:
    the request never reaches the location."""
    port, _lb = http_lb(run_lb, [member(nginx, "mtls")], ca_toml(pki))
    status, body = get(port, "/no-cert")
    assert status == 400 and b"No required SSL certificate was sent" in body, (status, body[:300])


# ---- tcp mode ----------------------------------------------------------------------------------

def tcp_lb(run_lb, members, tls: str, pool_extra: str = "", passive: str = ""):
    port = free_port()
    lb = run_lb(lb_toml(listener_toml("t", port, "p", mode="tcp"),
                        pool_toml("p", members, tls=tls, extra=pool_extra, passive=passive)))
    return port, lb


def exchange(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send data (from a thread) while reading the answer, then half-close:
    everything the backend sent back, to its EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        def send():
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send)
        t.start()
        got = bytearray()
        while chunk := s.recv(1 << 18):
            got += chunk
        t.join()
        return bytes(got)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_tcp_mode_bytes_intact_through_a_tls_backend(pki, run_lb, tls_servers, version):
    server = tls_servers("b1", pki.origin, versions=(version, version))
    port, _lb = tcp_lb(run_lb, [("b1", server.address)], ca_toml(pki))
    data = os.urandom(3 * (1 << 20) + 17)
    got = exchange(port, data)
    assert len(got) == len(data) and got == data.translate(TRANSFORM)
    (conn,) = server.wait_conns(1)
    assert (conn.error, conn.version, conn.sni, conn.received) == (None, version.name.replace("_", "."), None,
                                                                    len(data))


def test_tcp_mode_send_proxy_header_in_clear_then_tls(pki, run_lb, tls_servers):
    """The backend reads lb's PROXY header raw, then the ClientHello comes on
    the same socket: the header went first, in clear, and the bytes after the
    handshake are intact."""
    server = tls_servers("b1", pki.origin, proxy=True)
    port, _lb = tcp_lb(run_lb, [("b1", server.address)], ca_toml(pki, 'sni = "origin.test"'),
                       pool_extra='send_proxy = "v1"')
    data = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        client_port = s.getsockname()[1]
        s.sendall(data)
        got = bytearray()
        while len(got) < len(data):
            chunk = s.recv(1 << 18)
            assert chunk, f"closed after {len(got)} bytes"
            got += chunk
    assert bytes(got) == data.translate(TRANSFORM)
    (conn,) = server.wait_conns(1)
    assert conn.proxy == f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n".encode()
    assert conn.hello[:1] == b"\x16" and conn.hello[5:6] == b"\x01", conn.hello[:6]   # a ClientHello record
    assert (conn.error, conn.sni) == (None, "origin.test")


def test_tcp_mode_resumes_on_new_backend_connections(pki, run_lb, tls_servers):
    server = tls_servers("b1", pki.origin, versions=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2))
    port, _lb = tcp_lb(run_lb, [("b1", server.address)], ca_toml(pki))
    for i in range(3):
        assert exchange(port, b"hello %d" % i) == (b"hello %d" % i).translate(TRANSFORM)
    assert [c.reused for c in server.wait_conns(3)] == [False, True, True]


def test_tcp_mode_session_survives_a_reset_connection(pki, run_lb, tls_servers):
    """A client that resets its connection makes lb reset the backend's too:
    the session lb keeps with that backend must still resume the next
    connection (the reset is the client's doing, not the session's)."""
    server = tls_servers("b1", pki.origin, versions=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2))
    port, lb = tcp_lb(run_lb, [("b1", server.address)], ca_toml(pki))
    assert exchange(port, b"one") == b"one".translate(TRANSFORM)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"two")
    assert s.recv(3) == b"two".translate(TRANSFORM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()                                  # a reset
    wait_for(lambda: sum(w["active"] for w in lb.worker_stats()) == 0, 5, "lb to close both sides")
    for msg in (b"three", b"four"):
        assert exchange(port, msg) == msg.translate(TRANSFORM)
    assert [c.reused for c in server.wait_conns(4)] == [False, True, True, True]


def test_tcp_mode_bad_backend_certificate_goes_to_the_next(pki, run_lb, tls_servers):
    """docs (6b), in tcp and http mode alike: a backend whose handshake fails
    is a failed connect, and the connection goes to another backend when it
    can. Two backends, the second with a certificate of an unknown CA: every
    connection gets its bytes back, from the good one."""
    good = tls_servers("good", pki.origin)
    bad = tls_servers("bad", pki.stranger)
    port, lb = tcp_lb(run_lb, [("good", good.address), ("bad", bad.address)], ca_toml(pki),
                      passive="consecutive_failures = 0")
    results = []
    for i in range(4):
        msg = b"connection %d" % i
        try:
            results.append("ok" if exchange(port, msg, timeout=5) == msg.translate(TRANSFORM) else "wrong bytes")
        except OSError as e:
            results.append(type(e).__name__)
    assert bad.conns, "roundrobin never tried the bad backend"
    errors = lb.backend_stats(1)["connect_errors"]
    assert (results, errors >= 1) == (["ok"] * 4, True), \
        f"what each connection got: {results}; the bad backend's connect_errors: {errors}"


# ---- TLS health checks ---------------------------------------------------------------------------

def checks(kind: str, extra: str = "") -> str:
    return f'type = "{kind}"\ninterval = "100ms"\ntimeout = "1s"\nrise = 1\nfall = 1\n' + extra


def wait_health(lb, want: dict, timeout: float = 10) -> dict:
    """`lb status --json` once every named backend has the health wanted."""
    def ok():
        b = status_backends(lb)
        return b if all(b[name]["health"] == h for name, h in want.items()) else None

    try:
        return wait_for(ok, timeout, f"backends {want}")
    except AssertionError as e:
        now = {name: (b["health"], b["check"]) for name, b in status_backends(lb).items()}
        raise AssertionError(f"{e}; they are (health, last check): {now}") from None


@pytest.mark.parametrize("kind,bad,reason", [
    ("tcp", "stranger-alone", UNKNOWN_ISSUER),
    ("http", "stranger-alone", UNKNOWN_ISSUER),
    ("tcp", "stranger", SELF_SIGNED_IN_CHAIN),     # its chain file ends with the other CA
], ids=["tcp", "http", "tcp-chain-with-its-ca"])
def test_tls_check_up_for_the_origin_down_for_another_ca(pki, nginx, run_lb, kind, bad, reason):
    """The checks speak TLS with the pool's verification: the origin passes;
    the one whose certificate comes from another CA is down, and `lb status`
    says why in OpenSSL's words."""
    port, lb = http_lb(run_lb, [member(nginx, "good"), member(nginx, bad)], ca_toml(pki), health=checks(kind))
    b = wait_health(lb, {"good": "up", bad: "down"})
    assert b["good"]["check"].startswith("passed")
    assert b[bad]["down_reason"].startswith(reason + ", check took "), b[bad]["down_reason"]
    assert b[bad]["check"].startswith(reason)
    if kind == "http":
        rows = [r for r in nginx.access("good") if r["agent"] == "lb-check"]
        assert rows and {(r["uri"], r["protocol"], r["status"]) for r in rows} == {("/healthz", "TLSv1.3", "200")}
        assert [r for r in nginx.access(bad) if r["agent"] == "lb-check"] == []
    # traffic follows: every request to the good one
    for _ in range(4):
        assert origin_saw(port)["site"] == "good"


def test_tls_check_by_sni_name(pki, nginx, run_lb):
    """With sni, the check sends it and verifies the certificate by name."""
    _port, lb = http_lb(run_lb, [member(nginx, "dns-only")], ca_toml(pki, 'sni = "origin.test"'),
                        health=checks("http", 'path = "/sni-check"'))
    wait_health(lb, {"dns-only": "up"})
    wait_for(lambda: [r for r in nginx.access("dns-only") if r["uri"] == "/sni-check"], 5, "a check request")
    assert {r["sni"] for r in nginx.access("dns-only") if r["uri"] == "/sni-check"} == {"origin.test"}


@pytest.mark.parametrize("path,expect,health,reason", [
    ("/status/204", "204", "up", "passed"),
    ("/status/503", "200-399", "down", "bad status 503"),
    ("/status/204", "200", "down", "bad status 204"),
])
def test_tls_http_check_expect_status(pki, nginx, run_lb, path, expect, health, reason):
    _port, lb = http_lb(run_lb, [member(nginx, "good")], ca_toml(pki),
                        health=checks("http", f'path = "{path}"\nexpect_status = "{expect}"'))
    b = wait_health(lb, {"good": health})
    assert b["good"]["check"].startswith(reason), b["good"]["check"]


def test_tls_check_without_client_certificate_is_refused_by_an_mtls_origin(pki, nginx, run_lb):
    """An http check of an origin that requires a client certificate: with
    the pool's cert it passes, without it nginx answers 400 (bad status)."""
    with_cert = ca_toml(pki, f'cert = "{pki.lb_client.cert}"\nkey = "{pki.lb_client.key}"')
    _p, lb = http_lb(run_lb, [member(nginx, "mtls")], with_cert, health=checks("http"))
    assert wait_health(lb, {"mtls": "up"})["mtls"]["check"].startswith("passed")
    _p, lb2 = http_lb(run_lb, [member(nginx, "mtls")], ca_toml(pki), health=checks("http"))
    assert wait_health(lb2, {"mtls": "down"})["mtls"]["down_reason"].startswith("bad status 400")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_tls_tcp_check_of_a_backend_that_refuses_lb(pki, run_lb, tls_servers, version):
    """A backend that requires a client certificate lb does not have refuses
    every connection lb makes: its tcp check ("passes when the handshake
    does") must fail too. In TLS 1.3 the server's verdict on the client's
    certificate comes after the client's side of the handshake is done."""
    server = tls_servers("b1", pki.origin, client_ca=pki.client_ca.path, versions=(version, version))
    _p, lb = http_lb(run_lb, [("b1", server.address)], ca_toml(pki), health=checks("tcp"))
    conns = server.wait_conns(3)
    assert all(c.error for c in conns), [c.error for c in conns]     # the backend refused every check
    b = wait_health(lb, {"b1": "down"}, timeout=3)
    assert b["b1"]["down_reason"].startswith("TLS handshake failed"), b["b1"]["down_reason"]


@pytest.mark.parametrize("kind,version", [
    ("tcp", ssl.TLSVersion.TLSv1_2), ("tcp", ssl.TLSVersion.TLSv1_3),
    ("http", ssl.TLSVersion.TLSv1_2), ("http", ssl.TLSVersion.TLSv1_3),
], ids=["tcp-tls12", "tcp-tls13", "http-tls12", "http-tls13"])
def test_tls_checks_resume_their_sessions(pki, nginx, run_lb, tls_servers, kind, version):
    """docs: health checks speak TLS "resuming their own sessions": after the
    first check of a backend, the next ones resume its session."""
    if kind == "tcp":
        server = tls_servers("b1", pki.origin, versions=(version, version))
        _p, _lb = http_lb(run_lb, [("b1", server.address)], ca_toml(pki), health=checks("tcp"))
        reused = [c.reused for c in server.wait_conns(5)]
    else:
        site = "good" if version == ssl.TLSVersion.TLSv1_3 else "good12"
        path = f"/resume-check-{version.name}"
        _p, _lb = http_lb(run_lb, [member(nginx, site)], ca_toml(pki), health=checks("http", f'path = "{path}"'))
        rows = wait_for(lambda: (r := [x for x in nginx.access(site) if x["uri"] == path])[4:] and r, 10,
                        "5 checks")
        reused = [r["reused"] == "r" for r in rows[:5]]
    assert reused[0] is False
    assert all(reused[1:]), f"checks that resumed: {reused}"
