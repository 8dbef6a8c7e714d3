# forward = "sockmap": once a tcp connection pair is established, the kernel
# moves its bytes from one socket to the other (a BPF sk_skb verdict program
# over a SOCKHASH, includes/sockmap.pxd) and the worker is not woken per request.
#
# The handoff, and why no byte can be lost or overtaken:
#
# - A pair enters the maps only when lb holds nothing of it: both buffers and
#   pipes empty (the PROXY header, if any, was sent in full), no end seen. So
#   every byte lb read from a socket has already been written to its peer.
# - Bytes still in a socket's receive queue when it enters the verdict map stay
#   there: the kernel runs the verdict over the queue (tcp_read_skb, in order)
#   on the socket's next data_ready. lb calls that at once (SO_RCVLOWAT, see
#   lb_sock_rcvlowat_kick), so the queued bytes go first, and any segment
#   arriving meanwhile is queued behind them under the same socket lock.
# - lb never reads a socket of the pair again: its epoll interest becomes
#   EPOLLRDHUP alone (errors and hang-ups are always reported), which also
#   keeps the kernel's wake-ups for redirected data (sk_psock_data_ready calls
#   the socket's own data_ready) from waking the worker. On an end it peeks
#   one byte: 0 is the FIN, an error is a reset. A byte for lb is impossible
#   while both sockets are in the maps; should one appear it is not forwarded
#   out of order: the pair is reset.
# - Both sockets are in the peers map (redirect targets) before either is put
#   in the verdict map (includes/sockmap.pxd says why two maps).
#
# Half-close: the FIN itself is not redirected (the program drops the empty
# skb; TCP has already taken it). lb sees EPOLLRDHUP, then waits until the
# target socket's send queue has taken every byte the source received (a
# redirected skb sits on the target's psock until its send buffer has room:
# backpressure, charged to the source's receive buffer, so the source's window
# closes and memory stays bounded), and only then shuts the target's write
# side. "Every byte" is counted from TCP_INFO: the source's tcpi_bytes_received
# (which counts the FIN as one) against the target's tcpi_bytes_acked + SIOCOUTQ,
# both as differences from their values at the handoff. Nothing signals that
# wait's end, so the pair is looked at every SKM_DRAIN_POLL_MS meanwhile.
#
# Backpressure: the kernel does NOT provide it. A redirected skb is taken off
# the source's receive queue at once (tcp_read_skb; its memory is no longer
# charged to the source, whose window stays open) and queued on the target's
# psock without limit (sk_psock_skb_redirect): measured here, a client sent
# 512 MiB into a pair whose backend read nothing. Pausing a direction by
# taking its source out of the verdict map is not safe: that clears the
# psock's program while a segment may be in sk_psock_verdict_recv on another
# CPU, which then drops it (verdict __SK_DROP without a program) after TCP has
# acknowledged it. So lb bounds the memory by ending the pair instead: every
# SKM_CHECK_MS it reads each pair's totals (one TCP_INFO per socket) and
# resets a pair with more than SKM_MAX_BYTES of one direction inside the
# kernel (received by the source, not yet acknowledged by the target's peer:
# the psock's queue plus the target's send queue). Explicit, counted
# (sockmap_overruns) and logged (termination lb_error); never a silent hole.
# The bound is SKM_MAX_BYTES plus what a sender pushes between two checks of
# its pair: SKM_CHECK_MS while a worker holds up to SKM_CHECK_BATCH pairs,
# proportionally longer beyond (the checks' syscalls stay bounded).
#
# Counters: bytes the kernel moved are added from the same totals when a
# direction ends or the pair closes. The idle timeout sees activity as a change
# in both sockets' received and acknowledged totals.

cdef enum:
    SKM_NO = 0                       # not in the maps (yet)
    SKM_IN = 1                       # in the maps: the kernel forwards
    SKM_NEVER = 2                    # stays in lb (plain copy) for its whole life
    SKM_DRAIN_POLL_MS = 1
    SKM_CHECK_MS = 10
    SKM_MAX_BYTES = 33554432
    SKM_CHECK_BATCH = 128                # pairs per check: at most 2 x 128 TCP_INFO per SKM_CHECK_MS
    TCP_STATE_ESTABLISHED = 1

