# The cache key (docs/cache.md, "The cache key"): what of a request names
# the object it asks for. By default the host (lower case, with its port)
# and the target as it came; a [caches.NAME] may leave the host out, sort
# the query's parameters, drop some or all of them, or keep only some, and
# add the values of chosen request fields.
#
#   key = [host] path [? params] { "\n" field-name ":" values }
#
# The part before the first "\n" (the URL part) is what the index hashes,
# so a purge or an invalidation of a URL, which knows no field values,
# reaches every object the fields set apart; the whole key is compared on
# a lookup. Built into the caller's buffer: no allocation, at most
# CACHE_KEY_MAX bytes and CACHE_KEY_PARAMS parameters (more: not cached).

cdef enum:
    CKQ_KEEP = 0
    CKQ_SORT = 1
    CKQ_DROP = 2
    CACHE_KEY_PARAMS = 64

_CKQ = {"keep": CKQ_KEEP, "sort": CKQ_SORT, "drop": CKQ_DROP}


cdef bint req_authority(const uint8_t *b, http_req *r, const uint8_t **host, uint32_t *hn,
                        const uint8_t **target, uint32_t *tn) noexcept nogil:
    """The request's host (absolute-form: its authority, else Host) and its
    target without scheme and authority. False: no host."""
    cdef const uint8_t *t = b + r.target_off
    cdef uint32_t n = r.target_len, i = 0, s
    if n and t[0] != 47:
        while i < n and t[i] != 58:
            i += 1
        if i + 3 > n:
            return False
        i += 3
        s = i
        while i < n and t[i] != 47 and t[i] != 63:
            i += 1
        host[0] = t + s
        hn[0] = i - s
        target[0] = t + i
        tn[0] = n - i
    elif r.host >= 0:
        host[0] = b + r.fields[r.host].value_off
        hn[0] = r.fields[r.host].value_len
        target[0] = t
        tn[0] = n
    else:
        return False
    return hn[0] != 0


cdef inline bint ck_put(char *out, uint32_t *n, uint32_t cap, const void *p, uint32_t len) noexcept nogil:
    if n[0] + len > cap:
        return False
    memcpy(out + n[0], p, len)
    n[0] += len
    return True


cdef inline uint32_t ck_name_len(const uint8_t *p, uint32_t n) noexcept nogil:
    cdef uint32_t i = 0
    while i < n and p[i] != 61:
        i += 1
    return i


cdef bint ck_listed(lb_cache_keycfg *kc, const uint8_t *p, uint32_t n) noexcept nogil:
    """The parameter p[n] ("name=value" or "name") matches a pattern: its
    name exactly, or, for "prefix*", starts with prefix."""
    cdef uint32_t nn = ck_name_len(p, n), i
    for i in range(kc.n_pat):
        if kc.pat_prefix[i]:
            if nn >= kc.pat[i].n and memcmp(p, kc.pat[i].p, kc.pat[i].n) == 0:
                return True
        elif nn == kc.pat[i].n and memcmp(p, kc.pat[i].p, nn) == 0:
            return True
    return False


cdef inline int ck_name_cmp(const uint8_t *a, uint32_t an, const uint8_t *b, uint32_t bn) noexcept nogil:
    cdef int c = memcmp(a, b, an if an < bn else bn)
    if c != 0:
        return c
    return <int>an - <int>bn


