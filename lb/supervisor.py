"""The supervisor: owns the listening sockets, the shared memory and the admin
socket, forks the workers and the checker, respawns them, reloads and stops
them (DESIGN.md sections 1 and 5). The admin verbs it serves live in
lb.control, one module per command group.

It is a single-threaded Python loop woken by signals (through a wakeup fd), by
admin clients and by its own 100 ms tick; it never touches a client connection.

A *generation* is one config in force: its shared-memory region, its workers
and its checker. A reload starts a new generation on the same listening
sockets and lets the old one drain; the sockets themselves belong to the
supervisor and outlive generations, so no accept queue is ever closed.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import resource
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field

import psutil

from lb import checker as checker_mod
from lb import logger as logger_mod
from lb import metrics as metrics_mod
from lb import config as config_mod
from lb import control, ha, privileges, sdnotify
from lb.control import jwks
from lb import shm as shm_mod
from lb import tls as tls_mod
from lb import worker as worker_mod
from lb.admin import Access, AdminError, AdminServer
from lb.state import StateFile

log = logging.getLogger("lb")

# A child that dies this many times within CRASH_WINDOW seconds is in a crash
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
# How long a reload waits for the new workers to enter their loops before the
# old ones stop accepting (they would queue, not fail, past it).
RELOAD_READY_TIMEOUT = 5.0
# How often worker memory is compared with global.max_worker_rss.
RSS_CHECK_INTERVAL = 2.0


# WorkerSlot.index of the checker and of the logger (access logs)
CHECKER_INDEX = -1
LOGGER_INDEX = -2


@dataclass
class WorkerSlot:
    """One child position of a generation (a worker, or the checker with index
    -1). Its listening sockets outlive the processes that fill it, so a
    respawned worker serves the same accept queues."""

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
        if self.index == LOGGER_INDEX:
            return "logger"
        return "checker" if self.index < 0 else f"worker {self.index}"

    @property
    def crash_looping(self) -> bool:
        now = time.monotonic()
        return len(self.deaths) == CRASH_LIMIT and now - self.deaths[0] < CRASH_WINDOW


@dataclass
class Child:
    """A forked process: which generation, which slot, which counter row."""

    pid: int
    gen: "Generation"
    slot: WorkerSlot
    row: int
    retiring: bool = False  # replaced (memory guard) or its generation is draining


@dataclass
class Generation:
    number: int
    config: config_mod.Config
    shm: object
    slots: list[WorkerSlot]
    checker: WorkerSlot
    free_rows: set[int]
    carried_row: int
    # name -> slot index, per pool; runtime additions included
    backends: dict[str, dict[str, int]]
    draining: bool = False
    drain_deadline: float = 0.0
    # counter totals copied into the next generation when it started
    handed_over: dict = field(default_factory=dict)
    # the TLS contexts its workers inherit (lb.tls.contexts)
    tls: dict = field(default_factory=dict)
    # name -> the ACL's prefixes in force (lb._fastpath.AclSet): the config's
    # and the runtime changes over them (lb.control.acl)
    acls: dict = field(default_factory=dict)
    # ACL rule decision counts copied into the next generation, by rule key
    rules_handed_over: dict = field(default_factory=dict)
    # limit decision counts copied into the next generation, by limit name
    limits_handed_over: dict = field(default_factory=dict)
    # API-key auth counts copied into the next generation, by auth name
    auth_handed_over: dict = field(default_factory=dict)
    # metrics copied into the next generation, by entity name (lb.metrics)
    metrics_handed_over: dict = field(default_factory=dict)
    # the scrape's backend label texts while the backends stay the same (lb.metrics)
    metrics_label_cache: tuple | None = None
    # the access-log process; None when no listener logs
    logger: WorkerSlot | None = None
    # name -> CacheShm of each [caches.NAME] (lb.shm.caches_for_config): shared
    # with the generation before when the cache's size did not change
    caches: dict = field(default_factory=dict)
    # split name -> its layout in force (lb.control.split): pools, weights, table
    splits: dict = field(default_factory=dict)

    @property
    def helpers(self) -> list[WorkerSlot]:
        """The processes beside the workers: the checker, and the logger."""
        return [self.checker] + ([self.logger] if self.logger is not None else [])

    @property
    def pool_names(self) -> list[str]:
        return list(self.config.pools)


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_listen_socket(bind, backlog: int, freebind: bool = False) -> socket.socket:
    """freebind: the address is a VIP this node may not hold yet (a VRRP
    backup); the socket is bound anyway and serves once the VIP arrives."""
    sock = socket.socket(bind.family, socket.SOCK_STREAM)
    try:
        if freebind:
            if bind.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, ha.IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, ha.IP_FREEBIND, 1)
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


def _totals(stats: dict) -> dict:
    return {k: stats[k] for k in ("total", "bytes_in", "bytes_out", "connect_errors", "connect_timeouts")}


class Supervisor:
    def __init__(self, config, *, status_interval: float = 0.0, on_status=None, on_ready=None):
        self.config = config
        self.on_ready = on_ready
        self.status_interval = status_interval
        self.on_status = on_status
        self.gen: Generation | None = None
        self.old: list[Generation] = []
        self.children: dict[int, Child] = {}
        # (bind, worker slot) -> socket, shared by every generation
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.account: privileges.Account | None = None
        self.admin: AdminServer | None = None
        self.state: StateFile | None = None
        self.started = time.time()
        self.stopping = None  # None, "graceful" or "fast"
        self.stop_deadline = 0.0
        # [ha] BGP, graceful stop: when the listening sockets close, once the
        # routers have taken the traffic over (0: not waiting)
        self.stop_listening_at = 0.0
        self.generations = 0
        self._wakeup_r = self._wakeup_w = -1
        self._pending_signals: list[int] = []
        self._next_rss_check = 0.0
        self._selector = None
        # the status verb's: cpu_percent is measured between two calls on one Process
        self.procs: dict[int, psutil.Process] = {}
        # [global.metrics]: /metrics, /stats, /stats.json (None: not configured)
        self.metrics: metrics_mod.MetricsServer | None = None
        # samples for rates and last-minute percentiles (/stats.json, lb stats)
        self.metrics_history = metrics_mod.History()
        # split name -> its rollout (lb.control.rollout), loaded from the state file at the first tick
        self.rollouts: dict | None = None
        # [ha]: the file keepalived tracks (None when ha.mode is "none") and
        # whether an operator drained this node (kept in the state file)
        self.health: ha.HealthFile | None = None
        self.node_drained = False
        # BGP mode: the VIPs on lo and the routes BIRD announces, which follow
        # the health file's verdict
        self.announcer = ha.Announcer()

    # ---- convenience for single-generation callers (demo, tests) ----------------

    @property
    def shm(self):
        return self.gen.shm if self.gen else None

    @property
    def slots(self) -> list[WorkerSlot]:
        return self.gen.slots if self.gen else []

    @property
    def checker(self) -> WorkerSlot | None:
        return self.gen.checker if self.gen else None

    # ---- start ----------------------------------------------------------------

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
        g = self.config.global_
        self.state = StateFile(g.state_file)
        self.node_drained = self.state.node_drained()
        # the VIPs on lo before the sockets bind them; nothing announced yet
        self.announcer.configure(self.config.ha)
        self._update_health()  # unhealthy until the workers have entered their loops
        self.admin = AdminServer(g.admin_socket, Access(g.user, g.group), functools.partial(control.dispatch, self))
        self.admin.open()
        self.metrics = self._open_metrics(g.metrics_bind)
        self._install_signals()
        stale = shm_mod.remove_stale_regions()
        if stale:
            log.info("removed %d shared-memory region(s) of lb instances that are gone", stale)
        self.gen = self._new_generation(self.config, previous=None)
        self._spawn_generation(self.gen)
        log.info("started: %d worker(s), listening on %s, RLIMIT_NOFILE %d, admin socket %s%s",
                 len(self.gen.slots), self._binds(self.config), nofile, g.admin_socket,
                 f", children run as {self.account}" if self.account else "")

    @staticmethod
    def _binds(config) -> str:
        return ", ".join(str(b) for l in config.listeners.values() for b in l.bind)

    def _sockets_for(self, config) -> list[list[tuple[socket.socket, int]]]:
        """Each worker slot's listening sockets for this config, reusing the ones
        already open: a reload never closes an accept queue it still serves."""
        n = config.global_.worker_count()
        vips = config.ha.vip_addresses()
        per_slot: list[list[tuple[socket.socket, int]]] = [[] for _ in range(n)]
        for li, listener in enumerate(config.listeners.values()):
            for bind in listener.bind:
                for slot in range(n):
                    key = (f"{bind}", slot)
                    sock = self.sockets.get(key)
                    if sock is None:
                        sock = self.sockets[key] = open_listen_socket(bind, listener.backlog,
                                                                      freebind=bind.host in vips)
                    else:
                        sock.listen(listener.backlog)  # takes a changed backlog in place
                    per_slot[slot].append((sock, li))
        return per_slot

    def _new_generation(self, config, previous: Generation | None) -> Generation:
        tls = tls_mod.contexts(config)  # first: a refused certificate changes nothing
        per_slot = self._sockets_for(config)
        n = len(per_slot)
        self.generations += 1
        # rows 0..n-1 for the workers, n..2n-1 spares for replacing a worker while
        # the old one drains, and one more no worker writes: totals carried over
        rows = 2 * n + 1
        region = shm_mod.create_for_config(config, rows, shm_mod.region_path(generation=self.generations),
                                           seeds=control.limits.seeds(previous))
        if self.account is not None:
            # the workers inherit the mapping; processes that attach later by path
            # (admin tools) open it as the account
            os.chown(region.path, self.account.uid, self.account.gid)
        logger_mod.prepare_files(config, self.account)
        caches = shm_mod.caches_for_config(config, previous.caches if previous is not None else None)
        gen = Generation(
            number=self.generations, config=config, shm=region,
            slots=[WorkerSlot(index=i, row=i, sockets=per_slot[i]) for i in range(n)],
            checker=WorkerSlot(index=CHECKER_INDEX, row=-1, sockets=[]),
            logger=(WorkerSlot(index=LOGGER_INDEX, row=-1, sockets=[])
                    if any(l.logs for l in config.listeners.values()) else None),
            free_rows=set(range(n, 2 * n)), carried_row=2 * n,
            backends={name: {b.name: i for i, b in enumerate(p.backends)} for name, p in config.pools.items()},
            tls=tls, caches=caches,
        )
        control.backend.apply_state(self.state, gen)
        control.acl.apply_state(self.state, gen)
        control.split.apply_state(self.state, gen, previous)
        # keys lb made carry over to the new generation, keys from a file do not
        made_keys = previous is not None and not previous.config.global_.tls.keys_file
        tls_mod.publish_ticket_keys(region, config.global_.tls, previous.shm if made_keys else None)
        if previous is not None:
            self._carry_over(previous, gen)
        region.rebuild_changed()
        return gen

    def _carry_over(self, old: Generation, new: Generation) -> None:
        """Backends matched by pool and name keep their health and their counters."""
        for pi, pool in enumerate(new.pool_names):
            if pool not in old.backends:
                continue
            opi = old.pool_names.index(pool)
            for name, idx in new.backends[pool].items():
                oidx = old.backends[pool].get(name)
                if oidx is None:
                    continue
                new.shm.copy_health(pi, idx, old.shm, opi, oidx)
                totals = _totals(old.shm.backend_stats(opi, oidx))
                old.handed_over[(pool, name)] = totals
                new.shm.add_carried(pi, idx, new.carried_row, totals)
        control.acl.carry_over(old, new)
        control.limits.carry_over(old, new)
        control.key.carry_over(old, new)
        metrics_mod.carry_over(old, new)

    def _fold_drained(self, old: Generation) -> None:
        """An old generation is gone: what its connections counted after the
        reload is added to the live one, so totals never go backwards."""
        if self.gen is None:
            return
        control.acl.fold_drained(old, self.gen)
        control.limits.fold_drained(old, self.gen)
        control.key.fold_drained(old, self.gen)
        metrics_mod.fold_drained(old, self.gen)
        for (pool, name), before in old.handed_over.items():
            if pool not in self.gen.backends or name not in self.gen.backends[pool]:
                continue
            opi, oidx = old.pool_names.index(pool), old.backends[pool][name]
            after = _totals(old.shm.backend_stats(opi, oidx))
            delta = {k: after[k] - before[k] for k in after}
            self.gen.shm.add_carried(self.gen.pool_names.index(pool), self.gen.backends[pool][name],
                                     self.gen.carried_row, delta)

    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._pending_signals.append(signum)

    # ---- children ---------------------------------------------------------------

    def _spawn_generation(self, gen: Generation) -> None:
        for slot in gen.slots:
            self._spawn(gen, slot, slot.row)
        for slot in gen.helpers:
            self._spawn(gen, slot, -1)

    def _spawn(self, gen: Generation, slot: WorkerSlot, row: int) -> int:
        if row >= 0:
            gen.shm.reset_row_gauges(row)
        keep = [s.fileno() for s, _ in slot.sockets]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if slot.index == LOGGER_INDEX:
                    code = logger_mod.child_main(self, gen)
                elif slot.index < 0:
                    code = checker_mod.child_main(self, gen)
                else:
                    code = worker_mod.child_main(self, gen, slot, row, keep)
            finally:
                os._exit(code)
        self.children[pid] = Child(pid, gen, slot, row)
        slot.pid = pid
        slot.row = row
        slot.started = time.monotonic()
        slot.respawn_at = 0.0
        log.info("%s of generation %d started: pid %d", slot.name, gen.number, pid)
        return pid

    def inherited_fds(self) -> list[int]:
        """What a forked child must close: the supervisor's own fds."""
        fds = [self._wakeup_r, self._wakeup_w]
        if self._selector is not None:
            # the loop's epoll: children forked from it (after a reload or a
            # respawn) would each keep a copy (found by `python -m bench soak`)
            fds.append(self._selector.fileno())
        if self.admin is not None:
            fds += self.admin.fds()
        if self.metrics is not None:
            fds += self.metrics.fds()
        return fds

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            gen, slot = child.gen, child.slot
            if child.row >= 0:
                # its requests in flight died with it: their counts in the
                # limit tables go (and a table lock it held is let go)
                gen.shm.limits_release_row(child.row)
            for region in gen.caches.values():
                region.reap_fills(pid)
                if region.reap(pid):
                    log.warning("%s (pid %d) died holding the lock of a cache: it was emptied", slot.name, pid)
                checked = region.disk.reap(pid) if region.disk is not None else None
                if checked is not None:
                    log.warning("%s (pid %d) died holding the lock of a disk tier: checked again, %d objects kept, "
                                "%d dropped", slot.name, pid, *checked)
            if child.row >= 0 and child.row != slot.row:
                gen.free_rows.add(child.row)  # a replaced worker's row
            how = self._describe_exit(status)
            if slot.pid == pid:
                slot.pid = 0
            if self.stopping or child.retiring or gen.draining:
                log.info("%s (pid %d, generation %d) exited: %s", slot.name, pid, gen.number, how)
                continue
            now = time.monotonic()
            slot.deaths.append(now)
            slot.restarts += 1
            if slot.crash_looping:
                backoff = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** max(0, slot.restarts - CRASH_LIMIT))
                slot.respawn_at = now + backoff
                log.error("%s (pid %d) died: %s; crash loop, respawning in %.1fs", slot.name, pid, how, backoff)
            else:
                slot.restarts = min(slot.restarts, CRASH_LIMIT)
                log.warning("%s (pid %d) died: %s; respawning", slot.name, pid, how)
                self._spawn(gen, slot, slot.row)

    @staticmethod
    def _describe_exit(status: int) -> str:
        if os.WIFSIGNALED(status):
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exit code {os.WEXITSTATUS(status)}"

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot in [*self.gen.slots, *self.gen.helpers]:
            if slot.pid == 0 and slot.respawn_at and now >= slot.respawn_at:
                self._spawn(self.gen, slot, slot.row)

    def _signal(self, pids, sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _workers_running(self, gen: Generation) -> bool:
        """Every worker of gen has entered its loop (seen in its counter row)."""
        return all(slot.pid and gen.shm.worker_stats(slot.row)["pid"] == slot.pid
                   and gen.shm.worker_stats(slot.row)["heartbeat_ms"] for slot in gen.slots)

    # ---- memory guard -------------------------------------------------------------

    def _check_worker_memory(self) -> None:
        limit = self.config.global_.max_worker_rss
        if not limit or time.monotonic() < self._next_rss_check:
            return
        self._next_rss_check = time.monotonic() + RSS_CHECK_INTERVAL
        for slot in self.gen.slots:
            if not slot.pid or not self.gen.free_rows:
                continue
            try:
                rss = psutil.Process(slot.pid).memory_info().rss
            except psutil.Error:
                continue
            if rss > limit:
                old_pid = slot.pid
                self.children[old_pid].retiring = True
                # the new worker first, on a spare row; then the old one drains
                self._spawn(self.gen, slot, self.gen.free_rows.pop())
                self._signal([old_pid], signal.SIGTERM)
                log.warning("worker %d (pid %d) uses %d MiB, over max_worker_rss: replaced by pid %d, "
                            "the old one drains", slot.index, old_pid, rss >> 20, slot.pid)

    # ---- reload ---------------------------------------------------------------------

    def reload(self, make_config=None) -> dict:
        """Parse and validate the config file in full (or take make_config()'s,
        checked the same way: `lb cert reload`); on success start a new
        generation on the same sockets, then let the old one drain. On error
        the running config keeps serving and the error names the key."""
        if self.stopping:
            raise AdminError("failed", "lb is stopping")
        sdnotify.reloading("reloading")
        try:
            try:
                new_config = make_config() if make_config else config_mod.load(self.config.source)
                config_mod.check_runnable(new_config)
            except config_mod.ConfigError as e:
                log.error("reload refused, the running config keeps serving: %s", e)
                raise AdminError("config", str(e)) from None
            old = self.gen
            new_metrics = None
            try:
                if new_config.global_.metrics_bind != self.config.global_.metrics_bind:
                    new_metrics = self._open_metrics(new_config.global_.metrics_bind)
                gen = self._new_generation(new_config, previous=old)
            except (OSError, ValueError) as e:
                if new_metrics is not None:
                    new_metrics.close()
                log.error("reload failed, the running config keeps serving: %s", e)
                raise AdminError("failed", str(e)) from None
            if new_config.global_.metrics_bind != self.config.global_.metrics_bind:
                self._swap_metrics(new_metrics)
            self._spawn_generation(gen)
            deadline = time.monotonic() + RELOAD_READY_TIMEOUT
            while not self._workers_running(gen) and time.monotonic() < deadline:
                time.sleep(0.005)
            self.gen, self.config = gen, new_config
            self.announcer.configure(new_config.ha)
            self._update_health()
            old.draining = True
            old.drain_deadline = time.monotonic() + old.config.global_.drain_timeout + FAST_STOP_GRACE
            self.old.append(old)
            old_pids = [c.pid for c in self.children.values() if c.gen is old]
            for pid in old_pids:
                self.children[pid].retiring = True
            # old workers stop accepting (the sockets stay open here) and drain
            self._signal(old_pids, signal.SIGTERM)
            log.info("reloaded: generation %d serves %s (config %s); generation %d drains",
                     gen.number, self._binds(new_config), new_config.sha256[:12], old.number)
            for warning in new_config.warnings:
                log.warning("config: %s", warning)
            return {"generation": gen.number, "config": {"path": new_config.source, "sha256": new_config.sha256}}
        finally:
            sdnotify.ready(self._status_text())

    def _retire_drained(self) -> None:
        for old in list(self.old):
            pids = [c.pid for c in self.children.values() if c.gen is old]
            if pids and time.monotonic() >= old.drain_deadline:
                log.warning("generation %d still has %d process(es) after drain_timeout: killing them",
                            old.number, len(pids))
                self._signal(pids, signal.SIGKILL)
                old.drain_deadline = float("inf")
            if pids:
                continue
            self._fold_drained(old)
            old.shm.unlink()
            self.old.remove(old)
            self._close_unused_sockets()
            log.info("generation %d drained", old.number)

    def _close_unused_sockets(self) -> None:
        used = {id(s) for g in [self.gen, *self.old] for slot in g.slots for s, _ in slot.sockets}
        for key, sock in list(self.sockets.items()):
            if id(sock) not in used:
                sock.close()
                del self.sockets[key]

    # ---- metrics ----------------------------------------------------------------

    def _open_metrics(self, bind) -> metrics_mod.MetricsServer | None:
        """The metrics endpoint's socket, bound before anything changes: a
        start or a reload that cannot bind it fails as a whole."""
        if bind is None:
            return None
        server = metrics_mod.MetricsServer(bind, metrics_mod.pages(self))
        server.open()
        return server

    def _swap_metrics(self, server) -> None:
        if self.metrics is not None:
            self.metrics.close(self._selector)
        self.metrics = server
        if server is not None and self._selector is not None:
            server.register(self._selector)

    # ---- access logs ----------------------------------------------------------

    def reopen_logs(self) -> list[tuple]:
        """Ask every generation's logger to reopen its files (logrotate); the
        (generation, request) pairs to wait for (lb.control.logs)."""
        asked = []
        for gen in [self.gen, *self.old]:
            if gen is not None and gen.logger is not None:
                logger_mod.prepare_files(gen.config, self.account)
                asked.append((gen, gen.shm.log_reopen()))
        if asked:
            log.info("access logs: reopening files")
        return asked

    # ---- stop -----------------------------------------------------------------

    def stop(self, fast: bool = False) -> None:
        """Begin a stop. Graceful: close the listening sockets (new connections are
        refused at once), let workers finish their connections up to drain_timeout.
        Fast: workers close everything now.

        A graceful stop of a node that announces VIPs (BGP mode, healthy,
        not drained) first withdraws them, then keeps accepting for the time
        the routers take to move the traffic (ha.handover_settle), so the
        clients' last SYNs to this node are served, not refused. (In VRRP
        mode keepalived takes the VIPs off this node at once: nothing more
        would arrive.)"""
        if self.stopping == "fast" or (self.stopping and not fast):
            return
        announcing = self.config.ha.mode == "bgp" and self.health is not None and self.health.value == ha.HEALTHY
        self.stopping = "fast" if fast else "graceful"
        settle = ha.handover_settle(self.config.ha) if announcing and not fast else 0.0
        grace = FAST_STOP_GRACE if fast else self.config.global_.drain_timeout + FAST_STOP_GRACE
        self.stop_deadline = time.monotonic() + settle + grace
        log.info("stopping (%s)", self.stopping)
        # first: keepalived moves the VIPs, BIRD withdraws them, while the
        # workers still serve
        self._update_health()
        sdnotify.stopping(f"stopping ({self.stopping})")
        if settle:
            log.info("ha: accepting for %.1fs more while the traffic moves to the other nodes", settle)
            self.stop_listening_at = time.monotonic() + settle
            return
        self._stop_listening(fast)

    def _stop_listening(self, fast: bool) -> None:
        self.stop_listening_at = 0.0
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        if self.metrics is not None:
            self.metrics.close(self._selector)
            self.metrics = None
        self._signal(list(self.children), signal.SIGINT if fast else signal.SIGTERM)

    def stop_soon(self, fast: bool) -> None:
        """Begin a stop at the loop's next turn, as SIGINT (fast) or SIGTERM
        would: the caller (the stop verb) still answers first."""
        self._pending_signals.append(signal.SIGINT if fast else signal.SIGTERM)

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
        sel = self._selector = selectors.DefaultSelector()
        sel.register(self._wakeup_r, selectors.EVENT_READ, ("wakeup", None))
        sel.register(self.admin.sock, selectors.EVENT_READ, ("admin", None))
        if self.metrics is not None:
            self.metrics.register(sel)
        next_status = time.monotonic() + self.status_interval if self.status_interval else None
        while True:
            now = time.monotonic()
            timeout = TICK
            if next_status is not None:
                timeout = min(timeout, max(0.0, next_status - now))
            for key, mask in sel.select(timeout):
                kind, peer = key.data
                if kind == "wakeup":
                    try:
                        while os.read(self._wakeup_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif kind == "admin":
                    self.admin.on_accept(sel)
                elif kind == "admin-peer":
                    self.admin.on_readable(sel, peer)
                elif kind in ("metrics", "metrics-peer") and self.metrics is not None:
                    self.metrics.on_event(sel, kind, peer, mask)
            self._handle_signals()
            if self.stopping:
                self.admin.stop_listening(sel)
                if self.stop_listening_at and time.monotonic() >= self.stop_listening_at:
                    self._stop_listening(fast=False)
                if not self.children:
                    return
                if time.monotonic() >= self.stop_deadline:
                    log.warning("children still running after the stop deadline: killing them")
                    self._signal(list(self.children), signal.SIGKILL)
                    self.stop_deadline = float("inf")
                continue
            self._respawn_due()
            self._retire_drained()
            self._slow_start()
            self._check_worker_memory()
            tls_mod.rotate_ticket_keys(self.gen.shm, self.config.global_.tls)
            jwks.tick(self)
            # a weight or state change bumped a pool's generation: its Maglev
            # table is rebuilt here, the tables' only writer
            self.gen.shm.rebuild_changed()
            self._update_health()
            self.admin.tick()
            if self.metrics is not None:
                self.metrics.tick(sel)
            self.metrics_history.tick(self)
            control.rollout.tick(self)
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
                try:
                    self.reload()
                except AdminError:
                    pass  # logged; the running config keeps serving
            elif signum == signal.SIGUSR1:
                self.reopen_logs()
        self._reap()

    def _update_health(self) -> None:
        """The health file follows the node's state; written only on change."""
        want = self.config.ha.health_file if self.config.ha.enabled else None
        if self.health is not None and self.health.path != want:
            # a reload moved the file or turned [ha] off: the old one must not
            # keep saying healthy to a keepalived still reading it
            self.health.set(["no longer tracked"])
            self.health = None
        if want is None:
            return
        if self.health is None:
            self.health = ha.HealthFile(want)
        reasons = ha.unhealthy_reasons(self)
        self.health.set(reasons)
        self.announcer.sync(not reasons)

    def _status_text(self) -> str:
        return f"serving: {len(self.gen.slots)} worker(s) on {self._binds(self.config)}, generation {self.gen.number}"

    def _slow_start(self) -> None:
        """Writer of eff_weight: after down -> up, ramp a backend's weight in
        effect from SLOWSTART_STEP of its weight to all of it over `slowstart`,
        in steps of SLOWSTART_STEP, so tables are rebuilt at most 20 times a ramp.
        A backend that is down already waits at the first step, so it comes back
        at the bottom of its ramp without one pick at full weight."""
        gen = self.gen
        now_ms = time.monotonic() * 1000  # CLOCK_MONOTONIC, the checker's clock
        for pi, pool in enumerate(gen.config.pools.values()):
            ramp_ms = pool.health.slowstart * 1000
            if not ramp_ms:
                continue
            for bi in gen.backends[pool.name].values():
                b = gen.shm.backend(pi, bi)
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
                    gen.shm.set_weight(pi, bi, weight, eff)

    def _cleanup(self) -> None:
        if self.health is not None:
            self.health.set(["stopped"])
        self.announcer.sync(False)
        self._signal(list(self.children), signal.SIGKILL)
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()
        if self.gen is not None:
            shm_mod.close_disks(self.gen.caches)  # no worker left to write them
        self.announcer.close()  # the VIPs leave lo once nothing serves them
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        for gen in [self.gen, *self.old]:
            if gen is not None:
                gen.shm.unlink()
        if self.admin is not None:
            self.admin.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self._wakeup_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = -1
        log.info("stopped")
