# Routing a parsed request, the first step of the request phase: the first
# route whose host, path, method and header match, else the listener's pool.
# It reads the parsed head in place.

# ---- routing ----------------------------------------------------------------------

cdef void req_host_path(const uint8_t *b, http_req *r, uint32_t *hoff, uint32_t *hlen,
                        uint32_t *poff, uint32_t *plen) noexcept nogil:
    """The request's host (without port; from Host, or the absolute-form target)
    and path (the target up to "?")."""
    cdef uint32_t t = r.target_off, tn = r.target_len, i, s
    hoff[0] = 0
    hlen[0] = 0
    poff[0] = t
    plen[0] = tn
    if tn and b[t] != 47 and b[t] != 42:
        # absolute-form: scheme "://" authority path
        i = 0
        while i < tn and b[t + i] != 58:
            i += 1
        i += 3
        s = i
        while i < tn and b[t + i] != 47 and b[t + i] != 63:
            i += 1
        hoff[0] = t + s
        hlen[0] = i - s
        poff[0] = t + i
        plen[0] = tn - i
    elif r.host >= 0:
        hoff[0] = r.fields[r.host].value_off
        hlen[0] = r.fields[r.host].value_len
    # the port is not part of the name
    if hlen[0] and b[hoff[0]] != 91:
        for i in range(hlen[0]):
            if b[hoff[0] + i] == 58:
                hlen[0] = i
                break
    elif hlen[0]:
        for i in range(hlen[0]):
            if b[hoff[0] + i] == 93:
                hlen[0] = i + 1
                break
    for i in range(plen[0]):
        if b[poff[0] + i] == 63:
            plen[0] = i
            break


cdef bint route_host_matches(lb_route *rt, const uint8_t *name, uint32_t n) noexcept nogil:
    """The route's host is the name (exact, without regard to case), or a
    wildcard the name is a subdomain of. Also the SNI routes of tls_passthrough."""
    cdef uint32_t i
    if not rt.host_wild:
        return ieq_str(name, n, &rt.host)
    # "*.example.com" (stored ".example.com"): a subdomain, not the bare name
    if n <= rt.host.n:
        return False
    for i in range(rt.host.n):
        if lower(name[n - rt.host.n + i]) != <uint8_t>rt.host.p[i]:
            return False
    return True


cdef bint route_matches(lb_route *rt, const uint8_t *b, http_req *r, uint32_t hoff, uint32_t hlen,
                        uint32_t poff, uint32_t plen) noexcept nogil:
    cdef uint32_t i, j
    cdef const uint8_t *m
    cdef bint found
    if rt.host.n and not route_host_matches(rt, b + hoff, hlen):
        return False
    if rt.path.n:
        if rt.path_exact:
            if plen != rt.path.n or memcmp(b + poff, rt.path.p, plen) != 0:
                return False
        elif plen < rt.path.n or memcmp(b + poff, rt.path.p, rt.path.n) != 0:
            return False
    if rt.methods.n:
        # methods are stored " GET POST ": look for " METHOD "
        m = <const uint8_t *>rt.methods.p
        found = False
        for i in range(rt.methods.n - r.method_len - 1 if rt.methods.n > r.method_len + 1 else 0):
            if m[i] == 32 and m[i + 1 + r.method_len] == 32 and memcmp(m + i + 1, b + r.method_off, r.method_len) == 0:
                found = True
                break
        if not found:
            return False
    if rt.header.n:
        found = False
        for i in range(r.n_fields):
            if ieq_str(b + r.fields[i].name_off, r.fields[i].name_len, &rt.header):
                if not rt.has_header_value or (r.fields[i].value_len == rt.header_value.n and memcmp(
                        b + r.fields[i].value_off, rt.header_value.p, rt.header_value.n) == 0):
                    found = True
                    break
        if not found:
            return False
    return True


cdef int32_t route_pick(lb_http_listener *hl, const uint8_t *b, http_req *r, int32_t *route) noexcept nogil:
    """The pool of the first matching route, else the listener's; -1: none (404)."""
    cdef uint32_t hoff, hlen, poff, plen, i
    req_host_path(b, r, &hoff, &hlen, &poff, &plen)
    for i in range(hl.n_routes):
        if route_matches(&hl.routes[i], b, r, hoff, hlen, poff, plen):
            route[0] = i
            return hl.routes[i].pool
    route[0] = -1
    return hl.pool


cdef int step_route(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Request phase: the route (h.route; its settings apply to the steps after
    this one) and the pool; 404 when neither a route nor the listener has one."""
    cdef int32_t pool = route_pick(h.hl, b, r, &h.route)
    if pool < 0:
        return 404
    h.c.pool = pool
    return STEP_CONTINUE
