"""Run the public HTTP caching conformance suite (cache-tests.fyi) against lb,
nginx proxy_cache and Varnish in one run, and print the three totals.

Optional tooling (``make cache-conformance``), not part of ``make test``: it
needs a checkout of https://github.com/http-tests/cache-tests (``--suite``,
default /work/cache-tests or $CACHE_TESTS), node, and nginx and varnishd for
the peers (a peer that is missing is left out). The three proxies are run
one after the other against the suite's own origin, so that none of the
suite's timing-based tests shares the CPU with another proxy's run.

The peers are configured as the suite's docker image does: nginx with
``proxy_cache_revalidate on``; Varnish with ``default_ttl=0`` (a response
without freshness is not stored), ``default_grace=0``, ``default_keep=3600``.
lb runs with its recommended configuration for the suite (docs/cache.md,
"Conformance"): one cache, the listener in front of the origin.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

LIST_JS = """
import tests from '%(suite)s/tests/index.mjs'
import fs from 'fs'
const out = {}
for (const f of process.argv.slice(2)) {
  const res = JSON.parse(fs.readFileSync(f))
  const tot = {}, failed = []
  for (const s of tests) for (const t of s.tests) {
    const kind = t.kind || 'required'
    tot[kind] = tot[kind] || [0, 0]
    tot[kind][1]++
    if (res[t.id] === true) tot[kind][0]++
    else failed.push([kind, s.id, t.id, String(JSON.stringify(res[t.id])).slice(0, 140)])
  }
  out[f] = {totals: tot, failed}
}
console.log(JSON.stringify(out))
"""

LB_CONF = """[global]
workers = 1
admin_socket = "%(dir)s/admin.sock"
state_file = "%(dir)s/state.json"

[caches.c]
size = "64m"
max_object_size = "8m"

[listeners.web]
bind = ["127.0.0.1:%(port)d"]
mode = "http"
pool = "origin"
cache = "c"

[pools.origin]
[pools.origin.health]
type = "none"
[[pools.origin.backends]]
address = "127.0.0.1:%(origin)d"
"""

NGINX_CONF = """daemon off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %(dir)s/nginx-body;
    proxy_temp_path %(dir)s/nginx-tmp;
    fastcgi_temp_path %(dir)s/nginx-fcgi;
    uwsgi_temp_path %(dir)s/nginx-uwsgi;
    scgi_temp_path %(dir)s/nginx-scgi;
    proxy_cache_path %(dir)s/nginx-cache levels=1:2 keys_zone=my-cache:8m max_size=1000m inactive=600m;
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://127.0.0.1:%(origin)d;
            proxy_cache my-cache;
            proxy_cache_revalidate on;
            proxy_http_version 1.1;
        }
    }
}
"""

VCL = """vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "%(origin)d"; }
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("exited with %s before listening on %d" % (proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on %d" % port)


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start(cmd, log, env=None, cwd=None):
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def run_suite(suite, base, out, test_id=""):
    env = dict(os.environ, npm_config_base=base, npm_config_id=test_id, npm_package_config_id=test_id)
    with open(out, "w") as f:
        subprocess.run(["node", "--no-warnings", "test-engine/cli.mjs"], cwd=suite, env=env,
                       stdout=f, stderr=subprocess.DEVNULL, check=False)


def start_peer(name, d, port, origin, repo):
    log = open(os.path.join(d, name + ".log"), "w")
    if name == "lb":
        conf = os.path.join(d, "lb.toml")
        with open(conf, "w") as f:
            f.write(LB_CONF % dict(dir=d, port=port, origin=origin))
        env = dict(os.environ, PYTHONPATH=repo)
        return start([sys.executable, "-m", "lb", "run", "-c", conf], log, env=env, cwd=repo)
    if name == "nginx":
        for sub in ("nginx-body", "nginx-tmp", "nginx-fcgi", "nginx-uwsgi", "nginx-scgi", "nginx-cache"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
            os.chmod(os.path.join(d, sub), 0o777)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF % dict(dir=d, port=port, origin=origin))
        return start([shutil.which("nginx") or "/usr/sbin/nginx", "-p", d, "-c", conf], log)
    if name == "varnish":
        vcl = os.path.join(d, "default.vcl")
        with open(vcl, "w") as f:
            f.write(VCL % dict(origin=origin))
        return start([shutil.which("varnishd") or "/usr/sbin/varnishd", "-F", "-n", os.path.join(d, "varnish"),
                      "-a", "127.0.0.1:%d" % port, "-f", vcl, "-p", "default_ttl=0",
                      "-p", "default_grace=0", "-p", "default_keep=3600", "-s", "malloc,64M"], log)
    raise ValueError(name)


def available(name):
    return name == "lb" or shutil.which(name) or os.path.exists("/usr/sbin/" + name + ("d" if name == "varnish" else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default=os.environ.get("CACHE_TESTS", "/work/cache-tests"))
    ap.add_argument("--peers", default="lb,nginx,varnish", help="comma-separated: lb, nginx, varnish")
    ap.add_argument("--out", help="directory for the results and logs (default: a new temporary one)")
    ap.add_argument("--failed", action="store_true", help="list the tests each proxy fails")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.suite, "tests/index.mjs")) or not shutil.which("node"):
        print("cache-conformance: needs the cache-tests checkout (--suite) and node", file=sys.stderr)
        return 2
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    d = os.path.abspath(args.out or tempfile.mkdtemp(prefix="lb-cache-conformance-"))
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)               # nginx's workers and Varnish's child drop root: they read (and write) here
    origin = free_port()
    env = dict(os.environ, npm_config_port=str(origin), npm_config_protocol="http",
               npm_config_pidfile=os.path.join(d, "server.pid"))
    server = start(["node", "test-engine/server/server.mjs"], open(os.path.join(d, "server.log"), "w"),
                   env=env, cwd=args.suite)
    results = {}
    try:
        wait_port(origin, server)
        for name in args.peers.split(","):
            if not available(name):
                print("cache-conformance: %s is not installed, left out" % name, file=sys.stderr)
                continue
            port = free_port()
            proc = start_peer(name, d, port, origin, repo)
            try:
                wait_port(port, proc)
                out = os.path.join(d, name + ".json")
                t0 = time.monotonic()
                run_suite(args.suite, "http://127.0.0.1:%d" % port, out)
                print("cache-conformance: %s done in %.0f s" % (name, time.monotonic() - t0), file=sys.stderr)
                results[name] = out
            finally:
                stop(proc)
    finally:
        stop(server)
    js = os.path.join(d, "list.mjs")
    with open(js, "w") as f:
        f.write(LIST_JS % dict(suite=args.suite))
    summary = json.loads(subprocess.run(["node", js] + list(results.values()), check=True,
                                        capture_output=True, text=True).stdout)
    kinds = ("required", "optimal", "check")
    print("%-8s %6s %12s %12s %12s" % ("proxy", "pass", *kinds))
    for name, out in results.items():
        tot = summary[out]["totals"]
        passed = sum(v[0] for v in tot.values())
        total = sum(v[1] for v in tot.values())
        print("%-8s %6s %12s %12s %12s" % (name, "%d/%d" % (passed, total),
              *("%d/%d" % tuple(tot.get(k, (0, 0))) for k in kinds)))
    if args.failed:
        for name, out in results.items():
            print("\n# %s fails" % name)
            for kind, suite_id, test_id, why in summary[out]["failed"]:
                print("%s\t%s\t%s\t%s" % (kind, suite_id, test_id, why))
    print("results in %s" % d, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
