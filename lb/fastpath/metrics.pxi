# Metrics: the `metrics` step of the end phase, and the region it counts into.
#
# Every listener, route, pool and backend slot is an entity with the same
# counters (shm_metrics): exchanges ended, by status class and by how they
# ended, bytes, retries, and three latency histograms in fixed buckets. Each
# worker has its own row of entities, so a count is a plain add to a line no
# other process writes; the metrics endpoint (lb/metrics.py) sums the rows
# when it is scraped. A row outlives its worker (a respawn writes on in the
# same row) and a reload carries every entity's totals, matched by name, into
# the new region's carried row: counters only ever go up.
#
# The timings are the access log's (lb_logctx): taken once per loop turn
# from the clock the loop reads anyway, so a histogram costs a bucket search
# over 14 bounds and two adds per histogram.

# Bucket bounds, microseconds: Prometheus' default buckets from 0.5 ms to
# 10 s (its 5 ms .. 10 s, and two finer steps below for a proxy on a LAN).
cdef uint64_t MET_BOUNDS_US[MET_BOUNDS]
MET_BOUNDS_US[:] = [500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
                    1000000, 2500000, 5000000, 10000000]

# The layout of one entity's counters as uint64 words, for the readers
# (lb/metrics.py): where each counter is in the array Shm.metrics_totals gives.
cdef enum:
    MET_WORDS = 80                   # sizeof(shm_metrics) // 8
METRIC_WORDS = MET_WORDS
METRIC_OFFSETS = {
    "requests": <size_t>&(<shm_metrics *>NULL).requests // 8,
    "responses": <size_t>&(<shm_metrics *>NULL).responses // 8,
    "bytes_in": <size_t>&(<shm_metrics *>NULL).bytes_in // 8,
    "bytes_out": <size_t>&(<shm_metrics *>NULL).bytes_out // 8,
    "retries": <size_t>&(<shm_metrics *>NULL).retries // 8,
    "terms": <size_t>&(<shm_metrics *>NULL).terms // 8,
    "hist": <size_t>&(<shm_metrics *>NULL).hist // 8,
    "active": <size_t>&(<shm_metrics *>NULL).active // 8,
}
METRIC_HIST_WORDS = sizeof(shm_metric_hist) // sizeof(uint64_t)
METRIC_BOUNDS_SECONDS = tuple(MET_BOUNDS_US[i] / 1e6 for i in range(MET_BOUNDS))
METRIC_HISTOGRAMS = ("response", "connect", "first_byte")   # HIST_TOTAL, HIST_CONNECT, HIST_FIRST_BYTE
METRIC_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")

assert sizeof(shm_metric_hist) == 128
assert sizeof(shm_metrics) == 640 == MET_WORDS * sizeof(uint64_t)
assert sizeof(shm_metrics_head) == 64


cdef inline uint64_t metrics_entities_off(uint64_t n_listeners) noexcept nogil:
    """Where the rows start in the region: after its head and the listeners'
    route bases."""
    return _line(sizeof(shm_metrics_head) + n_listeners * sizeof(uint32_t))


def metrics_region_size(d):
    entities = d.listeners + d.routes + d.pools + d.slots + d.variants
    return metrics_entities_off(d.listeners) + d.rows * entities * sizeof(shm_metrics)


cdef int metrics_init(Shm shm, listener_routes, uint32_t n_variants=0) except -1:
    """At creation: the entities of each kind, and each listener's first route."""
    cdef shm_metrics_head *mh = <shm_metrics_head *>shm.region_addr("metrics")
    cdef uint32_t *route_base = <uint32_t *>(<char *>mh + sizeof(shm_metrics_head))
    cdef uint32_t base = len(listener_routes)
    mh.n_listeners = len(listener_routes)
    for i, n in enumerate(listener_routes):
        route_base[i] = base
        base += n
    mh.n_routes = base - mh.n_listeners
    mh.n_pools = shm.hdr.n_pools
    mh.n_slots = shm.hdr.n_slots
    mh.n_variants = n_variants
    mh.n_entities = mh.n_listeners + mh.n_routes + mh.n_pools + mh.n_slots + n_variants
    return 0


