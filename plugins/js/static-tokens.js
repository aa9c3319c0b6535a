// static-tokens in JavaScript: kube-apiserver's static token file, as SHA-256 digests of the tokens.
//
// Same config and behaviour as plugins/static-tokens (Rust):
// - `tokens`: one user per line, fields separated by whitespace, `#` starts a comment:
//   `SHA256-HEX USERNAME [UID [GROUPS [EXTRA]]]`, GROUPS `g1,g2`, EXTRA `key=value,key=value`
//   (a repeated key adds a value), `-` stands for an empty field.
// - `audiences` (optional): comma-separated audiences every grant states.
//
// An unlisted token gets `abstain`. A malformed line throws, which traps: the plugin fails closed
// (and fails its vectors at load). The token is never logged. The hashing and the comparison are
// the host's (`tollgate:policy/crypto`: ./crypto.js).

import { config } from "tollgate:policy/host@0.1.2";
import { constantTimeEq, sha256 } from "./crypto.js";
import { contentLines, fields, splitList } from "./text.js";

const HEX64 = /^[0-9a-fA-F]{64}$/;

function parseLine(line) {
  const f = fields(line);
  if (f.length < 2 || f.length > 5) throw new Error(`expected 2 to 5 fields, found ${f.length}`);
  if (!HEX64.test(f[0])) throw new Error("the first field must be 64 hex characters (a SHA-256 digest)");
  // Native (QuickJS has `Uint8Array.fromHex`): a loop of 32 parseInt calls per line per review
  // cost more than the rest of the line.
  const digest = Uint8Array.fromHex(f[0]);
  const field = (i) => (i < f.length && f[i] !== "-" ? f[i] : "");
  const extra = [];
  for (const pair of splitList(field(4))) {
    const eq = pair.indexOf("=");
    if (eq < 0) throw new Error(`extra entry ${JSON.stringify(pair)} is not key=value`);
    const key = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    const entry = extra.find(([k]) => k === key);
    if (entry) entry[1].push(value);
    else extra.push([key, [value]]);
  }
  const user = { username: f[1], uid: field(2), groups: splitList(field(3)), extra };
  return { digest, grant: { user, audiences: [], expiresAt: undefined } };
}

export const authenticator = {
  authenticate(review) {
    const table = config("tokens") ?? "";
    const digest = sha256(review.token);
    let found;
    // Every line is parsed and compared, found or not: the time taken does not depend on which
    // line (if any) matches, and the host compares in constant time.
    for (const [n, line] of contentLines(table)) {
      let entry;
      try {
        entry = parseLine(line);
      } catch (e) {
        throw new Error(`tokens line ${n}: ${e.message}`);
      }
      if (constantTimeEq(entry.digest, digest) && found === undefined) found = entry.grant;
    }
    if (found === undefined) return { tag: "abstain" };
    found.audiences = splitList(config("audiences") ?? "");
    return { tag: "allow", val: found };
  },
};
