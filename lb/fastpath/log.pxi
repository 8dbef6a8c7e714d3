# Access logs and request ids: the `log` step of the end phase, and what feeds it.
#
# A record is built where the data path already is, with the GIL released:
# timings and byte counts are kept in the connection (lb_logctx, in lb_conn)
# as they happen; an http exchange's strings (method, host, path, ...) are
# copied from the request head into a staging record when the head is parsed,
# since the head's bytes are gone by the time the exchange ends. At the end
# the record goes into this worker's ring in shared memory, or is dropped and
# counted when the ring is full: a worker never waits for the logger process,
# which reads every ring, formats and writes (lb/logger.py, and the compiled
# formatter LogFormat below).

from lb.includes.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, tm, gmtime_r, time_t

cdef enum:
    LOGF_RID_NEW = 128               # staging only: lb made the request id, so it sends it on
    RID_HEX = 32                     # a generated request id: 32 hex digits

cdef const char *HEXDIGITS = b"0123456789abcdef"


cdef inline void log_clock(lb_worker *w) noexcept nogil:
    """Once per turn of the loop (when a listener logs): the time every
    timing point of this turn takes, as HAProxy keeps its date per loop. A
    point is then as late as the events of its turn, at the cost of two
    clock reads per turn instead of several per request."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    w.now_us = <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)
    clock_gettime(CLOCK_REALTIME, &ts)
    w.unix_us = <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)


cdef inline void log_conn_start(lb_worker *w, lb_conn *c) noexcept nogil:
    """At accept: whether this connection's timings are kept (its listener
    logs, or metrics count), and its start."""
    c.lg.on = w.listeners[c.listener].log_on or w.metrics != NULL
    if c.lg.on:
        c.lg.t_start = w.now_us


cdef inline void log_mark(lb_worker *w, lb_conn *c, uint64_t *field) noexcept nogil:
    """A timing point, once: the first time it is reached counts."""
    if c.lg.on and field[0] == 0:
        field[0] = w.now_us


cdef inline void log_conn_failed(lb_hconn *h, uint8_t term) noexcept nogil:
    """An http client connection fails before its first request (its TLS
    handshake, its PROXY header): logged as an exchange of its own, as a tcp
    listener logs the same failures."""
    if h.c.lg.on:
        h.in_exchange = 1
        h.c.lg.term = term


cdef inline void log_term(lb_conn *c, uint8_t term) noexcept nogil:
    """Why it ends; the first cause named wins (a reset after a timeout is
    still a timeout)."""
    if c.lg.term == TERM_OK:
        c.lg.term = term


cdef void tls_note_session(lb_sock *s, SSL *ssl) noexcept nogil:
    """A client's handshake completed: keep what the log says of it in the
    connection itself, since the SSL object may not outlive the handshake."""
    # the client socket is the first of lb_conn.sk, which the handshake's callers pass
    cdef lb_conn *c = <lb_conn *>(<char *>s - <size_t>(<char *>&(<lb_conn *>NULL).sk[0] - <char *>NULL))
    cdef const char *name
    cdef const SSL_CIPHER *cipher
    cdef size_t n
    if not c.lg.on:
        return
    c.lg.tls_version = <uint16_t>SSL_version(ssl)
    cipher = SSL_get_current_cipher(ssl)
    c.lg.tls_cipher = <uint16_t>SSL_CIPHER_get_protocol_id(cipher) if cipher != NULL else 0
    name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    c.lg.sni_len = 0
    if name != NULL and c.lg.sni == NULL:
        c.lg.sni = <char *>malloc(LOG_SNI_MAX)   # a plain connection pays nothing for it
    if name != NULL and c.lg.sni != NULL:
        n = strlen(name)
        if n > LOG_SNI_MAX:
            n = LOG_SNI_MAX
        memcpy(c.lg.sni, name, n)
        c.lg.sni_len = <uint8_t>n


# ---- http: the exchange's strings and its request id -------------------------------------

cdef shm_log_record *log_rec_take(lb_worker *w) noexcept nogil:
    cdef shm_log_record *r = w.log_free
    if r != NULL:
        w.log_free = (<shm_log_record **>r)[0]
        return r
    return <shm_log_record *>malloc(sizeof(shm_log_record))


cdef inline void log_rec_give(lb_worker *w, lb_hconn *h) noexcept nogil:
    if h.lrec != NULL:
        (<shm_log_record **>h.lrec)[0] = w.log_free
        w.log_free = h.lrec
        h.lrec = NULL


cdef inline uint32_t log_data_len(const shm_log_record *r) noexcept nogil:
    return (<uint32_t>r.method_len + r.host_len + r.path_len + r.rid_len + r.ua_len + r.referer_len
            + r.sni_len)


cdef inline char *log_rid(shm_log_record *r) noexcept nogil:
    return r.data + <uint32_t>r.method_len + r.host_len + r.path_len


cdef inline uint32_t log_copy(char *dst, uint32_t cap, const uint8_t *src, uint32_t n) noexcept nogil:
    if n > cap:
        n = cap
    memcpy(dst, src, n)
    return n


cdef void rid_make(lb_worker *w, char *out) noexcept nogil:
    """32 hex digits: this worker's random prefix, then its count. Unique
    across workers and restarts (the prefix is drawn at each start) for the
    price of a counter."""
    cdef uint64_t a = w.rid_prefix, b = w.rid_seq
    cdef int i
    w.rid_seq += 1
    for i in range(16):
        out[15 - i] = HEXDIGITS[a & 15]
        a >>= 4
        out[31 - i] = HEXDIGITS[b & 15]
        b >>= 4


cdef void log_exchange_start(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """A request head was parsed: copy what the record shows of it, and find
    or make its request id, before any step can refuse it."""
    cdef lb_http_listener *l = h.hl
    cdef shm_log_record *rec
    cdef http_field *f
    cdef http_field *ua = NULL
    cdef http_field *referer = NULL
    cdef http_field *rid = NULL
    cdef char *p
    cdef uint32_t i
    if h.c.lg.on:
        if h.c.lg.t_start == 0:
            h.c.lg.t_start = w.now_us    # a pipelined request: it starts now
        h.c.lg.t_request = w.now_us
        h.c.lg.bytes_in += r.head_len
    if not w.listeners[h.c.listener].log_on and l.rid_name.n == 0:
        return                       # metrics alone need no strings
    if h.lrec == NULL:
        h.lrec = log_rec_take(w)
        if h.lrec == NULL:
            return
    rec = h.lrec
    rec.flags = 0
    rec.http_version = 20 if h.h2role == H2_STREAM else <uint8_t>r.version
    for i in range(r.n_fields):
        f = &r.fields[i]
        if f.name_len == 10 and ieq(b + f.name_off, 10, b"user-agent"):
            ua = f
        elif f.name_len == 7 and ieq(b + f.name_off, 7, b"referer"):
            referer = f
        elif l.rid_name.n and rid == NULL and f.value_len and ieq_str(b + f.name_off, f.name_len, &l.rid_lower):
            rid = f                  # the client's (or an upstream proxy's) id is kept and passed on as it is
    # the strings back to back, in the record's order
    p = rec.data
    rec.method_len = <uint8_t>log_copy(p, LOG_METHOD_MAX, b + r.method_off, r.method_len)
    p += rec.method_len
    rec.host_len = 0
    if r.host >= 0:
        rec.host_len = <uint8_t>log_copy(p, LOG_HOST_MAX, b + r.fields[r.host].value_off, r.fields[r.host].value_len)
        p += rec.host_len
    rec.path_len = <uint16_t>log_copy(p, LOG_PATH_MAX, b + r.target_off, r.target_len)
    p += rec.path_len
    rec.rid_len = 0
    if rid != NULL:
        rec.rid_len = <uint8_t>log_copy(p, LOG_RID_MAX, b + rid.value_off, rid.value_len)
    elif l.rid_name.n:
        rid_make(w, p)
        rec.rid_len = RID_HEX
        rec.flags = LOGF_RID_NEW
    p += rec.rid_len
    rec.ua_len = 0
    if ua != NULL:
        rec.ua_len = <uint8_t>log_copy(p, LOG_UA_MAX, b + ua.value_off, ua.value_len)
        p += rec.ua_len
    rec.referer_len = 0
    if referer != NULL:
        rec.referer_len = <uint8_t>log_copy(p, LOG_REFERER_MAX, b + referer.value_off, referer.value_len)
    rec.sni_len = 0


cdef void log_exchange_bare(lb_worker *w, lb_hconn *h) noexcept nogil:
    """lb answers before a request head was taken (400, 408): no strings to
    log, but the answer and its line share a request id all the same."""
    if h.hl.rid_name.n == 0 or h.lrec != NULL:
        return
    h.lrec = log_rec_take(w)
    if h.lrec == NULL:
        return
    memset(h.lrec, 0, LOG_HEAD_SIZE)
    rid_make(w, h.lrec.data)
    h.lrec.rid_len = RID_HEX


cdef inline bint rid_emit(lb_hconn *h, lb_hbuf *o) noexcept nogil:
    """The request id field into a head being written (to the backend: only
    one lb made; to the client: always)."""
    return ob_field(o, h.hl.rid_name.p, h.hl.rid_name.n, log_rid(h.lrec), h.lrec.rid_len)


cdef inline bint rid_has(lb_hconn *h) noexcept nogil:
    return h.lrec != NULL and h.lrec.rid_len != 0 and h.hl.rid_name.n != 0


# ---- the end phase: the record --------------------------------------------------------

cdef inline uint8_t log_default_term(int code) noexcept nogil:
    """How an exchange lb answered itself ended, from the status, when the
    path that answered did not say more."""
    if code == 408:
        return TERM_REQUEST_TIMEOUT
    if code == 504:
        return TERM_SERVER_TIMEOUT
    if code == 503:
        return TERM_NO_BACKEND
    if code == 502:
        return TERM_BAD_RESPONSE
    return TERM_BAD_REQUEST


cdef void step_log(lb_worker *w, lb_conn *c) noexcept nogil:
    """End phase: this exchange's (or tcp connection's) record into the ring.
    Errors are always kept; the rest as the listener's sample rate says."""
    cdef shm_log_ring *ring = w.log_ring
    cdef lb_listener_rt *l = &w.listeners[c.listener]
    cdef lb_hconn *h = NULL
    cdef shm_log_record *rec
    cdef uint64_t head, now, start, rnd
    cdef uint8_t flags = 0
    cdef int32_t slot
    if ring == NULL or not l.log_on:
        return
    if c.kind == KIND_HTTP:
        h = <lb_hconn *>c
        flags = LOGF_HTTP
    if c.lg.answered:
        flags |= LOGF_ANSWERED
    if c.lg.status >= 500 or c.lg.answered or c.lg.term != TERM_OK:
        flags |= LOGF_ERROR
    rnd = lb_splitmix64(&w.rng)
    if not (flags & LOGF_ERROR) and (rnd & <uint64_t>0xffffffffU) >= l.log_sample:
        return
    head = ring.head
    if head - lb_acquire_u64(&ring.tail) > w.log_mask:
        lb_add_u64(&ring.drops, 1)
        return
    rec = &w.log_recs[head & w.log_mask]
    # only the bytes in use: the ring is many MiB, each line of it a cache miss
    if h != NULL and h.lrec != NULL:
        log_copy_strings(rec, h.lrec)
    else:
        rec.http_version = 0
        rec.method_len = rec.host_len = rec.rid_len = rec.ua_len = rec.referer_len = 0
        rec.path_len = 0
    rec.sni_len = 0
    now = w.now_us
    start = c.lg.t_start if c.lg.t_start and c.lg.t_start <= now else now
    rec.time_us = w.unix_us - (now - start)
    rec.t_request_us = <int64_t>(c.lg.t_request - start) if c.lg.t_request else -1
    rec.t_connect_us = <int64_t>(c.lg.t_connect - start) if c.lg.t_connect else -1
    rec.t_response_us = <int64_t>(c.lg.t_response - start) if c.lg.t_response else -1
    rec.t_total_us = <int64_t>(now - start)
    rec.bytes_in = c.lg.bytes_in
    rec.bytes_out = c.lg.bytes_out
    rec.sample = <uint32_t>(rnd >> 32)
    rec.status = c.lg.status
    rec.listener = l.cfg_index
    rec.route = <int16_t>h.route if h != NULL else -1
    # the pool once one was chosen: not for what was refused before routing
    rec.pool = <int16_t>c.pool if (h == NULL or (c.lg.t_request and c.lg.step != 1)) else -1
    slot = c.slot
    if slot < 0 and c.tries > 0:
        slot = c.tried[c.tries - 1]  # the last backend tried, when none is held now
    rec.slot = slot
    rec.tries = <uint8_t>c.tries
    rec.term = c.lg.term
    rec.step = c.lg.step
    rec.worker = <uint8_t>w.row
    rec.tls_version = c.lg.tls_version
    rec.tls_cipher = c.lg.tls_cipher
    if c.lg.tls_version:
        flags |= LOGF_TLS
        if c.lg.sni_len:
            memcpy(rec.data + log_data_len(rec), c.lg.sni, c.lg.sni_len)   # last of the strings
            rec.sni_len = c.lg.sni_len
    if c.peer.ss_family == AF_INET6:
        flags |= LOGF_V6
        memcpy(rec.client_addr, (<sockaddr_in6 *>&c.peer).sin6_addr.s6_addr, 16)
        rec.client_port = ntohs((<sockaddr_in6 *>&c.peer).sin6_port)
    else:
        memcpy(rec.client_addr, &(<sockaddr_in *>&c.peer).sin_addr.s_addr, 4)
        rec.client_port = ntohs((<sockaddr_in *>&c.peer).sin_port)
    rec.flags = flags
    lb_release_u64(&ring.head, head + 1)


