# TLS: the second transport (transport.pxi), on OpenSSL's C API, and the
# contexts of TLS listeners (docs/tls.md).
#
# A TLS socket's lb_sock holds its SSL object; reads and writes go through it
# with the GIL released and no Python object per connection. The handshake is
# a step of the connection's own state machine (CS_TLS_WAIT in tcp mode,
# HS_TLS in http mode), driven by tls_handshake on the socket's events; after
# it, SSL_read and SSL_write may still want the other direction (a key update,
# a ticket), which the transport contract's XPRT_WANT_* carries. Bytes OpenSSL
# decoded but the caller had no room for stay in the SSL object: tls_recv reads
# until the caller's buffer is full or the socket has nothing more, so a short
# read means what it means on a plain socket, and an edge-triggered loop never
# waits for an event that will not come.
#
# The contexts (certificates, settings, callbacks) are built once per config
# generation by the supervisor before it forks (TlsServer), so workers share
# them copy-on-write and a reload or a certificate swap is a new generation.

from lb.includes.openssl cimport *

import hashlib as _hashlib
import time as _time

cdef enum:
    TLS_FAIL_TIMEOUT = 1
    TLS_FAIL_PLAIN_HTTP = 2
    TLS_FAIL_NEGOTIATION = 3
    TLS_FAIL_CLIENT_CERT = 4
    TLS_FAIL_PROTOCOL = 5
    TLS_FAIL_CLOSED = 6
    TLS_ALPN_H2 = 16                 # not a failure: a handshake that agreed on "h2"
    TLS_NAME_MAX = 255               # a DNS name (RFC 1035), without the trailing dot


# ---- the socket under OpenSSL ----------------------------------------------------------
# Two BIOs. For connections OpenSSL keeps to the end (backends, checks, clients
# whose certificate is read per request) OpenSSL reads with read-ahead on: one
# recv takes every record the socket has, and the BIO remembers whether that
# recv took less than it asked for, i.e. whether the socket is now empty, so
# tls_recv stops without the extra recv that would only say EAGAIN. Its state
# lives in the BIO's data word: the fd, the end of stream, the socket emptied.
#
# For clients the record layer takes over after the handshake
# (tls_record.pxi), the BIO reads ahead itself, into the lb_tlsr's receive
# buffer, and OpenSSL's read-ahead is off: OpenSSL then takes exactly the
# handshake's records, and whatever the client sent after its Finished is
# still in that buffer when the record layer starts.

cdef enum:
    BIOD_DRAINED = 1
    BIOD_EOF = 2
    BIOD_SHIFT = 2


cdef int bio_send(BIO *b, int fd, const char *buf, int n) noexcept nogil:
    cdef ssize_t r
    BIO_clear_retry_flags(b)
    while True:
        r = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT)
        if r >= 0 or errno != EINTR:
            break
    if r < 0 and errno == EAGAIN:
        BIO_set_retry_write(b)
    return <int>r


cdef int lb_bio_read(BIO *b, char *buf, int n) noexcept nogil:
    cdef size_t d = <size_t>BIO_get_data(b)
    cdef ssize_t r
    BIO_clear_retry_flags(b)
    while True:
        r = recv(<int>(d >> BIOD_SHIFT), buf, n, MSG_DONTWAIT)
        if r >= 0 or errno != EINTR:
            break
    if r > 0:
        BIO_set_data(b, <void *>((d & ~<size_t>BIOD_DRAINED) | (BIOD_DRAINED if r < n else 0)))
        return <int>r
    if r == 0:
        BIO_set_data(b, <void *>(d | BIOD_EOF | BIOD_DRAINED))
    elif errno == EAGAIN:
        BIO_set_data(b, <void *>(d | BIOD_DRAINED))
        BIO_set_retry_read(b)
    return <int>r


cdef int lb_bio_write(BIO *b, const char *buf, int n) noexcept nogil:
    return bio_send(b, <int>(<size_t>BIO_get_data(b) >> BIOD_SHIFT), buf, n)


cdef long lb_bio_ctrl(BIO *b, int cmd, long num, void *ptr) noexcept nogil:
    if cmd == BIO_CTRL_FLUSH:
        return 1                     # nothing is buffered here
    if cmd == BIO_CTRL_EOF:          # so that OpenSSL knows an EOF from a failure
        return 1 if <size_t>BIO_get_data(b) & BIOD_EOF else 0
    return 0


cdef BIO_METHOD *LB_BIO = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, b"lb socket")
BIO_meth_set_read(LB_BIO, lb_bio_read)
BIO_meth_set_write(LB_BIO, lb_bio_write)
BIO_meth_set_ctrl(LB_BIO, lb_bio_ctrl)


cdef int bior_read(BIO *b, char *buf, int n) noexcept nogil:
    cdef lb_tlsr *t = <lb_tlsr *>BIO_get_data(b)
    cdef ssize_t r
    cdef uint32_t c
    BIO_clear_retry_flags(b)
    if t.roff == t.rlen:
        if t.rbuf == NULL:
            t.rbuf = <char *>malloc(TLSR_RBUF)
            if t.rbuf == NULL:
                return -1
        t.roff = t.rlen = 0
        while True:
            r = recv(t.fd, t.rbuf, TLSR_RBUF, MSG_DONTWAIT)
            if r >= 0 or errno != EINTR:
                break
        if r == 0:
            t.flags |= TR_EOF | TR_DRAINED
            return 0
        if r < 0:
            if errno == EAGAIN:
                t.flags |= TR_DRAINED
                BIO_set_retry_read(b)
            return -1
        t.rlen = <uint32_t>r
        if r < TLSR_RBUF:
            t.flags |= TR_DRAINED
        else:
            t.flags &= ~TR_DRAINED
    c = min(<uint32_t>n, t.rlen - t.roff)
    memcpy(buf, t.rbuf + t.roff, c)
    t.roff += c
    if t.roff == t.rlen:             # held only while it holds bytes
        free(t.rbuf)
        t.rbuf = NULL
        t.roff = t.rlen = 0
    return <int>c


