# Connections, their free lists, the buffer and pipe pools, and timer lists.
#
# All functions here run with the GIL released and never allocate Python objects.

cdef enum:
    CONN_SLAB = 64
    BUF_SIZE = 16384             # recv/send buffer; see forward.pxi for the splice switch-over
    FREE_BUFS_MAX = 256
    FREE_PIPES_MAX = 64
    PIPE_SIZE = 262144           # F_SETPIPE_SZ: fewer splice calls per MiB (see forward.pxi)


cdef inline uint64_t now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


# ---- timer lists ------------------------------------------------------------
# Each list holds connections with the same timeout, so appending keeps it ordered
# by deadline and a sweep looks only at the head: O(1) per connection, no heap.

cdef inline void list_append(lb_list *l, lb_conn *c, uint64_t when) noexcept nogil:
    c.timer_list = l
    c.queued_ms = when
    c.next = NULL
    c.prev = l.tail
    if l.tail != NULL:
        l.tail.next = c
    else:
        l.head = c
    l.tail = c


cdef inline void list_remove(lb_conn *c) noexcept nogil:
    cdef lb_list *l = c.timer_list
    if l == NULL:
        return
    if c.prev != NULL:
        c.prev.next = c.next
    else:
        l.head = c.next
    if c.next != NULL:
        c.next.prev = c.prev
    else:
        l.tail = c.prev
    c.prev = NULL
    c.next = NULL
    c.timer_list = NULL


# ---- connections --------------------------------------------------------------

cdef lb_conn *conn_alloc(lb_worker *w) noexcept nogil:
    cdef lb_conn *c = w.free_conns
    cdef int i
    if c == NULL:
        # Slabs are never given back: a worker's peak is its working set, and
        # reusing the same memory keeps RSS flat under churn.
        c = <lb_conn *>calloc(CONN_SLAB, sizeof(lb_conn))
        if c == NULL:
            return NULL
        for i in range(CONN_SLAB - 1):
            c[i].next = &c[i + 1]
        c[CONN_SLAB - 1].next = NULL
    w.free_conns = c.next
    memset(c, 0, sizeof(lb_conn))
    sock_reset(&c.sk[0])
    sock_reset(&c.sk[1])
    c.pipe[0][0] = -1
    c.pipe[0][1] = -1
    c.pipe[1][0] = -1
    c.pipe[1][1] = -1
    c.slot = -1
    return c


cdef inline void conn_release(lb_worker *w, lb_conn *c) noexcept nogil:
    log_conn_free(c)
    c.state = CS_FREE
    c.next = w.free_conns
    w.free_conns = c


cdef void conns_free_closed(lb_worker *w) noexcept nogil:
    """Closed connections are freed only after the batch of events that closed
    them, since a later event of the same batch may still point at them."""
    cdef lb_conn *c = w.closed
    cdef lb_conn *n
    w.closed = NULL
    while c != NULL:
        n = c.next
        if c.flags & (F_QUEUED | F_SKM_DRAIN):
            # still linked on the pending (or sockmap draining) list: release it once that run dropped it
            c.next = w.closed
            w.closed = c
        elif c.kind == KIND_HTTP:
            hconn_release(w, <lb_hconn *>c)
        elif c.kind == KIND_H2B:
            h2b_free(<lb_h2b *>c)
        else:
            conn_release(w, c)
        c = n


# ---- buffers and pipes --------------------------------------------------------

cdef char *buf_take(lb_worker *w) noexcept nogil:
    cdef lb_free_buf *b = w.free_bufs
    if b != NULL:
        w.free_bufs = b.next
        w.n_free_bufs -= 1
        return <char *>b
    return <char *>malloc(BUF_SIZE)


cdef void buf_give(lb_worker *w, char *p) noexcept nogil:
    cdef lb_free_buf *b
    if w.n_free_bufs >= FREE_BUFS_MAX:
        free(p)
        return
    b = <lb_free_buf *>p
    b.next = w.free_bufs
    w.free_bufs = b
    w.n_free_bufs += 1


