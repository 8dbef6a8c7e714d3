"""The benchmark harness: tools, processes, wrk, idle connections, reports.

One run starts one nginx origin, then for every scenario starts each target
afresh (direct, HAProxy, nginx, lb; as L4 forwarders or as HTTP reverse
proxies, with or without TLS, after the scenario's MODE), measures it alone
with identical settings, and stops it before the next one starts. Figures are comparable only
within one run; the ratios lb/haproxy and lb/nginx are the point. With
--repeat N, a wrk scenario runs N rounds (targets in rotated order, each
started afresh) and reports per-target medians and the per-round ratio spread.

Scenarios live in ``bench/scenarios/``, one per file, each exposing:

    NAME     str            scenario name on the command line
    ORDER    int            position in a full run
    KIND     str            "wrk" (needs wrk, gets a header line), "h2load" (needs
                            h2load: HTTP/2, CONNECTIONS and STREAMS of its own),
                            "idle", or "local"
    SUMMARY  str            one line: what is measured
    TARGETS  tuple[str]     targets it applies to (subset of ALL_TARGETS)
    METRICS  tuple[Metric]  table columns; a Metric with `better` set gets ratios
    measure(ctx, target) -> dict   metric values for one running target
and optionally
    MODE     str            "tcp" (default), "http", "https" or "h2": how the proxies are set up
    GOALS    dict           {metric key: ratio}: targets for lb against the better
                            of HAProxy and nginx (or of BEST_OF), or {metric key: Absolute(value)}
                            on lb's own figure; a scenario with GOALS (even
                            empty) also gets the ratio lb/best
    BEST_OF  tuple[str]     the anchors of lb/best when not HAProxy and nginx
    HOSTS    bool           run on the hosts topology (bench/hosts.py): wrk, the
                            proxies and an origin of its own in three network
                            namespaces joined by veth pairs, not on loopback

A "local" scenario measures code in the harness's own process and starts no
target, tool or origin: it has TARGETS = () and, instead of measure,
    measure_local(ctx) -> dict     its results (the harness adds "ok")
    format_local(results) -> str   its table
A run of local scenarios only starts no process and needs no tool.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import datetime
import importlib
import importlib.machinery
import json
import os
import pkgutil
import platform
import pwd
import grp
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import hosts, tls

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
FRESH_TLS_SOURCE = Path(__file__).resolve().parent / "fresh_tls_session.c"

# What a scenario's targets proxy: L4 forwarding, HTTP with keep-alive to the
# origin, or the same HTTP behind TLS that each proxy terminates (the origin
# stays plain HTTP); "h2" is https with ALPN h2 offered first: HTTP/2 to the
# client, HTTP/1.1 to the origin.
MODES = ("tcp", "http", "https", "h2", "h2b")
DEFAULT_SCENARIO_PREFIXES = ("tcp_", "http_", "https_", "h2_")  # what `python -m bench` runs without names
LOAD_KINDS = ("wrk", "h2load")
# Idle origin connections each reverse proxy keeps (HAProxy pool-max-conn,
# nginx upstream keepalive, lb keepalive_max_idle): wrk's 64 requests in
# flight; in h2 mode h2_small's 16 connections x 32 streams = 512, else each
# proxy would close and reopen origin connections beyond 64 all run long.
ORIGIN_IDLE = {"h2": 512, "h2b": 512}
DEFAULT_ORIGIN_IDLE = 64   # scenarios timed by a load generator: rounds, cpu us/req

# Order in which targets run within a scenario, and which of them are proxies.
# BASELINE is lb run from another checkout (--baseline DIR): a change measured
# before and after in one run.
BASELINE = "lb-base"
TARGET_NAMES = ("direct", "haproxy", "nginx", "lb", BASELINE)
PROXY_NAMES = ("haproxy", "nginx", "lb", BASELINE)
# Varnish is a cache, not a general proxy: only the cache scenarios name it
# in their TARGETS, so it is not in TARGET_NAMES (the set most scenarios
# take); ALL_TARGETS is the order of every run.
ALL_TARGETS = ("direct", "haproxy", "nginx", "varnish", "lb", BASELINE)
ONLY_NAMES = ("haproxy", "nginx", "varnish", "lb")   # --only picks among these; direct and lb-base have flags
ANCHORS = ("haproxy", "nginx", "varnish", "best", "direct", BASELINE)   # denominators of the lb ratios
BEST_OF = ("haproxy", "nginx")   # "best": per figure, the better of these two (a scenario's BEST_OF overrides)

SMALL_BODY = b"lb-bench small response body: 100 bytes, served by nginx `return 200` from memory......\n"
ONE_MIB = 1 << 20

READY_TIMEOUT_S = {"lb": 15.0, BASELINE: 15.0}   # others: DEFAULT_READY_TIMEOUT_S
DEFAULT_READY_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0
IDLE_OPEN_TIMEOUT_S = 30.0
IDLE_SETTLE_TIMEOUT_S = 20.0
NOISY_OTHER_CPU_PCT = 15.0     # CPU % of foreign processes during a wrk run worth a warning

_start_monotonic = time.monotonic()


class BenchError(Exception):
    """A failure worth one line to the user (and maybe a log tail)."""

    def __init__(self, message: str, log_tail: str | None = None):
        super().__init__(message)
        self.log_tail = log_tail


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays clean for --json."""
    elapsed = time.monotonic() - _start_monotonic
    print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_duration(text: str) -> float:
    """"10s", "500ms", "1m", "2" (seconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise ValueError(f"bad duration {text!r} (use e.g. 10s, 500ms, 1m)")
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE -> hard, for us and every child we start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class PortAllocator:
    """Free loopback ports, never the same one twice in a run."""

    def __init__(self) -> None:
        self._used: set[int] = set()

    def take(self) -> int:
        for _ in range(100):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self._used:
                self._used.add(port)
                return port
        raise BenchError("could not find a free loopback port")


# --------------------------------------------------------------------------
# Tools: find them, or install them with apt when we are root.

SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
NGINX_MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/lib64/nginx/modules",
                     "/usr/share/nginx/modules", "/usr/local/nginx/modules")


def find_tool(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    for d in SBIN_DIRS:
        candidate = Path(d) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def nginx_build_flags(nginx: str) -> str:
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10)
    return out.stderr + out.stdout


def nginx_stream_module(nginx: str) -> tuple[bool, str | None]:
    """(available, path of the .so to load_module or None when built in)."""
    flags = nginx_build_flags(nginx)
    if re.search(r"--with-stream(\s|$)", flags):
        return True, None
    m = re.search(r"--modules-path=(\S+)", flags)
    dirs = ([m.group(1)] if m else []) + list(NGINX_MODULE_DIRS)
    for d in dirs:
        so = Path(d) / "ngx_stream_module.so"
        if so.exists():
            return True, str(so)
    return False, None


def ensure_tools(need: set[str]) -> dict[str, str]:
    """Paths of the tools in `need` ("haproxy", "nginx", "nginx-stream", "wrk", "h2load", "varnishd",
    and "ip" and "ethtool" for the hosts topology).

    Missing ones are installed with apt-get when running as root; otherwise
    the error says what to install.
    """
    packages = {"haproxy": ["haproxy"], "nginx": ["nginx-light"],
                "nginx-stream": ["libnginx-mod-stream"], "wrk": ["wrk"],
                "h2load": ["nghttp2-client"], "varnishd": ["varnish"],
                "ip": ["iproute2"], "ethtool": ["ethtool"]}

    def missing() -> list[str]:
        gone = [t for t in sorted(need - {"nginx-stream"}) if not find_tool(t)]
        if "nginx-stream" in need:
            nginx = find_tool("nginx")
            if not nginx or not nginx_stream_module(nginx)[0]:
                gone.append("nginx-stream")
        return gone

    gone = missing()
    if gone:
        # nginx already present: add only the stream module, never swap the flavour.
        pkgs = sorted({p for t in gone for p in packages[t]})
        if "nginx" in gone and "nginx-stream" in need:
            pkgs.append("libnginx-mod-stream")
        if os.geteuid() != 0 or not find_tool("apt-get"):
            raise BenchError(f"missing tools {gone}; install them, e.g. "
                             f"`apt-get install -y {' '.join(sorted(set(pkgs)))}`")
        log(f"installing {' '.join(sorted(set(pkgs)))} with apt-get (missing: {', '.join(gone)})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"],
                    ["apt-get", "install", "-y", *sorted(set(pkgs))]):
            rc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env,
                                timeout=900).returncode
            if rc != 0:
                raise BenchError(f"`{' '.join(cmd)}` failed with exit code {rc}")
        gone = missing()
        if gone:
            raise BenchError(f"still missing after apt-get install: {gone}")
    tools = {t: find_tool(t) for t in need if t != "nginx-stream"}
    if "nginx-stream" in need:
        tools["nginx-stream"] = nginx_stream_module(tools["nginx"])[1] or ""
    return tools


def _first_line(cmd: list[str], cwd: Path = REPO_ROOT) -> str | None:
    """The first line a successful command prints; None when it fails."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if out.returncode == 0 and text else None


def tool_versions(tools: dict[str, str], lb_dirs: dict[str, Path]) -> dict[str, str | None]:
    """Versions of the tools, and of lb in each checkout of `lb_dirs` ({target: dir})."""
    versions = {}
    if tools.get("haproxy"):
        versions["haproxy"] = _first_line([tools["haproxy"], "-v"])
    if tools.get("nginx"):
        versions["nginx"] = _first_line([tools["nginx"], "-v"])
    if tools.get("varnishd"):
        versions["varnish"] = _first_line([tools["varnishd"], "-V"])
    if tools.get("wrk"):
        # wrk -v prints its banner and exits 1.
        out = subprocess.run([tools["wrk"], "-v"], capture_output=True, text=True, timeout=10)
        versions["wrk"] = (out.stdout + out.stderr).strip().splitlines()[0]
    if tools.get("h2load"):
        versions["h2load"] = _first_line([tools["h2load"], "--version"])
    for name, cwd in lb_dirs.items():
        versions[name] = _first_line([sys.executable, "-m", "lb", "--version"], cwd)
    return versions


def baseline_checkout(path: str | Path) -> Path:
    """The --baseline DIR, absolute, once it is an lb checkout with its compiled
    module built in place for this Python. Checked before anything starts:
    without lb/ there, `python -m lb` would silently import the installed lb
    instead, and without the module lb-base would fail in every scenario."""
    root = Path(path).expanduser().resolve()
    if not (root / "lb" / "__init__.py").is_file():
        raise BenchError(f"{root} is not an lb checkout: it has no lb/__init__.py")
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    if not any((root / "lb" / f"_fastpath{sfx}").is_file() for sfx in suffixes):
        raise BenchError(f"{root} has no compiled lb/_fastpath{suffixes[0]}: build it there with "
                         f"`python setup.py build_ext --inplace`")
    return root