cdef int bior_write(BIO *b, const char *buf, int n) noexcept nogil:
    return bio_send(b, (<lb_tlsr *>BIO_get_data(b)).fd, buf, n)


cdef long bior_ctrl(BIO *b, int cmd, long num, void *ptr) noexcept nogil:
    if cmd == BIO_CTRL_FLUSH:
        return 1
    if cmd == BIO_CTRL_EOF:
        return 1 if (<lb_tlsr *>BIO_get_data(b)).flags & TR_EOF else 0
    return 0


cdef int bior_destroy(BIO *b) noexcept nogil:
    """With its SSL object (the record layer did not take the connection over)."""
    cdef lb_tlsr *t = <lb_tlsr *>BIO_get_data(b)
    if t != NULL:
        tlsr_free(t)
        BIO_set_data(b, NULL)
    return 1


cdef int LB_BIOR_TYPE = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK
cdef BIO_METHOD *LB_BIOR = BIO_meth_new(LB_BIOR_TYPE, b"lb socket, record layer next")
BIO_meth_set_read(LB_BIOR, bior_read)
BIO_meth_set_write(LB_BIOR, bior_write)
BIO_meth_set_ctrl(LB_BIOR, bior_ctrl)
BIO_meth_set_destroy(LB_BIOR, bior_destroy)


cdef inline lb_tlsr *bio_tlsr(BIO *b) noexcept nogil:
    """The record-layer state behind a BIO, or NULL (not such a BIO)."""
    if b == NULL or BIO_method_type(b) != LB_BIOR_TYPE:
        return NULL
    return <lb_tlsr *>BIO_get_data(b)


cdef bint ssl_set_socket(SSL *ssl, int fd) noexcept nogil:
    cdef BIO *b = BIO_new(<const void *>LB_BIO)
    if b == NULL:
        return False
    BIO_set_data(b, <void *>(<size_t>fd << BIOD_SHIFT))
    BIO_set_init(b, 1)
    SSL_set_bio(ssl, b, b)
    return True


cdef bint ssl_set_record_socket(SSL *ssl, int fd) noexcept nogil:
    """The socket of a client the record layer takes over after the handshake."""
    cdef lb_tlsr *t = <lb_tlsr *>calloc(1, sizeof(lb_tlsr))
    cdef BIO *b
    if t == NULL:
        return False
    b = BIO_new(<const void *>LB_BIOR)
    if b == NULL:
        free(t)
        return False
    t.fd = fd
    BIO_set_data(b, t)
    BIO_set_init(b, 1)
    SSL_set_bio(ssl, b, b)
    SSL_set_read_ahead(ssl, 0)
    SSL_set_msg_callback(ssl, tlsr_msg_cb)
    return True


cdef inline bint ssl_socket_drained(SSL *ssl) noexcept nogil:
    """The last read from the socket took less than it asked, and the BIO
    holds nothing it read: the socket is empty."""
    cdef BIO *b = SSL_get_rbio(ssl)
    cdef lb_tlsr *t = bio_tlsr(b)
    if t != NULL:
        return (t.flags & TR_DRAINED) != 0 and t.roff == t.rlen
    return (<size_t>BIO_get_data(b) & BIOD_DRAINED) != 0


# ---- the transport ------------------------------------------------------------------

cdef inline ssize_t tls_want(SSL *ssl, int r) noexcept nogil:
    """The XPRT_* result of an SSL call that returned r <= 0."""
    cdef int err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_READ:
        return XPRT_WANT_READ
    if err == SSL_ERROR_WANT_WRITE:
        return XPRT_WANT_WRITE
    if err == SSL_ERROR_ZERO_RETURN:
        return 0                     # close_notify (or an EOF without one: SSL_OP_IGNORE_UNEXPECTED_EOF)
    ERR_clear_error()                # the error queue must be empty before the next call
    return XPRT_ERROR


cdef ssize_t tls_recv(lb_sock *s, void *buf, size_t n) noexcept nogil:
    cdef SSL *ssl = <SSL *>s.ctx
    cdef size_t got = 0
    cdef int r
    cdef ssize_t rc
    # One SSL_read returns at most one record: keep going until the caller's
    # buffer is full or OpenSSL needs the socket (see the top of this file),
    # or the socket is known to be empty and OpenSSL holds nothing more
    while got < n:
        r = SSL_read(ssl, <char *>buf + got, <int>(n - got))
        if r > 0:
            got += r
            if ssl_socket_drained(ssl) and not SSL_has_pending(ssl):
                return got
            continue
        rc = tls_want(ssl, r)
        return got if got else rc
    return got


cdef ssize_t tls_send(lb_sock *s, const void *buf, size_t n) noexcept nogil:
    cdef SSL *ssl = <SSL *>s.ctx
    cdef size_t sent = 0
    cdef int r
    cdef ssize_t rc
    # With partial writes on, SSL_write may return after one record while the
    # socket has room for more: a short count must mean the socket is full.
    while sent < n:
        r = SSL_write(ssl, <const char *>buf + sent, <int>(n - sent))
        if r > 0:
            sent += r
            continue
        rc = tls_want(ssl, r)
        if rc == 0:
            rc = XPRT_ERROR          # the peer closed: nothing more can be written
        return sent if sent else rc
    return sent


cdef void tls_shutw(lb_sock *s) noexcept nogil:
    # close_notify first (best effort: a full socket drops it, and the FIN still
    # ends the stream), then the FIN
    if SSL_is_init_finished(<SSL *>s.ctx):
        if SSL_shutdown(<SSL *>s.ctx) < 0:
            ERR_clear_error()
    shutdown(s.fd, SHUT_WR)


cdef void tls_close(lb_sock *s, bint reset) noexcept nogil:
    cdef SSL *ssl = <SSL *>s.ctx
    if SSL_is_init_finished(ssl):
        if not reset:
            # a close that is not a reset ends the stream with close_notify
            # (sent once: after tls_shutw this sends nothing more), so the
            # peer can tell the end of a response delimited by the close from a cut
            if SSL_shutdown(ssl) < 0:
                ERR_clear_error()
        else:
            # without this, OpenSSL takes a session whose connection ends
            # without close_notify for a bad one and makes it not resumable:
            # the session lb keeps for the next connection to that backend
            SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN)
    SSL_free(ssl)
    s.ctx = NULL
    plain_close(s, reset)


