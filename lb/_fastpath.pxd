# Every C struct of the data plane, declared in one place.
#
# Part 1 is the shared-memory layout (DESIGN.md section 2). Its size and field
# order are a contract between the supervisor, the checker and every worker of
# one instance, all running this same compiled module; LB_SHM_VERSION changes
# with any edit here. Each field names its single writer.
#
# Part 2 is per-worker private state: connections, free lists, pools' runtime.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from lb.includes.socket cimport sockaddr_storage
from lb.includes.epoll cimport epoll_event
from lb.includes.openssl cimport SSL_CTX, EVP_CIPHER_CTX, EVP_PKEY
from lb.includes.nghttp2 cimport nghttp2_session, nghttp2_session_callbacks, nghttp2_option, nghttp2_nv
from lb.includes.sockmap cimport lb_skm

cdef enum:
    LB_SHM_MAGIC_LO = 0x4d454d53      # "SMEM"
    LB_SHM_MAGIC_HI = 0x31304c42      # "BL01"
    LB_SHM_VERSION = 10
    LB_MAX_REGIONS = 24                # entries of the header's region directory
    LB_REGION_NAME_LEN = 16
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
    REASON_TLS = 8                   # the TLS handshake failed (last_errno: the certificate verify result)

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

# The region is a header, then the regions REGIONS (fastpath/shm.pxi) declares, in
# that order, each found by name in the header's directory.

cdef struct shm_region:              # one entry of the directory
    char name[LB_REGION_NAME_LEN]    # NUL-padded
    uint64_t off                     # from the start of the mapping, on a 64-byte line
    uint64_t size

cdef struct shm_header:              # writer: supervisor, once, before fork (but checks_total)
    uint32_t magic_lo
    uint32_t magic_hi
    uint32_t version
    uint32_t header_size
    uint64_t total_size
    uint32_t n_pools
    uint32_t n_slots                 # backend slots, all pools together
    uint32_t n_rows                  # worker counter rows
    uint32_t supervisor_pid
    uint64_t checks_total            # writer: checker; checks completed, all backends
    uint32_t n_regions
    uint32_t _pad0
    shm_region regions[LB_MAX_REGIONS]
    uint32_t n_listeners             # rows of listener_stats: the config's listeners
    uint32_t _pad1
    uint8_t _pad[192]

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
    uint64_t checks                  # writer: checker; active checks completed (metrics; carried over reloads)
    uint64_t checks_failed           # writer: checker; ... of which failed
    uint64_t ejections               # writer: checker; passive ejections
    uint8_t _pad[24]

cdef struct shm_worker_stats:        # 320 bytes, one row per worker; writer: that worker
    uint64_t pid
    uint64_t heartbeat_ms            # monotonic ms of the loop's last turn
    uint64_t accepted
    int64_t active                   # client connections open now
    int64_t fds                      # fds this worker holds for connections and pipes
    uint64_t accept_paused           # times accepting was paused for want of fds (its budget, or an accept that failed)
    uint64_t paused_now              # 1 while any listener of this worker is paused (fds or max_connections)
    uint64_t no_backend              # clients closed because no backend could be reached
    uint64_t bytes_in                # client -> backend
    uint64_t bytes_out               # backend -> client
    uint64_t idle_timeouts
    uint64_t splice_bytes            # bytes of the above moved by splice(2) (a cache hit's body too): none copied by lb
    uint64_t stopping                # 1 while draining
    uint64_t http_requests           # requests parsed (http listeners)
    uint64_t http_errors             # responses lb made itself (4xx/5xx pages)
    uint64_t http_retries            # requests sent again to another backend
    uint64_t tls_handshakes          # TLS handshakes completed with clients
    uint64_t tls_resumed             # of those, sessions resumed (a ticket)
    # TLS handshakes with clients that failed, by reason
    uint64_t tls_fail_timeout        # not done within handshake_timeout
    uint64_t tls_fail_plain_http     # plain HTTP sent to a TLS port
    uint64_t tls_fail_negotiation    # no protocol version, cipher or group in common
    uint64_t tls_fail_client_cert    # a client certificate missing or not verified
    uint64_t tls_fail_protocol       # anything else that is not TLS (garbage, bad records)
    uint64_t tls_fail_closed         # the client closed or reset the connection mid-handshake
    uint64_t tls_record_layer        # handshakes after which lb's record layer took the connection
    uint64_t tls_bad_records         # ... connections it closed for a record that broke the protocol
    uint64_t h2_connections          # client connections that spoke HTTP/2
    uint64_t h2_streams              # requests (streams) they opened
    uint64_t h2_goaways              # GOAWAY frames lb sent (stop, reload, idle, errors)
    uint64_t h2_refused              # connections ended for breaking HTTP/2 or for abuse (floods, rapid reset)
    uint64_t accept_limited          # times accepting was paused at a max_connections (global or a listener's)
    uint64_t accept_fd_errors        # accept(2) or a backend's socket(2) failed for want of fds or memory
    uint64_t sockmap_pairs           # tcp connections handed to the kernel (forward = "sockmap")
    uint64_t sockmap_fallbacks       # ... that stayed in lb instead: bpf(2) refused, or the pair could not enter the maps
    uint64_t sockmap_overruns        # ... reset for holding more than lb's bound inside the kernel (a reader far behind)
    uint64_t _pad_w[5]

cdef struct shm_listener_stats:      # 64 bytes, [row][listener]; writer: the row's worker
    int64_t active                   # client connections of this listener open now
    uint64_t accepted
    uint64_t limited                 # times accepting on it was paused at its max_connections
    uint64_t _pad[5]

cdef struct shm_backend_stats:       # 64 bytes, [row][slot]; writer: the row's worker
    int64_t active
    uint64_t total
    uint64_t bytes_in                # client -> backend
    uint64_t bytes_out               # backend -> client
    uint64_t connect_errors          # refused, reset or failed connects
    uint64_t connect_timeouts
    uint64_t consecutive_failures    # reset by a successful connect
    uint64_t _pad


cdef enum:
    TICKET_KEYS = 3                  # previous, current (encrypts), next

cdef struct shm_ticket_key:          # 80 bytes, as in HAProxy's tls-ticket-keys files
    uint8_t name[16]                 # sent in clear in every ticket: finds its key
    uint8_t aes[32]                  # AES-256-CBC
    uint8_t hmac[32]                 # HMAC-SHA256

cdef struct shm_tls_tickets:         # writer: supervisor (at start, reload and rotation); readers: workers
    uint32_t seq                     # seqlock: odd while the keys change
    uint32_t n                       # keys in keys[] (0: tickets off)
    uint32_t current                 # index of the key that encrypts new tickets
    uint32_t _pad0
    uint64_t rotated_unix_ms
    shm_ticket_key keys[TICKET_KEYS]


# ACLs (fastpath/acl.pxi): each ACL's prefixes compiled into sorted boundaries,
# where membership flips, found by binary search within a bucket of the
# address's top 16 bits. Two halves per ACL, flipped by generation.
cdef enum:
    ACL_MAX_PREFIXES = 1048576       # per address family and ACL
    ACL_BOUNDS_CAP = 2097152         # a prefix adds at most two boundaries
    ACL_INDEX_LEN = 65537            # bucket b holds boundaries [idx[b], idx[b + 1])
    ACL_MAX_PER_LIST = 16            # ACL names in one allow or deny list

cdef struct shm_acl_head:            # 64 bytes, the start of the acls region; writer: supervisor, at creation
    uint32_t n_acls
    uint32_t n_rules                 # decision counters in each worker row of acl_stats
    uint32_t rule_stride             # counters from one row to the next (whole cache lines)
    uint32_t _pad0
    uint64_t half_size               # bytes of one half of one ACL's tables
    uint64_t _pad[5]

cdef struct shm_acl:                 # 128 bytes; writer: supervisor
    char name[64]
    uint32_t gen                     # the live half is (gen & 1); stored with release once the other half is complete
    uint32_t n4[2]                   # boundaries in each half, IPv4
    uint32_t n6[2]                   # and IPv6
    uint8_t shift4[2]                # leading bits every boundary of the half shares: buckets
    uint8_t shift6[2]                # index the 16 bits after them
    uint64_t off                     # the two halves, one after the other, from the start of the mapping
    uint64_t _pad[4]


# Rate and concurrency limits (fastpath/limits.pxi). Each [limits.NAME] has a
# table of keys in shared memory, shared by every worker of the node, so that N
# workers admit what one would. A key's rate is a GCRA: one 64-bit theoretical
# arrival time, moved by compare-and-swap. Requests in flight are counted per
# worker row ([entry][row]), so the counts of a worker that dies go with it.
cdef enum:
    LIMIT_PROBE = 32                 # the slots a key may take, from its home slot on
    LIMIT_MAX_PER_LIST = 4           # limits in one listener's or route's list
    LIMIT_MAX_HELD = 8               # requests-in-flight counts one connection holds
    LIMIT_TEXT_MAX = 30              # bytes of a key kept for `lb limits show`
    LK_SOURCE_IP = 1                 # shm_limit.key_kind
    LK_HEADER = 2
    LK_COOKIE = 3
    LK_API_KEY = 4                   # the identity of the request's API key (the auth step found it)
    LK_JWT_CLAIM = 5                 # a claim (key_name) of the request's verified JWT (the auth step checked it)
    LIMIT_F_DRY_RUN = 1              # shm_limit.flags: count, never refuse
    LIMIT_F_REFUSE_NEW = 2           # a key that finds the table full is refused (else admitted)

cdef struct shm_limits_head:         # 64 bytes, the start of the limits region; writer: supervisor, at creation
    uint32_t n_limits
    uint32_t n_rows                  # conc counts per entry
    uint64_t _pad[7]

cdef struct shm_limit:               # 256 bytes; writer: supervisor, at creation
    char name[64]
    char key_name[64]                # header (lower case) or cookie name
    uint8_t key_kind                 # LK_*
    uint8_t prefix4                  # source_ip: the prefix length that makes the key
    uint8_t prefix6
    uint8_t flags                    # LIMIT_F_*
    uint32_t concurrent              # requests (tcp: connections) in flight per key; 0: no limit
    uint64_t capacity                # entries, a power of two
    uint64_t emission_ns             # GCRA T = period / rate; 0: no rate
    uint64_t tolerance_ns            # GCRA tau = burst * T
    uint64_t period_ns
    uint32_t rate                    # requests per period
    uint32_t burst
    uint64_t seed                    # of the key hashes: random per region (no chosen collisions)
    uint64_t entries_off             # capacity shm_limit_entry, from the start of the mapping
    uint64_t conc_off                # capacity x n_rows uint32 ([entry][row]); 0: concurrent = 0
    uint8_t _pad[56]

