"""A one-minute soak (`python -m bench soak --minutes 1`, bench/README.md):
mixed traffic through lb while a backend flaps, the config is reloaded and a
worker is killed with SIGKILL; lb's process tree keeps flat RSS and fds, every
request the clients made is in lb's counters, and no error happens that an
event does not explain. The soak judges all of that itself and exits non-zero
when any of it fails; this checks that it ran what it promises and passed."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"keepalive", "newconn", "big", "slow_read", "slow_upload", "aborted_upload"}


def test_one_minute_soak_passes():
    out = subprocess.run([sys.executable, "-m", "bench", "soak", "--minutes", "1", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.stdout, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    summary = {k: doc.get(k) for k in ("error", "events", "errors", "unexpected", "accounting", "memory")}
    assert out.returncode == 0 and doc["ok"], (summary, out.stderr[-3000:])
    # the events the issue asks for happened, scaled to one minute
    assert doc["events"]["reload"] >= 2 and doc["events"]["kill"] >= 1 and doc["events"]["flap"] >= 2
    assert doc["events"]["restart"] == doc["events"]["flap"]
    # every kind of traffic ran, and most of each came through intact
    assert set(doc["requests"]) == KINDS
    for kind, row in doc["requests"].items():
        assert row.get("ok", 0) > 0, (kind, row)
        assert row.get("unexpected", 0) == 0, (kind, row)
    # lb's counters and the clients' agree class by class, within the requests
    # in flight on the killed worker
    acc = doc["accounting"]
    assert acc["ok"] and acc["classes"]["2xx"]["lb"] >= acc["classes"]["2xx"]["client"] > 1000
    assert acc["lb_total"] - acc["client_total"] <= acc["uncertain"]
    # flat within 5%: the steady part's medians, first window after warm-up against the last
    for key in ("rss", "fds"):
        assert doc["memory"][key]["ok"] and doc["memory"][key]["growth"] <= 0.05, doc["memory"][key]
    assert doc["left_at_end"] == []             # every draining generation ended
