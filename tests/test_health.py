"""Health end to end: the checker process (rise/fall, http checks, maint),
passive ejection from the workers' failures, slow start in the supervisor,
admin states read by the workers, and the checker's respawn.

Real `lb run`, real backend processes (tests/backend_server.py), loopback.
State is read from the shared memory (CLOCK_MONOTONIC milliseconds there are
comparable with time.monotonic()) and from the health lines of lb's log.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import textwrap
import threading
import time
from datetime import datetime

import psutil

from backend_server import TRANSFORM
from conftest import free_port, lb_config, wait_for
from lb._fastpath import Shm

REASON_CONNECT = 1
REASON_STATUS = 3
REASON_BODY = 4
REASON_PASSIVE = 6

HEALTH_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) lb\[\d+\] WARNING "
    r"backend (\S+)/(\S+) health (up|down) -> (up|down): (.*)$", re.M)


# ---- helpers -------------------------------------------------------------------

def health(type: str = "tcp", interval: str = "100ms", rise: int = 2, fall: int = 2,
           passive_failures: int = 0, extra: str = "", passive_extra: str = "", timeout: str = "") -> str:
    """The body of [pools.p.health], then a [pools.p.passive] section
    (passive_failures 0 = passive health off, so only the checker acts)."""
    return (f'type = "{type}"\ninterval = "{interval}"\ntimeout = "{timeout or interval}"\n'
            f"rise = {rise}\nfall = {fall}\n{textwrap.dedent(extra).strip()}\n\n"
            f"[pools.p.passive]\nconsecutive_failures = {passive_failures}\n"
            f"{textwrap.dedent(passive_extra).strip()}\n")


def mono_ms() -> float:
    return time.monotonic() * 1000


def hello_name(port: int, timeout: float = 5.0) -> str:
    """One short connection through lb to a --hello backend: its name, and one
    byte each way checked (the flow works, not only the connect)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        name = f.readline().decode().strip()
        if not name:
            raise ConnectionError("closed before the hello")
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        rest = f.read()
        if rest != b"x".translate(TRANSFORM):
            raise ConnectionError(f"bad echo {rest!r} from {name}")
        return name


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def health_changes(lb) -> list[tuple[float, str, str, str, str, str]]:
    """(wall time, pool, backend, old, new, reason) of every health line of lb's log."""
    out = []
    for m in HEALTH_LINE.finditer(lb.log()):
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append((when, *m.group(2, 3, 4, 5, 6)))
    return out


def state(lb, index: int, pool: int = 0) -> dict:
    return lb.shm.backend(pool, index)


def wait_health(lb, index: int, want: str, timeout: float, pool: int = 0) -> float:
    """Poll shm until the backend's health is `want`; the monotonic time seen."""
    wait_for(lambda: state(lb, index, pool)["health"] == want, timeout,
             f"backend {index} of pool {pool} to be {want}", interval=0.005)
    return time.monotonic()


class Load:
    """Client threads opening short connections through lb back to back;
    every connection's start time, backend name (None on failure) and error."""

    def __init__(self, port: int, threads: int = 3):
        self.port = port
        self.results: list[tuple[float, str | None, str | None]] = []
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self.results.append((started, hello_name(self.port), None))
            except OSError as e:
                self.results.append((started, None, repr(e)))

    def since(self, t: float):
        return [r for r in list(self.results) if r[0] >= t]

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(10)


def lb_children(lb) -> list[psutil.Process]:
    return psutil.Process(lb.proc.pid).children()


def checker_running(lb) -> bool:
    """The checker is in its loop (blocked in epoll_wait): it has read the
    workers' failure counters it starts from, so passive ejection counts every
    failure from now on."""
    pid = checker_pid(lb)
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read().strip() in ("do_epoll_wait", "ep_poll")
    except OSError:
        return False


def checker_pid(lb) -> int | None:
    for p in lb_children(lb):
        try:
            if p.name() == "lb-checker" and p.status() != psutil.STATUS_ZOMBIE:
                return p.pid
        except psutil.NoSuchProcess:
            pass
    return None