cdef int pipe_take(lb_worker *w, int fds[2]) noexcept nogil:
    if w.n_free_pipes > 0:
        w.n_free_pipes -= 1
        fds[0] = w.free_pipes[w.n_free_pipes].fds[0]
        fds[1] = w.free_pipes[w.n_free_pipes].fds[1]
        return 0
    if w.fds + 2 > w.fd_limit + 64:
        return -1
    if pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0:
        return -1
    fcntl(fds[1], F_SETPIPE_SZ, w.pipe_size)   # (a pipe it did not grow works, with fewer bytes a call)
    w.fds += 2
    lb_store_i64(&w.stats.fds, w.fds)
    return 0


cdef void pipe_give(lb_worker *w, int fds[2], bint dirty) noexcept nogil:
    # A pipe that still holds bytes of a dead connection must not serve another.
    if dirty or w.n_free_pipes >= FREE_PIPES_MAX:
        close(fds[0])
        close(fds[1])
        w.fds -= 2
        lb_store_i64(&w.stats.fds, w.fds)
    else:
        w.free_pipes[w.n_free_pipes].fds[0] = fds[0]
        w.free_pipes[w.n_free_pipes].fds[1] = fds[1]
        w.n_free_pipes += 1
    fds[0] = -1
    fds[1] = -1


# ---- accounting -------------------------------------------------------------

cdef inline shm_backend_stats *slot_stats(lb_worker *w, int32_t slot) noexcept nogil:
    return &w.bstats[slot]


# ---- overload: when the listeners accept -----------------------------------------
#
# A paused listener is out of the epoll set: its clients wait in the kernel's
# accept queue (backlog), and only what that queue cannot hold is refused, by
# the kernel. No established client is ever closed to make room.

cdef enum:
    PAUSE_FDS = 1                    # this worker's fd budget is spent (before accept would fail)
    PAUSE_FD_ERROR = 2               # accept(2) or socket(2) failed anyway (EMFILE, ENFILE, ENOBUFS, ENOMEM)
    PAUSE_LIMIT = 4                  # global.max_connections reached, node-wide
    FD_ERROR_RETRY_MS = 100          # after a failure for fds, try again this soon (HAProxy: 100 ms)
    LIMIT_POLL_MS = 10               # at a node-wide limit, look this often whether another worker freed room


cdef void listeners_sync(lb_worker *w) noexcept nogil:
    """Put each listening socket in the epoll set or take it out, as the pause
    reasons say. A level-triggered listener out of the set costs nothing while
    its queue fills: no wake-up, no accept that fails."""
    cdef bint open_ = w.pause == 0 and not w.stopping
    cdef bint want
    cdef int i
    cdef epoll_event ev
    cdef lb_listener_rt *l
    for i in range(w.n_listeners):
        l = &w.listeners[i]
        want = open_ and not l.limited and l.fd >= 0
        if want and not l.armed:
            ev.events = EPOLLIN
            ev.data.u64 = (<uint64_t>i << 2) | TAG_LISTENER
            if epoll_ctl(w.epfd, EPOLL_CTL_ADD, l.fd, &ev) == 0:
                l.armed = 1
        elif not want and l.armed:
            epoll_ctl(w.epfd, EPOLL_CTL_DEL, l.fd, NULL)
            l.armed = 0
    lb_store_u64(&w.stats.paused_now, w.pause != 0 or w.n_limited != 0)


cdef inline int64_t node_active(lb_worker *w) noexcept nogil:
    """Client connections open on this node (this generation): every row's gauge."""
    cdef int64_t n = 0
    cdef uint32_t r
    for r in range(w.n_rows):
        n += lb_load_i64(&w.wstats_all[r].active)
    return n


