"""`hello` and `status` (lb/cli/status.py): what the running daemon is and
everything it knows, once."""

from __future__ import annotations

import os
import time

import psutil

from lb import __version__
from lb.admin import PROTOCOL, AdminError
from lb.checker import describe
from lb.control import acl
from lb.control import key
from lb.control import cache, limits
from lb.control import logs


def hello(sup, args: dict) -> dict:
    return {"version": __version__, "protocol": PROTOCOL, "pid": os.getpid()}


def status(sup, args: dict) -> dict:
    return document(sup)


def stats(sup, args: dict) -> dict:
    """Traffic per listener, route, pool and backend: totals, rates and the
    last minute's percentiles (lb.metrics.stats_document)."""
    from lb import metrics

    return metrics.stats_document(sup)


def top(sup, args: dict) -> dict:
    """The heaviest clients, paths or statuses of the last minute or so
    (lb.metrics.top_document)."""
    from lb import metrics

    by = args.get("by", "client")
    n = args.get("n", 20)
    if by not in ("client", "path", "status"):
        raise AdminError("invalid", f"by: client, path or status, not {by!r}")
    if not isinstance(n, int) or not 1 <= n <= 1000:
        raise AdminError("invalid", "n: an integer 1..1000")
    return metrics.top_document(sup, by, n)


def document(sup) -> dict:
    """The status document (docs/admin.md): listeners, pools and backends of
    the generation in force, workers of every generation still running."""
    from lb import metrics
    from lb.control import rollout, split  # (they import backend, which imports this module)

    gen = sup.gen
    latency = metrics.latencies(sup)
    pools = {}
    for pi, (pname, pool) in enumerate(gen.config.pools.items()):
        backends = {}
        for name, idx in gen.backends[pname].items():
            b = gen.shm.backend(pi, idx)
            b.update(gen.shm.backend_stats(pi, idx))
            host = f"[{b['host']}]" if ":" in b["host"] else b["host"]
            b["address"] = f"{host}:{b['port']}"
            b["check"] = (describe(b["last_result"], b["last_status"], b["last_errno"], b["last_latency_us"])
                          if pool.health.type != "none" else None)
            b["down_reason"] = (describe(b["down_reason"], b["last_status"], b["last_errno"], b["last_latency_us"])
                                if b["health"] == "down" else None)
            # the last minute's response times (lb top)
            b["p50_ms"], b["p99_ms"] = latency.get((pname, name), (None, None))
            backends[name] = b
        pools[pname] = {"algorithm": pool.algorithm, "backends": backends,
                        "empty_because": empty_because(backends)}
    workers = []
    for g in [gen, *sup.old]:
        for c in sup.children.values():
            if c.gen is not g or c.slot.index < 0:
                continue
            stats = g.shm.worker_stats(c.row)
            stats.update(index=c.slot.index, pid=c.pid, generation=g.number,
                         state="draining" if c.retiring else "running",
                         restarts=c.slot.restarts, crash_loop=c.slot.crash_looping)
            try:
                # the same Process object each time: cpu_percent is measured
                # between two calls on it
                p = sup.procs.get(c.pid)
                if p is None:
                    p = sup.procs[c.pid] = psutil.Process(c.pid)
                with p.oneshot():
                    stats.update(cpu_percent=p.cpu_percent(), rss=p.memory_info().rss, open_fds=p.num_fds())
            except psutil.Error:
                stats.update(cpu_percent=None, rss=None, open_fds=None)
            workers.append(stats)
    workers.sort(key=lambda w: (w["generation"], w["index"]))
    for pid in set(sup.procs) - set(sup.children):
        del sup.procs[pid]
    listeners = [{"name": name, "bind": [str(b) for b in l.bind], "mode": l.mode, "pool": l.pool,
                  "max_connections": l.max_connections, **gen.shm.listener_stats(i)}
                 for i, (name, l) in enumerate(gen.config.listeners.items())]
    acls = [acl.summary(gen, name, i) for i, name in enumerate(gen.config.acls)]
    return {
        "version": __version__, "pid": os.getpid(), "uptime": time.time() - sup.started,
        "generation": gen.number,
        "config": {"path": gen.config.source, "sha256": gen.config.sha256},
        "max_connections": gen.config.global_.max_connections,
        "listeners": listeners, "pools": pools, "workers": workers,
        "acls": acls, "access_rules": acl.rules_with_counts(gen), "limits": limits.status(gen),
        "auth": key.status(gen),
        "checker": {"pid": gen.checker.pid, "restarts": gen.checker.restarts,
                    "crash_loop": gen.checker.crash_looping},
        "access_logs": logs.status(sup),
        "caches": cache.stats(sup, {})["caches"],
        "splits": split.show(sup, {})["splits"],
        "rollouts": rollout.status(sup, {})["rollouts"],
        "mirrors": metrics.mirror_status(gen),
    }


def empty_because(backends: dict) -> str | None:
    """None while a pool has a backend to pick; else why not, per backend, for
    `lb status` (a tcp listener closes new connections of such a pool at once)."""
    reasons = []
    for name, b in backends.items():
        if not b["in_use"]:
            continue
        if b["admin"] == "ready" and b["health"] == "up" and b["eff_weight"] > 0:
            return None
        if b["admin"] != "ready":
            reasons.append(f"{name} {b['admin']}")
        elif b["health"] == "down":
            reasons.append(f"{name} down ({b['down_reason']})")
        else:
            reasons.append(f"{name} weight 0")
    return "no backend can take connections: " + (", ".join(reasons) or "the pool has no backends")
