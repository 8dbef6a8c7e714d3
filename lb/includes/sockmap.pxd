# In-kernel forwarding of tcp-mode connection pairs (listeners' forward = "sockmap"):
# the BPF maps and program, hand-assembled in C (no libbpf, no clang at build time).
# fastpath/sockmap.pxi says when a pair enters the maps and how it leaves them.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

cdef extern from * nogil:
    """
    /* In-kernel forwarding of tcp-mode connection pairs (forward = "sockmap").
     *
     * A worker owns two BPF_MAP_TYPE_SOCKHASH maps and one BPF_PROG_TYPE_SK_SKB
     * program, hand-assembled below (no libbpf, no clang):
     *
     *   peers   key: the SO_COOKIE of a socket, value: its peer (client <-> backend).
     *           No program is attached: being in this map gives a socket a psock
     *           (needed to be a redirect target) and nothing else.
     *   verdict key: the socket's own cookie, value: the socket. The program is
     *           attached to this map (BPF_SK_SKB_VERDICT), so every socket in it
     *           has its received skbs run through the program.
     *
     * The program looks up the peer under bpf_get_socket_cookie(skb) and redirects
     * the skb to the peer's egress; an unknown cookie falls through to SK_PASS (the
     * bytes stay for a reader of the socket itself).
     *
     * Two maps, not one, because a sockhash gives its program to every socket
     * stored in it: with one map, storing the backend under the client's cookie
     * would start the verdict on the backend socket before the client is stored
     * under the backend's cookie, and bytes arriving from the backend in between
     * would be passed to the backend socket's own queue, behind which later,
     * redirected bytes could overtake them. With two maps both sockets are
     * redirect targets before either gets the verdict program.
     *
     * Everything here is plain syscalls; lb calls it with the GIL released.
     */

    #include <errno.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <unistd.h>
    #include <sys/syscall.h>
    #include <sys/ioctl.h>
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <linux/bpf.h>
    #include <linux/sockios.h>

    #ifndef SO_COOKIE
    #define SO_COOKIE 57
    #endif

    typedef struct {
        int peers;          /* map fd: cookie -> peer socket */
        int verdict;        /* map fd: cookie -> socket, the program attached */
        int prog;           /* program fd */
        int err;            /* errno of the step that failed, 0 = ready */
        const char *step;   /* which step failed */
    } lb_skm;

    static long lb_skm_bpf(int cmd, union bpf_attr *attr)
    {
        return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
    }

    static int lb_skm_map_create(uint32_t max_entries)
    {
        union bpf_attr a;
        memset(&a, 0, sizeof(a));
        a.map_type = BPF_MAP_TYPE_SOCKHASH;
        a.key_size = 8;
        a.value_size = 4;
        a.max_entries = max_entries;
        return (int)lb_skm_bpf(BPF_MAP_CREATE, &a);
    }

    #define LB_INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })

    /* The verdict program, in eBPF:
     *   if skb->len == 0: return SK_DROP      a bare FIN (TCP has already taken it:
     *                                         the socket reads EOF). Redirected, its
     *                                         empty send would fail in the peer's
     *                                         psock, which then reports EPIPE on the
     *                                         peer and stops forwarding to it.
     *   r6 = r1                               ctx (the __sk_buff)
     *   call bpf_get_socket_cookie            r0 = cookie of the socket the skb came in on
     *   *(u64 *)(r10 - 8) = r0                the key, on the stack
     *   r1 = r6; r2 = peers map; r3 = r10 - 8; r4 = 0 (egress)
     *   call bpf_sk_redirect_hash             sets the redirect when the key is there
     *   r0 = SK_PASS; exit                    SK_PASS with a redirect set = redirect;
     *                                         without one = stay on this socket
     */
    static int lb_skm_prog_load(int peers_fd, char *log, unsigned log_size)
    {
        struct bpf_insn insns[] = {
            LB_INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_1, 0 /* offsetof(struct __sk_buff, len) */, 0),
            LB_INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_2, 0, 2, 0),
            LB_INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, SK_DROP),
            LB_INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
            LB_INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0),
            LB_INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
            LB_INSN(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_10, BPF_REG_0, -8, 0),
            LB_INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0),
            LB_INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_2, BPF_PSEUDO_MAP_FD, 0, peers_fd),
            LB_INSN(0, 0, 0, 0, 0),
            LB_INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0),
            LB_INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -8),
            LB_INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 0),
            LB_INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
            LB_INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, SK_PASS),
            LB_INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        };
        static const char license[] = "GPL";
        union bpf_attr a;
        memset(&a, 0, sizeof(a));
        a.prog_type = BPF_PROG_TYPE_SK_SKB;
        a.expected_attach_type = BPF_SK_SKB_VERDICT;
        a.insns = (uint64_t)(uintptr_t)insns;
        a.insn_cnt = sizeof(insns) / sizeof(insns[0]);
        a.license = (uint64_t)(uintptr_t)license;
        if (log != NULL && log_size != 0) {
            log[0] = 0;
            a.log_buf = (uint64_t)(uintptr_t)log;
            a.log_size = log_size;
            a.log_level = 1;
        }
        return (int)lb_skm_bpf(BPF_PROG_LOAD, &a);
    }

    static void lb_skm_close(lb_skm *m)
    {
        if (m->prog >= 0) close(m->prog);
        if (m->verdict >= 0) close(m->verdict);
        if (m->peers >= 0) close(m->peers);
        m->prog = m->verdict = m->peers = -1;
    }

    /* Create the maps and the program and attach it. 0, or -1 with m->err and
     * m->step saying what the kernel refused (EPERM in an unprivileged container,
     * ENOSYS without bpf(2), EINVAL on a kernel without BPF_SK_SKB_VERDICT). */
    static int lb_skm_open(lb_skm *m, uint32_t max_entries)
    {
        union bpf_attr a;
        m->peers = m->verdict = m->prog = -1;
        m->err = 0;
        m->step = "";
        if (getenv("LB_SOCKMAP_FAIL") != NULL) {     /* tests: a kernel that refuses bpf(2) */
            m->err = EPERM;
            m->step = "BPF_MAP_CREATE";
            return -1;
        }
        m->peers = lb_skm_map_create(max_entries);
        m->verdict = m->peers >= 0 ? lb_skm_map_create(max_entries) : -1;
        if (m->verdict < 0) {
            m->err = errno;
            m->step = "BPF_MAP_CREATE";
            lb_skm_close(m);
            return -1;
        }
        m->prog = lb_skm_prog_load(m->peers, NULL, 0);
        if (m->prog < 0) {
            m->err = errno;
            m->step = "BPF_PROG_LOAD";
            lb_skm_close(m);
            return -1;
        }
        memset(&a, 0, sizeof(a));
        a.target_fd = m->verdict;
        a.attach_bpf_fd = m->prog;
        a.attach_type = BPF_SK_SKB_VERDICT;
        if (lb_skm_bpf(BPF_PROG_ATTACH, &a) != 0) {
            m->err = errno;
            m->step = "BPF_PROG_ATTACH";
            lb_skm_close(m);
            return -1;
        }
        return 0;
    }

    static int lb_skm_update(int map, uint64_t key, int fd)
    {
        union bpf_attr a;
        uint32_t v = (uint32_t)fd;
        memset(&a, 0, sizeof(a));
        a.map_fd = map;
        a.key = (uint64_t)(uintptr_t)&key;
        a.value = (uint64_t)(uintptr_t)&v;
        a.flags = BPF_NOEXIST;
        return (int)lb_skm_bpf(BPF_MAP_UPDATE_ELEM, &a);
    }

    static int lb_skm_delete(int map, uint64_t key)
    {
        union bpf_attr a;
        memset(&a, 0, sizeof(a));
        a.map_fd = map;
        a.key = (uint64_t)(uintptr_t)&key;
        return (int)lb_skm_bpf(BPF_MAP_DELETE_ELEM, &a);
    }

    static uint64_t lb_sock_cookie(int fd)
    {
        uint64_t cookie = 0;
        socklen_t len = sizeof(cookie);
        if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0)
            return 0;
        return cookie;
    }

    /* From struct tcp_info (linux/tcp.h): the totals the kernel keeps per socket.
     * Read by offset, since glibc's netinet/tcp.h may predate these fields. */
    #define LB_TCPI_BYTES_ACKED 120
    #define LB_TCPI_BYTES_RECEIVED 128

    static int lb_tcp_totals(int fd, uint64_t *acked, uint64_t *received, uint8_t *state)
    {
        unsigned char info[256];
        socklen_t len = sizeof(info);
        memset(info, 0, sizeof(info));
        if (getsockopt(fd, IPPROTO_TCP, 11 /* TCP_INFO */, info, &len) != 0 || len < LB_TCPI_BYTES_RECEIVED + 8)
            return -1;
        memcpy(acked, info + LB_TCPI_BYTES_ACKED, 8);
        memcpy(received, info + LB_TCPI_BYTES_RECEIVED, 8);
        *state = info[0];
        return 0;
    }

    /* Bytes ever written into fd's send queue: acknowledged + still queued.
     * The sum holds still while nobody writes, but an ACK between the two
     * reads moves bytes from one term to the other: read the queue on both
     * sides of TCP_INFO until it did not move. */
    static int64_t lb_tcp_written(int fd)
    {
        uint64_t acked, received;
        uint8_t state;
        int q1 = 0, q2 = 0, i;
        for (i = 0; i < 16; i++) {
            if (ioctl(fd, SIOCOUTQ, &q1) != 0 || lb_tcp_totals(fd, &acked, &received, &state) != 0
                    || ioctl(fd, SIOCOUTQ, &q2) != 0)
                return -1;
            if (q1 == q2)
                return (int64_t)acked + q1;
        }
        return -1;
    }

    /* A socket just put in the verdict map may hold bytes that arrived before:
     * the kernel runs the verdict over the receive queue only when data_ready
     * is called, i.e. when the next segment arrives, which for a request
     * already sent in full may be never. Setting SO_RCVLOWAT calls
     * tcp_set_rcvlowat -> tcp_data_ready -> sk_data_ready, now the psock's:
     * the queued skbs go through the verdict at once, in order, ahead of any
     * later segment (both run under the socket lock). */
    static int lb_sock_rcvlowat_kick(int fd)
    {
        int one = 1;
        return setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    }

    static int lb_tcp_inq(int fd)
    {
        int n = 0;
        if (ioctl(fd, SIOCINQ, &n) != 0)
            return -1;
        return n;
    }
    """
    ctypedef struct lb_skm:
        int peers
        int verdict
        int prog
        int err
        const char *step
    int lb_skm_open(lb_skm *m, uint32_t max_entries)
    void lb_skm_close(lb_skm *m)
    int lb_skm_update(int map, uint64_t key, int fd)
    int lb_skm_delete(int map, uint64_t key)
    uint64_t lb_sock_cookie(int fd)
    int lb_tcp_totals(int fd, uint64_t *acked, uint64_t *received, uint8_t *state)
    int64_t lb_tcp_written(int fd)
    int lb_tcp_inq(int fd)
    int lb_sock_rcvlowat_kick(int fd)