# ---- 1. a killed backend goes down within fall intervals, comes back after rise ----

def test_killed_backend_down_within_fall_intervals_and_up_after_rise(backends, run_lb):
    interval, rise, fall = 0.2, 3, 3
    a = backends("a", hello=True)
    b = backends("b", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health(interval="200ms", rise=rise, fall=fall)))
    load = Load(port, threads=3)
    try:
        wait_for(lambda: {"a", "b"} <= {r[1] for r in load.results}, 10, "load to reach both backends")
        killed_at = time.monotonic()
        a.stop()
        down_at = wait_health(lb, 0, "down", 5)
        took = down_at - killed_at
        # three failed checks about one interval apart (+-5% jitter), the first
        # within one interval of the kill
        assert (fall - 1) * interval * 0.9 - 0.02 <= took <= (fall + 1) * interval + 0.4, took
        info = state(lb, 0)
        assert info["down_reason"] == REASON_CONNECT and info["check_oks"] == 0, info
        assert state(lb, 1)["health"] == "up"

        # from the moment shm says down, no new connection fails
        wait_for(lambda: len(load.since(down_at)) >= 150, 10, "load after the down")
        assert {r[1] for r in load.since(down_at)} == {"b"}

        a2 = backends("a", hello=True, port=a.port)
        back_at = time.monotonic()
        seen_oks = set()

        def up():
            s = state(lb, 0)
            if s["health"] == "down":
                seen_oks.add(s["check_oks"])
            return s["health"] == "up"

        wait_for(up, 5, "a to come back up", interval=0.005)
        up_at = time.monotonic()
        # rise passed checks, one interval apart, the first within one interval
        assert (rise - 1) * interval * 0.9 - 0.05 <= up_at - back_at <= (rise + 1) * interval + 0.5, up_at - back_at
        # check_oks counted the passes while down: 1 .. rise-1, never rise
        assert rise - 1 in seen_oks and max(seen_oks) < rise, seen_oks
        assert state(lb, 0)["check_oks"] == 0  # reset by the change
        wait_for(lambda: "a" in {r[1] for r in load.since(up_at)}, 5, "traffic to reach a again")
    finally:
        load.stop()
    failed_after_down = [r for r in load.since(down_at) if r[1] is None]
    assert failed_after_down == [], failed_after_down[:5]
    assert len(load.since(down_at)) > 150
    wait_for(lambda: len(health_changes(lb)) >= 2, 5, "the up line")
    changes = [(c[2], c[3], c[4]) for c in health_changes(lb)]
    assert changes == [("a", "up", "down"), ("a", "down", "up")], changes
    a2.stop()


# ---- 2. slow start -------------------------------------------------------------------

def test_slow_start_ramps_share_and_eff_weight(backends, run_lb):
    ramp_ms = 2000
    a = backends("a", hello=True)
    b = backends("b", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health(rise=2, fall=2, extra='slowstart = "2s"')))
    a.stop()
    wait_health(lb, 0, "down", 5)
    # a backend that is down waits at the bottom of its ramp
    wait_for(lambda: state(lb, 0)["eff_weight"] == 5, 2, "eff_weight 5% while down")
    assert state(lb, 1)["eff_weight"] == 100

    backends("a", hello=True, port=a.port)
    wait_health(lb, 0, "up", 5)
    up_since = state(lb, 0)["up_since_ms"]
    assert up_since and abs(mono_ms() - up_since) < 500
    picks = []  # (ms since up, name)
    weights = []  # (ms since up, eff_weight of a)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        elapsed = mono_ms() - up_since
        weights.append((elapsed, state(lb, 0)["eff_weight"]))
        if elapsed > ramp_ms + 300:
            break
        picks.append((mono_ms() - up_since, hello_name(port)))
    assert weights[-1][0] > ramp_ms + 300, "the ramp took too long to observe"

    def share(lo, hi):
        names = [n for t, n in picks if lo <= t < hi]
        assert len(names) >= 30, (lo, hi, len(names))
        return names.count("a") / len(names)

    first, last = share(0, ramp_ms / 3), share(2 * ramp_ms / 3, ramp_ms)
    # 5%..33% of the weight gives ~5..25% of the picks; 67%..100% gives ~40..50%
    assert first < 0.3 and last > 0.3 and last - first > 0.15, (first, last)
    values = [w for _, w in weights]
    assert values == sorted(values), values  # monotonic
    assert values[0] <= 30 and values[-1] == 100, values
    assert len(set(values)) >= 8, sorted(set(values))  # steps, not a jump
    full_at = next(t for t, w in weights if w == 100)
    assert ramp_ms * 0.9 <= full_at <= ramp_ms + 500, full_at
    # after the ramp: an even split
    names = [hello_name(port) for _ in range(100)]
    assert 40 <= names.count("a") <= 60, names.count("a")


