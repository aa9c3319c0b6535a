//! A fresh instance is a zeroed one (SPEC §7, SECURITY.md "a fresh instance per review"), also
//! when the node swaps. The pool resets a slot's dirty pages in place when an instance ends; a
//! page the kernel swapped out while the instance lived is dirty too, and a reset that asks only
//! for present pages (wasmtime 48.0.8) leaves it for the next instance in that slot to read.
//!
//! The test crosses the boundary for real: plugins write their token into fresh memory and hold
//! their instances while the test pages the server's memory out to a swap file of its own
//! (`swapon`, `process_madvise(MADV_PAGEOUT)`); then reviews of other users — the same plugin,
//! the same component in another tenant, and another component in that tenant — read their own
//! fresh memory, which must be all zeros. It needs root (swap, and paging out another process);
//! without it, or without swap, it fails saying why: it never passes without having swapped.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tollgate_tests::*;

/// How long a holding plugin keeps its instance: the page-out (a few hundred MiB to a local
/// disk) must end well within it, even on a busy two-core machine.
const HOLD_MS: u64 = 4000;
/// The swap file: more than the server's resident memory (about 100 MiB with these plugins).
const SWAP_BYTES: u64 = 512 << 20;
/// Where the test's swap files live, so a later run can remove one a killed run left behind.
const SWAP_PREFIX: &str = "tollgate-e2e-swap-";

#[test]
fn fresh_instances_are_zeroed_even_after_the_node_swapped() {
    let dir = PluginDir::new();
    let fresh = |head: &str, username: &str| {
        let limits = format!("[limits]\ntimeout_ms = {}\n{head}", HOLD_MS + 4000);
        let config =
            format!("pages = \"16\"\nhold_prefix = \"hold-\"\nhold_ms = \"{HOLD_MS}\"\nusername = \"{username}\"");
        probe_manifest(&limits, "fresh", &config)
    };
    dir.probe("10-fresh", &fresh("", "user"));
    // Another tenant: the same component (one compiled module, so the pool prefers the slots it
    // used before), and the same code under another digest (another module).
    dir.add_in("other", "10-same", built::PROBE, &fresh("[match]\ntoken_prefix = [\"same-\"]", "other:same"));
    let copy = dir.path().join("probe-copy.wasm");
    std::fs::write(&copy, with_custom_section(&std::fs::read(built::PROBE).unwrap(), "tollgate-e2e-copy")).unwrap();
    dir.add_in("other", "20-copy", copy.to_str().unwrap(), &fresh("[match]\ntoken_prefix = [\"copy-\"]", "other:copy"));
    std::fs::remove_file(&copy).unwrap();
    let tenants = tenants_file("[tenant.other]\nusername_prefix = \"other:\"\nallowed_groups = []\n");
    let server = Server::start(
        dir.path(),
        &[
            "--tenants",
            tenants.path().to_str().unwrap(),
            // Two slots: every later instance reuses a slot a holding plugin had.
            "--max-instances",
            "2",
            "--max-plugin-timeout-ms",
            "10000",
            "--review-timeout-ms",
            "10000",
        ],
    );
    let read = |path: &str, token: &str| -> Value {
        let answer = server.review_at(path, V1, Some(token), &[]);
        let status = answer.review_status(V1);
        assert_eq!(status["authenticated"], true, "{token}: {status}");
        status["user"]["extra"].clone()
    };
    // Warm the slots up; fresh memory reads zero before anything swapped.
    for i in 0..4 {
        let extra = read("/authenticate", &format!("warm-user-{i}-5d1c0a7e"));
        assert_eq!(extra["fresh/dirty-bytes"][0], "0", "{extra}");
    }

    let swap = SwapFile::enable(SWAP_BYTES);
    // Two reviews hold both slots, their tokens written over 128 separate 4 KiB runs of their
    // fresh memory (more runs than one PAGEMAP_SCAN reports), while the server is paged out.
    let logs_before = server.logs.text().matches("fresh: holding").count();
    let (paged, held) = std::thread::scope(|s| {
        let holders: Vec<_> = ["hold-alice-secret-token-7c1f93", "hold-carol-secret-token-0b2e48"]
            .into_iter()
            .map(|token| s.spawn(|| read("/authenticate", token)))
            .collect();
        wait_for("both plugins holding their instances", Duration::from_secs(60), || {
            (server.logs.text().matches("fresh: holding").count() >= logs_before + 2).then_some(())
        });
        let paged = page_out(server.pid());
        let held: Vec<Value> = holders.into_iter().map(|h| h.join().unwrap()).collect();
        (paged, held)
    });
    for extra in &held {
        assert_eq!(extra["fresh/dirty-bytes"][0], "0", "{extra}");
        let until: u128 = extra["fresh/held-until-ms"][0].as_str().unwrap().parse().unwrap();
        assert!(
            paged.done_ms < until,
            "the page-out ended after a holding instance did ({} > {until} unix ms): nothing was tested; {paged:?}",
            paged.done_ms
        );
    }
    assert!(paged.advised_bytes > 0, "process_madvise paged nothing out: {:?}", paged.errors);
    assert!(
        paged.pool_swapped_kib > 0,
        "the instance pool had nothing in swap after the page-out: nothing was tested; {paged:?}"
    );
    eprintln!("paged out: {paged:?}");

    // The next instances in those slots: another tenant's other component and the same
    // component, then the holders' own plugin for other users.
    let reviews = [
        ("/authenticate/other", "copy-dave-token-3a9e61d2"),
        ("/authenticate/other", "same-erin-token-8f20c4b7"),
        ("/authenticate/other", "copy-frank-token-61d0e5a3"),
        ("/authenticate/other", "same-grace-token-c47b19e0"),
        ("/authenticate", "bob-token-0d93a7e1c5"),
        ("/authenticate", "heidi-token-5e8b2f6a"),
    ];
    let mut leaks = Vec::new();
    for (path, token) in reviews {
        let extra = read(path, token);
        let dirty = extra["fresh/dirty-bytes"][0].as_str().unwrap_or("?").to_owned();
        if dirty != "0" {
            leaks.push(format!("{path} {token}: {dirty} non-zero bytes, read {:?}", extra["fresh/leaked"][0]));
        }
    }
    drop(swap);
    assert!(leaks.is_empty(), "fresh instances read an earlier instance's memory:\n{}", leaks.join("\n"));
}

