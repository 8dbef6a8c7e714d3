"""ACLs (docs/gateway.md): the compiled prefix tables against the ipaddress
reference, the config section, and allow/deny at accept and on routes in a
running lb, changed live with `lb acl` and kept across restarts."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, lb_config, wait_for
from http_client import parse_responses, read_to_eof
from lb._fastpath import AclSet, Shm, acl_lookup, acl_lookup_ns, proxy_header

from lb import admin_client, config
from tests.reference.acl_ref import AclRef, clustered_prefixes, random_prefixes

ROOT = Path(__file__).resolve().parent.parent

MILLION = 1_000_000


# ---- the tables against the reference -------------------------------------------------------


def _addresses(rnd: random.Random, prefixes: list[str], n: int, version: int) -> list[str]:
    """n addresses: random ones, and the edges of random prefixes (first,
    last, one before, one after), where an off-by-one would show."""
    bits = 32 if version == 4 else 128
    top = (1 << bits) - 1
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    out = [str(cls(rnd.getrandbits(bits))) for _ in range(n // 2)]
    while len(out) < n:
        net = ipaddress.ip_network(rnd.choice(prefixes).lstrip("!"))
        first, last = int(net.network_address), int(net.broadcast_address)
        for value in (first, last, first - 1, last + 1):
            if 0 <= value <= top:
                out.append(str(cls(value)))
    return out[:n]


@pytest.fixture
def region(tmp_path):
    shm = Shm.create(str(tmp_path / "acl.shm"), [("p", 64, "roundrobin", 0, "", 0)], 3, os.getpid(),
                     acls=["a", "b"], n_rules=2)
    yield shm
    shm.unlink()


@pytest.mark.parametrize("version", [4, 6])
def test_a_million_prefixes_decide_as_the_reference(region, version):
    rnd = random.Random(13 + version)
    prefixes = random_prefixes(rnd, MILLION, version)
    data = ("# generated\n" + "\n".join(prefixes) + "\n").encode()
    t0 = time.perf_counter()
    entries = AclSet()
    entries.parse_text(data)
    entries.finish()
    entries.publish(region, 0)
    load = time.perf_counter() - t0
    assert (entries.ipv4, entries.ipv6) == ((MILLION, 0) if version == 4 else (0, MILLION))

    ref = AclRef(prefixes)
    addresses = _addresses(rnd, prefixes, 100_000, version)
    got = acl_lookup(region, 0, addresses)
    wrong = [(a, g, ref.decide(a)) for a, g in zip(addresses, got) if g != (a in ref)]
    assert not wrong, f"{len(wrong)} decisions differ, e.g. {wrong[:5]}"
    assert 0 < sum(got) < len(got)
    # the supervisor's own longest match (lb acl show NAME ADDRESS) says the same
    for a in addresses[:2000]:
        found = entries.longest_match(a)
        included, network = ref.decide(a)
        assert (found is not None and found[1]) == included and (found[0] if found else None) == network, a

    ns, _ = acl_lookup_ns(region, 0, version, 1_000_000)
    # (how fast: bench acl_lookup; speed is measured there, not asserted here)
    print(f"\nIPv{version}: {MILLION} prefixes loaded in {load * 1000:.0f} ms; a lookup costs {ns:.1f} ns")


@pytest.mark.parametrize("version, within, lengths", [(4, "10.0.0.0/8", (16, 32)), (6, "2001:db8::/32", (48, 64))])
def test_prefixes_clustered_in_one_block_bucket_by_the_bits_after_it(region, version, within, lengths):
    """Real lists cluster (an operator's 10/8, an ISP's 2001:db8::/32): the
    buckets index the 16 bits after the ones every boundary shares, so a lookup
    stays a short search instead of one over every boundary."""
    rnd = random.Random(7)
    net = ipaddress.ip_network(within)
    bits = net.max_prefixlen
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    prefixes = clustered_prefixes(rnd, within, lengths, 300_000)
    entries = AclSet()
    entries.parse_text("\n".join(prefixes).encode())
    entries.finish()
    entries.publish(region, 0)
    ref = AclRef(prefixes)
    inside = [str(cls(int(net.network_address) | rnd.getrandbits(bits - net.prefixlen))) for _ in range(30_000)]
    addresses = inside + _addresses(rnd, prefixes, 20_000, version) + [
        str(net.network_address - 1), str(net.broadcast_address + 1), "0.0.0.0" if version == 4 else "::"]
    got = acl_lookup(region, 0, addresses)
    assert got == [a in ref for a in addresses]
    ns, hits = acl_lookup_ns(region, 0, version, 1_000_000, within=within)
    print(f"\nIPv{version}, 300,000 prefixes inside {within}: a lookup there costs {ns:.1f} ns")
    assert 0 < hits < 1_000_000


def test_tables_of_one_or_two_boundaries(region):
    """A single address, or a prefix reaching the end of the space: the shared
    leading bits are (nearly) all of them."""
    cases = [
        (["10.0.0.1"], ["10.0.0.0", "10.0.0.1", "10.0.0.2", "11.0.0.1", "9.255.255.255", "0.0.0.0"]),
        (["128.0.0.0/1"], ["127.255.255.255", "128.0.0.0", "255.255.255.255", "0.0.0.0"]),
        (["2001:db8::1"], ["2001:db8::", "2001:db8::1", "2001:db8::2", "2001:db9::1", "::", "ffff::"]),
        (["8000::/1", "!ffff::/16"], ["7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "8000::", "fffe::1", "ffff::1",
                                      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]),
        ([], ["1.2.3.4", "::1"]),
    ]
    for prefixes, probes in cases:
        entries = AclSet()
        for i, p in enumerate(prefixes):
            entries.parse_one(p, i)
        entries.finish()
        entries.publish(region, 0)
        ref = AclRef(prefixes)
        assert acl_lookup(region, 0, probes) == [p in ref for p in probes], prefixes


def test_a_full_tmpfs_fails_a_publish_and_the_old_table_serves(tmp_path):
    """The tables live in a sparse tmpfs file: a publish reserves its pages
    first, so that no room is an error (ENOSPC), not a SIGBUS."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    shm = None
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shm = Shm.create(str(mnt / "acl.shm"), [("p", 64, "roundrobin", 0, "", 0)], 3, os.getpid(), acls=["a"])
        small = AclSet()
        small.parse_one("10.0.0.0/8")
        small.finish()
        small.publish(shm, 0)
        big = AclSet()
        big.parse_text("\n".join(f"{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}.0/24" for i in range(1 << 20)).encode())
        big.finish()
        with pytest.raises(OSError) as e:
            big.publish(shm, 0)
        assert e.value.errno == 28  # ENOSPC
        assert shm.acl_generation(0) == 1 and acl_lookup(shm, 0, ["10.1.1.1", "11.1.1.1"]) == [True, False]
    finally:
        shm = None  # unmapped, so that the tmpfs is not busy
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_nesting_exclusions_and_the_ends_of_the_space(region):
    prefixes = ["0.0.0.0/0", "!10.0.0.0/8", "10.1.0.0/16", "!10.1.2.3", "255.255.255.255/32",
                "::/0", "!2001:db8::/32", "2001:db8:1::/48", "!ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "::ffff:192.0.2.0/120"]
    entries = AclSet()
    for i, p in enumerate(prefixes):
        entries.parse_one(p, i)
    entries.finish()
    entries.publish(region, 1)
    ref = AclRef(prefixes)
    probes = ["0.0.0.0", "9.255.255.255", "10.0.0.0", "10.0.255.255", "10.1.0.0", "10.1.2.2", "10.1.2.3",
              "10.1.2.4", "10.1.255.255", "10.2.0.0", "11.0.0.0", "255.255.255.254", "255.255.255.255",
              "::", "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::", "2001:db8:1::1", "2001:db8:2::",
              "2001:db9::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
              "::ffff:10.1.2.3", "::ffff:10.1.2.4", "192.0.2.9"]
    assert acl_lookup(region, 1, probes) == [p in ref for p in probes]
    assert entries.longest_match("10.1.2.3") == ("10.1.2.3/32", False)
    assert entries.longest_match("192.0.2.9") == ("192.0.2.0/24", True)  # from ::ffff:192.0.2.0/120


def test_live_changes_flip_to_a_new_table(region):
    entries = AclSet()
    entries.parse_one("10.0.0.0/8")
    entries.finish()
    gen = entries.publish(region, 0)
    assert acl_lookup(region, 0, ["10.1.1.1", "192.0.2.1"]) == [True, False]
    assert entries.change("192.0.2.0/24", True) == ("192.0.2.0/24", True)
    assert entries.change("192.0.2.0/24", True) == ("192.0.2.0/24", False)
    assert entries.change("!10.1.0.0/16", True) == ("!10.1.0.0/16", True)
    assert region.acl_generation(0) == gen
    assert entries.publish(region, 0) == gen + 1
    assert acl_lookup(region, 0, ["10.1.1.1", "10.2.1.1", "192.0.2.1"]) == [False, True, True]
    assert entries.change("10.0.0.0/8", False) == ("10.0.0.0/8", True)
    assert entries.change("10.0.0.0/8", False) == (None, False)
    assert entries.change("!10.0.0.0/8", True) == ("!10.0.0.0/8", True)  # absent, so added as an exclusion
    assert entries.change("10.0.0.0/8", True) == ("10.0.0.0/8", True)  # there with the other sign: flipped
    entries.publish(region, 0)
    assert acl_lookup(region, 0, ["10.2.1.1", "10.1.1.1"]) == [True, False]
    assert entries.prefixes() == ["10.0.0.0/8", "!10.1.0.0/16", "192.0.2.0/24"]


def test_lookups_during_flips_never_see_half_a_table(region):
    """Lookups (in a thread, without the GIL) while the supervisor's side
    publishes other tables over and over (its compile runs without the GIL
    too): an address in every table always matches, one in none never does."""
    import threading

    rnd = random.Random(5)
    sets = []
    for _ in range(2):
        lines = ["10.0.0.0/8", "!10.9.0.0/16"]
        for _ in range(200_000):   # and churn elsewhere, in 100.0.0.0/6
            plen = rnd.randint(12, 32)
            a = ((100 << 24) | rnd.getrandbits(26)) & ~((1 << (32 - plen)) - 1)
            lines.append(f"{ipaddress.IPv4Address(a)}/{plen}")
        entries = AclSet()
        entries.parse_text("\n".join(lines).encode())
        entries.finish()
        sets.append(entries)
    sets[0].publish(region, 0)
    results = []
    done = threading.Event()

    def look():
        while not done.is_set():
            results.append((acl_lookup_ns(region, 0, 4, 200_000, within="10.0.0.5/32")[1],
                            acl_lookup_ns(region, 0, 4, 200_000, within="10.9.0.5/32")[1]))

    t = threading.Thread(target=look)
    t.start()
    flips = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0 or len(results) < 5:
        sets[flips % 2].publish(region, 0)
        flips += 1
    done.set()
    t.join()
    print(f"\n{flips} flips, {len(results)} rounds of 2 x 200,000 lookups meanwhile")
    assert flips > 20 and results
    assert all(inside == 200_000 and excluded == 0 for inside, excluded in results), results


# ---- the config section -----------------------------------------------------------------------

BASE = """
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:9"

[listeners.t]
bind = "127.0.0.1:1"
mode = "tcp"
pool = "p"
"""


def _error(text: str) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.loads(text + BASE)
    return str(e.value)


def test_a_bad_file_line_is_named_by_file_and_line(tmp_path):
    f = tmp_path / "blocked.txt"
    f.write_text("# abusers\n192.0.2.0/24\n\n  198.51.100.0/24   # a comment\n10.0.0.1/33\n")
    assert _error(f'[acls.blocked]\nfile = "{f}"\n') == (
        f"acls.blocked.file: {f} line 5: '10.0.0.1/33': invalid prefix length "
        "(0..32 for IPv4, 0..128 for IPv6, no leading zeros)")
    f.write_text("192.0.2.0/24\nnot-an-address\n")
    assert _error(f'[acls.blocked]\nfile = "{f}"\n') == (
        f"acls.blocked.file: {f} line 2: 'not-an-address': not an IPv4 or IPv6 address")
    f.write_text("10.0.0.1/8\n")
    assert "line 1" in _error(f'[acls.blocked]\nfile = "{f}"\n') and "host bits set (the prefix is 10.0.0.0/8" in \
        _error(f'[acls.blocked]\nfile = "{f}"\n')
    assert _error(f'[acls.blocked]\nfile = "{tmp_path}/nosuch"\n').startswith(
        f"acls.blocked.file: cannot read {tmp_path}/nosuch")


def test_bad_entries_are_named_by_key_path(tmp_path):
    assert _error('[acls.a]\ncidrs = ["10.0.0.0/8", "2001:db8::/129"]\n').startswith("acls.a.cidrs[1]: ")
    assert _error('[acls.a]\ncidrs = ["10.0.0.0/08"]\n').startswith("acls.a.cidrs[0]: ")
    assert _error('[acls.a]\ncidrs = [1]\n') == "acls.a.cidrs[0]: expected a string, got an integer (1)"
    assert _error('[acls.a]\n') == "acls.a: an ACL needs cidrs, a file, or both"
    assert _error('[acls.a]\ncidrs = []\nnope = 1\n').startswith("acls.a.nope: unknown key")
    f = tmp_path / "l.txt"
    f.write_text("\n\n!10.0.0.0/8\n")
    assert _error(f'[acls.a]\ncidrs = ["10.0.0.0/8"]\nfile = "{f}"\n') == (
        f"acls.a: 10.0.0.0/8 is both included and excluded (acls.a.cidrs[0] and {f} line 3)")
    listener = '[listeners.u]\nbind = "127.0.0.1:2"\nmode = "tcp"\npool = "p"\n'
    assert _error('[acls.a]\ncidrs = ["10.0.0.0/8"]\n' + listener + 'allow = ["b"]\n') == (
        "listeners.u.allow[0]: unknown ACL 'b' (define it in an [acls.NAME] table)")
    assert _error('[acls.a]\ncidrs = ["10.0.0.0/8"]\n' + listener + 'allow = ["a"]\ndeny = ["a"]\n') == (
        "listeners.u.deny: 'a' is in allow too: deny would always win")


def test_rules_are_numbered_in_file_order():
    cfg = config.loads("""
[acls.a]
cidrs = ["10.0.0.0/8"]
[acls.b]
cidrs = ["::1"]
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:9"
[listeners.w]
bind = "127.0.0.1:1"
pool = "p"
deny = ["b"]
  [[listeners.w.routes]]
  path_prefix = "/x/"
  pool = "p"
  name = "x"
  allow = ["a", "b"]
[listeners.t]
bind = "127.0.0.1:2"
mode = "tcp"
pool = "p"
allow = ["a"]
""")
    rules = config.access_rules(cfg.listeners)
    assert [(r["listener"], r["route"], r["rule"], r["decision"]) for r in rules] == [
        ("w", None, "deny b", "denied"), ("w", None, "default", "allowed"),
        ("w", 0, "allow a", "allowed"), ("w", 0, "allow b", "allowed"), ("w", 0, "not in allow list", "denied"),
        ("t", None, "allow a", "allowed"), ("t", None, "not in allow list", "denied")]
    from lb._fastpath import phase_plan

    assert phase_plan(cfg.listeners["w"])["accept"] == ["acl"]
    assert phase_plan(cfg.listeners["w"])["request"] == ["route", "acl_route"]
    assert phase_plan(cfg.listeners["t"]) == {"accept": ["acl"], "request": [], "response": [], "end": ["metrics"]}


# ---- in a running lb ---------------------------------------------------------------------------

def lb_cli(sock, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", "--socket", str(sock), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def lb_ok(sock, *args) -> str:
    proc = lb_cli(sock, *args)
    assert proc.returncode == 0, f"lb {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


ACLS = """
[acls.office]
cidrs = ["127.0.0.0/8", "::1", "!127.0.0.4/32"]

[acls.blocked]
cidrs = ["127.0.0.3"]
"""


def start(run_lb, tmp_path, backends, *, mode="tcp", listener_extra="", acls=ACLS, port=None, bind_host="127.0.0.1"):
    sock = tmp_path / "admin.sock"
    port = port or free_port(bind_host)
    extra = f'admin_socket = "{sock}"\nstate_file = "{tmp_path / "state.json"}"'
    lb = run_lb(lb_config(port, backends, global_extra=extra, listener_extra=listener_extra, mode=mode,
                          bind_host=bind_host) + acls)
    wait_for(sock.exists, 10, "the admin socket")
    return lb, sock, port


def tcp_hello(port: int, source: str, host: str = "127.0.0.1", prefix: bytes = b"") -> str | None:
    """The backend's hello line through lb from a source address; None when lb
    refused the connection (closed or reset it before a byte)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.bind((source, 0))
        try:
            # a refusal is a reset; on loopback it may come before connect returns
            s.connect((host, port))
            if prefix:
                s.sendall(prefix)
            line = s.makefile("rb").readline()
        except (ConnectionResetError, BrokenPipeError):
            return None
        return line.decode().strip() or None


def http_get(port: int, source: str, path: str = "/", prefix: bytes = b""):
    """(status, body) of one request from a source address; None when refused at accept."""
    with socket.socket() as s:
        s.settimeout(5)
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(prefix + f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            raw = read_to_eof(s)
        except (ConnectionResetError, BrokenPipeError):
            return None
    if not raw:
        return None
    r = parse_responses(raw)[0]
    return r.status, r.body


def rules(sock) -> list[dict]:
    return json.loads(lb_ok(sock, "status", "--json"))["access_rules"]


def test_tcp_listener_allows_and_denies_at_accept(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    lb, sock, port = start(run_lb, tmp_path, [b1], listener_extra='allow = ["office"]\ndeny = ["blocked"]')
    assert tcp_hello(port, "127.0.0.2") == "b1"
    assert tcp_hello(port, "127.0.0.3") is None      # in blocked
    assert tcp_hello(port, "127.0.0.4") is None      # excluded from office
    assert b1.port and lb.backend_stats(0)["total"] == 1  # refused ones never reached the backend
    counts = {r["rule"]: r["count"] for r in rules(sock)}
    assert counts == {"deny blocked": 1, "allow office": 1, "not in allow list": 1}
    text = lb_ok(sock, "status")
    assert "listener t" in text and "deny blocked" in text and "DENIED" in text


def test_a_tls_listener_refuses_before_the_handshake(backends, run_lb, tmp_path):
    import ssl

    from tls_certs import CA

    ca = CA(tmp_path / "ca")
    leaf = ca.leaf("lb", ("lb.test",))
    b1 = backends("b1", hello=True)
    lb, sock, port = start(run_lb, tmp_path, [b1], listener_extra=f"""deny = ["blocked"]
[listeners.t.tls]
certificates = [{{ cert = "{leaf.cert}", key = "{leaf.key}" }}]
""")
    ctx = ssl.create_default_context(cafile=str(ca.path))

    def hello_over_tls(source: str) -> str | None:
        with socket.socket() as raw:
            raw.settimeout(5)
            raw.bind((source, 0))
            try:
                raw.connect(("127.0.0.1", port))
                with ctx.wrap_socket(raw, server_hostname="lb.test") as s:
                    return s.makefile("rb").readline().decode().strip()
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError, ssl.SSLEOFError):
                return None

    assert hello_over_tls("127.0.0.3") is None
    assert hello_over_tls("127.0.0.2") == "b1"
    (worker,) = json.loads(lb_ok(sock, "status", "--json"))["workers"]
    # the refused client got no handshake, not even a failed one
    assert worker["tls_handshakes"] == 1 and not any(worker["tls_failed"].values()), worker
    assert {r["rule"]: r["count"] for r in rules(sock)} == {"deny blocked": 1, "default": 1}


def test_ipv6_source(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    lb, sock, port = start(run_lb, tmp_path, [b1], listener_extra='deny = ["office"]', bind_host="::1")
    assert tcp_hello(port, "::1", host="::1") is None
    lb_ok(sock, "acl", "remove", "office", "::1")
    assert tcp_hello(port, "::1", host="::1") == "b1"


def test_http_listener_denies_at_accept_and_routes_answer_403(origins, run_lb, tmp_path):
    o = origins("o")
    route = """
  [[listeners.t.routes]]
  name = "admin"
  path_prefix = "/admin/"
  pool = "p"
  allow = ["office"]
  deny = ["blocked"]
"""
    lb, sock, port = start(run_lb, tmp_path, [(o.address, "o", 100)], mode="http",
                           listener_extra='deny = ["blocked"]\n' + route,
                           acls='[acls.office]\ncidrs = ["127.0.0.2"]\n[acls.blocked]\ncidrs = ["127.0.0.5"]\n')
    assert http_get(port, "127.0.0.5", "/") is None                  # refused at accept
    assert http_get(port, "127.0.0.3", "/")[0] == 200
    assert http_get(port, "127.0.0.3", "/admin/x") == (403, b"403 Forbidden\n")
    assert http_get(port, "127.0.0.2", "/admin/x")[0] == 200
    # keep-alive: a refused request ends the connection like lb's other pages
    with socket.socket() as s:
        s.settimeout(5)
        s.bind(("127.0.0.3", 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /admin/ HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        got = parse_responses(read_to_eof(s))
    assert [r.status for r in got] == [200, 403]
    assert got[1].headers["connection"] == "close"
    by_rule = {(r["listener"], r["route"], r["rule"]): r["count"] for r in rules(sock)}
    assert by_rule == {("t", None, "deny blocked"): 1, ("t", None, "default"): 4,
                       ("t", 0, "deny blocked"): 0, ("t", 0, "allow office"): 1, ("t", 0, "not in allow list"): 2}


@pytest.mark.parametrize("mode", ["tcp", "http"])
def test_a_proxy_header_gives_the_address_checked(backends, origins, run_lb, tmp_path, mode):
    backend = backends("b1", hello=True) if mode == "tcp" else origins("o")
    lb, sock, port = start(run_lb, tmp_path, [(backend.address, "b1", 100)], mode=mode,
                           listener_extra='accept_proxy = true\ndeny = ["blocked"]',
                           acls='[acls.blocked]\ncidrs = ["203.0.113.0/24"]\n')
    bad = proxy_header("v2", "203.0.113.9", 4000, "127.0.0.1", port)
    good = proxy_header("v1", "198.51.100.1", 4000, "127.0.0.1", port)
    if mode == "tcp":
        assert tcp_hello(port, "127.0.0.2", prefix=bad) is None
        assert tcp_hello(port, "127.0.0.2", prefix=good) == "b1"
    else:
        assert http_get(port, "127.0.0.2", "/", prefix=bad) is None
        assert http_get(port, "127.0.0.2", "/", prefix=good)[0] == 200
    assert {r["rule"]: r["count"] for r in rules(sock)} == {"deny blocked": 1, "default": 1}


def _time_until(predicate, bound: float) -> float:
    """Seconds until predicate() holds, polled; fails past bound."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < bound, f"not within {bound * 1000:.0f} ms"
    return time.monotonic() - t0


def test_live_changes_take_effect_at_once_and_outlive_a_restart(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    lb, sock, port = start(run_lb, tmp_path, [b1], listener_extra='deny = ["blocked"]')
    config_text = lb.config_path.read_text()
    assert tcp_hello(port, "127.0.0.2") == "b1"

    out = json.loads(lb_ok(sock, "acl", "add", "blocked", "127.0.0.2", "--json"))
    assert out["changed"] == ["127.0.0.2/32"] and out["ipv4"] == 2
    took = _time_until(lambda: tcp_hello(port, "127.0.0.2") is None, 0.1)
    print(f"\nlb acl add: refused {took * 1000:.1f} ms after the command returned")
    assert tcp_hello(port, "127.0.0.6") == "b1"

    lb_ok(sock, "acl", "remove", "blocked", "127.0.0.3/32")           # a prefix of the config
    _time_until(lambda: tcp_hello(port, "127.0.0.3") == "b1", 0.1)
    # from the request on the admin socket (the daemon compiles, flips and saves
    # the state file before it answers) to the first refused client
    t0 = time.monotonic()
    admin_client.call(str(sock), "acl.add", {"name": "blocked", "prefixes": ["127.0.0.8"]})
    _time_until(lambda: tcp_hello(port, "127.0.0.8") is None, 0.1)
    print(f"acl.add on the admin socket: refused {(time.monotonic() - t0) * 1000:.1f} ms after the request")
    assert time.monotonic() - t0 < 0.1
    admin_client.call(str(sock), "acl.remove", {"name": "blocked", "prefixes": ["127.0.0.8/32"]})
    lb_ok(sock, "acl", "add", "blocked", "127.0.0.0/8", "!127.0.0.7")  # a range with an exception
    _time_until(lambda: tcp_hello(port, "127.0.0.6") is None, 0.1)
    assert tcp_hello(port, "127.0.0.7") == "b1"
    proc = lb_cli(sock, "acl", "remove", "blocked", "10.9.9.9")
    assert proc.returncode == 1 and "holds none of 10.9.9.9" in proc.stderr
    proc = lb_cli(sock, "acl", "add", "blocked", "127.0.0.9", "300.1.1.1")
    assert proc.returncode == 2 and "'300.1.1.1'" in proc.stderr
    shown = json.loads(lb_ok(sock, "acl", "show", "blocked", "127.0.0.9", "--json"))["acls"][0]
    assert shown["address"] == {"address": "127.0.0.9", "match": True, "prefix": "127.0.0.0/8", "served": True}
    status = json.loads(lb_ok(sock, "status", "--json"))
    assert status["generation"] == 1                                   # no reload

    # a restart with the same config and state file keeps every change
    assert "graceful" in lb_ok(sock, "stop")
    assert lb.proc.wait(15) == 0
    wait_for(lambda: not sock.exists(), 5, "the admin socket to go")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["acls"]["blocked"]["prefixes"] == {"127.0.0.2/32": "include", "127.0.0.3/32": "absent",
                                                    "127.0.0.0/8": "include", "127.0.0.7/32": "exclude",
                                                    "127.0.0.8/32": "absent"}
    lb, sock, port = start(run_lb, tmp_path, [b1], listener_extra='deny = ["blocked"]', port=port)
    assert lb.config_path.read_text() == config_text
    assert tcp_hello(port, "127.0.0.2") is None
    assert tcp_hello(port, "127.0.0.7") == "b1"
    shown = json.loads(lb_ok(sock, "acl", "show", "blocked", "--prefixes", "--json"))["acls"][0]
    assert shown["prefixes"] == ["127.0.0.0/8", "127.0.0.2/32", "!127.0.0.7/32"]


def test_a_state_file_entry_that_no_longer_fits_is_skipped(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "pools": {}, "acls": {
        "gone": {"prefixes": {"10.0.0.0/8": "include"}},
        "blocked": {"file": str(tmp_path / "nosuch.txt"),
                    "prefixes": {"127.0.0.2/32": "include", "300.0.0.0/8": "include", "127.0.0.9/32": "maybe"}},
    }}))
    lb, sock, port = start(run_lb, tmp_path, [b1], listener_extra='deny = ["blocked"]')
    assert tcp_hello(port, "127.0.0.2") is None      # what could be applied was
    assert tcp_hello(port, "127.0.0.3") is None      # the config's prefixes stand in for the missing file
    assert tcp_hello(port, "127.0.0.9") == "b1"
    log = lb.log()
    assert "ACL 'gone' is not in the config any more" in log and "nosuch.txt" in log
    assert "300.0.0.0/8 skipped" in log and "'maybe' is not include, exclude or absent" in log


def test_load_replaces_the_prefixes_and_a_broken_reload_keeps_serving(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    listed = tmp_path / "blocked.txt"
    listed.write_text("127.0.0.3\n")
    acls = f'[acls.blocked]\nfile = "{listed}"\n'
    lb, sock, port = start(run_lb, tmp_path, [b1], listener_extra='deny = ["blocked"]', acls=acls)
    assert tcp_hello(port, "127.0.0.3") is None and tcp_hello(port, "127.0.0.2") == "b1"

    feed = tmp_path / "feed.txt"
    feed.write_text("# today's\n127.0.0.2/32\n" + "".join(f"10.{i >> 8}.{i & 255}.0/24\n" for i in range(50000)))
    out = json.loads(lb_ok(sock, "acl", "load", "blocked", str(feed), "--json"))
    assert out["ipv4"] == 50001
    _time_until(lambda: tcp_hello(port, "127.0.0.2") is None, 0.1)
    assert tcp_hello(port, "127.0.0.3") == "b1"
    broken = tmp_path / "broken.txt"
    broken.write_text("127.0.0.2/32\nbogus\n")
    proc = lb_cli(sock, "acl", "load", "blocked", str(broken))
    assert proc.returncode == 2 and f"{broken} line 2: not an IPv4 or IPv6 address" in proc.stderr
    assert "bogus" not in proc.stderr                                   # the daemon echoes no file content
    assert tcp_hello(port, "127.0.0.2") is None                         # the loaded list still serves

    # a reload whose ACL file is broken is refused: the running config serves on
    listed.write_text("127.0.0.3\n127.0.0.300\n")
    proc = lb_cli(sock, "reload")
    assert proc.returncode == 2
    assert f"acls.blocked.file: {listed} line 2: '127.0.0.300'" in proc.stderr
    assert tcp_hello(port, "127.0.0.2") is None and tcp_hello(port, "127.0.0.6") == "b1"
    assert json.loads(lb_ok(sock, "status", "--json"))["generation"] == 1

    # a good reload keeps the runtime list and the counters
    listed.write_text("127.0.0.5\n")
    before = {r["rule"]: r["count"] for r in rules(sock)}
    lb_ok(sock, "reload")
    assert tcp_hello(port, "127.0.0.2") is None                          # the loaded file stands in for the config's
    after = {r["rule"]: r["count"] for r in rules(sock)}
    assert after["deny blocked"] == before["deny blocked"] + 1


def test_show_from_a_config_file(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text(ACLS + BASE.replace('pool = "p"', 'pool = "p"\nallow = ["office"]'))
    proc = subprocess.run([sys.executable, "-m", "lb", "acl", "show", "-c", str(path), "office", "127.0.0.4",
                           "--json"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (office,) = json.loads(proc.stdout)["acls"]
    assert (office["ipv4"], office["ipv6"]) == (2, 1)
    assert office["address"] == {"address": "127.0.0.4", "match": False, "prefix": "!127.0.0.4/32"}
    assert [r["rule"] for r in office["rules"]] == ["allow office"]
    proc = subprocess.run([sys.executable, "-m", "lb", "acl", "show", "-c", str(path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0 and "office" in proc.stdout and "blocked" in proc.stdout
