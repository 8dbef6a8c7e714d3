"""Building the shared-memory region of an instance from its config.

The layout is declared once, in the compiled module: `REGIONS` in
lb/fastpath/shm.pxi lists every region in order with its one writer (re-exported
here), and `lb._fastpath.Shm` holds every accessor. This module only decides
sizes and fills the region from a parsed config.
"""

from __future__ import annotations

import logging
import os
import re

from lb._fastpath import DISK_LOCK_WAIT, REGIONS, CacheShm, DiskTier, Shm, limit_spec, mirror_sites, split_publish  # noqa: F401 (REGIONS: the layout, for readers of this module)
from lb import splits as layout
from lb.config.acls import access_rules
from lb.config.jwks import pack as jwks_pack
from lb.config.splits import config_splits

log = logging.getLogger("lb")

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


_REGION_NAME = re.compile(r"lb-(\d+)(?:-\d+)?\.shm")


def remove_stale_regions(directory: str = "/dev/shm") -> int:
    """Unlink the regions of supervisors that are gone (killed before they
    could remove theirs): each holds memory until it is removed, and its pid
    comes round again, so that tools would find a dead instance's figures
    under a live one's name. A file named for this process's own pid is
    stale too: it has created none yet. Returns how many went."""
    removed = 0
    for entry in os.listdir(directory):
        m = _REGION_NAME.fullmatch(entry)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and process_alive(pid):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove the stale region %s: %s", entry, e.strerror)
    return removed


def process_alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


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
    memory goes with the last process that maps it, however lb ends.

    A cache with a disk tier has its DiskTier attached (region.disk); the
    memory region takes the disk's hash seed, so a region made before the
    disk was (a reload that adds one) is made anew."""
    running = running or {}
    out = {}
    for name, cache in config.caches.items():
        region = running.get(name)
        old_disk = region.disk if region is not None else None
        disk = _disk_for(name, cache, old_disk, reload=bool(running))
        if region is None or region.requested != cache.size or disk is not old_disk:
            path = cache_path(name)
            region = CacheShm.create(path, cache.size, cache.max_object_size, disk.seed if disk is not None else 0)
            region.unlink()
            region.requested = cache.size
        else:
            region.set_max_object(cache.max_object_size)
        region.set_key(cache)
        if disk is not None:
            disk.region.set_key(cache)   # its purge and list key URLs as the memory tier does
            disk.attach(region)
        out[name] = region
    return out


def _disk_for(name: str, cache, running, reload: bool):
    """The cache's DiskTier: the running one for the same file (a size
    changed by a reload takes effect at the next start: the workers of the
    old generation write the file as it is laid out), else the file opened.
    A start waits for an lb before it to let go of the file; a reload does
    not (another lb holds it: the reload is refused at once)."""
    if not cache.disk:
        return None
    if running is not None and running.path == cache.disk:
        if running.size != cache.disk_size:
            log.warning("caches.%s.disk_size: the disk tier keeps %d bytes until lb restarts", name, running.size)
        return running
    try:
        disk = DiskTier.open(cache.disk, cache.disk_size, cache.max_object_size, 0.0 if reload else DISK_LOCK_WAIT)
    except (OSError, ValueError) as e:
        raise OSError(f"caches.{name}.disk: {e}") from None
    if disk.opened.startswith("kept"):
        log.info("cache %s: disk tier %s %s: %d objects, %d dropped as not whole", name, cache.disk, disk.opened,
                 disk.kept, disk.dropped)
    elif disk.opened == "new":
        log.info("cache %s: disk tier %s made (%d bytes)", name, cache.disk, cache.disk_size)
    else:
        log.warning("cache %s: disk tier %s made anew: %s", name, cache.disk, disk.opened)
    return disk


def close_disks(caches: dict) -> None:
    """A clean stop, every worker gone: each disk tier takes what its memory
    tier holds, then is written out and marked clean."""
    for name, region in caches.items():
        disk = region.disk
        if disk is None:
            continue
        try:
            n = disk.flush(region)
            disk.close()
            log.info("cache %s: disk tier written (%d more objects from memory)", name, n)
        except OSError as e:
            log.warning("cache %s: disk tier not closed cleanly: %s", name, e)
