# Set-up of the http engine from the configuration: Python, at start, before
# the loop releases the GIL. Each listener's request phases are built here too
# (phases_init in http_phases.pxi).

# ---- set-up from the configuration (Python, at start) ----------------------------------

cdef lb_str mkstr(object s):
    cdef bytes data = s.encode() if isinstance(s, str) else bytes(s)
    cdef lb_str r
    r.n = len(data)
    r.p = <char *>malloc(r.n + 1)
    if r.p == NULL:
        raise MemoryError()
    memcpy(r.p, <char *>data, r.n)
    r.p[r.n] = 0
    return r


cdef lb_str *mkstrs(object items):
    cdef lb_str *a = <lb_str *>calloc(max(1, len(items)), sizeof(lb_str))
    if a == NULL:
        raise MemoryError()
    for i, s in enumerate(items):
        a[i] = mkstr(s)
    return a


cdef int rules_init(lb_hrules *r, object rules) except -1:
    memset(r, 0, sizeof(lb_hrules))
    if rules is None:
        return 0
    sets = list(getattr(rules, "set", ()))
    adds = list(getattr(rules, "add", ()))
    removes = list(getattr(rules, "remove", ()))
    r.n_set = len(sets)
    r.n_add = len(adds)
    r.n_remove = len(removes)
    r.set_name = mkstrs([n for n, _ in sets])
    r.set_lower = mkstrs([n.lower() for n, _ in sets])
    r.set_value = mkstrs([v for _, v in sets])
    r.add_name = mkstrs([n for n, _ in adds])
    r.add_value = mkstrs([v for _, v in adds])
    r.remove = mkstrs([n.lower() for n in removes])
    return 0


cdef int http_listener_init(lb_listener_rt *l, object listener, dict pool_index, dict acl_index,
                            dict limit_index=None, dict auth_index=None, dict split_index=None,
                            dict mirror_index=None, dict cache_index=None) except -1:
    """The http settings of one listener, from its config.Listener."""
    cdef lb_http_listener *hl = <lb_http_listener *>calloc(1, sizeof(lb_http_listener))
    if hl == NULL:
        raise MemoryError()
    l.http = hl
    hs = getattr(listener, "http", None)
    hl.max_target = getattr(hs, "max_target", 8192)
    hl.max_head = getattr(hs, "max_header_size", 16384)
    hl.max_fields = getattr(hs, "max_header_count", 100)
    hl.max_body = getattr(hs, "max_body_size", 0)
    forwarded = getattr(hs, "forwarded", "x-forwarded")
    hl.xfwd = forwarded in ("x-forwarded", "both")
    hl.fwd = forwarded in ("forwarded", "both")
    hl.hide_server = bool(getattr(hs, "hide_server", False))
    hl.accept_proxy = bool(listener.accept_proxy)
    hl.pool = pool_index[listener.pool] if listener.pool is not None else -1
    rules_init(&hl.req, getattr(hs, "request_headers", None))
    rules_init(&hl.resp, getattr(hs, "response_headers", None))
    hl.req_timer.timeout_ms = max(1, <uint64_t>(getattr(hs, "request_timeout", 10.0) * 1000))
    hl.ka_timer.timeout_ms = max(1, <uint64_t>(getattr(hs, "keepalive_timeout", 60.0) * 1000))
    hl.idle_timer.timeout_ms = max(1, <uint64_t>(listener.idle_timeout * 1000))
    hl.tls_timer.timeout_ms = l.tls.handshake_timeout_ms if l.tls != NULL else 1
    hl.n_routes = len(listener.routes)
    hl.routes = routes_init(listener.routes, pool_index, acl_index, limit_index, auth_index, split_index, cache_index)
    hl.cache = (cache_index or {})[listener.cache] if getattr(listener, "cache", "") else -1
    split = getattr(listener, "split", None)
    hl.split = (split_index or {})[split.name] if split is not None else -1
    hl.mirror = -1
    if mirror_index:
        hl.mirror = mirror_index.get((listener.name, -1), -1)
        for i in range(hl.n_routes):
            hl.routes[i].mirror = mirror_index.get((listener.name, i), -1)
    hl.auth = (auth_index or {})[listener.auth] if getattr(listener, "auth", "") else -1
    rid_listener_init(hl, listener)
    h2 = getattr(hs, "http2", None)
    hl.h2c = bool(getattr(h2, "h2c", False))
    hl.h2_max_streams = getattr(h2, "max_concurrent_streams", 100)
    hl.h2_window = getattr(h2, "initial_window_size", 65535)
    hl.h2_conn_window = getattr(h2, "connection_window_size", 1048576)
    hl.h2_max_frame = getattr(h2, "max_frame_size", 16384)
    hl.h2_max_glitches = getattr(h2, "max_glitches", 1000)
    return 0


