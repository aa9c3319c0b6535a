#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (no cluster, no network at run time):
#
#   examples/kubernetes/validate.sh [check] [PATH...]   (default: examples/kubernetes)
#   examples/kubernetes/validate.sh json PATH...        the parsed YAML documents as JSON
#
# The validator is PyPI's kubernetes-validate, which carries the Kubernetes OpenAPI schemas of
# every minor version it supports. Check first, install second: a venv in
# target/toolchains/k8s-venv, created and filled on first use (nothing system-wide).
# `make test` runs this through tests/e2e/kubernetes.rs.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/examples/kubernetes"
venv="$root/target/toolchains/k8s-venv"
requirement=kubernetes-validate==1.37.0

have() { [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import sys, kubernetes_validate.version as v; sys.exit(v.__version__ != sys.argv[1])' "${requirement#*==}" 2>/dev/null; }
if ! have; then
	command -v python3 >/dev/null || { echo "validate.sh: python3 is needed" >&2; exit 1; }
	echo "validate.sh: installing $requirement into $venv" >&2
	[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
	"$venv/bin/python" -m pip install --disable-pip-version-check -q "$requirement" >&2
	have || { echo "validate.sh: $requirement did not install" >&2; exit 1; }
fi

# kubectl renders the kustomizations (`kubectl kustomize`); components need the kustomize that
# kubectl embeds since 1.21 (kustomize v4). Check first, install second (Debian's package).
export KUBECTL=${KUBECTL:-kubectl}
kustomize_major() { "$KUBECTL" version --client -o json 2>/dev/null | python3 -c 'import json, re, sys
v = json.load(sys.stdin).get("kustomizeVersion", "")
m = re.match(r"v(\d+)\.", v)
print(m.group(1) if m else 0)' 2>/dev/null || echo 0; }
if (($(kustomize_major) < 4)); then
	echo "validate.sh: installing kubectl (for kubectl kustomize)" >&2
	sudo=; (($(id -u) == 0)) || sudo=sudo
	$sudo apt-get install -y -q kubectl >&2 || $sudo apt-get install -y -q kubernetes-client >&2 || true
	(($(kustomize_major) >= 4)) || {
		echo "validate.sh: needs kubectl >= 1.21 (kustomize v4 or newer) to render the kustomizations; set KUBECTL to one" >&2
		exit 1
	}
fi

mode=check
if [[ ${1:-} == check || ${1:-} == json ]]; then
	mode=$1
	shift
fi
[[ $# -gt 0 ]] || set -- "$here"
exec "$venv/bin/python" "$here/validate.py" "$mode" "$@"
