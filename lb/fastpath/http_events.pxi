# The http engine's events and timers: accepting clients, the epoll events of
# sessions and backend connections, and the sweep of every timeout.

# ---- events ----------------------------------------------------------------------------

cdef void http_on_accept(lb_worker *w, int li) noexcept nogil:
    cdef lb_listener_rt *l = &w.listeners[li]
    cdef lb_hconn *h
    cdef int fd, i
    for i in range(ACCEPT_BATCH):
        if not accept_room(w, l):
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
        sock_plain(&h.c.sk[SIDE_CLIENT], fd)
        h.c.listener = li
        h.c.state = CS_CONNECTING
        log_conn_start(w, &h.c)
        h.hl = l.http
        # TCP_NODELAY comes from the listening socket; the local address is
        # looked up only when a PROXY header needs it
        h_set_ip(h)
        h.st = HS_PROXY
        tl_append(&l.http.req_timer, &h.tphase, w.now_ms, h)
        met_conn_open(w, &h.c)
        if not accept_register(w, &h.c, fd, <uint64_t><size_t>h | TAG_SIGNAL):
            h_close(w, h, True)
        elif l.http.accept_proxy:
            pass                     # the accept phase runs once the PROXY header is read (h_run)
        elif phase_accept(w, l, &h.c) != STEP_CONTINUE:
            h_close(w, h, True)      # refused at the door, before a byte is read (a reset: no TIME_WAIT)
        else:
            h_client_ready(w, h)


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
    if (<uint32_t *>obj)[0] == KIND_H2B:
        h2b_on_event(w, <lb_h2b *>obj, events)
        return
    if (<uint32_t *>obj)[0] == KIND_MIRROR:
        mirror_on_event(w, <lb_mirror *>obj, events)
        return
    if (<uint32_t *>obj)[0] == KIND_CACHE_REFRESH:
        refresh_on_event(w, <lb_cache_refresh *>obj, events)
        return
    b = <lb_bconn *>obj
    if b.state == BS_CLOSED:
        return
    if b.state == BS_IDLE or b.state == BS_PRIVATE:
        # a parked connection has nothing to say: the backend closed it (or broke
        # it); but over TLS, a record that is not data (a session ticket sent
        # late) leaves it reusable
        if (events & EPOLLIN) and not (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) and sock_is_tls(&b.sk) \
                and tls_quiet(&b.sk):
            return
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            if b.state == BS_PRIVATE:
                b.h.priv = NULL
            bconn_close(w, b, False)
        else:
            b.flags = ev_flags(b.flags, events)
        return
    h = b.h
    if b.state == BS_CONNECTING:
        if bconn_connecting(w, h, b, events) != 1:
            return
        tl_remove(&b.tn)
        lb_store_u64(&w.bstats[b.slot].consecutive_failures, 0)
        b.state = BS_READY
        log_mark(w, &h.c, &h.c.lg.t_connect)
        if sock_is_tls(&b.sk):
            # what came with the backend's Finished is OpenSSL's now; the
            # first read or write that blocks clears these again
            events |= EPOLLIN | EPOLLOUT
    b.flags = ev_flags(b.flags, events)
    h_read_backend(w, h)
    conn_queue(w, &h.c)


cdef int bconn_connecting(lb_worker *w, lb_hconn *h, lb_bconn *b, uint32_t events) noexcept nogil:
    """An event on a backend connection being made: 1 ready, 0 not yet, -1
    failed (the request goes to another backend when it can). With a TLS pool,
    ready means handshaken, within connect_timeout: a refused certificate is a
    failed connect, which passive ejection counts."""
    cdef lb_pool_rt *p = &w.pools[b.pool]
    cdef int rc
    if events & (EPOLLERR | EPOLLHUP):
        h_backend_failed(w, h, False, True)
        conn_queue(w, &h.c)
        return -1
    if not sock_is_tls(&b.sk):
        if not (events & EPOLLOUT):
            return 0
        if not bconn_send_proxy(w, h, b) or (p.tls != NULL and not sock_tls_connect(w, p, &b.sk, b.slot)):
            h_backend_failed(w, h, False, True)
            conn_queue(w, &h.c)
            return -1
        if p.tls == NULL:
            return 1
    rc = tls_client_handshake(&b.sk)
    if rc == XPRT_WANT_READ or rc == XPRT_WANT_WRITE:
        return 0
    if rc != 1:
        h_backend_failed(w, h, False, True)
        conn_queue(w, &h.c)
        return -1
    return 1


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
    mirror_timers_sweep(w)
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
            elif h.st == HS_H2:
                h2_idle_close(w, h)  # a header block that did not come whole in time
            else:
                h_error(w, h, 408)
                if h.c.state != CS_CLOSED:
                    conn_queue(w, &h.c)  # no event will come to send the page
        while True:
            n = tl_expired(&hl.tls_timer, now)
            if n == NULL:
                break
            tls_count_failure(w, TLS_FAIL_TIMEOUT)
            log_conn_failed(<lb_hconn *>n.owner, TERM_TLS_FAILED)
            h_close(w, <lb_hconn *>n.owner, False)
        while True:
            n = tl_expired(&hl.ka_timer, now)
            if n == NULL:
                break
            h = <lb_hconn *>n.owner
            if h.st == HS_H2:
                h2_idle_close(w, h)
            else:
                h_close(w, h, False)
        while True:
            n = tl_expired(&hl.idle_timer, now)
            if n == NULL:
                break
            h = <lb_hconn *>n.owner
            last = h.c.last_ms if h.c.last_ms > h.b_last_ms else h.b_last_ms
            if last + hl.idle_timer.timeout_ms <= now:
                lb_add_u64(&w.stats.idle_timeouts, 1)
                log_term(&h.c, TERM_CLIENT_TIMEOUT)
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
                log_term(&h.c, TERM_SERVER_TIMEOUT)
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
            if (<uint32_t *>n.owner)[0] == KIND_H2B:
                h2b_close(w, <lb_h2b *>n.owner)
            else:
                bconn_close(w, <lb_bconn *>n.owner, False)
    if w.http != NULL:
        cache_waits_sweep(w)         # requests waiting for another's fetch of their key
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
            deadline = tl_deadline(&hl.tls_timer, deadline)
            deadline = tl_deadline(&hl.idle_timer, deadline)
    for i in range(w.n_pools):
        hp = w.pools[i].http
        if hp != NULL:
            deadline = tl_deadline(&hp.connect_timer, deadline)
            deadline = tl_deadline(&hp.resp_timer, deadline)
            deadline = tl_deadline(&hp.idle_timer, deadline)
    if w.http != NULL:
        deadline = tl_deadline(&w.http.linger_timer, deadline)
        deadline = cache_next_deadline(w, deadline)
        deadline = mirror_next_deadline(w, deadline)
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
            if (<lb_hconn *>hl.ka_timer.head.owner).st == HS_H2:
                h2_idle_close(w, <lb_hconn *>hl.ka_timer.head.owner)
            else:
                h_close(w, <lb_hconn *>hl.ka_timer.head.owner, False)
    if w.http != NULL:
        h2_stop_all(w)               # busy HTTP/2 connections: GOAWAY, their streams finish
