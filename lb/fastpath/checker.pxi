# The checker: active health checks of every backend slot, and passive
# ejection from the workers' failure counters, in one epoll loop with the GIL
# released. It writes only the health fields of shm_backend (its single writer).
#
# Each slot is a small state machine (idle -> connecting -> reading -> idle) with
# its own timers, so one slow backend delays no other check. Checks are spread
# over the interval at start and jittered by +-5% after, never all at once.
# Python runs only to log a state change (rare: with the GIL, once per change).

from lb.includes.socket cimport sockaddr_in, sockaddr_in6

cdef extern from "arpa/inet.h" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from "stdio.h" nogil:
    int snprintf(char *buf, size_t size, const char *fmt, ...)

cdef extern from "string.h" nogil:
    void *memmem(const void *haystack, size_t hl, const void *needle, size_t nl)

cdef extern from "sys/time.h" nogil:
    pass

cdef enum:
    HC_NONE = 0
    HC_TCP = 1
    HC_HTTP = 2

cdef enum:
    HS_IDLE = 0
    HS_CONNECTING = 1
    HS_READING = 2
    HS_HANDSHAKE = 3                 # pools with TLS: the handshake, before the check proper
    HS_SETTLING = 4                  # a TLS tcp check: handshaken, close_notify sent; what the backend says last

cdef enum:
    HC_RESP_MAX = 16384          # an http check reads at most this much of a response
    HC_REQ_MAX = 1024
    HC_PASSIVE_TICK_MS = 50      # how often the workers' failure counters are read
    HC_MAX_EVENTS = 256
    HC_EJECT_DOUBLINGS = 5       # eject_time at most doubles 5 times (x32)
    HC_SLACK_MAX_MS = 20         # checks due this soon start in the same scan (at most)


cdef struct hc_pool:
    uint32_t type
    uint64_t interval_ms
    uint64_t fast_ms
    uint64_t down_ms
    uint64_t timeout_ms
    uint32_t rise
    uint32_t fall
    uint32_t expect_lo
    uint32_t expect_hi
    char method[40]
    char path[512]
    char host[256]                   # "" = the backend's address
    char *expect_body
    uint32_t expect_body_len
    uint32_t passive_threshold       # 0 = off
    uint32_t max_ejected_pct
    uint64_t eject_ms
    lb_tls_client *tls               # the pool's TLS to its backends: checks speak it too


cdef struct hc_target:
    uint32_t pool                    # index of the pool (and of its hc_pool)
    int32_t slot                     # global backend slot
    int fd
    uint32_t state
    uint64_t next_ms
    uint64_t deadline_ms
    uint64_t started_us
    char *buf                        # request while sending, then the response
    uint32_t len
    lb_sock sk                       # the check's connection (TLS with the pool's), while one runs
    void *session                    # TLS: the last session with this backend, so checks resume


cdef struct hc_loop:
    int epfd
    int sigfd
    int stop
    shm_header *hdr
    shm_pool *pools
    shm_backend *backends
    shm_backend_stats *bstats_all
    hc_pool *hc
    hc_target *t
    uint32_t n_targets
    uint64_t now_ms
    uint64_t next_scan_ms
    uint64_t next_passive_ms
    uint64_t slack_ms                # a tenth of the shortest interval, at most HC_SLACK_MAX_MS
    uint64_t rng
    void *on_change                  # a Python callable (borrowed from the Checker object)


