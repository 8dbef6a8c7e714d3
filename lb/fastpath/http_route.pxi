# Routing a parsed request, the keys it hashes on, and rewriting heads on their
# way through. Everything reads the parsed head in place (offsets into the input
# buffer) and writes straight into the output buffer: no copies of fields.

from libc.string cimport memmove, memcmp

cdef enum:
    HBUF_SIZE = 65536                # http buffers: a whole head (at most 32 KiB) plus room to rewrite it
    MAX_CONN_TOKENS = 16             # field names a Connection header may list

# http hash keys (lb_http_pool.hk_kind)
cdef enum:
    HKH_L4 = 0                       # the pool's L4 key (source_ip, source_addr) or none
    HKH_PATH = 1
    HKH_HEADER = 2
    HKH_COOKIE = 3
    HKH_QUERY = 4

# request methods that matter to the proxy
cdef enum:
    MT_OTHER = 0                     # not idempotent: never sent twice
    MT_IDEMPOTENT = 1                # GET, PUT, DELETE, OPTIONS, TRACE
    MT_HEAD = 2                      # idempotent, and its response has no body


cdef inline bint ob_put(lb_hbuf *o, const void *s, size_t n) noexcept nogil:
    """Append to an output buffer (bytes live at p[off:off+len]). False: no room."""
    if o.off + o.len + n > HBUF_SIZE:
        if o.len + n > HBUF_SIZE:
            return False
        memmove(o.p, o.p + o.off, o.len)
        o.off = 0
    memcpy(o.p + o.off + o.len, s, n)
    o.len += n
    return True


cdef inline bint ob_str(lb_hbuf *o, const char *s) noexcept nogil:
    return ob_put(o, s, strlen(s))


cdef inline bint ob_field(lb_hbuf *o, const void *name, size_t nlen, const void *value, size_t vlen) noexcept nogil:
    return ob_put(o, name, nlen) and ob_put(o, b": ", 2) and ob_put(o, value, vlen) and ob_put(o, b"\r\n", 2)


cdef inline bint name_is(const uint8_t *b, http_field *f, const char *lower_lit) noexcept nogil:
    return ieq(b + f.name_off, f.name_len, lower_lit)


cdef bint ieq_str(const uint8_t *a, uint32_t n, lb_str *s) noexcept nogil:
    """a[:n] equals the lower-case s, ignoring ASCII case."""
    cdef uint32_t i
    if n != s.n:
        return False
    for i in range(n):
        if lower(a[i]) != <uint8_t>s.p[i]:
            return False
    return True


cdef bint rules_drop(lb_hrules *r, const uint8_t *name, uint32_t n) noexcept nogil:
    """The field is removed or replaced by these rules."""
    cdef uint32_t i
    if r == NULL:
        return False
    for i in range(r.n_remove):
        if ieq_str(name, n, &r.remove[i]):
            return True
    for i in range(r.n_set):
        if ieq_str(name, n, &r.set_lower[i]):
            return True
    return False


cdef bint rules_emit(lb_hbuf *o, lb_hrules *r, lb_hrules *later) noexcept nogil:
    """The fields rules set and add. A name the later rules set too is left to them."""
    cdef uint32_t i, j
    cdef bint shadowed
    if r == NULL:
        return True
    for i in range(r.n_set):
        shadowed = False
        if later != NULL:
            for j in range(later.n_set):
                if strcmp(later.set_lower[j].p, r.set_lower[i].p) == 0:
                    shadowed = True
        if not shadowed and not ob_field(o, r.set_name[i].p, r.set_name[i].n, r.set_value[i].p, r.set_value[i].n):
            return False
    for i in range(r.n_add):
        if not ob_field(o, r.add_name[i].p, r.add_name[i].n, r.add_value[i].p, r.add_value[i].n):
            return False
    return True


cdef bint hop_by_hop(const uint8_t *name, uint32_t n) noexcept nogil:
    """Fields that describe one connection, not the message (RFC 9110 7.6.1).
    Transfer-Encoding is not among them here: the proxy forwards chunked bodies
    as they are, so the framing field goes with them."""
    return (ieq(name, n, b"connection") or ieq(name, n, b"keep-alive") or ieq(name, n, b"proxy-connection")
            or ieq(name, n, b"te") or ieq(name, n, b"trailer") or ieq(name, n, b"upgrade"))


