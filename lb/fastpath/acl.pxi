# ACLs: sets of IPv4 and IPv6 prefixes ([acls.NAME]), the lookup of a client
# address in them, and the two request-phase steps that use them: `acl` (accept
# phase: a listener's allow/deny, before a byte is read) and `acl_route`
# (request phase: a route's allow/deny, answered with 403).
#
# The structure. An ACL is a set of prefixes, each either included or, written
# "!prefix", excluded; an address is in the ACL when the longest prefix that
# covers it is an included one. The supervisor flattens that longest-prefix
# match into the sorted addresses where membership flips (boundaries): an
# address is in the ACL when an odd number of boundaries are <= it. A table of
# 65537 bucket starts, by 16 bits of the address, narrows the binary search to
# the boundaries of one bucket (a million random IPv4 prefixes leave ~30 per
# bucket: five probes). The 16 bits are the ones after the leading bits all
# boundaries share (shift): an ACL of prefixes inside 2001:db8::/32 buckets by
# bits 32..47, not by the 16 bits every one of them has in common; an address
# outside that shared part is below or above every boundary. IPv4 boundaries
# are uint32, IPv6 ones 128-bit.
#
# Sharing. Each ACL has two halves in the acls region; the supervisor writes
# the one not in use, then flips the ACL's generation with a release store. A
# reader takes the generation, looks up in its half, and looks again after: a
# change (a writer may be rewriting that very half now) means it looks again.
# Indices read from a half being rewritten are clamped to the half, so a torn
# read costs a retry, never a stray access. Halves are sized for
# ACL_MAX_PREFIXES per family and never touched beyond what they hold: the
# region is a sparse tmpfs file, so an unused capacity costs no memory.
#
# The supervisor side (AclSet) keeps the prefixes themselves, sorted, in C
# arrays: parsing a million lines, sorting, flattening and indexing them runs
# without the GIL in well under a second.

cdef extern from *:
    """
    typedef unsigned __int128 lb_u128;
    """
    # Cython sees an integer; C does 128-bit arithmetic on it. Never converted
    # to a Python object directly (acl_u128_to_py does that in two halves).
    ctypedef unsigned long long lb_u128

from libc.stdlib cimport realloc
from lb.includes.inet cimport inet_pton, inet_ntop, INET6_ADDRSTRLEN

cdef enum:
    ACL_IDX4_OFF = 0                 # offsets within one half
    ACL_IDX6_OFF = 262208            # 65537 uint32, to the next line
    ACL_B4_OFF = 524416
    ACL_B6_OFF = 8913024             # ACL_B4_OFF + ACL_BOUNDS_CAP * 4 (16-byte aligned)
    ACL_HALF_SIZE = 42467456         # ACL_B6_OFF + ACL_BOUNDS_CAP * 16 (a whole line)
    ACL_RETRIES = 8                  # lookups that saw a flip in a row before giving up (no match)

# where an entry came from, for messages
cdef enum:
    ACL_SRC_CIDRS = 0
    ACL_SRC_FILE = 1
    ACL_SRC_RUNTIME = 2

# parse results
cdef enum:
    ACL_OK = 0
    ACL_BAD_ADDRESS = 1
    ACL_BAD_LENGTH = 2
    ACL_HOST_BITS = 3

assert sizeof(shm_acl_head) == 64
assert sizeof(shm_acl) == 128
assert ACL_B6_OFF == ACL_B4_OFF + ACL_BOUNDS_CAP * 4 and ACL_B6_OFF % 16 == 0
assert ACL_HALF_SIZE == ACL_B6_OFF + ACL_BOUNDS_CAP * 16 and ACL_HALF_SIZE % 64 == 0
assert ACL_IDX6_OFF >= ACL_INDEX_LEN * 4 and ACL_B4_OFF >= ACL_IDX6_OFF + ACL_INDEX_LEN * 4


cdef struct acl_e4:                  # an IPv4 entry: key = addr << 7 | plen << 1 | excluded
    uint64_t key
    uint32_t line                    # where it was written (a line of the file, an index of cidrs)
    uint32_t src                     # ACL_SRC_*

cdef struct acl_e6:
    lb_u128 addr
    uint32_t line
    uint8_t plen
    uint8_t neg                      # excluded ("!prefix")
    uint8_t src

cdef struct acl_addr:                # a client address, ready for lookups
    int family                       # 4, 6, or 0 (neither: in no ACL)
    uint32_t v4
    lb_u128 v6


# ---- lookup (workers; GIL released) -------------------------------------------------

cdef inline bint acl_addr_of(sockaddr_storage *ss, acl_addr *out) noexcept nogil:
    """The address of a socket address; an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
    is the IPv4 address it maps, as the IPv4 prefixes of an ACL expect."""
    cdef const uint8_t *b
    cdef int i
    out.family = 0
    if ss.ss_family == AF_INET:
        b = <const uint8_t *>&(<sockaddr_in *>ss).sin_addr
        out.family = 4
        out.v4 = (<uint32_t>b[0] << 24) | (<uint32_t>b[1] << 16) | (<uint32_t>b[2] << 8) | b[3]
        return True
    if ss.ss_family == AF_INET6:
        b = (<sockaddr_in6 *>ss).sin6_addr.s6_addr
        if acl_v4_mapped(b):
            out.family = 4
            out.v4 = (<uint32_t>b[12] << 24) | (<uint32_t>b[13] << 16) | (<uint32_t>b[14] << 8) | b[15]
            return True
        out.family = 6
        out.v6 = 0
        for i in range(16):
            out.v6 = (out.v6 << 8) | b[i]
        return True
    return False


