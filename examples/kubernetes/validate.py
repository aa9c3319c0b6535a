"""Offline checks of the Kubernetes manifests in examples/kubernetes (run through validate.sh).

    validate.py check PATH...   every YAML document parses; every Kubernetes object validates,
                                in strict mode (unknown fields fail), against the OpenAPI schemas
                                that kubernetes-validate carries, for every Kubernetes minor
                                version from the file's minimum (a `# minimum-kubernetes: 1.NN`
                                line; 1.31 otherwise) to the newest the validator knows;
                                cert-manager objects and kubeconfigs, which have no schema there,
                                get structural checks of their own. Exit 1 on any failure.
    validate.py json PATH...    the parsed documents as JSON: {"file": [doc, ...], ...}

PATH is a file or a directory (its *.yaml files, recursively). A directory holding a
kustomization.yaml is a kustomization: what `kubectl kustomize` renders of it is checked (keyed
"DIR/"), not its files one by one (they may be patches); a Component is checked through the
kustomizations that use it. Its `# minimum-kubernetes:` line is in kustomization.yaml. No
network: the schemas ship in the kubernetes_validate package; kubectl ($KUBECTL) renders.
"""

import functools
import json
import os
import re
import subprocess
import sys

import yaml
import kubernetes_validate
import kubernetes_validate.utils as kv
from kubernetes_validate.version import __version__ as KV_VERSION

DEFAULT_MINIMUM = "1.31"

# validate() re-reads the (large) schema files on every call: read each once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)


KUSTOMIZATION = "kustomization.yaml"


def kustomization_kind(directory):
    with open(os.path.join(directory, KUSTOMIZATION)) as f:
        return (yaml.safe_load(f) or {}).get("kind", "Kustomization")


def sources(paths):
    """(label, path, is_kustomization) for every YAML file and kustomization under paths."""
    for path in paths:
        if not os.path.isdir(path):
            yield path, path, False
            continue
        for root, dirs, names in os.walk(path):
            dirs.sort()
            if KUSTOMIZATION in names:
                if kustomization_kind(root) == "Kustomization":
                    yield root.rstrip("/") + "/", root, True
                continue
            for name in sorted(names):
                if name.endswith((".yaml", ".yml")):
                    yield os.path.join(root, name), os.path.join(root, name), False


def minimum_of(text):
    match = re.search(r"^# minimum-kubernetes: (1\.\d+)\b", text, re.M)
    return match.group(1) if match else DEFAULT_MINIMUM


def documents(path, is_kustomization=False):
    if is_kustomization:
        rendered = subprocess.run([os.environ.get("KUBECTL", "kubectl"), "kustomize", path],
                                  capture_output=True, text=True)
        if rendered.returncode != 0:
            raise ValueError("kubectl kustomize failed: " + rendered.stderr.strip())
        text = rendered.stdout
        with open(os.path.join(path, KUSTOMIZATION)) as f:
            minimum = minimum_of(f.read())
    else:
        with open(path) as f:
            text = f.read()
        minimum = minimum_of(text)
    return [d for d in yaml.safe_load_all(text) if d is not None], minimum


def minor(version):
    return int(version.split(".")[1])


def versions_from(minimum):
    newest = kv.latest_version()
    return ["1.%d" % m for m in range(minor(minimum), minor(newest) + 1)]


def name_of(doc):
    return "%s/%s" % (doc.get("kind"), (doc.get("metadata") or {}).get("name"))


def need(cond, errors, where, what):
    if not cond:
        errors.append("%s: %s" % (where, what))


