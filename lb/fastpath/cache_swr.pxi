# stale-while-revalidate (RFC 5861 3; docs/cache.md): a stored response that
# is stale by less than its stale-while-revalidate answers at once, and one
# background revalidation, on a connection of its own, brings it up to date.
#
#   step_cache -> cache_swr   the stale entry allows it (not must-revalidate,
#                             proxy-revalidate, s-maxage or no-cache; the
#                             request has no no-cache, max-age, min-fresh):
#                             the key's fill claim (collapsed forwarding, the
#                             same slot a miss takes) decides who refreshes it,
#                             across all workers; the client is answered from
#                             the stale entry whatever happens to the refresh.
#   refresh_on_event          connect, send the request (the client's as lb
#                             would forward it, GET, with the entry's validators
#                             in place of any conditional, Connection: close),
#                             read the answer whole (Content-Length, chunked or
#                             until close; at most max_object_size of body).
#   refresh_done              304: the stored head takes its fields (RFC 9111
#                             4.3.4) and the entry is stored again; another
#                             storable answer replaces it; an error, a timeout
#                             or a cut answer leaves the stale entry as it was
#                             (usable while its window lasts) and holds further
#                             refreshes of the key back for CACHE_PASS_MS.
#
# Nothing of the client's exchange waits on the refresh, and once sent it
# holds no pointer into it: a client that goes away costs the refresh
# nothing (a Range miss's fetch not yet sent is its exchange's, cx.rf, and
# goes with it). At most
# CACHE_REFRESH_MAX refreshes are in flight per worker; a stale hit over that
# is answered without one (a later one starts it).
#
# A Range miss (range_fill) uses the same machinery with no entry behind it
# (lb_cache_refresh.whole): the client's range goes on to the origin as it
# came, and the whole response is fetched beside it, without validators, so
# that the key's next ranges are hits. It is sent only once the origin's 206
# to the range has come (RF_PENDING until then, range_fill_go): a 200 is the
# whole already, and the 206's Content-Range gives the object's size, so an
# object over max_object_size is never asked for. Else its head is enough
# to give up on one; such a one, one that may not be stored, or a failed
# fetch holds the key's whole fetches back for CACHE_PASS_BIG_MS.
# A stale entry asked for by a range is revalidated in the background the
# same way (a refresh, with the entry behind it).

cdef enum:
    RF_CONNECTING = 1
    RF_SENDING = 2
    RF_READING = 3
    RF_CLOSED = 4
    RF_PENDING = 5                   # made ready, not connected: a Range miss's, until the origin's answer (range_fill_go)
    CACHE_REFRESH_MAX = 32           # background revalidations in flight, per worker
    CACHE_REFRESH_MS = 30000         # one that takes longer fails (the claim it holds lasts as long)
    CACHE_REFRESH_READ = 16384


cdef int32_t swr_directive(const uint8_t *b, http_req *r) noexcept nogil:
    """stale-while-revalidate=N of a response, from the field cc_parse reads
    (CDN-Cache-Control when there is one, RFC 9213); 0: none."""
    cdef const char *field = b"cdn-cache-control" if field_find(b, r, b"cdn-cache-control") >= 0 \
        else b"cache-control"
    cdef int64_t x = cc_seconds(b, r, field, b"stale-while-revalidate")
    return <int32_t>(x if 0 < x < 2147483647 else (0 if x <= 0 else 2147483647))


cdef int64_t cc_seconds(const uint8_t *b, http_req *r, const char *field, const char *directive) noexcept nogil:
    """directive=N (delta-seconds) in the fields named field (lower case);
    the last one counts. -1: none."""
    cdef uint32_t i, pos, off, len, nl, k
    cdef const uint8_t *v
    cdef const uint8_t *d
    cdef int64_t x = 0, best = -1
    for i in range(r.n_fields):
        if not name_is(b, &r.fields[i], field):
            continue
        v = b + r.fields[i].value_off
        pos = 0
        while http_list_next(v, r.fields[i].value_len, &pos, &off, &len):
            d = v + off
            nl = 0
            while nl < len and d[nl] != 61:
                nl += 1
            k = nl + 1 if nl < len else len
            if ieq(d, nl, directive) and delta_seconds(d + k, len - k, &x):
                best = x
    return best