cdef inline bint acl_v4_mapped(const uint8_t *b) noexcept nogil:
    cdef int i
    for i in range(10):
        if b[i] != 0:
            return False
    return b[10] == 0xff and b[11] == 0xff


cdef inline int acl_half_v4(const char *half, uint32_t n, uint32_t shift, uint32_t a) noexcept nogil:
    """1: a is in the table of this half, 0: not, -1: the half changed under us."""
    cdef const uint32_t *idx = <const uint32_t *>(half + ACL_IDX4_OFF)
    cdef const uint32_t *bounds = <const uint32_t *>(half + ACL_B4_OFF)
    cdef uint32_t bucket, lo, hi, mid, top, common
    if n == 0 or n > ACL_BOUNDS_CAP or shift > 16:
        return 0 if n == 0 else -1
    if shift:
        top = a >> (32 - shift)
        common = bounds[0] >> (32 - shift)
        if top != common:
            return 0 if top < common else <int>(n & 1)
    bucket = (a << shift) >> 16
    lo = idx[bucket]
    hi = idx[bucket + 1]
    if hi > ACL_BOUNDS_CAP or lo > hi:
        return -1
    while lo < hi:
        mid = (lo + hi) >> 1
        if bounds[mid] <= a:
            lo = mid + 1
        else:
            hi = mid
    return lo & 1


cdef inline int acl_half_v6(const char *half, uint32_t n, uint32_t shift, lb_u128 a) noexcept nogil:
    cdef const uint32_t *idx = <const uint32_t *>(half + ACL_IDX6_OFF)
    cdef const lb_u128 *bounds = <const lb_u128 *>(half + ACL_B6_OFF)
    cdef uint32_t bucket, lo, hi, mid
    cdef lb_u128 top, common
    if n == 0 or n > ACL_BOUNDS_CAP or shift > 112:
        return 0 if n == 0 else -1
    if shift:
        top = a >> (128 - shift)
        common = bounds[0] >> (128 - shift)
        if top != common:
            return 0 if top < common else <int>(n & 1)
    bucket = <uint32_t>((a << shift) >> 112)
    lo = idx[bucket]
    hi = idx[bucket + 1]
    if hi > ACL_BOUNDS_CAP or lo > hi:
        return -1
    while lo < hi:
        mid = (lo + hi) >> 1
        if bounds[mid] <= a:
            lo = mid + 1
        else:
            hi = mid
    return lo & 1


cdef bint acl_match(const char *base, shm_acl *acl, acl_addr *a) noexcept nogil:
    """The address is in the ACL. Lock-free against the supervisor's flips:
    a lookup that saw the generation move looks again."""
    cdef uint32_t gen, half, tries
    cdef int r = 0
    for tries in range(ACL_RETRIES):
        gen = lb_acquire_u32(&acl.gen)
        half = gen & 1
        if a.family == 4:
            r = acl_half_v4(base + acl.off + half * ACL_HALF_SIZE, acl.n4[half], acl.shift4[half], a.v4)
        elif a.family == 6:
            r = acl_half_v6(base + acl.off + half * ACL_HALF_SIZE, acl.n6[half], acl.shift6[half], a.v6)
        else:
            return False
        lb_fence_acquire()
        if lb_load_u32(&acl.gen) == gen and r >= 0:
            return r == 1
    return False


cdef int access_check(lb_worker *w, lb_access *ac, sockaddr_storage *peer) noexcept nogil:
    """Deny wins: an address in any deny ACL is refused; then, with an allow
    list, one in none of its ACLs is refused too. Every decision is counted on
    the rule that made it. STEP_CONTINUE or 403."""
    cdef acl_addr a
    cdef uint32_t i
    acl_addr_of(peer, &a)
    for i in range(ac.n_deny):
        if acl_match(w.base, &w.acls[ac.deny[i]], &a):
            lb_add_u64(&w.acl_stats[ac.rule + i], 1)
            return 403
    for i in range(ac.n_allow):
        if acl_match(w.base, &w.acls[ac.allow[i]], &a):
            lb_add_u64(&w.acl_stats[ac.rule + ac.n_deny + i], 1)
            return STEP_CONTINUE
    lb_add_u64(&w.acl_stats[ac.rule + ac.n_deny + ac.n_allow], 1)
    return 403 if ac.n_allow else STEP_CONTINUE


# ---- the steps ---------------------------------------------------------------------

cdef int step_acl(lb_worker *w, lb_conn *c) noexcept nogil:
    """Accept phase (tcp and http): the listener's allow/deny on the client's
    address, the one a PROXY header gave on an accept_proxy listener (the phase
    runs once it is read). A refused client is closed before a byte is read."""
    return access_check(w, w.listeners[c.listener].access, &c.peer)


