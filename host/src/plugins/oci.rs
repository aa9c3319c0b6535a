//! Plugins in OCI registries. One reference carries a whole plugin: the CNCF Wasm OCI artifact
//! that `wkg` and `oci-wasm` write (config `application/vnd.wasm.config.v0+json`, one
//! `application/wasm` layer) and, when the plugin has one, its manifest (`NAME.toml`) as a
//! second layer of its own media type. A plain component pushed by other tools (any config, one
//! `application/wasm` layer) is accepted too. Pulls read every registry document under bounds of
//! tollgate's own (`oci/fetch.rs`); pushes are `oci-client`'s; cosign's signatures are
//! `oci/signature.rs`; an OCI image layout on disk, for air-gapped clusters, is `oci/layout.rs`.

pub mod fetch;
pub mod layout;
pub mod signature;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// The CNCF Wasm OCI artifact's config (the format `wkg` and `oci-wasm` write).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The component's layer.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The plugin's manifest (`NAME.toml`), beside the component.
pub const MANIFEST_LAYER_MEDIA_TYPE: &str = "application/vnd.tollgate.plugin.manifest.v1+toml";
/// The layer's file name, as ORAS and `wkg` annotate it.
const TITLE: &str = "org.opencontainers.image.title";

/// A manifest is a page of TOML: a larger layer is not one.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// An OCI manifest, the artifact's or its signature's (`max_manifest_bytes`): a plugin's is three
/// descriptors (under 2 KiB), and a signature manifest grows by one layer per signature (up to
/// ~8 KiB with a keyless bundle); 256 KiB is 30 such signatures, and a sliver of memory.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 256 << 10;
/// One simple-signing payload (`max_signature_bytes`): cosign's JSON naming a digest is ~250
/// bytes, plus whatever `optional` annotations a signer adds; 64 KiB is hundreds of those.
pub const DEFAULT_MAX_SIGNATURE_BYTES: u64 = 64 << 10;
/// The most a tenants file may raise `max_manifest_bytes` to: distribution itself refuses
/// manifests over 4 MiB; a bound is not a way around one.
const CEILING_MANIFEST_BYTES: u64 = 16 << 20;
/// The most a tenants file may raise `max_signature_bytes` to.
const CEILING_SIGNATURE_BYTES: u64 = 1 << 20;
/// The config blob, which only `tollgate save` reads (to keep the artifact byte for byte; the
/// server uses nothing in it): `wkg`'s lists the component's imports and exports, a few KiB.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A registry is slow or gone after this long: a poll fails, the last good generation stays.
const REGISTRY_TIMEOUT: std::time::Duration = fetch::REGISTRY_TIMEOUT;

/// What one artifact's documents may make tollgate hold, each read under its own bound and cut
/// off past it (a registry is the operator's choice, not trusted with the server's memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The component layer (`--max-plugin-bytes`).
    pub wasm: u64,
    /// Each OCI manifest: the artifact's and its signature's (`max_manifest_bytes`).
    pub manifest: u64,
    /// Each signature payload (`max_signature_bytes`).
    pub signature: u64,
}

impl Limits {
    /// The defaults, with `max_wasm_bytes` for the component.
    pub fn new(max_wasm_bytes: u64) -> Self {
        Self { wasm: max_wasm_bytes, manifest: DEFAULT_MAX_MANIFEST_BYTES, signature: DEFAULT_MAX_SIGNATURE_BYTES }
    }
}

/// A plugin a tenant takes from a registry (the tenants file's `[[tenant.NAME.oci]]`): the
/// operator's, so trusted to say where; what it points to is verified before it is used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The plugin's name in the tenant (its file stem, e.g. `10-static-tokens`): its place in
    /// the chain, beside the folder's own plugins.
    pub name: String,
    /// `registry/repository:tag` (polled: a moved tag is a new generation) or `...@sha256:...`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Pins the artifact: tag moves are then ignored.
    pub digest: Option<String>,
    /// Public keys (PEM, cosign's format): the artifact must carry a signature by one of them.
    pub keys: Vec<PathBuf>,
    /// How often the tag is looked up, e.g. `60s` (default).
    pub poll: Option<String>,
    /// Registry credentials (a Docker config.json).
    pub auth: Option<PathBuf>,
    /// The registry's CA (PEM), for a private registry.
    pub ca_file: Option<PathBuf>,
    /// At most this many bytes of an OCI manifest, the artifact's or its signature's
    /// ([`DEFAULT_MAX_MANIFEST_BYTES`]).
    pub max_manifest_bytes: Option<u64>,
    /// At most this many bytes of each signature payload ([`DEFAULT_MAX_SIGNATURE_BYTES`]).
    pub max_signature_bytes: Option<u64>,
}

