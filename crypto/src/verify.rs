//! The verifier, the digests and the limits (feature `verify`, on by default: ring).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self as sig, VerificationAlgorithm};
use serde_json::{Map, Value};

use crate::{JwsError, Verified};

/// A compact JWS longer than this is refused before it is decoded: real tokens, even with a
/// few hundred groups, are a few KiB (and kube-apiserver's own OIDC authenticator refuses far less).
pub const MAX_JWS_BYTES: usize = 64 << 10;
/// A JWKS larger than this is refused: issuers publish a handful of keys, a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 << 10;
/// Keys in one JWKS: rotation keeps two or three per algorithm.
pub const MAX_KEYS: usize = 64;
/// Input of one `sha256`/`hmac-sha256` call: hashing a MiB takes a few milliseconds, so a host
/// call stays far inside any plugin's deadline (a host call cannot be interrupted midway).
pub const MAX_HASH_INPUT: usize = 1 << 20;
/// Entries of `allowed-algs` (there are nine algorithms).
const MAX_ALLOWED: usize = 16;
/// How much of an attacker-chosen name (a `kid`, an `alg`) an error message repeats.
const ECHO_CHARS: usize = 64;

/// The algorithms [`verify_jws`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    pub const ALL: [Alg; 9] =
        [Alg::Rs256, Alg::Rs384, Alg::Rs512, Alg::Ps256, Alg::Ps384, Alg::Ps512, Alg::Es256, Alg::Es384, Alg::EdDsa];

    /// The JOSE name (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The key type and curve the algorithm needs.
    fn curve(self) -> Curve {
        match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => Curve::Rsa,
            Alg::Es256 => Curve::P256,
            Alg::Es384 => Curve::P384,
            Alg::EdDsa => Curve::Ed25519,
        }
    }

    fn rsa(self) -> Option<&'static sig::RsaParameters> {
        // The 2048_8192 parameters: ring refuses a modulus under 2048 bits on its own too.
        Some(match self {
            Alg::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &sig::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }

    fn other(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Alg::Es384 => &sig::ECDSA_P384_SHA384_FIXED,
            Alg::EdDsa => &sig::ED25519,
            _ => &sig::ECDSA_P256_SHA256_FIXED,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// A public key, decoded and checked for shape.
#[derive(Debug)]
enum Public {
    /// Modulus (no leading zeros) and exponent, big-endian.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// `04 || x || y`, as ring takes it.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

impl Public {
    fn curve(&self) -> Curve {
        match self {
            Public::Rsa { .. } => Curve::Rsa,
            Public::Ec { curve, .. } => *curve,
            Public::Ed25519(_) => Curve::Ed25519,
        }
    }
}

/// One entry of a JWKS: a usable key, or why it is not usable (kept, so that a token naming
/// it gets that reason rather than "unknown kid").
#[derive(Debug)]
struct Jwk {
    kid: Option<String>,
    /// The key's own `alg`, when it names one: the only algorithm it verifies.
    alg: Option<Alg>,
    public: Result<Public, String>,
}

/// The keys of a JWKS document, parsed once (the host caches this per JWKS text).
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

fn b64(text: &str) -> Option<Vec<u8>> {
    // Canonical base64url without padding only (the default engine refuses non-zero trailing
    // bits): a token has one encoding, so a signature cannot be re-encoded into a second one.
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// `"..."` of an attacker-chosen string, cut short.
fn echo(s: &str) -> String {
    let cut: String = s.chars().take(ECHO_CHARS).collect();
    if cut.len() < s.len() { format!("{cut:?}…") } else { format!("{cut:?}") }
}

impl KeySet {
    pub fn parse(jwks: &str) -> Result<KeySet, JwsError> {
        if jwks.len() > MAX_JWKS_BYTES {
            return Err(JwsError::Jwks(format!("{} bytes, over the {} KiB limit", jwks.len(), MAX_JWKS_BYTES >> 10)));
        }
        let doc: Value = serde_json::from_str(jwks).map_err(|e| JwsError::Jwks(format!("not JSON: {e}")))?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or(JwsError::Jwks("no \"keys\" array".into()))?;
        if keys.len() > MAX_KEYS {
            return Err(JwsError::Jwks(format!("{} keys, over the limit of {MAX_KEYS}", keys.len())));
        }
        let keys = keys
            .iter()
            .map(|k| match k.as_object() {
                Some(jwk) => Jwk::parse(jwk),
                None => Jwk { kid: None, alg: None, public: Err("not a JSON object".into()) },
            })
            .collect();
        Ok(KeySet { keys })
    }

    /// How many keys can verify something.
    pub fn usable(&self) -> usize {
        self.keys.iter().filter(|k| k.public.is_ok()).count()
    }

    /// The key for a header's `kid` and algorithm (see the contract's `verify-jws`).
    fn select(&self, kid: Option<&str>, alg: Alg) -> Result<(&Public, Option<&str>), JwsError> {
        match kid {
            Some(kid) => {
                let mut why = None;
                for k in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    match k.fits(alg) {
                        Ok(public) => return Ok((public, k.kid.as_deref())),
                        Err(e) => why = why.or(Some(e)),
                    }
                }
                Err(JwsError::NoKey(match why {
                    Some(why) => format!("the key {} cannot verify this token: {why}", echo(kid)),
                    None => format!("no key with kid {}", echo(kid)),
                }))
            }
            None => {
                let mut fitting = self.keys.iter().filter_map(|k| Some((k.fits(alg).ok()?, k.kid.as_deref())));
                match (fitting.next(), fitting.next()) {
                    (Some(found), None) => Ok(found),
                    (None, _) => Err(JwsError::NoKey(format!("no usable key for {}", alg.name()))),
                    (Some(_), Some(_)) => Err(JwsError::NoKey(format!(
                        "the token names no key (kid) and several keys fit {}",
                        alg.name()
                    ))),
                }
            }
        }
    }
}

impl Jwk {
    /// The key, if it can verify `alg`; otherwise why not.
    fn fits(&self, alg: Alg) -> Result<&Public, String> {
        let public = self.public.as_ref().map_err(Clone::clone)?;
        if public.curve() != alg.curve() {
            return Err(format!("it is not a key for {}", alg.name()));
        }
        match self.alg {
            Some(own) if own != alg => Err(format!("it is for {}, not {}", own.name(), alg.name())),
            _ => Ok(public),
        }
    }

    fn parse(jwk: &Map<String, Value>) -> Jwk {
        let text = |k: &str| jwk.get(k).and_then(Value::as_str);
        let kid = text("kid").map(str::to_owned);
        let alg = text("alg").and_then(Alg::from_name);
        let public = Self::public(jwk, text("alg"));
        Jwk { kid, alg, public }
    }

    fn public(jwk: &Map<String, Value>, alg: Option<&str>) -> Result<Public, String> {
        let text = |k: &str| jwk.get(k).and_then(Value::as_str);
        if let Some(u) = text("use")
            && u != "sig"
        {
            return Err(format!("its use is {}, not sig", echo(u)));
        }
        if let Some(ops) = jwk.get("key_ops")
            && !ops.as_array().is_some_and(|ops| ops.iter().any(|o| o == "verify"))
        {
            return Err("its key_ops do not include verify".into());
        }
        if let Some(a) = alg
            && Alg::from_name(a).is_none()
        {
            return Err(format!("its alg {} is not one the host verifies", echo(a)));
        }
        let bytes = |k: &str| -> Result<Vec<u8>, String> {
            b64(text(k).ok_or_else(|| format!("it has no {k}"))?).ok_or_else(|| format!("its {k} is not base64url"))
        };
        let fixed = |k: &str, len: usize| -> Result<Vec<u8>, String> {
            let b = bytes(k)?;
            if b.len() == len { Ok(b) } else { Err(format!("its {k} is {} bytes, not {len}", b.len())) }
        };
        match text("kty").ok_or("it has no kty")? {
            "RSA" => {
                let n = bytes("n")?;
                let n = n[n.iter().take_while(|b| **b == 0).count()..].to_vec();
                let Some(first) = n.first() else { return Err("its RSA modulus n is zero".into()) };
                let bits = n.len() * 8 - first.leading_zeros() as usize;
                if bits < 2048 {
                    return Err(format!("it is an RSA key of {bits} bits; at least 2048 are required"));
                }
                if bits > 8192 {
                    return Err(format!("it is an RSA key of {bits} bits; at most 8192 are verified"));
                }
                let e = bytes("e")?;
                // ring takes exponents from 3 to 2^33 - 1, odd.
                if e.len() > 5 || e.last().is_none_or(|b| b & 1 == 0) {
                    return Err("its RSA exponent e is not usable".into());
                }
                Ok(Public::Rsa { n, e })
            }
            "EC" => {
                let (curve, len) = match text("crv").ok_or("it has no crv")? {
                    "P-256" => (Curve::P256, 32),
                    "P-384" => (Curve::P384, 48),
                    other => return Err(format!("its curve {} is not one the host verifies", echo(other))),
                };
                let mut point = vec![4u8];
                point.extend(fixed("x", len)?);
                point.extend(fixed("y", len)?);
                Ok(Public::Ec { curve, point })
            }
            "OKP" => match text("crv").ok_or("it has no crv")? {
                "Ed25519" => Ok(Public::Ed25519(fixed("x", 32)?)),
                other => Err(format!("its curve {} is not one the host verifies", echo(other))),
            },
            "oct" => Err("it is a symmetric key (oct), never used to verify".into()),
            other => Err(format!("its kty {} is not one the host verifies", echo(other))),
        }
    }
}

/// A compact JWS split into its three encoded parts, its header decoded and its `alg` known:
/// what [`verify_jws`] and [`ecdsa_twin`] both read first, with the same strictness.
struct Compact<'a> {
    h: &'a str,
    p: &'a str,
    s: &'a str,
    header_text: String,
    header: Map<String, Value>,
    alg: Alg,
}

impl<'a> Compact<'a> {
    fn parse(compact: &'a str) -> Result<Compact<'a>, JwsError> {
        if compact.len() > MAX_JWS_BYTES {
            return Err(JwsError::Malformed(format!("over {} KiB", MAX_JWS_BYTES >> 10)));
        }
        let mut parts = compact.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwsError::Malformed("not three dot-separated parts (a JWS in compact form)".into()));
        };
        let header_bytes = b64(h).ok_or(JwsError::Malformed("the header is not base64url".into()))?;
        let header_text =
            String::from_utf8(header_bytes).map_err(|_| JwsError::Malformed("the header is not UTF-8".into()))?;
        let header: Map<String, Value> = serde_json::from_str(&header_text)
            .map_err(|_| JwsError::Malformed("the header is not a JSON object".into()))?;
        let name =
            header.get("alg").and_then(Value::as_str).ok_or(JwsError::Malformed("the header has no alg".into()))?;
        let alg = Self::alg(name)?;
        Ok(Compact { h, p, s, header_text, header, alg })
    }

    fn alg(name: &str) -> Result<Alg, JwsError> {
        Ok(match Alg::from_name(name) {
            Some(alg) => alg,
            None if name.eq_ignore_ascii_case("none") => {
                return Err(JwsError::Algorithm("alg none (an unsigned token) is never accepted".into()));
            }
            None if name.starts_with("HS") => {
                return Err(JwsError::Algorithm(format!(
                    "alg {} (HMAC) is never accepted against a JWKS: a public key is no secret",
                    echo(name)
                )));
            }
            None => return Err(JwsError::Algorithm(format!("alg {} is not one the host verifies", echo(name)))),
        })
    }
}

/// Verifies a JWS in compact form against `keys` (see the contract's `verify-jws`).
pub fn verify_jws(compact: &str, keys: &KeySet, allowed_algs: &[String]) -> Result<Verified, JwsError> {
    let allowed = allowed(allowed_algs)?;
    let Compact { h, p, s, header_text, header, alg } = Compact::parse(compact)?;
    if !allowed.contains(&alg) {
        return Err(JwsError::Algorithm(format!("alg {} is not in allowed-algs", alg.name())));
    }
    if header.contains_key("crit") {
        return Err(JwsError::Malformed(
            "the header lists critical extensions (crit) the host does not implement".into(),
        ));
    }
    let signature = b64(s).ok_or(JwsError::Malformed("the signature is not base64url".into()))?;
    let payload = b64(p).ok_or(JwsError::Malformed("the payload is not base64url".into()))?;
    let payload = String::from_utf8(payload).map_err(|_| JwsError::Malformed("the payload is not UTF-8".into()))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(JwsError::Malformed("the header's kid is not a string".into())),
    };
    let (key, key_id) = keys.select(kid, alg)?;
    // The signing input is the encoded header and payload, exactly as they arrived.
    let input = &compact.as_bytes()[..h.len() + 1 + p.len()];
    let ok = match (key, alg.rsa()) {
        (Public::Rsa { n, e }, Some(params)) => {
            sig::RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(params, input, &signature).is_ok()
        }
        (Public::Ec { point, .. }, None) => {
            sig::UnparsedPublicKey::new(alg.other(), point).verify(input, &signature).is_ok()
        }
        (Public::Ed25519(x), None) => sig::UnparsedPublicKey::new(alg.other(), x).verify(input, &signature).is_ok(),
        _ => false, // `select` matched the key type to the algorithm
    };
    if !ok {
        return Err(JwsError::BadSignature);
    }
    Ok(Verified { alg: alg.name().to_owned(), key_id: key_id.map(str::to_owned), header: header_text, payload })
}

