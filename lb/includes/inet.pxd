# arpa/inet.h: text <-> binary addresses (the PROXY protocol's v1 header)
cdef extern from "arpa/inet.h" nogil:
    enum:
        INET_ADDRSTRLEN              # 16: "255.255.255.255" and its NUL
        INET6_ADDRSTRLEN             # 46: the longest IPv6 text and its NUL

    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size)
