//! Slow and silent clients cannot starve a normal one: header and body read timeouts, an idle
//! timeout, a connection cap and bounded HTTP/2 streams hold on HTTP/1.1 and HTTP/2 alike.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tollgate_tests::*;

const TOKEN: &str = "tok-12345678";

/// The test holds thousands of sockets: its own open-file limit goes up to the hard limit.
fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on this process, with a valid rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= needed,
        "the open-file hard limit {} is below the {needed} this test needs",
        limit.rlim_cur
    );
}

#[test]
fn two_thousand_slow_connections_do_not_starve_a_normal_client() {
    raise_fd_limit(4_500);
    let dir = PluginDir::new();
    dir.probe("10-a", &probe_manifest("", "allow", "username = \"alice\""));
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr;

    // 1,000 send their headers a byte a second (slowloris); 1,000 send whole headers and then
    // their body a byte a second.
    let mut slow: Vec<(TcpStream, &[u8])> = Vec::new();
    for i in 0..2000 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nonblocking(true).unwrap();
        let rest: &[u8] = if i % 2 == 0 {
            s.write_all(b"POST /authenticate HTTP/1.1\r\nHost: tollgate\r\n").unwrap();
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        } else {
            s.write_all(b"POST /authenticate HTTP/1.1\r\nHost: tollgate\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n")
                .unwrap();
            b"{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{\"token\":\"tok-12345678\"}}"
        };
        slow.push((s, rest));
    }
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    let mut tick = 0;
    while started.elapsed() < Duration::from_secs(13) {
        // A byte a second from each slow client (a closed one just fails to take it).
        if started.elapsed() >= Duration::from_secs(tick) {
            for (s, rest) in &mut slow {
                if let Some((first, tail)) = rest.split_first() {
                    let _ = s.write(&[*first]);
                    *rest = tail;
                }
            }
            tick += 1;
        }
        // A normal client, on a fresh connection each time, is answered at once.
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let began = Instant::now();
        let body = format!("{{\"apiVersion\":\"{V1}\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":\"{TOKEN}\"}}}}");
        let answer = client
            .post(server.url("/authenticate"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .expect("a normal client is answered");
        let took = began.elapsed();
        assert_eq!(answer.status(), 200);
        assert!(took < Duration::from_secs(1), "a normal review took {took:?} among 2,000 slow connections");
        slowest = slowest.max(took);
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{answered} normal reviews among 2,000 slow connections, the slowest in {slowest:?}");
    assert!(answered >= 20);

    // By now (13 s) every slow client was cut: headers after 10 s (closed), bodies after 10 s
    // (408 as Kubernetes answers it, then closed). What the server sent is already there.
    let (mut closed, mut timed_out) = (0, 0);
    for (mut s, _) in slow {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {}
        }
        if String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408") {
            timed_out += 1;
        }
    }
    assert_eq!(closed, 2000, "every slow connection was closed by the server");
    assert_eq!(timed_out, 1000, "every trickled body was answered 408");
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn a_connection_that_says_nothing_is_closed_and_the_cap_holds_the_rest_back() {
    let dir = PluginDir::new();
    dir.probe("10-a", &probe_manifest("", "allow", "username = \"alice\""));
    let server = Server::start(dir.path(), &["--max-connections", "4"]);
    // Four silent connections take every slot (one stalls in the HTTP/2 preface, where no
    // header timeout applies).
    let mut silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    silent[0].write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A fifth is held in the backlog: not answered while the four are open...
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_millis(1500)).build().unwrap();
    let body = format!("{{\"apiVersion\":\"{V1}\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":\"{TOKEN}\"}}}}");
    let post = || {
        client.post(server.url("/authenticate")).header("Content-Type", "application/json").body(body.clone()).send()
    };
    assert!(post().is_err(), "the cap holds a fifth connection back");
    // ...and answered as soon as one closes.
    drop(silent.pop());
    let answer = post().expect("answered once a slot is free");
    assert_eq!(answer.status(), 200);
    // The silent ones are cut when no request came within the header timeout (10 s).
    let began = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        let read = s.read_to_end(&mut got);
        assert!(
            read.is_ok() || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "closed by the server"
        );
    }
    let took = began.elapsed();
    assert!(took < Duration::from_secs(15), "silent connections closed after {took:?}");
}
