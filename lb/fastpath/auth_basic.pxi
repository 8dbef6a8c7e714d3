# HTTP Basic ([auth.NAME] type = "basic", docs/gateway.md), in the auth step.
#
# A password is checked against its htpasswd hash (bcrypt, SHA-2 crypt), which
# is slow on purpose: tens of milliseconds. That never runs in the event loop.
# The request is parked (HS_PARKED) and the check queued to the worker's
# verifier threads; the loop goes on serving everyone else, and the thread's
# answer (through an eventfd in the loop's epoll set) resumes the request at
# the step after auth, or answers 401. A success is cached, keyed by an HMAC
# of the credentials under a secret of the worker (never the password
# itself), for cache_ttl: a client that sends the same credentials on every
# request pays the slow hash once.

from lb.includes.crypt cimport crypt_rn, crypt_data
from lb.includes.pthread cimport (pthread_t, pthread_mutex_t, pthread_cond_t, pthread_create, pthread_detach,
                                  pthread_mutex_init, pthread_mutex_lock, pthread_mutex_unlock, pthread_cond_init,
                                  pthread_cond_wait, pthread_cond_signal, eventfd, EFD_NONBLOCK, EFD_CLOEXEC)
from lb.includes.unistd cimport write

cdef extern from "strings.h" nogil:
    int strncasecmp(const char *a, const char *b, size_t n)

cdef enum:
    VERIFY_THREADS = 2               # per worker: a second keeps one slow check from holding up the next
    VERIFY_QUEUE = 256               # checks waiting or done, per worker; more at once: 503
    VERIFY_PASS_MAX = 256            # bytes of a password (more: 401)
    BASIC_DECODED_MAX = 512          # bytes of user:password
    TAG_VERIFIED = 7                 # epoll data of the verifier's eventfd (TAG_SIGNAL with no pointer)


cdef struct lb_verify_job:
    lb_hconn *h
    uint32_t seq                     # h.park_seq when parked: h may be closed and reused by then
    uint32_t auth
    uint32_t user
    const char *hash                 # the user's htpasswd hash (the worker's, constant)
    char password[VERIFY_PASS_MAX + 1]
    uint8_t mac[16]
    int state                        # JOB_* (under the verifier's lock)
    int ok                           # the thread's answer: 1 the password matches, 0 not


cdef enum:
    JOB_WAITING = 0
    JOB_CHECKING = 1
    JOB_CHECKED = 2
    JOB_TAKEN = 3                    # handed back to the loop; its slot is free once head passes it


cdef struct lb_verifier:
    pthread_mutex_t lock
    pthread_cond_t wake
    int efd
    lb_verify_job jobs[VERIFY_QUEUE] # a ring: [head, todo) taken by threads (checking or checked), [todo, tail) wait
    uint32_t head                    # the oldest job not yet handed back to the loop
    uint32_t todo                    # the oldest job no thread took
    uint32_t tail                    # where the next job goes


cdef inline bint const_eq(const char *a, const char *b) noexcept nogil:
    """Equal strings, in a time that does not depend on where they differ."""
    cdef size_t n = strlen(a), m = strlen(b), i
    cdef uint8_t d = 0 if n == m else 1
    for i in range(n if n < m else m):
        d |= <uint8_t>(a[i] ^ b[i])
    return d == 0


cdef void *verify_thread(void *arg) noexcept nogil:
    """One verifier thread: take the oldest waiting job, check its password
    against its hash (crypt_rn: bcrypt or SHA-2 crypt), mark it checked, wake
    the loop."""
    cdef lb_verifier *v = <lb_verifier *>arg
    cdef crypt_data *data = <crypt_data *>calloc(1, sizeof(crypt_data))
    cdef lb_verify_job *job
    cdef const char *out
    cdef uint64_t one = 1
    cdef uint32_t j
    cdef int ok
    while True:
        pthread_mutex_lock(&v.lock)
        while v.todo == v.tail:
            pthread_cond_wait(&v.wake, &v.lock)
        j = v.todo
        v.todo += 1
        job = &v.jobs[j % VERIFY_QUEUE]
        job.state = JOB_CHECKING
        pthread_mutex_unlock(&v.lock)
        # the job is this thread's until it is marked checked: the loop only
        # reads a checked job, and reuses a slot only once it took it back
        out = crypt_rn(job.password, job.hash, data, sizeof(crypt_data)) if data != NULL else NULL
        ok = out != NULL and out[0] != b'*' and const_eq(out, job.hash)
        memset(job.password, 0, sizeof(job.password))
        pthread_mutex_lock(&v.lock)
        job.ok = ok
        job.state = JOB_CHECKED
        pthread_mutex_unlock(&v.lock)
        write(v.efd, &one, 8)
    return NULL