# ---- 3. drain and maint --------------------------------------------------------------

def test_drain_keeps_flows_and_maint_stops_checks(backends, run_lb):
    a = backends("a", hello=True)
    b = backends("b", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health()))
    admin = Shm.attach(lb.shm_path)  # as the supervisor writes admin state

    long_lived = socket.create_connection(("127.0.0.1", port), timeout=5)
    name = long_lived.makefile("rb").readline().decode().strip()
    idx = 0 if name == "a" else 1
    held, other = (a, b) if name == "a" else (b, a)

    def exchange(rounds: int):
        for i in range(rounds):
            block = os.urandom(65536)
            long_lived.sendall(block)
            assert recv_exact(long_lived, len(block)) == block.translate(TRANSFORM)

    exchange(1)

    # drain: the held connection keeps flowing both ways, new connections go elsewhere
    admin.set_admin(0, idx, "drain")
    assert state(lb, idx)["admin"] == "drain"
    names = [hello_name(port) for _ in range(40)]
    assert names == [other.name] * 40
    exchange(4)
    assert lb.backend_stats(idx)["active"] == 1
    assert lb.backend_stats(idx)["total"] == 1
    long_lived.close()

    # maint: no new connections, and no checks at all: a backend in maint that
    # dies is not noticed (tcp checks never reach the backend's accept(), so
    # the checker's fields and its check counter tell)
    admin.set_admin(0, idx, "maint")
    names = [hello_name(port) for _ in range(40)]
    assert names == [other.name] * 40
    held.stop()
    total = lb.shm.checks_total
    wait_for(lambda: lb.shm.checks_total >= total + 2, 3, "checks of the other backend")
    before = state(lb, idx)
    total = lb.shm.checks_total
    wait_for(lambda: lb.shm.checks_total >= total + 10, 5, "ten more checks of the other backend")
    after = state(lb, idx)
    for key in ("health", "last_latency_us", "last_result", "last_errno", "check_oks", "check_fails"):
        assert before[key] == after[key], (key, before, after)
    assert after["health"] == "up" and after["last_result"] == 0, after

    # ready again: checked again, so found dead, and never picked meanwhile
    admin.set_admin(0, idx, "ready")
    wait_health(lb, idx, "down", 3)
    assert state(lb, idx)["down_reason"] == REASON_CONNECT
    assert [hello_name(port) for _ in range(20)] == [other.name] * 20
    assert lb.backend_stats(idx)["total"] == 1


# ---- 4. passive ejection before the active checker -------------------------------------

