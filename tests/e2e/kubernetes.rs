//! The Kubernetes examples (examples/kubernetes/), the Containerfile and the walkthrough
//! (examples/walkthrough.md), checked without a cluster:
//!
//! - every manifest, and what `kubectl kustomize` renders of every kustomization (the layouts,
//!   the large-plugin variants, an operator's overlay), parses and validates, strictly, against
//!   the Kubernetes OpenAPI schemas that `kubernetes-validate` carries
//!   (examples/kubernetes/validate.sh installs it, and kubectl, when missing); the checks below
//!   run on the rendered objects, keyed by the kustomization's folder (`control-plane/`);
//! - what a schema cannot see: the flags are real `tollgate serve` flags, tenant folders are
//!   volumes mounted right under `--plugins`, the files the arguments name are where the mounts
//!   put them, probes reach the probe listener, the security fields are set, Service,
//!   certificates, kubeconfigs and the Containerfile agree;
//! - the walkthrough runs as written: its `sh tested` blocks run in a scratch directory laid out
//!   like the repository root and print what its `expect` blocks say; its `tollgate serve` block
//!   is started as written (listen addresses aside); its `sh emulated` blocks (kubectl) make the
//!   ConfigMaps and Secrets that `kubectl create --from-file` would, which are validated, laid out
//!   as kubelet lays them out (`KubeVolume`, the layout the hot-reload tests exercise) and served
//!   by tollgate started with each pod template's own arguments; a ConfigMap update is then seen.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tollgate_tests::*;

/// The uid/gid of the image (`USER` in the Containerfile, distroless `nonroot`).
const IMAGE_UID: i64 = 65532;
/// The Kubernetes minor versions the manifests are validated against.
const K8S_VERSIONS: &str = "1.31, 1.32, 1.33, 1.34, 1.35, 1.36, 1.37";
/// kube-apiserver's ConfigMap size limit (data and binaryData values together).
const CONFIGMAP_MAX: usize = 1 << 20;

pub(super) fn repo() -> PathBuf {
    PathBuf::from(built::ROOT)
}

pub(super) fn k8s() -> PathBuf {
    repo().join("examples/kubernetes")
}

static VALIDATOR: Mutex<()> = Mutex::new(());

/// Runs examples/kubernetes/validate.sh (which installs the validator when it is missing; one
/// at a time, so two tests never install it at once): (success, stdout, stderr).
pub(super) fn validate_sh(args: &[&str]) -> (bool, String, String) {
    let _one = VALIDATOR.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("bash")
        .arg(k8s().join("validate.sh"))
        .args(args)
        .output()
        .expect("running examples/kubernetes/validate.sh");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Every YAML file under examples/kubernetes, parsed (PyYAML): path relative to it -> documents.
fn manifests() -> BTreeMap<String, Vec<Value>> {
    let (ok, out, err) = validate_sh(&["json", k8s().to_str().unwrap()]);
    assert!(ok, "the manifests do not parse:\n{out}\n{err}");
    let parsed: BTreeMap<String, Vec<Value>> = serde_json::from_str(&out).unwrap();
    parsed
        .into_iter()
        .map(|(k, v)| {
            let rel = Path::new(&k).strip_prefix(k8s()).unwrap().display().to_string();
            // A kustomization is keyed by its folder, with the slash.
            (if k.ends_with('/') { format!("{rel}/") } else { rel }, v)
        })
        .collect()
}

/// Cluster objects by (kind, namespace, name).
pub(super) type Objects = BTreeMap<(String, String, String), Value>;

pub(super) fn key_of(doc: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&doc["kind"]), s(&doc["metadata"]["namespace"]), s(&doc["metadata"]["name"]))
}

pub(super) fn objects_of(files: &BTreeMap<String, Vec<Value>>, prefix: &str) -> Objects {
    files
        .iter()
        .filter(|(f, _)| f.starts_with(prefix))
        .flat_map(|(_, docs)| docs)
        .map(|d| (key_of(d), d.clone()))
        .collect()
}

pub(super) fn get<'a>(objects: &'a Objects, kind: &str, ns: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.into(), ns.into(), name.into()))
        .unwrap_or_else(|| panic!("no {kind} {ns}/{name} among {:?}", objects.keys().collect::<Vec<_>>()))
}

pub(super) fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

pub(super) fn arr(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}"))
}

// ---- the schemas ----------------------------------------------------------------------------

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let (ok, out, err) = validate_sh(&["check", k8s().to_str().unwrap()]);
    println!("{out}");
    assert!(ok, "validate.sh failed:\n{out}\n{err}");
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.contains("(strict, offline schemas)") && summary.ends_with("; 0 errors"), "{out}");
    assert!(summary.contains(&format!("against Kubernetes {K8S_VERSIONS};")), "{summary}");

    // The check is real: a misspelt field, a wrong type and an unknown kind each fail it.
    let dir = tempfile::tempdir().unwrap();
    let deployment = std::fs::read_to_string(k8s().join("deployment/30-deployment.yaml")).unwrap();
    for (name, from, to, says) in [
        (
            "typo",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesytem: true",
            "'readOnlyRootFilesytem' was unexpected",
        ),
        ("type", "replicas: 2", "replicas: two", "is not of type 'integer'"),
        ("kind", "kind: Deployment", "kind: Deploymnet", "Couldn't find schema for kind Deploymnet"),
    ] {
        let path = dir.path().join(format!("{name}.yaml"));
        assert!(deployment.contains(from));
        std::fs::write(&path, deployment.replacen(from, to, 1)).unwrap();
        let (ok, out, _) = validate_sh(&["check", path.to_str().unwrap()]);
        assert!(!ok && out.contains(says), "{name}: a broken manifest passed or failed otherwise:\n{out}");
    }
}

// ---- what a schema cannot see ---------------------------------------------------------------

/// A pod template: where it comes from, its namespace and spec, and the kind of its owner.
struct Template {
    file: String,
    kind: String,
    namespace: String,
    owner: Value,
    spec: Value,
}

fn templates(files: &BTreeMap<String, Vec<Value>>) -> Vec<Template> {
    let mut out = Vec::new();
    for (file, docs) in files {
        for doc in docs {
            let kind = s(&doc["kind"]).to_owned();
            let spec = match kind.as_str() {
                "Deployment" | "DaemonSet" => doc["spec"]["template"]["spec"].clone(),
                "Pod" => doc["spec"].clone(),
                _ => continue,
            };
            let namespace = doc["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
            out.push(Template { file: file.clone(), kind, namespace, owner: doc.clone(), spec });
        }
    }
    out
}

/// `--flag=value` arguments (and bare boolean flags) of a container, after `serve`.
pub(super) fn serve_flags(container: &Value) -> BTreeMap<String, String> {
    let args: Vec<&str> = arr(&container["args"]).iter().map(s).collect();
    assert_eq!(args.first(), Some(&"serve"), "the container runs `tollgate serve`: {args:?}");
    args[1..]
        .iter()
        .map(|a| {
            assert!(a.starts_with("--"), "arguments are written --flag=value: {a}");
            match a.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (a.to_string(), String::new()),
            }
        })
        .collect()
}

/// The flags `tollgate serve --help` lists.
fn real_serve_flags() -> BTreeSet<String> {
    let (code, out, err) = run_cli(&["serve", "--help"], "");
    assert_eq!(code, 0, "{err}");
    out.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect()
}

