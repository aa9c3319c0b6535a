//! Chain semantics (SPEC §3) through the live server, in both API versions.

use serde_json::json;
use tollgate_tests::*;

fn allow(username: &str, config: &str) -> String {
    probe_manifest("", "allow", &format!("username = \"{username}\"\n{config}"))
}

#[test]
fn an_abstain_only_chain_is_a_clean_denial() {
    let dir = PluginDir::new();
    dir.probe("10-a", &probe_manifest("", "abstain", "")).probe("20-b", &probe_manifest("", "abstain", ""));
    let server = Server::start(dir.path(), &[]);
    for version in VERSIONS {
        assert_eq!(
            server.review_at("/authenticate", version, Some("tok-12345678"), &[]).review_status(version),
            json!({"authenticated": false})
        );
    }
}

#[test]
fn authenticators_run_in_file_name_order_until_one_decides() {
    let dir = PluginDir::new();
    dir.probe("30-late", &allow("late", ""))
        .probe("10-first", &probe_manifest("", "abstain", ""))
        .probe("20-second", &allow("second", ""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.review("tok-12345678").review_status(V1)["user"]["username"], "second");
    let metrics = server.get("/metrics").body;
    assert!(!metrics.contains("plugin=\"30-late\""), "30-late must not run after 20-second decided\n{metrics}");
}

#[test]
fn deny_ends_the_chain() {
    let dir = PluginDir::new();
    dir.probe("10-deny", &probe_manifest("", "deny", "reason = \"revoked\""))
        .probe("20-allow", &allow("alice", ""))
        .probe("50-map", &probe_manifest("role = \"mapper\"", "map", "groups = \"mapped\""));
    let server = Server::start(dir.path(), &[]);
    for version in VERSIONS {
        let status = server.review_at("/authenticate", version, Some("tok-12345678"), &[]).review_status(version);
        assert_eq!(status, json!({"authenticated": false}), "a denial is clean: no error, so it can be cached");
    }
    let lines = server.wait_audit("audit", |l| l.len() >= 2);
    assert_eq!(lines[0]["plugin"], "10-deny");
    assert_eq!(lines[0]["reason"], "revoked");
    let metrics = server.get("/metrics").body;
    assert!(!metrics.contains("plugin=\"20-allow\"") && !metrics.contains("plugin=\"50-map\""), "{metrics}");
}

#[test]
fn mappers_run_after_the_authenticator_and_never_see_the_token() {
    let dir = PluginDir::new();
    dir.probe("90-echo", &probe_manifest("role = \"mapper\"", "echo", "username = \"echoed\""))
        .probe("10-allow", &allow("alice", "groups = \"idp:a\""));
    let server = Server::start(dir.path(), &[]);
    let status = server.review("a-secret-token-value").review_status(V1);
    let extra = &status["user"]["extra"];
    assert_eq!(status["user"]["username"], "echoed");
    assert_eq!(extra["seen/token-empty"], json!(["true"]));
    assert_eq!(extra["seen/current-user"], json!(["alice"]));
    assert_eq!(extra["seen/current-plugin"], json!(["10-allow"]));
}

#[test]
fn the_example_group_mapper_rewrites_the_static_tokens_grant() {
    let dir = PluginDir::new();
    dir.add("10-static-tokens", built::STATIC_TOKENS, &static_tokens_manifest("")).example(
        "50-group-mapper",
        built::GROUP_MAPPER,
        built::GROUP_MAPPER_MANIFEST,
    );
    let server = Server::start(dir.path(), &[]);
    for version in VERSIONS {
        let user = server.review_at("/authenticate", version, Some(ALICE), &[]).review_status(version)["user"].clone();
        assert_eq!(user["username"], "alice");
        assert_eq!(user["uid"], "1001");
        assert_eq!(user["groups"], json!(["demo:admins", "demo:dev-web", "demo:authenticated"]));
        assert_eq!(user["extra"]["team"], json!(["platform", "sre"]));
    }
}

#[test]
fn a_mapper_deny_vetoes_and_a_mapper_unavailable_is_503() {
    let dir = PluginDir::new();
    dir.probe("10-allow", &allow("alice", ""))
        .probe("50-veto", &probe_manifest("role = \"mapper\"", "deny", "reason = \"offboarded\""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.review("tok-12345678").review_status(V1), json!({"authenticated": false}));

    let dir = PluginDir::new();
    dir.probe("10-allow", &allow("alice", ""))
        .probe("50-down", &probe_manifest("role = \"mapper\"", "unavailable", "reason = \"ldap down\""));
    let server = Server::start(dir.path(), &[]);
    server.review("tok-12345678").assert_status_object(503, "ServiceUnavailable");
}

#[test]
fn unavailable_is_remembered_while_others_are_asked() {
    // unavailable, then allow: authenticated.
    let dir = PluginDir::new();
    dir.probe("10-down", &probe_manifest("", "unavailable", "reason = \"idp down\""))
        .probe("20-allow", &allow("alice", ""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.review("tok-12345678").review_status(V1)["authenticated"], true);

    // unavailable, then abstain: 503 without Retry-After (kube-apiserver tries once, no storm).
    let dir = PluginDir::new();
    dir.probe("10-down", &probe_manifest("", "unavailable", "reason = \"idp down\""))
        .probe("20-abstain", &probe_manifest("", "abstain", ""));
    let server = Server::start(dir.path(), &[]);
    for version in VERSIONS {
        server
            .review_at("/authenticate", version, Some("tok-12345678"), &[])
            .assert_status_object(503, "ServiceUnavailable");
    }

    // unavailable, then deny: the deny decides.
    let dir = PluginDir::new();
    dir.probe("10-down", &probe_manifest("", "unavailable", "reason = \"idp down\""))
        .probe("20-deny", &probe_manifest("", "deny", ""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.review("tok-12345678").review_status(V1), json!({"authenticated": false}));
}

#[test]
fn match_routes_tokens_to_the_plugins_that_claim_them() {
    let dir = PluginDir::new();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    dir.probe("10-prefixed", &probe_manifest("[match]\ntoken_prefix = [\"tg_\"]", "allow", "username = \"by-prefix\""))
        .probe(
            "20-issuer",
            &probe_manifest("[match]\njwt_issuer = [\"https://idp.example\"]", "allow", "username = \"by-issuer\""),
        )
        .probe("30-rest", &probe_manifest("", "deny", ""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.review("tg_abcdefgh").review_status(V1)["user"]["username"], "by-prefix");
    let jwt = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(r#"{"iss":"https://idp.example","sub":"x"}"#));
    assert_eq!(server.review(&jwt).review_status(V1)["user"]["username"], "by-issuer");
    let other = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(r#"{"iss":"https://other"}"#));
    assert_eq!(server.review(&other).review_status(V1), json!({"authenticated": false}));
    let metrics = server.get("/metrics").body;
    assert!(metrics.contains("plugin=\"10-prefixed\",outcome=\"skipped\"} 2"), "{metrics}");
}

#[test]
fn audiences_are_intersected_in_spec_order() {
    let dir = PluginDir::new();
    dir.probe("10-allow", &allow("alice", "audiences = \"b, a\""));
    let server = Server::start(dir.path(), &[]);
    for version in VERSIONS {
        let status =
            server.review_at("/authenticate", version, Some("tok-12345678"), &["a", "c", "b"]).review_status(version);
        assert_eq!(status["authenticated"], true);
        assert_eq!(status["audiences"], json!(["a", "b"]));
        // No common audience: never authenticated.
        let status = server.review_at("/authenticate", version, Some("tok-12345678"), &["c"]).review_status(version);
        assert_eq!(status, json!({"authenticated": false}));
        // The review states none: omitted (kube-apiserver applies its implicit audiences).
        let status = server.review_at("/authenticate", version, Some("tok-12345678"), &[]).review_status(version);
        assert!(status.get("audiences").is_none(), "{status}");
    }
    let dir = PluginDir::new();
    dir.probe("10-allow", &allow("alice", ""));
    let server = Server::start(dir.path(), &[]);
    let status = server.review_at("/authenticate", V1, Some("tok-12345678"), &["a"]).review_status(V1);
    assert_eq!(status["authenticated"], true);
    assert!(status.get("audiences").is_none(), "the grant states none: omitted {status}");
}

#[test]
fn a_mapper_cannot_widen_audiences_and_keeps_the_sooner_expiry() {
    let dir = PluginDir::new();
    dir.probe("10-allow", &allow("alice", "audiences = \"a\""))
        .probe("50-widen", &probe_manifest("role = \"mapper\"", "map", "audiences = \"a, b\""));
    let server = Server::start(dir.path(), &[]);
    let status = server.review_at("/authenticate", V1, Some("tok-12345678"), &["b"]).review_status(V1);
    assert_eq!(status["authenticated"], false);
    assert!(status["error"].as_str().unwrap().starts_with("plugin 50-widen failed (ref "), "{status}");

    // Narrowing is fine.
    let dir = PluginDir::new();
    dir.probe("10-allow", &allow("alice", "audiences = \"a, b\""))
        .probe("50-narrow", &probe_manifest("role = \"mapper\"", "map", "audiences = \"b\""));
    let server = Server::start(dir.path(), &[]);
    let status = server.review_at("/authenticate", V1, Some("tok-12345678"), &["a", "b"]).review_status(V1);
    assert_eq!(status["audiences"], json!(["b"]));
}

#[test]
fn host_checks_refuse_grants_no_webhook_should_make() {
    let cases = [
        ("empty username", allow("", ""), "empty-username"),
        ("system:masters by default", allow("alice", "groups = \"system:masters\""), "system-identity"),
        ("a system: username", allow("system:admin", ""), "system-identity"),
        ("system:anonymous", allow("system:anonymous", ""), "reserved-identity"),
        ("system:unauthenticated group", allow("bob", "groups = \"system:unauthenticated\""), "reserved-identity"),
        (
            "apiserver's extra keys",
            allow("bob", "extra = \"authentication.kubernetes.io/pod-name=x\""),
            "reserved-extra",
        ),
        ("expired", allow("bob", "expires_at = \"1000\""), "expired"),
    ];
    for (what, manifest, rule) in cases {
        let dir = PluginDir::new();
        dir.probe("10-allow", &manifest);
        let server = Server::start(dir.path(), &[]);
        for version in VERSIONS {
            let status = server.review_at("/authenticate", version, Some("tok-12345678"), &[]).review_status(version);
            assert_eq!(status, json!({"authenticated": false}), "{what}");
        }
        let lines = server.wait_audit("audit", |l| l.len() >= 2);
        assert_eq!(lines[0]["error_class"], rule, "{what}");
        assert_eq!(lines[0]["result"], "refused", "{what}");
        let metrics = server.get("/metrics").body;
        assert!(
            metrics.contains(&format!("tollgate_guardrail_violations_total{{tenant=\"\",rule=\"{rule}\"}} 2")),
            "{what}: {metrics}"
        );
    }
}

#[test]
fn the_seed_policy_is_refused_unless_the_operator_allows_system_masters() {
    let dir = PluginDir::new();
    dir.example("10-seed-demo", built::SEED_DEMO, built::SEED_DEMO_MANIFEST);
    let server = Server::start(dir.path(), &[]);
    assert_eq!(server.review("any-token-at-all").review_status(V1), json!({"authenticated": false}));
    drop(server);

    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), "[default]\nallow_system = [\"system:masters\"]\n").unwrap();
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    let status = server.review("any-token-at-all").review_status(V1);
    assert_eq!(status["user"], json!({"username": "testUser", "uid": "testUser", "groups": ["system:masters"]}));
    assert!(server.logs.text().contains("allow_system"), "allow_system is logged loudly");
}

#[test]
fn the_default_tenants_guardrails_apply_from_the_tenants_file() {
    let dir = PluginDir::new();
    dir.probe("10-allow", &allow("alice", "groups = \"dev, ops\""));
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), "[default]\nusername_prefix = \"corp:\"\n").unwrap();
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    assert_eq!(server.review("tok-12345678").review_status(V1), json!({"authenticated": false}));
    let lines = server.wait_audit("audit", |l| !l.is_empty());
    assert_eq!(lines[0]["error_class"], "username-prefix");

    std::fs::write(tenants.path(), "[default]\nallowed_groups = [\"dev\"]\n").unwrap();
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    assert_eq!(server.review("tok-12345678").review_status(V1), json!({"authenticated": false}));
    let lines = server.wait_audit("audit", |l| !l.is_empty());
    assert_eq!(lines[0]["error_class"], "group-not-allowed");
}