cdef lb_str _RF_SET_NAME[3]
cdef lb_str _RF_SET_LOWER[3]
cdef lb_str _RF_REMOVE[8]
_RF_SET_NAME[0].p = b"If-None-Match"
_RF_SET_NAME[0].n = 13
_RF_SET_NAME[1].p = b"If-Modified-Since"
_RF_SET_NAME[1].n = 17
_RF_SET_NAME[2].p = b"Connection"
_RF_SET_NAME[2].n = 10
_RF_SET_LOWER[0].p = b"if-none-match"
_RF_SET_LOWER[0].n = 13
_RF_SET_LOWER[1].p = b"if-modified-since"
_RF_SET_LOWER[1].n = 17
_RF_SET_LOWER[2].p = b"connection"
_RF_SET_LOWER[2].n = 10
# the client's own preconditions and directives are not the refresh's: its
# answer is for the cache (a client's validator could draw a 304 that the
# stored entry cannot complete; a Range, a 206 that is not stored)
_RF_REMOVE[0].p = b"if-none-match"
_RF_REMOVE[0].n = 13
_RF_REMOVE[1].p = b"if-modified-since"
_RF_REMOVE[1].n = 17
_RF_REMOVE[2].p = b"if-match"
_RF_REMOVE[2].n = 8
_RF_REMOVE[3].p = b"if-unmodified-since"
_RF_REMOVE[3].n = 19
_RF_REMOVE[4].p = b"if-range"
_RF_REMOVE[4].n = 8
_RF_REMOVE[5].p = b"range"
_RF_REMOVE[5].n = 5
_RF_REMOVE[6].p = b"cache-control"
_RF_REMOVE[6].n = 13
_RF_REMOVE[7].p = b"pragma"
_RF_REMOVE[7].n = 6


cdef uint32_t refresh_request(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r, lb_cache_rt *rt,
                              uint32_t idx, uint32_t seq, lb_pool_rt *p, char *out) noexcept nogil:
    """The refresh's request, into out (HBUF_SIZE bytes): the request as lb
    forwards it (rewrite_request, with the header rules of the listener and
    the route), as a GET, with the entry's validators (none when idx is
    CACHE_NONE: a Range miss's fill) and Connection: close. 0: it cannot be
    made."""
    cdef shm_cache_entry *e
    cdef shm_cache_entry meta
    cdef char *head = w.http.cache.scratch
    cdef http_req *rs = w.http.resp
    cdef int32_t etag, lm
    cdef lb_hrules mine
    cdef lb_str value[3]
    cdef lb_str set_name[3]
    cdef lb_str set_lower[3]
    cdef lb_hbuf saved
    cdef uint8_t saved_n = h.n_rq_rules
    cdef uint32_t k = 0, n
    cdef bint ok
    etag = lm = -1
    if idx != CACHE_NONE:
        e = ce_at(rt, idx)
        memcpy(&meta, e, sizeof(shm_cache_entry))
        if not ce_stable(e, seq) or meta.head_len + 2 > CACHE_HEAD_MAX:
            return 0
        if not ce_copy(rt, e, seq, <uint64_t>meta.key_len + meta.vary_len + meta.tags_len, head, meta.head_len):
            return 0
        memcpy(head + meta.head_len, b"\r\n", 2)
        if http_parse_response_c(<const uint8_t *>head, meta.head_len + 2, rs, CACHE_HEAD_MAX + 4) != 0:
            return 0
        etag = field_find(<const uint8_t *>head, rs, b"etag")
        lm = field_find(<const uint8_t *>head, rs, b"last-modified")
    if etag >= 0:
        set_name[k] = _RF_SET_NAME[0]
        set_lower[k] = _RF_SET_LOWER[0]
        value[k].p = head + rs.fields[etag].value_off
        value[k].n = rs.fields[etag].value_len
        k += 1
    if lm >= 0:
        set_name[k] = _RF_SET_NAME[1]
        set_lower[k] = _RF_SET_LOWER[1]
        value[k].p = head + rs.fields[lm].value_off
        value[k].n = rs.fields[lm].value_len
        k += 1
    set_name[k] = _RF_SET_NAME[2]
    set_lower[k] = _RF_SET_LOWER[2]
    value[k].p = b"close"
    value[k].n = 5
    k += 1
    memset(&mine, 0, sizeof(lb_hrules))
    mine.n_set = k
    mine.set_name = set_name
    mine.set_lower = set_lower
    mine.set_value = value
    mine.n_remove = 8
    mine.remove = _RF_REMOVE
    if h.n_rq_rules + 4 > MAX_RULESETS:
        return 0
    # the request_headers step runs after this one: its sets are taken here,
    # and this refresh's own last (later sets win); a tier's CDN-Loop as
    # h_request_go adds it (tier_request)
    rulesets_push(h.rq_rules, &h.n_rq_rules, &h.hl.req)
    if h.route >= 0:
        rulesets_push(h.rq_rules, &h.n_rq_rules, &h.hl.routes[h.route].req)
    if p.http.hk_kind == HKH_CACHE_KEY:
        rulesets_push(h.rq_rules, &h.n_rq_rules, &p.http.tier_rules)
    rulesets_push(h.rq_rules, &h.n_rq_rules, &mine)
    saved = h.upb
    h.upb.p = out
    h.upb.off = 0
    h.upb.len = 0
    ok = rewrite_request(h, b, r, 11, &p.http.sticky, False)
    n = h.upb.len
    h.upb = saved
    h.n_rq_rules = saved_n
    if not ok or n < 5:
        return 0
    if h.method == MT_HEAD:
        memmove(out + 3, out + 4, n - 4)      # "HEAD /x" -> "GET /x": the refresh wants the body
        memcpy(out, b"GET", 3)
        n -= 1
    return n


