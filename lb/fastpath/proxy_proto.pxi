# TEMPORARY placeholder until the PROXY protocol branch is merged (not committed)
cdef int proxy_build(int version, sockaddr_storage *src, sockaddr_storage *dst, char *out, int cap) noexcept nogil:
    return -1

cdef int proxy_parse(const uint8_t *b, size_t n, size_t *consumed, sockaddr_storage *src, sockaddr_storage *dst) noexcept nogil:
    return -2
