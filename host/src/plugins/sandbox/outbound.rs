//! Outbound HTTP for plugins: `wasi:http/outgoing-handler`, with nothing granted by default.
//!
//! A plugin that asks its token's issuer (a JWKS, an introspection endpoint) gets exactly the
//! destinations its manifest lists in `allowed_outbound_hosts`, and nothing it could abuse:
//!
//! - **Allow-list**: exact scheme, host and port (`https://idp.example.com` means port 443).
//!   A request anywhere else is refused before anything is resolved or sent. The host never
//!   follows a redirect: a guest that follows one makes a new request, checked again.
//! - **Addresses**: tollgate resolves the name itself and drops loopback, private, link-local
//!   (cloud metadata at 169.254.169.254), unspecified and other non-global addresses, unless
//!   the allow-list names that literal IP. It connects to an address it checked, so a DNS
//!   answer cannot point an allowed name at the node's own services.
//! - **TLS**: verified against the webpki roots, or only against the manifest's CA file.
//! - **Time**: an epoch deadline cannot interrupt a guest blocked in a host call, so every step
//!   (resolve, connect, TLS, first byte, each body chunk, the whole body) ends by the call's
//!   deadline, less a reserve that leaves the guest time to answer `unavailable`.
//! - **Size and load**: the response body is capped; requests in flight are bounded per plugin;
//!   a circuit breaker per destination fails fast while an issuer keeps failing.
//!
//! A refusal is an error the guest sees (`HTTP-request-denied`, `destination-IP-prohibited`...)
//! and a log line naming the tenant, plugin and destination — never a path, header or body.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt as _;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Default cap on one response body: a JWKS or an introspection answer is a few KiB.
pub const DEFAULT_RESPONSE_BYTES: u64 = 1 << 20;
/// The most a manifest may ask for.
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;
/// Default bound on one plugin's requests in flight (across all its reviews).
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Consecutive failures that open a destination's circuit, and for how long it stays open.
const TRIP_AFTER: u32 = 5;
const OPEN_FOR: Duration = Duration::from_secs(5);

/// One allowed destination: scheme, host and port, nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub https: bool,
    /// Lowercase; an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// Parses an allow-list entry: `http(s)://host[:port]`, with no path, query or user info.
    pub fn parse_allowed(entry: &str) -> Result<Self> {
        let uri: http::Uri = entry.parse().with_context(|| format!("{entry:?} is not a URL"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            bail!("{entry:?}: an allowed host is scheme://host[:port], without a path or query");
        }
        Self::from_uri(&uri).with_context(|| format!("{entry:?}"))
    }

    fn from_uri(uri: &http::Uri) -> Result<Self> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("the scheme must be http or https"),
        };
        let authority = uri.authority().context("no host")?;
        if authority.as_str().contains('@') {
            bail!("user info is not allowed");
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() || host.contains('*') {
            bail!("the host must be a name or an IP address (no wildcards)");
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self { https, host, port })
    }

    /// The host as an IP address, if it is a literal one.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match self.literal_ip() {
            Some(IpAddr::V6(_)) => write!(f, "{scheme}://[{}]:{}", self.host, self.port),
            _ => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// True for addresses a plugin may reach only when the allow-list names them literally:
/// loopback, private, link-local (cloud metadata), unspecified, and the other ranges that are
/// not the public internet (shared, benchmarking, documentation, reserved, multicast).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: an IPv4 address in disguise
                || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0) // IPv4-compatible
        }
    }
}

/// What a manifest grants one plugin: built at load, shared by all its calls in one generation.
pub struct OutboundGrant {
    pub allowed: Vec<Destination>,
    /// `None` when no destination is https.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Where the trust anchors come from, for `/status`: "webpki" or the CA file's name.
    pub trust: String,
    pub max_response_bytes: u64,
    in_flight: Arc<Semaphore>,
    breakers: Mutex<HashMap<Destination, Breaker>>,
}

