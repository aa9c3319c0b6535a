//! Upgrades without an open port (`serve --handover DIR`, README "Upgrades").
//!
//! The running tollgate hands its listening sockets to its successor over a unix socket in a
//! directory only tollgate's user can enter, with `SCM_RIGHTS`. No other process can join the
//! port: the sockets are bound without `SO_REUSEPORT`, so every other bind of their addresses
//! fails, whoever asks; and the successor accepts from the very same kernel sockets, so nothing
//! queued during the switch is lost. The directory is the credential: on Kubernetes a hostPath
//! only tollgate's pods mount, which another container — of the same user or not — cannot reach.
//!
//! The exchange is a line of JSON per message. The successor connects as it starts and says who
//! it is; the running process checks the peer's user (`SO_PEERCRED`) and answers likewise. The
//! successor asks for the probe listener at once (kubelet's probes then reach it, "not ready"
//! until it has loaded, as they would reach a pod of its own), and for the main listener once
//! its first load is done (when it would bind it). Each comes with its descriptor, is checked to
//! be a listening TCP socket bound to the address the successor was given, is served, and is
//! acknowledged: only then does the running process stop accepting on it and drain what it has.
//! Both log the other's pid, version and configuration digest, and count the hand-over.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::observe::metrics::Metrics;

/// The socket's name in the hand-over directory.
const SOCKET: &str = "tollgate.sock";

/// One message each way: both sides are running and answer at once.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Between the probe and the main listener the successor loads every tenant: a Python component
/// compiles for ~25 s on two cores, a large directory of them for minutes.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A message is a line of a few hundred bytes; a longer one is not a tollgate's.
const MAX_MESSAGE: usize = 4096;

/// Which of a server's listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Main,
    Probe,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Probe => "probe",
        }
    }
}

/// What each side says of itself (and logs of the other).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: String,
    /// A digest of the process's command line: two processes of one configuration show the same.
    pub config: String,
    pub main: SocketAddr,
    pub probe: Option<SocketAddr>,
}

impl Hello {
    /// This process: its version, the digest of its arguments, its addresses.
    pub fn this_process(main: SocketAddr, probe: Option<SocketAddr>) -> Hello {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for arg in std::env::args_os() {
            h.update(arg.as_encoded_bytes());
            h.update([0]);
        }
        let config = hex::encode(&h.finalize()[..8]);
        Hello { version: env!("CARGO_PKG_VERSION").to_owned(), config, main, probe }
    }

