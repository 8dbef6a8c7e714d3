"""Certificates for the TLS tests, made with `cryptography`: a test CA and
leaves signed by it (ECDSA P-256 or RSA 2048), written as PEM files.

Leaves live 90 days by default: sslyze's Mozilla check refuses longer ones,
and `lb check` warns only within 14 days of the end.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(name: str):
    """An IP address SAN for an address, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Leaf:
    cert: Path          # the leaf, then the CA that signed it
    key: Path
    names: tuple[str, ...]
    fingerprint: str    # SHA-256 of the leaf, hex


class CA:
    """A self-signed CA; `leaf` signs certificates with it."""

    def __init__(self, directory: Path, name: str = "lb test CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = _key("ecdsa")
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = self.dir / f"{name.replace(' ', '-')}.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, stem: str, names: tuple[str, ...], kind: str = "ecdsa", days: float = 90,  # noqa: PLR0913
             start_days: float = -1, client: bool = False, combined: bool = False,
             directory: Path | None = None) -> Leaf:
        """A leaf for `names` (SANs: IP addresses, else DNS names; the first is also the CN), its chain
        file (leaf + CA) and key, as STEM.crt and STEM.key (or, combined, one
        STEM.pem with the chain and the key), in directory (default: the CA's)."""
        out = Path(directory) if directory is not None else self.dir
        out.mkdir(parents=True, exist_ok=True)
        key = _key(kind)
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0])).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=start_days))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            # what RFC 5280 path validation (cryptography's, sslyze's) requires
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if not client:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
        if combined:
            path = out / f"{stem}.pem"
            path.write_bytes(chain + _pem_key(key))
            key_path = path
        else:
            path = out / f"{stem}.crt"
            key_path = out / f"{stem}.key"
            path.write_bytes(chain)
            key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return Leaf(cert=path, key=key_path, names=tuple(names),
                    fingerprint=cert.fingerprint(hashes.SHA256()).hex())
