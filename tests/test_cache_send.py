"""Large hits go from the cache region straight to the client's socket
(lb/fastpath/cache_send.pxi): vmspliced from the workers' mapping of the
region's /dev/shm file into a pipe, checked, then spliced to the socket,
so that the socket holds the region's pages, not a copy. Bodies are intact
whatever the client's pace; an object purged while it is being sent is
cut short, never completed; and a freed block's page is punched out of the
file before the block is reused, so that bytes a socket still holds never
change."""

from __future__ import annotations

import http.client
import json
import os
import socket

import pytest

from conftest import free_port, wait_for
from test_cache import body_of, cache_config, cli, get, lb_cache, origin  # noqa: F401 (fixtures)
from test_cache_disk import lb_disk  # noqa: F401 (fixture)


def _wmem_max() -> int:
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


# more than the kernel holds in flight to a client with a small window: lb's
# send buffer grows to tcp_wmem's maximum (4 MiB by default) at most
BIG = max(7 << 20, _wmem_max() + (3 << 20))
# S3-FIFO's small queue (a tenth of the blocks) must hold it
BIG_CACHE_MIB = max(128, 16 * BIG >> 20)


def region_path(lb) -> str:
    """The cache region's file: unlinked once made, and kept open by the
    supervisor, so reached through its fd."""
    fds = f"/proc/{lb.proc.pid}/fd"
    for fd in os.listdir(fds):
        if os.readlink(f"{fds}/{fd}").startswith("/dev/shm/lb-") and "-cache-c.shm" in os.readlink(f"{fds}/{fd}"):
            return f"{fds}/{fd}"
    raise AssertionError("the supervisor holds no cache region file")


def region_bytes(lb) -> int:
    """Memory the cache's region holds."""
    return os.stat(region_path(lb)).st_blocks * 512


def warm(lb, *targets):
    """Hit each target twice: an object goes from the file once it was hit a
    few times (until then its blocks are not worth punching out)."""
    for target in targets:
        for _ in range(2):
            assert get(lb.port, target)[1]["cache-status"].startswith("lb; hit")


def zero_copy_bytes(lb) -> int:
    """Bytes the workers had the kernel move without a copy through lb
    (splice)."""
    return sum(w["splice_bytes"] for w in lb.worker_stats())


def test_large_hits_are_intact_at_any_pace(origin, lb_cache):
    sizes = (16384, 16385, 20000, 4096 * 25 + 1, 300_000, 1 << 20)
    for i, n in enumerate(sizes):
        origin.routes[f"/b/{i}"] = (200, [("Cache-Control", "max-age=60")], body_of(n, 40 + i))
    lb = lb_cache()
    for i, n in enumerate(sizes):
        get(lb.port, f"/b/{i}")
    # fast: http.client reads as it comes
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    warm(lb, *(f"/b/{i}" for i in range(len(sizes))))
    before = zero_copy_bytes(lb)
    for _ in range(3):
        for i, n in enumerate(sizes):
            conn.request("GET", f"/b/{i}")
            resp = conn.getresponse()
            assert resp.getheader("Cache-Status").startswith("lb; hit")
            assert resp.read() == body_of(n, 40 + i)
    # hot, the bodies went out of the region's file (all but each one's last
    # KiB, which is copied after its check)
    assert zero_copy_bytes(lb) - before >= 3 * sum(n - 1024 for n in sizes)
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


def start_big(origin, run_lb, tmp_path):  # noqa: F811
    """An lb whose cache holds an object of BIG bytes."""
    port = free_port()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lb = run_lb(cache_config(port, origin.port, run_dir).replace('size = "8m"', f'size = "{BIG_CACHE_MIB}m"')
                .replace('max_object_size = "2m"', f'max_object_size = "{(BIG >> 20) + 1}m"'))
    lb.run_dir = run_dir
    lb.port = port
    return lb


