//! Every deadline reaches every host call: a guest waiting on something that is never ready is
//! stopped at its deadline wherever it waits, with the plugin-failed semantics of SPEC §3; its
//! evaluation slots are freed with it; other reviews, `/healthz` and reloads go on; and as a
//! `[[test]]` vector it neither stalls startup nor other tenants' reloads.

use std::time::{Duration, Instant};

use tollgate_tests::*;

const TOKEN: &str = "tok-12345678";
/// The blocking plugins' own budget.
const TIMEOUT_MS: u64 = 200;
/// Timing is asserted only as a bound with a wide margin (the machine is shared); the figures
/// themselves are printed.
const MARGIN: Duration = Duration::from_millis(600);

/// A probe that waits in a host call on a request body nothing drains (`how`: write, block,
/// poll), under `head` (its outbound grant, if any).
fn blocking(head: &str, how: &str) -> String {
    probe_manifest(
        &format!("{head}\n[limits]\ntimeout_ms = {TIMEOUT_MS}"),
        "body-block",
        &format!("how = \"{how}\"\nusername = \"never\""),
    )
}

fn allow(username: &str) -> String {
    probe_manifest("", "allow", &format!("username = \"{username}\""))
}

#[test]
fn a_guest_waiting_in_any_host_call_is_stopped_at_its_deadline_and_frees_its_slot() {
    let web = LocalHttp::start();
    let literal = format!("http://127.0.0.1:{}", web.addr.port());
    let grant = format!("allowed_outbound_hosts = [\"{literal}\"]");
    let dir = PluginDir::new();
    let ways = ["write", "block", "poll"];
    let mut tenants = String::new();
    for how in ways {
        dir.add_in(&format!("granted-{how}"), "10-block", built::PROBE, &blocking(&grant, how));
        tenants
            .push_str(&format!("[tenant.granted-{how}]\nusername_prefix = \"\"\noutbound_hosts = [\"{literal}\"]\n"));
    }
    // Without a grant wasi:http is not linked: the same guest fails at once.
    dir.add_in("sealed", "10-block", built::PROBE, &blocking("", "write"));
    // Standard input is closed in the sandbox: reading it waits for nothing.
    dir.add_in(
        "stdin",
        "10-stdin",
        built::PROBE,
        &probe_manifest(&format!("[limits]\ntimeout_ms = {TIMEOUT_MS}"), "stdin", "username = \"tollgate:stdin:read\""),
    );
    dir.add_in("calm", "10-ok", built::PROBE, &allow("tollgate:calm:alice"));
    let tenants = tenants_file(&tenants);
    // Two evaluation slots: a guest that kept its slot past its deadline would make every
    // later review an overload.
    let server =
        Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap(), "--max-concurrent-reviews", "2"]);

    std::thread::scope(|s| {
        let blocked = s.spawn(|| {
            let mut slowest = Duration::ZERO;
            for how in ways {
                for _ in 0..6 {
                    let began = Instant::now();
                    let answer = server.review_at(&format!("/authenticate/granted-{how}"), V1, Some(TOKEN), &[]);
                    let took = began.elapsed();
                    slowest = slowest.max(took);
                    let status = answer.review_status(V1);
                    assert_eq!(status["authenticated"], false, "{how}: {status}");
                    let error = status["error"].as_str().unwrap_or_default();
                    assert!(
                        error.starts_with("plugin 10-block failed"),
                        "{how}: plugin failed, not overload: {status}"
                    );
                    assert!(took < Duration::from_millis(TIMEOUT_MS) + MARGIN, "{how}: answered after {took:?}");
                }
            }
            eprintln!("slowest blocked review: {slowest:?} for a {TIMEOUT_MS} ms budget");
        });
        // Meanwhile everything else is answered.
        while !blocked.is_finished() {
            assert_eq!(server.get("/healthz").status, 200);
            let calm = server.review_at("/authenticate/calm", V1, Some(TOKEN), &[]);
            assert_eq!(granted_username(&calm).as_deref(), Some("tollgate:calm:alice"), "{}", calm.body);
        }
        blocked.join().unwrap();
    });
    let lines =
        server.wait_audit("the audit lines", |l| l.iter().filter(|l| l["error_class"] == "deadline").count() >= 18);
    assert!(
        lines
            .iter()
            .filter(|l| l["tenant"].as_str().unwrap_or("").starts_with("granted-"))
            .all(|l| l["error_class"] == "deadline")
    );
    assert_eq!(web.hits(), 0, "no request was ever sent");

    let began = Instant::now();
    let sealed = server.review_at("/authenticate/sealed", V1, Some(TOKEN), &[]).review_status(V1);
    assert!(sealed["error"].as_str().unwrap_or_default().starts_with("plugin 10-block failed"), "{sealed}");
    assert!(
        began.elapsed() < Duration::from_millis(TIMEOUT_MS),
        "no wasi:http: it fails at once ({:?})",
        began.elapsed()
    );
    let stdin = server.review_at("/authenticate/stdin", V1, Some(TOKEN), &[]);
    assert_eq!(granted_username(&stdin).as_deref(), Some("tollgate:stdin:read"), "{}", stdin.body);

    // Reloads go on.
    std::fs::write(dir.path().join("calm/10-ok.toml"), allow("tollgate:calm:bob")).unwrap();
    wait_for_answer(&server, "/authenticate/calm", TOKEN, "calm reloads", |a| {
        granted_username(a).as_deref() == Some("tollgate:calm:bob")
    });
}

#[test]
fn blocking_vectors_neither_stall_startup_nor_other_tenants_reloads() {
    let web = LocalHttp::start();
    let literal = format!("http://127.0.0.1:{}", web.addr.port());
    let stuck = |n: u32| {
        format!(
            "# version {n}\n{}\n[[test]]\ntoken = \"t-12345678\"\nexpect = \"allow\"\nusername = \"never\"\n",
            blocking(&format!("allowed_outbound_hosts = [\"{literal}\"]"), "write")
        )
    };
    let dir = PluginDir::new();
    dir.add_in("stuck", "10-block", built::PROBE, &stuck(1));
    dir.add_in("calm", "10-ok", built::PROBE, &allow("tollgate:calm:alice"));
    let tenants = tenants_file(&format!("[tenant.stuck]\noutbound_hosts = [\"{literal}\"]\n"));

    let began = Instant::now();
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    eprintln!("started in {:?} with a vector that waits forever", began.elapsed());
    let refusal = || {
        let status = server.get("/status").json();
        status["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "stuck").unwrap()["last_refusal"].clone()
    };
    let first = refusal();
    assert!(first["reason"].as_str().unwrap_or_default().contains("ran past its deadline"), "{first}");
    server.review_at("/authenticate/stuck", V1, Some(TOKEN), &[]).assert_status_object(503, "ServiceUnavailable");
    assert_eq!(
        granted_username(&server.review_at("/authenticate/calm", V1, Some(TOKEN), &[])).as_deref(),
        Some("tollgate:calm:alice")
    );

    // Both change: the stuck tenant is refused again, and the other reloads all the same.
    std::fs::write(dir.path().join("stuck/10-block.toml"), stuck(2)).unwrap();
    std::fs::write(dir.path().join("calm/10-ok.toml"), allow("tollgate:calm:bob")).unwrap();
    wait_for_answer(&server, "/authenticate/calm", TOKEN, "calm reloads", |a| {
        granted_username(a).as_deref() == Some("tollgate:calm:bob")
    });
    wait_for("stuck refused again", Duration::from_secs(15), || (refusal()["at"] != first["at"]).then_some(()));
    assert_eq!(web.hits(), 0);
}
