# Request phases: the fixed, ordered steps between a parsed request head and the
# backend exchange, and after it (nginx's phases, Envoy's filter chain, HAProxy's
# filters). Each step lives in its feature's topic file behind one entry point
# and returns STEP_CONTINUE, STEP_ANSWERED (it answered the request itself), or
# the status lb answers with through its error path (403, 401, 429, ...).
#
#   phase     runs                                  its steps, in order
#   accept    tcp and http, at accept,              address rules (acl), connection limits (tcp)
#             before a byte is read; on an
#             accept_proxy listener, once the
#             PROXY header gave the client's address
#   request   http, on each request head            route (which route's settings apply: it comes
#                                                   first), client certificate fields, access
#                                                   rules, authentication, rate limits, body
#                                                   limit, cache lookup, split, header rules
#   response  http, on each final response head     cache store, header rules
#   (end: the cache's state of the exchange is freed after the limits')
#   end       once per http exchange and per tcp    metrics, requests in flight given back
#             connection, however it ended          (limits), the record for logs
#
# The tables below are the one order of each phase. A step joins a listener's
# phase only when that listener's config asks for its feature (the predicate
# beside it), so a listener without the feature pays nothing for it.


cdef inline int phase_accept(lb_worker *w, lb_listener_rt *l, lb_conn *c) noexcept nogil:
    cdef uint32_t i
    cdef int rc
    for i in range(l.phases.n_accept):
        rc = l.phases.accept[i](w, c)
        if rc != STEP_CONTINUE:
            return rc
    return STEP_CONTINUE


cdef inline int phase_head(lb_head_step *steps, uint32_t n, lb_worker *w, lb_hconn *h, http_req *r,
                           const uint8_t *b) noexcept nogil:
    cdef uint32_t i
    cdef int rc
    for i in range(n):
        rc = steps[i](w, h, r, b)
        if rc != STEP_CONTINUE:
            return rc
    return STEP_CONTINUE


cdef inline int phase_request(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b,
                              uint32_t start=0) noexcept nogil:
    """The request steps from `start` on (0; a parked request goes on from
    the step after the one that parked it)."""
    cdef lb_phases *ph = &w.listeners[h.c.listener].phases
    cdef uint32_t i
    cdef int rc
    for i in range(start, ph.n_request):
        rc = ph.request[i](w, h, r, b)
        if rc != STEP_CONTINUE:
            if rc == STEP_PARKED:
                h.park_step = <uint8_t>(i + 1)
            elif rc != STEP_ANSWERED:
                # the access log names the step that refused (its index in phase_plan)
                h.c.lg.term = TERM_REFUSED
                h.c.lg.step = <uint8_t>(i + 1)
            return rc
    return STEP_CONTINUE


cdef inline int phase_response(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    cdef lb_phases *ph = &w.listeners[h.c.listener].phases
    return phase_head(ph.response, ph.n_response, w, h, r, b)


cdef inline void phase_end(lb_worker *w, lb_conn *c) noexcept nogil:
    cdef lb_phases *ph = &w.listeners[c.listener].phases
    cdef uint32_t i
    for i in range(ph.n_end):
        ph.end[i](w, c)


# ---- the steps of each phase, in order (set-up: Python, at start) ------------------

def _http(listener):
    return listener.mode == "http"


# (name, entry point, wanted by a listener: its config.Listener -> bool)
ACCEPT_STEPS = (
    ("acl", <size_t><void *>step_acl, wants_acl),
    ("limits_accept", <size_t><void *>step_limits_accept, wants_limits_accept),
)
REQUEST_STEPS = (
    ("route", <size_t><void *>step_route, _http),
    ("client_cert", <size_t><void *>step_client_cert, wants_client_cert),
    ("acl_route", <size_t><void *>step_acl_route, wants_acl_route),
    ("auth", <size_t><void *>step_auth, wants_auth),
    ("limits", <size_t><void *>step_limits, wants_limits),
    ("body_limit", <size_t><void *>step_body_limit, wants_body_limit),
    ("cache", <size_t><void *>step_cache, wants_cache),
    ("split", <size_t><void *>step_split, wants_split),
    ("mirror", <size_t><void *>step_mirror, wants_mirror),
    ("request_headers", <size_t><void *>step_request_headers, wants_request_headers),
)
RESPONSE_STEPS = (
    ("cache_store", <size_t><void *>step_cache_store, wants_cache_store),
    ("response_headers", <size_t><void *>step_response_headers, wants_response_headers),
)
END_STEPS = (
    ("metrics", <size_t><void *>step_metrics, wants_metrics),
    ("limits_release", <size_t><void *>step_limits_release, wants_limits_release),
    ("cache_end", <size_t><void *>step_cache_end, wants_cache_end),
    ("log", <size_t><void *>step_log, wants_log),
)
PHASES = (("accept", ACCEPT_STEPS), ("request", REQUEST_STEPS), ("response", RESPONSE_STEPS), ("end", END_STEPS))


def phase_plan(listener):
    """The steps a listener (a config.Listener) runs, by phase, in order."""
    return {phase: [name for name, _, wanted in steps if wanted(listener)] for phase, steps in PHASES}


def _entries(steps, listener):
    entries = [fn for _, fn, wanted in steps if wanted(listener)]
    if len(entries) > MAX_STEPS:
        raise ValueError(f"listener {listener.name!r}: more than {MAX_STEPS} steps in one phase")
    return entries


cdef int phases_init(lb_phases *ph, object listener) except -1:
    memset(ph, 0, sizeof(lb_phases))
    for fn in _entries(ACCEPT_STEPS, listener):
        ph.accept[ph.n_accept] = <lb_conn_step><void *><size_t>fn
        ph.n_accept += 1
    for fn in _entries(REQUEST_STEPS, listener):
        ph.request[ph.n_request] = <lb_head_step><void *><size_t>fn
        ph.n_request += 1
    for fn in _entries(RESPONSE_STEPS, listener):
        ph.response[ph.n_response] = <lb_head_step><void *><size_t>fn
        ph.n_response += 1
    for fn in _entries(END_STEPS, listener):
        ph.end[ph.n_end] = <lb_end_step><void *><size_t>fn
        ph.n_end += 1
    return 0
