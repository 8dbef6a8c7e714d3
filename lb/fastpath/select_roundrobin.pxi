# roundrobin: smooth weighted round robin (nginx's algorithm), per worker.
#
# Each pick adds every candidate's weight to its running score, takes the highest
# and subtracts the sum of weights from it. Over any window of sum(weights) picks
# each backend gets exactly its share, spread out (5,1,1 gives a a b a c a a, not
# a a a a a b c). Backups are considered only when no primary is a candidate.
# The state is reset when the pool's generation changes (weights or set changed).

cdef int32_t rr_pick(lb_worker *w, lb_pool_rt *p, lb_conn *c, uint64_t key) noexcept nogil:
    cdef uint32_t first = p.shm.first_slot
    cdef uint32_t n = lb_load_u32(&p.shm.n_slots)
    cdef uint32_t gen = lb_acquire_u32(&p.shm.generation)
    cdef uint32_t i
    cdef int64_t total, weight
    cdef int32_t best
    cdef uint8_t backup
    if gen != p.rr_generation:
        memset(p.rr_current, 0, p.shm.capacity * sizeof(int64_t))
        p.rr_generation = gen
    for backup in range(2):
        total = 0
        best = -1
        for i in range(n):
            if not slot_candidate(w, c, first + i, backup):
                continue
            weight = lb_load_u32(&w.backends[first + i].eff_weight)
            p.rr_current[i] += weight
            total += weight
            if best < 0 or p.rr_current[i] > p.rr_current[best]:
                best = i
        if best >= 0:
            p.rr_current[best] -= total
            return first + best
    return -1


cdef lb_ops OPS_ROUNDROBIN
OPS_ROUNDROBIN.pick = rr_pick
OPS_ROUNDROBIN.take = NULL
OPS_ROUNDROBIN.drop = NULL