/// The mount (path, volume) holding `path`: the longest mountPath that is `path` or a parent.
fn mount_of<'a>(spec: &'a Value, container: &'a Value, path: &str) -> Option<(&'a str, &'a Value)> {
    let mounts = container["volumeMounts"].as_array()?;
    let m = mounts
        .iter()
        .filter(|m| {
            let mp = s(&m["mountPath"]);
            path == mp || path.starts_with(&format!("{}/", mp.trim_end_matches('/')))
        })
        .max_by_key(|m| s(&m["mountPath"]).len())?;
    let volume = arr(&spec["volumes"]).iter().find(|v| v["name"] == m["name"]).expect("a mount names a volume");
    Some((s(&m["mountPath"]), volume))
}

fn volume_type(volume: &Value) -> &str {
    ["configMap", "secret", "projected", "emptyDir", "hostPath", "image"]
        .into_iter()
        .find(|t| volume.get(*t).is_some())
        .unwrap_or_else(|| panic!("an unexpected volume type: {volume}"))
}

pub(super) fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().0
}

/// The Containerfile's instructions (continuation lines joined), comments dropped.
fn containerfile() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn pod_templates_follow_the_rules() {
    let files = manifests();
    let flags_known = real_serve_flags();
    let all = objects_of(&files, "");
    let canonical_tenants = std::fs::read_to_string(k8s().join("base/tenants.toml")).unwrap();
    let templates = templates(&files);
    let names: Vec<_> = templates.iter().map(|t| format!("{} {}", t.file, t.kind)).collect();
    assert_eq!(templates.len(), 7, "the pod templates: {names:?}");

    for t in &templates {
        let at = format!("{} ({})", t.file, t.kind);
        // The objects of the template's own kustomization (overlays share names).
        let all = objects_of(&files, &t.file);
        let spec = &t.spec;
        let containers = arr(&spec["containers"]);
        assert_eq!(containers.len(), 1, "{at}");
        let c = &containers[0];
        assert_eq!(c["name"], "tollgate", "{at}");
        assert!(c.get("command").is_none(), "{at}: the image's ENTRYPOINT runs tollgate; args only");
        let flags = serve_flags(c);
        for flag in flags.keys() {
            assert!(flags_known.contains(flag), "{at}: {flag} is not a `tollgate serve` flag ({flags_known:?})");
        }

        // Security: the restricted Pod Security Standard, a read-only root, the image's user.
        let psc = &spec["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{at}");
        assert_eq!(psc["runAsUser"], IMAGE_UID, "{at}");
        assert_eq!(psc["runAsGroup"], IMAGE_UID, "{at}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{at}");
        let all_containers = containers.iter().chain(spec["initContainers"].as_array().into_iter().flatten());
        for c in all_containers {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{at} {}", c["name"]);
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{at} {}", c["name"]);
            assert_eq!(sc["privileged"], false, "{at} {}", c["name"]);
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{at} {}", c["name"]);
            for what in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(c["resources"][what][res].is_string(), "{at} {}: resources.{what}.{res}", c["name"]);
                }
            }
        }
        assert_eq!(spec["automountServiceAccountToken"], false, "{at}: tollgate never calls the API");
        assert!(spec["priorityClassName"].is_string(), "{at}");

        // Probes: liveness on /healthz, readiness and startup on /readyz, all on --probe-listen.
        let listen = &flags["--listen"];
        let probe_listen = &flags["--probe-listen"];
        assert_ne!(port_of(listen), port_of(probe_listen), "{at}");
        let host_network = spec["hostNetwork"] == true;
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")]
        {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{at} {probe}");
            let port = match &get["port"] {
                Value::String(name) => {
                    let p = arr(&c["ports"]).iter().find(|p| p["name"] == *name).expect("a named port");
                    p["containerPort"].as_u64().unwrap() as u16
                }
                n => n.as_u64().unwrap() as u16,
            };
            assert_eq!(
                port,
                port_of(probe_listen),
                "{at} {probe}: the probe listener (kubelet has no client certificate)"
            );
            if host_network {
                // The pod IP is the node's: the probe names the loopback address tollgate binds.
                assert_eq!(get["host"], "127.0.0.1", "{at} {probe}");
                assert_eq!(ip_of(probe_listen), "127.0.0.1", "{at}");
            } else {
                assert!(get.get("host").is_none(), "{at} {probe}: kubelet dials the pod IP");
                assert_eq!(ip_of(probe_listen), "0.0.0.0", "{at}");
            }
        }
        assert!(flags.contains_key("--tls-cert") && flags.contains_key("--client-ca"), "{at}: TLS and mTLS");

        // The plugin directory: tenant folders are volumes right under --plugins, never nested.
        let plugins = flags["--plugins"].as_str();
        let mounts = arr(&c["volumeMounts"]);
        let read_only_types = ["configMap", "secret", "projected", "image"];
        for m in mounts {
            let mp = s(&m["mountPath"]);
            let (_, volume) = mount_of(spec, c, mp).unwrap();
            let outer = mounts.iter().map(|o| s(&o["mountPath"])).filter(|o| mp.starts_with(&format!("{o}/")));
            for o in outer {
                let (_, ov) = mount_of(spec, c, o).unwrap();
                assert!(
                    !read_only_types.contains(&volume_type(ov)),
                    "{at}: {mp} is mounted inside the read-only volume at {o}"
                );
            }
            if let Some(tenant) = mp.strip_prefix(&format!("{plugins}/")) {
                assert!(
                    !tenant.contains('/')
                        && !tenant.is_empty()
                        && tenant.len() <= 63
                        && tenant.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{at}: {mp}: a tenant folder is a DNS label right under --plugins"
                );
                assert_eq!(m["readOnly"], true, "{at}: {mp}");
                match volume_type(volume) {
                    "configMap" => {}
                    "projected" => {
                        for src in arr(&volume["projected"]["sources"]) {
                            assert!(src.get("configMap").is_some(), "{at}: {mp} projects ConfigMaps only: {src}")
                        }
                    }
                    "image" => assert!(m["subPath"].is_string(), "{at}: {mp}: one tenant folder of the plugins image"),
                    "emptyDir" => {
                        let init = arr(&spec["initContainers"]);
                        let filled = init.iter().any(|i| {
                            i["volumeMounts"].as_array().into_iter().flatten().any(|im| im["name"] == m["name"])
                        });
                        assert!(filled, "{at}: {mp}: an emptyDir tenant is filled by an init container");
                    }
                    other => panic!("{at}: {mp}: a tenant folder from a {other} volume"),
                }
            }
        }
        let plugins_mount = mount_of(spec, c, plugins);
        match plugins_mount {
            // The image's own directory (runc creates the tenant mount points before the root
            // file system turns read-only).
            None => assert!(mounts.iter().any(|m| s(&m["mountPath"]).starts_with(&format!("{plugins}/"))), "{at}"),
            Some((_, v)) => assert_eq!(volume_type(v), "hostPath", "{at}: --plugins from files on the node"),
        }

        // The tenants file: outside the plugin directory; from the canonical tenants.toml.
        let tenants = flags["--tenants"].as_str();
        assert!(!tenants.starts_with(&format!("{plugins}/")), "{at}: the tenants file is outside --plugins");
        let (mp, volume) = mount_of(spec, c, tenants).expect("the tenants file is mounted");
        match volume_type(volume) {
            "configMap" => {
                let cm = get(&all, "ConfigMap", &t.namespace, s(&volume["configMap"]["name"]));
                let key = tenants.strip_prefix(&format!("{mp}/")).unwrap();
                // The base's tenants.toml, or the one an overlay replaces it with.
                let own = k8s().join(&t.file).join("tenants.toml");
                let source =
                    if own.is_file() { std::fs::read_to_string(own).unwrap() } else { canonical_tenants.clone() };
                assert_eq!(s(&cm["data"][key]), source, "{at}: tenants.toml and the ConfigMap differ");
            }
            "hostPath" => assert_eq!(s(&volume["hostPath"]["path"]), mp, "{at}"),
            other => panic!("{at}: the tenants file from a {other} volume"),
        }

        // The compile cache: a directory tollgate creates (mode 0700) inside an emptyDir.
        let cache = flags["--cache-dir"].as_str();
        let (mp, volume) = mount_of(spec, c, cache).expect("the cache dir is mounted");
        assert_eq!(volume_type(volume), "emptyDir", "{at}");
        assert_ne!(
            mp, cache,
            "{at}: --cache-dir is a subdirectory of the emptyDir (fsGroup makes its root group-writable)"
        );
        assert!(!cache.starts_with(&format!("{plugins}/")), "{at}");

        // TLS and fingerprint files are where the mounts put them.
        for flag in ["--tls-cert", "--tls-key", "--client-ca", "--fingerprint-key-file"] {
            let Some(path) = flags.get(flag) else { continue };
            let (mp, volume) = mount_of(spec, c, path).unwrap_or_else(|| panic!("{at}: {flag} {path} is not mounted"));
            let file = path.strip_prefix(&format!("{mp}/")).unwrap();
            match volume_type(volume) {
                "secret" => {
                    let secret = s(&volume["secret"]["secretName"]);
                    if flag == "--fingerprint-key-file" {
                        assert_eq!(file, "key", "{at}");
                        continue;
                    }
                    // The keys cert-manager writes; its Certificate for this Secret exists.
                    assert!(["tls.crt", "tls.key", "ca.crt"].contains(&file), "{at}: {flag} {file}");
                    let certificate = all
                        .values()
                        .find(|d| {
                            d["kind"] == "Certificate"
                                && d["spec"]["secretName"] == secret
                                && d["metadata"]["namespace"] == t.namespace.as_str()
                        })
                        .unwrap_or_else(|| panic!("{at}: no cert-manager Certificate writes Secret {secret}"));
                    assert_eq!(certificate["metadata"]["namespace"], t.namespace.as_str(), "{at}");
                }
                "hostPath" => {
                    assert_eq!(s(&volume["hostPath"]["path"]), mp, "{at}");
                    // make-certs.sh's files, as the webhook kubeconfig names them.
                    assert!(repo().join("examples/apiserver/make-certs.sh").is_file());
                    let made = ["tollgate.crt", "tollgate.key", "ca.crt"];
                    assert!(made.contains(&file), "{at}: {flag} {file} is not a file make-certs.sh writes");
                }
                other => panic!("{at}: {flag} from a {other} volume"),
            }
        }

        match t.kind.as_str() {
            "Deployment" => check_deployment(&at, t, &all, c, &flags),
            "DaemonSet" | "Pod" => {
                assert!(host_network, "{at}: the control-plane layout runs on the node's loopback");
                assert_eq!(ip_of(listen), "127.0.0.1", "{at}");
                let kubeconfig = &files["apiserver/webhook-kubeconfig-control-plane.yaml"][0];
                let server = s(&kubeconfig["clusters"][0]["cluster"]["server"]);
                assert_eq!(server, format!("https://{listen}/authenticate/demo"), "{at}");
                // Upgrades hand the node's listening sockets over (tests/e2e/handover.rs), through
                // a directory of the node's that only tollgate's pods mount.
                assert!(!flags.contains_key("--reuse-port"), "{at}: --reuse-port is gone");
                let handover = flags
                    .get("--handover")
                    .unwrap_or_else(|| panic!("{at}: --handover, or an upgrade refuses connections"));
                let (mp, volume) =
                    mount_of(spec, c, handover).unwrap_or_else(|| panic!("{at}: --handover {handover} is not mounted"));
                assert_eq!(mp, handover.as_str(), "{at}: the hand-over directory is its own mount");
                assert_eq!(volume_type(volume), "hostPath", "{at}: shared by the old and the new pod on the node");
                assert_eq!(
                    s(&volume["hostPath"]["type"]),
                    "Directory",
                    "{at}: made by the node's setup, 0700, tollgate's user's"
                );
                assert!(
                    c.get("ports").is_none(),
                    "{at}: ports on a hostNetwork pod are host ports, which block the surge pod"
                );
                if t.kind == "DaemonSet" {
                    let rolling = &t.owner["spec"]["updateStrategy"]["rollingUpdate"];
                    assert_eq!(rolling["maxSurge"], 1, "{at}: the new pod starts beside the old one");
                    assert_eq!(rolling["maxUnavailable"], 0, "{at}: the old pod stops only once the new one is ready");
                }
            }
            other => panic!("{other}"),
        }
    }

    // The tenants file: the two ConfigMaps hold the canonical file, which names the client
    // certificates make-certs.sh and cert-manager make.
    assert!(canonical_tenants.contains("clients = [\"CN=kube-apiserver\"]"));
    let make_certs = std::fs::read_to_string(repo().join("examples/apiserver/make-certs.sh")).unwrap();
    assert!(make_certs.contains("/CN=kube-apiserver\""), "make-certs.sh's client certificate CN");
    let client = get(&all, "Certificate", "tollgate-system", "tollgate-apiserver-client");
    assert_eq!(client["spec"]["commonName"], "kube-apiserver");

    check_containerfile(&templates);
}

