"""The metrics endpoint ([global.metrics], docs/observability.md) end to end:
a real `lb run`, real clients and origins on loopback, the scrape read with
prometheus_client's parser and checked by Debian's promtool. Counts are
exact: after N requests a counter says N, across a worker kill -9 and an
lb reload too."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from conftest import free_port, global_toml, wait_for
from http_origin import Origin
from lb import config
from lb.config import ConfigError


# ---- set-up ----------------------------------------------------------------------------

def metrics_config(port: int, mport: int, pools: dict, *, workers: int = 1, routes: str = "",
                   tcp_port: int | None = None, extra: str = "", metrics_extra: str = "") -> str:
    """An http listener "web" on port (default pool "p", routes as given), the
    metrics endpoint on mport; pools: name -> [Origin]. tcp_port: a tcp
    listener "raw" to pool "p" as well."""
    text = global_toml(workers) + f'\n[global.metrics]\nbind = "127.0.0.1:{mport}"\n{metrics_extra}\n' + textwrap.dedent(f"""
        [listeners.web]
        bind = ["127.0.0.1:{port}"]
        mode = "http"
        pool = "p"
        """) + textwrap.dedent(routes) + "\n"
    if tcp_port:
        text += f'[listeners.raw]\nbind = ["127.0.0.1:{tcp_port}"]\nmode = "tcp"\npool = "p"\n\n'
    for pool, members in pools.items():
        text += f'[pools.{pool}]\nconnect_timeout = "1s"\n[pools.{pool}.health]\ntype = "none"\n\n'
        for o in members:
            text += f'[[pools.{pool}.backends]]\naddress = "{o.address}"\nname = "{o.name}"\n\n'
    return text + extra


def get(port: int, path: str, accept: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def scrape(port: int) -> dict:
    """{family name: [(sample name, labels, value)]}, as prometheus_client reads it."""
    status, headers, body = get(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict = {}
    for fam in parse_text(body.decode()):
        out[fam.name] = [(s.name, s.labels, s.value) for s in fam.samples]
    return out


def value(fams: dict, sample: str, **labels) -> float:
    """The sum of a sample over the series whose labels include `labels`."""
    family = sample
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if family.endswith(suffix) and family[: -len(suffix)] in fams:
            family = family[: -len(suffix)]
            break
    return sum(v for name, lab, v in fams.get(family, []) if name == sample
               and all(lab.get(k) == str(x) for k, x in labels.items()))


def requests(port: int, paths: list[str]) -> list[int]:
    """One request per path over one keep-alive connection; the statuses."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    try:
        for path in paths:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
    finally:
        conn.close()
    return statuses


@pytest.fixture
def origin():
    started = []

    def start(name: str):
        o = Origin(name)
        started.append(o)
        return o

    yield start
    for o in started:
        o.stop()


# ---- config ------------------------------------------------------------------------------

def test_metrics_bind_is_checked_by_key():
    base = '[pools.p]\nbackends = [{address = "127.0.0.1:1"}]\n[listeners.w]\nbind = ["127.0.0.1:1"]\npool = "p"\n'
    cfg = config.loads('[global.metrics]\nbind = "127.0.0.1:9100"\n' + base)
    assert str(cfg.global_.metrics_bind) == "127.0.0.1:9100"
    assert config.loads(base).global_.metrics_bind is None
    with pytest.raises(ConfigError, match=r"^global\.metrics\.bind: port out of range"):
        config.loads('[global.metrics]\nbind = "127.0.0.1:0"\n' + base)
    with pytest.raises(ConfigError, match=r"^global\.metrics\.listen: unknown key"):
        config.loads('[global.metrics]\nlisten = "127.0.0.1:9100"\n' + base)
    assert cfg.global_.metrics_backend_histograms == ("response",)
    with pytest.raises(ConfigError, match=r"^global\.metrics\.backend_histograms\[1\]: 'ttfb' is not one of"):
        config.loads('[global.metrics]\nbackend_histograms = ["connect", "ttfb"]\n' + base)


# ---- the scrape --------------------------------------------------------------------------

