# The logger process's side of access logs: taking records out of the workers'
# rings (LogReader) and turning them into lines (LogFormat), compiled, so one
# logger keeps up with every worker at full speed. Python (lb/logger.py) only
# decides when to read and where the lines go.
#
# A format is a list of (literal, field) pairs. In json a field is a JSON value
# (a string in quotes, a number, or null); in text it is the bare value ("-"
# when there is none), with quotes, backslashes and bytes outside printable
# ASCII written as \xHH, as nginx does, so a line is always one line.

cdef enum:
    F_END = -1
    F_TIME = 0                       # 2026-12-05T00:18:52.123Z (UTC, RFC 3339)
    F_TIME_LOCAL = 1                 # 05/Dec/2026:00:18:52 +0000 (the combined format's)
    F_CLIENT = 2
    F_CLIENT_PORT = 3
    F_LISTENER = 4
    F_ROUTE = 5
    F_POOL = 6
    F_BACKEND = 7
    F_METHOD = 8
    F_HOST = 9
    F_PATH = 10
    F_PROTOCOL = 11
    F_STATUS = 12
    F_BYTES_IN = 13
    F_BYTES_OUT = 14
    F_DURATION_MS = 15
    F_REQUEST_MS = 16
    F_CONNECT_MS = 17
    F_RESPONSE_MS = 18
    F_TERMINATION = 19
    F_REQUEST_ID = 20
    F_TLS_VERSION = 21
    F_TLS_CIPHER = 22
    F_SNI = 23
    F_USER_AGENT = 24
    F_REFERER = 25
    F_MODE = 26
    F_TRIES = 27
    F_WORKER = 28
    F_BYTES_OUT_CLF = 29             # bytes_out, "-" for none (the combined format's %b)
    F_SYSLOG_TIME = 30               # F_TIME never quoted: the RFC 5424 header's TIMESTAMP

cdef extern from "string.h" nogil:
    size_t strnlen(const char *s, size_t n)

# The names of the fields, as custom formats and json lines spell them.
LOG_FIELDS = {
    "time": F_TIME, "time_local": F_TIME_LOCAL, "client": F_CLIENT, "client_port": F_CLIENT_PORT,
    "listener": F_LISTENER, "route": F_ROUTE, "pool": F_POOL, "backend": F_BACKEND,
    "method": F_METHOD, "host": F_HOST, "path": F_PATH, "protocol": F_PROTOCOL, "status": F_STATUS,
    "bytes_in": F_BYTES_IN, "bytes_out": F_BYTES_OUT, "duration_ms": F_DURATION_MS,
    "request_ms": F_REQUEST_MS, "connect_ms": F_CONNECT_MS, "response_ms": F_RESPONSE_MS,
    "termination": F_TERMINATION, "request_id": F_REQUEST_ID, "tls_version": F_TLS_VERSION,
    "tls_cipher": F_TLS_CIPHER, "sni": F_SNI, "user_agent": F_USER_AGENT, "referer": F_REFERER,
    "mode": F_MODE, "tries": F_TRIES, "worker": F_WORKER, "bytes_out_clf": F_BYTES_OUT_CLF,
    "syslog_time": F_SYSLOG_TIME,
}
# json lines carry every field but the text-only ones, in this order
JSON_FIELDS = ("time", "client", "client_port", "listener", "route", "pool", "backend", "mode", "method", "host",
               "path", "protocol", "status", "bytes_in", "bytes_out", "duration_ms", "request_ms", "connect_ms",
               "response_ms", "termination", "request_id", "tls_version", "tls_cipher", "sni", "user_agent",
               "referer", "tries", "worker")

