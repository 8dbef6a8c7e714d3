"""High availability with the network's own engines (docs/ha.md): the
keepalived and BIRD configs rendered from [ha], the health file the
supervisor keeps for keepalived's track_file, the VIPs and routes it keeps
for BIRD in BGP mode, the kernel settings a node needs, and the fingerprint
of a pool's Maglev table that lets nodes be compared.

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
RTPROT_STATIC = 4  # the announce routes' origin: BIRD's `learn` takes any but "kernel" and its own


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


# How long, after this node has given its VIPs up, clients may still reach
# it. VRRP: a peer takes over after at most 3 adverts and sends gratuitous
# ARPs. BGP: the withdrawal is an UPDATE to each router, then a change of
# its FIB; milliseconds, with room for a loaded router.
SETTLE_ADVERTS = 3
SETTLE_MIN = 0.2
SETTLE_BGP = 0.5


def handover_settle(ha_settings) -> float:
    if ha_settings.mode == "bgp":
        return SETTLE_BGP
    if ha_settings.mode == "vrrp":
        return max(SETTLE_MIN, SETTLE_ADVERTS * ha_settings.advert_interval)
    return 0.0


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


# ---- BIRD (BGP) ---------------------------------------------------------------


def _families(ha) -> list[int]:
    return sorted({4 if ":" not in v.address else 6 for v in ha.vips})


def _host_routes(ha, family: int) -> str:
    return ", ".join(f"{v.address}/{v.prefixlen}" for v in ha.vips if (":" in v.address) == (family == 6))


def render_bird(cfg) -> str:
    """A complete bird.conf (BIRD 2) for this node from cfg.ha (mode bgp).

    BIRD learns what to announce from the kernel table ha.announce_table,
    where the supervisor keeps one route per VIP while the node is healthy
    and in service (Announcer). A deleted route reaches BIRD as a netlink
    event, not at its next scan, so the withdrawal leaves at once; the state
    lives in the kernel, so a BIRD restart finds it as lb left it, and lb
    needs no access to BIRD's control socket."""
    ha = cfg.ha
    if ha.mode != "bgp":
        raise ValueError(f'ha.mode is "{ha.mode}": only "bgp" renders a BIRD config')
    bfd_ms = max(1, round(ha.bfd_interval * 1000))
    lines = [
        f"# bird.conf (BIRD 2) for lb, rendered by `lb ha render bird` from {cfg.source}",
        f"# (config sha256 {cfg.sha256[:12]}). Render it again after changing [ha];",
        "# do not edit: see docs/ha.md.",
        "",
        f"router id {ha.router_id};",
        "",
    ]
    for fam in _families(ha):
        lines.append(f"ipv{fam} table lb_vips{fam};")
    lines += ["", "protocol device {", "}", ""]
    lines += [
        f"# lb's verdict on this node: a route per VIP in kernel table {ha.announce_table} while",
        "# it is healthy and in service, none when it is unhealthy, drained or stopped",
        "# (docs/ha.md, \"Announcing\"). BIRD hears each change from netlink at once.",
    ]
    for fam in _families(ha):
        lines += [
            f"protocol kernel lb_vips{fam}_from_lb {{",
            f"    kernel table {ha.announce_table};",
            "    learn;",
            # netlink events carry every change at once; the scan only
            # re-reads the table in case one was lost
            "    scan time 10;",
            f"    ipv{fam} {{",
            f"        table lb_vips{fam};",
            f"        import where net ~ [ {_host_routes(ha, fam)} ];",
            "        export none;",
            "    };",
            "}",
            "",
        ]
    if ha.bfd:
        lines += [
            "protocol bfd lb_bfd {",
            "    interface \"*\" {",
            f"        min rx interval {bfd_ms} ms;",
            f"        min tx interval {bfd_ms} ms;",
            f"        multiplier {ha.bfd_multiplier};",
            "    };",
            "}",
            "",
        ]
    for i, neighbor in enumerate(ha.neighbors, 1):
        fam = 6 if ":" in neighbor else 4
        lines += [
            f"protocol bgp lb_router{i} {{",
            f"    local as {ha.local_as};",
            f"    neighbor {neighbor} as {ha.peer_as};",
            f"    hold time {_seconds(round(ha.hold_time))};",
            # a crashed node's routes must go at once: no peer may keep them
            # as stale while waiting for this node to come back
            "    graceful restart off;",
            # back in service quickly after a fault, not after BIRD's 60 s
            "    connect retry time 5;",
            "    error wait time 5, 60;",
        ]
        if ha.bfd:
            lines.append("    bfd on;")
        if fam in _families(ha):
            lines += [
                f"    ipv{fam} {{",
                f"        table lb_vips{fam};",
                "        import none;",
                f"        export where net ~ [ {_host_routes(ha, fam)} ];",
                # the routers send the VIP's traffic to this node's own address
                "        next hop self;",
                "    };",
            ]
        lines += ["}", ""]
    return "\n".join(lines)