cdef inline bint refresh_pool_ok(lb_worker *w, lb_hconn *h) noexcept nogil:
    """A refresh goes on a plain HTTP/1.1 connection of its own: pools that
    need more (TLS, PROXY headers, HTTP/2) revalidate in the foreground, as
    without the directive."""
    cdef lb_pool_rt *p
    if h.c.pool < 0:
        return False
    p = &w.pools[h.c.pool]
    return p.tls == NULL and p.http != NULL and not p.http.h2 and not p.http.send_proxy and not p.send_proxy


cdef lb_cache_refresh *refresh_start(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r, lb_cache_rt *rt,
                                     uint32_t idx, uint32_t seq, const char *key, uint32_t key_len,
                                     uint32_t host_len, uint64_t hash, bint auth, bint pending) noexcept nogil:
    """Start the background revalidation of a stale entry whose key's claim
    this worker holds (idx CACHE_NONE: the fetch of a Range miss's whole
    response, range_fill_start). pending: made ready (the request, the
    backend), not sent (refresh_connect does, range_fill_go). NULL: not
    started (the caller gives the claim back)."""
    cdef lb_cache_wk *cw = w.http.cache
    cdef lb_pool_rt *p
    cdef lb_cache_refresh *f
    cdef lb_cache_x *cx
    cdef int32_t slot
    cdef int fd
    p = &w.pools[h.c.pool]
    f = <lb_cache_refresh *>calloc(1, sizeof(lb_cache_refresh))
    if f == NULL:
        return NULL
    f.req = <char *>malloc(HBUF_SIZE)
    cx = cx_alloc(w)
    if f.req == NULL or cx == NULL:
        free(f.req)
        free(f)
        if cx != NULL:
            cx_free(w, cx)
        return NULL
    f.cx = cx
    cx.key = <char *>malloc(key_len)
    cx.req = <char *>malloc(r.head_len)
    f.req_len = refresh_request(w, h, b, r, rt, idx, seq, p, f.req)
    if cx.key == NULL or cx.req == NULL or f.req_len == 0:
        cx_free(w, cx)
        free(f.req)
        free(f)
        return NULL
    memcpy(cx.key, key, key_len)
    memcpy(cx.req, b, r.head_len)
    cx.key_len = key_len
    cx.host_len = host_len
    cx.req_len = r.head_len
    cx.hash = hash
    cx.auth = auth
    cx.cache = <uint32_t>(rt - cw.caches)
    cx.stale_entry = idx
    cx.stale_seq = seq
    f.kind = KIND_CACHE_REFRESH
    f.whole = idx == CACHE_NONE
    f.hl = h.hl
    f.fd = -1
    # the backend the request itself would go to: h.key is set later, as the
    # request leaves (h_request_go), so it is worked out here the same way
    if p.http.hk_kind == HKH_CACHE_KEY:
        slot = -1 if tier_loop(p.http, b, r) else p.ops.pick(w, p, &h.c, tier_key_hash(w, h, b, r))
    else:
        slot = p.ops.pick(w, p, &h.c, http_key_hash(p, &h.c, b, r))
    fd = -1
    if slot >= 0 and not pending:
        fd = backend_connect(w, slot)
    if slot < 0 or (fd < 0 and not pending):
        cx_free(w, cx)
        free(f.req)
        free(f)
        return NULL
    cx.claimed = 1                   # from here on, refresh_close gives the claim back
    f.slot = slot
    f.fd = -1
    f.state = RF_PENDING
    cw.refreshing += 1
    tl_append(&cw.refresh_timer, &f.tn, w.now_ms, f)
    if not pending:
        refresh_connect(w, f, fd)
    return f


cdef void refresh_connect(lb_worker *w, lb_cache_refresh *f, int fd) noexcept nogil:
    """A made-ready fetch on its way: fd, a connection to f.slot being made
    (backend_connect; -1: it failed, and so does the fetch)."""
    cdef epoll_event ev
    if fd < 0:
        refresh_close(w, f, True)
        return
    f.fd = fd
    f.state = RF_CONNECTING
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = <uint64_t><size_t>f | TAG_SIGNAL
    w.fds += 1
    lb_store_i64(&w.stats.fds, w.fds)
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
        refresh_close(w, f, True)


cdef void refresh_close(lb_worker *w, lb_cache_refresh *f, bint failed) noexcept nogil:
    cdef lb_cache_wk *cw = w.http.cache
    cdef lb_cache_rt *rt
    if f.state == RF_CLOSED:
        return
    rt = &cw.caches[f.cx.cache]
    if failed:
        cache_count(&rt.st.range_fill_failed if f.whole else &rt.st.refresh_failed, 1)
        # the stale entry stays as it was; the next stale hits do not try again
        # at once (an origin in trouble gets one refresh per CACHE_PASS_MS). A
        # whole fetch is not tried again for longer: its key's ranges keep
        # coming, and an object too large to store, or too slow to come
        # whole in CACHE_REFRESH_MS, would be fetched for nothing each time.
        cache_unclaim_for(rt, f.cx, CACHE_PASS_BIG_MS if f.whole else CACHE_PASS_MS)
    if f.owner != NULL:
        f.owner.rf = NULL
        f.owner = NULL
    if f.fd >= 0:
        close(f.fd)
        w.fds -= 1
        lb_store_i64(&w.stats.fds, w.fds)
    tl_remove(&f.tn)
    cx_free(w, f.cx)                 # (gives back a claim still held)
    f.cx = NULL
    free(f.req)
    f.req = NULL
    free(f.buf)
    f.buf = NULL
    cw.refreshing -= 1
    f.state = RF_CLOSED
    f.next = cw.refresh_closed       # freed once this turn's events are done
    cw.refresh_closed = f


