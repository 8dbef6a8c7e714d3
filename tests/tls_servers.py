"""TLS servers for the tests of lb's TLS to backends, TLS health checks and
TLS passthrough (tests/test_tls_backends.py, tests/test_tls_extra.py):

- `Nginx`: a real nginx serving TLS on several ports (one `server` each),
  answering every request with a JSON line of what it saw of the TLS
  connection (`$ssl_server_name`, `$ssl_session_reused`, `$ssl_protocol`,
  `$connection`, `$connection_requests`, the client certificate's subject),
  and logging the same per request to its access log (health checks, which
  never show their answer to a test, are read there);
- `TlsServer`: a TLS server in the test process (a thread per connection),
  which records per connection the PROXY header it read in clear before the
  handshake, the raw first TLS record (the ClientHello as it arrived), the
  server name asked for, the version and whether the session was resumed,
  then answers every byte through TRANSFORM (like tests/backend_server.py).

And the TOML of lb configs with several listeners and pools.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backend_server import TRANSFORM
from conftest import free_port, global_toml, wait_for

# ---- lb configs ----------------------------------------------------------------------------


def lb_toml(*sections: str, workers: int = 1, global_extra: str = "", run_dir: str | None = None) -> str:
    """A whole config: [global] (own admin socket and state file), then the sections."""
    head = global_toml(workers, run_dir) + textwrap.dedent(global_extra).strip() + "\n\n"
    return head + "\n".join(textwrap.dedent(s).strip() + "\n" for s in sections)


def listener_toml(name: str, port: int, pool: str | None, *, mode: str = "http", extra: str = "",
                  routes=()) -> str:
    """routes: (host, pool) pairs."""
    text = f'[listeners.{name}]\nbind = ["127.0.0.1:{port}"]\nmode = "{mode}"\n'
    if pool is not None:
        text += f'pool = "{pool}"\n'
    text += textwrap.dedent(extra).strip() + "\n"
    for host, rpool in routes:
        text += f'\n[[listeners.{name}.routes]]\nhost = "{host}"\npool = "{rpool}"\n'
    return text


def pool_toml(name: str, members, *, extra: str = "", tls: str | None = None, health: str = 'type = "none"',
              passive: str = "") -> str:
    """members: (name, address) pairs. tls: the lines of [pools.NAME.tls]
    (None: no TLS to the backends; "" a table with the defaults)."""
    text = f'[pools.{name}]\nalgorithm = "roundrobin"\nconnect_timeout = "1s"\n' + textwrap.dedent(extra).strip() + "\n"
    if tls is not None:
        text += f"\n[pools.{name}.tls]\n" + textwrap.dedent(tls).strip() + "\n"
    text += f"\n[pools.{name}.health]\n" + textwrap.dedent(health).strip() + "\n"
    if passive:
        text += f"\n[pools.{name}.passive]\n" + textwrap.dedent(passive).strip() + "\n"
    for member_name, address in members:
        text += f'\n[[pools.{name}.backends]]\naddress = "{address}"\nname = "{member_name}"\n'
    return text


# ---- nginx -----------------------------------------------------------------------------------

@dataclass
class NginxSite:
    """One TLS server of the nginx: name (what its answers say), certificate
    chain and key; client_ca: ask for a client certificate and require one
    that verifies against it; protocols: nginx's ssl_protocols."""

    name: str
    cert: Path
    key: Path
    client_ca: Path | None = None
    protocols: str = "TLSv1.2 TLSv1.3"
    proxy_protocol: bool = False     # a PROXY header first, in clear (listen ... proxy_protocol)
    port: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


# what every answer (and every access log line) says of the request and its TLS connection
_FIELDS = {
    "site": None, "uri": "$request_uri", "sni": "$ssl_server_name", "reused": "$ssl_session_reused",
    "protocol": "$ssl_protocol", "connection": "$connection", "requests": "$connection_requests",
    "client_dn": "$ssl_client_s_dn", "client_verify": "$ssl_client_verify", "agent": "$http_user_agent",
    "proxy_addr": "$proxy_protocol_addr", "proxy_port": "$proxy_protocol_port", "status": "$status",
}


