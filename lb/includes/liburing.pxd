# liburing.h (liburing-dev): the few calls of fastpath/uring.pxi. The prep and
# cqe helpers are static inline in the header, so nothing of them is linked
# but io_uring_queue_init_params, io_uring_submit_and_wait, io_uring_peek_batch_cqe
# and io_uring_queue_exit.
from libc.stdint cimport uint32_t, uint64_t, int32_t

cdef extern from "liburing.h" nogil:
    enum:
        IORING_SETUP_SUBMIT_ALL
        IORING_SETUP_COOP_TASKRUN
        IORING_SETUP_SINGLE_ISSUER

    struct io_uring_sqe:
        pass

    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    struct io_uring:
        pass

    struct io_uring_params:
        uint32_t flags

    int io_uring_queue_init_params(unsigned entries, io_uring *ring, io_uring_params *p)
    void io_uring_queue_exit(io_uring *ring)
    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    void io_uring_prep_send(io_uring_sqe *sqe, int sockfd, const void *buf, size_t len, int flags)
    void io_uring_prep_recv(io_uring_sqe *sqe, int sockfd, void *buf, size_t len, int flags)
    void io_uring_prep_nop(io_uring_sqe *sqe)
    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    int io_uring_submit_and_wait(io_uring *ring, unsigned wait_nr)
    unsigned io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes, unsigned count)
    void io_uring_cq_advance(io_uring *ring, unsigned nr)
