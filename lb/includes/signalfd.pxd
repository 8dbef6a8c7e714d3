# sys/signalfd.h and signal.h
from libc.stdint cimport uint32_t

cdef extern from "signal.h" nogil:
    ctypedef struct sigset_t:
        pass
    int sigemptyset(sigset_t *s)
    int sigaddset(sigset_t *s, int sig)
    enum:
        SIGTERM
        SIGINT
        SIGQUIT
        SIGHUP
        SIGUSR1
        SIGUSR2

cdef extern from "sys/signalfd.h" nogil:
    enum:
        SFD_NONBLOCK
        SFD_CLOEXEC
    struct signalfd_siginfo:
        uint32_t ssi_signo
    int signalfd(int fd, const sigset_t *mask, int flags)
