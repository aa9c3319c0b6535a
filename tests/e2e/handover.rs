//! Upgrades without a failed login (README "Upgrades"): a second tollgate takes over the port
//! of the first (`--reuse-port`), the first is stopped, and a client posting reviews back to
//! back over fresh connections sees no refused connection and no wrong answer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_tests::*;

/// Client threads posting at once: several connections are being opened at any moment.
const CLIENTS: usize = 4;

fn allow(username: &str) -> String {
    probe_manifest("", "allow", &format!("username = \"{username}\""))
}

/// Reviews answered by `server`, as its audit log tells.
fn answered(server: &Server) -> usize {
    server.audit_lines().len()
}

/// Posts reviews back to back from [`CLIENTS`] threads, each over a new connection, until
/// stopped; counts good answers and keeps every failure.
struct Load {
    stop: Arc<AtomicBool>,
    good: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, client: impl Fn() -> reqwest::blocking::Client) -> Load {
        let (stop, good, failures) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
        let threads = (0..CLIENTS)
            .map(|_| {
                let (url, client) = (url.clone(), client());
                let (stop, good, failures): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) =
                    (stop.clone(), Arc::clone(&good), Arc::clone(&failures));
                std::thread::spawn(move || {
                    let body =
                        serde_json::json!({"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "tok-12345678"}})
                            .to_string();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = client
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .header("Connection", "close")
                            .body(body.clone())
                            .send()
                            .map(Answer::from);
                        match sent {
                            Ok(a) if a.status == 200 && a.review_status(V1)["user"]["username"] == "alice" => {
                                good.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(a) => failures.lock().unwrap().push(format!("HTTP {}: {}", a.status, a.body)),
                            Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                        }
                    }
                })
            })
            .collect();
        Load { stop, good, failures, threads }
    }

    fn good(&self) -> usize {
        self.good.load(Ordering::Relaxed)
    }

    /// Waits until `more` further good answers arrived.
    fn wait_more(&self, more: usize) {
        let target = self.good() + more;
        wait_for("more answers", Duration::from_secs(60), || (self.good() >= target).then_some(()));
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (self.good.load(Ordering::Relaxed), std::mem::take(&mut *self.failures.lock().unwrap()))
    }
}

fn hand_over(args: &[&str], client: impl Fn() -> reqwest::blocking::Client) {
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let mut with_reuse = args.to_vec();
    with_reuse.push("--reuse-port");
    let old = Server::start(dir.path(), &with_reuse);
    let listen = old.addr.to_string();
    let load = Load::start(old.url("/authenticate"), &client);
    load.wait_more(100);

    // The new process binds the same port while the old one serves; from then on every new
    // connection goes to it.
    let new = Server::start_at(dir.path(), &listen, &with_reuse);
    wait_for("the new process to answer", Duration::from_secs(30), || (answered(&new) >= 50).then_some(()));
    let old_after_takeover = answered(&old);
    load.wait_more(100);
    let old_later = answered(&old);
    assert!(
        old_later <= old_after_takeover + CLIENTS,
        "new connections still reach the old process: {old_after_takeover} then {old_later} answers"
    );

    // The old one stops (as kubelet stops it once the new pod is ready) and drains.
    let old_status = old.stop();
    assert!(old_status.success(), "the old process exits cleanly: {old_status:?}");
    load.wait_more(200);
    let (good, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} reviews failed during the hand-over: {:?}",
        failures.len(),
        good + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let by_new = answered(&new);
    assert!(by_new >= 300, "the new process answered {by_new}");
    assert!(old_later >= 100, "the old process answered {old_later}");
    eprintln!("hand-over: {good} reviews, 0 failed ({old_later} by the old process, {by_new} by the new)");
}

#[test]
fn a_second_process_takes_over_the_port_without_a_refused_review() {
    hand_over(&[], || {
        reqwest::blocking::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().unwrap()
    });
}

#[test]
fn the_same_hand_over_over_tls() {
    let pki = Pki::new("handover");
    let cert = pki.server("server");
    hand_over(&tls_args(&cert, &[]), || {
        tls_client_builder(&pki.ca_pem, None, &["h2", "http/1.1"]).pool_max_idle_per_host(0).build().unwrap()
    });
}

#[test]
fn without_reuse_port_a_second_process_cannot_bind_the_port() {
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let first = Server::start(dir.path(), &[]);
    let taken = first.addr.to_string();
    // Even if the first had asked for it: the one without --reuse-port is refused.
    let (code, _, err) =
        run_cli(&["serve", "--plugins", dir.path().to_str().unwrap(), "--listen", &taken, "--reuse-port"], "");
    assert_ne!(code, 0);
    assert!(err.contains(&format!("binding {taken}")) && err.contains("in use"), "{err}");
    assert_eq!(first.review("tok-12345678").review_status(V1)["user"]["username"], "alice");
}
