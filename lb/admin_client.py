"""The client side of the admin socket (docs/admin.md): one JSON object per
line each way, one response per request, in order.

`AdminClient(path).call("status")` returns the response's `result`; a daemon
that cannot be reached raises `DaemonUnreachable`, an `ok: false` response
raises `AdminError(code, message)`.
"""

from __future__ import annotations

import errno
import json
import socket
import tomllib

PROTOCOL = 1
DEFAULT_SOCKET = "/run/lb/admin.sock"
SOCKET_ENV = "LB_ADMIN_SOCKET"
# A verb that does its work before answering (reload, a waiting remove) is
# given longer; every other one answers at once.
DEFAULT_TIMEOUT = 10.0
# A response is one line; a status of a very large instance is still far below.
MAX_RESPONSE = 64 << 20


class DaemonUnreachable(Exception):
    """No daemon answers at the socket: not running, or not reachable by us."""


class AdminError(Exception):
    """The daemon answered `ok: false`; `code` is one of docs/admin.md's codes
    (`protocol` when the answer itself was not one of the protocol)."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(code, message)

    def __str__(self) -> str:
        return self.message


def socket_from_config(path: str) -> str:
    """`global.admin_socket` of a config file, without validating the rest of
    it: a file the daemon would refuse still names its socket (`lb -c FILE
    reload` is how one hears why it is refused). Raises OSError, ValueError."""
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: TOML syntax error: {e}") from None
    section = data.get("global")
    value = section.get("admin_socket", DEFAULT_SOCKET) if isinstance(section, dict) else DEFAULT_SOCKET
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: global.admin_socket: expected a path")
    return value


def resolve_socket(socket_path: str | None, config_path: str | None) -> str:
    """--socket (or LB_ADMIN_SOCKET, which click folds into it), else the
    config's global.admin_socket when -c is given, else the default."""
    if socket_path:
        return socket_path
    if config_path:
        return socket_from_config(config_path)
    return DEFAULT_SOCKET


class AdminClient:
    """One connection, opened on first use; several requests may share it."""

    def __init__(self, path: str, timeout: float | None = DEFAULT_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise self._unreachable(e) from None
        self._sock = sock

    def _unreachable(self, e: OSError) -> DaemonUnreachable:
        if e.errno == errno.ENOENT:
            return DaemonUnreachable(f"lb is not running (no socket at {self.path})")
        if e.errno == errno.ECONNREFUSED:
            return DaemonUnreachable(f"lb is not running (nothing listens at {self.path})")
        if e.errno in (errno.EACCES, errno.EPERM):
            return DaemonUnreachable(f"cannot reach lb at {self.path}: permission denied")
        if isinstance(e, TimeoutError) or e.errno == errno.ETIMEDOUT:
            return DaemonUnreachable(f"lb at {self.path} did not answer within {self.timeout:g}s")
        return DaemonUnreachable(f"cannot reach lb at {self.path}: {e.strerror or e}")

    def call(self, cmd: str, args: dict | None = None, timeout: float | None | bool = False) -> dict:
        """Send one request, return its result. timeout: seconds for this
        answer (None: wait as long as it takes); False keeps the client's."""
        request = {"v": PROTOCOL, "cmd": cmd}
        if args:
            request["args"] = args
        self.connect()
        if timeout is not False:
            self._sock.settimeout(timeout)
        try:
            try:
                self._sock.sendall(json.dumps(request).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                # the daemon may answer before reading (a refused peer gets its
                # `denied` at once) and close: that answer is still to be read
                pass
            line = self._read_line()
        except OSError as e:
            self.close()
            raise self._unreachable(e) from None
        finally:
            if timeout is not False and self._sock is not None:
                self._sock.settimeout(self.timeout)
        return self._result(line)

    def _read_line(self) -> bytes:
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.close()
                raise AdminError("protocol", f"lb at {self.path} closed the connection without answering")
            self._buf += chunk
            if len(self._buf) > MAX_RESPONSE:
                self.close()
                raise AdminError("protocol", f"lb at {self.path} sent an answer longer than {MAX_RESPONSE} bytes")
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _result(self, line: bytes) -> dict:
        try:
            response = json.loads(line)
        except ValueError:
            raise AdminError("protocol", f"lb at {self.path} answered something that is not JSON: {line[:80]!r}") \
                from None
        if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
            raise AdminError("protocol", f"lb at {self.path} answered without an \"ok\": {line[:80]!r}")
        if not response["ok"]:
            raise AdminError(str(response.get("code") or "failed"), str(response.get("error") or "failed"))
        if response.get("v") != PROTOCOL:
            raise AdminError("version", f"lb at {self.path} speaks protocol {response.get('v')!r}, "
                                        f"this lb speaks {PROTOCOL}")
        result = response.get("result")
        return result if result is not None else {}


def call(path: str, cmd: str, args: dict | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> dict:
    """One request on its own connection."""
    with AdminClient(path, timeout) as client:
        return client.call(cmd, args)
