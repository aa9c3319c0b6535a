//! The HTTP API as kube-apiserver's webhook client sees it (SPEC §5).

use serde_json::json;
use tollgate_tests::*;

fn static_tokens_server() -> (PluginDir, Server) {
    let dir = PluginDir::new();
    dir.add("10-static-tokens", built::STATIC_TOKENS, &static_tokens_manifest(""));
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

#[test]
fn allow_carries_user_uid_groups_and_extra_in_both_versions() {
    let (_dir, server) = static_tokens_server();
    for version in VERSIONS {
        let status = server.review_at("/authenticate", version, Some(ALICE), &[]).review_status(version);
        assert_eq!(
            status,
            json!({"authenticated": true, "user": {
                "username": "alice", "uid": "1001", "groups": ["idp:admins", "idp:dev-web"],
                "extra": {"team": ["platform", "sre"], "site": ["eu"]}}}),
        );
    }
}

#[test]
fn a_denial_is_clean_no_user_no_error_in_both_versions() {
    let (_dir, server) = static_tokens_server();
    for version in VERSIONS {
        let status = server.review_at("/authenticate", version, Some("not-a-known-token"), &[]).review_status(version);
        assert_eq!(status, json!({"authenticated": false}));
    }
}

#[test]
fn a_missing_or_empty_token_is_a_denial() {
    let (_dir, server) = static_tokens_server();
    for version in VERSIONS {
        // kube-apiserver sends "spec":{} for an empty token.
        assert_eq!(
            server.review_at("/authenticate", version, None, &[]).review_status(version),
            json!({"authenticated": false})
        );
        assert_eq!(
            server.review_at("/authenticate", version, Some(""), &[]).review_status(version),
            json!({"authenticated": false})
        );
        let body = json!({"apiVersion": version, "kind": "TokenReview"}).to_string();
        let answer = server.post_raw("/authenticate", Some("application/json"), body);
        assert_eq!(answer.review_status(version), json!({"authenticated": false}));
    }
}

#[test]
fn query_strings_metadata_unknown_fields_and_key_order_are_tolerated() {
    let (_dir, server) = static_tokens_server();
    let body = format!(
        r#"{{"status":{{"user":{{}}}},"zzz":[1,2],"spec":{{"audiences":[],"token":"{ALICE}","extra":true}},"metadata":{{}},"kind":"TokenReview","apiVersion":"{V1}"}}"#
    );
    let answer = server.post_raw("/authenticate?timeout=30s", Some("application/json; charset=utf-8"), body);
    assert_eq!(answer.review_status(V1)["user"]["username"], "alice");
}

#[test]
fn bad_requests_are_answered_as_kubernetes_answers_them() {
    let (_dir, server) = static_tokens_server();
    let review = |v: &str, kind: &str| json!({"apiVersion": v, "kind": kind, "spec": {"token": ALICE}}).to_string();
    let json_ct = Some("application/json");

    server.post_raw("/authenticate", json_ct, "{\"apiVersion\":").assert_status_object(400, "BadRequest");
    server.post_raw("/authenticate", json_ct, "[1,2]").assert_status_object(400, "BadRequest");
    server
        .post_raw("/authenticate", json_ct, review(V1, "SubjectAccessReview"))
        .assert_status_object(400, "BadRequest");
    server
        .post_raw("/authenticate", json_ct, review("authentication.k8s.io/v2", "TokenReview"))
        .assert_status_object(400, "BadRequest");
    server.post_raw("/authenticate", json_ct, review("v1", "TokenReview")).assert_status_object(400, "BadRequest");
    let no_version = json!({"kind": "TokenReview", "spec": {"token": ALICE}}).to_string();
    server.post_raw("/authenticate", json_ct, no_version).assert_status_object(400, "BadRequest");

    let big = json!({"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "x".repeat(70 * 1024)}}).to_string();
    server.post_raw("/authenticate", json_ct, big).assert_status_object(413, "RequestEntityTooLarge");
    server
        .post_raw("/authenticate", Some("text/plain"), review(V1, "TokenReview"))
        .assert_status_object(415, "UnsupportedMediaType");
    server
        .post_raw("/authenticate", Some("application/x-www-form-urlencoded"), review(V1, "TokenReview"))
        .assert_status_object(415, "UnsupportedMediaType");
    server.post_raw("/authenticate", None, review(V1, "TokenReview")).assert_status_object(415, "UnsupportedMediaType");

    server.get("/authenticate").assert_status_object(405, "MethodNotAllowed");
    let put = server
        .client()
        .put(server.url("/authenticate"))
        .header("Content-Type", "application/json")
        .body(review(V1, "TokenReview"));
    Answer::from(put.send().unwrap()).assert_status_object(405, "MethodNotAllowed");
    server.post_raw("/nope", json_ct, review(V1, "TokenReview")).assert_status_object(404, "NotFound");
    server
        .post_raw("/authenticate/no-such-tenant", json_ct, review(V1, "TokenReview"))
        .assert_status_object(404, "NotFound");
    // Never a redirect, not even for a trailing slash.
    server.post_raw("/authenticate/", json_ct, review(V1, "TokenReview")).assert_status_object(404, "NotFound");

    // Nothing above broke anything.
    assert_eq!(server.review(ALICE).review_status(V1)["authenticated"], true);
    let metrics = server.get("/metrics").body;
    assert!(metrics.contains("tollgate_rejected_requests_total{code=\"400\"} 6"), "{metrics}");
    assert!(!metrics.contains("no-such-tenant"), "unknown tenants create no labels");
}

#[test]
fn error_messages_never_quote_the_request() {
    let (_dir, server) = static_tokens_server();
    let body = format!(r#"{{"apiVersion":"{V1}","kind":"TokenReview","spec":"{ALICE}"}}"#);
    let answer = server.post_raw("/authenticate", Some("application/json"), body);
    answer.assert_status_object(400, "BadRequest");
    assert!(!answer.body.contains(ALICE), "{}", answer.body);
}

#[test]
fn a_jwt_sized_token_reaches_plugins_byte_for_byte() {
    let dir = PluginDir::new();
    dir.probe("10-echo", &probe_manifest("", "echo", "username = \"echo\""));
    let server = Server::start(dir.path(), &[]);
    // An 8 KiB token with every printable ASCII byte, JSON-escaped quotes and backslashes.
    let token: String = (0..8192).map(|i| char::from(b' ' + (i % 95) as u8)).collect();
    let sum: u64 = token.bytes().map(u64::from).sum();
    let extra = server.review(&token).review_status(V1)["user"]["extra"].clone();
    assert_eq!(extra["seen/token-length"], json!(["8192"]));
    assert_eq!(extra["seen/token-byte-sum"], json!([sum.to_string()]));
    assert_eq!(extra["seen/tenant"], json!([""]));
    // Audiences are passed as sent.
    let status = server.review_at("/authenticate", V1, Some("t0k3n-abcdefgh"), &["aud-1", "aud-2"]).review_status(V1);
    assert_eq!(status["user"]["extra"]["seen/audiences"], json!(["aud-1", "aud-2"]));
}

#[test]
fn probes_metrics_and_status() {
    let (_dir, server) = static_tokens_server();
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/readyz").status, 200);
    server.review(ALICE);
    server.review("nobody-knows-this-token");
    let metrics = server.get("/metrics").body;
    for line in [
        "tollgate_reviews_total{tenant=\"\",result=\"authenticated\"} 1",
        "tollgate_reviews_total{tenant=\"\",result=\"denied\"} 1",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"10-static-tokens\",outcome=\"allow\"} 1",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"10-static-tokens\",outcome=\"abstain\"} 1",
        "tollgate_generation{tenant=\"\"} 1",
        "tollgate_plugins_loaded{tenant=\"\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}\n{metrics}");
    }
    assert!(!metrics.contains("alice"), "no usernames in metrics");
    let status = server.get("/status").json();
    let tenant = &status["tenants"][0];
    assert_eq!(tenant["tenant"], "");
    assert_eq!(tenant["live"]["generation"], 1);
    assert_eq!(tenant["live"]["plugins"][0]["name"], "10-static-tokens");
    assert_eq!(tenant["live"]["plugins"][0]["role"], "authenticator");
    assert!(tenant["live"]["plugins"][0]["digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn every_review_has_one_audit_line() {
    let (_dir, server) = static_tokens_server();
    server.review_at("/authenticate", V1BETA1, Some(ALICE), &["api"]);
    server.review("unknown-token-for-audit");
    let lines = server.wait_audit("two audit lines", |l| l.len() >= 2);
    let a = &lines[0];
    assert_eq!(a["authenticated"], true);
    assert_eq!(a["username"], "alice");
    assert_eq!(a["api_version"], V1BETA1);
    assert_eq!(a["audiences"], json!(["api"]));
    assert_eq!(a["plugin"], "10-static-tokens");
    assert_eq!(a["token_id"].as_str().unwrap().len(), 16);
    assert_ne!(a["token_id"], json!(&sha256_hex(ALICE)[..16]), "a keyed fingerprint, not a plain hash");
    assert_eq!(lines[1]["authenticated"], false);
    assert_eq!(lines[1]["result"], "denied");
}
