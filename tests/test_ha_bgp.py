"""[ha] mode = "bgp": the config keys, `lb ha render bird` (parsed by BIRD
itself), and ECMP with real BIRD in network namespaces this module builds
and removes (traffic stays inside them): two lb nodes announce one VIP to a
router namespace whose BIRD installs a multipath route, and a client behind
the router sends open-loop requests from several addresses."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import wait_for
from test_ha import cli, error_of, load, read_health, sh, write

HERE = Path(__file__).parent
BGP = textwrap.dedent("""\
    [ha]
    mode = "bgp"
    vips = ["10.0.0.100"]
    local_as = 65001
    peer_as = 65000
    neighbors = ["10.0.1.1"]
    router_id = "10.0.1.11"
    """)


def bird_path() -> str | None:
    return shutil.which("bird") or next((p for p in ("/usr/sbin/bird", "/sbin/bird") if os.path.exists(p)), None)


# ---- config ------------------------------------------------------------------


def test_bgp_settings_and_defaults():
    ha = load(BGP).ha
    assert ha.mode == "bgp" and ha.enabled
    # the address alone: a host route on lo
    assert [v.text for v in ha.vips] == ["10.0.0.100/32 dev lo"]
    assert (ha.local_as, ha.peer_as, ha.neighbors, ha.router_id) == (65001, 65000, ("10.0.1.1",), "10.0.1.11")
    assert ha.bfd and ha.bfd_interval == pytest.approx(0.1) and ha.bfd_multiplier == 3
    assert ha.announce_table == 4242 and ha.manage_sysctls and ha.hold_time == 9
    ha = load(BGP.replace('vips = ["10.0.0.100"]', 'vips = ["10.0.0.100/32 dev lo", "2001:db8::1"]')
              .replace('neighbors = ["10.0.1.1"]', 'neighbors = ["10.0.1.1", "fd00::1"]')
              .replace("local_as = 65001", "local_as = 4200000001")
              + 'bfd = false\nannounce_table = 100\n').ha
    assert [v.text for v in ha.vips] == ["10.0.0.100/32 dev lo", "2001:db8::1/128 dev lo"]
    assert ha.bfd is False and ha.announce_table == 100 and ha.local_as == 4200000001


@pytest.mark.parametrize("extra, path, words", [
    ('vips = ["10.0.0.100/24 dev lo"]', "ha.vips[0]", "host route"),
    ('vips = ["10.0.0.100/32 dev eth0"]', "ha.vips[0]", "puts the VIP on lo"),
    ('vips = ["2001:db8::1"]', "ha.vips[0]", "IPv6 neighbor"),
    ('neighbors = []', "ha.neighbors", "required in BGP mode"),
    ('neighbors = ["10.0.1.1", "10.0.1.1"]', "ha.neighbors[1]", "twice"),
    ('neighbors = ["router1"]', "ha.neighbors[0]", "not an IP address"),
    ('neighbors = ["10.0.0.100"]', "ha.neighbors[0]", "is a VIP"),
    ('router_id = "2001:db8::9"', "ha.router_id", "IPv4"),
    ('router_id = "10.0.0.100"', "ha.router_id", "unique to this node"),
    ("local_as = 0", "ha.local_as", "out of range"),
    ("peer_as = 4294967296", "ha.peer_as", "out of range"),
    ("announce_table = 254", "ha.announce_table", "main"),
    ('hold_time = "1s"', "ha.hold_time", ""),
    ('hold_time = "4500ms"', "ha.hold_time", "whole seconds"),
    ("bfd_multiplier = 0", "ha.bfd_multiplier", ""),
    ("priority = 100", "ha.priority", 'a VRRP setting, but ha.mode is "bgp"'),
])
def test_bgp_errors_name_the_key(extra, path, words):
    key = extra.split(" =")[0]
    lines = [line for line in BGP.splitlines() if not line.startswith(key + " ")]
    message = error_of("\n".join(lines) + "\n" + extra + "\n")
    assert message.startswith(path + ":"), message
    assert words in message


@pytest.mark.parametrize("key", ["local_as", "peer_as", "router_id"])
def test_bgp_required_keys(key):
    text = "\n".join(line for line in BGP.splitlines() if not line.startswith(key + " ")) + "\n"
    message = error_of(text)
    assert message.startswith(f"ha.{key}:") and "required in BGP mode" in message


def test_bgp_keys_refused_in_other_modes():
    message = error_of('[ha]\nmode = "none"\nlocal_as = 65001\n')
    assert message.startswith("ha.local_as:") and 'set mode = "bgp"' in message


# ---- lb ha render bird -----------------------------------------------------------


def test_render_bird_is_accepted_by_bird(tmp_path):
    text = BGP.replace('vips = ["10.0.0.100"]', 'vips = ["10.0.0.100", "10.0.0.101", "2001:db8::1"]') \
              .replace('neighbors = ["10.0.1.1"]', 'neighbors = ["10.0.1.1", "10.0.2.1", "fd00::1"]') \
        + 'bfd_interval = "50ms"\nbfd_multiplier = 4\nannounce_table = 77\n'
    path = write(tmp_path, with_listener(text))
    out = tmp_path / "bird.conf"
    code, _, err = cli("ha", "render", "bird", "-c", path, "-o", str(out))
    assert code == 0, err
    conf = out.read_text()
    assert "router id 10.0.1.11;" in conf
    # the VIPs as host routes, learnt from lb's kernel table, exported to every neighbor of their family
    assert conf.count("kernel table 77;") == 2 and "learn;" in conf
    assert "export where net ~ [ 10.0.0.100/32, 10.0.0.101/32 ];" in conf
    assert "export where net ~ [ 2001:db8::1/128 ];" in conf
    for n in ("10.0.1.1", "10.0.2.1", "fd00::1"):
        assert f"neighbor {n} as 65000;" in conf
    assert conf.count("local as 65001;") == 3 and conf.count("bfd on;") == 3
    assert "min rx interval 50 ms;" in conf and "multiplier 4;" in conf
    assert "graceful restart off;" in conf
    bird = bird_path()
    assert bird, "bird is not installed (make test-deps installs bird2)"
    r = subprocess.run([bird, "-p", "-c", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    # without BFD: no bfd protocol, no `bfd on`
    path = write(tmp_path, with_listener(BGP + "bfd = false\n"))
    code, conf, err = cli("ha", "render", "bird", "-c", path)
    assert code == 0 and "bfd" not in conf.replace("# ", ""), err


def test_render_needs_the_matching_mode(tmp_path):
    path = write(tmp_path, with_listener(BGP))
    code, _, err = cli("ha", "render", "keepalived", "-c", path)
    assert code == 2 and 'needs mode = "vrrp"' in err
    path = write(tmp_path, with_listener(""))
    code, _, err = cli("ha", "render", "bird", "-c", path)
    assert code == 2 and 'needs mode = "bgp"' in err


def with_listener(text: str) -> str:
    return textwrap.dedent("""\
        [listeners.web]
        bind = ["10.0.0.100:8080"]
        mode = "tcp"
        pool = "app"

        [[pools.app.backends]]
        address = "127.0.0.1:9001"

        """) + text


# ---- ECMP in network namespaces --------------------------------------------------
#
#   node n1 (10.99.11.1) --- r-n1 (.254) +
#                                        |-- router "rt": BIRD, ECMP route to the VIP
#   node n2 (10.99.12.1) --- r-n2 (.254) +        over both nodes, L4 multipath hash
#                                        |
#   client (10.99.13.10-17) - r-cl (.254)+
#
# Each node runs lb in BGP mode (VIP 10.99.100.1 on lo, a tcp listener in
# front of three local backends b1..b3 with a Maglev pool hashed on the
# client's address; each backend says "NODE/NAME") and BIRD with the config
# `lb ha render bird` wrote, BFD every 50 ms x 3.

VIP = "10.99.100.1"
PORT = 8080
NODES = {"n1": "10.99.11", "n2": "10.99.12"}
CLIENT_NET = "10.99.13"
SOURCES = [f"{CLIENT_NET}.{i}" for i in range(10, 18)]
BACKENDS = ("b1", "b2", "b3")
ROUTER_AS, NODE_AS = 65000, 65001
BFD_MS = 50


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "ip (iproute2) is not installed (make test-deps installs it)"
    if not bird_path():
        return "bird is not installed (make test-deps installs bird2)"
    probe = f"lbbgp-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"the kernel refuses network namespaces here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def router_bird_conf(tmp: Path) -> str:
    peers = "".join(textwrap.dedent(f"""\
        protocol bgp {name} {{
            local {net}.254 as {ROUTER_AS};
            neighbor {net}.1 as {NODE_AS};
            bfd on;
            ipv4 {{ import all; export none; }};
        }}
        """) for name, net in NODES.items())
    return textwrap.dedent(f"""\
        log "{tmp}/rt-bird.log" all;
        router id {CLIENT_NET}.254;
        protocol device {{ }}
        # both nodes' routes to the VIP into one multipath kernel route
        protocol kernel {{
            ipv4 {{ export all; }};
            merge paths on;
        }}
        protocol bfd {{
            interface "*" {{ interval {BFD_MS} ms; multiplier 3; }};
        }}
        """) + peers


class Fabric:
    """Namespaces, links and processes of one test; close() removes all of
    it, whatever state the test left it in."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        tag = f"lbbgp{os.getpid() % 100000}"
        self.ns = {name: f"{tag}-{name}" for name in ("rt", "n1", "n2", "cl")}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def exec(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns[ns], *args, check=check)

    def build(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        rt = self.ns["rt"]
        # the router: forwards, hashes flows on the 4-tuple (one client's
        # connections spread over both nodes), filters nothing
        for setting in ("net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
                        "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            self.exec("rt", "sysctl", "-qw", setting)
        links = [(name, net, f"{net}.1/24") for name, net in NODES.items()]
        links.append(("cl", CLIENT_NET, f"{SOURCES[0]}/24"))
        for name, net, address in links:
            ns = self.ns[name]
            # created in the node's namespace with its peer in the router's:
            # never an interface in the host's namespace, even for a moment
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"r-{name}", "netns", rt)
            sh("ip", "-n", rt, "addr", "add", f"{net}.254/24", "dev", f"r-{name}")
            sh("ip", "-n", rt, "link", "set", f"r-{name}", "up")
            sh("ip", "-n", ns, "addr", "add", address, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", f"{net}.254")
        for source in SOURCES[1:]:
            sh("ip", "-n", self.ns["cl"], "addr", "add", f"{source}/24", "dev", "eth0")
        (self.tmp / "rt.conf").write_text(router_bird_conf(self.tmp))
        self.spawn("rt-bird", "rt", [bird_path(), "-f", "-c", str(self.tmp / "rt.conf"),
                                     "-s", str(self.tmp / "rt.ctl"), "-P", str(self.tmp / "rt.pid")])

    def spawn(self, key: str, ns: str, args: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.tmp / f"{key}.log", "w")
        self.logs.append(log)
        # its own session: a crash is simulated by killing the whole group
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[ns], *args], stdout=kwargs.pop("stdout", log),
                                stderr=log, start_new_session=True, **kwargs)
        self.procs[key] = proc
        return proc

    def node_config(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        net = NODES[name]
        backends = "".join(textwrap.dedent(f"""\
            [[pools.app.backends]]
            address = "127.0.0.1:{9001 + i}"
            name = "{b}"
            """) for i, b in enumerate(BACKENDS))
        text = textwrap.dedent(f"""\
            [global]
            workers = 1
            drain_timeout = "3s"
            admin_socket = "{d}/admin.sock"
            state_file = "{d}/state.json"

            [listeners.web]
            bind = ["{VIP}:{PORT}"]
            mode = "tcp"
            pool = "app"

            [pools.app]
            algorithm = "maglev"
            hash_key = "source_ip"
            table_size = 1021
            connect_timeout = "1s"
            [pools.app.health]
            type = "none"
            """) + backends + textwrap.dedent(f"""\

            [ha]
            mode = "bgp"
            vips = ["{VIP}"]
            local_as = {NODE_AS}
            peer_as = {ROUTER_AS}
            neighbors = ["{net}.254"]
            router_id = "{net}.1"
            bfd_interval = "{BFD_MS}ms"
            health_file = "{d}/health"
            """)
        (d / "lb.toml").write_text(text)
        return d

    def start_node(self, name: str) -> None:
        d = self.node_config(name)
        for i, b in enumerate(BACKENDS):
            self.spawn(f"{name}-{b}", name, [sys.executable, str(HERE / "backend_server.py"), "--name",
                                             f"{name}/{b}", "--hello", "--host", "127.0.0.1",
                                             "--port", str(9001 + i)])
        code, _, err = cli("ha", "render", "bird", "-c", str(d / "lb.toml"), "-o", str(d / "bird.conf"))
        assert code == 0, err
        self.spawn(f"{name}-lb", name, [sys.executable, "-m", "lb", "run", "-c", str(d / "lb.toml")])
        wait_for(lambda: read_health(d / "health") == "0", 10, f"{name}'s lb to be healthy")
        self.spawn(f"{name}-bird", name, [bird_path(), "-f", "-c", str(d / "bird.conf"),
                                          "-s", str(d / "bird.ctl"), "-P", str(d / "bird.pid")])

    def lb_cli(self, name: str, *args: str) -> tuple[int, str, str]:
        """`lb ARGS` run inside the node's namespace (netlink and /proc/sys
        answer for the namespace of the process that asks)."""
        r = self.exec(name, sys.executable, "-m", "lb", *args, check=False)
        return r.returncode, r.stdout, r.stderr

    def admin(self, name: str, *args: str):
        return cli("--socket", str(self.tmp / name / "admin.sock"), *args)

    def next_hops(self) -> list[str]:
        """The router's next hops for the VIP, as its kernel has them."""
        out = sh("ip", "-n", self.ns["rt"], "route", "show", f"{VIP}/32").stdout.split()
        return sorted(out[i + 1] for i, word in enumerate(out) if word == "via")

    def kill(self, key: str) -> None:
        proc = self.procs.get(key)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)

    def close(self) -> None:
        for key in list(self.procs):
            self.kill(key)
        for log in self.logs:
            log.close()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


