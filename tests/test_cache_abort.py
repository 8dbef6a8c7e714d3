"""A client that leaves in the middle of a miss does not take the fill with
it (issue 15, "bad input"): the requests waiting for that key (collapsed
forwarding, on any worker) are answered from the response the origin sent
once, and it is stored."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

from conftest import free_port
from test_cache import cache_config, get

BODY = bytes((i * 7 + 3) % 251 for i in range(1_500_000))
FIRST = 65536                      # sent before the origin waits; the rest after


class _Slow(socketserver.StreamRequestHandler):
    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        srv = self.server
        with srv.lock:
            srv.count += 1
            n = srv.count
        self.request.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: %d\r\n\r\n"
                             % len(BODY))
        if n == 1:
            self.request.sendall(BODY[:FIRST])
            assert srv.release.wait(20)
            self.request.sendall(BODY[FIRST:])
        else:
            self.request.sendall(BODY)


def test_a_client_leaving_a_miss_leaves_the_fill_to_the_others(run_lb, tmp_path):
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Slow)
    srv.daemon_threads = True
    srv.count = 0
    srv.lock = threading.Lock()
    srv.release = threading.Event()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = free_port()
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        run_lb(cache_config(port, srv.server_address[1], run_dir, workers=2))
        # the first client gets the head and some of the body, then resets its connection
        a = socket.create_connection(("127.0.0.1", port), timeout=10)
        a.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)   # the key the others ask for
        got = b""
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) == 0:
            data = a.recv(65536)
            assert data, "lb closed before the body began"
            got += data
        assert got.startswith(b"HTTP/1.1 200")
        results = []

        def client():
            results.append(get(port, "/slow"))
        waiters = [threading.Thread(target=client) for _ in range(6)]
        for t in waiters:
            t.start()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()                                          # a reset, mid-body
        srv.release.set()
        for t in waiters:
            t.join(30)
        assert len(results) == 6
        assert all(status == 200 and body == BODY for status, _, body in results)
        assert srv.count == 1                              # the fill went on without its client
        status, fields, body = get(port, "/slow")
        assert status == 200 and body == BODY and fields["cache-status"].startswith("lb; hit")
        assert srv.count == 1
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
