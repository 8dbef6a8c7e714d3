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
    # BGP is a reserved spelling: refused by key, not half served
    message = error_of('[ha]\nmode = "bgp"\n')
    assert message.startswith("ha.mode:") and "not in this build yet" in message
    # VRRP keys without mode = "vrrp" are a forgotten mode, not a silent no-op
    assert error_of("[ha]\npriority = 100\n").startswith('ha.priority: a VRRP setting, but ha.mode is "none"')


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
                 "lb_health weight 0", "init_file 1"):
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
    assert code == 2 and "not in this build yet" in err
    code, _, err = cli("ha", "render", "keepalived", "-c", write(tmp_path, '[ha]\nmode = "bgp"\n'))
    assert code == 2 and err.startswith("error: ha.mode:")


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
    wait_for(lambda: read_health(health) == "1", 2, "unhealthy with every backend out")
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
    assert read_health(health) == "1"
    assert json.loads((tmp_path / "state.json").read_text())["node"] == {"drained": True}

    # a restart keeps a drained node drained
    lb.stop()
    assert read_health(health) == "1"
    lb = run_lb(text)
    code, out, _ = admin(lb, "node", "status", "--json")
    status = json.loads(out)
    assert status["drained"] and status["health"]["reasons"][0] == "drained"
    assert read_health(health) == "1"

    code, out, _ = admin(lb, "node", "undrain")
    assert code == 0 and "healthy" in out
    assert read_health(health) == "0"
    # stopping: unhealthy before the workers have finished
    lb.stop()
    assert read_health(health) == "1"


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
