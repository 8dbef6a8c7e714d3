"""[ha]: the config section, `lb ha render keepalived`, `lb ha check`, the
health file, `lb node drain|undrain`, `lb pool fingerprint`; then VRRP
failover with real keepalived, two lb nodes and a client in network
namespaces this module builds and removes (traffic stays inside them)."""

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
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import HEALTH_NONE, free_port, lb_config, wait_for
from lb import config
from lb.cli import main

HERE = Path(__file__).parent
VRRP = textwrap.dedent("""\
    [ha]
    mode = "vrrp"
    vips = ["10.0.0.100/24 dev eth0"]
    virtual_router_id = 51
    """)


BASE = textwrap.dedent("""\
    [listeners.web]
    bind = ["10.0.0.100:8080"]
    mode = "tcp"
    pool = "app"

    [[pools.app.backends]]
    address = "127.0.0.1:9001"

    """)


def with_base(text: str) -> str:
    return text if "[listeners." in text else BASE + text


def load(text: str) -> config.Config:
    return config.loads(with_base(text))


def error_of(text: str) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.loads(with_base(text))
    return str(e.value)


def cli(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


# ---- config ------------------------------------------------------------------


def test_defaults_and_none():
    cfg = load("")
    assert cfg.ha.mode == "none" and not cfg.ha.enabled and cfg.ha.vips == ()
    assert cfg.ha.health_file == "/run/lb/health"


def test_vrrp_settings():
    cfg = load(VRRP + 'advert_interval = "100ms"\npeers = ["10.0.0.2"]\nunicast_src = "10.0.0.1"\n'
                      "priority = 150\npreempt = false\n")
    ha = cfg.ha
    assert ha.mode == "vrrp"
    assert [v.text for v in ha.vips] == ["10.0.0.100/24 dev eth0"]
    assert ha.interface == "eth0"  # the first VIP's
    assert ha.vrrp_version == 3  # a fractional advert needs VRRPv3
    assert ha.advert_interval == pytest.approx(0.1)
    assert ha.peers == ("10.0.0.2",) and ha.unicast_src == "10.0.0.1"
    assert ha.priority == 150 and ha.preempt is False
    assert load(VRRP).ha.vrrp_version == 2
    assert load(VRRP.replace("10.0.0.100/24", "2001:db8::100/64")).ha.vrrp_version == 3


@pytest.mark.parametrize("extra, path, words", [
    ('mode = "carp"', "ha.mode", "not one of"),
    ('vips = ["10.0.0.100 dev eth0"]', "ha.vips[0]", "ADDR/LEN"),
    ('vips = ["10.0.0.100/24"]', "ha.vips[0]", "dev IFACE"),
    ('vips = ["10.0.0.100/24 dev eth0", "10.0.0.100/24 dev eth1"]', "ha.vips[1]", "twice"),
    ('priority = 255', "ha.priority", "out of range"),
    ('advert_interval = "1500ms"\nvrrp_version = 2', "ha.advert_interval", "version 2 counts whole seconds"),
    ('advert_interval = "105ms"', "ha.advert_interval", "centiseconds"),
    ('advert_interval = "100ms"\nauth = "secret"', "ha.auth", "version 3 has no authentication"),
    ('auth = "muchtoolong"', "ha.auth", "at most 8 bytes"),
    ('peers = ["10.0.0.x"]', "ha.peers[0]", "not an IP address"),
    ('peers = ["fe80::1"]', "ha.peers[0]", "IPv6 peer"),
    ('unicast_src = "10.0.0.1"', "ha.unicast_src", "only used with ha.peers"),
    ('vrid = 5', "ha.vrid", "unknown key"),
    ('vips = ["2001:db8::100/64 dev eth0"]\nvrrp_version = 2', "ha.vrrp_version", "IPv6 VIPs need VRRP version 3"),
    ('vips = ["10.0.0.100/24 dev eth0", "2001:db8::100/64 dev eth0"]', "ha.vips", "one address family"),
])
def test_vrrp_errors(extra, path, words):
    key = extra.split(" ", 1)[0]
    text = "".join(line + "\n" for line in VRRP.splitlines() if not line.startswith(key + " "))
    message = error_of(text + extra + "\n")
    assert message.startswith(f"{path}:") and words in message, message


def test_required_and_mode_errors():
    assert error_of('[ha]\nmode = "vrrp"\nvips = ["10.0.0.100/24 dev eth0"]\n').startswith(
        "ha.virtual_router_id: required")
    assert error_of('[ha]\nmode = "vrrp"\nvirtual_router_id = 1\n').startswith("ha.vips: VRRP needs")
    assert error_of('[ha]\nmode = "bgp"\n').startswith("ha.vips: BGP needs")
    # VRRP keys without mode = "vrrp" are a forgotten mode, not a silent no-op
    assert error_of("[ha]\npriority = 100\n").startswith('ha.priority: a VRRP setting, but ha.mode is "none"')


def test_every_ha_key_is_documented():
    from lb.config import ha

    docs = (HERE.parent / "docs" / "configuration.md").read_text()
    section = docs.split("\n## 6c. Section `[ha]`\n", 1)[1].split("\n## ", 1)[0]
    for key in ha.KEYS:
        assert f"`{key}`" in section, f"ha.{key} is not documented in section 6c"
    example = section.split("\n\n", 1)[0]  # the section's own example is valid
    assert load(textwrap.dedent(example)).ha.mode == "vrrp"


# ---- render --------------------------------------------------------------------


def write(tmp_path, text: str, name: str = "lb.toml") -> str:
    path = tmp_path / name
    path.write_text(with_base(text))
    return str(path)


def test_render_keepalived_vrrpv3_unicast(tmp_path):
    path = write(tmp_path, VRRP + 'advert_interval = "100ms"\npriority = 200\npeers = ["10.0.0.2", "10.0.0.3"]\n'
                                  'unicast_src = "10.0.0.1"\nhealth_file = "/run/lb/health"\npreempt_delay = "5s"\n')
    code, out, err = cli("ha", "render", "keepalived", "-c", path)
    assert code == 0, err
    assert "vrrp_instance lb_51 {" in out
    for line in ("script_user root", "enable_script_security", "state BACKUP", "interface eth0",
                 "virtual_router_id 51", "priority 200", "version 3", "advert_int 0.1", "preempt_delay 5",
                 "unicast_src_ip 10.0.0.1", "10.0.0.100/24 dev eth0", "file /run/lb/health",
                 "lb_health weight 1", "init_file -254"):
        assert f"    {line}\n" in out or f"        {line}\n" in out, line
    assert "unicast_peer {\n        10.0.0.2\n        10.0.0.3\n    }" in out
    assert "authentication" not in out and "nopreempt" not in out
    if shutil.which("keepalived"):  # keepalived's own parser agrees
        conf = tmp_path / "keepalived.conf"
        conf.write_text(out)
        check = subprocess.run(["keepalived", "-t", "-f", str(conf)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr


def test_render_keepalived_v2_auth_multicast_to_file(tmp_path):
    path = write(tmp_path, VRRP + 'auth = "s3cret"\npreempt = false\n')
    out_path = tmp_path / "keepalived.conf"
    code, _, err = cli("ha", "render", "keepalived", "-c", path, "-o", str(out_path))
    assert code == 0, err
    out = out_path.read_text()
    assert "version 2" in out and "advert_int 1\n" in out and "nopreempt" in out
    assert "auth_type PASS" in out and "auth_pass s3cret" in out
    assert "unicast" not in out  # multicast without peers
    assert oct(out_path.stat().st_mode & 0o777) == "0o640"  # the password is in it


def test_render_refusals(tmp_path):
    code, _, err = cli("ha", "render", "keepalived", "-c", write(tmp_path, ""))
    assert code == 2 and 'needs mode = "vrrp"' in err
    code, _, err = cli("ha", "render", "bird", "-c", write(tmp_path, VRRP))
    assert code == 2 and 'needs mode = "bgp"' in err
    code, _, err = cli("ha", "render", "keepalived", "-c", write(tmp_path, '[ha]\nmode = "bgp"\n'))
    assert code == 2 and err.startswith("error: ha.vips:")


# ---- lb ha check ---------------------------------------------------------------


def test_ha_check_reports_what_is_wrong_with_its_fix(tmp_path):
    # lo exists and is up; the interface "lbnosuch0" does not
    ok_path = write(tmp_path, VRRP.replace("eth0", "lo") + f'health_file = "{tmp_path}/health"\n', "ok.toml")
    code, out, err = cli("ha", "check", "-c", ok_path, "--json")
    report = json.loads(out)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["interface lo"]["ok"]
    assert checks["bind 10.0.0.100 before holding it"]["ok"]  # IP_FREEBIND
    assert checks[f"health file directory {tmp_path}"]["ok"]
    assert code == (0 if report["ok"] else 1)

    code, out, _ = cli("ha", "check", "-c", write(tmp_path, VRRP.replace("eth0", "lo") + 'peers = ["10.0.0.2"]\n'
                                                  'unicast_src = "10.0.0.1"\n', "src.toml"))
    assert code == 1 and "FAIL unicast_src 10.0.0.1 on lo: not an address of lo (127.0.0.1" in out
    assert "fix: ip addr add 10.0.0.1/PREFIX dev lo" in out

    bad_path = write(tmp_path, VRRP.replace("eth0", "lbnosuch0") + 'health_file = "/nonexistent/dir/health"\n',
                     "bad.toml")
    code, out, _ = cli("ha", "check", "-c", bad_path)
    assert code == 1
    assert "FAIL interface lbnosuch0: does not exist" in out
    assert "FAIL health file directory /nonexistent/dir" in out and "fix: mkdir -p /nonexistent/dir" in out
    # lb check reports the same, as warnings: the file itself is valid
    code, _, err = cli("check", "-c", bad_path)
    assert code == 0 and "warning: ha: interface lbnosuch0: does not exist" in err

    code, out, _ = cli("ha", "check", "-c", write(tmp_path, "", "none.toml"))
    assert code == 0 and 'ha.mode is "none"' in out


# ---- the health file, drain and undrain, on one daemon over loopback ------------


def read_health(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def admin(lb, *args):
    return cli("--socket", str(lb.config_path.parent / "admin.sock"), *args)


def test_health_file_follows_the_node(run_lb, backends, tmp_path):
    health = tmp_path / "health"
    b1, b2 = backends("b1", hello=True), backends("b2", hello=True)
    port = free_port()
    text = lb_config(port, [b1, b2], health=HEALTH_NONE, global_extra=(
        f'admin_socket = "{tmp_path}/admin.sock"\nstate_file = "{tmp_path}/state.json"\n')) + textwrap.dedent(f"""
        [ha]
        mode = "vrrp"
        vips = ["10.99.7.100/24 dev lo"]
        virtual_router_id = 7
        advert_interval = "100ms"
        health_file = "{health}"
        """)
    lb = run_lb(text)
    wait_for(lambda: read_health(health) == "0", 5, "a healthy node")
    assert oct(health.stat().st_mode & 0o777) == "0o644"

    # every backend of the listener's pool out: unhealthy; one back: healthy
    for name in ("b1", "b2"):
        assert admin(lb, "backend", "maint", "p", name)[0] == 0
    wait_for(lambda: read_health(health) == "-254", 2, "unhealthy with every backend out")
    code, out, _ = admin(lb, "node", "status", "--json")
    assert code == 0 and "listener t: every backend of pool p is down" in json.loads(out)["health"]["reasons"]
    assert admin(lb, "backend", "ready", "p", "b2")[0] == 0
    wait_for(lambda: read_health(health) == "0", 2, "healthy again")

    # drain: unhealthy at once, the answer waits for the node to be empty
    started = time.monotonic()
    code, out, err = admin(lb, "node", "drain", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["drained"] and answer["empty"] and answer["active"] == 0
    assert time.monotonic() - started >= 0.2  # settles: 3 adverts, at least 0.2s
    assert read_health(health) == "-253"  # drained: the priority drops, no FAULT
    assert json.loads((tmp_path / "state.json").read_text())["node"] == {"drained": True}

    # a restart keeps a drained node drained
    lb.stop()
    assert read_health(health) == "-254"
    lb = run_lb(text)
    code, out, _ = admin(lb, "node", "status", "--json")
    status = json.loads(out)
    assert status["drained"] and status["health"]["reasons"] == ["drained"]
    assert read_health(health) == "-253"

    code, out, _ = admin(lb, "node", "undrain")
    assert code == 0 and "healthy" in out
    assert read_health(health) == "0"
    # stopping: unhealthy before the workers have finished
    lb.stop()
    assert read_health(health) == "-254"


def test_no_worker_serving_is_unhealthy(run_lb, backends, tmp_path):
    health = tmp_path / "health"
    port = free_port()
    lb = run_lb(lb_config(port, [backends("b1")], global_extra=(
        f'admin_socket = "{tmp_path}/admin.sock"\nstate_file = "{tmp_path}/state.json"\n')) + textwrap.dedent(f"""
        [ha]
        mode = "vrrp"
        vips = ["10.99.7.100/24 dev lo"]
        virtual_router_id = 7
        health_file = "{health}"
        """))
    wait_for(lambda: read_health(health) == "0", 5, "a healthy node")
    worker = lb.worker_pid(0)
    os.kill(worker, signal.SIGSTOP)  # alive, but its loop beats no more
    try:
        wait_for(lambda: read_health(health) == "-254", 6, "unhealthy once the heartbeat is stale")
        code, out, _ = admin(lb, "node", "status", "--json")
        assert json.loads(out)["health"]["reasons"] == ["no worker serving"]
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_for(lambda: read_health(health) == "0", 5, "healthy once it beats again")


def test_drain_needs_ha(run_lb, backends):
    lb = run_lb(lb_config(free_port(), [backends("b1")]))
    sock = config.load(str(lb.config_path)).global_.admin_socket
    code, _, err = cli("--socket", sock, "node", "drain")
    assert code == 1 and 'ha.mode is "none"' in err


# ---- lb pool fingerprint -------------------------------------------------------


def maglev_config(port: int, weights: dict[str, int], run_dir: str) -> str:
    return lb_config(port, [(f"127.0.0.{i + 2}:80", name, w) for i, (name, w) in enumerate(weights.items())],
                     algorithm="maglev", pool_extra="table_size = 1021",
                     global_extra=f'admin_socket = "{run_dir}/admin.sock"\nstate_file = "{run_dir}/state.json"\n')


def test_fingerprint_same_config_same_digest(run_lb, tmp_path):
    weights = {"a": 100, "b": 100, "c": 50}
    digests = []
    for node in ("n1", "n2"):
        d = tmp_path / node
        d.mkdir()
        # the second node lists its backends in another order: same table
        order = weights if node == "n1" else dict(reversed(list(weights.items())))
        text = maglev_config(free_port(), order, str(d))
        lb = run_lb(text)
        (d / "lb.toml").write_text(text)
        code, out, err = cli("--socket", f"{d}/admin.sock", "pool", "fingerprint", "p", "--json")
        assert code == 0, err
        live = json.loads(out)
        code, out, err = cli("pool", "fingerprint", "p", "-c", str(d / "lb.toml"), "--json")
        assert code == 0, err
        assert json.loads(out)["fingerprint"] == live["fingerprint"]  # config and daemon agree
        assert live["algorithm"] == "maglev" and live["table_size"] == 1021 and live["backends"] == 3
        digests.append((live["fingerprint"], lb, d))
    assert digests[0][0] == digests[1][0]

    # a weight change on one node: different tables, different digests
    _, lb2, d2 = digests[1]
    assert cli("--socket", f"{d2}/admin.sock", "backend", "set-weight", "p", "c", "60")[0] == 0
    code, out, _ = cli("--socket", f"{d2}/admin.sock", "pool", "fingerprint", "p")
    assert code == 0 and out.split()[0] != digests[0][0]
    code, out, _ = cli("pool", "fingerprint", "p", "-c", write(tmp_path, maglev_config(
        free_port(), {"a": 100, "b": 100, "c": 60}, str(tmp_path))))
    assert out.split()[0] != digests[0][0]


def test_fingerprint_errors(tmp_path):
    path = write(tmp_path, maglev_config(free_port(), {"a": 100}, str(tmp_path)))
    code, _, err = cli("pool", "fingerprint", "nosuch", "-c", path)
    assert code == 2 and "no pool 'nosuch'" in err


# ---- VRRP failover in network namespaces ----------------------------------------
#
#   client (10.99.0.10) --+
#   node n1 (10.99.0.1) --+-- bridge (in its own namespace) ; VIP 10.99.0.100
#   node n2 (10.99.0.2) --+
#
# Each node runs its own lb (one tcp listener on the VIP, with IP_FREEBIND, in
# front of a backend in the node that says the node's name) and its own
# keepalived with the config `lb ha render keepalived` wrote. n1 has the
# higher priority and holds the VIP first. VRRPv3, adverts every 100 ms,
# unicast between the nodes.

SUBNET = "10.99.0"
VIP = f"{SUBNET}.100"
PORT = 8080
ADVERT = "100ms"
NODES = {"n1": (f"{SUBNET}.1", 200), "n2": (f"{SUBNET}.2", 100)}
CLIENT_IP = f"{SUBNET}.10"


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "keepalived"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (make test installs it)"
    probe = f"lbha-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"the kernel refuses network namespaces here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


class Cluster:
    """The namespaces, links and processes of one test; close() removes all of
    it, whatever state the test left it in."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        tag = f"lbha{os.getpid() % 100000}"
        self.ns = {name: f"{tag}-{name}" for name in ("sw", "n1", "n2", "cl")}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    # -- building --
    def build(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            for conf in ("all", "default"):  # explicit: VRRP and the VIP must not be dropped as spoofed
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
        sw = self.ns["sw"]
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        for name, ip in (("n1", NODES["n1"][0]), ("n2", NODES["n2"][0]), ("cl", CLIENT_IP)):
            ns = self.ns[name]
            # created in the node's namespace with its peer in the switch's:
            # never an interface in the host's namespace, even for a moment
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p-{name}", "netns", sw)
            sh("ip", "-n", sw, "link", "set", f"p-{name}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def spawn(self, key: str, ns: str, args: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.tmp / f"{key}.log", "w")
        self.logs.append(log)
        # its own session: a crash is simulated by killing the whole group
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[ns], *args], stdout=kwargs.pop("stdout", log),
                                stderr=log, start_new_session=True, **kwargs)
        self.procs[key] = proc
        return proc

    def start_node(self, name: str) -> None:
        ip, priority = NODES[name]
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        peer = next(other_ip for other, (other_ip, _) in NODES.items() if other != name)
        backend_port = 9000
        self.spawn(f"{name}-backend", name, [sys.executable, str(HERE / "backend_server.py"), "--name", name,
                                             "--hello", "--host", "127.0.0.1", "--port", str(backend_port)])
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
            connect_timeout = "1s"
            [pools.app.health]
            type = "none"
            [[pools.app.backends]]
            address = "127.0.0.1:{backend_port}"
            name = "local"

            [ha]
            mode = "vrrp"
            vips = ["{VIP}/24 dev eth0"]
            virtual_router_id = 42
            priority = {priority}
            advert_interval = "{ADVERT}"
            peers = ["{peer}"]
            unicast_src = "{ip}"
            health_file = "{d}/health"
            """)
        (d / "lb.toml").write_text(text)
        code, out, err = cli("ha", "render", "keepalived", "-c", str(d / "lb.toml"), "-o", str(d / "keepalived.conf"))
        assert code == 0, err
        self.spawn(f"{name}-lb", name, [sys.executable, "-m", "lb", "run", "-c", str(d / "lb.toml")])
        wait_for(lambda: read_health(d / "health") == "0", 10, f"{name}'s lb to be healthy")
        self.spawn(f"{name}-keepalived", name, [
            "keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp", "--no-syslog",
            "-f", str(d / "keepalived.conf"), "-p", str(d / "keepalived.pid"), "-r", str(d / "vrrp.pid")])

    def holds_vip(self, name: str) -> bool:
        out = sh("ip", "-n", self.ns[name], "-o", "addr", "show", "dev", "eth0").stdout
        return f" {VIP}/" in out

    def kill(self, key: str) -> None:
        proc = self.procs.get(key)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)

    def lb(self, name: str, *args: str):
        return cli("--socket", str(self.tmp / name / "admin.sock"), *args)

    def close(self) -> None:
        for key in list(self.procs):
            self.kill(key)
        for log in self.logs:
            log.close()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Client:
    """tests/ha_client.py in the client namespace: one request every 10 ms,
    whether or not the earlier ones are done, 100 ms connect timeout."""

    def __init__(self, cluster: Cluster):
        self.proc = cluster.spawn("client", "cl", [sys.executable, str(HERE / "ha_client.py"), VIP, str(PORT),
                                                   "--interval", "0.01", "--timeout", "0.1"],
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

    def served_by(self, node: str, n: int = 1) -> bool:
        return sum(1 for r in self.collect() if r["node"] == node) >= n

    def stop(self) -> list[dict]:
        self.proc.stdin.close()  # it finishes the requests in flight, then exits
        self.proc.wait(10)
        self.reader.join(5)  # every line read: the pipe is at EOF
        return sorted(self.collect(), key=lambda r: r["t"])


@pytest.fixture
def cluster(tmp_path):
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    c = Cluster(tmp_path)
    try:
        c.build()
        c.start_node("n1")
        wait_for(lambda: c.holds_vip("n1"), 10, "n1 to take the VIP")
        c.start_node("n2")
        # n2 has heard n1 and stays backup
        wait_for(lambda: "Entering BACKUP STATE" in (tmp_path / "n2-keepalived.log").read_text(), 10,
                 "n2's keepalived to enter BACKUP")
        assert c.holds_vip("n1") and not c.holds_vip("n2")
        yield c
    finally:
        c.close()


def failover(cluster: Cluster, fault) -> dict:
    """Run the client, wait for n1 to serve it, apply fault(), wait for n2 to
    serve it; measure when (from the fault) n2 answered first and what failed."""
    client = Client(cluster)
    try:
        wait_for(lambda: client.served_by("n1", 20), 10, "n1 serving the client")
        t0 = time.time()
        fault()
        wait_for(lambda: any(r["node"] == "n2" and r["t"] >= t0 for r in client.collect()), 10,
                 "n2 serving the client")
        wait_for(lambda: client.served_by("n2", 30), 10, "n2 serving steadily")
    finally:
        results = client.stop()
    after = [r for r in results if r["t"] >= t0]
    first_n2 = min(r["t"] for r in after if r["node"] == "n2")
    failed = [r for r in results if not r["ok"]]
    report = {"moved_after": first_n2 - t0, "failed": len(failed), "requests": len(results),
              "errors": sorted({r["error"] for r in failed}),
              "n1_after": sum(1 for r in after if r["node"] == "n1"),
              # when each failed request started, from n2's first answer
              "failed_at": [round(r["t"] - first_n2, 3) for r in failed]}
    print(f"failover: {report}")
    return report


def test_vrrp_master_crash_moves_the_vip(cluster):
    def crash():
        cluster.kill("n1-keepalived")
        cluster.kill("n1-lb")

    report = failover(cluster, crash)
    assert report["moved_after"] < 0.5, report
    assert cluster.holds_vip("n2")


def test_vrrp_unhealthy_lb_moves_the_vip_through_the_health_file(cluster):
    # lb stops while keepalived lives: the health file says 1 before the
    # workers have finished, keepalived goes FAULT and hands the VIP over
    report = failover(cluster, lambda: cluster.procs["n1-lb"].send_signal(signal.SIGTERM))
    assert report["moved_after"] < 0.3, report
    wait_for(lambda: not cluster.holds_vip("n1"), 2, "n1 to give the VIP up")
    assert cluster.holds_vip("n2")


def test_vrrp_all_backends_down_moves_the_vip(cluster):
    def backends_out():
        code, _, err = cluster.lb("n1", "backend", "maint", "app", "local")
        assert code == 0, err

    report = failover(cluster, backends_out)
    assert report["moved_after"] < 0.3, report


def test_vrrp_drain_fails_no_request(cluster):
    result = {}

    def drain():
        result["drain"] = cluster.lb("n1", "node", "drain", "--timeout", "2", "--json")

    report = failover(cluster, drain)
    code, out, err = result["drain"]
    answer = json.loads(out)
    # A request in flight at the instant the client's ARP entry moves to n2
    # leaves n1 a connection whose client now talks to n2: it stays open on
    # n1 until lb's idle timeout, and the drain reports it (docs/ha.md).
    assert (code, answer["empty"]) == (0, True) or (code == 1 and answer["active"] <= 2), (code, answer, err)
    # No VRRP move carries an established connection over: the one request
    # that may fail is the one in flight at that instant (about one drain in
    # twenty here), started within the client's 100 ms timeout before n2's
    # first answer; none fails before or after the move (no gap without a
    # holder of the VIP, as a crash or a health-file failover has)
    assert report["failed"] <= 1 and all(-0.2 <= t <= 0.05 for t in report["failed_at"]), report
    assert not cluster.holds_vip("n1") and cluster.holds_vip("n2")
    # undrain: n1 has the higher priority and preempts
    code, _, err = cluster.lb("n1", "node", "undrain")
    assert code == 0, err
    wait_for(lambda: cluster.holds_vip("n1"), 5, "n1 to take the VIP back")
