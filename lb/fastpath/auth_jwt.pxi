# JWT ([auth.NAME] type = "jwt", docs/gateway.md), in the auth step.
#
# The token comes as `Authorization: Bearer` (or in a cookie). Its three parts
# are decoded by the strict parsers of jwt_parse.pxi; the header must name one
# algorithm of a fixed list (case matters, so "none" in any spelling is no
# algorithm), with no `crit` (lb understands no extension) and no `b64`. The
# keys are the JWKS's alone: `jwk`, `jku`, `x5u`, `x5c` in the header are
# never read, and `kid` only chooses among the configured keys. A key
# verifies only the algorithms of its type (and its JWKS `alg`, when set), so
# an RSA public key is never an HMAC secret. ECDSA signatures are r||s of the
# curve's exact size; r and s must be in 1..n-1 before they are put in DER for
# libcrypto. The claims (exp, nbf, iat with the leeway; iss; aud; the required
# ones) are checked on every request, from the wall clock.
#
# The signature check runs in the loop: an ES256 check costs tens of
# microseconds (bench/README.md), less than handing it to a thread and back
# (two wake-ups, two context switches, on the same few cores), and a verified
# signature is cached by the token's SHA-256 until its exp, so a client that
# sends the same token pays once. The cache is per worker and emptied when the
# keys change.
#
# The keys come from shared memory (the auth's halves, shm.pxi: packed by
# lb/config/jwks.py, published by the supervisor, which watches the file): a
# worker sees the generation move and rebuilds its EVP_PKEYs.

from lb.includes.evp_verify cimport (EVP_MD_CTX, EVP_PKEY_CTX, EVP_MD_CTX_new, EVP_MD_CTX_free,
                                     EVP_DigestVerifyInit, EVP_DigestVerify, EVP_PKEY_free, EVP_PKEY_get_size,
                                     EVP_PKEY_get_id, EVP_PKEY_ED25519, EVP_PKEY_CTX_set_rsa_padding,
                                     EVP_PKEY_CTX_set_rsa_pss_saltlen, RSA_PKCS1_PADDING, RSA_PKCS1_PSS_PADDING,
                                     d2i_PUBKEY, CRYPTO_memcmp, EVP_MD_fetch, EVP_PKEY_CTX_new, EVP_PKEY_CTX_free,
                                     EVP_PKEY_verify_init, EVP_PKEY_verify, EVP_PKEY_CTX_set_signature_md)
from lb.includes.openssl cimport (EVP_PKEY, EVP_MD, EVP_Digest, EVP_sha256, EVP_sha384, EVP_MD_get_size, HMAC,
                                  OPENSSL_cleanse, EVP_PKEY_get_base_id, EVP_PKEY_get_bits, EVP_PKEY_RSA,
                                  EVP_PKEY_EC, ERR_clear_error)
from lb.includes.time cimport CLOCK_REALTIME as JWT_CLOCK

import time as _time

cdef enum:                           # token algorithms: a key's algs has bit 1 << JA_*
    JA_HS256 = 0
    JA_HS384 = 1
    JA_HS512 = 2
    JA_RS256 = 3
    JA_RS384 = 4
    JA_RS512 = 5
    JA_PS256 = 6
    JA_PS384 = 7
    JA_PS512 = 8
    JA_ES256 = 9
    JA_ES384 = 10
    JA_EDDSA = 11
    JA_COUNT = 12
    JWT_SIG_MAX = 1024               # bytes of a signature (RSA up to 8192 bits)
    JK_SECRET = 1                    # a packed key's kind: an HMAC secret
    JK_PUBKEY = 2                    # a DER SubjectPublicKeyInfo
    JWT_NO_EXP_TTL_MS = 60000        # how long a verified token without exp stays cached
    JWT_MAX_CACHE_S = 86400          # and one with an exp, at most

# the names a token's header may give, in JA_* order (lb/config/jwks.py has the same list)
JWT_ALGS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
            "EdDSA")
cdef const char *JA_NAMES[JA_COUNT]
JA_NAMES[0] = b"HS256"
JA_NAMES[1] = b"HS384"
JA_NAMES[2] = b"HS512"
JA_NAMES[3] = b"RS256"
JA_NAMES[4] = b"RS384"
JA_NAMES[5] = b"RS512"
JA_NAMES[6] = b"PS256"
JA_NAMES[7] = b"PS384"
JA_NAMES[8] = b"PS512"
JA_NAMES[9] = b"ES256"
JA_NAMES[10] = b"ES384"
JA_NAMES[11] = b"EdDSA"

# the order n of P-256 and P-384 (big-endian): r and s must be below it
cdef const char *P256_N = (b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff"
                          b"\xbc\xe6\xfa\xad\xa7\x17\x9e\x84\xf3\xb9\xca\xc2\xfc\x63\x25\x51")
cdef const char *P384_N = (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
                          b"\xff\xff\xff\xff\xff\xff\xff\xff\xc7\x63\x4d\x81\xf4\x37\x2d\xdf"
                          b"\x58\x1a\x0d\xb2\x48\xb0\xa7\x7a\xec\xec\x19\x6a\xcc\xc5\x29\x73")

