"""tcp_small_hosts: tcp_small with wrk, the proxy and the origin on three hosts.

The same keep-alive GET /small on 64 connections in tcp mode, but wrk, the
proxies and an origin of this scenario's own sit in three network namespaces
joined by veth pairs whose receive side runs in a NAPI kernel thread, as a
NIC's poll does on a real host (bench/hosts.py). On loopback a send runs the
receiver's TCP input on the sender's bill, so each proxy pays for what wrk
and the origin receive, alike for all three; here it pays for its own
sends and receives.

Beside cpu us/req (the proxy's tree) it reports total us/req (the tree, the
origin, wrk and the kernel's threads, the NAPI threads among them) and the
kernel threads' CPU: work moved out of a proxy's tree shows there.
"""

from bench import harness
from bench.scenarios import tcp_small

NAME = "tcp_small_hosts"
ORDER = 12
KIND = "wrk"
HOSTS = True
SUMMARY = ("keep-alive GET /small (100 B body), tcp mode, wrk, proxy and origin in three network "
           "namespaces (veth, threaded NAPI): cpu/req, total cpu/req, req/s, p99")
TARGETS = harness.PROXY_NAMES     # wrk's namespace has no route to the origin's: no direct
METRICS = (harness.CPU_US_REQ_METRIC, harness.TOTAL_US_REQ_METRIC, harness.REQ_S_METRIC,
           harness.P99_METRIC, harness.KTHREADS_METRIC, *harness.WRK_EXTRA_METRICS)


measure = tcp_small.measure
