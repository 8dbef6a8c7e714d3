# One syscall for a turn's recv calls, one for its send calls: tcp forwarding
# through io_uring.
#
# On loopback the proxy's CPU per request is almost all kernel, and the same
# four socket calls per request as HAProxy and nginx cost the same there
# (bench/README.md, issue 18). What a proxy still controls is how often it
# enters the kernel and, above all, how often it is preempted: a send that
# wakes its peer on this core makes the scheduler switch at that syscall's
# return. Submitting every send of a turn in one io_uring_enter turns N
# syscall exits (and up to N preemptions) into one. Measured with a C
# prototype beside lb, HAProxy and nginx (bench/README.md): 15 % less CPU per
# request than lb's one-call-per-send loop.
#
# The semantics are those of forward.pxi's recv/send path, applied a round at a
# time: each round queues at most one call per direction of every connection
# on the turn's pending list (a send when bytes wait and the peer is writable,
# else a recv when the side is readable), submits them together and applies
# every result exactly as dir_fill/dir_flush would. Calls carry MSG_DONTWAIT,
# so io_uring completes each at once (-EAGAIN when it would block) instead of
# arming a poll: after a round nothing is left in flight, no connection is
# referenced by the ring across turns, and a connection that fails in a round
# is closed only once that round's every result is in.
#
# Only plain-socket pairs of tcp listeners without sockmap take this path,
# and only while no direction moves by splice (bulk flows: forward.pxi's
# splice, whose calls move 256 KiB each). The epoll loop, accept, connect and
# everything of the http engine are as before. Without io_uring (an old
# kernel, io_uring_disabled, a seccomp filter) the ring is NULL and every
# connection takes forward.pxi's path.

from lb.includes.liburing cimport *

cdef enum:
    UR_ENTRIES = 256                 # calls per round (more wait for the next round)
    UR_ROUNDS = 64                   # rounds per turn: FWD_BUDGET / BUF_SIZE, the same per-turn budget
    UR_CQE_BATCH = 64
    UR_RECV = 2                      # user_data: connection | direction | UR_RECV for a recv
    F_UR_FAIL = 16384                # lb_conn.flags: a call failed this round; closed once the round is applied


cdef void *uring_open() noexcept nogil:
    """A ring for this worker, or NULL when the kernel refuses one."""
    cdef io_uring *r = <io_uring *>calloc(1, sizeof(io_uring))
    cdef io_uring_params p
    if r == NULL:
        return NULL
    memset(&p, 0, sizeof(p))
    # one thread submits and nothing is async: no cross-thread wake-ups to pay for
    p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER
    if io_uring_queue_init_params(UR_ENTRIES, r, &p) < 0:
        free(r)
        return NULL
    return r


cdef void uring_close(void *ring) noexcept nogil:
    if ring != NULL:
        io_uring_queue_exit(<io_uring *>ring)
        free(ring)


cdef inline bint uring_eligible(lb_worker *w, lb_conn *c) noexcept nogil:
    """c's bytes may move through the ring (see the top of this file)."""
    return (w.ring != NULL and c.kind == KIND_L4 and c.state == CS_ESTABLISHED
            and c.skm == SKM_NO and not w.listeners[c.listener].sockmap
            and c.sk[SIDE_CLIENT].xp == &XPRT_PLAIN and c.sk[SIDE_BACKEND].xp == &XPRT_PLAIN
            and not (c.flags & (F_SPLICE | (F_SPLICE << 1))) and c.pipe_len[0] == 0 and c.pipe_len[1] == 0)


cdef int uring_plan(lb_worker *w, io_uring *r, lb_conn *c, int d) noexcept nogil:
    """Queue direction d's next call, as dir_forward would make it: 1 queued,
    0 nothing to do (or done without a call: a half-close), -1 the ring is full."""
    cdef int t = 1 - d
    cdef io_uring_sqe *sqe
    if c.buf_len[d] != 0:
        if not (c.flags & (F_WRITABLE << t)):
            return 0
        sqe = io_uring_get_sqe(r)
        if sqe == NULL:
            return -1
        io_uring_prep_send(sqe, c.sk[t].fd, c.buf[d] + c.buf_off[d], c.buf_len[d], MSG_NOSIGNAL | MSG_DONTWAIT)
        io_uring_sqe_set_data64(sqe, <uint64_t><size_t>c | <uint64_t>d)
        return 1
    if c.flags & (F_EOF << d):
        if not (c.flags & (F_SHUT << t)):
            # (as in dir_forward: the FIN follows the last byte; the close sends it
            # when the other direction is finished too)
            if not (c.flags & (F_SHUT << d)):
                c.sk[t].xp.shutw(&c.sk[t])
            c.flags |= F_SHUT << t
        return 0
    if not (c.flags & (F_READABLE << d)):
        return 0
    sqe = io_uring_get_sqe(r)
    if sqe == NULL:
        return -1
    if c.buf[d] == NULL:
        c.buf[d] = buf_take(w)
        if c.buf[d] == NULL:
            # out of memory: a no-op keeps the queued entry harmless
            io_uring_prep_nop(sqe)
            io_uring_sqe_set_data64(sqe, 0)
            log_term(c, TERM_CLIENT_RESET if d == SIDE_CLIENT else TERM_BACKEND_RESET)
            c.flags |= F_UR_FAIL
            return 1
    io_uring_prep_recv(sqe, c.sk[d].fd, c.buf[d], BUF_SIZE, MSG_DONTWAIT)
    io_uring_sqe_set_data64(sqe, <uint64_t><size_t>c | <uint64_t>d | UR_RECV)
    return 1


