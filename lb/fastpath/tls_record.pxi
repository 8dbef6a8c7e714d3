# The TLS record layer of client connections after their handshake: the third
# transport (XPRT_TLSR), and how a connection passes to it (docs/tls.md).
#
# OpenSSL does every handshake. Then lb takes the connection's traffic keys and
# sequence numbers and frees the SSL object: OpenSSL keeps 13 KB or more per
# established connection (the SSL object alone is 7.6 KB), where this layer
# keeps an lb_tlsr (about 250 bytes) and two cipher contexts; its buffers exist
# only while bytes wait in them. It is RFC 8446 section 5 (TLS 1.3) and RFC 5246
# section 6.2 with RFC 5288 and RFC 7905 (TLS 1.2) for the AEAD suites:
# AES-GCM and ChaCha20-Poly1305, every suite of Mozilla's intermediate profile.
# A connection on any other suite stays with OpenSSL (XPRT_TLS). A client's
# certificate is summed up for the client_cert step before the SSL object goes.
#
# Where the keys come from:
# - TLS 1.3: the traffic secrets, from OpenSSL's key log callback. The client's
#   first record under them is number 0: read-ahead is off during the
#   handshake and the socket BIO (tls.pxi) keeps what follows the client's
#   Finished, so OpenSSL read none of them. lb's first is the number of tickets
#   OpenSSL sent after its Finished, counted by the message callback.
# - TLS 1.2: the key block, from the master secret (RFC 5246 6.3). Each side's
#   Finished was record 0 under the new keys, so both go on from 1.
# After the handshake the layer answers key updates (and makes its own before
# 2^23 records, far below AES-GCM's limit), reads and sends alerts and
# close_notify, and refuses renegotiation with a no_renegotiation warning, as
# OpenSSL does with SSL_OP_NO_RENEGOTIATION.

cdef enum:
    TR_DRAINED = 1                   # the last recv took less than it asked: the socket is empty
    TR_EOF = 2                       # the peer's FIN
    TR_CLOSED_IN = 4                 # the peer's close_notify
    TR_CLOSED_OUT = 8                # lb's close_notify is sent
    TR_FATAL = 16                    # a fatal alert went or came: nothing more is read or written
    TR_KEY_UPDATE = 32               # the client asked for lb's key update: it goes before lb's next record

    AEAD_AES128_GCM = 0
    AEAD_AES256_GCM = 1
    AEAD_CHACHA20_POLY1305 = 2

    TLSR_TAG = 16
    TLSR_MAX_PLAIN = 16384
    TLSR_MAX_CT13 = 16384 + 256      # the largest record body a TLS 1.3 peer may send
    TLSR_MAX_CT12 = 16384 + 2048     # ... and a TLS 1.2 one
    TLSR_MAX_REC = 5 + 8 + 16384 + 1 + TLSR_TAG   # the largest record lb writes
    TLSR_RBUF = 2 * (5 + TLSR_MAX_CT12)          # a receive buffer: two of the largest records
    TLSR_BATCH = 4                   # records sealed per send(2)
    TLSR_KEY_UPDATE_AT = 1 << 23     # TLS 1.3: lb's own key update after this many records
    TLSR_MAX_QUIET = 32              # records in a row without application data (OpenSSL's limit)

    CT_ALERT = 21
    CT_HANDSHAKE = 22
    CT_APPLICATION_DATA = 23
    HT_CLIENT_HELLO = 1
    HT_KEY_UPDATE = 24

    ALERT_WARNING = 1
    ALERT_FATAL = 2
    ALERT_CLOSE_NOTIFY = 0
    ALERT_UNEXPECTED_MESSAGE = 10
    ALERT_BAD_RECORD_MAC = 20
    ALERT_RECORD_OVERFLOW = 22
    ALERT_ILLEGAL_PARAMETER = 47
    ALERT_DECODE_ERROR = 50
    ALERT_PROTOCOL_VERSION = 70
    ALERT_INTERNAL_ERROR = 80
    ALERT_USER_CANCELED = 90
    ALERT_NO_RENEGOTIATION = 100

cdef extern from *:
    """
    #include <errno.h>
    static inline void lb_set_errno(int e) { errno = e; }
    """
    void set_errno "lb_set_errno"(int e) nogil

# Fetched once: a cipher named at each use is looked up in the providers.
cdef const EVP_CIPHER *AEAD_CIPHER[3]
AEAD_CIPHER[AEAD_AES128_GCM] = EVP_CIPHER_fetch(NULL, b"AES-128-GCM", NULL)
AEAD_CIPHER[AEAD_AES256_GCM] = EVP_CIPHER_fetch(NULL, b"AES-256-GCM", NULL)
AEAD_CIPHER[AEAD_CHACHA20_POLY1305] = EVP_CIPHER_fetch(NULL, b"ChaCha20-Poly1305", NULL)

# This worker's counters (the record layer's calls have no lb_worker at hand).
cdef shm_worker_stats *TLSR_STATS[1]

