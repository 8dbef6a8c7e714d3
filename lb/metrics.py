"""The metrics endpoint ([global.metrics] bind): Prometheus text at /metrics
(OpenMetrics when the scraper's Accept asks for it), served by the supervisor
from shared memory, never by a worker (docs/observability.md).

Workers count every exchange into their own row of entities (listeners,
routes, pools, backend slots: lb/fastpath/metrics.pxi); a scrape sums the
rows of the generation in force, adds what draining generations counted
since the reload, and writes the text. The per-entity lines, most of a
scrape, are written by the compiled module; this module names the entities
and writes the rest.

Counters never go backwards: a respawned worker writes on in its row; a
reload carries every entity's totals, matched by name, into the new
region's carried row (carry_over), and what the old generation counts while
it drains is folded in when it is gone (fold_drained).
"""

from __future__ import annotations

import array
import errno
import json
import logging
import selectors
import socket
import time
from pathlib import Path

from lb import _fastpath as fp
from lb.config.splits import config_splits

log = logging.getLogger("lb")

W = fp.METRIC_WORDS
OFF = fp.METRIC_OFFSETS
CLASSES = fp.METRIC_CLASSES
# TERMINATIONS: the words the access log uses for each TERM_*
TERMS = tuple(fp.TERMINATIONS[i] for i in range(len(fp.TERMINATIONS)))
HISTS = (("response", "the whole exchange: from its first byte (tcp: the accept) to its end"),
         ("connect", "to the backend connected, TLS handshake included"),
         ("first_byte", "to the first byte of the response"))

CONTENT_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


# ---- entities -----------------------------------------------------------------------


def entities(gen) -> dict[tuple, int]:
    """Every entity of a generation's region by its name: ("listener", L),
    ("route", L, R), ("pool", P), ("backend", P, B) -> its index."""
    shm, config = gen.shm, gen.config
    layout = shm.metrics_layout()
    out: dict[tuple, int] = {}
    for li, (lname, listener) in enumerate(config.listeners.items()):
        out[("listener", lname)] = li
        for ri, route in enumerate(listener.routes):
            out[("route", lname, route.name)] = layout["route_base"][li] + ri
    pool_base = layout["listeners"] + layout["routes"]
    slot_base = pool_base + layout["pools"]
    first = 0
    for pi, pname in enumerate(config.pools):
        out[("pool", pname)] = pool_base + pi
        for bname, idx in gen.backends[pname].items():
            out[("backend", pname, bname)] = slot_base + first + idx
        first += shm.pool_capacity(pi)
    # the splits' variants follow the backend slots, in config order
    variant = slot_base + layout["slots"]
    if layout.get("variants"):
        for split in config_splits(config.listeners):
            for pool in split.pools:
                out[("variant", split.name, pool)] = variant
                variant += 1
    return out


def counted_rows(gen) -> list[int]:
    """The rows worth summing: the workers' own, a spare one a replacement
    worker ever had (its pid stays), and the carried row. A spare row never
    used is all zeros, and reading it would make tmpfs allocate its pages."""
    shm = gen.shm
    return [r for r in range(shm.n_rows)
            if r < len(gen.slots) or r == gen.carried_row or shm.worker_stats(r)["pid"]]


def _words(totals: bytes | array.array, entity: int) -> array.array:
    a = array.array("Q")
    a.frombytes(bytes(memoryview(totals).cast("B")[entity * W * 8:(entity + 1) * W * 8]))
    return a


def carry_over(old, new) -> None:
    """A reload: every entity of the new generation that the old one had keeps
    its totals (in the new region's carried row, which no worker writes)."""
    old_ids = entities(old)
    totals = old.shm.metrics_totals(counted_rows(old))
    for key, e in entities(new).items():
        oe = old_ids.get(key)
        if oe is None:
            continue
        words = _words(totals, oe)
        words[OFF["active"]] = 0  # a gauge: the old generation's connections are its own
        old.metrics_handed_over[key] = words
        new.shm.metrics_add(new.carried_row, e, words)


def _deltas(old, cur_ids: dict[tuple, int]):
    """What an old generation counted since it handed its totals over: (entity
    of the current generation, words) for every entity both know."""
    if not old.metrics_handed_over:
        return
    old_ids = entities(old)
    after = old.shm.metrics_totals(counted_rows(old))
    for key, before in old.metrics_handed_over.items():
        e, oe = cur_ids.get(key), old_ids.get(key)
        if e is None or oe is None:
            continue
        now = _words(after, oe)
        now[OFF["active"]] = 0
        yield e, array.array("Q", (a - b for a, b in zip(now, before)))


