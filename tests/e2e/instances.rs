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

/// A warm counter for tokens starting with `prefix`.
fn warm_for(prefix: &str, extra: &str) -> String {
    counter(&format!("[match]\ntoken_prefix = [\"{prefix}\"]\n[instances]\nreuse = true\nmax_idle = 4\n{extra}"), "")
}

fn user_of(server: &Server, path: &str, token: &str) -> String {
    let answer = server.review_at(path, V1, Some(token), &[]);
    granted_username(&answer).unwrap_or_else(|| format!("failed: {}", answer.body))
}

#[test]
fn warm_instances_idle_within_a_budget_per_tenant_and_for_the_server_and_a_ttl() {
    // 10 instance slots: at most 5 idle warm ones server-wide, 1 per tenant.
    let dir = PluginDir::new();
    let mut tenants = String::new();
    for t in ["t1", "t2", "t3", "t4", "t5"] {
        dir.add_in(t, "10-a", built::PROBE, &warm_for("a-", ""));
        tenants.push_str(&format!("[tenant.{t}]\nusername_prefix = \"\"\n"));
    }
    // One tenant with two warm plugins: its second one finds the tenant's budget spent.
    dir.add_in("greedy", "10-a", built::PROBE, &warm_for("a-", ""));
    dir.add_in("greedy", "20-b", built::PROBE, &warm_for("b-", ""));
    tenants.push_str("[tenant.greedy]\nusername_prefix = \"\"\n");
    // A short idle TTL.
    dir.add_in("brief", "10-a", built::PROBE, &warm_for("a-", "idle_seconds = 1"));
    tenants.push_str("[tenant.brief]\nusername_prefix = \"\"\n");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), tenants).unwrap();
    let server = Server::start(dir.path(), &["--tenants", file.path().to_str().unwrap(), "--max-instances", "10"]);

    assert_eq!(user_of(&server, "/authenticate/brief", "a-12345678"), "call-1");
    assert_eq!(user_of(&server, "/authenticate/brief", "a-12345678"), "call-2");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(user_of(&server, "/authenticate/brief", "a-12345678"), "call-1", "idle past its TTL: discarded");

    assert_eq!(user_of(&server, "/authenticate/greedy", "a-12345678"), "call-1");
    assert_eq!(user_of(&server, "/authenticate/greedy", "b-12345678"), "call-1");
    assert_eq!(user_of(&server, "/authenticate/greedy", "a-12345678"), "call-2", "the first kept its instance");
    assert_eq!(
        user_of(&server, "/authenticate/greedy", "b-12345678"),
        "call-1",
        "the tenant's one idle slot was taken"
    );
    // brief and greedy hold one idle instance each; t1..t3 take the server's other three; t4
    // finds none.
    for t in ["t1", "t2", "t3", "t4"] {
        assert_eq!(user_of(&server, &format!("/authenticate/{t}"), "a-12345678"), "call-1", "{t}");
    }
    for (t, want) in [("t1", "call-2"), ("t2", "call-2"), ("t3", "call-2"), ("t4", "call-1")] {
        assert_eq!(
            user_of(&server, &format!("/authenticate/{t}"), "a-12345678"),
            want,
            "{t}: the server's warm half is full"
        );
    }
    // Fresh instances still find their half of the slots.
    assert_eq!(user_of(&server, "/authenticate/t5", "a-12345678"), "call-1");
}

#[test]
fn no_free_instance_slot_is_overload_never_a_plugin_failure() {
    let dir = PluginDir::new();
    dir.probe("10-sleep", &probe_manifest("[limits]\ntimeout_ms = 1000", "sleep", "ms = \"600\"\nusername = \"woke\""));
    let server = Server::start(dir.path(), &["--max-instances", "2", "--max-concurrent-reviews", "8"]);
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let pending: Vec<_> = (0..6).map(|_| s.spawn(|| server.review("tok-12345678"))).collect();
        pending.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut overloaded = 0;
    for answer in &answers {
        match answer.status {
            200 => {
                assert_eq!(granted_username(answer).as_deref(), Some("woke"), "never a plugin failure: {}", answer.body)
            }
            503 => {
                answer.assert_status_object(503, "ServiceUnavailable");
                assert!(answer.body.contains("overloaded"), "{}", answer.body);
                overloaded += 1;
            }
            other => panic!("{other}: {}", answer.body),
        }
    }
    assert!(overloaded >= 1, "six sleepers, two slots: some found none");
    assert!(server.get("/metrics").body.contains("result=\"overloaded\""));
}