    fn addr(&self, role: Role) -> Option<SocketAddr> {
        match role {
            Role::Main => Some(self.main),
            Role::Probe => self.probe,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Message {
    Hello(Hello),
    Take(Role),
    /// Carries the listener's descriptor.
    Given(Role),
    Refused(String),
    Serving(Role),
}

/// The operator's hand-over directory, checked.
#[derive(Clone, Debug)]
pub struct Handover {
    dir: PathBuf,
}

impl Handover {
    /// `dir` (the operator's flag, resolved once) must be a directory owned by this process's
    /// user and closed to everyone else: whoever can enter it can take the listeners.
    pub fn open(dir: &Path) -> Result<Handover> {
        let dir = &std::fs::canonicalize(dir).with_context(|| format!("--handover {}", dir.display()))?;
        let meta = std::fs::metadata(dir).with_context(|| format!("--handover {}", dir.display()))?;
        ensure!(meta.is_dir(), "--handover {}: not a directory", dir.display());
        // SAFETY: a plain system call.
        let me = unsafe { libc::geteuid() };
        ensure!(
            meta.uid() == me,
            "--handover {}: owned by uid {}, not by this process's uid {me}: the listeners pass through it, so only tollgate's user may own it",
            dir.display(),
            meta.uid()
        );
        ensure!(
            meta.mode() & 0o077 == 0,
            "--handover {}: mode {:o} lets others in: whoever can enter it can take the listeners (chmod 0700)",
            dir.display(),
            meta.mode() & 0o7777
        );
        Ok(Handover { dir: dir.to_owned() })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    /// Connects to the tollgate serving now, if there is one (none: no socket, or a stale one a
    /// stopped process left).
    pub fn predecessor(&self, me: &Hello) -> Result<Option<Predecessor>> {
        let path = self.socket();
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        };
        let mut link = Link::new(stream)?;
        link.send(&Message::Hello(me.clone()), None)?;
        let hello = match link.receive(MESSAGE_TIMEOUT)? {
            (Message::Hello(h), None) => h,
            (other, _) => bail!("{}: the running tollgate answered {other:?}", path.display()),
        };
        Ok(Some(Predecessor { link, hello }))
    }

    /// Offers this process's listeners to the next successor, on a thread of its own: each one
    /// handed over fires its `handed`. The socket replaces any other in the directory (a
    /// predecessor's, which has given everything, or a stale one).
    pub fn offer(&self, me: Hello, offers: Vec<Offer>, metrics: Arc<Metrics>) -> Result<()> {
        let path = self.socket();
        let tmp = self.dir.join(format!(".{SOCKET}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        std::thread::Builder::new()
            .name("tollgate-handover".into())
            .spawn(move || offer_loop(listener, me, offers, &metrics))
            .context("starting the hand-over thread")?;
        Ok(())
    }
}

/// A listener this process will give away, and what to tell when it has.
pub struct Offer {
    pub role: Role,
    pub fd: OwnedFd,
    pub handed: tokio::sync::oneshot::Sender<()>,
}

/// The tollgate serving now, as its successor talks to it.
pub struct Predecessor {
    link: Link,
    pub hello: Hello,
}

impl Predecessor {
    pub fn pid(&self) -> i32 {
        self.link.peer_pid
    }

    /// Takes its listener of `role` if it has one bound to `addr` (`None` otherwise: bind it).
    /// The caller serves it, then calls [`Self::serving`].
    pub fn take(&mut self, role: Role, addr: SocketAddr) -> Result<Option<std::net::TcpListener>> {
        if self.hello.addr(role) != Some(addr) {
            return Ok(None);
        }
        self.link.send(&Message::Take(role), None)?;
        match self.link.receive(MESSAGE_TIMEOUT)? {
            (Message::Given(r), Some(fd)) if r == role => Ok(Some(checked_listener(fd, addr)?)),
            (Message::Refused(why), None) => {
                tracing::warn!(pid = self.pid(), listener = role.as_str(), %why, "the running tollgate keeps its listener");
                Ok(None)
            }
            (other, _) => {
                bail!("the running tollgate (pid {}) answered {other:?} for the {} listener", self.pid(), role.as_str())
            }
        }
    }

    /// Tells the predecessor this process accepts on its former `role` listener.
    pub fn serving(&mut self, role: Role) -> Result<()> {
        self.link.send(&Message::Serving(role), None)
    }
}

/// A received descriptor, kept only if it is a listening TCP socket bound to `addr`.
fn checked_listener(fd: OwnedFd, addr: SocketAddr) -> Result<std::net::TcpListener> {
    let int = |name: libc::c_int| -> Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a descriptor we own and an int-sized out value.
        let rc = unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, name, std::ptr::from_mut(&mut value).cast(), &mut len)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("the descriptor handed over is not a socket");
        }
        Ok(value)
    };
    ensure!(int(libc::SO_TYPE)? == libc::SOCK_STREAM, "the descriptor handed over is not a stream socket");
    ensure!(int(libc::SO_ACCEPTCONN)? == 1, "the socket handed over is not listening");
    let listener = std::net::TcpListener::from(fd);
    let bound = listener.local_addr().context("reading the address of the socket handed over")?;
    ensure!(bound == addr, "the socket handed over is bound to {bound}, not {addr}");
    Ok(listener)
}

fn offer_loop(listener: UnixListener, me: Hello, mut offers: Vec<Offer>, metrics: &Metrics) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "hand-over socket: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match give(stream, &me, &mut offers, metrics) {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "hand-over refused or cut short"),
        }
        if !offers.iter().any(|o| o.role == Role::Main) {
            // The main listener is gone: nothing left to serve a successor with.
            return;
        }
    }
}

