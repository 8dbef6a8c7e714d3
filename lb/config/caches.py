"""The [caches.NAME] sections: shared HTTP caches (docs/cache.md), each one
region of shared memory that every worker reads and fills, used by the http
listeners and routes that name it (their `cache` key, read here too:
parse_cache_name)."""

from __future__ import annotations

import dataclasses
import os
import re

from lb.config.headers import check_header_name
from lb.config.values import ConfigError, Context, Table, did_you_mean, string_list

NAMED = True
KEYS = ("size", "max_object_size", "tag_header", "purge_allow", "key_host", "key_query", "key_query_drop",
        "key_query_keep", "key_headers", "disk", "disk_size", "range_fill")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")
MIN_SIZE = 1 << 20  # the index and a few blocks
MAX_SIZE = 1 << 40
MAX_DISK_SIZE = 1 << 44
MAX_PURGE_ACLS = 8
KEY_QUERY = ("keep", "sort", "drop")
MAX_KEY_PATTERNS = 16  # key_query_drop / key_query_keep (the compiled key's fixed arrays)
MAX_KEY_HEADERS = 8
MAX_KEY_NAME = 64
_PARAM = re.compile(r"[^\s&=#*]{1,64}\*?|\*")  # a query parameter name, or a prefix of names ending in "*"
# fields that are never a cache key's: each request's own, or hop-by-hop
_NOT_KEY_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
                    "upgrade", "proxy-connection", "authorization", "cookie"}
MIN_DISK_SIZE = 4 << 20  # its header, the checksums and a region of at least MIN_SIZE
DISK_FILE = "lb-cache-{name}.dat"  # the file in a `disk` that names a directory
# "256m" (DESIGN.md 4b), "256M", "256MiB", "1g", plain bytes
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclasses.dataclass(frozen=True)
class Cache:
    name: str
    size: int = 256 << 20  # bytes of shared memory: the index and the objects, all of it
    max_object_size: int = 8 << 20  # larger responses stream through, not stored
    tag_header: str = ""  # the origin's field of purge tags ("Surrogate-Key", "Cache-Tag"); "" = none
    purge_allow: tuple[str, ...] = ()  # ACLs whose addresses may send PURGE; () = PURGE refused (405)
    # the key (docs/cache.md "The cache key"): host, target, query parameters, chosen fields
    key_host: bool = True  # False: one object for every host (the host is not in the key)
    key_query: str = "keep"  # keep (as sent) | sort (by name) | drop (the whole query)
    key_query_drop: tuple[str, ...] = ()  # parameters left out of the key ("utm_*": a prefix)
    key_query_keep: tuple[str, ...] = ()  # only these parameters are in the key; () = all (less key_query_drop)
    key_headers: tuple[str, ...] = ()  # request fields whose values are part of the key (lower case)
    disk: str = ""  # the disk tier's file (a directory given gets DISK_FILE in it); "" = no disk tier
    disk_size: int = 0  # bytes of that file, all of it
    range_fill: bool = True  # a Range miss also fetches the whole response, once, in the background, to store it


def parse(tables: list[tuple[str, Table]], ctx: Context) -> dict[str, Cache]:
    acls = ctx.sections.get("acls", {})
    out = {}
    disks: dict[str, str] = {}
    for name, t in tables:
        cache = out[name] = _parse_cache(name, t, acls)
        if cache.disk and os.path.realpath(cache.disk) in disks:
            other = disks[os.path.realpath(cache.disk)]
            raise ConfigError(t.path_of("disk"), f"{cache.disk!r} is the disk of cache {other!r} too")
        if cache.disk:
            disks[os.path.realpath(cache.disk)] = name
    return out


def parse_size(t: Table, key: str, default: int, lo: int, hi: int) -> int:
    value = t.get(key, default, 'a size like "256m"', lambda v: isinstance(v, (int, str)) and not isinstance(v, bool))
    m = _SIZE.fullmatch(str(value).strip())
    if not m:
        raise ConfigError(t.path_of(key), f'invalid size {value!r} (use e.g. "256m", "8MiB", "1g")')
    n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if not lo <= n <= hi:
        raise ConfigError(t.path_of(key), f"{value!r} is out of range ({lo} to {hi} bytes)")
    return n


