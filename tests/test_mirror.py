"""Mirroring (docs/splits.md, "Mirroring"): a share of the requests copied to
a shadow pool, fire and forget: the clients never wait for the shadow, the
shadow gets about its share, a route's own mirror replaces the listener's."""

from __future__ import annotations

import json
import socket
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port, global_toml, wait_for
from http_client import parse_responses

from lb import config
from test_split import lb_ok


class _Shadow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.seen.append((self.path, self.headers.get("Connection")))
        srv.release.wait(30)          # answers only once the test lets it: a shadow as slow as can be
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Shadow(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Shadow)
        self.lock = threading.Lock()
        self.seen: list = []
        self.release = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.release.set()
        self.shutdown()
        self.server_close()


@pytest.fixture
def shadow():
    s = Shadow()
    yield s
    s.close()


def mirror_config(port: int, origin, shadow, percent: int = 50) -> str:
    return global_toml() + textwrap.dedent(f"""
        [listeners.web]
        bind = ["127.0.0.1:{port}"]
        pool = "app"
        mirror = {{ pool = "shadow", percent = {percent}, timeout = "1s", max_concurrent = 1000 }}

          [[listeners.web.routes]]
          name = "quiet"
          path_prefix = "/quiet/"
          pool = "app"
          mirror = {{ pool = "shadow", percent = 0 }}

          [[listeners.web.routes]]
          name = "all"
          path_prefix = "/all/"
          pool = "app"
          mirror = {{ pool = "shadow", percent = 100, timeout = "1s", max_concurrent = 1000 }}

        [pools.app]
        [[pools.app.backends]]
        address = "{origin.address}"
        [pools.shadow]
        [[pools.shadow.backends]]
        address = "{shadow.address}"
        """)


def get_all(port: int, paths: list[str]):
    data = "".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n" for p in paths[:-1])
    data += f"GET {paths[-1]} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data.encode())
        raw = bytearray()
        while chunk := s.recv(65536):
            raw += chunk
    return parse_responses(bytes(raw))


def test_a_shadow_that_never_answers_holds_no_client_and_gets_its_share(origins, shadow, run_lb):
    origin = origins("app")
    port = free_port()
    text = mirror_config(port, origin, shadow)
    run_lb(text)
    lb_sock = text.split('admin_socket = "', 1)[1].split('"', 1)[0]
    got = get_all(port, [f"/m/{i}" for i in range(400)]) + get_all(port, [f"/quiet/{i}" for i in range(50)])
    # every client request is answered by the origin while the shadow still holds every copy unanswered
    assert [r.status for r in got] == [200] * 450
    assert not shadow.release.is_set()
    wait_for(lambda: len(shadow.seen) >= 150, 10, "the copies")
    got = get_all(port, [f"/all/{i}" for i in range(20)])
    assert [r.status for r in got] == [200] * 20
    wait_for(lambda: sum(p.startswith("/all/") for p, _ in shadow.seen) == 20, 10,
             f"the route's copies ({sum(p.startswith('/all/') for p, _ in shadow.seen)} so far)")
    # the shadow holds every copy past its 1 s timeout: lb ends them all
    wait_for(lambda: sum(m["failed"] for m in json.loads(lb_ok(lb_sock, "status", "--json"))["mirrors"])
             == len(shadow.seen), 10, "the copies' timeouts")
    shadow.release.set()
    seen = list(shadow.seen)
    copied = [p for p, _ in seen if p.startswith("/m/")]
    assert 140 <= len(copied) <= 260, len(copied)                      # 50% of 400
    assert len(set(copied)) == len(copied)                             # each copied once
    assert not any(p.startswith("/quiet/") for p, _ in seen)           # its route's own mirror copies none
    assert all(conn == "close" for _, conn in seen)
    # what the copies came to, in lb status
    status = json.loads(lb_ok(lb_sock, "status", "--json"))
    counts = {(m["listener"], m["route"]): m for m in status["mirrors"]}
    assert counts[("web", None)]["copies"] == len(copied) and counts[("web", None)]["dropped"] == 0
    assert counts[("web", "quiet")]["copies"] == 0 and counts[("web", "all")]["copies"] == 20


@pytest.mark.parametrize("mirror, path, words", [
    ('{ pool = "nosuch" }', "listeners.web.mirror.pool", "unknown pool"),
    ('{ pool = "app", percent = 120 }', "listeners.web.mirror.percent", "0..100"),
    ('{ pool = "app", max_body = "2MiB" }', "listeners.web.mirror.max_body", "1MiB"),
    ('{ pool = "app", speed = 1 }', "listeners.web.mirror.speed", "unknown"),
])
def test_bad_mirror_keys_are_named(mirror, path, words):
    text = f'[listeners.web]\nbind = "127.0.0.1:80"\npool = "app"\nmirror = {mirror}\n' \
           '[pools.app]\n[[pools.app.backends]]\naddress = "127.0.0.1:81"\n'
    with pytest.raises(config.ConfigError) as info:
        config.loads(text)
    assert info.value.path == path and words in info.value.message, info.value
