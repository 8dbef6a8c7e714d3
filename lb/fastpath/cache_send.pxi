# A hit's body straight from the cache region to the client's socket
# (cache_serve, docs/cache.md). Only on a plain client socket (xp.splice: the
# stream's bytes are the socket's own); TLS and HTTP/2 streams frame or
# encrypt the bytes and keep the copy through the client's buffer.
#
# From the memory tier (cache_send_file), once the object was hit a few
# times (CACHE_SEND_FILE_FREQ; before, the sendmsg way below): the region is a /dev/shm file, so
# the head goes by send(2) with MSG_MORE and the body by one sendfile(2) per
# run of consecutive blocks: the socket takes references to the region's
# pages and nothing is copied. Those pages must never change while a socket
# holds them: the entry is marked sent before the first sendfile, and when
# a marked entry goes, ce_remove punches its blocks out of the file
# (cache_punch), so the next object written there gets fresh pages. From a
# disk tier (whose file stays allocated, never punched): one sendmsg(2) with
# the head and an iovec per 4 KiB block, the kernel's copy the only one.
#
# Readers hold no lock (cache.pxi): the entry's seq is checked before the
# blocks are walked and after the kernel took them. A seq that moved means
# the bytes sent may be another object's: the response is cut (h_cut). So
# that such a response can never arrive whole, the last CACHE_SEND_TAIL bytes
# always take the copy path, copied and checked before they are sent.

from lb.includes.uio cimport iovec, msghdr, sendmsg, MSG_MORE

cdef enum:
    CACHE_SEND_MIN = 16384           # below, a copy into outb and one send cost no more (measured at 16 KiB: even)
    CACHE_SEND_TAIL = 1024           # the body's end: through outb, after a seq check
    CACHE_SEND_IOV = 64              # blocks per sendmsg, and per call of cache_send_file (256 KiB)
    # hits (S3-FIFO's freq) before an object goes by sendfile: a sent object
    # is punched out when it goes, and the punch and the next object's write
    # into fresh pages (about 60 us per 100 KiB) outweigh the copy sendfile
    # saves (about 17 us) unless it is hit a few times; 1.38x lb-base's CPU
    # per request in bench cache_disk (random keys, objects rarely hit twice
    # in memory) when every hit went by sendfile
    CACHE_SEND_FILE_FREQ = 2


cdef inline bint cache_send_direct_ok(lb_hconn *h, lb_cache_x *cx) noexcept nogil:
    return (cx.local == NULL and cx.mp == NULL and cx.left >= CACHE_SEND_MIN
            and h.c.sk[SIDE_CLIENT].xp.splice and h.c.sk[SIDE_CLIENT].fd >= 0)


cdef int cache_send_file(lb_worker *w, lb_hconn *h, lb_cache_x *cx, lb_cache_rt *rt,
                         shm_cache_entry *e) noexcept nogil:
    """cache_send_direct from the memory tier's file: the head by send(2)
    with MSG_MORE, then one sendfile(2) per run of consecutive blocks. The
    socket takes references to the file's pages, no copy; cache_punch
    detaches a freed block's page before the block is written again, so
    what a socket holds stays the object's. Returns as cache_send_direct."""
    cdef int fd = h.c.sk[SIDE_CLIENT].fd
    cdef uint32_t nb = rt.hd.n_blocks, b = cx.blk, off = cx.blk_off, last, nx, k
    cdef uint64_t want = cx.left - CACHE_SEND_TAIL, run, pos, head = h.outb.len, moved = 0
    cdef long foff
    cdef ssize_t n
    if not lb_load_u8(&e.sent):
        lb_mark_u8(&e.sent)          # before any sendfile: its blocks get punched when it goes (ce_remove)
    if head:
        while True:
            n = send(fd, h.outb.p + h.outb.off, head, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE)
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
    while want and moved < CACHE_SEND_IOV * CACHE_BLOCK:
        if b >= nb:
            h_cut(w, h)
            return -1
        # the run: b and the blocks chained after it that follow it in the file
        run = CACHE_BLOCK - off
        last = b
        while run < want and run < CACHE_SEND_IOV * CACHE_BLOCK:
            nx = lb_load_u32(&rt.next[last])
            if nx != last + 1 or nx >= nb:
                break
            last = nx
            run += CACHE_BLOCK
        if run > want:
            run = want
        foff = <long>(rt.hd.off_blocks + <uint64_t>b * CACHE_BLOCK + off)
        while True:
            n = sendfile(fd, rt.zc_fd, &foff, run)
            if n >= 0 or errno != EINTR:
                break
        if n <= 0:
            if n < 0 and errno == EAGAIN:
                h.hflags &= ~HF_WRITABLE
                return 1 if head or moved else 0
            if n < 0:
                log_term(&h.c, TERM_CLIENT_ABORT)
                h_close(w, h, True)
            else:
                h_cut(w, h)          # past the file's end: a chain read while it changed
            return -1
        # the socket holds the pages it was given: were they still the entry's?
        if not ce_stable(e, cx.seq):
            h_cut(w, h)
            return -1
        h_account(w, h, n, False, True)     # (counted with splice's: the kernel moved them, lb did not copy)
        h.c.last_ms = w.now_ms
        cache_count(&rt.st.hit_bytes, <uint64_t>n)
        cx.left -= <uint64_t>n
        want -= <uint64_t>n
        moved += <uint64_t>n
        pos = off + <uint64_t>n
        k = <uint32_t>(pos // CACHE_BLOCK)
        off = <uint32_t>(pos % CACHE_BLOCK)
        if off == 0:
            b = lb_load_u32(&rt.next[b + k - 1])    # at a block's end: the chain says what follows
        else:
            b += k
        cx.blk = b
        cx.blk_off = off
        if <uint64_t>n < run:
            h.hflags &= ~HF_WRITABLE     # the socket took no more
            return 1
    return 1


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
    if not (h.hflags & HF_WRITABLE):
        return 0
    if not ce_stable(e, cx.seq):
        h_cut(w, h)                  # evicted or purged since the last send
        return -1
    if rt.zc and (lb_load_u8(&e.sent) or lb_load_u8(&e.freq) >= CACHE_SEND_FILE_FREQ):
        return cache_send_file(w, h, cx, rt, e)
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