# Opened before the worker drops its privileges (sockmap_prepare); the Worker
# takes it over.
cdef lb_skm SKM_PREPARED
SKM_PREPARED.peers = -1
SKM_PREPARED.verdict = -1
SKM_PREPARED.prog = -1


def sockmap_prepare(uint32_t max_entries):
    """Create this process's maps and program (bpf(2) needs CAP_BPF or root:
    before the worker drops privileges). None, or (errno, step) of what the
    kernel refused: the listeners then forward in lb, as without the option."""
    if SKM_PREPARED.prog >= 0:
        return None
    if lb_skm_open(&SKM_PREPARED, max(64, min(max_entries, 1 << 20))) != 0:
        return (SKM_PREPARED.err, SKM_PREPARED.step.decode())
    return None


cdef inline bint skm_ready(lb_conn *c) noexcept nogil:
    """Nothing of c is held by lb and neither side has ended."""
    return (c.state == CS_ESTABLISHED and c.buf_len[0] == 0 and c.buf_len[1] == 0
            and c.pipe_len[0] == 0 and c.pipe_len[1] == 0
            and not (c.flags & ((F_EOF | F_SHUT | F_RDHUP) * 3)))


cdef int skm_read_total(int fd, int64_t *read) noexcept nogil:
    """Bytes lb has read from fd: received less still queued. 0, or -1 when the
    socket is no longer plainly established (a FIN came in: lb finishes it)."""
    cdef uint64_t acked, received
    cdef uint8_t state
    cdef int q1, q2, i
    for i in range(16):
        q1 = lb_tcp_inq(fd)
        if lb_tcp_totals(fd, &acked, &received, &state) != 0:
            return -1
        q2 = lb_tcp_inq(fd)
        if q1 < 0 or state != TCP_STATE_ESTABLISHED:
            return -1
        if q1 == q2:
            read[0] = <int64_t>received - q1
            return 0
    return -1


cdef void skm_interest(lb_worker *w, lb_conn *c, uint32_t events) noexcept nogil:
    cdef epoll_event ev
    cdef int side
    for side in range(2):
        ev.events = events
        ev.data.u64 = <uint64_t><size_t>c | <uint64_t>side
        epoll_ctl(w.epfd, EPOLL_CTL_MOD, c.sk[side].fd, &ev)


cdef int skm_enter(lb_worker *w, lb_conn *c) noexcept nogil:
    """Hand c's pair to the kernel. 1 done, 0 it stays in lb, -1 it must be
    reset (half in the maps: the client's bytes may already be on their way)."""
    cdef int cfd = c.sk[SIDE_CLIENT].fd
    cdef int bfd = c.sk[SIDE_BACKEND].fd
    cdef int d
    if w.skm.prog < 0 or not socks_splice(&c.sk[0], &c.sk[1]):
        c.skm = SKM_NEVER
        lb_add_u64(&w.stats.sockmap_fallbacks, 1)
        return 0
    for d in range(2):
        if skm_read_total(c.sk[d].fd, &c.skm_read[d]) != 0:
            c.skm = SKM_NEVER        # an end is coming in: lb finishes the pair itself
            return 0
        c.skm_w0[d] = lb_tcp_written(c.sk[1 - d].fd)
        if c.skm_w0[d] < 0:
            c.skm = SKM_NEVER
            return 0
    c.skm_cookie[SIDE_CLIENT] = lb_sock_cookie(cfd)
    c.skm_cookie[SIDE_BACKEND] = lb_sock_cookie(bfd)
    if c.skm_cookie[SIDE_CLIENT] == 0 or c.skm_cookie[SIDE_BACKEND] == 0:
        c.skm = SKM_NEVER
        lb_add_u64(&w.stats.sockmap_fallbacks, 1)
        return 0
    skm_interest(w, c, EPOLLRDHUP | EPOLLET)
    if lb_skm_update(w.skm.peers, c.skm_cookie[SIDE_CLIENT], bfd) != 0:
        return skm_enter_undo(w, c)
    if lb_skm_update(w.skm.peers, c.skm_cookie[SIDE_BACKEND], cfd) != 0:
        lb_skm_delete(w.skm.peers, c.skm_cookie[SIDE_CLIENT])
        return skm_enter_undo(w, c)
    if lb_skm_update(w.skm.verdict, c.skm_cookie[SIDE_CLIENT], cfd) != 0:
        lb_skm_delete(w.skm.peers, c.skm_cookie[SIDE_CLIENT])
        lb_skm_delete(w.skm.peers, c.skm_cookie[SIDE_BACKEND])
        return skm_enter_undo(w, c)
    c.skm = SKM_IN
    c.flags &= ~((F_READABLE | F_WRITABLE) * 3)
    if lb_skm_update(w.skm.verdict, c.skm_cookie[SIDE_BACKEND], bfd) != 0:
        lb_add_u64(&w.stats.sockmap_fallbacks, 1)
        return -1
    lb_sock_rcvlowat_kick(cfd)
    lb_sock_rcvlowat_kick(bfd)
    lb_add_u64(&w.stats.sockmap_pairs, 1)
    if w.skm_n == 0:
        w.skm_check_ms = w.now_ms + SKM_CHECK_MS
    w.skm_n += 1
    return 1


