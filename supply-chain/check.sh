#!/usr/bin/env bash
# The supply-chain gate of `make test` (SECURITY.md, "Supply chain"): every lock file — the host
# workspace's Cargo.lock, the guests' plugins/Cargo.lock and the fuzz targets' fuzz/Cargo.lock —
# checked by cargo-deny against the RustSec advisory database, offline, and against the license,
# duplicate-version and source policy in supply-chain/deny.toml. Any advisory that affects a
# locked version fails the run with its id; an exception is an `ignore` entry with its reason in
# deny.toml. First, each vendored crate is proven to be the package it says it is (vendored.py).
#
# The database: supply-chain/advisory-db (a committed copy, so a clean clone checks offline
# against a known snapshot), or the workplace's newer ../shared/advisory-db when it is there, or
# $ADVISORY_DB. Installs cargo-deny (pinned, built from crates.io with its own lock file) into
# target/tools when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DENY_VERSION=0.20.2
tools="$root/target/tools"
deny="$tools/bin/cargo-deny"
if ! "$deny" --version 2>/dev/null | grep -qx "cargo-deny $DENY_VERSION"; then
  echo "supply-chain: installing cargo-deny $DENY_VERSION (crates.io, --locked) into target/tools"
  CARGO_TARGET_DIR="$tools/build" cargo install --quiet --locked --root "$tools" --version "=$DENY_VERSION" cargo-deny
fi

committed="$root/supply-chain/advisory-db"
shared="$root/../shared/advisory-db"
db_src=${ADVISORY_DB:-}
if [ -z "$db_src" ]; then
  db_src=$committed
  if [ -d "$shared/crates" ]; then
    db_src=$shared
    if ! diff -rq "$shared" "$committed" >/dev/null 2>&1; then
      echo "supply-chain: ../shared/advisory-db differs from the committed copy; checking against the shared one." \
        "Refresh the copy: rsync -a --delete ../shared/advisory-db/ supply-chain/advisory-db/"
    fi
  fi
fi
[ -d "$db_src/crates" ] || { echo "supply-chain: no advisory database at $db_src" >&2; exit 1; }
echo "supply-chain: advisories from $db_src, snapshot $(grep -m1 -oE '[0-9a-f]{40} \([0-9-]{10}\)' "$db_src/SNAPSHOT.md" 2>/dev/null || echo '(no SNAPSHOT.md)')"

# cargo-deny opens each database as a git checkout under db-path, named after its URL's last
# segment and the XXH64 of the URL (it reads the time of the last fetch from git): a throwaway
# one, made from the copy, under the name of deny.toml's db-urls entry.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="$work/advisory-db-3157b0e258782691"
cp -r "$db_src" "$db"
git -C "$db" init -q
git -C "$db" add -A
git -C "$db" -c user.name=tollgate -c user.email=tollgate@localhost commit -q -m "advisory-db snapshot"

status=0
python3 supply-chain/vendored.py || status=1
for manifest in Cargo.toml plugins/Cargo.toml fuzz/Cargo.toml; do
  echo "supply-chain: cargo deny check ($manifest)"
  # The exceptions are written for the host's graph, the largest: the guests' and the fuzz
  # targets' graphs hold only some of what they name, which is no news there.
  quiet=()
  [ "$manifest" = Cargo.toml ] || quiet=(-A unmatched-skip -A unnecessary-skip -A advisory-not-detected)
  # The crates first (cargo-deny reads their manifests), then the check with nothing fetched:
  # --frozen is --locked (the lock file as committed) and --offline (no database fetch).
  cargo fetch --quiet --locked --manifest-path "$manifest"
  TOLLGATE_ADVISORY_DBS="$work" "$deny" --manifest-path "$manifest" --config supply-chain/deny.toml --frozen \
    check "${quiet[@]}" advisories licenses bans sources || status=1
done
exit $status
