//! What `tollgate:policy/crypto` (contract 0.1.2) computes, apart from wasmtime: the host links
//! it into the sandbox, and the Rust SDK's native test shims call it, so a policy's unit tests
//! verify tokens exactly as the host will.
//!
//! Everything here parses input a plugin hands over (and a token an attacker wrote): sizes are
//! bounded before any work, nothing panics, and each refusal says why without quoting the token.
//! The signature checks are ring's, the same code that verifies the host's TLS peers.

/// Why a JWS was not verified (the contract's `jws-error`). Without the `verify` feature this
/// crate is only this type and [`Verified`], so the Rust SDK names them on wasm too (where the
/// host verifies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwsError {
    /// Not a JWS in compact form, `crit` in the header, a payload that is not UTF-8, too long.
    Malformed(String),
    /// The algorithm is not allowed (or never is: `none`, HMAC).
    Algorithm(String),
    /// No usable key fits the token's `kid` and `alg`: fetching the JWKS again may help.
    NoKey(String),
    /// A key fits and the signature is not its.
    BadSignature,
    /// The JWKS itself is unusable.
    Jwks(String),
}

impl std::fmt::Display for JwsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwsError::Malformed(m) => write!(f, "malformed token: {m}"),
            JwsError::Algorithm(m) => write!(f, "algorithm refused: {m}"),
            JwsError::NoKey(m) => write!(f, "no key: {m}"),
            JwsError::BadSignature => f.write_str("bad signature"),
            JwsError::Jwks(m) => write!(f, "unusable JWKS: {m}"),
        }
    }
}

impl std::error::Error for JwsError {}

/// A JWS whose signature was verified (the contract's `verified-jws`).
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    /// The algorithm it was signed with.
    pub alg: String,
    /// The `kid` of the key that verified it, if that key has one.
    pub key_id: Option<String>,
    /// The protected header: JSON text.
    pub header: String,
    /// The payload (a JWT's claims): JSON text. The claims are the caller's to check.
    pub payload: String,
}

impl std::fmt::Debug for Verified {
    // The payload is the token's content: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified").field("alg", &self.alg).field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

#[cfg(feature = "verify")]
mod verify;
#[cfg(feature = "verify")]
pub use verify::*;
