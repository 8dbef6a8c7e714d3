# Forwarding bytes between the two sides of an established connection.
#
# Sockets are registered edge-triggered, so the loop keeps, per side, whether the
# kernel may have bytes to read (F_READABLE) or room to write (F_WRITABLE); a flag
# is cleared only when a call says so (EAGAIN, or a short read/write, which on a
# stream socket means the queue was drained or filled at that instant).
#
# Small flows go through a 16 KiB buffer with the transport's recv and send
# (transport.pxi): two copies, but one syscall each way and no pipe. A read that
# fills the whole buffer marks the direction as bulk and, when both transports
# are plain sockets, it switches to splice(2) through a pipe, which moves
# pages without copying them through user space; a splice that moves less than
# SPLICE_MIN switches back. (Measured in bench/: for small responses recv/send
# beats splice, which needs the same two calls plus a pipe; from 1 MiB responses
# on, splice with a 256 KiB pipe moves more bytes per call and per copy.)
#
# With global.io_uring the same calls of a whole turn are submitted together, in
# rounds (uring.pxi); the bookkeeping of their results is this file's.
#
# A buffer or pipe is held only while bytes are in flight; both go back to the
# worker's pools the moment they are empty, so an idle connection holds neither.

cdef enum:
    FWD_BUDGET = 1048576         # bytes per direction per turn before yielding to others
    SPLICE_MIN = 4096


cdef inline void dir_account(lb_worker *w, lb_conn *c, int d, ssize_t n, bint spliced) noexcept nogil:
    cdef shm_backend_stats *bs = &w.bstats[c.slot]
    if d == DIR_UP:
        lb_add_u64(&bs.bytes_in, n)
        lb_add_u64(&w.stats.bytes_in, n)
        c.lg.bytes_in += n
    else:
        lb_add_u64(&bs.bytes_out, n)
        lb_add_u64(&w.stats.bytes_out, n)
        c.lg.bytes_out += n
        log_mark(w, c, &c.lg.t_response)
    if spliced:
        lb_add_u64(&w.stats.splice_bytes, n)