cdef int64_t refresh_body_end(lb_cache_refresh *f, http_req *rs, bint eof) noexcept nogil:
    """Where the answer's body ends in f.buf (head included), once it came
    whole; -1: not yet (or never: cut, malformed)."""
    cdef uint64_t hl = rs.head_len
    cdef int64_t end
    if rs.status == 304 or rs.status == 204 or (100 <= rs.status < 200):
        return <int64_t>hl
    if rs.chunked:
        end = chunked_whole_end(<const uint8_t *>f.buf + hl, f.len - hl)
        return end + <int64_t>hl if end >= 0 else -1
    if rs.content_length >= 0:
        if f.len - hl >= <uint64_t>rs.content_length:
            return <int64_t>(hl + <uint64_t>rs.content_length)
        return -1
    return <int64_t>f.len if eof else -1      # until close


cdef int refresh_head(lb_worker *w, lb_cache_refresh *f, http_req *rs, lb_cache_rt *rt) noexcept nogil:
    """The answer's head, as soon as it is whole: interim 1xx heads are
    dropped (RFC 9110 15.2: the final answer follows), and a Content-Length
    over max_object_size ends the fetch there, its body unread. 1: the final
    head is here (f.head_seen); 0: not yet; -1: the fetch was closed."""
    cdef int st
    while True:
        st = http_parse_response_c(<const uint8_t *>f.buf, f.len, rs, CACHE_HEAD_MAX + 4) if f.len else -1
        if st == -1:
            return 0
        if st != 0:
            refresh_close(w, f, True)             # a malformed head
            return -1
        if rs.status < 100 or rs.status >= 200 or rs.status == 101:
            break
        memmove(f.buf, f.buf + rs.head_len, f.len - rs.head_len)
        f.len -= rs.head_len
    f.head_seen = 1
    if rs.content_length > <int64_t>rt.hd.max_object and rs.status != 304:
        f.too_big = 1
        refresh_close(w, f, True)
        return -1
    return 1


cdef void refresh_on_event(lb_worker *w, lb_cache_refresh *f, uint32_t events) noexcept nogil:
    cdef lb_cache_wk *cw = w.http.cache
    cdef lb_cache_rt *rt
    cdef ssize_t k
    cdef uint64_t cap, limit, room
    cdef char *nb
    cdef http_req *rs = cw.refresh_resp
    cdef int st
    cdef int64_t end
    cdef bint eof = False
    if f.state == RF_CLOSED:
        return
    if events & EPOLLERR:
        refresh_close(w, f, True)
        return
    if f.state != RF_READING and (events & EPOLLOUT):
        f.state = RF_SENDING
        while f.sent < f.req_len:
            k = send(f.fd, f.req + f.sent, f.req_len - f.sent, MSG_NOSIGNAL | MSG_DONTWAIT)
            if k < 0:
                if errno == EAGAIN:
                    break
                refresh_close(w, f, True)
                return
            f.sent += <uint32_t>k
        if f.sent == f.req_len:
            free(f.req)
            f.req = NULL
            f.state = RF_READING
    if not (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)):
        return
    rt = &cw.caches[f.cx.cache]
    limit = CACHE_HEAD_MAX + rt.hd.max_object + 65536      # a head, a body, its chunk framing
    while True:
        if f.len == f.cap:
            if f.cap >= limit:
                f.too_big = 1
                refresh_close(w, f, True)         # larger than max_object_size: not for the cache
                return
            cap = f.cap * 2 if f.cap else CACHE_REFRESH_READ
            if cap > limit:
                cap = limit
            nb = <char *>realloc(f.buf, cap)
            if nb == NULL:
                refresh_close(w, f, True)
                return
            f.buf = nb
            f.cap = cap
        room = f.cap - f.len
        if not f.head_seen and room > CACHE_REFRESH_READ:
            room = CACHE_REFRESH_READ    # the head alone may end the fetch, before its body is read
        k = recv(f.fd, f.buf + f.len, room, MSG_DONTWAIT)
        if k > 0:
            f.len += <uint64_t>k
            if not f.head_seen and refresh_head(w, f, rs, rt) < 0:
                return
            continue
        if k < 0 and errno == EAGAIN:
            break
        if k < 0:
            refresh_close(w, f, True)             # a reset: whatever came may be cut short
            return
        eof = True                   # the answer ended (Connection: close)
        break
    if f.state != RF_READING and not eof:
        return
    if not f.head_seen:
        st = refresh_head(w, f, rs, rt)
        if st == 0 and eof:
            refresh_close(w, f, True)             # no head
        if st <= 0:
            return
    # (rs is the worker's, shared by its refreshes: the head is read again)
    if http_parse_response_c(<const uint8_t *>f.buf, f.len, rs, CACHE_HEAD_MAX + 4) != 0:
        refresh_close(w, f, True)
        return
    end = refresh_body_end(f, rs, eof)
    if end < 0:
        if eof:
            refresh_close(w, f, True)             # cut short: never stored
        return
    refresh_done(w, f, rs, <uint64_t>end)


