"""oidc-jwt in Python: JWTs from one OpenID issuer, like kube-apiserver's `--oidc-*` flags.

Same config, decisions and reasons as plugins/oidc-jwt (Rust); built against the `policy-http`
world (it fetches the issuer's keys):

- `issuer` (required): the `iss` the tokens carry; tokens of other issuers get `abstain`.
- `audiences` (required): comma-separated; the token's `aud` must name one.
- `username_claim` (default `sub`), `username_prefix` (default `<issuer>#`, none for `email`;
  `-` for none), `groups_claim` (default none), `groups_prefix` (default none), `uid_claim`.
- `clock_skew_seconds` (default 60), `algorithms` (default `RS256,ES256`).
- Keys: `jwks` (a JWKS document inline: no fetching), or `jwks_uri`, or discovery at
  `<issuer>/.well-known/openid-configuration` (the default). A fetched JWKS is kept in the
  plugin's cache (`tollgate:policy/kv`) for `jwks_cache_seconds` (default 300); a token whose key
  the cached set lacks fetches it once more, at most every `jwks_refetch_seconds` (default 10).

The signature is the host's to verify (`tollgate_crypto.verify_jws`: ring, at native speed); the
claims are checked here. Answers: `abstain` for tokens that are not JWTs or not this issuer's;
`deny` for a bad signature, unknown key, wrong audience, expiry...; `unavailable` when the keys
cannot be had (the issuer is down and nothing is cached). The token is never logged.
"""

import base64
import json
import math
import re
import time
from typing import Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, kv
from wit_world.imports.host import Level

# In the policy-http world the contract's `types` interface is named `tollgate_policy_types`
# (wasi:http has a `types` interface too).
from wit_world.imports.tollgate_policy_types import (
    Decision,
    Decision_Abstain,
    Decision_Allow,
    Decision_Deny,
    Decision_Unavailable,
    Grant,
    Review,
    UserInfo,
)

from tollgate_crypto import AlgorithmRefused, JwsError, NoKey, UnusableJwks, verify_jws
from tollgate_http import HttpError, http_get
from tollgate_text import split_list, trim

# The algorithms the host verifies (contract 0.1.2).
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]

# kv keys (the same as the Rust policy's).
JWKS = "jwks"
JWKS_URI = "jwks-uri"
REFETCHED = "jwks-refetched"

U64_MAX = (1 << 64) - 1
# The last NumericDate the ports read the same (jwt-verify's MAX_NUMERIC_DATE): 2^53 - 1.
MAX_NUMERIC_DATE = (1 << 53) - 1


class Refused(Exception):
    """The review's answer, raised from deep inside: `decision` ends the review."""

    def __init__(self, decision: Decision):
        super().__init__()
        self.decision = decision


def deny(reason: str) -> Refused:
    return Refused(Decision_Deny(reason))


def unavailable(reason: str) -> Refused:
    return Refused(Decision_Unavailable(reason))


def info(message: str) -> None:
    host.log(Level.INFO, message)


def warn(message: str) -> None:
    host.log(Level.WARN, message)


# ---- settings ------------------------------------------------------------------------------


class Misconfigured(Exception):
    pass


def setting(key: str) -> Optional[str]:
    value = trim(host.config(key) or "")
    return value or None


def number(key: str, default: int, bits: int) -> int:
    value = setting(key)
    if value is None:
        return default
    # Rust's unsigned `parse`: ASCII digits, an optional `+`, no overflow.
    if not re.fullmatch(r"\+?[0-9]+", value) or int(value) >= 1 << bits:
        raise Misconfigured(f"{key} must be a number")
    return int(value)


class Settings:
    def __init__(self):
        issuer = setting("issuer")
        if issuer is None:
            raise Misconfigured("no issuer configured")
        audiences = setting("audiences")
        if audiences is None:
            raise Misconfigured("no audiences configured")
        self.issuer = issuer
        self.audiences = split_list(audiences)
        self.username_claim = setting("username_claim") or "sub"
        prefix = setting("username_prefix")
        if prefix == "-":
            self.username_prefix = ""
        elif prefix is not None:
            self.username_prefix = prefix
        elif self.username_claim == "email":
            self.username_prefix = ""
        else:
            self.username_prefix = f"{issuer}#"
        algorithms = setting("algorithms")
        self.algorithms = ["RS256", "ES256"] if algorithms is None else split_list(algorithms)
        for a in self.algorithms:
            if a not in ALGORITHMS:
                raise Misconfigured(f"algorithm {a} is not supported ({', '.join(ALGORITHMS)})")
        self.groups_claim = setting("groups_claim")
        self.groups_prefix = setting("groups_prefix") or ""
        self.uid_claim = setting("uid_claim")
        self.skew = number("clock_skew_seconds", 60, 64)
        self.jwks = setting("jwks")
        self.jwks_uri = setting("jwks_uri")
        self.jwks_cache = max(number("jwks_cache_seconds", 300, 32), 1)
        self.refetch_every = max(number("jwks_refetch_seconds", 10, 32), 1)


