# Top talkers: the heaviest clients and paths, and the statuses, over a
# sliding window, counted by each worker into its own row of the top_talkers
# region (shm_top_row) and merged by the supervisor (`lb top --by`).
#
# Clients and paths are unbounded sets, so each epoch keeps a Space-Saving
# sketch (Metwally et al.) of TOP_K entries: a key already in it counts up;
# a new key takes the place of the smallest entry and inherits its count as
# its error bound. Any key seen more than 1/TOP_K of the epoch's requests is
# in it, and the counts the heaviest keys show are within `error` of the
# truth. Statuses are few: an exact counter each.
#
# Two epochs of TOP_EPOCH_S seconds, by monotonic time: a worker clears the
# older one when the clock enters a new epoch, a reader sums the current one
# and the one before, skipping a sketch whose epoch changed while it read.

cdef inline uint64_t top_epoch(lb_worker *w) noexcept nogil:
    return w.now_us // (<uint64_t>TOP_EPOCH_S * 1000000)


cdef shm_top_sketch *top_sketch(shm_top_sketch *pair, uint64_t epoch) noexcept nogil:
    """The sketch of this epoch, cleared if it held an older one."""
    cdef shm_top_sketch *s = &pair[epoch & 1]
    if lb_load_u64(&s.epoch) != epoch:
        lb_store_u64(&s.epoch, 0)    # readers skip it while it is cleared
        lb_fence_release()
        memset(s.e, 0, sizeof(s.e))
        lb_release_u64(&s.epoch, epoch)
    return s


cdef void top_count(shm_top_sketch *s, uint64_t hash, const char *key, uint32_t n, uint8_t family) noexcept nogil:
    cdef uint32_t i, low = 0
    cdef shm_top_entry *e
    if hash == 0:
        hash = 1                     # 0 marks a free entry
    for i in range(TOP_K):
        e = &s.e[i]
        if e.hash == hash:
            lb_store_u64(&e.count, e.count + 1)
            return
        if e.hash == 0:
            low = i
            break
        if e.count < s.e[low].count:
            low = i
    # a new key: the smallest entry's place, its count as this key's error
    e = &s.e[low]
    if n > TOP_KEY_MAX:
        n = TOP_KEY_MAX
    lb_store_u64(&e.hash, 0)         # a reader skips a free entry rather than read a half-written key
    lb_fence_release()
    e.error = e.count
    memcpy(e.key, key, n)
    e.len = <uint8_t>n
    e.family = family
    lb_store_u64(&e.count, e.count + 1)
    lb_release_u64(&e.hash, hash)


cdef inline void top_path(lb_worker *w, const uint8_t *target, uint32_t n) noexcept nogil:
    """A request head was parsed: its path (without the query) counts."""
    cdef const uint8_t *q
    if w.top == NULL:
        return
    q = <const uint8_t *>memchr(target, 63, n)      # '?'
    if q != NULL:
        n = <uint32_t>(q - target)
    top_count(top_sketch(w.top.paths, top_epoch(w)), lb_xxh64(target, n, 0x70617468), <const char *>target, n, 0)


cdef void top_end(lb_worker *w, lb_conn *c) noexcept nogil:
    """The end of an exchange: its client and its status count."""
    cdef uint64_t epoch
    cdef const char *addr
    cdef uint32_t n
    cdef uint8_t family
    cdef shm_top_row *t = w.top
    if t == NULL:
        return
    epoch = top_epoch(w)
    if c.peer.ss_family == AF_INET6:
        addr = <const char *>(<sockaddr_in6 *>&c.peer).sin6_addr.s6_addr
        n = 16
        family = AF_INET6
    else:
        addr = <const char *>&(<sockaddr_in *>&c.peer).sin_addr.s_addr
        n = 4
        family = AF_INET
    top_count(top_sketch(t.clients, epoch), lb_xxh64(addr, n, 0x636c6e74), addr, n, family)
    if 100 <= c.lg.status < 100 + TOP_STATUSES:
        if lb_load_u64(&t.status_epoch[epoch & 1]) != epoch:
            lb_store_u64(&t.status_epoch[epoch & 1], 0)
            lb_fence_release()
            memset(t.status[epoch & 1], 0, sizeof(t.status[0]))
            lb_release_u64(&t.status_epoch[epoch & 1], epoch)
        lb_add_u64(&t.status[epoch & 1][c.lg.status - 100], 1)


cdef int top_worker_init(lb_worker *w, Shm shm, uint32_t row) except -1:
    w.top = <shm_top_row *>shm.region_addr("top_talkers") + row
    return 0


TOP_EPOCH_SECONDS = TOP_EPOCH_S
assert sizeof(shm_top_entry) == 112
assert sizeof(shm_top_sketch) % 64 == 0 and sizeof(shm_top_row) % 64 == 0


# ---- the reader (the supervisor: `lb top --by`) ------------------------------------------

def top_talkers(Shm shm, str by, uint64_t now_us, uint32_t n=20):
    """The n heaviest keys of `by` ("client", "path" or "status") over the
    current epoch and the one before, summed over the worker rows:
    [(key, count, error)], heaviest first, and the window's epochs."""
    cdef shm_top_row *rows = <shm_top_row *>shm.region_addr("top_talkers")
    cdef uint64_t epoch = now_us // (<uint64_t>TOP_EPOCH_S * 1000000)
    cdef uint64_t ep, h
    cdef shm_top_sketch *s
    cdef shm_top_entry *e
    cdef uint32_t row, half, i
    if by not in ("client", "path", "status"):
        raise ValueError(f"by {by!r}: client, path or status")
    totals = {}
    for row in range(shm.hdr.n_rows):
        for half in range(2):
            if by == "status":
                ep = lb_acquire_u64(&rows[row].status_epoch[half])
                if ep == 0 or ep + 1 < epoch or ep > epoch:
                    continue
                counts = [lb_load_u64(&rows[row].status[half][i]) for i in range(TOP_STATUSES)]
                lb_fence_acquire()
                if lb_load_u64(&rows[row].status_epoch[half]) != ep:
                    continue
                for i in range(TOP_STATUSES):
                    if counts[i]:
                        k = str(100 + i)
                        c, err = totals.get(k, (0, 0))
                        totals[k] = (c + counts[i], err)
                continue
            s = &rows[row].clients[half] if by == "client" else &rows[row].paths[half]
            ep = lb_acquire_u64(&s.epoch)
            if ep == 0 or ep + 1 < epoch or ep > epoch:
                continue
            seen = []
            for i in range(TOP_K):
                e = &s.e[i]
                h = lb_acquire_u64(&e.hash)
                if h == 0:
                    continue
                raw = e.key[:min(e.len, TOP_KEY_MAX)]
                family = e.family
                count, err = lb_load_u64(&e.count), e.error
                lb_fence_acquire()
                if lb_load_u64(&e.hash) != h:
                    continue
                if by == "client":
                    key = _socket.inet_ntop(family, raw) if family in (AF_INET, AF_INET6) else raw.hex()
                else:
                    key = raw.decode("latin-1")
                seen.append((key, count, err))
            lb_fence_acquire()
            if lb_load_u64(&s.epoch) != ep:
                continue
            for key, count, err in seen:
                c, er = totals.get(key, (0, 0))
                totals[key] = (c + count, er + err)
    items = sorted(((k, c, er) for k, (c, er) in totals.items()), key=lambda x: (-x[1], x[0]))
    return items[:n]
