//! A hostile tenant (SECURITY.md): everything inside a tenant folder is untrusted — files,
//! symlinks, `..data`, FIFOs, sizes, manifests, vectors, components — and the operator's rules
//! hold whatever it does. Each test tries to cross one boundary against the real binary.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::*;

const TOKEN: &str = "tok-12345678";

fn allow(username: &str, groups: &str) -> String {
    probe_manifest("", "allow", &format!("username = \"{username}\"\ngroups = \"{groups}\""))
}

/// Replaces a file's contents at once (a rename), as an editor or kubelet does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A tenant's entry in the full `/status`.
fn tenant_status(server: &Server, tenant: &str) -> Value {
    let status = server.get("/status").json();
    status["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == tenant).cloned().unwrap_or(Value::Null)
}

fn refusal(server: &Server, tenant: &str) -> String {
    tenant_status(server, tenant)["last_refusal"]["reason"].as_str().unwrap_or_default().to_owned()
}

/// The tenant is not served (503, never a cacheable denial) and `/status` says why.
fn assert_refused(server: &Server, tenant: &str, why: &str) {
    let answer = server.review_at(&format!("/authenticate/{tenant}"), V1, Some(TOKEN), &[]);
    answer.assert_status_object(503, "ServiceUnavailable");
    let reason = refusal(server, tenant);
    assert!(reason.contains(why), "{tenant}: expected {why:?} in the refusal, got {reason:?}");
}

/// Runs the CLI, failing the test (instead of hanging it) if it takes more than `limit`.
fn run_cli_within(limit: Duration, args: &[&str]) -> (i32, String, String) {
    let shown = format!("{args:?}");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = tx.send(run_cli(&args, ""));
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("tollgate {shown} did not finish within {limit:?}"))
}

/// Item 1: files stay inside the folder.
#[test]
fn nothing_a_tenant_places_in_its_folder_reads_outside_it() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(built::PROBE, outside.path().join("10-x.wasm")).unwrap();
    std::fs::write(outside.path().join("10-x.toml"), allow("stolen", "")).unwrap();
    let dir = PluginDir::new();
    let t = |p: &str| dir.path().join(p);
    // globex: a tenant whose files the others try to borrow.
    dir.add_in("globex", "10-g", built::PROBE, &allow("tollgate:globex:alice", ""));
    // A manifest symlinked to another tenant's manifest.
    dir.add_in("mlink", "10-g", built::PROBE, "");
    symlink("../globex/10-g.toml", t("mlink/10-g.toml")).unwrap();
    // A component symlinked outside the plugin directory.
    std::fs::create_dir(t("wlink")).unwrap();
    symlink(outside.path().join("10-x.wasm"), t("wlink/10-x.wasm")).unwrap();
    // `..data` pointing at another tenant, outside, or at /etc.
    for (tenant, target) in
        [("data-other", "../globex".into()), ("data-out", outside.path().to_path_buf()), ("data-etc", "/etc".into())]
    {
        std::fs::create_dir(t(tenant)).unwrap();
        symlink(target, t(tenant).join("..data")).unwrap();
    }
    // A directory symlink out, and a plugin through it.
    std::fs::create_dir(t("dirlink")).unwrap();
    symlink(outside.path(), t("dirlink/lib")).unwrap();
    symlink("lib/10-x.wasm", t("dirlink/10-x.wasm")).unwrap();
    // A `..` detour that ends in another tenant's folder.
    std::fs::create_dir(t("dots")).unwrap();
    symlink("./../dots/../globex/10-g.wasm", t("dots/10-g.wasm")).unwrap();
    // A tenant folder that is itself a symlink out of the plugin directory.
    symlink(outside.path(), t("escape")).unwrap();
    // The default tenant may not borrow a tenant's component either.
    dir.probe("10-root", &allow("root", ""));
    symlink("globex/10-g.wasm", t("20-steal.wasm")).unwrap();
    // kubelet's real layout keeps working: `..data` -> `..2026_...`, links into `..data`.
    let mut kube = KubeVolume::new(t("kube"));
    kube.publish(&probe_files("10-k", &allow("tollgate:kube:k", "")));

    let server = Server::start(dir.path(), &[]);
    for tenant in ["mlink", "wlink", "data-other", "data-out", "data-etc", "dirlink", "dots", "escape"] {
        assert_refused(&server, tenant, "resolves outside");
    }
    let answer = server.review(TOKEN);
    answer.assert_status_object(503, "ServiceUnavailable");
    assert!(refusal(&server, "").contains("leads into the tenant folder \"globex\""), "{}", refusal(&server, ""));
    let globex = server.review_at("/authenticate/globex", V1, Some(TOKEN), &[]).review_status(V1);
    assert_eq!(globex["user"]["username"], "tollgate:globex:alice", "the borrowed-from tenant is fine");
    let kube = server.review_at("/authenticate/kube", V1, Some(TOKEN), &[]).review_status(V1);
    assert_eq!(kube["user"]["username"], "tollgate:kube:k", "kubelet's layout loads");
    assert!(!server.logs.text().contains("stolen") && !server.audit.text().contains("stolen"));
}