def check_cert_manager(doc, errors, where):
    """cert-manager.io/v1 Issuer and Certificate: the fields its v1 API requires, and no
    unknown top-level spec fields among those these examples use."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    need(doc.get("apiVersion") == "cert-manager.io/v1", errors, where, "apiVersion must be cert-manager.io/v1")
    need((doc.get("metadata") or {}).get("name"), errors, where, "metadata.name is required")
    if kind == "Issuer" or kind == "ClusterIssuer":
        kinds = [k for k in ("selfSigned", "ca", "acme", "vault", "venafi") if k in spec]
        need(len(kinds) == 1, errors, where, "an Issuer has exactly one of selfSigned/ca/acme/vault/venafi")
        if "ca" in spec:
            need(isinstance(spec["ca"].get("secretName"), str), errors, where, "spec.ca.secretName is required")
    elif kind == "Certificate":
        known = {"secretName", "issuerRef", "commonName", "dnsNames", "ipAddresses", "duration", "renewBefore",
                 "privateKey", "usages", "isCA", "subject", "secretTemplate", "uris", "emailAddresses"}
        unknown = set(spec) - known
        need(not unknown, errors, where, "unknown spec fields %s" % sorted(unknown))
        need(isinstance(spec.get("secretName"), str), errors, where, "spec.secretName is required")
        ref = spec.get("issuerRef") or {}
        need(isinstance(ref.get("name"), str), errors, where, "spec.issuerRef.name is required")
        need(ref.get("kind") in ("Issuer", "ClusterIssuer"), errors, where, "spec.issuerRef.kind: Issuer or ClusterIssuer")
        usages = {"signing", "digital signature", "content commitment", "key encipherment", "key agreement",
                  "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
                  "server auth", "client auth", "code signing", "email protection", "s/mime",
                  "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
                  "microsoft sgc", "netscape sgc"}
        for u in spec.get("usages") or []:
            need(u in usages, errors, where, "unknown usage %r" % u)
        key = spec.get("privateKey") or {}
        need(key.get("algorithm", "RSA") in ("RSA", "ECDSA", "Ed25519"), errors, where, "privateKey.algorithm")
        need(key.get("rotationPolicy", "Never") in ("Never", "Always"), errors, where, "privateKey.rotationPolicy")
        for field in ("duration", "renewBefore"):
            if field in spec:
                need(re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", spec[field]) is not None, errors, where,
                     "%s must be a Go duration" % field)
    else:
        errors.append("%s: no check for cert-manager kind %s" % (where, kind))


def check_pinniped(doc, errors, where):
    """Pinniped Concierge's WebhookAuthenticator (authentication.concierge.pinniped.dev/v1alpha1,
    cluster-scoped), as its CRD (deploy/concierge/authentication.concierge.pinniped.dev_
    webhookauthenticators.yaml, v0.47) and its controller's own checks define it."""
    kind, spec = doc.get("kind"), doc.get("spec")
    need(doc.get("apiVersion") == "authentication.concierge.pinniped.dev/v1alpha1", errors, where,
         "apiVersion must be authentication.concierge.pinniped.dev/v1alpha1")
    need(kind == "WebhookAuthenticator", errors, where, "no check for Pinniped kind %s" % kind)
    meta = doc.get("metadata") or {}
    need(isinstance(meta.get("name"), str) and meta["name"], errors, where, "metadata.name is required")
    need("namespace" not in meta, errors, where, "a WebhookAuthenticator is cluster-scoped: no metadata.namespace")
    need(set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, errors, where, "unknown top-level fields")
    if not isinstance(spec, dict):
        errors.append("%s: spec is required" % where)
        return
    need(set(spec) <= {"endpoint", "tls"}, errors, where, "unknown spec fields %s" % sorted(set(spec) - {"endpoint", "tls"}))
    endpoint = spec.get("endpoint")
    need(isinstance(endpoint, str) and re.match(r"^https://", endpoint) is not None, errors, where,
         "spec.endpoint is required and starts with https://")
    tls = spec.get("tls") or {}
    need(set(tls) <= {"certificateAuthorityData", "certificateAuthorityDataSource"}, errors, where,
         "unknown spec.tls fields %s" % sorted(set(tls) - {"certificateAuthorityData", "certificateAuthorityDataSource"}))
    need(not ("certificateAuthorityData" in tls and "certificateAuthorityDataSource" in tls), errors, where,
         "spec.tls: certificateAuthorityData or certificateAuthorityDataSource, not both")
    need(tls, errors, where, "spec.tls: pin tollgate's CA (without it the Concierge trusts the system roots)")
    if "certificateAuthorityData" in tls:
        import base64
        try:
            pem = base64.b64decode(tls["certificateAuthorityData"], validate=True).decode()
        except Exception:
            pem = ""
        need("-----BEGIN CERTIFICATE-----" in pem, errors, where,
             "spec.tls.certificateAuthorityData must be base64 of PEM certificates")
    if "certificateAuthorityDataSource" in tls:
        src = tls["certificateAuthorityDataSource"] or {}
        need(src.get("kind") in ("Secret", "ConfigMap"), errors, where, "certificateAuthorityDataSource.kind: Secret or ConfigMap")
        for field in ("name", "key"):
            need(isinstance(src.get(field), str) and src[field], errors, where, "certificateAuthorityDataSource.%s is required" % field)
        need(set(src) <= {"kind", "name", "key"}, errors, where, "unknown certificateAuthorityDataSource fields")


