# TLS passthrough (tcp listeners with tls_passthrough): the client's ClientHello
# is looked at in the socket, its server name (SNI) picks the pool by the
# listener's routes, and the connection is then forwarded untouched, the
# ClientHello included, as any tcp connection (spliced when large). lb holds no
# key: the backends terminate TLS.

cdef enum:
    HELLO_FOUND = 0                  # a ClientHello with a server name
    HELLO_NO_NAME = 1                # a whole ClientHello without one
    HELLO_INCOMPLETE = -1
    HELLO_INVALID = -2               # not a TLS handshake record with a ClientHello
    SNI_WAIT_MAX_MS = 10000          # a client gets min(idle_timeout, this) for its ClientHello


cdef inline uint32_t be16(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef int client_hello_sni(const uint8_t *b, size_t n, size_t *name_off, size_t *name_len) noexcept nogil:
    """The server name of the ClientHello at the start of b[:n] (RFC 8446 4.1.2,
    RFC 6066 3): HELLO_FOUND with b[name_off:name_off+name_len], HELLO_NO_NAME,
    HELLO_INCOMPLETE (b is a prefix of one) or HELLO_INVALID. Only a ClientHello
    within its first record is read: one spread over several records reads as
    one without a name."""
    cdef size_t rec, p, end, ext_end, list_end, t, l
    if n == 0:
        return HELLO_INCOMPLETE
    if b[0] != 22:                   # handshake
        return HELLO_INVALID
    if n < 5:
        return HELLO_INCOMPLETE
    if b[1] != 3:                    # TLS major version, whatever the minor
        return HELLO_INVALID
    rec = be16(b + 3)
    if rec < 4 or rec > 16384:
        return HELLO_INVALID
    if n < 5 + rec:
        return HELLO_INCOMPLETE
    if b[5] != 1:                    # client_hello
        return HELLO_INVALID
    end = 9 + ((<size_t>b[6] << 16) | (<size_t>b[7] << 8) | b[8])
    if end > 5 + rec:
        return HELLO_NO_NAME         # continued in the next record
    p = 9 + 2 + 32                   # client_version, random
    if p + 1 > end:
        return HELLO_INVALID
    p += 1 + b[p]                    # session_id
    if p + 2 > end:
        return HELLO_INVALID
    p += 2 + be16(b + p)             # cipher_suites
    if p + 1 > end:
        return HELLO_INVALID
    p += 1 + b[p]                    # compression_methods
    if p == end:
        return HELLO_NO_NAME         # no extensions at all
    if p + 2 > end:
        return HELLO_INVALID
    ext_end = p + 2 + be16(b + p)
    p += 2
    if ext_end > end:
        return HELLO_INVALID
    while p + 4 <= ext_end:
        t = be16(b + p)
        l = be16(b + p + 2)
        p += 4
        if p + l > ext_end:
            return HELLO_INVALID
        if t == 0:                   # server_name: a list of (type, name); host_name is type 0
            if l < 2 or 2 + be16(b + p) > l:
                return HELLO_INVALID
            list_end = p + 2 + be16(b + p)
            p += 2
            while p + 3 <= list_end:
                if b[p] == 0:
                    if p + 3 + be16(b + p + 1) > list_end:
                        return HELLO_INVALID
                    name_off[0] = p + 3
                    name_len[0] = be16(b + p + 1)
                    return HELLO_FOUND if name_len[0] else HELLO_NO_NAME
                p += 3 + be16(b + p + 1)
            return HELLO_NO_NAME
        p += l
    return HELLO_NO_NAME


cdef int32_t sni_route(lb_listener_rt *l, const uint8_t *name, size_t n) noexcept nogil:
    """The pool of the first route whose host the server name matches, else
    the listener's."""
    cdef uint32_t i
    if n and name[n - 1] == 46:      # a trailing dot names the same host
        n -= 1
    for i in range(l.n_sni_routes):
        if route_host_matches(&l.sni_routes[i], name, <uint32_t>n):
            return l.sni_routes[i].pool
    return l.pool


cdef void conn_sni_start(lb_worker *w, lb_conn *c, sockaddr_storage *dst) noexcept nogil:
    """Wait for the client's ClientHello. The destination its PROXY header
    named (if any) waits in the up buffer until the pool, and so its own
    send_proxy, is known."""
    cdef lb_listener_rt *l = &w.listeners[c.listener]
    if dst != NULL and dst.ss_family != 0:
        c.buf[DIR_UP] = buf_take(w)
        if c.buf[DIR_UP] == NULL:
            conn_close(w, c, True)
            return
        memcpy(c.buf[DIR_UP], dst, sizeof(sockaddr_storage))
    c.state = CS_TLS_WAIT
    list_append(&l.tls_wait, c, w.now_ms)
    # the ClientHello may already be in the socket, in the segment of the PROXY
    # header: no new edge would announce it
    conn_sni_read(w, c)


cdef void conn_sni_read(lb_worker *w, lb_conn *c) noexcept nogil:
    """An event on a passthrough client waiting for its ClientHello."""
    cdef uint8_t hello[BUF_SIZE]
    cdef ssize_t n = recv(c.sk[SIDE_CLIENT].fd, hello, BUF_SIZE, MSG_PEEK | MSG_DONTWAIT)
    cdef size_t name_off = 0, name_len = 0
    cdef int st
    cdef sockaddr_storage dst
    cdef bint has_dst = c.buf[DIR_UP] != NULL
    if n <= 0:
        if n < 0 and (errno == EAGAIN or errno == EINTR) and not (c.flags & (F_RDHUP << SIDE_CLIENT)):
            return
        conn_close(w, c, False)      # gone before its ClientHello
        return
    st = client_hello_sni(hello, n, &name_off, &name_len)
    if st == HELLO_INCOMPLETE:
        if n < BUF_SIZE and not (c.flags & (F_RDHUP << SIDE_CLIENT)):
            return                   # the next edge brings more
        if n < BUF_SIZE:
            conn_close(w, c, False)
            return
        st = HELLO_NO_NAME           # larger than lb reads: the default pool
    if st == HELLO_INVALID:
        lb_add_u64(&w.stats.tls_fail_protocol, 1)
        conn_close(w, c, True)
        return
    list_remove(c)
    c.pool = sni_route(&w.listeners[c.listener], hello + name_off, name_len if st == HELLO_FOUND else 0)
    c.state = CS_CONNECTING
    c.flags |= F_READABLE << SIDE_CLIENT   # the ClientHello is still in the socket: it goes first
    if has_dst:
        memcpy(&dst, c.buf[DIR_UP], sizeof(sockaddr_storage))
        buf_give(w, c.buf[DIR_UP])
        c.buf[DIR_UP] = NULL
    if conn_proxy_prepend(w, c, &dst if has_dst else NULL) != 0:
        conn_close(w, c, True)
        return
    conn_connect(w, c)


# ---- test-facing wrapper -------------------------------------------------------------

def parse_client_hello(const unsigned char[:] data):
    """(status, server name or None): status "found", "no_name", "incomplete" or "invalid"."""
    cdef size_t off = 0, n = 0
    cdef int st
    cdef const uint8_t *b = &data[0] if data.shape[0] else <const uint8_t *>b""
    with nogil:
        st = client_hello_sni(b, data.shape[0], &off, &n)
    names = {HELLO_FOUND: "found", HELLO_NO_NAME: "no_name", HELLO_INCOMPLETE: "incomplete", HELLO_INVALID: "invalid"}
    return names[st], bytes(data[off:off + n]) if st == HELLO_FOUND else None
