// oidc-jwt in JavaScript: JWTs from one OpenID issuer, like kube-apiserver's `--oidc-*` flags.
//
// Same config, decisions and reasons as plugins/oidc-jwt (Rust); built against the `policy-http`
// world (it fetches the issuer's keys):
// - `issuer` (required): the `iss` the tokens carry; tokens of other issuers get `abstain`.
// - `audiences` (required): comma-separated; the token's `aud` must name one.
// - `username_claim` (default `sub`), `username_prefix` (default `<issuer>#`, none for `email`;
//   `-` for none), `groups_claim` (default none), `groups_prefix` (default none), `uid_claim`.
// - `clock_skew_seconds` (default 60), `algorithms` (default `RS256,ES256`).
// - Keys: `jwks` (a JWKS document inline: no fetching), or `jwks_uri`, or discovery at
//   `<issuer>/.well-known/openid-configuration` (the default). A fetched JWKS is kept in the
//   plugin's cache (`tollgate:policy/kv`) for `jwks_cache_seconds` (default 300); a token whose
//   key the cached set lacks fetches it once more, at most every `jwks_refetch_seconds` (default 10).
//
// The signature is the host's to verify (`verifyJws` of ./crypto.js: ring, at native speed); the
// claims are checked here. Answers: `abstain` for tokens that are not JWTs or not this issuer's;
// `deny` for a bad signature, unknown key, wrong audience, expiry...; `unavailable` when the keys
// cannot be had (the issuer is down and nothing is cached). The token is never logged.

import { config, log } from "tollgate:policy/host@0.1.2";
import * as kv from "tollgate:policy/kv@0.1.2";
// Date.now() is stubbed out with the rest of QuickJS's WASI (it traps): the world names the clock.
import { now as wallClock } from "wasi:clocks/wall-clock@0.2.12";
import { JwsError, verifyJws } from "./crypto.js";
import { HttpError, httpGet } from "./http.js";
import { splitList, trim } from "./text.js";
import { binaryToUtf8, utf8Decode, utf8Encode } from "./utf8.js";

// The algorithms the host verifies (contract 0.1.2).
const ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

// kv keys (the same as the Rust policy's).
const JWKS = "jwks";
const JWKS_URI = "jwks-uri";
const REFETCHED = "jwks-refetched";

// The review's answer, thrown from deep inside.
class Refused {
  constructor(decision) {
    this.decision = decision;
  }
}
const deny = (reason) => new Refused({ tag: "deny", val: reason });
const unavailable = (reason) => new Refused({ tag: "unavailable", val: reason });

class Misconfigured extends Error {}

// ---- settings ------------------------------------------------------------------------------

function setting(key) {
  const v = trim(config(key) ?? "");
  return v === "" ? undefined : v;
}

// Rust's unsigned `parse`: ASCII digits, an optional `+`, no overflow (`max`: 2^32 or 2^64).
function number(key, fallback, max) {
  const v = setting(key);
  if (v === undefined) return fallback;
  if (!/^\+?[0-9]+$/.test(v) || BigInt(v.replace(/^\+/, "")) >= BigInt(max)) {
    throw new Misconfigured(`${key} must be a number`);
  }
  return Number(v.replace(/^\+/, ""));
}

function settings() {
  const issuer = setting("issuer");
  if (issuer === undefined) throw new Misconfigured("no issuer configured");
  const audiences = setting("audiences");
  if (audiences === undefined) throw new Misconfigured("no audiences configured");
  const usernameClaim = setting("username_claim") ?? "sub";
  const prefix = setting("username_prefix");
  const usernamePrefix =
    prefix === "-" ? "" : prefix !== undefined ? prefix : usernameClaim === "email" ? "" : `${issuer}#`;
  const algs = setting("algorithms");
  const algorithms = algs === undefined ? ["RS256", "ES256"] : splitList(algs);
  const unsupported = algorithms.find((a) => !ALGORITHMS.includes(a));
  if (unsupported !== undefined) {
    throw new Misconfigured(`algorithm ${unsupported} is not supported (${ALGORITHMS.join(", ")})`);
  }
  return {
    issuer,
    audiences: splitList(audiences),
    usernameClaim,
    usernamePrefix,
    groupsClaim: setting("groups_claim"),
    groupsPrefix: setting("groups_prefix") ?? "",
    uidClaim: setting("uid_claim"),
    skew: number("clock_skew_seconds", 60, 2 ** 64),
    algorithms,
    jwks: setting("jwks"),
    jwksUri: setting("jwks_uri"),
    jwksCache: Math.max(number("jwks_cache_seconds", 300, 2 ** 32), 1),
    refetchEvery: Math.max(number("jwks_refetch_seconds", 10, 2 ** 32), 1),
  };
}