# --------------------------------------------------------------------------
# Processes: each service in its own process group, always stopped.

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:      # pragma: no cover - non-glibc
    _libc = None


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if the harness dies without cleaning up."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Service:
    """A long-running child (and its descendants) in its own process group."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, cwd: Path | None = None):
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, cwd=cwd,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            self._log.close()
            raise BenchError(f"{name}: cannot start {cmd[0]}: {exc}") from exc
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the leader, wait, then SIGKILL whatever is left of the group."""
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: did not stop within {STOP_TIMEOUT_S:.0f}s, killing")
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)    # stragglers: workers of a dead master
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def connect(addr: tuple[str, int], timeout: float,
            tls_client: ssl.SSLContext | None = None) -> socket.socket:
    """A connection to addr; with tls_client, after a completed handshake
    (which verifies the run's certificate chain: see bench/tls.py)."""
    s = socket.create_connection(addr, timeout=timeout)
    if tls_client is None:
        return s
    try:
        return tls_client.wrap_socket(s, server_hostname=tls.SERVER_NAME)
    except BaseException:
        s.close()
        raise


def _http_probe(addr: tuple[str, int], path: str, timeout: float,
                tls_client: ssl.SSLContext | None = None) -> str | None:
    """One GET through addr; None on a 200 response, else what went wrong."""
    req = (f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").encode()
    try:
        with connect(addr, timeout, tls_client) as s:
            s.sendall(req)
            head = s.recv(64)
    except OSError as exc:   # ssl.SSLError too: a proxy still starting, or a chain that does not verify
        return str(exc) or type(exc).__name__
    return None if head.startswith(b"HTTP/1.1 200") else f"answered {head[:32]!r}"


def wait_ready(service: Service, addr: tuple[str, int], timeout: float,
               tls_client: ssl.SSLContext | None = None) -> None:
    """Until addr answers GET /small with 200 through the service (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise BenchError(f"{service.name} exited with code {service.proc.returncode} "
                             f"before serving {addr[0]}:{addr[1]}", tail(service.log_path))
        error = _http_probe(addr, "/small", timeout=1.0, tls_client=tls_client)
        if error is None:
            return
        time.sleep(0.05)
    raise BenchError(f"{service.name} did not serve GET /small on {addr[0]}:{addr[1]} "
                     f"within {timeout:.0f}s (last try: {error})", tail(service.log_path))


# --------------------------------------------------------------------------
# The origin: one nginx shared by every target.

def _nginx_temp_paths(nginx: str, root: Path) -> str:
    """Temp paths inside our dir, for the http modules this nginx has."""
    flags = nginx_build_flags(nginx)
    lines = [f"client_body_temp_path {root}/tmp/client_body;",
             f"proxy_temp_path {root}/tmp/proxy;"]
    for mod in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{mod}_module" not in flags:
            lines.append(f"{mod}_temp_path {root}/tmp/{mod};")
    return "\n    ".join(lines)


class Origin:
    """nginx serving /small (100 B from memory) and /1m (1 MiB file) on
    `host`: loopback, or the origin's namespace of a hosts topology, where
    `wrap` (`ip netns exec NS`) starts it."""

    def __init__(self, ctx: "Context", host: str = "127.0.0.1", wrap: tuple[str, ...] = (),
                 name: str = "origin"):
        self.root = ctx.workdir / name
        (self.root / "www").mkdir(parents=True)
        (self.root / "tmp").mkdir()
        (self.root / "www" / "1m").write_bytes(os.urandom(ONE_MIB))
        (self.root / "www" / "cached100k").write_bytes(os.urandom(100 * 1024))
        for p in (self.root, self.root / "www", self.root / "tmp"):
            p.chmod(0o755)    # nginx workers run as nobody when we are root
        (self.root / "www" / "1m").chmod(0o644)
        (self.root / "www" / "cached100k").chmod(0o644)
        self.port = ctx.ports.take()
        self.addr = (host, self.port)
        self.h2c_addr = (host, ctx.ports.take())    # the same server in h2c (prior knowledge)
        nofile = ctx.nofile
        body = SMALL_BODY.decode().rstrip("\n").replace('"', "")
        conf = f"""\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {self.root}/nginx.pid;
error_log {self.root}/error.log warn;
events {{
    worker_connections {nofile - 100};
}}
http {{
    access_log off;
    {_nginx_temp_paths(ctx.tools["nginx"], self.root)}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_header_timeout 300s;
    open_file_cache max=16 inactive=300s;
    server {{
        listen {host}:{self.port} backlog=4096;
        listen {host}:{self.h2c_addr[1]} http2 backlog=4096;
        root {self.root}/www;
        location = /small {{
            default_type text/plain;
            return 200 "{body}\\n";
        }}
        location = /1m {{ }}
        # cache_hit: the same bodies, with an hour of freshness for caches
        location = /cached {{
            default_type text/plain;
            add_header Cache-Control "max-age=3600";
            return 200 "{body}\n";
        }}
        location = /cached100k {{ add_header Cache-Control "max-age=3600"; }}
        location = /origin_status {{ stub_status; }}
    }}
}}
"""
        conf_path = self.root / "nginx.conf"
        conf_path.write_text(conf)
        self.service = Service("origin nginx",
                               [*wrap, ctx.tools["nginx"], "-p", str(self.root), "-c", str(conf_path),
                                "-e", str(self.root / "error.log")],
                               self.root / "stderr.log")
        try:
            wait_ready(self.service, self.addr, DEFAULT_READY_TIMEOUT_S)
        except BenchError:
            self.service.stop()
            raise

    def accepts(self) -> int | None:
        """Connections the origin has accepted so far (stub_status), this
        query's own included; None when it cannot be read."""
        req = (b"GET /origin_status HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        chunks = []
        try:
            with socket.create_connection(self.addr, timeout=2.0) as s:
                s.sendall(req)
                while chunk := s.recv(4096):
                    chunks.append(chunk)
        except OSError:
            return None
        m = re.search(rb"server accepts handled requests\s+(\d+)", b"".join(chunks))
        return int(m.group(1)) if m else None

    def worker(self) -> psutil.Process | None:
        try:
            kids = psutil.Process(self.service.pid).children()
        except psutil.Error:
            return None
        return kids[0] if kids else None

    def stop(self) -> None:
        self.service.stop()


# --------------------------------------------------------------------------
# Targets: what wrk and the idle client talk to.

class Target(abc.ABC):
    """A thing under test on its own loopback address.

    `mode` is the scenario's MODE: "tcp" (L4 forwarding: HAProxy `mode tcp`,
    nginx `stream`, an lb tcp listener), "http" (a reverse proxy with
    keep-alive to the origin: HAProxy `mode http`, nginx `http`, an lb http
    listener) or "https" (the same, terminating TLS with the run's
    certificate and the settings of bench/tls.py), or "h2" (https with ALPN
    h2 offered before http/1.1: HTTP/2 to h2load, HTTP/1.1 to the origin),
    or "h2b" (h2, and HTTP/2 to the origin too, on its h2c port: HAProxy
    `proto h2`, nginx `grpc_pass`, an lb pool with `protocol = "h2"`).
    """

    name = ""
    is_proxy = True
    # an access log of every request, as JSON lines to this file (nginx, lb):
    # the scenarios that price logging set it before start()
    access_log: Path | None = None

    def __init__(self, ctx: "Context", scenario: str, mode: str = "tcp"):
        if mode not in MODES:
            raise BenchError(f"unknown scenario mode {mode!r}; have {', '.join(MODES)}")
        self.ctx = ctx
        self.mode = mode
        self.http = mode != "tcp"       # a reverse proxy, not an L4 forwarder
        self.tls = mode in ("https", "h2", "h2b")   # it terminates TLS
        self.h2 = mode in ("h2", "h2b")  # and offers ALPN h2 (then http/1.1)
        self.h2b = mode == "h2b"        # and speaks HTTP/2 (h2c) to the origin
        self.origin_idle = ORIGIN_IDLE.get(mode, DEFAULT_ORIGIN_IDLE)
        self.dir = ctx.workdir / f"{scenario}-{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.service: Service | None = None
        self.addr: tuple[str, int] = ("127.0.0.1", 0)

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.addr[0]}:{self.addr[1]}{path}"

    def tls_client(self) -> ssl.SSLContext | None:
        """How the harness's own clients (readiness probe, idle connections)
        talk to this target: a context that verifies the run's chain, or None."""
        return self.ctx.tls_client() if self.tls else None

    def tls_counters(self) -> dict[str, int] | None:
        """{"handshakes", "resumed"}: TLS handshakes the target completed so
        far and how many resumed a session, from its own counters; None when
        it has none to read (nginx) or speaks no TLS."""
        return None

    def start(self) -> None:
        self.addr = (self.ctx.proxy_host, self.ctx.ports.take())
        cmd = self.configure()
        self.service = Service(self.name, cmd, self.dir / "output.log", cwd=self.cwd())
        wait_ready(self.service, self.addr, READY_TIMEOUT_S.get(self.name, DEFAULT_READY_TIMEOUT_S),
                   self.tls_client())

    def cwd(self) -> Path | None:
        return self.dir

    @abc.abstractmethod
    def configure(self) -> list[str]:
        """Write the config; return the foreground command line."""


    @abc.abstractmethod
    def candidates(self) -> list[psutil.Process]:
        """Processes that may be the data-plane worker (some of processes())."""

    def processes(self) -> list[psutil.Process]:
        """The target's main process and all its descendants: what it spends
        CPU in (lb's supervisor, workers and checker; nginx's master and
        worker). Empty without a process of its own (direct)."""
        if self.service is None:
            return []
        try:
            main = psutil.Process(self.service.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []


    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def log_tail(self) -> str | None:
        return tail(self.service.log_path) if self.service else None


class DirectTarget(Target):
    """wrk straight at the origin: the ceiling."""

    name = "direct"
    is_proxy = False

    def start(self) -> None:
        self.addr = self.ctx.origin.addr

    def configure(self) -> list[str]:
        return []  # no process of its own: start() points at the origin

    def candidates(self) -> list[psutil.Process]:
        return []


class HAProxyTarget(Target):
    name = "haproxy"

    def configure(self) -> list[str]:
        # Two fds per proxied connection, plus headroom, within our hard limit.
        maxconn = max(1000, (self.ctx.nofile - 200) // 2)
        oaddr = self.ctx.origin.h2c_addr if self.h2b else self.ctx.origin.addr
        origin = f"{oaddr[0]}:{oaddr[1]}"
        if self.http:
            # http-reuse always: any request, a new client's first included,
            # may go over an idle origin connection, as nginx's upstream
            # keepalive and lb's backend pool do; "safe" would open a new
            # origin connection for the first request of every client
            # connection, i.e. for every request of http_connrate. "always" is
            # safe here: the origin never closes an idle connection first.
            # Every proxy adds the same three X-Forwarded-* fields lb adds by
            # default. pool-max-conn 64 = nginx `keepalive 64` = lb
            # keepalive_max_idle = 64 (512 in h2 mode: ORIGIN_IDLE).
            defaults = """\
    mode http
    option http-keep-alive
    http-reuse always
    option forwardfor
    timeout http-request 10s
    timeout http-keep-alive 300s
"""
            rules = f"""\
    http-request set-header X-Forwarded-Proto {"https" if self.tls else "http"}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    server origin {origin} pool-max-conn {self.origin_idle}{" proto h2" if self.h2b else ""}
"""
        else:
            defaults = "    mode tcp\n"
            rules = f"    server origin {origin}\n"
        conf = f"""\
global
    nbthread 1
    maxconn {maxconn}
    pidfile {self.dir}/haproxy.pid
{self._tls_global() if self.tls else ""}
defaults
{defaults}    maxconn {maxconn}
    timeout connect 5s
    timeout client 300s
    timeout server 300s

listen bench
    bind {self.addr[0]}:{self.addr[1]}{self._tls_bind() if self.tls else ""}
{rules}"""
        path = self.dir / "haproxy.cfg"
        path.write_text(conf)
        return [self.ctx.tools["haproxy"], "-db", "-f", str(path)]

    def _tls_global(self) -> str:
        # No session cache (default 20,000 sessions): lb keeps none and nginx
        # runs with `ssl_session_cache off`; resumption is by tickets alone
        # for all three. The stats socket is only read, between runs, for the
        # handshake counters (tls_counters).
        return (f"    tune.ssl.cachesize 0\n"
                f"    stats socket {self.dir}/stats.sock mode 600 level user\n")

    def _tls_bind(self) -> str:
        # bench/tls.py's settings, lb's defaults: versions, suites, groups,
        # and the client's cipher order (HAProxy's default is its own).
        cert = self.ctx.certificate()
        alpn = "h2,http/1.1" if self.h2 else "http/1.1"
        return (f" ssl crt {cert.combined} alpn {alpn}"
                f" ssl-min-ver {tls.PROTOCOLS[0]} ssl-max-ver {tls.PROTOCOLS[-1]}"
                f" ciphers {tls.CIPHERS} ciphersuites {tls.CIPHERSUITES} curves {tls.GROUPS}"
                f" prefer-client-ciphers")

    def tls_counters(self) -> dict[str, int] | None:
        # The frontend's row of `show stat`: ssl_sess counts the full
        # handshakes, ssl_reused_sess the resumed ones.
        if not self.tls:
            return None
        try:
            lines = _unix_exchange(self.dir / "stats.sock", b"show stat\n").splitlines()
        except OSError:
            return None
        header = lines[0].lstrip("# ").split(",") if lines else []
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("svname") == "FRONTEND" and row.get("ssl_sess", "").isdigit():
                full, resumed = int(row["ssl_sess"]), int(row.get("ssl_reused_sess") or 0)
                return {"handshakes": full + resumed, "resumed": resumed}
        return None

    def candidates(self) -> list[psutil.Process]:
        return _procs([self.service.pid])


class NginxTarget(Target):
    """nginx, one worker: `stream { proxy_pass }` in tcp mode, `http { proxy_pass }`
    with upstream keepalive in http mode."""

    name = "nginx"
    # what a scenario adds (cache_hit: proxy_cache): lines of the http block
    # and of its `location /`
    http_extra = ""
    location_extra = ""

    def configure(self) -> list[str]:
        nofile = self.ctx.nofile
        load = ""
        if self.http:
            (self.dir / "tmp").mkdir(exist_ok=True)
            (self.dir / "tmp").chmod(0o755)
            block = self._http_block()
        else:
            so = self.ctx.tools.get("nginx-stream")
            load = f"load_module {so};\n" if so else ""
            block = self._stream_block()
        conf = f"""\
{load}daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{
    worker_connections {nofile - 100};
}}
{block}"""
        path = self.dir / "nginx.conf"
        path.write_text(conf)
        return [self.ctx.tools["nginx"], "-p", str(self.dir), "-c", str(path),
                "-e", str(self.dir / "error.log")]

    def _stream_block(self) -> str:
        return f"""\
stream {{
    server {{
        listen {self.addr[0]}:{self.addr[1]} backlog=4096;
        proxy_pass {self.ctx.origin.addr[0]}:{self.ctx.origin.addr[1]};
        proxy_connect_timeout 5s;
        proxy_timeout 300s;
    }}
}}
"""

    def _http_block(self) -> str:
        # keepalive_requests (client side and upstream side) lifted from their
        # default 1000, as in the origin: HAProxy and lb close no keep-alive
        # connection after a number of requests. proxy_max_temp_file_size 0:
        # a body larger than the proxy buffers waits for the client instead
        # of going to a temp file on disk; no proxy touches the disk.
        # X-Forwarded-*: the three fields lb adds by default.
        oaddr = self.ctx.origin.h2c_addr if self.h2b else self.ctx.origin.addr
        origin = f"{oaddr[0]}:{oaddr[1]}"
        # h2b: nginx proxies HTTP/2 to an origin only through its grpc module
        # (one stream per upstream connection, kept alive)
        upstream_pass = "grpc_pass grpc://origin;" if self.h2b else """proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
        return f"""\
http {{
    {self._access_log()}
    {_nginx_temp_paths(self.ctx.tools["nginx"], self.dir)}
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_header_timeout 10s;
    {self.http_extra}
    upstream origin {{
        server {origin};
        keepalive {self.origin_idle};
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {self.addr[0]}:{self.addr[1]}{self._listen_flags()} backlog=4096;{self._tls_server() if self.tls else ""}
        location / {{
            {upstream_pass}
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_max_temp_file_size 0;
            proxy_connect_timeout 5s;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            {self.location_extra}
        }}
    }}
}}
"""

    def _listen_flags(self) -> str:
        # nginx 1.22: `http2` on the listen line turns ALPN h2 on (before http/1.1).
        return " ssl http2" if self.h2 else " ssl" if self.tls else ""

    def _access_log(self) -> str:
        """Off, or JSON lines with the fields lb's json format has that nginx
        can say, written as nginx does by default (one write per request)."""
        if self.access_log is None:
            return "access_log off;"
        fields = ('"time":"$time_iso8601","client":"$remote_addr","method":"$request_method",'
                  '"host":"$host","path":"$request_uri","protocol":"$server_protocol","status":$status,'
                  '"bytes_in":$request_length,"bytes_out":$bytes_sent,"backend":"$upstream_addr",'
                  '"duration_ms":$request_time,"connect_ms":"$upstream_connect_time",'
                  '"response_ms":"$upstream_header_time","request_id":"$request_id",'
                  '"user_agent":"$http_user_agent","referer":"$http_referer"')
        return (f"log_format bench escape=json '{{{fields}}}';\n"
                f"    access_log {self.access_log} bench;")

    def _tls_server(self) -> str:
        # bench/tls.py's settings, lb's defaults; the client's cipher order
        # (nginx's default too). Tickets as lb and HAProxy issue them;
        # ssl_session_cache off (nginx's default, `none`, also stores nothing
        # but tells clients it may): lb keeps no session cache, HAProxy runs
        # without one, so all three resume by tickets alone. With one worker
        # a shared cache would save nothing that tickets do not.
        cert = self.ctx.certificate()
        return f"""
        ssl_certificate {cert.chain};
        ssl_certificate_key {cert.key};
        ssl_protocols {" ".join(tls.PROTOCOLS)};
        ssl_ciphers {tls.CIPHERS};
        ssl_conf_command Ciphersuites {tls.CIPHERSUITES};
        ssl_ecdh_curve {tls.GROUPS};
        ssl_prefer_server_ciphers off;
        ssl_session_cache off;
        ssl_session_tickets on;"""

    def candidates(self) -> list[psutil.Process]:
        return _children(self.service.pid)

    def log_tail(self) -> str | None:
        return tail(self.dir / "error.log")


class VarnishTarget(Target):
    """Varnish (Debian's varnishd) as a caching reverse proxy: the other anchor
    of the cache scenarios. One thread pool (`-p thread_pools=1`; Varnish
    still runs a thread per busy connection, on both cores, and its manager
    process), malloc storage of `storage` (the scenario sizes it like lb's
    cache), and a VCL of the backend alone: the built-in VCL caches what the
    origin's Cache-Control allows and passes requests with Authorization or
    Cookie. Varnish always writes its log records (VSL) to shared memory;
    nobody reads them here, and that cost is part of its figures."""

    name = "varnish"
    storage = "256m"

    def configure(self) -> list[str]:
        if not self.http or self.tls:
            raise BenchError(f"varnish runs in plain http scenarios only (mode {self.mode!r})")
        origin = self.ctx.origin.addr
        vcl = self.dir / "bench.vcl"
        vcl.write_text(f"""\
vcl 4.1;

backend origin {{
    .host = "{origin[0]}";
    .port = "{origin[1]}";
}}
""")
        vcl.chmod(0o644)     # read by the manager after it drops to the varnish user
        return [self.ctx.tools["varnishd"], "-F", "-a", f"{self.addr[0]}:{self.addr[1]}",
                "-f", str(vcl), "-s", f"malloc,{self.storage}", "-p", "thread_pools=1",
                "-n", str(self.dir / "varnishd"), "-P", str(self.dir / "varnishd.pid")]

    def candidates(self) -> list[psutil.Process]:
        # the child (cache-main) serves; the manager only watches it
        return _children(self.service.pid)


class LbTarget(Target):
    name = "lb"
    # what a scenario adds to the config (acl_cpu: an ACL and the lists that
    # use it): keys of [listeners.bench] (and its routes), and more tables
    listener_extra = ""
    config_extra = ""

    def cwd(self) -> Path | None:
        return REPO_ROOT     # `python -m lb` runs this checkout

    def configure(self) -> list[str]:
        # Run as whoever runs the bench: the default user "lb" may not exist here.
        # lb refuses root workers, so as root the workers run as nobody.
        account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
        user = account.pw_name
        group = grp.getgrgid(account.pw_gid).gr_name
        origin = self.ctx.origin.h2c_addr if self.h2b else self.ctx.origin.addr
        # http: the defaults of docs/configuration.md (X-Forwarded-For,
        # -Proto and -Host added), but as many idle origin connections kept
        # as nginx's `keepalive 64` and HAProxy's pool-max-conn 64.
        pool_keys = f'keepalive_max_idle = {self.origin_idle}\n' if self.http else ""
        if self.h2b:
            pool_keys += 'protocol = "h2"\n'
        conf = f"""\
[global]
workers = 1
admin_socket = "{self.dir}/admin.sock"
state_file = "{self.dir}/state.json"
user = "{user}"
group = "{group}"

[listeners.bench]
bind = ["{self.addr[0]}:{self.addr[1]}"]
mode = "{"http" if self.http else "tcp"}"
pool = "origin"
{self.listener_extra}
{self._tls_listener() if self.tls else ""}
[pools.origin]
algorithm = "roundrobin"
{pool_keys}
  [pools.origin.health]
  type = "none"

  [[pools.origin.backends]]
  address = "{origin[0]}:{origin[1]}"
{self.config_extra}"""
        if self.access_log is not None:
            conf += f'\n[logs.bench]\nformat = "json"\ntarget = "file:{self.access_log}"\n'

        path = self.dir / "lb.toml"
        path.write_text(conf)
        return [sys.executable, "-m", "lb", "run", "-c", str(path)]

    def _tls_listener(self) -> str:
        # bench/tls.py's settings, written out although they are lb's
        # defaults (docs/configuration.md, 3c): the three proxies stay alike
        # if those defaults change.
        cert = self.ctx.certificate()
        protocols = ", ".join(f'"{p}"' for p in tls.PROTOCOLS)
        return f"""
  [listeners.bench.tls]
  certificates = [{{ cert = "{cert.chain}", key = "{cert.key}" }}]
  protocols = [{protocols}]
  ciphers = "{tls.CIPHERS}"
  ciphersuites = "{tls.CIPHERSUITES}"
  groups = "{tls.GROUPS}"
{'  alpn = ["h2", "http/1.1"]' if self.h2 else ""}
"""

    def tls_counters(self) -> dict[str, int] | None:
        # lb's own counters (docs/tls.md): tls_handshakes counts every
        # completed handshake, tls_resumed those that resumed.
        if not self.tls:
            return None
        try:
            reply = json.loads(_unix_exchange(self.dir / "admin.sock",
                                              b'{"v": 1, "cmd": "status"}\n', lines=1))
        except (OSError, ValueError):
            return None
        workers = (reply.get("result") or {}).get("workers") or []
        return {"handshakes": sum(w.get("tls_handshakes", 0) for w in workers),
                "resumed": sum(w.get("tls_resumed", 0) for w in workers)}

    def candidates(self) -> list[psutil.Process]:
        # Worker(s) and maybe a checker; callers pick the busiest or fullest one.
        return _children(self.service.pid)


class LbBaseTarget(LbTarget):
    """lb from the --baseline checkout: the same config and user as lb."""

    name = BASELINE

    def cwd(self) -> Path | None:
        return self.ctx.opts.baseline     # `python -m lb` runs that checkout


TARGET_CLASSES = {cls.name: cls for cls in (DirectTarget, HAProxyTarget, NginxTarget, VarnishTarget,
                                            LbTarget, LbBaseTarget)}


def _unix_exchange(path: Path, request: bytes, lines: int | None = None) -> str:
    """The answer of a UNIX stream socket to one request: its first `lines`
    lines, or everything until it closes."""
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(str(path))
        s.sendall(request)
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if lines is not None and b"".join(chunks).count(b"\n") >= lines:
                break
    return b"".join(chunks).decode(errors="replace")


def _procs(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return out


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.Error:
        return []


def _cpu_seconds(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def _kernel_seconds(p: psutil.Process) -> float | None:
    try:
        return p.cpu_times().system
    except psutil.Error:
        return None


def _ctx_switches(p: psutil.Process) -> int | None:
    """Voluntary (a wait: epoll_wait found nothing) plus involuntary (preempted)."""
    try:
        c = p.num_ctx_switches()
    except psutil.Error:
        return None
    return c.voluntary + c.involuntary


def _num_fds(p: psutil.Process) -> int:
    try:
        return p.num_fds()
    except psutil.Error:
        return -1


def _memory(p: psutil.Process) -> dict[str, int | None]:
    """rss and uss in bytes (uss None when /proc/PID/smaps is unreadable)."""
    rss = p.memory_info().rss
    try:
        uss = p.memory_full_info().uss
    except (psutil.AccessDenied, AttributeError):
        uss = None
    return {"rss": rss, "uss": uss}


# --------------------------------------------------------------------------
# wrk

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}   # -> milliseconds
_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}

_RE_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.M)
_RE_TPS = re.compile(r"^Transfer/sec:\s+([0-9.]+)([KMGTP]?B)\s*$", re.M)
_RE_P99 = re.compile(r"^\s+99(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m|h)\s*$", re.M)
_RE_AVG = re.compile(r"^\s+Latency\s+([0-9.]+)(us|ms|s|m|h)\s", re.M)
_RE_TOTAL = re.compile(r"^\s+(\d+) requests in ([0-9.]+)(us|ms|s|m|h), ([0-9.]+)([KMGTP]?B) read", re.M)
_RE_SOCKERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_RE_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(text: str) -> dict:
    """wrk --latency output -> req_s, transfer bytes/s, p99/avg ms, counts, errors."""
    rps, tps, p99 = _RE_RPS.search(text), _RE_TPS.search(text), _RE_P99.search(text)
    if not (rps and tps and p99):
        raise BenchError("could not parse wrk output", text[-2000:])
    out = {
        "req_s": float(rps.group(1)),
        "bytes_s": float(tps.group(1)) * _SIZE_UNITS[tps.group(2)],
        "p99_ms": float(p99.group(1)) * _TIME_UNITS[p99.group(2)],
    }
    avg = _RE_AVG.search(text)
    out["avg_ms"] = float(avg.group(1)) * _TIME_UNITS[avg.group(2)] if avg else None
    total = _RE_TOTAL.search(text)
    out["requests"] = int(total.group(1)) if total else None
    errs = _RE_SOCKERR.search(text)
    errors = dict(zip(("connect", "read", "write", "timeout"),
                      (int(x) for x in errs.groups()))) if errs else {}
    non2xx = _RE_NON2XX.search(text)
    if non2xx:
        errors["non_2xx_3xx"] = int(non2xx.group(1))
    out["errors"] = {k: v for k, v in errors.items() if v}
    return out


def run_wrk(ctx: "Context", url: str, seconds: int, headers: tuple[str, ...] = (),
            env: dict[str, str] | None = None, script: str | None = None) -> dict:
    cmd = [*ctx.client_wrap, ctx.tools["wrk"], "-t", str(ctx.opts.threads), "-c", str(ctx.opts.connections),
           "-d", f"{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:                       # a Lua script that makes each request (jwt_cpu: a new token each)
        cmd += ["-s", script]
    cmd.append(url)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env} if env else None, preexec_fn=_die_with_parent)
    try:
        stdout, stderr = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + 30}s") from exc
    finally:
        if proc.poll() is None:      # timeout or Ctrl-C: kill and reap, leave no zombie
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with code {proc.returncode}", (stderr or stdout)[-2000:])
    result = parse_wrk(stdout)
    if not result["requests"]:
        raise BenchError("wrk completed no request", stdout[-2000:])
    return result


def _host_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _kernel_threads_cpu_seconds() -> float:
    """CPU of the kernel's own threads (kthreadd's children: kworkers,
    ksoftirqd): where the kernel runs work it defers, such as a sockmap's
    redirected sends (sk_psock_backlog runs on a workqueue)."""
    total = 0.0
    for p in psutil.process_iter(["ppid"]):
        try:
            if p.pid == 2 or p.info["ppid"] == 2:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _children_cpu_seconds() -> float:
    """CPU of our waited-for children (wrk), from getrusage."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wrk_measure(ctx: "Context", target: Target, path: str,
                headers: tuple[str, ...] = (), gbps: bool = False,
                env: dict[str, str] | None = None, script: str | None = None) -> dict:
    """Warm up, then one timed wrk run; add CPU shares and the worker's RSS.

    cpu_us_req is the CPU (user + system) of the target's whole process
    tree per request wrk completed, in microseconds; cpu_pct is the busiest
    process of the target (its data-plane worker); sys_us_req is the kernel's
    part of cpu_us_req and ctxsw_req the tree's context switches per request
    (waits and preemptions); other_cpu_pct is what the
    host spent outside wrk, the target, the origin and the kernel's threads
    during the run: anything well above zero means a noisy machine.
    """
    url = target.url(path)
    hdr = "".join(f' -H "{h}"' for h in headers)
    prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
    if ctx.opts.warmup_s > 0:
        run_wrk(ctx, url, max(1, round(ctx.opts.warmup_s)), headers, env, script)
    seconds = max(1, round(ctx.opts.duration_s))
    lua = f" -s {script}" if script else ""
    log(f"  {target.name}: {prefix}wrk -t{ctx.opts.threads} -c{ctx.opts.connections} -d{seconds}s --latency{hdr}{lua} "
        f"{url}")
    result = _measure_run(ctx, target, lambda: run_wrk(ctx, url, seconds, headers, env, script))
    if gbps:
        result["gbps"] = result.pop("bytes_s") / 1e9
    else:
        result.pop("bytes_s")
    if result["errors"]:
        log(f"  {target.name}: wrk reported errors {result['errors']}")
    return result


def _measure_run(ctx: "Context", target: Target, run) -> dict:
    """run() (one timed load-generator run, our waited-for child: its result
    dict with "requests") with the CPU accounting of wrk_measure around it."""
    procs = target.candidates()
    own = {p.pid: p for p in target.processes()}
    tree = dict(own)
    origin = ctx.origin.worker()
    if origin is not None:
        tree[origin.pid] = origin
    accepts0 = ctx.origin.accepts()
    tls0 = target.tls_counters()
    cpu0 = {pid: _cpu_seconds(p) for pid, p in tree.items()}
    sys0 = {pid: _kernel_seconds(p) for pid, p in own.items()}
    csw0 = {pid: _ctx_switches(p) for pid, p in own.items()}
    host0, wrk0, kth0 = _host_busy_seconds(), _children_cpu_seconds(), _kernel_threads_cpu_seconds()
    t0 = time.monotonic()
    result = run()
    wall = time.monotonic() - t0
    host1, wrk1, kth1 = _host_busy_seconds(), _children_cpu_seconds(), _kernel_threads_cpu_seconds()
    accepts1 = ctx.origin.accepts()
    result.update(_tls_delta(tls0, target.tls_counters()))
    # New origin connections during the timed run (the second query counts
    # itself): how well a proxy reuses its keep-alive connections to the origin.
    result["origin_conns"] = (accepts1 - accepts0 - 1
                              if accepts0 is not None and accepts1 is not None else None)
    used = {}
    for pid, p in tree.items():
        c1 = _cpu_seconds(p)
        if c1 is not None and cpu0[pid] is not None:
            used[pid] = c1 - cpu0[pid]

    # The proxy's own cost per request: unlike req/s, it leaves out how the two
    # cores were shared with wrk and the origin during the run.
    own_used = [used[pid] for pid in own if pid in used]
    result["cpu_us_req"] = 1e6 * sum(own_used) / result["requests"] if own_used else None
    # Where that cost is: the kernel's share (on loopback, a send also pays
    # for the peer's receive path and its wake-up) and how often the proxy
    # was switched out, to wait (epoll_wait found nothing) or preempted.
    result["sys_us_req"] = result["ctxsw_req"] = None
    if own_used:
        sys1 = {pid: _kernel_seconds(p) for pid, p in own.items()}
        csw1 = {pid: _ctx_switches(p) for pid, p in own.items()}
        sys_used = [sys1[pid] - sys0[pid] for pid in own if sys0[pid] is not None and sys1[pid] is not None]
        csw_used = [csw1[pid] - csw0[pid] for pid in own if csw0[pid] is not None and csw1[pid] is not None]
        if sys_used:
            result["sys_us_req"] = 1e6 * sum(sys_used) / result["requests"]
        if csw_used:
            result["ctxsw_req"] = sum(csw_used) / result["requests"]
    result["cpu_pct"] = result["rss_mib"] = None
    busiest = max((p for p in procs if p.pid in used), key=lambda p: used[p.pid], default=None)
    if busiest is not None:
        result["cpu_pct"] = 100.0 * used[busiest.pid] / wall
        try:
            result["rss_mib"] = busiest.memory_info().rss / ONE_MIB
        except psutil.Error:
            pass
    result["origin_cpu_pct"] = (100.0 * used[origin.pid] / wall
                                if origin is not None and origin.pid in used else None)
    result["wrk_cpu_pct"] = 100.0 * (wrk1 - wrk0) / wall
    # The whole machine's busy CPU per request (wrk and the origin included):
    # work a proxy leaves to the kernel in its peers' context (forward =
    # "sockmap") shows here, not in cpu_us_req.
    result["host_us_req"] = 1e6 * (host1 - host0) / result["requests"] if result["requests"] else None
    # The same without the rest of a shared machine: the proxy's tree, the
    # origin, wrk and the kernel's threads, per request.
    result["total_us_req"] = (1e6 * (sum(used.values()) + (wrk1 - wrk0) + (kth1 - kth0)) / result["requests"]
                              if result["requests"] else None)
    result["kthreads_cpu_pct"] = 100.0 * (kth1 - kth0) / wall
    other = (host1 - host0) - (wrk1 - wrk0) - sum(used.values()) - (kth1 - kth0)
    result["other_cpu_pct"] = max(0.0, 100.0 * other / wall)
    if result["other_cpu_pct"] > NOISY_OTHER_CPU_PCT:
        log(f"  {target.name}: other processes used {result['other_cpu_pct']:.0f}% CPU "
            f"during the run; figures are noisy")
    return result


def _tls_delta(before: dict | None, after: dict | None) -> dict:
    """TLS handshakes a target completed between two readings of its
    counters, and the share that resumed a session (None: not counted)."""
    if before is None or after is None:
        return {"tls_handshakes": None, "tls_resumed_pct": None}
    n = after["handshakes"] - before["handshakes"]
    resumed = after["resumed"] - before["resumed"]
    return {"tls_handshakes": n, "tls_resumed_pct": 100.0 * resumed / n if n else None}


# --------------------------------------------------------------------------
# h2load: HTTP/2, many streams per connection

_RE_H2_FINISHED = re.compile(r"^finished in ([0-9.]+)(us|ms|s|m|h), ([0-9.]+) req/s, ([0-9.]+)([KMGTP]?B)/s",
                             re.M)
_RE_H2_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                             r"(\d+) failed, (\d+) errored, (\d+) timeout", re.M)
_RE_H2_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_RE_H2_PROTO = re.compile(r"^Application protocol: (\S+)", re.M)
_RE_H2_MEAN = re.compile(r"^time for request:\s+\S+\s+\S+\s+([0-9.]+)(us|ms|s|m|h)\s", re.M)


def parse_h2load(text: str) -> dict:
    """h2load output -> req_s (succeeded requests over the timed duration),
    bytes_s, avg_ms, requests (succeeded), protocol, errors. No percentiles:
    p99 comes from its --log-file (h2load_p99_ms)."""
    fin, reqs = _RE_H2_FINISHED.search(text), _RE_H2_REQUESTS.search(text)
    if not (fin and reqs):
        raise BenchError("could not parse h2load output", text[-2000:])
    seconds = float(fin.group(1)) * _TIME_UNITS[fin.group(2)] / 1e3
    done, ok, failed, errored, timeout = (int(reqs.group(i)) for i in (3, 4, 5, 6, 7))
    out = {"req_s": ok / seconds if seconds > 0 else 0.0,
           "bytes_s": float(fin.group(4)) * _SIZE_UNITS[fin.group(5)],
           "requests": ok, "p99_ms": None}
    mean = _RE_H2_MEAN.search(text)
    out["avg_ms"] = float(mean.group(1)) * _TIME_UNITS[mean.group(2)] if mean else None
    proto = _RE_H2_PROTO.search(text)
    out["protocol"] = proto.group(1) if proto else None
    errors = {"failed": failed, "errored": errored, "timeout": timeout}
    status = _RE_H2_STATUS.search(text)
    if status:
        errors["non_2xx"] = sum(int(status.group(i)) for i in (2, 3, 4))
    out["errors"] = {k: v for k, v in errors.items() if v}
    return out


def h2load_p99_ms(log_file: Path) -> float | None:
    """The 99th percentile (nearest rank) of the per-request durations in an
    h2load --log-file (tab-separated: start time in us since the epoch, status,
    us until the end of the response); failed streams (status -1) left out."""
    durations = []
    with open(log_file) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] != "-1":
                durations.append(int(cols[2]))
    if not durations:
        return None
    durations.sort()
    return durations[max(0, -(-99 * len(durations) // 100) - 1)] / 1e3


def run_h2load(ctx: "Context", url: str, seconds: int, connections: int, streams: int,
               log_file: Path | None = None) -> dict:
    """One h2load run, one thread, `connections` HTTP/2 connections with up to
    `streams` requests in flight on each, for `seconds`; it must have spoken h2."""
    cmd = [*ctx.client_wrap, ctx.tools["h2load"], "-t", "1", "-c", str(connections), "-m", str(streams),
           "-D", str(seconds)]
    if log_file is not None:
        cmd.append(f"--log-file={log_file}")
    cmd.append(url)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent)
    try:
        stdout, stderr = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"h2load did not finish within {seconds + 30}s") from exc
    finally:
        if proc.poll() is None:      # timeout or Ctrl-C: kill and reap, leave no zombie
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"h2load exited with code {proc.returncode}", (stderr or stdout)[-2000:])
    result = parse_h2load(stdout)
    if not result["requests"]:
        raise BenchError("h2load completed no request", (stdout + stderr)[-2000:])
    if result["protocol"] != "h2":
        raise BenchError(f"h2load spoke {result['protocol']}, not h2", stdout[-2000:])
    return result