cdef inline int64_t listener_active(lb_worker *w, uint32_t cfg) noexcept nogil:
    cdef int64_t n = 0
    cdef uint32_t r
    for r in range(w.n_rows):
        n += lb_load_i64(&w.lstats_all[<uint64_t>r * w.n_cfg_listeners + cfg].active)
    return n


cdef void accept_pause(lb_worker *w, uint32_t reason) noexcept nogil:
    if w.pause & reason:
        return
    w.pause |= reason
    if reason == PAUSE_LIMIT:
        lb_add_u64(&w.stats.accept_limited, 1)
    else:
        lb_add_u64(&w.stats.accept_paused, 1)
    listeners_sync(w)


cdef bint fds_available(lb_worker *w) noexcept nogil:
    """Whether two fds (a client's and its backend's) can be had now."""
    cdef int a = dup(w.epfd)
    cdef int b = dup(w.epfd)
    if a >= 0:
        close(a)
    if b >= 0:
        close(b)
    return a >= 0 and b >= 0


cdef void accept_fd_error(lb_worker *w) noexcept nogil:
    """accept(2) or a backend's socket(2) found no fd (or no memory for one):
    stop accepting until this worker has closed two fds (a client's and its
    backend's), or, looked at every FD_ERROR_RETRY_MS, two are free anyway."""
    lb_add_u64(&w.stats.accept_fd_errors, 1)
    w.fds_at_error = w.fds
    w.fd_retry_ms = w.now_ms + FD_ERROR_RETRY_MS
    accept_pause(w, PAUSE_FD_ERROR)


cdef void listener_limit(lb_worker *w, lb_listener_rt *l) noexcept nogil:
    if l.limited:
        return
    l.limited = 1
    w.n_limited += 1
    lb_add_u64(&w.stats.accept_limited, 1)
    lb_add_u64(&w.lstats[l.cfg_index].limited, 1)
    listeners_sync(w)


cdef void accept_recheck(lb_worker *w) noexcept nogil:
    """Lift the pauses whose reason has gone. Called when a connection of this
    worker closes and at each turn of the loop while any pause holds (another
    worker's close frees room under a node-wide limit too)."""
    cdef uint32_t before = w.pause
    cdef uint32_t n_before = w.n_limited
    cdef int i
    cdef lb_listener_rt *l
    if w.pause & PAUSE_FDS and w.fds < w.fd_resume:
        w.pause &= ~(<uint32_t>PAUSE_FDS)
    if w.pause & PAUSE_FD_ERROR:
        if w.fds + 2 <= w.fds_at_error:
            w.pause &= ~(<uint32_t>PAUSE_FD_ERROR)
        elif w.now_ms >= w.fd_retry_ms:
            # fds freed elsewhere (another process, under ENFILE; a raised
            # RLIMIT_NOFILE): look before accepting, since a client accepted
            # without an fd for its backend would only be closed again
            if fds_available(w):
                w.pause &= ~(<uint32_t>PAUSE_FD_ERROR)
            else:
                w.fd_retry_ms = w.now_ms + FD_ERROR_RETRY_MS
    if w.pause & PAUSE_LIMIT and node_active(w) < w.max_conns:
        w.pause &= ~(<uint32_t>PAUSE_LIMIT)
    if w.n_limited:
        for i in range(w.n_listeners):
            l = &w.listeners[i]
            if l.limited and listener_active(w, l.cfg_index) < l.max_conns:
                l.limited = 0
                w.n_limited -= 1
    if w.pause != before or w.n_limited != n_before:
        listeners_sync(w)


cdef inline bint accept_room(lb_worker *w, lb_listener_rt *l) noexcept nogil:
    """Whether l may accept one more client now; if not, the reason pauses it.
    Each client costs two fds (client, backend): stop before running out."""
    if not l.armed:
        return False                 # paused by the client just accepted (its backend found no fd)
    if w.fds + 2 > w.fd_limit:
        accept_pause(w, PAUSE_FDS)
        return False
    if w.max_conns and node_active(w) >= w.max_conns:
        accept_pause(w, PAUSE_LIMIT)
        return False
    if l.max_conns and listener_active(w, l.cfg_index) >= l.max_conns:
        listener_limit(w, l)
        return False
    return True


