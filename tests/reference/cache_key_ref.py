"""Pure-Python reference of the cache key (lb/fastpath/cache_key.pxi,
docs/cache.md "The cache key"): what a [caches.NAME] with these key
settings makes of a request's host, target and fields."""

from __future__ import annotations

KEY_MAX = 4096
PARAMS_MAX = 64


def _listed(param: str, patterns) -> bool:
    name = param.split("=", 1)[0]
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def cache_key(cfg, host: str, target: str, fields: list[tuple[str, str]]) -> tuple[bytes, int] | None:
    """(key, length of its URL part), or None when there is none."""
    if not host:
        return None
    keep = tuple(cfg.key_query_keep)
    patterns = keep or tuple(cfg.key_query_drop)
    out = host.lower() if cfg.key_host else ""
    if not target:
        out += "/"
    elif cfg.key_query == "keep" and not patterns:
        out += target
    else:
        path, sep, query = target.partition("?")
        out += path
        if sep and cfg.key_query != "drop":
            params = [p for p in query.split("&") if p and (not patterns or _listed(p, patterns) == bool(keep))]
            if len(params) > PARAMS_MAX:
                return None
            if cfg.key_query == "sort":
                params.sort(key=lambda p: p.split("=", 1)[0].encode("latin-1"))  # stable: values keep their order
            if params:
                out += "?" + "&".join(params)
    url_len = len(out.encode("latin-1"))
    for name in cfg.key_headers:
        values = [v for n, v in fields if n.lower() == name]
        if values:
            out += "\n" + name + ":" + ",".join(values)
    key = out.encode("latin-1")
    if len(key) > KEY_MAX:
        return None
    return key, url_len
