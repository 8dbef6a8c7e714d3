# The PROXY protocol (HAProxy's doc/proxy-protocol.txt), v1 text and v2 binary:
# building the header a pool sends to its backends (send_proxy), reading the one
# a client sends to an accept_proxy listener, and the two hooks that put them on
# a connection. tests/reference/proxy_ref.py is the pure-Python oracle of
# proxy_parse and proxy_build; docs/configuration.md says what the keys do.
#
# Everything down to the test-facing wrappers at the end runs with the GIL
# released and touches no Python object.
#
# proxy_parse reads bytes as they come and decides at the first byte that no
# valid header can continue (the first byte must be 'P' (v1) or CR (v2)), with
# these readings of the spec:
# - v1 is "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP sport SP dport CRLF, or
#   "PROXY UNKNOWN" then CRLF or SP, any bytes but CR and LF, CRLF; at most 107
#   bytes, CRLF included (so byte 107 without the header done is invalid).
#   Single spaces only; ports are decimal 0..65535 without leading zeros ("0"
#   itself is fine); TCP4 addresses are dotted quads, each part 0..255 without
#   leading zeros, judged digit by digit; TCP6 addresses are up to 45 bytes of
#   hex digits, ':' and '.', judged by inet_pton(AF_INET6) at the SP that ends them.
# - v2 is the 12-byte signature, then version 2 with command LOCAL (0) or PROXY
#   (1), then the family byte, then the length. LOCAL ignores the family byte and
#   the address block, as the spec says. PROXY accepts UNSPEC (0x00), TCP over
#   IPv4 (0x11) or IPv6 (0x21) and UNIX stream (0x31); datagram transports and
#   unknown families are invalid, since this is a stream. The length must hold
#   the family's addresses (12, 36, 216 bytes) and be at most PROXY_V2_MAX_LEN
#   (536): the spec allows up to 65535 with TLVs, but 16 + 536 bytes is what any
#   sender puts in the first segment, and a cap keeps what a client can make a
#   worker hold small. TLVs are skipped unread.
# - UNKNOWN, LOCAL, UNSPEC and UNIX mean "keep the real peer": src and dst come
#   back with ss_family 0.

from lb.includes.inet cimport inet_pton, inet_ntop, INET6_ADDRSTRLEN
from libc.stdio cimport snprintf

cdef enum:
    PROXY_DONE = 0
    PROXY_INCOMPLETE = -1
    PROXY_INVALID = -2
    PROXY_V1_MAX = 107               # the spec's longest v1 line, CRLF included
    PROXY_V2_HEAD = 16               # signature, version and command, family, length
    PROXY_V2_MAX_LEN = 536           # our cap on v2's length field (header <= 552 bytes)
    PROXY_OUT_MAX = 108              # room for any header proxy_build writes (v1 <= 104, v2 <= 52)
    PROXY_WAIT_MAX_MS = 10000        # an accept_proxy client gets min(idle_timeout, this) for its header
    PROXY_TAKE_MAX = 552             # the longest header we accept (PROXY_V2_HEAD + PROXY_V2_MAX_LEN)
    PROXY_GONE = -3                  # proxy_take: the client went away first

cdef const char *PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


# ---- building --------------------------------------------------------------------

cdef int proxy_v1_addr(sockaddr_storage *ss, char *text, uint16_t *port) noexcept nogil:
    """The text form of ss's address and its port; -1 when it is not IPv4/IPv6."""
    if ss.ss_family == AF_INET:
        port[0] = ntohs((<sockaddr_in *>ss).sin_port)
        return 0 if inet_ntop(AF_INET, &(<sockaddr_in *>ss).sin_addr, text, INET6_ADDRSTRLEN) != NULL else -1
    if ss.ss_family == AF_INET6:
        port[0] = ntohs((<sockaddr_in6 *>ss).sin6_port)
        return 0 if inet_ntop(AF_INET6, &(<sockaddr_in6 *>ss).sin6_addr, text, INET6_ADDRSTRLEN) != NULL else -1
    return -1


