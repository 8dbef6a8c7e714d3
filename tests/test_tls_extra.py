"""TLS end to end, beyond termination (tests/test_tls.py) and TLS to backends
(tests/test_tls_backends.py):

1. passthrough by server name (`tls_passthrough`, configuration section 3):
   the ClientHello's SNI picks the pool, the backends (TLS servers in the test
   process, each with its own certificate) terminate TLS;
2. session resumption across `lb reload`, without tickets, and with a
   `ticket_keys` file shared by two lb processes (docs/tls.md);
3. sslyze's check of a default TLS listener against Mozilla's intermediate
   configuration.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from backend_server import TRANSFORM
from conftest import LbProcess, free_port, wait_for
from http_origin import Origin
from tests.reference import proxy_ref
from tls_certs import CA
from tls_client import MemTls, client_context, lb_cli, read_until_closed
from tls_servers import lb_toml, listener_toml, pool_toml, tls_servers  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


class Pki:
    def __init__(self, d: Path):
        self.ca = CA(d / "ca", "passthrough CA")
        self.a = self.ca.leaf("a", ("a.test",))
        self.shop = self.ca.leaf("shop", ("*.shop.test",), kind="rsa")
        self.default = self.ca.leaf("default", ("default.test",))
        self.site = self.ca.leaf("site", ("site.test",))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("extra-pki"))


# ---- 1. passthrough ----------------------------------------------------------------------------

class Edge:
    """A passthrough listener: a.test -> pool "a", *.shop.test -> pool "shop",
    anything else -> pool "dflt"; each pool one TlsServer with its certificate."""

    def __init__(self, pki, run_lb, tls_servers, *, listener_extra: str = "", a_proxy: bool = False,
                 a_pool_extra: str = ""):
        self.servers = {"a": tls_servers("a", pki.a, proxy=a_proxy), "shop": tls_servers("shop", pki.shop),
                        "dflt": tls_servers("dflt", pki.default)}
        self.leaves = {"a": pki.a, "shop": pki.shop, "dflt": pki.default}
        self.port = free_port()
        self.lb = run_lb(lb_toml(
            listener_toml("edge", self.port, "dflt", mode="tcp", extra="tls_passthrough = true\n" + listener_extra,
                          routes=[("a.test", "a"), ("*.shop.test", "shop")]),
            pool_toml("a", [("a1", self.servers["a"].address)], extra=a_pool_extra),
            pool_toml("shop", [("shop1", self.servers["shop"].address)]),
            pool_toml("dflt", [("dflt1", self.servers["dflt"].address)]),
        ))
        self.ctx = client_context(pki.ca.path)

    def which(self, fingerprint: str) -> str | None:
        return next((k for k, leaf in self.leaves.items() if leaf.fingerprint == fingerprint), None)

    def counts(self) -> dict:
        return {k: len(s.conns) for k, s in self.servers.items()}

    def stats(self) -> dict:
        ws = self.lb.worker_stats()
        return {"idle_timeouts": sum(w["idle_timeouts"] for w in ws),
                "protocol": sum(w["tls_failed"]["protocol"] for w in ws),
                "tls_handshakes": sum(w["tls_handshakes"] for w in ws),
                "splice_bytes": sum(w["splice_bytes"] for w in ws)}


@pytest.fixture
def edge(pki, run_lb, tls_servers):
    return Edge(pki, run_lb, tls_servers)


ROUTES = [
    ("a.test", "a"),
    ("A.Test", "a"),                 # names compare without regard to case
    ("a.test.", "a"),                # a trailing dot names the same host
    ("x.shop.test", "shop"),
    ("a.b.shop.test", "shop"),       # a route's wildcard matches any subdomain
    ("shop.test", "dflt"),           # but not the name itself
    ("unknown.test", "dflt"),
    (None, "dflt"),                  # no SNI
]


@pytest.mark.parametrize("name,want", ROUTES, ids=[str(r[0]) for r in ROUTES])
def test_passthrough_routes_by_server_name(edge, name, want):
    """Each client reaches the backend its name routes to: the certificate it
    gets is that backend's, the backend saw the name, and bytes come back."""
    with MemTls(edge.port, edge.ctx, name) as t:
        peer = t.handshake()
        assert edge.which(peer.fingerprint) == want
        t.send(b"hello " + want.encode())
        assert t.recv_exact(6 + len(want)) == (b"hello " + want.encode()).translate(TRANSFORM)
    (conn,) = edge.servers[want].wait_conns(1)
    assert conn.sni == name
    assert edge.counts() == {k: int(k == want) for k in edge.servers}
    assert edge.stats()["tls_handshakes"] == 0        # lb terminated nothing


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_passthrough_bytes_intact_both_ways(pki, edge, version):
    """3 MiB each way at once, end to end encrypted through lb, which splices
    them; then close_notify from each side."""
    data = os.urandom(3 * MIB + 99)
    ctx = client_context(pki.ca.path, minimum_version=version, maximum_version=version)
    with MemTls(edge.port, ctx, "x.shop.test", timeout=20) as t:
        assert edge.which(t.handshake().fingerprint) == "shop"
        got = t.pump(data, len(data))
        assert len(got) == len(data) and got == data.translate(TRANSFORM)
        assert t.close_notify
    (conn,) = edge.servers["shop"].wait_conns(1)
    assert conn.received == len(data)
    assert edge.stats()["splice_bytes"] > 0