cdef int skm_enter_undo(lb_worker *w, lb_conn *c) noexcept nogil:
    """No socket got the verdict program: every byte is still where lb reads it."""
    c.skm = SKM_NEVER
    lb_add_u64(&w.stats.sockmap_fallbacks, 1)
    skm_interest(w, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
    # the edges that came meanwhile were not reported: look again
    c.flags |= (F_READABLE | F_WRITABLE) * 3
    conn_queue(w, c)
    return 0


cdef void skm_count(lb_worker *w, lb_conn *c, int d) noexcept nogil:
    """Add to the counters what the kernel wrote in direction d since the last count."""
    cdef int64_t n = lb_tcp_written(c.sk[1 - d].fd)
    if n < 0:
        return
    n -= c.skm_w0[d] + c.skm_counted[d]
    if n > 0:
        dir_account(w, c, d, n, False)
        c.skm_counted[d] += n


cdef int skm_drained(lb_conn *c, int d) noexcept nogil:
    """After the source's FIN: 1 when the target's send queue has taken every
    byte the source received, 0 not yet, -1 a socket failed."""
    cdef uint64_t acked, received
    cdef uint8_t state
    cdef int64_t written
    if lb_tcp_totals(c.sk[d].fd, &acked, &received, &state) != 0:
        return -1
    written = lb_tcp_written(c.sk[1 - d].fd)
    if written < 0:
        return -1
    # received counts the FIN as one byte
    return written - c.skm_w0[d] >= <int64_t>received - 1 - c.skm_read[d]


cdef void skm_drain_wait(lb_worker *w, lb_conn *c) noexcept nogil:
    if not (c.flags & F_SKM_DRAIN):
        c.flags |= F_SKM_DRAIN
        c.skm_next = w.skm_draining
        w.skm_draining = c


cdef void skm_progress(lb_worker *w, lb_conn *c) noexcept nogil:
    """Pass on each end whose bytes are all through; close when both are."""
    cdef int d, t, r
    for d in range(2):
        t = 1 - d
        if not (c.flags & (F_EOF << d)) or c.flags & (F_SHUT << t):
            continue
        r = skm_drained(c, d)
        if r < 0:
            log_term(c, TERM_CLIENT_RESET if t == SIDE_CLIENT else TERM_BACKEND_RESET)
            conn_close(w, c, True)
            return
        if r == 0:
            skm_drain_wait(w, c)
            continue
        skm_count(w, c, d)
        if not (c.flags & (F_SHUT << d)):
            shutdown(c.sk[t].fd, SHUT_WR)
        c.flags |= F_SHUT << t
        c.last_ms = w.now_ms
    if (c.flags & (F_SHUT << SIDE_CLIENT)) and (c.flags & (F_SHUT << SIDE_BACKEND)):
        conn_close(w, c, False)


cdef void skm_on_event(lb_worker *w, lb_conn *c, int side, uint32_t events) noexcept nogil:
    """An end (FIN, reset, error) on a socket of a pair in the maps."""
    cdef char b
    cdef ssize_t n
    if not (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)):
        return
    n = recv(c.sk[side].fd, &b, 1, MSG_PEEK | MSG_DONTWAIT)
    if n < 0 and (errno == EAGAIN or errno == EINTR):
        return
    if n != 0:
        # a reset; or a byte for lb, which cannot be forwarded in order any more
        log_term(c, TERM_CLIENT_RESET if side == SIDE_CLIENT else TERM_BACKEND_RESET)
        conn_close(w, c, True)
        return
    c.flags |= F_EOF << side
    skm_progress(w, c)


