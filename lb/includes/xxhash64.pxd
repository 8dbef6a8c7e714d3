# XXH64 (xxHash, 64-bit; Yann Collet's published algorithm), the one hash of
# selection: keys and Maglev's offset/skip. Written out here rather than linked
# so the data plane has no library dependency; tests compare it with the
# `xxhash` package. Little-endian reads, as the algorithm defines them (memcpy
# of 8 bytes on x86-64 and arm64 is exactly that).
from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #define LB_XXH_P1 11400714785074694791ULL
    #define LB_XXH_P2 14029467366897019727ULL
    #define LB_XXH_P3 1609587929392839161ULL
    #define LB_XXH_P4 9650029242287828579ULL
    #define LB_XXH_P5 2870177450012600261ULL
    static inline uint64_t lb_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t lb_rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline uint32_t lb_rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline uint64_t lb_xxh_round(uint64_t acc, uint64_t input) {
        acc += input * LB_XXH_P2;
        acc = lb_rotl64(acc, 31);
        return acc * LB_XXH_P1;
    }
    static inline uint64_t lb_xxh_merge(uint64_t acc, uint64_t val) {
        acc ^= lb_xxh_round(0, val);
        return acc * LB_XXH_P1 + LB_XXH_P4;
    }
    static inline uint64_t lb_xxh64(const void *input, size_t len, uint64_t seed) {
        const uint8_t *p = (const uint8_t *)input;
        const uint8_t *end = p + len;
        uint64_t h;
        if (len >= 32) {
            const uint8_t *limit = end - 32;
            uint64_t v1 = seed + LB_XXH_P1 + LB_XXH_P2, v2 = seed + LB_XXH_P2;
            uint64_t v3 = seed, v4 = seed - LB_XXH_P1;
            do {
                v1 = lb_xxh_round(v1, lb_rd64(p)); p += 8;
                v2 = lb_xxh_round(v2, lb_rd64(p)); p += 8;
                v3 = lb_xxh_round(v3, lb_rd64(p)); p += 8;
                v4 = lb_xxh_round(v4, lb_rd64(p)); p += 8;
            } while (p <= limit);
            h = lb_rotl64(v1, 1) + lb_rotl64(v2, 7) + lb_rotl64(v3, 12) + lb_rotl64(v4, 18);
            h = lb_xxh_merge(h, v1);
            h = lb_xxh_merge(h, v2);
            h = lb_xxh_merge(h, v3);
            h = lb_xxh_merge(h, v4);
        } else {
            h = seed + LB_XXH_P5;
        }
        h += (uint64_t)len;
        while (p + 8 <= end) {
            h ^= lb_xxh_round(0, lb_rd64(p));
            h = lb_rotl64(h, 27) * LB_XXH_P1 + LB_XXH_P4;
            p += 8;
        }
        if (p + 4 <= end) {
            h ^= (uint64_t)lb_rd32(p) * LB_XXH_P1;
            h = lb_rotl64(h, 23) * LB_XXH_P2 + LB_XXH_P3;
            p += 4;
        }
        while (p < end) {
            h ^= (uint64_t)(*p) * LB_XXH_P5;
            h = lb_rotl64(h, 11) * LB_XXH_P1;
            p++;
        }
        h ^= h >> 33;
        h *= LB_XXH_P2;
        h ^= h >> 29;
        h *= LB_XXH_P3;
        h ^= h >> 32;
        return h;
    }
    /* splitmix64 (Steele, Lea, Flood): the per-worker generator of random and p2c */
    static inline uint64_t lb_splitmix64(uint64_t *s) {
        uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    """
    uint64_t lb_xxh64(const void *input, size_t len, uint64_t seed) nogil
    uint64_t lb_splitmix64(uint64_t *s) nogil