def test_counts_by_backend_route_and_code_and_promtool_accepts(run_lb, origin, tmp_path):
    a, b = origin("a"), origin("b")
    port, mport, tport = free_port(), free_port(), free_port()
    routes = """
        [[listeners.web.routes]]
        name = "api"
        path_prefix = "/api/"
        pool = "api"
        """
    lb = run_lb(metrics_config(port, mport, {"p": [a], "api": [b]}, routes=routes, tcp_port=tport,
                               metrics_extra='backend_histograms = ["response", "connect", "first_byte"]'))
    assert requests(port, ["/x"] * 7 + ["/status/404"] * 2 + ["/api/x"] * 5 + ["/status/503"]) == \
        [200] * 7 + [404] * 2 + [200] * 5 + [503]
    with socket.create_connection(("127.0.0.1", tport), timeout=5) as s:
        s.sendall(b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass

    def counted():
        fams = scrape(mport)
        return fams if value(fams, "lb_listener_requests_total", listener="raw") == 1 else None

    fams = wait_for(counted, 10, "the tcp connection counted")
    # http: 7 x 200, 2 x 404, 1 x 503 from origin a; 5 x 200 from b; the tcp connection is "other"
    assert value(fams, "lb_backend_requests_total", pool="p", backend="a", code="2xx") == 7
    assert value(fams, "lb_backend_requests_total", pool="p", backend="a", code="4xx") == 2
    assert value(fams, "lb_backend_requests_total", pool="p", backend="a", code="5xx") == 1
    assert value(fams, "lb_backend_requests_total", pool="p", backend="a", code="other") == 1
    assert value(fams, "lb_backend_requests_total", pool="api", backend="b") == 5
    assert value(fams, "lb_backend_requests_total", pool="api", backend="b", code="2xx") == 5
    assert value(fams, "lb_route_requests_total", listener="web", route="api") == 5
    assert value(fams, "lb_listener_requests_total", listener="web") == 15
    assert value(fams, "lb_pool_requests_total", pool="p") == 11
    # the contract histogram: every exchange observed once, in cumulative buckets
    assert value(fams, "lb_backend_response_duration_seconds_count", pool="p", backend="a") == 11
    assert value(fams, "lb_backend_response_duration_seconds_bucket", pool="p", backend="a", le="+Inf") == 11
    assert value(fams, "lb_backend_connect_duration_seconds_count", pool="api", backend="b") == 5
    assert value(fams, "lb_backend_first_byte_duration_seconds_count", pool="api", backend="b") == 5
    buckets = [(float(lab["le"]), v) for name, lab, v in fams["lb_backend_response_duration_seconds"]
               if name.endswith("_bucket") and lab["backend"] == "a"]
    assert [v for _, v in sorted(buckets)] == sorted(v for _, v in buckets)  # cumulative
    assert value(fams, "lb_backend_up", pool="p", backend="a") == 1
    assert value(fams, "lb_backend_admin_state", pool="p", backend="a", state="ready") == 1
    assert value(fams, "lb_listener_terminations_total", listener="web", reason="ok") == 15
    assert value(fams, "lb_listener_sent_bytes_total", listener="web") > 0

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test-deps` installs Debian's prometheus"
    _, _, body = get(mport, "/metrics")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    # promtool prints lint notes (e.g. counters without _total) on stdout and
    # exits 1 on errors and lint problems alike; no note at all is the bar
    assert check.returncode == 0, (check.stdout + check.stderr).decode()[:4000]


def test_openmetrics_when_asked_and_backends_keep_one_histogram_by_default(run_lb, origin):
    a = origin("a")
    port, mport = free_port(), free_port()
    run_lb(metrics_config(port, mport, {"p": [a]}))
    assert requests(port, ["/x"] * 3) == [200] * 3

    def recorded():
        # an exchange is recorded when it ends, which may be just after its
        # client has read the response
        fams = scrape(mport)
        return fams if value(fams, "lb_backend_response_duration_seconds_count", pool="p", backend="a") == 3 else None
    fams = wait_for(recorded, 5, "the three responses in the histogram")
    assert "lb_backend_connect_duration_seconds" not in fams
    assert value(fams, "lb_pool_connect_duration_seconds_count", pool="p") == 3
    assert value(fams, "lb_listener_first_byte_duration_seconds_count", listener="web") == 3
    status, headers, body = get(mport, "/metrics", accept="application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in parse_openmetrics(text)}
    samples = [s for s in fams["lb_backend_requests"].samples if s.name == "lb_backend_requests_total"]
    assert sum(s.value for s in samples if s.labels["backend"] == "a") == 3
    assert fams["lb_backend_requests"].type == "counter"
    assert fams["lb_backend_response_duration_seconds"].type == "histogram"


def test_other_paths_and_methods(run_lb, origin):
    a = origin("a")
    port, mport = free_port(), free_port()
    run_lb(metrics_config(port, mport, {"p": [a]}))
    assert get(mport, "/nothing")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", mport, timeout=10)
    conn.request("POST", "/metrics", body=b"x")
    r = conn.getresponse()
    assert r.status == 405 and r.getheader("Allow") == "GET, HEAD"
    conn.close()


# ---- exact across a worker kill -9 and a reload ---------------------------------------

def test_counts_exact_across_worker_kill_and_reload(run_lb, origin):
    a = origin("a")
    port, mport = free_port(), free_port()
    lb = run_lb(metrics_config(port, mport, {"p": [a]}, workers=2))
    total = 0

    def batch(n: int):
        nonlocal total
        # one connection per request: both workers' accept queues get some
        for _ in range(n):
            assert requests(port, ["/x"]) == [200]
        total += n

    def backend_count(fams=None):
        fams = fams or scrape(mport)
        return value(fams, "lb_backend_requests_total", pool="p", backend="a")

    batch(20)
    assert backend_count() == total
    # kill -9 a worker that counted some of them: its replacement writes on in its row
    row = max(range(lb.n_workers), key=lambda r: lb.shm.worker_stats(r)["http_requests"])
    assert lb.shm.worker_stats(row)["http_requests"] > 0
    victim = lb.worker_pid(row)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: lb.worker_pid(row) not in (0, victim) and lb.all_workers_running(), 10, "the worker respawned")
    assert backend_count() == total
    batch(20)
    fams = scrape(mport)
    assert backend_count(fams) == total
    assert value(fams, "lb_listener_requests_total", listener="web") == total
    assert value(fams, "lb_backend_response_duration_seconds_count", pool="p", backend="a") == total

    # reload: the new generation's region carries every total by name
    reload = subprocess.run([sys.executable, "-m", "lb", "-c", str(lb.config_path), "reload"],
                            capture_output=True, text=True, timeout=30)
    assert reload.returncode == 0, reload.stderr
    fams = scrape(mport)
    assert value(fams, "lb_info", generation=2) == 1
    assert backend_count(fams) == total
    batch(20)
    assert backend_count() == total
    # once the old generation is gone, its counts stay (folded into the new one)
    old_shm = lb.shm_path
    wait_for(lambda: not os.path.exists(old_shm), 20, "the old generation to drain")
    fams = scrape(mport)
    assert backend_count(fams) == total
    assert value(fams, "lb_pool_requests_total", pool="p") == total
    assert value(fams, "lb_backend_response_duration_seconds_count", pool="p", backend="a") == total
    assert value(fams, "lb_backend_response_duration_seconds_bucket", pool="p", backend="a", le="+Inf") == total


# ---- the stats page, /stats.json, lb stats, lb top ----------------------------------------

def lb_cli(lb, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lb", "-c", str(lb.config_path), *args],
                          capture_output=True, text=True, timeout=30)


def test_stats_json_and_lb_stats(run_lb, origin):
    a, b = origin("a"), origin("b")
    port, mport = free_port(), free_port()
    lb = run_lb(metrics_config(port, mport, {"p": [a, b]}))
    assert requests(port, ["/x"] * 10 + ["/status/500"] * 2) == [200] * 10 + [500] * 2
    assert lb_cli(lb, "backend", "maint", "p", "b").returncode == 0
    status, headers, body = get(mport, "/stats.json")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    (web,) = doc["listeners"]
    assert (web["name"], web["requests"], web["5xx"]) == ("web", 12, 2)
    (pool,) = doc["pools"]
    by_name = {x["name"]: x for x in pool["backends"]}
    assert by_name["a"]["requests"] + by_name["b"]["requests"] == 12
    assert by_name["b"]["state"] == "maint" and by_name["a"]["state"] == "up"
    assert by_name["a"]["weight"] == 100
    # percentiles of the histogram: within the bucket bounds lb keeps (0 .. 10 s)
    assert 0 < web["p50_ms"] <= web["p99_ms"] <= 10_000

    result = lb_cli(lb, "stats", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["listeners"][0]["requests"] == 12
    result = lb_cli(lb, "stats")
    assert result.returncode == 0, result.stderr
    assert "P99" in result.stdout and any(line.split()[:2] == ["p", "b"] and "maint" in line
                                          for line in result.stdout.splitlines())
    top = lb_cli(lb, "top", "--iterations", "1")
    assert top.returncode == 0, top.stderr
    header = next(line for line in top.stdout.splitlines() if line.strip().startswith("BACKEND"))
    assert "P50" in header.split() and "P99" in header.split()


def test_stats_page_in_headless_chromium(run_lb, origin, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make test-deps` installs Debian's chromium"
    a, b, c = origin("a"), origin("b"), origin("c")
    port, mport = free_port(), free_port()
    lb = run_lb(metrics_config(port, mport, {"p": [a, b], "q": [c]}))
    assert requests(port, ["/x"] * 4) == [200] * 4
    assert lb_cli(lb, "backend", "drain", "p", "b").returncode == 0
    status, headers, page = get(mport, "/stats")
    assert status == 200 and headers["content-type"].startswith("text/html")
    # self-contained: nothing is fetched from elsewhere but /stats.json
    assert not re.search(rb"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert b"<link" not in page
    url = f"http://127.0.0.1:{mport}/stats"
    # as root chromium needs --no-sandbox; a phone-sized window
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=390,844",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, timeout=120)
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    html = dom.stdout.decode()
    states = dict(re.findall(r'data-backend="([^"$]+)" data-state="([^"]+)"', html))
    assert states == {"p/a": "up", "p/b": "drain", "q/c": "up"}, html[-3000:]
    for name, state in states.items():
        row = re.search(rf'data-backend="{re.escape(name)}".*?</tr>', html, re.S).group(0)
        assert f'class="state {state}">{state}</td>' in row
    assert 'data-listener="web"' in html
    shot = tmp_path / "stats.png"
    run = subprocess.run([chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (390, 844)


def test_top_clients_paths_and_statuses(run_lb, origin):
    a = origin("a")
    port, mport = free_port(), free_port()
    lb = run_lb(metrics_config(port, mport, {"p": [a]}, workers=2))
    # three client addresses (loopback has them all), paths with queries, and statuses
    plan = {"127.0.0.1": 9, "127.0.0.2": 5, "127.0.0.3": 2}
    for addr, n in plan.items():
        for i in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(addr, 0))
            conn.request("GET", f"/hot?i={i}" if i % 3 else "/status/404")
            conn.getresponse().read()
            conn.close()

    def top(by: str) -> dict:
        result = lb_cli(lb, "top", "--by", by, "--iterations", "1", "-n", "5")
        assert result.returncode == 0, result.stderr
        return result.stdout

    # the admin verb's answer, exact here: fewer keys than the sketch holds
    from lb import admin_client
    from lb.config import load

    sock = load(str(lb.config_path)).global_.admin_socket
    clients = admin_client.call(sock, "top", {"by": "client", "n": 5})
    assert [(i["key"], i["count"]) for i in clients["items"]] == list(plan.items())
    assert all(i["error"] == 0 for i in clients["items"])
    paths = admin_client.call(sock, "top", {"by": "path"})
    expect_404 = sum((n + 2) // 3 for n in plan.values())      # i % 3 == 0
    assert [(i["key"], i["count"]) for i in paths["items"]] == [("/hot", 16 - expect_404),
                                                               ("/status/404", expect_404)]
    statuses = admin_client.call(sock, "top", {"by": "status"})
    assert statuses["exact"] and {i["key"]: i["count"] for i in statuses["items"]} == {
        "200": 16 - expect_404, "404": expect_404}
    out = top("client")
    assert "127.0.0.1" in out and "ERROR" in out
    assert "/hot" in top("path")
    with pytest.raises(admin_client.AdminError):
        admin_client.call(sock, "top", {"by": "host"})


def test_top_paths_beyond_the_sketch_keep_the_heavy_ones_within_their_error(run_lb, origin):
    a = origin("a")
    port, mport = free_port(), free_port()
    lb = run_lb(metrics_config(port, mport, {"p": [a]}))
    # 300 paths seen once each (more than the 64 a sketch holds), interleaved
    # with two heavy ones: a Space-Saving sketch keeps both, each count
    # over the truth by at most its error
    paths = []
    for i in range(300):
        paths.append(f"/cold/{i}")
        if i % 3 == 0:
            paths.append("/heavy")
        if i % 5 == 0:
            paths.append("/warm")
    for k in range(0, len(paths), 100):
        assert set(requests(port, paths[k:k + 100])) == {200}
    from lb import admin_client
    from lb.config import load

    sock = load(str(lb.config_path)).global_.admin_socket
    items = {i["key"]: i for i in admin_client.call(sock, "top", {"by": "path", "n": 2})["items"]}
    assert set(items) == {"/heavy", "/warm"}
    for key, truth in (("/heavy", 100), ("/warm", 60)):
        assert items[key]["count"] - items[key]["error"] <= truth <= items[key]["count"]


def test_counts_exact_while_the_old_generation_drains(run_lb, origin):
    """What the old generation still serves after a reload counts at once
    (a scrape adds it while it drains) and stays counted when it is gone."""
    a = origin("a")
    port, mport = free_port(), free_port()
    lb = run_lb(metrics_config(port, mport, {"p": [a]}))
    assert requests(port, ["/x"] * 5) == [200] * 5
    size = 64 << 20

    def slow_download() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        return s  # the rest waits, unread: the exchange stays in flight on the old generation

    first, second = slow_download(), slow_download()
    reload = lb_cli(lb, "reload")
    assert reload.returncode == 0, reload.stderr

    def count():
        return value(scrape(mport), "lb_backend_requests_total", pool="p", backend="a")

    assert count() == 5
    assert requests(port, ["/x"] * 3) == [200] * 3   # the new generation's
    assert count() == 8

    def finish(s: socket.socket) -> None:
        got = 0
        s.settimeout(30)
        while chunk := s.recv(1 << 20):
            got += len(chunk)
            if got >= size:
                break
        s.close()

    finish(first)
    # ended on the old generation, which still drains (the second download)
    wait_for(lambda: count() == 9, 10, "the old generation's exchange counted")
    assert os.path.exists(lb.shm_path), "the old generation should still be draining"
    finish(second)
    wait_for(lambda: not os.path.exists(lb.shm_path), 20, "the old generation to be gone")
    assert count() == 10
    fams = scrape(mport)
    assert value(fams, "lb_listener_requests_total", listener="web") == 10
    assert value(fams, "lb_backend_response_duration_seconds_count", pool="p", backend="a") == 10


def test_reload_moves_the_endpoint_or_is_refused_when_it_cannot(run_lb, origin):
    a = origin("a")
    port, mport, mport2 = free_port(), free_port(), free_port()
    lb = run_lb(metrics_config(port, mport, {"p": [a]}))
    assert requests(port, ["/x"] * 2) == [200] * 2
    text = lb.config_path.read_text()
    # a port someone else holds: the reload is refused, the endpoint stays
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        lb.config_path.write_text(text.replace(f"127.0.0.1:{mport}", f"127.0.0.1:{taken.getsockname()[1]}"))
        result = lb_cli(lb, "reload")
        assert result.returncode != 0 and "metrics" in result.stderr, result.stderr
    assert value(scrape(mport), "lb_backend_requests_total", backend="a") == 2
    # a free one: the endpoint moves, the counts with it
    lb.config_path.write_text(text.replace(f"127.0.0.1:{mport}", f"127.0.0.1:{mport2}"))
    result = lb_cli(lb, "reload")
    assert result.returncode == 0, result.stderr
    assert value(scrape(mport2), "lb_backend_requests_total", backend="a") == 2
    with pytest.raises(OSError):
        get(mport, "/metrics")


def test_listener_active_connections_and_a_killed_workers_gauge(run_lb, origin):
    a = origin("a")
    port, mport, tport = free_port(), free_port(), free_port()
    lb = run_lb(metrics_config(port, mport, {"p": [a]}, tcp_port=tport))

    def active(listener: str) -> float:
        return value(scrape(mport), "lb_listener_active_connections", listener=listener)

    assert active("web") == 0 and active("raw") == 0
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    raw = socket.create_connection(("127.0.0.1", tport), timeout=5)
    wait_for(lambda: active("web") == 3 and active("raw") == 1, 10, "the connections counted")
    held.pop().close()
    wait_for(lambda: active("web") == 2, 10, "a closed connection no longer counted")
    # the worker dies with its connections: the gauge does not keep them
    victim = lb.worker_pid(0)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: lb.worker_pid(0) not in (0, victim) and lb.all_workers_running(), 10, "the worker respawned")
    assert active("web") == 0 and active("raw") == 0
    for s in held + [raw]:
        s.close()


def test_check_results_and_ejections_counted_and_carried_over_a_reload(run_lb, origin):
    a, b, c = origin("a"), origin("b"), origin("c")
    port, mport = free_port(), free_port()
    dead = f"127.0.0.1:{free_port()}"
    text = global_toml(2) + textwrap.dedent(f"""
        [global.metrics]
        bind = "127.0.0.1:{mport}"

        [listeners.web]
        bind = ["127.0.0.1:{port}"]
        mode = "http"
        pool = "p"

        [[listeners.web.routes]]
        path_prefix = "/q/"
        pool = "q"

        [pools.p]
        connect_timeout = "1s"
        [pools.p.health]
        type = "tcp"
        interval = "60s"
        [pools.p.passive]
        consecutive_failures = 2
        eject_time = "30s"
        [[pools.p.backends]]
        address = "{a.address}"
        name = "a"
        [[pools.p.backends]]
        address = "{b.address}"
        name = "b"

        [pools.q]
        [pools.q.health]
        type = "tcp"
        interval = "100ms"
        timeout = "500ms"
        [[pools.q.backends]]
        address = "{c.address}"
        name = "live"
        [[pools.q.backends]]
        address = "{dead}"
        name = "dead"
        """)
    lb = run_lb(text)
    fams = wait_for(lambda: (f := scrape(mport)) and value(f, "lb_backend_checks_total", pool="q", backend="dead",
                                                             result="failed") >= 3 and f, 10, "checks counted")
    assert value(fams, "lb_backend_checks_total", pool="q", backend="dead", result="passed") == 0
    assert value(fams, "lb_backend_checks_total", pool="q", backend="live", result="passed") >= 1
    assert value(fams, "lb_backend_checks_total", pool="q", backend="live", result="failed") == 0
    assert value(fams, "lb_backend_up", pool="q", backend="dead") == 0

    a.stop()  # its connects fail: two in a row eject it (retries serve the requests from b)

    def ejected() -> bool:
        if value(scrape(mport), "lb_backend_ejected", pool="p", backend="a") == 1:
            return True
        assert requests(port, ["/x"] * 4) == [200] * 4
        return False

    wait_for(ejected, 20, "a ejected")
    fams = scrape(mport)
    assert value(fams, "lb_backend_ejections_total", pool="p", backend="a") == 1
    assert value(fams, "lb_backend_ejections_total", pool="p", backend="b") == 0
    assert value(fams, "lb_backend_connection_errors_total", pool="p", backend="a", reason="refused") >= 2
    assert value(fams, "lb_pool_retries_total", pool="p") >= 1
    failed = value(fams, "lb_backend_checks_total", pool="q", backend="dead", result="failed")

    assert lb_cli(lb, "reload").returncode == 0
    fams = scrape(mport)
    assert value(fams, "lb_info", generation=2) == 1
    assert value(fams, "lb_backend_ejections_total", pool="p", backend="a") == 1
    assert value(fams, "lb_backend_checks_total", pool="q", backend="dead", result="failed") >= failed


def test_a_scrape_reads_no_page_nobody_wrote():
    """tmpfs allocates a page on a read too: summing the rows must not touch
    the backend slots a pool never used, nor the rows a caller leaves out."""
    from lb._fastpath import METRIC_WORDS, Shm, metrics_step_ns

    path = f"/dev/shm/lb-test-metrics-{os.getpid()}.shm"   # tmpfs, where lb keeps its regions
    shm = Shm.create(path, [("p", 8192, "roundrobin", 0, "", 0)], 5, os.getpid(), listener_routes=[0])
    try:
        size = dict((n, s) for n, _, s in shm.regions())["metrics"]
        assert size > 20 << 20
        shm.set_backend(0, 0, "127.0.0.1", 80, "a", 100)
        metrics_step_ns(shm, 0, 1000, 1)
        before = os.stat(path).st_blocks * 512
        totals = shm.metrics_totals([0, 4])
        assert os.stat(path).st_blocks * 512 - before < 64 << 10
        words = memoryview(totals).cast("Q")
        slot0 = (1 + 1) * METRIC_WORDS      # after the listener and the pool
        assert words[slot0] == 1000          # the used slot's requests are summed
        assert words[0] == 1000              # and the listener's
    finally:
        shm.unlink()
