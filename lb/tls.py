"""The supervisor's side of TLS (docs/tls.md).

- The contexts of every TLS listener, built once per config generation before
  the workers fork, so that a reload (or a certificate swap) is a new
  generation: new connections get the new certificates, connections of the old
  one keep theirs until they end.
- The session ticket keys in shared memory (region tls_tickets), which every
  worker reads: made here and rotated on `ticket_rotate`, carried over by a
  reload, or read from a `ticket_keys` file shared with other nodes.
"""

from __future__ import annotations

import logging
import os
import time

import dataclasses

from lb._fastpath import TlsClient, TlsServer
from lb.config import ConfigError
from lb.config.tls import load_certificates, read_ticket_keys, ticket_keys_in_use

log = logging.getLogger("lb")

TICKET_KEY_BYTES = 80


def contexts(config) -> dict:
    """{"listeners": {name: TlsServer}, "pools": {name: TlsClient}}: the TLS
    contexts of a config's TLS listeners and of its pools with TLS. Raises
    TlsError (a ValueError) when OpenSSL refuses what the config check passed
    (a certificate file replaced in between)."""
    tickets = config.global_.tls.enabled
    return {
        "listeners": {name: TlsServer(listener.tls, name, tickets) for name, listener in config.listeners.items()
                      if listener.tls is not None},
        "pools": {name: TlsClient(pool.tls) for name, pool in config.pools.items() if pool.tls is not None},
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


def publish_ticket_keys(shm, settings, previous_shm=None) -> None:
    """The keys of a new generation: the file's; or, for keys lb makes, the
    previous generation's (a reload keeps tickets valid), else new ones."""
    if not settings.enabled:
        shm.set_ticket_keys([], 0)
    elif settings.keys_file:
        shm.set_ticket_keys(list(settings.keys), settings.current, _now_ms())
    elif previous_shm is not None and previous_shm.ticket_keys()[0]:
        shm.set_ticket_keys(*previous_shm.ticket_keys())
    else:
        # previous, current, next: the previous one opens tickets issued before
        # the last rotation, so a ticket lives up to two rotation periods
        shm.set_ticket_keys([os.urandom(TICKET_KEY_BYTES) for _ in range(3)], 1, _now_ms())


def rotate_ticket_keys(shm, settings) -> bool:
    """The supervisor's tick. When the keys lb makes are `rotate` old, the
    current one becomes the previous, the next one current, and a new one
    next. With a keys file, it is read again that often (a file that cannot be
    read leaves the keys as they are, and says so)."""
    if not settings.enabled:
        return False
    keys, current, rotated_ms = shm.ticket_keys()
    if _now_ms() - rotated_ms < settings.rotate * 1000:
        return False
    if settings.keys_file:
        try:
            new, current = ticket_keys_in_use(read_ticket_keys(settings.keys_file, "global.tls.ticket_keys"))
        except ConfigError as e:
            log.error("TLS ticket keys not read again, the ones in use stay: %s", e)
            new = keys
        shm.set_ticket_keys(list(new), current, _now_ms())
        return list(new) != keys
    shm.set_ticket_keys([keys[1], keys[2], os.urandom(TICKET_KEY_BYTES)], 1, _now_ms())
    log.info("TLS session ticket keys rotated")
    return True


def certificate_rows(config) -> list[dict]:
    """What `lb cert list` shows: every certificate of every TLS listener, in
    the order they are tried (the first of a listener is its default)."""
    rows = []
    for name, listener in config.listeners.items():
        if listener.tls is None:
            continue
        for i, c in enumerate(listener.tls.certificates):
            rows.append({"listener": name, "default": i == 0, "names": list(c.names), "subject": c.subject,
                         "issuer": c.issuer, "not_after": c.not_after, "sha256": c.sha256, "key": c.key_type,
                         "cert": c.cert, "source": c.path})
    return rows


def with_fresh_certificates(config):
    """The config with every TLS listener's certificates read again from their
    files and directories (`lb cert reload`): ConfigError, naming the key,
    when one is refused. Its warnings are those of the certificates."""
    warnings: list[str] = []
    listeners = {}
    for name, listener in config.listeners.items():
        if listener.tls is not None:
            certificates = load_certificates(listener.tls.sources, warnings)
            if not certificates:
                raise ConfigError(f"listeners.{name}.tls.certificates", "no certificate is left")
            listener = dataclasses.replace(listener, tls=dataclasses.replace(listener.tls, certificates=certificates))
        listeners[name] = listener
    return dataclasses.replace(config, listeners=listeners, warnings=tuple(warnings))
