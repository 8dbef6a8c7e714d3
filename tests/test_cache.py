"""The shared cache ([caches.NAME], docs/cache.md) against a real origin
over loopback that counts its requests: what is stored and reused (RFC 9111
for a shared cache), Age and Cache-Status, Vary, invalidation by unsafe
methods, purge (admin socket and HTTP PURGE), the size bound, reloads and
worker deaths, and bodies intact from the cache."""

from __future__ import annotations

import collections
import email.utils
import hashlib
import http.client
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, process_gone, wait_for
from lb import config
from lb._fastpath import CacheShm, phase_plan

ROOT = Path(__file__).resolve().parent.parent


# ---- an origin that counts ------------------------------------------------------------


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        origin = self.server.origin
        while True:
            line = self.rfile.readline()
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers = {}
            while True:
                h = self.rfile.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
            body = b""
            if "content-length" in headers:
                body = self.rfile.read(int(headers["content-length"][0]))
            with origin.lock:
                origin.hits[target] += 1
                origin.requests.append((method, target, headers))
                n = origin.hits[target]
            spec = origin.routes.get(target.split("?")[0], (200, [], b"default"))
            if callable(spec):
                spec = spec(method, headers, n)
            status, fields, payload = spec
            if isinstance(payload, str):
                payload = payload.encode()
            head = f"HTTP/1.1 {status} X\r\n"
            names = {k.lower() for k, _ in fields}
            if "date" not in names:
                head += f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            for k, v in fields:
                head += f"{k}: {v}\r\n"
            if "content-length" not in names and "transfer-encoding" not in names:
                head += f"Content-Length: {len(payload)}\r\n"
            if isinstance(payload, list):    # the body in parts, an Event to wait for between them
                self.wfile.write(head.encode("latin-1") + b"\r\n")
                for part in payload:
                    if isinstance(part, threading.Event):
                        assert part.wait(20)
                    else:
                        self.wfile.write(part)
                    self.wfile.flush()
                continue
            self.wfile.write(head.encode("latin-1") + b"\r\n" + (b"" if method == "HEAD" else payload))
            self.wfile.flush()


