"""The [global] section: process-wide settings (workers, admin socket, state
file, account, draining, splicing, worker memory)."""

from __future__ import annotations

import dataclasses
import os

from lb.config import tls as tls_section
from lb.config.tls import TicketSettings
from lb.config.values import BindAddr, ConfigError, Context, Table, check_absolute_path, parse_bind, parse_size

MAX_WORKERS = 64
UNIX_PATH_MAX = 107  # sun_path is char[108], NUL included
SPLICE_MODES = ("auto", "always", "never")

NAMED = False
KEYS = ("workers", "admin_socket", "state_file", "user", "group", "drain_timeout", "splice", "max_worker_rss", "tls",
        "log_ring", "max_connections", "metrics", "io_uring")
METRICS_KEYS = ("bind", "backend_histograms")
# lb_backend_*_duration_seconds: which histograms each backend exports. A
# histogram is 17 series a backend; the response one is the contract's.
BACKEND_HISTOGRAMS = ("response", "connect", "first_byte")
# Records in each worker's access-log ring (1 KiB each): room for a burst while
# the logger process is not scheduled; full, a record is dropped and counted.
DEFAULT_LOG_RING = 8192
MAX_LOG_RING = 1 << 20
# Client connections (global and per listener); beyond, the fd budget stops a worker first anyway.
MAX_CONNECTIONS = 1 << 24


@dataclasses.dataclass(frozen=True)
class GlobalSettings:
    workers: int  # as written; 0 means one per CPU
    admin_socket: str
    state_file: str
    user: str
    group: str
    drain_timeout: float
    splice: str
    max_worker_rss: int = 0  # bytes; a worker over it is replaced (new first, old drains); 0 = off
    tls: TicketSettings = TicketSettings()  # [global.tls]: TLS session resumption, shared by every listener
    log_ring: int = DEFAULT_LOG_RING  # records per worker's access-log ring, a power of two
    max_connections: int = 0  # client connections open at once, all workers and listeners; 0 = no limit
    # [global.metrics] bind: where the supervisor serves /metrics, /stats and
    # /stats.json (lb/metrics.py); None: nowhere
    metrics_bind: BindAddr | None = None
    metrics_backend_histograms: tuple[str, ...] = ("response",)
    # tcp forwarding submits a turn's recv and send calls through io_uring
    # (lb/fastpath/uring.pxi) when the kernel allows it; False: one syscall each
    io_uring: bool = True
    # Whether user or group is written in the file. When started as root, a
    # missing account is an error if it was named, and only a warning (lb keeps
    # running as root) for the default "lb" the packages create.
    account_explicit: bool = dataclasses.field(default=False, compare=False)

    def worker_count(self) -> int:
        """Workers to run: as configured, or one per CPU this process may use."""
        if self.workers:
            return self.workers
        # The affinity mask, not the machine's CPU count, is what a container
        # or `taskset` lets us use; cap it so shared memory stays sized by
        # the same maximum the config enforces.
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS)


def parse(t: Table, ctx: Context) -> GlobalSettings:
    admin_socket = check_absolute_path(t.string("admin_socket", "/run/lb/admin.sock"), t.path_of("admin_socket"))
    if len(admin_socket.encode("utf-8")) > UNIX_PATH_MAX:
        raise ConfigError(
            t.path_of("admin_socket"), f"longer than {UNIX_PATH_MAX} bytes, the limit for a UNIX socket path"
        )
    return GlobalSettings(
        workers=t.integer("workers", 0, 0, MAX_WORKERS),
        admin_socket=admin_socket,
        state_file=check_absolute_path(t.string("state_file", "/var/lib/lb/state.json"), t.path_of("state_file")),
        # Only syntax here: `lb check` must work where the account does not exist.
        user=_nonempty(t, "user", "lb"),
        group=_nonempty(t, "group", "lb"),
        drain_timeout=t.duration("drain_timeout", "30s"),
        max_worker_rss=parse_size(
            t.get("max_worker_rss", 0, "a size", lambda v: isinstance(v, (int, str)) and not isinstance(v, bool)),
            t.path_of("max_worker_rss"),
        ),
        splice=t.choice("splice", "auto", SPLICE_MODES),
        tls=tls_section.parse_global(t.table("tls", tls_section.GLOBAL_KEYS)),
        log_ring=_log_ring(t),
        max_connections=t.integer("max_connections", 0, 0, MAX_CONNECTIONS),
        metrics_bind=_metrics_bind(t.table("metrics", METRICS_KEYS)),
        metrics_backend_histograms=_backend_histograms(t.table("metrics", METRICS_KEYS)),
        io_uring=t.boolean("io_uring", True),
        account_explicit=t.has("user") or t.has("group"),
    )


def _log_ring(t: Table) -> int:
    n = t.integer("log_ring", DEFAULT_LOG_RING, 1, MAX_LOG_RING)
    if n & (n - 1):
        raise ConfigError(t.path_of("log_ring"), f"{n} is not a power of two (e.g. 4096, 8192, 16384)")
    return n


def _metrics_bind(t: Table) -> BindAddr | None:
    bind = t.string("bind", "")
    return parse_bind(bind, t.path_of("bind")) if bind else None


def _backend_histograms(t: Table) -> tuple[str, ...]:
    value = t.get("backend_histograms", ["response"], "a list of strings",
                  lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
    for i, name in enumerate(value):
        if name not in BACKEND_HISTOGRAMS:
            raise ConfigError(f"{t.path_of('backend_histograms')}[{i}]",
                              f"{name!r} is not one of {', '.join(BACKEND_HISTOGRAMS)}")
    return tuple(dict.fromkeys(value))


def _nonempty(t: Table, key: str, default: str) -> str:
    value = t.string(key, default)
    if not value:
        raise ConfigError(t.path_of(key), "must not be empty")
    return value
