# sys/sendfile.h, and fallocate(2) of fcntl.h (a GNU extension, hence
# _GNU_SOURCE in setup.py): cache hits sent from the region's file without a
# copy, and a freed block's page punched out of that file before its reuse
# (fastpath/cache_send.pxi)

cdef extern from "sys/sendfile.h" nogil:
    ssize_t sendfile(int out_fd, int in_fd, long *offset, size_t count)

cdef extern from "fcntl.h" nogil:
    enum:
        FALLOC_FL_KEEP_SIZE
        FALLOC_FL_PUNCH_HOLE

    int fallocate(int fd, int mode, long offset, long len)
