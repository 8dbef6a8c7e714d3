# The body_limit step (request phase, http): max_body_size of the listener, or
# of the route that matched (a route's own value wins, 0 there lifts the
# limit). A Content-Length over it is refused at once with 413, before a
# backend is chosen. A chunked body is counted as it streams: each chunk's size
# line is added up as it is read (chunk_advance), and the chunk that would take
# the body over the limit is refused (413) before any of its bytes go on; what
# the backend got before it is cut off with the connection.

cdef int step_body_limit(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    cdef uint64_t limit = h.hl.max_body
    if h.route >= 0 and h.hl.routes[h.route].max_body >= 0:
        limit = <uint64_t>h.hl.routes[h.route].max_body
    h.body_max = limit
    h.body_seen = 0
    if limit and r.content_length > 0 and <uint64_t>r.content_length > limit:
        return 413
    return STEP_CONTINUE


def wants_body_limit(listener):
    return listener.mode == "http" and bool(
        listener.http.max_body_size or any(route.max_body_size for route in listener.routes))
