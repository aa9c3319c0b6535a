//! `tollgate push`, `pull`, `sign`, `verify`, `save` and `load`: plugins in OCI registries and
//! OCI image layouts (`plugins::oci`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::plugins::oci::{self, Access, layout, signature};

/// The largest component a pull, save or load takes (the same bound as `--max-plugin-bytes`'s
/// default: an 18 MB Python component fits).
const MAX_WASM_BYTES: u64 = 64 << 20;

#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Registry credentials: a Docker config.json (`{"auths": {"HOST": {"auth": ...}}}`, what
    /// `kubectl create secret docker-registry` stores). Anonymous without it.
    #[arg(long, env = "TOLLGATE_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// CA (PEM) of a registry whose certificate no system root signs.
    #[arg(long, env = "TOLLGATE_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
}

impl RegistryArgs {
    fn access(&self) -> Access {
        Access { auth_file: self.registry_auth.clone(), ca_file: self.registry_ca.clone() }
    }
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The component, `DIR/NAME.wasm`; `DIR/NAME.toml` beside it goes along as its manifest.
    pub wasm: PathBuf,
    /// Where to, e.g. `registry.example.com/acme/static-tokens:1.2.0`.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    pub reference: String,
    /// The folder to write `NAME.wasm` (and `NAME.toml`) into.
    pub dir: PathBuf,
    /// Refuse the artifact unless one of these public keys signed it (cosign's format).
    #[arg(long)]
    pub key: Vec<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    pub reference: String,
    /// The private key: PKCS#8 PEM, or cosign's encrypted key (password in COSIGN_PASSWORD).
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    pub reference: String,
    /// Public keys (PEM); one signature by any of them is enough.
    #[arg(long, required = true)]
    pub key: Vec<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// References to save, then the OCI image layout folder to save them into.
    #[arg(required = true, num_args = 2..)]
    pub items: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// An OCI image layout folder (`tollgate save` writes one).
    pub input: PathBuf,
    /// The folder to write each plugin's `NAME.wasm` and `NAME.toml` into.
    pub dir: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")
}

pub fn push(args: PushArgs) -> Result<i32> {
    let (name, wasm, manifest) = oci::read_plugin_files(&args.wasm)?;
    let digest =
        runtime()?.block_on(oci::push(&args.reference, &name, &wasm, manifest.as_deref(), &args.registry.access()))?;
    let with = if manifest.is_some() { format!(" with {name}.toml") } else { String::new() };
    println!("pushed {name}.wasm{with} to {} ({digest})", args.reference);
    Ok(0)
}

pub fn pull(args: PullArgs) -> Result<i32> {
    let access = args.registry.access();
    let keys = signature::PublicKey::load_all(&args.key)?;
    let limits = oci::Limits::new(MAX_WASM_BYTES);
    let artifact = runtime()?.block_on(async {
        let artifact = oci::pull(&args.reference, &access, &limits).await?;
        if !keys.is_empty() {
            signature::verify(&args.reference, &artifact.digest, &keys, &access, &limits).await?;
        }
        anyhow::Ok(artifact)
    })?;
    let name = layout::plugin_name(artifact.title.as_deref(), &args.reference)?;
    write_plugin(&args.dir, &name, &artifact.wasm, artifact.manifest.as_deref())?;
    let signed = if keys.is_empty() { "" } else { ", signature verified" };
    println!(
        "pulled {} ({}{signed}) into {}",
        args.reference,
        artifact.digest,
        args.dir.join(format!("{name}.wasm")).display()
    );
    Ok(0)
}

pub fn sign(args: SignArgs) -> Result<i32> {
    let key =
        zeroize::Zeroizing::new(std::fs::read(&args.key).with_context(|| format!("reading {}", args.key.display()))?);
    let password = zeroize::Zeroizing::new(std::env::var("COSIGN_PASSWORD").unwrap_or_default().into_bytes());
    let digest = runtime()?.block_on(signature::sign(&args.reference, &key, &password, &args.registry.access()))?;
    println!("signed {} ({digest})", args.reference);
    Ok(0)
}

pub fn verify(args: VerifyArgs) -> Result<i32> {
    let access = args.registry.access();
    let keys = signature::PublicKey::load_all(&args.key)?;
    let limits = oci::Limits::new(MAX_WASM_BYTES);
    let verified = runtime()?.block_on(async {
        let digest = oci::resolve(&args.reference, &access, &limits).await?;
        let key = signature::verify(&args.reference, &digest, &keys, &access, &limits).await;
        anyhow::Ok((digest, key))
    })?;
    match verified {
        (digest, Ok(key)) => {
            println!("verified {} ({digest}): signed by {key}", args.reference);
            Ok(0)
        }
        (_, Err(e)) => {
            eprintln!("tollgate: {e:#}");
            Ok(1)
        }
    }
}

pub fn save(args: SaveArgs) -> Result<i32> {
    let (out, references) = args.items.split_last().context("save REF... OUT")?;
    let saved =
        runtime()?.block_on(layout::save(references, Path::new(out), &args.registry.access(), MAX_WASM_BYTES))?;
    for (reference, digest) in saved {
        println!("saved {reference} ({digest}) into {out}");
    }
    Ok(0)
}

pub fn load(args: LoadArgs) -> Result<i32> {
    let loaded = layout::load(&args.input, MAX_WASM_BYTES)?;
    if loaded.is_empty() {
        bail!("{}: no plugin in this layout", args.input.display());
    }
    for plugin in loaded {
        write_plugin(&args.dir, &plugin.name, &plugin.wasm, plugin.manifest.as_deref())?;
        println!(
            "loaded {} ({}) as {}",
            plugin.reference,
            plugin.digest,
            args.dir.join(format!("{}.wasm", plugin.name)).display()
        );
    }
    Ok(0)
}

/// Writes `NAME.toml` then `NAME.wasm` into `dir`, each through a temporary file and a rename,
/// so a watching tollgate never reads half a file; a manifest the artifact lacks is removed.
pub fn write_plugin(dir: &Path, name: &str, wasm: &[u8], manifest: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match manifest {
        Some(text) => oci::replace_file(&dir.join(format!("{name}.toml")), text.as_bytes())?,
        None => match std::fs::remove_file(dir.join(format!("{name}.toml"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).context("removing the old manifest"),
            _ => {}
        },
    }
    oci::replace_file(&dir.join(format!("{name}.wasm")), wasm)
}