cdef int metrics_worker_init(lb_worker *w, Shm shm, uint32_t row) except -1:
    cdef shm_metrics_head *mh = <shm_metrics_head *>shm.region_addr("metrics")
    if mh.n_entities == 0:
        return 0
    w.metrics = <shm_metrics *>(<char *>mh + metrics_entities_off(mh.n_listeners)) + <uint64_t>row * mh.n_entities
    w.met_pool_base = mh.n_listeners + mh.n_routes
    w.met_slot_base = w.met_pool_base + mh.n_pools
    return 0


cdef int metrics_listener_init(lb_worker *w, lb_listener_rt *l, Shm shm, uint32_t n_routes) except -1:
    """A listener counts into the entities of its config index (l.cfg_index),
    which the region must have: a worker over a region made for another
    config (a test's) counts nothing rather than into someone else's row."""
    cdef shm_metrics_head *mh = <shm_metrics_head *>shm.region_addr("metrics")
    cdef uint32_t *route_base = <uint32_t *>(<char *>mh + sizeof(shm_metrics_head))
    if l.cfg_index >= mh.n_listeners or (l.cfg_index + 1 < mh.n_listeners and
                                         route_base[l.cfg_index + 1] - route_base[l.cfg_index] != n_routes):
        w.metrics = NULL
        return 0
    l.met_route_base = route_base[l.cfg_index]
    return 0


cdef inline void met_conn_open(lb_worker *w, lb_conn *c) noexcept nogil:
    """A client connection of a listener opened (beside w.stats.active)."""
    if w.metrics != NULL:
        lb_add_i64(&w.metrics[w.listeners[c.listener].cfg_index].active, 1)


cdef inline void met_conn_closed(lb_worker *w, lb_conn *c) noexcept nogil:
    if w.metrics != NULL:
        lb_add_i64(&w.metrics[w.listeners[c.listener].cfg_index].active, -1)


def wants_metrics(listener):
    return True


cdef inline void met_observe(shm_metric_hist *hst, uint64_t us) noexcept nogil:
    cdef uint32_t i = 0
    while i < MET_BOUNDS and us > MET_BOUNDS_US[i]:
        i += 1
    lb_add_u64(&hst.buckets[i], 1)
    lb_add_u64(&hst.sum_us, us)


cdef inline void met_count(shm_metrics *m, lb_conn *c, uint32_t cls, uint64_t retries, uint64_t total,
                           uint64_t connect, uint64_t first) noexcept nogil:
    lb_add_u64(&m.requests, 1)
    lb_add_u64(&m.responses[cls], 1)
    lb_add_u64(&m.bytes_in, c.lg.bytes_in)
    lb_add_u64(&m.bytes_out, c.lg.bytes_out)
    if retries:
        lb_add_u64(&m.retries, retries)
    lb_add_u64(&m.terms[c.lg.term], 1)
    met_observe(&m.hist[HIST_TOTAL], total)
    if connect != <uint64_t>-1:
        met_observe(&m.hist[HIST_CONNECT], connect)
    if first != <uint64_t>-1:
        met_observe(&m.hist[HIST_FIRST_BYTE], first)


