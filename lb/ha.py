"""High availability with the network's own engines (docs/ha.md): the
keepalived config rendered from [ha], the health file the supervisor keeps
for keepalived's track_file, the kernel settings a node needs, and the
fingerprint of a pool's Maglev table that lets nodes be compared.

Nothing here runs per connection: the supervisor evaluates the node's health
on its 100 ms tick from what is already in shared memory, and writes the file
only when the verdict changes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import socket
import time

log = logging.getLogger("lb")

# The health file holds one number, as keepalived's track_file reads it
# (rendered with `weight 1`: the number is added to the VRRP priority):
#   0     healthy;
#   -253  drained: the priority drops to keepalived's floor of 1, below any
#         peer, so a peer takes the VIPs over while this node still holds
#         them; the VIP never points at a node that has let it go;
#   -254  unhealthy: below -253 keepalived puts the instance in FAULT, and a
#         master gives the VIPs up at once with a priority-0 advert.
# Anything non-zero means "not serving" to a reader that only asks that.
HEALTHY = 0
DRAINED = -253
UNHEALTHY = -254
# A worker loop stamps its heartbeat at least once a second (its longest
# timer); three missed beats mean it is not serving.
HEARTBEAT_STALE_MS = 3000
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78  # linux/in6.h; not exported by the socket module


# ---- the health file ---------------------------------------------------------


class HealthFile:
    """The file keepalived's track_file watches (inotify). Written with write
    + rename, so a reader sees the old number or the new one, and only when
    the verdict changes: keepalived reacts to every write."""

    def __init__(self, path: str):
        self.path = path
        self.value: int | None = None
        self.reasons: tuple[str, ...] = ()
        self.changed_at = 0.0

    def set(self, reasons: list[str] | tuple[str, ...]) -> bool:
        """reasons: why the node should not hold the VIPs ("drained" alone
        hands them over gracefully; anything else is a fault)."""
        if not reasons:
            value = HEALTHY
        elif set(reasons) == {"drained"}:
            value = DRAINED
        else:
            value = UNHEALTHY
        self.reasons = tuple(reasons)
        if value == self.value:
            return False
        directory = os.path.dirname(self.path) or "."
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            os.makedirs(directory, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(f"{value}\n")
            os.chmod(tmp, 0o644)  # keepalived may read it as another user
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("ha: cannot write the health file %s: %s", self.path, e.strerror)
            return False
        if value:
            log.warning("ha: node unhealthy (%s): %s now says %d", "; ".join(reasons), self.path, value)
        elif self.value is not None:
            log.info("ha: node healthy again: %s now says 0", self.path)
        self.value = value
        self.changed_at = time.monotonic()
        return True

    def describe(self) -> dict:
        return {"path": self.path, "value": self.value, "healthy": self.value == HEALTHY,
                "reasons": list(self.reasons)}


def unhealthy_reasons(sup) -> list[str]:
    """Why this node should not hold the VIPs now; empty when it should.
    Reads only shared memory and the supervisor's own records."""
    reasons = []
    if sup.stopping:
        reasons.append("stopping")
    if getattr(sup, "node_drained", False):
        reasons.append("drained")
    gen = sup.gen
    if gen is None:
        return reasons + ["starting"]
    now_ms = time.monotonic() * 1000  # CLOCK_MONOTONIC, the workers' clock
    serving = 0
    for slot in gen.slots:
        if not slot.pid:
            continue
        w = gen.shm.worker_stats(slot.row)
        if w["pid"] == slot.pid and w["heartbeat_ms"] and now_ms - w["heartbeat_ms"] < HEARTBEAT_STALE_MS \
                and not w["stopping"]:
            serving += 1
    if not serving:
        reasons.append("no worker serving")
    if gen.config.ha.unhealthy_when_all_backends_down:
        for name, listener in gen.config.listeners.items():
            if listener.pool is not None and not _pool_has_usable(gen, listener.pool):
                reasons.append(f"listener {name}: every backend of pool {listener.pool} is down")
    return reasons


def _pool_has_usable(gen, pool: str) -> bool:
    pi = gen.pool_names.index(pool)
    for idx in gen.backends[pool].values():
        b = gen.shm.backend(pi, idx)
        if b["in_use"] and b["health"] == "up" and b["admin"] in ("ready", "drain") and b["weight"] > 0:
            return True
    return False


def active_connections(sup) -> int:
    """Client connections open on this node, every generation still running."""
    total = 0
    for child in sup.children.values():
        if child.row >= 0:
            total += max(0, child.gen.shm.worker_stats(child.row)["active"])
    return total


# ---- keepalived --------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:g}"


