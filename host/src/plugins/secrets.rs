//! Files a manifest names: `secret_files` (a client secret from a mounted Kubernetes Secret) and
//! `[outbound] ca_file`.
//!
//! A tenant writes its own manifests, so a path is a request, not a grant. A relative path is
//! opened beneath the tenant's folder; an absolute one must name the tenant's folder or a
//! directory the operator lists for that tenant (`secret_dirs` in the tenants file) and is opened
//! beneath that directory. Either way the kernel resolves it ([`Folder`]): no symlink or `..`
//! leads out, and nothing can be swapped in between a check and the open. The default tenant's
//! folder holds every other tenant's folder, so its paths may not enter one. The server's own
//! key material (TLS key, fingerprint key, compile cache key) is refused by what the opened file
//! *is* (device and inode, compared with the protected paths as they resolve now, so a kubelet
//! rotation into a new `..data` changes nothing). Secret values never reach a log line,
//! `/status` or an error message: only paths do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};

use crate::plugins::confine::{self, Folder};

/// Secrets are small (a client secret, a password); a CA bundle is a few hundred KiB at most.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;
pub const MAX_CA_BYTES: u64 = 1 << 20;

/// Where the files of one tenant's manifests may be read.
pub struct Scope<'a> {
    /// "" for the default tenant.
    pub tenant: &'a str,
    /// The tenant's folder (the plugin directory itself for the default tenant).
    pub folder: &'a Arc<Folder>,
    /// The operator's `secret_dirs` for this tenant.
    pub secret_dirs: &'a [PathBuf],
    /// Files no manifest may name, as the operator named them (resolved at every open).
    pub protected: &'a [PathBuf],
}

/// A file a manifest named, as it was resolved: re-read later (to notice a rotated Secret) the
/// same confined way.
#[derive(Clone, Debug)]
pub struct FileRef {
    base: Arc<Folder>,
    rel: PathBuf,
}

impl FileRef {
    /// Its bytes now, bounded by `max`.
    pub fn read(&self, max: u64) -> Result<Vec<u8>> {
        self.base.read(&self.rel, max, "the limit")
    }

    pub fn shown(&self) -> PathBuf {
        self.base.path().join(&self.rel)
    }
}

impl Scope<'_> {
    /// Opens `reference` if this tenant may read it, and reads it (at most `max` bytes).
    pub fn read(&self, reference: &str, max: u64) -> Result<(FileRef, Vec<u8>)> {
        let given = Path::new(reference);
        let (base, rel) = if !given.is_absolute() {
            (self.folder.clone(), given.to_path_buf())
        } else if let Ok(rel) = given.strip_prefix(self.folder.path()) {
            (self.folder.clone(), rel.to_path_buf())
        } else if let Some((dir, rel)) =
            self.secret_dirs.iter().find_map(|d| given.strip_prefix(d).ok().map(|r| (d, r)))
        {
            (Arc::new(Folder::open(dir)?), rel.to_path_buf())
        } else {
            bail!(
                "{} is outside the tenant's folder and its secret_dirs (the tenants file lists those)",
                given.display()
            );
        };
        let shown = base.path().join(&rel);
        let (file, meta) = base.file(&rel)?;
        let what = confine::identity(&meta);
        if self.protected.iter().any(|p| std::fs::metadata(p).is_ok_and(|m| confine::identity(&m) == what)) {
            bail!("{} is the server's own key material", shown.display());
        }
        // The default tenant's folder holds the other tenants' folders: not theirs to read.
        if self.tenant.is_empty() && Arc::ptr_eq(&base, self.folder) {
            crate::plugins::confine::outside_tenant_folders(&base, &file, &shown)?;
        }
        let bytes = confine::read_bounded(file, max, &shown, "the limit")?;
        Ok((FileRef { base, rel }, bytes))
    }
}

/// A secret's text: UTF-8, without the trailing line break editors and `kubectl` leave.
pub fn secret_text(path: &Path, bytes: Vec<u8>) -> Result<String> {
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
        // A hard link to the TLS key inside a listed directory is still the TLS key.
        std::fs::hard_link(outside.path().join("tls.key"), outside.path().join("innocent")).unwrap();
        let protected = [outside.path().join("tls.key")];
        let read =
            |scope: &Scope, r: &str| scope.read(r, MAX_SECRET_BYTES).map(|(f, b)| (f, String::from_utf8(b).unwrap()));

        let acme_folder = Arc::new(Folder::open(&acme).unwrap());
        let acme_scope = Scope { tenant: "acme", folder: &acme_folder, secret_dirs: &[], protected: &protected };
        let (file, text) = read(&acme_scope, ".secrets/client").unwrap();
        assert_eq!(secret_text(&file.shown(), text.into_bytes()).unwrap(), "s3cr3t-value");
        assert_eq!(file.read(100).unwrap(), b"s3cr3t-value\n", "re-read the same way");
        assert!(read(&acme_scope, "../root-secret").is_err(), "climbs out");
        assert!(read(&acme_scope, "link").is_err(), "a symlink out, to the TLS key");
        assert!(read(&acme_scope, outside.path().join("mounted").to_str().unwrap()).is_err());
        assert!(read(&acme_scope, "missing").is_err());
        let inside = acme.join(".secrets/client");
        assert!(read(&acme_scope, inside.to_str().unwrap()).is_ok(), "its own folder, named absolutely");

        let dirs = [outside.path().to_path_buf()];
        let listed = Scope { tenant: "acme", folder: &acme_folder, secret_dirs: &dirs, protected: &protected };
        assert_eq!(read(&listed, outside.path().join("mounted").to_str().unwrap()).unwrap().1, "mounted-secret");
        for key in ["tls.key", "innocent"] {
            let e = read(&listed, outside.path().join(key).to_str().unwrap()).unwrap_err().to_string();
            assert!(e.contains("the server's own key material"), "{key}: {e}");
        }
        let sneaky = format!(
            "{}/../{}/tls.key",
            outside.path().display(),
            outside.path().file_name().unwrap().to_str().unwrap()
        );
        assert!(read(&listed, &sneaky).is_err(), "`..` out of a listed directory");

        let root_folder = Arc::new(Folder::open(root.path()).unwrap());
        let default = Scope { tenant: "", folder: &root_folder, secret_dirs: &[], protected: &protected };
        assert!(read(&default, "root-secret").is_ok());
        let e = read(&default, "acme/.secrets/client").unwrap_err().to_string();
        assert!(e.contains("leads into the tenant folder"), "another tenant's folder: {e}");
    }
}
