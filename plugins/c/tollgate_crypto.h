// The host's cryptography (`tollgate:policy/crypto`, contract 0.1.2) for C policies: plain C
// types over the bindings `wit-bindgen c` generates (policy.h). The host does the work at native
// speed: a signed JWT is verified in tens of microseconds, where bignum arithmetic inside the
// sandbox takes milliseconds.
//
//   tg_jws_t jws;
//   const char *algs[] = {"RS256", "ES256"};
//   tg_jws_kind_t kind = tg_verify_jws_n(token, token_len, jwks, jwks_len, algs, 2, &jws);
//   if (kind == TG_JWS_VERIFIED) { ... jws.payload (JSON claims: check them yourself) ... }
//   else { ... deny with tg_jws_reason(&jws): `no-key: ...`, never the token ... }
//   tg_jws_free(&jws);
//
// Ownership follows the generated bindings' rules: inputs are only borrowed (the host copies
// what it reads), and everything the host returns is this module's to free. The helpers copy
// digests into caller buffers and free the host's lists, and hand the strings of a JWS over in
// a tg_jws_t that tg_jws_free releases.
//
// Limits (the host's): sha256 and hmac-sha256 take at most 1 MiB of data; more traps (the
// review fails closed). A JWS is at most 64 KiB, a JWKS at most 256 KiB and 64 keys (over
// that: an error kind, no trap).
#ifndef TOLLGATE_CRYPTO_H
#define TOLLGATE_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

// The host's limit on the data of one tg_sha256 / tg_hmac_sha256 call.
#define TG_HASH_MAX_BYTES ((size_t)1 << 20)

// Whether a JWS was verified, or why not (the host's `jws-error` cases).
typedef enum {
  TG_JWS_VERIFIED = 0,   // the signature is a key's of the JWKS, with an allowed algorithm
  TG_JWS_MALFORMED,      // not a compact JWS, `crit` in the header, a payload not UTF-8, over 64 KiB
  TG_JWS_ALGORITHM,      // `alg` not allowed (never: none, HMAC), or an allowed alg the host lacks
  TG_JWS_NO_KEY,         // no key fits the `kid` and `alg`: fetching the JWKS again may help
  TG_JWS_BAD_SIGNATURE,  // a key fits, and the signature is not its
  TG_JWS_BAD_JWKS,       // the JWKS is unusable (not JSON, no `keys`, over 256 KiB or 64 keys)
} tg_jws_kind_t;

// What tg_verify_jws found. Every pointer is malloc'ed and NUL-terminated (or NULL where said);
// tg_jws_free releases them all. The strings never contain the token.
typedef struct {
  tg_jws_kind_t kind;
  // kind == TG_JWS_VERIFIED:
  char *alg;            // the algorithm it was signed with (one of the allowed ones)
  char *key_id;         // the `kid` of the key that verified it; NULL if that key has none
  char *header;         // the protected header: JSON text
  size_t header_len;
  char *payload;        // the payload (a JWT's claims: JSON text); check the claims yourself
  size_t payload_len;   // (the payload may hold a NUL of its own: use the length)
  // any other kind:
  char *message;        // the host's reason, for the audit log ("" for TG_JWS_BAD_SIGNATURE)
} tg_jws_t;

// "verified", "malformed", "algorithm", "no-key", "bad-signature" or "jwks" (the WIT names).
static inline const char *tg_jws_kind_name(tg_jws_kind_t kind) {
  switch (kind) {
    case TG_JWS_VERIFIED: return "verified";
    case TG_JWS_MALFORMED: return "malformed";
    case TG_JWS_ALGORITHM: return "algorithm";
    case TG_JWS_NO_KEY: return "no-key";
    case TG_JWS_BAD_SIGNATURE: return "bad-signature";
    case TG_JWS_BAD_JWKS: return "jwks";
  }
  return "unknown";
}

// The reason a JWS was not verified, for a deny answer or the log: `KIND: MESSAGE`
// (`bad-signature` alone), malloc'ed on its own as the answer's strings must be. It never holds
// the token.
static inline policy_string_t tg_jws_reason(const tg_jws_t *jws) {
  const char *name = tg_jws_kind_name(jws->kind);
  const char *message = jws->message ? jws->message : "";
  size_t n = strlen(name), m = strlen(message);
  size_t len = n + (m ? 2 + m : 0);
  policy_string_t s = {malloc(len), len};
  if (!s.ptr) __builtin_trap();
  memcpy(s.ptr, name, n);
  if (m) {
    memcpy(s.ptr + n, ": ", 2);
    memcpy(s.ptr + n + 2, message, m);
  }
  return s;
}

// Takes over a string the host returned (malloc'ed by cabi_realloc, or not allocated at all
// when empty) as a NUL-terminated malloc'ed one.
static inline char *tg_take_string_(policy_string_t *s, size_t *len) {
  char *p;
  if (s->len == 0) {
    p = malloc(1);  // an empty host string points at no allocation
  } else {
    p = realloc(s->ptr, s->len + 1);
  }
  if (!p) __builtin_trap();
  p[s->len] = 0;
  if (len) *len = s->len;
  *s = (policy_string_t){NULL, 0};
  return p;
}

