"""The [ha] section: several lb nodes behind virtual IPs (docs/ha.md).

lb does not run the failover itself: keepalived (VRRP) moves the VIPs, from a
config `lb ha render keepalived` writes out of this section, and lb tells it
its own health through the health file (lb.ha). Only "vrrp" and "none" are
served by this build; "bgp" is a reserved spelling, refused by key path
until its BIRD rendering exists.
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
)
MODES = ("vrrp", "bgp", "none")
# What this build renders and serves; the rest are refused with a "not yet".
IMPLEMENTED_MODES = ("vrrp", "none")
# Keys that only mean something for VRRP: set in another mode they are errors,
# not silently ignored (a forgotten mode = "vrrp" would otherwise go unseen).
VRRP_KEYS = KEYS[4:]
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

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def vip_addresses(self) -> set[str]:
        return {v.address for v in self.vips}


def parse(t: Table, ctx: Context) -> HaSettings:
    mode = t.choice("mode", "none", MODES)
    if mode not in IMPLEMENTED_MODES:
        raise ConfigError(t.path_of("mode"), f"{mode!r} is not in this build yet (BGP announcements through BIRD "
                                             "come later); use \"vrrp\" or \"none\"")
    vips = _vips(t)
    health_file = check_absolute_path(t.string("health_file", "/run/lb/health"), t.path_of("health_file"))
    unhealthy = t.boolean("unhealthy_when_all_backends_down", True)
    if mode == "none":
        for key in VRRP_KEYS:
            if t.has(key):
                raise ConfigError(t.path_of(key), 'a VRRP setting, but ha.mode is "none" (set mode = "vrrp")')
        return HaSettings(mode=mode, vips=vips, health_file=health_file, unhealthy_when_all_backends_down=unhealthy)
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


def _router_id(t: Table) -> int:
    # No default: two clusters on one segment with the same id fight over
    # their VIPs.
    if not t.has("virtual_router_id"):
        raise ConfigError(t.path_of("virtual_router_id"), "required in VRRP mode (1..255, the same on every node "
                                                          "of the cluster, unique on the network segment)")
    return t.integer("virtual_router_id", 0, 1, 255)


def _vips(t: Table) -> tuple[Vip, ...]:
    out: list[Vip] = []
    for text, path in string_list(t, "vips", [], 'a list of "ADDR/LEN dev IFACE"'):
        m = _VIP.fullmatch(text.strip())
        if not m:
            raise ConfigError(path, f'{text!r}: expected "ADDR/LEN dev IFACE", e.g. "10.0.0.100/24 dev eth0"')
        try:
            iface = ipaddress.ip_interface(m[1] if "/" in m[1] else "")
        except ValueError:
            raise ConfigError(path, f"{m[1]!r} is not an address with its prefix length (ADDR/LEN)") from None
        _check_ifname(m[2], path)
        vip = Vip(str(iface.ip), iface.network.prefixlen, m[2])
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
