#!/usr/bin/env python3
"""Proves each crate in vendor/ is the published package it says it is (vendor/README.md).

Downloads the package from the registry cargo uses, checks its SHA-256 against the registry
index (as cargo does), and compares it file by file with the vendored copy: every file must be
byte-identical, except the version line of Cargo.toml (the only edit allowed, listed below) and
cargo's own unpack marker. Exits non-zero on any difference, naming the file.
"""

import hashlib
import io
import json
import pathlib
import sys
import tarfile
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
INDEX = "https://index.crates.io"

# (folder in vendor/, crate, published version it is, version it is relabeled as)
VENDORED = [
    ("wasmtime-internal-wit-bindgen", "wasmtime-internal-wit-bindgen", "48.0.10", "48.0.11"),
]


def index_path(name: str) -> str:
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[:2]}/{name[2:4]}/{name}"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return answer.read()


def published(name: str, version: str) -> tuple[dict[str, bytes], str]:
    config = json.loads(fetch(f"{INDEX}/config.json"))
    entries = [json.loads(line) for line in fetch(f"{INDEX}/{index_path(name)}").decode().splitlines() if line.strip()]
    entry = next((e for e in entries if e["vers"] == version), None)
    if entry is None:
        sys.exit(f"vendor: {name} {version} is not in the registry index")
    package = fetch(f"{config['dl']}/{name}/{version}/download")
    digest = hashlib.sha256(package).hexdigest()
    if digest != entry["cksum"]:
        sys.exit(f"vendor: {name} {version}: downloaded package sha256 {digest} != index {entry['cksum']}")
    files = {}
    prefix = f"{name}-{version}/"
    with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix):
                files[member.name[len(prefix):]] = tar.extractfile(member).read()
    return files, digest


def main() -> int:
    failed = False
    for folder, name, version, relabeled in VENDORED:
        theirs, digest = published(name, version)
        ours_dir = ROOT / "vendor" / folder
        ours = {str(p.relative_to(ours_dir)): p.read_bytes() for p in ours_dir.rglob("*") if p.is_file()}
        theirs.pop(".cargo-ok", None)
        expected_toml = theirs.get("Cargo.toml", b"").replace(
            f'\nversion = "{version}"\n'.encode(), f'\nversion = "{relabeled}"\n'.encode(), 1
        )
        theirs["Cargo.toml"] = expected_toml
        for path in sorted(set(theirs) | set(ours)):
            if path not in ours:
                print(f"vendor: {folder}/{path} is missing (the published package has it)")
                failed = True
            elif path not in theirs:
                print(f"vendor: {folder}/{path} is not in the published package")
                failed = True
            elif ours[path] != theirs[path]:
                print(f"vendor: {folder}/{path} differs from {name} {version} as published")
                failed = True
        if not failed:
            print(f"vendor: {folder} is {name} {version} as published (sha256 {digest[:16]}…), relabeled {relabeled}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
