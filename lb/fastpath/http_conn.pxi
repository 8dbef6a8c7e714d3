# The http engine's connections and what they hold: the timer lists of its
# timeouts, buffers from the worker's pool, client sessions (lb_hconn) and
# backend connections (lb_bconn) from free lists, and the per-backend
# keep-alive pool of idle backend connections (most recent first).
#
# All of it runs with the GIL released and allocates no Python object.

cdef enum:
    HF_READABLE = 1
    HF_WRITABLE = 2
    HF_EOF = 4
    HF_RDHUP = 8
    HF_ERR = 16


cdef enum:
    BS_CONNECTING = 1
    BS_READY = 2
    BS_IDLE = 3
    BS_CLOSED = 4
    BS_PRIVATE = 5                   # idle, but only for the client it was opened for (send_proxy)

cdef enum:
    HBUF_SIZE = 65536                # http buffers: a whole head (at most 32 KiB) plus room to rewrite it
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
    sock_reset(&h.c.sk[0])
    sock_reset(&h.c.sk[1])
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
    h.split = -1
    h.mirror = -1
    return h


cdef inline void hconn_release(lb_worker *w, lb_hconn *h) noexcept nogil:
    log_rec_give(w, h)
    log_conn_free(&h.c)
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
    sock_reset(&b.sk)
    b.pipe[0] = -1
    b.pipe[1] = -1
    b.slot = -1
    return b


cdef void http_free_closed(lb_worker *w) noexcept nogil:
    """Backend connections closed in this turn, freed once its events are done."""
    cdef lb_bconn *b = w.http.closed_b
    cdef lb_bconn *n
    mirror_free_closed(w)
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
    cdef bint own_fd = b.sk.fd >= 0     # (a stream of an HTTP/2 connection has none)
    if b.state == BS_CLOSED:
        return
    if b.state == BS_IDLE:
        idle_unlink(w, b)
    tl_remove(&b.tn)
    sock_close(&b.sk, reset)
    if own_fd:
        w.fds -= 1
        lb_store_i64(&w.stats.fds, w.fds)
    if w.pause:
        accept_recheck(w)
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
    never saw EAGAIN): one peek settles it. It looks at the bare socket: any
    byte there, whatever the transport, means more than the response came."""
    cdef char c
    if b.inb.len or b.pipe_len or (b.flags & (HF_EOF | HF_RDHUP | HF_ERR)):
        return False
    if b.flags & HF_READABLE:
        if recv(b.sk.fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 and (errno == EAGAIN or errno == EINTR):
            b.flags &= ~HF_READABLE
            return True
        if sock_is_tls(&b.sk) and tls_quiet(&b.sk):
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
    A fresh socket's send buffer is empty, so the header goes out whole or not at
    all. It precedes any transport on the wire: sent on the bare socket."""
    cdef char hdr[256]
    cdef int n
    cdef socklen_t alen = sizeof(sockaddr_storage)
    cdef uint8_t v = w.pools[b.pool].http.send_proxy
    if v == 0:
        return True
    if h.local.ss_family == 0:
        getsockname(h.c.sk[SIDE_CLIENT].fd, <sockaddr *>&h.local, &alen)
    n = proxy_build(v, &h.c.peer, &h.local, hdr, sizeof(hdr))
    if n <= 0:
        return False
    return send(b.sk.fd, hdr, n, MSG_NOSIGNAL | MSG_DONTWAIT) == n
