# Connecting to a backend: pick, non-blocking connect, and the next choice on
# refusal, reset or timeout, up to the pool's retries, before the client is closed.

cdef int backend_sockaddr(shm_backend *b, sockaddr_storage *ss) noexcept nogil:
    """Copy a backend's address under its seqlock. Returns the sockaddr length."""
    cdef uint32_t s1
    cdef uint16_t family, port
    cdef uint8_t addr[16]
    cdef sockaddr_in *sin
    cdef sockaddr_in6 *sin6
    while True:
        s1 = lb_acquire_u32(&b.seq)
        if s1 & 1:
            continue
        family = b.family
        port = b.port
        memcpy(addr, b.addr, 16)
        lb_fence_acquire()
        if lb_load_u32(&b.seq) == s1:
            break
    memset(ss, 0, sizeof(sockaddr_storage))
    if family == AF_INET6:
        sin6 = <sockaddr_in6 *>ss
        sin6.sin6_family = AF_INET6
        sin6.sin6_port = htons(port)
        memcpy(sin6.sin6_addr.s6_addr, addr, 16)
        return sizeof(sockaddr_in6)
    sin = <sockaddr_in *>ss
    sin.sin_family = AF_INET
    sin.sin_port = htons(port)
    memcpy(&sin.sin_addr.s_addr, addr, 4)
    return sizeof(sockaddr_in)


cdef enum:
    CONNECT_NO_FD = -2


cdef int backend_connect(lb_worker *w, int32_t slot) noexcept nogil:
    """Start a non-blocking connect. Returns the fd (connect in progress or done),
    -1 when it failed at once (the caller counts it and tries the next), or
    CONNECT_NO_FD when this process has no fd for it: no fault of the backend's,
    which must not be counted against it (a passive ejection of a healthy pool)."""
    cdef sockaddr_storage ss
    cdef int one = 1
    cdef int len = backend_sockaddr(&w.backends[slot], &ss)
    cdef int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
            accept_fd_error(w)
            return CONNECT_NO_FD
        return -1
    # No TCP_QUICKACK = 0 here (HAProxy sets it only when a request is already
    # waiting to be sent): with it, the handshake's last ACK waits for data, and
    # a backend that speaks first (SMTP, MySQL, a greeting) never accepts the
    # connection while the client waits for it to speak.
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    if connect(fd, <sockaddr *>&ss, len) != 0 and errno != EINPROGRESS:
        close(fd)
        return -1
    return fd


cdef void conn_count_failure(lb_worker *w, int32_t slot, bint timeout) noexcept nogil:
    cdef shm_backend_stats *bs = &w.bstats[slot]
    if timeout:
        lb_add_u64(&bs.connect_timeouts, 1)
    else:
        lb_add_u64(&bs.connect_errors, 1)
    lb_add_u64(&bs.consecutive_failures, 1)


cdef void conn_connect(lb_worker *w, lb_conn *c) noexcept nogil:
    """Connect c to the next backend its pool picks; close c when none is left."""
    cdef lb_pool_rt *p = &w.pools[c.pool]
    cdef int32_t slot
    cdef int fd
    cdef epoll_event ev
    cdef uint64_t key = conn_key_hash(c, p.shm.hash_key)
    while c.tries <= <int32_t>p.retries:
        slot = p.ops.pick(w, p, c, key)
        if slot < 0:
            break
        c.tried[c.tries] = slot
        c.tries += 1
        fd = backend_connect(w, slot)
        if fd == CONNECT_NO_FD:
            break
        if fd < 0:
            conn_count_failure(w, slot, False)
            c.lg.term = TERM_BACKEND_REFUSED
            continue
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        ev.data.u64 = <uint64_t><size_t>c | SIDE_BACKEND
        if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
            close(fd)
            break
        sock_plain(&c.sk[SIDE_BACKEND], fd)
        c.flags &= ~((F_READABLE | F_WRITABLE | F_EOF | F_SHUT | F_RDHUP) << SIDE_BACKEND)
        w.fds += 1
        lb_store_i64(&w.stats.fds, w.fds)
        conn_backend_take(w, c, slot)
        c.state = CS_CONNECTING
        list_append(&p.connecting, c, w.now_ms)
        return
    lb_add_u64(&w.stats.no_backend, 1)
    log_term(c, TERM_NO_BACKEND)     # (unless a connect failed: that says more)
    conn_close(w, c, False)