/// The order `n` of P-256 and of P-384 (SEC 2, §2.4.2 and §2.5.1), big-endian.
const P256_N: [u8; 32] = unhex(b"ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
const P384_N: [u8; 48] =
    unhex(b"ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973");

/// Hex (lower case, an even number of digits) as bytes, at compile time.
const fn unhex<const N: usize>(text: &[u8]) -> [u8; N] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lower-case hex digit"),
        }
    }
    assert!(text.len() == 2 * N);
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = digit(text[2 * i]) << 4 | digit(text[2 * i + 1]);
        i += 1;
    }
    out
}

/// `n - s` for big-endian `s < n` of `n`'s width, into `out` (the same width).
fn order_minus(n: &[u8], s: &[u8], out: &mut [u8]) {
    let mut borrow = 0u8;
    for ((o, &a), &b) in out.iter_mut().zip(n).zip(s).rev() {
        let (d, under) = a.overflowing_sub(b);
        let (d, under_again) = d.overflowing_sub(borrow);
        *o = d;
        borrow = u8::from(under || under_again);
    }
}

/// The other encoding of an ECDSA token's signature (see [`ecdsa_twin`]).
#[derive(Clone, PartialEq, Eq)]
pub struct EcdsaTwin {
    /// The token with its signature `r || s` replaced by `r || n - s`: the same header and
    /// payload text, base64url without padding as the verifier wants it.
    pub token: String,
    /// Whether the twin is the canonical form of the two (the token's own `s` is above `n/2`).
    pub canonical: bool,
}

