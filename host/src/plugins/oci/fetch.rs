//! The read side of the registry protocol (OCI distribution: `HEAD` and `GET` of manifests and
//! blobs, and the token exchange), with bounds of tollgate's own. `oci-client` and `sigstore`
//! read every answer whole — manifests, configs, signatures, token and error answers — so a
//! registry streaming gigabytes made the server hold them at every poll; here every body is read
//! under a cap the caller names, and the transfer is cut off past it. Pushes (`tollgate push`,
//! `sign`: towards the operator's own registry) still go through those crates.
//!
//! A cluster's egress proxy is honoured as reqwest (and so those crates) honours it:
//! `HTTPS_PROXY` or `ALL_PROXY` (or their lowercase), unless `NO_PROXY` names the host; the
//! connection is then a `CONNECT` tunnel, and TLS inside it is the registry's as when direct.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use oci_client::Reference;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::Access;

/// Connecting, the TLS handshake, an answer's head, and each read of its body: a registry slower
/// than this is down (the poll fails, the last verified generation stays).
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(30);

/// An error answer is read this far, for its message only: a registry's JSON errors are a line.
const MAX_ERROR_BYTES: u64 = 4 << 10;
/// A token server's answer: a JWT and a few fields (Docker Hub's, GHCR's and ECR's are a few KiB).
const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// Redirects one request follows: registries send a blob to their storage once (S3, a CDN).
const MAX_REDIRECTS: usize = 5;
/// A proxy's answer to `CONNECT`: a status line and a few headers (squid's is ~100 bytes).
const MAX_PROXY_HEAD_BYTES: usize = 4 << 10;

/// What a manifest GET accepts (oci-client's list): the image manifests, and the indexes that
/// `plugin_manifest` then refuses by name.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A bound on one document, with the name it is set by, said in the refusal.
#[derive(Clone, Copy, Debug)]
pub struct Cap {
    pub bytes: u64,
    pub name: &'static str,
}

/// One repository of one registry, over HTTPS: its credentials from the auth file, its CA and
/// the public roots (webpki-roots: no dependence on the image's CA bundle).
pub struct Client {
    registry: String,
    repository: String,
    tls: Arc<rustls::ClientConfig>,
    credentials: Option<(String, String)>,
    /// The `Authorization` that worked (learnt at the first 401), for the following requests.
    authorization: Mutex<Option<String>>,
    proxy: ProxyEnv,
}

/// An answer whose body is still to be read (its connection lives as long as it does).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: hyper::body::Incoming,
    shown: String,
    _connection: Connection,
}

