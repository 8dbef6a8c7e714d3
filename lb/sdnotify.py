"""A minimal sd_notify(3) client: state lines to the service manager.

systemd (Type=notify) passes the path of a datagram socket in $NOTIFY_SOCKET;
a name starting with "@" is in the abstract namespace. Without the variable
every call does nothing, so the daemon runs the same in the foreground.
The protocol: newline-separated KEY=VALUE lines in one datagram.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("lb")


def _address() -> str | bytes | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]  # abstract namespace
    if path.startswith("/"):
        return path
    # systemd also allows vsock addresses ("vsock:CID:PORT"); lb never runs in a VM
    # guest that reports to its host, so those are ignored
    return None


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=serving") as one datagram.
    Returns whether a message was sent; without $NOTIFY_SOCKET, False.
    Never raises: a lost notification must not stop the balancer."""
    address = _address()
    if address is None or not lines:
        return False
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False
    return True


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd expects in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading(status: str | None = None) -> bool:
    """RELOADING=1 must carry MONOTONIC_USEC (systemd >= 253 checks it against
    the time it sent the reload, to tell this reload from an earlier one)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                  *([f"STATUS={status}"] if status else []))


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
