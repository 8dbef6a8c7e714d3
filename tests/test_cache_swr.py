"""stale-while-revalidate (RFC 5861 3, docs/cache.md): a stale entry within
its window is answered at once while one background revalidation, for all
workers, brings it up to date. Against the counting origin of
tests/test_cache.py, whose answers to the refresh can be held."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import wait_for
from test_cache import get, lb_cache, origin  # noqa: F401 (fixtures)
from test_cache import cache_counts as counts


class Held:
    """An origin answer for one path: the first request gets version 1; each
    revalidation waits on `release` (the test holds it), then gets `refresh`."""

    def __init__(self, field="Cache-Control", directives="max-age=1, stale-while-revalidate=60"):
        self.release = threading.Event()
        self.arrived = threading.Event()
        self.field = field
        self.directives = directives
        self.refresh = (200, [(field, "max-age=60"), ("ETag", '"v2"'), ("X-Version", "2")], b"version two")
        self.seen = []

    def __call__(self, method, headers, n):
        if n == 1:
            return 200, [(self.field, self.directives), ("ETag", '"v1"'), ("X-Version", "1")], b"version one"
        self.seen.append(headers)
        self.arrived.set()
        assert self.release.wait(20)
        return self.refresh


def ttl(h) -> int:
    """The ttl of a hit's Cache-Status: negative (or 0, stale by less than a
    second) for a stale one (RFC 9211 2.1)."""
    status = h["cache-status"]
    assert status.startswith("lb; hit; ttl="), status
    return int(status.rsplit("=", 1)[1])


def stale(seconds=1.1):
    time.sleep(seconds)  # what is tested is the clock itself: the entry goes stale


def stale_behind(origin, lb_cache, path: str, held: Held, stale_after: float = 1.1, **lb_options):
    """An lb whose cache holds `path`'s version one, gone stale; the origin
    answers it with `held`."""
    origin.routes[path] = held
    lb = lb_cache(**lb_options)
    assert get(lb.port, path)[2] == b"version one"
    stale(stale_after)
    return lb


def refreshes(lb, what: str = "refreshed", n: int = 1) -> None:
    """Wait until the background refreshes counted as `what` reach n."""
    wait_for(lambda: counts(lb)[what] == n, 10, f"{n} background refresh(es) {what}")


@pytest.mark.parametrize("field", ["Cache-Control", "CDN-Cache-Control"])
def test_a_stale_hit_is_answered_while_the_origin_holds_the_refresh(origin, lb_cache, field):
    held = Held(field)
    lb = stale_behind(origin, lb_cache, "/swr", held)
    # the origin holds the refresh: were the client waiting for it, this would
    # not return before the test released it
    status, h, body = get(lb.port, "/swr")
    assert (status, body, h["x-version"]) == (200, b"version one", "1")
    assert ttl(h) <= 0 and int(h["age"]) >= 1
    assert held.arrived.wait(10)
    # the refresh is conditional on the stored validator, a GET with lb's own Connection
    sent = held.seen[0]
    assert sent["if-none-match"] == ['"v1"'] and sent["connection"] == ["close"]
    # still held: the next stale hit is answered too, and starts no second refresh
    assert get(lb.port, "/swr")[2] == b"version one"
    held.release.set()
    refreshes(lb)
    status, h, body = get(lb.port, "/swr")
    assert (status, body, h["x-version"]) == (200, b"version two", "2")
    assert ttl(h) > 0
    assert origin.count("/swr") == 2


def test_a_304_to_the_refresh_freshens_the_stored_headers(origin, lb_cache):
    held = Held()
    held.refresh = (304, [("Cache-Control", "max-age=60"), ("ETag", '"v1"'), ("X-Version", "1b")], b"")
    lb = stale_behind(origin, lb_cache, "/swr304", held)
    held.release.set()
    assert get(lb.port, "/swr304")[2] == b"version one"
    refreshes(lb)
    status, h, body = get(lb.port, "/swr304")
    assert (status, body, h["x-version"]) == (200, b"version one", "1b")
    assert ttl(h) > 0
    assert counts(lb)["revalidated"] == 1
    assert origin.count("/swr304") == 2


def test_concurrent_stale_hits_on_two_workers_send_one_refresh(origin, lb_cache):
    held = Held()
    # the first response is stored by one worker: both serve it from the region
    lb = stale_behind(origin, lb_cache, "/many", held, workers=2)
    results = []
    lock = threading.Lock()

    def client():
        r = get(lb.port, "/many")
        with lock:
            results.append(r)
    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50
    assert all(r[0] == 200 and r[2] == b"version one" for r in results)
    assert held.arrived.wait(10)
    assert origin.count("/many") == 2                  # the first fetch and one refresh
    held.release.set()
    refreshes(lb)
    assert all(get(lb.port, "/many")[2] == b"version two" for _ in range(6))
    assert origin.count("/many") == 2


def test_the_refresh_survives_the_client_going_away(origin, lb_cache):
    held = Held()
    lb = stale_behind(origin, lb_cache, "/gone", held)
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
        s.sendall(b"GET /gone HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % lb.port)
    assert held.arrived.wait(10)
    held.release.set()
    refreshes(lb)
    assert get(lb.port, "/gone")[2] == b"version two"


def test_a_failing_refresh_leaves_the_stale_entry_usable_and_is_counted(origin, lb_cache):
    held = Held()
    held.refresh = (503, [], b"origin trouble")
    held.release.set()
    lb = stale_behind(origin, lb_cache, "/fail", held)
    assert get(lb.port, "/fail")[2] == b"version one"
    refreshes(lb, "refresh_failed")
    status, h, body = get(lb.port, "/fail")
    assert (status, body) == (200, b"version one") and ttl(h) <= 0
    # an origin in trouble is not asked again at every stale hit
    assert origin.count("/fail") == 2


@pytest.mark.parametrize("directives", ["max-age=1, stale-while-revalidate=60, must-revalidate",
                                        "max-age=1, stale-while-revalidate=60, proxy-revalidate",
                                        "max-age=60, s-maxage=1, stale-while-revalidate=60"])
def test_entries_that_must_be_revalidated_are_not_served_stale(origin, lb_cache, directives):
    held = Held(directives=directives)
    held.release.set()
    lb = stale_behind(origin, lb_cache, "/strict", held)
    status, h, body = get(lb.port, "/strict")       # revalidated in the foreground: the new answer
    assert (status, body) == (200, b"version two")
    assert h["cache-status"].startswith("lb; fwd=stale")
    assert counts(lb)["refreshed"] == 0


@pytest.mark.parametrize("request_cc", ["no-cache", "max-age=0"])
def test_a_request_that_wants_it_fresh_is_not_answered_stale(origin, lb_cache, request_cc):
    held = Held()
    held.release.set()
    lb = stale_behind(origin, lb_cache, "/fresh", held)
    status, h, body = get(lb.port, "/fresh", headers={"Cache-Control": request_cc})
    assert (status, body) == (200, b"version two")
    assert counts(lb)["refreshed"] == 0


def test_outside_the_window_the_entry_is_revalidated_in_the_foreground(origin, lb_cache):
    held = Held(directives="max-age=1, stale-while-revalidate=1")
    held.release.set()
    lb = stale_behind(origin, lb_cache, "/late", held, stale_after=2.1)   # past max-age and the window
    status, h, body = get(lb.port, "/late")
    assert (status, body) == (200, b"version two")
    assert h["cache-status"].startswith("lb; fwd=stale")
    assert held.seen[0]["if-none-match"] == ['"v1"']
    assert counts(lb)["refreshed"] == 0


def test_a_stale_head_is_answered_and_its_refresh_is_a_get(origin, lb_cache):
    held = Held()
    lb = stale_behind(origin, lb_cache, "/head", held)
    status, h, body = get(lb.port, "/head", method="HEAD")
    assert (status, body, h["content-length"]) == (200, b"", "11") and ttl(h) <= 0
    assert held.arrived.wait(10)
    method, target, sent = origin.requests[-1]
    assert (method, sent["if-none-match"]) == ("GET", ['"v1"'])
    held.release.set()
    refreshes(lb)
    assert get(lb.port, "/head")[2] == b"version two"


def test_a_refresh_answered_with_what_may_not_be_stored_removes_the_stale_entry(origin, lb_cache):
    held = Held()
    held.refresh = (200, [("Cache-Control", "no-store"), ("X-Version", "2")], b"version two")
    held.release.set()
    lb = stale_behind(origin, lb_cache, "/ns", held)
    assert get(lb.port, "/ns")[2] == b"version one"
    refreshes(lb, "not_stored")
    status, h, body = get(lb.port, "/ns")
    assert (status, body) == (200, b"version two") and h["cache-status"].startswith("lb; fwd=uri-miss")
    assert counts(lb)["refreshed"] == 0 and origin.count("/ns") == 3


def test_http2_streams_are_answered_stale_and_refreshed(origin, lb_cache):
    from h2_client import H2Client

    held = Held()
    origin.routes["/h2swr"] = held
    lb = lb_cache(listener_extra="[listeners.web.http2]\nh2c = true\n")
    with H2Client(lb.port) as c:
        assert bytes(c.response(c.request("/h2swr")).body) == b"version one"
        stale()
        answer = c.response(c.request("/h2swr"))
        assert (answer.status, bytes(answer.body)) == (200, b"version one")
        assert answer.header("cache-status").startswith("lb; hit; ttl=")
        assert held.arrived.wait(10)
        assert held.seen[0]["if-none-match"] == ['"v1"']
        held.release.set()
        refreshes(lb)
        assert bytes(c.response(c.request("/h2swr")).body) == b"version two"


def test_refreshes_in_flight_are_bounded_per_worker(origin, lb_cache):
    cap = 32                                         # CACHE_REFRESH_MAX (docs/cache.md)
    release = threading.Event()
    helds = []
    for i in range(cap + 1):
        held = Held()
        held.release = release
        helds.append(held)
        origin.routes[f"/cap{i}"] = held
    lb = lb_cache()
    for i in range(cap + 1):
        get(lb.port, f"/cap{i}")
    stale()
    for i in range(cap + 1):
        assert get(lb.port, f"/cap{i}")[2] == b"version one"
    assert all(h.arrived.wait(10) for h in helds[:cap])
    # the one over the cap was answered without a refresh
    assert origin.count(f"/cap{cap}") == 1
    release.set()
    wait_for(lambda: counts(lb)["refreshed"] == cap, 20, "the background refreshes")
    assert origin.count(f"/cap{cap}") == 1 and counts(lb)["refresh_failed"] == 0
    assert get(lb.port, f"/cap{cap}")[2] == b"version one"     # now it starts one
    wait_for(lambda: counts(lb)["refreshed"] == cap + 1, 10, "its refresh")
    assert get(lb.port, f"/cap{cap}")[2] == b"version two"
