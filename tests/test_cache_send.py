"""Large hits go from the cache region straight to the client's socket
(lb/fastpath/cache_send.pxi): bodies intact whatever the client's pace, and
an object purged while it is being sent is cut short, never completed."""

from __future__ import annotations

import http.client
import socket

from conftest import free_port
from test_cache import body_of, cache_config, cli, get, lb_cache, origin  # noqa: F401 (fixtures)


def _wmem_max() -> int:
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


# more than the kernel holds in flight to a client with a small window: lb's
# send buffer grows to tcp_wmem's maximum (4 MiB by default) at most
BIG = max(7 << 20, _wmem_max() + (3 << 20))
# S3-FIFO's small queue (a tenth of the blocks) must hold it
BIG_CACHE_MIB = max(128, 16 * BIG >> 20)


def test_large_hits_are_intact_at_any_pace(origin, lb_cache):
    sizes = (16384, 16385, 20000, 4096 * 25 + 1, 300_000)
    for i, n in enumerate(sizes):
        origin.routes[f"/b/{i}"] = (200, [("Cache-Control", "max-age=60")], body_of(n, 40 + i))
    lb = lb_cache()
    for i, n in enumerate(sizes):
        get(lb.port, f"/b/{i}")
    # fast: http.client reads as it comes
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    for _ in range(3):
        for i, n in enumerate(sizes):
            conn.request("GET", f"/b/{i}")
            resp = conn.getresponse()
            assert resp.getheader("Cache-Status").startswith("lb; hit")
            assert resp.read() == body_of(n, 40 + i)
    # a range that starts inside a block and spans many
    for first, last in ((5000, 250_000), (4096, 4096 * 9 - 1), (1, 299_999)):
        conn.request("GET", "/b/4", headers={"Range": f"bytes={first}-{last}"})
        resp = conn.getresponse()
        assert resp.status == 206 and resp.read() == body_of(300_000, 44)[first:last + 1]
    conn.request("HEAD", "/b/4")
    resp = conn.getresponse()
    assert resp.read() == b"" and resp.getheader("Content-Length") == "300000"
    conn.close()
    # slow: a tiny receive window, read in small pieces, two requests pipelined
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", lb.port))
        host = f"Host: 127.0.0.1:{lb.port}\r\n"      # the key's host: http.client's
        s.sendall(f"GET /b/4 HTTP/1.1\r\n{host}\r\nGET /b/3 HTTP/1.1\r\n{host}\r\n".encode())
        data = b""
        last = body_of(4096 * 25 + 1, 43)
        while not (data.count(b"HTTP/1.1 200") == 2 and data.endswith(last)):
            chunk = s.recv(1500)
            assert chunk, "closed early"
            data += chunk
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"content-length: 300000" in first.lower()
    assert b"cache-status: lb; hit" in first.lower()
    assert rest[:300_000] == body_of(300_000, 44)
    second_head, _, second = rest[300_000:].partition(b"\r\n\r\n")
    assert second_head.startswith(b"HTTP/1.1 200") and second == body_of(4096 * 25 + 1, 43)
    assert origin.count("/b/4") == 1 and origin.count("/b/3") == 1


def read_head(s: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(512)
        assert chunk, "closed before the head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_an_object_purged_while_it_is_sent_is_cut_short(origin, run_lb, tmp_path):
    body = body_of(BIG, 7)
    origin.routes["/huge"] = (200, [("Cache-Control", "max-age=60")], body)
    port = free_port()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lb = run_lb(cache_config(port, origin.port, run_dir).replace('size = "8m"', f'size = "{BIG_CACHE_MIB}m"')
                .replace('max_object_size = "2m"', f'max_object_size = "{(BIG >> 20) + 1}m"'))
    lb.run_dir = run_dir
    assert get(port, "/huge")[2] == body
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /huge HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head, got = read_head(s)
        assert b"Cache-Status: lb; hit" in head and f"Content-Length: {BIG}".encode() in head
        # lb waits for the client to take more: the object goes meanwhile
        cli(lb, "cache", "purge", f"http://127.0.0.1:{port}/huge")
        while chunk := s.recv(65536):
            got += chunk
    assert 0 < len(got) < BIG, "the response was not cut"
    assert got == body[:len(got)]          # nothing reused the blocks: what came is the object's
    assert get(port, "/huge")[2] == body   # a miss now, whole from the origin
    assert origin.count("/huge") == 2


def test_large_hits_over_tls_keep_the_copy_path_and_arrive_intact(origin, lb_cache, tmp_path):
    """TLS encrypts from lb's buffer: a large hit to a TLS client is never
    sent from the region's blocks, and arrives whole."""
    from tls_certs import CA
    from tls_client import client_context

    ca = CA(tmp_path / "pki")
    leaf = ca.leaf("site", ("site.test", "127.0.0.1"))
    body = body_of(300_000, 9)
    origin.routes["/t"] = (200, [("Cache-Control", "max-age=60")], body)
    lb = lb_cache(listener_extra=f'\n[listeners.web.tls]\ncertificates = [{{ cert = "{leaf.cert}", key = "{leaf.key}" }}]\n')
    ctx = client_context(ca.path)
    for n in range(3):
        conn = http.client.HTTPSConnection("127.0.0.1", lb.port, timeout=10, context=ctx)
        conn.request("GET", "/t")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == body
        assert resp.getheader("Cache-Status").startswith("lb; hit" if n else "lb; fwd=uri-miss")
        conn.close()
    assert origin.count("/t") == 1


def test_a_large_hit_is_logged_with_every_byte_it_sent(origin, lb_cache, tmp_path):
    import json

    from conftest import wait_for

    log = tmp_path / "access.log"
    body = body_of(200_000, 11)
    origin.routes["/l"] = (200, [("Cache-Control", "max-age=60")], body)
    lb = lb_cache(more=f'\n[logs.access]\nformat = "json"\ntarget = "file:{log}"\n')
    get(lb.port, "/l")
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
        s.sendall(f"GET /l HTTP/1.1\r\nHost: 127.0.0.1:{lb.port}\r\n\r\n".encode())
        head, got = read_head(s)
        while len(got) < len(body):
            chunk = s.recv(65536)
            assert chunk
            got += chunk
    assert b"Cache-Status: lb; hit" in head and got == body

    def records():
        try:
            return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            return []
    rec = wait_for(lambda: (lambda r: r[1] if len(r) >= 2 else None)(records()), 10, "two log lines")
    # the head and the body: what the client read, counted once
    assert (rec["status"], rec["bytes_out"]) == (200, len(head) + 4 + len(body))