cdef lb_verifier *verifier_start(lb_worker *w) noexcept nogil:
    """The worker's verifier (threads and eventfd), made at its first need."""
    cdef lb_verifier *v = <lb_verifier *>w.http.verifier
    cdef pthread_t t
    cdef epoll_event ev
    cdef int i
    if v != NULL:
        return v
    v = <lb_verifier *>calloc(1, sizeof(lb_verifier))
    if v == NULL:
        return NULL
    pthread_mutex_init(&v.lock, NULL)
    pthread_cond_init(&v.wake, NULL)
    v.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if v.efd < 0:
        free(v)
        return NULL
    ev.events = EPOLLIN
    ev.data.u64 = TAG_VERIFIED
    epoll_ctl(w.epfd, EPOLL_CTL_ADD, v.efd, &ev)
    for i in range(VERIFY_THREADS):
        if pthread_create(&t, NULL, verify_thread, v) == 0:
            pthread_detach(t)
    w.http.verifier = v
    return v


cdef int basic_park(lb_worker *w, lb_hconn *h, uint32_t ai, uint32_t user, const char *password, uint32_t n,
                    const uint8_t *mac) noexcept nogil:
    """Queue the check of a password and park the request: STEP_PARKED, or
    503 when the queue is full (or the threads could not start)."""
    cdef lb_verifier *v = verifier_start(w)
    cdef lb_verify_job *job
    if v == NULL:
        return 503
    pthread_mutex_lock(&v.lock)
    if v.tail - v.head >= VERIFY_QUEUE:
        pthread_mutex_unlock(&v.lock)
        return 503
    job = &v.jobs[v.tail % VERIFY_QUEUE]
    w.http.park_seq += 1
    h.park_seq = w.http.park_seq
    job.h = h
    job.seq = h.park_seq
    job.auth = ai
    job.user = user
    job.hash = w.http.auth[ai].hashes[user]
    memcpy(job.password, password, n)
    job.password[n] = 0
    memcpy(job.mac, mac, 16)
    job.ok = 0
    job.state = JOB_WAITING
    v.tail += 1
    pthread_cond_signal(&v.wake)
    pthread_mutex_unlock(&v.lock)
    return STEP_PARKED


cdef void basic_on_verified(lb_worker *w) noexcept nogil:
    """The eventfd said jobs were checked: hand each checked one back, in
    whatever order they finished (a slow check, a wrong password with a high
    bcrypt cost, holds back no other client's answer)."""
    cdef lb_verifier *v = <lb_verifier *>w.http.verifier
    cdef uint64_t count
    cdef lb_verify_job *job
    cdef lb_verify_job got
    cdef lb_auth_rt *ar
    cdef uint32_t j
    cdef bint found
    if v == NULL:
        return
    read(v.efd, &count, 8)
    while True:
        found = False
        pthread_mutex_lock(&v.lock)
        for j in range(v.head, v.todo):
            job = &v.jobs[j % VERIFY_QUEUE]
            if job.state == JOB_CHECKED:
                memcpy(&got, job, sizeof(lb_verify_job))
                job.state = JOB_TAKEN
                found = True
                break
        while v.head != v.todo and v.jobs[v.head % VERIFY_QUEUE].state == JOB_TAKEN:
            v.head += 1
        pthread_mutex_unlock(&v.lock)
        if not found:
            return
        ar = &w.http.auth[got.auth]
        lb_add_u64(&w.auth_stats[got.auth].verified, 1)
        if got.h.st != HS_PARKED or got.h.park_seq != got.seq:
            continue                 # the client left (or timed out) while it was checked
        if got.ok:
            basic_cache_put(ar, got.mac, got.user, w.now_ms)
            lb_add_u64(&w.auth_stats[got.auth].ok, 1)
            basic_identity(w, got.h, ar, got.user)
            h_resume_request(w, got.h, STEP_CONTINUE)
        else:
            lb_add_u64(&w.auth_stats[got.auth].invalid, 1)
            basic_answer(w.http, ar)
            h_resume_request(w, got.h, 401)


