"""The pure-Python reference of an ACL's decision (lb/fastpath/acl.pxi), on the
standard library's ipaddress: the longest prefix covering an address decides;
"!prefix" excludes; an IPv4-mapped IPv6 address is looked up as its IPv4
address. Slow and obviously right: a dict of networks per prefix length."""

from __future__ import annotations

import ipaddress
import random


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


# ---- the lists the tests and bench acl_lookup check it on ------------------------------------

def random_prefixes(rnd: random.Random, n: int, version: int) -> list[str]:
    """n distinct random prefixes, one in 20 an exclusion, lengths spread so
    that many nest (short ones hold longer ones)."""
    bits = 32 if version == 4 else 128
    lo, hi = (8, 32) if version == 4 else (16, 64)
    nets: dict[tuple[int, int], bool] = {}
    while len(nets) < n:
        plen = rnd.randint(lo, hi) if rnd.random() < 0.97 else rnd.randint(0, lo)
        if version == 6 and rnd.random() < 0.01:
            plen = rnd.randint(hi, 128)
        a = rnd.getrandbits(bits) & ~((1 << (bits - plen)) - 1)
        nets[(a, plen)] = rnd.random() < 0.05
    out = []
    for (a, plen), excluded in nets.items():
        if version == 4:
            text = f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"
        else:
            text = ":".join(f"{(a >> s) & 0xffff:x}" for s in range(112, -1, -16))
        out.append(f"{'!' if excluded else ''}{text}/{plen}")
    return out


def clustered_prefixes(rnd: random.Random, within: str, lengths: tuple[int, int], n: int) -> list[str]:
    """n distinct prefixes inside one block (an operator's 10/8, an ISP's
    /32), of lengths in the range given, one in 17 an exclusion, sorted."""
    net = ipaddress.ip_network(within)
    bits = net.max_prefixlen
    nets = set()
    while len(nets) < n:
        plen = rnd.randint(*lengths)
        a = (int(net.network_address) | rnd.getrandbits(bits - net.prefixlen)) & ~((1 << (bits - plen)) - 1)
        nets.add((a, plen))
    cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
    return [f"{'!' if i % 17 == 0 else ''}{cls(a)}/{plen}" for i, (a, plen) in enumerate(sorted(nets))]
