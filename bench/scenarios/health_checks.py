"""health_checks: CPU the health checker spends on 1,000 backends at 1 s interval.

A farm process listens on N loopback ports (default 1000). lb runs with one pool of those N backends and tcp checks
every 1 s; then HAProxy runs with the same N servers and `check inter 1s`
(one thread). Each is measured alone, for the same window: the CPU time of
lb's checker process and of HAProxy's process (which does nothing else: no
traffic is sent), and lb's checks per second (its checker's own counter in
shared memory), which shows it really checks every backend once a second. Target (issue 4): lb under 5% of one core.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

from bench import harness

NAME = "health_checks"
ORDER = 110
KIND = "local"
SUMMARY = "checker CPU for 1,000 tcp-checked backends at 1 s interval: lb vs HAProxy"
TARGETS = ()
METRICS = ()

N_BACKENDS = 1000
LIMIT_PCT = 5.0

FARM = textwrap.dedent("""
    import asyncio, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    async def handle(reader, writer):
        writer.close()
    async def main(n):
        ports = []
        for _ in range(n):
            server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=64)
            ports.append(server.sockets[0].getsockname()[1])
        print(" ".join(map(str, ports)), flush=True)
        await asyncio.Event().wait()
    asyncio.run(main(int(sys.argv[1])))
""")


class Farm:
    def __init__(self, n: int):
        self.proc = subprocess.Popen([sys.executable, "-c", FARM, str(n)],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.ports = [int(p) for p in self.proc.stdout.readline().split()]
        if len(self.ports) != n:
            raise harness.BenchError("the backend farm did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _poll(predicate, timeout: float, what: str, log_path: Path):
    """Another process's state, polled: its value once truthy, or BenchError."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise harness.BenchError(f"timed out waiting for {what}", harness.tail(log_path))
        time.sleep(0.05)
    return value


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _window(proc: psutil.Process, seconds: float, checks=None) -> dict:
    """CPU of proc over a window, and checks per second when they can be counted."""
    n0, c0, t0 = checks() if checks else 0, _cpu(proc), time.monotonic()
    time.sleep(seconds)
    n1, c1, t1 = checks() if checks else 0, _cpu(proc), time.monotonic()
    return {"cpu_pct": 100 * (c1 - c0) / (t1 - t0),
            "checks_per_s": (n1 - n0) / (t1 - t0) if checks else None}


def _lb(farm: Farm, workdir: Path, seconds: float) -> dict:
    lines = [f"""
        [global]
        workers = 1
        admin_socket = "{workdir}/admin.sock"
        state_file = "{workdir}/state.json"
        [listeners.l]
        bind = ["127.0.0.1:{harness.PortAllocator().take()}"]
        mode = "tcp"
        pool = "farm"
        [pools.farm]
        [pools.farm.health]
        type = "tcp"
        interval = "1s"
        timeout = "500ms"
        """]
    lines += [f'[[pools.farm.backends]]\naddress = "127.0.0.1:{port}"\n' for port in farm.ports]
    config = workdir / "lb.toml"
    config.write_text(textwrap.dedent(lines[0]) + "\n".join(lines[1:]))
    log = open(workdir / "lb.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "lb", "run", "-c", str(config)], stderr=log,
                            cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    try:
        from lb._fastpath import Shm
        from lb.shm import region_path

        def attached():
            try:
                return Shm.attach(region_path(proc.pid))
            except (OSError, ValueError):
                return None

        shm = _poll(attached, 15, "lb's shared memory", workdir / "lb.log")
        checker = _poll(lambda: next((c for c in psutil.Process(proc.pid).children()
                                      if c.name() == "lb-checker"), None), 15, "lb's checker", workdir / "lb.log")
        # measure in steady state: once every backend has been checked once
        # (the first round is spread over one interval)
        _poll(lambda: shm.checks_total >= N_BACKENDS, 15, "a first round of checks", workdir / "lb.log")
        return _window(checker, seconds, lambda: shm.checks_total)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(10)
        log.close()


def _haproxy(farm: Farm, workdir: Path, seconds: float, haproxy: str) -> dict:
    """HAProxy's checks cannot be counted from the farm: like lb's, they end
    before the backend accepts (see lb/fastpath/checker.pxi, TCP_QUICKACK)."""
    servers = "\n".join(f"  server s{i} 127.0.0.1:{port} check" for i, port in enumerate(farm.ports))
    frontend = harness.PortAllocator().take()
    config = workdir / "haproxy.cfg"
    config.write_text(textwrap.dedent(f"""\
        global
          nbthread 1
          maxconn 4000
        defaults
          mode tcp
          timeout connect 500ms
          timeout client 10s
          timeout server 10s
        backend farm
          default-server inter 1s fall 3 rise 2
        """) + servers + f"\nfrontend f\n  bind 127.0.0.1:{frontend}\n  default_backend farm\n")
    log = open(workdir / "haproxy.log", "w")
    proc = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=log, stderr=log, start_new_session=True)
    try:
        # HAProxy's checks cannot be counted (see above): once its frontend
        # accepts, its first round of checks (spread over one interval) is
        # under way; one interval later it checks in steady state
        _poll(lambda: proc.poll() is None and _accepts(frontend), 15, "haproxy", workdir / "haproxy.log")
        _window(psutil.Process(proc.pid), 1.0)
        return _window(psutil.Process(proc.pid), seconds)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


def measure_local(ctx) -> dict:
    tools = harness.ensure_tools({"haproxy"})
    seconds = max(5.0, ctx.opts.duration_s)
    farm = Farm(N_BACKENDS)
    try:
        with tempfile.TemporaryDirectory(prefix="lb-bench-health-") as tmp:
            harness.log(f"  {NAME}: lb checking {N_BACKENDS} backends for {seconds:.0f}s")
            lb = _lb(farm, Path(tmp), seconds)
            harness.log(f"  {NAME}: haproxy checking {N_BACKENDS} backends for {seconds:.0f}s")
            hap = _haproxy(farm, Path(tmp), seconds, tools["haproxy"])
    finally:
        farm.stop()
    return {
        "backends": N_BACKENDS, "interval_s": 1.0, "window_s": seconds,
        "lb": lb, "haproxy": hap,
        "ratio_cpu_lb_haproxy": lb["cpu_pct"] / hap["cpu_pct"] if hap["cpu_pct"] else None,
        "targets": [{"what": "lb checker CPU, % of one core", "limit": LIMIT_PCT,
                     "got": lb["cpu_pct"], "met": lb["cpu_pct"] < LIMIT_PCT}],
        "targets_met": lb["cpu_pct"] < LIMIT_PCT,
    }


def format_local(r: dict) -> str:
    lines = [f"== {NAME}: {SUMMARY}",
             f"   {'checker':<10} {'cpu % of a core':>16} {'checks/s':>14}"]
    for name in ("lb", "haproxy"):
        rate = r[name]["checks_per_s"]
        lines.append(f"   {name:<10} {r[name]['cpu_pct']:>16.2f} {'n/a' if rate is None else f'{rate:.0f}':>14}")
    if r["ratio_cpu_lb_haproxy"]:
        lines.append(f"   cpu lb/haproxy = {r['ratio_cpu_lb_haproxy']:.2f}x (lower is better)")
    t = r["targets"][0]
    lines.append(f"   target: {t['what']} < {t['limit']}: {t['got']:.2f} -> {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
