"""`key.add`, `key.revoke`, `key.list` (lb/cli/key.py): the API keys of an
[auth.NAME] of type api_key, changed in the running daemon without a reload.
A change is written to the auth's keys_file first (write, fsync, rename: the
file is the keys' one home, read again at a restart or reload), then
published to the workers' table before the answer: the next request sees it.
Only SHA-256 hashes are kept; a key lb makes is shown once, in the answer."""

from __future__ import annotations

import hashlib
import os
import secrets

from lb.admin import AdminError
from lb.config.auth import IDENTITY, MAX_KEYS, format_keys, read_keys
from lb.config.values import ConfigError

KEY_BYTES = 32  # of randomness in a key lb makes (43 base64url characters)


def _auth(sup, args: dict):
    name = args.get("auth")
    if not isinstance(name, str):
        raise AdminError("invalid", "argument 'auth' (an [auth.NAME] name) is required")
    auths = sup.gen.config.auth
    if name not in auths:
        raise AdminError("not_found", f"no auth {name!r} (auths: {', '.join(auths) or 'none'})")
    if auths[name].type != "api_key":
        raise AdminError("invalid", f"auth {name!r} is of type {auths[name].type!r}, not api_key")
    return name, auths[name]


def _current(auth) -> list[tuple[bytes, str]]:
    """The file's keys now (it may have been edited since the config was read)."""
    try:
        return list(read_keys(auth.keys_file))
    except ConfigError as e:
        raise AdminError("failed", e.message if hasattr(e, "message") else str(e)) from None


def _write(path: str, keys) -> None:
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, ("# lb API keys: <sha256 of the key> <identity>\n" + format_keys(keys)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        # nothing was published: the workers and the file still agree
        raise AdminError("failed", f"cannot write {path}: {e.strerror}") from None


def _publish(sup, name: str, keys) -> None:
    """Into the table of every generation still serving (a draining one too)."""
    for gen in [sup.gen, *sup.old]:
        if name in gen.config.auth:
            gen.shm.auth_publish(list(gen.config.auth).index(name), keys)


def add(sup, args: dict) -> dict:
    name, auth = _auth(sup, args)
    identity = args.get("identity")
    if not isinstance(identity, str) or not IDENTITY.fullmatch(identity):
        raise AdminError("invalid", "argument 'identity': letters, digits and _.@:+=- up to 63")
    key = args.get("key")
    made = key is None
    if made:
        key = secrets.token_urlsafe(KEY_BYTES)
    if not isinstance(key, str) or not 16 <= len(key) <= 1024 or not key.isprintable() or " " in key:
        raise AdminError("invalid", "argument 'key': 16..1024 printable characters without spaces")
    digest = hashlib.sha256(key.encode()).digest()
    keys = _current(auth)
    if any(d == digest for d, _ in keys):
        raise AdminError("invalid", "that key is already there")
    if len(keys) >= MAX_KEYS:
        raise AdminError("invalid", f"auth {name!r} has {MAX_KEYS} keys already")
    keys.append((digest, identity))
    _write(auth.keys_file, keys)
    _publish(sup, name, keys)
    out = {"auth": name, "identity": identity, "sha256": digest.hex(), "keys": len(keys)}
    if made:
        out["key"] = key
    return out


def revoke(sup, args: dict) -> dict:
    """By identity (every key of it) or by the key's SHA-256 (hex, or a prefix
    of at least 8 digits that names one key)."""
    name, auth = _auth(sup, args)
    identity, sha = args.get("identity"), args.get("sha256")
    if (identity is None) == (sha is None):
        raise AdminError("invalid", "one of 'identity' or 'sha256' is required")
    keys = _current(auth)
    if identity is not None:
        gone = [(d, i) for d, i in keys if i == identity]
    else:
        if not isinstance(sha, str) or len(sha) < 8:
            raise AdminError("invalid", "argument 'sha256': at least 8 hex digits")
        gone = [(d, i) for d, i in keys if d.hex().startswith(sha.lower())]
        if len(gone) > 1:
            raise AdminError("invalid", f"{sha!r} names {len(gone)} keys: give more digits")
    if not gone:
        raise AdminError("not_found", f"no such key in auth {name!r}")
    keys = [k for k in keys if k not in gone]
    _write(auth.keys_file, keys)
    _publish(sup, name, keys)
    return {"auth": name, "revoked": [{"identity": i, "sha256": d.hex()} for d, i in gone], "keys": len(keys)}


def list_keys(sup, args: dict) -> dict:
    name, auth = _auth(sup, args)
    keys = _current(auth)
    index = list(sup.gen.config.auth).index(name)
    return {"auth": name, "keys_file": auth.keys_file, "counts": sup.gen.shm.auth_counts(index),
            "keys": [{"identity": i, "sha256": d.hex()} for d, i in keys]}


def status(gen) -> list[dict]:
    return [{"name": name, "type": a.type, "file": a.keys_file or a.htpasswd or a.jwks,
             "counts": gen.shm.auth_counts(i)} for i, (name, a) in enumerate(gen.config.auth.items())]


def carry_over(old, new) -> None:
    """Auths of the same name keep their counts across a reload."""
    for i, name in enumerate(new.config.auth):
        if name in old.config.auth:
            counts = old.shm.auth_counts(list(old.config.auth).index(name))
            new.shm.add_carried_auth(new.carried_row, i, counts)
            old.auth_handed_over[name] = counts


def fold_drained(old, new) -> None:
    from lb.control.limits import fold_counts

    fold_counts(list(new.config.auth), list(old.config.auth), old.auth_handed_over, old.shm.auth_counts,
                lambda i, delta: new.shm.add_carried_auth(new.carried_row, i, delta))
