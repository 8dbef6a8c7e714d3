"""`rollout.start`, `status`, `pause`, `resume`, `abort` (lb/cli/rollout.py):
progressive rollouts of a split's variant, run by the supervisor
(docs/rollouts.md).

A rollout raises the canary's weight step by step (5, 10, 25, 50, 100 ...),
taking it from the baseline (another variant of the split). Each step lasts
at least its interval, and ends only once the canary has served
min_requests in it. At every tick the supervisor reads the canary's and the
baseline's counters over the step's window (the same metrics entities
`lb split show` reads): the canary's error rate (5xx answers, lb's own
502/503/504 included) and its p99 must stay within the bounds and no worse
than the baseline's over the same window, by a tolerance. Once the canary
has min_requests in the window, a breach rolls the canary back to 0 % at
once; when the interval is over without one, the next step begins. Every
decision is logged with the figures it used.

A rollout is kept in the state file at each step, so it survives a reload
(the counters carry over, the window goes on) and a restart (the window
starts again: the counters of a new process start from zero)."""

from __future__ import annotations

import logging
import time

from lb import metrics as metrics_mod
from lb.admin import AdminError
from lb.config.values import ConfigError, parse_duration
from lb.control import split as split_ctl
from lb.control.backend import save_state

log = logging.getLogger("lb")

JUDGE_EVERY = 0.25  # seconds between two looks at a running rollout's figures
MAX_DECISIONS = 50  # kept per rollout (status, state file)
# "No worse than the baseline": the canary may exceed the baseline's error
# rate by half a point or by half of it, and its p99 by 25 ms or by half of
# it, whichever is more: a histogram's buckets and a few slow requests make
# that much noise between two healthy pools.
ERROR_SLACK_ABS = 0.005
ERROR_SLACK_REL = 0.5
P99_SLACK_ABS = 0.025
P99_SLACK_REL = 0.5
# The canary's p99 is held against the baseline's only over this many of its
# requests: the p99 of fewer is their slowest one, a single stall.
P99_MIN_SAMPLES = 100
ACTIVE = ("running", "paused")


# ---- figures over a window ------------------------------------------------------------


def _counts(sup, split_name: str, pool: str, summed=None, ids=None) -> list[int] | None:
    """[requests, 5xx, histogram buckets...] of a variant, as counted now."""
    if summed is None:
        summed, ids = metrics_mod.totals(sup)
    e = ids.get(("variant", split_name, pool))
    if e is None:
        return None
    w = metrics_mod._words(summed, e)
    hist = metrics_mod.OFF["hist"]
    buckets = list(w[hist:hist + len(metrics_mod.fp.METRIC_BOUNDS_SECONDS) + 1])
    return [w[metrics_mod.OFF["requests"]], w[metrics_mod.OFF["responses"] + 4], *buckets]


def _snapshot(sup, r: dict) -> dict:
    summed, ids = metrics_mod.totals(sup)
    return {pool: _counts(sup, r["split"], pool, summed, ids) for pool in (r["to"], r["from"])}


def _window(now: list[int] | None, then: list[int] | None) -> dict:
    if now is None:
        return {"requests": 0, "errors": 0, "error_rate": None, "p99_ms": None}
    then = then or [0] * len(now)
    d = [max(0, a - b) for a, b in zip(now, then)]
    p99 = metrics_mod.quantile(0.99, d[2:])
    return {"requests": d[0], "errors": d[1], "error_rate": d[1] / d[0] if d[0] else None,
            "p99_ms": None if p99 is None else round(p99 * 1000, 3)}


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _figures_text(c: dict, b: dict, seconds: float) -> str:
    return (f"canary error rate {_pct(c['error_rate'])} ({c['errors']} of {c['requests']}), p99 "
            f"{c['p99_ms'] if c['p99_ms'] is not None else '-'}ms; baseline error rate {_pct(b['error_rate'])} "
            f"({b['errors']} of {b['requests']}), p99 {b['p99_ms'] if b['p99_ms'] is not None else '-'}ms; "
            f"over {seconds:.1f}s")