# ---- the unverified peek (routing only) ----------------------------------------------------

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url(part: str) -> Optional[bytes]:
    """Strict unpadded base64url (as the Rust policy's), or None."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    # Canonical only: no stray bits in the last character.
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != part:
        return None
    return data


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one beyond a double (1e400) is no JSON to
    serde_json, the Rust policy's reader: here neither (Python would read it as infinity)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError("a number beyond a double")
    return value


def _bounded_int(text: str) -> int:
    """A JSON integer; as for `_finite_float`, one beyond a double is no JSON."""
    value = int(text)
    if len(text) > 300:
        try:
            float(value)
        except OverflowError:
            raise ValueError("a number beyond a double") from None
    return value


# One decoder for the instance's life: `json.loads` with an argument builds a new one per call.
_JSON = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float, parse_int=_bounded_int)


def json_object(text: str) -> Optional[dict]:
    try:
        value = _JSON.decode(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def json_object_of(data: bytes) -> Optional[dict]:
    try:
        return json_object(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None


def unverified_payload(token: str) -> Optional[Tuple[bytes, dict]]:
    """The payload of a JWS compact token, NOT verified (to route it): its bytes and claims, or
    None when `token` is not one (three base64url parts, JSON header naming `alg`, JSON
    payload): not ours to judge."""
    if len(token) > 64 * 1024:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header_bytes, claims_bytes = b64url(parts[0]), b64url(parts[1])
    if header_bytes is None or claims_bytes is None:
        return None
    header, claims = json_object_of(header_bytes), json_object_of(claims_bytes)
    if header is None or claims is None or not isinstance(header.get("alg"), str):
        return None
    return claims_bytes, claims


# ---- the claims (after the host verified the signature) ------------------------------------


def as_u64(value) -> Optional[int]:
    """serde_json's `as_u64().or(as_f64() as u64)`: a JSON number, saturated to u64."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if value != value:
            return 0
        value = int(value) if abs(value) < 2.0**64 else (U64_MAX if value > 0 else 0)
    return min(max(value, 0), U64_MAX)


def numeric_date(claims: dict, name: str) -> Optional[int]:
    """A NumericDate claim as whole seconds (jwt-verify's `numeric_date`): None when absent or
    not a number, a fraction cut, a negative number 0, and one beyond 2^53 - 1 refused."""
    seconds = as_u64(claims.get(name))
    if seconds is not None and seconds > MAX_NUMERIC_DATE:
        raise deny(f"the token's {name} is out of range")
    return seconds


def check_claims(claims: dict, s: Settings, now: int) -> int:
    """Checks `iss`, `aud`, `exp` (required), `nbf` and that `iat` is in range; returns `exp`."""
    if claims.get("iss") != s.issuer or not isinstance(claims.get("iss"), str):
        raise deny("wrong issuer")
    aud = claims.get("aud")
    if isinstance(aud, str):
        aud_ok = aud in s.audiences
    elif isinstance(aud, list):
        aud_ok = any(isinstance(a, str) and a in s.audiences for a in aud)
    else:
        aud_ok = False
    if not aud_ok:
        raise deny("wrong audience")
    exp = numeric_date(claims, "exp")
    if exp is None:
        raise deny("the token has no exp")
    nbf = numeric_date(claims, "nbf")
    numeric_date(claims, "iat")
    if now >= min(exp + s.skew, U64_MAX):
        raise deny(f"expired at {exp}")
    if nbf is not None and nbf > min(now + s.skew, U64_MAX):
        raise deny(f"not valid before {nbf}")
    return exp


def string_list(claims: dict, name: str) -> list:
    """A claim as a list of strings (a JSON array of strings, or one string)."""
    value = claims.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise deny(f"claim {name} holds a non-string")
        return list(value)
    raise deny(f"claim {name} is neither a string nor a list of strings")


# ---- keys ----------------------------------------------------------------------------------


def kv_text(key: str) -> Optional[str]:
    value = kv.get(key)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def kv_set(key: str, value: bytes, ttl: int) -> Optional[str]:
    """Stores; the error text if the cache refused."""
    try:
        kv.set(key, value, ttl)
    except Err as e:
        return str(e.value)
    return None


def get_json(url: str, what: str):
    status, body = http_get(url, [("accept", "application/json")])
    if status != 200:
        raise HttpError(f"{what} answered {status}")
    return body


