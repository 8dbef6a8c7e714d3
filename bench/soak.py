"""python -m bench soak --minutes N [--json] [--keep-workdir]

Mixed traffic against lb for N minutes, with backends that flap, reloads and
worker kills, then three verdicts (bench/README.md, "soak"):

- memory and file descriptors of lb's whole process tree are flat: the
  median of a window after the warm-up against the median of the last window;
- every request is accounted for: the client's count of requests that reached
  lb equals lb's own counters (the metrics endpoint), class by class;
- no unexpected error: a failure is allowed only where an event explains it
  (a request in flight on a worker that was killed, or on a backend that was
  killed), and each allowed one is classified as such.

lb runs as `python -m lb run` from the repository root (never imported here),
with two workers in front of three origins (bench/soak_origin.py, one process
each so that one can be killed and started again).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pwd
import grp
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from bench import harness
from bench.soak_origin import SMALL, digest, pattern

BIG = 1 << 20                    # 1 MiB responses, checked by digest
SLOW_SIZE = 128 << 10            # what a slow reader reads ...
SLOW_READ = 2048                 # ... this much at a time ...
SLOW_READ_EVERY = 0.25           # ... this often: 8 KiB/s, 16 s a response
SLOW_RCVBUF = 8192               # and a small receive buffer, so lb has to wait for it
UPLOAD = 64 << 10                # a slow upload: this body ...
UPLOAD_PIECE = 2048              # ... in pieces of this size ...
UPLOAD_EVERY = 0.05              # ... this often: 40 KiB/s
ABORT_CL = 256 << 10             # an aborted upload announces this ...
ABORT_SENT = 16 << 10            # ... sends this much, and closes
IO_TIMEOUT = 60.0
BACKENDS = 3
WORKERS = 2
FLAT_LIMIT = 0.05                # RSS and fds: the last window's median at most 5% over the first's
SAMPLE_EVERY = 1.0

DIGEST_BIG = digest(pattern(BIG))
DIGEST_SLOW = digest(pattern(SLOW_SIZE))
UPLOAD_BODY = pattern(UPLOAD)
UPLOAD_ANSWER = f"{UPLOAD} {digest(UPLOAD_BODY)}".encode()


def log(message: str) -> None:
    harness.log(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the schedule ---------------------------------------------------------------------------

@dataclasses.dataclass
class Schedule:
    """Seconds from the start. The issue's intervals (reload 30 s, kill 60 s,
    flap 20 s) hold from 3 minutes on; a shorter run divides itself so that it
    still sees at least 2 reloads, 1 kill and 2 flaps."""
    duration: float
    reload_every: float
    kill_every: float
    flap_every: float
    flap_down: float                 # how long a flapped backend stays dead
    warmup: float                    # samples before this are not compared
    window: float                    # the compared windows' length

    @classmethod
    def for_minutes(cls, minutes: float) -> "Schedule":
        t = minutes * 60.0
        flap_every = min(20.0, t / 4)
        return cls(duration=t, reload_every=min(30.0, t / 3), kill_every=min(60.0, t / 2),
                   flap_every=flap_every, flap_down=min(5.0, flap_every / 3),
                   warmup=min(60.0, t * 0.2), window=min(60.0, t * 0.25))

    def events(self) -> list[tuple[float, str]]:
        """(time, kind) in order; none in the last 5 s, so that the last ones settle."""
        out = []
        for every, kind in ((self.reload_every, "reload"), (self.kill_every, "kill"), (self.flap_every, "flap")):
            k = 1
            while k * every < self.duration - 5:
                out.append((k * every, kind))
                k += 1
        return sorted(out)


# ---- what the clients saw -------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    kind: str
    t_start: float
    t_end: float = 0.0
    status: int | None = None        # None: no status line came
    error: str | None = None         # reset, eof, timeout, truncated, corrupt
    got: int = 0                     # response bytes received (head included)
    reused: bool = False             # on a keep-alive connection that served before
    idle_since: float = 0.0          # reused: when its previous response ended
    klass: str = ""                  # after classify(): ok, killed, flap, stale_keepalive, unexpected
    detail: str = ""


class ClientError(Exception):
    def __init__(self, error: str, detail: str = ""):
        super().__init__(error, detail)
        self.error = error
        self.detail = detail


class Conn:
    """One client connection; requests on it in turn (keep-alive)."""

    def __init__(self, addr, rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(addr)
        self.buf = bytearray()
        self.served = 0
        self.last_done = time.monotonic()

    def close(self):
        self.sock.close()

    def _fill(self, out: Outcome, want: int = 65536) -> None:
        try:
            data = self.sock.recv(want)
        except socket.timeout:
            raise ClientError("timeout") from None
        except ConnectionResetError:
            raise ClientError("reset") from None
        except OSError as exc:
            raise ClientError("reset", str(exc)) from None
        if not data:
            raise ClientError("eof")
        out.got += len(data)
        self.buf += data

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ClientError("timeout") from None
        except OSError as exc:       # EPIPE, ECONNRESET: the other end is gone
            raise ClientError("reset", str(exc)) from None

    def response(self, out: Outcome, slow: bool = False) -> bytes:
        """Read one response (a Content-Length body); out.status set once its head came."""
        while b"\r\n\r\n" not in self.buf:
            self._fill(out)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        lines = head.split(b"\r\n")
        out.status = int(lines[0].split(b" ")[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        try:
            while len(self.buf) < length:
                if slow:
                    time.sleep(SLOW_READ_EVERY)
                self._fill(out, SLOW_READ if slow else 65536)
        except ClientError as exc:
            raise ClientError("truncated" if exc.error in ("eof", "reset") else exc.error,
                              f"{len(self.buf)} of {length} body bytes") from None
        body = bytes(self.buf[:length])
        del self.buf[:length]
        self.served += 1
        self.last_done = time.monotonic()
        if close:
            self.served = -1         # not to be used again
        return body


def get(path: str, close: bool = False) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: soak\r\n" + ("Connection: close\r\n" if close else "") + "\r\n").encode()


class Traffic:
    """The client threads. Each loops over one kind of request until stop,
    recording an Outcome per request; none starts a request after stop."""

    def __init__(self, addr):
        self.addr = addr
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.threads: list[threading.Thread] = []

    def record(self, out: Outcome) -> None:
        out.t_end = time.monotonic()
        with self.lock:
            self.outcomes.append(out)

    def start(self) -> None:
        plan = [("keepalive", self.keepalive, 2), ("newconn", self.newconn, 1), ("big", self.big, 1),
                ("slow_read", self.slow_read, 2), ("slow_upload", self.slow_upload, 1),
                ("aborted_upload", self.aborted_upload, 1)]
        for kind, fn, n in plan:
            for i in range(n):
                t = threading.Thread(target=self._loop, args=(kind, fn), name=f"{kind}-{i}", daemon=True)
                t.start()
                self.threads.append(t)

    def join(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def _loop(self, kind, fn) -> None:
        state = {"conn": None}
        while not self.stop.is_set():
            try:
                fn(kind, state)
            except Exception as exc:   # a bug in the client: counted, never hidden
                self.record(Outcome(kind, time.monotonic(), error="client_bug", detail=repr(exc)))
                time.sleep(0.1)
        if state["conn"] is not None:
            state["conn"].close()

    def _exchange(self, kind: str, state: dict, request: bytes, check, slow: bool = False,
                  keep: bool = True, body_pieces=None) -> None:
        """One request on the thread's keep-alive connection (a new one when
        there is none, or when keep is False), with a retry on a new
        connection when a reused one turns out closed before any byte of the
        answer: what every HTTP client does with a keep-alive connection."""
        for _attempt in range(2):
            conn = state["conn"]
            out = Outcome(kind, time.monotonic())
            try:
                if conn is None:
                    conn = Conn(self.addr, SLOW_RCVBUF if slow else None)
                    if keep:
                        state["conn"] = conn
                else:
                    out.reused, out.idle_since = True, conn.last_done
                conn.send(request)
                for piece in body_pieces or ():
                    time.sleep(UPLOAD_EVERY)
                    conn.send(piece)
                body = conn.response(out, slow)
                problem = check(body)
                if out.status != 200:
                    out.error, out.detail = "status", f"HTTP {out.status}"
                elif problem:
                    out.error, out.detail = "corrupt", problem
                if out.error or conn.served < 0 or not keep:
                    conn.close()
                    state["conn"] = None
                self.record(out)
                return
            except (ClientError, OSError) as exc:
                out.error = exc.error if isinstance(exc, ClientError) else "reset"
                out.detail = exc.detail if isinstance(exc, ClientError) else str(exc)
                if conn is not None:
                    conn.close()
                state["conn"] = None
                self.record(out)
                if not (out.reused and out.got == 0 and out.error in ("reset", "eof")):
                    return
                # a closed keep-alive connection: classify() decides whether an event explains it

    def keepalive(self, kind, state):
        self._exchange(kind, state, get("/small"), lambda b: None if b == SMALL else "small body differs")
        time.sleep(0.02)

    def newconn(self, kind, state):
        self._exchange(kind, state, get("/small", close=True),
                       lambda b: None if b == SMALL else "small body differs", keep=False)
        time.sleep(0.02)

    def big(self, kind, state):
        self._exchange(kind, state, get(f"/bytes/{BIG}"),
                       lambda b: None if digest(b) == DIGEST_BIG else f"1 MiB body differs ({len(b)} bytes)")
        time.sleep(0.1)

    def slow_read(self, kind, state):
        self._exchange(kind, state, get(f"/bytes/{SLOW_SIZE}", close=True),
                       lambda b: None if digest(b) == DIGEST_SLOW else "slow body differs", slow=True, keep=False)

    def slow_upload(self, kind, state):
        head = f"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: {UPLOAD}\r\n\r\n".encode()
        pieces = [UPLOAD_BODY[i:i + UPLOAD_PIECE] for i in range(0, UPLOAD, UPLOAD_PIECE)]
        self._exchange(kind, state, head, lambda b: None if b == UPLOAD_ANSWER else f"upload answer {b[:80]!r}",
                       body_pieces=pieces, keep=False)

    def aborted_upload(self, kind, state):
        out = Outcome(kind, time.monotonic())
        try:
            conn = Conn(self.addr)
            try:
                conn.send(f"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: {ABORT_CL}\r\n\r\n".encode()
                          + UPLOAD_BODY[:ABORT_SENT])
            finally:
                conn.close()
            out.detail = "sent part of the body, closed"
        except (ClientError, OSError) as exc:
            out.error = "reset"
            out.detail = str(exc)
        self.record(out)
        time.sleep(0.3)


# ---- lb and the origins ---------------------------------------------------------------------

class Origins:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.ports = [free_port() for _ in range(BACKENDS)]
        self.procs: list[harness.Service | None] = [None] * BACKENDS
        self.starts = [0] * BACKENDS
        for i in range(BACKENDS):
            self.start(i)

    def start(self, i: int) -> None:
        self.starts[i] += 1
        self.procs[i] = harness.Service(f"origin{i}", [sys.executable, "-m", "bench.soak_origin",
                                                       str(self.ports[i]), f"o{i}"],
                                        self.workdir / f"origin{i}.{self.starts[i]}.log", cwd=harness.REPO_ROOT)
        end = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.ports[i]), timeout=1) as s:
                    s.sendall(get("/healthz", close=True))
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            if time.monotonic() > end or not self.procs[i].alive():
                raise harness.BenchError(f"origin{i} did not start")
            time.sleep(0.05)

    def kill(self, i: int) -> None:
        os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].proc.wait()
        self.procs[i].stop()

    def stop(self) -> None:
        for p in self.procs:
            if p is not None:
                p.stop()


def lb_config(workdir: Path, port: int, metrics_port: int, origins: list[int]) -> Path:
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    group = grp.getgrgid(account.pw_gid).gr_name
    backends = "".join(f'\n  [[pools.origin.backends]]\n  address = "127.0.0.1:{p}"\n  name = "o{i}"\n'
                       for i, p in enumerate(origins))
    # drain_timeout: a reload must not cut a slow reader (16 s a response)
    conf = f"""\