cdef inline void log_copy_strings(shm_log_record *rec, const shm_log_record *src) noexcept nogil:
    rec.http_version = src.http_version
    rec.method_len = src.method_len
    rec.host_len = src.host_len
    rec.path_len = src.path_len
    rec.rid_len = src.rid_len
    rec.ua_len = src.ua_len
    rec.referer_len = src.referer_len
    memcpy(rec.data, src.data, log_data_len(src) - src.sni_len)


cdef inline void log_conn_free(lb_conn *c) noexcept nogil:
    """A connection's struct goes back to its free list."""
    if c.lg.sni != NULL:
        free(c.lg.sni)
        c.lg.sni = NULL


cdef inline void log_exchange_reset(lb_conn *c) noexcept nogil:
    """After an exchange's end: the next one starts clean (the connection's
    TLS facts stay). Its start is its first byte (log_mark in the reader)."""
    c.lg.t_start = 0
    c.lg.t_request = 0
    c.lg.t_connect = 0
    c.lg.t_response = 0
    c.lg.bytes_in = 0
    c.lg.bytes_out = 0
    c.lg.status = 0
    c.lg.term = TERM_OK
    c.lg.step = 0
    c.lg.answered = 0


def wants_log(listener):
    return bool(getattr(listener, "logs", ()))


