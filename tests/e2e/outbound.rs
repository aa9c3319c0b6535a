//! What a plugin may reach beyond its review (contract 0.1.1): outbound HTTP only where its
//! manifest grants it, a key-value cache of its own, secrets from files, a virtual clock in
//! vectors — and components built against 0.1.0 still load.

use std::time::{Duration, Instant};

use tollgate_tests::*;

const TOKEN: &str = "tok-12345678";

/// A probe that GETs `url` and allows with the status and body size in `extra`.
fn http_probe(head: &str, url: &str) -> String {
    probe_manifest(head, "http", &format!("url = \"{url}\"\nusername = \"fetched\""))
}

fn start(dir: &PluginDir, extra: &[&str]) -> Server {
    let mut args = vec!["--deny-reason-in-status"];
    args.extend_from_slice(extra);
    Server::start(dir.path(), &args)
}

fn error_of(answer: &Answer) -> String {
    answer.review_status(V1)["error"].as_str().unwrap_or_default().to_owned()
}

fn extra_of(answer: &Answer, key: &str) -> String {
    answer.review_status(V1)["user"]["extra"][key][0].as_str().unwrap_or_default().to_owned()
}

#[test]
fn without_a_grant_nothing_leaves_and_the_refusal_is_logged() {
    let web = LocalHttp::start();
    let dir = PluginDir::new();
    dir.probe("10-http", &http_probe("", &web.url("/ok?secret-query=1")));
    let server = start(&dir, &[]);
    let answer = server.review(TOKEN);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.review_status(V1)["authenticated"], false);
    // Without a grant wasi:http is not linked: the call traps, the plugin fails closed.
    assert!(error_of(&answer).starts_with("plugin 10-http failed"), "{}", answer.body);
    assert_eq!(web.hits(), 0, "no request may leave without a grant");
    let logs = wait_for("the failure in the log", Duration::from_secs(5), || {
        let logs = server.logs.text();
        logs.contains("wasi:http is not linked for this plugin").then_some(logs)
    });
    assert!(!logs.contains("secret-query"), "the URL is not logged: {logs}");
}

#[test]
fn only_the_listed_scheme_host_and_port_are_reached() {
    let web = LocalHttp::start();
    let other = LocalHttp::start();
    let dir = PluginDir::new();
    let grant = format!("allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]", web.addr.port());
    dir.probe("10-listed", &http_probe(&grant, &web.url("/ok")));
    dir.add_in("other", "10-port", built::PROBE, &http_probe(&grant, &other.url("/ok")));
    let https = format!("allowed_outbound_hosts = [\"https://127.0.0.1:{}\"]", web.addr.port());
    dir.add_in("scheme", "10-scheme", built::PROBE, &http_probe(&https, &web.url("/ok")));
    // A name that resolves to loopback: internal addresses need the literal IP in the list.
    let named = format!("allowed_outbound_hosts = [\"http://localhost:{}\"]", web.addr.port());
    let by_name = format!("http://localhost:{}/ok", web.addr.port());
    dir.add_in("named", "10-named", built::PROBE, &http_probe(&named, &by_name));
    // The operator grants exactly what each manifest names (an internal literal needs that).
    let tenants = tempfile::NamedTempFile::new().unwrap();
    let port = web.addr.port();
    std::fs::write(
        tenants.path(),
        format!(
            "[default]\noutbound_hosts = [\"http://127.0.0.1:{port}\"]\n\
             [tenant.other]\nusername_prefix = \"\"\noutbound_hosts = [\"http://127.0.0.1:{port}\"]\n\
             [tenant.scheme]\nusername_prefix = \"\"\noutbound_hosts = [\"https://127.0.0.1:{port}\"]\n\
             [tenant.named]\nusername_prefix = \"\"\noutbound_hosts = [\"http://localhost:{port}\"]\n"
        ),
    )
    .unwrap();
    let server = start(&dir, &["--tenants", tenants.path().to_str().unwrap()]);

    let answer = server.review(TOKEN);
    assert_eq!(granted_username(&answer).as_deref(), Some("fetched"), "{}", answer.body);
    assert_eq!(extra_of(&answer, "http/status"), "200");
    assert_eq!(extra_of(&answer, "http/body-bytes"), "5");
    assert_eq!(web.hits(), 1);

    let answer = server.review_at("/authenticate/other", V1, Some(TOKEN), &[]);
    assert!(error_of(&answer).contains("HttpRequestDenied"), "another port: {}", answer.body);
    assert_eq!(other.hits(), 0);
    let logs = wait_for("the refusal in the log", Duration::from_secs(5), || {
        let logs = server.logs.text();
        logs.contains("outbound request refused").then_some(logs)
    });
    let line = logs.lines().find(|l| l.contains("outbound request refused")).unwrap();
    assert!(line.contains("10-port") && line.contains(&format!("127.0.0.1:{}", other.addr.port())), "{line}");
    assert!(!line.contains("/ok"), "only the destination is logged: {line}");
    let answer = server.review_at("/authenticate/scheme", V1, Some(TOKEN), &[]);
    assert!(error_of(&answer).contains("HttpRequestDenied"), "another scheme: {}", answer.body);
    let answer = server.review_at("/authenticate/named", V1, Some(TOKEN), &[]);
    assert!(error_of(&answer).contains("DestinationIpProhibited"), "loopback by name: {}", answer.body);
    assert_eq!(web.hits(), 1, "none of the refused requests reached a server");
}

