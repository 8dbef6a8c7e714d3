"""`backend.add`, `backend.remove`, `backend.set_weight` and `backend.set_state`
(lb/cli/backend.py): runtime changes to the backends of the generation in
force, written to shared memory at once and recorded in the state file before
the client hears back; and the replay of that file over a new generation."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from lb import config as config_mod
from lb.admin import AdminError, Pending
from lb.control.pool import pool_arg
from lb.state import StateFile

if TYPE_CHECKING:
    from lb.supervisor import Generation

log = logging.getLogger("lb")


def backend_arg(sup, args: dict) -> tuple[int, str, int, str]:
    """The backend named by args["pool"] and args["name"]: (pool index, pool,
    slot index, name)."""
    pi, pool = pool_arg(sup, args)
    name = args.get("name")
    if not isinstance(name, str):
        raise AdminError("invalid", "argument 'name' (a backend name) is required")
    idx = sup.gen.backends[pool].get(name)
    if idx is None:
        raise AdminError("not_found", f"pool {pool!r} has no backend {name!r}")
    return pi, pool, idx, name


def add_backend(gen: Generation, pool: str, name: str, address: str, weight: int, backup: bool) -> int:
    pi = gen.pool_names.index(pool)
    host, port, _ = config_mod.parse_backend_address(address)
    used = set(gen.backends[pool].values())
    cap = gen.shm.pool_capacity(pi)
    # a slot once used keeps its old counters: take one never used
    idx = next((i for i in range(cap) if i not in used and not gen.shm.backend(pi, i)["name"]), None)
    if idx is None:
        raise AdminError("failed", f"pool {pool!r} is full ({cap} slots); add the backend to the config and reload")
    gen.shm.set_backend(pi, idx, host, port, name, weight, backup)
    gen.backends[pool][name] = idx
    return idx


def apply_state(state: StateFile, gen: Generation) -> None:
    """Runtime changes recorded in the state file, over a new generation."""
    for pool, entry in state.pools().items():
        if pool not in gen.backends:
            log.warning("state file: pool %r is not in the config any more; its entries are skipped", pool)
            continue
        pi = gen.pool_names.index(pool)
        for name, spec in entry.get("added", {}).items():
            if name in gen.backends[pool]:
                log.warning("state file: %s/%s is in the config now; the runtime addition is skipped", pool, name)
                continue
            try:
                add_backend(gen, pool, name, spec["address"], spec["weight"], spec.get("backup", False))
                if spec.get("admin", "ready") != "ready":
                    gen.shm.set_admin(pi, gen.backends[pool][name], spec["admin"])
            except (AdminError, config_mod.ConfigError, KeyError) as e:
                log.warning("state file: cannot add %s/%s: %s", pool, name, e)
        for name in entry.get("removed", []):
            idx = gen.backends[pool].pop(name, None)
            if idx is not None:
                gen.shm.clear_backend(pi, idx)
        for name, spec in entry.get("backends", {}).items():
            idx = gen.backends[pool].get(name)
            if idx is None:
                log.warning("state file: %s/%s is not in the config any more; skipped", pool, name)
                continue
            if "weight" in spec:
                gen.shm.set_weight(pi, idx, spec["weight"])
            if "admin" in spec:
                gen.shm.set_admin(pi, idx, spec["admin"])


def save_state(state: StateFile) -> None:
    try:
        state.save()
    except OSError as e:
        raise AdminError("failed", f"change applied but not saved to {state.path}: {e}") from None


def add(sup, args: dict) -> dict:
    pi, pool = pool_arg(sup, args)
    address = args.get("address")
    if not isinstance(address, str):
        raise AdminError("invalid", "argument 'address' (host:port) is required")
    name = args.get("name") or address
    if not isinstance(name, str):
        raise AdminError("invalid", f"name must be a string, got {name!r}")
    weight = args.get("weight", 100)
    backup = bool(args.get("backup", False))
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 1000:
        raise AdminError("invalid", f"weight must be an integer 0..1000, got {weight!r}")
    if name in sup.gen.backends[pool]:
        raise AdminError("conflict", f"pool {pool!r} already has a backend named {name!r}")
    if len(name.encode()) > 63:
        raise AdminError("invalid", "a backend name is at most 63 bytes")
    try:
        idx = add_backend(sup.gen, pool, name, address, weight, backup)
    except config_mod.ConfigError as e:
        raise AdminError("invalid", f"address {address!r}: {e.message}") from None
    sup.gen.shm.rebuild_changed()
    sup.state.add(pool, name, address, weight, backup)
    save_state(sup.state)
    log.info("admin: added backend %s/%s at %s (weight %d%s)", pool, name, address, weight,
             ", backup" if backup else "")
    return {"pool": pool, "name": name, "slot": idx}


def remove(sup, args: dict):
    pi, pool, idx, name = backend_arg(sup, args)
    wait = bool(args.get("wait", False))
    timeout = args.get("timeout", sup.config.global_.drain_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise AdminError("invalid", f"timeout must be a number of seconds, got {timeout!r}")
    gen = sup.gen
    gen.shm.set_admin(pi, idx, "drain")

    def finish(drained: bool) -> dict:
        if gen.backends[pool].get(name) == idx:
            del gen.backends[pool][name]
            gen.shm.clear_backend(pi, idx)
            gen.shm.rebuild_changed()
        sup.state.remove(pool, name)
        save_state(sup.state)
        log.info("admin: removed backend %s/%s%s", pool, name, "" if drained else " (not drained)")
        return {"pool": pool, "name": name, "drained": drained}

    active = lambda: gen.shm.backend_stats(pi, idx)["active"] == 0  # noqa: E731
    if not wait:
        return finish(active())
    return Pending(done=active, finish=finish, deadline=time.monotonic() + float(timeout))


def set_weight(sup, args: dict) -> dict:
    pi, pool, idx, name = backend_arg(sup, args)
    weight = args.get("weight")
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 1000:
        raise AdminError("invalid", f"weight must be an integer 0..1000, got {weight!r}")
    sup.gen.shm.set_weight(pi, idx, weight)
    return _changed(sup, pool, name, "weight", weight, sup.state.set_weight)


def set_state(sup, args: dict) -> dict:
    pi, pool, idx, name = backend_arg(sup, args)
    state = args.get("state")
    if state not in ("ready", "drain", "maint"):
        raise AdminError("invalid", f"state must be ready, drain or maint, got {state!r}")
    sup.gen.shm.set_admin(pi, idx, state)
    return _changed(sup, pool, name, "state", state, sup.state.set_admin)


def _changed(sup, pool: str, name: str, key: str, value, record) -> dict:
    """After a runtime change in shared memory: tables follow at once, and
    the state file has it before the client hears back."""
    sup.gen.shm.rebuild_changed()
    record(pool, name, value)
    save_state(sup.state)
    log.info("admin: %s/%s %s %s", pool, name, key, value)
    return {"pool": pool, "name": name, key: value}
