# The client_cert step (request phase, http mode, TLS listeners with client_ca):
# the backend is told about the client's certificate in three fields (subject,
# SHA-256 fingerprint, verify result), and whatever the client sent under
# those names itself is removed. The handshake already enforced the policy
# (client_verify): a certificate that reached this point verified, or there
# is none (optional).

cdef enum:
    CLIENT_VALUE_MAX = 2048          # a subject in RFC 2253 form longer than this is cut


cdef inline void client_field(lb_tls_server *t, uint32_t i, const char *value, size_t n) noexcept nogil:
    """Field i gets the value (set), or, without one, none at all (remove)."""
    cdef lb_hrules *r = &t.client_fields
    if n == 0:
        r.remove[r.n_remove] = t.client_lower[i]
        r.n_remove += 1
        return
    if n > CLIENT_VALUE_MAX:
        n = CLIENT_VALUE_MAX
    memcpy(t.client_values[i].p, value, n)
    t.client_values[i].n = n
    r.set_name[r.n_set] = t.client_names[i]
    r.set_lower[r.n_set] = t.client_lower[i]
    r.set_value[r.n_set] = t.client_values[i]
    r.n_set += 1


cdef BIO *PEER_BIO = NULL            # a memory BIO subjects are printed into (made at first use)


cdef size_t peer_summary(SSL *ssl, char *out) noexcept nogil:
    """The client's certificate into out (CLIENT_VALUE_MAX + 64 bytes): its
    subject in RFC 2253 form (cut at CLIENT_VALUE_MAX), then its SHA-256
    fingerprint in hex; the length, 0 without a certificate."""
    global PEER_BIO
    cdef X509 *cert = SSL_get0_peer_certificate(ssl)
    cdef unsigned char md[32]
    cdef unsigned int mdlen = 32
    cdef char *subject
    cdef long n = 0
    cdef int i
    if cert == NULL:
        return 0
    if PEER_BIO == NULL:
        PEER_BIO = BIO_new(BIO_s_mem())
    if PEER_BIO != NULL:
        BIO_reset(PEER_BIO)
        X509_NAME_print_ex(PEER_BIO, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253)
        n = min(BIO_get_mem_data(PEER_BIO, &subject), <long>CLIENT_VALUE_MAX)
        memcpy(out, subject, n)
    X509_digest(cert, EVP_sha256(), md, &mdlen)
    for i in range(32):
        out[n + 2 * i] = b"0123456789abcdef"[md[i] >> 4]
        out[n + 2 * i + 1] = b"0123456789abcdef"[md[i] & 15]
    return n + 64


cdef int step_client_cert(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    client_cert_fill(w, h)
    rulesets_push(h.rq_rules, &h.n_rq_rules, &w.listeners[h.c.listener].tls.client_fields)
    return STEP_CONTINUE


cdef void client_cert_fill(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The three fields' values for this connection's certificate, into the
    listener's buffers (which the request being rewritten next uses)."""
    cdef lb_tls_server *t = w.listeners[h.c.listener].tls
    cdef lb_sock *s = h_client_sock(h)
    cdef char scratch[CLIENT_VALUE_MAX + 64]
    cdef const char *peer
    cdef size_t n
    # lb's record layer kept the summary when it freed the SSL object; a
    # connection OpenSSL still carries is asked
    if s.xp == &XPRT_TLSR:
        peer = (<lb_tlsr *>s.ctx).peer
        n = (<lb_tlsr *>s.ctx).peer_len
    else:
        peer = scratch
        n = peer_summary(<SSL *>s.ctx, scratch)
    t.client_fields.n_set = 0
    t.client_fields.n_remove = 0
    if n == 0:
        client_field(t, 0, NULL, 0)
        client_field(t, 1, NULL, 0)
        client_field(t, 2, b"NONE", 4)
    else:
        client_field(t, 0, peer, n - 64)
        client_field(t, 1, peer + n - 64, 64)
        client_field(t, 2, b"SUCCESS", 7)


def wants_client_cert(listener):
    return listener.mode == "http" and listener.tls is not None and bool(listener.tls.client_ca)
