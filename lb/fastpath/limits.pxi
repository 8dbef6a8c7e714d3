# Rate and concurrency limits ([limits.NAME], docs/gateway.md): the steps
# `limits_accept` (tcp listeners, accept phase), `limits` (http, request phase,
# after the access rules) and `limits_release` (end phase), over one table per
# limit in shared memory that every worker of the node shares.
#
# Exact across workers. A key's rate is a GCRA (the generic cell rate
# algorithm of ATM, as in redis-cell and Envoy): one 64-bit theoretical
# arrival time (TAT) per key, moved forward by T = period / rate for each
# request admitted; a request is admitted while TAT - now <= tau = burst * T.
# A compare-and-swap on the TAT makes each decision atomic, whichever worker
# makes it, so N workers admit exactly what one would. A key's requests in
# flight are counted per worker row, [entry][row]: a worker adds to its own
# counter only, under the entry's lock, after summing the rows; when a worker
# dies its row goes with it (the supervisor zeroes it, and frees a lock it
# held), so no count is left behind by a kill -9.
#
# The table: open addressing, a key living in one of LIMIT_PROBE slots from
# its home slot (hash & mask). Slots are never emptied: a new key takes a free
# slot by CAS on its key word, or else evicts a key whose bucket is full
# again (TAT <= now) and that has nothing in flight, never one still counting.
# An evictor holds the home slot's lock (so that two workers inserting one new
# key cannot put it in two slots) and the victim's; a lock-free reader sees
# the victim's lock or its TAT change, and looks again. When nothing can be
# evicted the table is full: counted, and the limit's on_full policy decides.

from libc.stdio cimport snprintf

cdef extern from "sched.h" nogil:
    int sched_yield()

cdef extern from *:
    """
    #define lb_fetch_add_u32(p, v)  __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
    """
    uint32_t lb_fetch_add_u32(uint32_t *p, uint32_t v) nogil

cdef enum:
    LIM_ADMIT = 0
    LIM_OVER_RATE = 1
    LIM_OVER_CONC = 2
    LIM_MOVED = 3                    # the slot changed hands under us: look the key up again
    LIM_FULL = 4                     # no slot for the key

cdef struct lim_key:
    uint64_t hash
    uint8_t kind                     # text_kind of shm_limit_entry
    uint8_t len
    char text[LIMIT_TEXT_MAX]


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline shm_limit_entry *lim_entries(char *base, shm_limit *L) noexcept nogil:
    return <shm_limit_entry *>(base + L.entries_off)


cdef inline uint32_t *lim_conc(char *base, shm_limit *L, uint64_t entry, uint32_t rows) noexcept nogil:
    """The requests-in-flight counters of an entry, one per worker row."""
    return <uint32_t *>(base + L.conc_off) + entry * rows


cdef inline uint32_t lim_in_flight(uint32_t *counts, uint32_t rows) noexcept nogil:
    cdef uint32_t i, n = 0
    for i in range(rows):
        n += lb_load_u32(&counts[i])
    return n


cdef inline void lim_backoff(uint32_t *spins) noexcept nogil:
    """Wait for a lock holder: spin, then give the CPU away (on a loaded 2-core
    machine the holder may be off-CPU; a holder that was killed is unlocked by
    the supervisor once it reaps it)."""
    spins[0] += 1
    if (spins[0] & 127) == 0:
        sched_yield()
    else:
        lb_cpu_relax()


cdef inline void lim_lock(uint32_t *lock, uint32_t me) noexcept nogil:
    cdef uint32_t seen, spins = 0
    while True:
        seen = 0
        if lb_load_u32(lock) == 0 and lb_cas_u32(lock, &seen, me):
            return
        lim_backoff(&spins)


cdef inline bint lim_trylock(uint32_t *lock, uint32_t me) noexcept nogil:
    cdef uint32_t seen = 0
    return lb_cas_u32(lock, &seen, me)


cdef inline void lim_unlock(uint32_t *lock) noexcept nogil:
    lb_release_u32(lock, 0)