# SHA-256, -384, -512, fetched once: OpenSSL 3 fetches EVP_sha256() and its
# kind again at every use, a cost paid per token otherwise
cdef const EVP_MD *JWT_MDS[3]
JWT_MDS[0] = EVP_MD_fetch(NULL, b"SHA256", NULL)
JWT_MDS[1] = EVP_MD_fetch(NULL, b"SHA384", NULL)
JWT_MDS[2] = EVP_MD_fetch(NULL, b"SHA512", NULL)


cdef const EVP_MD *jwt_md(int alg) noexcept nogil:
    if alg == JA_EDDSA:
        return NULL
    if alg == JA_ES256:
        return JWT_MDS[0]
    if alg == JA_ES384:
        return JWT_MDS[1]
    return JWT_MDS[alg % 3]


cdef EVP_PKEY_CTX *jwt_vctx(lb_jwt_key *k, int alg) noexcept nogil:
    """The key's context for alg, ready for EVP_PKEY_verify of a digest: made
    once per key and algorithm (making one per token costs several
    microseconds of provider look-ups)."""
    cdef EVP_PKEY_CTX *ctx = <EVP_PKEY_CTX *>k.vctx[alg]
    cdef const EVP_MD *md = jwt_md(alg)
    cdef bint ok
    if ctx != NULL:
        return ctx
    ctx = EVP_PKEY_CTX_new(k.pkey, NULL)
    if ctx == NULL:
        return NULL
    ok = EVP_PKEY_verify_init(ctx) == 1 and EVP_PKEY_CTX_set_signature_md(ctx, md) > 0
    if ok and JA_PS256 <= alg <= JA_PS512:
        # RFC 7518 3.5: MGF1 with the same hash, a salt as long as the hash
        ok = (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) > 0
              and EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, EVP_MD_get_size(md)) > 0)
    elif ok and JA_RS256 <= alg <= JA_RS512:
        ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0
    if not ok:
        EVP_PKEY_CTX_free(ctx)
        return NULL
    k.vctx[alg] = ctx
    return ctx


cdef int der_int(uint8_t *out, const uint8_t *v, uint32_t n) noexcept nogil:
    """v (big-endian, unsigned) as a DER INTEGER: its bytes written."""
    cdef uint32_t k = 0, pad
    while k + 1 < n and v[k] == 0:
        k += 1
    pad = 1 if v[k] & 0x80 else 0
    out[0] = 0x02
    out[1] = <uint8_t>(n - k + pad)
    if pad:
        out[2] = 0
    memcpy(out + 2 + pad, v + k, n - k)
    return <int>(2 + pad + n - k)


cdef int ecdsa_der(const uint8_t *sig, uint32_t n, uint32_t size, const uint8_t *order, uint8_t *out) noexcept nogil:
    """A JWS ECDSA signature (r||s, each exactly `size` bytes) as the DER
    ECDSA-Sig-Value libcrypto checks; -1 unless 0 < r, s < n."""
    cdef uint32_t k, part
    cdef int a, b
    cdef bint zero
    if n != 2 * size:
        return -1
    for part in range(2):
        zero = True
        for k in range(size):
            if sig[part * size + k]:
                zero = False
                break
        if zero or memcmp(sig + part * size, order, size) >= 0:
            return -1
    a = der_int(out + 2, sig, size)
    b = der_int(out + 2 + a, sig + size, size)
    out[0] = 0x30
    out[1] = <uint8_t>(a + b)        # at most 2 * 51 bytes: the short form
    return 2 + a + b


cdef bint jwt_sig_ok(lb_jwt_key *k, int alg, const uint8_t *msg, uint32_t mlen, const uint8_t *sig,
                     uint32_t slen) noexcept nogil:
    """The signature of msg by key k under alg (which the key allows)."""
    cdef const EVP_MD *md = jwt_md(alg)
    cdef uint8_t mac[64]
    cdef unsigned int maclen = 0
    cdef uint8_t der[112]
    cdef int dlen
    cdef EVP_MD_CTX *ctx
    cdef EVP_PKEY_CTX *pctx
    cdef bint ok
    if alg <= JA_HS512:
        if k.secret == NULL or HMAC(md, k.secret, <int>k.secret_len, msg, mlen, mac, &maclen) == NULL:
            return False
        return slen == maclen and CRYPTO_memcmp(mac, sig, maclen) == 0
    if k.pkey == NULL:
        return False
    if alg == JA_ES256 or alg == JA_ES384:
        dlen = ecdsa_der(sig, slen, 32 if alg == JA_ES256 else 48, <const uint8_t *>(P256_N if alg == JA_ES256 else P384_N), der)
        if dlen < 0:
            return False
        sig = der
        slen = <uint32_t>dlen
    elif alg != JA_EDDSA and slen != <uint32_t>EVP_PKEY_get_size(k.pkey):
        return False                 # an RSA signature is exactly the modulus' size
    if alg == JA_EDDSA:
        # Ed25519 signs the message itself: no digest, no reusable context
        ctx = EVP_MD_CTX_new()
        if ctx == NULL:
            return False
        ok = (EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k.pkey) == 1
              and EVP_DigestVerify(ctx, sig, slen, msg, mlen) == 1)
        EVP_MD_CTX_free(ctx)
    else:
        pctx = jwt_vctx(k, alg)
        ok = (pctx != NULL and EVP_Digest(msg, mlen, mac, &maclen, md, NULL) == 1
              and EVP_PKEY_verify(pctx, sig, slen, mac, maclen) == 1)
    if not ok:
        ERR_clear_error()            # a TLS connection of this thread reads the error queue next
    return ok