cdef int step_acl_route(lb_worker *w, lb_hconn *h, http_req *r, const uint8_t *b) noexcept nogil:
    """Request phase, after route: the chosen route's allow/deny; 403 refuses."""
    cdef lb_access *ac
    if h.route < 0:
        return STEP_CONTINUE
    ac = h.hl.routes[h.route].access
    if ac == NULL:
        return STEP_CONTINUE
    return access_check(w, ac, &h.c.peer)


def _has_access(site):
    """A listener or route (config) with an allow or deny list."""
    access = getattr(site, "access", None)
    return access is not None and bool(access.allow or access.deny)


def wants_acl(listener):
    return _has_access(listener)


def wants_acl_route(listener):
    return listener.mode == "http" and any(_has_access(route) for route in listener.routes)


cdef lb_access *access_init(object rules, dict acl_index) except? NULL:
    """A listener's or a route's lists (a config Access, or None) -> its lb_access."""
    if rules is None or not (rules.allow or rules.deny):
        return NULL
    if len(rules.allow) > ACL_MAX_PER_LIST or len(rules.deny) > ACL_MAX_PER_LIST:
        raise ValueError(f"at most {ACL_MAX_PER_LIST} ACLs in one allow or deny list")
    cdef lb_access *ac = <lb_access *>calloc(1, sizeof(lb_access))
    if ac == NULL:
        raise MemoryError()
    ac.n_deny = len(rules.deny)
    ac.n_allow = len(rules.allow)
    for i, name in enumerate(rules.deny):
        ac.deny[i] = acl_index[name]
    for i, name in enumerate(rules.allow):
        ac.allow[i] = acl_index[name]
    ac.rule = rules.rule
    return ac


# ---- parsing prefixes (supervisor, lb check) -------------------------------------------

cdef inline bint acl_space(char c) noexcept nogil:
    return c == 32 or c == 9 or c == 13 or c == 11 or c == 12


cdef int acl_parse_prefix(const char *p, size_t n, int *family, uint32_t *v4, lb_u128 *v6,
                          uint32_t *plen, uint8_t *neg) noexcept nogil:
    """One prefix, "ADDR[/LEN]" or "!ADDR[/LEN]", trimmed; ACL_OK or why not.
    Prefix lengths are decimal without leading zeros; host bits must be zero
    (10.0.0.1/8 is refused: 10.0.0.0/8 or 10.0.0.1/32 was meant, who knows)."""
    cdef char text[INET6_ADDRSTRLEN]
    cdef uint8_t raw[16]
    cdef size_t slash, i, alen
    cdef uint32_t length = 0, maxlen
    cdef int k
    cdef lb_u128 mask6
    neg[0] = 0
    if n and p[0] == 33:         # "!"
        neg[0] = 1
        p += 1
        n -= 1
    slash = n
    for i in range(n):
        if p[i] == 47:           # "/"
            slash = i
            break
    alen = slash
    if alen == 0 or alen >= INET6_ADDRSTRLEN:
        return ACL_BAD_ADDRESS
    memcpy(text, p, alen)
    text[alen] = 0
    if memchr(text, 58, alen) != NULL:
        if inet_pton(AF_INET6, text, raw) != 1:
            return ACL_BAD_ADDRESS
        family[0] = 6
        maxlen = 128
    else:
        if inet_pton(AF_INET, text, raw) != 1:
            return ACL_BAD_ADDRESS
        family[0] = 4
        maxlen = 32
    if slash == n:
        length = maxlen
    else:
        if slash + 1 == n or n - slash - 1 > 3 or (p[slash + 1] == 48 and n - slash - 1 > 1):
            return ACL_BAD_LENGTH
        for i in range(slash + 1, n):
            if p[i] < 48 or p[i] > 57:
                return ACL_BAD_LENGTH
            length = length * 10 + (p[i] - 48)
        if length > maxlen:
            return ACL_BAD_LENGTH
    plen[0] = length
    if family[0] == 4:
        v4[0] = (<uint32_t>raw[0] << 24) | (<uint32_t>raw[1] << 16) | (<uint32_t>raw[2] << 8) | raw[3]
        if length < 32 and (v4[0] & ((<uint32_t>0xffffffff) >> length)) != 0:
            return ACL_HOST_BITS
        return ACL_OK
    v6[0] = 0
    for k in range(16):
        v6[0] = (v6[0] << 8) | raw[k]
    if length < 128:
        # (a /0 keeps every bit: a shift by 128 would be undefined)
        mask6 = ~(<lb_u128>0) if length == 0 else ((<lb_u128>1) << (128 - length)) - 1
        if v6[0] & mask6:
            return ACL_HOST_BITS
    if acl_v4_mapped(raw) and length >= 96:
        # clients' IPv4-mapped addresses are looked up as IPv4: so are these
        family[0] = 4
        v4[0] = <uint32_t>v6[0]         # the low 32 bits
        plen[0] = length - 96
    return ACL_OK


cdef int acl_cmp4(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const acl_e4 *>a).key, y = (<const acl_e4 *>b).key
    return -1 if x < y else (1 if x > y else 0)