def _json_template(site: str, keys) -> str:
    return "{" + ",".join(f'\\"{k}\\":\\"{site if k == "site" else _FIELDS[k]}\\"' for k in keys) + "}"


class Nginx:
    """nginx serving TLS sites, started in a directory of its own (daemon off,
    its pid, logs and temp paths there); `stop()` ends it.

    Every site answers:
    - `/status/CODE` (200, 204, 503): that status, with the JSON body;
    - anything else: 200 and the JSON body;
    and logs the same JSON (with the status) to `access.log`."""

    def __init__(self, sites: list[NginxSite], root: Path | None = None):
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(exe), "nginx is needed (make test-deps installs it)"
        self.sites = {s.name: s for s in sites}
        self.root = Path(root or tempfile.mkdtemp(prefix="lb-test-nginx-tls-"))
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        for p in (self.root, self.root / "tmp"):
            os.chmod(p, 0o755)               # nginx workers run as nobody when we are root
        flags = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=10).stderr
        temp_paths = "\n".join(f"    {mod}_temp_path {self.root}/tmp/{mod};" for mod in ("fastcgi", "uwsgi", "scgi")
                               if f"--without-http_{mod}_module" not in flags)
        servers = []
        answer_keys = [k for k in _FIELDS if k not in ("status",)]
        for s in sites:
            body = _json_template(s.name, answer_keys)
            client = ""
            if s.client_ca is not None:
                client = f"ssl_verify_client on;\n        ssl_client_certificate {s.client_ca};"
            servers.append(textwrap.dedent(f"""\
                server {{
                    listen 127.0.0.1:{s.port} ssl{" proxy_protocol" if s.proxy_protocol else ""};
                    ssl_certificate {s.cert};
                    ssl_certificate_key {s.key};
                    ssl_protocols {s.protocols};
                    {client}
                    access_log {self.root}/access.log probe;
                    default_type application/json;
                    location = /status/204 {{ return 204; }}
                    location = /status/503 {{ return 503 "{body}\\n"; }}
                    location / {{ return 200 "{body}\\n"; }}
                }}
                """))
        log_format = _json_template("$server_port", list(_FIELDS)).replace('\\"', '"')
        conf = (textwrap.dedent(f"""\
            daemon off;
            master_process on;
            worker_processes 1;
            pid {self.root}/nginx.pid;
            error_log {self.root}/error.log info;
            events {{ worker_connections 1024; }}
            http {{
                client_body_temp_path {self.root}/tmp/client_body;
                proxy_temp_path {self.root}/tmp/proxy;
            """) + temp_paths + "\n"
            + f"    log_format probe escape=json '{log_format}';\n"
            + "    keepalive_requests 1000;\n    keepalive_timeout 75s;\n"
            + textwrap.indent("".join(servers), "    ") + "}\n")
        (self.root / "nginx.conf").write_text(conf)
        self._log = open(self.root / "stderr.log", "wb")
        self.proc = subprocess.Popen([exe, "-p", str(self.root), "-c", str(self.root / "nginx.conf"),
                                      "-e", str(self.root / "error.log")],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        for s in sites:
            wait_for(lambda s=s: self._listening(s.port), 10, f"nginx to listen on {s.port}")

    def _listening(self, port: int) -> bool:
        assert self.proc.poll() is None, (self.root / "stderr.log").read_text() + self.error_log()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except ConnectionRefusedError:
            return False

    def __getitem__(self, name: str) -> NginxSite:
        return self.sites[name]

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text() if path.exists() else ""

    def access(self, site: str | None = None) -> list[dict]:
        """The access log, one dict per request (the JSON of _FIELDS, site as
        the port), of one site or all."""
        path = self.root / "access.log"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if site is not None:
            rows = [r for r in rows if r["site"] == str(self.sites[site].port)]
        return rows

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


# ---- a TLS server in the test process --------------------------------------------------------

@dataclass
class TlsConn:
    """What one connection to a TlsServer showed."""

    proxy: bytes = b""               # the PROXY header read in clear before the handshake
    hello: bytes = b""               # the first TLS record as it arrived (the ClientHello)
    sni: str | None = None
    version: str | None = None
    reused: bool | None = None
    received: int = 0                # application bytes, to the client's EOF
    error: str | None = None         # why the handshake (or the connection) failed
    done: threading.Event = field(default_factory=threading.Event)  # handshake done or failed


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def read_line(sock: socket.socket) -> bytes:
    """Take one CRLF-ended line, byte by byte: not a byte more (the TLS layer takes the rest)."""
    out = bytearray()
    while not out.endswith(b"\r\n"):
        out += recv_exact(sock, 1)
    return bytes(out)


def peek_exact(sock: socket.socket, n: int) -> bytes:
    """The next n bytes, left in the socket (waits for them)."""
    data = sock.recv(n, socket.MSG_PEEK | socket.MSG_WAITALL)
    if len(data) < n:
        raise EOFError(f"closed after {len(data)} of {n} bytes")
    return data


def peek_record(sock: socket.socket) -> bytes:
    """The first TLS record, left in the socket."""
    head = peek_exact(sock, 5)
    return peek_exact(sock, 5 + int.from_bytes(head[3:5], "big"))


class TlsServer:
    """A TLS server on 127.0.0.1 (a thread per connection) that answers every
    byte through TRANSFORM and records each connection (TlsConn).

    proxy: read a PROXY v1 line in clear first. client_ca: require a client
    certificate from that CA. versions: (minimum, maximum) ssl.TLSVersion."""

    def __init__(self, name: str, leaf, *, proxy: bool = False, client_ca=None, versions=None):
        self.name = name
        self.proxy = proxy
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
        if client_ca is not None:
            self.ctx.load_verify_locations(str(client_ca))
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        if versions is not None:
            self.ctx.minimum_version, self.ctx.maximum_version = versions
        self._local = threading.local()
        self.ctx.sni_callback = self._sni
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.conns: list[TlsConn] = []
        self._cond = threading.Condition()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _sni(self, sslobj, name, ctx):
        self._local.conn.sni = name

    def _accept(self):
        while not self._stop:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            conn = TlsConn()
            with self._cond:
                self.conns.append(conn)
                self._cond.notify_all()
            threading.Thread(target=self._serve, args=(sock, conn), daemon=True).start()

    def _serve(self, sock: socket.socket, conn: TlsConn):
        self._local.conn = conn
        sock.settimeout(10)
        try:
            with sock:
                if self.proxy:
                    conn.proxy = read_line(sock)
                conn.hello = peek_record(sock)
                try:
                    t = self.ctx.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    conn.error = str(e)
                    return
                conn.version, conn.reused = t.version(), t.session_reused
                conn.done.set()
                with t:
                    while data := t.recv(65536):
                        conn.received += len(data)
                        t.sendall(data.translate(TRANSFORM))
                    try:
                        t.unwrap()
                    except (ssl.SSLError, OSError):
                        pass
        except (OSError, EOFError) as e:
            if conn.error is None and not conn.done.is_set():
                conn.error = str(e)
        finally:
            conn.done.set()
            with self._cond:
                self._cond.notify_all()

    def wait_conns(self, n: int, timeout: float = 10) -> list[TlsConn]:
        """The first n connections, once each finished its handshake (or failed it)."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.conns) >= n, timeout), \
                f"{self.name}: {len(self.conns)} connections, expected {n}"
            conns = self.conns[:n]
        for c in conns:
            assert c.done.wait(timeout), f"{self.name}: a handshake did not end"
        return conns

    def stop(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def tls_servers():
    """Start TlsServers (the arguments of TlsServer); all stopped after the test."""
    started: list[TlsServer] = []

    def start(*args, **kwargs) -> TlsServer:
        s = TlsServer(*args, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
