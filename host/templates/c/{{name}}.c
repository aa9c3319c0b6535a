// {{name}}: a tollgate policy. Bearer tokens are known by their SHA-256 digests, listed in the
// manifest's `[config] tokens`, one per line: `<sha256 hex of the token> <username> [group...]`.
// A listed token is its user; any other token is left to the next plugin (abstain).
//
// policy.h is what `wit-bindgen c` generates from wit/policy.wit (`tollgate build` does it). Its
// rules: the export owns its arguments (free them, or move them into the answer), and every
// string or list in the answer is a malloc block of its own (the bindings free each one).
// No libc call here reaches WASI (no stdio), so the component imports only tollgate:policy/*.
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

// The host hashes at most 1 MiB in one call, and traps beyond it.
#define MAX_HASH_INPUT ((size_t)1 << 20)
#define SPACE " \t\r\v\f"

static void *xrealloc(void *p, size_t n) {
  p = realloc(p, n ? n : 1);
  if (!p) __builtin_trap();  // out of memory: fail closed
  return p;
}

static policy_string_t copy(const char *s) {
  policy_string_t out = {xrealloc(NULL, strlen(s)), strlen(s)};
  memcpy(out.ptr, s, out.len);
  return out;
}

// The [config] value of `key` as a C string ("" when absent), malloc'ed.
static char *config(const char *key) {
  policy_string_t k, value;
  policy_string_set(&k, key);
  // When the key is absent the binding leaves `value` uninitialized (wit-bindgen 0.63).
  if (!tollgate_policy_host_config(&k, &value)) value = (policy_string_t){NULL, 0};
  char *s = xrealloc(NULL, value.len + 1);
  if (value.len) memcpy(s, value.ptr, value.len);
  s[value.len] = 0;
  policy_string_free(&value);
  return s;
}

static bool is_sha256_hex(const char *s) {
  return strlen(s) == 64 && strspn(s, "0123456789abcdefABCDEF") == 64;
}

void exports_tollgate_policy_authenticator_authenticate(tollgate_policy_types_review_t *review,
                                                         tollgate_policy_types_decision_t *ret) {
  ret->tag = TOLLGATE_POLICY_TYPES_DECISION_ABSTAIN;
  if (review->token.len == 0 || review->token.len > MAX_HASH_INPUT) {
    tollgate_policy_types_review_free(review);
    return;
  }
  // The host hashes and compares: native speed, and in constant time.
  policy_list_u8_t token = {review->token.ptr, review->token.len}, digest;
  tollgate_policy_crypto_sha256(&token, &digest);
  if (digest.len != 32) __builtin_trap();
  char hex[65];
  for (size_t i = 0; i < 32; i++) {
    hex[2 * i] = "0123456789abcdef"[digest.ptr[i] >> 4];
    hex[2 * i + 1] = "0123456789abcdef"[digest.ptr[i] & 15];
  }
  hex[64] = 0;
  policy_list_u8_free(&digest);

  tollgate_policy_types_user_info_t user = {0};
  bool found = false;
  char *tokens = config("tokens"), *lines, *fields;
  // Every line is compared, found or not: the time taken does not tell which line matched.
  for (char *line = strtok_r(tokens, "\n", &lines); line; line = strtok_r(NULL, "\n", &lines)) {
    char *hash = strtok_r(line, SPACE, &fields);
    if (!hash || hash[0] == '#') continue;  // blank, or a comment
    char *username = strtok_r(NULL, SPACE, &fields);
    if (!username || !is_sha256_hex(hash)) continue;  // malformed: skipped
    for (char *c = hash; *c; c++) *c |= 0x20;  // hex digits to lowercase
    policy_list_u8_t listed = {(uint8_t *)hash, 64}, ours = {(uint8_t *)hex, 64};
    if (tollgate_policy_crypto_constant_time_eq(&listed, &ours) && !found) {
      found = true;
      user.username = copy(username);
      for (char *group; (group = strtok_r(NULL, SPACE, &fields));) {
        user.groups.ptr = xrealloc(user.groups.ptr, (user.groups.len + 1) * sizeof *user.groups.ptr);
        user.groups.ptr[user.groups.len++] = copy(group);
      }
    }
  }
  free(tokens);

  if (found) {
    ret->tag = TOLLGATE_POLICY_TYPES_DECISION_ALLOW;
    ret->val.allow.user = user;  // uid "", no extra
    // Valid for the audiences the review names (the host intersects them with those anyway):
    // moved from the review into the answer.
    ret->val.allow.audiences = review->audiences;
    review->audiences = (policy_list_string_t){NULL, 0};
    ret->val.allow.expires_at.is_some = false;
  }
  tollgate_policy_types_review_free(review);
}
