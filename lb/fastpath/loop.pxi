# The worker loop: epoll over the listening sockets of this worker's slot, every
# connection's two sockets, and a signalfd for control. The GIL is released once,
# around worker_loop; nothing below it touches a Python object.

cdef enum:
    MAX_EVENTS = 256
    ACCEPT_BATCH = 64
    FD_RESERVE = 32              # fds kept free for pipes, the signalfd, and logging


cdef enum:
    ACCEPT_STOP = -1                 # no more accepting this turn: nothing queued, or out of fds
    ACCEPT_SKIP = -2                 # that one failed (ECONNABORTED and the like); the next may not


cdef int accept_client(lb_worker *w, lb_listener_rt *l, sockaddr_storage *peer) noexcept nogil:
    """accept4 on l, the peer's address into peer: the fd, ACCEPT_STOP or ACCEPT_SKIP."""
    cdef socklen_t alen = sizeof(sockaddr_storage)
    cdef int fd = accept4(l.fd, <sockaddr *>peer, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
    if fd >= 0:
        return fd
    if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
        accept_fd_error(w)
        return ACCEPT_STOP
    if errno == EAGAIN:
        return ACCEPT_STOP
    return ACCEPT_SKIP


cdef bint accept_register(lb_worker *w, lb_conn *c, int fd, uint64_t data) noexcept nogil:
    """Count an accepted client (c.listener set) and add it to the epoll set under data."""
    cdef epoll_event ev
    w.fds += 1
    conn_count_open(w, c)
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = data
    return epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) == 0


cdef void on_accept(lb_worker *w, int li) noexcept nogil:
    cdef lb_listener_rt *l = &w.listeners[li]
    cdef lb_conn *c
    cdef int fd, i
    for i in range(ACCEPT_BATCH):
        if not accept_room(w, l):
            return
        c = conn_alloc(w)
        if c == NULL:
            return
        fd = accept_client(w, l, &c.peer)
        if fd < 0:
            conn_release(w, c)
            if fd == ACCEPT_STOP:
                return
            continue
        sock_plain(&c.sk[SIDE_CLIENT], fd)
        c.listener = li
        c.pool = l.pool
        log_conn_start(w, c)
        c.state = CS_CONNECTING
        met_conn_open(w, c)
        if not accept_register(w, c, fd, <uint64_t><size_t>c | SIDE_CLIENT):
            conn_close(w, c, True)
            continue
        # an accept_proxy listener knows the client's address only from its
        # header: its accept phase runs once that is read (conn_proxy_read)
        if not l.accept_proxy and phase_accept(w, l, c) != STEP_CONTINUE:
            conn_refuse(w, c)
            continue
        conn_start(w, c)


cdef inline void conn_refuse(lb_worker *w, lb_conn *c) noexcept nogil:
    """Refused at the door (the accept phase said no): a reset, so that a
    flood of refused clients leaves no TIME_WAIT behind here."""
    conn_close(w, c, True)


cdef void on_conn_event(lb_worker *w, lb_conn *c, int side, uint32_t events) noexcept nogil:
    if c.state == CS_CLOSED:
        return
    if c.skm == SKM_IN:
        skm_on_event(w, c, side, events)
        return
    if side == SIDE_BACKEND and c.state == CS_CONNECTING:
        conn_on_backend_connecting(w, c, events)
        return
    # An error or hang-up shows up as readable and writable: the next call returns
    # the error (or EOF) and the pump closes the connection for it.
    if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        c.flags |= F_READABLE << side
    if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        c.flags |= F_RDHUP << side
    if events & (EPOLLOUT | EPOLLHUP | EPOLLERR):
        c.flags |= F_WRITABLE << side
    if c.state == CS_PROXY_WAIT:
        conn_proxy_read(w, c)
        return
    if c.state == CS_TLS_WAIT:
        if w.listeners[c.listener].passthrough:
            conn_sni_read(w, c)
        else:
            conn_tls_step(w, c)
        return
    if not uring_eligible(w, c):
        conn_prefill(w, c)           # (with the ring, the turn's first round reads)
    if c.state == CS_ESTABLISHED:
        conn_queue(w, c)


cdef void on_signal(lb_worker *w) noexcept nogil:
    cdef signalfd_siginfo si
    while read(w.sigfd, &si, sizeof(si)) == sizeof(si):
        if si.ssi_signo == SIGTERM:
            if not w.stopping:
                # graceful: stop accepting (the supervisor keeps the listening sockets
                # open, so nothing queued is refused) and let connections finish
                w.stopping = 1
                listeners_sync(w)
                listeners_close(w)
                w.drain_deadline_ms = w.now_ms + w.drain_timeout_ms
                if w.http != NULL:
                    http_stop_idle(w)
                lb_store_u64(&w.stats.stopping, 1)
        else:
            w.stopping = 2


