"""http_access_log: what an access log costs, lb against nginx, in one run.

http_small (keep-alive GET /small, 64 connections) twice per proxy: with
access logging off, then with a JSON line per request written to a file, the
proxy restarted in between. lb writes its records into per-worker rings in
shared memory and its logger process formats and writes them
(docs/observability.md); nginx formats in its worker and writes each line as
it goes (`access_log FILE json`, no buffer: its default). CPU per request
counts every process of the proxy (lb: supervisor, worker, checker, logger).
Goals of issue 14: logging adds at most 15% to lb's CPU per request, and less
than it adds to nginx's. HAProxy is left out: it logs to syslog only.
"""

from bench import harness

NAME = "http_access_log"
ORDER = 56
KIND = "wrk"
MODE = "http"
SUMMARY = "keep-alive GET /small, access log off vs JSON to a file: cpu/req of each, the logging's share"
TARGETS = ("nginx", "lb")
# cpu us/req first, as everywhere: here the figure with the log on
METRICS = (
    harness.CPU_US_REQ_METRIC,
    harness.Metric("cpu_us_req_off", "cpu us/req off", ",.1f", "lower"),
    harness.Metric("log_cost_pct", "log cost %", ".1f", "lower"),
    harness.Metric("req_s_off", "req/s off", ",.0f", "higher"),
    harness.Metric("req_s", "req/s log", ",.0f", "higher"),
    harness.Metric("lines", "log lines", ",.0f"),
    harness.Metric("dropped", "dropped", ",.0f"),
)
GOALS = {}
MAX_LOG_COST_PCT = 15.0


def measure(ctx, target):
    off = harness.wrk_measure(ctx, target, "/small")
    target.stop()
    target.access_log = target.dir / "access.log"
    target.start()
    on = harness.wrk_measure(ctx, target, "/small")
    lines, dropped = _lines(target), _dropped(target)
    cost = 100.0 * (on["cpu_us_req"] / off["cpu_us_req"] - 1.0) if off.get("cpu_us_req") and on.get("cpu_us_req") else None
    harness.log(f"  {target.name}: access log costs {cost:+.1f}% cpu/req" if cost is not None else
                f"  {target.name}: no cpu figure")
    return {**on, "cpu_us_req_off": off.get("cpu_us_req"), "req_s_off": off.get("req_s"),
            "log_cost_pct": cost, "lines": lines, "dropped": dropped}


def _lines(target) -> int | None:
    try:
        with open(target.access_log, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


def _dropped(target) -> int | None:
    """Records lb's workers dropped (rings full); nginx drops none."""
    if target.name != "lb":
        return 0
    import json
    try:
        reply = json.loads(harness._unix_exchange(target.dir / "admin.sock", b'{"v": 1, "cmd": "status"}\n', lines=1))
    except (OSError, ValueError):
        return None
    return ((reply.get("result") or {}).get("access_logs") or {}).get("drops")