cdef uint32_t conn_tokens(const uint8_t *b, http_req *r, uint32_t *offs, uint32_t *lens) noexcept nogil:
    """The field names listed in Connection headers (they are hop-by-hop too)."""
    cdef uint32_t i, pos, off, len, k = 0
    for i in range(r.n_fields):
        if name_is(b, &r.fields[i], b"connection"):
            pos = 0
            while k < MAX_CONN_TOKENS and http_list_next(b + r.fields[i].value_off, r.fields[i].value_len,
                                                         &pos, &off, &len):
                offs[k] = r.fields[i].value_off + off
                lens[k] = len
                k += 1
    return k


cdef bint conn_listed(const uint8_t *b, const uint8_t *name, uint32_t n, uint32_t k,
                      uint32_t *offs, uint32_t *lens) noexcept nogil:
    cdef uint32_t i, j
    for i in range(k):
        if lens[i] != n:
            continue
        for j in range(n):
            if lower(b[offs[i] + j]) != lower(name[j]):
                break
        else:
            return True
    return False


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


cdef bint route_matches(lb_route *rt, const uint8_t *b, http_req *r, uint32_t hoff, uint32_t hlen,
                        uint32_t poff, uint32_t plen) noexcept nogil:
    cdef uint32_t i, j
    cdef const uint8_t *m
    cdef bint found
    if rt.host.n:
        if rt.host_wild:
            # "*.example.com" (stored ".example.com"): a subdomain, not the bare name
            if hlen <= rt.host.n:
                return False
            for i in range(rt.host.n):
                if lower(b[hoff + hlen - rt.host.n + i]) != <uint8_t>rt.host.p[i]:
                    return False
        elif not ieq_str(b + hoff, hlen, &rt.host):
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


# ---- hash keys ------------------------------------------------------------------------

cdef bint cookie_next(const uint8_t *v, uint32_t n, uint32_t *p, uint32_t *s, uint32_t *e,
                      uint32_t *eq) noexcept nogil:
    """The next cookie of a Cookie value from v[p[0]]: the pair is v[s:e] (OWS
    trimmed) and its "=" at eq (eq == e: none). False at the end."""
    cdef uint32_t q = p[0], a, z, k
    while True:
        while q < n and (v[q] == 32 or v[q] == 9 or v[q] == 59):
            q += 1
        if q >= n:
            p[0] = q
            return False
        a = q
        while q < n and v[q] != 59:
            q += 1
        z = q
        while z > a and (v[z - 1] == 32 or v[z - 1] == 9):
            z -= 1
        if z == a:
            continue
        k = a
        while k < z and v[k] != 61:
            k += 1
        p[0] = q
        s[0] = a
        e[0] = z
        eq[0] = k
        return True


cdef inline bint cookie_named(const uint8_t *v, uint32_t s, uint32_t e, uint32_t eq, lb_str *name) noexcept nogil:
    return eq < e and eq - s == name.n and memcmp(v + s, name.p, name.n) == 0


cdef bint cookie_find(const uint8_t *b, http_req *r, lb_str *name, uint32_t *voff, uint32_t *vlen) noexcept nogil:
    """The value of cookie `name` in the request's Cookie fields."""
    cdef uint32_t i, p, s, e, eq
    cdef const uint8_t *v
    for i in range(r.n_fields):
        if not name_is(b, &r.fields[i], b"cookie"):
            continue
        v = b + r.fields[i].value_off
        p = 0
        while cookie_next(v, r.fields[i].value_len, &p, &s, &e, &eq):
            if cookie_named(v, s, e, eq, name):
                voff[0] = r.fields[i].value_off + eq + 1
                vlen[0] = e - eq - 1
                return True
    return False


cdef bint query_find(const uint8_t *b, http_req *r, lb_str *name, uint32_t *voff, uint32_t *vlen) noexcept nogil:
    cdef uint32_t t = r.target_off, n = r.target_len, p = 0, s, e, eq
    while p < n and b[t + p] != 63:
        p += 1
    p += 1
    while p < n:
        s = p
        while p < n and b[t + p] != 38 and b[t + p] != 35:
            p += 1
        e = p
        eq = s
        while eq < e and b[t + eq] != 61:
            eq += 1
        if eq - s == name.n and memcmp(b + t + s, name.p, name.n) == 0:
            voff[0] = t + eq + 1 if eq < e else t + e
            vlen[0] = e - eq - 1 if eq < e else 0
            return True
        if p < n and b[t + p] == 35:
            break
        p += 1
    return False


