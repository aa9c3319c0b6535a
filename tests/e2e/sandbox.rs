//! The sandbox (SPEC §7): whatever a plugin does, the review ends cleanly, fails closed, and the
//! next review succeeds.

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_tests::*;

/// One server, one probe per misbehaviour, each claiming its own token prefix, and a well-behaved
/// plugin for `ok-` tokens.
fn misbehaving_server(socket_addr: &str) -> (PluginDir, Server) {
    let dir = PluginDir::new();
    // wasi:http is linked only for a plugin with an outbound grant (none is used here).
    let granted = |manifest: &str| format!("allowed_outbound_hosts = [\"https://example.com\"]\n{manifest}");
    let routed = |prefix: &str, action: &str, limits: &str, config: &str| {
        probe_manifest(&format!("[match]\ntoken_prefix = [\"{prefix}\"]\n{limits}"), action, config)
    };
    dir.probe("10-loop", &routed("loop-", "loop", "[limits]\ntimeout_ms = 500", ""))
        .probe("11-oom", &routed("oom-", "oom", "[limits]\nmemory_mib = 16", ""))
        .probe("12-trap", &routed("trap-", "trap", "", ""))
        .probe("13-panic", &routed("panic-", "panic", "", ""))
        .probe("14-stack", &routed("stack-", "stack", "", ""))
        .probe("15-file", &routed("file-", "file", "", "path = \"/etc/passwd\""))
        .probe("16-env", &routed("env-", "env", "", ""))
        .probe("17-socket", &routed("socket-", "socket", "", &format!("addr = \"{socket_addr}\"")))
        .probe("18-groups", &routed("groups-", "huge-groups", "", ""))
        .probe("19-string", &routed("string-", "huge-string", "", ""))
        .probe("20-reason", &routed("reason-", "huge-reason", "", ""))
        .probe("21-chatty", &routed("chatty-", "chatty", "", ""))
        .probe("22-random", &routed("random-", "random", "", "bytes = \"1048576\"\nusername = \"r\""))
        .probe("23-handles", &routed("handles-", "handles", "", "n = \"20000\"\nusername = \"h\""))
        .probe("24-fields", &granted(&routed("fields-", "fields", "", "kib = \"100\"\nusername = \"f\"")))
        .probe("27-headers", &granted(&routed("headers-", "fields", "", "kib = \"8\"\nusername = \"headers\"")))
        .probe("25-few", &routed("few-", "handles", "", "n = \"1000\"\nusername = \"few\""))
        .probe("26-nonce", &routed("nonce-", "random", "", "bytes = \"4096\"\nusername = \"nonce\""))
        .probe("99-ok", &routed("ok-", "allow", "", "username = \"alice\""));
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

fn assert_next_review_succeeds(server: &Server) {
    assert_eq!(server.review("ok-12345678").review_status(V1)["user"]["username"], "alice");
}

/// The plugin failed closed: 200, unauthenticated, `status.error` naming it with the request id.
fn assert_failed(server: &Server, token: &str, plugin: &str, classes: &[&str]) {
    let answer = server.review(token);
    let status = answer.review_status(V1);
    assert_eq!(status["authenticated"], false, "{token}");
    assert!(status.get("user").is_none());
    let error = status["error"].as_str().unwrap_or_else(|| panic!("{token}: no status.error: {status}"));
    let prefix = format!("plugin {plugin} failed (ref ");
    assert!(error.starts_with(&prefix), "{error}");
    let reference = error.trim_start_matches(&prefix).trim_end_matches(')');
    // The ref is the audit line's request id.
    let lines = server.wait_audit("the audit line", |l| l.iter().any(|l| l["request_id"] == reference));
    let line = lines.iter().find(|l| l["request_id"] == reference).unwrap();
    assert_eq!(line["result"], "plugin-failed");
    let class = line["error_class"].as_str().unwrap();
    assert!(classes.contains(&class), "{token}: class {class}, expected one of {classes:?}");
    assert_next_review_succeeds(server);
}

/// The plugin's attempt was denied by the sandbox, and it said so in a clean denial.
fn assert_denied_with(server: &Server, token: &str, reason_part: &str) {
    assert_eq!(server.review(token).review_status(V1), json!({"authenticated": false}), "{token}");
    server.wait_audit(&format!("an audit line with the reason {reason_part:?}"), |lines| {
        lines.iter().any(|l| l["reason"].as_str().is_some_and(|r| r.contains(reason_part)))
    });
    assert_next_review_succeeds(server);
}

#[test]
fn an_infinite_loop_is_stopped_by_its_deadline_while_other_reviews_are_answered() {
    let (_dir, server) = misbehaving_server("127.0.0.1:9");
    std::thread::scope(|s| {
        let looping = s.spawn(|| {
            let started = Instant::now();
            assert_failed(&server, "loop-12345678", "10-loop", &["deadline"]);
            started.elapsed()
        });
        // While the loop spins, the server keeps answering.
        let mut answered = 0;
        while !looping.is_finished() {
            assert_next_review_succeeds(&server);
            assert_eq!(server.get("/healthz").status, 200);
            answered += 1;
        }
        let elapsed = looping.join().unwrap();
        assert!(elapsed < Duration::from_secs(5), "a 500 ms budget took {elapsed:?}");
        assert!(answered > 0, "no review was answered while the loop ran");
    });
}

#[test]
fn resource_abuse_fails_closed() {
    let (_dir, server) = misbehaving_server("127.0.0.1:9");
    assert_failed(&server, "oom-12345678", "11-oom", &["memory"]);
    assert_failed(&server, "trap-12345678", "12-trap", &["trap"]);
    assert_failed(&server, "panic-12345678", "13-panic", &["trap"]);
    // The shadow stack runs out (an out-of-bounds access) or the native one does.
    assert_failed(&server, "stack-12345678", "14-stack", &["stack-overflow", "trap"]);
    assert_failed(&server, "groups-12345678", "18-groups", &["oversized-output"]);
    assert_failed(&server, "string-12345678", "19-string", &["oversized-output"]);
    assert!(server.logs.text().contains("probe panicked on purpose"), "guest stderr reaches the log");
    // ...and the panic's message is the failure's reason, without the panic machinery's frames.
    let lines = server.audit_lines();
    let panicked = lines.iter().find(|l| l["plugin"] == "13-panic").unwrap();
    let reason = panicked["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("its last words on stderr: probe panicked on purpose"), "{panicked}");
    assert!(!reason.contains("rust_panic") && !reason.contains("abort_internal"), "{panicked}");
}

/// What a guest can make the host allocate outside its own memory limit is bounded too: host
/// handles, random bytes, HTTP header fields. Within the bounds the same calls succeed.
#[test]
fn host_allocations_are_bounded() {
    let (_dir, server) = misbehaving_server("127.0.0.1:9");
    for (token, plugin, why) in [
        ("random-12345678", "22-random", "exceeds limit 65536"),
        ("handles-12345678", "23-handles", "resource table has no free keys"),
        ("fields-12345678", "24-fields", "total size of fields exceeds limit"),
    ] {
        assert_failed(&server, token, plugin, &["trap"]);
        let lines = server.audit_lines();
        let reason = lines.iter().rev().find(|l| l["plugin"] == plugin).unwrap()["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{plugin}: {reason}");
    }
    for (token, user) in [("few-12345678", "few"), ("nonce-12345678", "nonce"), ("headers-12345678", "headers")] {
        assert_eq!(server.review(token).review_status(V1)["user"]["username"], user, "{token}");
    }
}

/// Empty writes cost the host nothing: wasmtime-wasi 48.0.8's `AsyncWriteStream` queues every
/// write, empty ones included, and its budget never shrinks for them (GHSA-5m8g-xhq4-4h93,
/// fixed in a 48.0.9 the registry does not have). tollgate's guest stdout and stderr are its own
/// bounded capture, never that stream: three million empty writes leave the server's memory
/// where it was (queued, they would take ~100 MiB).
#[test]
fn empty_writes_do_not_grow_the_host() {
    let dir = PluginDir::new();
    dir.probe(
        "10-writes",
        &probe_manifest("[limits]\ntimeout_ms = 8000", "empty-writes", "n = \"3000000\"\nusername = \"w\""),
    );
    let server = Server::start(dir.path(), &["--max-plugin-timeout-ms", "10000", "--review-timeout-ms", "10000"]);
    let rss_mib = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib >> 10
    };
    assert_eq!(server.review("writes-12345678").review_status(V1)["user"]["username"], "w");
    let before = rss_mib();
    for _ in 0..2 {
        assert_eq!(server.review("writes-12345678").review_status(V1)["user"]["username"], "w");
    }
    let after = rss_mib();
    assert!(after < before + 48, "six million empty writes grew the server from {before} to {after} MiB");
}

#[test]
fn no_ambient_authority_files_environment_or_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (_dir, server) = misbehaving_server(&addr);
    assert_denied_with(&server, "file-12345678", "file denied");
    assert_denied_with(&server, "env-12345678", "env denied: no variables, no arguments");
    assert_denied_with(&server, "socket-12345678", "socket denied");
    assert!(listener.accept().is_err(), "the plugin reached a socket on this machine");
}

