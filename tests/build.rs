//! Builds the guest crates of `plugins/` for wasm32-wasip2 and generates a constant per
//! component (as wasmtime's test-programs do), so every test names a real, fresh build.
//!
//! The guests build in `target/guests` — the directory `make plugins` uses too — with a nested
//! cargo whose environment is cleaned of this build's settings.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(&plugins).args(["build", "--release", "--target", "wasm32-wasip2", "--workspace"]);
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let inherited = key.starts_with("CARGO_") && key != "CARGO_HOME";
        if inherited || ["RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTDOCFLAGS"].contains(&&*key) {
            cargo.env_remove(&*key);
        }
    }
    let status = cargo.status().expect("running cargo for the guest plugins");
    assert!(
        status.success(),
        "building plugins/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`; `make test` does it)"
    );

    let release = root.join("target/guests/wasm32-wasip2/release");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out: the binary is in target/<profile>.
    let profile_dir = out_dir.ancestors().nth(3).unwrap();
    let mut generated = String::new();
    writeln!(generated, "/// The `tollgate` binary of this build profile.").unwrap();
    writeln!(generated, "pub const TOLLGATE: &str = {:?};", profile_dir.join("tollgate")).unwrap();
    writeln!(generated, "/// The repository root.").unwrap();
    writeln!(generated, "pub const ROOT: &str = {:?};", root).unwrap();
    for (krate, dir) in guest_crates(&plugins) {
        let wasm = release.join(format!("{}.wasm", krate.replace('-', "_")));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        let ident = krate.to_uppercase().replace('-', "_");
        writeln!(generated, "/// `plugins/{}` as a component.", dir.strip_prefix(&plugins).unwrap().display()).unwrap();
        writeln!(generated, "pub const {ident}: &str = {:?};", wasm).unwrap();
        let manifest = dir.join(format!("{krate}.toml"));
        if manifest.exists() {
            writeln!(generated, "pub const {ident}_MANIFEST: &str = {:?};", manifest).unwrap();
        }
    }
    std::fs::write(out_dir.join("plugins.rs"), generated).unwrap();
}

/// The members of the guest workspace that build a component (not the SDK, not shared libraries).
fn guest_crates(plugins: &Path) -> Vec<(String, PathBuf)> {
    let workspace = std::fs::read_to_string(plugins.join("Cargo.toml")).unwrap();
    let members = workspace.split("members = [").nth(1).and_then(|s| s.split(']').next()).unwrap();
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty() && *m != "sdk")
        // Libraries the policies share (no cdylib) build no component of their own.
        .filter(|m| std::fs::read_to_string(plugins.join(m).join("Cargo.toml")).is_ok_and(|t| t.contains("cdylib")))
        .map(|m| {
            let dir = plugins.join(m);
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            (name, dir)
        })
        .collect()
}
