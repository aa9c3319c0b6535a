// The host's cryptography (`tollgate:policy/crypto`, contract 0.1.2) for QuickJS policies: a
// JWS signature check at native speed (ring), SHA-256, HMAC-SHA-256 and a constant-time compare.
// QuickJS has no WebCrypto (and its digests would be async), so the host's are the ones to use.
//
//   import { verifyJws, JwsError } from "./crypto.js";
//   try {
//     const verified = verifyJws(token, jwksText, ["RS256", "ES256"]);
//     const claims = JSON.parse(verified.payload); // verified: the claims are yours to check
//   } catch (e) {
//     if (e instanceof JwsError && e.kind === "no-key") { /* the issuer may have rotated */ }
//   }
//
// Pass the JWKS text exactly as fetched or configured, the same string every time: the host keeps
// the keys it parsed per document text, so a repeated document costs a hash, not a parse.
import * as host from "tollgate:policy/crypto@0.1.2";
import { utf8Encode } from "./utf8.js";

// The host hashes at most this much in one call and traps beyond it (the plugin fails closed);
// these wrappers throw a RangeError first, so a caller may handle it.
export const MAX_HASH_INPUT = 1 << 20;

// Why the host did not verify a JWS. `kind` is the WIT case name: "malformed", "algorithm",
// "no-key", "bad-signature", "jwks"; `detail` the host's words; `message` worded as the Rust SDK's
// (for the audit log: never the token).
export class JwsError extends Error {
  constructor(kind, detail) {
    const prefix = {
      malformed: "malformed token",
      algorithm: "algorithm refused",
      "no-key": "no key",
      jwks: "unusable JWKS",
    }[kind];
    super(kind === "bad-signature" ? "bad signature" : `${prefix ?? kind}: ${detail}`);
    this.kind = kind;
    this.detail = detail ?? "";
  }
}

// Verifies `compact` (a signed JWT) against the keys of `jwks` (a JWKS document's text) with one
// of `allowedAlgs` (RS256/384/512, PS256/384/512, ES256/384, EdDSA; never `none` or HMAC).
// Returns { alg, keyId, header, payload } (header and payload: JSON text); throws a JwsError.
export function verifyJws(compact, jwks, allowedAlgs) {
  try {
    return host.verifyJws(compact, jwks, allowedAlgs);
  } catch (e) {
    // A failing result<> import throws an Error whose `payload` is the jws-error value.
    const p = e !== null && typeof e === "object" ? e.payload : undefined;
    if (p && typeof p.tag === "string") throw new JwsError(p.tag, p.val);
    throw e;
  }
}

function bytes(data, what) {
  const b = typeof data === "string" ? utf8Encode(data) : data;
  if (b.length > MAX_HASH_INPUT) {
    throw new RangeError(`${what}: ${b.length} bytes, more than the host hashes (${MAX_HASH_INPUT})`);
  }
  return b;
}

// SHA-256 of `data` (a Uint8Array, or a string as UTF-8): 32 bytes (Uint8Array). At most 1 MiB.
export function sha256(data) {
  return host.sha256(bytes(data, "sha256"));
}

// HMAC-SHA-256 of `data` under `key` (Uint8Array or string as UTF-8): 32 bytes. At most 1 MiB of data.
export function hmacSha256(key, data) {
  return host.hmacSha256(typeof key === "string" ? utf8Encode(key) : key, bytes(data, "hmacSha256"));
}

// Whether `a` and `b` (Uint8Array) are equal, in time that depends only on their lengths: compare
// digests of secrets with this, never byte by byte in JavaScript.
export function constantTimeEq(a, b) {
  return host.constantTimeEq(a, b);
}