cdef int proxy_build(int version, sockaddr_storage *src, sockaddr_storage *dst, char *out, int cap) noexcept nogil:
    """Write the PROXY header (version 1 or 2) announcing a TCP connection from
    src to dst into out. Returns its length, or -1 (unknown version, or cap too
    small: PROXY_OUT_MAX is always enough). When the two families differ or are
    not IPv4/IPv6, v1 says "PROXY UNKNOWN" and v2 sends the PROXY command with
    family UNSPEC and no addresses: the receiver keeps the connection's own."""
    cdef char stext[INET6_ADDRSTRLEN]
    cdef char dtext[INET6_ADDRSTRLEN]
    cdef uint16_t sport = 0, dport = 0
    cdef bint known = (src.ss_family == dst.ss_family
                       and (src.ss_family == AF_INET or src.ss_family == AF_INET6))
    cdef int n
    cdef uint8_t *o = <uint8_t *>out
    cdef const char *proto = b"TCP4"
    if version == 1:
        if known and proxy_v1_addr(src, stext, &sport) == 0 and proxy_v1_addr(dst, dtext, &dport) == 0:
            if src.ss_family == AF_INET6:
                proto = b"TCP6"
            n = snprintf(out, cap, b"PROXY %s %s %s %u %u\r\n",
                         proto, stext, dtext, <unsigned int>sport, <unsigned int>dport)
        else:
            n = snprintf(out, cap, b"PROXY UNKNOWN\r\n")
        return n if 0 < n < cap else -1
    if version != 2:
        return -1
    n = PROXY_V2_HEAD + (0 if not known else 12 if src.ss_family == AF_INET else 36)
    if cap < n:
        return -1
    memcpy(out, PROXY_V2_SIG, 12)
    o[12] = 0x21                     # version 2, command PROXY
    o[13] = 0x00 if not known else 0x11 if src.ss_family == AF_INET else 0x21
    o[14] = <uint8_t>((n - PROXY_V2_HEAD) >> 8)
    o[15] = <uint8_t>((n - PROXY_V2_HEAD) & 0xff)
    if not known:
        return n
    if src.ss_family == AF_INET:
        memcpy(o + 16, &(<sockaddr_in *>src).sin_addr, 4)
        memcpy(o + 20, &(<sockaddr_in *>dst).sin_addr, 4)
        memcpy(o + 24, &(<sockaddr_in *>src).sin_port, 2)     # both already in network order
        memcpy(o + 26, &(<sockaddr_in *>dst).sin_port, 2)
    else:
        memcpy(o + 16, &(<sockaddr_in6 *>src).sin6_addr, 16)
        memcpy(o + 32, &(<sockaddr_in6 *>dst).sin6_addr, 16)
        memcpy(o + 48, &(<sockaddr_in6 *>src).sin6_port, 2)
        memcpy(o + 50, &(<sockaddr_in6 *>dst).sin6_port, 2)
    return n


# ---- parsing -----------------------------------------------------------------------

cdef void proxy_sockaddr(sockaddr_storage *ss, int family, const uint8_t *addr, uint16_t port) noexcept nogil:
    """Fill ss from a network-order address and a host-order port."""
    memset(ss, 0, sizeof(sockaddr_storage))
    if family == AF_INET:
        (<sockaddr_in *>ss).sin_family = AF_INET
        (<sockaddr_in *>ss).sin_port = htons(port)
        memcpy(&(<sockaddr_in *>ss).sin_addr, addr, 4)
    else:
        (<sockaddr_in6 *>ss).sin6_family = AF_INET6
        (<sockaddr_in6 *>ss).sin6_port = htons(port)
        memcpy(&(<sockaddr_in6 *>ss).sin6_addr, addr, 16)


cdef int v1_match(const uint8_t *b, size_t lim, size_t *i, const char *lit, size_t len) noexcept nogil:
    """The next bytes are lit: 0 (i moves past it), -1 ran out first, -2 a byte differs."""
    cdef size_t k
    for k in range(len):
        if i[0] + k >= lim:
            return PROXY_INCOMPLETE
        if b[i[0] + k] != <uint8_t>lit[k]:
            return PROXY_INVALID
    i[0] += len
    return PROXY_DONE


