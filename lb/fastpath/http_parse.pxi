# The strict HTTP/1.1 request parser (docs/http-parser.md is the rule book;
# tests/reference/http_ref.py the pure-Python oracle). It reads a buffer front
# to back without copying: fields are offsets into the caller's bytes, and no
# Python object is made until the test-facing wrappers at the end.

cdef enum:
    HTTP_MAX_METHOD = 32
    HTTP_MAX_LEADING_CRLF = 4
    HTTP_MAX_CHUNK_LINE = 4096       # a chunk's size and extensions, before the CRLF
    HTTP_INCOMPLETE = -1


# tchar (RFC 9110 5.6.2): ! # $ % & ' * + - . ^ _ ` | ~ DIGIT ALPHA
cdef uint8_t HTTP_TCHAR[256]
for _c in bytearray(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"):
    HTTP_TCHAR[_c] = 1


# reg-name bytes of a Host value besides letters and digits
cdef uint8_t HTTP_REGNAME[256]
for _c in bytearray(b"-._~!$&'()*+,;=%"):
    HTTP_REGNAME[_c] = 1

cdef const char *HTTP_PREFIX = b"HTTP/"


cdef inline bint is_tchar(uint8_t c) noexcept nogil:
    return HTTP_TCHAR[c] != 0


cdef inline uint8_t lower(uint8_t c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef bint ieq(const uint8_t *a, uint32_t n, const char *lit) noexcept nogil:
    """a[:n] equals the lower-case literal lit, ignoring ASCII case."""
    cdef uint32_t i
    for i in range(n):
        if lit[i] == 0 or lower(a[i]) != <uint8_t>lit[i]:
            return False
    return lit[n] == 0


cdef int http_head(const uint8_t *b, size_t n, http_req *r, uint32_t max_target, uint32_t max_fields,
                   size_t *line) noexcept nogil:
    """Rules 1 to 3 over b[:n]: 0 with r filled (head_len set), -1 when b ends
    first (line: where the first incomplete line starts, 0 in the request line),
    or the status of the first offending byte."""
    cdef size_t p = 0, start
    cdef uint32_t empty = 0, i
    cdef uint8_t c
    line[0] = 0
    # 1. leading empty lines
    while True:
        if p >= n:
            return HTTP_INCOMPLETE
        if b[p] == 13:
            if empty == HTTP_MAX_LEADING_CRLF:
                return 400             # a fifth: nothing after this CR can be valid
            if p + 1 >= n:
                return HTTP_INCOMPLETE
            if b[p + 1] != 10:
                return 400
            empty += 1
            p += 2
            continue
        break
    # 2. request line: method
    start = p
    while p < n and is_tchar(b[p]):
        p += 1
        if p - start > HTTP_MAX_METHOD:
            return 400
    if p >= n:
        return HTTP_INCOMPLETE
    if p == start or b[p] != 32:
        return 400
    r.method_off = start
    r.method_len = p - start
    if ieq_exact(b + start, r.method_len, b"CONNECT"):
        return 405
    p += 1
    # target
    start = p
    while p < n and 0x21 <= b[p] <= 0x7e:
        # the byte's form is judged before it counts toward max_target
        if not http_target_prefix_ok(b + start, p - start + 1, b + r.method_off, r.method_len):
            return 400
        p += 1
        if p - start > max_target:
            return 414
    if p >= n:
        return HTTP_INCOMPLETE
    if p == start or b[p] != 32:
        return 400
    r.target_off = start
    r.target_len = p - start
    if not http_target_form_ok(b + start, r.target_len, b + r.method_off, r.method_len):
        return 400                     # a form cut short: "http://", "htt"
    p += 1
    # version: HTTP/D.D CRLF, checked once the line is complete
    for i in range(5):
        if p >= n:
            return HTTP_INCOMPLETE
        if b[p] != <uint8_t>HTTP_PREFIX[i]:
            return 400
        p += 1
    for c in range(5):
        if p + c >= n:
            return HTTP_INCOMPLETE
        # the major is 1..9 (HTTP/0.9 has no place here), the minor any digit
        if (c == 0 and not (49 <= b[p] <= 57)) or (c == 2 and not (48 <= b[p + 2] <= 57)) \
                or (c == 1 and b[p + 1] != 46) or (c == 3 and b[p + 3] != 13) or (c == 4 and b[p + 4] != 10):
            return 400
    if b[p] == 49:
        r.version = 10 if b[p + 2] == 48 else 11
    else:
        return 505
    p += 5
    # 3. fields
    r.n_fields = 0
    return http_fields(b, n, p, r, max_fields, line)


cdef int http_fields(const uint8_t *b, size_t n, size_t p, http_req *r, uint32_t max_fields,
                     size_t *line) noexcept nogil:
    """Rule 3 from b[p]: fields until the empty line (r.head_len: just past it).
    -1 when b ends first, line then at the start of the incomplete line (and
    r.n_fields counting the complete ones before it)."""
    cdef size_t start, vend
    cdef uint8_t c
    while True:
        line[0] = p
        if p >= n:
            return HTTP_INCOMPLETE
        c = b[p]
        if c == 13:
            if p + 1 >= n:
                return HTTP_INCOMPLETE
            if b[p + 1] != 10:
                return 400
            r.head_len = p + 2
            return 0
        if c == 32 or c == 9:
            return 400                 # obs-fold, or whitespace before a field
        if r.n_fields >= max_fields:
            return 431
        start = p
        while p < n and is_tchar(b[p]):
            p += 1
        if p >= n:
            return HTTP_INCOMPLETE
        if p == start or b[p] != 58:
            return 400                 # no name, whitespace before the colon, no colon
        r.fields[r.n_fields].name_off = start
        r.fields[r.n_fields].name_len = p - start
        p += 1
        while p < n and (b[p] == 32 or b[p] == 9):
            p += 1
        start = p
        vend = p
        while p < n:
            c = b[p]
            if c == 13:
                break
            if (c < 32 and c != 9) or c == 127:
                return 400             # NUL, a bare LF, any other CTL, DEL
            p += 1
            if c != 32 and c != 9:
                vend = p
        if p + 1 >= n:
            return HTTP_INCOMPLETE
        if b[p + 1] != 10:
            return 400                 # a bare CR
        r.fields[r.n_fields].value_off = start
        r.fields[r.n_fields].value_len = vend - start
        r.n_fields += 1
        p += 2


cdef inline bint ieq_exact(const uint8_t *a, uint32_t n, const char *lit) noexcept nogil:
    """a[:n] equals lit, case-sensitively (methods are case-sensitive)."""
    cdef uint32_t i
    for i in range(n):
        if lit[i] == 0 or a[i] != <uint8_t>lit[i]:
            return False
    return lit[n] == 0


cdef bint http_scheme_prefix(const uint8_t *t, uint32_t n, const char *scheme, uint32_t slen) noexcept nogil:
    """t[:n] is a prefix of scheme, or scheme a prefix of t[:n] (case-insensitive)."""
    cdef uint32_t i
    for i in range(n if n < slen else slen):
        if lower(t[i]) != <uint8_t>scheme[i]:
            return False
    return True


cdef bint http_target_prefix_ok(const uint8_t *t, uint32_t n, const uint8_t *m, uint32_t mlen) noexcept nogil:
    """Can a valid target start with t[:n]? (origin "/...", asterisk "*" alone
    with OPTIONS, absolute "http://..." or "https://...")."""
    if t[0] == 47:
        return True
    if t[0] == 42:
        return n == 1 and ieq_exact(m, mlen, b"OPTIONS")
    return http_scheme_prefix(t, n, b"http://", 7) or http_scheme_prefix(t, n, b"https://", 8)


cdef bint http_target_form_ok(const uint8_t *t, uint32_t n, const uint8_t *m, uint32_t mlen) noexcept nogil:
    if t[0] == 47:                                        # origin-form "/..."
        return True
    if n == 1 and t[0] == 42:                             # asterisk-form, OPTIONS only
        return ieq_exact(m, mlen, b"OPTIONS")
    if n > 7 and ieq(t, 7, b"http://"):                   # absolute-form
        return True
    if n > 8 and ieq(t, 8, b"https://"):
        return True
    return False


cdef bint http_host_ok(const uint8_t *v, uint32_t n) noexcept nogil:
    """Empty, or host [":" port]: reg-name or [IP-literal], port 1..5 digits."""
    cdef uint32_t i = 0, digits
    cdef uint8_t c
    if n == 0:
        return True
    if v[0] == 91:                                        # [IP-literal]
        i = 1
        while i < n and v[i] != 93:
            c = v[i]
            if not ((48 <= c <= 57) or (97 <= lower(c) <= 102) or c == 58 or c == 46):
                return False
            i += 1
        if i >= n or i == 1:
            return False
        i += 1
    else:
        while i < n and v[i] != 58:
            c = v[i]
            if not ((48 <= c <= 57) or (97 <= lower(c) <= 122) or HTTP_REGNAME[c]):
                return False
            i += 1
    if i == n:
        return True
    if v[i] != 58:
        return False
    digits = n - i - 1
    if digits < 1 or digits > 5:
        return False
    for i in range(i + 1, n):
        if not (48 <= v[i] <= 57):
            return False
    return True


cdef int http_list_next(const uint8_t *v, uint32_t n, uint32_t *pos, uint32_t *off, uint32_t *len) noexcept nogil:
    """The next element of a comma-separated list, OWS trimmed; 0 at the end.
    Empty elements are skipped."""
    cdef uint32_t p = pos[0], s, e
    while True:
        while p < n and (v[p] == 32 or v[p] == 9 or v[p] == 44):
            p += 1
        if p >= n:
            pos[0] = p
            return 0
        s = p
        while p < n and v[p] != 44:
            p += 1
        e = p
        while e > s and (v[e - 1] == 32 or v[e - 1] == 9):
            e -= 1
        pos[0] = p
        off[0] = s
        len[0] = e - s
        return 1


cdef bint content_length_value(const uint8_t *v, uint32_t n, int64_t *cl) noexcept nogil:
    """A Content-Length value: 1 to 18 DIGITs, nothing else (rule 5)."""
    cdef uint32_t i
    cdef int64_t x = 0
    if n == 0 or n > 18:
        return False
    for i in range(n):
        if not (48 <= v[i] <= 57):
            return False
        x = x * 10 + (v[i] - 48)
    cl[0] = x
    return True


cdef int http_semantics(const uint8_t *b, http_req *r) noexcept nogil:
    """Rules 4 to 9 over a complete head."""
    cdef uint32_t i, hosts = 0, cls = 0, pos, off, len, codings = 0, chunked_at = 0, chunked_n = 0
    cdef bint has_te = False, unknown_coding = False, conn_close = False, conn_keep = False
    cdef bint conn_upgrade = False, upgrade_field = False
    cdef int64_t cl = -1
    cdef const uint8_t *name
    cdef const uint8_t *v
    cdef uint32_t nlen, vlen
    r.host = -1
    r.content_length = -1
    r.chunked = 0
    r.expect_continue = 0
    # 4. Host; 5. Content-Length
    for i in range(r.n_fields):
        name = b + r.fields[i].name_off
        nlen = r.fields[i].name_len
        v = b + r.fields[i].value_off
        vlen = r.fields[i].value_len
        if ieq(name, nlen, b"host"):
            hosts += 1
            r.host = i
    if hosts > 1 or (hosts == 0 and r.version == 11):
        return 400
    if hosts == 1 and not http_host_ok(b + r.fields[r.host].value_off, r.fields[r.host].value_len):
        return 400
    for i in range(r.n_fields):
        if ieq(b + r.fields[i].name_off, r.fields[i].name_len, b"content-length"):
            cls += 1
            if cls > 1 or not content_length_value(b + r.fields[i].value_off, r.fields[i].value_len, &cl):
                return 400
    # 6. Transfer-Encoding
    for i in range(r.n_fields):
        if not ieq(b + r.fields[i].name_off, r.fields[i].name_len, b"transfer-encoding"):
            continue
        has_te = True
        v = b + r.fields[i].value_off
        vlen = r.fields[i].value_len
        pos = 0
        while http_list_next(v, vlen, &pos, &off, &len):
            codings += 1
            if ieq(v + off, len, b"chunked"):
                chunked_n += 1
                chunked_at = codings
            else:
                unknown_coding = True
    if has_te:
        if r.version == 10 or cls:
            return 400
        if codings == 0:
            return 400
        if unknown_coding:
            return 501
        if chunked_n > 1 or chunked_at != codings:
            return 400
        r.chunked = 1
    r.content_length = cl
    # 7. Connection; 8. Expect; 9. Upgrade
    for i in range(r.n_fields):
        name = b + r.fields[i].name_off
        nlen = r.fields[i].name_len
        v = b + r.fields[i].value_off
        vlen = r.fields[i].value_len
        if ieq(name, nlen, b"connection"):
            pos = 0
            while http_list_next(v, vlen, &pos, &off, &len):
                if ieq(v + off, len, b"close"):
                    conn_close = True
                elif ieq(v + off, len, b"keep-alive"):
                    conn_keep = True
                elif ieq(v + off, len, b"upgrade"):
                    conn_upgrade = True
        elif ieq(name, nlen, b"upgrade"):
            upgrade_field = True
    for i in range(r.n_fields):
        if ieq(b + r.fields[i].name_off, r.fields[i].name_len, b"expect"):
            if not ieq(b + r.fields[i].value_off, r.fields[i].value_len, b"100-continue"):
                return 417
            r.expect_continue = 1
    r.keep_alive = (not conn_close) and (r.version == 11 or conn_keep)
    r.upgrade = conn_upgrade and upgrade_field
    return 0


cdef int http_parse_request_c(const uint8_t *b, size_t n, http_req *r, uint32_t max_target,
                              uint32_t max_head, uint32_t max_fields) noexcept nogil:
    """0 (r describes a complete, valid head of r.head_len bytes), -1 (need more
    bytes), or the status to answer before closing."""
    cdef int st
    cdef size_t line
    if max_fields > HTTP_MAX_FIELDS_CAP:
        max_fields = HTTP_MAX_FIELDS_CAP
    # the head must end within max_head bytes: parse at most that much, and a
    # head still open there is too large
    st = http_head(b, n if n < max_head else max_head, r, max_target, max_fields, &line)
    if st == HTTP_INCOMPLETE:
        return 431 if n > max_head else HTTP_INCOMPLETE
    if st != 0:
        return st
    return http_semantics(b, r)


# ---- resuming an incomplete parse --------------------------------------------------------
#
# A head, chunk-size line or trailer section that arrives in pieces would be
# parsed again from its start on every read: 16 KiB read a byte at a time is
# ~130 million steps. So a parse that stops short records where (http_scan, one
# per message in flight), and the next starts at its first incomplete line with
# the complete fields before it counted; bytes before that line are not looked
# at again until the section is complete, when one parse from its start fills
# the offsets (the worker's http_req is scratch, shared by its connections).
#
# Nor is the incomplete line parsed again for bytes that cannot change the
# answer: the new bytes are only classified (head_due), and the parse runs
# when one of them could decide something: a line's first byte (an empty
# line ends the section; whitespace there is obs-fold; one field too many is
# 431), a byte a field name may not hold (the colon ends it), a CR, LF or
# other control byte in a value, the byte after a CR, and in a request line anything outside
# 0x21..0x7E (the spaces around the target, the line's end), its first 64
# bytes (method, target form, scheme), its version (after the second space)
# and its bytes past max_target. So every decision falls at the same byte as
# on the whole input, and a line costs its length a few times over.

cdef uint64_t HTTP_SCAN_WORK = 0     # bytes handed to the parsers, for tests (http_scan_work)

cdef enum:
    SCAN_REQUEST = 0                 # a request head: request line, then fields
    SCAN_RESPONSE = 1                # a response head: status line, then fields
    SCAN_FIELDS = 2                  # a trailer section: fields only
    SCAN_START_LINE_EAGER = 64       # a start line is parsed on every read up to this length


cdef inline void scan_reset(http_scan *sc) noexcept nogil:
    memset(sc, 0, sizeof(http_scan))


cdef bint head_due(const uint8_t *b, size_t n, http_scan *sc, int kind, uint32_t max_target) noexcept nogil:
    """Can parsing b[:n] from sc.line answer anything but "incomplete", when
    b[:sc.seen] did? Classifies only the bytes past sc.seen (sc.mark: a
    field line's colon seen, or a request line's spaces)."""
    global HTTP_SCAN_WORK
    cdef size_t p = sc.seen
    cdef uint8_t c
    if n < p:
        scan_reset(sc)               # fewer bytes than before (a caller's room): from the start
        return True
    if n == p:
        return False                 # nothing new: the same answer
    if p == sc.line or b[p - 1] == 13:
        return True                  # a line's first byte, the byte after a CR
    HTTP_SCAN_WORK += n - p
    if sc.line == 0 and kind != SCAN_FIELDS:
        if n <= SCAN_START_LINE_EAGER or (kind == SCAN_REQUEST and (sc.mark >= 2 or n > max_target)):
            return True
        while p < n:
            c = b[p]
            if kind == SCAN_REQUEST:
                if c < 0x21 or c > 0x7e:
                    return True      # a space (which the parse counts), the end, a bad byte
            elif (c < 32 and c != 9) or c == 127:
                return True          # the reason phrase's end or a bad byte
            p += 1
    else:
        while p < n:
            c = b[p]
            if sc.mark == 0:
                if c == 58:
                    sc.mark = 1      # the name ends; the value begins
                elif not is_tchar(c):
                    return True
            elif (c < 32 and c != 9) or c == 127:
                return True
            p += 1
    sc.seen = <uint32_t>n
    return False


cdef void scan_keep(http_scan *sc, const uint8_t *b, size_t line, uint32_t n_fields, size_t n, int kind) noexcept nogil:
    """After a parse that stopped at the incomplete line b[line:n]."""
    cdef size_t i
    sc.line = <uint32_t>line
    sc.n_fields = n_fields if line else 0
    sc.seen = <uint32_t>n
    sc.mark = 0
    if line == 0 and kind == SCAN_REQUEST:
        for i in range(n):
            sc.mark += b[i] == 32
    elif line < n and memchr(b + line, 58, n - line) != NULL:
        sc.mark = 1


cdef int http_parse_request_at(const uint8_t *b, size_t n, http_req *r, uint32_t max_target, uint32_t max_head,
                               uint32_t max_fields, http_scan *sc) noexcept nogil:
    """http_parse_request_c for a head that may come in pieces, b[:n] growing
    from call to call: sc (zeroed for a new head, and zeroed again here once
    the head is decided) keeps where the last call stopped."""
    global HTTP_SCAN_WORK
    cdef size_t lim = n if n < max_head else max_head, line = 0
    cdef int st
    if max_fields > HTTP_MAX_FIELDS_CAP:
        max_fields = HTTP_MAX_FIELDS_CAP
    if n <= max_head and not head_due(b, n, sc, SCAN_REQUEST, max_target):
        return HTTP_INCOMPLETE
    if sc.line:
        # the request line and sc.n_fields fields before sc.line parsed before
        r.n_fields = sc.n_fields
        HTTP_SCAN_WORK += lim - sc.line
        st = http_fields(b, lim, sc.line, r, max_fields, &line)
        if st == HTTP_INCOMPLETE:
            if n > max_head:
                scan_reset(sc)
                return 431
            scan_keep(sc, b, line, r.n_fields, n, SCAN_REQUEST)
            return HTTP_INCOMPLETE
        scan_reset(sc)
        if st != 0:
            return st
        # complete: once more from its start, for the offsets of all of it
    HTTP_SCAN_WORK += lim
    st = http_head(b, lim, r, max_target, max_fields, &line)
    if st == HTTP_INCOMPLETE:
        if n > max_head:
            scan_reset(sc)
            return 431
        scan_keep(sc, b, line, r.n_fields, n, SCAN_REQUEST)
        return HTTP_INCOMPLETE
    scan_reset(sc)
    if st != 0:
        return st
    return http_semantics(b, r)


# ---- chunked bodies ------------------------------------------------------------

cdef inline int hexval(uint8_t c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    c = lower(c)
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef int http_chunk_ext(const uint8_t *b, size_t n, size_t *pp) noexcept nogil:
    """Chunk extensions up to the CR (RFC 9112 7.1.1): *( BWS ";" BWS token
    [ BWS "=" BWS (token / quoted-string) ] ). Whitespace goes only before a
    ";" or around "=": before the CRLF it is 400. 0 ok (pp at the CR), -1, 400."""
    cdef size_t p = pp[0], s
    cdef bint ws = False
    while True:
        while p < n and (b[p] == 32 or b[p] == 9):
            ws = True
            p += 1
        if p >= n:
            return HTTP_INCOMPLETE
        if b[p] == 13:
            if ws:
                return 400
            pp[0] = p
            return 0
        if b[p] != 59:
            return 400
        p += 1
        while p < n and (b[p] == 32 or b[p] == 9):
            p += 1
        s = p
        while p < n and is_tchar(b[p]):
            p += 1
        if p >= n:
            return HTTP_INCOMPLETE
        if p == s:
            return 400
        ws = False
        while p < n and (b[p] == 32 or b[p] == 9):
            ws = True
            p += 1
        if p >= n:
            return HTTP_INCOMPLETE
        if b[p] != 61:
            continue
        p += 1
        while p < n and (b[p] == 32 or b[p] == 9):
            p += 1
        if p >= n:
            return HTTP_INCOMPLETE
        if b[p] == 34:                                    # quoted-string
            p += 1
            while True:
                if p >= n:
                    return HTTP_INCOMPLETE
                if b[p] == 34:
                    p += 1
                    break
                if b[p] == 92:                            # quoted-pair
                    if p + 1 >= n:
                        return HTTP_INCOMPLETE
                    if (b[p + 1] < 32 and b[p + 1] != 9) or b[p + 1] == 127:
                        return 400
                    p += 2
                    continue
                if (b[p] < 32 and b[p] != 9) or b[p] == 127 or b[p] == 34:
                    return 400
                p += 1
        else:
            s = p
            while p < n and is_tchar(b[p]):
                p += 1
            if p >= n:
                return HTTP_INCOMPLETE
            if p == s:
                return 400
        ws = False


cdef int chunk_line(const uint8_t *b, size_t n, size_t p, size_t *after, uint64_t *size) noexcept nogil:
    """The chunk-size line at b[p]: 0 (after: past its CRLF), -1 (need more), 400."""
    cdef size_t lim = p + HTTP_MAX_CHUNK_LINE + 2, q = p
    cdef uint32_t digits = 0
    cdef uint64_t s = 0
    cdef int st
    if lim > n:
        lim = n
    while q < lim and hexval(b[q]) >= 0:
        s = s * 16 + <uint64_t>hexval(b[q])
        digits += 1
        q += 1
        if digits > 16:
            return 400
    if q >= lim:
        return 400 if n > lim else HTTP_INCOMPLETE
    if digits == 0:
        return 400
    st = http_chunk_ext(b, lim, &q)
    if st == HTTP_INCOMPLETE:
        return 400 if n > lim else HTTP_INCOMPLETE
    if st != 0:
        return st
    if q + 1 >= lim:
        return 400 if n > lim else HTTP_INCOMPLETE
    if b[q + 1] != 10:
        return 400
    after[0] = q + 2
    size[0] = s
    return 0


cdef enum:                           # where chunk_line_resume stopped in a chunk line
    CKL_SIZE = 0                     # the size's hex digits
    CKL_TOP = 1                      # before a ";" or the CR (BWS may come first)
    CKL_SEMI = 2                     # after ";": BWS, then an extension's name
    CKL_NAME = 3
    CKL_AFTER_NAME = 4               # BWS after the name: "=" or the next element
    CKL_EQ = 5                       # after "=": BWS, then a token or a quoted-string
    CKL_VALUE = 6
    CKL_QUOTED = 7
    CKL_QESC = 8                     # after a backslash in a quoted-string
    CKL_CR = 9                       # after the CR: the LF


cdef int chunk_line_resume(const uint8_t *b, size_t n, size_t p, size_t *after, uint64_t *size,
                           http_scan *sc) noexcept nogil:
    """chunk_line for a line that may come in pieces (the same answers at the
    same bytes): the rules of chunk_line and http_chunk_ext as a state machine
    that goes through each byte once, its state kept in sc between calls
    (seen: bytes from p already walked; mark: phase | ws << 4 | digits << 5).
    Once the line ends, chunk_line reads its size."""
    global HTTP_SCAN_WORK
    cdef size_t lim = p + HTTP_MAX_CHUNK_LINE + 2, q
    cdef uint32_t phase, ws, digits
    cdef uint8_t c
    if lim > n:
        lim = n
    if p + sc.seen > n:
        scan_reset(sc)               # fewer bytes than before (room): walk again
    q = p + sc.seen
    phase = sc.mark & 15
    ws = (sc.mark >> 4) & 1
    digits = sc.mark >> 5
    if lim > q:
        HTTP_SCAN_WORK += lim - q
    while q < lim:
        c = b[q]
        if phase == CKL_SIZE:
            if hexval(c) >= 0:
                digits += 1
                if digits > 16:
                    return 400
                q += 1
                continue
            if digits == 0:
                return 400
            phase = CKL_TOP
            ws = 0
            continue                 # this byte again, as the start of the extensions
        if phase == CKL_TOP:
            if c == 32 or c == 9:
                ws = 1
            elif c == 13:
                if ws:
                    return 400       # whitespace before the CRLF
                phase = CKL_CR
            elif c == 59:
                phase = CKL_SEMI
            else:
                return 400
        elif phase == CKL_SEMI:
            if is_tchar(c):
                phase = CKL_NAME
            elif c != 32 and c != 9:
                return 400
        elif phase == CKL_NAME:
            if c == 61:
                phase = CKL_EQ
            elif c == 32 or c == 9:
                ws = 1
                phase = CKL_AFTER_NAME
            elif not is_tchar(c):
                phase = CKL_TOP
                ws = 0
                continue
        elif phase == CKL_AFTER_NAME:
            if c == 61:
                phase = CKL_EQ
            elif c != 32 and c != 9:
                phase = CKL_TOP      # with ws: a CR next is 400
                continue
        elif phase == CKL_EQ:
            if c == 34:
                phase = CKL_QUOTED
            elif is_tchar(c):
                phase = CKL_VALUE
            elif c != 32 and c != 9:
                return 400
        elif phase == CKL_VALUE:
            if not is_tchar(c):
                phase = CKL_TOP
                ws = 0
                continue
        elif phase == CKL_QUOTED:
            if c == 34:
                phase = CKL_TOP
                ws = 0
            elif c == 92:
                phase = CKL_QESC
            elif (c < 32 and c != 9) or c == 127:
                return 400
        elif phase == CKL_QESC:
            if (c < 32 and c != 9) or c == 127:
                return 400
            phase = CKL_QUOTED
        else:                        # CKL_CR
            if c != 10:
                return 400
            scan_reset(sc)
            return chunk_line(b, n, p, after, size)
        q += 1
    if n > p + HTTP_MAX_CHUNK_LINE + 2:
        return 400                   # the line did not end within its 4098 bytes
    sc.seen = <uint32_t>(q - p)
    sc.mark = phase | ws << 4 | digits << 5
    return HTTP_INCOMPLETE


cdef bint trailers_ok(const uint8_t *b, http_req *t) noexcept nogil:
    """No trailer field may reframe or re-route the message."""
    cdef uint32_t i
    for i in range(t.n_fields):
        if (ieq(b + t.fields[i].name_off, t.fields[i].name_len, b"content-length")
                or ieq(b + t.fields[i].name_off, t.fields[i].name_len, b"transfer-encoding")
                or ieq(b + t.fields[i].name_off, t.fields[i].name_len, b"host")):
            return False
    return True


cdef int http_chunked_c(const uint8_t *b, size_t n, size_t *consumed, http_req *trailers,
                        uint32_t max_head, size_t *data_offs, size_t *data_lens, size_t max_chunks,
                        size_t *n_chunks) noexcept nogil:
    """A whole chunked body at b: 0 (consumed set; data_offs/lens locate the
    chunk data, trailers the trailer fields), -1 incomplete, 400."""
    cdef size_t p = 0, k = 0, after, line
    cdef uint64_t size
    cdef int st
    cdef size_t tstart
    while True:
        st = chunk_line(b, n, p, &after, &size)
        if st != 0:
            return st
        p = after
        if size == 0:
            break
        if size > n - p or n - p - size < 2:
            # the data or its CRLF is still to come; what did come must fit
            if size < n - p and b[p + size] != 13:
                return 400
            return HTTP_INCOMPLETE
        if b[p + size] != 13 or b[p + size + 1] != 10:
            return 400
        if k < max_chunks:
            data_offs[k] = p
            data_lens[k] = size
        k += 1
        p += size + 2
    n_chunks[0] = k
    # trailer section: rule 3 fields up to the empty line, within max_head bytes
    tstart = p
    trailers.n_fields = 0
    st = http_fields(b, n if n - tstart < max_head else tstart + max_head, p, trailers, HTTP_MAX_FIELDS_CAP, &line)
    if st == HTTP_INCOMPLETE:
        return 400 if n - tstart > max_head else HTTP_INCOMPLETE
    if st != 0 or not trailers_ok(b, trailers):
        return 400
    consumed[0] = trailers.head_len
    return 0


# ---- test-facing wrappers -----------------------------------------------------------

def http_parse_request(const unsigned char[:] data, uint32_t max_target=8192, uint32_t max_head=16384,
                       uint32_t max_fields=100):
    """(status, consumed, info) as docs/http-parser.md defines them."""
    cdef http_req *r = <http_req *>malloc(sizeof(http_req))
    cdef int st
    cdef const uint8_t *b = &data[0] if data.shape[0] else <const uint8_t *>b""
    if r == NULL:
        raise MemoryError()
    try:
        with nogil:
            st = http_parse_request_c(b, data.shape[0], r, max_target, max_head, max_fields)
        if st != 0:
            return st, 0, None
        return 0, r.head_len, http_request_info(bytes(data[:r.head_len]), r)
    finally:
        free(r)


cdef dict http_request_info(bytes raw, http_req *r):
    fields = [(raw[f.name_off:f.name_off + f.name_len], raw[f.value_off:f.value_off + f.value_len])
              for f in r.fields[:r.n_fields]]
    return {
        "method": raw[r.method_off:r.method_off + r.method_len],
        "target": raw[r.target_off:r.target_off + r.target_len],
        "version": r.version,
        "host": fields[r.host][1] if r.host >= 0 else None,
        "content_length": r.content_length if r.content_length >= 0 else None,
        "chunked": bool(r.chunked), "keep_alive": bool(r.keep_alive),
        "upgrade": bool(r.upgrade), "expect_continue": bool(r.expect_continue),
        "fields": fields,
    }


def http_request_stream(pieces, uint32_t max_target=8192, uint32_t max_head=16384, uint32_t max_fields=100):
    """Feed a request head to the parser in the given pieces, as a worker reads
    them (each call sees everything so far, resuming where the last stopped).
    The result of http_parse_request at the first piece that decides it; with
    more pieces than that, the rest are not offered."""
    cdef http_req *r = <http_req *>malloc(sizeof(http_req))
    cdef http_scan sc
    cdef int st = HTTP_INCOMPLETE
    cdef const uint8_t *b
    cdef size_t n
    if r == NULL:
        raise MemoryError()
    scan_reset(&sc)
    pending = bytearray()
    try:
        for piece in pieces:
            pending += piece
            if not pending:
                continue
            b = <const uint8_t *><char *>pending
            n = len(pending)
            with nogil:
                st = http_parse_request_at(b, n, r, max_target, max_head, max_fields, &sc)
            if st == 0:
                return 0, r.head_len, http_request_info(bytes(pending[:r.head_len]), r)
            if st != HTTP_INCOMPLETE:
                return st, 0, None
        return st, 0, None
    finally:
        free(r)


def http_scan_work():
    """Bytes the parsers were handed (and looked through for line ends) since
    the last call, in this process: how much work a head, chunk line or trailer
    section cost, whatever its pieces."""
    global HTTP_SCAN_WORK
    cdef uint64_t w = HTTP_SCAN_WORK
    HTTP_SCAN_WORK = 0
    return w


def http_parse_chunked(const unsigned char[:] data, uint32_t max_head=16384):
    """(status, consumed, body, trailers) for a chunked body at the start of data."""
    cdef http_req *t = <http_req *>malloc(sizeof(http_req))
    cdef size_t n = data.shape[0], consumed = 0, n_chunks = 0, max_chunks = n // 3 + 1
    cdef size_t *offs = <size_t *>malloc(max_chunks * sizeof(size_t))
    cdef size_t *lens = <size_t *>malloc(max_chunks * sizeof(size_t))
    cdef const uint8_t *b = &data[0] if n else <const uint8_t *>b""
    cdef int st
    if t == NULL or offs == NULL or lens == NULL:
        free(t)
        free(offs)
        free(lens)
        raise MemoryError()
    try:
        with nogil:
            st = http_chunked_c(b, n, &consumed, t, max_head, offs, lens, max_chunks, &n_chunks)
        if st != 0:
            return st, 0, b"", []
        raw = bytes(data[:consumed])
        body = b"".join(raw[offs[i]:offs[i] + lens[i]] for i in range(n_chunks))
        trailers = [(raw[f.name_off:f.name_off + f.name_len], raw[f.value_off:f.value_off + f.value_len])
                    for f in t.fields[:t.n_fields]]
        return 0, consumed, body, trailers
    finally:
        free(t)
        free(offs)
        free(lens)