fn check_deployment(at: &str, t: &Template, all: &Objects, c: &Value, flags: &BTreeMap<String, String>) {
    let spec = &t.owner["spec"];
    assert!(spec["replicas"].as_u64().unwrap() >= 2, "{at}: replicas");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0, "{at}");
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels, "{at}");
    let anti = &spec["template"]["spec"]["affinity"]["podAntiAffinity"];
    let terms = anti["preferredDuringSchedulingIgnoredDuringExecution"].as_array().unwrap();
    assert!(terms.iter().any(|term| term["podAffinityTerm"]["labelSelector"]["matchLabels"] == *labels), "{at}");

    let ns = &t.namespace;
    let namespace = get(all, "Namespace", "", ns);
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted", "{at}");
    let pdb = get(all, "PodDisruptionBudget", ns, "tollgate");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels, "{at}");
    assert!(all.contains_key(&("PriorityClass".into(), String::new(), s(&t.spec["priorityClassName"]).into())), "{at}");
    let sa = get(all, "ServiceAccount", ns, s(&t.spec["serviceAccountName"]));
    assert_eq!(sa["automountServiceAccountToken"], false);

    // The Service reaches the webhook port; its fixed ClusterIP is in the serving certificate
    // and in kube-apiserver's webhook kubeconfig.
    let service = get(all, "Service", ns, "tollgate");
    assert_eq!(&service["spec"]["selector"], labels, "{at}");
    let port = &service["spec"]["ports"][0];
    let target = arr(&c["ports"]).iter().find(|p| p["name"] == port["targetPort"]).expect("the Service's targetPort");
    assert_eq!(target["containerPort"].as_u64().unwrap() as u16, port_of(&flags["--listen"]), "{at}");
    let cluster_ip = s(&service["spec"]["clusterIP"]);
    let cert = get(all, "Certificate", ns, "tollgate-tls");
    assert!(
        arr(&cert["spec"]["ipAddresses"]).contains(&json!(cluster_ip)),
        "{at}: the certificate names the ClusterIP"
    );
    assert!(arr(&cert["spec"]["usages"]).contains(&json!("server auth")));
    // The example kubeconfig goes with the example address (an overlay's operator writes theirs).
    if !t.file.starts_with("my-cluster/") {
        let kubeconfig = std::fs::read_to_string(k8s().join("apiserver/webhook-kubeconfig-service.yaml")).unwrap();
        let server = format!("server: https://{cluster_ip}:{}/authenticate/demo", port["port"]);
        assert!(kubeconfig.contains(&server), "{at}: the service kubeconfig says {server}");
    }
    let metrics = get(all, "Service", ns, "tollgate-metrics");
    assert_eq!(
        metrics["spec"]["ports"][0]["targetPort"],
        arr(&c["ports"])
            .iter()
            .find(|p| p["containerPort"].as_u64() == Some(port_of(&flags["--probe-listen"]) as u64))
            .unwrap()["name"]
    );
}