def discover_jwks_uri(s: Settings) -> str:
    if s.jwks_uri is not None:
        return s.jwks_uri
    cached = kv_text(JWKS_URI)
    if cached is not None:
        return cached
    url = s.issuer.rstrip("/") + "/.well-known/openid-configuration"
    body = get_json(url, f"discovery at {url}")
    try:
        doc = json.loads(body.decode("utf-8"))
    except ValueError as e:
        raise HttpError(f"discovery document: {e}") from None
    doc = doc if isinstance(doc, dict) else {}
    # OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
    if doc.get("issuer") != s.issuer:
        raise HttpError("the discovery document names another issuer")
    uri = doc.get("jwks_uri")
    if not isinstance(uri, str):
        raise HttpError("the discovery document has no jwks_uri")
    kv_set(JWKS_URI, uri.encode("utf-8"), s.jwks_cache)
    return uri


def fetch(s: Settings) -> Optional[str]:
    """Fetches the JWKS (through discovery unless `jwks_uri` is set) and caches it; None if it
    cannot be had (logged)."""
    try:
        uri = discover_jwks_uri(s)
        body = get_json(uri, uri)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(f"{uri} answered with a JWKS that is not UTF-8") from None
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise HttpError(f"the JWKS at {uri} is not JSON: {e}") from None
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list):
            raise HttpError(f"the JWKS at {uri} has no keys")
        info(f"fetched {len(keys)} signing keys from {uri}")
        error = kv_set(JWKS, text.encode("utf-8"), s.jwks_cache)
        if error is not None:
            warn(f"cannot cache the JWKS: {error}")
        # The text as fetched, unchanged: the host's parsed-keys cache is keyed by it.
        return text
    except HttpError as e:
        warn(f"the issuer's keys are unavailable: {e}")
        return None


def jwks(s: Settings) -> Tuple[str, bool]:
    """The JWKS text to verify with (inline, cached, or fetched and cached), and whether it was
    fetched just now (so that a missing key does not fetch it twice)."""
    if s.jwks is not None:
        return s.jwks, False
    cached = kv_text(JWKS)
    if cached is not None:
        return cached, False
    fetched = fetch(s)
    if fetched is None:
        raise unavailable(f"cannot get the signing keys of {s.issuer}")
    return fetched, True


def verify(s: Settings, token: str, peeked: Tuple[bytes, dict]) -> Grant:
    keys, fetched = jwks(s)
    try:
        try:
            verified = verify_jws(token, keys, s.algorithms)
        except NoKey:
            # A key the JWKS lacks: the issuer may have rotated. Ask again, but not often.
            if fetched or s.jwks is not None or kv.get(REFETCHED) is not None:
                raise
            kv_set(REFETCHED, b"1", s.refetch_every)
            verified = verify_jws(token, fetch(s) or keys, s.algorithms)
    except UnusableJwks as e:
        raise unavailable(f"the signing keys of {s.issuer} are unusable: {e.detail}") from None
    except AlgorithmRefused as e:
        raise deny(f"algorithm not accepted: {e.detail}") from None
    except JwsError as e:
        raise deny(str(e)) from None

    # The host decoded the same part of the same token: parse it again only if it differs.
    payload_bytes, peeked_claims = peeked
    claims = peeked_claims if verified.payload.encode("utf-8") == payload_bytes else json_object(verified.payload)
    if claims is None:
        raise deny("the token's claims are not a JSON object")
    exp = check_claims(claims, s, int(time.time()))

    def claim(name: str) -> Optional[str]:
        value = claims.get(name)
        return value if isinstance(value, str) and value else None

    username = claim(s.username_claim)
    if username is None:
        raise deny(f"no {s.username_claim} claim to name the user")
    if s.username_claim == "email" and claims.get("email_verified") is False:
        raise deny("the email is not verified")
    user = UserInfo(username=s.username_prefix + username, uid="", groups=[], extra=[])
    if s.uid_claim is not None:
        user.uid = claim(s.uid_claim) or ""
    if s.groups_claim is not None:
        user.groups = [s.groups_prefix + g for g in string_list(claims, s.groups_claim)]
    return Grant(user=user, audiences=[], expires_at=exp)


_loaded: "Optional[Settings | str]" = None


class Authenticator(exports.Authenticator):
    def authenticate(self, review: Review) -> Decision:
        global _loaded
        # The manifest's [config] is fixed for an instance's life (a reload makes new
        # instances): a warm instance reads it once.
        if _loaded is None:
            try:
                _loaded = Settings()
            except Misconfigured as e:
                _loaded = f"oidc-jwt is misconfigured: {e}"
        if isinstance(_loaded, str):
            return Decision_Unavailable(_loaded)
        s = _loaded
        peeked = unverified_payload(review.token)
        if peeked is None or peeked[1].get("iss") != s.issuer or not isinstance(peeked[1].get("iss"), str):
            return Decision_Abstain()
        try:
            return Decision_Allow(verify(s, review.token, peeked))
        except Refused as r:
            return r.decision