// ---- the unverified peek (routing only) ----------------------------------------------------

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// The text of a strict unpadded base64url part (canonical: no stray bits) holding UTF-8, or
// undefined. Decoded natively (`atob`): a loop over the characters in QuickJS cost ~0.3 ms per
// token, more than the rest of the review.
function b64urlText(part) {
  if (!/^[A-Za-z0-9_-]*$/.test(part) || part.length % 4 === 1) return undefined;
  // `atob` ignores stray bits in the last character: refuse them here (canonical encoding).
  const stray = [0, 0, 15, 3][part.length % 4];
  if (stray !== 0 && (B64URL.indexOf(part[part.length - 1]) & stray) !== 0) return undefined;
  try {
    return binaryToUtf8(atob(part.replace(/-/g, "+").replace(/_/g, "/") + ["", "", "==", "="][part.length % 4]));
  } catch {
    return undefined;
  }
}

// A number beyond a double (1e400, a 400-digit integer) is no JSON to serde_json, the Rust
// policy's reader: here neither (JSON.parse reads it as Infinity). Only a text that may hold one
// (a digit before an exponent, or 309 digits in a row) pays for the check of every value.
const MAYBE_HUGE = /[0-9][eE]|[0-9]{309}/;
function finiteOnly(_key, value) {
  if (typeof value === "number" && !Number.isFinite(value)) throw new RangeError("a number beyond a double");
  return value;
}

function jsonObject(text) {
  let v;
  try {
    v = MAYBE_HUGE.test(text) ? JSON.parse(text, finiteOnly) : JSON.parse(text);
  } catch {
    return undefined;
  }
  return v !== null && typeof v === "object" && !Array.isArray(v) ? v : undefined;
}

// The payload of a JWS compact token, NOT verified (to route it): its text and claims, or
// undefined when `token` is not one (three base64url parts, JSON header naming `alg`, JSON
// payload): not ours to judge.
function unverifiedPayload(token) {
  if (token.length > 64 * 1024) return undefined;
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  const headerText = b64urlText(parts[0]);
  const text = b64urlText(parts[1]);
  if (headerText === undefined || text === undefined) return undefined;
  const header = jsonObject(headerText);
  const claims = jsonObject(text);
  if (header === undefined || claims === undefined || typeof header.alg !== "string") return undefined;
  return { text, claims };
}

// ---- the claims (after the host verified the signature) ------------------------------------

const own = (o, k) => (Object.prototype.hasOwnProperty.call(o, k) ? o[k] : undefined);

// A JSON number as an unsigned integer (Rust: `as_u64`, else the float saturated), or undefined.
function asU64(v) {
  if (typeof v !== "number") return undefined;
  if (v <= 0 || Number.isNaN(v)) return 0;
  return Math.min(Math.trunc(v), 2 ** 64 - 1);
}

// A NumericDate claim as whole seconds (jwt-verify's `numeric_date`): undefined when absent or
// not a number, a fraction cut, a negative number 0, and one beyond 2^53 - 1 (the last integer a
// number holds exactly) refused.
function numericDate(claims, name) {
  const seconds = asU64(own(claims, name));
  if (seconds !== undefined && seconds > Number.MAX_SAFE_INTEGER) throw deny(`the token's ${name} is out of range`);
  return seconds;
}