cdef int v1_ip4(const uint8_t *b, size_t lim, size_t *i, uint8_t *out) noexcept nogil:
    """A dotted quad and the SP after it, into out[4]."""
    cdef size_t p = i[0]
    cdef int parts = 0, digits = 0, value = 0
    cdef uint8_t c
    while p < lim:
        c = b[p]
        if c'0' <= c <= c'9':
            if digits == 1 and value == 0:
                return PROXY_INVALID             # leading zero
            value = value * 10 + (c - c'0')
            if value > 255:
                return PROXY_INVALID
            digits += 1
        elif c == c'.':
            if digits == 0 or parts == 3:
                return PROXY_INVALID
            out[parts] = <uint8_t>value
            parts += 1
            digits = 0
            value = 0
        elif c == c' ' and digits != 0 and parts == 3:
            out[3] = <uint8_t>value
            i[0] = p + 1
            return PROXY_DONE
        else:
            return PROXY_INVALID
        p += 1
    return PROXY_INCOMPLETE


cdef int v1_ip6(const uint8_t *b, size_t lim, size_t *i, uint8_t *out) noexcept nogil:
    """IPv6 text and the SP after it, into out[16]; inet_pton judges it at the SP."""
    cdef char text[INET6_ADDRSTRLEN]
    cdef size_t p = i[0], len = 0
    cdef uint8_t c
    while p < lim:
        c = b[p]
        if c == c' ':
            text[len] = 0
            if len == 0 or inet_pton(AF_INET6, text, out) != 1:
                return PROXY_INVALID
            i[0] = p + 1
            return PROXY_DONE
        if not (c'0' <= c <= c'9' or c'a' <= c <= c'f' or c'A' <= c <= c'F' or c == c':' or c == c'.'):
            return PROXY_INVALID
        if len == INET6_ADDRSTRLEN - 1:
            return PROXY_INVALID
        text[len] = <char>c
        len += 1
        p += 1
    return PROXY_INCOMPLETE


cdef int v1_port(const uint8_t *b, size_t lim, size_t *i, uint8_t end, uint16_t *out) noexcept nogil:
    """A decimal port 0..65535 without leading zeros, then the byte end."""
    cdef size_t p = i[0]
    cdef int digits = 0
    cdef uint32_t value = 0
    cdef uint8_t c
    while p < lim:
        c = b[p]
        if c'0' <= c <= c'9':
            if digits == 1 and value == 0:
                return PROXY_INVALID
            value = value * 10 + (c - c'0')
            if value > 65535:
                return PROXY_INVALID
            digits += 1
        elif c == end and digits != 0:
            out[0] = <uint16_t>value
            i[0] = p + 1
            return PROXY_DONE
        else:
            return PROXY_INVALID
        p += 1
    return PROXY_INCOMPLETE


cdef int proxy_parse_v1_line(const uint8_t *b, size_t lim, size_t *consumed,
                             sockaddr_storage *src, sockaddr_storage *dst) noexcept nogil:
    """proxy_parse for v1 over b[:lim]: -1 means b[:lim] is a prefix of a valid line."""
    cdef size_t i = 0
    cdef int r, family
    cdef uint8_t saddr[16]
    cdef uint8_t daddr[16]
    cdef uint16_t sport = 0, dport = 0
    r = v1_match(b, lim, &i, b"PROXY ", 6)
    if r != PROXY_DONE:
        return r
    if i < lim and b[i] == c'U':
        r = v1_match(b, lim, &i, b"UNKNOWN", 7)
        if r != PROXY_DONE:
            return r
        if i >= lim:
            return PROXY_INCOMPLETE
        if b[i] == c' ':
            # the rest of the line is ignored: find its CR
            i += 1
            while i < lim and b[i] != c'\r':
                if b[i] == c'\n':
                    return PROXY_INVALID
                i += 1
        r = v1_match(b, lim, &i, b"\r\n", 2)
        if r != PROXY_DONE:
            return r
        src.ss_family = 0
        dst.ss_family = 0
        consumed[0] = i
        return PROXY_DONE
    r = v1_match(b, lim, &i, b"TCP", 3)
    if r != PROXY_DONE:
        return r
    if i >= lim:
        return PROXY_INCOMPLETE
    if b[i] == c'4':
        family = AF_INET
    elif b[i] == c'6':
        family = AF_INET6
    else:
        return PROXY_INVALID
    i += 1
    r = v1_match(b, lim, &i, b" ", 1)
    if r != PROXY_DONE:
        return r
    if family == AF_INET:
        r = v1_ip4(b, lim, &i, saddr)
        if r == PROXY_DONE:
            r = v1_ip4(b, lim, &i, daddr)
    else:
        r = v1_ip6(b, lim, &i, saddr)
        if r == PROXY_DONE:
            r = v1_ip6(b, lim, &i, daddr)
    if r == PROXY_DONE:
        r = v1_port(b, lim, &i, c' ', &sport)
    if r == PROXY_DONE:
        r = v1_port(b, lim, &i, c'\r', &dport)
    if r == PROXY_DONE:
        r = v1_match(b, lim, &i, b"\n", 1)
    if r != PROXY_DONE:
        return r
    proxy_sockaddr(src, family, saddr, sport)
    proxy_sockaddr(dst, family, daddr, dport)
    consumed[0] = i
    return PROXY_DONE


