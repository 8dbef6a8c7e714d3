"""Progressive rollouts (docs/rollouts.md) with real origins and short
intervals: a healthy canary reaches 100 % through every step, a canary that
fails 5 % of its requests is rolled back within its first step and the log
says at what error rate, a slow one is stopped by the latency bound; and a
rollout outlives a reload and a restart, and pauses, resumes and aborts."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port, global_toml, wait_for

ROOT = Path(__file__).resolve().parent.parent


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.n += 1
            n = srv.n
        if srv.delay:
            time.sleep(srv.delay)
        status = 500 if srv.error_every and n % srv.error_every == 0 else 200
        body = srv.label.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def version_string(self):
        return self.server.label

    def log_message(self, *args):
        pass


class Origin(ThreadingHTTPServer):
    """An origin in a thread of the test: every error_every-th request
    answers 500; each answer waits delay seconds."""

    daemon_threads = True

    def __init__(self, label: str, error_every: int = 0, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.label, self.error_every, self.delay = label, error_every, delay
        self.lock = threading.Lock()
        self.n = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.shutdown()
        self.server_close()


class Load:
    """Cookie-less requests, pipelined in batches on keep-alive connections,
    from a few threads, until stopped: each request draws its own bucket, so
    the canary gets its weight's share."""

    def __init__(self, port: int, threads: int = 3, batch: int = 40):
        self.port, self.batch = port, batch
        self.stop_event = threading.Event()
        self.answered = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * (self.batch - 1) + \
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        while not self.stop_event.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(data)
                    raw = bytearray()
                    while chunk := s.recv(65536):
                        raw += chunk
                self.answered += raw.count(b"HTTP/1.1 ")
            except OSError:
                time.sleep(0.05)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(15)