def test_passive_ejection_before_active_checks(backends, run_lb):
    a = backends("a", hello=True)
    b = backends("b", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health(
        interval="60s", rise=2, fall=3, passive_failures=3,
        timeout="1s", passive_extra='eject_time = "10s"')))
    wait_for(lambda: checker_running(lb), 10, "the checker to run")
    a.stop()
    for i in range(20):
        assert hello_name(port) == "b", f"connection {i}"
        errors = lb.backend_stats(0)["connect_errors"]
        if errors >= 3:
            break
        assert state(lb, 0)["health"] == "up", (i, errors)  # not before 3 failures
    assert errors == 3, errors
    wait_health(lb, 0, "down", 2)
    info = state(lb, 0)
    now = mono_ms()
    assert info["down_reason"] == REASON_PASSIVE and info["last_result"] == REASON_PASSIVE, info
    assert now + 8000 < info["eject_until_ms"] <= now + 10000, (info["eject_until_ms"], now)
    assert info["eject_count"] == 1
    # the active checker (one check per minute) has not decided anything
    assert info["check_fails"] == 0, info
    # clients never notice: a is not tried any more
    assert [hello_name(port) for _ in range(50)] == ["b"] * 50
    assert lb.backend_stats(0)["connect_errors"] == 3
    changes = wait_for(lambda: health_changes(lb), 5, "the down line")
    assert [(c[2], c[3], c[4]) for c in changes] == [("a", "up", "down")]
    assert changes[0][5].startswith("ejected: connects kept failing"), changes


# ---- 5. max_ejected_percent -------------------------------------------------------------

def test_max_ejected_percent_bounds_passive_ejection(backends, run_lb):
    live = backends("live", hello=True)
    dead = [(f"127.0.0.1:{free_port()}", f"dead{i}", 100) for i in range(3)]
    port = free_port()
    lb = run_lb(lb_config(port, [*dead, live], pool_extra="retries = 3", health=health(
        type="none", passive_failures=3,
        passive_extra='eject_time = "30s"\nmax_ejected_percent = 50')))
    wait_for(lambda: checker_running(lb), 10, "the checker to run")

    def ejected():
        return [i for i in range(3) if state(lb, i)["health"] == "down"]

    for i in range(40):
        assert hello_name(port) == "live", f"connection {i}"
        assert len(ejected()) <= 2
    wait_for(lambda: len(ejected()) == 2, 2, "two ejections")
    out = ejected()
    (kept,) = set(range(3)) - set(out)
    for i in out:
        assert state(lb, i)["down_reason"] == REASON_PASSIVE
    errors = [lb.backend_stats(i)["connect_errors"] for i in range(3)]
    for i in range(40):
        assert hello_name(port) == "live", f"connection {i} after the ejections"
        assert ejected() == out
    after = [lb.backend_stats(i)["connect_errors"] for i in range(3)]
    # the one over the bound stays in rotation: still tried, refused, retried elsewhere
    assert state(lb, kept)["health"] == "up"
    assert after[kept] >= errors[kept] + 20, (errors, after)
    for i in out:
        assert after[i] == errors[i], (errors, after)
    assert lb.worker_stats()[0]["no_backend"] == 0


# ---- 6. a flapping backend ------------------------------------------------------------

def test_flapping_backend_changes_no_faster_than_rise_and_fall(backends, run_lb):
    interval, rise, fall = 0.1, 3, 3
    steady = backends("steady", hello=True)
    flappy = backends("flappy", mode="flap", extra_args=["--flap-ms", "300"])
    opened_at = time.time()
    port = free_port()
    started = time.time()
    lb = run_lb(lb_config(port, [flappy, steady], health=health(rise=rise, fall=fall)))
    results = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        results.add(state(lb, 0)["last_result"])
        time.sleep(0.01)
    ended = time.time()
    # the checker really saw both: passes and refusals
    assert {0, REASON_CONNECT} <= results, results

    changes = [c for c in health_changes(lb) if c[2] == "flappy"]
    assert all(c[1] == "p" for c in changes)
    # alternating, starting from up
    expected_old = "up"
    for c in changes:
        assert c[3] == expected_old and c[4] != c[3], changes
        expected_old = c[4]
    # rise (or fall) checks about one interval apart between two changes
    min_gap = min(rise, fall) * interval * 0.95
    for prev, cur in zip(changes, changes[1:]):
        assert cur[0] - prev[0] >= min_gap - 0.05, (prev, cur)
    assert len(changes) <= (ended - started) / min_gap + 1, changes
    # a change comes after `rise` passes (`fall` failures) in a row: the listener
    # was open (closed) for at least rise-1 (fall-1) intervals before it
    toggles = [("open", opened_at)]
    for line in flappy.drain_lines():
        what, when = line.split()
        toggles.append((what, float(when)))
    # (log times are truncated to the millisecond; a toggle is printed after it
    # happened; and on a loaded machine the log line may trail the check that
    # decided it, so a toggle up to LAG before the line may postdate the check)
    LAG = 0.15
    for when, _, _, old, new, reason in changes:
        want = "open" if new == "up" else "closed"
        before = sorted(((t, w) for w, t in toggles if t <= when + 0.001), reverse=True)
        last_toggle, kind = before[0]
        if kind != want and when - last_toggle < LAG and len(before) > 1:
            last_toggle, kind = before[1]
        assert kind == want, (when, new, toggles)
        n = rise if new == "up" else fall
        assert when - last_toggle >= (n - 1) * interval * 0.95 - 0.04, (when, last_toggle, new)
    assert state(lb, 1)["health"] == "up"


