# Tiered caching (docs/cache.md, "Tiered caching"): a pool of peer lb nodes
# with algorithm = "maglev" and hash_key = "cache_key" is a tier. A request
# sent to it is balanced by its cache key, so every edge node sends the
# misses of one object to the same parent, and the origin sees each object
# once per cluster; a parent that is down gives its keys to the next entry
# of the Maglev table and moves no other key.
#
# Loops (RFC 8586): each request sent to a tier carries "CDN-Loop: cdn_id";
# one that already carries it came from a tier, and a tier is never asked
# again (508 Loop Detected): an edge -> parent -> edge ring is cut at once.

cdef uint64_t tier_key_hash(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r) noexcept nogil:
    """The hash a request to a tier is balanced by: the URL part of its
    cache key, hashed with no per-node seed, so that every node picks the
    same parent, and all the variants of a URL (and its invalidations) meet
    at one parent. A request without a cache exchange (a route without a
    cache, a bypass) is keyed by its route's cache, else by host and target."""
    cdef lb_cache_x *cx = h.cx
    cdef lb_cache_rt *rt
    cdef lb_cache_keycfg plain
    cdef const uint8_t *hp
    cdef const uint8_t *t
    cdef const char *nl
    cdef uint32_t hn, tn, n, url_len = 0
    cdef char buf[CACHE_KEY_MAX]
    if cx != NULL and cx.key != NULL and cx.key_len:
        nl = <const char *>memchr(cx.key, 10, cx.key_len)
        return lb_xxh64(<const uint8_t *>cx.key, <uint32_t>(nl - cx.key) if nl != NULL else cx.key_len, 0)
    if not req_authority(b, r, &hp, &hn, &t, &tn):
        return conn_key_hash(&h.c, HK_SOURCE_IP)
    rt = cache_of(w, h) if w.http.cache != NULL else NULL
    if rt != NULL:
        n = cache_key_make(&rt.key, hp, hn, t, tn, NULL, NULL, buf, CACHE_KEY_MAX, &url_len)
    else:
        memset(&plain, 0, sizeof(lb_cache_keycfg))
        plain.host = 1
        plain.plain = 1
        n = cache_key_make(&plain, hp, hn, t, tn, NULL, NULL, buf, CACHE_KEY_MAX, &url_len)
    if n == 0:
        return conn_key_hash(&h.c, HK_SOURCE_IP)
    return lb_xxh64(<const uint8_t *>buf, url_len, 0)


cdef bint tier_loop(lb_http_pool *hp, const uint8_t *b, http_req *r) noexcept nogil:
    """The request passed a tier of this CDN already: a CDN-Loop field names
    cdn_id (RFC 8586: cdn-info = cdn-id *( OWS ";" OWS parameter ))."""
    cdef uint32_t i, pos, off, len, k
    cdef const uint8_t *v
    for i in range(r.n_fields):
        if not name_is(b, &r.fields[i], b"cdn-loop"):
            continue
        v = b + r.fields[i].value_off
        pos = 0
        while http_list_next(v, r.fields[i].value_len, &pos, &off, &len):
            k = 0
            while k < len and v[off + k] != 59 and v[off + k] != 32 and v[off + k] != 9:
                k += 1
            if _name_eq(v + off, k, <const uint8_t *>hp.cdn_id.p, hp.cdn_id.n):
                return True
    return False


cdef int tier_request(lb_worker *w, lb_hconn *h, lb_pool_rt *p, const uint8_t *b, http_req *r) noexcept nogil:
    """h_request_go, for a tier pool: the balancing hash, and the CDN-Loop
    the request is sent with. 0, or the status to answer (508)."""
    if tier_loop(p.http, b, r):
        return 508
    h.key = tier_key_hash(w, h, b, r)
    if h.n_rq_rules < MAX_RULESETS:
        rulesets_push(h.rq_rules, &h.n_rq_rules, &p.http.tier_rules)
    return 0


cdef int tier_pool_init(lb_http_pool *hp, object pool) except -1:
    """A tier pool's CDN-Loop: compared in lower case, sent as written."""
    cdn_id = getattr(pool, "cdn_id", "lb") or "lb"
    hp.cdn_id = mkstr(cdn_id.lower())
    hp.tier_name[0] = mkstr("CDN-Loop")
    hp.tier_value[0] = mkstr(cdn_id)
    memset(&hp.tier_rules, 0, sizeof(lb_hrules))
    hp.tier_rules.n_add = 1
    hp.tier_rules.add_name = hp.tier_name
    hp.tier_rules.add_value = hp.tier_value
    return 0


cdef bint tier_came_back(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r) noexcept nogil:
    """The cache step: a miss that will be refused (508) claims no fetch. In
    a ring, the request that came back would otherwise wait for the claim
    its own first pass holds."""
    cdef lb_pool_rt *p
    if h.c.pool < 0:
        return False
    p = &w.pools[h.c.pool]
    return p.http != NULL and p.http.hk_kind == HKH_CACHE_KEY and tier_loop(p.http, b, r)
