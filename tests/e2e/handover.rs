//! Upgrades without a failed login, and a port only tollgate can take (README "Upgrades",
//! SECURITY.md §15): a second tollgate started with the same `--handover` directory takes the
//! listening sockets of the first — the probe listener at once, the main one once it has loaded —
//! and the first drains; a client posting reviews back to back over fresh connections sees no
//! refused connection and no wrong answer. No other process can bind the ports meanwhile.
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

/// A hand-over directory as the operator makes it: tollgate's user's, mode 0700.
fn handover_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// A loopback address nothing listens on yet.
fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Log lines of `server` that contain every one of `parts`.
fn log_lines(server: &Server, parts: &[&str]) -> Vec<String> {
    server.logs.text().lines().filter(|l| parts.iter().all(|p| l.contains(p))).map(str::to_owned).collect()
}

fn hand_over(args: &[&str], client: impl Fn() -> reqwest::blocking::Client) {
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let handover = handover_dir();
    let probe = free_addr();
    let mut with = args.to_vec();
    with.extend(["--handover", handover.path().to_str().unwrap(), "--probe-listen", &probe]);
    let old = Server::start(dir.path(), &with);
    let listen = old.addr.to_string();
    let load = Load::start(old.url("/authenticate"), &client);
    load.wait_more(100);

    // The new process takes the probe listener as it starts and the main one once loaded;
    // from then on the old one accepts nothing.
    let new = Server::start_at(dir.path(), &listen, &with);
    wait_for("the old process to hand the main listener over", Duration::from_secs(30), || {
        (!log_lines(&old, &["handed the listener over", "listener=\"main\""]).is_empty()
            || !log_lines(&old, &["handed the listener over", "listener=main"]).is_empty())
        .then_some(())
    });
    wait_for("the new process to answer", Duration::from_secs(30), || (answered(&new) >= 50).then_some(()));
    let old_after_takeover = answered(&old);
    load.wait_more(100);
    let old_later = answered(&old);
    assert!(
        old_later <= old_after_takeover + CLIENTS,
        "new connections still reach the old process: {old_after_takeover} then {old_later} answers"
    );
    // Both say who took what from whom; the new one counts it (the old one's listeners are gone).
    let new_pid = new.pid().to_string();
    for listener in ["main", "probe"] {
        let gave = log_lines(&old, &["handed the listener over", listener, &new_pid]);
        assert_eq!(gave.len(), 1, "the old process logs handing the {listener} listener to pid {new_pid}: {gave:?}");
        let took = log_lines(&new, &["took the listener over", listener, &old.pid().to_string()]);
        assert_eq!(took.len(), 1, "the new process logs taking the {listener} listener: {took:?}");
        assert!(took[0].contains("from_config") && gave[0].contains("to_config"), "{took:?} {gave:?}");
    }
    let metrics = client().get(format!("http://{probe}/metrics")).send().unwrap().text().unwrap();
    for listener in ["main", "probe"] {
        let line = format!("tollgate_handovers_total{{listener=\"{listener}\",side=\"took\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

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

/// Binds `addr` as another program of the same user would to share it: `SO_REUSEADDR` and
/// `SO_REUSEPORT`, then listens (the bind that joined tollgate's port group before).
fn bind_shared(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd as _;
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    // SAFETY: plain socket calls on a descriptor this function owns (closed on every error path
    // by the TcpListener it becomes, or explicitly).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = std::net::TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let p = std::ptr::from_ref(&one).cast();
            if libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, std::mem::size_of::<libc::c_int>() as u32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let sa = std::ptr::from_ref(&sin).cast();
        if libc::bind(fd, sa, std::mem::size_of::<libc::sockaddr_in>() as u32) != 0 || libc::listen(fd, 16) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

/// The crossing seen before: a process of tollgate's own user joined the port with
/// `SO_REUSEPORT` and, through tollgate's steering, took every new connection. Now the ports are
/// bound without it: no process — of this user or any — can bind them while tollgate listens,
/// and the only way to the sockets is the hand-over directory.
#[test]
fn no_other_process_can_take_the_ports() {
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let handover = handover_dir();
    let probe = free_addr();
    let server =
        Server::start(dir.path(), &["--handover", handover.path().to_str().unwrap(), "--probe-listen", &probe]);
    let listen = server.addr.to_string();
    for addr in [&listen, &probe] {
        match bind_shared(addr) {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{addr}: {e}"),
            Ok(stolen) => {
                stolen.set_nonblocking(true).unwrap();
                let taken = (0..50).filter(|_| {
                    let _ = server.review("tok-12345678");
                    stolen.accept().is_ok()
                });
                panic!(
                    "a process of tollgate's user bound {addr} beside it and took {} of 50 connections",
                    taken.count()
                );
            }
        }
    }
    assert_eq!(server.review("tok-12345678").review_status(V1)["user"]["username"], "alice");
    // The hand-over socket is in the operator's directory, closed to other users.
    let socket = handover.path().join("tollgate.sock");
    let other_user = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "ls"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!other_user.status.success(), "another user reached the hand-over socket");
    assert!(String::from_utf8_lossy(&other_user.stderr).contains("Permission denied"), "{other_user:?}");
}

#[test]
fn a_hand_over_directory_others_can_enter_is_refused_and_reuse_port_is_gone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let open = handover_dir();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugins = dir.path().to_str().unwrap();
    let (code, _, err) = run_cli(&["serve", "--plugins", plugins, "--handover", open.path().to_str().unwrap()], "");
    assert_ne!(code, 0);
    assert!(err.contains("lets others in") && err.contains("0700"), "{err}");
    let (code, _, err) = run_cli(&["serve", "--plugins", plugins, "--reuse-port"], "");
    assert_ne!(code, 0);
    assert!(err.contains("--reuse-port was removed") && err.contains("--handover"), "{err}");
}

/// A second tollgate started by mistake: without the directory it cannot bind the port; with
/// it, it takes over — and both say so, naming each other's configuration.
#[test]
fn a_second_tollgate_is_refused_the_port_or_logged_taking_it() {
    let dir = PluginDir::new();
    dir.probe("10-a", &allow("alice"));
    let other = PluginDir::new();
    other.probe("10-b", &allow("bob"));
    let handover = handover_dir();
    let hdir = handover.path().to_str().unwrap();
    let first = Server::start(dir.path(), &["--handover", hdir]);
    let taken = first.addr.to_string();
    let (code, _, err) = run_cli(&["serve", "--plugins", other.path().to_str().unwrap(), "--listen", &taken], "");
    assert_ne!(code, 0);
    assert!(err.contains(&format!("binding {taken}")) && err.contains("in use") && err.contains("--handover"), "{err}");
    assert_eq!(first.review("tok-12345678").review_status(V1)["user"]["username"], "alice");

    let second = Server::start_at(other.path(), &taken, &["--handover", hdir]);
    assert_eq!(second.review("tok-12345678").review_status(V1)["user"]["username"], "bob");
    let pid = second.pid().to_string();
    wait_for("the first to log the hand-over", Duration::from_secs(10), || {
        (!log_lines(&first, &["another configuration", &pid]).is_empty()).then_some(())
    });
    assert_eq!(log_lines(&first, &["handed the listener over", &pid]).len(), 1);
    assert_eq!(log_lines(&second, &["another configuration", &first.pid().to_string()]).len(), 1);
    assert!(second.get("/metrics").body.contains("tollgate_handovers_total{listener=\"main\",side=\"took\"} 1"));
}