cdef int proxy_parse_v2(const uint8_t *b, size_t n, size_t *consumed,
                        sockaddr_storage *src, sockaddr_storage *dst) noexcept nogil:
    cdef size_t k, length
    cdef uint8_t cmd, fam
    for k in range(12 if n > 12 else n):
        if b[k] != <uint8_t>PROXY_V2_SIG[k]:
            return PROXY_INVALID
    if n < 13:
        return PROXY_INCOMPLETE
    if (b[12] >> 4) != 2 or (b[12] & 0xf) > 1:
        return PROXY_INVALID
    cmd = b[12] & 0xf
    if n < 14:
        return PROXY_INCOMPLETE
    fam = b[13]
    if cmd == 1 and not (fam == 0x00 or fam == 0x11 or fam == 0x21 or fam == 0x31):
        return PROXY_INVALID
    if n < PROXY_V2_HEAD:
        return PROXY_INCOMPLETE
    length = (<size_t>b[14] << 8) | b[15]
    if length > PROXY_V2_MAX_LEN:
        return PROXY_INVALID
    if cmd == 1 and ((fam == 0x11 and length < 12) or (fam == 0x21 and length < 36)
                     or (fam == 0x31 and length < 216)):
        return PROXY_INVALID
    if n < PROXY_V2_HEAD + length:
        return PROXY_INCOMPLETE
    consumed[0] = PROXY_V2_HEAD + length
    if cmd == 1 and fam == 0x11:
        proxy_sockaddr(src, AF_INET, b + 16, (<uint16_t>b[24] << 8) | b[25])
        proxy_sockaddr(dst, AF_INET, b + 20, (<uint16_t>b[26] << 8) | b[27])
    elif cmd == 1 and fam == 0x21:
        proxy_sockaddr(src, AF_INET6, b + 16, (<uint16_t>b[48] << 8) | b[49])
        proxy_sockaddr(dst, AF_INET6, b + 32, (<uint16_t>b[50] << 8) | b[51])
    else:
        src.ss_family = 0
        dst.ss_family = 0
    return PROXY_DONE


cdef int proxy_parse(const uint8_t *b, size_t n, size_t *consumed,
                     sockaddr_storage *src, sockaddr_storage *dst) noexcept nogil:
    """Read a PROXY header (v1 or v2) at the start of b[:n]. Returns PROXY_DONE (0)
    with consumed = the header's length and src/dst filled (ss_family 0: keep the
    real peer), PROXY_INCOMPLETE (-1): b is a prefix of a valid header, or
    PROXY_INVALID (-2), decided at the first byte no valid header can have."""
    cdef int r
    consumed[0] = 0
    if n == 0:
        return PROXY_INCOMPLETE
    if b[0] == c'\r':
        return proxy_parse_v2(b, n, consumed, src, dst)
    if b[0] != c'P':
        return PROXY_INVALID
    r = proxy_parse_v1_line(b, n if n < PROXY_V1_MAX else PROXY_V1_MAX, consumed, src, dst)
    if r == PROXY_INCOMPLETE and n >= PROXY_V1_MAX:
        return PROXY_INVALID                 # 107 bytes and still no end of line
    return r


# ---- on a connection ----------------------------------------------------------------

