// UTF-8 for QuickJS, which has no TextEncoder/TextDecoder.

// The UTF-8 bytes of a string (strings from the host are valid Unicode).
export function utf8Encode(s) {
  const b = unescape(encodeURIComponent(s));
  const out = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) out[i] = b.charCodeAt(i);
  return out;
}

// The string of UTF-8 bytes; throws a URIError on malformed UTF-8.
export function utf8Decode(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  return decodeURIComponent(escape(s));
}