BOTH = sorted(f"{net}.1" for net in NODES.values())


@pytest.fixture
def fabric(tmp_path):
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    f = Fabric(tmp_path)
    try:
        f.build()
        f.start_node("n1")
        f.start_node("n2")
        wait_for(lambda: f.next_hops() == BOTH, 20, "the router's ECMP route over both nodes")
        yield f
    finally:
        f.close()


class Client:
    """tests/ha_client.py in the client namespace: a request every 10 ms from
    each of SOURCES in turn, whether or not the earlier ones are done, 100 ms
    connect timeout. Each answer is "NODE/BACKEND"."""

    def __init__(self, fabric: Fabric):
        self.proc = fabric.spawn("client", "cl", [sys.executable, str(HERE / "ha_client.py"), VIP, str(PORT),
                                                  "--interval", "0.01", "--timeout", "0.1",
                                                  "--sources", ",".join(SOURCES)],
                                 stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        self.results: list[dict] = []
        self.lines: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def collect(self) -> list[dict]:
        while True:
            try:
                self.results.append(self.lines.get_nowait())
            except queue.Empty:
                return self.results

    def served_by(self, node: str, n: int = 1, since: float = 0.0) -> bool:
        return sum(1 for r in self.collect() if r["ok"] and r["t"] >= since
                   and r["node"].split("/")[0] == node) >= n

    def stop(self) -> list[dict]:
        self.proc.stdin.close()  # it finishes the requests in flight, then exits
        self.proc.wait(10)
        self.reader.join(5)
        return sorted(self.collect(), key=lambda r: r["t"])


class RouteWatch:
    """Polls the router's next hops for the VIP and records each change with
    the time it was first seen."""

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self.changes: list[tuple[float, list[str]]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = None
        while not self.done.is_set():
            hops = self.fabric.next_hops()
            if hops != last:
                self.changes.append((time.time(), hops))
                last = hops
            self.done.wait(0.005)

    def first(self, hops: list[str], since: float) -> float | None:
        return next((t for t, h in self.changes if t >= since and h == hops), None)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)


def test_bgp_ecmp_spreads_flows_and_keeps_the_backend_per_key(fabric):
    # the nodes' Maglev tables are the same: same digest on both
    digests = set()
    for name in NODES:
        code, out, err = fabric.admin(name, "pool", "fingerprint", "app", "--json")
        assert code == 0, err
        digests.add(json.loads(out)["fingerprint"])
    assert len(digests) == 1

    client = Client(fabric)
    try:
        wait_for(lambda: client.served_by("n1", 80) and client.served_by("n2", 80), 20,
                 "both nodes serving the client")
    finally:
        results = client.stop()
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:5]
    by_source: dict[str, set[str]] = defaultdict(set)
    nodes_by_source: dict[str, set[str]] = defaultdict(set)
    for r in results:
        node, backend = r["node"].split("/")
        by_source[r["source"]].add(backend)
        nodes_by_source[r["source"]].add(node)
    # every connection from one address reached the same backend, through
    # either node; the flows of one address did go through both
    assert all(len(b) == 1 for b in by_source.values()), dict(by_source)
    assert sum(1 for n in nodes_by_source.values() if len(n) == 2) >= len(SOURCES) // 2, dict(nodes_by_source)
    # and the key picks differ: a pool that sent everything to one backend
    # would pass the line above without hashing anything
    assert len(set.union(*by_source.values())) >= 2


