"""A worker process: Python sets the stage once after fork, then hands the
process to the compiled loop (`lb._fastpath.Worker.run`) until it stops."""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal

from lb import privileges
from lb._fastpath import Worker, sockmap_prepare

log = logging.getLogger("lb")

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
# Signals the loop reads from its signalfd; blocked so they are queued, not delivered.
LOOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


def prctl(option: int, arg) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def detach_from_supervisor(sup, keep: list[int]) -> None:
    """Undo what the fork copied from the supervisor: its signal handling, its
    wakeup pipe and admin socket, and the listening sockets not in keep."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, LOOP_SIGNALS)
    for sig in LOOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    for fd in sup.inherited_fds():
        os.close(fd)
    for sock in sup.sockets.values():
        if sock.fileno() not in keep:
            sock.close()


def drop_privileges(sup) -> None:
    """As the account the supervisor resolved, if it started as root. Before
    PR_SET_PDEATHSIG: a change of credentials clears the parent-death signal."""
    if sup.account is not None:
        privileges.drop(sup.account.uid, sup.account.gid)


def prepare_sockmap(config, index: int) -> None:
    """The BPF maps and program of forward = "sockmap" listeners, made while
    the worker still has the privileges bpf(2) needs. When the kernel refuses
    (an unprivileged container, no bpf(2)), those listeners forward in lb as
    without the option: said once (by worker 0), counted per connection."""
    if not any(listener.forward == "sockmap" for listener in config.listeners.values()):
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    failed = sockmap_prepare(soft)
    if failed is not None and index == 0:
        err, step = failed
        log.warning('forward = "sockmap": the kernel refused %s (%s); those listeners forward in lb '
                    '(worker stats: sockmap_fallbacks)', step, os.strerror(err))


def child_main(sup, gen, slot, row: int, keep: list[int]) -> int:
    """Entry point in the forked child. Returns the exit code."""
    try:
        detach_from_supervisor(sup, keep)
        prepare_sockmap(gen.config, slot.index)
        drop_privileges(sup)
        # a worker must not outlive a supervisor that was killed outright
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        prctl(PR_SET_NAME, f"lb-worker-{slot.index}".encode())
        if os.getppid() == 1:
            return 0
        config = gen.config
        by_index = list(config.listeners.values())
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds_open = len(os.listdir("/proc/self/fd"))
        worker = Worker(gen.shm, row, [(sock.fileno(), by_index[li]) for sock, li in slot.sockets],
                        list(config.pools.values()), splice=config.global_.splice, fd_limit=soft - fds_open,
                        drain_timeout=config.global_.drain_timeout, tls=gen.tls,
                        listener_names=list(config.listeners), auths=list(config.auth.values()),
                        max_connections=config.global_.max_connections, io_uring=config.global_.io_uring,
                        caches=[(gen.caches[name], cache) for name, cache in config.caches.items()])
        worker.run()
        return 0
    except Exception:
        log.exception("worker %d failed", slot.index)
        return 1
