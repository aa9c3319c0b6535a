//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/...`), for clusters
//! without a registry: `tollgate save` writes the artifacts of some references, byte for byte
//! (their digests stay those the registry served and a signature signs), and `tollgate load`
//! checks every blob against its digest before it writes the plugins into a folder.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use sha2::{Digest as _, Sha256};

use super::fetch::{self, Cap};
use super::{
    Access, DEFAULT_MAX_MANIFEST_BYTES, MANIFEST_LAYER_MEDIA_TYPE, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
    parse_reference, plugin_layers, plugin_manifest, pull_layer,
};

/// The reference an index entry was saved from (the OCI image-spec annotation).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Entries of an `index.json` a load reads: a layout of a few plugins has a few.
const MAX_ENTRIES: usize = 1024;

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn blob_path(dir: &Path, digest: &str) -> Result<std::path::PathBuf> {
    let hex = digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let hex = hex.with_context(|| format!("{digest:?} is not a sha256 digest"))?;
    Ok(dir.join("blobs/sha256").join(hex.to_ascii_lowercase()))
}

fn write_blob(dir: &Path, data: &[u8]) -> Result<String> {
    let digest = sha256(data);
    let path = blob_path(dir, &digest)?;
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(digest)
}

/// Saves each reference's artifact into the layout `out` (created, or added to).
pub async fn save(
    references: &[String],
    out: &Path,
    access: &Access,
    max_wasm_bytes: u64,
) -> Result<Vec<(String, String)>> {
    std::fs::create_dir_all(out.join("blobs/sha256")).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index_path = out.join("index.json");
    let mut index: serde_json::Value = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", index_path.display()))?,
        Err(_) => serde_json::json!({"schemaVersion": 2, "manifests": []}),
    };
    let mut saved = Vec::new();
    for reference in references {
        let image = parse_reference(reference)?;
        let client = fetch::Client::new(access, &image)?;
        let name = image.digest().or(image.tag()).unwrap_or("latest");
        let raw = client
            .manifest(name, Cap { bytes: DEFAULT_MAX_MANIFEST_BYTES, name: "max_manifest_bytes" })
            .await
            .and_then(|m| m.context("no such manifest"))
            .with_context(|| format!("pulling {reference}"))?;
        let digest = image.digest().map_or_else(|| sha256(&raw), str::to_owned);
        let manifest = plugin_manifest(&digest, &raw).with_context(|| reference.clone())?;
        for layer in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let cap = if layer.digest == manifest.config.digest {
                Cap { bytes: MAX_CONFIG_BYTES, name: "a config's 1 MiB" }
            } else if layer.media_type == MANIFEST_LAYER_MEDIA_TYPE {
                Cap { bytes: MAX_MANIFEST_BYTES, name: "a plugin manifest's 1 MiB" }
            } else {
                Cap { bytes: max_wasm_bytes, name: "the component bound" }
            };
            let data = pull_layer(&client, layer, cap).await?;
            write_blob(out, &data)?;
        }
        write_blob(out, &raw)?;
        let entries = index["manifests"].as_array_mut().context("index.json: no manifests list")?;
        entries.retain(|e| e["annotations"][REF_NAME] != reference.as_str());
        entries.push(serde_json::json!({
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "digest": digest,
            "size": raw.len(),
            "annotations": {REF_NAME: reference},
        }));
        saved.push((reference.clone(), digest));
    }
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)
        .with_context(|| format!("writing {}", index_path.display()))?;
    Ok(saved)
}

/// A blob of the layout, read only if it is no larger than `max` and checked against `digest`.
fn read_blob(dir: &Path, desc: &OciDescriptor, max: u64) -> Result<Vec<u8>> {
    let path = blob_path(dir, &desc.digest)?;
    let size = std::fs::metadata(&path).with_context(|| format!("{}: missing", path.display()))?.len();
    if size > max || size != desc.size as u64 {
        bail!("{}: {size} bytes, not the {} its descriptor says (at most {max})", path.display(), desc.size);
    }
    let data = std::fs::read(&path)?;
    if sha256(&data) != desc.digest {
        bail!("{}: its content does not match its digest", path.display());
    }
    Ok(data)
}

/// One plugin of the layout `dir`: the saved reference, its digest, and its files.
pub struct Loaded {
    pub reference: String,
    pub digest: String,
    pub name: String,
    pub wasm: Vec<u8>,
    pub manifest: Option<String>,
}

/// Reads every plugin of the layout `dir`, each blob checked against its digest.
pub fn load(dir: &Path, max_wasm_bytes: u64) -> Result<Vec<Loaded>> {
    let index_path = dir.join("index.json");
    let bytes = std::fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?;
    let index: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", index_path.display()))?;
    let entries = index["manifests"].as_array().with_context(|| format!("{}: no manifests", index_path.display()))?;
    if entries.len() > MAX_ENTRIES {
        bail!("{}: more than {MAX_ENTRIES} entries", index_path.display());
    }
    let mut loaded = Vec::new();
    for entry in entries {
        let desc: OciDescriptor = serde_json::from_value(entry.clone()).context("index.json: an entry")?;
        let reference = entry["annotations"][REF_NAME].as_str().unwrap_or(&desc.digest).to_owned();
        let raw = read_blob(dir, &desc, MAX_MANIFEST_BYTES)?;
        let manifest: OciImageManifest =
            serde_json::from_slice(&raw).with_context(|| format!("{reference}: its manifest"))?;
        let (wasm_layer, manifest_layer) = plugin_layers(&manifest.layers).with_context(|| reference.clone())?;
        let wasm = read_blob(dir, wasm_layer, max_wasm_bytes)?;
        let manifest_text = match manifest_layer {
            Some(layer) => Some(
                String::from_utf8(read_blob(dir, layer, MAX_MANIFEST_BYTES)?)
                    .context("a manifest layer is not UTF-8")?,
            ),
            None => None,
        };
        let title = wasm_layer.annotations.as_ref().and_then(|a| a.get(super::TITLE)).cloned();
        let name = plugin_name(title.as_deref(), &reference)?;
        loaded.push(Loaded { reference, digest: desc.digest, name, wasm, manifest: manifest_text });
    }
    Ok(loaded)
}

/// The plugin's file stem: the component layer's title (`NAME.wasm`), else the repository's last
/// segment; either must be a plain file name.
pub fn plugin_name(title: Option<&str>, reference: &str) -> Result<String> {
    let name = match title.and_then(|t| t.strip_suffix(".wasm")) {
        Some(stem) => stem.to_owned(),
        None => parse_reference(reference)?.repository().rsplit('/').next().unwrap_or_default().to_owned(),
    };
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !plain {
        bail!("{reference}: {name:?} is not a plugin file name");
    }
    Ok(name)
}
