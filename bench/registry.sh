#!/usr/bin/env bash
# Registry plugins (issue 14): push, sign, verify, pull and first-load times of the Rust and the
# Python static-tokens examples, through a real registry (Debian's docker-registry, TLS and basic
# auth) on loopback. Prints a Markdown table. Needs `make build languages registry` first:
#
#   bench/registry.sh [RUNS]      (default 5 runs of verify and pull; the median is shown)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tollgate=${TOLLGATE:-$root/target/release/tollgate}
runs=${1:-5}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

# The registry: its own CA, basic auth.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
	-keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
	-keyout reg.key -out reg.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > san.ext
openssl x509 -req -in reg.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out reg.crt 2>/dev/null
htpasswd -Bbn bench bench-password > htpasswd 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host=127.0.0.1:$port
cat > registry.yml <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/data}}
http: {addr: $host, tls: {certificate: $work/reg.crt, key: $work/reg.key}}
auth: {htpasswd: {realm: bench, path: $work/htpasswd}}
YML
docker-registry serve registry.yml >/dev/null 2>&1 &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
printf '{"auths":{"%s":{"auth":"%s"}}}' "$host" "$(printf bench:bench-password | base64)" > auth.json
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out cosign.key 2>/dev/null
openssl pkey -in cosign.key -pubout -out cosign.pub 2>/dev/null
reg=(--registry-auth "$work/auth.json" --registry-ca "$work/ca.crt")

ms() { python3 -c 'import sys,time; print(round((time.time_ns()-int(sys.argv[1]))/1e6,1))' "$1"; }
median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
timed() { local t; t=$(date +%s%N); "$@" >/dev/null; ms "$t"; }

echo "| plugin | component | push | sign | verify (p50 of $runs) | pull + verify (p50 of $runs) | first load, cold cache | restart, warm cache |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for lang in rust python; do
	if [[ $lang == rust ]]; then
		wasm=$root/target/guests/wasm32-wasip2/release/static_tokens.wasm manifest=$root/plugins/static-tokens/static-tokens.toml
	else
		wasm=$root/target/guests/python/static-tokens.wasm manifest=$root/plugins/python/static-tokens.toml
	fi
	mkdir -p "src-$lang" && cp "$wasm" "src-$lang/10-static-tokens.wasm" && cp "$manifest" "src-$lang/10-static-tokens.toml"
	ref=$host/bench/$lang-static-tokens:1
	push=$(timed "$tollgate" push "src-$lang/10-static-tokens.wasm" "$ref" "${reg[@]}")
	sign=$(timed "$tollgate" sign "$ref" --key cosign.key "${reg[@]}")
	verify=() pull=()
	for _ in $(seq "$runs"); do
		verify+=("$(timed "$tollgate" verify "$ref" --key cosign.pub "${reg[@]}")")
		rm -rf "out-$lang"
		pull+=("$(timed "$tollgate" pull "$ref" "out-$lang" --key "$work/cosign.pub" "${reg[@]}")")
	done
	cmp "out-$lang/10-static-tokens.wasm" "$wasm"
	cat > "tenants-$lang.toml" <<TOML
[[tenant.$lang.oci]]
name = "10-static-tokens"
ref = "$ref"
keys = ["$work/cosign.pub"]
auth = "$work/auth.json"
ca_file = "$work/ca.crt"
TOML
	mkdir -p "plugins-$lang"
	loads=()
	for round in cold warm; do
		"$tollgate" serve --plugins "plugins-$lang" --tenants "tenants-$lang.toml" --cache-dir "$work/cache-$lang" \
			--listen 127.0.0.1:0 --audit-log off 2> "serve-$lang-$round.log" &
		pid=$!
		for _ in $(seq 1200); do grep -q "listening on" "serve-$lang-$round.log" && break; sleep 0.1; done
		kill "$pid"; wait "$pid" 2>/dev/null || true
		loads+=("$(sed -n 's/.*took_ms=\([0-9]*\).*first load done.*/\1/p; s/.*first load done.*took_ms=\([0-9]*\).*/\1/p' "serve-$lang-$round.log" | head -1)")
	done
	size=$(python3 -c 'import os,sys; print(f"{os.path.getsize(sys.argv[1])/1e6:.2f} MB")' "$wasm")
	echo "| $lang static-tokens | $size | $push ms | $sign ms | $(median "${verify[@]}") ms | $(median "${pull[@]}") ms | ${loads[0]} ms | ${loads[1]} ms |"
done
