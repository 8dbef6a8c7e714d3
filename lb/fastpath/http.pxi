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
    HS_PROXY = 1                     # reading a PROXY protocol header
    HS_HEAD = 2                      # reading a request head
    HS_EXCH = 3                      # a request and its response in flight
    HS_UPGRADE = 4                   # a 101 on its way to the client, then a tunnel
    HS_TUNNEL = 5                    # forwarded as an L4 connection (h.c)
    HS_CLOSING = 6                   # the last bytes (an error page) on their way, then close
    HS_LINGER = 7                    # write side shut; reading what the client still sends
    HS_CLOSED = 8
    HS_TLS = 9                       # the client's TLS handshake
    HS_H2 = 10                       # an HTTP/2 connection (fastpath/h2.pxi): its streams are sessions of their own
    HS_PARKED = 11                   # a request step waits for work off the loop (a password hash)

# request methods that matter to the proxy
cdef enum:
    MT_OTHER = 0                     # not idempotent: never sent twice
    MT_IDEMPOTENT = 1                # GET, PUT, DELETE, OPTIONS, TRACE
    MT_HEAD = 2                      # idempotent, and its response has no body

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


# ---- sessions ------------------------------------------------------------------------------

cdef void h_release_backend(lb_worker *w, lb_hconn *h, bint reset) noexcept nogil:
    """Close the request's backend connection (if any) and stop counting the
    request on its backend."""
    if h.b != NULL:
        bconn_close(w, h.b, reset)
        h.b = NULL
    if h.c.slot >= 0:
        conn_backend_drop(w, &h.c)


