# Responses from backends, and message bodies read as a stream.
#
# The response parser holds backends to the same syntax as clients (rules 3 to 7
# of docs/http-parser.md): a response the proxy could frame differently from the
# backend is a 502, and that connection is never reused. The chunk framer finds
# where a chunked body ends without needing the whole body in memory: the proxy
# forwards the chunks verbatim, as they arrive.

cdef enum:
    CK_LINE = 0                      # at a chunk-size line
    CK_DATA = 1                      # inside chunk data (left bytes to go)
    CK_DATA_CRLF = 2                 # at the CRLF after chunk data
    CK_TRAILERS = 3                  # at the trailer section
    CK_DONE = 4


cdef int http_parse_response_c(const uint8_t *b, size_t n, http_req *r, uint32_t max_head) noexcept nogil:
    """0 (r describes a complete, valid response head of r.head_len bytes), -1
    (need more bytes), or 502 (malformed: do not forward, do not reuse)."""
    cdef size_t line
    return http_response_head(b, n, r, max_head, &line)


cdef int http_parse_response_at(const uint8_t *b, size_t n, http_req *r, uint32_t max_head,
                                http_scan *sc) noexcept nogil:
    """http_parse_response_c for a head that may come in pieces: sc as for
    http_parse_request_at (http_parse.pxi)."""
    global HTTP_SCAN_WORK
    cdef size_t lim = n if n < max_head else max_head, line = 0
    cdef int st
    if n <= max_head and not head_due(b, n, sc, SCAN_RESPONSE, 0):
        return HTTP_INCOMPLETE
    if sc.line:
        r.n_fields = sc.n_fields
        HTTP_SCAN_WORK += lim - sc.line
        st = http_fields(b, lim, sc.line, r, HTTP_MAX_FIELDS_CAP, &line)
        if st == HTTP_INCOMPLETE:
            if n > max_head:
                scan_reset(sc)
                return 502
            scan_keep(sc, b, line, r.n_fields, n, SCAN_RESPONSE)
            return HTTP_INCOMPLETE
        scan_reset(sc)
        if st != 0:
            return 502
    HTTP_SCAN_WORK += lim
    st = http_response_head(b, n, r, max_head, &line)
    if st == HTTP_INCOMPLETE:
        scan_keep(sc, b, line, r.n_fields, n, SCAN_RESPONSE)
    else:
        scan_reset(sc)
    return st


