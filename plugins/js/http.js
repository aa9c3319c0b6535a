// A bounded, blocking HTTP GET over `wasi:http/outgoing-handler@0.2` for QuickJS policies built
// against the `policy-http` world (plugins/languages.sh: `build_js_http`, which builds it with
// the wasi: packages renamed and names them back: see plugins/js/README.md, "Outbound HTTP").
//
//   import { httpGet } from "./http.js";
//   const { status, body } = httpGet(url, [["accept", "application/json"]]); // body: Uint8Array
//
// The host decides what a request may reach (the manifest's `allowed_outbound_hosts`, and for a
// loopback or private address the operator's tenants file). A refused or failed request, or a
// body over the bound, throws an HttpError (never a trap). Plain imported resources, no event
// loop: a result<> import that fails throws an Error whose `payload` is the error value; a
// nested result is { tag: "ok" | "err", val }.
import { handle } from "wasi:http/outgoing-handler@0.2.12";
import { Fields, OutgoingRequest } from "wasi:http/types@0.2.12";
import { utf8Encode } from "./utf8.js";

// The guest's own bound on a body (the host caps it too: manifest [outbound] max_response_kib).
export const MAX_BODY = 1 << 20;

export class HttpError extends Error {}

// GETs `url`; returns { status, body: Uint8Array }, whatever the status (check it).
export function httpGet(url, headers = [], maxBody = MAX_BODY) {
  const m = /^(https?):\/\/([^/?#]+)([^#]*)/.exec(url);
  if (!m) throw new HttpError(`not an http(s) URL: ${JSON.stringify(url)}`);
  const req = new OutgoingRequest(Fields.fromList(headers.map(([k, v]) => [k, utf8Encode(v)])));
  req.setMethod({ tag: "get" });
  req.setScheme({ tag: m[1] === "https" ? "HTTPS" : "HTTP" }); // the WIT case names: HTTP, HTTPS
  req.setAuthority(m[2]);
  req.setPathWithQuery(m[3] || "/");
  let future;
  try {
    future = handle(req, undefined); // takes the request
  } catch (e) {
    throw new HttpError(`request refused: ${errText(e)}`);
  }
  let got = future.get();
  if (got == null) {
    const ready = future.subscribe();
    ready.block();
    ready[Symbol.dispose]();
    got = future.get();
  }
  future[Symbol.dispose]();
  // option<result<result<incoming-response, error-code>>>
  if (got == null || got.tag !== "ok") throw new HttpError("no response");
  if (got.val.tag !== "ok") throw new HttpError(`request failed: ${errText(got.val.val)}`);
  const response = got.val.val;
  const status = response.status();
  const body = response.consume();
  const stream = body.stream();
  const chunks = [];
  let size = 0;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = stream.blockingRead(64 * 1024);
      } catch (e) {
        if (payload(e)?.tag === "closed") break;
        throw new HttpError("reading the body failed");
      }
      size += chunk.length;
      if (size > maxBody) throw new HttpError(`body larger than ${maxBody} bytes`);
      chunks.push(chunk);
    }
  } finally {
    stream[Symbol.dispose](); // the stream (a child) before the body, the body before the response
    body[Symbol.dispose]();
    response[Symbol.dispose]();
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return { status, body: out };
}

// A failing result<> import throws an object whose `payload` is the error value.
function payload(e) {
  return e !== null && typeof e === "object" && "payload" in e ? e.payload : e;
}

// An error-code value as text: its case name (`HTTP-request-denied`), never a body.
function errText(e) {
  const p = payload(e);
  if (p instanceof Error) return p.message;
  if (p !== null && typeof p === "object" && typeof p.tag === "string") return p.tag;
  return String(p);
}