impl SourceSpec {
    /// Checks what can be checked without the network: names, paths, keys.
    pub fn validate(&self) -> Result<()> {
        layout::plugin_name(Some(&format!("{}.wasm", self.name)), &self.reference)
            .with_context(|| format!("oci plugin {:?}: name", self.name))?;
        parse_reference(&self.reference)?;
        if let Some(d) = &self.digest {
            let hex = d.strip_prefix("sha256:").unwrap_or_default();
            anyhow::ensure!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "oci plugin {:?}: digest {d:?} is not sha256:<64 hex>",
                self.name
            );
        }
        anyhow::ensure!(
            !self.keys.is_empty(),
            "oci plugin {:?}: keys is empty: a registry plugin runs only when signed by a key the operator names",
            self.name
        );
        for path in self.keys.iter().chain(&self.auth).chain(&self.ca_file) {
            anyhow::ensure!(
                path.is_absolute(),
                "oci plugin {:?}: {} is not an absolute path",
                self.name,
                path.display()
            );
        }
        signature::PublicKey::load_all(&self.keys).with_context(|| format!("oci plugin {:?}", self.name))?;
        for (key, value, ceiling) in [
            ("max_manifest_bytes", self.max_manifest_bytes, CEILING_MANIFEST_BYTES),
            ("max_signature_bytes", self.max_signature_bytes, CEILING_SIGNATURE_BYTES),
        ] {
            anyhow::ensure!(
                value.is_none_or(|v| (1024..=ceiling).contains(&v)),
                "oci plugin {:?}: {key} must be from 1024 to {ceiling} bytes",
                self.name
            );
        }
        Ok(())
    }

    /// The bounds of this source's documents (`max_wasm_bytes`: `--max-plugin-bytes`).
    pub fn limits(&self, max_wasm_bytes: u64) -> Limits {
        let defaults = Limits::new(max_wasm_bytes);
        Limits {
            wasm: max_wasm_bytes,
            manifest: self.max_manifest_bytes.unwrap_or(defaults.manifest),
            signature: self.max_signature_bytes.unwrap_or(defaults.signature),
        }
    }

    pub fn access(&self) -> Access {
        Access { auth_file: self.auth.clone(), ca_file: self.ca_file.clone() }
    }
}

/// How to reach registries: credentials from a Docker `config.json` (what `kubectl create secret
/// docker-registry` stores as `.dockerconfigjson`) and a CA for private registries. Always HTTPS.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub auth_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

impl Access {
    /// The credentials the auth file holds for `registry` (anonymous when it names none).
    pub fn credentials(&self, registry: &str) -> Result<Option<(String, String)>> {
        let Some(path) = &self.auth_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not a Docker config.json", path.display()))?;
        let auths = config.get("auths").and_then(|a| a.as_object());
        let Some(entry) = auths.and_then(|a| {
            a.iter().find(|(host, _)| {
                let host = host.trim_start_matches("https://").trim_end_matches('/');
                host == registry || host.split('/').next() == Some(registry)
            })
        }) else {
            return Ok(None);
        };
        let entry = entry.1;
        let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        if let (Some(user), Some(pass)) = (field("username"), field("password")) {
            return Ok(Some((user, pass)));
        }
        let encoded = field("auth").with_context(|| format!("{}: no credentials for {registry}", path.display()))?;
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .with_context(|| format!("{}: the auth of {registry} is not base64 of user:password", path.display()))?;
        let (user, pass) = decoded
            .split_once(':')
            .with_context(|| format!("{}: the auth of {registry} is not user:password", path.display()))?;
        Ok(Some((user.to_owned(), pass.to_owned())))
    }

