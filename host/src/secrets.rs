//! Files a manifest names: `secret_files` (a client secret from a mounted Kubernetes Secret) and
//! `[outbound] ca_file`.
//!
//! A tenant writes its own manifests, so a path is a request, not a grant: it is canonicalized
//! (symlinks and `..` resolved) and must land inside the tenant's own folder or inside a
//! directory the operator lists for that tenant (`secret_dirs` in the tenants file). The default
//! tenant's folder holds every other tenant's folder, so its paths may not enter one. The
//! server's own key material (TLS key, fingerprint key, compile cache key) is refused wherever
//! it lives. Secret values never reach a log line, `/status` or an error message: only paths do.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Secrets are small (a client secret, a password); a CA bundle is a few hundred KiB at most.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;
pub const MAX_CA_BYTES: u64 = 1 << 20;

/// Where the files of one tenant's manifests may be read.
pub struct Scope<'a> {
    /// "" for the default tenant.
    pub tenant: &'a str,
    /// The tenant's folder (the plugin directory itself for the default tenant).
    pub dir: &'a Path,
    /// The operator's `secret_dirs` for this tenant.
    pub secret_dirs: &'a [PathBuf],
    /// Files no manifest may name (canonical paths).
    pub protected: &'a [PathBuf],
}

impl Scope<'_> {
    /// The canonical path of `reference` if this tenant may read it.
    pub fn resolve(&self, reference: &str) -> Result<PathBuf> {
        let given = Path::new(reference);
        let joined = if given.is_absolute() { given.to_path_buf() } else { self.dir.join(given) };
        let path = std::fs::canonicalize(&joined).with_context(|| format!("{}", joined.display()))?;
        if self.protected.contains(&path) {
            bail!("{} is the server's own key material", path.display());
        }
        let dir = std::fs::canonicalize(self.dir).with_context(|| format!("{}", self.dir.display()))?;
        if let Ok(rel) = path.strip_prefix(&dir) {
            // The default tenant's folder holds the other tenants' folders: not theirs to read.
            if self.tenant.is_empty()
                && let Some(Component::Normal(first)) = rel.components().next()
                && rel.components().count() > 1
                && first.to_str().is_some_and(crate::tenant::valid_tenant_name)
            {
                bail!("{} is inside the tenant folder {:?}", path.display(), first);
            }
            return Ok(path);
        }
        for allowed in self.secret_dirs {
            if let Ok(allowed) = std::fs::canonicalize(allowed)
                && path.starts_with(&allowed)
            {
                return Ok(path);
            }
        }
        bail!("{} is outside the tenant's folder and its secret_dirs (the tenants file lists those)", path.display())
    }
}

/// Reads a regular file of at most `max` bytes.
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(bytes)
}

/// A secret's text: UTF-8, without the trailing line break editors and `kubectl` leave.
pub fn read_secret(path: &Path) -> Result<String> {
    let bytes = read_file(path, MAX_SECRET_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if text.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_tenant_or_its_secret_dirs() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let acme = root.path().join("acme");
        std::fs::create_dir_all(acme.join(".secrets")).unwrap();
        std::fs::write(acme.join(".secrets/client"), "s3cr3t-value\n").unwrap();
        std::fs::write(root.path().join("root-secret"), "root").unwrap();
        std::fs::write(outside.path().join("tls.key"), "key").unwrap();
        std::fs::write(outside.path().join("mounted"), "mounted-secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("tls.key"), acme.join("link")).unwrap();
        let protected = [std::fs::canonicalize(outside.path().join("tls.key")).unwrap()];

        let acme_scope = Scope { tenant: "acme", dir: &acme, secret_dirs: &[], protected: &protected };
        let p = acme_scope.resolve(".secrets/client").unwrap();
        assert_eq!(read_secret(&p).unwrap(), "s3cr3t-value");
        assert!(acme_scope.resolve("../root-secret").is_err(), "climbs out");
        assert!(acme_scope.resolve("link").is_err(), "a symlink out, to the TLS key");
        assert!(acme_scope.resolve(outside.path().join("mounted").to_str().unwrap()).is_err());
        assert!(acme_scope.resolve("missing").is_err());

        let dirs = [outside.path().to_path_buf()];
        let listed = Scope { tenant: "acme", dir: &acme, secret_dirs: &dirs, protected: &protected };
        assert!(listed.resolve(outside.path().join("mounted").to_str().unwrap()).is_ok());
        assert!(listed.resolve(outside.path().join("tls.key").to_str().unwrap()).is_err(), "never the TLS key");

        let default = Scope { tenant: "", dir: root.path(), secret_dirs: &[], protected: &protected };
        assert!(default.resolve("root-secret").is_ok());
        assert!(default.resolve("acme/.secrets/client").is_err(), "another tenant's folder");
    }
}
