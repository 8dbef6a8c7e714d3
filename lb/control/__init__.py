"""The daemon side of the `lb` commands (docs/admin.md): one module per command
group, mirroring lb/cli/<group>.py, each verb a plain function
`(supervisor, args) -> result`, or a `Pending` for an answer that waits.

VERBS is the one table of verbs the admin socket serves. A new group is a
module here beside its lb/cli/ module, and its rows in VERBS."""

from __future__ import annotations

from lb.admin import AdminError
from lb.control import acl, backend, cache, cert, control, key, limits, logs, node, pool, rollout, split, status

# verb -> function; "unknown command" lists the verbs in this order
VERBS = {
    "hello": status.hello,
    "status": status.status,
    "stats": status.stats,
    "top": status.top,
    "pool.list": pool.list_pools,
    "pool.show": pool.show,
    "pool.fingerprint": pool.fingerprint,
    "backend.add": backend.add,
    "backend.remove": backend.remove,
    "backend.set_weight": backend.set_weight,
    "backend.set_state": backend.set_state,
    "reload": control.reload,
    "stop": control.stop,
    "cert.list": cert.list_certificates,
    "cert.reload": cert.reload,
    "acl.show": acl.show,
    "acl.add": acl.add,
    "acl.remove": acl.remove,
    "acl.load": acl.load,
    "limits.show": limits.show,
    "key.add": key.add,
    "key.revoke": key.revoke,
    "key.list": key.list_keys,
    "logs.reopen": logs.reopen,
    "cache.purge": cache.purge,
    "cache.stats": cache.stats,
    "cache.list": cache.list_entries,
    "node.status": node.status,
    "node.drain": node.drain,
    "node.undrain": node.undrain,
    "split.show": split.show,
    "split.set": split.set_,
    "rollout.start": rollout.start,
    "rollout.status": rollout.status,
    "rollout.pause": rollout.pause,
    "rollout.resume": rollout.resume,
    "rollout.abort": rollout.abort,
}


def dispatch(sup, cmd: str, args: dict):
    """The admin server's callback: run verb `cmd` against the supervisor."""
    verb = VERBS.get(cmd)
    if verb is None:
        raise AdminError("invalid", f"unknown command {cmd!r} (known: {', '.join(VERBS)})")
    return verb(sup, args)
