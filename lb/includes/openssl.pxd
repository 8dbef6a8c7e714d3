# openssl/ssl.h, openssl/err.h, openssl/x509.h, openssl/x509v3.h, openssl/evp.h,
# openssl/pem.h (OpenSSL 3.0). Several of these are macros in the headers
# (SSL_CTX_set_mode, SSL_CTX_set_min_proto_version, ...): declared here as the
# functions they expand to calls of, which is all Cython needs.
from libc.stdint cimport uint8_t, uint16_t, uint64_t

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct SSL_METHOD
    ctypedef struct SSL_CIPHER
    ctypedef struct SSL_SESSION
    ctypedef struct X509
    ctypedef struct X509_NAME
    ctypedef struct X509_STORE_CTX
    ctypedef struct EVP_PKEY
    ctypedef struct EVP_MD
    ctypedef struct EVP_CIPHER
    ctypedef struct EVP_CIPHER_CTX
    ctypedef struct EVP_MAC_CTX
    ctypedef struct ASN1_TIME
    ctypedef struct BIO
    ctypedef struct stack_st_X509
    ctypedef struct X509_VERIFY_PARAM

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_FILETYPE_PEM
        TLS1_2_VERSION
        TLS1_3_VERSION
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_MODE_RELEASE_BUFFERS
        SSL_SESS_CACHE_OFF
        SSL_SESS_CACHE_SERVER
        SSL_SESS_CACHE_CLIENT
        SSL_SESS_CACHE_NO_INTERNAL_STORE
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_ALERT_FATAL
        SSL_TLSEXT_ERR_NOACK
        TLSEXT_NAMETYPE_host_name
        OPENSSL_NPN_NEGOTIATED

    uint64_t SSL_OP_NO_COMPRESSION
    uint64_t SSL_OP_NO_RENEGOTIATION
    uint64_t SSL_OP_CIPHER_SERVER_PREFERENCE
    uint64_t SSL_OP_IGNORE_UNEXPECTED_EOF
    uint64_t SSL_OP_NO_TICKET
    uint64_t SSL_OP_NO_SSLv3

    const SSL_METHOD *TLS_server_method()
    const SSL_METHOD *TLS_client_method()
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    long SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    long SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *s)
    int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *s)
    long SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *s)
    uint64_t SSL_CTX_set_options(SSL_CTX *ctx, uint64_t op)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode)
    long SSL_CTX_set_dh_auto(SSL_CTX *ctx, int onoff)
    long SSL_CTX_set_timeout(SSL_CTX *ctx, long t)
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid, unsigned int len)
    int SSL_CTX_set_num_tickets(SSL_CTX *ctx, size_t n)
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx, int (*cb)(SSL *, int *, void *) noexcept nogil)
    long SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg)
    void SSL_CTX_set_alpn_select_cb(SSL_CTX *ctx,
                                    int (*cb)(SSL *, const unsigned char **, unsigned char *,
                                              const unsigned char *, unsigned int, void *) noexcept nogil,
                                    void *arg)
    int SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX *ctx,
                                             int (*cb)(SSL *, unsigned char *, unsigned char *,
                                                       EVP_CIPHER_CTX *, EVP_MAC_CTX *, int) noexcept nogil)
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *CAfile, const char *CApath)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *cb)
    X509 *SSL_CTX_get0_certificate(const SSL_CTX *ctx)
    int SSL_CTX_set_ex_data(SSL_CTX *ctx, int idx, void *data)
    void *SSL_CTX_get_ex_data(const SSL_CTX *ctx, int idx)

    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    void SSL_set_accept_state(SSL *ssl)
    void SSL_set_connect_state(SSL *ssl)
    int SSL_do_handshake(SSL *ssl)
    int SSL_is_init_finished(const SSL *ssl)
    int SSL_read(SSL *ssl, void *buf, int num)
    int SSL_peek(SSL *ssl, void *buf, int num)
    int SSL_write(SSL *ssl, const void *buf, int num)
    int SSL_pending(const SSL *ssl)
    int SSL_has_pending(const SSL *ssl)
    void SSL_set_bio(SSL *ssl, BIO *rbio, BIO *wbio)
    BIO *SSL_get_rbio(const SSL *ssl)
    long SSL_CTX_set_read_ahead(SSL_CTX *ctx, long m)
    int SSL_shutdown(SSL *ssl)
    void SSL_set_shutdown(SSL *ssl, int mode)
    enum:
        SSL_SENT_SHUTDOWN
    int SSL_get_error(const SSL *ssl, int ret)
    SSL_CTX *SSL_set_SSL_CTX(SSL *ssl, SSL_CTX *ctx)
    SSL_CTX *SSL_get_SSL_CTX(const SSL *ssl)
    const char *SSL_get_servername(const SSL *ssl, const int type)
    int SSL_session_reused(const SSL *ssl)
    const char *SSL_get_version(const SSL *ssl)
    int SSL_version(const SSL *ssl)
    const SSL_CIPHER *SSL_get_current_cipher(const SSL *ssl)
    const char *SSL_CIPHER_get_name(const SSL_CIPHER *c)
    uint16_t SSL_CIPHER_get_protocol_id(const SSL_CIPHER *c)
    int SSL_set_alpn_protos(SSL *ssl, const unsigned char *protos, unsigned int protos_len)
    void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len)
    int SSL_select_next_proto(unsigned char **out, unsigned char *outlen, const unsigned char *server,
                              unsigned int server_len, const unsigned char *client, unsigned int client_len)
    long SSL_set_tlsext_host_name(SSL *ssl, const char *name)
    int SSL_set1_host(SSL *ssl, const char *hostname)
    long SSL_get_verify_result(const SSL *ssl)
    X509 *SSL_get1_peer_certificate(const SSL *ssl)
    int SSL_set_ex_data(SSL *ssl, int idx, void *data)
    void *SSL_get_ex_data(const SSL *ssl, int idx)
    int SSL_get_ex_new_index(long argl, void *argp, void *new_func, void *dup_func, void *free_func)
    void SSL_CTX_sess_set_new_cb(SSL_CTX *ctx, int (*cb)(SSL *, SSL_SESSION *) noexcept nogil)
    int SSL_set_session(SSL *ssl, SSL_SESSION *session)
    void SSL_SESSION_free(SSL_SESSION *session)
    X509_VERIFY_PARAM *SSL_get0_param(SSL *ssl)
    int SSL_CTX_set_default_verify_paths(SSL_CTX *ctx)
    void *SSL_load_client_CA_file(const char *file)
    void SSL_CTX_set_client_CA_list(SSL_CTX *ctx, void *names)
    X509 *SSL_get0_peer_certificate(const SSL *ssl)
    void SSL_set_read_ahead(SSL *ssl, int yes)
    void SSL_CTX_set_keylog_callback(SSL_CTX *ctx, void (*cb)(const SSL *, const char *) noexcept nogil)
    void SSL_set_msg_callback(SSL *ssl, void (*cb)(int, int, int, const void *, size_t, SSL *, void *) noexcept nogil)
    size_t SSL_get_client_random(const SSL *ssl, unsigned char *out, size_t outlen)
    size_t SSL_get_server_random(const SSL *ssl, unsigned char *out, size_t outlen)
    SSL_SESSION *SSL_get_session(const SSL *ssl)
    uint8_t SSL_SESSION_get_max_fragment_length(const SSL_SESSION *sess)
    size_t SSL_SESSION_get_master_key(const SSL_SESSION *sess, unsigned char *out, size_t outlen)
    int SSL_CIPHER_get_cipher_nid(const SSL_CIPHER *c)
    const EVP_MD *SSL_CIPHER_get_handshake_digest(const SSL_CIPHER *c)
    uint16_t SSL_CIPHER_get_protocol_id(const SSL_CIPHER *c)
    enum:
        SSL3_RT_HANDSHAKE
        SSL3_MT_NEWSESSION_TICKET

