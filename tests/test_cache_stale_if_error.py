"""A request's own stale-if-error (RFC 5861 4) and max-stale (RFC 9111
5.2.1.2): a stale entry answers when the origin fails, within the seconds
the request allows, unless the entry must be revalidated."""

from __future__ import annotations

import time

import pytest

from test_cache import get, lb_cache, origin  # noqa: F401 (fixtures)

SIE = {"Cache-Control": "stale-if-error=60"}


def stale():
    time.sleep(1.1)  # what is tested is the clock itself: the entry goes stale


def stale_behind(origin, lb_cache, path: str, directives: str = "max-age=1"):
    """An lb whose cache holds `path`'s "last good", gone stale; the origin
    answers 503 once the test sets state["mode"] = "503"."""
    state = {"mode": "ok"}

    def answer(method, headers, n):
        if state["mode"] == "503":
            return 503, [], b"origin down"
        return 200, [("Cache-Control", directives)], b"last good"
    origin.routes[path] = answer
    lb = lb_cache()
    assert get(lb.port, path)[2] == b"last good"
    stale()
    return lb, state


def test_a_request_with_stale_if_error_is_answered_stale_when_the_origin_fails(origin, lb_cache):
    lb, state = stale_behind(origin, lb_cache, "/r")
    state["mode"] = "503"
    status, h, body = get(lb.port, "/r")                 # the response allowed nothing: the error
    assert (status, body) == (503, b"origin down")
    status, h, body = get(lb.port, "/r", headers=SIE)
    assert (status, body) == (200, b"last good")
    assert h["cache-status"].startswith("lb; fwd=stale") and h["cache-status"].endswith("fwd-status=503")
    assert int(h["age"]) >= 1
    # too short a window for how stale it is: the error goes through
    status, h, body = get(lb.port, "/r", headers={"Cache-Control": "stale-if-error=0"})
    assert (status, body) == (503, b"origin down")
    # the origin gone altogether: lb's own answer is replaced as well
    origin.shutdown()
    origin.server_close()
    status, h, body = get(lb.port, "/r", headers=SIE)
    assert (status, body) == (200, b"last good")
    assert h["cache-status"][-3:] in ("502", "503", "504")


@pytest.mark.parametrize("directives", ["max-age=1, must-revalidate", "max-age=1, proxy-revalidate",
                                        "s-maxage=1"])
def test_a_request_stale_if_error_does_not_serve_what_must_be_revalidated(origin, lb_cache, directives):
    lb, state = stale_behind(origin, lb_cache, "/mr", directives)
    state["mode"] = "503"
    status, h, body = get(lb.port, "/mr", headers=SIE)
    assert (status, body) == (503, b"origin down")


def test_max_stale_answers_stale_without_asking_the_origin(origin, lb_cache):
    lb, state = stale_behind(origin, lb_cache, "/ms")
    status, h, body = get(lb.port, "/ms", headers={"Cache-Control": "max-stale=60, stale-if-error=60"})
    assert (status, body) == (200, b"last good") and h["cache-status"].startswith("lb; hit")
    assert origin.count("/ms") == 1


def test_a_stale_answer_on_error_honours_the_clients_validators(origin, lb_cache):
    """The stale entry that answers for a failed origin answers a client
    whose If-None-Match names it with 304, as a hit would."""
    state = {"mode": "ok"}

    def answer(method, headers, n):
        if state["mode"] == "503":
            return 503, [], b"origin down"
        return 200, [("Cache-Control", "max-age=1, stale-if-error=60"), ("ETag", '"e1"')], b"last good"
    origin.routes["/v"] = answer
    lb = lb_cache()
    assert get(lb.port, "/v")[2] == b"last good"
    stale()
    state["mode"] = "503"
    status, h, body = get(lb.port, "/v", headers={"If-None-Match": '"e1"'})
    assert (status, body, h["etag"]) == (304, b"", '"e1"')
    assert h["cache-status"].startswith("lb; fwd=stale") and h["cache-status"].endswith("fwd-status=503")
    status, h, body = get(lb.port, "/v", headers={"If-None-Match": '"other"'})
    assert (status, body) == (200, b"last good")
