"""The benchmark harness runs on this machine as the README says: it finds its
tools, starts lb, HAProxy and nginx beside each other and reports ratios.
A short run: this checks the harness and its wiring, not the figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str, duration: str = "1s") -> dict:
    """The JSON of a short run (1 s per target, no warm-up, 8 connections)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--duration", duration, "--warmup", "0s",
         "--connections", "8", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_bench_runs_all_three_and_reports_ratios():
    doc = run_bench("tcp_small", "tcp_1mib", "--no-direct")
    for name in ("tcp_small", "tcp_1mib"):
        scenario = doc["scenarios"][name]
        for proxy in ("lb", "haproxy", "nginx"):
            result = scenario["results"][proxy]
            assert result["ok"], (name, proxy, result)
            assert result["req_s"] > 0 and not result["errors"], (name, proxy, result)
        assert set(scenario["ratios"]) == {"lb/haproxy", "lb/nginx"}
        assert scenario["ratios"]["lb/haproxy"]["req_s"] > 0
    assert doc["scenarios"]["tcp_1mib"]["results"]["lb"]["gbps"] > 0


def test_bench_tcp_small_sockmap_reports_the_whole_machines_cpu():
    """lb with forward = "sockmap" beside the other two: its own tree's CPU,
    and the CPU per request of everything the requests run through (the
    kernel's threads included, where a sockmap's sends run)."""
    doc = run_bench("tcp_small_sockmap", "--no-direct")
    scenario = doc["scenarios"]["tcp_small_sockmap"]
    for proxy in ("lb", "haproxy", "nginx"):
        result = scenario["results"][proxy]
        assert result["ok"] and result["req_s"] > 0 and not result["errors"], (proxy, result)
        # (lb's own may round to 0 in a 1 s run: CPU time comes in 10 ms ticks)
        assert result["total_us_req"] > result["cpu_us_req"] >= 0, (proxy, result)
        assert result["host_us_req"] > 0, (proxy, result)
    assert scenario["ratios"]["lb/haproxy"]["total_us_req"] > 0


def _netns_and_links() -> tuple[str, set[str]]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return ns, {p.name for p in Path("/sys/class/net").iterdir()}


def test_bench_hosts_topology_takes_the_receive_path_off_the_senders_bill():
    """tcp_small_hosts and http_small_hosts: wrk, the proxies and an origin in
    three network namespaces joined by veth pairs with threaded NAPI. Every
    proxy's responses arrive, the receive work runs in the NAPI threads (the
    kernel threads' CPU, all but nothing on loopback) and total us/req counts
    it; after the run the namespaces and links are gone."""
    before = _netns_and_links()
    doc = run_bench("tcp_small_hosts", "http_small_hosts")
    for name in ("tcp_small_hosts", "http_small_hosts"):
        scenario = doc["scenarios"][name]
        assert set(scenario["results"]) == {"haproxy", "nginx", "lb"}, name
        for proxy, result in scenario["results"].items():
            assert result["ok"] and result["req_s"] > 0 and not result["errors"], (name, proxy, result)
            assert result["kthreads_cpu_pct"] > 5, (name, proxy, result)
            assert result["total_us_req"] > result["cpu_us_req"] > 0, (name, proxy, result)
        assert scenario["ratios"]["lb/nginx"]["total_us_req"] > 0
    assert _netns_and_links() == before


def test_hosts_topology_keeps_off_the_machines_own_networks(tmp_path):
    """The links' /24s overlap no address or route of the machine: a
    candidate the machine uses is skipped."""
    from bench import hosts

    fake_ip = tmp_path / "ip"
    fake_ip.write_text("#!/bin/sh\n"
                       'case "$*" in *addr*) echo "2: eth0    inet 10.250.1.7/24 brd 10.250.1.255 scope global eth0";;\n'
                       '*route*) echo "default via 10.250.1.1 dev eth0"; echo "172.30.0.0/16 dev eth1";; esac\n')
    fake_ip.chmod(0o755)
    assert [str(n) for n in hosts.free_nets(str(fake_ip), 2)] == ["10.250.2.0/24", "192.168.250.0/24"]


@pytest.fixture(scope="module")
def two_rounds() -> dict:
    """tcp_small, two rounds, every target, and this checkout again as the
    --baseline (lb-base): one short run for the tests below."""
    return run_bench("tcp_small", "--repeat", "2", "--baseline", str(ROOT))


