#!/usr/bin/env bash
# Makes the TLS material for tollgate and for kube-apiserver's webhook client, with openssl:
#   ca.crt / ca.key                    a CA for both sides (use your cluster's own PKI if you have one)
#   tollgate.crt / tollgate.key        tollgate's serving certificate, with the SANs kube-apiserver dials
#   kube-apiserver.crt / .key          the client certificate the webhook kubeconfig presents
# Usage: make-certs.sh OUT_DIR [EXTRA_SAN...]   e.g. make-certs.sh ./pki DNS:tollgate.example.com IP:10.0.0.5
set -euo pipefail
out=${1:?usage: make-certs.sh OUT_DIR [EXTRA_SAN...]}
shift
mkdir -p "$out"
cd "$out"
umask 077
days=365

sans="DNS:localhost,IP:127.0.0.1,DNS:tollgate,DNS:tollgate.tollgate-system.svc,DNS:tollgate.tollgate-system.svc.cluster.local"
for san in "$@"; do sans="$sans,$san"; done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -keyout ca.key -out ca.crt -subj "/CN=tollgate webhook CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

leaf() { # name subject extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -out "$1.crt" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf tollgate "/CN=tollgate" \
  "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$sans"
leaf kube-apiserver "/O=tollgate-webhook-clients/CN=kube-apiserver" \
  "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca.srl
chmod 0644 ca.crt tollgate.crt kube-apiserver.crt
echo "wrote $(pwd): ca.crt tollgate.crt tollgate.key kube-apiserver.crt kube-apiserver.key"
