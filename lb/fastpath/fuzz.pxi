# Entry points for the fuzzers (fuzz/, `make fuzz`) and their regression tests
# into code that has no Python-facing wrapper of its own. The parsers of
# requests, responses, chunks and PROXY headers have theirs (http_parse.pxi,
# http_msg.pxi, proxy_proto.pxi); the TLS record layer reads only from a
# socket, with keys from a handshake, so it gets a connection made up here.

import socket as _fz_socket

cdef enum:
    FUZZ_RAW = 0xff                  # a record type byte that means "these bytes as they are"

# Fixed traffic secrets and TLS 1.2 key blocks: the fuzzer's client seals with
# what lb opens with.
cdef uint8_t FUZZ_SECRET_C2S[48]
cdef uint8_t FUZZ_SECRET_S2C[48]
memset(FUZZ_SECRET_C2S, 0x11, 48)
memset(FUZZ_SECRET_S2C, 0x22, 48)
cdef shm_worker_stats FUZZ_STATS     # tr_fail counts bad records here outside a worker


cdef lb_tlsr *fuzz_tlsr(uint16_t version, uint8_t aead, int fd, bint client) except NULL:
    cdef lb_tlsr *t = <lb_tlsr *>calloc(1, sizeof(lb_tlsr))
    cdef uint8_t key[32]
    cdef int k = aead_keylen(aead)
    cdef int ivlen = 12 if aead == AEAD_CHACHA20_POLY1305 or version == TLS1_3_VERSION else 4
    # this end reads what the other end writes
    cdef const uint8_t *rd = &FUZZ_SECRET_C2S[0]
    cdef const uint8_t *wr = &FUZZ_SECRET_S2C[0]
    if client:
        rd, wr = wr, rd
    if t == NULL:
        raise MemoryError()
    t.fd = fd
    t.version = version
    t.aead = aead
    t.hlen = 48 if aead == AEAD_AES256_GCM else 32
    t.rx = EVP_CIPHER_CTX_new()
    t.tx = EVP_CIPHER_CTX_new()
    if t.rx == NULL or t.tx == NULL:
        tlsr_free(t)
        raise MemoryError()
    if version == TLS1_3_VERSION:
        memcpy(t.rsecret, rd, 48)
        memcpy(t.wsecret, wr, 48)
        if not (tr13_keys(t, t.rsecret, t.rx, t.riv, 0) and tr13_keys(t, t.wsecret, t.tx, t.wiv, 1)):
            tlsr_free(t)
            raise RuntimeError("TLS 1.3 keys")
    else:
        # each direction's key is its secret's first bytes, its IV (salt) the next
        memcpy(key, rd, k)
        memcpy(t.riv, rd + 32, ivlen)
        if EVP_CipherInit_ex(t.rx, AEAD_CIPHER[aead], NULL, key, NULL, 0) != 1:
            tlsr_free(t)
            raise RuntimeError("TLS 1.2 read key")
        memcpy(key, wr, k)
        memcpy(t.wiv, wr + 32, ivlen)
        if EVP_CipherInit_ex(t.tx, AEAD_CIPHER[aead], NULL, key, NULL, 1) != 1:
            tlsr_free(t)
            raise RuntimeError("TLS 1.2 write key")
        t.rseq = 1
        t.wseq = 1
    return t


