"""Rate and concurrency limits ([limits.NAME], docs/gateway.md): exact across
the workers of a node, 429 with Retry-After and the RateLimit fields, tcp
refusals at accept, requests-in-flight counts that a killed worker gives
back, eviction of full buckets only, a full table counted, dry run, and
`lb limits show` / `lb status`."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import free_port, lb_config, wait_for
from http_client import assert_error_page, parse_responses, read_to_eof
from lb import config
from lb._fastpath import Shm, phase_plan
from lb.shm import create_for_config

ROOT = Path(__file__).resolve().parent.parent
SEC = 1_000_000_000


def limits_config(limits_toml: str, listener_extra: str = "", mode: str = "http") -> str:
    return textwrap.dedent(f"""\
        {limits_toml}
        [listeners.w]
        bind = ["127.0.0.1:1"]
        mode = "{mode}"
        pool = "p"
        {listener_extra}

        [pools.p]
        [[pools.p.backends]]
        address = "127.0.0.1:9"
        """)


@pytest.fixture
def region(tmp_path):
    made = []

    def make(limits_toml: str, rows: int = 5) -> Shm:
        cfg = config.loads(limits_config(limits_toml))
        shm = create_for_config(cfg, rows, str(tmp_path / f"limits-{len(made)}.shm"))
        made.append(shm)
        return shm

    yield make
    for shm in made:
        shm.unlink()


# ---- the table and its decisions (the compiled code, with the time given) -----------------

def test_gcra_admits_the_burst_at_once_then_one_per_emission_interval(region):
    shm = region('[limits.l]\nkey = "header:X-Key"\nrate = "10/10s"\nburst = 4\n')
    t0 = 1000 * SEC
    takes = [shm.limit_take(0, b"alice", 0, t0) for _ in range(6)]
    assert [t[0] for t in takes] == ["admitted"] * 5 + ["over rate"]
    # the 6th may come once the bucket drained one emission interval (1 s)
    assert takes[5][2] == 1 * SEC
    assert shm.limit_take(0, b"alice", 0, t0 + SEC - 1)[0] == "over rate"
    assert shm.limit_take(0, b"alice", 0, t0 + SEC)[0] == "admitted"
    # another key has its own bucket
    assert shm.limit_take(0, b"bob", 0, t0)[0] == "admitted"
    counts = shm.limit_counts(0)
    assert (counts["admitted"], counts["refused_rate"]) == (7, 2)


@pytest.mark.parametrize("rows", [2, 4])
def test_a_window_admits_the_rate_plus_the_burst_whatever_row_decides(region, rows):
    shm = region('[limits.l]\nkey = "header:X-Key"\nrate = "100/10s"\nburst = 20\n', rows=2 * rows + 1)
    t0 = 5000 * SEC
    admitted = 0
    # a request every millisecond for one period, from the rows in turn
    for i in range(10_000):
        admitted += shm.limit_take(0, b"k", i % rows, t0 + i * 1_000_000)[0] == "admitted"
    assert admitted == 100 + 20


def _hammer(path: str, row: int, n: int, now: int, out):
    shm = Shm.attach(path)
    got = [shm.limit_take(0, b"shared", row, now) for _ in range(n)]
    out.put((sum(g[0] == "admitted" for g in got), [g[1] for g in got if g[0] == "admitted"]))


@pytest.mark.parametrize("workers", [2, 4])
def test_processes_deciding_at_once_admit_exactly_the_burst(region, workers):
    """The decisions of several processes at the same instant: CAS on one TAT
    (a rate) and the lock of one entry (in flight) admit exactly what one
    process would."""
    ctx = multiprocessing.get_context("fork")
    for toml, expected in (('rate = "1/1h"\nburst = 49\n', 50), ('concurrent = 7\n', 7)):
        shm = region('[limits.l]\nkey = "header:X-Key"\n' + toml, rows=2 * workers + 1)
        out = ctx.Queue()
        procs = [ctx.Process(target=_hammer, args=(shm.path, row, 3000, 77 * SEC, out)) for row in range(workers)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        assert sum(r[0] for r in results) == expected
        assert shm.limit_counts(0)["admitted"] == expected


def test_in_flight_counts_go_back_and_a_dead_rows_counts_with_it(region):
    shm = region('[limits.l]\nkey = "header:X-Key"\nconcurrent = 2\n')
    now = 10 * SEC
    a = shm.limit_take(0, b"k", 0, now)
    b = shm.limit_take(0, b"k", 1, now)
    assert a[0] == b[0] == "admitted" and a[1] == b[1] >= 0
    assert shm.limit_take(0, b"k", 2, now)[0] == "over concurrent"
    shm.limit_give(0, a[1], 0)
    assert shm.limit_take(0, b"k", 2, now)[0] == "admitted"
    # row 1's worker is killed: what it held goes back when it is reaped
    assert shm.limits_release_row(1) == 1
    assert shm.limit_take(0, b"k", 3, now)[0] == "admitted"
    assert shm.limit_take(0, b"k", 3, now)[0] == "over concurrent"
    assert shm.limit_counts(0)["refused_concurrent"] == 2


def test_eviction_takes_only_keys_whose_bucket_is_full_again(region):
    """64 slots, a key lives within 32 of its home slot: keys come until one
    finds no slot while every key counts (the table is full: counted, and
    on_full decides). Once buckets are full again, it takes a slot."""
    for on_full, decision in (("admit", "admitted"), ("refuse", "table full")):
        shm = region(f'[limits.l]\nkey = "header:X-Key"\nrate = "1/10s"\ncapacity = 64\non_full = "{on_full}"\n')
        t0 = 100 * SEC
        keys = []
        while shm.limit_counts(0)["table_full"] == 0:
            key = b"k%d" % len(keys)
            got = shm.limit_take(0, key, 0, t0)[0]
            keys.append(key)
            assert got == "admitted" or shm.limit_counts(0)["table_full"] == 1
        new = keys.pop()
        assert got == decision and len(keys) <= 64
        assert shm.limit_take(0, new, 0, t0 + 5 * SEC)[0] == decision
        counts = shm.limit_counts(0)
        assert (counts["table_full"], counts["evicted"]) == (2, 0)
        # every key still counts: none of them came back with a fresh bucket
        assert all(shm.limit_take(0, k, 0, t0 + 5 * SEC)[0] == "over rate" for k in keys)
        # 10 s later the buckets are full again: the new key evicts one
        assert shm.limit_take(0, new, 0, t0 + 10 * SEC)[0] == "admitted"
        assert shm.limit_counts(0)["evicted"] == 1
        assert shm.limit_take(0, new, 0, t0 + 10 * SEC)[0] == "over rate"


def test_a_key_with_requests_in_flight_is_never_evicted(region):
    shm = region('[limits.l]\nkey = "header:X-Key"\nconcurrent = 1\ncapacity = 64\n')
    held = {}
    while shm.limit_counts(0)["table_full"] == 0:
        key = b"k%d" % len(held)
        held[key] = shm.limit_take(0, key, 0, SEC)
    new, got = held.popitem()
    assert got == ("admitted", -1, 0, 0)         # no slot, on_full = admit: admitted, nothing held
    assert shm.limit_take(0, new, 0, 2 * SEC)[1] == -1
    assert all(h[0] == "admitted" and h[1] >= 0 for h in held.values())
    # a key with nothing in flight may go: the new key then has a slot, and counts
    for key, h in held.items():
        shm.limit_give(0, h[1], 0)
    first = shm.limit_take(0, new, 0, 3 * SEC)
    assert first[0] == "admitted" and first[1] >= 0
    assert shm.limit_take(0, new, 0, 3 * SEC)[0] == "over concurrent"
    assert shm.limit_counts(0)["evicted"] == 1


def test_keys_show_by_current_rate(region):
    shm = region('[limits.l]\nkey = "header:X-Key"\nrate = "100/10s"\nburst = 100\n')
    now = 1000 * SEC
    for _ in range(30):
        shm.limit_take(0, b"busy", 0, now)
    shm.limit_take(0, b"quiet", 0, now)
    keys = sorted(shm.limit_keys(0, now), key=lambda k: -k[2])
    assert [(k[1], k[2]) for k in keys] == [(b"busy", 30), (b"quiet", 1)]


def test_scanning_a_big_table_costs_the_memory_of_its_keys_only(region):
    """A table for a million keys is 64 MiB of tmpfs that holds no page until a
    key comes; `lb limits show`, a reaped worker's release and a reload's carry
    scan it without making tmpfs fill it in."""
    shm = region('[limits.l]\nkey = "header:X-Key"\nrate = "1/h"\nconcurrent = 5\ncapacity = 1048576\n')
    shm.limit_take(0, b"k", 1, SEC)
    assert [k[1] for k in shm.limit_keys(0, SEC)] == [b"k"]
    assert shm.limits_release_row(1) == 1
    assert os.stat(shm.path).st_blocks * 512 < 8 << 20


# ---- config -------------------------------------------------------------------------------

@pytest.mark.parametrize("limit, listener, message", [
    ('rate = "100/10s"\nkey = "jwt:"', "", "limits.l.key: invalid key 'jwt:'"),
    ('rate = "100/10s"\nkey = "jwt:a b"', "", "limits.l.key: invalid claim name 'a b'"),
    ('rate = "100/10s"\nkey = "header:"', "", "limits.l.key: invalid key 'header:'"),
    ('rate = "100 per 10s"', "", "limits.l.rate: invalid rate '100 per 10s'"),
    ('rate = "0/10s"', "", "limits.l.rate: rate '0/10s': the count must be"),
    ('burst = 3', "", "limits.l.burst: needs a rate"),
    ('key = "source_ip"', "", "limits.l: a limit needs a rate, concurrent, or both"),
    ('rate = "1/s"\ncapacity = 1000', "", "limits.l.capacity: 1000 is not a power of two"),
    ('rate = "1/s"\nkey = "cookie:sid"\nipv4_prefix = 24', "", 'limits.l.ipv4_prefix: needs key = "source_ip"'),
    ('rate = "1/s"\non_full = "drop"', "", "limits.l.on_full"),
    ('rate = "1/s"', 'limits = ["m"]', "listeners.w.limits[0]: unknown limit 'm'"),
    ('rate = "1/s"\nkey = "header:X-User"', 'limits = ["l"]\nmode = "tcp"',
     "listeners.w.limits[0]: limit 'l' is keyed by 'header:X-User': a tcp listener has only"),
])
def test_bad_limits_are_named_by_key_path(limit, listener, message):
    text = limits_config(f"[limits.l]\n{limit}\n", listener).replace('mode = "http"\n', "") \
        if "mode" in listener else limits_config(f"[limits.l]\n{limit}\n", listener)
    with pytest.raises(config.ConfigError) as e:
        config.loads(text)
    assert message in str(e.value)


def test_rates_and_the_steps_a_listener_runs():
    cfg = config.loads(limits_config(
        '[limits.a]\nrate = "20/s"\nburst = 5\nipv4_prefix = 24\n[limits.b]\nkey = "cookie:sid"\nrate = "6/m"\n'
        '[limits.c]\nconcurrent = 3\n', 'limits = ["a"]\n\n  [[listeners.w.routes]]\n  path_prefix = "/api/"\n'
        '  pool = "p"\n  limits = ["b", "c"]\n'))
    a, b = cfg.limits["a"], cfg.limits["b"]
    assert (a.rate, a.period, a.burst, a.ipv4_prefix, a.period_ns // a.rate) == (20, 1.0, 5, 24, 50_000_000)
    assert (b.rate, b.period, b.key) == (6, 60.0, "cookie:sid")
    assert cfg.listeners["w"].limits == ("a",) and cfg.listeners["w"].routes[0].limits == ("b", "c")
    plan = phase_plan(cfg.listeners["w"])
    assert plan["request"] == ["route", "limits"] and plan["end"] == ["metrics", "limits_release"] and plan["accept"] == []
    tcp = config.loads(limits_config('[limits.a]\nconcurrent = 2\n', 'limits = ["a"]', mode="tcp"))
    assert phase_plan(tcp.listeners["w"]) == {"accept": ["limits_accept"], "request": [], "response": [],
                                              "end": ["metrics", "limits_release"]}


# ---- in a running lb ------------------------------------------------------------------------

def lb_cli(sock, *args) -> str:
    proc = subprocess.run([sys.executable, "-m", "lb", "--socket", str(sock), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, f"lb {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def start(run_lb, tmp_path, upstream, limits_toml, listener_extra, *, workers=1, mode="http"):
    sock = tmp_path / "admin.sock"
    port = free_port()
    extra = f'admin_socket = "{sock}"\nstate_file = "{tmp_path / "state.json"}"'
    lb = run_lb(lb_config(port, [upstream], global_extra=extra, listener_extra=listener_extra, mode=mode,
                          workers=workers) + "\n" + limits_toml)
    wait_for(sock.exists, 10, "the admin socket")
    return lb, sock, port


def get(port: int, headers: str = "", path: str = "/"):
    """One request on its own connection: (status, headers, monotonic time sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        sent = time.monotonic()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        r = parse_responses(read_to_eof(s))[0]
    return r.status, r.headers, sent


class Hammer:
    """Threads that send requests as fast as they can, each on keep-alive
    connections (a 429 closes one: they open the next), until a deadline;
    a response counts by the time its request was sent."""

    def __init__(self, port: int, headers: str, threads: int):
        self.port, self.headers, self.threads = port, headers, threads
        self.lock = threading.Lock()
        self.statuses: list[tuple[float, int]] = []

    def _run(self, deadline: float):
        request = f"GET / HTTP/1.1\r\nHost: x\r\n{self.headers}\r\n".encode()
        s = f = None
        while time.monotonic() < deadline:
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    f = s.makefile("rb")
                sent = time.monotonic()
                s.sendall(request)
                status = int(f.readline().split()[1])
                length = 0
                while (line := f.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                f.read(length)
            except (OSError, IndexError, ValueError):
                s = None
                continue
            with self.lock:
                self.statuses.append((sent, status))
            if status != 200:
                s.close()
                s = None
        if s is not None:
            s.close()

    def run(self, seconds: float):
        deadline = time.monotonic() + seconds
        ts = [threading.Thread(target=self._run, args=(deadline,)) for _ in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return deadline


@pytest.mark.parametrize("workers", [2, 4])
def test_many_connections_through_several_workers_get_the_rate_plus_the_burst(origins, run_lb, tmp_path, workers):
    """rate 5/5s, burst 5: T = 1 s. The first request starts the window; for
    4.5 s after it, 16 connections at a time send all they can through every
    worker: the burst and the first request (6) and one a second (4) pass,
    10 in all, the rate plus the burst, whichever worker took each."""
    origin = origins()
    lb, sock, port = start(run_lb, tmp_path, (origin.address, "o", 100),
                           '[limits.per_user]\nkey = "header:X-User"\nrate = "5/5s"\nburst = 5\n',
                           'limits = ["per_user"]', workers=workers)
    status, _, t0 = get(port, "X-User: alice\r\n")
    assert status == 200
    hammer = Hammer(port, "X-User: alice\r\n", threads=16)
    hammer.run(t0 + 4.5 - time.monotonic())
    ok = sum(1 for _, st in hammer.statuses if st == 200)
    refused = sum(1 for _, st in hammer.statuses if st == 429)
    assert refused > 100 and ok + refused == len(hammer.statuses)
    assert abs((1 + ok) - 10) <= 1, f"{1 + ok} admitted in the window, not 10 (+-1)"
    counts = lb.shm.limit_counts(0)
    assert counts["admitted"] == 1 + ok and counts["refused_rate"] == refused
    seen: list = []

    def reported():
        seen.extend(origin.requests())
        return len([line for line in seen if line.startswith("request")]) == 1 + ok
    # the origin's reports come through a pipe, after its answers may have
    wait_for(reported, 10, f"the origin to report {1 + ok} requests")
    # the workers shared the work: more than one of them decided
    assert sum(1 for w in lb.worker_stats() if w["http_requests"]) >= 2


def test_a_refusal_says_when_to_come_back(origins, run_lb, tmp_path):
    origin = origins()
    # the listener has no limit: a route has it
    lb, sock, port = start(run_lb, tmp_path, (origin.address, "o", 100),
                           '[limits.slow]\nkey = "header:X-User"\nrate = "1/10s"\n',
                           '\n  [[listeners.t.routes]]\n  path_prefix = "/api/"\n  pool = "p"\n  limits = ["slow"]\n')
    assert get(port, "X-User: a\r\n", "/free")[0] == 200
    assert get(port, "X-User: a\r\n", "/free")[0] == 200
    first = get(port, "X-User: a\r\n", "/api/x")
    assert first[0] == 200
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-User: a\r\n\r\n")
        raw = read_to_eof(s)
        received = time.monotonic()
    r = parse_responses(raw)[0]
    assert_error_page(r, 429)
    # come back when the next request conforms: 10 s after the first one,
    # rounded up to whole seconds
    elapsed = received - first[2]
    retry = int(r.headers["retry-after"])
    assert math.ceil(10 - elapsed) <= retry <= 10
    assert r.headers["ratelimit-policy"] == '"slow";q=1;w=10'
    assert r.headers["ratelimit"] == f'"slow";r=0;t={retry}'
    # another key, and a request without the key, go on
    assert get(port, "X-User: b\r\n", "/api/x")[0] == 200
    assert get(port, "", "/api/x")[0] == 200
    assert lb.shm.limit_counts(0)["unkeyed"] == 1


def _open_held(port: int, n: int) -> list:
    """n connections that each hold a request in flight: a head announcing a
    body that does not come. Returns the sockets."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /held HTTP/1.1\r\nHost: x\r\nX-User: alice\r\nContent-Length: 5\r\n\r\n")
        out.append(s)
    return out


def test_requests_in_flight_hold_under_concurrent_load(origins, run_lb, tmp_path):
    origin = origins()
    lb, sock, port = start(run_lb, tmp_path, (origin.address, "o", 100),
                           '[limits.inflight]\nkey = "header:X-User"\nconcurrent = 3\n', 'limits = ["inflight"]',
                           workers=4)
    socks = []
    lock = threading.Lock()

    def one():
        s = _open_held(port, 1)[0]
        with lock:
            socks.append(s)

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = wait_for(lambda: (c := lb.shm.limit_counts(0))["admitted"] + c["refused_concurrent"] == 24 and c,
                      10, "24 decisions")
    assert (counts["admitted"], counts["refused_concurrent"]) == (3, 21)
    held = []
    for s in socks:
        s.settimeout(0.5)
        try:
            data = s.recv(65536)
        except socket.timeout:
            held.append(s)      # no answer: in flight, waiting for its body
            continue
        assert data.startswith(b"HTTP/1.1 429 ") and b"retry-after" not in data.lower()
    assert len(held) == 3
    # one request ends: its count goes back, and the next one is admitted
    held[0].sendall(b"hello")
    held[0].settimeout(10)
    assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
    again = _open_held(port, 1)[0]
    wait_for(lambda: lb.shm.limit_counts(0)["admitted"] == 4, 10, "the next request admitted")
    for s in socks + [again]:
        s.close()


def tcp_hello(port: int) -> str | None:
    """The backend's hello through lb, None when lb closed the connection at accept."""
    s = socket.socket()
    s.settimeout(10)
    try:
        # a refusal is a reset; on loopback it may come before connect returns
        s.connect(("127.0.0.1", port))
        line = s.makefile("rb").readline().decode().strip()
    except (ConnectionResetError, BrokenPipeError):
        line = ""
    if not line:
        s.close()
        return None
    return s


def test_tcp_connections_are_refused_at_accept_and_a_killed_workers_count_goes_back(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    lb, sock, port = start(run_lb, tmp_path, b1,
                           '[limits.conns]\nconcurrent = 2\nrate = "100/s"\nburst = 100\n', 'limits = ["conns"]',
                           mode="tcp")
    first, second = tcp_hello(port), tcp_hello(port)
    assert first and second
    assert tcp_hello(port) is None
    assert lb.backend_stats(0)["total"] == 2        # the refused one never reached the backend
    first.close()
    third = wait_for(lambda: tcp_hello(port), 10, "a connection admitted once one closed")
    # kill -9 the worker: the two connections it held die with it, and their
    # counts go back once the supervisor reaps it
    pid = lb.worker_pid(0)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: lb.worker_pid(0) not in (0, pid) and lb.all_workers_running(), 10, "a new worker")
    a = wait_for(lambda: tcp_hello(port), 10, "a connection after the kill")
    b = tcp_hello(port)
    assert b and tcp_hello(port) is None
    for s in (second, third, a, b):
        s.close()
    counts = lb.shm.limit_counts(0)
    assert counts["refused_concurrent"] >= 2


def test_an_ipv6_client_counts_by_its_64(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    sock = tmp_path / "admin.sock"
    port = free_port("::1")
    extra = f'admin_socket = "{sock}"\nstate_file = "{tmp_path / "state.json"}"'
    run_lb(lb_config(port, [b1], global_extra=extra, listener_extra='limits = ["net"]', bind_host="::1")
           + '\n[limits.net]\nrate = "1/1h"\nipv6_prefix = 64\n')
    wait_for(sock.exists, 10, "the admin socket")

    def hello():
        s = socket.socket(socket.AF_INET6)
        s.settimeout(10)
        try:
            s.connect(("::1", port))
            return s.makefile("rb").readline().strip() or None
        except (ConnectionResetError, BrokenPipeError):
            return None
        finally:
            s.close()

    assert hello() == b"b1"
    assert hello() is None
    top = json.loads(lb_cli(sock, "limits", "show", "net", "--json"))["limits"][0]["top"]
    assert [(k["key"], k["refused"]) for k in top] == [("::/64", 1)]


def test_tcp_rate_closes_at_accept(backends, run_lb, tmp_path):
    b1 = backends("b1", hello=True)
    lb, sock, port = start(run_lb, tmp_path, b1, '[limits.r]\nrate = "2/1h"\nburst = 1\n', 'limits = ["r"]',
                           mode="tcp", workers=2)
    conns = [tcp_hello(port) for _ in range(5)]
    assert [bool(c) for c in conns] == [True, True, False, False, False]
    for c in conns:
        if c:
            c.close()
    assert lb.shm.limit_counts(0)["refused_rate"] == 3


def test_dry_run_counts_and_refuses_nothing_and_the_cli_shows_it(origins, run_lb, tmp_path):
    origin = origins()
    lb, sock, port = start(run_lb, tmp_path, (origin.address, "o", 100),
                           '[limits.trial]\nkey = "header:X-User"\nrate = "1/1h"\ndry_run = true\n'
                           '[limits.by_ip]\nrate = "100/1h"\nburst = 100\nipv4_prefix = 24\n',
                           'limits = ["trial", "by_ip"]')
    for user in ["alice"] * 5 + ["bob"]:
        assert get(port, f"X-User: {user}\r\n")[0] == 200
    counts = lb.shm.limit_counts(0)
    # admitted: within the rate; the would-be refusals went through, counted twice
    assert (counts["admitted"], counts["refused_rate"], counts["dry_run"]) == (2, 4, 4)
    status = json.loads(lb_cli(sock, "status", "--json"))
    trial = {lim["name"]: lim for lim in status["limits"]}["trial"]
    assert trial["refused"] == 4 and trial["used_by"] == ["listener t"]
    text = lb_cli(sock, "status")
    assert "trial" in text and "REFUSED RATE" in text
    shown = json.loads(lb_cli(sock, "limits", "show", "trial", "--json"))["limits"][0]
    assert [(k["key"], k["refused"]) for k in shown["top"]] == [("alice", 4), ("bob", 0)]
    assert shown["top"][0]["rate"] == 5
    by_ip = json.loads(lb_cli(sock, "limits", "show", "by_ip", "--json"))["limits"][0]["top"]
    assert [(k["key"], k["rate"], k["remaining"]) for k in by_ip] == [("127.0.0.0/24", 6, 95)]
    text = lb_cli(sock, "limits", "show", "trial")
    assert "alice" in text and "REQUESTS/1h" in text


def test_a_reload_keeps_the_buckets(origins, run_lb, tmp_path):
    origin = origins()
    lb, sock, port = start(run_lb, tmp_path, (origin.address, "o", 100),
                           '[limits.l]\nkey = "header:X-User"\nrate = "1/1h"\n', 'limits = ["l"]', workers=2)
    assert get(port, "X-User: a\r\n")[0] == 200
    assert get(port, "X-User: a\r\n")[0] == 429
    lb_cli(sock, "reload")
    assert get(port, "X-User: a\r\n")[0] == 429        # not a fresh bucket after a reload
    assert get(port, "X-User: b\r\n")[0] == 200
    status = json.loads(lb_cli(sock, "status", "--json"))
    assert status["generation"] == 2
    assert status["limits"][0]["counts"]["refused_rate"] == 2