cdef int conn_proxy_prepend(lb_worker *w, lb_conn *c, sockaddr_storage *dst) noexcept nogil:
    """send_proxy: put the pool's PROXY header in the up buffer (empty: no client
    byte was read yet), so that forwarding writes it to the backend first. It
    stays there until the backend connection is established, so a retry on
    another backend sends it too. src is c.peer (the real client once an
    accept_proxy header was read); dst is the address the client connected to:
    the header's, or (dst NULL or family 0) the client socket's own.
    Returns 0, or -1 when no buffer could be had."""
    cdef lb_pool_rt *p = &w.pools[c.pool]
    cdef char hdr[PROXY_OUT_MAX]
    cdef sockaddr_storage local
    cdef socklen_t alen = sizeof(sockaddr_storage)
    cdef int n
    if p.send_proxy == 0:
        return 0
    if dst == NULL or dst.ss_family == 0:
        if getsockname(c.sk[SIDE_CLIENT].fd, <sockaddr *>&local, &alen) != 0:
            local.ss_family = 0          # the header says UNKNOWN
        dst = &local
    n = proxy_build(p.send_proxy, &c.peer, dst, hdr, PROXY_OUT_MAX)
    if n < 0:
        return -1
    c.buf[DIR_UP] = buf_take(w)
    if c.buf[DIR_UP] == NULL:
        return -1
    memcpy(c.buf[DIR_UP], hdr, n)
    c.buf_off[DIR_UP] = 0
    c.buf_len[DIR_UP] = n
    return 0


cdef int proxy_take(int fd, bint peer_done, sockaddr_storage *src, sockaddr_storage *dst) noexcept nogil:
    """Read a client's PROXY header from the bare socket, and not one byte after
    it: what follows belongs to the connection's transport (a TLS ClientHello)
    or to the backend. The header is peeked until complete, then drained.
    Returns PROXY_DONE, PROXY_INCOMPLETE (wait for more bytes), PROXY_INVALID,
    or -3 when the client went away first (peer_done: its FIN or an error was
    signalled, so no more bytes will come)."""
    cdef uint8_t buf[PROXY_TAKE_MAX]
    cdef size_t consumed = 0
    cdef ssize_t n = recv(fd, buf, PROXY_TAKE_MAX, MSG_PEEK | MSG_DONTWAIT)
    cdef int st
    if n <= 0:
        if n < 0 and (errno == EAGAIN or errno == EINTR) and not peer_done:
            return PROXY_INCOMPLETE
        return PROXY_GONE
    # the parser decides within PROXY_TAKE_MAX bytes
    st = proxy_parse(buf, n, &consumed, src, dst)
    if st == PROXY_INCOMPLETE and peer_done:
        return PROXY_GONE
    if st == PROXY_DONE and recv(fd, buf, consumed, MSG_DONTWAIT) != <ssize_t>consumed:
        return PROXY_GONE            # it was there a moment ago: the socket failed
    return st


cdef void conn_start(lb_worker *w, lb_conn *c) noexcept nogil:
    """A client was just accepted: on an accept_proxy listener, wait for its
    PROXY header (conn_proxy_read); then conn_ready."""
    cdef lb_listener_rt *l = &w.listeners[c.listener]
    if l.accept_proxy:
        c.state = CS_PROXY_WAIT
        list_append(&l.proxy_wait, c, w.now_ms)
        return
    conn_ready(w, c, NULL)


cdef void conn_ready(lb_worker *w, lb_conn *c, sockaddr_storage *dst) noexcept nogil:
    """The client's PROXY header (if any) is in: queue ours (send_proxy), then
    the TLS handshake on a TLS listener, or connect; with tls_passthrough, the
    pool (and so our header) waits for the client's ClientHello."""
    if w.listeners[c.listener].passthrough:
        conn_sni_start(w, c, dst)
        return
    if conn_proxy_prepend(w, c, dst) != 0:
        conn_close(w, c, True)
        return
    if w.listeners[c.listener].tls != NULL:
        conn_tls_start(w, c)
        return
    conn_connect(w, c)