cdef int acl_cmp6(const void *a, const void *b) noexcept nogil:
    cdef const acl_e6 *x = <const acl_e6 *>a
    cdef const acl_e6 *y = <const acl_e6 *>b
    if x.addr != y.addr:
        return -1 if x.addr < y.addr else 1
    if x.plen != y.plen:
        return -1 if x.plen < y.plen else 1
    return <int>x.neg - <int>y.neg


cdef inline lb_u128 acl_hostmask6(uint32_t plen) noexcept nogil:
    if plen == 0:
        return ~(<lb_u128>0)
    return ((<lb_u128>1) << (128 - plen)) - 1


# ---- flattening into boundaries ------------------------------------------------------------
#
# Entries sorted by (address, length): an enclosing prefix comes before the ones
# inside it. A stack holds the prefixes the sweep is inside; the value at any
# point is the innermost one's (included or excluded), outside all: excluded.
# A boundary is written where the value changes; two changes at one address
# cancel.

cdef inline void acl_emit4(uint32_t *out, uint32_t *nb, uint8_t *cur, uint64_t pos, uint8_t v) noexcept nogil:
    if v == cur[0]:
        return
    cur[0] = v
    if nb[0] and out[nb[0] - 1] == pos:
        nb[0] -= 1
    elif pos < (<uint64_t>1 << 32):
        out[nb[0]] = <uint32_t>pos
        nb[0] += 1


cdef uint32_t acl_flatten4(const acl_e4 *e, uint32_t n, uint32_t *out) noexcept nogil:
    cdef uint64_t stack_end[34]
    cdef uint8_t stack_val[34]
    cdef uint32_t sp = 0, nb = 0, i, plen
    cdef uint8_t cur = 0, v
    cdef uint64_t s, end
    for i in range(n):
        s = e[i].key >> 7
        plen = (e[i].key >> 1) & 63
        v = 1 - (e[i].key & 1)
        end = s | ((<uint64_t>0xffffffff) >> plen)
        while sp and stack_end[sp - 1] < s:
            sp -= 1
            acl_emit4(out, &nb, &cur, stack_end[sp] + 1, stack_val[sp - 1] if sp else 0)
        acl_emit4(out, &nb, &cur, s, v)
        stack_end[sp] = end
        stack_val[sp] = v
        sp += 1
    while sp:
        sp -= 1
        acl_emit4(out, &nb, &cur, stack_end[sp] + 1, stack_val[sp - 1] if sp else 0)
    return nb


cdef inline void acl_emit6(lb_u128 *out, uint32_t *nb, uint8_t *cur, lb_u128 pos, bint beyond,
                           uint8_t v) noexcept nogil:
    if v == cur[0]:
        return
    cur[0] = v
    if nb[0] and not beyond and out[nb[0] - 1] == pos:
        nb[0] -= 1
    elif not beyond:
        out[nb[0]] = pos
        nb[0] += 1


cdef uint32_t acl_flatten6(const acl_e6 *e, uint32_t n, lb_u128 *out) noexcept nogil:
    cdef lb_u128 stack_end[130]
    cdef uint8_t stack_val[130]
    cdef uint32_t sp = 0, nb = 0, i
    cdef uint8_t cur = 0, v
    cdef lb_u128 s, top = ~(<lb_u128>0)
    for i in range(n):
        s = e[i].addr
        v = 1 - e[i].neg
        while sp and stack_end[sp - 1] < s:
            sp -= 1
            acl_emit6(out, &nb, &cur, stack_end[sp] + 1, False, stack_val[sp - 1] if sp else 0)
        acl_emit6(out, &nb, &cur, s, False, v)
        stack_end[sp] = s | acl_hostmask6(e[i].plen)
        stack_val[sp] = v
        sp += 1
    while sp:
        sp -= 1
        # a prefix that ends at the last address ends the space: no boundary after it
        acl_emit6(out, &nb, &cur, stack_end[sp] + 1, stack_end[sp] == top, stack_val[sp - 1] if sp else 0)
    return nb


cdef uint32_t acl_index4(const uint32_t *bounds, uint32_t nb, uint32_t *idx) noexcept nogil:
    """The bucket starts; returns the shift (leading bits shared, at most 16)."""
    cdef uint32_t j = 0, b, shift = 0
    if nb:
        while shift < 16 and ((bounds[0] ^ bounds[nb - 1]) >> (31 - shift)) == 0:
            shift += 1
    for b in range(65536):
        while j < nb and ((bounds[j] << shift) >> 16) < b:
            j += 1
        idx[b] = j
    idx[65536] = nb
    return shift


cdef uint32_t acl_index6(const lb_u128 *bounds, uint32_t nb, uint32_t *idx) noexcept nogil:
    """The bucket starts; returns the shift (leading bits shared, at most 112)."""
    cdef uint32_t j = 0, b, shift = 0
    if nb:
        while shift < 112 and ((bounds[0] ^ bounds[nb - 1]) >> (127 - shift)) == 0:
            shift += 1
    for b in range(65536):
        while j < nb and <uint32_t>((bounds[j] << shift) >> 112) < b:
            j += 1
        idx[b] = j
    idx[65536] = nb
    return shift


# ---- the supervisor's sets ----------------------------------------------------------------