def h2load_measure(ctx: "Context", target: Target, path: str, connections: int, streams: int) -> dict:
    """wrk_measure with h2load: an untimed h2load run (--warmup), then a timed
    one of --duration with the same CPU accounting around it; cpu_us_req is
    per succeeded request, p99 from the timed run's per-request log. The
    warm-up is a run of its own rather than h2load's --warm-up-time so that
    the CPU sampled covers exactly the requests counted."""
    url = target.url(path)
    if ctx.opts.warmup_s > 0:
        run_h2load(ctx, url, max(1, round(ctx.opts.warmup_s)), connections, streams)
    seconds = max(1, round(ctx.opts.duration_s))
    log_file = target.dir / "h2load.log"
    log(f"  {target.name}: h2load -t1 -c{connections} -m{streams} -D{seconds} --log-file={log_file.name} {url}")
    result = _measure_run(ctx, target,
                          lambda: run_h2load(ctx, url, seconds, connections, streams, log_file))
    result.pop("bytes_s")
    result.pop("protocol")
    result["p99_ms"] = h2load_p99_ms(log_file)
    log_file.unlink()      # tens of MB
    if result["errors"]:
        log(f"  {target.name}: h2load reported errors {result['errors']}")
    return result


# --------------------------------------------------------------------------
# Idle connections: memory held per connection by one worker.