cdef struct shm_limit_entry:         # 64 bytes; writers: every worker (CAS and the entry lock), supervisor (a dead row's locks)
    uint64_t key                     # hash of the key, never 0; 0: a free slot. Set by CAS from 0, or by an evictor holding lock
    uint64_t tat                     # GCRA theoretical arrival time, CLOCK_MONOTONIC ns; CAS, or under lock when concurrent
    uint64_t window                  # requests seen: period number (24 bits) | in it (20) | in the one before (20)
    uint32_t lock                    # 0, or 1 + the row of the worker holding it (evictions; concurrent limits)
    uint32_t refused                 # this key's refusals (dry_run: would-be refusals)
    uint8_t text_len                 # the key, for `lb limits show`: an address (text_kind 4 or 6) or the
    uint8_t text_kind                # first LIMIT_TEXT_MAX bytes of a header or cookie value (text_kind 0)
    char text[LIMIT_TEXT_MAX]

cdef struct shm_limit_stats:         # 64 bytes, [row][limit]; writer: the row's worker
    uint64_t admitted
    uint64_t refused_rate            # over the rate (429; tcp: closed at accept)
    uint64_t refused_concurrent      # over concurrent
    uint64_t dry_run                 # refusals dry_run let through (refused_* count them too)
    uint64_t unkeyed                 # requests without the key (no such header or cookie): not limited
    uint64_t table_full              # keys that found no free slot and nothing to evict
    uint64_t evicted                 # keys evicted (their bucket was full again, nothing in flight)
    uint64_t _pad


# API keys (fastpath/auth.pxi): per [auth.NAME] of type api_key, the SHA-256
# of each key and its identity, in an open-addressing table; two halves,
# flipped by generation (as the ACLs): `lb key add|revoke` rewrites the half
# not in use and flips.
# JWT (fastpath/auth_jwt.pxi) uses the same halves for its JWKS: a half holds
# the keys packed back to back (jwt_keys_pack), n_slots its bytes and n_keys
# its keys; the supervisor rewrites the other half when the file changes and
# flips, and each worker rebuilds its EVP_PKEYs when it sees gen move.
cdef enum:
    AUTH_MAX_KEYS = 65536            # per auth
    AUTH_HALF_SLOTS = 131072         # slots a half can have (twice the keys at most)
    AUTH_ID_MAX = 63                 # bytes of an identity

cdef struct shm_auth_head:           # 64 bytes, the start of the auth_keys region; writer: supervisor, at creation
    uint32_t n_auths
    uint32_t _pad0
    uint64_t _pad[7]

cdef struct shm_auth:                # 128 bytes; writer: supervisor
    char name[64]
    uint32_t gen                     # the live half is (gen & 1); stored with release once the other half is complete
    uint32_t n_slots[2]              # slots of each half: a power of two, twice its keys or more (0: no key)
    uint32_t n_keys[2]
    uint32_t _pad0
    uint64_t off                     # the two halves (AUTH_HALF_SLOTS entries each), from the start of the mapping
    uint64_t _pad[4]

cdef struct shm_auth_key:            # 96 bytes; writer: supervisor (the half not in use)
    uint8_t sha256[32]               # of the key
    uint8_t id_len                   # 0: a free slot
    char id[AUTH_ID_MAX]

cdef struct shm_auth_stats:          # 64 bytes, [row][auth]; writer: the row's worker
    uint64_t ok                      # requests with a known key (basic: good credentials)
    uint64_t missing                 # no key, no credentials (401)
    uint64_t invalid                 # a key not in the table, a wrong user or password (401)
    uint64_t verified                # basic: passwords checked against their slow hash (off the loop)
    uint64_t cached                  # basic: credentials found in the success cache
    uint64_t busy                    # basic: the verification queue was full (503)
    uint64_t _pad[2]


# Access logs (fastpath/log.pxi). Each worker row has its own ring of fixed-size
# records; the worker is its one producer, the logger process its one consumer.
# A full ring drops the record (counted), so a worker never waits for the logger.
cdef enum:
    LOG_RECORD_SIZE = 1024
    LOG_METHOD_MAX = 16
    LOG_HOST_MAX = 128
    LOG_RID_MAX = 64
    LOG_SNI_MAX = 64
    LOG_UA_MAX = 160
    LOG_REFERER_MAX = 160
    LOG_PATH_MAX = 320
    LOG_HEAD_SIZE = 112                # the fixed part of a record, before its strings

# Why an exchange or a tcp connection ended (shm_log_record.term); the words
# are TERMINATIONS in fastpath/log.pxi, the names a log line shows.
cdef enum:
    TERM_OK = 0
    TERM_CLIENT_ABORT = 1            # the client closed or reset before the end
    TERM_CLIENT_TIMEOUT = 2          # idle_timeout: the client went silent mid-exchange
    TERM_REQUEST_TIMEOUT = 3         # http_request_timeout: the head did not come in time (408)
    TERM_BAD_REQUEST = 4             # lb refused a malformed request (400, 414, 431, ...)
    TERM_REFUSED = 5                 # a request step refused it (shm_log_record.step names it)
    TERM_NO_BACKEND = 6              # no backend to pick (503)
    TERM_BACKEND_REFUSED = 7         # connects failed: refused, unreachable, TLS refused
    TERM_CONNECT_TIMEOUT = 8         # connect_timeout
    TERM_BACKEND_RESET = 9           # the backend closed or reset before its response was whole
    TERM_SERVER_TIMEOUT = 10         # response_timeout (504)
    TERM_BAD_RESPONSE = 11           # the backend's response broke the rules (502)
    TERM_IDLE_TIMEOUT = 12           # tcp: idle_timeout
    TERM_TLS_FAILED = 13             # the client's TLS handshake failed or timed out
    TERM_PROXY_FAILED = 14           # the client's PROXY header was invalid or late
    TERM_LB_ERROR = 15               # out of memory, buffers or fds
    TERM_STOPPING = 16               # the worker stopped (fast stop, or drain_timeout)
    TERM_CLIENT_RESET = 17           # tcp: the client reset the connection
    N_TERMS = 18

# shm_log_record.flags
cdef enum:
    LOGF_HTTP = 1                    # an http exchange (else a tcp connection)
    LOGF_ANSWERED = 2                # lb answered itself (an error page)
    LOGF_ERROR = 4                   # always logged: status >= 500, lb's answer, or an abnormal end
    LOGF_TLS = 8                     # the client spoke TLS to lb
    LOGF_V6 = 16                     # client address is IPv6

cdef struct shm_log_record:          # LOG_RECORD_SIZE bytes; writer: the ring's worker
    uint64_t time_us                 # unix time of the start, microseconds
    int64_t t_request_us             # from the start: request head received (-1: not reached)
    int64_t t_connect_us             # ... backend connected (TLS handshake included)
    int64_t t_response_us            # ... first response byte (http: the response head)
    int64_t t_total_us               # ... the end
    uint64_t bytes_in                # from the client (http: the request head and body)
    uint64_t bytes_out               # to the client
    uint32_t sample                  # 32 random bits: a log keeps the record when sample < its rate
    uint16_t status                  # http status (0: none)
    uint16_t listener                # config index
    int16_t route                    # index in the listener's routes, -1 none
    int16_t pool                     # -1 none
    int32_t slot                     # backend slot, -1 none
    uint16_t tls_version             # 0x0304 ... (0: not TLS)
    uint16_t tls_cipher              # IANA cipher suite id
    uint16_t client_port
    uint8_t term                     # TERM_*
    uint8_t step                     # TERM_REFUSED: 1 + the index of the request step that refused
    uint8_t flags                    # LOGF_*
    uint8_t http_version             # 10, 11
    uint8_t tries                    # backends tried
    uint8_t worker                   # the row
    uint8_t client_addr[16]
    # the strings lie back to back in data, in this order, each cut at its
    # LOG_*_MAX: a record touches only the cache lines it uses, in the
    # worker that writes it and in the logger that reads it
    uint8_t method_len
    uint8_t host_len
    uint16_t path_len
    uint8_t rid_len
    uint8_t ua_len
    uint8_t referer_len
    uint8_t sni_len
    uint32_t _pad0
    char data[LOG_RECORD_SIZE - LOG_HEAD_SIZE]

cdef struct shm_log_ring:            # 128 bytes, one per worker row, before its records
    uint64_t head                    # writer: the row's worker; records written (release store after each)
    uint64_t drops                   # writer: the row's worker; records dropped, the ring being full
    uint64_t _pad0[6]
    uint64_t tail                    # writer: the logger; records consumed (release store)
    uint64_t _pad1[7]

cdef struct shm_log_head:            # 64 bytes, the start of the log_rings region
    uint32_t n_records               # per ring, a power of two (0: no access logs)
    uint32_t reopen_req              # writer: supervisor; bumped to ask the logger to reopen its files
    uint32_t reopened                # writer: logger; reopen_req it last acted on
    uint32_t logger_pid              # writer: logger
    uint64_t lines                   # writer: logger; lines written
    uint64_t write_errors            # writer: logger; lines lost to a failed write or send
    uint64_t _pad[4]


# Metrics (fastpath/metrics.pxi): every listener, route, pool and backend slot
# is one entity with the same counters and latency histograms, one row of
# entities per worker; the metrics endpoint sums the rows at scrape.
cdef enum:
    MET_BOUNDS = 14                  # histogram bucket bounds (MET_BOUNDS_US); one more bucket for +Inf
    MET_BUCKETS = 15
    MET_HISTS = 3
    HIST_TOTAL = 0                   # the whole exchange: first request byte (tcp: accept) to the end
    HIST_CONNECT = 1                 # to the backend connected (TLS handshake included)
    HIST_FIRST_BYTE = 2              # to the first response byte
    MET_CLASSES = 6                  # responses by status class: 1xx .. 5xx, then "other" (tcp, or no status)

cdef struct shm_metric_hist:         # 128 bytes
    uint64_t buckets[MET_BUCKETS]    # not cumulative: an observation adds to one bucket
    uint64_t sum_us

cdef struct shm_metrics:             # 640 bytes, [row][entity]; writer: the row's worker
    uint64_t requests                # http exchanges, and tcp connections, that ended
    uint64_t responses[MET_CLASSES]  # ... by the status class the client got
    uint64_t bytes_in                # from the client
    uint64_t bytes_out               # to the client
    uint64_t retries                 # backends tried beyond the first
    uint64_t terms[N_TERMS]          # ... by how they ended (TERM_*; TERM_OK too)
    shm_metric_hist hist[MET_HISTS]
    int64_t active                   # listeners only: client connections open now (a gauge, not carried over)
    uint64_t _pad[3]