def slow_request(port: int, target: str, fields: str = "") -> socket.socket:
    """A request from a client with a small receive buffer: lb waits for it
    to take each part of the answer."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{fields}\r\n".encode())
    return s


def purge_while_read(lb, s: socket.socket) -> bytes:
    """Purge /huge while lb waits for the slow client; what comes after."""
    cli(lb, "cache", "purge", f"http://127.0.0.1:{lb.port}/huge")
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


@pytest.mark.parametrize("pipe_size", [None, 8192, 16384])
def test_a_body_in_scattered_blocks_arrives_intact_whole_and_in_ranges(origin, lb_cache, monkeypatch, pipe_size):
    """An object stored in the freed blocks of several purged ones (runs of
    blocks apart in the region, in no order) goes out of the file in one
    call per pipe's worth, an iovec per run: whole, in ranges that start
    inside a block and cross runs, and to a slow reader. With pipes smaller
    than a round (what F_SETPIPE_SZ gives once pipe-user-pages-soft is
    spent), each call takes what the pipe holds and the next goes on from
    there, inside a run or at its end."""
    if pipe_size:
        monkeypatch.setenv("LB_PIPE_SIZE", str(pipe_size))
    for i in range(6):
        origin.routes[f"/k/{i}"] = (200, [("Cache-Control", "max-age=60")], body_of(8000, 60 + i))
        origin.routes[f"/x/{i}"] = (200, [("Cache-Control", "max-age=60")], body_of(4096 * 3 + 500 * i, 70 + i))
    body = os.urandom(300_000)                    # every piece of it unique: where it is stored shows
    origin.routes["/d"] = (200, [("Cache-Control", "max-age=60")], body)
    lb = lb_cache()
    for i in range(6):                            # k0 x0 k1 x1 ...: each x between two that stay
        get(lb.port, f"/k/{i}")
        get(lb.port, f"/x/{i}")
    for i in range(6):
        cli(lb, "cache", "purge", f"http://127.0.0.1:{lb.port}/x/{i}")
    assert get(lb.port, "/d")[2] == body
    # the body's pieces in the region: runs that do not follow each other
    with open(region_path(lb), "rb") as f:
        region = f.read()
    at = [region.find(body[p:p + 64]) for p in range(0, len(body) - 64, 256)]
    assert all(a >= 0 for a in at[::16]), "the body is not in the region"
    jumps = sum(1 for a, b in zip(at, at[1:]) if a >= 0 and b >= 0 and b - a != 256)
    assert jumps >= 4, "the body was stored in consecutive blocks: the test proves little"
    warm(lb, "/d")
    before = zero_copy_bytes(lb)
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    for first, last in ((0, len(body) - 1), (5000, 250_000), (4095, 4096 * 9), (1, 299_998), (12_289, 299_999)):
        conn.request("GET", "/d", headers={"Range": f"bytes={first}-{last}"})
        resp = conn.getresponse()
        assert resp.read() == body[first:last + 1]
    conn.request("GET", "/d")
    resp = conn.getresponse()
    assert resp.getheader("Cache-Status").startswith("lb; hit") and resp.read() == body
    conn.close()
    assert zero_copy_bytes(lb) - before >= 2 * 250_000, "not sent from the file"
    with socket.socket() as s:                    # slow: a tiny window, small reads
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", lb.port))
        s.sendall(f"GET /d HTTP/1.1\r\nHost: 127.0.0.1:{lb.port}\r\n\r\n".encode())
        head, got = read_head(s)
        while len(got) < len(body) and (chunk := s.recv(1500)):
            got += chunk
    assert b"Cache-Status: lb; hit" in head and got == body
    assert origin.count("/d") == 1


def test_an_object_purged_while_it_is_sent_is_cut_short(origin, run_lb, tmp_path):
    body = body_of(BIG, 7)
    origin.routes["/huge"] = (200, [("Cache-Control", "max-age=60")], body)
    lb = start_big(origin, run_lb, tmp_path)
    port = lb.port
    assert get(port, "/huge")[2] == body
    with slow_request(port, "/huge") as s:
        head, got = read_head(s)
        assert b"Cache-Status: lb; hit" in head and f"Content-Length: {BIG}".encode() in head
        got += purge_while_read(lb, s)
    assert 0 < len(got) < BIG, "the response was not cut"
    assert got == body[:len(got)]          # nothing reused the blocks: what came is the object's
    assert get(port, "/huge")[2] == body   # a miss now, whole from the origin
    assert origin.count("/huge") == 2


def test_a_multipart_answer_whose_object_is_purged_is_cut_short(origin, run_lb, tmp_path):
    body = body_of(BIG, 8)
    origin.routes["/huge"] = (200, [("Cache-Control", "max-age=60"), ("Content-Type", "video/mp4")], body)
    lb = start_big(origin, run_lb, tmp_path)
    port = lb.port
    assert get(port, "/huge")[2] == body
    half = BIG // 2
    with slow_request(port, "/huge", f"Range: bytes={half}-,0-{half - 1}\r\n") as s:
        head, got = read_head(s)
        assert head.startswith(b"HTTP/1.1 206 ") and b"Cache-Status: lb; hit" in head
        boundary = head.split(b"boundary=")[1].split(b"\r\n")[0]
        whole = (b"--%s\r\nContent-Type: video/mp4\r\nContent-Range: bytes %d-%d/%d\r\n\r\n%s"
                 b"\r\n--%s\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-%d/%d\r\n\r\n%s\r\n--%s--\r\n"
                 % (boundary, half, BIG - 1, BIG, body[half:], boundary, half - 1, BIG, body[:half], boundary))
        assert f"Content-Length: {len(whole)}".encode() in head
        got += purge_while_read(lb, s)
    assert 0 < len(got) < len(whole), "the answer was not cut"
    assert got == whole[:len(got)]


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


def read_old_while(lb, old: bytes, rewrite) -> None:
    """A slow client asks for /old (a hit spliced from the file: the kernel
    holds more than a MiB of it at once), rewrite() runs while most of it is in flight,
    then the client reads on: it gets the old object's bytes, whole or cut
    short, and never a byte of another."""
    before = zero_copy_bytes(lb)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        s.settimeout(10)
        s.connect(("127.0.0.1", lb.port))
        s.sendall(f"GET /old HTTP/1.1\r\nHost: 127.0.0.1:{lb.port}\r\n\r\n".encode())
        head, got = read_head(s)
        assert b"Cache-Status: lb; hit" in head
        read_before = len(got)
        rewrite()
        while len(got) < len(old) and (chunk := s.recv(65536)):
            got += chunk
    assert len(got) - read_before > 1 << 20, "little was in flight: the test proves little"
    assert zero_copy_bytes(lb) - before > 1 << 20, "not spliced from the file"
    assert got == old[:len(got)], "bytes of another object arrived"


def test_bytes_in_flight_survive_their_blocks_being_freed_and_rewritten(origin, lb_cache):
    """A slow client holds an object in socket buffers (the region's pages,
    spliced from the file: the kernel holds most of the 1.5 MiB) when the
    object is purged and a new one is stored in the very same blocks: the
    client gets the old object, whole or cut short, and never a byte of the
    new one."""
    size = 1536 * 1024
    old, new = body_of(size, 21), body_of(size, 22)
    origin.routes["/old"] = (200, [("Cache-Control", "max-age=60")], old)
    origin.routes["/new"] = (200, [("Cache-Control", "max-age=60")], new)
    lb = lb_cache()
    assert get(lb.port, "/old")[2] == old
    warm(lb, "/old")

    def rewrite():
        # the old object's blocks go back to the free stack, and the next
        # object of the same size is stored in exactly those blocks
        cli(lb, "cache", "purge", f"http://127.0.0.1:{lb.port}/old")
        status, h, body = get(lb.port, "/new")
        assert body == new and "stored" in h["cache-status"]
        assert get(lb.port, "/new")[1]["cache-status"].startswith("lb; hit")
    read_old_while(lb, old, rewrite)


def test_bytes_in_flight_survive_their_object_being_evicted_by_a_worker(origin, lb_cache):
    """The same when the worker itself evicts the object to store others
    (the punch in the worker, not in the supervisor's purge): the blocks are
    rewritten by other objects while the client still holds the old one."""
    size = 1536 * 1024
    old = body_of(size, 31)
    origin.routes["/old"] = (200, [("Cache-Control", "max-age=60")], old)
    for k in range(40):
        origin.routes[f"/fill/{k}"] = (200, [("Cache-Control", "max-age=60")], body_of(1 << 20, 100 + k))
    lb = lb_cache()
    assert get(lb.port, "/old")[2] == old
    warm(lb, "/old")

    def rewrite():
        for k in range(40):                        # 40 MiB through the 8 MiB cache
            assert get(lb.port, f"/fill/{k}")[2] == body_of(1 << 20, 100 + k)
        assert "fwd=uri-miss" in get(lb.port, "/old")[1]["cache-status"]   # it was evicted
    read_old_while(lb, old, rewrite)


def test_freed_blocks_of_a_sent_object_give_their_pages_back(origin, lb_cache):
    """A purged (or evicted) object that went out of the file has its pages
    punched out of the region's file: the shared memory it used is
    returned at once, and the object stored next in its blocks is intact."""
    size = 1536 * 1024
    origin.routes["/p"] = (200, [("Cache-Control", "max-age=60")], body_of(size, 5))
    lb = lb_cache()
    get(lb.port, "/p")
    warm(lb, "/p")
    held = region_bytes(lb)
    cli(lb, "cache", "purge", f"http://127.0.0.1:{lb.port}/p")
    assert held - region_bytes(lb) >= size
    assert get(lb.port, "/p")[2] == body_of(size, 5)      # stored again, in fresh pages
    assert get(lb.port, "/p")[2] == body_of(size, 5)


def test_disk_tier_hits_keep_the_copy_path_and_arrive_intact(origin, lb_disk):
    """A disk tier's file is not punched (its blocks stay allocated, so that
    a full disk can never fault a worker): its hits are copied, never
    spliced, and arrive whole; promoted back into memory and hit there,
    the object goes out of the memory tier's file again."""
    from test_cache_disk import push_out_of_memory

    n = 60000
    origin.routes["/d"] = (200, [("Cache-Control", "max-age=3600")], body_of(n, 60))
    lb = lb_disk()
    get(lb.port, "/d")
    push_out_of_memory(origin, lb)
    before = zero_copy_bytes(lb)
    for _ in range(3):
        status, h, body = get(lb.port, "/d")
        assert body == body_of(n, 60) and h["cache-status"].endswith("; detail=disk")
    assert zero_copy_bytes(lb) == before
    # the 4th hit promotes it (and is answered from memory): the 5th is a memory hit
    for detail in (True, False):
        status, h, body = get(lb.port, "/d")
        assert body == body_of(n, 60) and ("; detail=disk" in h["cache-status"]) == detail
    warm(lb, "/d")
    assert zero_copy_bytes(lb) > before
    assert origin.count("/d") == 1