TERMINATIONS = {
    TERM_OK: "ok", TERM_CLIENT_ABORT: "client_abort", TERM_CLIENT_TIMEOUT: "client_timeout",
    TERM_REQUEST_TIMEOUT: "request_timeout", TERM_BAD_REQUEST: "bad_request", TERM_REFUSED: "refused",
    TERM_NO_BACKEND: "no_backend", TERM_BACKEND_REFUSED: "backend_refused",
    TERM_CONNECT_TIMEOUT: "connect_timeout", TERM_BACKEND_RESET: "backend_reset",
    TERM_SERVER_TIMEOUT: "server_timeout", TERM_BAD_RESPONSE: "bad_response", TERM_IDLE_TIMEOUT: "idle_timeout",
    TERM_TLS_FAILED: "tls_handshake", TERM_PROXY_FAILED: "proxy_protocol", TERM_LB_ERROR: "lb_error",
    TERM_STOPPING: "stopping", TERM_CLIENT_RESET: "client_reset",
}
assert len(TERMINATIONS) == N_TERMS

cdef const char *MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"

cdef struct lf_op:
    lb_str lit
    int field

cdef struct lf_out:
    char *p
    size_t len
    size_t cap


cdef bint out_room(lf_out *o, size_t n) noexcept nogil:
    cdef size_t cap
    cdef char *p
    if o.len + n <= o.cap:
        return True
    cap = o.cap * 2 if o.cap else 65536
    while cap < o.len + n:
        cap *= 2
    p = <char *>realloc(o.p, cap)
    if p == NULL:
        return False
    o.p = p
    o.cap = cap
    return True


cdef inline void out_put(lf_out *o, const char *s, size_t n) noexcept nogil:
    memcpy(o.p + o.len, s, n)
    o.len += n


cdef inline void out_u64(lf_out *o, uint64_t v) noexcept nogil:
    cdef char tmp[24]
    cdef int i = 24
    while True:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    out_put(o, tmp + i, 24 - i)