cdef void uring_sent(lb_worker *w, lb_conn *c, int d, int32_t n) noexcept nogil:
    """A send of direction d returned n: dir_flush's bookkeeping."""
    cdef int t = 1 - d
    if n < 0:
        if n == -EAGAIN:
            c.flags &= ~(F_WRITABLE << t)
        elif n != -EINTR:
            log_term(c, TERM_CLIENT_RESET if t == SIDE_CLIENT else TERM_BACKEND_RESET)
            c.flags |= F_UR_FAIL
        return
    dir_account(w, c, d, n, False)
    if <uint32_t>n < c.buf_len[d]:
        c.buf_off[d] += n
        c.buf_len[d] -= n
        c.flags &= ~(F_WRITABLE << t)
        return
    c.buf_off[d] = 0
    c.buf_len[d] = 0
    buf_give(w, c.buf[d])
    c.buf[d] = NULL


cdef void uring_received(lb_worker *w, lb_conn *c, int d, int32_t n) noexcept nogil:
    """A recv of direction d returned n: dir_fill's bookkeeping (and
    dir_forward's for an EOF)."""
    if n > 0:
        c.buf_off[d] = 0
        c.buf_len[d] = n
        if n == BUF_SIZE:
            # bulk: splice from here on when both sides allow it (forward.pxi,
            # which then moves this connection: uring_eligible says no)
            if w.splice_mode != SPLICE_NEVER and socks_splice(&c.sk[0], &c.sk[1]):
                c.flags |= F_SPLICE << d
        elif not (c.flags & (F_RDHUP << d)):
            c.flags &= ~(F_READABLE << d)
        return
    buf_give(w, c.buf[d])
    c.buf[d] = NULL
    if n == 0:
        c.flags |= F_EOF << d
        c.flags &= ~(F_READABLE << d)
    elif n == -EAGAIN:
        c.flags &= ~(F_READABLE << d)
    elif n != -EINTR:
        log_term(c, TERM_CLIENT_RESET if d == SIDE_CLIENT else TERM_BACKEND_RESET)
        c.flags |= F_UR_FAIL


cdef void uring_reap(lb_worker *w, io_uring *r, int n) noexcept nogil:
    """Submit the round's n calls and apply all n results."""
    cdef io_uring_cqe *cqes[UR_CQE_BATCH]
    cdef unsigned k, i
    cdef int got = 0
    cdef uint64_t data
    cdef lb_conn *c
    io_uring_submit_and_wait(r, n)
    while got < n:
        k = io_uring_peek_batch_cqe(r, cqes, UR_CQE_BATCH)
        if k == 0:
            # (a call the kernel did not finish inline: wait for it, since the
            # ring must hold nothing that names a connection after this round)
            io_uring_submit_and_wait(r, n - got)
            continue
        for i in range(k):
            data = cqes[i].user_data
            c = <lb_conn *><size_t>(data & ~(<uint64_t>3))
            if c != NULL:
                if data & UR_RECV:
                    uring_received(w, c, <int>(data & 1), cqes[i].res)
                else:
                    uring_sent(w, c, <int>(data & 1), cqes[i].res)
        io_uring_cq_advance(r, k)
        got += k


cdef void uring_pump(lb_worker *w, lb_conn *batch) noexcept nogil:
    """Forward every connection of batch (linked by pending_next, all
    uring_eligible when the turn began) in rounds of one io_uring_enter each,
    then finish each as conn_pump does."""
    cdef io_uring *r = <io_uring *>w.ring
    cdef lb_conn *c
    cdef lb_conn *nxt
    cdef int rnd, d, k, n = 0
    cdef bint full
    for rnd in range(UR_ROUNDS):
        n = 0
        full = False
        c = batch
        while c != NULL and not full:
            if c.state == CS_ESTABLISHED and not (c.flags & (F_SPLICE | (F_SPLICE << 1))):
                for d in range(2):
                    k = uring_plan(w, r, c, d)
                    if k < 0:
                        full = True
                        break
                    n += k
            c = c.pending_next
        if n == 0:
            break
        uring_reap(w, r, n)
        c = batch
        while c != NULL:
            if c.flags & F_UR_FAIL:
                c.flags &= ~F_UR_FAIL
                conn_close(w, c, True)
            c = c.pending_next
    c = batch
    while c != NULL:
        nxt = c.pending_next
        c.pending_next = NULL
        if c.state == CS_ESTABLISHED:
            if c.flags & (F_SPLICE | (F_SPLICE << 1)):
                conn_pump(w, c)              # bulk now: forward.pxi's splice takes over
            elif (c.flags & (F_SHUT << SIDE_CLIENT)) and (c.flags & (F_SHUT << SIDE_BACKEND)):
                conn_close(w, c, False)
            else:
                c.last_ms = w.now_ms
                if n != 0:
                    conn_queue(w, c)         # the turn's budget is used up: more next turn
        c = nxt
