"""The logger process: access-log records out of the workers' rings, formatted
and written (docs/observability.md).

Workers never wait for it: each writes fixed-size records into its own ring in
shared memory (lb/fastpath/log.pxi) and drops (and counts) what does not fit.
This process takes the records in batches, turns each batch into lines with
the compiled formatter (lb._fastpath.LogFormat: no Python per record) and
writes them: one write per batch to stdout or a file, one datagram per line
to syslog (RFC 5424). One logger serves one generation; the supervisor forks
it beside the workers and respawns it when it dies.

Files are reopened when the supervisor asks through shared memory (SIGUSR1 to
the daemon, or `lb logs reopen`): the batch in hand goes to the old file, the
next to the new one, so logrotate's rename loses no line.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import ssl
import time

from lb._fastpath import LogFormat, LogReader, phase_plan
from lb.shm import process_alive
from lb.worker import PR_SET_NAME, PR_SET_PDEATHSIG, detach_from_supervisor, drop_privileges, prctl

log = logging.getLogger("lb")

# How often the rings are read: soon again while records flow, less often
# when they do not. At 8192 records a ring holds a quarter second of one
# worker's full speed, many polls.
BUSY_POLL = 0.01
IDLE_POLL = 0.02
SEVERITY_INFO = 6


def cipher_names() -> dict[int, str]:
    """IANA cipher suite id -> OpenSSL's name, for every suite this OpenSSL knows."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    return {c["id"] & 0xFFFF: c["name"] for c in ctx.get_ciphers()}


def names_of(config) -> dict:
    """What records refer to by index, as the formatter shows it."""
    listeners = list(config.listeners.values())
    return {
        "listeners": [l.name for l in listeners],
        "pools": list(config.pools),
        "routes": [[r.name for r in l.routes] for l in listeners],
        "steps": [phase_plan(l)["request"] for l in listeners],
        "ciphers": cipher_names(),
    }


def syslog_ops(settings, hostname: str, pid: int) -> tuple:
    """An RFC 5424 header before the line: <PRI>1 TIMESTAMP HOSTNAME APP-NAME
    PROCID MSGID STRUCTURED-DATA MSG."""
    pri = settings.facility * 8 + SEVERITY_INFO
    ops = list(settings.ops)
    first_lit, first_field = ops[0]
    return ((f"<{pri}>1 ", "syslog_time"), (f" {hostname} lb {pid} access - {first_lit}", first_field), *ops[1:])


def prepare_files(config, account) -> None:
    """Run by the supervisor (root, when started as root) before a logger
    starts and before it reopens: each log file exists and, when the
    children drop privileges, belongs to their account, so the logger can
    open it in a directory only root may write to (/var/log/lb)."""
    for settings in config.logs.values():
        if settings.target.kind != "file":
            continue
        try:
            fd = os.open(settings.target.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o640)
        except FileExistsError:
            continue
        except OSError as e:
            log.error("access log %s: cannot create it: %s", settings.target, e)
            continue
        try:
            if account is not None:
                os.fchown(fd, account.uid, account.gid)
        finally:
            os.close(fd)


