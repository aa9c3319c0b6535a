// Text helpers shared by the JavaScript policies, matching the Rust examples' parsing exactly.
// Rust's `split_whitespace`/`trim` use Unicode White_Space; JavaScript's `\s` also has U+FEFF,
// so the set is spelled out.

const WS = "\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const WS_RUN = new RegExp(`[${WS}]+`);
const TRIM = new RegExp(`^[${WS}]+|[${WS}]+$`, "g");

/** `str::trim`. */
export function trim(s) {
  return s.replace(TRIM, "");
}

/** `str::split_whitespace`. */
export function fields(s) {
  return s.split(WS_RUN).filter((f) => f !== "");
}

/** [line number, content] of each line that is not blank once its `#` comment is cut. */
export function contentLines(text) {
  const out = [];
  text.split("\n").forEach((line, i) => {
    const content = trim(line.split("#")[0]);
    if (content !== "") out.push([i + 1, content]);
  });
  return out;
}

/** Comma-separated items, trimmed, empty ones skipped. */
export function splitList(s) {
  return s.split(",").map(trim).filter((x) => x !== "");
}
