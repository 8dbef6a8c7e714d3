# Python entry points to the selection code, for the supervisor (table
# previews), the tests (compared with tests/reference/select_ref.py) and the
# benchmarks. They run the very functions the worker loop runs.

from lb.includes.time cimport CLOCK_MONOTONIC


cdef double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def hash64(const unsigned char[:] data, uint64_t seed=0):
    """XXH64 of data: the hash of keys and of Maglev's offset and skip."""
    if data.shape[0] == 0:
        return lb_xxh64(NULL, 0, seed)
    return lb_xxh64(&data[0], data.shape[0], seed)


cdef mg_entry *_mg_entries(list bnames, weights) except NULL:
    cdef uint32_t n = len(bnames)
    if n > TABLE_EMPTY:
        raise ValueError(f"at most {TABLE_EMPTY} backends per table")
    if len(weights) != n:
        raise ValueError("one weight per name")
    cdef mg_entry *e = <mg_entry *>calloc(max(1, n), sizeof(mg_entry))
    if e == NULL:
        raise MemoryError()
    for i in range(n):
        e[i].name = <const char *>(<bytes>bnames[i])
        e[i].weight = weights[i]
        e[i].id = i
    return e


def maglev_table(names, weights, uint32_t table_size):
    """The Maglev table of (name, weight) entries given in any order, as indices
    into the given lists (-1 where empty). Weight-0 entries are left out."""
    bnames = [name.encode() for name in names]
    kept = [i for i, w in enumerate(weights) if w > 0]
    cdef mg_entry *e = _mg_entries([bnames[i] for i in kept], [weights[i] for i in kept])
    cdef uint16_t *table = <uint16_t *>malloc(max(1, table_size) * sizeof(uint16_t))
    if table == NULL:
        free(e)
        raise MemoryError()
    cdef uint32_t n = len(kept)
    with nogil:
        maglev_fill(e, n, table_size, table)
    out = [-1 if table[i] == TABLE_EMPTY else kept[table[i]] for i in range(table_size)]
    free(e)
    free(table)
    return out


def bench_maglev_build(names, weights, uint32_t table_size, int repeat=10):
    """Seconds per build (hashing, sorting and filling), timed in compiled code."""
    bnames = [name.encode() for name in names]
    cdef uint32_t n = len(bnames)
    cdef mg_entry *template = _mg_entries(bnames, weights)
    cdef mg_entry *e = <mg_entry *>calloc(max(1, n), sizeof(mg_entry))
    cdef uint16_t *table = <uint16_t *>malloc(table_size * sizeof(uint16_t))
    cdef double started, best = 1e9, t
    cdef int i
    if e == NULL or table == NULL:
        raise MemoryError()
    with nogil:
        for i in range(repeat):
            memcpy(e, template, n * sizeof(mg_entry))
            started = _monotonic()
            maglev_fill(e, n, table_size, table)
            t = _monotonic() - started
            if t < best:
                best = t
    free(template)
    free(e)
    free(table)
    return best


