# The disk tier of a cache (docs/cache.md "Disk tier"): a second region in
# the format of the memory one (4 KiB blocks, S3-FIFO, seqlocked entries,
# the pid lock), laid out inside a file of disk_size bytes that the
# supervisor maps MAP_SHARED before it forks, so the workers inherit it as
# they inherit the memory region. Its layout is shm_disk_head (the
# _fastpath.pxd part 7 end): header, a checksum per entry, the region.
#
#   demotion   an object the memory tier evicts (fresh, or stale with a
#              validator or stale-if-error left) is copied into the disk
#              tier (cache_demote), under the memory lock then the disk
#              lock (always in that order). Only evicted objects are
#              written, not every store: the disk sees the write load of
#              what memory cannot hold, as with ATS's RAM cache over its
#              disk; an object that stays hot in memory is never written.
#              A clean stop writes what memory holds (DiskTier.flush).
#   lookup     a memory miss looks in the disk tier, lock-free as in
#              memory (cache_lookup on the disk region). A fresh hit is
#              answered from the disk's blocks by the usual hit path
#              (cx.src: the disk), its checksum read in place first, once
#              for each time the entry is written (`verified`, shared by
#              the workers, not on disk). An entry asked for DISK_PROMOTE_HITS
#              times is promoted instead: copied into the memory tier and
#              answered from there; a stale one too, for memory to
#              revalidate. An entry that fails its checksum is removed,
#              never served. The disk copy stays (the tiers are
#              inclusive), so a crash loses nothing the disk held.
#   reads      the file's pages come from the page cache; a page that is
#              not there blocks the worker while it is read (Varnish's
#              file storage does the same). madvise(MADV_WILLNEED) on the
#              object's blocks asks for them all at once.
#   restart    entries keep their place and their absolute times
#              (resp_ms, age0, fresh): DiskTier.open checks the header,
#              the geometry and every entry's blocks, rebuilds the index
#              from the entries that are whole, and drops the rest.
#              Checksums cover each entry's fields and bytes (written
#              after the entry is published, checked at every promotion):
#              an entry cut by a crash or whose bytes changed on disk is
#              never served.
#
# Counters of the disk region's rows: hit (answered from the disk, or
# promoted and answered), hit_bytes (bytes sent from the disk's blocks),
# stored (demoted), evicted (from the disk), invalidated, purged,
# not_stored (dropped: a bad checksum).

cdef extern from "sys/mman.h" nogil:
    enum:
        MADV_WILLNEED
        MS_SYNC
        MAP_ANONYMOUS
    int madvise(void *addr, size_t length, int advice)
    int msync(void *addr, size_t length, int flags)

import errno as _errno
import fcntl as _fcntl

DISK_LOCK_WAIT = 10.0                # seconds a start waits for the processes of an lb before it to go


cdef enum:
    DISK_PROMOTE_HITS = 3            # hits on the disk (cache_lookup's freq, at most 3) that take an entry back into memory

cdef bint cache_hit_from_disk = False   # a worker is one thread: set around the one cache_hit of a disk hit


cdef uint64_t disk_sum_fields(shm_cache_entry *m) noexcept nogil:
    """The start of an entry's checksum: the fields a hit is answered with.
    Its bytes follow a block at a time (disk_sum, disk_sum_blocks)."""
    cdef uint64_t f[10]
    f[0] = m.hash
    f[1] = m.vhash
    f[2] = (<uint64_t>m.status << 48) | (<uint64_t>m.flags << 32) | m.head_len
    f[3] = (<uint64_t>m.key_len << 32) | (<uint64_t>m.vary_len << 16) | m.tags_len
    f[4] = m.body_len
    f[5] = <uint64_t>m.resp_ms
    f[6] = <uint64_t>m.age0
    f[7] = <uint64_t>m.fresh
    f[8] = <uint64_t><int64_t>m.stale_if_error
    f[9] = <uint64_t><int64_t>m.stale_while_revalidate
    return lb_xxh64(<const uint8_t *>f, sizeof(f), 0x6c626469736b)


cdef uint64_t disk_sum(shm_cache_entry *m, const char *obj, uint64_t len) noexcept nogil:
    """An entry's checksum over a copy of its object."""
    cdef uint64_t h = disk_sum_fields(m), off = 0, n
    while off < len:
        n = len - off if len - off < CACHE_BLOCK else CACHE_BLOCK
        h = lb_xxh64(<const uint8_t *>obj + off, n, h)
        off += n
    return h