/// One successor's exchange: hands over what it asks for and this process has.
fn give(stream: UnixStream, me: &Hello, offers: &mut Vec<Offer>, metrics: &Metrics) -> Result<()> {
    let mut link = Link::new(stream)?;
    let hello = match link.receive(MESSAGE_TIMEOUT)? {
        (Message::Hello(h), None) => h,
        (other, _) => bail!("a successor began with {other:?}"),
    };
    link.send(&Message::Hello(me.clone()), None)?;
    let pid = link.peer_pid;
    loop {
        let role = match link.receive(LOAD_TIMEOUT) {
            Ok((Message::Take(role), None)) => role,
            Ok((other, _)) => bail!("successor pid {pid} sent {other:?}"),
            // It went away (crashed, or had all it needed).
            Err(_) => return Ok(()),
        };
        let Some(at) = offers.iter().position(|o| o.role == role) else {
            link.send(&Message::Refused(format!("no {} listener here", role.as_str())), None)?;
            continue;
        };
        if hello.addr(role) != me.addr(role) {
            link.send(&Message::Refused(format!("the {} listener here is {:?}", role.as_str(), me.addr(role))), None)?;
            continue;
        }
        link.send(&Message::Given(role), Some(&offers[at].fd))?;
        match link.receive(MESSAGE_TIMEOUT)? {
            (Message::Serving(r), None) if r == role => {}
            (other, _) => bail!("successor pid {pid} took the {} listener and then sent {other:?}", role.as_str()),
        }
        let offer = offers.remove(at);
        let _ = offer.handed.send(());
        metrics.handovers.get_or_create(&handover_label(role, "gave")).inc();
        tracing::info!(
            listener = role.as_str(),
            to_pid = pid,
            to_version = %hello.version,
            to_config = %hello.config,
            config = %me.config,
            "handed the listener over to a successor: no longer accepting on it"
        );
        if hello.config != me.config {
            tracing::warn!(to_pid = pid, "the successor runs another configuration (its command line differs)");
        }
    }
}

pub fn handover_label(role: Role, side: &str) -> crate::observe::metrics::HandoverLabel {
    crate::observe::metrics::HandoverLabel { listener: role.as_str().into(), side: side.into() }
}

/// Logs and counts a listener taken from `predecessor`.
pub fn took(predecessor: &Predecessor, role: Role, me: &Hello, metrics: &Metrics) {
    metrics.handovers.get_or_create(&handover_label(role, "took")).inc();
    let p = &predecessor.hello;
    tracing::info!(
        listener = role.as_str(),
        from_pid = predecessor.pid(),
        from_version = %p.version,
        from_config = %p.config,
        config = %me.config,
        "took the listener over from the running tollgate"
    );
    if p.config != me.config {
        tracing::warn!(
            from_pid = predecessor.pid(),
            "the predecessor ran another configuration (its command line differs)"
        );
    }
}

/// One end of the exchange: newline-delimited JSON, a descriptor riding on a message, the
/// peer's user checked on connect.
struct Link {
    stream: UnixStream,
    peer_pid: i32,
    buffered: Vec<u8>,
}

impl Link {
    fn new(stream: UnixStream) -> Result<Link> {
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: a connected unix socket and a ucred-sized out value.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                std::ptr::from_mut(&mut cred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("reading the hand-over peer's credentials");
        }
        // SAFETY: a plain system call.
        let me = unsafe { libc::geteuid() };
        ensure!(
            cred.uid == me,
            "a hand-over peer of uid {} (pid {}): only this user's processes may take part",
            cred.uid,
            cred.pid
        );
        stream.set_write_timeout(Some(MESSAGE_TIMEOUT)).context("setting a write timeout")?;
        Ok(Link { stream, peer_pid: cred.pid, buffered: Vec::new() })
    }

    fn send(&mut self, message: &Message, fd: Option<&OwnedFd>) -> Result<()> {
        let mut line = serde_json::to_vec(message).context("encoding a hand-over message")?;
        line.push(b'\n');
        match fd {
            None => self.stream.write_all(&line).context("writing to the hand-over peer"),
            Some(fd) => send_with_fd(&self.stream, &line, fd),
        }
    }

