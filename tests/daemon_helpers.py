"""Helpers for the tests that run lb as a daemon would run (test_sdnotify,
test_privileges, test_packaging): a service manager's notify socket, an echo
backend in a thread, a small config, and a client round trip."""

from __future__ import annotations

import os
import socket
import socketserver
import textwrap
import threading
import time

import psutil


class NotifySocket:
    """Plays systemd's side of sd_notify: a datagram socket whose path goes in
    NOTIFY_SOCKET; every datagram is one message of KEY=VALUE lines."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(message)
        return message

    def expect(self, key: str, timeout: float = 15.0, proc=None) -> dict[str, str]:
        """The next message with `key`; the messages before it are kept in
        self.messages. Fails if it does not come in time (or proc exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(min(0.2, max(0.01, deadline - time.monotonic())))
            if message is not None and key in message:
                return message
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"lb exited ({proc.returncode}) before sending {key}; "
                                     f"got {self.messages}")
        raise AssertionError(f"no {key} within {timeout}s; got {self.messages}")


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.sendall(self.server.hello)
        while data := sock.recv(65536):
            sock.sendall(data)


class EchoBackend(socketserver.ThreadingTCPServer):
    """127.0.0.1:<free port>: says "<name>\\n", then echoes until EOF."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str = "b1"):
        super().__init__(("127.0.0.1", 0), _Echo)
        self.hello = f"{name}\n".encode()
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path, port: int, backends: list[int], workers: int = 2, global_extra: str = "") -> str:
    """A tcp listener on 127.0.0.1:port in front of `backends`, with the admin
    socket and the state file next to the config file (not in /run/lb and
    /var/lib/lb, which other instances and the packages use)."""
    here = os.path.dirname(os.path.abspath(path))
    global_extra = f'admin_socket = "{here}/admin.sock"\nstate_file = "{here}/state.json"\n' + global_extra
    items = "".join(f'\n[[pools.p.backends]]\naddress = "127.0.0.1:{b}"\nname = "b{i}"\n'
                    for i, b in enumerate(backends))
    text = textwrap.dedent(f"""\
        [global]
        workers = {workers}
        drain_timeout = "2s"
        """) + global_extra + textwrap.dedent(f"""

        [listeners.t]
        bind = ["127.0.0.1:{port}"]
        mode = "tcp"
        pool = "p"

        [pools.p]
        connect_timeout = "1s"

        [pools.p.health]
        type = "tcp"
        interval = "500ms"
        timeout = "400ms"
        """) + items
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def round_trip(port: int, payload: bytes, timeout: float = 5.0) -> tuple[str, bytes]:
    """Connect through lb, read the backend's hello, echo `payload`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        hello = f.readline().decode().strip()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        echoed = f.read()
    return hello, echoed


def children(pid: int) -> dict[str, psutil.Process]:
    """The supervisor's children by their process name (lb-worker-N, lb-checker)."""
    return {p.name(): p for p in psutil.Process(pid).children()}


def wait_children(pid: int, n: int, timeout: float = 10.0) -> dict[str, psutil.Process]:
    """Children named lb-*, once there are `n` of them (each renames itself
    after dropping its privileges)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {name: p for name, p in children(pid).items() if name.startswith("lb-")}
        if len(found) == n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
