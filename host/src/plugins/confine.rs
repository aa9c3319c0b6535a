//! Reading what a tenant controls: beneath its folder, bounded, never blocking.
//!
//! Everything inside a tenant folder is hostile: a name may be a symlink to another tenant's
//! file or to `/etc`, a FIFO that blocks a reader forever, a sparse file of 50 GB. A [`Folder`]
//! is a directory opened once; every path below it is resolved by the kernel with `openat2`
//! and `RESOLVE_BENEATH`, so symlinks are followed only while they stay inside (kubelet's
//! `..data` layout does) and there is no gap between checking a path and opening it. Files are
//! opened with `O_NONBLOCK`, checked to be regular files on the opened descriptor, and read
//! with a bound. Linux 5.6 or later (openat2) is required.

use std::ffi::{CStr, CString};
use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// How many times a resolution is retried when the kernel reports a concurrent rename
/// (`EAGAIN`): kubelet swapping `..data` is one rename, so a few tries always get through.
const RESOLVE_RETRIES: usize = 8;

/// A directory, opened once; paths below it never resolve outside it.
#[derive(Debug)]
pub struct Folder {
    fd: OwnedFd,
    /// How the operator (or a message) names it.
    path: PathBuf,
}

impl Folder {
    /// Opens a directory the operator named (a flag, the tenants file): its path is trusted and
    /// followed as given.
    pub fn open(path: &Path) -> Result<Folder> {
        let c = cstring(path)?;
        // SAFETY: a valid C string; the returned descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("opening {}", path.display()));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Folder { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A directory beneath this one.
    pub fn dir(&self, rel: &Path) -> Result<Folder> {
        let fd = self.beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(Folder { fd, path: self.path.join(rel) })
    }

    /// A regular file beneath this one, opened without blocking (a FIFO, socket or device in its
    /// place is refused without ever being read), with its metadata.
    pub fn file(&self, rel: &Path) -> Result<(File, Metadata)> {
        let fd = self.beneath(rel, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)?;
        let file = File::from(fd);
        let meta = file.metadata().with_context(|| format!("{}", self.path.join(rel).display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file ({})", self.path.join(rel).display(), kind(&meta));
        }
        Ok((file, meta))
    }

    /// Reads a regular file beneath this one whole, refusing it past `max` bytes without
    /// reading more than that (`what` names the limit in the refusal).
    pub fn read(&self, rel: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
        let (file, _) = self.file(rel)?;
        read_bounded(file, max, &self.path.join(rel), what)
    }

    /// The file type and mode of `rel` without following a final symlink, if it exists.
    pub fn lstat(&self, rel: &Path) -> Option<libc::mode_t> {
        let c = cstring(rel).ok()?;
        // SAFETY: valid descriptor and C string; `st` is written by the kernel.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            (libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0)
                .then_some(st.st_mode)
        }
    }

    /// This folder again, with a descriptor of its own.
    pub fn reopen(&self) -> Result<Folder> {
        Ok(Folder { fd: self.beneath(Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY)?, path: self.path.clone() })
    }

    /// Where the symlink `name` (directly in this folder) points, if it is one.
    pub fn read_link(&self, name: &str) -> Option<PathBuf> {
        let c = CString::new(name).ok()?;
        let mut buf = [0u8; libc::PATH_MAX as usize];
        // SAFETY: valid descriptor, C string and buffer of the given length.
        let n = unsafe { libc::readlinkat(self.fd.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (n >= 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..n as usize])))
    }

    /// The names in this folder (not `.` and `..`), refusing a folder of more than `max`.
    pub fn names(&self, max: usize) -> Result<Vec<String>> {
        // A descriptor of its own: the directory stream owns and closes it.
        let fd = self.beneath(Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let raw = fd.as_raw_fd();
        std::mem::forget(fd);
        // SAFETY: `raw` is an open directory descriptor whose ownership passes to the stream.
        let stream = unsafe { libc::fdopendir(raw) };
        if stream.is_null() {
            // SAFETY: fdopendir failed, so `raw` is still ours to close.
            unsafe { libc::close(raw) };
            return Err(std::io::Error::last_os_error()).with_context(|| format!("listing {}", self.path.display()));
        }
        let mut names = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; readdir's null return is told apart by it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is a valid, open directory stream.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let e = std::io::Error::last_os_error();
                break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e.into()) };
            }
            // SAFETY: readdir returned a valid entry whose name is NUL-terminated.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            let name = name.to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else {
                break Err(anyhow::anyhow!("a file name is not UTF-8"));
            };
            if names.len() == max {
                break Err(anyhow::anyhow!("more than {max} entries"));
            }
            names.push(name.to_owned());
        };
        // SAFETY: closes the stream (and its descriptor) exactly once.
        unsafe { libc::closedir(stream) };
        result.with_context(|| format!("listing {}", self.path.display()))?;
        names.sort();
        Ok(names)
    }

    /// The real path of this folder, as the kernel resolved it.
    pub fn real_path(&self) -> Option<PathBuf> {
        real_path(&self.fd)
    }

    fn beneath(&self, rel: &Path, flags: libc::c_int) -> Result<OwnedFd> {
        let shown = || self.path.join(rel).display().to_string();
        let c = cstring(rel)?;
        // SAFETY: open_how is plain integers; all-zero is its documented default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        for _ in 0..RESOLVE_RETRIES {
            // SAFETY: valid descriptor, C string and open_how of the size passed.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd >= 0 {
                // SAFETY: the kernel returned a new descriptor that nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                Some(libc::EXDEV) => {
                    bail!("{} resolves outside {} (a symlink or `..` leads out)", shown(), self.path.display())
                }
                Some(libc::ELOOP) => bail!("{}: too many symlinks", shown()),
                Some(libc::ENOSYS) => {
                    bail!("{}: openat2 is not available (tollgate needs Linux 5.6 or later)", shown())
                }
                Some(libc::ENOTDIR) if flags & libc::O_DIRECTORY != 0 => bail!("{} is not a directory", shown()),
                Some(libc::ENXIO) => bail!("{} is not a regular file (a socket)", shown()),
                _ => return Err(e).with_context(shown),
            }
        }
        bail!("{}: kept moving while it was opened", shown())
    }
}