# ---- 7. http checks: status and expected body ---------------------------------------------

def multi_pool_config(pools: list[tuple[str, str, str]], run_dir) -> tuple[str, list[int]]:
    """One tcp listener per pool: (pool name, backend address, health body)."""
    text = (f'[global]\nworkers = 1\nadmin_socket = "{run_dir}/admin.sock"\n'
            f'state_file = "{run_dir}/state.json"\n')
    ports = []
    for name, address, body in pools:
        ports.append(free_port())
        text += textwrap.dedent(f"""
            [listeners.{name}]
            bind = ["127.0.0.1:{ports[-1]}"]
            mode = "tcp"
            pool = "{name}"

            [pools.{name}]
            algorithm = "roundrobin"

            [pools.{name}.passive]
            consecutive_failures = 0

            [[pools.{name}.backends]]
            address = "{address}"
            name = "{name}-backend"

            [pools.{name}.health]
            """) + textwrap.dedent(body).strip() + "\n"
    return text, ports


def test_http_checks_status_and_expect_body(backends, run_lb, tmp_path):
    err500 = backends("err500", mode="http", extra_args=["--status", "500", "--body", "boom"])
    hello = backends("hello", mode="http", extra_args=["--status", "200", "--body", "hello world"])
    common = 'interval = "100ms"\ntimeout = "100ms"\nrise = 2\nfall = 2\n'
    text, _ = multi_pool_config([
        ("http500", err500.address, 'type = "http"\n' + common),
        ("tcp500", err500.address, 'type = "tcp"\n' + common),
        ("nobody", hello.address, 'type = "http"\nexpect_body = "alive"\n' + common),
        ("body", hello.address, 'type = "http"\nexpect_body = "world"\n' + common),
    ], tmp_path)
    lb = run_lb(text)
    wait_health(lb, 0, "down", 5, pool=0)
    wait_health(lb, 0, "down", 5, pool=2)
    http500, nobody = state(lb, 0, 0), state(lb, 0, 2)
    assert (http500["down_reason"], http500["last_status"]) == (REASON_STATUS, 500), http500
    assert (nobody["down_reason"], nobody["last_status"]) == (REASON_BODY, 200), nobody
    # the others were checked too, and passed
    for pool in (1, 3):
        wait_for(lambda: state(lb, 0, pool)["last_latency_us"] > 0, 3, f"a check of pool {pool}")
    tcp500, body = state(lb, 0, 1), state(lb, 0, 3)
    assert tcp500["health"] == "up" and tcp500["last_result"] == 0 and tcp500["check_fails"] == 0, tcp500
    assert body["health"] == "up" and body["last_result"] == 0 and body["last_status"] == 200, body
    assert body["check_fails"] == 0, body
    wait_for(lambda: len(health_changes(lb)) >= 2, 5, "the down lines")
    changes = {(c[1], c[3], c[4]): c[5] for c in health_changes(lb)}
    assert set(changes) == {("http500", "up", "down"), ("nobody", "up", "down")}, changes
    assert changes[("http500", "up", "down")].startswith("bad status 500, check took ")
    assert changes[("nobody", "up", "down")].startswith("expected body not found, check took ")


