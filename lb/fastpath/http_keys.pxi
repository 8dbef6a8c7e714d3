# What a request is balanced by: hash keys (path, header, cookie, query) and
# sticky sessions (lb's own cookie naming the backend by a keyed hash).

cdef enum:
    HKH_L4 = 0                       # the pool's L4 key (source_ip, source_addr) or none
    HKH_PATH = 1
    HKH_HEADER = 2
    HKH_COOKIE = 3
    HKH_QUERY = 4
    HKH_CACHE_KEY = 5                # a tier of lb nodes: the request's cache key (fastpath/cache_tier.pxi)


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