cdef int dir_flush(lb_worker *w, lb_conn *c, int d) noexcept nogil:
    """Write what is pending in direction d. 0 = all written or must wait; -1 = peer gone."""
    cdef int t = 1 - d
    cdef ssize_t n
    if c.buf_len[d] != 0:
        n = c.sk[t].xp.send(&c.sk[t], c.buf[d] + c.buf_off[d], c.buf_len[d])
        if n < 0:
            if n == XPRT_ERROR:
                return -1
            c.flags &= ~(xprt_wait_flag(n, F_READABLE, F_WRITABLE) << t)
            return 0
        dir_account(w, c, d, n, False)
        if <uint32_t>n < c.buf_len[d]:
            c.buf_off[d] += n
            c.buf_len[d] -= n
            c.flags &= ~(F_WRITABLE << t)
            return 0
        c.buf_off[d] = 0
        c.buf_len[d] = 0
        buf_give(w, c.buf[d])
        c.buf[d] = NULL
        return 0
    if c.pipe_len[d] != 0:
        n = splice(c.pipe[d][0], NULL, c.sk[t].fd, NULL, c.pipe_len[d],
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n < 0:
            if errno == EAGAIN or errno == EINTR:
                c.flags &= ~(F_WRITABLE << t)
                return 0
            return -1
        dir_account(w, c, d, n, True)
        c.pipe_len[d] -= n
        if c.pipe_len[d] != 0:
            c.flags &= ~(F_WRITABLE << t)
            return 0
        pipe_give(w, c.pipe[d], False)
    return 0


cdef ssize_t dir_fill(lb_worker *w, lb_conn *c, int d) noexcept nogil:
    """Read from side d into a buffer or a pipe. >0 bytes, 0 EOF, -1 error, -2
    would block (the readiness flag it waits for is cleared here)."""
    cdef ssize_t n
    if c.flags & (F_SPLICE << d):
        if c.pipe[d][0] < 0 and pipe_take(w, c.pipe[d]) != 0:
            c.flags &= ~(F_SPLICE << d)        # out of pipes or fds: fall back to copying
            return dir_fill(w, c, d)
        n = splice(c.sk[d].fd, NULL, c.pipe[d][1], NULL, PIPE_SIZE,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n > 0:
            c.pipe_len[d] = n
            if n < SPLICE_MIN and w.splice_mode == SPLICE_AUTO:
                c.flags &= ~(F_SPLICE << d)
            # A short splice does not prove the socket drained (the pipe may run out
            # of slots first), so F_READABLE stays set until EAGAIN or EOF.
            return n
        pipe_give(w, c.pipe[d], False)
        if n == 0:
            return 0
        if errno == EAGAIN or errno == EINTR:
            c.flags &= ~(F_READABLE << d)
            return -2
        return -1
    if c.buf[d] == NULL:
        c.buf[d] = buf_take(w)
        if c.buf[d] == NULL:
            return -1
    n = c.sk[d].xp.recv(&c.sk[d], c.buf[d], BUF_SIZE)
    if n > 0:
        c.buf_off[d] = 0
        c.buf_len[d] = n
        if n == BUF_SIZE:
            if w.splice_mode != SPLICE_NEVER and socks_splice(&c.sk[0], &c.sk[1]):
                c.flags |= F_SPLICE << d
        elif not (c.flags & (F_RDHUP << d)):
            c.flags &= ~(F_READABLE << d)
        return n
    buf_give(w, c.buf[d])
    c.buf[d] = NULL
    if n == 0:
        return 0
    if n == XPRT_ERROR:
        return -1
    c.flags &= ~(xprt_wait_flag(n, F_READABLE, F_WRITABLE) << d)
    return -2


cdef int dir_forward(lb_worker *w, lb_conn *c, int d) noexcept nogil:
    """Move bytes in direction d until a side blocks. 0 = blocked or done,
    1 = budget used up with more to move, -1 = a side failed (reset)."""
    cdef int t = 1 - d
    cdef ssize_t n, moved = 0
    while True:
        if c.buf_len[d] != 0 or c.pipe_len[d] != 0:
            if not (c.flags & (F_WRITABLE << t)):
                return 0
            if dir_flush(w, c, d) < 0:
                log_term(c, TERM_CLIENT_RESET if t == SIDE_CLIENT else TERM_BACKEND_RESET)
                return -1
            if c.buf_len[d] != 0 or c.pipe_len[d] != 0:
                return 0
        if c.flags & (F_EOF << d):
            if not (c.flags & (F_SHUT << t)):
                # Half-close: the peer's FIN reaches the other side once all bytes
                # did. When the other direction is already finished, the close that
                # follows sends that FIN: no shutdown call needed.
                if not (c.flags & (F_SHUT << d)):
                    c.sk[t].xp.shutw(&c.sk[t])
                c.flags |= F_SHUT << t
            return 0
        if not (c.flags & (F_READABLE << d)):
            return 0
        if moved >= FWD_BUDGET:
            return 1
        n = dir_fill(w, c, d)
        if n > 0:
            moved += n
        elif n == 0:
            c.flags |= F_EOF << d
            c.flags &= ~(F_READABLE << d)
        elif n == -2:
            return 0
        else:
            log_term(c, TERM_CLIENT_RESET if d == SIDE_CLIENT else TERM_BACKEND_RESET)
            return -1


cdef void conn_prefill(lb_worker *w, lb_conn *c) noexcept nogil:
    """Read phase of a turn: take in what each side has, write nothing yet.

    The loop reads from every ready connection first and writes in a second pass
    (pending_run), as HAProxy does: the peers on the other core are then woken
    once per turn with a batch instead of once per message, which measured ~30%
    fewer context switches per request on a 2-core machine."""
    cdef int d
    cdef ssize_t n
    if c.state != CS_ESTABLISHED or c.skm == SKM_IN:
        return
    for d in range(2):
        if (c.buf_len[d] == 0 and c.pipe_len[d] == 0 and (c.flags & (F_READABLE << d))
                and not (c.flags & (F_EOF << d))):
            n = dir_fill(w, c, d)
            if n == 0:
                c.flags |= F_EOF << d
                c.flags &= ~(F_READABLE << d)
            elif n == -1:
                log_term(c, TERM_CLIENT_RESET if d == SIDE_CLIENT else TERM_BACKEND_RESET)
                conn_close(w, c, True)
                return


cdef inline void conn_queue(lb_worker *w, lb_conn *c) noexcept nogil:
    """Put c on the list pumped at the end of this turn (once)."""
    if not (c.flags & F_QUEUED):
        c.flags |= F_QUEUED
        c.pending_next = NULL
        if w.pending_tail != NULL:
            w.pending_tail.pending_next = c
        else:
            w.pending = c
        w.pending_tail = c


cdef void conn_pump(lb_worker *w, lb_conn *c) noexcept nogil:
    """Forward both directions; close when both are finished or one failed."""
    cdef int up, down
    if c.state != CS_ESTABLISHED or c.skm == SKM_IN:
        return                       # (in the maps: the kernel forwards, sockmap.pxi)
    up = dir_forward(w, c, DIR_UP)
    if up < 0:
        conn_close(w, c, True)
        return
    down = dir_forward(w, c, DIR_DOWN)
    if down < 0:
        conn_close(w, c, True)
        return
    if (c.flags & (F_SHUT << SIDE_CLIENT)) and (c.flags & (F_SHUT << SIDE_BACKEND)):
        conn_close(w, c, False)
        return
    c.last_ms = w.now_ms
    if up == 1 or down == 1:
        conn_queue(w, c)
    elif c.skm == SKM_NO and w.listeners[c.listener].sockmap and skm_ready(c):
        if skm_enter(w, c) < 0:
            log_term(c, TERM_CLIENT_RESET)
            conn_close(w, c, True)
