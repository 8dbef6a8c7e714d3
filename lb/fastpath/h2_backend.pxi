# HTTP/2 to backends (a pool with protocol = "h2"), driven from the compiled
# loop through nghttp2 client sessions; the mirror image of fastpath/h2.pxi.
#
# A backend's HTTP/2 connection is an lb_h2b: one socket (h2c, or TLS with ALPN
# "h2"), one nghttp2 client session, and up to the backend's
# SETTINGS_MAX_CONCURRENT_STREAMS requests at once; this worker opens another
# connection to the same backend only when those are busy. Idle connections
# stay for the pool's keepalive_timeout.
#
# A request taken by such a pool still gets an lb_bconn of its own, whose
# transport (XPRT_H2B) is one stream: the HTTP/1.1 request the http engine
# writes becomes HEADERS (then DATA, then trailing HEADERS for a chunked body's
# trailers), and the stream's frames become an HTTP/1.1 response for the engine
# to read (a body without content-length is chunked, its trailers with it), so
# the response parser, rules, retries, logs and metrics apply unchanged.
#
# Flow control holds each stream to its own window: response DATA is given back
# to the backend's window only as the engine reads it, and the engine reads it
# only as fast as its client takes it, so a slow client stream never blocks the
# others on the same backend connection.
#
# A stream the backend never processed (above a GOAWAY's last stream id, or
# refused with REFUSED_STREAM, or never sent because the connection failed) is
# sent again, to the same backend on a new connection or to the next choice,
# whatever its method, when its request is still whole in the engine's buffer.
#
# nghttp2's callbacks only record and queue: the engine's sessions and the
# connections run from the pending list, never from inside the library.

cdef enum:
    H2B_CONNECTING = 1
    H2B_READY = 2
    H2B_DEAD = 3

# the response as the engine reads it (lb_h2bs.rs)
cdef enum:
    H2R_HEAD = 0                     # until the final response head
    H2R_BODY = 1
    H2R_DONE = 2                     # whole in rx

cdef enum:
    H2B_WINDOW = 262144              # each stream's response window (SETTINGS_INITIAL_WINDOW_SIZE)
    H2B_CONN_WINDOW = 16777216       # the connection's: many streams' windows
    H2B_MAX_STREAMS = 1000           # streams per connection, whatever the backend allows
    H2B_HEAD_MAX = 49152             # a response head lb takes (the engine reads it in one 64 KiB buffer)
    H2B_READ_ROUNDS = 16             # socket reads per run before others get their turn


cdef inline void h2b_kick(lb_h2b *conn) noexcept nogil:
    """The connection has frames to make or send: run it this turn."""
    if conn != NULL and conn.bstate != H2B_DEAD:
        conn_queue(conn.w, &conn.c)


cdef inline void h2bs_wake(lb_worker *w, lb_h2bs *s) noexcept nogil:
    if s.b != NULL and s.b.h != NULL and s.b.h.c.state != CS_CLOSED:
        conn_queue(w, &s.b.h.c)


# ---- the stream transport (a request's lb_bconn <-> its stream) -----------------------------

cdef ssize_t h2bs_recv(lb_sock *sk, void *buf, size_t n) noexcept nogil:
    cdef lb_h2bs *s = <lb_h2bs *>sk.ctx
    cdef lb_h2b *conn = s.conn
    cdef uint32_t k
    cdef uint64_t give
    if s.rx.len:
        k = s.rx.len if s.rx.len < n else <uint32_t>n
        memcpy(buf, s.rx.p + s.rx.off, k)
        bytes_drop(&s.rx, k)
        # DATA goes back to the backend's window as the engine reads it: the
        # framing lb added makes rx longer than the DATA, so once rx is empty
        # all of it has been read
        give = s.rx_data if (s.rx.len == 0 or k > s.rx_data) else k
        if give and conn != NULL and s.id > 0:
            nghttp2_session_consume(conn.ng, s.id, give)
            h2b_kick(conn)
        s.rx_data -= give
        if s.rx.len == 0:
            bytes_free(&s.rx)
        return k
    if s.rs == H2R_DONE:
        return 0
    if s.reset:
        errno = ECONNRESET
        return XPRT_ERROR
    return XPRT_WANT_READ


