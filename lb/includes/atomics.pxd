# GCC __atomic builtins. Shared-memory fields are read by other processes while one
# writer updates them; these keep the compiler from tearing or caching those accesses
# (on x86-64 the relaxed ones compile to plain moves).
from libc.stdint cimport uint32_t, uint64_t, int64_t

cdef extern from *:
    """
    #define lb_load_u32(p)        __atomic_load_n((p), __ATOMIC_RELAXED)
    #define lb_load_u64(p)        __atomic_load_n((p), __ATOMIC_RELAXED)
    #define lb_load_i64(p)        __atomic_load_n((p), __ATOMIC_RELAXED)
    #define lb_load_u8(p)         __atomic_load_n((p), __ATOMIC_RELAXED)
    #define lb_acquire_u32(p)     __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define lb_store_u32(p, v)    __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define lb_store_u64(p, v)    __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define lb_store_i64(p, v)    __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define lb_store_u8(p, v)     __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define lb_release_u32(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define lb_acquire_u64(p)     __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define lb_release_u64(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define lb_fence_acquire()    __atomic_thread_fence(__ATOMIC_ACQUIRE)
    #define lb_fence_release()    __atomic_thread_fence(__ATOMIC_RELEASE)
    /* single writer per counter: a load and a store, never a locked RMW */
    #define lb_add_i64(p, v)      __atomic_store_n((p), __atomic_load_n((p), __ATOMIC_RELAXED) + (v), __ATOMIC_RELAXED)
    #define lb_add_u64(p, v)      __atomic_store_n((p), __atomic_load_n((p), __ATOMIC_RELAXED) + (v), __ATOMIC_RELAXED)
    /* several writers (rate-limit tables): compare-and-swap; on failure *e gets the value seen */
    #define lb_cas_u64(p, e, d)   __atomic_compare_exchange_n((p), (e), (d), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
    #define lb_cas_u32(p, e, d)   __atomic_compare_exchange_n((p), (e), (d), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
    #if defined(__x86_64__) || defined(__i386__)
    #define lb_cpu_relax()        __builtin_ia32_pause()
    #else
    #define lb_cpu_relax()        __atomic_signal_fence(__ATOMIC_SEQ_CST)
    #endif
    """
    uint32_t lb_load_u32(uint32_t *p) nogil
    uint64_t lb_load_u64(uint64_t *p) nogil
    int64_t lb_load_i64(int64_t *p) nogil
    unsigned char lb_load_u8(unsigned char *p) nogil
    uint32_t lb_acquire_u32(uint32_t *p) nogil
    void lb_store_u32(uint32_t *p, uint32_t v) nogil
    void lb_store_u64(uint64_t *p, uint64_t v) nogil
    void lb_store_i64(int64_t *p, int64_t v) nogil
    void lb_store_u8(unsigned char *p, unsigned char v) nogil
    void lb_release_u32(uint32_t *p, uint32_t v) nogil
    uint64_t lb_acquire_u64(uint64_t *p) nogil
    void lb_release_u64(uint64_t *p, uint64_t v) nogil
    void lb_fence_acquire() nogil
    void lb_fence_release() nogil
    void lb_add_i64(int64_t *p, int64_t v) nogil
    void lb_add_u64(uint64_t *p, uint64_t v) nogil
    bint lb_cas_u64(uint64_t *p, uint64_t *expected, uint64_t desired) nogil
    bint lb_cas_u32(uint32_t *p, uint32_t *expected, uint32_t desired) nogil
    void lb_cpu_relax() nogil
