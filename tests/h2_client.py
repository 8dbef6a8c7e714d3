"""An HTTP/2 client for the tests, on python-h2's state machine over a plain
or TLS socket, that also writes frames h2 would refuse to make (the flood
and malformed-frame cases): `raw` sends any frame, `header_block` encodes
any header list with the connection's own HPACK encoder.

Flow control is the test's to drive: `auto_window = False` leaves the
windows where they are, so a stream's response can be held in lb."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import hpack
import hyperframe.frame

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

FRAME = {"DATA": 0, "HEADERS": 1, "PRIORITY": 2, "RST_STREAM": 3, "SETTINGS": 4, "PING": 6, "GOAWAY": 7,
         "WINDOW_UPDATE": 8, "CONTINUATION": 9}
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 7: "REFUSED_STREAM",
          8: "CANCEL", 9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}


def frame(kind: str, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack("!I", len(payload))[1:] + bytes([FRAME[kind], flags]) + struct.pack("!I", stream) + payload


@dataclass
class Response:
    headers: list = field(default_factory=list)
    informational: list = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list = field(default_factory=list)
    ended: bool = False
    reset: str | None = None  # the error code name of a RST_STREAM lb sent

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.encode():
                return v.decode()
        return None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None, server_hostname: str = "site.test",
                 host: str = "127.0.0.1", auto_window: bool = True, settings: dict | None = None):
        sock = socket.create_connection((host, port), timeout=10)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_hostname)
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        self.sock = sock
        self.authority = server_hostname if tls is not None else f"{host}:{port}"
        self.scheme = "https" if tls is not None else "http"
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        # a graceful GOAWAY lets the streams up to its last one go on (RFC 9113
        # 6.8), and the connection with them (its PINGs answered, its windows
        # opened); python-h2 closes the connection at once
        self.conn._frame_dispatch_table[hyperframe.frame.GoAwayFrame] = self._graceful_goaway
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.auto_window = auto_window
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.server_settings: dict = {}
        self.pings_acked = 0
        self.raw_mode = False
        self.rbuf = bytearray()
        self.decoder = hpack.Decoder()
        self.flush()

    def _graceful_goaway(self, f):
        if f.error_code:
            return h2.connection.H2Connection._receive_goaway_frame(self.conn, f)
        ev = h2.events.ConnectionTerminated()
        ev.error_code = h2.errors._error_code_from_int(f.error_code)
        ev.last_stream_id = f.last_stream_id
        ev.additional_data = f.additional_data or None
        return [], [ev]

    # ---- sending -----------------------------------------------------------------------------

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def raw(self, data: bytes) -> bool:
        """Bytes as they are, beside the state machine. False: lb closed the
        connection. From the first one on, lb's frames are read by hand too
        (feed_raw): python-h2 would refuse answers to streams it never opened."""
        self.raw_mode = True
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False             # what lb sent before it closed is still to be read (pump)

    def request(self, path: str, method: str = "GET", headers=(), body: bytes | None = None, *,
                end: bool = True, authority: str | None = None, pseudo=None) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = pseudo if pseudo is not None else [
            (":method", method), (":scheme", self.scheme), (":authority", authority or self.authority),
            (":path", path)]
        hdrs = list(hdrs) + list(headers)
        self.responses[sid] = Response()
        self.conn.send_headers(sid, hdrs, end_stream=body is None and end)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, *, end: bool = True):
        """As much as the windows allow at a time, reading lb's frames between."""
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.pump(lambda: self.conn.local_flow_control_window(sid) > 0 or self.responses[sid].done)
                if self.responses[sid].done:
                    return
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def header_block(self, headers) -> bytes:
        return self.conn.encoder.encode(headers)

    # ---- receiving ---------------------------------------------------------------------------

    def pump(self, until, timeout: float = 10.0) -> bool:
        """Read and handle lb's frames until until() holds (True), lb closes
        the connection (until()'s value then), or the timeout fails the test."""
        deadline = time.monotonic() + timeout
        while not until():
            if self.closed:
                return until()
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for lb"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            except socket.timeout:
                continue
            if not data:
                self.closed = True
                continue
            self.feed(data)
        return True

    def feed_raw(self, data: bytes):
        self.rbuf += data
        while len(self.rbuf) >= 9:
            length = int.from_bytes(self.rbuf[:3], "big")
            if len(self.rbuf) < 9 + length:
                return
            kind, flags = self.rbuf[3], self.rbuf[4]
            sid = int.from_bytes(self.rbuf[5:9], "big") & 0x7FFFFFFF
            body = bytes(self.rbuf[9:9 + length])
            del self.rbuf[:9 + length]
            r = self.responses.setdefault(sid, Response()) if sid else None
            if kind == FRAME["HEADERS"]:
                fields = self.decoder.decode(body, raw=True)
                if not r.headers and fields and fields[0][1].startswith(b"1"):
                    r.informational.append(fields)
                elif not r.headers:
                    r.headers = fields
                else:
                    r.trailers = fields
                r.ended = r.ended or bool(flags & END_STREAM)
            elif kind == FRAME["DATA"]:
                r.body += body
                r.ended = r.ended or bool(flags & END_STREAM)
                if body:
                    inc = struct.pack("!I", len(body))
                    self.sock.sendall(frame("WINDOW_UPDATE", 0, 0, inc) + frame("WINDOW_UPDATE", 0, sid, inc))
            elif kind == FRAME["RST_STREAM"]:
                r.reset = ERRORS.get(int.from_bytes(body[:4], "big"), body[:4].hex())
            elif kind == FRAME["GOAWAY"]:
                last, code = struct.unpack("!II", body[:8])
                self.goaway = SimpleNamespace(last_stream_id=last & 0x7FFFFFFF, error_code=code)
            elif kind == FRAME["SETTINGS"] and not flags & ACK:
                for i in range(0, len(body), 6):
                    key, value = struct.unpack("!HI", body[i:i + 6])
                    self.server_settings[key] = value
                self.sock.sendall(frame("SETTINGS", ACK, 0))
            elif kind == FRAME["PING"] and flags & ACK:
                self.pings_acked += 1
            elif kind == FRAME["PING"]:
                self.sock.sendall(frame("PING", ACK, 0, body))

    def feed(self, data: bytes):
        if self.raw_mode:
            try:
                self.feed_raw(data)
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
            return
        for ev in self.conn.receive_data(data):
            r = self.responses.get(getattr(ev, "stream_id", None) or 0)
            if isinstance(ev, h2.events.ResponseReceived):
                r.headers = ev.headers
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                r.informational.append(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                r.body += ev.data
                if self.auto_window and ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                r.trailers = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                r.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                if r is not None:
                    r.reset = ERRORS.get(ev.error_code, str(ev.error_code))
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.server_settings.update({k: v.new_value for k, v in ev.changed_settings.items()})
            elif isinstance(ev, h2.events.PingAckReceived):
                self.pings_acked += 1
        self.flush()

    def open_window(self, sid: int, n: int):
        self.conn.increment_flow_control_window(n, sid)
        self.conn.increment_flow_control_window(n)
        self.flush()

    def response(self, sid: int, timeout: float = 10.0) -> Response:
        self.pump(lambda: sid in self.responses and self.responses[sid].done, timeout)
        return self.responses[sid]

    def wait_closed(self, timeout: float = 10.0):
        """Until lb ends the connection (a GOAWAY, then the close)."""
        self.pump(lambda: self.closed, timeout)

    @property
    def goaway_error(self) -> str | None:
        return None if self.goaway is None else ERRORS.get(self.goaway.error_code, str(self.goaway.error_code))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
