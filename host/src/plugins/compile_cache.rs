//! Compiled components on disk (`--cache-dir`), so a restart compiles nothing that did not
//! change: a Python component takes seconds to compile and milliseconds to load.
//!
//! Compiled code is machine code, and loading it is `unsafe` in wasmtime. So the cache lives
//! outside the plugin directory (mode 0700, ours), and every entry carries an HMAC-SHA256 tag under
//! a key kept beside it (mode 0600): an entry is deserialized only once its tag checks out. A bad,
//! foreign or stale entry is discarded and rebuilt.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const KEY_FILE: &str = "key";
const TAG_LEN: usize = 32;

pub struct DiskCache {
    dir: PathBuf,
    key: Vec<u8>,
    /// The engine's compatibility hash: code compiled by another wasmtime or configuration is
    /// a different entry, never a load error.
    engine: String,
    max_bytes: u64,
}

impl DiskCache {
    /// Opens (creating if needed) the cache at `dir`, refusing one that others could write or read.
    pub fn open(dir: &Path, engine_hash: String, max_bytes: u64) -> Result<Self> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating cache dir {}", dir.display()))?;
        }
        let meta = fs::metadata(dir).with_context(|| format!("cache dir {}", dir.display()))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            bail!(
                "cache dir {} must be a directory owned by this user with mode 0700 (it holds machine code this process runs)",
                dir.display()
            );
        }
        let key_path = dir.join(KEY_FILE);
        if !key_path.exists() {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .with_context(|| format!("creating {}", key_path.display()))?;
            f.write_all(&rand::random::<[u8; 32]>()).context("writing the cache key")?;
            f.sync_all().context("writing the cache key")?;
        }
        let key_meta = fs::metadata(&key_path).with_context(|| format!("{}", key_path.display()))?;
        if key_meta.uid() != uid || key_meta.permissions().mode() & 0o077 != 0 {
            bail!("cache key {} must be owned by this user with mode 0600", key_path.display());
        }
        let key = fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        if key.len() < 32 {
            bail!("cache key {} is too short", key_path.display());
        }
        Ok(Self { dir: dir.to_path_buf(), key, engine: engine_hash, max_bytes })
    }

    fn entry(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join(format!("{hex}-{}.cwasm", self.engine))
    }

    fn tag(&self, digest: &str, serialized: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(self.engine.as_bytes());
        mac.update(b"\0");
        mac.update(digest.as_bytes());
        mac.update(b"\0");
        mac.update(serialized);
        mac
    }

    /// The authenticated compiled bytes for `digest`, if the cache holds a good entry. A bad
    /// entry is removed.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.entry(digest);
        let mut bytes = fs::read(&path).ok()?;
        if bytes.len() < TAG_LEN || self.tag(digest, &bytes[TAG_LEN..]).verify_slice(&bytes[..TAG_LEN]).is_err() {
            tracing::warn!(entry = %path.display(), "compile cache entry failed authentication: discarded");
            self.discard(digest);
            return None;
        }
        // Mark it used, for eviction (least recently used goes first).
        let _ = fs::File::open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        bytes.drain(..TAG_LEN);
        Some(bytes)
    }

    pub fn discard(&self, digest: &str) {
        let _ = fs::remove_file(self.entry(digest));
    }

    /// Stores compiled bytes (atomically: a reader never sees half an entry), then evicts the
    /// least recently used entries beyond the size bound.
    pub fn put(&self, digest: &str, serialized: &[u8]) -> Result<()> {
        let path = self.entry(digest);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&self.tag(digest, serialized).finalize().into_bytes())?;
        f.write_all(serialized)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        self.evict();
        Ok(())
    }

    fn evict(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
                tracing::info!(entry = %path.display(), "compile cache full: evicted");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path) -> DiskCache {
        DiskCache::open(dir, "engine1".into(), 1 << 20).unwrap()
    }

    #[test]
    fn round_trips_and_refuses_tampered_or_foreign_entries() {
        let tmp = std::env::temp_dir().join(format!("tollgate-cc-{}", rand::random::<u64>()));
        let c = cache(&tmp.join("cache"));
        c.put("sha256:aa", b"compiled").unwrap();
        assert_eq!(c.get("sha256:aa").as_deref(), Some(&b"compiled"[..]));
        // Tampered: one byte flipped.
        let path = c.entry("sha256:aa");
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(c.get("sha256:aa"), None);
        assert!(!path.exists(), "a bad entry is discarded");
        // Another key (another cache's entry copied in): refused.
        c.put("sha256:bb", b"compiled").unwrap();
        let other = DiskCache { key: vec![9; 32], ..cache(&tmp.join("cache")) };
        assert_eq!(other.get("sha256:bb"), None);
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn refuses_a_cache_dir_others_can_reach() {
        let tmp = std::env::temp_dir().join(format!("tollgate-cc-{}", rand::random::<u64>()));
        fs::create_dir_all(&tmp).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(DiskCache::open(&tmp, "e".into(), 1).is_err());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_bound() {
        let tmp = std::env::temp_dir().join(format!("tollgate-cc-{}", rand::random::<u64>()));
        let c = DiskCache::open(&tmp, "e".into(), 150).unwrap();
        c.put("sha256:01", &[0; 100]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.put("sha256:02", &[0; 100]).unwrap();
        assert!(c.get("sha256:01").is_none(), "the older entry went");
        assert!(c.get("sha256:02").is_some());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