cdef void conn_proxy_read(lb_worker *w, lb_conn *c) noexcept nogil:
    """An event on a client in CS_PROXY_WAIT: take its PROXY header, then the
    client address from it. An invalid header, or an EOF or an error before it
    is complete, closes the client."""
    cdef sockaddr_storage src, dst
    cdef int st = proxy_take(c.sk[SIDE_CLIENT].fd, (c.flags & (F_RDHUP << SIDE_CLIENT)) != 0, &src, &dst)
    if st == PROXY_INCOMPLETE:
        return                       # the next edge brings more
    if st != PROXY_DONE:
        conn_close(w, c, False)
        return
    list_remove(c)
    c.state = CS_CONNECTING
    if src.ss_family != 0:
        memcpy(&c.peer, &src, sizeof(sockaddr_storage))
    if phase_accept(w, &w.listeners[c.listener], c) != STEP_CONTINUE:
        conn_refuse(w, c)            # the accept phase, on the address the header gave
        return
    # what came after the header is still in the socket: forwarding reads it
    c.flags |= F_READABLE << SIDE_CLIENT
    conn_ready(w, c, &dst)


cdef void proxy_wait_sweep(lb_worker *w) noexcept nogil:
    """Close the clients whose PROXY header did not come in time (counted as idle timeouts)."""
    cdef int i
    cdef lb_listener_rt *l
    for i in range(w.n_listeners):
        l = &w.listeners[i]
        while l.proxy_wait.head != NULL and l.proxy_wait.head.queued_ms + l.proxy_timeout_ms <= w.now_ms:
            lb_add_u64(&w.stats.idle_timeouts, 1)
            conn_close(w, l.proxy_wait.head, False)


cdef uint64_t proxy_wait_deadline(lb_worker *w, uint64_t deadline) noexcept nogil:
    """deadline, or the earliest PROXY header timeout when that comes first."""
    cdef int i
    cdef uint64_t t
    for i in range(w.n_listeners):
        if w.listeners[i].proxy_wait.head != NULL:
            t = w.listeners[i].proxy_wait.head.queued_ms + w.listeners[i].proxy_timeout_ms
            if t < deadline:
                deadline = t
    return deadline


# ---- test-facing wrappers ------------------------------------------------------------

SEND_PROXY_VERSIONS = {"off": 0, "v1": 1, "v2": 2}


cdef int _proxy_sockaddr_from(object ip, int port, sockaddr_storage *ss) except -1:
    cdef uint8_t addr[16]
    memset(ss, 0, sizeof(sockaddr_storage))
    if ip is None:
        return 0
    family = AF_INET6 if ":" in ip else AF_INET
    if inet_pton(family, ip.encode(), addr) != 1:
        raise ValueError(f"not an IP address: {ip!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    proxy_sockaddr(ss, family, addr, port)
    return 0


cdef object _proxy_sockaddr_to(sockaddr_storage *ss):
    cdef char text[INET6_ADDRSTRLEN]
    cdef uint16_t port = 0
    if proxy_v1_addr(ss, text, &port) != 0:
        return None
    return ((<char *>text).decode("ascii"), port)


def proxy_header(version, src_ip, int src_port, dst_ip, int dst_port):
    """The PROXY header (version 1 or 2) proxy_build writes for a TCP connection
    from (src_ip, src_port) to (dst_ip, dst_port); an ip of None is neither IPv4
    nor IPv6 (the header then says UNKNOWN / UNSPEC)."""
    cdef sockaddr_storage src, dst
    cdef char out[PROXY_OUT_MAX]
    cdef int n
    version = SEND_PROXY_VERSIONS.get(version, version)
    _proxy_sockaddr_from(src_ip, src_port, &src)
    _proxy_sockaddr_from(dst_ip, dst_port, &dst)
    n = proxy_build(version, &src, &dst, out, PROXY_OUT_MAX)
    if n < 0:
        raise ValueError(f"unknown PROXY protocol version {version!r}")
    return out[:n]


def proxy_parse_header(const unsigned char[:] data):
    """(status, consumed, src, dst) of proxy_parse over data: status 0 done, -1
    incomplete, -2 invalid; src and dst are (ip, port), or None when the header
    says to keep the connection's own addresses (and when status is not 0)."""
    cdef sockaddr_storage src, dst
    cdef size_t consumed = 0
    cdef int st
    cdef const uint8_t *b = &data[0] if data.shape[0] else <const uint8_t *>b""
    with nogil:
        st = proxy_parse(b, data.shape[0], &consumed, &src, &dst)
    if st != PROXY_DONE:
        return st, 0, None, None
    return st, consumed, _proxy_sockaddr_to(&src), _proxy_sockaddr_to(&dst)