#[test]
fn the_operator_bounds_what_a_tenant_may_grant_itself() {
    let dir = PluginDir::new();
    dir.add_in(
        "acme",
        "10-http",
        built::PROBE,
        &http_probe("allowed_outbound_hosts = [\"https://evil.example\"]", "https://evil.example/"),
    );
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), "[tenant.acme]\noutbound_hosts = [\"https://idp.acme.example\"]\n").unwrap();
    let server = start(&dir, &["--tenants", tenants.path().to_str().unwrap()]);
    let status = server.get("/status").json();
    let text = status.to_string();
    assert!(text.contains("not among this tenant's outbound_hosts"), "{text}");
    server.review_at("/authenticate/acme", V1, Some(TOKEN), &[]).assert_status_object(503, "ServiceUnavailable");
    // `check` applies the same rules when given the same tenants file.
    let plugins = dir.path().to_str().unwrap();
    let (code, out, _) = run_cli(&["check", plugins], "");
    assert_eq!(code, 1, "without the operator's rules a named tenant reaches nothing: {out}");
    assert!(out.contains("FAIL") && out.contains("has no outbound_hosts in the tenants file"), "{out}");
    let (code, out, _) = run_cli(&["check", "--tenants", tenants.path().to_str().unwrap(), plugins], "");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL") && out.contains("not among this tenant's outbound_hosts"), "{out}");
}

#[test]
fn redirects_are_not_followed_and_responses_are_capped() {
    let web = LocalHttp::start();
    let dir = PluginDir::new();
    let grant = format!("allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]", web.addr.port());
    dir.probe("10-redirect", &http_probe(&grant, &web.url("/redirect")));
    dir.add_in(
        "big",
        "10-big",
        built::PROBE,
        &http_probe(&format!("{grant}\n[outbound]\nmax_response_kib = 1024"), &web.url("/big")),
    );
    let tenants = tempfile::NamedTempFile::new().unwrap();
    let literal = format!("http://127.0.0.1:{}", web.addr.port());
    std::fs::write(
        tenants.path(),
        format!("[default]\noutbound_hosts = [\"{literal}\"]\n[tenant.big]\nusername_prefix = \"\"\noutbound_hosts = [\"{literal}\"]\n"),
    )
    .unwrap();
    let server = start(&dir, &["--tenants", tenants.path().to_str().unwrap()]);

    let answer = server.review(TOKEN);
    assert_eq!(extra_of(&answer, "http/status"), "302", "{}", answer.body);
    assert_eq!(extra_of(&answer, "http/location"), "http://evil.test/");
    assert_eq!(web.hits(), 1, "the redirect was handed to the guest, not followed");

    let answer = server.review_at("/authenticate/big", V1, Some(TOKEN), &[]);
    assert_eq!(answer.review_status(V1)["authenticated"], false);
    assert!(error_of(&answer).contains("HttpResponseBodySize"), "2 MiB over a 1 MiB cap: {}", answer.body);
    assert_eq!(granted_username(&server.review(TOKEN)).as_deref(), Some("fetched"), "the server carries on");
}

