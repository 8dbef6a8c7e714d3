# Mirroring (docs/splits.md): a share of a listener's or route's requests
# copied to a shadow pool, fire and forget.
#
# The `mirror` step draws the request; when the request goes to its backend
# whole (no body still to come, within max_body), its bytes as sent there are
# copied, with Connection: close, onto a connection of the copy's own. The
# copy's answer is read and thrown away; the copy ends at the shadow's close
# or at its timeout, whichever comes first. Nothing of the client's exchange
# waits on it or hears of it: a slow, failing or absent shadow costs the
# client nothing. At most max_concurrent copies are in flight per worker;
# requests over that are not copied (nginx's `mirror` holds the client until
# the copy's answer came: this never does).

cdef enum:
    MS_CONNECTING = 1
    MS_SENDING = 2
    MS_DRAINING = 3                  # sent whole: the answer is read and thrown away
    MS_CLOSED = 4
    MIRROR_READ = 16384

cdef const char *MIRROR_CLOSE = b"Connection: close\r\n"


cdef int step_mirror(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Request phase: whether this request is copied (its route's mirror, or
    the listener's); the copy is made when the request is sent."""
    cdef int32_t mi = h.hl.mirror
    if h.route >= 0 and h.hl.routes[h.route].mirror >= 0:
        mi = h.hl.routes[h.route].mirror
    if mi >= 0 and (lb_splitmix64(&w.rng) >> 32) < w.http.mirrors[mi].threshold:
        h.mirror = mi
    return STEP_CONTINUE


def wants_mirror(listener):
    return listener.mode == "http" and (getattr(listener, "mirror", None) is not None
                                        or any(getattr(rt, "mirror", None) is not None for rt in listener.routes))


cdef void mirror_close(lb_worker *w, lb_mirror *m, bint failed) noexcept nogil:
    if m.state == MS_CLOSED:
        return
    if failed:
        lb_add_u64(&m.rt.stats.failed, 1)
    close(m.fd)                      # (which takes it out of the epoll set)
    w.fds -= 1
    lb_store_i64(&w.stats.fds, w.fds)
    tl_remove(&m.tn)
    free(m.buf)
    m.buf = NULL
    m.rt.active -= 1
    m.state = MS_CLOSED
    m.next = w.http.mirror_closed    # freed once this turn's events are done
    w.http.mirror_closed = m


cdef void mirror_start(lb_worker *w, lb_hconn *h) noexcept nogil:
    """Copy the request, as it is about to go to its backend, to the mirror's
    pool. Only a request whole in upb is copied (no body still to come)."""
    cdef lb_mirror_rt *rt = &w.http.mirrors[h.mirror]
    cdef lb_pool_rt *p = &w.pools[rt.pool]
    cdef lb_mirror *m
    cdef const char *src = h.upb.p + h.upb.off
    cdef uint32_t n = h.upb.len, line = 0, extra = <uint32_t>strlen(MIRROR_CLOSE)
    cdef int32_t slot
    cdef int fd
    cdef epoll_event ev
    h.mirror = -1
    if h.rq_state != RQ_DONE or not h.replayable or n == 0 or n > rt.max_body or rt.active >= rt.max_concurrent:
        lb_add_u64(&rt.stats.dropped, 1)
        return
    while line + 1 < n and not (src[line] == 13 and src[line + 1] == 10):
        line += 1
    if line + 1 >= n:
        lb_add_u64(&rt.stats.dropped, 1)
        return
    slot = p.ops.pick(w, p, &h.c, h.key)
    if slot < 0:
        lb_add_u64(&rt.stats.failed, 1)
        return
    fd = backend_connect(w, slot)
    if fd < 0:
        lb_add_u64(&rt.stats.failed, 1)
        return
    m = w.http.mirror_free
    if m != NULL:
        w.http.mirror_free = m.next
    else:
        m = <lb_mirror *>malloc(sizeof(lb_mirror))
    if m != NULL:
        memset(m, 0, sizeof(lb_mirror))
        m.buf = <char *>malloc(n + extra)
    if m == NULL or m.buf == NULL:
        if m != NULL:
            m.next = w.http.mirror_free
            w.http.mirror_free = m
        close(fd)
        lb_add_u64(&rt.stats.failed, 1)
        return
    # the request line, then lb's Connection: close, then the rest as sent
    memcpy(m.buf, src, line + 2)
    memcpy(m.buf + line + 2, MIRROR_CLOSE, extra)
    memcpy(m.buf + line + 2 + extra, src + line + 2, n - line - 2)
    m.kind = KIND_MIRROR
    m.state = MS_CONNECTING
    m.fd = fd
    m.rt = rt
    m.len = n + extra
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = <uint64_t><size_t>m | TAG_SIGNAL
    w.fds += 1
    lb_store_i64(&w.stats.fds, w.fds)
    rt.active += 1
    lb_add_u64(&rt.stats.copies, 1)
    tl_append(&rt.timer, &m.tn, w.now_ms, m)
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
        mirror_close(w, m, True)


cdef void mirror_on_event(lb_worker *w, lb_mirror *m, uint32_t events) noexcept nogil:
    cdef char sink[MIRROR_READ]
    cdef ssize_t k
    if m.state == MS_CLOSED:
        return
    if events & EPOLLERR:
        mirror_close(w, m, m.state != MS_DRAINING)
        return
    if m.state != MS_DRAINING and (events & EPOLLOUT):
        m.state = MS_SENDING
        while m.sent < m.len:
            k = send(m.fd, m.buf + m.sent, m.len - m.sent, MSG_NOSIGNAL | MSG_DONTWAIT)
            if k < 0:
                if errno == EAGAIN:
                    break
                mirror_close(w, m, True)
                return
            m.sent += <uint32_t>k
        if m.sent == m.len:
            free(m.buf)
            m.buf = NULL
            m.state = MS_DRAINING
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP):
        while True:
            k = recv(m.fd, sink, MIRROR_READ, MSG_DONTWAIT)
            if k > 0:
                continue
            if k < 0 and (errno == EAGAIN):
                return
            mirror_close(w, m, m.state != MS_DRAINING)   # the answer ended (or the shadow closed early)
            return


cdef void mirror_timers_sweep(lb_worker *w) noexcept nogil:
    cdef uint32_t i
    cdef lb_tnode *n
    for i in range(w.http.n_mirrors):
        while True:
            n = tl_expired(&w.http.mirrors[i].timer, w.now_ms)
            if n == NULL:
                break
            mirror_close(w, <lb_mirror *>n.owner, True)


cdef uint64_t mirror_next_deadline(lb_worker *w, uint64_t deadline) noexcept nogil:
    cdef uint32_t i
    for i in range(w.http.n_mirrors):
        deadline = tl_deadline(&w.http.mirrors[i].timer, deadline)
    return deadline


cdef void mirror_free_closed(lb_worker *w) noexcept nogil:
    cdef lb_mirror *m = w.http.mirror_closed
    cdef lb_mirror *n
    w.http.mirror_closed = NULL
    while m != NULL:
        n = m.next
        m.next = w.http.mirror_free
        w.http.mirror_free = m
        m = n


def mirror_sites(listeners):
    """((listener name, route index or -1), config.Mirror) of every mirror, in
    config order: the order of their counters in the mirror_stats region."""
    sites, seen = [], set()
    for listener in listeners:
        if listener.name in seen:
            continue                 # (a worker has a socket per bind address)
        seen.add(listener.name)
        if getattr(listener, "mirror", None) is not None:
            sites.append(((listener.name, -1), listener.mirror))
        for i, route in enumerate(listener.routes):
            if getattr(route, "mirror", None) is not None:
                sites.append(((listener.name, i), route.mirror))
    return sites


def mirrors_region_size(d):
    return sizeof(shm_mirror_head) + d.rows * d.mirrors * sizeof(shm_mirror_stats)


cdef int mirrors_init(Shm shm, uint32_t n_mirrors) except -1:
    (<shm_mirror_head *>shm.region_addr("mirror_stats")).n_mirrors = n_mirrors
    return 0


def mirror_counts(Shm shm, rows=None):
    """Each mirror's counters, summed over the rows (default all), in config order."""
    cdef shm_mirror_head *mh = <shm_mirror_head *>shm.region_addr("mirror_stats")
    cdef shm_mirror_stats *st = <shm_mirror_stats *>(<char *>mh + sizeof(shm_mirror_head))
    cdef shm_mirror_stats *e
    out = []
    for i in range(mh.n_mirrors):
        c = {"copies": 0, "dropped": 0, "failed": 0}
        for r in (range(shm.hdr.n_rows) if rows is None else rows):
            e = &st[<uint64_t>r * mh.n_mirrors + i]
            c["copies"] += lb_load_u64(&e.copies)
            c["dropped"] += lb_load_u64(&e.dropped)
            c["failed"] += lb_load_u64(&e.failed)
        out.append(c)
    return out


cdef dict mirrors_worker_init(lb_worker *w, Shm shm, uint32_t row, listeners, dict pool_index):
    """Every mirror of the worker's listeners and their routes; the index of
    each by (listener name, route index or -1)."""
    cdef lb_mirror_rt *rt
    cdef shm_mirror_head *mh = <shm_mirror_head *>shm.region_addr("mirror_stats")
    cdef shm_mirror_stats *st = <shm_mirror_stats *>(<char *>mh + sizeof(shm_mirror_head))
    cdef shm_mirror_stats *private
    sites = mirror_sites(listeners)
    if mh.n_mirrors != len(sites):
        # a region made for another config (a test's): count where nobody reads
        private = <shm_mirror_stats *>calloc(max(1, len(sites)), sizeof(shm_mirror_stats))
        if private == NULL:
            raise MemoryError()
        st = private
        row = 0
    w.http.n_mirrors = len(sites)
    w.http.mirrors = <lb_mirror_rt *>calloc(max(1, len(sites)), sizeof(lb_mirror_rt))
    if w.http.mirrors == NULL:
        raise MemoryError()
    for i, (_, m) in enumerate(sites):
        rt = &w.http.mirrors[i]
        rt.pool = pool_index[m.pool]
        rt.threshold = min(1 << 32, round(m.percent / 100 * (1 << 32)))
        rt.max_concurrent = m.max_concurrent
        rt.max_body = m.max_body
        rt.timer.timeout_ms = max(1, <uint64_t>(m.timeout * 1000))
        rt.stats = &st[<uint64_t>row * len(sites) + i]
    return {key: i for i, (key, _) in enumerate(sites)}