cdef inline void out_2(lf_out *o, int v) noexcept nogil:
    o.p[o.len] = <char>(48 + v // 10)
    o.p[o.len + 1] = <char>(48 + v % 10)
    o.len += 2


cdef inline bint esc8(uint64_t x) noexcept nogil:
    """Whether any of eight bytes may need an escape: below 0x20, 0x7f and up,
    a quote or a backslash (bit tricks, Hacker's Delight 6-1; a false alarm
    only sends the bytes to the byte-wise check)."""
    cdef uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL
    cdef uint64_t q = x ^ (ones * 0x22), bs = x ^ (ones * 0x5c)
    return ((((x - ones * 0x20) & ~x) | (x + ones) | x | ((q - ones) & ~q) | ((bs - ones) & ~bs)) & high) != 0


cdef inline size_t utf8_len(const uint8_t *s, size_t n) noexcept nogil:
    """The length of the well-formed UTF-8 sequence at s (RFC 3629: no
    overlong forms, no surrogates, nothing above U+10FFFF), or 0."""
    cdef uint8_t c = s[0]
    cdef size_t k, i
    cdef uint8_t lo = 0x80, hi = 0xbf
    if 0xc2 <= c <= 0xdf:
        k = 2
    elif 0xe0 <= c <= 0xef:
        k = 3
        if c == 0xe0:
            lo = 0xa0
        elif c == 0xed:
            hi = 0x9f
    elif 0xf0 <= c <= 0xf4:
        k = 4
        if c == 0xf0:
            lo = 0x90
        elif c == 0xf4:
            hi = 0x8f
    else:
        return 0
    if n < k or not (lo <= s[1] <= hi):
        return 0
    for i in range(2, k):
        if not (0x80 <= s[i] <= 0xbf):
            return 0
    return k


cdef void out_str(lf_out *o, const char *s, size_t n, bint json) noexcept nogil:
    """A string value: quoted and escaped in json, escaped in text, and its
    absence (n = 0) as null or "-"."""
    cdef size_t i, k
    cdef uint8_t c
    cdef uint64_t x
    if n == 0:
        if json:
            out_put(o, b"null", 4)
        else:
            out_put(o, b"-", 1)
        return
    if json:
        o.p[o.len] = 34
        o.len += 1
    # most values need no escape: find the first byte that does, eight at a
    # time, and copy up to it at once
    i = 0
    while i + 8 <= n:
        memcpy(&x, s + i, 8)
        if esc8(x):
            break
        i += 8
    while i < n:
        c = <uint8_t>s[i]
        if c < 0x20 or c >= 0x7f or c == 34 or c == 92:
            break
        i += 1
    memcpy(o.p + o.len, s, i)
    o.len += i
    while i < n:
        c = <uint8_t>s[i]
        if json and c >= 0x80:
            # JSON is UTF-8: a well-formed sequence goes as it is, a stray byte as \u00XX
            k = utf8_len(<const uint8_t *>s + i, n - i)
            if k:
                memcpy(o.p + o.len, s + i, k)
                o.len += k
                i += k
                continue
        i += 1
        if c >= 0x20 and c < 0x7f and c != 34 and c != 92:
            o.p[o.len] = <char>c
            o.len += 1
        elif json and (c == 34 or c == 92):
            o.p[o.len] = 92
            o.p[o.len + 1] = <char>c
            o.len += 2
        elif json:
            out_put(o, b"\\u00", 4)
            o.p[o.len] = HEXDIGITS[c >> 4]
            o.p[o.len + 1] = HEXDIGITS[c & 15]
            o.len += 2
        else:
            out_put(o, b"\\x", 2)
            o.p[o.len] = HEXDIGITS[c >> 4]
            o.p[o.len + 1] = HEXDIGITS[c & 15]
            o.len += 2
    if json:
        o.p[o.len] = 34
        o.len += 1


cdef inline void out_none(lf_out *o, bint json) noexcept nogil:
    if json:
        out_put(o, b"null", 4)
    else:
        out_put(o, b"-", 1)


cdef void out_ms(lf_out *o, int64_t us, bint json) noexcept nogil:
    """Milliseconds with three decimals (microsecond resolution)."""
    cdef int frac
    if us < 0:
        out_none(o, json)
        return
    out_u64(o, <uint64_t>us // 1000)
    frac = <int>(us % 1000)
    o.p[o.len] = 46
    o.p[o.len + 1] = <char>(48 + frac // 100)
    o.p[o.len + 2] = <char>(48 + (frac // 10) % 10)
    o.p[o.len + 3] = <char>(48 + frac % 10)
    o.len += 4


cdef class LogReader:
    """The rings of one shared-memory region, for the logger: take() moves
    records out and hands each ring's room back to its worker."""

    cdef Shm shm
    cdef shm_log_head *lh
    cdef readonly uint32_t n_records
    cdef readonly uint32_t n_rows

    def __init__(self, Shm shm):
        self.shm = shm
        self.lh = <shm_log_head *>shm.region_addr("log_rings")
        self.n_records = self.lh.n_records
        self.n_rows = shm.hdr.n_rows

    cdef shm_log_ring *_ring(self, uint32_t row) except NULL:
        if self.n_records == 0 or row >= self.n_rows:
            raise ValueError("no such log ring")
        return <shm_log_ring *>(<char *>self.lh + sizeof(shm_log_head) + <uint64_t>row * log_ring_bytes(self.n_records))

    def take(self, uint32_t row, uint32_t limit=0):
        """The records waiting in a row's ring (at most limit, 0: all), as
        bytes of LOG_RECORD_SIZE each."""
        cdef shm_log_ring *ring = self._ring(row)
        cdef shm_log_record *recs = <shm_log_record *>(<char *>ring + sizeof(shm_log_ring))
        cdef uint64_t tail = ring.tail
        cdef uint64_t head = lb_acquire_u64(&ring.head)
        cdef uint64_t n = head - tail, i, first, mask = self.n_records - 1
        if limit and n > limit:
            n = limit
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, n * sizeof(shm_log_record))
        cdef char *dst = PyBytes_AS_STRING(out)
        first = tail & mask
        i = self.n_records - first
        if i > n:
            i = n
        memcpy(dst, &recs[first], i * sizeof(shm_log_record))
        if n > i:
            memcpy(dst + i * sizeof(shm_log_record), &recs[0], (n - i) * sizeof(shm_log_record))
        lb_release_u64(&ring.tail, tail + n)
        return out

    def available(self, uint32_t row):
        """Records waiting in a row's ring: format them in place
        (LogFormat.format_ring), then release() them."""
        cdef shm_log_ring *ring = self._ring(row)
        return lb_acquire_u64(&ring.head) - ring.tail

    def release(self, uint32_t row, uint64_t n):
        """Give n records back to the row's worker."""
        cdef shm_log_ring *ring = self._ring(row)
        lb_release_u64(&ring.tail, ring.tail + n)

    def pending(self):
        cdef uint32_t row
        cdef shm_log_ring *ring
        total = 0
        if self.n_records == 0:
            return 0
        for row in range(self.n_rows):
            ring = self._ring(row)
            total += lb_acquire_u64(&ring.head) - ring.tail
        return total

    def drops(self):
        cdef uint32_t row
        if self.n_records == 0:
            return 0
        return sum(lb_load_u64(&self._ring(row).drops) for row in range(self.n_rows))

    def count_lines(self, uint64_t lines, uint64_t errors=0):
        lb_add_u64(&self.lh.lines, lines)
        lb_add_u64(&self.lh.write_errors, errors)

    def reopen_wanted(self):
        """The reopen request the logger has not acted on yet, or 0."""
        cdef uint32_t req = lb_acquire_u32(&self.lh.reopen_req)
        return req if req != self.lh.reopened else 0

    def reopened(self, uint32_t req):
        lb_release_u32(&self.lh.reopened, req)

    def set_logger_pid(self, uint32_t pid):
        lb_store_u32(&self.lh.logger_pid, pid)


cdef lb_str *_strs(object items) except NULL:
    return mkstrs([s if isinstance(s, (bytes, str)) else str(s) for s in items])


cdef class LogFormat:
    """One [logs.NAME]'s lines, from raw records.

    ops:       [(literal, field name or None)], the line's pieces in order
    json:      values as JSON (strings quoted, null for none) instead of text
    listeners: the config indexes of the listeners this log serves
    sample:    the share of ordinary records kept (errors always are)
    names:     {"listeners": [...], "pools": [...], "routes": [[...] per listener],
                "steps": [[request step names] per listener], "ciphers": {id: name}}
    """

    cdef lf_op *ops
    cdef int n_ops
    cdef bint json
    cdef uint8_t *serves
    cdef uint32_t n_listeners
    cdef uint64_t sample
    cdef lb_str *listener_names
    cdef lb_str *pool_names
    cdef uint32_t n_pools
    cdef lb_str **route_names
    cdef uint32_t *n_routes
    cdef lb_str **step_names
    cdef uint32_t *n_steps
    cdef lb_str *ciphers             # [65536]
    cdef lb_str *terms
    cdef Shm shm
    cdef lf_out out
    cdef size_t n_lines
    cdef int64_t cached_sec
    cdef char cached_iso[20]         # 2026-12-05T00:18:52
    cdef char cached_clf[26]         # 05/Dec/2026:00:18:52 +0000

    def __cinit__(self):
        self.cached_sec = -1

    def __init__(self, Shm shm, ops, bint json, listeners, double sample, names):
        cdef uint32_t i
        self.shm = shm
        self.json = json
        self.n_ops = len(ops)
        self.ops = <lf_op *>calloc(self.n_ops + 1, sizeof(lf_op))
        if self.ops == NULL:
            raise MemoryError()
        for i, (lit, field) in enumerate(ops):
            self.ops[i].lit = mkstr(lit)
            self.ops[i].field = F_END if field is None else LOG_FIELDS[field]
        self.n_listeners = len(names["listeners"])
        self.serves = <uint8_t *>calloc(max(1, self.n_listeners), 1)
        for i in listeners:
            self.serves[i] = 1
        self.sample = min(<uint64_t>1 << 32, <uint64_t>(sample * 4294967296.0 + 0.5))
        self.listener_names = _strs(names["listeners"])
        self.n_pools = len(names["pools"])
        self.pool_names = _strs(names["pools"])
        self.route_names = <lb_str **>calloc(max(1, self.n_listeners), sizeof(lb_str *))
        self.n_routes = <uint32_t *>calloc(max(1, self.n_listeners), sizeof(uint32_t))
        self.step_names = <lb_str **>calloc(max(1, self.n_listeners), sizeof(lb_str *))
        self.n_steps = <uint32_t *>calloc(max(1, self.n_listeners), sizeof(uint32_t))
        for i in range(self.n_listeners):
            self.route_names[i] = _strs(names["routes"][i])
            self.n_routes[i] = len(names["routes"][i])
            self.step_names[i] = _strs([f"refused:{s}" for s in names["steps"][i]])
            self.n_steps[i] = len(names["steps"][i])
        self.ciphers = <lb_str *>calloc(65536, sizeof(lb_str))
        for cid, cname in names.get("ciphers", {}).items():
            self.ciphers[cid & 0xffff] = mkstr(cname)
        self.terms = _strs([TERMINATIONS[t] for t in range(N_TERMS)])

    def __dealloc__(self):
        free(self.out.p)

    def format(self, bytes raw):
        """The lines of the records in raw (LogReader.take) this log keeps,
        each ending in a newline."""
        cdef const shm_log_record *recs = <const shm_log_record *>PyBytes_AS_STRING(raw)
        cdef size_t n = len(raw) // sizeof(shm_log_record)
        self.out.len = 0
        with nogil:
            self._lines(recs, n)
        return PyBytes_FromStringAndSize(self.out.p, self.out.len)

    def format_ring(self, LogReader reader, uint32_t row, uint64_t n):
        """Format the next n records of a row's ring, read where they are
        (LogReader.available; the reader releases them after every log had
        its turn); the number of lines made. The lines are in view() until
        the next call: no copy is made of them."""
        cdef shm_log_ring *ring = reader._ring(row)
        cdef shm_log_record *recs = <shm_log_record *>(<char *>ring + sizeof(shm_log_ring))
        cdef uint64_t first = ring.tail & (reader.n_records - 1)
        cdef uint64_t part = reader.n_records - first
        if part > n:
            part = n
        self.out.len = 0
        self.n_lines = 0
        with nogil:
            self._lines(&recs[first], part)
            if n > part:
                self._lines(recs, n - part)
        return self.n_lines

    def view(self):
        """The lines of the last format_ring, without a copy (valid until the next)."""
        return PyMemoryView_FromMemory(self.out.p, self.out.len, PyBUF_READ)

    cdef void _lines(self, const shm_log_record *recs, size_t n) noexcept nogil:
        cdef size_t i
        cdef const shm_log_record *r
        for i in range(n):
            r = &recs[i]
            if r.listener >= self.n_listeners or not self.serves[r.listener]:
                continue
            if not (r.flags & LOGF_ERROR) and r.sample >= self.sample:
                continue
            if not out_room(&self.out, 8192 + 16 * LOG_RECORD_SIZE):
                return
            self._line(r)
            self.n_lines += 1

    cdef void _time(self, uint64_t us) noexcept nogil:
        cdef time_t sec = <time_t>(us // 1000000)
        cdef tm t
        cdef lf_out o
        if sec == self.cached_sec:
            return
        self.cached_sec = sec
        gmtime_r(&sec, &t)
        o.p = self.cached_iso
        o.len = 0
        out_u64(&o, t.tm_year + 1900)
        o.p[o.len] = 45; o.len += 1
        out_2(&o, t.tm_mon + 1)
        o.p[o.len] = 45; o.len += 1
        out_2(&o, t.tm_mday)
        o.p[o.len] = 84; o.len += 1
        out_2(&o, t.tm_hour)
        o.p[o.len] = 58; o.len += 1
        out_2(&o, t.tm_min)
        o.p[o.len] = 58; o.len += 1
        out_2(&o, t.tm_sec)
        o.p = self.cached_clf
        o.len = 0
        out_2(&o, t.tm_mday)
        o.p[o.len] = 47; o.len += 1
        memcpy(o.p + o.len, MONTHS + 3 * t.tm_mon, 3); o.len += 3
        o.p[o.len] = 47; o.len += 1
        out_u64(&o, t.tm_year + 1900)
        o.p[o.len] = 58; o.len += 1
        out_2(&o, t.tm_hour)
        o.p[o.len] = 58; o.len += 1
        out_2(&o, t.tm_min)
        o.p[o.len] = 58; o.len += 1
        out_2(&o, t.tm_sec)
        memcpy(o.p + o.len, b" +0000", 6)

    cdef void _line(self, const shm_log_record *r) noexcept nogil:
        cdef lf_out *o = &self.out
        cdef int i, ms
        cdef bint json = self.json
        cdef bint quoted
        cdef int k
        cdef char ip[48]
        cdef const char *s
        cdef lb_str *name
        cdef shm_backend *b
        cdef int f
        # where each string lies in data (they follow each other in this order)
        cdef uint32_t o_host = r.method_len
        cdef uint32_t o_path = o_host + r.host_len
        cdef uint32_t o_rid = o_path + r.path_len
        cdef uint32_t o_ua = o_rid + r.rid_len
        cdef uint32_t o_referer = o_ua + r.ua_len
        cdef uint32_t o_sni = o_referer + r.referer_len
        for i in range(self.n_ops):
            out_put(o, self.ops[i].lit.p, self.ops[i].lit.n)
            f = self.ops[i].field
            if f == F_END:
                continue
            if f == F_TIME or f == F_SYSLOG_TIME:
                self._time(r.time_us)
                ms = <int>((r.time_us // 1000) % 1000)
                quoted = json and f == F_TIME
                if quoted:
                    out_put(o, b"\"", 1)
                out_put(o, self.cached_iso, 19)
                o.p[o.len] = 46
                o.p[o.len + 1] = <char>(48 + ms // 100)
                o.p[o.len + 2] = <char>(48 + (ms // 10) % 10)
                o.p[o.len + 3] = <char>(48 + ms % 10)
                o.p[o.len + 4] = 90
                o.len += 5
                if quoted:
                    out_put(o, b"\"", 1)
            elif f == F_TIME_LOCAL:
                self._time(r.time_us)
                if json:
                    out_str(o, self.cached_clf, 26, True)
                else:
                    out_put(o, self.cached_clf, 26)
            elif f == F_CLIENT:
                if r.flags & LOGF_V6:
                    s = inet_ntop(AF_INET6, r.client_addr, ip, sizeof(ip))
                    out_str(o, ip, strlen(ip) if s != NULL else 0, json)
                else:
                    if json:
                        out_put(o, b"\"", 1)
                    for k in range(4):
                        if k:
                            out_put(o, b".", 1)
                        out_u64(o, r.client_addr[k])
                    if json:
                        out_put(o, b"\"", 1)
            elif f == F_CLIENT_PORT:
                out_u64(o, r.client_port)
            elif f == F_LISTENER:
                name = &self.listener_names[r.listener]
                out_str(o, name.p, name.n, json)
            elif f == F_ROUTE:
                if r.route >= 0 and <uint32_t>r.route < self.n_routes[r.listener]:
                    name = &self.route_names[r.listener][r.route]
                    out_str(o, name.p, name.n, json)
                else:
                    out_none(o, json)
            elif f == F_POOL:
                if r.pool >= 0 and <uint32_t>r.pool < self.n_pools:
                    name = &self.pool_names[r.pool]
                    out_str(o, name.p, name.n, json)
                else:
                    out_none(o, json)
            elif f == F_BACKEND:
                if r.slot >= 0 and <uint32_t>r.slot < self.shm.hdr.n_slots:
                    b = &self.shm.backends[r.slot]
                    out_str(o, b.name, strnlen(b.name, LB_NAME_LEN), json)
                else:
                    out_none(o, json)
            elif f == F_METHOD:
                out_str(o, r.data, r.method_len, json)
            elif f == F_HOST:
                out_str(o, r.data + o_host, r.host_len, json)
            elif f == F_PATH:
                out_str(o, r.data + o_path, r.path_len, json)
            elif f == F_PROTOCOL:
                if not (r.flags & LOGF_HTTP):
                    out_str(o, b"TCP", 3, json)
                elif r.http_version == 10:
                    out_str(o, b"HTTP/1.0", 8, json)
                elif r.http_version == 11:
                    out_str(o, b"HTTP/1.1", 8, json)
                elif r.http_version == 20:
                    out_str(o, b"HTTP/2.0", 8, json)
                else:
                    out_none(o, json)
            elif f == F_STATUS:
                if r.status:
                    out_u64(o, r.status)
                else:
                    out_none(o, json)
            elif f == F_BYTES_IN:
                out_u64(o, r.bytes_in)
            elif f == F_BYTES_OUT:
                out_u64(o, r.bytes_out)
            elif f == F_BYTES_OUT_CLF:
                if r.bytes_out:
                    out_u64(o, r.bytes_out)
                else:
                    out_none(o, json)
            elif f == F_DURATION_MS:
                out_ms(o, r.t_total_us, json)
            elif f == F_REQUEST_MS:
                out_ms(o, r.t_request_us, json)
            elif f == F_CONNECT_MS:
                out_ms(o, r.t_connect_us, json)
            elif f == F_RESPONSE_MS:
                out_ms(o, r.t_response_us, json)
            elif f == F_TERMINATION:
                if r.term == TERM_REFUSED and r.step >= 1 and r.step <= self.n_steps[r.listener]:
                    name = &self.step_names[r.listener][r.step - 1]
                elif r.term < N_TERMS:
                    name = &self.terms[r.term]
                else:
                    name = &self.terms[TERM_LB_ERROR]
                out_str(o, name.p, name.n, json)
            elif f == F_REQUEST_ID:
                out_str(o, r.data + o_rid, r.rid_len, json)
            elif f == F_TLS_VERSION:
                if r.tls_version == 0x0304:
                    out_str(o, b"TLSv1.3", 7, json)
                elif r.tls_version == 0x0303:
                    out_str(o, b"TLSv1.2", 7, json)
                elif r.tls_version == 0x0302:
                    out_str(o, b"TLSv1.1", 7, json)
                elif r.tls_version == 0x0301:
                    out_str(o, b"TLSv1", 5, json)
                else:
                    out_none(o, json)
            elif f == F_TLS_CIPHER:
                name = &self.ciphers[r.tls_cipher]
                if r.tls_version and name.n:
                    out_str(o, name.p, name.n, json)
                else:
                    out_none(o, json)
            elif f == F_SNI:
                out_str(o, r.data + o_sni, r.sni_len, json)
            elif f == F_USER_AGENT:
                out_str(o, r.data + o_ua, r.ua_len, json)
            elif f == F_REFERER:
                out_str(o, r.data + o_referer, r.referer_len, json)
            elif f == F_MODE:
                if r.flags & LOGF_HTTP:
                    out_str(o, b"http", 4, json)
                else:
                    out_str(o, b"tcp", 3, json)
            elif f == F_TRIES:
                out_u64(o, r.tries)
            elif f == F_WORKER:
                out_u64(o, r.worker)
        out_put(o, b"\n", 1)


def log_record_size():
    return sizeof(shm_log_record)
