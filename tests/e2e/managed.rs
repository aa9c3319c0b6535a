//! Managed clusters through Pinniped (examples/managed/): the kustomization and the
//! `WebhookAuthenticator` checked offline, then tollgate, started with the rendered Deployment's
//! own arguments, answering the TokenReview exactly as Pinniped's Concierge sends it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Value, json};
use tollgate_tests::*;

use super::kubernetes::{Objects, Pod, arr, get, key_of, objects_of, port_of, repo, s, serve_flags, validate_sh};

fn managed() -> PathBuf {
    repo().join("examples/managed")
}

/// The documents of `path` (a file, or a kustomization rendered by kubectl), as validate.sh parses them.
fn parsed(path: &std::path::Path) -> BTreeMap<String, Vec<Value>> {
    let (ok, out, err) = validate_sh(&["json", path.to_str().unwrap()]);
    assert!(ok, "{}: {out}{err}", path.display());
    serde_json::from_str(&out).unwrap()
}

/// The WebhookAuthenticator as the README's `sed` fills it: the CA, base64, as cert-manager's
/// Secret holds it.
fn filled_authenticator(ca_pem: &str) -> (String, Value) {
    let text = std::fs::read_to_string(managed().join("webhook-authenticator.yaml")).unwrap();
    assert!(text.contains("TOLLGATE_CA_BASE64"), "the placeholder the README's sed replaces");
    let filled = text.replace("TOLLGATE_CA_BASE64", &base64::engine::general_purpose::STANDARD.encode(ca_pem));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhook-authenticator.yaml");
    std::fs::write(&path, &filled).unwrap();
    let doc = parsed(&path).into_values().next().unwrap().remove(0);
    (filled, doc)
}

/// validate.sh's verdict on one WebhookAuthenticator text.
fn check_authenticator(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authenticator.yaml");
    std::fs::write(&path, text).unwrap();
    let (ok, out, _) = validate_sh(&["check", path.to_str().unwrap()]);
    (ok, out)
}

#[test]
fn the_overlay_and_the_webhook_authenticator_agree_and_validate() {
    let (ok, out, err) = validate_sh(&["check", managed().to_str().unwrap()]);
    assert!(ok && out.trim_end().ends_with("; 0 errors"), "{out}{err}");

    // The WebhookAuthenticator, filled in: Pinniped's fields pass; a broken one does not.
    let pki = Pki::new("managed");
    let (filled, authenticator) = filled_authenticator(&pki.ca_pem);
    let (ok, out) = check_authenticator(&filled);
    assert!(ok && out.contains("1 Pinniped objects"), "{out}");
    for (what, from, to, says) in [
        ("placeholder", "certificateAuthorityData: ", "certificateAuthorityData: x", "base64 of PEM"),
        ("plain http", "endpoint: https://", "endpoint: http://", "starts with https://"),
        ("namespaced", "  name: tollgate\n", "  name: tollgate\n  namespace: tollgate-system\n", "cluster-scoped"),
        ("typo", "  tls:\n", "  tsl: {}\n  tls:\n", "unknown spec fields"),
        (
            "both CA fields",
            "  tls:\n",
            "  tls:\n    certificateAuthorityDataSource: {kind: Secret, name: ca, key: ca.crt}\n",
            "not both",
        ),
    ] {
        assert!(filled.contains(from), "{what}");
        let (ok, out) = check_authenticator(&filled.replacen(from, to, 1));
        assert!(!ok && out.contains(says), "{what}: a broken WebhookAuthenticator passed or failed otherwise:\n{out}");
    }

    // The endpoint is the Service, by its cluster DNS name and port, and the tenant.
    let rendered = parsed(&managed());
    let objects = objects_of(&rendered, "");
    let endpoint = reqwest::Url::parse(s(&authenticator["spec"]["endpoint"])).unwrap();
    let host = endpoint.host_str().unwrap();
    let (service_name, namespace) = host.strip_suffix(".svc").unwrap().split_once('.').unwrap();
    let service = get(&objects, "Service", namespace, service_name);
    assert_eq!(service["spec"]["ports"][0]["port"], endpoint.port_or_known_default().unwrap());
    let cert = get(&objects, "Certificate", namespace, "tollgate-tls");
    assert!(arr(&cert["spec"]["dnsNames"]).contains(&json!(host)), "the serving certificate names {host}");
    let tenant = endpoint.path().strip_prefix("/authenticate/").expect("a tenant's path");

    // Without mTLS: no --client-ca, a tenant that names no clients, and only the Concierge's
    // namespace reaches the port.
    let deployment = get(&objects, "Deployment", namespace, "tollgate");
    let flags = serve_flags(&deployment["spec"]["template"]["spec"]["containers"][0]);
    assert!(!flags.contains_key("--client-ca"), "the Concierge presents no client certificate");
    assert_eq!(port_of(&flags["--listen"]), 8443);
    let tenants = s(&get(&objects, "ConfigMap", namespace, "tollgate-tenants")["data"]["tenants.toml"]).to_owned();
    let table: toml::Table = tenants.parse().unwrap();
    let guardrails = table["tenant"][tenant].as_table().expect("the endpoint's tenant is in the tenants file");
    assert!(!guardrails.contains_key("clients"), "a tenant naming clients refuses the Concierge");
    assert!(!objects.keys().any(|(k, _, n)| k == "Certificate" && n == "tollgate-apiserver-client"));
    let policy = get(&objects, "NetworkPolicy", namespace, "tollgate");
    let webhook_rule = arr(&policy["spec"]["ingress"]).iter().find(|r| r["ports"][0]["port"] == 8443).unwrap();
    assert_eq!(
        webhook_rule["from"],
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "pinniped-concierge"}}}])
    );
}