/// The Containerfile is not built here (no container engine): check what can be checked.
fn check_containerfile(templates: &[Template]) {
    let lines = containerfile();
    let stages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|f| f.split(" AS ").nth(1).expect("every stage is named").trim())
        .collect();
    assert_eq!(
        stages,
        ["build", "guests", "plugins", "tollgate"],
        "the stages (the server is the default target, last)"
    );
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let server = &lines[last_from..];
    assert!(server[0].contains("distroless/cc-debian12:nonroot"), "{}", server[0]);
    assert!(server.contains(&format!("USER {IMAGE_UID}:{IMAGE_UID}")), "the server's user is the manifests' runAsUser");
    assert!(server.contains(&r#"ENTRYPOINT ["/usr/local/bin/tollgate"]"#.to_string()));
    // The plugin directory's mount point exists in the image.
    let plugin_dirs: BTreeSet<String> = templates
        .iter()
        .filter(|t| t.kind != "Pod")
        .map(|t| serve_flags(&t.spec["containers"][0])["--plugins"].clone())
        .collect();
    for dir in &plugin_dirs {
        assert!(server.iter().any(|l| l.starts_with("COPY") && l.ends_with(&format!(" {dir}/"))), "{dir} in the image");
    }

    // Every COPY from the build context exists and is not excluded by .dockerignore.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for l in lines.iter().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let words: Vec<&str> = l.split_whitespace().skip(1).filter(|w| !w.starts_with("--")).collect();
        for src in &words[..words.len() - 1] {
            assert!(repo().join(src).exists(), "COPY {src}: not in the repository");
            assert!(!ignored.contains(src), "COPY {src}: excluded by .dockerignore");
        }
    }
    for must in ["target", ".git"] {
        assert!(ignored.contains(&must), ".dockerignore keeps {must} out of the build context");
    }

    // The plugins image: /plugins/<tenant>/, as the init container copies it and the image
    // volume's subPath names it.
    let text = lines.join("\n");
    assert!(text.contains("COPY --from=guests --chown=65532:65532 /out/plugins /plugins"));
    for t in templates.iter().filter(|t| t.file.starts_with("large-plugins/")) {
        let tenant_mount = arr(&t.spec["containers"][0]["volumeMounts"])
            .iter()
            .find(|m| m["name"] == "tenant-python")
            .unwrap_or_else(|| panic!("{}: the python tenant", t.file));
        assert_eq!(tenant_mount["mountPath"], "/etc/tollgate/plugins/python");
        if let Some(init) = t.spec["initContainers"].as_array() {
            assert_eq!(init[0]["command"], json!(["cp", "-R", "/plugins/python/.", "/out/"]), "{}", t.file);
            assert_eq!(init[0]["volumeMounts"][0]["name"], "tenant-python");
            assert_eq!(init[0]["volumeMounts"][0]["mountPath"], "/out");
        } else {
            assert_eq!(tenant_mount["subPath"], "plugins/python", "{}", t.file);
        }
        assert!(text.contains("mkdir -p /out/plugins/python"), "the guests stage lays out the python tenant");
    }

    // The binary `make test` built links only what distroless/cc-debian12 ships (glibc 2.36 and
    // libgcc_s): the runtime image can run it.
    let bin = tollgate_bin();
    let out = Command::new("readelf").arg("-dW").arg(&bin).output().expect("readelf (binutils)");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    let needed: BTreeSet<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    let shipped = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    assert!(!needed.is_empty(), "{dynamic}");
    for lib in &needed {
        assert!(shipped.contains(lib), "the binary needs {lib}, which distroless/cc does not ship");
    }
    let out = Command::new("readelf").arg("-VW").arg(&bin).output().unwrap();
    let versions = String::from_utf8_lossy(&out.stdout);
    let newest = versions
        .split("GLIBC_")
        .skip(1)
        .filter_map(|v| {
            let v: String = v.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            Some((parts.next()?, parts.next().unwrap_or(0)))
        })
        .max()
        .expect("glibc symbol versions");
    assert!(newest <= (2, 36), "the binary needs GLIBC_{}.{}; Debian 12 has 2.36", newest.0, newest.1);
}

// ---- the walkthrough ------------------------------------------------------------------------

/// A fenced block of a markdown file: its info string, its text and its first line number.
struct Block {
    info: String,
    body: String,
    line: usize,
}

fn blocks(path: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    // (info, first line, fence indentation, body)
    let mut open: Option<(String, usize, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), i + 1, indent, String::new())),
            (Some(_), Some("")) => {
                let (info, line, _, body) = open.take().unwrap();
                out.push(Block { info, body, line });
            }
            (Some((_, _, fence, body)), _) => {
                // A block indented in a list: its lines lose the fence's indentation.
                body.push_str(&line[indent.min(*fence)..]);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{}: an unclosed code block", path.display());
    out
}