def render_keepalived(cfg, instance: str = "lb") -> str:
    """A complete keepalived.conf for this node from cfg.ha (mode vrrp)."""
    ha = cfg.ha
    if ha.mode != "vrrp":
        raise ValueError(f'ha.mode is "{ha.mode}": only "vrrp" renders a keepalived config')
    name = f"{instance}_{ha.virtual_router_id}"
    lines = [
        f"# keepalived.conf for lb, rendered by `lb ha render keepalived` from {cfg.source}",
        f"# (config sha256 {cfg.sha256[:12]}). Render it again after changing [ha];",
        "# do not edit: see docs/ha.md.",
        "",
        "global_defs {",
        # track_file needs no script, but keepalived refuses every notify or
        # track script it cannot run safely and only logs it: set the user and
        # the security check explicitly, so added scripts fail loudly
        # instead of being skipped.
        "    script_user root",
        "    enable_script_security",
        f"    router_id {name}",
        # a new master's gratuitous ARPs, at once and once more a second later:
        # clients and switches learn the VIP's new MAC without waiting for
        # their caches to expire
        "    vrrp_garp_master_delay 1",
        "    vrrp_garp_master_repeat 3",
        "    vrrp_garp_master_refresh 60",
        "}",
        "",
        "# lb's own verdict on this node (docs/ha.md, \"The health file\"), added to",
        "# the priority: 0 healthy; -253 drained (priority 1: a peer takes over",
        "# gracefully); -254 unhealthy (FAULT: the VIPs are given up at once).",
        f"vrrp_track_file {instance}_health {{",
        f"    file {ha.health_file}",
        "    weight 1",
        # until lb has written it, the file does not exist: count that as
        # unhealthy, so a node whose lb never started does not take the VIPs
        f"    init_file {UNHEALTHY}",
        "}",
        "",
        f"vrrp_instance {name} {{",
        # Every node starts as BACKUP: the priorities elect the master, and a
        # node that (re)starts never claims the VIPs before it has heard the
        # others.
        "    state BACKUP",
        f"    interface {ha.interface}",
        f"    virtual_router_id {ha.virtual_router_id}",
        f"    priority {ha.priority}",
        f"    version {ha.vrrp_version}",
        f"    advert_int {_seconds(ha.advert_interval)}",
    ]
    if not ha.preempt:
        lines.append("    nopreempt")
    elif ha.preempt_delay:
        lines.append(f"    preempt_delay {_seconds(ha.preempt_delay)}")
    if ha.peers:
        if ha.unicast_src:
            lines.append(f"    unicast_src_ip {ha.unicast_src}")
        lines.append("    unicast_peer {")
        lines += [f"        {peer}" for peer in ha.peers]
        lines.append("    }")
    if ha.auth:
        lines += ["    authentication {", "        auth_type PASS", f"        auth_pass {ha.auth}", "    }"]
    lines.append("    virtual_ipaddress {")
    lines += [f"        {vip.text}" for vip in ha.vips]
    lines.append("    }")
    lines += ["    track_file {", f"        {instance}_health weight 1", "    }", "}", ""]
    return "\n".join(lines)


# ---- kernel settings ---------------------------------------------------------


def _sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def _can_freebind(address: str) -> tuple[bool, str]:
    """Whether a socket can bind this address before the node holds it, as
    lb's listening sockets do (IP_FREEBIND)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        s.bind((address, 0))
        return True, "IP_FREEBIND"
    except OSError as e:
        return False, os.strerror(e.errno or errno.EINVAL)
    finally:
        s.close()


def kernel_checks(cfg) -> list[dict]:
    """Every setting this node needs for cfg.ha, each {"check", "ok", "detail",
    "fix"} (fix: the command that corrects it, or "" when ok)."""
    ha = cfg.ha
    if not ha.enabled:
        return []
    out: list[dict] = []

    def add(check: str, ok: bool, detail: str, fix: str = "") -> None:
        out.append({"check": check, "ok": ok, "detail": detail, "fix": "" if ok else fix})

    links = _links()
    for iface in dict.fromkeys([ha.interface, *(v.interface for v in ha.vips)]):
        state = links.get(iface) if links is not None else None
        if links is None:
            add(f"interface {iface}", False, "cannot list the interfaces (pyroute2)", "")
        elif state is None:
            add(f"interface {iface}", False, "does not exist", f"check ha.interface and ha.vips; `ip link` lists them")
        else:
            add(f"interface {iface}", state == "up", f"is {state}", f"ip link set dev {iface} up")
    if ha.unicast_src and links is not None and ha.interface in links:
        held = _addresses(ha.interface)
        add(f"unicast_src {ha.unicast_src} on {ha.interface}", ha.unicast_src in held,
            "present" if ha.unicast_src in held else f"not an address of {ha.interface} ({', '.join(held) or 'none'})",
            f"ip addr add {ha.unicast_src}/PREFIX dev {ha.interface}, or correct ha.unicast_src")
    for vip in ha.vips:
        ok, how = _can_freebind(vip.address)
        fix = ("sysctl -w net.ipv6.ip_nonlocal_bind=1" if ":" in vip.address
               else "sysctl -w net.ipv4.ip_nonlocal_bind=1")
        add(f"bind {vip.address} before holding it", ok,
            f"lb's listening sockets use {how}" if ok else f"IP_FREEBIND refused: {how}", fix)
    if any(":" not in v.address for v in ha.vips):
        # the kernel answers ARP for the VIP on the interface that holds it
        # only (arp_ignore 0/1 both do); arp_ignore > 1 would leave the VIP
        # silent after a failover
        ignore = _sysctl(f"net.ipv4.conf.{ha.interface}.arp_ignore")
        add(f"net.ipv4.conf.{ha.interface}.arp_ignore", ignore in (None, "0", "1"),
            f"is {ignore}", f"sysctl -w net.ipv4.conf.{ha.interface}.arp_ignore=0")
    keepalived = shutil.which("keepalived") or next(
        (p for p in ("/usr/sbin/keepalived", "/sbin/keepalived") if os.path.exists(p)), None)
    add("keepalived installed", keepalived is not None, keepalived or "not found",
        "apt-get install keepalived (or dnf install keepalived)")
    directory = os.path.dirname(ha.health_file)
    writable = os.access(directory, os.W_OK) if os.path.isdir(directory) else os.access(
        os.path.dirname(directory) or "/", os.W_OK)
    add(f"health file directory {directory}", writable,
        "writable" if writable else "lb cannot create the health file there",
        f"mkdir -p {directory} (the lb unit's RuntimeDirectory=lb creates /run/lb)")
    return out


def _links() -> dict[str, str] | None:
    """Interface name -> "up" or "down" in this network namespace."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return None
    try:
        with IPRoute() as ipr:
            out = {}
            for link in ipr.get_links():
                up = bool(link["flags"] & 1)  # IFF_UP
                out[link.get_attr("IFLA_IFNAME")] = "up" if up else "down"
            return out
    except OSError:
        return None


