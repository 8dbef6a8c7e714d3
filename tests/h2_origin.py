"""An HTTP/2 (h2c) origin on python-h2, for the tests of lb's HTTP/2 to
backends: one thread per connection, responses sent as the windows allow.

Paths:
- /echo: the request body back; the request's te and method in x-te and
  x-method, and the number of the connection in x-conn
- /bytes/N: N bytes of payload(N), with content-length
- /goaway-once: the first request there gets a GOAWAY that refuses it
  (last stream id below it); later ones are answered as /echo
- /reset-mid: a head, 1000 bytes of body, then RST_STREAM INTERNAL_ERROR
- /die-once: the first request there (of each method) makes the origin
  drop its connection, answering nothing; later ones are answered as /echo
- /hold-upload: its body is never given back to the stream's window (held
  counts it; the connection's window is), and it is never answered
"""

from __future__ import annotations

import socket
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from http_origin import payload


class H2Origin:
    def __init__(self, max_concurrent_streams: int | None = None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.max_streams = max_concurrent_streams
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, dict, bytes]] = []   # path, headers, body, as they came whole
        self.goaway_sent = False
        self.died_for: set[str] = set()                  # methods /die-once dropped a connection for
        self.blocked: set[tuple[int, int]] = set()     # (connection, stream) whose response waits for window
        self.held: dict[tuple[int, int], int] = {}       # /hold-upload body bytes received per (connection, stream)
        self.stopping = False
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def stop(self):
        self.stopping = True
        self.sock.close()

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                n = self.connections
            t = threading.Thread(target=self._serve, args=(s, n), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, s: socket.socket, conn_no: int):
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        c.initiate_connection()
        if self.max_streams:
            c.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        s.sendall(c.data_to_send())
        heads: dict[int, dict] = {}
        bodies: dict[int, bytearray] = {}
        pending: dict[int, bytearray] = {}     # response bytes waiting for window
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    return
                try:
                    events = c.receive_data(data)
                except h2.exceptions.ProtocolError:
                    s.sendall(c.data_to_send())
                    return
                for e in events:
                    if isinstance(e, h2.events.RequestReceived):
                        heads[e.stream_id] = {k.decode(): v.decode() for k, v in e.headers}
                        bodies[e.stream_id] = bytearray()
                    elif isinstance(e, h2.events.DataReceived):
                        if heads[e.stream_id][":path"] == "/hold-upload":
                            with self.lock:
                                key = (conn_no, e.stream_id)
                                self.held[key] = self.held.get(key, 0) + len(e.data)
                            if e.flow_controlled_length:
                                # the connection's window is given back, the stream's is not
                                c.increment_flow_control_window(e.flow_controlled_length)
                            continue
                        bodies[e.stream_id] += e.data
                        c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    elif isinstance(e, h2.events.StreamEnded):
                        head = heads[e.stream_id]
                        with self.lock:
                            die = head[":path"] == "/die-once" and head[":method"] not in self.died_for
                            if die:
                                self.died_for.add(head[":method"])
                                self.requests.append(("/die-once", head, bytes(bodies[e.stream_id])))
                        if die:
                            s.shutdown(socket.SHUT_RDWR)
                            return
                        self._answer(c, e.stream_id, head, bytes(bodies[e.stream_id]), conn_no, pending)
                    elif isinstance(e, h2.events.StreamReset):
                        pending.pop(e.stream_id, None)
                self._flush(c, pending, conn_no)
                s.sendall(c.data_to_send())
        except OSError:
            return
        finally:
            s.close()

    def _answer(self, c, sid: int, head: dict, body: bytes, conn_no: int, pending: dict):
        path = head[":path"]
        with self.lock:
            self.requests.append((path, head, body))
            first_goaway = path == "/goaway-once" and not self.goaway_sent
            if first_goaway:
                self.goaway_sent = True
        if first_goaway:
            c.close_connection(error_code=0, last_stream_id=max(0, sid - 2))
            return
        if path.startswith("/bytes/"):
            n = int(path[7:])
            c.send_headers(sid, [(":status", "200"), ("content-length", str(n))])
            pending[sid] = bytearray(payload(n))
            return
        if path == "/reset-mid":
            c.send_headers(sid, [(":status", "200")])
            c.send_data(sid, b"r" * 1000)
            c.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        c.send_headers(sid, [(":status", "200"), ("x-te", head.get("te", "")), ("x-method", head[":method"]),
                             ("x-conn", str(conn_no))])
        pending[sid] = bytearray(body)

    def _flush(self, c, pending: dict, conn_no: int):
        for sid in list(pending):
            buf = pending[sid]
            while True:
                room = min(c.local_flow_control_window(sid), c.max_outbound_frame_size, len(buf))
                if room <= 0:
                    with self.lock:
                        if buf:
                            self.blocked.add((conn_no, sid))
                        else:
                            self.blocked.discard((conn_no, sid))
                    break
                c.send_data(sid, bytes(buf[:room]))
                del buf[:room]
            if not buf:
                c.end_stream(sid)
                del pending[sid]
                with self.lock:
                    self.blocked.discard((conn_no, sid))