def fold_drained(old, cur) -> None:
    """An old generation is gone: what it counted after the reload joins the
    generation in force, so totals stay exact and never go backwards."""
    for e, delta in _deltas(old, entities(cur)):
        cur.shm.metrics_add(cur.carried_row, e, delta)


def totals(sup) -> tuple[bytes, dict[tuple, int]]:
    """The summed counters of the generation in force, draining generations'
    counts since the reload included, and its entities."""
    gen = sup.gen
    ids = entities(gen)
    out = gen.shm.metrics_totals(counted_rows(gen))
    olds = [old for old in sup.old if old.metrics_handed_over]
    if olds:
        t = array.array("Q")
        t.frombytes(out)
        for old in olds:
            for e, delta in _deltas(old, ids):
                base = e * W
                for i, d in enumerate(delta):
                    t[base + i] += d
        out = t.tobytes()
    return out, ids


# ---- the text -------------------------------------------------------------------------


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**kv) -> bytes:
    return ",".join(f'{k}="{escape(str(v))}"' for k, v in kv.items()).encode()


class Text:
    """A scrape's text, one family at a time, in the Prometheus text format
    or in OpenMetrics (counters are declared without their _total there)."""

    def __init__(self, openmetrics: bool):
        self.om = openmetrics
        self.parts: list[bytes] = []

    def family(self, name: str, kind: str, help_: str) -> bytes:
        declared = name[:-6] if self.om and kind == "counter" and name.endswith("_total") else name
        self.parts.append(f"# HELP {declared} {help_}\n# TYPE {declared} {kind}\n".encode())
        return name.encode()

    def line(self, name: bytes, labels: bytes, value) -> None:
        self.parts.append(b"%s{%s} %s\n" % (name, labels, str(value).encode()) if labels
                          else b"%s %s\n" % (name, str(value).encode()))

    def add(self, chunk: bytes) -> None:
        self.parts.append(chunk)

    def chunks(self) -> list[bytes]:
        """The text in the pieces it was written in: the server sends them one
        after the other (a join would copy tens of MB for a large scrape)."""
        if self.om:
            self.parts.append(b"# EOF\n")
        return self.parts


def _entity_families(text: Text, totals: bytes, kind: str, what: str, ids: list[int], labels: list[bytes],
                     hists=tuple(name for name, _ in HISTS)) -> None:
    """The counters and histograms every entity of one kind has (hists: which
    histograms)."""
    if not ids:
        return
    p = f"lb_{kind}_"
    name = text.family(p + "requests_total", "counter",
                       f"Exchanges (http requests, tcp connections) that ended, per {what}, by the status "
                       "class the client got (other: tcp, or no response)")
    for ci, cls in enumerate(CLASSES):
        text.add(fp.metrics_render_samples(totals, ids, labels, name, OFF["responses"] + ci,
                                           f'code="{cls}"'.encode()))
    name = text.family(p + "terminations_total", "counter",
                       f"Exchanges per {what} by how they ended (the access log's termination; reasons "
                       "appear once counted)")
    for ti, term in enumerate(TERMS):
        text.add(fp.metrics_render_samples(totals, ids, labels, name, OFF["terms"] + ti,
                                           f'reason="{term}"'.encode(), skip_zero=True))
    name = text.family(p + "received_bytes_total", "counter", f"Bytes from clients, per {what}")
    text.add(fp.metrics_render_samples(totals, ids, labels, name, OFF["bytes_in"]))
    name = text.family(p + "sent_bytes_total", "counter", f"Bytes to clients, per {what}")
    text.add(fp.metrics_render_samples(totals, ids, labels, name, OFF["bytes_out"]))
    name = text.family(p + "retries_total", "counter", f"Backends tried beyond the first, per {what}")
    text.add(fp.metrics_render_samples(totals, ids, labels, name, OFF["retries"]))
    for hi, (hname, hhelp) in enumerate(HISTS):
        if hname not in hists:
            continue
        name = text.family(f"{p}{hname}_duration_seconds", "histogram", f"Time {hhelp}, per {what}")
        text.add(fp.metrics_render_histogram(totals, ids, labels, name, hi))