    fn auth(&self, registry: &str) -> Result<RegistryAuth> {
        Ok(match self.credentials(registry)? {
            Some((user, pass)) => RegistryAuth::Basic(user, pass),
            None => RegistryAuth::Anonymous,
        })
    }

    /// The CA file's certificates, PEM.
    pub(crate) fn extra_roots(&self) -> Result<Vec<Vec<u8>>> {
        let Some(path) = &self.ca_file else { return Ok(Vec::new()) };
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(
            pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----"),
            "{}: no PEM certificate",
            path.display()
        );
        Ok(vec![pem])
    }

    fn client(&self) -> Result<Client> {
        install_crypto_provider();
        let config = ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: self
                .extra_roots()?
                .into_iter()
                .map(|data| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data,
                })
                .collect(),
            read_timeout: Some(REGISTRY_TIMEOUT),
            connect_timeout: Some(REGISTRY_TIMEOUT),
            ..Default::default()
        };
        Ok(Client::new(config))
    }
}

/// reqwest (under oci-client and sigstore) uses rustls without a default provider: ring, once.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A plugin as a registry holds it.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub wasm: Vec<u8>,
    pub manifest: Option<String>,
    /// The digest of the OCI manifest that carried them (what a signature signs, a pin names).
    pub digest: String,
    /// The component's file name in the artifact (`NAME.wasm`), when it says.
    pub title: Option<String>,
    /// The OCI manifest exactly as served (its SHA-256 is `digest`): what the cache keeps to
    /// check the blobs against again, offline.
    pub oci_manifest: Vec<u8>,
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits (what tollgate computes and keeps).
pub fn is_sha256_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The plugin an OCI manifest describes, checked: its bytes are exactly `digest`'s (so it is the
/// signed one), it is an image manifest, and its layers are one component and at most one
/// plugin manifest. What a pull and the cache both start from: every blob's expected digest and
/// size comes from here, never from anything stored beside it.
pub fn plugin_manifest(digest: &str, raw: &[u8]) -> Result<OciImageManifest> {
    anyhow::ensure!(is_sha256_digest(digest), "{digest:?} is not a sha256 digest");
    anyhow::ensure!(sha256_digest(raw) == digest, "the manifest does not match its digest {digest}");
    let manifest: OciImageManifest = serde_json::from_slice(raw).context("not an OCI image manifest")?;
    if let Some(media_type) = &manifest.media_type
        && media_type != OCI_IMAGE_MEDIA_TYPE
        && media_type != IMAGE_MANIFEST_MEDIA_TYPE
    {
        bail!("a {media_type}, not an image manifest: name the plugin's own manifest (its digest), not an index");
    }
    plugin_layers(&manifest.layers)?;
    Ok(manifest)
}

/// Checks a blob against its descriptor (in a verified manifest): its size and its digest.
pub fn check_blob(desc: &OciDescriptor, data: &[u8]) -> Result<()> {
    anyhow::ensure!(
        i64::try_from(data.len()).is_ok_and(|n| n == desc.size),
        "{} bytes, not the {} its descriptor says",
        data.len(),
        desc.size
    );
    anyhow::ensure!(sha256_digest(data) == desc.digest, "its content does not match its digest {}", desc.digest);
    Ok(())
}

pub fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .parse()
        .with_context(|| format!("{reference:?} is not an OCI reference (registry/repository:tag or @sha256:...)"))
}

