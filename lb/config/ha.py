"""The [ha] section: several lb nodes behind virtual IPs (docs/ha.md).

lb does not run the failover itself: keepalived (VRRP) moves the VIPs, or
BIRD (BGP) announces them to the routers, from a config `lb ha render
keepalived|bird` writes out of this section; lb tells the engine its own
health (lb.ha): keepalived through the health file, BIRD through the routes
lb keeps in a kernel table while the node is healthy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from lb.config.values import ConfigError, Context, Table, check_absolute_path, format_seconds, string_list

NAMED = False
KEYS = (
    "mode", "vips", "health_file", "unhealthy_when_all_backends_down",
    "interface", "virtual_router_id", "priority", "advert_interval", "vrrp_version",
    "unicast_src", "peers", "auth", "preempt", "preempt_delay",
    "local_as", "peer_as", "neighbors", "router_id", "bfd", "bfd_interval", "bfd_multiplier",
    "hold_time", "announce_table", "manage_sysctls",
)
MODES = ("vrrp", "bgp", "none")
# Keys that only mean something in one mode: set in another they are errors,
# not silently ignored (a forgotten mode = "vrrp" would otherwise go unseen).
VRRP_KEYS = KEYS[4:14]
BGP_KEYS = KEYS[14:]
MAX_AS = 2**32 - 1  # 4-byte AS numbers (RFC 6793)
# Linux routing tables 253-255 are default/main/local, 0 is unspecified.
RESERVED_TABLES = (0, 253, 254, 255)
IFNAMSIZ = 15  # interface names are char[16], NUL included
# VRRPv3 counts the advert interval in centiseconds, 12 bits (RFC 5798 5.2.7);
# VRRPv2 in whole seconds, 8 bits (RFC 3768 5.3.7).
V3_MAX_ADVERT = 40.95
V2_MAX_ADVERT = 255
MAX_AUTH_BYTES = 8  # keepalived's auth_pass is cut to 8 characters
_VIP = re.compile(r"(\S+)\s+dev\s+(\S+)")
_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]+")


@dataclasses.dataclass(frozen=True)
class Vip:
    address: str  # "10.0.0.100"
    prefixlen: int
    interface: str

    @property
    def text(self) -> str:
        """As keepalived's virtual_ipaddress and the config write it."""
        return f"{self.address}/{self.prefixlen} dev {self.interface}"


@dataclasses.dataclass(frozen=True)
class HaSettings:
    mode: str = "none"
    vips: tuple[Vip, ...] = ()
    health_file: str = "/run/lb/health"
    unhealthy_when_all_backends_down: bool = True
    interface: str = ""  # the VRRP adverts' interface; default: the first VIP's
    virtual_router_id: int = 0
    priority: int = 100
    advert_interval: float = 1.0
    vrrp_version: int = 2
    unicast_src: str = ""
    peers: tuple[str, ...] = ()  # unicast peers; empty = multicast
    auth: str = ""  # VRRPv2 PASS authentication; "" = none
    preempt: bool = True
    preempt_delay: float = 0.0
    # BGP (BIRD)
    local_as: int = 0
    peer_as: int = 0
    neighbors: tuple[str, ...] = ()
    router_id: str = ""
    bfd: bool = True
    bfd_interval: float = 0.1
    bfd_multiplier: int = 3
    hold_time: float = 9.0
    announce_table: int = 4242
    manage_sysctls: bool = True

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def vip_addresses(self) -> set[str]:
        return {v.address for v in self.vips}


