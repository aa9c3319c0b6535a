"""The host's cryptography (`tollgate:policy/crypto`, contract 0.1.2), in Python's idiom.

The host does it at native speed (ring): a JWS signature check costs it tens of microseconds,
where CPython inside the sandbox would take far longer (and would need a crypto library that
componentize-py cannot bundle). Works in both worlds, `policy` and `policy-http`.

    from tollgate_crypto import verify_jws, JwsError, NoKey, sha256, constant_time_eq

    try:
        verified = verify_jws(token, jwks_text, ["RS256", "ES256"])
    except NoKey:
        ...  # the issuer may have rotated its keys: fetch the JWKS again (rarely)
    except JwsError as e:
        return Decision_Deny(str(e))  # e.kind: "malformed", "algorithm", "no-key", ...
    claims = verified.claims()  # the signature is verified; the claims are yours to check

Pass the JWKS text exactly as fetched (or configured), the same string every time: the host keeps
the keys it parsed per document text, so a repeated document costs a hash, not a parse.
"""

import json
from dataclasses import dataclass
from typing import Iterable, Optional

from componentize_py_types import Err
from wit_world.imports import crypto as _host

# The host hashes at most this much in one call, and traps beyond it (the plugin fails closed);
# these wrappers raise ValueError first, so a caller may handle it.
MAX_HASH_INPUT = 1 << 20


@dataclass(frozen=True)
class Verified:
    """A JWS whose signature the host verified with a key of the JWKS."""

    alg: str
    """The algorithm it was signed with (one of the allowed ones)."""
    key_id: Optional[str]
    """The `kid` of the key that verified it, if that key has one."""
    header: str
    """The protected header: JSON text."""
    payload: str
    """The payload (a JWT's claims): JSON text. Check the claims yourself."""

    def claims(self) -> dict:
        """The payload as a JSON object; ValueError if it is not one."""
        value = json.loads(self.payload)
        if not isinstance(value, dict):
            raise ValueError("the payload is not a JSON object")
        return value

    def __repr__(self) -> str:
        # The payload is the token's content: keep it out of logs and tracebacks.
        return f"Verified(alg={self.alg!r}, key_id={self.key_id!r}, ...)"


class JwsError(Exception):
    """Why the host did not verify a JWS. `kind` is the WIT case name; `str(e)` says what, for
    the audit log (never the token), worded as the Rust SDK's `Display`."""

    kind = ""
    _prefix = ""

    def __init__(self, detail: str = ""):
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"{self._prefix}: {self.detail}"


class Malformed(JwsError):
    """Not a JWS in compact form, `crit` in the header, a payload that is not UTF-8, too long."""

    kind = "malformed"
    _prefix = "malformed token"


class AlgorithmRefused(JwsError):
    """The header's `alg` is not allowed (or never is: `none`, HMAC)."""

    kind = "algorithm"
    _prefix = "algorithm refused"


class NoKey(JwsError):
    """No usable key of the JWKS fits the token's `kid` and `alg`: fetching it again may help."""

    kind = "no-key"
    _prefix = "no key"


class BadSignature(JwsError):
    """A key fits, and the signature is not its."""

    kind = "bad-signature"

    def __str__(self) -> str:
        return "bad signature"


class UnusableJwks(JwsError):
    """The JWKS is unusable: not JSON, no `keys` array, too large or too many keys."""

    kind = "jwks"
    _prefix = "unusable JWKS"


def _error(value) -> JwsError:
    if isinstance(value, _host.JwsError_Malformed):
        return Malformed(value.value)
    if isinstance(value, _host.JwsError_Algorithm):
        return AlgorithmRefused(value.value)
    if isinstance(value, _host.JwsError_NoKey):
        return NoKey(value.value)
    if isinstance(value, _host.JwsError_BadSignature):
        return BadSignature()
    if isinstance(value, _host.JwsError_Jwks):
        return UnusableJwks(value.value)
    raise TypeError(f"unknown jws-error {type(value).__name__}")


def verify_jws(compact: str, jwks: str, allowed_algs: Iterable[str]) -> Verified:
    """Verifies `compact` (a signed JWT) against the keys of `jwks` (a JWKS document's text) with
    one of `allowed_algs` (RS256/384/512, PS256/384/512, ES256/384, EdDSA; never `none` or HMAC).
    Raises a JwsError subclass when it does not verify."""
    try:
        v = _host.verify_jws(compact, jwks, list(allowed_algs))
    except Err as e:
        raise _error(e.value) from None
    return Verified(alg=v.alg, key_id=v.key_id, header=v.header, payload=v.payload)


def _bytes(data, what: str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8")
    data = bytes(data)
    if len(data) > MAX_HASH_INPUT:
        raise ValueError(f"{what}: {len(data)} bytes, more than the host hashes ({MAX_HASH_INPUT})")
    return data


def sha256(data) -> bytes:
    """SHA-256 of `data` (bytes, or a str as UTF-8): 32 bytes. At most 1 MiB (ValueError)."""
    return _host.sha256(_bytes(data, "sha256"))


def hmac_sha256(key, data) -> bytes:
    """HMAC-SHA-256 of `data` under `key` (bytes, or str as UTF-8): 32 bytes. At most 1 MiB of data."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    return _host.hmac_sha256(bytes(key), _bytes(data, "hmac_sha256"))


def constant_time_eq(a: bytes, b: bytes) -> bool:
    """Whether `a` and `b` are equal, in time that depends only on their lengths: compare digests
    of secrets with this, never with `==`."""
    return _host.constant_time_eq(bytes(a), bytes(b))
