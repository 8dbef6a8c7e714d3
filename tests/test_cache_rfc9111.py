"""RFC 9111 (HTTP caching), section by section, for lb's shared cache, with
RFC 5861 (stale-if-error) and RFC 9213 (CDN-Cache-Control): each requirement
a shared cache has, as a table of cases against an origin that counts its
requests. A case asserts what a client sees: the status, the body bytes,
whether the answer came from the cache (the origin's count), and the fields.

The deliberate deviations from what a conformance suite may probe are in
docs/cache.md ("Conformance"); each has a case here that pins lb's choice."""

from __future__ import annotations

import email.utils
import socket
import socketserver
import threading
import time

import pytest

from conftest import free_port
from test_cache import cache_config, httpdate
from test_cache import lb_cache, origin  # noqa: F401  (the fixtures: the counting origin, lb before it)


# ---- a raw client: exact request lines in, every field line out ---------------------------------


class Answer:
    def __init__(self, status, fields, body, interim):
        self.status = status
        self.fields = fields              # [(lower name, value)], in order, duplicates kept
        self.body = body
        self.interim = interim            # the 1xx status codes before it

    def all(self, name):
        return [v for k, v in self.fields if k == name]

    def get(self, name, default=None):
        values = self.all(name)
        return values[0] if values else default

    @property
    def cache_status(self):
        return self.get("cache-status", "")

    @property
    def hit(self):
        return self.cache_status.startswith("lb; hit")


def _read_head(f):
    line = f.readline()
    status = int(line.split(b" ", 2)[1])
    fields = []
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        fields.append((name.strip().lower(), value.strip()))
    return status, fields


def ask(port, target, method="GET", headers=()):
    """One request on its own connection: the final answer (and the 1xx)."""
    head = f"{method} {target} HTTP/1.1\r\nHost: test.example\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("latin-1") + b"\r\n")
        f = s.makefile("rb")
        interim = []
        while True:
            status, fields = _read_head(f)
            if 100 <= status < 200:
                interim.append(status)
                continue
            break
        n = next((int(v) for k, v in fields if k == "content-length"), None)
        body = b"" if method == "HEAD" or status in (204, 304) else (f.read(n) if n is not None else f.read())
        return Answer(status, fields, body, interim)


# ---- the table ------------------------------------------------------------------------------------
#
# A case: (id, origin's answer, first request's fields, second request, what the
# second answer must be). The origin's answer is (status, fields, body); fields
# may be a callable of nothing (for dates computed when the case runs). The
# second request is (method, fields). "cached" is whether the origin saw one
# request (True) or two (False).

def D(offset=0):
    return lambda: httpdate(offset)


_T = int(time.time())
_MADE, _AFTER_MADE, _BEFORE_MADE = (email.utils.formatdate(t, usegmt=True) for t in (_T, _T + 1, _T - 1))

