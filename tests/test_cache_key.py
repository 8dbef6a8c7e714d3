"""The configurable cache key ([caches.NAME] key_host, key_query,
key_query_drop, key_query_keep, key_headers; docs/cache.md "The cache key")
against the counting origin of test_cache: requests that differ only in
what the key leaves out share one object, those that differ in what it
keeps do not, the origin always gets the request as the client sent it,
and purge, PURGE and invalidation find the objects under the same key."""

from __future__ import annotations

import json
import random

import pytest

from lb import config
from lb._fastpath import cache_key_preview
from reference.cache_key_ref import cache_key as cache_key_ref
from test_cache import cache_config, cli, get, lb_cache, origin  # noqa: F401 (fixtures)

FRESH = [("Cache-Control", "max-age=60")]


def hit(port, target, headers=None) -> bool:
    status, h, _ = get(port, target, headers=headers)
    assert status == 200
    return h["cache-status"].startswith("lb; hit")


def origin_count(origin, path) -> int:
    """Requests the origin saw for path, whatever their query."""
    with origin.lock:
        return sum(n for target, n in origin.hits.items() if target.split("?")[0] == path)


def keys(lb) -> list[dict]:
    return json.loads(cli(lb, "cache", "list", "--json"))["entries"]


def purge(lb, *args) -> int:
    return json.loads(cli(lb, "cache", "purge", *args, "--json"))["total"]


def test_the_default_key_is_host_and_target_as_sent(origin, lb_cache):
    origin.routes["/d"] = (200, FRESH, b"d")
    lb = lb_cache()
    assert not hit(lb.port, "/d?b=2&a=1")
    assert not hit(lb.port, "/d?a=1&b=2")
    assert hit(lb.port, "/d?b=2&a=1")
    assert origin_count(origin, "/d") == 2
    assert sorted(e["key"] for e in keys(lb)) == [f"127.0.0.1:{lb.port}/d?a=1&b=2", f"127.0.0.1:{lb.port}/d?b=2&a=1"]


def test_sorted_query_parameters_share_an_entry(origin, lb_cache):
    origin.routes["/s"] = (200, FRESH, b"s")
    lb = lb_cache(cache_extra='key_query = "sort"')
    assert not hit(lb.port, "/s?b=2&a=1&c")
    assert hit(lb.port, "/s?a=1&c&b=2")
    assert hit(lb.port, "/s?c&&b=2&a=1")               # an empty parameter is no parameter
    # a repeated name keeps the order of its values: /s?a=1&a=2 is not /s?a=2&a=1
    assert not hit(lb.port, "/s?a=2&a=1&b=2&c")
    assert origin_count(origin, "/s") == 2
    assert sorted(e["key"] for e in keys(lb)) == [f"127.0.0.1:{lb.port}/s?a=1&b=2&c",
                                                   f"127.0.0.1:{lb.port}/s?a=2&a=1&b=2&c"]
    # the origin got the request as the client sent it
    assert origin.requests[0][1] == "/s?b=2&a=1&c"
    # purge by any spelling of the URL: it is keyed as a request is
    assert purge(lb, f"http://127.0.0.1:{lb.port}/s?c&b=2&a=1") == 1
    assert not hit(lb.port, "/s?a=1&b=2&c")


def test_dropped_parameters_share_an_entry(origin, lb_cache):
    origin.routes["/p"] = (200, FRESH, b"p")
    lb = lb_cache(cache_extra='key_query_drop = ["utm_*", "fbclid"]')
    assert not hit(lb.port, "/p?id=1&utm_source=news&fbclid=x")
    assert hit(lb.port, "/p?id=1")
    assert hit(lb.port, "/p?utm_medium=mail&id=1&utm_campaign=y")
    assert not hit(lb.port, "/p?id=2&fbclid=z")
    assert not hit(lb.port, "/p?id=1&fbclidx=1")        # a name, not a prefix: fbclidx is kept
    assert not hit(lb.port, "/p?id=1&utm")               # "utm_*" wants the underscore
    assert origin_count(origin, "/p") == 4
    assert origin.requests[0][1] == "/p?id=1&utm_source=news&fbclid=x"
    assert {e["key"].split("/", 1)[1] for e in keys(lb)} == {"p?id=1", "p?id=2", "p?id=1&fbclidx=1", "p?id=1&utm"}
    assert purge(lb, f"http://127.0.0.1:{lb.port}/p?id=2&utm_source=a") == 1
    assert purge(lb, "--prefix", f"http://127.0.0.1:{lb.port}/p?id=1") == 3
    assert keys(lb) == []


