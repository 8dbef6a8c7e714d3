"""The benchmark harness runs on this machine as the README says: it finds its
tools, starts lb, HAProxy and nginx beside each other and reports ratios.
A short run: this checks the harness and its wiring, not the figures."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_all_three_and_reports_ratios():
    out = subprocess.run(
        [sys.executable, "-m", "bench", "tcp_small", "tcp_1mib", "--duration", "1s", "--warmup", "0s",
         "--connections", "8", "--no-direct", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    for name in ("tcp_small", "tcp_1mib"):
        scenario = doc["scenarios"][name]
        for proxy in ("lb", "haproxy", "nginx"):
            result = scenario["results"][proxy]
            assert result["ok"], (name, proxy, result)
            assert result["req_s"] > 0 and not result["errors"], (name, proxy, result)
        assert set(scenario["ratios"]) == {"lb/haproxy", "lb/nginx"}
        assert scenario["ratios"]["lb/haproxy"]["req_s"] > 0
    assert doc["scenarios"]["tcp_1mib"]["results"]["lb"]["gbps"] > 0
