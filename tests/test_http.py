"""The http mode end to end: a real `lb run`, real clients (raw sockets,
http.client, curl, wrk) and real origins (tests/http_origin.py, nginx), on
loopback. Which backend answered is read from the origin's echo (its name)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import textwrap
import threading
import time

import pytest

from conftest import free_port, global_toml, wait_for
from http_origin import Origin, payload, ws_accept, ws_frame, ws_read_frame

MIB = 1 << 20
BIG = 5 * MIB


# ---- set-up ----------------------------------------------------------------------------

@pytest.fixture
def one_origin(origins, run_lb):
    """The port of an lb with one worker and one origin, "o"."""
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}))
    return port


def http_config(port: int, pools: dict, *, default: str | None = "p", listener: str = "", workers: int = 1,
                pool_extra: str = "") -> str:
    """An http listener "web" on port. pools: name -> list of backends (Origin,
    or (name, address)). listener: TOML lines of the listener (keys first, then
    its sub-tables and routes)."""
    text = global_toml(workers) + textwrap.dedent(f"""\

        [listeners.web]
        bind = ["127.0.0.1:{port}"]
        mode = "http"
        """)
    if default is not None:
        text += f'pool = "{default}"\n'
    text += textwrap.dedent(listener) + "\n"
    for pool, members in pools.items():
        text += (f'[pools.{pool}]\nalgorithm = "roundrobin"\nconnect_timeout = "1s"\n{pool_extra}\n'
                 f'[pools.{pool}.health]\ntype = "none"\n\n')
        for m in members:
            name, address = (m.name, m.address) if isinstance(m, Origin) else m
            text += f'[[pools.{pool}.backends]]\naddress = "{address}"\nname = "{name}"\n\n'
    return text


# ---- a raw HTTP/1.1 client ---------------------------------------------------------------

class Response:
    def __init__(self, version: str, status: int, reason: str, headers: list, body: bytes, raw_body: bytes):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers               # [(name, value)] as received
        self.body = body                     # decoded (chunks joined)
        self.raw_body = raw_body             # as it came on the wire

    def get(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self) -> list[str]:
        return [n.lower() for n, _ in self.headers]

    def json(self) -> dict:
        return json.loads(self.body)


def read_head(f) -> tuple[str, int, str, list]:
    line = f.readline(65537)
    assert line, "connection closed before a response"
    assert line.endswith(b"\r\n"), line
    version, status, reason = (line[:-2].decode("latin-1").split(" ", 2) + [""])[:3]
    headers = []
    while True:
        line = f.readline(65537)
        assert line.endswith(b"\r\n"), f"head cut short: {line!r}"
        if line == b"\r\n":
            return version, int(status), reason, headers
        name, _, value = line[:-2].decode("latin-1").partition(":")
        assert name and name == name.strip(), line
        headers.append((name, value.strip(" \t")))


def read_response(f, method: str = "GET") -> Response:
    """The next final response (interim 1xx ones are skipped, except 101)."""
    while True:
        version, status, reason, headers = read_head(f)
        if status >= 200 or status == 101:
            break
    r = Response(version, status, reason, headers, b"", b"")
    te = ",".join(r.get("transfer-encoding")).lower()
    if method == "HEAD" or status in (101, 204, 304):
        return r
    if "chunked" in te:
        raw, body = bytearray(), bytearray()
        while True:
            line = f.readline(4096)
            raw += line
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            data = f.read(size + 2)
            assert data.endswith(b"\r\n")
            raw += data
            body += data[:-2]
        while True:                           # trailers
            line = f.readline(65537)
            raw += line
            if line == b"\r\n":
                break
        r.body, r.raw_body = bytes(body), bytes(raw)
    elif r.get("content-length"):
        n = int(r.get("content-length")[0])
        r.body = r.raw_body = f.read(n)
        assert len(r.body) == n, f"body cut short: {len(r.body)} of {n}"
    else:
        r.body = r.raw_body = f.read()        # delimited by the close
    return r


class Client:
    """One client connection speaking raw bytes."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def send(self, data: bytes):
        self.sock.sendall(data)

    def request(self, method: str = "GET", target: str = "/", headers=(), body: bytes = b"",
                host: str | None = "test.local", version: str = "HTTP/1.1") -> Response:
        self.send(request_bytes(method, target, headers, body, host, version))
        return self.response(method)

    def response(self, method: str = "GET") -> Response:
        return read_response(self.f, method)

    def at_eof(self) -> bool:
        """lb closed the connection, cleanly (blocks until it does, or the
        timeout; a reset raises)."""
        return self.f.read(1) == b""

    def close(self):
        self.f.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request_bytes(method: str = "GET", target: str = "/", headers=(), body: bytes = b"",
                  host: str | None = "test.local", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{n}: {v}" for n, v in headers]
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(port: int, target: str = "/", headers=(), method: str = "GET", host: str | None = "test.local",
        body: bytes = b"") -> Response:
    with Client(port) as c:
        return c.request(method, target, headers, body, host)


def field(echo: dict, name: str) -> list[str]:
    """The values of a request field as the origin received it."""
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


def chunked(data: bytes, sizes) -> bytes:
    """data as a chunked body, in chunks of the given sizes (cycled)."""
    out, i, k = bytearray(), 0, 0
    sizes = list(sizes)
    while i < len(data):
        n = sizes[k % len(sizes)]
        k += 1
        out += b"%x\r\n" % len(data[i:i + n]) + data[i:i + n] + b"\r\n"
        i += n
    return bytes(out) + b"0\r\n\r\n"


# ---- routing ---------------------------------------------------------------------------------

ROUTES = """
[[listeners.web.routes]]
host = "api.example.com"
pool = "api"

[[listeners.web.routes]]
host = "*.example.com"
pool = "wild"

[[listeners.web.routes]]
path_prefix = "/v1/"
pool = "v1"

[[listeners.web.routes]]
path = "/login"
pool = "login"

[[listeners.web.routes]]
methods = ["PUT", "DELETE"]
pool = "write"

[[listeners.web.routes]]
header = "X-Canary"
pool = "canary"

[[listeners.web.routes]]
header = "X-Tier"
header_value = "gold"
pool = "gold"

[[listeners.web.routes]]
host = "shop.test"
path_prefix = "/cart/"
methods = ["POST"]
pool = "cart"
"""

ROUTE_POOLS = ("api", "wild", "v1", "login", "write", "canary", "gold", "cart")

# (host, method, target, headers) -> the origin that must answer
ROUTING_CASES = [
    ("api.example.com", "GET", "/", [], "api"),
    ("API.Example.COM", "GET", "/", [], "api"),                 # case-insensitive
    ("api.example.com:8080", "GET", "/", [], "api"),            # the port is not part of the name
    ("api.example.com", "GET", "/v1/x", [], "api"),             # first match wins over route 3
    ("sub.example.com", "GET", "/", [], "wild"),
    ("a.b.example.com:81", "GET", "/", [], "wild"),
    ("sub.example.com", "PUT", "/login", [], "wild"),           # route 2 before 4 and 5
    ("example.com", "GET", "/", [], "default"),                 # *.suffix is not the bare suffix
    ("badexample.com", "GET", "/", [], "default"),
    ("example.com.evil", "GET", "/", [], "default"),
    ("other.test", "GET", "/v1/items?q=1", [], "v1"),
    ("other.test", "GET", "/v1", [], "default"),
    ("other.test", "GET", "/v10/", [], "default"),
    ("other.test", "GET", "/x/v1/", [], "default"),
    ("other.test", "GET", "/login", [], "login"),
    ("other.test", "GET", "/login?next=/", [], "login"),
    ("other.test", "GET", "/login/", [], "default"),
    ("other.test", "PUT", "/login", [], "login"),               # route 4 before 5
    ("other.test", "PUT", "/x", [], "write"),
    ("other.test", "DELETE", "/x", [], "write"),
    ("other.test", "put", "/x", [], "default"),                 # methods are case-sensitive
    ("other.test", "POST", "/x", [], "default"),
    ("other.test", "GET", "/", [("X-Canary", "1")], "canary"),
    ("other.test", "GET", "/", [("x-canary", "")], "canary"),   # present, any value, any case
    ("other.test", "GET", "/", [("X-Canaryy", "1")], "default"),
    ("other.test", "GET", "/", [("X-Tier", "gold")], "gold"),
    ("other.test", "GET", "/", [("x-tier", "  gold ")], "gold"),  # OWS is not part of the value
    ("other.test", "GET", "/", [("X-Tier", "Gold")], "default"),  # the value is case-sensitive
    ("other.test", "GET", "/", [("X-Tier", "golden")], "default"),
    ("shop.test", "POST", "/cart/1", [], "cart"),               # every matcher of a route
    ("shop.test", "GET", "/cart/1", [], "default"),
    ("shop.test", "POST", "/other", [], "default"),
    ("shop2.test", "POST", "/cart/1", [], "default"),
    ("other.test", "GET", "http://api.example.com/x", [], "api"),  # absolute-form: its authority is the host
]


@pytest.fixture
def routed(origins, run_lb):
    pools = {name: [origins(name)] for name in ROUTE_POOLS}
    pools["p"] = [origins("default")]
    port = free_port()
    run_lb(http_config(port, pools, listener=ROUTES))
    return port


def test_routing_table(routed):
    wrong = []
    for host, method, target, headers, want in ROUTING_CASES:
        r = get(routed, target, headers, method=method, host=host)
        assert r.status == 200, (host, method, target, r.status, r.body)
        got = r.json()["name"]
        assert r.get("server") == [f"http-origin/{got}"]
        if got != want:
            wrong.append((host, method, target, headers, got, want))
    assert not wrong


def test_routes_per_request_on_one_connection(routed):
    """Each request of a keep-alive connection is routed on its own."""
    with Client(routed) as c:
        names = [c.request("GET", "/", host=h).json()["name"]
                 for h in ("api.example.com", "sub.example.com", "other.test", "api.example.com")]
    assert names == ["api", "wild", "default", "api"]


def test_no_route_and_no_default_pool_is_404(origins, run_lb):
    api = origins("api")
    port = free_port()
    run_lb(http_config(port, {"api": [api]}, default=None,
                       listener='[[listeners.web.routes]]\nhost = "api.example.com"\npool = "api"\n'))
    with Client(port) as c:
        c.send(request_bytes(host="www.example.com"))
        version, status, reason, headers = read_head(c.f)
        body = c.f.read()                     # then lb closes
    page = b"404 Not Found\n"
    assert (version, status, reason) == ("HTTP/1.1", 404, "Not Found")
    assert ("content-length", str(len(page))) in headers and ("connection", "close") in headers
    assert body == page
    # no backend saw it: the first request the origin sees is the next one
    assert get(port, "/after", host="api.example.com").json()["name"] == "api"
    assert api.report() == "request 1 1 GET /after"


# ---- header rewriting ------------------------------------------------------------------------

def test_request_head_as_the_backend_gets_it(origins, run_lb):
    """Fields in order, names as sent, hop-by-hop fields gone, forwarding fields added last."""
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}))
    head = (b"GET /path?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nx-mixed-CASE: a b\r\n"
            b"Connection: keep-alive, X-Custom, te\r\nX-Custom: secret\r\nKeep-Alive: timeout=5\r\n"
            b"TE: trailers\r\nTrailer: X-Checksum\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n"
            b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed\r\n\r\n")
    with Client(port) as c:
        c.send(head)
        r = c.response()
    echo = r.json()
    assert (echo["method"], echo["target"], echo["version"]) == ("GET", "/path?q=1", "HTTP/1.1")
    assert echo["headers"] == [
        ["Host", "example.com:8080"],
        ["x-mixed-CASE", "a b"],
        ["Accept", "*/*"],
        ["X-Forwarded-For", "127.0.0.1"],
        ["X-Forwarded-Proto", "http"],         # the client's claim is not passed on
        ["X-Forwarded-Host", "example.com:8080"],
    ]


def test_connection_close_from_client(origins, run_lb):
    """Connection: close is the client's business: the backend connection stays
    open (and is reused), the client's is closed after the response."""
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}))
    with Client(port) as c:
        r = c.request("GET", "/", [("Connection", "close")])
        assert r.get("connection") == ["close"]
        assert c.at_eof()
    first = r.json()
    assert not field(first, "connection")
    second = get(port).json()
    assert (second["conn"], second["n"], second["peer_port"]) == (first["conn"], 2, first["peer_port"])