/// The logical lines of a shell block: continuation lines joined, comments and blanks dropped.
fn logical_lines(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in body.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// A scratch directory laid out like the repository root after `make build` and the Rust
/// guests' build: `examples/`, `target/release/tollgate`, `target/guests/`.
fn scratch_repo() -> tempfile::TempDir {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    symlink(repo().join("examples"), dir.path().join("examples")).unwrap();
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    symlink(tollgate_bin(), dir.path().join("target/release/tollgate")).unwrap();
    symlink(repo().join("target/guests"), dir.path().join("target/guests")).unwrap();
    dir
}

/// Runs `script` with bash in `dir`: (exit code, stdout, stderr).
fn bash(dir: &Path, script: &str) -> (i32, String, String) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env_remove("TOLLGATE_LOG")
        .output()
        .expect("running bash");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The address of the probe listener, from the server's log.
pub(super) fn probe_addr(server: &Server) -> String {
    wait_for("the probe listener's address", Duration::from_secs(10), || {
        let logs = server.logs.text();
        let rest = logs.split("probe listener on http://").nth(1)?;
        Some(rest.split(|c: char| c.is_whitespace() || c == '"').next()?.to_owned())
    })
}

/// What `kubectl create configmap|secret generic NAME --from-file=...` makes (the rules of
/// kubectl's --from-file: a directory gives each regular file in it, keyed by its name; a file
/// is keyed by its name or KEY=; a ConfigMap puts valid UTF-8 in data, anything else in
/// binaryData), and the files `kubectl apply -f` names. Other lines run with bash.
fn emulate(dir: &Path, block: &Block, objects: &mut Objects, applied: &mut Vec<PathBuf>) {
    for line in logical_lines(&block.body) {
        let first = line.split(" | ").next().unwrap().trim();
        if !first.starts_with("kubectl ") {
            let (code, out, err) = bash(dir, &line);
            assert_eq!(code, 0, "line {}: {line}\n{out}{err}", block.line);
            continue;
        }
        assert!(
            !first.contains(['\'', '"', '$']),
            "line {}: emulated kubectl lines are plain words: {first}",
            block.line
        );
        let words: Vec<&str> = first.split_whitespace().skip(1).collect();
        let mut ns = "default".to_owned();
        let mut positional = Vec::new();
        let mut sources = Vec::new();
        let mut i = 0;
        while i < words.len() {
            match words[i] {
                "-n" => {
                    ns = words[i + 1].to_owned();
                    i += 1;
                }
                "-f" => {
                    applied.push(dir.join(words[i + 1]));
                    i += 1;
                }
                "-k" => {
                    let kustomization = dir.join(words[i + 1]);
                    assert!(
                        kustomization.join("kustomization.yaml").is_file(),
                        "line {}: apply -k {first}",
                        block.line
                    );
                    applied.push(kustomization);
                    i += 1;
                }
                "-o" => i += 1,
                w if w.starts_with("--from-file=") => sources.push(w["--from-file=".len()..].to_owned()),
                w if w.starts_with("--dry-run=") => {}
                w if w.starts_with('-') => panic!("line {}: kubectl flag {w} is not emulated", block.line),
                w => positional.push(w),
            }
            i += 1;
        }
        let (kind, name) = match positional.as_slice() {
            ["create", "configmap", name] => ("ConfigMap", *name),
            ["create", "secret", "generic", name] => ("Secret", *name),
            ["apply"] | ["rollout", "status", _] => continue,
            other => panic!("line {}: kubectl {other:?} is not emulated", block.line),
        };
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for src in sources {
            let (key, path) = match src.split_once('=') {
                Some((k, p)) => (Some(k.to_owned()), dir.join(p)),
                None => (None, dir.join(&src)),
            };
            if path.is_dir() {
                assert!(key.is_none(), "KEY= with a directory");
                let mut entries: Vec<_> = std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()).collect();
                entries.sort();
                for p in entries.into_iter().filter(|p| p.is_file()) {
                    files.insert(p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
                }
            } else {
                let key = key.unwrap_or_else(|| path.file_name().unwrap().to_string_lossy().into_owned());
                files.insert(key, std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
            }
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let metadata = json!({"name": name, "namespace": ns});
        let object = if kind == "ConfigMap" {
            let mut data = serde_json::Map::new();
            let mut binary = serde_json::Map::new();
            for (k, v) in files {
                match String::from_utf8(v) {
                    Ok(text) => data.insert(k, json!(text)),
                    Err(e) => binary.insert(k, json!(b64(e.as_bytes()))),
                };
            }
            let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata});
            if !data.is_empty() {
                cm["data"] = Value::Object(data);
            }
            if !binary.is_empty() {
                cm["binaryData"] = Value::Object(binary);
            }
            cm
        } else {
            let data: serde_json::Map<String, Value> = files.into_iter().map(|(k, v)| (k, json!(b64(&v)))).collect();
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata, "data": data})
        };
        objects.insert(key_of(&object), object);
    }
}

/// The files of a ConfigMap or Secret (decoded), in an `items` selection when one is given.
fn object_files(object: &Value, items: Option<&Value>) -> Vec<(String, Vec<u8>)> {
    let b64 = |v: &Value| base64::engine::general_purpose::STANDARD.decode(s(v)).unwrap();
    let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in object["data"].as_object().into_iter().flatten() {
        all.insert(k.clone(), if object["kind"] == "Secret" { b64(v) } else { s(v).as_bytes().to_vec() });
    }
    for (k, v) in object["binaryData"].as_object().into_iter().flatten() {
        all.insert(k.clone(), b64(v));
    }
    match items.and_then(Value::as_array) {
        None => all.into_iter().collect(),
        Some(items) => items
            .iter()
            .map(|item| {
                let key = s(&item["key"]);
                let bytes = all.get(key).unwrap_or_else(|| panic!("{} has no key {key}", object["metadata"]["name"]));
                (s(&item["path"]).to_owned(), bytes.clone())
            })
            .collect(),
    }
}

/// What kubelet writes into a ConfigMap, Secret or projected volume.
fn volume_files(volume: &Value, ns: &str, objects: &Objects) -> Vec<(String, Vec<u8>)> {
    let from = |kind: &str, src: &Value, name_field: &str| {
        object_files(get(objects, kind, ns, s(&src[name_field])), src.get("items"))
    };
    if let Some(cm) = volume.get("configMap") {
        from("ConfigMap", cm, "name")
    } else if let Some(secret) = volume.get("secret") {
        from("Secret", secret, "secretName")
    } else if let Some(projected) = volume.get("projected") {
        let mut files = Vec::new();
        for src in arr(&projected["sources"]) {
            if let Some(cm) = src.get("configMap") {
                files.extend(from("ConfigMap", cm, "name"));
            } else if let Some(secret) = src.get("secret") {
                files.extend(from("Secret", secret, "name"));
            } else {
                panic!("a projected source that is not simulated: {src}")
            }
        }
        files
    } else {
        panic!("not an API-object volume: {volume}")
    }
}

/// A pod's file system as kubelet lays it out for one container, under a scratch root.
pub(super) struct Pod {
    root: tempfile::TempDir,
    volumes: BTreeMap<String, KubeVolume>,
    namespace: String,
    spec: Value,
}

impl Pod {
    pub(super) fn new(spec: &Value, namespace: &str, objects: &Objects, host_paths: &[(&str, &Path)]) -> Pod {
        let root = tempfile::tempdir().unwrap();
        let c = &spec["containers"][0];
        let mut mounts: Vec<&Value> = arr(&c["volumeMounts"]).iter().collect();
        mounts.sort_by_key(|m| s(&m["mountPath"]).len());
        let mut volumes = BTreeMap::new();
        for m in mounts {
            let name = s(&m["name"]);
            let target = root.path().join(s(&m["mountPath"]).trim_start_matches('/'));
            let volume = arr(&spec["volumes"]).iter().find(|v| v["name"] == name).unwrap();
            match volume_type(volume) {
                "configMap" | "secret" | "projected" => {
                    let mut kv = KubeVolume::new(target);
                    kv.publish(&volume_files(volume, namespace, objects));
                    volumes.insert(name.to_owned(), kv);
                }
                "emptyDir" => {
                    // fsGroup: kubelet makes the emptyDir group-owned, group-writable, setgid.
                    std::fs::create_dir_all(&target).unwrap();
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o2777)).unwrap();
                }
                "hostPath" => {
                    let path = s(&volume["hostPath"]["path"]);
                    let (_, local) = host_paths.iter().find(|(h, _)| *h == path).expect("a host path to map");
                    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                    std::os::unix::fs::symlink(local, &target).unwrap();
                }
                other => panic!("a {other} volume is not simulated"),
            }
        }
        Pod { root, volumes, namespace: namespace.to_owned(), spec: spec.clone() }
    }

    /// Starts tollgate with the container's own arguments, paths under the pod's root; the
    /// listeners on 127.0.0.1:0 (the harness finds the main one, the log the probe one).
    pub(super) fn start(&self) -> (Server, String) {
        let flags = serve_flags(&self.spec["containers"][0]);
        let rebase = |v: &str| self.root.path().join(v.trim_start_matches('/')).display().to_string();
        let mut args = Vec::new();
        for (k, v) in &flags {
            match k.as_str() {
                "--plugins" | "--listen" => {}
                "--probe-listen" => args.push(format!("{k}=127.0.0.1:0")),
                _ if v.starts_with('/') => args.push(format!("{k}={}", rebase(v))),
                _ if v.is_empty() => args.push(k.clone()),
                _ => args.push(format!("{k}={v}")),
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(Path::new(&rebase(&flags["--plugins"])), &args);
        let probes = probe_addr(&server);
        (server, probes)
    }

    /// kubelet's update of a volume after its ConfigMaps or Secrets changed.
    fn update(&mut self, volume: &str, objects: &Objects) {
        let spec = arr(&self.spec["volumes"]).iter().find(|v| v["name"] == volume).unwrap().clone();
        let files = volume_files(&spec, &self.namespace, objects);
        self.volumes.get_mut(volume).unwrap().publish(&files);
    }
}

/// HMAC-SHA256, as the audit log's token_id uses it.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.iter().map(|k| k ^ b).collect::<Vec<_>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().to_vec()
}

