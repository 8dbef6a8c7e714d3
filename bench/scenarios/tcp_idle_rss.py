"""tcp_idle_rss: memory one worker spends on N idle client connections.

The harness opens N client sockets that never send a byte (default 4000). In
tcp mode every proxy connects to the backend at accept, so the worker holds
2N sockets. Growth of the worker's RSS and USS between before and after,
divided by N, is the cost of an idle proxied connection.
"""

from bench import harness

NAME = "tcp_idle_rss"
ORDER = 40
KIND = "idle"
SUMMARY = "N idle proxied connections held by one worker: memory growth per connection"
TARGETS = harness.PROXY_NAMES
METRICS = harness.IDLE_METRICS


def measure(ctx, target):
    return harness.idle_measure(ctx, target, ctx.opts.idle_conns)