def test_passthrough_plain_http_is_reset_and_counted(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        data, how = read_until_closed(s)
    assert (data, how) == (b"", "reset")
    wait_for(lambda: edge.stats()["protocol"] == 1, 5, "the connection to be counted in tls_failed.protocol")
    assert edge.counts() == {"a": 0, "shop": 0, "dflt": 0}


def test_passthrough_silent_client_closed_at_idle_timeout(pki, run_lb, tls_servers):
    """A client that sends nothing waits min(idle_timeout, 10 s) for its
    ClientHello, then is closed and counted as an idle timeout; no backend
    heard of it."""
    e = Edge(pki, run_lb, tls_servers, listener_extra='idle_timeout = "300ms"')
    with socket.create_connection(("127.0.0.1", e.port), timeout=5) as s:
        start = time.monotonic()
        data, _how = read_until_closed(s)
        waited = time.monotonic() - start
    assert data == b""
    assert 0.25 <= waited < 2.5, waited
    wait_for(lambda: e.stats()["idle_timeouts"] == 1, 5, "the idle timeout to be counted")
    assert e.counts() == {"a": 0, "shop": 0, "dflt": 0}


def test_passthrough_half_client_hello_then_silent_is_an_idle_timeout(pki, run_lb, tls_servers):
    e = Edge(pki, run_lb, tls_servers, listener_extra='idle_timeout = "300ms"')
    with MemTls(e.port, e.ctx, "a.test") as t:
        hello = t.client_hello()
        t.sock.sendall(hello[:len(hello) // 2])
        data, _how = read_until_closed(t.sock)
    assert data == b""
    wait_for(lambda: e.stats()["idle_timeouts"] == 1, 5, "the idle timeout to be counted")
    assert e.counts() == {"a": 0, "shop": 0, "dflt": 0}


def test_passthrough_client_hello_one_byte_per_segment(edge):
    """Every byte of the ClientHello its own segment: lb waits for the whole
    record, routes it by its name, and the backend gets it intact."""
    with MemTls(edge.port, edge.ctx, "x.shop.test") as t:
        t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = t.client_hello()
        for i in range(len(hello)):
            t.sock.sendall(hello[i:i + 1])
        assert edge.which(t.handshake().fingerprint) == "shop"
        t.send(b"slow")
        assert t.recv_exact(4) == b"slow".translate(TRANSFORM)
    (conn,) = edge.servers["shop"].wait_conns(1)
    assert conn.hello == hello and conn.sni == "x.shop.test"


PROXY_IN = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n"


@pytest.mark.parametrize("header", ["v1", "v2"])
@pytest.mark.parametrize("how", ["one-write", "hello-byte-by-byte"])
def test_passthrough_accept_proxy_and_send_proxy(pki, run_lb, tls_servers, header, how):
    """accept_proxy on the passthrough listener, send_proxy on the pool: the
    backend gets lb's PROXY header for the client and destination the
    incoming header named, then the client's ClientHello untouched, and the
    handshake goes on end to end. The incoming header and the ClientHello
    come in one write (as an upstream proxy that forwards at once sends
    them), or the header then the ClientHello one byte per segment."""
    e = Edge(pki, run_lb, tls_servers, listener_extra="accept_proxy = true\nidle_timeout = \"1s\"",
             a_proxy=True, a_pool_extra='send_proxy = "v1"')
    incoming = PROXY_IN if header == "v1" else proxy_ref.build(2, "192.0.2.7", 40000, "198.51.100.1", 443)
    with MemTls(e.port, e.ctx, "a.test", timeout=5) as t:
        hello = t.client_hello()
        if how == "one-write":
            t.sock.sendall(incoming + hello)
        else:
            t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t.sock.sendall(incoming)
            for i in range(len(hello)):
                t.sock.sendall(hello[i:i + 1])
        try:
            peer = t.handshake()
        except (ConnectionError, TimeoutError, socket.timeout) as exc:
            pytest.fail(f"no handshake ({type(exc).__name__}); backend a saw {len(e.servers['a'].conns)} "
                        f"connection(s); lb idle timeouts: {e.stats()['idle_timeouts']}")
        assert e.which(peer.fingerprint) == "a"
        t.send(b"proxied")
        assert t.recv_exact(7) == b"proxied".translate(TRANSFORM)
    (conn,) = e.servers["a"].wait_conns(1)
    assert conn.proxy == PROXY_IN
    assert conn.hello == hello
    assert conn.sni == "a.test"


# ---- 2. resumption across reloads, without tickets, with shared ticket keys ------------------------

def site_lb_text(pki, port: int, origin: Origin, *, global_extra: str = "", workers: int = 2,
                 run_dir: str | None = None) -> str:
    """An http TLS listener "web" (site.test) in front of one origin."""
    listener = listener_toml("web", port, "p") + (
        f'\n[listeners.web.tls]\ncertificates = [{{ cert = "{pki.site.cert}", key = "{pki.site.key}" }}]\n')
    return lb_toml(listener, pool_toml("p", [("o", origin.address)]), workers=workers, global_extra=global_extra,
                   run_dir=run_dir)


def connect(port: int, ctx: ssl.SSLContext, session=None):
    """One request on a new TLS connection: (session to resume next, whether this one resumed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="site.test", session=session) as t:
            t.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            assert t.recv(12) == b"HTTP/1.1 200"      # TLS 1.3: the tickets came before it
            return t.session, t.session_reused


VERSIONS = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


def version_ctx(pki, version: str) -> ssl.SSLContext:
    v = VERSIONS[version]
    return client_context(pki.ca.path, minimum_version=v, maximum_version=v)


@pytest.fixture
def origin():
    o = Origin("o")
    yield o
    o.stop()


def status(lb) -> dict:
    res = lb_cli(lb.config_path, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def reload(lb, generation: int):
    """`lb reload`, then wait until the old generation's workers stopped
    accepting: new connections go to the new one."""
    res = lb_cli(lb.config_path, "reload")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: all(w["generation"] == generation or w["state"] == "draining" for w in status(lb)["workers"]),
             10, f"generation {generation} to take over")
    wait_for(lambda: all(w["stopping"] for w in lb.worker_stats()), 10, "the first generation to stop accepting")


def resumed_in(lb, generation: int) -> int:
    return sum(w["tls_resumed"] for w in status(lb)["workers"] if w["generation"] == generation)


@pytest.mark.parametrize("version", VERSIONS)
def test_session_from_before_a_reload_resumes_after_it(pki, run_lb, origin, version):
    port = free_port()
    lb = run_lb(site_lb_text(pki, port, origin))
    ctx = version_ctx(pki, version)
    session, reused = connect(port, ctx)
    assert not reused
    reload(lb, 2)
    for _ in range(4):
        _s, reused = connect(port, ctx, session)
        assert reused, "a session of the first generation did not resume in the second"
    wait_for(lambda: resumed_in(lb, 2) == 4, 5, "the new generation's workers to count 4 resumptions")


@pytest.mark.parametrize("version", VERSIONS)
def test_no_resumption_without_tickets(pki, run_lb, origin, version):
    port = free_port()
    lb = run_lb(site_lb_text(pki, port, origin, global_extra="[global.tls]\ntickets = false"))
    ctx = version_ctx(pki, version)
    session, reused = connect(port, ctx)
    assert not reused and not session.has_ticket
    for _ in range(3):
        session2, reused = connect(port, ctx, session)
        assert not reused
        assert not session2.has_ticket
    assert sum(w["tls_resumed"] for w in lb.worker_stats()) == 0
    assert sum(w["tls_handshakes"] for w in lb.worker_stats()) == 4


@pytest.mark.parametrize("version", VERSIONS)
def test_session_resumes_only_on_the_listener_that_made_it(pki, run_lb, origin, version):
    """Two TLS listeners of one lb, same certificate, same ticket keys: a
    session made on one resumes there, and gets a full handshake on the other."""
    port1, port2 = free_port(), free_port()
    tls = f'certificates = [{{ cert = "{pki.site.cert}", key = "{pki.site.key}" }}]\n'
    run_lb(lb_toml(listener_toml("one", port1, "p") + "\n[listeners.one.tls]\n" + tls,
                   listener_toml("two", port2, "p") + "\n[listeners.two.tls]\n" + tls,
                   pool_toml("p", [("o", origin.address)])))
    ctx = version_ctx(pki, version)
    session, _ = connect(port1, ctx)
    assert connect(port1, ctx, session)[1]
    assert not connect(port2, ctx, session)[1]


def ticket_key() -> str:
    return base64.b64encode(os.urandom(80)).decode()


@pytest.fixture
def lb_pair(tmp_path):
    """Start lb processes, each in its own directory (its config, log, admin socket)."""
    started: list[LbProcess] = []

    def start(text_for_dir) -> LbProcess:
        d = tmp_path / f"lb{len(started)}"
        d.mkdir()
        lb = LbProcess(text_for_dir(str(d)), d)
        started.append(lb)
        return lb

    yield start
    for lb in started:
        lb.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_shared_ticket_keys_two_nodes_and_a_rotation(pki, origin, lb_pair, tmp_path, version):
    """Two lb processes read one ticket_keys file: each resumes the other's
    sessions. A key appended to the file and one of them reloaded (it seals
    with the next key now, the other still with the previous one): sessions
    made before and after resume on both, whichever made them."""
    keys = tmp_path / "tickets.keys"
    keys.write_text("# ticket keys\n" + "".join(ticket_key() + "\n" for _ in range(3)))
    glob = f'[global.tls]\nticket_keys = "{keys}"'
    port_a, port_b = free_port(), free_port()
    lb_a = lb_pair(lambda d: site_lb_text(pki, port_a, origin, global_extra=glob, workers=1, run_dir=d))
    lb_pair(lambda d: site_lb_text(pki, port_b, origin, global_extra=glob, workers=1, run_dir=d))
    ctx = version_ctx(pki, version)

    def resumes(port, session) -> bool:
        return connect(port, ctx, session)[1]

    from_a, _ = connect(port_a, ctx)
    from_b, _ = connect(port_b, ctx)
    assert resumes(port_b, from_a) and resumes(port_a, from_b), "the nodes do not resume each other's sessions"

    with keys.open("a") as f:
        f.write(ticket_key() + "\n")
    reload(lb_a, 2)
    after_a, _ = connect(port_a, ctx)          # sealed with the new current key
    after_b, _ = connect(port_b, ctx)          # sealed with the key B still seals with
    outcome = {(made, on): resumes(port, s)
               for made, s in (("a-before", from_a), ("b-before", from_b), ("a-after", after_a), ("b-after", after_b))
               for on, port in (("a", port_a), ("b", port_b))}
    assert outcome == dict.fromkeys(outcome, True), outcome


def test_ticket_keys_file_read_again_every_ticket_rotate(pki, origin, lb_pair, tmp_path):
    """The keys file is read again every ticket_rotate without a reload: after
    the file's keys are all replaced and node B reloaded, node A (not
    reloaded) resumes B's new sessions once its ticket_rotate has passed."""
    keys = tmp_path / "tickets.keys"
    keys.write_text(ticket_key() + "\n")
    glob = f'[global.tls]\nticket_keys = "{keys}"\nticket_rotate = "1s"'
    port_a, port_b = free_port(), free_port()
    lb_pair(lambda d: site_lb_text(pki, port_a, origin, global_extra=glob, workers=1, run_dir=d))
    lb_b = lb_pair(lambda d: site_lb_text(pki, port_b, origin, global_extra=glob, workers=1, run_dir=d))
    ctx = version_ctx(pki, "tls13")
    keys.write_text(ticket_key() + "\n")       # no key in common with what A has
    reload(lb_b, 2)
    from_b, _ = connect(port_b, ctx)
    wait_for(lambda: connect(port_a, ctx, from_b)[1], 5, "node A to read the new key and resume B's session")


def test_session_sealed_with_a_dropped_key_gets_a_full_handshake(pki, origin, lb_pair, tmp_path):
    """The file's keys replaced by new ones and lb reloaded: a session sealed
    with a key no longer known is not an error, only a full handshake."""
    keys = tmp_path / "tickets.keys"
    keys.write_text(ticket_key() + "\n")
    port = free_port()
    lb = lb_pair(lambda d: site_lb_text(pki, port, origin, workers=1, run_dir=d,
                                        global_extra=f'[global.tls]\nticket_keys = "{keys}"'))
    ctx = version_ctx(pki, "tls13")
    old, _ = connect(port, ctx)
    assert connect(port, ctx, old)[1]
    keys.write_text(ticket_key() + "\n")
    reload(lb, 2)
    fresh, reused = connect(port, ctx, old)
    assert not reused
    assert connect(port, ctx, fresh)[1], "the new ticket resumes"


def test_keys_lb_makes_rotate_every_ticket_rotate(pki, run_lb, origin):
    """ticket_rotate = "1s": a ticket resumes until its key has been rotated
    out, one to two periods after it was issued, and no longer after that."""
    port = free_port()
    run_lb(site_lb_text(pki, port, origin, workers=1, global_extra='[global.tls]\nticket_rotate = "1s"'))
    ctx = version_ctx(pki, "tls13")
    issued = time.monotonic()
    session, _ = connect(port, ctx)
    assert connect(port, ctx, session)[1]
    wait_for(lambda: not connect(port, ctx, session)[1], 6, "the ticket's key to be rotated out", interval=0.1)
    lived = time.monotonic() - issued
    assert 1.0 <= lived <= 3.5, f"the ticket resumed for {lived:.1f}s"


# ---- 3. sslyze -------------------------------------------------------------------------------------

def sslyze_intermediate(port: int, ca: Path, sni: str) -> dict:
    """sslyze's scans of 127.0.0.1:port (SNI sni, the test CA trusted), checked
    against Mozilla's intermediate configuration: {} when compliant, else
    {criterion: what is wrong}."""
    try:
        import sslyze
    except ImportError:
        pytest.fail("sslyze is not installed: it is in the test extra (pip install '.[test]')")
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        MozillaTlsConfiguration,
        ServerNotCompliantWithTlsConfiguration,
        TlsConfigurationEnum,
        check_server_against_tls_configuration,
    )

    request = sslyze.ServerScanRequest(
        server_location=sslyze.ServerNetworkLocation("127.0.0.1", port, ip_address="127.0.0.1"),
        network_configuration=sslyze.ServerNetworkConfiguration(tls_server_name_indication=sni),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        scan_commands_extra_arguments=sslyze.ScanCommandsExtraArguments(
            certificate_info=sslyze.CertificateInfoExtraArgument(custom_ca_file=ca)),
    )
    scanner = sslyze.Scanner()
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    assert result.scan_status == sslyze.ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    try:
        check_server_against_tls_configuration(
            server_scan_result=result,
            tls_config_to_check_against=MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE))
    except ServerNotCompliantWithTlsConfiguration as e:
        return dict(e.issues)
    return {}


