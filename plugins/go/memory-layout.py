#!/usr/bin/env python3
"""Gives a Go wasip1 core module's memory a headroom that the WASI adapter can never collide with.

usage: memory-layout.py IN.wasm OUT.wasm HEADROOM_MIB

Why (see README.md, "Go"): with `wasm-tools component new --realloc-via-memory-grow`, the wasip1
adapter takes its state by `memory.grow` from the top of linear memory, during Go's runtime start.
Go's heap (runtime/mem_wasm.go `sbrk`) starts at the end of Go's data and believes it owns
everything above it; it grows memory by exactly what its break advances, so `memory.size - break`
stays what the linker left at start (1 MiB) and the adapter's pages sit right above that gap:
once Go's heap grows by ~1 MiB, Go and the adapter write over each other.

This rewrites the module's only memory from `min = I` to `min = I + H, max = I + 2H` (H =
HEADROOM_MIB): the gap between Go's break and the adapter's pages is then at least H + 1 MiB, and
with the maximum Go's break can never advance by more than H before `memory.grow` fails (Go's
"out of memory" throw: a trap, the plugin fails closed). Proof: memory.size = blocMax + G + K
(G = the gap at start, K = adapter pages) and memory.size <= I + 2H give blocMax <= I + 2H - G,
while every adapter page is at or above blocMax0 + G; I + 2H - G <= blocMax0 + G holds because
G = I + H - blocMax0 and blocMax0 <= I.
"""

import sys

PAGE = 64 * 1024


def uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def enc(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def main() -> None:
    src, dst, headroom_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = open(src, "rb").read()
    if data[:8] != b"\0asm\x01\0\0\0":
        sys.exit(f"{src}: not a core wasm module")
    out = bytearray(data[:8])
    pos, memories = 8, 0
    while pos < len(data):
        section_id = data[pos]
        size, body = uleb(data, pos + 1)
        end = body + size
        if section_id == 5:  # memory section
            count, p = uleb(data, body)
            flags = data[p]
            if count != 1 or flags != 0x00:
                sys.exit(f"{src}: expected one memory with a minimum only (flags 0), found {count} (flags {flags:#x})")
            initial, p = uleb(data, p + 1)
            if p != end:
                sys.exit(f"{src}: unexpected bytes in the memory section")
            h = headroom_mib * 1024 * 1024 // PAGE
            payload = enc(1) + b"\x01" + enc(initial + h) + enc(initial + 2 * h)
            out += bytes([5]) + enc(len(payload)) + payload
            memories += 1
        else:
            out += data[pos:end]
        pos = end
    if memories != 1:
        sys.exit(f"{src}: no memory section")
    open(dst, "wb").write(out)


if __name__ == "__main__":
    main()
