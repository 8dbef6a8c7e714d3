"""HTTP/2 to clients (lb/fastpath/h2.pxi): ALPN "h2" on TLS listeners and h2c
with prior knowledge on plain ones, every stream a request through the same
routing, rules and logs as HTTP/1.1, to HTTP/1.1 origins.

Real clients (curl, nghttp, h2load, httpx) and python-h2 (tests/h2_client.py)
for what needs control of frames and windows. Bodies are checked byte for
byte both ways. The flood and malformed-frame cases are in test_h2_abuse.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess

import httpx
import pytest

from conftest import free_port, wait_for
from h2_client import H2Client
from http_origin import Origin, payload
from tls_certs import CA
from tls_client import client_context, lb_cli
from tls_servers import lb_toml, listener_toml, pool_toml


class Pki:
    def __init__(self, d):
        self.ca = CA(d)
        self.site = self.ca.leaf("site", ("site.test", "api.test", "127.0.0.1"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("h2-pki"))


@pytest.fixture
def origin():
    o = Origin("o")
    yield o
    o.stop()


def h2_ctx(pki, alpn=("h2", "http/1.1")):
    return client_context(pki.ca.path, alpn=list(alpn))


class Site:
    """Listener "web" (TLS, ALPN h2 then http/1.1) and "plain" (h2c), both in
    front of pool "p"; extra lines go to both listeners."""

    def __init__(self, pki, run_lb, origins, *, extra: str = "", sections=(), workers: int = 1, h2: str = "",
                 logs: str = ""):
        self.origins = origins
        self.port = free_port()
        self.plain_port = free_port()
        tls = (f'\n[listeners.web.tls]\ncertificates = [{{ cert = "{pki.site.cert}", key = "{pki.site.key}" }}]\n'
               'alpn = ["h2", "http/1.1"]\n')
        web = listener_toml("web", self.port, "p", extra=extra) + tls + (f"\n[listeners.web.http2]\n{h2}\n")
        plain = listener_toml("plain", self.plain_port, "p", extra=extra) + f"\n[listeners.plain.http2]\nh2c = true\n{h2}\n"
        members = [(o.name, o.address) for o in origins]
        self.lb = run_lb(lb_toml(web, plain, pool_toml("p", members), *sections, workers=workers,
                                 global_extra=logs))
        self.ctx = h2_ctx(pki)
        self.pki = pki

    def client(self, **kw) -> H2Client:
        return H2Client(self.port, tls=self.ctx, **kw)

    def plain_client(self, **kw) -> H2Client:
        return H2Client(self.plain_port, **kw)

    def stats(self, key: str) -> int:
        return sum(w[key] for w in self.lb.worker_stats())


@pytest.fixture
def site(pki, run_lb, origin):
    return Site(pki, run_lb, [origin])


def echo(r) -> dict:
    assert r.status == 200, (r.status, bytes(r.body)[:200])
    return json.loads(bytes(r.body))


# ---- the protocol is chosen as clients ask ----------------------------------------------------

def test_alpn_prefers_h2_and_http11_clients_are_still_served(site):
    with site.client() as c:
        r = c.response(c.request("/hello"))
        e = echo(r)
        assert e["target"] == "/hello" and e["version"] == "HTTP/1.1"     # to the origin: HTTP/1.1
        headers = {k.lower(): v for k, v in e["headers"]}
        assert headers["host"] == "site.test" and headers["x-forwarded-proto"] == "https"
    # a client that offers only http/1.1 gets it, on the same listener
    out = subprocess.run(["curl", "-sS", "--http1.1", "--cacert", str(site.pki.ca.path), "-w", "%{http_version}",
                          "--resolve", f"site.test:{site.port}:127.0.0.1", "-o", "/dev/null",
                          f"https://site.test:{site.port}/"], capture_output=True, text=True, timeout=20)
    assert out.stdout == "1.1", out.stderr
    assert site.stats("h2_connections") == 1


@pytest.mark.parametrize("mode", ["tls", "h2c"])
def test_curl_http2(site, mode):
    if mode == "tls":
        args = ["--http2", "--cacert", str(site.pki.ca.path), "--resolve", f"site.test:{site.port}:127.0.0.1",
                f"https://site.test:{site.port}/bytes/300000"]
    else:
        args = ["--http2-prior-knowledge", f"http://127.0.0.1:{site.plain_port}/bytes/300000"]
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_version} %{http_code}"] + args, capture_output=True,
                         timeout=20)
    body, _, tail = out.stdout.rpartition(b"\n")
    assert tail == b"2 200", out.stderr
    assert body == payload(300000)


def test_an_http11_request_on_an_h2c_listener_is_still_http11(site):
    out = subprocess.run(["curl", "-sS", "--http1.1", "-w", "%{http_version}", "-o", "/dev/null",
                          f"http://127.0.0.1:{site.plain_port}/"], capture_output=True, text=True, timeout=20)
    assert out.stdout == "1.1", out.stderr


def test_nghttp_get_and_upload(site, tmp_path):
    data = os.urandom(200000)
    (tmp_path / "up").write_bytes(data)
    out = subprocess.run(["nghttp", "-d", str(tmp_path / "up"), f"https://127.0.0.1:{site.port}/echo"],
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    e = json.loads(out.stdout)
    assert e["method"] == "POST" and e["body_sha256"] == hashlib.sha256(data).hexdigest()
    out = subprocess.run(["nghttp", f"http://127.0.0.1:{site.plain_port}/bytes/100000"], capture_output=True,
                         timeout=20)
    assert out.returncode == 0 and out.stdout == payload(100000), out.stderr


def test_h2load_many_streams_on_few_connections(site):
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "32", f"https://127.0.0.1:{site.port}/bytes/1000"],
                         capture_output=True, text=True, timeout=60)
    assert "2000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    assert "status codes: 2000 2xx" in out.stdout
    assert site.stats("h2_streams") == 2000


def test_httpx_http2(site):
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(site.pki.ca.path))) as client:
        url = f"https://127.0.0.1:{site.port}"
        for n in (0, 1, 70000, 1000000):
            r = client.get(f"{url}/bytes/{n}", headers={"host": "site.test"})
            assert r.http_version == "HTTP/2" and r.status_code == 200
            assert r.content == payload(n)
        r = client.post(f"{url}/upload", content=b"x" * 300000)
        assert r.json()["body_len"] == 300000 and r.json()["framing"] == "length"


# ---- bodies, flow control, trailers -------------------------------------------------------------

def test_many_concurrent_streams_bodies_intact_both_ways(site):
    rng = __import__("random").Random(7)
    with site.client() as c:
        sent = {}
        for i in range(60):
            body = rng.randbytes(rng.choice([0, 1, 1000, 65535, 65536, 200000]))
            headers = [("content-length", str(len(body)))] if i % 2 else []      # odd: length, even: chunked
            # ended later, all together (an empty body with a length is whole at once)
            sid = c.request(f"/up/{i}", "POST", headers, body=body, end=not body and bool(headers))
            sent[sid] = body
        for sid, body in sent.items():
            if body or not sid % 4 == 3:
                c.send_body(sid, b"", end=True)
        downloads = {c.request(f"/bytes/{n}"): n for n in (10, 100000, 1500000, 3)}
        for sid, body in sent.items():
            e = echo(c.response(sid))
            assert e["body_len"] == len(body) and e["body_sha256"] == hashlib.sha256(body).hexdigest()
            if body and sid % 4 == 3:          # client stream ids 1, 3, 5, ...: i odd <=> sid % 4 == 3
                assert e["framing"] == "length"
        for sid, n in downloads.items():
            assert bytes(c.response(sid).body) == payload(n)


def test_large_upload_without_length_and_large_download(site):
    data = os.urandom(5 * 1024 * 1024)
    with site.client() as c:
        e = echo(c.response(c.request("/big", "POST", body=data), timeout=60))
        assert e["framing"] == "chunked" and e["body_len"] == len(data)
        assert e["body_sha256"] == hashlib.sha256(data).hexdigest()
        r = c.response(c.request("/bytes/8000000?chunked=1&piece=65536"), timeout=60)
        assert r.ended and bytes(r.body) == payload(8000000)


def test_response_trailers_and_request_trailers(site):
    with site.client() as c:
        r = c.response(c.request("/bytes/5000?chunked=1&t=grpc-status:0&t=X-Sum:abc"))
        assert bytes(r.body) == payload(5000)
        assert sorted(r.trailers) == [(b"grpc-status", b"0"), (b"x-sum", b"abc")]
        assert r.header("transfer-encoding") is None
        sid = c.request("/t", "POST", body=b"hello", end=False)
        c.conn.send_headers(sid, [("x-checksum", "42")], end_stream=True)
        c.flush()
        e = echo(c.response(sid))
        assert e["framing"] == "chunked" and e["trailers"] == [["x-checksum", "42"]]


def test_a_slow_stream_does_not_hold_the_others(site):
    """One stream's response waits for its window; the others finish."""
    with site.client(auto_window=False) as c:
        slow = c.request("/bytes/4000000")
        c.pump(lambda: len(c.responses[slow].body) >= 65535)       # its whole initial window
        # the connection's window opens again, the slow stream's own never
        c.conn.increment_flow_control_window(len(c.responses[slow].body))
        fast = [c.request(f"/bytes/{n}") for n in (10, 1000, 20000)]

        def done():
            for sid in fast:
                got = len(c.responses[sid].body)
                if got:
                    c.conn.acknowledge_received_data(got - getattr(c, f"_acked{sid}", 0), sid)
                    setattr(c, f"_acked{sid}", got)
            c.flush()
            return all(c.responses[s].done for s in fast)
        c.pump(done)
        assert [bytes(c.responses[s].body) for s in fast] == [payload(10), payload(1000), payload(20000)]
        assert not c.responses[slow].done and len(c.responses[slow].body) == 65535
        c.auto_window = True
        c.open_window(slow, 4000000)
        assert bytes(c.response(slow, timeout=30).body) == payload(4000000)