cdef lb_route *routes_init(object routes, dict pool_index, dict acl_index=None, dict limit_index=None,
                           dict auth_index=None, dict split_index=None, dict cache_index=None) except NULL:
    """A listener's routes (config.Route), in order: http routes, or the SNI
    routes of a tls_passthrough listener (host and pool only)."""
    cdef lb_route *rt
    cdef lb_route *out = <lb_route *>calloc(max(1, len(routes)), sizeof(lb_route))
    if out == NULL:
        raise MemoryError()
    for i, route in enumerate(routes):
        rt = &out[i]
        host = route.host or ""
        rt.host_wild = host.startswith("*.")
        rt.host = mkstr(host[1:] if rt.host_wild else host)
        path = getattr(route, "path", None)
        rt.path_exact = path is not None
        rt.path = mkstr(path if path is not None else (route.path_prefix or ""))
        methods = getattr(route, "methods", ())
        rt.methods = mkstr(" " + " ".join(methods) + " " if methods else "")
        rt.header = mkstr((getattr(route, "header", None) or "").lower())
        value = getattr(route, "header_value", None)
        rt.has_header_value = value is not None
        rt.header_value = mkstr(value or "")
        rt.pool = pool_index[route.pool]
        rules_init(&rt.req, getattr(route, "request_headers", None))
        rules_init(&rt.resp, getattr(route, "response_headers", None))
        rt.access = access_init(getattr(route, "access", None), acl_index or {})
        rt.limits = limit_list_init(getattr(route, "limits", ()), limit_index or {})
        rt.auth = (auth_index or {})[route.auth] if getattr(route, "auth", "") else -1
        rt.cache = (cache_index or {})[route.cache] if getattr(route, "cache", "") else -1
        split = getattr(route, "split", None)
        rt.split = (split_index or {})[split.name] if split is not None else -1
        rt.mirror = -1
        limit = getattr(route, "max_body_size", None)
        rt.max_body = -1 if limit is None else limit
    return out


_HK_KINDS = {"path": HKH_PATH, "header": HKH_HEADER, "cookie": HKH_COOKIE, "query": HKH_QUERY,
             "cache_key": HKH_CACHE_KEY}
_SEND_PROXY = {"off": 0, "v1": 1, "v2": 2}


cdef int http_pool_init(lb_pool_rt *p, object pool) except -1:
    """The http settings of one pool, from its config.Pool."""
    cdef lb_http_pool *hp = <lb_http_pool *>calloc(1, sizeof(lb_http_pool))
    cdef uint32_t cap = p.shm.capacity
    if hp == NULL:
        raise MemoryError()
    p.http = hp
    hk = pool.hash_key if pool.algorithm == "maglev" else ""
    kind, _, name = hk.partition(":")
    hp.hk_kind = _HK_KINDS.get(kind, HKH_L4)
    hp.hk_name = mkstr(name.lower() if kind == "header" else name)
    if hp.hk_kind == HKH_CACHE_KEY:
        tier_pool_init(hp, pool)
    hp.send_proxy = _SEND_PROXY.get(getattr(pool, "send_proxy", "off"), 0)
    hp.max_idle = pool.keepalive_max_idle
    sticky = getattr(pool, "sticky_cookie", "") or ""
    hp.sticky = mkstr(sticky)
    hp.sticky_seed = lb_xxh64(<const uint8_t *>p.shm.name, strlen(p.shm.name), 0x6c62)
    hp.sticky_generation = 0xffffffff
    hp.sticky_ids = <uint64_t *>calloc(cap, sizeof(uint64_t))
    hp.idle_top = <lb_bconn **>calloc(cap, sizeof(lb_bconn *))
    hp.idle_count = <uint32_t *>calloc(cap, sizeof(uint32_t))
    hp.h2 = getattr(pool, "protocol", "http/1.1") == "h2"
    hp.h2_conns = <lb_h2b **>calloc(cap, sizeof(lb_h2b *))
    if hp.sticky_ids == NULL or hp.idle_top == NULL or hp.idle_count == NULL or hp.h2_conns == NULL:
        raise MemoryError()
    hp.idle_timer.timeout_ms = max(1, <uint64_t>(getattr(pool, "keepalive_timeout", 30.0) * 1000))
    hp.connect_timer.timeout_ms = max(1, <uint64_t>(pool.connect_timeout * 1000))
    hp.resp_timer.timeout_ms = max(1, <uint64_t>(getattr(pool, "response_timeout", 60.0) * 1000))
    return 0


cdef int http_worker_init(lb_worker *w) except -1:
    cdef lb_http_worker *hw = <lb_http_worker *>calloc(1, sizeof(lb_http_worker))
    if hw == NULL:
        raise MemoryError()
    w.http = hw
    hw.req = <http_req *>malloc(sizeof(http_req))
    hw.resp = <http_req *>malloc(sizeof(http_req))
    hw.scratch = <http_req *>malloc(sizeof(http_req))
    hw.free_bufs = <char **>calloc(FREE_HBUFS_MAX, sizeof(char *))
    if hw.req == NULL or hw.resp == NULL or hw.scratch == NULL or hw.free_bufs == NULL:
        raise MemoryError()
    hw.linger_timer.timeout_ms = LINGER_MS
    h2_worker_init(w)
    h2b_worker_init(w)
    return 0