cdef int h2bs_take_head(lb_h2bs *s, const uint8_t *p, size_t n) noexcept nogil:
    """The HTTP/1.1 request head the engine wrote into a HEADERS frame (the
    request's stream is opened here): bytes taken, or -1."""
    cdef lb_h2b *conn = s.conn
    cdef lb_worker *w = conn.w
    cdef lb_http_worker *hw = w.http
    cdef http_req *r = hw.scratch
    cdef nghttp2_nv *nv = hw.h2nv
    cdef char *low = hw.h2low
    cdef uint32_t i, j, used = 0, k, toff, tlen
    cdef http_field *f
    cdef const uint8_t *name
    cdef const uint8_t *t
    cdef nghttp2_data_provider prd
    cdef int32_t id
    if http_parse_request_c(p, n, r, HBUF_SIZE, HBUF_SIZE, HTTP_MAX_FIELDS_CAP) != 0:
        return -1
    if ieq_exact(p + r.method_off, r.method_len, b"CONNECT"):
        return -1                    # a tunnel is not a request HTTP/2 carries as such (RFC 9113 8.5)
    # :path is the origin form: an absolute-form target loses its scheme and authority
    toff = r.target_off
    tlen = r.target_len
    t = p + toff
    if tlen and t[0] != 47 and not (tlen == 1 and t[0] == 42):
        j = 0
        while j + 2 < tlen and not (t[j] == 58 and t[j + 1] == 47 and t[j + 2] == 47):
            j += 1
        j += 3
        while j < tlen and t[j] != 47:
            j += 1
        if j >= tlen:
            toff = 0
            tlen = 1
            t = <const uint8_t *>b"/"
        else:
            t = t + j
            tlen -= j
    nv[0].name = <uint8_t *>b":method"
    nv[0].namelen = 7
    nv[0].value = <uint8_t *>p + r.method_off
    nv[0].valuelen = r.method_len
    nv[1].name = <uint8_t *>b":scheme"
    nv[1].namelen = 7
    if w.pools[conn.pool].tls != NULL:
        nv[1].value = <uint8_t *>b"https"
        nv[1].valuelen = 5
    else:
        nv[1].value = <uint8_t *>b"http"
        nv[1].valuelen = 4
    nv[2].name = <uint8_t *>b":path"
    nv[2].namelen = 5
    nv[2].value = <uint8_t *>t
    nv[2].valuelen = tlen
    k = 3
    if r.host >= 0:
        nv[3].name = <uint8_t *>b":authority"
        nv[3].namelen = 10
        nv[3].value = <uint8_t *>p + r.fields[r.host].value_off
        nv[3].valuelen = r.fields[r.host].value_len
        k = 4
    for i in range(k):
        nv[i].flags = NGHTTP2_NV_FLAG_NONE
    for i in range(r.n_fields):
        f = &r.fields[i]
        name = p + f.name_off
        if f.name_len == 2 and ieq(name, 2, b"te"):
            # the one value HTTP/2 allows (RFC 9113 8.2.2); gRPC servers want it
            if not ieq(p + f.value_off, f.value_len, b"trailers"):
                continue
        elif (f.name_len == 4 or f.name_len == 7 or f.name_len == 10 or f.name_len >= 16) and (
                hop_by_hop(name, f.name_len) or ieq(name, f.name_len, b"transfer-encoding")
                or ieq(name, f.name_len, b"host")):
            continue                 # (only these lengths can be connection-specific or Host)
        if used + f.name_len > HBUF_SIZE or k >= HTTP_MAX_FIELDS_CAP + 8:
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
    s.is_head = ieq_exact(p + r.method_off, r.method_len, b"HEAD")
    s.v10 = r.version == 10
    if r.chunked:
        s.ts = TX_CHUNKED
        s.tck = CKD_SIZE
        s.tleft = 0
    elif r.content_length > 0:
        s.ts = TX_CL
        s.tleft = r.content_length
    else:
        s.ts = TX_DONE
        s.tx_eof = 1
    if s.ts == TX_DONE:
        id = nghttp2_submit_request(conn.ng, NULL, nv, k, NULL, s)
    else:
        prd.source.ptr = s
        prd.read_callback = h2bs_read_data
        id = nghttp2_submit_request(conn.ng, NULL, nv, k, &prd, s)
    if id < 0:
        return -1
    s.id = id
    h2b_kick(conn)
    return <int>r.head_len


