# The http engine: one client connection (lb_hconn) carries requests one after
# the other; each is parsed in place, routed, rewritten into the backend-bound
# buffer and sent on a backend connection (lb_bconn) taken from this worker's
# keep-alive pool or opened for it. The response is parsed the same way and its
# body forwarded as it arrives: copied while small, spliced when large.
#
# Every step runs in h_run, from the worker's write phase, with the GIL released.
# Reads happen first, in the event phase (as for L4), so a turn's writes go out
# together. The rules a message must follow are in docs/http-parser.md; what the
# proxy does with it is in docs/http.md.

cdef enum:
    HF_READABLE = 1
    HF_WRITABLE = 2
    HF_EOF = 4
    HF_RDHUP = 8
    HF_ERR = 16

cdef enum:
    HS_PROXY = 1                     # reading a PROXY protocol header
    HS_HEAD = 2                      # reading a request head
    HS_EXCH = 3                      # a request and its response in flight
    HS_UPGRADE = 4                   # a 101 on its way to the client, then a tunnel
    HS_TUNNEL = 5                    # forwarded as an L4 connection (h.c)
    HS_CLOSING = 6                   # the last bytes (an error page) on their way, then close
    HS_LINGER = 7                    # write side shut; reading what the client still sends
    HS_CLOSED = 8

cdef enum:
    RQ_NONE = 0
    RQ_BODY_CL = 1
    RQ_BODY_CHUNKED = 2
    RQ_DONE = 3

cdef enum:
    RS_NONE = 0
    RS_WAIT = 1
    RS_BODY_CL = 2
    RS_BODY_CHUNKED = 3
    RS_BODY_EOF = 4
    RS_DONE = 5

cdef enum:
    BS_CONNECTING = 1
    BS_READY = 2
    BS_IDLE = 3
    BS_CLOSED = 4
    BS_PRIVATE = 5                   # idle, but only for the client it was opened for (send_proxy)

cdef enum:
    HTTP_SPLICE_MIN = 65536          # body bytes still to come before a direction splices
    LINGER_MS = 2000                 # how long a closing connection may take to drain
    FREE_HBUFS_MAX = 128
    EARLY_CONNECT = 32768            # body bytes buffered before connecting (see h_should_connect)


# ---- timer lists --------------------------------------------------------------------

cdef inline void tl_append(lb_tlist *l, lb_tnode *n, uint64_t when, void *owner) noexcept nogil:
    if n.list != NULL:
        tl_remove(n)
    n.list = l
    n.when = when
    n.owner = owner
    n.next = NULL
    n.prev = l.tail
    if l.tail != NULL:
        l.tail.next = n
    else:
        l.head = n
    l.tail = n


cdef inline void tl_remove(lb_tnode *n) noexcept nogil:
    cdef lb_tlist *l = n.list
    if l == NULL:
        return
    if n.prev != NULL:
        n.prev.next = n.next
    else:
        l.head = n.next
    if n.next != NULL:
        n.next.prev = n.prev
    else:
        l.tail = n.prev
    n.prev = NULL
    n.next = NULL
    n.list = NULL


cdef inline lb_tnode *tl_expired(lb_tlist *l, uint64_t now) noexcept nogil:
    if l.head != NULL and l.head.when + l.timeout_ms <= now:
        return l.head
    return NULL


cdef inline uint64_t tl_deadline(lb_tlist *l, uint64_t deadline) noexcept nogil:
    if l.head != NULL and l.head.when + l.timeout_ms < deadline:
        return l.head.when + l.timeout_ms
    return deadline


# ---- buffers and objects ------------------------------------------------------------

cdef inline bint hb_need(lb_worker *w, lb_hbuf *b) noexcept nogil:
    cdef lb_http_worker *hw = w.http
    if b.p != NULL:
        return True
    if hw.n_free_bufs:
        hw.n_free_bufs -= 1
        b.p = hw.free_bufs[hw.n_free_bufs]
    else:
        b.p = <char *>malloc(HBUF_SIZE)
        if b.p == NULL:
            return False
    b.off = 0
    b.len = 0
    return True


cdef inline void hb_give(lb_worker *w, lb_hbuf *b) noexcept nogil:
    cdef lb_http_worker *hw = w.http
    if b.p == NULL:
        return
    if hw.n_free_bufs < FREE_HBUFS_MAX:
        hw.free_bufs[hw.n_free_bufs] = b.p
        hw.n_free_bufs += 1
    else:
        free(b.p)
    b.p = NULL
    b.off = 0
    b.len = 0


cdef inline void hb_drop(lb_worker *w, lb_hbuf *b, uint32_t n) noexcept nogil:
    """The first n bytes were consumed; an empty buffer goes back to the pool."""
    b.off += n
    b.len -= n
    if b.len == 0:
        hb_give(w, b)


cdef inline uint32_t hb_room(lb_hbuf *b) noexcept nogil:
    """Bytes that can still be appended (after moving the held ones to the front)."""
    return HBUF_SIZE - b.len


cdef lb_hconn *hconn_alloc(lb_worker *w) noexcept nogil:
    cdef lb_hconn *h = w.http.free_hconns
    if h != NULL:
        w.http.free_hconns = h.free_next
    else:
        h = <lb_hconn *>malloc(sizeof(lb_hconn))
        if h == NULL:
            return NULL
    memset(h, 0, sizeof(lb_hconn))
    h.c.kind = KIND_HTTP
    h.c.fd[0] = -1
    h.c.fd[1] = -1
    h.c.pipe[0][0] = -1
    h.c.pipe[0][1] = -1
    h.c.pipe[1][0] = -1
    h.c.pipe[1][1] = -1
    h.c.slot = -1
    h.c.pool = -1
    h.pipe[0] = -1
    h.pipe[1] = -1
    h.route = -1
    h.sticky_slot = -1
    return h


cdef inline void hconn_release(lb_worker *w, lb_hconn *h) noexcept nogil:
    h.c.state = CS_FREE
    h.free_next = w.http.free_hconns
    w.http.free_hconns = h


cdef lb_bconn *bconn_alloc(lb_worker *w) noexcept nogil:
    cdef lb_bconn *b = w.http.free_bconns
    if b != NULL:
        w.http.free_bconns = b.idle_next
    else:
        b = <lb_bconn *>malloc(sizeof(lb_bconn))
        if b == NULL:
            return NULL
    memset(b, 0, sizeof(lb_bconn))
    b.kind = KIND_BCONN
    b.fd = -1
    b.pipe[0] = -1
    b.pipe[1] = -1
    b.slot = -1
    return b


cdef void http_free_closed(lb_worker *w) noexcept nogil:
    """Backend connections closed in this turn, freed once its events are done."""
    cdef lb_bconn *b = w.http.closed_b
    cdef lb_bconn *n
    w.http.closed_b = NULL
    while b != NULL:
        n = b.idle_next
        b.idle_next = w.http.free_bconns
        w.http.free_bconns = b
        b = n


# ---- backend connections ---------------------------------------------------------------

cdef void idle_unlink(lb_worker *w, lb_bconn *b) noexcept nogil:
    cdef lb_pool_rt *p = &w.pools[b.pool]
    cdef uint32_t off = b.slot - p.shm.first_slot
    if b.idle_prev != NULL:
        b.idle_prev.idle_next = b.idle_next
    else:
        p.http.idle_top[off] = b.idle_next
    if b.idle_next != NULL:
        b.idle_next.idle_prev = b.idle_prev
    b.idle_next = NULL
    b.idle_prev = NULL
    p.http.idle_count[off] -= 1
    tl_remove(&b.tn)