def test_hop_by_hop_fields_from_backend_removed(origins, run_lb):
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}))
    sent = ["Connection: x-resp-custom", "X-Resp-Custom: 1", "Keep-Alive: timeout=5", "Trailer: X-Sum",
            "TE: trailers", "Proxy-Connection: keep-alive", "Upgrade: h2c", "X-Kept: yes"]
    query = "&".join("h=" + s.replace(" ", "%20") for s in sent)
    with Client(port) as c:
        r = c.request("GET", "/?" + query)
        names = r.names()
        for gone in ("connection", "x-resp-custom", "keep-alive", "trailer", "te", "proxy-connection", "upgrade"):
            assert gone not in names, r.headers
        assert r.get("x-kept") == ["yes"]
        assert r.get("server") == ["http-origin/o"]
        # the backend says close: the client's connection is not closed for it
        r = c.request("GET", "/?close=1")
        assert r.status == 200 and "connection" not in r.names(), r.headers
        again = c.request("GET", "/").json()
    assert again["conn"] != r.json()["conn"]  # a new backend connection


def test_x_forwarded_fields(origins, run_lb):
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}))
    echo = get(port, headers=[("X-Forwarded-For", "203.0.113.7")], host="www.example.com").json()
    assert field(echo, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert field(echo, "x-forwarded-proto") == ["http"]
    assert field(echo, "x-forwarded-host") == ["www.example.com"]
    assert not field(echo, "forwarded")
    # two fields in: one list out, in order
    echo = get(port, headers=[("X-Forwarded-For", "192.0.2.1, 192.0.2.2"), ("X-A", "1"),
                              ("x-forwarded-for", "198.51.100.3")]).json()
    assert field(echo, "x-forwarded-for") == ["192.0.2.1, 192.0.2.2, 198.51.100.3, 127.0.0.1"]


def test_forwarded_rfc7239(origins, run_lb):
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}, listener='forwarded = "forwarded"\n'))
    echo = get(port, host="example.com:8080").json()
    assert field(echo, "forwarded") == ['for=127.0.0.1;host="example.com:8080";proto=http']
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"):
        assert not field(echo, name)
    echo = get(port, headers=[("Forwarded", "for=192.0.2.60;proto=https")], host="example.com").json()
    assert field(echo, "forwarded") == ['for=192.0.2.60;proto=https, for=127.0.0.1;host="example.com";proto=http']