def open_idle_connections(addr: tuple[str, int], n: int, timeout: float) -> list[socket.socket]:
    """n connected sockets that never send a byte (bounded in time)."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    try:
        for i in range(n):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"opened only {i} of {n} connections within {timeout:.0f}s")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(min(left, 5.0))
            try:
                s.connect(addr)
            except OSError as exc:
                raise BenchError(f"connection {i + 1} of {n} to {addr[0]}:{addr[1]} failed: {exc}") from exc
    except BaseException:
        close_connections(socks)
        raise
    return socks


IDLE_TLS_THREADS = 4   # handshakes in flight at once: the client's share of the two cores


def open_tls_connections(addr: tuple[str, int], n: int, timeout: float,
                         tls_client: ssl.SSLContext) -> list[socket.socket]:
    """n TLS connections, each with its handshake completed (a full one: the
    harness's client never resumes) and one keep-alive GET /small answered,
    then left idle: every proxy has set the connection up entirely, its
    request state included, and holds it open waiting for the next request.
    A few threads at a time: Python's ssl releases the GIL in the handshake."""
    req = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
    deadline = time.monotonic() + timeout

    def one(i: int) -> socket.socket:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"could not open {n} TLS connections within {timeout:.0f}s")
        try:
            s = connect(addr, min(left, 5.0), tls_client)
        except OSError as exc:
            raise BenchError(f"TLS connection {i + 1} of {n} to {addr[0]}:{addr[1]} failed: {exc}") from exc
        try:
            s.sendall(req)
            _read_response(s)
        except (OSError, BenchError) as exc:
            s.close()
            raise BenchError(f"TLS connection {i + 1} of {n}: GET /small failed: {exc}") from exc
        return s

    pool = concurrent.futures.ThreadPoolExecutor(IDLE_TLS_THREADS)
    futures = [pool.submit(one, i) for i in range(n)]
    try:
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        return [f.result() for f in futures]      # raises the first failure
    except BaseException:
        pool.shutdown(cancel_futures=True)        # lets those in flight end, then closes all
        close_connections([f.result() for f in futures
                           if f.done() and not f.cancelled() and f.exception() is None])
        raise
    finally:
        pool.shutdown()