def _vip_network(vip) -> tuple[str, int, int]:
    family = socket.AF_INET6 if ":" in vip.address else socket.AF_INET
    return vip.address, vip.prefixlen, family


class Announcer:
    """BGP mode, run by the supervisor: the VIPs on lo, and the routes in
    ha.announce_table that BIRD announces (render_bird). Netlink is spoken
    only when something changes: on start, reload, health change and stop.

    The VIPs stay on lo while the node is drained or unhealthy, so
    connections that still reach it finish; only the announcement goes."""

    def __init__(self):
        self.ha = None
        self.announced: bool | None = None
        self.added: set[tuple[str, int]] = set()  # the VIPs lb put on lo itself, removed at stop
        self.error = ""

    def configure(self, ha) -> None:
        """Take a (new) [ha]: VIPs dropped from it are withdrawn and taken
        off lo; new ones are put on lo and announced with the others."""
        old = self.ha
        self.ha = ha if ha.mode == "bgp" else None
        new_vips = set(self.ha.vips) if self.ha else set()
        if old is not None:
            gone = [v for v in old.vips if v not in new_vips]
            self._routes(old, gone, False)
            if self.ha is None or old.announce_table != self.ha.announce_table:
                self._routes(old, [v for v in old.vips if v in new_vips], False)
            self._remove_addresses(gone)
        if self.ha is None:
            self.announced = None
            return
        if self.ha.manage_sysctls and any(":" not in v.address for v in self.ha.vips):
            for name, _now, want, _why in bgp_sysctl_problems():
                _set_sysctl(name, want)
        self._add_addresses(self.ha.vips)
        # announced again at the next sync, as the health says
        announce, self.announced = self.announced, None
        if announce is not None:
            self.sync(announce)

    def sync(self, announce: bool) -> None:
        if self.ha is None or announce == self.announced:
            return
        if self._routes(self.ha, self.ha.vips, announce):
            self.announced = announce
            self.error = ""
            log.log(logging.INFO if announce else logging.WARNING, "ha: %s %s (kernel table %d, read by BIRD)",
                    "announcing" if announce else "withdrew", ", ".join(v.address for v in self.ha.vips),
                    self.ha.announce_table)

    def close(self) -> None:
        """At stop, after the workers have finished: withdraw, then take the
        VIPs lb added off lo."""
        if self.ha is None:
            return
        self._routes(self.ha, self.ha.vips, False)
        self.announced = False
        self._remove_addresses(self.ha.vips)

    def _routes(self, ha, vips, present: bool) -> bool:
        try:
            from pyroute2 import IPRoute
            from pyroute2.netlink.exceptions import NetlinkError
        except ImportError:
            self._fail("pyroute2 is not installed")
            return False
        ok = True
        try:
            ipr = IPRoute()
        except OSError as e:
            self._fail(f"cannot open a netlink socket: {e.strerror}")
            return False
        with ipr:
            for vip in vips:
                address, prefixlen, family = _vip_network(vip)
                # a blackhole: the table is never used for forwarding (no
                # rule points at it), it only tells BIRD what to announce
                spec = dict(dst=address, dst_len=prefixlen, family=family, table=ha.announce_table,
                            type="blackhole", proto=RTPROT_STATIC)
                try:
                    ipr.route("replace" if present else "del", **spec)
                except NetlinkError as e:
                    if not present and e.code in (errno.ESRCH, errno.ENOENT):
                        continue  # not there: withdrawn already
                    self._fail(f"cannot {'add' if present else 'delete'} the route {address}/{prefixlen} in "
                               f"table {ha.announce_table}: {os.strerror(e.code)}")
                    ok = False
        return ok

    def _add_addresses(self, vips) -> None:
        try:
            from pyroute2 import IPRoute
            from pyroute2.netlink.exceptions import NetlinkError
        except ImportError:
            self._fail("pyroute2 is not installed")
            return
        try:
            ipr = IPRoute()
        except OSError as e:
            self._fail(f"cannot open a netlink socket: {e.strerror}")
            return
        with ipr:
            index = ipr.link_lookup(ifname="lo")[0]
            if not ipr.get_links(index)[0]["flags"] & 1:  # IFF_UP
                # new network namespaces start with lo down, and a down lo
                # delivers nothing, VIP or not
                try:
                    ipr.link("set", index=index, state="up")
                except NetlinkError as e:
                    self._fail(f"cannot bring lo up: {os.strerror(e.code)}")
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
            for vip in vips:
                address, prefixlen, family = _vip_network(vip)
                if (address, prefixlen) in have:
                    continue
                try:
                    ipr.addr("add", index=index, address=address, prefixlen=prefixlen, family=family)
                    self.added.add((address, prefixlen))
                    log.info("ha: %s/%d added to lo", address, prefixlen)
                except NetlinkError as e:
                    self._fail(f"cannot add {address}/{prefixlen} to lo: {os.strerror(e.code)}")

    def _remove_addresses(self, vips) -> None:
        mine = [v for v in vips if (v.address, v.prefixlen) in self.added]
        if not mine:
            return
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            ipr = IPRoute()
        except OSError as e:
            self._fail(f"cannot open a netlink socket: {e.strerror}")
            return
        with ipr:
            index = ipr.link_lookup(ifname="lo")[0]
            for vip in mine:
                address, prefixlen, family = _vip_network(vip)
                self.added.discard((address, prefixlen))
                try:
                    ipr.addr("del", index=index, address=address, prefixlen=prefixlen, family=family)
                    log.info("ha: %s/%d removed from lo", address, prefixlen)
                except NetlinkError as e:
                    if e.code != errno.EADDRNOTAVAIL:
                        self._fail(f"cannot remove {address}/{prefixlen} from lo: {os.strerror(e.code)}")

    def _fail(self, message: str) -> None:
        # a failed announce is retried every tick: say it once, not ten
        # times a second
        if message != self.error:
            log.error("ha: %s (lb ha check shows what the node needs)", message)
        self.error = message

    def describe(self) -> dict:
        if self.ha is None:
            return {}
        return {"announced": bool(self.announced), "table": self.ha.announce_table,
                "routes": announced_routes(self.ha), "error": self.error}


