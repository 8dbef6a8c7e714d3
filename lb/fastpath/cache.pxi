# The shared cache (docs/cache.md): one region per [caches.NAME] (its layout
# in _fastpath.pxd, part 6), a request step that answers fresh hits from it
# and a response step that stores what RFC 9111 lets a shared cache store.
#
#   request step (cache)   GET/HEAD: the key (host and target), a lookup
#                          without locks; a fresh hit is answered here, its
#                          body copied from the region into the client's
#                          buffer (the one copy; a large body on a plain
#                          socket goes straight from the region to the
#                          kernel instead: cache_send.pxi), the entry's seq
#                          checked after each copy; byte ranges of a stored 200
#                          (or of a stored piece, a 206) are answered 206 from it,
#                          several as multipart/byteranges. Unsafe methods: their target is
#                          invalidated once the origin answered without error.
#                          PURGE: from purge_allow addresses only.
#   response step (cache_store)  the storability rules; a storable response
#                          with a Content-Length up to max_object_size is
#                          copied as it streams to the client, and published
#                          once whole (under the region's lock, never across
#                          I/O). Cache-Status on every response of the cache.
#   end step (cache_end)   the exchange's cache state is freed.
#
# Locking: every change of the index is made under the region's lock word,
# which holds the pid of its holder; a worker that dies holding it leaves it
# to the supervisor, which empties the cache (CacheShm.reap). Readers hold no
# lock and no reference: a copy is good when the entry's seq did not move.

import io as _io
import mmap as _mmap
import time as _time

from lb.includes.sendfile cimport fallocate, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_KEEP_SIZE
from lb.includes.unistd cimport pwrite

cdef extern from *:
    """
    #define lb_atomic_add_u64(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
    #define lb_mark_u8(p)           __atomic_store_n((p), 1, __ATOMIC_SEQ_CST)
    #define lb_fence_full()         __atomic_thread_fence(__ATOMIC_SEQ_CST)
    """
    void lb_atomic_add_u64(uint64_t *p, uint64_t v) nogil
    void lb_mark_u8(uint8_t *p) nogil
    void lb_fence_full() nogil

cdef enum:
    CE_FREE = 0
    CE_LIVE = 1
    CQ_SMALL = 1
    CQ_MAIN = 2
    CEF_AUTH_OK = 1                  # may answer requests with Authorization (public, s-maxage, must-revalidate)
    CEF_MUST_REVALIDATE = 2          # never served stale (must-revalidate, proxy-revalidate, s-maxage)
    CEF_NO_CACHE = 4                 # no-cache: revalidated before every use

# what the cache did with a request: the Cache-Status it gets
cdef enum:
    CN_NONE = 0
    CN_HIT = 1
    CN_URI_MISS = 2                  # nothing stored for the target
    CN_VARY_MISS = 3                 # stored, but for other values of its Vary fields
    CN_STALE = 4
    CN_REQUEST = 5                   # the request's own directives (no-cache) sent it on
    CN_BYPASS = 6                    # not a cacheable request (method, Authorization, a body)
    CN_LOCAL = 7                     # lb answered (PURGE)

# request Cache-Control
cdef enum:
    QCC_NO_STORE = 1
    QCC_NO_CACHE = 2
    QCC_ONLY_IF_CACHED = 4

# response Cache-Control
cdef enum:
    RCC_NO_STORE = 1
    RCC_NO_CACHE = 2
    RCC_PRIVATE = 4
    RCC_PUBLIC = 8
    RCC_MUST_REVALIDATE = 16
    RCC_PROXY_REVALIDATE = 32
    RCC_BAD = 64                     # a max-age or s-maxage that is not a number: stale
    RCC_NO_CACHE_NAMES = 128         # no-cache="names": those fields are not stored (cache_rfc.pxi)
    RCC_MUST_UNDERSTAND = 256        # must-understand: stored only with a status lb understands, no-store aside

cdef const uint32_t CACHE_NONE = 0xffffffffu
cdef const uint32_t CACHE_PUNCHED = 0xfffffffeu  # the next link of a free block punched out of the file (cache_punch)
cdef const int64_t CACHE_DELTA_MAX = 2147483648

cdef enum:
    CACHE_LOCK_SPINS = 200000        # a lock holder copies at most max_object_size: microseconds
    CACHE_CHAIN_MAX = 64             # entries looked at in one bucket
    CACHE_HEURISTIC_MAX = 86400      # heuristic freshness: at most a day

cdef const char *CN_STATUS[8]
CN_STATUS[CN_NONE] = b""
CN_STATUS[CN_HIT] = b"hit"
CN_STATUS[CN_URI_MISS] = b"fwd=uri-miss"
CN_STATUS[CN_VARY_MISS] = b"fwd=vary-miss"
CN_STATUS[CN_STALE] = b"fwd=stale"
CN_STATUS[CN_REQUEST] = b"fwd=request"
CN_STATUS[CN_BYPASS] = b"fwd=bypass"
CN_STATUS[CN_LOCAL] = b"detail=purge"


# ---- the region -------------------------------------------------------------------

cdef inline shm_cache_entry *ce_at(lb_cache_rt *rt, uint32_t i) noexcept nogil:
    return rt.entries + i


cdef void cache_rt_map(lb_cache_rt *rt, char *base) noexcept nogil:
    cdef shm_cache_head *hd = <shm_cache_head *>base
    rt.hd = hd
    rt.base = base
    rt.buckets = <uint32_t *>(base + hd.off_buckets)
    rt.entries = <shm_cache_entry *>(base + hd.off_entries)
    rt.next = <uint32_t *>(base + hd.off_next)
    rt.bstack = <uint32_t *>(base + hd.off_bstack)
    rt.estack = <uint32_t *>(base + hd.off_estack)
    rt.ghost = <uint64_t *>(base + hd.off_ghost)
    rt.blocks = base + hd.off_blocks
    rt.fills = <shm_cache_fill *>(base + hd.off_fills)


cdef bint cache_lock(lb_cache_rt *rt) noexcept nogil:
    """The region's lock, for rt.pid; False when it stays busy (the caller
    then does without: a store is skipped)."""
    cdef uint32_t expected, i
    for i in range(CACHE_LOCK_SPINS):
        expected = 0
        if lb_load_u32(&rt.hd.lock) == 0 and lb_cas_u32(&rt.hd.lock, &expected, rt.pid):
            return True
        lb_cpu_relax()
    return False


cdef inline void cache_unlock(lb_cache_rt *rt) noexcept nogil:
    lb_release_u32(&rt.hd.lock, 0)


cdef inline void ce_begin(shm_cache_entry *e) noexcept nogil:
    """Readers skip the entry from here on (seq odd)."""
    lb_store_u32(&e.seq, e.seq | 1)
    lb_fence_release()


cdef inline void ce_publish(shm_cache_entry *e) noexcept nogil:
    lb_release_u32(&e.seq, (e.seq | 1) + 1)


cdef void q_unlink(lb_cache_rt *rt, uint32_t i) noexcept nogil:
    cdef shm_cache_head *hd = rt.hd
    cdef shm_cache_entry *e = ce_at(rt, i)
    cdef uint32_t *head
    cdef uint32_t *tail
    if e.queue == CQ_SMALL:
        head = &hd.small_head
        tail = &hd.small_tail
        hd.small_blocks -= e.n_blocks
    else:
        head = &hd.main_head
        tail = &hd.main_tail
        hd.main_blocks -= e.n_blocks
    if e.q_prev:
        ce_at(rt, e.q_prev - 1).q_next = e.q_next
    else:
        head[0] = e.q_next
    if e.q_next:
        ce_at(rt, e.q_next - 1).q_prev = e.q_prev
    else:
        tail[0] = e.q_prev
    e.q_prev = 0
    e.q_next = 0
    e.queue = 0


cdef void q_push(lb_cache_rt *rt, uint32_t i, uint8_t queue) noexcept nogil:
    """At the head (the newest end) of a queue."""
    cdef shm_cache_head *hd = rt.hd
    cdef shm_cache_entry *e = ce_at(rt, i)
    cdef uint32_t *head = &hd.small_head if queue == CQ_SMALL else &hd.main_head
    cdef uint32_t *tail = &hd.small_tail if queue == CQ_SMALL else &hd.main_tail
    e.queue = queue
    e.q_prev = 0
    e.q_next = head[0]
    if head[0]:
        ce_at(rt, head[0] - 1).q_prev = i + 1
    else:
        tail[0] = i + 1
    head[0] = i + 1
    if queue == CQ_SMALL:
        hd.small_blocks += e.n_blocks
    else:
        hd.main_blocks += e.n_blocks


cdef inline void cache_punch(lb_cache_rt *rt, uint32_t first, uint32_t n) noexcept nogil:
    """Drop the pages of n freed blocks from the region's file. A socket
    may still hold them (a hit vmspliced from the region, cache_send.pxi,
    not yet read by its client): it keeps its reference to the old page (the
    punch unmaps it from every worker's mapping too), and the block's next
    object is written into a fresh one, so bytes already handed
    to the kernel never change. Only for objects marked sent: a punch and
    the page faults of the next write into those blocks cost more than the
    copy sending from the file saves (3x the CPU per request under random keys when every
    freed block was punched). Lock held, or the region not yet shared."""
    fallocate(rt.zc_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
              <long>(rt.hd.off_blocks + <uint64_t>first * CACHE_BLOCK), <long>n * CACHE_BLOCK)


cdef void cache_write(lb_cache_rt *rt, uint32_t first, const char *src, uint64_t n) noexcept nogil:
    """Write n bytes at block first (and the blocks after it, all punched
    out) of the memory tier's file. By pwrite rather than through the
    mapping: a punched block would take a page fault per 4 KiB through the
    mapping; a write into the file takes its fresh pages without (measured
    at 100 KiB: 41 us against 80). A block with its page still there is
    written through the mapping: pwrite's page lookups would cost more than
    memcpy. Lock held."""
    cdef uint64_t done = 0
    cdef ssize_t w
    while done < n:
        w = pwrite(rt.zc_fd, src + done, n - done,
                   <long>(rt.hd.off_blocks + <uint64_t>first * CACHE_BLOCK + done))
        if w <= 0:
            if w < 0 and errno == EINTR:
                continue
            break
        done += <uint64_t>w
    if done < n:                     # (never on tmpfs short of memory: the mapping then, as before)
        memcpy(rt.blocks + <uint64_t>first * CACHE_BLOCK + done, src + done, n - done)


cdef void ce_remove(lb_cache_rt *rt, uint32_t i, bint ghost) noexcept nogil:
    """Unlink a live entry and give its blocks back. Lock held."""
    cdef shm_cache_head *hd = rt.hd
    cdef shm_cache_entry *e = ce_at(rt, i)
    cdef uint32_t *link = &rt.buckets[e.hash & (hd.n_buckets - 1)]
    cdef uint32_t b, nb, k, run, n_run
    cdef bint punch
    ce_begin(e)
    # a reader marks sent before its vmsplice and checks seq after it: with
    # full fences on both sides, either this sees the mark or that reader
    # sees the seq move (and cuts its response)
    lb_fence_full()
    punch = rt.zc and lb_load_u8(&e.sent)
    k = 0
    while link[0] and k < hd.n_entries:
        if link[0] == i + 1:
            lb_store_u32(link, e.chain)
            break
        link = &ce_at(rt, link[0] - 1).chain
        k += 1
    q_unlink(rt, i)
    # pushed last block first, so that the next object pops them in the
    # order they were chained: a run of blocks stays one run in the file
    # (one iovec per run, cache_send.pxi)
    b = e.first
    run = b
    n_run = 0
    for k in range(e.n_blocks):
        nb = rt.next[b]
        rt.bstack[hd.free_blocks + e.n_blocks - 1 - k] = b
        if punch:
            if n_run and b != run + n_run:
                cache_punch(rt, run, n_run)
                n_run = 0
            if n_run == 0:
                run = b
            n_run += 1
            # a free block's link is free to say it has no page (cache_insert
            # writes it by pwrite then); a reader still walking the old chain
            # reads it as past the end and cuts, as it would a moved seq
            lb_store_u32(&rt.next[b], CACHE_PUNCHED)
        b = nb
    if n_run:
        cache_punch(rt, run, n_run)
    hd.free_blocks += e.n_blocks
    if ghost:
        rt.ghost[e.hash & (hd.n_ghost - 1)] = e.hash
    hd.objects -= 1
    hd.bytes -= e.key_len + e.vary_len + e.tags_len + e.head_len + e.body_len
    e.state = CE_FREE
    e.chain = 0
    rt.estack[hd.free_entries] = i
    hd.free_entries += 1


cdef int cache_evict_one(lb_cache_rt *rt) noexcept nogil:
    """One S3-FIFO step. 1: an entry was evicted; 0: one moved (call again);
    -1: nothing left to evict. Lock held."""
    cdef shm_cache_head *hd = rt.hd
    cdef uint32_t i
    cdef shm_cache_entry *e
    if hd.small_tail and (hd.small_blocks > hd.small_cap or hd.main_tail == 0):
        i = hd.small_tail - 1
        e = ce_at(rt, i)
        if e.freq:
            # seen again while in the small queue: it earns its place in main
            q_unlink(rt, i)
            e.freq = 0
            q_push(rt, i, CQ_MAIN)
            return 0
        if rt.disk != NULL:
            cache_demote(rt, i)      # the disk tier takes what memory lets go (cache_disk.pxi)
        ce_remove(rt, i, True)
        return 1
    if hd.main_tail:
        i = hd.main_tail - 1
        e = ce_at(rt, i)
        if e.freq:
            q_unlink(rt, i)
            e.freq -= 1
            q_push(rt, i, CQ_MAIN)
            return 0
        if rt.disk != NULL:
            cache_demote(rt, i)
        ce_remove(rt, i, False)
        return 1
    return -1


cdef uint32_t cache_remove_hash(lb_cache_rt *rt, uint64_t hash) noexcept nogil:
    """Remove every entry of a key (each of its Vary variants). Lock held."""
    cdef uint32_t n = 0, link, i, k = 0
    link = rt.buckets[hash & (rt.hd.n_buckets - 1)]
    while link and k < rt.hd.n_entries:
        i = link - 1
        link = ce_at(rt, i).chain
        if ce_at(rt, i).state == CE_LIVE and ce_at(rt, i).hash == hash:
            ce_remove(rt, i, False)
            n += 1
        k += 1
    return n


