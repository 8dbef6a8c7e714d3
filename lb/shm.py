"""Building the shared-memory region of an instance from its config.

The layout is declared once, in the compiled module: `REGIONS` in
lb/fastpath/shm.pxi lists every region in order with its one writer (re-exported
here), and `lb._fastpath.Shm` holds every accessor. This module only decides
sizes and fills the region from a parsed config.
"""

from __future__ import annotations

import os

from lb._fastpath import REGIONS, CacheShm, Shm, limit_spec, mirror_sites, split_publish  # noqa: F401 (REGIONS: the layout, for readers of this module)
from lb import splits as layout
from lb.config.acls import access_rules
from lb.config.jwks import pack as jwks_pack
from lb.config.splits import config_splits

# Free slots per pool for backends added at run time, without a reload.
MIN_POOL_CAPACITY = 64
MAX_POOL_CAPACITY = 65535  # Maglev table entries are 16-bit slot offsets


def pool_capacity(n_backends: int) -> int:
    return min(MAX_POOL_CAPACITY, max(MIN_POOL_CAPACITY, 2 * n_backends))


def region_path(pid: int | None = None, generation: int = 1) -> str:
    """The region of an instance's generation: the first keeps the plain name
    (tools find an instance by its supervisor's pid), reloads add -N."""
    suffix = "" if generation == 1 else f"-{generation}"
    return f"/dev/shm/lb-{pid or os.getpid()}{suffix}.shm"


def create_for_config(config, n_rows: int, path: str | None = None, seeds: dict[str, int] | None = None) -> Shm:
    """Create the region (pools in config order) and publish every backend.

    A backend starts up: until the checker has a verdict, an unchecked backend
    is given traffic (HAProxy does the same for servers without `check`).
    seeds: the key-hash seed of each limit to keep (a reload carries its keys over).
    """
    pools = [(name, pool_capacity(len(p.backends)), p.algorithm, p.table_size, p.hash_key, p.balance_factor)
             for name, p in config.pools.items()]
    rules = access_rules(config.listeners)
    # access-log rings only when a listener logs: else the region is its header alone
    logged = any(listener.logs for listener in config.listeners.values())
    limits = [{**limit_spec(limit), "seed": (seeds or {}).get(name, 0)} for name, limit in config.limits.items()]
    pool_names = list(config.pools)
    splits = config_splits(config.listeners)
    shm = Shm.create(path or region_path(), pools, n_rows, os.getpid(), acls=list(config.acls), n_rules=len(rules),
                     log_records=config.global_.log_ring if logged else 0, limits=limits, auths=list(config.auth),
                     n_listeners=len(config.listeners),
                     listener_routes=[len(listener.routes) for listener in config.listeners.values()],
                     splits=[(s.name, [pool_names.index(p) for p in s.pools]) for s in splits],
                     n_mirrors=len(mirror_sites(config.listeners.values())))
    for pool_index, pool in enumerate(config.pools.values()):
        for index, b in enumerate(pool.backends):
            shm.set_backend(pool_index, index, b.host, b.port, b.name, b.weight, b.backup)
    shm.rebuild_changed()
    # the config's prefixes; the supervisor publishes its runtime changes over them
    for index, acl in enumerate(config.acls.values()):
        acl.entries.publish(shm, index)
    # the keys files as read with the config; `lb key` publishes its changes
    # over them (JWT: the JWKS files, which lb/control/jwks.py watches)
    for index, auth in enumerate(config.auth.values()):
        if auth.type == "jwt":
            shm.auth_publish_blob(index, jwks_pack(auth.jwt_keys), len(auth.jwt_keys))
        else:
            shm.auth_publish(index, auth.keys)
    # the config's weights, laid out afresh; the supervisor publishes the
    # layout in force over them (lb.control.split.apply_state)
    for index, split in enumerate(splits):
        split_publish(shm, index, list(split.weights), layout.initial(split.weights))
    return shm


def pool_index(config, name: str) -> int:
    return list(config.pools).index(name)


def cache_path(name: str, pid: int | None = None) -> str:
    return f"/dev/shm/lb-{pid or os.getpid()}-cache-{name}.shm"


def caches_for_config(config, running: dict | None = None) -> dict:
    """name -> CacheShm for every [caches.NAME]: the running one when its
    size is unchanged (a reload keeps what is stored; a changed
    max_object_size applies in place), else a new region. The file is
    unlinked once mapped: the workers inherit the mapping by fork, and the
    memory goes with the last process that maps it, however lb ends."""
    running = running or {}
    out = {}
    for name, cache in config.caches.items():
        region = running.get(name)
        if region is None or region.requested != cache.size:
            path = cache_path(name)
            region = CacheShm.create(path, cache.size, cache.max_object_size)
            region.unlink()
            region.requested = cache.size
        else:
            region.set_max_object(cache.max_object_size)
        region.set_key(cache)
        out[name] = region
    return out
