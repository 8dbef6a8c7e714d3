# HTTP/2 to clients, driven from the compiled loop through libnghttp2 (frames,
# HPACK, flow control and stream states are the library's; lb never parses a
# frame itself).
#
# A client connection that speaks HTTP/2 (ALPN "h2", or the connection preface
# on an h2c listener) is an lb_hconn in HS_H2 with an lb_h2 session. Each stream
# is a request: its header block is turned into HTTP/1.1 bytes and handed to an
# lb_hconn of its own (h2role H2_STREAM) whose client transport is the stream
# (XPRT_H2S). That session reads the request through the same strict parser,
# request phases, routing, retries, limits and logs as any HTTP/1.1 request, and
# writes its HTTP/1.1 response back into the stream, where the head becomes a
# HEADERS frame and the body (its framing removed) DATA frames.
#
# Nothing of a request reaches the parser before nghttp2 validated it (RFC 9113
# 8.2 and 8.3: pseudo-header fields, connection-specific fields, field names and
# values, content-length against DATA); the parser then checks it again as
# HTTP/1.1, so a request that would be read otherwise by an HTTP/1.1 backend
# cannot pass. Flow control holds a slow stream's bytes within its own window:
# a request body is given back to the client's window only as its session reads
# it, and a response is read from the backend only as fast as the client's
# window lets it leave.
#
# nghttp2's callbacks only record and queue: sessions run from the pending list,
# never from inside the library.
from lb.includes.nghttp2 cimport *
from libc.stdio cimport snprintf

cdef enum:
    H2_CONN = 1
    H2_STREAM = 2
    H2_TX_CAP = 65536                # response body bytes a stream holds for nghttp2
    H2_WBUF_HIGH = 65536             # frames made ahead of the socket
    H2_RX_MAX = 4 * 1048576          # hard bound of a stream's request bytes (window + framing)

# the response as the stream's session writes it (lb_h2s.ts)
cdef enum:
    TX_HEAD = 0
    TX_CL = 1
    TX_CHUNKED = 2
    TX_EOF = 3                       # delimited by the end of the session's writing
    TX_DONE = 4

# chunked framing of the response (lb_h2s.tck)
cdef enum:
    CKD_SIZE = 0
    CKD_EXT = 1
    CKD_DATA = 2
    CKD_DATA_END = 3
    CKD_TRAILER = 4
    CKD_TRAILER_LINE = 5

cdef const char *H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# ---- byte buffers -------------------------------------------------------------------------

cdef bint bytes_put(lb_bytes *b, const void *s, size_t n) noexcept nogil:
    cdef uint32_t cap
    cdef char *p
    if n == 0:
        return True
    if b.off + b.len + n > b.cap:
        if b.off and b.len + n <= b.cap:
            memmove(b.p, b.p + b.off, b.len)
            b.off = 0
        else:
            # (1000: within glibc's thread cache, 1032-byte chunks at most,
            # which takes most of these buffers' malloc and free off the slow path)
            cap = b.cap if b.cap else 1000
            while cap < b.len + n:
                cap *= 2
            if cap > H2_RX_MAX + 65536:
                return False
            p = <char *>malloc(cap)
            if p == NULL:
                return False
            if b.len:
                memcpy(p, b.p + b.off, b.len)
            free(b.p)
            b.p = p
            b.cap = cap
            b.off = 0
    memcpy(b.p + b.off + b.len, s, n)
    b.len += <uint32_t>n
    return True


cdef inline bint bytes_str(lb_bytes *b, const char *s) noexcept nogil:
    return bytes_put(b, s, strlen(s))


cdef inline void bytes_drop(lb_bytes *b, uint32_t n) noexcept nogil:
    b.off += n
    b.len -= n
    if b.len == 0:
        b.off = 0


cdef inline void bytes_free(lb_bytes *b) noexcept nogil:
    free(b.p)
    b.p = NULL
    b.off = 0
    b.len = 0
    b.cap = 0


# ---- the stream transport (lb_hconn of one request <-> its stream) --------------------------

cdef inline void h2_kick(lb_h2 *s2) noexcept nogil:
    """The connection has frames to make or send: run it this turn."""
    if s2.h != NULL and s2.h.c.state != CS_CLOSED:
        conn_queue(s2.w, &s2.h.c)


cdef inline void h2s_wake(lb_h2s *s) noexcept nogil:
    if s.h != NULL and s.h.c.state != CS_CLOSED:
        conn_queue(s.sess.w, &s.h.c)


cdef ssize_t h2s_recv(lb_sock *sk, void *buf, size_t n) noexcept nogil:
    cdef lb_h2s *s = <lb_h2s *>sk.ctx
    cdef uint32_t k
    cdef uint64_t give
    if s.reset:
        # cancelled, or broken: nothing of it goes on, even what is already
        # here (a rapid reset must not cost a backend connection)
        errno = ECONNRESET
        return XPRT_ERROR
    if s.rx.len:
        k = s.rx.len if s.rx.len < n else <uint32_t>n
        memcpy(buf, s.rx.p + s.rx.off, k)
        bytes_drop(&s.rx, k)
        # the body is given back to the window as it is read: framing lb added
        # makes rx longer than the DATA it came from, so once rx is empty all
        # of that DATA has been read
        give = s.rx_data if (s.rx.len == 0 or k > s.rx_data) else k
        if give and not s.closed and not s.sess.dying:
            nghttp2_session_consume(s.sess.ng, s.id, give)
            h2_kick(s.sess)
        s.rx_data -= give
        if s.rx.len == 0:
            bytes_free(&s.rx)
        return k
    if s.req_end:
        return 0
    return XPRT_WANT_READ