def judge(r: dict, c: dict, b: dict) -> str:
    """Why the canary's figures fail the rollout's bounds ("" when they pass)."""
    rate, p99 = c["error_rate"] or 0.0, c["p99_ms"]
    if rate > r["max_error_rate"]:
        return f"error rate {_pct(rate)} above the bound {_pct(r['max_error_rate'])}"
    if r["max_p99_ms"] and p99 is not None and p99 > r["max_p99_ms"]:
        return f"p99 {p99}ms above the bound {r['max_p99_ms']}ms"
    if b["requests"] >= r["min_requests"]:
        brate = b["error_rate"] or 0.0
        if rate > max(brate + ERROR_SLACK_ABS, brate * (1 + ERROR_SLACK_REL)):
            return f"error rate {_pct(rate)} worse than the baseline's {_pct(brate)}"
        bp99 = b["p99_ms"]
        p99_limit = None if bp99 is None else max(bp99 + P99_SLACK_ABS * 1000, bp99 * (1 + P99_SLACK_REL))
        if p99 is not None and p99_limit is not None and c["requests"] >= P99_MIN_SAMPLES and p99 > p99_limit:
            return f"p99 {p99}ms worse than the baseline's {bp99}ms"
    return ""


# ---- the supervisor's side ------------------------------------------------------------


def _rollouts(sup) -> dict:
    """split name -> rollout record, loaded from the state file once."""
    if getattr(sup, "rollouts", None) is None:
        stored = sup.state.data.get("rollouts")
        sup.rollouts = {}
        for name, r in (stored.items() if isinstance(stored, dict) else ()):
            s = sup.gen.splits.get(name)
            if not isinstance(r, dict) or s is None or r.get("to") not in s["pools"] \
                    or r.get("from") not in s["pools"]:
                log.warning("state file: rollout of split %r does not match the config any more; dropped", name)
                continue
            sup.rollouts[name] = r
            if r.get("state") == "running":
                r["window"] = None   # the counters of this process start from zero: a new window
                log.info("rollout %s: resumed at step %d (%s at %d%%) after a restart", name, r["step"] + 1,
                         r["to"], r["steps"][r["step"]])
        sup.state.data["rollouts"] = sup.rollouts
    return sup.rollouts


def active_rollouts(sup) -> dict:
    """The rollouts that own their split's weights (running or paused)."""
    return {name: r for name, r in _rollouts(sup).items() if r.get("state") in ACTIVE}


def _save(sup) -> None:
    # (a window's counters are this process's: a restart starts a new one)
    _rollouts(sup)
    save_state(sup.state)


def _decide(sup, r: dict, verdict: str, text: str, weight: int, figures=None) -> None:
    r.setdefault("decisions", []).append({"time": round(time.time(), 3), "step": r["step"], "weight": weight,
                                          "verdict": verdict, "text": text, **(figures or {})})
    del r["decisions"][:-MAX_DECISIONS]
    (log.warning if verdict in ("rolled_back", "aborted") else log.info)("rollout %s: %s", r["split"], text)


def _set_canary(sup, r: dict, weight: int, why: str) -> None:
    s = sup.gen.splits[r["split"]]
    weights = list(s["weights"])
    ti, fi = s["pools"].index(r["to"]), s["pools"].index(r["from"])
    pair = weights[ti] + weights[fi] if r.get("pair") is None else r["pair"]
    r["pair"] = pair  # what the canary and the baseline share; the other variants keep theirs
    weights[ti], weights[fi] = min(weight, pair), pair - min(weight, pair)
    split_ctl.set_weights(sup, s, weights, why)


def _start_step(sup, r: dict, now: float) -> None:
    r["window"] = {"started": now, "counts": _snapshot(sup, r)}
    r["step_started"] = time.time()


def tick(sup) -> None:
    """Called from the supervisor's loop: judge every running rollout."""
    if not getattr(sup, "gen", None) or not sup.gen.splits and not getattr(sup, "rollouts", None):
        return
    now = time.monotonic()
    if now < getattr(sup, "_rollout_next", 0.0):
        return
    sup._rollout_next = now + JUDGE_EVERY
    for r in list(_rollouts(sup).values()):
        if r.get("state") != "running":
            continue
        try:
            _tick_one(sup, r, now)
        except AdminError as e:  # the state file could not be written: the weights are in force anyway
            log.error("rollout %s: %s", r["split"], e.message)


