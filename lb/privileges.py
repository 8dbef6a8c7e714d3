"""Dropping root: the supervisor binds, opens the shared memory (and, later,
the admin socket) as root; workers and the checker then run as global.user /
global.group, and cannot get root back.

Only a supervisor started as root drops anything; started as anyone else, lb
runs every process as that user (under systemd with `User=`, the unit's
ambient capabilities let it bind low ports).
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd


class PrivilegeError(Exception):
    """An account named in the config is missing, or a drop did not hold."""


@dataclasses.dataclass(frozen=True)
class Account:
    user: str
    group: str
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.user}:{self.group} ({self.uid}:{self.gid})"


def is_root() -> bool:
    return os.geteuid() == 0


def resolve(user: str, group: str) -> Account:
    """Look up global.user and global.group (names, or numeric ids)."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        if not user.isdigit():
            raise PrivilegeError(f"global.user: no user {user!r} on this system "
                                 f"(create it, e.g. adduser --system --group {user}, or set global.user)") from None
        uid = int(user)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        if not group.isdigit():
            raise PrivilegeError(f"global.group: no group {group!r} on this system "
                                 f"(create it, or set global.group)") from None
        gid = int(group)
    if uid == 0 or gid == 0:
        key = "global.user" if uid == 0 else "global.group"
        raise PrivilegeError(f"{key}: workers must not run as root; name an unprivileged account")
    return Account(user, group, uid, gid)


def drop(uid: int, gid: int) -> None:
    """Become uid:gid for good: supplementary groups first (they need root),
    then the group, then the user (setuid to non-root also clears every
    capability). Raises PrivilegeError if root can be regained."""
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups() != [gid]:
        raise PrivilegeError(f"privilege drop to {uid}:{gid} did not hold")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError(f"privilege drop to {uid}:{gid}: setuid(0) still succeeds")