cdef bint disk_sum_blocks(lb_cache_rt *d, shm_cache_entry *m, uint32_t idx, uint32_t seq) noexcept nogil:
    """The entry's bytes, read where they are, match its checksum (and it
    did not change meanwhile)."""
    cdef uint64_t h = disk_sum_fields(m), left = ce_total(m), n
    cdef uint32_t b = m.first, k
    for k in range(m.n_blocks):
        if b >= d.hd.n_blocks:
            return False
        n = left if left < CACHE_BLOCK else CACHE_BLOCK
        h = lb_xxh64(<const uint8_t *>d.blocks + <uint64_t>b * CACHE_BLOCK, n, h)
        left -= n
        b = lb_load_u32(&d.next[b])
    return ce_stable(ce_at(d, idx), seq) and h == lb_load_u64(&d.csum[idx])


cdef inline uint64_t ce_total(shm_cache_entry *e) noexcept nogil:
    return <uint64_t>e.key_len + e.vary_len + e.tags_len + e.head_len + e.body_len


cdef void disk_willneed(lb_cache_rt *d, uint32_t b, uint32_t n) noexcept nogil:
    """Ask the kernel for an object's blocks at once, before they are copied
    a block at a time (each a page fault otherwise): one madvise per run of
    consecutive blocks."""
    cdef uint32_t k, first = b, run = 0
    for k in range(n):
        if b >= d.hd.n_blocks:
            break
        if run and b != first + run:
            madvise(d.blocks + <uint64_t>first * CACHE_BLOCK, <size_t>run * CACHE_BLOCK, MADV_WILLNEED)
            first = b
            run = 0
        run += 1
        b = lb_load_u32(&d.next[b])
    if run:
        madvise(d.blocks + <uint64_t>first * CACHE_BLOCK, <size_t>run * CACHE_BLOCK, MADV_WILLNEED)


cdef bint disk_has(lb_cache_rt *d, shm_cache_entry *m) noexcept nogil:
    """The disk holds this very response already (promoted from it, not
    changed since): no need to write it again. Disk lock held."""
    cdef uint32_t link = d.buckets[m.hash & (d.hd.n_buckets - 1)], k = 0
    cdef shm_cache_entry *e
    while link and k < CACHE_CHAIN_MAX:
        e = ce_at(d, link - 1)
        if (e.state == CE_LIVE and e.hash == m.hash and e.vhash == m.vhash and e.resp_ms == m.resp_ms
                and e.body_len == m.body_len and e.head_len == m.head_len and e.age0 == m.age0
                and e.fresh == m.fresh):
            return True
        link = e.chain
        k += 1
    return False


cdef bint head_has_validator(const uint8_t *h, uint32_t n) noexcept nogil:
    """A stored head (lines with CRLF) has an ETag or a Last-Modified."""
    cdef uint32_t i = 0
    while i < n:
        if (n - i > 5 and ieq(h + i, 5, b"etag:")) or (n - i > 14 and ieq(h + i, 14, b"last-modified:")):
            return True
        while i < n and h[i] != 10:
            i += 1
        i += 1
    return False


cdef void cache_demote(lb_cache_rt *rt, uint32_t i) noexcept nogil:
    """Memory evicts entry i: copy it into the disk tier, unless it is stale
    without a use left (no validator, no stale-if-error), revalidated at
    every use, or there already.
    Memory lock held (the entry cannot change); takes the disk lock."""
    cdef lb_cache_rt *d = rt.disk
    cdef shm_cache_entry *e = ce_at(rt, i)
    cdef shm_cache_entry meta
    cdef uint64_t total = ce_total(e), evicted = 0
    cdef int64_t now_ms, age
    cdef char *buf
    cdef uint32_t j
    cdef int st
    if d == NULL or e.state != CE_LIVE or (e.flags & CEF_NO_CACHE) or total > d.hd.max_object + CACHE_HEAD_MAX \
            + 3 * CACHE_META_MAX + CACHE_KEY_MAX:
        return
    clock_now_ms(&now_ms)
    age = e.age0 + (now_ms - e.resp_ms) // 1000
    memcpy(&meta, e, sizeof(shm_cache_entry))
    buf = <char *>malloc(total if total else 1)
    if buf == NULL:
        return
    if not ce_copy(rt, e, e.seq, 0, buf, total):
        free(buf)
        return
    # a stale one is worth the disk only if it can be revalidated (a 304
    # costs the origin less than the body) or still serve stale-if-error
    if age >= e.fresh and not (age - e.fresh < e.stale_if_error or head_has_validator(
            <const uint8_t *>buf + e.key_len + e.vary_len + e.tags_len, e.head_len)):
        free(buf)
        return
    if not cache_lock(d):
        free(buf)
        return
    if disk_has(d, &meta):
        cache_unlock(d)
        free(buf)
        return
    st = cache_insert(d, buf, total, &meta, &evicted)
    if st == 0:
        # cache_insert put it at the head of its bucket; its checksum comes
        # after it is published: a crash in between leaves a mismatch, and
        # the entry is dropped, not served
        j = d.buckets[meta.hash & (d.hd.n_buckets - 1)] - 1
        lb_store_u64(&d.csum[j], disk_sum(&meta, buf, total))
    cache_unlock(d)
    free(buf)
    if d.st != NULL:
        if st == 0:
            cache_count(&d.st.stored, 1)
        if evicted:
            cache_count(&d.st.evicted, evicted)


