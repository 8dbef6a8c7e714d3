"""The JWKS files of the JWT auths, watched by the supervisor (its loop calls
tick): when a file changes (its mtime, size, inode), it is read again and its
keys are published to every generation still serving that auth, without a
reload; each worker rebuilds its keys at its next token
(lb/fastpath/auth_jwt.pxi). A file that does not parse, or is gone, is
logged and the running keys stay: a half-written file never locks everyone
out. Key rotation is therefore: add the new key to the file, sign with it,
remove the old one later."""

from __future__ import annotations

import logging
import time

from lb.config.jwks import file_stamp, pack, read_jwks
from lb.config.values import ConfigError

log = logging.getLogger("lb")
CHECK_EVERY = 0.5  # seconds between looks at the files


def tick(sup) -> None:
    now = time.monotonic()
    if now < getattr(sup, "_jwks_next", 0.0):
        return
    sup._jwks_next = now + CHECK_EVERY
    seen = sup.__dict__.setdefault("_jwks_seen", {})
    for name, auth in sup.gen.config.auth.items():
        if auth.type != "jwt":
            continue
        # the stamp of the file as the generation's config read it, until a change is seen
        known = seen.get((name, auth.jwks), auth.jwks_stamp)
        stamp = file_stamp(auth.jwks)
        if stamp == known or stamp is None:
            if stamp is None and known is not None:
                log.warning("auth %s: cannot read %s; the keys read before stay in use", name, auth.jwks)
                seen[(name, auth.jwks)] = None
            continue
        seen[(name, auth.jwks)] = stamp
        try:
            keys = read_jwks(auth.jwks, f"auth.{name}.jwks")
        except ConfigError as e:
            log.warning("%s; the keys read before stay in use", e)
            continue
        publish(sup, name, auth.jwks, keys)
        log.info("auth %s: %d keys from %s", name, len(keys), auth.jwks)


def publish(sup, name: str, path: str, keys) -> None:
    """Into every generation still serving the auth from that file (a draining one too)."""
    blob = pack(keys)
    for gen in [sup.gen, *sup.old]:
        auth = gen.config.auth.get(name)
        if auth is not None and auth.type == "jwt" and auth.jwks == path:
            gen.shm.auth_publish_blob(list(gen.config.auth).index(name), blob, len(keys))
