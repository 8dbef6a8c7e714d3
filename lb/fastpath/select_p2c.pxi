# p2c: the power of two random choices (Mitzenmacher) on weighted active
# connections: two distinct random candidates, the less loaded one wins. Nearly
# leastconn's balance at O(1) per pick, and without herding every worker onto
# the same "least" backend between counter updates.

cdef inline int32_t p2c_better(lb_worker *w, int32_t a, int32_t b) noexcept nogil:
    """a unless (active(b)+1)/w(b) < (active(a)+1)/w(a)."""
    cdef int64_t la = slot_active_all(w, a) + 1
    cdef int64_t lb_ = slot_active_all(w, b) + 1
    cdef int64_t wa = lb_load_u32(&w.backends[a].eff_weight)
    cdef int64_t wb = lb_load_u32(&w.backends[b].eff_weight)
    if lb_ * wa < la * wb:
        return b
    return a


cdef int32_t p2c_nth_candidate(lb_worker *w, lb_pool_rt *p, lb_conn *c, uint8_t backup, uint64_t nth) noexcept nogil:
    cdef uint32_t first = p.shm.first_slot
    cdef uint32_t n = lb_load_u32(&p.shm.n_slots)
    cdef uint32_t i
    for i in range(n):
        if slot_candidate(w, c, first + i, backup):
            if nth == 0:
                return first + i
            nth -= 1
    return -1


cdef int32_t p2c_pick_slow(lb_worker *w, lb_pool_rt *p, lb_conn *c) noexcept nogil:
    cdef uint32_t first = p.shm.first_slot
    cdef uint32_t n = lb_load_u32(&p.shm.n_slots)
    cdef uint32_t i
    cdef uint64_t k, a, b
    cdef uint8_t backup
    for backup in range(2):
        k = 0
        for i in range(n):
            if slot_candidate(w, c, first + i, backup):
                k += 1
        if k == 0:
            continue
        if k == 1:
            return p2c_nth_candidate(w, p, c, backup, 0)
        a = rng_next(w) % k
        b = (a + 1 + rng_next(w) % (k - 1)) % k
        return p2c_better(w, p2c_nth_candidate(w, p, c, backup, a), p2c_nth_candidate(w, p, c, backup, b))
    return -1


cdef int32_t p2c_pick(lb_worker *w, lb_pool_rt *p, lb_conn *c, uint64_t key) noexcept nogil:
    cdef uint64_t k, a, b
    if c.tries != 0:
        return p2c_pick_slow(w, p, c)
    cand_refresh(w, p)
    k = p.n_cand
    if k == 0:
        return -1
    if k == 1:
        return p.cand[0]
    a = rng_next(w) % k
    b = (a + 1 + rng_next(w) % (k - 1)) % k
    return p2c_better(w, p.cand[a], p.cand[b])


cdef lb_ops OPS_P2C
OPS_P2C.pick = p2c_pick
OPS_P2C.take = NULL
OPS_P2C.drop = NULL
