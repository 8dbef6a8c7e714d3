# Backend selection: what every algorithm shares, and the table of hooks.
#
# An algorithm is one file (select_<name>.pxi) defining its lb_ops. A pick reads
# the shared backend table without locking: weight, admin and health are single
# words, and a slot becomes in_use only after its address was published.

cdef inline bint slot_usable(lb_worker *w, int32_t slot) noexcept nogil:
    cdef shm_backend *b = &w.backends[slot]
    return (lb_load_u8(&b.in_use) != 0
            and lb_load_u8(&b.admin) == ADMIN_READY
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


cdef int32_t pick_none(lb_worker *w, lb_pool_rt *p, lb_conn *c) noexcept nogil:
    return -1