cdef int cache_insert(lb_cache_rt *rt, const char *obj, uint64_t len, shm_cache_entry *meta,
                      uint64_t *evicted) noexcept nogil:
    """Store an object (key, Vary names, tags, head, body) with meta's sizes,
    times and flags, in place of the entries of its key and Vary values.
    0 stored, -1 no room, -2 a piece (a 206) where a whole response is
    stored (another's fill, since the piece's request missed). Lock held."""
    cdef shm_cache_head *hd = rt.hd
    cdef uint32_t need = <uint32_t>((len + CACHE_BLOCK - 1) // CACHE_BLOCK), i, b, prev, k, link, j
    cdef uint8_t queue
    cdef int st
    cdef shm_cache_entry *e
    cdef uint64_t off, n, run_off = 0, run_n
    cdef uint32_t run_b = 0
    cdef bint fresh
    if need == 0:
        need = 1
    if need > hd.n_blocks - hd.small_cap:
        return -1
    if meta.status == 206:
        link = rt.buckets[meta.hash & (hd.n_buckets - 1)]
        k = 0
        while link and k < hd.n_entries:
            e = ce_at(rt, link - 1)
            link = e.chain
            if e.state == CE_LIVE and e.hash == meta.hash and e.vhash == meta.vhash and e.status != 206:
                return -2
            k += 1
    link = rt.buckets[meta.hash & (hd.n_buckets - 1)]
    k = 0
    while link and k < hd.n_entries:
        j = link - 1
        link = ce_at(rt, j).chain
        if ce_at(rt, j).state == CE_LIVE and ce_at(rt, j).hash == meta.hash and ce_at(rt, j).vhash == meta.vhash:
            ce_remove(rt, j, False)
        k += 1
    queue = CQ_SMALL
    if rt.ghost[meta.hash & (hd.n_ghost - 1)] == meta.hash or need > hd.small_cap:
        queue = CQ_MAIN              # seen not long ago (a ghost): straight to main
    k = 0
    while hd.free_blocks < need or hd.free_entries == 0:
        st = cache_evict_one(rt)
        if st < 0:
            return -1
        if st == 1:
            evicted[0] += 1
        k += 1
        if k > 4 * hd.n_entries + 8:
            return -1
    hd.free_entries -= 1
    i = rt.estack[hd.free_entries]
    e = ce_at(rt, i)
    ce_begin(e)
    off = 0
    prev = CACHE_NONE
    run_n = 0
    for k in range(need):
        hd.free_blocks -= 1
        b = rt.bstack[hd.free_blocks]
        fresh = rt.next[b] == CACHE_PUNCHED
        if prev == CACHE_NONE:
            e.first = b
        else:
            rt.next[prev] = b
        n = len - off
        if n > CACHE_BLOCK:
            n = CACHE_BLOCK
        if n and fresh and rt.zc:
            if run_n and b == prev + 1:
                run_n += n
            else:
                if run_n:
                    cache_write(rt, run_b, obj + run_off, run_n)
                run_b = b
                run_off = off
                run_n = n
        elif n:
            if run_n:
                cache_write(rt, run_b, obj + run_off, run_n)
                run_n = 0
            memcpy(rt.blocks + <uint64_t>b * CACHE_BLOCK, obj + off, n)
        off += n
        prev = b
    if run_n:
        cache_write(rt, run_b, obj + run_off, run_n)
    rt.next[prev] = CACHE_NONE
    e.n_blocks = need
    e.hash = meta.hash
    e.vhash = meta.vhash
    e.freq = 0
    e.flags = meta.flags
    e.status = meta.status
    e.key_len = meta.key_len
    e.vary_len = meta.vary_len
    e.tags_len = meta.tags_len
    e.head_len = meta.head_len
    e.body_len = meta.body_len
    e.resp_ms = meta.resp_ms
    e.age0 = meta.age0
    e.fresh = meta.fresh
    e.stale_if_error = meta.stale_if_error
    e.stale_while_revalidate = meta.stale_while_revalidate
    e.sent = 0
    e.state = CE_LIVE
    e.chain = rt.buckets[meta.hash & (hd.n_buckets - 1)]
    ce_publish(e)
    lb_release_u32(&rt.buckets[meta.hash & (hd.n_buckets - 1)], i + 1)
    q_push(rt, i, queue)
    hd.objects += 1
    hd.bytes += len
    return 0


cdef void cache_reset(lb_cache_rt *rt) noexcept nogil:
    """Empty the cache: every entry free (its seq moved on, so a reader in
    the middle of a copy sees it), every block free. Lock held."""
    cdef shm_cache_head *hd = rt.hd
    cdef uint32_t i
    for i in range(hd.n_entries):
        ce_begin(&rt.entries[i])
        rt.entries[i].state = CE_FREE
        rt.entries[i].chain = 0
        rt.entries[i].queue = 0
        rt.estack[i] = hd.n_entries - 1 - i
    for i in range(hd.n_buckets):
        lb_store_u32(&rt.buckets[i], 0)
    for i in range(hd.n_blocks):
        rt.bstack[i] = hd.n_blocks - 1 - i
    if rt.zc:
        cache_punch(rt, 0, hd.n_blocks)
        for i in range(hd.n_blocks):
            lb_store_u32(&rt.next[i], CACHE_PUNCHED)
    hd.free_entries = hd.n_entries
    hd.free_blocks = hd.n_blocks
    hd.small_head = hd.small_tail = hd.main_head = hd.main_tail = 0
    hd.small_blocks = hd.main_blocks = 0
    hd.objects = 0
    hd.bytes = 0


# ---- reading an entry without a lock --------------------------------------------------

cdef bint ce_copy(lb_cache_rt *rt, shm_cache_entry *e, uint32_t seq, uint64_t off, char *dst, uint64_t n) noexcept nogil:
    """Copy n bytes from offset off of the entry's object; False when the
    entry changed meanwhile (the copy is then garbage)."""
    cdef uint32_t b = lb_load_u32(&e.first), nb = rt.hd.n_blocks
    cdef uint64_t skip = off // CACHE_BLOCK, pos = off % CACHE_BLOCK, k, m
    for k in range(skip):
        if b >= nb:
            return False
        b = lb_load_u32(&rt.next[b])
    while n:
        if b >= nb:
            return False
        m = CACHE_BLOCK - pos
        if m > n:
            m = n
        memcpy(dst, rt.blocks + <uint64_t>b * CACHE_BLOCK + pos, m)
        dst += m
        n -= m
        pos = 0
        if n:
            b = lb_load_u32(&rt.next[b])
    lb_fence_acquire()
    return lb_load_u32(&e.seq) == seq


cdef inline bint ce_stable(shm_cache_entry *e, uint32_t seq) noexcept nogil:
    lb_fence_acquire()
    return lb_load_u32(&e.seq) == seq


# ---- dates, directives -----------------------------------------------------------------

cdef int64_t days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    if m <= 2:
        y -= 1
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef int month_of(const uint8_t *v) noexcept nogil:
    cdef const char *names = b"janfebmaraprmayjunjulaugsepoctnovdec"
    cdef int i
    for i in range(12):
        # any case: "AUG" is read as a recipient should (RFC 9110 5.6.7 is case-sensitive
        # for senders only), a wrong separator or field width is not
        if lower(v[0]) == names[3 * i] and lower(v[1]) == names[3 * i + 1] and lower(v[2]) == names[3 * i + 2]:
            return i + 1
    return 0


cdef bint digits_at(const uint8_t *v, uint32_t n, uint32_t *p, uint32_t count, int64_t *out) noexcept nogil:
    cdef uint32_t i
    cdef int64_t x = 0
    if p[0] + count > n:
        return False
    for i in range(count):
        if not (48 <= v[p[0] + i] <= 57):
            return False
        x = x * 10 + v[p[0] + i] - 48
    p[0] += count
    out[0] = x
    return True


cdef inline bint _byte_at(const uint8_t *v, uint32_t n, uint32_t *p, uint8_t c) noexcept nogil:
    if p[0] >= n or v[p[0]] != c:
        return False
    p[0] += 1
    return True


cdef bint http_date(const uint8_t *v, uint32_t n, int64_t *out) noexcept nogil:
    """An HTTP-date (RFC 9110 5.6.7): IMF-fixdate, or the obsolete RFC 850 and
    asctime forms a recipient must accept; unix seconds. Each form is held
    to its own grammar (one space between parts, its own year width and
    separators): "Thu, 18 Aug 50 ..." or "Thu, 18-Aug-2050 ..." is no date,
    and an invalid Expires means "already expired" (RFC 9111 5.3)."""
    cdef uint32_t p = 0, wd
    cdef int64_t day = 0, mon, year = 0, hh = 0, mm = 0, ss = 0
    cdef int form                    # 0 IMF-fixdate, 1 RFC 850, 2 asctime
    while p < n and ((65 <= v[p] <= 90) or (97 <= v[p] <= 122)):
        p += 1
    wd = p
    if wd < 3:
        return False
    if p < n and v[p] == 44:
        p += 1
        if wd == 3:
            form = 0
        elif wd >= 6 and wd <= 9:
            form = 1
        else:
            return False
    elif wd == 3:
        form = 2
    else:
        return False
    if not _byte_at(v, n, &p, 32):
        return False
    if form == 2:
        if p + 3 > n:
            return False
        mon = month_of(v + p)
        p += 3
        if not _byte_at(v, n, &p, 32):
            return False
        if p < n and v[p] == 32:
            p += 1
            if not digits_at(v, n, &p, 1, &day):
                return False
        elif not digits_at(v, n, &p, 2, &day):
            return False
        if not _byte_at(v, n, &p, 32):
            return False
    else:
        if not digits_at(v, n, &p, 2, &day) or not _byte_at(v, n, &p, 32 if form == 0 else 45):
            return False
        if p + 3 > n:
            return False
        mon = month_of(v + p)
        p += 3
        if not _byte_at(v, n, &p, 32 if form == 0 else 45):
            return False
        if form == 0:
            if not digits_at(v, n, &p, 4, &year):
                return False
        elif digits_at(v, n, &p, 2, &year):
            year += 1900 if year >= 70 else 2000   # RFC 850: two digits
        else:
            return False
        if not _byte_at(v, n, &p, 32):
            return False
    if mon == 0 or not digits_at(v, n, &p, 2, &hh) or not _byte_at(v, n, &p, 58):
        return False
    if not digits_at(v, n, &p, 2, &mm) or not _byte_at(v, n, &p, 58):
        return False
    if not digits_at(v, n, &p, 2, &ss):
        return False
    if form == 2:
        if not _byte_at(v, n, &p, 32) or not digits_at(v, n, &p, 4, &year):
            return False
    else:
        if p + 4 != n or v[p] != 32 or lower(v[p + 1]) != 103 or lower(v[p + 2]) != 109 or lower(v[p + 3]) != 116:
            return False
        p += 4
    if p != n or day < 1 or day > 31 or hh > 23 or mm > 59 or ss > 60:
        return False
    out[0] = days_from_civil(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss
    return True


cdef bint delta_seconds(const uint8_t *v, uint32_t n, int64_t *out) noexcept nogil:
    """delta-seconds; a value past 2^31 counts as 2^31 (RFC 9111 1.2.2)."""
    cdef uint32_t i
    cdef int64_t x = 0
    if n >= 2 and v[0] == 34 and v[n - 1] == 34:
        v += 1                       # a quoted value: accepted, as most caches do
        n -= 2
    if n == 0:
        return False
    for i in range(n):
        if not (48 <= v[i] <= 57):
            return False
        if x < CACHE_DELTA_MAX:
            x = x * 10 + v[i] - 48
    out[0] = x if x < CACHE_DELTA_MAX else CACHE_DELTA_MAX
    return True


cdef int64_t field_date(const uint8_t *b, http_req *r, const char *lower_name, bint *found) noexcept nogil:
    cdef uint32_t i
    cdef int64_t t = 0
    found[0] = False
    for i in range(r.n_fields):
        if name_is(b, &r.fields[i], lower_name):
            found[0] = True          # the first one counts; invalid: found, not parsed
            if http_date(b + r.fields[i].value_off, r.fields[i].value_len, &t):
                return t
            return -1
    return -1


cdef uint32_t cc_parse(const uint8_t *b, http_req *r, bint response, int64_t *max_age, int64_t *s_maxage,
                       int64_t *min_fresh, int64_t *sie=NULL) noexcept nogil:
    """The Cache-Control directives lb acts on: flags, and max-age (s-maxage,
    min-fresh) or -1. Unknown directives are ignored (RFC 9111 5.2.3)."""
    cdef uint32_t flags = 0, i, pos, off, len, nl, k
    cdef const uint8_t *v
    cdef const uint8_t *d
    cdef int64_t x
    # RFC 9213: a response's CDN-Cache-Control, when it has one, is what a
    # CDN's cache (lb here) obeys, in place of Cache-Control
    cdef const char *field = b"cdn-cache-control" if response and cdn_cc_in_force(b, r) else b"cache-control"
    max_age[0] = -1
    s_maxage[0] = -1
    min_fresh[0] = -1
    for i in range(r.n_fields):
        if not name_is(b, &r.fields[i], field):
            continue
        v = b + r.fields[i].value_off
        pos = 0
        while cc_next(v, r.fields[i].value_len, &pos, &off, &len):
            d = v + off
            if field[1] == 100:      # "cdn-...": a structured field, its parameters aside
                len = sf_member_len(d, len)
            nl = 0
            while nl < len and d[nl] != 61:
                nl += 1
            k = nl + 1 if nl < len else len
            if ieq(d, nl, b"no-store"):
                flags |= RCC_NO_STORE if response else QCC_NO_STORE
            elif response and ieq(d, nl, b"no-cache") and nl + 1 < len:
                flags |= RCC_NO_CACHE_NAMES   # only the fields it names (RFC 9111 5.2.2.4)
            elif ieq(d, nl, b"no-cache"):
                flags |= RCC_NO_CACHE if response else QCC_NO_CACHE
            elif response and ieq(d, nl, b"must-understand"):
                flags |= RCC_MUST_UNDERSTAND
            elif response and ieq(d, nl, b"private"):
                flags |= RCC_PRIVATE
            elif response and ieq(d, nl, b"public"):
                flags |= RCC_PUBLIC
            elif response and ieq(d, nl, b"must-revalidate"):
                flags |= RCC_MUST_REVALIDATE
            elif response and ieq(d, nl, b"proxy-revalidate"):
                flags |= RCC_PROXY_REVALIDATE
            elif not response and ieq(d, nl, b"only-if-cached"):
                flags |= QCC_ONLY_IF_CACHED
            elif ieq(d, nl, b"max-age"):
                # a second max-age: the first counts (RFC 9111 4.2.1 lets a cache
                # take the first or call the response stale); one that is not a
                # number makes the response stale
                if max_age[0] < 0 and not (flags & RCC_BAD):
                    if not delta_seconds(d + k, len - k, &x):
                        flags |= RCC_BAD
                        x = 0
                    max_age[0] = x
            elif response and ieq(d, nl, b"s-maxage"):
                if s_maxage[0] < 0:
                    if not delta_seconds(d + k, len - k, &x):
                        flags |= RCC_BAD
                        x = 0
                    s_maxage[0] = x
            elif not response and ieq(d, nl, b"min-fresh"):
                if delta_seconds(d + k, len - k, &x):
                    min_fresh[0] = x
            elif response and sie != NULL and ieq(d, nl, b"stale-if-error"):
                if delta_seconds(d + k, len - k, &x):
                    sie[0] = x
            elif not response and sie != NULL and ieq(d, nl, b"max-stale"):
                # a request's max-stale: any staleness without a value (RFC 9111 5.2.1.2)
                sie[0] = x if nl < len and delta_seconds(d + k, len - k, &x) else CACHE_DELTA_MAX
    if not response and not (flags & QCC_NO_CACHE):
        # Pragma: no-cache, from HTTP/1.0 clients that send no Cache-Control
        for i in range(r.n_fields):
            if name_is(b, &r.fields[i], b"cache-control"):
                break
            if name_is(b, &r.fields[i], b"pragma") and ieq(b + r.fields[i].value_off, r.fields[i].value_len,
                                                            b"no-cache"):
                flags |= QCC_NO_CACHE
    return flags


cdef inline int32_t field_find(const uint8_t *b, http_req *r, const char *lower_name) noexcept nogil:
    cdef uint32_t i
    for i in range(r.n_fields):
        if name_is(b, &r.fields[i], lower_name):
            return <int32_t>i
    return -1


# ---- keys ---------------------------------------------------------------------------------

cdef uint32_t cache_key(lb_cache_rt *rt, const uint8_t *b, http_req *r, char *out, uint32_t cap,
                        uint32_t *url_len) noexcept nogil:
    """The key of the request's target, as the cache's key settings make it
    (fastpath/cache_key.pxi); the index hashes its first url_len bytes.
    0: none (no host, too long)."""
    cdef const uint8_t *h
    cdef const uint8_t *t
    cdef uint32_t hn, tn
    if not req_authority(b, r, &h, &hn, &t, &tn):
        return 0
    return cache_key_make(&rt.key, h, hn, t, tn, b, r, out, cap, url_len)


cdef uint64_t vary_hash(const uint8_t *b, http_req *r, const char *names, uint32_t n, uint64_t seed) noexcept nogil:
    """The request's values of the Vary fields, each field's list members
    in order, hashed. Two requests share a variant when these are equal:
    "a, b" on one line or two, with any spaces around the commas, is the
    same value (RFC 9111 4.1), and so are the Accept-* tokens in any case."""
    cdef uint64_t hsh = seed ^ 0x76617279
    cdef uint32_t pos = 0, off, len, i, vp, voff, vlen
    cdef bint any_field, fold
    while http_list_next(<const uint8_t *>names, n, &pos, &off, &len):
        hsh = lb_xxh64(<const uint8_t *>names + off, len, hsh)
        any_field = False
        fold = vary_case_insensitive(names + off, len)
        for i in range(r.n_fields):
            if _name_eq(b + r.fields[i].name_off, r.fields[i].name_len, <const uint8_t *>names + off, len):
                vp = 0
                while http_list_next(b + r.fields[i].value_off, r.fields[i].value_len, &vp, &voff, &vlen):
                    hsh = vary_member_hash(b + r.fields[i].value_off + voff, vlen, fold, hsh)
                any_field = True
        if not any_field:
            hsh = lb_xxh64(<const uint8_t *>b"\0", 1, hsh ^ 0x6e6f6e65)   # absent differs from empty
    return hsh | 1                   # 0 means "no Vary"


cdef inline bint _name_eq(const uint8_t *a, uint32_t an, const uint8_t *lower_b, uint32_t bn) noexcept nogil:
    cdef uint32_t i
    if an != bn:
        return False
    for i in range(an):
        if lower(a[i]) != lower_b[i]:
            return False
    return True


# ---- lookup ---------------------------------------------------------------------------------

cdef int cache_lookup(lb_cache_rt *rt, const char *key, uint32_t key_len, uint64_t hash, const uint8_t *b,
                      http_req *r, bint auth, int64_t now_ms, int64_t req_max_age, int64_t min_fresh,
                      shm_cache_entry *out, uint32_t *idx, uint32_t *stale_seq, int64_t max_stale=-1) noexcept nogil:
    """CN_HIT with the entry's fields in out (and its index; out.seq is the
    seq the copy was good for), or why not: CN_URI_MISS, CN_VARY_MISS,
    CN_STALE. Without a lock: a chain that moves under the walk is walked
    again, a few times at most (then: a miss)."""
    cdef char scratch[CACHE_META_MAX]
    cdef char kbuf[256]
    cdef uint32_t link, i, seq, steps, tries, kn
    cdef shm_cache_entry *e
    cdef int result
    cdef int64_t age
    cdef uint64_t off
    for tries in range(4):
        result = CN_URI_MISS
        link = lb_acquire_u32(&rt.buckets[hash & (rt.hd.n_buckets - 1)])
        steps = 0
        while link and steps < CACHE_CHAIN_MAX:
            steps += 1
            i = link - 1
            if i >= rt.hd.n_entries:
                break
            e = ce_at(rt, i)
            seq = lb_acquire_u32(&e.seq)
            if seq & 1:
                break                # changing under us: walk again
            memcpy(out, e, sizeof(shm_cache_entry))
            if not ce_stable(e, seq):
                break
            link = out.chain
            if out.state != CE_LIVE or out.hash != hash or out.key_len != key_len:
                continue
            # the key itself (a 64-bit hash is not proof), then the variant
            off = 0
            while off < key_len:
                kn = key_len - off if key_len - off < sizeof(kbuf) else sizeof(kbuf)
                if not ce_copy(rt, e, seq, off, kbuf, kn) or memcmp(kbuf, key + off, kn) != 0:
                    break
                off += kn
            if off < key_len:
                continue
            if out.vary_len:
                if out.vary_len > CACHE_META_MAX or not ce_copy(rt, e, seq, key_len, scratch, out.vary_len):
                    continue
                if vary_hash(b, r, scratch, out.vary_len, rt.hd.seed ^ key_fields_hash(key, key_len)) != out.vhash:
                    if result == CN_URI_MISS:
                        result = CN_VARY_MISS
                        if (not auth or (out.flags & CEF_AUTH_OK)) and out.status != 206:
                            idx[0] = i       # its validators may select it for this request (RFC 9111 4.3.1)
                            stale_seq[0] = seq
                    continue
            if auth and not (out.flags & CEF_AUTH_OK):
                result = CN_BYPASS
                continue
            age = out.age0 + (now_ms - out.resp_ms) // 1000
            if age < 0:
                age = 0
            if out.status == 206 and (age >= out.fresh or req_max_age >= 0 or min_fresh >= 0):
                continue                 # a piece is used only fresh, as it is, never revalidated: else a miss
            if age >= out.fresh and not (max_stale >= 0 and age - out.fresh <= max_stale
                                         and not (out.flags & (CEF_MUST_REVALIDATE | CEF_NO_CACHE))):
                result = CN_STALE
                idx[0] = i               # it may be revalidated
                stale_seq[0] = seq
                continue
            # fresh, but older than the request accepts: a request's max-age is
            # held to the millisecond, and max-age=0 (a reload) to none at all
            if (req_max_age == 0 or (req_max_age > 0 and out.age0 * 1000 + now_ms - out.resp_ms > req_max_age * 1000)
                    or (min_fresh >= 0 and out.fresh - age < min_fresh)):
                result = CN_REQUEST
                idx[0] = i               # it may be revalidated, as a stale one is
                stale_seq[0] = seq
                continue
            out.seq = seq
            idx[0] = i
            if out.freq < 3:
                e.freq = out.freq + 1    # racy on purpose: a lost count only ages it sooner
            return CN_HIT
        else:
            return result
    return CN_URI_MISS


# ---- the exchange's state -------------------------------------------------------------------

cdef lb_cache_x *cx_alloc(lb_worker *w) noexcept nogil:
    cdef lb_cache_wk *cw = w.http.cache
    cdef lb_cache_x *cx = cw.free_cx
    if cx != NULL:
        cw.free_cx = <lb_cache_x *>cx.key
    else:
        cx = <lb_cache_x *>malloc(sizeof(lb_cache_x))
        if cx == NULL:
            return NULL
    memset(cx, 0, sizeof(lb_cache_x))
    return cx


cdef void cx_free(lb_worker *w, lb_cache_x *cx) noexcept nogil:
    if cx.claimed:
        cache_unclaim(&w.http.cache.caches[cx.cache], cx, False)
    tl_remove(&cx.twait)
    if cx.rf != NULL:
        refresh_close(w, cx.rf, False)   # its exchange ended before the origin answered it
    if cx.zpipe_on:
        pipe_give(w, cx.zpipe, cx.zpipe_len != 0)
    free(cx.key)
    free(cx.req)
    free(cx.obj)
    free(cx.local)
    free(cx.mp)
    cx.key = <char *>w.http.cache.free_cx    # the free list runs through key
    w.http.cache.free_cx = cx


cdef inline lb_cache_rt *cache_of(lb_worker *w, lb_hconn *h) noexcept nogil:
    cdef int32_t ci = h.hl.cache
    if h.route >= 0 and h.hl.routes[h.route].cache >= 0:
        ci = h.hl.routes[h.route].cache
    if ci < 0 or w.http.cache == NULL:
        return NULL
    return &w.http.cache.caches[ci]


cdef inline void cache_count(uint64_t *counter, uint64_t n) noexcept nogil:
    # a row may be shared by two generations' workers for a while: atomic
    lb_atomic_add_u64(counter, n)


cdef uint32_t fmt_u64(char *out, uint64_t v) noexcept nogil:
    cdef char digits[24]
    cdef uint32_t i = 24, n
    while True:
        i -= 1
        digits[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    n = 24 - i
    memcpy(out, digits + i, n)
    return n


cdef void cx_status(lb_cache_x *cx, uint8_t note, bint stored, int64_t age, int64_t ttl,
                    bint with_age=False) noexcept nogil:
    """The fields lb adds: Age on hits, Cache-Status (RFC 9211) always."""
    cdef char *o = cx.hdr
    cdef uint32_t n = 0
    cdef const char *s
    if note == CN_HIT or with_age:
        memcpy(o, b"Age: ", 5)
        n = 5
        n += fmt_u64(o + n, <uint64_t>(age if age > 0 else 0))
        memcpy(o + n, b"\r\n", 2)
        n += 2
    memcpy(o + n, b"Cache-Status: lb; ", 18)
    n += 18
    s = CN_STATUS[note]
    memcpy(o + n, s, strlen(s))
    n += strlen(s)
    if (note == CN_STALE or note == CN_REQUEST or note == CN_VARY_MISS) and cx.reval == 2:
        memcpy(o + n, b"; fwd-status=304", 16)
        n += 16
    if stored:
        memcpy(o + n, b"; stored", 8)
        n += 8
    if note == CN_HIT or stored:
        memcpy(o + n, b"; ttl=", 6)
        n += 6
        if ttl < 0:
            o[n] = 45
            n += 1
            ttl = -ttl
        n += fmt_u64(o + n, <uint64_t>ttl)
    if note == CN_HIT and cache_hit_from_disk:
        memcpy(o + n, b"; detail=disk", 13)
        n += 13
    memcpy(o + n, b"\r\n", 2)
    cx.hdr_len = n + 2


cdef bint cache_emit(lb_hconn *h, lb_hbuf *o) noexcept nogil:
    """rewrite_response: the cache's fields on a final response."""
    cdef const char *s
    if h.cx != NULL and h.cx.hdr_len:
        return ob_put(o, h.cx.hdr, h.cx.hdr_len)
    if h.cache_note == CN_NONE:
        return True
    s = CN_STATUS[h.cache_note]
    return ob_str(o, b"Cache-Status: lb; ") and ob_str(o, s) and ob_put(o, b"\r\n", 2)


# ---- answering from the cache -----------------------------------------------------------------

cdef int cache_answer(lb_worker *w, lb_hconn *h, http_req *rq, char *head, http_req *rs,
                      bint from_response=False) noexcept nogil:
    """Answer the request with head (a response head, in scratch, parsed
    into rs) and the body cx describes: the exchange begins as h_request_go
    begins one, without a backend. STEP_ANSWERED, or a status."""
    cdef lb_http_listener *hl = h.hl
    cdef int st
    h.c.lg.status = rs.status
    h.c.lg.answered = 1
    h.c.tries = 0
    h.rq_state = RQ_DONE
    h.rs_state = RS_BODY_CL
    h.resp_started = 1
    h.resp_sent = 0
    h.client_ka = h.client_ka and not w.stopping
    if from_response:
        tl_remove(&h.tresp)          # the backend's part is over (its 304 was read whole)
    else:
        h.backend_ka = 0
        h.up_sent = 0
        hb_drop(w, &h.inb, rq.head_len)
    tl_remove(&h.tphase)
    h.c.last_ms = w.now_ms
    tl_append(&hl.idle_timer, &h.tidle, w.now_ms, h)
    h.st = HS_EXCH
    h.n_rs_rules = 0
    st = phase_response(w, h, rs, <const uint8_t *>head)
    if st != STEP_CONTINUE and st != STEP_ANSWERED:
        return st
    if not hb_need(w, &h.outb) or not rewrite_response(w, h, <const uint8_t *>head, rs):
        return 500
    h.resp_sent = 1
    return STEP_ANSWERED


cdef bint etag_weak_eq(const uint8_t *a, uint32_t an, const uint8_t *b, uint32_t bn) noexcept nogil:
    """Weak comparison (RFC 9110 8.8.3.2): the opaque tags, W/ aside."""
    if an >= 2 and a[0] == 87 and a[1] == 47:
        a += 2
        an -= 2
    if bn >= 2 and b[0] == 87 and b[1] == 47:
        b += 2
        bn -= 2
    return an == bn and an >= 2 and a[0] == 34 and memcmp(a, b, an) == 0


cdef bint not_modified(const uint8_t *rb, http_req *rq, const uint8_t *sb, http_req *rs,
                       int64_t received_s=-1) noexcept nogil:
    """The request's preconditions (RFC 9110 13.2.2) say the client holds the
    stored response: If-None-Match against its ETag (weakly), else
    If-Modified-Since against its Last-Modified or, without one, its Date
    or the time it was received (received_s; -1: not known), as RFC 9111
    4.3.2 says a cache evaluates it."""
    cdef int32_t inm = field_find(rb, rq, b"if-none-match"), etag, ims, lm
    cdef uint32_t pos = 0, off, len, i
    cdef int64_t t_ims, t_lm
    cdef bint found
    if rs.status != 200:
        return False
    if inm >= 0:
        etag = field_find(sb, rs, b"etag")
        for i in range(rq.n_fields):
            if not name_is(rb, &rq.fields[i], b"if-none-match"):
                continue
            pos = 0
            while http_list_next(rb + rq.fields[i].value_off, rq.fields[i].value_len, &pos, &off, &len):
                if len == 1 and rb[rq.fields[i].value_off + off] == 42:
                    return True
                if etag >= 0 and etag_weak_eq(rb + rq.fields[i].value_off + off, len, sb + rs.fields[etag].value_off,
                                              rs.fields[etag].value_len):
                    return True
        return False
    ims = field_find(rb, rq, b"if-modified-since")
    if ims < 0 or not http_date(rb + rq.fields[ims].value_off, rq.fields[ims].value_len, &t_ims):
        return False
    t_lm = field_date(sb, rs, b"last-modified", &found)
    if not found:
        t_lm = field_date(sb, rs, b"date", &found)
        if not found:
            t_lm = received_s
    return t_lm >= 0 and t_lm <= t_ims


cdef inline uint32_t _ows(const uint8_t *v, uint32_t i, uint32_t n) noexcept nogil:
    while i < n and (v[i] == 32 or v[i] == 9):
        i += 1
    return i


cdef inline uint32_t _digits(const uint8_t *v, uint32_t i, uint32_t n, uint64_t *out) noexcept nogil:
    """Digits from i into out, capped at 2**60 (a huge first-pos is simply
    past the end, a huge last-pos the end); the index after them."""
    cdef uint64_t x = 0
    while i < n and 48 <= v[i] <= 57:
        x = x * 10 + (v[i] - 48)
        if x > (<uint64_t>1 << 60):
            x = <uint64_t>1 << 60
        i += 1
    out[0] = x
    return i


cdef enum:
    RANGE_NONE = 0                   # no Range, or one lb ignores: the full response
    RANGE_ONE = 1
    RANGE_UNSAT = 2
    RANGE_MULTI = 3                  # several satisfiable ranges: a multipart/byteranges answer


cdef int range_spec(const uint8_t *v, uint32_t i, uint32_t n, uint64_t len, uint64_t *first,
                    uint64_t *last) noexcept nogil:
    """One range-spec, v[i:n] without OWS around it (RFC 9110 14.1.1),
    against a body of len bytes: RANGE_ONE, RANGE_UNSAT, or RANGE_NONE when
    it is not a byte range lb can read."""
    cdef uint32_t j
    cdef uint64_t a, b
    if i < n and v[i] == 45:         # -suffix-length
        j = _digits(v, i + 1, n, &b)
        if j == i + 1 or j != n:
            return RANGE_NONE
        if b == 0 or len == 0:
            return RANGE_UNSAT
        first[0] = len - b if b < len else 0
        last[0] = len - 1
        return RANGE_ONE
    j = _digits(v, i, n, &a)
    if j == i or j >= n or v[j] != 45:
        return RANGE_NONE
    i = j + 1
    if i == n:
        b = len
    else:
        j = _digits(v, i, n, &b)
        if j != n or b < a:
            return RANGE_NONE
    if a >= len:
        return RANGE_UNSAT
    first[0] = a
    last[0] = b if b < len else len - 1
    return RANGE_ONE


cdef int range_parse(const uint8_t *v, uint32_t n, uint64_t len, uint64_t *first, uint64_t *last,
                     uint32_t *count) noexcept nogil:
    """The `bytes` ranges of a Range (RFC 9110 14.1.2) against a body of len
    bytes, the satisfiable ones into first/last in the client's order.
    RANGE_ONE when one is left, RANGE_MULTI when several (count), RANGE_UNSAT
    when none is. A Range lb cannot read is ignored, as the RFC says, and so
    is one of more than CACHE_MAX_RANGES ranges or whose ranges add up to
    more than the body (overlaps): RFC 9110 14.2 lets a server ignore those,
    the signs of a broken client or of an attack that asks for the same
    bytes many times over."""
    cdef uint32_t i = _ows(v, 0, n), s, e, k = 0, unsat = 0
    cdef uint64_t total = 0
    cdef int r
    while n > i and (v[n - 1] == 32 or v[n - 1] == 9):
        n -= 1
    if n - i < 7 or not ieq(v + i, 6, b"bytes="):
        return RANGE_NONE
    i += 6
    while i < n:
        # a list element, OWS and empty elements aside (RFC 9110 5.6.1.2)
        while i < n and (v[i] == 32 or v[i] == 9 or v[i] == 44):
            i += 1
        if i == n:
            break
        s = i
        while i < n and v[i] != 44:
            i += 1
        e = i
        while e > s and (v[e - 1] == 32 or v[e - 1] == 9):
            e -= 1
        if k + unsat == CACHE_MAX_RANGES:
            return RANGE_NONE
        r = range_spec(v, s, e, len, first + k, last + k)
        if r == RANGE_NONE:
            return RANGE_NONE
        if r == RANGE_ONE:
            total += last[k] - first[k] + 1
            if total > len:
                return RANGE_NONE
            k += 1
        else:
            unsat += 1               # left out (RFC 9110 14.1.1); 416 only when all are
    count[0] = k
    if k == 0:
        return RANGE_UNSAT if unsat else RANGE_NONE
    return RANGE_ONE if k == 1 else RANGE_MULTI


cdef bint range_from_start(const uint8_t *b, http_req *r) noexcept nogil:
    """The request's Range is bytes=0- (a player's first): the origin's
    206 to it is most often the whole object, which is stored as a piece
    that answers every range, so no whole fetch goes beside it."""
    cdef int32_t fi = field_find(b, r, b"range")
    cdef uint64_t first[CACHE_MAX_RANGES]
    cdef uint64_t last[CACHE_MAX_RANGES]
    cdef uint32_t count = 0
    # against a body longer than any number _digits reads: only an open
    # range from 0 ends at its last byte
    cdef uint64_t endless = (<uint64_t>1) << 61
    if fi < 0:
        return False
    return (range_parse(b + r.fields[fi].value_off, r.fields[fi].value_len, endless, first, last, &count) == RANGE_ONE
            and first[0] == 0 and last[0] == endless - 1)


cdef bint if_range_ok(const uint8_t *rb, http_req *rq, const uint8_t *sb, http_req *rs) noexcept nogil:
    """If-Range (RFC 9110 13.1.5): the range only for the representation the
    client holds part of: a strong ETag equal to the stored one, or a date
    equal to a stored Last-Modified that is strong (the entry's Date at
    least a second later, 8.8.2.2). Absent: True."""
    cdef int32_t ir = field_find(rb, rq, b"if-range"), et
    cdef const uint8_t *v
    cdef uint32_t n
    cdef int64_t t, lm, dt
    cdef bint found
    if ir < 0:
        return True
    v = rb + rq.fields[ir].value_off
    n = rq.fields[ir].value_len
    if n >= 1 and (v[0] == 34 or v[0] == 87):
        et = field_find(sb, rs, b"etag")
        return (et >= 0 and v[0] == 34 and n >= 2 and rs.fields[et].value_len == n
                and memcmp(v, sb + rs.fields[et].value_off, n) == 0)
    if not http_date(v, n, &t):
        return False
    lm = field_date(sb, rs, b"last-modified", &found)
    dt = field_date(sb, rs, b"date", &found)
    return lm >= 0 and lm == t and dt >= lm + 1


cdef uint32_t content_range(char *o, uint64_t first, uint64_t last, uint64_t len, bint unsat) noexcept nogil:
    cdef uint32_t n = 21
    memcpy(o, b"Content-Range: bytes ", 21)
    if unsat:
        o[n] = 42
        n += 1
    else:
        n += fmt_u64(o + n, first)
        o[n] = 45
        n += 1
        n += fmt_u64(o + n, last)
    o[n] = 47
    n += 1
    n += fmt_u64(o + n, len)
    memcpy(o + n, b"\r\n", 2)
    return n + 2


cdef bint piece_of(const uint8_t *sb, http_req *rs, uint64_t *first, uint64_t *last, uint64_t *len) noexcept nogil:
    """The one range a 206 holds (RFC 9110 14.4, `Content-Range: bytes
    first-last/len`, len known); False for anything else (several fields, a
    multipart 206, `*`)."""
    cdef int32_t i, f = -1
    cdef const uint8_t *v
    cdef uint32_t n, j, k
    for i in range(<int32_t>rs.n_fields):
        if name_is(sb, &rs.fields[i], b"content-range"):
            if f >= 0:
                return False
            f = i
    if f < 0:
        return False
    v = sb + rs.fields[f].value_off
    n = rs.fields[f].value_len
    if n < 7 or not ieq(v, 6, b"bytes "):
        return False
    j = _digits(v, 6, n, first)
    if j == 6 or j >= n or v[j] != 45:
        return False
    k = _digits(v, j + 1, n, last)
    if k == j + 1 or k >= n or v[k] != 47:
        return False
    j = _digits(v, k + 1, n, len)
    return j == n and j > k + 1 and first[0] <= last[0] and last[0] < len[0] and len[0] < (<uint64_t>1 << 60)


cdef void fields_drop(const uint8_t *sb, http_req *rs, const char *lower_name) noexcept nogil:
    cdef uint32_t i, j = 0
    for i in range(rs.n_fields):
        if not name_is(sb, &rs.fields[i], lower_name):
            rs.fields[j] = rs.fields[i]
            j += 1
    rs.n_fields = j


cdef int range_of_200(const uint8_t *rb, http_req *rq, const uint8_t *sb, http_req *rs, uint64_t body_len,
                      uint64_t *first, uint64_t *last, uint32_t *nr) noexcept nogil:
    """What the Range of a GET asks of a whole response sb (RFC 9110 14.2)
    that is to answer it: RANGE_NONE when there is none, when If-Range does
    not match, or for several ranges a multipart answer cannot carry. The
    caller weighs the request's other preconditions first."""
    cdef int32_t rf = field_find(rb, rq, b"range")
    cdef int rg
    if rf < 0 or rs.status != 200 or not if_range_ok(rb, rq, sb, rs):
        return RANGE_NONE
    rg = range_parse(rb + rq.fields[rf].value_off, rq.fields[rf].value_len, body_len, first, last, nr)
    if rg == RANGE_MULTI and not mp_ctype_ok(sb, rs):
        return RANGE_NONE
    return rg


cdef void cx_not_modified(lb_cache_x *cx, http_req *rs, char *sb, uint32_t reason_off) noexcept nogil:
    """The answer's head made a 304 with no body (RFC 9110 13.2.2: the
    client holds the response); the reason phrase goes at sb + reason_off,
    where the caller has room for it."""
    memcpy(sb + reason_off, b"Not Modified", 12)
    rs.status = 304
    rs.reason_off = reason_off
    rs.reason_len = 12
    cx.left = 0


cdef void cx_partial(lb_cache_x *cx, http_req *rs, char *sb, uint32_t reason_off, int rg, uint64_t first,
                     uint64_t last, uint64_t complete) noexcept nogil:
    """The answer's head made a 206 of the range (RANGE_ONE) or the
    multipart parts (RANGE_MULTI) cx is set to send; the reason phrase goes
    at sb + reason_off, where the caller has room for it."""
    memcpy(sb + reason_off, b"Partial Content", 15)
    rs.status = 206
    rs.reason_off = reason_off
    rs.reason_len = 15
    rs.content_length = <int64_t>cx.left
    if rg == RANGE_ONE:
        cx.hdr_len += content_range(cx.hdr + cx.hdr_len, first, last, complete, False)
    else:
        mp_head(cx, rs, <const uint8_t *>sb)


cdef int cache_hit(lb_worker *w, lb_hconn *h, const uint8_t *rb, http_req *rq, lb_cache_rt *rt,
                   shm_cache_entry *meta, uint32_t idx, int64_t now_ms) noexcept nogil:
    cdef lb_cache_x *cx
    cdef shm_cache_entry *e = ce_at(rt, idx)
    cdef char *head = w.http.cache.scratch
    cdef uint64_t off = <uint64_t>meta.key_len + meta.vary_len + meta.tags_len
    cdef int64_t age
    cdef int st, rg = RANGE_NONE
    cdef int32_t rf
    cdef uint64_t first[CACHE_MAX_RANGES]
    cdef uint64_t last[CACHE_MAX_RANGES]
    cdef uint32_t nr = 0, k
    cdef bint stored_200
    cdef uint64_t pa = 0, pb = 0, plen = 0, complete = meta.body_len   # a stored piece's range and full length
    cdef char cr[96]
    if meta.head_len + 2 > CACHE_HEAD_MAX or not ce_copy(rt, e, meta.seq, off, head, meta.head_len):
        return -1                    # gone meanwhile: a miss after all
    memcpy(head + meta.head_len, b"\r\n", 2)
    if http_parse_response_c(<const uint8_t *>head, meta.head_len + 2, w.http.resp, CACHE_HEAD_MAX + 4) != 0:
        return -1
    stored_200 = w.http.resp.status == 200
    rf = field_find(rb, rq, b"range")
    if w.http.resp.status == 206:
        if not piece_of(<const uint8_t *>head, w.http.resp, &pa, &pb, &plen) or pb - pa + 1 != meta.body_len:
            return -1
        if pa == 0 and pb + 1 == plen:
            # a piece that is all of the representation is a complete response
            # (RFC 9111 3.4): it answers as the stored 200 would
            fields_drop(<const uint8_t *>head, w.http.resp, b"content-range")
            memcpy(head + meta.head_len + 2, b"OK", 2)
            w.http.resp.status = 200
            w.http.resp.reason_off = meta.head_len + 2
            w.http.resp.reason_len = 2
            stored_200 = True
    if w.http.resp.status == 206:
        # a stored piece (RFC 9111 3.3) answers ranges that lie within it; any
        # other request is a miss, and the origin's answer replaces the piece
        if rf < 0 or h.method == MT_HEAD or not if_range_ok(rb, rq, <const uint8_t *>head, w.http.resp):
            return -1
        rg = range_parse(rb + rq.fields[rf].value_off, rq.fields[rf].value_len, plen, first, last, &nr)
        if rg != RANGE_ONE and (rg != RANGE_MULTI or not mp_ctype_ok(<const uint8_t *>head, w.http.resp)):
            return -1
        for k in range(nr):
            if first[k] < pa or last[k] > pb:
                return -1
        fields_drop(<const uint8_t *>head, w.http.resp, b"content-range")
        complete = plen
    # a Range on a GET of a stored 200 (RFC 9110 14.2), after the preconditions
    elif (rf >= 0 and h.method != MT_HEAD
            and not not_modified(rb, rq, <const uint8_t *>head, w.http.resp, meta.resp_ms // 1000)):
        rg = range_of_200(rb, rq, <const uint8_t *>head, w.http.resp, meta.body_len, first, last, &nr)
    if rg == RANGE_UNSAT:
        if not ce_stable(e, meta.seq):
            return -1
        cache_count(&rt.st.hit, 1)
        cr[content_range(cr, 0, 0, meta.body_len, True)] = 0
        age = meta.age0 + (now_ms - meta.resp_ms) // 1000
        return cache_local(w, h, rq, 416, b"Range Not Satisfiable", b"", 0, cr, CN_HIT, age, meta.fresh - age)
    cx = cx_alloc(w)
    if cx == NULL:
        return -1
    h.cx = cx
    h.cache_note = CN_HIT
    cx.serving = 1
    cx.entry = idx
    cx.seq = meta.seq
    cx.left = 0 if h.method == MT_HEAD else meta.body_len
    # the block and offset of the body's first byte (of the range's, for a 206)
    off += meta.head_len
    if rg == RANGE_MULTI:
        # the parts' blocks are found as each part begins (cache_serve)
        if not mp_setup(w, cx, <const uint8_t *>head, w.http.resp, first, last, nr, complete, off - pa,
                        meta.first):
            return -1
    else:
        if rg == RANGE_ONE:
            off += first[0] - pa
            cx.left = last[0] - first[0] + 1
        if not cx_seek(rt, e, meta.seq, meta.first, off, &cx.blk, &cx.blk_off):
            return -1
    age = meta.age0 + (now_ms - meta.resp_ms) // 1000
    cx_status(cx, CN_HIT, False, age, meta.fresh - age)
    cache_count(&rt.st.hit, 1)
    if not_modified(rb, rq, <const uint8_t *>head, w.http.resp, meta.resp_ms // 1000):
        # the client has it already: the stored head, as 304, no body
        cx_not_modified(cx, w.http.resp, head, meta.head_len + 2)
    elif rg == RANGE_ONE or rg == RANGE_MULTI:
        cx_partial(cx, w.http.resp, head, meta.head_len + 2, rg, first[0], last[0], complete)
    if w.http.resp.status != 304 and stored_200 and field_find(<const uint8_t *>head, w.http.resp,
                                                                b"accept-ranges") < 0:
        # what a hit of a stored 200 can do: tell the client (RFC 9110 14.3), as nginx's cache does
        memcpy(cx.hdr + cx.hdr_len, b"Accept-Ranges: bytes\r\n", 22)
        cx.hdr_len += 22
    st = cache_answer(w, h, rq, head, w.http.resp)
    return st


cdef bint cx_seek(lb_cache_rt *rt, shm_cache_entry *e, uint32_t seq, uint32_t b, uint64_t off, uint32_t *blk,
                  uint32_t *blk_off) noexcept nogil:
    """The block and offset of an entry's byte off, its chain walked from its
    first block b; False when the entry changed meanwhile."""
    cdef uint64_t k
    for k in range(off // CACHE_BLOCK):
        if b >= rt.hd.n_blocks:
            return False
        b = lb_load_u32(&rt.next[b])
    if not ce_stable(e, seq):
        return False
    blk[0] = b
    blk_off[0] = <uint32_t>(off % CACHE_BLOCK)
    return True


# ---- multipart/byteranges (RFC 9110 14.6) ---------------------------------------------------------

cdef bint mp_ctype_ok(const uint8_t *sb, http_req *rs) noexcept nogil:
    """The stored head can be cut into parts: at most one Content-Type, short
    enough to repeat in each part."""
    cdef uint32_t i, k = 0
    for i in range(rs.n_fields):
        if name_is(sb, &rs.fields[i], b"content-type"):
            k += 1
            if k > 1 or rs.fields[i].value_len > CACHE_CTYPE_MAX:
                return False
    return True


cdef void mp_pre(lb_cache_mp *mp) noexcept nogil:
    """What comes before part mp.i (its delimiter and fields), or the closing
    delimiter once mp.i is mp.n, into mp.pre."""
    cdef char *o = mp.pre
    cdef uint32_t n = 0
    if mp.i > 0:
        memcpy(o, b"\r\n", 2)
        n = 2
    memcpy(o + n, b"--", 2)
    n += 2
    memcpy(o + n, mp.boundary, mp.boundary_len)
    n += mp.boundary_len
    if mp.i == mp.n:
        memcpy(o + n, b"--\r\n", 4)
        n += 4
    else:
        memcpy(o + n, b"\r\n", 2)
        n += 2
        if mp.ctype_len:
            memcpy(o + n, b"Content-Type: ", 14)
            n += 14
            memcpy(o + n, mp.ctype, mp.ctype_len)
            n += mp.ctype_len
            memcpy(o + n, b"\r\n", 2)
            n += 2
        n += content_range(o + n, mp.first[mp.i], mp.last[mp.i], mp.body_len, False)
        memcpy(o + n, b"\r\n", 2)
        n += 2
    mp.pre_len = n
    mp.pre_off = 0


cdef bint mp_setup(lb_worker *w, lb_cache_x *cx, const uint8_t *sb, http_req *rs, uint64_t *first,
                   uint64_t *last, uint32_t n, uint64_t body_len, uint64_t body_off,
                   uint32_t first_blk) noexcept nogil:
    """cx answers the n ranges as a multipart/byteranges body: its parts, its
    boundary, and its whole length in cx.left."""
    cdef lb_cache_mp *mp = <lb_cache_mp *>calloc(1, sizeof(lb_cache_mp))
    cdef uint64_t total = 0, r
    cdef uint32_t i, k
    cdef int32_t ct
    cdef const char *hexd = b"0123456789abcdef"
    if mp == NULL:
        return False
    cx.mp = mp
    mp.n = n
    memcpy(mp.first, first, n * sizeof(uint64_t))
    memcpy(mp.last, last, n * sizeof(uint64_t))
    mp.body_len = body_len
    mp.body_off = body_off
    mp.first_blk = first_blk
    # a boundary no body is likely to hold (RFC 2046 5.1.1): 16 random hex digits
    memcpy(mp.boundary, b"lb-", 3)
    r = rng_next(w)
    for k in range(16):
        mp.boundary[3 + k] = hexd[(r >> (4 * k)) & 15]
    mp.boundary_len = 19
    ct = field_find(sb, rs, b"content-type")
    if ct >= 0:
        mp.ctype_len = rs.fields[ct].value_len
        memcpy(mp.ctype, sb + rs.fields[ct].value_off, mp.ctype_len)
    for i in range(n + 1):
        mp.i = i
        mp_pre(mp)
        total += mp.pre_len
        if i < n:
            total += last[i] - first[i] + 1
    mp.i = 0
    mp_pre(mp)
    mp.part_left = 0
    cx.left = total
    return True


cdef void mp_head(lb_cache_x *cx, http_req *rs, const uint8_t *sb) noexcept nogil:
    """The answer's own Content-Type says multipart; the stored one is in
    each part."""
    cdef lb_cache_mp *mp = cx.mp
    fields_drop(sb, rs, b"content-type")
    memcpy(cx.hdr + cx.hdr_len, b"Content-Type: multipart/byteranges; boundary=", 45)
    cx.hdr_len += 45
    memcpy(cx.hdr + cx.hdr_len, mp.boundary, mp.boundary_len)
    cx.hdr_len += mp.boundary_len
    memcpy(cx.hdr + cx.hdr_len, b"\r\n", 2)
    cx.hdr_len += 2


cdef int64_t mp_step(lb_cache_x *cx, lb_cache_rt *rt, char *dst, uint32_t room) noexcept nogil:
    """cache_serve between two parts' bytes: what comes before a part (into
    dst, at most room bytes: how many), then the part's first block found;
    or, a part's bytes all sent, the next part's delimiter made. -1: the
    entry changed (the answer is cut)."""
    cdef lb_cache_mp *mp = cx.mp
    cdef uint32_t m
    if mp.pre_off < mp.pre_len:
        m = mp.pre_len - mp.pre_off
        if m > room:
            m = room
        memcpy(dst, mp.pre + mp.pre_off, m)
        mp.pre_off += m
        if mp.pre_off == mp.pre_len and mp.i < mp.n:
            if not cx_seek(rt, ce_at(rt, cx.entry), cx.seq, mp.first_blk, mp.body_off + mp.first[mp.i],
                           &cx.blk, &cx.blk_off):
                return -1
            mp.part_left = mp.last[mp.i] - mp.first[mp.i] + 1
        return m
    if mp.i >= mp.n:
        return -1                    # (cx.left counts no more than this: never reached)
    mp.i += 1
    mp_pre(mp)
    return 0


cdef int cache_local(lb_worker *w, lb_hconn *h, http_req *rq, int status, const char *reason,
                     const char *body, uint32_t body_len, const char *extra=NULL,
                     uint8_t note=CN_LOCAL, int64_t age=0, int64_t ttl=0) noexcept nogil:
    """lb's own small answer (to a PURGE, a 416), kept-alive like any
    response; extra: a field line to add."""
    cdef char *head = w.http.cache.scratch
    cdef uint32_t n = 0
    cdef lb_cache_x *cx = cx_alloc(w)
    if cx == NULL:
        return 500
    h.cx = cx
    h.cache_note = note
    cx.serving = 1
    cx.local = <char *>malloc(body_len + 1)
    if cx.local == NULL:
        return 500
    memcpy(cx.local, body, body_len)
    cx.left = 0 if h.method == MT_HEAD else body_len
    memcpy(head, b"HTTP/1.1 ", 9)
    n = 9
    n += fmt_u64(head + n, <uint64_t>status)
    head[n] = 32
    n += 1
    memcpy(head + n, reason, strlen(reason))
    n += strlen(reason)
    memcpy(head + n, b"\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\nContent-Length: ", 69)
    n += 69
    n += fmt_u64(head + n, body_len)
    memcpy(head + n, b"\r\n", 2)
    n += 2
    if extra != NULL:
        memcpy(head + n, extra, strlen(extra))
        n += strlen(extra)
    memcpy(head + n, b"\r\n", 2)
    n += 2
    cx_status(cx, note, False, age, ttl)
    if http_parse_response_c(<const uint8_t *>head, n, w.http.resp, CACHE_HEAD_MAX + 4) != 0:
        return 500
    return cache_answer(w, h, rq, head, w.http.resp)


cdef int cache_serve(lb_worker *w, lb_hconn *h) noexcept nogil:
    """h_exchange, for an answer of the cache: the body into outb, a block at
    a time, each copy checked against the entry's seq; then the exchange
    ends as any other does. A body the entry lost on the way (evicted,
    purged) is cut: the client sees a short response, never a whole one
    with wrong bytes (a large body's tail is checked before it is sent:
    cache_send.pxi)."""
    cdef lb_cache_x *cx = h.cx
    cdef lb_cache_rt *rt
    cdef shm_cache_entry *e
    cdef uint32_t room, m, nb
    cdef int64_t mm
    cdef int progress = 0
    cdef char *dst
    rt = cx.src if cx.src != NULL else &w.http.cache.caches[cx.cache]    # (unused by a local answer)
    if h.hflags & HF_ERR:
        log_term(&h.c, TERM_CLIENT_ABORT)
        h_close(w, h, True)
        return 1
    if cache_send_direct_ok(h, cx):
        # a large body goes from the region to the socket (cache_send.pxi);
        # only its tail comes through outb below
        progress = cache_send_direct(w, h, cx)
        if progress < 0:
            return 1
        if cx.zpipe_len or cx.left > CACHE_SEND_TAIL:
            return progress
    while cx.left and hb_need(w, &h.outb) and hb_room(&h.outb):
        if h.outb.off + h.outb.len == HBUF_SIZE:
            memmove(h.outb.p, h.outb.p + h.outb.off, h.outb.len)
            h.outb.off = 0
        room = HBUF_SIZE - h.outb.off - h.outb.len
        dst = h.outb.p + h.outb.off + h.outb.len
        if cx.local != NULL:
            m = room if room < cx.left else <uint32_t>cx.left
            memcpy(dst, cx.local + cx.local_off, m)
            cx.local_off += m
        elif cx.mp != NULL and (cx.mp.pre_off < cx.mp.pre_len or cx.mp.part_left == 0):
            mm = mp_step(cx, rt, dst, room)
            if mm < 0:
                h_cut(w, h)
                return 1
            m = <uint32_t>mm
        else:
            e = ce_at(rt, cx.entry)
            nb = rt.hd.n_blocks
            m = CACHE_BLOCK - cx.blk_off
            if m > room:
                m = room
            if m > cx.left:
                m = <uint32_t>cx.left
            if cx.mp != NULL and m > cx.mp.part_left:
                m = <uint32_t>cx.mp.part_left
            if cx.blk >= nb:
                h_cut(w, h)
                return 1
            memcpy(dst, rt.blocks + <uint64_t>cx.blk * CACHE_BLOCK + cx.blk_off, m)
            cx.blk_off += m
            if cx.blk_off == CACHE_BLOCK and cx.left > m:
                cx.blk = lb_load_u32(&rt.next[cx.blk])
                cx.blk_off = 0
            if not ce_stable(e, cx.seq):
                h_cut(w, h)          # those bytes are not sent
                return 1
            if cx.mp != NULL:
                cx.mp.part_left -= m
            cache_count(&rt.st.hit_bytes, m)
        h.outb.len += m
        cx.left -= m
        progress = 1
    progress |= h_flush_out(w, h)
    if h.c.state == CS_CLOSED:
        return 1
    if cx.left == 0:
        h.rs_state = RS_DONE
        if h.outb.len == 0 or not h.client_ka:
            h_finish(w, h)
            return 1
    return progress


# ---- storing ------------------------------------------------------------------------------------

cdef bint status_storable(uint32_t status, bint explicit) noexcept nogil:
    """Final statuses lb stores: the heuristically cacheable ones (RFC 9110
    15.1), and with explicit freshness (or public) any other final one, known
    or not (RFC 9111 3: a cache need not understand a status to store it;
    must-understand is checked apart), 206 included (a piece, piece_of says
    which: RFC 9111 3.3). Never 304."""
    if status in (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501):
        return True
    return explicit and 200 <= status <= 599 and status != 304


cdef inline bint status_understood(uint32_t status) noexcept nogil:
    """The statuses whose caching rules lb implements (must-understand)."""
    return status in (200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501,
                      502, 503, 504)


cdef inline bint status_heuristic(uint32_t status) noexcept nogil:
    return status in (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501)


cdef bint meta_put(char *obj, uint32_t *n, uint32_t cap, const uint8_t *s, uint32_t len) noexcept nogil:
    if n[0] + len > cap:
        return False
    memcpy(obj + n[0], s, len)
    n[0] += len
    return True


cdef uint32_t tags_collect(const uint8_t *b, http_req *r, lb_str *name, char *out, uint32_t cap) noexcept nogil:
    """The response's tags (its tag_header, values split at spaces and
    commas), " "-separated. 0 when none, or when they do not fit."""
    cdef uint32_t i, j, s, n = 0
    cdef const uint8_t *v
    cdef uint32_t vn
    if name.n == 0:
        return 0
    for i in range(r.n_fields):
        if not ieq_str(b + r.fields[i].name_off, r.fields[i].name_len, name):
            continue
        v = b + r.fields[i].value_off
        vn = r.fields[i].value_len
        j = 0
        while j < vn:
            while j < vn and (v[j] == 32 or v[j] == 44 or v[j] == 9):
                j += 1
            s = j
            while j < vn and v[j] != 32 and v[j] != 44 and v[j] != 9:
                j += 1
            if j > s:
                if n + (j - s) + 1 > cap:
                    return 0
                if n:
                    out[n] = 32
                    n += 1
                memcpy(out + n, v + s, j - s)
                n += j - s
    return n


cdef bint validators_conflict(const uint8_t *b, http_req *r) noexcept nogil:
    """Two ETag (or Last-Modified) fields that differ."""
    cdef int32_t first_etag = -1, first_lm = -1
    cdef uint32_t i
    cdef http_field *f
    for i in range(r.n_fields):
        f = &r.fields[i]
        if name_is(b, f, b"etag"):
            if first_etag < 0:
                first_etag = <int32_t>i
            elif f.value_len != r.fields[first_etag].value_len or memcmp(
                    b + f.value_off, b + r.fields[first_etag].value_off, f.value_len) != 0:
                return True
        elif name_is(b, f, b"last-modified"):
            if first_lm < 0:
                first_lm = <int32_t>i
            elif f.value_len != r.fields[first_lm].value_len or memcmp(
                    b + f.value_off, b + r.fields[first_lm].value_off, f.value_len) != 0:
                return True
    return False


cdef bint cache_fill_start(lb_worker *w, lb_hconn *h, lb_cache_rt *rt, http_req *r, const uint8_t *b,
                           int64_t now_ms) noexcept nogil:
    """Decide whether the response may be stored (RFC 9111 3, 4.2) and, if
    so, begin its object: key, Vary names, tags, head. False: not stored."""
    cdef lb_cache_x *cx = h.cx
    cdef lb_cache_wk *cw = w.http.cache
    cdef int64_t max_age, s_maxage, unused, fresh = -1, date, expires, lm, age = 0, apparent, sie = 0
    cdef uint32_t flags, i, k, pos, off, len, n, vn
    cdef bint found, explicit, has_date
    cdef uint32_t offs[MAX_CONN_TOKENS]
    cdef uint32_t lens[MAX_CONN_TOKENS]
    cdef char vary[CACHE_META_MAX]
    cdef char tags[CACHE_META_MAX]
    cdef uint32_t tn
    cdef char omit[CACHE_META_MAX]
    cdef uint32_t on = 0
    cdef uint64_t pa, pb, plen
    cdef bint cookie
    cdef http_field *f
    cdef const uint8_t *name
    cdef http_req *rq = cw.req
    cdef int32_t fi
    cdef uint64_t total
    if r.content_length > <int64_t>rt.hd.max_object:
        return False
    flags = cc_parse(b, r, True, &max_age, &s_maxage, &unused, &sie)
    if (flags & RCC_MUST_UNDERSTAND) and status_understood(r.status):
        flags &= ~RCC_NO_STORE       # RFC 9111 5.2.2.3: no-store is for caches that do not
    elif flags & RCC_MUST_UNDERSTAND:
        return False
    if flags & (RCC_NO_STORE | RCC_PRIVATE):
        return False
    if flags & RCC_NO_CACHE_NAMES:
        on = cc_no_cache_names(b, r, b"cdn-cache-control" if cdn_cc_in_force(b, r) else b"cache-control",
                               omit, CACHE_META_MAX)
        if on == CACHE_NONE:
            flags |= RCC_NO_CACHE    # too many names to keep: the whole response is revalidated
            on = 0
    if (flags & RCC_NO_CACHE) and field_find(b, r, b"etag") < 0 and field_find(b, r, b"last-modified") < 0:
        return False                 # no-cache without a validator: it could never be used
    if cx.auth and not (flags & (RCC_PUBLIC | RCC_MUST_REVALIDATE)) and s_maxage < 0:
        return False                 # RFC 9111 3.5
    # a Set-Cookie is one user's: the response is stored without it (as Squid
    # and Traffic Server do), so a hit never hands it to the next user; and
    # only when the origin gave it explicit freshness (below)
    cookie = field_find(b, r, b"set-cookie") >= 0 or field_find(b, r, b"set-cookie2") >= 0
    if validators_conflict(b, r):
        return False                 # which one a 304 would confirm cannot be told
    # Vary: its names, lower case; "*" never matches a later request
    vn = 0
    for i in range(r.n_fields):
        if not name_is(b, &r.fields[i], b"vary"):
            continue
        pos = 0
        while http_list_next(b + r.fields[i].value_off, r.fields[i].value_len, &pos, &off, &len):
            name = b + r.fields[i].value_off + off
            if len == 1 and name[0] == 42:
                return False
            if vn + len + 1 > CACHE_META_MAX:
                return False
            if vn:
                vary[vn] = 44
                vn += 1
            for k in range(len):
                vary[vn + k] = <char>lower(name[k])
            vn += len
    # freshness (RFC 9111 4.2.1), from the shared cache's point of view
    date = field_date(b, r, b"date", &has_date)
    if date < 0:
        date = now_ms // 1000
    explicit = True
    if flags & RCC_BAD:
        fresh = 0
    elif s_maxage >= 0:
        fresh = s_maxage
    elif max_age >= 0:
        fresh = max_age
    else:
        expires = field_date(b, r, b"expires", &found)
        if found:
            fresh = expires - date if expires >= 0 else 0   # an invalid Expires is in the past
        else:
            explicit = False
            lm = field_date(b, r, b"last-modified", &found)
            if lm >= 0 and lm < date and (status_heuristic(r.status) or (flags & RCC_PUBLIC)):
                fresh = (date - lm) // 10
                if fresh > CACHE_HEURISTIC_MAX:
                    fresh = CACHE_HEURISTIC_MAX
    if flags & RCC_NO_CACHE:
        fresh = 0                    # stored to be revalidated each time (RFC 9111 5.2.2.4)
        explicit = True
    elif fresh <= 0:
        return False
    if not status_storable(r.status, explicit or (flags & RCC_PUBLIC) != 0):
        return False
    if r.status == 206 and not (piece_of(b, r, &pa, &pb, &plen) and r.content_length == <int64_t>(pb - pa + 1)
                                and not r.chunked and cx.ranged and h.cache_note == CN_URI_MISS):
        return False                 # a piece lb can read, asked for, whose body is all of it, replacing nothing
    if cookie and not explicit:
        return False                 # no Set-Cookie response is cached on a guess
    # age (RFC 9111 4.2.3): the Age the response came with, or the time since its Date
    fi = field_find(b, r, b"age")
    if fi >= 0 and not age_value(b + r.fields[fi].value_off, r.fields[fi].value_len, &age):
        age = 0
    apparent = now_ms // 1000 - date if has_date else 0
    if apparent > age:
        age = apparent
    if age >= fresh and not (flags & RCC_NO_CACHE):
        return False                 # stale on arrival
    # the request's values of the Vary fields: its head was saved for this
    cx.meta.vhash = key_fields_hash(cx.key, cx.key_len)   # variants by key_headers: not replaced by one another
    if vn:
        if http_parse_request_c(<const uint8_t *>cx.req, cx.req_len, rq, h.hl.max_target, h.hl.max_head,
                                h.hl.max_fields) != 0:
            return False
        cx.meta.vhash = vary_hash(<const uint8_t *>cx.req, rq, vary, vn, rt.hd.seed ^ cx.meta.vhash)
    tn = tags_collect(b, r, &rt.tag_header, tags, CACHE_META_MAX)
    # the object: key, Vary names, tags, then the head without hop-by-hop fields
    total = <uint64_t>cx.key_len + vn + tn + r.head_len + (r.content_length if r.content_length > 0 else 0)
    cx.obj = <char *>malloc(total + 1)
    if cx.obj == NULL:
        return False
    n = 0
    memcpy(cx.obj, cx.key, cx.key_len)
    n = cx.key_len
    memcpy(cx.obj + n, vary, vn)
    n += vn
    memcpy(cx.obj + n, tags, tn)
    n += tn
    i = n
    memcpy(cx.obj + n, b, r.reason_off + r.reason_len)
    n += r.reason_off + r.reason_len
    memcpy(cx.obj + n, b"\r\n", 2)
    n += 2
    k = conn_tokens(b, r, offs, lens)
    for pos in range(r.n_fields):
        f = &r.fields[pos]
        name = b + f.name_off
        if hop_by_hop(name, f.name_len) or ieq(name, f.name_len, b"transfer-encoding") \
                or ieq(name, f.name_len, b"age") or ieq(name, f.name_len, b"cache-status") \
                or (k and conn_listed(b, name, f.name_len, k, offs, lens)) \
                or (cookie and (ieq(name, f.name_len, b"set-cookie") or ieq(name, f.name_len, b"set-cookie2"))) \
                or (on and names_listed(omit, on, name, f.name_len)):
            continue
        memcpy(cx.obj + n, name, f.value_off + f.value_len - f.name_off)
        n += f.value_off + f.value_len - f.name_off
        memcpy(cx.obj + n, b"\r\n", 2)
        n += 2
    cx.meta.head_len = n - i
    cx.meta.key_len = <uint16_t>cx.key_len
    cx.meta.vary_len = <uint16_t>vn
    cx.meta.tags_len = <uint16_t>tn
    cx.meta.body_len = r.content_length if r.content_length > 0 else 0
    cx.meta.status = <uint16_t>r.status
    cx.meta.hash = cx.hash
    cx.meta.resp_ms = now_ms
    cx.meta.age0 = age
    cx.meta.fresh = fresh
    cx.meta.flags = 0
    if flags & (RCC_PUBLIC | RCC_MUST_REVALIDATE) or s_maxage >= 0:
        cx.meta.flags |= CEF_AUTH_OK
    if flags & (RCC_MUST_REVALIDATE | RCC_PROXY_REVALIDATE) or s_maxage >= 0:
        cx.meta.flags |= CEF_MUST_REVALIDATE
    if flags & RCC_NO_CACHE:
        cx.meta.flags |= CEF_NO_CACHE
    cx.meta.stale_if_error = <int32_t>(sie if sie < 2147483647 else 2147483647)
    cx.meta.stale_while_revalidate = swr_directive(b, r)
    cx.prefix_len = n
    cx.obj_len = n
    cx.obj_cap = n + cx.meta.body_len
    if (r.chunked or r.content_length < 0) and r.status != 204 and not fill_growing_start(cx, rt, r.chunked != 0):
        return False                 # (chunked, until close: the length is known at the end)
    cx.ttl = fresh - age if fresh > age else 0
    cx.filling = 1
    h.no_splice = 1                  # the body passes through lb's buffers, where it is copied
    free(cx.req)
    cx.req = NULL
    return True


cdef inline void cache_fill_put(lb_hconn *h, const char *p, uint32_t n) noexcept nogil:
    """h_resp_body: body bytes on their way to the client."""
    cdef lb_cache_x *cx = h.cx
    if cx == NULL or not cx.filling:
        return
    if cx.obj_len + n > cx.obj_cap and not (cx.chunked_fill and fill_grow(cx, n)):
        cx.filling = 0               # more than its Content-Length (or max_object_size): never stored
        return
    memcpy(cx.obj + cx.obj_len, p, n)
    cx.obj_len += n


cdef void cache_fill_done(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The response's body is whole: publish it."""
    cdef lb_cache_x *cx = h.cx
    cdef lb_cache_rt *rt
    cdef uint64_t evicted = 0
    cdef int st
    if cx == NULL or not cx.filling:
        return
    cx.filling = 0
    rt = &w.http.cache.caches[cx.cache]
    if cx.chunked_fill and not fill_dechunk(cx, rt):
        return
    if cx.obj_len != cx.obj_cap:
        return
    if not cache_lock(rt):
        cache_count(&rt.st.store_failed, 1)
        return
    st = cache_insert(rt, cx.obj, cx.obj_len, &cx.meta, &evicted)
    cache_unlock(rt)
    cache_unclaim(rt, cx, st == -1)
    if evicted:
        cache_count(&rt.st.evicted, evicted)
    if st == 0:
        cache_count(&rt.st.stored, 1)
    elif st == -2:
        cache_count(&rt.st.not_stored, 1)
    else:
        cache_count(&rt.st.store_failed, 1)
    free(cx.obj)
    cx.obj = NULL


cdef uint64_t cache_invalidate_key(lb_cache_rt *rt, const char *key, uint32_t n) noexcept nogil:
    cdef uint64_t hash = lb_xxh64(<const uint8_t *>key, n, rt.hd.seed)
    cdef uint32_t removed
    if not cache_lock(rt):
        return 0
    removed = cache_remove_hash(rt, hash)
    cache_unlock(rt)
    if rt.disk != NULL:
        removed += disk_remove_hash(rt.disk, hash)
    return removed


cdef void cache_invalidate(lb_worker *w, lb_hconn *h, lb_cache_rt *rt, http_req *r, const uint8_t *b) noexcept nogil:
    """RFC 9111 4.4: a non-error response to an unsafe method invalidates its
    target, and the Location and Content-Location of the same origin."""
    cdef lb_cache_x *cx = h.cx
    cdef char *buf = w.http.cache.scratch
    cdef uint32_t i, n, vn, s
    cdef const uint8_t *v
    cdef uint64_t removed = cache_invalidate_key(rt, cx.key, cx.key_len)
    for i in range(r.n_fields):
        if not (name_is(b, &r.fields[i], b"location") or name_is(b, &r.fields[i], b"content-location")):
            continue
        v = b + r.fields[i].value_off
        vn = r.fields[i].value_len
        if vn and v[0] == 47 and not (vn > 1 and v[1] == 47):
            s = 0                    # a path: this origin
        elif vn > 7 and (ieq(v, 7, b"http://") or (vn > 8 and ieq(v, 8, b"https://"))):
            s = 7 if v[4] == 58 else 8
            if vn - s < cx.host_len or not _name_eq(v + s, cx.host_len, <const uint8_t *>cx.key + cx.key_len,
                                                    cx.host_len):
                continue             # another origin: not ours to invalidate
            s += cx.host_len
            if s < vn and v[s] != 47 and v[s] != 63:
                continue             # a longer host name
        else:
            continue
        # keyed as a request for it would be (the host follows the URL part of cx.key)
        if cache_key_make(&rt.key, <const uint8_t *>cx.key + cx.key_len, cx.host_len, v + s, vn - s, NULL, NULL,
                          buf, CACHE_KEY_MAX, &n) == 0:
            continue
        removed += cache_invalidate_key(rt, buf, n)
    if removed:
        cache_count(&rt.st.invalidated, removed)


# ---- collapsed forwarding -----------------------------------------------------------------------
#
# A miss that may be stored claims its key in the region's fill slots; the
# misses for that key that come while it is fetched (on any worker) wait,
# parked, polling every CACHE_WAIT_POLL_MS, and are answered from the cache
# once the fill is published. A response that may not be stored leaves a
# "pass" mark instead, so that the next misses go on at once rather than
# one after the other. Waits are bounded (CACHE_WAIT_MAX_MS); a claim whose
# worker died is cleared by the supervisor, one left by a client that went
# away is given back at once: the waiters then fetch for themselves.

cdef enum:
    CLAIM_NONE = 0                   # go on, without a claim (the slot serves another key)
    CLAIM_MINE = 1                   # go on: this request fetches the key for the others
    CLAIM_WAIT = 2                   # another request fetches it: wait
    CACHE_WAIT_POLL_MS = 2
    CACHE_WAIT_MAX_MS = 5000
    CACHE_FILL_CLAIM_MS = 30000      # a claim older than this no longer holds anyone back
    CACHE_PASS_MS = 10000
    CACHE_PASS_BIG_MS = 60000        # a Range miss's fill found the object larger than max_object_size


cdef enum:
    # a key's claim goes in the first free slot of the CACHE_FILL_PROBES
    # after its hash's: with one slot per hash, two keys in flight at once
    # whose hashes met would keep the second from being collapsed or
    # refreshed in the background (stale-while-revalidate) until the first
    # was done
    CACHE_FILL_PROBES = 8


cdef int cache_claim(lb_cache_rt *rt, uint64_t hash, int64_t now_ms) noexcept nogil:
    cdef uint32_t base = <uint32_t>(hash & (CACHE_FILLS - 1)), k
    cdef shm_cache_fill *f
    cdef shm_cache_fill *slot = NULL
    cdef uint64_t cur, slot_cur = 0
    cdef int64_t until
    for k in range(CACHE_FILL_PROBES):
        f = &rt.fills[(base + k) & (CACHE_FILLS - 1)]
        cur = lb_load_u64(&f.hash)
        until = lb_load_i64(&f.until_ms)
        if cur == hash and until > now_ms:
            return CLAIM_NONE if lb_load_u32(&f.pass_) else CLAIM_WAIT
        if slot == NULL and (cur == 0 or until <= now_ms):
            slot = f
            slot_cur = cur
    if slot == NULL:
        return CLAIM_NONE            # every slot of its window is another key's, under way
    if not lb_cas_u64(&slot.hash, &slot_cur, hash):
        return CLAIM_NONE            # someone else's, just now
    lb_store_u32(&slot.pid, rt.pid)
    lb_store_u32(&slot.pass_, 0)
    lb_store_i64(&slot.until_ms, now_ms + CACHE_FILL_CLAIM_MS)
    return CLAIM_MINE


cdef inline void cache_unclaim(lb_cache_rt *rt, lb_cache_x *cx, bint pass_) noexcept nogil:
    """The fetch is over: published (the waiters find it), or not storable
    (pass_: the next misses do not wait), or given up."""
    cache_unclaim_for(rt, cx, CACHE_PASS_MS if pass_ else 0)


cdef bint cache_claim_renew(lb_cache_rt *rt, lb_cache_x *cx, int64_t now_ms) noexcept nogil:
    """A claim held while its fetch waited to be sent (range_fill_go) lasts
    CACHE_FILL_CLAIM_MS from now. False: it lapsed meanwhile (the slot may be
    another's now; cx no longer holds it)."""
    cdef uint32_t base = <uint32_t>(cx.hash & (CACHE_FILLS - 1)), k
    cdef shm_cache_fill *f
    if not cx.claimed:
        return False
    for k in range(CACHE_FILL_PROBES):
        f = &rt.fills[(base + k) & (CACHE_FILLS - 1)]
        if (lb_load_u64(&f.hash) == cx.hash and lb_load_u32(&f.pid) == rt.pid and not lb_load_u32(&f.pass_)
                and lb_load_i64(&f.until_ms) > now_ms):
            lb_store_i64(&f.until_ms, now_ms + CACHE_FILL_CLAIM_MS)
            return True
    cx.claimed = 0
    return False


cdef void cache_unclaim_for(lb_cache_rt *rt, lb_cache_x *cx, int64_t pass_ms) noexcept nogil:
    """cache_unclaim; pass_ms > 0: the pass mark lasts that long."""
    cdef uint32_t base = <uint32_t>(cx.hash & (CACHE_FILLS - 1)), k
    cdef shm_cache_fill *f
    cdef int64_t now_ms
    if not cx.claimed:
        return
    cx.claimed = 0
    for k in range(CACHE_FILL_PROBES):
        f = &rt.fills[(base + k) & (CACHE_FILLS - 1)]
        if lb_load_u64(&f.hash) != cx.hash or lb_load_u32(&f.pid) != rt.pid:
            continue
        if pass_ms > 0:
            clock_now_ms(&now_ms)
            lb_store_u32(&f.pass_, 1)
            lb_store_i64(&f.until_ms, now_ms + pass_ms)
        else:
            lb_store_u64(&f.hash, 0)
        return


cdef void cache_waits_sweep(lb_worker *w) noexcept nogil:
    """The loop's timers: each waiting request looks again (its cache step
    runs anew: a hit, another wait, or its own fetch)."""
    cdef lb_cache_wk *cw = w.http.cache
    cdef lb_tnode *n
    cdef lb_hconn *h
    if cw == NULL:
        return
    refresh_timers_sweep(w)          # stale-while-revalidate's background fetches
    while True:
        n = tl_expired(&cw.wait_list, w.now_ms)
        if n == NULL:
            break
        h = <lb_hconn *>n.owner
        tl_remove(n)
        if h.st != HS_PARKED or h.cx == NULL or not h.cx.waiting:
            continue
        h.park_step -= 1             # the cache step itself runs again
        h_resume_request(w, h, STEP_CONTINUE)


cdef inline uint64_t cache_next_deadline(lb_worker *w, uint64_t deadline) noexcept nogil:
    if w.http.cache == NULL:
        return deadline
    deadline = tl_deadline(&w.http.cache.refresh_timer, deadline)
    return tl_deadline(&w.http.cache.wait_list, deadline)


# ---- the steps -------------------------------------------------------------------------------------

cdef inline bint method_is(const uint8_t *b, http_req *r, const char *m) noexcept nogil:
    return ieq_exact(b + r.method_off, r.method_len, m)


cdef inline bint cache_purge_allowed(lb_worker *w, lb_cache_rt *rt, sockaddr_storage *peer) noexcept nogil:
    cdef acl_addr a
    cdef uint32_t i
    acl_addr_of(peer, &a)
    for i in range(rt.n_purge):
        if acl_match(w.base, &w.acls[rt.purge[i]], &a):
            return True
    return False


cdef int cache_purge_request(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b, lb_cache_rt *rt) noexcept nogil:
    """PURGE: the target's entries go, from purge_allow addresses only."""
    cdef char *key = w.http.cache.scratch + CACHE_HEAD_MAX
    cdef uint32_t n, url_len
    cdef uint64_t removed
    cdef char body[32]
    cdef uint32_t bn
    if rt.n_purge == 0:
        return 405
    if not cache_purge_allowed(w, rt, &h.c.peer):
        return 403
    if r.content_length > 0 or r.chunked:
        return 400
    n = cache_key(rt, b, r, key, CACHE_KEY_MAX, &url_len)
    if n == 0:
        return 400
    removed = cache_invalidate_key(rt, key, url_len)
    cache_count(&rt.st.purged, removed)
    memcpy(body, b"purged ", 7)
    bn = 7 + fmt_u64(body + 7, removed)
    body[bn] = 10
    bn += 1
    if removed:
        return cache_local(w, h, r, 200, b"OK", body, bn)
    return cache_local(w, h, r, 404, b"Not Found", body, bn)


cdef int step_cache(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Request phase, after the body limit: answer a fresh hit, or note what
    the response may do (be stored, invalidate)."""
    cdef lb_cache_rt *rt = cache_of(w, h)
    cdef lb_cache_x *cx
    cdef char *key = w.http.cache.scratch + CACHE_HEAD_MAX
    cdef uint32_t n, url_len = 0, host_len, idx = 0, qflags, stale_seq = 1
    cdef uint64_t hash
    cdef int64_t max_age, s_maxage, min_fresh, now_ms, max_stale = -1
    cdef int note, st, claim = CLAIM_NONE
    cdef bint get, auth, ranged
    cdef shm_cache_entry meta
    cdef int64_t wait_until = 0
    cdef lb_cache_refresh *rf = NULL
    h.cache_note = CN_NONE
    if h.cx != NULL:
        if h.cx.waiting:
            wait_until = h.cx.wait_until_ms   # it waited for another's fetch: it looks again
        cx_free(w, h.cx)
        h.cx = NULL
    if rt == NULL:
        return STEP_CONTINUE
    get = method_is(b, r, b"GET")
    if not get and not method_is(b, r, b"HEAD"):
        if method_is(b, r, b"PURGE"):
            return cache_purge_request(w, h, r, b, rt)
        cache_count(&rt.st.bypass, 1)
        h.cache_note = CN_BYPASS
        if method_is(b, r, b"OPTIONS") or method_is(b, r, b"TRACE") or method_is(b, r, b"CONNECT"):
            return STEP_CONTINUE
        # an unsafe method: its target goes once the origin took it (the
        # request's host follows the key: Location is matched against it)
        n = cache_inval_key(rt, b, r, key, CACHE_KEY_MAX, &url_len, &host_len)
        if n == 0:
            return STEP_CONTINUE
        cx = cx_alloc(w)
        if cx == NULL:
            return STEP_CONTINUE
        cx.key = <char *>malloc(n)
        if cx.key == NULL:
            cx_free(w, cx)
            return STEP_CONTINUE
        memcpy(cx.key, key, n)
        cx.key_len = url_len
        cx.host_len = host_len
        cx.inval = 1
        cx.cache = <uint32_t>(rt - w.http.cache.caches)
        h.cx = cx
        if method_is(b, r, b"POST"):
            # its answer may stand for its target (post_storable): the head, for the Vary values
            cx.req = <char *>malloc(r.head_len)
            if cx.req != NULL:
                memcpy(cx.req, b, r.head_len)
                cx.req_len = r.head_len
                cx.hash = lb_xxh64(<const uint8_t *>key, url_len, rt.hd.seed)
                cx.auth = field_find(b, r, b"authorization") >= 0
        return STEP_CONTINUE
    auth = field_find(b, r, b"authorization") >= 0
    n = cache_key(rt, b, r, key, CACHE_KEY_MAX, &url_len)
    if n == 0 or r.content_length > 0 or r.chunked or r.upgrade:
        cache_count(&rt.st.bypass, 1)
        h.cache_note = CN_BYPASS
        return STEP_CONTINUE
    qflags = cc_parse(b, r, False, &max_age, &s_maxage, &min_fresh, &max_stale)
    hash = lb_xxh64(<const uint8_t *>key, url_len, rt.hd.seed)
    ranged = field_find(b, r, b"range") >= 0
    clock_now_ms(&now_ms)
    if qflags & QCC_NO_CACHE:
        # the client wants the stored response validated, not skipped (RFC 9111
        # 5.2.1.4): looked up as max-age=0, it is then revalidated as a stale one
        note = cache_lookup(rt, key, n, hash, b, r, auth, now_ms, 0, -1, &meta, &idx, &stale_seq, -1)
        if note == CN_STALE:
            note = CN_REQUEST
    else:
        note = cache_lookup(rt, key, n, hash, b, r, auth, now_ms, max_age, min_fresh, &meta, &idx, &stale_seq,
                            max_stale)
        if note == CN_HIT:
            st = cache_hit(w, h, b, r, rt, &meta, idx, now_ms)
            if st != -1:
                if wait_until:
                    cache_count(&rt.st.collapsed, 1)
                if h.cx != NULL:
                    h.cx.cache = <uint32_t>(rt - w.http.cache.caches)
                return st
            note = CN_URI_MISS
            if h.cx != NULL:
                cx_free(w, h.cx)
                h.cx = NULL
        elif note == CN_STALE and not (stale_seq & 1):
            # stale-while-revalidate: answered stale, refreshed in the background
            st = cache_swr(w, h, b, r, rt, idx, stale_seq, key, n, 0, hash, auth, now_ms, max_age, min_fresh)
            if st != -1:
                return st
        if (note == CN_URI_MISS or note == CN_VARY_MISS) and rt.disk != NULL:
            st = cache_disk_hit(w, h, b, r, rt, key, n, hash, auth, now_ms, max_age, min_fresh, max_stale)
            if st == -2:             # a stale one, now in memory: revalidated from there
                note = cache_lookup(rt, key, n, hash, b, r, auth, now_ms, max_age, min_fresh, &meta, &idx,
                                    &stale_seq, max_stale)
                if note == CN_HIT:
                    note = CN_URI_MISS   # another's fresh store meanwhile: not this request's to serve
            elif st != -1:
                if h.cx != NULL:
                    h.cx.cache = <uint32_t>(rt - w.http.cache.caches)
                return st
            if h.cx != NULL:
                cx_free(w, h.cx)
                h.cx = NULL
    if qflags & QCC_ONLY_IF_CACHED:
        cache_count(&rt.st.miss, 1)
        return 504                   # RFC 9111 5.2.1.7
    # a Range miss goes on as it came and is not collapsed: the origin's 206 is
    # a piece, no answer for the others (it or a 200 may still be stored)
    if (get and not (qflags & QCC_NO_STORE) and note != CN_REQUEST and note != CN_BYPASS
            and not ranged and not tier_came_back(w, h, b, r)):
        claim = cache_claim(rt, hash, now_ms)
        if claim == CLAIM_WAIT and (wait_until == 0 or now_ms < wait_until):
            cx = cx_alloc(w)
            if cx != NULL:
                cx.waiting = 1
                cx.wait_until_ms = wait_until if wait_until else now_ms + CACHE_WAIT_MAX_MS
                cx.cache = <uint32_t>(rt - w.http.cache.caches)
                h.cx = cx
                tl_append(&w.http.cache.wait_list, &cx.twait, w.now_ms, h)
                return STEP_PARKED
            claim = CLAIM_NONE
    if note == CN_STALE:
        cache_count(&rt.st.stale, 1)
    elif note == CN_REQUEST or note == CN_BYPASS:
        cache_count(&rt.st.bypass, 1)
    else:
        cache_count(&rt.st.miss, 1)
    h.cache_note = <uint8_t>note
    if (get and rt.range_fill and (note == CN_URI_MISS or note == CN_VARY_MISS or
                                   (note == CN_STALE and not (stale_seq & 1))) and not auth
            and not (qflags & (QCC_NO_STORE | QCC_NO_CACHE)) and ranged
            and not range_from_start(b, r) and not tier_came_back(w, h, b, r)):
        rf = range_fill_start(w, h, b, r, rt, key, n, hash, now_ms, idx if note == CN_STALE else CACHE_NONE,
                              stale_seq)
    if (not get and note != CN_STALE) or (qflags & QCC_NO_STORE):
        return STEP_CONTINUE         # (a HEAD with a stale GET stored may refresh it: RFC 9111 4.3.5)
    # a GET that may be stored: its key, and its head for the Vary values
    cx = cx_alloc(w)
    if cx == NULL:
        if rf != NULL:
            refresh_close(w, rf, False)
        return STEP_CONTINUE
    cx.rf = rf                       # (cx_free drops it while it waits)
    if rf != NULL:
        rf.owner = cx
    cx.key = <char *>malloc(n)
    cx.req = <char *>malloc(r.head_len)
    if cx.key == NULL or cx.req == NULL:
        cx_free(w, cx)
        return STEP_CONTINUE
    memcpy(cx.key, key, n)
    memcpy(cx.req, b, r.head_len)
    cx.key_len = n
    cx.host_len = 0
    cx.req_len = r.head_len
    cx.hash = hash
    cx.auth = auth
    cx.ranged = ranged
    cx.fill = get
    cx.cache = <uint32_t>(rt - w.http.cache.caches)
    cx.claimed = claim == CLAIM_MINE
    cx.req_stale_if_error = cc_seconds(b, r, b"cache-control", b"stale-if-error")
    h.cx = cx
    if note == CN_STALE and not (stale_seq & 1):
        cx.has_stale = 1
        cx.stale_entry = idx
        cx.stale_seq = stale_seq
        cache_reval_start(w, h, rt, idx, stale_seq)
    elif (note == CN_REQUEST or note == CN_VARY_MISS) and not (stale_seq & 1):
        # validated, not served stale on error: the client asked for the origin,
        # or the entry is another variant, which a 304 alone may select
        cache_reval_start(w, h, rt, idx, stale_seq)
    return STEP_CONTINUE


cdef void cache_reval_start(lb_worker *w, lb_hconn *h, lb_cache_rt *rt, uint32_t idx, uint32_t seq) noexcept nogil:
    """A stale entry with validators: the request goes to the origin with
    them (RFC 9111 4.3.1), in place of any the client sent; a 304 then
    refreshes the entry (cache_revalidated)."""
    cdef lb_cache_x *cx = h.cx
    cdef shm_cache_entry *e = ce_at(rt, idx)
    cdef shm_cache_entry meta
    cdef char *head = w.http.cache.scratch
    cdef http_req *rs = w.http.resp
    cdef int32_t etag, lm
    cdef uint32_t k = 0, used = 0, vn
    memcpy(&meta, e, sizeof(shm_cache_entry))
    if not ce_stable(e, seq) or meta.head_len + 2 > CACHE_HEAD_MAX:
        return
    if not ce_copy(rt, e, seq, <uint64_t>meta.key_len + meta.vary_len + meta.tags_len, head, meta.head_len):
        return
    memcpy(head + meta.head_len, b"\r\n", 2)
    if http_parse_response_c(<const uint8_t *>head, meta.head_len + 2, rs, CACHE_HEAD_MAX + 4) != 0:
        return
    etag = field_find(<const uint8_t *>head, rs, b"etag")
    lm = field_find(<const uint8_t *>head, rs, b"last-modified")
    if etag >= 0 and rs.fields[etag].value_len <= 250:
        vn = rs.fields[etag].value_len
        memcpy(cx.validators, head + rs.fields[etag].value_off, vn)
        cx.rv_name[k].p = b"If-None-Match"
        cx.rv_name[k].n = 13
        cx.rv_lower[k].p = b"if-none-match"
        cx.rv_lower[k].n = 13
        cx.rv_value[k].p = cx.validators
        cx.rv_value[k].n = vn
        used = vn
        k += 1
    if lm >= 0 and rs.fields[lm].value_len <= 60:
        vn = rs.fields[lm].value_len
        memcpy(cx.validators + used, head + rs.fields[lm].value_off, vn)
        cx.rv_name[k].p = b"If-Modified-Since"
        cx.rv_name[k].n = 17
        cx.rv_lower[k].p = b"if-modified-since"
        cx.rv_lower[k].n = 17
        cx.rv_value[k].p = cx.validators + used
        cx.rv_value[k].n = vn
        k += 1
    if k == 0 and h.method == MT_HEAD:
        cx.reval = 3                 # a HEAD without validators: its 200 may still refresh the entry
        cx.stale_entry = idx
        cx.stale_seq = seq
        return
    if k == 0 or h.n_rq_rules >= MAX_RULESETS:
        return
    memset(&cx.rules, 0, sizeof(lb_hrules))
    cx.rules.n_set = k
    cx.rules.set_name = cx.rv_name
    cx.rules.set_lower = cx.rv_lower
    cx.rules.set_value = cx.rv_value
    rulesets_push(h.rq_rules, &h.n_rq_rules, &cx.rules)
    cx.reval = 1
    cx.stale_entry = idx
    cx.stale_seq = seq


cdef bint merged_put(char *m, uint32_t *n, uint32_t cap, const uint8_t *s, uint32_t len) noexcept nogil:
    if n[0] + len > cap:
        return False
    memcpy(m + n[0], s, len)
    n[0] += len
    return True


cdef int cache_revalidated(lb_worker *w, lb_hconn *h, lb_cache_rt *rt, http_req *r, const uint8_t *b) noexcept nogil:
    """The origin answered the revalidation 304: the stored head takes the
    304's fields (RFC 9111 4.3.4), the entry is stored again with its body,
    and the client is answered from it (200, or 304 when its own
    preconditions match). Response phase: STEP_ANSWERED, or a status."""
    cdef lb_cache_x *cx = h.cx
    cdef lb_cache_wk *cw = w.http.cache
    cdef shm_cache_entry *e = ce_at(rt, cx.stale_entry)
    cdef shm_cache_entry meta
    cdef char *old = cw.scratch
    cdef char *m
    cdef http_req *os = cw.merged
    cdef uint32_t cap, cap_all, n = 0, i, j, k
    cdef bint client_has_it = False
    cdef uint32_t offs[MAX_CONN_TOKENS]
    cdef uint32_t lens[MAX_CONN_TOKENS]
    cdef http_field *f
    cdef const uint8_t *name
    cdef bint replaced, stored = False
    cdef int64_t now_ms
    cdef int st, rg = RANGE_NONE
    cdef uint64_t body_off
    cdef uint64_t first[CACHE_MAX_RANGES]
    cdef uint64_t last[CACHE_MAX_RANGES]
    cdef uint32_t nr = 0
    memcpy(&meta, e, sizeof(shm_cache_entry))
    if not ce_stable(e, cx.stale_seq) or meta.state != CE_LIVE:
        return 502                   # the stored response went meanwhile: nothing to complete the 304 with
    body_off = <uint64_t>meta.key_len + meta.vary_len + meta.tags_len + meta.head_len
    if not ce_copy(rt, e, cx.stale_seq, body_off - meta.head_len, old, meta.head_len):
        return 502
    memcpy(old + meta.head_len, b"\r\n", 2)
    if http_parse_response_c(<const uint8_t *>old, meta.head_len + 2, os, CACHE_HEAD_MAX + 4) != 0:
        return 502
    cx.local = <char *>malloc(meta.body_len + 1)
    if cx.local == NULL or not ce_copy(rt, e, cx.stale_seq, body_off, cx.local, meta.body_len):
        return 502
    # the merged head: the stored fields the 304 does not replace, then the 304's own
    cap = meta.head_len + r.head_len + 32
    cap_all = cap + 16               # and "Not Modified", for a 304 to the client
    m = <char *>malloc(cap_all)
    if m == NULL:
        return 502
    k = conn_tokens(b, r, offs, lens)
    merged_put(m, &n, cap, <const uint8_t *>old, os.reason_off + os.reason_len)
    merged_put(m, &n, cap, b"\r\n", 2)
    for i in range(os.n_fields):
        f = &os.fields[i]
        name = <const uint8_t *>old + f.name_off
        replaced = False
        if not is_framing(name, f.name_len):
            for j in range(r.n_fields):
                if r.fields[j].name_len == f.name_len and ieq_bytes(b + r.fields[j].name_off, name, f.name_len):
                    replaced = True
                    break
        if not replaced:
            merged_put(m, &n, cap, name, f.value_off + f.value_len - f.name_off)
            merged_put(m, &n, cap, b"\r\n", 2)
    for j in range(r.n_fields):
        f = &r.fields[j]
        name = b + f.name_off
        if hop_by_hop(name, f.name_len) or is_framing(name, f.name_len) or ieq(name, f.name_len, b"age") \
                or ieq(name, f.name_len, b"cache-status") or (k and conn_listed(b, name, f.name_len, k, offs, lens)):
            continue
        merged_put(m, &n, cap, name, f.value_off + f.value_len - f.name_off)
        merged_put(m, &n, cap, b"\r\n", 2)
    merged_put(m, &n, cap, b"\r\n", 2)
    hb_drop(w, &h.b.inb, r.head_len)  # the 304 is done with; the connection may be parked
    if http_parse_response_c(<const uint8_t *>m, n, os, CACHE_HEAD_MAX + 4) != 0:
        free(m)
        return 502
    cache_count(&rt.st.revalidated, 1)
    cx.reval = 2
    # the client's own preconditions, against the refreshed response (before
    # the fill lets go of the saved request head)
    clock_now_ms(&now_ms)
    if cx.req != NULL and http_parse_request_c(<const uint8_t *>cx.req, cx.req_len, cw.req, h.hl.max_target,
                                               h.hl.max_head, h.hl.max_fields) == 0:
        client_has_it = not_modified(<const uint8_t *>cx.req, cw.req, <const uint8_t *>m, os, now_ms // 1000)
        if not client_has_it and h.method != MT_HEAD:
            # its Range, as a hit would answer it: one range is cut from the
            # body at hand; several, or none satisfiable, get the whole
            # response (RFC 9110 14.2 lets a Range be ignored)
            rg = range_of_200(<const uint8_t *>cx.req, cw.req, <const uint8_t *>m, os, meta.body_len, first, last,
                              &nr)
    if cache_fill_start(w, h, rt, os, <const uint8_t *>m, now_ms):
        memcpy(cx.obj + cx.obj_len, cx.local, meta.body_len)
        cx.obj_len += meta.body_len
        cache_fill_done(w, h)
        stored = True
    cx.fill = 0
    cx.serving = 1
    cx.left = 0 if h.method == MT_HEAD else meta.body_len
    cx_status(cx, h.cache_note, stored, 0, cx.ttl)
    if client_has_it:
        cx_not_modified(cx, os, m, n)
    elif rg == RANGE_ONE:
        cx.local_off = first[0]
        cx.left = last[0] - first[0] + 1
        cx_partial(cx, os, m, n, rg, first[0], last[0], meta.body_len)
    st = cache_answer(w, h, NULL, m, os, True)
    free(m)
    return st


cdef bint cache_stale_on_error(lb_worker *w, lb_hconn *h, int status) noexcept nogil:
    """stale-if-error (RFC 5861 4): the origin failed (a 5xx, or no answer:
    lb's own 502, 503, 504) and the stale entry allows it: answer with the
    entry instead. False: no such entry (the error goes to the client)."""
    cdef lb_cache_x *cx = h.cx
    cdef lb_cache_rt *rt
    cdef shm_cache_entry *e
    cdef shm_cache_entry meta
    cdef int64_t now_ms, age, sie
    cdef char *head
    cdef uint64_t off, at
    cdef uint32_t b, k
    cdef int rg = RANGE_NONE
    cdef uint64_t first[CACHE_MAX_RANGES]
    cdef uint64_t last[CACHE_MAX_RANGES]
    cdef uint32_t nr = 0
    cdef bint client_has_it = False
    if cx == NULL or not cx.has_stale or cx.serving or w.http.cache == NULL:
        return False
    rt = &w.http.cache.caches[cx.cache]
    e = ce_at(rt, cx.stale_entry)
    memcpy(&meta, e, sizeof(shm_cache_entry))
    # the response's stale-if-error, or the request's own (RFC 5861 4), the longer
    sie = meta.stale_if_error if meta.stale_if_error > cx.req_stale_if_error else cx.req_stale_if_error
    if not ce_stable(e, cx.stale_seq) or meta.state != CE_LIVE or sie <= 0 \
            or (meta.flags & (CEF_MUST_REVALIDATE | CEF_NO_CACHE)):
        return False
    clock_now_ms(&now_ms)
    age = meta.age0 + (now_ms - meta.resp_ms) // 1000
    if age >= meta.fresh + sie:
        return False
    head = w.http.cache.scratch
    off = <uint64_t>meta.key_len + meta.vary_len + meta.tags_len
    if meta.head_len + 2 > CACHE_HEAD_MAX or not ce_copy(rt, e, cx.stale_seq, off, head, meta.head_len):
        return False
    memcpy(head + meta.head_len, b"\r\n", 2)
    if http_parse_response_c(<const uint8_t *>head, meta.head_len + 2, w.http.resp, CACHE_HEAD_MAX + 4) != 0:
        return False
    off += meta.head_len
    # the client's preconditions and Range, as a hit would answer them (the saved request head)
    if cx.req != NULL and http_parse_request_c(<const uint8_t *>cx.req, cx.req_len, w.http.cache.req,
                                               h.hl.max_target, h.hl.max_head, h.hl.max_fields) == 0:
        if not_modified(<const uint8_t *>cx.req, w.http.cache.req, <const uint8_t *>head, w.http.resp,
                        meta.resp_ms // 1000):
            client_has_it = True
        elif h.method != MT_HEAD:
            rg = range_of_200(<const uint8_t *>cx.req, w.http.cache.req, <const uint8_t *>head, w.http.resp,
                              meta.body_len, first, last, &nr)
            if rg == RANGE_UNSAT:
                rg = RANGE_NONE      # (the whole response: RFC 9110 14.2 lets a Range be ignored)
    at = off + first[0] if rg == RANGE_ONE else off
    b = meta.first
    for k in range(<uint32_t>(at // CACHE_BLOCK)):
        if b >= rt.hd.n_blocks:
            return False
        b = lb_load_u32(&rt.next[b])
    if not ce_stable(e, cx.stale_seq):
        return False
    if h.b != NULL:
        h_release_backend(w, h, h.resp_started == 0)
    free(cx.obj)
    cx.obj = NULL
    free(cx.local)                   # (a revalidation that failed after copying the body: the blocks answer)
    cx.local = NULL
    cx.local_off = 0
    cx.filling = 0
    cx.fill = 0
    cx.serving = 1
    cx.entry = cx.stale_entry
    cx.seq = cx.stale_seq
    cx.blk = b
    cx.blk_off = <uint32_t>(at % CACHE_BLOCK)
    cx.left = 0 if h.method == MT_HEAD else meta.body_len
    if rg == RANGE_ONE:
        cx.left = last[0] - first[0] + 1
    elif rg == RANGE_MULTI and not mp_setup(w, cx, <const uint8_t *>head, w.http.resp, first, last, nr,
                                            meta.body_len, off, meta.first):
        rg = RANGE_NONE              # (no memory for the parts: the whole response)
    cx.reval = 0
    cx_status(cx, CN_STALE, False, age, meta.fresh - age, True)
    # "; fwd-status=NNN": what the origin (or lb for it) answered
    if cx.hdr_len + 20 < sizeof(cx.hdr):
        cx.hdr_len -= 2
        memcpy(cx.hdr + cx.hdr_len, b"; fwd-status=", 13)
        cx.hdr_len += 13
        cx.hdr_len += fmt_u64(cx.hdr + cx.hdr_len, <uint64_t>status)
        memcpy(cx.hdr + cx.hdr_len, b"\r\n", 2)
        cx.hdr_len += 2
    if client_has_it:
        # the client holds this very response: the stored head, as 304, no body
        cx_not_modified(cx, w.http.resp, head, meta.head_len + 2)
    elif rg == RANGE_ONE or rg == RANGE_MULTI:
        cx_partial(cx, w.http.resp, head, meta.head_len + 2, rg, first[0], last[0], meta.body_len)
    cache_count(&rt.st.stale_served, 1)
    h.c.lg.term = TERM_OK
    return cache_answer(w, h, NULL, head, w.http.resp, True) == STEP_ANSWERED


cdef inline bint ieq_bytes(const uint8_t *a, const uint8_t *b, uint32_t n) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        if lower(a[i]) != lower(b[i]):
            return False
    return True


cdef int step_cache_store(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Response phase: invalidation by unsafe methods, the storability rules,
    and the Cache-Status the response gets."""
    cdef lb_cache_x *cx = h.cx
    cdef lb_cache_rt *rt
    cdef int64_t now_ms
    cdef bint stored = False
    if cx != NULL and cx.rf != NULL:
        range_fill_go(w, cx.rf, r, b)
    if cx == NULL or cx.serving:
        return STEP_CONTINUE
    rt = &w.http.cache.caches[cx.cache]
    if cx.inval:
        if 200 <= r.status < 400:
            cache_invalidate(w, h, rt, r, b)
        if post_storable(rt, cx, r, b, w.http.cache.scratch):
            clock_now_ms(&now_ms)
            if cache_fill_start(w, h, rt, r, b, now_ms):
                stored = True
                if h.rs_state == RS_DONE:
                    cache_fill_done(w, h)
        if h.cache_note != CN_NONE:
            cx_status(cx, h.cache_note, stored, 0, cx.ttl)
        return STEP_CONTINUE
    # reval 1: the stored validators went with the request; 3: a HEAD without them
    if (cx.reval == 1 and r.status == 304) or ((cx.reval == 1 or cx.reval == 3) and h.method == MT_HEAD
                                               and r.status == 200 and head_freshens(w, rt, cx, r, b)):
        return cache_revalidated(w, h, rt, r, b)
    if cx.has_stale and r.status in (500, 502, 503, 504) and cache_stale_on_error(w, h, r.status):
        return STEP_ANSWERED         # (the error's backend connection was closed, its body unread)
    if cx.fill and not cx.filling and cx.obj == NULL:
        clock_now_ms(&now_ms)
        if h.method != MT_HEAD and cache_fill_start(w, h, rt, r, b, now_ms):
            stored = True
            if h.rs_state == RS_DONE:
                cache_fill_done(w, h)    # no body to wait for
        else:
            cache_count(&rt.st.not_stored, 1)
            cache_unclaim(rt, cx, True)
        cx.fill = 0
    cx_status(cx, h.cache_note, stored, 0, cx.ttl)
    return STEP_CONTINUE


cdef void step_cache_end(lb_worker *w, lb_conn *c) noexcept nogil:
    """End phase: the exchange's cache state goes (a fill cut short is never
    published)."""
    cdef lb_hconn *h = <lb_hconn *>c
    if h.cx != NULL:
        cx_free(w, h.cx)
        h.cx = NULL


cdef inline void clock_now_ms(int64_t *out) noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    out[0] = <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


def _cache_name(site):
    return getattr(site, "cache", "") or ""


def wants_cache(listener):
    return listener.mode == "http" and (bool(_cache_name(listener)) or any(_cache_name(r) for r in listener.routes))


wants_cache_store = wants_cache
wants_cache_end = wants_cache


# ---- set-up (Python) -----------------------------------------------------------------------------

cdef int cache_worker_init(lb_worker *w, object caches, uint32_t row, dict acl_index) except -1:
    """caches: (CacheShm, config.Cache) of every [caches.NAME], in config order."""
    cdef lb_cache_wk *cw
    cdef lb_cache_rt *rt
    cdef CacheShm cs
    if not caches or w.http == NULL:
        return 0
    cw = <lb_cache_wk *>calloc(1, sizeof(lb_cache_wk))
    if cw == NULL:
        raise MemoryError()
    w.http.cache = cw
    cw.n = len(caches)
    cw.caches = <lb_cache_rt *>calloc(cw.n, sizeof(lb_cache_rt))
    cw.scratch = <char *>malloc(CACHE_HEAD_MAX + CACHE_KEY_MAX + 16)
    cw.req = <http_req *>malloc(sizeof(http_req))
    cw.merged = <http_req *>malloc(sizeof(http_req))
    cw.wait_list.timeout_ms = CACHE_WAIT_POLL_MS
    if cw.caches == NULL or cw.scratch == NULL or cw.req == NULL or cw.merged == NULL:
        raise MemoryError()
    refresh_init(cw)
    for i, (shm, cfg) in enumerate(caches):
        cs = <CacheShm>shm
        rt = &cw.caches[i]
        cache_rt_map(rt, cs.base)
        rt.zc_fd = cs.rt.zc_fd
        rt.zc = cs.rt.zc
        rt.st = (<shm_cache_stats *>(cs.base + rt.hd.off_rows)) + (row % CACHE_ROWS)
        rt.pid = <uint32_t>getpid()
        rt.tag_header = mkstr((cfg.tag_header or "").lower())
        rt.range_fill = cfg.range_fill
        cache_keycfg_init(&rt.key, cfg)
        allow = list(cfg.purge_allow)
        if len(allow) > 8:
            raise ValueError("at most 8 ACLs in purge_allow")
        rt.n_purge = len(allow)
        for j, name in enumerate(allow):
            rt.purge[j] = acl_index[name]
        if cs.disk is not None:
            cache_disk_worker_init(rt, cs.disk, row)
    return 0


cdef inline uint64_t _pow2_at_least(uint64_t n) noexcept nogil:
    cdef uint64_t p = 1
    while p < n:
        p <<= 1
    return p


def cache_layout(uint64_t size, bint paged=False):
    """(n_blocks, n_entries, n_buckets, n_ghost, total): the most blocks a
    region of `size` bytes holds with its index, which all fits in size.
    paged: the blocks start on a page of the file (room for it is kept)."""
    cdef uint64_t fixed = (_line(sizeof(shm_cache_head)) + _line(CACHE_ROWS * sizeof(shm_cache_stats))
                           + _line(CACHE_FILLS * sizeof(shm_cache_fill)) + (CACHE_BLOCK if paged else 0))
    cdef uint64_t nb, ne, nbk, ng, total
    # per block: its data, its next link and free-stack slot, an entry (with
    # its free-stack slot), a bucket and a ghost slot (both up to twice)
    nb = (size - fixed) // (CACHE_BLOCK + 4 + 4 + sizeof(shm_cache_entry) + 4 + 8 + 16) if size > fixed else 0
    while nb > 0:
        ne = nb
        nbk = _pow2_at_least(ne)
        ng = _pow2_at_least(ne)
        total = (fixed + _line(nbk * 4) + _line(ne * sizeof(shm_cache_entry)) + _line(nb * 4) * 2
                 + _line(ne * 4) + _line(ng * 8) + nb * CACHE_BLOCK)
        if total <= size:
            return nb, ne, nbk, ng, total
        nb -= 1 + nb // 64
    raise ValueError(f"a cache of {size} bytes holds no block: at least 64k")


def _small_pages(str path, str mountinfo="/proc/self/mountinfo",
                 str shmem_enabled="/sys/kernel/mm/transparent_hugepage/shmem_enabled"):
    """True when the file at path is kept in pages of one block each (a
    tmpfs without huge pages): then punching a block out (cache_punch)
    detaches its page. In a huge page, a punch that cannot split it (a
    socket holding it is enough) zeroes the range in place, and a socket
    would send those zeros."""
    if _mmap.PAGESIZE != CACHE_BLOCK:
        return False
    try:
        with _io.open(shmem_enabled) as f:
            if "[force]" in f.read():
                return False
        best, fs, opts = "", "", ""
        with _io.open(mountinfo) as f:
            for line in f:
                # "ID PARENT DEV ROOT POINT OPTIONS ... - FSTYPE SOURCE SUPER_OPTIONS"
                left, _, right = line.partition(" - ")
                point = left.split()[4]
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best = point           # the deepest mount holding path (the last one mounted there)
                    fields = right.split()
                    fs = fields[0] if fields else ""
                    opts = fields[2] if len(fields) > 2 else ""
    except (OSError, IndexError):
        return False
    huge = [o.partition("=")[2] for o in opts.split(",") if o.startswith("huge=")]
    return fs == "tmpfs" and (not huge or huge[len(huge) - 1] == "never")


cdef class CacheShm:
    """One [caches.NAME] region: created by the supervisor, inherited by the
    workers it forks, kept over reloads while its size stays the same."""

    cdef char *base
    cdef readonly uint64_t size
    cdef readonly str path
    cdef lb_cache_rt rt
    cdef public uint64_t requested   # the configured size it was made for (the mapping may be a little less)
    cdef bint borrowed               # base is inside another's mapping (a disk tier's file): not unmapped here
    cdef public object disk          # its DiskTier (fastpath/cache_disk.pxi), or None

    def __dealloc__(self):
        cache_keycfg_free(&self.rt.key)
        if self.base != NULL and not self.borrowed:
            munmap(self.base, self.size)
        if self.rt.zc:
            close(self.rt.zc_fd)

    @staticmethod
    def create(str path, uint64_t size, uint64_t max_object, uint64_t seed=0):
        """seed: of the key hashes (a disk tier's, so that both tiers hash
        alike); 0: a random one."""
        nb, ne, nbk, ng, total = cache_layout(size, True)
        cdef bytes bpath = path.encode()
        _fresh_file(path)
        cdef int fd = open(bpath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd < 0:
            raise OSError(errno, "cannot create the cache's shared memory", path)
        if ftruncate(fd, total) != 0:
            close(fd)
            raise OSError(errno, "cannot size the cache's shared memory", path)
        cdef void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            close(fd)
            raise OSError(errno, "cannot map the cache's shared memory", path)
        cdef CacheShm self = CacheShm.__new__(CacheShm)
        self.path = path
        self._init(<char *>p, size, max_object, seed, True)
        # the file stays open (and is inherited by the workers) for zero-copy
        # hits: vmsplice from its mapping, and punching freed blocks out of it, which
        # also shows that the filesystem can (tmpfs does)
        if _os.environ.get("LB_CACHE_ZERO_COPY", "1") != "0" and _small_pages(path) and fallocate(
                fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, <long>self.rt.hd.off_blocks, CACHE_BLOCK) == 0:
            self.rt.zc_fd = fd
            self.rt.zc = 1
        else:
            close(fd)
        return self

    cdef _init(self, char *p, uint64_t size, uint64_t max_object, uint64_t seed, bint paged=False):
        """Lay an empty region out at p (its mapping, or a disk tier's file).
        paged: p is the start of its file, and its blocks start on a page
        of it, so that a block can be punched out alone (cache_punch)."""
        nb, ne, nbk, ng, total = cache_layout(size, paged)
        self.base = p
        self.size = total
        cdef shm_cache_head *hd = <shm_cache_head *>p
        hd.total_size = total
        hd.n_blocks = nb
        hd.n_entries = ne
        hd.n_buckets = nbk
        hd.n_ghost = ng
        hd.max_object = max_object
        hd.small_cap = max(1, nb // 10)
        hd.seed = seed or int.from_bytes(_os.urandom(8), "little")
        off = _line(sizeof(shm_cache_head))
        hd.off_rows = off
        off += _line(CACHE_ROWS * sizeof(shm_cache_stats))
        hd.off_fills = off
        off += _line(CACHE_FILLS * sizeof(shm_cache_fill))
        hd.off_buckets = off
        off += _line(nbk * 4)
        hd.off_entries = off
        off += _line(ne * sizeof(shm_cache_entry))
        hd.off_next = off
        off += _line(nb * 4)
        hd.off_bstack = off
        off += _line(nb * 4)
        hd.off_estack = off
        off += _line(ne * 4)
        hd.off_ghost = off
        off += _line(ng * 8)
        if paged:
            off = (off + CACHE_BLOCK - 1) // CACHE_BLOCK * CACHE_BLOCK
        hd.off_blocks = off
        cache_rt_map(&self.rt, self.base)
        cache_keycfg_init(&self.rt.key, None)
        self.rt.pid = <uint32_t>getpid()
        cache_reset(&self.rt)
        hd.version = CACHE_VERSION
        lb_fence_release()
        lb_release_u32(&hd.magic, CACHE_MAGIC)

    def unlink(self):
        try:
            _os.unlink(self.path)
        except FileNotFoundError:
            pass

    def set_max_object(self, uint64_t max_object):
        """A reload may change max_object_size in place (responses stored
        before keep their size)."""
        self.rt.hd.max_object = max_object

    def set_key(self, cfg):
        """The key settings of its [caches.NAME] (at creation and every
        reload): purge and list key URLs as the workers do."""
        cache_keycfg_free(&self.rt.key)
        cache_keycfg_init(&self.rt.key, cfg)

    @property
    def max_object(self):
        return self.rt.hd.max_object

    cdef int _lock(self) except -1:
        self.rt.pid = <uint32_t>getpid()
        if not cache_lock(&self.rt):
            raise OSError("the cache's lock stays busy")
        return 0

    def reap(self, uint32_t pid):
        """A process died: if it held the lock, the index may be half
        changed; the cache is emptied (a cache may always lose objects).
        True when it was."""
        cdef uint32_t expected = pid
        self.rt.pid = <uint32_t>getpid()
        if pid == 0 or not lb_cas_u32(&self.rt.hd.lock, &expected, self.rt.pid):
            return False
        cache_reset(&self.rt)
        self.rt.hd.resets += 1
        cache_unlock(&self.rt)
        return True

    def reap_fills(self, uint32_t pid):
        """A process died: the fetches it claimed will not end; its waiters
        go to the origin themselves at their next poll."""
        cdef uint32_t i, n = 0
        cdef shm_cache_fill *f = <shm_cache_fill *>(self.base + self.rt.hd.off_fills)
        for i in range(CACHE_FILLS):
            if lb_load_u32(&f[i].pid) == pid and lb_load_u64(&f[i].hash):
                lb_store_u64(&f[i].hash, 0)
                n += 1
        return n

    def stats(self):
        """Counters summed over the rows, and what the region holds."""
        cdef shm_cache_head *hd = self.rt.hd
        cdef shm_cache_stats *rows = <shm_cache_stats *>(self.base + hd.off_rows)
        cdef uint64_t *words
        cdef uint32_t r, k
        names = ("hit", "miss", "stale", "bypass", "stored", "evicted", "not_stored", "invalidated", "purged",
                 "hit_bytes", "store_failed", "revalidated", "stale_served", "collapsed", "refreshed",
                 "refresh_failed", "range_fills", "range_fill_failed")
        totals = [0] * len(names)
        for r in range(CACHE_ROWS):
            words = <uint64_t *>&rows[r]
            for k in range(len(names)):
                totals[k] += lb_load_u64(&words[k])
        out = dict(zip(names, totals))
        out.update(objects=lb_load_u64(&hd.objects), bytes=lb_load_u64(&hd.bytes),
                   capacity=<uint64_t>hd.n_blocks * CACHE_BLOCK, blocks=hd.n_blocks,
                   blocks_used=hd.n_blocks - lb_load_u32(&hd.free_blocks), size=hd.total_size,
                   max_object_size=hd.max_object, resets=hd.resets)
        return out

    cdef bytes _part(self, uint32_t i, uint64_t off, uint64_t n):
        cdef shm_cache_entry *e = ce_at(&self.rt, i)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        if not ce_copy(&self.rt, e, e.seq, off, PyBytes_AS_STRING(out), n):
            return None
        return out

    def entries(self, str prefix="", uint32_t limit=1000):
        """The live entries whose key starts with prefix (host and target),
        read under the lock: key, status, sizes, age and time to live."""
        cdef shm_cache_head *hd = self.rt.hd
        cdef shm_cache_entry *e
        cdef uint32_t i
        cdef int64_t now = int(_time.time() * 1000), age
        bprefix = _key_prefix(prefix, self.rt.key.host) if prefix else b""
        out = []
        self._lock()
        try:
            for i in range(hd.n_entries):
                e = ce_at(&self.rt, i)
                if e.state != CE_LIVE:
                    continue
                key = self._part(i, 0, e.key_len)
                if key is None or not key.startswith(bprefix):
                    continue
                age = e.age0 + (now - e.resp_ms) // 1000
                tags = self._part(i, e.key_len + e.vary_len, e.tags_len) or b""
                url, fields = _key_parts(key)
                out.append({"key": url, "key_fields": fields, "status": e.status, "body_bytes": e.body_len,
                            "stored_bytes": e.key_len + e.vary_len + e.tags_len + e.head_len + e.body_len,
                            "age": age, "ttl": e.fresh - age,
                            "vary": (self._part(i, e.key_len, e.vary_len) or b"").decode("latin-1"),
                            "tags": tags.decode("latin-1").split(), "queue": "small" if e.queue == CQ_SMALL else "main"})
                if len(out) >= limit:
                    break
        finally:
            cache_unlock(&self.rt)
        return out

    def purge(self, str url="", str prefix="", str tag=""):
        """Remove the entries of a URL (every variant), of a key prefix, or
        with a tag. Returns how many went."""
        cdef shm_cache_head *hd = self.rt.hd
        cdef shm_cache_entry *e
        cdef uint32_t i, n = 0
        cdef bytes key
        if url:
            key = cache_key_of_url(&self.rt.key, url)
            if key is None:
                return 0
            self._lock()
            try:
                n = cache_remove_hash(&self.rt, lb_xxh64(<const uint8_t *><char *>key, len(key), hd.seed))
            finally:
                cache_unlock(&self.rt)
            return n
        bprefix = _key_prefix(prefix, self.rt.key.host) if prefix else b""
        btag = tag.encode()
        self._lock()
        try:
            for i in range(hd.n_entries):
                e = ce_at(&self.rt, i)
                if e.state != CE_LIVE:
                    continue
                if prefix:
                    part = self._part(i, 0, e.key_len)
                    hit = part is not None and part.startswith(bprefix)
                else:
                    part = self._part(i, e.key_len + e.vary_len, e.tags_len)
                    hit = part is not None and btag in part.split()
                if hit:
                    ce_remove(&self.rt, i, False)
                    n += 1
        finally:
            cache_unlock(&self.rt)
        return n

