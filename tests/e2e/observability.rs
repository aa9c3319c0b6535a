//! Metrics and audit lines after a known sequence of reviews (SPEC §9).

use serde_json::json;
use tollgate_tests::*;

#[test]
fn metrics_count_exactly_what_happened() {
    let dir = PluginDir::new();
    let routed = |prefix: &str, action: &str, config: &str| {
        probe_manifest(&format!("[match]\ntoken_prefix = [\"{prefix}\"]"), action, config)
    };
    dir.probe("10-allow", &routed("allow-", "allow", "username = \"alice\""))
        .probe("20-deny", &routed("deny-", "deny", "reason = \"no\""))
        .probe("30-trap", &routed("trap-", "trap", ""))
        .probe("40-down", &routed("down-", "unavailable", "reason = \"idp down\""))
        .probe("50-masters", &routed("masters-", "allow", "username = \"bob\"\ngroups = \"system:masters\""))
        .probe("90-map", &probe_manifest("role = \"mapper\"", "map", "groups = \"mapped\""));
    let server = Server::start(dir.path(), &["--audit-log", "-"]);
    for token in [
        "allow-1aaaaaaa",
        "allow-2aaaaaaa",
        "allow-3aaaaaaa",
        "deny-1aaaaaaaa",
        "deny-2aaaaaaaa",
        "trap-1aaaaaaaa",
        "down-1aaaaaaaa",
        "masters-1aaaaa",
        "nobody-claims-it",
    ] {
        server.review(token);
    }
    server.post_raw("/authenticate", Some("application/json"), "{").assert_status_object(400, "BadRequest");
    server.review_at("/authenticate/ghost", V1, Some("allow-1aaaaaaa"), &[]).assert_status_object(404, "NotFound");
    let metrics = server.get("/metrics").body;
    let expected = [
        "tollgate_reviews_total{tenant=\"\",result=\"authenticated\"} 3",
        "tollgate_reviews_total{tenant=\"\",result=\"denied\"} 3",
        "tollgate_reviews_total{tenant=\"\",result=\"plugin-failed\"} 1",
        "tollgate_reviews_total{tenant=\"\",result=\"unavailable\"} 1",
        "tollgate_reviews_total{tenant=\"\",result=\"refused\"} 1",
        "tollgate_review_duration_seconds_count{tenant=\"\"} 9",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"10-allow\",outcome=\"allow\"} 3",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"10-allow\",outcome=\"skipped\"} 6",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"20-deny\",outcome=\"deny\"} 2",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"30-trap\",outcome=\"failed\"} 1",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"40-down\",outcome=\"unavailable\"} 1",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"50-masters\",outcome=\"allow\"} 1",
        "tollgate_plugin_calls_total{tenant=\"\",plugin=\"90-map\",outcome=\"allow\"} 4",
        "tollgate_plugin_duration_seconds_count{tenant=\"\",plugin=\"90-map\"} 4",
        "tollgate_guardrail_violations_total{tenant=\"\",rule=\"system-identity\"} 1",
        "tollgate_rejected_requests_total{code=\"400\"} 1",
        "tollgate_rejected_requests_total{code=\"404\"} 1",
        "tollgate_reloads_total{tenant=\"\",result=\"loaded\"} 1",
        "tollgate_plugins_loaded{tenant=\"\"} 6",
        "tollgate_generation{tenant=\"\"} 1",
        "tollgate_queue_wait_seconds_count 9",
        "tollgate_evaluations_in_flight 0",
    ];
    for line in expected {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    assert!(!metrics.contains("ghost") && !metrics.contains("alice") && !metrics.contains("aaaaaa"));
}

#[test]
fn audit_lines_carry_every_field() {
    let dir = PluginDir::new();
    dir.probe("10-allow", &probe_manifest("", "allow", "username = \"alice\"\ngroups = \"dev\"\naudiences = \"api\""));
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), [7u8; 32]).unwrap();
    let audit_file = tempfile::NamedTempFile::new().unwrap();
    let args =
        ["--fingerprint-key-file", key.path().to_str().unwrap(), "--audit-log", audit_file.path().to_str().unwrap()];
    let server = Server::start(dir.path(), &args);
    server.review_at("/authenticate", V1BETA1, Some("a-long-token-1234"), &["api", "other"]);
    let text = wait_for("the audit file", std::time::Duration::from_secs(10), || {
        let t = std::fs::read_to_string(audit_file.path()).unwrap();
        (!t.is_empty()).then_some(t)
    });
    assert!(server.audit.text().is_empty(), "audit lines went to the file, not stdout");
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for field in [
        "time",
        "request_id",
        "tenant",
        "generation",
        "api_version",
        "token_id",
        "audiences",
        "caller",
        "authenticated",
        "username",
        "groups",
        "plugin",
        "digest",
        "result",
        "error_class",
        "duration_ms",
    ] {
        assert!(line.get(field).is_some(), "missing {field}: {line}");
    }
    assert_eq!(line["audiences"], json!(["api", "other"]));
    assert_eq!(line["generation"], 1);
    assert!(line["digest"].as_str().unwrap().starts_with("sha256:"));
    // Replicas sharing the key produce the same token_id: HMAC-SHA256(key, token), 16 hex.
    let again = Server::start(dir.path(), &["--fingerprint-key-file", key.path().to_str().unwrap()]);
    again.review("a-long-token-1234");
    let other = again.wait_audit("audit", |l| !l.is_empty());
    assert_eq!(other[0]["token_id"], line["token_id"]);
    assert!(!text.contains("a-long-token-1234"));
}

/// Audit lines are written off the request path: a sink that stops taking them (a pipe nobody
/// reads) costs dropped lines, counted, never a review's answer.
#[test]
fn a_stalled_audit_sink_drops_lines_and_never_holds_a_review() {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = PluginDir::new();
    dir.probe("10-a", &probe_manifest("", "allow", "username = \"alice\""));
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("audit");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // A reader that never reads: the pipe's buffer (64 KiB) fills after a hundred lines.
    let _reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let server = Server::start(dir.path(), &["--audit-log", fifo.to_str().unwrap()]);
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..1500 {
        let began = std::time::Instant::now();
        let answer = server.review("tok-12345678");
        slowest = slowest.max(began.elapsed());
        assert_eq!(granted_username(&answer).as_deref(), Some("alice"), "{}", answer.body);
    }
    eprintln!("1,500 reviews into a stalled audit sink, the slowest in {slowest:?}");
    let metrics = server.get("/metrics").body;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_audit_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines counter: {metrics}"));
    assert!(dropped > 0, "the queue filled and lines were dropped, counted");
}