cdef void listeners_close(lb_worker *w) noexcept nogil:
    """Drop this worker's copies of its listening sockets. When the supervisor has
    closed its own copies (a stop, not a reload), the kernel stops queueing new
    connections there at once instead of resetting them when the worker exits."""
    cdef int i
    for i in range(w.n_listeners):
        if w.listeners[i].fd >= 0:
            close(w.listeners[i].fd)
            w.listeners[i].fd = -1


cdef void timers_sweep(lb_worker *w) noexcept nogil:
    cdef int i
    cdef lb_conn *c
    cdef lb_pool_rt *p
    cdef lb_listener_rt *l
    for i in range(w.n_pools):
        p = &w.pools[i]
        while p.connecting.head != NULL and p.connecting.head.queued_ms + p.connect_timeout_ms <= w.now_ms:
            conn_connect_failed(w, p.connecting.head, True)
    proxy_wait_sweep(w)
    tls_wait_sweep(w)
    for i in range(w.n_listeners):
        l = &w.listeners[i]
        while l.conns.head != NULL and l.conns.head.queued_ms + l.idle_timeout_ms <= w.now_ms:
            c = l.conns.head
            if c.skm == SKM_IN and skm_moved(c):
                c.last_ms = w.now_ms
            if c.last_ms + l.idle_timeout_ms <= w.now_ms:
                lb_add_u64(&w.stats.idle_timeouts, 1)
                log_term(c, TERM_IDLE_TIMEOUT)
                conn_close(w, c, False)
            else:
                # active since it was queued: requeue at its real last activity
                list_remove(c)
                list_append(&l.conns, c, c.last_ms)


cdef int next_timeout(lb_worker *w) noexcept nogil:
    """Milliseconds until the earliest timer (at most 1 s, the heartbeat)."""
    cdef uint64_t deadline = w.now_ms + 1000
    cdef uint64_t t
    cdef int i
    if w.pending != NULL:
        return 0
    if w.skm_draining != NULL:
        deadline = w.now_ms + SKM_DRAIN_POLL_MS
    if w.skm_n > 0 and w.skm_check_ms < deadline:
        deadline = w.skm_check_ms
    for i in range(w.n_pools):
        if w.pools[i].connecting.head != NULL:
            t = w.pools[i].connecting.head.queued_ms + w.pools[i].connect_timeout_ms
            if t < deadline:
                deadline = t
    for i in range(w.n_listeners):
        if w.listeners[i].conns.head != NULL:
            t = w.listeners[i].conns.head.queued_ms + w.listeners[i].idle_timeout_ms
            if t < deadline:
                deadline = t
    if w.http != NULL:
        deadline = http_next_deadline(w, deadline)
    deadline = proxy_wait_deadline(w, deadline)
    deadline = tls_wait_deadline(w, deadline)
    if w.stopping == 1 and w.drain_deadline_ms < deadline:
        deadline = w.drain_deadline_ms
    if w.pause & PAUSE_FD_ERROR and w.fd_retry_ms < deadline:
        deadline = w.fd_retry_ms
    if (w.pause & PAUSE_LIMIT or w.n_limited) and w.now_ms + LIMIT_POLL_MS < deadline:
        deadline = w.now_ms + LIMIT_POLL_MS
    if deadline <= w.now_ms:
        return 0
    return <int>(deadline - w.now_ms)


cdef void pending_run(lb_worker *w) noexcept nogil:
    cdef lb_conn *c = w.pending
    cdef lb_conn *n
    cdef lb_conn *batch = NULL       # the tcp pairs whose calls go through the ring (uring.pxi)
    cdef lb_conn *batch_tail = NULL
    w.pending = NULL
    w.pending_tail = NULL
    while c != NULL:
        n = c.pending_next
        c.flags &= ~F_QUEUED
        if c.kind == KIND_HTTP and (<lb_hconn *>c).st != HS_TUNNEL:
            h_run(w, <lb_hconn *>c)
        elif c.kind == KIND_H2B:
            h2b_run(w, <lb_h2b *>c)
        elif uring_eligible(w, c):
            c.pending_next = NULL
            if batch_tail != NULL:
                batch_tail.pending_next = c
            else:
                batch = c
            batch_tail = c
        else:
            conn_pump(w, c)
        c = n
    if batch != NULL:
        uring_pump(w, batch)


