"""The shape the features land on (docs/architecture.md): the shared-memory
layout declared once, the request phases each listener runs, and the
architecture page matching the tree."""

from __future__ import annotations

import fnmatch
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from lb import config
from lb._fastpath import PHASES, REGIONS, Shm, phase_plan

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"

POOLS = [("a", 64, "maglev", 251, "source_ip", 0), ("b", 128, "roundrobin", 0, "", 0),
         ("c", 64, "maglev", 65537, "source_ip", 1.25)]


@pytest.fixture
def region(tmp_path):
    shm = Shm.create(str(tmp_path / "lb.shm"), POOLS, 5, os.getpid())
    yield shm
    shm.unlink()


# ---- shared memory ------------------------------------------------------------------


def test_the_header_directory_lists_every_declared_region_in_order(region):
    assert [name for name, _, _ in region.regions()] == [name for name, _, _ in REGIONS]


def test_regions_are_aligned_apart_and_inside_the_mapping(region, tmp_path):
    total = os.path.getsize(tmp_path / "lb.shm")
    end = 0
    for name, off, size in region.regions():
        assert off % 64 == 0, name
        assert off >= end, f"{name} overlaps the region before it"
        assert size > 0, name
        end = off + size
    assert end <= total


def test_every_region_has_its_one_writer_named():
    for name, writer, _ in REGIONS:
        assert writer.strip(), name


def test_a_region_sized_for_the_pools_holds_their_maglev_tables(region):
    assert len(region.table(0)) == 251
    assert len(region.table(2)) == 65537
    assert region.table(1) == []
    sizes = dict((name, size) for name, _, size in region.regions())
    assert sizes["maglev_tables"] >= 2 * 2 * (251 + 65537)


def test_attach_sees_the_same_layout(region, tmp_path):
    other = Shm.attach(str(tmp_path / "lb.shm"))
    assert other.regions() == region.regions()


def test_attach_refuses_another_layout_version(region, tmp_path):
    path = tmp_path / "lb.shm"
    with open(path, "r+b") as f:
        f.seek(8)  # shm_header.version
        (version,) = struct.unpack("<I", f.read(4))
        f.seek(8)
        f.write(struct.pack("<I", version + 1))
    with pytest.raises(ValueError, match="not an lb shared-memory region of layout"):
        Shm.attach(str(path))


def test_a_new_region_is_a_new_file_and_the_old_one_keeps_its_bytes(region, tmp_path):
    """A region made where a file already is (a dead supervisor's, whose pid
    came round again) is a new file: whoever still maps the old one reads
    its bytes, never the new layout under the old one's offsets."""
    path = str(tmp_path / "lb.shm")
    old_inode = os.stat(path).st_ino
    region.set_backend(0, 0, "10.0.0.1", 80, "old", 1)
    new = Shm.create(path, [("x", 64, "roundrobin", 0, "", 0)], 3, os.getpid())
    assert os.stat(path).st_ino != old_inode
    assert region.backend(0, 0)["host"] == "10.0.0.1" and region.pool_capacity(0) == 64
    assert new.backend(0, 0)["host"] == "" and new.n_rows == 3


def test_regions_of_supervisors_that_are_gone_are_removed(tmp_path):
    from lb.shm import remove_stale_regions

    child = subprocess.Popen(["true"])
    child.wait()                                  # a pid nobody has (until it comes round again)
    names = {f"lb-{child.pid}.shm": False, f"lb-{child.pid}-3.shm": False, f"lb-{os.getpid()}.shm": False,
             f"lb-{os.getppid()}.shm": True, f"lb-{child.pid}-cache-c.shm": True, "other.shm": True}
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_regions(str(tmp_path)) == 3
    assert {p.name for p in tmp_path.iterdir()} == {name for name, kept in names.items() if kept}


# ---- request phases -------------------------------------------------------------------


def _listeners(text: str) -> dict:
    base = """
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:9"
"""
    return config.loads(text + base).listeners


def test_a_tcp_listener_runs_no_http_step():
    (tcp,) = _listeners('[listeners.t]\nbind = "127.0.0.1:1"\nmode = "tcp"\npool = "p"\n').values()
    # metrics count every exchange of every listener (an end step, compiled)
    assert phase_plan(tcp) == {"accept": [], "request": [], "response": [], "end": ["metrics"]}


def test_a_plain_http_listener_only_routes():
    (web,) = _listeners('[listeners.w]\nbind = "127.0.0.1:1"\npool = "p"\n').values()
    assert phase_plan(web) == {"accept": [], "request": ["route"], "response": [], "end": ["metrics"]}


def test_header_rules_add_their_steps_after_the_route():
    listeners = _listeners("""
[listeners.req]
bind = "127.0.0.1:1"
pool = "p"
request_headers = { set = { X-A = "1" } }

[listeners.resp]
bind = "127.0.0.1:2"
pool = "p"
  [[listeners.resp.routes]]
  path_prefix = "/x/"
  pool = "p"
  response_headers = { remove = ["server"] }
""")
    assert phase_plan(listeners["req"])["request"] == ["route", "request_headers"]
    assert phase_plan(listeners["req"])["response"] == []
    assert phase_plan(listeners["resp"])["request"] == ["route"]
    assert phase_plan(listeners["resp"])["response"] == ["response_headers"]


def test_phases_are_the_four_of_the_architecture_in_order():
    assert [phase for phase, _ in PHASES] == ["accept", "request", "response", "end"]
    assert [name for name, _, _ in dict(PHASES)["request"]][0] == "route"


# ---- docs/architecture.md matches the tree ---------------------------------------------


def _doc_paths() -> list[str]:
    """Every `path` of the page that names something in the repository."""
    text = re.sub(r"```.*?```", "", ARCHITECTURE.read_text(), flags=re.S)  # the pictures
    paths = []
    for quoted in re.findall(r"`([^`]+)`", text):
        for part in quoted.split(", "):
            if re.match(r"(lb|bench|tests|packaging|docs)/", part):
                paths.append(part.replace("<name>", "*"))
    return paths


def test_every_path_the_architecture_page_names_exists():
    for path in _doc_paths():
        assert list(ROOT.glob(path.rstrip("/"))), f"docs/architecture.md names {path}, which is not in the tree"


def test_every_source_file_of_lb_is_on_the_architecture_page():
    patterns = _doc_paths()
    sources = [p.relative_to(ROOT).as_posix() for p in (ROOT / "lb").rglob("*")
               if p.suffix in (".py", ".pyx", ".pxd", ".pxi") and p.name != "__init__.pxd"]
    missing = [s for s in sources
               if not any(fnmatch.fnmatch(s, pat) for pat in patterns) and s != "lb/__init__.py"
               and s != "lb/__main__.py"]
    assert not missing, f"not on docs/architecture.md: {missing}"


def test_the_architecture_page_lists_every_region_and_step():
    text = ARCHITECTURE.read_text()
    for name, _, _ in REGIONS:
        assert f"| `{name}` |" in text, name
    for _, steps in PHASES:
        for name, _, _ in steps:
            assert f"`{name}`" in text, name
