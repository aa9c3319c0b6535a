//! A policy author's first hour (issue 16): `tollgate new` in each language, `build`, `check`,
//! a live token added as the scaffold's README says, served, and a review allowed; and
//! `check --watch` rebuilding and rechecking on save.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_tests::*;

/// The toolchains `make test` installed for the examples (plugins/languages.sh): the same
/// pinned versions `tollgate build` installs, so the test pays no second install.
fn toolchains() -> PathBuf {
    Path::new(built::ROOT).join("target/toolchains")
}

/// Runs `tollgate ARGS` in `dir`, as an author would, with the shared toolchains.
fn author(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(tollgate_bin())
        .args(args)
        .current_dir(dir)
        .env("TOLLGATE_TOOLCHAINS", toolchains())
        // The Rust scaffold's dependencies, compiled once across runs.
        .env("CARGO_TARGET_DIR", Path::new(built::ROOT).join("target/author-rust"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// From `tollgate new` to the first review it allows, through the commands the scaffold's
/// README gives; returns how long that took.
fn first_policy(lang: &str) -> Duration {
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (ok, out) = author(scratch.path(), &["new", "--lang", lang, "team-tokens"]);
    assert!(ok, "{lang}: new: {out}");
    assert!(out.contains("tollgate build && tollgate check team-tokens.wasm"), "{lang}: {out}");
    let dir = scratch.path().join("team-tokens");
    let (ok, out) = author(&dir, &["build"]);
    assert!(ok && out.contains("built "), "{lang}: build: {out}");
    let (ok, out) = author(&dir, &["check", "team-tokens.wasm", "--cache-dir", &shared_compile_cache()]);
    assert!(ok, "{lang}: check: {out}");
    let checked: Vec<&str> = out.lines().filter(|l| l.starts_with("ok ") || l.starts_with("warn")).collect();
    assert!(
        checked.len() == 1 && checked[0].contains("4 vectors passed"),
        "{lang}: the scaffold passes its vectors without a warning: {out}"
    );

    // Add a token as the README says: its digest, a username and groups, in [config] tokens.
    let token = random_token("team-");
    let manifest = dir.join("team-tokens.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let line = format!("tokens = \"\"\"\n{} dana team:platform team:oncall\n", sha256_hex(&token));
    assert!(text.contains("tokens = \"\"\"\n"), "{lang}: {text}");
    std::fs::write(&manifest, text.replacen("tokens = \"\"\"\n", &line, 1)).unwrap();
    let plugins = PluginDir::new();
    for file in ["team-tokens.toml", "team-tokens.wasm"] {
        std::fs::copy(dir.join(file), plugins.path().join(format!("20-{file}"))).unwrap();
    }
    let server = Server::start(plugins.path(), &["--cache-dir", &shared_compile_cache()]);
    let answer = server.review(&token);
    let took = started.elapsed();
    let status = answer.review_status(V1);
    assert_eq!(status["authenticated"], true, "{lang}: {status}");
    assert_eq!(status["user"]["username"], "dana", "{lang}: {status}");
    assert_eq!(status["user"]["groups"], serde_json::json!(["team:platform", "team:oncall"]), "{lang}: {status}");
    // Another token is nobody's: the scaffold abstains, and nothing else allows it.
    assert_eq!(server.review(&random_token("team-")).review_status(V1)["authenticated"], false);
    eprintln!("time to first policy, {lang}: {:.1} s (new, build, check, serve, review)", took.as_secs_f64());
    took
}

#[test]
fn a_new_rust_policy_is_allowed_end_to_end() {
    first_policy("rust");
}

#[test]
fn a_new_python_policy_is_allowed_end_to_end() {
    first_policy("python");
}

#[test]
fn a_new_js_policy_is_allowed_end_to_end() {
    first_policy("js");
}

#[test]
fn a_new_c_policy_is_allowed_end_to_end() {
    first_policy("c");
}

#[test]
fn a_new_go_policy_is_allowed_end_to_end() {
    first_policy("go");
}

#[test]
fn new_refuses_a_bad_name_and_a_folder_in_use() {
    let scratch = tempfile::tempdir().unwrap();
    let (ok, out) = author(scratch.path(), &["new", "--lang", "go", "Team_Tokens"]);
    assert!(!ok && out.contains("must be a DNS label"), "{out}");
    std::fs::create_dir(scratch.path().join("taken")).unwrap();
    std::fs::write(scratch.path().join("taken/keep.txt"), "mine").unwrap();
    let (ok, out) = author(scratch.path(), &["new", "--lang", "go", "team-tokens", "taken"]);
    assert!(!ok && out.contains("is not empty"), "{out}");
    assert_eq!(std::fs::read_to_string(scratch.path().join("taken/keep.txt")).unwrap(), "mine");
}

/// A build error is the toolchain's own message and a failed exit, and the last good
/// component stays in place.
#[test]
fn a_broken_source_fails_the_build_and_keeps_the_last_component() {
    let scratch = tempfile::tempdir().unwrap();
    {
        let (ok, out) = author(scratch.path(), &["new", "--lang", "c", "team-tokens"]);
        assert!(ok, "{out}");
    }
    let dir = scratch.path().join("team-tokens");
    {
        let (ok, out) = author(&dir, &["build"]);
        assert!(ok, "{out}");
    }
    let good = std::fs::read(dir.join("team-tokens.wasm")).unwrap();
    std::fs::write(dir.join("team-tokens.c"), "this is not C\n").unwrap();
    let (ok, out) = author(&dir, &["build"]);
    assert!(!ok && out.contains("error") && out.contains("team-tokens (c)"), "{out}");
    assert_eq!(std::fs::read(dir.join("team-tokens.wasm")).unwrap(), good);
}

/// `check --watch` builds and checks a policy folder, then again at each save: a change that
/// breaks a vector is a FAIL line, its fix passes again.
#[test]
fn check_watch_rebuilds_and_rechecks_on_save() {
    let scratch = tempfile::tempdir().unwrap();
    {
        let (ok, out) = author(scratch.path(), &["new", "--lang", "c", "team-tokens"]);
        assert!(ok, "{out}");
    }
    let dir = scratch.path().join("team-tokens");
    let mut child = Command::new(tollgate_bin())
        .args(["check", "--watch", "."])
        .current_dir(&dir)
        .env("TOLLGATE_TOOLCHAINS", toolchains())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Lines up to the end of the next round.
    let round = || {
        let mut lines = Vec::new();
        loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).expect("a round of check --watch");
            let done = line.starts_with("--- ");
            lines.push(line);
            if done {
                return lines.join("\n");
            }
        }
    };
    let first = round();
    assert!(first.contains("ok ") && first.contains("4 vectors passed") && first.contains("--- all passed"), "{first}");
    // A save that breaks a vector (it now expects another username), then its fix.
    let manifest_path = dir.join("team-tokens.toml");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let want = "username = \"example-user\"";
    assert!(manifest.contains(want), "{manifest}");
    std::fs::write(&manifest_path, manifest.replace(want, "username = \"someone-else\"")).unwrap();
    let second = round();
    assert!(second.contains("FAIL") && second.contains("someone-else") && second.contains("--- 1 failed"), "{second}");
    std::fs::write(&manifest_path, &manifest).unwrap();
    let third = round();
    assert!(third.contains("--- all passed"), "{third}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A new policy folder of `lang`, its source edited by `edit`; returns the folder.
fn edited(scratch: &Path, lang: &str, source: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    {
        let (ok, out) = author(scratch, &["new", "--lang", lang, "team-tokens"]);
        assert!(ok, "{out}");
    }
    let dir = scratch.join("team-tokens");
    let path = dir.join(source);
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = edit(&text);
    assert_ne!(changed, text, "the edit of {source} applied");
    std::fs::write(&path, changed).unwrap();
    dir
}

/// The FAIL line of `check`: what went wrong, not componentize-py's abort chain.
#[test]
fn a_python_policy_returning_the_wrong_shape_is_told_what_a_decision_is() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = edited(scratch.path(), "python", "team_tokens.py", |s| {
        s.replace(
            "return Decision_Allow(Grant(user=found, audiences=review.audiences, expires_at=None))",
            "return \"allow\"",
        )
    });
    {
        let (ok, out) = author(&dir, &["build"]);
        assert!(ok, "{out}");
    }
    let (ok, out) = author(&dir, &["check", "team-tokens.wasm", "--cache-dir", &shared_compile_cache()]);
    let fail = out.lines().find(|l| l.starts_with("FAIL")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        !ok && fail
            .contains("authenticate returned a value the contract does not take: a str where a Decision was expected"),
        "{fail}"
    );
    assert!(fail.contains("Decision_Allow(Grant(user=UserInfo(") && !fail.contains("unwrap"), "{fail}");
}

/// A JavaScript exception: with the WASI stubs (the shipping build) the FAIL line says how to
/// see it; `build --debug` quotes the message and where it was thrown. console.log reaches the
/// log either way.
#[test]
fn a_js_exception_is_quoted_in_a_debug_build_and_console_log_is_logged() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = edited(scratch.path(), "js", "team-tokens.js", |s| {
        s.replace(
            "  authenticate(review) {\n",
            "  authenticate(review) {\n    console.log(\"looking at a review\", { audiences: review.audiences.length });\n    throw new Error(\"no such table\");\n",
        )
    });
    {
        let (ok, out) = author(&dir, &["build"]);
        assert!(ok, "{out}");
    }
    let (ok, out) = author(&dir, &["check", "team-tokens.wasm"]);
    let fail = out.lines().find(|l| l.starts_with("FAIL")).unwrap_or_else(|| panic!("{out}"));
    assert!(!ok && fail.contains("`tollgate build --debug` keeps its message"), "{fail}");
    assert!(out.contains("looking at a review {\"audiences\":"), "console.log is logged: {out}");

    {
        let (ok, out) = author(&dir, &["build", "--debug"]);
        assert!(ok, "{out}");
    }
    let (ok, out) = author(&dir, &["check", "team-tokens.wasm"]);
    let fail = out.lines().find(|l| l.starts_with("FAIL")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        !ok && fail.contains("its last words on stderr: no such table (at authenticate (/team-tokens.js:"),
        "{fail}"
    );
}