cdef int http_response_head(const uint8_t *b, size_t n, http_req *r, uint32_t max_head, size_t *line) noexcept nogil:
    """http_parse_response_c; when b ends first, line is where its first
    incomplete line starts (0 in the status line)."""
    cdef size_t p = 0, lim = n if n < max_head else max_head
    cdef uint32_t i, cls = 0, pos, off, len, codings = 0, chunked_n = 0, chunked_at = 0
    cdef int st
    cdef int64_t cl = -1
    cdef bint has_te = False, conn_close = False, conn_keep = False
    cdef const uint8_t *v
    cdef uint32_t vlen
    cdef uint8_t c
    line[0] = 0
    # status line: HTTP/1.D SP DDD [SP reason] CRLF
    for i in range(12):
        if p + i >= lim:
            return 502 if n > max_head else HTTP_INCOMPLETE
        c = b[p + i]
        if i < 5:
            if c != <uint8_t>HTTP_PREFIX[i]:
                return 502
        elif (i == 5 and c != 49) or (i == 6 and c != 46) or (i == 7 and not (48 <= c <= 57)) \
                or (i == 8 and c != 32) or (i >= 9 and not (48 <= c <= 57)):
            return 502
    r.version = 10 if b[7] == 48 else 11
    r.status = (b[9] - 48) * 100 + (b[10] - 48) * 10 + (b[11] - 48)
    if r.status < 100 or r.status > 599:
        return 502
    p = 12
    if p >= lim:
        return 502 if n > max_head else HTTP_INCOMPLETE
    r.reason_off = 13
    if b[p] == 32:
        p += 1
        while p < lim and b[p] != 13:
            c = b[p]
            if (c < 32 and c != 9) or c == 127:
                return 502
            p += 1
        r.reason_len = p - 13
    elif b[p] == 13:
        r.reason_len = 0
    else:
        return 502                   # "200X": decided at that byte, not one later
    if p + 1 >= lim:
        return 502 if n > max_head else HTTP_INCOMPLETE
    if b[p] != 13 or b[p + 1] != 10:
        return 502
    p += 2
    r.n_fields = 0
    st = http_fields(b, lim, p, r, HTTP_MAX_FIELDS_CAP, line)
    if st == HTTP_INCOMPLETE:
        return 502 if n > max_head else HTTP_INCOMPLETE
    if st != 0:
        return 502
    # framing (RFC 9112 6.3), strictly: anything two parsers could read apart is refused
    r.chunked = 0
    r.content_length = -1
    for i in range(r.n_fields):
        v = b + r.fields[i].value_off
        vlen = r.fields[i].value_len
        if ieq(b + r.fields[i].name_off, r.fields[i].name_len, b"content-length"):
            cls += 1
            if cls > 1 or not content_length_value(v, vlen, &cl):
                return 502
        elif ieq(b + r.fields[i].name_off, r.fields[i].name_len, b"transfer-encoding"):
            has_te = True
            pos = 0
            while http_list_next(v, vlen, &pos, &off, &len):
                codings += 1
                if ieq(v + off, len, b"chunked"):
                    chunked_n += 1
                    chunked_at = codings
        elif ieq(b + r.fields[i].name_off, r.fields[i].name_len, b"connection"):
            pos = 0
            while http_list_next(v, vlen, &pos, &off, &len):
                if ieq(v + off, len, b"close"):
                    conn_close = True
                elif ieq(v + off, len, b"keep-alive"):
                    conn_keep = True
    if has_te:
        if cls or codings == 0 or chunked_n > 1 or (chunked_n == 1 and chunked_at != codings):
            return 502
        # a final "chunked" frames the body; any other coding last means "until close"
        r.chunked = chunked_n
        if not chunked_n:
            conn_close = True
    r.content_length = cl
    r.keep_alive = (not conn_close) and (r.version == 11 or conn_keep)
    return 0


cdef int chunk_advance(uint8_t *phase, uint64_t *left, const uint8_t *b, size_t n, size_t *ok,
                       http_req *scratch, uint32_t max_head, uint64_t *total, http_scan *sc) noexcept nogil:
    """Walk a chunked body through b[:n], the next bytes of the stream.

    Returns 0 with b[:ok] part of the body (the caller forwards and drops them;
    b[ok:] is the start of a line still incomplete, offered again with more
    bytes), 1 when the body ends at ok, or 400. The same rules as http_chunked_c.
    total grows by each chunk's size as its line is read, before its data
    (max_body_size refuses a chunk that would take the body over the limit).
    sc (zeroed with phase) keeps where an incomplete chunk line or trailer
    section was left (http_parse.pxi: chunk_line_resume, head_due), so that
    no byte is walked again on every call."""
    global HTTP_SCAN_WORK
    cdef size_t p = 0, after, take, tend, line
    cdef uint64_t size
    cdef int st
    while True:
        if phase[0] == CK_DATA:
            take = n - p
            if take > left[0]:
                take = left[0]
            p += take
            left[0] -= take
            if left[0] != 0:
                ok[0] = p
                return 0
            phase[0] = CK_DATA_CRLF
        if phase[0] == CK_DATA_CRLF:
            if n - p < 2:
                if n - p == 1 and b[p] != 13:
                    return 400
                ok[0] = p
                return 0
            if b[p] != 13 or b[p + 1] != 10:
                return 400
            p += 2
            phase[0] = CK_LINE
        if phase[0] == CK_LINE:
            st = chunk_line_resume(b, n, p, &after, &size, sc)
            if st == HTTP_INCOMPLETE:
                ok[0] = p
                return 0
            if st != 0:
                return 400
            p = after
            if size == 0:
                phase[0] = CK_TRAILERS
            else:
                left[0] = size
                total[0] += size
                phase[0] = CK_DATA
                continue
        if phase[0] == CK_TRAILERS:
            if n - p <= max_head and not head_due(b + p, n - p, sc, SCAN_FIELDS, 0):
                ok[0] = p
                return 0
            tend = n if n - p < max_head else p + max_head
            scratch.n_fields = sc.n_fields
            HTTP_SCAN_WORK += tend - p - sc.line
            st = http_fields(b, tend, p + sc.line, scratch, HTTP_MAX_FIELDS_CAP, &line)
            if st == HTTP_INCOMPLETE:
                if n - p > max_head:
                    return 400
                scan_keep(sc, b + p, line - p, scratch.n_fields, n - p, SCAN_FIELDS)
                ok[0] = p
                return 0
            if st == 0 and sc.line:
                # complete: once more from its start, for trailers_ok to see every field
                scratch.n_fields = 0
                HTTP_SCAN_WORK += tend - p
                st = http_fields(b, tend, p, scratch, HTTP_MAX_FIELDS_CAP, &line)
            scan_reset(sc)
            if st != 0 or not trailers_ok(b, scratch):
                return 400
            phase[0] = CK_DONE
            ok[0] = scratch.head_len
            return 1
        if phase[0] == CK_DONE:
            ok[0] = p
            return 1