/// The task driving one connection, ended when its answer is dropped: a body cut off is never
/// read further in the background.
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Client {
    pub fn new(access: &Access, image: &Reference) -> Result<Self> {
        let registry = image.resolve_registry().to_owned();
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for pem in access.extra_roots()? {
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.context("reading the registry CA")?).context("adding the registry CA")?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            credentials: access.credentials(&registry)?,
            registry,
            repository: image.repository().to_owned(),
            tls: Arc::new(tls),
            authorization: Mutex::new(None),
            proxy: ProxyEnv::read(|name| std::env::var(name).ok()),
        })
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!("https://{}/v2/{}/{kind}/{reference}", self.registry, self.repository)
    }

    /// The digest `reference` (a tag or a digest) names now: the registry's `Docker-Content-Digest`
    /// of a HEAD, or, when it sends none, the SHA-256 of the manifest (read under `cap`).
    pub async fn manifest_digest(&self, reference: &str, cap: Cap) -> Result<String> {
        let url = self.url("manifests", reference);
        let answer = self.request(Method::HEAD, &url, MANIFEST_TYPES).await?;
        let answer = answer.success().await?;
        let named = answer.headers.get("docker-content-digest").and_then(|v| v.to_str().ok());
        if let Some(digest) = named.filter(|d| super::is_sha256_digest(d)) {
            return Ok(digest.to_owned());
        }
        let raw = self.manifest(reference, cap).await?.with_context(|| format!("{url}: no such manifest"))?;
        Ok(super::sha256_digest(&raw))
    }

    /// The manifest `reference` names, read under `cap`; `None` when the registry has none.
    pub async fn manifest(&self, reference: &str, cap: Cap) -> Result<Option<Vec<u8>>> {
        let url = self.url("manifests", reference);
        let answer = self.request(Method::GET, &url, MANIFEST_TYPES).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        answer.success().await?.read(cap).await.map(Some)
    }

    /// The blob `digest`, exactly `size` bytes (what the verified manifest says), refused before
    /// the transfer when that is more than `cap`, cut off when the registry sends more, and
    /// checked against its digest.
    pub async fn blob(&self, digest: &str, size: u64, cap: Cap) -> Result<Vec<u8>> {
        let url = self.url("blobs", digest);
        if size > cap.bytes {
            bail!("{url}: its descriptor says {size} bytes, more than {} ({} bytes)", cap.name, cap.bytes);
        }
        let answer = self.request(Method::GET, &url, "*/*").await?.success().await?;
        let data = answer.read(Cap { bytes: size, name: "the size its descriptor says" }).await?;
        anyhow::ensure!(data.len() as u64 == size, "{url}: {} bytes, not the {size} its descriptor says", data.len());
        anyhow::ensure!(super::sha256_digest(&data) == digest, "{url}: its content does not match its digest");
        Ok(data)
    }

    /// A request with the registry's authorization: none at first, then what its 401 asks for
    /// (basic credentials, or a bearer token from its token server).
    async fn request(&self, method: Method, url: &str, accept: &str) -> Result<Answer> {
        let known = self.authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let answer = self.follow(&method, url, accept, known.as_deref()).await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        let challenge = answer.headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let challenge = challenge.to_owned();
        drop(answer);
        let authorization = self.authorize(&challenge).await.with_context(|| format!("{method} {url}"))?;
        *self.authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(authorization.clone());
        self.follow(&method, url, accept, Some(&authorization)).await
    }

    /// The `Authorization` a 401's challenge asks for.
    async fn authorize(&self, challenge: &str) -> Result<String> {
        use base64::Engine as _;
        let basic = self.credentials.as_ref().map(|(user, password)| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.with_context(|| {
                format!("the registry asks for credentials (401) and the auth file has none for {}", self.registry)
            });
        }
        anyhow::ensure!(scheme.eq_ignore_ascii_case("bearer"), "401 with an unknown challenge {challenge:?}");
        let params = challenge_params(params);
        let param = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let realm = param("realm").context("a bearer challenge without a realm")?;
        anyhow::ensure!(realm.starts_with("https://"), "the token server {realm:?} is not HTTPS");
        let scope = param("scope").map_or_else(|| format!("repository:{}:pull", self.repository), str::to_owned);
        let mut url = format!("{realm}{}scope={}", if realm.contains('?') { '&' } else { '?' }, encode(&scope));
        if let Some(service) = param("service") {
            url.push_str(&format!("&service={}", encode(service)));
        }
        let answer = self.follow(&Method::GET, &url, "application/json", basic.as_deref()).await?;
        let body = answer.success().await?.read(Cap { bytes: MAX_TOKEN_BYTES, name: "a token answer's bound" }).await?;
        let token: serde_json::Value =
            serde_json::from_slice(&body).context("the token server's answer is not JSON")?;
        let token =
            token["token"].as_str().or(token["access_token"].as_str()).context("the token server sent no token")?;
        Ok(format!("Bearer {token}"))
    }

    /// Sends one request and follows redirects (HTTPS only); `authorization` goes to the first
    /// URL's host only, never to the storage a redirect names.
    async fn follow(&self, method: &Method, url: &str, accept: &str, authorization: Option<&str>) -> Result<Answer> {
        let mut uri: Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
        let origin = uri.authority().cloned();
        for _ in 0..=MAX_REDIRECTS {
            let here = authorization.filter(|_| uri.authority() == origin.as_ref());
            let answer = self.send(method, &uri, accept, here).await?;
            let location = answer.headers.get(header::LOCATION).and_then(|v| v.to_str().ok());
            match location.filter(|_| answer.status.is_redirection()) {
                Some(location) => uri = redirect(&uri, location)?,
                None => return Ok(answer),
            }
        }
        bail!("{method} {url}: more than {MAX_REDIRECTS} redirects")
    }

    /// One request on a connection of its own.
    async fn send(&self, method: &Method, uri: &Uri, accept: &str, authorization: Option<&str>) -> Result<Answer> {
        let shown = format!("{method} {uri}");
        anyhow::ensure!(uri.scheme_str() == Some("https"), "{shown}: not HTTPS");
        let authority = uri.authority().with_context(|| format!("{shown}: no host"))?.clone();
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(443);
        let tcp = self.proxy.connect(&host, port).await.with_context(|| shown.clone())?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host).with_context(|| format!("{shown}: not a host name"))?;
        let tls = tokio::time::timeout(
            REGISTRY_TIMEOUT,
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(within("no TLS handshake"))
        .and_then(|r| r.context("TLS"))
        .with_context(|| shown.clone())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .with_context(|| format!("{shown}: HTTP"))?;
        let connection = Connection(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, accept);
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request.body(Empty::<Bytes>::new()).with_context(|| format!("{shown}: the request"))?;
        let response = tokio::time::timeout(REGISTRY_TIMEOUT, sender.send_request(request))
            .await
            .map_err(within("no answer"))
            .and_then(|r| r.context("no answer"))
            .with_context(|| shown.clone())?;
        let (parts, body) = response.into_parts();
        Ok(Answer { status: parts.status, headers: parts.headers, body, shown, _connection: connection })
    }
}

