# Every C struct of the data plane, declared in one place.
#
# Part 1 is the shared-memory layout (DESIGN.md section 2). Its size and field
# order are a contract between the supervisor, the checker and every worker of
# one instance, all running this same compiled module; LB_SHM_VERSION changes
# with any edit here. Each field names its single writer.
#
# Part 2 is per-worker private state: connections, free lists, pools' runtime.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from lb.includes.socket cimport sockaddr_storage
from lb.includes.epoll cimport epoll_event

cdef enum:
    LB_SHM_MAGIC_LO = 0x4d454d53      # "SMEM"
    LB_SHM_MAGIC_HI = 0x31304c42      # "BL01"
    LB_SHM_VERSION = 1
    LB_NAME_LEN = 64
    LB_MAX_TRIES = 11                  # 1 + retries (config caps retries at 10)

# Backend admin states (writer: supervisor) and health (writer: checker).
cdef enum:
    ADMIN_READY = 0
    ADMIN_DRAIN = 1
    ADMIN_MAINT = 2
    HEALTH_UP = 0
    HEALTH_DOWN = 1

# Why a backend is down, or how its last check went (shm_backend.down_reason,
# last_result). 0 is "passed".
cdef enum:
    REASON_NONE = 0
    REASON_CONNECT = 1               # refused, reset or unreachable (last_errno says which)
    REASON_TIMEOUT = 2
    REASON_STATUS = 3                # http status outside expect_status (last_status)
    REASON_BODY = 4                  # expect_body not found
    REASON_PROTOCOL = 5              # not an HTTP response
    REASON_PASSIVE = 6               # ejected: workers' connects kept failing
    REASON_EJECTION_OVER = 7         # up again: the ejection ended (pools without active checks)

# Hash keys (shm_pool.hash_key).
cdef enum:
    HK_NONE = 0
    HK_SOURCE_IP = 1
    HK_SOURCE_ADDR = 2

cdef enum:
    TABLE_EMPTY = 0xffff

# Selection algorithms; the numbers are stored in shm_pool.algorithm.
cdef enum:
    ALG_ROUNDROBIN = 0
    ALG_LEASTCONN = 1
    ALG_P2C = 2
    ALG_RANDOM = 3
    ALG_MAGLEV = 4


# ---- Part 1: shared memory -------------------------------------------------

cdef struct shm_header:              # writer: supervisor, once, before fork
    uint32_t magic_lo
    uint32_t magic_hi
    uint32_t version
    uint32_t header_size
    uint64_t total_size
    uint32_t n_pools
    uint32_t n_slots                 # backend slots, all pools together
    uint32_t n_rows                  # worker counter rows
    uint32_t supervisor_pid
    uint64_t pools_off
    uint64_t backends_off
    uint64_t wstats_off
    uint64_t bstats_off
    uint64_t created_unix_ms
    uint64_t pstats_off
    uint64_t tables_off
    uint64_t checks_total            # writer: checker; checks completed, all backends
    uint8_t _pad[152]

cdef struct shm_pool:                # 128 bytes; writer: supervisor (generation: any writer of a backend field)
    uint32_t first_slot              # this pool's backends are slots [first_slot, first_slot + capacity)
    uint32_t capacity                # at most 65535: table entries are uint16 slot offsets
    uint32_t n_slots                 # slots ever used (high-water); unused ones have in_use = 0
    uint32_t algorithm
    uint32_t generation              # bumped on any change of a backend's set, weight or state
    uint32_t hash_key                # HK_*
    uint32_t balance_milli           # bounded loads: round(balance_factor * 1000); 0 = off
    uint32_t table_size              # maglev M (prime); 0 for other algorithms
    uint32_t table_gen               # maglev: the live table is half (table_gen & 1); flipped with a release store
    uint32_t table_built_from        # the pool generation the live table was built from
    uint64_t table_off               # maglev: two tables of table_size uint16 slot offsets each
    uint64_t table_weight[2]         # maglev: sum of the weights entered in each half (W of bounded loads)
    char name[40]
    uint8_t _pad[24]

cdef struct shm_pool_stats:          # 64 bytes, [row][pool]; writer: the row's worker
    int64_t active                   # connections open to any backend of the pool
    uint64_t _pad[7]