cdef inline void h_exchange_end(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The end phase of the exchange in flight, once, however it ended."""
    if h.in_exchange:
        h.in_exchange = 0
        phase_end(w, &h.c)
        log_exchange_reset(&h.c)     # (its staging record stays until its answer is written)


cdef bint h_sink(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The client left in the middle of a response that its cache fill
    stores and that other requests (on any worker) wait for, its key
    claimed: rather than drop the fill with the client, close the client's
    side only and read the response on to its end, storing it and throwing
    away what was for the client (then h_finish, h_closing close the rest).
    The response timer still bounds the backend. False: close as usual."""
    if (h.sink or h.h2role != 0 or h.st != HS_EXCH or h.b == NULL or h.cx == NULL or not h.cx.claimed
            or not h.cx.filling or w.stopping
            or not (h.rs_state == RS_BODY_CL or h.rs_state == RS_BODY_CHUNKED or h.rs_state == RS_BODY_EOF)
            or not (h.c.lg.term == TERM_CLIENT_ABORT
                    or (h.c.lg.term == TERM_OK and (h.hflags & (HF_EOF | HF_ERR))))):
        return False
    h.sink = 1
    h.c.lg.term = TERM_CLIENT_ABORT
    if h.c.sk[SIDE_CLIENT].fd >= 0:
        sock_close(&h.c.sk[SIDE_CLIENT], True)
        w.fds -= 1
    tl_remove(&h.tidle)              # no client to be idle: the response timer watches the backend
    h.client_ka = 0
    h.hflags = (h.hflags & ~(HF_EOF | HF_ERR | HF_READABLE)) | HF_WRITABLE
    hb_drop(w, &h.outb, h.outb.len)
    return True


cdef void h_close(lb_worker *w, lb_hconn *h, bint reset) noexcept nogil:
    if h.c.state == CS_CLOSED or h.c.state == CS_FREE:
        return
    if h_sink(w, h):
        return
    if h.in_exchange and h.c.lg.term == TERM_OK:
        # whoever closed it without saying why: the client left, or lb stopped
        if h.hflags & (HF_EOF | HF_ERR):
            h.c.lg.term = TERM_CLIENT_ABORT
        elif w.stopping:
            h.c.lg.term = TERM_STOPPING
        else:
            h.c.lg.term = TERM_LB_ERROR
    h_exchange_end(w, h)             # cut off in the middle: the client left, a reset, a timeout
    if h.h2role == H2_CONN:
        h2_teardown(w, h)            # its streams' sessions end first
    tl_remove(&h.tphase)
    tl_remove(&h.tidle)
    tl_remove(&h.tresp)
    h_release_backend(w, h, reset)
    if h.priv != NULL:
        bconn_close(w, h.priv, False)
        h.priv = NULL
    if h.c.sk[SIDE_CLIENT].fd >= 0:
        sock_close(&h.c.sk[SIDE_CLIENT], reset)
        w.fds -= 1
    elif h.h2role == H2_STREAM:
        sock_close(&h.c.sk[SIDE_CLIENT], reset)  # the stream ends (or is reset); no socket of its own
    hb_give(w, &h.inb)
    hb_give(w, &h.outb)
    hb_give(w, &h.upb)
    if h.pipe[0] >= 0:
        pipe_give(w, h.pipe, h.pipe_len != 0)
    h.c.state = CS_CLOSED
    h.st = HS_CLOSED
    h.c.next = w.closed
    w.closed = &h.c
    if h.h2role != H2_STREAM:         # a stream is a request, not a client connection
        met_conn_closed(w, &h.c)
        conn_count_closed(w, &h.c)


cdef void h_closing(lb_worker *w, lb_hconn *h) noexcept nogil:
    """Send what is queued for the client, then close: no more requests.
    Sending it takes a slow client as long as it takes: the idle timer
    watches that, and the linger time starts once it is all written."""
    if h.sink:
        h_close(w, h, False)         # the fill is stored; the client is long gone
        return
    tl_remove(&h.tphase)
    tl_remove(&h.tresp)
    hb_give(w, &h.upb)
    h.st = HS_CLOSING
    h.c.last_ms = w.now_ms
    tl_append(&h.hl.idle_timer, &h.tidle, w.now_ms, h)


cdef void h_error(lb_worker *w, lb_hconn *h, int code) noexcept nogil:
    """Answer with a built-in page and close. When a response already began, the
    only honest signal left is to cut the connection. lb's own answer is an
    exchange even when no request head was taken (400, 408): it ends here."""
    if code >= 500 and h.cx != NULL and not h.resp_sent and h.in_exchange and cache_stale_on_error(w, h, code):
        return                       # stale-if-error: the cache answers instead
    lb_add_u64(&w.stats.http_errors, 1)
    if not h.in_exchange:
        log_exchange_bare(w, h)
    h.in_exchange = 1
    h.c.lg.status = code
    h.c.lg.answered = 1
    if h.c.lg.term == TERM_OK:
        h.c.lg.term = log_default_term(code)
    if not h.resp_sent and ERR_PAGES[code].p != NULL:
        h.c.lg.bytes_out += ERR_PAGES[code].n + w.http.answer_len
    h_exchange_end(w, h)
    h_release_backend(w, h, False)
    if h.resp_sent or ERR_PAGES[code].p == NULL:
        h_close(w, h, True)
        return
    if not hb_need(w, &h.outb) or not h_put_page(w, h, &ERR_PAGES[code]):
        h_close(w, h, True)
        return
    log_rec_give(w, h)
    h.resp_sent = 1
    h.errored = 1
    h_closing(w, h)


cdef bint h_put_page(lb_worker *w, lb_hconn *h, lb_str *page) noexcept nogil:
    """One of lb's own answers into outb. On a TLS listener with HSTS it
    carries Strict-Transport-Security too, as every response there does."""
    cdef lb_tls_server *t = w.listeners[h.c.listener].tls
    cdef lb_hrules *hsts = NULL
    cdef const char *eol
    cdef uint32_t line
    cdef bint rid = rid_has(h)
    cdef uint32_t extra = w.http.answer_len
    if not rid and extra == 0 and (t == NULL or not rules_any(&t.resp)):
        return ob_put(&h.outb, page.p, page.n)
    if t != NULL and rules_any(&t.resp):
        hsts = &t.resp
    eol = <const char *>memchr(page.p, 10, page.n)
    line = <uint32_t>(eol - page.p) + 1
    # the refusing step's own fields (a 429's Retry-After) belong to this answer only
    w.http.answer_len = 0
    return (ob_put(&h.outb, page.p, line) and (hsts == NULL or rulesets_emit(&h.outb, &hsts, 1))
            and (not rid or rid_emit(h, &h.outb)) and (extra == 0 or ob_put(&h.outb, w.http.answer_fields, extra))
            and ob_put(&h.outb, page.p + line, page.n - line))


cdef void h_cut(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The response cannot be completed: the client gets what lb already has of
    it, then the connection ends (by a FIN: the head's length or chunking tells
    the client it is short). Closing at once would drop those bytes, and a
    close before any response byte reads as an idle keep-alive close, which
    clients answer by sending the request again."""
    log_term(&h.c, TERM_BACKEND_RESET)
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
    if h.mirror >= 0:
        mirror_start(w, h)           # before the first try: the request is whole and not yet sent
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
        if p.http.h2:
            # a stream of an HTTP/2 connection (fastpath/h2_backend.pxi)
            b = h2b_bconn(w, p, slot, h.fresh, &fd)
            if b == NULL:
                if fd == CONNECT_NO_FD:
                    break
                conn_count_failure(w, slot, False)
                continue
        elif h.priv != NULL:
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
            if fd == CONNECT_NO_FD:
                break                # 503: no fd here, no fault of the backend's
            if fd < 0:
                conn_count_failure(w, slot, False)
                continue
            b = bconn_alloc(w)
            if b == NULL:
                close(fd)
                break
            sock_plain(&b.sk, fd)
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
        if b.state == BS_READY:
            log_mark(w, &h.c, &h.c.lg.t_connect)    # a kept-alive connection: connected already
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
    # the last failure names the end, unless another backend answers
    if connecting:
        h.c.lg.term = TERM_CONNECT_TIMEOUT if timeout else TERM_BACKEND_REFUSED
    else:
        h.c.lg.term = TERM_BACKEND_RESET
    h.c.lg.t_connect = 0
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


cdef uint8_t method_kind(const uint8_t *m, uint32_t n) noexcept nogil:
    if ieq_exact(m, n, b"GET") or ieq_exact(m, n, b"PUT") or ieq_exact(m, n, b"DELETE") \
            or ieq_exact(m, n, b"OPTIONS") or ieq_exact(m, n, b"TRACE"):
        return MT_IDEMPOTENT
    if ieq_exact(m, n, b"HEAD"):
        return MT_HEAD
    return MT_OTHER


cdef void h_start_request(lb_worker *w, lb_hconn *h, http_req *r) noexcept nogil:
    """A request head was parsed: run the request phase (route, rules, ...),
    then set up the exchange and rewrite the head for the backend."""
    cdef const uint8_t *b = <const uint8_t *>h.inb.p + h.inb.off
    cdef int rc
    lb_add_u64(&w.stats.http_requests, 1)
    # what the request says of itself, before any step looks at it
    h.method = method_kind(b + r.method_off, r.method_len)
    h.version = r.version
    h.client_ka = r.keep_alive and h.h2role != H2_STREAM    # a stream carries one request
    h.upgrade = r.upgrade
    h.expect = r.expect_continue
    h.n_rq_rules = 0
    h.n_rs_rules = 0
    h.in_exchange = 1
    log_exchange_start(w, h, r, b)
    w.http.id_len = 0                # no API-key identity until this request's auth step finds one
    h.cut_len = 0
    h.split = -1                     # until this request's split step picks a variant
    h.split_cookie = 0
    h.mirror = -1
    top_path(w, b + r.target_off, r.target_len)
    rc = phase_request(w, h, r, b)
    if rc != STEP_CONTINUE:
        if rc == STEP_PARKED:
            h.st = HS_PARKED         # until the step's work is done: h_resume_request
        elif rc != STEP_ANSWERED:
            h_error(w, h, rc)
        w.http.answer_len = 0        # an answer that could not be sent leaves no fields for the next
        return
    h_request_go(w, h, r)


cdef void h_resume_request(lb_worker *w, lb_hconn *h, int rc) noexcept nogil:
    """A parked request's step is done: rc STEP_CONTINUE goes on with the steps
    after it, anything else is the status to answer. The head is still in
    inb, where it was parsed: parsed again (the worker's scratch head served
    other requests meanwhile)."""
    cdef http_req *r = w.http.req
    cdef lb_http_listener *hl = h.hl
    cdef const uint8_t *b = <const uint8_t *>h.inb.p + h.inb.off
    cdef lb_tls_server *t = w.listeners[h.c.listener].tls
    h.st = HS_HEAD
    if rc == STEP_CONTINUE:
        if http_parse_request_c(b, h.inb.len, r, hl.max_target, hl.max_head, hl.max_fields) != 0:
            rc = 500                 # it parsed before: cannot happen
        else:
            if t != NULL and t.client_cert:
                # the steps before the park wrote their fields into buffers
                # other requests have used since: the client_cert step's are
                # this connection's again (the auth step's are, by its resume)
                client_cert_fill(w, h)
            rc = phase_request(w, h, r, b, h.park_step)
    if rc == STEP_PARKED:
        h.st = HS_PARKED
    elif rc == STEP_CONTINUE:
        h_request_go(w, h, r)
    elif rc != STEP_ANSWERED:
        h_error(w, h, rc)
    w.http.answer_len = 0
    if h.c.state != CS_CLOSED:
        conn_queue(w, &h.c)          # its sockets may have waited on it: run it this turn


cdef void h_request_go(lb_worker *w, lb_hconn *h, http_req *r) noexcept nogil:
    """The request passed its steps: set up the exchange, rewrite the head for
    the backend, and connect."""
    cdef const uint8_t *b = <const uint8_t *>h.inb.p + h.inb.off
    cdef lb_http_listener *hl = h.hl
    cdef lb_pool_rt *p
    cdef uint32_t head_len = r.head_len
    cdef int st
    p = &w.pools[h.c.pool]
    h.c.tries = 0
    h.fresh = 0
    if p.http.hk_kind == HKH_CACHE_KEY:
        st = tier_request(w, h, p, b, r)
        if st:
            h_error(w, h, st)
            return
    else:
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
        scan_reset(&h.rq_scan)
        h.rq_left = 0
    elif r.content_length > 0:
        h.rq_state = RQ_BODY_CL
        h.rq_left = r.content_length
    else:
        h.rq_state = RQ_DONE
    h.rs_state = RS_WAIT
    # HTTP/1.0 clients cannot read chunked responses: ask the backend in 1.0 too
    # (it then delimits by length or by close), and do not reuse that connection
    if not hb_need(w, &h.upb) or not rewrite_request(h, b, r, r.version, &p.http.sticky, p.http.h2):
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
    # whole: whatever failed on the way was made good (but for a client that left)
    h.c.lg.term = TERM_CLIENT_ABORT if h.sink else TERM_OK
    h.c.lg.bytes_out += h.outb.len   # on its way to the client
    h_exchange_end(w, h)             # while the backend it used is still known
    log_rec_give(w, h)
    if h.c.slot >= 0:
        conn_backend_drop(w, &h.c)
    if b != NULL:
        b.served += 1
        h.b = NULL
        if b.sk.xp == &XPRT_H2B:
            bconn_close(w, b, False)     # the stream ends; its connection stays for the others
        elif h.backend_ka and h.rq_state == RQ_DONE and w.pools[b.pool].http.send_proxy and h.client_ka \
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
    scan_reset(&h.rq_scan)           # (a chunked body that ended resets it already)
    h.resp_started = 0
    h.resp_sent = 0                  # an error page for the next request is sent, not cut
    h.route = -1
    h.split = -1
    if h.inb.len:
        tl_append(&hl.req_timer, &h.tphase, w.now_ms, h)
    else:
        hb_give(w, &h.inb)
        tl_append(&hl.ka_timer, &h.tphase, w.now_ms, h)


cdef int h_exchange(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef int progress = 0
    cdef lb_bconn *b
    if h.cx != NULL and h.cx.serving:
        return cache_serve(w, h)     # answered by lb: no backend
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
            if h.st != HS_EXCH or (h.cx != NULL and h.cx.serving):
                return 1             # (the cache answers a revalidated request: cache_serve, next round)
        if h.rs_state == RS_WAIT and b.inb.len == 0 and (b.flags & HF_EOF):
            # closed or reset before any response byte
            h_backend_failed(w, h, False, False)
            return 1
    if h.rs_state == RS_BODY_CL or h.rs_state == RS_BODY_CHUNKED or h.rs_state == RS_BODY_EOF:
        progress |= h_resp_body(w, h)
        if h.st != HS_EXCH:
            return 1
        # a chunked body may stop inside a chunk-size line: bytes left that the
        # framer had room to read and could not use will never be completed
        if (h.rs_state != RS_DONE and b.pipe_len == 0 and (b.flags & HF_EOF) and h.rs_state != RS_BODY_EOF
                and (b.inb.len == 0 or (h.rs_state == RS_BODY_CHUNKED and hb_room(&h.outb) >= b.inb.len))):
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
        log_term(&h.c, TERM_CLIENT_ABORT)
        h_close(w, h, True)
        return 1
    elif (h.hflags & HF_EOF) and h.rq_state != RQ_DONE:
        log_term(&h.c, TERM_CLIENT_ABORT)
        h_close(w, h, True)          # the client went away in the middle of its request
        return 1
    return progress


cdef void h_tunnel(lb_worker *w, lb_hconn *h) noexcept nogil:
    """After a 101 reached the client: the connection continues as an L4 one,
    with whatever either side already sent first in line."""
    cdef lb_bconn *b = h.b
    cdef lb_conn *c = &h.c
    cdef epoll_event ev
    h_exchange_end(w, h)             # the upgrade was its answer; the tunnel is a connection of its own
    log_rec_give(w, h)
    tl_remove(&h.tphase)
    tl_remove(&h.tidle)
    tl_remove(&h.tresp)
    c.sk[SIDE_BACKEND] = b.sk        # the transport and its state go with the socket
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = <uint64_t><size_t>c | SIDE_CLIENT
    epoll_ctl(w.epfd, EPOLL_CTL_MOD, c.sk[SIDE_CLIENT].fd, &ev)
    ev.data.u64 = <uint64_t><size_t>c | SIDE_BACKEND
    epoll_ctl(w.epfd, EPOLL_CTL_MOD, c.sk[SIDE_BACKEND].fd, &ev)
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
    sock_reset(&b.sk)
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
    cdef int st, reason = 0
    cdef sockaddr_storage src, dst
    while h.c.state != CS_CLOSED and h.st != HS_TUNNEL:
        progress = h_read_client(w, h)
        if h.st == HS_PROXY:
            st = proxy_take(h.c.sk[SIDE_CLIENT].fd, (h.hflags & HF_RDHUP) != 0, &src, &dst)
            if st == PROXY_INCOMPLETE:
                return
            if st != PROXY_DONE:
                if st == PROXY_INVALID:
                    log_conn_failed(h, TERM_PROXY_FAILED)
                h_close(w, h, st == PROXY_INVALID)
                return
            if src.ss_family != 0:
                # the client the upstream proxy saw (LOCAL, UNKNOWN: keep ours)
                memcpy(&h.c.peer, &src, sizeof(sockaddr_storage))
                memcpy(&h.local, &dst, sizeof(sockaddr_storage))
                h_set_ip(h)
            if phase_accept(w, &w.listeners[h.c.listener], &h.c) != STEP_CONTINUE:
                h_close(w, h, True)  # refused on the address the header gave
                return
            h.hflags |= HF_READABLE  # what follows the header is still in the socket
            h_client_ready(w, h)
            progress = 1
            if h.c.state == CS_CLOSED:
                return
        if h.st == HS_TLS and h.tls_sniff:
            st = tls_sniff_plain_http(h.c.sk[SIDE_CLIENT].fd)
            if st == SNIFF_WAIT:
                return
            h.tls_sniff = 0
            if st == SNIFF_HTTP:
                tls_count_failure(w, TLS_FAIL_PLAIN_HTTP)
                tls_answer_plain_http(&h.c.sk[SIDE_CLIENT])
                log_conn_failed(h, TERM_TLS_FAILED)
                h_close(w, h, False)
                return
        if h.st == HS_TLS:
            st = tls_handshake(w, &h.c.sk[SIDE_CLIENT], &reason)
            if st == XPRT_WANT_READ or st == XPRT_WANT_WRITE:
                return
            if st != 1:
                if reason == TLS_FAIL_PLAIN_HTTP:
                    tls_answer_plain_http(&h.c.sk[SIDE_CLIENT])
                log_conn_failed(h, TERM_TLS_FAILED)
                h_close(w, h, False)
                return
            # the request may have come with the client's Finished
            h.hflags |= HF_READABLE | HF_WRITABLE
            progress = 1
            if reason == TLS_ALPN_H2:
                tl_remove(&h.tphase)
                if not h2_start(w, h):
                    h_close(w, h, True)
                    return
                continue
            h.st = HS_HEAD
            tl_append(&h.hl.req_timer, &h.tphase, w.now_ms, h)
            continue                 # read it
        if h.st == HS_HEAD:
            progress |= h_head(w, h)
        elif h.st == HS_EXCH:
            progress |= h_exchange(w, h)
        elif h.st == HS_H2:
            progress |= h2_run(w, h)
        elif h.st == HS_UPGRADE:
            progress |= h_flush_out(w, h)
            if h.c.state != CS_CLOSED and h.outb.len == 0:
                h_tunnel(w, h)
                return
        elif h.st == HS_CLOSING:
            progress |= h_flush_out(w, h)
            if h.c.state != CS_CLOSED and h.outb.len == 0:
                if h.h2role == H2_STREAM or (not h.errored and h.inb.len == 0 and not (h.hflags & HF_READABLE)):
                    # the client's last request was read whole and nothing
                    # more came: a plain close sends a FIN, not a reset
                    h_close(w, h, False)
                    return
                h.c.sk[SIDE_CLIENT].xp.shutw(&h.c.sk[SIDE_CLIENT])
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


cdef void h_client_ready(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The client's PROXY header (if any) is in: its TLS handshake on a TLS
    listener (handshake_timeout), else its first request head (the request
    timer started at accept goes on)."""
    cdef lb_tls_server *t = w.listeners[h.c.listener].tls
    if t == NULL:
        h.st = HS_HEAD
        return
    if not sock_tls_accept(&h.c.sk[SIDE_CLIENT], t):
        h_close(w, h, True)
        return
    h.st = HS_TLS
    h.tls_sniff = 1
    tl_append(&h.hl.tls_timer, &h.tphase, w.now_ms, h)


cdef int h_head(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef http_req *r = w.http.req
    cdef lb_http_listener *hl = h.hl
    cdef int st
    if h.inb.len == 0:
        if h.hflags & HF_EOF:
            h_close(w, h, False)
            return 1
        return 0
    if hl.h2c and h.h2role == 0 and h.inb.p[h.inb.off] == 80:
        # h2c with prior knowledge: the HTTP/2 connection preface ("PRI * HTTP/2.0 ...")
        st = h2_preface(h)
        if st == 2:
            tl_remove(&h.tphase)
            if not h2_start(w, h):
                h_close(w, h, True)
            return 1
        if st == 1 and not (h.hflags & HF_EOF):
            return 0
    st = http_parse_request_at(<const uint8_t *>h.inb.p + h.inb.off, h.inb.len, r, hl.max_target, hl.max_head,
                               hl.max_fields, &h.rq_scan)
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