cdef void conn_connect_failed(lb_worker *w, lb_conn *c, bint timeout) noexcept nogil:
    conn_count_failure(w, c.slot, timeout)
    c.lg.term = TERM_CONNECT_TIMEOUT if timeout else TERM_BACKEND_REFUSED   # the last failure names it
    list_remove(c)
    conn_backend_drop(w, c)
    sock_close(&c.sk[SIDE_BACKEND], False)      # also removes it from the epoll set
    w.fds -= 1
    conn_connect(w, c)


cdef void conn_on_backend_connecting(lb_worker *w, lb_conn *c, uint32_t events) noexcept nogil:
    """An event on a backend socket still connecting: done, or failed.
    A failed connect always raises EPOLLERR (or EPOLLHUP), so a plain EPOLLOUT
    means connected and no getsockopt(SO_ERROR) call is needed (HAProxy agrees)."""
    cdef int rc
    if events & (EPOLLERR | EPOLLHUP):
        conn_connect_failed(w, c, False)
        return
    if w.pools[c.pool].tls != NULL:
        # a TLS pool: connected means handshaken, within connect_timeout; a
        # handshake that fails (the certificate refused) is a failed connect
        if not sock_is_tls(&c.sk[SIDE_BACKEND]):
            if not (events & EPOLLOUT):
                return
            if not conn_backend_tls(w, c):
                conn_connect_failed(w, c, False)
                return
        rc = tls_client_handshake(&c.sk[SIDE_BACKEND])
        if rc == XPRT_WANT_READ or rc == XPRT_WANT_WRITE:
            return
        if rc != 1:
            conn_connect_failed(w, c, False)
            return
        conn_proxy_sent(w, c)
        # what the backend sent right after its Finished is OpenSSL's now
        events |= EPOLLIN
    elif not (events & EPOLLOUT):
        return
    lb_store_u64(&w.bstats[c.slot].consecutive_failures, 0)
    list_remove(c)
    c.lg.term = TERM_OK              # earlier tries failed, this one did not
    log_mark(w, c, &c.lg.t_connect)
    c.state = CS_ESTABLISHED
    c.last_ms = w.now_ms
    list_append(&w.listeners[c.listener].conns, c, w.now_ms)
    c.flags |= F_WRITABLE << SIDE_BACKEND
    if events & (EPOLLIN | EPOLLRDHUP):
        c.flags |= F_READABLE << SIDE_BACKEND
    if events & EPOLLRDHUP:
        c.flags |= F_RDHUP << SIDE_BACKEND
    if w.splice_mode == SPLICE_ALWAYS and socks_splice(&c.sk[0], &c.sk[1]):
        c.flags |= (F_SPLICE << DIR_UP) | (F_SPLICE << DIR_DOWN)
    conn_pump(w, c)


cdef bint conn_backend_tls(lb_worker *w, lb_conn *c) noexcept nogil:
    """A pool with TLS: the connection just made goes on the TLS transport. A
    PROXY header (send_proxy) comes before the handshake, on the bare socket:
    at this point the up buffer holds exactly it (no client byte is read
    before the backend is connected), and a fresh socket takes it whole. The
    buffer keeps it until the handshake is done (conn_proxy_sent), for the
    next backend should this one fail."""
    if c.buf_len[DIR_UP] != 0 and send(c.sk[SIDE_BACKEND].fd, c.buf[DIR_UP] + c.buf_off[DIR_UP], c.buf_len[DIR_UP],
                                       MSG_NOSIGNAL | MSG_DONTWAIT) != <ssize_t>c.buf_len[DIR_UP]:
        return False
    return sock_tls_connect(w, &w.pools[c.pool], &c.sk[SIDE_BACKEND], c.slot)


cdef void conn_proxy_sent(lb_worker *w, lb_conn *c) noexcept nogil:
    """The PROXY header went out in clear before the handshake: it is no
    longer the up buffer's to send."""
    if c.buf[DIR_UP] != NULL:
        buf_give(w, c.buf[DIR_UP])
        c.buf[DIR_UP] = NULL
        c.buf_off[DIR_UP] = 0
        c.buf_len[DIR_UP] = 0