class Sink:
    """Where one log's lines go. A file that cannot be opened is tried again
    at most every RETRY seconds (and at each reopen); its lines meanwhile are
    lost and counted, and the logger goes on with its other logs."""

    RETRY = 1.0

    def __init__(self, target):
        self.target = target
        self.fd = -1
        self.sock = None
        self.failed_at = 0.0
        self.write_failing = False   # said once, not once a batch
        self.open()

    def open(self) -> bool:
        try:
            self._open()
        except OSError as e:
            if not self.failed_at:
                log.error("access log %s: cannot open it: %s; its lines are lost until it can", self.target, e)
            self.failed_at = time.monotonic()
            return False
        if self.failed_at:
            log.info("access log %s: open again", self.target)
        self.failed_at = 0.0
        return True

    def _open(self) -> None:
        t = self.target
        if t.kind == "stdout":
            self.fd = 1
        elif t.kind == "file":
            self.fd = os.open(t.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        elif t.kind == "syslog_unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
        else:
            self.sock = socket.socket(t.family, socket.SOCK_DGRAM)
            self.sock.setblocking(False)

    def reopen(self) -> None:
        if self.target.kind == "file":
            old = self.fd
            if not self.open():
                self.fd = old        # on to the old file rather than nowhere
                return
            if old >= 0:
                os.close(old)

    def write(self, view: memoryview, lines: int) -> tuple[int, int]:
        """Write `lines` lines (view: whole lines, each ending in a newline);
        (lines written, lines lost)."""
        if self.sock is not None:
            return self._send(bytes(view))
        if self.fd < 0 and not (time.monotonic() - self.failed_at >= self.RETRY and self.open()):
            return 0, lines
        while view:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    time.sleep(0.001)  # a stdout pipe that is full: the logger waits, never a worker
                    continue
                if not self.write_failing:
                    log.error("access log %s: write failed: %s; its lines are lost until it works", self.target, e)
                    self.write_failing = True
                lost = bytes(view).count(b"\n")
                return lines - lost, lost
            view = view[n:]
        if self.write_failing:
            log.info("access log %s: writing again", self.target)
            self.write_failing = False
        return lines, 0

    def _send(self, data: bytes) -> tuple[int, int]:
        t = self.target
        address = t.path if t.kind == "syslog_unix" else (t.host, t.port)
        sent = lost = 0
        for line in data.split(b"\n")[:-1]:
            try:
                self.sock.sendto(line, address)
                sent += 1
            except OSError:
                # a syslog daemon that is away or full: the line is lost, counted
                lost += 1
        return sent, lost


class Logger:
    def __init__(self, gen, shm=None):
        self.config = gen.config
        self.shm = shm if shm is not None else gen.shm
        self.reader = LogReader(self.shm)
        # every row a worker may write: the slots' and the spares' (the last,
        # the carried-over totals' row, has no worker)
        self.rows = range(max(0, self.reader.n_rows - 1)) if self.reader.n_records else range(0)
        self.stopping = False
        names = names_of(self.config)
        listeners = list(self.config.listeners.values())
        hostname = socket.gethostname() or "-"
        self.outputs = []
        for settings in self.config.logs.values():
            serves = [i for i, l in enumerate(listeners) if any(x.name == settings.name for x in l.logs)]
            if not serves:
                continue
            syslog = settings.target.kind.startswith("syslog")
            ops = syslog_ops(settings, hostname, os.getpid()) if syslog else settings.ops
            fmt = LogFormat(self.shm, ops, settings.json, serves, settings.sample, names)
            self.outputs.append((fmt, Sink(settings.target)))

    def drain_once(self) -> int:
        """Take and write what every ring holds; the number of records taken."""
        taken = lines = lost = 0
        for row in self.rows:
            n = self.reader.available(row)
            if not n:
                continue
            taken += n
            for fmt, sink in self.outputs:
                made = fmt.format_ring(self.reader, row, n)
                if made:
                    ok, bad = sink.write(fmt.view(), made)
                    lines += ok
                    lost += bad
            self.reader.release(row, n)
        if lines or lost:
            self.reader.count_lines(lines, lost)
        req = self.reader.reopen_wanted()
        if req:
            for _, sink in self.outputs:
                sink.reopen()
            self.reader.reopened(req)
        return taken

    def workers_gone(self) -> bool:
        for row in self.rows:
            pid = self.shm.worker_stats(row)["pid"]
            if pid and process_alive(pid):
                return False
        return True

    def run(self) -> None:
        self.reader.set_logger_pid(os.getpid())
        while True:
            taken = self.drain_once()
            if self.stopping or os.getppid() == 1:
                # the workers write their last records as they close: go on
                # until they are gone and their rings are empty
                if self.workers_gone() and self.reader.pending() == 0:
                    self.drain_once()
                    return
            if not taken:
                time.sleep(IDLE_POLL)
            elif taken < 1024:
                time.sleep(BUSY_POLL)    # (more: a backlog, read again at once)


def child_main(sup, gen) -> int:
    """Entry point in the forked child. Returns the exit code."""
    try:
        detach_from_supervisor(sup, keep=[])
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
        logger_holder = {}

        def on_stop(signum, frame):
            if "logger" in logger_holder:
                logger_holder["logger"].stopping = True

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, on_stop)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        drop_privileges(sup)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        prctl(PR_SET_NAME, b"lb-logger")
        logger = logger_holder["logger"] = Logger(gen)
        logger.run()
        return 0
    except Exception:
        log.exception("logger failed")
        return 1