/// `component` with a custom section appended: the same code under another digest.
fn with_custom_section(component: &[u8], name: &str) -> Vec<u8> {
    let leb = |mut n: usize, out: &mut Vec<u8>| loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { byte } else { byte | 0x80 });
        if n == 0 {
            break;
        }
    };
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(b"a copy");
    let mut out = component.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// A swap file of the test's own, active until dropped (then turned off and removed, whatever
/// the test's outcome).
struct SwapFile {
    path: PathBuf,
}

impl SwapFile {
    fn enable(bytes: u64) -> SwapFile {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test needs root: it enables a swap file and pages another process out (make test runs as root in CI)"
        );
        remove_stale_swap_files();
        let path = std::env::temp_dir().join(format!("{SWAP_PREFIX}{}", std::process::id()));
        write_zeros(&path, bytes).unwrap_or_else(|e| panic!("cannot write the swap file {}: {e}", path.display()));
        let swap = SwapFile { path };
        let mkswap = std::process::Command::new(sbin("mkswap")).arg(&swap.path).output().expect("running mkswap");
        assert!(mkswap.status.success(), "mkswap failed: {}", String::from_utf8_lossy(&mkswap.stderr));
        let c_path = std::ffi::CString::new(swap.path.to_str().unwrap()).unwrap();
        // SAFETY: a valid, NUL-terminated path.
        if unsafe { libc::swapon(c_path.as_ptr(), 0) } != 0 {
            panic!(
                "cannot enable swap on {} ({}): this test needs swap, and fails rather than skip",
                swap.path.display(),
                std::io::Error::last_os_error()
            );
        }
        swap
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        swap_off_and_remove(&self.path);
    }
}