// Checks `iss`, `aud`, `exp` (required), `nbf` and that `iat` is in range; returns `exp`.
function checkClaims(claims, s, now) {
  if (own(claims, "iss") !== s.issuer) throw deny("wrong issuer");
  const aud = own(claims, "aud");
  const audOk =
    typeof aud === "string"
      ? s.audiences.includes(aud)
      : Array.isArray(aud) && aud.some((a) => typeof a === "string" && s.audiences.includes(a));
  if (!audOk) throw deny("wrong audience");
  const exp = numericDate(claims, "exp");
  if (exp === undefined) throw deny("the token has no exp");
  const nbf = numericDate(claims, "nbf");
  numericDate(claims, "iat");
  if (now >= exp + s.skew) throw deny(`expired at ${exp}`);
  if (nbf !== undefined && nbf > now + s.skew) throw deny(`not valid before ${nbf}`);
  return exp;
}

// A claim as a list of strings (a JSON array of strings, or one string).
function stringList(claims, name) {
  const v = own(claims, name);
  if (v === undefined || v === null) return [];
  if (typeof v === "string") return [v];
  if (Array.isArray(v)) {
    if (!v.every((g) => typeof g === "string")) throw deny(`claim ${name} holds a non-string`);
    return v.slice();
  }
  throw deny(`claim ${name} is neither a string nor a list of strings`);
}

// ---- keys ----------------------------------------------------------------------------------

// The text last decoded per kv key: a warm instance reads the same cached JWKS review after
// review, and comparing its bytes (natively, as hex) costs less than decoding them again.
const decoded = new Map();

function kvText(key) {
  const v = kv.get(key);
  if (v === undefined || v === null) return undefined;
  const hex = v.toHex();
  const last = decoded.get(key);
  if (last !== undefined && last.hex === hex) return last.text;
  try {
    const text = utf8Decode(v);
    decoded.set(key, { hex, text });
    return text;
  } catch {
    return undefined;
  }
}

// Stores; the error text if the cache refused.
function kvSet(key, text, ttl) {
  try {
    kv.set(key, utf8Encode(text), ttl);
    return undefined;
  } catch (e) {
    return String(e?.payload ?? e?.message ?? e);
  }
}

function getOk(url, what) {
  const { status, body } = httpGet(url, [["accept", "application/json"]]);
  if (status !== 200) throw new HttpError(`${what} answered ${status}`);
  return body;
}

function textOf(bytes, what) {
  try {
    return utf8Decode(bytes);
  } catch {
    throw new HttpError(what);
  }
}

function jwksUri(s) {
  if (s.jwksUri !== undefined) return s.jwksUri;
  const cached = kvText(JWKS_URI);
  if (cached !== undefined) return cached;
  const url = `${s.issuer.replace(/\/+$/, "")}/.well-known/openid-configuration`;
  const text = textOf(getOk(url, `discovery at ${url}`), "discovery document: not UTF-8");
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new HttpError(`discovery document: ${e.message}`);
  }
  doc = doc !== null && typeof doc === "object" && !Array.isArray(doc) ? doc : {};
  // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
  if (own(doc, "issuer") !== s.issuer) throw new HttpError("the discovery document names another issuer");
  const uri = own(doc, "jwks_uri");
  if (typeof uri !== "string") throw new HttpError("the discovery document has no jwks_uri");
  kvSet(JWKS_URI, uri, s.jwksCache);
  return uri;
}

// Fetches the JWKS (through discovery unless `jwks_uri` is set) and caches it; undefined if it
// cannot be had (logged).
function fetchJwks(s) {
  try {
    const uri = jwksUri(s);
    const text = textOf(getOk(uri, uri), `${uri} answered with a JWKS that is not UTF-8`);
    let doc;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new HttpError(`the JWKS at ${uri} is not JSON: ${e.message}`);
    }
    const keys = doc !== null && typeof doc === "object" ? own(doc, "keys") : undefined;
    if (!Array.isArray(keys)) throw new HttpError(`the JWKS at ${uri} has no keys`);
    log("info", `fetched ${keys.length} signing keys from ${uri}`);
    const error = kvSet(JWKS, text, s.jwksCache);
    if (error !== undefined) log("warn", `cannot cache the JWKS: ${error}`);
    // The text as fetched, unchanged: the host's parsed-keys cache is keyed by it.
    return text;
  } catch (e) {
    if (!(e instanceof HttpError)) throw e;
    log("warn", `the issuer's keys are unavailable: ${e.message}`);
    return undefined;
  }
}