/// The error of a step that did not happen in time.
fn within(what: &'static str) -> impl Fn(tokio::time::error::Elapsed) -> anyhow::Error {
    move |_| anyhow::anyhow!("{what} within {REGISTRY_TIMEOUT:?}")
}

/// The proxy settings of the environment, as curl and reqwest read them for HTTPS: the first set
/// of `HTTPS_PROXY`, `https_proxy`, `ALL_PROXY`, `all_proxy` (with its name, for errors: the
/// value may hold a password), and `NO_PROXY` (or `no_proxy`). `HTTP_PROXY` is for plain HTTP,
/// which no registry is spoken to over.
#[derive(Default)]
struct ProxyEnv {
    proxy: Option<(&'static str, String)>,
    no_proxy: String,
}

impl ProxyEnv {
    fn read(var: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: &[&'static str]| {
            names.iter().find_map(|&name| Some((name, var(name).filter(|v| !v.trim().is_empty())?)))
        };
        let proxy = first(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]);
        Self { proxy, no_proxy: first(&["NO_PROXY", "no_proxy"]).map(|(_, v)| v).unwrap_or_default() }
    }

    /// The proxy `host:port` is reached through, if one applies to it.
    fn for_host(&self, host: &str, port: u16) -> Result<Option<Proxy>> {
        match &self.proxy {
            Some((name, value)) if !bypasses(&self.no_proxy, host, port) => Proxy::parse(name, value).map(Some),
            _ => Ok(None),
        }
    }

    /// A connection to `host:port`: direct, or a `CONNECT` tunnel through the proxy the
    /// environment names for that host. What goes inside is the same either way — TLS with the
    /// registry's name and certificate, its credentials — so the proxy sees a host name and
    /// ciphertext, and only its own credentials (`Proxy-Authorization`).
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream> {
        let tcp = |host: String, port: u16| async move {
            tokio::time::timeout(REGISTRY_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(within("no connection"))
                .and_then(|r| r.context("connecting"))
        };
        let Some(proxy) = self.for_host(host, port)? else { return tcp(host.to_owned(), port).await };
        // Named by its host and port only: never its credentials, in an error or a log.
        let at = format!("the proxy {}:{}", proxy.host, proxy.port);
        let mut tcp = tcp(proxy.host, proxy.port).await.with_context(|| at.clone())?;
        let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = &proxy.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        let head = tokio::time::timeout(REGISTRY_TIMEOUT, async {
            tcp.write_all(request.as_bytes()).await?;
            // Byte by byte: what follows the head is the registry's TLS, not to be read here.
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") && head.len() < MAX_PROXY_HEAD_BYTES {
                head.push(tcp.read_u8().await?);
            }
            std::io::Result::Ok(head)
        })
        .await
        .map_err(within("no answer to CONNECT"))
        .and_then(|r| r.context("CONNECT"))
        .with_context(|| at.clone())?;
        anyhow::ensure!(head.ends_with(b"\r\n\r\n"), "{at}: an answer to CONNECT over {MAX_PROXY_HEAD_BYTES} bytes");
        let line = String::from_utf8_lossy(&head);
        let line: String = line.lines().next().unwrap_or("").chars().filter(|c| !c.is_control()).take(200).collect();
        let status = line.strip_prefix("HTTP/1.").and_then(|l| l.split_whitespace().nth(1)?.parse::<u16>().ok());
        anyhow::ensure!(
            status.is_some_and(|s| (200..300).contains(&s)),
            "{at} refused the tunnel to {target}: {line:?}"
        );
        Ok(tcp)
    }
}

