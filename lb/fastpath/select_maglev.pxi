# maglev: weighted Maglev (Eisenbud et al., NSDI 2016) with Envoy's weighted
# turns, and bounded loads (Mirrokni, Thorup, Zadimoghaddam). docs/selection.md
# is the exact rule. The supervisor builds tables (maglev_fill) into the inactive
# half of a double buffer and flips table_gen; workers only read.

cdef int mg_entry_cmp(const void *a, const void *b) noexcept nogil:
    # bytewise, as strcmp compares unsigned chars: the UTF-8 order of the names
    return strcmp((<mg_entry *>a).name, (<mg_entry *>b).name)


cdef uint64_t maglev_fill(mg_entry *e, uint32_t n, uint32_t M, uint16_t *table) noexcept nogil:
    """Fill table[M] with the ids of entries e[n] (any order on entry; sorted by
    name here). Returns the sum of the weights entered (W of bounded loads)."""
    cdef uint32_t i
    cdef uint64_t filled = 0, iteration = 1, maxw = 0, total = 0, pos, skip
    cdef size_t len
    cdef uint64_t *taken
    memset(table, 0xff, M * sizeof(uint16_t))
    if n == 0 or M == 0:
        return 0
    # Probes look at this bitmap, not the table: M bits stay in L1 where M
    # uint16 entries would not (65537 slots: 8 KiB against 128 KiB).
    taken = <uint64_t *>calloc(M // 64 + 1, sizeof(uint64_t))
    if taken == NULL:
        return 0
    qsort(e, n, sizeof(mg_entry), mg_entry_cmp)
    for i in range(n):
        len = strlen(e[i].name)
        e[i].offset = lb_xxh64(e[i].name, len, 0) % M
        e[i].skip = lb_xxh64(e[i].name, len, 1) % (M - 1) + 1 if M > 1 else 1
        e[i].pos = e[i].offset
        e[i].target = 0
        total += e[i].weight
        if e[i].weight > maxw:
            maxw = e[i].weight
    if maxw == 0:
        free(taken)
        return 0
    while True:
        for i in range(n):
            # weighted turns: an entry of weight maxw/k takes a slot every k-th turn
            if iteration * e[i].weight < e[i].target:
                continue
            e[i].target += maxw
            pos = e[i].pos
            skip = e[i].skip
            while taken[pos >> 6] & (<uint64_t>1 << (pos & 63)):
                pos += skip
                if pos >= M:
                    pos -= M
            taken[pos >> 6] |= <uint64_t>1 << (pos & 63)
            table[pos] = <uint16_t>e[i].id
            pos += skip
            if pos >= M:
                pos -= M
            e[i].pos = pos
            filled += 1
            if filled == M:
                free(taken)
                return total
        iteration += 1


cdef inline bint maglev_full(lb_worker *w, int32_t slot, int64_t bound_num, uint64_t bound_den) noexcept nogil:
    """Bounded loads: full when active + 1 > ceil(C * (A+1) * weight / (1000 * W))."""
    cdef uint64_t weight = lb_load_u32(&w.backends[slot].eff_weight)
    cdef uint64_t bound = (<uint64_t>bound_num * weight + bound_den - 1) // bound_den
    return <uint64_t>(slot_active_all(w, slot) + 1) > bound


cdef inline int32_t maglev_walk(lb_worker *w, shm_pool *sp, uint16_t *table, uint32_t pos, lb_conn *c,
                                bint bounded, int64_t bound_num, uint64_t bound_den) noexcept nogil:
    """The first hashable, untried (and, bounded, not full) entry from pos on."""
    cdef uint32_t M = sp.table_size
    cdef uint32_t capacity = sp.capacity
    cdef uint32_t step, id
    cdef int32_t slot
    for step in range(M):
        id = table[pos]
        if id < capacity:
            slot = sp.first_slot + id
            if (backend_hashable(&w.backends[slot]) and not conn_tried(c, slot)
                    and not (bounded and maglev_full(w, slot, bound_num, bound_den))):
                return slot
        pos += 1
        if pos == M:
            pos = 0
    return -1


cdef int32_t maglev_pick(lb_worker *w, lb_pool_rt *p, lb_conn *c, uint64_t key) noexcept nogil:
    cdef shm_pool *sp = p.shm
    cdef uint32_t M = sp.table_size
    cdef uint32_t g
    cdef uint16_t *table
    cdef int32_t found
    cdef uint64_t W, bound_den = 0
    cdef int64_t bound_num = 0
    cdef bint bounded = sp.balance_milli != 0
    if M == 0:
        return -1
    while True:
        g = lb_acquire_u32(&sp.table_gen)
        table = <uint16_t *>(w.base + sp.table_off) + (g & 1) * M
        if bounded:
            W = sp.table_weight[g & 1]
            bound_num = <int64_t>sp.balance_milli * (pool_active_all(w, p) + 1)
            bound_den = 1000 * W
            if bound_den == 0:
                bounded = False
        found = maglev_walk(w, sp, table, key % M, c, bounded, bound_num, bound_den)
        if found < 0 and bounded:
            # every entry full: only while weights changed since the build (W is
            # the build's); placing beyond the bound beats refusing the client
            found = maglev_walk(w, sp, table, key % M, c, False, 0, 0)
        # a flip during the walk may have torn what we read: walk again
        lb_fence_acquire()
        if lb_load_u32(&sp.table_gen) == g:
            return found


cdef lb_ops OPS_MAGLEV
OPS_MAGLEV.pick = maglev_pick
OPS_MAGLEV.take = NULL
OPS_MAGLEV.drop = NULL
