"""tcp_small_sockmap: tcp_small with lb's listener on `forward = "sockmap"`.

keep-alive GET /small (about 100 bytes) on 64 long-lived connections, as
tcp_small, but lb hands each established pair to the kernel (a BPF sk_skb
verdict program over a SOCKHASH, docs/tcp.md): its worker is not woken per
request. HAProxy and nginx run as in tcp_small, in the same run.

The forwarding work does not vanish: the kernel does it in the receive path
of the sender (wrk's and the origin's processes, and softirq), where the
proxy's process-tree CPU does not see it. So beside cpu us/req (the proxy's
tree) this scenario reports, for each proxy, total us/req: the CPU of the
proxy's tree, the origin, wrk and the kernel's threads (kworkers, ksoftirqd:
a sockmap's redirected sends run on a workqueue) per request; and host us/req:
the whole machine's busy CPU (all cores, /proc/stat) per request, which on a
shared machine also counts everyone else.
"""

from bench import harness

NAME = "tcp_small_sockmap"
ORDER = 11
KIND = "wrk"
SUMMARY = ('keep-alive GET /small (100 B body), tcp mode, lb with forward = "sockmap": '
           "cpu/req, whole-machine cpu/req, req/s, p99")
TARGETS = harness.TARGET_NAMES
METRICS = (harness.CPU_US_REQ_METRIC, harness.TOTAL_US_REQ_METRIC, harness.HOST_US_REQ_METRIC,
           harness.REQ_S_METRIC, harness.P99_METRIC, harness.KTHREADS_METRIC, *harness.WRK_EXTRA_METRICS)


def measure(ctx, target):
    if target.name == "lb":
        target.stop()
        target.listener_extra = 'forward = "sockmap"'
        target.start()
    return harness.wrk_measure(ctx, target, "/small")