# ---- 8. the checker is respawned and goes on where it was --------------------------------

def test_killed_checker_is_respawned_without_losing_state(backends, run_lb):
    a = backends("a", hello=True)
    b = backends("b", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health(
        rise=2, fall=10, passive_failures=3, passive_extra='eject_time = "2s"')))
    wait_for(lambda: checker_running(lb), 10, "the checker to run")
    b.stop()
    for i in range(10):
        assert hello_name(port) == "a"
        if lb.backend_stats(1)["connect_errors"] >= 3:
            break
    wait_health(lb, 1, "down", 2)
    wait_for(lambda: len(health_changes(lb)) == 1, 5, "the down line")  # logged after the change
    before = state(lb, 1)
    assert before["down_reason"] == REASON_PASSIVE and before["eject_until_ms"] > mono_ms(), before
    lines_before = len(health_changes(lb))

    old = wait_for(lambda: checker_pid(lb), 5, "the checker")
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    # at once, not after a crash-loop backoff (the bound leaves room for a loaded CI machine)
    new = wait_for(lambda: (p := checker_pid(lb)) and p != old and p, 3.0, "a new checker")
    assert time.monotonic() - killed_at < 3.0
    assert psutil.Process(new).ppid() == lb.proc.pid
    # checks go on: the new checker counts checks in the same region
    total = lb.shm.checks_total
    wait_for(lambda: lb.shm.checks_total >= total + 4, 3, "checks by the new checker")
    after = state(lb, 1)
    for key in ("health", "down_reason", "eject_until_ms", "eject_count", "check_oks", "up_since_ms"):
        assert after[key] == before[key], (key, before, after)
    assert state(lb, 0)["health"] == "up"
    assert len(health_changes(lb)) == lines_before, health_changes(lb)
    assert re.search(rf"checker \(pid {old}\) died: killed by SIGKILL; respawning", lb.log())

    # the down backend comes back, once its ejection is over
    backends("b", hello=True, port=b.port)
    wait_health(lb, 1, "up", 6)
    assert mono_ms() >= before["eject_until_ms"]
    # the line is logged after the change is published
    wait_for(lambda: len(health_changes(lb)) > lines_before, 5, "the up line")
    assert [c[2:5] for c in health_changes(lb)][lines_before:] == [("b", "down", "up")]
    wait_for(lambda: "b" in {hello_name(port) for _ in range(4)}, 3, "traffic to b again")


# ---- 9. empty pool, backups ----------------------------------------------------------------

def test_empty_pool_closes_new_connections_at_once(backends, run_lb):
    a = backends("a")
    b = backends("b")
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health()))
    a.stop()
    b.stop()
    wait_health(lb, 0, "down", 5)
    wait_health(lb, 1, "down", 5)
    no_backend = lb.worker_stats()[0]["no_backend"]
    errors = [lb.backend_stats(i)["connect_errors"] for i in range(2)]
    n = 20
    for i in range(n):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started < 0.5, i
    assert lb.worker_stats()[0]["no_backend"] == no_backend + n
    # closed without trying a backend
    assert [lb.backend_stats(i)["connect_errors"] for i in range(2)] == errors


def test_backup_takes_traffic_only_without_a_primary(backends, run_lb):
    primary = backends("primary", hello=True)
    backup = backends("backup", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [(primary.address, "primary", 100), (backup.address, "backup", 100, True)],
                          health=health()))
    assert state(lb, 1)["backup"] is True
    assert [hello_name(port) for _ in range(30)] == ["primary"] * 30
    primary.stop()
    wait_health(lb, 0, "down", 5)
    assert [hello_name(port) for _ in range(30)] == ["backup"] * 30
    backends("primary", hello=True, port=primary.port)
    wait_health(lb, 0, "up", 5)
    assert [hello_name(port) for _ in range(30)] == ["primary"] * 30
    assert lb.backend_stats(1)["total"] == 30


