# sys/uio.h and sendmsg(2) of sys/socket.h: a write gathered from several
# buffers in one call (cache hits sent straight from the region's blocks)

cdef extern from "sys/uio.h" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "sys/socket.h" nogil:
    enum:
        MSG_MORE

    struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
