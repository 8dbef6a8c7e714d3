# The two parsers JWT verification trusts (fastpath/auth_jwt.pxi): strict
# base64url and strict JSON. A token is attacker input from the first byte,
# and a lenient parser is how JWT libraries were fooled: two "alg" members of
# which the validator reads one and the signer the other, padding or spare
# bits that make two encodings of one token, invalid UTF-8 that decodes
# differently in the backend. So both parsers accept exactly one spelling and
# refuse the rest, within fixed bounds (depth, members), without allocating.
# The fuzz target "jwt" (fuzz.pxi) runs both on arbitrary bytes.

from libc.stdlib cimport strtod
from libc.math cimport isfinite

cdef enum:
    JSON_MAX_DEPTH = 16              # nesting of objects and arrays
    JSON_MAX_MEMBERS = 64            # members of one object (duplicates are found by comparing each pair)
    JSON_NAME_MAX = 256              # bytes of a member name, once decoded


# ---- base64url (RFC 4648 section 5, without padding, as RFC 7515 wants) ------------------

cdef inline int b64url_value(uint8_t c) noexcept nogil:
    if 65 <= c <= 90:
        return c - 65
    if 97 <= c <= 122:
        return c - 71
    if 48 <= c <= 57:
        return c + 4
    if c == 45:                      # '-'
        return 62
    if c == 95:                      # '_'
        return 63
    return -1


cdef int b64url_decode(const uint8_t *s, uint32_t n, uint8_t *out, uint32_t cap) noexcept nogil:
    """The decoded length, or -1: a byte outside the alphabet (padding
    included), a length no encoding has (4k+1), or unused trailing bits that
    are not zero (another spelling of the same bytes)."""
    cdef uint32_t i, o = 0, acc = 0, bits = 0
    cdef int v
    if n % 4 == 1:
        return -1
    for i in range(n):
        v = b64url_value(s[i])
        if v < 0:
            return -1
        acc = ((acc << 6) | <uint32_t>v) & 0xffffff
        bits += 6
        if bits >= 8:
            bits -= 8
            if o >= cap:
                return -1
            out[o] = <uint8_t>((acc >> bits) & 0xff)
            o += 1
    if bits and (acc & ((1u << bits) - 1)) != 0:
        return -1
    return <int>o


# ---- JSON (RFC 8259), strict ------------------------------------------------------------

cdef struct json_rd:
    const uint8_t *s
    uint32_t n
    uint32_t i


cdef struct json_top:                # the members of a checked top-level object, so that a lookup
    uint32_t n                       # is a walk over at most 64 names, not a parse
    uint32_t name_off[JSON_MAX_MEMBERS]  # the name's span, quotes included
    uint32_t name_end[JSON_MAX_MEMBERS]
    uint32_t val_off[JSON_MAX_MEMBERS]
    uint32_t val_len[JSON_MAX_MEMBERS]


cdef inline void json_ws(json_rd *p) noexcept nogil:
    while p.i < p.n and (p.s[p.i] == 32 or p.s[p.i] == 9 or p.s[p.i] == 10 or p.s[p.i] == 13):
        p.i += 1


cdef uint32_t utf8_seq(const uint8_t *s, uint32_t n, uint32_t i) noexcept nogil:
    """The length of the well-formed UTF-8 sequence of more than one byte at i
    (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF), or 0."""
    cdef uint8_t c = s[i], lo = 0x80, hi = 0xbf
    cdef uint32_t need, k
    if 0xc2 <= c <= 0xdf:
        need = 1
    elif c == 0xe0:
        need = 2
        lo = 0xa0
    elif (0xe1 <= c <= 0xec) or c == 0xee or c == 0xef:
        need = 2
    elif c == 0xed:
        need = 2
        hi = 0x9f
    elif c == 0xf0:
        need = 3
        lo = 0x90
    elif 0xf1 <= c <= 0xf3:
        need = 3
    elif c == 0xf4:
        need = 3
        hi = 0x8f
    else:
        return 0
    if i + need >= n:
        return 0
    if not lo <= s[i + 1] <= hi:
        return 0
    for k in range(2, need + 1):
        if not 0x80 <= s[i + k] <= 0xbf:
            return 0
    return need + 1


cdef inline int hex4(const uint8_t *s) noexcept nogil:
    cdef int v = 0, d, k
    cdef uint8_t c
    for k in range(4):
        c = s[k]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return -1
        v = (v << 4) | d
    return v