def _parse_cache(name: str, t: Table, acls: dict) -> Cache:
    if not NAME.fullmatch(name):
        raise ConfigError(t.path, f"cache name {name!r}: letters, digits, '_', '.' and '-', up to 63")
    size = parse_size(t, "size", 256 << 20, MIN_SIZE, MAX_SIZE)
    max_object = parse_size(t, "max_object_size", min(8 << 20, size // 16), 0, 1 << 31)
    if max_object > size // 2:
        raise ConfigError(t.path_of("max_object_size"), f"must be at most half of size ({size // 2} bytes)")
    tag_header = t.string("tag_header", "")
    if tag_header:
        check_header_name(tag_header, t.path_of("tag_header"))
    allow = t.get("purge_allow", [], "a list of ACL names", lambda v: isinstance(v, list)
                  and all(isinstance(x, str) for x in v))
    if len(allow) > MAX_PURGE_ACLS:
        raise ConfigError(t.path_of("purge_allow"), f"at most {MAX_PURGE_ACLS} ACLs")
    for acl in allow:
        if acl not in acls:
            hint = did_you_mean(acl, list(acls))
            raise ConfigError(t.path_of("purge_allow"), f"unknown ACL {acl!r}" + (f" ({hint})" if hint else
                                                                                  " (define it in an [acls.NAME] table)"))
    key_query = t.choice("key_query", "keep", KEY_QUERY)
    drop = _key_params(t, "key_query_drop")
    keep = _key_params(t, "key_query_keep")
    if drop and keep:
        raise ConfigError(t.path_of("key_query_keep"), "set key_query_keep or key_query_drop, not both")
    if key_query == "drop" and (drop or keep):
        raise ConfigError(t.path_of("key_query_keep" if keep else "key_query_drop"),
                          'has no effect with key_query = "drop" (no parameter is in the key)')
    headers = []
    for value, path in string_list(t, "key_headers", []):
        check_header_name(value, path)
        if value.lower() in _NOT_KEY_HEADERS:
            raise ConfigError(path, f"{value!r} cannot be part of a key (the host is key_host; "
                                    "hop-by-hop, credentials and framing fields never are)")
        if value.lower() in headers:
            raise ConfigError(path, f"{value!r} is listed twice")
        headers.append(value.lower())
    if len(headers) > MAX_KEY_HEADERS:
        raise ConfigError(t.path_of("key_headers"), f"at most {MAX_KEY_HEADERS} fields")
    disk, disk_size = _parse_disk(name, t, max_object)
    return Cache(name=name, size=size, max_object_size=max_object, tag_header=tag_header, purge_allow=tuple(allow),
                 key_host=t.boolean("key_host", True), key_query=key_query, key_query_drop=drop,
                 key_query_keep=keep, key_headers=tuple(headers), disk=disk, disk_size=disk_size,
                 range_fill=t.boolean("range_fill", True))


def _key_params(t: Table, key: str) -> tuple[str, ...]:
    """key_query_drop / key_query_keep: parameter names, or prefixes ("utm_*")."""
    out = []
    for value, path in string_list(t, key, []):
        if not _PARAM.fullmatch(value) or value == "*":
            raise ConfigError(path, f"{value!r} is not a query parameter name (or a prefix of names ending in '*'; "
                                    f"no spaces, '&', '=' or '#', at most {MAX_KEY_NAME} bytes)")
        out.append(value)
    if len(out) > MAX_KEY_PATTERNS:
        raise ConfigError(t.path_of(key), f"at most {MAX_KEY_PATTERNS} names")
    return tuple(out)


def _parse_disk(name: str, t: Table, max_object: int) -> tuple[str, int]:
    """The disk tier: a file (or a directory to make it in) that can be
    written, and a size its filesystem has room for. The file is made and
    checked at start (lb/shm.py), as the region of memory is."""
    path = t.string("disk", "")
    if not path:
        if t.has("disk_size"):
            raise ConfigError(t.path_of("disk_size"), "needs `disk`, the file of the disk tier")
        return "", 0
    if not os.path.isabs(path):
        raise ConfigError(t.path_of("disk"), f"{path!r}: an absolute path, please")
    if os.path.isdir(path):
        path = os.path.join(path, DISK_FILE.format(name=name))
    parent = os.path.dirname(path) or "/"
    if not os.path.isdir(parent):
        raise ConfigError(t.path_of("disk"), f"{parent!r} is not a directory")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ConfigError(t.path_of("disk"), f"{path!r} is not a regular file")
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        raise ConfigError(t.path_of("disk"), f"{path!r} cannot be written")
    if not t.has("disk_size"):
        raise ConfigError(t.path_of("disk_size"), "required with `disk`: the file's size, like \"10g\"")
    size = parse_size(t, "disk_size", 0, MIN_DISK_SIZE, MAX_DISK_SIZE)
    if size < 4 * max_object:
        raise ConfigError(t.path_of("disk_size"),
                          f"must hold at least 4 objects of max_object_size ({4 * max_object} bytes)")
    st = os.statvfs(parent)
    have = os.path.getsize(path) if os.path.isfile(path) else 0
    room = st.f_bavail * st.f_frsize + have
    if size > room:
        raise ConfigError(t.path_of("disk_size"),
                          f"{size} bytes do not fit: the filesystem of {parent!r} has {room} bytes free")
    return path, size


def parse_cache_name(t: Table, caches: dict[str, Cache]) -> str:
    """The `cache` key of an http listener or route: a [caches.NAME], or ""."""
    name = t.string("cache", "")
    if name and name not in caches:
        hint = did_you_mean(name, list(caches))
        raise ConfigError(t.path_of("cache"), f"unknown cache {name!r}" + (f" ({hint})" if hint else
                                                                             " (define it in a [caches.NAME] table)"))
    return name