/// A DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn valid_tenant_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Refuses an open file of the default tenant that lies in a tenant folder: a name in the
/// plugin directory (or its `..data`) that leads into `acme/` reads acme's files.
pub fn outside_tenant_folders(base: &Folder, file: &std::fs::File, shown: &Path) -> Result<()> {
    let (Some(base), Some(real)) = (base.real_path(), real_path(file)) else {
        bail!("{}: cannot tell where it leads (/proc is needed)", shown.display());
    };
    if let Ok(rel) = real.strip_prefix(&base) {
        let mut parts = rel.components();
        if let (Some(first), Some(_)) = (parts.next(), parts.next())
            && first.as_os_str().to_str().is_some_and(valid_tenant_name)
        {
            bail!("{} leads into the tenant folder {:?}", shown.display(), first.as_os_str());
        }
    }
    Ok(())
}

/// Reads an open file whole, refusing it past `max` bytes without reading more than that.
pub fn read_bounded(file: File, max: u64, shown: &Path, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).with_context(|| format!("reading {}", shown.display()))?;
    if bytes.len() as u64 > max {
        bail!("{} is larger than {what} of {max} bytes", shown.display());
    }
    Ok(bytes)
}

/// The real path of an open descriptor (`/proc/self/fd`); None when it cannot be told.
pub fn real_path(fd: &impl AsRawFd) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// Device and inode: what a file is, whatever the path that reached it.
pub fn identity(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

fn kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| anyhow::anyhow!("{} holds a NUL byte", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mkfifo(path: &Path) {
        let c = cstring(path).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn reads_stay_beneath_the_folder() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside").unwrap();
        let t = root.path().join("t");
        std::fs::create_dir_all(t.join("..2026_01")).unwrap();
        std::fs::write(t.join("..2026_01/a.toml"), "inside").unwrap();
        symlink("..2026_01", t.join("..data")).unwrap();
        symlink("..data/a.toml", t.join("a.toml")).unwrap();
        symlink(outside.path().join("secret"), t.join("abs")).unwrap();
        symlink("../../", t.join("up")).unwrap();
        symlink("..2026_01/../../t/..2026_01/a.toml", t.join("dotdot-inside")).unwrap();
        std::fs::write(root.path().join("sibling"), "sibling").unwrap();
        symlink("../sibling", t.join("rel-out")).unwrap();

        let folder = Folder::open(&t).unwrap();
        assert_eq!(folder.read(Path::new("a.toml"), 100, "x").unwrap(), b"inside", "kubelet's links work");
        assert_eq!(folder.dir(Path::new("..data")).unwrap().read(Path::new("a.toml"), 100, "x").unwrap(), b"inside");
        for out in ["abs", "rel-out", "up/sibling", "../sibling", "/etc/passwd", "dotdot-inside"] {
            let e = folder.read(Path::new(out), 100, "x").unwrap_err().to_string();
            assert!(e.contains("resolves outside"), "{out}: {e}");
        }
        assert!(folder.dir(Path::new("up")).is_err());
    }

    #[test]
    fn fifos_and_directories_are_refused_without_blocking_and_sizes_are_bounded() {
        let root = tempfile::tempdir().unwrap();
        mkfifo(&root.path().join("fifo"));
        std::fs::create_dir(root.path().join("dir")).unwrap();
        let sparse = File::create(root.path().join("sparse")).unwrap();
        sparse.set_len(50 << 30).unwrap();
        let folder = Folder::open(root.path()).unwrap();
        let e = folder.read(Path::new("fifo"), 100, "x").unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");
        let e = folder.read(Path::new("dir"), 100, "x").unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let e = folder.read(Path::new("sparse"), 64 << 10, "the manifest limit").unwrap_err().to_string();
        assert!(e.contains("larger than the manifest limit of 65536 bytes"), "{e}");
    }

    #[test]
    fn listings_are_bounded_and_sorted() {
        let root = tempfile::tempdir().unwrap();
        for n in ["b", "a", ".hidden"] {
            std::fs::write(root.path().join(n), "").unwrap();
        }
        let folder = Folder::open(root.path()).unwrap();
        assert_eq!(folder.names(10).unwrap(), [".hidden", "a", "b"]);
        assert_eq!(folder.names(10).unwrap().len(), 3, "a second listing starts over");
        assert!(format!("{:#}", folder.names(2).unwrap_err()).contains("more than 2 entries"));
    }
}