cdef inline uint64_t now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000 + <uint64_t>(ts.tv_nsec // 1000)


cdef uint64_t hc_jitter(hc_loop *L, uint64_t interval) noexcept nogil:
    """interval +-5%, so checks that started together drift apart."""
    cdef uint64_t span = interval // 10
    if span == 0:
        return interval
    return interval - span // 2 + lb_splitmix64(&L.rng) % (span + 1)


cdef uint64_t hc_next_interval(hc_loop *L, hc_target *t) noexcept nogil:
    cdef hc_pool *hp = &L.hc[t.pool]
    cdef shm_backend *b = &L.backends[t.slot]
    if b.health == HEALTH_UP:
        return hp.fast_ms if b.check_fails else hp.interval_ms
    return hp.fast_ms if b.check_oks else hp.down_ms


cdef void hc_notify(hc_loop *L, hc_target *t, uint32_t old_health, uint32_t new_health) noexcept nogil:
    cdef shm_backend *b = &L.backends[t.slot]
    with gil:
        try:
            (<object>L.on_change)(t.pool, t.slot - L.pools[t.pool].first_slot, old_health, new_health,
                                  b.down_reason if new_health == HEALTH_DOWN else b.last_result,
                                  b.last_status, b.last_errno, b.last_latency_us)
        except BaseException:
            pass  # logging must never stop the checks


cdef void hc_set_health(hc_loop *L, hc_target *t, uint32_t health, uint32_t reason) noexcept nogil:
    cdef shm_backend *b = &L.backends[t.slot]
    cdef uint32_t old = b.health
    if health == HEALTH_UP:
        lb_store_u64(&b.up_since_ms, L.now_ms)
        b.down_reason = REASON_NONE
    else:
        b.down_reason = reason
    b.check_oks = 0
    b.check_fails = 0
    lb_store_u8(&b.health, health)
    # the pool's selection state (tables, candidate caches) follows the generation
    lb_release_u32(&L.pools[t.pool].generation, lb_load_u32(&L.pools[t.pool].generation) + 1)
    hc_notify(L, t, old, health)


cdef void hc_result(hc_loop *L, hc_target *t, uint32_t result, uint32_t status, int err) noexcept nogil:
    """Record one check's outcome and apply rise/fall (HAProxy's semantics)."""
    cdef hc_pool *hp = &L.hc[t.pool]
    cdef shm_backend *b = &L.backends[t.slot]
    if t.fd >= 0:
        # close with a reset, as HAProxy does: no FIN exchange and no TIME_WAIT
        # per check, which is most of a tcp check's cost
        sock_close(&t.sk, True)
        t.fd = -1
    if t.buf != NULL:
        free(t.buf)
        t.buf = NULL
    t.state = HS_IDLE
    lb_add_u64(&L.hdr.checks_total, 1)
    lb_add_u64(&b.checks, 1)
    if result != REASON_NONE:
        lb_add_u64(&b.checks_failed, 1)
    b.last_result = result
    b.last_status = status
    b.last_errno = err
    b.last_latency_us = <uint32_t>(now_us() - t.started_us)
    if b.health == HEALTH_UP:
        if result == REASON_NONE:
            b.check_fails = 0
        else:
            b.check_fails += 1
            if b.check_fails >= hp.fall:
                hc_set_health(L, t, HEALTH_DOWN, result)
    else:
        if result != REASON_NONE:
            b.check_oks = 0
        else:
            if b.check_oks < 255:
                b.check_oks += 1
            # an ejected backend waits out its ejection before checks may return it
            if b.check_oks >= hp.rise and L.now_ms >= lb_load_u64(&b.eject_until_ms):
                hc_set_health(L, t, HEALTH_UP, REASON_NONE)
    t.next_ms = L.now_ms + hc_jitter(L, hc_next_interval(L, t))
    if t.next_ms < L.next_scan_ms:
        L.next_scan_ms = t.next_ms


cdef int hc_format_request(hc_loop *L, hc_target *t, char *out) noexcept nogil:
    cdef hc_pool *hp = &L.hc[t.pool]
    cdef shm_backend *b = &L.backends[t.slot]
    cdef char host[80]
    cdef char ip[64]
    if hp.host[0] != 0:
        return snprintf(out, HC_REQ_MAX, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: lb-check\r\nConnection: close\r\n\r\n",
                        hp.method, hp.path, hp.host)
    inet_ntop(b.family, b.addr, ip, sizeof(ip))
    if b.family == AF_INET6:
        snprintf(host, sizeof(host), "[%s]:%u", ip, <unsigned>b.port)
    else:
        snprintf(host, sizeof(host), "%s:%u", ip, <unsigned>b.port)
    return snprintf(out, HC_REQ_MAX, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: lb-check\r\nConnection: close\r\n\r\n",
                    hp.method, hp.path, host)


cdef void hc_start(hc_loop *L, hc_target *t) noexcept nogil:
    cdef hc_pool *hp = &L.hc[t.pool]
    cdef sockaddr_storage ss
    cdef int len, fd, zero = 0
    cdef epoll_event ev
    t.started_us = now_us()
    t.deadline_ms = L.now_ms + hp.timeout_ms
    if t.deadline_ms < L.next_scan_ms:
        L.next_scan_ms = t.deadline_ms
    len = backend_sockaddr(&L.backends[t.slot], &ss)
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        hc_result(L, t, REASON_CONNECT, 0, errno)
        return
    t.fd = fd
    sock_plain(&t.sk, fd)
    if hp.type == HC_TCP and hp.tls == NULL:
        # HAProxy's trick: without a quick ACK the handshake's last ACK waits for
        # data that never comes, so the reset that ends the check reaches a
        # connection the backend never accepted: the check costs the backend's
        # application nothing, yet a full accept queue still fails it (no SYN-ACK)
        setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof(zero))
    if connect(fd, <sockaddr *>&ss, len) != 0 and errno != EINPROGRESS:
        hc_result(L, t, REASON_CONNECT, 0, errno)
        return
    ev.events = EPOLLOUT
    ev.data.ptr = t
    if epoll_ctl(L.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
        hc_result(L, t, REASON_CONNECT, 0, errno)
        return
    t.state = HS_CONNECTING


cdef int hc_parse_status(char *buf, uint32_t len) noexcept nogil:
    """The status of "HTTP/1.x SSS ..." once the status line is complete; 0 while
    it is not; -1 when the bytes are not an HTTP/1 status line."""
    cdef uint32_t i
    if len < 12:
        return 0 if memmem(buf, len, b"\n", 1) == NULL else -1
    if (buf[0] != b'H' or buf[1] != b'T' or buf[2] != b'T' or buf[3] != b'P' or buf[4] != b'/'
            or buf[5] != b'1' or buf[6] != b'.' or buf[8] != b' '):
        return -1
    for i in range(9, 12):
        if buf[i] < b'0' or buf[i] > b'9':
            return -1
    return (buf[9] - 48) * 100 + (buf[10] - 48) * 10 + (buf[11] - 48)


cdef void hc_on_event(hc_loop *L, hc_target *t, uint32_t events) noexcept nogil:
    cdef hc_pool *hp = &L.hc[t.pool]
    cdef int err = 0
    cdef socklen_t elen = sizeof(err)
    cdef ssize_t n
    cdef int status, req_len
    cdef char *body
    cdef epoll_event ev
    if t.state == HS_CONNECTING:
        if events & (EPOLLERR | EPOLLHUP):
            getsockopt(t.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
            hc_result(L, t, REASON_CONNECT, 0, err)
            return
        if hp.tls != NULL:
            if not hc_tls_start(L, t):
                hc_result(L, t, REASON_CONNECT, 0, ENOMEM)
                return
            hc_handshake(L, t)
            return
        if hp.type == HC_TCP:
            hc_result(L, t, REASON_NONE, 0, 0)
            return
        hc_send_request(L, t)
        return
    if t.state == HS_HANDSHAKE:
        hc_handshake(L, t)
        return
    if t.state == HS_SETTLING:
        hc_settle(L, t)
        return
    if t.state != HS_READING:
        return
    n = t.sk.xp.recv(&t.sk, t.buf + t.len, HC_RESP_MAX - t.len)
    if n == XPRT_WANT_READ or n == XPRT_WANT_WRITE:
        return
    if n < 0:
        hc_result(L, t, REASON_CONNECT, 0, errno)
        return
    t.len += n
    status = hc_parse_status(t.buf, t.len)
    if status < 0 or (status == 0 and (n == 0 or t.len == HC_RESP_MAX)):
        hc_result(L, t, REASON_PROTOCOL, 0, 0)
        return
    if status == 0:
        return
    if <uint32_t>status < hp.expect_lo or <uint32_t>status > hp.expect_hi:
        hc_result(L, t, REASON_STATUS, status, 0)
        return
    if hp.expect_body_len == 0:
        hc_result(L, t, REASON_NONE, status, 0)
        return
    body = <char *>memmem(t.buf, t.len, b"\r\n\r\n", 4)
    if body != NULL and memmem(body + 4, t.len - (body + 4 - t.buf), hp.expect_body, hp.expect_body_len) != NULL:
        hc_result(L, t, REASON_NONE, status, 0)
        return
    if n == 0 or t.len == HC_RESP_MAX:
        hc_result(L, t, REASON_BODY, status, 0)


cdef void hc_send_request(hc_loop *L, hc_target *t) noexcept nogil:
    """An http check's request, then wait for the response."""
    cdef int req_len
    cdef epoll_event ev
    t.buf = <char *>malloc(HC_RESP_MAX + 1)
    if t.buf == NULL:
        hc_result(L, t, REASON_CONNECT, 0, ENOMEM)
        return
    req_len = hc_format_request(L, t, t.buf)
    # a fresh connection (or one whose handshake just ended) takes a request
    # this small in one write
    if t.sk.xp.send(&t.sk, t.buf, req_len) != req_len:
        hc_result(L, t, REASON_CONNECT, 0, errno)
        return
    t.len = 0
    t.state = HS_READING
    ev.events = EPOLLIN
    ev.data.ptr = t
    epoll_ctl(L.epfd, EPOLL_CTL_MOD, t.fd, &ev)


cdef bint hc_tls_start(hc_loop *L, hc_target *t) noexcept nogil:
    """A check of a pool with TLS: the handshake as the workers do it (SNI,
    verification), resuming the check's last session with the backend."""
    cdef lb_tls_client *tls = L.hc[t.pool].tls
    cdef SSL *ssl = SSL_new(tls.ctx)
    if ssl == NULL:
        ERR_clear_error()
        return False
    if not ssl_set_socket(ssl, t.fd):
        SSL_free(ssl)
        return False
    SSL_set_connect_state(ssl)
    tls_client_names(ssl, tls, &L.backends[t.slot])
    if t.session != NULL:
        SSL_set_session(ssl, <SSL_SESSION *>t.session)
    SSL_set_ex_data(ssl, TLS_SESSION_CELL, &t.session)
    t.sk.xp = &XPRT_TLS
    t.sk.ctx = ssl
    t.state = HS_HANDSHAKE
    return True


cdef void hc_handshake(hc_loop *L, hc_target *t) noexcept nogil:
    """Advance a check's TLS handshake: a tcp check passes when it is done
    (the certificate verified); an http check sends its request then."""
    cdef SSL *ssl = <SSL *>t.sk.ctx
    cdef int r = SSL_do_handshake(ssl)
    cdef int err
    if r == 1:
        if L.hc[t.pool].type == HC_TCP:
            # In TLS 1.3 the backend judges lb's certificate, and sends its
            # session ticket, after lb's side of the handshake is done: end
            # with close_notify and read what comes before the backend's own
            # (an alert fails the check; a ticket is kept for the next one)
            SSL_shutdown(ssl)
            t.state = HS_SETTLING
            hc_settle(L, t)
        else:
            hc_send_request(L, t)
        return
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
        hc_tls_wait(L, t, err)
        return
    hc_tls_failed(L, t)


cdef void hc_tls_wait(hc_loop *L, hc_target *t, int err) noexcept nogil:
    """The check's TLS call waits for the socket: readable or writable, as it said."""
    cdef epoll_event ev
    ev.events = EPOLLIN if err == SSL_ERROR_WANT_READ else EPOLLOUT
    ev.data.ptr = t
    epoll_ctl(L.epfd, EPOLL_CTL_MOD, t.fd, &ev)


cdef void hc_tls_failed(hc_loop *L, hc_target *t) noexcept nogil:
    """A TLS failure: the certificate verify result, when that is what failed."""
    cdef long verify = SSL_get_verify_result(<SSL *>t.sk.ctx)
    ERR_clear_error()
    hc_result(L, t, REASON_TLS, 0, <int>verify if verify != X509_V_OK else 0)


cdef void hc_settle(hc_loop *L, hc_target *t) noexcept nogil:
    """A TLS tcp check after its handshake: passes at the backend's
    close_notify or close (or, from a backend that says nothing more, at the
    check's timeout: see hc_scan); fails on an alert."""
    cdef SSL *ssl = <SSL *>t.sk.ctx
    cdef char sink[256]
    cdef int r, err
    while True:
        r = SSL_read(ssl, sink, sizeof(sink))
        if r > 0:
            continue
        err = SSL_get_error(ssl, r)
        if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
            hc_tls_wait(L, t, err)
            return
        if err == SSL_ERROR_ZERO_RETURN or (err == SSL_ERROR_SYSCALL and ERR_peek_error() == 0):
            ERR_clear_error()
            hc_result(L, t, REASON_NONE, 0, 0)
            return
        hc_tls_failed(L, t)
        return


cdef uint64_t hc_failure_sum(hc_loop *L, int32_t slot) noexcept nogil:
    cdef uint64_t total = 0
    cdef uint32_t r
    for r in range(L.hdr.n_rows):
        total += lb_load_u64(&L.bstats_all[<uint64_t>r * L.hdr.n_slots + slot].consecutive_failures)
    return total


cdef void hc_passive(hc_loop *L) noexcept nogil:
    """Eject backends whose connects keep failing in the workers; end ejections
    of pools without active checks; forget old ejections."""
    cdef uint32_t i, p, n_in_use, n_ejected, allowed
    cdef hc_target *t
    cdef hc_pool *hp
    cdef shm_backend *b
    cdef uint64_t failures, eject_ms
    for p in range(L.hdr.n_pools):
        hp = &L.hc[p]
        n_in_use = 0
        n_ejected = 0
        for i in range(L.pools[p].n_slots):
            b = &L.backends[L.pools[p].first_slot + i]
            if b.in_use:
                n_in_use += 1
                if b.health == HEALTH_DOWN and b.down_reason == REASON_PASSIVE:
                    n_ejected += 1
        allowed = n_in_use * hp.max_ejected_pct // 100
        if allowed == 0 and n_in_use > 1 and hp.max_ejected_pct > 0:
            allowed = 1
        for i in range(L.pools[p].n_slots):
            t = &L.t[L.pools[p].first_slot + i]
            b = &L.backends[t.slot]
            if not b.in_use or hp.passive_threshold == 0:
                continue
            failures = hc_failure_sum(L, t.slot)
            if failures < b.passive_base:
                b.passive_base = failures       # workers reset their count on a success
            if b.health == HEALTH_UP:
                if b.eject_count and L.now_ms - b.up_since_ms > 10 * hp.eject_ms:
                    b.eject_count = 0
                if failures - b.passive_base >= hp.passive_threshold and n_ejected < allowed:
                    b.passive_base = failures
                    eject_ms = hp.eject_ms << (b.eject_count if b.eject_count < HC_EJECT_DOUBLINGS else HC_EJECT_DOUBLINGS)
                    if b.eject_count < 255:
                        b.eject_count += 1
                    lb_add_u64(&b.ejections, 1)
                    lb_store_u64(&b.eject_until_ms, L.now_ms + eject_ms)
                    b.last_result = REASON_PASSIVE
                    hc_set_health(L, t, HEALTH_DOWN, REASON_PASSIVE)
                    n_ejected += 1
                    # check it again soon: only checks (or the end of the ejection) bring it back
                    t.next_ms = L.now_ms + hp.fast_ms
            elif (b.down_reason == REASON_PASSIVE and hp.type == HC_NONE
                    and L.now_ms >= lb_load_u64(&b.eject_until_ms)):
                b.last_result = REASON_EJECTION_OVER
                hc_set_health(L, t, HEALTH_UP, REASON_NONE)


cdef void hc_scan(hc_loop *L) noexcept nogil:
    """Start the checks that are due and fail those past their timeout."""
    cdef uint32_t i
    cdef hc_target *t
    cdef shm_backend *b
    cdef uint64_t next_scan = L.now_ms + 1000
    cdef uint64_t due = L.now_ms + L.slack_ms
    for i in range(L.n_targets):
        t = &L.t[i]
        if t.state == HS_IDLE:
            if t.next_ms <= due:
                b = &L.backends[t.slot]
                if L.hc[t.pool].type == HC_NONE:
                    t.next_ms = <uint64_t>-1     # never checked
                elif lb_load_u8(&b.in_use) and lb_load_u8(&b.admin) != ADMIN_MAINT:
                    hc_start(L, t)
                else:
                    # a free slot, or maint (out of rotation and unchecked): look again later
                    t.next_ms = L.now_ms + L.hc[t.pool].interval_ms
        elif t.deadline_ms <= L.now_ms:
            # a TLS tcp check whose backend says nothing after the handshake passed
            hc_result(L, t, REASON_NONE if t.state == HS_SETTLING else REASON_TIMEOUT, 0, 0)
        if t.state == HS_IDLE:
            if t.next_ms < next_scan:
                next_scan = t.next_ms
        elif t.deadline_ms < next_scan:
            next_scan = t.deadline_ms
    L.next_scan_ms = next_scan


cdef int hc_loop_run(hc_loop *L) noexcept nogil:
    cdef epoll_event events[HC_MAX_EVENTS]
    cdef signalfd_siginfo si
    cdef int n, i, timeout
    cdef uint64_t wake
    while not L.stop:
        L.now_ms = now_ms()
        wake = L.next_scan_ms if L.next_scan_ms < L.next_passive_ms else L.next_passive_ms
        timeout = 0 if wake <= L.now_ms else <int>(wake - L.now_ms)
        n = epoll_wait(L.epfd, events, HC_MAX_EVENTS, timeout)
        if n < 0 and errno != EINTR:
            return -1
        # CLOCK_MONOTONIC, not the coarse clock: check latencies and timeouts are
        # short, and the checker makes few calls
        L.now_ms = now_us() // 1000
        for i in range(n):
            if events[i].data.ptr == NULL:
                while read(L.sigfd, &si, sizeof(si)) == sizeof(si):
                    L.stop = 1
            else:
                hc_on_event(L, <hc_target *>events[i].data.ptr, events[i].events)
        if L.now_ms >= L.next_passive_ms:
            hc_passive(L)
            L.next_passive_ms = L.now_ms + HC_PASSIVE_TICK_MS
        if L.now_ms + L.slack_ms >= L.next_scan_ms:
            hc_scan(L)
    return 0


cdef int _copy_field(char *dest, size_t size, str value, str what) except -1:
    raw = value.encode()
    if len(raw) >= size:
        raise ValueError(f"health {what} longer than {size - 1} bytes")
    memcpy(dest, <char *>raw, len(raw))
    dest[len(raw)] = 0
    return 0


HEALTH_TYPES = {"none": HC_NONE, "tcp": HC_TCP, "http": HC_HTTP}
REASONS = {REASON_NONE: "passed", REASON_CONNECT: "connect failed", REASON_TIMEOUT: "timeout",
           REASON_STATUS: "bad status", REASON_BODY: "expected body not found",
           REASON_PROTOCOL: "not an HTTP response", REASON_PASSIVE: "ejected: connects kept failing",
           REASON_EJECTION_OVER: "ejection over", REASON_TLS: "TLS handshake failed"}


cdef class Checker:
    """The checker's loop over every backend slot of the region.

    pools: one dict per shm pool, in order, with the keys type, interval, fast_interval,
    down_interval, timeout (seconds), rise, fall, expect_lo, expect_hi, method,
    path, host, expect_body, passive_failures, eject_time, max_ejected_percent.
    on_change(pool, index, old, new, reason, status, errno, latency_us) is called
    (with the GIL) on every up/down change. The caller blocks SIGTERM/SIGINT/SIGQUIT.
    """

    cdef hc_loop L
    cdef Shm shm
    cdef object on_change
    cdef list keep

    def __cinit__(self):
        memset(&self.L, 0, sizeof(hc_loop))
        self.L.epfd = -1
        self.L.sigfd = -1

    def __init__(self, Shm shm, pools, on_change, tls=None):
        """tls: {pool name: TlsClient} of the pools with TLS (lb.tls.contexts)."""
        cdef shm_header *h = shm.hdr
        cdef hc_pool *hp
        cdef hc_target *t
        cdef uint64_t now = now_ms()
        if len(pools) != h.n_pools:
            raise ValueError("one health setting per shared-memory pool is needed")
        self.shm = shm
        self.on_change = on_change
        self.keep = []
        L = &self.L
        L.hdr = h
        L.pools = shm.pools
        L.backends = shm.backends
        L.bstats_all = shm.bstats
        L.on_change = <void *>on_change
        L.rng = int.from_bytes(_os.urandom(8), "little")
        L.hc = <hc_pool *>calloc(max(1, h.n_pools), sizeof(hc_pool))
        L.n_targets = h.n_slots
        L.t = <hc_target *>calloc(max(1, h.n_slots), sizeof(hc_target))
        if L.hc == NULL or L.t == NULL:
            raise MemoryError()
        for i, spec in enumerate(pools):
            hp = &L.hc[i]
            hp.type = HEALTH_TYPES[spec["type"]]
            hp.interval_ms = max(1, <uint64_t>(spec["interval"] * 1000))
            hp.fast_ms = max(1, <uint64_t>(spec["fast_interval"] * 1000))
            hp.down_ms = max(1, <uint64_t>(spec["down_interval"] * 1000))
            hp.timeout_ms = max(1, <uint64_t>(spec["timeout"] * 1000))
            hp.rise = spec["rise"]
            hp.fall = spec["fall"]
            hp.expect_lo = spec["expect_lo"]
            hp.expect_hi = spec["expect_hi"]
            _copy_field(hp.method, 40, spec["method"], "method")
            _copy_field(hp.path, 512, spec["path"], "path")
            _copy_field(hp.host, 256, spec["host"], "host")
            body = spec["expect_body"].encode()
            self.keep.append(body)
            hp.expect_body = <char *>body
            hp.expect_body_len = len(body)
            hp.passive_threshold = spec["passive_failures"]
            hp.eject_ms = max(1, <uint64_t>(spec["eject_time"] * 1000))
            hp.max_ejected_pct = spec["max_ejected_percent"]
            client = (tls or {}).get(spec["name"])
            if client is not None:
                self.keep.append(client)
                hp.tls = &(<TlsClient>client).t
            for k in range(L.pools[i].capacity):
                t = &L.t[L.pools[i].first_slot + k]
                t.pool = i
                t.slot = L.pools[i].first_slot + k
                t.fd = -1
                sock_reset(&t.sk)
                # spread the first checks over one interval
                t.next_ms = now + lb_splitmix64(&L.rng) % hp.interval_ms
        L.next_scan_ms = now
        L.next_passive_ms = now
        L.slack_ms = HC_SLACK_MAX_MS
        for i in range(h.n_pools):
            if L.hc[i].type != HC_NONE:
                L.slack_ms = max(1, min(L.slack_ms, L.hc[i].interval_ms // 10, L.hc[i].fast_ms // 10))

    def run(self):
        cdef sigset_t mask
        cdef epoll_event ev
        cdef int rc
        L = &self.L
        L.epfd = epoll_create1(EPOLL_CLOEXEC)
        if L.epfd < 0:
            raise OSError(errno, "epoll_create1")
        sigemptyset(&mask)
        sigaddset(&mask, SIGTERM)
        sigaddset(&mask, SIGINT)
        sigaddset(&mask, SIGQUIT)
        L.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)
        if L.sigfd < 0:
            raise OSError(errno, "signalfd")
        ev.events = EPOLLIN
        ev.data.ptr = NULL
        epoll_ctl(L.epfd, EPOLL_CTL_ADD, L.sigfd, &ev)
        with nogil:
            rc = hc_loop_run(L)
        if rc != 0:
            raise OSError(errno, "epoll_wait")
        return rc
