# The transport layer: one small set of operations under every client and
# backend socket of the tcp and http paths (lb_xprt in _fastpath.pxd), and the
# plain-socket transport. TLS is the second transport: a connection's lb_sock
# names its transport, so forwarding, the http engine and the timers never ask
# which one they drive.
#
# What the callers rely on:
# - recv and send never block; XPRT_WANT_READ / XPRT_WANT_WRITE say which
#   readiness the call waits for, and the caller clears that readiness flag of
#   the socket (a TLS read can wait for the socket to be writable).
# - A short count means the transport had nothing more at that instant, as on a
#   stream socket: the caller clears its readiness flag and waits for the next
#   edge. A transport that buffers decoded bytes (TLS records) must keep reading
#   until it can say so truthfully, or data would stall in an edge-triggered loop.
# - splice(2) moves bytes between two sockets only when both transports say
#   their bytes are the socket's own (xp.splice); anything else is copied.
# - Bytes that precede the transport on the wire (a PROXY protocol header) are
#   not the transport's: they are read and written on the bare fd.

cdef ssize_t plain_recv(lb_sock *s, void *buf, size_t n) noexcept nogil:
    cdef ssize_t r
    while True:
        r = recv(s.fd, buf, n, MSG_DONTWAIT)
        if r >= 0:
            return r
        if errno == EINTR:
            continue
        return XPRT_WANT_READ if errno == EAGAIN else XPRT_ERROR


cdef ssize_t plain_send(lb_sock *s, const void *buf, size_t n) noexcept nogil:
    cdef ssize_t r
    while True:
        r = send(s.fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT)
        if r >= 0:
            return r
        if errno == EINTR:
            continue
        return XPRT_WANT_WRITE if errno == EAGAIN else XPRT_ERROR


cdef void plain_shutw(lb_sock *s) noexcept nogil:
    shutdown(s.fd, SHUT_WR)


cdef void plain_close(lb_sock *s, bint reset) noexcept nogil:
    cdef linger lg
    if reset:
        # SO_LINGER 0: the close sends an RST, so the peer learns that the
        # other side failed instead of reading a clean end of stream
        lg.l_onoff = 1
        lg.l_linger = 0
        setsockopt(s.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
    close(s.fd)


cdef lb_xprt XPRT_PLAIN
XPRT_PLAIN.name = b"plain"
XPRT_PLAIN.recv = plain_recv
XPRT_PLAIN.send = plain_send
XPRT_PLAIN.shutw = plain_shutw
XPRT_PLAIN.close = plain_close
XPRT_PLAIN.splice = 1


cdef inline void sock_reset(lb_sock *s) noexcept nogil:
    """Not open."""
    s.fd = -1
    s.xp = &XPRT_PLAIN
    s.ctx = NULL


cdef inline void sock_plain(lb_sock *s, int fd) noexcept nogil:
    """A socket just accepted or connected, on the plain transport."""
    s.fd = fd
    s.xp = &XPRT_PLAIN
    s.ctx = NULL


cdef inline void sock_close(lb_sock *s, bint reset) noexcept nogil:
    """Close through the transport (which frees its state); the socket is then not open."""
    s.xp.close(s, reset)
    sock_reset(s)


cdef inline bint socks_splice(lb_sock *a, lb_sock *b) noexcept nogil:
    """Bytes may move from one to the other by splice(2)."""
    return a.xp.splice and b.xp.splice


cdef inline uint32_t xprt_wait_flag(ssize_t rc, uint32_t readable, uint32_t writable) noexcept nogil:
    """The readiness flag a blocked call clears: the one it waits for."""
    return writable if rc == XPRT_WANT_WRITE else readable
