# time.h
cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
        CLOCK_MONOTONIC_COARSE
    int clock_gettime(int clk, timespec *ts)
