"""The [listeners.NAME.tls] table: TLS termination on a listener, and the
[global.tls] table: session resumption shared by all of them (docs/tls.md).

Certificates are read and checked here, as a start would load them: a key that
does not match, a broken chain or an expired certificate is an error naming
its key, so `lb check` and a reload refuse it and the running config keeps
serving. The defaults are Mozilla's *intermediate* profile.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import time

from lb.config.headers import check_header_name, check_rewritable
from lb.config.values import HOSTNAME, MIN_TIMEOUT, ConfigError, Table, check_absolute_path, string_list

GLOBAL_KEYS = ("tickets", "ticket_keys", "ticket_rotate")
POOL_KEYS = ("verify", "ca", "sni", "cert", "key")
# Where Debian (and most distributions, through a link) keep the system's CAs.
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
TICKET_KEY_BYTES = 80  # 16 name, 32 AES-256, 32 HMAC-SHA256: HAProxy's tls-ticket-keys format
KEYS = ("certificates", "directory", "alpn", "protocols", "ciphers", "ciphersuites", "groups",
        "handshake_timeout", "hsts", "client_ca", "client_verify", "client_headers")
CLIENT_VERIFY = ("required", "optional")
CLIENT_HEADER_KEYS = ("subject", "fingerprint", "verify")
# what the backend is told of a client certificate (http mode), by default
CLIENT_HEADERS = (("subject", "X-Client-Cert-Subject"), ("fingerprint", "X-Client-Cert-Sha256"),
                  ("verify", "X-Client-Cert-Verify"))
CERTIFICATE_KEYS = ("cert", "key")
PROTOCOLS = ("TLSv1.2", "TLSv1.3")
# Mozilla's intermediate configuration (ssl-config.mozilla.org, guidelines 5.7):
# TLS 1.2 with forward-secret AEAD ciphers only, and TLS 1.3.
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
))
INTERMEDIATE_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
INTERMEDIATE_GROUPS = "X25519:P-256:P-384"
# `lb check` warns this long before a certificate expires.
EXPIRY_WARNING = 14 * 86400

_HSTS = re.compile(r"max-age=[0-9]+(\s*;\s*(includeSubDomains|preload))*", re.IGNORECASE)
_PROTOCOL_ID = re.compile(r"[\x21-\x7e]{1,255}")


@dataclasses.dataclass(frozen=True)
class BackendTls:
    """TLS from lb to a pool's backends."""

    verify: bool = True  # the backend's certificate must chain to `ca` and name the backend
    ca: str = SYSTEM_CA
    sni: str = ""  # sent, and the name verified; "" = none sent, the backend's IP address verified
    client: Certificate | None = None  # lb's own certificate, for backends that ask for one


def parse_pool(t: Table, warnings: list[str]) -> BackendTls:
    """One [pools.NAME.tls] table."""
    verify = t.boolean("verify", True)
    ca = check_absolute_path(t.string("ca", SYSTEM_CA), t.path_of("ca"))
    if verify and not os.access(ca, os.R_OK):
        raise ConfigError(t.path_of("ca"), f"cannot read {ca}")
    if not verify:
        for key in ("ca",):
            if t.has(key):
                warnings.append(f"{t.path_of(key)}: has no effect unless verify = true")
    sni = t.string("sni", "").lower().rstrip(".")
    if sni and not HOSTNAME.fullmatch(sni):
        raise ConfigError(t.path_of("sni"), f"{sni!r} is not a host name")
    client = None
    if t.has("cert") or t.has("key"):
        cert = check_absolute_path(t.string("cert"), t.path_of("cert"))
        key = check_absolute_path(t.string("key", cert), t.path_of("key"))
        client = _load(cert, key, t.path_of("cert"), warnings, names_required=False)
    return BackendTls(verify=verify, ca=ca, sni=sni, client=client)


@dataclasses.dataclass(frozen=True)
class TicketSettings:
    """TLS session tickets: a ticket one worker issues resumes on every worker,
    after a reload, and (with a shared ticket_keys file) on other lb nodes."""

    enabled: bool = True
    keys_file: str = ""  # "" = keys made by lb
    # from keys_file: its last three keys; the one before the last encrypts
    keys: tuple[bytes, ...] = dataclasses.field(default=(), repr=False)
    current: int = 0
    # keys lb makes rotate this often; a keys file is read again this often
    rotate: float = 3600.0


def parse_global(t: Table) -> TicketSettings:
    """The [global.tls] table."""
    enabled = t.boolean("tickets", True)
    keys_file = t.string("ticket_keys", "")
    rotate = t.duration("ticket_rotate", "1h", 1.0)
    if not keys_file:
        return TicketSettings(enabled=enabled, rotate=rotate)
    path = t.path_of("ticket_keys")
    keys, current = ticket_keys_in_use(read_ticket_keys(check_absolute_path(keys_file, path), path))
    return TicketSettings(enabled=enabled, keys_file=keys_file, keys=keys, current=current, rotate=rotate)