# ---- test-facing wrappers -----------------------------------------------------------

def http_parse_response(const unsigned char[:] data, uint32_t max_head=65536):
    """(status, consumed, info): status 0, -1 or 502; info as for requests plus
    "status", "reason"."""
    cdef http_req *r = <http_req *>malloc(sizeof(http_req))
    cdef int st
    cdef const uint8_t *b = &data[0] if data.shape[0] else <const uint8_t *>b""
    if r == NULL:
        raise MemoryError()
    try:
        with nogil:
            st = http_parse_response_c(b, data.shape[0], r, max_head)
        if st != 0:
            return st, 0, None
        raw = bytes(data[:r.head_len])
        return 0, r.head_len, {
            "status": r.status, "reason": raw[r.reason_off:r.reason_off + r.reason_len],
            "version": r.version, "keep_alive": bool(r.keep_alive), "chunked": bool(r.chunked),
            "content_length": r.content_length if r.content_length >= 0 else None,
            "fields": [(raw[f.name_off:f.name_off + f.name_len], raw[f.value_off:f.value_off + f.value_len])
                       for f in r.fields[:r.n_fields]],
        }
    finally:
        free(r)


def http_chunk_stream(pieces, uint32_t max_head=16384):
    """Feed a chunked body to the streaming framer in the given pieces, as the
    proxy would (keeping an incomplete line for the next piece).
    (status, consumed): 0 complete after consumed bytes, -1 incomplete, 400."""
    cdef http_req *scratch = <http_req *>malloc(sizeof(http_req))
    cdef uint8_t phase = CK_LINE
    cdef uint64_t left = 0, total = 0
    cdef size_t ok = 0
    cdef int st = 0
    cdef const uint8_t *b
    cdef http_scan sc
    if scratch == NULL:
        raise MemoryError()
    scan_reset(&sc)
    pending = bytearray()
    consumed = 0
    try:
        for piece in pieces:
            pending += piece
            if not pending:
                continue
            b = <const uint8_t *><char *>pending
            st = chunk_advance(&phase, &left, b, len(pending), &ok, scratch, max_head, &total, &sc)
            if st == 400:
                return 400, 0
            consumed += ok
            del pending[:ok]
            if st == 1:
                return 0, consumed
        return -1, 0
    finally:
        free(scratch)


def http_response_stream(pieces, uint32_t max_head=65536):
    """http_parse_response's answer for a head fed in the given pieces, as a
    worker reads them (see http_request_stream): (status, consumed)."""
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
                st = http_parse_response_at(b, n, r, max_head, &sc)
            if st != HTTP_INCOMPLETE:
                return st, r.head_len if st == 0 else 0
        return st, 0
    finally:
        free(r)