/// An HTTP proxy, `http://[user:password@]host[:port]`, tunnelled through with `CONNECT`.
struct Proxy {
    host: String,
    port: u16,
    /// `Basic` of the URL's user and password: for the proxy, in the `CONNECT` only.
    authorization: Option<String>,
}

impl Proxy {
    /// The proxy `value` (of the variable `name`) names, read as reqwest reads it (no scheme is
    /// `http://`). An `https://` or SOCKS proxy is refused, not gone around: going direct is what
    /// an egress policy forbids. Errors name the variable, never its value (it may hold a password).
    fn parse(name: &str, value: &str) -> Result<Self> {
        use base64::Engine as _;
        let uri: Uri = value.trim().parse().map_err(|_| anyhow::anyhow!("{name} is not a proxy URL"))?;
        if let Some(scheme) = uri.scheme_str().filter(|s| !s.eq_ignore_ascii_case("http")) {
            bail!("{name}: a {scheme}:// proxy is not supported (only http://host:port, tunnelling with CONNECT)");
        }
        let authority = uri.authority().with_context(|| format!("{name} names no proxy host"))?;
        let authorization = authority.as_str().rsplit_once('@').map(|(userinfo, _)| {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let basic = format!("{}:{}", decode(user), decode(password));
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(basic))
        });
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        // The http:// port when the URL names none, as reqwest (curl says 1080).
        Ok(Self { host, port: authority.port_u16().unwrap_or(80), authorization })
    }
}

/// Whether `NO_PROXY` (a comma-separated list, read as curl and reqwest read it) says to reach
/// `host:port` directly: `*` is every host; a domain (`example.com` or `.example.com`) is it and
/// its subdomains; an IP address or network (`10.0.0.0/8`, `fd00::/8`) is those addresses; an
/// entry with a port (`host:5000`, `[::1]:5000`) is that port only; case does not matter.
/// Loopback is not special (nor is it to curl or reqwest): a proxy applies unless this names it.
fn bypasses(no_proxy: &str, host: &str, port: u16) -> bool {
    let ip = host.parse::<IpAddr>().ok();
    no_proxy.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        let (name, wanted) = match entry.strip_prefix('[').and_then(|e| e.split_once(']')) {
            Some((name, rest)) => (name, rest.strip_prefix(':')),
            None => match entry.rsplit_once(':') {
                Some((name, port)) if !name.contains(':') => (name, Some(port)),
                _ => (entry, None),
            },
        };
        if wanted.is_some_and(|p| p.parse() != Ok(port)) {
            return false;
        }
        let (h, n) = (host.as_bytes(), name.trim_start_matches('.').as_bytes());
        match ip {
            _ if name == "*" => true,
            Some(ip) => name.parse() == Ok(ip) || in_network(ip, name),
            None => {
                h.eq_ignore_ascii_case(n)
                    || (h.len() > n.len()
                        && h[h.len() - n.len() - 1] == b'.'
                        && h[h.len() - n.len()..].eq_ignore_ascii_case(n))
            }
        }
    })
}

/// Whether `ip` is in the network `entry` names (`ADDRESS/BITS`).
fn in_network(ip: IpAddr, entry: &str) -> bool {
    let Some((net, bits)) = entry.split_once('/') else { return false };
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else { return false };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            (u32::from(a) ^ u32::from(n)).checked_shr(32 - bits).unwrap_or(0) == 0
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            (u128::from(a) ^ u128::from(n)).checked_shr(128 - bits).unwrap_or(0) == 0
        }
        _ => false,
    }
}