# ---- keys --------------------------------------------------------------------------------------

cdef void jwt_keys_free(lb_jwt_rt *jr) noexcept nogil:
    cdef uint32_t i, a
    for i in range(jr.n_keys):
        for a in range(JA_COUNT):
            if jr.keys[i].vctx[a] != NULL:
                EVP_PKEY_CTX_free(<EVP_PKEY_CTX *>jr.keys[i].vctx[a])
        if jr.keys[i].pkey != NULL:
            EVP_PKEY_free(jr.keys[i].pkey)
        if jr.keys[i].secret != NULL:
            OPENSSL_cleanse(jr.keys[i].secret, jr.keys[i].secret_len)
            free(jr.keys[i].secret)
    memset(jr.keys, 0, sizeof(jr.keys))
    jr.n_keys = 0


cdef bint jwt_key_fits(EVP_PKEY *pkey, uint32_t algs) noexcept nogil:
    """The key is of the type its algorithms need (lb/config/jwks.py built
    it so; checked again, since a wrong pairing is the attack)."""
    cdef int t = EVP_PKEY_get_base_id(pkey)
    if algs & ~((1u << JA_RS256) | (1u << JA_RS384) | (1u << JA_RS512) | (1u << JA_PS256) | (1u << JA_PS384)
                | (1u << JA_PS512)) == 0:
        return t == EVP_PKEY_RSA and EVP_PKEY_get_bits(pkey) >= 2048
    if algs == (1u << JA_ES256):
        return t == EVP_PKEY_EC and EVP_PKEY_get_bits(pkey) == 256
    if algs == (1u << JA_ES384):
        return t == EVP_PKEY_EC and EVP_PKEY_get_bits(pkey) == 384
    if algs == (1u << JA_EDDSA):
        return EVP_PKEY_get_id(pkey) == EVP_PKEY_ED25519
    return False


cdef int jwt_keys_build(lb_jwt_rt *jr, const uint8_t *p, uint32_t n, uint32_t count) noexcept nogil:
    """The keys of a packed JWKS (per key: algs, kind, kid length, data
    length as 4 little-endian u32, then the kid and the data). Keys that do
    not build are left out (the supervisor checked them all)."""
    cdef uint32_t off = 0, i
    cdef uint32_t hdr[4]
    cdef lb_jwt_key *k
    cdef const uint8_t *d
    jwt_keys_free(jr)
    for i in range(count):
        if off + 16 > n or jr.n_keys >= JWT_MAX_KEYS:
            break
        memcpy(hdr, p + off, 16)
        off += 16
        if hdr[2] > JWT_KID_MAX or off + hdr[2] + hdr[3] > n:
            break
        k = &jr.keys[jr.n_keys]
        k.algs = hdr[0] & ((1u << JA_COUNT) - 1)
        k.kid_len = hdr[2]
        memcpy(k.kid, p + off, hdr[2])
        off += hdr[2]
        if hdr[1] == JK_SECRET and hdr[3] > 0 and k.algs & ~7u == 0:
            k.secret = <uint8_t *>malloc(hdr[3])
            if k.secret != NULL:
                memcpy(k.secret, p + off, hdr[3])
                k.secret_len = hdr[3]
                jr.n_keys += 1
        elif hdr[1] == JK_PUBKEY and k.algs & 7u == 0:
            d = p + off
            k.pkey = d2i_PUBKEY(NULL, &d, hdr[3])
            if k.pkey != NULL and jwt_key_fits(k.pkey, k.algs):
                jr.n_keys += 1
            elif k.pkey != NULL:
                EVP_PKEY_free(k.pkey)
                k.pkey = NULL
        off += hdr[3]
    ERR_clear_error()
    return <int>jr.n_keys


cdef void jwt_keys_refresh(lb_jwt_rt *jr, shm_auth *a, char *base) noexcept nogil:
    """Rebuild the keys when the supervisor published others (gen moved):
    copy the live half while the generation holds, then build from the copy."""
    cdef uint32_t gen, half, n, count, tries
    gen = lb_acquire_u32(&a.gen)
    if jr.built and gen == jr.gen:
        return
    for tries in range(16):
        gen = lb_acquire_u32(&a.gen)
        half = gen & 1
        n = lb_load_u32(&a.n_slots[half])
        count = lb_load_u32(&a.n_keys[half])
        if n > JWT_BLOB_MAX:
            n = 0
        memcpy(jr.blob, base + a.off + <uint64_t>half * AUTH_HALF_SLOTS * sizeof(shm_auth_key), n)
        lb_fence_acquire()
        if lb_load_u32(&a.gen) == gen:
            jwt_keys_build(jr, jr.blob, n, count)
            jr.gen = gen
            jr.built = 1
            # a token verified by a key that is gone must not pass from the cache
            memset(jr.cache, 0, (<size_t>jr.cache_mask + 1) * sizeof(lb_jwt_cache))
            return