def announced_routes(ha) -> list[str]:
    """The VIP routes in ha.announce_table now, as BIRD reads them."""
    try:
        from pyroute2 import IPRoute

        out = []
        with IPRoute() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=family, table=ha.announce_table):
                    if r.get_attr("RTA_TABLE", r["table"]) == ha.announce_table and r.get_attr("RTA_DST"):
                        out.append(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
        wanted = {f"{v.address}/{v.prefixlen}" for v in ha.vips}
        return sorted(r for r in out if r in wanted)
    except (ImportError, OSError):
        return []


_BGP_SYSCTLS = (
    ("arp_ignore", "1", "answer ARP only for addresses of the interface asked: the VIP on lo stays silent on "
                        "the LAN, so no neighbour sends the VIP's traffic here past the routers"),
    ("arp_announce", "2", "never give the VIP as the source of this node's ARP requests"),
    ("rp_filter", "2", "loose reverse-path filtering: a client's packets may come in through another uplink "
                       "than the one its replies leave by, and strict mode (1) drops them"),
)


def bgp_sysctl_problems() -> list[tuple[str, str | None, str, str]]:
    """(sysctl, value now, value needed, why) for each IPv4 setting BGP mode
    needs and the node lacks. For these three the kernel applies the larger
    of `all` and the interface's own value, so setting `all` fixes every
    interface, present and future."""
    out = []
    for key, want, why in _BGP_SYSCTLS:
        name = f"net.ipv4.conf.all.{key}"
        now = _sysctl(name)
        if key == "rp_filter":
            # off (0) or loose (2) both let the traffic in; strict (1)
            # anywhere does not
            strict = [i for i in _iface_names() if _sysctl(f"net.ipv4.conf.{i}.rp_filter") == "1"]
            ok = now == "2" or (now == "0" and not strict)
            if not ok and now == "0":
                why += f" (strict on {', '.join(strict)})"
        else:
            ok = now is not None and int(now) >= int(want)
        if not ok:
            out.append((name, now, want, why))
    return out


def _iface_names() -> list[str]:
    try:
        return sorted(os.listdir("/proc/sys/net/ipv4/conf"))
    except OSError:
        return []


def _set_sysctl(name: str, value: str) -> None:
    try:
        with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
            f.write(value)
        log.info("ha: sysctl %s = %s", name, value)
    except OSError as e:
        log.error("ha: cannot set %s = %s: %s (lb ha check shows the fix)", name, value, e.strerror)


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

    if ha.mode == "bgp":
        _bgp_checks(cfg, add)
        return out
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


def _bgp_checks(cfg, add) -> None:
    ha = cfg.ha
    links = _links()
    if links is None:
        add("interface lo", False, "cannot list the interfaces (pyroute2)", "")
    else:
        state = links.get("lo", "missing")
        add("interface lo", state == "up", f"is {state}", "ip link set dev lo up")
    held = set(_addresses("lo"))
    for vip in ha.vips:
        here = vip.address in held
        add(f"VIP {vip.address} on lo", here, "present" if here else "absent (lb adds it when it starts)",
            f"ip addr add {vip.address}/{vip.prefixlen} dev lo, or start lb")
    if any(":" not in v.address for v in ha.vips):
        problems = {p[0]: p for p in bgp_sysctl_problems()}
        for key, want, _why in _BGP_SYSCTLS:
            name = f"net.ipv4.conf.all.{key}"
            if name in problems:
                _, now, want, why = problems[name]
                add(name, False, f"is {now}, needs {want}: {why}",
                    f"sysctl -w {name}={want}" + ("" if ha.manage_sysctls else
                                                  " (or set ha.manage_sysctls = true: lb sets it at start)"))
            else:
                add(name, True, f"is {_sysctl(name)}")
    bird = shutil.which("bird") or next((p for p in ("/usr/sbin/bird", "/sbin/bird") if os.path.exists(p)), None)
    add("BIRD installed", bird is not None, bird or "not found", "apt-get install bird2 (or dnf install bird)")


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
