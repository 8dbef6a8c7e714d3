# sys/mman.h, sys/stat.h: the shared-memory region is a file under /dev/shm mapped MAP_SHARED
cdef extern from "sys/mman.h" nogil:
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
    void *MAP_FAILED
    void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)
    int munmap(void *addr, size_t len)
    int mincore(void *addr, size_t length, unsigned char *vec)

cdef extern from "unistd.h" nogil:
    int ftruncate(int fd, long length)
