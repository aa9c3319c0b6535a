// A test policy (not an example): has the host verify the token as a JWS through
// tollgate_crypto.h, and answers with everything the helpers returned, for tests/e2e/languages.rs.
//
// Config: `jwks` (a JWKS document's text), `algs` (comma-separated allowed algorithms),
// `mac_key` (an HMAC key).
// - verified: allow, username `jws:ALG:KID` (KID `-` when the key has none), groups
//   `sha256:HEX` and `hmac:HEX` of the token, `eq:true` (a digest equals itself) and `ne:false`
//   (the digest is not the MAC), extra `header` and `payload` (the decoded JSON texts);
// - not verified: deny with `KIND: MESSAGE` (`bad-signature` alone).

#include "../text.h"
#include "../tollgate_crypto.h"

static policy_string_t hex_of(const char *prefix, const uint8_t digest[32]) {
  static const char digits[] = "0123456789abcdef";
  size_t n = strlen(prefix);
  policy_string_t s = {xmalloc(n + 64), n + 64};
  memcpy(s.ptr, prefix, n);
  for (size_t i = 0; i < 32; i++) {
    s.ptr[n + 2 * i] = (uint8_t)digits[digest[i] >> 4];
    s.ptr[n + 2 * i + 1] = (uint8_t)digits[digest[i] & 15];
  }
  return s;
}

static policy_string_t cstr(const char *s) { return dup((slice_t){(const uint8_t *)s, strlen(s)}); }

// A malloc'ed a + b + c + d.
static policy_string_t join(const char *a, const char *b, const char *c, const char *d) {
  const char *parts[4] = {a, b, c, d};
  size_t len = 0;
  for (int i = 0; i < 4; i++) len += strlen(parts[i]);
  policy_string_t s = {xmalloc(len), len};
  size_t at = 0;
  for (int i = 0; i < 4; i++) {
    memcpy(s.ptr + at, parts[i], strlen(parts[i]));
    at += strlen(parts[i]);
  }
  return s;
}

static void add_extra(policy_list_tuple2_string_list_string_t *extra, const char *key, const char *value,
                      size_t value_len) {
  policy_tuple2_string_list_string_t *entry = &extra->ptr[extra->len++];
  entry->f0 = cstr(key);
  entry->f1.ptr = xmalloc(sizeof(policy_string_t));
  entry->f1.len = 1;
  entry->f1.ptr[0] = dup((slice_t){(const uint8_t *)value, value_len});
}

void exports_tollgate_policy_authenticator_authenticate(tollgate_policy_types_review_t *review,
                                                         tollgate_policy_types_decision_t *ret) {
  policy_string_t jwks, algs_text, mac_key;
  config("jwks", &jwks);
  config("algs", &algs_text);
  config("mac_key", &mac_key);
  // The allowed algorithms as NUL-terminated strings.
  const char *algs[16];
  char names[16][16];
  size_t n_algs = 0;
  list_iter_t items = {slice_of(&algs_text)};
  for (slice_t a; next_item(&items, &a);) {
    if (n_algs == 16 || a.len >= 16) fail("algs", 0, "too many or too long");
    memcpy(names[n_algs], a.ptr, a.len);
    names[n_algs][a.len] = 0;
    algs[n_algs] = names[n_algs];
    n_algs++;
  }
  policy_string_free(&algs_text);

  const char *token = (const char *)review->token.ptr;
  size_t token_len = review->token.len;
  tg_jws_t jws;
  tg_jws_kind_t kind = tg_verify_jws_n(token, token_len, (const char *)jwks.ptr, jwks.len, algs, n_algs, &jws);
  policy_string_free(&jwks);
  if (kind != TG_JWS_VERIFIED) {
    ret->tag = TOLLGATE_POLICY_TYPES_DECISION_DENY;
    ret->val.deny = tg_jws_reason(&jws);
    tg_jws_free(&jws);
    policy_string_free(&mac_key);
    tollgate_policy_types_review_free(review);
    return;
  }

  uint8_t digest[32], mac[32];
  tg_sha256(token, token_len, digest);
  tg_hmac_sha256(mac_key.ptr, mac_key.len, token, token_len, mac);
  policy_string_free(&mac_key);
  tollgate_policy_types_review_free(review);

  tollgate_policy_types_grant_t grant;
  memset(&grant, 0, sizeof grant);
  grant.user.username = join("jws:", jws.alg, ":", jws.key_id ? jws.key_id : "-");
  size_t cap = 0;
  list_push(&grant.user.groups, &cap, hex_of("sha256:", digest));
  list_push(&grant.user.groups, &cap, hex_of("hmac:", mac));
  list_push(&grant.user.groups, &cap, cstr(tg_constant_time_eq(digest, 32, digest, 32) ? "eq:true" : "eq:false"));
  list_push(&grant.user.groups, &cap, cstr(tg_constant_time_eq(digest, 32, mac, 32) ? "ne:true" : "ne:false"));
  grant.user.extra.ptr = xmalloc(2 * sizeof *grant.user.extra.ptr);
  add_extra(&grant.user.extra, "header", jws.header, jws.header_len);
  add_extra(&grant.user.extra, "payload", jws.payload, jws.payload_len);
  tg_jws_free(&jws);
  ret->tag = TOLLGATE_POLICY_TYPES_DECISION_ALLOW;
  ret->val.allow = grant;
}
