"""bench cache_hit (bench/README.md): lb's cache beside nginx proxy_cache and
Varnish in one run, lb/best against the better of those two. A short run
checks the wiring (each proxy answers every request from its cache), not
the figures."""

from test_bench import run_bench


def test_lb_best_of_a_cache_scenario_is_nginx_or_varnish():
    """On made-up figures, no process started: the scenario's BEST_OF picks
    the anchors, HAProxy is no anchor even when it has figures."""
    from bench import harness
    from bench.scenarios import cache_hit

    results = {
        "haproxy": {"ok": True, "cpu_us_req": 1.0, "req_s": 900.0},
        "nginx": {"ok": True, "cpu_us_req": 15.0, "req_s": 300.0, "cpu_us_req_100k": 40.0, "req_s_100k": 90.0},
        "varnish": {"ok": True, "cpu_us_req": 20.0, "req_s": 250.0, "cpu_us_req_100k": 30.0, "req_s_100k": 100.0},
        "lb": {"ok": True, "cpu_us_req": 6.0, "req_s": 330.0, "cpu_us_req_100k": 27.0, "req_s_100k": 95.0},
    }
    among = harness.scenario_best_of(cache_hit)
    assert among == ("nginx", "varnish")
    best = harness.best_of(results, cache_hit.METRICS, among)
    assert best == {"cpu_us_req": "nginx", "req_s": "nginx", "cpu_us_req_100k": "varnish", "req_s_100k": "varnish"}
    rat = harness.ratios(results, cache_hit.METRICS, True, among)
    assert rat["lb/best"] == {"cpu_us_req": 0.4, "req_s": 1.1, "cpu_us_req_100k": 0.9, "req_s_100k": 0.95}
    assert rat["lb/varnish"]["cpu_us_req"] == 0.3
    goals = harness.goal_report(cache_hit, results, rat)
    assert {k: (g["vs"], g["met"]) for k, g in goals.items()} == {
        "cpu_us_req": ("nginx", True), "req_s": ("nginx", True),
        "cpu_us_req_100k": ("varnish", False), "req_s_100k": ("varnish", False)}
    table = harness.format_table("cache_hit", cache_hit, "h", results, rat)
    assert "best of nginx and varnish:" in table
    assert "100k us/req  lb/best = 0.90x (vs varnish), target <= 0.85x: NOT met" in table
    # the scenarios without BEST_OF keep HAProxy and nginx
    assert harness.best_of(results, cache_hit.METRICS[:2]) == {"cpu_us_req": "haproxy", "req_s": "haproxy"}


def test_bench_cache_hit_runs_lb_nginx_and_varnish():
    doc = run_bench("cache_hit", "--no-direct")
    assert doc["meta"]["versions"]["varnish"].startswith("varnishd")
    scenario = doc["scenarios"]["cache_hit"]
    assert list(scenario["results"]) == ["nginx", "varnish", "lb"]     # no HAProxy: its cache is not in the race
    for proxy, result in scenario["results"].items():
        assert result["ok"], (proxy, result)
        assert result["req_s"] > 0 and result["req_s_100k"] > 0 and not result["errors"], (proxy, result)
        # the origin saw no request while wrk ran: every one was a hit
        assert result["origin_conns"] == 0, (proxy, result)
    for proxy in ("varnish", "lb"):
        assert scenario["results"][proxy]["hit_pct"] > 99.0, proxy     # the fills and the readiness probe missed
    assert set(scenario["ratios"]) == {"lb/nginx", "lb/varnish", "lb/best"}
    assert set(scenario["best_of"].values()) <= {"nginx", "varnish"}
    assert set(scenario["goals"]) == {"cpu_us_req", "req_s", "cpu_us_req_100k", "req_s_100k"}
    assert all(g["met"] in (True, False) for g in scenario["goals"].values())


def test_bench_cache_churn_keeps_the_cache_within_its_size():
    result = run_bench("cache_churn", "--no-direct", duration="2s")["scenarios"]["cache_churn"]["results"]["lb"]
    assert result["ok"] and not result["errors"], result
    # random keys: stored and evicted all along, never above the region's size
    assert result["evicted"] > 100 and 0 < result["max_used_pct"] <= 100.0, result
    assert result["rss_mib"] > 0 and result["rss_growth_pct"] is not None, result