cdef lb_xprt XPRT_TLS
XPRT_TLS.name = b"tls"
XPRT_TLS.recv = tls_recv
XPRT_TLS.send = tls_send
XPRT_TLS.shutw = tls_shutw
XPRT_TLS.close = tls_close
XPRT_TLS.splice = 0                  # records, not the stream's bytes (no kTLS here)


cdef bint sock_tls_accept(lb_sock *s, lb_tls_server *t) noexcept nogil:
    """Put an accepted socket on the TLS transport, as the server. False: out of memory."""
    cdef SSL *ssl = SSL_new(t.dflt)
    if ssl == NULL:
        ERR_clear_error()
        return False
    if not ssl_set_record_socket(ssl, s.fd):
        SSL_free(ssl)
        return False
    SSL_set_accept_state(ssl)
    s.xp = &XPRT_TLS
    s.ctx = ssl
    return True


cdef inline bint sock_is_tls(lb_sock *s) noexcept nogil:
    return s.xp == &XPRT_TLS or s.xp == &XPRT_TLSR


# ---- TLS to backends (as the client) ----------------------------------------------------
# Each worker keeps its last session with each backend (OpenSSL hands it over in
# tls_new_session_cb, a TLS 1.3 ticket included), so a new backend connection
# resumes instead of paying for a full handshake.

cdef int TLS_SESSION_CELL = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL)


cdef int tls_new_session_cb(SSL *ssl, SSL_SESSION *sess) noexcept nogil:
    cdef SSL_SESSION **cell = <SSL_SESSION **>SSL_get_ex_data(ssl, TLS_SESSION_CELL)
    if cell == NULL:
        return 0
    if cell[0] != NULL:
        SSL_SESSION_free(cell[0])
    cell[0] = sess
    return 1                         # the reference is ours now


cdef void tls_client_names(SSL *ssl, lb_tls_client *t, shm_backend *b) noexcept nogil:
    """The SNI a backend connection sends, and the name (or address) its
    certificate must have."""
    cdef char ip[INET6_ADDRSTRLEN]
    cdef sockaddr_storage ss
    cdef const char *text
    if t.sni[0] != 0:
        SSL_set_tlsext_host_name(ssl, t.sni)
    if not t.verify:
        return
    if t.sni[0] != 0:
        SSL_set1_host(ssl, t.sni)
        return
    backend_sockaddr(b, &ss)
    if ss.ss_family == AF_INET6:
        text = inet_ntop(AF_INET6, &(<sockaddr_in6 *>&ss).sin6_addr, ip, sizeof(ip))
    else:
        text = inet_ntop(AF_INET, &(<sockaddr_in *>&ss).sin_addr, ip, sizeof(ip))
    if text != NULL:
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip)


cdef bint sock_tls_connect(lb_worker *w, lb_pool_rt *p, lb_sock *s, int32_t slot) noexcept nogil:
    """Put a socket just connected to a backend on the TLS transport, as the
    client (the handshake starts with the first read or write). False: out of
    memory."""
    cdef lb_tls_client *t = p.tls
    cdef SSL *ssl = SSL_new(t.ctx)
    cdef SSL_SESSION **cell = <SSL_SESSION **>&p.tls_sessions[slot - p.shm.first_slot]
    if ssl == NULL:
        ERR_clear_error()
        return False
    if not ssl_set_socket(ssl, s.fd):
        SSL_free(ssl)
        return False
    SSL_set_connect_state(ssl)
    tls_client_names(ssl, t, &w.backends[slot])
    if cell[0] != NULL:
        SSL_set_session(ssl, cell[0])
    SSL_set_ex_data(ssl, TLS_SESSION_CELL, cell)
    s.xp = &XPRT_TLS
    s.ctx = ssl
    return True


cdef int tls_client_handshake(lb_sock *s) noexcept nogil:
    """Advance a handshake with a backend: 1 done, XPRT_WANT_* to wait, XPRT_ERROR."""
    cdef SSL *ssl = <SSL *>s.ctx
    cdef int r = SSL_do_handshake(ssl)
    if r == 1:
        return 1
    return <int>tls_want(ssl, r) or XPRT_ERROR   # (an EOF mid-handshake is a failure too)


cdef bint tls_quiet(lb_sock *s) noexcept nogil:
    """A TLS connection with bytes waiting holds no response data: records
    that are not application data (a session ticket sent late) are read and
    the connection may still be kept. False when data or a close is there."""
    cdef char c
    cdef int r = SSL_peek(<SSL *>s.ctx, &c, 1)
    if r > 0:
        return False
    return tls_want(<SSL *>s.ctx, r) == XPRT_WANT_READ


# ---- a tcp-mode client's handshake (CS_TLS_WAIT) ------------------------------------------
# No backend is chosen until the handshake is done: a client that never
# completes one costs no backend anything.

cdef void conn_tls_start(lb_worker *w, lb_conn *c) noexcept nogil:
    cdef lb_listener_rt *l = &w.listeners[c.listener]
    if not sock_tls_accept(&c.sk[SIDE_CLIENT], l.tls):
        conn_close(w, c, True)
        return
    c.state = CS_TLS_WAIT
    list_append(&l.tls_wait, c, w.now_ms)
    conn_tls_step(w, c)              # its ClientHello may be here already


cdef void conn_tls_step(lb_worker *w, lb_conn *c) noexcept nogil:
    cdef int reason = 0
    cdef int rc = tls_handshake(w, &c.sk[SIDE_CLIENT], &reason)
    if rc == XPRT_WANT_READ or rc == XPRT_WANT_WRITE:
        return                       # the next event on the socket goes on
    list_remove(c)
    if rc != 1:
        conn_close(w, c, False)
        return
    c.state = CS_CONNECTING
    # application data may have come with the client's Finished: look for it
    # once the backend is there (a read that finds nothing clears the flag)
    c.flags |= (F_READABLE | F_WRITABLE) << SIDE_CLIENT
    conn_connect(w, c)