def _tick_one(sup, r: dict, now: float) -> None:
    s = sup.gen.splits.get(r["split"])
    if s is None or r["to"] not in s["pools"] or r["from"] not in s["pools"]:
        r["state"] = "aborted"
        _decide(sup, r, "aborted", "aborted: the split or its variants left the config", 0)
        _save(sup)
        return
    if r.get("window") is None:
        _start_step(sup, r, now)
        return
    win = r["window"]
    snap = _snapshot(sup, r)
    c = _window(snap[r["to"]], win["counts"][r["to"]])
    b = _window(snap[r["from"]], win["counts"][r["from"]])
    seconds = now - win["started"]
    weight = r["steps"][r["step"]]
    if c["requests"] < r["min_requests"]:
        return                       # not judged before enough requests were seen
    figures = {"canary": c, "baseline": b, "seconds": round(seconds, 3)}
    why = judge(r, c, b)
    if why:
        r["state"] = "rolled_back"
        _set_canary(sup, r, 0, f"rollout rolled back: {why}")
        _decide(sup, r, "rolled_back", f"rolled back to 0% at step {r['step'] + 1} ({weight}%): {why}; "
                + _figures_text(c, b, seconds), 0, figures)
        _save(sup)
        return
    if seconds < r["interval"]:
        return
    if r["step"] + 1 >= len(r["steps"]):
        r["state"] = "succeeded"
        _decide(sup, r, "succeeded", f"succeeded: {r['to']} at {weight}% held its bounds; "
                + _figures_text(c, b, seconds), weight, figures)
        _save(sup)
        return
    r["step"] += 1
    nxt = r["steps"][r["step"]]
    _set_canary(sup, r, nxt, f"rollout step {r['step'] + 1} of {len(r['steps'])}")
    _decide(sup, r, "promoted", f"step {r['step'] + 1} of {len(r['steps'])}: {r['to']} {weight}% -> {nxt}%; "
            + _figures_text(c, b, seconds), nxt, figures)
    _start_step(sup, r, now)
    _save(sup)


# ---- verbs ----------------------------------------------------------------------------


def _rate(value) -> float:
    if isinstance(value, str):
        text = value.strip()
        try:
            v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise AdminError("invalid", f"max_error_rate: {value!r} is not a rate (1%, 0.01)") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
    else:
        raise AdminError("invalid", f"max_error_rate: {value!r} is not a rate (1%, 0.01)")
    if not 0 <= v <= 1:
        raise AdminError("invalid", f"max_error_rate: {value!r} is not between 0% and 100%")
    return v


def _seconds(name: str, value, minimum: float) -> float:
    try:
        v = parse_duration(value) if isinstance(value, str) else float(value)
    except (ConfigError, ValueError, TypeError):
        raise AdminError("invalid", f"{name}: {value!r} is not a duration (60s, 500ms)") from None
    if v < minimum:
        raise AdminError("invalid", f"{name}: {value!r} is below {minimum}s")
    return v