class AclParseError(ValueError):
    """A prefix that is not one: line is 1-based (a line of a file, or 1 + the
    index in a list), text the offending entry, message what is wrong with it
    (quoting it), reason the same without quoting it (for files the daemon
    reads at an operator's request: their content is not echoed)."""

    def __init__(self, line, text, code):
        self.line = line
        self.text = text
        self.message = _parse_message(code, text)
        self.reason = _PARSE_REASONS[code]
        super().__init__(f"line {line}: {self.message}")


_PARSE_REASONS = {
    ACL_BAD_ADDRESS: "not an IPv4 or IPv6 address",
    ACL_BAD_LENGTH: "invalid prefix length (0..32 for IPv4, 0..128 for IPv6, no leading zeros)",
    ACL_HOST_BITS: "host bits set",
}


def _parse_message(int code, str text):
    if code == ACL_HOST_BITS:
        import ipaddress
        net = ipaddress.ip_network(text.lstrip("!"), strict=False)
        return f"{text!r} has host bits set (the prefix is {net}; write it so, or a /{net.max_prefixlen} address)"
    return f"{text!r}: {_PARSE_REASONS[code]}"


cdef object acl_u128_to_py(lb_u128 x):
    return (<object>(<uint64_t>(x >> 64)) << 64) | <object>(<uint64_t>x)


cdef lb_u128 acl_py_to_u128(object x):
    return ((<lb_u128>(<uint64_t>(x >> 64))) << 64) | <lb_u128>(<uint64_t>(x & 0xffffffffffffffff))