# Records are sealed here and sent from here; what the socket does not take is
# copied to the connection's wbuf. One per worker: the loop is single-threaded.
cdef uint8_t TLSR_OUT[TLSR_BATCH * TLSR_MAX_REC]


# ---- keys -------------------------------------------------------------------------------
# HMAC through contexts made once, one per hash: OpenSSL's one-shot HMAC()
# looks the digest up in the providers at every call, which made it cost
# twice as much, several times per handshake.

cdef EVP_MAC_CTX *HMAC_BY_HASH[2]    # [0] SHA-256, [1] SHA-384


cdef EVP_MAC_CTX *_hmac_context(const char *digest):
    cdef EVP_MAC *mac = EVP_MAC_fetch(NULL, b"HMAC", NULL)
    cdef EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac) if mac != NULL else NULL
    cdef OSSL_PARAM params[2]
    params[0] = OSSL_PARAM_construct_utf8_string(b"digest", <char *>digest, 0)
    params[1] = OSSL_PARAM_construct_end()
    if ctx == NULL or EVP_MAC_CTX_set_params(ctx, params) != 1:
        raise MemoryError("OpenSSL's HMAC")
    return ctx

HMAC_BY_HASH[0] = _hmac_context(b"SHA256")
HMAC_BY_HASH[1] = _hmac_context(b"SHA384")


cdef bint hmac(int hlen, const uint8_t *key, int klen, const uint8_t *data, size_t n, uint8_t *out) noexcept nogil:
    """HMAC-SHA-256 (hlen 32) or HMAC-SHA-384 (48) of data into out."""
    cdef EVP_MAC_CTX *ctx = HMAC_BY_HASH[1 if hlen == 48 else 0]
    cdef size_t outl = 0
    return (EVP_MAC_init(ctx, key, klen, NULL) == 1 and EVP_MAC_update(ctx, data, n) == 1
            and EVP_MAC_final(ctx, out, &outl, 64) == 1 and <int>outl == hlen)


cdef bint hkdf_expand_label(int hlen, const uint8_t *secret, const char *label, int llen,
                            uint8_t *out, int outlen) noexcept nogil:
    """RFC 8446 7.1 with an empty context, for outputs no longer than the hash
    (a single HMAC block of HKDF-Expand)."""
    cdef uint8_t info[80]
    cdef uint8_t block[64]
    info[0] = 0
    info[1] = <uint8_t>outlen
    info[2] = <uint8_t>(6 + llen)
    memcpy(info + 3, b"tls13 ", 6)
    memcpy(info + 9, label, llen)
    info[9 + llen] = 0               # the context: empty
    info[10 + llen] = 1              # HKDF-Expand's block counter
    if not hmac(hlen, secret, hlen, info, 11 + llen, block):
        return False
    memcpy(out, block, outlen)
    OPENSSL_cleanse(block, sizeof(block))
    return True


cdef bint tls12_prf(int hlen, const uint8_t *secret, int slen, const uint8_t *seed, int seedlen,
                    uint8_t *out, int outlen) noexcept nogil:
    """RFC 5246 5: P_hash(secret, seed), outlen bytes (seed holds the label)."""
    cdef uint8_t a[64]
    cdef uint8_t nxt[64]
    cdef uint8_t buf[64 + 96]
    cdef uint8_t block[64]
    cdef int done = 0, c
    if seedlen > 96 or not hmac(hlen, secret, slen, seed, seedlen, a):
        return False
    while done < outlen:
        memcpy(buf, a, hlen)
        memcpy(buf + hlen, seed, seedlen)
        if not hmac(hlen, secret, slen, buf, hlen + seedlen, block):
            return False
        c = min(hlen, outlen - done)
        memcpy(out + done, block, c)
        done += c
        if not hmac(hlen, secret, slen, a, hlen, nxt):
            return False
        memcpy(a, nxt, hlen)
    OPENSSL_cleanse(a, sizeof(a))
    OPENSSL_cleanse(nxt, sizeof(nxt))
    OPENSSL_cleanse(buf, sizeof(buf))
    OPENSSL_cleanse(block, sizeof(block))
    return True


cdef inline int aead_keylen(uint8_t aead) noexcept nogil:
    return 16 if aead == AEAD_AES128_GCM else 32


cdef bint tr13_keys(lb_tlsr *t, const uint8_t *secret, EVP_CIPHER_CTX *ctx, uint8_t *iv, int enc) noexcept nogil:
    """A TLS 1.3 traffic secret's key into ctx and its IV into iv."""
    cdef uint8_t key[32]
    cdef int keylen = aead_keylen(t.aead)
    cdef bint ok = (hkdf_expand_label(t.hlen, secret, b"key", 3, key, keylen)
                    and hkdf_expand_label(t.hlen, secret, b"iv", 2, iv, 12)
                    and EVP_CipherInit_ex(ctx, AEAD_CIPHER[t.aead], NULL, key, NULL, enc) == 1)
    OPENSSL_cleanse(key, sizeof(key))
    return ok


