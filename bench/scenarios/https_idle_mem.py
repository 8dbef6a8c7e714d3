"""https_idle_mem: memory one worker spends on N idle, established TLS connections.

The harness opens N TLS connections (default 4000, --idle-conns), completes
the handshake on each (a full one) and sends one keep-alive GET /small, then
leaves them idle: every proxy has set each connection up entirely and holds
it, with its TLS state, waiting for the next request. Growth of the worker's
RSS and USS, divided by N, is the cost of an idle TLS connection (kernel
socket buffers are in neither). The TLS issue's target is absolute: lb's USS
per connection at most 6 KiB; HAProxy's and nginx's are reported beside it.
"""

from bench import harness

NAME = "https_idle_mem"
ORDER = 98
KIND = "idle"
MODE = "https"
SUMMARY = "N idle TLS connections (handshake and one request each) held by one worker: memory per connection"
TARGETS = harness.PROXY_NAMES
METRICS = harness.IDLE_METRICS
GOALS = {"uss_per_conn": harness.Absolute(6 * 1024)}


def measure(ctx, target):
    return harness.idle_measure(ctx, target, ctx.opts.idle_conns)