cdef struct shm_backend:             # 192 bytes
    uint32_t seq                     # writer: supervisor; seqlock over family/port/addr/name (odd = being written)
    uint8_t in_use                   # writer: supervisor
    uint8_t backup                   # writer: supervisor
    uint8_t admin                    # writer: supervisor (ADMIN_*)
    uint8_t health                   # writer: checker (HEALTH_*)
    uint16_t family                  # writer: supervisor (AF_INET / AF_INET6)
    uint16_t port                    # writer: supervisor, host byte order
    uint32_t weight                  # writer: supervisor, configured weight 0..1000
    uint32_t eff_weight              # writer: supervisor, weight in effect (slow start scales it)
    uint8_t addr[16]                 # writer: supervisor, network order (4 bytes used for IPv4)
    char name[LB_NAME_LEN]           # writer: supervisor
    # health detail, kept here so a respawned checker goes on where the last one was
    uint8_t check_oks                # writer: checker; passed checks in a row while down
    uint8_t check_fails              # writer: checker; failed checks in a row while up
    uint8_t down_reason              # writer: checker; REASON_* of the last up -> down
    uint8_t eject_count              # writer: checker; passive ejections in a row (backoff)
    uint16_t last_status             # writer: checker; status of the last http check
    uint16_t last_errno              # writer: checker; errno of the last failed connect
    uint32_t last_latency_us         # writer: checker; duration of the last check
    uint32_t last_result             # writer: checker; REASON_* of the last check (0 = passed)
    uint64_t up_since_ms             # writer: checker; monotonic ms of the last down -> up (slow start)
    uint64_t eject_until_ms          # writer: checker; passive ejection ends then (monotonic ms)
    uint64_t passive_base            # writer: checker; workers' failure count already acted on
    uint8_t _pad[48]

cdef struct shm_worker_stats:        # 128 bytes, one row per worker; writer: that worker
    uint64_t pid
    uint64_t heartbeat_ms            # monotonic ms of the loop's last turn
    uint64_t accepted
    int64_t active                   # client connections open now
    int64_t fds                      # fds this worker holds for connections and pipes
    uint64_t accept_paused           # times accepting was paused at the fd limit
    uint64_t paused_now              # 1 while paused
    uint64_t no_backend              # clients closed because no backend could be reached
    uint64_t bytes_in                # client -> backend
    uint64_t bytes_out               # backend -> client
    uint64_t idle_timeouts
    uint64_t splice_bytes            # bytes of the above moved by splice(2)
    uint64_t stopping                # 1 while draining
    uint64_t _pad[3]

cdef struct shm_backend_stats:       # 64 bytes, [row][slot]; writer: the row's worker
    int64_t active
    uint64_t total
    uint64_t bytes_in                # client -> backend
    uint64_t bytes_out               # backend -> client
    uint64_t connect_errors          # refused, reset or failed connects
    uint64_t connect_timeouts
    uint64_t consecutive_failures    # reset by a successful connect
    uint64_t _pad


# ---- Part 2: worker-private state --------------------------------------------

cdef struct lb_conn
cdef struct lb_worker
cdef struct lb_pool_rt
cdef struct lb_ops

cdef enum:
    SIDE_CLIENT = 0
    SIDE_BACKEND = 1
    TAG_LISTENER = 2
    TAG_SIGNAL = 3

# Directions: DIR_UP moves client -> backend, DIR_DOWN backend -> client.
cdef enum:
    DIR_UP = 0
    DIR_DOWN = 1

cdef enum:
    CS_FREE = 0
    CS_CONNECTING = 1
    CS_ESTABLISHED = 2
    CS_CLOSED = 3
    CS_PROXY_WAIT = 4                # accept_proxy: reading the client's PROXY header, no backend yet

# lb_conn.flags bits, per side (shift by side) or per direction (shift by dir).
cdef enum:
    F_READABLE = 1           # << side: the kernel may have bytes to read
    F_WRITABLE = 4           # << side: the kernel may take bytes
    F_EOF = 16               # << side: read side hit EOF
    F_SHUT = 64              # << side: we shut down writing to that side
    F_SPLICE = 256           # << dir: this direction currently moves data by splice
    F_QUEUED = 1024          # on the worker's pending list (budget ran out)
    F_RDHUP = 2048           # << side: the peer's FIN (or an error) was signalled: read to EOF

cdef struct lb_list:
    lb_conn *head
    lb_conn *tail

