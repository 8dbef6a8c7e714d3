/* Preloaded into wrk by https_connrate (harness.Context.fresh_tls_env): every
 * new connection makes a full TLS handshake, as a first-time visitor's does.
 *
 * wrk keeps one SSL object per connection slot; on close it calls
 * SSL_shutdown then SSL_clear, which keeps the connection's session, so its
 * next connection offers that session's ticket and resumes (verified with
 * wrk 4.1.0 against all three proxies). Here SSL_clear also drops the
 * session. The proxies keep issuing their tickets as usual: they do the work
 * of a first visit, and only the client never comes back with a ticket.
 *
 * No OpenSSL header needed: the two calls resolve against the libssl wrk
 * itself is linked with.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_set_session(SSL *ssl, SSL_SESSION *session);

int SSL_clear(SSL *ssl)
{
    static int (*real_clear)(SSL *);
    int rc;
    if (real_clear == NULL)
        real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    rc = real_clear(ssl);
    SSL_set_session(ssl, NULL);
    return rc;
}