cdef void refresh_done(lb_worker *w, lb_cache_refresh *f, http_req *rs, uint64_t end) noexcept nogil:
    """The answer came whole: store what it says, as a foreground
    revalidation or miss would (cache_fill_start's rules)."""
    cdef lb_cache_wk *cw = w.http.cache
    cdef lb_cache_rt *rt = &cw.caches[f.cx.cache]
    cdef lb_cache_x *cx = f.cx
    cdef lb_hconn *h = cw.refresh_h
    cdef const uint8_t *b = <const uint8_t *>f.buf
    cdef uint64_t body_len
    cdef uint32_t removed
    cdef int64_t now_ms
    cdef bint ok = False
    h.cx = cx
    h.hl = f.hl
    clock_now_ms(&now_ms)
    if rs.status == 304:
        ok = not f.whole and refresh_merge(w, f, rs, now_ms)   # (a fill sent no validators)
    elif rs.status >= 500 or rs.status < 200:
        ok = False
    else:
        body_len = end - rs.head_len
        if rs.chunked:
            body_len = chunked_decode(f.buf + rs.head_len, end - rs.head_len)
            rs.chunked = 0           # stored with the Content-Length it turned out to have
        rs.content_length = <int64_t>body_len
        if cache_fill_start(w, h, rt, rs, b, now_ms) and (
                field_find(b, rs, b"content-length") >= 0 or fill_add_length(cx)):
            memcpy(cx.obj + cx.obj_len, f.buf + rs.head_len, body_len)
            cx.obj_len += body_len
            cache_fill_done(w, h)
            ok = True
        else:
            cache_count(&rt.st.not_stored, 1)
            if f.whole:
                # not fetched whole again for a while; a piece stored from
                # the origin's 206 stays (it said that answer may be stored)
                cache_unclaim_for(rt, cx, CACHE_PASS_BIG_MS)
                h.cx = NULL
                refresh_close(w, f, False)
                return
            # the origin's current answer may not be stored: the stale one is
            # not its to stand for any longer (the next requests go to it)
            if cache_lock(rt):
                removed = cache_remove_hash(rt, cx.hash)
                cache_unlock(rt)
                cache_count(&rt.st.invalidated, removed)
            cache_unclaim(rt, cx, True)
            h.cx = NULL
            refresh_close(w, f, False)
            return
    h.cx = NULL
    if ok:
        cache_count(&rt.st.range_fills if f.whole else &rt.st.refreshed, 1)
    refresh_close(w, f, not ok)