def check_kubeconfig(doc, errors, where):
    need(doc.get("apiVersion") == "v1", errors, where, "a kubeconfig is apiVersion v1")
    clusters = {c["name"]: c.get("cluster") or {} for c in doc.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in doc.get("users") or []}
    contexts = {c["name"]: c.get("context") or {} for c in doc.get("contexts") or []}
    current = contexts.get(doc.get("current-context"))
    need(current is not None, errors, where, "current-context names no context")
    if current is None:
        return
    cluster = clusters.get(current.get("cluster"))
    need(cluster is not None, errors, where, "the current context's cluster is missing")
    need(current.get("user") in users, errors, where, "the current context's user is missing")
    if cluster:
        need(re.fullmatch(r"https://[^/]+/authenticate(/[a-z0-9]([-a-z0-9]*[a-z0-9])?)?", cluster.get("server", "")),
             errors, where, "server must be https://HOST/authenticate[/TENANT]")
        need(cluster.get("certificate-authority") or cluster.get("certificate-authority-data"), errors, where,
             "a CA must be pinned")
        need(not cluster.get("insecure-skip-tls-verify"), errors, where, "never insecure-skip-tls-verify")


def check(paths):
    errors, validated, other = [], 0, []
    all_versions = set()
    nfiles = 0
    for path, source, is_kustomization in sources(paths):
        nfiles += 1
        try:
            docs, minimum = documents(source, is_kustomization)
        except (yaml.YAMLError, ValueError) as e:
            errors.append("%s: does not parse: %s" % (path, e))
            continue
        if not docs:
            errors.append("%s: no YAML document" % path)
        for i, doc in enumerate(docs):
            where = "%s[%d] %s" % (path, i, name_of(doc) if isinstance(doc, dict) else "?")
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                errors.append("%s: not a Kubernetes object (apiVersion and kind)" % where)
                continue
            if doc["apiVersion"].startswith("cert-manager.io/"):
                check_cert_manager(doc, errors, where)
                other.append("cert-manager")
                continue
            if doc["apiVersion"].startswith("authentication.concierge.pinniped.dev/"):
                check_pinniped(doc, errors, where)
                other.append("pinniped")
                continue
            if doc["kind"] == "Config" and doc["apiVersion"] == "v1":
                check_kubeconfig(doc, errors, where)
                other.append("kubeconfig")
                continue
            for version in versions_from(minimum):
                all_versions.add(version)
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    errors.append("%s: Kubernetes %s: %s: %s" % (where, e.version, ".".join(map(str, e.path)), e.message))
                except kv.SchemaNotFoundError as e:
                    errors.append("%s: %s" % (where, e.message))
            validated += 1
    for e in errors:
        print("ERROR " + e)
    versions = sorted(all_versions, key=minor)
    print("kubernetes-validate %s (strict, offline schemas): %d Kubernetes objects in %d files and kustomizations "
          "checked against Kubernetes %s; %d cert-manager objects, %d Pinniped objects and %d kubeconfigs checked "
          "structurally; %d errors"
          % (KV_VERSION, validated, nfiles, ", ".join(versions) or "-", other.count("cert-manager"),
             other.count("pinniped"), other.count("kubeconfig"), len(errors)))
    return 1 if errors else 0


def dump(paths):
    out = {}
    for path, source, is_kustomization in sources(paths):
        out[path] = documents(source, is_kustomization)[0]
    json.dump(out, sys.stdout)
    return 0


def main(argv):
    if len(argv) < 3 or argv[1] not in ("check", "json"):
        print(__doc__, file=sys.stderr)
        return 2
    return check(argv[2:]) if argv[1] == "check" else dump(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