# ---- credentials ---------------------------------------------------------------------------

cdef inline int b64_value(uint8_t c) noexcept nogil:
    if 65 <= c <= 90:
        return c - 65
    if 97 <= c <= 122:
        return c - 71
    if 48 <= c <= 57:
        return c + 4
    if c == 43:
        return 62
    if c == 47:
        return 63
    return -1


cdef int b64_decode(const uint8_t *s, uint32_t n, char *out, uint32_t cap) noexcept nogil:
    """Standard base64 with padding; the length, or -1."""
    cdef uint32_t i, o = 0, acc = 0, bits = 0, pad = 0
    cdef int v
    for i in range(n):
        if s[i] == 61:               # '='
            pad += 1
            continue
        if pad:
            return -1
        v = b64_value(s[i])
        if v < 0:
            return -1
        acc = (acc << 6) | <uint32_t>v
        bits += 6
        if bits >= 8:
            bits -= 8
            if o >= cap:
                return -1
            out[o] = <char>((acc >> bits) & 0xff)
            o += 1
    if (n - pad) % 4 == 1 or pad > 2:
        return -1
    return <int>o


cdef int basic_user(lb_auth_rt *ar, const char *name, uint32_t n) noexcept nogil:
    """The index of a user (binary search over the sorted names), or -1."""
    cdef int lo = 0, hi = <int>ar.n_users - 1, mid, c
    cdef size_t m
    while lo <= hi:
        mid = (lo + hi) // 2
        m = strlen(ar.users[mid])
        c = strncmp(ar.users[mid], name, n if n < m else m)
        if c == 0:
            c = (m > n) - (m < n)
        if c == 0:
            return mid
        if c < 0:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


cdef uint8_t BASIC_SECRET[32]        # the worker's key for the cache's MACs (random at start)


cdef inline uint32_t cache_slot(lb_auth_rt *ar, const uint8_t *mac) noexcept nogil:
    cdef uint32_t s
    memcpy(&s, mac, 4)
    return s & ar.cache_mask


cdef bint basic_cache_get(lb_auth_rt *ar, const uint8_t *mac, uint64_t now, uint32_t *user) noexcept nogil:
    cdef lb_auth_cache *e = &ar.cache[cache_slot(ar, mac)]
    if e.until_ms > now and memcmp(e.mac, mac, 16) == 0:
        user[0] = e.user
        return True
    return False


cdef void basic_cache_put(lb_auth_rt *ar, const uint8_t *mac, uint32_t user, uint64_t now) noexcept nogil:
    cdef lb_auth_cache *e = &ar.cache[cache_slot(ar, mac)]
    memcpy(e.mac, mac, 16)
    e.user = user
    e.until_ms = now + ar.cache_ttl_ms


cdef void basic_identity(lb_worker *w, lb_hconn *h, lb_auth_rt *ar, uint32_t user) noexcept nogil:
    cdef size_t n = strlen(ar.users[user])
    if n > AUTH_ID_MAX:
        n = AUTH_ID_MAX
    memcpy(ar.id_value.p, ar.users[user], n)
    ar.id_value.n = <uint32_t>n
    memcpy(w.http.id, ar.users[user], n)
    w.http.id_len = <uint8_t>n
    rulesets_push(h.rq_rules, &h.n_rq_rules, &ar.fields)


cdef void basic_answer(lb_http_worker *hw, lb_auth_rt *ar) noexcept nogil:
    cdef int n = snprintf(hw.answer_fields, LIMIT_ANSWER_MAX,
                          "WWW-Authenticate: Basic realm=\"%s\", charset=\"UTF-8\"\r\n", ar.realm.p)
    hw.answer_len = <uint32_t>n if 0 < n < LIMIT_ANSWER_MAX else 0