def lb_cli(sock, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", "--socket", str(sock), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def lb_json(sock, *args) -> dict:
    proc = lb_cli(sock, *args, "--json")
    assert proc.returncode == 0, f"lb {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
    return json.loads(proc.stdout)


def rollout_config(port: int, stable: Origin, canary: Origin, run_dir: str) -> str:
    return global_toml(run_dir=run_dir) + textwrap.dedent(f"""
        [listeners.web]
        bind = ["127.0.0.1:{port}"]

          [[listeners.web.routes]]
          name = "app"
          path_prefix = "/"
          split = [{{ pool = "stable", weight = 100 }}, {{ pool = "canary", weight = 0 }}]

        [pools.stable]
        [[pools.stable.backends]]
        address = "{stable.address}"
        [pools.canary]
        [[pools.canary.backends]]
        address = "{canary.address}"
        """)


@pytest.fixture
def served(run_lb, tmp_path):
    """served(canary_error_every=0, canary_delay=0.0): lb in front of a stable
    and a canary origin, under load; (lb, admin socket)."""
    started: list = []

    def start(error_every: int = 0, delay: float = 0.0):
        stable, canary = Origin("stable"), Origin("canary", error_every, delay)
        started.extend([stable, canary])
        port = free_port()
        lb = run_lb(rollout_config(port, stable, canary, str(tmp_path)))
        started.insert(0, Load(port))
        return lb, f"{tmp_path}/admin.sock"

    yield start
    for thing in started:
        thing.stop() if isinstance(thing, Load) else thing.close()


def rollout_of(sock) -> dict:
    return lb_json(sock, "rollout", "status", "app")["rollouts"][0]


def weights(sock) -> list[int]:
    return [v["weight"] for v in lb_json(sock, "split", "show", "app")["splits"][0]["variants"]]


START = ["rollout", "start", "app", "--to", "canary", "--interval", "1s", "--min-requests", "20"]


def test_a_healthy_canary_reaches_100_through_every_step(served):
    lb, sock = served()
    lb_json(sock, *START, "--steps", "5,10,25,50,100", "--max-error-rate", "1%", "--max-p99", "2s")
    r = wait_for(lambda: (r := rollout_of(sock))["state"] != "running" and r, 60, "the rollout to end")
    assert r["state"] == "succeeded", r["decisions"]
    assert [d["verdict"] for d in r["decisions"]] == ["started", "promoted", "promoted", "promoted", "promoted",
                                                      "succeeded"]
    assert [d["weight"] for d in r["decisions"]] == [5, 10, 25, 50, 100, 100]
    for d in r["decisions"][1:]:
        assert d["canary"]["requests"] >= 20 and d["canary"]["errors"] == 0     # judged on enough requests
    assert weights(sock) == [0, 100]
    assert "rollout app: succeeded" in lb.log()
    status = lb_json(sock, "status")
    assert [(r["split"], r["state"]) for r in status["rollouts"]] == [("app", "succeeded")]
    assert "canary succeeded" in lb_cli(sock, "status").stdout


def test_a_canary_failing_5_percent_is_rolled_back_in_its_first_step(served):
    lb, sock = served(error_every=20)
    lb_json(sock, *START, "--steps", "5,10,25,50,100", "--max-error-rate", "1%")
    r = wait_for(lambda: (r := rollout_of(sock))["state"] != "running" and r, 60, "the rollback")
    assert r["state"] == "rolled_back"
    last = r["decisions"][-1]
    assert last["verdict"] == "rolled_back" and last["step"] == 0 and last["weight"] == 0   # not promoted first
    assert weights(sock) == [100, 0]
    line = next(line for line in lb.log().splitlines() if "rolled back to 0%" in line)
    rate = float(re.search(r"error rate ([0-9.]+)% above the bound 1.00%", line).group(1))
    assert 2 <= rate <= 15, line
    assert last["canary"]["errors"] >= 1 and last["canary"]["requests"] >= 20


def test_a_slow_canary_is_stopped_by_the_latency_bound(served):
    lb, sock = served(delay=0.3)
    lb_json(sock, *START, "--steps", "25,50,100", "--max-error-rate", "1%", "--max-p99", "100ms")
    r = wait_for(lambda: (r := rollout_of(sock))["state"] != "running" and r, 60, "the rollback")
    assert r["state"] == "rolled_back"
    assert "p99" in r["decisions"][-1]["text"] and "above the bound 100.0ms" in r["decisions"][-1]["text"]
    assert r["decisions"][-1]["canary"]["p99_ms"] > 100
    assert weights(sock) == [100, 0]


def test_a_rollout_outlives_a_reload_and_a_restart_and_pauses_resumes_aborts(served, run_lb, tmp_path):
    lb, sock = served()
    # a step that is never over: the rollout stays at its first step
    lb_json(sock, *START[:5], "--interval", "1h", "--min-requests", "20", "--steps", "10,100")
    assert weights(sock) == [90, 10]
    assert lb_cli(sock, "reload").returncode == 0
    assert rollout_of(sock)["state"] == "running" and weights(sock) == [90, 10]
    assert lb_cli(sock, "split", "set", "app", "canary=50").returncode == 1   # the rollout owns the split
    lb.stop()
    run_lb(lb.config_path.read_text())
    r = rollout_of(sock)
    assert (r["state"], r["step"], r["weight"]) == ("running", 0, 10) and weights(sock) == [90, 10]
    assert lb_json(sock, "rollout", "pause", "app")["state"] == "paused"
    assert lb_json(sock, "rollout", "resume", "app")["state"] == "running"
    assert lb_json(sock, "rollout", "abort", "app")["state"] == "aborted"
    assert weights(sock) == [100, 0]
    proc = lb_cli(sock, "rollout", "abort", "app")
    assert proc.returncode == 1 and "aborted already" in proc.stderr
    proc = lb_cli(sock, "rollout", "start", "app", "--to", "nosuch")
    assert proc.returncode == 2 and "not a variant" in proc.stderr


# ---- the judgement, on figures made up ---------------------------------------------------------

def _fig(requests, errors, p99_ms):
    return {"requests": requests, "errors": errors, "error_rate": errors / requests if requests else None,
            "p99_ms": p99_ms}


RULES = {"max_error_rate": 0.01, "max_p99_ms": 500.0, "min_requests": 200}


@pytest.mark.parametrize("canary, baseline, words", [
    (_fig(1000, 5, 20.0), _fig(9000, 40, 18.0), ""),                          # as good as the baseline
    (_fig(1000, 20, 20.0), _fig(9000, 0, 18.0), "above the bound 1.00%"),
    (_fig(1000, 0, 600.0), _fig(9000, 0, 18.0), "p99 600.0ms above the bound 500.0ms"),
    (_fig(1000, 8, 20.0), _fig(9000, 9, 18.0), "worse than the baseline's 0.10%"),
    (_fig(1000, 0, 90.0), _fig(9000, 0, 20.0), "p99 90.0ms worse than the baseline's 20.0ms"),
    (_fig(50, 0, 90.0), _fig(9000, 0, 20.0), ""),                             # the p99 of 50 is their slowest
    (_fig(1000, 8, 90.0), _fig(100, 0, 20.0), ""),                            # a baseline too small to hold against
])
def test_the_judgement_holds_the_canary_to_its_bounds_and_to_the_baseline(canary, baseline, words):
    from lb.control.rollout import judge

    why = judge(RULES, canary, baseline)
    assert (why == "") if not words else (words in why), why