cdef class Selector:
    """One pool in a private shared-memory region, picked from by the compiled
    selection code exactly as workers do; `rows` worker states share it.
    A process forked after construction shares the region (MAP_SHARED)."""

    cdef Shm shm
    cdef lb_worker *rows
    cdef uint32_t n_rows
    cdef readonly str algorithm
    cdef uint64_t _sink

    def __cinit__(self):
        self.rows = NULL
        self.n_rows = 0

    def __init__(self, str algorithm, names, weights, *, uint32_t table_size=65537,
                 double balance_factor=0.0, uint64_t seed=1, backups=None, uint32_t rows=1):
        cdef uint32_t n = len(names)
        if len(weights) != n or (backups is not None and len(backups) != n):
            raise ValueError("names, weights and backups must have the same length")
        if rows == 0:
            raise ValueError("at least one row")
        self.algorithm = algorithm
        path = f"/dev/shm/lb-selector-{getpid()}-{id(self):x}.shm"
        self.shm = Shm.create(path, [("selector", max(1, n), algorithm, table_size, "", balance_factor)], rows)
        self.shm.unlink()  # the mapping outlives the name, and dies with the last process using it
        for i in range(n):
            self.shm.set_backend(0, i, "127.0.0.1", 1, names[i], weights[i],
                                 bool(backups[i]) if backups is not None else False)
        self.rows = <lb_worker *>calloc(rows, sizeof(lb_worker))
        if self.rows == NULL:
            raise MemoryError()
        self.n_rows = rows
        for r in range(rows):
            worker_attach(&self.rows[r], self.shm, r, (seed + r) & 0xFFFFFFFFFFFFFFFF)
        if algorithm == "maglev":
            self.shm.rebuild_table(0)

    def __dealloc__(self):
        cdef uint32_t r
        if self.rows != NULL:
            for r in range(self.n_rows):
                if self.rows[r].pools != NULL:
                    free(self.rows[r].pools[0].rr_current)
                    free(self.rows[r].pools[0].cand)
                    free(self.rows[r].pools[0].cand_cum)
                    free(self.rows[r].pools)
            free(self.rows)

    cdef lb_worker *_row(self, uint32_t row) except NULL:
        if row >= self.n_rows:
            raise IndexError(f"row {row} out of range")
        return &self.rows[row]

    cdef uint32_t _slot(self, int slot) except? 0:
        if not 0 <= slot < self.shm._pool(0).capacity:
            raise IndexError(f"slot {slot} out of range")
        return slot

    def pick(self, const unsigned char[:] key=b"", tried=(), uint32_t row=0):
        """The slot a new connection with this key goes to, or -1."""
        cdef lb_worker *w = self._row(row)
        cdef lb_conn c
        cdef uint64_t h
        cdef int32_t slot
        if len(tried) > LB_MAX_TRIES:
            raise ValueError(f"at most {LB_MAX_TRIES} tried slots")
        memset(&c, 0, sizeof(lb_conn))
        for i, t in enumerate(tried):
            c.tried[i] = t
        c.tries = len(tried)
        h = lb_xxh64(&key[0] if key.shape[0] else NULL, key.shape[0], 0)
        slot = w.pools[0].ops.pick(w, &w.pools[0], &c, h)
        return slot

    def take(self, int slot, uint32_t row=0):
        cdef lb_worker *w = self._row(row)
        cdef uint32_t s = self._slot(slot)
        lb_add_i64(&w.bstats[s].active, 1)
        lb_add_u64(&w.bstats[s].total, 1)
        lb_add_i64(&w.pstats_all[<uint64_t>row * w.hdr.n_pools].active, 1)

    def drop(self, int slot, uint32_t row=0):
        cdef lb_worker *w = self._row(row)
        cdef uint32_t s = self._slot(slot)
        lb_add_i64(&w.bstats[s].active, -1)
        lb_add_i64(&w.pstats_all[<uint64_t>row * w.hdr.n_pools].active, -1)

    def active(self, int slot):
        return slot_active_all(&self.rows[0], self._slot(slot))

    def pool_active(self):
        return pool_active_all(&self.rows[0], &self.rows[0].pools[0])

    def set_weight(self, int slot, int weight):
        self.shm.set_weight(0, self._slot(slot), weight)

    def set_health(self, int slot, bint up):
        self.shm.set_health(0, self._slot(slot), "up" if up else "down")

    def set_admin(self, int slot, str state):
        self.shm.set_admin(0, self._slot(slot), state)

    def rebuild(self):
        self.shm.rebuild_table(0)

    def table(self):
        return self.shm.table(0)

    def generation(self):
        return self.shm.pool_generation(0)

    def bench_pick(self, uint64_t n, uint32_t key_len=16, uint32_t row=0):
        """Nanoseconds per pick, keys of key_len bytes made and hashed in the loop."""
        cdef lb_worker *w = self._row(row)
        cdef lb_conn c
        cdef uint8_t key[64]
        cdef uint64_t i, seed = 12345, sink = 0, h
        cdef double started, elapsed
        if key_len > 64:
            raise ValueError("key_len at most 64")
        memset(&c, 0, sizeof(lb_conn))
        memset(key, 0, 64)
        with nogil:
            started = _monotonic()
            for i in range(n):
                h = lb_splitmix64(&seed)
                memcpy(key, &h, 8)
                memcpy(key + 8, &i, 8)
                sink += <uint64_t>w.pools[0].ops.pick(w, &w.pools[0], &c, lb_xxh64(key, key_len, 0))
            elapsed = _monotonic() - started
        self._sink = sink  # keeps the compiler from dropping the picks
        return elapsed * 1e9 / max(1, n)
