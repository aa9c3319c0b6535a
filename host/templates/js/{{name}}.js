// {{name}}: a tollgate policy. Bearer tokens are known by their SHA-256 digests, listed in the
// manifest's `[config] tokens`, one per line: `<sha256 hex of the token> <username> [group...]`.
// A listed token is its user; any other token is left to the next plugin (abstain).
import "./console.js"; // console.log & co. write to the host's log
import { constantTimeEq, sha256 } from "tollgate:policy/crypto@0.1.2";
import { config } from "tollgate:policy/host@0.1.2";

// The host hashes at most 1 MiB in one call, and traps beyond it.
const MAX_HASH_INPUT = 1 << 20;
const SHA256_HEX = /^[0-9a-fA-F]{64}$/;

// The UTF-8 bytes of a string (QuickJS has no TextEncoder).
function utf8(s) {
  const b = unescape(encodeURIComponent(s));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

export const authenticator = {
  authenticate(review) {
    const token = utf8(review.token);
    if (token.length === 0 || token.length > MAX_HASH_INPUT) return { tag: "abstain" };
    // The host hashes and compares: native speed, and in constant time.
    const digest = utf8(hex(sha256(token)));
    let found;
    // Every line is compared, found or not: the time taken does not tell which line matched.
    for (const line of (config("tokens") ?? "").split("\n")) {
      const [hash, username, ...groups] = line.trim().split(/\s+/);
      if (hash === "" || hash.startsWith("#")) continue; // blank, or a comment
      if (username === undefined || !SHA256_HEX.test(hash)) continue; // malformed: skipped
      if (constantTimeEq(utf8(hash.toLowerCase()), digest) && found === undefined) {
        found = { username, uid: "", groups, extra: [] };
      }
    }
    if (found === undefined) return { tag: "abstain" };
    // Valid for the audiences the review names (the host intersects them with those anyway).
    return { tag: "allow", val: { user: found, audiences: review.audiences, expiresAt: undefined } };
  },
};
