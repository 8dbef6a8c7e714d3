"""`lb demo`: lb on 127.0.0.1:PORT in front of two demo backends it starts
itself, with a live status line. Everything stops with Ctrl-C."""

from __future__ import annotations

import subprocess
import sys
import tempfile

from lb import config as config_mod
from lb import log
from lb.control import status

DEMO_BACKENDS = ("demo-1", "demo-2")

CONFIG_TEMPLATE = """\
[global]
workers = 1            # one worker, so round robin alternates strictly across curls
drain_timeout = "2s"
admin_socket = "{run_dir}/admin.sock"   # try: lb --socket {run_dir}/admin.sock status
state_file = "{run_dir}/state.json"

[listeners.demo]
bind = ["127.0.0.1:{port}"]
mode = "http"          # an HTTP/1.1 reverse proxy; "tcp" forwards bytes (docs/http.md)
pool = "demo"

[pools.demo]
algorithm = "roundrobin"
connect_timeout = "1s"
retries = 1

  [pools.demo.health]
  type = "none"
{backends}"""

BACKEND_TEMPLATE = """
  [[pools.demo.backends]]
  address = "127.0.0.1:{port}"
  name = "{name}"
  weight = 100
"""


def start_backend(name: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "lb.demo_backend", "--port", "0", "--name", name],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "ready":
        proc.kill()
        raise RuntimeError(f"demo backend {name} did not start")
    return proc, int(line[1])


_last_line = None


def status_line(sup) -> None:
    global _last_line
    snap = status.document(sup)
    backends = snap["pools"]["demo"]["backends"]
    served = "  ".join(f"{name}: {b['total']} ({b['active']} open)" for name, b in backends.items())
    accepted = sum(w["accepted"] for w in snap["workers"])
    requests = sum(w.get("http_requests", 0) for w in snap["workers"])
    line = f"[lb] connections {accepted}, requests {requests} | {served}"
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + line)
    elif line != _last_line:
        sys.stderr.write(line + "\n")
    _last_line = line
    sys.stderr.flush()


def run(port: int) -> int:
    from lb.supervisor import Supervisor

    log.setup("warning")
    procs = []
    try:
        backends = []
        for name in DEMO_BACKENDS:
            proc, backend_port = start_backend(name)
            procs.append(proc)
            backends.append(BACKEND_TEMPLATE.format(port=backend_port, name=name))
        run_dir = tempfile.mkdtemp(prefix="lb-demo-")
        text = CONFIG_TEMPLATE.format(port=port, backends="".join(backends), run_dir=run_dir)
        cfg = config_mod.loads(text, source="<demo>")

        def banner(sup):
            print(f"--- config in use ---\n{text}---\n"
                  f"lb demo: listening on 127.0.0.1:{port}, round robin over "
                  f"{' and '.join(DEMO_BACKENDS)}.\n"
                  f"Try:  curl http://127.0.0.1:{port}/   (again: the other backend answers)\n"
                  f"Stop: Ctrl-C", flush=True)

        return Supervisor(cfg, status_interval=1.0, on_status=status_line, on_ready=banner).run()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        if sys.stderr.isatty():
            sys.stderr.write("\n")