def parse(t: Table, ctx: Context) -> HaSettings:
    mode = t.choice("mode", "none", MODES)
    vips = _vips(t, mode)
    health_file = check_absolute_path(t.string("health_file", "/run/lb/health"), t.path_of("health_file"))
    unhealthy = t.boolean("unhealthy_when_all_backends_down", True)
    for key in VRRP_KEYS if mode != "vrrp" else ():
        if t.has(key):
            raise ConfigError(t.path_of(key), f'a VRRP setting, but ha.mode is "{mode}" (set mode = "vrrp")')
    for key in BGP_KEYS if mode != "bgp" else ():
        if t.has(key):
            raise ConfigError(t.path_of(key), f'a BGP setting, but ha.mode is "{mode}" (set mode = "bgp")')
    if mode == "none":
        return HaSettings(mode=mode, vips=vips, health_file=health_file, unhealthy_when_all_backends_down=unhealthy)
    if mode == "bgp":
        return _parse_bgp(t, vips, health_file, unhealthy)
    if not vips:
        raise ConfigError(t.path_of("vips"), 'VRRP needs at least one VIP, e.g. ["10.0.0.100/24 dev eth0"]')
    interface = t.string("interface", "") or vips[0].interface
    _check_ifname(interface, t.path_of("interface"))
    advert = t.duration("advert_interval", "1s", minimum=0.01)
    fractional = abs(advert - round(advert)) > 1e-9
    family = ipaddress.ip_address(vips[0].address).version
    version = t.integer("vrrp_version", 3 if fractional or family == 6 else 2, 2, 3)
    if version == 2 and family == 6:
        raise ConfigError(t.path_of("vrrp_version"), "IPv6 VIPs need VRRP version 3 (version 2 is IPv4 only)")
    if version == 2 and fractional:
        raise ConfigError(t.path_of("advert_interval"),
                          f"{format_seconds(advert)} is fractional: VRRP version 2 counts whole seconds "
                          "(leave ha.vrrp_version unset or set it to 3)")
    limit = V3_MAX_ADVERT if version == 3 else V2_MAX_ADVERT
    if advert > limit:
        raise ConfigError(t.path_of("advert_interval"), f"at most {limit}s in VRRP version {version}")
    if version == 3 and abs(advert * 100 - round(advert * 100)) > 1e-6:
        raise ConfigError(t.path_of("advert_interval"), "VRRP version 3 counts centiseconds: use a multiple of 10ms")
    auth = t.string("auth", "")
    if auth and version == 3:
        raise ConfigError(t.path_of("auth"), "VRRP version 3 has no authentication (RFC 5798 removed it); "
                                             "drop ha.auth, or use whole-second adverts with vrrp_version = 2")
    if len(auth.encode()) > MAX_AUTH_BYTES:
        raise ConfigError(t.path_of("auth"), f"at most {MAX_AUTH_BYTES} bytes (VRRPv2 simple password)")
    peers = []
    for text, path in string_list(t, "peers", [], "a list of IP addresses"):
        ip = _ip(text, path)
        if ip.version != family:
            raise ConfigError(path, f"IPv{ip.version} peer, but the VIPs are IPv{family}")
        if text in peers:
            raise ConfigError(path, f"{text} is listed twice")
        peers.append(str(ip))
    for v in vips:
        if ipaddress.ip_address(v.address).version != family:
            raise ConfigError(t.path_of("vips"), "one VRRP instance carries VIPs of one address family")
    unicast_src = t.string("unicast_src", "")
    if unicast_src:
        ip = _ip(unicast_src, t.path_of("unicast_src"))
        if not peers:
            raise ConfigError(t.path_of("unicast_src"), "only used with ha.peers (unicast); without peers "
                                                        "VRRP is multicast")
        if str(ip) in peers:
            raise ConfigError(t.path_of("unicast_src"), "is also in ha.peers: list the other nodes only")
        unicast_src = str(ip)
    return HaSettings(
        mode=mode, vips=vips, health_file=health_file, unhealthy_when_all_backends_down=unhealthy,
        interface=interface,
        virtual_router_id=_router_id(t),
        priority=t.integer("priority", 100, 1, 254),
        advert_interval=advert, vrrp_version=version,
        unicast_src=unicast_src, peers=tuple(peers), auth=auth,
        preempt=t.boolean("preempt", True),
        preempt_delay=t.duration("preempt_delay", "0s"),
    )


