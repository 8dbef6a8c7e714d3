"""JWT authentication ([auth.NAME] type = "jwt", docs/gateway.md): lb accepts
exactly the valid tokens PyJWT accepts, for every algorithm, and forwards the
same claims; every token of the attack suite gets a 401 with
WWW-Authenticate and never reaches the backend; the JWKS file is read again
when it changes, without a reload; exp/nbf/leeway, iss, aud and required
claims; tokens in a cookie; claims forwarded as headers with a client's
spoofed copy removed; limits keyed by a claim. The strict base64url and JSON
parsers are checked against Python references."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jwt  # PyJWT (pyproject.toml's test extras)
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from conftest import free_port, lb_config, wait_for
from http_client import assert_error_page, parse_responses, read_to_eof
from lb import config
from lb._fastpath import JWT_ALGS, jwt_b64url_decode, jwt_json_check, jwt_json_member
from lb.config import jwks as jwks_mod
from tests.reference import jwt_ref

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://issuer.example"
AUDIENCE = "api://lb"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ub64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---- keys, and tokens signed by hand (so that an attack can be any bytes) ---------------------

class Keys:
    """One key of each kind, with kids; and an attacker's of each."""

    def __init__(self):
        self.hs = {"HS256": os.urandom(32), "HS384": os.urandom(48), "HS512": os.urandom(64)}
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.p256 = ec.generate_private_key(ec.SECP256R1())
        self.p384 = ec.generate_private_key(ec.SECP384R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.evil_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.evil_p256 = ec.generate_private_key(ec.SECP256R1())
        self.extra_p256 = ec.generate_private_key(ec.SECP256R1())   # published later (reload test)

    def private(self, alg: str):
        if alg.startswith("HS"):
            return self.hs[alg]
        if alg[0] in "RP":
            return self.rsa
        return {"ES256": self.p256, "ES384": self.p384}.get(alg, self.ed)

    def kid(self, alg: str) -> str:
        if alg[0] in "RP":
            return "rsa"
        return "ed" if alg == "EdDSA" else alg.lower()

    def verify_key(self, alg: str):
        k = self.private(alg)
        return k if isinstance(k, bytes) else k.public_key()

    def jwks(self, extra: bool = False, only_extra: bool = False) -> dict:
        from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

        keys = [{"kty": "oct", "kid": alg.lower(), "alg": alg, "k": b64(secret)} for alg, secret in self.hs.items()]
        keys.append({**RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True), "kid": "rsa"})
        keys.append({**ECAlgorithm.to_jwk(self.p256.public_key(), as_dict=True), "kid": "es256"})
        keys.append({**ECAlgorithm.to_jwk(self.p384.public_key(), as_dict=True), "kid": "es384"})
        keys.append({**OKPAlgorithm.to_jwk(self.ed.public_key(), as_dict=True), "kid": "ed", "use": "sig"})
        extra_key = {**ECAlgorithm.to_jwk(self.extra_p256.public_key(), as_dict=True), "kid": "new"}
        if only_extra:
            return {"keys": [extra_key]}
        return {"keys": keys + ([extra_key] if extra else [])}


def raw_sign(alg: str, key, msg: bytes) -> bytes:
    if alg.startswith("HS"):
        import hmac

        return hmac.new(key, msg, {"256": "sha256", "384": "sha384", "512": "sha512"}[alg[2:]]).digest()
    h = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}.get(alg[2:])
    if alg.startswith("RS"):
        return key.sign(msg, padding.PKCS1v15(), h)
    if alg.startswith("PS"):
        return key.sign(msg, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(h)))
        size = 32 if alg == "ES256" else 48
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return key.sign(msg)