def ticket_keys_in_use(keys: list[bytes]) -> tuple[tuple[bytes, ...], int]:
    """The keys of a file lb uses, and which one encrypts. HAProxy's convention:
    of the last three, the one before the last encrypts, so that appending a
    key rotates them, and nodes that read the file at different times still
    open each other's tickets."""
    keys = keys[-3:]
    return tuple(keys), max(0, len(keys) - 2)


def read_ticket_keys(filename: str, path: str) -> list[bytes]:
    """A ticket keys file: one key a line, base64 of 80 bytes; '#' comments."""
    try:
        with open(filename, encoding="ascii") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"cannot read {filename}: {getattr(e, 'strerror', None) or e}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise ConfigError(path, f"{filename} line {number}: not base64") from None
        if len(key) != TICKET_KEY_BYTES:
            raise ConfigError(path, f"{filename} line {number}: a key is {TICKET_KEY_BYTES} bytes "
                                    f"(`openssl rand 80 | base64 -w0`), not {len(key)}")
        keys.append(key)
    if not keys:
        raise ConfigError(path, f"{filename} holds no key")
    return keys


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A certificate (its chain, leaf first) and its key, and what the leaf says."""

    cert: str
    key: str
    path: str  # the config key it came from, for messages
    names: tuple[str, ...] = ()
    subject: str = ""
    issuer: str = ""
    not_after: int = 0  # Unix time
    sha256: str = ""
    key_type: str = ""  # RSA | ECDSA


@dataclasses.dataclass(frozen=True)
class CertificateSources:
    """Where a listener's certificates are read from: its `certificates`
    entries (cert, key, key path) and its `directory` (and that key's path),
    read again by `lb cert reload`."""

    pairs: tuple[tuple[str, str, str], ...] = ()
    directory: str = ""
    directory_path: str = ""


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    certificates: tuple[Certificate, ...]  # the first one serves clients that name no known host
    alpn: tuple[str, ...]
    sources: CertificateSources = CertificateSources()
    protocols: tuple[str, ...] = PROTOCOLS
    ciphers: str = INTERMEDIATE_CIPHERS
    ciphersuites: str = INTERMEDIATE_CIPHERSUITES
    groups: str = INTERMEDIATE_GROUPS
    handshake_timeout: float = 10.0
    hsts: str = ""  # the Strict-Transport-Security value http responses get; "" = none
    client_ca: str = ""  # client certificates are asked for and verified against it; "" = not asked for
    client_verify: str = "required"
    # http mode: the field names (subject, fingerprint, verify) that tell the backend about it
    client_headers: tuple[str, str, str] = tuple(name for _, name in CLIENT_HEADERS)


def parse(t: Table, mode: str, warnings: list[str]) -> TlsSettings:
    """One [listeners.NAME.tls] table of a listener in `mode`."""
    from lb._fastpath import TlsError, check_tls_settings

    protocols = _protocols(t)
    settings = dict(
        ciphers=t.string("ciphers", INTERMEDIATE_CIPHERS),
        ciphersuites=t.string("ciphersuites", INTERMEDIATE_CIPHERSUITES),
        groups=t.string("groups", INTERMEDIATE_GROUPS),
    )
    try:
        check_tls_settings(protocols, **settings)
    except TlsError as e:
        raise ConfigError(t.path_of(e.key), e.message) from None
    hsts = t.string("hsts", "")
    if hsts and mode != "http":
        raise ConfigError(t.path_of("hsts"), 'needs mode = "http" (it is a response header)')
    if hsts and not _HSTS.fullmatch(hsts):
        raise ConfigError(t.path_of("hsts"), f'{hsts!r} is not a Strict-Transport-Security value '
                                             '(e.g. "max-age=63072000; includeSubDomains")')
    client_ca = t.string("client_ca", "")
    if client_ca:
        check_absolute_path(client_ca, t.path_of("client_ca"))
        if not os.access(client_ca, os.R_OK):
            raise ConfigError(t.path_of("client_ca"), f"cannot read {client_ca}")
    client_verify = t.choice("client_verify", "required", CLIENT_VERIFY)
    client_headers = _client_headers(t, mode)
    if not client_ca:
        for key in ("client_verify", "client_headers"):
            if t.has(key):
                warnings.append(f"{t.path_of(key)}: has no effect unless client_ca is set")
    sources = _sources(t)
    certificates = load_certificates(sources, warnings)
    if not certificates:
        raise ConfigError(t.path_of("certificates"),
                          "a TLS listener needs at least one certificate (certificates or directory)")
    return TlsSettings(
        certificates=certificates,
        sources=sources,
        alpn=_alpn(t, ("http/1.1",) if mode == "http" else ()),
        protocols=protocols,
        handshake_timeout=t.duration("handshake_timeout", "10s", MIN_TIMEOUT),
        hsts=hsts,
        client_ca=client_ca,
        client_verify=client_verify,
        client_headers=client_headers,
        **settings,
    )


def _client_headers(t: Table, mode: str) -> tuple[str, str, str]:
    table = t.table("client_headers", CLIENT_HEADER_KEYS)
    if mode != "http" and t.has("client_headers"):
        raise ConfigError(t.path_of("client_headers"), 'needs mode = "http" (they are request header fields)')
    names = []
    for key, default in CLIENT_HEADERS:
        name = table.string(key, default)
        check_header_name(name, table.path_of(key))
        check_rewritable(name, table.path_of(key))
        if name.lower() in (n.lower() for n in names):
            raise ConfigError(table.path_of(key), f"{name!r} names another of client_headers too")
        names.append(name)
    return tuple(names)


def _protocols(t: Table) -> tuple[str, ...]:
    items = string_list(t, "protocols", list(PROTOCOLS))
    if not items:
        raise ConfigError(t.path_of("protocols"), f"at least one is required ({', '.join(PROTOCOLS)})")
    for value, path in items:
        if value not in PROTOCOLS:
            raise ConfigError(path, f"{value!r} is not one of {', '.join(PROTOCOLS)} "
                                    "(older versions are broken and not offered)")
    return tuple(dict.fromkeys(value for value, _ in items))


def _alpn(t: Table, default: tuple[str, ...]) -> tuple[str, ...]:
    items = string_list(t, "alpn", list(default))
    for value, path in items:
        if not _PROTOCOL_ID.fullmatch(value):
            raise ConfigError(path, f"{value!r} is not an ALPN protocol id (1 to 255 printable characters)")
    return tuple(dict.fromkeys(value for value, _ in items))


def _sources(t: Table) -> CertificateSources:
    pairs = []  # (cert, key, key path)
    for ct in t.array_of_tables("certificates", CERTIFICATE_KEYS):
        cert = check_absolute_path(ct.string("cert"), ct.path_of("cert"))
        # one PEM file may hold the chain and the key
        key = check_absolute_path(ct.string("key", cert), ct.path_of("key"))
        pairs.append((cert, key, ct.path))
    directory = t.string("directory", "")
    if directory:
        check_absolute_path(directory, t.path_of("directory"))
    return CertificateSources(tuple(pairs), directory, t.path_of("directory"))


def load_certificates(sources: CertificateSources, warnings: list[str]) -> tuple[Certificate, ...]:
    """Read and check every certificate of a listener, as a start loads them."""
    pairs = list(sources.pairs)
    if sources.directory:
        pairs += _directory(sources.directory, sources.directory_path)
    return tuple(_load(cert, key, path, warnings) for cert, key, path in pairs)


def _directory(directory: str, path: str) -> list[tuple[str, str, str]]:
    """Every NAME.pem (chain and key), or NAME.crt with its NAME.key, in name order."""
    try:
        files = sorted(os.listdir(directory))
    except OSError as e:
        raise ConfigError(path, f"cannot read {directory}: {e.strerror}") from None
    pairs = []
    for name in files:
        stem, ext = os.path.splitext(name)
        full = os.path.join(directory, name)
        if ext == ".pem":
            pairs.append((full, full, f"{path} ({name})"))
        elif ext == ".crt":
            key = os.path.join(directory, stem + ".key")
            if not os.path.exists(key):
                raise ConfigError(path, f"{name} has no key beside it ({stem}.key)")
            pairs.append((full, key, f"{path} ({name})"))
    return pairs


def _load(cert: str, key: str, path: str, warnings: list[str], names_required: bool = True) -> Certificate:
    from lb._fastpath import TlsError, certificate_info

    try:
        info = certificate_info(cert, key, names_required)
    except TlsError as e:
        raise ConfigError(path, str(e)) from None
    left = info["not_after"] - time.time()
    if left < EXPIRY_WARNING:
        day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info["not_after"]))
        warnings.append(f"{path}: {cert} expires in {left / 86400:.1f} days ({day})")
    if info["not_yet_valid"]:
        warnings.append(f"{path}: {cert} is not valid yet")
    return Certificate(cert=cert, key=key, path=path, names=tuple(info["names"]), subject=info["subject"],
                       issuer=info["issuer"], not_after=info["not_after"], sha256=info["sha256"],
                       key_type=info["key"])