cdef int h2s_take_head(lb_h2s *s, const uint8_t *p, size_t n) noexcept nogil:
    """One HTTP/1.1 response head that the stream's session wrote (lb's own
    rewrite, or an error page) into HEADERS: bytes taken, 0 when not all there
    yet, -1 broken."""
    cdef lb_h2 *s2 = s.sess
    cdef lb_http_worker *hw = s2.w.http
    cdef http_req *r = hw.scratch
    cdef nghttp2_nv *nv = hw.h2nv
    cdef char *low = hw.h2low
    cdef uint32_t i, j, used = 0, k = 0
    cdef http_field *f
    cdef const uint8_t *name
    cdef char code[3]
    cdef nghttp2_data_provider prd
    cdef int st = http_parse_response_c(p, n, r, HBUF_SIZE)
    if st == HTTP_INCOMPLETE:
        return 0
    if st != 0:
        return -1
    code[0] = <char>(48 + r.status // 100)
    code[1] = <char>(48 + (r.status // 10) % 10)
    code[2] = <char>(48 + r.status % 10)
    nv[0].name = <uint8_t *>b":status"
    nv[0].namelen = 7
    nv[0].value = <uint8_t *>code
    nv[0].valuelen = 3
    nv[0].flags = NGHTTP2_NV_FLAG_NONE
    k = 1
    for i in range(r.n_fields):
        f = &r.fields[i]
        name = p + f.name_off
        # connection-specific fields have no place in HTTP/2 (RFC 9113 8.2.2)
        if hop_by_hop(name, f.name_len) or ieq(name, f.name_len, b"transfer-encoding"):
            continue
        if used + f.name_len > HBUF_SIZE:
            return -1
        for j in range(f.name_len):
            low[used + j] = <char>lower(name[j])
        nv[k].name = <uint8_t *>low + used
        nv[k].namelen = f.name_len
        nv[k].value = <uint8_t *>p + f.value_off
        nv[k].valuelen = f.value_len
        nv[k].flags = NGHTTP2_NV_FLAG_NONE
        used += f.name_len
        k += 1
    if r.status < 200:
        if r.status != 101:
            nghttp2_submit_headers(s2.ng, NGHTTP2_FLAG_NONE, s.id, NULL, nv, k, NULL)
            h2_kick(s2)
        return <int>r.head_len
    if s.is_head or r.status == 204 or r.status == 304:
        s.ts = TX_DONE
    elif r.chunked:
        s.ts = TX_CHUNKED
        s.tck = CKD_SIZE
        s.tleft = 0
    elif r.content_length >= 0:
        s.ts = TX_CL if r.content_length else TX_DONE
        s.tleft = r.content_length
    else:
        s.ts = TX_EOF
    s.submitted = 1
    if s.ts == TX_DONE:
        s.tx_eof = 1
        nghttp2_submit_response(s2.ng, s.id, nv, k, NULL)
    else:
        prd.source.ptr = s
        prd.read_callback = h2s_read_data
        nghttp2_submit_response(s2.ng, s.id, nv, k, &prd)
    h2_kick(s2)
    return <int>r.head_len


cdef inline size_t h2s_dechunk(lb_h2s *s, const uint8_t *p, size_t n) noexcept nogil:
    return h2_dechunk(&s.ts, &s.tck, &s.tleft, &s.tx, &s.trailers, &s.tx_eof, p, n)


cdef size_t h2_dechunk(uint8_t *ts, uint8_t *tck, uint64_t *tleft, lb_bytes *tx, lb_bytes *trailers,
                       uint8_t *tx_eof, const uint8_t *p, size_t n) noexcept nogil:
    """Chunked framing off a body the http engine wrote (framing it checked
    already), data into tx (up to H2_TX_CAP), trailer lines kept: bytes taken.
    The response to an HTTP/2 client, and the request to an HTTP/2 backend."""
    cdef size_t i = 0, k
    cdef uint32_t room
    cdef int v
    while i < n and ts[0] == TX_CHUNKED:
        if tck[0] == CKD_SIZE:
            v = hexval(p[i])
            if v >= 0:
                tleft[0] = tleft[0] * 16 + v
            elif p[i] == 10:
                tck[0] = CKD_DATA if tleft[0] else CKD_TRAILER
            else:
                tck[0] = CKD_EXT       # an extension, or the CR: skipped to the LF
            i += 1
        elif tck[0] == CKD_EXT:
            if p[i] == 10:
                tck[0] = CKD_DATA if tleft[0] else CKD_TRAILER
            i += 1
        elif tck[0] == CKD_DATA:
            room = H2_TX_CAP - tx.len if tx.len < H2_TX_CAP else 0
            k = n - i
            if k > tleft[0]:
                k = <size_t>tleft[0]
            if k > room:
                k = room
            if k == 0:
                break
            if not bytes_put(tx, p + i, k):
                break
            tleft[0] -= k
            i += k
            if tleft[0] == 0:
                tck[0] = CKD_DATA_END
        elif tck[0] == CKD_DATA_END:
            if p[i] == 10:
                tck[0] = CKD_SIZE
            i += 1
        elif tck[0] == CKD_TRAILER:
            # the start of a trailer line, or the empty line that ends the body
            if p[i] == 13:
                i += 1
            elif p[i] == 10:
                i += 1
                ts[0] = TX_DONE
                tx_eof[0] = 1
            else:
                tck[0] = CKD_TRAILER_LINE
        else:
            k = i
            while k < n and p[k] != 10:
                k += 1
            if not bytes_put(trailers, p + i, k - i):
                break
            if k < n:
                bytes_put(trailers, b"\n", 1)
                tck[0] = CKD_TRAILER
                k += 1
            i = k
    return i


cdef ssize_t h2s_send(lb_sock *sk, const void *buf, size_t n) noexcept nogil:
    cdef lb_h2s *s = <lb_h2s *>sk.ctx
    cdef const uint8_t *p = <const uint8_t *>buf
    cdef size_t done = 0, k
    cdef uint32_t room
    cdef int st
    if s.reset or s.sess.dying:
        errno = EPIPE
        return XPRT_ERROR
    while done < n:
        if s.ts == TX_HEAD:
            st = h2s_take_head(s, p + done, n - done)
            if st <= 0:
                errno = EPROTO
                return XPRT_ERROR
            done += st
        elif s.ts == TX_DONE:
            break                    # bytes past the response's end (none are sent)
        elif s.ts == TX_CHUNKED:
            k = h2s_dechunk(s, p + done, n - done)
            if k == 0:
                break
            done += k
        else:
            room = H2_TX_CAP - s.tx.len if s.tx.len < H2_TX_CAP else 0
            k = n - done
            if s.ts == TX_CL and k > s.tleft:
                k = <size_t>s.tleft
            if k > room:
                k = room
            if k == 0 or not bytes_put(&s.tx, p + done, k):
                break
            done += k
            if s.ts == TX_CL:
                s.tleft -= k
                if s.tleft == 0:
                    s.ts = TX_DONE
                    s.tx_eof = 1
    if s.submitted and s.deferred and (s.tx.len or s.tx_eof):
        s.deferred = 0
        nghttp2_session_resume_data(s.sess.ng, s.id)
        h2_kick(s.sess)
    if done < n and s.ts != TX_DONE:
        s.wblocked = 1               # the caller waits for HF_WRITABLE: tx draining gives it back
        if done == 0:
            return XPRT_WANT_WRITE
    return <ssize_t>done


cdef void h2s_end(lb_h2s *s, bint reset) noexcept nogil:
    """The stream's session is done writing: a response that is whole ends the
    stream, anything else resets it (a cut response must not look complete)."""
    if s.closed or s.ended or s.sess.dying:
        return
    if s.ts == TX_EOF and not reset:
        s.ts = TX_DONE
        s.tx_eof = 1
    if reset or not s.submitted or s.ts != TX_DONE:
        s.ended = 1
        nghttp2_submit_rst_stream(s.sess.ng, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_INTERNAL_ERROR)
    elif s.deferred:
        s.deferred = 0
        nghttp2_session_resume_data(s.sess.ng, s.id)
    h2_kick(s.sess)


cdef void h2s_shutw(lb_sock *sk) noexcept nogil:
    h2s_end(<lb_h2s *>sk.ctx, False)


cdef void h2s_rest_unwanted(lb_h2s *s) noexcept nogil:
    """lb's response ended while the client still sends a request body that
    its session did not read whole (an early 413): the rest is not wanted
    (RFC 9113 8.1). A body read whole only waits for its END_STREAM."""
    if s.ended and not s.req_end and not s.req_whole and not s.closed and not s.sess.dying:
        nghttp2_submit_rst_stream(s.sess.ng, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_NO_ERROR)
        h2_kick(s.sess)


cdef void h2s_close(lb_sock *sk, bint reset) noexcept nogil:
    """The stream's session lets go of it. The stream's state stays until
    nghttp2 has sent what it still holds and closed it."""
    cdef lb_h2s *s = <lb_h2s *>sk.ctx
    h2s_end(s, reset)
    s.req_whole = s.h.rq_state == RQ_DONE
    s.h = NULL
    h2s_rest_unwanted(s)
    if s.closed or s.sess.dying:
        h2s_free(s.sess, s)


cdef lb_xprt XPRT_H2S
XPRT_H2S.name = b"h2-stream"
XPRT_H2S.recv = h2s_recv
XPRT_H2S.send = h2s_send
XPRT_H2S.shutw = h2s_shutw
XPRT_H2S.close = h2s_close
XPRT_H2S.splice = 0


cdef void h2s_free(lb_h2 *s2, lb_h2s *s) noexcept nogil:
    if s.prev != NULL:
        s.prev.next = s.next
    else:
        s2.streams = s.next
    if s.next != NULL:
        s.next.prev = s.prev
    if not s.closed:
        s2.n_open -= 1
        if not s2.dying:
            nghttp2_session_set_stream_user_data(s2.ng, s.id, NULL)
    bytes_free(&s.rx)
    bytes_free(&s.hdrs)
    bytes_free(&s.cookie)
    bytes_free(&s.pseudo)
    bytes_free(&s.tx)
    bytes_free(&s.trailers)
    free(s)
    s2.n_streams -= 1
    if s2.n_streams == 0 and not s2.dying:
        h2_kick(s2)                  # idle now: the keep-alive timer, or the end of a drain


# ---- nghttp2's callbacks ------------------------------------------------------------------

cdef ssize_t h2s_read_data(nghttp2_session *ng, int32_t stream_id, uint8_t *buf, size_t length,
                           uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept nogil:
    cdef lb_h2s *s = <lb_h2s *>source.ptr
    cdef lb_h2 *s2 = s.sess
    cdef size_t k = s.tx.len if s.tx.len < length else length
    cdef nghttp2_nv *nv
    cdef uint32_t n
    if k:
        memcpy(buf, s.tx.p + s.tx.off, k)
        bytes_drop(&s.tx, <uint32_t>k)
        if s.wblocked and s.tx.len < H2_TX_CAP // 2:
            s.wblocked = 0
            if s.h != NULL:
                s.h.hflags |= HF_WRITABLE
                h2s_wake(s)
        if s.tx.len == 0 and s.tx_eof == 0:
            bytes_free(&s.tx)
    if s.tx.len == 0 and s.tx_eof:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
        if s.trailers.len:
            n = h2_trailer_fields(s2.w.http.h2nv, &s.trailers)
            if n and nghttp2_submit_trailer(ng, stream_id, s2.w.http.h2nv, n) == 0:
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
        return <ssize_t>k
    if k == 0:
        s.deferred = 1
        return NGHTTP2_ERR_DEFERRED
    return <ssize_t>k


cdef uint32_t h2_trailer_fields(nghttp2_nv *nv, lb_bytes *trailers) noexcept nogil:
    """Trailer lines ("name: value") as fields, names lowered."""
    cdef char *p = trailers.p + trailers.off
    cdef uint32_t n = trailers.len, i = 0, start, colon, end, v, k = 0
    while i < n and k < HTTP_MAX_FIELDS_CAP:
        start = i
        while i < n and p[i] != 10:
            i += 1
        end = i
        i += 1
        if end > start and p[end - 1] == 13:
            end -= 1
        colon = start
        while colon < end and p[colon] != 58:
            p[colon] = <char>lower(<uint8_t>p[colon])
            colon += 1
        if colon == start or colon == end:
            continue
        v = colon + 1
        while v < end and (p[v] == 32 or p[v] == 9):
            v += 1
        nv[k].name = <uint8_t *>p + start
        nv[k].namelen = colon - start
        nv[k].value = <uint8_t *>p + v
        nv[k].valuelen = end - v
        nv[k].flags = NGHTTP2_NV_FLAG_NONE
        k += 1
    return k


cdef inline lb_h2s *h2_stream(nghttp2_session *ng, int32_t id) noexcept nogil:
    return <lb_h2s *>nghttp2_session_get_stream_user_data(ng, id)


cdef bint h2_glitch(lb_h2 *s2, uint32_t n) noexcept nogil:
    """Frames that made no work count against the connection; past its budget
    it ends with ENHANCE_YOUR_CALM (floods of control frames, rapid reset)."""
    s2.glitches += n
    if s2.glitches > s2.h.hl.h2_max_glitches + 2 * s2.answered:
        h2_abuse(s2)
        return True
    return False


cdef void h2_abuse(lb_h2 *s2) noexcept nogil:
    """GOAWAY with ENHANCE_YOUR_CALM: nothing more is read from this client."""
    if s2.goaway != 2:
        s2.goaway = 2
        lb_add_u64(&s2.w.stats.h2_refused, 1)
        nghttp2_session_terminate_session(s2.ng, NGHTTP2_ENHANCE_YOUR_CALM)


cdef int h2_on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept nogil:
    cdef lb_h2 *s2 = <lb_h2 *>user_data
    cdef lb_hconn *h = s2.h
    cdef lb_h2s *s
    s2.decoded = 0
    # a header block has http_request_timeout to come in whole (CONTINUATIONs too)
    s2.hblock = frame.hd.stream_id
    tl_append(&h.hl.req_timer, &h.tphase, s2.w.now_ms, h)
    if frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    if s2.n_open >= h.hl.h2_max_streams:
        # past max_concurrent_streams: refused, so the client can send it again
        # (RFC 9113 5.1.2, 8.7; HAProxy and nginx answer so too); its header
        # block is still decoded (HPACK state) and then dropped. A client that
        # keeps at it spends its glitch budget, or meets nghttp2's own limit.
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame.hd.stream_id, NGHTTP2_REFUSED_STREAM)
        h2_glitch(s2, 1)
        return 0
    s = <lb_h2s *>calloc(1, sizeof(lb_h2s))
    if s == NULL:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    s.id = frame.hd.stream_id
    s.sess = s2
    s.next = s2.streams
    if s.next != NULL:
        s.next.prev = s
    s2.streams = s
    s2.n_streams += 1
    s2.n_open += 1
    nghttp2_session_set_stream_user_data(ng, s.id, s)
    lb_add_u64(&s2.w.stats.h2_streams, 1)
    return 0


cdef int h2_on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                      const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) noexcept nogil:
    cdef lb_h2 *s2 = <lb_h2 *>user_data
    cdef lb_h2s *s = h2_stream(ng, frame.hd.stream_id)
    cdef lb_http_listener *hl = s2.h.hl
    cdef int slot = -1
    cdef size_t i
    # what a header block decodes to is bounded, whatever its compressed size:
    # an HPACK bomb costs lb the bytes of one header list, then the connection
    s2.decoded += namelen + valuelen + 32
    if s2.decoded > 4 * <uint64_t>hl.max_head + 65536:
        h2_abuse(s2)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    if s == NULL or s.bad:
        return 0
    if frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        # request trailers: they reach the backend only in a chunked body
        if s.req_chunked and not s.req_end:
            if not (bytes_put(&s.trailers, name, namelen) and bytes_put(&s.trailers, b": ", 2)
                    and bytes_put(&s.trailers, value, valuelen) and bytes_put(&s.trailers, b"\r\n", 2)):
                s.bad = 1
        return 0
    if namelen and name[0] == 58:
        if namelen == 7 and memcmp(name, b":method", 7) == 0:
            slot = 0
        elif namelen == 5 and memcmp(name, b":path", 5) == 0:
            slot = 1
        elif namelen == 10 and memcmp(name, b":authority", 10) == 0:
            slot = 2
        else:
            return 0                 # :scheme (nghttp2 checked it; the listener says http or https)
    elif namelen == 4 and memcmp(name, b"host", 4) == 0:
        slot = 3
    if slot >= 0:
        if s.p_len[slot] == 0 and valuelen < 65536:
            # back to back in slot order: each value lands after those before it
            s.p_len[slot] = <uint16_t>valuelen
            if not h2_pseudo_put(s, slot, value, valuelen):
                s.bad = 1
                s.bad_status = 431
        return 0
    if namelen == 6 and memcmp(name, b"cookie", 6) == 0:
        if (s.cookie.len and not bytes_put(&s.cookie, b"; ", 2)) or not bytes_put(&s.cookie, value, valuelen):
            s.bad = 1
            s.bad_status = 431
        return 0
    if namelen == 6 and memcmp(name, b"expect", 6) == 0:
        s.expect = 1                 # the client waits for a 100 before its body: not held
    if namelen == 14 and memcmp(name, b"content-length", 14) == 0:
        s.has_cl = 1
        s.cl = 0
        for i in range(valuelen):
            if value[i] < 48 or value[i] > 57 or (s.cl >> 48) != 0:
                break                # nghttp2 refuses the stream: not a length
            s.cl = s.cl * 10 + (value[i] - 48)
    if not (bytes_put(&s.hdrs, name, namelen) and bytes_put(&s.hdrs, b": ", 2)
            and bytes_put(&s.hdrs, value, valuelen) and bytes_put(&s.hdrs, b"\r\n", 2)) \
            or s.hdrs.len + s.cookie.len > hl.max_head:
        s.bad = 1
        s.bad_status = 431
    return 0


cdef bint h2_pseudo_put(lb_h2s *s, int slot, const uint8_t *value, size_t n) noexcept nogil:
    """pseudo holds the four values in slot order; one that comes late is
    inserted at its place."""
    cdef uint32_t at = 0
    cdef int i
    for i in range(slot):
        at += s.p_len[i]
    if not bytes_put(&s.pseudo, value, n):
        return False
    # bytes_put appended at the end: move it before the later slots' values
    if at + n < s.pseudo.len:
        memmove(s.pseudo.p + s.pseudo.off + at + n, s.pseudo.p + s.pseudo.off + at, s.pseudo.len - at - n)
        memcpy(s.pseudo.p + s.pseudo.off + at, value, n)
    return True


cdef int h2_on_data(nghttp2_session *ng, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t n,
                    void *user_data) noexcept nogil:
    cdef lb_h2 *s2 = <lb_h2 *>user_data
    cdef lb_h2s *s = h2_stream(ng, stream_id)
    cdef char line[24]
    cdef int k
    if s != NULL and s.held:
        s.rx_total += n
        if s.rx_total > s.cl or not bytes_put(&s.rx, data, n):
            nghttp2_session_consume(ng, stream_id, n)
        else:
            s.rx_data += n
        return 0
    if s == NULL or s.h == NULL or s.reset:
        nghttp2_session_consume(ng, stream_id, n)   # nobody reads it: keep the connection's window open
        return 0
    s.rx_total += n
    if s.has_cl and s.rx_total > s.cl:
        # more DATA than its content-length: nghttp2 resets the stream at the
        # frame's end; none of it may reach the session before that
        s.reset = 1
        s.h.hflags |= HF_READABLE
        h2s_wake(s)
        nghttp2_session_consume(ng, stream_id, n)
        return 0
    if s.req_chunked:
        k = snprintf(line, sizeof(line), b"%zx\r\n", n)
        if not (bytes_put(&s.rx, line, k) and bytes_put(&s.rx, data, n) and bytes_put(&s.rx, b"\r\n", 2)):
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    elif not bytes_put(&s.rx, data, n):
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    s.rx_data += n
    s.h.hflags |= HF_READABLE
    h2s_wake(s)
    return 0


cdef int h2_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept nogil:
    cdef lb_h2 *s2 = <lb_h2 *>user_data
    cdef lb_h2s *s
    cdef uint8_t t = frame.hd.type
    if t == NGHTTP2_DATA:
        if frame.hd.length == 0 and not (frame.hd.flags & NGHTTP2_FLAG_END_STREAM):
            s2.empty_run += 1
            if s2.empty_run > 1:     # as Envoy: one empty frame in a row is allowed
                h2_glitch(s2, 1)
        else:
            s2.empty_run = 0
    elif t == NGHTTP2_HEADERS:
        s2.empty_run = 0
        s2.hblock = 0
        h2_idle_timer(s2)
    elif t == NGHTTP2_RST_STREAM:
        s = h2_stream(ng, frame.hd.stream_id)
        if s != NULL and not s.ended:
            h2_glitch(s2, 1)         # a stream cancelled before its answer: rapid reset
    elif t == NGHTTP2_PING and (frame.hd.flags & NGHTTP2_FLAG_ACK):
        if s2.goaway == 1:
            h2_goaway_final(s2)      # the answer to the shutdown notice's PING
    elif t == NGHTTP2_PING or t == NGHTTP2_PRIORITY or t == NGHTTP2_WINDOW_UPDATE or \
            (t == NGHTTP2_SETTINGS and not (frame.hd.flags & NGHTTP2_FLAG_ACK)):
        # control frames do little work each, but without limit they are a
        # flood; a stream's data earns its window updates
        if t != NGHTTP2_WINDOW_UPDATE or nghttp2_session_get_outbound_queue_size(ng) == 0:
            h2_glitch(s2, 1)
    if t != NGHTTP2_DATA and t != NGHTTP2_HEADERS:
        return 0
    s = h2_stream(ng, frame.hd.stream_id)
    if s == NULL:
        return 0
    if t == NGHTTP2_HEADERS and frame.headers.cat == NGHTTP2_HCAT_REQUEST:
        h2s_request(s2, s, (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0)
        return 0
    if (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) and not s.req_end:
        if s.held:
            s.req_end = 1
            if s.rx_total != s.cl:
                # DATA that does not add up to its content-length (RFC 9113 8.1.1)
                nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_PROTOCOL_ERROR)
                return 0
            h2s_attach(s2, s)
            return 0
        if s.req_chunked and s.h != NULL:
            if not (bytes_put(&s.rx, b"0\r\n", 3) and bytes_put(&s.rx, s.trailers.p + s.trailers.off, s.trailers.len)
                    and bytes_put(&s.rx, b"\r\n", 2)):
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
            bytes_free(&s.trailers)
        s.req_end = 1
        if s.h != NULL:
            s.h.hflags |= HF_READABLE
            h2s_wake(s)
    return 0


cdef int h2_on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept nogil:
    cdef lb_h2 *s2 = <lb_h2 *>user_data
    cdef lb_h2s *s
    if (frame.hd.type == NGHTTP2_DATA or frame.hd.type == NGHTTP2_HEADERS) \
            and (frame.hd.flags & NGHTTP2_FLAG_END_STREAM):
        s2.answered += 1
        s = h2_stream(ng, frame.hd.stream_id)
        if s != NULL:
            s.ended = 1
            if s.h == NULL:
                h2s_rest_unwanted(s)
    elif frame.hd.type == NGHTTP2_GOAWAY:
        lb_add_u64(&s2.w.stats.h2_goaways, 1)
    return 0


cdef int h2_on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code,
                            void *user_data) noexcept nogil:
    cdef lb_h2 *s2 = <lb_h2 *>user_data
    cdef lb_h2s *s = h2_stream(ng, stream_id)
    if s2.hblock == stream_id:
        # its header block was refused before it ended: the request timer
        # no longer applies
        s2.hblock = 0
        h2_idle_timer(s2)
    if s == NULL:
        return 0
    nghttp2_session_set_stream_user_data(ng, stream_id, NULL)
    s.closed = 1
    s2.n_open -= 1
    if s.h == NULL:
        h2s_free(s2, s)
        return 0
    if not s.ended or not s.req_end:
        # the client reset it, or nghttp2 did (a broken request): its session
        # sees a reset client
        s.reset = 1
        s.h.hflags |= HF_READABLE | HF_WRITABLE
        h2s_wake(s)
    return 0


# ---- streams become requests -------------------------------------------------------------

cdef void h2s_refuse(lb_h2 *s2, lb_h2s *s, uint16_t status) noexcept nogil:
    """lb's own answer to a request it cannot take, without a session."""
    cdef nghttp2_nv nv[2]
    cdef char code[3]
    code[0] = <char>(48 + status // 100)
    code[1] = <char>(48 + (status // 10) % 10)
    code[2] = <char>(48 + status % 10)
    nv[0].name = <uint8_t *>b":status"
    nv[0].namelen = 7
    nv[0].value = <uint8_t *>code
    nv[0].valuelen = 3
    nv[0].flags = NGHTTP2_NV_FLAG_NONE
    nv[1].name = <uint8_t *>b"content-length"
    nv[1].namelen = 14
    nv[1].value = <uint8_t *>b"0"
    nv[1].valuelen = 1
    nv[1].flags = NGHTTP2_NV_FLAG_NONE
    lb_add_u64(&s2.w.stats.http_errors, 1)
    s.submitted = 1
    s.ts = TX_DONE
    s.tx_eof = 1
    nghttp2_submit_response(s2.ng, s.id, nv, 2, NULL)


cdef void h2s_request(lb_h2 *s2, lb_h2s *s, bint end) noexcept nogil:
    """A request's header block is whole: its HTTP/1.1 head, then a session."""
    cdef const char *v = s.pseudo.p + s.pseudo.off
    cdef uint32_t mlen = s.p_len[0], plen = s.p_len[1], alen = s.p_len[2], hlen = s.p_len[3]
    cdef bint ok
    s.req_end = end
    if s.bad:
        h2s_refuse(s2, s, s.bad_status if s.bad_status else 400)
        return
    s.is_head = mlen == 4 and memcmp(v, b"HEAD", 4) == 0
    # a body of unknown length goes on chunked, as HTTP/1.1 has it
    s.req_chunked = not end and not s.has_cl
    ok = (bytes_put(&s.rx, v, mlen) and bytes_put(&s.rx, b" ", 1) and bytes_put(&s.rx, v + mlen, plen)
          and bytes_put(&s.rx, b" HTTP/1.1\r\n", 11))
    if alen:
        # :authority is the request's host (RFC 9113 8.3.1); a host field beside it is not used
        ok = ok and bytes_put(&s.rx, b"host: ", 6) and bytes_put(&s.rx, v + mlen + plen, alen) \
            and bytes_put(&s.rx, b"\r\n", 2)
    elif hlen:
        ok = ok and bytes_put(&s.rx, b"host: ", 6) and bytes_put(&s.rx, v + mlen + plen + alen, hlen) \
            and bytes_put(&s.rx, b"\r\n", 2)
    if s.hdrs.len:
        ok = ok and bytes_put(&s.rx, s.hdrs.p + s.hdrs.off, s.hdrs.len)
    if s.cookie.len:
        ok = ok and bytes_put(&s.rx, b"cookie: ", 8) and bytes_put(&s.rx, s.cookie.p + s.cookie.off, s.cookie.len) \
            and bytes_put(&s.rx, b"\r\n", 2)
    if s.req_chunked:
        ok = ok and bytes_put(&s.rx, b"transfer-encoding: chunked\r\n", 28)
    elif end and not s.has_cl and ((mlen == 4 and memcmp(v, b"POST", 4) == 0) or (mlen == 3 and memcmp(v, b"PUT", 3) == 0)
                                   or (mlen == 5 and memcmp(v, b"PATCH", 5) == 0)):
        ok = ok and bytes_put(&s.rx, b"content-length: 0\r\n", 19)   # what HTTP/1.1 origins expect of an empty body
    ok = ok and bytes_put(&s.rx, b"\r\n", 2)
    bytes_free(&s.hdrs)
    bytes_free(&s.cookie)
    bytes_free(&s.pseudo)
    if not ok:
        bytes_free(&s.rx)
        h2s_refuse(s2, s, 431)
        return
    if not end and s.has_cl and s.cl <= EARLY_CONNECT and not s.expect:
        # a small body comes whole before any session sees the request, as
        # HTTP/1.1 waits for it before connecting: one whose DATA does not add
        # up to its content-length is reset by nghttp2 and reaches no backend
        s.held = 1
        return
    h2s_attach(s2, s)


cdef void h2s_attach(lb_h2 *s2, lb_h2s *s) noexcept nogil:
    """A session for the stream's request, reading it from rx."""
    cdef lb_worker *w = s2.w
    cdef lb_hconn *p = s2.h
    cdef lb_hconn *h
    s.held = 0
    h = hconn_alloc(w)
    if h == NULL:
        bytes_free(&s.rx)
        nghttp2_submit_rst_stream(s2.ng, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_REFUSED_STREAM)
        return
    h.c.listener = p.c.listener
    h.hl = p.hl
    memcpy(&h.c.peer, &p.c.peer, sizeof(sockaddr_storage))
    memcpy(&h.local, &p.local, sizeof(sockaddr_storage))
    memcpy(h.ip, p.ip, sizeof(h.ip))
    h.ip_len = p.ip_len
    h.c.sk[SIDE_CLIENT].fd = -1
    h.c.sk[SIDE_CLIENT].xp = &XPRT_H2S
    h.c.sk[SIDE_CLIENT].ctx = s
    h.h2 = s2
    h.h2role = H2_STREAM
    h.c.state = CS_ESTABLISHED
    h.c.lg.on = p.c.lg.on
    h.c.lg.tls_version = p.c.lg.tls_version
    h.c.lg.tls_cipher = p.c.lg.tls_cipher
    if p.c.lg.sni_len and p.c.lg.sni != NULL:
        h.c.lg.sni = <char *>malloc(LOG_SNI_MAX)
        if h.c.lg.sni != NULL:
            memcpy(h.c.lg.sni, p.c.lg.sni, p.c.lg.sni_len)
            h.c.lg.sni_len = p.c.lg.sni_len
    h.st = HS_HEAD
    h.hflags = HF_READABLE | HF_WRITABLE
    s.h = h
    conn_queue(w, &h.c)


# ---- the connection ----------------------------------------------------------------------

cdef void h2_idle_timer(lb_h2 *s2) noexcept nogil:
    """No header block in progress: an idle connection has keepalive_timeout,
    one with streams waits on their own timers."""
    cdef lb_hconn *h = s2.h
    if s2.n_streams == 0:
        if h.tphase.list != &h.hl.ka_timer:
            tl_append(&h.hl.ka_timer, &h.tphase, s2.w.now_ms, h)
    else:
        tl_remove(&h.tphase)


cdef bint h2_start(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The connection speaks HTTP/2 from here on (its preface is in inb, or
    on its way): a session, and lb's SETTINGS."""
    cdef lb_http_listener *hl = h.hl
    cdef lb_h2 *s2 = <lb_h2 *>calloc(1, sizeof(lb_h2))
    cdef nghttp2_settings_entry iv[5]
    cdef socklen_t alen = sizeof(sockaddr_storage)
    if s2 == NULL:
        return False
    if nghttp2_session_server_new2(&s2.ng, w.http.h2cbs, s2, w.http.h2opt) != 0:
        free(s2)
        return False
    s2.w = w
    s2.h = h
    h.h2 = s2
    h.h2role = H2_CONN
    h.st = HS_H2
    s2.next = w.http.h2_all
    if s2.next != NULL:
        s2.next.prev = s2
    w.http.h2_all = s2
    if h.local.ss_family == 0:
        getsockname(h.c.sk[SIDE_CLIENT].fd, <sockaddr *>&h.local, &alen)   # the streams' PROXY headers
    # nghttp2 can only end the connection past the limit it knows: it is given
    # a larger one, and clients are told the configured one (h2_advertise), so
    # that lb refuses the streams between the two one by one (h2_on_begin_headers)
    iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
    iv[0].value = h2_engine_streams(hl)
    iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
    iv[1].value = hl.h2_window
    iv[2].settings_id = NGHTTP2_SETTINGS_MAX_FRAME_SIZE
    iv[2].value = hl.h2_max_frame
    iv[3].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
    iv[3].value = hl.max_head
    iv[4].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
    iv[4].value = 0
    nghttp2_submit_settings(s2.ng, NGHTTP2_FLAG_NONE, iv, 5)
    if hl.h2_conn_window > NGHTTP2_INITIAL_WINDOW_SIZE:
        nghttp2_session_set_local_window_size(s2.ng, NGHTTP2_FLAG_NONE, 0, hl.h2_conn_window)
    lb_add_u64(&w.stats.h2_connections, 1)
    h.hflags |= HF_WRITABLE
    h2_idle_timer(s2)
    return True


cdef void h2_teardown(lb_worker *w, lb_hconn *h) noexcept nogil:
    """The connection closes: every stream's session ends as if its client had
    reset it, then the session goes."""
    cdef lb_h2 *s2 = h.h2
    cdef lb_h2s *s
    cdef lb_h2s *n
    if s2 == NULL:
        return
    s2.dying = 1
    s = s2.streams
    while s != NULL:
        n = s.next
        if s.h != NULL:
            s.reset = 1
            s.h.hflags |= HF_EOF | HF_ERR
            log_term(&s.h.c, TERM_CLIENT_ABORT)
            h_close(w, s.h, True)    # its transport frees s (dying)
        else:
            h2s_free(s2, s)
        s = n
    if s2.prev != NULL:
        s2.prev.next = s2.next
    else:
        w.http.h2_all = s2.next
    if s2.next != NULL:
        s2.next.prev = s2.prev
    nghttp2_session_del(s2.ng)
    bytes_free(&s2.wbuf)
    free(s2)
    h.h2 = NULL


cdef void h2_goaway(lb_h2 *s2) noexcept nogil:
    """Graceful, in two steps (RFC 9113 6.8): a GOAWAY naming the highest
    possible stream tells the client to open no more, and a PING measures
    the round trip; once its answer is back, no stream the client opened
    before it read the first GOAWAY can still be on its way, and the final
    GOAWAY names the last stream lb took. Streams up to it are served; the
    client sends any later request again on a new connection."""
    if s2.goaway:
        return
    s2.goaway = 1
    nghttp2_submit_shutdown_notice(s2.ng)
    nghttp2_submit_ping(s2.ng, NGHTTP2_FLAG_NONE, NULL)
    h2_kick(s2)


cdef void h2_goaway_final(lb_h2 *s2) noexcept nogil:
    if s2.goaway == 3 or s2.goaway == 2:
        return
    s2.goaway = 3
    nghttp2_submit_goaway(s2.ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s2.ng),
                          NGHTTP2_NO_ERROR, NULL, 0)
    h2_kick(s2)


cdef inline uint32_t h2_engine_streams(lb_http_listener *hl) noexcept nogil:
    """The stream limit nghttp2 enforces (with a connection error): well past
    the one clients are told, which lb enforces stream by stream."""
    return hl.h2_max_streams * 2 + 16


cdef void h2_advertise(uint8_t *p, size_t n, uint32_t limit) noexcept nogil:
    """In lb's first frames as nghttp2 made them, SETTINGS_MAX_CONCURRENT_STREAMS
    says the configured limit instead of nghttp2's own (h2_engine_streams)."""
    cdef size_t i = 0, j, end
    while i + 9 <= n:
        end = i + 9 + ((<size_t>p[i] << 16) | (<size_t>p[i + 1] << 8) | p[i + 2])
        if p[i + 3] == NGHTTP2_SETTINGS and not (p[i + 4] & NGHTTP2_FLAG_ACK):
            j = i + 9
            while j + 6 <= end and j + 6 <= n:
                if p[j] == 0 and p[j + 1] == NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS:
                    p[j + 2] = <uint8_t>(limit >> 24)
                    p[j + 3] = <uint8_t>(limit >> 16)
                    p[j + 4] = <uint8_t>(limit >> 8)
                    p[j + 5] = <uint8_t>limit
                j += 6
        i = end


cdef int h2_write(lb_worker *w, lb_hconn *h) noexcept nogil:
    """Frames from nghttp2 to the socket, as far as the socket takes them.
    1 progress, 0 none, -1 the connection failed."""
    cdef lb_h2 *s2 = h.h2
    cdef const uint8_t *data
    cdef ssize_t n
    cdef int progress = 0
    while True:
        while s2.wbuf.len < H2_WBUF_HIGH:
            n = nghttp2_session_mem_send(s2.ng, &data)
            if n < 0:
                return -1
            if n == 0:
                break
            if not bytes_put(&s2.wbuf, data, n):
                return -1
            if not s2.advertised:
                # the session's first frame is lb's SETTINGS
                s2.advertised = 1
                h2_advertise(<uint8_t *>s2.wbuf.p + s2.wbuf.off + s2.wbuf.len - n, <size_t>n, h.hl.h2_max_streams)
        if s2.wbuf.len == 0:
            bytes_free(&s2.wbuf)
            return progress
        if not (h.hflags & HF_WRITABLE):
            return progress
        n = h.c.sk[SIDE_CLIENT].xp.send(&h.c.sk[SIDE_CLIENT], s2.wbuf.p + s2.wbuf.off, s2.wbuf.len)
        if n < 0:
            if n != XPRT_ERROR:
                h.hflags &= ~xprt_wait_flag(n, HF_READABLE, HF_WRITABLE)
                return progress
            return -1
        h.c.last_ms = w.now_ms
        progress = 1
        if <uint32_t>n < s2.wbuf.len:
            bytes_drop(&s2.wbuf, <uint32_t>n)
            h.hflags &= ~HF_WRITABLE
            return progress
        bytes_drop(&s2.wbuf, <uint32_t>n)


cdef int h2_run(lb_worker *w, lb_hconn *h) noexcept nogil:
    """One step of an HTTP/2 connection: what the client sent goes through
    nghttp2, then the frames it made go out."""
    cdef lb_h2 *s2 = h.h2
    cdef ssize_t rv
    cdef int progress = 0, st
    if h.inb.len:
        rv = nghttp2_session_mem_recv(s2.ng, <const uint8_t *>h.inb.p + h.inb.off, h.inb.len)
        if rv < 0:
            # fatal to the connection (nghttp2 answers the protocol errors it
            # can recover from itself): say why in a GOAWAY, if it can be sent
            lb_add_u64(&w.stats.h2_refused, 1)
            if rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC:
                h_close(w, h, False)     # not HTTP/2 at all
                return 1
            # nghttp2 makes no more frames after a fatal error: lb writes the GOAWAY
            h2_close(w, h, NGHTTP2_ENHANCE_YOUR_CALM if (
                rv == NGHTTP2_ERR_FLOODED or rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
                or rv == NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE) else NGHTTP2_PROTOCOL_ERROR)
            return 1
        hb_drop(w, &h.inb, h.inb.len)
        progress = 1
    if w.stopping and not s2.goaway:
        h2_goaway(s2)
    st = h2_write(w, h)
    if st < 0:
        h_close(w, h, True)
        return 1
    progress |= st
    if h.hflags & HF_ERR:
        h_close(w, h, True)          # the connection broke (a reset, a bad TLS record)
        return 1
    if s2.wbuf.len == 0 and not nghttp2_session_want_write(s2.ng):
        if (h.hflags & HF_EOF) and s2.n_streams == 0:
            h_close(w, h, False)     # the client left
            return 1
        if not nghttp2_session_want_read(s2.ng) or (s2.goaway == 3 and s2.n_streams == 0):
            h2_close(w, h)           # the final GOAWAY sent and every stream done
            return 1
    if s2.n_streams == 0 and h.tphase.list == NULL:
        h2_idle_timer(s2)
    return progress


cdef void h2_idle_close(lb_worker *w, lb_hconn *h) noexcept nogil:
    """keepalive_timeout, or a graceful stop, on a connection without streams:
    GOAWAY, then close. (One step: a request that crosses it is one an idle
    HTTP/1.1 connection's close would cross too, and clients retry those.)"""
    h2_goaway_final(h.h2)
    h2_close(w, h)


cdef void h2_close(lb_worker *w, lb_hconn *h, int goaway=-1) noexcept nogil:
    """The end of an HTTP/2 connection that lb decided (a GOAWAY is queued):
    the session goes, its last frames leave as an HTTP/1.1 connection's
    last bytes do (HS_CLOSING), then the write side is shut and what the
    client still sends is read and dropped for a while. Closing at once,
    with the client's frames unread, would send a reset that can destroy
    the GOAWAY before the client reads it."""
    cdef lb_h2 *s2 = h.h2
    cdef uint32_t n, last
    cdef uint8_t f[17]
    if goaway < 0:
        if h2_write(w, h) >= 0 and s2.wbuf.len and hb_need(w, &h.outb):
            n = s2.wbuf.len if s2.wbuf.len < HBUF_SIZE else HBUF_SIZE
            ob_put(&h.outb, s2.wbuf.p + s2.wbuf.off, n)
    elif hb_need(w, &h.outb):
        # a GOAWAY frame (RFC 9113 6.8): length 8, type 7, stream 0
        last = <uint32_t>nghttp2_session_get_last_proc_stream_id(s2.ng)
        memset(f, 0, 17)
        f[2] = 8
        f[3] = 7
        f[9] = <uint8_t>(last >> 24) & 0x7f
        f[10] = <uint8_t>(last >> 16)
        f[11] = <uint8_t>(last >> 8)
        f[12] = <uint8_t>last
        f[16] = <uint8_t>goaway
        ob_put(&h.outb, f, 17)
        lb_add_u64(&w.stats.h2_goaways, 1)
    h2_teardown(w, h)
    h.h2role = 0
    h.errored = 1                    # (linger: the client may still be sending)
    hb_give(w, &h.inb)
    h_closing(w, h)
    conn_queue(w, &h.c)


cdef void h2_stop_all(lb_worker *w) noexcept nogil:
    """A graceful stop: every connection is told, streams in flight finish."""
    cdef lb_h2 *s2 = w.http.h2_all
    cdef lb_h2 *n
    while s2 != NULL:
        n = s2.next
        h2_goaway(s2)
        s2 = n


cdef inline int h2_preface(lb_hconn *h) noexcept nogil:
    """The bytes read so far begin like the HTTP/2 connection preface (h2c
    with prior knowledge): 0 not it, 1 too few bytes to say, 2 it is."""
    cdef uint32_t n = h.inb.len if h.inb.len < 24 else 24
    if n == 0 or memcmp(h.inb.p + h.inb.off, H2_PREFACE, n) != 0:
        return 0
    return 2 if n == 24 else 1


cdef lb_sock *h_client_sock(lb_hconn *h) noexcept nogil:
    """The socket under a request: an HTTP/2 stream's is its connection's."""
    if h.h2role == H2_STREAM:
        return &h.h2.h.c.sk[SIDE_CLIENT]
    return &h.c.sk[SIDE_CLIENT]


# ---- set-up (Python, at start) ---------------------------------------------------------------

cdef int h2_worker_init(lb_worker *w) except -1:
    cdef lb_http_worker *hw = w.http
    cdef nghttp2_session_callbacks *cbs
    cdef nghttp2_option *opt
    if nghttp2_session_callbacks_new(&cbs) != 0 or nghttp2_option_new(&opt) != 0:
        raise MemoryError()
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2_on_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(cbs, h2_on_header)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2_on_data)
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_on_frame_recv)
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, h2_on_frame_send)
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_on_stream_close)
    # windows open as sessions read request bodies, not as frames arrive
    nghttp2_option_set_no_auto_window_update(opt, 1)
    # lb's own glitch budget (max_glitches) ends a rapid reset first, with
    # ENHANCE_YOUR_CALM; nghttp2's limit stays behind it
    nghttp2_option_set_stream_reset_rate_limit(opt, 20000, 1000)
    hw.h2cbs = cbs
    hw.h2opt = opt
    hw.h2nv = <nghttp2_nv *>calloc(HTTP_MAX_FIELDS_CAP + 8, sizeof(nghttp2_nv))
    hw.h2low = <char *>malloc(HBUF_SIZE)
    if hw.h2nv == NULL or hw.h2low == NULL:
        raise MemoryError()
    return 0
