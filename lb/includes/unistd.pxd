# unistd.h
cdef extern from "unistd.h" nogil:
    int close(int fd)
    int pipe2(int fds[2], int flags)
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)
    ssize_t pwrite(int fd, const void *buf, size_t n, long offset)
    int getpid()
    int dup(int fd)