def test_forwarded_both(origins, run_lb):
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}, listener='forwarded = "both"\n'))
    echo = get(port, host="example.com").json()
    assert field(echo, "forwarded") == ['for=127.0.0.1;host="example.com";proto=http']
    assert field(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert field(echo, "x-forwarded-proto") == ["http"]
    assert field(echo, "x-forwarded-host") == ["example.com"]


HEADER_RULES = """
hide_server = true

[listeners.web.request_headers]
set = { "X-Env" = "prod", "X-Forwarded-Proto" = "https" }
add = { "X-Via-Lb" = "1" }
remove = ["X-Debug"]

[listeners.web.response_headers]
set = { "X-Frame-Options" = "DENY" }
add = { "X-Served-By" = "lb" }
remove = ["X-Powered-By"]

[[listeners.web.routes]]
path_prefix = "/r/"
pool = "p"

[listeners.web.routes.request_headers]
set = { "X-Env" = "route", "X-Route" = "r" }
add = { "X-Via-Lb" = "2" }
remove = ["X-Debug-Route"]

[listeners.web.routes.response_headers]
set = { "X-Frame-Options" = "SAMEORIGIN" }
add = { "X-Route-Resp" = "r" }
remove = ["X-Backend-Internal"]
"""


@pytest.fixture
def rules_port(origins, run_lb):
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}, listener=HEADER_RULES))
    return port


CLIENT_FIELDS = [("X-Env", "dev"), ("X-Debug", "1"), ("X-Via-Lb", "0"), ("x-env", "dev2"),
                 ("X-Debug-Route", "1"), ("X-Keep", "k"), ("X-Forwarded-Proto", "ftp")]
ORIGIN_FIELDS = "&".join(f"h={s}" for s in ("X-Frame-Options:ALLOW", "X-Powered-By:php", "X-Backend-Internal:1",
                                            "X-Served-By:origin"))


