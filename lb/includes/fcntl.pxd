# fcntl.h: splice(2) and pipe sizing are GNU extensions, hence _GNU_SOURCE in setup.py
from lb.includes.uio cimport iovec

cdef extern from "fcntl.h" nogil:
    enum:
        O_NONBLOCK
        O_RDWR
        O_RDONLY
        O_CREAT
        O_EXCL
        O_CLOEXEC
        F_SETPIPE_SZ
        F_GETPIPE_SZ
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK
        SPLICE_F_MORE

    ssize_t splice(int fd_in, long long *off_in, int fd_out, long long *off_out,
                   size_t len, unsigned int flags)
    ssize_t vmsplice(int fd, const iovec *iov, size_t nr_segs, unsigned int flags)
    int fcntl(int fd, int cmd, ...)
    int open(const char *path, int flags, ...)