cdef struct shm_metrics_head:        # 64 bytes, the start of the metrics region; writer: supervisor, at creation
    uint32_t n_listeners             # entities: listeners [0, n_listeners), then routes (every
    uint32_t n_routes                # listener's, in config order), pools, backend slots
    uint32_t n_pools
    uint32_t n_slots
    uint32_t n_entities
    uint32_t n_variants              # ... then every split's variants (fastpath/split.pxi), in config order
    uint64_t _pad[5]


# Top talkers (fastpath/top.pxi): per worker row, the heaviest clients and
# paths in a Space-Saving sketch of TOP_K entries, and every status exactly,
# in two epochs of TOP_EPOCH_S seconds (the current one, and the one before
# it: a reader merges both, a sliding window of one to two epochs).
cdef enum:
    TOP_K = 64
    TOP_KEY_MAX = 80                 # bytes of a key kept: an address, or a path's start
    TOP_STATUSES = 512               # status - 100
    TOP_EPOCH_S = 30

cdef struct shm_top_entry:           # 112 bytes
    uint64_t hash                    # of the whole key (0: free)
    uint64_t count
    uint64_t error                   # Space-Saving: count may exceed the key's true count by this much
    uint8_t len
    uint8_t family                   # clients: AF_INET, AF_INET6
    uint8_t _pad[6]
    char key[TOP_KEY_MAX]

cdef struct shm_top_sketch:          # writer: the row's worker
    uint64_t epoch                   # monotonic seconds / TOP_EPOCH_S it counts (release store once cleared)
    uint64_t _pad[7]
    shm_top_entry e[TOP_K]

cdef struct shm_top_row:             # one per worker row; writer: that worker
    shm_top_sketch clients[2]        # [epoch & 1]
    shm_top_sketch paths[2]
    uint64_t status_epoch[2]
    uint64_t _pad[6]
    uint64_t status[2][TOP_STATUSES]


# Splits (fastpath/split.pxi): the weighted variants of a listener or a route.
# A user's bucket (0 .. SPLIT_BUCKETS - 1: from lb's cookie, or a hash of the
# sticky key) indexes the split's table, which names the variant. The table
# is the supervisor's (lb/splits.py lays it out: a weight change moves only
# the buckets it must), written into the half the workers do not read, then
# flipped by generation.
cdef enum:
    SPLIT_MAX_VARIANTS = 8
    SPLIT_BUCKETS = 10000

cdef struct shm_split_head:          # 64 bytes, the start of the splits region; writer: supervisor, at creation
    uint32_t n_splits
    uint32_t _pad0
    uint64_t _pad[7]

cdef struct shm_split:               # 20160 bytes; writer: supervisor
    uint32_t gen                     # the live half is (gen & 1); bumped with a release store after the other half is written
    uint32_t n_variants              # at creation
    int32_t pool[SPLIT_MAX_VARIANTS] # each variant's pool index, at creation
    uint16_t weight[2][SPLIT_MAX_VARIANTS]  # per half: each variant's weight in percent (the table's counts / 100)
    char name[LB_NAME_LEN]
    uint8_t table[2][SPLIT_BUCKETS]  # per half: bucket -> variant
    uint8_t _pad[24]

# Mirrors (fastpath/mirror.pxi): what each worker's copies came to.
cdef struct shm_mirror_head:         # 64 bytes, the start of the mirror_stats region; writer: supervisor, at creation
    uint32_t n_mirrors               # the config's mirrors: each listener's, then its routes', in config order
    uint32_t _pad0
    uint64_t _pad[7]

cdef struct shm_mirror_stats:        # 64 bytes, [row][mirror]; writer: the row's worker
    uint64_t copies                  # copies started
    uint64_t dropped                 # requests drawn but not copied: max_concurrent copies in flight, over max_body, a body still coming
    uint64_t failed                  # copies that could not connect or send, or that the timeout ended before the shadow did
    uint64_t _pad[5]


# ---- Part 2: worker-private state --------------------------------------------

cdef struct lb_conn
cdef struct lb_route
cdef struct lb_hconn
cdef struct lb_http_listener
cdef struct lb_tls_server
cdef struct lb_tls_client
cdef struct lb_http_pool
cdef struct lb_http_worker
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
    KIND_L4 = 0
    KIND_HTTP = 1                    # an lb_hconn (client side of an http session)
    KIND_BCONN = 2                   # an lb_bconn (a backend connection of the http engine)
    KIND_H2B = 3                     # an lb_h2b (an HTTP/2 connection to a backend; fastpath/h2_backend.pxi)
    KIND_MIRROR = 4                  # an lb_mirror (a request's copy to a shadow pool, fastpath/mirror.pxi)
    KIND_CACHE_REFRESH = 5           # an lb_cache_refresh (a background revalidation, fastpath/cache_swr.pxi)

cdef enum:
    CS_FREE = 0
    CS_CONNECTING = 1
    CS_ESTABLISHED = 2
    CS_CLOSED = 3
    CS_PROXY_WAIT = 4                # accept_proxy: reading the client's PROXY header, no backend yet
    CS_TLS_WAIT = 5                  # TLS listener: the client's handshake (or, passthrough: its ClientHello), no backend yet

# lb_conn.flags bits, per side (shift by side) or per direction (shift by dir).
cdef enum:
    F_READABLE = 1           # << side: the kernel may have bytes to read
    F_WRITABLE = 4           # << side: the kernel may take bytes
    F_EOF = 16               # << side: read side hit EOF
    F_SHUT = 64              # << side: we shut down writing to that side
    F_SPLICE = 256           # << dir: this direction currently moves data by splice
    F_QUEUED = 1024          # on the worker's pending list (budget ran out)
    F_RDHUP = 2048           # << side: the peer's FIN (or an error) was signalled: read to EOF
    F_SKM_DRAIN = 8192       # on the worker's skm_draining list

cdef struct lb_list:
    lb_conn *head
    lb_conn *tail

# The transport layer (fastpath/transport.pxi): how bytes move on one connected
# socket. Every read, write, shutdown and close of a client or backend socket in
# the tcp and http paths goes through its lb_sock's lb_xprt: plain sockets
# today, TLS next. An operation never blocks; when it must wait it says for
# what (a TLS read may need the socket writable, and a write readable).
cdef struct lb_sock
cdef enum:
    XPRT_ERROR = -1                  # the connection is broken (errno says why)
    XPRT_WANT_READ = -2              # wait until the socket is readable, then call again
    XPRT_WANT_WRITE = -3             # wait until the socket is writable, then call again

ctypedef ssize_t (*xprt_recv_fn)(lb_sock *s, void *buf, size_t n) noexcept nogil
ctypedef ssize_t (*xprt_send_fn)(lb_sock *s, const void *buf, size_t n) noexcept nogil
ctypedef void (*xprt_shutw_fn)(lb_sock *s) noexcept nogil
ctypedef void (*xprt_close_fn)(lb_sock *s, bint reset) noexcept nogil

cdef struct lb_xprt:
    const char *name
    # >0 bytes read, 0 the peer ended the stream, or XPRT_*. A count below n
    # means nothing more was readable at that instant (the transport holds no
    # decoded bytes back): the edge-triggered loop waits for the next event.
    xprt_recv_fn recv
    # bytes taken (a count below n: the socket took no more), or XPRT_*
    xprt_send_fn send
    # no more bytes from this side (TLS: close_notify, then FIN)
    xprt_shutw_fn shutw
    # release the socket and the transport's state; reset: the peer gets an RST
    xprt_close_fn close
    # the stream's bytes are the socket's own, so splice(2) may move them
    uint8_t splice

cdef struct lb_sock:                 # one connected socket and its transport
    int fd
    const lb_xprt *xp
    void *ctx                        # the transport's per-connection state (NULL for plain)

# What the access log needs of one tcp connection or http exchange, kept as
# it happens (fastpath/log.pxi): timings, bytes, how it ended, and what the
# TLS handshake agreed, captured when it completed. Metrics read the same.
cdef struct lb_logctx:
    uint64_t t_start                 # monotonic us: accept, or the request's first byte
    uint64_t t_request               # request head parsed (0: not reached)
    uint64_t t_connect               # backend connected
    uint64_t t_response              # first response byte
    uint64_t bytes_in                # from the client
    uint64_t bytes_out               # to the client
    uint16_t status
    uint8_t term                     # TERM_*; set by whoever ends it abnormally, first one wins
    uint8_t step                     # the request step that refused (1-based)
    uint8_t answered                 # lb answered itself
    uint8_t on                       # the listener logs: keep this up to date
    uint8_t sni_len
    uint8_t _pad0
    uint16_t tls_version
    uint16_t tls_cipher
    char *sni                        # LOG_SNI_MAX bytes, allocated for TLS clients only (freed with the connection)

cdef struct lb_conn:
    uint32_t kind                    # KIND_L4, or KIND_HTTP when embedded first in an lb_hconn
    lb_sock sk[2]                    # [SIDE_CLIENT], [SIDE_BACKEND]; fd -1 when not open
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
    lb_logctx lg
    # the requests-in-flight counts this connection (tcp) or its request in
    # flight (http) holds in limit tables, given back by the end phase
    uint32_t n_held
    uint32_t held_limit[LIMIT_MAX_HELD]
    uint32_t held_entry[LIMIT_MAX_HELD]
    # forward = "sockmap" (fastpath/sockmap.pxi): the kernel moves the bytes
    uint8_t skm                      # SKM_*: in the maps, or never to enter them
    uint64_t skm_cookie[2]           # [side] SO_COOKIE: the keys in the maps
    int64_t skm_w0[2]                # [dir] bytes written into the target socket when the pair entered
    int64_t skm_read[2]              # [dir] bytes lb had read from the source socket by then
    int64_t skm_counted[2]           # [dir] bytes moved by the kernel already added to the counters
    uint64_t skm_seen                # both sockets' received totals at the last idle check
    lb_conn *skm_next                # on the worker's list of half-closed pairs still draining

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

# Request phases (fastpath/http_phases.pxi). A step is one C function in the
# topic file of its feature; each listener holds the steps its config asks for,
# per phase, in the one order http_phases.pxi declares. A listener without a
# feature does not run its step at all: an empty phase costs a compare.
cdef struct http_req
cdef enum:
    STEP_CONTINUE = 0                # go on: the next step, then the exchange
    STEP_ANSWERED = 1                # the step answered the request itself; that response is on its way
    STEP_PARKED = 2                  # the step waits for work done off the loop; it resumes the request
    # any other result is an HTTP status (403, 404, 429, ...) lb answers with
    # through its own error path, which ends the exchange
    MAX_STEPS = 12                   # per phase and listener