cdef bint refresh_merge(lb_worker *w, lb_cache_refresh *f, http_req *r, int64_t now_ms) noexcept nogil:
    """A 304 to the refresh: the stale entry's head takes the 304's fields
    (RFC 9111 4.3.4) and is stored again with the body it had."""
    cdef lb_cache_wk *cw = w.http.cache
    cdef lb_cache_x *cx = f.cx
    cdef lb_cache_rt *rt = &cw.caches[cx.cache]
    cdef shm_cache_entry *e = ce_at(rt, cx.stale_entry)
    cdef shm_cache_entry meta
    cdef const uint8_t *b = <const uint8_t *>f.buf
    cdef char *old = cw.scratch
    cdef char *m
    cdef char *body
    cdef http_req *os = cw.merged
    cdef uint32_t cap, n = 0, i, j, k
    cdef uint32_t offs[MAX_CONN_TOKENS]
    cdef uint32_t lens[MAX_CONN_TOKENS]
    cdef http_field *fd
    cdef const uint8_t *name
    cdef bint replaced, ok = False
    cdef uint64_t body_off
    memcpy(&meta, e, sizeof(shm_cache_entry))
    if not ce_stable(e, cx.stale_seq) or meta.state != CE_LIVE or meta.head_len + 2 > CACHE_HEAD_MAX:
        return False                 # replaced or gone meanwhile: nothing to refresh
    body_off = <uint64_t>meta.key_len + meta.vary_len + meta.tags_len + meta.head_len
    if not ce_copy(rt, e, cx.stale_seq, body_off - meta.head_len, old, meta.head_len):
        return False
    memcpy(old + meta.head_len, b"\r\n", 2)
    if http_parse_response_c(<const uint8_t *>old, meta.head_len + 2, os, CACHE_HEAD_MAX + 4) != 0:
        return False
    body = <char *>malloc(meta.body_len + 1)
    if body == NULL:
        return False
    if not ce_copy(rt, e, cx.stale_seq, body_off, body, meta.body_len):
        free(body)
        return False
    cap = meta.head_len + r.head_len + 32
    m = <char *>malloc(cap)
    if m == NULL:
        free(body)
        return False
    k = conn_tokens(b, r, offs, lens)
    merged_put(m, &n, cap, <const uint8_t *>old, os.reason_off + os.reason_len)
    merged_put(m, &n, cap, b"\r\n", 2)
    for i in range(os.n_fields):
        fd = &os.fields[i]
        name = <const uint8_t *>old + fd.name_off
        replaced = False
        if not is_framing(name, fd.name_len):
            for j in range(r.n_fields):
                if r.fields[j].name_len == fd.name_len and ieq_bytes(b + r.fields[j].name_off, name, fd.name_len):
                    replaced = True
                    break
        if not replaced:
            merged_put(m, &n, cap, name, fd.value_off + fd.value_len - fd.name_off)
            merged_put(m, &n, cap, b"\r\n", 2)
    for j in range(r.n_fields):
        fd = &r.fields[j]
        name = b + fd.name_off
        if hop_by_hop(name, fd.name_len) or is_framing(name, fd.name_len) or ieq(name, fd.name_len, b"age") \
                or ieq(name, fd.name_len, b"cache-status") or (k and conn_listed(b, name, fd.name_len, k, offs, lens)):
            continue
        merged_put(m, &n, cap, name, fd.value_off + fd.value_len - fd.name_off)
        merged_put(m, &n, cap, b"\r\n", 2)
    merged_put(m, &n, cap, b"\r\n", 2)
    if http_parse_response_c(<const uint8_t *>m, n, os, CACHE_HEAD_MAX + 4) == 0:
        os.content_length = <int64_t>meta.body_len
        os.chunked = 0
        if cache_fill_start(w, cw.refresh_h, rt, os, <const uint8_t *>m, now_ms):
            memcpy(cx.obj + cx.obj_len, body, meta.body_len)
            cx.obj_len += meta.body_len
            cache_fill_done(w, cw.refresh_h)
            cache_count(&rt.st.revalidated, 1)
            ok = True
    free(m)
    free(body)
    return ok


cdef void refresh_timers_sweep(lb_worker *w) noexcept nogil:
    cdef lb_cache_wk *cw = w.http.cache
    cdef lb_tnode *n
    cdef lb_cache_refresh *f
    cdef lb_cache_refresh *nx
    while True:
        n = tl_expired(&cw.refresh_timer, w.now_ms)
        if n == NULL:
            break
        f = <lb_cache_refresh *>n.owner
        # a fetch still waiting for its range's answer has not failed: the
        # origin is slow to answer the range, the exchange's own timeouts see to that
        refresh_close(w, f, f.state != RF_PENDING)
    # those closed in this turn: its events are done, none can name them now
    f = cw.refresh_closed
    cw.refresh_closed = NULL
    while f != NULL:
        nx = f.next
        free(f)
        f = nx


cdef int cache_swr(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r, lb_cache_rt *rt, uint32_t idx,
                   uint32_t seq, const char *key, uint32_t key_len, uint32_t host_len, uint64_t hash, bint auth,
                   int64_t now_ms, int64_t req_max_age, int64_t min_fresh) noexcept nogil:
    """step_cache, a stale entry: when its stale-while-revalidate allows,
    answer with it (Cache-Status: hit, with a negative ttl: RFC 9211 2.1)
    and start its refresh unless one is under way. -1: it does not allow
    (the request goes on as a stale one does)."""
    cdef lb_cache_wk *cw = w.http.cache
    cdef shm_cache_entry *e = ce_at(rt, idx)
    cdef shm_cache_entry meta
    cdef int64_t age
    cdef int claim, st
    memcpy(&meta, e, sizeof(shm_cache_entry))
    if not ce_stable(e, seq) or meta.state != CE_LIVE or meta.stale_while_revalidate <= 0 \
            or (meta.flags & (CEF_MUST_REVALIDATE | CEF_NO_CACHE)) or req_max_age >= 0 or min_fresh >= 0 \
            or not refresh_pool_ok(w, h):
        return -1
    age = meta.age0 + (now_ms - meta.resp_ms) // 1000
    if age >= meta.fresh + meta.stale_while_revalidate:
        return -1
    meta.seq = seq
    claim = cache_claim(rt, hash, now_ms)
    if claim == CLAIM_MINE:
        # (the refresh's request is made from this one, before it is answered)
        if cw.refreshing >= CACHE_REFRESH_MAX:
            _unclaim_hash(rt, hash, False)        # a later stale hit starts it
        elif refresh_start(w, h, b, r, rt, idx, seq, key, key_len, host_len, hash, auth, False) == NULL:
            cache_count(&rt.st.refresh_failed, 1)
            _unclaim_hash(rt, hash, True)
    st = cache_hit(w, h, b, r, rt, &meta, idx, now_ms)
    if st != -1 and h.cx != NULL:
        h.cx.cache = <uint32_t>(rt - cw.caches)
    elif st == -1 and h.cx != NULL:
        cx_free(w, h.cx)
        h.cx = NULL
    return st