// The JWKS text to verify with (inline, cached, or fetched and cached), and whether it was
// fetched just now (so that a missing key does not fetch it twice).
function jwks(s) {
  if (s.jwks !== undefined) return [s.jwks, false];
  const cached = kvText(JWKS);
  if (cached !== undefined) return [cached, false];
  const fetched = fetchJwks(s);
  if (fetched === undefined) throw unavailable(`cannot get the signing keys of ${s.issuer}`);
  return [fetched, true];
}

function verifySignature(s, token) {
  const [keys, fetched] = jwks(s);
  try {
    try {
      return verifyJws(token, keys, s.algorithms);
    } catch (e) {
      // A key the JWKS lacks: the issuer may have rotated. Ask again, but not often.
      const again = e instanceof JwsError && e.kind === "no-key" && !fetched && s.jwks === undefined;
      if (!again || kv.get(REFETCHED) != null) throw e;
      kvSet(REFETCHED, "1", s.refetchEvery);
      return verifyJws(token, fetchJwks(s) ?? keys, s.algorithms);
    }
  } catch (e) {
    if (!(e instanceof JwsError)) throw e;
    if (e.kind === "jwks") throw unavailable(`the signing keys of ${s.issuer} are unusable: ${e.detail}`);
    if (e.kind === "algorithm") throw deny(`algorithm not accepted: ${e.detail}`);
    throw deny(e.message);
  }
}

function verify(s, token, peeked) {
  const verified = verifySignature(s, token);
  // The host decoded the same part of the same token: parse it again only if it differs.
  const claims = verified.payload === peeked.text ? peeked.claims : jsonObject(verified.payload);
  if (claims === undefined) throw deny("the token's claims are not a JSON object");
  const exp = checkClaims(claims, s, Number(wallClock().seconds));
  const claim = (name) => {
    const v = own(claims, name);
    return typeof v === "string" && v !== "" ? v : undefined;
  };
  const username = claim(s.usernameClaim);
  if (username === undefined) throw deny(`no ${s.usernameClaim} claim to name the user`);
  if (s.usernameClaim === "email" && own(claims, "email_verified") === false) {
    throw deny("the email is not verified");
  }
  const user = { username: s.usernamePrefix + username, uid: "", groups: [], extra: [] };
  if (s.uidClaim !== undefined) user.uid = claim(s.uidClaim) ?? "";
  if (s.groupsClaim !== undefined) user.groups = stringList(claims, s.groupsClaim).map((g) => s.groupsPrefix + g);
  // QuickJS passes u64 as a plain number: `numericDate` keeps it one it represents exactly.
  return { user, audiences: [], expiresAt: exp };
}

let loaded;

export const authenticator = {
  authenticate(review) {
    // The manifest's [config] is fixed for an instance's life (a reload makes new instances):
    // a warm instance reads it once.
    if (loaded === undefined) {
      try {
        loaded = { settings: settings() };
      } catch (e) {
        if (!(e instanceof Misconfigured)) throw e;
        loaded = { misconfigured: `oidc-jwt is misconfigured: ${e.message}` };
      }
    }
    if (loaded.misconfigured !== undefined) return { tag: "unavailable", val: loaded.misconfigured };
    const s = loaded.settings;
    const peeked = unverifiedPayload(review.token);
    if (peeked === undefined || own(peeked.claims, "iss") !== s.issuer) return { tag: "abstain" };
    try {
      return { tag: "allow", val: verify(s, review.token, peeked) };
    } catch (e) {
      if (e instanceof Refused) return e.decision;
      throw e;
    }
  },
};
