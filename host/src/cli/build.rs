//! `tollgate build`: one policy folder into one component, with the toolchain of its language
//! (installed when missing). The toolchain logic is plugins/toolchains.sh, which also builds
//! the repository's examples (plugins/languages.sh): the binary carries it and its support files.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use sha2::{Digest as _, Sha256};

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The policy folder, as `tollgate new` writes it: the component is written beside its
    /// manifest, as DIR/NAME.wasm.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The language, when the folder does not say it alone.
    #[arg(long, value_enum)]
    pub lang: Option<Lang>,
    #[command(flatten)]
    pub toolchain: ToolchainArgs,
}

/// How a policy is built: shared by `build` and `check --watch`.
#[derive(Args, Debug, Clone)]
pub struct ToolchainArgs {
    /// JavaScript: build without the WASI stubs, so an exception's message and stack reach the
    /// log and the failure's reason (the stubs turn every one into "unreachable"). For writing
    /// a policy; ship without it.
    #[arg(long)]
    pub debug: bool,
    /// Where the toolchains are installed when missing (default: ~/.cache/tollgate/toolchains).
    #[arg(long, env = "TOLLGATE_TOOLCHAINS")]
    pub toolchains: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
    Go,
}

/// The name a policy's module or source file has where a language wants an identifier
/// (`team_tokens.py` for `team-tokens`; toolchains.sh's `${name//-/_}`).
pub fn module_name(name: &str) -> String {
    name.replace('-', "_")
}

impl Lang {
    pub const ALL: [Lang; 5] = [Lang::Rust, Lang::Python, Lang::Js, Lang::C, Lang::Go];

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
            Lang::Go => "go",
        }
    }
}

/// What plugins/toolchains.sh needs beside the policy folder (its header lists them), and the
/// contract for folders without a wit/ of their own.
const SUPPORT: &[(&str, &str)] = &[
    ("toolchains.sh", include_str!("../../../plugins/toolchains.sh")),
    ("go/witpkg/go.mod", include_str!("../../../plugins/go/witpkg/go.mod")),
    ("go/witpkg/wit/runtime/runtime.go", include_str!("../../../plugins/go/witpkg/wit/runtime/runtime.go")),
    ("go/witpkg/wit/runtime/memory_wasm.s", include_str!("../../../plugins/go/witpkg/wit/runtime/memory_wasm.s")),
    ("go/witpkg/wit/types/types.go", include_str!("../../../plugins/go/witpkg/wit/types/types.go")),
    ("go/memory-layout.py", include_str!("../../../plugins/go/memory-layout.py")),
    ("js/package.json", include_str!("../../../plugins/js/package.json")),
    ("js/package-lock.json", include_str!("../../../plugins/js/package-lock.json")),
    ("wit/policy.wit", include_str!("../../../wit/policy.wit")),
];

pub fn run(args: BuildArgs) -> Result<i32> {
    let policy = Policy::find(&args.dir, args.lang)?;
    policy.build(&args.toolchain)?;
    Ok(0)
}

/// A policy folder: its language and name (that of its manifest, NAME.toml).
#[derive(Debug, Clone)]
pub struct Policy {
    pub dir: PathBuf,
    pub lang: Lang,
    pub name: String,
}

