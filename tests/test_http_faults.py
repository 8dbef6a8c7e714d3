"""The http mode's failure handling end to end: a real `lb run` in front of
backends that fail on purpose (tests/http_faults.py), which count every request
they receive, so "retried", "sent exactly once" and "never sent" are asserted on
what the backends saw, not on what lb says it did."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import free_port, lb_config, wait_for
from http_faults import Blackhole, FaultBackend, HttpClient, NoResponse, refused_port, request, wait_closed

# health checks off, and no passive ejection either: a backend that fails on
# purpose stays in the pool, so every test sees the failure it set up
NO_EJECTION = 'type = "none"\n\n[pools.p.passive]\nconsecutive_failures = 0'


@pytest.fixture
def fault_backends():
    started: list[FaultBackend] = []

    def start(*args, **kwargs) -> FaultBackend:
        b = FaultBackend(*args, **kwargs)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def clients():
    """HttpClient(port), closed at the end of the test."""
    made: list[HttpClient] = []

    def make(port: int) -> HttpClient:
        c = HttpClient(port)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def http_lb(run_lb, members, **kwargs):
    """lb in http mode in front of members: FaultBackends, or (name, port) for
    a bare port (refused_port(), a Blackhole's). Returns (lb, port)."""
    items = []
    for m in members:
        if isinstance(m, FaultBackend):
            items.append((m.address, m.name, 100))
        else:
            name, port = m
            items.append((f"127.0.0.1:{port}", name, 100))
    port = free_port()
    kwargs.setdefault("health", NO_EJECTION)
    lb = run_lb(lb_config(port, items, mode="http", **kwargs))
    lb.n_backends = len(items)
    return lb, port


def assert_settled(lb, clients_open: int = 0):
    """Once the answers are in, no backend is counted as busy (every failure
    path gave back what it took), and only the clients still open are."""
    def settled():
        busy = [lb.backend_stats(i)["active"] for i in range(lb.n_backends)]
        return busy == [0] * lb.n_backends and sum(w["active"] for w in lb.worker_stats()) == clients_open
    wait_for(settled, 5, "lb's counters to settle")


def lb_cli(lb, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", "-c", str(lb.config_path), *args],
                          capture_output=True, text=True, timeout=30)


def served_by(response) -> str:
    """The name of the backend that answered (the first word of an ok body)."""
    assert response.status == 200 and response.complete, response.raw
    return response.text.split()[0]


def assert_no_backend_address(response, ports):
    """An error lb made names no backend: no address, no port, in its head or body."""
    raw = response.raw.decode("latin-1")
    assert "127.0.0.1" not in raw, raw
    for port in ports:
        assert str(port) not in raw, (port, raw)


def assert_lb_page(response, code: int):
    assert response.status == code, response.raw
    assert response.closes
    assert response.body.startswith(f"{code} ".encode())
    assert response.header("content-length") == str(len(response.body))


# ---- retries ------------------------------------------------------------------------------


def test_dead_backends_are_retried_without_client_errors(fault_backends, run_lb, clients):
    """One backend refuses every connection, another is killed while requests
    flow: sequential GETs (new connections and one keep-alive connection) and
    concurrent keep-alive GETs all get their 200, each from a live backend."""
    victim, survivor = fault_backends("victim"), fault_backends("survivor")
    lb, port = http_lb(run_lb, [("dead", refused_port()), victim, survivor], workers=2)

    for i in range(30):
        assert served_by(request(port, target=f"/seq/{i}")) in ("victim", "survivor")
    client = clients(port)
    for i in range(30):
        assert served_by(client.request(target=f"/ka/{i}")) in ("victim", "survivor")
    client.close()
    assert lb.backend_stats(0)["connect_errors"] >= 1
    assert victim.count() and survivor.count()

    stop = threading.Event()
    errors: list[str] = []
    answered = [0] * 8

    def client_loop(n: int):
        c = HttpClient(port)
        i = 0
        try:
            while not stop.is_set():
                r = c.request(target=f"/conc/{n}/{i}")
                if r.status != 200 or not r.complete:
                    errors.append(f"{n}/{i}: {r.raw!r}")
                answered[n] += 1
                i += 1
        except (OSError, NoResponse) as e:
            errors.append(f"{n}/{i}: {e!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    try:
        before = victim.count()
        wait_for(lambda: victim.count() >= before + 100 or errors, 10, "traffic to the victim")
        victim.kill()
        after = survivor.count()
        wait_for(lambda: survivor.count() >= after + 300 or errors, 20, "traffic after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert all(answered)
    assert lb.backend_stats(1)["connect_errors"] >= 1    # the victim was still tried, and refused
    # every GET the clients sent was answered once by a backend that was alive
    for i in range(30):
        assert victim.count("GET", f"/seq/{i}") + survivor.count("GET", f"/seq/{i}") == 1
    assert_settled(lb)


def test_wrk_sees_no_errors_while_a_backend_dies(fault_backends, run_lb):
    victim, survivor = fault_backends("victim"), fault_backends("survivor")
    lb, port = http_lb(run_lb, [("dead", refused_port()), victim, survivor], workers=2)
    wrk = subprocess.Popen(["wrk", "-t", "2", "-c", "8", "-d", "2s", f"http://127.0.0.1:{port}/wrk"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: victim.count() >= 200 or wrk.poll() is not None, 10, "wrk's traffic")
        assert wrk.poll() is None, "wrk ended before the victim was killed"
        victim.kill()
        at_kill = survivor.count()
        out, _ = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    assert wrk.returncode == 0, out
    assert "Socket errors" not in out and "Non-2xx" not in out, out
    total = int(re.search(r"(\d+) requests in", out).group(1))
    assert total >= 1000, out
    # the victim died in the middle of the run: the survivor took the rest
    assert survivor.count() > at_kill
    assert_settled(lb)


@pytest.mark.parametrize("fault", ["reset", "close"])
def test_failure_before_any_response_byte(fault, fault_backends, run_lb):
    """The backend reads the request, then resets (SO_LINGER 0) or closes
    without a byte of response. A GET goes to the other backend; a POST is
    never sent twice: 502, and only the failing backend ever saw it."""
    failing, healthy = fault_backends("failing", default=fault), fault_backends("healthy")
    lb, port = http_lb(run_lb, [failing, healthy])
    ports = (failing.port, healthy.port)

    for i in range(20):
        target = f"/get/{i}"
        assert served_by(request(port, target=target)) == "healthy"
        assert healthy.count("GET", target) == 1
        assert failing.count("GET", target) <= 1
        if failing.count("GET") >= 3:
            break
    assert failing.count("GET") >= 3, "the failing backend was never tried"

    refused_posts = 0
    for i in range(20):
        target = f"/post/{i}"
        r = request(port, "POST", target, body=b"payload=1")
        if r.status == 502:
            assert_lb_page(r, 502)
            assert_no_backend_address(r, ports)
            assert (failing.count("POST", target), healthy.count("POST", target)) == (1, 0)
            refused_posts += 1
            if refused_posts == 3:
                break
        else:
            assert served_by(r) == "healthy"
            assert (failing.count("POST", target), healthy.count("POST", target)) == (0, 1)
    assert refused_posts == 3
    assert_settled(lb)


def test_post_whose_connect_is_refused_goes_to_another_backend_once(fault_backends, run_lb):
    """A refused connect means the request never left: a POST may go elsewhere."""
    healthy = fault_backends("healthy")
    lb, port = http_lb(run_lb, [("dead", refused_port()), healthy])
    for i in range(10):
        r = request(port, "POST", f"/post/{i}", body=b"payload=%d" % i)
        assert served_by(r) == "healthy"
        assert healthy.count("POST", f"/post/{i}") == 1
    assert healthy.count("POST") == 10
    assert lb.backend_stats(0)["connect_errors"] >= 3
    assert_settled(lb)


def test_connect_that_hangs_is_retried_after_connect_timeout(fault_backends, run_lb):
    """A backend that does not answer SYNs: after connect_timeout the request,
    which never left, goes to another backend, GET or POST."""
    hole = Blackhole()
    try:
        healthy = fault_backends("healthy")
        lb, port = http_lb(run_lb, [("hole", hole.port), healthy], connect_timeout="300ms")
        for method in ("GET", "POST"):
            for i in range(6):
                target = f"/{method}/{i}"
                assert served_by(request(port, method, target, body=b"x=1" if method == "POST" else b"")) == "healthy"
                assert healthy.count(method, target) == 1
                if lb.backend_stats(0)["connect_timeouts"] >= (1 if method == "GET" else 2):
                    break
        assert lb.backend_stats(0)["connect_timeouts"] == 2
        assert_settled(lb)
    finally:
        hole.close()


def test_response_head_cut_short_is_not_retried(fault_backends, run_lb):
    """Once a response byte came, the request is not sent again, GET or not: 502."""
    half, other = fault_backends("half", default="half_head"), fault_backends("other", default="half_head")
    lb, port = http_lb(run_lb, [half, other])
    r = request(port, target="/h")
    assert_lb_page(r, 502)
    assert_no_backend_address(r, (half.port, other.port))
    assert half.count("GET", "/h") + other.count("GET", "/h") == 1
    assert_settled(lb)


# ---- keep-alive to the backends -------------------------------------------------------------


def test_backend_keeps_its_connections_alive_and_lb_reuses_them(fault_backends, run_lb):
    backend = fault_backends("b1")
    lb, port = http_lb(run_lb, [backend])
    for i in range(20):
        assert served_by(request(port, target=f"/r/{i}")) == "b1"
    assert backend.connections == 1
    assert_settled(lb)


def test_backend_closing_after_each_response(fault_backends, run_lb, clients):
    """The backend answers one request per connection and closes it without
    saying so: the next request finds its parked connection closed and goes on
    a new one."""
    backend = fault_backends("b1", close_after=1)
    lb, port = http_lb(run_lb, [backend])
    client = clients(port)
    for i in range(30):
        assert served_by(client.request(target=f"/r/{i}")) == "b1"
        assert backend.count("GET", f"/r/{i}") == 1
    assert backend.connections == 30
    assert_settled(lb, clients_open=1)


def test_backend_closing_idle_connections(fault_backends, run_lb, clients):
    backend = fault_backends("b1", idle_close=0.05)
    lb, port = http_lb(run_lb, [backend])
    client = clients(port)
    for i in range(8):
        assert served_by(client.request(target=f"/r/{i}")) == "b1"
        backend.wait_idle_closes(i + 1)
    assert all(backend.count("GET", f"/r/{i}") == 1 for i in range(8))
    assert backend.connections == 8
    assert_settled(lb, clients_open=1)


def test_parked_connection_dropped_by_the_backend_while_lb_sends_on_it(fault_backends, run_lb, clients):
    """The race of a keep-alive connection: the backend closes it just as lb
    sends the next request on it. A GET goes again on a new connection (the
    backend sees it twice, which a GET allows); a POST is not sent again."""
    backend = fault_backends("b1", drop_after=1)
    lb, port = http_lb(run_lb, [backend])
    client = clients(port)
    for i in range(10):
        r = client.request(target=f"/r/{i}")
        assert served_by(r) == "b1"
        assert r.text.split()[1] == str(i + 1)          # each on a new connection
        assert backend.count("GET", f"/r/{i}") == (1 if i == 0 else 2)
    r = client.request("POST", "/post", body=b"x=1")
    assert_lb_page(r, 502)
    assert_no_backend_address(r, (backend.port,))
    assert backend.count("POST", "/post") == 1
    assert_settled(lb)


def test_response_cut_short(fault_backends, run_lb, clients):
    """Content-Length 1000, 10 bytes, then the backend closes: the client's
    connection is cut too (it must not take the next response for the rest of
    this one), and the next request is answered on a new backend connection."""
    backend = fault_backends("b1", faults={"/short": "short"})
    lb, port = http_lb(run_lb, [backend])
    client = clients(port)
    r = client.request(target="/short")
    assert r.status == 200 and r.header("content-length") == "1000"
    assert r.body == b"x" * 10 and not r.complete
    assert client.sock is None                       # the connection ended
    assert backend.count("GET", "/short") == 1 and backend.connections == 1
    r = client.request(target="/next")
    assert served_by(r) == "b1" and r.text.split()[1] == "2"
    assert_settled(lb, clients_open=1)


# ---- lb's own answers -----------------------------------------------------------------------


def test_503_when_every_backend_is_down(run_lb):
    ports = (refused_port(), refused_port())
    lb, port = http_lb(run_lb, [("dead1", ports[0]), ("dead2", ports[1])])
    for method in ("GET", "POST"):
        r = request(port, method, "/", body=b"x=1" if method == "POST" else b"")
        assert_lb_page(r, 503)
        assert r.body == b"503 Service Unavailable\n"
        assert_no_backend_address(r, ports)
    assert lb.backend_stats(0)["connect_errors"] >= 1 and lb.backend_stats(1)["connect_errors"] >= 1
    assert_settled(lb)


def test_504_when_the_backend_never_answers(fault_backends, run_lb):
    silent = fault_backends("silent", default="silent")
    lb, port = http_lb(run_lb, [silent], pool_extra='response_timeout = "300ms"')
    t0 = time.monotonic()
    r = request(port, target="/slow")
    elapsed = time.monotonic() - t0
    assert_lb_page(r, 504)
    assert_no_backend_address(r, (silent.port,))
    assert 0.25 <= elapsed < 3, elapsed
    assert silent.count("GET", "/slow") == 1            # not sent again after a timeout
    assert_settled(lb)


def test_408_for_a_request_head_that_does_not_arrive(fault_backends, run_lb, clients):
    backend = fault_backends("b1")
    lb, port = http_lb(run_lb, [backend], listener_extra='http_request_timeout = "300ms"')

    # half a head, then nothing
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /half HTTP/1.1\r\nHost: test\r\n")
        got, elapsed = wait_closed(s, 5)
    assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and got.endswith(b"\r\n\r\n408 Request Timeout\n")
    assert b"connection: close" in got.lower()
    assert 0.2 <= elapsed < 3, elapsed

    # nothing at all on a fresh connection: lb answers 408 as well
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        got, elapsed = wait_closed(s, 5)
    assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got

    # the second request of a keep-alive connection, cut in the middle of its head
    client = clients(port)
    assert served_by(client.request(target="/first")) == "b1"
    client.send(b"GET /second HTTP/1.1\r\nHo")
    got, _ = wait_closed(client.sock, 5)
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert backend.count() == 1
    client.close()
    assert_settled(lb)


def test_error_pages_for_a_later_request_of_a_keepalive_connection(fault_backends, run_lb, clients):
    """lb's pages are not only for a connection's first request."""
    backend = fault_backends("b1")
    lb, port = http_lb(run_lb, [backend])
    client = clients(port)
    assert served_by(client.request(target="/first")) == "b1"
    client.send(b"GET /bad HTTP/1.1\r\nHost: test\r\nno colon here\r\n\r\n")
    r = client.read_response()
    assert_lb_page(r, 400)
    # pipelined: a good request, then garbage; the first is answered, then 400
    client = clients(port)
    client.send(b"GET /good HTTP/1.1\r\nHost: test\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
    assert served_by(client.read_response()) == "b1"
    assert_lb_page(client.read_response(), 400)
    assert backend.count() == 2 and backend.count("GET", "/good") == 1
    assert_settled(lb)


def test_idle_keepalive_client_is_closed_silently(fault_backends, run_lb, clients):
    backend = fault_backends("b1")
    lb, port = http_lb(run_lb, [backend], listener_extra='keepalive_timeout = "300ms"')
    client = clients(port)
    assert served_by(client.request(target="/one")) == "b1"
    got, elapsed = wait_closed(client.sock, 5)
    assert got == b""
    assert 0.2 <= elapsed < 3, elapsed
    assert_settled(lb)


# ---- where requests go ----------------------------------------------------------------------

STICKY = re.compile(r"lbs=([0-9a-f]{16})(;.*)?")


def sticky_cookie(response) -> str | None:
    value = response.header("set-cookie")
    if value is None:
        return None
    m = STICKY.fullmatch(value)
    assert m, value
    return m.group(1)


def test_sticky_cookie_follows_the_backend_and_moves_off_it(fault_backends, run_lb):
    bs = [fault_backends(f"b{i}") for i in range(1, 4)]
    ports = [b.port for b in bs]
    lb, port = http_lb(run_lb, bs, pool_extra='sticky_cookie = "lbs"', workers=2)

    first = request(port, target="/")
    cookie = sticky_cookie(first)
    assert cookie is not None
    assert "127.0.0.1" not in first.header("set-cookie")
    assert not any(str(p) in first.header("set-cookie") for p in ports)
    home = served_by(first)
    for i in range(20):
        r = request(port, target=f"/s/{i}", headers={"Cookie": f"other=1; lbs={cookie}"})
        assert served_by(r) == home
        assert r.header("set-cookie") is None             # it already has the right one
    # without the cookie (or with one lb did not make) requests are balanced
    assert {served_by(request(port, target="/n")) for _ in range(9)} == {"b1", "b2", "b3"}
    r = request(port, target="/bad", headers={"Cookie": "lbs=0123456789abcdef"})
    assert sticky_cookie(r) is not None

    # drain: the sessions it has stay (HAProxy's drain); new ones go elsewhere
    assert lb_cli(lb, "backend", "drain", "p", home).returncode == 0
    for i in range(6):
        assert served_by(request(port, target=f"/d/{i}", headers={"Cookie": f"lbs={cookie}"})) == home
        assert served_by(request(port, target=f"/dn/{i}")) != home

    # maint: it takes nothing; its sessions move, with a new cookie
    assert lb_cli(lb, "backend", "maint", "p", home).returncode == 0
    r = request(port, target="/moved", headers={"Cookie": f"lbs={cookie}"})
    new_home = served_by(r)
    new_cookie = sticky_cookie(r)
    assert new_home != home and new_cookie not in (None, cookie)
    for i in range(10):
        assert served_by(request(port, target=f"/m/{i}", headers={"Cookie": f"lbs={new_cookie}"})) == new_home
    assert sum(b.count("GET", "/moved") for b in bs) == 1
    assert_settled(lb)


def test_sticky_backend_killed_moves_its_sessions(fault_backends, run_lb):
    """Without health checks: the sticky backend refuses, the request is
    retried on another backend, and the response carries that one's cookie."""
    bs = [fault_backends(f"b{i}") for i in range(1, 4)]
    lb, port = http_lb(run_lb, bs, pool_extra='sticky_cookie = "lbs"')
    first = request(port, target="/")
    cookie, home = sticky_cookie(first), served_by(first)
    next(b for b in bs if b.name == home).kill()
    for i in range(10):
        r = request(port, target=f"/k/{i}", headers={"Cookie": f"lbs={cookie}"})
        assert served_by(r) != home
        new_cookie = sticky_cookie(r)
        assert new_cookie not in (None, cookie)
        assert served_by(request(port, target=f"/k2/{i}", headers={"Cookie": f"lbs={new_cookie}"})) == served_by(r)
    assert_settled(lb)


@pytest.mark.parametrize("hash_key", ["header:X-User", "cookie:uid", "query:user", "path"])
def test_hash_key_sends_a_key_to_one_backend(hash_key, fault_backends, run_lb):
    bs = [fault_backends(f"b{i}") for i in range(1, 4)]
    lb, port = http_lb(run_lb, bs, algorithm="maglev", pool_extra=f'hash_key = "{hash_key}"', workers=2)

    def send(key: str, n: int):
        if hash_key == "header:X-User":
            return request(port, target=f"/x/{n}", headers={"X-User": key})
        if hash_key == "cookie:uid":
            return request(port, target=f"/x/{n}", headers={"Cookie": f"a=b; uid={key}; c=d"})
        if hash_key == "query:user":
            return request(port, target=f"/x/{n}?a=1&user={key}&b=2")
        return request(port, target=f"/{key}?n={n}")

    homes = {}
    for k in range(24):
        key = f"user{k}"
        seen = {served_by(send(key, n)) for n in range(4)}
        assert len(seen) == 1, (key, seen)
        homes[key] = seen.pop()
    assert set(homes.values()) == {"b1", "b2", "b3"}
    if hash_key != "path":
        # without the key: the client address, the same for every request here
        assert len({served_by(request(port, target=f"/nokey/{n}")) for n in range(6)}) == 1
    assert_settled(lb)


# ---- reload and stop under keep-alive load ----------------------------------------------------


class KeepAliveLoad:
    """Clients, each on one keep-alive connection, sending GETs until told to
    stop. A client reconnects after `Connection: close`; when its connection
    ends before any response byte it sends the GET again (a GET may be sent
    twice), on a new connection and under a new target, so that whether lb had
    forwarded the first try can be checked on the backend."""

    def __init__(self, port: int, clients: int):
        self.port = port
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.answered = 0
        self.unanswered: list[str] = []      # targets whose connection ended without a byte
        self.refused = 0
        self.told_to_close = 0               # responses with Connection: close
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, n: int) -> None:
        c = HttpClient(self.port)
        i = 0
        while not self.stop.is_set():
            target = f"/load/{n}/{i}"
            i += 1
            try:
                r = c.request(target=target)
            except NoResponse:
                with self.lock:
                    self.unanswered.append(target)
                continue
            except ConnectionRefusedError:
                with self.lock:
                    self.refused += 1
                break                            # lb is gone (a stop)
            except OSError as e:
                if isinstance(e, (BrokenPipeError, ConnectionResetError)):
                    with self.lock:
                        self.unanswered.append(target)
                    c.close()
                    continue
                self.errors.append(f"{target}: {e!r}")
                break
            with self.lock:
                if r.status != 200 or not r.complete:
                    self.errors.append(f"{target}: {r.raw!r}")
                else:
                    self.answered += 1
                    self.told_to_close += r.closes
        c.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


@pytest.mark.parametrize("how", ["cli", "sighup"])
def test_reload_under_keepalive_load_loses_no_request(how, fault_backends, run_lb):
    b1, b2 = fault_backends("b1"), fault_backends("b2")
    lb, port = http_lb(run_lb, [b1, b2], workers=2)
    load = KeepAliveLoad(port, 6)
    try:
        wait_for(lambda: load.answered >= 300 or load.errors, 10, "traffic before the reload")
        if how == "cli":
            result = lb_cli(lb, "reload")
            assert result.returncode == 0, result.stderr
        else:
            lb.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: json.loads(lb_cli(lb, "status", "--json").stdout)["generation"] == 2, 10,
                 "the new generation")
        after = load.answered
        wait_for(lambda: load.answered >= after + 300 or load.errors, 10, "traffic after the reload")
    finally:
        load.finish()
    assert load.errors == []
    assert load.refused == 0
    # every client moved off the old generation: told to close, or closed while idle
    assert load.told_to_close + len(load.unanswered) >= 6
    # a connection lb closed without answering had not forwarded its request
    for target in load.unanswered:
        assert b1.count("GET", target) + b2.count("GET", target) == 0, target


def test_graceful_stop_under_keepalive_load_answers_what_it_forwarded(fault_backends, run_lb):
    b1 = fault_backends("b1")
    lb, port = http_lb(run_lb, [b1], workers=2)
    load = KeepAliveLoad(port, 6)
    try:
        wait_for(lambda: load.answered >= 300 or load.errors, 10, "traffic before the stop")
        assert lb.stop(signal.SIGTERM) == 0
        wait_for(lambda: all(not t.is_alive() for t in load.threads), 10, "every client to see lb gone")
    finally:
        load.finish()
    assert load.errors == []
    assert load.refused == 6
    for target in load.unanswered:
        assert b1.count("GET", target) == 0, target