cdef lb_cache_refresh *range_fill_start(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r,
                                        lb_cache_rt *rt, const char *key, uint32_t key_len, uint64_t hash,
                                        int64_t now_ms, uint32_t idx, uint32_t seq) noexcept nogil:
    """step_cache, a Range miss (range_fill): the request goes on as it
    came, and the whole response is fetched once in the background, on the
    refresh's connection of its own, so that the key's next ranges are hits.
    One fetch per key across the workers (its fill claim); none while another
    fetch of the key is under way or its pass mark holds (not storable, or
    larger than max_object_size). idx, seq: a stale entry of the key,
    revalidated so instead (a 304 freshens it, a new 200 replaces it):
    otherwise an object that changed, asked for only by ranges, would never
    be stored again. The fetch is made ready here, while the request is at
    hand, and sent once the origin has answered the range (range_fill_go):
    its 206 says how large the whole is. Returns it (the caller's exchange
    owns it), or NULL."""
    cdef lb_cache_refresh *f
    if not refresh_pool_ok(w, h) or w.http.cache.refreshing >= CACHE_REFRESH_MAX:
        return NULL
    if cache_claim(rt, hash, now_ms) != CLAIM_MINE:
        return NULL
    f = refresh_start(w, h, b, r, rt, idx, seq, key, key_len, 0, hash, False, True)
    if f == NULL:
        cache_count(&rt.st.range_fill_failed if idx == CACHE_NONE else &rt.st.refresh_failed, 1)
        _unclaim_hash(rt, hash, True)
    return f


cdef void range_fill_go(lb_worker *w, lb_cache_refresh *f, http_req *r, const uint8_t *b) noexcept nogil:
    """The origin's answer to the range whose miss made f ready. A 206 of an
    object that may fit sends f. Anything else drops it: a 200 is the whole
    (an origin that ignores Range; the exchange stores it itself), a 304
    freshened the stale entry, an error or a 416 has nothing to fill; and an
    object larger than max_object_size is never fetched whole (its key's
    ranges go on to the origin, and the next ones start nothing for a while)."""
    cdef lb_cache_rt *rt = &w.http.cache.caches[f.cx.cache]
    cdef uint64_t first, last, total
    cdef int64_t now_ms
    f.owner.rf = NULL
    f.owner = NULL
    if r.status != 206:
        refresh_close(w, f, False)
        return
    if piece_of(b, r, &first, &last, &total) and total > rt.hd.max_object:
        cache_unclaim_for(rt, f.cx, CACHE_PASS_BIG_MS)
        refresh_close(w, f, False)
        return
    clock_now_ms(&now_ms)
    if not cache_claim_renew(rt, f.cx, now_ms):
        refresh_close(w, f, False)   # the origin took as long as a claim lasts: another may be fetching it
        return
    tl_remove(&f.tn)                 # (its time runs from now, as the claim's does)
    tl_append(&w.http.cache.refresh_timer, &f.tn, w.now_ms, f)
    refresh_connect(w, f, backend_connect(w, f.slot))


cdef void _unclaim_hash(lb_cache_rt *rt, uint64_t hash, bint pass_) noexcept nogil:
    cdef lb_cache_x tmp
    tmp.claimed = 1
    tmp.hash = hash
    cache_unclaim(rt, &tmp, pass_)


cdef bint fill_add_length(lb_cache_x *cx) noexcept nogil:
    """A fill whose body came without a Content-Length (chunked, until
    close): its stored head gets one, with the length the body has
    (meta.body_len), after the head's other fields; the body bytes already
    collected move up."""
    cdef char line[48]
    cdef uint32_t n = 16
    cdef char *o
    memcpy(line, b"Content-Length: ", 16)
    n += fmt_u64(line + n, cx.meta.body_len)
    memcpy(line + n, b"\r\n", 2)
    n += 2
    o = <char *>realloc(cx.obj, cx.obj_cap + n + 1)
    if o == NULL:
        return False
    memmove(o + cx.prefix_len + n, o + cx.prefix_len, cx.obj_len - cx.prefix_len)
    memcpy(o + cx.prefix_len, line, n)
    cx.obj = o
    cx.prefix_len += n
    cx.obj_len += n
    cx.obj_cap += n
    cx.meta.head_len += n
    return True


# ---- bodies without a Content-Length stored ---------------------------------------------------------
# A storable chunked or until-close response is collected as it streams to
# the client (chunked: its framing and all; the client gets the bytes as they
# came), in a buffer that grows up to max_object_size (plus room for chunk
# framing); once whole (the last chunk; the origin's close, not a reset,
# RFC 9112 6.3) it is decoded in place and stored with a Content-Length. A
# body that outgrows the buffer is let go (the client's stream goes on); a
# chunked one the origin cut short never reaches its end, and is never stored.

