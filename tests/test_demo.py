"""`lb demo`, as the README runs it: curl answers from both demo backends in turn."""

import signal
import subprocess
import sys

import psutil

from conftest import free_port


def test_demo_alternates_between_both_backends():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lb", "demo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("Try:"):
                break
        assert f"curl http://127.0.0.1:{port}/" in "".join(banner)
        children = psutil.Process(proc.pid).children(recursive=True)
        answers = [subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}/"],
                                  capture_output=True, text=True, check=True).stdout.strip()
                   for _ in range(4)]
        # http mode: the backends see the client's address in X-Forwarded-For
        assert set(answers[:2]) == {"hello from demo-1 (to 127.0.0.1)", "hello from demo-2 (to 127.0.0.1)"}
        assert answers[2:] == answers[:2], answers
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
