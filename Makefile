# tollgate: the two commands are `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
HOST_TRIPLE := $(shell rustc -vV | sed -n 's/^host: //p')
GUESTS := target/guests/wasm32-wasip2/release
PLUGINS_DIR := target/plugins
TOLLGATE := target/release/tollgate
LANGUAGES := python js c go

.PHONY: run plugins languages test build toolchain registry supply-chain clean bench fuzz

## Installs the guest target when missing (rust-toolchain.toml does not install targets).
toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## The binary as `make test` builds it: the same command resolves the same features (dev-
## dependencies included), so `make run` after `make test` (or the other way round) rebuilds
## nothing, where `cargo build -p tollgate` would rebuild wasmtime for minutes.
build: toolchain
	$(CARGO) test --release --workspace --no-run

## Builds the example plugins (Rust, then Python, JavaScript, C and Go, installing their
## toolchains when missing) and lays them out as a plugin directory in target/plugins: the Rust
## pair in the default tenant, each other language's pair as a tenant of its own.
plugins: toolchain languages
	cd plugins && $(CARGO) build --release
	rm -rf $(PLUGINS_DIR) && mkdir -p $(PLUGINS_DIR)
	cp $(GUESTS)/static_tokens.wasm $(PLUGINS_DIR)/10-static-tokens.wasm
	cp plugins/static-tokens/static-tokens.toml $(PLUGINS_DIR)/10-static-tokens.toml
	cp $(GUESTS)/group_mapper.wasm $(PLUGINS_DIR)/50-group-mapper.wasm
	cp plugins/group-mapper/group-mapper.toml $(PLUGINS_DIR)/50-group-mapper.toml
	for lang in $(LANGUAGES); do \
	  mkdir -p $(PLUGINS_DIR)/$$lang && \
	  cp target/guests/$$lang/static-tokens.wasm $(PLUGINS_DIR)/$$lang/10-static-tokens.wasm && \
	  cp plugins/$$lang/static-tokens.toml $(PLUGINS_DIR)/$$lang/10-static-tokens.toml && \
	  cp target/guests/$$lang/group-mapper.wasm $(PLUGINS_DIR)/$$lang/50-group-mapper.wasm && \
	  cp plugins/$$lang/group-mapper.toml $(PLUGINS_DIR)/$$lang/50-group-mapper.toml || exit 1; \
	done

## The other languages' toolchains and components (target/guests/LANG).
languages:
	plugins/languages.sh $(LANGUAGES)

## Builds everything and serves the example plugins on $(LISTEN) (compiled code cached in
## target/compile-cache, so a restart is quick even with the Python components).
run: build plugins
	$(TOLLGATE) check $(PLUGINS_DIR) --cache-dir target/compile-cache
	$(TOLLGATE) serve --plugins $(PLUGINS_DIR) --tenants examples/tenants.toml --listen $(LISTEN) \
	  --cache-dir target/compile-cache

## The OCI registry the end-to-end tests push to and pull from (Debian's docker-registry: the
## CNCF distribution registry), and htpasswd for its basic auth; installed when missing.
registry:
	@command -v docker-registry >/dev/null && command -v htpasswd >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry apache2-utils; }

## The supply-chain gate (SECURITY.md, "Supply chain"): every lock file against the RustSec
## advisory database, offline, and the license, duplicate-version and source policy of
## supply-chain/deny.toml (cargo-deny, pinned, installed into target/tools when missing); the
## vendored crates against their published packages.
supply-chain:
	supply-chain/check.sh

## The whole suite: the supply-chain gate, host unit tests, end-to-end tests against the real
## binary, guest unit tests. One release build serves the binary and the tests (wasmtime is
## built once).
test: toolchain languages registry supply-chain
	$(CARGO) test --release --workspace
	cd plugins && $(CARGO) test --release --target $(HOST_TRIPLE)

clean:
	$(CARGO) clean

## Coverage-guided fuzzing (issue 12): AFL++ on the TokenReview parser, the manifest and tenants
## file parsers, the guardrails, the scrubber and the JWS verifier (issue 13), FUZZ_SECONDS each
## (default 300). Installs
## Debian's afl++ when missing; fails when any target crashed (inputs in target/fuzz/out/).
FUZZ_SECONDS ?= 300
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

## Benchmarks (issues 6, 3 and 27): in-process figures (criterion, the fresh-instance ladder),
## end to end over loopback HTTP (wrk; tollgate vs a bare axum ceiling vs the seed's Flask
## server), reviews during a recompile, hot reload and restart.
## Prints one table and writes it into BENCHMARKS.md. Installs what it needs first: wrk (apt),
## Flask and componentize-py (pip, into target/bench/venv). 10-11 minutes once built.
BENCH_OUT := $(CURDIR)/target/bench
BENCH_BIN := $(BENCH_OUT)/bin
BENCH_PY := $(BENCH_OUT)/venv/bin/python3
BENCH_TARGET := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
BENCH_ARGS ?=
bench: toolchain
	@mkdir -p $(BENCH_OUT) && date +%s.%N > $(BENCH_OUT)/make-started
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@test -x $(BENCH_PY) || python3 -m venv $(BENCH_OUT)/venv
	@$(BENCH_PY) -c 'import flask' 2>/dev/null || $(BENCH_PY) -m pip install -q flask
	@test -x $(BENCH_OUT)/venv/bin/componentize-py || $(BENCH_PY) -m pip install -q componentize-py==0.25.1 \
		|| echo "componentize-py unavailable: the restart benchmark skips the large component"
	cd plugins && env -u CARGO_TARGET_DIR $(CARGO) build --release
	plugins/languages.sh
	$(CARGO) build --release -p tollgate -p tollgate-bench
	@# Private copies: the shared target dir may be rebuilt from another branch meanwhile.
	mkdir -p $(BENCH_BIN) && cp $(BENCH_TARGET)/release/tollgate $(BENCH_TARGET)/release/ceiling \
		$(BENCH_TARGET)/release/tollgate-bench $(BENCH_BIN)/
	@test -s $(BENCH_OUT)/large-python.wasm || ! test -x $(BENCH_OUT)/venv/bin/componentize-py \
		|| (cd bench/fixtures/python-abstain && PYTHONDONTWRITEBYTECODE=1 $(BENCH_OUT)/venv/bin/componentize-py \
			-d $(CURDIR)/wit -w policy componentize app -o $(BENCH_OUT)/large-python.wasm)
	$(BENCH_BIN)/tollgate-bench start --out $(BENCH_OUT) --command "make bench" --since $(BENCH_OUT)/make-started
	CRITERION_HOME=$(BENCH_OUT)/criterion TOLLGATE_BENCH_OUT=$(BENCH_OUT) \
		$(CARGO) bench -p tollgate --bench review
	TOLLGATE_BENCH_OUT=$(BENCH_OUT) $(CARGO) bench -p tollgate --bench ladder
	TOLLGATE_BENCH_OUT=$(BENCH_OUT) $(CARGO) bench -p tollgate --bench languages
	TOLLGATE_BENCH_OUT=$(BENCH_OUT) $(CARGO) bench -p tollgate --bench oidc
	$(BENCH_BIN)/tollgate-bench run --out $(BENCH_OUT) --tollgate $(BENCH_BIN)/tollgate \
		--ceiling $(BENCH_BIN)/ceiling --python $(BENCH_PY) \
		$$(test -s $(BENCH_OUT)/large-python.wasm && echo --large $(BENCH_OUT)/large-python.wasm) $(BENCH_ARGS)
	$(BENCH_BIN)/tollgate-bench report --out $(BENCH_OUT) --markdown BENCHMARKS.md
