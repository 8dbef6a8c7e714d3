"""The supervisor's side of TLS (docs/tls.md): the contexts of every TLS
listener, built once per config generation before the workers fork, so that a
reload (or a certificate swap) is a new generation: new connections get the new
certificates, connections of the old one keep theirs until they end."""

from __future__ import annotations

from lb._fastpath import TlsServer


def servers(config) -> dict[str, TlsServer]:
    """{listener name: its TlsServer} for the TLS listeners of a config. Raises
    TlsError (a ValueError) when OpenSSL refuses what the config check passed
    (a certificate file replaced in between)."""
    return {name: TlsServer(listener.tls) for name, listener in config.listeners.items()
            if listener.tls is not None}