[global]
workers = {WORKERS}
admin_socket = "{workdir}/admin.sock"
state_file = "{workdir}/state.json"
user = "{account.pw_name}"
group = "{group}"
drain_timeout = "2m"

[global.metrics]
bind = "127.0.0.1:{metrics_port}"

[listeners.soak]
bind = ["127.0.0.1:{port}"]
mode = "http"
pool = "origin"

[pools.origin]
algorithm = "roundrobin"
retries = 2
connect_timeout = "1s"

  [pools.origin.health]
  type = "http"
  path = "/healthz"
  interval = "1s"
  timeout = "500ms"
  rise = 2
  fall = 2
{backends}"""
    path = workdir / "lb.toml"
    path.write_text(conf)
    if os.geteuid() == 0:
        shutil.chown(workdir, account.pw_name, group)
    return path


class Lb:
    def __init__(self, workdir: Path, config: Path, port: int, metrics_port: int):
        self.config = config
        self.port = port
        self.metrics_port = metrics_port
        self.svc = harness.Service("lb", [sys.executable, "-m", "lb", "run", "-c", str(config)],
                                   workdir / "lb.log", cwd=harness.REPO_ROOT)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lb", "-c", str(self.config), *args],
                              cwd=harness.REPO_ROOT, capture_output=True, text=True, timeout=60)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def workers(self) -> list[dict]:
        res = self.cli("status", "--json")
        if res.returncode != 0:
            raise harness.BenchError(f"lb status: {res.stderr.strip()}")
        return json.loads(res.stdout)["workers"]

    def status(self) -> dict:
        """The admin socket's status verb (docs/admin.md), without a CLI process per call."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.config.parent / "admin.sock"))
            s.sendall(b'{"v": 1, "cmd": "status"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise OSError("admin socket closed")
                buf += chunk
        answer = json.loads(buf)
        if not answer.get("ok"):
            raise OSError(f"status: {answer}")
        return answer["result"]

    def steady_pids(self) -> set[int]:
        """The supervisor, the workers of the generation in force and its checker:
        not the generations still draining after a reload, which end with
        their last connection (and take their memory with them)."""
        st = self.status()
        pids = {self.svc.pid, st["checker"]["pid"]}
        pids.update(w["pid"] for w in st["workers"] if w["state"] == "running")
        return pids

    def tree(self) -> list[psutil.Process]:
        try:
            top = psutil.Process(self.svc.pid)
            return [top, *top.children(recursive=True)]
        except psutil.Error:
            return []


def listener_counts(text: str) -> dict[str, int]:
    out = {}
    for m in re.finditer(r'^lb_listener_requests_total\{listener="soak",code="([^"]+)"\} (\d+)', text, re.M):
        out[m.group(1)] = int(m.group(2))
    return out


def active_connections(text: str) -> int:
    m = re.search(r"^lb_active_connections (\d+)", text, re.M)
    return int(m.group(1)) if m else -1


# ---- sampling ------------------------------------------------------------------------------

def pipe_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except OSError:
            pass                         # closed meanwhile
    return n


class Sampler(threading.Thread):
    """RSS and open fds of lb's process tree, every SAMPLE_EVERY seconds: the
    whole tree, and its steady part (Lb.steady_pids), whose fds are counted
    without its established TCP connections and pipes."""

    def __init__(self, lb: Lb, t0: float):
        super().__init__(name="sampler", daemon=True)
        self.lb, self.t0 = lb, t0
        # (t, rss bytes, fds, processes) of the whole tree, then rss and fds of the steady part
        self.samples: list[tuple[float, int, int, int, int, int]] = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(SAMPLE_EVERY):
            try:
                steady = self.lb.steady_pids()
            except (OSError, ValueError, KeyError):
                continue                 # the supervisor busy with a reload: the next tick
            rss = fds = n = srss = sfds = 0
            for p in self.lb.tree():
                try:
                    with p.oneshot():
                        r, f = p.memory_info().rss, p.num_fds()
                    live = 0
                    if p.pid in steady:
                        # (net_connections: psutil 6; connections before it)
                        conns = getattr(p, "net_connections", None) or p.connections
                        live = sum(c.status == psutil.CONN_ESTABLISHED for c in conns("tcp"))
                        live += pipe_fds(p.pid)
                except psutil.Error:
                    continue             # a worker that just died or ended its drain
                rss, fds, n = rss + r, fds + f, n + 1
                if p.pid in steady:
                    # connections in flight and kept for reuse, and the splice
                    # pipes of transfers in flight and kept for the next ones,
                    # come and go with the traffic; a connection lb failed to
                    # close would stay (CLOSE_WAIT) and count
                    srss, sfds = srss + r, sfds + f - live
            if n:
                self.samples.append((time.monotonic() - self.t0, rss, fds, n, srss, sfds))


def flatness(samples, schedule: Schedule) -> dict:
    first_lo, first_hi = schedule.warmup, schedule.warmup + schedule.window
    last_lo = schedule.duration - schedule.window
    out = {"warmup_s": schedule.warmup, "window_s": schedule.window,
           "first_window": [first_lo, first_hi], "last_window": [last_lo, schedule.duration]}
    for key, idx, steady in (("rss", 1, 4), ("fds", 2, 5)):
        first = [s[steady] for s in samples if first_lo <= s[0] < first_hi]
        last = [s[steady] for s in samples if last_lo <= s[0] <= schedule.duration]
        tree = [s[idx] for s in samples]
        if not first or not last:
            out[key] = {"ok": False, "why": "no samples in a window"}
            continue
        m1, m2 = statistics.median(first), statistics.median(last)
        growth = m2 / m1 - 1
        out[key] = {"start": tree[0], "end": tree[-1], "max": max(tree), "first_median": m1,
                    "last_median": m2, "growth": round(growth, 4), "ok": growth <= FLAT_LIMIT}
    return out


# ---- judging -------------------------------------------------------------------------------

def overlaps(spans: list[tuple[float, float]], lo: float, hi: float) -> bool:
    return any(s <= hi and e >= lo for s, e in spans)


def classify(out: Outcome, kills, flaps, reloads) -> str:
    """kills, flaps, reloads: (start, end) of each event (a reload lasts as
    long as `lb reload` does; the old generation closes its idle connections
    as it ends)."""
    if out.error is None:
        return "ok"
    if out.reused and out.got == 0 and out.error in ("reset", "eof"):
        # the connection was closed while idle: by a reload's drain or a killed worker
        if overlaps(kills + reloads, out.idle_since - 1.0, out.t_end):
            return "stale_keepalive"
    if overlaps(kills, out.t_start, out.t_end) and out.error in ("reset", "eof", "truncated", "timeout"):
        return "killed"
    if overlaps(flaps, out.t_start, out.t_end) and (out.error in ("reset", "eof", "truncated")
                          or (out.error == "status" and out.status in (502, 503, 504))):
        return "flap"
    return "unexpected"


def code_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "other"


def account(outcomes: list[Outcome], kills: list[float], lb_counts: dict[str, int]) -> dict:
    """What lb must have counted, per status class, from what the clients saw.

    An exchange lb counts is one that reached a worker and ended there. So
    every request that got a status line counts in its class (a response
    cut by a backend that died counts in the class the client got), every
    aborted upload counts (as `other`, the client left first), and a request
    refused on a keep-alive connection closed while idle never reached lb.
    A request in flight when its worker was killed may or may not have been
    counted: the worker may have ended it just before dying. Those, and only
    those, are `uncertain`: lb's count of a class must lie between the sure
    count and the sure count plus the uncertain ones."""
    sure: dict[str, int] = {}
    uncertain = 0
    for o in outcomes:
        if o.klass == "stale_keepalive":
            continue
        if overlaps(kills, o.t_start, o.t_end + (1.0 if o.kind == "aborted_upload" else 0.0)):
            uncertain += 1
            continue
        k = "other" if o.kind == "aborted_upload" else code_class(o.status)
        sure[k] = sure.get(k, 0) + 1
    classes = sorted(set(sure) | set(lb_counts))
    rows = {}
    ok = True
    for k in classes:
        s, n = sure.get(k, 0), lb_counts.get(k, 0)
        rows[k] = {"client": s, "lb": n, "ok": s <= n <= s + uncertain}
        ok = ok and rows[k]["ok"]
    total_s, total_n = sum(sure.values()), sum(lb_counts.values())
    ok = ok and total_s <= total_n <= total_s + uncertain
    return {"classes": rows, "client_total": total_s, "lb_total": total_n, "uncertain": uncertain, "ok": ok}


# ---- the run -------------------------------------------------------------------------------

def run(minutes: float, as_json: bool, keep_workdir: bool) -> int:
    schedule = Schedule.for_minutes(minutes)
    workdir = Path(tempfile.mkdtemp(prefix="lb-soak-"))
    os.chmod(workdir, 0o755)
    origins = lb = sampler = traffic = None
    events: list[tuple[float, str, str, float]] = []   # (start, kind, detail, end), seconds from t0
    failed = True
    report: dict = {}
    try:
        origins = Origins(workdir)
        port, metrics_port = free_port(), free_port()
        config = lb_config(workdir, port, metrics_port, origins.ports)
        lb = Lb(workdir, config, port, metrics_port)
        probes = wait_ready(lb)
        baseline = listener_counts(lb.metrics())
        log(f"soak: lb on 127.0.0.1:{port}, {WORKERS} workers, {BACKENDS} origins, {minutes:g} min; "
            f"reload every {schedule.reload_every:g}s, kill -9 every {schedule.kill_every:g}s, "
            f"a backend killed every {schedule.flap_every:g}s for {schedule.flap_down:g}s")
        t0 = time.monotonic()
        sampler = Sampler(lb, t0)
        sampler.start()
        traffic = Traffic(("127.0.0.1", port))
        traffic.start()
        pending = schedule.events()
        restarts: list[tuple[float, int]] = []
        flap_n = 0
        while True:
            now = time.monotonic() - t0
            if now >= schedule.duration:
                break
            if not lb.svc.alive():
                raise harness.BenchError("lb exited during the soak")
            for at, i in [r for r in restarts if r[0] <= now]:
                restarts.remove((at, i))
                origins.start(i)
                at = time.monotonic() - t0
                events.append((at, "restart", f"o{i}", at))
            while pending and pending[0][0] <= now:
                _at, kind = pending.pop(0)
                events.append(do_event(kind, lb, origins, flap_n, t0, schedule, restarts))
                flap_n += kind == "flap"
            time.sleep(0.05)
        traffic.stop.set()
        log("soak: traffic stopping (requests in progress finish)")
        if not traffic.join(IO_TIMEOUT + 30):
            raise harness.BenchError("client threads did not finish")
        for at, i in restarts:
            origins.start(i)
        sampler.halt.set()
        sampler.join()
        lb_counts = settle(lb)
        leftover = wait_drained(lb)
        lb_counts = {k: v - baseline.get(k, 0) for k, v in lb_counts.items() if v - baseline.get(k, 0)}
        report = judge(traffic.outcomes, events, t0, lb_counts, sampler.samples, schedule, probes, leftover)
        failed = not report["ok"]
    except harness.BenchError as exc:
        report = {"ok": False, "error": str(exc)}
        log(f"soak: FAILED: {exc}")
    finally:
        if traffic is not None:
            traffic.stop.set()
        if sampler is not None:
            sampler.halt.set()
        if lb is not None:
            lb.svc.stop()
        if origins is not None:
            origins.stop()
        if failed or keep_workdir:
            log(f"soak: work dir kept: {workdir}")
            report["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report.get("ok") else 1


def wait_ready(lb: Lb) -> int:
    """GET /small through lb until it answers 200; the probes are requests lb counts."""
    end = time.monotonic() + 30
    probes = 0
    while time.monotonic() < end:
        if not lb.svc.alive():
            raise harness.BenchError("lb exited at start: see lb.log")
        try:
            c = Conn(("127.0.0.1", lb.port))
            try:
                c.send(get("/small", close=True))
                probes += 1
                out = Outcome("probe", 0)
                if c.response(out) == SMALL and out.status == 200:
                    lb.metrics()
                    return probes
            finally:
                c.close()
        except (ClientError, OSError):
            pass
        time.sleep(0.1)
    raise harness.BenchError("lb did not answer within 30 s")


def do_event(kind: str, lb: Lb, origins: Origins, flap_n: int, t0: float, schedule: Schedule,
             restarts: list) -> tuple[float, str, str, float]:
    if kind == "reload":
        at = time.monotonic() - t0
        res = lb.cli("reload")
        if res.returncode != 0:
            raise harness.BenchError(f"lb reload failed: {res.stderr.strip() or res.stdout.strip()}")
        end = time.monotonic() - t0
        log(f"soak: reload at {at:.0f}s ({end - at:.1f}s)")
        return at, "reload", res.stdout.strip()[:80], end
    if kind == "kill":
        running = [w for w in lb.workers() if w["state"] == "running"]
        victim = random.Random(int(t0 * 1000) + flap_n).choice(running)
        at = time.monotonic() - t0       # before the signal: a failure it causes comes after
        os.kill(victim["pid"], signal.SIGKILL)
        log(f"soak: kill -9 worker {victim['pid']} at {at:.0f}s")
        return at, "kill", str(victim["pid"]), at
    i = flap_n % BACKENDS
    at = time.monotonic() - t0
    origins.kill(i)
    restarts.append((at + schedule.flap_down, i))
    log(f"soak: backend o{i} killed at {at:.0f}s, back in {schedule.flap_down:g}s")
    return at, "flap", f"o{i}", at


def settle(lb: Lb) -> dict[str, int]:
    """lb's counts once every exchange has ended: no client connection open
    and the counts the same twice in a row."""
    end = time.monotonic() + 60
    last = None
    while time.monotonic() < end:
        text = lb.metrics()
        counts = listener_counts(text)
        if active_connections(text) == 0 and counts == last:
            return counts
        last = counts
        time.sleep(0.5)
    raise harness.BenchError("lb's counts did not settle within 60 s (connections still open)")


def wait_drained(lb: Lb) -> list[str]:
    """Once no client is connected, every draining generation ends: the tree
    is the steady part again. What is left after 30 s (as "pid name")."""
    end = time.monotonic() + 30
    while True:
        steady = lb.steady_pids()
        extra = [f"{p.pid} {p.name()}" for p in lb.tree() if p.pid not in steady]
        if not extra or time.monotonic() > end:
            return extra
        time.sleep(0.2)


def judge(outcomes, events, t0, lb_counts, samples, schedule, probes, leftover) -> dict:
    spans = lambda k: [(t0 + at, t0 + end) for at, kind, _, end in events if kind == k]   # noqa: E731
    kills, flaps, reloads = spans("kill"), spans("flap"), spans("reload")
    for o in outcomes:
        o.klass = classify(o, kills, flaps, reloads)
    probe_outcomes = [Outcome("probe", 0, 0, status=200, klass="ok") for _ in range(probes)]
    acc = account(outcomes + probe_outcomes, kills, lb_counts)
    by_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        row = by_kind.setdefault(o.kind, {})
        row[o.klass] = row.get(o.klass, 0) + 1
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.klass != "ok":
            key = f"{o.klass}: {o.error}" + (f" {o.status}" if o.error == "status" else "")
            errors[key] = errors.get(key, 0) + 1
    unexpected = [dataclasses.asdict(o) | {"t_start": round(o.t_start - t0, 3), "t_end": round(o.t_end - t0, 3)}
                  for o in outcomes if o.klass == "unexpected"]
    flat = flatness(samples, schedule)
    counts = {k: sum(1 for e in events if e[1] == k) for k in ("reload", "kill", "flap", "restart")}
    ok = acc["ok"] and not unexpected and flat["rss"]["ok"] and flat["fds"]["ok"] and \
        counts["reload"] >= 2 and counts["kill"] >= 1 and not leftover
    return {
        "ok": ok,
        "minutes": schedule.duration / 60,
        "schedule": dataclasses.asdict(schedule),
        "events": counts,
        "event_log": [{"t": round(at, 2), "end": round(end, 2), "kind": kind, "detail": d}
                      for at, kind, d, end in events],
        "requests": by_kind,
        "requests_total": len(outcomes),
        "errors": errors,
        "unexpected": unexpected[:20],
        "unexpected_total": len(unexpected),
        "accounting": acc,
        "memory": flat,
        "left_at_end": leftover,
        "samples": [[round(s[0], 1), *s[1:]] for s in samples],   # t, tree rss, fds, processes, steady rss, fds
    }


def format_report(r: dict) -> str:
    if "error" in r:
        return f"soak: FAILED: {r['error']}" + (f"\nwork dir: {r['workdir']}" if "workdir" in r else "")
    lines = [f"soak: {r['minutes']:g} min, {r['requests_total']} requests; events: "
             + ", ".join(f"{v} {k}" for k, v in r["events"].items())]
    classes = ["ok", "killed", "flap", "stale_keepalive", "unexpected"]
    lines.append("")
    lines.append(f"  {'requests by kind':<16}" + "".join(f"{c:>17}" for c in classes))
    for kind, row in sorted(r["requests"].items()):
        lines.append(f"  {kind:<16}" + "".join(f"{row.get(c, 0):>17}" for c in classes))
    lines.append("")
    lines.append("  errors by class:" + ("" if r["errors"] else " none"))
    for k, v in sorted(r["errors"].items()):
        lines.append(f"    {k:<40} {v}")
    acc = r["accounting"]
    lines.append("")
    lines.append(f"  accounting (status class: client sure / lb; uncertain: {acc['uncertain']} "
                 f"in flight on a killed worker)")
    for k, row in acc["classes"].items():
        lines.append(f"    {k:<6} {row['client']:>8} / {row['lb']:<8} {'ok' if row['ok'] else 'MISMATCH'}")
    lines.append(f"    {'total':<6} {acc['client_total']:>8} / {acc['lb_total']:<8} {'ok' if acc['ok'] else 'MISMATCH'}")
    lines.append("")
    mem = r["memory"]
    lines.append(f"  lb process tree: whole tree at start, end, max; its steady part's medians (fds: less "
                 f"established connections and pipes) over "
                 f"{mem['first_window'][0]:g}-{mem['first_window'][1]:g}s and "
                 f"{mem['last_window'][0]:g}-{mem['last_window'][1]:g}s (limit +{FLAT_LIMIT:.0%})")
    lines.append(f"    {'':<5}{'start':>10}{'end':>10}{'max':>10}{'first':>10}{'last':>10}{'growth':>9}")
    for key, scale, unit in (("rss", 1 / (1 << 20), "MiB"), ("fds", 1, "")):
        m = mem[key]
        if "start" not in m:
            lines.append(f"    {key}: {m.get('why')}")
            continue
        fmt = (lambda v: f"{v * scale:10.1f}") if unit else (lambda v: f"{v:10.0f}")
        lines.append(f"    {key + (' ' + unit if unit else ''):<5}" + fmt(m["start"]) + fmt(m["end"]) + fmt(m["max"])
                     + fmt(m["first_median"]) + fmt(m["last_median"]) + f"{m['growth']:+9.1%}"
                     + ("" if m["ok"] else "  NOT FLAT"))
    if r["left_at_end"]:
        lines.append(f"  processes of a drained generation still there at the end: {', '.join(r['left_at_end'])}")
    if r["unexpected"]:
        lines.append("")
        lines.append(f"  unexpected ({r['unexpected_total']}), the first:")
        for o in r["unexpected"][:10]:
            lines.append(f"    {o['kind']} {o['t_start']}-{o['t_end']}s: {o['error']} {o['detail']} "
                         f"(status {o['status']}, {o['got']} bytes, reused {o['reused']})")
    lines.append("")
    lines.append("soak: " + ("PASSED" if r["ok"] else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench soak",
                                description="Mixed traffic against lb with flapping backends, reloads and "
                                            "worker kills; checks flat RSS/fds and that every request is "
                                            "accounted for (bench/README.md).")
    p.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs (default 10)")
    p.add_argument("--json", dest="as_json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--keep-workdir", action="store_true", help="keep lb's config and logs (always kept on failure)")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be positive")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    return run(args.minutes, args.as_json, args.keep_workdir)
