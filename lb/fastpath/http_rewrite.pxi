# Rewriting heads on their way through: the request head into the
# backend-bound buffer, the response head into the client-bound one, without
# copies of fields; the hop-by-hop fields each hop has of its own; and lb's own
# answers (built-in error pages), which go out through the same path.

cdef enum:
    MAX_CONN_TOKENS = 16             # field names a Connection header may list


cdef inline bint ob_put(lb_hbuf *o, const void *s, size_t n) noexcept nogil:
    """Append to an output buffer (bytes live at p[off:off+len]). False: no room."""
    if o.off + o.len + n > HBUF_SIZE:
        if o.len + n > HBUF_SIZE:
            return False
        memmove(o.p, o.p + o.off, o.len)
        o.off = 0
    memcpy(o.p + o.off + o.len, s, n)
    o.len += n
    return True


cdef inline bint ob_str(lb_hbuf *o, const char *s) noexcept nogil:
    return ob_put(o, s, strlen(s))


cdef inline bint ob_field(lb_hbuf *o, const void *name, size_t nlen, const void *value, size_t vlen) noexcept nogil:
    return ob_put(o, name, nlen) and ob_put(o, b": ", 2) and ob_put(o, value, vlen) and ob_put(o, b"\r\n", 2)


cdef inline bint name_is(const uint8_t *b, http_field *f, const char *lower_lit) noexcept nogil:
    return ieq(b + f.name_off, f.name_len, lower_lit)


cdef bint ieq_str(const uint8_t *a, uint32_t n, lb_str *s) noexcept nogil:
    """a[:n] equals the lower-case s, ignoring ASCII case."""
    cdef uint32_t i
    if n != s.n:
        return False
    for i in range(n):
        if lower(a[i]) != <uint8_t>s.p[i]:
            return False
    return True


cdef bint hop_by_hop(const uint8_t *name, uint32_t n) noexcept nogil:
    """Fields that describe one connection, not the message (RFC 9110 7.6.1).
    Transfer-Encoding is not among them here: the proxy forwards chunked bodies
    as they are, so the framing goes with them (as framing_emit writes it)."""
    return (ieq(name, n, b"connection") or ieq(name, n, b"keep-alive") or ieq(name, n, b"proxy-connection")
            or ieq(name, n, b"te") or ieq(name, n, b"trailer") or ieq(name, n, b"upgrade"))


cdef uint32_t conn_tokens(const uint8_t *b, http_req *r, uint32_t *offs, uint32_t *lens) noexcept nogil:
    """The field names listed in Connection headers (they are hop-by-hop too)."""
    cdef uint32_t i, pos, off, len, k = 0
    for i in range(r.n_fields):
        if name_is(b, &r.fields[i], b"connection"):
            pos = 0
            while k < MAX_CONN_TOKENS and http_list_next(b + r.fields[i].value_off, r.fields[i].value_len,
                                                         &pos, &off, &len):
                offs[k] = r.fields[i].value_off + off
                lens[k] = len
                k += 1
    return k


cdef bint conn_listed(const uint8_t *b, const uint8_t *name, uint32_t n, uint32_t k,
                      uint32_t *offs, uint32_t *lens) noexcept nogil:
    cdef uint32_t i, j
    for i in range(k):
        if lens[i] != n:
            continue
        for j in range(n):
            if lower(b[offs[i] + j]) != lower(name[j]):
                break
        else:
            return True
    return False


# ---- framing: lb's own ------------------------------------------------------------------
#
# A message forwarded with a body carries the framing lb validated, written by
# lb in one canonical form: one Content-Length of the value it parsed, or
# Transfer-Encoding with the codings it read, in lower case, ", " between them
# (a request's is always exactly "chunked"). Never the header text as sent:
# a form lb accepts ("CHUNKED", " , chunked", an empty Transfer-Encoding
# field beside another, "007") might be read otherwise by a stricter or
# looser parser behind or in front of lb.

cdef inline bint is_framing(const uint8_t *name, uint32_t n) noexcept nogil:
    return ieq(name, n, b"content-length") or ieq(name, n, b"transfer-encoding")