    /// The next message, and the descriptor that came with it (at most one is kept: any other
    /// is closed).
    fn receive(&mut self, timeout: Duration) -> Result<(Message, Option<OwnedFd>)> {
        self.stream.set_read_timeout(Some(timeout)).context("setting a read timeout")?;
        let mut fd = None;
        loop {
            if let Some(end) = self.buffered.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffered.drain(..=end).collect();
                let message =
                    serde_json::from_slice(&line).map_err(|e| anyhow!("a hand-over message that is not one: {e}"))?;
                return Ok((message, fd));
            }
            ensure!(self.buffered.len() < MAX_MESSAGE, "a hand-over message longer than {MAX_MESSAGE} bytes");
            let mut chunk = [0u8; 1024];
            let (n, got) = receive_with_fd(&self.stream, &mut chunk)?;
            if let Some(got) = got {
                ensure!(fd.is_none(), "two descriptors with one hand-over message");
                fd = Some(got);
            }
            ensure!(n > 0, "the hand-over peer closed the connection");
            self.buffered.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `sendmsg` of `data` with `fd` as `SCM_RIGHTS`.
fn send_with_fd(stream: &UnixStream, data: &[u8], fd: &OwnedFd) -> Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has room for one header and one int (CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
    }
    // SAFETY: a connected socket and the message built above.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).context("handing a listener over");
    }
    // The descriptor went with the first byte; the rest of the line follows plainly.
    let mut stream = stream;
    stream.write_all(&data[sent as usize..]).context("writing to the hand-over peer")
}

/// `recvmsg` into `buf`: the bytes read, and a descriptor if one came with them.
fn receive_with_fd(stream: &UnixStream, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>)> {
    // Room for a few descriptors: more than one is refused, but each must be received to be closed.
    const MAX_FDS: usize = 4;
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<libc::c_int>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: a connected socket and the buffers above; received descriptors are close-on-exec.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("reading from the hand-over peer");
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    ensure!(msg.msg_flags & libc::MSG_CTRUNC == 0, "too many descriptors from the hand-over peer");
    ensure!(fds.len() <= 1, "{} descriptors with one hand-over message", fds.len());
    Ok((n as usize, fds.pop()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(main: &str) -> Hello {
        Hello { version: "t".into(), config: "c".into(), main: main.parse().unwrap(), probe: None }
    }

    #[test]
    fn the_directory_must_be_tollgates_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(Handover::open(dir.path()).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = format!("{:#}", Handover::open(dir.path()).unwrap_err());
        assert!(err.contains("lets others in"), "{err}");
        // A symlink is resolved, and the directory it names checked.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(format!("{:#}", Handover::open(&link).unwrap_err()).contains("lets others in"));
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(format!("{:#}", Handover::open(&file).unwrap_err()).contains("not a directory"));
    }

    #[test]
    fn a_listener_crosses_with_its_checks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let handover = Handover::open(dir.path()).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let (handed, was_handed) = tokio::sync::oneshot::channel();
        let metrics = Arc::new(Metrics::new());
        let offers = vec![Offer { role: Role::Main, fd: OwnedFd::from(tcp.try_clone().unwrap()), handed }];
        handover.offer(hello(&addr.to_string()), offers, metrics.clone()).unwrap();

        let me = hello(&addr.to_string());
        let mut p = handover.predecessor(&me).unwrap().expect("a predecessor");
        assert_eq!(p.pid(), std::process::id() as i32);
        assert!(p.take(Role::Probe, addr).unwrap().is_none(), "no probe listener was offered");
        let taken = p.take(Role::Main, addr).unwrap().expect("the main listener");
        p.serving(Role::Main).unwrap();
        // The very same socket: a connection queued on it is accepted through the copy.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert!(taken.accept().is_ok());
        was_handed.blocking_recv().unwrap();
        // A listener that is not the one asked for is refused by the taker.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = checked_listener(OwnedFd::from(other), addr).unwrap_err();
        assert!(format!("{err:#}").contains("not"), "{err:#}");
    }
}