impl Policy {
    /// Reads what `dir` holds: the one manifest (NAME.toml) names the policy, the sources
    /// say the language (`lang` when they do not).
    pub fn find(dir: &Path, lang: Option<Lang>) -> Result<Policy> {
        let mut tomls = Vec::new();
        let mut exts = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.rsplit_once('.') {
                Some((stem, "toml")) if !matches!(stem, "Cargo" | "pyproject" | "rust-toolchain") => {
                    tomls.push(stem.to_owned())
                }
                Some((stem, ext)) => exts.push((stem.to_owned(), ext.to_owned())),
                None => {}
            }
        }
        let name = match tomls.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "{} holds no manifest (NAME.toml): is it a policy folder? (`tollgate new` makes one)",
                dir.display()
            ),
            many => bail!("{} holds several manifests ({}): one policy per folder", dir.display(), many.join(", ")),
        };
        let module = module_name(&name);
        let has = |stem: &str, ext: &str| exts.iter().any(|(s, e)| s == stem && e == ext);
        let any = |ext: &str| exts.iter().any(|(_, e)| e == ext);
        let found: Vec<Lang> = [
            (Lang::Rust, dir.join("Cargo.toml").is_file()),
            (Lang::Python, has(&module, "py")),
            (Lang::Js, has(&name, "js")),
            (Lang::C, any("c")),
            (Lang::Go, any("go")),
        ]
        .into_iter()
        .filter_map(|(l, yes)| yes.then_some(l))
        .collect();
        let lang = match (lang, found.as_slice()) {
            (Some(lang), _) => lang,
            (None, [one]) => *one,
            (None, []) => {
                bail!("no sources for {name} in {}: Cargo.toml, {module}.py, {name}.js, *.c or *.go", dir.display())
            }
            (None, many) => bail!(
                "{} holds sources of {}: say which with --lang",
                dir.display(),
                many.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(" and ")
            ),
        };
        let dir = dir.canonicalize().with_context(|| format!("{}", dir.display()))?;
        Ok(Policy { dir, lang, name })
    }

    pub fn wasm(&self) -> PathBuf {
        self.dir.join(format!("{}.wasm", self.name))
    }

    /// Builds DIR/NAME.wasm; the toolchain's own output goes to standard error.
    pub fn build(&self, how: &ToolchainArgs) -> Result<PathBuf> {
        let toolchains = match &how.toolchains {
            Some(dir) => dir.clone(),
            None => default_toolchains()?,
        };
        std::fs::create_dir_all(&toolchains).with_context(|| format!("creating {}", toolchains.display()))?;
        let toolchains = toolchains.canonicalize()?;
        let support = support_dir(&toolchains)?;
        let wit = if self.dir.join("wit/policy.wit").is_file() { self.dir.join("wit") } else { support.join("wit") };
        let mut cmd = Command::new("bash");
        cmd.arg(support.join("toolchains.sh"))
            .arg("build")
            .arg(self.lang.as_str())
            .arg(&self.dir)
            .arg(&self.name)
            .arg(self.wasm())
            .env("TOLLGATE_TOOLCHAINS", &toolchains)
            .env("TOLLGATE_SUPPORT", &support)
            .env("TOLLGATE_WIT", &wit);
        if how.debug {
            cmd.arg("--debug");
        }
        let status = cmd.status().context("running bash (tollgate build needs it)")?;
        if !status.success() {
            bail!("building {} ({}) failed: its output is above", self.name, self.lang.as_str());
        }
        Ok(self.wasm())
    }
}

/// `$XDG_CACHE_HOME/tollgate/toolchains`, else `~/.cache/tollgate/toolchains`: per user, out of
/// every project, so each toolchain is installed once.
fn default_toolchains() -> Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("no HOME: give --toolchains DIR")?).join(".cache"),
    };
    Ok(cache.join("tollgate/toolchains"))
}

/// The support files, written once per content under TOOLCHAINS/support/DIGEST (a new
/// tollgate with other files gets a folder of its own; concurrent builds each write a
/// temporary copy and the first rename wins).
fn support_dir(toolchains: &Path) -> Result<PathBuf> {
    let mut digest = Sha256::new();
    for (path, text) in SUPPORT {
        digest.update(path.as_bytes());
        digest.update([0]);
        digest.update(text.as_bytes());
        digest.update([0]);
    }
    let hex = hex::encode(&digest.finalize()[..8]);
    let dir = toolchains.join("support").join(&hex);
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = toolchains.join("support").join(format!(".{hex}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for (path, text) in SUPPORT {
        let to = tmp.join(path);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::write(&to, text).with_context(|| format!("writing {}", to.display()))?;
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another build put it there first.
        let _ = std::fs::remove_dir_all(&tmp);
        anyhow::ensure!(dir.is_dir(), "could not write {}", dir.display());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_name_and_the_language() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert!(format!("{:#}", Policy::find(d, None).unwrap_err()).contains("no manifest"));
        std::fs::write(d.join("team-tokens.toml"), "").unwrap();
        assert!(format!("{:#}", Policy::find(d, None).unwrap_err()).contains("no sources for team-tokens"));
        std::fs::write(d.join("team_tokens.py"), "").unwrap();
        let p = Policy::find(d, None).unwrap();
        assert_eq!((p.lang, p.name.as_str()), (Lang::Python, "team-tokens"));
        std::fs::write(d.join("helper.c"), "").unwrap();
        assert!(format!("{:#}", Policy::find(d, None).unwrap_err()).contains("python and c: say which with --lang"));
        assert_eq!(Policy::find(d, Some(Lang::C)).unwrap().lang, Lang::C);
        std::fs::write(d.join("other.toml"), "").unwrap();
        assert!(format!("{:#}", Policy::find(d, None).unwrap_err()).contains("several manifests"));
    }

    #[test]
    fn support_files_are_written_once_per_content() {
        let tmp = tempfile::tempdir().unwrap();
        let a = support_dir(tmp.path()).unwrap();
        assert!(a.join("toolchains.sh").is_file() && a.join("go/witpkg/go.mod").is_file());
        assert_eq!(support_dir(tmp.path()).unwrap(), a);
    }
}
