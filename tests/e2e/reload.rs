//! Hot reload (SPEC §8): a tenant's whole new generation goes live, or is refused and the last
//! good one stays.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_tests::*;

fn allow(username: &str) -> String {
    probe_manifest("", "allow", &format!("username = \"{username}\""))
}

fn wait_refusal(server: &Server, tenant: &str, part: &str) -> String {
    wait_for(&format!("a refusal mentioning {part:?}"), Duration::from_secs(15), || {
        last_refusal(server, tenant).filter(|r| r.contains(part))
    })
}

fn wait_user(server: &Server, path: &str, want: Option<&str>) {
    let what = format!("{path} to answer {want:?}");
    wait_for_answer(server, path, "tok-12345678", &what, |a| granted_username(a).as_deref() == want);
}

#[test]
fn add_replace_refuse_and_delete_plugins_live() {
    let dir = PluginDir::new();
    let server = Server::start(dir.path(), &[]);
    // Empty: every token is denied.
    assert_eq!(server.review("tok-12345678").review_status(V1), json!({"authenticated": false}));

    dir.probe("10-a", &allow("v1"));
    wait_user(&server, "/authenticate", Some("v1"));
    std::fs::write(dir.path().join("10-a.toml"), allow("v2")).unwrap();
    wait_user(&server, "/authenticate", Some("v2"));

    // Refused: garbage, a component of another world, a version failing its own vectors, a
    // broken manifest. Each time the previous generation stays live, whole.
    let bad_versions: [(&str, Vec<u8>, String, &str); 4] = [
        ("garbage", b"not wasm at all".to_vec(), allow("v3"), "not a WebAssembly component"),
        ("wrong world", wat::parse_str("(component)").unwrap(), allow("v3"), "does not fit the world"),
        (
            "failing vectors",
            std::fs::read(built::PROBE).unwrap(),
            allow("v3") + "[[test]]\ntoken = \"x\"\nexpect = \"deny\"\n",
            "vectors fail",
        ),
        ("broken manifest", std::fs::read(built::PROBE).unwrap(), "role = \"judge\"\n".into(), "manifest"),
    ];
    for (what, wasm, manifest, why) in bad_versions {
        std::fs::write(dir.path().join("10-a.toml"), manifest).unwrap();
        std::fs::write(dir.path().join("10-a.wasm"), wasm).unwrap();
        let reason = wait_refusal(&server, "", why);
        assert!(reason.contains("10-a"), "{what}: {reason}");
        for _ in 0..5 {
            assert_eq!(
                granted_username(&server.review("tok-12345678")).as_deref(),
                Some("v2"),
                "{what}: the old generation answers"
            );
        }
        // Reset the refusal marker for the next case by making a good version live again.
        std::fs::write(dir.path().join("10-a.wasm"), std::fs::read(built::PROBE).unwrap()).unwrap();
        std::fs::write(dir.path().join("10-a.toml"), allow("v2")).unwrap();
    }
    let metrics = server.get("/metrics").body;
    assert!(metrics.contains("tollgate_reloads_total{tenant=\"\",result=\"refused\"}"), "{metrics}");

    // A second plugin, then deleting the first: a generation without it.
    dir.probe("20-b", &allow("b"));
    std::fs::write(dir.path().join("10-a.toml"), probe_manifest("", "abstain", "")).unwrap();
    wait_user(&server, "/authenticate", Some("b"));
    std::fs::remove_file(dir.path().join("20-b.wasm")).unwrap();
    std::fs::remove_file(dir.path().join("20-b.toml")).unwrap();
    wait_user(&server, "/authenticate", None);
    let status = server.get("/status").json();
    let plugins = status["tenants"][0]["live"]["plugins"].as_array().unwrap().len();
    assert_eq!(plugins, 1, "{status}");
}