def render(sup, openmetrics: bool = False) -> bytes:
    """The whole scrape."""
    return b"".join(render_chunks(sup, openmetrics))


def _backend_labels(gen) -> tuple[list[int], list[bytes], list[tuple]]:
    """Each backend's entity, label text and (pool index, slot, checked), kept
    on the generation while its backends stay the same (10,000 label texts
    cost more than summing their counters)."""
    config = gen.config
    key = tuple((p, tuple(gen.backends[p].items())) for p in config.pools)
    cached = getattr(gen, "metrics_label_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    ids = entities(gen)
    bids, blabels, binfo = [], [], []
    for pi, p in enumerate(config.pools):
        checked = config.pools[p].health.type != "none"
        plab = f'pool="{escape(p)}",backend="'.encode()
        for bname, idx in gen.backends[p].items():
            bids.append(ids[("backend", p, bname)])
            blabels.append(plab + escape(bname).encode() + b'"')
            binfo.append((pi, idx, checked))
    gen.metrics_label_cache = (key, (bids, blabels, binfo))
    return bids, blabels, binfo


def render_chunks(sup, openmetrics: bool = False) -> list[bytes]:
    """The whole scrape, in pieces."""
    gen = sup.gen
    config = gen.config
    summed, ids = totals(sup)
    text = Text(openmetrics)

    name = text.family("lb_info", "gauge", "The running config's generation (a label) and this build")
    text.line(name, _labels(version=_version(), config_sha256=config.sha256[:12], generation=gen.number), 1)
    name = text.family("lb_start_time_seconds", "gauge", "When the supervisor started, unix time")
    text.line(name, b"", f"{sup.started:.3f}")
    name = text.family("lb_active_connections", "gauge", "Client connections open now, all workers")
    text.line(name, b"", sum(gen.shm.worker_stats(s.row)["active"] for s in gen.slots)
              + sum(old.shm.worker_stats(c.row)["active"] for old in sup.old for c in sup.children.values()
                    if c.gen is old and c.row >= 0))

    lids, llabels = [], []
    rids, rlabels = [], []
    for lname, listener in config.listeners.items():
        lids.append(ids[("listener", lname)])
        llabels.append(_labels(listener=lname))
        for route in listener.routes:
            rids.append(ids[("route", lname, route.name)])
            rlabels.append(_labels(listener=lname, route=route.name))
    _entity_families(text, summed, "listener", "listener", lids, llabels)
    name = text.family("lb_listener_active_connections", "gauge",
                       "Client connections open now, per listener (draining generations' included)")
    for lname, lab in zip(config.listeners, llabels):
        text.line(name, lab, sum(g.shm.metrics_active(list(g.config.listeners).index(lname))
                                 for g in [gen, *sup.old] if lname in g.config.listeners))
    _entity_families(text, summed, "route", "route", rids, rlabels)

    pids = [ids[("pool", p)] for p in config.pools]
    plabels = [_labels(pool=p) for p in config.pools]
    _entity_families(text, summed, "pool", "pool", pids, plabels)
    name = text.family("lb_pool_active_connections", "gauge", "Connections open to the pool's backends")
    for pi, p in enumerate(config.pools):
        text.line(name, plabels[pi], gen.shm.pool_active(pi))

    bids, blabels, binfo = _backend_labels(gen)
    _entity_families(text, summed, "backend", "backend", bids, blabels,
                     hists=config.global_.metrics_backend_histograms)
    _backend_state(text, gen, blabels, binfo)
    vids, vlabels = [], []
    for split in config_splits(config.listeners):
        for pool in split.pools:
            e = ids.get(("variant", split.name, pool))
            if e is not None:
                vids.append(e)
                vlabels.append(_labels(route=split.name, pool=pool))
    _entity_families(text, summed, "split", "split variant", vids, vlabels, hists=("response",))
    _mirrors(text, gen)
    _acl_rules(text, gen)
    _gateway_rules(text, gen)
    _caches(text, gen)
    return text.chunks()


def mirror_status(gen) -> list[dict]:
    """Each mirror with what its copies came to, since its generation started."""
    counts = fp.mirror_counts(gen.shm, counted_rows(gen))
    return [{"listener": lname, "route": None if ri < 0 else gen.config.listeners[lname].routes[ri].name,
             "pool": m.pool, "percent": m.percent, **c}
            for ((lname, ri), m), c in zip(fp.mirror_sites(gen.config.listeners.values()), counts)]


def _mirrors(text: Text, gen) -> None:
    mirrors = mirror_status(gen)
    if not mirrors:
        return
    name = text.family("lb_mirror_requests_total", "counter",
                       "Requests a mirror drew, by what came of their copy: copied (sent to the shadow), "
                       "dropped (not copied: max_concurrent, max_body), failed (connect, send or timeout); "
                       "since the generation started")
    for m in mirrors:
        for result, key in (("copied", "copies"), ("dropped", "dropped"), ("failed", "failed")):
            text.line(name, _labels(listener=m["listener"], route=m["route"] or "", pool=m["pool"], result=result),
                      m[key])


def _backend_state(text: Text, gen, blabels: list[bytes], binfo: list[tuple]) -> None:
    """The backends' gauges and connect errors, read a pool at a time."""
    cols: dict[str, list] = {}
    checked: list[bool] = []
    now_ms = int(time.monotonic() * 1000)
    by_pool: dict[int, list[int]] = {}
    for pi, idx, active in binfo:
        by_pool.setdefault(pi, []).append(idx)
    for pi, indices in by_pool.items():
        for k, v in gen.shm.backend_columns(pi, indices, now_ms).items():
            cols.setdefault(k, []).extend(v)
    checked = [active for _, _, active in binfo]
    if not blabels:
        return
    render_list = fp.metrics_render_list
    name = text.family("lb_backend_active_connections", "gauge", "Connections open to the backend")
    text.add(render_list(name, blabels, cols["active"]))
    name = text.family("lb_backend_connection_errors_total", "counter",
                       "Connects to the backend that failed, by reason (refused: refused, reset or "
                       "unreachable; timeout: connect_timeout)")
    text.add(render_list(name, blabels, cols["connect_errors"], b'reason="refused"'))
    text.add(render_list(name, blabels, cols["connect_timeouts"], b'reason="timeout"'))
    name = text.family("lb_backend_up", "gauge", "1 while health checks (or passive checks) hold the backend up")
    text.add(render_list(name, blabels, cols["up"]))
    name = text.family("lb_backend_admin_state", "gauge", "The backend's admin state: 1 for the state in force")
    for code, state in enumerate(("ready", "drain", "maint")):  # ADMIN_READY, ADMIN_DRAIN, ADMIN_MAINT
        text.add(render_list(name, blabels, [1 if a == code else 0 for a in cols["admin"]],
                             f'state="{state}"'.encode()))
    name = text.family("lb_backend_weight", "gauge", "The weight in effect (slow start ramps it up to the configured one)")
    text.add(render_list(name, blabels, cols["eff_weight"]))
    name = text.family("lb_backend_ejected", "gauge", "1 while passive checks keep the backend ejected")
    text.add(render_list(name, blabels, cols["ejected"]))
    name = text.family("lb_backend_ejections_total", "counter", "Times passive checks ejected the backend")
    text.add(render_list(name, blabels, cols["ejections"]))
    if any(checked):
        clabels = [lab for lab, c in zip(blabels, checked) if c]
        name = text.family("lb_backend_check_ok", "gauge", "1 if the backend's last health check passed")
        text.add(render_list(name, clabels, [v for v, c in zip(cols["check_ok"], checked) if c]))
        name = text.family("lb_backend_checks_total", "counter", "Active health checks completed, by result")
        text.add(render_list(name, clabels, [ok - bad for ok, bad, c in zip(cols["checks"], cols["checks_failed"],
                                                                              checked) if c], b'result="passed"'))
        text.add(render_list(name, clabels, [v for v, c in zip(cols["checks_failed"], checked) if c],
                             b'result="failed"'))
        name = text.family("lb_backend_check_duration_seconds", "gauge", "How long the last health check took")
        text.add(render_list(name, clabels, [v for v, c in zip(cols["check_us"], checked) if c], micro=True))


def _gateway_rules(text: Text, gen) -> None:
    """Rate limits' and authentications' decisions, carried over reloads as
    lb status shows them."""
    from lb.control import key, limits

    rows = limits.status(gen)
    if rows:
        name = text.family("lb_limit_decisions_total", "counter",
                           "A rate or concurrency limit's decisions (refused_*: answered 429, or closed at "
                           "accept on tcp listeners)")
        for row in rows:
            for decision, count in row["counts"].items():
                text.line(name, _labels(limit=row["name"], decision=decision), count)
    rows = key.status(gen)
    if rows:
        name = text.family("lb_auth_decisions_total", "counter",
                           "An authentication's results (missing, invalid: answered 401)")
        for row in rows:
            for result, count in row["counts"].items():
                text.line(name, _labels(auth=row["name"], type=row["type"], result=result), count)


def _caches(text: Text, gen) -> None:
    """The shared caches: requests by what the cache did, and what it holds.
    The counters live in each cache's region, which reloads keep: they do
    not start over with a generation."""
    caches = getattr(gen, "caches", None) or {}
    if not caches:
        return
    stats = {name: region.stats() for name, region in caches.items()}
    _per_cache(text, stats, "lb_cache_requests_total", "counter",
               "Requests of a cache's listeners and routes by result (hit; miss, stale: forwarded; "
               "bypass: not looked up)", by=("result", ("hit", "miss", "stale", "bypass")))
    _per_cache(text, stats, "lb_cache_stores_total", "counter",
               "Responses a cache stored, and objects it evicted, invalidated (unsafe methods) or purged; "
               "stale objects revalidated (304) or served because the origin failed; requests that "
               "waited for another's fetch (collapsed); background refreshes (stale-while-revalidate) done "
               "(refreshed) or failed (refresh_failed); Range misses' background fetches of the whole "
               "response stored (range_fills) or failed (range_fill_failed)",
               by=("event", ("stored", "not_stored", "store_failed", "evicted", "invalidated", "purged",
                             "revalidated", "stale_served", "collapsed", "refreshed", "refresh_failed",
                             "range_fills", "range_fill_failed")))
    _per_cache(text, stats, "lb_cache_bytes", "gauge", "Bytes a cache holds (keys, heads and bodies)", "bytes")
    _per_cache(text, stats, "lb_cache_capacity_bytes", "gauge", "Bytes of object blocks a cache has (its size bound)",
               "capacity")
    _per_cache(text, stats, "lb_cache_objects", "gauge", "Objects a cache holds", "objects")
    disks = {name: region.disk.stats() for name, region in caches.items() if region.disk is not None}
    if not disks:
        return
    _per_cache(text, disks, "lb_cache_disk_events_total", "counter",
               "A cache's disk tier: hits (answered from it, and promoted to memory), objects demoted "
               "to it from memory, evicted from it, dropped (a bad checksum)",
               by=("event", ("hit", "demoted", "evicted", "dropped")))
    _per_cache(text, disks, "lb_cache_disk_bytes", "gauge", "Bytes a cache's disk tier holds", "bytes")
    _per_cache(text, disks, "lb_cache_disk_objects", "gauge", "Objects a cache's disk tier holds", "objects")


def _per_cache(text: Text, stats: dict, name: str, kind: str, help: str, stat: str = "",
               by: tuple[str, tuple[str, ...]] | None = None) -> None:
    """One family over every cache's stats: the stat `stat` a line per cache,
    or with by = (label, values), a line per cache and value (each value
    names its own stat)."""
    name = text.family(name, kind, help)
    for cache, st in stats.items():
        if by is None:
            text.line(name, _labels(cache=cache), st[stat])
            continue
        label, values = by
        for value in values:
            text.line(name, _labels(cache=cache, **{label: value}), st[value])


def _acl_rules(text: Text, gen) -> None:
    from lb.control.acl import rules_with_counts

    rules = rules_with_counts(gen)
    if not rules:
        return
    name = text.family("lb_rule_decisions_total", "counter",
                       "Allow and deny rules' decisions (a denied request or connection is refused)")
    for r in rules:
        text.line(name, _labels(listener=r["listener"], route=r["route_name"] or "", rule=r["rule"],
                                decision=r["decision"]), r["count"])


def _version() -> str:
    from lb import __version__

    return __version__


# ---- the HTTP server (in the supervisor's loop) -----------------------------------------

MAX_HEAD = 16 * 1024
PEER_TIMEOUT = 10.0


class _Peer:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = bytearray()
        self.out = memoryview(b"")
        self.rest: list[bytes] = []  # the body's pieces after out
        self.deadline = time.monotonic() + PEER_TIMEOUT


class MetricsServer:
    """A small HTTP/1.1 server on the supervisor's selector: one request per
    connection, answered from shared memory. Slow clients cost a buffer,
    never a wait: the supervisor's loop reads and writes only when ready."""

    def __init__(self, bind, pages):
        """pages: path -> callable(headers) -> (status, content type, body)."""
        self.bind = bind
        self.pages = pages
        self.sock: socket.socket | None = None
        self.peers: dict[int, _Peer] = {}

    def open(self) -> None:
        sock = socket.socket(self.bind.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.bind.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.bind.host, self.bind.port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"metrics: cannot listen on {self.bind}: {e.strerror}") from None
        self.sock = sock

    def register(self, selector) -> None:
        selector.register(self.sock, selectors.EVENT_READ, ("metrics", self))

    def close(self, selector=None) -> None:
        for peer in list(self.peers.values()):
            self._drop(peer, selector)
        if self.sock is not None:
            if selector is not None:
                try:
                    selector.unregister(self.sock)
                except (KeyError, ValueError):
                    pass
            self.sock.close()
            self.sock = None

    def fds(self) -> list[int]:
        return [p.sock.fileno() for p in self.peers.values()] + ([self.sock.fileno()] if self.sock else [])

    def on_event(self, selector, kind: str, obj, mask: int) -> None:
        if kind == "metrics":
            self._accept(selector)
        elif mask & selectors.EVENT_WRITE:
            self._write(selector, obj)
        else:
            self._read(selector, obj)

    def tick(self, selector) -> None:
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if now >= peer.deadline:
                self._drop(peer, selector)

    def _accept(self, selector) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("metrics: cannot accept: %s", e.strerror)
                return
            conn.setblocking(False)
            peer = _Peer(conn)
            self.peers[conn.fileno()] = peer
            selector.register(conn, selectors.EVENT_READ, ("metrics-peer", peer))

    def _read(self, selector, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(peer, selector)
            return
        peer.inbuf += data
        end = peer.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(peer.inbuf) > MAX_HEAD:
                self._answer(selector, peer, 431, "text/plain", b"request head too large\n")
            return
        head = bytes(peer.inbuf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._answer(selector, peer, 400, "text/plain", b"bad request\n")
            return
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if method not in ("GET", "HEAD"):
            self._answer(selector, peer, 405, "text/plain", b"GET or HEAD only\n", extra="Allow: GET, HEAD\r\n")
            return
        page = self.pages.get(target.split("?", 1)[0])
        if page is None:
            self._answer(selector, peer, 404, "text/plain", b"not found: try /metrics, /stats or /stats.json\n")
            return
        try:
            status, ctype, body = page(headers)
        except Exception:
            log.exception("metrics: %s failed", target)
            status, ctype, body = 500, "text/plain", b"internal error\n"
        self._answer(selector, peer, status, ctype, body, head_only=method == "HEAD")

    def _answer(self, selector, peer: _Peer, status: int, ctype: str, body: bytes, head_only: bool = False,
                extra: str = "") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error"}.get(status, "")
        parts = [body] if isinstance(body, bytes) else body
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {sum(len(p) for p in parts)}\r\n"
                f"Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n").encode()
        peer.out = memoryview(head)
        peer.rest = [] if head_only else [p for p in parts if p]
        peer.rest.reverse()  # popped from the end
        peer.deadline = time.monotonic() + PEER_TIMEOUT
        selector.modify(peer.sock, selectors.EVENT_WRITE, ("metrics-peer", peer))
        self._write(selector, peer)

    def _write(self, selector, peer: _Peer) -> None:
        while peer.out or peer.rest:
            if not peer.out:
                peer.out = memoryview(peer.rest.pop())
                continue
            try:
                n = peer.sock.send(peer.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(peer, selector)
                return
            peer.out = peer.out[n:]
            peer.deadline = time.monotonic() + PEER_TIMEOUT
        self._drop(peer, selector)

    def _drop(self, peer: _Peer, selector) -> None:
        self.peers.pop(peer.sock.fileno(), None)
        if selector is not None:
            try:
                selector.unregister(peer.sock)
            except (KeyError, ValueError):
                pass
        peer.sock.close()


def wants_openmetrics(headers: dict) -> bool:
    return "application/openmetrics-text" in headers.get("accept", "")


def stats_page() -> bytes:
    """The stats page: one self-contained file beside this module."""
    return (Path(__file__).parent / "stats.html").read_bytes()


def pages(sup) -> dict:
    def metrics(headers):
        om = wants_openmetrics(headers)
        return 200, CONTENT_OPENMETRICS if om else CONTENT_TEXT, render_chunks(sup, om)

    def stats_json(headers):
        return 200, "application/json", json.dumps(stats_document(sup), separators=(",", ":")).encode()

    def stats(headers):
        return 200, "text/html; charset=utf-8", stats_page()

    return {"/metrics": metrics, "/stats": stats, "/stats.json": stats_json}


# ---- history: rates and last-minute percentiles ------------------------------------------
#
# Every HISTORY_STEP seconds the supervisor keeps a few words of every entity
# (requests, 5xx, failures, the response-time buckets). A rate is the
# difference of two samples over their interval, a last-minute percentile
# the difference of the bucket counts over the oldest sample of the minute.
# Samples name entities by name, so a reload in between changes nothing.

HISTORY_STEP = 5.0
HISTORY_LEN = 13  # a minute of steps, both ends kept
MIN_SPAN = 1.0  # seconds between two samples a rate is taken over, at least
FAILURE_TERMS = ("no_backend", "backend_refused", "connect_timeout", "backend_reset", "server_timeout",
                 "bad_response")
PICK = ([OFF["requests"], OFF["responses"] + CLASSES.index("5xx")]
        + [OFF["terms"] + TERMS.index(t) for t in FAILURE_TERMS]
        + [OFF["hist"] + i for i in range(len(fp.METRIC_BOUNDS_SECONDS) + 1)])
P_REQ, P_5XX, P_FAIL, P_BUCKETS = 0, 1, 2, 2 + len(FAILURE_TERMS)
K = len(PICK)


class Sample:
    __slots__ = ("t", "ids", "words")

    def __init__(self, t: float, ids: dict, totals: bytes):
        self.t = t
        self.ids = ids
        self.words = memoryview(fp.metrics_pick(totals, PICK)).cast("Q")

    def get(self, key) -> memoryview | None:
        e = self.ids.get(key)
        return None if e is None else self.words[e * K:(e + 1) * K]


class History:
    def __init__(self):
        self.samples: list[Sample] = []
        self.next_at = 0.0

    def tick(self, sup, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self.next_at:
            return
        self.next_at = now + HISTORY_STEP
        summed, ids = totals(sup)
        self.samples.append(Sample(now, ids, summed))
        del self.samples[:-HISTORY_LEN]

    def now(self, sup) -> Sample:
        summed, ids = totals(sup)
        return Sample(time.monotonic(), ids, summed)


def quantile(q: float, buckets) -> float | None:
    """Prometheus' histogram_quantile over non-cumulative bucket counts: linear
    within the bucket the rank falls in; the last finite bound when it falls
    in +Inf; None without observations."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    bounds = fp.METRIC_BOUNDS_SECONDS
    cum = 0
    for i, n in enumerate(buckets):
        if cum + n >= rank and n:
            if i >= len(bounds):
                return bounds[-1]
            lo = bounds[i - 1] if i else 0.0
            return lo + (bounds[i] - lo) * (rank - cum) / n
        cum += n
    return bounds[-1]


def entity_stats(key, cur: Sample, samples: list[Sample]) -> dict:
    """Totals, the rate over the last step, the last minute's p50/p99 and the
    rate history of one entity."""
    w = cur.get(key)
    if w is None:
        return {}
    # the minute's oldest sample; none a second old yet (a start): since the start
    old = next((s for s in samples if MIN_SPAN <= cur.t - s.t <= 60 + HISTORY_STEP and s.get(key) is not None),
               None)
    base = old.get(key) if old is not None else None
    window = [w[P_BUCKETS + i] - (base[P_BUCKETS + i] if base is not None else 0) for i in range(K - P_BUCKETS)]
    rates = []
    points = [s for s in samples if s.get(key) is not None]
    if not points or cur.t - points[-1].t >= MIN_SPAN:
        points.append(cur)  # (a sample taken a moment ago would make a rate of noise)
    for a, b in zip(points, points[1:]):
        rates.append(round((b.get(key)[P_REQ] - a.get(key)[P_REQ]) / (b.t - a.t), 2))
    p50, p99 = quantile(0.5, window), quantile(0.99, window)
    return {
        "requests": w[P_REQ], "5xx": w[P_5XX], "failed": sum(w[P_FAIL:P_BUCKETS]),
        "rate": rates[-1] if rates else 0.0, "rate_history": rates[-12:],
        "window_seconds": round(cur.t - old.t, 1) if old is not None else None,  # None: since the start
        "window_requests": sum(window),
        "p50_ms": None if p50 is None else round(p50 * 1000, 3),
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
    }


def stats_document(sup) -> dict:
    """What /stats.json, the stats page and `lb stats` show: listeners (and
    their routes), pools and their backends, with state, weight, health,
    active connections, totals, rates and the last minute's percentiles."""
    gen = sup.gen
    config = gen.config
    history = sup.metrics_history
    cur = history.now(sup)
    samples = history.samples
    listeners = []
    for li, (lname, listener) in enumerate(config.listeners.items()):
        routes = [{"name": r.name, "pool": r.pool, **entity_stats(("route", lname, r.name), cur, samples)}
                  for r in listener.routes]
        listeners.append({"name": lname, "mode": listener.mode, "bind": [str(b) for b in listener.bind],
                          "pool": listener.pool, "active": gen.shm.metrics_active(li),
                          **entity_stats(("listener", lname), cur, samples),
                          "routes": routes})
    pools = []
    for pi, (pname, pool) in enumerate(config.pools.items()):
        backends = []
        for bname, idx in gen.backends[pname].items():
            b = gen.shm.backend(pi, idx)
            if not b["in_use"]:
                continue
            s = gen.shm.backend_stats(pi, idx)
            host = f"[{b['host']}]" if ":" in b["host"] else b["host"]
            state = b["admin"] if b["admin"] != "ready" else b["health"]
            backends.append({"name": bname, "address": f"{host}:{b['port']}", "state": state,
                             "admin": b["admin"], "health": b["health"], "weight": b["weight"],
                             "eff_weight": b["eff_weight"], "backup": b["backup"], "active": s["active"],
                             "connect_errors": s["connect_errors"] + s["connect_timeouts"],
                             "check_ms": round(b["last_latency_us"] / 1000, 3) if pool.health.type != "none" else None,
                             **entity_stats(("backend", pname, bname), cur, samples)})
        pools.append({"name": pname, "algorithm": pool.algorithm, "active": gen.shm.pool_active(pi),
                      "up": sum(1 for b in backends if b["state"] == "up"), "backends": backends,
                      **entity_stats(("pool", pname), cur, samples)})
    return {"time": time.time(), "uptime": time.time() - sup.started, "generation": gen.number,
            "step_seconds": HISTORY_STEP, "listeners": listeners, "pools": pools}


def latencies(sup, kind: str = "backend") -> dict[tuple, tuple]:
    """The last minute's (p50_ms, p99_ms) of every entity of a kind, by its
    name without the kind: ("pool", "backend") for backends."""
    cur = sup.metrics_history.now(sup)
    out = {}
    for key in cur.ids:
        if key[0] == kind:
            st = entity_stats(key, cur, sup.metrics_history.samples)
            out[key[1:]] = (st["p50_ms"], st["p99_ms"])
    return out


# ---- top talkers (lb top --by) ---------------------------------------------------------------


def top_document(sup, by: str, n: int = 20) -> dict:
    """The heaviest clients, paths or statuses of the last 30 to 60 seconds,
    merged over the workers of every generation still running."""
    if by not in ("client", "path", "status"):
        raise ValueError(f"by: client, path or status, not {by!r}")
    now_us = int(time.monotonic() * 1e6)
    totals: dict[str, list[int]] = {}
    for gen in [sup.gen, *sup.old]:
        for key, count, err in fp.top_talkers(gen.shm, by, now_us, 10 * n):
            t = totals.setdefault(key, [0, 0])
            t[0] += count
            t[1] += err
    items = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
    epoch = fp.TOP_EPOCH_SECONDS
    return {"by": by, "window_seconds": [epoch, 2 * epoch], "exact": by == "status",
            "items": [{"key": k, "count": c, "error": e} for k, (c, e) in items]}
