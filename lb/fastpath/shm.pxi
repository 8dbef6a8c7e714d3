# The shared-memory region (DESIGN.md section 2) and its Python accessors.
#
# Layout: a header, then the regions of REGIONS in that order, each on a 64-byte
# line. The header's directory names every region with its offset and size, so
# a process that attaches finds each region by name and checks it is there.

import collections as _collections
import os as _os
import socket as _socket

ALGORITHMS = {"roundrobin": ALG_ROUNDROBIN, "leastconn": ALG_LEASTCONN,
              "p2c": ALG_P2C, "random": ALG_RANDOM, "maglev": ALG_MAGLEV}
ADMIN_STATES = {"ready": ADMIN_READY, "drain": ADMIN_DRAIN, "maint": ADMIN_MAINT}
_ADMIN_NAMES = {v: k for k, v in ADMIN_STATES.items()}
HEALTH_STATES = {"up": HEALTH_UP, "down": HEALTH_DOWN}
HASH_KEYS = {"source_ip": HK_SOURCE_IP, "source_addr": HK_SOURCE_ADDR}
MAX_POOL_CAPACITY = 65535
_HEALTH_NAMES = {v: k for k, v in HEALTH_STATES.items()}

assert sizeof(shm_header) == 1024
assert sizeof(shm_pool) == 128
assert sizeof(shm_pool_stats) == 64
assert sizeof(shm_backend) == 192
assert sizeof(shm_worker_stats) == 320
assert sizeof(shm_backend_stats) == 64
assert sizeof(shm_listener_stats) == 64
assert sizeof(shm_ticket_key) == 80
assert sizeof(shm_log_record) == LOG_RECORD_SIZE
assert <size_t>&(<shm_log_record *>NULL).data == LOG_HEAD_SIZE
assert (LOG_METHOD_MAX + LOG_HOST_MAX + LOG_PATH_MAX + LOG_RID_MAX + LOG_UA_MAX + LOG_REFERER_MAX + LOG_SNI_MAX
        == LOG_RECORD_SIZE - LOG_HEAD_SIZE)
assert sizeof(shm_log_ring) == 128
assert sizeof(shm_log_head) == 64
assert sizeof(shm_limits_head) == 64
assert sizeof(shm_limit) == 256
assert sizeof(shm_limit_entry) == 64
assert sizeof(shm_limit_stats) == 64
assert sizeof(shm_auth_head) == 64
assert sizeof(shm_auth) == 128
assert sizeof(shm_auth_key) == 96
assert sizeof(shm_auth_stats) == 64


cdef inline uint64_t _line(uint64_t n) noexcept nogil:
    return (n + 63) & ~(<uint64_t>63)


# ---- the layout: every region, in order, and the one writer of each -------------
#
# A feature that shares state between processes (ticket keys, ACL tries, rate
# tables, log rings, a cache index) adds its row here and its struct to
# _fastpath.pxd, and finds its region by name (Shm.region_addr) when it attaches.
#
# The size of each region is computed from the layout's dimensions d: pools,
# slots (backend slots of all pools), rows (worker counter rows) and tables
# (the table size of each maglev pool), acls (ACLs) and rules (their users'
# decision counters: each allow or deny entry and each default).

# (and log_records: the records of each worker's access-log ring, 0 for none;
# limits: (capacity, concurrent) of each rate limit table; listeners: the
# config's listeners; routes: all their routes (the metrics' entities beside
# pools and slots))
Dimensions = _collections.namedtuple("Dimensions",
                                     "pools slots rows tables acls rules log_records limits auths listeners routes splits variants "
                                     "mirrors", defaults=((), 0, 1, 0, 0, 0, 0))


cdef class _Resident:
    """Which pages of a range of the mapping hold data (mincore). A scan of a
    limit table skips the pages no key ever touched: reading them would make
    tmpfs allocate them, and a table sized for millions of keys would then
    cost its full size in memory for one `lb limits show`."""

    cdef unsigned char *vec
    cdef size_t start
    cdef size_t page

    def __dealloc__(self):
        free(self.vec)

    @staticmethod
    cdef _Resident of(char *p, uint64_t n):
        cdef _Resident r = _Resident.__new__(_Resident)
        r.page = <size_t>_os.sysconf("SC_PAGE_SIZE")
        r.start = <size_t>p & ~(r.page - 1)
        cdef size_t pages = (<size_t>p + n - r.start + r.page - 1) // r.page
        r.vec = <unsigned char *>calloc(max(1, pages), 1)
        if r.vec == NULL:
            raise MemoryError()
        if mincore(<void *>r.start, pages * r.page, r.vec) != 0:
            memset(r.vec, 1, pages)   # cannot tell: read it all
        return r

    cdef inline bint has(self, const void *p, size_t n) noexcept:
        """Any byte of [p, p + n) on a resident page."""
        cdef size_t first = (<size_t>p - self.start) // self.page
        cdef size_t last = (<size_t>p + n - 1 - self.start) // self.page
        cdef size_t i
        for i in range(first, last + 1):
            if self.vec[i] & 1:
                return True
        return False


cdef inline uint64_t _limit_table_bytes(uint64_t capacity, uint64_t concurrent, uint64_t rows) noexcept nogil:
    """One limit's entries, then (concurrent limits) its [entry][row] counts."""
    return _line(capacity * sizeof(shm_limit_entry)) + (_line(capacity * rows * sizeof(uint32_t)) if concurrent else 0)


cdef inline uint64_t _rule_stride(uint64_t rules) noexcept nogil:
    """Counters per worker row of acl_stats: whole cache lines, so no two
    workers write one line."""
    return _line(max(1, rules) * sizeof(uint64_t)) // sizeof(uint64_t)

REGIONS = (
    # name, writer, size in bytes
    ("pools", "supervisor (each pool's generation: whoever changes one of its backends)",
     lambda d: d.pools * sizeof(shm_pool)),
    ("backends", "supervisor (address, name, weight, admin state); checker (health and check results)",
     lambda d: d.slots * sizeof(shm_backend)),
    ("worker_stats", "each worker, its own row",
     lambda d: d.rows * sizeof(shm_worker_stats)),
    ("backend_stats", "each worker, its own row of every backend's counters",
     lambda d: d.rows * d.slots * sizeof(shm_backend_stats)),
    ("pool_stats", "each worker, its own row of every pool's counters",
     lambda d: d.rows * d.pools * sizeof(shm_pool_stats)),
    ("maglev_tables", "supervisor (two halves per maglev pool, flipped by generation)",
     lambda d: sum(_line(2 * size * sizeof(uint16_t)) for size in d.tables)),
    ("tls_tickets", "supervisor (TLS session ticket keys: at start, reload and rotation; seqlock)",
     lambda d: sizeof(shm_tls_tickets)),
    ("acls", "supervisor (each ACL's two halves of prefix tables, flipped by generation)",
     lambda d: _line(sizeof(shm_acl_head) + d.acls * sizeof(shm_acl)) + d.acls * 2 * ACL_HALF_SIZE),
    ("acl_stats", "each worker, its own row of every ACL rule's decision counter",
     lambda d: d.rows * _rule_stride(d.rules) * sizeof(uint64_t)),
    ("log_rings", "each worker, its own ring's head and drops; the logger, the tails (access logs)",
     lambda d: sizeof(shm_log_head) + (d.rows * (sizeof(shm_log_ring) + d.log_records * sizeof(shm_log_record)) if d.log_records else 0)),
    ("limits", "supervisor (descriptors, at creation); every worker (the tables' entries: CAS and entry locks)",
     lambda d: _line(sizeof(shm_limits_head) + len(d.limits) * sizeof(shm_limit))
     + sum(_limit_table_bytes(cap, conc, d.rows) for cap, conc in d.limits)),
    ("limit_stats", "each worker, its own row of every limit's counters",
     lambda d: d.rows * max(1, len(d.limits)) * sizeof(shm_limit_stats)),
    ("auth_keys", "supervisor (each auth's two halves, flipped by generation: API-key hashes, or a JWKS's packed keys)",
     lambda d: _line(sizeof(shm_auth_head) + d.auths * sizeof(shm_auth)) + d.auths * 2 * AUTH_HALF_SLOTS * sizeof(shm_auth_key)),
    ("auth_stats", "each worker, its own row of every API-key auth's counters",
     lambda d: d.rows * max(1, d.auths) * sizeof(shm_auth_stats)),
    ("listener_stats", "each worker, its own row of every listener's counters (max_connections sums them)",
     lambda d: d.rows * max(1, d.listeners) * sizeof(shm_listener_stats)),
    ("metrics", "each worker, its own row of every listener's, route's, pool's and backend's counters "
     "and histograms; the supervisor, the carried row (fastpath/metrics.pxi)",
     lambda d: metrics_region_size(d)),
    ("top_talkers", "each worker, its own row of top-talker sketches (fastpath/top.pxi)",
     lambda d: d.rows * sizeof(shm_top_row)),
    ("splits", "supervisor (each split's two halves of weights and bucket table, flipped by generation)",
     lambda d: splits_region_size(d)),
    ("mirror_stats", "each worker, its own row of every mirror's counters (fastpath/mirror.pxi)",
     lambda d: mirrors_region_size(d)),
)
assert len(REGIONS) <= LB_MAX_REGIONS and all(len(name) < LB_REGION_NAME_LEN for name, _, _ in REGIONS)