def _addresses(iface: str) -> list[str]:
    """The addresses of one interface in this network namespace."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=iface)
            return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index[0])] if index else []
    except (ImportError, OSError):
        return []


def held_vips(cfg) -> list[str]:
    """The VIPs this node holds now (its interfaces' addresses)."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()}
    except (ImportError, OSError):
        return []
    return [v.address for v in cfg.ha.vips if v.address in have]


# ---- Maglev fingerprints -----------------------------------------------------


def fingerprint(kind: str, size: int, names_by_slot: list[str | None]) -> str:
    """sha256 over the table as backend names: slot order on a node and the
    order of its config do not matter, only which backend each entry maps to."""
    h = hashlib.sha256(f"lb-{kind}-v1 {size}\n".encode())
    for name in names_by_slot:
        h.update(b"-\n" if name is None else name.encode() + b"\n")
    return h.hexdigest()


def config_fingerprint(pool) -> dict:
    """The fingerprint of a pool as its config builds it, every backend up."""
    if pool.algorithm == "maglev":
        # as the supervisor builds it: the primaries; the backups only when no
        # primary can take traffic
        backends = [b for b in pool.backends if not b.backup and b.weight > 0] or \
                   [b for b in pool.backends if b.backup and b.weight > 0]
        from lb._fastpath import maglev_table

        table = maglev_table([b.name for b in backends], [b.weight for b in backends], pool.table_size)
        names = [None if i < 0 else backends[i].name for i in table]
        return {"pool": pool.name, "algorithm": "maglev", "table_size": pool.table_size,
                "backends": len(backends), "fingerprint": fingerprint("maglev", pool.table_size, names)}
    return _weights_fingerprint(pool.name, pool.algorithm, [(b.name, b.weight) for b in pool.backends if b.weight > 0])


def _weights_fingerprint(pool: str, algorithm: str, entries: list[tuple[str, int]]) -> dict:
    # no table to compare: the weights are what spreads the traffic
    names = [f"{name}={weight}" for name, weight in sorted(entries)]
    return {"pool": pool, "algorithm": algorithm, "table_size": 0, "backends": len(entries),
            "fingerprint": fingerprint(algorithm, 0, names)}


def live_fingerprint(gen, pool: str) -> dict:
    """The fingerprint of the table a daemon's workers read now."""
    pi = gen.pool_names.index(pool)
    p = gen.config.pools[pool]
    slot_names = {idx: name for name, idx in gen.backends[pool].items()}
    if p.algorithm == "maglev":
        table = gen.shm.table(pi)
        names = [None if i < 0 else slot_names.get(i) for i in table]
        in_table = len({n for n in names if n is not None})
        return {"pool": pool, "algorithm": "maglev", "table_size": len(table), "backends": in_table,
                "fingerprint": fingerprint("maglev", len(table), names)}
    entries = []
    for idx, name in slot_names.items():
        b = gen.shm.backend(pi, idx)
        if b["in_use"] and b["weight"] > 0:
            entries.append((name, b["weight"]))
    return _weights_fingerprint(pool, p.algorithm, entries)