cdef void tls_wait_sweep(lb_worker *w) noexcept nogil:
    """Close the tcp-mode clients whose handshake (or, passthrough, whose
    ClientHello: an idle timeout) did not come in time."""
    cdef int i
    cdef lb_listener_rt *l
    for i in range(w.n_listeners):
        l = &w.listeners[i]
        while l.tls_wait.head != NULL and l.tls_wait.head.queued_ms + l.tls_wait_ms <= w.now_ms:
            if l.passthrough:
                lb_add_u64(&w.stats.idle_timeouts, 1)
            else:
                tls_count_failure(w, TLS_FAIL_TIMEOUT)
            conn_close(w, l.tls_wait.head, False)


cdef uint64_t tls_wait_deadline(lb_worker *w, uint64_t deadline) noexcept nogil:
    """deadline, or the earliest tcp-mode handshake timeout when that comes first."""
    cdef int i
    cdef uint64_t t
    for i in range(w.n_listeners):
        if w.listeners[i].tls_wait.head != NULL:
            t = w.listeners[i].tls_wait.head.queued_ms + w.listeners[i].tls_wait_ms
            if t < deadline:
                deadline = t
    return deadline


cdef int tls_handshake(lb_worker *w, lb_sock *s, int *reason) noexcept nogil:
    """Advance a server handshake: 1 done (counted), XPRT_WANT_* to wait, or
    XPRT_ERROR with the reason (TLS_FAIL_*) counted and in *reason."""
    cdef SSL *ssl = <SSL *>s.ctx
    cdef int r = SSL_do_handshake(ssl)
    cdef int err
    cdef unsigned long e
    if r == 1:
        lb_add_u64(&w.stats.tls_handshakes, 1)
        if SSL_session_reused(ssl):
            lb_add_u64(&w.stats.tls_resumed, 1)
        tls_note_session(s, ssl)     # the access log's TLS facts (log.pxi), before the SSL object goes
        reason[0] = tls_alpn_h2(ssl)
        r = tls_take_over(s)
        if r < 0:
            reason[0] = TLS_FAIL_PROTOCOL
            tls_count_failure(w, reason[0])
            return XPRT_ERROR
        if r == 1:
            lb_add_u64(&w.stats.tls_record_layer, 1)
        return 1
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_READ:
        return XPRT_WANT_READ
    if err == SSL_ERROR_WANT_WRITE:
        return XPRT_WANT_WRITE
    e = ERR_peek_last_error()
    if err == SSL_ERROR_SSL and e != 0:
        reason[0] = tls_fail_reason(ERR_GET_REASON(e))
    else:
        reason[0] = TLS_FAIL_CLOSED  # an EOF, a reset, or a close_notify mid-handshake
    ERR_clear_error()
    tls_count_failure(w, reason[0])
    return XPRT_ERROR


cdef inline int tls_alpn_h2(SSL *ssl) noexcept nogil:
    """What a completed handshake tells its caller in *reason: the client
    and lb agreed on HTTP/2."""
    cdef const unsigned char *p
    cdef unsigned int n = 0
    SSL_get0_alpn_selected(ssl, &p, &n)
    return TLS_ALPN_H2 if n == 2 and p[0] == 104 and p[1] == 50 else 0


cdef int tls_fail_reason(int r) noexcept nogil:
    if r == SSL_R_HTTP_REQUEST or r == SSL_R_HTTPS_PROXY_REQUEST:
        return TLS_FAIL_PLAIN_HTTP
    if (r == SSL_R_NO_SHARED_CIPHER or r == SSL_R_NO_SHARED_GROUPS or r == SSL_R_NO_PROTOCOLS_AVAILABLE
            or r == SSL_R_UNSUPPORTED_PROTOCOL or r == SSL_R_VERSION_TOO_LOW
            or r == SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM or r == SSL_R_NO_SUITABLE_KEY_SHARE):
        return TLS_FAIL_NEGOTIATION
    if r == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE or r == SSL_R_CERTIFICATE_VERIFY_FAILED:
        return TLS_FAIL_CLIENT_CERT
    return TLS_FAIL_PROTOCOL


cdef void tls_count_failure(lb_worker *w, int reason) noexcept nogil:
    if reason == TLS_FAIL_TIMEOUT:
        lb_add_u64(&w.stats.tls_fail_timeout, 1)
    elif reason == TLS_FAIL_PLAIN_HTTP:
        lb_add_u64(&w.stats.tls_fail_plain_http, 1)
    elif reason == TLS_FAIL_NEGOTIATION:
        lb_add_u64(&w.stats.tls_fail_negotiation, 1)
    elif reason == TLS_FAIL_CLIENT_CERT:
        lb_add_u64(&w.stats.tls_fail_client_cert, 1)
    elif reason == TLS_FAIL_CLOSED:
        lb_add_u64(&w.stats.tls_fail_closed, 1)
    else:
        lb_add_u64(&w.stats.tls_fail_protocol, 1)


cdef lb_str PLAIN_HTTP_ANSWER

cdef enum:
    SNIFF_TLS = 0                    # a TLS record, or not HTTP: the handshake decides
    SNIFF_HTTP = 1                   # a plain HTTP request line
    SNIFF_WAIT = 2                   # too few bytes to tell
    SNIFF_BYTES = 24                 # a method token and its space fit in this


cdef int tls_sniff_plain_http(int fd) noexcept nogil:
    """Whether the first bytes on a TLS port are a plain HTTP request line
    (`METHOD SP`, any method: OpenSSL itself knows only five), looked at in
    the socket before the handshake takes any of them."""
    cdef uint8_t b[SNIFF_BYTES]
    cdef ssize_t n = recv(fd, b, SNIFF_BYTES, MSG_PEEK | MSG_DONTWAIT)
    cdef ssize_t i
    if n <= 0:
        # nothing yet, or the client left: the handshake sees which
        return SNIFF_WAIT if n < 0 and (errno == EAGAIN or errno == EINTR) else SNIFF_TLS
    if b[0] == 22:                   # a TLS handshake record
        return SNIFF_TLS
    for i in range(n):
        if b[i] == 32:
            return SNIFF_HTTP if i > 0 else SNIFF_TLS
        if not is_tchar(b[i]):
            return SNIFF_TLS
    return SNIFF_WAIT if n < SNIFF_BYTES else SNIFF_TLS


