"""A test server run as a subprocess that says "ready PORT" on stdout, then
reports one line per event the tests wait on (tests/backend_server.py,
tests/http_origin.py)."""

from __future__ import annotations

import queue
import subprocess
import threading


class ReportingProcess:
    def __init__(self, args: list[str], what: str):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", f"{what} did not start"
        self.port = int(line[1])
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def report(self, timeout: float = 10.0) -> str:
        """The next line reported (waits for it)."""
        return self.lines.get(timeout=timeout)

    def drain_lines(self) -> list[str]:
        """Every line reported so far and not yet read."""
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
