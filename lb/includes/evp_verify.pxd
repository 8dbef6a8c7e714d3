# openssl/evp.h, openssl/rsa.h, openssl/x509.h, openssl/crypto.h (OpenSSL 3.0):
# what JWT verification uses (fastpath/auth_jwt.pxi) beyond openssl.pxd.
# EVP_PKEY_CTX_set_rsa_padding and _set_rsa_pss_saltlen are functions in 3.0
# (macros before it).
from lb.includes.openssl cimport EVP_PKEY, EVP_MD

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MD_CTX
    ctypedef struct EVP_PKEY_CTX
    const EVP_MD *EVP_sha512()
    EVP_MD_CTX *EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx)
    int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type, void *e, EVP_PKEY *pkey)
    int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs,
                         size_t tbslen)
    EVP_MD *EVP_MD_fetch(void *libctx, const char *algorithm, const char *properties)
    EVP_PKEY_CTX *EVP_PKEY_CTX_new(EVP_PKEY *pkey, void *e)
    void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx)
    int EVP_PKEY_verify_init(EVP_PKEY_CTX *ctx)
    int EVP_PKEY_verify(EVP_PKEY_CTX *ctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs,
                        size_t tbslen)
    int EVP_PKEY_CTX_set_signature_md(EVP_PKEY_CTX *ctx, const EVP_MD *md)
    void EVP_PKEY_free(EVP_PKEY *pkey)
    int EVP_PKEY_get_size(const EVP_PKEY *pkey)
    int EVP_PKEY_get_id(const EVP_PKEY *pkey)
    enum:
        EVP_PKEY_ED25519

cdef extern from "openssl/rsa.h" nogil:
    int EVP_PKEY_CTX_set_rsa_padding(EVP_PKEY_CTX *ctx, int pad)
    int EVP_PKEY_CTX_set_rsa_pss_saltlen(EVP_PKEY_CTX *ctx, int saltlen)
    enum:
        RSA_PKCS1_PADDING
        RSA_PKCS1_PSS_PADDING

cdef extern from "openssl/x509.h" nogil:
    EVP_PKEY *d2i_PUBKEY(EVP_PKEY **a, const unsigned char **pp, long length)

cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void *a, const void *b, size_t n)