cdef void skm_drain_sweep(lb_worker *w) noexcept nogil:
    cdef lb_conn *c = w.skm_draining
    cdef lb_conn *n
    w.skm_draining = NULL
    while c != NULL:
        n = c.skm_next
        c.flags &= ~(<uint32_t>F_SKM_DRAIN)
        if c.state == CS_ESTABLISHED and c.skm == SKM_IN:
            skm_progress(w, c)
        c = n


cdef bint skm_moved(lb_conn *c) noexcept nogil:
    """Whether the kernel moved bytes of c since the last look (idle timer)."""
    cdef uint64_t acked, received, seen = 0
    cdef uint8_t state
    cdef int side
    for side in range(2):
        if lb_tcp_totals(c.sk[side].fd, &acked, &received, &state) == 0:
            seen += acked + received
    if seen == c.skm_seen:
        return False
    c.skm_seen = seen
    return True


cdef void skm_check(lb_worker *w, lb_conn *c) noexcept nogil:
    """Reset c when one direction holds more than SKM_MAX_BYTES inside the kernel."""
    cdef uint64_t acked[2]
    cdef uint64_t received[2]
    cdef uint8_t state
    cdef int64_t inside
    cdef int d
    for d in range(2):
        if lb_tcp_totals(c.sk[d].fd, &acked[d], &received[d], &state) != 0:
            return
    for d in range(2):
        inside = (<int64_t>received[d] - c.skm_read[d]) - (<int64_t>acked[1 - d] - c.skm_w0[d])
        if inside > SKM_MAX_BYTES:
            lb_add_u64(&w.stats.sockmap_overruns, 1)
            log_term(c, TERM_LB_ERROR)
            conn_close(w, c, True)
            return


cdef void skm_check_all(lb_worker *w) noexcept nogil:
    """Check the next SKM_CHECK_BATCH pairs (by their position in the
    listeners' lists, from where the last check stopped): the syscalls per
    second stay bounded however many pairs a worker holds, and with more than
    a batch each pair is looked at less often."""
    cdef int i
    cdef int64_t k = 0
    cdef int64_t first = w.skm_cursor
    cdef lb_conn *c
    cdef lb_conn *n
    for i in range(w.n_listeners):
        if not w.listeners[i].sockmap:
            continue
        c = w.listeners[i].conns.head
        while c != NULL and k < first + SKM_CHECK_BATCH:
            n = c.next               # (a check may close c; closed ones stay in memory until the turn ends)
            if c.skm == SKM_IN and c.state == CS_ESTABLISHED:
                if k >= first:
                    skm_check(w, c)
                k += 1
            c = n
    w.skm_cursor = first + SKM_CHECK_BATCH if k >= first + SKM_CHECK_BATCH else 0
    w.skm_check_ms = w.now_ms + SKM_CHECK_MS


cdef void skm_leave(lb_worker *w, lb_conn *c) noexcept nogil:
    """Out of the maps before the sockets close (the verdict first: nothing
    more is redirected), its last bytes counted."""
    cdef int d
    for d in range(2):
        if not (c.flags & (F_SHUT << (1 - d))):
            skm_count(w, c, d)
    lb_skm_delete(w.skm.verdict, c.skm_cookie[SIDE_CLIENT])
    lb_skm_delete(w.skm.verdict, c.skm_cookie[SIDE_BACKEND])
    lb_skm_delete(w.skm.peers, c.skm_cookie[SIDE_CLIENT])
    lb_skm_delete(w.skm.peers, c.skm_cookie[SIDE_BACKEND])
    c.skm = SKM_NEVER
    w.skm_n -= 1
