//! Tenants (SPEC §4): folders served at their own paths, under the operator's guardrails.

use serde_json::json;
use tollgate_tests::*;

fn allow(username: &str, groups: &str) -> String {
    probe_manifest("", "allow", &format!("username = \"{username}\"\ngroups = \"{groups}\""))
}

#[test]
fn tenant_folders_are_served_at_their_own_paths_and_see_only_their_own() {
    let dir = PluginDir::new();
    dir.probe("10-root", &probe_manifest("", "echo", "username = \"root-user\""));
    dir.add_in("acme", "10-acme", built::PROBE, &probe_manifest("", "echo", "username = \"tollgate:acme:user\""));
    dir.add_in("globex", "10-globex", built::PROBE, &probe_manifest("", "echo", "username = \"tollgate:globex:user\""));
    let server = Server::start(dir.path(), &[]);
    for version in VERSIONS {
        let root = server.review_at("/authenticate", version, Some("tok-12345678"), &[]).review_status(version);
        assert_eq!(root["user"]["username"], "root-user");
        assert_eq!(root["user"]["extra"]["seen/tenant"], json!([""]));
        let acme = server.review_at("/authenticate/acme", version, Some("tok-12345678"), &[]).review_status(version);
        assert_eq!(acme["user"]["username"], "tollgate:acme:user", "acme's config, not another tenant's");
        assert_eq!(acme["user"]["extra"]["seen/tenant"], json!(["acme"]));
        let globex =
            server.review_at("/authenticate/globex", version, Some("tok-12345678"), &[]).review_status(version);
        assert_eq!(globex["user"]["username"], "tollgate:globex:user");
    }
    server.review_at("/authenticate/initech", V1, Some("tok-12345678"), &[]).assert_status_object(404, "NotFound");
    let status = server.get("/status").json();
    let names: Vec<_> = status["tenants"].as_array().unwrap().iter().map(|t| t["tenant"].as_str().unwrap()).collect();
    assert_eq!(names, ["", "acme", "globex"]);
    let metrics = server.get("/metrics").body;
    assert!(metrics.contains("tollgate_generation{tenant=\"acme\"} 1"), "{metrics}");
}

#[test]
fn an_unlisted_tenant_gets_the_safe_defaults() {
    let dir = PluginDir::new();
    let cases = [
        ("10-a", allow("alice", "acme:dev"), false, "username-prefix"),
        ("10-b", allow("acme:alice", "dev"), false, "group-not-allowed"),
        ("10-c", allow("acme:alice", "acme:dev,system:masters"), false, "system-identity"),
        ("10-d", allow("acme:alice", "acme:dev,acme:ops"), true, ""),
    ];
    for (name, manifest, _, _) in &cases {
        let sub = format!("t{}", &name[3..]);
        // One tenant per case, all unlisted: each gets `tollgate:<folder>:`.
        dir.add_in(&sub, name, built::PROBE, &manifest.replace("acme", &format!("tollgate:{sub}")));
    }
    let server = Server::start(dir.path(), &[]);
    for (name, _, ok, rule) in cases {
        let sub = format!("t{}", &name[3..]);
        let status = server.review_at(&format!("/authenticate/{sub}"), V1, Some("tok-12345678"), &[]).review_status(V1);
        assert_eq!(status["authenticated"], ok, "{sub}: {status}");
        if !ok {
            let lines = server.wait_audit("audit", |l| l.iter().any(|l| l["tenant"] == sub.as_str()));
            let line = lines.iter().find(|l| l["tenant"] == sub.as_str()).unwrap();
            assert_eq!(line["error_class"], rule, "{sub}");
        }
    }
}