cdef void disk_drop_bad(lb_cache_rt *d, uint32_t idx, uint32_t seq) noexcept nogil:
    """An entry whose bytes do not match its checksum: removed, once the
    lock shows no demotion was writing it meanwhile."""
    cdef shm_cache_entry *e = ce_at(d, idx)
    cdef uint64_t total
    cdef char *buf
    if not cache_lock(d):
        return
    if lb_load_u32(&e.seq) == seq and e.state == CE_LIVE:
        total = ce_total(e)
        buf = <char *>malloc(total if total else 1)
        if buf != NULL:
            if ce_copy(d, e, seq, 0, buf, total) and disk_sum(e, buf, total) != d.csum[idx]:
                ce_remove(d, idx, False)
                if d.st != NULL:
                    cache_count(&d.st.not_stored, 1)
            free(buf)
    cache_unlock(d)


cdef int cache_disk_hit(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r, lb_cache_rt *rt,
                        const char *key, uint32_t n, uint64_t hash, bint auth, int64_t now_ms, int64_t max_age,
                        int64_t min_fresh, int64_t max_stale) noexcept nogil:
    """A memory miss: a fresh entry of the disk tier, its checksum checked,
    is answered from the disk's blocks (cache_hit over the disk region);
    one hit DISK_PROMOTE_HITS times is copied into memory and answered from
    there. cache_hit's result, or -1: no hit from the disk (the request goes
    on as a miss), or -2: a
    stale entry was promoted, for the memory tier to revalidate (a 304
    instead of the whole body, after a restart say) or serve stale-if-error:
    the caller looks in memory again."""
    cdef lb_cache_rt *d = rt.disk
    cdef shm_cache_entry meta
    cdef shm_cache_entry *e
    cdef uint32_t idx = 0, stale_seq = 1, seq
    cdef uint64_t total, evicted = 0
    cdef char *buf
    cdef int note, st
    note = cache_lookup(d, key, n, hash, b, r, auth, now_ms, max_age, min_fresh, &meta, &idx, &stale_seq, max_stale)
    if note == CN_STALE and not (stale_seq & 1):
        # cache_lookup gives the stale entry's index and seq, not its fields
        e = ce_at(d, idx)
        memcpy(&meta, e, sizeof(shm_cache_entry))
        if not ce_stable(e, stale_seq) or meta.state != CE_LIVE or meta.hash != hash:
            return -1
        meta.seq = stale_seq
    elif note != CN_HIT:
        return -1
    e = ce_at(d, idx)
    seq = meta.seq
    if note == CN_HIT and meta.freq < DISK_PROMOTE_HITS:
        # answered from the disk's blocks, as memory answers from its own: its
        # checksum is read in place, once for each time the entry is written
        disk_willneed(d, meta.first, meta.n_blocks)
        if lb_load_u32(&d.verified[idx]) != seq:
            if not disk_sum_blocks(d, &meta, idx, seq):
                if ce_stable(e, seq):
                    disk_drop_bad(d, idx, seq)
                return -1
            lb_store_u32(&d.verified[idx], seq)
        global cache_hit_from_disk
        cache_hit_from_disk = True   # Cache-Status: ...; detail=disk (cx_status)
        st = cache_hit(w, h, b, r, d, &meta, idx, now_ms)
        cache_hit_from_disk = False
        if st != -1:
            cache_count(&rt.st.hit, 1)       # a hit of the cache (cache_hit counted the disk's)
            if h.cx != NULL:
                h.cx.src = d
        return st
    # asked for again and again: promoted into memory
    total = ce_total(&meta)
    buf = <char *>malloc(total if total else 1)
    if buf == NULL:
        return -1
    disk_willneed(d, meta.first, meta.n_blocks)
    if not ce_copy(d, e, seq, 0, buf, total):
        free(buf)
        return -1
    if lb_load_u32(&d.verified[idx]) != seq and disk_sum(&meta, buf, total) != lb_load_u64(&d.csum[idx]):
        free(buf)
        disk_drop_bad(d, idx, seq)
        return -1
    if note == CN_HIT:
        e.freq = 0                   # racy on purpose, as cache_lookup's count
    if not cache_lock(rt):
        free(buf)
        return -1
    st = cache_insert(rt, buf, total, &meta, &evicted)
    cache_unlock(rt)
    free(buf)
    if evicted:
        cache_count(&rt.st.evicted, evicted)
    if st != 0:
        return -1
    if note == CN_STALE:
        return -2
    cache_count(&d.st.hit, 1)        # its bytes go from memory: the memory's hit_bytes count them
    note = cache_lookup(rt, key, n, hash, b, r, auth, now_ms, max_age, min_fresh, &meta, &idx, &stale_seq, max_stale)
    if note != CN_HIT:
        return -1
    cache_hit_from_disk = True
    st = cache_hit(w, h, b, r, rt, &meta, idx, now_ms)
    cache_hit_from_disk = False
    return st