cdef void tls_answer_plain_http(lb_sock *s) noexcept nogil:
    """A client spoke plain HTTP to a TLS port of an http listener: tell it so,
    in plain HTTP (as nginx does), on the bare socket. What is left of its
    request is read first, or the close would reset the connection and the
    client could lose the answer."""
    cdef char sink[4096]
    while recv(s.fd, sink, sizeof(sink), MSG_DONTWAIT) > 0:
        pass
    send(s.fd, PLAIN_HTTP_ANSWER.p, PLAIN_HTTP_ANSWER.n, MSG_NOSIGNAL | MSG_DONTWAIT)


def _plain_http_answer():
    body = "400 Bad Request: this port speaks HTTPS (TLS) only.\n"
    return (f"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n{body}").encode()

PLAIN_HTTP_ANSWER = mkstr(_plain_http_answer())


# ---- choosing a certificate: SNI, then ALPN --------------------------------------------

cdef SSL_CTX *tls_lookup(lb_tls_name *names, uint32_t n, const char *key) noexcept nogil:
    cdef uint32_t lo = 0, hi = n, mid
    cdef int c
    while lo < hi:
        mid = (lo + hi) // 2
        c = strcmp(names[mid].name, key)
        if c == 0:
            return names[mid].ctx
        if c < 0:
            lo = mid + 1
        else:
            hi = mid
    return NULL


cdef SSL_CTX *tls_pick(lb_tls_server *t, const char *servername) noexcept nogil:
    """The context for a server name: the exact name, else a wildcard that
    covers exactly its first label, else NULL (the default)."""
    cdef char name[TLS_NAME_MAX + 1]
    cdef size_t n = strlen(servername), i
    cdef SSL_CTX *ctx
    if n and servername[n - 1] == 46:    # a trailing dot names the same host
        n -= 1
    if n == 0 or n > TLS_NAME_MAX:
        return NULL
    for i in range(n):
        name[i] = <char>lower(<uint8_t>servername[i])
    name[n] = 0
    ctx = tls_lookup(t.exact, t.n_exact, name)
    if ctx != NULL or t.n_wild == 0:
        return ctx
    for i in range(1, n):
        if name[i] == 46:
            return tls_lookup(t.wild, t.n_wild, name + i)
    return NULL


cdef int tls_servername_cb(SSL *ssl, int *alert, void *arg) noexcept nogil:
    cdef lb_tls_server *t = <lb_tls_server *>arg
    cdef const char *servername = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    cdef SSL_CTX *ctx
    if servername == NULL:
        return SSL_TLSEXT_ERR_NOACK  # no SNI: the default certificate
    ctx = tls_pick(t, servername)
    if ctx != NULL and ctx != t.dflt:
        SSL_set_SSL_CTX(ssl, ctx)
    return SSL_TLSEXT_ERR_OK


cdef int tls_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *client,
                     unsigned int client_len, void *arg) noexcept nogil:
    """The listener's first protocol the client offers; none in common: no ALPN
    in the answer (as nginx and HAProxy do), and the client decides."""
    cdef lb_tls_server *t = <lb_tls_server *>arg
    if SSL_select_next_proto(<unsigned char **>out, outlen, t.alpn, t.alpn_len, client,
                             client_len) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_NOACK
    return SSL_TLSEXT_ERR_OK


# ---- session tickets --------------------------------------------------------------------
# The keys live in shared memory (region tls_tickets), written by the supervisor
# only: a ticket any worker issued resumes on every worker, across reloads, and
# on other nodes that share a keys file. OpenSSL calls this for every ticket it
# issues (enc) and every ticket a client offers.

cdef shm_tls_tickets *TLS_TICKETS = NULL   # this worker's region (Worker.__init__)
# Fetched once: a cipher named at each call (EVP_aes_256_cbc()) is looked up in
# the providers every time, a cost every handshake would pay twice.
cdef const EVP_CIPHER *TICKET_CIPHER = EVP_CIPHER_fetch(NULL, b"AES-256-CBC", NULL)


cdef void tickets_read(shm_tls_tickets *src, shm_tls_tickets *out) noexcept nogil:
    cdef uint32_t s1
    while True:
        s1 = lb_acquire_u32(&src.seq)
        if s1 & 1:
            continue
        memcpy(out, src, sizeof(shm_tls_tickets))
        lb_fence_acquire()
        if lb_load_u32(&src.seq) == s1:
            return


cdef int tls_ticket_cb(SSL *ssl, unsigned char *key_name, unsigned char *iv, EVP_CIPHER_CTX *ectx,
                       EVP_MAC_CTX *hctx, int enc) noexcept nogil:
    """1: ticket made or opened; 2: opened, and a new one is to be issued; 0:
    no ticket (enc), or a full handshake (a key no longer known). A new ticket
    goes out when the old one was sealed with another key than the current,
    and after every TLS 1.3 resumption: clients use a TLS 1.3 ticket once
    (RFC 8446 4.6.1), so without a new one every other connection would pay
    for a full handshake."""
    cdef shm_tls_tickets k
    cdef shm_ticket_key *key = NULL
    cdef OSSL_PARAM params[3]
    cdef uint32_t i
    cdef int rc = 1
    if TLS_TICKETS == NULL:
        return 0
    tickets_read(TLS_TICKETS, &k)
    if k.n == 0:
        return 0
    if enc:
        key = &k.keys[k.current]
        if RAND_bytes(iv, 16) != 1 or EVP_EncryptInit_ex(ectx, TICKET_CIPHER, NULL, key.aes, iv) != 1:
            rc = 0
        memcpy(key_name, key.name, 16)
    else:
        for i in range(k.n):
            if memcmp(key_name, k.keys[i].name, 16) == 0:
                key = &k.keys[i]
                rc = 1 if i == k.current and SSL_version(ssl) != TLS1_3_VERSION else 2
                break
        if key == NULL or EVP_DecryptInit_ex(ectx, TICKET_CIPHER, NULL, key.aes, iv) != 1:
            rc = 0
    if rc:
        params[0] = OSSL_PARAM_construct_octet_string(b"key", key.hmac, 32)
        params[1] = OSSL_PARAM_construct_utf8_string(b"digest", <char *>b"SHA256", 0)
        params[2] = OSSL_PARAM_construct_end()
        if EVP_MAC_CTX_set_params(hctx, params) != 1:
            rc = 0
    if rc == 0:
        ERR_clear_error()
    memset(&k, 0, sizeof(k))         # no copy of the keys outlives the call
    return rc


