"""A JWT auth's keys: its JWKS file (RFC 7517), read by the supervisor at
start, at reload and whenever the file changes (lb/control/jwks.py), and packed
for shared memory, where each worker builds its keys from it
(lb/fastpath/auth_jwt.pxi).

Each key gets the algorithms it may verify, fixed here from its type, its
curve and its `alg` when the JWKS gives one: an "oct" key (an HMAC secret)
verifies HS256/384/512 and nothing else, an RSA key RS*/PS*, a P-256 key
ES256, a P-384 key ES384, an Ed25519 key EdDSA. That pairing is what keeps a
token from choosing how its key is used (an RSA public key as an HMAC secret).
Public keys are written as DER SubjectPublicKeyInfo, which libcrypto reads."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import struct

from lb.config.values import ConfigError

# the algorithms, in the data plane's order (JA_* in auth_jwt.pxi; a test checks)
ALGS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
BIT = {name: 1 << i for i, name in enumerate(ALGS)}
HMAC_ALGS = ("HS256", "HS384", "HS512")
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
CURVES = {"P-256": ("ES256", 32, "2a8648ce3d030107"), "P-384": ("ES384", 48, "2b81040022")}
MAX_KEYS = 64  # JWT_MAX_KEYS
MAX_KID = 64  # JWT_KID_MAX
MAX_BLOB = 262144  # JWT_BLOB_MAX
MIN_SECRET = 32  # bytes: RFC 7518 3.2, a key at least as long as the hash (HS256)
MIN_RSA_BITS = 2048
MAX_FILE = 1 << 20
KIND_SECRET, KIND_PUBKEY = 1, 2
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class JwtKey:
    kid: str
    algs: tuple[str, ...]
    kind: int  # KIND_SECRET | KIND_PUBKEY
    data: bytes = dataclasses.field(repr=False)  # the secret, or the DER SubjectPublicKeyInfo


def file_stamp(path: str):
    """What tells that a file changed (lb/control/jwks.py watches it); None
    when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def read_jwks(path: str, key_path: str) -> tuple[JwtKey, ...]:
    """The keys of a JWKS file; an error names the file and the key."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except OSError as e:
        raise ConfigError(key_path, f"cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_FILE:
        raise ConfigError(key_path, f"{path}: larger than {MAX_FILE} bytes")
    return parse_jwks(raw, f"{key_path}: {path}")


def parse_jwks(raw: bytes, where: str) -> tuple[JwtKey, ...]:
    def fail(message: str):
        path, _, rest = where.partition(": ")
        return ConfigError(path, f"{rest}: {message}" if rest else message)

    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(f"not a JWKS (JSON): {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise fail('not a JWKS: an object with a "keys" array')
    if len(doc["keys"]) > MAX_KEYS:
        raise fail(f"more than {MAX_KEYS} keys")
    keys = []
    for i, jwk in enumerate(doc["keys"]):
        try:
            keys.append(_key(jwk))
        except ValueError as e:
            name = f" (kid {jwk.get('kid')!r})" if isinstance(jwk, dict) and "kid" in jwk else ""
            raise fail(f"keys[{i}]{name}: {e}") from None
    if len(pack(keys)) > MAX_BLOB:
        raise fail(f"the keys take more than {MAX_BLOB} bytes")
    return tuple(keys)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"member {k!r} twice")
        out[k] = v
    return out


def _b64(jwk: dict, member: str) -> bytes:
    value = jwk.get(member)
    if not isinstance(value, str) or not value or not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise ValueError(f'"{member}" must be base64url without padding')
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error:
        raise ValueError(f'"{member}" must be base64url without padding') from None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != value:
        raise ValueError(f'"{member}": not the canonical base64url of its bytes')
    return data


def _key(jwk) -> JwtKey:
    if not isinstance(jwk, dict):
        raise ValueError("not an object")
    kty = jwk.get("kty")
    kid = jwk.get("kid", "")
    if not isinstance(kid, str) or len(kid.encode()) > MAX_KID:
        raise ValueError(f'"kid" must be a string of at most {MAX_KID} bytes')
    if jwk.get("use", "sig") != "sig":
        raise ValueError('"use" is not "sig"')
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError('"key_ops" does not include "verify"')
    alg = jwk.get("alg")
    if alg is not None and alg not in ALGS:
        raise ValueError(f'"alg" {alg!r} is not one lb verifies ({", ".join(ALGS)})')
    if kty == "oct":
        allowed, data, kind = HMAC_ALGS, _b64(jwk, "k"), KIND_SECRET
        need = int(alg[2:]) // 8 if alg else MIN_SECRET
        if len(data) < need:
            raise ValueError(f"an HMAC secret of {len(data)} bytes; {need} at least (RFC 7518 3.2)")
    elif kty == "RSA":
        n, e = _b64(jwk, "n"), _b64(jwk, "e")
        if int.from_bytes(n, "big").bit_length() < MIN_RSA_BITS:
            raise ValueError(f"an RSA key under {MIN_RSA_BITS} bits")
        allowed, data, kind = RSA_ALGS, _rsa_spki(n, e), KIND_PUBKEY
    elif kty == "EC":
        crv = jwk.get("crv")
        if crv not in CURVES:
            raise ValueError(f'curve {crv!r} (lb verifies {", ".join(CURVES)})')
        name, size, oid = CURVES[crv]
        x, y = _b64(jwk, "x"), _b64(jwk, "y")
        if len(x) != size or len(y) != size:
            raise ValueError(f'"x" and "y" of {crv} are {size} bytes each')
        allowed = (name,)
        data = _seq(_seq(_oid("2a8648ce3d0201") + _oid(oid)) + _bitstring(b"\x04" + x + y))
        kind = KIND_PUBKEY
    elif kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise ValueError(f'curve {jwk.get("crv")!r} (lb verifies Ed25519)')
        x = _b64(jwk, "x")
        if len(x) != 32:
            raise ValueError('"x" of Ed25519 is 32 bytes')
        allowed, data, kind = ("EdDSA",), _seq(_seq(_oid("2b6570")) + _bitstring(x)), KIND_PUBKEY
    else:
        raise ValueError(f'"kty" {kty!r} (one of oct, RSA, EC, OKP)')
    if alg is not None and alg not in allowed:
        raise ValueError(f'"alg" {alg} does not go with a {kty} key ({", ".join(allowed)})')
    algs = (alg,) if alg else allowed
    if kind == KIND_PUBKEY:
        from lb._fastpath import jwt_key_check

        if not jwt_key_check(_mask(algs), data):
            raise ValueError("libcrypto refuses the key (a point not on the curve?)")
    return JwtKey(kid=kid, algs=algs, kind=kind, data=data)


def _mask(algs) -> int:
    m = 0
    for a in algs:
        m |= BIT[a]
    return m


def pack(keys) -> bytes:
    """The keys as the workers read them (jwt_keys_build): per key, algs,
    kind, kid length, data length (little-endian u32), the kid, the data."""
    out = bytearray()
    for k in keys:
        kid = k.kid.encode()
        out += struct.pack("<IIII", _mask(k.algs), k.kind, len(kid), len(k.data)) + kid + k.data
    return bytes(out)


# ---- DER, the little of it a public key needs ----------------------------------------------

def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


def _seq(body: bytes) -> bytes:
    return _tlv(0x30, body)


def _oid(hex_body: str) -> bytes:
    return _tlv(0x06, bytes.fromhex(hex_body))


def _bitstring(data: bytes) -> bytes:
    return _tlv(0x03, b"\x00" + data)


def _int(data: bytes) -> bytes:
    data = data.lstrip(b"\x00") or b"\x00"
    if data[0] & 0x80:
        data = b"\x00" + data
    return _tlv(0x02, data)


def _rsa_spki(n: bytes, e: bytes) -> bytes:
    return _seq(_seq(_oid("2a864886f70d010101") + b"\x05\x00") + _bitstring(_seq(_int(n) + _int(e))))