def test_head_204_304_and_100_continue(site):
    with site.client() as c:
        r = c.response(c.request("/bytes/500", "HEAD"))
        assert r.status == 200 and r.header("content-length") == "500" and bytes(r.body) == b""
        assert c.response(c.request("/status/204")).status == 204
        assert c.response(c.request("/status/304")).status == 304
        sid = c.request("/c", "POST", [("expect", "100-continue"), ("content-length", "3")], end=False)
        c.pump(lambda: c.responses[sid].informational)
        assert c.responses[sid].informational[0] == [(b":status", b"100")]
        c.send_body(sid, b"abc")
        assert echo(c.response(sid))["body"] == "YWJj"


# ---- the same routing and rules as HTTP/1.1 ----------------------------------------------------

def test_routing_and_header_rules_as_over_http11(pki, run_lb):
    a, b = Origin("a"), Origin("b")
    try:
        port = free_port()
        tls = (f'\n[listeners.web.tls]\ncertificates = [{{ cert = "{pki.site.cert}", key = "{pki.site.key}" }}]\n'
               'alpn = ["h2", "http/1.1"]\n')
        web = listener_toml("web", port, "a", extra='request_headers = { set = { "X-Edge" = "lb" }, remove = ["X-Secret"] }\n'
                            'response_headers = { add = { "X-Served" = "h2" } }') + tls + """
[[listeners.web.routes]]
host = "api.test"
path_prefix = "/v1/"
pool = "b"
response_headers = { set = { "X-Route" = "api" } }
"""
        lb = run_lb(lb_toml(web, pool_toml("a", [("a", a.address)]), pool_toml("b", [("b", b.address)])))
        with H2Client(port, tls=h2_ctx(pki), server_hostname="api.test") as c:
            r1 = c.response(c.request("/v1/users", headers=[("x-secret", "s"), ("cookie", "a=1"), ("cookie", "b=2")]))
            r2 = c.response(c.request("/other"))
            r3 = c.response(c.request("/v1/x", authority="site.test"))
        e1, e2, e3 = echo(r1), echo(r2), echo(r3)
        assert (e1["name"], e2["name"], e3["name"]) == ("b", "a", "a")
        h1 = {k.lower(): v for k, v in e1["headers"]}
        assert h1["x-edge"] == "lb" and "x-secret" not in h1 and h1["cookie"] == "a=1; b=2"
        assert h1["host"] == "api.test"
        assert r1.header("x-route") == "api" and r1.header("x-served") == "h2"
        assert r2.header("x-route") is None and r2.header("x-served") == "h2"
        assert sum(w["h2_streams"] for w in lb.worker_stats()) == 3
    finally:
        a.stop()
        b.stop()


