"""Three hosts on one machine: wrk, the proxies and the origin each in a network
namespace of their own, joined by veth pairs.

On loopback a send runs the receiver's whole TCP input (and its wake-up) in
the sender's softirq, on the sender's bill: a proxy pays for wrk's and the
origin's receive path, and they pay for its. Every proxy pays the same, so
the kernel's share swamps what the proxies themselves do differently. Between
hosts the receive path runs where the segment arrives: in the receiving NIC's
NAPI poll. Here each veth end runs its NAPI poll in a kernel thread of its
own (threaded NAPI, with GRO on, which is what gives a veth a NAPI context;
TSO off, without which the kernel skips NAPI for TCP), so a send costs the
sender its own TCP output and the kick of the peer's poll, as a send to a
NIC does, and the receiver's TCP input lands in that thread. The bench
counts those threads' CPU in every target's total us/req: nothing a proxy
leaves to them is hidden.

The proxies stay in the bench's own namespace, so the harness reaches them
and the origin directly; only wrk runs in the client's.
"""

import ipaddress
import os
import re
import subprocess
from pathlib import Path

# The two links' /24s: the first two of these that no address or route of
# the machine overlaps (even a documentation range may be taken: the machine
# this was written on has 192.0.2.0/24 for its own network).
CANDIDATE_NETS = ("10.250.1.0/24", "10.250.2.0/24", "172.30.250.0/24", "172.30.251.0/24",
                  "192.168.250.0/24", "192.168.251.0/24", "198.51.100.0/24", "203.0.113.0/24")


class HostsError(Exception):
    pass


def free_nets(ip: str, n: int) -> list[ipaddress.IPv4Network]:
    """n of CANDIDATE_NETS that overlap none of the machine's addresses and routes."""
    out = subprocess.run([ip, "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         timeout=10, check=False).stdout
    out += subprocess.run([ip, "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                          timeout=10, check=False).stdout
    used = [ipaddress.ip_network(m, strict=False)
            for m in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", out)]
    free = [net for net in map(ipaddress.ip_network, CANDIDATE_NETS)
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0)]
    if len(free) < n:
        raise HostsError(f"no {n} free /24s among {', '.join(CANDIDATE_NETS)} for the hosts topology")
    return free[:n]


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise HostsError(f"`{' '.join(cmd)}` failed: {(out.stderr or out.stdout).strip()}")


class Hosts:
    """The two namespaces and their links; down() removes everything up() made."""

    def __init__(self, ip: str, ethtool: str):
        self.ip, self.ethtool = ip, ethtool
        tag = os.getpid() % 100000          # veth names have 15 characters at most
        self.client_ns, self.origin_ns = f"lbb{tag}-client", f"lbb{tag}-origin"
        client_net, origin_net = ([str(a) for a in list(net.hosts())[:2]] for net in free_nets(ip, 2))
        # name: (the proxies' end, the far end, its namespace, (their addresses))
        self.links = {"client": (f"lbc{tag}", f"lbc{tag}p", self.client_ns, tuple(client_net)),
                      "origin": (f"lbo{tag}", f"lbo{tag}p", self.origin_ns, tuple(origin_net))}
        self.proxy_addr = client_net[0]
        self.origin_addr = origin_net[1]

    def wrap(self, ns: str) -> tuple[str, ...]:
        """The command prefix that runs a program in namespace `ns`."""
        return (self.ip, "netns", "exec", ns)

    def up(self) -> None:
        if os.geteuid() != 0:
            raise HostsError("the hosts topology needs root (network namespaces)")
        try:
            for ns in (self.client_ns, self.origin_ns):
                _run([self.ip, "netns", "add", ns])
                _run([*self.wrap(ns), self.ip, "link", "set", "lo", "up"])
            for here, there, ns, (here_addr, there_addr) in self.links.values():
                _run([self.ip, "link", "add", here, "type", "veth", "peer", "name", there, "netns", ns])
                self._configure((), here, here_addr)
                self._configure(self.wrap(ns), there, there_addr)
        except BaseException:
            self.down()
            raise

    def _configure(self, wrap: tuple[str, ...], dev: str, addr: str) -> None:
        _run([*wrap, self.ip, "addr", "add", f"{addr}/24", "dev", dev])
        _run([*wrap, self.ethtool, "-K", dev, "gro", "on", "tso", "off"])
        _run([*wrap, self.ip, "link", "set", dev, "up"])
        # the namespace's own sysfs: `ip netns exec` mounts it for that namespace
        _run([*wrap, "sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded"])

    def down(self) -> None:
        for here, *_ in self.links.values():
            if Path(f"/sys/class/net/{here}").exists():
                subprocess.run([self.ip, "link", "del", here], capture_output=True, timeout=30, check=False)
        for ns in (self.client_ns, self.origin_ns):
            subprocess.run([self.ip, "netns", "del", ns], capture_output=True, timeout=30, check=False)