cdef ssize_t h2bs_send(lb_sock *sk, const void *buf, size_t n) noexcept nogil:
    cdef lb_h2bs *s = <lb_h2bs *>sk.ctx
    cdef const uint8_t *p = <const uint8_t *>buf
    cdef size_t done = 0, k
    cdef uint32_t room
    cdef int st
    if s.closed and not s.reset:
        # the backend answered whole before the request ended: the rest of the
        # request is not wanted (RFC 9113 8.1); the engine ends the exchange
        return <ssize_t>n
    if s.reset or s.conn == NULL:
        errno = EPIPE
        return XPRT_ERROR
    while done < n:
        if s.id == 0:
            st = h2bs_take_head(s, p + done, n - done)
            if st <= 0:
                errno = EPROTO
                return XPRT_ERROR
            done += st
        elif s.ts == TX_DONE:
            break                    # bytes past the request's end (none are sent)
        elif s.ts == TX_CHUNKED:
            k = h2_dechunk(&s.ts, &s.tck, &s.tleft, &s.tx, &s.trailers, &s.tx_eof, p + done, n - done)
            if k == 0:
                break
            done += k
        else:
            room = H2_TX_CAP - s.tx.len if s.tx.len < H2_TX_CAP else 0
            k = n - done
            if k > s.tleft:
                k = <size_t>s.tleft
            if k > room:
                k = room
            if k == 0 or not bytes_put(&s.tx, p + done, k):
                break
            done += k
            s.tleft -= k
            if s.tleft == 0:
                s.ts = TX_DONE
                s.tx_eof = 1
    if s.deferred and (s.tx.len or s.tx_eof):
        s.deferred = 0
        nghttp2_session_resume_data(s.conn.ng, s.id)
        h2b_kick(s.conn)
    if done < n and s.ts != TX_DONE:
        s.wblocked = 1               # the engine waits for HF_WRITABLE: tx draining gives it back
        if done == 0:
            return XPRT_WANT_WRITE
    return <ssize_t>done


cdef void h2bs_shutw(lb_sock *sk) noexcept nogil:
    pass                             # a request ends by its own framing (END_STREAM)


cdef void h2bs_close(lb_sock *sk, bint reset) noexcept nogil:
    """The engine lets go of the request's stream. One still open is reset
    unless both its request and its response are whole (a stream the response
    ended early is reset with NO_ERROR by nghttp2 itself). Its state stays until
    nghttp2 closed it."""
    cdef lb_h2bs *s = <lb_h2bs *>sk.ctx
    cdef lb_h2b *conn = s.conn
    s.b = NULL
    if conn == NULL or s.id == 0:
        h2bs_free(conn, s)
        return
    if not s.closed:
        if reset or s.rs != H2R_DONE or s.ts != TX_DONE:
            nghttp2_submit_rst_stream(conn.ng, NGHTTP2_FLAG_NONE, s.id, NGHTTP2_CANCEL)
    if s.rx_data:
        # what it did not read goes back to the connection's window
        nghttp2_session_consume(conn.ng, s.id, s.rx_data)
        s.rx_data = 0
    bytes_free(&s.rx)
    h2b_kick(conn)
    if s.closed:
        h2bs_free(conn, s)


cdef lb_xprt XPRT_H2B
XPRT_H2B.name = b"h2-backend-stream"
XPRT_H2B.recv = h2bs_recv
XPRT_H2B.send = h2bs_send
XPRT_H2B.shutw = h2bs_shutw
XPRT_H2B.close = h2bs_close
XPRT_H2B.splice = 0


cdef void h2bs_free(lb_h2b *conn, lb_h2bs *s) noexcept nogil:
    """A stream neither the engine nor nghttp2 holds any more. A connection
    left without streams waits in the pool (its run decides: idle or closed)."""
    if conn != NULL:
        if s.prev != NULL:
            s.prev.next = s.next
        else:
            conn.streams = s.next
        if s.next != NULL:
            s.next.prev = s.prev
        if s.id > 0 and not s.closed and not conn.dying:
            nghttp2_session_set_stream_user_data(conn.ng, s.id, NULL)
        conn.n_streams -= 1
        if conn.n_streams == 0:
            h2b_kick(conn)
    bytes_free(&s.tx)
    bytes_free(&s.trailers)
    bytes_free(&s.rx)
    h2bs_give(s)


cdef lb_h2bs *h2bs_take(lb_http_worker *hw) noexcept nogil:
    cdef lb_h2bs *s = hw.free_h2bs
    if s == NULL:
        s = <lb_h2bs *>calloc(1, sizeof(lb_h2bs))
        if s != NULL:
            s.hw = hw
        return s
    hw.free_h2bs = s.next
    hw.n_free_h2bs -= 1
    memset(s, 0, sizeof(lb_h2bs))
    s.hw = hw
    return s


cdef void h2bs_give(lb_h2bs *s) noexcept nogil:
    cdef lb_http_worker *hw = s.hw
    if hw.n_free_h2bs >= 1024:
        free(s)
        return
    s.next = hw.free_h2bs
    hw.free_h2bs = s
    hw.n_free_h2bs += 1


cdef void h2bs_broken(lb_h2bs *s) noexcept nogil:
    """The stream ends without its whole response: the engine reads what
    there is, then the reset. A request the backend never processed is
    made new again in the engine's eyes, to be sent once more."""
    cdef lb_bconn *b = s.b
    cdef lb_hconn *h
    s.reset = 1
    if b == NULL:
        return
    h = b.h
    if s.retry and h != NULL and h.replayable and h.rs_state == RS_WAIT and s.rx.len == 0:
        h.up_sent = 0
        b.served = 1                 # as a kept-alive connection the backend closed: not its failure
    # RDHUP: the engine reads on past the last bytes (a short read does not
    # end its reading) and so sees the reset
    b.flags |= HF_READABLE | HF_WRITABLE | HF_RDHUP