/// Item 2: no file can hang or exhaust the server.
#[test]
fn fifos_sparse_files_and_floods_are_refused_and_the_rest_goes_on() {
    let dir = PluginDir::new();
    let t = |p: &str| dir.path().join(p);
    dir.add_in("globex", "10-g", built::PROBE, &allow("tollgate:globex:alice", ""));
    // A FIFO in place of a manifest and of a component: nothing ever writes to them.
    dir.add_in("fifo", "10-x", built::PROBE, "");
    mkfifo(&t("fifo/10-x.toml"));
    std::fs::create_dir(t("fifowasm")).unwrap();
    mkfifo(&t("fifowasm/10-x.wasm"));
    // A 50 GB sparse manifest.
    dir.add_in("sparse", "10-x", built::PROBE, "");
    std::fs::File::create(t("sparse/10-x.toml")).unwrap().set_len(50 << 30).unwrap();
    // More plugins than a tenant may have (32 by default), unless the operator raises it.
    for tenant in ["many", "many-listed"] {
        for i in 0..40 {
            dir.add_in(tenant, &format!("{i:02}-p"), built::PROBE, &probe_manifest("", "abstain", ""));
        }
    }
    // More vectors than a tenant may run (1,024 by default), in a manifest under 64 KiB.
    let vectors = "[[test]]\ntoken = \"t-12345678\"\nexpect = \"abstain\"\n".repeat(1100);
    dir.add_in(
        "vectors",
        "10-x",
        built::PROBE,
        &probe_manifest("", "abstain", "").replace("[config]", &format!("{vectors}\n[config]")),
    );
    // More bytes than the operator allows this tenant (max_total_mib = 1).
    let probe_bytes = std::fs::metadata(built::PROBE).unwrap().len();
    let copies = (1 << 20) / probe_bytes + 1;
    assert!(copies <= 32, "the probe is {probe_bytes} bytes: too small to exceed 1 MiB within the plugin cap");
    for i in 0..copies {
        dir.add_in("fat", &format!("{i:02}-p"), built::PROBE, "");
    }
    let tenants = tenants_file("[tenant.many-listed]\nmax_plugins = 64\n[tenant.fat]\nmax_total_mib = 1\n");

    let started = Instant::now();
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    assert!(started.elapsed() < Duration::from_secs(60), "startup took {:?}", started.elapsed());
    assert_refused(&server, "fifo", "is not a regular file (a FIFO)");
    assert_refused(&server, "fifowasm", "is not a regular file (a FIFO)");
    assert_refused(&server, "sparse", "larger than the manifest size limit of 65536 bytes");
    assert_refused(&server, "many", "40 plugins, more than this tenant's limit of 32");
    assert_refused(&server, "vectors", "exceed this tenant's limit of 1024 (max_vectors");
    assert_refused(&server, "fat", "exceed this tenant's limit of 1 MiB (max_total_mib");
    let listed = server.review_at("/authenticate/many-listed", V1, Some(TOKEN), &[]).review_status(V1);
    assert_eq!(listed["authenticated"], false, "40 plugins load when the operator allows 64: {listed}");
    let logs = server.logs.text();
    assert!(logs.contains("is not a regular file (a FIFO)"), "the refusal is logged");

    // Other tenants are served, and reloads go on.
    let globex = server.review_at("/authenticate/globex", V1, Some(TOKEN), &[]).review_status(V1);
    assert_eq!(globex["user"]["username"], "tollgate:globex:alice");
    replace(&t("globex/10-g.toml"), &allow("tollgate:globex:bob", ""));
    wait_for_answer(&server, "/authenticate/globex", TOKEN, "globex reloads", |a| {
        granted_username(a).as_deref() == Some("tollgate:globex:bob")
    });

    // `check` and `review` read the same way: a clear failure, never a hang.
    let (code, out, _) = run_cli_within(Duration::from_secs(60), &["check", t("fifo").to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL") && out.contains("a FIFO"), "{out}");
    let (code, out, _) = run_cli_within(Duration::from_secs(60), &["check", t("sparse/10-x.wasm").to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("larger than the manifest size limit"), "{out}");
}

/// Item 3: egress is the operator's to grant.
#[test]
fn egress_is_the_operators_to_grant() {
    let web = LocalHttp::start();
    let url = web.url("/ok");
    let literal = format!("http://127.0.0.1:{}", web.addr.port());
    let grant = format!("allowed_outbound_hosts = [\"{literal}\"]");
    let http = |head: &str| probe_manifest(head, "http", &format!("url = \"{url}\"\nusername = \"fetched\""));
    let dir = PluginDir::new();
    // The default tenant's manifest alone cannot open loopback.
    dir.probe("10-http", &http(&grant));
    // A named tenant without outbound_hosts reaches nothing, not even a public name.
    dir.add_in("acme", "10-http", built::PROBE, &http("allowed_outbound_hosts = [\"https://idp.example\"]"));
    // A plugin without any grant has no wasi:http at all.
    dir.add_in("nogrant", "10-http", built::PROBE, &http(""));
    // The operator names the literal: granted.
    dir.add_in("granted", "10-http", built::PROBE, &http(&grant));
    let tenants = tenants_file(&format!(
        "[tenant.acme]\nusername_prefix = \"\"\n[tenant.nogrant]\nusername_prefix = \"\"\n\
         [tenant.granted]\nusername_prefix = \"\"\noutbound_hosts = [\"{literal}\"]\n"
    ));
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    server.review(TOKEN).assert_status_object(503, "ServiceUnavailable");
    assert!(refusal(&server, "").contains("is an internal address"), "{}", refusal(&server, ""));
    assert_refused(&server, "acme", "has no outbound_hosts in the tenants file");
    let answer = server.review_at("/authenticate/nogrant", V1, Some(TOKEN), &[]);
    let status = answer.review_status(V1);
    assert_eq!(status["authenticated"], false);
    assert!(status["error"].as_str().unwrap_or_default().starts_with("plugin 10-http failed"), "{status}");
    let logs = wait_for("the failure in the log", Duration::from_secs(5), || {
        let logs = server.logs.text();
        logs.contains("wasi:http is not linked for this plugin").then_some(logs)
    });
    assert!(logs.contains("it called `wasi:http/"), "the import is named");
    assert_eq!(web.hits(), 0, "nothing left without the operator's grant");
    let answer = server.review_at("/authenticate/granted", V1, Some(TOKEN), &[]);
    assert_eq!(granted_username(&answer).as_deref(), Some("fetched"), "{}", answer.body);
    assert_eq!(web.hits(), 1);
    drop(server);

    // The operator's [default] names the literal: the default tenant reaches it.
    let tenants = tenants_file(&format!("[default]\noutbound_hosts = [\"{literal}\"]\n"));
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    assert_eq!(granted_username(&server.review(TOKEN)).as_deref(), Some("fetched"));
    assert_eq!(web.hits(), 2);
}

/// Item 4: guardrails apply when the operator changes them, not when the folder next builds.
#[test]
fn a_tightened_tenants_file_governs_the_next_review_even_while_the_folder_cannot_build() {
    let web = LocalHttp::start();
    let literal = format!("http://127.0.0.1:{}", web.addr.port());
    let dir = PluginDir::new();
    dir.add_in("acme", "10-a", built::PROBE, &allow("alice", "ops"));
    dir.add_in(
        "egress",
        "10-http",
        built::PROBE,
        &probe_manifest(
            &format!("allowed_outbound_hosts = [\"{literal}\"]"),
            "http",
            &format!("url = \"{}\"\nusername = \"fetched\"", web.url("/ok")),
        ),
    );
    let loose = format!(
        "[tenant.acme]\nusername_prefix = \"\"\nallowed_groups = [\"*\"]\n\
         [tenant.egress]\nusername_prefix = \"\"\noutbound_hosts = [\"{literal}\"]\n"
    );
    let tenants_dir = tempfile::tempdir().unwrap();
    let tenants = tenants_dir.path().join("tenants.toml");
    std::fs::write(&tenants, &loose).unwrap();
    let server = Server::start(dir.path(), &["--tenants", tenants.to_str().unwrap(), "--cache-ttl", "60s"]);
    let review = |tenant: &str| server.review_at(&format!("/authenticate/{tenant}"), V1, Some(TOKEN), &[]);
    assert_eq!(review("acme").review_status(V1)["user"]["groups"], json!(["ops"]));
    assert_eq!(granted_username(&review("egress")).as_deref(), Some("fetched"));

    // Both folders now fail to build (a manifest without its plugin): the last good
    // generations stay live, under the loose rules.
    for tenant in ["acme", "egress"] {
        std::fs::write(dir.path().join(tenant).join("99-typo.toml"), "role = \"mapper\"\n").unwrap();
    }
    for tenant in ["acme", "egress"] {
        wait_for("the refusal", Duration::from_secs(15), || {
            tenant_status(&server, tenant)["refused_now"].as_bool()?.then_some(())
        });
    }
    assert_eq!(review("acme").review_status(V1)["authenticated"], true, "the previous generation stays live");

    // The operator tightens the rules: groups must match acme:*, and egress loses its grant.
    replace(
        &tenants,
        "[tenant.acme]\nusername_prefix = \"\"\nallowed_groups = [\"acme:*\"]\n[tenant.egress]\nusername_prefix = \"\"\n",
    );
    let denied = wait_for_answer(&server, "/authenticate/acme", TOKEN, "the tightened rules", |a| {
        a.status == 200 && a.json()["status"]["authenticated"] == false
    });
    assert!(denied.json()["status"]["error"].is_null(), "a clean denial by the guardrail: {}", denied.body);
    let lines =
        server.wait_audit("the guardrail's audit line", |l| l.iter().any(|l| l["error_class"] == "group-not-allowed"));
    assert!(lines.iter().any(|l| l["tenant"] == "acme" && l["error_class"] == "group-not-allowed"));
    for _ in 0..5 {
        // Never the cached allow from before.
        assert_eq!(review("acme").review_status(V1)["authenticated"], false);
    }
    let hits = web.hits();
    wait_for_answer(&server, "/authenticate/egress", TOKEN, "egress withdrawn: 503", |a| a.status == 503)
        .assert_status_object(503, "ServiceUnavailable");
    assert_eq!(web.hits(), hits, "the withdrawn grant is never used again");
    assert_eq!(tenant_status(&server, "egress")["served"], false, "not served under withdrawn rules");
}

/// Item 5: default names cannot collide with well-known groups.
#[test]
fn a_folder_named_kubeadm_cannot_grant_kubeadm_cluster_admins() {
    let dir = PluginDir::new();
    dir.add_in("kubeadm", "10-a", built::PROBE, &allow("kubeadm:alice", "kubeadm:cluster-admins"));
    dir.add_in("oidc", "10-a", built::PROBE, &allow("tollgate:oidc:alice", "oidc:admins"));
    dir.add_in("eks", "10-a", built::PROBE, &allow("tollgate:eks:alice", "tollgate:eks:dev"));
    let server = Server::start(dir.path(), &[]);
    for (tenant, rule) in [("kubeadm", "username-prefix"), ("oidc", "group-not-allowed")] {
        let status = server.review_at(&format!("/authenticate/{tenant}"), V1, Some(TOKEN), &[]).review_status(V1);
        assert_eq!(status["authenticated"], false, "{tenant}: {status}");
        let lines = server.wait_audit("audit", |l| l.iter().any(|l| l["tenant"] == tenant));
        assert_eq!(lines.iter().find(|l| l["tenant"] == tenant).unwrap()["error_class"], rule, "{tenant}");
    }
    let eks = server.review_at("/authenticate/eks", V1, Some(TOKEN), &[]).review_status(V1);
    assert_eq!(eks["user"]["groups"], json!(["tollgate:eks:dev"]), "the default prefix is tollgate:<tenant>:");
    drop(server);

    // Only the operator can say so.
    let tenants = tenants_file("[tenant.kubeadm]\nusername_prefix = \"kubeadm:\"\nallowed_groups = [\"kubeadm:*\"]\n");
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]);
    let status = server.review_at("/authenticate/kubeadm", V1, Some(TOKEN), &[]).review_status(V1);
    assert_eq!(status["user"]["groups"], json!(["kubeadm:cluster-admins"]), "the operator's choice");
}

/// Item 6: the decision cache keys on everything a plugin sees.
#[test]
fn the_decision_cache_keys_on_the_caller_and_on_a_generation_unique_for_the_process() {
    let pki = Pki::new("cache");
    let leaf = pki.server("server");
    let a = pki.client("a", "apiserver-a", None);
    let b = pki.client("b", "apiserver-b", None);
    let dir = PluginDir::new();
    dir.probe("10-echo", &probe_manifest("", "echo", "username = \"alice\""));
    let ca = pki.ca_path.to_str().unwrap();
    let args = tls_args(&leaf, &["--client-ca", ca, "--cache-ttl", "60s"]);
    let mut server = Server::start(dir.path(), &args);
    for (leaf, cn) in [(&a, "apiserver-a"), (&b, "apiserver-b"), (&a, "apiserver-a")] {
        server.set_client(tls_client(&pki.ca_pem, Some(leaf), &["h2"]));
        let status = server.review(TOKEN).review_status(V1);
        let seen = status["user"]["extra"]["seen/client"][0].as_str().unwrap_or_default().to_owned();
        assert!(seen.contains(cn), "{cn} must get its own decision, not another caller's: {status}");
    }
    drop(server);

    // A tenant folder deleted and created again starts at generation 1 again: nothing its
    // predecessor decided is served.
    let dir = PluginDir::new();
    dir.add_in("acme", "10-a", built::PROBE, &allow("first", ""));
    let tenants = tenants_file("[tenant.acme]\nusername_prefix = \"\"\n");
    let server = Server::start(dir.path(), &["--tenants", tenants.path().to_str().unwrap(), "--cache-ttl", "60s"]);
    let first = server.review_at("/authenticate/acme", V1, Some(TOKEN), &[]);
    assert_eq!(granted_username(&first).as_deref(), Some("first"));
    std::fs::remove_dir_all(dir.path().join("acme")).unwrap();
    wait_for_answer(&server, "/authenticate/acme", TOKEN, "the folder gone", |a| a.status == 404);
    let staging = tempfile::tempdir().unwrap();
    std::fs::copy(built::PROBE, staging.path().join("10-a.wasm")).unwrap();
    std::fs::write(staging.path().join("10-a.toml"), allow("second", "")).unwrap();
    // Moved in whole, so the first scan sees the complete folder.
    std::fs::rename(staging.path(), dir.path().join("acme")).unwrap();
    let answer = wait_for_answer(&server, "/authenticate/acme", TOKEN, "the folder back", |a| a.status != 404);
    assert_eq!(tenant_status(&server, "acme")["live"]["generation"], 1);
    assert_eq!(granted_username(&answer).as_deref(), Some("second"), "{}", answer.body);
}

/// Item 7: the server's own keys stay protected after kubelet rotates them.
#[test]
fn the_servers_keys_stay_protected_after_kubelet_rotates_them() {
    let pki = Pki::new("rotate");
    let leaves = [pki.server("one"), pki.server("two")];
    let pem = |leaf: &Leaf| {
        [
            ("tls.crt".to_string(), leaf.cert_pem.clone().into_bytes()),
            ("tls.key".to_string(), leaf.key_pem.clone().into_bytes()),
        ]
    };
    let mounts = tempfile::tempdir().unwrap();
    let mut secret = KubeVolume::new(mounts.path().join("tls"));
    secret.publish(&pem(&leaves[0]));
    let key = secret.dir.join("tls.key");
    let dir = PluginDir::new();
    let manifest = |n: u32| {
        format!(
            "# attempt {n}\nsecret_files = {{ stolen = \"{}\" }}\n{}",
            key.display(),
            probe_manifest("", "leak-secret", "secret_key = \"stolen\"")
        )
    };
    dir.add_in("thief", "10-steal", built::PROBE, &manifest(1));
    let tenants = tenants_file(&format!(
        "[tenant.thief]\nusername_prefix = \"\"\nsecret_dirs = [\"{}\"]\n",
        secret.dir.display()
    ));
    let mut server = Server::start(
        dir.path(),
        &[
            "--tls-cert",
            secret.dir.join("tls.crt").to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tenants",
            tenants.path().to_str().unwrap(),
        ],
    );
    server.set_client(tls_client(&pki.ca_pem, None, &["h2"]));
    assert_refused(&server, "thief", "the server's own key material");

    // cert-manager renews: kubelet writes a new `..2026_...` directory and swaps `..data`.
    secret.publish(&pem(&leaves[1]));
    let before = tenant_status(&server, "thief")["last_refusal"]["at"].clone();
    replace(&dir.path().join("thief/10-steal.toml"), &manifest(2));
    wait_for("a new attempt", Duration::from_secs(15), || {
        let now = tenant_status(&server, "thief");
        (now["last_refusal"]["at"] != before || now["refused_now"] == false).then_some(())
    });
    assert_refused(&server, "thief", "the server's own key material");
    let leaked = |text: &str| leaves.iter().any(|l| text.contains(l.key_pem.lines().nth(1).unwrap()));
    assert!(!leaked(&server.logs.text()) && !leaked(&server.audit.text()));
}

/// Item 8: the probe port tells nothing secret; the operator's files stay out of the folder.
#[test]
fn the_probe_port_tells_nothing_secret_and_operator_files_stay_outside_the_folder() {
    let dir = PluginDir::new();
    dir.probe(
        "10-a",
        &probe_manifest("[match]\ntoken_prefix = [\"acme-internal-prefix-\"]", "allow", "username = \"a\""),
    );
    dir.add_in("broken", "10-a", built::PROBE, "role = \"authenticator\"\nTENANT-DATA-4242 = 1\n");
    let probe_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let probe = format!("127.0.0.1:{probe_port}");
    let server = Server::start(dir.path(), &["--probe-listen", &probe]);
    let client = reqwest::blocking::Client::new();
    let short = client.get(format!("http://{probe}/status")).send().unwrap().text().unwrap();
    assert!(!short.contains("acme-internal-prefix-"), "no [match] prefixes on the probe port: {short}");
    assert!(!short.contains("TENANT-DATA-4242"), "no refusal text on the probe port: {short}");
    let short: Value = serde_json::from_str(&short).unwrap();
    let broken = short["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "broken").unwrap().clone();
    assert_eq!(broken["served"], false);
    assert!(broken["last_refusal_at"].is_string(), "when, not why: {broken}");
    assert_eq!(short["tenants"][0]["generation"], 1);
    let full = server.get("/status").body;
    assert!(
        full.contains("acme-internal-prefix-") && full.contains("TENANT-DATA-4242"),
        "the main listener has the full view"
    );
    drop(server);

    let inside = dir.path().join("tenants.toml");
    std::fs::write(&inside, "").unwrap();
    let cache = dir.path().join("cache");
    for args in [vec!["--tenants", inside.to_str().unwrap()], vec!["--cache-dir", cache.to_str().unwrap()]] {
        let (_, logs) =
            Server::try_start(dir.path(), &args).err().unwrap_or_else(|| panic!("{args:?} must be refused"));
        assert!(logs.contains("is inside the plugin directory"), "{args:?}: {logs}");
    }
}
