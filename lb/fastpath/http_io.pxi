# Moving an exchange's bytes: reading from the client and the backend through
# their transports, the request body to the backend and the response to the
# client (copied while small, spliced when large and both transports allow),
# and reading the response head.

# ---- moving bytes ------------------------------------------------------------------------

cdef inline void h_account(lb_worker *w, lb_hconn *h, ssize_t n, bint up, bint spliced) noexcept nogil:
    if h.c.slot >= 0:
        if up:
            lb_add_u64(&w.bstats[h.c.slot].bytes_in, n)
        else:
            lb_add_u64(&w.bstats[h.c.slot].bytes_out, n)
    if up:
        lb_add_u64(&w.stats.bytes_in, n)
    else:
        lb_add_u64(&w.stats.bytes_out, n)
        h.c.lg.bytes_out += n
    if spliced:
        lb_add_u64(&w.stats.splice_bytes, n)


cdef int h_splice(lb_worker *w, lb_hconn *h, int src, int dst, int *pipe, uint32_t *plen, uint64_t *left,
                  uint32_t *sflags, uint32_t *dflags, bint up) noexcept nogil:
    """Move up to *left bytes from src to dst through a pipe. 1 progress, 0 none,
    -1 dst failed. src's EOF shows in *sflags."""
    cdef ssize_t n
    cdef size_t want
    cdef uint64_t moved = 0
    cdef int progress = 0
    while True:
        if plen[0]:
            if not (dflags[0] & HF_WRITABLE):
                return progress
            n = splice(pipe[0], NULL, dst, NULL, plen[0], SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n < 0:
                if errno == EAGAIN or errno == EINTR:
                    dflags[0] &= ~HF_WRITABLE
                    return progress
                return -1
            h_account(w, h, n, up, True)
            plen[0] -= n
            progress = 1
            if plen[0]:
                dflags[0] &= ~HF_WRITABLE
                return progress
        if left[0] == 0 or not (sflags[0] & HF_READABLE) or (sflags[0] & HF_EOF):
            pipe_give(w, pipe, False)
            return progress
        if moved >= FWD_BUDGET:
            conn_queue(w, &h.c)
            return progress
        want = PIPE_SIZE if left[0] > PIPE_SIZE else left[0]
        n = splice(src, NULL, pipe[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        if n > 0:
            plen[0] = n
            left[0] -= n
            moved += n
            progress = 1
        elif n == 0:
            sflags[0] = (sflags[0] | HF_EOF) & ~HF_READABLE
            return 1
        elif errno == EAGAIN or errno == EINTR:
            sflags[0] &= ~HF_READABLE
            return progress
        else:
            sflags[0] = (sflags[0] | HF_EOF | HF_ERR) & ~HF_READABLE
            return 1


cdef inline bint h_splice_up(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The request body goes by splice from here on (reads stop copying it)."""
    return (h.rq_state == RQ_BODY_CL and h.rq_left >= HTTP_SPLICE_MIN and h.inb.len == 0 and not h.no_splice
            and w.splice_mode != SPLICE_NEVER and h.b != NULL and h.b.state == BS_READY
            and h.up_sent == h.upb.len and socks_splice(&h.c.sk[SIDE_CLIENT], &h.b.sk))


cdef inline bint h_splice_down(lb_worker *w, lb_hconn *h) noexcept nogil:
    return (h.rs_state == RS_BODY_CL and h.rs_left >= HTTP_SPLICE_MIN and h.b.inb.len == 0 and h.outb.len == 0
            and not h.no_splice and w.splice_mode != SPLICE_NEVER and socks_splice(&h.c.sk[SIDE_CLIENT], &h.b.sk))


cdef int h_read_client(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef ssize_t n
    cdef uint32_t room
    if not (h.hflags & HF_READABLE) or (h.hflags & HF_EOF):
        return 0
    if h.st == HS_CLOSING or h.st == HS_UPGRADE or h.st == HS_TUNNEL or h.st == HS_PROXY or h.st == HS_TLS:
        return 0                     # (the PROXY header and the handshake read for themselves)
    if h.st == HS_EXCH and (h.pipe_len or h_splice_up(w, h)):
        return 0
    if not hb_need(w, &h.inb):
        return 0
    if h.inb.off + h.inb.len == HBUF_SIZE:
        if h.inb.off == 0:
            return 0                 # full: the request in it must move on first
        memmove(h.inb.p, h.inb.p + h.inb.off, h.inb.len)
        h.inb.off = 0
    room = HBUF_SIZE - h.inb.off - h.inb.len
    n = h.c.sk[SIDE_CLIENT].xp.recv(&h.c.sk[SIDE_CLIENT], h.inb.p + h.inb.off + h.inb.len, room)
    if n > 0:
        h.c.last_ms = w.now_ms
        if <uint32_t>n < room and not (h.hflags & HF_RDHUP):
            h.hflags &= ~HF_READABLE
        if h.st == HS_LINGER:
            hb_give(w, &h.inb)       # what a client sends after its answer is dropped
            return 1
        h.inb.len += n
        if h.st == HS_HEAD and h.c.lg.t_start == 0:
            log_mark(w, &h.c, &h.c.lg.t_start)
        if h.st == HS_HEAD and h.tphase.list == &h.hl.ka_timer:
            # the next request began: its head has http_request_timeout from now
            tl_append(&h.hl.req_timer, &h.tphase, w.now_ms, h)
        return 1
    if h.inb.len == 0:
        hb_give(w, &h.inb)
    if n == 0:
        h.hflags = (h.hflags | HF_EOF) & ~HF_READABLE
        return 1
    if n != XPRT_ERROR:
        h.hflags &= ~xprt_wait_flag(n, HF_READABLE, HF_WRITABLE)
        return 0
    h.hflags = (h.hflags | HF_EOF | HF_ERR) & ~HF_READABLE
    return 1


cdef int h_read_backend(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef lb_bconn *b = h.b
    cdef ssize_t n
    cdef uint32_t room
    if b == NULL or b.state != BS_READY or not (b.flags & HF_READABLE) or (b.flags & HF_EOF):
        return 0
    if h.rs_state == RS_NONE or h.rs_state == RS_DONE or b.pipe_len or h_splice_down(w, h):
        return 0
    if not hb_need(w, &b.inb):
        return 0
    if b.inb.off + b.inb.len == HBUF_SIZE:
        if b.inb.off == 0:
            return 0
        memmove(b.inb.p, b.inb.p + b.inb.off, b.inb.len)
        b.inb.off = 0
    room = HBUF_SIZE - b.inb.off - b.inb.len
    n = b.sk.xp.recv(&b.sk, b.inb.p + b.inb.off + b.inb.len, room)
    if n > 0:
        h.b_last_ms = w.now_ms
        if <uint32_t>n < room and not (b.flags & HF_RDHUP):
            b.flags &= ~HF_READABLE
        b.inb.len += n
        return 1
    if b.inb.len == 0:
        hb_give(w, &b.inb)
    if n == 0:
        b.flags = (b.flags | HF_EOF) & ~HF_READABLE
        return 1
    if n != XPRT_ERROR:
        b.flags &= ~xprt_wait_flag(n, HF_READABLE, HF_WRITABLE)
        return 0
    b.flags = (b.flags | HF_EOF | HF_ERR) & ~HF_READABLE
    return 1


cdef int h_flush_up(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef lb_bconn *b = h.b
    cdef ssize_t n
    if b == NULL or b.state != BS_READY or h.up_sent >= h.upb.len or not (b.flags & HF_WRITABLE):
        return 0
    n = b.sk.xp.send(&b.sk, h.upb.p + h.up_sent, h.upb.len - h.up_sent)
    if n < 0:
        if n != XPRT_ERROR:
            b.flags &= ~xprt_wait_flag(n, HF_READABLE, HF_WRITABLE)
            return 0
        b.flags |= HF_EOF | HF_ERR
        return 1
    h_account(w, h, n, True, False)
    h.up_sent += n
    h.b_last_ms = w.now_ms
    if h.up_sent < h.upb.len:
        b.flags &= ~HF_WRITABLE
    return 1


cdef int h_flush_out(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef ssize_t n
    if h.outb.len == 0 or not (h.hflags & HF_WRITABLE):
        return 0
    if h.sink:
        hb_drop(w, &h.outb, h.outb.len)   # the client left (h_sink): only the cache takes the response
        return 1
    n = h.c.sk[SIDE_CLIENT].xp.send(&h.c.sk[SIDE_CLIENT], h.outb.p + h.outb.off, h.outb.len)
    if n < 0:
        if n != XPRT_ERROR:
            h.hflags &= ~xprt_wait_flag(n, HF_READABLE, HF_WRITABLE)
            return 0
        log_term(&h.c, TERM_CLIENT_ABORT)
        h_close(w, h, True)
        return 1
    h_account(w, h, n, False, False)
    h.c.last_ms = w.now_ms
    if <uint32_t>n < h.outb.len:
        h.hflags &= ~HF_WRITABLE
    hb_drop(w, &h.outb, n)
    return 1


cdef inline void up_compact(lb_hconn *h) noexcept nogil:
    """Drop the bytes of upb the backend already has: the request can no longer
    be sent again from its start."""
    memmove(h.upb.p, h.upb.p + h.up_sent, h.upb.len - h.up_sent)
    h.upb.len -= h.up_sent
    h.up_sent = 0
    h.replayable = 0


cdef inline bint up_make_room(lb_hconn *h, uint32_t want) noexcept nogil:
    """Compact upb (up_compact) when it has less room than want. False: no
    room at all (until the backend takes some)."""
    if HBUF_SIZE - h.upb.len >= want or h.up_sent == 0:
        return h.upb.len < HBUF_SIZE
    up_compact(h)
    return True


cdef int h_req_body(lb_worker *w, lb_hconn *h) noexcept nogil:
    """Request body bytes from the client's buffer into upb (or spliced)."""
    cdef uint32_t n
    cdef size_t ok
    cdef int st, progress = 0
    cdef lb_bconn *b
    cdef uint64_t left
    if h.rq_state == RQ_BODY_CL:
        while h.rq_left and h.inb.len:
            if not up_make_room(h, 1):     # any room will do: data goes in by the byte
                break
            n = h.inb.len
            if n > h.rq_left:
                n = <uint32_t>h.rq_left
            if n > HBUF_SIZE - h.upb.len:
                n = HBUF_SIZE - h.upb.len
            ob_put(&h.upb, h.inb.p + h.inb.off, n)
            hb_drop(w, &h.inb, n)
            h.rq_left -= n
            h.c.lg.bytes_in += n
            progress = 1
        if h.pipe_len or (h.rq_left and h_splice_up(w, h)):
            b = h.b
            h.replayable = 0
            if h.pipe[0] < 0 and pipe_take(w, h.pipe) != 0:
                h.no_splice = 1
                return progress
            left = h.rq_left
            st = h_splice(w, h, h.c.sk[SIDE_CLIENT].fd, b.sk.fd, h.pipe, &h.pipe_len, &h.rq_left, &h.hflags, &b.flags, True)
            h.c.lg.bytes_in += left - h.rq_left
            if st < 0:
                b.flags |= HF_EOF | HF_ERR
                return 1
            if st:
                h.b_last_ms = w.now_ms
                h.c.last_ms = w.now_ms
            progress |= st
        if h.rq_left == 0 and h.pipe_len == 0:
            h.rq_state = RQ_DONE
            progress = 1
        return progress
    # chunked: the framer says how far the body goes; bytes go on verbatim.
    # It needs a whole chunk-size line (or trailer section) in view: room for
    # everything read so far, or the line could stay cut at the end of upb
    # for good (room that sending does not give back until upb is compacted).
    while h.inb.len and up_make_room(h, h.inb.len):
        n = h.inb.len
        if n > HBUF_SIZE - h.upb.len:
            n = HBUF_SIZE - h.upb.len
        st = chunk_advance(&h.rq_chunk_phase, &h.rq_left, <const uint8_t *>h.inb.p + h.inb.off, n, &ok,
                           w.http.scratch, h.hl.max_head, &h.body_seen, &h.rq_scan)
        if st == 400:
            h_error(w, h, 400)
            return 1
        if h.body_max and h.body_seen > h.body_max:
            # max_body_size: a chunk announced past the limit; none of its bytes go on
            h_error(w, h, 413)
            return 1
        if ok:
            ob_put(&h.upb, h.inb.p + h.inb.off, ok)
            hb_drop(w, &h.inb, ok)
            h.c.lg.bytes_in += ok
            progress = 1
        if st == 1:
            h.rq_state = RQ_DONE
            return 1
        if not ok:
            # Nothing framed. When more bytes are in inb than fit in upb's room,
            # the rest of a chunk line (or the CRLF after data) lies beyond the
            # room: upb is not full, so up_make_room would never compact it and
            # the body would stall. Drop what the backend already has and retry.
            if n == h.inb.len or h.up_sent == 0:
                break
            up_compact(h)
    return progress


cdef int h_resp_head(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef lb_bconn *b = h.b
    cdef http_req *r = w.http.resp
    cdef const uint8_t *p
    cdef int st
    cdef uint32_t before
    if b == NULL or b.inb.len == 0:
        return 0
    p = <const uint8_t *>b.inb.p + b.inb.off
    st = http_parse_response_at(p, b.inb.len, r, HBUF_SIZE, &b.head_scan)
    if st == HTTP_INCOMPLETE:
        if b.flags & HF_EOF:
            log_term(&h.c, TERM_BACKEND_RESET)
            h_error(w, h, 502)       # the head was cut short
            return 1
        return 0
    h.resp_started = 1
    log_mark(w, &h.c, &h.c.lg.t_response)
    if st != 0:
        log_term(&h.c, TERM_BAD_RESPONSE)
        h_error(w, h, 502)
        return 1
    if r.status >= 200 or r.status == 101:
        h.c.lg.status = r.status
    if not hb_need(w, &h.outb):
        log_term(&h.c, TERM_LB_ERROR)
        h_close(w, h, True)
        return 1
    before = h.outb.len
    if r.status < 200:
        if r.status == 101:
            if not h.upgrade:
                h_error(w, h, 502)
                return 1
            h.client_ka = 1
            if not rewrite_response(w, h, p, r):
                h.outb.len = before
                h_error(w, h, 502)
                return 1
            hb_drop(w, &b.inb, r.head_len)
            h.resp_sent = 1
            h.st = HS_UPGRADE
            return 1
        # 100 Continue and other interim responses reach HTTP/1.1 clients only
        if h.version == 11 and not rewrite_response(w, h, p, r):
            h.outb.len = before
            if before == 0:
                h_error(w, h, 502)
                return 1
            return 0
        hb_drop(w, &b.inb, r.head_len)
        return 1
    h.client_ka = h.client_ka and not w.stopping
    if h.method == MT_HEAD or r.status == 204 or r.status == 304:
        h.rs_state = RS_DONE
    elif r.chunked:
        h.rs_state = RS_BODY_CHUNKED
        h.rs_chunk_phase = CK_LINE
        scan_reset(&h.rs_scan)
        h.rs_left = 0
    elif r.content_length >= 0:
        h.rs_state = RS_BODY_CL if r.content_length else RS_DONE
        h.rs_left = r.content_length
    else:
        h.rs_state = RS_BODY_EOF
        h.client_ka = 0
    h.backend_ka = r.keep_alive and h.rs_state != RS_BODY_EOF and h.version == 11
    h.n_rs_rules = 0                 # a head that waits for room runs its phase again
    st = phase_response(w, h, r, p)
    if st != STEP_CONTINUE:
        if st != STEP_ANSWERED:
            h_error(w, h, st)
        return 1
    if not rewrite_response(w, h, p, r):
        h.outb.len = before
        if before == 0:
            h_error(w, h, 502)
            return 1
        h.rs_state = RS_WAIT
        return 0
    hb_drop(w, &b.inb, r.head_len)
    h.resp_sent = 1
    # the request can no longer be sent again: its buffer is not needed
    if h.rq_state == RQ_DONE and h.up_sent == h.upb.len:
        hb_give(w, &h.upb)
        h.up_sent = 0
    return 1


cdef int h_resp_body(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef lb_bconn *b = h.b
    cdef uint32_t n
    cdef size_t ok
    cdef int st, progress = 0
    cdef uint64_t rs_total = 0           # responses have no size limit
    if h.rs_state == RS_BODY_CHUNKED:
        while b.inb.len and hb_room(&h.outb) and hb_need(w, &h.outb):
            n = b.inb.len
            if n > hb_room(&h.outb):
                n = hb_room(&h.outb)
            st = chunk_advance(&h.rs_chunk_phase, &h.rs_left, <const uint8_t *>b.inb.p + b.inb.off, n, &ok,
                               w.http.scratch, HBUF_SIZE, &rs_total, &h.rs_scan)
            if st == 400:
                log_term(&h.c, TERM_BAD_RESPONSE)
                h_close(w, h, True)  # the client already has part of this response
                return 1
            if ok:
                ob_put(&h.outb, b.inb.p + b.inb.off, ok)
                if h.cx != NULL:
                    cache_fill_put(h, b.inb.p + b.inb.off, ok)
                hb_drop(w, &b.inb, ok)
                progress = 1
            if st == 1:
                h.rs_state = RS_DONE
                if h.cx != NULL:
                    cache_fill_done(w, h)    # (a body cut short never gets here: never stored)
                return 1
            if not ok:
                break
    elif h.rs_state == RS_BODY_CL:
        while h.rs_left and b.inb.len and hb_room(&h.outb) and hb_need(w, &h.outb):
            n = b.inb.len
            if n > h.rs_left:
                n = <uint32_t>h.rs_left
            if n > hb_room(&h.outb):
                n = hb_room(&h.outb)
            ob_put(&h.outb, b.inb.p + b.inb.off, n)
            if h.cx != NULL:
                cache_fill_put(h, b.inb.p + b.inb.off, n)
            hb_drop(w, &b.inb, n)
            h.rs_left -= n
            progress = 1
        if b.pipe_len or (h.rs_left and h_splice_down(w, h)):
            if b.pipe[0] < 0 and pipe_take(w, b.pipe) != 0:
                h.no_splice = 1
                return progress
            st = h_splice(w, h, b.sk.fd, h.c.sk[SIDE_CLIENT].fd, b.pipe, &b.pipe_len, &h.rs_left, &b.flags, &h.hflags, False)
            if st < 0:
                log_term(&h.c, TERM_CLIENT_ABORT)
                h_close(w, h, True)
                return 1
            if st:
                h.b_last_ms = w.now_ms
                h.c.last_ms = w.now_ms
            progress |= st
        if h.rs_left == 0 and b.pipe_len == 0:
            h.rs_state = RS_DONE
            if h.cx != NULL:
                cache_fill_done(w, h)
            return 1
    else:                            # RS_BODY_EOF: everything until the backend closes
        while b.inb.len and hb_room(&h.outb) and hb_need(w, &h.outb):
            n = b.inb.len
            if n > hb_room(&h.outb):
                n = hb_room(&h.outb)
            ob_put(&h.outb, b.inb.p + b.inb.off, n)
            if h.cx != NULL:
                cache_fill_put(h, b.inb.p + b.inb.off, n)
            hb_drop(w, &b.inb, n)
            progress = 1
        if b.inb.len == 0 and (b.flags & HF_EOF):
            h.rs_state = RS_DONE
            if h.cx != NULL and not (b.flags & HF_ERR):
                cache_fill_done(w, h)    # a close, not a reset: the body is whole (RFC 9112 6.3)
            return 1
    return progress