def test_only_kept_parameters_are_in_the_key(origin, lb_cache):
    origin.routes["/k"] = (200, FRESH, b"k")
    lb = lb_cache(cache_extra='key_query = "sort"\nkey_query_keep = ["id", "v*"]')
    assert not hit(lb.port, "/k?session=abc&id=1&view=2")
    assert hit(lb.port, "/k?view=2&id=1&session=def")
    assert hit(lb.port, "/k?id=1&view=2")
    assert not hit(lb.port, "/k?id=2&view=2")
    assert not hit(lb.port, "/k")
    assert hit(lb.port, "/k?session=x")
    assert origin_count(origin, "/k") == 3
    assert {e["key"].split("/", 1)[1] for e in keys(lb)} == {"k?id=1&view=2", "k?id=2&view=2", "k"}


def test_drop_leaves_the_whole_query_out(origin, lb_cache):
    origin.routes["/q"] = (200, FRESH, b"q")
    lb = lb_cache(cache_extra='key_query = "drop"')
    assert not hit(lb.port, "/q?a=1")
    assert hit(lb.port, "/q?b=2")
    assert hit(lb.port, "/q")
    assert origin_count(origin, "/q") == 1
    # HTTP PURGE and unsafe methods key their target the same way
    origin.routes["/q"] = lambda m, h, n: (204, [], b"") if m == "POST" else (200, FRESH, b"q")
    assert get(lb.port, "/q?anything", method="POST", body=b"x")[0] == 204
    assert not hit(lb.port, "/q?z=1")
    assert origin_count(origin, "/q") == 3


def test_http_purge_uses_the_key(origin, lb_cache):
    origin.routes["/h"] = (200, FRESH, b"h")
    lb = lb_cache(cache_extra='key_query = "sort"\npurge_allow = ["local"]')
    get(lb.port, "/h?b=1&a=1")
    status, _, body = get(lb.port, "/h?a=1&b=1", method="PURGE")
    assert (status, body) == (200, b"purged 1\n")
    assert not hit(lb.port, "/h?b=1&a=1")


def test_headers_in_the_key_separate_variants(origin, lb_cache):
    def page(method, headers, n):
        lang = headers.get("accept-language", ["none"])[0]
        return 200, FRESH, f"page in {lang}"
    origin.routes["/v"] = page
    lb = lb_cache(cache_extra='key_headers = ["Accept-Language", "X-Device"]')
    en, fr = {"Accept-Language": "en"}, {"Accept-Language": "fr"}
    assert get(lb.port, "/v", headers=en)[2] == b"page in en"
    assert get(lb.port, "/v", headers=fr)[2] == b"page in fr"
    assert get(lb.port, "/v")[2] == b"page in none"
    for headers, body in ((en, b"page in en"), (fr, b"page in fr"), ({}, b"page in none")):
        status, h, got = get(lb.port, "/v", headers=headers)
        assert (got, h["cache-status"][:7]) == (body, "lb; hit")
    assert not hit(lb.port, "/v", headers={**en, "X-Device": "phone"})
    assert origin.count("/v") == 4
    listed = {(e["key"], json.dumps(e["key_fields"], sort_keys=True)) for e in keys(lb)}
    url = f"127.0.0.1:{lb.port}/v"
    assert listed == {(url, "{}"), (url, '{"accept-language": "en"}'), (url, '{"accept-language": "fr"}'),
                      (url, '{"accept-language": "en", "x-device": "phone"}')}
    text = cli(lb, "cache", "list")
    assert "[accept-language: fr]" in text
    key = json.loads(cli(lb, "cache", "stats", "--json"))["caches"][0]["key"]
    assert key == {"host": True, "query": "keep", "query_drop": [], "query_keep": [],
                   "headers": ["accept-language", "x-device"]}
    # purge by URL (and by prefix) reaches every variant the fields set apart
    assert purge(lb, f"http://127.0.0.1:{lb.port}/v") == 4
    assert not hit(lb.port, "/v", headers=en)
    assert purge(lb, "--prefix", f"http://127.0.0.1:{lb.port}/") == 1


