"""The client's side of the TLS end-to-end tests (tests/test_tls.py): Python
`ssl` contexts, what a handshake showed (the certificate served, by its
SHA-256), and a client driven through memory BIOs, so that a test decides
which bytes go out in which write (a PROXY header in the same segment as the
ClientHello, half a ClientHello, close_notify then a FIN) and can move bytes
both ways at once from one thread."""

from __future__ import annotations

import hashlib
import selectors
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


def client_context(ca=None, *, alpn=None, minimum_version=None, maximum_version=None,
                   ciphers: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the chain against ca (a path) when given,
    and never the host name: the tests compare fingerprints instead, so that a
    default certificate served to an unknown name is seen, not refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(str(ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # TLSv1_1 is deprecated: that is the point
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        if minimum_version is not None:
            ctx.minimum_version = minimum_version
        if maximum_version is not None:
            ctx.maximum_version = maximum_version
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Peer(NamedTuple):
    fingerprint: str          # SHA-256 of the leaf certificate served, hex
    version: str
    cipher: str
    alpn: str | None


def describe(t) -> Peer:
    """What a completed handshake (an SSLSocket or SSLObject) showed."""
    der = t.getpeercert(binary_form=True)
    return Peer(hashlib.sha256(der).hexdigest(), t.version(), t.cipher()[0], t.selected_alpn_protocol())


def handshake(port: int, ctx: ssl.SSLContext, server_hostname: str | None = None, timeout: float = 5.0) -> Peer:
    """Connect, complete a handshake (server_hostname: the SNI, None: none), close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=server_hostname) as t:
            return describe(t)


class MemTls:
    """A TLS client over a TCP socket, through memory BIOs."""

    def __init__(self, port: int, ctx: ssl.SSLContext, server_hostname: str | None = None, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=server_hostname)
        self.peer_eof = False     # the server's close_notify or FIN was read
        self.close_notify = False  # ... and it was a close_notify
        self._pending = b""       # decrypted bytes read ahead by recv_exact

    # ---- the wire --------------------------------------------------------------------

    def client_hello(self) -> bytes:
        """The first flight (the ClientHello), not sent: the caller sends it."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _feed(self) -> bool:
        """Read what the socket has into the BIO; False at EOF."""
        data = self.sock.recv(65536)
        if not data:
            self.inc.write_eof()
            return False
        self.inc.write(data)
        return True

    def handshake(self, prefix: bytes = b"", then: bytes = b"") -> Peer:
        """prefix (e.g. a PROXY header) and the ClientHello in one write, then
        the rest of the handshake; `then`, application data, goes in the same
        write as the client's last flight (its Finished). When client_hello()
        was called (and its bytes sent) already, it goes on from there."""
        hello = self.client_hello()
        if prefix or hello:
            self.sock.sendall(prefix + hello)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                if not self._feed():
                    raise ConnectionError("the server closed during the handshake") from None
        if then:
            self.obj.write(then)
        self.flush()
        return describe(self.obj)

    # ---- application data --------------------------------------------------------------

    def send(self, data: bytes):
        view = memoryview(data)
        for i in range(0, len(view), 16384):
            self.obj.write(view[i:i + 16384])
        self.flush()

    def recv(self) -> bytes:
        """The next decrypted bytes; b"" at the server's close_notify or FIN."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        while True:
            try:
                data = self.obj.read(65536)
                if not data:             # Python's read: b"" at a close_notify
                    self.peer_eof = self.close_notify = True
                return data
            except ssl.SSLWantReadError:
                if not self._feed():
                    continue             # the next read says what the EOF means
            except ssl.SSLZeroReturnError:
                self.peer_eof = self.close_notify = True
                return b""
            except ssl.SSLEOFError:
                self.peer_eof = True
                return b""

    def unread(self, data: bytes):
        """Give back bytes read too far: the next recv returns them first."""
        self._pending = bytes(data) + self._pending

    def recv_to_eof(self) -> bytes:
        out = bytearray()
        while chunk := self.recv():
            out += chunk
        return bytes(out)

    def recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.recv()
            if not chunk:
                raise EOFError(f"closed after {len(out)} of {n} bytes")
            out += chunk
        self._pending = bytes(out[n:])
        return bytes(out[:n])

    def close_write(self):
        """TLS half-close: close_notify, then the TCP FIN; reading goes on."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass                         # the server's close_notify is not here yet: fine
        self.flush()
        self.sock.shutdown(socket.SHUT_WR)

    def pump(self, data: bytes, expect: int, close_write: bool = True) -> bytes:
        """Send data and receive `expect` bytes (then, with close_write, up to
        the server's EOF) at the same time, from this one thread: neither side
        waits for the other to drain, as with a real full-duplex client."""
        sel = selectors.DefaultSelector()
        self.sock.setblocking(False)
        sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        wire = bytearray()               # TLS bytes not yet written to the socket
        view = memoryview(data)
        sent = 0
        shut = False
        received = bytearray()
        try:
            while True:
                while sent < len(view) and len(wire) < (256 << 10):
                    n = self.obj.write(view[sent:sent + 16384])
                    sent += n
                    wire += self.out.read()
                if sent == len(view) and close_write and not shut and not wire:
                    try:
                        self.obj.unwrap()
                    except ssl.SSLWantReadError:
                        pass
                    self.sock.setblocking(True)
                    self.sock.sendall(self.out.read())
                    self.sock.shutdown(socket.SHUT_WR)
                    self.sock.setblocking(False)
                    shut = True
                done_reading = self.peer_eof or (len(received) >= expect and not close_write)
                if done_reading and not wire and (shut or not close_write) and sent == len(view):
                    return bytes(received)
                sel.modify(self.sock, (selectors.EVENT_WRITE if wire else 0)
                           | (0 if self.peer_eof else selectors.EVENT_READ))
                events = sel.select(self.timeout)
                if not events:
                    raise TimeoutError(f"stalled: sent {sent} of {len(view)}, received {len(received)} of {expect}")
                for _key, mask in events:
                    if mask & selectors.EVENT_WRITE and wire:
                        try:
                            n = self.sock.send(wire)
                            del wire[:n]
                        except BlockingIOError:
                            pass
                    if mask & selectors.EVENT_READ:
                        try:
                            chunk = self.sock.recv(1 << 18)
                        except BlockingIOError:
                            continue
                        if chunk:
                            self.inc.write(chunk)
                        else:
                            self.inc.write_eof()
                        while True:
                            try:
                                plain = self.obj.read(1 << 18)
                            except ssl.SSLWantReadError:
                                break
                            except ssl.SSLZeroReturnError:
                                self.peer_eof = self.close_notify = True
                                break
                            except ssl.SSLEOFError:
                                self.peer_eof = True
                                break
                            if not plain:        # a close_notify
                                self.peer_eof = self.close_notify = True
                                break
                            received += plain
                        wire += self.out.read()      # a read may answer something (a key update)
        finally:
            sel.close()
            self.sock.setblocking(True)
            self.sock.settimeout(self.timeout)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def lb_cli(config_path, *args, timeout: float = 30) -> subprocess.CompletedProcess:
    """`lb -c FILE ARGS...` of this checkout."""
    return subprocess.run([sys.executable, "-m", "lb", "-c", str(config_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def read_until_closed(s: socket.socket) -> tuple[bytes, str]:
    """Everything lb sends until it closes: (bytes, "eof" or "reset")."""
    out = bytearray()
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        return bytes(out), "reset"
    except socket.timeout:
        raise AssertionError(f"lb did not close the connection; got {bytes(out)[:100]!r}") from None
    return bytes(out), "eof"