cdef inline uint32_t utf8_put(uint8_t *o, uint32_t cp) noexcept nogil:
    if cp < 0x80:
        o[0] = <uint8_t>cp
        return 1
    if cp < 0x800:
        o[0] = <uint8_t>(0xc0 | (cp >> 6))
        o[1] = <uint8_t>(0x80 | (cp & 0x3f))
        return 2
    if cp < 0x10000:
        o[0] = <uint8_t>(0xe0 | (cp >> 12))
        o[1] = <uint8_t>(0x80 | ((cp >> 6) & 0x3f))
        o[2] = <uint8_t>(0x80 | (cp & 0x3f))
        return 3
    o[0] = <uint8_t>(0xf0 | (cp >> 18))
    o[1] = <uint8_t>(0x80 | ((cp >> 12) & 0x3f))
    o[2] = <uint8_t>(0x80 | ((cp >> 6) & 0x3f))
    o[3] = <uint8_t>(0x80 | (cp & 0x3f))
    return 4


cdef int json_string(json_rd *p, uint8_t *out, uint32_t cap, uint32_t *out_len) noexcept nogil:
    """The string at p.i (its opening quote): checked, p.i moved past its
    closing quote, and decoded into out when out is not NULL. 0, or -1 for an
    unescaped control character, a bad escape, a lone surrogate, invalid
    UTF-8, or (out) more than cap bytes."""
    cdef uint32_t o = 0, k, cp, lo
    cdef int v, w
    cdef uint8_t c
    cdef uint8_t tmp[4]
    p.i += 1
    while p.i < p.n:
        c = p.s[p.i]
        if c == 34:                  # '"'
            p.i += 1
            if out_len != NULL:
                out_len[0] = o
            return 0
        if c < 0x20:
            return -1
        if c == 92:                  # '\\'
            if p.i + 1 >= p.n:
                return -1
            c = p.s[p.i + 1]
            if c == 117:             # \uXXXX, a surrogate pair as two of them
                if p.i + 6 > p.n:
                    return -1
                v = hex4(p.s + p.i + 2)
                if v < 0:
                    return -1
                p.i += 6
                cp = <uint32_t>v
                if 0xdc00 <= cp <= 0xdfff:
                    return -1
                if 0xd800 <= cp <= 0xdbff:
                    if p.i + 6 > p.n or p.s[p.i] != 92 or p.s[p.i + 1] != 117:
                        return -1
                    w = hex4(p.s + p.i + 2)
                    if w < 0xdc00 or w > 0xdfff:
                        return -1
                    p.i += 6
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (<uint32_t>w - 0xdc00)
                k = utf8_put(tmp, cp)
            else:
                if c == 34 or c == 92 or c == 47:
                    tmp[0] = c
                elif c == 98:
                    tmp[0] = 8
                elif c == 102:
                    tmp[0] = 12
                elif c == 110:
                    tmp[0] = 10
                elif c == 114:
                    tmp[0] = 13
                elif c == 116:
                    tmp[0] = 9
                else:
                    return -1
                k = 1
                p.i += 2
            if out != NULL:
                if o + k > cap:
                    return -1
                memcpy(out + o, tmp, k)
            o += k
            continue
        if c < 0x80:
            k = 1
        else:
            k = utf8_seq(p.s, p.n, p.i)
            if k == 0:
                return -1
        if out != NULL:
            if o + k > cap:
                return -1
            memcpy(out + o, p.s + p.i, k)
        o += k
        p.i += k
    return -1


cdef int json_number(json_rd *p) noexcept nogil:
    """-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?"""
    cdef uint32_t start
    if p.i < p.n and p.s[p.i] == 45:
        p.i += 1
    if p.i >= p.n:
        return -1
    if p.s[p.i] == 48:
        p.i += 1
    elif 49 <= p.s[p.i] <= 57:
        while p.i < p.n and 48 <= p.s[p.i] <= 57:
            p.i += 1
    else:
        return -1
    if p.i < p.n and p.s[p.i] == 46:
        p.i += 1
        start = p.i
        while p.i < p.n and 48 <= p.s[p.i] <= 57:
            p.i += 1
        if p.i == start:
            return -1
    if p.i < p.n and (p.s[p.i] == 101 or p.s[p.i] == 69):
        p.i += 1
        if p.i < p.n and (p.s[p.i] == 43 or p.s[p.i] == 45):
            p.i += 1
        start = p.i
        while p.i < p.n and 48 <= p.s[p.i] <= 57:
            p.i += 1
        if p.i == start:
            return -1
    return 0


