use std::io::IsTerminal;

use clap::Parser;
use tollgate::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() {
    install_panic_hook();
    keep_memory_private();
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let code = match tollgate::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// Tokens pass through this process's memory: no core dump may write them to disk, and no
/// other process of the same user may read them (ptrace, `/proc/PID/mem`). A failure here is
/// reported, not fatal: the kernel may refuse `prctl` inside some sandboxes.
fn keep_memory_private() {
    let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on this process, with a valid rlimit.
    let (core, dumpable) =
        unsafe { (libc::setrlimit(libc::RLIMIT_CORE, &none), libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0)) };
    if core != 0 || dumpable != 0 {
        eprintln!("tollgate: warning: cannot disable core dumps: {}", std::io::Error::last_os_error());
    }
}

/// A panic message may have been formatted from request data; only literal messages (which
/// cannot hold a token) are printed, with their location.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&'static str>()
            .copied()
            .unwrap_or("(formatted message withheld: it may hold request data)");
        eprintln!("tollgate: internal error (panic) at {location}: {message}");
    }));
}