def token(header, payload, alg: str | None = None, key=None, sig: bytes | None = None) -> str:
    """header, payload: dicts (as JSON) or raw bytes; signed with alg by key, or given sig."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(h)}.{b64(p)}".encode()
    if sig is None:
        sig = raw_sign(alg, key, signing_input)
    return f"{signing_input.decode()}.{b64(sig)}"


def claims(**extra) -> dict:
    now = int(time.time())
    base = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


# ---- in a running lb ------------------------------------------------------------------------

def write_jwks(path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def start(run_lb, tmp_path, origin, keys: Keys, auth_extra: str = "", more: str = "", listener_extra: str = ""):
    path = tmp_path / "jwks.json"
    write_jwks(path, keys.jwks())
    port = free_port()
    sock = tmp_path / "admin.sock"
    gextra = f'admin_socket = "{sock}"\nstate_file = "{tmp_path / "state.json"}"'
    lb = run_lb(lb_config(port, [(origin.address, "o", 100)], mode="http", global_extra=gextra,
                          listener_extra='auth = "api"\n' + listener_extra)
                + f'\n[auth.api]\ntype = "jwt"\njwks = "{path}"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
                  'claims_to_headers = { sub = "X-User", role = "X-Role", n = "X-N" }\ncookie = "token"\n'
                + auth_extra + "\n" + more)
    wait_for(sock.exists, 10, "the admin socket")
    return lb, port, path, sock


def request(port: int, headers: str = "", target: str = "/"):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        return parse_responses(read_to_eof(s))[0]


def bearer(tok: str) -> str:
    return f"Authorization: Bearer {tok}\r\n"


def echoed(response) -> dict:
    return {name.lower(): value for name, value in json.loads(response.body)["headers"]}


def backend_requests(origin) -> list[str]:
    """Every request line the origin reported so far (its reports are read once: kept here)."""
    seen = origin.__dict__.setdefault("jwt_test_seen", [])
    seen.extend(line for line in origin.requests() if line.startswith("request"))
    return list(seen)


def pyjwt_accepts(tok: str, alg: str, keys: Keys):
    try:
        return jwt.decode(tok, keys.verify_key(alg), algorithms=[alg], audience=AUDIENCE, issuer=ISSUER,
                          leeway=60, options={"require": ["exp"]})
    except jwt.PyJWTError:
        return None


def test_lb_accepts_what_pyjwt_accepts_for_every_algorithm(origins, run_lb, tmp_path, keys):
    origin = origins()
    lb, port, _, _ = start(run_lb, tmp_path, origin, keys)
    now = int(time.time())
    variants = [
        claims(), claims(sub="bob", role="admin", n=42), claims(aud=["other", AUDIENCE]), claims(aud=["other"]),
        claims(exp=now - 30), claims(exp=now - 120), claims(nbf=now + 30), claims(nbf=now + 600),
        claims(iss="https://evil.example"), claims(aud="api://other"), claims(exp=None), claims(iss=None),
        claims(aud=None), claims(exp=now + 600.5), claims(iat=now + 3600),
    ]
    accepted = 0
    for alg in JWT_ALGS:
        for i, payload in enumerate(variants):
            header = {"alg": alg, "typ": "JWT", "kid": keys.kid(alg)} if i % 2 == 0 else {"alg": alg}
            tok = token(header, payload, alg, keys.private(alg))
            want = pyjwt_accepts(tok, alg, keys)
            r = request(port, bearer(tok))
            assert r.status == (200 if want is not None else 401), (alg, payload, r.status)
            if want is None:
                assert r.headers["www-authenticate"] == 'Bearer realm="api", error="invalid_token"'
                continue
            accepted += 1
            seen = echoed(r)
            assert seen["x-user"] == want["sub"], alg
            assert seen.get("x-role") == want.get("role")
            assert seen.get("x-n") == (str(want["n"]) if "n" in want else None)
    assert accepted >= 6 * len(JWT_ALGS)
    # the same token again comes from the cache
    tok = token({"alg": "ES256"}, claims(), "ES256", keys.p256)
    assert request(port, bearer(tok)).status == 200
    assert request(port, bearer(tok)).status == 200
    counts = lb.shm.auth_counts(0)
    assert counts["cached"] >= 1 and counts["verified"] == accepted + 1
    assert counts["ok"] == counts["cached"] + counts["verified"]


def attack_tokens(keys: Keys) -> list[tuple[str, str]]:
    """(what, token): each must be refused. Most carry a valid signature of
    their bytes by some key, so that only the rule they break refuses them."""
    good = claims()
    ok_h = {"alg": "HS256", "kid": "hs256"}
    hs = keys.hs["HS256"]
    out = []

    def add(what, tok):
        out.append((what, tok))

    # alg none, in every case, with and without a signature
    for alg in ("none", "None", "NONE", "nOnE"):
        add(f"alg {alg}", token({"alg": alg}, good, sig=b""))
    add("alg none with a signature", token({"alg": "none", "kid": "hs256"}, good, sig=b"x" * 32))
    add("alg hs256 in lower case", token({"alg": "hs256", "kid": "hs256"}, good, "HS256", hs))
    add("alg with a space", token({"alg": "HS256 ", "kid": "hs256"}, good, "HS256", hs))
    add("alg not a string", token(b'{"alg":["HS256"],"kid":"hs256"}', good, "HS256", hs))
    add("alg missing", token({"kid": "hs256"}, good, "HS256", hs))
    add("alg unknown", token({"alg": "ES256K", "kid": "es256"}, good, "ES256", keys.p256))
    # public keys used as HMAC secrets (algorithm confusion)
    rsa_pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    rsa_der = keys.rsa.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    ec_pem = keys.p256.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    ed_raw = keys.ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    add("RSA PEM as HS256 secret", token({"alg": "HS256", "kid": "rsa"}, good, "HS256", rsa_pem))
    add("RSA PEM as HS256 secret, no kid", token({"alg": "HS256"}, good, "HS256", rsa_pem))
    add("RSA DER as HS512 secret", token({"alg": "HS512", "kid": "rsa"}, good, "HS512", rsa_der))
    add("JWKS JSON of the RSA key as secret", token({"alg": "HS256", "kid": "rsa"}, good, "HS256",
                                                    json.dumps(keys.jwks()["keys"][3]).encode()))
    add("EC PEM as HS256 secret", token({"alg": "HS256", "kid": "es256"}, good, "HS256", ec_pem))
    add("Ed25519 key as HS256 secret", token({"alg": "HS256", "kid": "ed"}, good, "HS256", ed_raw))
    add("RS256 alg on the HMAC key", token({"alg": "RS256", "kid": "hs256"}, good, "RS256", keys.evil_rsa))
    add("ES384 under the P-256 key's kid", token({"alg": "ES384", "kid": "es256"}, good, "ES384", keys.p384))
    add("ES256 under the P-384 key's kid", token({"alg": "ES256", "kid": "es384"}, good, "ES256", keys.p256))
    add("EdDSA alg on the EC key", token({"alg": "EdDSA", "kid": "es256"}, good, "EdDSA",
                                         ed25519.Ed25519PrivateKey.generate()))
    add("PS256 alg with a PKCS#1 v1.5 signature", token({"alg": "PS256", "kid": "rsa"}, good, "RS256", keys.rsa))
    add("RS256 alg with a PSS signature", token({"alg": "RS256", "kid": "rsa"}, good, "PS256", keys.rsa))
    # keys carried in the token
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    evil_jwk = ECAlgorithm.to_jwk(keys.evil_p256.public_key(), as_dict=True)
    add("jwk header", token({"alg": "ES256", "jwk": evil_jwk}, good, "ES256", keys.evil_p256))
    add("jwk header with a known kid", token({"alg": "ES256", "kid": "es256", "jwk": evil_jwk}, good, "ES256",
                                             keys.evil_p256))
    add("jku header", token({"alg": "RS256", "jku": "http://127.0.0.1:1/jwks.json", "kid": "evil"}, good,
                            "RS256", keys.evil_rsa))
    add("x5u header", token({"alg": "RS256", "x5u": "http://127.0.0.1:1/cert.pem"}, good, "RS256", keys.evil_rsa))
    add("x5c header", token({"alg": "RS256", "x5c": [b64(rsa_der)],
                             "jwk": RSAAlgorithm.to_jwk(keys.evil_rsa.public_key(), as_dict=True)}, good, "RS256",
                            keys.evil_rsa))
    # kid tricks
    add("kid path traversal, empty secret", token({"alg": "HS256", "kid": "../../../../dev/null"}, good, "HS256",
                                                  b""))
    add("kid SQL injection", token({"alg": "HS256", "kid": "x' UNION SELECT 'key'--"}, good, "HS256", b"key"))
    add("kid of another HMAC key", token({"alg": "HS256", "kid": "hs512"}, good, "HS256", hs))
    add("kid over 64 bytes", token({"alg": "HS256", "kid": "k" * 300}, good, "HS256", hs))
    add("kid not a string", token(b'{"alg":"HS256","kid":{"$ne":null}}', good, "HS256", hs))
    add("right kid, attacker's RSA key", token({"alg": "RS256", "kid": "rsa"}, good, "RS256", keys.evil_rsa))
    # crit and b64
    add("crit with an unknown name", token({**ok_h, "crit": ["exp"], "exp": 1}, good, "HS256", hs))
    add("crit empty", token({**ok_h, "crit": []}, good, "HS256", hs))
    add("b64 false with crit", token({**ok_h, "b64": False, "crit": ["b64"]}, good, "HS256", hs))
    # non-canonical base64url
    t = token(ok_h, good, "HS256", hs)
    h, p, s = t.split(".")
    add("padding on the header", f"{h}{'=' * (-len(h) % 4) or '=='}.{p}.{s}")
    add("padding on the signature", f"{h}.{p}.{s}=")
    add("standard alphabet", f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}" if ("-" in s or "_" in s)
        else f"{h}.{p}.+{s[1:]}")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])
    add("non-zero spare bits", f"{h}.{p}.{s[:-1]}{alphabet[last | 1]}")    # 43 chars: 2 spare bits
    add("a space in the token", f"{h}.{p} .{s}")
    add("four parts", f"{t}.{s}")
    add("two parts", f"{h}.{p}")
    add("empty signature", f"{h}.{p}.")
    add("truncated signature", f"{h}.{p}.{b64(ub64(s)[:16])}")
    # ECDSA r and s
    es = token({"alg": "ES256", "kid": "es256"}, good, "ES256", keys.p256)
    eh, ep, esig = es.split(".")
    r, s_ = ub64(esig)[:32], ub64(esig)[32:]
    zero, order = b"\0" * 32, P256_N.to_bytes(32, "big")
    add("ECDSA r = 0", f"{eh}.{ep}.{b64(zero + s_)}")
    add("ECDSA s = 0", f"{eh}.{ep}.{b64(r + zero)}")
    add("ECDSA r = n", f"{eh}.{ep}.{b64(order + s_)}")
    add("ECDSA s = n + s", f"{eh}.{ep}.{b64(r + (int.from_bytes(s_, 'big') + P256_N).to_bytes(33, 'big')[-32:])}"
        if int.from_bytes(s_, "big") + P256_N < 1 << 256 else f"{eh}.{ep}.{b64(r + order)}")
    der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s_, "big"))
    add("ECDSA DER signature", f"{eh}.{ep}.{b64(der)}")
    add("ECDSA signature a byte too long", f"{eh}.{ep}.{b64(r + s_ + b'0')}")
    rh, rp, rsig = token({"alg": "RS256", "kid": "rsa"}, good, "RS256", keys.rsa).split(".")
    add("RSA signature with a leading zero", f"{rh}.{rp}.{b64(bytes(1) + ub64(rsig))}")
    # duplicate members and bad JSON, all validly signed
    add("alg twice", token(b'{"alg":"none","alg":"HS256","kid":"hs256"}', good, "HS256", hs))
    dup = json.dumps(good)[:-1].encode()
    add("sub twice", token(ok_h, dup + b', "sub": "admin"}', "HS256", hs))
    add("sub twice, one escaped", token(ok_h, dup + b', "\\u0073ub": "admin"}', "HS256", hs))
    add("exp twice", token(ok_h, dup + b', "exp": 99999999999}', "HS256", hs))
    add("invalid UTF-8", token(ok_h, dup + b', "name": "\xc0\xaf"}', "HS256", hs))
    add("lone surrogate", token(ok_h, dup + b', "name": "\\ud800"}', "HS256", hs))
    add("deep nesting", token(ok_h, dup + b', "x": ' + b"[" * 40 + b"]" * 40 + b"}", "HS256", hs))
    add("trailing bytes after the header", token(b'{"alg":"HS256","kid":"hs256"}x', good, "HS256", hs))
    add("payload not an object", token(ok_h, b'["sub", "alice"]', "HS256", hs))
    add("header not JSON", token(b"alg=HS256", good, "HS256", hs))
    add("NaN exp", token(ok_h, dup[:dup.index(b'"exp"')] + b'"exp": NaN}', "HS256", hs))
    add("exp a string", token(ok_h, claims(exp=str(int(time.time()) + 600)), "HS256", hs))
    add("exp infinite", token(ok_h, dup[:dup.index(b'"exp"')] + b'"exp": 1e400}', "HS256", hs))
    add("a JWE (five parts)", ".".join([b64(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode()),
                                        b64(os.urandom(256)), b64(os.urandom(12)), b64(os.urandom(64)),
                                        b64(os.urandom(16))]))
    # oversized
    add("token over max_token_size", token(ok_h, claims(pad="x" * 9000), "HS256", hs))
    # the claims
    add("expired", token(ok_h, claims(exp=int(time.time()) - 3600), "HS256", hs))
    add("not yet valid", token(ok_h, claims(nbf=int(time.time()) + 3600), "HS256", hs))
    add("wrong issuer", token(ok_h, claims(iss="https://evil.example"), "HS256", hs))
    add("wrong audience", token(ok_h, claims(aud=["a", "b"]), "HS256", hs))
    add("audience list with a non-string", token(ok_h, claims(aud=[AUDIENCE, 1]), "HS256", hs))
    add("no exp", token(ok_h, claims(exp=None), "HS256", hs))
    return out


def test_every_attack_token_gets_401_and_never_reaches_the_backend(origins, run_lb, tmp_path, keys):
    origin = origins()
    lb, port, _, _ = start(run_lb, tmp_path, origin, keys)
    attacks = attack_tokens(keys)
    assert len(attacks) >= 40
    for what, tok in attacks:
        r = request(port, bearer(tok))
        assert_error_page(r, 401)
        assert r.headers["www-authenticate"] == 'Bearer realm="api", error="invalid_token"', what
    r = request(port)
    assert_error_page(r, 401)
    assert r.headers["www-authenticate"] == 'Bearer realm="api"'     # no token: no error code (RFC 6750 3.1)
    # the same attacks in the cookie
    for what, tok in attacks[:10]:
        assert request(port, f"Cookie: token={tok}\r\n").status == 401, what
    assert backend_requests(origin) == []
    # and the control: a good token passes, once
    good = token({"alg": "HS256", "kid": "hs256"}, claims(), "HS256", keys.hs["HS256"])
    assert request(port, bearer(good)).status == 200
    wait_for(lambda: len(backend_requests(origin)) == 1, 10, "the origin's report")
    counts = lb.shm.auth_counts(0)
    assert counts["invalid"] == len(attacks) + 10 and counts["missing"] == 1 and counts["ok"] == 1


def test_cookie_tokens_and_claims_to_headers_replace_the_clients_copies(origins, run_lb, tmp_path, keys):
    origin = origins()
    _, port, _, _ = start(run_lb, tmp_path, origin, keys)
    tok = token({"alg": "EdDSA", "kid": "ed"}, claims(sub="carol", n=7.5), "EdDSA", keys.ed)
    r = request(port, f"Cookie: a=1; token={tok}; b=2\r\nX-User: mallory\r\nX-Role: admin\r\nx-n: 1\r\n")
    assert r.status == 200
    seen = echoed(r)
    assert seen["x-user"] == "carol" and seen["x-n"] == "7.5"
    assert "x-role" not in seen                     # no role claim: the client's copy is gone all the same
    # a claim that would split the header is not forwarded
    tok = token({"alg": "ES256"}, claims(sub="eve\r\nX-Admin: 1"), "ES256", keys.p256)
    r = request(port, bearer(tok) + "X-User: mallory\r\n")
    assert r.status == 200
    assert "x-user" not in echoed(r) and "x-admin" not in echoed(r)
    # Authorization with another scheme, and no cookie: no token
    r = request(port, "Authorization: Basic YTpi\r\n")
    assert r.status == 401 and r.headers["www-authenticate"] == 'Bearer realm="api"'


def test_jwks_changes_are_read_without_a_reload(origins, run_lb, tmp_path, keys):
    origin = origins()
    lb, port, path, sock = start(run_lb, tmp_path, origin, keys, auth_extra='required_claims = ["exp", "sub"]')
    new = token({"alg": "ES256", "kid": "new"}, claims(), "ES256", keys.extra_p256)
    old = token({"alg": "ES256", "kid": "es256"}, claims(), "ES256", keys.p256)
    assert request(port, bearer(new)).status == 401
    assert request(port, bearer(old)).status == 200            # cached from here on
    write_jwks(path, keys.jwks(extra=True))
    wait_for(lambda: request(port, bearer(new)).status == 200, 10, "the new key to be in force")
    assert request(port, bearer(old)).status == 200
    # a file that does not parse leaves the keys in use
    path.write_text('{"keys": [')
    wait_for(lambda: "the keys read before stay in use" in lb.log(), 10, "the supervisor to refuse the file")
    assert request(port, bearer(new)).status == 200
    # and so does a reload, which names the key and keeps the running config
    refused = subprocess.run([sys.executable, "-m", "lb", "--socket", str(sock), "reload"], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert refused.returncode != 0 and "auth.api.jwks" in refused.stderr, refused.stderr
    assert request(port, bearer(new)).status == 200
    write_jwks(path, keys.jwks(only_extra=True))
    # the removed key stops working, its cached token too
    wait_for(lambda: request(port, bearer(old)).status == 401, 10, "the removed key to stop working")
    assert request(port, bearer(new)).status == 200
    assert request(port, bearer(token({"alg": "ES256", "kid": "new"}, claims(sub=None), "ES256",
                                      keys.extra_p256))).status == 401          # sub is required here
    # after a reload, the new generation's workers read the file, and changes go on being seen
    reloaded = subprocess.run([sys.executable, "-m", "lb", "--socket", str(sock), "reload"], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
    assert reloaded.returncode == 0, reloaded.stderr
    assert request(port, bearer(old)).status == 401
    write_jwks(path, keys.jwks(extra=True))
    wait_for(lambda: request(port, bearer(old)).status == 200, 10, "the old key to be back")
    status = json.loads(subprocess.run([sys.executable, "-m", "lb", "--socket", str(sock), "status", "--json"],
                                       capture_output=True, text=True, cwd=ROOT, timeout=60).stdout)
    auth = {a["name"]: a for a in status["auth"]}["api"]
    assert (auth["type"], auth["file"]) == ("jwt", str(path))
    assert auth["counts"]["ok"] >= 4 and auth["counts"]["invalid"] >= 3


def test_tokens_on_http2_streams(origins, run_lb, tmp_path, keys):
    """Each stream of an HTTP/2 connection is a request of its own: its token
    checked, its claims forwarded, its 401 answered on that stream alone."""
    from h2_client import H2Client

    origin = origins()
    _, port, _, _ = start(run_lb, tmp_path, origin, keys, listener_extra="[listeners.t.http2]\nh2c = true\n")
    good = token({"alg": "PS256", "kid": "rsa"}, claims(sub="dora"), "PS256", keys.rsa)
    bad = token({"alg": "HS256", "kid": "rsa"}, claims(), "HS256", keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    c = H2Client(port)
    sids = [c.request("/a", headers=[("authorization", f"Bearer {good}"), ("x-user", "mallory")]),
            c.request("/b", headers=[("authorization", f"Bearer {bad}")]),
            c.request("/c", headers=[("cookie", f"token={good}")]),
            c.request("/d")]
    got = [c.response(sid) for sid in sids]
    assert [r.status for r in got] == [200, 401, 200, 401]
    assert got[1].header("www-authenticate") == 'Bearer realm="api", error="invalid_token"'
    assert got[3].header("www-authenticate") == 'Bearer realm="api"'
    for r in (got[0], got[2]):
        assert {k.lower(): v for k, v in json.loads(bytes(r.body))["headers"]}["x-user"] == "dora"
    wait_for(lambda: len(backend_requests(origin)) >= 2, 10, "the origin's reports")
    assert sorted(line.split()[-1] for line in backend_requests(origin)) == ["/a", "/c"]


def test_a_limit_keyed_by_a_claim(origins, run_lb, tmp_path, keys):
    origin = origins()
    more = '[limits.per_sub]\nkey = "jwt:sub"\nrate = "1/1h"\nburst = 1\n'
    _, port, _, _ = start(run_lb, tmp_path, origin, keys, more=more, listener_extra='limits = ["per_sub"]\n')
    hs = keys.hs["HS384"]
    alice = [token({"alg": "HS384"}, claims(jti=str(i)), "HS384", hs) for i in range(3)]
    assert [request(port, bearer(t)).status for t in alice] == [200, 200, 429]
    assert request(port, bearer(token({"alg": "HS384"}, claims(sub="bob"), "HS384", hs))).status == 200


# ---- config ---------------------------------------------------------------------------------

def jwt_config(path, extra: str = "") -> str:
    return (f'[auth.api]\ntype = "jwt"\njwks = "{path}"\n{extra}\n'
            '[listeners.w]\nbind = ["127.0.0.1:1"]\nmode = "http"\npool = "p"\nauth = "api"\n'
            '[pools.p]\n[[pools.p.backends]]\naddress = "127.0.0.1:9"\n')


@pytest.mark.parametrize("jwk, message", [
    ({"kty": "oct", "k": b64(b"short")}, "an HMAC secret of 5 bytes; 32 at least"),
    ({"kty": "oct", "alg": "HS512", "k": b64(b"x" * 32)}, "32 bytes; 64 at least"),
    ({"kty": "oct", "alg": "RS256", "k": b64(b"x" * 32)}, '"alg" RS256 does not go with a oct key'),
    ({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}, "curve 'P-521'"),
    ({"kty": "EC", "crv": "P-256", "x": b64(b"\1" * 32), "y": b64(b"\2" * 32)}, "libcrypto refuses the key"),
    ({"kty": "RSA", "n": b64(b"\xff" * 128), "e": "AQAB"}, "under 2048 bits"),
    ({"kty": "oct", "k": b64(b"x" * 32) + "="}, '"k" must be base64url without padding'),
    ({"kty": "oct", "k": b64(b"x" * 32), "use": "enc"}, '"use" is not "sig"'),
    ({"kty": "oct", "k": b64(b"x" * 32), "alg": "none"}, "\"alg\" 'none' is not one lb verifies"),
    ({"kty": "OKP", "crv": "X25519", "x": b64(b"x" * 32)}, "curve 'X25519'"),
])
def test_bad_jwks_keys_are_named(tmp_path, jwk, message):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kid": "k1", **jwk}]}))
    with pytest.raises(config.ConfigError) as e:
        config.loads(jwt_config(path))
    assert "auth.api.jwks" in str(e.value) and "keys[0] (kid 'k1')" in str(e.value) and message in str(e.value)


def test_jwt_config_keys(tmp_path, keys):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    cfg = config.loads(jwt_config(path, 'audience = ["a", "b"]\nleeway = "5s"\ncookie = "t"\n'
                                        'claims_to_headers = { sub = "X-User" }\nrequired_claims = []'))
    a = cfg.auth["api"]
    assert (a.audience, a.leeway, a.cookie, a.claims_to_headers, a.required_claims) == (
        ("a", "b"), 5.0, "t", (("sub", "X-User"),), ())
    assert [k.algs for k in a.jwt_keys][:4] == [("HS256",), ("HS384",), ("HS512",), jwks_mod.RSA_ALGS]
    assert config.loads(jwt_config(path)).auth["api"].required_claims == ("exp",)
    for extra, message in [('claims_to_headers = { sub = "Host" }', "not a header a claim may replace"),
                           ('claims_to_headers = { sub = "X-A", aud = "x-a" }', "two claims into the same header"),
                           ('keys_file = "/x"', 'not a key of type = "jwt"'),
                           ('max_token_size = 10', "out of range"),
                           ('cookie = "a b"', "invalid cookie name")]:
        with pytest.raises(config.ConfigError, match=message):
            config.loads(jwt_config(path, extra))
    path.write_text('{"keys": [], "keys": []}')
    with pytest.raises(config.ConfigError, match="member 'keys' twice"):
        config.loads(jwt_config(path))


def test_the_check_alone_verifies_once_then_takes_the_cache(tmp_path, keys):
    """jwt_check_loop (bench/jwt_cpu.py's in-process figures) runs the workers'
    check: every algorithm verifies, the second check of a token comes from the
    cache unless it is emptied, a changed signature never passes."""
    from lb._fastpath import jwt_check_loop

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    auth = config.loads(jwt_config(path, f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"')).auth["api"]
    blob, n = jwks_mod.pack(auth.jwt_keys), len(auth.jwt_keys)
    for alg in JWT_ALGS:
        tok = token({"alg": alg}, claims(), alg, keys.private(alg))
        assert jwt_check_loop(auth, blob, n, tok.encode(), 2)[:2] == (True, True), alg
        assert jwt_check_loop(auth, blob, n, tok.encode(), 2, False)[:2] == (True, False), alg
        h, p, sig = tok.split(".")
        forged = f"{h}.{p}.{b64(bytes([ub64(sig)[0] ^ 1]) + ub64(sig)[1:])}"
        assert jwt_check_loop(auth, blob, n, forged.encode(), 2)[:2] == (False, False), alg


# ---- the parsers ----------------------------------------------------------------------------

def test_base64url_is_strict():
    import random

    rnd = random.Random(7)
    cases = [b"", b"YQ", b"YR", b"YWI", b"YWJ", b"YWJj", b"Y", b"YQ==", b"YQ=", b"a+b/", b"a b", b"_-_-", b"\xff"]
    cases += [b64(os.urandom(n)).encode() for n in range(40)]
    cases += [bytes(rnd.choice(b"AQgw_-+=/ Zz09") for _ in range(rnd.randrange(12))) for _ in range(3000)]
    for c in cases:
        assert jwt_b64url_decode(c) == jwt_ref.b64url_decode(c), c


JSON_CASES = [
    b'{}', b' {"a":1} ', b'{"a":1}x', b'[]', b'"a"', b'{"a":1,"a":2}', b'{"a":1,"\\u0061":2}', b'{"a":{"b":1,"b":2}}',
    b'{"a":[{"b":1},{"b":1}]}', b'{"a":"\\ud83d\\ude00"}', b'{"a":"\\ud800"}', b'{"a":"\\udc00\\ud800"}',
    b'{"a":"\xf0\x9f\x98\x80"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xc0\xaf"}', b'{"a":"\xe0\x80\xaf"}',
    b'{"a":"\xf4\x90\x80\x80"}', b'{"a":"\x01"}', b'{"a":"\\x"}', b'{"a":01}', b'{"a":-0}', b'{"a":1.}',
    b'{"a":1e}', b'{"a":1E+2}', b'{"a":-}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":tru}', b'{"a":null}',
    b'{"a":true,"b":false}', b'{"a":1,}', b'{,}', b'{"a" 1}', b'{"a":[1,]}', b'{"a":[1 2]}', b'{"a":"\\u00e9"}',
    b'{"a":"\\u00E9","\\u00e9":1}', b'{"\xc3\xa9":1,"\\u00e9":2}', b'{"a":' + b"[" * 15 + b"]" * 15 + b"}",
    b'{"a":' + b"[" * 16 + b"]" * 16 + b"}", b'{' + b",".join(b'"k%d":1' % i for i in range(64)) + b'}',
    b'{' + b",".join(b'"k%d":1' % i for i in range(65)) + b'}', b'{"' + b"n" * 256 + b'":1}',
    b'{"' + b"n" * 257 + b'":1}', b'\xef\xbb\xbf{}', b'{"a":"\\/"}', b'{\t"a"\r\n:\n1}', b'{"a":1}\x00',
]


def test_json_checker_agrees_with_the_reference():
    import random

    rnd = random.Random(11)
    cases = list(JSON_CASES)
    for _ in range(3000):
        base = bytearray(rnd.choice(JSON_CASES))
        for _ in range(rnd.randrange(1, 4)):
            i = rnd.randrange(len(base) + 1)
            base[i:i] = bytes([rnd.choice(b'{}[]",:\\u0aZ1-.e\xc3\xa9\x80 ')])
        cases.append(bytes(base))
    for c in cases:
        assert jwt_json_check(c) == (jwt_ref.json_object(c) is not None), c


def test_member_lookup_reads_the_one_member():
    assert jwt_json_member(b'{"alg":"HS256","kid":"x"}', b"kid") == b'"x"'
    assert jwt_json_member(b'{"\\u0061lg":"none"}', b"alg") == b'"none"'
    assert jwt_json_member(b'{"a":{"alg":"x"}}', b"alg") is None
    assert jwt_json_member(b'{ "exp" : 12.5e1 , "b":[1,{"c":2}] }', b"b") == b'[1,{"c":2}]'
    with pytest.raises(ValueError):
        jwt_json_member(b'{"alg":"HS256","alg":"none"}', b"alg")


def test_the_data_plane_has_the_configs_algorithms():
    assert JWT_ALGS == jwks_mod.ALGS
