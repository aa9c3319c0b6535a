//! A test plugin: `[config] action` picks what it does, so one component serves every sandbox
//! and chain test (and is compiled once per server, whatever the number of copies).
//!
//! Grant fields come from config: `username`, `uid`, `groups` (comma-separated), `extra`
//! (`k=v,k=v`), `audiences` (comma-separated), `expires_at`, `stamp` (added as extra
//! `tollgate.test/stamp`). As a mapper, `allow` and `map` start from the current grant.

use std::hint::black_box;

use tollgate_sdk::{Decision, Grant, Level, Policy, Review, config, log};

pub struct Probe;

/// Calls served by this instance (state that only a warm instance keeps).
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn cfg(key: &str) -> String {
    config(key).unwrap_or_default()
}

fn list(key: &str) -> Vec<String> {
    cfg(key).split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The grant config describes; a mapper starts from the current grant instead.
fn configured_grant(review: &Review) -> Grant {
    let mut grant = match &review.current {
        Some(prior) if cfg("action") == "map" => prior.grant.clone(),
        _ => Grant::user(cfg("username")).uid(cfg("uid")),
    };
    grant.user.groups.extend(list("groups"));
    for pair in list("extra") {
        if let Some((k, v)) = pair.split_once('=') {
            grant = grant.extra(k, [v]);
        }
    }
    let stamp = cfg("stamp");
    if !stamp.is_empty() {
        grant = grant.extra("tollgate.test/stamp", [stamp]);
    }
    grant.audiences = list("audiences");
    grant.expires_at = config("expires_at").and_then(|s| s.parse().ok());
    grant
}

impl Policy for Probe {
    fn authenticate(review: Review) -> Decision {
        let token = review.token.clone();
        match cfg("action").as_str() {
            "allow" | "map" => Decision::Allow(configured_grant(&review)),
            // Counts the calls this instance served: 1 in a fresh instance, growing in a warm one;
            // traps on call `trap_at` (if set), to show a trapped instance is never reused.
            "count" => {
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if cfg("trap_at").parse() == Ok(n) {
                    panic!("probe trapped on call {n} on purpose");
                }
                Decision::Allow(Grant::user(format!("call-{n}")))
            }
            "deny" => Decision::deny(cfg("reason")),
            "abstain" => Decision::Abstain,
            "unavailable" => Decision::unavailable(cfg("reason")),
            // Echo what the plugin was shown, so tests can see the review as a plugin sees it.
            "echo" => {
                let mut g = Grant::user(cfg("username"));
                g = g.extra("seen/token-empty", [review.token.is_empty().to_string()]);
                g = g.extra("seen/audiences", review.audiences.clone());
                g = g.extra("seen/tenant", [review.tenant.clone()]);
                g = g.extra("seen/request-id", [review.request_id.clone()]);
                g = g.extra("seen/token-length", [review.token.len().to_string()]);
                if let Some(client) = &review.client {
                    g = g.extra("seen/client", [client.clone()]);
                }
                if let Some(prior) = &review.current {
                    g = g.extra("seen/current-user", [prior.grant.user.username.clone()]);
                    g = g.extra("seen/current-plugin", [prior.plugin.clone()]);
                }
                let sum: u64 = review.token.bytes().map(u64::from).sum();
                g = g.extra("seen/token-byte-sum", [sum.to_string()]);
                Decision::Allow(g)
            }
            // --- what the host offers since 0.1.1 ---
            // GET `url` (from config): allow with the status and body size, or deny with why.
            "http" => match tollgate_sdk::http::get(&cfg("url"), &[]) {
                Ok(r) => Decision::Allow(
                    Grant::user(cfg("username"))
                        .extra("http/status", [r.status.to_string()])
                        .extra("http/body-bytes", [r.body.len().to_string()])
                        .extra("http/location", [r.header("location").unwrap_or("").to_owned()]),
                ),
                Err(e) => Decision::deny(format!("http failed: {e}")),
            },
            // Waits in a host call on something never ready: a request body written before the
            // request is handed over (nothing drains it), by `how` = "write"
            // (blocking-write-and-flush), "block" (pollable.block) or "poll" (poll).
            "body-block" => {
                use wasip2::http::types::{Fields, OutgoingRequest};
                let request = OutgoingRequest::new(Fields::new());
                let body = request.body().expect("a request body");
                let stream = body.write().expect("its stream");
                let chunk = [0u8; 4096];
                let how = cfg("how");
                for _ in 0..1_000_000 {
                    let room = match how.as_str() {
                        "write" => {
                            let _ = stream.blocking_write_and_flush(&chunk);
                            continue;
                        }
                        _ => stream.check_write().unwrap_or(0),
                    };
                    if room > 0 {
                        let _ = stream.write(&chunk[..(room as usize).min(chunk.len())]);
                    } else if how == "poll" {
                        wasip2::io::poll::poll(&[&stream.subscribe()]);
                    } else {
                        stream.subscribe().block();
                    }
                }
                Decision::Allow(configured_grant(&review))
            }
            // --- tollgate:policy/crypto (0.1.2) ---
            // Verifies the token against `jwks` with `algs`: allows `jws:<alg>:<kid>`, or denies
            // with the host's reason.
            "jws" => {
                let algs = list("algs");
                let algs: Vec<&str> = algs.iter().map(String::as_str).collect();
                match tollgate_sdk::crypto::verify_jws(&token, &cfg("jwks"), &algs) {
                    Ok(v) => Decision::Allow(
                        Grant::user(format!("jws:{}:{}", v.alg, v.key_id.unwrap_or_default()))
                            .extra("payload-bytes", [v.payload.len().to_string()]),
                    ),
                    Err(e) => Decision::deny(format!("{e} [{e:?}]")),
                }
            }
            // The token's SHA-256 and HMAC-SHA-256 (under `key`), and whether the digest equals
            // `expect` (hex), in constant time: `sha256:<hex>` with groups `hmac:<hex>`, `eq:<bool>`.
            "digest" => {
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                let digest = tollgate_sdk::crypto::sha256(token.as_bytes());
                let mac = tollgate_sdk::crypto::hmac_sha256(cfg("key").as_bytes(), token.as_bytes());
                let eq = tollgate_sdk::crypto::constant_time_eq(hex(&digest).as_bytes(), cfg("expect").as_bytes());
                Decision::Allow(
                    Grant::user(format!("sha256:{}", hex(&digest)))
                        .groups([format!("hmac:{}", hex(&mac)), format!("eq:{eq}")]),
                )
            }
            // Hashes `mib` MiB: over the host's 1 MiB limit the call traps.
            "hash-big" => {
                let data = vec![7u8; cfg("mib").parse::<usize>().unwrap_or(2) << 20];
                black_box(tollgate_sdk::crypto::sha256(&data));
                Decision::Allow(configured_grant(&review))
            }
            // --- host allocations outside the guest's memory ---
            // Asks the host for `bytes` random bytes, then allows.
            "random" => {
                let bytes = wasip2::random::random::get_random_bytes(cfg("bytes").parse().unwrap_or(0));
                black_box(&bytes);
                Decision::Allow(configured_grant(&review))
            }
            // Holds `n` host handles (clock pollables) at once, then allows.
            "handles" => {
                let n: usize = cfg("n").parse().unwrap_or(0);
                let held: Vec<_> =
                    (0..n).map(|_| wasip2::clocks::monotonic_clock::subscribe_duration(1 << 40)).collect();
                black_box(&held);
                Decision::Allow(configured_grant(&review))
            }
            // Appends `kib` 1 KiB header values to one `fields`, then allows.
            "fields" => {
                let fields = wasip2::http::types::Fields::new();
                let value = [b'v'; 1024];
                for i in 0..cfg("kib").parse().unwrap_or(0u32) {
                    if let Err(e) = fields.append(&format!("x-h{i}"), &value) {
                        return Decision::deny(format!("fields refused at {i} KiB: {e:?}"));
                    }
                }
                Decision::Allow(configured_grant(&review))
            }
            // Writes `n` empty buffers to stdout: a stream that queues every write, empty ones
            // included, grows the host by each (wasmtime-wasi 48.0.8's AsyncWriteStream,
            // GHSA-5m8g-xhq4-4h93); then allows.
            "empty-writes" => {
                let stdout = wasip2::cli::stdout::get_stdout();
                for i in 0..cfg("n").parse().unwrap_or(0u32) {
                    if let Err(e) = stdout.write(&[]) {
                        return Decision::deny(format!("empty write {i} refused: {e:?}"));
                    }
                }
                Decision::Allow(configured_grant(&review))
            }
            // Reads standard input and waits for more: the sandbox's stdin is closed, so
            // neither waits.
            "stdin" => {
                let stdin = wasip2::cli::stdin::get_stdin();
                let _ = stdin.blocking_read(1);
                stdin.subscribe().block();
                Decision::Allow(configured_grant(&review))
            }
            // Counts reviews in the plugin's cache: call-1, call-2... across fresh instances.
            "kv-count" => {
                let n = tollgate_sdk::kv::get("n")
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                match tollgate_sdk::kv::set("n", n.to_string().as_bytes(), 3600) {
                    Ok(()) => Decision::Allow(Grant::user(format!("kv-{n}"))),
                    Err(e) => Decision::deny(format!("kv failed: {e}")),
                }
            }
            // Stores `bytes` bytes (config): deny with the host's refusal if it does not fit.
            "kv-big" => {
                let size: usize = cfg("bytes").parse().unwrap_or(1 << 20);
                match tollgate_sdk::kv::set("big", &vec![7u8; size], 60) {
                    Ok(()) => Decision::Allow(Grant::user(cfg("username"))),
                    Err(e) => Decision::deny(format!("kv refused: {e}")),
                }
            }
            // Sleeps `ms` milliseconds (a blocking host call), then allows.
            "sleep" => {
                let ms: u64 = cfg("ms").parse().unwrap_or(10_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Decision::Allow(configured_grant(&review))
            }
            // The wall clock the plugin sees, as its username ("t-<unix seconds>").
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Decision::Allow(Grant::user(format!("t-{now}")))
            }
            // A secret (config key `secret_key`, from secret_files) everywhere a plugin can say it.
            "leak-secret" => {
                let secret = cfg(&cfg("secret_key"));
                log(Level::Warn, &format!("secret {secret}"));
                println!("stdout secret {secret}");
                Decision::deny(format!("secret {secret}"))
            }
            // --- the sandbox ---
            // A fresh instance is a zeroed one (SPEC §7). Grows memory by `pages` wasm pages
            // (64 KiB each) and reads them: new memory is all zeros by the spec, so any byte
            // found there was left by an earlier instance in the same pool slot (reported, with
            // what follows the first `TGLEAK:` marker). Then writes `TGLEAK:<token>` at the
            // start of every other 4 KiB page — many separate dirty runs, as a real heap has —
            // and, for tokens starting with `hold_prefix`, logs "fresh: holding" and keeps the
            // instance alive `hold_ms`, so a test can push its pages out to swap meanwhile.
            "fresh" => {
                let pages: usize = cfg("pages").parse().unwrap_or(16);
                let Some((dirty, leaked)) = fresh_memory(pages, &token) else {
                    return Decision::deny("fresh: memory.grow refused");
                };
                let mut grant = Grant::user(cfg("username"))
                    .extra("fresh/dirty-bytes", [dirty.to_string()])
                    .extra("fresh/leaked", [leaked]);
                let prefix = cfg("hold_prefix");
                if !prefix.is_empty() && token.starts_with(&prefix) {
                    log(Level::Info, "fresh: holding");
                    let ms: u128 = cfg("hold_ms").parse().unwrap_or(1000);
                    let start = std::time::Instant::now();
                    while start.elapsed().as_millis() < ms {
                        black_box(&token);
                    }
                    // When the hold ended (unix ms): the test checks that its page-out came before.
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                    grant = grant.extra("fresh/held-until-ms", [now.map_or(0, |d| d.as_millis()).to_string()]);
                }
                Decision::Allow(grant)
            }
            "loop" => loop {
                black_box(&token);
            },
            "spin" => {
                // Busy for `ms` milliseconds, then decide as `then` says (default allow).
                let ms: u128 = cfg("ms").parse().unwrap_or(10);
                let start = std::time::Instant::now();
                while start.elapsed().as_millis() < ms {
                    black_box(&token);
                }
                Decision::Allow(configured_grant(&review))
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "trap" => std::process::abort(),
            "panic" => panic!("probe panicked on purpose"),
            "stack" => Decision::deny(format!("depth {}", recurse(black_box(1)))),
            "file" => match std::fs::read_to_string(cfg("path")) {
                Ok(_) => Decision::Allow(Grant::user("read-a-file")),
                Err(e) => Decision::deny(format!("file denied: {e}")),
            },
            "env" => {
                let vars: Vec<(String, String)> = std::env::vars().collect();
                let args: Vec<String> = std::env::args().collect();
                if vars.is_empty() && args.is_empty() {
                    Decision::deny("env denied: no variables, no arguments")
                } else {
                    Decision::Allow(Grant::user(format!("saw-{}-vars-{}-args", vars.len(), args.len())))
                }
            }
            "socket" => match std::net::TcpStream::connect(cfg("addr")) {
                Ok(_) => Decision::Allow(Grant::user("opened-a-socket")),
                Err(e) => Decision::deny(format!("socket denied: {e}")),
            },
            "huge-groups" => Decision::Allow(Grant::user("many").groups((0..100_000).map(|i| format!("g{i}")))),
            "huge-string" => Decision::Allow(Grant::user("x".repeat(10 << 20))),
            "huge-reason" => Decision::deny("r".repeat(1 << 20)),
            "chatty" => {
                for i in 0..1000 {
                    log(Level::Info, &format!("line {i}"));
                    println!("stdout line {i}");
                }
                Decision::Abstain
            }
            // --- the token, everywhere a plugin can put it ---
            "leak-deny" => Decision::deny(format!("denied {token}")),
            "leak-unavailable" => Decision::unavailable(format!("down {token}")),
            "leak-log" => {
                log(Level::Warn, &format!("saw {token}"));
                Decision::Abstain
            }
            "leak-stdout" => {
                println!("stdout {token}");
                Decision::Abstain
            }
            "leak-stderr" => {
                eprintln!("stderr {token}");
                Decision::Abstain
            }
            "leak-panic" => panic!("panic {token}"),
            "leak-grant" => Decision::Allow(Grant::user(format!("user-{token}"))),
            "leak-extra" => Decision::Allow(Grant::user("alice").extra("token", [token])),
            other => panic!("probe: unknown action {other:?}"),
        }
    }
}

/// The `fresh` action's memory work: grows the memory by `pages` wasm pages, counts the non-zero
/// bytes found in them and reads what follows a `TGLEAK:` marker, then marks every other 4 KiB
/// page with `TGLEAK:<token>`. `None` when the memory cannot grow.
fn fresh_memory(pages: usize, token: &str) -> Option<(usize, String)> {
    const MARKER: &[u8] = b"TGLEAK:";
    let (start, len) = grow(pages)?;
    // SAFETY: `grow` just added these bytes to the memory, and nothing else (the allocator
    // included) knows of them.
    let mem = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
    let dirty = mem.iter().filter(|b| **b != 0).count();
    let leaked = mem
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .map(|at| {
            let rest = &mem[at + MARKER.len()..];
            let text = &rest[..rest.iter().take(64).position(|b| *b == 0).unwrap_or(rest.len().min(64))];
            String::from_utf8_lossy(text).into_owned()
        })
        .unwrap_or_default();
    let mark: Vec<u8> = [MARKER, token.as_bytes()].concat();
    for page in mem.chunks_mut(8192) {
        let n = mark.len().min(page.len());
        page[..n].copy_from_slice(&mark[..n]);
    }
    Some((dirty, leaked))
}

#[cfg(target_arch = "wasm32")]
fn grow(pages: usize) -> Option<(usize, usize)> {
    let before = core::arch::wasm32::memory_grow::<0>(pages);
    (before != usize::MAX).then_some((before << 16, pages << 16))
}

/// Natively (the guest tests), leaked memory stands in for grown wasm memory: zeroed, unshared.
#[cfg(not(target_arch = "wasm32"))]
fn grow(pages: usize) -> Option<(usize, usize)> {
    let mem: &'static mut [u8] = Box::leak(vec![0u8; pages << 16].into_boxed_slice());
    Some((mem.as_mut_ptr() as usize, mem.len()))
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let buf = black_box([n; 64]);
    if black_box(n) == 0 { buf[0] } else { recurse(n + 1).wrapping_add(buf[3]) }
}

tollgate_sdk::export_policy!(Probe);