impl std::fmt::Debug for EcdsaTwin {
    // It is a credential as good as the token: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaTwin").field("canonical", &self.canonical).finish_non_exhaustive()
    }
}

/// The twin of an ES256/ES384 token. ECDSA is malleable: `(r, s)` and `(r, n - s)` verify alike
/// for the same input and key, so anyone holding such a token can write a second valid string
/// for the same credential. The verifier accepts both (mainstream signers emit a high `s` about
/// half the time); the host takes the token's identities (audit `token_id`, decision-cache key)
/// from the canonical form of the two, the one with `s <= n/2` ([`canonical_jws`]), and scrubs
/// both from whatever a plugin says.
///
/// `None` for everything else: not a JWS [`verify_jws`] could accept on its form alone (the
/// same size limit, parts, base64url and header rules; no `crit`; a string `kid` if any; a
/// UTF-8 payload), another algorithm, a signature of another width, `r` or `s` outside `1..n`.
/// The header's algorithm is read before any arithmetic; the work is linear in the token's
/// length (at most [`MAX_JWS_BYTES`]) and it never panics. The signature is public: this need
/// not run in constant time.
pub fn ecdsa_twin(token: &str) -> Option<EcdsaTwin> {
    // Most bearer tokens are no JWS: two dots, or no further look.
    if token.len() > MAX_JWS_BYTES || token.bytes().filter(|&b| b == b'.').count() != 2 {
        return None;
    }
    let Compact { h, p, s: encoded, header, alg, .. } = Compact::parse(token).ok()?;
    let n: &[u8] = match alg {
        Alg::Es256 => &P256_N,
        Alg::Es384 => &P384_N,
        _ => return None,
    };
    if header.contains_key("crit") || header.get("kid").is_some_and(|kid| !kid.is_string()) {
        return None;
    }
    let mut signature = b64(encoded)?;
    if signature.len() != 2 * n.len() {
        return None;
    }
    let (r, s) = signature.split_at_mut(n.len());
    let in_range = |x: &[u8]| x.iter().any(|&b| b != 0) && x < n;
    if !in_range(r) || !in_range(s) {
        return None;
    }
    // What the verifier would refuse has no twin: it is no credential.
    String::from_utf8(b64(p)?).ok()?;
    let mut other = vec![0u8; n.len()];
    order_minus(n, s, &mut other);
    // n is odd, so s != n - s: the lower of the two is canonical.
    let canonical = *other.as_slice() < *s;
    s.copy_from_slice(&other);
    Some(EcdsaTwin { token: format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(&signature)), canonical })
}