cdef ssize_t h2bs_read_data(nghttp2_session *ng, int32_t stream_id, uint8_t *buf, size_t length,
                            uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept nogil:
    cdef lb_h2bs *s = <lb_h2bs *>source.ptr
    cdef lb_h2b *conn = <lb_h2b *>user_data
    cdef size_t k = s.tx.len if s.tx.len < length else length
    cdef uint32_t n
    if k:
        memcpy(buf, s.tx.p + s.tx.off, k)
        bytes_drop(&s.tx, <uint32_t>k)
        if s.wblocked and s.tx.len < H2_TX_CAP // 2:
            s.wblocked = 0
            if s.b != NULL:
                s.b.flags |= HF_WRITABLE
                h2bs_wake(conn.w, s)
        if s.tx.len == 0 and s.tx_eof == 0:
            bytes_free(&s.tx)
    if s.tx.len == 0 and s.tx_eof:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
        if s.trailers.len:
            n = h2_trailer_fields(conn.w.http.h2nv, &s.trailers)
            if n and nghttp2_submit_trailer(ng, stream_id, conn.w.http.h2nv, n) == 0:
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
        return <ssize_t>k
    if k == 0:
        s.deferred = 1
        return NGHTTP2_ERR_DEFERRED
    return <ssize_t>k


# ---- nghttp2's callbacks (the client sessions) ---------------------------------------------

cdef int h2b_on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept nogil:
    """A header block goes straight into rx as HTTP/1.1 lines: a response head
    (its status line first: nghttp2 has pseudo-header fields come first), or
    trailers, which end a chunked body."""
    cdef lb_h2bs *s = <lb_h2bs *>nghttp2_session_get_stream_user_data(ng, frame.hd.stream_id)
    if s == NULL or s.b == NULL:
        return 0
    s.status = 0
    s.hbytes = 0
    s.skip_block = 0
    if s.rs == H2R_BODY:
        if not s.rs_chunked:
            s.skip_block = 1         # a body of known length has no place for trailers
        elif not bytes_put(&s.rx, b"0\r\n", 3):
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    return 0


cdef int h2b_on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                       const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) noexcept nogil:
    cdef lb_h2bs *s = <lb_h2bs *>nghttp2_session_get_stream_user_data(ng, frame.hd.stream_id)
    cdef char line[32]
    cdef int k
    if s == NULL or s.b == NULL or s.skip_block:
        return 0
    if namelen and name[0] == 58:
        if namelen == 7 and memcmp(name, b":status", 7) == 0 and valuelen == 3:
            # (nghttp2 checked it is three digits)
            s.status = <uint16_t>((value[0] - 48) * 100 + (value[1] - 48) * 10 + (value[2] - 48))
            if s.status == 101:
                s.skip_block = 1     # no upgrade over HTTP/2 (RFC 9113 8.6)
                return 0
            k = snprintf(line, sizeof(line), b"HTTP/1.1 %03u \r\n", <unsigned int>s.status)
            if not bytes_put(&s.rx, line, k):
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        return 0
    if namelen == 14 and s.rs == H2R_HEAD and memcmp(name, b"content-length", 14) == 0:
        s.has_cl = 1
    s.hbytes += namelen + valuelen + 4
    if s.hbytes > H2B_HEAD_MAX or not (
            bytes_put(&s.rx, name, namelen) and bytes_put(&s.rx, b": ", 2)
            and bytes_put(&s.rx, value, valuelen) and bytes_put(&s.rx, b"\r\n", 2)):
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE     # the stream is reset: 502
    return 0


cdef bint h2bs_head(lb_h2bs *s, bint end) noexcept nogil:
    """The end of a response head (interim or final) in rx: its framing."""
    cdef bint ok = True
    cdef bint bodiless = s.is_head or s.status == 204 or s.status == 304
    if s.status < 200:
        return ok and bytes_put(&s.rx, b"\r\n", 2)
    s.rs = H2R_DONE if end else H2R_BODY
    if not bodiless and not s.has_cl:
        if end:
            ok = ok and bytes_put(&s.rx, b"content-length: 0\r\n", 19)
        elif not s.v10:
            # a body of unknown length goes on chunked, so its trailers can too
            # (an HTTP/1.0 client's ends with the stream instead)
            s.rs_chunked = 1
            ok = ok and bytes_put(&s.rx, b"transfer-encoding: chunked\r\n", 28)
    return ok and bytes_put(&s.rx, b"\r\n", 2)


