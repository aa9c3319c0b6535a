#!/usr/bin/env python3
"""Writes the [[test]] vectors of oidc-jwt.toml: fresh test keys (RSA 2048, P-256), tokens signed
with them, and the public JWKS as a config overlay. The private keys are thrown away. Needs the
`cryptography` package. Run: python3 vectors.py > vectors.toml, then paste below the marker."""
import base64, json
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISS, AUD, NOW = "https://issuer.test", "kubernetes", 1_700_000_100

def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def n2b(n, size=None):
    size = size or (n.bit_length() + 7) // 8
    return n.to_bytes(size, "big")

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
other = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # never published
rn = rsa_key.public_key().public_numbers(); en = ec_key.public_key().public_numbers()
jwks = {"keys": [
    {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": b64(n2b(rn.n)), "e": b64(n2b(rn.e))},
    {"kty": "EC", "kid": "ec-1", "alg": "ES256", "use": "sig", "crv": "P-256", "x": b64(n2b(en.x, 32)), "y": b64(n2b(en.y, 32))},
]}

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

def token(claims, alg="RS256", kid="rsa-1", key=None, raw=None):
    """A signed token; `raw` replaces `"@raw@"` in the payload's JSON text (numbers JSON can
    write and Python cannot: 1e400)."""
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    payload = json.dumps(claims)
    if raw is not None:
        payload = payload.replace('"@raw@"', raw)
    signing = f"{b64(json.dumps(header).encode())}.{b64(payload.encode())}".encode()
    if alg == "RS256":
        sig = (key or rsa_key).sign(signing, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(ec_key.sign(signing, ec.ECDSA(hashes.SHA256())))
        # The low-s form of the two (r, s) and (r, n - s), which any verifier accepts.
        sig = n2b(r, 32) + n2b(min(s, P256_N - s), 32)
    else:
        sig = b"x"
    return f"{signing.decode()}.{b64(sig)}"

base = {"iss": ISS, "aud": AUD, "sub": "alice", "groups": ["dev", "ops"], "iat": NOW - 100, "exp": NOW + 3600}
cfg = 'config = { issuer = "%s", audiences = "%s", jwks = \'%s\' }' % (ISS, AUD, json.dumps(jwks))
def vec(name, tok, expect, extra="", now=NOW, config=cfg):
    print(f'[[test]]\nname = "{name}"\ntoken = "{tok}"\nnow = {now}\n{config}\nexpect = "{expect}"\n{extra}')

vec("RS256: the user and groups, prefixed", token(base), "allow",
    'username = "oidc:alice"\ngroups = ["oidc:dev", "oidc:ops"]\nexpires_at = %d' % (NOW + 3600))
vec("ES256", token(dict(base, sub="bob", groups="solo"), "ES256", "ec-1"), "allow",
    'username = "oidc:bob"\ngroups = ["oidc:solo"]')
vec("expired, beyond the clock skew", token(base), "deny", 'reason = "expired"', now=NOW + 3600 + 61)
vec("within the clock skew", token(base), "allow", 'username = "oidc:alice"', now=NOW + 3600 + 59)
vec("not yet valid", token(dict(base, nbf=NOW + 600)), "deny", 'reason = "not valid before"')
vec("wrong audience", token(dict(base, aud=["other"])), "deny", 'reason = "wrong audience"')
tampered = token(base); tampered = tampered[:-4] + ("AAAA" if not tampered.endswith("AAAA") else "BBBB")
vec("bad signature", tampered, "deny", 'reason = "bad signature"')
vec("unknown key id", token(base, kid="rsa-unknown", key=other), "deny", 'reason = "no key with kid"')
vec("signed by another key under a published key id", token(base, key=other), "deny", 'reason = "bad signature"')
vec("alg none is refused", token(base, alg="none"), "deny", 'reason = "not accepted"')
vec("HS256 is refused", token(base, alg="HS256"), "deny", 'reason = "not accepted"')
vec("another issuer's token is left to others", token(dict(base, iss="https://other.test")), "abstain")
vec("not a JWT", "opaque-token-1234567890", "abstain")
def stray_bits(tok):
    """The token with its payload's last character carrying bits a canonical encoding leaves 0."""
    h, p, sig = tok.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(p) % 4 in (2, 3)
    return f"{h}.{p[:-1]}{alphabet[alphabet.index(p[-1]) | 1]}.{sig}"
vec("a payload with stray bits (not canonical base64url) is not a JWT", stray_bits(token(base)), "abstain")
# Numeric dates (RFC 7519 NumericDate): every port reads them as the Rust one does. A number
# beyond a double is no JSON to serde_json, so the token is no JWT; exp, nbf and iat are whole
# seconds below 2^53 (a fraction cut, a negative one 0), and beyond that refused, never "never".
for what, claim, raw in [
    ("exp 1e400", "exp", "1e400"), ("exp -1e400", "exp", "-1e400"),
    ("nbf 1e309", "nbf", "1e309"), ("iat 1E400, a claim the policy does not check", "iat", "1E400"),
    ("exp of 400 digits", "exp", "9" * 400),
]:
    vec(f"{what}: beyond a double, not JSON, not a JWT", token(dict(base, **{claim: "@raw@"}), raw=raw),
        "abstain")
MAX = 2**53 - 1
vec("exp 2^53 - 1 is the last in range", token(dict(base, exp=MAX)), "allow",
    'username = "oidc:alice"\nexpires_at = %d' % MAX)
for what, claim, raw in [
    ("exp 2^53", "exp", str(MAX + 1)), ("exp 1e300", "exp", "1e300"),
    ("exp 2^64", "exp", str(2**64)), ("nbf 2^53", "nbf", str(MAX + 1)), ("iat 1e20", "iat", "1e20"),
]:
    vec(f"{what} is out of range", token(dict(base, **{claim: "@raw@"}), raw=raw), "deny",
        f'reason = "the token\'s {claim} is out of range"')
vec("a fractional exp is cut to whole seconds", token(dict(base, exp="@raw@"), raw=f"{NOW + 3600}.75"),
    "allow", 'username = "oidc:alice"\nexpires_at = %d' % (NOW + 3600))
vec("a negative exp is long past", token(dict(base, exp=-1)), "deny", 'reason = "expired at 0"')
vec("a negative nbf and iat are long past", token(dict(base, nbf=-5, iat=-1e300)), "allow",
    'username = "oidc:alice"')
vec("an exp that is a string is no exp", token(dict(base, exp=str(NOW + 3600))), "deny",
    'reason = "the token has no exp"')
vec("no keys and no outbound HTTP in a vector: unavailable", token(base), "unavailable",
    'reason = "cannot get the signing keys"',
    config='config = { issuer = "%s", audiences = "%s" }' % (ISS, AUD))