cdef inline void conn_count_open(lb_worker *w, lb_conn *c) noexcept nogil:
    cdef shm_listener_stats *ls = &w.lstats[w.listeners[c.listener].cfg_index]
    lb_add_u64(&w.stats.accepted, 1)
    lb_add_i64(&w.stats.active, 1)
    lb_add_u64(&ls.accepted, 1)
    lb_add_i64(&ls.active, 1)


cdef inline void conn_count_closed(lb_worker *w, lb_conn *c) noexcept nogil:
    """A client connection ended (its fds are closed): the gauges, then the
    pauses that this may lift."""
    lb_add_i64(&w.stats.active, -1)
    lb_add_i64(&w.lstats[w.listeners[c.listener].cfg_index].active, -1)
    lb_store_i64(&w.stats.fds, w.fds)
    if w.pause or w.n_limited:
        accept_recheck(w)


cdef void conn_close(lb_worker *w, lb_conn *c, bint reset) noexcept nogil:
    """Close both sides and give back everything the connection held.
    reset: close with SO_LINGER 0 so the peer sees the RST the other side sent."""
    cdef int side, d
    if c.state == CS_CLOSED or c.state == CS_FREE:
        return
    if c.kind == KIND_L4:
        if c.lg.term == TERM_OK:
            if c.state == CS_TLS_WAIT and w.listeners[c.listener].passthrough == 0:
                c.lg.term = TERM_TLS_FAILED
            elif c.state == CS_PROXY_WAIT:
                c.lg.term = TERM_PROXY_FAILED
            elif c.state == CS_TLS_WAIT:
                c.lg.term = TERM_CLIENT_ABORT    # passthrough: gone, or idle, before its ClientHello
            elif w.stopping == 2:
                c.lg.term = TERM_STOPPING
        if c.skm == SKM_IN:
            skm_leave(w, c)          # (first: it counts the kernel's last bytes for the log record)
        phase_end(w, c)              # an http tunnel's exchange ended at its upgrade
    list_remove(c)
    for side in range(2):
        if c.sk[side].fd >= 0:
            sock_close(&c.sk[side], reset)
            w.fds -= 1
    for d in range(2):
        if c.buf[d] != NULL:
            buf_give(w, c.buf[d])
            c.buf[d] = NULL
        if c.pipe[d][0] >= 0:
            pipe_give(w, c.pipe[d], c.pipe_len[d] != 0)
    if c.slot >= 0:
        conn_backend_drop(w, c)
    c.state = CS_CLOSED
    c.next = w.closed
    w.closed = c
    met_conn_closed(w, c)
    conn_count_closed(w, c)


cdef inline void conn_backend_take(lb_worker *w, lb_conn *c, int32_t slot) noexcept nogil:
    cdef lb_pool_rt *p = &w.pools[c.pool]
    c.slot = slot
    lb_add_i64(&w.bstats[slot].active, 1)
    lb_add_u64(&w.bstats[slot].total, 1)
    lb_add_i64(&w.pstats_all[<uint64_t>w.row * w.hdr.n_pools + p.index].active, 1)
    if p.ops.take != NULL:
        p.ops.take(w, p, slot)


cdef inline void conn_backend_drop(lb_worker *w, lb_conn *c) noexcept nogil:
    cdef lb_pool_rt *p = &w.pools[c.pool]
    lb_add_i64(&w.bstats[c.slot].active, -1)
    lb_add_i64(&w.pstats_all[<uint64_t>w.row * w.hdr.n_pools + p.index].active, -1)
    if p.ops.drop != NULL:
        p.ops.drop(w, p, c.slot)
    c.slot = -1