cdef class AclSet:
    """The prefixes of one ACL, sorted and without duplicates once finished.
    Parsing appends; finish() sorts and checks; add/discard keep it sorted."""

    cdef acl_e4 *e4
    cdef uint32_t n4, cap4
    cdef acl_e6 *e6
    cdef uint32_t n6, cap6
    cdef bint finished

    def __dealloc__(self):
        free(self.e4)
        free(self.e6)

    cdef int _grow4(self) except -1:
        cdef uint32_t cap = self.cap4 * 2 if self.cap4 else 1024
        cdef acl_e4 *p = <acl_e4 *>realloc(self.e4, cap * sizeof(acl_e4))
        if p == NULL:
            raise MemoryError()
        self.e4, self.cap4 = p, cap
        return 0

    cdef int _grow6(self) except -1:
        cdef uint32_t cap = self.cap6 * 2 if self.cap6 else 256
        cdef acl_e6 *p = <acl_e6 *>realloc(self.e6, cap * sizeof(acl_e6))
        if p == NULL:
            raise MemoryError()
        self.e6, self.cap6 = p, cap
        return 0

    cdef int _append(self, int family, uint32_t v4, lb_u128 v6, uint32_t plen, uint8_t neg,
                     uint32_t line, uint32_t src) except -1:
        if family == 4:
            if self.n4 == self.cap4:
                self._grow4()
            self.e4[self.n4].key = (<uint64_t>v4 << 7) | (plen << 1) | neg
            self.e4[self.n4].line = line
            self.e4[self.n4].src = src
            self.n4 += 1
        else:
            if self.n6 == self.cap6:
                self._grow6()
            self.e6[self.n6].addr = v6
            self.e6[self.n6].plen = plen
            self.e6[self.n6].neg = neg
            self.e6[self.n6].line = line
            self.e6[self.n6].src = src
            self.n6 += 1
        self.finished = False
        return 0

    def parse_text(self, const unsigned char[:] data, int src=ACL_SRC_FILE):
        """Append every prefix of a file's bytes: one a line, '#' starts a
        comment, blank lines are skipped. AclParseError names the first bad line."""
        cdef const char *b = <const char *>&data[0] if data.shape[0] else <const char *>b""
        cdef size_t n = data.shape[0], pos = 0, end, s, e, i
        cdef uint32_t line = 0, v4 = 0, plen = 0
        cdef lb_u128 v6 = 0
        cdef uint8_t neg = 0
        cdef int family = 0, rc = ACL_OK
        while pos < n:
            line += 1
            end = pos
            while end < n and b[end] != 10:
                end += 1
            s = pos
            e = end
            for i in range(s, e):
                if b[i] == 35:       # "#": the rest of the line is a comment
                    e = i
                    break
            while s < e and acl_space(b[s]):
                s += 1
            while e > s and acl_space(b[e - 1]):
                e -= 1
            pos = end + 1
            if s == e:
                continue
            rc = acl_parse_prefix(b + s, e - s, &family, &v4, &v6, &plen, &neg)
            if rc != ACL_OK:
                text = (b + s)[:e - s].decode("utf-8", "replace")
                raise AclParseError(line, text, rc)
            if family == 4:
                if self.n4 == self.cap4:
                    self._grow4()
                self.e4[self.n4].key = (<uint64_t>v4 << 7) | (plen << 1) | neg
                self.e4[self.n4].line = line
                self.e4[self.n4].src = src
                self.n4 += 1
            else:
                self._append(6, 0, v6, plen, neg, line, src)
        self.finished = False

    def parse_one(self, str text, uint32_t line=1, int src=ACL_SRC_CIDRS):
        """Append one prefix (an item of cidrs, or of `lb acl add`)."""
        cdef bytes raw = text.strip().encode("utf-8", "replace")
        cdef int family = 0, rc
        cdef uint32_t v4 = 0, plen = 0
        cdef lb_u128 v6 = 0
        cdef uint8_t neg = 0
        rc = acl_parse_prefix(raw, len(raw), &family, &v4, &v6, &plen, &neg) if raw else ACL_BAD_ADDRESS
        if rc != ACL_OK:
            raise AclParseError(line, text, rc)
        self._append(family, v4, v6, plen, neg, line, src)

    def finish(self):
        """Sort, drop exact duplicates; a prefix both included and excluded is
        an error (ValueError naming both places: (src, line) pairs)."""
        cdef uint32_t i, j
        with nogil:
            # (an empty list has no array: qsort must not see its NULL)
            if self.n4:
                qsort(self.e4, self.n4, sizeof(acl_e4), acl_cmp4)
            if self.n6:
                qsort(self.e6, self.n6, sizeof(acl_e6), acl_cmp6)
        # duplicates: the same address and length (the key without its last bit)
        j = 0
        for i in range(self.n4):
            if j and (self.e4[j - 1].key >> 1) == (self.e4[i].key >> 1):
                if self.e4[j - 1].key != self.e4[i].key:
                    raise AclConflict(self._text4(&self.e4[i]), (self.e4[j - 1].src, self.e4[j - 1].line),
                                      (self.e4[i].src, self.e4[i].line))
                continue
            self.e4[j] = self.e4[i]
            j += 1
        self.n4 = j
        j = 0
        for i in range(self.n6):
            if j and self.e6[j - 1].addr == self.e6[i].addr and self.e6[j - 1].plen == self.e6[i].plen:
                if self.e6[j - 1].neg != self.e6[i].neg:
                    raise AclConflict(self._text6(&self.e6[i]), (self.e6[j - 1].src, self.e6[j - 1].line),
                                      (self.e6[i].src, self.e6[i].line))
                continue
            self.e6[j] = self.e6[i]
            j += 1
        self.n6 = j
        if self.n4 > ACL_MAX_PREFIXES or self.n6 > ACL_MAX_PREFIXES:
            raise ValueError(f"more than {ACL_MAX_PREFIXES} prefixes of one address family")
        self.finished = True

    cdef str _text4(self, const acl_e4 *e):
        cdef uint32_t a = <uint32_t>(e.key >> 7)
        return ("!" if e.key & 1 else "") + f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{(e.key >> 1) & 63}"

    cdef str _text6(self, const acl_e6 *e):
        import ipaddress
        return ("!" if e.neg else "") + f"{ipaddress.IPv6Address(acl_u128_to_py(e.addr))}/{e.plen}"

    def copy(self):
        cdef AclSet o = AclSet.__new__(AclSet)
        if self.n4:
            o.e4 = <acl_e4 *>malloc(self.n4 * sizeof(acl_e4))
            if o.e4 == NULL:
                raise MemoryError()
            memcpy(o.e4, self.e4, self.n4 * sizeof(acl_e4))
            o.n4 = o.cap4 = self.n4
        if self.n6:
            o.e6 = <acl_e6 *>malloc(self.n6 * sizeof(acl_e6))
            if o.e6 == NULL:
                raise MemoryError()
            memcpy(o.e6, self.e6, self.n6 * sizeof(acl_e6))
            o.n6 = o.cap6 = self.n6
        o.finished = self.finished
        return o

    @property
    def ipv4(self):
        return self.n4

    @property
    def ipv6(self):
        return self.n6

    def __len__(self):
        return self.n4 + self.n6

    # -- runtime changes: one prefix at a time, the set stays sorted --

    cdef int _find4(self, uint64_t key_no_neg, uint32_t *at) noexcept:
        """Index of the entry with this address and length, or -1 (at: where it would go)."""
        cdef uint32_t lo = 0, hi = self.n4, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if (self.e4[mid].key >> 1) < key_no_neg:
                lo = mid + 1
            else:
                hi = mid
        at[0] = lo
        return lo if lo < self.n4 and (self.e4[lo].key >> 1) == key_no_neg else -1

    cdef int _find6(self, lb_u128 addr, uint8_t plen, uint32_t *at) noexcept:
        cdef uint32_t lo = 0, hi = self.n6, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.e6[mid].addr < addr or (self.e6[mid].addr == addr and self.e6[mid].plen < plen):
                lo = mid + 1
            else:
                hi = mid
        at[0] = lo
        return lo if lo < self.n6 and self.e6[lo].addr == addr and self.e6[lo].plen == plen else -1

    def change(self, str text, bint add):
        """Add (add=True) or remove one prefix ("!" for an exclusion) of a
        finished set. Returns the prefix in canonical form and whether the set
        changed. Adding a prefix present with the other sign replaces it."""
        cdef bytes raw = text.strip().encode("utf-8", "replace")
        cdef int family = 0, rc, found
        cdef uint32_t v4 = 0, plen = 0, at = 0
        cdef lb_u128 v6 = 0
        cdef uint8_t neg = 0
        cdef uint64_t key
        assert self.finished
        rc = acl_parse_prefix(raw, len(raw), &family, &v4, &v6, &plen, &neg) if raw else ACL_BAD_ADDRESS
        if rc != ACL_OK:
            raise AclParseError(1, text, rc)
        if family == 4:
            key = (<uint64_t>v4 << 6) | plen
            found = self._find4(key, &at)
            if add:
                if found >= 0:
                    if (self.e4[found].key & 1) == neg:
                        return self._text4(&self.e4[found]), False
                    self.e4[found].key ^= 1
                    self.e4[found].src = ACL_SRC_RUNTIME
                    return self._text4(&self.e4[found]), True
                if self.n4 >= ACL_MAX_PREFIXES:
                    raise ValueError(f"the ACL holds {ACL_MAX_PREFIXES} IPv4 prefixes already")
                if self.n4 == self.cap4:
                    self._grow4()
                memmove(&self.e4[at + 1], &self.e4[at], (self.n4 - at) * sizeof(acl_e4))
                self.e4[at].key = (key << 1) | neg
                self.e4[at].line = 0
                self.e4[at].src = ACL_SRC_RUNTIME
                self.n4 += 1
                return self._text4(&self.e4[at]), True
            if found < 0 or (self.e4[found].key & 1) != neg:
                return None, False
            canonical = self._text4(&self.e4[found])
            memmove(&self.e4[found], &self.e4[found + 1], (self.n4 - found - 1) * sizeof(acl_e4))
            self.n4 -= 1
            return canonical, True
        found = self._find6(v6, plen, &at)
        if add:
            if found >= 0:
                if self.e6[found].neg == neg:
                    return self._text6(&self.e6[found]), False
                self.e6[found].neg = neg
                self.e6[found].src = ACL_SRC_RUNTIME
                return self._text6(&self.e6[found]), True
            if self.n6 >= ACL_MAX_PREFIXES:
                raise ValueError(f"the ACL holds {ACL_MAX_PREFIXES} IPv6 prefixes already")
            if self.n6 == self.cap6:
                self._grow6()
            memmove(&self.e6[at + 1], &self.e6[at], (self.n6 - at) * sizeof(acl_e6))
            self.e6[at].addr = v6
            self.e6[at].plen = plen
            self.e6[at].neg = neg
            self.e6[at].line = 0
            self.e6[at].src = ACL_SRC_RUNTIME
            self.n6 += 1
            return self._text6(&self.e6[at]), True
        if found < 0 or self.e6[found].neg != neg:
            return None, False
        canonical = self._text6(&self.e6[found])
        memmove(&self.e6[found], &self.e6[found + 1], (self.n6 - found - 1) * sizeof(acl_e6))
        self.n6 -= 1
        return canonical, True

    def longest_match(self, str address):
        """The entry deciding for an address: (prefix text, included), or None
        when no prefix covers it (`lb acl show NAME ADDRESS`)."""
        cdef sockaddr_storage ss
        cdef acl_addr a
        cdef uint32_t at = 0
        cdef int plen, found
        _sockaddr_from_text(address, &ss)
        acl_addr_of(&ss, &a)
        if a.family == 4:
            for plen in range(32, -1, -1):
                found = self._find4((<uint64_t>(a.v4 & ~(<uint32_t>((<uint64_t>0xffffffff) >> plen))) << 6)
                                    | <uint64_t>plen, &at)
                if found >= 0:
                    return self._text4(&self.e4[found]).lstrip("!"), not (self.e4[found].key & 1)
            return None
        for plen in range(128, -1, -1):
            found = self._find6(a.v6 & ~acl_hostmask6(plen) if plen < 128 else a.v6, plen, &at)
            if found >= 0:
                return self._text6(&self.e6[found]).lstrip("!"), not self.e6[found].neg
        return None

    def prefixes(self):
        """Every entry as written canonically, IPv4 first, in address order."""
        out = [self._text4(&self.e4[i]) for i in range(self.n4)]
        out += [self._text6(&self.e6[i]) for i in range(self.n6)]
        return out

    def boundaries(self):
        """(IPv4 boundaries, IPv6 boundaries) as Python ints: the flattened form (tests)."""
        cdef uint32_t *b4 = <uint32_t *>malloc(max(1, 2 * self.n4) * sizeof(uint32_t))
        cdef lb_u128 *b6 = <lb_u128 *>malloc(max(1, 2 * self.n6) * sizeof(lb_u128))
        cdef uint32_t k4, k6
        try:
            k4 = acl_flatten4(self.e4, self.n4, b4)
            k6 = acl_flatten6(self.e6, self.n6, b6)
            return [b4[i] for i in range(k4)], [acl_u128_to_py(b6[i]) for i in range(k6)]
        finally:
            free(b4)
            free(b6)

    def publish(self, Shm shm, uint32_t index):
        """Compile into the half of ACL `index` not in use, then flip to it:
        workers see the old table or the new one, never a mix."""
        cdef shm_acl *acl = shm._acl(index)
        cdef uint32_t gen = acl.gen
        cdef uint32_t half = (gen + 1) & 1
        cdef char *h = shm.base + acl.off + half * ACL_HALF_SIZE
        cdef uint32_t k4, k6, s4, s6
        if not self.finished:
            raise ValueError("finish() the set before publishing it")
        _reserve(shm, acl.off + half * ACL_HALF_SIZE, self.n4, self.n6)
        with nogil:
            k4 = acl_flatten4(self.e4, self.n4, <uint32_t *>(h + ACL_B4_OFF))
            s4 = acl_index4(<uint32_t *>(h + ACL_B4_OFF), k4, <uint32_t *>(h + ACL_IDX4_OFF))
            k6 = acl_flatten6(self.e6, self.n6, <lb_u128 *>(h + ACL_B6_OFF))
            s6 = acl_index6(<lb_u128 *>(h + ACL_B6_OFF), k6, <uint32_t *>(h + ACL_IDX6_OFF))
        acl.n4[half] = k4
        acl.n6[half] = k6
        acl.shift4[half] = s4
        acl.shift6[half] = s6
        lb_release_u32(&acl.gen, gen + 1)
        return gen + 1