impl Answer {
    /// This answer if it is a success; else an error with its status and the start of its body.
    async fn success(self) -> Result<Self> {
        if self.status.is_success() {
            return Ok(self);
        }
        let (status, shown) = (self.status, self.shown.clone());
        let body = self.read_some(MAX_ERROR_BYTES).await;
        let text: String = String::from_utf8_lossy(&body).chars().filter(|c| !c.is_control()).take(300).collect();
        bail!("{shown}: {status}{}{}", if text.is_empty() { "" } else { ": " }, text.trim())
    }

    /// The body, at most `cap` bytes: refused when it announces more, cut off when it sends more.
    async fn read(mut self, cap: Cap) -> Result<Vec<u8>> {
        let too_big = |what: String| anyhow::anyhow!("{}: {what} than {} ({} bytes)", self.shown, cap.name, cap.bytes);
        let announced = self.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(length) = announced.filter(|n| *n > cap.bytes) {
            return Err(too_big(format!("not read: it announces {length} bytes, more")));
        }
        let mut data = Vec::with_capacity(announced.unwrap_or(0).min(cap.bytes) as usize);
        loop {
            let frame = tokio::time::timeout(REGISTRY_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| anyhow::anyhow!("{}: the body stalled for {REGISTRY_TIMEOUT:?}", self.shown))?;
            let Some(frame) = frame else { return Ok(data) };
            let frame = frame.with_context(|| format!("{}: reading the body", self.shown))?;
            if let Ok(chunk) = frame.into_data() {
                if (data.len() + chunk.len()) as u64 > cap.bytes {
                    return Err(too_big("cut off: the registry sent more".into()));
                }
                data.extend_from_slice(&chunk);
            }
        }
    }

    /// Up to `max` bytes of the body, for a message (whatever fails just ends it).
    async fn read_some(mut self, max: u64) -> Vec<u8> {
        let mut data = Vec::new();
        while (data.len() as u64) < max {
            let Ok(Some(Ok(frame))) = tokio::time::timeout(REGISTRY_TIMEOUT, self.body.frame()).await else { break };
            if let Ok(chunk) = frame.into_data() {
                let room = (max as usize).saturating_sub(data.len()).min(chunk.len());
                data.extend_from_slice(&chunk[..room]);
            }
        }
        data
    }
}

/// Where a redirect goes: an absolute HTTPS URL, or a path on the same host.
fn redirect(from: &Uri, location: &str) -> Result<Uri> {
    let to = if location.starts_with('/') {
        let authority = from.authority().context("a redirect from a URL without a host")?;
        format!("https://{authority}{location}")
    } else {
        location.to_owned()
    };
    let uri: Uri = to.parse().with_context(|| format!("redirected to {location:?}, not a URL"))?;
    anyhow::ensure!(uri.scheme_str() == Some("https"), "redirected to {location:?}, not HTTPS");
    Ok(uri)
}

/// The `key="value"` pairs of a challenge (values quoted or not; commas inside quotes kept).
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (quoted[..end].to_owned(), &quoted[end + 1..]),
                None => (quoted.to_owned(), ""),
            },
            None => match after.find(',') {
                Some(end) => (after[..end].trim().to_owned(), &after[end..]),
                None => (after.trim().to_owned(), ""),
            },
        };
        params.push((key, value));
        rest = next.trim_start().trim_start_matches(',');
    }
    params
}