def test_errors_lb_answers_are_http2_responses(pki, run_lb, origin):
    site = Site(pki, run_lb, [origin], extra='max_body_size = "1KiB"\nmax_target = 100')
    with site.client() as c:
        assert c.response(c.request("/" + "a" * 200)).status == 414
        r = c.response(c.request("/up", "POST", body=b"x" * 5000))
        assert r.status == 413 and r.header("content-type") == "text/plain"
        # a header list past max_header_size (HTTP/1.1's limit too)
        assert c.response(c.request("/big-head", headers=[("x-big", "v" * 20000)])).status == 431
        assert echo(c.response(c.request("/still-fine")))["target"] == "/still-fine"
    seen = []
    wait_for(lambda: seen.extend(line.split()[-1] for line in origin.requests()) or "/still-fine" in seen, 10,
             "the origin's report")
    assert seen == ["/still-fine"]


# ---- graceful: GOAWAY on reload and stop ---------------------------------------------------------

def test_reload_sends_goaway_and_finishes_the_streams_in_flight(pki, run_lb, origin):
    site = Site(pki, run_lb, [origin])
    data = os.urandom(300000)
    with site.client() as c:
        others = [c.request(f"/also/{i}", "POST", [("content-length", "5")], body=b"ab", end=False) for i in range(8)]
        sid = c.request("/in-flight", "POST", [("content-length", str(len(data)))], body=data[:1000], end=False)
        c.pump(lambda: c.conn.local_flow_control_window(sid) > 0)
        res = lb_cli(site.lb.config_path, "reload")
        assert res.returncode == 0, res.stderr
        # first the shutdown notice (the highest stream id), then, a round
        # trip later, the last stream lb took
        c.pump(lambda: c.goaway is not None)
        assert c.goaway_error == "NO_ERROR" and c.goaway.last_stream_id == 2**31 - 1
        c.pump(lambda: c.goaway.last_stream_id != 2**31 - 1)
        assert c.goaway_error == "NO_ERROR" and c.goaway.last_stream_id == sid
        c.send_body(sid, data[1000:])
        e = echo(c.response(sid))
        assert e["body_sha256"] == hashlib.sha256(data).hexdigest()
        for other in others:                 # every stream lb took is served
            c.send_body(other, b"cde")
            assert echo(c.response(other))["body"] == "YWJjZGU="
        c.wait_closed()
    # the next connection is the new generation's
    with site.client() as c:
        assert echo(c.response(c.request("/after")))["target"] == "/after"