cdef void bconn_close(lb_worker *w, lb_bconn *b, bint reset) noexcept nogil:
    cdef linger lg
    if b.state == BS_CLOSED:
        return
    if b.state == BS_IDLE:
        idle_unlink(w, b)
    tl_remove(&b.tn)
    if reset:
        lg.l_onoff = 1
        lg.l_linger = 0
        setsockopt(b.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
    close(b.fd)
    b.fd = -1
    w.fds -= 1
    lb_store_i64(&w.stats.fds, w.fds)
    hb_give(w, &b.inb)
    if b.pipe[0] >= 0:
        pipe_give(w, b.pipe, b.pipe_len != 0)
    b.state = BS_CLOSED
    b.h = NULL
    b.idle_next = w.http.closed_b
    w.http.closed_b = b


cdef bint bconn_quiet(lb_bconn *b) noexcept nogil:
    """Nothing past the response is waiting on the connection. A read flag can
    outlive the last byte (a splice that ended exactly at the response's end
    never saw EAGAIN): one peek settles it."""
    cdef char c
    if b.inb.len or b.pipe_len or (b.flags & (HF_EOF | HF_RDHUP | HF_ERR)):
        return False
    if b.flags & HF_READABLE:
        if recv(b.fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 and (errno == EAGAIN or errno == EINTR):
            b.flags &= ~HF_READABLE
            return True
        return False
    return True


cdef void bconn_park(lb_worker *w, lb_bconn *b) noexcept nogil:
    """Keep a backend connection for the next request to that backend."""
    cdef lb_pool_rt *p = &w.pools[b.pool]
    cdef uint32_t off = b.slot - p.shm.first_slot
    if p.http.max_idle == 0 or p.http.idle_count[off] >= p.http.max_idle or w.stopping or not bconn_quiet(b):
        bconn_close(w, b, False)
        return
    hb_give(w, &b.inb)
    if b.pipe[0] >= 0:
        pipe_give(w, b.pipe, False)
    b.h = NULL
    b.state = BS_IDLE
    b.idle_prev = NULL
    b.idle_next = p.http.idle_top[off]
    if b.idle_next != NULL:
        b.idle_next.idle_prev = b
    p.http.idle_top[off] = b
    p.http.idle_count[off] += 1
    tl_append(&p.http.idle_timer, &b.tn, w.now_ms, b)


cdef lb_bconn *idle_take(lb_worker *w, lb_pool_rt *p, int32_t slot) noexcept nogil:
    """The most recently parked live connection to slot (LIFO: warm caches, and
    the coldest ones age out), or NULL."""
    cdef uint32_t off = slot - p.shm.first_slot
    cdef lb_bconn *b
    while p.http.idle_top[off] != NULL:
        b = p.http.idle_top[off]
        idle_unlink(w, b)
        if b.flags & (HF_EOF | HF_RDHUP | HF_ERR | HF_READABLE):
            bconn_close(w, b, False)
            continue
        b.state = BS_READY
        return b
    return NULL


cdef bint bconn_send_proxy(lb_worker *w, lb_hconn *h, lb_bconn *b) noexcept nogil:
    """The PROXY header a new connection starts with, when its pool sends one.
    A fresh socket's send buffer is empty, so the header goes out whole or not at all."""
    cdef char hdr[256]
    cdef int n
    cdef socklen_t alen = sizeof(sockaddr_storage)
    cdef uint8_t v = w.pools[b.pool].http.send_proxy
    if v == 0:
        return True
    if h.local.ss_family == 0:
        getsockname(h.c.fd[0], <sockaddr *>&h.local, &alen)
    n = proxy_build(v, &h.c.peer, &h.local, hdr, sizeof(hdr))
    if n <= 0:
        return False
    return send(b.fd, hdr, n, MSG_NOSIGNAL | MSG_DONTWAIT) == n


# ---- sessions ------------------------------------------------------------------------------

cdef void h_release_backend(lb_worker *w, lb_hconn *h, bint reset) noexcept nogil:
    """Close the request's backend connection (if any) and stop counting the
    request on its backend."""
    if h.b != NULL:
        bconn_close(w, h.b, reset)
        h.b = NULL
    if h.c.slot >= 0:
        conn_backend_drop(w, &h.c)


cdef void h_close(lb_worker *w, lb_hconn *h, bint reset) noexcept nogil:
    cdef linger lg
    if h.c.state == CS_CLOSED or h.c.state == CS_FREE:
        return
    tl_remove(&h.tphase)
    tl_remove(&h.tidle)
    tl_remove(&h.tresp)
    h_release_backend(w, h, reset)
    if h.priv != NULL:
        bconn_close(w, h.priv, False)
        h.priv = NULL
    if h.c.fd[0] >= 0:
        if reset:
            lg.l_onoff = 1
            lg.l_linger = 0
            setsockopt(h.c.fd[0], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
        close(h.c.fd[0])
        h.c.fd[0] = -1
        w.fds -= 1
    hb_give(w, &h.inb)
    hb_give(w, &h.outb)
    hb_give(w, &h.upb)
    if h.pipe[0] >= 0:
        pipe_give(w, h.pipe, h.pipe_len != 0)
    h.c.state = CS_CLOSED
    h.st = HS_CLOSED
    h.c.next = w.closed
    w.closed = &h.c
    lb_add_i64(&w.stats.active, -1)
    lb_store_i64(&w.stats.fds, w.fds)
    if not w.accepting and w.fds < w.fd_resume:
        listeners_resume(w)


cdef void h_closing(lb_worker *w, lb_hconn *h) noexcept nogil:
    """Send what is queued for the client, then close: no more requests.
    Sending it takes a slow client as long as it takes: the idle timer
    watches that, and the linger time starts once it is all written."""
    tl_remove(&h.tphase)
    tl_remove(&h.tresp)
    hb_give(w, &h.upb)
    h.st = HS_CLOSING
    h.c.last_ms = w.now_ms
    tl_append(&h.hl.idle_timer, &h.tidle, w.now_ms, h)


cdef void h_error(lb_worker *w, lb_hconn *h, int code) noexcept nogil:
    """Answer with a built-in page and close. When a response already began, the
    only honest signal left is to cut the connection."""
    lb_add_u64(&w.stats.http_errors, 1)
    h_release_backend(w, h, False)
    if h.resp_sent or ERR_PAGES[code].p == NULL:
        h_close(w, h, True)
        return
    if not hb_need(w, &h.outb) or not ob_put(&h.outb, ERR_PAGES[code].p, ERR_PAGES[code].n):
        h_close(w, h, True)
        return
    h.resp_sent = 1
    h.errored = 1
    h_closing(w, h)


cdef void h_cut(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The response cannot be completed: the client gets what lb already has of
    it, then the connection ends (by a FIN: the head's length or chunking tells
    the client it is short). Closing at once would drop those bytes, and a
    close before any response byte reads as an idle keep-alive close, which
    clients answer by sending the request again."""
    h_release_backend(w, h, False)
    h.client_ka = 0
    h_closing(w, h)


cdef void h_connect(lb_worker *w, lb_hconn *h) noexcept nogil:
    """A backend connection for the request: the sticky backend, else the pool's
    pick; a parked connection to it when there is one, else a new one."""
    cdef lb_pool_rt *p = &w.pools[h.c.pool]
    cdef int32_t slot
    cdef int fd
    cdef lb_bconn *b
    cdef epoll_event ev
    while h.c.tries <= <int32_t>p.retries:
        if h.sticky_slot >= 0 and h.c.tries == 0 and backend_hashable(&w.backends[h.sticky_slot]):
            slot = h.sticky_slot
        else:
            slot = p.ops.pick(w, p, &h.c, h.key)
        if slot < 0:
            break
        h.c.tried[h.c.tries] = slot
        h.c.tries += 1
        b = NULL
        if h.priv != NULL:
            # a connection that announced this client (PROXY header) serves no other
            if h.priv.slot == slot and not h.fresh:
                b = h.priv
                b.state = BS_READY
            else:
                bconn_close(w, h.priv, False)
            h.priv = NULL
        elif not h.fresh and p.http.send_proxy == 0:
            b = idle_take(w, p, slot)
        if b == NULL:
            fd = backend_connect(w, slot)
            if fd < 0:
                conn_count_failure(w, slot, False)
                continue
            b = bconn_alloc(w)
            if b == NULL:
                close(fd)
                break
            b.fd = fd
            b.slot = slot
            b.pool = h.c.pool
            b.state = BS_CONNECTING
            ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
            ev.data.u64 = <uint64_t><size_t>b | TAG_SIGNAL
            w.fds += 1
            lb_store_i64(&w.stats.fds, w.fds)
            if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
                bconn_close(w, b, True)
                break
            tl_append(&p.http.connect_timer, &b.tn, w.now_ms, b)
        b.h = h
        h.b = b
        conn_backend_take(w, &h.c, slot)
        h.set_sticky = p.http.sticky.n != 0 and slot != h.sticky_slot
        h.b_last_ms = w.now_ms
        tl_append(&p.http.resp_timer, &h.tresp, w.now_ms, h)
        return
    lb_add_u64(&w.stats.no_backend, 1)
    h_error(w, h, 503)


cdef void h_backend_failed(lb_worker *w, lb_hconn *h, bint timeout, bint connecting) noexcept nogil:
    """The backend connection failed before any response byte: try another
    backend when the request can be sent again, else 502."""
    cdef lb_bconn *b = h.b
    cdef bint reused = b.served > 0
    if connecting or not reused:
        conn_count_failure(w, b.slot, timeout)
    h_release_backend(w, h, True)
    tl_remove(&h.tresp)
    # A request is sent again only when it never left, or when it is idempotent
    # and still whole in upb: a POST is never sent twice.
    if h.up_sent and not (h.replayable and h.method != MT_OTHER):
        h_error(w, h, 502)
        return
    if reused and not connecting and not h.fresh:
        # a parked connection the backend had closed: not the backend's fault;
        # the same backend may take the request on a new connection
        h.c.tries -= 1
        h.fresh = 1
    if h.up_sent:
        lb_add_u64(&w.stats.http_retries, 1)
    h.up_sent = 0
    h_connect(w, h)


cdef void h_start_request(lb_worker *w, lb_hconn *h, http_req *r) noexcept nogil:
    cdef const uint8_t *b = <const uint8_t *>h.inb.p + h.inb.off
    cdef lb_http_listener *hl = h.hl
    cdef int32_t pool = route_pick(hl, b, r, &h.route)
    cdef lb_pool_rt *p
    cdef uint32_t head_len = r.head_len
    lb_add_u64(&w.stats.http_requests, 1)
    if pool < 0:
        h_error(w, h, 404)
        return
    p = &w.pools[pool]
    h.c.pool = pool
    h.c.tries = 0
    h.fresh = 0
    h.method = method_kind(b + r.method_off, r.method_len)
    h.version = r.version
    h.client_ka = r.keep_alive
    h.upgrade = r.upgrade
    h.expect = r.expect_continue
    h.key = http_key_hash(p, &h.c, b, r)
    h.sticky_slot = sticky_lookup(w, p, b, r) if p.http.sticky.n else -1
    h.resp_started = 0
    h.resp_sent = 0
    h.backend_ka = 0
    h.no_splice = 0
    h.replayable = 1
    h.up_sent = 0
    if r.chunked:
        h.rq_state = RQ_BODY_CHUNKED
        h.rq_chunk_phase = CK_LINE
        h.rq_left = 0
    elif r.content_length > 0:
        h.rq_state = RQ_BODY_CL
        h.rq_left = r.content_length
    else:
        h.rq_state = RQ_DONE
    h.rs_state = RS_WAIT
    # HTTP/1.0 clients cannot read chunked responses: ask the backend in 1.0 too
    # (it then delimits by length or by close), and do not reuse that connection
    if not hb_need(w, &h.upb) or not rewrite_request(h, b, r, &hl.routes[h.route] if h.route >= 0 else NULL,
                                                      r.version, &p.http.sticky):
        h_error(w, h, 431)
        return
    hb_drop(w, &h.inb, head_len)
    tl_remove(&h.tphase)
    h.c.last_ms = w.now_ms
    tl_append(&hl.idle_timer, &h.tidle, w.now_ms, h)
    h.st = HS_EXCH
    if not h_should_connect(h):
        return
    h_connect(w, h)


cdef inline bint h_should_connect(lb_hconn *h) noexcept nogil:
    """A request with a body waits for it before a backend is chosen, up to
    EARLY_CONNECT bytes: a small request then reaches the backend whole (and
    can be sent again elsewhere), and a body that breaks the rules is refused
    before any backend saw the request. A client that expects 100-continue
    waits for the backend, so it is connected at once."""
    return (h.rq_state == RQ_DONE or h.expect or h.upb.len >= EARLY_CONNECT
            or (h.hflags & HF_EOF) != 0)


cdef void h_finish(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The exchange is over: park or close the backend connection, then wait for
    the next request (or close, when either side asked for it)."""
    cdef lb_bconn *b = h.b
    cdef lb_http_listener *hl = h.hl
    if h.c.slot >= 0:
        conn_backend_drop(w, &h.c)
    if b != NULL:
        b.served += 1
        h.b = NULL
        if h.backend_ka and h.rq_state == RQ_DONE and w.pools[b.pool].http.send_proxy and h.client_ka \
                and bconn_quiet(b):
            # its PROXY header named this client: keep it for this client only
            # (HAProxy marks such connections private too)
            hb_give(w, &b.inb)
            b.state = BS_PRIVATE
            b.h = h
            h.priv = b
        elif h.backend_ka and h.rq_state == RQ_DONE and not w.pools[b.pool].http.send_proxy:
            bconn_park(w, b)
        else:
            bconn_close(w, b, False)
    tl_remove(&h.tresp)
    tl_remove(&h.tidle)
    hb_give(w, &h.upb)
    h.up_sent = 0
    if h.pipe[0] >= 0:
        pipe_give(w, h.pipe, h.pipe_len != 0)
    if not h.client_ka or (h.hflags & HF_EOF) or w.stopping or h.rq_state != RQ_DONE:
        h_closing(w, h)
        return
    h.st = HS_HEAD
    h.rq_state = RQ_NONE
    h.rs_state = RS_NONE
    h.resp_started = 0
    h.resp_sent = 0                  # an error page for the next request is sent, not cut
    h.route = -1
    if h.inb.len:
        tl_append(&hl.req_timer, &h.tphase, w.now_ms, h)
    else:
        hb_give(w, &h.inb)
        tl_append(&hl.ka_timer, &h.tphase, w.now_ms, h)


# ---- moving bytes ------------------------------------------------------------------------

cdef inline void h_account(lb_worker *w, lb_hconn *h, ssize_t n, bint up, bint spliced) noexcept nogil:
    if h.c.slot >= 0:
        if up:
            lb_add_u64(&w.bstats[h.c.slot].bytes_in, n)
        else:
            lb_add_u64(&w.bstats[h.c.slot].bytes_out, n)
    if up:
        lb_add_u64(&w.stats.bytes_in, n)
    else:
        lb_add_u64(&w.stats.bytes_out, n)
    if spliced:
        lb_add_u64(&w.stats.splice_bytes, n)


cdef int h_splice(lb_worker *w, lb_hconn *h, int src, int dst, int *pipe, uint32_t *plen, uint64_t *left,
                  uint32_t *sflags, uint32_t *dflags, bint up) noexcept nogil:
    """Move up to *left bytes from src to dst through a pipe. 1 progress, 0 none,
    -1 dst failed. src's EOF shows in *sflags."""
    cdef ssize_t n
    cdef size_t want
    cdef uint64_t moved = 0
    cdef int progress = 0
    while True:
        if plen[0]:
            if not (dflags[0] & HF_WRITABLE):
                return progress
            n = splice(pipe[0], NULL, dst, NULL, plen[0], SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n < 0:
                if errno == EAGAIN or errno == EINTR:
                    dflags[0] &= ~HF_WRITABLE
                    return progress
                return -1
            h_account(w, h, n, up, True)
            plen[0] -= n
            progress = 1
            if plen[0]:
                dflags[0] &= ~HF_WRITABLE
                return progress
        if left[0] == 0 or not (sflags[0] & HF_READABLE) or (sflags[0] & HF_EOF):
            pipe_give(w, pipe, False)
            return progress
        if moved >= FWD_BUDGET:
            conn_queue(w, &h.c)
            return progress
        want = PIPE_SIZE if left[0] > PIPE_SIZE else left[0]
        n = splice(src, NULL, pipe[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n > 0:
            plen[0] = n
            left[0] -= n
            moved += n
            progress = 1
        elif n == 0:
            sflags[0] = (sflags[0] | HF_EOF) & ~HF_READABLE
            return 1
        elif errno == EAGAIN or errno == EINTR:
            sflags[0] &= ~HF_READABLE
            return progress
        else:
            sflags[0] = (sflags[0] | HF_EOF | HF_ERR) & ~HF_READABLE
            return 1


cdef inline bint h_splice_up(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The request body goes by splice from here on (reads stop copying it)."""
    return (h.rq_state == RQ_BODY_CL and h.rq_left >= HTTP_SPLICE_MIN and h.inb.len == 0 and not h.no_splice
            and w.splice_mode != SPLICE_NEVER and h.b != NULL and h.b.state == BS_READY
            and h.up_sent == h.upb.len)


cdef inline bint h_splice_down(lb_worker *w, lb_hconn *h) noexcept nogil:
    return (h.rs_state == RS_BODY_CL and h.rs_left >= HTTP_SPLICE_MIN and h.b.inb.len == 0 and h.outb.len == 0
            and not h.no_splice and w.splice_mode != SPLICE_NEVER)


cdef int h_read_client(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef ssize_t n
    cdef uint32_t room
    if not (h.hflags & HF_READABLE) or (h.hflags & HF_EOF):
        return 0
    if h.st == HS_CLOSING or h.st == HS_UPGRADE or h.st == HS_TUNNEL:
        return 0
    if h.st == HS_EXCH and (h.pipe_len or h_splice_up(w, h)):
        return 0
    if not hb_need(w, &h.inb):
        return 0
    if h.inb.off + h.inb.len == HBUF_SIZE:
        if h.inb.off == 0:
            return 0                 # full: the request in it must move on first
        memmove(h.inb.p, h.inb.p + h.inb.off, h.inb.len)
        h.inb.off = 0
    room = HBUF_SIZE - h.inb.off - h.inb.len
    n = recv(h.c.fd[0], h.inb.p + h.inb.off + h.inb.len, room, MSG_DONTWAIT)
    if n > 0:
        h.c.last_ms = w.now_ms
        if <uint32_t>n < room and not (h.hflags & HF_RDHUP):
            h.hflags &= ~HF_READABLE
        if h.st == HS_LINGER:
            hb_give(w, &h.inb)       # what a client sends after its answer is dropped
            return 1
        h.inb.len += n
        if h.st == HS_HEAD and h.tphase.list == &h.hl.ka_timer:
            # the next request began: its head has http_request_timeout from now
            tl_append(&h.hl.req_timer, &h.tphase, w.now_ms, h)
        return 1
    if h.inb.len == 0:
        hb_give(w, &h.inb)
    if n == 0:
        h.hflags = (h.hflags | HF_EOF) & ~HF_READABLE
        return 1
    if errno == EAGAIN or errno == EINTR:
        h.hflags &= ~HF_READABLE
        return 0
    h.hflags = (h.hflags | HF_EOF | HF_ERR) & ~HF_READABLE
    return 1


cdef int h_read_backend(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef lb_bconn *b = h.b
    cdef ssize_t n
    cdef uint32_t room
    if b == NULL or b.state != BS_READY or not (b.flags & HF_READABLE) or (b.flags & HF_EOF):
        return 0
    if h.rs_state == RS_NONE or h.rs_state == RS_DONE or b.pipe_len or h_splice_down(w, h):
        return 0
    if not hb_need(w, &b.inb):
        return 0
    if b.inb.off + b.inb.len == HBUF_SIZE:
        if b.inb.off == 0:
            return 0
        memmove(b.inb.p, b.inb.p + b.inb.off, b.inb.len)
        b.inb.off = 0
    room = HBUF_SIZE - b.inb.off - b.inb.len
    n = recv(b.fd, b.inb.p + b.inb.off + b.inb.len, room, MSG_DONTWAIT)
    if n > 0:
        h.b_last_ms = w.now_ms
        if <uint32_t>n < room and not (b.flags & HF_RDHUP):
            b.flags &= ~HF_READABLE
        b.inb.len += n
        return 1
    if b.inb.len == 0:
        hb_give(w, &b.inb)
    if n == 0:
        b.flags = (b.flags | HF_EOF) & ~HF_READABLE
        return 1
    if errno == EAGAIN or errno == EINTR:
        b.flags &= ~HF_READABLE
        return 0
    b.flags = (b.flags | HF_EOF | HF_ERR) & ~HF_READABLE
    return 1


cdef int h_flush_up(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef lb_bconn *b = h.b
    cdef ssize_t n
    if b == NULL or b.state != BS_READY or h.up_sent >= h.upb.len or not (b.flags & HF_WRITABLE):
        return 0
    n = send(b.fd, h.upb.p + h.up_sent, h.upb.len - h.up_sent, MSG_NOSIGNAL | MSG_DONTWAIT)
    if n < 0:
        if errno == EAGAIN or errno == EINTR:
            b.flags &= ~HF_WRITABLE
            return 0
        b.flags |= HF_EOF | HF_ERR
        return 1
    h_account(w, h, n, True, False)
    h.up_sent += n
    h.b_last_ms = w.now_ms
    if h.up_sent < h.upb.len:
        b.flags &= ~HF_WRITABLE
    return 1


cdef int h_flush_out(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef ssize_t n
    if h.outb.len == 0 or not (h.hflags & HF_WRITABLE):
        return 0
    n = send(h.c.fd[0], h.outb.p + h.outb.off, h.outb.len, MSG_NOSIGNAL | MSG_DONTWAIT)
    if n < 0:
        if errno == EAGAIN or errno == EINTR:
            h.hflags &= ~HF_WRITABLE
            return 0
        h_close(w, h, True)
        return 1
    h_account(w, h, n, False, False)
    h.c.last_ms = w.now_ms
    if <uint32_t>n < h.outb.len:
        h.hflags &= ~HF_WRITABLE
    hb_drop(w, &h.outb, n)
    return 1


cdef inline void up_compact(lb_hconn *h) noexcept nogil:
    """Drop the bytes of upb the backend already has: the request can no longer
    be sent again from its start."""
    memmove(h.upb.p, h.upb.p + h.up_sent, h.upb.len - h.up_sent)
    h.upb.len -= h.up_sent
    h.up_sent = 0
    h.replayable = 0


cdef inline bint up_make_room(lb_hconn *h, uint32_t want) noexcept nogil:
    """Compact upb (up_compact) when it has less room than want. False: no
    room at all (until the backend takes some)."""
    if HBUF_SIZE - h.upb.len >= want or h.up_sent == 0:
        return h.upb.len < HBUF_SIZE
    up_compact(h)
    return True


cdef int h_req_body(lb_worker *w, lb_hconn *h) noexcept nogil:
    """Request body bytes from the client's buffer into upb (or spliced)."""
    cdef uint32_t n
    cdef size_t ok
    cdef int st, progress = 0
    cdef lb_bconn *b
    if h.rq_state == RQ_BODY_CL:
        while h.rq_left and h.inb.len:
            if not up_make_room(h, 1):     # any room will do: data goes in by the byte
                break
            n = h.inb.len
            if n > h.rq_left:
                n = <uint32_t>h.rq_left
            if n > HBUF_SIZE - h.upb.len:
                n = HBUF_SIZE - h.upb.len
            ob_put(&h.upb, h.inb.p + h.inb.off, n)
            hb_drop(w, &h.inb, n)
            h.rq_left -= n
            progress = 1
        if h.pipe_len or (h.rq_left and h_splice_up(w, h)):
            b = h.b
            h.replayable = 0
            if h.pipe[0] < 0 and pipe_take(w, h.pipe) != 0:
                h.no_splice = 1
                return progress
            st = h_splice(w, h, h.c.fd[0], b.fd, h.pipe, &h.pipe_len, &h.rq_left, &h.hflags, &b.flags, True)
            if st < 0:
                b.flags |= HF_EOF | HF_ERR
                return 1
            if st:
                h.b_last_ms = w.now_ms
                h.c.last_ms = w.now_ms
            progress |= st
        if h.rq_left == 0 and h.pipe_len == 0:
            h.rq_state = RQ_DONE
            progress = 1
        return progress
    # chunked: the framer says how far the body goes; bytes go on verbatim.
    # It needs a whole chunk-size line (or trailer section) in view: room for
    # everything read so far, or the line could stay cut at the end of upb
    # for good (room that sending does not give back until upb is compacted).
    while h.inb.len and up_make_room(h, h.inb.len):
        n = h.inb.len
        if n > HBUF_SIZE - h.upb.len:
            n = HBUF_SIZE - h.upb.len
        st = chunk_advance(&h.rq_chunk_phase, &h.rq_left, <const uint8_t *>h.inb.p + h.inb.off, n, &ok,
                           w.http.scratch, h.hl.max_head)
        if st == 400:
            h_error(w, h, 400)
            return 1
        if ok:
            ob_put(&h.upb, h.inb.p + h.inb.off, ok)
            hb_drop(w, &h.inb, ok)
            progress = 1
        if st == 1:
            h.rq_state = RQ_DONE
            return 1
        if not ok:
            # Nothing framed. When more bytes are in inb than fit in upb's room,
            # the rest of a chunk line (or the CRLF after data) lies beyond the
            # room: upb is not full, so up_make_room would never compact it and
            # the body would stall. Drop what the backend already has and retry.
            if n == h.inb.len or h.up_sent == 0:
                break
            up_compact(h)
    return progress


cdef int h_resp_head(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef lb_bconn *b = h.b
    cdef http_req *r = w.http.resp
    cdef const uint8_t *p
    cdef int st
    cdef uint32_t before
    if b == NULL or b.inb.len == 0:
        return 0
    p = <const uint8_t *>b.inb.p + b.inb.off
    st = http_parse_response_c(p, b.inb.len, r, HBUF_SIZE)
    if st == HTTP_INCOMPLETE:
        if b.flags & HF_EOF:
            h_error(w, h, 502)       # the head was cut short
            return 1
        return 0
    h.resp_started = 1
    if st != 0:
        h_error(w, h, 502)
        return 1
    if not hb_need(w, &h.outb):
        h_close(w, h, True)
        return 1
    before = h.outb.len
    if r.status < 200:
        if r.status == 101:
            if not h.upgrade:
                h_error(w, h, 502)
                return 1
            h.client_ka = 1
            if not rewrite_response(w, h, p, r):
                h.outb.len = before
                h_error(w, h, 502)
                return 1
            hb_drop(w, &b.inb, r.head_len)
            h.resp_sent = 1
            h.st = HS_UPGRADE
            return 1
        # 100 Continue and other interim responses reach HTTP/1.1 clients only
        if h.version == 11 and not rewrite_response(w, h, p, r):
            h.outb.len = before
            if before == 0:
                h_error(w, h, 502)
                return 1
            return 0
        hb_drop(w, &b.inb, r.head_len)
        return 1
    h.client_ka = h.client_ka and not w.stopping
    if h.method == MT_HEAD or r.status == 204 or r.status == 304:
        h.rs_state = RS_DONE
    elif r.chunked:
        h.rs_state = RS_BODY_CHUNKED
        h.rs_chunk_phase = CK_LINE
        h.rs_left = 0
    elif r.content_length >= 0:
        h.rs_state = RS_BODY_CL if r.content_length else RS_DONE
        h.rs_left = r.content_length
    else:
        h.rs_state = RS_BODY_EOF
        h.client_ka = 0
    h.backend_ka = r.keep_alive and h.rs_state != RS_BODY_EOF and h.version == 11
    if not rewrite_response(w, h, p, r):
        h.outb.len = before
        if before == 0:
            h_error(w, h, 502)
            return 1
        h.rs_state = RS_WAIT
        return 0
    hb_drop(w, &b.inb, r.head_len)
    h.resp_sent = 1
    # the request can no longer be sent again: its buffer is not needed
    if h.rq_state == RQ_DONE and h.up_sent == h.upb.len:
        hb_give(w, &h.upb)
        h.up_sent = 0
    return 1


cdef int h_resp_body(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef lb_bconn *b = h.b
    cdef uint32_t n
    cdef size_t ok
    cdef int st, progress = 0
    if h.rs_state == RS_BODY_CHUNKED:
        while b.inb.len and hb_room(&h.outb) and hb_need(w, &h.outb):
            n = b.inb.len
            if n > hb_room(&h.outb):
                n = hb_room(&h.outb)
            st = chunk_advance(&h.rs_chunk_phase, &h.rs_left, <const uint8_t *>b.inb.p + b.inb.off, n, &ok,
                               w.http.scratch, HBUF_SIZE)
            if st == 400:
                h_close(w, h, True)  # the client already has part of this response
                return 1
            if ok:
                ob_put(&h.outb, b.inb.p + b.inb.off, ok)
                hb_drop(w, &b.inb, ok)
                progress = 1
            if st == 1:
                h.rs_state = RS_DONE
                return 1
            if not ok:
                break
    elif h.rs_state == RS_BODY_CL:
        while h.rs_left and b.inb.len and hb_room(&h.outb) and hb_need(w, &h.outb):
            n = b.inb.len
            if n > h.rs_left:
                n = <uint32_t>h.rs_left
            if n > hb_room(&h.outb):
                n = hb_room(&h.outb)
            ob_put(&h.outb, b.inb.p + b.inb.off, n)
            hb_drop(w, &b.inb, n)
            h.rs_left -= n
            progress = 1
        if b.pipe_len or (h.rs_left and h_splice_down(w, h)):
            if b.pipe[0] < 0 and pipe_take(w, b.pipe) != 0:
                h.no_splice = 1
                return progress
            st = h_splice(w, h, b.fd, h.c.fd[0], b.pipe, &b.pipe_len, &h.rs_left, &b.flags, &h.hflags, False)
            if st < 0:
                h_close(w, h, True)
                return 1
            if st:
                h.b_last_ms = w.now_ms
                h.c.last_ms = w.now_ms
            progress |= st
        if h.rs_left == 0 and b.pipe_len == 0:
            h.rs_state = RS_DONE
            return 1
    else:                            # RS_BODY_EOF: everything until the backend closes
        while b.inb.len and hb_room(&h.outb) and hb_need(w, &h.outb):
            n = b.inb.len
            if n > hb_room(&h.outb):
                n = hb_room(&h.outb)
            ob_put(&h.outb, b.inb.p + b.inb.off, n)
            hb_drop(w, &b.inb, n)
            progress = 1
        if b.inb.len == 0 and (b.flags & HF_EOF):
            h.rs_state = RS_DONE
            return 1
    return progress


cdef int h_exchange(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef int progress = 0
    cdef lb_bconn *b
    if h.rq_state == RQ_BODY_CL or h.rq_state == RQ_BODY_CHUNKED:
        progress |= h_req_body(w, h)
        if h.st != HS_EXCH:
            return 1
    if h.b == NULL:
        if not h_should_connect(h):
            if (h.hflags & HF_EOF) and h.rq_state != RQ_DONE:
                h_close(w, h, False)
                return 1
            return progress
        h_connect(w, h)
        if h.st != HS_EXCH or h.b == NULL:
            return 1
    progress |= h_flush_up(w, h)
    progress |= h_read_backend(w, h)
    b = h.b
    if h.rs_state == RS_WAIT:
        if b.inb.len:
            progress |= h_resp_head(w, h)
            if h.st != HS_EXCH:
                return 1
        if h.rs_state == RS_WAIT and b.inb.len == 0 and (b.flags & HF_EOF):
            # closed or reset before any response byte
            h_backend_failed(w, h, False, False)
            return 1
    if h.rs_state == RS_BODY_CL or h.rs_state == RS_BODY_CHUNKED or h.rs_state == RS_BODY_EOF:
        progress |= h_resp_body(w, h)
        if h.st != HS_EXCH:
            return 1
        if (h.rs_state != RS_DONE and b.inb.len == 0 and b.pipe_len == 0 and (b.flags & HF_EOF)
                and h.rs_state != RS_BODY_EOF):
            h_cut(w, h)              # the backend cut its response short: so must we
            return 1
    progress |= h_flush_out(w, h)
    if h.c.state == CS_CLOSED:
        return 1
    if h.rs_state == RS_DONE:
        if h.rq_state != RQ_DONE:
            # answered before the request body ended (an early 4xx): finish the
            # answer and close both, the rest of the body is not read
            h.client_ka = 0
            h.backend_ka = 0
        # A kept-alive client waits for the whole response before it sends the
        # next request, and HS_HEAD does not write: what is still in outb goes
        # first (a closing connection sends it on its way out)
        if h.pipe_len == 0 and (h.outb.len == 0 or not h.client_ka):
            h_finish(w, h)
            return 1
        # the backend is done with this exchange: response_timeout no longer
        # applies, the idle timer watches the client taking the rest
        tl_remove(&h.tresp)
    elif h.hflags & HF_ERR:
        h_close(w, h, True)
        return 1
    elif (h.hflags & HF_EOF) and h.rq_state != RQ_DONE:
        h_close(w, h, True)          # the client went away in the middle of its request
        return 1
    return progress


cdef void h_tunnel(lb_worker *w, lb_hconn *h) noexcept nogil:
    """After a 101 reached the client: the connection continues as an L4 one,
    with whatever either side already sent first in line."""
    cdef lb_bconn *b = h.b
    cdef lb_conn *c = &h.c
    cdef epoll_event ev
    tl_remove(&h.tphase)
    tl_remove(&h.tidle)
    tl_remove(&h.tresp)
    c.fd[SIDE_BACKEND] = b.fd
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = <uint64_t><size_t>c | SIDE_CLIENT
    epoll_ctl(w.epfd, EPOLL_CTL_MOD, c.fd[SIDE_CLIENT], &ev)
    ev.data.u64 = <uint64_t><size_t>c | SIDE_BACKEND
    epoll_ctl(w.epfd, EPOLL_CTL_MOD, c.fd[SIDE_BACKEND], &ev)
    c.flags &= F_QUEUED              # it may already be on this turn's pending list
    # conservatively ready: the first call that blocks clears a flag again
    c.flags |= (F_READABLE | F_WRITABLE) << SIDE_CLIENT
    c.flags |= (F_READABLE | F_WRITABLE) << SIDE_BACKEND
    if h.hflags & HF_EOF:
        c.flags = (c.flags | (F_EOF << SIDE_CLIENT)) & ~(F_READABLE << SIDE_CLIENT)
    if b.flags & HF_EOF:
        c.flags = (c.flags | (F_EOF << SIDE_BACKEND)) & ~(F_READABLE << SIDE_BACKEND)
    # the bytes already read move over as they are (the buffers are larger than
    # L4 ones, which is harmless: the pool only ever fills BUF_SIZE of them)
    if h.inb.len:
        c.buf[DIR_UP] = h.inb.p
        c.buf_off[DIR_UP] = h.inb.off
        c.buf_len[DIR_UP] = h.inb.len
        h.inb.p = NULL
    if b.inb.len:
        c.buf[DIR_DOWN] = b.inb.p
        c.buf_off[DIR_DOWN] = b.inb.off
        c.buf_len[DIR_DOWN] = b.inb.len
        b.inb.p = NULL
    hb_give(w, &h.inb)
    hb_give(w, &h.outb)
    hb_give(w, &h.upb)
    hb_give(w, &b.inb)
    # the backend connection now belongs to c: free its struct, not its socket
    b.state = BS_CLOSED
    b.fd = -1
    b.idle_next = w.http.closed_b
    w.http.closed_b = b
    h.b = NULL
    h.st = HS_TUNNEL
    c.state = CS_ESTABLISHED
    c.last_ms = w.now_ms
    list_append(&w.listeners[c.listener].conns, c, w.now_ms)
    conn_queue(w, c)


cdef void h_run(lb_worker *w, lb_hconn *h) noexcept nogil:
    """Advance a session as far as its sockets allow."""
    cdef int progress, rounds = 0
    cdef size_t consumed
    cdef int st
    cdef sockaddr_storage src, dst
    while h.c.state != CS_CLOSED and h.st != HS_TUNNEL:
        progress = h_read_client(w, h)
        if h.st == HS_PROXY:
            if h.inb.len:
                st = proxy_parse(<const uint8_t *>h.inb.p + h.inb.off, h.inb.len, &consumed, &src, &dst)
                if st == PROXY_INVALID:
                    h_close(w, h, True)
                    return
                if st == PROXY_DONE:
                    hb_drop(w, &h.inb, consumed)
                    if src.ss_family != 0:
                        # the client the upstream proxy saw (LOCAL, UNKNOWN: keep ours)
                        memcpy(&h.c.peer, &src, sizeof(sockaddr_storage))
                        memcpy(&h.local, &dst, sizeof(sockaddr_storage))
                        h_set_ip(h)
                    h.st = HS_HEAD
                    progress = 1
            if h.st == HS_PROXY and (h.hflags & HF_EOF):
                h_close(w, h, False)
                return
        if h.st == HS_HEAD:
            progress |= h_head(w, h)
        elif h.st == HS_EXCH:
            progress |= h_exchange(w, h)
        elif h.st == HS_UPGRADE:
            progress |= h_flush_out(w, h)
            if h.c.state != CS_CLOSED and h.outb.len == 0:
                h_tunnel(w, h)
                return
        elif h.st == HS_CLOSING:
            progress |= h_flush_out(w, h)
            if h.c.state != CS_CLOSED and h.outb.len == 0:
                if not h.errored and h.inb.len == 0 and not (h.hflags & HF_READABLE):
                    # the client's last request was read whole and nothing
                    # more came: a plain close sends a FIN, not a reset
                    h_close(w, h, False)
                    return
                shutdown(h.c.fd[0], SHUT_WR)
                hb_give(w, &h.inb)
                h.st = HS_LINGER
                tl_remove(&h.tidle)
                tl_append(&w.http.linger_timer, &h.tphase, w.now_ms, h)
                progress = 1
        elif h.st == HS_LINGER:
            if h.hflags & HF_EOF:
                h_close(w, h, False)
                return
        if not progress:
            return
        rounds += 1
        if rounds > 64:
            conn_queue(w, &h.c)      # a fair share per turn
            return


cdef int h_head(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef http_req *r = w.http.req
    cdef lb_http_listener *hl = h.hl
    cdef int st
    if h.inb.len == 0:
        if h.hflags & HF_EOF:
            h_close(w, h, False)
            return 1
        return 0
    st = http_parse_request_c(<const uint8_t *>h.inb.p + h.inb.off, h.inb.len, r, hl.max_target, hl.max_head,
                              hl.max_fields)
    if st == HTTP_INCOMPLETE:
        if h.hflags & HF_EOF:
            h_close(w, h, False)     # a request cut short is not answered
            return 1
        return 0
    if st != 0:
        h_error(w, h, st)
        return 1
    h_start_request(w, h, r)
    return 1


cdef void h_set_ip(lb_hconn *h) noexcept nogil:
    cdef const char *s
    if h.c.peer.ss_family == AF_INET6:
        s = inet_ntop(AF_INET6, &(<sockaddr_in6 *>&h.c.peer).sin6_addr, h.ip, sizeof(h.ip))
    else:
        s = inet_ntop(AF_INET, &(<sockaddr_in *>&h.c.peer).sin_addr, h.ip, sizeof(h.ip))
    h.ip_len = strlen(h.ip) if s != NULL else 0


# ---- events ----------------------------------------------------------------------------

cdef void http_on_accept(lb_worker *w, int li) noexcept nogil:
    cdef lb_listener_rt *l = &w.listeners[li]
    cdef lb_hconn *h
    cdef int fd, i
    for i in range(ACCEPT_BATCH):
        if not accept_room(w):
            return
        h = hconn_alloc(w)
        if h == NULL:
            return
        fd = accept_client(w, l, &h.c.peer)
        if fd < 0:
            hconn_release(w, h)
            if fd == ACCEPT_STOP:
                return
            continue
        h.c.fd[SIDE_CLIENT] = fd
        h.c.listener = li
        h.c.state = CS_CONNECTING
        h.hl = l.http
        # TCP_NODELAY comes from the listening socket; the local address is
        # looked up only when a PROXY header needs it
        h_set_ip(h)
        h.st = HS_PROXY if l.http.accept_proxy else HS_HEAD
        tl_append(&l.http.req_timer, &h.tphase, w.now_ms, h)
        if not accept_register(w, fd, <uint64_t><size_t>h | TAG_SIGNAL):
            h_close(w, h, True)


cdef inline uint32_t ev_flags(uint32_t flags, uint32_t events) noexcept nogil:
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        flags |= HF_READABLE
    if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        flags |= HF_RDHUP
    if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
        flags |= HF_WRITABLE
    return flags


cdef void http_on_event(lb_worker *w, void *obj, uint32_t events) noexcept nogil:
    cdef lb_hconn *h
    cdef lb_bconn *b
    if (<uint32_t *>obj)[0] == KIND_HTTP:
        h = <lb_hconn *>obj
        if h.c.state == CS_CLOSED or h.st == HS_TUNNEL:
            return
        h.hflags = ev_flags(h.hflags, events)
        h_read_client(w, h)
        conn_queue(w, &h.c)
        return
    b = <lb_bconn *>obj
    if b.state == BS_CLOSED:
        return
    if b.state == BS_IDLE or b.state == BS_PRIVATE:
        # a parked connection has nothing to say: the backend closed it (or broke it)
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            if b.state == BS_PRIVATE:
                b.h.priv = NULL
            bconn_close(w, b, False)
        else:
            b.flags = ev_flags(b.flags, events)
        return
    h = b.h
    if b.state == BS_CONNECTING:
        if events & (EPOLLERR | EPOLLHUP):
            h_backend_failed(w, h, False, True)
            conn_queue(w, &h.c)
            return
        if not (events & EPOLLOUT):
            return
        tl_remove(&b.tn)
        lb_store_u64(&w.bstats[b.slot].consecutive_failures, 0)
        b.state = BS_READY
        if not bconn_send_proxy(w, h, b):
            h_backend_failed(w, h, False, True)
            conn_queue(w, &h.c)
            return
    b.flags = ev_flags(b.flags, events)
    h_read_backend(w, h)
    conn_queue(w, &h.c)


# ---- timers ------------------------------------------------------------------------------

cdef inline bint h_waits_for_client(lb_hconn *h) noexcept nogil:
    """Response bytes are held for a client whose socket is full."""
    return (not (h.hflags & HF_WRITABLE)
            and (h.outb.len != 0 or (h.b != NULL and h.b.pipe_len != 0)))


cdef void http_timers_sweep(lb_worker *w) noexcept nogil:
    cdef int i
    cdef lb_tnode *n
    cdef lb_hconn *h
    cdef lb_bconn *b
    cdef lb_http_listener *hl
    cdef lb_http_pool *hp
    cdef uint64_t now = w.now_ms, last
    for i in range(w.n_listeners):
        hl = w.listeners[i].http
        if hl == NULL:
            continue
        while True:
            n = tl_expired(&hl.req_timer, now)
            if n == NULL:
                break
            h = <lb_hconn *>n.owner
            tl_remove(n)
            if h.st == HS_PROXY:
                h_close(w, h, False)
            else:
                h_error(w, h, 408)
                if h.c.state != CS_CLOSED:
                    conn_queue(w, &h.c)  # no event will come to send the page
        while True:
            n = tl_expired(&hl.ka_timer, now)
            if n == NULL:
                break
            h_close(w, <lb_hconn *>n.owner, False)
        while True:
            n = tl_expired(&hl.idle_timer, now)
            if n == NULL:
                break
            h = <lb_hconn *>n.owner
            last = h.c.last_ms if h.c.last_ms > h.b_last_ms else h.b_last_ms
            if last + hl.idle_timer.timeout_ms <= now:
                lb_add_u64(&w.stats.idle_timeouts, 1)
                h_close(w, h, True)
            else:
                tl_append(&hl.idle_timer, n, last, h)
    for i in range(w.n_pools):
        hp = w.pools[i].http
        if hp == NULL:
            continue
        while True:
            n = tl_expired(&hp.connect_timer, now)
            if n == NULL:
                break
            b = <lb_bconn *>n.owner
            tl_remove(n)
            h = b.h
            h_backend_failed(w, h, True, True)
            if h.c.state != CS_CLOSED:
                conn_queue(w, &h.c)
        while True:
            n = tl_expired(&hp.resp_timer, now)
            if n == NULL:
                break
            h = <lb_hconn *>n.owner
            if h.b_last_ms + hp.resp_timer.timeout_ms > now:
                tl_append(&hp.resp_timer, n, h.b_last_ms, h)
            elif h_waits_for_client(h):
                # lb stopped reading the backend because the client does not take
                # the response: not the backend's silence (idle_timeout is the
                # client's); look again a whole timeout from now
                tl_append(&hp.resp_timer, n, now, h)
            else:
                tl_remove(n)
                if h.resp_sent:
                    h_close(w, h, True)
                else:
                    h_error(w, h, 504)
                    if h.c.state != CS_CLOSED:
                        conn_queue(w, &h.c)
        while True:
            n = tl_expired(&hp.idle_timer, now)
            if n == NULL:
                break
            bconn_close(w, <lb_bconn *>n.owner, False)
    if w.http != NULL:
        while True:
            n = tl_expired(&w.http.linger_timer, now)
            if n == NULL:
                break
            # not a reset: the end of the response may still be in the socket's
            # send buffer, on its way to a slow client, and a reset drops it
            h_close(w, <lb_hconn *>n.owner, False)


cdef uint64_t http_next_deadline(lb_worker *w, uint64_t deadline) noexcept nogil:
    cdef int i
    cdef lb_http_listener *hl
    cdef lb_http_pool *hp
    for i in range(w.n_listeners):
        hl = w.listeners[i].http
        if hl != NULL:
            deadline = tl_deadline(&hl.req_timer, deadline)
            deadline = tl_deadline(&hl.ka_timer, deadline)
            deadline = tl_deadline(&hl.idle_timer, deadline)
    for i in range(w.n_pools):
        hp = w.pools[i].http
        if hp != NULL:
            deadline = tl_deadline(&hp.connect_timer, deadline)
            deadline = tl_deadline(&hp.resp_timer, deadline)
            deadline = tl_deadline(&hp.idle_timer, deadline)
    if w.http != NULL:
        deadline = tl_deadline(&w.http.linger_timer, deadline)
    return deadline


cdef void http_stop_idle(lb_worker *w) noexcept nogil:
    """A graceful stop closes connections that wait for a next request; those
    in the middle of one finish it (and get Connection: close)."""
    cdef int i
    cdef lb_http_listener *hl
    for i in range(w.n_listeners):
        hl = w.listeners[i].http
        if hl == NULL:
            continue
        while hl.ka_timer.head != NULL:
            h_close(w, <lb_hconn *>hl.ka_timer.head.owner, False)


# ---- set-up from the configuration (Python, at start) ----------------------------------

cdef lb_str mkstr(object s):
    cdef bytes data = s.encode() if isinstance(s, str) else bytes(s)
    cdef lb_str r
    r.n = len(data)
    r.p = <char *>malloc(r.n + 1)
    if r.p == NULL:
        raise MemoryError()
    memcpy(r.p, <char *>data, r.n)
    r.p[r.n] = 0
    return r


cdef lb_str *mkstrs(object items):
    cdef lb_str *a = <lb_str *>calloc(max(1, len(items)), sizeof(lb_str))
    if a == NULL:
        raise MemoryError()
    for i, s in enumerate(items):
        a[i] = mkstr(s)
    return a


cdef int rules_init(lb_hrules *r, object rules) except -1:
    memset(r, 0, sizeof(lb_hrules))
    if rules is None:
        return 0
    sets = list(getattr(rules, "set", ()))
    adds = list(getattr(rules, "add", ()))
    removes = list(getattr(rules, "remove", ()))
    r.n_set = len(sets)
    r.n_add = len(adds)
    r.n_remove = len(removes)
    r.set_name = mkstrs([n for n, _ in sets])
    r.set_lower = mkstrs([n.lower() for n, _ in sets])
    r.set_value = mkstrs([v for _, v in sets])
    r.add_name = mkstrs([n for n, _ in adds])
    r.add_value = mkstrs([v for _, v in adds])
    r.remove = mkstrs([n.lower() for n in removes])
    return 0


cdef int http_listener_init(lb_listener_rt *l, object listener, dict pool_index) except -1:
    """The http settings of one listener, from its config.Listener."""
    cdef lb_http_listener *hl = <lb_http_listener *>calloc(1, sizeof(lb_http_listener))
    cdef lb_route *rt
    if hl == NULL:
        raise MemoryError()
    l.http = hl
    hs = getattr(listener, "http", None)
    hl.max_target = getattr(hs, "max_target", 8192)
    hl.max_head = getattr(hs, "max_header_size", 16384)
    hl.max_fields = getattr(hs, "max_header_count", 100)
    forwarded = getattr(hs, "forwarded", "x-forwarded")
    hl.xfwd = forwarded in ("x-forwarded", "both")
    hl.fwd = forwarded in ("forwarded", "both")
    hl.hide_server = bool(getattr(hs, "hide_server", False))
    hl.accept_proxy = bool(listener.accept_proxy)
    hl.pool = pool_index[listener.pool] if listener.pool is not None else -1
    rules_init(&hl.req, getattr(hs, "request_headers", None))
    rules_init(&hl.resp, getattr(hs, "response_headers", None))
    hl.req_timer.timeout_ms = max(1, <uint64_t>(getattr(hs, "request_timeout", 10.0) * 1000))
    hl.ka_timer.timeout_ms = max(1, <uint64_t>(getattr(hs, "keepalive_timeout", 60.0) * 1000))
    hl.idle_timer.timeout_ms = max(1, <uint64_t>(listener.idle_timeout * 1000))
    routes = list(listener.routes)
    hl.n_routes = len(routes)
    hl.routes = <lb_route *>calloc(max(1, len(routes)), sizeof(lb_route))
    if hl.routes == NULL:
        raise MemoryError()
    for i, route in enumerate(routes):
        rt = &hl.routes[i]
        host = route.host or ""
        rt.host_wild = host.startswith("*.")
        rt.host = mkstr(host[1:] if rt.host_wild else host)
        path = getattr(route, "path", None)
        rt.path_exact = path is not None
        rt.path = mkstr(path if path is not None else (route.path_prefix or ""))
        methods = getattr(route, "methods", ())
        rt.methods = mkstr(" " + " ".join(methods) + " " if methods else "")
        rt.header = mkstr((getattr(route, "header", None) or "").lower())
        value = getattr(route, "header_value", None)
        rt.has_header_value = value is not None
        rt.header_value = mkstr(value or "")
        rt.pool = pool_index[route.pool]
        rules_init(&rt.req, getattr(route, "request_headers", None))
        rules_init(&rt.resp, getattr(route, "response_headers", None))
    return 0


_HK_KINDS = {"path": HKH_PATH, "header": HKH_HEADER, "cookie": HKH_COOKIE, "query": HKH_QUERY}
_SEND_PROXY = {"off": 0, "v1": 1, "v2": 2}


cdef int http_pool_init(lb_pool_rt *p, object pool) except -1:
    """The http settings of one pool, from its config.Pool."""
    cdef lb_http_pool *hp = <lb_http_pool *>calloc(1, sizeof(lb_http_pool))
    cdef uint32_t cap = p.shm.capacity
    if hp == NULL:
        raise MemoryError()
    p.http = hp
    hk = pool.hash_key if pool.algorithm == "maglev" else ""
    kind, _, name = hk.partition(":")
    hp.hk_kind = _HK_KINDS.get(kind, HKH_L4)
    hp.hk_name = mkstr(name.lower() if kind == "header" else name)
    hp.send_proxy = _SEND_PROXY.get(getattr(pool, "send_proxy", "off"), 0)
    hp.max_idle = pool.keepalive_max_idle
    sticky = getattr(pool, "sticky_cookie", "") or ""
    hp.sticky = mkstr(sticky)
    hp.sticky_seed = lb_xxh64(<const uint8_t *>p.shm.name, strlen(p.shm.name), 0x6c62)
    hp.sticky_generation = 0xffffffff
    hp.sticky_ids = <uint64_t *>calloc(cap, sizeof(uint64_t))
    hp.idle_top = <lb_bconn **>calloc(cap, sizeof(lb_bconn *))
    hp.idle_count = <uint32_t *>calloc(cap, sizeof(uint32_t))
    if hp.sticky_ids == NULL or hp.idle_top == NULL or hp.idle_count == NULL:
        raise MemoryError()
    hp.idle_timer.timeout_ms = max(1, <uint64_t>(getattr(pool, "keepalive_timeout", 30.0) * 1000))
    hp.connect_timer.timeout_ms = max(1, <uint64_t>(pool.connect_timeout * 1000))
    hp.resp_timer.timeout_ms = max(1, <uint64_t>(getattr(pool, "response_timeout", 60.0) * 1000))
    return 0


cdef int http_worker_init(lb_worker *w) except -1:
    cdef lb_http_worker *hw = <lb_http_worker *>calloc(1, sizeof(lb_http_worker))
    if hw == NULL:
        raise MemoryError()
    w.http = hw
    hw.req = <http_req *>malloc(sizeof(http_req))
    hw.resp = <http_req *>malloc(sizeof(http_req))
    hw.scratch = <http_req *>malloc(sizeof(http_req))
    hw.free_bufs = <char **>calloc(FREE_HBUFS_MAX, sizeof(char *))
    if hw.req == NULL or hw.resp == NULL or hw.scratch == NULL or hw.free_bufs == NULL:
        raise MemoryError()
    hw.linger_timer.timeout_ms = LINGER_MS
    return 0