/// An mTLS client as kube-apiserver's webhook kubeconfig makes it, from `pki/`.
fn apiserver_client(pki: &Path) -> reqwest::blocking::Client {
    let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
    let leaf = Leaf {
        cert_pem: read("kube-apiserver.crt"),
        key_pem: read("kube-apiserver.key"),
        cert_path: pki.join("kube-apiserver.crt"),
        key_path: pki.join("kube-apiserver.key"),
    };
    tls_client(&read("ca.crt"), Some(&leaf), &["h2", "http/1.1"])
}

/// A TokenReview as kube-apiserver sends it, to `url` (with `?timeout=30s`): the answer.
fn apiserver_review(client: &reqwest::blocking::Client, url: &str, api_version: &str, token: &str) -> Answer {
    let body = json!({"kind": "TokenReview", "apiVersion": api_version, "metadata": {"creationTimestamp": null},
        "spec": {"token": token, "audiences": ["https://kubernetes.default.svc.cluster.local"]}, "status": {"user": {}}});
    Answer::from(
        client
            .post(format!("{url}?timeout=30s"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .expect("POST"),
    )
}

/// Validates generated objects with validate.sh, as the manifests are.
fn validate_objects(objects: &Objects, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{what}.yaml"));
    let docs: Vec<String> = objects.values().map(Value::to_string).collect();
    std::fs::write(&path, docs.join("\n---\n")).unwrap();
    let (ok, out, err) = validate_sh(&["check", path.to_str().unwrap()]);
    assert!(ok, "{what}: the generated objects do not validate:\n{out}\n{err}");
    println!("{what}: {}", out.lines().last().unwrap_or_default());
}

/// Whether `out` is what an expect block says: equal JSON (`json expect`) or text (`text expect`).
fn expect_matches(block: &Block, out: &str) -> bool {
    match block.info.split_whitespace().next() {
        Some("json") => {
            let want: Value = serde_json::from_str(&block.body)
                .unwrap_or_else(|e| panic!("walkthrough line {}: not JSON: {e}", block.line));
            serde_json::from_str::<Value>(out).ok() == Some(want)
        }
        Some("text") => out.trim() == block.body.trim(),
        other => panic!("walkthrough line {}: an expect block of {other:?}", block.line),
    }
}

/// The size kube-apiserver counts against a ConfigMap's 1 MiB.
fn configmap_size(cm: &Value) -> usize {
    object_files(cm, None).iter().map(|(_, b)| b.len()).sum()
}

#[test]
fn walkthrough_runs_as_written_and_pods_start_on_the_manifests() {
    let scratch = scratch_repo();
    let dir = scratch.path();
    let walkthrough = blocks(&repo().join("examples/walkthrough.md"));
    let mut objects = Objects::new();
    let mut applied = Vec::new();
    let mut server: Option<(Server, String)> = None;
    let mut last_stdout: Option<(usize, String)> = None;
    let (mut ran, mut expected, mut emulated) = (0, 0, 0);

    for (i, block) in walkthrough.iter().enumerate() {
        let words: Vec<&str> = block.info.split_whitespace().collect();
        match words.as_slice() {
            ["sh", "tested", "serve"] => {
                // Started as written; the harness binds 127.0.0.1:0 in place of --listen.
                let line = logical_lines(&block.body).join(" ");
                let argv: Vec<&str> = line.split_whitespace().collect();
                assert!(!line.contains(['\'', '"', '$']), "the serve command is plain words");
                assert_eq!(&argv[..2], ["target/release/tollgate", "serve"]);
                let mut plugins = None;
                let mut args = Vec::new();
                let mut it = argv[2..].iter();
                while let Some(flag) = it.next() {
                    let value = it.next().unwrap_or_else(|| panic!("{flag} has a value"));
                    match *flag {
                        "--plugins" => plugins = Some(dir.join(value)),
                        "--listen" => assert_eq!(*value, "127.0.0.1:8443", "the address the kubeconfig names"),
                        "--probe-listen" => {
                            assert_eq!(*value, "127.0.0.1:8081");
                            args.extend([flag.to_string(), "127.0.0.1:0".into()]);
                        }
                        _ => args.extend([flag.to_string(), dir.join(value).display().to_string()]),
                    }
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let started = Server::start(&plugins.expect("--plugins"), &args);
                let probes = probe_addr(&started);
                server = Some((started, probes));
                ran += 1;
            }
            ["sh", "tested", rest @ ..] => {
                let exit = rest.iter().find_map(|w| w.strip_prefix("exit=")).map_or(0, |c| c.parse().unwrap());
                let mut script = block.body.clone();
                if let Some((srv, probes)) = &server {
                    script = script.replace("127.0.0.1:8443", &srv.addr.to_string()).replace("127.0.0.1:8081", probes);
                }
                let expect = walkthrough.get(i + 1).filter(|b| b.info.ends_with(" expect"));
                let done = |code: i32, out: &str| code == exit && expect.is_none_or(|e| expect_matches(e, out));
                let mut result = bash(dir, &script);
                if server.is_some() && !done(result.0, &result.1) {
                    // While serving, a block right after a change on disk may run before the
                    // reload is done: run it again (bounded) until its answer is there.
                    let deadline = std::time::Instant::now() + Duration::from_secs(20);
                    while !done(result.0, &result.1) && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(200));
                        result = bash(dir, &script);
                    }
                }
                let (code, out, err) = result;
                assert_eq!(
                    code, exit,
                    "walkthrough line {}: exit {code}\n{script}\n--- stdout\n{out}--- stderr\n{err}",
                    block.line
                );
                for word in rest.iter().filter_map(|w| w.strip_prefix("stderr-has=")) {
                    assert!(
                        err.contains(word),
                        "walkthrough line {}: standard error does not say {word}:\n{err}",
                        block.line
                    );
                }
                last_stdout = Some((block.line, out));
                ran += 1;
            }
            [_, "expect"] => {
                let (line, out) = last_stdout.take().expect("an expect block follows a tested block");
                assert!(
                    expect_matches(block, &out),
                    "walkthrough line {line} printed\n{out}\nnot what line {} says:\n{}",
                    block.line,
                    block.body
                );
                expected += 1;
            }
            ["sh", "emulated"] => {
                emulate(dir, block, &mut objects, &mut applied);
                emulated += 1;
            }
            ["yaml", same] if same.starts_with("same-as=") => {
                let file = std::fs::read_to_string(repo().join(&same["same-as=".len()..])).unwrap();
                let uncommented: String =
                    file.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
                assert_eq!(block.body, uncommented, "walkthrough line {}: differs from {same}", block.line);
            }
            _ => {}
        }
    }
    assert_eq!((ran, expected, emulated), (11, 5, 1), "the walkthrough's tested, expect and emulated blocks");
    let token = std::fs::read_to_string(dir.join("testUser.token")).unwrap().trim_end().to_owned();
    assert!(token.len() >= 32);

    // kube-apiserver's view: the control-plane webhook kubeconfig, its files mapped to pki/.
    let (local, _) = server.take().expect("the walkthrough serves");
    let files = manifests();
    let kubeconfig = &files["apiserver/webhook-kubeconfig-control-plane.yaml"][0];
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let user = &kubeconfig["users"][0]["user"];
    let pki = dir.join("pki");
    for (field, file) in [
        (&cluster["certificate-authority"], "ca.crt"),
        (&user["client-certificate"], "kube-apiserver.crt"),
        (&user["client-key"], "kube-apiserver.key"),
    ] {
        assert_eq!(s(field), format!("/etc/kubernetes/pki/tollgate/{file}"));
    }
    let url = s(&cluster["server"]).replace("127.0.0.1:8443", &local.addr.to_string());
    let client = apiserver_client(&pki);
    for version in VERSIONS {
        let status = apiserver_review(&client, &url, version, &token).review_status(version);
        assert_eq!(status["user"]["username"], "demo:testUser", "{status}");
        assert_eq!(status["user"]["groups"], json!(["demo:admins", "demo:authenticated"]));
    }
    // No client certificate, no answer (hence the probe listener).
    let ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    assert!(tls_client(&ca, None, &["h2"]).post(&url).body("{}").send().is_err(), "mTLS is required");
    let lines =
        local.wait_audit("the kubeconfig's reviews", |l| l.iter().filter(|a| a["tenant"] == "demo").count() >= 3);
    assert!(lines.iter().all(|l| l["token_id"].as_str().is_some_and(|t| t.len() == 16)), "{lines:?}");
    local.stop();

    // The ConfigMap the walkthrough's kubectl makes: valid, within 1 MiB, served by the
    // DaemonSet's own arguments as kubelet mounts it, and updated live.
    let cm = get(&objects, "ConfigMap", "kube-system", "tollgate-tenant-demo").clone();
    assert_eq!(cm["binaryData"].as_object().unwrap().len(), 2, "the .wasm files go into binaryData: {}", cm["data"]);
    assert!(configmap_size(&cm) < CONFIGMAP_MAX / 2, "{} bytes", configmap_size(&cm));
    validate_objects(&objects, "walkthrough-objects");
    for path in &applied {
        assert!(path.exists() || path.ends_with("-"), "kubectl apply -f {}: no such file", path.display());
    }
    let mut cluster_objects = objects_of(&files, "control-plane/");
    cluster_objects.extend(objects.clone());
    let daemonset = get(&cluster_objects, "DaemonSet", "kube-system", "tollgate")["spec"]["template"]["spec"].clone();
    // The node's hand-over directory, as the walkthrough's `install -d -m 0700` makes it.
    let handover = tempfile::tempdir().unwrap();
    std::fs::set_permissions(handover.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut pod = Pod::new(
        &daemonset,
        "kube-system",
        &cluster_objects,
        &[("/etc/kubernetes/pki/tollgate", pki.as_path()), ("/var/lib/tollgate/handover", handover.path())],
    );
    let (daemon, probes) = pod.start();
    serves_the_tenant(&daemon, &probes, &pki, &token, "demo:admins");
    let cache = pod.root.path().join("var/cache/tollgate/cc");
    let mode = std::fs::metadata(&cache).expect("tollgate made its cache dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    // A ConfigMap update: kubelet swaps `..data`; the new generation is served.
    let toml = "10-static-tokens.toml";
    let mut updated = cm.clone();
    let text = s(&updated["data"][toml]).replace("testUser  idp:admins", "testUser  idp:dev-web");
    updated["data"][toml] = json!(text);
    cluster_objects.insert(key_of(&updated), updated);
    pod.update("tenant-demo", &cluster_objects);
    wait_groups(&daemon, &pki, &token, json!(["demo:dev-web", "demo:authenticated"]));
    drop(daemon);

    // The Deployment: the README's kubectl lines (components and tenant ConfigMaps, the
    // fingerprint key, the TLS Secret without cert-manager), the projected tenant volume.
    let readme = blocks(&k8s().join("README.md"));
    let mut objects = Objects::new();
    for block in readme.iter().filter(|b| b.info == "sh emulated") {
        emulate(dir, block, &mut objects, &mut applied);
    }
    for cm in objects.values().filter(|o| o["kind"] == "ConfigMap") {
        assert!(configmap_size(cm) < CONFIGMAP_MAX, "{}: {} bytes", cm["metadata"]["name"], configmap_size(cm));
    }
    validate_objects(&objects, "deployment-objects");
    for path in &applied {
        assert!(path.exists() || path.ends_with("-"), "kubectl apply -f {}: no such file", path.display());
    }
    let mut cluster_objects = objects_of(&files, "deployment/");
    cluster_objects.extend(objects.clone());
    let deployment =
        get(&cluster_objects, "Deployment", "tollgate-system", "tollgate")["spec"]["template"]["spec"].clone();
    let mut pod = Pod::new(&deployment, "tollgate-system", &cluster_objects, &[]);
    let (replica, probes) = pod.start();
    serves_the_tenant(&replica, &probes, &pki, &token, "demo:admins");
    // The shared fingerprint key: token_id is HMAC-SHA256(key, token), the same on every replica.
    let key = object_files(get(&cluster_objects, "Secret", "tollgate-system", "tollgate-fingerprint"), None);
    let expected_id = hex::encode(&hmac_sha256(&key[0].1, token.as_bytes())[..8]);
    let lines = replica.wait_audit("the replica's audit line", |l| l.iter().any(|a| a["tenant"] == "demo"));
    assert!(lines.iter().any(|l| l["token_id"] == expected_id.as_str()), "token_id {expected_id} in {lines:?}");
    let mut tenant = get(&cluster_objects, "ConfigMap", "tollgate-system", "tollgate-tenant-demo").clone();
    let text = s(&tenant["data"]["10-static-tokens.toml"]).replace("testUser  idp:admins", "testUser  idp:dev-ops");
    tenant["data"]["10-static-tokens.toml"] = json!(text);
    cluster_objects.insert(key_of(&tenant), tenant);
    pod.update("tenant-demo", &cluster_objects);
    wait_groups(&replica, &pki, &token, json!(["demo:dev-ops", "demo:authenticated"]));
    // The token is nowhere in what the replica wrote.
    let output = format!("{}{}", replica.logs.text(), replica.audit.text());
    assert!(!output.contains(&token), "the token appears in tollgate's output");
}

/// Ready on the probe listener, the tenant live, and the walkthrough's user authenticated
/// through mTLS exactly as kube-apiserver would.
fn serves_the_tenant(server: &Server, probes: &str, pki: &Path, token: &str, group: &str) {
    let plain = reqwest::blocking::Client::new();
    wait_for("readyz", Duration::from_secs(60), || {
        let r = plain.get(format!("http://{probes}/readyz")).send().ok()?;
        (r.status() == 200).then_some(())
    });
    assert_eq!(plain.get(format!("http://{probes}/healthz")).send().unwrap().status(), 200);
    let status: Value = plain.get(format!("http://{probes}/status")).send().unwrap().json().unwrap();
    let demo = arr(&status["tenants"]).iter().find(|t| t["tenant"] == "demo").unwrap_or_else(|| panic!("{status}"));
    // The probe port's short view: generation and digests, no refusal text or match prefixes.
    assert_eq!(demo["digests"].as_array().map(Vec::len), Some(2), "{status}");
    let client = apiserver_client(pki);
    let url = format!("https://{}/authenticate/demo", server.addr);
    let status = apiserver_review(&client, &url, V1, token).review_status(V1);
    assert_eq!(status["user"]["username"], "demo:testUser", "{status}");
    assert!(arr(&status["user"]["groups"]).contains(&json!(group)), "{status}");
    let denied = apiserver_review(&client, &url, V1, "not-a-token-of-this-tenant").review_status(V1);
    assert_eq!(denied, json!({"authenticated": false}));
}

fn wait_groups(server: &Server, pki: &Path, token: &str, groups: Value) {
    let client = apiserver_client(pki);
    let url = format!("https://{}/authenticate/demo", server.addr);
    wait_for("the updated ConfigMap's generation", Duration::from_secs(30), || {
        let status = apiserver_review(&client, &url, V1, token).review_status(V1);
        (status["user"]["groups"] == groups).then_some(())
    });
}

/// Why the large-plugin variants exist: a Python component does not fit in a ConfigMap.
#[test]
fn python_components_do_not_fit_in_a_configmap() {
    for name in ["static-tokens", "group-mapper"] {
        let path = repo().join(format!("target/guests/python/{name}.wasm"));
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|_| {
                panic!("{} is missing: run `plugins/languages.sh python` (make test does)", path.display())
            })
            .len() as usize;
        assert!(size > CONFIGMAP_MAX, "{name}: {size} bytes would fit in a ConfigMap");
    }
    for name in [built::STATIC_TOKENS, built::GROUP_MAPPER] {
        let size = std::fs::metadata(name).unwrap().len() as usize;
        assert!(size < CONFIGMAP_MAX / 4, "{name}: {size} bytes");
    }
}

// ---- kustomize ------------------------------------------------------------------------------

/// The operator's overlay (examples/kubernetes/my-cluster) turns every knob, and each reaches
/// every object it must: no object is left in the old namespace, with the old image, the old
/// Service address or the bootstrap CA.
#[test]
fn the_overlay_knobs_reach_every_object_they_must() {
    let files = manifests();
    let base = objects_of(&files, "deployment/");
    let mine = objects_of(&files, "my-cluster/");
    assert_eq!(
        base.len(),
        mine.len() + 3,
        "the overlay drops the bootstrap CA's Issuers and Certificate, nothing else"
    );
    let text = serde_json::to_string(&files["my-cluster/"]).unwrap();
    for gone in ["tollgate-system", "registry.example.com/tollgate", "10.96.100.100", "tollgate-selfsigned"] {
        assert!(!text.contains(gone), "{gone} is still in the overlay's output");
    }
    for ((kind, ns, name), object) in &mine {
        let cluster_scoped = ["Namespace", "PriorityClass", "ClusterRoleBinding"].contains(&kind.as_str());
        assert_eq!(ns.is_empty(), cluster_scoped, "{kind}/{name} in {ns:?}");
        if !cluster_scoped {
            assert_eq!(ns, "auth-system", "{kind}/{name}");
        }
        if kind == "Certificate" {
            assert_eq!(
                object["spec"]["issuerRef"],
                json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
            );
        }
    }
    assert!(
        get(&mine, "Namespace", "", "auth-system")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
            == "restricted"
    );
    let deployment = get(&mine, "Deployment", "auth-system", "tollgate");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.corp.example/platform/tollgate:0.1.0"
    );
    let service = get(&mine, "Service", "auth-system", "tollgate");
    assert_eq!(service["spec"]["clusterIP"], "10.100.0.53");
    let cert = get(&mine, "Certificate", "auth-system", "tollgate-tls");
    assert_eq!(cert["spec"]["ipAddresses"], json!(["10.100.0.53"]));
    assert_eq!(
        cert["spec"]["dnsNames"],
        json!(["tollgate", "tollgate.auth-system.svc", "tollgate.auth-system.svc.cluster.local"])
    );
    let tenants = get(&mine, "ConfigMap", "auth-system", "tollgate-tenants");
    let own = std::fs::read_to_string(k8s().join("my-cluster/tenants.toml")).unwrap();
    assert_eq!(tenants["data"]["tenants.toml"], own.as_str(), "the overlay's own tenants file");
    assert_ne!(own, std::fs::read_to_string(k8s().join("base/tenants.toml")).unwrap());

    // The bases render what their files say (kustomize adds nothing but the namespace), and
    // the tenants ConfigMap is the canonical file itself, one copy for both layouts.
    let static_pod = &files["static-pod/"];
    assert_eq!(static_pod.len(), 1);
    assert_eq!(static_pod[0]["kind"], "Pod");
    let canonical = std::fs::read_to_string(k8s().join("base/tenants.toml")).unwrap();
    for (layout, ns) in [("control-plane/", "kube-system"), ("deployment/", "tollgate-system")] {
        let objects = objects_of(&files, layout);
        assert_eq!(get(&objects, "ConfigMap", ns, "tollgate-tenants")["data"]["tenants.toml"], canonical.as_str());
        assert!(objects.contains_key(&(
            "ClusterRoleBinding".into(),
            String::new(),
            "tollgate-demo-admins-view".into()
        )));
    }
}

/// `kubectl kustomize` is the real one, and a broken overlay fails the validation.
#[test]
fn a_broken_kustomization_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("overlay");
    std::fs::create_dir(&overlay).unwrap();
    // kustomize takes relative paths only: up to / and down to the base.
    let base = format!(
        "{}{}",
        "../".repeat(overlay.components().count() - 1),
        k8s().join("deployment").strip_prefix("/").unwrap().display()
    );
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\npatches:\n- target: {{kind: Deployment, name: tollgate}}\n  patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: two\n"
        ),
    )
    .unwrap();
    let (ok, out, _) = validate_sh(&["check", dir.path().to_str().unwrap()]);
    assert!(!ok && out.contains("replicas") && out.contains("is not of type 'integer'"), "{out}");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- missing.yaml\n",
    )
    .unwrap();
    let (ok, out, _) = validate_sh(&["check", dir.path().to_str().unwrap()]);
    assert!(!ok && out.contains("kubectl kustomize failed"), "{out}");
}

