"""The checker process: active health checks and passive ejection, run by the
compiled loop (`lb._fastpath.Checker`); Python only logs state changes."""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import signal

from lb._fastpath import REASONS, Checker, verify_error_text
from lb.worker import PR_SET_NAME, PR_SET_PDEATHSIG, detach_from_supervisor, drop_privileges, prctl

log = logging.getLogger("lb")


def pool_specs(config) -> list[dict]:
    specs = []
    for pool in config.pools.values():
        h, p = pool.health, pool.passive
        specs.append(dict(
            name=pool.name, type=h.type, interval=h.interval, fast_interval=h.fast_interval or h.interval,
            down_interval=h.down_interval or h.interval, timeout=h.timeout, rise=h.rise, fall=h.fall,
            expect_lo=h.expect_status[0], expect_hi=h.expect_status[1], method=h.method, path=h.path,
            host=h.host, expect_body=h.expect_body, passive_failures=p.consecutive_failures,
            eject_time=p.eject_time, max_ejected_percent=p.max_ejected_percent,
        ))
    return specs


def describe(reason: int, status: int, err: int, latency_us: int) -> str:
    """One line a person can act on: what the check saw, and how long it took."""
    text = REASONS.get(reason, f"reason {reason}")
    if reason in (6, 7):  # passive ejection and its end: no check was involved
        return text
    if reason == 3:  # bad status
        text += f" {status}"
    elif reason == 8:  # TLS: err is the certificate verify result, when it failed
        if err:
            text += f" (certificate: {verify_error_text(err)})"
    elif err:
        text += f" ({errno_mod.errorcode.get(err, err)}: {os.strerror(err)})"
    return f"{text}, check took {latency_us / 1000:.1f}ms"


def child_main(sup, gen) -> int:
    """Entry point in the forked child. Returns the exit code."""
    try:
        detach_from_supervisor(sup, keep=[])
        drop_privileges(sup)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        prctl(PR_SET_NAME, b"lb-checker")
        if os.getppid() == 1:
            return 0
        pool_names = list(gen.config.pools)
        shm = gen.shm

        def on_change(pool, index, old, new, reason, status, err, latency_us):
            name = shm.backend(pool, index)["name"]
            states = ("up", "down")
            log.warning("backend %s/%s health %s -> %s: %s", pool_names[pool], name, states[old],
                        states[new], describe(reason, status, err, latency_us))

        Checker(shm, pool_specs(gen.config), on_change, tls=gen.tls["pools"]).run()
        return 0
    except Exception:
        log.exception("checker failed")
        return 1