def test_idle_connection_gets_goaway_at_keepalive_timeout(pki, run_lb, origin):
    site = Site(pki, run_lb, [origin], extra='keepalive_timeout = "200ms"')
    with site.client() as c:
        echo(c.response(c.request("/one")))
        c.wait_closed()
        assert c.goaway_error == "NO_ERROR"
    assert site.stats("h2_goaways") >= 1


# ---- visibility ----------------------------------------------------------------------------------

def test_access_log_says_http2(pki, run_lb, origin, tmp_path):
    log = tmp_path / "access.log"
    logs = f'\n[logs.access]\nformat = "{{protocol}} {{method}} {{path}} {{status}} {{tls_version}}"\ntarget = "file:{log}"\n'
    site = Site(pki, run_lb, [origin], sections=[logs])
    with site.client() as c:
        for sid in [c.request(f"/l/{i}") for i in range(3)]:
            echo(c.response(sid))
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 3, 10, "three log lines")
    lines = sorted(log.read_text().splitlines())
    assert lines == [f"HTTP/2.0 GET /l/{i} 200 TLSv1.3" for i in range(3)]


def test_status_counts_connections_streams_and_goaways(site):
    with site.client() as c:
        for sid in [c.request("/s") for _ in range(5)]:
            echo(c.response(sid))
    wait_for(lambda: site.stats("h2_connections") == 1 and site.stats("h2_streams") == 5, 10, "the counters")
    res = lb_cli(site.lb.config_path, "status", "--json")
    workers = json.loads(res.stdout)["workers"]
    assert sum(w["h2_streams"] for w in workers) == 5
    text = lb_cli(site.lb.config_path, "status").stdout
    assert "http/2  1 connections  5 streams" in text, text


