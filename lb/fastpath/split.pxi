# The split step (request phase, http): the variant of a weighted split
# (docs/splits.md) picks the request's pool.
#
# A user is a bucket, 0 .. SPLIT_BUCKETS - 1: the one lb's cookie holds, or a
# hash of the sticky key (a header, the client address). The split's table in
# shared memory maps the bucket to a variant; the supervisor lays it out
# (lb/splits.py) so that a weight change moves only the buckets it has to,
# from the variants that lose weight to those that gain it, and flips it in
# by generation. The cookie holds the bucket, not the variant: a user's
# variant then follows the weights, and every user gets one, whichever
# variant served them (a cookie set by the canary alone makes the canary's
# share drift past its weight: flagger issue 1532).
#
# An override names a variant by its pool (a header or a cookie), where the
# config asks for one, and only from the addresses of the ACLs it names.

cdef enum:
    SPK_COOKIE = 1
    SPK_HEADER = 2
    SPK_SOURCE = 3
    SPLIT_COOKIE_LEN = 12            # 4 hex digits of bucket, 8 of a check
    SPLIT_RETRIES = 4

# Max-Age 30 days: longer than any rollout, short enough that a stale
# population reshuffles. Lax: the cookie rides on top-level navigations.
cdef const char *SPLIT_COOKIE_ATTRS = b"; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax\r\n"
_SPK = {"cookie": SPK_COOKIE, "header": SPK_HEADER, "source_ip": SPK_SOURCE}

assert sizeof(shm_split) == 20160 and sizeof(shm_split) % 64 == 0
assert sizeof(shm_split_head) == 64


# ---- the region ------------------------------------------------------------------------

cdef inline shm_split_head *split_head(Shm shm) except NULL:
    return <shm_split_head *>shm.region_addr("splits")


cdef inline shm_split *split_at(Shm shm, uint32_t i) except NULL:
    cdef shm_split_head *sh = split_head(shm)
    if i >= sh.n_splits:
        raise IndexError(f"split index {i} out of range")
    return <shm_split *>(<char *>sh + sizeof(shm_split_head)) + i


def splits_region_size(d):
    return sizeof(shm_split_head) + d.splits * sizeof(shm_split)


cdef int splits_init(Shm shm, splits) except -1:
    """At creation: each split's name and variants' pools, (name, [pool
    index, ...]) in config order; every bucket in variant 0 until the
    supervisor publishes the layout (split_publish), before any worker runs."""
    cdef shm_split_head *sh = split_head(shm)
    cdef shm_split *s
    sh.n_splits = len(splits)
    for i, (name, pools) in enumerate(splits):
        s = split_at(shm, i)
        bname = name.encode()
        if len(bname) >= LB_NAME_LEN:
            raise ValueError(f"split name longer than {LB_NAME_LEN - 1} bytes: {name!r}")
        if not 2 <= len(pools) <= SPLIT_MAX_VARIANTS:
            raise ValueError(f"split {name!r}: {len(pools)} variants (2 .. {SPLIT_MAX_VARIANTS})")
        memcpy(s.name, <char *>bname, len(bname))
        s.n_variants = len(pools)
        for v, p in enumerate(pools):
            s.pool[v] = p
        s.weight[0][0] = 100
    return 0


def split_names(Shm shm):
    cdef shm_split_head *sh = split_head(shm)
    return [split_at(shm, i).name[:LB_NAME_LEN].split(b"\0", 1)[0].decode() for i in range(sh.n_splits)]


def split_publish(Shm shm, uint32_t index, weights, table):
    """Writer: the supervisor. The split's weights (percent, per variant) and
    its table (SPLIT_BUCKETS bytes, each a variant) into the half the workers
    do not read, then that half is made the live one."""
    cdef shm_split *s = split_at(shm, index)
    cdef const uint8_t[:] t = table
    cdef uint32_t gen = lb_load_u32(&s.gen), half = (gen + 1) & 1, v
    if len(weights) != s.n_variants or sum(weights) != 100:
        raise ValueError(f"split {index}: {len(weights)} weights summing to {sum(weights)}, "
                         f"not {s.n_variants} summing to 100")
    if t.shape[0] != SPLIT_BUCKETS or any(b >= s.n_variants for b in bytes(table)):
        raise ValueError(f"split {index}: a table of {SPLIT_BUCKETS} variants below {s.n_variants} is needed")
    for v in range(s.n_variants):
        s.weight[half][v] = weights[v]
    memcpy(s.table[half], &t[0], SPLIT_BUCKETS)
    lb_release_u32(&s.gen, gen + 1)