/// Pushes a component (and its manifest) to `reference`; returns the pushed manifest's digest.
pub async fn push(reference: &str, name: &str, wasm: &[u8], manifest: Option<&str>, access: &Access) -> Result<String> {
    let image = parse_reference(reference)?;
    let client = access.client()?;
    let auth = access.auth(image.resolve_registry())?;
    let titled = |file: String| Some([(TITLE.to_owned(), file)].into_iter().collect());
    let mut layers =
        vec![ImageLayer::new(wasm.to_vec(), WASM_LAYER_MEDIA_TYPE.to_owned(), titled(format!("{name}.wasm")))];
    if let Some(text) = manifest {
        layers.push(ImageLayer::new(
            text.as_bytes().to_vec(),
            MANIFEST_LAYER_MEDIA_TYPE.to_owned(),
            titled(format!("{name}.toml")),
        ));
    }
    let config = wasm_config(wasm, &layers)?;
    let manifest = OciImageManifest::build(&layers, &config, None);
    client
        .push(&image, &layers, config, &auth, Some(manifest))
        .await
        .with_context(|| format!("pushing to {reference}"))?;
    client.fetch_manifest_digest(&image, &auth).await.with_context(|| format!("resolving {reference} after the push"))
}

/// The config of the CNCF Wasm OCI artifact: what the component is, for tools that look.
fn wasm_config(wasm: &[u8], layers: &[ImageLayer]) -> Result<Config> {
    let (imports, exports) = component_world(wasm)?;
    let config = serde_json::json!({
        "created": crate::observe::audit::rfc3339(std::time::SystemTime::now()),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": layers.iter().filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE).map(|l| l.sha256_digest()).collect::<Vec<_>>(),
        "component": {"exports": exports, "imports": imports, "target": null},
    });
    Ok(Config::new(config.to_string().into_bytes(), WASM_CONFIG_MEDIA_TYPE.to_owned(), None))
}

