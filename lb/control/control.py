"""`reload` and `stop` (lb/cli/control.py): the running daemon as a whole. The
work is the supervisor's (processes and generations); these are its verbs."""

from __future__ import annotations


def reload(sup, args: dict) -> dict:
    return sup.reload()


def stop(sup, args: dict) -> dict:
    fast = bool(args.get("fast", False))
    # answered first: the stop closes the admin socket with everything else
    sup.stop_soon(fast)
    return {"stopping": "fast" if fast else "graceful"}