cdef uint64_t http_key_hash(lb_pool_rt *p, lb_conn *c, const uint8_t *b, http_req *r) noexcept nogil:
    """The hash a request is balanced by (docs/selection.md): the named part of
    the request, or the client address when the request does not carry it."""
    cdef lb_http_pool *hp = p.http
    cdef uint32_t off = 0, len = 0, i, hoff, hlen
    cdef bint found = False
    if hp.hk_kind == HKH_L4:
        return conn_key_hash(c, p.shm.hash_key)
    if hp.hk_kind == HKH_PATH:
        req_host_path(b, r, &hoff, &hlen, &off, &len)
        found = True
    elif hp.hk_kind == HKH_HEADER:
        for i in range(r.n_fields):
            if ieq_str(b + r.fields[i].name_off, r.fields[i].name_len, &hp.hk_name):
                off = r.fields[i].value_off
                len = r.fields[i].value_len
                found = True
                break
    elif hp.hk_kind == HKH_COOKIE:
        found = cookie_find(b, r, &hp.hk_name, &off, &len)
    elif hp.hk_kind == HKH_QUERY:
        found = query_find(b, r, &hp.hk_name, &off, &len)
    if not found:
        return conn_key_hash(c, HK_SOURCE_IP)
    return lb_xxh64(b + off, len, 0)


cdef uint8_t method_kind(const uint8_t *m, uint32_t n) noexcept nogil:
    if ieq_exact(m, n, b"GET") or ieq_exact(m, n, b"PUT") or ieq_exact(m, n, b"DELETE") \
            or ieq_exact(m, n, b"OPTIONS") or ieq_exact(m, n, b"TRACE"):
        return MT_IDEMPOTENT
    if ieq_exact(m, n, b"HEAD"):
        return MT_HEAD
    return MT_OTHER


# ---- sticky sessions --------------------------------------------------------------

cdef void sticky_refresh(lb_worker *w, lb_pool_rt *p) noexcept nogil:
    """The cookie value of every backend of the pool: a keyed hash of its name,
    so the cookie names no address; rebuilt when the pool's backend set changes."""
    cdef lb_http_pool *hp = p.http
    cdef uint32_t gen = lb_acquire_u32(&p.shm.generation), i
    cdef shm_backend *be
    if gen == hp.sticky_generation:
        return
    for i in range(lb_load_u32(&p.shm.n_slots)):
        be = &w.backends[p.shm.first_slot + i]
        hp.sticky_ids[i] = lb_xxh64(be.name, strlen(be.name), hp.sticky_seed) if lb_load_u8(&be.in_use) else 0
    hp.sticky_generation = gen


cdef int32_t sticky_lookup(lb_worker *w, lb_pool_rt *p, const uint8_t *b, http_req *r) noexcept nogil:
    """The backend the request's sticky cookie names, when it may take it; else -1."""
    cdef uint32_t off, len, i
    cdef uint64_t v = 0
    cdef int d
    if not cookie_find(b, r, &p.http.sticky, &off, &len) or len != 16:
        return -1
    for i in range(16):
        d = hexval(b[off + i])
        if d < 0:
            return -1
        v = (v << 4) | <uint64_t>d
    sticky_refresh(w, p)
    for i in range(lb_load_u32(&p.shm.n_slots)):
        if p.http.sticky_ids[i] == v and v != 0:
            if backend_hashable(&w.backends[p.shm.first_slot + i]):
                return p.shm.first_slot + i
            return -1
    return -1


cdef bint sticky_emit(lb_worker *w, lb_pool_rt *p, lb_hbuf *o, int32_t slot) noexcept nogil:
    cdef char hexv[16]
    cdef uint64_t v
    cdef int i
    sticky_refresh(w, p)
    v = p.http.sticky_ids[slot - p.shm.first_slot]
    for i in range(16):
        hexv[15 - i] = b"0123456789abcdef"[v & 15]
        v >>= 4
    return (ob_str(o, b"Set-Cookie: ") and ob_put(o, p.http.sticky.p, p.http.sticky.n) and ob_put(o, b"=", 1)
            and ob_put(o, hexv, 16) and ob_str(o, b"; Path=/; HttpOnly\r\n"))


# ---- rewriting heads --------------------------------------------------------------

cdef bint put_cookie_without(lb_hbuf *o, const uint8_t *b, http_field *f, lb_str *name) noexcept nogil:
    """A Cookie field without the pair named `name` (lb's sticky cookie is for
    lb, not the application: HAProxy's "indirect"); no field when nothing is left."""
    cdef const uint8_t *v = b + f.value_off
    cdef uint32_t p = 0, s, e, eq
    cdef bint first = True
    while cookie_next(v, f.value_len, &p, &s, &e, &eq):
        if cookie_named(v, s, e, eq, name):
            continue
        if not (ob_str(o, b"Cookie: " if first else b"; ") and ob_put(o, v + s, e - s)):
            return False
        first = False
    return first or ob_put(o, b"\r\n", 2)