#[test]
fn the_tenants_file_sets_guardrails_and_nothing_in_a_folder_loosens_them() {
    let dir = PluginDir::new();
    dir.add_in(
        "acme",
        "10-admin",
        built::PROBE,
        &probe_manifest(
            "[match]\ntoken_prefix = [\"admin-\"]",
            "allow",
            "username = \"a-root\"\ngroups = \"system:masters\"",
        ),
    );
    dir.add_in("acme", "20-dev", built::PROBE, &allow("a-dev", "team-web"));
    let tenants = tenants_file(
        "[tenant.acme]\nusername_prefix = \"a-\"\nallowed_groups = [\"team-*\"]\nallow_system = [\"system:masters\"]\n",
    );
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    let status = server.review_at("/authenticate/acme", V1, Some("admin-12345678"), &[]).review_status(V1);
    assert_eq!(status["user"]["groups"], json!(["system:masters"]), "allow_system is the operator's exception");
    let status = server.review_at("/authenticate/acme", V1, Some("dev-12345678"), &[]).review_status(V1);
    assert_eq!(status["user"]["groups"], json!(["team-web"]));

    // A tenant cannot bring its own guardrails: a tenants file in its folder is a manifest
    // without a plugin (refused), and a manifest cannot name guardrail keys (refused).
    let dir = PluginDir::new();
    dir.add_in("acme", "10-admin", built::PROBE, &allow("acme:root", "system:masters"));
    std::fs::write(dir.path().join("acme/tenants.toml"), "[tenant.acme]\nallow_system = [\"system:masters\"]\n")
        .unwrap();
    let server = Server::start(dir.path(), &[]);
    server
        .review_at("/authenticate/acme", V1, Some("tok-12345678"), &[])
        .assert_status_object(503, "ServiceUnavailable");
    std::fs::remove_file(dir.path().join("acme/tenants.toml")).unwrap();
    std::fs::write(
        dir.path().join("acme/10-admin.toml"),
        "allow_system = [\"system:masters\"]\n".to_string() + &allow("acme:root", "system:masters"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    server
        .review_at("/authenticate/acme", V1, Some("tok-12345678"), &[])
        .assert_status_object(503, "ServiceUnavailable");
    let refusal = server.get("/status").json()["tenants"][1]["last_refusal"]["reason"].as_str().unwrap().to_string();
    assert!(refusal.contains("unknown field `allow_system`"), "{refusal}");
}

#[test]
fn clients_restrict_who_may_call_a_tenant() {
    let dir = PluginDir::new();
    dir.add_in("acme", "10-a", built::PROBE, &allow("acme:alice", "acme:dev"));
    dir.add_in("open", "10-a", built::PROBE, &allow("tollgate:open:alice", "tollgate:open:dev"));
    let tenants = tenants_file("[tenant.acme]\nclients = [\"CN=kube-apiserver-acme\"]\n");
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    // A caller without a verified client certificate (plain HTTP) is refused, before any plugin.
    server.review_at("/authenticate/acme", V1, Some("tok-12345678"), &[]).assert_status_object(403, "Forbidden");
    assert_eq!(
        server.review_at("/authenticate/open", V1, Some("tok-12345678"), &[]).review_status(V1)["authenticated"],
        true
    );
    let metrics = server.get("/metrics").body;
    assert!(!metrics.contains("plugin=\"10-a\",outcome=\"allow\"} 2"), "acme's plugin never ran: {metrics}");
}

#[test]
fn invalid_tenant_names_are_refused_with_a_clear_log_line() {
    let dir = PluginDir::new();
    dir.add_in("Bad_Name", "10-a", built::PROBE, &allow("x", ""));
    dir.probe("10-root", &allow("root", ""));
    let server = Server::start(dir.path(), &[]);
    assert!(server.logs.text().contains("a tenant folder name must be a DNS label"), "{}", server.logs.text());
    server.review_at("/authenticate/Bad_Name", V1, Some("tok-12345678"), &[]).assert_status_object(404, "NotFound");
    assert_eq!(granted_username(&server.review("tok-12345678")).as_deref(), Some("root"));
}