def split_read(Shm shm, uint32_t index):
    """The live half: {"name", "pools": [pool index], "weights", "table": bytes, "generation"}."""
    cdef shm_split *s = split_at(shm, index)
    cdef uint32_t gen = lb_acquire_u32(&s.gen), half = gen & 1
    return {"name": s.name[:LB_NAME_LEN].split(b"\0", 1)[0].decode(),
            "pools": [s.pool[v] for v in range(s.n_variants)],
            "weights": [s.weight[half][v] for v in range(s.n_variants)],
            "table": bytes((<char *>s.table[half])[:SPLIT_BUCKETS]), "generation": gen}


# ---- the cookie and the key: a user's bucket --------------------------------------------

cdef inline uint64_t split_seed_of(const char *name, size_t n) noexcept nogil:
    return lb_xxh64(<const uint8_t *>name, n, 0x73706c6974)


cdef inline uint32_t split_check(uint64_t seed, uint32_t bucket) noexcept nogil:
    """What the cookie carries beside its bucket: a client that makes one up
    lands in a bucket of lb's choosing, like a client without one."""
    cdef uint8_t k[2]
    k[0] = <uint8_t>(bucket >> 8)
    k[1] = <uint8_t>bucket
    return <uint32_t>lb_xxh64(k, 2, seed)


cdef int32_t split_cookie_bucket(lb_split_rt *sp, const uint8_t *v, uint32_t n) noexcept nogil:
    cdef uint64_t x = 0
    cdef uint32_t i, bucket
    cdef int d
    if n != SPLIT_COOKIE_LEN:
        return -1
    for i in range(SPLIT_COOKIE_LEN):
        d = hexval(v[i])
        if d < 0:
            return -1
        x = (x << 4) | <uint64_t>d
    bucket = <uint32_t>(x >> 32)
    if bucket >= SPLIT_BUCKETS or <uint32_t>x != split_check(sp.seed, bucket):
        return -1
    return <int32_t>bucket


cdef uint32_t split_bucket(lb_worker *w, lb_hconn *h, lb_split_rt *sp, http_req *r, const uint8_t *b) noexcept nogil:
    """The request's bucket. A cookie split gives a client without a valid
    cookie a random bucket, and the response the cookie that keeps it."""
    cdef uint32_t off = 0, len = 0, i
    cdef int32_t bucket
    if sp.sticky == SPK_COOKIE:
        if cookie_find(b, r, &sp.sticky_name, &off, &len):
            bucket = split_cookie_bucket(sp, b + off, len)
            if bucket >= 0:
                return <uint32_t>bucket
        bucket = <int32_t>(lb_splitmix64(&w.rng) % SPLIT_BUCKETS)
        h.split_cookie = <uint32_t>bucket + 1
        return <uint32_t>bucket
    if sp.sticky == SPK_HEADER:
        for i in range(r.n_fields):
            if ieq_str(b + r.fields[i].name_off, r.fields[i].name_len, &sp.sticky_name):
                return <uint32_t>(lb_xxh64(b + r.fields[i].value_off, r.fields[i].value_len, sp.seed) % SPLIT_BUCKETS)
    # source_ip, and a request without the sticky header
    return <uint32_t>((conn_key_hash(&h.c, HK_SOURCE_IP) ^ sp.seed) * <uint64_t>0x9e3779b97f4a7c15 % SPLIT_BUCKETS)


cdef uint32_t split_variant_of(shm_split *s, uint32_t bucket) noexcept nogil:
    """The bucket's variant in the live half; a read that saw the generation
    move reads again (the supervisor may have rewritten the half it read)."""
    cdef uint32_t gen, v = 0, tries
    for tries in range(SPLIT_RETRIES):
        gen = lb_acquire_u32(&s.gen)
        v = lb_load_u8(&s.table[gen & 1][bucket])
        lb_fence_acquire()
        if lb_load_u32(&s.gen) == gen:
            break
    return v if v < s.n_variants else 0


cdef int32_t split_override(lb_worker *w, lb_hconn *h, lb_split_rt *sp, http_req *r, const uint8_t *b) noexcept nogil:
    """The variant the request names by its pool, where the split takes
    overrides and from where it takes them; -1: none."""
    cdef uint32_t off = 0, len = 0, i, j
    cdef bint found = False
    cdef acl_addr a
    if sp.override == SPK_HEADER:
        for i in range(r.n_fields):
            if ieq_str(b + r.fields[i].name_off, r.fields[i].name_len, &sp.override_name):
                off = r.fields[i].value_off
                len = r.fields[i].value_len
                found = True
                break
    else:
        found = cookie_find(b, r, &sp.override_name, &off, &len)
    if not found:
        return -1
    for i in range(sp.shm.n_variants):
        if len == sp.variant_names[i].n and memcmp(b + off, sp.variant_names[i].p, len) == 0:
            break
    else:
        return -1
    if sp.n_allow:
        acl_addr_of(&h.c.peer, &a)
        for j in range(sp.n_allow):
            if acl_match(w.base, &w.acls[sp.allow[j]], &a):
                return <int32_t>i
        return -1
    return <int32_t>i