cdef int worker_loop(lb_worker *w) noexcept nogil:
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, i
    cdef uint64_t data
    cdef uint32_t tag
    while True:
        n = epoll_wait(w.epfd, events, MAX_EVENTS, next_timeout(w))
        w.now_ms = now_ms()
        if w.log_ring != NULL or w.metrics != NULL:
            log_clock(w)
        lb_store_u64(&w.stats.heartbeat_ms, w.now_ms)
        if n < 0 and errno != EINTR:
            return -1
        for i in range(n):
            data = events[i].data.u64
            tag = data & 3
            if tag == TAG_LISTENER:
                # (a listener paused earlier in this batch is skipped)
                if w.listeners[data >> 2].armed:
                    if w.listeners[data >> 2].http != NULL:
                        http_on_accept(w, <int>(data >> 2))
                    else:
                        on_accept(w, <int>(data >> 2))
            elif tag == TAG_SIGNAL:
                if data == TAG_SIGNAL:
                    on_signal(w)
                elif data == TAG_VERIFIED:
                    basic_on_verified(w)
                else:
                    http_on_event(w, <void *><size_t>(data & ~(<uint64_t>3)), events[i].events)
            else:
                on_conn_event(w, <lb_conn *><size_t>(data & ~(<uint64_t>3)), tag, events[i].events)
        pending_run(w)
        timers_sweep(w)
        if w.skm_draining != NULL:
            skm_drain_sweep(w)
        if w.skm_n > 0 and w.now_ms >= w.skm_check_ms:
            skm_check_all(w)
        if w.http != NULL:
            http_timers_sweep(w)
        conns_free_closed(w)
        if w.http != NULL:
            http_free_closed(w)
        if w.pause or w.n_limited:
            accept_recheck(w)
        if w.stopping == 2:
            return 0
        if w.stopping == 1 and (lb_load_i64(&w.stats.active) == 0 or w.now_ms >= w.drain_deadline_ms):
            return 0


_SPLICE_MODES = {"never": SPLICE_NEVER, "auto": SPLICE_AUTO, "always": SPLICE_ALWAYS}
_LB_OPS = {ALG_ROUNDROBIN: <size_t>&OPS_ROUNDROBIN, ALG_LEASTCONN: <size_t>&OPS_LEASTCONN,
           ALG_RANDOM: <size_t>&OPS_RANDOM, ALG_P2C: <size_t>&OPS_P2C, ALG_MAGLEV: <size_t>&OPS_MAGLEV}
IMPLEMENTED_ALGORITHMS = frozenset(name for name, alg in ALGORITHMS.items() if alg in _LB_OPS)


cdef int worker_attach(lb_worker *w, Shm shm, uint32_t row, uint64_t seed) except -1:
    """Point a worker's state at the shared region and give it its own row."""
    cdef shm_header *h = shm.hdr
    if row >= h.n_rows:
        raise ValueError(f"worker row {row} out of range")
    w.row = row
    w.n_rows = h.n_rows
    w.hdr = h
    w.base = shm.base
    w.backends = shm.backends
    w.stats = shm.wstats + row
    w.wstats_all = shm.wstats
    w.n_cfg_listeners = h.n_listeners
    w.lstats_all = shm.lstats
    w.lstats = shm.lstats + <uint64_t>row * h.n_listeners
    TLSR_STATS[0] = w.stats
    w.bstats_all = shm.bstats
    w.bstats = w.bstats_all + <uint64_t>row * h.n_slots
    w.pstats_all = shm.pstats
    w.acls = shm.acls
    w.acl_stats = shm.acl_stats + <uint64_t>row * shm.acl_head.rule_stride
    w.limits = shm.lims
    w.n_limits = shm.lim_head.n_limits
    w.limit_stats = shm.lim_stats + <uint64_t>row * shm.lim_head.n_limits
    w.rng = seed
    w.n_pools = h.n_pools
    w.pools = <lb_pool_rt *>calloc(max(1, w.n_pools), sizeof(lb_pool_rt))
    if w.pools == NULL:
        raise MemoryError()
    for i in range(w.n_pools):
        pool_rt_init(w, &w.pools[i], shm, i)
    return 0


cdef int pool_rt_init(lb_worker *w, lb_pool_rt *p, Shm shm, uint32_t index) except -1:
    p.shm = shm._pool(index)
    p.index = index
    p.algorithm = p.shm.algorithm
    if p.algorithm not in _LB_OPS:
        raise ValueError(f"pool {index}: algorithm {p.algorithm} is not available in this build")
    p.ops = <lb_ops *><size_t>_LB_OPS[p.algorithm]
    p.connect_timeout_ms = 3000
    p.rr_generation = 0xffffffff
    p.cand_generation = 0xffffffff
    p.rr_cursor = w.row
    p.rr_current = <int64_t *>calloc(p.shm.capacity, sizeof(int64_t))
    p.cand = <int32_t *>calloc(p.shm.capacity, sizeof(int32_t))
    p.cand_cum = <uint64_t *>calloc(p.shm.capacity, sizeof(uint64_t))
    if p.rr_current == NULL or p.cand == NULL or p.cand_cum == NULL:
        raise MemoryError()
    return 0