def tickets_attach(Shm shm):
    """This process's ticket keys: the region's (a worker calls it at start)."""
    global TLS_TICKETS
    TLS_TICKETS = shm.tickets


# ---- set-up (Python, in the supervisor) -------------------------------------------------

class TlsError(ValueError):
    """A certificate, key or setting OpenSSL refused; the message says which
    and why, and key names the setting (ciphers, groups, ...) when one is to blame."""

    def __init__(self, message, key=""):
        super().__init__(message)
        self.message = message
        self.key = key


cdef str _openssl_errors():
    """OpenSSL's error queue as one line (emptied)."""
    cdef char buf[256]
    cdef unsigned long e
    parts = []
    while True:
        e = ERR_get_error()
        if e == 0:
            break
        ERR_error_string_n(e, buf, sizeof(buf))
        parts.append(buf.decode(errors="replace"))
    return "; ".join(parts) or "unknown OpenSSL error"


cdef list _read_chain(str path):
    """Every certificate of a PEM file, leaf first (X509 pointers as ints)."""
    cdef BIO *bio = BIO_new_file(path.encode(), b"r")
    cdef X509 *x
    if bio == NULL:
        ERR_clear_error()
        raise TlsError(f"cannot read {path}")
    chain = []
    while True:
        x = PEM_read_bio_X509(bio, NULL, NULL, NULL)
        if x == NULL:
            break
        chain.append(<size_t>x)
    ERR_clear_error()                # the end of the file reads as an error
    BIO_free(bio)
    if not chain:
        raise TlsError(f"{path} holds no PEM certificate")
    return chain


cdef str _name_text(X509_NAME *name):
    cdef BIO *bio = BIO_new(BIO_s_mem())
    cdef char *data
    cdef long n
    X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253)
    n = BIO_get_mem_data(bio, &data)
    text = data[:n].decode(errors="replace")
    BIO_free(bio)
    return text


cdef list _dns_names(X509 *x):
    """The names a certificate is for: its DNS subject alternative names, else
    its subject's common name (RFC 6125: the CN counts only without SANs)."""
    cdef void *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL)
    cdef GENERAL_NAME *gn
    cdef X509_NAME *subject
    cdef int i, loc
    cdef ASN1_STRING *s
    names = []
    if sans != NULL:
        for i in range(OPENSSL_sk_num(sans)):
            gn = <GENERAL_NAME *>OPENSSL_sk_value(sans, i)
            if gn.type == GEN_DNS:
                s = gn.d.dNSName
                names.append((<const char *>ASN1_STRING_get0_data(s))[:ASN1_STRING_length(s)].decode("ascii", "replace"))
        GENERAL_NAMES_free(sans)
        return names
    subject = X509_get_subject_name(x)
    loc = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
    if loc >= 0:
        s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, loc))
        names.append((<const char *>ASN1_STRING_get0_data(s))[:ASN1_STRING_length(s)].decode("ascii", "replace"))
    return names


cdef dict _leaf_info(X509 *x):
    cdef unsigned char md[32]
    cdef unsigned int mdlen = 32
    cdef int days = 0, secs = 0
    cdef EVP_PKEY *pkey = X509_get0_pubkey(x)
    X509_digest(x, EVP_sha256(), md, &mdlen)
    ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x))
    key_type = EVP_PKEY_get_base_id(pkey) if pkey != NULL else 0
    return {
        "names": _dns_names(x),
        "subject": _name_text(X509_get_subject_name(x)),
        "issuer": _name_text(X509_get_issuer_name(x)),
        "not_after": int(_time.time()) + days * 86400 + secs,
        "not_yet_valid": X509_cmp_current_time(X509_get0_notBefore(x)) > 0,
        "sha256": md[:mdlen].hex(),
        "key": "RSA" if key_type == EVP_PKEY_RSA else "ECDSA" if key_type == EVP_PKEY_EC else "other",
        "bits": EVP_PKEY_get_bits(pkey) if pkey != NULL else 0,
    }


def certificate_info(str cert, str key, bint names_required=True):
    """Check a certificate and its key as a listener would load them, and
    describe the leaf: names, subject, issuer, not_after (Unix time), sha256,
    key type and bits. TlsError (the message says what is wrong) when the key
    does not match, the chain is broken (a certificate not issued and signed by
    the next one in the file) or the leaf has expired."""
    cdef SSL_CTX *ctx = SSL_CTX_new(TLS_server_method())
    cdef X509 *cur
    cdef X509 *nxt
    if ctx == NULL:
        raise MemoryError()
    chain = []
    try:
        chain = _read_chain(cert)
        if SSL_CTX_use_certificate_chain_file(ctx, cert.encode()) != 1:
            raise TlsError(f"{cert}: not a usable certificate chain ({_openssl_errors()})")
        if SSL_CTX_use_PrivateKey_file(ctx, key.encode(), SSL_FILETYPE_PEM) != 1:
            if ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH:
                ERR_clear_error()    # a key of the certificate's type, but another one's
                raise TlsError(f"{key} is not the key of {cert}")
            raise TlsError(f"{key}: not a usable private key ({_openssl_errors()})")
        if SSL_CTX_check_private_key(ctx) != 1:
            ERR_clear_error()
            raise TlsError(f"{key} is not the key of {cert}")
        for i in range(len(chain) - 1):
            cur = <X509 *><size_t>chain[i]
            nxt = <X509 *><size_t>chain[i + 1]
            if X509_check_issued(nxt, cur) != X509_V_OK or X509_verify(cur, X509_get0_pubkey(nxt)) != 1:
                ERR_clear_error()
                raise TlsError(f"{cert}: broken chain: certificate {i + 1} ({_name_text(X509_get_subject_name(cur))}) "
                               f"is not issued by certificate {i + 2} ({_name_text(X509_get_subject_name(nxt))})")
        info = _leaf_info(<X509 *><size_t>chain[0])
        if X509_cmp_current_time(X509_get0_notAfter(<X509 *><size_t>chain[0])) < 0:
            raise TlsError(f"{cert}: expired on {_time.strftime('%Y-%m-%d %H:%M:%S UTC', _time.gmtime(info['not_after']))}")
        if names_required and not info["names"]:
            raise TlsError(f"{cert}: names no host (no DNS subject alternative name, no common name)")
        return info
    finally:
        for x in chain:
            X509_free(<X509 *><size_t>x)
        SSL_CTX_free(ctx)


