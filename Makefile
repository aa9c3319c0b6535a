# tollgate: the two commands are `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
HOST_TRIPLE := $(shell rustc -vV | sed -n 's/^host: //p')
GUESTS := target/guests/wasm32-wasip2/release
PLUGINS_DIR := target/plugins
TOLLGATE := target/release/tollgate
LANGUAGES := python js c go

.PHONY: run plugins languages test build toolchain clean

## Installs the guest target when missing (rust-toolchain.toml does not install targets).
toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

build: toolchain
	$(CARGO) build --release -p tollgate

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
	$(TOLLGATE) check $(PLUGINS_DIR)
	$(TOLLGATE) serve --plugins $(PLUGINS_DIR) --tenants examples/tenants.toml --listen $(LISTEN) \
	  --cache-dir target/compile-cache

## The whole suite: host unit tests, end-to-end tests against the real binary, guest unit tests.
## One release build serves the binary and the tests (wasmtime is built once).
test: toolchain languages
	$(CARGO) test --release --workspace
	cd plugins && $(CARGO) test --release --target $(HOST_TRIPLE)

clean:
	$(CARGO) clean
