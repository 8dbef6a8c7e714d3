"""Logging to stderr, one line per event: `lb[pid] LEVEL message`."""

import logging
import sys


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s lb[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("lb")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
