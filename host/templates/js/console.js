// `console` for a QuickJS policy, which has none: console.log, info, warn, error and debug each
// write one line to the host's log (which tags it with tenant, plugin and request id), at the
// matching level. Import it before anything that logs: `import "./console.js";`.
// Never log the token, nor a part of it (the host replaces any 8 bytes or more of it with [token]).
import { log } from "tollgate:policy/host@0.1.2";

// console.log's way with its arguments: strings as they are, anything else as JSON if it can be.
function show(value) {
  if (typeof value === "string") return value;
  if (value instanceof Error) return value.stack ? `${value}\n${value.stack}` : String(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value); // a BigInt, a cycle
  }
}

const to = (level) => (...args) => log(level, args.map(show).join(" "));

globalThis.console = { log: to("info"), info: to("info"), warn: to("warn"), error: to("error"), debug: to("debug") };