/// The component's own imports and exports (its world, as `wkg` records it): the top level
/// only, not those of the modules and components nested in it. Refuses what is not a component.
pub fn component_world(wasm: &[u8]) -> Result<(Vec<String>, Vec<String>)> {
    use wasmparser::{Encoding, Parser, Payload};
    let (mut imports, mut exports, mut depth) = (Vec::new(), Vec::new(), 0usize);
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.context("not a Wasm binary")? {
            Payload::Version { encoding, .. } => {
                anyhow::ensure!(depth > 0 || encoding == Encoding::Component, "a core module, not a component");
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    imports.push(import.context("reading the imports")?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    exports.push(export.context("reading the exports")?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

/// The digest `reference` (a tag, or already a digest) points to now: what a poll compares.
pub async fn resolve(reference: &str, access: &Access, limits: &Limits) -> Result<String> {
    let image = parse_reference(reference)?;
    // A digest names itself: a registry is not asked (it could answer another one).
    if let Some(digest) = image.digest() {
        return Ok(digest.to_owned());
    }
    let client = fetch::Client::new(access, &image)?;
    let cap = fetch::Cap { bytes: limits.manifest, name: "max_manifest_bytes" };
    let tag = image.tag().unwrap_or("latest");
    client.manifest_digest(tag, cap).await.with_context(|| format!("resolving {reference}"))
}

/// Pulls the plugin `reference` names: its OCI manifest (under `max_manifest_bytes`), the
/// component (under its descriptor's size and `--max-plugin-bytes`) and its manifest layer (1
/// MiB), each checked against its digest. Anything but one component layer and at most one
/// manifest layer is refused. The config blob is not read: nothing in it is used.
pub async fn pull(reference: &str, access: &Access, limits: &Limits) -> Result<Artifact> {
    let image = parse_reference(reference)?;
    let client = fetch::Client::new(access, &image)?;
    let cap = fetch::Cap { bytes: limits.manifest, name: "max_manifest_bytes" };
    let name = image.digest().or(image.tag()).unwrap_or("latest");
    let raw = client
        .manifest(name, cap)
        .await
        .and_then(|m| m.context("no such manifest"))
        .with_context(|| format!("pulling {reference}"))?;
    let digest = image.digest().map_or_else(|| sha256_digest(&raw), str::to_owned);
    let manifest = plugin_manifest(&digest, &raw).with_context(|| reference.to_string())?;
    let (wasm_layer, manifest_layer) = plugin_layers(&manifest.layers).with_context(|| reference.to_string())?;
    let wasm = pull_layer(&client, wasm_layer, fetch::Cap { bytes: limits.wasm, name: "--max-plugin-bytes" }).await?;
    let manifest_text = match manifest_layer {
        Some(layer) => {
            let cap = fetch::Cap { bytes: MAX_MANIFEST_BYTES, name: "a plugin manifest's 1 MiB" };
            let bytes = pull_layer(&client, layer, cap).await?;
            Some(String::from_utf8(bytes).with_context(|| format!("{reference}: its manifest layer is not UTF-8"))?)
        }
        None => None,
    };
    let title = wasm_layer.annotations.as_ref().and_then(|a| a.get(TITLE)).cloned();
    Ok(Artifact { wasm, manifest: manifest_text, digest, title, oci_manifest: raw })
}

/// The component layer and the manifest layer, if any; any other layer refuses the artifact.
pub fn plugin_layers(layers: &[OciDescriptor]) -> Result<(&OciDescriptor, Option<&OciDescriptor>)> {
    let (mut wasm, mut manifest) = (None, None);
    for layer in layers {
        let slot = match layer.media_type.as_str() {
            WASM_LAYER_MEDIA_TYPE => &mut wasm,
            MANIFEST_LAYER_MEDIA_TYPE => &mut manifest,
            other => bail!(
                "a layer of type {other:?}: a plugin is one {WASM_LAYER_MEDIA_TYPE} layer and at most one manifest layer"
            ),
        };
        if slot.replace(layer).is_some() {
            bail!("two layers of type {:?}", layer.media_type);
        }
    }
    let wasm = wasm.with_context(|| format!("no {WASM_LAYER_MEDIA_TYPE} layer: not a Wasm artifact"))?;
    Ok((wasm, manifest))
}

/// One blob of a verified manifest, refused before the download when its descriptor says it is
/// larger than `cap`, cut off if the registry sends more than the descriptor said, and checked
/// against its digest.
async fn pull_layer(client: &fetch::Client, layer: &OciDescriptor, cap: fetch::Cap) -> Result<Vec<u8>> {
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    client.blob(&layer.digest, size, cap).await.with_context(|| format!("pulling layer {}", layer.digest))
}

/// `reference` pinned to `digest`: `registry/repository@digest`.
pub fn pinned(reference: &str, digest: &str) -> Result<String> {
    let image = parse_reference(reference)?;
    Ok(format!("{}/{}@{digest}", image.registry(), image.repository()))
}

/// Writes `path` through a temporary dot-file beside it and a rename, so a reader (a watching
/// scan, a restart) never sees half a file.
pub fn replace_file(path: &Path, data: &[u8]) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{}: no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `dir/NAME.wasm` and, beside it, `dir/NAME.toml` if it exists: what `push` sends.
pub fn read_plugin_files(wasm_path: &Path) -> Result<(String, Vec<u8>, Option<String>)> {
    let name = wasm_path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|_| wasm_path.extension().is_some_and(|e| e == "wasm"))
        .with_context(|| format!("{}: not a NAME.wasm file", wasm_path.display()))?
        .to_owned();
    let wasm = std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let manifest_path = wasm_path.with_extension("toml");
    let manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", manifest_path.display())),
    };
    Ok((name, wasm, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str) -> OciDescriptor {
        OciDescriptor { media_type: media_type.into(), digest: "sha256:00".into(), size: 1, ..Default::default() }
    }

    #[test]
    fn an_artifact_is_one_component_and_at_most_one_manifest() {
        assert!(plugin_layers(&[layer(WASM_LAYER_MEDIA_TYPE)]).unwrap().1.is_none());
        assert!(plugin_layers(&[layer(MANIFEST_LAYER_MEDIA_TYPE), layer(WASM_LAYER_MEDIA_TYPE)]).unwrap().1.is_some());
        for bad in [
            vec![],
            vec![layer(MANIFEST_LAYER_MEDIA_TYPE)],
            vec![layer(WASM_LAYER_MEDIA_TYPE), layer(WASM_LAYER_MEDIA_TYPE)],
            vec![layer(WASM_LAYER_MEDIA_TYPE), layer("application/vnd.oci.image.layer.v1.tar+gzip")],
        ] {
            assert!(plugin_layers(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_expected_hash_comes_from_the_signed_manifest() {
        let wasm = b"\0asm component bytes".to_vec();
        let desc = |media_type: &str, data: &[u8]| serde_json::json!({"mediaType": media_type, "digest": sha256_digest(data), "size": data.len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": desc(WASM_CONFIG_MEDIA_TYPE, b"{}"),
            "layers": [desc(WASM_LAYER_MEDIA_TYPE, &wasm)],
        });
        let raw = serde_json::to_vec(&manifest).unwrap();
        let digest = sha256_digest(&raw);
        let parsed = plugin_manifest(&digest, &raw).unwrap();
        check_blob(&parsed.layers[0], &wasm).unwrap();
        let mut changed = wasm.clone();
        changed[0] ^= 1;
        assert!(check_blob(&parsed.layers[0], &changed).is_err(), "a changed blob");
        assert!(check_blob(&parsed.layers[0], &wasm[1..]).is_err(), "a shorter blob");
        // The manifest must be exactly the digest's.
        let mut edited = raw.clone();
        edited.push(b'\n');
        assert!(plugin_manifest(&digest, &edited).is_err());
        assert!(plugin_manifest(&digest.to_uppercase(), &raw).is_err());
        // An index is not a plugin's manifest.
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "config": desc(WASM_CONFIG_MEDIA_TYPE, b"{}"),
            "layers": [desc(WASM_LAYER_MEDIA_TYPE, &wasm)],
        }))
        .unwrap();
        assert!(plugin_manifest(&sha256_digest(&index), &index).is_err());
    }

    #[test]
    fn the_bounds_of_a_source_have_defaults_and_a_ceiling() {
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("k.pub");
        std::fs::write(&key, "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAETJP9cqpUQsn2ggmJniWGjHdlsHzD\nJsB89BPhZYch0U0hKANx5TY+ncrm0s8bfJxxHoenAEFhwhuXeb4PqIrtoQ==\n-----END PUBLIC KEY-----\n").unwrap();
        let spec = |extra: &str| -> SourceSpec {
            toml::from_str(&format!("name = \"10-a\"\nref = \"r.example/a:1\"\nkeys = [{key:?}]\n{extra}")).unwrap()
        };
        let limits = spec("").limits(64 << 20);
        assert_eq!(
            limits,
            Limits { wasm: 64 << 20, manifest: DEFAULT_MAX_MANIFEST_BYTES, signature: DEFAULT_MAX_SIGNATURE_BYTES }
        );
        let set = spec("max_manifest_bytes = 4096\nmax_signature_bytes = 2048");
        set.validate().unwrap();
        assert_eq!((set.limits(1).manifest, set.limits(1).signature), (4096, 2048));
        for bad in ["max_manifest_bytes = 10", "max_manifest_bytes = 1073741824", "max_signature_bytes = 16777216"] {
            assert!(spec(bad).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_names_the_components_world() {
        let component = wat_component();
        let (imports, exports) = component_world(&component).unwrap();
        assert_eq!(imports, vec!["tollgate:policy/host@0.1.0".to_string()]);
        assert_eq!(exports, vec!["tollgate:policy/policy@0.1.0".to_string()]);
        assert!(component_world(b"\0asm\x01\0\0\0").is_err(), "a core module is not a component");
    }

    /// A component importing one instance and exporting one, with a core module nested in it
    /// whose imports are not the component's.
    fn wat_component() -> Vec<u8> {
        wat::parse_str(
            r#"(component
                (import "tollgate:policy/host@0.1.0" (instance))
                (core module (import "env" "f" (func)))
                (export "tollgate:policy/policy@0.1.0" (instance 0)))"#,
        )
        .unwrap()
    }

    #[test]
    fn credentials_come_from_a_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"registry.example.com":{"auth":"dXNlcjpwYXNz"},"https://other.example:5000/":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let access = Access { auth_file: Some(path), ca_file: None };
        assert_eq!(access.credentials("registry.example.com").unwrap(), Some(("user".into(), "pass".into())));
        assert_eq!(access.credentials("other.example:5000").unwrap(), Some(("u".into(), "p".into())));
        assert_eq!(access.credentials("elsewhere.example").unwrap(), None);
    }
}
