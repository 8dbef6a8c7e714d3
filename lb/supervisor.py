"""The supervisor: owns the listening sockets and the shared memory, forks the
workers, respawns them, and stops them (DESIGN.md section 1).

It is a single-threaded Python loop woken by signals (through a wakeup fd) and
by its own timers; it never touches a client connection.
"""

from __future__ import annotations

import collections
import logging
import os
import resource
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field

from lb import checker as checker_mod
from lb import privileges, sdnotify
from lb import shm as shm_mod
from lb import worker as worker_mod

log = logging.getLogger("lb")

# A worker that dies this many times within CRASH_WINDOW seconds is in a crash
# loop: its respawns are delayed, doubling from BACKOFF_MIN up to BACKOFF_MAX.
CRASH_LIMIT = 3
CRASH_WINDOW = 10.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
# After SIGINT (fast stop), how long workers get before SIGKILL.
FAST_STOP_GRACE = 2.0
# The supervisor's turn: Maglev rebuilds after health changes and slow-start
# steps happen at most this late.
TICK = 0.1
# Slow start begins at this fraction of the weight and moves in steps of it.
SLOWSTART_STEP = 0.05


@dataclass
class WorkerSlot:
    """One child position (a worker, or the checker with index -1): its listening
    sockets and counter row outlive the processes that fill it, so a respawned
    worker serves the same accept queues."""

    index: int
    row: int
    sockets: list  # [(socket, listener index)]
    pid: int = 0
    started: float = 0.0
    deaths: collections.deque = field(default_factory=lambda: collections.deque(maxlen=CRASH_LIMIT))
    respawn_at: float = 0.0
    restarts: int = 0

    @property
    def name(self) -> str:
        return "checker" if self.index < 0 else f"worker {self.index}"

    @property
    def crash_looping(self) -> bool:
        now = time.monotonic()
        return len(self.deaths) == CRASH_LIMIT and now - self.deaths[0] < CRASH_WINDOW


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_listen_socket(bind, backlog: int) -> socket.socket:
    sock = socket.socket(bind.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # one accept queue per worker: the kernel spreads new connections over them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if bind.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # inherited by accepted sockets: no Nagle delay on the client side
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((bind.host, bind.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {bind}: {e.strerror}") from None
    return sock


class Supervisor:
    def __init__(self, config, *, status_interval: float = 0.0, on_status=None, on_ready=None):
        self.config = config
        self.on_ready = on_ready
        self.n_workers = config.global_.worker_count()
        self.status_interval = status_interval
        self.on_status = on_status
        self.slots: list[WorkerSlot] = []
        self.checker = WorkerSlot(index=-1, row=-1, sockets=[])
        self.shm = None
        # the account workers and the checker run as; None: no drop (not root)
        self.account: privileges.Account | None = None
        self.started = time.time()
        self.stopping = None  # None, "graceful" or "fast"
        self.stop_deadline = 0.0
        self._wakeup_r = self._wakeup_w = -1
        self._pending_signals: list[int] = []

    # ---- start ----------------------------------------------------------------

    def _open_sockets(self) -> list[list[tuple[socket.socket, int]]]:
        per_slot: list[list[tuple[socket.socket, int]]] = [[] for _ in range(self.n_workers)]
        for li, listener in enumerate(self.config.listeners.values()):
            for bind in listener.bind:
                for slot in range(self.n_workers):
                    per_slot[slot].append((open_listen_socket(bind, listener.backlog), li))
        return per_slot

    def _resolve_account(self) -> privileges.Account | None:
        """As root: the account the children drop to, looked up before anything
        is bound so a missing one fails the start at once."""
        if not privileges.is_root():
            return None
        g = self.config.global_
        try:
            return privileges.resolve(g.user, g.group)
        except privileges.PrivilegeError as e:
            if g.account_explicit:
                raise
            log.warning("%s; workers run as root (the lb packages create the account)", e)
            return None

    def start(self) -> None:
        self.account = self._resolve_account()
        nofile = raise_nofile_limit()
        per_slot = self._open_sockets()
        # two rows per worker slot: a reload's new generation writes beside the old
        rows = 2 * self.n_workers
        self.shm = shm_mod.create_for_config(self.config, rows)
        if self.account is not None:
            # the workers inherit the mapping; processes that attach later by
            # path (the checker after a respawn, admin tools) open it as the account
            os.chown(self.shm.path, self.account.uid, self.account.gid)
        self.slots = [WorkerSlot(index=i, row=i, sockets=per_slot[i]) for i in range(self.n_workers)]
        self._install_signals()
        binds = ", ".join(str(b) for l in self.config.listeners.values() for b in l.bind)
        log.info("starting: %d worker(s), listening on %s, RLIMIT_NOFILE %d, shm %s%s",
                 self.n_workers, binds, nofile, self.shm.path,
                 f", children run as {self.account}" if self.account else "")
        for slot in self.children:
            self._spawn(slot)

    @property
    def children(self) -> list[WorkerSlot]:
        return [*self.slots, self.checker]

    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._pending_signals.append(signum)

    # ---- workers --------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot) -> None:
        if slot.row >= 0:
            self.shm.reset_row_gauges(slot.row)
        keep = [s.fileno() for s, _ in slot.sockets]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if slot.index < 0:
                    code = checker_mod.child_main(self)
                else:
                    code = worker_mod.child_main(self, slot, keep)
            finally:
                os._exit(code)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.respawn_at = 0.0
        log.info("%s started: pid %d", slot.name, pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.children if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            how = self._describe_exit(status)
            if self.stopping:
                log.info("%s (pid %d) exited: %s", slot.name, pid, how)
                continue
            now = time.monotonic()
            slot.deaths.append(now)
            slot.restarts += 1
            if slot.crash_looping:
                backoff = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** max(0, slot.restarts - CRASH_LIMIT))
                slot.respawn_at = now + backoff
                log.error("%s (pid %d) died: %s; crash loop, respawning in %.1fs",
                          slot.name, pid, how, backoff)
            else:
                slot.restarts = min(slot.restarts, CRASH_LIMIT)
                log.warning("%s (pid %d) died: %s; respawning", slot.name, pid, how)
                self._spawn(slot)

    @staticmethod
    def _describe_exit(status: int) -> str:
        if os.WIFSIGNALED(status):
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exit code {os.WEXITSTATUS(status)}"

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot in self.children:
            if slot.pid == 0 and slot.respawn_at and now >= slot.respawn_at:
                self._spawn(slot)

    # ---- stop -----------------------------------------------------------------

    def stop(self, fast: bool = False) -> None:
        """Begin a stop. Graceful: close the listening sockets (new connections are
        refused at once), let workers finish their connections up to drain_timeout.
        Fast: workers close everything now."""
        if self.stopping == "fast" or (self.stopping and not fast):
            return
        self.stopping = "fast" if fast else "graceful"
        grace = FAST_STOP_GRACE if fast else self.config.global_.drain_timeout + FAST_STOP_GRACE
        self.stop_deadline = time.monotonic() + grace
        log.info("stopping (%s)", self.stopping)
        sdnotify.stopping(f"stopping ({self.stopping})")
        for slot in self.slots:
            for sock, _ in slot.sockets:
                sock.close()
        self._signal_workers(signal.SIGINT if fast else signal.SIGTERM)

    def _signal_workers(self, sig: int) -> None:
        for slot in self.children:
            if slot.pid:
                try:
                    os.kill(slot.pid, sig)
                except ProcessLookupError:
                    pass

    # ---- the loop -------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until stopped, clean up. Returns the process exit code."""
        try:
            self.start()
            # every child is forked and the listening sockets queue connections
            sdnotify.ready(self._status_text())
            if self.on_ready:
                self.on_ready(self)
            self._loop()
        finally:
            self._cleanup()
        return 0

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wakeup_r, selectors.EVENT_READ)
        next_status = time.monotonic() + self.status_interval if self.status_interval else None
        while True:
            now = time.monotonic()
            timeout = TICK
            if next_status is not None:
                timeout = min(timeout, max(0.0, next_status - now))
            for slot in self.children:
                if slot.pid == 0 and slot.respawn_at:
                    timeout = min(timeout, max(0.0, slot.respawn_at - now))
            sel.select(timeout)
            try:
                while os.read(self._wakeup_r, 512):
                    pass
            except BlockingIOError:
                pass
            self._handle_signals()
            if self.stopping:
                if all(s.pid == 0 for s in self.children):
                    return
                if time.monotonic() >= self.stop_deadline:
                    log.warning("workers still running after the stop deadline: killing them")
                    self._signal_workers(signal.SIGKILL)
                    self.stop_deadline = float("inf")
                continue
            self._respawn_due()
            self._slow_start()
            # a weight or state change bumped a pool's generation: its Maglev
            # table is rebuilt here, the tables' only writer
            self.shm.rebuild_changed()
            if next_status is not None and time.monotonic() >= next_status:
                self.on_status(self)
                next_status = time.monotonic() + self.status_interval

    def _handle_signals(self) -> None:
        signals, self._pending_signals = self._pending_signals, []
        for signum in signals:
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGTERM:
                self.stop(fast=False)
            elif signum in (signal.SIGINT, signal.SIGQUIT):
                self.stop(fast=True)
            elif signum == signal.SIGHUP:
                self.reload()
        self._reap()

    def reload(self) -> None:
        """SIGHUP. The service manager hears RELOADING=1 (with the time, as
        systemd asks) before anything changes and READY=1 once the balancer
        serves again, whatever the reload did."""
        if self.stopping:
            return
        sdnotify.reloading("reloading")
        try:
            log.warning("SIGHUP: live reload is not part of this build yet; config unchanged")
        finally:
            sdnotify.ready(self._status_text())

    def _status_text(self) -> str:
        binds = ", ".join(str(b) for l in self.config.listeners.values() for b in l.bind)
        return f"serving: {self.n_workers} worker(s) on {binds}"

    def _slow_start(self) -> None:
        """Writer of eff_weight: after down -> up, ramp a backend's weight in
        effect from SLOWSTART_STEP of its weight to all of it over `slowstart`,
        in steps of SLOWSTART_STEP, so tables are rebuilt at most 20 times a ramp.
        A backend that is down already waits at the first step, so it comes back
        at the bottom of its ramp without one pick at full weight."""
        now_ms = time.monotonic() * 1000  # CLOCK_MONOTONIC, the checker's clock
        for pi, pool in enumerate(self.config.pools.values()):
            ramp_ms = pool.health.slowstart * 1000
            if not ramp_ms:
                continue
            for bi in range(len(pool.backends)):
                b = self.shm.backend(pi, bi)
                if not b["in_use"]:
                    continue
                weight = b["weight"]
                if b["health"] == "down":
                    fraction = SLOWSTART_STEP
                elif b["up_since_ms"] and now_ms - b["up_since_ms"] < ramp_ms:
                    elapsed = (now_ms - b["up_since_ms"]) / ramp_ms
                    fraction = max(SLOWSTART_STEP, SLOWSTART_STEP * int(elapsed / SLOWSTART_STEP))
                else:
                    fraction = 1.0
                eff = max(1, round(weight * fraction)) if weight else 0
                if eff != b["eff_weight"]:
                    self.shm.set_weight(pi, bi, weight, eff)

    def _cleanup(self) -> None:
        self._signal_workers(signal.SIGKILL)
        for slot in self.children:
            if slot.pid:
                try:
                    os.waitpid(slot.pid, 0)
                except ChildProcessError:
                    pass
                slot.pid = 0
            for sock, _ in slot.sockets:
                sock.close()
        if self.shm is not None:
            self.shm.unlink()
        if self._wakeup_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = -1
        log.info("stopped")

    # ---- status -----------------------------------------------------------------

    def snapshot(self) -> dict:
        """Counters of every pool, backend and worker, summed from shared memory."""
        pools = {}
        for pi, (name, pool) in enumerate(self.config.pools.items()):
            backends = {}
            for bi, b in enumerate(pool.backends):
                info = self.shm.backend(pi, bi)
                info.update(self.shm.backend_stats(pi, bi))
                backends[b.name] = info
            pools[name] = {"algorithm": pool.algorithm, "backends": backends,
                           "empty_because": empty_because(backends)}
        workers = []
        for slot in self.slots:
            stats = self.shm.worker_stats(slot.row)
            stats.update(index=slot.index, pid=slot.pid, restarts=slot.restarts,
                         crash_loop=slot.crash_looping)
            workers.append(stats)
        checker = {"pid": self.checker.pid, "restarts": self.checker.restarts,
                   "crash_loop": self.checker.crash_looping}
        return {"uptime": time.time() - self.started, "pools": pools, "workers": workers,
                "checker": checker}


def empty_because(backends: dict) -> str | None:
    """None while a pool has a backend to pick; else why not, per backend, for
    `lb status` (a tcp listener closes new connections of such a pool at once)."""
    from lb.checker import describe

    reasons = []
    for name, b in backends.items():
        if not b["in_use"]:
            continue
        if b["admin"] == "ready" and b["health"] == "up" and b["eff_weight"] > 0:
            return None
        if b["admin"] != "ready":
            reasons.append(f"{name} {b['admin']}")
        elif b["health"] == "down":
            reasons.append(f"{name} down ({describe(b['down_reason'], b['last_status'], b['last_errno'], b['last_latency_us'])})")
        else:
            reasons.append(f"{name} weight 0")
    return "no backend can take connections: " + (", ".join(reasons) or "the pool has no backends")
