//! cosign's key-based signatures, through `sigstore`: the simple-signing payload (the signed
//! manifest's digest and the repository) signed with the operator's key, stored under the tag
//! `sha256-<digest>.sig` beside the artifact. So `cosign verify --key` accepts what `tollgate
//! sign` wrote, and tollgate accepts what `cosign sign --key` wrote.

use anyhow::{Context as _, Result, bail};
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraint as _};
use sigstore::cosign::{ClientBuilder, Constraint as _, CosignCapabilities as _, SignatureLayer};
use sigstore::crypto::SigningScheme;
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use zeroize::Zeroizing;

use super::Access;

/// A key's verifying half, PEM (what `cosign generate-key-pair` writes as `cosign.pub`).
#[derive(Clone)]
pub struct PublicKey {
    pub name: String,
    pem: Vec<u8>,
}

impl PublicKey {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
        PublicKeyVerifier::try_from(&pem).with_context(|| format!("{}: not a PEM public key", path.display()))?;
        Ok(Self { name: path.display().to_string(), pem })
    }

    pub fn load_all(paths: &[std::path::PathBuf]) -> Result<Vec<Self>> {
        paths.iter().map(|p| Self::load(p)).collect()
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

fn cosign_client(access: &Access) -> Result<sigstore::cosign::Client> {
    super::install_crypto_provider();
    let config = ClientConfig {
        protocol: ClientProtocol::Https,
        extra_root_certificates: access
            .extra_roots()?
            .into_iter()
            .map(|data| sigstore::registry::Certificate {
                encoding: sigstore::registry::CertificateEncoding::Pem,
                data,
            })
            .collect(),
        ..Default::default()
    };
    ClientBuilder::default().with_oci_client_config(config).build().context("building the signature client")
}

fn auth(access: &Access, image: &OciReference) -> Result<Auth> {
    Ok(Auth::from(&access.auth(image.resolve_registry())?))
}

/// Signs the artifact `reference` points to now with the private key `key_pem` (PKCS#8 PEM, or
/// cosign's encrypted key with `password`); returns the signed digest.
pub async fn sign(reference: &str, key_pem: &[u8], password: &[u8], access: &Access) -> Result<String> {
    let image: OciReference = reference.parse().with_context(|| format!("{reference:?} is not an OCI reference"))?;
    let keys = if password.is_empty() {
        SigStoreKeyPair::from_pem(key_pem)
    } else {
        SigStoreKeyPair::from_encrypted_pem(key_pem, password)
    }
    .context("reading the signing key (PKCS#8 PEM, or cosign's encrypted key with COSIGN_PASSWORD)")?;
    let scheme = match &keys {
        SigStoreKeyPair::ECDSA(sigstore::crypto::signing_key::ecdsa::ECDSAKeys::P384(_)) => {
            SigningScheme::ECDSA_P384_SHA384_ASN1
        }
        SigStoreKeyPair::ECDSA(_) => SigningScheme::ECDSA_P256_SHA256_ASN1,
        SigStoreKeyPair::ED25519(_) => SigningScheme::ED25519,
        SigStoreKeyPair::RSA(_) => {
            bail!("RSA signing keys are not supported here: use an ECDSA P-256 key (cosign generate-key-pair)")
        }
    };
    let signer = sigstore::cosign::constraint::PrivateKeySigner::new_with_raw(
        Zeroizing::new(keys.private_key_to_pem().context("the signing key")?.as_bytes().to_vec()),
        Zeroizing::new(Vec::new()),
        &scheme,
    )
    .context("the signing key")?;
    let mut client = cosign_client(access)?;
    let auth = auth(access, &image)?;
    let (signature_image, digest) =
        client.triangulate(&image, &auth).await.with_context(|| format!("resolving {reference}"))?;
    let mut layer = SignatureLayer::new_unsigned(&image, &digest).context("the signature payload")?;
    // cosign names the repository, without the tag, as the signed identity.
    layer.simple_signing.critical.identity.docker_reference = format!("{}/{}", image.registry(), image.repository());
    if !signer.add_constraint(&mut layer).context("signing")? {
        bail!("signing {reference}: the payload was already signed");
    }
    client
        .push_signature(None, &auth, &signature_image, vec![layer])
        .await
        .with_context(|| format!("pushing the signature of {reference}"))?;
    Ok(digest)
}

/// Checks that the artifact at `reference` (pinned to `digest`) carries a cosign signature of
/// that digest by one of `keys`; says which key verified it.
pub async fn verify(reference: &str, digest: &str, keys: &[PublicKey], access: &Access) -> Result<String> {
    anyhow::ensure!(!keys.is_empty(), "no verification key");
    let pinned = super::pinned(reference, digest)?;
    let image: OciReference = pinned.parse().with_context(|| format!("{pinned:?} is not an OCI reference"))?;
    let mut client = cosign_client(access)?;
    let auth = auth(access, &image)?;
    let layers = client
        .trusted_signature_layers(&auth, &image)
        .await
        .with_context(|| format!("fetching the signatures of {pinned}"))?;
    // sigstore keeps only the layers whose payload names this digest; check it again here, the
    // one property everything rests on.
    let layers: Vec<&SignatureLayer> =
        layers.iter().filter(|l| l.simple_signing.critical.image.docker_manifest_digest == digest).collect();
    if layers.is_empty() {
        bail!("{pinned} is not signed (no cosign signature of {digest})");
    }
    for key in keys {
        let verifier = PublicKeyVerifier::try_from(&key.pem).with_context(|| format!("key {}", key.name))?;
        for layer in &layers {
            if verifier.verify(layer).unwrap_or(false) {
                return Ok(key.name.clone());
            }
        }
    }
    bail!("{pinned}: none of its {} signature(s) verifies with the configured key(s)", layers.len())
}