cdef int h2b_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept nogil:
    cdef lb_h2b *conn = <lb_h2b *>user_data
    cdef lb_h2bs *s
    cdef bint end = (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0
    if frame.hd.type == NGHTTP2_SETTINGS and not (frame.hd.flags & NGHTTP2_FLAG_ACK):
        conn.settled = 1
        return 0
    if frame.hd.type == NGHTTP2_GOAWAY:
        # no new streams on it; those above its last stream id are closed by
        # nghttp2 as refused (sent again elsewhere), the rest finish
        conn.goaway = 1
        return 0
    if frame.hd.type != NGHTTP2_HEADERS and frame.hd.type != NGHTTP2_DATA:
        return 0
    s = <lb_h2bs *>nghttp2_session_get_stream_user_data(ng, frame.hd.stream_id)
    if s == NULL or s.b == NULL:
        return 0
    if frame.hd.type == NGHTTP2_HEADERS:
        if s.rs == H2R_HEAD:
            if s.skip_block or s.status == 0:
                return 0
            if not h2bs_head(s, end):
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        elif s.rs == H2R_BODY:
            # trailers (begun in rx by h2b_on_begin_headers): the end of the body
            if s.rs_chunked and not bytes_put(&s.rx, b"\r\n", 2):
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
            s.rs = H2R_DONE
    elif end and s.rs == H2R_BODY:
        if s.rs_chunked and not bytes_put(&s.rx, b"0\r\n\r\n", 5):
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        s.rs = H2R_DONE
    if s.rs == H2R_DONE:
        conn.served += 1
        s.b.flags |= HF_RDHUP        # (a body that ends with the stream: the engine reads to its end)
    s.b.flags |= HF_READABLE
    h2bs_wake(conn.w, s)
    return 0


cdef int h2b_on_data(nghttp2_session *ng, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t n,
                     void *user_data) noexcept nogil:
    cdef lb_h2b *conn = <lb_h2b *>user_data
    cdef lb_h2bs *s = <lb_h2bs *>nghttp2_session_get_stream_user_data(ng, stream_id)
    cdef char line[24]
    cdef int k
    if s == NULL or s.b == NULL or s.rs != H2R_BODY:
        nghttp2_session_consume(ng, stream_id, n)   # nobody reads it: keep the connection's window open
        return 0
    if s.rs_chunked:
        k = snprintf(line, sizeof(line), b"%zx\r\n", n)
        if not (bytes_put(&s.rx, line, k) and bytes_put(&s.rx, data, n) and bytes_put(&s.rx, b"\r\n", 2)):
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    elif not bytes_put(&s.rx, data, n):
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    s.rx_data += n
    s.b.flags |= HF_READABLE
    h2bs_wake(conn.w, s)
    return 0


cdef int h2b_on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept nogil:
    cdef lb_h2bs *s
    if frame.hd.type == NGHTTP2_HEADERS:
        s = <lb_h2bs *>nghttp2_session_get_stream_user_data(ng, frame.hd.stream_id)
        if s != NULL:
            s.sent = 1
    return 0


cdef int h2b_on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code,
                             void *user_data) noexcept nogil:
    cdef lb_h2b *conn = <lb_h2b *>user_data
    cdef lb_h2bs *s = <lb_h2bs *>nghttp2_session_get_stream_user_data(ng, stream_id)
    if s == NULL:
        return 0
    nghttp2_session_set_stream_user_data(ng, stream_id, NULL)
    s.closed = 1
    if s.b == NULL:
        h2bs_free(conn, s)
        return 0
    if s.rs != H2R_DONE:
        # reset by the backend (502, or the cut of a response begun), or
        # refused before it was processed: sent again
        s.retry = error_code == NGHTTP2_REFUSED_STREAM or not s.sent
        h2bs_broken(s)
    else:
        s.b.flags |= HF_READABLE | HF_WRITABLE
    h2bs_wake(conn.w, s)
    return 0


# ---- the connections ------------------------------------------------------------------------