def _fresh_file(str path):
    """Make way for a new region at path: a file left there is another
    process's (a supervisor killed before it could remove it, whose pid is
    ours now, or the region a draining generation still maps). It is
    unlinked, never truncated: whoever maps it keeps its bytes, and the new
    region is a new file, so a reader can tell the two apart (by inode, and
    by a ctime after its supervisor started)."""
    try:
        _os.unlink(path)
    except FileNotFoundError:
        pass


cdef class Shm:
    """One mapping of the region. The supervisor creates it before forking;
    workers inherit the mapping; other processes may attach by path."""

    cdef char *base
    cdef size_t size
    cdef readonly str path
    cdef shm_header *hdr
    # the regions every user of the mapping needs, found once
    cdef shm_pool *pools
    cdef shm_backend *backends
    cdef shm_worker_stats *wstats
    cdef shm_backend_stats *bstats
    cdef shm_pool_stats *pstats
    cdef shm_tls_tickets *tickets
    cdef shm_acl_head *acl_head
    cdef shm_acl *acls
    cdef uint64_t *acl_stats
    cdef shm_limits_head *lim_head
    cdef shm_limit *lims
    cdef shm_limit_stats *lim_stats
    cdef shm_auth_head *auth_head
    cdef shm_auth *auths
    cdef shm_auth_stats *auth_stats
    cdef shm_listener_stats *lstats

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL

    @staticmethod
    def create(str path, pools, int n_rows, int supervisor_pid=0, acls=(), int n_rules=0, uint32_t log_records=0,
               limits=(), auths=(), uint32_t n_listeners=1, listener_routes=(), splits=(), uint32_t n_mirrors=0):
        """pools: sequence of (name, capacity, algorithm, table_size, hash_key,
        balance_factor); table_size counts only for maglev, hash_key is a config
        hash_key string (keys the tcp path cannot compute, and every key of a
        pool that is not maglev, hash to nothing). acls: the ACL names, in
        config order (their tables start empty: AclSet.publish fills them);
        n_rules: the decision counters of their users (lb.config.access_rules).
        log_records: the size of each worker's access-log ring, a power of two
        (0: no access logs). limits: the rate limit tables, each a dict
        (limits_spec in limits.pxi), in config order. auths: the names of the
        API-key auths, in config order (their tables start empty: auth_publish
        fills them). n_listeners: the config's listeners (their counters).
        listener_routes: the routes of each listener, in config order (the
        metrics' entities). splits: (name, [pool index of each
        variant]) of each split, in config order (split_publish fills their tables)."""
        if log_records & (log_records - 1):
            raise ValueError(f"log ring size {log_records} is not a power of two")
        for spec in pools:
            if not 0 < spec[1] <= MAX_POOL_CAPACITY:
                raise ValueError(f"pool {spec[0]!r}: capacity {spec[1]} out of range 1..{MAX_POOL_CAPACITY}")
        dims = Dimensions(pools=len(pools), slots=sum(spec[1] for spec in pools), rows=n_rows,
                          tables=[spec[3] for spec in pools if spec[2] == "maglev"], acls=len(acls),
                          rules=n_rules, log_records=log_records,
                          limits=tuple((spec["capacity"], spec["concurrent"]) for spec in limits),
                          auths=len(auths), listeners=max(1, n_listeners, len(listener_routes)),
                          routes=sum(listener_routes), splits=len(splits),
                          variants=sum(len(pools) for _, pools in splits), mirrors=n_mirrors)
        layout = []
        cdef uint64_t total = _line(sizeof(shm_header))
        for name, _, size_of in REGIONS:
            layout.append((name, total, size_of(dims)))
            total = _line(total + size_of(dims))
        cdef bytes bpath = path.encode()
        _fresh_file(path)
        cdef int fd = open(bpath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd < 0:
            raise OSError(errno, "cannot create shared memory", path)
        # a new file, sized: it reads as zeros and holds no page until one is
        # written, so the ACL halves' unused capacity costs nothing
        if ftruncate(fd, total) != 0:
            close(fd)
            raise OSError(errno, "cannot size shared memory", path)
        cdef Shm self = Shm._map(fd, total, path)
        close(fd)
        cdef shm_header *h = self.hdr
        h.version = LB_SHM_VERSION
        h.header_size = sizeof(shm_header)
        h.total_size = total
        h.n_pools = dims.pools
        h.n_slots = dims.slots
        h.n_rows = n_rows
        h.supervisor_pid = supervisor_pid
        h.n_listeners = max(1, n_listeners)
        h.n_regions = len(layout)
        for i, (name, off, size) in enumerate(layout):
            bname = name.encode()
            memcpy(h.regions[i].name, <char *>bname, len(bname))
            h.regions[i].off = off
            h.regions[i].size = size
        self._find_regions()
        self._acls_init(acls, n_rules, n_rows)
        self._limits_init(limits, n_rows)
        self._auths_init(auths)
        (<shm_log_head *>self.region_addr("log_rings")).n_records = log_records
        metrics_init(self, listener_routes, sum(len(pools) for _, pools in splits))
        splits_init(self, splits)
        mirrors_init(self, n_mirrors)
        cdef uint32_t first = 0
        cdef uint64_t table_off = <uint64_t><size_t>(self.region_addr("maglev_tables") - self.base)
        cdef shm_pool *p
        for i, (name, cap, algorithm, table_size, hash_key, balance) in enumerate(pools):
            p = self._pool(i)
            p.first_slot = first
            p.capacity = cap
            p.algorithm = ALGORITHMS[algorithm]
            # only maglev picks by a key: other pools hash nothing per connection
            p.hash_key = HASH_KEYS.get(hash_key, HK_NONE) if algorithm == "maglev" else HK_NONE
            p.balance_milli = <uint32_t>(balance * 1000 + 0.5) if balance > 1 else 0  # half up
            if algorithm == "maglev":
                p.table_size = table_size
                p.table_off = table_off
                memset(self.base + p.table_off, 0xff, 2 * table_size * sizeof(uint16_t))
                table_off = _line(table_off + 2 * table_size * sizeof(uint16_t))
            bname = name.encode()[:39]
            memcpy(p.name, <char *>bname, len(bname))
            first += cap
        # magic last: a reader that attaches mid-creation sees no valid region
        lb_fence_release()
        h.magic_hi = LB_SHM_MAGIC_HI
        lb_release_u32(&h.magic_lo, LB_SHM_MAGIC_LO)
        return self

    @staticmethod
    def attach(str path):
        cdef bytes bpath = path.encode()
        cdef int fd = open(bpath, O_RDWR | O_CLOEXEC)
        if fd < 0:
            raise OSError(errno, "cannot open shared memory", path)
        cdef size_t size = _os.fstat(fd).st_size
        cdef Shm self = Shm._map(fd, size, path)
        close(fd)
        h = self.hdr
        if (size < sizeof(shm_header) or h.magic_lo != LB_SHM_MAGIC_LO or h.magic_hi != LB_SHM_MAGIC_HI
                or h.version != LB_SHM_VERSION or h.total_size != size):
            raise ValueError(f"{path}: not an lb shared-memory region of layout {LB_SHM_VERSION}")
        self._find_regions()
        return self

    @staticmethod
    cdef Shm _map(int fd, size_t size, str path):
        cdef void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, "cannot map shared memory", path)
        cdef Shm self = Shm.__new__(Shm)
        self.base = <char *>p
        self.size = size
        self.path = path
        self.hdr = <shm_header *>p
        return self

    cdef char *region_addr(self, str name) except NULL:
        """Where a region of the directory starts; ValueError when it is missing
        or does not fit the mapping."""
        cdef shm_header *h = self.hdr
        cdef bytes bname = name.encode()
        cdef uint32_t i
        for i in range(min(h.n_regions, LB_MAX_REGIONS)):
            if h.regions[i].name[:LB_REGION_NAME_LEN].split(b"\0", 1)[0] == bname:
                if h.regions[i].off + h.regions[i].size > h.total_size:
                    raise ValueError(f"{self.path}: region {name!r} lies beyond the mapping")
                return self.base + h.regions[i].off
        raise ValueError(f"{self.path}: no region {name!r}")

    cdef int _find_regions(self) except -1:
        self.pools = <shm_pool *>self.region_addr("pools")
        self.backends = <shm_backend *>self.region_addr("backends")
        self.wstats = <shm_worker_stats *>self.region_addr("worker_stats")
        self.bstats = <shm_backend_stats *>self.region_addr("backend_stats")
        self.pstats = <shm_pool_stats *>self.region_addr("pool_stats")
        self.tickets = <shm_tls_tickets *>self.region_addr("tls_tickets")
        self.acl_head = <shm_acl_head *>self.region_addr("acls")
        self.acls = <shm_acl *>(<char *>self.acl_head + sizeof(shm_acl_head))
        self.acl_stats = <uint64_t *>self.region_addr("acl_stats")
        self.lim_head = <shm_limits_head *>self.region_addr("limits")
        self.lims = <shm_limit *>(<char *>self.lim_head + sizeof(shm_limits_head))
        self.lim_stats = <shm_limit_stats *>self.region_addr("limit_stats")
        self.auth_head = <shm_auth_head *>self.region_addr("auth_keys")
        self.auths = <shm_auth *>(<char *>self.auth_head + sizeof(shm_auth_head))
        self.auth_stats = <shm_auth_stats *>self.region_addr("auth_stats")
        self.lstats = <shm_listener_stats *>self.region_addr("listener_stats")
        return 0

    cdef int _acls_init(self, acls, uint32_t n_rules, uint32_t n_rows) except -1:
        cdef shm_acl_head *head = self.acl_head
        cdef uint64_t halves = <uint64_t><size_t>(<char *>self.acls - self.base) + _line(
            sizeof(shm_acl_head) + len(acls) * sizeof(shm_acl)) - sizeof(shm_acl_head)
        head.n_acls = len(acls)
        head.n_rules = n_rules
        head.rule_stride = _rule_stride(n_rules)
        head.half_size = ACL_HALF_SIZE
        for i, name in enumerate(acls):
            bname = name.encode()
            if len(bname) >= 64:
                raise ValueError(f"ACL name longer than 63 bytes: {name!r}")
            memcpy(self.acls[i].name, <char *>bname, len(bname))
            self.acls[i].off = halves + <uint64_t>i * 2 * ACL_HALF_SIZE
        return 0

    cdef shm_acl *_acl(self, uint32_t i) except NULL:
        if i >= self.acl_head.n_acls:
            raise IndexError(f"ACL index {i} out of range")
        return self.acls + i

    # -- ACLs (tables: AclSet.publish; writer of the counters: each worker, its row) --
    def acl_names(self):
        return [self.acls[i].name[:64].split(b"\0", 1)[0].decode() for i in range(self.acl_head.n_acls)]

    def acl_generation(self, uint32_t i):
        return lb_acquire_u32(&self._acl(i).gen)

    def acl_rule_counts(self):
        """Every rule's decisions, summed over the worker rows."""
        cdef shm_acl_head *head = self.acl_head
        cdef uint32_t rule, row
        cdef uint64_t total
        out = []
        for rule in range(head.n_rules):
            total = 0
            for row in range(self.hdr.n_rows):
                total += lb_load_u64(&self.acl_stats[<uint64_t>row * head.rule_stride + rule])
            out.append(total)
        return out

    def add_carried_rule(self, uint32_t row, uint32_t rule, uint64_t count):
        """Add an older generation's decisions to a row no worker writes (a reload)."""
        if row >= self.hdr.n_rows or rule >= self.acl_head.n_rules:
            raise IndexError(f"row {row} or rule {rule} out of range")
        lb_add_u64(&self.acl_stats[<uint64_t>row * self.acl_head.rule_stride + rule], count)

    # -- rate limits (tables: the workers, limits.pxi; descriptors: the supervisor, here) --
    cdef int _limits_init(self, limits, uint32_t n_rows) except -1:
        cdef shm_limits_head *head = self.lim_head
        cdef shm_limit *L
        cdef uint64_t off = <uint64_t><size_t>(<char *>head - self.base) + _line(
            sizeof(shm_limits_head) + len(limits) * sizeof(shm_limit))
        head.n_limits = len(limits)
        head.n_rows = n_rows
        for i, spec in enumerate(limits):
            L = self.lims + <uint32_t>i
            cap = spec["capacity"]
            if cap < LIMIT_PROBE or cap & (cap - 1):
                raise ValueError(f"limit {spec['name']!r}: capacity {cap} is not a power of two >= {LIMIT_PROBE}")
            bname = spec["name"].encode()
            bkey = spec["key_name"].encode()
            if len(bname) >= 64 or len(bkey) >= 64:
                raise ValueError(f"limit {spec['name']!r}: name or key name longer than 63 bytes")
            memcpy(L.name, <char *>bname, len(bname))
            memcpy(L.key_name, <char *>bkey, len(bkey))
            L.key_kind = spec["key_kind"]
            L.prefix4 = spec["prefix4"]
            L.prefix6 = spec["prefix6"]
            L.flags = spec["flags"]
            L.concurrent = spec["concurrent"]
            L.capacity = cap
            L.rate = spec["rate"]
            L.burst = spec["burst"]
            L.period_ns = spec["period_ns"] if spec["rate"] else 1000000000
            L.emission_ns = spec["period_ns"] // spec["rate"] if spec["rate"] else 0
            L.tolerance_ns = L.emission_ns * L.burst
            # a reload keeps the seed, so that the keys carried over hash alike
            L.seed = spec.get("seed") or int.from_bytes(_os.urandom(8), "little")
            L.entries_off = off
            L.conc_off = off + _line(cap * sizeof(shm_limit_entry)) if L.concurrent else 0
            off += _limit_table_bytes(cap, L.concurrent, n_rows)
        return 0

    cdef shm_limit *_limit(self, uint32_t i) except NULL:
        if i >= self.lim_head.n_limits:
            raise IndexError(f"limit index {i} out of range")
        return self.lims + i

    def limit_names(self):
        return [self.lims[i].name[:64].split(b"\0", 1)[0].decode() for i in range(self.lim_head.n_limits)]

    def limit_seed(self, uint32_t i):
        return self._limit(i).seed

    def limit_info(self, uint32_t i):
        """What the region holds of limit i: its settings as the workers use them."""
        cdef shm_limit *L = self._limit(i)
        return {"name": L.name[:64].split(b"\0", 1)[0].decode(), "capacity": L.capacity, "rate": L.rate,
                "burst": L.burst, "period_ns": L.period_ns, "emission_ns": L.emission_ns,
                "tolerance_ns": L.tolerance_ns, "concurrent": L.concurrent,
                "dry_run": bool(L.flags & LIMIT_F_DRY_RUN), "refuse_new": bool(L.flags & LIMIT_F_REFUSE_NEW)}

    def limit_counts(self, uint32_t i):
        """Limit i's decisions, summed over the worker rows."""
        self._limit(i)
        cdef shm_limit_stats *st
        out = dict(admitted=0, refused_rate=0, refused_concurrent=0, dry_run=0, unkeyed=0, table_full=0, evicted=0)
        for row in range(self.hdr.n_rows):
            st = self.lim_stats + <uint64_t>row * self.lim_head.n_limits + i
            out["admitted"] += lb_load_u64(&st.admitted)
            out["refused_rate"] += lb_load_u64(&st.refused_rate)
            out["refused_concurrent"] += lb_load_u64(&st.refused_concurrent)
            out["dry_run"] += lb_load_u64(&st.dry_run)
            out["unkeyed"] += lb_load_u64(&st.unkeyed)
            out["table_full"] += lb_load_u64(&st.table_full)
            out["evicted"] += lb_load_u64(&st.evicted)
        return out

    def add_carried_limit(self, uint32_t row, uint32_t i, counts):
        """Add an older generation's decisions to a row no worker writes (a reload)."""
        self._limit(i)
        if row >= self.hdr.n_rows:
            raise IndexError(f"row {row} out of range")
        cdef shm_limit_stats *st = self.lim_stats + <uint64_t>row * self.lim_head.n_limits + i
        lb_add_u64(&st.admitted, counts.get("admitted", 0))
        lb_add_u64(&st.refused_rate, counts.get("refused_rate", 0))
        lb_add_u64(&st.refused_concurrent, counts.get("refused_concurrent", 0))
        lb_add_u64(&st.dry_run, counts.get("dry_run", 0))
        lb_add_u64(&st.unkeyed, counts.get("unkeyed", 0))
        lb_add_u64(&st.table_full, counts.get("table_full", 0))
        lb_add_u64(&st.evicted, counts.get("evicted", 0))

    def limit_keys(self, uint32_t i, now_ns_=None):
        """Every key limit i tracks that is active: requests seen in this period
        or the one before, a bucket not full, or requests in flight. Each:
        (kind, key bytes, requests per period now, TAT - now in ns, in flight,
        refused); kind 4 or 6 is an address, 0 the first bytes of a value."""
        cdef shm_limit *L = self._limit(i)
        cdef shm_limit_entry *e = lim_entries(self.base, L)
        cdef uint64_t now = now_ns_ if now_ns_ is not None else now_ns()
        cdef uint64_t j, wd, p = now // L.period_ns, wp, cur, prev, tat
        cdef uint32_t rows = self.lim_head.n_rows, inflight
        cdef double frac = <double>(now % L.period_ns) / L.period_ns, rate
        cdef _Resident res = _Resident.of(<char *>e, L.capacity * sizeof(shm_limit_entry))
        out = []
        for j in range(L.capacity):
            if not res.has(&e[j], sizeof(shm_limit_entry)) or lb_acquire_u64(&e[j].key) == 0:
                continue
            wd = lb_load_u64(&e[j].window)
            wp = wd >> 40
            cur = (wd >> 20) & 0xfffff
            prev = wd & 0xfffff
            # a sliding window: this period's requests, and the part of the last
            # period's that the window still covers
            if wd == 0:
                rate = 0
            elif wp == (p & 0xffffff):
                rate = cur + prev * (1.0 - frac)
            elif ((wp + 1) & 0xffffff) == (p & 0xffffff):
                rate = cur * (1.0 - frac)
            else:
                rate = 0
            tat = lb_load_u64(&e[j].tat)
            inflight = lim_in_flight(lim_conc(self.base, L, j, rows), rows) if L.conc_off else 0
            if rate == 0 and tat <= now and inflight == 0:
                continue
            out.append((e[j].text_kind, e[j].text[:min(e[j].text_len, LIMIT_TEXT_MAX)], rate,
                        tat - now if tat > now else 0, inflight, lb_load_u32(&e[j].refused)))
        return out

    def limits_release_row(self, uint32_t row):
        """A worker of this row is gone (reaped): its requests in flight died
        with it, and a lock it held must not outlive it. Only the supervisor
        calls this, and only once the row's writer is reaped."""
        cdef shm_limit *L
        cdef shm_limit_entry *e
        cdef uint64_t j
        cdef uint32_t i, rows = self.lim_head.n_rows
        cdef uint32_t freed = 0
        cdef uint32_t *counts
        cdef _Resident res, cres = None
        if row >= rows:
            raise IndexError(f"row {row} out of range")
        for i in range(self.lim_head.n_limits):
            L = self.lims + i
            e = lim_entries(self.base, L)
            res = _Resident.of(<char *>e, L.capacity * sizeof(shm_limit_entry))
            if L.conc_off:
                cres = _Resident.of(<char *>lim_conc(self.base, L, 0, rows), L.capacity * rows * sizeof(uint32_t))
            for j in range(L.capacity):
                if not res.has(&e[j], sizeof(shm_limit_entry)):
                    continue         # no key ever here: no count, no lock
                if L.conc_off:
                    counts = lim_conc(self.base, L, j, rows)
                    if cres.has(counts, rows * sizeof(uint32_t)) and counts[row]:
                        freed += counts[row]
                        lb_store_u32(counts + row, 0)
                if lb_load_u32(&e[j].lock) == row + 1:
                    lim_unlock(&e[j].lock)
        return freed

    def limit_take(self, uint32_t i, bytes key, uint32_t row, uint64_t now):
        """One decision of limit i for `key` (hashed as a header value) by worker
        row `row` at CLOCK_MONOTONIC `now` (ns), as a worker makes it: for tests
        and tools. Returns (decision, slot holding a count or -1, wait ns, TAT - now)."""
        cdef shm_limit *L = self._limit(i)
        cdef lim_key k
        cdef int64_t slot
        cdef uint64_t wait, ahead
        if row >= self.lim_head.n_rows:
            raise IndexError(f"row {row} out of range")
        k.kind = 0
        k.len = min(len(key), LIMIT_TEXT_MAX)
        memcpy(k.text, <char *>key, k.len)
        lim_hash(L, &k, <const uint8_t *><char *>key, len(key))
        rc = lim_decide(self.base, L, self.lim_stats + <uint64_t>row * self.lim_head.n_limits + i,
                        self.lim_head.n_rows, row, &k, now, &slot, &wait, &ahead)
        return LIMIT_DECISIONS[rc], slot, wait, ahead

    def limit_give(self, uint32_t i, uint64_t slot, uint32_t row):
        """Give back a count limit_take took."""
        cdef shm_limit *L = self._limit(i)
        if not L.conc_off or slot >= L.capacity or row >= self.lim_head.n_rows:
            raise IndexError("no such count")
        lim_give(self.base, L, self.lim_head.n_rows, row, slot)

    def limit_carry(self, uint32_t i, Shm old, uint32_t oi):
        """At a reload: the keys of limit oi of the old region go on in limit i
        of this one (same seed, so same hashes): their buckets' levels, not
        their requests in flight (those stay counted in the old region, whose
        workers finish them). Returns the keys carried."""
        cdef shm_limit *L = self._limit(i)
        cdef shm_limit *O = old._limit(oi)
        cdef shm_limit_entry *oe = lim_entries(old.base, O)
        cdef shm_limit_entry *en
        cdef shm_limit_stats scratch
        cdef lim_key k
        cdef uint64_t j, now = now_ns()
        cdef int64_t slot
        cdef uint32_t n = 0
        cdef _Resident res = _Resident.of(<char *>oe, O.capacity * sizeof(shm_limit_entry))
        if L.seed != O.seed:
            raise ValueError("limit tables of different seeds")
        for j in range(O.capacity):
            if not res.has(&oe[j], sizeof(shm_limit_entry)):
                continue
            k.hash = lb_acquire_u64(&oe[j].key)
            if k.hash == 0 or lb_load_u64(&oe[j].tat) <= now:
                continue             # a full bucket is what a new key gets anyway
            k.kind = oe[j].text_kind
            k.len = min(oe[j].text_len, LIMIT_TEXT_MAX)
            memcpy(k.text, oe[j].text, k.len)
            slot = lim_slot(self.base, L, self.lim_head.n_rows, &k, now, self.lim_head.n_rows, &scratch)
            if slot < 0:
                continue
            en = lim_entries(self.base, L) + slot
            lb_store_u64(&en.tat, lb_load_u64(&oe[j].tat))
            lb_store_u64(&en.window, lb_load_u64(&oe[j].window))
            lb_store_u32(&en.refused, lb_load_u32(&oe[j].refused))
            n += 1
        return n

    # -- API keys (tables: the supervisor, here; lookups: the workers, auth.pxi) --
    cdef int _auths_init(self, auths) except -1:
        cdef uint64_t off = <uint64_t><size_t>(<char *>self.auth_head - self.base) + _line(
            sizeof(shm_auth_head) + len(auths) * sizeof(shm_auth))
        self.auth_head.n_auths = len(auths)
        for i, name in enumerate(auths):
            bname = name.encode()
            if len(bname) >= 64:
                raise ValueError(f"auth name longer than 63 bytes: {name!r}")
            memcpy(self.auths[<uint32_t>i].name, <char *>bname, len(bname))
            self.auths[<uint32_t>i].off = off + <uint64_t>i * 2 * AUTH_HALF_SLOTS * sizeof(shm_auth_key)
        return 0

    cdef shm_auth *_auth(self, uint32_t i) except NULL:
        if i >= self.auth_head.n_auths:
            raise IndexError(f"auth index {i} out of range")
        return self.auths + i

    def auth_names(self):
        return [self.auths[i].name[:64].split(b"\0", 1)[0].decode() for i in range(self.auth_head.n_auths)]

    def auth_publish(self, uint32_t i, keys):
        """Make keys ((sha256 bytes, identity str) pairs) the table of auth i:
        written into the half not in use, then flipped. In force at the
        workers' next lookup."""
        cdef shm_auth *a = self._auth(i)
        cdef uint32_t half = (a.gen + 1) & 1, n = len(keys), slots = 1, j
        cdef shm_auth_key *t = <shm_auth_key *>(self.base + a.off) + <uint64_t>half * AUTH_HALF_SLOTS
        if n > AUTH_MAX_KEYS:
            raise ValueError(f"at most {AUTH_MAX_KEYS} keys")
        while slots < 2 * n:
            slots *= 2
        memset(t, 0, slots * sizeof(shm_auth_key))
        for digest, identity in keys:
            bid = identity.encode()
            if len(digest) != 32 or not 0 < len(bid) <= AUTH_ID_MAX:
                raise ValueError(f"a key is a SHA-256 (32 bytes) and an identity of 1..{AUTH_ID_MAX} bytes")
            j = <uint32_t>(int.from_bytes(digest[:8], "little") & (slots - 1))
            while t[j].id_len:
                if memcmp(t[j].sha256, <char *>digest, 32) == 0:
                    break
                j = (j + 1) & (slots - 1)
            memcpy(t[j].sha256, <char *>digest, 32)
            memcpy(t[j].id, <char *>bid, len(bid))
            t[j].id_len = len(bid)
        a.n_slots[half] = slots if n else 0
        a.n_keys[half] = n
        lb_release_u32(&a.gen, a.gen + 1)

    def auth_publish_blob(self, uint32_t i, bytes blob, uint32_t n_keys):
        """Make blob (a JWT auth's packed keys, lb/config/jwks.py) the keys of
        auth i: written into the half not in use, then flipped. The workers
        rebuild their keys at their next token."""
        cdef shm_auth *a = self._auth(i)
        cdef uint32_t half = (a.gen + 1) & 1
        if len(blob) > JWT_BLOB_MAX:
            raise ValueError(f"at most {JWT_BLOB_MAX} bytes of keys")
        memcpy(self.base + a.off + <uint64_t>half * AUTH_HALF_SLOTS * sizeof(shm_auth_key), <char *>blob, len(blob))
        a.n_slots[half] = len(blob)
        a.n_keys[half] = n_keys
        lb_release_u32(&a.gen, a.gen + 1)

    def auth_lookup(self, uint32_t i, bytes key):
        """The identity of key in auth i as the workers see it, or None."""
        cdef char out[AUTH_ID_MAX]
        cdef int n = auth_find(self.base, self._auth(i), <const uint8_t *><char *>key, len(key), out)
        return out[:n].decode() if n > 0 else None

    def auth_counts(self, uint32_t i):
        self._auth(i)
        cdef shm_auth_stats *st
        out = {"ok": 0, "missing": 0, "invalid": 0, "verified": 0, "cached": 0, "busy": 0}
        for row in range(self.hdr.n_rows):
            st = self.auth_stats + <uint64_t>row * self.auth_head.n_auths + i
            out["ok"] += lb_load_u64(&st.ok)
            out["missing"] += lb_load_u64(&st.missing)
            out["invalid"] += lb_load_u64(&st.invalid)
            out["verified"] += lb_load_u64(&st.verified)
            out["cached"] += lb_load_u64(&st.cached)
            out["busy"] += lb_load_u64(&st.busy)
        return out

    def add_carried_auth(self, uint32_t row, uint32_t i, counts):
        self._auth(i)
        if row >= self.hdr.n_rows:
            raise IndexError(f"row {row} out of range")
        cdef shm_auth_stats *st = self.auth_stats + <uint64_t>row * self.auth_head.n_auths + i
        lb_add_u64(&st.ok, counts.get("ok", 0))
        lb_add_u64(&st.missing, counts.get("missing", 0))
        lb_add_u64(&st.invalid, counts.get("invalid", 0))
        lb_add_u64(&st.verified, counts.get("verified", 0))
        lb_add_u64(&st.cached, counts.get("cached", 0))
        lb_add_u64(&st.busy, counts.get("busy", 0))

    def regions(self):
        """The directory: (name, offset, size) of each region, in layout order."""
        h = self.hdr
        return [(h.regions[i].name[:LB_REGION_NAME_LEN].split(b"\0", 1)[0].decode(), h.regions[i].off,
                 h.regions[i].size) for i in range(min(h.n_regions, LB_MAX_REGIONS))]

    def unlink(self):
        try:
            _os.unlink(self.path)
        except FileNotFoundError:
            pass

    # -- typed views (C only) --
    cdef shm_pool *_pool(self, uint32_t i) except NULL:
        if i >= self.hdr.n_pools:
            raise IndexError(f"pool index {i} out of range")
        return self.pools + i

    cdef shm_backend *_backend(self, uint32_t pool, uint32_t index) except NULL:
        cdef shm_pool *p = self._pool(pool)
        if index >= p.capacity:
            raise IndexError(f"backend index {index} beyond pool capacity {p.capacity}")
        return self.backends + p.first_slot + index

    cdef shm_worker_stats *_wstats(self, uint32_t row) except NULL:
        if row >= self.hdr.n_rows:
            raise IndexError(f"worker row {row} out of range")
        return self.wstats + row

    cdef shm_backend_stats *_bstats(self, uint32_t row, uint32_t slot) noexcept:
        return self.bstats + <uint64_t>row * self.hdr.n_slots + slot

    # -- layout facts --
    @property
    def n_pools(self):
        return self.hdr.n_pools

    @property
    def n_rows(self):
        return self.hdr.n_rows

    @property
    def checks_total(self):
        return lb_load_u64(&self.hdr.checks_total)

    def pool_capacity(self, uint32_t pool):
        return self._pool(pool).capacity

    def pool_generation(self, uint32_t pool):
        return lb_load_u32(&self._pool(pool).generation)

    # -- writer: supervisor --
    def set_backend(self, uint32_t pool, uint32_t index, str host, int port, str name,
                    int weight, bint backup=False):
        """Publish a backend's address and name (seqlock), then make it live."""
        cdef shm_pool *p = self._pool(pool)
        cdef shm_backend *b = self._backend(pool, index)
        family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
        cdef bytes packed = _socket.inet_pton(family, host)
        cdef bytes bname = name.encode()
        if len(bname) >= LB_NAME_LEN:
            raise ValueError(f"backend name longer than {LB_NAME_LEN - 1} bytes: {name!r}")
        if not 0 <= weight <= 1000:
            raise ValueError(f"weight {weight} out of range 0..1000")
        cdef uint32_t seq = b.seq
        lb_store_u32(&b.seq, seq + 1)
        lb_fence_release()
        b.family = family
        b.port = port
        memset(b.addr, 0, 16)
        memcpy(b.addr, <char *>packed, len(packed))
        memset(b.name, 0, LB_NAME_LEN)
        memcpy(b.name, <char *>bname, len(bname))
        lb_release_u32(&b.seq, seq + 2)
        lb_store_u32(&b.weight, weight)
        lb_store_u32(&b.eff_weight, weight)
        lb_store_u8(&b.backup, backup)
        if not b.in_use:
            lb_store_u8(&b.admin, ADMIN_READY)
            lb_store_u8(&b.health, HEALTH_UP)
        lb_fence_release()
        lb_store_u8(&b.in_use, 1)
        if index >= p.n_slots:
            lb_store_u32(&p.n_slots, index + 1)
        self._bump(p)

    def clear_backend(self, uint32_t pool, uint32_t index):
        cdef shm_backend *b = self._backend(pool, index)
        lb_store_u8(&b.in_use, 0)
        self._bump(self._pool(pool))

    def set_weight(self, uint32_t pool, uint32_t index, int weight, eff_weight=None):
        if not 0 <= weight <= 1000:
            raise ValueError(f"weight {weight} out of range 0..1000")
        cdef shm_backend *b = self._backend(pool, index)
        lb_store_u32(&b.weight, weight)
        lb_store_u32(&b.eff_weight, weight if eff_weight is None else eff_weight)
        self._bump(self._pool(pool))

    def set_admin(self, uint32_t pool, uint32_t index, str state):
        lb_store_u8(&self._backend(pool, index).admin, ADMIN_STATES[state])
        self._bump(self._pool(pool))

    # -- writer: checker --
    def set_health(self, uint32_t pool, uint32_t index, str state):
        lb_store_u8(&self._backend(pool, index).health, HEALTH_STATES[state])
        self._bump(self._pool(pool))

    cdef void _bump(self, shm_pool *p) noexcept:
        lb_release_u32(&p.generation, lb_load_u32(&p.generation) + 1)

    # -- readers --
    def backend(self, uint32_t pool, uint32_t index):
        cdef shm_backend *b = self._backend(pool, index)
        cdef uint32_t s1
        while True:
            s1 = lb_acquire_u32(&b.seq)
            if s1 & 1:
                continue
            family, port = b.family, b.port
            raw = bytes(b.addr[:16])
            name = b.name[:LB_NAME_LEN].split(b"\0", 1)[0].decode()
            lb_fence_acquire()
            if lb_load_u32(&b.seq) == s1:
                break
        host = _socket.inet_ntop(family, raw[:4] if family == _socket.AF_INET else raw) if family else ""
        return {
            "in_use": bool(lb_load_u8(&b.in_use)), "name": name, "host": host, "port": port,
            "weight": lb_load_u32(&b.weight), "eff_weight": lb_load_u32(&b.eff_weight),
            "backup": bool(lb_load_u8(&b.backup)),
            "admin": _ADMIN_NAMES[lb_load_u8(&b.admin)],
            "health": _HEALTH_NAMES[lb_load_u8(&b.health)],
            "down_reason": b.down_reason, "last_result": b.last_result,
            "last_status": b.last_status, "last_errno": b.last_errno,
            "last_latency_us": b.last_latency_us, "check_oks": b.check_oks,
            "check_fails": b.check_fails, "eject_count": b.eject_count,
            "up_since_ms": lb_load_u64(&b.up_since_ms),
            "eject_until_ms": lb_load_u64(&b.eject_until_ms),
        }

    def backend_stats(self, uint32_t pool, uint32_t index):
        """Counters of one backend summed over every worker row."""
        cdef uint32_t slot = self._pool(pool).first_slot + index
        self._backend(pool, index)
        cdef shm_backend_stats *s
        out = dict(active=0, total=0, bytes_in=0, bytes_out=0, connect_errors=0,
                   connect_timeouts=0, consecutive_failures=0)
        for row in range(self.hdr.n_rows):
            s = self._bstats(row, slot)
            out["active"] += lb_load_i64(&s.active)
            out["total"] += lb_load_u64(&s.total)
            out["bytes_in"] += lb_load_u64(&s.bytes_in)
            out["bytes_out"] += lb_load_u64(&s.bytes_out)
            out["connect_errors"] += lb_load_u64(&s.connect_errors)
            out["connect_timeouts"] += lb_load_u64(&s.connect_timeouts)
            out["consecutive_failures"] = max(out["consecutive_failures"],
                                              lb_load_u64(&s.consecutive_failures))
        return out

    def backend_columns(self, uint32_t pool, indices, uint64_t now_ms):
        """What the metrics endpoint shows of many backends of a pool, one list
        per field (a dict per backend costs more than the scrape's text):
        up, admin (ADMIN_*), eff_weight, ejected, check_ok, check_us, and the
        active, connect_errors and connect_timeouts summed over the rows."""
        cdef shm_pool *p = self._pool(pool)
        cdef shm_backend *b
        cdef shm_backend_stats *st
        cdef uint32_t idx, row
        cdef int64_t active
        cdef uint64_t errs, touts
        cols = {k: [] for k in ("up", "admin", "eff_weight", "ejected", "check_ok", "check_us", "active",
                                "connect_errors", "connect_timeouts", "checks", "checks_failed", "ejections")}
        for i in indices:
            idx = i
            if idx >= p.capacity:
                raise IndexError(f"backend index {idx} beyond pool capacity {p.capacity}")
            b = self.backends + p.first_slot + idx
            cols["up"].append(1 if lb_load_u8(&b.health) == HEALTH_UP else 0)
            cols["admin"].append(lb_load_u8(&b.admin))
            cols["eff_weight"].append(lb_load_u32(&b.eff_weight))
            cols["ejected"].append(1 if lb_load_u8(&b.health) == HEALTH_DOWN and lb_load_u64(&b.eject_until_ms) > now_ms else 0)
            cols["check_ok"].append(1 if b.last_result == 0 else 0)
            cols["check_us"].append(b.last_latency_us)
            cols["checks"].append(lb_load_u64(&b.checks))
            cols["checks_failed"].append(lb_load_u64(&b.checks_failed))
            cols["ejections"].append(lb_load_u64(&b.ejections))
            active = 0
            errs = touts = 0
            for row in range(self.hdr.n_rows):
                st = self._bstats(row, p.first_slot + idx)
                active += lb_load_i64(&st.active)
                errs += lb_load_u64(&st.connect_errors)
                touts += lb_load_u64(&st.connect_timeouts)
            cols["active"].append(max(0, active))
            cols["connect_errors"].append(errs)
            cols["connect_timeouts"].append(touts)
        return cols

    def worker_stats(self, uint32_t row):
        cdef shm_worker_stats *s = self._wstats(row)
        return {
            "pid": lb_load_u64(&s.pid), "heartbeat_ms": lb_load_u64(&s.heartbeat_ms),
            "accepted": lb_load_u64(&s.accepted), "active": lb_load_i64(&s.active),
            "fds": lb_load_i64(&s.fds), "accept_paused": lb_load_u64(&s.accept_paused),
            "paused_now": bool(lb_load_u64(&s.paused_now)),
            "no_backend": lb_load_u64(&s.no_backend),
            "bytes_in": lb_load_u64(&s.bytes_in), "bytes_out": lb_load_u64(&s.bytes_out),
            "idle_timeouts": lb_load_u64(&s.idle_timeouts),
            "splice_bytes": lb_load_u64(&s.splice_bytes),
            "stopping": bool(lb_load_u64(&s.stopping)),
            "http_requests": lb_load_u64(&s.http_requests),
            "http_errors": lb_load_u64(&s.http_errors),
            "http_retries": lb_load_u64(&s.http_retries),
            "tls_handshakes": lb_load_u64(&s.tls_handshakes),
            "tls_resumed": lb_load_u64(&s.tls_resumed),
            "tls_record_layer": lb_load_u64(&s.tls_record_layer),
            "tls_bad_records": lb_load_u64(&s.tls_bad_records),
            "h2_connections": lb_load_u64(&s.h2_connections),
            "h2_streams": lb_load_u64(&s.h2_streams),
            "h2_goaways": lb_load_u64(&s.h2_goaways),
            "h2_refused": lb_load_u64(&s.h2_refused),
            "accept_limited": lb_load_u64(&s.accept_limited),
            "accept_fd_errors": lb_load_u64(&s.accept_fd_errors),
            "sockmap_pairs": lb_load_u64(&s.sockmap_pairs),
            "sockmap_fallbacks": lb_load_u64(&s.sockmap_fallbacks),
            "sockmap_overruns": lb_load_u64(&s.sockmap_overruns),
            "tls_failed": {
                "timeout": lb_load_u64(&s.tls_fail_timeout),
                "plain_http": lb_load_u64(&s.tls_fail_plain_http),
                "negotiation": lb_load_u64(&s.tls_fail_negotiation),
                "client_cert": lb_load_u64(&s.tls_fail_client_cert),
                "protocol": lb_load_u64(&s.tls_fail_protocol),
                "closed": lb_load_u64(&s.tls_fail_closed),
            },
        }

    def listener_stats(self, uint32_t index):
        """Counters of the config's listener index, summed over every worker row."""
        if index >= self.hdr.n_listeners:
            raise IndexError(f"listener index {index} out of range")
        cdef shm_listener_stats *ls
        out = dict(active=0, accepted=0, limited=0)
        for row in range(self.hdr.n_rows):
            ls = self.lstats + <uint64_t>row * self.hdr.n_listeners + index
            out["active"] += lb_load_i64(&ls.active)
            out["accepted"] += lb_load_u64(&ls.accepted)
            out["limited"] += lb_load_u64(&ls.limited)
        return out

    @property
    def n_listeners(self):
        return self.hdr.n_listeners

    def log_stats(self):
        """The access logs' counters: ring size, records dropped (by row and in
        all), lines written and lost by the logger, and the logger's pid."""
        cdef shm_log_head *lh = <shm_log_head *>self.region_addr("log_rings")
        cdef shm_log_ring *ring
        cdef uint32_t row
        drops = []
        pending = 0
        if lh.n_records:
            for row in range(self.hdr.n_rows):
                ring = <shm_log_ring *>(<char *>lh + sizeof(shm_log_head) + <uint64_t>row * log_ring_bytes(lh.n_records))
                drops.append(lb_load_u64(&ring.drops))
                pending += lb_load_u64(&ring.head) - lb_load_u64(&ring.tail)
        return {"ring_records": lh.n_records, "drops": sum(drops), "drops_by_row": drops, "pending": pending,
                "lines": lb_load_u64(&lh.lines), "write_errors": lb_load_u64(&lh.write_errors),
                "logger_pid": lb_load_u32(&lh.logger_pid), "reopen_requested": lb_load_u32(&lh.reopen_req),
                "reopened": lb_load_u32(&lh.reopened)}

    def log_reopen(self):
        """Ask the logger to reopen its files (logrotate); the request number,
        which log_stats()["reopened"] reaches once it has."""
        cdef shm_log_head *lh = <shm_log_head *>self.region_addr("log_rings")
        cdef uint32_t req = lh.reopen_req + 1
        lb_release_u32(&lh.reopen_req, req)
        return req

    # -- metrics (writer of the rows: each worker; of the carried row: the supervisor) --
    def metrics_layout(self):
        """The entities: (listeners, routes, pools, slots) counts, and each
        listener's first route entity."""
        cdef shm_metrics_head *mh = <shm_metrics_head *>self.region_addr("metrics")
        cdef uint32_t *route_base = <uint32_t *>(<char *>mh + sizeof(shm_metrics_head))
        return {"listeners": mh.n_listeners, "routes": mh.n_routes, "pools": mh.n_pools, "slots": mh.n_slots,
                "variants": mh.n_variants, "route_base": [route_base[i] for i in range(mh.n_listeners)]}

    def metrics_totals(self, rows=None):
        """Every entity's counters summed over the worker rows (rows: which;
        default all): METRIC_WORDS native uint64 words per entity, entities in
        layout order. Only the backend slots a pool ever used are read: a
        page of the region nobody wrote stays unallocated (tmpfs allocates a
        page on a read, too), and the rows to skip are the caller's to know
        (spare rows no worker ever had)."""
        cdef shm_metrics_head *mh = <shm_metrics_head *>self.region_addr("metrics")
        cdef uint64_t n = <uint64_t>mh.n_entities * MET_WORDS
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n * sizeof(uint64_t))
        cdef uint64_t *dst = <uint64_t *>PyBytes_AS_STRING(out)
        cdef const uint64_t *src = <const uint64_t *>(<char *>mh + metrics_entities_off(mh.n_listeners))
        cdef uint64_t i, lo, hi, r, slot_base = <uint64_t>mh.n_listeners + mh.n_routes + mh.n_pools
        cdef uint32_t k, n_rows, p
        cdef uint64_t *ranges
        row_list = list(range(self.hdr.n_rows)) if rows is None else list(rows)
        for r in row_list:
            if r >= self.hdr.n_rows:
                raise IndexError(f"row {r} out of range")
        # [lo, hi) word ranges: listeners, routes and pools, then each pool's used slots,
        # then the splits' variants
        ranges = <uint64_t *>malloc((4 + 2 * mh.n_pools) * sizeof(uint64_t))
        cdef uint32_t *row_ids = <uint32_t *>malloc(max(1, len(row_list)) * sizeof(uint32_t))
        if ranges == NULL or row_ids == NULL:
            free(ranges)
            free(row_ids)
            raise MemoryError()
        n_rows = len(row_list)
        for k in range(n_rows):
            row_ids[k] = row_list[k]
        ranges[0] = 0
        ranges[1] = slot_base * MET_WORDS
        for p in range(mh.n_pools):
            ranges[2 + 2 * p] = (slot_base + self.pools[p].first_slot) * MET_WORDS
            ranges[3 + 2 * p] = (slot_base + self.pools[p].first_slot + lb_load_u32(&self.pools[p].n_slots)) * MET_WORDS
        ranges[2 + 2 * mh.n_pools] = (slot_base + mh.n_slots) * MET_WORDS
        ranges[3 + 2 * mh.n_pools] = n
        with nogil:
            memset(dst, 0, n * sizeof(uint64_t))
            for k in range(n_rows):
                for p in range(2 + mh.n_pools):
                    lo = ranges[2 * p]
                    hi = ranges[2 * p + 1]
                    for i in range(lo, hi):
                        dst[i] += lb_load_u64(<uint64_t *>&src[<uint64_t>row_ids[k] * n + i])
        free(ranges)
        free(row_ids)
        return out

    def metrics_active(self, uint32_t entity):
        """A listener's client connections open now, summed over the rows."""
        cdef shm_metrics_head *mh = <shm_metrics_head *>self.region_addr("metrics")
        cdef shm_metrics *m = <shm_metrics *>(<char *>mh + metrics_entities_off(mh.n_listeners))
        cdef int64_t total = 0
        if entity >= mh.n_entities:
            raise IndexError(f"entity {entity} out of range")
        for row in range(self.hdr.n_rows):
            total += lb_load_i64(&m[<uint64_t>row * mh.n_entities + entity].active)
        return max(0, total)

    def metrics_add(self, uint32_t row, uint32_t entity, const uint64_t[:] words):
        """Add counts (an older generation's, or a dead worker's) to an entity
        of a row no worker writes."""
        cdef shm_metrics_head *mh = <shm_metrics_head *>self.region_addr("metrics")
        if row >= self.hdr.n_rows or entity >= mh.n_entities or words.shape[0] != MET_WORDS:
            raise IndexError(f"row {row}, entity {entity} or {words.shape[0]} words out of range")
        cdef uint64_t *dst = <uint64_t *>(<char *>mh + metrics_entities_off(mh.n_listeners)) + (
            <uint64_t>row * mh.n_entities + entity) * MET_WORDS
        cdef uint32_t i
        for i in range(MET_WORDS):
            lb_add_u64(&dst[i], words[i])

    def pool_active(self, uint32_t pool):
        """Active connections of a pool, summed over every worker row."""
        self._pool(pool)
        cdef shm_pool_stats *ps = self.pstats
        return sum(lb_load_i64(&ps[<uint64_t>row * self.hdr.n_pools + pool].active)
                   for row in range(self.hdr.n_rows))

    # -- maglev tables; writer: supervisor --
    def rebuild_table(self, uint32_t pool):
        """Build the pool's Maglev table from its usable backends into the
        inactive half, then flip: readers never lock and never see a half table."""
        cdef shm_pool *p = self._pool(pool)
        if p.table_size == 0:
            return False
        cdef uint32_t gen = lb_acquire_u32(&p.generation)
        cdef uint32_t half = (p.table_gen + 1) & 1
        cdef uint16_t *table = <uint16_t *>(self.base + p.table_off) + half * p.table_size
        cdef shm_backend *backends = self.backends + p.first_slot
        cdef mg_entry *entries = <mg_entry *>calloc(max(1, p.n_slots), sizeof(mg_entry))
        cdef uint32_t n = 0, i
        cdef uint8_t backup
        if entries == NULL:
            raise MemoryError()
        # the usable primaries; only when there is none, the usable backups
        for backup in range(2):
            for i in range(p.n_slots):
                if backend_hashable(&backends[i]) and backends[i].backup == backup:
                    entries[n].name = backends[i].name
                    entries[n].weight = lb_load_u32(&backends[i].eff_weight)
                    entries[n].id = i
                    n += 1
            if n:
                break
        with nogil:
            p.table_weight[half] = maglev_fill(entries, n, p.table_size, table)
        free(entries)
        lb_store_u32(&p.table_built_from, gen)
        lb_release_u32(&p.table_gen, p.table_gen + 1)
        return True

    def rebuild_changed(self):
        """Rebuild every Maglev table whose pool changed since its last build."""
        rebuilt = []
        for i in range(self.hdr.n_pools):
            p = self._pool(i)
            if p.table_size and (p.table_gen == 0 or
                                 lb_load_u32(&p.table_built_from) != lb_acquire_u32(&p.generation)):
                self.rebuild_table(i)
                rebuilt.append(i)
        return rebuilt

    def table(self, uint32_t pool):
        """The live Maglev table: slot offsets within the pool, -1 for empty."""
        cdef shm_pool *p = self._pool(pool)
        if p.table_size == 0:
            return []
        cdef uint16_t *t = <uint16_t *>(self.base + p.table_off) + (lb_acquire_u32(&p.table_gen) & 1) * p.table_size
        return [-1 if t[i] == TABLE_EMPTY else t[i] for i in range(p.table_size)]

    # -- TLS session ticket keys; writer: supervisor --
    def set_ticket_keys(self, keys, uint32_t current, rotated_unix_ms=0):
        """Publish the ticket keys (80 bytes each: name, AES key, HMAC key) and
        which one encrypts; readers see the old set or the new one, never a mix."""
        cdef shm_tls_tickets *t = self.tickets
        if len(keys) > TICKET_KEYS or (keys and current >= len(keys)):
            raise ValueError(f"at most {TICKET_KEYS} ticket keys, and current among them")
        for k in keys:
            if len(k) != sizeof(shm_ticket_key):
                raise ValueError(f"a ticket key is {sizeof(shm_ticket_key)} bytes, not {len(k)}")
        cdef uint32_t seq = t.seq
        lb_store_u32(&t.seq, seq + 1)
        lb_fence_release()
        memset(t.keys, 0, sizeof(t.keys))
        for i, k in enumerate(keys):
            memcpy(&t.keys[i], <char *>k, sizeof(shm_ticket_key))
        t.n = len(keys)
        t.current = current
        t.rotated_unix_ms = rotated_unix_ms
        lb_release_u32(&t.seq, seq + 2)

    def ticket_keys(self):
        """(keys, current, rotated_unix_ms), as published."""
        cdef shm_tls_tickets *t = self.tickets
        cdef uint32_t s1
        while True:
            s1 = lb_acquire_u32(&t.seq)
            if s1 & 1:
                continue
            keys = [(<char *>&t.keys[i])[:sizeof(shm_ticket_key)] for i in range(min(t.n, TICKET_KEYS))]
            current, rotated = t.current, t.rotated_unix_ms
            lb_fence_acquire()
            if lb_load_u32(&t.seq) == s1:
                return keys, current, rotated

    # -- carrying state over a reload; writer: supervisor, before the new
    #    generation's checker and workers start (the row is theirs after) --
    def copy_health(self, uint32_t pool, uint32_t index, Shm src, uint32_t src_pool, uint32_t src_index):
        """Give a backend the health state it had in another region (a reload)."""
        cdef shm_backend *b = self._backend(pool, index)
        cdef shm_backend *o = src._backend(src_pool, src_index)
        b.check_oks = o.check_oks
        b.check_fails = o.check_fails
        b.down_reason = o.down_reason
        b.eject_count = o.eject_count
        b.last_status = o.last_status
        b.last_errno = o.last_errno
        b.last_latency_us = o.last_latency_us
        b.last_result = o.last_result
        lb_store_u64(&b.up_since_ms, lb_load_u64(&o.up_since_ms))
        lb_store_u64(&b.eject_until_ms, lb_load_u64(&o.eject_until_ms))
        # counters: the checker of the new region goes on from them
        lb_store_u64(&b.checks, lb_load_u64(&o.checks))
        lb_store_u64(&b.checks_failed, lb_load_u64(&o.checks_failed))
        lb_store_u64(&b.ejections, lb_load_u64(&o.ejections))
        lb_store_u8(&b.health, lb_load_u8(&o.health))
        self._bump(self._pool(pool))

    def add_carried(self, uint32_t pool, uint32_t index, uint32_t row, totals):
        """Add counter totals (of an older generation) to a row no worker writes."""
        cdef uint32_t slot = self._pool(pool).first_slot + index
        self._backend(pool, index)
        if row >= self.hdr.n_rows:
            raise IndexError(f"row {row} out of range")
        cdef shm_backend_stats *st = self._bstats(row, slot)
        lb_add_u64(&st.total, totals.get("total", 0))
        lb_add_u64(&st.bytes_in, totals.get("bytes_in", 0))
        lb_add_u64(&st.bytes_out, totals.get("bytes_out", 0))
        lb_add_u64(&st.connect_errors, totals.get("connect_errors", 0))
        lb_add_u64(&st.connect_timeouts, totals.get("connect_timeouts", 0))

    def reset_row_gauges(self, uint32_t row):
        """After a worker died: its connections died with it, so its gauges are
        stale. Only the supervisor calls this, and only once the writer is reaped."""
        cdef shm_worker_stats *s = self._wstats(row)
        lb_store_i64(&s.active, 0)
        lb_store_i64(&s.fds, 0)
        lb_store_u64(&s.paused_now, 0)
        lb_store_u64(&s.stopping, 0)
        for slot in range(self.hdr.n_slots):
            lb_store_i64(&self._bstats(row, slot).active, 0)
        cdef shm_pool_stats *ps = self.pstats
        for pool in range(self.hdr.n_pools):
            lb_store_i64(&ps[<uint64_t>row * self.hdr.n_pools + pool].active, 0)
        cdef shm_metrics_head *mh = <shm_metrics_head *>self.region_addr("metrics")
        cdef shm_metrics *m = <shm_metrics *>(<char *>mh + metrics_entities_off(mh.n_listeners))
        for li in range(mh.n_listeners):
            lb_store_i64(&m[<uint64_t>row * mh.n_entities + li].active, 0)
        for li in range(self.hdr.n_listeners):
            lb_store_i64(&self.lstats[<uint64_t>row * self.hdr.n_listeners + li].active, 0)