@pytest.fixture
def sslyze_lb(pki, run_lb, origin):
    def start(tls_extra: str = "") -> int:
        port = free_port()
        listener = listener_toml("web", port, "p") + (
            f'\n[listeners.web.tls]\ncertificates = [{{ cert = "{pki.site.cert}", key = "{pki.site.key}" }}]\n'
            + tls_extra)
        run_lb(lb_toml(listener, pool_toml("p", [("o", origin.address)])))
        return port
    return start


@pytest.mark.filterwarnings("ignore:Parsed a serial number")     # sslyze's own trust stores
def test_sslyze_default_listener_is_mozilla_intermediate(pki, sslyze_lb):
    """A listener with nothing but its certificate (a 90-day ECDSA leaf of the
    test CA, which sslyze is told to trust) complies with Mozilla intermediate."""
    port = sslyze_lb()
    assert sslyze_intermediate(port, pki.ca.path, "site.test") == {}


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_sslyze_sees_a_listener_that_drifted(pki, sslyze_lb):
    """The same check fails when the listener offers more than intermediate
    (a CBC cipher with SHA-1): the test above would see lb drift."""
    port = sslyze_lb('ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA"\n')
    issues = sslyze_intermediate(port, pki.ca.path, "site.test")
    assert set(issues) == {"ciphers"} and "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA" in issues["ciphers"], issues
