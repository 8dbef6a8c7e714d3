"""The packages (issue 7 acceptance): `make deb` and `make rpm` build from the
tree; lintian finds no error in the .deb; the .deb installs with apt-get, and
the installed lb answers --version, checks its shipped /etc/lb/lb.toml, has a
man page, runs as root with workers as the lb user (notifying like systemd
expects), forwards traffic, stops, and is removed then purged cleanly. The
.rpm's file list and requirements are read with rpm -qpl / -qpR.

Slow (about a minute and a half here; more where the build tools must be
installed first, which this test does with apt-get). Needs root: it installs
packages. It fails, never skips, when it cannot.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

from daemon_helpers import EchoBackend, NotifySocket, free_port, round_trip, wait_children, write_config
from lb import __version__

REPO = Path(__file__).resolve().parent.parent
DEB_VERSION = f"{__version__}-1"
# build and inspect: Makefile's DEB_BUILD_DEPS and RPM_BUILD_DEPS, lintian, man
TOOLS = ["build-essential", "dpkg-dev", "debhelper", "dh-python", "python3-all-dev", "python3-click",
         "python3-setuptools", "rpm", "lintian", "man-db"]
# the installed lb, not this tree's: no PYTHONPATH, no pyenv, no virtualenv
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
             "DEBIAN_FRONTEND": "noninteractive"}


def run(cmd, timeout=120, check=True, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", CLEAN_ENV)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert result.returncode == 0, (f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def installed(package: str) -> bool:
    q = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], check=False)
    return q.returncode == 0 and q.stdout.startswith("ii")


def apt_get(*args, timeout=600) -> None:
    """apt-get, once more after an update if the lists were stale or missing."""
    cmd = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", *args]
    if run(cmd, timeout=timeout, check=False).returncode != 0:
        run(["apt-get", "update", "-q"], timeout=timeout)
        run(cmd, timeout=timeout)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """`make deb` and `make rpm`, side by side (each compiles one large C file
    on one core), into a fresh directory."""
    assert os.geteuid() == 0, "the packaging test installs packages: run it as root"
    missing = [p for p in TOOLS if not installed(p)]
    if missing:
        apt_get("install", "--no-install-recommends", *missing)
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, DIST=str(out))
    builds = {target: subprocess.Popen(["make", target, f"PYTHON={sys.executable}"], cwd=REPO, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for target in ("deb", "rpm")}
    for target, proc in builds.items():
        log, _ = proc.communicate(timeout=420)
        assert proc.returncode == 0, f"make {target} failed:\n{log[-5000:]}"
    return out


def test_rpm_files_and_requirements(dist):
    rpm = dist / f"lb-{__version__}-1.x86_64.rpm"
    assert rpm.exists(), sorted(p.name for p in dist.iterdir())
    assert (dist / f"lb-{__version__}-1.src.rpm").exists()

    files = set(run(["rpm", "-qpl", rpm]).stdout.split())
    for path in ("/usr/bin/lb", "/etc/lb/lb.toml", "/usr/lib/systemd/system/lb.service",
                 "/usr/lib/sysusers.d/lb.conf", "/var/lib/lb", "/usr/share/doc/lb-0.1.0/configuration.md"):
        assert path in files, path
    assert any(re.fullmatch(r"/usr/share/man/man1/lb\.1(\.gz)?", f) for f in files)
    assert any(re.fullmatch(r"/usr/lib64/python3\.\d+/site-packages/lb/_fastpath\.cpython-3\d+-.*\.so", f)
               for f in files)
    assert not any(f.endswith("_fastpath.c") for f in files)
    assert run(["rpm", "-qpc", rpm]).stdout.split() == ["/etc/lb/lb.toml"]

    requires = run(["rpm", "-qpR", rpm]).stdout.splitlines()
    for name in ("python3-click", "python3-psutil", "python3-pyroute2", "shadow-utils"):
        assert any(r.split()[0] == name for r in requires), (name, requires)
    assert any(r.startswith("python(abi) = 3.") for r in requires), requires
    assert any(r.startswith("libc.so.6") for r in requires), requires
    scripts = run(["rpm", "-qp", "--scripts", rpm]).stdout
    assert "useradd -r -g lb -d /var/lib/lb" in scripts


def test_deb_contents_and_lintian(dist):
    deb = dist / f"lb_{DEB_VERSION}_amd64.deb"
    assert deb.exists(), sorted(p.name for p in dist.iterdir())
    assert (dist / f"lb_{DEB_VERSION}.dsc").exists(), "the Debian source package"

    contents = run(["dpkg-deb", "-c", deb]).stdout
    for path in ("./usr/bin/lb", "./etc/lb/lb.toml", "./lib/systemd/system/lb.service",
                 "./usr/share/man/man1/lb.1.gz", "./usr/share/doc/lb/copyright"):
        assert f" {path}\n" in contents, path
    assert re.search(r"/usr/lib/python3/dist-packages/lb/_fastpath\.cpython-3\d+-.*\.so\n", contents)
    control = run(["dpkg-deb", "-f", deb, "Depends"]).stdout
    for name in ("python3-click", "python3-psutil", "python3-pyroute2", "adduser", "libc6"):
        assert name in control, control

    lintian = run(["lintian", "--pedantic", "--display-info", deb, dist / f"lb_{DEB_VERSION}.dsc"],
                  timeout=300, check=False)
    tags = [line for line in lintian.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    print("lintian:\n" + "\n".join(tags))
    errors = [t for t in tags if t.startswith("E: ")]
    assert not errors, "\n".join(tags)


def test_deb_install_run_remove(dist, tmp_path):
    deb = dist / f"lb_{DEB_VERSION}_amd64.deb"
    apt_get("install", "--no-install-recommends", str(deb))
    try:
        _check_installed()
        _run_installed_daemon(tmp_path)
        _remove_then_purge()
    finally:
        if installed("lb") or run(["dpkg-query", "-W", "lb"], check=False).returncode == 0:
            run(["apt-get", "-y", "purge", "lb"], check=False)


def _check_installed() -> None:
    assert installed("lb")
    assert run(["/usr/bin/lb", "--version"]).stdout.strip() == f"lb, version {__version__}"
    where = run(["/usr/bin/python3", "-c", "import lb, lb._fastpath; print(lb.__file__)"], cwd="/").stdout
    assert where.startswith("/usr/lib/python3/dist-packages/lb/"), where
    check = run(["/usr/bin/lb", "check", "-c", "/etc/lb/lb.toml"])
    assert check.stdout.startswith("/etc/lb/lb.toml: ok (1 listener, 1 pool, 3 backends)"), check.stdout
    assert "/etc/lb/lb.toml" in run(["dpkg-query", "-W", "-f=${Conffiles}", "lb"]).stdout

    page = run(["man", "-P", "cat", "lb"], env={**CLEAN_ENV, "MANWIDTH": "100"}).stdout
    for text in ("lb - load balancer", "lb run [OPTIONS]", "lb check [OPTIONS]", "lb pool simulate",
                 "SIGTERM", "NOTIFY_SOCKET", "/etc/lb/lb.toml"):
        assert text in page, text

    user = pwd.getpwnam("lb")
    assert user.pw_uid < 1000 and user.pw_dir == "/var/lib/lb" and user.pw_shell == "/usr/sbin/nologin"
    assert grp.getgrnam("lb").gr_gid == user.pw_gid
    state = os.stat("/var/lib/lb")
    assert stat.S_ISDIR(state.st_mode) and stat.S_IMODE(state.st_mode) == 0o750
    assert (state.st_uid, state.st_gid) == (0, user.pw_gid)

    unit = Path("/lib/systemd/system/lb.service").read_text()
    for line in ("Type=notify", "ExecStart=/usr/bin/lb run -c /etc/lb/lb.toml", "ExecReload=/bin/kill -HUP $MAINPID",
                 "RuntimeDirectory=lb", "StateDirectory=lb", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert f"\n{line}\n" in unit, line
    if Path("/usr/bin/systemd-analyze").exists():
        verify = run(["systemd-analyze", "verify", "/lib/systemd/system/lb.service"], check=False)
        assert "lb.service" not in verify.stdout + verify.stderr, verify.stdout + verify.stderr


def _run_installed_daemon(tmp_path) -> None:
    """/usr/bin/lb as root, as lb.service starts it (NOTIFY_SOCKET included)."""
    lb_user = pwd.getpwnam("lb")
    backend = EchoBackend("b0")
    port = free_port()
    config = write_config(tmp_path / "lb.toml", port, [backend.port], workers=2,
                          global_extra='user = "lb"\ngroup = "lb"\n')
    assert run(["/usr/bin/lb", "check", "-c", config]).returncode == 0
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    log_path = tmp_path / "lb.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["/usr/bin/lb", "run", "-c", config], cwd=tmp_path, stderr=log,
                                env={**CLEAN_ENV, "NOTIFY_SOCKET": notify.path})
    try:
        notify.expect("READY", proc=proc)
        kids = wait_children(proc.pid, 3)
        assert sorted(kids) == ["lb-checker", "lb-worker-0", "lb-worker-1"], log_path.read_text()
        for name, p in kids.items():
            assert tuple(p.uids()) == (lb_user.pw_uid,) * 3, name
            assert tuple(p.gids()) == (lb_user.pw_gid,) * 3, name
        assert proc.pid and os.stat(f"/proc/{proc.pid}").st_uid == 0
        for i in range(6):
            payload = os.urandom(50000 + i)
            assert round_trip(port, payload) == ("b0", payload)

        proc.send_signal(signal.SIGHUP)
        notify.expect("RELOADING", proc=proc)
        notify.expect("READY", proc=proc)
        proc.send_signal(signal.SIGTERM)
        notify.expect("STOPPING", proc=proc)
        assert proc.wait(timeout=20) == 0, log_path.read_text()
        assert not Path(f"/dev/shm/lb-{proc.pid}.shm").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        backend.close()
    log = log_path.read_text()
    assert "children run as lb:lb" in log and "stopped" in log, log


def _remove_then_purge() -> None:
    Path("/var/lib/lb/state.json").write_text("{}\n")  # data of the running service
    run(["apt-get", "-y", "remove", "lb"], timeout=300)
    assert not Path("/usr/bin/lb").exists()
    assert not installed("lb")
    # removal leaves the configuration, the data and the account
    assert Path("/etc/lb/lb.toml").exists()
    assert Path("/var/lib/lb/state.json").read_text() == "{}\n"
    pwd.getpwnam("lb")

    purge = run(["apt-get", "-y", "purge", "lb"], timeout=300)
    assert run(["dpkg-query", "-W", "lb"], check=False).returncode != 0, "purge leaves no trace in dpkg"
    for path in ("/etc/lb", "/var/lib/lb", "/lib/systemd/system/lb.service"):
        assert not Path(path).exists(), path
    try:
        pwd.getpwnam("lb")
    except KeyError:
        pass
    else:
        # postrm leaves an account a process still runs as (userdel refuses):
        # on a machine where other lb test runs go on at the same time, their
        # workers take the default "lb" account while this package is installed
        output = purge.stdout + purge.stderr
        assert "is currently used by process" in output, f"purge left the lb account:\n{output}"
        warnings.warn("the lb account was in use by another lb at purge time and was left; removing it now")
        _delete_account_when_unused()
    with pytest.raises(KeyError):
        pwd.getpwnam("lb")
    with pytest.raises(KeyError):
        grp.getgrnam("lb")
    # lb.service is not left enabled anywhere
    assert not list(Path("/etc/systemd/system").rglob("lb.service"))


def _delete_account_when_unused(timeout: float = 60.0) -> None:
    uid = pwd.getpwnam("lb").pw_uid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.info["uids"] and p.info["uids"].real == uid for p in psutil.process_iter(["uids"])):
            if run(["deluser", "--system", "--quiet", "lb"], check=False).returncode == 0:
                run(["delgroup", "--system", "--quiet", "--only-if-empty", "lb"], check=False)
                return
        time.sleep(0.2)
    raise AssertionError("processes kept running as lb")
