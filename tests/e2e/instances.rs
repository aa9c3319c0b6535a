//! Instances (SPEC §7): a fresh one per review by default; warm ones only when a manifest opts
//! in, discarded after a trap, after `max_uses`, on reload, and never shared across tenants.

use tollgate_tests::*;

fn counter(instances: &str, config: &str) -> String {
    probe_manifest(instances, "count", config)
}

fn users(server: &Server, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let answer = server.review_at(path, V1, Some("tok-12345678"), &[]);
            granted_username(&answer).unwrap_or_else(|| format!("failed: {}", answer.body))
        })
        .collect()
}

#[test]
fn a_fresh_instance_per_review_by_default() {
    let dir = PluginDir::new();
    dir.probe("10-count", &counter("", ""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(users(&server, "/authenticate", 4), ["call-1"; 4]);
    assert!(server.get("/metrics").body.contains("tollgate_instantiation_seconds_count 4"));
}

#[test]
fn warm_instances_are_reused_up_to_max_uses() {
    let dir = PluginDir::new();
    dir.probe("10-count", &counter("[instances]\nreuse = true\nmax_idle = 1\nmax_uses = 3", ""));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        users(&server, "/authenticate", 7),
        ["call-1", "call-2", "call-3", "call-1", "call-2", "call-3", "call-1"]
    );
    let metrics = server.get("/metrics").body;
    assert!(metrics.contains("tollgate_warm_calls_total{tenant=\"\",plugin=\"10-count\"} 4"), "{metrics}");
}

#[test]
fn a_trapped_instance_is_never_reused() {
    let dir = PluginDir::new();
    dir.probe("10-count", &counter("[instances]\nreuse = true\nmax_idle = 1", "trap_at = \"2\""));
    let server = Server::start(dir.path(), &[]);
    let got = users(&server, "/authenticate", 4);
    assert_eq!(got[0], "call-1");
    assert!(got[1].contains("plugin 10-count failed"), "{got:?}");
    // The trapped instance went: the next review starts over in a fresh one (which traps on
    // its own second call again).
    assert_eq!(got[2], "call-1", "{got:?}");
    assert!(got[3].contains("plugin 10-count failed"), "{got:?}");
}

#[test]
fn a_reload_and_another_tenant_get_their_own_instances() {
    let dir = PluginDir::new();
    let reuse = "[instances]\nreuse = true\nmax_idle = 1";
    dir.probe("10-count", &counter(reuse, ""));
    dir.add_in("acme", "10-count", built::PROBE, &counter(reuse, ""));
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), "[tenant.acme]\nusername_prefix = \"\"\n").unwrap();
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    assert_eq!(users(&server, "/authenticate", 2), ["call-1", "call-2"]);
    // Same component (digest), other tenant: not the default tenant's instance.
    assert_eq!(users(&server, "/authenticate/acme", 2), ["call-1", "call-2"]);
    // A new generation starts from fresh instances.
    std::fs::write(dir.path().join("10-count.toml"), counter(reuse, "unused = \"changed\"")).unwrap();
    wait_for_answer(&server, "/authenticate", "tok-12345678", "the new generation", |a| {
        granted_username(a).as_deref() == Some("call-1")
    });
    assert_eq!(users(&server, "/authenticate", 1), ["call-2"]);
    assert_eq!(users(&server, "/authenticate/acme", 1), ["call-3"], "acme's generation did not change");
}