def tlsr_feed(const unsigned char[:] data):
    """Feed a client's bytes to the TLS record layer on a connection made up
    with fixed keys, as a worker reads them, and return what it made of them:
    (application data read, how the stream ended: "eof", "error" or
    "want_read", bad records counted).

    data[0] picks the connection: bit 0 TLS 1.3 (else 1.2), bits 1-2 the AEAD
    (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; 3 is ChaCha20 too). The rest
    is records, each `type (1 byte), length (2 bytes, big-endian, at most
    16384), bytes`: sealed by the client's keys with that content type, or, for
    type 0xff, put on the wire as they are (broken records, garbage). A
    KeyUpdate the client seals changes its keys for what follows, as a real
    client's would. The client closes its side at the end."""
    cdef const uint8_t *b = &data[0] if data.shape[0] else <const uint8_t *>b""
    cdef size_t n = data.shape[0], p = 1, ln
    cdef uint8_t ctype, aead
    cdef uint16_t version
    cdef lb_tlsr *srv = NULL
    cdef lb_tlsr *cli = NULL
    cdef lb_sock sk
    cdef uint8_t *rec = NULL
    cdef int sealed
    cdef ssize_t r
    cdef char buf[16384]
    if n == 0:
        return b"", "eof", 0
    version = TLS1_3_VERSION if b[0] & 1 else TLS1_2_VERSION
    aead = (b[0] >> 1) & 3
    if aead == 3:
        aead = AEAD_CHACHA20_POLY1305
    if TLSR_STATS[0] == NULL:
        TLSR_STATS[0] = &FUZZ_STATS
    before = TLSR_STATS[0].tls_bad_records
    lb_end, client_end = _fz_socket.socketpair()
    lb_end.setblocking(False)
    client_end.setblocking(False)
    got = bytearray()
    ended = "want_read"
    try:
        srv = fuzz_tlsr(version, aead, lb_end.fileno(), False)
        cli = fuzz_tlsr(version, aead, client_end.fileno(), True)
        rec = <uint8_t *>malloc(TLSR_MAX_REC)
        if rec == NULL:
            raise MemoryError()
        sk.fd = lb_end.fileno()
        sk.xp = &XPRT_TLSR
        sk.ctx = srv
        wire = bytearray()
        while p < n:
            ctype = b[p]
            ln = (<size_t>b[p + 1] << 8 | b[p + 2]) if p + 2 < n else 0
            p = min(p + 3, n)
            ln = min(ln, n - p, TLSR_MAX_PLAIN)
            if ctype == FUZZ_RAW:
                wire += b[p:p + ln]
            else:
                sealed = tr_seal(cli, ctype, b + p, <uint32_t>ln, rec)
                if sealed < 0:
                    raise RuntimeError("seal")
                wire += rec[:sealed]
                if (version == TLS1_3_VERSION and ctype == CT_HANDSHAKE and ln == 5 and b[p] == HT_KEY_UPDATE
                        and b[p + 1] == 0 and b[p + 2] == 0 and b[p + 3] == 1 and b[p + 4] <= 1):
                    if not tr13_next(cli, cli.wsecret, cli.tx, cli.wiv, 1):
                        raise RuntimeError("key update")
                    cli.wseq = 0
            p += ln
        # the bytes go as the socket takes them, lb reading in between (and
        # what lb writes back, alerts and key updates, is read and dropped)
        sent = 0
        closed = False
        while ended == "want_read":
            if sent < len(wire):
                try:
                    sent += client_end.send(wire[sent:sent + 65536])
                except BlockingIOError:
                    pass
                except ConnectionError:
                    sent = len(wire)     # lb shut the connection: the rest goes nowhere
            if sent == len(wire) and not closed:
                closed = True
                try:
                    client_end.shutdown(_fz_socket.SHUT_WR)
                except OSError:
                    pass
            try:
                while client_end.recv(65536):
                    pass
            except (BlockingIOError, ConnectionError):
                pass
            while True:
                with nogil:
                    r = tlsr_recv(&sk, buf, sizeof(buf))
                if r > 0:
                    got += buf[:r]
                    continue
                if r == 0:
                    ended = "eof"
                elif r != XPRT_WANT_READ:
                    ended = "error"
                break
    finally:
        free(rec)
        if srv != NULL:
            tlsr_free(srv)
        if cli != NULL:
            tlsr_free(cli)
        lb_end.close()
        client_end.close()
    return bytes(got), ended, TLSR_STATS[0].tls_bad_records - before


def cache_range_parse(bytes value, uint64_t body_len):
    """A Range value against a stored body of body_len bytes, as a hit reads
    it (cache.pxi range_parse): ("none" | "one" | "multi" | "unsat", the
    satisfiable ranges as (first, last))."""
    cdef uint64_t first[CACHE_MAX_RANGES]
    cdef uint64_t last[CACHE_MAX_RANGES]
    cdef uint32_t n = 0, i
    cdef int r
    if len(value) > 0xffff:
        raise ValueError("a field value is at most 64 KiB")
    r = range_parse(<const uint8_t *><const char *>value, <uint32_t>len(value), body_len, first, last, &n)
    kind = {RANGE_NONE: "none", RANGE_ONE: "one", RANGE_MULTI: "multi", RANGE_UNSAT: "unsat"}[r]
    return kind, [(first[i], last[i]) for i in range(n)] if r in (RANGE_ONE, RANGE_MULTI) else []
