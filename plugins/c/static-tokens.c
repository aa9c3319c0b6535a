// static-tokens in C: kube-apiserver's static token file, as SHA-256 digests of the tokens.
//
// Same config and behaviour as plugins/static-tokens (Rust):
// - `tokens`: one user per line, fields separated by whitespace, `#` starts a comment:
//   `SHA256-HEX USERNAME [UID [GROUPS [EXTRA]]]`, GROUPS `g1,g2`, EXTRA `key=value,key=value`
//   (a repeated key adds a value), `-` stands for an empty field.
// - `audiences` (optional): comma-separated audiences every grant states.
//
// An unlisted token gets `abstain`. A malformed line logs why (never the token) and traps: the
// plugin fails closed (and fails its vectors at load).

#include "text.h"
#include "tollgate_crypto.h"

typedef tollgate_policy_types_grant_t grant_t;

static int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Adds `value` under `key` to the extra attributes, merging a repeated key in order.
static void extra_add(policy_list_tuple2_string_list_string_t *extra, size_t *cap, slice_t key, slice_t value) {
  for (size_t i = 0; i < extra->len; i++) {
    if (slice_same(slice_of(&extra->ptr[i].f0), key)) {
      policy_list_string_t *values = &extra->ptr[i].f1;
      // A list grown one by one: capacity = length (realloc each time; extra lists are tiny).
      size_t cap_values = values->len;
      list_push(values, &cap_values, dup(value));
      return;
    }
  }
  if (extra->len == *cap) {
    *cap = *cap ? *cap * 2 : 4;
    void *p = realloc(extra->ptr, *cap * sizeof *extra->ptr);
    if (!p) __builtin_trap();
    extra->ptr = p;
  }
  policy_tuple2_string_list_string_t *entry = &extra->ptr[extra->len++];
  entry->f0 = dup(key);
  entry->f1 = (policy_list_string_t){NULL, 0};
  size_t cap_values = 0;
  list_push(&entry->f1, &cap_values, dup(value));
}

// Parses one non-blank `tokens` line into its digest and grant; traps if it is malformed.
static void parse_line(slice_t line, size_t number, uint8_t digest[32], grant_t *grant) {
  slice_t f[5];
  size_t n = split_fields(line, f, 5);
  if (n < 2 || n > 5) {
    char detail[48] = "expected 2 to 5 fields, found ";
    size_t at = strlen(detail);
    if (n >= 10) detail[at++] = (char)('0' + n / 10 % 10);
    detail[at++] = (char)('0' + n % 10);
    detail[at] = 0;
    fail("tokens", number, n >= 100 ? "expected 2 to 5 fields, found more" : detail);
  }
  bool hex_ok = f[0].len == 64;
  for (size_t i = 0; hex_ok && i < 32; i++) {
    int hi = hex_value(f[0].ptr[2 * i]), lo = hex_value(f[0].ptr[2 * i + 1]);
    if (hi < 0 || lo < 0) hex_ok = false;
    else digest[i] = (uint8_t)(hi << 4 | lo);
  }
  if (!hex_ok) fail("tokens", number, "the first field must be 64 hex characters (a SHA-256 digest)");

  slice_t empty = {NULL, 0};
  slice_t field[5];
  for (size_t i = 0; i < 5; i++) field[i] = (i < n && !slice_eq(f[i], "-")) ? f[i] : empty;

  memset(grant, 0, sizeof *grant);
  grant->user.username = dup(f[1]);
  grant->user.uid = dup(field[2]);
  size_t cap = 0;
  list_iter_t groups = {field[3]};
  for (slice_t g; next_item(&groups, &g);) list_push(&grant->user.groups, &cap, dup(g));
  size_t extra_cap = 0;
  list_iter_t pairs = {field[4]};
  for (slice_t pair; next_item(&pairs, &pair);) {
    const uint8_t *eq = memchr(pair.ptr, '=', pair.len);
    if (!eq) fail("tokens", number, "an extra entry is not key=value");
    slice_t key = {pair.ptr, (size_t)(eq - pair.ptr)};
    slice_t value = {eq + 1, pair.len - key.len - 1};
    extra_add(&grant->user.extra, &extra_cap, key, value);
  }
}

void exports_tollgate_policy_authenticator_authenticate(tollgate_policy_types_review_t *review,
                                                         tollgate_policy_types_decision_t *ret) {
  // The host's SHA-256 takes at most 1 MiB (more traps). A longer token (possible only with
  // --max-body-bytes over 1 MiB) is taken as unlisted: it matches no line.
  bool listable = review->token.len <= TG_HASH_MAX_BYTES;
  uint8_t digest[32] = {0};
  if (listable) tg_sha256(review->token.ptr, review->token.len, digest);
  tollgate_policy_types_review_free(review);  // exports own their arguments

  policy_string_t table = {NULL, 0};
  config("tokens", &table);
  bool found = false;
  grant_t grant;
  // Every line is parsed and compared, found or not: the time taken does not depend on which
  // line (if any) matches. The host hashes and compares (tollgate_crypto.h), in constant time.
  line_iter_t lines = {slice_of(&table)};
  for (slice_t line; next_line(&lines, &line);) {
    uint8_t entry_digest[32];
    grant_t entry;
    parse_line(line, lines.number, entry_digest, &entry);
    if (tg_constant_time_eq(entry_digest, 32, digest, 32) && listable && !found) {
      grant = entry;
      found = true;
    } else {
      tollgate_policy_types_grant_free(&entry);
    }
  }
  policy_string_free(&table);

  if (!found) {
    ret->tag = TOLLGATE_POLICY_TYPES_DECISION_ABSTAIN;
    return;
  }
  policy_string_t audiences = {NULL, 0};
  config("audiences", &audiences);
  size_t cap = 0;
  list_iter_t items = {slice_of(&audiences)};
  for (slice_t a; next_item(&items, &a);) list_push(&grant.audiences, &cap, dup(a));
  policy_string_free(&audiences);
  ret->tag = TOLLGATE_POLICY_TYPES_DECISION_ALLOW;
  ret->val.allow = grant;
}
