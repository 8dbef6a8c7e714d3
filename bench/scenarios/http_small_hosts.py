"""http_small_hosts: http_small with wrk, the proxy and the origin on three hosts.

http_small's keep-alive GET /small through each reverse proxy, on
tcp_small_hosts's topology (bench/hosts.py): three network namespaces joined
by veth pairs whose receive side runs in a NAPI kernel thread, so that no
send pays for its receiver's TCP input. Total us/req counts those threads.
"""

from bench import harness
from bench.scenarios import http_small

NAME = "http_small_hosts"
ORDER = 52
KIND = "wrk"
MODE = "http"
HOSTS = True
SUMMARY = ("keep-alive GET /small (100 B body), http mode, wrk, proxy and origin in three network "
           "namespaces (veth, threaded NAPI): cpu/req, total cpu/req, req/s, p99")
TARGETS = harness.PROXY_NAMES
METRICS = (harness.CPU_US_REQ_METRIC, harness.TOTAL_US_REQ_METRIC, harness.REQ_S_METRIC,
           harness.P99_METRIC, harness.KTHREADS_METRIC, *harness.WRK_EXTRA_METRICS,
           harness.ORIGIN_CONNS_METRIC)


measure = http_small.measure