def _read_response(s: socket.socket) -> None:
    """One whole response with a Content-Length body (all the origin sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise BenchError("connection closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if not head.startswith(b"HTTP/1.1 200") or not m:
        raise BenchError(f"unexpected response {head[:64]!r}")
    while len(body) < int(m.group(1)):
        chunk = s.recv(4096)
        if not chunk:
            raise BenchError("connection closed in the response body")
        body += chunk


def close_connections(socks: list[socket.socket]) -> None:
    # RST instead of FIN: no TIME_WAIT left behind for the next scenario.
    linger = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        s.close()


def idle_measure(ctx: "Context", target: Target, n: int) -> dict:
    """RSS/USS of the worker before and after it holds n idle client connections.

    tcp: connections that never send a byte, each with its origin connection
    (2 fds in the worker). https: each after its handshake and one request
    (open_tls_connections), 1 fd each (a few origin connections besides,
    kept idle in the proxy's pool)."""
    procs = target.candidates()
    if not procs:
        raise BenchError(f"{target.name}: no worker process found")
    # The readiness probe's connection may still be closing: let fd counts settle.
    deadline = time.monotonic() + 3.0
    counts = [_num_fds(p) for p in procs]
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = [_num_fds(p) for p in procs]
        if now == counts:
            break
        counts = now
    before = {}
    for p in procs:
        before[p.pid] = (_num_fds(p), _memory(p))
    origin = ctx.origin.worker()
    origin_fds0 = _num_fds(origin) if origin else -1

    per_conn = 2 if target.mode == "tcp" else 1      # worker fds per client connection
    log(f"  {target.name}: opening {n} idle {'TLS ' if target.tls else ''}connections "
        f"to {target.addr[0]}:{target.addr[1]}")
    if target.tls:
        socks = open_tls_connections(target.addr, n, IDLE_OPEN_TIMEOUT_S, target.tls_client())
    else:
        socks = open_idle_connections(target.addr, n, IDLE_OPEN_TIMEOUT_S)
    try:
        # Wait until one worker holds every connection (per_conn fds each); if the
        # count stops moving short of that, accept what it holds after 2 s of calm.
        deadline = time.monotonic() + IDLE_SETTLE_TIMEOUT_S
        last, last_change = -1, time.monotonic()
        while True:
            grown = max(_num_fds(p) - before[p.pid][0] for p in procs)
            now = time.monotonic()
            if grown != last:
                last, last_change = grown, now
            if (grown >= per_conn * n or now > deadline
                    or (grown >= n * per_conn // 2 and now - last_change > 2.0)):
                break
            time.sleep(0.1)
        time.sleep(0.5)    # let allocations that follow the last accept land
        worker = max(procs, key=lambda p: _num_fds(p) - before[p.pid][0])
        fds_grown = _num_fds(worker) - before[worker.pid][0]
        after = _memory(worker)
        origin_conns = (_num_fds(origin) - origin_fds0) if origin else None
    finally:
        close_connections(socks)

    mem0 = before[worker.pid][1]
    result = {
        "conns": n,
        "worker_fds_added": fds_grown,
        "origin_conns_added": origin_conns,
        "rss_before_mib": mem0["rss"] / ONE_MIB,
        "rss_after_mib": after["rss"] / ONE_MIB,
        "rss_growth_mib": (after["rss"] - mem0["rss"]) / ONE_MIB,
        "rss_per_conn": (after["rss"] - mem0["rss"]) / n,
        "uss_growth_mib": None,
        "uss_per_conn": None,
    }
    if mem0["uss"] is not None and after["uss"] is not None:
        result["uss_growth_mib"] = (after["uss"] - mem0["uss"]) / ONE_MIB
        result["uss_per_conn"] = (after["uss"] - mem0["uss"]) / n
    if fds_grown < per_conn * n:
        log(f"  {target.name}: worker gained only {fds_grown} fds for {n} connections "
            f"(expected {per_conn * n}); figures cover what it held")
    return result


# --------------------------------------------------------------------------
# Scenarios and reporting

@dataclasses.dataclass(frozen=True)
class Absolute:
    """A GOALS entry on lb's own figure instead of on lb/best (memory per
    connection, say): met when lb's value is on the metric's better side."""
    value: float


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str                  # format spec for the table
    better: str | None = None  # "higher" | "lower": ratios are printed; None: no ratio


CPU_US_REQ_METRIC = Metric("cpu_us_req", "cpu us/req", ",.1f", "lower")
REQ_S_METRIC = Metric("req_s", "req/s", ",.0f", "higher")
P99_METRIC = Metric("p99_ms", "p99 ms", ".2f", "lower")
HOST_US_REQ_METRIC = Metric("host_us_req", "host us/req", ",.1f", "lower")
TOTAL_US_REQ_METRIC = Metric("total_us_req", "total us/req", ",.1f", "lower")
KTHREADS_METRIC = Metric("kthreads_cpu_pct", "kthreads cpu %", ".0f")
# The headline figures of a wrk scenario, in table order: CPU per request
# first, the proxy's own cost, whatever share of the two cores it got.
WRK_METRICS = (CPU_US_REQ_METRIC, REQ_S_METRIC, P99_METRIC)
GBPS_METRIC = Metric("gbps", "GB/s", ".3f", "higher")
WRK_GBPS_METRICS = (CPU_US_REQ_METRIC, REQ_S_METRIC, GBPS_METRIC, P99_METRIC)   # bulk scenarios
WRK_EXTRA_METRICS = (
    Metric("sys_us_req", "sys us/req", ",.1f"),
    Metric("ctxsw_req", "ctxsw/req", ".3f"),
    Metric("cpu_pct", "cpu %", ".0f"),
    Metric("rss_mib", "rss MiB", ".1f"),
    Metric("origin_cpu_pct", "origin cpu %", ".0f"),
    Metric("other_cpu_pct", "other cpu %", ".0f"),
)
ORIGIN_CONNS_METRIC = Metric("origin_conns", "origin conns", ",.0f")
# Idle connections: the worker's memory before, after, and per connection.
IDLE_METRICS = (
    Metric("conns", "conns", "d"),
    Metric("worker_fds_added", "fds added", "d"),
    Metric("rss_before_mib", "rss0 MiB", ".1f"),
    Metric("rss_after_mib", "rss1 MiB", ".1f"),
    Metric("rss_growth_mib", "rss +MiB", ".2f", "lower"),
    Metric("rss_per_conn", "rss B/conn", ",.0f", "lower"),
    Metric("uss_growth_mib", "uss +MiB", ".2f", "lower"),
    Metric("uss_per_conn", "uss B/conn", ",.0f", "lower"),
)
# https: what the proxy's own counters say it did during the timed run (lb
# and HAProxy count handshakes; nginx has no counter: "-"). They show which
# handshake a scenario measured.
TLS_METRICS = (
    Metric("tls_handshakes", "handshakes", ",.0f"),
    Metric("tls_resumed_pct", "resumed %", ".0f"),
)
HTTPS_WRK_METRICS = WRK_METRICS + WRK_EXTRA_METRICS + (ORIGIN_CONNS_METRIC,) + TLS_METRICS


def scenario_mode(scenario) -> str:
    return getattr(scenario, "MODE", "tcp")


def load_scenarios() -> dict:
    import bench.scenarios as pkg
    mods = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"bench.scenarios.{info.name}"))
    mods.sort(key=lambda m: (getattr(m, "ORDER", 1000), m.NAME))
    return {m.NAME: m for m in mods}


def scenario_best_of(scenario) -> tuple[str, ...]:
    """The anchors of a scenario's lb/best: its own BEST_OF (cache_hit: nginx
    and Varnish), else HAProxy and nginx."""
    return getattr(scenario, "BEST_OF", BEST_OF)


def best_of(results: dict, metrics: tuple[Metric, ...],
            among: tuple[str, ...] = BEST_OF) -> dict[str, str]:
    """{metric: "haproxy" | "nginx"}: the better of `among` on each figure with
    a direction, when every one of them ran and has it."""
    out = {}
    runs = [results.get(t) for t in among]
    if not all(r and r.get("ok") for r in runs):
        return out
    for m in metrics:
        if not m.better:
            continue
        values = {t: results[t].get(m.key) for t in among}
        if not all(_is_number(v) and v > 0 for v in values.values()):
            continue
        pick = max if m.better == "higher" else min
        out[m.key] = pick(among, key=lambda t: values[t])
    return out


def ratios(results: dict, metrics: tuple[Metric, ...], best: bool = False,
           among: tuple[str, ...] = BEST_OF) -> dict:
    """{"lb/haproxy": {metric: x}, ...} for metrics with a direction.

    With best, also "lb/best": lb against the better of `among` (HAProxy and
    nginx unless the scenario says) on each figure (which one it is may
    differ per figure: see best_of).
    """
    out = {}
    lb = results.get("lb")
    if not (lb and lb.get("ok")):
        return out
    best_anchor = best_of(results, metrics, among) if best else {}
    for anchor in ANCHORS:
        if anchor == "best":
            others = {m.key: results[best_anchor[m.key]] for m in metrics if m.key in best_anchor}
        else:
            other = results.get(anchor)
            if not (other and other.get("ok")):
                continue
            others = {m.key: other for m in metrics}
        row = {}
        for m in metrics:
            if m.key not in others:
                continue
            a, b = lb.get(m.key), others[m.key].get(m.key)
            if m.better and _is_number(a) and _is_number(b) and b > 0:
                row[m.key] = a / b
        if row:
            out[f"lb/{anchor}"] = row
    return out


def has_goals(scenario) -> bool:
    """A scenario with GOALS (even empty) gets the lb/best ratio."""
    return hasattr(scenario, "GOALS")


def goal_report(scenario, results: dict, rat: dict, spread: dict | None = None) -> dict:
    """{metric: {"target", "better", "vs", "ratio", "met", "rounds_disagree"}} for
    the scenario's GOALS: lb against the better of HAProxy and nginx.

    `ratio` and `met` are None when lb (or an anchor) did not run; `met` comes
    from the ratio of the medians, `rounds_disagree` says whether the
    per-round ratios fall on both sides of the target. An Absolute goal has
    "absolute": true, lb's own median as "value" (ratio and vs None), and no
    rounds to disagree (the scenarios that have one run one round).
    """
    metrics = {m.key: m for m in scenario.METRICS}
    anchors = best_of(results, scenario.METRICS, scenario_best_of(scenario))
    lb = results.get("lb", {})
    out = {}
    for key, target in getattr(scenario, "GOALS", {}).items():
        m = metrics[key]
        if isinstance(target, Absolute):
            value = lb.get(key) if lb.get("ok") else None
            met = None
            if _is_number(value):
                met = value >= target.value if m.better == "higher" else value <= target.value
            out[key] = {"target": target.value, "absolute": True, "better": m.better, "vs": None,
                        "value": value, "ratio": None, "met": met, "rounds_disagree": False}
            continue
        ratio = rat.get("lb/best", {}).get(key)
        met = None
        if ratio is not None:
            met = ratio >= target if m.better == "higher" else ratio <= target
        s = (spread or {}).get("lb/best", {}).get(key)
        out[key] = {"target": target, "better": m.better, "vs": anchors.get(key),
                    "ratio": ratio, "met": met,
                    "rounds_disagree": bool(s and s["n"] > 1 and s["min"] < target < s["max"])}
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _median(values: list):
    """Median of the numbers in values (None ignored); None when there are none."""
    nums = sorted(v for v in values if _is_number(v))
    if not nums:
        return None
    mid = len(nums) // 2
    return nums[mid] if len(nums) % 2 else (nums[mid - 1] + nums[mid]) / 2


def median_results(rounds: list[dict]) -> dict:
    """Per target, the median of every numeric figure over the rounds it ran in.

    `errors` counts are summed over rounds. A target that failed in a round
    gets that round's failure instead (with the round in its message).
    """
    names = [t for t in ALL_TARGETS if any(t in rd["results"] for rd in rounds)]
    out: dict[str, dict] = {}
    for tname in names:
        ran = [(i, rd["results"][tname]) for i, rd in enumerate(rounds) if tname in rd["results"]]
        failed = [(i, r) for i, r in ran if not r.get("ok")]
        if failed:
            i, res = failed[0]
            out[tname] = dict(res)
            if len(rounds) > 1:
                out[tname]["error"] = f"round {i + 1}: {res.get('error')}"
            continue
        raws = [r for _, r in ran]
        agg: dict = {}
        for key in raws[0]:
            vals = [r.get(key) for r in raws]
            if key == "errors":
                total: dict[str, int] = {}
                for errs in vals:
                    for k, v in (errs or {}).items():
                        total[k] = total.get(k, 0) + v
                agg[key] = total
            elif all(v is None or _is_number(v) for v in vals):
                agg[key] = _median(vals)
            else:
                agg[key] = vals[0]
        out[tname] = agg
    return out


def ratio_spread(rounds: list[dict]) -> dict:
    """{"lb/haproxy": {metric: {"min", "max", "n"}}} over the per-round ratios."""
    seen: dict[str, dict[str, list[float]]] = {}
    for rd in rounds:
        for key, row in rd.get("ratios", {}).items():
            for metric, value in row.items():
                seen.setdefault(key, {}).setdefault(metric, []).append(value)
    return {key: {m: {"min": min(v), "max": max(v), "n": len(v)} for m, v in row.items()}
            for key, row in seen.items()}


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    return format(value, fmt)


def format_table(name: str, scenario, header: str, results: dict, rat: dict,
                 spread: dict | None = None, n_rounds: int = 1) -> str:
    """The table; with n_rounds > 1 figures are medians and each ratio shows
    the min..max of its per-round values (`spread`)."""
    metrics = scenario.METRICS
    lines = [f"== {name}: {scenario.SUMMARY}", f"   {header}"]
    if n_rounds > 1:
        lines.append(f"   median of {n_rounds} rounds; each round runs every target once, "
                     f"started afresh, in rotated order")
    widths = [max(len(m.label), 9) for m in metrics]
    lines.append("   " + f"{'proxy':<9}" + "".join(f"{m.label:>{w + 2}}" for m, w in zip(metrics, widths)))
    for tname, res in results.items():
        if res.get("ok"):
            cells = "".join(f"{_cell(res.get(m.key), m.fmt):>{w + 2}}" for m, w in zip(metrics, widths))
            note = f"   errors: {res['errors']}" if res.get("errors") else ""
            lines.append(f"   {tname:<9}{cells}{note}")
        else:
            lines.append(f"   {tname:<9}  FAILED: {res.get('error')}")
    ratio_metrics = [m for m in metrics if m.better]
    if "lb" in results and ratio_metrics:
        if not results["lb"].get("ok"):
            lines.append("   ratios: n/a (lb failed)")
        elif rat and n_rounds > 1:
            lines.append("   ratios of the medians (rounds: min..max of the per-round ratios):")
            for m in ratio_metrics:
                keys = [key for key, row in rat.items() if m.key in row]
                width = max((len(k) for k in keys), default=0)
                for n, key in enumerate(keys):
                    line = f"     {m.label:<12} {key:<{width}} = {rat[key][m.key]:.2f}x"
                    s = (spread or {}).get(key, {}).get(m.key)
                    if s:
                        line += f" (rounds {s['min']:.2f}..{s['max']:.2f})"
                    if n == 0:
                        line += f"   ({m.better} is better)"
                    if s and s["min"] < 1.0 < s["max"]:
                        line += "   <- rounds straddle 1.00"
                    lines.append(line)
        elif rat:
            lines.append("   ratios:")
            for m in ratio_metrics:
                parts = [f"{key} = {row[m.key]:.2f}x" for key, row in rat.items() if m.key in row]
                if parts:
                    lines.append(f"     {m.label:<12} " + "   ".join(parts) + f"   ({m.better} is better)")
    if has_goals(scenario):
        lines.extend(_format_goals(scenario, results, rat, spread))
    for tname, res in results.items():
        if not res.get("ok") and res.get("log_tail"):
            lines.append(f"   --- {tname} log tail ---")
            lines.extend("   | " + ln for ln in res["log_tail"].splitlines())
    return "\n".join(lines)


def _format_goals(scenario, results: dict, rat: dict, spread: dict | None) -> list[str]:
    """Which of HAProxy and nginx is "best" on each figure, then lb against the
    scenario's GOALS (when lb ran): those on lb/best, then the Absolute ones."""
    among = scenario_best_of(scenario)
    anchors = best_of(results, scenario.METRICS, among)
    labels = {m.key: m for m in scenario.METRICS}
    goals = goal_report(scenario, results, rat, spread)
    relative = {k: g for k, g in goals.items() if not g.get("absolute")}
    absolute = {k: g for k, g in goals.items() if g.get("absolute")}
    lines = []
    if anchors:
        picks = ", ".join(f"{labels[k].label} {t} ({_cell(results[t].get(k), labels[k].fmt)})"
                          for k, t in anchors.items())
        lines.append(f"   best of {' and '.join(among)}: {picks}")
    if not results.get("lb", {}).get("ok"):
        return lines
    if absolute:
        lines.append("   targets on lb's own figure:")
        for key, g in absolute.items():
            m = labels[key]
            sign = ">=" if g["better"] == "higher" else "<="
            verdict = "n/a" if g["met"] is None else "met" if g["met"] else "NOT met"
            lines.append(f"     {m.label:<12} lb = {_cell(g['value'], m.fmt)}, "
                         f"target {sign} {_cell(g['target'], m.fmt)}: {verdict}")
    if relative and anchors:
        lines.append("   targets, lb/best (lb against the better of the two on that figure):")
        for key, g in relative.items():
            sign = ">=" if g["better"] == "higher" else "<="
            if g["ratio"] is None:
                lines.append(f"     {labels[key].label:<12} target {sign} {g['target']:.2f}x: n/a")
                continue
            verdict = "met" if g["met"] else "NOT met"
            note = "   <- rounds on both sides of the target" if g["rounds_disagree"] else ""
            lines.append(f"     {labels[key].label:<12} lb/best = {g['ratio']:.2f}x (vs {g['vs']}), "
                         f"target {sign} {g['target']:.2f}x: {verdict}{note}")
    return lines


@dataclasses.dataclass
class Options:
    scenarios: list[str]
    duration_s: float = 10.0
    warmup_s: float = 1.0
    connections: int = 64
    threads: int = 1
    idle_conns: int = 4000
    only: tuple[str, ...] = ONLY_NAMES
    direct: bool = True
    as_json: bool = False
    save: bool = False
    keep_workdir: bool = False
    repeat: int = 1              # rounds for wrk scenarios; figures are medians
    baseline: Path | None = None  # another lb checkout, run as lb-base (checked: baseline_checkout)


@dataclasses.dataclass
class Context:
    opts: Options
    tools: dict
    workdir: Path
    ports: PortAllocator
    nofile: int
    origin: Origin | None = None
    # where the targets listen and how wrk is started: loopback and as is,
    # or the hosts topology's (bench/hosts.py) while a HOSTS scenario runs
    proxy_host: str = "127.0.0.1"
    client_wrap: tuple[str, ...] = ()
    _cert: tls.Certificate | None = None
    _tls_client: ssl.SSLContext | None = None
    _fresh_tls_lib: Path | None = None

    def certificate(self) -> tls.Certificate:
        """The certificate every https target serves: made on first use, once per run."""
        if self._cert is None:
            self._cert = tls.make_certificate(self.workdir / "tls")
        return self._cert

    def tls_client(self) -> ssl.SSLContext:
        if self._tls_client is None:
            self._tls_client = tls.client_context(self.certificate())
        return self._tls_client

    def fresh_tls_env(self) -> dict[str, str]:
        """wrk's environment for a full TLS handshake on every new connection
        (bench/fresh_tls_session.c), the library built on first use."""
        if self._fresh_tls_lib is None:
            cc = find_tool("cc") or find_tool("gcc")
            if cc is None:
                raise BenchError(f"no C compiler (cc) to build {FRESH_TLS_SOURCE.name} for wrk")
            lib = self.workdir / "fresh_tls_session.so"
            out = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(FRESH_TLS_SOURCE), "-ldl"],
                                 capture_output=True, text=True, timeout=60, check=False)
            if out.returncode != 0:
                raise BenchError(f"building {FRESH_TLS_SOURCE.name} failed", out.stderr[-2000:])
            self._fresh_tls_lib = lib
        return {"LD_PRELOAD": str(self._fresh_tls_lib)}