#[test]
fn tenant_folders_come_and_go() {
    let dir = PluginDir::new();
    let server = Server::start(dir.path(), &[]);
    server.review_at("/authenticate/acme", V1, Some("tok-12345678"), &[]).assert_status_object(404, "NotFound");

    // A new folder is served as soon as it loads.
    let staging = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
    std::fs::copy(built::PROBE, staging.path().join("10-a.wasm")).unwrap();
    std::fs::write(staging.path().join("10-a.toml"), allow("tollgate:acme:alice")).unwrap();
    std::fs::rename(staging.path(), dir.path().join("acme")).unwrap();
    wait_user(&server, "/authenticate/acme", Some("tollgate:acme:alice"));

    // A new folder that cannot load answers 503, never a cacheable denial.
    std::fs::create_dir(dir.path().join("broken")).unwrap();
    std::fs::write(dir.path().join("broken/10-x.wasm"), b"junk").unwrap();
    wait_for_answer(&server, "/authenticate/broken", "tok-12345678", "503 for a tenant that never loaded", |a| {
        a.status == 503
    })
    .assert_status_object(503, "ServiceUnavailable");

    // A deleted folder answers 404.
    std::fs::remove_dir_all(dir.path().join("acme")).unwrap();
    wait_for_answer(&server, "/authenticate/acme", "tok-12345678", "404 after deletion", |a| a.status == 404)
        .assert_status_object(404, "NotFound");
    assert!(
        !server.get("/metrics").body.contains("tollgate_generation{tenant=\"acme\"}"),
        "a removed tenant's gauges go"
    );
}

#[test]
fn a_kubelet_data_swap_is_read_as_one_version() {
    let dir = PluginDir::new();
    let mut volume = KubeVolume::new(dir.path().join("acme"));
    let files = |v: &str| probe_files("10-auth", &allow(&format!("tollgate:acme:{v}"))).to_vec();
    volume.publish(&files("v1"));
    let server = Server::start(dir.path(), &[]);
    wait_user(&server, "/authenticate/acme", Some("tollgate:acme:v1"));
    volume.publish(&files("v2"));
    wait_user(&server, "/authenticate/acme", Some("tollgate:acme:v2"));
    // A version that adds a plugin and one that removes it.
    let mut three = files("v3");
    three.extend(probe_files("20-other", &probe_manifest("", "deny", "")));
    volume.publish(&three);
    wait_user(&server, "/authenticate/acme", Some("tollgate:acme:v3"));
    assert_eq!(server.get("/status").json()["tenants"][1]["live"]["plugins"].as_array().unwrap().len(), 2);
    volume.publish(&files("v4"));
    wait_user(&server, "/authenticate/acme", Some("tollgate:acme:v4"));
    assert_eq!(server.get("/status").json()["tenants"][1]["live"]["plugins"].as_array().unwrap().len(), 1);
    assert!(
        last_refusal(&server, "acme").is_none(),
        "no swap was ever seen half-done: {:?}",
        last_refusal(&server, "acme")
    );
}

