"""Runtime changes that outlive the process: the state file.

Every change an operator makes through the admin socket (a weight, an admin
state, an added or removed backend, an ACL's prefixes, a drained node) is recorded here before it is answered,
written with write + fsync + rename so a crash leaves the old file or the new
one, never half of one. At start and at every reload the file is applied over
the config. Entries that no longer match the config are reported and skipped,
never a reason to refuse to start; a file that cannot be read is moved aside.
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger("lb")

VERSION = 1


def _empty() -> dict:
    return {"version": VERSION, "pools": {}}


class StateFile:
    def __init__(self, path: str):
        self.path = path
        self.data = self._load()

    def _load(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
            if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("pools"), dict):
                raise ValueError(f"not a version {VERSION} state file")
            return data
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as e:
            aside = f"{self.path}.corrupt-{int(time.time())}"
            try:
                os.replace(self.path, aside)
                log.warning("state file %s unreadable (%s): moved aside to %s, starting without it",
                            self.path, e, aside)
            except OSError as e2:
                log.warning("state file %s unreadable (%s) and cannot be moved aside (%s)", self.path, e, e2)
            return _empty()

    def save(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable
        finally:
            os.close(fd)

    def _pool(self, pool: str) -> dict:
        return self.data["pools"].setdefault(pool, {"backends": {}, "added": {}, "removed": []})

    # -- recording (each followed by save() in the caller's transaction) --

    def set_weight(self, pool: str, name: str, weight: int) -> None:
        p = self._pool(pool)
        if name in p["added"]:
            p["added"][name]["weight"] = weight
        else:
            p["backends"].setdefault(name, {})["weight"] = weight

    def set_admin(self, pool: str, name: str, state: str) -> None:
        p = self._pool(pool)
        if name in p["added"]:
            p["added"][name]["admin"] = state
        else:
            p["backends"].setdefault(name, {})["admin"] = state

    def add(self, pool: str, name: str, address: str, weight: int, backup: bool) -> None:
        p = self._pool(pool)
        if name in p["removed"]:
            p["removed"].remove(name)
        p["added"][name] = {"address": address, "weight": weight, "backup": backup}

    def remove(self, pool: str, name: str) -> None:
        p = self._pool(pool)
        if name in p["added"]:
            del p["added"][name]
        else:
            p["backends"].pop(name, None)
            if name not in p["removed"]:
                p["removed"].append(name)

    def pools(self) -> dict:
        return self.data["pools"]

    def node_drained(self) -> bool:
        """Whether `lb node drain` is in force (lb.control.node)."""
        node = self.data.get("node")
        return isinstance(node, dict) and node.get("drained") is True

    def set_node_drained(self, drained: bool) -> None:
        self.data.setdefault("node", {})["drained"] = drained

    def acls(self) -> dict:
        """ACL name -> {"file": the file last loaded (optional), "prefixes":
        {prefix: "include" | "exclude" | "absent"} touched since}; changed in
        place by lb.control.acl, then save()."""
        acls = self.data.setdefault("acls", {})
        if not isinstance(acls, dict):
            log.warning("state file %s: its acls entry is not a table; ignored", self.path)
            acls = self.data["acls"] = {}
        return acls