CASES = [
    # 3: what may be stored
    ("3 max-age stored", (200, [("Cache-Control", "max-age=600")], b"a"), [], ("GET", []), True, {}),
    ("3 no-store not stored", (200, [("Cache-Control", "max-age=600, no-store")], b"a"), [], ("GET", []), False, {}),
    ("3 private not stored by a shared cache", (200, [("Cache-Control", "private, max-age=600")], b"a"), [],
     ("GET", []), False, {}),
    ("3 unknown status with explicit freshness stored", (299, [("Cache-Control", "max-age=600")], b"a"), [],
     ("GET", []), True, {"status": 299}),
    ("3 unknown 4xx with explicit freshness stored", (499, [("Cache-Control", "max-age=600")], b"a"), [],
     ("GET", []), True, {"status": 499}),
    ("3 unknown status without freshness not stored", (599, [("Last-Modified", D(-86400))], b"a"), [],
     ("GET", []), False, {}),
    ("3 201 without freshness not stored", (201, [("Last-Modified", D(-86400))], b"a"), [], ("GET", []), False, {}),
    ("3 206 never stored", (206, [("Cache-Control", "max-age=600"), ("Content-Range", "bytes 0-0/2")], b"a"), [],
     ("GET", []), False, {}),
    ("3 must-understand lifts no-store for a known status",
     (200, [("Cache-Control", "max-age=600, no-store, must-understand")], b"a"), [], ("GET", []), True, {}),
    ("3 must-understand with an unknown status: not stored",
     (599, [("Cache-Control", "max-age=600, no-store, must-understand")], b"a"), [], ("GET", []), False, {}),
    # 3.1: the fields stored
    ("3.1 Set-Cookie stored without the cookie", (200, [("Cache-Control", "max-age=600"), ("Set-Cookie", "s=1"),
                                                        ("X-Kept", "k")], b"a"), [], ("GET", []), True,
     {"absent": ["set-cookie"], "fields": {"x-kept": "k"}}),
    ("3.1 Set-Cookie without explicit freshness not stored", (200, [("Last-Modified", D(-86400)),
                                                                   ("Set-Cookie", "s=1")], b"a"), [],
     ("GET", []), False, {}),
    ("3.1 Connection-listed fields not stored", (200, [("Cache-Control", "max-age=600"), ("Connection", "x-hop"),
                                                       ("X-Hop", "1"), ("X-End", "2")], b"a"), [], ("GET", []), True,
     {"absent": ["x-hop"], "fields": {"x-end": "2"}}),
    ("3.1 no-cache=\"a\": the field is not stored, the rest is",
     (200, [("Cache-Control", 'no-cache="X-A"'), ("X-A", "1"), ("X-B", "2"), ("Cache-Control", "max-age=600")], b"a"),
     [], ("GET", []), True, {"absent": ["x-a"], "fields": {"x-b": "2"}}),
    ("3.1 no-cache=\"a, b\": both fields are not stored",
     (200, [("Cache-Control", 'no-cache="X-A, X-B", max-age=600'), ("X-A", "1"), ("X-B", "2"), ("X-C", "3")], b"a"),
     [], ("GET", []), True, {"absent": ["x-a", "x-b"], "fields": {"x-c": "3"}}),
    # 3.5: Authorization
    ("3.5 Authorization: not reused", (200, [("Cache-Control", "max-age=600")], b"a"),
     [("Authorization", "Basic YTpi")], ("GET", [("Authorization", "Basic YTpi")]), False, {}),
    ("3.5 Authorization: reused with public", (200, [("Cache-Control", "max-age=600, public")], b"a"),
     [("Authorization", "Basic YTpi")], ("GET", [("Authorization", "Basic YTpi")]), True, {}),
    ("3.5 Authorization: reused with s-maxage", (200, [("Cache-Control", "s-maxage=600")], b"a"),
     [("Authorization", "Basic YTpi")], ("GET", [("Authorization", "Basic YTpi")]), True, {}),
    # 4.1: Vary
    ("4.1 Vary: same value reused", (200, [("Cache-Control", "max-age=600"), ("Vary", "X-V")], b"a"), [("X-V", "1")],
     ("GET", [("X-V", "1")]), True, {}),
    ("4.1 Vary: other value not reused", (200, [("Cache-Control", "max-age=600"), ("Vary", "X-V")], b"a"),
     [("X-V", "1")], ("GET", [("X-V", "2")]), False, {}),
    ("4.1 Vary: absent differs from empty", (200, [("Cache-Control", "max-age=600"), ("Vary", "X-V")], b"a"),
     [], ("GET", [("X-V", "")]), False, {}),
    ("4.1 Vary: spaces around commas normalised", (200, [("Cache-Control", "max-age=600"), ("Vary", "X-V")], b"a"),
     [("X-V", "1,2")], ("GET", [("X-V", " 1 , 2 ")]), True, {}),
    ("4.1 Vary: lines combined", (200, [("Cache-Control", "max-age=600"), ("Vary", "X-V")], b"a"),
     [("X-V", "1, 2")], ("GET", [("X-V", "1"), ("X-V", "2")]), True, {}),
    ("4.1 Vary: Accept-Language case-insensitive", (200, [("Cache-Control", "max-age=600"),
                                                          ("Vary", "Accept-Language")], b"a"),
     [("Accept-Language", "en, de")], ("GET", [("Accept-Language", "EN, De")]), True, {}),
    ("4.1 Vary: order still matters", (200, [("Cache-Control", "max-age=600"), ("Vary", "Accept-Language")], b"a"),
     [("Accept-Language", "en, de")], ("GET", [("Accept-Language", "de, en")]), False, {}),
    ("4.1 Vary: other fields keep their case", (200, [("Cache-Control", "max-age=600"), ("Vary", "X-V")], b"a"),
     [("X-V", "a")], ("GET", [("X-V", "A")]), False, {}),
    ("4.1 Vary: * never matches", (200, [("Cache-Control", "max-age=600"), ("Vary", "X-V, *")], b"a"), [],
     ("GET", []), False, {}),
    # 4.2.1: freshness lifetime
    ("4.2.1 s-maxage over max-age", (200, [("Cache-Control", "max-age=0, s-maxage=600")], b"a"), [], ("GET", []),
     True, {}),
    ("4.2.1 Expires minus Date", (200, [("Expires", D(600))], b"a"), [], ("GET", []), True, {}),
    ("4.2.1 Expires in the past", (200, [("Expires", D(-600))], b"a"), [], ("GET", []), False, {}),
    ("4.2.1 max-age over Expires", (200, [("Cache-Control", "max-age=600"), ("Expires", D(-600))], b"a"), [],
     ("GET", []), True, {}),
    ("4.2.1 two max-age: the first counts (fresh first)", (200, [("Cache-Control", "max-age=600, max-age=0")], b"a"),
     [], ("GET", []), True, {}),
    ("4.2.1 two max-age: the first counts (stale first)", (200, [("Cache-Control", "max-age=0"),
                                                                 ("Cache-Control", "max-age=600")], b"a"),
     [], ("GET", []), False, {}),
    ("4.2.1 max-age not a number: stale", (200, [("Cache-Control", "max-age=600a")], b"a"), [], ("GET", []),
     False, {}),
    ("4.2.1 max-age with a fraction: stale", (200, [("Cache-Control", "max-age=600.0")], b"a"), [], ("GET", []),
     False, {}),
    ("4.2.1 Expires: wrong case is still a date", (200, [("Expires", "Thu, 18 AUG 2050 02:01:18 gmt")], b"a"), [],
     ("GET", []), True, {}),
    ("4.2.1 Expires: RFC 850 date", (200, [("Expires", "Thursday, 18-Aug-50 02:01:18 GMT")], b"a"), [],
     ("GET", []), True, {}),
    ("4.2.1 Expires: asctime date", (200, [("Expires", "Thu Aug  8 02:01:18 2050")], b"a"), [], ("GET", []),
     True, {}),
    ("4.2.1 Expires: two-digit year in IMF form is invalid", (200, [("Expires", "Thu, 18 Aug 50 02:01:18 GMT")], b"a"),
     [], ("GET", []), False, {}),
    ("4.2.1 Expires: dashes in IMF form are invalid", (200, [("Expires", "Thu, 18-Aug-2050 02:01:18 GMT")], b"a"),
     [], ("GET", []), False, {}),
    ("4.2.1 Expires: two spaces are invalid", (200, [("Expires", "Thu, 18  Aug 2050 02:01:18 GMT")], b"a"),
     [], ("GET", []), False, {}),
    ("4.2.1 Expires: UTC is not GMT", (200, [("Expires", "Thu, 18 Aug 2050 02:01:18 UTC")], b"a"),
     [], ("GET", []), False, {}),
    # 4.2.2: heuristic freshness
    ("4.2.2 heuristic from Last-Modified", (200, [("Last-Modified", D(-86400))], b"a"), [], ("GET", []), True, {}),
    ("4.2.2 heuristic for 404", (404, [("Last-Modified", D(-86400))], b"a"), [], ("GET", []), True,
     {"status": 404}),
    ("4.2.2 no heuristic for 302", (302, [("Last-Modified", D(-86400)), ("Location", "/x")], b""), [], ("GET", []),
     False, {}),
    ("4.2.2 public makes an unknown status heuristically fresh", (599, [("Cache-Control", "public"),
                                                                        ("Last-Modified", D(-86400))], b"a"),
     [], ("GET", []), True, {"status": 599}),
    # 4.2.3: age
    ("4.2.3 Age over max-age: stale", (200, [("Cache-Control", "max-age=600"), ("Age", "700")], b"a"), [],
     ("GET", []), False, {}),
    ("4.2.3 Age list: the first member counts (old first)", (200, [("Cache-Control", "max-age=600"),
                                                                   ("Age", "7200, 0")], b"a"),
     [], ("GET", []), False, {}),
    ("4.2.3 Age list: the first member counts (young first)", (200, [("Cache-Control", "max-age=600"),
                                                                     ("Age", "0, 7200")], b"a"),
     [], ("GET", []), True, {}),
    ("4.2.3 Age with a parameter: the number counts", (200, [("Cache-Control", "max-age=600"),
                                                             ("Age", "7200;foo=bar")], b"a"),
     [], ("GET", []), False, {}),
    ("4.2.3 Age not a number: ignored", (200, [("Cache-Control", "max-age=600"), ("Age", "abc")], b"a"), [],
     ("GET", []), True, {}),
    ("4.2.3 Age negative: ignored", (200, [("Cache-Control", "max-age=600"), ("Age", "-7200")], b"a"), [],
     ("GET", []), True, {}),
    ("4.2.3 Age counts into the hit's Age", (200, [("Cache-Control", "max-age=600"), ("Age", "100")], b"a"), [],
     ("GET", []), True, {"age_at_least": 100}),
    # 4.3.2: conditional requests answered from the cache
    ("4.3.2 If-None-Match matching: 304", (200, [("Cache-Control", "max-age=600"), ("ETag", '"e1"')], b"a"), [],
     ("GET", [("If-None-Match", '"e1"')]), True, {"status": 304}),
    ("4.3.2 If-None-Match weak match: 304", (200, [("Cache-Control", "max-age=600"), ("ETag", 'W/"e1"')], b"a"), [],
     ("GET", [("If-None-Match", '"x", "e1"')]), True, {"status": 304}),
    ("4.3.2 If-None-Match other: 200", (200, [("Cache-Control", "max-age=600"), ("ETag", '"e1"')], b"a"), [],
     ("GET", [("If-None-Match", '"e2"')]), True, {"status": 200}),
    ("4.3.2 If-Modified-Since not earlier: 304", (200, [("Cache-Control", "max-age=600"),
                                                        ("Last-Modified", "Sat, 01 Jan 2000 00:00:00 GMT")], b"a"),
     [], ("GET", [("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")]), True, {"status": 304}),
    # (a Date of when the cases were made, with a day of freshness: the suite's run fits in it)
    ("4.3.2 If-Modified-Since, no Last-Modified: the Date counts (304)",
     (200, [("Cache-Control", "max-age=86400"), ("Date", _MADE)], b"a"),
     [], ("GET", [("If-Modified-Since", _AFTER_MADE)]), True, {"status": 304}),
    ("4.3.2 If-Modified-Since before the Date, no Last-Modified: 200",
     (200, [("Cache-Control", "max-age=86400"), ("Date", _MADE)], b"a"),
     [], ("GET", [("If-Modified-Since", _BEFORE_MADE)]), True, {"status": 200}),
    # 4.4: invalidation
    ("4.4 an unsafe method's success invalidates", (200, [("Cache-Control", "max-age=600")], b"a"), [],
     ("POST+GET", []), False, {}),
    # 5.2.1: request directives
    ("5.2.1.1 max-age=0 goes to the origin", (200, [("Cache-Control", "max-age=600")], b"a"), [],
     ("GET", [("Cache-Control", "max-age=0")]), False, {}),
    ("5.2.1.3 min-fresh beyond what is left", (200, [("Cache-Control", "max-age=600")], b"a"), [],
     ("GET", [("Cache-Control", "min-fresh=900")]), False, {}),
    ("5.2.1.3 min-fresh within what is left", (200, [("Cache-Control", "max-age=600")], b"a"), [],
     ("GET", [("Cache-Control", "min-fresh=60")]), True, {}),
    ("5.2.1.4 no-cache goes to the origin", (200, [("Cache-Control", "max-age=600")], b"a"), [],
     ("GET", [("Cache-Control", "no-cache")]), False, {}),
    ("5.2.1.4 Pragma: no-cache without Cache-Control", (200, [("Cache-Control", "max-age=600")], b"a"), [],
     ("GET", [("Pragma", "no-cache")]), False, {}),
    ("5.2.1.7 only-if-cached with it stored", (200, [("Cache-Control", "max-age=600")], b"a"), [],
     ("GET", [("Cache-Control", "only-if-cached")]), True, {}),
    # 5.2.2: response directives
    ("5.2.2.4 no-cache with a validator: stored, validated each time",
     (200, [("Cache-Control", "no-cache, max-age=600"), ("ETag", '"n"')], b"a"), [], ("GET", []), False, {}),
    # RFC 9213: CDN-Cache-Control
    ("RFC 9213 CDN-Cache-Control over Cache-Control", (200, [("CDN-Cache-Control", "max-age=600"),
                                                             ("Cache-Control", "no-store")], b"a"),
     [], ("GET", []), True, {"fields": {"cache-control": "no-store"}}),
    ("RFC 9213 CDN-Cache-Control no-store", (200, [("CDN-Cache-Control", "no-store"),
                                                   ("Cache-Control", "max-age=600")], b"a"), [], ("GET", []), False, {}),
    ("RFC 9213 invalid CDN-Cache-Control (syntax) ignored", (200, [("CDN-Cache-Control", "max-age=600, &&&"),
                                                                   ("Cache-Control", "no-store")], b"a"),
     [], ("GET", []), False, {}),
    ("RFC 9213 invalid CDN-Cache-Control (string max-age) ignored",
     (200, [("CDN-Cache-Control", 'max-age="600"'), ("Cache-Control", "no-store")], b"a"), [], ("GET", []), False, {}),
    ("RFC 9213 valid dictionary with parameters obeyed",
     (200, [("CDN-Cache-Control", 'max-age=600;x=1, foo="bar", baz=(a b)'), ("Cache-Control", "no-store")], b"a"),
     [], ("GET", []), True, {}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rfc9111(origin, lb_cache, case):
    name, (status, fields, body), first, (method2, fields2), cached, want = case
    fields = [(k, v() if callable(v) else v) for k, v in fields]
    origin.routes["/r"] = (status, fields, body)
    lb = lb_cache()
    a1 = ask(lb.port, "/r", headers=first)
    assert a1.status == status and a1.body == body
    if method2 == "POST+GET":
        assert ask(lb.port, "/r", "POST", headers=[("Content-Length", "0")]).status == status
        assert origin.count("/r") == 2
        method2 = "GET"
    a2 = ask(lb.port, "/r", method2, headers=fields2)
    expected_count = (1 if cached else 2) + (1 if case[3][0] == "POST+GET" else 0)
    assert origin.count("/r") == expected_count, (a2.status, a2.fields)
    assert a2.status == want.get("status", status)
    if a2.status != 304 and method2 != "HEAD":
        assert a2.body == body
    if cached:
        assert a2.hit and a2.get("age") is not None
    else:
        assert not a2.hit
    for k in want.get("absent", ()):
        assert a2.get(k) is None, k
    for k, v in want.get("fields", {}).items():
        assert a2.get(k) == v, k
    if "age_at_least" in want:
        assert int(a2.get("age")) >= want["age_at_least"]


# ---- 3.1: the first client still gets the cookie ------------------------------------------------


def test_set_cookie_goes_to_the_client_that_caused_the_fill_only(origin, lb_cache):
    origin.routes["/login"] = (200, [("Cache-Control", "max-age=600"), ("Set-Cookie", "session=alice"),
                                     ("Set-Cookie", "theme=dark")], b"page")
    lb = lb_cache()
    a1 = ask(lb.port, "/login")
    assert a1.all("set-cookie") == ["session=alice", "theme=dark"] and a1.body == b"page"
    assert "stored" in a1.cache_status
    a2 = ask(lb.port, "/login")
    assert a2.hit and a2.body == b"page" and a2.all("set-cookie") == []
    assert origin.count("/login") == 1


# ---- 4.3.1, 4.3.4: validation ------------------------------------------------------------------


def _validating_origin(origin, path, etag, fresh_fields, body=b"stored body"):
    """The first answer is stored; later conditional requests with its ETag
    get a 304 carrying fresh_fields, anything else a new 200."""
    def answer(method, headers, n):
        if n == 1:
            return 200, [("Cache-Control", "max-age=600"), ("ETag", etag), ("X-Version", "1")], body
        if headers.get("if-none-match") == [etag]:
            return 304, [("ETag", etag)] + fresh_fields, b""
        return 200, [("Cache-Control", "max-age=600"), ("ETag", '"other"'), ("X-Version", "new")], b"new body"
    origin.routes[path] = answer


def test_request_no_cache_revalidates_the_stored_response(origin, lb_cache):
    _validating_origin(origin, "/v", '"e1"', [("X-Version", "2")])
    lb = lb_cache()
    ask(lb.port, "/v")
    a = ask(lb.port, "/v", headers=[("Cache-Control", "no-cache")])
    method, target, headers = origin.requests[-1]
    assert headers.get("if-none-match") == ['"e1"']           # the stored validator went to the origin
    # the stored body, whole: the 304's own Content-Length: 0 frames the 304 only (RFC 9111 3.2)
    assert (a.status, a.body, a.get("x-version")) == (200, b"stored body", "2")
    assert a.cache_status.startswith("lb; fwd=request; fwd-status=304")
    a = ask(lb.port, "/v")                                     # and the refreshed entry is served
    assert a.hit and a.get("x-version") == "2" and origin.count("/v") == 2


def test_request_no_cache_with_the_clients_own_validator_gets_304(origin, lb_cache):
    _validating_origin(origin, "/v", '"e1"', [])
    lb = lb_cache()
    ask(lb.port, "/v")
    a = ask(lb.port, "/v", headers=[("Cache-Control", "no-cache"), ("If-None-Match", '"e1"')])
    assert (a.status, a.body) == (304, b"")
    a = ask(lb.port, "/v", headers=[("Cache-Control", "max-age=0"), ("If-None-Match", '"zzz"')])
    assert (a.status, a.body) == (200, b"stored body")
    assert origin.count("/v") == 3


def test_a_changed_resource_replaces_the_entry_on_a_no_cache_request(origin, lb_cache):
    _validating_origin(origin, "/v", '"e1"', [])
    lb = lb_cache()
    ask(lb.port, "/v")
    origin.routes["/v"] = (200, [("Cache-Control", "max-age=600"), ("ETag", '"e2"')], b"changed")
    a = ask(lb.port, "/v", headers=[("Cache-Control", "no-cache")])
    assert (a.status, a.body) == (200, b"changed") and "stored" in a.cache_status
    a = ask(lb.port, "/v")
    assert a.hit and a.body == b"changed" and origin.count("/v") == 2


# ---- 4.3.5: a HEAD freshens the stored GET -------------------------------------------------------


def test_a_head_response_refreshes_a_stale_stored_get(origin, lb_cache):
    def answer(method, headers, n):
        if method == "HEAD":
            return 200, [("Cache-Control", "max-age=600"), ("ETag", '"h"'), ("X-From", "head"),
                         ("Content-Length", "4")], b""
        return 200, [("Cache-Control", "no-cache"), ("ETag", '"h"'), ("X-From", "get"), ("X-Kept", "1")], b"body"
    origin.routes["/h"] = answer
    lb = lb_cache()
    assert ask(lb.port, "/h").body == b"body"                  # stored, but to be validated before each use
    a = ask(lb.port, "/h", "HEAD")
    assert origin.requests[-1][0] == "HEAD"                    # the HEAD went on as a HEAD
    assert (a.status, a.get("x-from"), a.get("x-kept"), a.get("content-length")) == (200, "head", "1", "4")
    a = ask(lb.port, "/h")                                     # its fields now stand for the stored GET
    assert (a.hit, a.body, a.get("x-from"), a.get("cache-control")) == (True, b"body", "head", "max-age=600")
    assert origin.count("/h") == 2


@pytest.mark.parametrize("head_fields", [
    [("ETag", '"other"'), ("Content-Length", "4")],            # another representation
    [("ETag", '"h"'), ("Content-Length", "9")],                # another length
])
def test_a_head_response_for_another_representation_refreshes_nothing(origin, lb_cache, head_fields):
    def answer(method, headers, n):
        if method == "HEAD":
            return 200, [("Cache-Control", "max-age=600")] + head_fields, b""
        return 200, [("Cache-Control", "no-cache"), ("ETag", '"h"')], b"body"
    origin.routes["/h"] = answer
    lb = lb_cache()
    ask(lb.port, "/h")
    ask(lb.port, "/h", "HEAD")
    a = ask(lb.port, "/h")
    assert not a.hit and a.body == b"body" and origin.count("/h") == 3


# ---- RFC 5861: stale-if-error ---------------------------------------------------------------------


STALE_CASES = {
    "/sie": ("max-age=1, stale-if-error=600", True),
    "/plain": ("max-age=1", False),                            # RFC 9111 4.2.4: no stale without permission
    "/must-revalidate": ("max-age=1, stale-if-error=600, must-revalidate", False),   # 5.2.2.2
    "/proxy-revalidate": ("max-age=1, stale-if-error=600, proxy-revalidate", False),  # 5.2.2.8
    "/s-maxage": ("s-maxage=1, stale-if-error=600", False),    # 5.2.2.10: s-maxage implies proxy-revalidate
}


def test_stale_if_error_serves_the_stale_entry_unless_forbidden(origin, lb_cache):
    def answer(cc):
        def f(method, headers, n):
            return (200, [("Cache-Control", cc)], b"good") if n == 1 else (503, [], b"down")
        return f
    for path, (cc, _) in STALE_CASES.items():
        origin.routes[path] = answer(cc)
    lb = lb_cache()
    for path in STALE_CASES:
        assert "stored" in ask(lb.port, path).cache_status
    time.sleep(2.1)  # what is tested is the clock itself: the entries go stale
    for path, (_, served) in STALE_CASES.items():
        a = ask(lb.port, path)
        if served:
            assert (a.status, a.body) == (200, b"good") and "fwd-status=503" in a.cache_status, path
        else:
            assert (a.status, a.body) == (503, b"down"), path


# ---- 4.4: invalidation of Location and Content-Location ---------------------------------------------


@pytest.mark.parametrize("field, value, invalidated", [
    ("Location", "/other", True),
    ("Content-Location", "http://test.example/other", True),
    ("Location", "http://elsewhere.example/other", False),     # another origin's URI is not ours to drop
])
def test_an_unsafe_method_invalidates_its_location(origin, lb_cache, field, value, invalidated):
    origin.routes["/other"] = (200, [("Cache-Control", "max-age=600")], b"o")
    origin.routes["/form"] = (201, [(field, value)], b"")
    lb = lb_cache()
    ask(lb.port, "/other")
    assert ask(lb.port, "/other").hit
    assert ask(lb.port, "/form", "POST", headers=[("Content-Length", "0")]).status == 201
    assert ask(lb.port, "/other").hit is not invalidated
    assert origin.count("/other") == (2 if invalidated else 1)


def test_an_unsafe_method_that_fails_invalidates_nothing(origin, lb_cache):
    origin.routes["/r"] = lambda method, headers, n: ((200, [("Cache-Control", "max-age=600")], b"r")
                                                      if method == "GET" else (500, [], b""))
    lb = lb_cache()
    ask(lb.port, "/r")
    assert ask(lb.port, "/r", "DELETE").status == 500
    assert ask(lb.port, "/r").hit and origin.count("/r") == 2


# ---- 1xx: forwarded, never stored ---------------------------------------------------------------


class _InterimHandler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = self.rfile.readline()
            if not line:
                return
            ranged = None
            while (field := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                if field.lower().startswith(b"range: bytes="):
                    ranged = [int(x) for x in field[13:].strip().split(b"-")]
            self.server.count += 1
            body = b"final %d" % self.server.count
            interim = b"".join(b"HTTP/1.1 %d Interim\r\nLink: </s.css>; rel=preload\r\n\r\n" % code
                               for code in self.server.interim)
            status = b"200 OK"
            if ranged:
                first, last = ranged
                status = b"206 Partial Content\r\nContent-Range: bytes %d-%d/%d" % (first, last, len(body))
                body = body[first:last + 1]
            self.wfile.write(interim + b"HTTP/1.1 " + status + b"\r\nCache-Control: max-age=600\r\nDate: "
                             + email.utils.formatdate(usegmt=True).encode()
                             + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            self.wfile.flush()


@pytest.fixture
def interim_lb(run_lb, tmp_path):
    """lb with its cache before an origin that sends the given 1xx heads
    before each final answer (a 206 to a Range of bytes=A-B): (lb, port, origin)."""
    servers = []

    def start(interim):
        srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _InterimHandler)
        srv.daemon_threads = True
        srv.count = 0
        srv.interim = interim
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        port = free_port()
        (tmp_path / "run").mkdir()
        lb = run_lb(cache_config(port, srv.server_address[1], tmp_path / "run"))
        lb.run_dir = tmp_path / "run"
        return lb, port, srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("interim", [[100], [102], [103], [102, 103, 103]])
def test_interim_responses_are_forwarded_and_not_stored(interim_lb, interim):
    lb, port, srv = interim_lb(interim)
    a = ask(port, "/i")
    assert (a.interim, a.status, a.body) == (interim, 200, b"final 1")
    a = ask(port, "/i")
    assert (a.interim, a.status, a.body, a.hit) == ([], 200, b"final 1", True)
    assert a.get("link") is None                           # the 103's fields are not the response's
    assert srv.count == 1


@pytest.mark.parametrize("interim", [[103], [100, 102, 103]])
def test_a_background_fetch_reads_past_interim_responses(interim_lb, interim):
    """range_fill's whole fetch (as a stale-while-revalidate refresh) takes
    the final answer after any 1xx, as a client does."""
    from conftest import wait_for
    from test_cache import cache_counts

    lb, port, srv = interim_lb(interim)
    a = ask(port, "/i", headers=[("Range", "bytes=0-3")])
    assert (a.interim, a.status, a.body) == (interim, 206, b"fina")
    wait_for(lambda: cache_counts(lb)["range_fills"] == 1, 10, "the whole fetch past its 1xx")
    assert cache_counts(lb)["range_fill_failed"] == 0 and srv.count == 2


# ---- RFC 9110 9.3.3 with RFC 9111 4.4: a POST's answer for its own target -----------------------


@pytest.mark.parametrize("fields, stored", [
    ([("Cache-Control", "max-age=600"), ("Content-Location", "/p")], True),
    ([("Cache-Control", "max-age=600"), ("Content-Location", "http://test.example/p")], True),
    ([("Cache-Control", "max-age=600"), ("Content-Location", "/p?x")], False),     # another resource
    ([("Cache-Control", "max-age=600"), ("Content-Location", "http://other.example/p")], False),
    ([("Cache-Control", "max-age=600")], False),                                    # no Content-Location
    ([("Last-Modified", httpdate(-86400)), ("Content-Location", "/p")], False),    # no explicit freshness
])
def test_a_post_answer_naming_its_target_is_stored_for_it(origin, lb_cache, fields, stored):
    origin.routes["/p"] = lambda method, headers, n: ((200, fields, b"posted %d" % n) if method == "POST"
                                                      else (200, [], b"got %d" % n))
    lb = lb_cache()
    a = ask(lb.port, "/p", "POST", headers=[("Content-Length", "0")])
    assert (a.status, a.body) == (200, b"posted 1")
    a = ask(lb.port, "/p")
    assert (a.hit, a.body) == ((True, b"posted 1") if stored else (False, b"got 2"))


# ---- 4.1 with 4.3.1: another variant's validator, and the 304 that selects it ----------------------


def test_a_vary_miss_sends_the_stored_variants_etag_and_a_304_selects_it(origin, lb_cache):
    def answer(method, headers, n):
        if headers.get("if-none-match") == ['"same"']:
            return 304, [("ETag", '"same"'), ("Cache-Control", "max-age=600")], b""
        return 200, [("Cache-Control", "max-age=600"), ("ETag", '"same"'), ("Vary", "X-V")], b"one body"
    origin.routes["/n"] = answer
    lb = lb_cache()
    assert ask(lb.port, "/n", headers=[("X-V", "1")]).body == b"one body"
    a = ask(lb.port, "/n", headers=[("X-V", "2")])
    assert origin.requests[-1][2].get("if-none-match") == ['"same"']
    assert (a.status, a.body) == (200, b"one body")
    assert a.cache_status.startswith("lb; fwd=vary-miss; fwd-status=304; stored")
    for v in ("1", "2"):                                       # both variants are stored now
        a = ask(lb.port, "/n", headers=[("X-V", v)])
        assert a.hit and a.body == b"one body"
    assert origin.count("/n") == 2


def test_a_vary_miss_never_borrows_a_variant_an_authorized_request_may_not_use(origin, lb_cache):
    origin.routes["/n"] = lambda method, headers, n: (200, [("Cache-Control", "max-age=600"), ("ETag", '"e"'),
                                                            ("Vary", "X-V")], b"body %d" % n)
    lb = lb_cache()
    ask(lb.port, "/n", headers=[("X-V", "1")])
    a = ask(lb.port, "/n", headers=[("X-V", "2"), ("Authorization", "Basic YTpi")])
    assert origin.requests[-1][2].get("if-none-match") is None and a.body == b"body 2"