/// Concurrent reviews for 20 s while a tenant of two plugins (an authenticator and a mapper,
/// each stamping its version) is swapped between two versions every 100 ms, kubelet-style:
/// every answer is 200 and carries the stamps of exactly one generation.
#[test]
fn reload_under_load_never_mixes_generations() {
    let dir = PluginDir::new();
    let mut volume = KubeVolume::new(dir.path().join("swap"));
    let version = |v: &str| -> Vec<(String, Vec<u8>)> {
        let auth = probe_manifest("", "allow", &format!("username = \"tollgate:swap:user\"\nstamp = \"auth-{v}\""));
        let map = probe_manifest("role = \"mapper\"", "map", &format!("stamp = \"map-{v}\""));
        probe_files("10-auth", &auth).into_iter().chain(probe_files("50-map", &map)).collect()
    };
    let (v1, v2) = (version("v1"), version("v2"));
    volume.publish(&v1);
    let server = Server::start(dir.path(), &[]);

    let stop = AtomicBool::new(false);
    let answered = AtomicUsize::new(0);
    let seen = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let answer = server.review_at("/authenticate/swap", V1, Some("tok-12345678"), &[]);
                    let status = answer.review_status(V1);
                    assert_eq!(status["authenticated"], true, "{status}");
                    let stamps = status["user"]["extra"]["tollgate.test/stamp"].clone();
                    let index = if stamps == json!(["auth-v1", "map-v1"]) {
                        0
                    } else if stamps == json!(["auth-v2", "map-v2"]) {
                        1
                    } else {
                        panic!("a mixed or partial generation answered: {stamps}")
                    };
                    seen[index].fetch_add(1, Ordering::Relaxed);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut swaps = 0;
        while started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
            swaps += 1;
            volume.publish(if swaps % 2 == 1 { &v2 } else { &v1 });
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (a, b) = (seen[0].load(Ordering::Relaxed), seen[1].load(Ordering::Relaxed));
    eprintln!(
        "reload under load: {} answers in {:?} ({a} v1, {b} v2)",
        answered.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(a > 0 && b > 0, "both versions went live ({a} v1, {b} v2)");
    assert!(last_refusal(&server, "swap").is_none(), "{:?}", last_refusal(&server, "swap"));
    let generation = server.get("/status").json()["tenants"][1]["live"]["generation"].as_u64().unwrap();
    assert!(generation > 20, "only {generation} generations went live in 200 swaps");
}

#[test]
fn the_tenants_file_reloads_and_a_broken_one_keeps_the_last_guardrails() {
    let dir = PluginDir::new();
    dir.add_in(
        "acme",
        "10-a",
        built::PROBE,
        &probe_manifest("", "allow", "username = \"tollgate:acme:alice\"\ngroups = \"ops\""),
    );
    let tenants = tempfile::tempdir().unwrap();
    let file = tenants.path().join("tenants.toml");
    std::fs::write(&file, "[tenant.acme]\n").unwrap();
    let server = Server::start(dir.path(), &["--tenants", file.to_str().unwrap()]);
    wait_user(&server, "/authenticate/acme", None);
    std::fs::write(&file, "[tenant.acme]\nallowed_groups = [\"ops\"]\n").unwrap();
    wait_user(&server, "/authenticate/acme", Some("tollgate:acme:alice"));
    std::fs::write(&file, "[tenant.acme\n").unwrap();
    wait_for("the tenants file refusal", Duration::from_secs(15), || {
        server.get("/status").json()["tenants_file"]["last_refusal"]["reason"].as_str().map(str::to_owned)
    });
    assert_eq!(
        granted_username(&server.review_at("/authenticate/acme", V1, Some("tok-12345678"), &[])).as_deref(),
        Some("tollgate:acme:alice")
    );
}

#[test]
fn the_compile_cache_spares_a_restart_and_refuses_tampered_entries() {
    use std::os::unix::fs::PermissionsExt;
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");
    let args = ["--cache-dir", cache_dir.to_str().unwrap()];

    let server = Server::start(dir.path(), &args);
    assert!(server.logs.text().contains("compiled"), "{}", server.logs.text());
    drop(server);
    let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let key_mode = std::fs::metadata(cache_dir.join("key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);

    let server = Server::start(dir.path(), &args);
    let logs = server.logs.text();
    assert!(logs.contains("loaded from the compile cache") && !logs.contains(" compiled"), "{logs}");
    assert_eq!(granted_username(&server.review("tok-12345678")).as_deref(), Some("alice"));
    drop(server);

    // Tamper with the entry: it is refused, discarded and rebuilt; the plugin still works.
    let entry = std::fs::read_dir(&cache_dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&entry).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let server = Server::start(dir.path(), &args);
    let logs = server.logs.text();
    assert!(logs.contains("failed authentication") && logs.contains("compiled"), "{logs}");
    assert_eq!(granted_username(&server.review("tok-12345678")).as_deref(), Some("alice"));
    drop(server);

    // A cache others could write is refused outright.
    std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, _, err) = run_cli(
        &[
            "serve",
            "--plugins",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
            cache_dir.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 2);
    assert!(err.contains("mode 0700"), "{err}");
}

#[test]
fn oversized_plugins_are_refused() {
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let server = Server::start(dir.path(), &["--max-plugin-bytes", "1000"]);
    server.review("tok-12345678").assert_status_object(503, "ServiceUnavailable");
    assert!(last_refusal(&server, "").unwrap().contains("larger than the plugin size limit"));
}

#[test]
fn readyz_waits_for_the_first_load_and_can_require_every_tenant() {
    use std::io::BufRead;
    let dir = PluginDir::new();
    // Vectors that take ~2 s make the first load observable; each spins a quarter of its
    // 1 s budget, so a busy machine does not make one miss its deadline (and refuse the tenant).
    let slow_vectors = "[[test]]\ntoken = \"x\"\nexpect = \"allow\"\n".repeat(8);
    dir.probe(
        "10-slow",
        &probe_manifest(
            &format!("[limits]\ntimeout_ms = 1000\n{slow_vectors}"),
            "spin",
            "ms = \"250\"\nusername = \"u\"",
        ),
    );
    let mut child = std::process::Command::new(tollgate_bin())
        .args([
            "serve",
            "--plugins",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--probe-listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let probe = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("probe listener on http://").nth(1).map(|r| r.split(' ').next().unwrap().to_string()))
        .unwrap();
    install_crypto_provider();
    let client = reqwest::blocking::Client::new();
    let readyz = || client.get(format!("http://{probe}/readyz")).send().unwrap().status().as_u16();
    assert_eq!(client.get(format!("http://{probe}/healthz")).send().unwrap().status(), 200, "alive during the load");
    assert_eq!(readyz(), 503, "not ready before the first load is done");
    lines.by_ref().map_while(Result::ok).find(|l| l.contains("listening on http://")).unwrap();
    assert_eq!(readyz(), 200);
    let _ = child.kill();
    let _ = child.wait();

    // --require-all-tenants: a refused tenant makes the replica unready, though it still serves.
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    dir.add_in("acme", "10-a", built::PROBE, &allow("tollgate:acme:alice"));
    let server = Server::start(dir.path(), &["--require-all-tenants"]);
    assert_eq!(server.get("/readyz").status, 200);
    std::fs::write(dir.path().join("acme/10-a.wasm"), b"junk").unwrap();
    wait_for("readyz 503", Duration::from_secs(15), || (server.get("/readyz").status == 503).then_some(()));
    assert!(server.get("/readyz").body.contains("\"acme\""));
    assert_eq!(
        granted_username(&server.review_at("/authenticate/acme", V1, Some("tok-12345678"), &[])).as_deref(),
        Some("tollgate:acme:alice")
    );
    std::fs::copy(built::PROBE, dir.path().join("acme/10-a.wasm")).unwrap();
    wait_for("readyz 200 again", Duration::from_secs(15), || (server.get("/readyz").status == 200).then_some(()));
}

#[test]
fn a_relative_plugin_directory_reloads_too() {
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("v1"));
    let parent = dir.path().parent().unwrap().to_path_buf();
    let relative = dir.path().file_name().unwrap().to_str().unwrap().to_string();
    // Start tollgate from the parent directory with a relative --plugins.
    let mut child = std::process::Command::new(tollgate_bin())
        .current_dir(&parent)
        .args(["serve", "--plugins", &relative, "--listen", "127.0.0.1:0", "--rescan-interval-secs", "3600"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("listening on http://").nth(1).map(str::to_owned))
        .unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    install_crypto_provider();
    let client = reqwest::blocking::Client::new();
    let ask = || {
        let body =
            serde_json::json!({"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "tok-12345678"}}).to_string();
        let r = client
            .post(format!("http://{addr}/authenticate"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .unwrap();
        granted_username(&Answer::from(r))
    };
    assert_eq!(ask().as_deref(), Some("v1"));
    std::fs::write(dir.path().join("10-a.toml"), allow("v2")).unwrap();
    // Seen through file events (the periodic rescan is an hour away).
    wait_for("the reload", Duration::from_secs(15), || (ask().as_deref() == Some("v2")).then_some(()));
    let _ = child.kill();
    let _ = child.wait();
}

/// A probe that allows `user` after sleeping `sleep_ms` in each of its `vectors` vectors.
fn slow(user: &str, sleep_ms: u64, vectors: usize) -> String {
    let mut manifest =
        probe_manifest("[limits]\ntimeout_ms = 1000", "sleep", &format!("ms = \"{sleep_ms}\"\nusername = \"{user}\""));
    for _ in 0..vectors {
        manifest += &format!("[[test]]\ntoken = \"t-12345678\"\nexpect = \"allow\"\nusername = \"{user}\"\n");
    }
    manifest
}

/// Per-tenant work (issue 12): a tenant whose build is slow — vectors that each take most of
/// their deadline — delays no other tenant's reload, and a change that lands during its build
/// goes live right after it.
#[test]
fn a_slow_build_delays_no_other_tenants_reload() {
    const VECTORS: usize = 12;
    let dir = PluginDir::new();
    dir.add_in("slow", "10-a", built::PROBE, &slow("tollgate:slow:v1", 0, 1));
    dir.add_in("calm", "10-a", built::PROBE, &allow("tollgate:calm:alice"));
    let server = Server::start(dir.path(), &[]);
    wait_user(&server, "/authenticate/slow", Some("tollgate:slow:v1"));
    let generation = |tenant: &str| {
        let status = server.get("/status").json();
        status["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == tenant).unwrap()["live"]["generation"]
            .as_u64()
    };

    // A build of about VECTORS × 700 ms starts; the other tenant changes while it runs.
    std::fs::write(dir.path().join("slow/10-a.toml"), slow("tollgate:slow:v2", 700, VECTORS)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let began = Instant::now();
    std::fs::write(dir.path().join("calm/10-a.toml"), allow("tollgate:calm:bob")).unwrap();
    wait_user(&server, "/authenticate/calm", Some("tollgate:calm:bob"));
    eprintln!("calm reloaded in {:?} during a build of {VECTORS} slow vectors", began.elapsed());
    assert_eq!(generation("slow"), Some(1), "calm reloaded only once slow's build ended: there is one queue");

    // Changed again during its own build: built right after it, from the folder as it is then.
    std::fs::write(dir.path().join("slow/10-a.toml"), slow("tollgate:slow:v3", 0, 1)).unwrap();
    wait_for("slow to answer v3", Duration::from_secs(30), || {
        (granted_username(&server.review_at("/authenticate/slow", V1, Some("tok-12345678"), &[])).as_deref()
            == Some("tollgate:slow:v3"))
        .then_some(())
    });
    assert!(last_refusal(&server, "slow").is_none(), "{:?}", last_refusal(&server, "slow"));
}

/// Tenants build at once, but the same component in many tenants (one image, a rollout) is
/// compiled once: the others wait for that compile and share its code.
#[test]
fn the_same_component_in_many_tenants_is_compiled_once() {
    let dir = PluginDir::new();
    let tenants = ["t1", "t2", "t3", "t4", "t5", "t6"];
    for t in tenants {
        dir.add_in(t, "10-a", built::PROBE, &allow(&format!("tollgate:{t}:alice")));
    }
    let server = Server::start(dir.path(), &[]);
    for t in tenants {
        wait_user(&server, &format!("/authenticate/{t}"), Some(&format!("tollgate:{t}:alice")));
    }
    let compiles = server.logs.text().lines().filter(|l| l.contains("compiled digest=")).count();
    assert_eq!(compiles, 1, "{}", server.logs.text());
}

/// A tenant folder removed while it builds stays removed: the end of its build brings nothing
/// back.
#[test]
fn a_folder_removed_during_its_build_stays_removed() {
    let dir = PluginDir::new();
    dir.add_in("calm", "10-a", built::PROBE, &allow("tollgate:calm:alice"));
    let server = Server::start(dir.path(), &[]);
    // The new tenant appears whole (a rename), with a build of about 4 × 500 ms.
    let staging = dir.path().join(".staging");
    std::fs::create_dir(&staging).unwrap();
    std::fs::copy(built::PROBE, staging.join("10-a.wasm")).unwrap();
    std::fs::write(staging.join("10-a.toml"), slow("tollgate:gone:v1", 500, 4)).unwrap();
    std::fs::rename(&staging, dir.path().join("gone")).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    std::fs::remove_dir_all(dir.path().join("gone")).unwrap();
    // Past the build's end, and a rescan's worth of events.
    std::thread::sleep(Duration::from_secs(3));
    let status = server.get("/status").json();
    assert!(!status["tenants"].as_array().unwrap().iter().any(|t| t["tenant"] == "gone"), "{status}");
    assert_eq!(server.review_at("/authenticate/gone", V1, Some("tok-12345678"), &[]).status, 404);
    assert!(server.logs.text().matches("tenant folder removed").count() <= 1, "{}", server.logs.text());
    wait_user(&server, "/authenticate/calm", Some("tollgate:calm:alice"));
}

/// A rollback compiles nothing (issue 13): the previous version's code is kept in memory after
/// its generation went, without `--cache-dir`.
/// The probe, and the probe with a custom section appended: another digest, the same behaviour.
fn probe_twice() -> (Vec<u8>, Vec<u8>) {
    let v1 = std::fs::read(built::PROBE).unwrap();
    let mut v2 = v1.clone();
    v2.extend_from_slice(&[0, 6, 5, b'v', b'-', b't', b'w', b'o']);
    (v1, v2)
}

#[test]
fn a_rollback_compiles_nothing() {
    let (v1, v2) = probe_twice();
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let server = Server::start(dir.path(), &[]);
    let digest = || {
        let status = server.get("/status").json();
        status["tenants"][0]["live"]["plugins"][0]["digest"].as_str().map(str::to_owned)
    };
    let first = digest().unwrap();
    for (wasm, version) in [(&v2, "v2"), (&v1, "v1 again")] {
        let before = digest();
        std::fs::write(dir.path().join("10-a.wasm"), wasm).unwrap();
        wait_for(&format!("{version} live"), Duration::from_secs(15), || (digest() != before).then_some(()));
    }
    assert_eq!(digest().as_deref(), Some(first.as_str()));
    let compiled: Vec<_> =
        server.logs.text().lines().filter(|l| l.contains("compiled digest=")).map(str::to_owned).collect();
    assert_eq!(compiled.len(), 2, "v1 and v2 once each: {compiled:#?}");
}

/// The threads of `pid` named like `prefix*`, with their niceness (`/proc/PID/task/TID/stat`).
fn threads_named(pid: u32, prefix: &str) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // `tid (comm) state ...`: comm may hold spaces, so fields count from its closing paren.
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else { continue };
        if name.starts_with(prefix) {
            // After comm: state is field 3, nice is field 19.
            let nice = rest.split(' ').nth(16).and_then(|n| n.parse().ok()).unwrap();
            found.push((name.to_owned(), nice));
        }
    }
    found
}

#[test]
fn compiles_leave_reviews_the_cpu_once_the_server_serves() {
    let (_, v2) = probe_twice();
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let server = Server::start(dir.path(), &[]);
    // The first load compiled on every core at normal priority: no background thread yet.
    assert_eq!(threads_named(server.pid(), "tollgate-compil"), vec![], "before any reload");
    assert!(server.logs.text().contains("later compiles run in the background"), "{}", server.logs.text());

    std::fs::write(dir.path().join("10-a.wasm"), &v2).unwrap();
    std::fs::write(dir.path().join("10-a.toml"), allow("bob")).unwrap();
    wait_user(&server, "/authenticate", Some("bob"));
    let compiled = server.logs.text().lines().filter(|l| l.contains("compiled digest=")).count();
    assert_eq!(compiled, 2, "v2 was compiled, not found: {}", server.logs.text());
    // The reload compiled on the background threads: half the cores, at least one, niced.
    let threads = threads_named(server.pid(), "tollgate-compil");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(threads.len(), (cores / 2).max(1), "{threads:?}");
    assert!(threads.iter().all(|(_, nice)| *nice == 10), "{threads:?}");
    assert_eq!(granted_username(&server.review("tok-12345678")).as_deref(), Some("bob"));
}