cdef bint tr13_next(lb_tlsr *t, uint8_t *secret, EVP_CIPHER_CTX *ctx, uint8_t *iv, int enc) noexcept nogil:
    """RFC 8446 7.2: the next generation of a traffic secret, and its keys."""
    cdef uint8_t nxt[48]
    if not hkdf_expand_label(t.hlen, secret, b"traffic upd", 11, nxt, t.hlen):
        return False
    memcpy(secret, nxt, t.hlen)
    OPENSSL_cleanse(nxt, sizeof(nxt))
    return tr13_keys(t, secret, ctx, iv, enc)


cdef bint tr12_keys(lb_tlsr *t, SSL *ssl, int ivlen) noexcept nogil:
    """The TLS 1.2 key block (RFC 5246 6.3): the client's key and IV read, lb's write."""
    cdef uint8_t master[48]
    cdef uint8_t seed[13 + 64]
    cdef uint8_t block[2 * 32 + 2 * 12]
    cdef int k = aead_keylen(t.aead)
    cdef bint ok
    if SSL_SESSION_get_master_key(SSL_get_session(ssl), master, 48) != 48:
        return False
    memcpy(seed, b"key expansion", 13)
    SSL_get_server_random(ssl, seed + 13, 32)
    SSL_get_client_random(ssl, seed + 45, 32)
    ok = tls12_prf(EVP_MD_get_size(SSL_CIPHER_get_handshake_digest(SSL_get_current_cipher(ssl))), master, 48,
                   seed, 77, block, 2 * k + 2 * ivlen)
    if ok:
        # a GCM IV is 4 bytes of salt and the explicit nonce; zeros in the
        # rest let one nonce function serve every suite
        memset(t.riv, 0, 12)
        memset(t.wiv, 0, 12)
        memcpy(t.riv, block + 2 * k, ivlen)
        memcpy(t.wiv, block + 2 * k + ivlen, ivlen)
        ok = (EVP_CipherInit_ex(t.rx, AEAD_CIPHER[t.aead], NULL, block, NULL, 0) == 1
              and EVP_CipherInit_ex(t.tx, AEAD_CIPHER[t.aead], NULL, block + k, NULL, 1) == 1)
    OPENSSL_cleanse(master, sizeof(master))
    OPENSSL_cleanse(block, sizeof(block))
    return ok


# ---- the handshake's end: OpenSSL hands over ------------------------------------------

cdef void tlsr_keylog_cb(const SSL *ssl, const char *line) noexcept nogil:
    """The TLS 1.3 application traffic secrets, as OpenSSL derives them."""
    cdef lb_tlsr *t = bio_tlsr(SSL_get_rbio(ssl))
    cdef const char *p
    cdef uint8_t *dst
    cdef size_t n, i
    cdef int hi, lo
    if t == NULL:
        return
    if strncmp(line, b"CLIENT_TRAFFIC_SECRET_0 ", 24) == 0:
        dst = t.rsecret
        t.secrets |= 1
    elif strncmp(line, b"SERVER_TRAFFIC_SECRET_0 ", 24) == 0:
        dst = t.wsecret
        t.secrets |= 2
    else:
        return
    p = line + 24 + 64 + 1           # the label, the client random in hex, a space
    n = strlen(p) // 2
    if n != 32 and n != 48:
        t.secrets = 0
        return
    for i in range(n):
        hi = hex_value(<uint8_t>p[2 * i])
        lo = hex_value(<uint8_t>p[2 * i + 1])
        if hi < 0 or lo < 0:
            t.secrets = 0
            return
        dst[i] = <uint8_t>(hi << 4 | lo)
    t.hlen = <uint8_t>n


