# Authentication by API key ([auth.NAME] type = "api_key", docs/gateway.md):
# the `auth` step of the request phase, after the access rules and before the
# limits (which may be keyed by the identity it finds). The key comes in a
# header or a query parameter; lb keeps only the SHA-256 of each key, with
# its identity, in a table in shared memory that `lb key add|revoke` changes
# without a reload (two halves flipped by generation, as the ACLs). The
# identity goes to the backend in a header (client copies removed), and the
# key's header is removed unless strip = false. No key, or an unknown one:
# 401 with WWW-Authenticate, and the backend never sees the request.


cdef int auth_find(char *base, shm_auth *a, const uint8_t *key, uint32_t n, char *out) noexcept nogil:
    """The identity of a key (its length, copied into out), or 0."""
    cdef unsigned char md[32]
    cdef unsigned int mdlen = 32
    cdef uint32_t gen, half, slots, j, probes, tries
    cdef uint64_t h = 0
    cdef shm_auth_key *t
    cdef int found
    if EVP_Digest(key, n, md, &mdlen, EVP_sha256(), NULL) != 1:
        return 0
    memcpy(&h, md, 8)
    for tries in range(16):
        gen = lb_acquire_u32(&a.gen)
        half = gen & 1
        slots = lb_load_u32(&a.n_slots[half])
        found = 0
        if slots:
            t = <shm_auth_key *>(base + a.off) + <uint64_t>half * AUTH_HALF_SLOTS
            j = <uint32_t>(h & (slots - 1))
            for probes in range(slots):
                if t[j].id_len == 0:
                    break
                if memcmp(t[j].sha256, md, 32) == 0:
                    found = t[j].id_len if t[j].id_len <= AUTH_ID_MAX else AUTH_ID_MAX
                    memcpy(out, t[j].id, found)
                    break
                j = (j + 1) & (slots - 1)
        lb_fence_acquire()
        # the supervisor may have rewritten this half for a change after the
        # next one: what was read is good only if the generation held
        if lb_load_u32(&a.gen) == gen:
            return found
    return 0


cdef bint auth_key_of(lb_auth_rt *ar, const uint8_t *b, http_req *r, uint32_t *off, uint32_t *n) noexcept nogil:
    cdef uint32_t i
    if ar.from_query:
        return query_find(b, r, &ar.key_name, off, n) and n[0] > 0
    for i in range(r.n_fields):
        if ieq_str(b + r.fields[i].name_off, r.fields[i].name_len, &ar.key_name):
            off[0] = r.fields[i].value_off
            n[0] = r.fields[i].value_len
            return n[0] > 0
    return False


cdef void query_cut(lb_hconn *h, const uint8_t *b, http_req *r, uint32_t voff, uint32_t vlen,
                    uint32_t name_len) noexcept nogil:
    """Cut `name=value` out of the target, with one '&' beside it (or the
    '?' when it was the only parameter), so that the backend never gets the key."""
    cdef uint32_t ps = voff - 1 - name_len, pe = voff + vlen, end = r.target_off + r.target_len
    if pe < end and b[pe] == 38:                      # "name=v&..." -> "..."
        pe += 1
    elif ps > r.target_off and b[ps - 1] == 38:       # "...&name=v" -> "..."
        ps -= 1
    elif ps > r.target_off and b[ps - 1] == 63:       # "?name=v" alone -> ""
        ps -= 1
    h.cut_off = ps
    h.cut_len = pe - ps


