# A hit's body straight from the cache region to the client's socket
# (cache_serve, docs/cache.md). Only on a plain client socket (xp.splice: the
# stream's bytes are the socket's own); TLS and HTTP/2 streams frame or
# encrypt the bytes and keep the copy through the client's buffer.
#
# From the memory tier (cache_send_file), once the object was hit a few
# times (CACHE_SEND_FILE_FREQ; before, the sendmsg way below): the body is
# vmspliced from the worker's mapping of the region into a pipe (the pipe
# takes references to the region's pages, nothing is copied), checked, and
# spliced from the pipe to the socket. Those pages must never change while
# a pipe or a socket holds them: the region is a /dev/shm file, the entry
# is marked sent before the first vmsplice, and when a marked entry goes,
# ce_remove punches its blocks out of the file (cache_punch), which unmaps
# them from every worker, so the next object written there gets fresh pages.
# From a disk tier (whose file stays allocated, never punched): one
# sendmsg(2) with the head and an iovec per 4 KiB block, the kernel's copy
# the only one.
#
# Readers hold no lock (cache.pxi): the entry's seq is checked before the
# blocks are walked and after the kernel took them. A seq that moved means
# the bytes taken may be another object's: the response is cut (h_cut). From
# the pipe, no byte reaches the socket before that check. On the sendmsg
# way the socket has them at once, so that such a response can never
# arrive whole, the last CACHE_SEND_TAIL bytes take the copy path, copied
# and checked before they are sent.

from lb.includes.uio cimport iovec, msghdr, sendmsg, MSG_MORE


cdef enum:
    CACHE_SEND_MIN = 16384           # below, a copy into outb and one send cost no more (measured at 16 KiB: even)
    CACHE_SEND_TAIL = 1024           # the sendmsg way: the body's end through outb, after a seq check
    CACHE_SEND_IOV = 64              # blocks per sendmsg (256 KiB)
    CACHE_SEND_ROUND = 64            # blocks per pipe fill, per call of cache_send_file: 256 KiB, the pipes' size (PIPE_SIZE); one that F_SETPIPE_SZ did not grow takes what it holds
    # hits (S3-FIFO's freq) before an object goes from the file: a sent object
    # is punched out when it goes, and the punch and the next object's write
    # into fresh pages (about 60 us per 100 KiB) outweigh the copy the file
    # saves (about 17 us) unless it is hit a few times; 1.38x lb-base's CPU
    # per request in bench cache_disk (random keys, objects rarely hit twice
    # in memory) when every hit went by sendfile, which takes the pages as a splice does
    CACHE_SEND_FILE_FREQ = 2


cdef inline bint cache_send_direct_ok(lb_hconn *h, lb_cache_x *cx) noexcept nogil:
    return cx.zpipe_len != 0 or (cx.local == NULL and cx.mp == NULL and cx.left >= CACHE_SEND_MIN
                                 and h.c.sk[SIDE_CLIENT].xp.splice and h.c.sk[SIDE_CLIENT].fd >= 0)


cdef int cache_zpipe_out(lb_worker *w, lb_hconn *h, lb_cache_x *cx, lb_cache_rt *rt) noexcept nogil:
    """The pipe's checked bytes to the client. 1: all went; 0: the socket
    is full (what is left waits in the pipe); -1: h was closed."""
    cdef ssize_t n
    cdef unsigned int fl = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
    if cx.left:
        fl |= SPLICE_F_MORE          # more of the body follows: no push at this call's end
    while True:
        n = splice(cx.zpipe[0], NULL, h.c.sk[SIDE_CLIENT].fd, NULL, cx.zpipe_len, fl)
        if n >= 0 or errno != EINTR:
            break
    if n < 0:
        if errno == EAGAIN:
            h.hflags &= ~HF_WRITABLE
            return 0
        log_term(&h.c, TERM_CLIENT_ABORT)
        h_close(w, h, True)
        return -1
    h_account(w, h, n, False, True)     # (counted with splice's: the kernel moved them, lb did not copy)
    h.c.last_ms = w.now_ms
    cache_count(&rt.st.hit_bytes, <uint64_t>n)
    cx.zpipe_len -= <uint32_t>n
    if cx.zpipe_len:
        h.hflags &= ~HF_WRITABLE     # the socket took no more
        return 0
    if cx.left == 0:
        pipe_give(w, cx.zpipe, False)    # (back to the worker's pool: the next response may not need one)
        cx.zpipe_on = 0
    return 1


