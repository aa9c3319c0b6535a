#!/usr/bin/env python3
"""unshim.py IN.wasm OUT.wasm: names a jco/QuickJS component's own `shim:` imports `wasi:` again.

jco's QuickJS backend (componentize-qjs, `--backend-qjs-stub-wasi`) treats every `wasi:` import
of the world as its runtime's WASI and stubs it out, so a policy that imports wasi:http is built
against a copy of the WIT with every `wasi:` package renamed `shim:` (languages.sh,
`build_js_http`). This renames the imports of the OUTER component back: `shim:` and `wasi:` have
the same length, so the names are patched in place in the top-level import sections and nothing
else moves. The nested components keep their names (their imports are wired inside the
component: renaming them would clash with the runtime's own stubbed `wasi:` imports).
"""

import sys

MAGIC_COMPONENT = b"\x00asm\x0d\x00\x01\x00"
IMPORT_SECTION = 10


def leb(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    data = bytearray(open(src, "rb").read())
    if data[:8] != MAGIC_COMPONENT:
        sys.exit(f"{src}: not a component")
    at, renamed = 8, 0
    while at < len(data):
        section, at = data[at], at + 1
        size, at = leb(data, at)
        if section == IMPORT_SECTION:
            body = bytes(data[at : at + size])
            renamed += body.count(b"shim:")
            data[at : at + size] = body.replace(b"shim:", b"wasi:")
        at += size
    if at != len(data):
        sys.exit(f"{src}: truncated section")
    if renamed == 0:
        sys.exit(f"{src}: no shim: import to rename")
    open(dst, "wb").write(data)


if __name__ == "__main__":
    main()