/// Percent-decoding of a URL's user or password (`%40` for an `@` in it).
fn decode(text: &str) -> String {
    let (bytes, mut out, mut i) = (text.as_bytes(), Vec::new(), 0);
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| bytes[i] == b'%' && h.iter().all(u8::is_ascii_hexdigit));
        if let Some(byte) = hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()) {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding of a query value (everything but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_redirects_are_read_as_registries_write_them() {
        let params = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
        let from: Uri = "https://r.example/v2/a/blobs/sha256:00".parse().unwrap();
        assert_eq!(redirect(&from, "/storage/x?y=1").unwrap().to_string(), "https://r.example/storage/x?y=1");
        assert_eq!(redirect(&from, "https://cdn.example/x").unwrap().host(), Some("cdn.example"));
        assert!(redirect(&from, "http://cdn.example/x").is_err(), "no downgrade to plain HTTP");
    }

    #[test]
    fn no_proxy_is_read_as_curl_and_reqwest_read_it() {
        let table = [
            ("", "registry.example", 443, false),
            ("*", "registry.example", 443, true),
            ("other.org, *", "127.0.0.1", 5000, true),
            ("example.com", "example.com", 443, true),
            ("example.com", "r.example.com", 443, true),
            (".example.com", "example.com", 443, true),
            (".example.com", "a.r.example.com", 443, true),
            ("example.com", "notexample.com", 443, false),
            ("r.example.com", "example.com", 443, false),
            ("EXAMPLE.com", "R.Example.COM", 443, true),
            (" other.org ,example.com ", "r.example.com", 443, true),
            ("other.org,,", "r.example.com", 443, false),
            ("example.com:443", "r.example.com", 443, true),
            ("example.com:5000", "r.example.com", 443, false),
            ("example.com:nope", "r.example.com", 443, false),
            ("127.0.0.1", "127.0.0.1", 5000, true),
            ("127.0.0.1:5000", "127.0.0.1", 5000, true),
            ("127.0.0.1:5001", "127.0.0.1", 5000, false),
            ("10.0.0.1", "10.0.0.10", 443, false),
            ("10.0.0.0/8", "10.1.2.3", 443, true),
            ("10.0.0.0/8", "11.1.2.3", 443, false),
            ("0.0.0.0/0", "192.0.2.1", 443, true),
            ("::1", "::1", 443, true),
            ("[::1]:443", "::1", 443, true),
            ("[::1]:5000", "::1", 443, false),
            ("fd00::/8", "fd12::1", 443, true),
            ("fd00::/8", "fe80::1", 443, false),
            // Loopback is not special: only what the list names goes direct.
            ("", "127.0.0.1", 5000, false),
            ("", "localhost", 5000, false),
            ("localhost", "127.0.0.1", 5000, false),
            ("127.0.0.1", "localhost", 5000, false),
        ];
        for (no_proxy, host, port, direct) in table {
            assert_eq!(bypasses(no_proxy, host, port), direct, "NO_PROXY={no_proxy:?} for {host}:{port}");
        }
    }

    #[test]
    fn the_proxy_is_taken_from_the_environment_as_reqwest_takes_it() {
        let env = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            ProxyEnv::read(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        };
        let proxied = |env: &ProxyEnv, host: &str| env.for_host(host, 443).unwrap().map(|p| (p.host, p.port));
        assert_eq!(proxied(&env(&[]), "r.example"), None);
        assert_eq!(proxied(&env(&[("HTTP_PROXY", "http://p:3128")]), "r.example"), None, "plain HTTP's only");
        let all = env(&[("all_proxy", "http://all:1"), ("no_proxy", ".internal")]);
        assert_eq!(proxied(&all, "r.example"), Some(("all".into(), 1)));
        assert_eq!(proxied(&all, "r.internal"), None);
        let both = env(&[("ALL_PROXY", "http://all:1"), ("https_proxy", "http://https:2"), ("HTTPS_PROXY", "")]);
        assert_eq!(proxied(&both, "r.example"), Some(("https".into(), 2)), "HTTPS_PROXY first, empty is unset");
        assert_eq!(proxied(&env(&[("HTTPS_PROXY", "proxy.corp:3128")]), "r"), Some(("proxy.corp".into(), 3128)));
        assert_eq!(proxied(&env(&[("HTTPS_PROXY", "http://proxy.corp/")]), "r"), Some(("proxy.corp".into(), 80)));
        assert_eq!(proxied(&env(&[("HTTPS_PROXY", "http://[::1]:8080")]), "r"), Some(("::1".into(), 8080)));

        let with_password = env(&[("HTTPS_PROXY", "http://egress:p%40ss:w@proxy.corp:3128")]);
        let proxy = with_password.for_host("r.example", 443).unwrap().unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.corp", 3128));
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode("egress:p@ss:w");
        assert_eq!(proxy.authorization, Some(format!("Basic {basic}")));
        assert_eq!(
            env(&[("HTTPS_PROXY", "http://proxy.corp:3128")]).for_host("r", 443).unwrap().unwrap().authorization,
            None
        );

        // Refused, not gone around; the error names the variable, never the password.
        for (value, says) in [
            ("https://egress:hunter2@proxy.corp:3128", "a https:// proxy is not supported"),
            ("socks5h://egress:hunter2@proxy.corp:1080", "a socks5h:// proxy is not supported"),
            ("http://egress:hunter2@/", "HTTPS_PROXY"),
        ] {
            let refused = env(&[("HTTPS_PROXY", value)]).for_host("r.example", 443).err().map(|e| format!("{e:#}"));
            let refused = refused.unwrap_or_else(|| panic!("{value} accepted"));
            assert!(refused.contains(says) && refused.contains("HTTPS_PROXY"), "{refused}");
            assert!(!refused.contains("hunter2"), "{refused}");
        }
        let bypassed = env(&[("HTTPS_PROXY", "socks5://proxy.corp"), ("NO_PROXY", "r.example")]);
        assert!(bypassed.for_host("r.example", 443).unwrap().is_none(), "a proxy that does not apply is not read");
    }

    /// A proxy answering `answer` to one `CONNECT`, then echoing (or, answering nothing, hanging
    /// up): what it was asked, and the environment naming it.
    async fn fake_proxy(answer: &'static [u8]) -> (tokio::task::JoinHandle<Vec<u8>>, ProxyEnv) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://user:secret@{}", listener.local_addr().unwrap());
        let asked = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut asked = Vec::new();
            while !asked.ends_with(b"\r\n\r\n") {
                asked.push(tcp.read_u8().await.unwrap());
            }
            let _ = tcp.write_all(answer).await;
            let mut echo = [0; 5];
            if !answer.is_empty() && tcp.read_exact(&mut echo).await.is_ok() {
                let _ = tcp.write_all(&echo).await;
            }
            asked
        });
        (asked, ProxyEnv { proxy: Some(("HTTPS_PROXY", url)), no_proxy: String::new() })
    }

    #[tokio::test]
    async fn the_tunnel_is_asked_for_and_its_answer_read_under_a_bound() {
        let (asked, env) = fake_proxy(b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n").await;
        let mut tcp = env.connect("r.example", 443).await.unwrap();
        tcp.write_all(b"hello").await.unwrap();
        let mut echo = [0; 5];
        tcp.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hello", "after the head, the tunnel is the caller's");
        let asked = String::from_utf8(asked.await.unwrap()).unwrap();
        assert_eq!(
            asked,
            "CONNECT r.example:443 HTTP/1.1\r\nHost: r.example:443\r\nProxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n\r\n"
        );
        let (asked, env) = fake_proxy(b"HTTP/1.1 200 OK\r\n\r\n").await;
        env.connect("::1", 5000).await.unwrap();
        assert!(
            String::from_utf8(asked.await.unwrap())
                .unwrap()
                .starts_with("CONNECT [::1]:5000 HTTP/1.1\r\nHost: [::1]:5000\r\n")
        );

        let (_, env) =
            fake_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n").await;
        let refused = format!("{:#}", env.connect("r.example", 443).await.err().unwrap());
        assert!(refused.contains("refused the tunnel to r.example:443") && refused.contains("407"), "{refused}");
        assert!(!refused.contains("secret"), "{refused}");
        let endless: &'static [u8] = Vec::leak([b"HTTP/1.1 200 OK\r\n".as_slice(), &[b'x'; 8 << 10]].concat());
        let (_, env) = fake_proxy(endless).await;
        let refused = format!("{:#}", env.connect("r.example", 443).await.err().unwrap());
        assert!(refused.contains("an answer to CONNECT over 4096 bytes"), "{refused}");
        let (_, env) = fake_proxy(b"").await;
        assert!(env.connect("r.example", 443).await.is_err(), "a proxy that hangs up");
    }
}