/// The canonical form of a token when it is not the token itself: the twin ([`ecdsa_twin`]) of
/// an ES256/ES384 JWS whose `s` is above `n/2`. `None`: the token is its own canonical form.
pub fn canonical_jws(token: &str) -> Option<String> {
    ecdsa_twin(token).filter(|t| t.canonical).map(|t| t.token)
}

fn allowed(names: &[String]) -> Result<Vec<Alg>, JwsError> {
    if names.is_empty() {
        return Err(JwsError::Algorithm("allowed-algs is empty: name the algorithms your issuer signs with".into()));
    }
    if names.len() > MAX_ALLOWED {
        return Err(JwsError::Algorithm(format!("allowed-algs has {} entries, over {MAX_ALLOWED}", names.len())));
    }
    names
        .iter()
        .map(|n| {
            Alg::from_name(n).ok_or_else(|| {
                let known: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
                JwsError::Algorithm(format!("allowed-algs names {}; the host verifies {}", echo(n), known.join(", ")))
            })
        })
        .collect()
}

/// SHA-256 of `data`; `None` over [`MAX_HASH_INPUT`].
pub fn sha256(data: &[u8]) -> Option<[u8; 32]> {
    if data.len() > MAX_HASH_INPUT {
        return None;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    Some(out)
}

/// HMAC-SHA-256 of `data` under `key`; `None` over [`MAX_HASH_INPUT`].
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Option<[u8; 32]> {
    if data.len() > MAX_HASH_INPUT || key.len() > MAX_HASH_INPUT {
        return None;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data).as_ref());
    Some(out)
}

/// Equality in time that depends only on the lengths (which are not secret: digests).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    /// The build profile keeps overflow checks on for this crate (Cargo.toml): a length
    /// computation gone wrong on hostile input panics (the host traps the call) rather than wraps.
    #[test]
    fn overflow_checks_are_on() {
        let n: usize = std::hint::black_box(0);
        assert!(std::panic::catch_unwind(|| n - 8).is_err());
    }
}