cdef class Worker:
    """One worker's data plane. Built in Python at start; run() releases the GIL
    for the whole life of the loop.

    listeners: (fd, config.Listener) for each listening socket of this worker
    pools:     every config.Pool, in shared-memory order
    auths:     every config.Auth (API keys), in shared-memory order
    tls:       {"listeners": {name: TlsServer}, "pools": {name: TlsClient}}: the
               contexts of the TLS listeners and pools (lb.tls.contexts, before fork)
    max_connections: global.max_connections (each listener's own is in its config)
    caches:    (CacheShm, config.Cache) of every [caches.NAME], in config order
    The caller blocks SIGTERM/SIGINT/SIGQUIT first: they arrive through a signalfd.
    """

    cdef lb_worker w
    cdef Shm shm
    cdef dict tls                    # the TlsServers its listeners point into
    cdef list caches                 # the CacheShms its caches point into
    cdef bint io_uring               # global.io_uring: tcp forwarding may batch its calls (uring.pxi)

    def __cinit__(self):
        memset(&self.w, 0, sizeof(lb_worker))
        self.w.epfd = -1
        self.w.sigfd = -1
        self.w.skm.peers = -1
        self.w.skm.verdict = -1
        self.w.skm.prog = -1

    def __init__(self, Shm shm, uint32_t row, listeners, pools, str splice="auto",
                 int64_t fd_limit=1024, double drain_timeout=30.0, tls=None, listener_names=None, auths=(),
                 int64_t max_connections=0, caches=(), bint io_uring=True):
        cdef lb_pool_rt *p
        cdef lb_listener_rt *l
        if len(pools) != shm.hdr.n_pools:
            raise ValueError("one pool setting per shared-memory pool is needed")
        self.shm = shm
        self.io_uring = io_uring
        self.tls = tls or {"listeners": {}, "pools": {}}
        w = &self.w
        worker_attach(w, shm, row, int.from_bytes(_os.urandom(8), "little"))
        tickets_attach(shm)
        log_worker_init(w, shm, row)
        metrics_worker_init(w, shm, row)
        top_worker_init(w, shm, row)
        w.splice_mode = _SPLICE_MODES[splice]
        w.drain_timeout_ms = <uint64_t>(drain_timeout * 1000)
        # the fds this worker may use for connections and pipes
        w.fd_limit = fd_limit - FD_RESERVE
        # LB_PIPE_SIZE: smaller pipes, as F_SETPIPE_SZ gives where
        # pipe-user-pages-soft is spent, for tests of that case (anything
        # but a size from a page to 1 MiB: the default)
        pipe_size = _os.environ.get("LB_PIPE_SIZE", "")
        w.pipe_size = int(pipe_size) if pipe_size.isdigit() and 4096 <= int(pipe_size) <= 1 << 20 else PIPE_SIZE
        w.fd_resume = w.fd_limit * 9 // 10
        w.max_conns = max_connections
        w.free_pipes = <lb_pipe *>calloc(FREE_PIPES_MAX, sizeof(lb_pipe))
        w.n_listeners = len(listeners)
        w.listeners = <lb_listener_rt *>calloc(max(1, w.n_listeners), sizeof(lb_listener_rt))
        if w.free_pipes == NULL or w.listeners == NULL:
            raise MemoryError()
        pool_index = {pool.name: i for i, pool in enumerate(pools)}
        acl_index = {name: i for i, name in enumerate(shm.acl_names())}
        limit_index = {name: i for i, name in enumerate(shm.limit_names())}
        for i, pool in enumerate(pools):
            p = &w.pools[i]
            p.retries = pool.retries
            p.connect_timeout_ms = max(1, <uint64_t>(pool.connect_timeout * 1000))
            p.send_proxy = SEND_PROXY_VERSIONS[pool.send_proxy]
            if pool.tls is not None:
                p.tls = &(<TlsClient>self.tls["pools"][pool.name]).t
                p.tls_sessions = <void **>calloc(p.shm.capacity, sizeof(void *))
                if p.tls_sessions == NULL:
                    raise MemoryError()
        auth_index = {name: i for i, name in enumerate(shm.auth_names())}
        if len(auths) != len(auth_index):
            raise ValueError("one auth setting per shared-memory auth is needed")
        if any(listener.mode == "http" for _, listener in listeners):
            http_worker_init(w)
            auth_worker_init(w, shm, auths)
            for i, pool in enumerate(pools):
                http_pool_init(&w.pools[i], pool)
            splits_worker_init(w, shm, [listener for _, listener in listeners], acl_index)
            mirror_index = mirrors_worker_init(w, shm, row, [listener for _, listener in listeners], pool_index)
            self.caches = list(caches)
            cache_worker_init(w, self.caches, row, acl_index)
        cache_index = {cfg.name: i for i, (_, cfg) in enumerate(caches)}
        for i, (fd, listener) in enumerate(listeners):
            l = &w.listeners[i]
            l.fd = fd
            # an http listener without a default pool still needs an index here
            # (its routes name their own pools; the route step answers 404)
            l.pool = pool_index[listener.pool] if listener.pool is not None else 0
            l.idle_timeout_ms = max(1, <uint64_t>(listener.idle_timeout * 1000))
            # an http listener reads its PROXY header in the http engine
            l.accept_proxy = listener.accept_proxy and listener.mode == "tcp"
            l.access = access_init(getattr(listener, "access", None), acl_index)
            l.limits = limit_list_init(getattr(listener, "limits", ()), limit_index)
            l.proxy_timeout_ms = min(l.idle_timeout_ms, PROXY_WAIT_MAX_MS)
            if listener.tls is not None:
                l.tls = &(<TlsServer>self.tls["listeners"][listener.name]).t
                l.tls_wait_ms = l.tls.handshake_timeout_ms
            if listener.tls_passthrough:
                l.passthrough = 1
                l.tls_wait_ms = min(l.idle_timeout_ms, SNI_WAIT_MAX_MS)
                l.n_sni_routes = len(listener.routes)
                l.sni_routes = routes_init(listener.routes, pool_index)
            # records name the listener by its config index (listener_names: the
            # config's order), not by this worker's socket index
            log_listener_init(l, listener, listener_names.index(listener.name) if listener_names else i)
            if l.cfg_index >= w.n_cfg_listeners:
                raise ValueError(f"listener index {l.cfg_index} beyond the region's {w.n_cfg_listeners}")
            l.max_conns = getattr(listener, "max_connections", 0)
            l.sockmap = getattr(listener, "forward", "userspace") == "sockmap" and l.tls == NULL and not l.passthrough
            if l.sockmap and w.skm.prog < 0:
                # the maps of sockmap_prepare (made before privileges were
                # dropped); failing those, try now; failing that, lb forwards
                sockmap_prepare(<uint32_t>max(64, w.fd_limit))
                w.skm = SKM_PREPARED
            metrics_listener_init(w, l, shm, len(listener.routes))
            phases_init(&l.phases, listener)
            if listener.mode == "http":
                http_listener_init(l, listener, pool_index, acl_index, limit_index, auth_index, split_index(shm),
                                   mirror_index, cache_index)

    def run(self):
        """Serve until SIGTERM has drained every connection (or the drain timed
        out) or until SIGINT/SIGQUIT. Returns 0, or raises OSError on a loop failure."""
        cdef sigset_t mask
        cdef epoll_event ev
        cdef int rc
        w = &self.w
        w.epfd = epoll_create1(EPOLL_CLOEXEC)
        if w.epfd < 0:
            raise OSError(errno, "epoll_create1")
        sigemptyset(&mask)
        sigaddset(&mask, SIGTERM)
        sigaddset(&mask, SIGINT)
        sigaddset(&mask, SIGQUIT)
        w.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)
        if w.sigfd < 0:
            raise OSError(errno, "signalfd")
        ev.events = EPOLLIN
        ev.data.u64 = TAG_SIGNAL
        epoll_ctl(w.epfd, EPOLL_CTL_ADD, w.sigfd, &ev)
        w.now_ms = now_ms()
        log_clock(w)
        lb_store_u64(&w.stats.heartbeat_ms, w.now_ms)
        lb_store_u64(&w.stats.pid, getpid())
        lb_store_u64(&w.stats.stopping, 0)
        listeners_sync(w)
        for i in range(w.n_listeners if self.io_uring else 0):
            if w.listeners[i].http == NULL and not w.listeners[i].sockmap:
                w.ring = uring_open()        # (NULL when refused: forward.pxi's calls)
                break
        with nogil:
            rc = worker_loop(w)
        uring_close(w.ring)
        w.ring = NULL
        if rc != 0:
            raise OSError(errno, "epoll_wait")
        return rc