def test_bench_reports_cpu_per_request_of_each_proxy(two_rounds):
    """cpu_us_req: the CPU of the proxy's process tree per request, with
    medians and a per-round spread like every ratio metric; direct has none."""
    scenario = two_rounds["scenarios"]["tcp_small"]
    for proxy in ("lb", "haproxy", "nginx", "lb-base"):
        assert scenario["results"][proxy]["cpu_us_req"] > 0, (proxy, scenario["results"][proxy])
        for rd in scenario["rounds"]:
            assert rd["results"][proxy]["cpu_us_req"] > 0, (proxy, rd)
    assert scenario["results"]["direct"]["cpu_us_req"] is None
    for key in ("lb/haproxy", "lb/nginx"):
        assert scenario["ratios"][key]["cpu_us_req"] > 0
        assert scenario["ratio_spread"][key]["cpu_us_req"]["n"] == 2
    assert "cpu_us_req" not in scenario["ratios"]["lb/direct"]


def test_bench_splits_cpu_per_request_into_kernel_and_switches(two_rounds):
    """sys_us_req is the kernel's part of cpu_us_req (a part of it, never
    more) and ctxsw_req the proxy tree's context switches per request: every
    proxy sleeps in epoll_wait at some point of a run; direct has neither."""
    scenario = two_rounds["scenarios"]["tcp_small"]
    for rd in scenario["rounds"]:
        for proxy in ("lb", "haproxy", "nginx", "lb-base"):
            res = rd["results"][proxy]
            assert 0 < res["sys_us_req"] <= res["cpu_us_req"], (proxy, res)
            assert res["ctxsw_req"] > 0, (proxy, res)
        assert rd["results"]["direct"]["sys_us_req"] is None
        assert rd["results"]["direct"]["ctxsw_req"] is None


def test_bench_baseline_runs_another_checkout_as_lb_base(two_rounds):
    meta, scenario = two_rounds["meta"], two_rounds["scenarios"]["tcp_small"]
    assert meta["baseline"]["dir"] == str(ROOT) and meta["versions"]["lb-base"]
    assert meta["targets"] == ["direct", "haproxy", "nginx", "lb", "lb-base"]
    assert scenario["results"]["lb-base"]["ok"], scenario["results"]["lb-base"]
    # It takes its turn in the rotated order like every other target.
    assert [rd["order"] for rd in scenario["rounds"]] == [
        ["direct", "haproxy", "nginx", "lb", "lb-base"], ["haproxy", "nginx", "lb", "lb-base", "direct"]]
    assert set(scenario["ratios"]["lb/lb-base"]) == {"cpu_us_req", "req_s", "p99_ms"}
    assert scenario["ratio_spread"]["lb/lb-base"]["req_s"]["n"] == 2