cdef int zpipe_cut(lb_worker *w, lb_hconn *h, lb_cache_x *cx) noexcept nogil:
    """Cut the response in the middle of a fill: the pipe may hold bytes no
    check covers (zpipe_len does not count them), so it is closed here,
    never handed back to the pool for another connection to send from. -1."""
    pipe_give(w, cx.zpipe, True)
    cx.zpipe_on = 0
    h_cut(w, h)
    return -1


cdef int cache_zpipe_fill(lb_worker *w, lb_hconn *h, lb_cache_x *cx, lb_cache_rt *rt,
                          shm_cache_entry *e) noexcept nogil:
    """The body's next CACHE_SEND_ROUND blocks (at most) into the empty
    pipe by one vmsplice(2), an iovec per run of consecutive blocks in the
    worker's mapping of the region, then the entry's seq checked: only then
    are they the object's bytes. 0, or -1: the response was cut (h is done
    with).
    vmsplice, not splice from the file: the pipe takes the same pages (the
    file's, through this mapping), but found through the page table in
    batches rather than one page-cache lookup and folio lock per 4 KiB page
    (shmem_file_splice_read): 2.5 us against 4.4 us to fill and drain
    100 KiB here, and the runs of a scattered body are one call. (A chain
    read while the entry went may point at punched blocks: reading them
    faults fresh zeroed pages in, which the seq check then refuses.)"""
    cdef iovec iov[CACHE_SEND_ROUND]
    cdef uint32_t first[CACHE_SEND_ROUND]
    cdef uint32_t nb = rt.hd.n_blocks, b = cx.blk, off = cx.blk_off, last, nx, k
    cdef uint64_t run, pos, filled = 0, want = 0, cap = CACHE_SEND_ROUND * CACHE_BLOCK
    cdef int m = 0, i
    cdef ssize_t n
    # the runs: b and the blocks chained after it that follow it in the region
    while want < cx.left and want + CACHE_BLOCK <= cap:
        if b >= nb:
            return zpipe_cut(w, h, cx)   # (a chain read while it changed)
        run = CACHE_BLOCK - off
        last = b
        while want + run < cx.left and want + run + CACHE_BLOCK <= cap:
            nx = lb_load_u32(&rt.next[last])
            if nx != last + 1 or nx >= nb:
                break
            last = nx
            run += CACHE_BLOCK
        if want + run > cx.left:
            run = cx.left - want
        iov[m].iov_base = rt.blocks + <uint64_t>b * CACHE_BLOCK + off
        iov[m].iov_len = run
        first[m] = b
        m += 1
        want += run
        if want < cx.left and (off + run) % CACHE_BLOCK == 0:
            b = lb_load_u32(&rt.next[last])    # at a block's end: the chain says what follows
        off = 0
    while True:
        n = vmsplice(cx.zpipe[1], iov, <size_t>m, SPLICE_F_NONBLOCK)
        if n >= 0 or errno != EINTR:
            break
    if n <= 0:
        return zpipe_cut(w, h, cx)   # no room in an empty pipe
    # where the body goes on: in the run the pipe's slots ran out in, or
    # after the last (a pipe that F_SETPIPE_SZ did not grow holds less)
    i = 0
    while <uint64_t>n - filled > iov[i].iov_len:
        filled += iov[i].iov_len
        i += 1
    run = <uint64_t>n - filled
    filled = <uint64_t>n
    off = <uint32_t>((<char *>iov[i].iov_base - rt.blocks) % CACHE_BLOCK)
    pos = off + run
    k = <uint32_t>(pos // CACHE_BLOCK)
    off = <uint32_t>(pos % CACHE_BLOCK)
    if off == 0 and filled < cx.left:
        b = lb_load_u32(&rt.next[first[i] + k - 1])
    else:
        b = first[i] + k
    # the pipe holds the pages it was given: were they still the entry's?
    if not ce_stable(e, cx.seq):
        return zpipe_cut(w, h, cx)
    cx.zpipe_len = <uint32_t>filled
    cx.left -= filled
    cx.blk = b
    cx.blk_off = off
    return 0


cdef int cache_send_file(lb_worker *w, lb_hconn *h, lb_cache_x *cx, lb_cache_rt *rt,
                         shm_cache_entry *e) noexcept nogil:
    """cache_send_direct from the memory tier's file: the head by send(2)
    on its own, the body's next blocks vmspliced into a pipe (the pipe
    takes references to the file's pages, no copy: cache_zpipe_fill), the
    entry's seq checked, then the pipe spliced to the socket. Bytes reach
    the socket only once checked, so no tail is held back, and the last
    splice ends the response's last segment (by sendfile(2), the last KiB
    went apart, copied and checked: that extra segment, and the acks it
    drew from the client, cost the client more than lb saved: bench
    cache_hit).
    cache_punch detaches a freed block's page before the block is written
    again, so what the pipe and the socket hold stays the object's.
    Returns as cache_send_direct; -2: no pipe to be had (the caller copies)."""
    cdef int fd = h.c.sk[SIDE_CLIENT].fd
    cdef uint64_t head = h.outb.len
    cdef ssize_t n
    if cx.zpipe_len:
        return cache_zpipe_out(w, h, cx, rt)
    if not cx.zpipe_on:
        if pipe_take(w, cx.zpipe) != 0:
            return -2
        cx.zpipe_on = 1
    if not lb_load_u8(&e.sent):
        lb_mark_u8(&e.sent)          # before any vmsplice: its blocks get punched when it goes (ce_remove)
    if head:
        # on its own, no MSG_MORE, as nginx sends its head before sendfile:
        # with the head in the body's first segment, the socket's bbr left
        # its startup and paced the body's second segment by a timer (a
        # timer interrupt and a softirq for 0.19-0.34 of the responses, +2-8
        # us per 100 KiB hit here, bench cache_hit); sent alone, it stays in
        # startup as nginx's sockets do, and no timer fires
        while True:
            n = send(fd, h.outb.p + h.outb.off, head, MSG_NOSIGNAL | MSG_DONTWAIT)
            if n >= 0 or errno != EINTR:
                break
        if n < 0:
            if errno == EAGAIN:
                h.hflags &= ~HF_WRITABLE
                return 0
            log_term(&h.c, TERM_CLIENT_ABORT)
            h_close(w, h, True)
            return -1
        h_account(w, h, n, False, False)
        h.c.last_ms = w.now_ms
        hb_drop(w, &h.outb, <uint32_t>n)
        if <uint64_t>n < head:
            h.hflags &= ~HF_WRITABLE
            return 1
    # one round a call, a pipe's worth: a 100 KiB body is one vmsplice in
    # and one splice out (rounds of 64 KiB, two of each, measured 3% more
    # CPU per hit)
    if cache_zpipe_fill(w, h, cx, rt, e) < 0:
        return -1
    return -1 if cache_zpipe_out(w, h, cx, rt) < 0 else 1


cdef int cache_send_direct(lb_worker *w, lb_hconn *h, lb_cache_x *cx) noexcept nogil:
    """Send the pending head and the body up to its tail from the region.
    1: bytes went out; 0: the socket is full (wait for it); -1: the
    connection was closed or the response cut (h is done with)."""
    cdef lb_cache_rt *rt = cx.src if cx.src != NULL else &w.http.cache.caches[cx.cache]   # (a disk hit: its tier)
    cdef shm_cache_entry *e = ce_at(rt, cx.entry)
    cdef iovec iov[CACHE_SEND_IOV + 1]
    cdef uint32_t blks[CACHE_SEND_IOV + 1]
    cdef uint32_t offs[CACHE_SEND_IOV + 1]
    cdef msghdr msg
    cdef uint32_t nb = rt.hd.n_blocks, b = cx.blk, off = cx.blk_off, k, first = 0, m, end
    cdef uint64_t want = cx.left - CACHE_SEND_TAIL, body = 0, head = h.outb.len, sent
    cdef ssize_t n
    cdef int st
    if not (h.hflags & HF_WRITABLE):
        return 0
    if cx.zpipe_len:
        return cache_zpipe_out(w, h, cx, rt)     # checked bytes, whatever became of the entry since
    if not ce_stable(e, cx.seq):
        h_cut(w, h)                  # evicted or purged since the last send
        return -1
    if cx.zpipe_on or (rt.zc and (lb_load_u8(&e.sent) or lb_load_u8(&e.freq) >= CACHE_SEND_FILE_FREQ)):
        st = cache_send_file(w, h, cx, rt, e)
        if st != -2:
            return st
    if head:
        iov[0].iov_base = h.outb.p + h.outb.off
        iov[0].iov_len = head
        first = 1
    k = first
    while body < want and k < first + CACHE_SEND_IOV:
        if b >= nb:
            h_cut(w, h)
            return -1
        m = CACHE_BLOCK - off
        if m > want - body:
            m = <uint32_t>(want - body)
        iov[k].iov_base = rt.blocks + <uint64_t>b * CACHE_BLOCK + off
        iov[k].iov_len = m
        blks[k] = b
        offs[k] = off
        body += m
        k += 1
        off = 0
        if body < want and k < first + CACHE_SEND_IOV:
            b = lb_load_u32(&rt.next[b])
    memset(&msg, 0, sizeof(msg))
    msg.msg_iov = iov
    msg.msg_iovlen = k
    while True:
        # MSG_MORE: the tail follows, so the kernel holds the last partial
        # segment for it instead of sending (and, on loopback, delivering) it alone
        n = sendmsg(h.c.sk[SIDE_CLIENT].fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE)
        if n >= 0 or errno != EINTR:
            break
    if n < 0:
        if errno == EAGAIN:
            h.hflags &= ~HF_WRITABLE
            return 0
        log_term(&h.c, TERM_CLIENT_ABORT)
        h_close(w, h, True)
        return -1
    # the kernel has copied them: were they still the entry's?
    if not ce_stable(e, cx.seq):
        h_cut(w, h)
        return -1
    h_account(w, h, n, False, False)
    h.c.last_ms = w.now_ms
    sent = <uint64_t>n
    if sent < head + body:
        h.hflags &= ~HF_WRITABLE     # the socket took no more
    if head:
        hb_drop(w, &h.outb, <uint32_t>(sent if sent < head else head))
        if sent <= head:
            return 1
        sent -= head
    cache_count(&rt.st.hit_bytes, sent)
    cx.left -= sent
    # the next byte's place: inside the iovec the count ended in, or after the last
    k = first
    while sent >= iov[k].iov_len:
        sent -= iov[k].iov_len
        if k + 1 == msg.msg_iovlen:
            end = offs[k] + <uint32_t>iov[k].iov_len
            if end == CACHE_BLOCK:
                cx.blk = lb_load_u32(&rt.next[blks[k]])
                cx.blk_off = 0
            else:
                cx.blk = blks[k]
                cx.blk_off = end
            return 1
        k += 1
    cx.blk = blks[k]
    cx.blk_off = offs[k] + <uint32_t>sent
    return 1