def test_listener_header_rules(rules_port):
    r = get(rules_port, "/plain?" + ORIGIN_FIELDS, CLIENT_FIELDS)
    echo = r.json()
    assert field(echo, "x-env") == ["prod"]                  # set replaces every field of the name
    assert field(echo, "x-via-lb") == ["0", "1"]             # add appends
    assert not field(echo, "x-debug")
    assert field(echo, "x-debug-route") == ["1"] and field(echo, "x-keep") == ["k"]
    assert not field(echo, "x-route")
    assert field(echo, "x-forwarded-proto") == ["https"]     # the rule wins over lb's own
    assert field(echo, "x-forwarded-for") == ["127.0.0.1"]   # the others are still added
    assert r.get("x-frame-options") == ["DENY"]
    assert r.get("x-served-by") == ["origin", "lb"]
    assert not r.get("x-powered-by")
    assert r.get("x-backend-internal") == ["1"]
    assert not r.get("x-route-resp")
    assert not r.get("server")                               # hide_server


def test_route_header_rules_after_listener_rules(rules_port):
    r = get(rules_port, "/r/x?" + ORIGIN_FIELDS, CLIENT_FIELDS)
    echo = r.json()
    assert field(echo, "x-env") == ["route"]                 # the route's set wins
    assert field(echo, "x-route") == ["r"]
    assert field(echo, "x-via-lb") == ["0", "1", "2"]
    assert not field(echo, "x-debug") and not field(echo, "x-debug-route")
    assert field(echo, "x-keep") == ["k"]
    assert field(echo, "x-forwarded-proto") == ["https"]
    assert r.get("x-frame-options") == ["SAMEORIGIN"]
    assert r.get("x-served-by") == ["origin", "lb"]
    assert r.get("x-route-resp") == ["r"]
    assert not r.get("x-powered-by") and not r.get("x-backend-internal")
    assert not r.get("server")


# ---- bodies -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [5, 40000, BIG])
def test_content_length_request_body(one_origin, size):
    body = os.urandom(size)
    c = http.client.HTTPConnection("127.0.0.1", one_origin, timeout=30)
    c.request("POST", "/upload", body=body)
    r = c.getresponse()
    echo = json.loads(r.read())
    assert r.status == 200
    assert (echo["framing"], echo["body_len"], echo["body_sha256"]) == ("length", size,
                                                                       hashlib.sha256(body).hexdigest())
    assert base64.b64decode(echo["body"]) == body
    assert field(echo, "content-length") == [str(size)]
    c.close()