cdef int step_auth(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Request phase, after the access rules: the route's auth (else the
    listener's) on the request's API key (or Basic credentials, or JWT);
    401 without a known one."""
    cdef lb_http_worker *hw = w.http
    cdef int32_t ai = h.hl.auth
    cdef lb_auth_rt *ar
    cdef shm_auth_stats *st
    cdef uint32_t off = 0, n = 0
    cdef int found, len_
    hw.id_len = 0
    hw.jwt_claims_len = 0
    if h.route >= 0 and h.hl.routes[h.route].auth != -1:
        ai = h.hl.routes[h.route].auth
    if ai < 0:
        return STEP_CONTINUE
    ar = &hw.auth[ai]
    st = &w.auth_stats[ai]
    if ar.basic:
        return basic_step(w, h, r, b, <uint32_t>ai)
    if ar.jwt != NULL:
        return jwt_step(w, h, r, b, <uint32_t>ai)
    if not auth_key_of(ar, b, r, &off, &n):
        lb_add_u64(&st.missing, 1)
        auth_answer(hw, ar)
        return 401
    found = auth_find(w.base, ar.shm, b + off, n, ar.id_value.p)
    if found == 0:
        lb_add_u64(&st.invalid, 1)
        auth_answer(hw, ar)
        return 401
    lb_add_u64(&st.ok, 1)
    if ar.from_query and ar.strip:
        query_cut(h, b, r, off, n, ar.key_name.n)
    ar.id_value.n = found
    memcpy(hw.id, ar.id_value.p, found)
    hw.id_len = <uint8_t>found
    rulesets_push(h.rq_rules, &h.n_rq_rules, &ar.fields)
    return STEP_CONTINUE


cdef void auth_answer(lb_http_worker *hw, lb_auth_rt *ar) noexcept nogil:
    cdef int n = snprintf(hw.answer_fields, LIMIT_ANSWER_MAX, "WWW-Authenticate: ApiKey realm=\"%s\"\r\n",
                          ar.realm.p)
    hw.answer_len = <uint32_t>n if 0 < n < LIMIT_ANSWER_MAX else 0


def _auth_of(site):
    return getattr(site, "auth", "") or ""


def wants_auth(listener):
    return listener.mode == "http" and (bool(_auth_of(listener)) or any(_auth_of(r) for r in listener.routes))


cdef int auth_worker_init(lb_worker *w, Shm shm, object auths) except -1:
    """Each [auth.NAME] (config.Auth, in config order) for this worker."""
    cdef lb_http_worker *hw = w.http
    cdef lb_auth_rt *ar
    hw.n_auth = len(auths)
    hw.auth = <lb_auth_rt *>calloc(max(1, hw.n_auth), sizeof(lb_auth_rt))
    if hw.auth == NULL:
        raise MemoryError()
    for i, a in enumerate(auths):
        ar = &hw.auth[<uint32_t>i]
        ar.shm = shm._auth(i)
        ar.from_query = bool(a.query)
        ar.strip = a.strip
        # basic: the credentials come in Authorization, which strip removes
        ar.key_name = mkstr(a.query if a.query else a.header.lower() if a.type == "api_key" else "authorization")
        ar.id_name = mkstr(a.identity_header)
        ar.id_lower = mkstr(a.identity_header.lower())
        ar.id_value.p = <char *>calloc(AUTH_ID_MAX + 1, 1)
        ar.realm = mkstr(a.name)
        ar.fields.set_name = <lb_str *>calloc(1, sizeof(lb_str))
        ar.fields.set_lower = <lb_str *>calloc(1, sizeof(lb_str))
        ar.fields.remove = <lb_str *>calloc(1, sizeof(lb_str))
        if (ar.id_value.p == NULL or ar.fields.set_name == NULL or ar.fields.set_lower == NULL
                or ar.fields.remove == NULL):
            raise MemoryError()
        # the set's value points at id_value, which each request fills
        ar.fields.n_set = 1
        ar.fields.set_name[0] = ar.id_name
        ar.fields.set_lower[0] = ar.id_lower
        ar.fields.set_value = &ar.id_value
        if ar.strip:
            ar.fields.n_remove = 1
            ar.fields.remove[0] = ar.key_name
        if a.type == "basic":
            basic_worker_init(ar, a)
        elif a.type == "jwt":
            jwt_worker_init(ar, a)
    w.auth_stats = shm.auth_stats + <uint64_t>w.row * shm.auth_head.n_auths
    return 0