#[test]
fn a_slow_destination_or_a_sleep_cannot_hold_a_review_past_its_deadline() {
    let web = LocalHttp::start();
    let dir = PluginDir::new();
    let grant =
        format!("allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n[limits]\ntimeout_ms = 400", web.addr.port());
    dir.probe("10-slow", &http_probe(&grant, &web.url("/slow")));
    dir.add_in(
        "sleepy",
        "10-sleep",
        built::PROBE,
        &probe_manifest("[limits]\ntimeout_ms = 400", "sleep", "ms = \"20000\"\nusername = \"woke\""),
    );
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tenants.path(),
        format!(
            "[default]\noutbound_hosts = [\"http://127.0.0.1:{}\"]\n[tenant.sleepy]\nusername_prefix = \"\"\n",
            web.addr.port()
        ),
    )
    .unwrap();
    let server = start(&dir, &["--tenants", tenants.path().to_str().unwrap()]);

    // The destination answers after 10 s; the plugin's budget is 400 ms.
    let began = Instant::now();
    let answer = server.review(TOKEN);
    let took = began.elapsed();
    assert_eq!(answer.review_status(V1)["authenticated"], false, "{}", answer.body);
    assert!(took < Duration::from_secs(5), "the request's deadline held ({took:?} for a 10 s answer)");
    assert_eq!(web.hits(), 1);

    // A guest asleep in a host call for 20 s is woken at its deadline and then trapped.
    let began = Instant::now();
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let pending: Vec<_> =
            (0..4).map(|_| s.spawn(|| server.review_at("/authenticate/sleepy", V1, Some(TOKEN), &[]))).collect();
        // Meanwhile the server answers everything else.
        assert_eq!(server.get("/healthz").status, 200);
        pending.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = began.elapsed();
    assert!(took < Duration::from_secs(8), "four 20 s sleeps ended at their deadlines ({took:?})");
    for answer in answers {
        let status = answer.review_status(V1);
        assert_eq!(status["authenticated"], false);
        assert!(status.get("user").is_none(), "{status}");
    }
}

#[test]
fn each_plugin_has_its_own_cache_which_a_reload_empties() {
    let dir = PluginDir::new();
    dir.probe("10-kv", &probe_manifest("", "kv-count", ""));
    dir.add_in("acme", "10-kv", built::PROBE, &probe_manifest("", "kv-count", ""));
    dir.add_in("big", "10-kv", built::PROBE, &probe_manifest("[kv]\nmax_kib = 64", "kv-big", "bytes = \"100000\""));
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), "[tenant.acme]\nusername_prefix = \"\"\n[tenant.big]\nusername_prefix = \"\"\n")
        .unwrap();
    let server = start(&dir, &["--tenants", tenants.path().to_str().unwrap()]);

    let users = |path: &str, n: usize| -> Vec<String> {
        (0..n).map(|_| granted_username(&server.review_at(path, V1, Some(TOKEN), &[])).unwrap_or_default()).collect()
    };
    // Fresh instances, one cache: the count survives from review to review.
    assert_eq!(users("/authenticate", 3), ["kv-1", "kv-2", "kv-3"]);
    assert_eq!(users("/authenticate/acme", 2), ["kv-1", "kv-2"], "the same component in another tenant");
    let answer = server.review_at("/authenticate/big", V1, Some(TOKEN), &[]);
    assert!(error_of(&answer).contains("kv refused"), "100 kB into a 64 KiB cache: {}", answer.body);

    std::fs::write(dir.path().join("10-kv.toml"), probe_manifest("", "kv-count", "changed = \"1\"")).unwrap();
    wait_for_answer(&server, "/authenticate", TOKEN, "the new generation's empty cache", |a| {
        granted_username(a).as_deref() == Some("kv-1")
    });
    assert_eq!(users("/authenticate/acme", 1), ["kv-3"], "acme did not reload");
}