cdef bint ob_lower(lb_hbuf *o, const uint8_t *s, uint32_t n) noexcept nogil:
    """Append s[:n], its token part (before any ';') in lower case."""
    cdef uint32_t i
    cdef uint8_t *d
    if not ob_put(o, s, n):
        return False
    d = <uint8_t *>o.p + o.off + o.len - n
    for i in range(n):
        if d[i] == 59:
            break
        d[i] = lower(d[i])
    return True


cdef bint framing_emit(lb_hbuf *o, const uint8_t *b, http_req *r) noexcept nogil:
    """The framing fields of r as lb writes them (see above)."""
    cdef char digits[24]
    cdef int64_t v = r.content_length
    cdef uint32_t i, pos, off, len, n = 0
    cdef const uint8_t *val
    if v >= 0:
        i = 24
        while True:
            i -= 1
            digits[i] = <char>(48 + v % 10)
            v //= 10
            if v == 0:
                break
        return ob_str(o, b"Content-Length: ") and ob_put(o, digits + i, 24 - i) and ob_put(o, b"\r\n", 2)
    for i in range(r.n_fields):
        if not ieq(b + r.fields[i].name_off, r.fields[i].name_len, b"transfer-encoding"):
            continue
        val = b + r.fields[i].value_off
        pos = 0
        while http_list_next(val, r.fields[i].value_len, &pos, &off, &len):
            if not (ob_str(o, b", " if n else b"Transfer-Encoding: ") and ob_lower(o, val + off, len)):
                return False
            n += 1
    return n == 0 or ob_put(o, b"\r\n", 2)


# ---- rewriting heads --------------------------------------------------------------

cdef bint put_cookie_without(lb_hbuf *o, const uint8_t *b, http_field *f, lb_str *name) noexcept nogil:
    """A Cookie field without the pair named `name` (lb's sticky cookie is for
    lb, not the application: HAProxy's "indirect"); no field when nothing is left."""
    cdef const uint8_t *v = b + f.value_off
    cdef uint32_t p = 0, s, e, eq
    cdef bint first = True
    while cookie_next(v, f.value_len, &p, &s, &e, &eq):
        if cookie_named(v, s, e, eq, name):
            continue
        if not (ob_str(o, b"Cookie: " if first else b"; ") and ob_put(o, v + s, e - s)):
            return False
        first = False
    return first or ob_put(o, b"\r\n", 2)