_TLS_VERSIONS = {"TLSv1.2": TLS1_2_VERSION, "TLSv1.3": TLS1_3_VERSION}


cdef int _tls_configure(SSL_CTX *ctx, protocols, str ciphers, str ciphersuites, str groups) except -1:
    """Versions, ciphers and groups; TlsError names the setting OpenSSL refused."""
    versions = [_TLS_VERSIONS[p] for p in protocols]
    SSL_CTX_set_min_proto_version(ctx, min(versions))
    SSL_CTX_set_max_proto_version(ctx, max(versions))
    # OpenSSL takes a list in which some names are unknown, as long as one is
    # known: a typo would silently drop a cipher, so each name is tried alone
    for key, names, setter in (("ciphers", ciphers, _set_ciphers), ("ciphersuites", ciphersuites, _set_suites),
                               ("groups", groups, _set_groups)):
        if not names:
            raise TlsError("must not be empty", key)
        for name in names.split(":"):
            if name and not name.startswith(("!", "-", "+", "@")) and not setter(<size_t>ctx, name):
                ERR_clear_error()
                raise TlsError(f"{name!r} is not known to OpenSSL here", key)
        if not setter(<size_t>ctx, names):
            raise TlsError(_openssl_errors(), key)
    SSL_CTX_set_dh_auto(ctx, 1)      # DHE ciphers get a group as strong as the certificate's key
    return 0


def _set_ciphers(size_t ctx, str names):
    return SSL_CTX_set_cipher_list(<SSL_CTX *>ctx, names.encode()) == 1


def _set_suites(size_t ctx, str names):
    return SSL_CTX_set_ciphersuites(<SSL_CTX *>ctx, names.encode()) == 1


def _set_groups(size_t ctx, str names):
    return SSL_CTX_set1_groups_list(<SSL_CTX *>ctx, names.encode()) == 1


def check_tls_settings(protocols, str ciphers, str ciphersuites, str groups):
    """What a listener's contexts would refuse, as TlsError (its key names the setting)."""
    cdef SSL_CTX *ctx = SSL_CTX_new(TLS_server_method())
    if ctx == NULL:
        raise MemoryError()
    try:
        _tls_configure(ctx, protocols, ciphers, ciphersuites, groups)
    finally:
        SSL_CTX_free(ctx)