/// The registry overlay (examples/kubernetes/registry): every file its tenants file names for
/// the registry plugins (keys, credentials) is mounted where it says, the cache they are kept
/// in is the emptyDir `--cache-dir` names, and the NetworkPolicy lets tollgate reach a registry.
#[test]
fn the_registry_overlay_mounts_what_its_tenants_file_names() {
    let files = manifests();
    let objects = objects_of(&files, "registry/");
    let deployment = get(&objects, "Deployment", "tollgate-system", "tollgate");
    let spec = &deployment["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let flags = serve_flags(c);
    assert!(flags.contains_key("--cache-dir"), "verified artifacts are kept under --cache-dir");
    let tenants =
        s(&get(&objects, "ConfigMap", "tollgate-system", "tollgate-tenants")["data"]["tenants.toml"]).to_owned();
    let table: toml::Table = tenants.parse().unwrap();
    let sources = table["tenant"]["python"]["oci"].as_array().expect("the python tenant's registry plugins");
    assert_eq!(sources.len(), 2);
    for source in sources {
        let paths = source["keys"].as_array().unwrap().iter().chain(source.get("auth"));
        for path in paths.map(|p| p.as_str().unwrap()) {
            let (mp, volume) = mount_of(spec, c, path).unwrap_or_else(|| panic!("{path} is not mounted"));
            let file = path.strip_prefix(&format!("{mp}/")).unwrap();
            match volume_type(volume) {
                "configMap" => assert_eq!(file, "cosign.pub"),
                "secret" => {
                    assert_eq!(file, ".dockerconfigjson", "the key `kubectl create secret docker-registry` writes")
                }
                other => panic!("{path} from a {other} volume"),
            }
        }
    }
    let policy = get(&objects, "NetworkPolicy", "tollgate-system", "tollgate");
    let egress = serde_json::to_string(&policy["spec"]["egress"]).unwrap();
    assert!(egress.contains("443") && egress.contains("53"), "DNS and HTTPS out: {egress}");
}