cdef inline void lim_set_text(shm_limit_entry *en, lim_key *k) noexcept nogil:
    memcpy(en.text, k.text, k.len)
    en.text_kind = k.kind
    en.text_len = k.len


cdef int64_t lim_evict(char *base, shm_limit *L, uint32_t rows, lim_key *k, uint64_t now, uint32_t me,
                       shm_limit_stats *st) noexcept nogil:
    """No free slot in the key's window: take the one whose bucket has been full
    the longest, if any is full again and has nothing in flight. -1: none."""
    cdef shm_limit_entry *e = lim_entries(base, L)
    cdef uint64_t mask = L.capacity - 1, home = k.hash & mask, j, seen, t, best_tat = <uint64_t>-1, fresh
    cdef int64_t best = -1
    cdef uint32_t i
    cdef bint ok
    lim_lock(&e[home].lock, me)
    # with the home lock held no other worker can be inserting this key: look again
    for i in range(LIMIT_PROBE):
        j = (home + i) & mask
        seen = lb_acquire_u64(&e[j].key)
        if seen == k.hash:
            lim_unlock(&e[home].lock)
            return <int64_t>j
        if seen == 0 and (lb_cas_u64(&e[j].key, &seen, k.hash) or seen == k.hash):
            if seen == 0:
                lim_set_text(&e[j], k)
            lim_unlock(&e[home].lock)
            return <int64_t>j
    for i in range(LIMIT_PROBE):
        j = (home + i) & mask
        if j != home and lb_load_u32(&e[j].lock) != 0:
            continue
        t = lb_acquire_u64(&e[j].tat)
        if t > now or t >= best_tat:
            continue
        if L.conc_off and lim_in_flight(lim_conc(base, L, j, rows), rows):
            continue
        best = <int64_t>j
        best_tat = t
    if best < 0:
        lim_unlock(&e[home].lock)
        return -1
    j = <uint64_t>best
    if j != home and not lim_trylock(&e[j].lock, me):
        lim_unlock(&e[home].lock)
        return -1
    # under the victim's lock: only a lock-free rate update can still move its
    # TAT, and the CAS below loses to it (the key then counts again: kept)
    t = lb_acquire_u64(&e[j].tat)
    ok = t <= now and not (L.conc_off and lim_in_flight(lim_conc(base, L, j, rows), rows))
    if ok:
        # a full bucket either way; a different value fails the CAS of a reader
        # that read the victim's TAT before this eviction
        fresh = 2 if t == 1 else 1
        ok = lb_cas_u64(&e[j].tat, &t, fresh)
    if ok:
        lb_store_u64(&e[j].window, 0)
        lb_store_u32(&e[j].refused, 0)
        lim_set_text(&e[j], k)
        lb_release_u64(&e[j].key, k.hash)
        lb_add_u64(&st.evicted, 1)
    if j != home:
        lim_unlock(&e[j].lock)
    lim_unlock(&e[home].lock)
    return best if ok else -1


cdef int64_t lim_slot(char *base, shm_limit *L, uint32_t rows, lim_key *k, uint64_t now, uint32_t me,
                      shm_limit_stats *st) noexcept nogil:
    """The slot of key k in L's table, taking a free one (or evicting) for a
    new key; -1 when the table has no room for it."""
    cdef shm_limit_entry *e = lim_entries(base, L)
    cdef uint64_t mask = L.capacity - 1, home = k.hash & mask, j, seen
    cdef uint32_t i
    for i in range(LIMIT_PROBE):
        j = (home + i) & mask
        seen = lb_acquire_u64(&e[j].key)
        if seen == k.hash:
            return <int64_t>j
        if seen == 0:
            if lb_cas_u64(&e[j].key, &seen, k.hash):
                lim_set_text(&e[j], k)
                return <int64_t>j
            if seen == k.hash:
                return <int64_t>j
    return lim_evict(base, L, rows, k, now, me, st)