# ---- 10. every change is logged once ------------------------------------------------------

def test_each_state_change_is_logged_once_with_reason(backends, run_lb):
    a = backends("a")
    b = backends("b")
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health()))
    a.stop()
    wait_health(lb, 0, "down", 5)
    backends("a", port=a.port)
    wait_health(lb, 0, "up", 5)
    # the checker logs the change after writing it: wait for the line
    wait_for(lambda: len(health_changes(lb)) >= 2, 2, "the up line")
    log = lb.log()
    down = re.findall(r"^.* WARNING backend p/a health up -> down: .*$", log, re.M)
    up = re.findall(r"^.* WARNING backend p/a health down -> up: .*$", log, re.M)
    assert len(down) == 1 and len(up) == 1, (down, up)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} lb\[\d+\] WARNING backend p/a health up -> down: "
                        r"connect failed \(ECONNREFUSED: Connection refused\), check took \d+\.\dms", down[0]), down
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} lb\[\d+\] WARNING backend p/a health down -> up: "
                        r"passed, check took \d+\.\dms", up[0]), up
    assert len(health_changes(lb)) == 2
    assert [c[2] for c in health_changes(lb)] == ["a", "a"]


# ---- found while writing these: the up line after an ejection ends ------------------------

def test_end_of_ejection_is_logged_with_its_own_reason(backends, run_lb):
    """Without active checks an ejected backend returns when its ejection is over;
    that down -> up line must not repeat the reason of the ejection."""
    a = backends("a", hello=True)
    b = backends("b", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health(
        type="none", passive_failures=3, passive_extra='eject_time = "300ms"')))
    wait_for(lambda: checker_running(lb), 10, "the checker to run")
    a.stop()
    for i in range(10):
        assert hello_name(port) == "b"
        if lb.backend_stats(0)["connect_errors"] >= 3:
            break
    wait_health(lb, 0, "down", 2)
    wait_health(lb, 0, "up", 3)
    wait_for(lambda: len(health_changes(lb)) >= 2, 2, "the up line")
    changes = health_changes(lb)
    assert [c[2:5] for c in changes] == [("a", "up", "down"), ("a", "down", "up")], changes
    assert changes[0][5].startswith("ejected: connects kept failing")
    assert "connects kept failing" not in changes[1][5], changes[1]


# ---- found while writing these: failures while no checker runs are forgotten ---------------

def test_failures_while_the_checker_is_being_respawned_still_eject(backends, run_lb):
    """The workers count a backend's failed connects since its last success; a
    checker that is respawned must act on the ones no checker has acted on yet
    (shm keeps health detail "so a respawned checker goes on where the last one
    was"), not take them as already handled."""
    a = backends("a", hello=True)
    b = backends("b", hello=True)
    port = free_port()
    lb = run_lb(lb_config(port, [a, b], health=health(
        type="none", passive_failures=3, passive_extra='eject_time = "30s"')))
    wait_for(lambda: checker_running(lb), 10, "the checker to run")
    old = checker_pid(lb)
    # hold the supervisor so the checker stays dead for a while; workers go on
    os.kill(lb.proc.pid, signal.SIGSTOP)
    try:
        os.kill(old, signal.SIGKILL)
        a.stop()
        for i in range(10):
            assert hello_name(port) == "b"
            if lb.backend_stats(0)["connect_errors"] >= 3:
                break
        assert lb.backend_stats(0)["connect_errors"] == 3
    finally:
        os.kill(lb.proc.pid, signal.SIGCONT)
    wait_for(lambda: (p := checker_pid(lb)) and p != old and checker_running(lb), 5, "a new checker")
    # three failures in a row, none acted on: the new checker ejects a
    wait_health(lb, 0, "down", 2)
    assert state(lb, 0)["down_reason"] == REASON_PASSIVE