// Frees what a tg_verify_jws left in `jws` (safe to call twice).
static inline void tg_jws_free(tg_jws_t *jws) {
  free(jws->alg);
  free(jws->key_id);
  free(jws->header);
  free(jws->payload);
  free(jws->message);
  memset(jws, 0, sizeof *jws);
}

// Has the host verify `compact` (a JWS in compact form: a signed JWT) against the keys of
// `jwks` (a JWKS document's text) with one of `algs` (RS256, RS384, RS512, PS256, PS384, PS512,
// ES256, ES384, EdDSA). Pass the same JWKS text on every call: the host keeps the parsed keys
// of the last few documents it saw, so a repeat costs a hash, not a parse. Fills `out` (free
// it with tg_jws_free whatever the kind) and returns its kind.
static inline tg_jws_kind_t tg_verify_jws_n(const char *compact, size_t compact_len, const char *jwks,
                                            size_t jwks_len, const char *const *algs, size_t n_algs,
                                            tg_jws_t *out) {
  memset(out, 0, sizeof *out);
  policy_string_t c = {(uint8_t *)compact, compact_len};
  policy_string_t k = {(uint8_t *)jwks, jwks_len};
  policy_string_t *names = n_algs ? malloc(n_algs * sizeof *names) : NULL;
  if (n_algs && !names) __builtin_trap();
  for (size_t i = 0; i < n_algs; i++) names[i] = (policy_string_t){(uint8_t *)algs[i], strlen(algs[i])};
  policy_list_string_t allowed = {names, n_algs};
  tollgate_policy_crypto_verified_jws_t ok;
  tollgate_policy_crypto_jws_error_t err;
  bool verified = tollgate_policy_crypto_verify_jws(&c, &k, &allowed, &ok, &err);
  free(names);  // only the array is ours: the names are the caller's
  if (verified) {
    out->kind = TG_JWS_VERIFIED;
    out->alg = tg_take_string_(&ok.alg, NULL);
    out->key_id = ok.key_id.is_some ? tg_take_string_(&ok.key_id.val, NULL) : NULL;
    out->header = tg_take_string_(&ok.header, &out->header_len);
    out->payload = tg_take_string_(&ok.payload, &out->payload_len);
    return out->kind;
  }
  policy_string_t none = {NULL, 0};
  switch (err.tag) {
    case TOLLGATE_POLICY_CRYPTO_JWS_ERROR_MALFORMED:
      out->kind = TG_JWS_MALFORMED;
      out->message = tg_take_string_(&err.val.malformed, NULL);
      break;
    case TOLLGATE_POLICY_CRYPTO_JWS_ERROR_ALGORITHM:
      out->kind = TG_JWS_ALGORITHM;
      out->message = tg_take_string_(&err.val.algorithm, NULL);
      break;
    case TOLLGATE_POLICY_CRYPTO_JWS_ERROR_NO_KEY:
      out->kind = TG_JWS_NO_KEY;
      out->message = tg_take_string_(&err.val.no_key, NULL);
      break;
    case TOLLGATE_POLICY_CRYPTO_JWS_ERROR_BAD_SIGNATURE:
      out->kind = TG_JWS_BAD_SIGNATURE;
      out->message = tg_take_string_(&none, NULL);
      break;
    case TOLLGATE_POLICY_CRYPTO_JWS_ERROR_JWKS:
      out->kind = TG_JWS_BAD_JWKS;
      out->message = tg_take_string_(&err.val.jwks, NULL);
      break;
    default:
      __builtin_trap();  // a case this header does not know: fail closed
  }
  return out->kind;
}

// tg_verify_jws_n over NUL-terminated strings.
static inline tg_jws_kind_t tg_verify_jws(const char *compact, const char *jwks, const char *const *algs,
                                          size_t n_algs, tg_jws_t *out) {
  return tg_verify_jws_n(compact, strlen(compact), jwks, strlen(jwks), algs, n_algs, out);
}

// Copies a 32-byte digest the host returned into `out` and frees the host's list.
static inline void tg_take_digest_(policy_list_u8_t *d, uint8_t out[32]) {
  if (d->len != 32) __builtin_trap();
  memcpy(out, d->ptr, 32);
  policy_list_u8_free(d);
}

// SHA-256 of `len` bytes at `data` into `out`. At most TG_HASH_MAX_BYTES: more traps.
static inline void tg_sha256(const void *data, size_t len, uint8_t out[32]) {
  policy_list_u8_t in = {(uint8_t *)data, len}, digest;
  tollgate_policy_crypto_sha256(&in, &digest);
  tg_take_digest_(&digest, out);
}

// HMAC-SHA-256 of `len` bytes at `data` under the key into `out`. At most TG_HASH_MAX_BYTES of
// data: more traps.
static inline void tg_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[32]) {
  policy_list_u8_t k = {(uint8_t *)key, key_len}, in = {(uint8_t *)data, len}, mac;
  tollgate_policy_crypto_hmac_sha256(&k, &in, &mac);
  tg_take_digest_(&mac, out);
}

// Whether the two buffers are equal, in time that depends only on their lengths: compare
// digests and MACs of secrets with this, never with memcmp.
static inline bool tg_constant_time_eq(const void *a, size_t a_len, const void *b, size_t b_len) {
  policy_list_u8_t x = {(uint8_t *)a, a_len}, y = {(uint8_t *)b, b_len};
  return tollgate_policy_crypto_constant_time_eq(&x, &y);
}

#endif
