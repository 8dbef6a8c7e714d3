"""Fixtures: real backend processes, a real `lb run` process, free ports."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from reporting_process import ReportingProcess

HERE = Path(__file__).parent
BACKEND_SERVER = HERE / "backend_server.py"

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.fixture(scope="session", autouse=True)
def compiled_fastpath():
    """The data plane must be the compiled one: an import failure is a test failure."""
    try:
        import lb._fastpath  # noqa: F401
    except ImportError as e:
        pytest.fail(f"lb._fastpath is not built ({e}); run `pip install .` or `make test`")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_gone(pid: int) -> bool:
    """The process has ended: reaped, or a zombie its parent has not reaped
    yet. (pid_exists followed by Process would race that reaping: the parent
    can reap it between the two calls.)"""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    """Poll a condition that has no event to wait on (another process's state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Backend(ReportingProcess):
    """A tests/backend_server.py process."""

    def __init__(self, name: str = "backend", mode: str = "transform", hello: bool = False,
                 host: str = "127.0.0.1", port: int = 0, extra_args=()):
        """port: 0 picks a free one; a fixed one brings a backend back where it was.
        extra_args: more backend_server.py options (--status, --report-connections, ...)."""
        self.name = name
        self.host = host
        args = [sys.executable, str(BACKEND_SERVER), "--name", name, "--mode", mode, "--host", host,
                "--port", str(port), *extra_args]
        if hello:
            args.append("--hello")
        super().__init__(args, f"backend {name}")

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@pytest.fixture
def backends():
    started: list[Backend] = []

    def start(*args, **kwargs) -> Backend:
        b = Backend(*args, **kwargs)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


HEALTH_NONE = 'type = "none"'


def global_toml(workers: int = 1, run_dir: str | None = None) -> str:
    """The [global] table of a test config: its own admin socket and state file."""
    run_dir = run_dir or tempfile.mkdtemp(prefix="lb-test-")
    return textwrap.dedent(f"""\
        [global]
        workers = {workers}
        drain_timeout = "5s"
        admin_socket = "{run_dir}/admin.sock"
        state_file = "{run_dir}/state.json"
        """)


def lb_config(port: int, backends, *, workers: int = 1, algorithm: str = "roundrobin",
              connect_timeout: str = "1s", pool_extra: str = "", listener_extra: str = "", global_extra: str = "",
              bind_host: str = "127.0.0.1", health: str = HEALTH_NONE, drain_timeout: str = "5s",
              mode: str = "tcp") -> str:
    """backends: sequence of (address, name, weight), (address, name, weight, backup)
    or Backend objects. health: the body of [pools.p.health] (TOML lines); more
    sections of the pool (e.g. "[pools.p.passive] ...") may follow it there."""
    bind = f"[{bind_host}]:{port}" if ":" in bind_host else f"{bind_host}:{port}"
    if "admin_socket" not in global_extra:
        # every daemon of a test run gets its own admin socket and state file
        run_dir = tempfile.mkdtemp(prefix="lb-test-")
        global_extra = f'admin_socket = "{run_dir}/admin.sock"\nstate_file = "{run_dir}/state.json"\n' + global_extra
    items = []
    for b in backends:
        backup = False
        if isinstance(b, Backend):
            address, name, weight = b.address, b.name, 100
        elif len(b) == 4:
            address, name, weight, backup = b
        else:
            address, name, weight = b
        items.append(f'[[pools.p.backends]]\naddress = "{address}"\nname = "{name}"\nweight = {weight}\n'
                     + ("backup = true\n" if backup else ""))
    return textwrap.dedent(f"""\
        [global]
        workers = {workers}
        drain_timeout = "{drain_timeout}"
        {global_extra}

        [listeners.t]
        bind = ["{bind}"]
        mode = "{mode}"
        pool = "p"
        {listener_extra}

        [pools.p]
        algorithm = "{algorithm}"
        connect_timeout = "{connect_timeout}"
        {pool_extra}

        [pools.p.health]
        """) + textwrap.dedent(health).strip() + "\n\n" + "\n".join(items)


class LbProcess:
    """`python -m lb run -c FILE` as a child process, ready when every worker
    has entered its loop (seen in shared memory, without sending traffic)."""

    def __init__(self, config_text: str, tmp_path: Path, preexec_fn=None):
        from lb._fastpath import Shm
        from lb.shm import region_path

        self.config_path = tmp_path / "lb.toml"
        self.config_path.write_text(config_text)
        self.log_path = tmp_path / "lb.log"
        self._log = open(self.log_path, "w")
        started = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "lb", "run", "-c", str(self.config_path)],
                                     stderr=self._log, stdout=self._log, preexec_fn=preexec_fn)
        self.shm_path = region_path(self.proc.pid)

        def attached():
            if self.proc.poll() is not None:
                raise AssertionError(f"lb exited with {self.proc.returncode}:\n{self.log()}")
            try:
                # a file made before this lb started is another's, whose pid
                # this one has (lb replaces it with a new file of its own);
                # a second's margin for the kernel's coarse file times
                if os.stat(self.shm_path).st_ctime < started - 1.0:
                    return None
                return Shm.attach(self.shm_path)
            except (OSError, ValueError):
                return None

        try:
            self.shm = wait_for(attached, 10, "lb's shared memory")
            self.n_workers = self.shm.n_rows // 2
            wait_for(self.all_workers_running, 10, "lb workers to start")
        except AssertionError as e:
            # not handed to the fixture, so stopped here: a slow start must not
            # leave lb running after its test; the supervisor's log says which
            # worker failed or what it waited on
            text = self.log()
            self.stop(signal.SIGTERM, 10)
            raise AssertionError(f"{e}\nlb log:\n{text}") from None

    def worker_pid(self, row: int) -> int:
        return self.shm.worker_stats(row)["pid"]

    def all_workers_running(self) -> bool:
        for row in range(self.n_workers):
            pid = self.worker_pid(row)
            if not pid or process_gone(pid):
                return False
        return True

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def backend_stats(self, index: int, pool: int = 0) -> dict:
        return self.shm.backend_stats(pool, index)

    def worker_stats(self) -> list[dict]:
        return [self.shm.worker_stats(r) for r in range(self.n_workers)]

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def origins():
    """origins(name="o"): an http origin (tests/http_origin.py), stopped at the end of the test."""
    from http_origin import Origin

    started = []

    def start(name: str = "o"):
        o = Origin(name)
        started.append(o)
        return o

    yield start
    for o in started:
        o.stop()


@pytest.fixture
def run_lb(tmp_path):
    started: list[LbProcess] = []

    def start(config_text: str, **kwargs) -> LbProcess:
        lb = LbProcess(config_text, tmp_path, **kwargs)
        started.append(lb)
        return lb

    yield start
    for lb in started:
        lb.stop(signal.SIGINT)
        assert not os.path.exists(lb.shm_path), "shared memory left behind"