cdef int basic_step(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b, uint32_t ai) noexcept nogil:
    """The Basic credentials of the request: from the cache, or parked for a
    verifier thread; 401 without them or for an unknown user."""
    cdef lb_auth_rt *ar = &w.http.auth[ai]
    cdef shm_auth_stats *st = &w.auth_stats[ai]
    cdef char decoded[BASIC_DECODED_MAX]
    cdef const uint8_t *v = NULL
    cdef uint32_t n = 0, i, colon, user
    cdef int len_, u
    cdef uint8_t mac[32]
    cdef unsigned int maclen = 32
    cdef uint8_t hbuf[4 + BASIC_DECODED_MAX]
    for i in range(r.n_fields):
        if name_is(b, &r.fields[i], b"authorization"):
            v = b + r.fields[i].value_off
            n = r.fields[i].value_len
            break
    if v == NULL or n < 7 or strncasecmp(<const char *>v, b"basic ", 6) != 0:
        lb_add_u64(&st.missing, 1)
        basic_answer(w.http, ar)
        return 401
    v += 6
    n -= 6
    while n and v[0] == 32:
        v += 1
        n -= 1
    len_ = b64_decode(v, n, decoded, BASIC_DECODED_MAX)
    colon = 0
    while len_ > 0 and colon < <uint32_t>len_ and decoded[colon] != b':':
        colon += 1
    if len_ <= 0 or colon >= <uint32_t>len_ or <uint32_t>len_ - colon - 1 > VERIFY_PASS_MAX:
        lb_add_u64(&st.invalid, 1)
        basic_answer(w.http, ar)
        return 401
    u = basic_user(ar, decoded, colon)
    if u < 0 or memchr(decoded + colon + 1, 0, <uint32_t>len_ - colon - 1) != NULL:
        lb_add_u64(&st.invalid, 1)
        basic_answer(w.http, ar)
        return 401
    # the cache's key: an HMAC of which auth and the credentials, under the
    # worker's secret, so that the cache holds no password
    memcpy(hbuf, &ai, 4)
    memcpy(hbuf + 4, decoded, len_)
    HMAC(EVP_sha256(), BASIC_SECRET, 32, hbuf, 4 + len_, mac, &maclen)
    memset(hbuf, 0, sizeof(hbuf))
    if basic_cache_get(ar, mac, w.now_ms, &user) and user == <uint32_t>u:
        memset(decoded, 0, sizeof(decoded))
        lb_add_u64(&st.cached, 1)
        lb_add_u64(&st.ok, 1)
        basic_identity(w, h, ar, user)
        return STEP_CONTINUE
    len_ = basic_park(w, h, ai, <uint32_t>u, decoded + colon + 1, <uint32_t>len_ - colon - 1, mac)
    memset(decoded, 0, sizeof(decoded))
    if len_ == 503:
        lb_add_u64(&st.busy, 1)
    return len_


cdef int basic_worker_init(lb_auth_rt *ar, object auth) except -1:
    """An [auth.NAME] of type basic: its users, sorted, and its cache."""
    users = sorted(auth.users)
    ar.basic = 1
    ar.n_users = len(users)
    ar.users = <char **>calloc(max(1, len(users)), sizeof(char *))
    ar.hashes = <char **>calloc(max(1, len(users)), sizeof(char *))
    if ar.users == NULL or ar.hashes == NULL:
        raise MemoryError()
    for i, (name, hashed) in enumerate(users):
        ar.users[i] = mkstr(name).p
        ar.hashes[i] = mkstr(hashed).p
    size = 1
    while size < max(16, auth.cache_size):
        size *= 2
    ar.cache = <lb_auth_cache *>calloc(size, sizeof(lb_auth_cache))
    if ar.cache == NULL:
        raise MemoryError()
    ar.cache_mask = size - 1
    ar.cache_ttl_ms = <uint64_t>(auth.cache_ttl * 1000)
    secret = _os.urandom(32)
    memcpy(BASIC_SECRET, <char *>secret, 32)
    return 0