@pytest.mark.parametrize("files, message", [
    ((), "has no lb/__init__.py"),
    (("lb/__init__.py", "lb/_fastpath.pyx"), "has no compiled lb/_fastpath"),
])
def test_bench_baseline_must_be_a_built_checkout(tmp_path, files, message):
    for name in files:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    out = subprocess.run([sys.executable, "-m", "bench", "tcp_small", "--baseline", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_cpu_per_request_leads_every_wrk_scenario():
    """cpu us/req comes first everywhere; it is a target only where the TLS
    issue, issue 19 or issue 15 sets one (https_small, https_connrate, h2_small, h2_backend,
    cache_hit), never in tcp_* or http_*."""
    from bench import harness

    for scenario in harness.load_scenarios().values():
        if scenario.KIND in harness.LOAD_KINDS:
            assert scenario.METRICS[0] is harness.CPU_US_REQ_METRIC, scenario.NAME
            if "cpu_us_req" in getattr(scenario, "GOALS", {}):
                assert (harness.scenario_mode(scenario) in ("https", "h2", "h2b")
                        or scenario.NAME == "cache_hit"), scenario.NAME


# --------------------------------------------------------------------------
# http_* scenarios: lb, HAProxy `mode http` and nginx `proxy_pass` as reverse proxies.

HTTP_SCENARIOS = ("http_small", "http_1mib", "http_connrate")

LB_HTTP_CONFIG = """\
[global]
workers = 1

[listeners.bench]
bind = ["127.0.0.1:1"]
mode = "http"
pool = "origin"

[pools.origin]
keepalive_max_idle = 64

  [[pools.origin.backends]]
  address = "127.0.0.1:2"
"""


def lb_http_refusal(tmp_path) -> str | None:
    """None when `lb run` would accept the bench's http listener, else its error
    (until the http engine lands, `lb run` refuses mode = "http")."""
    conf = tmp_path / "lb-http.toml"
    conf.write_text(LB_HTTP_CONFIG)
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from lb.cli.run import load_runnable; load_runnable(sys.argv[1])",
         str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if out.returncode == 0:
        return None
    assert out.returncode == 2, f"lb.cli.run.load_runnable changed? {out.stderr[-2000:]}"
    return out.stderr.strip()


def run_http_bench(only: str) -> dict:
    return run_bench(*HTTP_SCENARIOS, "--no-direct", "--only", only)


def check_http_results(doc: dict, proxies: tuple[str, ...]) -> None:
    for name in HTTP_SCENARIOS:
        scenario = doc["scenarios"][name]
        assert scenario["mode"] == "http"
        for proxy in proxies:
            result = scenario["results"][proxy]
            assert result["ok"], (name, proxy, result)
            assert result["req_s"] > 0 and not result["errors"], (name, proxy, result)
            # Keep-alive to the origin is in use: far fewer origin connections
            # than requests, even when every client connection carries one request.
            assert 0 <= result["origin_conns"] < result["requests"] / 10, (name, proxy, result)
        assert set(scenario["best_of"]) >= {"req_s", "p99_ms"}
        assert set(scenario["best_of"].values()) <= {"haproxy", "nginx"}
    assert doc["scenarios"]["http_1mib"]["best_of"]["gbps"] in ("haproxy", "nginx")


def test_bench_http_scenarios_run_haproxy_and_nginx():
    doc = run_http_bench("haproxy,nginx")
    check_http_results(doc, ("haproxy", "nginx"))
    for name in HTTP_SCENARIOS:
        assert doc["scenarios"][name]["ratios"] == {}
    goals = doc["scenarios"]["http_small"]["goals"]
    assert set(goals) == {"req_s", "p99_ms"} and goals["req_s"]["met"] is None


def test_bench_http_scenarios_run_lb_against_the_better_of_the_two(tmp_path):
    refusal = lb_http_refusal(tmp_path)
    if refusal:
        pytest.skip(f"lb run refuses the bench's http listener: {refusal}")
    doc = run_http_bench("lb,haproxy,nginx")
    check_http_results(doc, ("lb", "haproxy", "nginx"))
    for name in HTTP_SCENARIOS:
        assert set(doc["scenarios"][name]["ratios"]) == {"lb/haproxy", "lb/nginx", "lb/best"}
    goals = doc["scenarios"]["http_small"]["goals"]
    assert goals["req_s"]["ratio"] > 0 and goals["req_s"]["met"] in (True, False)
    assert doc["scenarios"]["http_1mib"]["goals"]["gbps"]["ratio"] > 0


def test_lb_best_is_the_better_anchor_per_figure():
    """lb/best and the targets, on made-up figures: no process is started."""
    from bench import harness

    class Scenario:
        METRICS = (harness.REQ_S_METRIC, harness.GBPS_METRIC, harness.P99_METRIC)
        GOALS = {"req_s": 1.0, "p99_ms": 1.0}

    results = {
        "haproxy": {"ok": True, "req_s": 100.0, "gbps": 1.0, "p99_ms": 2.0},
        "nginx": {"ok": True, "req_s": 80.0, "gbps": 2.0, "p99_ms": 1.0},
        "lb": {"ok": True, "req_s": 110.0, "gbps": 1.5, "p99_ms": 1.5},
    }
    assert harness.best_of(results, Scenario.METRICS) == {"req_s": "haproxy", "gbps": "nginx", "p99_ms": "nginx"}
    rat = harness.ratios(results, Scenario.METRICS, best=True)
    assert rat["lb/best"] == {"req_s": 1.1, "gbps": 0.75, "p99_ms": 1.5}
    assert "lb/best" not in harness.ratios(results, Scenario.METRICS)
    goals = harness.goal_report(Scenario, results, rat)
    assert goals["req_s"]["met"] is True and goals["req_s"]["vs"] == "haproxy"
    assert goals["p99_ms"]["met"] is False and goals["p99_ms"]["vs"] == "nginx"
    spread = {"lb/best": {"req_s": {"min": 0.9, "max": 1.2, "n": 3}}}
    assert harness.goal_report(Scenario, results, rat, spread)["req_s"]["rounds_disagree"] is True
    table = harness.format_table("x", type("S", (Scenario,), {"SUMMARY": "s"}), "h", results, rat)
    assert "req/s        lb/best = 1.10x (vs haproxy), target >= 1.00x: met" in table
    assert "p99 ms       lb/best = 1.50x (vs nginx), target <= 1.00x: NOT met" in table
    # One anchor missing: no "best", no lb/best.
    del results["nginx"]
    assert harness.best_of(results, Scenario.METRICS) == {}
    assert "lb/best" not in harness.ratios(results, Scenario.METRICS, best=True)


# --------------------------------------------------------------------------
# https_* scenarios: each proxy terminates TLS with the run's certificate.

HTTPS_SCENARIOS = ("https_small", "https_1mib", "https_connrate", "https_resume", "https_idle_mem")


@pytest.fixture(scope="module")
def https_run() -> dict:
    return run_bench(*HTTPS_SCENARIOS, "--idle-conns", "200")


def test_bench_https_scenarios_run_all_three(https_run):
    """Every proxy served every scenario over TLS (the readiness probe checks
    the run's chain against its root, so each sends the same certificate),
    with lb/best and the TLS issue's targets."""
    assert https_run["meta"]["targets"] == ["direct", "haproxy", "nginx", "lb"]
    for name in HTTPS_SCENARIOS:
        scenario = https_run["scenarios"][name]
        assert scenario["mode"] == "https"
        assert set(scenario["results"]) == {"haproxy", "nginx", "lb"}, name   # no direct: the origin is plain
        for proxy, result in scenario["results"].items():
            assert result["ok"], (name, proxy, result)
            if name != "https_idle_mem":
                assert result["req_s"] > 0 and not result["errors"], (name, proxy, result)
                assert result["cpu_us_req"] > 0, (name, proxy, result)
        assert set(scenario["ratios"]) == {"lb/haproxy", "lb/nginx", "lb/best"}, name
    goals = {name: https_run["scenarios"][name]["goals"] for name in HTTPS_SCENARIOS}
    assert set(goals["https_small"]) == {"cpu_us_req", "req_s"}
    assert goals["https_small"]["cpu_us_req"]["target"] == 0.85
    assert set(goals["https_connrate"]) == {"cpu_us_req"}
    assert goals["https_connrate"]["cpu_us_req"]["met"] in (True, False)
    assert goals["https_1mib"] == {} and goals["https_resume"] == {}
    assert https_run["scenarios"]["https_1mib"]["results"]["lb"]["gbps"] > 0


def test_bench_https_counts_the_handshakes_each_scenario_measures(https_run):
    """From lb's and HAProxy's own counters (nginx keeps none): keep-alive
    runs make one handshake per wrk connection; https_connrate's are all
    full (wrk runs with fresh_tls_session.c), https_resume's resumed."""
    scenarios = https_run["scenarios"]
    assert scenarios["https_small"]["results"]["nginx"]["tls_handshakes"] is None
    for proxy in ("lb", "haproxy"):
        small = scenarios["https_small"]["results"][proxy]
        assert small["tls_handshakes"] == 8 and small["tls_resumed_pct"] == 0, small
        full = scenarios["https_connrate"]["results"][proxy]
        assert full["tls_handshakes"] >= full["requests"] and full["tls_resumed_pct"] == 0, full
        resumed = scenarios["https_resume"]["results"][proxy]
        assert resumed["tls_handshakes"] >= resumed["requests"] and resumed["tls_resumed_pct"] > 0, resumed
    # HAProxy sends a new ticket with every resumed handshake: all but wrk's
    # first 8 connections resume.
    assert scenarios["https_resume"]["results"]["haproxy"]["tls_resumed_pct"] > 90


def test_bench_https_idle_mem_holds_every_tls_connection(https_run):
    scenario = https_run["scenarios"]["https_idle_mem"]
    for proxy, result in scenario["results"].items():
        # One fd per client connection (no origin connection per client in http mode).
        assert result["conns"] == 200 and result["worker_fds_added"] >= 200, (proxy, result)
        # USS is the figure: RSS may stay flat when the connections' memory lands
        # in heap pages the worker inherited from the supervisor at fork (they
        # turn private, which USS counts and RSS counted already)
        assert result["uss_per_conn"] > 0 and result["rss_per_conn"] >= 0, (proxy, result)
    goal = scenario["goals"]["uss_per_conn"]
    assert goal["absolute"] and goal["target"] == 6 * 1024 and goal["ratio"] is None
    assert goal["value"] == scenario["results"]["lb"]["uss_per_conn"]
    assert goal["met"] == (goal["value"] <= 6 * 1024)


def test_absolute_goal_is_on_lbs_own_figure():
    """An Absolute goal, on made-up figures: lb's value against a fixed bound,
    whatever the anchors did."""
    from types import SimpleNamespace

    from bench import harness

    scenario = SimpleNamespace(SUMMARY="s", METRICS=(harness.Metric("uss_per_conn", "uss B/conn", ",.0f", "lower"),),
                               GOALS={"uss_per_conn": harness.Absolute(6144)})

    results = {"haproxy": {"ok": True, "uss_per_conn": 13000.0},
               "nginx": {"ok": True, "uss_per_conn": 12000.0},
               "lb": {"ok": True, "uss_per_conn": 7000.0}}
    rat = harness.ratios(results, scenario.METRICS, best=True)
    goal = harness.goal_report(scenario, results, rat)["uss_per_conn"]
    assert goal["met"] is False and goal["value"] == 7000.0 and goal["vs"] is None
    table = harness.format_table("x", scenario, "h", results, rat)
    assert "uss B/conn   lb = 7,000, target <= 6,144: NOT met" in table
    results["lb"]["uss_per_conn"] = 5000.0
    assert harness.goal_report(scenario, results, rat)["uss_per_conn"]["met"] is True


# --------------------------------------------------------------------------
# h2_small: h2load, HTTP/2 over TLS, against each proxy.

H2LOAD_OUTPUT = """\
starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 10s of main duration for measurements.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 10.00s, 21000.50 req/s, 2.93MB/s
requests: 210005 total, 210517 started, 210005 done, 209990 succeeded, 15 failed, 15 errored, 0 timeout
status codes: 209990 2xx, 0 3xx, 0 4xx, 3 5xx
traffic: 29.30MB (30720000) total, 1.20MB (1258291) headers (space savings 93.33%), 19.63MB (20582000) data
                     min         max         mean         sd        +/- sd
time for request:      612us     45.12ms     24.21ms      4.01ms    71.20%
time for connect:     1.19ms      3.70ms      2.48ms       793us    62.50%
time to 1st byte:     4.51ms      6.91ms      5.73ms       805us    56.25%
req/s           :    1300.01     1325.90     1312.53        7.90    62.50%
"""


def test_h2load_output_and_log_file_are_parsed(tmp_path):
    """req/s and cpu/req count succeeded requests only; failures and non-2xx
    are errors; p99 is the nearest rank of the log's durations, failed
    streams (status -1) left out."""
    from bench import harness

    out = harness.parse_h2load(H2LOAD_OUTPUT)
    assert out["requests"] == 209990 and out["req_s"] == pytest.approx(20999.0)
    assert out["protocol"] == "h2" and out["avg_ms"] == pytest.approx(24.21)
    assert out["bytes_s"] == pytest.approx(2.93 * (1 << 20))
    assert out["errors"] == {"failed": 15, "errored": 15, "non_2xx": 3}
    with pytest.raises(harness.BenchError):
        harness.parse_h2load("h2load: connection refused\n")

    log = tmp_path / "h2load.log"
    rows = [f"{1764900000000000 + i}\t200\t{(i + 1) * 1000}\n" for i in range(200)]
    log.write_text("".join(rows[::-1]) + "1764900000000000\t-1\t999999999\n")
    assert harness.h2load_p99_ms(log) == 198.0      # rank ceil(0.99 * 200) = 198 of 1..200 ms
    log.write_text("1764900000000000\t-1\t5\n")
    assert harness.h2load_p99_ms(log) is None


def test_bench_h2_small_runs_all_three_over_http2():
    """Each proxy answered h2load over HTTP/2 (run_h2load refuses any other
    protocol) without an error, one handshake per h2load connection, with
    issue 19's targets on lb/best."""
    doc = run_bench("h2_small")
    scenario = doc["scenarios"]["h2_small"]
    assert scenario["mode"] == "h2"
    assert set(scenario["results"]) == {"haproxy", "nginx", "lb"}     # no direct: the origin is plain
    for proxy, result in scenario["results"].items():
        assert result["ok"], (proxy, result)
        assert result["req_s"] > 0 and result["cpu_us_req"] > 0 and not result["errors"], (proxy, result)
        assert result["p99_ms"] > 0, (proxy, result)
    for proxy in ("lb", "haproxy"):
        assert scenario["results"][proxy]["tls_handshakes"] == 16, scenario["results"][proxy]
    assert set(scenario["goals"]) == {"cpu_us_req", "req_s"}
    assert scenario["goals"]["cpu_us_req"]["target"] == 0.85


def test_bench_h2_backend_speaks_http2_to_the_origin_too():
    """h2_backend: each proxy answers h2load over HTTP/2 without an error while
    sending on in HTTP/2 (the origin's h2c port is the only one its config
    names)."""
    doc = run_bench("h2_backend")
    scenario = doc["scenarios"]["h2_backend"]
    assert scenario["mode"] == "h2b"
    assert set(scenario["results"]) == {"haproxy", "nginx", "lb"}
    for proxy, result in scenario["results"].items():
        assert result["ok"], (proxy, result)
        assert result["req_s"] > 0 and result["cpu_us_req"] > 0 and not result["errors"], (proxy, result)