cdef class TlsServer:
    """The contexts of one TLS listener, from its config.TlsSettings: one
    SSL_CTX per group of certificates that name the same hosts (an ECDSA and an
    RSA certificate for one name share it, and OpenSSL serves the one the
    client supports), the SNI tables, and the ALPN list."""

    cdef lb_tls_server t
    cdef list ctxs                   # every SSL_CTX (as int), the default first
    cdef list keep                   # the bytes the C struct points into
    cdef bytes sid                   # session id context: a session resumes only on its listener
    cdef bint tickets

    def __cinit__(self):
        memset(&self.t, 0, sizeof(lb_tls_server))
        self.ctxs = []
        self.keep = []

    def __dealloc__(self):
        for ctx in self.ctxs:
            SSL_CTX_free(<SSL_CTX *><size_t>ctx)
        free(self.t.exact)
        free(self.t.wild)

    def __init__(self, settings, str name="", bint tickets=True):
        """settings: a config.TlsSettings; name: the listener's (resumption
        stays within a listener); tickets: session tickets on."""
        self.sid = _hashlib.sha256(name.encode()).digest()   # SSL_MAX_SID_CTX_LENGTH is 32
        self.tickets = tickets
        groups = {}                  # frozenset of names -> [(cert, key)], in config order
        for pair in settings.certificates:
            info = certificate_info(pair.cert, pair.key)
            groups.setdefault(frozenset(n.lower().rstrip(".") for n in info["names"]), []).append(pair)
        exact, wild = {}, {}
        for names, pairs in groups.items():
            ctx = self._context(settings, pairs)
            for name in sorted(names):
                if name.startswith("*."):
                    wild.setdefault(name[1:], ctx)   # the first certificate for a name wins
                else:
                    exact.setdefault(name, ctx)
        self.t.dflt = <SSL_CTX *><size_t>self.ctxs[0]
        self.t.exact = self._table(exact, &self.t.n_exact)
        self.t.wild = self._table(wild, &self.t.n_wild)
        alpn = b"".join(bytes([len(p)]) + p.encode() for p in settings.alpn)
        self.keep.append(alpn)
        self.t.alpn = <unsigned char *><char *>alpn
        self.t.alpn_len = len(alpn)
        self.t.handshake_timeout_ms = max(1, <uint64_t>(settings.handshake_timeout * 1000))
        if settings.hsts:
            rules_init(&self.t.resp, _HeaderSet((("Strict-Transport-Security", settings.hsts),)))
        if settings.client_ca:
            self._client_fields(settings.client_headers)

    cdef size_t _context(self, settings, list pairs) except 0:
        cdef SSL_CTX *ctx = SSL_CTX_new(TLS_server_method())
        if ctx == NULL:
            raise MemoryError()
        self.ctxs.append(<size_t>ctx)
        for pair in pairs:
            if (SSL_CTX_use_certificate_chain_file(ctx, pair.cert.encode()) != 1
                    or SSL_CTX_use_PrivateKey_file(ctx, pair.key.encode(), SSL_FILETYPE_PEM) != 1
                    or SSL_CTX_check_private_key(ctx) != 1):
                raise TlsError(f"{pair.cert}: {_openssl_errors()}")
        _tls_configure(ctx, settings.protocols, settings.ciphers, settings.ciphersuites, settings.groups)
        # Mozilla intermediate leaves the cipher order to the client (it knows
        # whether it has AES in hardware); renegotiation and compression are off
        SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF)
        # partial and moving writes: the loop writes what the socket takes, from
        # buffers that move; release buffers: an idle connection holds none
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                         | SSL_MODE_RELEASE_BUFFERS)
        SSL_CTX_set_read_ahead(ctx, 1)   # see lb_bio_read
        # no server-side session cache: it would be per worker; resumption is
        # by tickets, whose keys every worker shares (tls_ticket_cb)
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)
        SSL_CTX_set_session_id_context(ctx, self.sid, len(self.sid))
        if settings.client_ca:
            # the CAs are told to the client (which certificate to send) and
            # verify what it sends; the SNI-chosen context must verify alike
            if SSL_CTX_load_verify_locations(ctx, settings.client_ca.encode(), NULL) != 1:
                raise TlsError(f"{settings.client_ca}: no CA certificate in it ({_openssl_errors()})", "client_ca")
            SSL_CTX_set_client_CA_list(ctx, SSL_load_client_CA_file(settings.client_ca.encode()))
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                       if settings.client_verify == "required" else 0), NULL)
        if self.tickets:
            SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, tls_ticket_cb)
            # one TLS 1.3 ticket per handshake, not OpenSSL's two: a client
            # keeps one session per server, and every resumption brings it a
            # new ticket, so the second one would cost each handshake a ticket
            # encryption and a record for nothing
            SSL_CTX_set_num_tickets(ctx, 1)
        else:
            SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET)
            SSL_CTX_set_num_tickets(ctx, 0)
        # the traffic secrets the record layer takes over with (TLS 1.3)
        SSL_CTX_set_keylog_callback(ctx, tlsr_keylog_cb)
        SSL_CTX_set_tlsext_servername_callback(ctx, tls_servername_cb)
        SSL_CTX_set_tlsext_servername_arg(ctx, &self.t)
        SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_cb, &self.t)
        return <size_t>ctx

    cdef int _client_fields(self, names) except -1:
        """The scratch rule set the client_cert step fills per request."""
        cdef lb_hrules *r = &self.t.client_fields
        self.t.client_cert = 1
        r.set_name = <lb_str *>calloc(3, sizeof(lb_str))
        r.set_lower = <lb_str *>calloc(3, sizeof(lb_str))
        r.set_value = <lb_str *>calloc(3, sizeof(lb_str))
        r.remove = <lb_str *>calloc(3, sizeof(lb_str))
        if r.set_name == NULL or r.set_lower == NULL or r.set_value == NULL or r.remove == NULL:
            raise MemoryError()
        for i, name in enumerate(names):
            self.t.client_names[i] = mkstr(name)
            self.t.client_lower[i] = mkstr(name.lower())
            self.t.client_values[i].p = <char *>malloc(CLIENT_VALUE_MAX)
            if self.t.client_values[i].p == NULL:
                raise MemoryError()
        return 0

    cdef lb_tls_name *_table(self, dict names, uint32_t *n) except? NULL:
        cdef lb_tls_name *a = <lb_tls_name *>calloc(max(1, len(names)), sizeof(lb_tls_name))
        if a == NULL:
            raise MemoryError()
        for i, name in enumerate(sorted(names)):
            b = name.encode()
            self.keep.append(b)
            a[i].name = b
            a[i].ctx = <SSL_CTX *><size_t>names[name]
        n[0] = len(names)
        return a

    def names(self):
        """{"exact": [...], "wildcard": [...]}: the server names it answers for
        with a certificate of their own."""
        return {"exact": [self.t.exact[i].name.decode() for i in range(self.t.n_exact)],
                "wildcard": ["*" + self.t.wild[i].name.decode() for i in range(self.t.n_wild)]}


cdef class TlsClient:
    """A pool's TLS to its backends, from its config.BackendTls."""

    cdef lb_tls_client t
    cdef bytes sni

    def __cinit__(self):
        memset(&self.t, 0, sizeof(lb_tls_client))

    def __dealloc__(self):
        if self.t.ctx != NULL:
            SSL_CTX_free(self.t.ctx)

    def __init__(self, settings):
        cdef SSL_CTX *ctx = SSL_CTX_new(TLS_client_method())
        if ctx == NULL:
            raise MemoryError()
        self.t.ctx = ctx
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
        SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF)
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                         | SSL_MODE_RELEASE_BUFFERS)
        SSL_CTX_set_read_ahead(ctx, 1)
        if settings.verify:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL)
            if SSL_CTX_load_verify_locations(ctx, settings.ca.encode(), NULL) != 1:
                raise TlsError(f"{settings.ca}: no CA certificate in it ({_openssl_errors()})", "ca")
        else:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL)
        if settings.client is not None:
            c = settings.client
            if (SSL_CTX_use_certificate_chain_file(ctx, c.cert.encode()) != 1
                    or SSL_CTX_use_PrivateKey_file(ctx, c.key.encode(), SSL_FILETYPE_PEM) != 1
                    or SSL_CTX_check_private_key(ctx) != 1):
                raise TlsError(f"{c.cert}: {_openssl_errors()}", "cert")
        # sessions are kept by lb, one per backend per worker (tls_new_session_cb)
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE)
        SSL_CTX_sess_set_new_cb(ctx, tls_new_session_cb)
        self.sni = settings.sni.encode()
        self.t.sni = self.sni
        self.t.verify = settings.verify


def verify_error_text(long code):
    """OpenSSL's words for a certificate verify result (SSL_get_verify_result)."""
    return X509_verify_cert_error_string(code).decode()


class _HeaderSet:
    """Header rules that set fields, in the shape rules_init reads."""

    def __init__(self, pairs):
        self.set = pairs
        self.add = ()
        self.remove = ()