def run_targets(opts: Options) -> list[str]:
    """The targets of this run, in ALL_TARGETS order: the --only proxies,
    direct unless --no-direct, lb-base with --baseline."""
    flags = {"direct": opts.direct, BASELINE: opts.baseline is not None}
    return [t for t in ALL_TARGETS if flags.get(t, t in opts.only)]


def scenario_targets(ctx: Context, scenario) -> list[str]:
    return [t for t in run_targets(ctx.opts) if t in scenario.TARGETS]


def run_scenario(ctx: Context, scenario, order: list[str] | None = None,
                 tag: str | None = None) -> dict:
    """Each target in `order` (default: ALL_TARGETS order) started, measured, stopped.

    `tag` names the targets' work dirs (<tag>-<target>) and prefixes the log
    lines; default the scenario name. Results come back in ALL_TARGETS order.
    """
    names = order if order is not None else scenario_targets(ctx, scenario)
    tag = tag or scenario.NAME
    results: dict[str, dict] = {}
    for tname in names:
        target = TARGET_CLASSES[tname](ctx, tag, scenario_mode(scenario))
        log(f"{tag}: starting {tname}")
        try:
            target.start()
            values = scenario.measure(ctx, target)
            results[tname] = {"ok": True, **values}
        except BenchError as exc:
            log(f"{scenario.NAME}: {tname} FAILED: {exc}")
            results[tname] = {"ok": False, "error": str(exc),
                              "log_tail": exc.log_tail or target.log_tail()}
        finally:
            target.stop()
    return {t: results[t] for t in ALL_TARGETS if t in results}


