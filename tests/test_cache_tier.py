"""Tiered caching (docs/cache.md "Tiered caching"): two edge lb nodes whose
pool is a tier of two parent lb nodes (algorithm = "maglev", hash_key =
"cache_key"), in front of one origin that counts its requests. Each object
reaches the origin once for the cluster, each key always goes to the parent
Maglev gives it (the same table the workers use, computed here from the
parents' names), a parent that goes down gives away only its own keys, and
CDN-Loop (RFC 8586) stops a request from passing a tier twice."""

from __future__ import annotations

import json
import signal
import textwrap

import pytest

from conftest import LbProcess, free_port, wait_for
from lb import config
from lb._fastpath import hash64, maglev_table
from test_cache import cli, get, origin  # noqa: F401 (fixtures)

HOST = "www.example.com"
PARENTS = ("parent-a", "parent-b")
TABLE = 65537


def node_config(port, run_dir, backends, *, tier=False, extra="", health=""):
    pool = 'algorithm = "maglev"\nhash_key = "cache_key"\n' if tier else ""
    servers = "".join(f'[[pools.up.backends]]\naddress = "127.0.0.1:{p}"\nname = "{name}"\n' for name, p in backends)
    return textwrap.dedent(f"""\
        [global]
        workers = 1
        drain_timeout = "1s"
        admin_socket = "{run_dir}/admin.sock"
        state_file = "{run_dir}/state.json"

        [caches.c]
        size = "4m"

        [listeners.web]
        bind = ["127.0.0.1:{port}"]
        mode = "http"
        pool = "up"
        cache = "c"

        [pools.up]
        """) + pool + extra + (health or '[pools.up.health]\ntype = "none"\n') + servers


class Node:
    def __init__(self, tmp_path, name, backends, **kwargs):
        self.port = free_port()
        self.run_dir = tmp_path / name
        self.run_dir.mkdir()
        self.lb = LbProcess(node_config(self.port, self.run_dir, backends, **kwargs), self.run_dir)
        self.lb.port = self.port
        self.lb.run_dir = self.run_dir
        self.running = True

    def stop(self):
        if self.running:
            self.lb.stop(signal.SIGTERM)
            self.running = False

    def keys(self) -> set[str]:
        entries = json.loads(cli(self.lb, "cache", "list", "--json", "-n", "10000"))["entries"]
        return {e["key"].split("/", 1)[1] for e in entries}


@pytest.fixture
def cluster(tmp_path, origin):
    """Two parents in front of the origin, two edges whose tier they are."""
    nodes = []

    def start(edge_health=""):
        parents = {name: Node(tmp_path, name, [("origin", origin.port)]) for name in PARENTS}
        nodes.extend(parents.values())
        tier = [(name, parents[name].port) for name in PARENTS]
        edges = [Node(tmp_path, f"edge{i}", tier, tier=True, health=edge_health) for i in range(2)]
        nodes.extend(edges)
        return parents, edges

    yield start
    for n in nodes:
        n.stop()


def parent_of(path: str) -> str:
    """The parent Maglev gives a key: the hash of host and target, seed 0."""
    table = maglev_table(list(PARENTS), [100, 100], TABLE)
    return PARENTS[table[hash64(f"{HOST}{path}".encode()) % TABLE]]


def fetch(node, path, headers=None):
    status, h, body = get(node.port, path, headers={"Host": HOST, **(headers or {})})
    assert status == 200, (status, body)
    return body


def test_each_object_reaches_the_origin_once_per_cluster(cluster, origin):
    origin.routes.update({f"/o/{i}": (200, [("Cache-Control", "max-age=300")], f"object {i}") for i in range(40)})
    parents, edges = cluster()
    paths = [f"/o/{i}" for i in range(40)]
    for path in paths:
        assert fetch(edges[0], path) == f"object {path[3:]}".encode()
    for path in paths:
        assert fetch(edges[1], path) == f"object {path[3:]}".encode()
    assert all(origin.count(p) == 1 for p in paths), {p: origin.count(p) for p in paths}
    # each key went to its one parent, the one Maglev picks for it
    expected = {name: {p[1:] for p in paths if parent_of(p) == name} for name in PARENTS}
    assert all(expected.values()), "both parents have keys"
    assert {name: parents[name].keys() for name in PARENTS} == expected
    # the parents saw the edges' CDN-Loop, and passed it on
    assert all(h.get("cdn-loop") == ["lb"] for _, _, h in origin.requests)


