"""The certificate every TLS target serves in a run, and the TLS settings
they all get.

One ECDSA P-256 leaf, signed by an intermediate that a root signs, made once
per run with `cryptography` in the run's work dir: the three proxies send the
same chain (leaf + intermediate, as a public CA's customer would) and sign
with the same key, so their handshakes cost the same bytes and the same
signature. The bench does not import tests/: this is its own small copy of
what tests/tls_certs.py does.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The name the leaf is for (SNI and Host of every https client of the bench);
# the leaf also covers 127.0.0.1, which wrk sends as its server name.
SERVER_NAME = "bench.lb.test"

# Mozilla's intermediate profile, lb's defaults (docs/configuration.md, 3c),
# written out for HAProxy and nginx so that all three offer exactly the same:
# TLS 1.2 and 1.3, these suites, these groups, the client's preference followed.
PROTOCOLS = ("TLSv1.2", "TLSv1.3")
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
           "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")
CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
GROUPS = "X25519:P-256:P-384"


@dataclasses.dataclass(frozen=True)
class Certificate:
    chain: Path      # leaf, then the intermediate (PEM)
    key: Path        # the leaf's key (PKCS#8 PEM)
    combined: Path   # chain then key, in one file (HAProxy's `crt`)
    root: Path       # the root that signed the intermediate: what a client trusts


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign(subject: str, key, issuer: str, issuer_key, ca: bool, sans=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90 if not ca else 3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = (builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificate(directory: Path) -> Certificate:
    """A root, an intermediate and the leaf for SERVER_NAME and 127.0.0.1, all
    ECDSA P-256, written into directory. The key files are the bench user's
    only: every proxy reads them before it drops privileges (lb's supervisor,
    nginx's master, HAProxy, which keeps them)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    root = _sign("lb bench root", keys[0], "lb bench root", keys[0], ca=True)
    inter = _sign("lb bench intermediate", keys[1], "lb bench root", keys[0], ca=True)
    leaf = _sign(SERVER_NAME, keys[2], "lb bench intermediate", keys[1], ca=False,
                 sans=(x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))))
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + inter.public_bytes(pem)
    key = keys[2].private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cert = Certificate(chain=directory / "leaf.crt", key=directory / "leaf.key",
                       combined=directory / "leaf.pem", root=directory / "root.crt")
    cert.chain.write_bytes(chain)
    cert.key.write_bytes(key)
    cert.combined.write_bytes(chain + key)
    cert.root.write_bytes(root.public_bytes(pem))
    for path in (cert.key, cert.combined):
        path.chmod(0o600)
    return cert


def client_context(cert: Certificate) -> ssl.SSLContext:
    """The harness's own TLS client (readiness probe, idle connections): it
    trusts only the run's root, so a proxy that does not send the whole
    chain, or sends another certificate, fails the probe. It never resumes
    a session (no `session=` is passed): each connection is a full handshake."""
    context = ssl.create_default_context(cafile=str(cert.root))
    context.set_alpn_protocols(["http/1.1"])
    return context