class AclConflict(ValueError):
    """One prefix both included and excluded: where each was written ((src, line))."""

    def __init__(self, prefix, first, second):
        self.prefix = prefix.lstrip("!")
        self.first = first
        self.second = second
        super().__init__(f"{self.prefix} is both included and excluded")


ACL_SOURCES = {"cidrs": ACL_SRC_CIDRS, "file": ACL_SRC_FILE, "runtime": ACL_SRC_RUNTIME}


cdef int _reserve(Shm shm, uint64_t half, uint32_t n4, uint32_t n6) except -1:
    """Allocate the pages a half's tables will use before writing them: a full
    tmpfs then fails the publish with ENOSPC (OSError) instead of killing the
    supervisor with SIGBUS at the first page it cannot have."""
    try:
        fd = _os.open(shm.path, _os.O_RDWR | _os.O_CLOEXEC)
    except FileNotFoundError:
        return 0                     # unlinked (a stop): the mapping still serves
    try:
        _os.posix_fallocate(fd, half, ACL_B4_OFF)
        if n4:
            _os.posix_fallocate(fd, half + ACL_B4_OFF, <uint64_t>2 * n4 * sizeof(uint32_t))
        if n6:
            _os.posix_fallocate(fd, half + ACL_B6_OFF, <uint64_t>2 * n6 * sizeof(lb_u128))
    finally:
        _os.close(fd)
    return 0