cdef inline uint32_t h2b_max_streams(lb_h2b *conn) noexcept nogil:
    """The streams the connection may carry: the backend's SETTINGS say; before
    they arrive, what another connection to the same backend learned (else
    nghttp2's assumption), so a burst does not pile onto a new connection."""
    cdef uint32_t n
    if not conn.settled and conn.hint_streams:
        return conn.hint_streams
    n = nghttp2_session_get_remote_settings(conn.ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
    return n if n < H2B_MAX_STREAMS else H2B_MAX_STREAMS


cdef void h2b_unlink(lb_worker *w, lb_h2b *conn) noexcept nogil:
    cdef lb_http_pool *hp = w.pools[conn.pool].http
    cdef uint32_t off = conn.slot - w.pools[conn.pool].shm.first_slot
    if conn.prev != NULL:
        conn.prev.next = conn.next
    elif hp.h2_conns[off] == conn:
        hp.h2_conns[off] = conn.next
    if conn.next != NULL:
        conn.next.prev = conn.prev
    conn.next = NULL
    conn.prev = NULL


cdef lb_h2b *h2b_open(lb_worker *w, lb_pool_rt *p, int32_t slot, int *err) noexcept nogil:
    """A new HTTP/2 connection to slot, connecting. NULL: err says why
    (CONNECT_NO_FD, or -1 for a connect that failed at once)."""
    cdef lb_http_worker *hw = w.http
    cdef lb_h2b *conn
    cdef epoll_event ev
    cdef nghttp2_settings_entry iv[3]
    cdef uint32_t off = slot - p.shm.first_slot
    cdef int fd = backend_connect(w, slot)
    if fd < 0:
        err[0] = fd
        return NULL
    conn = <lb_h2b *>calloc(1, sizeof(lb_h2b))
    if conn == NULL or nghttp2_session_client_new2(&conn.ng, hw.h2bcbs, conn, hw.h2bopt) != 0:
        free(conn)
        close(fd)
        err[0] = CONNECT_NO_FD       # no memory here: not the backend's fault
        return NULL
    conn.c.kind = KIND_H2B
    conn.c.state = CS_ESTABLISHED
    sock_reset(&conn.c.sk[SIDE_CLIENT])
    sock_plain(&conn.c.sk[SIDE_BACKEND], fd)
    conn.w = w
    conn.pool = <int32_t>(p - w.pools)
    conn.slot = slot
    conn.bstate = H2B_CONNECTING
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
    ev.data.u64 = <uint64_t><size_t>conn | TAG_SIGNAL
    w.fds += 1
    lb_store_i64(&w.stats.fds, w.fds)
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
        h2b_teardown(w, conn)
        err[0] = CONNECT_NO_FD
        return NULL
    # lb reads each stream's response only as fast as its client takes it:
    # windows are given back as the engine reads, not as frames arrive
    iv[0].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
    iv[0].value = 0
    iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
    iv[1].value = H2B_WINDOW
    iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
    iv[2].value = H2B_HEAD_MAX
    nghttp2_submit_settings(conn.ng, NGHTTP2_FLAG_NONE, iv, 3)
    nghttp2_session_set_local_window_size(conn.ng, NGHTTP2_FLAG_NONE, 0, H2B_CONN_WINDOW)
    conn.next = p.http.h2_conns[off]
    if conn.next != NULL:
        conn.next.prev = conn
    p.http.h2_conns[off] = conn
    return conn


cdef lb_bconn *h2b_bconn(lb_worker *w, lb_pool_rt *p, int32_t slot, bint fresh, int *err) noexcept nogil:
    """A backend connection for one request of an h2 pool: a stream of this
    worker's connection to slot with room for one more, or of a new one
    (fresh: a new one only). NULL: err as for h2b_open."""
    cdef uint32_t off = slot - p.shm.first_slot
    cdef lb_h2b *conn = NULL
    cdef lb_h2b *c2
    cdef lb_h2bs *s
    cdef lb_bconn *b
    if not fresh:
        c2 = p.http.h2_conns[off]
        while c2 != NULL:
            if c2.bstate != H2B_DEAD and not c2.goaway and c2.n_streams < h2b_max_streams(c2):
                conn = c2
                break
            c2 = c2.next
    if conn == NULL:
        conn = h2b_open(w, p, slot, err)
        if conn == NULL:
            return NULL
        c2 = conn.next
        while c2 != NULL and not c2.settled:
            c2 = c2.next
        if c2 != NULL:
            conn.hint_streams = h2b_max_streams(c2)
    s = h2bs_take(w.http)
    b = bconn_alloc(w) if s != NULL else NULL
    if b == NULL:
        if s != NULL:
            h2bs_give(s)
        err[0] = CONNECT_NO_FD
        if conn.n_streams == 0:
            h2b_kick(conn)           # its run closes or parks it
        return NULL
    b.sk.fd = -1
    b.sk.xp = &XPRT_H2B
    b.sk.ctx = s
    b.slot = slot
    b.pool = conn.pool
    s.conn = conn
    s.b = b
    s.next = conn.streams
    if s.next != NULL:
        s.next.prev = s
    conn.streams = s
    conn.n_streams += 1
    tl_remove(&conn.tn)              # not idle
    if conn.bstate == H2B_READY:
        b.state = BS_READY
        b.flags = HF_WRITABLE
    else:
        b.state = BS_CONNECTING
        tl_append(&p.http.connect_timer, &b.tn, w.now_ms, b)
    return b


cdef void h2b_ready(lb_worker *w, lb_h2b *conn) noexcept nogil:
    """Connected (and handshaken): the requests waiting for it go on."""
    cdef lb_h2bs *s = conn.streams
    cdef lb_bconn *b
    conn.bstate = H2B_READY
    lb_store_u64(&w.bstats[conn.slot].consecutive_failures, 0)
    while s != NULL:
        b = s.b
        if b != NULL and b.state == BS_CONNECTING:
            tl_remove(&b.tn)
            b.state = BS_READY
            b.flags |= HF_WRITABLE
            if b.h != NULL:
                log_mark(w, &b.h.c, &b.h.c.lg.t_connect)
                conn_queue(w, &b.h.c)
        s = s.next
    conn_queue(w, &conn.c)


cdef void h2b_fail(lb_worker *w, lb_h2b *conn) noexcept nogil:
    """The connection failed (or its connect did): every stream on it ends.
    Requests still waiting for the connection try the next choice, as after
    any failed connect; streams under way see a reset (retried when they
    never left)."""
    cdef lb_h2bs *s = conn.streams
    cdef lb_h2bs *n
    cdef lb_bconn *b
    cdef lb_hconn *h
    conn.streams = NULL
    conn.dying = 1
    h2b_unlink(w, conn)
    while s != NULL:
        n = s.next
        s.conn = NULL
        s.next = NULL
        s.prev = NULL
        b = s.b
        if b == NULL:
            h2bs_free(NULL, s)
        elif b.state == BS_CONNECTING:
            h = b.h
            tl_remove(&b.tn)
            if h != NULL:
                h_backend_failed(w, h, False, True)     # closes b (and frees s)
                if h.c.state != CS_CLOSED:
                    conn_queue(w, &h.c)
        else:
            s.retry = s.retry or not s.sent
            if not s.closed and s.rs != H2R_DONE:
                if conn.served:
                    # a connection that served before failed under it: as for
                    # a kept-alive HTTP/1.1 connection, the request may go to
                    # the same backend on a new one, and the backend is not blamed
                    b.served = 1
                h2bs_broken(s)
            s.closed = 1
            h2bs_wake(w, s)
        s = n
    conn.n_streams = 0
    h2b_teardown(w, conn)


cdef void h2b_teardown(lb_worker *w, lb_h2b *conn) noexcept nogil:
    """The socket and the session go; the struct is freed after this turn's
    events (one of them may still name it)."""
    if conn.bstate == H2B_DEAD:
        return
    conn.bstate = H2B_DEAD
    conn.dying = 1
    h2b_unlink(w, conn)
    tl_remove(&conn.tn)
    sock_close(&conn.c.sk[SIDE_BACKEND], False)
    w.fds -= 1
    lb_store_i64(&w.stats.fds, w.fds)
    if w.pause:
        accept_recheck(w)
    nghttp2_session_del(conn.ng)
    conn.ng = NULL
    bytes_free(&conn.wbuf)
    conn.c.state = CS_CLOSED
    conn.c.next = w.closed
    w.closed = &conn.c


cdef void h2b_close(lb_worker *w, lb_h2b *conn) noexcept nogil:
    """An idle connection lb no longer wants: GOAWAY (best effort), then close."""
    if conn.bstate == H2B_READY and conn.n_streams == 0:
        nghttp2_session_terminate_session(conn.ng, NGHTTP2_NO_ERROR)
        h2b_write(w, conn)
    h2b_fail(w, conn)


cdef int h2b_write(lb_worker *w, lb_h2b *conn) noexcept nogil:
    """Frames from nghttp2 to the socket, as far as it takes them: 1
    progress, 0 none, -1 the connection failed."""
    cdef lb_sock *sk = &conn.c.sk[SIDE_BACKEND]
    cdef const uint8_t *data
    cdef ssize_t n
    cdef int progress = 0
    while True:
        while conn.wbuf.len < H2_WBUF_HIGH:
            n = nghttp2_session_mem_send(conn.ng, &data)
            if n < 0:
                return -1
            if n == 0:
                break
            if not bytes_put(&conn.wbuf, data, n):
                return -1
        if conn.wbuf.len == 0:
            bytes_free(&conn.wbuf)
            return progress
        if not (conn.bflags & HF_WRITABLE):
            return progress
        n = sk.xp.send(sk, conn.wbuf.p + conn.wbuf.off, conn.wbuf.len)
        if n < 0:
            if n != XPRT_ERROR:
                conn.bflags &= ~xprt_wait_flag(n, HF_READABLE, HF_WRITABLE)
                return progress
            return -1
        progress = 1
        if <uint32_t>n < conn.wbuf.len:
            bytes_drop(&conn.wbuf, <uint32_t>n)
            conn.bflags &= ~HF_WRITABLE
            return progress
        bytes_drop(&conn.wbuf, <uint32_t>n)


cdef void h2b_run(lb_worker *w, lb_h2b *conn) noexcept nogil:
    """One step of a backend connection: what the backend sent goes through
    nghttp2 (its callbacks fill the streams' rx and wake their sessions),
    then the frames made go out; a connection left without streams is parked
    or closed."""
    cdef lb_sock *sk = &conn.c.sk[SIDE_BACKEND]
    cdef lb_http_pool *hp
    cdef char buf[16384]
    cdef ssize_t n, rv
    cdef int rounds = 0
    if conn.bstate == H2B_DEAD:
        return
    hp = w.pools[conn.pool].http
    if conn.bstate == H2B_READY:
        while (conn.bflags & HF_READABLE) and not (conn.bflags & HF_EOF):
            if rounds == H2B_READ_ROUNDS:
                conn_queue(w, &conn.c)   # a fair share per turn
                break
            rounds += 1
            n = sk.xp.recv(sk, buf, sizeof(buf))
            if n > 0:
                if <size_t>n < sizeof(buf) and not (conn.bflags & HF_RDHUP):
                    conn.bflags &= ~HF_READABLE
                rv = nghttp2_session_mem_recv(conn.ng, <const uint8_t *>buf, <size_t>n)
                if rv < 0:
                    h2b_fail(w, conn)    # nghttp2 could not go on (a protocol error it cannot answer)
                    return
            elif n == 0:
                conn.bflags = (conn.bflags | HF_EOF) & ~HF_READABLE
            elif n != XPRT_ERROR:
                conn.bflags &= ~xprt_wait_flag(n, HF_READABLE, HF_WRITABLE)
            else:
                conn.bflags = (conn.bflags | HF_EOF | HF_ERR) & ~HF_READABLE
        if h2b_write(w, conn) < 0 or (conn.bflags & HF_EOF):
            h2b_fail(w, conn)
            return
        if conn.wbuf.len == 0 and not nghttp2_session_want_read(conn.ng) \
                and not nghttp2_session_want_write(conn.ng):
            h2b_fail(w, conn)     # a GOAWAY and every stream done
            return
    if conn.n_streams == 0 and conn.tn.list == NULL:
        if conn.bstate != H2B_READY or conn.goaway or w.stopping or hp.max_idle == 0:
            h2b_close(w, conn)
        else:
            tl_append(&hp.idle_timer, &conn.tn, w.now_ms, conn)


cdef void h2b_on_event(lb_worker *w, lb_h2b *conn, uint32_t events) noexcept nogil:
    cdef lb_pool_rt *p = &w.pools[conn.pool]
    cdef lb_sock *sk = &conn.c.sk[SIDE_BACKEND]
    cdef int rc
    if conn.bstate == H2B_DEAD:
        return
    if conn.bstate == H2B_CONNECTING:
        if events & (EPOLLERR | EPOLLHUP):
            h2b_fail(w, conn)
            return
        if not sock_is_tls(sk):
            if not (events & EPOLLOUT):
                return
            if p.tls != NULL:
                if not sock_tls_connect(w, p, sk, conn.slot):
                    h2b_fail(w, conn)
                    return
                SSL_set_alpn_protos(<SSL *>sk.ctx, <const unsigned char *>b"\x02h2", 3)
        if p.tls != NULL:
            rc = tls_client_handshake(sk)
            if rc == XPRT_WANT_READ or rc == XPRT_WANT_WRITE:
                return
            if rc != 1:
                h2b_fail(w, conn)
                return
            # what came with the backend's Finished is OpenSSL's now
            events |= EPOLLIN | EPOLLOUT
        conn.bflags = ev_flags(conn.bflags, events)
        h2b_ready(w, conn)
        return
    conn.bflags = ev_flags(conn.bflags, events)
    conn_queue(w, &conn.c)


cdef void h2b_free(lb_h2b *conn) noexcept nogil:
    free(conn)


# ---- set-up (Python, at start) ---------------------------------------------------------------

cdef int h2b_worker_init(lb_worker *w) except -1:
    cdef lb_http_worker *hw = w.http
    cdef nghttp2_session_callbacks *cbs
    cdef nghttp2_option *opt
    if nghttp2_session_callbacks_new(&cbs) != 0 or nghttp2_option_new(&opt) != 0:
        raise MemoryError()
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2b_on_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(cbs, h2b_on_header)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2b_on_data)
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2b_on_frame_recv)
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, h2b_on_frame_send)
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2b_on_stream_close)
    nghttp2_option_set_no_auto_window_update(opt, 1)
    hw.h2bcbs = cbs
    hw.h2bopt = opt
    return 0