cdef inline int json_literal(json_rd *p, const char *lit, uint32_t n) noexcept nogil:
    if p.i + n > p.n or memcmp(p.s + p.i, lit, n) != 0:
        return -1
    p.i += n
    return 0


cdef int json_names_equal(const uint8_t *s, uint32_t a0, uint32_t a1, uint32_t b0, uint32_t b1) noexcept nogil:
    """Whether two member names (their spans, quotes included) decode to the
    same string: 1, 0, or -1 when one cannot be decoded within bounds."""
    cdef uint8_t da[JSON_NAME_MAX]
    cdef uint8_t db[JSON_NAME_MAX]
    cdef uint32_t na = 0, nb = 0
    cdef json_rd p
    if a1 - a0 == b1 - b0 and memcmp(s + a0, s + b0, a1 - a0) == 0:
        return 1
    if memchr(s + a0, 92, a1 - a0) == NULL and memchr(s + b0, 92, b1 - b0) == NULL:
        return 0                     # without escapes a name is its own decoding
    p.s = s
    p.n = a1
    p.i = a0
    if json_string(&p, da, JSON_NAME_MAX, &na) < 0:
        return -1
    p.n = b1
    p.i = b0
    if json_string(&p, db, JSON_NAME_MAX, &nb) < 0:
        return -1
    return 1 if na == nb and memcmp(da, db, na) == 0 else 0


cdef int json_object(json_rd *p, uint32_t depth, json_top *top) noexcept nogil:
    """The object at p.i ('{'): every member checked, no name twice; its
    members recorded in top (when not NULL)."""
    cdef uint32_t starts[JSON_MAX_MEMBERS]
    cdef uint32_t ends[JSON_MAX_MEMBERS]
    cdef uint32_t m = 0, j, name_len = 0
    cdef int eq
    if depth > JSON_MAX_DEPTH:
        return -1
    p.i += 1
    json_ws(p)
    if top != NULL:
        top.n = 0
    if p.i < p.n and p.s[p.i] == 125:
        p.i += 1
        return 0
    while True:
        if p.i >= p.n or p.s[p.i] != 34 or m >= JSON_MAX_MEMBERS:
            return -1
        starts[m] = p.i
        if json_string(p, NULL, 0, &name_len) < 0 or name_len > JSON_NAME_MAX:
            return -1                # (a longer name could not be compared once decoded)
        ends[m] = p.i
        for j in range(m):
            eq = json_names_equal(p.s, starts[j], ends[j], starts[m], ends[m])
            if eq != 0:
                return -1            # a duplicate member
        m += 1
        json_ws(p)
        if p.i >= p.n or p.s[p.i] != 58:
            return -1
        p.i += 1
        json_ws(p)
        if top != NULL:
            top.name_off[m - 1] = starts[m - 1]
            top.name_end[m - 1] = ends[m - 1]
            top.val_off[m - 1] = p.i
        if json_value(p, depth) < 0:
            return -1
        if top != NULL:
            top.val_len[m - 1] = p.i - top.val_off[m - 1]
            top.n = m
        json_ws(p)
        if p.i >= p.n:
            return -1
        if p.s[p.i] == 125:
            p.i += 1
            return 0
        if p.s[p.i] != 44:
            return -1
        p.i += 1
        json_ws(p)


cdef int json_array(json_rd *p, uint32_t depth) noexcept nogil:
    if depth > JSON_MAX_DEPTH:
        return -1
    p.i += 1
    json_ws(p)
    if p.i < p.n and p.s[p.i] == 93:
        p.i += 1
        return 0
    while True:
        if json_value(p, depth) < 0:
            return -1
        json_ws(p)
        if p.i >= p.n:
            return -1
        if p.s[p.i] == 93:
            p.i += 1
            return 0
        if p.s[p.i] != 44:
            return -1
        p.i += 1
        json_ws(p)


cdef int json_value(json_rd *p, uint32_t depth) noexcept nogil:
    cdef uint8_t c
    if p.i >= p.n:
        return -1
    c = p.s[p.i]
    if c == 123:
        return json_object(p, depth + 1, NULL)
    if c == 91:
        return json_array(p, depth + 1)
    if c == 34:
        return json_string(p, NULL, 0, NULL)
    if c == 116:
        return json_literal(p, b"true", 4)
    if c == 102:
        return json_literal(p, b"false", 5)
    if c == 110:
        return json_literal(p, b"null", 4)
    if c == 45 or 48 <= c <= 57:
        return json_number(p)
    return -1