def _parse_bgp(t: Table, vips: tuple[Vip, ...], health_file: str, unhealthy: bool) -> HaSettings:
    if not vips:
        raise ConfigError(t.path_of("vips"), 'BGP needs at least one VIP, e.g. ["10.0.0.100/32"]')
    local_as = _asn(t, "local_as")
    peer_as = _asn(t, "peer_as")
    neighbors: list[str] = []
    for text, path in string_list(t, "neighbors", [], "a list of IP addresses (the BGP routers)"):
        ip = str(_ip(text, path))
        if ip in neighbors:
            raise ConfigError(path, f"{ip} is listed twice")
        if ip in {v.address for v in vips}:
            raise ConfigError(path, f"{ip} is a VIP of this node, not a router")
        neighbors.append(ip)
    if not neighbors:
        raise ConfigError(t.path_of("neighbors"), 'required in BGP mode: the routers to announce the VIPs to, '
                                                  'e.g. ["10.0.0.1"]')
    families = {ipaddress.ip_address(n).version for n in neighbors}
    for i, v in enumerate(vips):
        family = ipaddress.ip_address(v.address).version
        if family not in families:
            # BIRD sends a route over a session of its own family: an IPv6
            # VIP over an IPv4-only session would need an IPv6 next hop the
            # session cannot give
            raise ConfigError(f"{t.path_of('vips')}[{i}]", f"an IPv{family} VIP needs an IPv{family} neighbor "
                                                           "in ha.neighbors to be announced to")
    if not t.has("router_id"):
        raise ConfigError(t.path_of("router_id"), "required in BGP mode: an IPv4 address unique to this node, "
                                                  "usually its own address towards the routers (BIRD would "
                                                  "otherwise pick one, possibly the VIP every node shares)")
    router_id = t.string("router_id")
    rid = _ip(router_id, t.path_of("router_id"))
    if rid.version != 4:
        raise ConfigError(t.path_of("router_id"), "a BGP router id is written as an IPv4 address")
    if str(rid) in {v.address for v in vips}:
        raise ConfigError(t.path_of("router_id"), "is a VIP: every node holds it, but the router id must be "
                                                  "unique to this node")
    table = t.integer("announce_table", 4242, 1, 2**32 - 1)
    if table in RESERVED_TABLES:
        raise ConfigError(t.path_of("announce_table"), f"table {table} is one the kernel routes with "
                                                       "(default/main/local): use a table of lb's own")
    hold = t.duration("hold_time", "9s", minimum=3)
    if hold != int(hold):
        raise ConfigError(t.path_of("hold_time"), "BGP counts the hold time in whole seconds")
    if hold > 65535:
        raise ConfigError(t.path_of("hold_time"), "at most 65535s (a 16-bit field of BGP's OPEN)")
    bfd_interval = t.duration("bfd_interval", "100ms", minimum=0.001)
    if bfd_interval > 60:
        raise ConfigError(t.path_of("bfd_interval"), "at most 60s")
    return HaSettings(
        mode="bgp", vips=vips, health_file=health_file, unhealthy_when_all_backends_down=unhealthy,
        local_as=local_as, peer_as=peer_as, neighbors=tuple(neighbors), router_id=str(rid),
        bfd=t.boolean("bfd", True), bfd_interval=bfd_interval,
        bfd_multiplier=t.integer("bfd_multiplier", 3, 1, 255),
        hold_time=hold, announce_table=table, manage_sysctls=t.boolean("manage_sysctls", True),
    )


def _asn(t: Table, key: str) -> int:
    if not t.has(key):
        raise ConfigError(t.path_of(key), f"required in BGP mode: an AS number, 1..{MAX_AS} "
                                          "(private: 64512-65534, 4200000000-4294967294)")
    return t.integer(key, 0, 1, MAX_AS)


def _router_id(t: Table) -> int:
    # No default: two clusters on one segment with the same id fight over
    # their VIPs.
    if not t.has("virtual_router_id"):
        raise ConfigError(t.path_of("virtual_router_id"), "required in VRRP mode (1..255, the same on every node "
                                                          "of the cluster, unique on the network segment)")
    return t.integer("virtual_router_id", 0, 1, 255)


def _vips(t: Table, mode: str) -> tuple[Vip, ...]:
    out: list[Vip] = []
    for text, path in string_list(t, "vips", [], 'a list of "ADDR/LEN dev IFACE"'):
        m = _VIP.fullmatch(text.strip())
        if mode == "bgp" and not m and "dev" not in text.split():
            # the VIP goes on lo in BGP mode: "dev lo" may be left out, and
            # the prefix length too
            addr = text.strip()
            if "/" not in addr:
                addr += "/128" if ":" in addr else "/32"
            m = _VIP.fullmatch(f"{addr} dev lo")
        if not m:
            raise ConfigError(path, f'{text!r}: expected "ADDR/LEN dev IFACE", e.g. "10.0.0.100/24 dev eth0"')
        try:
            iface = ipaddress.ip_interface(m[1] if "/" in m[1] else "")
        except ValueError:
            raise ConfigError(path, f"{m[1]!r} is not an address with its prefix length (ADDR/LEN)") from None
        _check_ifname(m[2], path)
        vip = Vip(str(iface.ip), iface.network.prefixlen, m[2])
        if mode == "bgp":
            host = iface.max_prefixlen
            if vip.prefixlen != host:
                raise ConfigError(path, f"BGP announces each VIP as a host route: write {vip.address}/{host} "
                                        "(or the address alone)")
            if vip.interface != "lo":
                raise ConfigError(path, f"in BGP mode lb puts the VIP on lo (the routers send its traffic here); "
                                        f"write {vip.address}/{host} dev lo, or the address alone")
        if any(v.address == vip.address for v in out):
            raise ConfigError(path, f"{vip.address} is listed twice")
        out.append(vip)
    return tuple(out)


def _check_ifname(name: str, path: str) -> None:
    if not _IFNAME.fullmatch(name) or len(name) > IFNAMSIZ:
        raise ConfigError(path, f"{name!r} is not an interface name (at most {IFNAMSIZ} characters)")


def _ip(text: str, path: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(path, f"{text!r} is not an IP address") from None
