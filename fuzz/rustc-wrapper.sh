#!/usr/bin/env bash
# Instruments only tollgate (host and crypto) and the fuzz targets for AFL++ (SanitizerCoverage trace-pc-guard,
# AFL++'s runtime linked into the targets): the coverage map holds tollgate's own branches, and
# the dependencies (wasmtime among them) build as usual.
rustc="$1"; shift
case "$CARGO_PKG_NAME" in
  tollgate|tollgate-crypto|tollgate-fuzz)
    exec "$rustc" "$@" --cfg fuzzing \
      -C passes=sancov-module \
      -C llvm-args=-sanitizer-coverage-level=3 \
      -C llvm-args=-sanitizer-coverage-trace-pc-guard \
      -C llvm-args=-sanitizer-coverage-prune-blocks=0 \
      -C link-arg="${AFL_RUNTIME:-/usr/lib/afl/afl-compiler-rt.o}" ;;
  *) exec "$rustc" "$@" ;;
esac