#[test]
fn secrets_come_from_files_in_the_tenants_reach_and_never_reach_a_log() {
    let secret = "s3cret-value-0f9e8d7c6b";
    let dir = PluginDir::new();
    std::fs::create_dir_all(dir.path().join(".secrets")).unwrap();
    std::fs::write(dir.path().join(".secrets/client"), format!("{secret}\n")).unwrap();
    dir.probe(
        "10-leak",
        &probe_manifest(
            "secret_files = { client_secret = \".secrets/client\" }",
            "leak-secret",
            "secret_key = \"client_secret\"",
        ),
    );
    let mounted = tempfile::tempdir().unwrap();
    std::fs::write(mounted.path().join("token"), "mounted-secret-4242-abcd").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("token"), "elsewhere").unwrap();
    let reference = |d: &tempfile::TempDir| {
        probe_manifest(
            &format!("secret_files = {{ s = \"{}\" }}", d.path().join("token").display()),
            "leak-secret",
            "secret_key = \"s\"",
        )
    };
    dir.add_in("listed", "10-leak", built::PROBE, &reference(&mounted));
    dir.add_in("unlisted", "10-leak", built::PROBE, &reference(&outside));
    let tls = Pki::new("own");
    let leaf = tls.server("tollgate");
    dir.add_in(
        "thief",
        "10-leak",
        built::PROBE,
        &probe_manifest(
            &format!("secret_files = {{ s = \"{}\" }}", leaf.key_path.display()),
            "leak-secret",
            "secret_key = \"s\"",
        ),
    );
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tenants.path(),
        format!(
            "[tenant.listed]\nusername_prefix = \"\"\nsecret_dirs = [\"{}\"]\n[tenant.unlisted]\n[tenant.thief]\nsecret_dirs = [\"{}\"]\n",
            mounted.path().display(),
            leaf.key_path.parent().unwrap().display()
        ),
    )
    .unwrap();
    let server = start(&dir, &tls_args(&leaf, &["--tenants", tenants.path().to_str().unwrap(), "--audit-log", "-"]));
    let mut server = server;
    server.set_client(tls_client(&tls.ca_pem, None, &["http/1.1"]));

    let answer = server.review(TOKEN);
    let error = error_of(&answer);
    assert!(error.contains("secret [secret]"), "the plugin read its secret, the answer hides it: {error}");
    let answer = server.review_at("/authenticate/listed", V1, Some(TOKEN), &[]);
    assert!(error_of(&answer).contains("secret [secret]"), "{}", answer.body);

    let status = server.get("/status").json().to_string();
    assert!(status.contains("is outside the tenant's folder and its secret_dirs"), "unlisted: {status}");
    assert!(status.contains("is the server's own key material"), "the TLS key: {status}");
    assert!(!status.contains("elsewhere") && !status.contains("PRIVATE KEY"), "{status}");

    std::thread::sleep(Duration::from_millis(300));
    let everything = format!("{}{}{}", server.logs.text(), server.audit.text(), server.get("/metrics").body);
    assert!(everything.contains("[secret]"), "the plugin's log lines are there, scrubbed");
    for leaked in [secret, "mounted-secret-4242-abcd"] {
        assert!(!everything.contains(leaked), "{leaked} reached a log");
    }
}

#[test]
fn vectors_run_on_a_virtual_clock_without_the_network() {
    let web = LocalHttp::start();
    let dir = PluginDir::new();
    let grant = format!("allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]", web.addr.port());
    let manifest = format!(
        "{}\n[[test]]\ntoken = \"t-12345678\"\nnow = 1700000000\nconfig = {{ action = \"clock\" }}\nexpect = \"allow\"\nusername = \"t-1700000000\"\n\
         [[test]]\ntoken = \"t-12345678\"\nexpect = \"deny\"\nreason = \"HttpRequestDenied\"\n",
        http_probe(&grant, &web.url("/ok")),
    );
    dir.probe("10-vectors", &manifest);
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), format!("[default]\noutbound_hosts = [\"http://127.0.0.1:{}\"]\n", web.addr.port()))
        .unwrap();
    let tenants = tenants.path().to_str().unwrap();
    let (code, out, err) = run_cli(&["check", "--tenants", tenants, dir.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 vectors passed"), "{out}");
    let server = start(&dir, &["--tenants", tenants]);
    assert_eq!(web.hits(), 0, "neither check nor serve let a vector reach the network");
    // Live reviews see the real clock and may use their grant.
    assert_eq!(granted_username(&server.review(TOKEN)).as_deref(), Some("fetched"));
    assert_eq!(web.hits(), 1);
}

#[test]
fn a_component_built_against_0_1_0_still_loads_and_answers() {
    let dir = PluginDir::new();
    dir.add("10-compat", built::COMPAT_0_1_0, "[config]\ntoken = \"compat-token-123\"\nusername = \"old-timer\"\n");
    let server = start(&dir, &[]);
    let answer = server.review("compat-token-123");
    assert_eq!(granted_username(&answer).as_deref(), Some("old-timer"), "{}", answer.body);
    assert_eq!(answer.review_status(V1)["user"]["groups"][0], "built-against-0.1.0");
}

#[test]
fn a_component_built_against_0_1_1_still_loads_and_keeps_its_cache() {
    let dir = PluginDir::new();
    dir.add("10-compat", built::COMPAT_0_1_1, "[config]\ntoken = \"compat-token-456\"\nusername = \"kv-user\"\n");
    let server = start(&dir, &[]);
    for seen in 1..=2 {
        let answer = server.review("compat-token-456");
        assert_eq!(granted_username(&answer).as_deref(), Some("kv-user"), "{}", answer.body);
        let groups = answer.review_status(V1)["user"]["groups"].clone();
        assert_eq!(groups, serde_json::json!(["built-against-0.1.1", format!("seen-{seen}")]));
    }
}
