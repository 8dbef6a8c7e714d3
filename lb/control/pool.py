"""`pool.list`, `pool.show` and `pool.fingerprint` (lb/cli/pool.py): the pools
of the running daemon, read from the status document and shared memory."""

from __future__ import annotations

from lb import ha
from lb.admin import AdminError
from lb.control import status


def pool_arg(sup, args: dict) -> tuple[int, str]:
    """The pool named by args["pool"] in the generation in force: (index, name)."""
    pool = args.get("pool")
    if not isinstance(pool, str):
        raise AdminError("invalid", "argument 'pool' (a pool name) is required")
    if pool not in sup.gen.backends:
        raise AdminError("not_found", f"pool {pool!r} does not exist (pools: {', '.join(sup.gen.backends)})")
    return sup.gen.pool_names.index(pool), pool


def list_pools(sup, args: dict) -> dict:
    pools = []
    for name, pool in status.document(sup)["pools"].items():
        backends = pool["backends"].values()
        pools.append({"name": name, "algorithm": pool["algorithm"], "backends": len(pool["backends"]),
                      "up": sum(1 for b in backends if b["health"] == "up" and b["admin"] == "ready"),
                      "active": sum(b["active"] for b in backends)})
    return {"pools": pools}


def show(sup, args: dict) -> dict:
    _, pool = pool_arg(sup, args)
    return {"name": pool, **status.document(sup)["pools"][pool]}


def fingerprint(sup, args: dict) -> dict:
    """The digest of the table the workers read now (lb.ha.live_fingerprint):
    nodes with equal digests send every flow key to the same backend."""
    _, pool = pool_arg(sup, args)
    return ha.live_fingerprint(sup.gen, pool)