def test_key_headers_and_vary_together(origin, lb_cache):
    """The origin's Vary and lb's key_headers both set variants apart, and
    a variant of one replaces only its own."""
    def page(method, headers, n):
        lang = headers.get("accept-language", ["-"])[0]
        enc = headers.get("accept-encoding", ["-"])[0]
        return 200, FRESH + [("Vary", "Accept-Encoding")], f"{lang} {enc} {n}"
    origin.routes["/both"] = page
    lb = lb_cache(cache_extra='key_headers = ["Accept-Language"]')
    combos = [{"Accept-Language": lang, "Accept-Encoding": enc} for lang in ("en", "fr") for enc in ("gzip", "br")]
    first = {}
    for headers in combos:
        status, h, body = get(lb.port, "/both", headers=headers)
        first[tuple(headers.values())] = body
    assert len(set(first.values())) == 4
    for headers in combos:
        status, h, body = get(lb.port, "/both", headers=headers)
        assert h["cache-status"].startswith("lb; hit") and body == first[tuple(headers.values())]
    assert origin.count("/both") == 4 and len(keys(lb)) == 4
    # a refetch of one variant (no-cache) replaces it and no other
    get(lb.port, "/both", headers={**combos[0], "Cache-Control": "no-cache"})
    assert len(keys(lb)) == 4
    assert get(lb.port, "/both", headers=combos[0])[2].endswith(b" 5")
    assert get(lb.port, "/both", headers=combos[3])[2] == first[tuple(combos[3].values())]


def test_without_the_host_every_host_shares_an_entry(origin, lb_cache):
    origin.routes["/shared"] = (200, FRESH, b"one object")
    origin.routes["/gone"] = lambda m, h, n: (204, [], b"") if m == "DELETE" else (200, FRESH, b"g")
    lb = lb_cache(cache_extra="key_host = false")
    assert not hit(lb.port, "/shared", headers={"Host": "a.example"})
    assert hit(lb.port, "/shared", headers={"Host": "B.example:8080"})
    assert origin.count("/shared") == 1
    assert [e["key"] for e in keys(lb)] == ["/shared"]
    assert purge(lb, "http://c.example/shared") == 1
    get(lb.port, "/shared", headers={"Host": "a.example"})
    assert purge(lb, "--prefix", "/sh") == 1
    get(lb.port, "/shared", headers={"Host": "a.example"})
    assert purge(lb, "--prefix", "http://any.example/shared") == 1
    # an unsafe method on one host invalidates the object every host shares
    get(lb.port, "/gone", headers={"Host": "a.example"})
    assert hit(lb.port, "/gone", headers={"Host": "b.example"})
    assert get(lb.port, "/gone", method="DELETE", headers={"Host": "b.example"})[0] == 204
    assert not hit(lb.port, "/gone", headers={"Host": "a.example"})


def test_a_reload_changes_the_key_and_keeps_the_objects(origin, lb_cache):
    origin.routes["/r"] = (200, [("Cache-Control", "max-age=600")], b"r")
    lb = lb_cache()
    get(lb.port, "/r?b=1&a=1")
    assert not hit(lb.port, "/r?a=1&b=1")
    lb.config_path.write_text(lb.config_path.read_text().replace('tag_header = "Surrogate-Key"',
                                                                 'tag_header = "Surrogate-Key"\nkey_query = "sort"'))
    cli(lb, "reload")
    # the region is kept: what ?a=1&b=1 stored (a key already sorted) answers both spellings now;
    # what ?b=1&a=1 stored is found no more, and ages out
    assert hit(lb.port, "/r?b=1&a=1")
    assert hit(lb.port, "/r?a=1&b=1")
    assert origin_count(origin, "/r") == 2
    # the supervisor keys purged URLs the new way too
    assert purge(lb, f"http://127.0.0.1:{lb.port}/r?b=1&a=1") == 1
    assert [e["key"] for e in keys(lb)] == [f"127.0.0.1:{lb.port}/r?b=1&a=1"]


def test_location_invalidation_is_keyed_like_requests(origin, lb_cache):
    origin.routes["/list"] = (200, FRESH, b"list")
    origin.routes["/new"] = lambda m, h, n: (201, [("Location", "/list?page=1&sort=name")], b"")
    lb = lb_cache(cache_extra='key_query = "sort"')
    get(lb.port, "/list?sort=name&page=1")
    assert hit(lb.port, "/list?page=1&sort=name")
    assert get(lb.port, "/new", method="POST", body=b"x")[0] == 201
    assert not hit(lb.port, "/list?sort=name&page=1")


def test_too_many_parameters_are_not_cached(origin, lb_cache):
    origin.routes["/many"] = (200, FRESH, b"m")
    lb = lb_cache(cache_extra='key_query = "sort"')
    target = "/many?" + "&".join(f"p{i}=1" for i in range(65))
    for _ in range(2):
        status, h, body = get(lb.port, target)
        assert (status, body, h["cache-status"]) == (200, b"m", "lb; fwd=bypass")
    assert origin.count(target) == 2