@contextlib.contextmanager
def on_hosts(ctx: Context, scenario):
    """The hosts topology (bench/hosts.py) while `scenario` runs: an origin
    of its own in the origin's namespace, the targets on the proxies'
    address, wrk in the client's namespace; loopback again after."""
    try:
        topo = hosts.Hosts(ctx.tools["ip"], ctx.tools["ethtool"])
        topo.up()
    except hosts.HostsError as exc:
        raise BenchError(str(exc)) from exc
    saved = ctx.origin, ctx.proxy_host, ctx.client_wrap
    origin = None
    try:
        log(f"{scenario.NAME}: hosts topology: wrk in {topo.client_ns}, the proxies on "
            f"{topo.proxy_addr}, the origin on {topo.origin_addr} in {topo.origin_ns}")
        origin = Origin(ctx, topo.origin_addr, topo.wrap(topo.origin_ns), f"origin-{scenario.NAME}")
        ctx.origin, ctx.proxy_host, ctx.client_wrap = origin, topo.proxy_addr, topo.wrap(topo.client_ns)
        yield
    finally:
        ctx.origin, ctx.proxy_host, ctx.client_wrap = saved
        if origin is not None:
            origin.stop()
        topo.down()


def run_rounds(ctx: Context, scenario) -> list[dict]:
    """--repeat rounds of run_scenario (one for non-wrk scenarios).

    Round r runs the targets rotated to start at target r mod k, so none is
    always first or last; every target is started afresh in every round, so
    only one target runs at a time. A target that fails is skipped in the
    rounds after. Each round: {"order", "results", "ratios"}.
    """
    if getattr(scenario, "HOSTS", False):
        with on_hosts(ctx, scenario):
            return _run_rounds(ctx, scenario)
    return _run_rounds(ctx, scenario)


