# RFC 9111 parsing details of the shared cache (docs/cache.md, "Conformance"),
# apart from cache.pxi so that the rules a conformance suite probes can be read
# in one place:
#
#   cc_next            Cache-Control members, a quoted value kept whole
#                      (no-cache="a, b" is one directive, not two)
#   cc_no_cache_names  the field names a qualified no-cache lists: the stored
#                      copy goes without them (RFC 9111 5.2.2.4)
#   sf_dict_valid      RFC 8941 dictionary syntax with integer delta-seconds:
#                      an invalid CDN-Cache-Control is ignored (RFC 9213 2.1)
#   age_value          the Age a response came with: first member, digits only
#   vary_member_hash   one member of a Vary field's value, OWS trimmed and
#                      lower-cased where the field is case-insensitive
#   head_freshens      a HEAD's 200 agrees with the stored GET (RFC 9111 4.3.5)
#   post_storable      a POST's answer stands for its target (RFC 9110 9.3.3)
#
# All run on the response or request head in the worker's buffers, without
# the GIL and without allocating.


cdef int cc_next(const uint8_t *v, uint32_t n, uint32_t *pos, uint32_t *off, uint32_t *len) noexcept nogil:
    """http_list_next for Cache-Control: a comma inside a quoted-string does
    not end the member (RFC 9111 5.2: directive = token [ "=" ( token /
    quoted-string ) ])."""
    cdef uint32_t p = pos[0], s, e
    cdef bint quoted = False
    while p < n and (v[p] == 32 or v[p] == 9 or v[p] == 44):
        p += 1
    if p >= n:
        pos[0] = p
        return 0
    s = p
    while p < n and (quoted or v[p] != 44):
        if v[p] == 34:
            quoted = not quoted
        elif quoted and v[p] == 92 and p + 1 < n:
            p += 1                   # quoted-pair
        p += 1
    e = p
    while e > s and (v[e - 1] == 32 or v[e - 1] == 9):
        e -= 1
    pos[0] = p
    off[0] = s
    len[0] = e - s
    return 1


cdef uint32_t cc_no_cache_names(const uint8_t *b, http_req *r, const char *field, char *out,
                                uint32_t cap) noexcept nogil:
    """The field names of every qualified no-cache="..." in the response's
    field (Cache-Control, or the CDN-Cache-Control in force), lower case,
    ","-separated. 0: none; CACHE_NONE: more than cap (then the caller treats
    the directive as unqualified)."""
    cdef uint32_t i, pos, off, len, nl, j, n = 0
    cdef const uint8_t *v
    cdef const uint8_t *d
    for i in range(r.n_fields):
        if not name_is(b, &r.fields[i], field):
            continue
        v = b + r.fields[i].value_off
        pos = 0
        while cc_next(v, r.fields[i].value_len, &pos, &off, &len):
            d = v + off
            nl = 0
            while nl < len and d[nl] != 61:
                nl += 1
            if nl + 1 >= len or not ieq(d, nl, b"no-cache"):
                continue
            j = nl + 1
            while j < len:
                while j < len and (d[j] == 34 or d[j] == 32 or d[j] == 9 or d[j] == 44):
                    j += 1
                if j >= len:
                    break
                if n:
                    if n >= cap:
                        return CACHE_NONE
                    out[n] = 44
                    n += 1
                while j < len and d[j] != 34 and d[j] != 32 and d[j] != 9 and d[j] != 44:
                    if n >= cap:
                        return CACHE_NONE
                    out[n] = <char>lower(d[j])
                    n += 1
                    j += 1
    return n


cdef bint names_listed(const char *names, uint32_t n, const uint8_t *name, uint32_t len) noexcept nogil:
    """name (any case) is one of the lower-case ","-separated names."""
    cdef uint32_t pos = 0, off, ln
    while http_list_next(<const uint8_t *>names, n, &pos, &off, &ln):
        if ln == len and ieq_bytes(name, <const uint8_t *>names + off, len):
            return True
    return False


cdef inline bint _sf_key_start(uint8_t c) noexcept nogil:
    return (97 <= c <= 122) or c == 42


cdef inline bint _sf_key_char(uint8_t c) noexcept nogil:
    return (97 <= c <= 122) or (48 <= c <= 57) or c == 95 or c == 45 or c == 46 or c == 42