cdef int lim_take_rate(shm_limit *L, shm_limit_entry *en, uint64_t key, uint64_t now, uint64_t *wait,
                       uint64_t *ahead) noexcept nogil:
    """A rate-only limit: the GCRA by CAS, no lock. ahead: TAT - now after the decision."""
    cdef uint64_t s, tat, nt
    cdef uint32_t spins = 0
    while True:
        s = lb_acquire_u64(&en.tat)
        # an evictor holds the lock from before it changes the TAT to after the
        # key is the new one: seen unlocked after this TAT, the key is the TAT's
        if lb_acquire_u32(&en.lock) != 0:
            lim_backoff(&spins)
            continue
        if lb_acquire_u64(&en.key) != key:
            return LIM_MOVED
        tat = s if s > now else now
        if tat - now > L.tolerance_ns:
            wait[0] = tat - now - L.tolerance_ns
            ahead[0] = tat - now
            return LIM_OVER_RATE
        nt = tat + L.emission_ns
        if lb_cas_u64(&en.tat, &s, nt):
            ahead[0] = nt - now
            return LIM_ADMIT


cdef int lim_take_locked(char *base, shm_limit *L, uint32_t rows, uint64_t j, uint64_t key, uint64_t now,
                         uint32_t row, uint64_t *wait, uint64_t *ahead) noexcept nogil:
    """A limit with `concurrent`: rate and requests in flight decided together
    under the entry's lock; an admission adds one to this row's count."""
    cdef shm_limit_entry *en = lim_entries(base, L) + j
    cdef uint32_t *counts = lim_conc(base, L, j, rows)
    cdef uint64_t tat = now
    cdef int rc = LIM_ADMIT
    lim_lock(&en.lock, row + 1)
    if lb_load_u64(&en.key) != key:
        rc = LIM_MOVED
    else:
        if L.emission_ns:
            tat = lb_load_u64(&en.tat)
            if tat < now:
                tat = now
            if tat - now > L.tolerance_ns:
                wait[0] = tat - now - L.tolerance_ns
                ahead[0] = tat - now
                rc = LIM_OVER_RATE
        if rc == LIM_ADMIT and lim_in_flight(counts, rows) >= L.concurrent:
            rc = LIM_OVER_CONC
        if rc == LIM_ADMIT:
            if L.emission_ns:
                lb_release_u64(&en.tat, tat + L.emission_ns)
                ahead[0] = tat + L.emission_ns - now
            lb_store_u32(&counts[row], lb_load_u32(&counts[row]) + 1)
    lim_unlock(&en.lock)
    return rc