class CountingOrigin(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.origin = self
        self.routes: dict = {}
        self.hits: collections.Counter = collections.Counter()
        self.requests: list = []
        self.lock = threading.Lock()
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def count(self, target: str) -> int:
        with self.lock:
            return self.hits[target]


@pytest.fixture
def origin():
    o = CountingOrigin()
    yield o
    o.shutdown()
    o.server_close()


def cache_config(port, origin_port, run_dir, *, workers=1, cache_extra="", listener_extra="", more=""):
    return textwrap.dedent(f"""\
        [global]
        workers = {workers}
        drain_timeout = "2s"
        admin_socket = "{run_dir}/admin.sock"
        state_file = "{run_dir}/state.json"

        [acls.local]
        cidrs = ["127.0.0.0/8"]

        [caches.c]
        size = "8m"
        max_object_size = "2m"
        tag_header = "Surrogate-Key"
        {cache_extra}

        [listeners.web]
        bind = ["127.0.0.1:{port}"]
        mode = "http"
        pool = "p"
        cache = "c"
        {listener_extra}

        [pools.p]
        [pools.p.health]
        type = "none"
        [[pools.p.backends]]
        address = "127.0.0.1:{origin_port}"
        """) + textwrap.dedent(more)


@pytest.fixture
def lb_cache(run_lb, tmp_path, origin):
    def start(**kwargs):
        port = free_port()
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        lb = run_lb(cache_config(port, origin.port, run_dir, **kwargs))
        lb.port = port
        lb.run_dir = run_dir
        return lb
    return start


def get(port, target, method="GET", headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def cli(lb, *args):
    out = subprocess.run([sys.executable, "-m", "lb", "--socket", str(lb.run_dir / "admin.sock"), *args],
                         capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def cache_counts(lb) -> dict:
    """The first cache's counters (lb cache stats)."""
    return json.loads(cli(lb, "cache", "stats", "--json"))["caches"][0]["counts"]


# ---- config and layout -----------------------------------------------------------------


def test_a_cache_listener_runs_its_steps():
    cfg = config.loads(cache_config(1, 2, "/tmp"))
    assert cfg.caches["c"].size == 8 << 20
    assert cfg.caches["c"].max_object_size == 2 << 20
    plan = phase_plan(cfg.listeners["web"])
    assert "cache" in plan["request"] and plan["response"][0] == "cache_store" and "cache_end" in plan["end"]


@pytest.mark.parametrize("extra, listener_extra, path", [
    ('', 'cache = "nope"', "listeners.web.cache"),
    ('purge_allow = ["nope"]', '', "caches.c.purge_allow"),
    ('range_fill = "yes"', '', "caches.c.range_fill"),
    ('', '', None),
])
def test_bad_cache_config_names_the_key(extra, listener_extra, path):
    text = cache_config(1, 2, "/tmp", cache_extra=extra, listener_extra=listener_extra)
    if path is None:
        text = text.replace('size = "8m"', 'size = "lots"')
        path = "caches.c.size"
    else:
        text = text.replace('cache = "c"\n' + listener_extra, listener_extra) if listener_extra else text
    with pytest.raises(config.ConfigError) as info:
        config.loads(text)
    assert info.value.path == path


def test_the_region_never_exceeds_its_size(tmp_path):
    for size in (1 << 20, 8 << 20, (64 << 20) + 12345):
        region = CacheShm.create(str(tmp_path / "c.shm"), size, 1 << 20)
        try:
            assert os.path.getsize(tmp_path / "c.shm") <= size
            st = region.stats()
            assert st["size"] <= size and st["capacity"] > size * 0.8
        finally:
            region.unlink()


# ---- serving --------------------------------------------------------------------------------


def test_a_fresh_response_is_served_from_the_cache_with_age_and_cache_status(origin, lb_cache):
    origin.routes["/a"] = (200, [("Cache-Control", "max-age=60"), ("ETag", '"v1"')], b"hello")
    lb = lb_cache()
    status, h, body = get(lb.port, "/a")
    assert (status, body) == (200, b"hello")
    assert h["cache-status"] == "lb; fwd=uri-miss; stored; ttl=60"
    assert "age" not in h
    status, h, body = get(lb.port, "/a")
    assert (status, body) == (200, b"hello")
    assert h["cache-status"].startswith("lb; hit; ttl=")
    assert int(h["age"]) >= 0 and h["etag"] == '"v1"'
    assert origin.count("/a") == 1
    status, h, body = get(lb.port, "/a", method="HEAD")
    assert (status, body, h["content-length"]) == (200, b"", "5")
    assert origin.count("/a") == 1


def httpdate(offset: float = 0.0) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


def twice(origin, port, target, **kwargs):
    """Two requests; the origin's count and the second answer's Cache-Status."""
    get(port, target, **kwargs)
    status, h, body = get(port, target, **kwargs)
    return origin.count(target), h.get("cache-status", ""), status, body


def test_what_a_shared_cache_must_not_store(origin, lb_cache):
    origin.routes.update({
        "/no-store": (200, [("Cache-Control", "max-age=60, no-store")], b"x"),
        "/private": (200, [("Cache-Control", "private, max-age=60")], b"x"),
        "/no-cache": (200, [("Cache-Control", "no-cache, max-age=60")], b"x"),
        "/cookie": (200, [("Last-Modified", httpdate(-3600)), ("Set-Cookie", "s=1")], b"x"),  # a heuristic only
        "/bad-max-age": (200, [("Cache-Control", "max-age=60a")], b"x"),
        "/vary-star": (200, [("Cache-Control", "max-age=60"), ("Vary", "*")], b"x"),
        "/partial": (206, [("Cache-Control", "max-age=60"), ("Content-Range", "bytes 0-0/2")], b"x"),
        "/nothing": (200, [], b"x"),  # no freshness at all, no validator to guess from
        "/redirect-heuristic": lambda m, h, n: (302, [("Last-Modified", httpdate(-3600)), ("Location", "/x")], b""),
        "/expired": lambda m, h, n: (200, [("Expires", httpdate(-10))], b"x"),
        "/bad-expires": (200, [("Expires", "0")], b"x"),
        "/stale-on-arrival": (200, [("Cache-Control", "max-age=60"), ("Age", "100")], b"x"),
        "/two-etags": (200, [("Cache-Control", "max-age=60"), ("ETag", '"a"'), ("ETag", '"b"')], b"x"),
    })
    lb = lb_cache()
    for target in origin.routes:
        count, cache_status, status, body = twice(origin, lb.port, target)
        assert count == 2, target
        assert "hit" not in cache_status, target
    st = json.loads(cli(lb, "cache", "stats", "--json"))["caches"][0]["counts"]
    assert st["stored"] == 0 and st["not_stored"] >= 2 * len(origin.routes) - 2


@pytest.mark.parametrize("fields, ttl", [
    (lambda: [("Cache-Control", "max-age=0, s-maxage=60")], 60),                       # s-maxage wins
    (lambda: [("Expires", httpdate(120))], 120),                                        # Expires - Date
    (lambda: [("Cache-Control", "public"), ("Last-Modified", httpdate(-1000))], 100),   # heuristic: a tenth of its age
    (lambda: [("Last-Modified", httpdate(-1000))], 100),
    (lambda: [("Cache-Control", "max-age=60"), ("Age", "20")], 40),                     # the age it came with counts
])
def test_freshness_from_each_source(origin, lb_cache, fields, ttl):
    origin.routes["/f"] = lambda method, headers, n: (200, fields(), b"fresh")
    lb = lb_cache()
    status, h, _ = get(lb.port, "/f")
    assert h["cache-status"].startswith("lb; fwd=uri-miss; stored; ttl=")
    assert abs(int(h["cache-status"].rsplit("=", 1)[1]) - ttl) <= 2
    status, h, body = get(lb.port, "/f")
    assert (status, body, origin.count("/f")) == (200, b"fresh", 1)
    assert h["cache-status"].startswith("lb; hit")
    assert abs(int(h["age"]) - (60 - ttl if ttl == 40 else 0)) <= 2


def test_a_response_stops_being_served_once_stale(origin, lb_cache):
    origin.routes["/short"] = (200, [("Cache-Control", "max-age=1")], b"short")
    lb = lb_cache()
    get(lb.port, "/short")
    assert get(lb.port, "/short")[1]["cache-status"].startswith("lb; hit")
    time.sleep(2.1)  # what is tested is the clock itself
    status, h, body = get(lb.port, "/short", headers={"Cache-Control": "max-stale"})   # the client accepts it stale
    assert h["cache-status"].startswith("lb; hit; ttl=-") and origin.count("/short") == 1
    status, h, body = get(lb.port, "/short", headers={"Cache-Control": "max-stale=3600"})
    assert h["cache-status"].startswith("lb; hit") and origin.count("/short") == 1
    status, h, body = get(lb.port, "/short")
    assert (body, h["cache-status"], origin.count("/short")) == (b"short", "lb; fwd=stale; stored; ttl=1", 2)


def test_request_directives(origin, lb_cache):
    origin.routes["/r"] = (200, [("Cache-Control", "max-age=60")], b"r")
    lb = lb_cache()
    status, h, _ = get(lb.port, "/other", headers={"Cache-Control": "only-if-cached"})
    assert status == 504 and origin.count("/other") == 0
    get(lb.port, "/r")
    status, h, _ = get(lb.port, "/r", headers={"Cache-Control": "no-cache"})
    assert h["cache-status"].startswith("lb; fwd=request") and origin.count("/r") == 2
    status, h, _ = get(lb.port, "/r", headers={"Pragma": "no-cache"})
    assert origin.count("/r") == 3
    status, h, _ = get(lb.port, "/r", headers={"Cache-Control": "max-age=0"})
    assert h["cache-status"].startswith("lb; fwd=request") and origin.count("/r") == 4
    status, h, _ = get(lb.port, "/r", headers={"Cache-Control": "min-fresh=3600"})
    assert origin.count("/r") == 5
    status, h, _ = get(lb.port, "/r", headers={"Cache-Control": "only-if-cached"})
    assert status == 200 and h["cache-status"].startswith("lb; hit") and origin.count("/r") == 5


def test_requests_with_authorization(origin, lb_cache):
    origin.routes["/mine"] = (200, [("Cache-Control", "max-age=60")], b"mine")
    origin.routes["/shared"] = (200, [("Cache-Control", "public, max-age=60")], b"shared")
    lb = lb_cache()
    auth = {"Authorization": "Bearer x"}
    assert twice(origin, lb.port, "/mine", headers=auth)[0] == 2      # not stored from an authorized request
    get(lb.port, "/mine")                                              # stored from an anonymous one ...
    status, h, _ = get(lb.port, "/mine", headers=auth)                 # ... but not reused for an authorized one
    assert origin.count("/mine") == 4 and "hit" not in h["cache-status"]
    count, cache_status, _, body = twice(origin, lb.port, "/shared", headers=auth)   # public allows both
    assert (count, body) == (1, b"shared") and cache_status.startswith("lb; hit")


def test_vary_keeps_variants_apart(origin, lb_cache):
    def answer(method, headers, n):
        enc = headers.get("accept-encoding", ["identity"])[0]
        return 200, [("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")], f"{enc}-{n}"
    origin.routes["/v"] = answer
    lb = lb_cache()
    assert get(lb.port, "/v", headers={"Accept-Encoding": "gzip"})[2] == b"gzip-1"
    status, h, body = get(lb.port, "/v", headers={"Accept-Encoding": "br"})
    assert body == b"br-2" and h["cache-status"].startswith("lb; fwd=vary-miss; stored")
    assert get(lb.port, "/v", headers={"Accept-Encoding": "gzip"})[2] == b"gzip-1"
    assert get(lb.port, "/v", headers={"Accept-Encoding": "br"})[2] == b"br-2"
    assert get(lb.port, "/v")[2] == b"identity-3"          # absent is a variant of its own
    assert get(lb.port, "/v")[2] == b"identity-3"
    assert origin.count("/v") == 3


def test_connection_listed_and_hop_by_hop_fields_are_not_stored(origin, lb_cache):
    origin.routes["/hop"] = (200, [("Cache-Control", "max-age=60"), ("Connection", "X-Private"),
                                   ("X-Private", "hop"), ("X-Kept", "end-to-end"), ("Keep-Alive", "timeout=5")],
                             b"hop")
    lb = lb_cache()
    get(lb.port, "/hop")
    status, h, body = get(lb.port, "/hop")
    assert h["cache-status"].startswith("lb; hit") and body == b"hop"
    assert h["x-kept"] == "end-to-end" and "x-private" not in h and "keep-alive" not in h


def test_unsafe_methods_invalidate_target_location_and_content_location(origin, lb_cache):
    for path in ("/item", "/list", "/alias", "/elsewhere"):
        origin.routes[path] = (200, [("Cache-Control", "max-age=60")], path)

    def post(method, headers, n):
        if n == 1:
            return 500, [], b"failed"                      # an error invalidates nothing
        return 201, [("Location", "/list"), ("Content-Location", f"http://127.0.0.1:{lb.port}/alias")], b"ok"
    origin.routes["/item-post"] = post
    lb = lb_cache()
    for path in ("/item", "/list", "/alias"):
        get(lb.port, path)
    assert get(lb.port, "/item")[1]["cache-status"].startswith("lb; hit")
    # the unsafe request's own target is /item: route the POST there
    origin.routes["/item"] = lambda m, h, n: (post(m, h, 1 if m == "POST" and n == 2 else 2) if m == "POST"
                                              else (200, [("Cache-Control", "max-age=60")], b"/item"))
    status, h, _ = get(lb.port, "/item", method="POST", body=b"x")
    assert status == 500 and h["cache-status"] == "lb; fwd=bypass"
    assert get(lb.port, "/item")[1]["cache-status"].startswith("lb; hit")
    status, _, _ = get(lb.port, "/item", method="POST", body=b"x")
    assert status == 201
    for path in ("/item", "/list", "/alias"):
        assert get(lb.port, path)[1]["cache-status"].startswith("lb; fwd=uri-miss"), path
    st = json.loads(cli(lb, "cache", "stats", "--json"))["caches"][0]["counts"]
    assert st["invalidated"] == 3


def test_purge_by_url_prefix_and_tag(origin, lb_cache):
    for i in range(4):
        origin.routes[f"/p/{i}"] = (200, [("Cache-Control", "max-age=60"), ("Surrogate-Key", f"all t{i}")], b"p")
    origin.routes["/q"] = (200, [("Cache-Control", "max-age=60"), ("Surrogate-Key", "all")], b"q")
    lb = lb_cache()
    base = f"http://127.0.0.1:{lb.port}"

    def fill():
        for t in [f"/p/{i}" for i in range(4)] + ["/q"]:
            get(lb.port, t)

    def cached():
        return {e["key"].split("/", 1)[1] for e in json.loads(cli(lb, "cache", "list", "--json"))["entries"]}
    fill()
    assert cached() == {"p/0", "p/1", "p/2", "p/3", "q"}
    listed = json.loads(cli(lb, "cache", "list", "--prefix", f"{base}/p/", "--json"))["entries"]
    assert len(listed) == 4 and listed[0]["tags"][0] == "all"
    assert json.loads(cli(lb, "cache", "purge", f"{base}/p/0", "--json"))["total"] == 1
    assert cached() == {"p/1", "p/2", "p/3", "q"}
    assert json.loads(cli(lb, "cache", "purge", "--tag", "t1", "--json"))["total"] == 1
    assert json.loads(cli(lb, "cache", "purge", "--prefix", f"{base}/p/", "--json"))["total"] == 2
    assert cached() == {"q"}
    fill()
    assert json.loads(cli(lb, "cache", "purge", "--tag", "all", "--json"))["total"] == 5
    assert cached() == set()
    assert get(lb.port, "/q")[1]["cache-status"].startswith("lb; fwd=uri-miss")


@pytest.mark.parametrize("allow, status", [('purge_allow = ["local"]', 200), ('purge_allow = ["far"]', 403),
                                           ("", 405)])
def test_http_purge_only_from_allowed_addresses(origin, lb_cache, allow, status):
    origin.routes["/x"] = (200, [("Cache-Control", "max-age=60")], b"x")
    lb = lb_cache(cache_extra=allow, more='[acls.far]\ncidrs = ["10.0.0.0/8"]\n')
    get(lb.port, "/x")
    got, h, body = get(lb.port, "/x", method="PURGE")
    assert got == status
    if status == 200:
        assert body == b"purged 1\n"
        assert get(lb.port, "/x", method="PURGE")[0] == 404
        assert get(lb.port, "/x")[1]["cache-status"].startswith("lb; fwd=uri-miss")
    else:
        assert get(lb.port, "/x")[1]["cache-status"].startswith("lb; hit")
    assert origin.count("/x") == (2 if status == 200 else 1)


# ---- bodies, bounds, processes ---------------------------------------------------------------


def body_of(n: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(b"%d" % seed).digest() * 2048
    return (block * (n // len(block) + 1))[:n]


def test_large_objects_intact_from_the_cache_and_larger_ones_stream_through(origin, lb_cache):
    mib = body_of(1 << 20, 1)
    big = body_of(3 << 20, 2)                     # above max_object_size (2m)
    origin.routes["/mib"] = (200, [("Cache-Control", "max-age=60")], mib)
    origin.routes["/big"] = (200, [("Cache-Control", "max-age=60")], big)
    lb = lb_cache()
    for _ in range(3):
        status, h, body = get(lb.port, "/mib")
        assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(mib).digest()
        status, h, body = get(lb.port, "/mib", method="HEAD")
        assert body == b"" and h["content-length"] == str(1 << 20)
        status, h, body = get(lb.port, "/big")
        assert status == 200 and len(body) == len(big) and body == big
        assert "stored" not in h["cache-status"] and "hit" not in h["cache-status"]
    assert origin.count("/mib") == 1 and origin.count("/big") == 3


def test_the_size_bound_holds_and_a_hot_object_survives_a_scan(origin, lb_cache):
    origin.routes["/hot"] = (200, [("Cache-Control", "max-age=600")], body_of(5000, 3))
    for i in range(2500):
        origin.routes[f"/scan/{i}"] = (200, [("Cache-Control", "max-age=600")], body_of(7000, i))
    lb = lb_cache()
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/hot")
        conn.getresponse().read()
    for i in range(2500):                         # 2500 x 8 KiB blocks: more than twice the cache
        conn.request("GET", f"/scan/{i}")
        resp = conn.getresponse()
        assert resp.read() == body_of(7000, i)
        if i % 100 == 0:
            conn.request("GET", "/hot")       # the hot one keeps being asked for
            conn.getresponse().read()
    conn.close()
    st = json.loads(cli(lb, "cache", "stats", "--json"))["caches"][0]["counts"]
    assert st["size"] <= 8 << 20
    assert st["bytes"] <= st["capacity"] and st["blocks_used"] <= st["blocks"]
    assert st["evicted"] > 1000 and st["objects"] < 1000
    assert origin.count("/hot") == 1              # S3-FIFO: a scan of one-hit objects did not push it out
    assert get(lb.port, "/hot")[1]["cache-status"].startswith("lb; hit")


def test_the_cache_survives_a_reload_and_a_killed_worker(origin, lb_cache):
    origin.routes["/keep"] = (200, [("Cache-Control", "max-age=600")], b"kept")
    lb = lb_cache(workers=2)
    get(lb.port, "/keep")
    for _ in range(4):                            # whichever worker answers: one region
        assert get(lb.port, "/keep")[1]["cache-status"].startswith("lb; hit")
    pid = lb.worker_pid(0)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: process_gone(pid) and lb.worker_pid(0) not in (0, pid) and lb.all_workers_running(), 10,
             "the worker respawned")
    for _ in range(4):
        assert get(lb.port, "/keep")[1]["cache-status"].startswith("lb; hit")
    cli(lb, "reload")
    for _ in range(4):
        assert get(lb.port, "/keep")[1]["cache-status"].startswith("lb; hit")
    assert origin.count("/keep") == 1
    # a changed size is a new region: it starts empty
    lb.config_path.write_text(lb.config_path.read_text().replace('size = "8m"', 'size = "4m"'))
    cli(lb, "reload")
    assert get(lb.port, "/keep")[1]["cache-status"].startswith("lb; fwd=uri-miss")
    assert origin.count("/keep") == 2


def test_status_and_metrics_show_the_cache(origin, lb_cache):
    origin.routes["/m"] = (200, [("Cache-Control", "max-age=60")], b"m")
    mport = free_port()
    lb = lb_cache(more=f'[global.metrics]\nbind = "127.0.0.1:{mport}"\n')
    get(lb.port, "/m")
    get(lb.port, "/m")
    get(lb.port, "/m", method="POST", body=b"")
    status = json.loads(cli(lb, "status", "--json"))
    counts = status["caches"][0]["counts"]
    assert (counts["hit"], counts["miss"], counts["bypass"], counts["stored"], counts["objects"]) == (1, 1, 1, 1, 0)
    text = get(mport, "/metrics")[2].decode()
    assert 'lb_cache_requests_total{cache="c",result="hit"} 1' in text
    assert 'lb_cache_objects{cache="c"} 0' in text
    assert "lb_cache_bytes{" in text


def test_http2_streams_use_the_cache(origin, lb_cache):
    from h2_client import H2Client

    body = body_of(200000, 9)
    origin.routes["/h2"] = (200, [("Cache-Control", "max-age=60")], body)
    lb = lb_cache(listener_extra="[listeners.web.http2]\nh2c = true\n")
    with H2Client(lb.port) as c:
        first = c.response(c.request("/h2"))
        second = c.response(c.request("/h2"))
        head = c.response(c.request("/h2", "HEAD"))
        part = c.response(c.request("/h2", headers=[("range", "bytes=65530-65545")]))
        past = c.response(c.request("/h2", headers=[("range", "bytes=200000-")]))
        parts = c.response(c.request("/h2", headers=[("range", "bytes=5-9,-3")]))
    assert parts.status == 206 and int(parts.header("content-length")) == len(bytes(parts.body))
    assert [(f["content-range"], p) for f, p in multipart_parts(parts.header("content-type"), bytes(parts.body))] == \
        [("bytes 5-9/200000", body[5:10]), ("bytes 199997-199999/200000", body[199997:])]
    assert (part.status, bytes(part.body), part.header("content-range")) == (206, body[65530:65546],
                                                                          "bytes 65530-65545/200000")
    assert (past.status, bytes(past.body), past.header("content-range")) == (416, b"", "bytes */200000")
    assert (first.status, second.status, head.status) == (200, 200, 200)
    assert bytes(first.body) == body and bytes(second.body) == body and bytes(head.body) == b""
    assert second.header("cache-status").startswith("lb; hit") and second.header("age") is not None
    assert origin.count("/h2") == 1


def test_an_http2_range_miss_fills_the_whole_response_too(origin, lb_cache):
    from h2_client import H2Client

    body = body_of(120_000, 10)
    origin.routes["/h2r"] = ranged_origin(body, [("Cache-Control", "max-age=60")])
    lb = lb_cache(listener_extra="[listeners.web.http2]\nh2c = true\n")
    with H2Client(lb.port) as c:
        miss = c.response(c.request("/h2r", headers=[("range", "bytes=10-19")]))
        assert (miss.status, bytes(miss.body)) == (206, body[10:20])
        wait_for(lambda: cache_counts(lb)["range_fills"] == 1, 10, "the background fetch stored")
        hit = c.response(c.request("/h2r", headers=[("range", "bytes=100000-100009")]))
    assert (hit.status, bytes(hit.body)) == (206, body[100000:100010])
    assert hit.header("cache-status").startswith("lb; hit") and origin.count("/h2r") == 2


def test_a_hit_answers_304_to_a_client_whose_validators_match(origin, lb_cache):
    lm = httpdate(-3600)
    origin.routes["/c"] = (200, [("Cache-Control", "max-age=60"), ("ETag", 'W/"v7"'), ("Last-Modified", lm)], b"body")
    lb = lb_cache()
    get(lb.port, "/c")
    for headers in ({"If-None-Match": '"v7"'}, {"If-None-Match": '"x", W/"v7"'}, {"If-None-Match": "*"},
                    {"If-Modified-Since": lm}, {"If-Modified-Since": httpdate()}):
        status, h, body = get(lb.port, "/c", headers=headers)
        assert (status, body) == (304, b""), headers
        assert h["etag"] == 'W/"v7"' and h["cache-status"].startswith("lb; hit")
    for headers in ({"If-None-Match": '"v8"'}, {"If-None-Match": '"v8"', "If-Modified-Since": httpdate()},
                    {"If-Modified-Since": httpdate(-7200)}):
        status, h, body = get(lb.port, "/c", headers=headers)
        assert (status, body) == (200, b"body"), headers
    assert origin.count("/c") == 1


def test_a_stale_entry_is_revalidated_and_a_304_refreshes_its_headers(origin, lb_cache):
    lm = httpdate(-3600)

    def answer(method, headers, n):
        if headers.get("if-none-match") == ['"e1"'] and headers.get("if-modified-since") == [lm]:
            # still the same: only the fields that changed come back
            return 304, [("Cache-Control", "max-age=60"), ("ETag", '"e1"'), ("X-Version", f"{n}"),
                         ("Content-Length", "0")], b""
        return 200, [("Cache-Control", "max-age=1"), ("ETag", '"e1"'), ("Last-Modified", lm), ("X-Version", "1"),
                     ("Content-Type", "text/plain")], b"the body"
    origin.routes["/rv"] = answer
    lb = lb_cache()
    get(lb.port, "/rv")
    time.sleep(1.1)  # what is tested is the clock itself: the entry goes stale
    status, h, body = get(lb.port, "/rv")
    assert (status, body) == (200, b"the body")
    assert h["cache-status"] == "lb; fwd=stale; fwd-status=304; stored; ttl=60"
    assert (h["x-version"], h["content-type"], h["content-length"]) == ("2", "text/plain", "8")
    method, target, sent = origin.requests[-1]
    assert sent["if-none-match"] == ['"e1"'] and sent["if-modified-since"] == [lm]
    status, h, body = get(lb.port, "/rv")             # fresh again, with the refreshed headers
    assert (status, body, h["x-version"]) == (200, b"the body", "2")
    assert h["cache-status"].startswith("lb; hit")
    assert origin.count("/rv") == 2


def test_a_revalidation_answers_304_to_a_client_that_has_it(origin, lb_cache):
    def answer(method, headers, n):
        if headers.get("if-none-match") == ['"z"']:
            return 304, [("Cache-Control", "max-age=60"), ("ETag", '"z"')], b""
        return 200, [("Cache-Control", "max-age=1"), ("ETag", '"z"')], b"zzz"
    origin.routes["/rc"] = answer
    lb = lb_cache()
    get(lb.port, "/rc")
    time.sleep(1.1)  # the clock: stale
    status, h, body = get(lb.port, "/rc", headers={"If-None-Match": '"z"'})
    assert (status, body) == (304, b"") and h["etag"] == '"z"'
    status, h, body = get(lb.port, "/rc")
    assert (status, body) == (200, b"zzz") and h["cache-status"].startswith("lb; hit")
    assert origin.count("/rc") == 2


def test_a_no_cache_response_with_a_validator_is_revalidated_at_every_use(origin, lb_cache):
    def answer(method, headers, n):
        if headers.get("if-none-match") == ['"nc"']:
            return 304, [("ETag", '"nc"')], b""
        return 200, [("Cache-Control", "no-cache"), ("ETag", '"nc"')], b"revalidate me"
    origin.routes["/nc"] = answer
    lb = lb_cache()
    assert get(lb.port, "/nc")[1]["cache-status"] == "lb; fwd=uri-miss; stored; ttl=0"
    for i in range(3):
        status, h, body = get(lb.port, "/nc")
        assert (status, body) == (200, b"revalidate me")
        assert h["cache-status"].startswith("lb; fwd=stale; fwd-status=304; stored")
    assert origin.count("/nc") == 4
    assert all(sent.get("if-none-match") == ['"nc"'] for _, _, sent in origin.requests[1:])


def test_stale_if_error_serves_the_stale_entry_while_the_origin_fails(origin, lb_cache):
    state = {"mode": "ok"}

    def answer(method, headers, n):
        if state["mode"] == "gone":
            raise ConnectionAbortedError("the origin drops the connection")
        if state["mode"] == "503":
            return 503, [("Retry-After", "1")], b"origin down"
        return 200, [("Cache-Control", "max-age=1, stale-if-error=60")], b"last good"
    origin.routes["/sie"] = answer
    origin.routes["/strict"] = lambda m, h, n: ((503, [], b"down") if state["mode"] == "503"
                                                else (200, [("Cache-Control", "max-age=1")], b"strict"))
    lb = lb_cache()
    get(lb.port, "/sie")
    get(lb.port, "/strict")
    time.sleep(1.1)  # the clock: both stale
    state["mode"] = "503"
    status, h, body = get(lb.port, "/sie")
    assert (status, body) == (200, b"last good")
    assert h["cache-status"].startswith("lb; fwd=stale") and h["cache-status"].endswith("fwd-status=503")
    assert int(h["age"]) >= 1
    status, h, body = get(lb.port, "/strict")          # no stale-if-error: the error goes through
    assert (status, body) == (503, b"down")
    # the origin gone altogether: lb's own answer (503: no backend could take it) is replaced too
    state["mode"] = "gone"
    origin.shutdown()
    origin.server_close()
    status, h, body = get(lb.port, "/sie")
    assert (status, body) == (200, b"last good")
    assert h["cache-status"].startswith("lb; fwd=stale") and h["cache-status"][-3:] in ("502", "503")
    state["mode"] = "ok"


def test_concurrent_misses_for_one_key_reach_the_origin_once(origin, lb_cache):
    body = body_of(300000, 5)
    inflight = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(cacheable):
        def answer(method, headers, n):
            with lock:
                inflight["now"] += 1
                inflight["max"] = max(inflight["max"], inflight["now"])
            time.sleep(0.4)                   # the origin is slow: the other misses come meanwhile
            with lock:
                inflight["now"] -= 1
            cc = "max-age=60" if cacheable else "no-store"
            return 200, [("Cache-Control", cc)], body
        return answer
    origin.routes["/cold"] = slow(True)
    origin.routes["/pass"] = slow(False)
    lb = lb_cache(workers=2)
    results = []

    def client(target):
        results.append((target,) + get(lb.port, target))
    threads = [threading.Thread(target=client, args=("/cold",)) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200 and all(r[1] == 200 and r[3] == body for r in results)
    assert origin.count("/cold") == 1
    st = json.loads(cli(lb, "cache", "stats", "--json"))["caches"][0]["counts"]
    assert st["collapsed"] >= 30 and st["stored"] == 1
    # a response that may not be stored: the waiters are let go together, not one after the other
    inflight["max"] = 0
    threads = [threading.Thread(target=client, args=("/pass",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r[1] == 200 and r[3] == body for r in results if r[0] == "/pass")
    assert origin.count("/pass") == 8 and inflight["max"] >= 2


def test_cdn_cache_control_takes_the_place_of_cache_control(origin, lb_cache):
    origin.routes["/cdn-only"] = (200, [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")], b"c")
    origin.routes["/cdn-never"] = (200, [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")], b"c")
    lb = lb_cache()
    count, cache_status, _, _ = twice(origin, lb.port, "/cdn-only")
    assert count == 1 and cache_status.startswith("lb; hit")
    count, cache_status, _, _ = twice(origin, lb.port, "/cdn-never")
    assert count == 2


# ---- range requests -------------------------------------------------------------------------


# Range values the tests below send (also the cache_range fuzzer's seeds: fuzz/make_seeds.py)
RANGE_SPECS = [
    "bytes=0-9", "bytes=70000-", "bytes=-5", "bytes=99990-200000", "bytes=-200000", "Bytes=5-5", "bytes=4095-4097",
    "bytes=5-1", "items=0-1", "bytes=a-", "bytes=0-1,5-1", "bytes=,", "bytes=100000-", "bytes=-0",
    "bytes=0-9,20-29", "bytes=200000-200099, 4090-4200,-7,299990-", "bytes=1-2,,400000-,5-6",
    "bytes=0-65535,65536-131071,131072-196607", "bytes=10-19,400000-", "bytes=300000-,400000-500000",
    "bytes=0-,0-", "bytes=0-199999,100000-299999", "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(33)),
    "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(32)), " bytes = 0-1", "bytes=0-1 ,\t2-3\t",
    "bytes=99999999999999999999999-", "bytes=0-99999999999999999999999", "bytes=-99999999999999999999999",
]


def test_a_range_is_answered_from_a_stored_full_response(origin, lb_cache):
    body = body_of(100000, 4)
    modified = httpdate(-3600)
    origin.routes["/r"] = (200, [("Cache-Control", "max-age=60"), ("ETag", '"v1"'), ("Last-Modified", modified),
                                 ("Content-Type", "application/octet-stream")], body)
    origin.routes["/says"] = (200, [("Cache-Control", "max-age=60"), ("Accept-Ranges", "bytes")], b"x")
    lb = lb_cache()
    status, h, data = get(lb.port, "/r")
    assert data == body and "accept-ranges" not in h       # the origin's answer, as it came
    # a hit says ranges can be asked for (RFC 9110 14.3); an origin's own field is not doubled
    assert get(lb.port, "/r")[1]["accept-ranges"] == "bytes"
    get(lb.port, "/says")
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    conn.request("GET", "/says")
    resp = conn.getresponse()
    assert [v for k, v in resp.getheaders() if k.lower() == "accept-ranges"] == ["bytes"] and resp.read() == b"x"
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)

    def ask(headers, method="GET"):
        # one kept-alive connection: a 206 or 416 framed wrong would break the next answer
        conn.request(method, "/r", headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

    try:
        for spec, first, last in [("bytes=0-9", 0, 9), ("bytes=70000-", 70000, 99999), ("bytes=-5", 99995, 99999),
                                  ("bytes=99990-200000", 99990, 99999), ("bytes=-200000", 0, 99999),
                                  ("Bytes=5-5", 5, 5), ("bytes=4095-4097", 4095, 4097)]:
            status, h, data = ask({"Range": spec})
            assert status == 206, spec
            assert h["content-range"] == f"bytes {first}-{last}/100000", spec
            assert int(h["content-length"]) == last - first + 1 and data == body[first:last + 1], spec
            assert h["cache-status"].startswith("lb; hit") and h["etag"] == '"v1"', spec
            assert h["accept-ranges"] == "bytes", spec
        # ranges lb cannot read get the whole response (RFC 9110 14.2)
        for spec in ["bytes=5-1", "items=0-1", "bytes=a-", "bytes=0-1,5-1", "bytes=,"]:
            status, h, data = ask({"Range": spec})
            assert (status, data) == (200, body) and "content-range" not in h, spec
        for spec in ["bytes=100000-", "bytes=-0"]:
            status, h, data = ask({"Range": spec})
            assert (status, data, h["content-range"], h["content-length"]) == (416, b"", "bytes */100000", "0"), spec
            assert h["cache-status"].startswith("lb; hit; ttl=") and h["cache-status"] != "lb; hit; ttl=0", spec
        # If-Range: the range only while the client's validator is the stored one, and strong
        for if_range, expect in [('"v1"', 206), ('"v2"', 200), ('W/"v1"', 200), (modified, 206), (httpdate(-60), 200)]:
            status, h, data = ask({"Range": "bytes=10-19", "If-Range": if_range})
            assert status == expect, if_range
            assert data == (body[10:20] if expect == 206 else body), if_range
        status, h, data = ask({"Range": "bytes=0-9"}, method="HEAD")
        assert (status, data, h["content-length"]) == (200, b"", "100000") and "content-range" not in h
        # validators that match win over the range: 304
        status, h, data = ask({"Range": "bytes=0-9", "If-None-Match": '"v1"'})
        assert (status, data) == (304, b"") and "accept-ranges" not in h
    finally:
        conn.close()
    assert origin.count("/r") == 1


def multipart_parts(content_type: str, data: bytes) -> list[tuple[dict, bytes]]:
    """The parts of a multipart/byteranges body, read strictly (RFC 9110
    14.6, RFC 2046 5.1.1): each part's fields and its bytes."""
    kind, _, boundary = content_type.partition("; boundary=")
    assert kind == "multipart/byteranges" and boundary, content_type
    delim = b"--" + boundary.encode()
    assert data.startswith(delim + b"\r\n") and data.endswith(b"\r\n" + delim + b"--\r\n")
    parts = []
    for chunk in data[len(delim) + 2:-len(delim) - 6].split(b"\r\n" + delim + b"\r\n"):
        head, _, part = chunk.partition(b"\r\n\r\n")
        fields = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n"))
        parts.append(({k.lower(): v for k, v in fields.items()}, part))
    return parts


def test_several_ranges_get_a_multipart_answer_from_the_cache(origin, lb_cache):
    import random
    body = random.Random(7).randbytes(300000)    # no repeating block: a part from the wrong place shows
    origin.routes["/m"] = (200, [("Cache-Control", "max-age=60"), ("ETag", '"m1"'),
                                 ("Content-Type", "application/pdf")], body)
    origin.routes["/untyped"] = (200, [("Cache-Control", "max-age=60")], body[:5000])
    lb = lb_cache()
    assert get(lb.port, "/m")[2] == body and get(lb.port, "/untyped")[2] == body[:5000]
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)

    def ask(spec, target="/m", **more):
        # one kept-alive connection: a multipart body framed wrong would break the next answer
        conn.request("GET", target, headers={"Range": spec, **more})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

    try:
        for _ in range(3):               # (hit twice and more: what the zero-copy path would take)
            for spec, ranges in [
                ("bytes=0-9,20-29", [(0, 9), (20, 29)]),
                # the client's order, across blocks, a suffix and an open end
                ("bytes=200000-200099, 4090-4200,-7,299990-", [(200000, 200099), (4090, 4200), (299993, 299999),
                                                                (299990, 299999)]),
                ("bytes=0-65535,65536-131071,131072-196607", [(0, 65535), (65536, 131071), (131072, 196607)]),
                # unsatisfiable ones are left out, empty list elements ignored
                ("bytes=1-2,,400000-,5-6", [(1, 2), (5, 6)]),
            ]:
                status, h, data = ask(spec)
                assert status == 206, spec
                assert "content-range" not in h and h["etag"] == '"m1"', spec
                assert h["cache-status"].startswith("lb; hit"), spec
                assert int(h["content-length"]) == len(data), spec
                parts = multipart_parts(h["content-type"], data)
                assert [(f["content-range"], f["content-type"]) for f, _ in parts] == \
                    [(f"bytes {a}-{b}/300000", "application/pdf") for a, b in ranges], spec
                assert [p for _, p in parts] == [body[a:b + 1] for a, b in ranges], spec
        # a boundary is new with each answer
        assert ask("bytes=0-0,2-2")[1]["content-type"] != ask("bytes=0-0,2-2")[1]["content-type"]
        # one satisfiable range of several: a plain 206
        status, h, data = ask("bytes=10-19,400000-")
        assert (status, h["content-range"], h["content-type"], data) == \
            (206, "bytes 10-19/300000", "application/pdf", body[10:20])
        # none satisfiable: 416
        status, h, data = ask("bytes=300000-,400000-500000")
        assert (status, h["content-range"], data) == (416, "bytes */300000", b"")
        # ranges that ask for more than the whole (overlaps) or too many: the whole 200 (RFC 9110 14.2)
        for spec in ["bytes=0-,0-", "bytes=0-199999,100000-299999",
                     "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(33))]:
            status, h, data = ask(spec)
            assert (status, data) == (200, body) and h["content-type"] == "application/pdf", spec
        status, h, data = ask("bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(32)))
        assert status == 206 and len(multipart_parts(h["content-type"], data)) == 32
        # a response stored without Content-Type: parts without one
        status, h, data = ask("bytes=0-1,-2", target="/untyped")
        parts = multipart_parts(h["content-type"], data)
        assert [f for f, _ in parts] == [{"content-range": "bytes 0-1/5000"}, {"content-range": "bytes 4998-4999/5000"}]
        assert [p for _, p in parts] == [body[:2], body[4998:5000]]
        # If-Range with another validator: the whole 200
        status, h, data = ask("bytes=0-1,5-6", **{"If-Range": '"m0"'})
        assert (status, data) == (200, body)
    finally:
        conn.close()
    assert origin.count("/m") == 1 and origin.count("/untyped") == 1


def test_a_piece_is_stored_and_answers_the_ranges_within_it(origin, lb_cache):
    import random
    body = random.Random(11).randbytes(10000)
    fields = [("Cache-Control", "max-age=60"), ("ETag", '"p1"'), ("Content-Type", "video/mp4")]

    def respond(method, headers, n):
        # the origin's own 206 for an int-range, as RFC 9110 14.4 frames it
        if "range" in headers and headers["range"][0].startswith("bytes=") and "," not in headers["range"][0]:
            first, _, last = headers["range"][0][6:].partition("-")
            first, last = int(first), min(int(last or 9999), 9999)
            return 206, fields + [("Content-Range", f"bytes {first}-{last}/10000")], body[first:last + 1]
        return 200, fields, body

    origin.routes["/v"] = respond
    # a 206 whose Content-Range does not match its body, and a 206 to no Range at all
    origin.routes["/bad"] = (206, [("Cache-Control", "max-age=60"), ("Content-Range", "bytes 4-9/10")], b"01234")
    origin.routes["/unasked"] = (206, [("Cache-Control", "max-age=60"), ("Content-Range", "bytes 0-1/10")], b"01")
    lb = lb_cache(cache_extra="range_fill = false")   # pieces alone, no whole response fetched behind them
    status, h, data = get(lb.port, "/v", headers={"Range": "bytes=1000-2999"})
    assert (status, data, h["cache-status"]) == (206, body[1000:3000], "lb; fwd=uri-miss; stored; ttl=60")
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)

    def ask(spec=None, **more):
        conn.request("GET", "/v", headers={**({"Range": spec} if spec else {}), **more})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()

    try:
        for spec, first, last in [("bytes=1500-1599", 1500, 1599), ("bytes=1000-", None, None),
                                  ("bytes=2999-2999", 2999, 2999), ("bytes=1000-2999", 1000, 2999)]:
            status, fl, data = ask(spec)
            h = {k.lower(): v for k, v in fl}
            if first is None:        # to the end: past the piece, so the origin's
                assert status == 206 and h["cache-status"].startswith("lb; fwd=uri-miss"), spec
                continue
            assert status == 206 and h["cache-status"].startswith("lb; hit"), spec
            # the range asked for, framed anew: one Content-Range, the piece's fields otherwise
            assert [v for k, v in fl if k.lower() == "content-range"] == [f"bytes {first}-{last}/10000"], spec
            assert data == body[first:last + 1] and h["etag"] == '"p1"' and "accept-ranges" not in h, spec
        # that answer to bytes=1000- was stored in place of the first piece
        status, fl, data = ask("bytes=9000-9009,1000-1009")
        h = {k.lower(): v for k, v in fl}
        assert status == 206 and h["cache-status"].startswith("lb; hit")
        assert [(f["content-range"], p) for f, p in multipart_parts(h["content-type"], data)] == [
            ("bytes 9000-9009/10000", body[9000:9010]), ("bytes 1000-1009/10000", body[1000:1010])]
        # a piece is used only fresh and as it is: a request's max-age=0 is a miss, not a revalidation
        before = origin.count("/v")
        status, fl, data = ask("bytes=1500-1509", **{"Cache-Control": "max-age=0"})
        assert status == 206 and data == body[1500:1510] and origin.count("/v") == before + 1
        assert "if-none-match" not in origin.requests[-1][2]
        # a plain GET is a miss; the whole 200 replaces the piece and answers every range from then on
        status, fl, data = ask()
        assert (status, data) == (200, body)
        status, fl, data = ask("bytes=0-9")
        assert (status, data) == (206, body[:10])
    finally:
        conn.close()
    assert origin.count("/v") == 4
    for target, headers in (("/bad", {"Range": "bytes=-5"}), ("/unasked", {})):
        for _ in range(2):
            status, h, data = get(lb.port, target, headers=headers)
            assert status == 206 and h["cache-status"] == "lb; fwd=uri-miss", target
        assert origin.count(target) == 2


def test_a_range_miss_goes_to_the_origin_and_a_full_answer_is_stored(origin, lb_cache):
    """range_fill = false: nothing but the client's own requests reach the origin."""
    body = body_of(5000, 5)

    def respond(method, headers, n):
        fields = [("Cache-Control", "max-age=60")]
        if "range" in headers:
            # the origin's own 206: passed on, and stored as a piece
            return 206, fields + [("Content-Range", "bytes 0-9/5000")], body[:10]
        return 200, fields, body

    origin.routes["/m"] = respond
    lb = lb_cache(cache_extra="range_fill = false")
    status, h, data = get(lb.port, "/m", headers={"Range": "bytes=0-9"})
    assert (status, data, h["content-range"]) == (206, body[:10], "bytes 0-9/5000")
    assert origin.requests[-1][2]["range"] == ["bytes=0-9"]
    status, h, data = get(lb.port, "/m", headers={"Range": "bytes=2-3"})
    assert (status, data, h["content-range"]) == (206, body[2:4], "bytes 2-3/5000")
    assert h["cache-status"].startswith("lb; hit") and origin.count("/m") == 1
    assert get(lb.port, "/m")[:3:2] == (200, body)
    status, h, data = get(lb.port, "/m", headers={"Range": "bytes=10-19"})
    assert (status, data, h["content-range"]) == (206, body[10:20], "bytes 10-19/5000")
    assert origin.count("/m") == 2


def ranged_origin(body: bytes, fields: list, hold: threading.Event | None = None):
    """An origin route that answers a Range with its own 206 and anything
    else with the whole 200 (after `hold`, when given)."""
    def respond(method, headers, n):
        if "range" in headers:
            first, _, last = headers["range"][0][6:].partition("-")
            first, last = int(first), min(int(last or len(body) - 1), len(body) - 1)
            return 206, fields + [("Content-Range", f"bytes {first}-{last}/{len(body)}")], body[first:last + 1]
        if hold is not None:
            assert hold.wait(20)
        return 200, fields, body
    return respond


def test_a_range_miss_fetches_the_whole_response_once_in_the_background(origin, lb_cache):
    body = body_of(300_000, 6)
    origin.routes["/video"] = ranged_origin(body, [("Cache-Control", "max-age=60"), ("ETag", '"v"'),
                                                   ("Content-Type", "video/mp4")])
    lb = lb_cache()
    status, h, data = get(lb.port, "/video", headers={"Range": "bytes=1000-1999", "If-Range": '"v"',
                                                      "Cache-Control": "max-age=30"})
    # the client's range, as the origin answered it
    assert (status, data, h["content-range"]) == (206, body[1000:2000], "bytes 1000-1999/300000")
    wait_for(lambda: cache_counts(lb)["range_fills"] == 1, 10, "the background fetch stored")
    fetched = [rq for rq in origin.requests if rq[1] == "/video" and "range" not in rq[2]]
    assert len(fetched) == 1
    method, _, headers = fetched[0]
    # the whole response, as lb forwards the request, without the client's
    # Range, If-Range or directives; on a connection of its own
    assert method == "GET" and headers["connection"] == ["close"]
    assert not {"if-range", "cache-control", "if-none-match"} & set(headers)
    before = origin.count("/video")
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
    try:
        for spec, first, last in (("bytes=5000-5099", 5000, 5099), ("bytes=-10", 299_990, 299_999),
                                  ("bytes=250000-", 250_000, 299_999)):
            conn.request("GET", "/video", headers={"Range": spec})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (206, body[first:last + 1]), spec
            assert resp.getheader("Cache-Status").startswith("lb; hit"), spec
        conn.request("GET", "/video")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, body)
        assert resp.getheader("Cache-Status").startswith("lb; hit")
    finally:
        conn.close()
    assert origin.count("/video") == before
    assert cache_counts(lb)["range_fill_failed"] == 0


def test_a_piece_that_comes_after_the_whole_response_does_not_replace_it(origin, lb_cache):
    """The range's own 206 sends its head and half its body, then is held at
    the origin until the background fetch (which its head started) has
    stored the whole response: the piece, storable when its request missed,
    is then refused, and every range is a hit of the whole."""
    body = body_of(50_000, 9)
    fields = [("Cache-Control", "max-age=60")]
    whole_stored = threading.Event()

    def respond(method, headers, n):
        if "range" in headers:
            return 206, fields + [("Content-Range", "bytes 0-99/50000"), ("Content-Length", "100")], [
                body[:50], whole_stored, body[50:100]]
        return 200, fields, body

    origin.routes["/late"] = respond
    lb = lb_cache()
    done = []
    t = threading.Thread(target=lambda: done.append(get(lb.port, "/late", headers={"Range": "bytes=0-99"})))
    t.start()
    try:
        wait_for(lambda: cache_counts(lb)["range_fills"] == 1, 10, "the whole response stored")
    finally:
        whole_stored.set()
    t.join(10)
    assert done[0][0] == 206 and done[0][2] == body[:100]
    wait_for(lambda: cache_counts(lb)["not_stored"] == 1, 10, "the late piece refused")
    listed = json.loads(cli(lb, "cache", "list", "--json"))["entries"]
    assert [(e["status"], e["body_bytes"]) for e in listed if e["key"].endswith("/late")] == [(200, 50_000)]
    status, h, data = get(lb.port, "/late", headers={"Range": "bytes=40000-40099"})
    assert (status, data) == (206, body[40000:40100]) and h["cache-status"].startswith("lb; hit")


def test_concurrent_range_misses_on_two_workers_fetch_the_whole_response_once(origin, lb_cache):
    body = body_of(200_000, 7)
    release = threading.Event()
    origin.routes["/v2"] = ranged_origin(body, [("Cache-Control", "max-age=60")], hold=release)
    lb = lb_cache(workers=2)
    answers = []

    def client(i):
        first = i * 1000
        status, h, data = get(lb.port, "/v2", headers={"Range": f"bytes={first}-{first + 99}"})
        answers.append((status, data == body[first:first + 100]))

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        # every range was answered (by the origin) while the one whole fetch waited
        assert sorted(answers) == [(206, True)] * 40
        plain = [rq for rq in origin.requests if rq[1] == "/v2" and "range" not in rq[2]]
        assert len(plain) == 1
    finally:
        release.set()
    wait_for(lambda: cache_counts(lb)["range_fills"] == 1, 10, "the background fetch stored")
    before = origin.count("/v2")
    for i in range(20):
        status, h, data = get(lb.port, "/v2", headers={"Range": f"bytes={i * 7}-{i * 7 + 6}"})
        assert (status, data) == (206, body[i * 7:i * 7 + 7]) and h["cache-status"].startswith("lb; hit")
    assert origin.count("/v2") == before


def test_a_range_from_the_start_is_stored_as_a_piece_and_fetches_nothing_beside_it(origin, lb_cache):
    """bytes=0- (a player's first request): the origin's 206 is all of the
    object, stored as a piece that answers every range; no second copy of
    the object is fetched. A range past a piece that is not all of it does
    start the whole fetch."""
    body = body_of(80_000, 11)
    origin.routes["/first"] = ranged_origin(body, [("Cache-Control", "max-age=60"), ("ETag", '"f1"'),
                                                   ("Content-Type", "video/mp4")])
    lb = lb_cache()
    status, h, data = get(lb.port, "/first", headers={"Range": " Bytes=0- "})
    assert (status, data) == (206, body) and h["cache-status"].endswith("stored; ttl=60")
    for spec, first, last in (("bytes=70000-70099", 70000, 70099), ("bytes=-5", 79995, 79999)):
        status, h, data = get(lb.port, "/first", headers={"Range": spec})
        assert (status, data) == (206, body[first:last + 1]) and h["cache-status"].startswith("lb; hit"), spec
        assert h["content-range"] == f"bytes {first}-{last}/80000"
    # all of the representation: a complete response (RFC 9111 3.4), which
    # answers a plain GET, a HEAD, a precondition and a failed If-Range as
    # a stored 200 does
    status, h, data = get(lb.port, "/first")
    assert (status, data) == (200, body) and h["cache-status"].startswith("lb; hit")
    assert (h["content-length"], h["accept-ranges"], h["etag"]) == ("80000", "bytes", '"f1"')
    assert "content-range" not in h
    status, h, data = get(lb.port, "/first", method="HEAD")
    assert (status, data, h["content-length"]) == (200, b"", "80000") and "content-range" not in h
    assert get(lb.port, "/first", headers={"If-None-Match": '"f1"'})[0] == 304
    status, h, data = get(lb.port, "/first", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert (status, data) == (200, body)
    status, h, data = get(lb.port, "/first", headers={"Range": "bytes=0-1,-2"})
    assert status == 206 and [(f["content-range"], p) for f, p in multipart_parts(h["content-type"], data)] == [
        ("bytes 0-1/80000", body[:2]), ("bytes 79998-79999/80000", body[79998:])]
    assert [rq[2].get("range") for rq in origin.requests if rq[1] == "/first"] == [["Bytes=0-"]]
    # an explicit range from 0 that is not all of it is an ordinary range miss
    origin.routes["/part"] = ranged_origin(body, [("Cache-Control", "max-age=60")])
    assert get(lb.port, "/part", headers={"Range": "bytes=0-999"})[0] == 206
    wait_for(lambda: cache_counts(lb)["range_fills"] == 1, 10, "the background fetch stored")
    assert cache_counts(lb)["range_fill_failed"] == 0


def test_a_stale_object_asked_for_only_by_ranges_is_refreshed_in_the_background(origin, lb_cache):
    """The stored object has changed at the origin: the range's own answer
    (a 206 of the new content) is not stored, but the revalidation that
    goes beside it brings the new whole response in."""
    old, new = body_of(30_000, 12), body_of(30_000, 13)
    versions = {"now": old}

    def respond(method, headers, n):
        return ranged_origin(versions["now"], [("Cache-Control", "max-age=1"), ("ETag", f'"{n}"')])(
            method, headers, n)

    origin.routes["/changing"] = respond
    lb = lb_cache()
    assert get(lb.port, "/changing")[2] == old
    versions["now"] = new
    time.sleep(1.1)  # what is tested is the clock itself: the entry goes stale
    status, h, data = get(lb.port, "/changing", headers={"Range": "bytes=10-19"})
    assert (status, data) == (206, new[10:20])
    wait_for(lambda: cache_counts(lb)["refreshed"] == 1, 10, "the background revalidation stored")
    status, h, data = get(lb.port, "/changing", headers={"Range": "bytes=20000-20009"})
    assert (status, data) == (206, new[20000:20010]) and h["cache-status"].startswith("lb; hit")
    revalidation = [rq for rq in origin.requests if rq[1] == "/changing" and "range" not in rq[2]][-1]
    assert revalidation[2]["if-none-match"] == ['"1"']


def test_an_object_larger_than_max_object_size_by_its_206_is_not_fetched_whole(origin, lb_cache):
    """The origin's 206 says the object is 3 MiB, over max_object_size (2m
    here): no whole fetch is sent, now or for the next ranges."""
    body = body_of(3 * 1024 * 1024, 15)
    origin.routes["/huge"] = ranged_origin(body, [("Cache-Control", "max-age=60")])
    lb = lb_cache()
    specs = ["bytes=%d-%d" % (first, first + 9) for first in (1000, 500_000, 2_000_000)]
    for spec, first in zip(specs, (1000, 500_000, 2_000_000)):
        status, h, data = get(lb.port, "/huge", headers={"Range": spec})
        assert (status, data) == (206, body[first:first + 10])
    assert [rq[2].get("range") for rq in origin.requests if rq[1] == "/huge"] == [[spec] for spec in specs]
    counts = cache_counts(lb)
    assert (counts["range_fills"], counts["range_fill_failed"]) == (0, 0)


def test_an_origin_that_ignores_the_range_is_asked_once(origin, lb_cache):
    """Its 200 to the range is the whole response: stored as it comes, with
    no whole fetch beside it; the next ranges are hits."""
    body = body_of(40_000, 14)
    origin.routes["/norange"] = (200, [("Cache-Control", "max-age=60")], body)
    lb = lb_cache()
    status, h, data = get(lb.port, "/norange", headers={"Range": "bytes=10-19"})
    assert (status, data) == (200, body)         # (as the origin answered it)
    wait_for(lambda: cache_counts(lb)["stored"] >= 1, 10, "the 200 stored")
    status, h, data = get(lb.port, "/norange", headers={"Range": "bytes=30000-30009"})
    assert (status, data) == (206, body[30000:30010]) and h["cache-status"].startswith("lb; hit")
    assert origin.count("/norange") == 1
    assert cache_counts(lb)["range_fills"] == 0


def test_a_range_the_origin_fails_fetches_nothing_and_holds_nothing_back(origin, lb_cache):
    """The whole fetch waits for the range's 206; the origin answers the
    first range with a status no HTTP message has (lb answers 502): the
    fetch goes with its exchange, and the key's claim with it, so the next
    range miss starts one at once. The origin gets one whole GET, after it."""
    body = body_of(60_000, 16)
    answer = ranged_origin(body, [("Cache-Control", "max-age=60")])
    origin.routes["/fails"] = lambda method, headers, n: (999, [], b"") if n == 1 else answer(method, headers, n)
    lb = lb_cache()
    assert get(lb.port, "/fails", headers={"Range": "bytes=0-9"})[0] == 502
    status, h, data = get(lb.port, "/fails", headers={"Range": "bytes=100-109"})
    assert (status, data) == (206, body[100:110])
    wait_for(lambda: cache_counts(lb)["range_fills"] == 1, 10, "the next miss's whole fetch stored")
    assert [rq[2].get("range") for rq in origin.requests if rq[1] == "/fails"] == [
        ["bytes=0-9"], ["bytes=100-109"], None]
    assert cache_counts(lb)["range_fill_failed"] == 0


def test_a_stale_object_a_range_finds_unchanged_is_not_fetched_again(origin, lb_cache):
    """The range's revalidation gets a 304: the entry is fresh again and
    answers the next ranges; nothing is fetched whole. The range itself is
    answered from the refreshed entry, as a hit would be."""
    body = body_of(30_000, 17)
    origin.routes["/same"] = lambda method, headers, n: (
        (304, [("Cache-Control", "max-age=60"), ("ETag", '"s"')], b"") if "if-none-match" in headers
        else (200, [("Cache-Control", "max-age=1"), ("ETag", '"s"')], body))
    lb = lb_cache()
    assert get(lb.port, "/same")[2] == body
    time.sleep(1.1)  # what is tested is the clock itself: the entry goes stale
    status, h, data = get(lb.port, "/same", headers={"Range": "bytes=10-19"})
    assert (status, data, h["content-range"]) == (206, body[10:20], "bytes 10-19/30000")
    assert h["cache-status"] == "lb; fwd=stale; fwd-status=304; stored; ttl=60"
    status, h, data = get(lb.port, "/same", headers={"Range": "bytes=20000-20009"})
    assert (status, data) == (206, body[20000:20010]) and h["cache-status"].startswith("lb; hit")
    assert [rq[2].get("if-none-match") for rq in origin.requests if rq[1] == "/same"] == [None, ['"s"']]
    counts = cache_counts(lb)
    assert (counts["range_fills"], counts["refreshed"], counts["refresh_failed"]) == (0, 0, 0)


def test_a_revalidated_entry_answers_the_range_a_hit_would(origin, lb_cache):
    """After the origin's 304, the client's Range is weighed against the
    refreshed response: one range is cut from it, If-Range that does not
    match or a range past the end get the whole response, and a client
    whose own validators match gets its 304."""
    body = body_of(20_000, 18)
    origin.routes["/rv"] = lambda method, headers, n: (
        (304, [("Cache-Control", "max-age=1"), ("ETag", '"r"')], b"") if "if-none-match" in headers
        else (200, [("Cache-Control", "max-age=1"), ("ETag", '"r"'), ("Content-Type", "text/plain")], body))
    lb = lb_cache()
    assert get(lb.port, "/rv")[2] == body
    cases = [({"Range": "bytes=-100"}, 206, body[-100:], "bytes 19900-19999/20000"),
             ({"Range": "bytes=5000-5009", "If-Range": '"r"'}, 206, body[5000:5010], "bytes 5000-5009/20000"),
             ({"Range": "bytes=5000-5009", "If-Range": '"other"'}, 200, body, None),
             ({"Range": "bytes=20000-"}, 200, body, None),
             ({"Range": "bytes=0-9", "If-None-Match": '"r"'}, 304, b"", None)]
    for fields, want_status, want_body, want_range in cases:
        time.sleep(1.1)  # what is tested is the clock itself: the entry goes stale
        status, h, data = get(lb.port, "/rv", headers=fields)
        assert (status, data, h.get("content-range")) == (want_status, want_body, want_range), fields
        assert h["cache-status"].startswith("lb; fwd=stale; fwd-status=304"), fields
    assert origin.count("/rv") == 1 + len(cases)


def test_a_stale_entry_served_on_error_answers_the_range(origin, lb_cache):
    """stale-if-error: the origin fails the range's revalidation and the
    stale entry answers it with the bytes asked for: one range as a 206,
    several as multipart parts, each from its place in the entry."""
    import random
    body = random.Random(19).randbytes(40_000)   # no repeating block: bytes from the wrong place show
    state = {"down": False}

    def respond(method, headers, n):
        if state["down"]:
            return 503, [], b"origin down"
        return 200, [("Cache-Control", "max-age=1, stale-if-error=60"), ("Content-Type", "video/mp4")], body

    origin.routes["/sie"] = respond
    lb = lb_cache()
    assert get(lb.port, "/sie")[2] == body
    state["down"] = True
    time.sleep(1.1)  # what is tested is the clock itself: the entry goes stale
    status, h, data = get(lb.port, "/sie", headers={"Range": "bytes=12345-23456"})
    assert (status, data, h["content-range"]) == (206, body[12345:23457], "bytes 12345-23456/40000")
    assert h["cache-status"] == "lb; fwd=stale; fwd-status=503" and int(h["content-length"]) == 11112
    status, h, data = get(lb.port, "/sie", headers={"Range": "bytes=0-99, 39000-"})
    assert status == 206 and "content-range" not in h
    assert [(f["content-range"], f["content-type"], p) for f, p in multipart_parts(h["content-type"], data)] == [
        ("bytes 0-99/40000", "video/mp4", body[:100]), ("bytes 39000-39999/40000", "video/mp4", body[39000:])]
    status, h, data = get(lb.port, "/sie", headers={"Range": "bytes=50000-"})
    assert (status, data) == (200, body)         # (nothing satisfiable: the whole response, as RFC 9110 14.2 allows)
    # the origin gone altogether: lb's own 502 is replaced the same way
    origin.shutdown()
    origin.server_close()
    status, h, data = get(lb.port, "/sie", headers={"Range": "bytes=100-199"})
    assert (status, data, h["content-range"]) == (206, body[100:200], "bytes 100-199/40000")


def test_a_revalidation_that_fails_after_its_304_falls_back_to_the_stale_range(origin, lb_cache):
    """The 304's fields and the stored head together are too large for a
    response head (lb answers 502 for the revalidation), and the entry
    allows stale-if-error: the range is answered from the stale entry with
    the bytes asked for, not from the body the failed revalidation had
    copied out."""
    import random
    body = random.Random(20).randbytes(30_000)
    big = "x" * 20_000

    def respond(method, headers, n):
        if "if-none-match" in headers:
            return 304, [("Cache-Control", "max-age=1, stale-if-error=60"), ("ETag", '"b"'), ("X-More", big)], b""
        return 200, [("Cache-Control", "max-age=1, stale-if-error=60"), ("ETag", '"b"'), ("X-Big", big)], body

    origin.routes["/big304"] = respond
    lb = lb_cache()
    assert get(lb.port, "/big304")[2] == body
    time.sleep(1.1)  # what is tested is the clock itself: the entry goes stale
    status, h, data = get(lb.port, "/big304", headers={"Range": "bytes=20000-20099"})
    assert (status, data, h["content-range"]) == (206, body[20000:20100], "bytes 20000-20099/30000")
    assert h["cache-status"].startswith("lb; fwd=stale") and h["cache-status"].endswith("fwd-status=502")


def test_a_whole_response_larger_than_max_object_size_is_not_fetched_past_its_head(origin, lb_cache):
    """An origin whose 206 does not say the object's size (`bytes 0-9/*`):
    the fill reads the whole response's head, sees a Content-Length over
    max_object_size (2m here) and closes: the origin below sends the head
    and a few bytes of its body, then nothing, so a fill that waited for the
    body would still be waiting. Its ranges keep going to the origin, and no
    other whole fetch is tried for a while."""
    size = 3 * 1024 * 1024
    sent_head = threading.Event()

    def respond(method, headers, n):
        if "range" in headers:
            return 206, [("Cache-Control", "max-age=60"), ("Content-Range", "bytes 0-9/*")], b"0123456789"
        sent_head.set()
        return 200, [("Cache-Control", "max-age=60"), ("Content-Length", str(size))], b"only this"

    origin.routes["/big"] = respond
    lb = lb_cache()
    for _ in range(3):
        status, h, data = get(lb.port, "/big", headers={"Range": "bytes=0-9"})
        assert (status, data) == (206, b"0123456789")
        assert sent_head.wait(10)
        wait_for(lambda: cache_counts(lb)["range_fill_failed"] == 1, 5, "the whole fetch given up at its head")
    assert [rq[2].get("range") for rq in origin.requests if rq[1] == "/big"].count(None) == 1
    assert cache_counts(lb)["range_fills"] == 0


def test_a_whole_response_that_may_not_be_stored_leaves_the_piece(origin, lb_cache):
    body = body_of(10_000, 8)

    def respond(method, headers, n):
        if "range" in headers:
            return 206, [("Cache-Control", "max-age=60"), ("Content-Range", "bytes 0-4999/10000")], body[:5000]
        return 200, [("Cache-Control", "no-store")], body

    origin.routes["/ns"] = respond
    lb = lb_cache()
    status, h, data = get(lb.port, "/ns", headers={"Range": "bytes=0-4999"})
    assert (status, data) == (206, body[:5000]) and h["cache-status"].endswith("stored; ttl=60")
    wait_for(lambda: cache_counts(lb)["not_stored"] == 1, 10, "the whole fetch's answer refused")
    # the piece answers what lies within it; a range past it is a miss that
    # starts no second whole fetch (not storable: held back for a while)
    status, h, data = get(lb.port, "/ns", headers={"Range": "bytes=100-199"})
    assert (status, data) == (206, body[100:200]) and h["cache-status"].startswith("lb; hit")
    status, h, data = get(lb.port, "/ns", headers={"Range": "bytes=100-5199"})
    assert status == 206 and h["cache-status"].startswith("lb; fwd=uri-miss")
    assert [rq[2].get("range") for rq in origin.requests if rq[1] == "/ns"].count(None) == 1
    assert cache_counts(lb)["range_fills"] == 0
