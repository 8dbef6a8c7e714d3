"""The pure-Python reference of an ACL's decision (lb/fastpath/acl.pxi), on the
standard library's ipaddress: the longest prefix covering an address decides;
"!prefix" excludes; an IPv4-mapped IPv6 address is looked up as its IPv4
address. Slow and obviously right: a dict of networks per prefix length."""

from __future__ import annotations

import ipaddress


class AclRef:
    def __init__(self, prefixes):
        # (version, prefix length) -> {network address as int: included}
        self.nets: dict[tuple[int, int], dict[int, bool]] = {}
        for text in prefixes:
            included = not text.startswith("!")
            net = ipaddress.ip_network(text.lstrip("!"), strict=True)
            if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
                net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
            self.nets.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = included
        self.lengths = {v: sorted((n for (ver, n) in self.nets if ver == v), reverse=True) for v in (4, 6)}

    def decide(self, address: str) -> tuple[bool, str | None]:
        """(in the ACL, the deciding network or None)."""
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        bits = ip.max_prefixlen
        value = int(ip)
        for plen in self.lengths[ip.version]:
            network = value & ~((1 << (bits - plen)) - 1) if plen else 0
            included = self.nets[(ip.version, plen)].get(network)
            if included is not None:
                return included, f"{ipaddress.ip_address(network)}/{plen}"
        return False, None

    def __contains__(self, address: str) -> bool:
        return self.decide(address)[0]
