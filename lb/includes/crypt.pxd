# crypt.h (libxcrypt): the password hashes of htpasswd files, bcrypt ($2b$,
# $2a$, $2y$) and SHA-2 crypt ($5$, $6$). Reentrant with one crypt_data each.
cdef extern from "crypt.h" nogil:
    struct crypt_data:
        pass
    char *crypt_rn(const char *phrase, const char *setting, void *data, int size)