cdef struct lb_conn:
    int fd[2]
    uint32_t state
    uint32_t flags
    int32_t listener
    int32_t pool
    int32_t slot                     # backend slot (global index) while connecting/established
    int32_t tries
    int32_t tried[LB_MAX_TRIES]
    # in-flight data per direction; a buffer or a pipe only while bytes are pending
    char *buf[2]
    uint32_t buf_off[2]
    uint32_t buf_len[2]
    int pipe[2][2]
    uint32_t pipe_len[2]
    uint64_t last_ms                 # last byte moved (idle timer)
    uint64_t queued_ms               # when put on its timer list
    lb_list *timer_list
    lb_conn *prev
    lb_conn *next
    lb_conn *pending_next
    sockaddr_storage peer

cdef struct mg_entry:               # one backend while a Maglev table is built
    const char *name
    uint32_t weight
    uint32_t id                      # slot offset within the pool
    uint64_t offset
    uint64_t skip
    uint64_t pos                     # offset + skip * next, mod M
    uint64_t target                  # weighted turns: takes a slot when iteration * weight >= target

cdef struct lb_free_buf:
    lb_free_buf *next

cdef struct lb_pipe:
    int fds[2]

cdef struct lb_listener_rt:
    int fd
    int32_t pool
    uint64_t idle_timeout_ms
    lb_list conns                    # established connections, oldest activity first (lazily)
    uint32_t accept_proxy            # read a PROXY header from each client before connecting
    uint64_t proxy_timeout_ms        # for that header: min(idle_timeout, 10 s)
    lb_list proxy_wait               # connections in CS_PROXY_WAIT, oldest first

cdef struct lb_pool_rt:
    shm_pool *shm
    lb_ops *ops
    uint32_t algorithm
    uint32_t retries
    uint64_t connect_timeout_ms
    uint32_t send_proxy              # PROXY header to backends: 0 off, 1 v1, 2 v2
    lb_list connecting               # connect timer list, constant timeout: append keeps order
    uint32_t index                   # pool index in shared memory
    # roundrobin: smooth weighted round robin state (nginx's algorithm), per worker
    int64_t *rr_current
    uint32_t rr_generation
    uint32_t rr_cursor               # leastconn tie-break rotation
    # random, p2c: the candidates of the current generation (primaries, or else
    # backups) and their cumulative weights, rebuilt when the generation changes
    int32_t *cand
    uint64_t *cand_cum
    uint32_t n_cand
    uint32_t cand_generation


cdef struct lb_worker:
    int epfd
    int sigfd
    uint32_t row
    uint32_t n_rows
    shm_header *hdr
    shm_backend *backends
    shm_worker_stats *stats          # this worker's row
    shm_backend_stats *bstats        # this worker's row of per-backend counters
    shm_backend_stats *bstats_all    # every row: leastconn sums them
    shm_pool_stats *pstats_all       # [row][pool]
    char *base                       # the shared-memory region (maglev tables hang off it)
    uint64_t rng                     # splitmix64 state: random and p2c
    lb_listener_rt *listeners
    int n_listeners
    lb_pool_rt *pools
    int n_pools
    lb_conn *free_conns
    lb_free_buf *free_bufs
    int n_free_bufs
    lb_pipe *free_pipes              # a stack of n_free_pipes
    int n_free_pipes
    lb_conn *pending                 # FIFO of connections to pump at the end of this turn
    lb_conn *pending_tail
    lb_conn *closed                  # freed after the current batch of events
    int64_t fds
    int64_t fd_limit                 # stop accepting above this many fds
    int64_t fd_resume                # and start again below this
    int accepting
    int stopping                     # 1 graceful drain, 2 fast stop
    uint64_t drain_deadline_ms
    uint64_t drain_timeout_ms
    int splice_mode                  # SPLICE_NEVER / SPLICE_AUTO / SPLICE_ALWAYS
    uint64_t now_ms


# Selection hooks, one set per algorithm (HAProxy's struct lb_ops). pick returns a
# global backend slot or -1; it must skip the slots the connection already tried.
# take/drop may be NULL: the generic code already keeps the shared counters.
ctypedef int32_t (*lb_pick_fn)(lb_worker *w, lb_pool_rt *p, lb_conn *c, uint64_t key) noexcept nogil
ctypedef void (*lb_conn_fn)(lb_worker *w, lb_pool_rt *p, int32_t slot) noexcept nogil

cdef struct lb_ops:
    lb_pick_fn pick
    lb_conn_fn take
    lb_conn_fn drop

cdef enum:
    SPLICE_NEVER = 0
    SPLICE_AUTO = 1
    SPLICE_ALWAYS = 2
