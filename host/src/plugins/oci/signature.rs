//! cosign's key-based signatures: the simple-signing payload (the signed manifest's digest and
//! the repository) signed with the operator's key, stored under the tag `sha256-<digest>.sig`
//! beside the artifact. So `cosign verify --key` accepts what `tollgate sign` wrote, and tollgate
//! accepts what `cosign sign --key` wrote. Signing pushes through `sigstore`; verifying reads the
//! signature documents under tollgate's own bounds (`oci/fetch.rs`) and checks each payload with
//! `sigstore`'s verification keys — the same check offline, on what the cache kept, against the
//! keys in force at every poll and start (SECURITY.md §17).

use anyhow::{Context as _, Result, bail};
use oci_client::manifest::OciImageManifest;
use sha2::{Digest as _, Sha256};
use sigstore::cosign::{ClientBuilder, Constraint as _, CosignCapabilities as _, SignatureLayer};
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};
use zeroize::Zeroizing;

use super::fetch::Cap;
use super::{Access, Limits};

/// The media type of a simple-signing layer, and the annotation holding its signature.
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// What the payload says it is (cosign writes and checks it).
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Signatures of one digest read (the newest: cosign appends): a digest is signed once per key
/// that vouches for it, a handful; more is a registry filling the poll with work.
pub const MAX_SIGNATURES: usize = 32;

/// A key's verifying half, PEM (what `cosign generate-key-pair` writes as `cosign.pub`).
#[derive(Clone)]
pub struct PublicKey {
    pub name: String,
    pem: Vec<u8>,
}

impl PublicKey {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
        CosignVerificationKey::try_from_pem(&pem)
            .with_context(|| format!("{}: not a PEM public key", path.display()))?;
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

/// What a set of keys is: another fingerprint is another set (a key replaced, even in place).
pub fn fingerprint(keys: &[PublicKey]) -> String {
    let mut h = Sha256::new();
    for key in keys {
        h.update(Sha256::digest(key.name.as_bytes()));
        h.update(Sha256::digest(&key.pem));
    }
    hex::encode(h.finalize())
}

/// One cosign signature as the registry holds it: the simple-signing payload (JSON, exactly the
/// signed bytes) and its base64 signature. What the cache keeps beside the artifact, so that it
/// is verified again, offline, against whatever keys are in force.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub payload: String,
    pub signature: String,
}

impl Signed {
    /// Whether the payload is cosign's and names exactly `digest`.
    fn names(&self, digest: &str) -> bool {
        let Ok(payload) = serde_json::from_str::<serde_json::Value>(&self.payload) else { return false };
        let critical = &payload["critical"];
        critical["type"] == PAYLOAD_TYPE && critical["image"]["docker-manifest-digest"] == digest
    }
}

/// Which of `keys` signed `digest` in one of `signatures` (the payload naming exactly that
/// digest, its signature verifying with the key): offline, on what a registry served or the
/// cache kept.
pub fn check(digest: &str, signatures: &[Signed], keys: &[PublicKey]) -> Result<String> {
    anyhow::ensure!(!keys.is_empty(), "no verification key");
    let naming: Vec<&Signed> = signatures.iter().filter(|s| s.names(digest)).collect();
    if naming.is_empty() {
        bail!("{digest} is not signed (no cosign signature of it)");
    }
    for key in keys {
        let verifier = CosignVerificationKey::try_from_pem(&key.pem).with_context(|| format!("key {}", key.name))?;
        for signed in &naming {
            let signature = Signature::Base64Encoded(signed.signature.as_bytes());
            if verifier.verify_signature(signature, signed.payload.as_bytes()).is_ok() {
                return Ok(key.name.clone());
            }
        }
    }
    bail!("{digest}: none of its {} signature(s) verifies with the configured key(s)", naming.len())
}

/// `kept` and then those of `fetched` it lacks, the newest [`MAX_SIGNATURES`].
pub fn merge(kept: &[Signed], fetched: &[Signed]) -> Vec<Signed> {
    let mut all = kept.to_vec();
    all.extend(fetched.iter().filter(|s| !kept.contains(s)).cloned());
    let extra = all.len().saturating_sub(MAX_SIGNATURES);
    all.drain(..extra);
    all
}

/// The cosign signatures the registry holds for `digest` (none when it has no `.sig` tag), every
/// document read under `limits`: the signature manifest under `max_manifest_bytes`, each payload
/// under its descriptor's size and `max_signature_bytes`.
pub async fn fetch(reference: &str, digest: &str, access: &Access, limits: &Limits) -> Result<Vec<Signed>> {
    let image = super::parse_reference(reference)?;
    let client = super::fetch::Client::new(access, &image)?;
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let manifest_cap = Cap { bytes: limits.manifest, name: "max_manifest_bytes" };
    let Some(raw) = client.manifest(&tag, manifest_cap).await? else { return Ok(Vec::new()) };
    let manifest: OciImageManifest =
        serde_json::from_slice(&raw).with_context(|| format!("{reference}: its signature manifest {tag}"))?;
    let layers: Vec<_> = manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING).collect();
    let mut signed = Vec::new();
    for layer in &layers[layers.len().saturating_sub(MAX_SIGNATURES)..] {
        let Some(signature) = layer.annotations.as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) else { continue };
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        let cap = Cap { bytes: limits.signature, name: "max_signature_bytes" };
        let payload = client.blob(&layer.digest, size, cap).await?;
        let Ok(payload) = String::from_utf8(payload) else { continue };
        signed.push(Signed { payload, signature: signature.clone() });
    }
    Ok(signed)
}