@pytest.mark.parametrize("size", [5, 40000, BIG])
def test_chunked_request_body(one_origin, size):
    body = os.urandom(size)
    sizes = [1, 7, 4096, 65536, 100003, 3]
    with Client(one_origin, timeout=30) as c:
        c.send(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")]) + chunked(body, sizes))
        r = c.response()
    echo = r.json()
    assert r.status == 200
    assert (echo["framing"], echo["body_len"], echo["body_sha256"]) == ("chunked", size,
                                                                       hashlib.sha256(body).hexdigest())
    assert base64.b64decode(echo["body"]) == body


@pytest.mark.parametrize("piece,size", [(1, 40000), (5, 200000), (4096, 300000)])
def test_chunked_request_body_small_chunks(one_origin, piece, size):
    """Bodies larger than lb's buffer in chunks so small that the buffer's end
    falls inside chunk framing rather than data, again and again."""
    body = os.urandom(size)
    with Client(one_origin) as c:
        c.send(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")]) + chunked(body, [piece]))
        echo = c.response().json()
    assert (echo["body_len"], echo["body_sha256"]) == (size, hashlib.sha256(body).hexdigest())


def test_big_bodies_both_ways_on_one_connection(one_origin):
    """5 MiB up and about 7 MiB (the echo) down, spliced both ways, again and
    again on one client connection: every exchange completes, and the backend
    connection is parked and reused after each one."""
    body = os.urandom(BIG)
    digest = hashlib.sha256(body).hexdigest()
    c = http.client.HTTPConnection("127.0.0.1", one_origin, timeout=10)
    echoes = []
    for i in range(8):
        c.request("POST", f"/up?i={i}", body=body)
        r = c.getresponse()
        echoes.append(json.loads(r.read()))
        assert r.status == 200
    c.close()
    assert [(e["target"], e["body_sha256"]) for e in echoes] == [(f"/up?i={i}", digest) for i in range(8)]
    assert [e["n"] for e in echoes] == list(range(1, 9))
    assert len({e["peer_port"] for e in echoes}) == 1


def test_chunked_request_with_extensions_and_trailers_via_http_client(one_origin):
    parts = [b"first", b"", b"second part", os.urandom(70000)]
    c = http.client.HTTPConnection("127.0.0.1", one_origin, timeout=30)
    c.request("PUT", "/up", body=iter(parts), encode_chunked=True)
    echo = json.loads(c.getresponse().read())
    assert echo["framing"] == "chunked" and base64.b64decode(echo["body"]) == b"".join(parts)
    c.close()
    raw = b"3;name=value\r\nabc\r\n2;x\r\nde\r\n0\r\nX-Checksum: 42\r\n\r\n"
    with Client(one_origin) as cl:
        cl.send(request_bytes("POST", "/t", [("Transfer-Encoding", "chunked")]) + raw)
        echo = cl.response().json()
    assert base64.b64decode(echo["body"]) == b"abcde"
    assert echo["trailers"] == [["X-Checksum", "42"]]


@pytest.mark.parametrize("size", [0, 1, 100000, BIG])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_response_body(one_origin, size, framing):
    target = f"/bytes/{size}" + ("?chunked=1&piece=7777" if framing == "chunked" else "")
    c = http.client.HTTPConnection("127.0.0.1", one_origin, timeout=30)
    c.request("GET", target)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200
    if framing == "chunked":
        assert r.getheader("transfer-encoding") == "chunked" and r.getheader("content-length") is None
    else:
        assert r.getheader("content-length") == str(size)
    assert len(body) == size and body == payload(size)
    # the connection is still good for another request
    c.request("GET", "/bytes/3")
    assert c.getresponse().read() == payload(3)
    c.close()


def test_slow_client_gets_whole_responses(origins, run_lb):
    """A client with a small receive buffer, that starts reading only once the
    origin has written the whole response and then reads in small steps: the
    end of a response often passes through lb while the client's socket is
    full, and must still follow, before the next request. Sizes vary so the
    end falls in different places."""
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    try:
        for i in range(8):
            n = 3000000 + i * 7919
            s.sendall(request_bytes("GET", f"/bytes/{n}?chunked=1&piece=10000&report_sent=1"))
            assert o.report().startswith("request ") and o.report().startswith("sent ")
            got = bytearray()
            while not got.endswith(b"\r\n0\r\n\r\n"):
                data = s.recv(1024)
                assert data, f"response {i} cut short at {len(got)} bytes"
                got += data
            head, _, body = bytes(got).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == chunked(payload(n), [10000])
    finally:
        s.close()


def test_chunked_response_framing_is_forwarded(one_origin):
    with Client(one_origin) as c:
        r = c.request("GET", "/bytes/25000?chunked=1&piece=10000")
    assert r.raw_body == chunked(payload(25000), [10000])


def test_head_204_304_have_no_body(one_origin):
    """Responses without a body, pipelined with requests whose responses have one:
    a byte too many or too few would shift every later response."""
    reqs = [("HEAD", "/bytes/1000"), ("GET", "/status/204"), ("HEAD", "/bytes/5000?chunked=1"),
            ("GET", "/status/304"), ("GET", "/status/304?h=Content-Length:1000"), ("GET", "/bytes/10")]
    with Client(one_origin) as c:
        c.send(b"".join(request_bytes(m, t) for m, t in reqs))
        rs = [c.response(m) for m, _ in reqs]
        assert [r.status for r in rs] == [200, 204, 200, 304, 304, 200]
        assert rs[0].get("content-length") == ["1000"]
        assert rs[2].get("transfer-encoding") == ["chunked"]
        assert rs[4].get("content-length") == ["1000"]   # the representation's length: still no body
        assert rs[5].body == payload(10)
        # nothing more was on its way: the next response is the next request's
        assert c.request("GET", "/echo?last").json()["target"] == "/echo?last"
    hc = http.client.HTTPConnection("127.0.0.1", one_origin, timeout=10)
    hc.request("HEAD", "/bytes/1000")
    r = hc.getresponse()
    assert (r.status, r.getheader("content-length"), r.read()) == (200, "1000", b"")
    hc.request("GET", "/bytes/7")
    assert hc.getresponse().read() == payload(7)
    hc.close()


# ---- nginx as the backend ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def nginx():
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(exe), "nginx is needed (make test-deps installs it)"
    root = tempfile.mkdtemp(prefix="lb-test-nginx-")
    os.mkdir(f"{root}/www")
    os.mkdir(f"{root}/tmp")
    big = os.urandom(BIG)
    with open(f"{root}/www/5m", "wb") as f:
        f.write(big)
    for p in (root, f"{root}/www", f"{root}/tmp"):
        os.chmod(p, 0o755)                    # nginx workers run as nobody when we are root
    os.chmod(f"{root}/www/5m", 0o644)
    port = free_port()
    # temp paths inside our dir (the default ones need root), for the modules this build has
    flags = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=10).stderr
    temp_paths = "\n".join(f"{mod}_temp_path {root}/tmp/{mod};" for mod in ("fastcgi", "uwsgi", "scgi")
                           if f"--without-http_{mod}_module" not in flags)
    conf = textwrap.dedent(f"""\
        daemon off;
        master_process on;
        worker_processes 1;
        pid {root}/nginx.pid;
        error_log {root}/error.log warn;
        events {{ worker_connections 1024; }}
        http {{
            access_log off;
            client_body_temp_path {root}/tmp/client_body;
            proxy_temp_path {root}/tmp/proxy;
            {{temp_paths}}
            default_type application/octet-stream;
            sendfile on;
            keepalive_requests 1000000;
            server {{
                listen 127.0.0.1:{port};
                root {root}/www;
                location = /small {{ default_type text/plain; return 200 "small\\n"; }}
            }}
        }}
        """).replace("{temp_paths}", temp_paths)
    with open(f"{root}/nginx.conf", "w") as f:
        f.write(conf)
    log = open(f"{root}/stderr.log", "wb")
    proc = subprocess.Popen([exe, "-p", root, "-c", f"{root}/nginx.conf", "-e", f"{root}/error.log"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def listening():
            assert proc.poll() is None, open(f"{root}/stderr.log").read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except ConnectionRefusedError:
                return False

        wait_for(listening, 10, "nginx to listen")
        yield {"address": f"127.0.0.1:{port}", "sha256": hashlib.sha256(big).hexdigest()}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nginx_lb(nginx, run_lb):
    port = free_port()
    run_lb(http_config(port, {"p": [("nginx", nginx["address"])]}))
    return port


def test_curl_downloads_5mib_from_nginx(nginx, nginx_lb, tmp_path):
    out = tmp_path / "5m"
    url = f"http://127.0.0.1:{nginx_lb}/5m"
    # twice on one connection: the second rides the kept-alive client and backend connections
    res = subprocess.run(["curl", "-sS", "--fail", "-w", "%{http_code} %{size_download} %{num_connects}\n",
                          "-o", str(out), url, "-o", str(out) + ".2", url],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"200 {BIG} 1\n200 {BIG} 0\n"
    for path in (out, tmp_path / "5m.2"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == nginx["sha256"]


def test_http_client_from_nginx_keep_alive(nginx, nginx_lb):
    c = http.client.HTTPConnection("127.0.0.1", nginx_lb, timeout=30)
    for _ in range(3):
        c.request("GET", "/5m")
        r = c.getresponse()
        assert r.status == 200
        assert hashlib.sha256(r.read()).hexdigest() == nginx["sha256"]
        c.request("GET", "/small")
        assert c.getresponse().read() == b"small\n"
    c.close()


def test_wrk_through_lb_to_nginx(nginx_lb):
    wrk = shutil.which("wrk")
    assert wrk, "wrk is needed (make test-deps installs it)"
    res = subprocess.run([wrk, "-t2", "-c16", "-d2s", f"http://127.0.0.1:{nginx_lb}/small"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "Socket errors" not in res.stdout, res.stdout
    assert "Non-2xx" not in res.stdout, res.stdout
    done = int(re.search(r"(\d+) requests in", res.stdout).group(1))
    assert done > 100, res.stdout


# ---- pipelining ----------------------------------------------------------------------------------

def test_pipelined_requests_answered_in_order(one_origin):
    upload = os.urandom(100000)
    reqs = [
        request_bytes("GET", "/echo?i=1"),
        request_bytes("POST", "/echo?i=2", body=b"x" * 1000),
        request_bytes("HEAD", "/bytes/5000"),
        request_bytes("GET", "/bytes/200000?chunked=1"),
        request_bytes("POST", "/echo?i=5", [("Transfer-Encoding", "chunked")]) + chunked(upload, [4096, 333]),
        request_bytes("GET", "/status/204"),
        request_bytes("GET", "/bytes/300000"),
        request_bytes("GET", "/echo?i=8", [("Connection", "close")]),
    ]
    methods = ["GET", "POST", "HEAD", "GET", "POST", "GET", "GET", "GET"]
    with Client(one_origin, timeout=30) as c:
        c.send(b"".join(reqs))
        rs = [c.response(m) for m in methods]
        assert c.at_eof()
    assert [r.status for r in rs] == [200, 200, 200, 200, 200, 204, 200, 200]
    assert rs[0].json()["target"] == "/echo?i=1"
    assert base64.b64decode(rs[1].json()["body"]) == b"x" * 1000
    assert rs[2].body == b"" and rs[2].get("content-length") == ["5000"]
    assert rs[3].body == payload(200000)
    echo = rs[4].json()
    assert echo["target"] == "/echo?i=5" and echo["body_sha256"] == hashlib.sha256(upload).hexdigest()
    assert rs[6].body == payload(300000)
    assert rs[7].json()["target"] == "/echo?i=8" and rs[7].get("connection") == ["close"]
    # one backend connection served them all, one after the other
    assert [r.json()["n"] for r in (rs[0], rs[1], rs[4], rs[7])] == [1, 2, 5, 8]


# ---- 100-continue ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [10, 200000])
def test_expect_100_continue_raw(one_origin, size):
    body = os.urandom(size)
    with Client(one_origin) as c:
        c.send(request_bytes("POST", "/up", [("Expect", "100-continue"), ("Content-Length", str(len(body)))]))
        # the body is not sent until the 100 is in: a proxy that waited for it would hang here
        assert c.f.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert c.f.readline() == b"\r\n"
        c.send(body)
        r = c.response()
        assert r.status == 200
        echo = r.json()
        assert echo["continue_sent"] and echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert field(echo, "expect") == ["100-continue"]
        # and the connection goes on
        assert c.request("GET", "/bytes/5").body == payload(5)


def test_expect_100_continue_curl(one_origin, tmp_path):
    data = tmp_path / "body"
    body = os.urandom(300000)
    data.write_bytes(body)
    res = subprocess.run(["curl", "-sSv", "--fail", "-H", "Expect: 100-continue", "--expect100-timeout", "20",
                          "--data-binary", f"@{data}", f"http://127.0.0.1:{one_origin}/up"],
                         capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert b"< HTTP/1.1 100 Continue" in res.stderr
    echo = json.loads(res.stdout)
    assert echo["continue_sent"] and echo["method"] == "POST"
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


# ---- WebSocket ------------------------------------------------------------------------------------

def test_websocket_echo(one_origin):
    key = base64.b64encode(os.urandom(16)).decode()
    with Client(one_origin) as c:
        c.send(request_bytes("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]))
        r = c.response()
        assert r.status == 101
        assert [v.lower() for v in r.get("upgrade")] == ["websocket"]
        assert [v.lower() for v in r.get("connection")] == ["upgrade"]
        assert r.get("sec-websocket-accept") == [ws_accept(key)]
        frames = [(1, "hello".encode()), (2, os.urandom(10)), (1, "é ü ✓".encode()), (2, os.urandom(300)),
                  (2, os.urandom(70000)), (1, b""), (9, b"ping!")]
        # one at a time, then several in one send
        for opcode, data in frames[:3]:
            c.send(ws_frame(opcode, data, mask=os.urandom(4)))
            assert ws_read_frame(c.f) == (True, opcode, data, False)
        c.send(b"".join(ws_frame(op, d, mask=os.urandom(4)) for op, d in frames[3:]))
        for opcode, data in frames[3:]:
            want = 10 if opcode == 9 else opcode
            assert ws_read_frame(c.f) == (True, want, data, False)
        # a fragmented message: the fragments come back as they went
        c.send(ws_frame(1, b"frag", fin=False, mask=os.urandom(4)) + ws_frame(0, b"ment", mask=os.urandom(4)))
        assert ws_read_frame(c.f) == (False, 1, b"frag", False)
        assert ws_read_frame(c.f) == (True, 0, b"ment", False)
        close = struct.pack("!H", 1000) + b"bye"
        c.send(ws_frame(8, close, mask=os.urandom(4)))
        assert ws_read_frame(c.f) == (True, 8, close, False)
        assert c.at_eof()


def test_websocket_backend_speaks_first(one_origin):
    """A frame that comes in the same read as the 101 is not lost on the way to the tunnel."""
    key = base64.b64encode(os.urandom(16)).decode()
    with Client(one_origin) as c:
        c.send(request_bytes("GET", "/ws?greet=hello", [("Upgrade", "websocket"), ("Connection", "upgrade"),
                                                        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]))
        assert c.response().status == 101
        assert ws_read_frame(c.f) == (True, 1, b"hello", False)
        c.send(ws_frame(2, b"\x00\x01", mask=os.urandom(4)))
        assert ws_read_frame(c.f) == (True, 2, b"\x00\x01", False)


@pytest.mark.parametrize("query", ["", "?chunked=1"])
def test_client_pausing_longer_than_response_timeout(origins, run_lb, query):
    """response_timeout is the backend's silence: a client that stops reading
    in the middle of a large response (lb then stops reading the backend, spliced
    or copied) for longer than it still gets the whole response."""
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}, pool_extra='response_timeout = "200ms"\n'))
    n = 20 * MIB                               # far more than the sockets and lb hold
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(request_bytes("GET", f"/bytes/{n}{query}"))
        f = s.makefile("rb")
        status = read_head(f)[1]
        want = chunked(payload(n), [10000]) if query else payload(n)   # the body as sent
        first = f.read(100000)
        # The pause is what is tested, not a wait for something: the client
        # takes nothing for five response timeouts (there is no event to wait
        # on: a correct lb does nothing meanwhile)
        time.sleep(1.0)
        rest = f.read(len(want) - len(first))
    finally:
        s.close()
    assert status == 200 and first + rest == want


def tcp_socket(local_port: int, remote_port: int) -> tuple[int, int, int] | None:
    """(state, send queue bytes, inode: 0 once no process holds it) of the
    IPv4 TCP socket local_port -> remote_port, from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)) == (local_port, remote_port):
                return int(fields[3], 16), int(fields[4].split(":")[0], 16), int(fields[9])
    return None


TCP_ESTABLISHED = 1


def test_closing_connection_delivers_the_whole_response(one_origin):
    """Connection: close, and a client that does not read until lb has
    closed its socket (its linger time, about 2 s, over): what the kernel
    still holds for the client must reach it, then EOF, not a reset."""
    n = 20000                                 # more than the client's buffer, less than both sides' together
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", one_origin))
    try:
        me = s.getsockname()[1]
        s.sendall(request_bytes("GET", f"/bytes/{n}", [("Connection", "close")]))

        def lb_closed():
            sock = tcp_socket(one_origin, me)
            return sock is None or (sock[0] != TCP_ESTABLISHED and sock[2] == 0)

        wait_for(lb_closed, 10, "lb to close its socket")
        got = bytearray()
        while data := s.recv(65536):
            got += data
    finally:
        s.close()
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close" in head
    assert body == payload(n)


# ---- HTTP/1.0 clients ----------------------------------------------------------------------------

def test_http10_client_without_keep_alive(one_origin):
    with Client(one_origin) as c:
        r = c.request("GET", "/echo", version="HTTP/1.0", host=None)
        assert r.status == 200 and r.version == "HTTP/1.1"
        assert r.get("content-length") == [str(len(r.body))]
        assert r.get("connection") == ["close"]
        assert c.at_eof()
    echo = r.json()
    assert echo["version"] == "HTTP/1.0"       # asked in 1.0: the answer may not be chunked
    assert not field(echo, "host") and not field(echo, "x-forwarded-host")
    assert field(echo, "x-forwarded-for") == ["127.0.0.1"]


def test_http10_client_with_keep_alive(one_origin):
    with Client(one_origin) as c:
        for i in range(3):
            r = c.request("GET", f"/echo?i={i}", [("Connection", "keep-alive")], version="HTTP/1.0")
            assert r.status == 200
            assert r.get("connection") == ["keep-alive"]
            assert r.get("content-length") == [str(len(r.body))]
            assert r.json()["target"] == f"/echo?i={i}"
        # a body the backend can only delimit by closing: lb must close too
        r = c.request("GET", "/bytes/70000?chunked=1", [("Connection", "keep-alive")], version="HTTP/1.0")
        assert r.status == 200 and r.body == payload(70000)
        assert r.get("connection") == ["close"] and not r.get("transfer-encoding")
        assert c.at_eof()


# ---- keep-alive to the backend ---------------------------------------------------------------------

def test_backend_connection_reused_across_client_connections(one_origin):
    echoes = []
    for i in range(5):
        with Client(one_origin) as c:
            echoes.append(c.request("GET", f"/echo?i={i}").json())
    assert [e["n"] for e in echoes] == [1, 2, 3, 4, 5]
    assert len({e["peer_port"] for e in echoes}) == 1
    assert len({e["conn"] for e in echoes}) == 1
    # and the same for a keep-alive client between its own requests
    with Client(one_origin) as c:
        more = [c.request("GET", "/echo").json() for _ in range(3)]
    assert [e["n"] for e in more] == [6, 7, 8] and {e["peer_port"] for e in more} == {echoes[0]["peer_port"]}


def test_backend_closes_idle_connection(one_origin):
    """The origin closes a connection after its answer (its keep-alive timeout):
    the next request goes on a new one."""
    with Client(one_origin) as c:
        first = c.request("GET", "/echo?drop=1").json()
        second = c.request("GET", "/echo").json()
    assert second["conn"] != first["conn"] and second["n"] == 1


def test_backend_closes_reused_connection_under_a_request(origins, run_lb):
    """The origin closes a kept-alive connection as the next request arrives:
    a GET is sent again on a new connection; a POST, which may have had an
    effect, is not: 502."""
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}))
    with Client(port) as c:
        assert c.request("GET", "/echo?drop_next=1").status == 200
        echo = c.request("GET", "/echo?again").json()
    assert (echo["conn"], echo["n"]) == (2, 1)
    assert [o.report() for _ in range(3)] == ["request 1 1 GET /echo?drop_next=1", "dropped 1 2 GET /echo?again",
                                             "request 2 1 GET /echo?again"]
    with Client(port) as c:
        assert c.request("GET", "/echo?drop_next=1").status == 200
        r = c.request("POST", "/echo?post", body=b"pay once")
        assert (r.status, r.body) == (502, b"502 Bad Gateway\n")
        assert c.at_eof()
    assert [o.report() for _ in range(2)] == ["request 2 2 GET /echo?drop_next=1", "dropped 2 3 POST /echo?post"]
    assert o.requests() == []


def test_client_half_close_after_its_request(one_origin):
    """A client that shuts down its write side after a whole request still gets the answer."""
    for req in (request_bytes("GET", "/echo"), request_bytes("POST", "/echo", body=b"abc" * 1000)):
        with Client(one_origin) as c:
            c.send(req)
            c.sock.shutdown(socket.SHUT_WR)
            r = c.response()
            assert r.status == 200 and r.json()["body_len"] in (0, 3000)
            assert c.at_eof()


# ---- everything at once --------------------------------------------------------------------------

def mixed_session(port: int, seed: int, rounds: int):
    """One client's share of test_mixed_traffic: a seeded random run of
    exchanges, each checked, on connections it sometimes closes."""
    rnd = random.Random(seed)
    c = Client(port)
    try:
        for _ in range(rounds):
            if rnd.random() < 0.1:
                c.close()
                c = Client(port)
            kind = rnd.randrange(6)
            if kind == 0:
                n = rnd.choice([0, 1, 65535, 65536, 70000, 300000])
                query = f"?chunked=1&piece={rnd.choice([1, 100, 9999, 70000])}" if rnd.random() < 0.5 else ""
                assert c.request("GET", f"/bytes/{n}{query}").body == payload(n)
            elif kind in (1, 2):
                body = rnd.randbytes(rnd.choice([1, 32767, 32768, 40000, 65536, 200000, 1000000]))
                if kind == 1:
                    echo = c.request("POST", "/e", body=body).json()
                else:
                    c.send(request_bytes("POST", "/e", [("Transfer-Encoding", "chunked")])
                           + chunked(body, [rnd.choice([1, 5, 4096, 70000])]))
                    echo = c.response().json()
                assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
            elif kind == 3:
                body = rnd.randbytes(rnd.choice([1, 50000, 300000]))
                c.send(request_bytes("PUT", "/e", [("Expect", "100-continue"), ("Content-Length", str(len(body)))]))
                assert c.f.readline() == b"HTTP/1.1 100 Continue\r\n" and c.f.readline() == b"\r\n"
                c.send(body)
                assert c.response().json()["body_len"] == len(body)
            elif kind == 4:
                c.send(b"".join(request_bytes("GET", f"/bytes/{j * 30000}") for j in range(4)))
                for j in range(4):
                    assert c.response().body == payload(j * 30000)
            else:
                r = c.request("HEAD", "/bytes/100000")
                assert (r.status, r.get("content-length")) == (200, ["100000"])
    finally:
        c.close()


def test_mixed_traffic(origins, run_lb):
    """Clients at once, each with its own mix of everything above, through two
    workers to two origins: every exchange byte-exact, none stuck."""
    port = free_port()
    run_lb(http_config(port, {"p": [origins("o1"), origins("o2")]}, workers=2))
    errors = []

    def run(seed):
        try:
            mixed_session(port, seed, 25)
        except Exception as e:                 # reported below, with its seed
            errors.append((seed, repr(e)))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_sticky_cookie_is_not_forwarded(origins, run_lb):
    """lb's sticky cookie is lb's: the backend sees the client's other cookies,
    in their order, and no Cookie field when lb's was the only one."""
    o = origins("o")
    port = free_port()
    run_lb(http_config(port, {"p": [o]}, pool_extra='sticky_cookie = "lbs"'))
    first = get(port)
    [set_cookie] = first.get("set-cookie")
    value = set_cookie.split(";")[0].split("=", 1)[1]
    assert len(value) == 16 and int(value, 16) >= 0
    echo = get(port, headers=[("Cookie", f"a=1; lbs={value}; b=2"), ("Cookie", "c=3")]).json()
    assert field(echo, "cookie") == ["a=1; b=2", "c=3"]
    echo = get(port, headers=[("Cookie", f"lbs={value}")]).json()
    assert field(echo, "cookie") == []
    # a cookie whose name only starts the same is the application's
    echo = get(port, headers=[("Cookie", "lbsx=9; lb=8")]).json()
    assert field(echo, "cookie") == ["lbsx=9; lb=8"]
