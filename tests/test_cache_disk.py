"""The disk tier of a cache (`disk`, `disk_size`; docs/cache.md "Disk
tier"): objects memory evicts are served from the disk without the origin,
a stop and a start keep them, a kill -9 of every process or bytes changed on
disk never make lb serve a torn or wrong object, a file of another geometry
is made anew, purges and invalidations reach the disk, and bad keys are
named."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import free_port, process_gone, wait_for
from lb import config
from lb._fastpath import DiskTier
from test_cache import body_of, cache_config, cli, get, origin  # noqa: F401 (origin: a fixture)

FRESH = [("Cache-Control", "max-age=3600"), ("Surrogate-Key", "disk-test")]


def disk_config(port, origin_port, run_dir, disk, disk_size="16m", workers=1, more=""):
    text = cache_config(port, origin_port, run_dir, workers=workers, more=more,
                        cache_extra=f'disk = "{disk}"\ndisk_size = "{disk_size}"')
    # a small memory tier, so that a few hundred objects push the first ones out
    return text.replace('size = "8m"', 'size = "1m"', 1).replace('max_object_size = "2m"', 'max_object_size = "64k"')


@pytest.fixture
def lb_disk(run_lb, tmp_path, origin):  # noqa: F811
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    disk = tmp_path / "disk"
    disk.mkdir(exist_ok=True)

    def start(disk_size="16m", workers=1, port=None, more=""):
        # a restart keeps the port: the Host, and so the cache key, stay the same
        port = port or free_port()
        lb = run_lb(disk_config(port, origin.port, run_dir, disk, disk_size, workers, more))
        lb.port = port
        lb.run_dir = run_dir
        lb.disk_file = disk / "lb-cache-c.dat"
        return lb
    return start


def stats(lb):
    return json.loads(cli(lb, "cache", "stats", "--json"))["caches"][0]


def route(origin, path, n, seed):  # noqa: F811
    origin.routes[path] = (200, FRESH, body_of(n, seed))


def push_out_of_memory(origin, lb, count=300):  # noqa: F811
    """Objects enough to fill the 1 MiB memory tier several times over."""
    for i in range(count):
        route(origin, f"/fill/{i}", 6000, 1000 + i)
        status, _, body = get(lb.port, f"/fill/{i}")
        assert status == 200 and body == body_of(6000, 1000 + i)


def test_an_object_memory_evicted_is_served_from_the_disk(origin, lb_disk):  # noqa: F811
    route(origin, "/a", 20000, 1)
    mport = free_port()
    lb = lb_disk(more=f'[global.metrics]\nbind = "127.0.0.1:{mport}"\n')
    assert get(lb.port, "/a")[1]["cache-status"] == "lb; fwd=uri-miss; stored; ttl=3600"
    push_out_of_memory(origin, lb)
    before = stats(lb)
    assert before["counts"]["evicted"] > 100 and before["disk"]["demoted"] > 100
    listed = json.loads(cli(lb, "cache", "list", "--json", "-n", "10000"))["entries"]
    assert [e["tier"] for e in listed if e["key"].endswith("/a")] == ["disk"]
    # answered from the disk's blocks; asked for again and again, taken back into memory
    for k in range(4):
        status, fields, body = get(lb.port, "/a")
        assert status == 200 and body == body_of(20000, 1)
        assert fields["cache-status"].startswith("lb; hit; ttl=") and fields["cache-status"].endswith("; detail=disk")
    assert origin.count("/a") == 1
    after = stats(lb)
    assert after["disk"]["hit"] == before["disk"]["hit"] + 4
    assert after["disk"]["hit_bytes"] == before["disk"]["hit_bytes"] + 3 * 20000   # the 4th: from memory
    status, fields, body = get(lb.port, "/a")
    assert body == body_of(20000, 1) and fields["cache-status"].startswith("lb; hit") \
        and "detail" not in fields["cache-status"]
    assert stats(lb)["disk"]["hit"] == after["disk"]["hit"]
    assert "disk " in cli(lb, "cache", "stats")
    text = get(mport, "/metrics")[2].decode()
    assert 'lb_cache_disk_events_total{cache="c",event="hit"} 4' in text
    assert 'lb_cache_requests_total{cache="c",result="hit"} 5' in text   # a disk hit is a hit of the cache
    assert "lb_cache_disk_objects{" in text


def test_ranges_of_an_object_on_the_disk_only(origin, lb_disk):  # noqa: F811
    from test_cache import multipart_parts

    body = body_of(20000, 4)
    route(origin, "/r", 20000, 4)
    lb = lb_disk()
    get(lb.port, "/r")
    push_out_of_memory(origin, lb)
    listed = json.loads(cli(lb, "cache", "list", "--json", "-n", "10000"))["entries"]
    assert [e["tier"] for e in listed if e["key"].endswith("/r")] == ["disk"]
    status, fields, data = get(lb.port, "/r", headers={"Range": "bytes=4090-4105"})
    assert (status, fields["content-range"], data) == (206, "bytes 4090-4105/20000", body[4090:4106])
    assert fields["cache-status"].endswith("; detail=disk")
    status, fields, data = get(lb.port, "/r", headers={"Range": "bytes=19990-,0-9,8190-8200"})
    assert status == 206 and fields["cache-status"].endswith("; detail=disk")
    assert [(f["content-range"], p) for f, p in multipart_parts(fields["content-type"], data)] == [
        ("bytes 19990-19999/20000", body[19990:]), ("bytes 0-9/20000", body[:10]),
        ("bytes 8190-8200/20000", body[8190:8201])]
    assert origin.count("/r") == 1
    # a stored piece (a 206) too
    origin.routes["/piece"] = (206, FRESH + [("Content-Range", "bytes 100-19999/30000")], body[100:])
    assert get(lb.port, "/piece", headers={"Range": "bytes=100-"})[1]["cache-status"].endswith("stored; ttl=3600")
    push_out_of_memory(origin, lb, 600)                    # (the first 300 are stored already)
    status, fields, data = get(lb.port, "/piece", headers={"Range": "bytes=5000-5099"})
    assert (status, fields["content-range"], data) == (206, "bytes 5000-5099/30000", body[5000:5100])
    # (the one other request for it is range_fill's whole fetch, answered
    # with the same 206: not stored, and the piece stays)
    assert fields["cache-status"].endswith("; detail=disk")
    assert [rq[2].get("range") for rq in origin.requests if rq[1] == "/piece"] in (
        [["bytes=100-"]], [["bytes=100-"], None], [None, ["bytes=100-"]])


def test_a_stop_and_a_start_keep_what_both_tiers_held(origin, lb_disk):  # noqa: F811
    route(origin, "/early", 30000, 2)
    lb = lb_disk()
    get(lb.port, "/early")
    push_out_of_memory(origin, lb, 200)                   # /early is on disk only now
    route(origin, "/late", 9000, 3)
    get(lb.port, "/late")                                  # /late is in memory only
    assert lb.stop() == 0
    lb = lb_disk(port=lb.port)
    for path, n, seed in (("/early", 30000, 2), ("/late", 9000, 3)):
        status, fields, body = get(lb.port, path)
        assert status == 200 and body == body_of(n, seed), path
        assert fields["cache-status"].startswith("lb; hit") and fields["cache-status"].endswith("detail=disk"), path
        assert 0 <= int(fields["age"]) < 60            # the age goes on from the stored times
        assert origin.count(path) == 1, path
    assert "kept" in lb.log()
    # another size is another geometry: the file is made anew, empty
    assert lb.stop() == 0
    lb = lb_disk(disk_size="24m", port=lb.port)
    assert get(lb.port, "/early")[1]["cache-status"] == "lb; fwd=uri-miss; stored; ttl=3600"
    assert "made anew" in lb.log()
    assert os.path.getsize(lb.disk_file) == 24 << 20


def test_kill_9_of_every_process_mid_traffic_then_only_whole_objects(origin, lb_disk, tmp_path):  # noqa: F811
    for i in range(400):
        route(origin, f"/k/{i}", 3000 + 37 * i, i)
    lb = lb_disk(workers=2)
    stop = threading.Event()
    errors = []

    def traffic(offset):
        i = offset
        while not stop.is_set():
            try:
                status, _, body = get(lb.port, f"/k/{i % 400}")
                if body != body_of(3000 + 37 * (i % 400), i % 400):
                    errors.append(f"/k/{i % 400}: wrong bytes")
            except (OSError, http.client.HTTPException):
                pass                                   # lb is being killed
            except Exception as e:                     # noqa: BLE001
                errors.append(e)
            i += 7
    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: stats(lb)["disk"]["demoted"] > 150, 60, "objects demoted to the disk")
    pids = [lb.worker_pid(r) for r in range(lb.n_workers)] + [lb.proc.pid]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    lb.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    wait_for(lambda: all(process_gone(p) for p in pids), 10, "every process gone")
    for name in os.listdir("/dev/shm"):
        if name.startswith(f"lb-{lb.proc.pid}"):
            os.unlink(os.path.join("/dev/shm", name))  # what a clean stop would have removed
    assert not errors
    lb = lb_disk(workers=2, port=lb.port)
    hits = 0
    for i in range(400):
        status, fields, body = get(lb.port, f"/k/{i}")
        assert status == 200 and body == body_of(3000 + 37 * i, i), i   # never torn, never another's
        hits += fields["cache-status"].startswith("lb; hit")
    assert hits > 100
    assert "unclean" in lb.log()


def flip_in_file(path, needle: bytes) -> int:
    data = path.read_bytes()
    at = data.find(needle)
    assert at >= 0
    with open(path, "r+b") as f:
        f.seek(at + len(needle) // 2)
        byte = f.read(1)
        f.seek(at + len(needle) // 2)
        f.write(bytes([byte[0] ^ 0x5A]))
    return at


def test_an_object_whose_bytes_changed_on_disk_is_dropped_not_served(origin, lb_disk):  # noqa: F811
    route(origin, "/bad", 12000, 7)
    route(origin, "/good", 12000, 8)
    lb = lb_disk()
    get(lb.port, "/bad")
    get(lb.port, "/good")
    assert lb.stop() == 0                                  # written to the disk at the stop
    flip_in_file(lb.disk_file, body_of(12000, 7)[5000:5100])
    lb = lb_disk(port=lb.port)
    status, fields, body = get(lb.port, "/bad")
    assert status == 200 and body == body_of(12000, 7)
    assert fields["cache-status"] == "lb; fwd=uri-miss; stored; ttl=3600"
    assert origin.count("/bad") == 2
    assert stats(lb)["disk"]["dropped"] == 1
    status, fields, body = get(lb.port, "/good")
    assert body == body_of(12000, 8) and fields["cache-status"].startswith("lb; hit")
    assert origin.count("/good") == 1


def test_purge_and_invalidation_reach_the_disk(origin, lb_disk):  # noqa: F811
    for path, seed in (("/p/url", 11), ("/p/tag", 12), ("/p/post", 13), ("/p/stay", 14)):
        route(origin, path, 7000, seed)
    origin.routes["/p/tag"] = (200, [("Cache-Control", "max-age=3600"), ("Surrogate-Key", "gone")],
                               body_of(7000, 12))
    lb = lb_disk()
    for path in ("/p/url", "/p/tag", "/p/post", "/p/stay"):
        get(lb.port, path)
    push_out_of_memory(origin, lb, 200)                   # all four on disk only
    host = f"127.0.0.1:{lb.port}"
    assert json.loads(cli(lb, "cache", "purge", f"http://{host}/p/url", "--json"))["total"] >= 1
    assert json.loads(cli(lb, "cache", "purge", "--tag", "gone", "--json"))["total"] >= 1
    assert get(lb.port, "/p/post", method="POST", body=b"x")[0] == 200
    for path in ("/p/url", "/p/tag", "/p/post"):
        assert get(lb.port, path)[1]["cache-status"] == "lb; fwd=uri-miss; stored; ttl=3600", path
    assert get(lb.port, "/p/stay")[1]["cache-status"].startswith("lb; hit")
    assert origin.count("/p/stay") == 1


def test_a_file_of_another_format_or_geometry_is_made_anew(tmp_path):
    path = str(tmp_path / "d.dat")
    d = DiskTier.open(path, 8 << 20, 1 << 20)
    assert d.opened == "new"
    d.close()
    del d
    d = DiskTier.open(path, 8 << 20, 1 << 20)
    assert d.opened == "kept"
    del d
    with open(path, "r+b") as f:                          # the right size, another header
        f.write(b"\xff" * 64)
    d = DiskTier.open(path, 8 << 20, 1 << 20)
    assert d.opened == "another format" and d.stats()["objects"] == 0
    del d
    d = DiskTier.open(path, 12 << 20, 1 << 20)
    assert d.opened.startswith("its size was") and os.path.getsize(path) == 12 << 20


@pytest.mark.parametrize("extra, path, words", [
    ('disk = "relative.dat"\ndisk_size = "16m"', "caches.c.disk", "absolute"),
    ('disk = "/nonexistent-dir/x.dat"\ndisk_size = "16m"', "caches.c.disk", "not a directory"),
    ('disk = "/proc/sys/lb.dat"\ndisk_size = "16m"', "caches.c.disk", "cannot be written"),
    ('disk = "/dev/null"\ndisk_size = "16m"', "caches.c.disk", "regular file"),
    ('disk_size = "16m"', "caches.c.disk_size", "needs `disk`"),
    ('disk = "/tmp"', "caches.c.disk_size", "required"),
    ('disk = "/tmp"\ndisk_size = "1m"', "caches.c.disk_size", "out of range"),
    ('disk = "/tmp"\ndisk_size = "4m"', "caches.c.disk_size", "4 objects"),
    ('disk = "/tmp"\ndisk_size = "15t"', "caches.c.disk_size", "do not fit"),
])
def test_bad_disk_keys_are_named(extra, path, words):
    with pytest.raises(config.ConfigError) as info:
        config.loads(cache_config(1, 2, "/tmp", cache_extra=extra))
    assert info.value.path == path and words in str(info.value)


def test_a_disk_tier_in_use_is_refused_at_a_reload(origin, lb_disk, tmp_path):  # noqa: F811
    """Another process holds the file a reload names: the reload is refused,
    naming the key, and the running config keeps serving."""
    route(origin, "/r", 5000, 21)
    lb = lb_disk()
    get(lb.port, "/r")
    other = DiskTier.open(str(tmp_path / "taken.dat"), 8 << 20, 1 << 16)   # held by this process
    text = lb.config_path.read_text()
    lb.config_path.write_text(text.replace(str(lb.disk_file.parent), str(tmp_path / "taken.dat"))
                              .replace('disk_size = "16m"', 'disk_size = "8m"'))
    out = subprocess.run([sys.executable, "-m", "lb", "--socket", str(lb.run_dir / "admin.sock"), "reload"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "caches.c.disk" in out.stderr
    assert get(lb.port, "/r")[1]["cache-status"].startswith("lb; hit")
    del other


def test_a_worker_dead_holding_the_disk_lock_costs_the_disk_nothing(origin, lb_disk):  # noqa: F811
    """The supervisor's reap of a dead pid that held the disk's lock checks
    the tier again, as a start does: its whole entries stay."""
    for i in range(20):
        route(origin, f"/w/{i}", 5000, 300 + i)
    lb = lb_disk()
    for i in range(20):
        get(lb.port, f"/w/{i}")
    assert lb.stop() == 0
    disk = DiskTier.open(str(lb.disk_file), 16 << 20, 64 << 10, 0.0)
    objects = disk.stats()["objects"]
    assert objects >= 20
    dead = 4194000                                        # above any pid_max: no process has it
    assert disk.reap(dead) is None                        # not held: nothing to do
    disk.lock_as(dead)
    assert disk.reap(dead) == (objects, 0)
    assert disk.stats()["objects"] == objects
    assert disk.purge(prefix=f"127.0.0.1:{lb.port}/w/") == 20   # the lock is free again


def test_an_object_gone_stale_on_disk_is_revalidated_not_fetched_again(origin, lb_disk):  # noqa: F811
    def answer(method, headers, n):
        if headers.get("if-none-match") == ['"v1"']:
            return 304, [("Cache-Control", "max-age=600"), ("ETag", '"v1"'), ("Content-Length", "0")], b""
        return 200, [("Cache-Control", "max-age=1"), ("ETag", '"v1"')], body_of(15000, 40)
    origin.routes["/st"] = answer
    lb = lb_disk()
    get(lb.port, "/st")
    assert lb.stop() == 0                                  # on disk, fresh for one more second at most
    time.sleep(1.1)  # what is tested is the clock itself: the entry goes stale while lb is down
    lb = lb_disk(port=lb.port)
    status, fields, body = get(lb.port, "/st")
    assert (status, body) == (200, body_of(15000, 40))
    assert fields["cache-status"] == "lb; fwd=stale; fwd-status=304; stored; ttl=600"
    assert origin.requests[-1][2]["if-none-match"] == ['"v1"']   # a 304, not the body again
    assert get(lb.port, "/st")[1]["cache-status"].startswith("lb; hit")
    assert origin.count("/st") == 2


def test_a_reload_that_remakes_the_memory_tier_keeps_the_disk(origin, lb_disk):  # noqa: F811
    """A new memory region (another size) takes the disk's hash seed: the
    disk's objects are still found."""
    route(origin, "/rl", 8000, 50)
    lb = lb_disk()
    get(lb.port, "/rl")
    push_out_of_memory(origin, lb, 200)
    lb.config_path.write_text(lb.config_path.read_text().replace('size = "1m"', 'size = "2m"', 1))
    cli(lb, "reload")
    assert stats(lb)["counts"]["objects"] == 0                     # memory anew
    status, fields, body = get(lb.port, "/rl")
    assert body == body_of(8000, 50) and fields["cache-status"].endswith("detail=disk")
    assert origin.count("/rl") == 1
