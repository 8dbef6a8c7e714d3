# leastconn: weighted least connections over the whole instance.
#
# A backend's load is (active + 1) / weight, with active summed over every
# worker's counter row, so workers balance together, not each on its own. The
# +1 counts the connection being placed, which makes a weight-3 backend take
# three connections for a weight-1 backend's one from an idle start. Ties go to
# the first candidate after a per-worker rotating cursor, so an idle pool is
# spread round robin rather than all on slot 0.

cdef int32_t lc_pick(lb_worker *w, lb_pool_rt *p, lb_conn *c, uint64_t key) noexcept nogil:
    cdef uint32_t first = p.shm.first_slot
    cdef uint32_t n = lb_load_u32(&p.shm.n_slots)
    cdef uint32_t k, i, start
    cdef int64_t load, weight, best_load = 0, best_weight = 1
    cdef int32_t best
    cdef uint8_t backup
    if n == 0:
        return -1
    start = p.rr_cursor % n
    p.rr_cursor += 1
    for backup in range(2):
        best = -1
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            if not slot_candidate(w, c, first + i, backup):
                continue
            load = slot_active_all(w, first + i) + 1
            weight = lb_load_u32(&w.backends[first + i].eff_weight)
            # load/weight < best_load/best_weight, without division
            if best < 0 or load * best_weight < best_load * weight:
                best = i
                best_load = load
                best_weight = weight
        if best >= 0:
            return first + best
    return -1


cdef lb_ops OPS_LEASTCONN
OPS_LEASTCONN.pick = lc_pick
OPS_LEASTCONN.take = NULL
OPS_LEASTCONN.drop = NULL
