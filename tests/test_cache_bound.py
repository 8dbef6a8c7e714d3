"""The cache's size bound under random keys (issue 15's acceptance): many
thousands of requests for random keys and objects of mixed sizes, through a
small cache, leave its shared memory within its size and the workers' memory
where it was after a warm-up; and every body arrives intact, from the cache
or from the origin.

Memory is compared by amount, never by time: the bound is what a run of
this length may add once the workers' pools have reached their working size."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import random
import socket
import socketserver
import threading

import psutil
import pytest

from conftest import free_port
from test_cache import cache_config

CACHE_SIZE = 2 << 20
MAX_OBJECT = 256 << 10
KEYS = 5000                       # distinct objects: ~90 MiB of them, 45x the cache
CLIENTS = 4
WARMUP = 3000                     # requests until the pools are at their working size
MEASURED = 9000                   # requests after it
# what a worker's RSS may grow by over MEASURED requests, once warm (measured
# here: 0-16 KiB): a leak of 128 bytes a request (4,500 a worker) is more
RSS_SLACK = 512 << 10
# mixed sizes: most small, some over the block size and the client buffer, a
# few above max_object_size (streamed through, never stored)
SIZES = ((60, 120), (25, 3000), (10, 20_000), (4, 90_000), (1, 300_000))


def size_of(key: int) -> int:
    """The object size of a key, drawn once per key from SIZES's weights."""
    r = random.Random(key).randrange(sum(w for w, _ in SIZES))
    for weight, size in SIZES:
        if r < weight:
            return size + key % 97     # sizes that are not multiples of a block
        r -= weight
    raise AssertionError("unreachable")


def body_of(key: int) -> bytes:
    block = hashlib.sha256(b"%d" % key).digest() * 64
    n = size_of(key)
    return (block * (n // len(block) + 1))[:n]


class _KeyedHandler(socketserver.StreamRequestHandler):
    """GET /o/KEY: body_of(KEY), fresh for an hour. Counts the requests."""

    def handle(self):
        while True:
            line = self.rfile.readline()
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            key = int(target.rsplit("/", 1)[1])
            with self.server.lock:
                self.server.requests += 1
            payload = body_of(key)
            head = (f"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nETag: \"{key}\"\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n")
            self.wfile.write(head.encode() + (b"" if method == "HEAD" else payload))
            self.wfile.flush()


class KeyedOrigin(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _KeyedHandler)
        self.lock = threading.Lock()
        self.requests = 0
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def keyed_origin():
    o = KeyedOrigin()
    yield o
    o.shutdown()
    o.server_close()


def cache_stats(run_dir) -> dict:
    """The cache's counters and occupancy, from the admin socket (cache.stats)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(run_dir / "admin.sock"))
        s.sendall(b'{"v": 1, "cmd": "cache.stats"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, "the admin socket closed"
            data += chunk
    reply = json.loads(data)
    assert reply.get("ok", True) and "result" in reply, reply
    return reply["result"]["caches"][0]["counts"]


def fetch_all(port: int, keys: list[tuple[str, int]]) -> list[str]:
    """Each (method, key) on one keep-alive connection; the Cache-Status of each.
    Every body is checked against the origin's."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    notes = []
    try:
        for method, key in keys:
            conn.request(method, f"/o/{key}")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (key, resp.status, body[:200])
            expected = body_of(key)
            assert int(resp.getheader("Content-Length")) == len(expected), key
            if method == "GET":
                assert body == expected, f"/o/{key}: {len(body)} bytes, not the origin's {len(expected)}"
            else:
                assert body == b""
            notes.append(resp.getheader("Cache-Status") or "")
    finally:
        conn.close()
    return notes


def run_requests(port: int, run_dir, plan: list[tuple[str, int]], batch: int = 500) -> list[str]:
    """The plan over CLIENTS connections, in batches; after each batch the
    region's occupancy is checked against its size."""
    notes = []
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        for start in range(0, len(plan), batch):
            part = plan[start:start + batch]
            got = list(pool.map(fetch_all, [port] * CLIENTS, [part[i::CLIENTS] for i in range(CLIENTS)]))
            notes.extend(got[i % CLIENTS][i // CLIENTS] for i in range(len(part)))   # the plan's order
            st = cache_stats(run_dir)
            assert st["size"] <= CACHE_SIZE, st
            assert st["bytes"] <= st["capacity"] <= st["size"], st
            assert st["blocks_used"] <= st["blocks"], st
    return notes


def region_bytes(pid: int) -> int:
    """The size of the cache region a worker maps (its file is unlinked once
    mapped, so it shows in /proc as deleted)."""
    total = 0
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if "-cache-c.shm" in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                total += hi - lo
    assert total, f"worker {pid} maps no cache region"
    return total


def rss(pids: list[int]) -> list[int]:
    return [psutil.Process(pid).memory_info().rss for pid in pids]


def test_random_keys_keep_shared_memory_and_rss_flat(keyed_origin, run_lb, tmp_path):
    port = free_port()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    text = cache_config(port, keyed_origin.port, run_dir, workers=2)
    text = text.replace('size = "8m"', f'size = "{CACHE_SIZE >> 20}m"').replace(
        'max_object_size = "2m"', f'max_object_size = "{MAX_OBJECT >> 10}k"')
    lb = run_lb(text)
    workers = [lb.worker_pid(row) for row in range(lb.n_workers)]
    mapped = [region_bytes(pid) for pid in workers]
    assert all(m <= CACHE_SIZE for m in mapped), mapped

    rng = random.Random(15)
    plan = [("HEAD" if rng.random() < 0.05 else "GET", rng.randrange(KEYS)) for _ in range(WARMUP + MEASURED)]
    notes = run_requests(port, run_dir, plan[:WARMUP])
    warm = rss(workers)
    notes += run_requests(port, run_dir, plan[WARMUP:])
    after = rss(workers)

    # the same workers served it all (none died and was respawned)
    assert [lb.worker_pid(row) for row in range(lb.n_workers)] == workers
    assert [region_bytes(pid) for pid in workers] == mapped
    for pid, before, now in zip(workers, warm, after):
        assert now <= before + RSS_SLACK, f"worker {pid}: RSS {before} after the warm-up, {now} at the end"

    st = cache_stats(run_dir)
    hits = sum(n.startswith("lb; hit") for n in notes)
    # the cache worked the whole time: it stored, evicted, and answered hits
    # (a 2 MiB cache holds a few percent of the keys' bytes)
    assert st["evicted"] > 1000 and st["stored"] > st["evicted"], st
    assert hits > 200 and st["hit"] == hits, (hits, st)
    # objects above max_object_size streamed through: never stored, never a hit
    big = {k for _, k in plan if size_of(k) > MAX_OBJECT}
    assert big and not any(n.startswith("lb; hit") for (_, k), n in zip(plan, notes) if k in big)
    assert keyed_origin.requests == len(plan) - hits