cdef inline void lim_count(shm_limit *L, shm_limit_entry *en, uint64_t now) noexcept nogil:
    """The key's requests in this period and the one before (`lb limits show`)."""
    cdef uint64_t p = (now // L.period_ns) & 0xffffff
    cdef uint64_t w = lb_load_u64(&en.window), wp, cur, prev
    while True:
        wp = w >> 40
        cur = (w >> 20) & 0xfffff
        prev = w & 0xfffff
        if wp == p:
            if cur < 0xfffff:
                cur += 1
        elif ((wp + 1) & 0xffffff) == p:
            prev = cur
            cur = 1
        else:
            prev = 0
            cur = 1
        if lb_cas_u64(&en.window, &w, (p << 40) | (cur << 20) | prev):
            return


cdef int lim_decide(char *base, shm_limit *L, shm_limit_stats *st, uint32_t rows, uint32_t row, lim_key *k,
                    uint64_t now, int64_t *slot, uint64_t *wait, uint64_t *ahead) noexcept nogil:
    """One request (tcp: connection) of key k against limit L: LIM_ADMIT (and,
    with `concurrent`, a count held in *slot) or why not. Dry run turns a
    refusal into LIM_ADMIT (counted) holding nothing (slot -1)."""
    cdef int64_t j = -1
    cdef int rc = LIM_MOVED
    cdef int tries
    slot[0] = -1
    wait[0] = 0
    ahead[0] = 0
    for tries in range(8):
        j = lim_slot(base, L, rows, k, now, row + 1, st)
        if j < 0:
            rc = LIM_FULL
            break
        if L.conc_off:
            rc = lim_take_locked(base, L, rows, <uint64_t>j, k.hash, now, row, wait, ahead)
        else:
            rc = lim_take_rate(L, lim_entries(base, L) + j, k.hash, now, wait, ahead)
        if rc != LIM_MOVED:
            break
    if rc == LIM_FULL:
        lb_add_u64(&st.table_full, 1)
        if not (L.flags & LIMIT_F_REFUSE_NEW):
            lb_add_u64(&st.admitted, 1)
            return LIM_ADMIT
        lb_add_u64(&st.refused_rate, 1)
        wait[0] = L.emission_ns if L.emission_ns else 1000000000
        ahead[0] = wait[0]
    elif rc == LIM_MOVED:
        # the key's slot changed hands eight times in a row: not in any real table
        lb_add_u64(&st.admitted, 1)
        return LIM_ADMIT
    else:
        lim_count(L, lim_entries(base, L) + j, now)
        if rc == LIM_ADMIT:
            lb_add_u64(&st.admitted, 1)
            if L.conc_off:
                slot[0] = j
            return LIM_ADMIT
        lb_fetch_add_u32(&(lim_entries(base, L) + j).refused, 1)
        if rc == LIM_OVER_RATE:
            lb_add_u64(&st.refused_rate, 1)
        else:
            lb_add_u64(&st.refused_concurrent, 1)
    if L.flags & LIMIT_F_DRY_RUN:
        lb_add_u64(&st.dry_run, 1)
        return LIM_ADMIT
    return rc


cdef inline void lim_give(char *base, shm_limit *L, uint32_t rows, uint32_t row, uint64_t j) noexcept nogil:
    cdef uint32_t *c = lim_conc(base, L, j, rows) + row
    lb_store_u32(c, lb_load_u32(c) - 1)


# ---- keys --------------------------------------------------------------------------

cdef inline void lim_hash(shm_limit *L, lim_key *k, const uint8_t *p, uint32_t n) noexcept nogil:
    k.hash = lb_xxh64(p, n, L.seed ^ k.kind)
    if k.hash == 0:
        k.hash = 1


cdef bint lim_key_addr(shm_limit *L, sockaddr_storage *ss, lim_key *k) noexcept nogil:
    """source_ip: the client's address cut to the limit's prefix length (an
    IPv4-mapped IPv6 address counts as the IPv4 address it maps)."""
    cdef const uint8_t *b
    cdef uint32_t plen, i
    if ss.ss_family == AF_INET:
        b = <const uint8_t *>&(<sockaddr_in *>ss).sin_addr
        k.kind = 4
    elif ss.ss_family == AF_INET6:
        b = (<sockaddr_in6 *>ss).sin6_addr.s6_addr
        if acl_v4_mapped(b):
            b += 12
            k.kind = 4
        else:
            k.kind = 6
    else:
        return False
    k.len = 4 if k.kind == 4 else 16
    plen = L.prefix4 if k.kind == 4 else L.prefix6
    memcpy(k.text, b, k.len)
    for i in range(k.len):
        if plen >= (i + 1) * 8:
            continue
        k.text[i] = <char>(<uint8_t>k.text[i] & <uint8_t>(0xff00 >> (plen - i * 8) if plen > i * 8 else 0))
    lim_hash(L, k, <const uint8_t *>k.text, k.len)
    return True


cdef bint lim_key_http(lb_http_worker *hw, shm_limit *L, lb_hconn *h, http_req *r, const uint8_t *b,
                       lim_key *k) noexcept nogil:
    """The key of a request; False when the request does not carry it (no such
    header or cookie, or an empty one): such requests are not limited."""
    cdef lb_str name
    cdef uint32_t off = 0, n = 0, i
    cdef bint found = False
    cdef const uint8_t *cv = NULL
    if L.key_kind == LK_SOURCE_IP:
        return lim_key_addr(L, &h.c.peer, k)
    if L.key_kind == LK_API_KEY:
        # the identity the auth step found for this request (none: not limited)
        if hw.id_len == 0:
            return False
        k.kind = 0
        k.len = hw.id_len if hw.id_len < LIMIT_TEXT_MAX else LIMIT_TEXT_MAX
        memcpy(k.text, hw.id, k.len)
        lim_hash(L, k, <const uint8_t *>hw.id, hw.id_len)
        return True
    if L.key_kind == LK_JWT_CLAIM:
        # a claim of the token the auth step verified (none: not limited)
        if not jwt_claim_key(hw, L.key_name, &cv, &n):
            return False
        k.kind = 0
        k.len = <uint8_t>(n if n < LIMIT_TEXT_MAX else LIMIT_TEXT_MAX)
        memcpy(k.text, cv, k.len)
        lim_hash(L, k, cv, n)
        return True
    name.p = L.key_name
    name.n = <uint32_t>strlen(L.key_name)
    if L.key_kind == LK_HEADER:
        for i in range(r.n_fields):
            if ieq_str(b + r.fields[i].name_off, r.fields[i].name_len, &name):
                off = r.fields[i].value_off
                n = r.fields[i].value_len
                found = True
                break
    elif L.key_kind == LK_COOKIE:
        found = cookie_find(b, r, &name, &off, &n)
    if not found or n == 0:
        return False
    k.kind = 0
    k.len = <uint8_t>(n if n < LIMIT_TEXT_MAX else LIMIT_TEXT_MAX)
    memcpy(k.text, b + off, k.len)
    lim_hash(L, k, b + off, n)
    return True


# ---- the steps ---------------------------------------------------------------------

cdef int lim_run(lb_worker *w, lb_limit_list *ll, lb_conn *c, lb_hconn *h, http_req *r,
                 const uint8_t *b) noexcept nogil:
    """Each limit of a list, in order; the first refusal ends it (what the
    connection took from the list's earlier limits is given back by the
    caller). Returns LIM_ADMIT or the refusing limit's index << 8 | why."""
    cdef lim_key k
    cdef shm_limit *L
    cdef shm_limit_stats *st
    cdef uint32_t i, li
    cdef int64_t slot
    cdef uint64_t wait, ahead, now = now_ns()
    cdef int rc
    for i in range(ll.n):
        li = ll.idx[i]
        L = &w.limits[li]
        st = &w.limit_stats[li]
        if not (lim_key_http(w.http, L, h, r, b, &k) if h != NULL else lim_key_addr(L, &c.peer, &k)):
            lb_add_u64(&st.unkeyed, 1)
            continue
        rc = lim_decide(w.base, L, st, w.n_rows, w.row, &k, now, &slot, &wait, &ahead)
        if rc != LIM_ADMIT:
            if h != NULL:
                lim_answer(w, L, rc, wait)
            return <int>(li << 8) | rc
        if slot >= 0 and c.n_held < LIMIT_MAX_HELD:
            c.held_limit[c.n_held] = li
            c.held_entry[c.n_held] = <uint32_t>slot
            c.n_held += 1
    return LIM_ADMIT


cdef void lim_release(lb_worker *w, lb_conn *c) noexcept nogil:
    cdef uint32_t i
    for i in range(c.n_held):
        lim_give(w.base, &w.limits[c.held_limit[i]], w.n_rows, w.row, c.held_entry[i])
    c.n_held = 0


cdef void lim_answer(lb_worker *w, shm_limit *L, int rc, uint64_t wait) noexcept nogil:
    """The fields of the 429: Retry-After (whole seconds, rounded up, so that a
    client that waits that long is admitted) and the IETF RateLimit-Policy and
    RateLimit fields (draft-ietf-httpapi-ratelimit-headers) for a rate refusal."""
    cdef lb_http_worker *hw = w.http
    cdef uint64_t secs = (wait + 999999999) // 1000000000
    cdef uint64_t window = (L.period_ns + 999999999) // 1000000000
    cdef int n = 0
    if rc == LIM_OVER_CONC:
        hw.answer_len = 0
        return
    if secs == 0:
        secs = 1
    n = snprintf(hw.answer_fields, LIMIT_ANSWER_MAX,
                 "Retry-After: %llu\r\nRateLimit-Policy: \"%s\";q=%u;w=%llu\r\nRateLimit: \"%s\";r=0;t=%llu\r\n",
                 <unsigned long long>secs, L.name, <unsigned>L.rate, <unsigned long long>window, L.name,
                 <unsigned long long>secs)
    hw.answer_len = <uint32_t>n if 0 < n < LIMIT_ANSWER_MAX else 0


cdef int step_limits_accept(lb_worker *w, lb_conn *c) noexcept nogil:
    """Accept phase, tcp listeners: the listener's limits on the client's
    address, per connection. A refused client is closed before a byte is read."""
    if lim_run(w, w.listeners[c.listener].limits, c, NULL, NULL, NULL) != LIM_ADMIT:
        lim_release(w, c)
        return 429
    return STEP_CONTINUE


cdef int step_limits(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Request phase, after the access rules: the listener's limits, then the
    route's; the first that refuses answers 429."""
    cdef lb_limit_list *ll = w.listeners[h.c.listener].limits
    if ll != NULL and lim_run(w, ll, &h.c, h, r, b) != LIM_ADMIT:
        lim_release(w, &h.c)
        return 429
    if h.route >= 0:
        ll = h.hl.routes[h.route].limits
        if ll != NULL and lim_run(w, ll, &h.c, h, r, b) != LIM_ADMIT:
            lim_release(w, &h.c)
            return 429
    return STEP_CONTINUE


cdef void step_limits_release(lb_worker *w, lb_conn *c) noexcept nogil:
    """End phase: the requests-in-flight counts of the exchange (tcp: the
    connection) go back."""
    if c.n_held:
        lim_release(w, c)


def wants_limits_accept(listener):
    return listener.mode == "tcp" and bool(getattr(listener, "limits", ()))


def wants_limits(listener):
    return listener.mode == "http" and (bool(getattr(listener, "limits", ()))
                                        or any(getattr(route, "limits", ()) for route in listener.routes))


def wants_limits_release(listener):
    return wants_limits_accept(listener) or wants_limits(listener)


cdef lb_limit_list *limit_list_init(object names, dict limit_index) except? NULL:
    """A listener's or a route's `limits` (names) -> its lb_limit_list; NULL: none."""
    if not names:
        return NULL
    if len(names) > LIMIT_MAX_PER_LIST:
        raise ValueError(f"at most {LIMIT_MAX_PER_LIST} limits in one list")
    cdef lb_limit_list *ll = <lb_limit_list *>calloc(1, sizeof(lb_limit_list))
    if ll == NULL:
        raise MemoryError()
    ll.n = len(names)
    for i, name in enumerate(names):
        ll.idx[i] = limit_index[name]
    return ll


_LIMIT_KEY_KINDS = {"source_ip": LK_SOURCE_IP, "header": LK_HEADER, "cookie": LK_COOKIE, "api_key": LK_API_KEY,
                    "jwt": LK_JWT_CLAIM}
LIMIT_PROBE_SLOTS = LIMIT_PROBE
LIMIT_LIST_MAX = LIMIT_MAX_PER_LIST
LIMIT_KEY_TEXT_MAX = LIMIT_TEXT_MAX
LIMIT_DECISIONS = {LIM_ADMIT: "admitted", LIM_OVER_RATE: "over rate", LIM_OVER_CONC: "over concurrent",
                   LIM_FULL: "table full"}


def limit_spec(limit):
    """What the limits region keeps of a config.Limit (lb/config/limits.py)."""
    kind, _, name = limit.key.partition(":")
    flags = (LIMIT_F_DRY_RUN if limit.dry_run else 0) | (LIMIT_F_REFUSE_NEW if limit.on_full == "refuse" else 0)
    return {"name": limit.name, "key_kind": _LIMIT_KEY_KINDS[kind],
            "key_name": name.lower() if kind == "header" else name,
            "prefix4": limit.ipv4_prefix, "prefix6": limit.ipv6_prefix, "flags": flags,
            "concurrent": limit.concurrent, "capacity": limit.capacity, "period_ns": limit.period_ns,
            "rate": limit.rate, "burst": limit.burst}