cdef int json_check(const uint8_t *s, uint32_t n, json_top *top) noexcept nogil:
    """0 when s is one JSON object (whitespace around it allowed), strictly
    valid, within bounds, without duplicate members at any depth; else -1.
    Its members go in top (when not NULL), for json_top_find."""
    cdef json_rd p
    p.s = s
    p.n = n
    p.i = 0
    json_ws(&p)
    if p.i >= n or s[p.i] != 123:
        return -1
    if json_object(&p, 1, top) < 0:
        return -1
    json_ws(&p)
    return 0 if p.i == n else -1


cdef bint json_top_find(const json_top *top, const uint8_t *s, const char *name, uint32_t name_len,
                        uint32_t *voff, uint32_t *vlen) noexcept nogil:
    """The value span of the member `name` of the object json_check recorded
    in top (at most one: duplicates were refused)."""
    cdef uint32_t i, a, b, dn = 0
    cdef uint8_t dec[JSON_NAME_MAX]
    cdef json_rd p
    for i in range(top.n):
        a = top.name_off[i]
        b = top.name_end[i]
        if memchr(s + a, 92, b - a) == NULL:
            if b - a - 2 != name_len or memcmp(s + a + 1, name, name_len) != 0:
                continue
        else:
            p.s = s
            p.n = b
            p.i = a
            if json_string(&p, dec, JSON_NAME_MAX, &dn) < 0 or dn != name_len or memcmp(dec, name, name_len) != 0:
                continue
        voff[0] = top.val_off[i]
        vlen[0] = top.val_len[i]
        return True
    return False


cdef bint json_member(const uint8_t *s, uint32_t n, const char *name, uint32_t name_len,
                      uint32_t *voff, uint32_t *vlen) noexcept nogil:
    """The span of the value of the top-level member `name` of an object that
    json_check passed (so there is at most one)."""
    cdef json_rd p
    cdef uint32_t n0, n1, dn = 0
    cdef uint8_t dec[JSON_NAME_MAX]
    cdef bint match
    p.s = s
    p.n = n
    p.i = 0
    json_ws(&p)
    p.i += 1                         # '{'
    json_ws(&p)
    while p.i < n and s[p.i] == 34:
        n0 = p.i
        json_string(&p, NULL, 0, NULL)
        n1 = p.i
        if memchr(s + n0, 92, n1 - n0) == NULL:
            match = n1 - n0 - 2 == name_len and memcmp(s + n0 + 1, name, name_len) == 0
        else:
            p.i = n0
            match = (json_string(&p, dec, JSON_NAME_MAX, &dn) == 0 and dn == name_len
                     and memcmp(dec, name, name_len) == 0)
            p.i = n1
        json_ws(&p)
        p.i += 1                     # ':'
        json_ws(&p)
        voff[0] = p.i
        if json_value(&p, 1) < 0:
            return False
        if match:
            vlen[0] = p.i - voff[0]
            return True
        json_ws(&p)
        if p.i < n and s[p.i] == 44:
            p.i += 1
            json_ws(&p)
    return False


cdef int json_string_value(const uint8_t *s, uint32_t off, uint32_t n, uint8_t *out, uint32_t cap) noexcept nogil:
    """A value span that is a string, decoded: its length, or -1 (not a
    string, or longer than cap)."""
    cdef json_rd p
    cdef uint32_t got = 0
    if n < 2 or s[off] != 34:
        return -1
    p.s = s
    p.n = off + n
    p.i = off
    if json_string(&p, out, cap, &got) < 0:
        return -1
    return <int>got


cdef bint json_number_value(const uint8_t *s, uint32_t off, uint32_t n, double *out) noexcept nogil:
    """A value span that is a number, as a double (False: not a number,
    longer than any sane date, or beyond a double: 1e400 is no date either)."""
    cdef char buf[40]
    if n == 0 or n >= 40 or not (s[off] == 45 or 48 <= s[off] <= 57):
        return False
    memcpy(buf, s + off, n)
    buf[n] = 0
    out[0] = strtod(buf, NULL)
    return isfinite(out[0])