def test_a_parent_down_gives_away_only_its_keys(cluster, origin):
    origin.routes.update({f"/m/{i}": (200, [("Cache-Control", "max-age=300")], b"m") for i in range(40)})
    parents, edges = cluster()
    paths = [f"/m/{i}" for i in range(40)]
    for path in paths:
        fetch(edges[0], path)
    gone, kept = PARENTS
    parents[gone].stop()
    # the other edge has none of them: every key goes to the tier again
    for path in paths:
        fetch(edges[1], path)
    for path in paths:
        # the surviving parent's keys are hits there; the dead one's were fetched again, once
        assert origin.count(path) == (2 if parent_of(path) == gone else 1), path
    assert parents[kept].keys() == {p[1:] for p in paths}


def test_a_parent_its_health_check_finds_down_is_passed_over(cluster, origin):
    """Down by the edges' health checks, a parent is not even tried: its
    keys go to the next parent in the Maglev table at once."""
    origin.routes.update({f"/h/{i}": (200, [("Cache-Control", "max-age=300")], b"h") for i in range(24)})
    parents, edges = cluster(edge_health='[pools.up.health]\ntype = "tcp"\ninterval = "100ms"\nfall = 1\nrise = 1\n')
    gone, kept = PARENTS
    gone_slot = PARENTS.index(gone)
    edge = edges[0]
    wait_for(lambda: edge.lb.shm.backend(0, gone_slot)["health"] == "up", 10, "the parent up")
    parents[gone].stop()
    wait_for(lambda: edge.lb.shm.backend(0, gone_slot)["health"] == "down", 10, "the parent down")
    errors = edge.lb.backend_stats(gone_slot)["connect_errors"]
    for i in range(24):
        fetch(edge, f"/h/{i}")
    assert edge.lb.backend_stats(gone_slot)["connect_errors"] == errors
    assert parents[kept].keys() == {f"h/{i}" for i in range(24)}
    assert all(origin.count(f"/h/{i}") == 1 for i in range(24))


def test_unsafe_methods_and_bypasses_go_to_the_parent_of_their_url(cluster, origin):
    """A POST is not looked up, but it is balanced by the same key: it
    reaches the parent that holds the URL, whose copy it invalidates."""
    def item(method, headers, n):
        return (204, [], b"") if method == "POST" else (200, [("Cache-Control", "max-age=300")], b"item")
    paths = [f"/i/{i}" for i in range(8)]
    origin.routes.update({p: item for p in paths})
    parents, edges = cluster()
    for path in paths:
        fetch(edges[0], path)
    for path in paths:
        status, _, _ = get(edges[1].port, path, method="POST", body=b"x", headers={"Host": HOST})
        assert status == 204
    for name in PARENTS:
        counts = json.loads(cli(parents[name].lb, "cache", "stats", "--json"))["caches"][0]["counts"]
        assert counts["invalidated"] == sum(parent_of(p) == name for p in paths), name
    assert all(parents[name].keys() == set() for name in PARENTS)


def test_a_request_that_passed_the_tier_is_not_sent_to_it_again(cluster, origin):
    origin.routes["/loop"] = (200, [("Cache-Control", "max-age=300")], b"x")
    parents, edges = cluster()
    status, h, body = get(edges[0].port, "/loop", headers={"Host": HOST, "CDN-Loop": "other-cdn, LB; v=1"})
    assert status == 508 and origin.count("/loop") == 0
    # another CDN's id passes, and lb's joins it
    assert fetch(edges[0], "/loop", headers={"CDN-Loop": "other-cdn"}) == b"x"
    assert origin.requests[0][2]["cdn-loop"] == ["other-cdn", "lb"]