/// Checks that the artifact at `reference` (pinned to `digest`) carries a cosign signature of
/// that digest by one of `keys`; says which key verified it.
pub async fn verify(
    reference: &str,
    digest: &str,
    keys: &[PublicKey],
    access: &Access,
    limits: &Limits,
) -> Result<String> {
    let pinned = super::pinned(reference, digest)?;
    let signed = fetch(reference, digest, access, limits)
        .await
        .with_context(|| format!("fetching the signatures of {pinned}"))?;
    check(digest, &signed, keys).with_context(|| pinned.clone())
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

    /// A P-256 key as cosign makes them: the signing half, and the public PEM it verifies with.
    fn key(name: &str) -> (EcdsaKeyPair, PublicKey) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        // SubjectPublicKeyInfo of a P-256 key: this header, then the point.
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        spki.extend_from_slice(ring::signature::KeyPair::public_key(&pair).as_ref());
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(spki));
        (pair, PublicKey { name: name.into(), pem: pem.into_bytes() })
    }

    fn sign(pair: &EcdsaKeyPair, payload: String) -> Signed {
        let signature = pair.sign(&ring::rand::SystemRandom::new(), payload.as_bytes()).unwrap();
        Signed { payload, signature: STANDARD.encode(signature.as_ref()) }
    }

    fn payload(digest: &str) -> String {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.example/a"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
    }

    #[test]
    fn a_signature_verifies_with_its_key_and_for_its_digest_only() {
        let (digest, other) = (format!("sha256:{}", "ab".repeat(32)), format!("sha256:{}", "cd".repeat(32)));
        let ((a, a_public), (_, b_public)) = (key("a"), key("b"));
        let signed = sign(&a, payload(&digest));
        assert_eq!(check(&digest, std::slice::from_ref(&signed), std::slice::from_ref(&a_public)).unwrap(), "a");
        assert_eq!(check(&digest, std::slice::from_ref(&signed), &[b_public.clone(), a_public.clone()]).unwrap(), "a");
        let revoked = check(&digest, std::slice::from_ref(&signed), std::slice::from_ref(&b_public)).unwrap_err();
        assert!(revoked.to_string().contains("none of its 1 signature(s) verifies"), "{revoked}");
        let elsewhere = check(&other, std::slice::from_ref(&signed), std::slice::from_ref(&a_public)).unwrap_err();
        assert!(elsewhere.to_string().contains("is not signed"), "{elsewhere}");
        // The payload is what is signed: another digest written into it breaks the signature.
        let forged = Signed { payload: payload(&other), signature: signed.signature.clone() };
        assert!(check(&other, &[forged], std::slice::from_ref(&a_public)).is_err());
        // Not cosign's kind of payload: not a signature of an image.
        let odd = sign(&a, payload(&digest).replace("cosign container image signature", "something else"));
        assert!(check(&digest, &[odd], std::slice::from_ref(&a_public)).is_err());
        assert!(check(&digest, std::slice::from_ref(&signed), &[]).is_err(), "no key, nothing verifies");
    }

    #[test]
    fn kept_and_fetched_signatures_merge_without_repeats_and_within_the_bound() {
        let one = |n: usize| Signed { payload: format!("p{n}"), signature: format!("s{n}") };
        let kept: Vec<Signed> = (0..3).map(one).collect();
        let fetched: Vec<Signed> = (2..5).map(one).collect();
        assert_eq!(merge(&kept, &fetched), (0..5).map(one).collect::<Vec<_>>());
        let many: Vec<Signed> = (0..MAX_SIGNATURES + 10).map(one).collect();
        let merged = merge(&kept, &many);
        assert_eq!(merged.len(), MAX_SIGNATURES);
        assert_eq!(merged.last(), many.last(), "the newest are kept");
    }

    #[test]
    fn keys_have_fingerprints_that_change_with_any_key() {
        let ((_, a), (_, b)) = (key("a"), key("b"));
        let one = |k: &PublicKey| fingerprint(std::slice::from_ref(k));
        assert_eq!(one(&a), one(&a));
        assert_ne!(one(&a), one(&b));
        // The same path holding another key (replaced in place) is another set.
        let replaced = PublicKey { name: "a".into(), pem: b.pem.clone() };
        assert_ne!(one(&a), one(&replaced));
        assert_ne!(fingerprint(&[a.clone(), b.clone()]), fingerprint(&[a]));
    }
}