# ---- the token --------------------------------------------------------------------------------

cdef inline double wall_seconds() noexcept nogil:
    cdef timespec ts
    clock_gettime(JWT_CLOCK, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef bint claim_number(const json_top *top, const uint8_t *p, const char *name, bint *present,
                       double *v) noexcept nogil:
    """False when the claim is there but not a number."""
    cdef uint32_t off = 0, ln = 0
    present[0] = json_top_find(top, p, name, <uint32_t>strlen(name), &off, &ln)
    return not present[0] or json_number_value(p, off, ln, v)


cdef bint aud_matches(lb_jwt_rt *jr, const uint8_t *p, uint32_t off, uint32_t n) noexcept nogil:
    """The aud value (a string, or an array of strings) names one of the
    configured audiences."""
    cdef uint8_t buf[JWT_CLAIM_VALUE_MAX]
    cdef json_rd rd
    cdef int len_
    cdef uint32_t i, s0
    cdef bint hit = False
    if p[off] == 34:
        len_ = json_string_value(p, off, n, buf, JWT_CLAIM_VALUE_MAX)
        for i in range(jr.n_audiences):
            if len_ >= 0 and <uint32_t>len_ == jr.audiences[i].n and memcmp(buf, jr.audiences[i].p, len_) == 0:
                return True
        return False
    if p[off] != 91:
        return False
    rd.s = p
    rd.n = off + n
    rd.i = off + 1
    json_ws(&rd)
    while rd.i < rd.n and p[rd.i] != 93:
        if p[rd.i] != 34:
            return False             # every member must be a string
        s0 = rd.i
        if json_string(&rd, NULL, 0, NULL) < 0:
            return False
        len_ = json_string_value(p, s0, rd.i - s0, buf, JWT_CLAIM_VALUE_MAX)
        for i in range(jr.n_audiences):
            if len_ >= 0 and <uint32_t>len_ == jr.audiences[i].n and memcmp(buf, jr.audiences[i].p, len_) == 0:
                hit = True
        json_ws(&rd)
        if rd.i < rd.n and p[rd.i] == 44:
            rd.i += 1
            json_ws(&rd)
    return hit


cdef inline bint aud_empty(const uint8_t *p, uint32_t off, uint32_t n) noexcept nogil:
    """aud is "" or [] (PyJWT lets such a token through when no audience is configured)."""
    cdef json_rd rd
    if n == 2 and p[off] == 34:
        return True
    if p[off] != 91:
        return False
    rd.s = p
    rd.n = off + n
    rd.i = off + 1
    json_ws(&rd)
    return rd.i < rd.n and p[rd.i] == 93


cdef int jwt_claims_ok(lb_jwt_rt *jr, const json_top *top, const uint8_t *p, double now,
                       double *exp) noexcept nogil:
    """The payload's registered claims against the time and the config: 0 or -1."""
    cdef bint present
    cdef double v
    cdef uint32_t off = 0, ln = 0, i
    cdef uint8_t buf[JWT_CLAIM_VALUE_MAX]
    cdef int len_
    exp[0] = -1
    if not claim_number(top, p, b"exp", &present, &v):
        return -1
    if present:
        if v <= now - jr.leeway:
            return -1
        exp[0] = v
    if not claim_number(top, p, b"nbf", &present, &v) or (present and v > now + jr.leeway):
        return -1
    if not claim_number(top, p, b"iat", &present, &v) or (present and v > now + jr.leeway):
        return -1
    if jr.issuer.n:
        if not json_top_find(top, p, b"iss", 3, &off, &ln):
            return -1
        len_ = json_string_value(p, off, ln, buf, JWT_CLAIM_VALUE_MAX)
        if len_ < 0 or <uint32_t>len_ != jr.issuer.n or memcmp(buf, jr.issuer.p, len_) != 0:
            return -1
    if json_top_find(top, p, b"aud", 3, &off, &ln):
        if jr.n_audiences == 0:
            if not aud_empty(p, off, ln):
                return -1            # meant for someone, and lb was told of no one (RFC 7519 4.1.3)
        elif not aud_matches(jr, p, off, ln):
            return -1
    elif jr.n_audiences:
        return -1
    for i in range(jr.n_required):
        if not json_top_find(top, p, jr.required[i].p, jr.required[i].n, &off, &ln):
            return -1
    return 0


cdef int jwt_alg_of(const json_top *top, const uint8_t *h) noexcept nogil:
    """The header's algorithm (JA_*), or -1: missing, not a string, not one of
    the list in exactly its spelling ("none", "None", "HS256 " are not)."""
    cdef uint32_t off = 0, ln = 0
    cdef uint8_t buf[16]
    cdef int len_, a
    if not json_top_find(top, h, b"alg", 3, &off, &ln):
        return -1
    len_ = json_string_value(h, off, ln, buf, 15)
    if len_ <= 0:
        return -1
    for a in range(JA_COUNT):
        if <size_t>len_ == strlen(JA_NAMES[a]) and memcmp(buf, JA_NAMES[a], len_) == 0:
            return a
    return -1


cdef int jwt_check(lb_jwt_rt *jr, shm_auth *a, char *base, const uint8_t *tok, uint32_t n,
                   json_top *ptop, bint *cached) noexcept nogil:
    """0 when the token is valid for this auth (cached: its signature came
    from the cache), else -1. The decoded payload stays in jr.pbuf (jr.plen),
    its members in ptop."""
    cdef const uint8_t *d1
    cdef const uint8_t *d2
    cdef int hl, pl, sl, alg
    cdef uint32_t koff = 0, kl = 0, i, slot
    cdef uint8_t kid[JWT_KID_MAX]
    cdef int kid_len = -1
    cdef double now, exp
    cdef uint8_t md[32]
    cdef unsigned int mdlen = 32
    cdef uint64_t now_ms_wall
    cdef lb_jwt_cache *e
    cdef lb_jwt_key *k
    cdef json_top htop
    cached[0] = False
    if n > jr.max_token:
        return -1
    d1 = <const uint8_t *>memchr(tok, 46, n)
    if d1 == NULL:
        return -1
    d2 = <const uint8_t *>memchr(d1 + 1, 46, n - <uint32_t>(d1 + 1 - tok))
    if d2 == NULL or memchr(d2 + 1, 46, n - <uint32_t>(d2 + 1 - tok)) != NULL:
        return -1
    if d1 == tok or d2 == d1 + 1 or d2 + 1 == tok + n:
        return -1                    # an empty part: an unsigned token ("alg": "none") among them
    hl = b64url_decode(tok, <uint32_t>(d1 - tok), jr.hbuf, jr.max_token)
    if hl <= 0 or json_check(jr.hbuf, hl, &htop) < 0:
        return -1
    alg = jwt_alg_of(&htop, jr.hbuf)
    if alg < 0:
        return -1
    if (json_top_find(&htop, jr.hbuf, b"crit", 4, &koff, &kl)
            or json_top_find(&htop, jr.hbuf, b"b64", 3, &koff, &kl)):
        return -1                    # extensions lb does not implement must not be ignored (RFC 7515 4.1.11)
    if json_top_find(&htop, jr.hbuf, b"kid", 3, &koff, &kl):
        kid_len = json_string_value(jr.hbuf, koff, kl, kid, JWT_KID_MAX)
        if kid_len < 0:
            return -1
    pl = b64url_decode(d1 + 1, <uint32_t>(d2 - d1 - 1), jr.pbuf, jr.max_token)
    if pl <= 0 or json_check(jr.pbuf, pl, ptop) < 0:
        return -1
    jr.plen = <uint32_t>pl
    sl = b64url_decode(d2 + 1, <uint32_t>(tok + n - d2 - 1), jr.sbuf, JWT_SIG_MAX)
    if sl <= 0:
        return -1
    now = wall_seconds()
    if jwt_claims_ok(jr, ptop, jr.pbuf, now, &exp) < 0:
        return -1
    jwt_keys_refresh(jr, a, base)
    now_ms_wall = <uint64_t>(now * 1000)
    if EVP_Digest(tok, n, md, &mdlen, JWT_MDS[0], NULL) != 1:
        return -1
    memcpy(&slot, md, 4)
    e = &jr.cache[slot & jr.cache_mask]
    if e.until_ms > now_ms_wall and memcmp(e.sha256, md, 32) == 0:
        cached[0] = True
        return 0
    for i in range(jr.n_keys):
        k = &jr.keys[i]
        if not (k.algs >> alg) & 1:
            continue
        # kid chooses among the configured keys, and only when both have one
        if kid_len >= 0 and k.kid_len and (k.kid_len != <uint32_t>kid_len or memcmp(k.kid, kid, kid_len) != 0):
            continue
        if jwt_sig_ok(k, alg, tok, <uint32_t>(d2 - tok), jr.sbuf, <uint32_t>sl):
            memcpy(e.sha256, md, 32)
            # until exp (a day at most: an exp of 1e300 is no reason to overflow)
            e.until_ms = (<uint64_t>(min(exp + jr.leeway, now + JWT_MAX_CACHE_S) * 1000) if exp >= 0
                          else now_ms_wall + JWT_NO_EXP_TTL_MS)
            return 0
    return -1


cdef bint jwt_token_of(lb_jwt_rt *jr, const uint8_t *b, http_req *r, uint32_t *off, uint32_t *n) noexcept nogil:
    """`Authorization: Bearer TOKEN` (RFC 6750 2.1), else the cookie when set."""
    cdef uint32_t i, o, m
    for i in range(r.n_fields):
        if name_is(b, &r.fields[i], b"authorization"):
            o = r.fields[i].value_off
            m = r.fields[i].value_len
            if m > 7 and strncasecmp(<const char *>(b + o), b"bearer ", 7) == 0:
                o += 7
                m -= 7
                while m and b[o] == 32:
                    o += 1
                    m -= 1
                off[0] = o
                n[0] = m
                return m > 0
            break
    if jr.cookie.n:
        return cookie_find(b, r, &jr.cookie, off, n) and n[0] > 0
    return False


cdef void jwt_headers(lb_auth_rt *ar, lb_jwt_rt *jr, const json_top *top, const uint8_t *p) noexcept nogil:
    """claims_to_headers: each present claim that is a string, a number or a
    boolean into its header; client copies of every such header are removed
    (fields.remove), present claim or not. A string with control characters
    is not forwarded (it would split the header)."""
    cdef uint32_t i, off = 0, ln = 0, k = 0, j
    cdef int len_
    cdef bint clean
    cdef uint8_t c
    for i in range(jr.n_claims):
        if not json_top_find(top, p, jr.claims[i].p, jr.claims[i].n, &off, &ln):
            continue
        c = p[off]
        if c == 34:
            len_ = json_string_value(p, off, ln, <uint8_t *>jr.values[i].p, JWT_CLAIM_VALUE_MAX)
            if len_ < 0:
                continue
            clean = True
            for j in range(<uint32_t>len_):
                c = <uint8_t>jr.values[i].p[j]
                if c < 0x20 or c == 0x7f:
                    clean = False
                    break
            if not clean:
                continue
        elif c == 45 or 48 <= c <= 57 or c == 116 or c == 102:
            if ln > JWT_CLAIM_VALUE_MAX:
                continue
            memcpy(jr.values[i].p, p + off, ln)
            len_ = <int>ln
        else:
            continue                 # null, objects and arrays have no header form
        jr.values[i].n = <uint32_t>len_
        ar.fields.set_name[k] = jr.headers[i]
        ar.fields.set_lower[k] = jr.lowers[i]
        ar.fields.set_value[k] = jr.values[i]
        k += 1
    ar.fields.n_set = k


cdef void jwt_answer(lb_http_worker *hw, lb_auth_rt *ar, bint invalid) noexcept nogil:
    cdef int n
    if invalid:
        n = snprintf(hw.answer_fields, LIMIT_ANSWER_MAX,
                     "WWW-Authenticate: Bearer realm=\"%s\", error=\"invalid_token\"\r\n", ar.realm.p)
    else:
        n = snprintf(hw.answer_fields, LIMIT_ANSWER_MAX, "WWW-Authenticate: Bearer realm=\"%s\"\r\n", ar.realm.p)
    hw.answer_len = <uint32_t>n if 0 < n < LIMIT_ANSWER_MAX else 0


cdef int jwt_step(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b, uint32_t ai) noexcept nogil:
    """The request's JWT: verified (or found in the cache), its claims
    checked and forwarded; 401 with WWW-Authenticate otherwise."""
    cdef lb_auth_rt *ar = &w.http.auth[ai]
    cdef lb_jwt_rt *jr = ar.jwt
    cdef shm_auth_stats *st = &w.auth_stats[ai]
    cdef uint32_t off = 0, n = 0
    cdef bint cached = False
    cdef json_top ptop
    if not jwt_token_of(jr, b, r, &off, &n):
        lb_add_u64(&st.missing, 1)
        jwt_answer(w.http, ar, False)
        return 401
    if jwt_check(jr, ar.shm, w.base, b + off, n, &ptop, &cached) < 0:
        lb_add_u64(&st.invalid, 1)
        jwt_answer(w.http, ar, True)
        return 401
    lb_add_u64(&st.ok, 1)
    lb_add_u64(&st.cached if cached else &st.verified, 1)
    w.http.jwt_claims = jr.pbuf
    w.http.jwt_claims_len = jr.plen
    jwt_headers(ar, jr, &ptop, jr.pbuf)
    rulesets_push(h.rq_rules, &h.n_rq_rules, &ar.fields)
    return STEP_CONTINUE


cdef bint jwt_claim_key(lb_http_worker *hw, const char *claim, const uint8_t **v, uint32_t *n) noexcept nogil:
    """The value of a claim of the request's verified token, for a limit keyed
    jwt:CLAIM: a string's characters as sent, a number's digits; False
    without a token or that claim."""
    cdef uint32_t off = 0, ln = 0
    if hw.jwt_claims_len == 0:
        return False
    if not json_member(hw.jwt_claims, hw.jwt_claims_len, claim, <uint32_t>strlen(claim), &off, &ln):
        return False
    if ln >= 2 and hw.jwt_claims[off] == 34:
        off += 1
        ln -= 2
    v[0] = hw.jwt_claims + off
    n[0] = ln
    return ln > 0


cdef int jwt_worker_init(lb_auth_rt *ar, object auth) except -1:
    """An [auth.NAME] of type jwt: its settings, buffers and cache. Its keys
    are built at the first request (from shared memory)."""
    cdef lb_jwt_rt *jr = <lb_jwt_rt *>calloc(1, sizeof(lb_jwt_rt))
    if jr == NULL:
        raise MemoryError()
    ar.jwt = jr
    jr.max_token = auth.max_token_size
    jr.leeway = auth.leeway
    jr.blob = <uint8_t *>malloc(JWT_BLOB_MAX)
    jr.hbuf = <uint8_t *>malloc(jr.max_token)
    jr.pbuf = <uint8_t *>malloc(jr.max_token)
    jr.sbuf = <uint8_t *>malloc(JWT_SIG_MAX)
    size = 1
    while size < max(16, auth.cache_size):
        size *= 2
    jr.cache = <lb_jwt_cache *>calloc(size, sizeof(lb_jwt_cache))
    if jr.blob == NULL or jr.hbuf == NULL or jr.pbuf == NULL or jr.sbuf == NULL or jr.cache == NULL:
        raise MemoryError()
    jr.cache_mask = size - 1
    jr.issuer = mkstr(auth.issuer)
    if len(auth.audience) > JWT_MAX_LIST or len(auth.required_claims) > JWT_MAX_LIST:
        raise ValueError(f"at most {JWT_MAX_LIST} audiences and required claims")
    jr.n_audiences = len(auth.audience)
    for i, aud in enumerate(auth.audience):
        jr.audiences[i] = mkstr(aud)
    jr.n_required = len(auth.required_claims)
    for i, claim in enumerate(auth.required_claims):
        jr.required[i] = mkstr(claim)
    jr.cookie = mkstr(auth.cookie)
    claims = list(auth.claims_to_headers)
    if len(claims) > JWT_MAX_CLAIM_HEADERS:
        raise ValueError(f"at most {JWT_MAX_CLAIM_HEADERS} claims_to_headers")
    jr.n_claims = len(claims)
    free(ar.fields.set_name)
    free(ar.fields.set_lower)
    free(ar.fields.remove)
    ar.fields.set_name = <lb_str *>calloc(max(1, len(claims)), sizeof(lb_str))
    ar.fields.set_lower = <lb_str *>calloc(max(1, len(claims)), sizeof(lb_str))
    ar.fields.set_value = <lb_str *>calloc(max(1, len(claims)), sizeof(lb_str))
    ar.fields.remove = <lb_str *>calloc(max(1, len(claims)), sizeof(lb_str))
    if (ar.fields.set_name == NULL or ar.fields.set_lower == NULL or ar.fields.set_value == NULL
            or ar.fields.remove == NULL):
        raise MemoryError()
    ar.fields.n_set = 0
    ar.fields.n_remove = len(claims)
    for i, (claim, header) in enumerate(claims):
        jr.claims[i] = mkstr(claim)
        jr.headers[i] = mkstr(header)
        jr.lowers[i] = mkstr(header.lower())
        jr.values[i].p = <char *>calloc(JWT_CLAIM_VALUE_MAX + 1, 1)
        if jr.values[i].p == NULL:
            raise MemoryError()
        ar.fields.remove[i] = jr.lowers[i]
    return 0


# ---- for the config, the tests and the fuzzers ------------------------------------------------

def jwt_key_check(uint32_t algs, bytes der):
    """Whether a DER SubjectPublicKeyInfo builds a key libcrypto accepts, of the
    type the algorithms (bits 1 << JA_*) need (lb/config/jwks.py asks)."""
    cdef const uint8_t *d = <const uint8_t *><char *>der
    cdef EVP_PKEY *pkey = d2i_PUBKEY(NULL, &d, len(der))
    cdef bint ok = pkey != NULL and jwt_key_fits(pkey, algs)
    if pkey != NULL:
        EVP_PKEY_free(pkey)
    ERR_clear_error()
    return ok


def jwt_b64url_decode(const unsigned char[:] data):
    """The strict base64url decoder: bytes, or None where it refuses."""
    cdef uint32_t n = data.shape[0]
    cdef uint8_t *out = <uint8_t *>malloc(n + 1)
    cdef int got
    if out == NULL:
        raise MemoryError()
    try:
        got = b64url_decode(&data[0] if n else <const uint8_t *>b"", n, out, n + 1)
        return None if got < 0 else bytes(out[:got])
    finally:
        free(out)


def jwt_json_check(const unsigned char[:] data):
    """The strict JSON checker: True for one object lb accepts."""
    cdef uint32_t n = data.shape[0]
    if n == 0:
        return False
    return json_check(&data[0], n, NULL) == 0


def jwt_json_member(const unsigned char[:] data, bytes name):
    """The raw value of a top-level member of a checked object, or None; found
    both ways the data plane finds one (json_top_find after json_check, and
    json_member), which must agree."""
    cdef uint32_t n = data.shape[0], off = 0, ln = 0, off2 = 0, ln2 = 0
    cdef json_top top
    cdef bint a, b
    if n == 0 or json_check(&data[0], n, &top) < 0:
        raise ValueError("not an object lb accepts")
    a = json_top_find(&top, &data[0], <const char *>name, len(name), &off, &ln)
    b = json_member(&data[0], n, <const char *>name, len(name), &off2, &ln2)
    if a != b or (a and (off, ln) != (off2, ln2)):
        raise AssertionError(f"json_top_find {a, off, ln} and json_member {b, off2, ln2} disagree")
    return bytes(data[off:off + ln]) if a else None


def jwt_check_loop(auth, bytes blob, uint32_t n_keys, bytes token, uint32_t rounds, bint use_cache=True):
    """Check one token `rounds` times as a worker's auth step does, the keys
    built from blob (a packed JWKS, lb/config/jwks.py), the cache emptied
    before each check unless use_cache: (valid, its signature from the cache
    on the last round, CPU seconds per check). For bench/jwt_cpu.py, which
    reports the check's own cost beside the proxy's."""
    cdef lb_auth_rt ar
    cdef shm_auth a
    cdef lb_jwt_rt *jr
    cdef const uint8_t *t = <const uint8_t *><char *>token
    cdef uint32_t n = len(token), i
    cdef bint cached = False
    cdef int rc = -1
    cdef json_top top
    memset(&ar, 0, sizeof(ar))
    memset(&a, 0, sizeof(a))
    jwt_worker_init(&ar, auth)
    jr = ar.jwt
    try:
        jwt_keys_build(jr, <const uint8_t *><char *>blob, len(blob), n_keys)
        jr.built = 1
        t0 = _time.thread_time()
        with nogil:
            for i in range(rounds):
                if not use_cache:
                    memset(jr.cache, 0, (<size_t>jr.cache_mask + 1) * sizeof(lb_jwt_cache))
                rc = jwt_check(jr, &a, NULL, t, n, &top, &cached)
        elapsed = _time.thread_time() - t0
    finally:
        jwt_keys_free(jr)
        free(jr.blob)
        free(jr.hbuf)
        free(jr.pbuf)
        free(jr.sbuf)
        free(jr.cache)
        free(jr)
    return rc == 0, bool(cached), elapsed / max(1, rounds)


cdef struct jwt_handoff:
    pthread_mutex_t lock
    pthread_cond_t wake
    int efd
    uint32_t posted
    uint32_t taken
    int stop


cdef void *jwt_handoff_thread(void *arg) noexcept nogil:
    cdef jwt_handoff *x = <jwt_handoff *>arg
    cdef uint64_t one = 1
    cdef int efd = x.efd
    cdef bint stop
    while True:
        pthread_mutex_lock(&x.lock)
        while x.taken == x.posted and not x.stop:
            pthread_cond_wait(&x.wake, &x.lock)
        stop = x.stop
        if not stop:
            x.taken += 1
        pthread_mutex_unlock(&x.lock)
        write(efd, &one, 8)          # after a stop, x is not touched again: the caller frees it
        if stop:
            return NULL


def jwt_handoff_cost(uint32_t rounds):
    """CPU seconds (every thread's) per hand-off of an empty job to a thread
    and back through an eventfd in an epoll set, as HTTP Basic's verifier
    threads do: what verifying a JWT off the loop would add to each token
    verified (bench/jwt_cpu.py reports it beside the verification's cost)."""
    cdef jwt_handoff *x = <jwt_handoff *>calloc(1, sizeof(jwt_handoff))
    cdef pthread_t t
    cdef epoll_event ev
    cdef uint64_t count
    cdef uint32_t i
    cdef int epfd
    if x == NULL:
        raise MemoryError()
    pthread_mutex_init(&x.lock, NULL)
    pthread_cond_init(&x.wake, NULL)
    x.efd = eventfd(0, EFD_CLOEXEC)
    epfd = epoll_create1(EPOLL_CLOEXEC)
    ev.events = EPOLLIN
    ev.data.u64 = 0
    if x.efd < 0 or epfd < 0 or epoll_ctl(epfd, EPOLL_CTL_ADD, x.efd, &ev) != 0 or pthread_create(
            &t, NULL, jwt_handoff_thread, x) != 0:
        raise OSError("jwt_handoff_cost: no eventfd, epoll or thread")
    pthread_detach(t)
    t0 = _time.process_time()
    with nogil:
        for i in range(rounds):
            pthread_mutex_lock(&x.lock)
            x.posted += 1
            pthread_cond_signal(&x.wake)
            pthread_mutex_unlock(&x.lock)
            epoll_wait(epfd, &ev, 1, -1)
            read(x.efd, &count, 8)
    elapsed = _time.process_time() - t0
    with nogil:
        pthread_mutex_lock(&x.lock)
        x.stop = 1
        pthread_cond_signal(&x.wake)
        pthread_mutex_unlock(&x.lock)
        epoll_wait(epfd, &ev, 1, -1)
    close(x.efd)
    close(epfd)
    free(x)
    return elapsed / max(1, rounds)
