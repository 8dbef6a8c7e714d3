"""`node.drain`, `node.undrain` and `node.status` (lb/cli/node.py): this node
as a member of an [ha] cluster. Draining makes the health file unhealthy, so
keepalived hands the VIPs to a peer (VRRP) or the VIP routes leave the
announce table and BIRD withdraws them (BGP), then waits while the
connections this node still carries finish; the drained state is kept in the
state file, so a restart keeps a drained node drained."""

from __future__ import annotations

import logging
import time

from lb import ha
from lb.admin import AdminError, Pending
from lb.control.backend import save_state

log = logging.getLogger("lb")


def _require_ha(sup) -> None:
    if not sup.config.ha.enabled:
        raise AdminError("failed", 'ha.mode is "none": there is no peer to hand the traffic to '
                                   '(set [ha] mode = "vrrp" or "bgp", see docs/ha.md)')


def status(sup, args: dict) -> dict:
    cfg = sup.config
    return {
        "mode": cfg.ha.mode,
        "drained": sup.node_drained,
        "health": sup.health.describe() if sup.health is not None else None,
        "active": ha.active_connections(sup),
        "vips": [v.text for v in cfg.ha.vips],
        "holds": ha.held_vips(cfg) if cfg.ha.enabled else [],
        # BGP: whether the VIP routes are in the announce table BIRD reads
        "announce": sup.announcer.describe(),
    }


def drain(sup, args: dict):
    _require_ha(sup)
    wait = bool(args.get("wait", True))
    timeout = args.get("timeout", sup.config.global_.drain_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise AdminError("invalid", f"timeout must be a number of seconds, got {timeout!r}")
    was = sup.node_drained
    sup.node_drained = True
    sup._update_health()  # now, not at the next tick: keepalived moves the VIPs
    sup.state.set_node_drained(True)
    save_state(sup.state)
    if not was:
        log.info("admin: node drained: the health file says unhealthy, the VIPs move to a peer "
                 "(VRRP) or are withdrawn (BGP)")
    started = time.monotonic()
    # clients may still open connections to this node until the peer or the
    # routers have taken over: the node counts as empty only after that
    settle = ha.handover_settle(sup.config.ha)

    def empty() -> bool:
        return time.monotonic() - started >= settle and ha.active_connections(sup) == 0

    def finish(done: bool) -> dict:
        active = ha.active_connections(sup)
        if done:
            log.info("admin: drained node is empty after %.1fs", time.monotonic() - started)
        return {"drained": True, "empty": active == 0, "active": active,
                "waited": round(time.monotonic() - started, 3), "health": sup.health.describe()}

    if not wait:
        return finish(False)
    return Pending(done=empty, finish=finish, deadline=started + float(timeout))


def undrain(sup, args: dict) -> dict:
    # no [ha] check: a node drained before a reload turned [ha] off must
    # still be able to clear the state it keeps
    was = sup.node_drained
    sup.node_drained = False
    sup._update_health()
    sup.state.set_node_drained(False)
    save_state(sup.state)
    if was:
        log.info("admin: node undrained: the health file follows the node's health again")
    return {"drained": False, "health": sup.health.describe() if sup.health is not None else None,
            "preempt": sup.config.ha.preempt}
