"""`cert.list` and `cert.reload` (lb/cli/cert.py): the certificates the TLS
listeners serve, and reading them again without a restart."""

from __future__ import annotations

from lb import tls


def list_certificates(sup, args: dict) -> dict:
    """Every certificate of the generation in force."""
    return {"certificates": tls.certificate_rows(sup.config)}


def reload(sup, args: dict) -> dict:
    """Read every TLS listener's certificates again (files and directories of
    the running config, which is not read again) and serve them from a new
    generation: nothing is dropped, connections that began before keep their
    certificates. A refused certificate changes nothing (error "config")."""
    result = sup.reload(lambda: tls.with_fresh_certificates(sup.config))
    return {**result, "certificates": tls.certificate_rows(sup.config)}
