//! Overload and deadlines (SPEC §5): bounded queues, fair tenants, 503 without Retry-After,
//! and a graceful drain on SIGTERM.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tollgate_tests::*;

#[test]
fn a_tenant_looping_forever_under_load_does_not_starve_another() {
    let dir = PluginDir::new();
    dir.add_in("loopy", "10-loop", built::PROBE, &probe_manifest("", "loop", ""));
    dir.add_in("calm", "10-ok", built::PROBE, &probe_manifest("", "allow", "username = \"tollgate:calm:alice\""));
    let server = Server::start(dir.path(), &[]);
    let stop = AtomicBool::new(false);
    let (failed, overloaded) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut calm = 0;
    std::thread::scope(|s| {
        for _ in 0..12 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let answer = server.review_at("/authenticate/loopy", V1, Some("tok-12345678"), &[]);
                    match answer.status {
                        200 => {
                            let status = answer.review_status(V1);
                            assert_eq!(status["authenticated"], false);
                            assert!(status["error"].as_str().unwrap().starts_with("plugin 10-loop failed"));
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        503 => {
                            answer.assert_status_object(503, "ServiceUnavailable");
                            overloaded.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected {other}: {}", answer.body),
                    }
                }
            });
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            let answer = server.review_at("/authenticate/calm", V1, Some("tok-12345678"), &[]);
            assert_eq!(
                granted_username(&answer).as_deref(),
                Some("tollgate:calm:alice"),
                "calm tenant starved: {}",
                answer.body
            );
            calm += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!("calm answered {calm}; loopy failed {} and was refused {}", failed.into_inner(), overloaded.into_inner());
    assert!(calm > 10);
}

#[test]
fn a_saturated_server_answers_503_rather_than_queueing_without_bound() {
    let dir = PluginDir::new();
    dir.probe("10-slow", &probe_manifest("[limits]\ntimeout_ms = 1000", "spin", "ms = \"300\"\nusername = \"slow\""));
    let args = [
        "--max-concurrent-reviews",
        "2",
        "--max-concurrent-reviews-per-tenant",
        "2",
        "--max-queued-reviews-per-tenant",
        "2",
    ];
    let server = Server::start(dir.path(), &args);
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12).map(|_| s.spawn(|| server.review("tok-12345678"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(ok + refused.len(), answers.len());
    assert!(ok >= 2, "the slots did work ({ok} answered)");
    assert!(refused.len() >= 6, "at most 2 running + 2 queued: {} refused", refused.len());
    for answer in refused {
        answer.assert_status_object(503, "ServiceUnavailable");
        assert!(answer.body.contains("overloaded"), "{}", answer.body);
    }
    let lines = server.wait_audit("audit", |l| l.len() >= 12);
    assert!(lines.iter().any(|l| l["result"] == "overloaded"));
    assert!(server.get("/metrics").body.contains("tollgate_reviews_total{tenant=\"\",result=\"overloaded\"}"));
}

#[test]
fn sigterm_drains_reviews_in_flight() {
    let dir = PluginDir::new();
    dir.probe("10-slow", &probe_manifest("[limits]\ntimeout_ms = 1000", "spin", "ms = \"600\"\nusername = \"slow\""));
    let server = Server::start(dir.path(), &[]);
    std::thread::scope(|s| {
        let review = s.spawn(|| server.review("tok-12345678"));
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status();
        let answer = review.join().unwrap();
        assert_eq!(
            granted_username(&answer).as_deref(),
            Some("slow"),
            "the review in flight finished: {}",
            answer.body
        );
    });
    let logs = server.logs.clone();
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert!(logs.text().contains("draining"), "{}", logs.text());
}