cdef uint32_t disk_remove_hash(lb_cache_rt *d, uint64_t hash) noexcept nogil:
    """Invalidation reaches the disk: every entry of the key goes. The
    bucket is looked at first without the lock (most keys are not there)."""
    cdef uint32_t link = lb_acquire_u32(&d.buckets[hash & (d.hd.n_buckets - 1)]), k = 0, n
    cdef bint there = False
    while link and k < CACHE_CHAIN_MAX and link - 1 < d.hd.n_entries:
        if lb_load_u64(&ce_at(d, link - 1).hash) == hash:
            there = True
            break
        link = lb_load_u32(&ce_at(d, link - 1).chain)
        k += 1
    if not there or not cache_lock(d):
        return 0
    n = cache_remove_hash(d, hash)
    cache_unlock(d)
    if n and d.st != NULL:
        cache_count(&d.st.invalidated, n)
    return n


cdef uint64_t disk_rebuild(lb_cache_rt *d, uint64_t *dropped) noexcept nogil:
    """At open, before any worker maps it, or under its lock once a worker
    died holding it (readers then see a chain change under them at worst:
    a miss; entries that stay keep their seq and bytes): keep the entries that are whole
    (published, their blocks in range, each block theirs alone, their sizes
    agreeing with their blocks) and build the index, the queues and the free
    stacks again from them. Checksums are checked as entries are read (a
    hit's copy); this pass reads the index only, not the objects. Returns
    the entries kept."""
    cdef shm_cache_head *hd = d.hd
    cdef uint32_t nb = hd.n_blocks, ne = hd.n_entries, i, b, k, need
    cdef uint8_t *used = <uint8_t *>calloc(nb // 8 + 1, 1)
    cdef shm_cache_entry *e
    cdef uint64_t total, kept = 0
    cdef bint ok
    if used == NULL:
        return 0
    for i in range(hd.n_buckets):
        d.buckets[i] = 0
    for i in range(hd.n_ghost):
        d.ghost[i] = 0
    memset(d.fills, 0, CACHE_FILLS * sizeof(shm_cache_fill))
    hd.small_head = hd.small_tail = hd.main_head = hd.main_tail = 0
    hd.small_blocks = hd.main_blocks = 0
    hd.free_entries = 0
    hd.objects = 0
    hd.bytes = 0
    hd.small_cap = nb // 10 if nb >= 10 else 1
    for i in range(ne):
        e = ce_at(d, i)
        total = ce_total(e)
        need = <uint32_t>((total + CACHE_BLOCK - 1) // CACHE_BLOCK) if total else 1
        ok = (e.state == CE_LIVE and not (e.seq & 1) and e.key_len > 0 and e.n_blocks == need
              and e.n_blocks <= nb)
        if ok:
            b = e.first
            k = 0
            while k < e.n_blocks:
                if b >= nb or used[b >> 3] & (1 << (b & 7)):
                    ok = False
                    break
                used[b >> 3] |= <uint8_t>(1 << (b & 7))
                b = d.next[b]
                k += 1
            if ok and b != CACHE_NONE:
                ok = False
            if not ok:
                # give back the blocks marked before the bad link
                b = e.first
                while k:
                    used[b >> 3] &= <uint8_t>~(1 << (b & 7))
                    b = d.next[b]
                    k -= 1
        if ok:
            e.chain = d.buckets[e.hash & (hd.n_buckets - 1)]
            d.buckets[e.hash & (hd.n_buckets - 1)] = i + 1
            e.freq = 0
            q_push(d, i, CQ_MAIN)
            hd.objects += 1
            hd.bytes += total
            kept += 1
        else:
            if e.state == CE_LIVE:
                dropped[0] += 1
            e.seq = (e.seq | 1) + 1
            e.state = CE_FREE
            e.chain = 0
            e.queue = 0
            e.q_prev = e.q_next = 0
    # free entries: the highest index on top, as cache_reset leaves them
    i = ne
    while i:
        i -= 1
        if ce_at(d, i).state != CE_LIVE:
            d.estack[hd.free_entries] = i
            hd.free_entries += 1
    hd.free_blocks = 0
    b = nb
    while b:
        b -= 1
        if not (used[b >> 3] & (1 << (b & 7))):
            d.bstack[hd.free_blocks] = b
            hd.free_blocks += 1
    free(used)
    return kept


def disk_layout(uint64_t file_size):
    """(off_csum, off_region, region_size) of a disk tier's file."""
    cdef uint64_t page = 4096
    cdef uint64_t n = file_size // CACHE_BLOCK     # more entries than the region can have
    cdef uint64_t csum = (n * 8 + page - 1) // page * page
    return DISK_HEAD, DISK_HEAD + csum, file_size - DISK_HEAD - csum


cdef class DiskTier:
    """A cache's disk tier: its file, opened and checked by the supervisor
    (which holds an exclusive flock on it while lb runs), mapped whole,
    inherited by the workers. `region` is a CacheShm over the region inside
    the file: purge, entries, stats work on it as on the memory one."""

    cdef char *base
    cdef readonly uint64_t size
    cdef readonly str path
    cdef int fd
    cdef public CacheShm region
    cdef uint64_t *csum
    cdef uint32_t *verified          # anonymous, shared with the workers by fork: each entry's seq last checked good
    cdef size_t verified_size
    cdef readonly uint64_t kept      # entries found whole at open
    cdef readonly uint64_t dropped   # entries dropped at open
    cdef readonly str opened         # "new", "kept", or why it was made anew

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)
        if self.verified != NULL:
            munmap(self.verified, self.verified_size)
        if self.fd >= 0:
            close(self.fd)

    @staticmethod
    def open(str path, uint64_t size, uint64_t max_object, double wait=DISK_LOCK_WAIT):
        """Open (or make) the file at path of size bytes. A file from another
        format or geometry, or whose header is damaged, is made anew (and
        said so in `opened`); else its whole entries are kept. wait: seconds
        to wait for another process's lock on it."""
        cdef DiskTier self = DiskTier.__new__(DiskTier)
        cdef shm_disk_head *dh
        cdef shm_cache_head *hd
        cdef uint64_t dropped = 0
        self.fd = -1
        self.path = path
        off_csum, off_region, region_size = disk_layout(size)
        nb, ne, nbk, ng, total = cache_layout(region_size)
        fd = _os.open(path, _os.O_RDWR | _os.O_CREAT | _os.O_CLOEXEC, 0o600)
        self.fd = fd
        # the workers inherit the lock with the mapping: a new lb waits for
        # the last process of the one before it (still draining, say), never
        # writes the file beside it
        deadline = _time.monotonic() + wait
        while True:
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if _time.monotonic() > deadline:
                    raise OSError(f"{path} is the disk tier of another running lb") from None
                _time.sleep(0.05)
        have = _os.fstat(fd).st_size
        why = "new" if have == 0 else ""
        if have != size:
            why = why or f"its size was {have} bytes, not {size}"
            _os.ftruncate(fd, 0)
            _os.ftruncate(fd, size)
        # every block backed now: a full disk later would be a SIGBUS in a worker
        try:
            _os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (_errno.EOPNOTSUPP, _errno.EINVAL):
                raise                    # ENOSPC: the filesystem has not the room
        # (a filesystem without fallocate: the file stays sparse)
        cdef void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, "cannot map the disk tier", path)
        self.base = <char *>p
        self.size = size
        dh = <shm_disk_head *>p
        hd = <shm_cache_head *>(self.base + <uint64_t>off_region)
        if not why:
            if dh.magic != DISK_MAGIC or dh.version != DISK_VERSION:
                why = "another format"
            elif dh.cache_version != CACHE_VERSION or dh.block != CACHE_BLOCK or hd.version != CACHE_VERSION \
                    or hd.magic != CACHE_MAGIC:
                why = "another format of its region"
            elif (dh.file_size != size or dh.off_csum != off_csum or dh.off_region != off_region
                  or dh.region_size != region_size or hd.total_size != total or hd.n_blocks != nb
                  or hd.n_entries != ne or hd.n_buckets != nbk or hd.n_ghost != ng):
                why = "another geometry"
        self.region = CacheShm.__new__(CacheShm)
        self.region.borrowed = True
        self.region.path = path
        self.region.requested = region_size
        self.csum = <uint64_t *>(self.base + <uint64_t>off_csum)
        if not why:
            # the offsets must be the ones this lb computes, not whatever the file says
            why = self._check_offsets(hd, region_size)
        if why:
            memset(self.base, 0, DISK_HEAD)
            self.region._init(self.base + <uint64_t>off_region, region_size, max_object, 0)
            memset(self.csum, 0, <uint64_t>off_region - <uint64_t>off_csum)
            dh.magic = DISK_MAGIC
            dh.version = DISK_VERSION
            dh.cache_version = CACHE_VERSION
            dh.block = CACHE_BLOCK
            dh.file_size = size
            dh.off_csum = off_csum
            dh.off_region = off_region
            dh.region_size = region_size
            dh.created_ms = int(_time.time() * 1000)
            self.opened = why
        else:
            self.region.base = self.base + <uint64_t>off_region
            self.region.size = total
            cache_rt_map(&self.region.rt, self.region.base)
            cache_keycfg_init(&self.region.rt.key, None)   # the default key until set_key
            hd.max_object = max_object
            hd.lock = 0                  # whoever held it is gone: we hold the flock
            self.kept = disk_rebuild(&self.region.rt, &dropped)
            self.dropped = dropped
            self.opened = "kept" if dh.clean else "kept after an unclean stop"
            # counters count from this start, as the memory tier's do
            memset(self.region.base + hd.off_rows, 0, CACHE_ROWS * sizeof(shm_cache_stats))
        self.verified_size = max(4, <size_t>self.region.rt.hd.n_entries * 4)
        cdef void *v = mmap(NULL, self.verified_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if v == MAP_FAILED:
            raise OSError(errno, "cannot map the disk tier's checks", path)
        self.verified = <uint32_t *>v
        self.region.rt.pid = <uint32_t>getpid()
        self.region.rt.csum = self.csum
        self.region.rt.verified = self.verified
        self.region.rt.st = (<shm_cache_stats *>(self.region.base + hd.off_rows)) + (CACHE_ROWS - 1)
        dh.generation += 1
        dh.clean = 0
        msync(self.base, DISK_HEAD, MS_SYNC)
        return self

    cdef str _check_offsets(self, shm_cache_head *hd, uint64_t region_size):
        """Offsets as CacheShm._init lays them out for this size: "" when the
        file's are those."""
        cdef uint64_t off = _line(sizeof(shm_cache_head))
        cdef uint64_t want[8]
        want[0] = off
        off += _line(CACHE_ROWS * sizeof(shm_cache_stats))
        want[1] = off
        off += _line(CACHE_FILLS * sizeof(shm_cache_fill))
        want[2] = off
        off += _line(<uint64_t>hd.n_buckets * 4)
        want[3] = off
        off += _line(<uint64_t>hd.n_entries * sizeof(shm_cache_entry))
        want[4] = off
        off += _line(<uint64_t>hd.n_blocks * 4) * 2
        want[5] = off
        off += _line(<uint64_t>hd.n_entries * 4)
        want[6] = off
        off += _line(<uint64_t>hd.n_ghost * 8)
        want[7] = off
        if (hd.off_rows != want[0] or hd.off_fills != want[1] or hd.off_buckets != want[2]
                or hd.off_entries != want[3] or hd.off_next != want[4] or hd.off_estack != want[5]
                or hd.off_ghost != want[6] or hd.off_blocks != want[7]
                or hd.off_bstack != want[4] + _line(<uint64_t>hd.n_blocks * 4)
                or hd.off_blocks + <uint64_t>hd.n_blocks * CACHE_BLOCK > region_size):
            return "another layout of its region"
        return ""

    def attach(self, CacheShm memory):
        """Make it the disk tier of a memory region (the supervisor's view:
        purge, flush)."""
        memory.disk = self
        memory.rt.disk = &self.region.rt

    def flush(self, CacheShm memory):
        """A clean stop, no worker left: what the memory tier holds and the
        disk does not is written to it. Returns how many were."""
        cdef lb_cache_rt *rt = &memory.rt
        cdef shm_cache_head *hd = rt.hd
        cdef uint32_t i
        cdef uint64_t before = self.region.stats()["stored"]
        rt.pid = <uint32_t>getpid()
        rt.disk = &self.region.rt
        self.region.rt.pid = rt.pid
        # a lock still held belongs to a worker killed in the middle of a
        # change: that tier is not to be trusted as it is (the disk is
        # checked again at the next open)
        if lb_load_u32(&hd.lock) != 0 or lb_load_u32(&self.region.rt.hd.lock) != 0 or not cache_lock(rt):
            return 0
        try:
            with nogil:
                for i in range(hd.n_entries):
                    if rt.entries[i].state == CE_LIVE:
                        cache_demote(rt, i)
        finally:
            cache_unlock(rt)
        return self.region.stats()["stored"] - before

    def close(self):
        """A clean stop: the file is written out and marked so."""
        cdef shm_disk_head *dh
        if self.base == NULL:
            return
        msync(self.base, self.size, MS_SYNC)
        dh = <shm_disk_head *>self.base
        dh.clean = lb_load_u32(&self.region.rt.hd.lock) == 0
        msync(self.base, DISK_HEAD, MS_SYNC)

    def stats(self):
        st = self.region.stats()
        return {"path": self.path, "size": self.size, "objects": st["objects"], "bytes": st["bytes"],
                "capacity": st["capacity"], "hit": st["hit"], "hit_bytes": st["hit_bytes"],
                "demoted": st["stored"], "evicted": st["evicted"], "invalidated": st["invalidated"],
                "purged": st["purged"], "dropped": st["not_stored"], "resets": st["resets"]}

    def purge(self, str url="", str prefix="", str tag=""):
        return self.region.purge(url, prefix, tag)

    def reap(self, uint32_t pid):
        """A process died: if it held the lock, the entry it was changing is
        dropped and the index built again from the whole entries, under the
        lock, as at a start (the memory tier is emptied instead: the disk is
        worth keeping). (kept, dropped), or None when it did not hold it."""
        cdef uint32_t expected = pid
        cdef uint64_t dropped = 0, kept
        cdef lb_cache_rt *rt = &self.region.rt
        rt.pid = <uint32_t>getpid()
        if pid == 0 or not lb_cas_u32(&rt.hd.lock, &expected, rt.pid):
            return None
        with nogil:
            kept = disk_rebuild(rt, &dropped)
        cache_unlock(rt)
        return kept, dropped

    def lock_as(self, uint32_t pid):
        """Tests: leave the lock as a process that died holding it would."""
        lb_store_u32(&self.region.rt.hd.lock, pid)

    @property
    def seed(self):
        return self.region.rt.hd.seed


cdef int cache_disk_worker_init(lb_cache_rt *rt, object disk, uint32_t row) except -1:
    """A worker's view of its cache's disk tier (rt: the memory one's)."""
    cdef DiskTier dt = <DiskTier>disk
    cdef lb_cache_rt *d = <lb_cache_rt *>calloc(1, sizeof(lb_cache_rt))
    if d == NULL:
        raise MemoryError()
    cache_rt_map(d, dt.region.base)
    d.st = (<shm_cache_stats *>(dt.region.base + d.hd.off_rows)) + (row % CACHE_ROWS)
    d.pid = rt.pid
    d.csum = dt.csum
    d.verified = dt.verified
    rt.disk = d
    return 0
