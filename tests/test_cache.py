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
    out = subprocess.run([sys.executable, "-m", "lb", "cache", *args, "--socket", str(lb.run_dir / "admin.sock")],
                         capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


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
