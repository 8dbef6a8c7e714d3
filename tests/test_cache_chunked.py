"""Chunked responses in the cache (docs/cache.md, "What is stored"): stored
decoded, with a Content-Length, up to max_object_size; larger ones stream
through uncached and intact; a body the origin cuts short is never stored."""

from __future__ import annotations

import http.client
import socket
import struct
import threading

import pytest

from conftest import free_port
from test_cache import body_of, cache_config, get, lb_cache, origin  # noqa: F401 (fixtures)
from test_cache import cache_counts as counts


def chunked(body: bytes, size: int, trailer: bytes = b"") -> bytes:
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                   for i in range(0, len(body), size))
    return out + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("size,chunk", [(5, 2), (100000, 4096), (1500000, 1000)])
def test_a_chunked_response_is_stored_with_its_length_and_served_intact(origin, lb_cache, size, chunk):
    body = body_of(size, 3)
    origin.routes["/ch"] = (200, [("Cache-Control", "max-age=60"), ("Transfer-Encoding", "chunked"),
                                  ("Trailer", "X-Sum")], chunked(body, chunk, b"X-Sum: 42\r\n"))
    lb = lb_cache()
    status, h, got = get(lb.port, "/ch")
    assert (status, got) == (200, body)
    assert h["transfer-encoding"] == "chunked" and h["cache-status"].startswith("lb; fwd=uri-miss; stored")
    status, h, got = get(lb.port, "/ch")
    assert (status, got) == (200, body)
    assert h["content-length"] == str(size) and "transfer-encoding" not in h
    assert "x-sum" not in h and "trailer" not in h         # trailers are not stored
    assert h["cache-status"].startswith("lb; hit")
    assert origin.count("/ch") == 1
    # a range of it, from the stored length
    status, h, got = get(lb.port, "/ch", headers={"Range": "bytes=1-3"})
    assert (status, got, h["content-range"]) == (206, body[1:4], f"bytes 1-3/{size}")


def test_a_chunked_body_past_max_object_size_streams_through_and_is_not_stored(origin, lb_cache):
    body = body_of(3 * 1024 * 1024, 4)           # the cache's max_object_size is 2m
    origin.routes["/big"] = (200, [("Cache-Control", "max-age=60"), ("Transfer-Encoding", "chunked")],
                             chunked(body, 65536))
    lb = lb_cache()
    for i in range(2):
        status, h, got = get(lb.port, "/big")
        assert (status, len(got), got == body) == (200, len(body), True)
        assert not h["cache-status"].startswith("lb; hit")
    assert origin.count("/big") == 2
    assert counts(lb)["stored"] == 0


class RawOrigin:
    """An origin that answers each request on its own connection with the
    next of `answers` (bytes), then closes it: with a FIN, or with a reset
    when the answer is in `resets`."""

    def __init__(self, answers, resets=()):
        self.answers = list(answers)
        self.resets = set(resets)
        self.requests = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    break
                data += more
            if data:
                i = min(self.requests, len(self.answers) - 1)
                self.requests += 1
                conn.sendall(self.answers[i])
                if i in self.resets:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()


def raw_lb(run_lb, tmp_path, origin_port):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()
    lb = run_lb(cache_config(port, origin_port, run_dir))
    lb.port, lb.run_dir = port, run_dir
    return lb


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"


def test_a_chunked_body_cut_by_the_origin_is_never_stored(run_lb, tmp_path):
    body = body_of(20000, 5)
    whole = chunked(body, 1000)
    raw = RawOrigin([CHUNKED_HEAD + whole[:len(whole) // 2], CHUNKED_HEAD + whole])
    lb = raw_lb(run_lb, tmp_path, raw.port)
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    conn.request("GET", "/cut")
    resp = conn.getresponse()
    # cut short, either way, at the origin's close (it stopped inside a
    # chunk-size line: the pool's response_timeout of 60 s is not what ends it)
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        resp.read()
    conn.close()
    status, h, got = get(lb.port, "/cut")
    assert (status, got) == (200, body)
    assert h["cache-status"].startswith("lb; fwd=uri-miss; stored")
    assert raw.requests == 2
    status, h, got = get(lb.port, "/cut")
    assert (status, got) == (200, body) and h["cache-status"].startswith("lb; hit")
    raw.sock.close()


@pytest.mark.parametrize("coding", [b"", b"Transfer-Encoding: x-custom\r\n"])
def test_a_body_delimited_by_the_close_is_stored_with_its_length(run_lb, tmp_path, coding):
    body = body_of(70000, 6)
    raw = RawOrigin([b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n" + coding + b"Connection: close\r\n\r\n"
                     + body])
    lb = raw_lb(run_lb, tmp_path, raw.port)
    status, h, got = get(lb.port, "/eof")
    assert (status, got) == (200, body) and h["cache-status"].startswith("lb; fwd=uri-miss; stored")
    status, h, got = get(lb.port, "/eof")
    assert (status, got) == (200, body) and h["cache-status"].startswith("lb; hit")
    assert h["content-length"] == str(len(body)) and "transfer-encoding" not in h
    assert raw.requests == 1
    raw.sock.close()


def test_a_body_delimited_by_the_close_and_cut_by_a_reset_is_not_stored(run_lb, tmp_path):
    body = body_of(70000, 7)
    head = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nConnection: close\r\n\r\n"
    raw = RawOrigin([head + body[:30000], head + body], resets={0})
    lb = raw_lb(run_lb, tmp_path, raw.port)
    try:
        get(lb.port, "/rst")
    except (http.client.HTTPException, ConnectionError):
        pass                                     # what the client sees of it is lb's to decide
    status, h, got = get(lb.port, "/rst")
    assert (status, got) == (200, body) and h["cache-status"].startswith("lb; fwd=uri-miss; stored")
    assert raw.requests == 2
    raw.sock.close()