@pytest.mark.parametrize("super_options, fstype, shmem, zero_copy", [
    ("rw,size=24683784k", "tmpfs", "always within_size advise [never] deny force", True),
    ("rw,size=1g,huge=never", "tmpfs", "always within_size advise [never] deny force", True),
    ("rw,size=1g,huge=within_size", "tmpfs", "always within_size advise [never] deny force", False),
    ("rw,size=1g,huge=always", "tmpfs", "always within_size advise [never] deny force", False),
    ("rw,size=24683784k", "tmpfs", "always within_size advise never deny [force]", False),
    ("rw,relatime", "ext4", "always within_size advise [never] deny force", False),
])
def test_zero_copy_only_where_a_block_is_a_page_of_its_own(tmp_path, super_options, fstype, shmem, zero_copy):
    """In a huge page, a punch the kernel cannot split the page for (a
    socket holding it is enough) zeroes the block in place, and the socket
    would send those zeros: the file is spliced from only on a tmpfs of
    small pages."""
    from lb._fastpath import _small_pages

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("24 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                         f"25 24 0:23 / /dev/shm rw,relatime shared:2 - {fstype} {fstype} {super_options}\n")
    enabled = tmp_path / "shmem_enabled"
    enabled.write_text(shmem + "\n")
    assert _small_pages("/dev/shm/lb-1-cache-c.shm", str(mountinfo), str(enabled)) is zero_copy
    assert _small_pages("/var/lib/lb/x", str(mountinfo), str(enabled)) is False     # ext4