cdef void step_metrics(lb_worker *w, lb_conn *c) noexcept nogil:
    """End phase: count this exchange (or tcp connection) on its listener,
    its route, the pool it was sent to and the backend it last tried."""
    cdef shm_metrics *m = w.metrics
    cdef lb_listener_rt *l = &w.listeners[c.listener]
    cdef lb_hconn *h = NULL
    cdef uint64_t now = w.now_us, start, total, connect = <uint64_t>-1, first = <uint64_t>-1, retries = 0
    cdef uint32_t cls = MET_CLASSES - 1
    cdef int32_t slot
    cdef bint pooled
    if m == NULL:
        return
    if c.kind == KIND_HTTP:
        h = <lb_hconn *>c
    start = c.lg.t_start if c.lg.t_start and c.lg.t_start <= now else now
    total = now - start
    if c.lg.t_connect >= start:
        connect = c.lg.t_connect - start
    if c.lg.t_response >= start:
        first = c.lg.t_response - start
    if 100 <= c.lg.status < 600:
        cls = c.lg.status // 100 - 1
    if c.tries > 1:
        retries = <uint64_t>(c.tries - 1)
    met_count(&m[l.cfg_index], c, cls, retries, total, connect, first)
    if h != NULL and h.route >= 0:
        met_count(&m[l.met_route_base + <uint32_t>h.route], c, cls, retries, total, connect, first)
    # the pool once one was chosen: not what the route step (step 1) or an
    # accept rule refused, nor a request that never came
    if h != NULL:
        pooled = c.lg.t_request != 0 and c.lg.step != 1
    else:
        pooled = c.lg.term != TERM_REFUSED
    if c.pool >= 0 and pooled:
        met_count(&m[w.met_pool_base + <uint32_t>c.pool], c, cls, retries, total, connect, first)
        if h != NULL and h.split >= 0 and w.http.splits[h.split].met_base != <uint32_t>0xffffffff:
            met_count(&m[w.http.splits[h.split].met_base + h.split_variant], c, cls, retries, total, connect, first)
    slot = c.slot
    if slot < 0 and c.tries > 0:
        slot = c.tried[c.tries - 1]  # the last backend tried, when none is held now
    if slot >= 0:
        met_count(&m[w.met_slot_base + <uint32_t>slot], c, cls, retries, total, connect, first)
    top_end(w, c)


# ---- readers: the text of the metrics endpoint (lb/metrics.py) -------------------------
#
# A scrape of ten thousand backends is a few hundred thousand lines, most of
# them histogram buckets: they are written here, in C, from the summed rows
# (Shm.metrics_totals), one family at a time; lb/metrics.py decides what each
# family holds and writes the few lines that are not per entity.

from libc.stdio cimport snprintf

cdef struct mbuf:
    char *p
    size_t n
    size_t cap


cdef int mb_reserve(mbuf *b, size_t more) except -1:
    cdef size_t cap = b.cap or 65536
    cdef char *p
    if b.n + more <= b.cap:
        return 0
    while cap < b.n + more:
        cap *= 2
    p = <char *>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline void mb_put(mbuf *b, const char *s, size_t n) noexcept:
    memcpy(b.p + b.n, s, n)
    b.n += n


cdef inline void mb_u64(mbuf *b, uint64_t v) noexcept:
    cdef char tmp[24]
    cdef int i = 24
    while True:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    mb_put(b, tmp + i, 24 - i)


cdef bytes mb_bytes(mbuf *b):
    try:
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        free(b.p)
        b.p = NULL


def metrics_render_samples(bytes totals, entities, labels, bytes name, size_t word, bytes extra=b"",
                           bint skip_zero=False):
    """One line per entity: name{labels[,extra]} value, where value is the
    entity's counter at word (METRIC_OFFSETS) in totals. labels: each
    entity's label text, escaped (b'pool="a",backend="b"')."""
    cdef const uint64_t *t = <const uint64_t *>PyBytes_AS_STRING(totals)
    cdef size_t n_words = len(totals) // sizeof(uint64_t)
    cdef mbuf b
    cdef uint64_t v
    cdef bytes lab
    memset(&b, 0, sizeof(mbuf))
    try:
        for e, lab in zip(entities, labels):
            if <size_t>e * MET_WORDS + word >= n_words:
                raise IndexError(f"entity {e} beyond the totals")
            v = t[<size_t>e * MET_WORDS + word]
            if skip_zero and v == 0:
                continue
            mb_reserve(&b, len(name) + len(lab) + len(extra) + 32)
            mb_put(&b, name, len(name))
            mb_put(&b, "{", 1)
            mb_put(&b, lab, len(lab))
            if extra:
                if lab:
                    mb_put(&b, ",", 1)
                mb_put(&b, extra, len(extra))
            mb_put(&b, "} ", 2)
            mb_u64(&b, v)
            mb_put(&b, "\n", 1)
        return mb_bytes(&b)
    finally:
        free(b.p)


