# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The compiled data plane of lb.

One module assembled from topic files (fastpath/*.pxi), over C declarations in
includes/*.pxd and the structs of _fastpath.pxd. Python touches this module only
at start, at stop, and through the shared-memory accessors of `Shm`; the worker
loop runs with the GIL released and allocates no Python object.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from libc.string cimport memset, memcpy, memmove, memcmp, memchr, strcmp, strncmp, strlen
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ
from libc.errno cimport errno, EAGAIN, EINTR, EINPROGRESS, EMFILE, ENFILE, ENOBUFS, ENOMEM, EPROTO, EPIPE, ECONNRESET

from lb.includes.epoll cimport *
from lb.includes.socket cimport *
from lb.includes.fcntl cimport *
from lb.includes.unistd cimport close, pipe2, read, getpid, dup
from lb.includes.signalfd cimport *
from lb.includes.time cimport timespec, clock_gettime, CLOCK_MONOTONIC, CLOCK_MONOTONIC_COARSE
from lb.includes.mman cimport *
from lb.includes.atomics cimport *
from lb.includes.xxhash64 cimport lb_xxh64, lb_splitmix64
from lb.includes.sockmap cimport *

include "fastpath/shm.pxi"
include "fastpath/acl.pxi"
include "fastpath/limits.pxi"
include "fastpath/auth.pxi"
include "fastpath/auth_basic.pxi"
include "fastpath/jwt_parse.pxi"
include "fastpath/auth_jwt.pxi"
include "fastpath/transport.pxi"
include "fastpath/tls.pxi"
include "fastpath/tls_record.pxi"
include "fastpath/tls_passthrough.pxi"
include "fastpath/conn.pxi"
include "fastpath/select.pxi"
include "fastpath/select_roundrobin.pxi"
include "fastpath/select_leastconn.pxi"
include "fastpath/select_random.pxi"
include "fastpath/select_p2c.pxi"
include "fastpath/select_maglev.pxi"
include "fastpath/proxy_proto.pxi"
include "fastpath/forward.pxi"
include "fastpath/sockmap.pxi"
include "fastpath/uring.pxi"
include "fastpath/connect.pxi"
include "fastpath/loop.pxi"
include "fastpath/selector.pxi"
include "fastpath/checker.pxi"
include "fastpath/http_parse.pxi"
include "fastpath/http_msg.pxi"
include "fastpath/http_conn.pxi"
include "fastpath/http_rewrite.pxi"
include "fastpath/http_keys.pxi"
include "fastpath/http_route.pxi"
include "fastpath/http_headers.pxi"
include "fastpath/http_client_cert.pxi"
include "fastpath/http_body_limit.pxi"
include "fastpath/cache_key.pxi"
include "fastpath/cache.pxi"
include "fastpath/cache_tier.pxi"
include "fastpath/cache_rfc.pxi"
include "fastpath/cache_swr.pxi"
include "fastpath/cache_disk.pxi"
include "fastpath/cache_send.pxi"
include "fastpath/split.pxi"
include "fastpath/mirror.pxi"
include "fastpath/log.pxi"
include "fastpath/metrics.pxi"
include "fastpath/top.pxi"
include "fastpath/http_phases.pxi"
include "fastpath/http.pxi"
include "fastpath/http_io.pxi"
include "fastpath/h2.pxi"
include "fastpath/h2_backend.pxi"
include "fastpath/http_events.pxi"
include "fastpath/http_init.pxi"
include "fastpath/log_format.pxi"
include "fastpath/fuzz.pxi"