cdef inline bint rules_claim(lb_http_listener *hl, lb_hrules *rreq, const char *lit) noexcept nogil:
    """Header rules that set or remove one of the forwarding fields replace what
    lb would send (set X-Forwarded-Proto = "https" behind a TLS terminator)."""
    return (rules_drop(&hl.req, <const uint8_t *>lit, strlen(lit))
            or rules_drop(rreq, <const uint8_t *>lit, strlen(lit)))


cdef bint rewrite_request(lb_hconn *h, const uint8_t *b, http_req *r, lb_route *rt, uint8_t to_version,
                          lb_str *sticky) noexcept nogil:
    """The head sent to the backend, into h.upb."""
    cdef lb_hbuf *o = &h.upb
    cdef lb_http_listener *hl = h.hl
    cdef uint32_t offs[MAX_CONN_TOKENS]
    cdef uint32_t lens[MAX_CONN_TOKENS]
    cdef uint32_t k = conn_tokens(b, r, offs, lens), i
    cdef int32_t xff_first = -1, fwd_first = -1
    cdef http_field *f
    cdef const uint8_t *name
    cdef lb_hrules *rreq = &rt.req if rt != NULL else NULL
    if not (ob_put(o, b + r.method_off, r.method_len) and ob_put(o, b" ", 1)
            and ob_put(o, b + r.target_off, r.target_len)
            and ob_str(o, b" HTTP/1.1\r\n" if to_version == 11 else b" HTTP/1.0\r\n")):
        return False
    for i in range(r.n_fields):
        f = &r.fields[i]
        name = b + f.name_off
        if hop_by_hop(name, f.name_len):
            if not (h.upgrade and ieq(name, f.name_len, b"upgrade")):
                continue
        elif k and conn_listed(b, name, f.name_len, k, offs, lens) and not ieq(name, f.name_len, b"transfer-encoding"):
            continue
        if hl.xfwd:
            if ieq(name, f.name_len, b"x-forwarded-for"):
                if xff_first < 0:
                    xff_first = i
                continue
            if ieq(name, f.name_len, b"x-forwarded-proto") or ieq(name, f.name_len, b"x-forwarded-host"):
                continue
        if hl.fwd and ieq(name, f.name_len, b"forwarded"):
            if fwd_first < 0:
                fwd_first = i
            continue
        if rules_drop(&hl.req, name, f.name_len) or rules_drop(rreq, name, f.name_len):
            continue
        if sticky.n and ieq(name, f.name_len, b"cookie"):
            if not put_cookie_without(o, b, f, sticky):
                return False
            continue
        # "name:", the OWS as sent, and the value, in one copy
        if not (ob_put(o, name, f.value_off + f.value_len - f.name_off) and ob_put(o, b"\r\n", 2)):
            return False
    if h.upgrade and not ob_str(o, b"Connection: upgrade\r\n"):
        return False
    if not (rules_emit(o, &hl.req, rreq) and rules_emit(o, rreq, NULL)):
        return False
    if hl.xfwd and not rules_claim(hl, rreq, b"x-forwarded-for"):
        if not ob_str(o, b"X-Forwarded-For: "):
            return False
        if xff_first >= 0:
            for i in range(xff_first, r.n_fields):
                f = &r.fields[i]
                if ieq(b + f.name_off, f.name_len, b"x-forwarded-for") and f.value_len:
                    if not (ob_put(o, b + f.value_off, f.value_len) and ob_put(o, b", ", 2)):
                        return False
        if not (ob_put(o, h.ip, h.ip_len) and ob_put(o, b"\r\n", 2)):
            return False
    if hl.xfwd and not rules_claim(hl, rreq, b"x-forwarded-proto"):
        if not ob_str(o, b"X-Forwarded-Proto: http\r\n"):
            return False
    if hl.xfwd and not rules_claim(hl, rreq, b"x-forwarded-host"):
        if r.host >= 0 and r.fields[r.host].value_len:
            if not ob_field(o, b"X-Forwarded-Host", 16, b + r.fields[r.host].value_off, r.fields[r.host].value_len):
                return False
    if hl.fwd and not rules_claim(hl, rreq, b"forwarded"):
        if not ob_str(o, b"Forwarded: "):
            return False
        if fwd_first >= 0:
            for i in range(fwd_first, r.n_fields):
                f = &r.fields[i]
                if ieq(b + f.name_off, f.name_len, b"forwarded") and f.value_len:
                    if not (ob_put(o, b + f.value_off, f.value_len) and ob_put(o, b", ", 2)):
                        return False
        # RFC 7239: an IPv6 node is quoted and bracketed; a host with a port is quoted
        if h.c.peer.ss_family == AF_INET6:
            if not (ob_str(o, b"for=\"[") and ob_put(o, h.ip, h.ip_len) and ob_str(o, b"]\"")):
                return False
        elif not (ob_str(o, b"for=") and ob_put(o, h.ip, h.ip_len)):
            return False
        if r.host >= 0 and r.fields[r.host].value_len:
            if not (ob_str(o, b";host=\"") and ob_put(o, b + r.fields[r.host].value_off, r.fields[r.host].value_len)
                    and ob_str(o, b"\"")):
                return False
        if not ob_str(o, b";proto=http\r\n"):
            return False
    return ob_put(o, b"\r\n", 2)