ctypedef int (*lb_conn_step)(lb_worker *w, lb_conn *c) noexcept nogil
ctypedef int (*lb_head_step)(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil
ctypedef void (*lb_end_step)(lb_worker *w, lb_conn *c) noexcept nogil

cdef struct lb_phases:
    uint32_t n_accept
    uint32_t n_request
    uint32_t n_response
    uint32_t n_end
    lb_conn_step accept[MAX_STEPS]   # tcp and http, at accept before a byte is read: address rules, connection limits
    lb_head_step request[MAX_STEPS]  # http, on the request head: route, access rules, authentication, limits, cache, split, header rules
    lb_head_step response[MAX_STEPS] # http, on a final response head: cache store, header rules
    lb_end_step end[MAX_STEPS]       # once per http exchange or tcp connection, at its end: the record for logs and metrics

# The allow and deny lists of a listener or a route, for the acl steps. Each
# list entry, and the default, is one rule with its own decision counter.
cdef struct lb_access:
    uint32_t n_deny
    uint32_t n_allow
    uint32_t deny[ACL_MAX_PER_LIST]  # ACL indices in the acls region
    uint32_t allow[ACL_MAX_PER_LIST]
    uint32_t rule                    # counter of deny[i]: rule + i; of allow[j]: rule + n_deny + j;
                                     # of the default (no deny matched, no allow matched): rule + n_deny + n_allow

# The limits a listener or a route names (its `limits` key), by index in the
# limits region, in the order written.
cdef struct lb_limit_list:
    uint32_t n
    uint32_t idx[LIMIT_MAX_PER_LIST]

cdef struct lb_str:                  # an owned, NUL-terminated byte string
    char *p
    uint32_t n

cdef struct lb_listener_rt:
    int fd
    lb_phases phases
    lb_access *access                # allow/deny at accept; NULL: none
    int32_t pool
    uint64_t idle_timeout_ms
    lb_list conns                    # established connections, oldest activity first (lazily)
    lb_http_listener *http           # NULL for tcp listeners
    uint32_t accept_proxy            # read a PROXY header from each client before connecting
    uint64_t proxy_timeout_ms        # for that header: min(idle_timeout, 10 s)
    lb_list proxy_wait               # connections in CS_PROXY_WAIT, oldest first
    lb_tls_server *tls               # NULL: plain sockets
    lb_list tls_wait                 # tcp: connections in CS_TLS_WAIT, oldest first
    uint64_t tls_wait_ms             # ... for at most this: the handshake, or the ClientHello (passthrough)
    uint8_t passthrough              # tls_passthrough: the ClientHello's server name picks the pool
    lb_route *sni_routes             # ... by these routes' hosts, else the listener's pool
    uint32_t n_sni_routes
    uint16_t cfg_index               # the listener's index in the config (log records name it so)
    uint8_t log_on                   # an access log serves this listener: the end phase writes records
    uint64_t log_sample              # keep a non-error record when 32 random bits are below this (1 << 32: all)
    lb_limit_list *limits            # tcp: at accept, per connection; http: per request, before the route's; NULL: none
    int64_t max_conns                # max_connections, node-wide (0: none)
    uint8_t limited                  # paused: the listener is at max_connections
    uint8_t armed                    # its socket is in the epoll set
    uint32_t met_route_base          # metrics: the entity of this listener's route 0
    uint8_t sockmap                  # forward = "sockmap": established pairs go to the kernel

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
    lb_http_pool *http               # http settings and keep-alive state of this pool
    lb_tls_client *tls               # TLS to the backends; NULL: plain
    void **tls_sessions              # [capacity] this worker's last TLS session with each backend (SSL_SESSION *)


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
    shm_acl *acls                    # the ACLs of the acls region
    uint64_t *acl_stats              # this worker's row of rule decision counters
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
    int pipe_size                    # F_SETPIPE_SZ of its pipes: PIPE_SIZE, or LB_PIPE_SIZE (tests and measurements)
    int stopping                     # 1 graceful drain, 2 fast stop
    uint64_t drain_deadline_ms
    uint64_t drain_timeout_ms
    int splice_mode                  # SPLICE_NEVER / SPLICE_AUTO / SPLICE_ALWAYS
    uint64_t now_ms
    lb_http_worker *http             # the http engine's per-worker state (NULL: no http listener)
    shm_log_ring *log_ring           # this worker's access-log ring (NULL: no access logs)
    shm_log_record *log_recs         # its records
    uint64_t log_mask                # n_records - 1
    shm_log_record *log_free         # staging records of http exchanges in flight, a free list (first 8 bytes: next)
    uint64_t rid_prefix              # request ids: random per worker start
    uint64_t rid_seq
    uint64_t now_us                  # access logs: CLOCK_MONOTONIC at this turn's start, microseconds
    uint64_t unix_us                 # ... and the wall clock then
    shm_limit *limits                # the limits region's descriptors
    uint32_t n_limits
    shm_limit_stats *limit_stats     # this worker's row of their counters
    shm_auth_stats *auth_stats       # this worker's row of the API-key auths' counters
    shm_worker_stats *wstats_all     # every row: global.max_connections sums their active
    shm_listener_stats *lstats_all   # [row][listener]
    shm_listener_stats *lstats       # this worker's row of it
    uint32_t n_cfg_listeners         # the config's listeners (a row's length)
    uint32_t pause                   # PAUSE_* reasons for which no listener accepts
    uint32_t n_limited               # listeners paused at their own max_connections
    int64_t max_conns                # global.max_connections, node-wide (0: none)
    int64_t fds_at_error             # w.fds when accept or socket() last failed for want of fds
    uint64_t fd_retry_ms             # ... accepting is tried again then at the latest
    shm_metrics *metrics             # this worker's row of metrics entities (fastpath/metrics.pxi)
    uint32_t met_pool_base           # the entity of pool 0
    uint32_t met_slot_base           # the entity of backend slot 0
    shm_top_row *top                 # this worker's top-talker sketches (fastpath/top.pxi)
    lb_skm skm                       # the BPF maps and program (fastpath/sockmap.pxi); skm.prog < 0: none
    lb_conn *skm_draining            # half-closed pairs whose last bytes the kernel is still moving
    int64_t skm_n                    # pairs in the maps now
    uint64_t skm_check_ms            # the next memory check of those pairs
    int64_t skm_cursor               # ... starting at this pair (fastpath/sockmap.pxi, skm_check_all)
    void *ring                       # the io_uring that batches a turn's recv and send calls (fastpath/uring.pxi); NULL: one syscall each


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


# ---- Part 3: the http engine (fastpath/http*.pxi) --------------------------------

cdef enum:
    HTTP_MAX_FIELDS_CAP = 256
    LIMIT_ANSWER_MAX = 512

cdef struct lb_tlist
cdef struct lb_bconn
cdef struct lb_h2
cdef struct lb_h2s
cdef struct lb_cache_x
cdef struct lb_cache_mp
cdef struct lb_cache_wk
cdef struct lb_cache_refresh
cdef struct lb_h2b

cdef enum:
    MAX_RULESETS = 6                 # header rule sets one message can have (listener, route, cache, ...)

cdef struct http_field:
    uint32_t name_off
    uint32_t name_len
    uint32_t value_off
    uint32_t value_len

cdef struct http_req:                # a parsed request or response head (offsets into the buffer)
    uint32_t method_off
    uint32_t method_len
    uint32_t target_off
    uint32_t target_len
    int32_t version                  # 10 or 11
    int32_t host                     # field index of Host, or -1
    int64_t content_length           # -1: none
    uint8_t chunked
    uint8_t keep_alive
    uint8_t upgrade
    uint8_t expect_continue
    uint32_t status                  # responses: the status code
    uint32_t reason_off              # responses: the reason phrase
    uint32_t reason_len
    uint32_t n_fields
    uint32_t head_len
    http_field fields[HTTP_MAX_FIELDS_CAP]

cdef struct http_scan:              # where the parse of an incomplete head, chunk line or trailer section stopped
    uint32_t line                    # start of its first incomplete line (0: still in the first line)
    uint32_t n_fields                # complete fields before line
    uint32_t seen                    # bytes already classified (http_parse.pxi, head_due)
    uint32_t mark                    # a field line: its colon came; a request line: its spaces

cdef struct lb_hrules:               # header rules of a listener or a route
    uint32_t n_set
    uint32_t n_add
    uint32_t n_remove
    lb_str *set_name                 # as written (sent)
    lb_str *set_lower                # lower case (compared)
    lb_str *set_value
    lb_str *add_name
    lb_str *add_value
    lb_str *remove                   # lower case

cdef struct lb_route:
    lb_str host                      # lower case; "" = any; wildcard: the suffix with its dot (".example.com")
    uint8_t host_wild
    lb_str path                      # "" = any
    uint8_t path_exact
    lb_str methods                   # " GET POST " (space-delimited, with spaces at both ends); "" = any
    lb_str header                    # lower case; "" = none
    lb_str header_value
    uint8_t has_header_value
    int32_t pool
    lb_hrules req
    lb_hrules resp
    lb_access *access                # allow/deny on requests of this route (403); NULL: none
    int64_t max_body                 # max_body_size; 0: none, -1: the listener's
    lb_limit_list *limits            # rate and concurrency limits of this route's requests; NULL: none
    int32_t auth                     # [auth.NAME] index of this route's requests; -1: the listener's
    int32_t cache                    # [caches.NAME] index of this route's requests; -1: the listener's
    int32_t split                    # its split (the splits region's index); -1: none, its pool
    int32_t mirror                   # its mirror (w.http.mirrors); -1: the listener's

cdef struct lb_tnode:                # a timer-list link; lists hold nodes of one constant timeout
    lb_tnode *prev
    lb_tnode *next
    lb_tlist *list
    uint64_t when                    # queued at (ms); deadline = when + list.timeout_ms
    void *owner

cdef struct lb_tlist:
    lb_tnode *head
    lb_tnode *tail
    uint64_t timeout_ms

cdef struct lb_hbuf:                 # a buffer from the worker's http pool, only while bytes are held
    char *p
    uint32_t off
    uint32_t len

cdef struct lb_http_listener:
    uint32_t max_target
    uint32_t max_head
    uint32_t max_fields
    uint64_t max_body                # max_body_size; 0: none
    uint8_t xfwd                     # send X-Forwarded-For/-Proto/-Host
    uint8_t fwd                      # send Forwarded (RFC 7239)
    uint8_t hide_server
    uint8_t accept_proxy
    int32_t pool                     # default pool, -1: none (404)
    uint32_t n_routes
    lb_route *routes
    lb_hrules req
    lb_hrules resp
    lb_tlist req_timer               # http_request_timeout, from accept or a request's first byte
    lb_tlist ka_timer                # keepalive_timeout, between requests
    lb_tlist idle_timer              # idle_timeout, client inactivity during an exchange (lazy)
    lb_tlist tls_timer               # tls.handshake_timeout, from accept (or the PROXY header)
    lb_str rid_name                  # request ids: the header's name (n = 0: off)
    lb_str rid_lower
    # HTTP/2 (fastpath/h2.pxi): on through ALPN "h2" (TLS) or h2c prior knowledge (plain)
    uint8_t h2c                      # a plain listener takes HTTP/2 connection prefaces
    uint32_t h2_max_streams          # SETTINGS_MAX_CONCURRENT_STREAMS
    uint32_t h2_window               # SETTINGS_INITIAL_WINDOW_SIZE: each stream's request body in flight
    uint32_t h2_conn_window          # the connection's receive window
    uint32_t h2_max_frame            # SETTINGS_MAX_FRAME_SIZE
    uint32_t h2_max_glitches         # frames that do no work (control floods, resets of unanswered streams) before GOAWAY
    int32_t auth                     # [auth.NAME] index of its requests; -1: none
    int32_t cache                    # [caches.NAME] index of its requests (a route may name its own); -1: none
    int32_t split                    # the split of requests no route took (the splits region's index); -1: none
    int32_t mirror                   # the mirror of its requests (w.http.mirrors), unless their route has one; -1: none

cdef struct lb_http_pool:
    uint32_t max_idle                # idle keep-alive connections per backend (this worker)
    uint8_t hk_kind                  # HKH_*
    uint8_t send_proxy               # 0 off, 1 v1, 2 v2
    lb_str hk_name                   # lower case header or cookie name; query name as written
    lb_str sticky                    # cookie name; "" = off
    uint64_t sticky_seed
    uint64_t *sticky_ids             # [capacity] cookie value per slot offset, refreshed by generation
    uint32_t sticky_generation
    lb_bconn **idle_top              # [capacity] most recently parked idle connection per slot offset
    uint32_t *idle_count             # [capacity]
    lb_tlist idle_timer              # keepalive_timeout of parked connections
    lb_tlist connect_timer           # connect_timeout
    lb_tlist resp_timer              # response_timeout: backend inactivity while a response is due (lazy)
    uint8_t h2                       # protocol = "h2": requests go as streams of multiplexed HTTP/2 connections
    lb_h2b **h2_conns                # [capacity] this worker's HTTP/2 connections per slot offset (h2 pools)
    # a tier of peer lb nodes (hash_key = "cache_key", fastpath/cache_tier.pxi)
    lb_str cdn_id                    # its CDN-Loop id: requests carrying it are not sent to a tier again (508)
    lb_hrules tier_rules             # adds "CDN-Loop: cdn_id" to the requests it sends
    lb_str tier_name[1]
    lb_str tier_value[1]

cdef struct lb_bconn:                # a backend connection of the http engine
    uint32_t kind                    # KIND_BCONN
    uint32_t state                   # BS_*
    lb_sock sk
    uint32_t flags                   # HF_*
    int32_t slot
    int32_t pool
    lb_hconn *h                      # the session using it; NULL while parked
    lb_hbuf inb                      # bytes read from the backend
    int pipe[2]                      # splice backend -> client
    uint32_t pipe_len
    uint32_t served                  # responses read on this connection
    lb_tnode tn                      # connect timer while connecting, idle timer while parked
    lb_bconn *idle_next              # per-slot stack of parked connections
    lb_bconn *idle_prev
    http_scan head_scan              # the response head still incomplete in inb

cdef struct lb_hconn:                # the client side of an http session
    lb_conn c                        # first: tunnels (Upgrade) continue as an L4 connection
    uint32_t st                      # HS_*
    uint32_t hflags                  # HF_* of the client socket
    lb_http_listener *hl
    lb_bconn *b
    lb_bconn *priv                   # send_proxy pools: this client's own idle backend connection
    lb_hbuf inb                      # bytes from the client
    lb_hbuf outb                     # bytes to the client: response heads, body copies, error pages
    lb_hbuf upb                      # bytes to the backend: the rewritten head and body copies
    uint32_t up_sent                 # of upb; a retry sends upb again from 0
    int pipe[2]                      # splice client -> backend
    uint32_t pipe_len
    # the request in flight
    int32_t route                    # -1: listener defaults
    uint8_t rq_state                 # RQ_*
    uint8_t rs_state                 # RS_*
    uint8_t rq_chunk_phase
    uint8_t rs_chunk_phase
    uint64_t rq_left                 # body bytes still to come (CL), or of the current chunk
    uint64_t rs_left
    uint8_t method                   # MT_*
    uint8_t version
    uint8_t client_ka                # the client keeps the connection after this exchange
    uint8_t backend_ka               # the backend connection may be parked after this exchange
    uint8_t replayable               # upb still holds the whole request from byte 0
    uint8_t resp_started             # a response byte arrived from the backend
    uint8_t resp_sent                # a response head went to the client
    uint8_t upgrade                  # the request asked for an Upgrade
    uint8_t expect                   # the request had Expect: 100-continue
    uint8_t set_sticky               # the response gets the sticky cookie
    uint8_t fresh                    # a parked connection failed: new connections only
    uint8_t errored                  # closing after an error page: the client may still be sending
    uint8_t no_splice                # out of pipes: copy this exchange's bodies
    uint8_t in_exchange              # a request head was taken; its end phase has not run yet
    uint8_t tls_sniff                # TLS listener: the first bytes are not looked at yet (plain HTTP?)
    uint8_t n_rq_rules
    uint8_t n_rs_rules
    uint64_t body_max                # max_body_size of this request's listener or route; 0: none
    uint64_t body_seen               # chunked request: data bytes announced so far
    lb_hrules *rq_rules[MAX_RULESETS]    # header rules the request's steps chose, applied in order (later sets win)
    lb_hrules *rs_rules[MAX_RULESETS]    # and the response's
    uint64_t key                     # hash key of the request
    int32_t sticky_slot              # the backend the request's sticky cookie names, or -1
    uint64_t b_last_ms               # last backend activity
    uint64_t c_last_ms               # last client activity
    lb_tnode tphase                  # request, keep-alive, connect, linger timers
    lb_tnode tidle                   # client idle timer (exchange), response timer via tresp
    lb_tnode tresp
    sockaddr_storage local           # the address the client connected to
    char ip[48]                      # the client's address as text (X-Forwarded-For)
    uint32_t ip_len
    shm_log_record *lrec             # the access-log record being built, while an exchange is in flight
    lb_hconn *free_next
    lb_h2 *h2                        # HTTP/2: the connection's session (h2role H2_CONN), or its stream's (H2_STREAM)
    uint8_t h2role                   # 0: HTTP/1; H2_CONN: the connection; H2_STREAM: one request of it
    uint32_t park_seq                # HS_PARKED: the number of its verification, to know its answer
    uint8_t park_step                # HS_PARKED: the request step to go on from
    uint32_t cut_off                 # a part of the target the backend does not get (an API key's query
    uint32_t cut_len                 # parameter), from the start of the head; cut_len 0: none
    lb_cache_x *cx                   # the cache's state of the exchange in flight (fastpath/cache.pxi); NULL: none
    uint8_t cache_note               # CN_*: what the cache did with the request (its Cache-Status); 0: no cache
    int32_t split                    # the split that chose the pool (-1: none)
    uint32_t split_cookie            # the response sets the split cookie to bucket split_cookie - 1 (0: none)
    uint8_t split_variant            # ... and the variant it chose
    int32_t mirror                   # the request is copied to this mirror's pool when it is sent (-1: not)
    http_scan rq_scan                # the request head, then its chunk lines and trailers, still incomplete in inb
    http_scan rs_scan                # the response's chunk lines and trailers still incomplete
    uint8_t sink                     # the client left during a response its cache fill stores for others: read on, without it (h_sink)


cdef struct lb_auth_cache:            # a success of HTTP Basic (fastpath/auth_basic.pxi)
    uint8_t mac[16]                  # HMAC-SHA256 of the credentials under the worker's secret (cut)
    uint64_t until_ms
    uint32_t user                    # index in the auth's users

cdef enum:
    JWT_MAX_KEYS = 64                # keys of one JWKS
    JWT_KID_MAX = 64                 # bytes of a kid
    JWT_BLOB_MAX = 262144            # bytes of one JWKS's packed keys in shared memory
    JWT_MAX_CLAIM_HEADERS = 16       # claims_to_headers entries
    JWT_MAX_LIST = 16                # audiences, required claims
    JWT_CLAIM_VALUE_MAX = 256        # bytes of a claim forwarded in a header

cdef struct lb_jwt_key:               # one key of a JWKS, as a worker built it (fastpath/auth_jwt.pxi)
    EVP_PKEY *pkey                   # RSA, EC, Ed25519 public key; NULL for an HMAC secret
    uint8_t *secret                  # oct: the HMAC secret
    uint32_t secret_len
    uint32_t algs                    # bit JA_* of each algorithm the key verifies: its JWKS alg, else its type's
    uint32_t kid_len                 # 0: no kid
    char kid[JWT_KID_MAX]
    void *vctx[12]                   # per algorithm (JA_*): an EVP_PKEY_CTX ready to verify, made at first use

cdef struct lb_jwt_cache:             # a verified signature (fastpath/auth_jwt.pxi)
    uint8_t sha256[32]               # of the whole token
    uint64_t until_ms                # wall clock: its exp plus the leeway

cdef struct lb_jwt_rt:                # a worker's view of one [auth.NAME] of type jwt (fastpath/auth_jwt.pxi)
    uint32_t gen                     # the shared keys' generation the keys were built from
    uint8_t built                    # keys built at least once
    lb_jwt_key keys[JWT_MAX_KEYS]
    uint32_t n_keys
    uint8_t *blob                    # scratch: a copy of the shared keys (JWT_BLOB_MAX bytes)
    lb_jwt_cache *cache              # verified signatures, by the token's SHA-256; a power of two of them
    uint32_t cache_mask
    uint32_t max_token               # bytes of a token (more: 401)
    uint8_t *hbuf                    # the decoded header, payload and signature of the token in hand
    uint8_t *pbuf                    # (the payload stays there for the limits keyed by a claim)
    uint32_t plen                    # the payload's length in pbuf
    uint8_t *sbuf
    double leeway                    # seconds
    lb_str issuer                    # "" = not checked
    lb_str audiences[JWT_MAX_LIST]
    uint32_t n_audiences             # 0: a token with an aud is refused
    lb_str required[JWT_MAX_LIST]    # claims that must be present
    uint32_t n_required
    lb_str cookie                    # "" = the Authorization header only
    lb_str claims[JWT_MAX_CLAIM_HEADERS]       # claims_to_headers: the claims,
    lb_str headers[JWT_MAX_CLAIM_HEADERS]      # their headers as written and in lower case,
    lb_str lowers[JWT_MAX_CLAIM_HEADERS]
    lb_str values[JWT_MAX_CLAIM_HEADERS]       # and this request's values (JWT_CLAIM_VALUE_MAX each)
    uint32_t n_claims

cdef struct lb_auth_rt:               # a worker's view of one [auth.NAME] (fastpath/auth.pxi)
    uint8_t basic                    # HTTP Basic (else API keys)
    char **users                     # basic: user names, sorted (strcmp), and their hashes
    char **hashes
    uint32_t n_users
    lb_auth_cache *cache             # basic: successes, by their MAC; a power of two of them
    uint32_t cache_mask
    uint64_t cache_ttl_ms
    shm_auth *shm
    uint8_t strip                    # remove the key's header before the backend
    uint8_t from_query               # the key comes from a query parameter (else a header)
    lb_str key_name                  # header (lower case) or query parameter name
    lb_str id_name                   # identity header, as written, and lower case
    lb_str id_lower
    lb_str id_value                  # buffer of AUTH_ID_MAX bytes, this request's identity
    lb_hrules fields                 # set: the identity; remove: the key's header (strip)
    lb_str realm                     # the answer's WWW-Authenticate realm: the auth's name
    lb_jwt_rt *jwt                   # JWT: its keys, cache and claims (NULL: not a JWT auth)

cdef struct lb_split_rt:             # a worker's view of one split (fastpath/split.pxi)
    shm_split *shm
    uint8_t sticky                   # SPK_*: where a user's bucket comes from
    uint8_t override                 # SPK_HEADER, SPK_COOKIE: a variant asked for by name; 0: none
    lb_str sticky_name               # cookie name as written, header name lower case
    lb_str override_name
    lb_str *variant_names            # [n_variants] pool names, as the override names them
    uint32_t n_allow                 # override only from the addresses of these ACLs (0: from anywhere)
    uint32_t allow[ACL_MAX_PER_LIST]
    uint64_t seed                    # of the cookie's check and of the key hash: the split's name
    uint32_t met_base                # metrics: the entity of variant 0 (UINT32_MAX: none)

cdef struct lb_mirror_rt:            # a listener's or route's mirror (fastpath/mirror.pxi)
    int32_t pool                     # the shadow pool
    uint64_t threshold               # a request is copied when 32 random bits are below it
    uint32_t max_concurrent          # copies in flight at once, this worker
    uint32_t max_body                # request bytes (head and body) a copy may have
    uint32_t active
    shm_mirror_stats *stats          # this worker's counters of it
    lb_tlist timer                   # each copy's whole life: connect, send, the answer discarded

cdef struct lb_mirror:               # one copy in flight
    uint32_t kind                    # KIND_MIRROR (first: epoll events find the kind here)
    uint32_t state                   # MS_*
    int fd
    lb_mirror_rt *rt
    char *buf                        # the request as sent to the backend, with Connection: close
    uint32_t len
    uint32_t sent
    lb_tnode tn
    lb_mirror *next                  # free or closed list

cdef struct lb_http_worker:
    http_req *req                    # scratch: the head being handled
    http_req *resp
    http_req *scratch                # trailers
    char **free_bufs
    int n_free_bufs
    lb_hconn *free_hconns
    lb_bconn *free_bconns
    lb_bconn *closed_b               # closed this turn, freed after its events
    lb_tlist linger_timer            # closing connections draining the client's last bytes
    # HTTP/2 (fastpath/h2.pxi)
    nghttp2_session_callbacks *h2cbs
    nghttp2_option *h2opt
    nghttp2_nv *h2nv                 # scratch: a response's fields for nghttp2
    char *h2low                      # scratch: their names in lower case
    lb_h2 *h2_all                    # every HTTP/2 connection of the worker (GOAWAY at stop)
    char answer_fields[LIMIT_ANSWER_MAX] # fields for lb's next own answer (429: Retry-After, RateLimit...),
    uint32_t answer_len              # set by a request step that refuses, emitted and cleared by h_error
    lb_auth_rt *auth                 # [n_auth]: each API-key auth's fields for the backend
    uint32_t n_auth
    uint8_t id_len                   # the identity the auth step found for the request in flight (0: none),
    char id[AUTH_ID_MAX]             # for the limits keyed by api_key; set anew by each request's auth step
    void *verifier                   # HTTP Basic: the threads that check passwords off the loop (auth_basic.pxi)
    uint32_t park_seq                # numbers the requests parked for them
    lb_cache_wk *cache               # the [caches.NAME] this worker serves (fastpath/cache.pxi); NULL: none
    const uint8_t *jwt_claims        # the payload (JSON) of the request's verified JWT, for the limits keyed
    uint32_t jwt_claims_len          # by jwt:CLAIM; 0: none; set anew by each request's auth step
    nghttp2_session_callbacks *h2bcbs    # HTTP/2 to backends (fastpath/h2_backend.pxi): the client sessions' callbacks
    nghttp2_option *h2bopt
    lb_h2bs *free_h2bs               # backend streams' structs for reuse
    uint32_t n_free_h2bs
    lb_split_rt *splits              # [n_splits] the splits of the config (fastpath/split.pxi)
    uint32_t n_splits
    lb_mirror_rt *mirrors            # [n_mirrors] the mirrors of its listeners and routes (fastpath/mirror.pxi)
    uint32_t n_mirrors
    lb_mirror *mirror_free
    lb_mirror *mirror_closed         # closed this turn, freed after its events


# ---- Part 4: TLS (fastpath/tls.pxi) ------------------------------------------------

cdef struct lb_tls_name:
    char *name                       # lower case; a wildcard: its suffix with the dot (".example.com")
    SSL_CTX *ctx

cdef struct lb_tls_server:           # a TLS listener's contexts; built by the supervisor before fork
    SSL_CTX *dflt                    # no or unknown server name; every handshake starts from it
    lb_tls_name *exact               # sorted by name
    uint32_t n_exact
    lb_tls_name *wild                # sorted by suffix; "*.example.com" matches exactly one more label
    uint32_t n_wild
    unsigned char *alpn              # the listener's protocols, in the wire format, in preference order
    uint32_t alpn_len
    uint64_t handshake_timeout_ms
    lb_hrules resp                   # http: fields every final response gets (Strict-Transport-Security)
    uint8_t client_cert              # client certificates are asked for and verified
    # http, with client_cert: what the client_cert step tells the backend, filled
    # per request (set: fields with a value; remove: those without, so that a
    # client's own copies never pass)
    lb_hrules client_fields
    lb_str client_names[3]           # subject, fingerprint, verify: as configured
    lb_str client_lower[3]
    lb_str client_values[3]          # buffers of CLIENT_VALUE_MAX bytes

# A client's TLS connection after its handshake (fastpath/tls_record.pxi):
# OpenSSL's SSL object is freed and lb keeps the record layer's state alone,
# a few hundred bytes and two cipher contexts; buffers exist only while bytes
# are in them.
cdef struct lb_tlsr:
    int fd
    uint16_t flags                   # TR_*
    uint16_t version                 # TLS1_2_VERSION or TLS1_3_VERSION
    uint16_t suite                   # the cipher suite's IANA number
    uint8_t aead                     # AEAD_*
    uint8_t hlen                     # TLS 1.3: the suite's hash length (key updates)
    uint8_t nst                      # handshake: TLS 1.3 tickets written (the first write sequence number)
    uint8_t secrets                  # handshake: which TLS 1.3 traffic secrets the key log gave (1 read, 2 write)
    uint8_t hs_type                  # a post-handshake handshake message being read: its type,
    uint8_t hs_got                   # ... the bytes of its header and body read so far,
    uint8_t hs_body                  # ... and its body (the only one kept is a KeyUpdate's byte)
    uint8_t quiet                    # records in a row that carried no application data
    uint32_t hs_need                 # ... and how many more there are
    char *rbuf                       # bytes read from the socket, TLSR_RBUF when allocated
    uint32_t roff                    # the first not yet taken
    uint32_t rlen
    uint32_t poff                    # decrypted application data in rbuf not yet given out
    uint32_t plen
    char *wbuf                       # records the socket has not taken yet
    uint32_t woff
    uint32_t wlen
    uint32_t wplain                  # the caller's bytes those records carry (0: alerts, key updates)
    EVP_CIPHER_CTX *rx
    EVP_CIPHER_CTX *tx
    uint64_t rseq
    uint64_t wseq
    uint8_t riv[12]
    uint8_t wiv[12]
    uint8_t rsecret[48]              # TLS 1.3 traffic secrets, for key updates
    uint8_t wsecret[48]
    char *peer                       # the client's certificate, for the client_cert step: its
                                     # subject (RFC 2253) then its SHA-256 in hex; NULL: none
    uint32_t peer_len

cdef struct lb_tls_client:           # a pool's TLS to its backends; built by the supervisor before fork
    SSL_CTX *ctx
    char *sni                        # sent and verified; "" = none sent, the backend's IP address verified
    uint8_t verify


# ---- Part 5: HTTP/2 to clients (fastpath/h2.pxi) ------------------------------------
# libnghttp2 keeps the protocol (frames, HPACK, flow control, stream states).
# Each stream's request becomes an HTTP/1.1 request on an lb_hconn of its own
# (h2role H2_STREAM), whose client transport is the stream: it goes through the
# same parser, phases, routing, retries and logs as any HTTP/1.1 request.

cdef struct lb_bytes:                # a growable byte buffer, allocated while it holds bytes
    char *p
    uint32_t off
    uint32_t len
    uint32_t cap

cdef struct lb_h2:
    nghttp2_session *ng
    lb_worker *w
    lb_hconn *h                      # the connection (h2role H2_CONN)
    lb_h2s *streams                  # the streams lb holds state for
    lb_h2 *next                      # w.http.h2_all
    lb_h2 *prev
    lb_bytes wbuf                    # frames made and not yet taken by the socket
    uint32_t n_streams
    uint32_t glitches                # frames that did no work, and resets of streams not yet answered
    uint64_t answered                # streams whose response ended
    uint64_t decoded                 # header bytes of the block coming in (HPACK bombs)
    uint8_t dying                    # being torn down: streams detach without calling nghttp2
    uint8_t goaway                   # 0; 1 the shutdown notice and its PING went out; 2 ended for abuse;
                                     # 3 the final GOAWAY went out
    uint8_t empty_run                # empty DATA frames in a row
    int32_t hblock                   # the stream whose header block is coming in (0: none)
    uint32_t n_open                  # streams lb took that nghttp2 has not closed (max_concurrent_streams)
    uint8_t advertised               # lb's SETTINGS went out, with the limit clients are told

cdef struct lb_h2s:
    int32_t id
    uint8_t closed                   # nghttp2 closed it
    uint8_t reset                    # ... before lb ended its response (a client reset, an error)
    uint8_t req_end                  # the request ended (END_STREAM)
    uint8_t req_chunked              # its body goes to the backend chunked (no content-length)
    uint8_t has_cl
    uint8_t is_head
    uint8_t bad                      # the header block broke a limit: this status answers it
    uint8_t ts                       # TX_*: the response as h writes it
    uint8_t tck                      # CKD_*: its chunked framing
    uint8_t tx_eof                   # the response's body is whole in tx
    uint8_t deferred                 # nghttp2 waits for data (resume_data)
    uint8_t submitted                # the final response head went to nghttp2
    uint8_t ended                    # lb's END_STREAM went out
    uint8_t wblocked                 # h waits for room in tx
    uint8_t req_whole                # h read the request whole (its length or chunked end)
    uint8_t held                     # a small body with a length: no session before END_STREAM
    uint8_t expect                   # Expect: 100-continue
    uint16_t bad_status
    uint64_t tleft
    uint64_t cl                      # the request's content-length
    uint64_t rx_total                # DATA bytes it sent
    lb_h2 *sess
    lb_hconn *h                      # the request's session; NULL once it let go
    lb_bytes rx                      # the request, as HTTP/1.1 bytes, for h to read
    uint64_t rx_data                 # DATA bytes in rx not yet given back to the flow-control window
    lb_bytes hdrs                    # while the header block comes: its regular fields, as HTTP/1.1 lines
    lb_bytes cookie                  # cookie fields, joined with "; " (RFC 9113 8.2.3)
    lb_bytes pseudo                  # :method, :path, :authority, host values, back to back
    uint16_t p_len[4]
    lb_bytes tx                      # the response body, framing removed, for nghttp2
    lb_bytes trailers                # response trailer lines, sent as a HEADERS frame at the end
    lb_h2s *next
    lb_h2s *prev


# ---- Part 6: HTTP/2 to backends (fastpath/h2_backend.pxi) -----------------------------
# A pool with protocol = "h2" speaks to its backends over multiplexed HTTP/2
# connections (lb_h2b, one nghttp2 client session each). A request's backend
# connection (lb_bconn) is then a stream of one of them: its transport
# (XPRT_H2B) turns the HTTP/1.1 request the engine writes into HEADERS and DATA
# frames, and the stream's frames back into an HTTP/1.1 response for it to read.

cdef struct lb_h2bs
cdef struct lb_h2b:
    lb_conn c                        # first (kind KIND_H2B): the pending list runs it; c.sk[SIDE_BACKEND] is the socket
    nghttp2_session *ng
    lb_worker *w
    int32_t pool
    int32_t slot
    uint32_t bflags                  # HF_* of the socket
    uint8_t bstate                   # H2B_*
    uint8_t goaway                   # the backend sent GOAWAY: no new streams
    uint8_t dying                    # being torn down: streams detach without calling nghttp2
    uint8_t settled                  # the backend's SETTINGS arrived
    uint32_t n_streams               # streams (or requests waiting to become one) attached
    uint32_t hint_streams            # until then: the stream limit another connection to it learned (0: none)
    uint32_t served                  # responses it carried whole
    lb_bytes wbuf                    # frames made and not yet taken by the socket
    lb_tnode tn                      # the pool's idle_timer while no stream is attached
    lb_h2bs *streams
    lb_h2b *next                     # the slot's connections (lb_http_pool.h2_conns)
    lb_h2b *prev

cdef struct lb_h2bs:                 # one request on an lb_h2b; the ctx of its lb_bconn's XPRT_H2B transport
    int32_t id                       # 0 until its HEADERS were submitted
    uint8_t closed                   # nghttp2 closed it
    uint8_t reset                    # ... before its response ended (or the connection failed)
    uint8_t retry                    # ... and the backend never processed it (GOAWAY, REFUSED_STREAM)
    uint8_t ts                       # TX_*: the request body as the engine writes it
    uint8_t tck                      # CKD_*: its chunked framing
    uint8_t tx_eof                   # the request body is whole in tx
    uint8_t deferred                 # nghttp2 waits for data (resume_data)
    uint8_t wblocked                 # the engine waits for room in tx
    uint8_t sent                     # its HEADERS went out
    uint8_t is_head                  # HEAD: the response has no body whatever it says
    uint8_t v10                      # an HTTP/1.0 request: a response of unknown length ends with the stream
    uint8_t rs                       # H2R_*: the response as the engine reads it
    uint8_t rs_chunked               # its body goes to the engine chunked (no content-length)
    uint8_t has_cl
    uint16_t status                  # of the header block coming in (0: trailers)
    uint64_t tleft
    lb_h2b *conn
    lb_http_worker *hw               # whose free list it goes back to
    lb_bconn *b                      # the request's backend connection; NULL once the engine let go
    lb_bytes tx                      # the request body, framing removed, for nghttp2
    lb_bytes trailers                # request trailer lines, sent as a HEADERS frame at the end
    lb_bytes rx                      # the response, as HTTP/1.1 bytes, for the engine to read
    uint64_t rx_data                 # DATA bytes in rx not yet given back to the flow-control window
    uint32_t hbytes                  # of the header block coming in (H2B_HEAD_MAX)
    uint8_t skip_block               # a header block lb drops (a 101, trailers of a body of known length)
    lb_h2bs *next
    lb_h2bs *prev


# ---- Part 7: the shared cache (fastpath/cache.pxi) ----------------------------------
# One region per [caches.NAME], apart from the generation's region: the
# supervisor creates it once and keeps it over reloads (while the cache's size
# stays the same) and worker respawns. Objects live in fixed-size blocks
# chained by block_next; the index is a bucket array of entry chains; eviction
# is S3-FIFO over entries (a small and a main queue, ghost hashes). Every
# change of the index, the queues or the free stacks is made under `lock`
# (the pid of its holder: the supervisor takes over the lock of a worker that
# died holding it, and empties the cache). Readers take no lock: an entry's
# seq is odd while it changes, and a reader checks it after every copy.

cdef enum:
    CACHE_MAGIC = 0x6c626361         # "lbca"
    CACHE_VERSION = 2                # 2: shm_cache_stats gained range_fills, range_fill_failed
    CACHE_BLOCK = 4096               # bytes of one block of object data
    CACHE_ROWS = 130                 # counter rows: 2 x MAX_WORKERS (64) + 2, beside any generation's rows
    CACHE_KEY_MAX = 4096             # longer keys (host + target) are not cached
    CACHE_META_MAX = 1024            # the Vary names and the tags of one object, each
    CACHE_HEAD_MAX = 32768           # a stored response head
    CACHE_FILLS = 1024               # misses being fetched, by key hash (collapsed forwarding)

cdef struct shm_cache_head:          # writer: under lock (supervisor at creation and purges; workers)
    uint32_t magic
    uint32_t version
    uint64_t total_size              # the mapping's bytes: the configured size, never more
    uint32_t n_blocks
    uint32_t n_entries
    uint32_t n_buckets               # a power of two
    uint32_t n_ghost                 # a power of two
    uint64_t max_object              # max_object_size
    uint32_t lock                    # 0, or the pid of the process changing the index
    uint32_t small_head              # the queues, entry index + 1 (0: empty): head = newest
    uint32_t small_tail
    uint32_t main_head
    uint32_t main_tail
    uint32_t small_blocks            # blocks of the entries in each queue
    uint32_t main_blocks
    uint32_t small_cap               # S3-FIFO: the small queue holds a tenth of the blocks
    uint32_t free_blocks             # depth of the free block stack
    uint32_t free_entries            # depth of the free entry stack
    uint64_t objects                 # live entries
    uint64_t bytes                   # their stored bytes (key, metadata, head, body)
    uint64_t seed                    # of the key hashes
    uint64_t off_rows                # offsets from the start of the mapping
    uint64_t off_buckets
    uint64_t off_entries
    uint64_t off_next
    uint64_t off_bstack
    uint64_t off_estack
    uint64_t off_ghost
    uint64_t off_blocks
    uint64_t resets                  # times the supervisor emptied it (a worker died holding the lock)
    uint64_t off_fills               # CACHE_FILLS shm_cache_fill: the misses being fetched (collapsed forwarding)
    uint8_t _pad[88]

cdef struct shm_cache_entry:         # writer: under the region's lock; seq odd while it changes
    uint32_t seq
    uint32_t chain                   # next entry of its bucket, index + 1
    uint32_t q_prev                  # its queue, index + 1
    uint32_t q_next
    uint32_t first                   # first block
    uint32_t n_blocks
    uint64_t hash                    # of the key (host and target)
    uint64_t vhash                   # of the request's values of the Vary fields (0: no Vary)
    uint8_t state                    # CE_*
    uint8_t queue                    # CQ_*
    uint8_t freq                     # hits since it entered its queue, at most 3 (S3-FIFO)
    uint8_t flags                    # CEF_*
    uint16_t status
    uint16_t key_len
    uint16_t vary_len                # the Vary names: lower case, ","-separated
    uint16_t tags_len                # the tags: " "-separated
    uint32_t head_len                # status line and fields, each line with CRLF, no empty line
    uint64_t body_len
    int64_t resp_ms                  # unix ms the response was received
    int64_t age0                     # its corrected initial age, seconds (RFC 9111 4.2.3)
    int64_t fresh                    # its freshness lifetime, seconds
    int32_t stale_if_error           # seconds it may still answer, stale, when the origin fails (RFC 5861)
    int32_t stale_while_revalidate   # seconds it may still answer, stale, while refreshed in the background (RFC 5861)
    uint8_t sent                     # 1: spliced from the file, so pipes and sockets may hold its pages (punched when it goes: cache_punch); writer: any reader sets it, the lock holder clears it
    uint8_t _pad[31]

cdef struct shm_cache_fill:          # writer: the worker that claims it (compare-and-swap on hash); supervisor (a dead pid's)
    uint64_t hash                    # the key being fetched; 0: free
    uint32_t pid                     # who fetches it
    uint32_t pass_                   # 1: not storable, do not wait for it (until until_ms)
    int64_t until_ms                 # the claim (or the pass) ends then at the latest
    uint64_t _pad

cdef struct shm_cache_stats:         # writer: each worker, its row (the row of its pid's slot)
    uint64_t hit
    uint64_t miss                    # forwarded: uri-miss, vary-miss
    uint64_t stale                   # forwarded: the stored response was stale
    uint64_t bypass                  # not looked up: method, Authorization, no-cache request, a body
    uint64_t stored
    uint64_t evicted
    uint64_t not_stored              # forwarded and not storable (directives, status, size, framing)
    uint64_t invalidated             # entries removed by unsafe methods
    uint64_t purged                  # entries removed by PURGE requests
    uint64_t hit_bytes               # body bytes served from the cache
    uint64_t store_failed            # storable, but no room could be made or the lock was busy
    uint64_t revalidated             # stale entries the origin confirmed (304) and refreshed
    uint64_t stale_served            # stale entries served because the origin failed (stale-if-error)
    uint64_t collapsed               # requests that waited for another's fetch of their key
    uint64_t refreshed               # background revalidations (stale-while-revalidate) that refreshed their entry
    uint64_t refresh_failed          # background revalidations the origin failed (error, timeout, cut short)
    uint64_t range_fills             # Range misses whose background fetch of the whole response came whole (handed to the store)
    uint64_t range_fill_failed       # those the origin failed, or whose response was larger than max_object_size
    uint64_t _spare[6]               # room for counters to come without another CACHE_VERSION

cdef struct lb_cache_keycfg:         # a cache's key: key_host, key_query, key_query_drop|keep, key_headers
    uint8_t host                     # the host is part of the key
    uint8_t query                    # CKQ_KEEP | CKQ_SORT | CKQ_DROP
    uint8_t keep_list                # 1: pat lists the parameters kept (key_query_keep); 0: those dropped
    uint8_t plain                    # keep, no pattern, no header: the target as it came (no parsing)
    uint32_t n_pat                   # at most 16
    lb_str pat[16]                   # parameter names as written; a prefix pattern without its "*"
    uint8_t pat_prefix[16]
    uint32_t n_headers               # at most 8
    lb_str headers[8]                # lower case

cdef struct lb_cache_rt:             # a worker's view of one cache
    shm_cache_head *hd
    char *base
    shm_cache_stats *st              # this worker's row
    uint32_t *buckets
    shm_cache_entry *entries
    uint32_t *next
    uint32_t *bstack
    uint32_t *estack
    uint64_t *ghost
    char *blocks
    shm_cache_fill *fills
    uint32_t pid
    lb_str tag_header                # lower case; n = 0: no tags
    uint32_t n_purge                 # purge_allow: ACL indices
    uint32_t purge[8]
    lb_cache_keycfg key              # how requests are keyed (fastpath/cache_key.pxi)
    lb_cache_rt *disk                # the cache's disk tier (fastpath/cache_disk.pxi); NULL: none
    uint64_t *csum                   # a disk tier's view: the checksum of each entry (shm_disk_head)
    uint32_t *verified               # a disk tier's view: the seq each entry's checksum was last found good at (shared, not on disk)
    int32_t zc_fd                    # the memory tier's file (/dev/shm), when zc: hits go out of it by splice(2), freed blocks are punched out of it (cache_send.pxi)
    uint8_t zc                       # 1: zc_fd is open (this process's view; a disk tier's is 0)
    uint8_t range_fill               # range_fill: a Range miss fetches the whole response in the background

cdef struct lb_cache_x:              # one exchange's cache state (allocated per cacheable request)
    uint32_t cache                   # index in lb_cache_wk.caches
    uint8_t fill                     # a GET that may be stored: req holds its head
    uint8_t filling                  # the response is being stored: obj holds it
    uint8_t inval                    # an unsafe method: its target is invalidated on success
    uint8_t serving                  # answered by lb: the body comes from the cache (or local)
    uint8_t auth                     # the request had Authorization
    uint8_t ranged                   # the request had a Range: its 206 may be stored (a piece)
    uint8_t stored
    uint64_t hash
    char *key                        # the key (host and target), key_len bytes (malloc)
    uint32_t key_len
    uint32_t host_len                # the host part of the key
    char *req                        # fill: the request head (Vary values at store time)
    uint32_t req_len
    char *obj                        # filling: key, Vary names, tags, head, then the body as it comes
    uint64_t obj_len
    uint64_t obj_cap
    uint32_t prefix_len              # key + Vary names + tags + head
    shm_cache_entry meta             # filling: the entry to publish (sizes, times, flags)
    # serving
    uint32_t entry
    uint32_t seq
    uint32_t blk                     # block of the next byte
    uint32_t blk_off
    uint64_t left                    # body bytes still to send (the pipe's not counted)
    uint8_t zpipe_on                 # zpipe is a pipe of the worker's (cache_send.pxi); 0 after memset
    int zpipe[2]
    uint32_t zpipe_len               # body bytes in it, checked, not yet sent
    char *local                      # a local answer's body (PURGE); NULL: the entry's
    uint64_t local_off
    int64_t ttl
    char hdr[256]                    # the fields the response gets: Age, Cache-Status, Content-Range
    uint32_t hdr_len
    # revalidation: the request went on with the stale entry's validators
    uint8_t has_stale                # stale_entry/seq: a stale entry of the key (stale-if-error)
    uint8_t reval
    uint32_t stale_entry
    uint32_t stale_seq
    lb_hrules rules                  # If-None-Match / If-Modified-Since, for the origin
    lb_str rv_name[2]
    lb_str rv_lower[2]
    lb_str rv_value[2]
    char validators[320]             # their values
    # collapsed forwarding
    uint8_t claimed                  # this request fetches its key for the others (a fill slot holds its hash)
    uint8_t waiting                  # parked until the key's fetch by another ends (twait polls)
    int64_t wait_until_ms
    lb_tnode twait
    # a body of a length known at its end being stored (fastpath/cache_swr.pxi):
    # obj collects it as it came (chunked: framing and all), up to fill_max
    # bytes; it is decoded once whole. 1: chunked, 2: until close
    uint8_t chunked_fill
    uint64_t fill_max
    int64_t req_stale_if_error       # the request's own stale-if-error=N (RFC 5861 4); -1: none
    lb_cache_rt *src                 # serving from a disk tier (cache_disk.pxi); NULL: from caches[cache]
    lb_cache_refresh *rf             # a Range miss's whole fetch, made ready, sent once the origin's 206 says how large the object is (range_fill_go)
    lb_cache_mp *mp                  # a multipart/byteranges answer to several ranges (malloc); NULL: none

cdef enum:
    CACHE_MAX_RANGES = 32            # ranges of one request answered as parts; more get the whole 200
    CACHE_CTYPE_MAX = 160            # bytes of a stored Content-Type repeated in each part

cdef struct lb_cache_mp:             # the parts of a multipart/byteranges answer (cache.pxi, cache_serve)
    uint32_t n                       # parts
    uint32_t i                       # the part being sent; n: the closing delimiter
    uint64_t first[CACHE_MAX_RANGES]
    uint64_t last[CACHE_MAX_RANGES]
    uint64_t body_len                # the stored body's length
    uint64_t body_off                # its first byte's offset in the entry's blocks (of a stored piece: where byte 0 would be, mod 2**64)
    uint32_t first_blk               # the entry's first block
    uint64_t part_left               # the current part's body bytes still to send
    char pre[320]                    # the delimiter and fields before the current part (or the last delimiter)
    uint32_t pre_len
    uint32_t pre_off                 # bytes of pre already sent
    char boundary[24]
    uint32_t boundary_len
    char ctype[CACHE_CTYPE_MAX]      # the stored Content-Type, for each part; ctype_len 0: none
    uint32_t ctype_len

cdef struct lb_cache_wk:             # a worker's caches
    lb_cache_rt *caches
    uint32_t n
    char *scratch                    # CACHE_HEAD_MAX + CACHE_KEY_MAX: a stored head, a key
    http_req *req                    # scratch: a saved request head parsed again
    http_req *merged                 # scratch: a stored head updated by a 304
    lb_tlist wait_list               # requests waiting for another's fetch (collapsed forwarding), polled
    lb_cache_x *free_cx
    # stale-while-revalidate (fastpath/cache_swr.pxi)
    lb_tlist refresh_timer           # background revalidations in flight: their timeout
    uint32_t refreshing              # how many (at most CACHE_REFRESH_MAX)
    lb_cache_refresh *refresh_closed # closed in this turn, freed once its events are done
    lb_hconn *refresh_h              # a blank exchange that carries a refresh's cx through cache_fill_start
    http_req *refresh_resp           # scratch: a refresh's response head

cdef struct lb_cache_refresh:        # one background fetch in flight: a revalidation (stale-while-revalidate) or a Range miss's fill
    uint32_t kind                    # KIND_CACHE_REFRESH (first: epoll events find the kind here)
    uint32_t state                   # RF_*
    uint8_t whole                    # 1: a Range miss's fetch of the whole response (no stale entry behind it)
    uint8_t too_big                  # its body is larger than max_object_size
    uint8_t head_seen                # the final head has come (refresh_head)
    lb_cache_x *owner                # RF_PENDING: the exchange whose answer it waits for (its cx.rf)
    int fd
    int32_t slot                     # the backend it went to
    lb_cache_x *cx                   # the key, its claim, the request head (Vary values) to store with
    lb_http_listener *hl             # of the request that started it (parse limits)
    char *req                        # the request to send, req_len bytes (sent: how many went)
    uint32_t req_len
    uint32_t sent
    char *buf                        # the response as it comes, len bytes of cap
    uint64_t len
    uint64_t cap
    lb_tnode tn
    lb_cache_refresh *next           # closed list


# The disk tier of a cache (fastpath/cache_disk.pxi, docs/cache.md "Disk
# tier"): a file of disk_size bytes mapped MAP_SHARED by the supervisor and
# inherited by the workers: this header (its first 4 KiB), the checksum of
# each entry, then a region in the format above (shm_cache_head and the
# rest), whose entries stay where they are from one start to the next.

cdef enum:
    DISK_MAGIC = 0x6b64626c          # "lbdk"
    DISK_VERSION = 1                 # with CACHE_VERSION and CACHE_BLOCK: a file of another is made anew
    DISK_HEAD = 4096

cdef struct shm_disk_head:           # writer: the supervisor (at open and at a clean stop)
    uint32_t magic
    uint32_t version
    uint32_t cache_version           # CACHE_VERSION of the region
    uint32_t block                   # CACHE_BLOCK
    uint64_t file_size               # disk_size
    uint64_t off_csum                # n_entries uint64_t: entry i's checksum (its fields and bytes)
    uint64_t off_region
    uint64_t region_size
    uint32_t clean                   # 1: the last lb to use it stopped cleanly (0 while one runs)
    uint32_t _pad0
    uint64_t generation              # starts of lb with this file
    int64_t created_ms