fn swap_off_and_remove(path: &Path) {
    if let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid, NUL-terminated path. Fails harmlessly when it is not active.
        unsafe { libc::swapoff(c_path.as_ptr()) };
    }
    let _ = std::fs::remove_file(path);
}

/// Swap files an earlier run of this test left active (it was killed before its cleanup).
fn remove_stale_swap_files() {
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for name in swaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = Path::new(name).file_name().and_then(|f| f.to_str()?.strip_prefix(SWAP_PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            swap_off_and_remove(Path::new(name));
        }
    }
}

/// A file of zeros written out (a swap file must have no holes).
fn write_zeros(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt as _;
    // swapon refuses a swap file others can read: it would hold other processes' memory.
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..bytes / chunk.len() as u64 {
        file.write_all(&chunk)?;
    }
    file.sync_all()
}

/// A system tool, whether or not `/usr/sbin` is on this process's `PATH`.
fn sbin(tool: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(tool))
}

/// What [`page_out`] did.
#[derive(Debug)]
struct PagedOut {
    /// Address space the kernel accepted to page out (reserved but unused included).
    advised_bytes: usize,
    /// What the instance pool's mappings held in swap afterwards.
    pool_swapped_kib: u64,
    /// When it ended (unix ms).
    done_ms: u128,
    /// Mappings the kernel would not advise (special ones), by error.
    errors: Vec<String>,
}

/// Pages every private mapping of process `pid` out to swap (`process_madvise(MADV_PAGEOUT)`):
/// the instance pool's first, so it is out while the holding instances still live.
fn page_out(pid: u32) -> PagedOut {
    // SAFETY: plain syscalls on values of this function; the pidfd is closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as libc::c_int;
    assert!(pidfd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    let mut regions = private_mappings(pid);
    // The pool reserves gigabytes of address space: its mappings are by far the largest.
    regions.sort_by_key(|(start, end)| std::cmp::Reverse(end - start));
    let mut advised = 0usize;
    let mut errors = Vec::new();
    for (start, end) in regions {
        let iov = libc::iovec { iov_base: start as *mut libc::c_void, iov_len: end - start };
        // SAFETY: the iovec describes another process's memory, which the kernel only advises.
        let n = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                pidfd,
                &iov as *const libc::iovec,
                1usize,
                libc::MADV_PAGEOUT,
                0u32,
            )
        };
        if n < 0 {
            errors.push(std::io::Error::last_os_error().to_string());
        } else {
            advised += n as usize;
        }
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(pidfd) };
    let done_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    PagedOut { advised_bytes: advised, pool_swapped_kib: pool_swap_kib(pid), done_ms, errors }
}

/// `(start, end)` of each private mapping of `pid`.
fn private_mappings(pid: u32) -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("reading the server's maps");
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            if !perms.ends_with('p') || line.contains("[vsyscall]") || line.contains("[vvar") || line.contains("[vdso]")
            {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?))
        })
        .collect()
}

/// Swap used by the instance pool's slots in `pid`: a slot is a reservation of address space
/// (gigabytes, inaccessible) whose start — the memory of the instance that last used it — is
/// made accessible as the instance grows: the run of mappings that ends where such a large
/// inaccessible mapping begins.
fn pool_swap_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("reading the server's smaps");
    let (mut total, mut run, mut last_end) = (0, 0, 0usize);
    let mut reserved = false;
    for line in smaps.lines() {
        let kib = |rest: &str| rest.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
        if let Some((range, rest)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            if a != last_end {
                run = 0;
            }
            last_end = b;
            reserved = rest.starts_with("---p") && b - a >= 1 << 30;
            if reserved {
                total += run;
                run = 0;
            }
        } else if let Some(rest) = line.strip_prefix("Swap:")
            && !reserved
        {
            run += kib(rest);
        }
    }
    total
}
