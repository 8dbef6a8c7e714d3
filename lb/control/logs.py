"""`logs.reopen` and the access logs' part of `status` (lb/cli/logs.py): the
logger process's files reopened (logrotate), and what the rings dropped."""

from __future__ import annotations

import time

from lb.admin import AdminError, Pending

# The logger acts on a reopen at its next poll (tens of milliseconds); past
# this the answer says it has not yet.
REOPEN_TIMEOUT = 5.0


def reopen(sup, args: dict) -> Pending:
    """Ask every logger to reopen its files; answer once each has (lines
    written after the answer go to the new files)."""
    asked = sup.reopen_logs()
    if not asked:
        raise AdminError("invalid", "no access log is configured (no listener uses a [logs.NAME])")

    def done() -> bool:
        return all(gen.shm.log_stats()["reopened"] >= req or gen.logger.pid == 0 for gen, req in asked)

    def finish(ok: bool) -> dict:
        if not ok:
            raise AdminError("failed", "the logger did not reopen its files in time")
        return {"reopened": [gen.number for gen, _ in asked]}

    return Pending(done=done, finish=finish, deadline=time.monotonic() + REOPEN_TIMEOUT)


def status(sup) -> dict | None:
    """The access logs' counters, summed over the generations still running;
    None when no listener logs."""
    gens = [g for g in [sup.gen, *sup.old] if g is not None and g.logger is not None]
    if not gens:
        return None
    stats = [g.shm.log_stats() for g in gens]
    return {
        "logs": sorted({log.name for listener in sup.gen.config.listeners.values() for log in listener.logs}),
        "ring_records": stats[0]["ring_records"],
        "drops": sum(s["drops"] for s in stats),
        "pending": sum(s["pending"] for s in stats),
        "lines": sum(s["lines"] for s in stats),
        "write_errors": sum(s["write_errors"] for s in stats),
        "logger": {"pid": gens[0].logger.pid, "restarts": gens[0].logger.restarts,
                   "crash_loop": gens[0].logger.crash_looping},
    }