def start(sup, args: dict) -> dict:
    s = split_ctl.split_arg(sup, args)
    name = s["split"].name
    rollouts = _rollouts(sup)
    if name in rollouts and rollouts[name].get("state") in ACTIVE:
        raise AdminError("failed", f"split {name!r} has a rollout {rollouts[name]['state']} already "
                                   "(lb rollout abort it first)")
    to = args.get("to")
    if to not in s["pools"]:
        raise AdminError("invalid", f"to: {to!r} is not a variant of split {name!r} ({', '.join(s['pools'])})")
    base = args.get("from") or next(p for p in s["pools"] if p != to)
    if base not in s["pools"] or base == to:
        raise AdminError("invalid", f"from: {base!r} is not another variant of split {name!r}")
    steps = args.get("steps") or [5, 10, 25, 50, 100]
    if not isinstance(steps, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in steps) \
            or not all(0 < x <= 100 for x in steps) or steps != sorted(set(steps)):
        raise AdminError("invalid", f"steps: {steps!r} is not a rising list of whole percents 1..100")
    ti, fi = s["pools"].index(to), s["pools"].index(base)
    pair = s["weights"][ti] + s["weights"][fi]
    if steps[-1] > pair:
        raise AdminError("invalid", f"steps: {steps[-1]}% is more than {to} and {base} hold together ({pair}%)")
    min_requests = args.get("min_requests", 200)
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
        raise AdminError("invalid", f"min_requests: {min_requests!r} is not a whole number >= 1")
    r = {"split": name, "to": to, "from": base, "steps": steps, "step": 0, "state": "running",
         "interval": _seconds("interval", args.get("interval", "60s"), 0.1),
         "max_error_rate": _rate(args.get("max_error_rate", "1%")),
         "max_p99_ms": round(_seconds("max_p99", args.get("max_p99", 0), 0.0) * 1000, 3),
         "min_requests": min_requests, "started": round(time.time(), 3), "pair": pair, "decisions": []}
    rollouts[name] = r
    _set_canary(sup, r, steps[0], f"rollout step 1 of {len(steps)}")
    _decide(sup, r, "started", f"started: {to} at {steps[0]}% (steps {','.join(map(str, steps))}, interval "
            f"{r['interval']}s, max error rate {_pct(r['max_error_rate'])}, max p99 {r['max_p99_ms'] or '-'}ms, "
            f"min requests {min_requests})", steps[0])
    _start_step(sup, r, time.monotonic())
    _save(sup)
    return describe(sup, r)


def describe(sup, r: dict) -> dict:
    out = {k: v for k, v in r.items() if k not in ("window", "pair")}
    out["weight"] = sup.gen.splits[r["split"]]["weights"][sup.gen.splits[r["split"]]["pools"].index(r["to"])] \
        if r["split"] in sup.gen.splits else None
    win = r.get("window")
    if r.get("state") == "running" and win is not None:
        snap = _snapshot(sup, r)
        out["window"] = {"seconds": round(time.monotonic() - win["started"], 3),
                         "canary": _window(snap[r["to"]], win["counts"][r["to"]]),
                         "baseline": _window(snap[r["from"]], win["counts"][r["from"]])}
    return out


def _rollout_arg(sup, args: dict) -> dict:
    s = split_ctl.split_arg(sup, args)
    r = _rollouts(sup).get(s["split"].name)
    if r is None:
        raise AdminError("not_found", f"split {s['split'].name!r} has no rollout")
    return r


def status(sup, args: dict) -> dict:
    if args.get("name") is not None:
        return {"rollouts": [describe(sup, _rollout_arg(sup, args))]}
    return {"rollouts": [describe(sup, r) for r in _rollouts(sup).values()]}


def pause(sup, args: dict) -> dict:
    r = _rollout_arg(sup, args)
    if r["state"] != "running":
        raise AdminError("failed", f"rollout of {r['split']!r} is {r['state']}, not running")
    r["state"] = "paused"
    _decide(sup, r, "paused", f"paused at step {r['step'] + 1} ({r['steps'][r['step']]}%)", r["steps"][r["step"]])
    _save(sup)
    return describe(sup, r)


def resume(sup, args: dict) -> dict:
    r = _rollout_arg(sup, args)
    if r["state"] != "paused":
        raise AdminError("failed", f"rollout of {r['split']!r} is {r['state']}, not paused")
    r["state"] = "running"
    _decide(sup, r, "resumed", f"resumed at step {r['step'] + 1} ({r['steps'][r['step']]}%): a new window",
            r["steps"][r["step"]])
    _start_step(sup, r, time.monotonic())
    _save(sup)
    return describe(sup, r)


def abort(sup, args: dict) -> dict:
    r = _rollout_arg(sup, args)
    if r["state"] not in ACTIVE:
        raise AdminError("failed", f"rollout of {r['split']!r} is {r['state']} already")
    r["state"] = "aborted"
    _set_canary(sup, r, 0, "rollout aborted")
    _decide(sup, r, "aborted", f"aborted at step {r['step'] + 1}: {r['to']} back to 0%", 0)
    _save(sup)
    return describe(sup, r)