cdef int _sockaddr_from_text(str address, sockaddr_storage *ss) except -1:
    cdef bytes raw = address.strip().encode()
    memset(ss, 0, sizeof(sockaddr_storage))
    if b":" in raw:
        if inet_pton(AF_INET6, raw, &(<sockaddr_in6 *>ss).sin6_addr) != 1:
            raise ValueError(f"not an IP address: {address!r}")
        ss.ss_family = AF_INET6
    else:
        if inet_pton(AF_INET, raw, &(<sockaddr_in *>ss).sin_addr) != 1:
            raise ValueError(f"not an IP address: {address!r}")
        ss.ss_family = AF_INET
    return 0


# ---- test-facing entry points over the shared tables --------------------------------------

def acl_lookup(Shm shm, uint32_t index, addresses):
    """The live table's decision for each address (text): a list of bools,
    computed by the workers' own lookup."""
    cdef shm_acl *acl = shm._acl(index)
    cdef sockaddr_storage ss
    cdef acl_addr a
    out = []
    for address in addresses:
        _sockaddr_from_text(address, &ss)
        acl_addr_of(&ss, &a)
        out.append(acl_match(shm.base, acl, &a))
    return out


def acl_lookup_ns(Shm shm, uint32_t index, int family, uint32_t n, uint64_t seed=1, str within=None):
    """Nanoseconds per lookup of n random addresses of a family (4 or 6) in
    ACL `index` (within that prefix, when given), and how many matched: the
    workers' lookup, timed in C."""
    cdef shm_acl *acl = shm._acl(index)
    cdef acl_addr *addrs = <acl_addr *>malloc(max(1, n) * sizeof(acl_addr))
    cdef uint64_t rng = seed, r, hits = 0
    cdef uint32_t i, keep4 = 0xffffffff, base4 = 0
    cdef lb_u128 keep6 = ~(<lb_u128>0), base6 = 0
    cdef timespec t0, t1
    if addrs == NULL:
        raise MemoryError()
    if within is not None:
        import ipaddress
        net = ipaddress.ip_network(within)
        if net.version == 4:
            keep4 = int(net.hostmask)
            base4 = int(net.network_address)
        else:
            keep6 = acl_py_to_u128(int(net.hostmask))
            base6 = acl_py_to_u128(int(net.network_address))
    for i in range(n):
        r = lb_splitmix64(&rng)
        addrs[i].family = family
        addrs[i].v4 = (<uint32_t>r & keep4) | base4
        addrs[i].v6 = ((((<lb_u128>r) << 64) | lb_splitmix64(&rng)) & keep6) | base6
    with nogil:
        clock_gettime(CLOCK_MONOTONIC, &t0)
        for i in range(n):
            hits += acl_match(shm.base, acl, &addrs[i])
        clock_gettime(CLOCK_MONOTONIC, &t1)
    free(addrs)
    elapsed = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)
    return elapsed / max(1, n), hits