def test_a_ring_of_tiers_ends_in_508(tmp_path, origin):
    """A node whose tier is itself (a misconfigured ring): the second pass
    carries the first one's CDN-Loop and is refused; nothing loops."""
    port = free_port()
    run_dir = tmp_path / "ring"
    run_dir.mkdir()
    text = node_config(port, run_dir, [("self", port)], tier=True, extra='cdn_id = "cdn.example.net:8443"\n')
    lb = LbProcess(text, run_dir)
    try:
        status, _, _ = get(port, "/r", headers={"Host": HOST})
        assert status == 508
        assert lb.backend_stats(0)["total"] == 1       # one pass to itself, refused there
    finally:
        lb.stop(signal.SIGTERM)


@pytest.mark.parametrize("pool, path, message", [
    ('algorithm = "maglev"\nhash_key = "cache_keys"', "pools.up.hash_key", "cache_key"),
    ('algorithm = "maglev"\nhash_key = "cache_key"\ncdn_id = "a;b"', "pools.up.cdn_id", "token"),
    ('algorithm = "maglev"\nhash_key = "cache_key"\ncdn_id = ""', "pools.up.cdn_id", "token"),
])
def test_bad_tier_config_names_the_key(pool, path, message):
    text = node_config(1, "/tmp", [("a", 2)], extra=pool + "\n")
    with pytest.raises(config.ConfigError) as info:
        config.loads(text)
    assert info.value.path == path and message in str(info.value)


def test_a_tier_pool_needs_http():
    text = node_config(1, "/tmp", [("a", 2)], tier=True) + textwrap.dedent("""\
        [listeners.raw]
        bind = ["127.0.0.1:2"]
        mode = "tcp"
        pool = "up"
        """)
    with pytest.raises(config.ConfigError) as info:
        config.loads(text)
    assert info.value.path == "pools.up.hash_key" and "needs HTTP" in str(info.value)


def test_cdn_id_without_a_tier_is_a_warning():
    cfg = config.loads(node_config(1, "/tmp", [("a", 2)], extra='cdn_id = "x"\n'))
    assert cfg.warnings == ('pools.up.cdn_id: has no effect unless algorithm = "maglev" and hash_key = "cache_key"',)
    tier = config.loads(node_config(1, "/tmp", [("a", 2)], tier=True))
    assert (tier.pools["up"].hash_key, tier.pools["up"].cdn_id) == ("cache_key", "lb")


def test_a_range_miss_fetches_the_whole_object_from_its_parent(cluster, origin):
    """range_fill through a tier: the edge's background fetch of the whole
    object goes where the request itself goes (the key's parent, with
    CDN-Loop), so each object still reaches the origin whole once."""
    from test_cache import body_of, cache_counts, ranged_origin

    paths = [f"/v/{i}" for i in range(12)]
    bodies = {p: body_of(20000, 100 + i) for i, p in enumerate(paths)}
    origin.routes.update({p: ranged_origin(bodies[p], [("Cache-Control", "max-age=300")]) for p in paths})
    parents, edges = cluster()
    edge = edges[0]
    for path in paths:
        status, _, data = get(edge.port, path, headers={"Host": HOST, "Range": "bytes=100-199"})
        assert (status, data) == (206, bodies[path][100:200])
    wait_for(lambda: cache_counts(edge.lb)["range_fills"] == len(paths), 10, "every object fetched whole by the edge")
    for path in paths:
        wholes = [rq for rq in origin.requests if rq[1] == path and "range" not in rq[2]]
        assert len(wholes) == 1, path
    expected = {name: {p[1:] for p in paths if parent_of(p) == name} for name in PARENTS}
    assert all(expected.values()), "both parents have keys"
    assert {name: parents[name].keys() for name in PARENTS} == expected
    assert all(h.get("cdn-loop") == ["lb"] for _, _, h in origin.requests)
    for path in paths:
        status, h, data = get(edge.port, path, headers={"Host": HOST, "Range": "bytes=19000-19099"})
        assert (status, data) == (206, bodies[path][19000:19100]) and h["cache-status"].startswith("lb; hit")
