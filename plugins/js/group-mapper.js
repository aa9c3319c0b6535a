// group-mapper in JavaScript: rewrites the grant's groups (and optionally prefixes its username).
//
// Same config and behaviour as plugins/group-mapper (Rust):
// - `rules`: one rule per line, `FROM TO`, `#` starts a comment. `FROM` is a group name, or a
//   prefix ending in `*`; a `*` in `TO` is replaced by what `FROM`'s `*` matched; `TO` = `-`
//   drops the group. The first matching rule wins.
// - `unmapped`: `keep` (default) or `drop`; `prefix`: prepended to kept unmapped groups;
//   `add`: comma-separated groups added to every grant; `username_prefix`: prepended to the username.
//
// Groups keep the order of first appearance, without duplicates. Without a current grant (not a
// mapper) it abstains. A malformed rule throws, which traps: the plugin fails closed.

import { config } from "tollgate:policy/host@0.1.2";
import { contentLines, fields, splitList } from "./text.js";

function parseRule(line) {
  const f = fields(line);
  if (f.length !== 2) throw new Error(`expected \`FROM TO\`, found ${f.length} fields`);
  let [from, to] = f;
  const wildcard = from.endsWith("*");
  if (wildcard) from = from.slice(0, -1);
  if (from.includes("*")) throw new Error("`*` may only end FROM");
  return { from, wildcard, to: to === "-" ? null : to }; // null drops the group
}

// undefined: no match; null: drop; a string: the mapped group.
function applyRule(rule, group) {
  let rest;
  if (rule.wildcard) {
    if (!group.startsWith(rule.from)) return undefined;
    rest = group.slice(rule.from.length);
  } else if (group === rule.from) {
    rest = "";
  } else {
    return undefined;
  }
  // A function replacement: a string one would interpret `$&` and friends.
  return rule.to === null ? null : rule.to.replace("*", () => rest);
}

export const authenticator = {
  authenticate(review) {
    const current = review.current;
    // Only a mapper has a current grant; as an authenticator it has no opinion.
    if (current === undefined || current === null) return { tag: "abstain" };
    const rules = contentLines(config("rules") ?? "").map(([n, line]) => {
      try {
        return parseRule(line);
      } catch (e) {
        throw new Error(`rules line ${n}: ${e.message}`);
      }
    });
    const unmapped = config("unmapped");
    let dropUnmapped;
    if (unmapped === undefined || unmapped === null || unmapped === "keep") dropUnmapped = false;
    else if (unmapped === "drop") dropUnmapped = true;
    else throw new Error(`unmapped must be keep or drop, not ${JSON.stringify(unmapped)}`);
    const prefix = config("prefix") ?? "";

    const grant = current.grant;
    const groups = [];
    const push = (g) => {
      if (!groups.includes(g)) groups.push(g);
    };
    for (const group of grant.user.groups) {
      let mapped;
      for (const rule of rules) {
        mapped = applyRule(rule, group);
        if (mapped !== undefined) break;
      }
      if (typeof mapped === "string") push(mapped);
      else if (mapped === undefined && !dropUnmapped) push(prefix + group);
    }
    for (const g of splitList(config("add") ?? "")) push(g);
    grant.user.groups = groups;
    const usernamePrefix = config("username_prefix");
    if (usernamePrefix !== undefined && usernamePrefix !== null) {
      grant.user.username = usernamePrefix + grant.user.username;
    }
    // Audiences and expiry: cleared, as the Rust mapper does (a mapper may only narrow them).
    grant.audiences = [];
    grant.expiresAt = undefined;
    return { tag: "allow", val: grant };
  },
};
