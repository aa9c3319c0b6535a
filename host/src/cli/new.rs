//! `tollgate new`: a policy folder that builds, passes its vectors and says what to do next,
//! in any of the five languages (the templates are in host/templates, the contract is wit/).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::build::{Lang, module_name};

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The policy's language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The policy's name: a DNS label (`team-tokens`), the name of its `.wasm` and `.toml`.
    pub name: String,
    /// Where to write it (default: ./NAME); must not exist or be empty.
    pub dir: Option<PathBuf>,
}

/// The contract every template builds against: the `policy` world alone (the `policy-http`
/// world needs the WASI packages beside it; an author who wants it copies wit/ whole).
const CONTRACT: (&str, &str) = ("wit/policy.wit", include_str!("../../../wit/policy.wit"));

macro_rules! templates {
    ($lang:literal: $($path:literal),+ $(,)?) => {
        &[$(($path, include_str!(concat!("../../templates/", $lang, "/", $path)))),+]
    };
}

/// Each language's files, `{{name}}` and `{{module}}` (the name with `_` for `-`) in paths and
/// contents. A unit test keeps these lists equal to host/templates.
fn templates(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => {
            templates!("rust": "Cargo.toml", ".cargo/config.toml", "src/lib.rs", "{{name}}.toml", "README.md")
        }
        Lang::Python => templates!("python": "{{module}}.py", "{{name}}.toml", "README.md"),
        Lang::Js => templates!("js": "{{name}}.js", "console.js", "{{name}}.toml", "README.md"),
        Lang::C => templates!("c": "{{name}}.c", "{{name}}.toml", "README.md"),
        Lang::Go => templates!("go": "{{name}}.go", "{{name}}.toml", "README.md"),
    }
}

pub fn run(args: NewArgs) -> Result<i32> {
    anyhow::ensure!(
        crate::plugins::confine::valid_tenant_name(&args.name),
        "the name {:?} must be a DNS label (lower-case letters, digits and -, e.g. team-tokens): it names the \
         plugin's .wasm and .toml",
        args.name
    );
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let written = write(args.lang, &args.name, &dir)?;
    println!("created {} ({}): {}", dir.display(), args.lang.as_str(), written.join(", "));
    let cd = if dir == Path::new(".") { String::new() } else { format!("cd {} && ", dir.display()) };
    println!("next:    {cd}tollgate build && tollgate check {}.wasm", args.name);
    println!("         then README.md there: how to add a token and serve it");
    Ok(0)
}

/// Writes the template into `dir` (created; refused if it holds anything), returning the paths.
fn write(lang: Lang, name: &str, dir: &Path) -> Result<Vec<String>> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            bail!("{} is not empty: tollgate new writes only into a new or empty folder", dir.display());
        }
    } else if dir.exists() {
        bail!("{} exists and is not a folder", dir.display());
    }
    let module = module_name(name);
    let fill = |s: &str| s.replace("{{name}}", name).replace("{{module}}", &module);
    let mut written = Vec::new();
    for (path, text) in templates(lang).iter().chain([&CONTRACT]) {
        let rel = fill(path);
        let to = dir.join(&rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&to, fill(text)).with_context(|| format!("writing {}", to.display()))?;
        written.push(rel);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under host/templates/LANG is written by `new`, and nothing else.
    #[test]
    fn the_lists_hold_every_template_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        for lang in Lang::ALL {
            let mut on_disk = Vec::new();
            let base = root.join(lang.as_str());
            let mut stack = vec![base.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else {
                        on_disk.push(path.strip_prefix(&base).unwrap().to_string_lossy().into_owned());
                    }
                }
            }
            let mut listed: Vec<String> = templates(lang).iter().map(|(p, _)| p.to_string()).collect();
            on_disk.sort();
            listed.sort();
            assert_eq!(on_disk, listed, "{}", lang.as_str());
        }
    }

    #[test]
    fn fills_names_and_refuses_a_folder_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        let files = write(Lang::Python, "team-tokens", &dir).unwrap();
        assert!(files.contains(&"team_tokens.py".to_string()) && files.contains(&"team-tokens.toml".to_string()));
        let manifest = std::fs::read_to_string(dir.join("team-tokens.toml")).unwrap();
        assert!(!manifest.contains("{{"), "{manifest}");
        assert!(dir.join("wit/policy.wit").is_file());
        let again = write(Lang::Python, "team-tokens", &dir).unwrap_err();
        assert!(format!("{again}").contains("is not empty"), "{again}");
    }
}