cdef bint rewrite_response(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r) noexcept nogil:
    """The head sent to the client, into h.outb."""
    cdef lb_hbuf *o = &h.outb
    cdef lb_http_listener *hl = h.hl
    cdef lb_route *rt = &hl.routes[h.route] if h.route >= 0 else NULL
    cdef lb_hrules *rresp = &rt.resp if rt != NULL else NULL
    cdef uint32_t offs[MAX_CONN_TOKENS]
    cdef uint32_t lens[MAX_CONN_TOKENS]
    cdef uint32_t k = conn_tokens(b, r, offs, lens), i
    cdef http_field *f
    cdef const uint8_t *name
    cdef char code[4]
    cdef bint final = r.status >= 200
    code[0] = <char>(48 + r.status // 100)
    code[1] = <char>(48 + (r.status // 10) % 10)
    code[2] = <char>(48 + r.status % 10)
    code[3] = 32
    if not (ob_str(o, b"HTTP/1.1 ") and ob_put(o, code, 4) and ob_put(o, b + r.reason_off, r.reason_len)
            and ob_put(o, b"\r\n", 2)):
        return False
    for i in range(r.n_fields):
        f = &r.fields[i]
        name = b + f.name_off
        if hop_by_hop(name, f.name_len):
            if not (r.status == 101 and ieq(name, f.name_len, b"upgrade")):
                continue
        elif k and conn_listed(b, name, f.name_len, k, offs, lens) and not ieq(name, f.name_len, b"transfer-encoding"):
            continue
        if final:
            if hl.hide_server and ieq(name, f.name_len, b"server"):
                continue
            if rules_drop(&hl.resp, name, f.name_len) or rules_drop(rresp, name, f.name_len):
                continue
        if not (ob_put(o, name, f.name_len) and ob_put(o, b": ", 2) and ob_put(o, b + f.value_off, f.value_len)
                and ob_put(o, b"\r\n", 2)):
            return False
    if r.status == 101:
        if not ob_str(o, b"Connection: upgrade\r\n"):
            return False
    elif final:
        if not (rules_emit(o, &hl.resp, rresp) and rules_emit(o, rresp, NULL)):
            return False
        if h.set_sticky and not sticky_emit(w, &w.pools[h.c.pool], o, h.c.slot):
            return False
        if not h.client_ka:
            if not ob_str(o, b"Connection: close\r\n"):
                return False
        elif h.version == 10 and not ob_str(o, b"Connection: keep-alive\r\n"):
            return False
    return ob_put(o, b"\r\n", 2)


# ---- built-in error pages ---------------------------------------------------------------

cdef lb_str ERR_PAGES[600]

def _make_error_pages():
    reasons = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
               414: "URI Too Long", 417: "Expectation Failed", 431: "Request Header Fields Too Large",
               501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
               504: "Gateway Timeout", 505: "HTTP Version Not Supported", 500: "Internal Server Error"}
    for code, reason in reasons.items():
        body = f"{code} {reason}\n".encode()
        page = (f"HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\ncache-control: no-cache\r\n\r\n").encode() + body
        ERR_PAGES[code].p = <char *>malloc(len(page) + 1)
        memcpy(ERR_PAGES[code].p, <char *>page, len(page))
        ERR_PAGES[code].n = len(page)
    return frozenset(reasons)

HTTP_ERROR_CODES = _make_error_pages()
