//! The token never appears in any log, audit line, metric or answer — whatever a plugin does
//! with it (SPEC §3, §9).

use tollgate_tests::*;

const LEAKS: [&str; 8] = [
    "leak-deny",
    "leak-unavailable",
    "leak-log",
    "leak-stdout",
    "leak-stderr",
    "leak-panic",
    "leak-grant",
    "leak-extra",
];

fn leaky_dir() -> PluginDir {
    let dir = PluginDir::new();
    for (i, action) in LEAKS.iter().enumerate() {
        let head = format!("[match]\ntoken_prefix = [\"{action}-\"]");
        dir.probe(&format!("{:02}-{action}", 10 + i), &probe_manifest(&head, action, ""));
    }
    // A mapper that leaks what it sees (the token must not reach it at all).
    dir.probe("90-map", &probe_manifest("role = \"mapper\"", "leak-log", ""));
    dir
}

#[test]
fn a_canary_token_appears_nowhere() {
    let dir = leaky_dir();
    for flags in [&[][..], &["--deny-reason-in-status", "--log-format", "json"][..]] {
        let server = Server::start(dir.path(), flags);
        let mut bodies = String::new();
        let mut canaries = Vec::new();
        for action in LEAKS {
            for version in VERSIONS {
                let canary = random_token(&format!("{action}-canary-"));
                let answer = server.review_at("/authenticate", version, Some(&canary), &["aud"]);
                assert!(matches!(answer.status, 200 | 503), "{action}: {}", answer.body);
                if answer.status == 200 {
                    assert_eq!(answer.json()["status"]["authenticated"], false, "{action}: {}", answer.body);
                }
                bodies.push_str(&answer.body);
                canaries.push(canary);
            }
        }
        // Also malformed requests carrying it.
        let canary = random_token("leak-deny-canary-");
        let answer = server.post_raw(
            "/authenticate",
            Some("application/json"),
            format!("{{\"spec\":{{\"token\":\"{canary}\"}},\"kind\":\"TokenReview\",\"apiVersion\":\"v9\"}}"),
        );
        bodies.push_str(&answer.body);
        canaries.push(canary);
        bodies.push_str(&server.get("/metrics").body);
        bodies.push_str(&server.get("/status").body);

        let lines = server.wait_audit("every audit line", |l| l.len() >= LEAKS.len() * 2);
        let logs = server.logs.text();
        assert!(logs.contains("[token]"), "the scrubbed lines did reach the log");
        if flags.is_empty() {
            assert!(logs.contains("panic [token]"), "a panic message is logged, scrubbed:\n{logs}");
        } else {
            assert!(
                bodies.contains("denied [token]"),
                "--deny-reason-in-status puts the scrubbed reason in status.error"
            );
        }
        let rules: Vec<_> = lines.iter().filter_map(|l| l["error_class"].as_str()).collect();
        assert!(rules.contains(&"token-in-grant"), "{rules:?}");
        let audit = server.audit.text();
        drop(server);
        for canary in &canaries {
            assert!(!bodies.contains(canary.as_str()), "the token is in an answer");
            assert!(!logs.contains(canary.as_str()), "the token is in the log:\n{logs}");
            assert!(!audit.contains(canary.as_str()), "the token is in the audit log");
            // Not even a large piece of it.
            assert!(!logs.contains(&canary[..canary.len() - 4]) && !audit.contains(&canary[..canary.len() - 4]));
        }
    }
}

/// The same over TLS with client certificates, through the error paths: a caller refused by a
/// tenant, a caller whose handshake fails, a malformed body, and plugins leaking.
#[test]
fn a_canary_token_appears_nowhere_over_tls_and_its_error_paths() {
    let pki = Pki::new("canary");
    let server_cert = pki.server("server");
    let trusted = pki.client("trusted", "kube-apiserver", None);
    let dir = leaky_dir();
    dir.add_in("locked", "10-leak", built::PROBE, &probe_manifest("", "leak-log", ""));
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), "[tenant.locked]\nclients = [\"CN=someone-else\"]\n").unwrap();
    let args = tls_args(
        &server_cert,
        &["--client-ca", pki.ca_path.to_str().unwrap(), "--tenants", tenants.path().to_str().unwrap()],
    );
    let mut server = Server::start(dir.path(), &args);
    let mut canaries = Vec::new();
    let mut bodies = String::new();

    // Refused handshake: no client certificate.
    let canary = random_token("leak-log-canary-");
    server.set_client(tls_client(&pki.ca_pem, None, &["h2"]));
    let sent = server
        .client()
        .post(server.url("/authenticate"))
        .header("Content-Type", "application/json")
        .body(format!(r#"{{"apiVersion":"{V1}","kind":"TokenReview","spec":{{"token":"{canary}"}}}}"#));
    assert!(sent.send().is_err());
    canaries.push(canary);

    server.set_client(tls_client(&pki.ca_pem, Some(&trusted), &["h2", "http/1.1"]));
    // Refused by the tenant's clients list.
    let canary = random_token("leak-log-canary-");
    let answer = server.review_at("/authenticate/locked", V1, Some(&canary), &[]);
    answer.assert_status_object(403, "Forbidden");
    bodies.push_str(&answer.body);
    canaries.push(canary);
    // Malformed.
    let canary = random_token("leak-deny-canary-");
    let answer = server.post_raw(
        "/authenticate",
        Some("application/json"),
        format!(r#"{{"kind":"TokenReview","spec":"{canary}"}}"#),
    );
    bodies.push_str(&answer.body);
    canaries.push(canary);
    // Every leaking plugin, over HTTP/2.
    for action in LEAKS {
        let canary = random_token(&format!("{action}-canary-"));
        bodies.push_str(&server.review(&canary).body);
        canaries.push(canary);
    }
    bodies.push_str(&server.get("/metrics").body);
    bodies.push_str(&server.get("/status").body);
    server.wait_audit("audit lines", |l| l.len() >= LEAKS.len());
    let (logs, audit) = (server.logs.text(), server.audit.text());
    drop(server);
    for canary in &canaries {
        assert!(!bodies.contains(canary.as_str()), "in an answer");
        assert!(!logs.contains(canary.as_str()), "in the log:\n{logs}");
        assert!(!audit.contains(canary.as_str()), "in the audit log");
    }
}