impl fmt::Debug for OutboundGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundGrant")
            .field("allowed", &self.allowed.iter().map(ToString::to_string).collect::<Vec<_>>())
            .field("trust", &self.trust)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl OutboundGrant {
    /// `ca_pem`: the manifest's CA file (then the only trust anchors), with its name.
    pub fn new(
        allowed: &[String],
        ca_pem: Option<(&str, &[u8])>,
        max_response_bytes: u64,
        concurrency: usize,
    ) -> Result<Self> {
        let mut dests = Vec::new();
        for entry in allowed {
            let d = Destination::parse_allowed(entry)?;
            if !dests.contains(&d) {
                dests.push(d);
            }
        }
        let tls = if dests.iter().any(|d| d.https) { Some(tls_config(ca_pem.map(|(_, pem)| pem))?) } else { None };
        Ok(Self {
            allowed: dests,
            tls,
            trust: ca_pem.map_or_else(|| "webpki".to_owned(), |(name, _)| name.to_owned()),
            max_response_bytes: max_response_bytes.clamp(1, MAX_RESPONSE_BYTES),
            in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
            breakers: Mutex::default(),
        })
    }

    /// May a request go to `dest` now? (Its circuit is closed, or has cooled down.)
    fn admit(&self, dest: &Destination, now: Instant) -> bool {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers.get(dest).and_then(|b| b.open_until).is_none_or(|until| now >= until)
    }

    fn record(&self, dest: &Destination, ok: bool) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let b = breakers.entry(dest.clone()).or_default();
        if ok {
            *b = Breaker::default();
        } else {
            b.failures += 1;
            if b.failures >= TRIP_AFTER {
                // After the cool-down one failure opens it again; one success closes it.
                b.open_until = Some(Instant::now() + OPEN_FOR);
            }
        }
    }
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.context("reading the CA file")?).context("adding a CA certificate")?;
            }
            if roots.is_empty() {
                bail!("the CA file holds no certificate");
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What one call's requests are checked against: the plugin's grant (None: nothing granted)
/// and the call's deadline. Lives in the call's store; each request's future owns a copy.
#[derive(Clone)]
pub struct OutboundHooks {
    pub grant: Option<Arc<OutboundGrant>>,
    /// Why there is no grant, for the log and the guest ("no allowed_outbound_hosts", or
    /// "test vectors run without outbound HTTP").
    pub no_grant: &'static str,
    pub deadline: Instant,
    pub tenant: String,
    pub plugin: String,
    pub request_id: String,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let ctx = self.clone();
        Box::new(async move {
            let response = ctx.send(request, options).await?;
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

impl OutboundHooks {
    /// The time a guest keeps, after its last request gave up, to turn that into an answer
    /// (`unavailable`) before the epoch deadline traps it.
    pub fn http_deadline(call_deadline: Instant, budget: Duration) -> Instant {
        let reserve = (budget / 5).min(Duration::from_millis(50));
        call_deadline.checked_sub(reserve).unwrap_or(call_deadline)
    }

    /// Checks, sends and caps one request (its own copy of the hooks, owned by its future).
    async fn send(
        self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let shown = request
            .uri()
            .authority()
            .map(|a| format!("{}://{a}", request.uri().scheme_str().unwrap_or("?")))
            .unwrap_or_else(|| "(no host)".into());
        let Some(grant) = self.grant.clone() else {
            return Err(self.refuse(&shown, self.no_grant, HttpError::HttpRequestDenied));
        };
        let dest = match Destination::from_uri(request.uri()) {
            Ok(d) if grant.allowed.contains(&d) => d,
            Ok(_) => return Err(self.refuse(&shown, "not in allowed_outbound_hosts", HttpError::HttpRequestDenied)),
            Err(_) => return Err(self.refuse(&shown, "not an http(s) URL", HttpError::HttpRequestUriInvalid)),
        };
        let shown = dest.to_string();
        if !grant.admit(&dest, Instant::now()) {
            return Err(self.refuse(
                &shown,
                "its circuit is open after repeated failures",
                HttpError::DestinationUnavailable,
            ));
        }
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let opt = |f: fn(&RequestOptions) -> Option<Duration>| options.as_ref().and_then(f);
        let until = |limit: Option<Duration>| match limit.and_then(|d| tokio::time::Instant::now().checked_add(d)) {
            Some(t) => deadline.min(t),
            None => deadline,
        };

        // A slot among the plugin's requests in flight, held until the body is done.
        let permit = match tokio::time::timeout_at(deadline, grant.in_flight.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(self.refuse(
                    &shown,
                    "too many requests of this plugin in flight",
                    HttpError::ConnectionLimitReached,
                ));
            }
        };

        let connect_by = until(opt(|o| o.connect_timeout));
        let connected = tokio::time::timeout_at(connect_by, self.connect(&grant, &dest)).await;
        let stream = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if !matches!(e, HttpError::DestinationIpProhibited) {
                    grant.record(&dest, false);
                }
                return Err(e);
            }
            Err(_) => {
                grant.record(&dest, false);
                self.note(&shown, "connect timed out");
                return Err(HttpError::ConnectionTimeout);
            }
        };

        let (mut sender, conn) =
            match tokio::time::timeout_at(connect_by, hyper::client::conn::http1::handshake(stream)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    grant.record(&dest, false);
                    return Err(HttpError::Hyper(e));
                }
                Err(_) => {
                    grant.record(&dest, false);
                    return Err(HttpError::ConnectionTimeout);
                }
            };
        // The connection is driven on its own until it ends, and never past the deadline.
        tokio::spawn(async move {
            let _ = tokio::time::timeout_at(deadline, conn).await;
        });

        // Origin form on the wire (the scheme and authority went into the Host header).
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        *request.uri_mut() = match path.parse() {
            Ok(uri) => uri,
            Err(_) => return Err(HttpError::HttpRequestUriInvalid),
        };
        let first_byte_by = until(opt(|o| o.first_byte_timeout));
        let response = match tokio::time::timeout_at(first_byte_by, sender.send_request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                grant.record(&dest, false);
                return Err(HttpError::Hyper(e));
            }
            Err(_) => {
                grant.record(&dest, false);
                self.note(&shown, "no answer before the deadline");
                return Err(HttpError::ConnectionReadTimeout);
            }
        };
        grant.record(&dest, !matches!(response.status().as_u16(), 502..=504));
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > grant.max_response_bytes) {
            self.note(&shown, "response larger than the cap");
            return Err(HttpError::HttpResponseBodySize(declared));
        }
        let between = opt(|o| o.between_bytes_timeout).unwrap_or(Duration::MAX);
        Ok(response.map(|incoming| {
            CappedBody {
                incoming,
                left: grant.max_response_bytes,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                between,
                idle: Box::pin(tokio::time::sleep_until(until(Some(between)))),
                _permit: permit,
            }
            .boxed_unsync()
        }))
    }

    /// Resolves, filters the addresses, connects (and TLS when https).
    async fn connect(&self, grant: &OutboundGrant, dest: &Destination) -> Result<Box<dyn Io>, HttpError> {
        let shown = dest.to_string();
        let literal = dest.literal_ip();
        let candidates: Vec<SocketAddr> = match literal {
            Some(ip) => vec![SocketAddr::new(ip, dest.port)],
            None => match tokio::net::lookup_host((dest.host.as_str(), dest.port)).await {
                Ok(addrs) => addrs.collect(),
                Err(_) => {
                    self.note(&shown, "name resolution failed");
                    return Err(HttpError::DnsError { rcode: Some("resolution failed".into()), info_code: None });
                }
            },
        };
        // Internal addresses only when the allow-list names that very IP.
        let allowed: Vec<SocketAddr> =
            candidates.iter().copied().filter(|a| !is_internal(a.ip()) || literal == Some(a.ip())).collect();
        if allowed.is_empty() {
            return Err(self.refuse(&shown,
                "it resolves only to internal addresses (loopback, private, link-local...) that the allow-list does not name literally",
                HttpError::DestinationIpProhibited,
            ));
        }
        let mut last = None;
        let mut tcp = None;
        for addr in allowed {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(tcp) = tcp else {
            self.note(&shown, "connection refused");
            return Err(last.map_or(HttpError::ConnectionRefused, HttpError::Connect));
        };
        let _ = tcp.set_nodelay(true);
        if !dest.https {
            return Ok(Box::new(wasmtime_wasi_http::io::TokioIo::new(tcp)));
        }
        let Some(tls) = &grant.tls else {
            return Err(HttpError::ConfigurationError);
        };
        let name = match literal {
            Some(ip) => ServerName::from(ip),
            None => ServerName::try_from(dest.host.clone()).map_err(|_| HttpError::HttpRequestUriInvalid)?,
        };
        match tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await {
            Ok(s) => Ok(Box::new(wasmtime_wasi_http::io::TokioIo::new(s))),
            Err(e) => {
                self.note(&shown, &format!("TLS failed: {e}"));
                Err(HttpError::Tls(e))
            }
        }
    }

    /// A refusal by policy (never sent): logged, and the guest gets `code`.
    fn refuse(&self, dest: &str, why: &str, code: HttpError) -> HttpError {
        tracing::warn!(
            target: "tollgate::outbound",
            tenant = %self.tenant,
            plugin = %self.plugin,
            request_id = %self.request_id,
            destination = %dest,
            "outbound request refused: {why}"
        );
        code
    }

    /// A request that went out but failed: info level, the destination only.
    fn note(&self, dest: &str, what: &str) {
        tracing::info!(
            target: "tollgate::outbound",
            tenant = %self.tenant,
            plugin = %self.plugin,
            request_id = %self.request_id,
            destination = %dest,
            "outbound request failed: {what}"
        );
    }
}