#[test]
fn output_is_bounded() {
    let (_dir, server) = misbehaving_server("127.0.0.1:9");
    assert_eq!(server.review("reason-12345678").review_status(V1), json!({"authenticated": false}));
    let lines = server.wait_audit("the audit line", |l| {
        l.iter().any(|l| l["reason"].as_str().is_some_and(|r| r.starts_with("rrrr")))
    });
    let reason = lines.iter().find_map(|l| l["reason"].as_str().filter(|r| r.starts_with("rrrr"))).unwrap();
    assert!(reason.len() < 2048, "a 1 MiB reason was kept whole ({} bytes)", reason.len());

    assert_eq!(server.review("chatty-12345678").review_status(V1), json!({"authenticated": false}));
    let logs = wait_for("the chatty plugin's lines", Duration::from_secs(5), || {
        let logs = server.logs.text();
        // 1000 log calls hit the line budget; ~15 KB of stdout is cut at the 8 KiB capture.
        (logs.contains("further log lines of this call dropped") && logs.contains("bytes cut]")).then_some(logs)
    });
    let logged = logs.matches("line ").count();
    assert!(logged < 600, "1000 log lines and 1000 stdout lines produced {logged} log lines");
    assert_next_review_succeeds(&server);
}

#[test]
fn past_the_review_deadline_the_answer_is_503() {
    let dir = PluginDir::new();
    dir.probe("10-slow", &probe_manifest("[limits]\ntimeout_ms = 1000", "spin", "ms = \"900\"\nusername = \"slow\""));
    let server = Server::start(dir.path(), &["--review-timeout-ms", "200"]);
    for version in VERSIONS {
        let started = Instant::now();
        server
            .review_at("/authenticate", version, Some("tok-12345678"), &[])
            .assert_status_object(503, "ServiceUnavailable");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let lines = server.wait_audit("audit", |l| l.len() >= 2);
    assert_eq!(lines[0]["result"], "deadline");
}

#[test]
fn components_that_do_not_fit_the_world_are_refused() {
    let not_wasm = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_wasm.path(), b"this is not webassembly").unwrap();
    let core_module = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(core_module.path(), wat::parse_str("(module (func (export \"f\")))").unwrap()).unwrap();
    let no_export = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(no_export.path(), wat::parse_str("(component)").unwrap()).unwrap();
    let http = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        http.path(),
        wat::parse_str(
            "(component (import \"wasi:http/outgoing-handler@0.2.0\" (instance (export \"handle\" (func)))))",
        )
        .unwrap(),
    )
    .unwrap();

    // An import the host does not provide at all is named too.
    let sockets = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        sockets.path(),
        wat::parse_str("(component (import \"wasi:sockets/tcp@0.2.0\" (instance (export \"connect\" (func)))))")
            .unwrap(),
    )
    .unwrap();

    let cases = [
        (not_wasm.path(), "not a WebAssembly component"),
        (core_module.path(), "not a WebAssembly component"),
        (no_export.path(), "tollgate:policy/authenticator@0.1"),
        // wasi:http is provided (0.1.1), but not with this shape.
        (http.path(), "wasi:http/outgoing-handler@0.2.0"),
        (sockets.path(), "wasi:sockets/tcp@0.2.0"),
    ];
    for (file, why) in cases {
        let dir = PluginDir::new();
        dir.add("10-bad", file.to_str().unwrap(), "")
            .probe("20-ok", &probe_manifest("", "allow", "username = \"alice\""));
        let server = Server::start(dir.path(), &[]);
        // A tenant that never loaded answers 503, never a cacheable denial.
        server.review("tok-12345678").assert_status_object(503, "ServiceUnavailable");
        let status = server.get("/status").json();
        let refusal = status["tenants"][0]["last_refusal"]["reason"].as_str().unwrap().to_string();
        assert!(refusal.contains("10-bad.wasm") && refusal.contains(why), "{refusal}");
        assert_eq!(status["tenants"][0]["served"], false);
        assert_eq!(server.get("/readyz").status, 200, "the first scan is done");
    }
}

#[test]
fn a_plugin_failing_its_own_vectors_never_goes_live() {
    let dir = PluginDir::new();
    dir.probe(
        "10-allow",
        &probe_manifest(
            "[[test]]\ntoken = \"x\"\nexpect = \"allow\"\nusername = \"bob\"",
            "allow",
            "username = \"alice\"",
        ),
    );
    let server = Server::start(dir.path(), &[]);
    server.review("tok-12345678").assert_status_object(503, "ServiceUnavailable");
    let status = server.get("/status").json();
    let refusal = status["tenants"][0]["last_refusal"]["reason"].as_str().unwrap();
    assert!(refusal.contains("test 1") && refusal.contains("username \"alice\", expected \"bob\""), "{refusal}");
}