cdef uint32_t cache_key_make(lb_cache_keycfg *kc, const uint8_t *h, uint32_t hn, const uint8_t *t, uint32_t tn,
                             const uint8_t *b, http_req *r, char *out, uint32_t cap, uint32_t *url_len) noexcept nogil:
    """The key of host h[hn] and target t[tn] (path and query) into out, its
    URL part's length in url_len; with a request (b, r: else NULL), the
    values of the key_headers too. 0: none (too long, too many parameters)."""
    cdef uint32_t n = 0, i, q = 0, s, k, m = 0, j, f
    cdef uint32_t off[CACHE_KEY_PARAMS]
    cdef uint32_t len[CACHE_KEY_PARAMS]
    cdef uint32_t nlen[CACHE_KEY_PARAMS]
    cdef uint32_t to, tl, tnl
    cdef bint first
    if kc.host:
        if hn > cap:
            return 0
        for i in range(hn):
            out[i] = <char>lower(h[i])
        n = hn
    if tn == 0:
        if not ck_put(out, &n, cap, b"/", 1):
            return 0
    elif kc.plain or kc.query == CKQ_KEEP and kc.n_pat == 0:
        if not ck_put(out, &n, cap, t, tn):
            return 0
    else:
        while q < tn and t[q] != 63:
            q += 1
        if not ck_put(out, &n, cap, t, q):
            return 0
        if kc.query != CKQ_DROP and q < tn:
            # the parameters kept: their offsets in t, then (sort) their order
            s = q + 1
            while s <= tn:
                k = s
                while k < tn and t[k] != 38:
                    k += 1
                if k > s and (kc.n_pat == 0 or ck_listed(kc, t + s, k - s) == <bint>kc.keep_list):
                    if m == CACHE_KEY_PARAMS:
                        return 0
                    off[m] = s
                    len[m] = k - s
                    nlen[m] = ck_name_len(t + s, k - s)
                    m += 1
                s = k + 1
            if kc.query == CKQ_SORT:
                # insertion sort by name: stable, so a repeated name keeps its values' order
                for i in range(1, m):
                    to = off[i]
                    tl = len[i]
                    tnl = nlen[i]
                    j = i
                    while j > 0 and ck_name_cmp(t + off[j - 1], nlen[j - 1], t + to, tnl) > 0:
                        off[j] = off[j - 1]
                        len[j] = len[j - 1]
                        nlen[j] = nlen[j - 1]
                        j -= 1
                    off[j] = to
                    len[j] = tl
                    nlen[j] = tnl
            for i in range(m):
                if not (ck_put(out, &n, cap, b"?" if i == 0 else b"&", 1) and ck_put(out, &n, cap, t + off[i], len[i])):
                    return 0
    url_len[0] = n
    if r == NULL:
        return n
    for i in range(kc.n_headers):
        first = True
        for f in range(r.n_fields):
            if not name_is(b, &r.fields[f], kc.headers[i].p):
                continue
            if first:
                if not (ck_put(out, &n, cap, b"\n", 1) and ck_put(out, &n, cap, kc.headers[i].p, kc.headers[i].n)
                        and ck_put(out, &n, cap, b":", 1)):
                    return 0
                first = False
            elif not ck_put(out, &n, cap, b",", 1):
                return 0
            if not ck_put(out, &n, cap, b + r.fields[f].value_off, r.fields[f].value_len):
                return 0
    return n


cdef int cache_keycfg_init(lb_cache_keycfg *kc, object cfg) except -1:
    """The key settings of a config.Cache (any object without them: the
    default key, host and target as they came)."""
    memset(kc, 0, sizeof(lb_cache_keycfg))
    kc.host = bool(getattr(cfg, "key_host", True))
    kc.query = _CKQ[getattr(cfg, "key_query", "keep")]
    keep = tuple(getattr(cfg, "key_query_keep", ()))
    pats = keep or tuple(getattr(cfg, "key_query_drop", ()))
    headers = tuple(getattr(cfg, "key_headers", ()))
    if len(pats) > 16 or len(headers) > 8:
        raise ValueError("at most 16 key_query patterns and 8 key_headers")
    kc.keep_list = bool(keep)
    kc.n_pat = len(pats)
    for i, pat in enumerate(pats):
        kc.pat_prefix[i] = pat.endswith("*")
        kc.pat[i] = mkstr(pat[:len(pat) - 1] if pat.endswith("*") else pat)
    kc.n_headers = len(headers)
    for i, name in enumerate(headers):
        kc.headers[i] = mkstr(name.lower())
    kc.plain = kc.query == CKQ_KEEP and kc.n_pat == 0 and kc.n_headers == 0
    return 0


cdef void cache_keycfg_free(lb_cache_keycfg *kc) noexcept nogil:
    cdef uint32_t i
    for i in range(kc.n_pat):
        free(kc.pat[i].p)
    for i in range(kc.n_headers):
        free(kc.headers[i].p)
    memset(kc, 0, sizeof(lb_cache_keycfg))