cdef extern from "openssl/sslerr.h" nogil:
    enum:
        SSL_R_HTTP_REQUEST
        SSL_R_HTTPS_PROXY_REQUEST
        SSL_R_NO_SHARED_CIPHER
        SSL_R_NO_SHARED_GROUPS
        SSL_R_NO_PROTOCOLS_AVAILABLE
        SSL_R_UNSUPPORTED_PROTOCOL
        SSL_R_VERSION_TOO_LOW
        SSL_R_WRONG_VERSION_NUMBER
        SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM
        SSL_R_NO_SUITABLE_KEY_SHARE
        SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
        SSL_R_CERTIFICATE_VERIFY_FAILED

cdef extern from "openssl/err.h" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_last_error()
    unsigned long ERR_peek_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)
    int ERR_GET_REASON(unsigned long e)

cdef extern from "openssl/asn1.h" nogil:
    ctypedef struct ASN1_STRING
    const unsigned char *ASN1_STRING_get0_data(const ASN1_STRING *x)
    int ASN1_STRING_length(const ASN1_STRING *x)
    int ASN1_TIME_diff(int *pday, int *psec, const ASN1_TIME *start, const ASN1_TIME *end)

cdef extern from "openssl/x509_vfy.h" nogil:
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *param, const char *ipasc)
    const char *X509_verify_cert_error_string(long n)

cdef extern from "openssl/x509err.h" nogil:
    enum:
        X509_R_KEY_VALUES_MISMATCH