/// A connection hyper can drive.
trait Io: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static {}
impl<T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static> Io for T {}

/// A response body that ends with an error when it grows past the cap, stalls longer than the
/// between-bytes timeout, or runs past the call's deadline.
struct CappedBody {
    incoming: hyper::body::Incoming,
    left: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    between: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
        }
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.left {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))));
                    }
                    self.left -= n;
                }
                if let Some(next) = tokio::time::Instant::now().checked_add(self.between) {
                    let by = next.min(self.deadline.deadline());
                    self.idle.as_mut().reset(by);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::Hyper(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.incoming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_entries_are_scheme_host_and_port() {
        let d = Destination::parse_allowed("https://IdP.example.com").unwrap();
        assert_eq!(d, Destination { https: true, host: "idp.example.com".into(), port: 443 });
        assert_eq!(d.to_string(), "https://idp.example.com:443");
        let d = Destination::parse_allowed("http://[::1]:8080/").unwrap();
        assert_eq!(d.literal_ip(), Some("::1".parse().unwrap()));
        assert_eq!(d.to_string(), "http://[::1]:8080");
        for bad in ["idp.example.com", "ftp://x", "https://x/path", "https://u:p@x", "https://*.x", "https://x?q=1"] {
            assert!(Destination::parse_allowed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn a_circuit_opens_after_repeated_failures_and_closes_on_success() {
        let g = OutboundGrant::new(&["http://example.com".into()], None, 1024, 1).unwrap();
        let d = g.allowed[0].clone();
        for _ in 0..TRIP_AFTER - 1 {
            g.record(&d, false);
        }
        assert!(g.admit(&d, Instant::now()));
        g.record(&d, false);
        assert!(!g.admit(&d, Instant::now()));
        assert!(g.admit(&d, Instant::now() + OPEN_FOR), "cooled down");
        g.record(&d, true);
        assert!(g.admit(&d, Instant::now()));
    }
}