def test_bgp_kernel_settings_and_the_vip_on_lo(fabric, tmp_path):
    # lb has put the VIP on lo and set the sysctls BGP mode needs; its
    # announce route is in the kernel table BIRD reads
    code, out, err = fabric.lb_cli("n1", "ha", "check", "-c", str(tmp_path / "n1" / "lb.toml"), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"], report
    names = {c["check"] for c in report["checks"]}
    assert {"interface lo", f"VIP {VIP} on lo", "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.all.arp_announce", "net.ipv4.conf.all.rp_filter", "BIRD installed"} <= names
    routes = fabric.exec("n1", "ip", "route", "show", "table", "4242").stdout
    assert f"blackhole {VIP}" in routes
    # a setting put wrong is reported with the command that fixes it
    fabric.exec("n1", "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0")
    fabric.exec("n1", "sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=1")
    fabric.exec("n1", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
    code, out, _ = fabric.lb_cli("n1", "ha", "check", "-c", str(tmp_path / "n1" / "lb.toml"))
    assert code == 1
    assert "FAIL net.ipv4.conf.all.arp_ignore: is 0, needs 1" in out
    assert "fix: sysctl -w net.ipv4.conf.all.arp_ignore=1" in out
    assert "FAIL net.ipv4.conf.all.rp_filter: is 0, needs 2" in out and "strict on eth0" in out
    # lb check reports the same as warnings, exit 0
    code, _, err = fabric.lb_cli("n1", "check", "-c", str(tmp_path / "n1" / "lb.toml"))
    assert code == 0 and "warning: ha: net.ipv4.conf.all.arp_ignore" in err


def test_bgp_drain_withdraws_the_route_with_no_failed_request(fabric):
    watch = RouteWatch(fabric)
    client = Client(fabric)
    result = {}
    try:
        wait_for(lambda: client.served_by("n1", 30) and client.served_by("n2", 30), 20, "both nodes serving")
        t0 = time.time()
        result["drain"] = fabric.admin("n1", "node", "drain", "--timeout", "3", "--json")
        wait_for(lambda: fabric.next_hops() == ["10.99.12.1"], 5, "n1's route withdrawn")
        t1 = time.time()
        wait_for(lambda: client.served_by("n2", 50, since=t1), 10, "n2 serving alone")
    finally:
        results = client.stop()
        watch.stop()
    code, out, err = result["drain"]
    answer = json.loads(out)
    # A request in flight at the instant the router drops n1's path leaves
    # n1 a connection whose client's last packets went to n2: it stays open
    # on n1 until lb's idle timeout, and the drain reports it (docs/ha.md).
    assert (code, answer["empty"]) == (0, True) or (code == 1 and answer["active"] <= 2), (code, answer, err)
    failed = [r for r in results if not r["ok"]]
    withdrawn = watch.first(["10.99.12.1"], t0)
    print(f"bgp drain: route withdrawn after {withdrawn - t0:.3f}s, {len(failed)} failed of {len(results)}, "
          f"drain exit {code}, {answer['active']} connection(s) left")
    assert not failed, failed
    assert not any(r["node"].startswith("n1/") for r in results if r["t"] > t1 + 0.5)
    code, out, _ = fabric.admin("n1", "node", "status", "--json")
    assert json.loads(out)["announce"]["announced"] is False
    # undrain: announced again, ECMP over both nodes again
    code, _, err = fabric.admin("n1", "node", "undrain")
    assert code == 0, err
    wait_for(lambda: fabric.next_hops() == BOTH, 10, "n1's route back")


def fault_report(fabric: Fabric, fault, label: str) -> dict:
    """Run the client, apply fault() to n1, wait until n2 alone is the route
    and serves; measure when the route lost n1 and what failed."""
    watch = RouteWatch(fabric)
    client = Client(fabric)
    try:
        wait_for(lambda: client.served_by("n1", 30) and client.served_by("n2", 30), 20, "both nodes serving")
        t0 = time.time()
        fault()
        wait_for(lambda: fabric.next_hops() == ["10.99.12.1"], 10, "n1's route withdrawn")
        t1 = time.time()
        wait_for(lambda: client.served_by("n2", 50, since=t1), 10, "n2 serving alone")
    finally:
        results = client.stop()
        watch.stop()
    failed = [r for r in results if not r["ok"]]
    report = {"withdrawn_after": round(watch.first(["10.99.12.1"], t0) - t0, 3), "failed": len(failed),
              "requests": len(results), "errors": sorted({r["error"] for r in failed}),
              "last_failure_after": round(max((r["t"] for r in failed), default=t0) - t0, 3)}
    print(f"bgp {label}: {report}")
    return report


def test_bgp_node_crash_is_withdrawn_within_bfd_time(fabric):
    def crash():
        # a node that dies says nothing: its link goes silent first (no
        # address, no route: nothing leaves, nothing arriving is answered),
        # then its processes die without a FIN or a BGP NOTIFICATION
        # reaching the router; only BFD can tell
        fabric.exec("n1", "ip", "addr", "flush", "dev", "eth0")
        fabric.kill("n1-bird")
        fabric.kill("n1-lb")

    report = fault_report(fabric, crash, "node crash")
    # BFD detects the silent peer after 3 x 50 ms; the rest is BIRD and the
    # router's kernel. Far below BGP's own hold time (9 s).
    assert 0.05 < report["withdrawn_after"] < 1.0, report


def test_bgp_unhealthy_lb_is_withdrawn_while_bird_lives(fabric):
    # lb stops while BIRD lives: the supervisor deletes the announce route
    # before its workers stop, BIRD hears it from netlink and withdraws
    report = fault_report(fabric, lambda: fabric.procs["n1-lb"].send_signal(signal.SIGTERM), "lb stopped")
    assert report["withdrawn_after"] < 0.5, report
    # the stopped lb has taken its VIP off lo and left no route behind
    wait_for(lambda: fabric.procs["n1-lb"].poll() is not None, 10, "n1's lb to exit")
    assert f"{VIP}/32" not in fabric.exec("n1", "ip", "-o", "addr", "show", "dev", "lo").stdout
    assert fabric.exec("n1", "ip", "route", "show", "table", "4242").stdout.strip() == ""


# ---- the VIPs on lo and the announce routes, without BIRD ------------------------


def test_bgp_vips_routes_and_sysctls_follow_lb(tmp_path):
    """One namespace, one lb in BGP mode: what it does to the kernel at start,
    drain, reload and stop (BIRD only reads the result)."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    f = Fabric(tmp_path)
    ns = f.ns["n1"]
    sh("ip", "netns", "add", ns)  # lo down, sysctls at the namespace's defaults
    try:
        d = f.node_config("n1")
        # an IPv6 VIP too, with a neighbor of its family (no BIRD here: nothing dials it)
        v6 = "fd00:99::1"
        text = (d / "lb.toml").read_text().replace("[ha]\n", "[ha]\nannounce_table = 77\n") \
            .replace(f'vips = ["{VIP}"]', f'vips = ["{VIP}", "{v6}"]') \
            .replace('neighbors = ["10.99.11.254"]', 'neighbors = ["10.99.11.254", "fd00:11::254"]')
        (d / "lb.toml").write_text(text)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0",
           "net.ipv4.conf.all.arp_announce=0", "net.ipv4.conf.all.rp_filter=1")
        code, out, _ = f.lb_cli("n1", "ha", "check", "-c", str(d / "lb.toml"))
        assert code == 1
        for line in ("FAIL interface lo: is down", f"FAIL VIP {VIP} on lo", "fix: ip link set dev lo up",
                     "fix: sysctl -w net.ipv4.conf.all.arp_ignore=1",
                     "fix: sysctl -w net.ipv4.conf.all.arp_announce=2",
                     "fix: sysctl -w net.ipv4.conf.all.rp_filter=2"):
            assert line in out, out

        def addrs() -> str:
            return sh("ip", "-n", ns, "-o", "addr", "show", "dev", "lo").stdout

        def routes() -> str:
            # "FIB table does not exist" until the first route: empty
            return sh("ip", "-n", ns, "route", "show", "table", "77", check=False).stdout + \
                sh("ip", "-n", ns, "-6", "route", "show", "table", "77", check=False).stdout

        f.spawn("n1-lb", "n1", [sys.executable, "-m", "lb", "run", "-c", str(d / "lb.toml")])
        wait_for(lambda: read_health(d / "health") == "0", 10, "lb healthy")
        wait_for(lambda: f"blackhole {VIP} proto static" in routes(), 5, "the announce route")
        assert f"inet {VIP}/32" in addrs()
        assert f"blackhole {v6} " in routes() and f"inet6 {v6}/128" in addrs()
        code, out, _ = f.lb_cli("n1", "ha", "check", "-c", str(d / "lb.toml"))
        assert code == 0, out  # lb fixed lo and every sysctl
        code, out, _ = f.admin("n1", "node", "status")
        assert f"BGP: announcing; routes in kernel table 77: {VIP}/32, {v6}/128" in out, out

        # drained: the route goes, the VIP stays on lo for what still arrives
        code, _, err = f.admin("n1", "node", "drain", "--no-wait")
        assert code == 0, err
        assert routes().strip() == "" and f"inet {VIP}/32" in addrs() and f"inet6 {v6}/128" in addrs()
        code, out, _ = f.admin("n1", "node", "status")
        assert "BGP: withdrawn; routes in kernel table 77: none" in out
        code, _, err = f.admin("n1", "node", "undrain")
        assert code == 0, err
        wait_for(lambda: f"blackhole {VIP}" in routes(), 5, "announced again")

        # a reload with a second VIP puts it on lo and announces it too
        second = "10.99.100.2"
        (d / "lb.toml").write_text(text.replace(f'vips = ["{VIP}", ', f'vips = ["{VIP}", "{second}", '))
        code, _, err = f.admin("n1", "reload")
        assert code == 0, err
        wait_for(lambda: f"blackhole {second}" in routes() and f"blackhole {VIP}" in routes(), 5, "both announced")
        assert f"inet {second}/32" in addrs()
        # a reload that drops it withdraws it and takes it off lo
        (d / "lb.toml").write_text(text)
        code, _, err = f.admin("n1", "reload")
        assert code == 0, err
        assert second not in routes() and f"inet {second}/32" not in addrs()
        assert f"blackhole {VIP}" in routes()

        # a stop withdraws everything and takes the VIP lb added off lo
        f.procs["n1-lb"].send_signal(signal.SIGTERM)
        f.procs["n1-lb"].wait(20)
        assert routes().strip() == "" and VIP not in addrs() and v6 not in addrs()
    finally:
        f.close()


def test_announcer_without_netlink_rights_says_so_once(monkeypatch, caplog):
    """A node lb may not change (no CAP_NET_ADMIN): the start goes on, the
    error is logged once, not at every tick that retries, and shown by
    `lb node status`; nothing counts as announced."""
    import errno
    import logging

    import pyroute2
    from pyroute2.netlink.exceptions import NetlinkError

    from lb import ha

    class Refusing:
        def __init__(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def route(self, *args, **kwargs):
            raise NetlinkError(errno.EPERM)

        def link_lookup(self, ifname):
            return [1]

        def get_links(self, index):
            return [{"flags": 1}]

        def get_addr(self, index=None):
            return []

        def addr(self, *args, **kwargs):
            raise NetlinkError(errno.EPERM)

    monkeypatch.setattr(pyroute2, "IPRoute", Refusing)
    settings = load(BGP + "manage_sysctls = false\n").ha
    announcer = ha.Announcer()
    with caplog.at_level(logging.ERROR, logger="lb"):
        announcer.configure(settings)
        for _ in range(5):
            announcer.sync(True)
    assert announcer.announced is None
    assert "Operation not permitted" in announcer.error and "4242" in announcer.error
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len([m for m in errors if "cannot add 10.0.0.100/32 to lo" in m]) == 1, errors
    assert len([m for m in errors if "in table 4242" in m]) == 1, errors