#[test]
fn tollgate_answers_the_token_review_pinniped_sends() {
    let rendered = parsed(&managed());
    let mut objects: Objects = objects_of(&rendered, "");
    let ns = "tollgate-system";
    let pki = Pki::new("managed");
    let (_, authenticator) = filled_authenticator(&pki.ca_pem);
    let endpoint = reqwest::Url::parse(s(&authenticator["spec"]["endpoint"])).unwrap();
    let host = endpoint.host_str().unwrap().to_owned();

    // What the README has the operator create: the components, the tenant's manifests (no
    // uid: Pinniped refuses one), the fingerprint key, and cert-manager's TLS Secret.
    let token = random_token("pinniped");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let static_tokens =
        format!("[config]\ntokens = \"\"\"\n{}  testUser  -  idp:admins  -\n\"\"\"\n", sha256_hex(&token));
    let mapper = std::fs::read_to_string(repo().join("examples/kubernetes/tenants/demo/50-group-mapper.toml")).unwrap();
    let serving = pki.server_for("tollgate", &["tollgate", &host]);
    for object in [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tollgate-components", "namespace": ns},
            "binaryData": {"static-tokens.wasm": b64(&std::fs::read(built::STATIC_TOKENS).unwrap()),
                           "group-mapper.wasm": b64(&std::fs::read(built::GROUP_MAPPER).unwrap())}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tollgate-tenant-demo", "namespace": ns},
            "data": {"10-static-tokens.toml": static_tokens, "50-group-mapper.toml": mapper}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tollgate-fingerprint", "namespace": ns},
            "data": {"key": b64(&[7u8; 32])}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tollgate-tls", "namespace": ns},
            "data": {"tls.crt": b64(serving.cert_pem.as_bytes()), "tls.key": b64(serving.key_pem.as_bytes()),
                     "ca.crt": b64(pki.ca_pem.as_bytes())}}),
    ] {
        objects.insert(key_of(&object), object);
    }
    let spec = get(&objects, "Deployment", ns, "tollgate")["spec"]["template"]["spec"].clone();
    let pod = Pod::new(&spec, ns, &objects, &[]);
    let (server, _probes) = pod.start();

    // The Concierge's client: the CA from the WebhookAuthenticator, the endpoint's host name
    // verified, no client certificate, HTTP/2 offered first (Go's transport).
    let ca_data = s(&authenticator["spec"]["tls"]["certificateAuthorityData"]);
    let ca = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(ca_data).unwrap()).unwrap();
    let client = tls_client_builder(&ca, None, &["h2", "http/1.1"]).resolve(&host, server.addr).build().unwrap();
    let mut url = endpoint.clone();
    url.set_port(Some(server.addr.port())).unwrap();
    let concierge = |body: String| {
        let response = client
            .post(url.clone())
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .header("Accept-Encoding", "gzip")
            .header("User-Agent", "Go-http-client/2.0")
            .body(body)
            .send()
            .expect("the Concierge's POST");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        Answer::from(response)
    };
    // Pinniped v0.40 and later (apimachinery >= 0.34: metadata {}), and before (creationTimestamp null).
    let bodies = |token: &str| {
        [
            format!(
                r#"{{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1beta1","metadata":{{}},"spec":{{"token":{}}},"status":{{"user":{{}}}}}}"#,
                json!(token)
            ),
            format!(
                r#"{{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1beta1","metadata":{{"creationTimestamp":null}},"spec":{{"token":{}}},"status":{{"user":{{}}}}}}"#,
                json!(token)
            ),
        ]
    };
    for body in bodies(&token) {
        let answer = concierge(body);
        assert_eq!(answer.status, 200, "{}", answer.body);
        let review = answer.json();
        assert_eq!(review["apiVersion"], V1BETA1);
        assert_eq!(review["kind"], "TokenReview");
        // Pinniped's own checks of the user (internal/registry/credentialrequest/rest.go).
        let status = &review["status"];
        assert_eq!(status["authenticated"], true, "{review}");
        let user = &status["user"];
        assert!(!s(&user["username"]).is_empty(), "an empty username fails the login");
        assert!(user.get("uid").is_none_or(|u| u == ""), "a uid fails the login: {user}");
        for key in user["extra"].as_object().into_iter().flatten().map(|(k, _)| k) {
            assert!(key.contains('/') && key == &key.to_lowercase() && !key.contains('='), "extra key {key}");
        }
        assert_eq!(user["username"], "demo:testUser");
        assert_eq!(user["groups"], json!(["demo:admins", "demo:authenticated"]));
    }
    // An unknown token: a clean denial, which Pinniped turns into "authentication failed".
    for body in bodies("not-a-token-of-this-tenant") {
        let answer = concierge(body);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["status"]["authenticated"], false, "{}", answer.body);
    }
    let output = format!("{}{}", server.logs.text(), server.audit.text());
    assert!(!output.contains(&token), "the token appears in tollgate's output");
}
