#!/usr/bin/env bash
# `make fuzz`: builds the targets (fuzz/src/bin) instrumented and runs AFL++ on each for
# FUZZ_SECONDS (default 300), then prints inputs executed and crashes per target and in all.
# Exits non-zero when any target crashed; crashing inputs stay in target/fuzz/out/TARGET/.
# Installs Debian's afl++ when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-300}
TARGETS=${FUZZ_TARGETS:-"token_review manifest tenants_file guardrails scrubber jws"}
OUT=target/fuzz/out
command -v afl-fuzz >/dev/null || { apt-get update -qq && apt-get install -y -qq afl++; }

# --target: the wrapper's flags reach the targets' crates only, never build scripts.
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTC_WRAPPER="$PWD/fuzz/rustc-wrapper.sh" CARGO_TARGET_DIR="$PWD/target/fuzz" \
  cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" --bins
bin=target/fuzz/$triple/release

# This machine's core_pattern and CPU governor are not AFL++'s business: crashes are read from
# the output directory, and timing is not what is measured here.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_QUIET=1

total_execs=0
total_crashes=0
printf '%-14s %14s %10s %8s\n' target inputs exec/s crashes
for t in $TARGETS; do
  rm -rf "$OUT/$t" && mkdir -p "$OUT/$t"
  timeout -s INT $((SECONDS_EACH + 30)) afl-fuzz -V "$SECONDS_EACH" -i "fuzz/seeds/$t" -o "$OUT/$t" \
    -- "$bin/$t" > "$OUT/$t.log" 2>&1 || { echo "afl-fuzz on $t failed:"; tail -20 "$OUT/$t.log"; exit 1; }
  stats="$OUT/$t/default/fuzzer_stats"
  execs=$(awk -F' *: *' '$1=="execs_done"{print $2}' "$stats")
  speed=$(awk -F' *: *' '$1=="execs_per_sec"{print $2}' "$stats")
  crashes=$(awk -F' *: *' '$1=="saved_crashes"||$1=="unique_crashes"{print $2}' "$stats" | head -1)
  printf '%-14s %14s %10s %8s\n' "$t" "$execs" "$speed" "$crashes"
  total_execs=$((total_execs + execs))
  total_crashes=$((total_crashes + crashes))
done
printf '%-14s %14s %10s %8s\n' all "$total_execs" "" "$total_crashes"
if [ "$total_crashes" -gt 0 ]; then
  echo "crashing inputs: $OUT/*/default/crashes/" >&2
  exit 1
fi
