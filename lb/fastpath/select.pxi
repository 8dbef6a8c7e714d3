# Backend selection: what every algorithm shares, and the table of hooks.
#
# An algorithm is one file (select_<name>.pxi) defining its lb_ops. A pick reads
# the shared backend table without locking: weight, admin and health are single
# words, and a slot becomes in_use only after its address was published.

cdef inline bint backend_usable(shm_backend *b) noexcept nogil:
    return (lb_load_u8(&b.in_use) != 0
            and lb_load_u8(&b.admin) == ADMIN_READY
            and lb_load_u8(&b.health) == HEALTH_UP
            and lb_load_u32(&b.eff_weight) > 0)


cdef inline bint slot_usable(lb_worker *w, int32_t slot) noexcept nogil:
    return backend_usable(&w.backends[slot])


cdef inline bint backend_hashable(shm_backend *b) noexcept nogil:
    """What hashing may send to: like usable, but a draining backend still takes
    the flows that hash to it (HAProxy's drain: persistent traffic finishes)."""
    cdef uint8_t admin = lb_load_u8(&b.admin)
    return (lb_load_u8(&b.in_use) != 0
            and (admin == ADMIN_READY or admin == ADMIN_DRAIN)
            and lb_load_u8(&b.health) == HEALTH_UP
            and lb_load_u32(&b.eff_weight) > 0)


cdef inline bint conn_tried(lb_conn *c, int32_t slot) noexcept nogil:
    cdef int i
    for i in range(c.tries):
        if c.tried[i] == slot:
            return True
    return False


cdef inline bint slot_candidate(lb_worker *w, lb_conn *c, int32_t slot, uint8_t backup) noexcept nogil:
    """Usable, of the wanted kind (primary or backup), and not yet tried by c."""
    return (slot_usable(w, slot)
            and lb_load_u8(&w.backends[slot].backup) == backup
            and not conn_tried(c, slot))


cdef inline int64_t slot_active_all(lb_worker *w, int32_t slot) noexcept nogil:
    """Active connections to a backend summed over every worker's row."""
    cdef int64_t total = 0
    cdef uint32_t r
    cdef uint32_t n_slots = w.hdr.n_slots
    for r in range(w.n_rows):
        total += lb_load_i64(&w.bstats_all[<uint64_t>r * n_slots + slot].active)
    return total


cdef inline int64_t pool_active_all(lb_worker *w, lb_pool_rt *p) noexcept nogil:
    cdef int64_t total = 0
    cdef uint32_t r
    for r in range(w.n_rows):
        total += lb_load_i64(&w.pstats_all[<uint64_t>r * w.hdr.n_pools + p.index].active)
    return total


cdef inline uint64_t rng_next(lb_worker *w) noexcept nogil:
    return lb_splitmix64(&w.rng)


cdef void cand_refresh(lb_worker *w, lb_pool_rt *p) noexcept nogil:
    """Cache the candidates of a pick that has tried nothing yet: the usable
    primaries in slot order, or else the usable backups. Valid until the pool's
    generation changes (every weight, state or set change bumps it)."""
    cdef uint32_t gen = lb_acquire_u32(&p.shm.generation)
    cdef uint32_t first = p.shm.first_slot
    cdef uint32_t n = lb_load_u32(&p.shm.n_slots)
    cdef uint32_t i
    cdef uint64_t total
    cdef uint8_t backup
    if gen == p.cand_generation:
        return
    p.n_cand = 0
    for backup in range(2):
        total = 0
        for i in range(n):
            if slot_usable(w, first + i) and lb_load_u8(&w.backends[first + i].backup) == backup:
                total += lb_load_u32(&w.backends[first + i].eff_weight)
                p.cand[p.n_cand] = first + i
                p.cand_cum[p.n_cand] = total
                p.n_cand += 1
        if p.n_cand:
            break
    p.cand_generation = gen


cdef uint64_t conn_key_hash(lb_conn *c, uint32_t hash_key) noexcept nogil:
    """The hash of a connection's key (docs/selection.md): the client address
    bytes for source_ip, followed by the port (network order) for source_addr."""
    cdef uint8_t key[18]
    cdef size_t n
    cdef sockaddr_in *sin
    cdef sockaddr_in6 *sin6
    if hash_key == HK_NONE:
        return 0
    if c.peer.ss_family == AF_INET6:
        sin6 = <sockaddr_in6 *>&c.peer
        memcpy(key, sin6.sin6_addr.s6_addr, 16)
        memcpy(key + 16, &sin6.sin6_port, 2)
        n = 16
    else:
        sin = <sockaddr_in *>&c.peer
        memcpy(key, &sin.sin_addr.s_addr, 4)
        memcpy(key + 4, &sin.sin_port, 2)
        n = 4
    if hash_key == HK_SOURCE_ADDR:
        n += 2
    return lb_xxh64(key, n, 0)