cdef bint fill_growing_start(lb_cache_x *cx, lb_cache_rt *rt, bint chunked) noexcept nogil:
    cdef uint64_t first = cx.prefix_len + CACHE_REFRESH_READ
    cdef char *o = <char *>realloc(cx.obj, first + 1)
    if o == NULL:
        return False
    cx.obj = o
    cx.obj_cap = first
    cx.chunked_fill = 1 if chunked else 2
    cx.fill_max = cx.prefix_len + rt.hd.max_object
    if chunked:
        # the framing: a size line and a CRLF per chunk; chunks of 512 bytes or
        # more fit (smaller ones, a body this large is not stored)
        cx.fill_max += rt.hd.max_object // 64 + 4096
    cx.meta.body_len = 0
    return True


cdef bint fill_grow(lb_cache_x *cx, uint32_t n) noexcept nogil:
    """cache_fill_put: room for n more bytes of a chunked fill. False: past
    fill_max (its buffer is let go at once)."""
    cdef uint64_t cap = cx.obj_cap
    cdef char *o
    while cap < cx.obj_len + n:
        cap *= 2
    if cap > cx.fill_max:
        cap = cx.fill_max
    if cap < cx.obj_len + n or cx.obj_len + n > cx.fill_max:
        free(cx.obj)
        cx.obj = NULL
        return False
    o = <char *>realloc(cx.obj, cap + 1)
    if o == NULL:
        free(cx.obj)
        cx.obj = NULL
        return False
    cx.obj = o
    cx.obj_cap = cap
    return True


cdef bint fill_dechunk(lb_cache_x *cx, lb_cache_rt *rt) noexcept nogil:
    """cache_fill_done, a chunked or until-close fill: the body decoded in
    place and given its Content-Length. False: not stored (malformed, or
    over max_object_size)."""
    cdef char *p = cx.obj + cx.prefix_len
    cdef uint64_t n = cx.obj_len - cx.prefix_len, body = n
    if cx.chunked_fill == 1:
        if chunked_whole_end(<const uint8_t *>p, n) != <int64_t>n:
            return False
        body = chunked_decode(p, n)
    if body > rt.hd.max_object:
        return False
    cx.chunked_fill = 0
    cx.obj_len = cx.prefix_len + body
    cx.obj_cap = cx.obj_len
    cx.meta.body_len = body
    return fill_add_length(cx)


# ---- chunked bodies, whole in memory ------------------------------------------------------------

cdef int64_t chunked_whole_end(const uint8_t *p, uint64_t n) noexcept nogil:
    """Where a chunked body whole in p[:n] ends (after its last chunk and
    trailer section); -1: not there yet, or malformed."""
    cdef uint64_t i = 0, size
    cdef uint32_t digits
    cdef uint8_t c
    while True:
        size = 0
        digits = 0
        while i < n:
            c = p[i]
            if 48 <= c <= 57:
                size = size * 16 + (c - 48)
            elif 97 <= (c | 32) <= 102:
                size = size * 16 + ((c | 32) - 87)
            else:
                break
            digits += 1
            if digits > 15:
                return -1
            i += 1
        if digits == 0:
            return -1
        while i < n and p[i] != 10:          # extensions: ignored (RFC 9112 7.1.1)
            i += 1
        if i >= n:
            return -1
        i += 1
        if size == 0:
            break
        if i + size + 2 > n:
            return -1
        if p[i + size] != 13 or p[i + size + 1] != 10:
            return -1
        i += size + 2
    # trailer section: lines up to an empty one
    while True:
        if i + 1 < n and p[i] == 13 and p[i + 1] == 10:
            return <int64_t>(i + 2)
        if i < n and p[i] == 10:
            return <int64_t>(i + 1)
        while i < n and p[i] != 10:
            i += 1
        if i >= n:
            return -1
        i += 1


cdef uint64_t chunked_decode(char *p, uint64_t n) noexcept nogil:
    """The data of a chunked body whole in p[:n] (chunked_whole_end said
    so), moved to the front of p in place; its length. Trailers are dropped:
    RFC 9110 6.5.1 lets a recipient discard them, and a stored response
    carries no framing of its own."""
    cdef uint64_t i = 0, o = 0, size
    cdef uint8_t c
    while i < n:
        size = 0
        while i < n:
            c = <uint8_t>p[i]
            if 48 <= c <= 57:
                size = size * 16 + (c - 48)
            elif 97 <= (c | 32) <= 102:
                size = size * 16 + ((c | 32) - 87)
            else:
                break
            i += 1
        while i < n and p[i] != 10:
            i += 1
        i += 1
        if size == 0:
            break
        memmove(p + o, p + i, size)
        o += size
        i += size + 2
    return o


cdef int refresh_init(lb_cache_wk *cw) except -1:
    cw.refresh_timer.timeout_ms = CACHE_REFRESH_MS
    cw.refresh_h = <lb_hconn *>calloc(1, sizeof(lb_hconn))
    cw.refresh_resp = <http_req *>malloc(sizeof(http_req))
    if cw.refresh_h == NULL or cw.refresh_resp == NULL:
        raise MemoryError()
    return 0
