"""max_body_size (docs/configuration.md, docs/gateway.md): 413 for a
Content-Length over the limit, before any backend is asked, and for a chunked
body as it streams past the limit; a route's own limit wins."""

from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import free_port, lb_config, wait_for
from http_client import assert_error_page, parse_responses, read_to_eof
from lb import config


def start(run_lb, origin, listener_extra: str):
    port = free_port()
    run_lb(lb_config(port, [(origin.address, "o", 100)], mode="http", listener_extra=listener_extra))
    return port


ROUTES = """max_body_size = "100"

  [[listeners.t.routes]]
  path_prefix = "/upload/"
  pool = "p"
  max_body_size = "1KiB"

  [[listeners.t.routes]]
  path_prefix = "/free/"
  pool = "p"
  max_body_size = 0
"""


def post(port: int, path: str, body: bytes, extra: bytes = b"") -> list:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n".encode()
                  + extra + b"\r\n" + body)
        return parse_responses(read_to_eof(s))


def test_content_length_over_the_limit_is_refused_before_the_backend(origins, run_lb):
    o = origins("o")
    port = start(run_lb, o, ROUTES)
    (r,) = post(port, "/", b"x" * 100)
    assert r.status == 200 and json.loads(r.body)["body_len"] == 100
    (r,) = post(port, "/", b"x" * 101)
    assert_error_page(r, 413)
    assert r.body == b"413 Content Too Large\n"
    (r,) = post(port, "/upload/a", b"x" * 1024)                 # the route's own limit
    assert r.status == 200
    (r,) = post(port, "/upload/a", b"x" * 1025)
    assert r.status == 413
    (r,) = post(port, "/free/a", b"x" * 100_000)                # 0: no limit on that route
    assert r.status == 200 and json.loads(r.body)["body_len"] == 100_000
    got = []
    wait_for(lambda: got.extend(o.requests()) or len(got) >= 3, 5, "the origin's report")
    # the refused ones never reached it (each answered request is reported before its answer)
    assert [line.split()[-1] for line in got] == ["/", "/upload/a", "/free/a"], got


def test_a_chunked_body_is_refused_as_it_streams_past_the_limit(origins, run_lb):
    o = origins("o")
    port = start(run_lb, o, ROUTES)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /upload/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):
            s.sendall(b"100\r\n" + b"y" * 256 + b"\r\n")          # 1024 bytes: at the limit, all forwarded
            time.sleep(0.01)
        s.sendall(b"1\r\nz\r\n")                                  # one more byte: over it
        raw = read_to_eof(s)
    (r,) = parse_responses(raw)
    assert_error_page(r, 413)
    # a body at the limit, chunked, goes through whole
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /upload/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                  + b"200\r\n" + b"y" * 512 + b"\r\n" + b"200\r\n" + b"y" * 512 + b"\r\n0\r\n\r\n")
        (r,) = parse_responses(read_to_eof(s))
    assert r.status == 200 and json.loads(r.body)["body_len"] == 1024


def test_keep_alive_requests_within_the_limit_go_on(origins, run_lb):
    o = origins("o")
    port = start(run_lb, o, 'max_body_size = "10"')
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
                  b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n0123456789A"
                  b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = parse_responses(read_to_eof(s))
    assert [r.status for r in got] == [200, 200, 413]


@pytest.mark.parametrize("value, message", [
    ('"10 parsecs"', "invalid size"),
    ("-1", "is negative"),
    ("true", "expected a size"),
])
def test_bad_values_are_named_by_key_path(value, message):
    text = f"""
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:9"
[listeners.w]
bind = "127.0.0.1:1"
pool = "p"
  [[listeners.w.routes]]
  path_prefix = "/a/"
  pool = "p"
  max_body_size = {value}
"""
    with pytest.raises(config.ConfigError) as e:
        config.loads(text)
    assert str(e.value).startswith("listeners.w.routes[0].max_body_size: ") and message in str(e.value)
    text = '[pools.p]\n[[pools.p.backends]]\naddress = "127.0.0.1:9"\n[listeners.t]\nbind = "127.0.0.1:1"\n' \
           'mode = "tcp"\npool = "p"\nmax_body_size = "1MiB"\n'
    with pytest.raises(config.ConfigError, match='listeners.t.max_body_size: needs mode = "http"'):
        config.loads(text)


def test_the_step_runs_only_where_a_limit_is_set():
    from lb._fastpath import phase_plan

    cfg = config.loads("""
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:9"
[listeners.a]
bind = "127.0.0.1:1"
pool = "p"
[listeners.b]
bind = "127.0.0.1:2"
pool = "p"
max_body_size = "8MiB"
""")
    assert "body_limit" not in phase_plan(cfg.listeners["a"])["request"]
    assert phase_plan(cfg.listeners["b"])["request"] == ["route", "body_limit"]
    assert cfg.listeners["b"].http.max_body_size == 8 << 20