cdef int log_worker_init(lb_worker *w, Shm shm, uint32_t row) except -1:
    cdef shm_log_head *lh = <shm_log_head *>shm.region_addr("log_rings")
    w.rid_prefix = int.from_bytes(_os.urandom(8), "little")
    if lh.n_records == 0:
        return 0
    w.log_ring = <shm_log_ring *>(<char *>lh + sizeof(shm_log_head) + <uint64_t>row * log_ring_bytes(lh.n_records))
    w.log_recs = <shm_log_record *>(<char *>w.log_ring + sizeof(shm_log_ring))
    w.log_mask = lh.n_records - 1
    return 0


cdef inline uint64_t log_ring_bytes(uint64_t n_records) noexcept nogil:
    return sizeof(shm_log_ring) + n_records * sizeof(shm_log_record)


cdef int log_listener_init(lb_listener_rt *l, object listener, int cfg_index) except -1:
    l.cfg_index = cfg_index
    logs = getattr(listener, "logs", ())
    l.log_on = 1 if logs else 0
    # the listener's highest rate: each log keeps its own share in the logger
    rate = max([log.sample for log in logs], default=0.0)
    l.log_sample = min(<uint64_t>1 << 32, <uint64_t>(rate * 4294967296.0 + 0.5))
    return 0


cdef int rid_listener_init(lb_http_listener *hl, object listener) except -1:
    rid = getattr(listener, "request_id", "") or ""
    if rid:
        hl.rid_name = mkstr(rid)
        hl.rid_lower = mkstr(rid.lower())
    return 0
