//! The binary's command line, without plugins. Being an integration test of this package, it
//! also makes `cargo test` build `tollgate` for the end-to-end suite in `tests/`.

use std::process::Command;

#[test]
fn help_names_the_three_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "review", "check"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn review_takes_no_token_argument() {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["review", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--token-file") && !help.contains("--token "), "{help}");
}
