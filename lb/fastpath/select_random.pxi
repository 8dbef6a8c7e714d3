# random: weighted random (docs/selection.md). A pick that has tried nothing
# uses the cached candidates and their cumulative weights: one draw and a binary
# search. A retry walks the remaining candidates, which gives the same answer
# the spec defines over "candidates not yet tried".

cdef int32_t random_pick_slow(lb_worker *w, lb_pool_rt *p, lb_conn *c) noexcept nogil:
    cdef uint32_t first = p.shm.first_slot
    cdef uint32_t n = lb_load_u32(&p.shm.n_slots)
    cdef uint32_t i
    cdef uint64_t total, r, cum
    cdef uint8_t backup
    for backup in range(2):
        total = 0
        for i in range(n):
            if slot_candidate(w, c, first + i, backup):
                total += lb_load_u32(&w.backends[first + i].eff_weight)
        if total == 0:
            continue
        r = rng_next(w) % total
        cum = 0
        for i in range(n):
            if slot_candidate(w, c, first + i, backup):
                cum += lb_load_u32(&w.backends[first + i].eff_weight)
                if cum > r:
                    return first + i
    return -1


cdef int32_t random_pick(lb_worker *w, lb_pool_rt *p, lb_conn *c, uint64_t key) noexcept nogil:
    cdef uint32_t lo, n, half
    cdef uint64_t r
    if c.tries != 0:
        return random_pick_slow(w, p, c)
    cand_refresh(w, p)
    if p.n_cand == 0:
        return -1
    r = rng_next(w) % p.cand_cum[p.n_cand - 1]
    # the first candidate whose cumulative weight is > r: a branchless binary
    # search (the compiler makes the step a conditional move; random r would
    # mispredict half of a branchy search's steps)
    lo = 0
    n = p.n_cand
    while n > 1:
        half = n >> 1
        if p.cand_cum[lo + half - 1] <= r:
            lo += half
        n -= half
    return p.cand[lo]


cdef lb_ops OPS_RANDOM
OPS_RANDOM.pick = random_pick
OPS_RANDOM.take = NULL
OPS_RANDOM.drop = NULL