cdef int step_split(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Request phase, after the limits: the split of the route (or, when no
    route took the request, of the listener) picks the pool."""
    cdef int32_t si = h.hl.split
    cdef int32_t v = -1
    cdef lb_split_rt *sp
    if h.route >= 0:
        si = h.hl.routes[h.route].split
    if si < 0:
        return STEP_CONTINUE
    sp = &w.http.splits[si]
    if sp.override:
        v = split_override(w, h, sp, r, b)
    if v < 0:
        v = <int32_t>split_variant_of(sp.shm, split_bucket(w, h, sp, r, b))
    h.split = si
    h.split_variant = <uint8_t>v
    h.c.pool = sp.shm.pool[v]
    return STEP_CONTINUE


cdef bint split_emit(lb_worker *w, lb_hconn *h, lb_hbuf *o) noexcept nogil:
    """The response's Set-Cookie: the bucket, with its check."""
    cdef lb_split_rt *sp = &w.http.splits[h.split]
    cdef uint32_t bucket = h.split_cookie - 1
    cdef uint64_t x = (<uint64_t>bucket << 32) | split_check(sp.seed, bucket)
    cdef char hexv[SPLIT_COOKIE_LEN]
    cdef int i
    for i in range(SPLIT_COOKIE_LEN):
        hexv[SPLIT_COOKIE_LEN - 1 - i] = b"0123456789abcdef"[x & 15]
        x >>= 4
    return (ob_str(o, b"Set-Cookie: ") and ob_put(o, sp.sticky_name.p, sp.sticky_name.n) and ob_put(o, b"=", 1)
            and ob_put(o, hexv, SPLIT_COOKIE_LEN) and ob_str(o, SPLIT_COOKIE_ATTRS))


def wants_split(listener):
    return listener.mode == "http" and (getattr(listener, "split", None) is not None
                                        or any(getattr(rt, "split", None) is not None for rt in listener.routes))


# ---- set-up (Python, at start) -----------------------------------------------------------

def _split_sites(listeners):
    for listener in listeners:
        if getattr(listener, "split", None) is not None:
            yield listener.split
        for route in listener.routes:
            if getattr(route, "split", None) is not None:
                yield route.split


cdef int splits_worker_init(lb_worker *w, Shm shm, listeners, dict acl_index) except -1:
    """Each split of the region, from the config.Split of the listener or
    route that declares it (the region names them)."""
    cdef shm_split_head *sh = split_head(shm)
    cdef lb_split_rt *sp
    cdef shm_metrics_head *mh = <shm_metrics_head *>shm.region_addr("metrics")
    cdef uint32_t met = mh.n_listeners + mh.n_routes + mh.n_pools + mh.n_slots
    names = split_names(shm)
    w.http.n_splits = sh.n_splits
    w.http.splits = <lb_split_rt *>calloc(max(1, sh.n_splits), sizeof(lb_split_rt))
    if w.http.splits == NULL:
        raise MemoryError()
    by_name = {split.name: split for split in _split_sites(listeners)}
    for i, name in enumerate(names):
        sp = &w.http.splits[i]
        sp.shm = split_at(shm, i)
        sp.met_base = met if mh.n_variants else <uint32_t>0xffffffff
        met += sp.shm.n_variants
        split = by_name.get(name)
        if split is None:
            continue                 # a listener of another worker's: never used here
        kind, _, key = split.sticky.partition(":")
        sp.sticky = _SPK[kind]
        sp.sticky_name = mkstr(key.lower() if kind == "header" else key)
        sp.seed = split_seed_of(sp.shm.name, strlen(sp.shm.name))
        if split.override:
            kind, _, key = split.override.partition(":")
            sp.override = _SPK[kind]
            sp.override_name = mkstr(key.lower() if kind == "header" else key)
        sp.variant_names = mkstrs([pool for pool, _ in split.variants])
        if len(split.override_allow) > ACL_MAX_PER_LIST:
            raise ValueError(f"split {name!r}: at most {ACL_MAX_PER_LIST} ACLs in split_override_allow")
        sp.n_allow = len(split.override_allow)
        for j, acl in enumerate(split.override_allow):
            sp.allow[j] = acl_index[acl]
    return 0


def split_index(Shm shm):
    return {name: i for i, name in enumerate(split_names(shm))}


def split_cookie_value(str name, uint32_t bucket):
    """The cookie lb sets for a bucket of split `name` (tests, tools)."""
    cdef bytes bname = name.encode()
    cdef uint64_t seed = split_seed_of(bname, len(bname))
    if bucket >= SPLIT_BUCKETS:
        raise ValueError(f"bucket {bucket} out of range")
    return f"{(<uint64_t>bucket << 32) | split_check(seed, bucket):012x}"