cdef bytes cache_key_of_url(lb_cache_keycfg *kc, str url):
    """The URL part of the key of a URL (http://host[:port]/path?query, or
    host/path, or /path): what purge by URL removes. The same code as a
    request's key. None: no key (too long)."""
    cdef char out[CACHE_KEY_MAX]
    cdef uint32_t n, un = 0
    rest = url.split("://", 1)[1] if "://" in url else url
    if rest.startswith("/"):
        host, target = "", rest
    else:
        host, sep, path = rest.partition("/")
        target = sep + path
        if "?" in host:
            host, _, query = host.partition("?")
            target = "/?" + query
    cdef bytes bh = host.encode("latin-1"), bt = target.encode("latin-1")
    n = cache_key_make(kc, <const uint8_t *><char *>bh, len(bh), <const uint8_t *><char *>bt, len(bt),
                       NULL, NULL, out, CACHE_KEY_MAX, &un)
    if n == 0:
        return None
    return out[:n]


def _key_parts(bytes key):
    """A stored key, readable: its URL part and its fields' values."""
    url, *fields = key.decode("latin-1").split("\n")
    return url, dict(f.split(":", 1) for f in fields)


cdef uint32_t cache_inval_key(lb_cache_rt *rt, const uint8_t *b, http_req *r, char *out, uint32_t cap,
                              uint32_t *url_len, uint32_t *host_len) noexcept nogil:
    """An unsafe method's target: the URL part of its key, then its host in
    lower case (host_len bytes), which the Location it is answered with must
    name to be invalidated too. 0: none."""
    cdef const uint8_t *h
    cdef const uint8_t *t
    cdef uint32_t hn, tn, n, i
    if not req_authority(b, r, &h, &hn, &t, &tn):
        return 0
    n = cache_key_make(&rt.key, h, hn, t, tn, NULL, NULL, out, cap, url_len)
    if n == 0 or n + hn > cap:
        return 0
    for i in range(hn):
        out[n + i] = <char>lower(h[i])
    host_len[0] = hn
    return n + hn


def _key_prefix(str prefix, bint host):
    """A prefix of URLs (http://host/path..., host/path..., /path...) as the
    keys start: the host in lower case (none when the key has no host)."""
    rest = prefix.split("://", 1)[1] if "://" in prefix else prefix
    if rest.startswith("/"):
        return rest.encode("latin-1")
    name, sep, path = rest.partition("/")
    return ((name.lower() if host else "") + "/" + path).encode("latin-1")


cdef inline uint64_t key_fields_hash(const char *key, uint32_t n) noexcept nogil:
    """The hash of a key's field values (its part after the URL part), which
    sets its variants apart as Vary values do; 0: none."""
    cdef const char *nl = <const char *>memchr(key, 10, n)
    if nl == NULL:
        return 0
    return lb_xxh64(<const uint8_t *>nl, <uint32_t>(key + n - nl), 0x6b6579) | 1


def cache_key_preview(cfg, bytes head):
    """The key a cache with cfg's key settings makes of the request head
    (bytes, up to its empty line), with its URL part's length: the workers'
    own code, for tests/reference/cache_key_ref.py. None: no key."""
    cdef lb_cache_rt rt
    cdef http_req *r = <http_req *>malloc(sizeof(http_req))
    cdef char out[CACHE_KEY_MAX]
    cdef uint32_t n = 0, url_len = 0
    if r == NULL:
        raise MemoryError()
    memset(&rt, 0, sizeof(lb_cache_rt))
    try:
        cache_keycfg_init(&rt.key, cfg)
        if http_parse_request_c(<const uint8_t *><char *>head, len(head), r, 65536, 65536, HTTP_MAX_FIELDS_CAP) != 0:
            raise ValueError("not a request head lb accepts")
        n = cache_key(&rt, <const uint8_t *><char *>head, r, out, CACHE_KEY_MAX, &url_len)
        return (out[:n], url_len) if n else None
    finally:
        cache_keycfg_free(&rt.key)
        free(r)