cdef inline bint _tchar(uint8_t c) noexcept nogil:
    return ((48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 33 or (35 <= c <= 39)
            or c == 42 or c == 43 or c == 45 or c == 46 or c == 94 or c == 95 or c == 96 or c == 124 or c == 126)


cdef int _sf_bare_item(const uint8_t *v, uint32_t n, uint32_t *p) noexcept nogil:
    """RFC 8941 4.2.3.1: 1 integer, 2 other item, 0 invalid."""
    cdef uint32_t s, digits = 0, frac = 0
    cdef bint dot = False
    if p[0] >= n:
        return 0
    if v[p[0]] == 45 or (48 <= v[p[0]] <= 57):
        if v[p[0]] == 45:
            p[0] += 1
        s = p[0]
        while p[0] < n and ((48 <= v[p[0]] <= 57) or (v[p[0]] == 46 and not dot)):
            if v[p[0]] == 46:
                dot = True
            elif dot:
                frac += 1
            else:
                digits += 1
            p[0] += 1
        if digits == 0 or (not dot and digits > 15) or (dot and (digits > 12 or frac == 0 or frac > 3)):
            return 0
        return 2 if dot else 1
    if v[p[0]] == 34:                # string
        p[0] += 1
        while p[0] < n:
            if v[p[0]] == 92:
                if p[0] + 1 >= n or (v[p[0] + 1] != 34 and v[p[0] + 1] != 92):
                    return 0
                p[0] += 2
            elif v[p[0]] == 34:
                p[0] += 1
                return 2
            elif v[p[0]] < 32 or v[p[0]] > 126:
                return 0
            else:
                p[0] += 1
        return 0
    if (65 <= v[p[0]] <= 90) or (97 <= v[p[0]] <= 122) or v[p[0]] == 42:   # token
        p[0] += 1
        while p[0] < n and (_tchar(v[p[0]]) or v[p[0]] == 58 or v[p[0]] == 47):
            p[0] += 1
        return 2
    if v[p[0]] == 58:                # byte sequence
        p[0] += 1
        while p[0] < n and v[p[0]] != 58:
            if not ((48 <= v[p[0]] <= 57) or (65 <= v[p[0]] <= 90) or (97 <= v[p[0]] <= 122)
                    or v[p[0]] == 43 or v[p[0]] == 47 or v[p[0]] == 61):
                return 0
            p[0] += 1
        if p[0] >= n:
            return 0
        p[0] += 1
        return 2
    if v[p[0]] == 63:                # boolean
        if p[0] + 1 < n and (v[p[0] + 1] == 48 or v[p[0] + 1] == 49):
            p[0] += 2
            return 2
        return 0
    return 0


cdef bint _sf_params(const uint8_t *v, uint32_t n, uint32_t *p) noexcept nogil:
    while p[0] < n and v[p[0]] == 59:
        p[0] += 1
        while p[0] < n and v[p[0]] == 32:
            p[0] += 1
        if p[0] >= n or not _sf_key_start(v[p[0]]):
            return False
        while p[0] < n and _sf_key_char(v[p[0]]):
            p[0] += 1
        if p[0] < n and v[p[0]] == 61:
            p[0] += 1
            if _sf_bare_item(v, n, p) == 0:
                return False
    return True


cdef bint sf_dict_valid(const uint8_t *v, uint32_t n) noexcept nogil:
    """An RFC 8941 dictionary whose delta-seconds directives (max-age,
    s-maxage, stale-while-revalidate, stale-if-error) are integers: what
    RFC 9213 2.1 asks of a CDN-Cache-Control before a cache obeys it."""
    cdef uint32_t p = 0, ks, kn
    cdef int t
    while p < n and (v[p] == 32 or v[p] == 9):
        p += 1
    if p >= n:
        return True                  # an empty field: an empty dictionary
    while True:
        if not _sf_key_start(v[p]):
            return False
        ks = p
        while p < n and _sf_key_char(v[p]):
            p += 1
        kn = p - ks
        t = 3                        # a bare key: Boolean true
        if p < n and v[p] == 61:
            p += 1
            if p < n and v[p] == 40:  # an inner list
                p += 1
                while True:
                    while p < n and v[p] == 32:
                        p += 1
                    if p >= n:
                        return False
                    if v[p] == 41:
                        p += 1
                        break
                    if _sf_bare_item(v, n, &p) == 0 or not _sf_params(v, n, &p):
                        return False
                    if p < n and v[p] != 32 and v[p] != 41:
                        return False
                t = 2
            else:
                t = _sf_bare_item(v, n, &p)
                if t == 0:
                    return False
        if not _sf_params(v, n, &p):
            return False
        if t != 1 and (ieq(v + ks, kn, b"max-age") or ieq(v + ks, kn, b"s-maxage")
                       or ieq(v + ks, kn, b"stale-while-revalidate") or ieq(v + ks, kn, b"stale-if-error")):
            return False
        while p < n and (v[p] == 32 or v[p] == 9):
            p += 1
        if p >= n:
            return True
        if v[p] != 44:
            return False
        p += 1
        while p < n and (v[p] == 32 or v[p] == 9):
            p += 1
        if p >= n:
            return False             # a trailing comma
    return False


cdef bint cdn_cc_in_force(const uint8_t *b, http_req *r) noexcept nogil:
    """The response has a CDN-Cache-Control and every line of it is valid:
    lb then obeys it in place of Cache-Control (RFC 9213 2.1: an invalid one
    is ignored, as if absent)."""
    cdef uint32_t i
    cdef bint any_ = False
    for i in range(r.n_fields):
        if name_is(b, &r.fields[i], b"cdn-cache-control"):
            if not sf_dict_valid(b + r.fields[i].value_off, r.fields[i].value_len):
                return False
            any_ = True
    return any_


cdef bint age_value(const uint8_t *v, uint32_t n, int64_t *out) noexcept nogil:
    """The Age field's value (RFC 9111 5.1): its first member (a list of ages
    is a bad field combined, "7200, 0": the first was the older hop's), up
    to any parameter; digits only, else False (then it is ignored)."""
    cdef uint32_t e = 0
    while e < n and v[e] != 44 and v[e] != 59:
        e += 1
    while e > 0 and (v[e - 1] == 32 or v[e - 1] == 9):
        e -= 1
    while n and e and (v[0] == 32 or v[0] == 9):
        v += 1
        e -= 1
    if e == 0 or v[0] == 34:
        return False
    return delta_seconds(v, e, out)


cdef inline bint vary_case_insensitive(const char *name, uint32_t n) noexcept nogil:
    """Request fields whose values RFC 9110 12.5 defines as case-insensitive
    tokens: equal when they differ in case only (RFC 9111 4.1)."""
    return (ieq(<const uint8_t *>name, n, b"accept-language") or ieq(<const uint8_t *>name, n, b"accept-encoding")
            or ieq(<const uint8_t *>name, n, b"accept-charset"))


cdef uint64_t vary_member_hash(const uint8_t *v, uint32_t n, bint fold, uint64_t hsh) noexcept nogil:
    cdef char low[128]
    cdef uint32_t i
    if fold and n <= sizeof(low):
        for i in range(n):
            low[i] = <char>lower(v[i])
        return lb_xxh64(<const uint8_t *>low, n, hsh ^ 0x2c)
    return lb_xxh64(v, n, hsh ^ 0x2c)


cdef bint _same_field(const uint8_t *a, http_req *ra, const uint8_t *b, http_req *rb, const char *name) noexcept nogil:
    """a lacks the field, or b has it with the same value."""
    cdef int32_t i = field_find(a, ra, name), j = field_find(b, rb, name)
    if i < 0:
        return True
    if j < 0:
        return False
    return ra.fields[i].value_len == rb.fields[j].value_len and memcmp(
        a + ra.fields[i].value_off, b + rb.fields[j].value_off, ra.fields[i].value_len) == 0


cdef bint head_freshens(lb_worker *w, lb_cache_rt *rt, lb_cache_x *cx, http_req *r, const uint8_t *b) noexcept nogil:
    """A 200 to a HEAD describes the stored GET response (RFC 9111 4.3.5)
    when the ETag, Last-Modified and Content-Length it has agree with the
    stored ones: then its fields refresh the entry as a 304's would. One
    that disagrees describes another representation and refreshes nothing
    (the entry stays stale, and the next GET fetches anew)."""
    cdef shm_cache_entry *e = ce_at(rt, cx.stale_entry)
    cdef shm_cache_entry meta
    cdef char *old = w.http.cache.scratch
    cdef http_req *os = w.http.cache.merged
    cdef int32_t cl
    cdef int64_t n
    memcpy(&meta, e, sizeof(shm_cache_entry))
    if not ce_stable(e, cx.stale_seq) or meta.state != CE_LIVE or meta.head_len + 2 > CACHE_HEAD_MAX:
        return False
    if not ce_copy(rt, e, cx.stale_seq, <uint64_t>meta.key_len + meta.vary_len + meta.tags_len, old, meta.head_len):
        return False
    memcpy(old + meta.head_len, b"\r\n", 2)
    if http_parse_response_c(<const uint8_t *>old, meta.head_len + 2, os, CACHE_HEAD_MAX + 4) != 0:
        return False
    cl = field_find(b, r, b"content-length")
    if cl >= 0 and (not delta_seconds(b + r.fields[cl].value_off, r.fields[cl].value_len, &n)
                    or <uint64_t>n != meta.body_len):
        return False
    return _same_field(b, r, <const uint8_t *>old, os, b"etag") and \
        _same_field(b, r, <const uint8_t *>old, os, b"last-modified")


cdef uint32_t sf_member_len(const uint8_t *d, uint32_t n) noexcept nogil:
    """A dictionary member up to its parameters (max-age=600;x=1 is max-age=600):
    lb knows no parameter of a CDN-Cache-Control directive, and RFC 9213
    2.1 has them ignored."""
    cdef uint32_t i = 0
    cdef bint quoted = False
    while i < n:
        if d[i] == 34:
            quoted = not quoted
        elif quoted and d[i] == 92:
            i += 1
        elif not quoted and d[i] == 59:
            return i
        i += 1
    return n


cdef bint location_is_target(lb_cache_rt *rt, lb_cache_x *cx, const uint8_t *v, uint32_t vn,
                             char *buf) noexcept nogil:
    """A Content-Location (a path, or an absolute URI of the same host) that
    names the request's own target: keyed as a request for it would be, it
    is the URL part of the key cx holds (the request's host follows it)."""
    cdef uint32_t s, n, url_len = 0
    cdef const uint8_t *host = <const uint8_t *>cx.key + cx.key_len
    if vn and v[0] == 47 and not (vn > 1 and v[1] == 47):
        s = 0
    elif vn > 7 and (ieq(v, 7, b"http://") or (vn > 8 and ieq(v, 8, b"https://"))):
        s = 7 if v[4] == 58 else 8
        if vn - s < cx.host_len or not _name_eq(v + s, cx.host_len, host, cx.host_len):
            return False
        s += cx.host_len
        if s < vn and v[s] != 47 and v[s] != 63:
            return False
    else:
        return False
    n = cache_key_make(&rt.key, host, cx.host_len, v + s, vn - s, NULL, NULL, buf, CACHE_KEY_MAX, &url_len)
    return n != 0 and url_len == cx.key_len and memcmp(buf, cx.key, url_len) == 0


cdef bint post_storable(lb_cache_rt *rt, lb_cache_x *cx, http_req *r, const uint8_t *b,
                        char *buf) noexcept nogil:
    """RFC 9110 9.3.3: a POST's 2xx is a GET's answer for its target when
    its Content-Location names that target (it carries the representation
    of it); whether it has explicit freshness cache_fill_start decides."""
    cdef int32_t cl
    cdef int64_t max_age, s_maxage, unused
    if cx.req == NULL or not (200 <= r.status < 300) or rt.key.n_headers:
        return False                 # (with key_headers the key has field lines a POST's lacks)
    cl = field_find(b, r, b"content-location")
    if cl < 0 or not location_is_target(rt, cx, b + r.fields[cl].value_off, r.fields[cl].value_len,
                                                  buf):
        return False
    cc_parse(b, r, True, &max_age, &s_maxage, &unused)
    return max_age >= 0 or s_maxage >= 0 or field_find(b, r, b"expires") >= 0   # never on a heuristic
