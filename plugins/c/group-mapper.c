// group-mapper in C: rewrites the grant's groups (and optionally prefixes its username).
//
// Same config and behaviour as plugins/group-mapper (Rust):
// - `rules`: one rule per line, `FROM TO`, `#` starts a comment. `FROM` is a group name, or a
//   prefix ending in `*`; a `*` in `TO` is replaced by what `FROM`'s `*` matched; `TO` = `-`
//   drops the group. The first matching rule wins.
// - `unmapped`: `keep` (default) or `drop`; `prefix`: prepended to kept unmapped groups;
//   `add`: comma-separated groups added to every grant; `username_prefix`: prepended to the username.
//
// Groups keep the order of first appearance, without duplicates. Without a current grant (not a
// mapper) it abstains. A malformed rule logs why and traps: the plugin fails closed.

#include "text.h"

typedef struct {
  slice_t from;
  bool wildcard;
  bool drop;  // TO is `-`
  slice_t to;
} rule_t;

static void parse_rule(slice_t line, size_t number, rule_t *rule) {
  slice_t f[2];
  size_t n = split_fields(line, f, 2);
  if (n != 2) fail("rules", number, "expected `FROM TO`");
  rule->from = f[0];
  rule->wildcard = f[0].len && f[0].ptr[f[0].len - 1] == '*';
  if (rule->wildcard) rule->from.len--;
  if (rule->from.len && memchr(rule->from.ptr, '*', rule->from.len)) fail("rules", number, "`*` may only end FROM");
  rule->drop = slice_eq(f[1], "-");
  rule->to = f[1];
}

// Applies a rule: false if it does not match; else *drop, or *out = the mapped group (malloc'ed).
static bool apply_rule(const rule_t *rule, slice_t group, bool *drop, policy_string_t *out) {
  slice_t rest;
  if (rule->wildcard) {
    if (group.len < rule->from.len || (rule->from.len && memcmp(group.ptr, rule->from.ptr, rule->from.len)))
      return false;
    rest = (slice_t){group.ptr + rule->from.len, group.len - rule->from.len};
  } else if (slice_same(group, rule->from)) {
    rest = (slice_t){NULL, 0};
  } else {
    return false;
  }
  *drop = rule->drop;
  if (rule->drop) return true;
  // The first `*` of TO takes what FROM's `*` matched.
  const uint8_t *star = rule->to.len ? memchr(rule->to.ptr, '*', rule->to.len) : NULL;
  if (!star) {
    *out = dup(rule->to);
    return true;
  }
  slice_t head = {rule->to.ptr, (size_t)(star - rule->to.ptr)};
  slice_t tail = {star + 1, rule->to.len - head.len - 1};
  policy_string_t a = concat(head, rest);
  *out = concat(slice_of(&a), tail);
  policy_string_free(&a);
  return true;
}

// Pushes `g` unless already there (takes ownership either way).
static void push_unique(policy_list_string_t *groups, size_t *cap, policy_string_t g) {
  if (list_contains(groups, slice_of(&g))) policy_string_free(&g);
  else list_push(groups, cap, g);
}

void exports_tollgate_policy_authenticator_authenticate(tollgate_policy_types_review_t *review,
                                                         tollgate_policy_types_decision_t *ret) {
  if (!review->current.is_some) {
    // Only a mapper has a current grant; as an authenticator it has no opinion.
    tollgate_policy_types_review_free(review);
    ret->tag = TOLLGATE_POLICY_TYPES_DECISION_ABSTAIN;
    return;
  }
  // Take the grant; the rest of the review is freed (exports own their arguments).
  tollgate_policy_types_grant_t grant = review->current.val.grant;
  review->current.is_some = false;
  policy_string_free(&review->current.val.plugin);
  tollgate_policy_types_review_free(review);

  policy_string_t rules_text = {NULL, 0};
  config("rules", &rules_text);
  size_t n_rules = 0, cap_rules = 0;
  rule_t *rules = NULL;
  line_iter_t lines = {slice_of(&rules_text)};
  for (slice_t line; next_line(&lines, &line);) {
    if (n_rules == cap_rules) {
      cap_rules = cap_rules ? cap_rules * 2 : 8;
      rules = realloc(rules, cap_rules * sizeof *rules);
      if (!rules) __builtin_trap();
    }
    parse_rule(line, lines.number, &rules[n_rules++]);
  }

  bool drop_unmapped = false;
  policy_string_t unmapped;
  if (config("unmapped", &unmapped)) {
    if (slice_eq(slice_of(&unmapped), "drop")) drop_unmapped = true;
    else if (!slice_eq(slice_of(&unmapped), "keep")) fail("unmapped", 0, "must be keep or drop");
    policy_string_free(&unmapped);
  }
  policy_string_t prefix = {NULL, 0};
  config("prefix", &prefix);

  policy_list_string_t groups = {NULL, 0};
  size_t cap = 0;
  for (size_t i = 0; i < grant.user.groups.len; i++) {
    slice_t group = slice_of(&grant.user.groups.ptr[i]);
    bool matched = false, drop = false;
    policy_string_t mapped;
    for (size_t r = 0; r < n_rules && !matched; r++) matched = apply_rule(&rules[r], group, &drop, &mapped);
    if (matched) {
      if (!drop) push_unique(&groups, &cap, mapped);
    } else if (!drop_unmapped) {
      push_unique(&groups, &cap, concat(slice_of(&prefix), group));
    }
  }
  policy_string_t add = {NULL, 0};
  config("add", &add);
  list_iter_t items = {slice_of(&add)};
  for (slice_t g; next_item(&items, &g);) push_unique(&groups, &cap, dup(g));

  policy_list_string_free(&grant.user.groups);
  grant.user.groups = groups;
  policy_string_t username_prefix;
  if (config("username_prefix", &username_prefix)) {
    policy_string_t username = concat(slice_of(&username_prefix), slice_of(&grant.user.username));
    policy_string_free(&grant.user.username);
    grant.user.username = username;
    policy_string_free(&username_prefix);
  }
  // Audiences and expiry: cleared, as the Rust mapper does (a mapper may only narrow them).
  policy_list_string_free(&grant.audiences);
  grant.audiences = (policy_list_string_t){NULL, 0};
  grant.expires_at.is_some = false;

  free(rules);
  policy_string_free(&rules_text);
  policy_string_free(&prefix);
  policy_string_free(&add);
  ret->tag = TOLLGATE_POLICY_TYPES_DECISION_ALLOW;
  ret->val.allow = grant;
}
