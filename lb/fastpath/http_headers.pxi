# Header rules: the fields a listener's and a route's rules set, add and remove.
# Two steps choose which rule sets a message gets (request phase: the request's;
# response phase: the response's); the head rewrite applies them as it copies
# the head, in one pass. Later sets win: a route's rule for a name replaces the
# listener's.

cdef bint rules_drop(lb_hrules *r, const uint8_t *name, uint32_t n) noexcept nogil:
    """The field is removed or replaced by these rules."""
    cdef uint32_t i
    for i in range(r.n_remove):
        if ieq_str(name, n, &r.remove[i]):
            return True
    for i in range(r.n_set):
        if ieq_str(name, n, &r.set_lower[i]):
            return True
    return False


cdef bint rulesets_drop(lb_hrules **sets, uint32_t n_sets, const uint8_t *name, uint32_t n) noexcept nogil:
    """Any of the sets removes or replaces the field."""
    cdef uint32_t k
    for k in range(n_sets):
        if rules_drop(sets[k], name, n):
            return True
    return False


cdef inline bint rulesets_claim(lb_hrules **sets, uint32_t n_sets, const char *lit) noexcept nogil:
    """Header rules that set or remove one of the forwarding fields replace what
    lb would send (set X-Forwarded-Proto = "https" behind a TLS terminator)."""
    return rulesets_drop(sets, n_sets, <const uint8_t *>lit, strlen(lit))


cdef bint rulesets_later(lb_hrules **sets, uint32_t start, uint32_t n_sets, const char *lower) noexcept nogil:
    """A set from `start` on sets or removes the field: its rule for that name
    replaces an earlier set's."""
    cdef uint32_t j, k
    for k in range(start, n_sets):
        for j in range(sets[k].n_set):
            if strcmp(sets[k].set_lower[j].p, lower) == 0:
                return True
        for j in range(sets[k].n_remove):
            if strcmp(sets[k].remove[j].p, lower) == 0:
                return True
    return False


cdef bint rulesets_emit(lb_hbuf *o, lb_hrules **sets, uint32_t n_sets) noexcept nogil:
    """The fields the sets set and add, in order. A name a later set sets or
    removes is left to that set."""
    cdef uint32_t i, k
    cdef lb_hrules *r
    for k in range(n_sets):
        r = sets[k]
        for i in range(r.n_set):
            if rulesets_later(sets, k + 1, n_sets, r.set_lower[i].p):
                continue
            if not ob_field(o, r.set_name[i].p, r.set_name[i].n, r.set_value[i].p, r.set_value[i].n):
                return False
        for i in range(r.n_add):
            if not ob_field(o, r.add_name[i].p, r.add_name[i].n, r.add_value[i].p, r.add_value[i].n):
                return False
    return True


cdef inline bint rules_any(lb_hrules *r) noexcept nogil:
    return r.n_set != 0 or r.n_add != 0 or r.n_remove != 0


cdef inline void rulesets_push(lb_hrules **sets, uint8_t *n_sets, lb_hrules *r) noexcept nogil:
    """Add a set that has rules (the steps that push are few and fixed: the
    arrays hold MAX_RULESETS)."""
    if rules_any(r):
        sets[n_sets[0]] = r
        n_sets[0] += 1


cdef int step_request_headers(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Request phase: the listener's request rules, then the route's."""
    rulesets_push(h.rq_rules, &h.n_rq_rules, &h.hl.req)
    if h.route >= 0:
        rulesets_push(h.rq_rules, &h.n_rq_rules, &h.hl.routes[h.route].req)
    return STEP_CONTINUE


cdef int step_response_headers(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Response phase: the TLS listener's own fields (HSTS), the listener's
    response rules, then the route's."""
    cdef lb_tls_server *t = w.listeners[h.c.listener].tls
    if t != NULL:
        rulesets_push(h.rs_rules, &h.n_rs_rules, &t.resp)
    rulesets_push(h.rs_rules, &h.n_rs_rules, &h.hl.resp)
    if h.route >= 0:
        rulesets_push(h.rs_rules, &h.n_rs_rules, &h.hl.routes[h.route].resp)
    return STEP_CONTINUE


def _has_rules(listener, which):
    """The listener or one of its routes has header rules for `which` (request_headers, response_headers)."""
    rules = [getattr(listener.http, which)] + [getattr(rt, which) for rt in listener.routes]
    return any(r.set or r.add or r.remove for r in rules)


def wants_request_headers(listener):
    return listener.mode == "http" and _has_rules(listener, "request_headers")


def wants_response_headers(listener):
    return listener.mode == "http" and (_has_rules(listener, "response_headers")
                                        or (listener.tls is not None and bool(listener.tls.hsts)))