def _run_rounds(ctx: Context, scenario) -> list[dict]:
    n = ctx.opts.repeat if getattr(scenario, "KIND", "wrk") in LOAD_KINDS else 1
    names = scenario_targets(ctx, scenario)
    rounds: list[dict] = []
    dead: set[str] = set()
    for r in range(n):
        k = r % len(names) if names else 0
        order = [t for t in names[k:] + names[:k] if t not in dead]
        tag = scenario.NAME if n == 1 else f"{scenario.NAME}.r{r + 1}"
        if n > 1:
            log(f"{scenario.NAME}: round {r + 1}/{n}: {', '.join(order)}")
        results = run_scenario(ctx, scenario, order, tag)
        dead |= {t for t, res in results.items() if not res.get("ok")}
        rounds.append({"order": order, "results": results,
                       "ratios": ratios(results, scenario.METRICS, has_goals(scenario),
                                        scenario_best_of(scenario))})
    return rounds


def is_local(scenario) -> bool:
    return getattr(scenario, "KIND", "wrk") == "local"


def run_local(ctx: Context, scenario) -> dict:
    """A local scenario's results, in this process: {"ok": True, ...} or the failure."""
    log(f"{scenario.NAME}: measuring in this process (no target is started)")
    try:
        return {"ok": True, **scenario.measure_local(ctx)}
    except BenchError as exc:
        log(f"{scenario.NAME}: FAILED: {exc}")
        return {"ok": False, "error": str(exc)}


def _header(ctx: Context, scenario) -> str:
    if getattr(scenario, "KIND", "wrk") == "idle":
        what = ("TLS client connections (handshake and one request each)"
                if scenario_mode(scenario) == "https" else "client connections")
        return f"{ctx.opts.idle_conns} idle {what}, one worker per proxy"
    if getattr(scenario, "KIND", "wrk") == "h2load":
        return (f"h2load -t1 -c{scenario.CONNECTIONS} -m{scenario.STREAMS} "
                f"-D{max(1, round(ctx.opts.duration_s))}, HTTP/2 over TLS, one worker per proxy")
    return (f"wrk -t{ctx.opts.threads} -c{ctx.opts.connections} "
            f"-d{max(1, round(ctx.opts.duration_s))}s --latency, one worker per proxy")


def _rounded(obj):
    """Floats to 4 decimals, recursively: the JSON is read by people too."""
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def run(opts: Options) -> int:
    """The whole run; returns the exit code."""
    all_scenarios = load_scenarios()
    chosen = opts.scenarios or [n for n in all_scenarios if n.startswith(DEFAULT_SCENARIO_PREFIXES)]
    unknown = [n for n in chosen if n not in all_scenarios]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; have: {', '.join(all_scenarios)}",
              file=sys.stderr)
        return 2
    scenarios = [all_scenarios[n] for n in chosen]

    remote = [s for s in scenarios if not is_local(s)]   # those that start targets
    need = {"nginx"} if remote else set()
    if any(getattr(s, "KIND", "wrk") == "wrk" for s in remote):
        need.add("wrk")
    if any(getattr(s, "KIND", "wrk") == "h2load" for s in remote):
        need.add("h2load")
    if remote and "haproxy" in opts.only:
        need.add("haproxy")
    if "nginx" in opts.only and any(scenario_mode(s) == "tcp" for s in remote):
        need.add("nginx-stream")
    if "varnish" in opts.only and any("varnish" in s.TARGETS for s in remote):
        need.add("varnishd")
    if any(getattr(s, "HOSTS", False) for s in remote):
        need |= {"ip", "ethtool"}
    try:
        tools = ensure_tools(need)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    nofile = raise_nofile_limit()
    workdir = Path(tempfile.mkdtemp(prefix="lb-bench-"))
    workdir.chmod(0o755)
    ctx = Context(opts=opts, tools=tools, workdir=workdir, ports=PortAllocator(), nofile=nofile)

    lb_dirs = {"lb": REPO_ROOT, BASELINE: opts.baseline}   # where `python -m lb` runs
    report = {
        "meta": {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                     "python": platform.python_version(), "nofile": nofile,
                     "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
            "wrk": {"threads": opts.threads, "connections": opts.connections,
                    "duration_s": max(1, round(opts.duration_s)),
                    "warmup_s": max(1, round(opts.warmup_s)) if opts.warmup_s > 0 else 0},
            "idle_conns": opts.idle_conns,
            "repeat": opts.repeat,
            # varnish only when a scenario of the run names it (cache_hit)
            "targets": [t for t in run_targets(opts)
                        if t != "varnish" or any("varnish" in s.TARGETS for s in remote)],
            "versions": tool_versions(tools, {t: lb_dirs[t] for t in run_targets(opts) if t in lb_dirs}),
        },
        "scenarios": {},
    }
    if opts.baseline is not None:
        # Both checkouts usually report the same version: the commit tells them apart.
        commit = _first_line(["git", "-C", str(opts.baseline), "describe", "--always", "--dirty"])
        report["meta"]["baseline"] = {"dir": str(opts.baseline), "commit": commit}
        line = f"{BASELINE}: lb from {opts.baseline} ({commit or 'not a git checkout'})"
        if opts.as_json:
            log(line)
        else:
            print(line + "\n", flush=True)
    failed = False
    interrupted = False
    try:
        if remote:
            log(f"workdir {workdir}; starting origin nginx")
            ctx.origin = Origin(ctx)
            log(f"origin on 127.0.0.1:{ctx.origin.port}")
        for scenario in scenarios:
            if is_local(scenario):
                results = run_local(ctx, scenario)
                failed |= not results["ok"]
                report["scenarios"][scenario.NAME] = {"summary": scenario.SUMMARY, "results": results}
                if not opts.as_json:
                    print(scenario.format_local(results) + "\n", flush=True)
                continue
            rounds = run_rounds(ctx, scenario)
            results = median_results(rounds)
            rat = ratios(results, scenario.METRICS, has_goals(scenario), scenario_best_of(scenario))
            spread = ratio_spread(rounds)
            failed |= any(not r["ok"] for r in results.values())
            entry = {"summary": scenario.SUMMARY, "mode": scenario_mode(scenario),
                     "results": results, "ratios": rat, "ratio_spread": spread}
            if has_goals(scenario):
                entry["best_of"] = best_of(results, scenario.METRICS, scenario_best_of(scenario))
                entry["goals"] = goal_report(scenario, results, rat, spread)
            report["scenarios"][scenario.NAME] = {**entry, "rounds": rounds}
            if not opts.as_json:
                print(format_table(scenario.NAME, scenario, _header(ctx, scenario), results, rat,
                                   spread, len(rounds)) + "\n", flush=True)
    except BenchError as exc:
        failed = True
        report["error"] = str(exc)
        print(f"bench: {exc}", file=sys.stderr)
        if exc.log_tail:
            print(exc.log_tail, file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping everything")
    finally:
        if ctx.origin is not None:
            ctx.origin.stop()
        if opts.keep_workdir or failed:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report["ok"] = not failed and not interrupted
    report = _rounded(report)
    if opts.save:
        RESULTS_DIR.mkdir(exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = RESULTS_DIR / f"{stamp}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        log(f"saved {path}")
    if opts.as_json:
        print(json.dumps(report, indent=2), flush=True)
    if interrupted:
        return 130
    return 1 if failed else 0


def selection_modules(need: str):
    """The compiled selection code and its pure-Python reference, for the
    select_* scenarios; `need` names what the compiled module must offer."""
    try:
        import lb._fastpath as fast
        from tests.reference import select_ref as ref
    except ImportError as exc:
        raise BenchError(f"cannot import the selection code: {exc} (build it: `make install`)") from exc
    if not hasattr(fast, need):
        raise BenchError(f"lb._fastpath has no {need}: rebuild the extension")
    return fast, ref
