// Text helpers shared by the C policies, matching the Rust examples' parsing exactly: lines split
// at '\n', a '#' cuts a comment, fields are separated by Unicode White_Space (Rust's
// `char::is_whitespace`, which `split_whitespace` and `trim` use), lists by ','.
//
// Strings are byte slices into UTF-8 text the host handed over (the canonical ABI guarantees it
// is valid UTF-8). Every string returned to the host is malloc'ed on its own: the generated
// post-return function frees each one.
#ifndef TOLLGATE_TEXT_H
#define TOLLGATE_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef struct {
  const uint8_t *ptr;
  size_t len;
} slice_t;

static inline slice_t slice_of(const policy_string_t *s) { return (slice_t){s->ptr, s->len}; }

static inline bool slice_eq(slice_t a, const char *lit) {
  size_t n = strlen(lit);
  return a.len == n && memcmp(a.ptr, lit, n) == 0;
}

static inline bool slice_same(slice_t a, slice_t b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

// Length in bytes of the UTF-8 character at p (valid UTF-8).
static inline size_t utf8_len(uint8_t lead) {
  return lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
}

// Whether the character at p (n bytes long) is Unicode White_Space.
static inline bool is_ws(const uint8_t *p, size_t n) {
  switch (n) {
    case 1:
      return (p[0] >= 0x09 && p[0] <= 0x0d) || p[0] == 0x20;
    case 2:  // U+0085, U+00A0
      return p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0);
    case 3: {
      uint32_t c = ((uint32_t)(p[0] & 0x0f) << 12) | ((uint32_t)(p[1] & 0x3f) << 6) | (p[2] & 0x3f);
      return c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
             c == 0x202f || c == 0x205f || c == 0x3000;
    }
    default:
      return false;
  }
}

// `str::trim`.
static inline slice_t trim(slice_t s) {
  size_t i = 0, start = s.len, end = 0;
  while (i < s.len) {
    size_t n = utf8_len(s.ptr[i]);
    if (i + n > s.len) n = s.len - i;
    if (!is_ws(s.ptr + i, n)) {
      if (start == s.len) start = i;
      end = i + n;
    }
    i += n;
  }
  if (start == s.len) return (slice_t){s.ptr, 0};
  return (slice_t){s.ptr + start, end - start};
}

// `str::split_whitespace`: up to `max` fields into out; returns how many there are in all.
static inline size_t split_fields(slice_t s, slice_t *out, size_t max) {
  size_t count = 0, i = 0;
  while (i < s.len) {
    size_t n = utf8_len(s.ptr[i]);
    if (i + n > s.len) n = s.len - i;
    if (is_ws(s.ptr + i, n)) {
      i += n;
      continue;
    }
    size_t start = i;
    while (i < s.len) {
      n = utf8_len(s.ptr[i]);
      if (i + n > s.len) n = s.len - i;
      if (is_ws(s.ptr + i, n)) break;
      i += n;
    }
    if (count < max) out[count] = (slice_t){s.ptr + start, i - start};
    count++;
  }
  return count;
}

// Iterates the lines of a text that are not blank once their `#` comment is cut:
//   line_iter_t it = {text}; slice_t line; while (next_line(&it, &line)) ... it.number ...
typedef struct {
  slice_t rest;
  size_t number;  // 1-based number of the line last returned
  bool done;
} line_iter_t;

static inline bool next_line(line_iter_t *it, slice_t *line) {
  while (!it->done) {
    const uint8_t *nl = it->rest.len ? memchr(it->rest.ptr, '\n', it->rest.len) : NULL;
    slice_t raw = {it->rest.ptr, nl ? (size_t)(nl - it->rest.ptr) : it->rest.len};
    if (nl) {
      it->rest.ptr = nl + 1;
      it->rest.len -= raw.len + 1;
    } else {
      it->done = true;
    }
    it->number++;
    const uint8_t *hash = raw.len ? memchr(raw.ptr, '#', raw.len) : NULL;
    if (hash) raw.len = (size_t)(hash - raw.ptr);
    *line = trim(raw);
    if (line->len) return true;
  }
  return false;
}

// Iterates comma-separated items, trimmed, skipping empty ones.
typedef struct {
  slice_t rest;
  bool done;
} list_iter_t;

static inline bool next_item(list_iter_t *it, slice_t *item) {
  while (!it->done) {
    const uint8_t *comma = it->rest.len ? memchr(it->rest.ptr, ',', it->rest.len) : NULL;
    slice_t raw = {it->rest.ptr, comma ? (size_t)(comma - it->rest.ptr) : it->rest.len};
    if (comma) {
      it->rest.ptr = comma + 1;
      it->rest.len -= raw.len + 1;
    } else {
      it->done = true;
    }
    *item = trim(raw);
    if (item->len) return true;
  }
  return false;
}

static inline void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) __builtin_trap();
  return p;
}

// A malloc'ed copy of `a` followed by `b` (the empty string is not allocated).
static inline policy_string_t concat(slice_t a, slice_t b) {
  policy_string_t s = {NULL, a.len + b.len};
  if (s.len) {
    s.ptr = xmalloc(s.len);
    if (a.len) memcpy(s.ptr, a.ptr, a.len);
    if (b.len) memcpy(s.ptr + a.len, b.ptr, b.len);
  }
  return s;
}

static inline policy_string_t dup(slice_t a) { return concat(a, (slice_t){NULL, 0}); }

// A growable list of strings.
static inline void list_push(policy_list_string_t *l, size_t *cap, policy_string_t s) {
  if (l->len == *cap) {
    *cap = *cap ? *cap * 2 : 4;
    policy_string_t *p = realloc(l->ptr, *cap * sizeof *p);
    if (!p) __builtin_trap();
    l->ptr = p;
  }
  l->ptr[l->len++] = s;
}

static inline bool list_contains(const policy_list_string_t *l, slice_t s) {
  for (size_t i = 0; i < l->len; i++)
    if (slice_same(slice_of(&l->ptr[i]), s)) return true;
  return false;
}

// The value of a `[config]` key (malloc'ed; free with policy_string_free), or false and "".
static inline bool config(const char *key, policy_string_t *value) {
  policy_string_t k;
  policy_string_set(&k, key);
  if (tollgate_policy_host_config(&k, value)) return true;
  // The generated binding copies an uninitialized value out on None: never free that.
  *value = (policy_string_t){NULL, 0};
  return false;
}

// Logs "WHAT line N: DETAIL" (N = 0: no line) at error level and traps: the plugin fails
// closed. Never pass the token.
__attribute__((noreturn)) static inline void fail(const char *what, size_t line, const char *detail) {
  char buf[256];
  size_t n = 0;
#define PUT(s)                                                       \
  for (const char *c_ = (s); *c_ && n < sizeof buf - 24; c_++) buf[n++] = *c_
  PUT(what);
  if (line) {
    PUT(" line ");
    char digits[24];
    size_t d = 0;
    do digits[d++] = (char)('0' + line % 10); while ((line /= 10) && d < sizeof digits);
    while (d) buf[n++] = digits[--d];
  }
  PUT(": ");
  PUT(detail);
#undef PUT
  policy_string_t msg = {(uint8_t *)buf, n};
  tollgate_policy_host_log(TOLLGATE_POLICY_HOST_LEVEL_ERROR, &msg);
  __builtin_trap();
}

#endif
