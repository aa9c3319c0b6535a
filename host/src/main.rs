use std::io::IsTerminal;

use clap::Parser;
use tollgate::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() {
    install_panic_hook();
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