cdef bint rewrite_request(lb_hconn *h, const uint8_t *b, http_req *r, uint8_t to_version,
                          lb_str *sticky, bint keep_te=False) noexcept nogil:
    """The head sent to the backend, into h.upb, with the header rules the
    request phase chose (h.rq_rules). keep_te: an HTTP/2 backend gets
    "te: trailers" (the one TE value HTTP/2 carries; gRPC servers require it)."""
    cdef lb_hbuf *o = &h.upb
    cdef lb_http_listener *hl = h.hl
    cdef uint32_t offs[MAX_CONN_TOKENS]
    cdef uint32_t lens[MAX_CONN_TOKENS]
    cdef uint32_t k = conn_tokens(b, r, offs, lens), i
    cdef int32_t xff_first = -1, fwd_first = -1
    cdef http_field *f
    cdef const uint8_t *name
    cdef lb_hrules **rules = h.rq_rules
    cdef uint32_t n_rules = h.n_rq_rules
    cdef bint tls = sock_is_tls(h_client_sock(h))
    cdef uint32_t cut_end = h.cut_off + h.cut_len
    if h.cut_len and r.target_off <= h.cut_off and cut_end <= r.target_off + r.target_len:
        # the target without the part a step cut (an API key in the query)
        if not (ob_put(o, b + r.method_off, r.method_len) and ob_put(o, b" ", 1)
                and ob_put(o, b + r.target_off, h.cut_off - r.target_off)
                and ob_put(o, b + cut_end, r.target_off + r.target_len - cut_end)):
            return False
    elif not (ob_put(o, b + r.method_off, r.method_len) and ob_put(o, b" ", 1)
              and ob_put(o, b + r.target_off, r.target_len)):
        return False
    if not ob_str(o, b" HTTP/1.1\r\n" if to_version == 11 else b" HTTP/1.0\r\n"):
        return False
    for i in range(r.n_fields):
        f = &r.fields[i]
        name = b + f.name_off
        if is_framing(name, f.name_len):
            continue                 # framing_emit writes lb's own
        if hop_by_hop(name, f.name_len):
            if not (h.upgrade and ieq(name, f.name_len, b"upgrade")) and not (
                    keep_te and ieq(name, f.name_len, b"te") and ieq(b + f.value_off, f.value_len, b"trailers")):
                continue
        elif k and conn_listed(b, name, f.name_len, k, offs, lens):
            continue
        if hl.xfwd:
            if ieq(name, f.name_len, b"x-forwarded-for"):
                if xff_first < 0:
                    xff_first = i
                continue
            if ieq(name, f.name_len, b"x-forwarded-proto") or ieq(name, f.name_len, b"x-forwarded-host"):
                continue
        if hl.fwd and ieq(name, f.name_len, b"forwarded"):
            if fwd_first < 0:
                fwd_first = i
            continue
        if n_rules and rulesets_drop(rules, n_rules, name, f.name_len):
            continue
        if sticky.n and ieq(name, f.name_len, b"cookie"):
            if not put_cookie_without(o, b, f, sticky):
                return False
            continue
        # "name:", the OWS as sent, and the value, in one copy
        if not (ob_put(o, name, f.value_off + f.value_len - f.name_off) and ob_put(o, b"\r\n", 2)):
            return False
    if not framing_emit(o, b, r):
        return False
    if h.upgrade and not ob_str(o, b"Connection: upgrade\r\n"):
        return False
    if not rulesets_emit(o, rules, n_rules):
        return False
    if rid_has(h) and (h.lrec.flags & LOGF_RID_NEW) and not rid_emit(h, o):
        return False
    if hl.xfwd and not rulesets_claim(rules, n_rules, b"x-forwarded-for"):
        if not ob_str(o, b"X-Forwarded-For: "):
            return False
        if xff_first >= 0:
            for i in range(xff_first, r.n_fields):
                f = &r.fields[i]
                if ieq(b + f.name_off, f.name_len, b"x-forwarded-for") and f.value_len:
                    if not (ob_put(o, b + f.value_off, f.value_len) and ob_put(o, b", ", 2)):
                        return False
        if not (ob_put(o, h.ip, h.ip_len) and ob_put(o, b"\r\n", 2)):
            return False
    if hl.xfwd and not rulesets_claim(rules, n_rules, b"x-forwarded-proto"):
        if not ob_str(o, b"X-Forwarded-Proto: https\r\n" if tls else b"X-Forwarded-Proto: http\r\n"):
            return False
    if hl.xfwd and not rulesets_claim(rules, n_rules, b"x-forwarded-host"):
        if r.host >= 0 and r.fields[r.host].value_len:
            if not ob_field(o, b"X-Forwarded-Host", 16, b + r.fields[r.host].value_off, r.fields[r.host].value_len):
                return False
    if hl.fwd and not rulesets_claim(rules, n_rules, b"forwarded"):
        if not ob_str(o, b"Forwarded: "):
            return False
        if fwd_first >= 0:
            for i in range(fwd_first, r.n_fields):
                f = &r.fields[i]
                if ieq(b + f.name_off, f.name_len, b"forwarded") and f.value_len:
                    if not (ob_put(o, b + f.value_off, f.value_len) and ob_put(o, b", ", 2)):
                        return False
        # RFC 7239: an IPv6 node is quoted and bracketed; a host with a port is quoted
        if h.c.peer.ss_family == AF_INET6:
            if not (ob_str(o, b"for=\"[") and ob_put(o, h.ip, h.ip_len) and ob_str(o, b"]\"")):
                return False
        elif not (ob_str(o, b"for=") and ob_put(o, h.ip, h.ip_len)):
            return False
        if r.host >= 0 and r.fields[r.host].value_len:
            if not (ob_str(o, b";host=\"") and ob_put(o, b + r.fields[r.host].value_off, r.fields[r.host].value_len)
                    and ob_str(o, b"\"")):
                return False
        if not ob_str(o, b";proto=https\r\n" if tls else b";proto=http\r\n"):
            return False
    return ob_put(o, b"\r\n", 2)