def test_reloads_under_h2load_drop_no_started_request(pki, run_lb, origin):
    """h2load does not reconnect after a GOAWAY (requests it never started
    count as errored): every request it did start is answered, 2xx."""
    import re
    import threading
    site = Site(pki, run_lb, [origin])
    out = {}

    def load():
        out["r"] = subprocess.run(["h2load", "-n", "200000", "-c", "4", "-m", "10",
                                   f"https://127.0.0.1:{site.port}/bytes/100"],
                                  capture_output=True, text=True, timeout=120)
    t = threading.Thread(target=load)
    t.start()
    wait_for(lambda: site.stats("h2_streams") > 500, 30, "h2load to get going")
    for generation in (2, 3):
        res = lb_cli(site.lb.config_path, "reload")
        assert res.returncode == 0, res.stderr
    t.join()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out["r"].stdout)
    assert m, out["r"].stdout
    total, started, done, succeeded = map(int, m.groups())
    # h2load counts as started the requests it had queued when a GOAWAY made
    # its nghttp2 refuse to send them (at most its 10 streams a connection,
    # 4 connections, per reload); every request that reached lb is answered
    assert started > 500 and started - succeeded <= 2 * 4 * 10, out["r"].stdout
    assert f"status codes: {succeeded} 2xx, 0 3xx, 0 4xx, 0 5xx" in out["r"].stdout


# ---- gateway rules over HTTP/2: each stream is decided as an HTTP/1.1 request ---------------------

def test_basic_auth_and_rate_limits_per_stream(run_lb, origin, tmp_path):
    """A stream parked for its password check waits alone: the connection's
    other streams are served meanwhile. A rate limit counts streams as
    requests."""
    import base64
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    (tmp_path / "htpasswd").write_text(
        f"slow:{crypt.crypt('right', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 13))}\n"
        f"fast:{crypt.crypt('pw', crypt.mksalt(crypt.METHOD_SHA256))}\n")
    port = free_port()
    listener = listener_toml("h2", port, "p", extra="""
        [listeners.h2.http2]
        h2c = true
        [[listeners.h2.routes]]
        path_prefix = "/private/"
        pool = "p"
        auth = "staff"
        [[listeners.h2.routes]]
        path_prefix = "/limited/"
        pool = "p"
        limits = ["three"]
        """)
    extra = (f'[auth.staff]\ntype = "basic"\nhtpasswd = "{tmp_path / "htpasswd"}"\n\n'
             '[limits.three]\nkey = "source_ip"\nrate = "3/1m"\nburst = 2\n')  # GCRA: 3 at once
    mport = free_port()
    run_lb(lb_toml(listener, pool_toml("p", [("o", origin.address)]), extra,
                   global_extra=f'[global.metrics]\nbind = "127.0.0.1:{mport}"'))

    def creds(user, pw):
        return [("authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())]
    with H2Client(port) as c:
        slow = c.request("/private/slow", headers=creds("slow", "wrong"))
        fast = [c.request(f"/private/f{i}", headers=creds("fast", "pw")) for i in range(3)]
        c.pump(lambda: all(c.responses[s].done for s in fast))
        assert [c.responses[s].status for s in fast] == [200, 200, 200]
        assert not c.responses[slow].done          # still being checked, off the loop
        r = c.response(slow, timeout=60)
        assert r.status == 401 and r.header("www-authenticate").startswith('Basic realm="staff"')
        limited = [c.request(f"/limited/{i}") for i in range(5)]
        statuses = sorted(c.response(s).status for s in limited)
        assert statuses == [200, 200, 200, 429, 429]
        refused = next(c.responses[s] for s in limited if c.responses[s].status == 429)
        assert int(refused.header("retry-after")) > 0
    # the same decisions in the metrics, and every stream counted as a request
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(scrape) for s in f.samples}
    assert samples[("lb_limit_decisions_total", (("decision", "admitted"), ("limit", "three")))] == 3
    assert samples[("lb_limit_decisions_total", (("decision", "refused_rate"), ("limit", "three")))] == 2
    assert samples[("lb_auth_decisions_total", (("auth", "staff"), ("result", "invalid"), ("type", "basic")))] == 1
    assert sum(v for (name, labels), v in samples.items()
               if name == "lb_listener_requests_total" and ("listener", "h2") in labels) == 9
