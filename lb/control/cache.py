"""`cache.purge`, `cache.stats` and `cache.list` (lb/cli/cache.py), and the
caches' part of `status` and the metrics: the [caches.NAME] regions the
supervisor made (lb.shm.caches_for_config), read and changed here under
each region's lock. Workers see a purge at their next lookup: the entries
are gone from the index."""

from __future__ import annotations

from lb.admin import AdminError

DEFAULT_LIST = 100
MAX_LIST = 100000


def _caches(sup, name) -> dict:
    caches = sup.gen.caches if sup.gen is not None else {}
    if name is None:
        return caches
    if not isinstance(name, str) or name not in caches:
        known = ", ".join(caches) or "none"
        raise AdminError("not_found", f"no cache {name!r} (caches: {known})")
    return {name: caches[name]}


def purge(sup, args: dict) -> dict:
    """args: exactly one of url, prefix, tag; cache (a name) or every cache."""
    given = [k for k in ("url", "prefix", "tag") if args.get(k)]
    if len(given) != 1 or not isinstance(args[given[0]], str):
        raise AdminError("invalid", "one of 'url', 'prefix' or 'tag' (a string) is required")
    what = given[0]
    caches = _caches(sup, args.get("cache"))
    purged = {}
    for name, region in caches.items():
        try:
            # both tiers: the count is of entries, and an object may be in both
            purged[name] = region.purge(**{what: args[what]})
            if region.disk is not None:
                purged[name] += region.disk.purge(**{what: args[what]})
        except OSError as e:
            raise AdminError("failed", f"cache {name!r}: {e}") from None
    return {what: args[what], "purged": purged, "total": sum(purged.values())}


def summary(sup, name: str, region) -> dict:
    cfg = sup.gen.config.caches[name]
    users = []
    for lname, listener in sup.gen.config.listeners.items():
        if getattr(listener, "cache", "") == name:
            users.append(f"listener {lname}")
        for route in listener.routes:
            if getattr(route, "cache", "") == name:
                users.append(f"listener {lname} route {route.name}")
    return {"name": name, "size": cfg.size, "max_object_size": cfg.max_object_size,
            "tag_header": cfg.tag_header, "purge_allow": list(cfg.purge_allow), "used_by": users,
            "key": {"host": cfg.key_host, "query": cfg.key_query, "query_drop": list(cfg.key_query_drop),
                    "query_keep": list(cfg.key_query_keep), "headers": list(cfg.key_headers)},
            "counts": region.stats(), "disk": region.disk.stats() if region.disk is not None else None}


def stats(sup, args: dict) -> dict:
    return {"caches": [summary(sup, name, region) for name, region in _caches(sup, args.get("cache")).items()]}


def list_entries(sup, args: dict) -> dict:
    prefix = args.get("prefix") or ""
    limit = args.get("limit", DEFAULT_LIST)
    if not isinstance(prefix, str) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise AdminError("invalid", f"'prefix' is a string and 'limit' a number from 1 to {MAX_LIST}")
    out = []
    for name, region in _caches(sup, args.get("cache")).items():
        try:
            entries = region.entries(prefix, limit)
            # the disk tier's too: an object may be in both
            disk = region.disk.region.entries(prefix, limit) if region.disk is not None else []
        except OSError as e:
            raise AdminError("failed", f"cache {name!r}: {e}") from None
        out += [{"cache": name, "tier": "memory", **e} for e in entries]
        out += [{"cache": name, "tier": "disk", **e} for e in disk]
    return {"entries": out[:limit]}