KEY_SETTINGS = [
    {},
    {"key_query": "sort"},
    {"key_query": "drop", "key_host": False},
    {"key_query_drop": ("utm_*", "a", "bb")},
    {"key_query": "sort", "key_query_drop": ("utm_*", "a")},
    {"key_query": "sort", "key_query_keep": ("a", "c*"), "key_headers": ("x-a", "accept-language")},
    {"key_query_keep": ("b",), "key_host": False, "key_headers": ("x-a",)},
]


def _random_request(rng: random.Random) -> tuple[str, str, list[tuple[str, str]]]:
    names = ["a", "b", "bb", "c", "cx", "utm_source", "utm", "A", ""]
    params = []
    for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 70])):
        name = rng.choice(names)
        params.append(name if rng.random() < 0.2 else f"{name}={rng.choice(['1', '2', '', 'x.y', '%2F'])}")
        if rng.random() < 0.1:
            params.append("")                            # "&&"
    path = rng.choice(["/", "/p", "/a/b.html", "/x%20y"])
    target = path + (("?" + "&".join(params)) if params or rng.random() < 0.2 else "")
    host = rng.choice(["example.com", "Example.COM:8080", "10.0.0.1"])
    fields = [(rng.choice(["X-A", "Accept-Language", "X-B"]), rng.choice(["1", "en", "fr, de", "a b"]))
              for _ in range(rng.choice([0, 1, 3]))]
    return host, target, fields


@pytest.mark.parametrize("settings", KEY_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "-")
def test_the_compiled_key_matches_the_reference(settings):
    cfg = config.Cache(name="c", **settings)
    rng = random.Random(15)
    for _ in range(400):
        host, target, fields = _random_request(rng)
        head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
        assert cache_key_preview(cfg, head.encode()) == cache_key_ref(cfg, host, target, fields), (settings, head)
    # absolute-form: the target's authority is the host
    head = b"GET http://Other.example/p?b=1&a=2 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert cache_key_preview(cfg, head) == cache_key_ref(cfg, "Other.example", "/p?b=1&a=2", [])


@pytest.mark.parametrize("extra, path, message", [
    ('key_query = "shuffle"', "caches.c.key_query", "keep"),
    ('key_host = "yes"', "caches.c.key_host", "boolean"),
    ('key_query_drop = ["a=b"]', "caches.c.key_query_drop[0]", "parameter"),
    ('key_query_drop = ["*"]', "caches.c.key_query_drop[0]", "parameter"),
    ('key_query_drop = ["a b"]', "caches.c.key_query_drop[0]", "parameter"),
    ('key_query_keep = "id"', "caches.c.key_query_keep", "list"),
    ('key_query_drop = ["a"]\nkey_query_keep = ["b"]', "caches.c.key_query_keep", "not both"),
    ('key_query = "drop"\nkey_query_drop = ["a"]', "caches.c.key_query_drop", "no effect"),
    ("key_query_keep = [" + ", ".join(f'"p{i}"' for i in range(17)) + "]", "caches.c.key_query_keep", "16"),
    ('key_headers = ["Bad Name"]', "caches.c.key_headers[0]", ""),
    ('key_headers = ["Host"]', "caches.c.key_headers[0]", "key_host"),
    ('key_headers = ["Cookie"]', "caches.c.key_headers[0]", "never"),
    ('key_headers = ["X-A", "x-a"]', "caches.c.key_headers[1]", "twice"),
    ("key_headers = [" + ", ".join(f'"X-{i}"' for i in range(9)) + "]", "caches.c.key_headers", "8"),
])
def test_bad_key_config_names_the_key(extra, path, message):
    with pytest.raises(config.ConfigError) as info:
        config.loads(cache_config(1, 2, "/tmp", cache_extra=extra))
    assert info.value.path == path
    assert message in str(info.value)


def test_key_config_is_parsed():
    cfg = config.loads(cache_config(1, 2, "/tmp", cache_extra=(
        'key_host = false\nkey_query = "sort"\nkey_query_drop = ["utm_*"]\nkey_headers = ["Accept-Language"]')))
    c = cfg.caches["c"]
    assert (c.key_host, c.key_query, c.key_query_drop, c.key_query_keep, c.key_headers) == (
        False, "sort", ("utm_*",), (), ("accept-language",))
    d = config.loads(cache_config(1, 2, "/tmp")).caches["c"]
    assert (d.key_host, d.key_query, d.key_query_drop, d.key_query_keep, d.key_headers) == (True, "keep", (), (), ())