cdef inline int hex_value(uint8_t c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef void tlsr_msg_cb(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl,
                      void *arg) noexcept nogil:
    """Counts the TLS 1.3 tickets OpenSSL sends: each is one record under lb's
    application key, so their number is lb's next sequence number."""
    cdef lb_tlsr *t
    if write_p and content_type == SSL3_RT_HANDSHAKE and len > 0 \
            and (<const uint8_t *>buf)[0] == SSL3_MT_NEWSESSION_TICKET:
        t = bio_tlsr(SSL_get_rbio(ssl))
        if t != NULL:
            t.nst += 1


cdef int tls_take_over(lb_sock *s) noexcept nogil:
    """A client's handshake is done: the record layer takes the connection and
    its SSL object is freed. 1: taken, 0: it stays with OpenSSL, -1: out of
    memory."""
    cdef SSL *ssl = <SSL *>s.ctx
    cdef BIO *b = SSL_get_rbio(ssl)
    cdef lb_tlsr *t = bio_tlsr(b)
    cdef const SSL_CIPHER *c
    cdef int nid, version
    if t == NULL or SSL_has_pending(ssl):
        return 0
    c = SSL_get_current_cipher(ssl)
    nid = SSL_CIPHER_get_cipher_nid(c)
    if nid == NID_aes_128_gcm:
        t.aead = AEAD_AES128_GCM
    elif nid == NID_aes_256_gcm:
        t.aead = AEAD_AES256_GCM
    elif nid == NID_chacha20_poly1305:
        t.aead = AEAD_CHACHA20_POLY1305
    else:
        return 0
    # a client that negotiated smaller records (RFC 6066 max_fragment_length)
    # stays with OpenSSL, which keeps to them
    if SSL_SESSION_get_max_fragment_length(SSL_get_session(ssl)) != 0:
        return 0
    version = SSL_version(ssl)
    if version == TLS1_3_VERSION and (t.secrets != 3 or t.hlen != EVP_MD_get_size(SSL_CIPHER_get_handshake_digest(c))):
        return 0
    if version != TLS1_3_VERSION and version != TLS1_2_VERSION:
        return 0
    t.rx = EVP_CIPHER_CTX_new()
    t.tx = EVP_CIPHER_CTX_new()
    if t.rx == NULL or t.tx == NULL:
        return -1
    t.version = <uint16_t>version
    t.suite = SSL_CIPHER_get_protocol_id(c)
    if version == TLS1_3_VERSION:
        if not (tr13_keys(t, t.rsecret, t.rx, t.riv, 0) and tr13_keys(t, t.wsecret, t.tx, t.wiv, 1)):
            return -1
        t.rseq = 0
        t.wseq = t.nst
    else:
        if not tr12_keys(t, ssl, 12 if t.aead == AEAD_CHACHA20_POLY1305 else 4):
            return -1
        t.rseq = 1
        t.wseq = 1
    if SSL_get0_peer_certificate(ssl) != NULL and not tr_keep_peer(t, ssl):
        return -1
    BIO_set_data(b, NULL)            # the struct outlives the BIO now
    SSL_free(ssl)
    s.ctx = t
    s.xp = &XPRT_TLSR
    if t.roff == t.rlen:             # nothing came after the Finished: no buffer kept
        free(t.rbuf)
        t.rbuf = NULL
        t.roff = t.rlen = 0
    return 1


cdef bint tr_keep_peer(lb_tlsr *t, SSL *ssl) noexcept nogil:
    """What the client_cert step tells backends about the client's
    certificate, kept when the SSL object goes."""
    cdef char out[CLIENT_VALUE_MAX + 64]
    cdef size_t n = peer_summary(ssl, out)
    t.peer = <char *>malloc(n)
    if t.peer == NULL:
        return False
    memcpy(t.peer, out, n)
    t.peer_len = <uint32_t>n
    return True


cdef void tlsr_free(lb_tlsr *t) noexcept nogil:
    free(t.peer)
    free(t.rbuf)
    free(t.wbuf)
    if t.rx != NULL:
        EVP_CIPHER_CTX_free(t.rx)
    if t.tx != NULL:
        EVP_CIPHER_CTX_free(t.tx)
    OPENSSL_cleanse(t, sizeof(lb_tlsr))   # the traffic secrets
    free(t)


# ---- records ----------------------------------------------------------------------------

cdef inline void tr_nonce(const uint8_t *iv, uint64_t seq, uint8_t *nonce) noexcept nogil:
    """The per-record nonce: the IV with the sequence number XORed into its
    last 8 bytes (TLS 1.3, RFC 7905; TLS 1.2 GCM: salt and explicit nonce)."""
    cdef int i
    memcpy(nonce, iv, 12)
    for i in range(8):
        nonce[11 - i] ^= <uint8_t>(seq >> (8 * i))


cdef inline void put_be64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[7 - i] = <uint8_t>(v >> (8 * i))


cdef int tr_seal(lb_tlsr *t, uint8_t ctype, const uint8_t *data, uint32_t n, uint8_t *out) noexcept nogil:
    """One record of n <= TLSR_MAX_PLAIN bytes, sealed into out: its size, or -1."""
    cdef uint8_t nonce[12]
    cdef uint8_t aad[13]
    cdef uint8_t *ct
    cdef int outl = 0, done, clen
    cdef bint tls13 = t.version == TLS1_3_VERSION
    cdef uint32_t explicit = 8 if not tls13 and t.aead != AEAD_CHACHA20_POLY1305 else 0
    clen = n + (1 if tls13 else explicit) + TLSR_TAG
    out[0] = CT_APPLICATION_DATA if tls13 else ctype
    out[1] = 3
    out[2] = 3
    out[3] = <uint8_t>(clen >> 8)
    out[4] = <uint8_t>clen
    tr_nonce(t.wiv, t.wseq, nonce)
    ct = out + 5 + explicit
    if tls13:
        if EVP_CipherInit_ex(t.tx, NULL, NULL, NULL, nonce, 1) != 1 \
                or EVP_CipherUpdate(t.tx, NULL, &outl, out, 5) != 1:
            return -1
    else:
        put_be64(aad, t.wseq)
        aad[8] = ctype
        aad[9] = 3
        aad[10] = 3
        aad[11] = <uint8_t>(n >> 8)
        aad[12] = <uint8_t>n
        if explicit:
            memcpy(out + 5, nonce + 4, 8)
        if EVP_CipherInit_ex(t.tx, NULL, NULL, NULL, nonce, 1) != 1 \
                or EVP_CipherUpdate(t.tx, NULL, &outl, aad, 13) != 1:
            return -1
    done = 0
    if n:
        if EVP_CipherUpdate(t.tx, ct, &outl, data, n) != 1:
            return -1
        done = outl
    if tls13:
        if EVP_CipherUpdate(t.tx, ct + done, &outl, &ctype, 1) != 1:
            return -1
        done += outl
    if EVP_CipherFinal_ex(t.tx, ct + done, &outl) != 1:
        return -1
    done += outl
    if done != <int>(n + (1 if tls13 else 0)) \
            or EVP_CIPHER_CTX_ctrl(t.tx, EVP_CTRL_AEAD_GET_TAG, TLSR_TAG, ct + done) != 1:
        return -1
    t.wseq += 1
    return 5 + clen


cdef int tr_open(lb_tlsr *t, uint8_t *rec, uint32_t clen, uint8_t **plain, uint32_t *plen,
                 uint8_t *ctype) noexcept nogil:
    """Decrypt the whole record at rec (header and clen bytes) in place: 0, or
    the alert its failure calls for."""
    cdef uint8_t nonce[12]
    cdef uint8_t aad[13]
    cdef uint8_t *ct
    cdef int outl = 0, done
    cdef uint32_t n
    cdef bint tls13 = t.version == TLS1_3_VERSION
    cdef uint32_t explicit = 8 if not tls13 and t.aead != AEAD_CHACHA20_POLY1305 else 0
    if tls13:
        # after the handshake every TLS 1.3 record is protected (a
        # change_cipher_spec is welcome only until the peer's Finished)
        if rec[0] != CT_APPLICATION_DATA:
            return ALERT_UNEXPECTED_MESSAGE
    elif rec[0] != CT_ALERT and rec[0] != CT_HANDSHAKE and rec[0] != CT_APPLICATION_DATA:
        return ALERT_UNEXPECTED_MESSAGE
    elif rec[1] != 3 or rec[2] != 3:
        return ALERT_PROTOCOL_VERSION
    if clen < explicit + TLSR_TAG + (1 if tls13 else 0):
        return ALERT_BAD_RECORD_MAC
    n = clen - explicit - TLSR_TAG
    ct = rec + 5 + explicit
    if tls13:
        if n > TLSR_MAX_PLAIN + 1:    # content, type and padding (RFC 8446 5.2)
            return ALERT_RECORD_OVERFLOW
        tr_nonce(t.riv, t.rseq, nonce)
        if EVP_CipherInit_ex(t.rx, NULL, NULL, NULL, nonce, 0) != 1 \
                or EVP_CipherUpdate(t.rx, NULL, &outl, rec, 5) != 1:
            return ALERT_INTERNAL_ERROR
    else:
        if n > TLSR_MAX_PLAIN:
            return ALERT_RECORD_OVERFLOW
        if explicit:                 # the sender's explicit nonce, after the salt
            memcpy(nonce, t.riv, 4)
            memcpy(nonce + 4, rec + 5, 8)
        else:
            tr_nonce(t.riv, t.rseq, nonce)
        put_be64(aad, t.rseq)
        aad[8] = rec[0]
        aad[9] = 3
        aad[10] = 3
        aad[11] = <uint8_t>(n >> 8)
        aad[12] = <uint8_t>n
        if EVP_CipherInit_ex(t.rx, NULL, NULL, NULL, nonce, 0) != 1 \
                or EVP_CipherUpdate(t.rx, NULL, &outl, aad, 13) != 1:
            return ALERT_INTERNAL_ERROR
    done = 0
    if n:
        if EVP_CipherUpdate(t.rx, ct, &outl, ct, n) != 1:
            return ALERT_BAD_RECORD_MAC
        done = outl
    if EVP_CIPHER_CTX_ctrl(t.rx, EVP_CTRL_AEAD_SET_TAG, TLSR_TAG, ct + n) != 1 \
            or EVP_CipherFinal_ex(t.rx, ct + done, &outl) != 1 or done + outl != <int>n:
        return ALERT_BAD_RECORD_MAC
    t.rseq += 1
    if tls13:
        # the inner plaintext: content, its type, zeros of padding
        while n > 0 and ct[n - 1] == 0:
            n -= 1
        if n == 0:
            return ALERT_UNEXPECTED_MESSAGE
        n -= 1
        ctype[0] = ct[n]
        if n > TLSR_MAX_PLAIN:
            return ALERT_RECORD_OVERFLOW
    else:
        ctype[0] = rec[0]
    plain[0] = ct
    plen[0] = n
    return 0


cdef bint tr_keep(lb_tlsr *t, const uint8_t *p, uint32_t n) noexcept nogil:
    """Records the socket did not take wait in wbuf, after any already there."""
    cdef uint32_t have = t.wlen - t.woff
    cdef char *nb = <char *>malloc(have + n)
    if nb == NULL:
        return False
    if have:
        memcpy(nb, t.wbuf + t.woff, have)
    memcpy(nb + have, p, n)
    free(t.wbuf)
    t.wbuf = nb
    t.woff = 0
    t.wlen = have + n
    return True


cdef int tr_flush(lb_tlsr *t) noexcept nogil:
    """Send what waits in wbuf: 1 all of it, 0 the socket is full, -1 failed."""
    cdef ssize_t r
    while t.woff < t.wlen:
        r = send(t.fd, t.wbuf + t.woff, t.wlen - t.woff, MSG_NOSIGNAL | MSG_DONTWAIT)
        if r > 0:
            t.woff += r
        elif r < 0 and errno == EINTR:
            continue
        elif r < 0 and errno == EAGAIN:
            return 0
        else:
            return -1
    free(t.wbuf)
    t.wbuf = NULL
    t.woff = t.wlen = 0
    return 1


cdef void tr_alert(lb_tlsr *t, uint8_t level, uint8_t desc) noexcept nogil:
    """Send an alert. Like every record it goes behind those the socket has
    not taken yet (a record dropped or cut would break the stream for every
    record after it), and out as soon as the socket takes it."""
    cdef uint8_t rec[64]
    cdef uint8_t a[2]
    cdef int n
    if t.flags & (TR_FATAL | TR_CLOSED_OUT):
        return
    a[0] = level
    a[1] = desc
    n = tr_seal(t, CT_ALERT, a, 2, rec)
    if n > 0 and tr_keep(t, rec, n):
        tr_flush(t)


cdef ssize_t tr_fail(lb_tlsr *t, int alert) noexcept nogil:
    """The connection is broken (a fatal alert goes to the peer when there is
    one to send). The socket is shut down, so that the loop hears of it even
    when this call's caller was given bytes that came before."""
    if alert > 0:
        tr_alert(t, ALERT_FATAL, <uint8_t>alert)
    if alert > 0 and TLSR_STATS[0] != NULL:
        lb_add_u64(&TLSR_STATS[0].tls_bad_records, 1)
    t.flags |= TR_FATAL
    shutdown(t.fd, SHUT_RDWR)
    set_errno(EPROTO)
    return XPRT_ERROR


cdef bint tr_send_key_update(lb_tlsr *t, uint8_t requested) noexcept nogil:
    """A KeyUpdate under the current key, queued before anything lb writes
    next, then the next write key."""
    cdef uint8_t msg[5]
    cdef uint8_t rec[64]
    cdef int n
    msg[0] = HT_KEY_UPDATE
    msg[1] = 0
    msg[2] = 0
    msg[3] = 1
    msg[4] = requested
    n = tr_seal(t, CT_HANDSHAKE, msg, 5, rec)
    if n < 0 or not tr_keep(t, rec, n) or not tr13_next(t, t.wsecret, t.tx, t.wiv, 1):
        return False
    t.wseq = 0
    return tr_flush(t) >= 0


cdef int tr_handshake(lb_tlsr *t, const uint8_t *p, uint32_t n) noexcept nogil:
    """Handshake messages after the handshake: TLS 1.3 KeyUpdate; a TLS 1.2
    ClientHello (renegotiation) is refused with a warning and skipped. 0, or
    the alert to send."""
    cdef uint32_t i = 0, c
    cdef bint tls13 = t.version == TLS1_3_VERSION
    while i < n:
        if t.hs_got < 4:             # the message's header: type, 24-bit length
            if t.hs_got == 0:
                t.hs_type = p[i]
                t.hs_need = 0
            else:
                t.hs_need = t.hs_need << 8 | p[i]
            t.hs_got += 1
            i += 1
            if t.hs_got < 4:
                continue
            if tls13:
                if t.hs_type != HT_KEY_UPDATE:
                    return ALERT_UNEXPECTED_MESSAGE
                if t.hs_need != 1:
                    return ALERT_DECODE_ERROR
            elif t.hs_type != HT_CLIENT_HELLO:
                return ALERT_UNEXPECTED_MESSAGE
            if t.hs_need:
                continue
        else:
            c = min(t.hs_need, n - i)
            t.hs_body = p[i]
            i += c
            t.hs_need -= c
            if t.hs_need:
                continue
        t.hs_got = 0                 # a whole message
        if not tls13:
            tr_alert(t, ALERT_WARNING, ALERT_NO_RENEGOTIATION)
            continue
        if i != n:                   # a key update ends its record (RFC 8446 5.1)
            return ALERT_UNEXPECTED_MESSAGE
        if t.hs_body > 1:
            return ALERT_ILLEGAL_PARAMETER
        if not tr13_next(t, t.rsecret, t.rx, t.riv, 0):
            return ALERT_INTERNAL_ERROR
        t.rseq = 0
        # one answer however many requests come before lb writes again
        # (RFC 8446 4.6.3), and none once lb has closed its side
        if t.hs_body == 1 and not (t.flags & TR_CLOSED_OUT):
            t.flags |= TR_KEY_UPDATE
    return 0


cdef int tr_record(lb_tlsr *t, uint8_t *rec, uint32_t clen) noexcept nogil:
    """One whole record: application data is left in rbuf for the caller. 0,
    an alert to send, or -1 (the peer's fatal alert)."""
    cdef uint8_t *p
    cdef uint32_t n
    cdef uint8_t ctype
    cdef int alert = tr_open(t, rec, clen, &p, &n, &ctype)
    if alert:
        return alert
    if ctype == CT_APPLICATION_DATA and n:
        if t.hs_got:                 # no data inside a handshake message
            return ALERT_UNEXPECTED_MESSAGE
        t.poff = <uint32_t>(<char *>p - t.rbuf)
        t.plen = n
        t.quiet = 0
        return 0
    # Records without data (empty ones, key updates, warnings) cost lb work
    # and give nothing: a run of them is a flood, as OpenSSL judges it
    t.quiet += 1
    if t.quiet > TLSR_MAX_QUIET:
        return ALERT_UNEXPECTED_MESSAGE
    if ctype == CT_APPLICATION_DATA:
        return 0
    if ctype == CT_HANDSHAKE:
        if n == 0:                   # no empty handshake fragments (RFC 8446 5.1, RFC 5246 6.2.1)
            return ALERT_UNEXPECTED_MESSAGE
        return tr_handshake(t, p, n)
    if ctype == CT_ALERT:
        if n != 2:
            return ALERT_DECODE_ERROR
        if p[0] != ALERT_WARNING and p[0] != ALERT_FATAL:
            return ALERT_ILLEGAL_PARAMETER
        if p[1] == ALERT_CLOSE_NOTIFY:
            t.flags |= TR_CLOSED_IN
            # the end of the stream must reach the loop even when the socket
            # stays open and this read also gave data: an edge of its own
            shutdown(t.fd, SHUT_RD)
            return 0
        if p[0] == ALERT_WARNING and (p[1] == ALERT_USER_CANCELED or t.version != TLS1_3_VERSION):
            return 0
        t.flags |= TR_FATAL
        set_errno(ECONNRESET)
        return -1
    return ALERT_UNEXPECTED_MESSAGE


# ---- the transport ------------------------------------------------------------------

cdef ssize_t tlsr_recv(lb_sock *s, void *buf, size_t n) noexcept nogil:
    cdef lb_tlsr *t = <lb_tlsr *>s.ctx
    cdef size_t got = 0, c
    cdef bint drained = False
    cdef uint32_t avail, clen, room
    cdef uint8_t *rec
    cdef ssize_t r
    cdef int alert
    if t.flags & TR_FATAL:
        set_errno(EPROTO)
        return XPRT_ERROR
    if t.wlen and tr_flush(t) < 0:
        return tr_fail(t, 0)
    # Decrypt and hand out whole records until the caller's buffer is full, or
    # the socket is empty and what is left is less than a record (the
    # transport contract: a short count means nothing more is there now)
    while True:
        if t.plen:
            c = min(<size_t>t.plen, n - got)
            memcpy(<char *>buf + got, t.rbuf + t.poff, c)
            t.poff += c
            t.plen -= c
            got += c
            if got == n:
                break
        if t.flags & TR_CLOSED_IN:
            break
        avail = t.rlen - t.roff
        if avail >= 5:
            rec = <uint8_t *>t.rbuf + t.roff
            clen = rec[3] << 8 | rec[4]
            if clen > (TLSR_MAX_CT13 if t.version == TLS1_3_VERSION else TLSR_MAX_CT12):
                r = tr_fail(t, ALERT_RECORD_OVERFLOW)
                return got if got else r
            if avail >= 5 + clen:
                t.roff += 5 + clen
                alert = tr_record(t, rec, clen)
                if alert:
                    r = tr_fail(t, alert)
                    return got if got else r
                continue
        if drained or t.flags & TR_EOF:
            break
        # less than a whole record: read (the plaintext is all given out, so
        # the rest of the buffer can move to its start)
        if t.rbuf == NULL:
            t.rbuf = <char *>malloc(TLSR_RBUF)
            if t.rbuf == NULL:
                set_errno(ENOMEM)
                return got if got else XPRT_ERROR
            t.roff = t.rlen = 0
        elif t.roff:
            memmove(t.rbuf, t.rbuf + t.roff, avail)
            t.roff = 0
            t.rlen = avail
        room = TLSR_RBUF - t.rlen
        while True:
            r = recv(t.fd, t.rbuf + t.rlen, room, MSG_DONTWAIT)
            if r >= 0 or errno != EINTR:
                break
        if r > 0:
            t.rlen += <uint32_t>r
            drained = <size_t>r < room
        elif r == 0:
            t.flags |= TR_EOF
        elif errno == EAGAIN:
            drained = True
        else:
            t.flags |= TR_FATAL      # (errno: the socket's error)
            return got if got else XPRT_ERROR
    if t.rbuf != NULL and t.roff == t.rlen and t.plen == 0:
        free(t.rbuf)                 # an idle connection holds no buffer
        t.rbuf = NULL
        t.roff = t.rlen = 0
    if got:
        return got
    if t.flags & TR_CLOSED_IN:
        return 0
    if t.flags & TR_EOF:
        if t.rlen != t.roff:         # the stream ends inside a record: cut, not closed
            set_errno(EPROTO)
            return XPRT_ERROR
        return 0                     # an end without close_notify is an ordinary close
    return XPRT_WANT_READ


cdef ssize_t tlsr_send(lb_sock *s, const void *buf, size_t n) noexcept nogil:
    cdef lb_tlsr *t = <lb_tlsr *>s.ctx
    cdef uint32_t ends[TLSR_BATCH]   # where each sealed record ends in TLSR_OUT
    cdef size_t carried[TLSR_BATCH]  # ... and the caller's bytes up to its end
    cdef size_t sent = 0, batch, m
    cdef uint32_t o
    cdef int k, j, r
    cdef ssize_t w
    if t.flags & (TR_FATAL | TR_CLOSED_OUT):
        set_errno(EPIPE)
        return XPRT_ERROR
    # Records the socket did not take go first. When they carry the caller's
    # bytes (it calls again with the same bytes, as OpenSSL asks of SSL_write),
    # those count as sent once they are out, and the rest follows: a short
    # count must mean the socket is full, or no event would come to go on.
    # (Another call may have sent them already: a read that flushed, an alert.)
    if t.wlen:
        r = tr_flush(t)
        if r < 0:
            return tr_fail(t, 0)
        if r == 0:
            return XPRT_WANT_WRITE
    sent = min(<size_t>t.wplain, n)
    t.wplain = 0
    while sent < n:
        if t.flags & TR_KEY_UPDATE or (t.version == TLS1_3_VERSION and t.wseq >= TLSR_KEY_UPDATE_AT):
            t.flags &= ~TR_KEY_UPDATE
            if not tr_send_key_update(t, 0):
                return tr_fail(t, ALERT_INTERNAL_ERROR)
            if t.wlen:
                return sent if sent else XPRT_WANT_WRITE
        o = 0
        batch = 0
        k = 0
        while k < TLSR_BATCH and sent + batch < n:
            m = min(<size_t>TLSR_MAX_PLAIN, n - sent - batch)
            r = tr_seal(t, CT_APPLICATION_DATA, <const uint8_t *>buf + sent + batch, <uint32_t>m, TLSR_OUT + o)
            if r < 0:
                r = <int>tr_fail(t, ALERT_INTERNAL_ERROR)
                return sent if sent else r
            o += r
            batch += m
            ends[k] = o
            carried[k] = batch
            k += 1
        while True:
            w = send(t.fd, TLSR_OUT, o, MSG_NOSIGNAL | MSG_DONTWAIT)
            if w >= 0 or errno != EINTR:
                break
        if w == <ssize_t>o:
            sent += batch
            continue
        if w < 0:
            if errno != EAGAIN:
                t.flags |= TR_FATAL
                return sent if sent else XPRT_ERROR
            w = 0
        # The socket is full. The records it took whole count now; the rest
        # are sealed already (their sequence numbers spent) and wait in wbuf.
        j = 0
        while j < k and ends[j] <= <uint32_t>w:
            j += 1
        m = carried[j - 1] if j else 0
        if not tr_keep(t, TLSR_OUT + w, o - <uint32_t>w):
            return tr_fail(t, 0)
        t.wplain = <uint32_t>(batch - m)
        sent += m
        return sent if sent else XPRT_WANT_WRITE
    return sent


cdef void tlsr_shutw(lb_sock *s) noexcept nogil:
    cdef lb_tlsr *t = <lb_tlsr *>s.ctx
    tr_alert(t, ALERT_WARNING, ALERT_CLOSE_NOTIFY)
    t.flags |= TR_CLOSED_OUT
    shutdown(s.fd, SHUT_WR)


cdef void tlsr_close(lb_sock *s, bint reset) noexcept nogil:
    cdef lb_tlsr *t = <lb_tlsr *>s.ctx
    if not reset:
        # the end of a response delimited by the close is told from a cut
        tr_alert(t, ALERT_WARNING, ALERT_CLOSE_NOTIFY)
    tlsr_free(t)
    s.ctx = NULL
    plain_close(s, reset)


cdef lb_xprt XPRT_TLSR
XPRT_TLSR.name = b"tls-record"
XPRT_TLSR.recv = tlsr_recv
XPRT_TLSR.send = tlsr_send
XPRT_TLSR.shutw = tlsr_shutw
XPRT_TLSR.close = tlsr_close
XPRT_TLSR.splice = 0