cdef extern from "openssl/x509.h" nogil:
    ctypedef struct X509_NAME_ENTRY
    enum:
        X509_V_OK
    unsigned long XN_FLAG_RFC2253
    int X509_NAME_get_index_by_NID(const X509_NAME *name, int nid, int lastpos)
    X509_NAME_ENTRY *X509_NAME_get_entry(const X509_NAME *name, int loc)
    ASN1_STRING *X509_NAME_ENTRY_get_data(const X509_NAME_ENTRY *ne)
    X509 *PEM_read_bio_X509(BIO *bp, X509 **x, void *cb, void *u)
    void X509_free(X509 *x)
    X509_NAME *X509_get_subject_name(const X509 *x)
    X509_NAME *X509_get_issuer_name(const X509 *x)
    int X509_NAME_print_ex(BIO *out, const X509_NAME *nm, int indent, unsigned long flags)
    const ASN1_TIME *X509_get0_notAfter(const X509 *x)
    const ASN1_TIME *X509_get0_notBefore(const X509 *x)
    int X509_cmp_current_time(const ASN1_TIME *t)
    int X509_digest(const X509 *x, const EVP_MD *md, unsigned char *out, unsigned int *len)
    int X509_check_issued(X509 *issuer, X509 *subject)
    int X509_verify(X509 *x, EVP_PKEY *pkey)
    EVP_PKEY *X509_get0_pubkey(const X509 *x)

cdef extern from "openssl/x509v3.h" nogil:
    ctypedef union _general_name_d:
        ASN1_STRING *dNSName
    ctypedef struct GENERAL_NAME:
        int type
        _general_name_d d
    enum:
        GEN_DNS
        NID_subject_alt_name
        NID_commonName
    void *X509_get_ext_d2i(const X509 *x, int nid, int *crit, int *idx)
    void GENERAL_NAMES_free(void *names)

cdef extern from "openssl/stack.h" nogil:
    int OPENSSL_sk_num(const void *st)
    void *OPENSSL_sk_value(const void *st, int i)

cdef extern from "openssl/evp.h" nogil:
    const EVP_MD *EVP_sha256()
    int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size, const EVP_MD *type,
                   void *impl)
    const EVP_MD *EVP_sha384()
    int EVP_MD_get_size(const EVP_MD *md)
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, void *impl,
                          const unsigned char *key, const unsigned char *iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    enum:
        EVP_CTRL_AEAD_GET_TAG
        EVP_CTRL_AEAD_SET_TAG
    const EVP_CIPHER *EVP_aes_256_cbc()
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, void *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, void *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_PKEY_get_base_id(const EVP_PKEY *pkey)
    int EVP_PKEY_get_bits(const EVP_PKEY *pkey)
    enum:
        EVP_PKEY_RSA
        EVP_PKEY_EC

cdef extern from "openssl/obj_mac.h" nogil:
    enum:
        NID_aes_128_gcm
        NID_aes_256_gcm
        NID_chacha20_poly1305

cdef extern from "openssl/hmac.h" nogil:
    unsigned char *HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d, size_t n,
                        unsigned char *md_out, unsigned int *md_len)

cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_cleanse(void *ptr, size_t len)

cdef extern from "openssl/params.h" nogil:
    ctypedef struct OSSL_PARAM:
        const char *key
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char *key, char *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_octet_string(const char *key, void *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MAC
    int EVP_MAC_CTX_set_params(EVP_MAC_CTX *ctx, const OSSL_PARAM *params)
    EVP_MAC *EVP_MAC_fetch(void *libctx, const char *algorithm, const char *properties)
    EVP_MAC_CTX *EVP_MAC_CTX_new(EVP_MAC *mac)
    int EVP_MAC_init(EVP_MAC_CTX *ctx, const unsigned char *key, size_t keylen, const OSSL_PARAM *params)
    int EVP_MAC_update(EVP_MAC_CTX *ctx, const unsigned char *data, size_t datalen)
    int EVP_MAC_final(EVP_MAC_CTX *ctx, unsigned char *out, size_t *outl, size_t outsize)
    EVP_CIPHER *EVP_CIPHER_fetch(void *libctx, const char *algorithm, const char *properties)

cdef extern from "openssl/bio.h" nogil:
    BIO *BIO_new_file(const char *filename, const char *mode)
    BIO *BIO_new(const void *type)
    const void *BIO_s_mem()
    int BIO_free(BIO *a)
    long BIO_get_mem_data(BIO *b, char **pp)
    int BIO_reset(BIO *b)
    ctypedef struct BIO_METHOD
    enum:
        BIO_TYPE_SOURCE_SINK
        BIO_CTRL_FLUSH
        BIO_CTRL_EOF
    int BIO_get_new_index()
    BIO_METHOD *BIO_meth_new(int type, const char *name)
    int BIO_meth_set_write(BIO_METHOD *m, int (*write)(BIO *, const char *, int) noexcept nogil)
    int BIO_meth_set_read(BIO_METHOD *m, int (*read)(BIO *, char *, int) noexcept nogil)
    int BIO_meth_set_ctrl(BIO_METHOD *m, long (*ctrl)(BIO *, int, long, void *) noexcept nogil)
    int BIO_meth_set_destroy(BIO_METHOD *m, int (*destroy)(BIO *) noexcept nogil)
    int BIO_method_type(const BIO *b)
    void BIO_set_data(BIO *b, void *ptr)
    void *BIO_get_data(BIO *b)
    void BIO_set_init(BIO *b, int init)
    void BIO_set_retry_read(BIO *b)
    void BIO_set_retry_write(BIO *b)
    void BIO_clear_retry_flags(BIO *b)

cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char *buf, int num)
