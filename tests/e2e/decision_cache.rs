//! The decision cache (`--cache-ttl`): hits, misses, what is never kept, reload, single flight.

use tollgate_tests::*;

fn metric(server: &Server, line_start: &str) -> u64 {
    let metrics = server.get("/metrics").body;
    metrics.lines().find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

fn calls(server: &Server, plugin: &str, outcome: &str) -> u64 {
    metric(server, &format!("tollgate_plugin_calls_total{{tenant=\"\",plugin=\"{plugin}\",outcome=\"{outcome}\"}}"))
}

#[test]
fn the_same_review_hits_and_another_audience_misses() {
    let dir = PluginDir::new();
    dir.probe("10-a", &probe_manifest("", "allow", "username = \"alice\"\naudiences = \"a, b\""));
    let server = Server::start(dir.path(), &["--cache-ttl", "60s"]);
    for _ in 0..3 {
        let status = server.review_at("/authenticate", V1, Some("tok-12345678"), &["a"]).review_status(V1);
        assert_eq!(status["user"]["username"], "alice");
    }
    assert_eq!(calls(&server, "10-a", "allow"), 1, "two hits");
    server.review_at("/authenticate", V1, Some("tok-12345678"), &["b"]);
    server.review_at("/authenticate", V1BETA1, Some("tok-12345678"), &["a"]).review_status(V1BETA1);
    assert_eq!(calls(&server, "10-a", "allow"), 2, "another audience misses; the apiVersion does not matter");
    server.review_at("/authenticate", V1, Some("tok-87654321"), &["a"]);
    assert_eq!(calls(&server, "10-a", "allow"), 3, "another token misses");
    assert_eq!(metric(&server, "tollgate_decision_cache_total{result=\"hit\"}"), 3);
    let lines = server.wait_audit("audit", |l| l.len() >= 6);
    assert_eq!(lines[0]["cache"], "miss");
    assert_eq!(lines[1]["cache"], "hit");
    assert_eq!(lines[1]["plugin"], "10-a", "a hit still names the plugin that decided");
}

#[test]
fn failures_and_unavailability_are_never_cached_denials_are() {
    let dir = PluginDir::new();
    let routed = |prefix: &str, action: &str| {
        probe_manifest(&format!("[match]\ntoken_prefix = [\"{prefix}\"]"), action, "reason = \"r\"")
    };
    dir.probe("10-trap", &routed("trap-", "trap"))
        .probe("20-down", &routed("down-", "unavailable"))
        .probe("30-deny", &routed("deny-", "deny"));
    let server = Server::start(dir.path(), &["--cache-ttl", "60s"]);
    for _ in 0..2 {
        server.review("trap-12345678");
        server.review("down-12345678").assert_status_object(503, "ServiceUnavailable");
        server.review("deny-12345678");
    }
    assert_eq!(calls(&server, "10-trap", "failed"), 2);
    assert_eq!(calls(&server, "20-down", "unavailable"), 2);
    assert_eq!(calls(&server, "30-deny", "deny"), 1, "a clean denial is cached");
}

#[test]
fn a_reload_flushes_the_tenants_decisions() {
    let dir = PluginDir::new();
    dir.probe("10-a", &probe_manifest("", "allow", "username = \"v1\""));
    let server = Server::start(dir.path(), &["--cache-ttl", "60s"]);
    assert_eq!(granted_username(&server.review("tok-12345678")).as_deref(), Some("v1"));
    assert_eq!(granted_username(&server.review("tok-12345678")).as_deref(), Some("v1"));
    std::fs::write(dir.path().join("10-a.toml"), probe_manifest("", "allow", "username = \"v2\"")).unwrap();
    wait_for_answer(&server, "/authenticate", "tok-12345678", "the new generation's answer", |a| {
        granted_username(a).as_deref() == Some("v2")
    });
}

#[test]
fn identical_reviews_in_flight_run_the_plugin_once() {
    let dir = PluginDir::new();
    dir.probe("10-slow", &probe_manifest("[limits]\ntimeout_ms = 1000", "spin", "ms = \"300\"\nusername = \"slow\""));
    let server = Server::start(dir.path(), &["--cache-ttl", "60s"]);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| server.review("tok-12345678"))).collect();
        for h in handles {
            assert_eq!(granted_username(&h.join().unwrap()).as_deref(), Some("slow"));
        }
    });
    assert_eq!(calls(&server, "10-slow", "allow"), 1);
    let coalesced = metric(&server, "tollgate_decision_cache_total{result=\"coalesced\"}");
    let hits = metric(&server, "tollgate_decision_cache_total{result=\"hit\"}");
    assert_eq!(coalesced + hits, 5, "coalesced {coalesced}, hits {hits}");
    assert!(server.audit.text().lines().all(|l| !l.contains("tok-12345678")));
}
