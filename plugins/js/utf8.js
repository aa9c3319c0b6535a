// UTF-8 for QuickJS, which has no TextEncoder/TextDecoder.

// The UTF-8 bytes of a string (strings from the host are valid Unicode).
export function utf8Encode(s) {
  // Each step native (a loop over the bytes in QuickJS costs ~0.1 µs a byte).
  return Uint8Array.fromBase64(btoa(unescape(encodeURIComponent(s))));
}

// The string of UTF-8 bytes; throws a URIError on malformed UTF-8.
export function utf8Decode(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  return binaryToUtf8(s);
}

// The string of a "binary string" (one char per byte, as `atob` returns) holding UTF-8; throws a
// URIError on malformed UTF-8. ASCII, the common case, is its own decoding.
export function binaryToUtf8(binary) {
  return /[^\x00-\x7f]/.test(binary) ? decodeURIComponent(escape(binary)) : binary;
}