cdef bint rewrite_response(lb_worker *w, lb_hconn *h, const uint8_t *b, http_req *r) noexcept nogil:
    """The head sent to the client, into h.outb, with the header rules the
    response phase chose (h.rs_rules; final responses only)."""
    cdef lb_hbuf *o = &h.outb
    cdef lb_http_listener *hl = h.hl
    cdef uint32_t offs[MAX_CONN_TOKENS]
    cdef uint32_t lens[MAX_CONN_TOKENS]
    cdef uint32_t k = conn_tokens(b, r, offs, lens), i
    cdef http_field *f
    cdef const uint8_t *name
    cdef char code[4]
    cdef bint final = r.status >= 200
    code[0] = <char>(48 + r.status // 100)
    code[1] = <char>(48 + (r.status // 10) % 10)
    code[2] = <char>(48 + r.status % 10)
    code[3] = 32
    if not (ob_str(o, b"HTTP/1.1 ") and ob_put(o, code, 4) and ob_put(o, b + r.reason_off, r.reason_len)
            and ob_put(o, b"\r\n", 2)):
        return False
    for i in range(r.n_fields):
        f = &r.fields[i]
        name = b + f.name_off
        if is_framing(name, f.name_len):
            continue                 # framing_emit writes lb's own
        if hop_by_hop(name, f.name_len):
            if not (r.status == 101 and ieq(name, f.name_len, b"upgrade")):
                continue
        elif k and conn_listed(b, name, f.name_len, k, offs, lens):
            continue
        if final:
            if hl.hide_server and ieq(name, f.name_len, b"server"):
                continue
            if h.n_rs_rules and rulesets_drop(h.rs_rules, h.n_rs_rules, name, f.name_len):
                continue
            if rid_has(h) and ieq_str(name, f.name_len, &hl.rid_lower):
                continue             # the client gets the id lb logged, once
        if not (ob_put(o, name, f.name_len) and ob_put(o, b": ", 2) and ob_put(o, b + f.value_off, f.value_len)
                and ob_put(o, b"\r\n", 2)):
            return False
    if not framing_emit(o, b, r):
        return False
    if r.status == 101:
        if not ob_str(o, b"Connection: upgrade\r\n"):
            return False
    elif final:
        if not rulesets_emit(o, h.rs_rules, h.n_rs_rules):
            return False
        if h.set_sticky and not sticky_emit(w, &w.pools[h.c.pool], o, h.c.slot):
            return False
        if h.split_cookie and not split_emit(w, h, o):
            return False
        if rid_has(h) and not rid_emit(h, o):
            return False
        if h.cache_note and not cache_emit(h, o):
            return False
        if not h.client_ka:
            if not ob_str(o, b"Connection: close\r\n"):
                return False
        elif h.version == 10 and not ob_str(o, b"Connection: keep-alive\r\n"):
            return False
    return ob_put(o, b"\r\n", 2)


# ---- built-in error pages ---------------------------------------------------------------

cdef lb_str ERR_PAGES[600]

def _make_error_pages():
    reasons = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
               413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
               501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
               504: "Gateway Timeout", 505: "HTTP Version Not Supported", 500: "Internal Server Error",
               508: "Loop Detected"}
    for code, reason in reasons.items():
        body = f"{code} {reason}\n".encode()
        page = (f"HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\ncache-control: no-cache\r\n\r\n").encode() + body
        ERR_PAGES[code].p = <char *>malloc(len(page) + 1)
        memcpy(ERR_PAGES[code].p, <char *>page, len(page))
        ERR_PAGES[code].n = len(page)
    return frozenset(reasons)

HTTP_ERROR_CODES = _make_error_pages()