cdef const char *LE_TEXT[MET_BUCKETS]
LE_TEXT[:] = [b"0.0005", b"0.001", b"0.0025", b"0.005", b"0.01", b"0.025", b"0.05", b"0.1", b"0.25", b"0.5",
              b"1", b"2.5", b"5", b"10", b"+Inf"]
for _i in range(MET_BOUNDS):
    assert float(LE_TEXT[_i]) * 1e6 == MET_BOUNDS_US[_i]


def metrics_render_histogram(bytes totals, entities, labels, bytes name, uint32_t hist):
    """An entity's histogram hist (HIST_*) as Prometheus writes one: the
    cumulative buckets, then _sum (seconds) and _count."""
    cdef const uint64_t *t = <const uint64_t *>PyBytes_AS_STRING(totals)
    cdef size_t n_words = len(totals) // sizeof(uint64_t)
    cdef const uint64_t *hw
    cdef mbuf b
    cdef uint64_t cum
    cdef uint32_t i
    cdef bytes lab
    cdef char num[32]
    cdef int k
    if hist >= MET_HISTS:
        raise IndexError(f"histogram {hist}")
    memset(&b, 0, sizeof(mbuf))
    try:
        for e, lab in zip(entities, labels):
            if (<size_t>e + 1) * MET_WORDS > n_words:
                raise IndexError(f"entity {e} beyond the totals")
            hw = t + <size_t>e * MET_WORDS + (<size_t>&(<shm_metrics *>NULL).hist[hist]) // 8
            mb_reserve(&b, (MET_BUCKETS + 2) * (len(name) + len(lab) + 48))
            cum = 0
            for i in range(MET_BUCKETS):
                cum += hw[i]
                mb_put(&b, name, len(name))
                mb_put(&b, "_bucket{", 8)
                mb_put(&b, lab, len(lab))
                mb_put(&b, ",le=\"" if lab else "le=\"", 5 if lab else 4)
                mb_put(&b, LE_TEXT[i], strlen(LE_TEXT[i]))
                mb_put(&b, "\"} ", 3)
                mb_u64(&b, cum)
                mb_put(&b, "\n", 1)
            mb_put(&b, name, len(name))
            mb_put(&b, "_sum{", 5)
            mb_put(&b, lab, len(lab))
            mb_put(&b, "} ", 2)
            k = snprintf(num, sizeof(num), "%llu.%06llu", <unsigned long long>(hw[MET_BUCKETS] // 1000000),
                         <unsigned long long>(hw[MET_BUCKETS] % 1000000))
            mb_put(&b, num, k)
            mb_put(&b, "\n", 1)
            mb_put(&b, name, len(name))
            mb_put(&b, "_count{", 7)
            mb_put(&b, lab, len(lab))
            mb_put(&b, "} ", 2)
            mb_u64(&b, cum)
            mb_put(&b, "\n", 1)
        return mb_bytes(&b)
    finally:
        free(b.p)


def metrics_pick(bytes totals, words):
    """Some words of every entity (a history sample keeps only what rates and
    percentiles need): [entity][k] native uint64, k in the order of words."""
    cdef const uint64_t *t = <const uint64_t *>PyBytes_AS_STRING(totals)
    cdef size_t n = len(totals) // (MET_WORDS * sizeof(uint64_t))
    cdef size_t k = len(words), e, j
    cdef uint32_t *w = <uint32_t *>malloc(max(1, k) * sizeof(uint32_t))
    if w == NULL:
        raise MemoryError()
    try:
        for j, word in enumerate(words):
            if not 0 <= word < MET_WORDS:
                raise IndexError(f"word {word}")
            w[j] = word
        out = PyBytes_FromStringAndSize(NULL, n * k * sizeof(uint64_t))
        dst = <uint64_t *>PyBytes_AS_STRING(out)
        for e in range(n):
            for j in range(k):
                dst[e * k + j] = t[e * MET_WORDS + w[j]]
        return out
    finally:
        free(w)


def metrics_step_ns(Shm shm, uint32_t row, uint64_t n, uint32_t n_backends, uint64_t seed=1):
    """Nanoseconds per exchange of the workers' own `metrics` step (its top
    talkers' client and status included), run n times in row `row` for an
    http exchange of listener 0 and pool 0 from 127.0.0.1, its backend drawn
    at random among the first n_backends slots, with random timings (bench metrics_scrape: a worker's cost, with and without a
    scrape reading the rows beside it)."""
    cdef lb_worker w
    cdef lb_listener_rt l
    cdef lb_hconn *h = <lb_hconn *>calloc(1, sizeof(lb_hconn))
    cdef uint64_t rng = seed, r, i
    cdef timespec t0, t1
    if h == NULL:
        raise MemoryError()
    memset(&w, 0, sizeof(lb_worker))
    memset(&l, 0, sizeof(lb_listener_rt))
    try:
        metrics_worker_init(&w, shm, row)
        top_worker_init(&w, shm, row)
        if w.metrics == NULL or n_backends == 0 or n_backends > shm.hdr.n_slots:
            raise ValueError("no metrics entities for that")
        w.listeners = &l
        h.c.kind = KIND_HTTP
        h.c.listener = 0
        h.c.peer.ss_family = AF_INET
        memcpy(&(<sockaddr_in *>&h.c.peer).sin_addr.s_addr, b"\x7f\x00\x00\x01", 4)
        h.route = -1
        h.split = -1
        w.now_us = 1000000000
        with nogil:
            clock_gettime(CLOCK_MONOTONIC, &t0)
            for i in range(n):
                r = lb_splitmix64(&rng)
                h.c.pool = 0
                h.c.slot = <int32_t>((r >> 32) % n_backends)
                h.c.tries = 1
                h.c.lg.t_start = w.now_us - (r & 0xfffff)          # up to a second
                h.c.lg.t_request = h.c.lg.t_start
                h.c.lg.t_connect = h.c.lg.t_start + ((r >> 20) & 0x3ff)
                h.c.lg.t_response = h.c.lg.t_connect + ((r >> 8) & 0xfff)
                h.c.lg.status = 200
                h.c.lg.bytes_in = 80
                h.c.lg.bytes_out = 200
                step_metrics(&w, &h.c)
                w.now_us += 1
            clock_gettime(CLOCK_MONOTONIC, &t1)
        return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / max(1, n)
    finally:
        free(h)


def metrics_render_list(bytes name, labels, values, bytes extra=b"", bint micro=False):
    """One line per entity from a list of integers (gauges the supervisor
    reads beside the rows); micro: the integers are microseconds, written
    as seconds."""
    cdef mbuf b
    cdef bytes lab
    cdef uint64_t v
    cdef char num[32]
    cdef int k
    memset(&b, 0, sizeof(mbuf))
    try:
        for lab, value in zip(labels, values):
            v = value
            mb_reserve(&b, len(name) + len(lab) + len(extra) + 40)
            mb_put(&b, name, len(name))
            mb_put(&b, "{", 1)
            mb_put(&b, lab, len(lab))
            if extra:
                if lab:
                    mb_put(&b, ",", 1)
                mb_put(&b, extra, len(extra))
            mb_put(&b, "} ", 2)
            if micro:
                k = snprintf(num, sizeof(num), "%llu.%06llu", <unsigned long long>(v // 1000000),
                             <unsigned long long>(v % 1000000))
                mb_put(&b, num, k)
            else:
                mb_u64(&b, v)
            mb_put(&b, "\n", 1)
        return mb_bytes(&b)
    finally:
        free(b.p)
