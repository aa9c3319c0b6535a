//! Write tollgate policies in Rust.
//!
//! A policy is one function from a [`Review`] to a [`Decision`]:
//!
//! ```ignore
//! use tollgate_sdk::{Decision, Grant, Policy, Review};
//!
//! struct Hello;
//!
//! impl Policy for Hello {
//!     fn authenticate(review: Review) -> Decision {
//!         match review.token.strip_prefix("hello-") {
//!             Some(name) => Decision::Allow(Grant::user(name).groups(["greeted"])),
//!             None => Decision::Abstain,
//!         }
//!     }
//! }
//!
//! tollgate_sdk::export_policy!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` is the plugin. On the
//! machine itself (not wasm), [`testing`] stands in for the host so a policy can be unit-tested
//! with plain `cargo test`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "__export_policy_bindings",
    default_bindings_module: "tollgate_sdk",
});

pub use tollgate::policy::host::Level;
pub use tollgate::policy::types::{Decision, Grant, Prior, Review, UserInfo};

/// A policy: what tollgate calls for each review.
pub trait Policy {
    fn authenticate(review: Review) -> Decision;
}

/// Exports a [`Policy`] as the plugin's `tollgate:policy/authenticator`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        pub struct __TollgateExport;

        #[cfg(target_arch = "wasm32")]
        impl $crate::exports::tollgate::policy::authenticator::Guest for __TollgateExport {
            fn authenticate(review: $crate::Review) -> $crate::Decision {
                <$policy as $crate::Policy>::authenticate(review)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::__export_policy_bindings!(__TollgateExport with_types_in $crate);
    };
}

/// A value of the plugin's manifest `[config]` table.
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        tollgate::policy::host::config(key)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        testing::config(key)
    }
}

/// The keys of the plugin's `[config]` table, sorted.
pub fn config_keys() -> Vec<String> {
    #[cfg(target_arch = "wasm32")]
    {
        tollgate::policy::host::config_keys()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        testing::config_keys()
    }
}

/// Writes a log line; the host tags it with tenant, plugin and request id, removes the token
/// from it and caps its length.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        tollgate::policy::host::log(level, message)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        testing::log(level, message)
    }
}

pub fn debug(message: &str) {
    log(Level::Debug, message)
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

impl Grant {
    /// A grant for `username`, with no uid, groups, extra, audiences or expiry.
    pub fn user(username: impl Into<String>) -> Self {
        Grant {
            user: UserInfo { username: username.into(), uid: String::new(), groups: Vec::new(), extra: Vec::new() },
            audiences: Vec::new(),
            expires_at: None,
        }
    }

    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.user.uid = uid.into();
        self
    }

    pub fn groups<S: Into<String>>(mut self, groups: impl IntoIterator<Item = S>) -> Self {
        self.user.groups.extend(groups.into_iter().map(Into::into));
        self
    }

    pub fn extra<S: Into<String>>(mut self, key: impl Into<String>, values: impl IntoIterator<Item = S>) -> Self {
        self.user.extra.push((key.into(), values.into_iter().map(Into::into).collect()));
        self
    }

    /// The audiences the token is valid for (none stated = kube-apiserver's implicit ones).
    pub fn audiences<S: Into<String>>(mut self, audiences: impl IntoIterator<Item = S>) -> Self {
        self.audiences.extend(audiences.into_iter().map(Into::into));
        self
    }

    /// When the token stops being valid (unix seconds).
    pub fn expires_at(mut self, unix_seconds: u64) -> Self {
        self.expires_at = Some(unix_seconds);
        self
    }
}

impl Decision {
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision::Deny(reason.into())
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        Decision::Unavailable(reason.into())
    }
}

/// Stand-ins for the host, for unit tests on the machine itself (not wasm).
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::{Level, Review};

    thread_local! {
        static CONFIG: RefCell<BTreeMap<String, String>> = RefCell::default();
        static LOGS: RefCell<Vec<(Level, String)>> = RefCell::default();
        static KV: RefCell<BTreeMap<String, Vec<u8>>> = RefCell::default();
        #[allow(clippy::type_complexity, reason = "a test stand-in")]
        static HTTP: RefCell<Option<Box<dyn Fn(&str, &str) -> Result<super::http::Response, String>>>> = RefCell::default();
    }

    /// Answers this thread's `http` requests with `f(method, url)` (default: every request
    /// fails, as in a test vector).
    pub fn set_http(f: impl Fn(&str, &str) -> Result<super::http::Response, String> + 'static) {
        HTTP.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    pub(crate) fn http(
        method: &str,
        https: bool,
        authority: &str,
        path: &str,
    ) -> Result<super::http::Response, String> {
        let url = format!("{}://{authority}{path}", if https { "https" } else { "http" });
        HTTP.with(|h| match &*h.borrow() {
            Some(f) => f(method, &url),
            None => Err("HttpRequestDenied".into()),
        })
    }

    pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
        KV.with(|k| k.borrow().get(key).cloned())
    }

    pub(crate) fn kv_set(key: &str, value: &[u8], _ttl: u32) -> Result<(), String> {
        KV.with(|k| k.borrow_mut().insert(key.to_owned(), value.to_vec()));
        Ok(())
    }

    pub(crate) fn kv_delete(key: &str) {
        KV.with(|k| k.borrow_mut().remove(key));
    }

    /// Empties this thread's cache.
    pub fn clear_kv() {
        KV.with(|k| k.borrow_mut().clear());
    }

    /// Sets this thread's `[config]` table, as a manifest would.
    pub fn set_config<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) {
        CONFIG.with(|c| *c.borrow_mut() = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
    }

    /// The log lines written on this thread so far (and clears them).
    pub fn take_logs() -> Vec<(Level, String)> {
        LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    /// A review of `token` as an authenticator sees it.
    pub fn review(token: &str) -> Review {
        Review {
            token: token.into(),
            audiences: Vec::new(),
            tenant: String::new(),
            current: None,
            request_id: "test".into(),
            client: None,
            attributes: Vec::new(),
        }
    }

    /// A review as a mapper sees it: no token, `grant` as the current grant.
    pub fn mapper_review(grant: super::Grant) -> Review {
        Review { current: Some(super::Prior { grant, plugin: "test".into() }), ..review("") }
    }

    pub(crate) fn config(key: &str) -> Option<String> {
        CONFIG.with(|c| c.borrow().get(key).cloned())
    }

    pub(crate) fn config_keys() -> Vec<String> {
        CONFIG.with(|c| c.borrow().keys().cloned().collect())
    }

    pub(crate) fn log(level: Level, message: &str) {
        LOGS.with(|l| l.borrow_mut().push((level, message.to_owned())));
    }
}

/// The plugin's own cache (`tollgate:policy/kv`, contract 0.1.1): what it fetched from its
/// issuer survives the fresh instance of each review. Bounded per plugin, private to it in its
/// tenant, emptied when the tenant reloads; an entry may be evicted before its time.
pub mod kv {
    /// The value under `key`, unless it expired or was evicted.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        #[cfg(target_arch = "wasm32")]
        {
            crate::tollgate::policy::kv::get(key)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::kv_get(key)
        }
    }

    /// Stores `value` under `key` for `ttl_seconds` (at least 1; the host caps it at a day).
    pub fn set(key: &str, value: &[u8], ttl_seconds: u32) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        {
            crate::tollgate::policy::kv::set(key, value, ttl_seconds)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::kv_set(key, value, ttl_seconds)
        }
    }

    pub fn delete(key: &str) {
        #[cfg(target_arch = "wasm32")]
        {
            crate::tollgate::policy::kv::delete(key)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            crate::testing::kv_delete(key)
        }
    }
}

/// Cryptography done by the host at native speed (`tollgate:policy/crypto`, contract 0.1.2): a
/// signed JWT verified in tens of microseconds instead of milliseconds of bignum arithmetic in
/// the sandbox. On the machine itself (unit tests) the very same code runs in-process.
pub mod crypto {
    /// Why a JWS was not verified (see `wit/policy.wit`, `jws-error`): `Malformed`, `Algorithm`,
    /// `NoKey` (fetching the JWKS again may help), `BadSignature`, `Jwks`.
    pub use tollgate_crypto::JwsError;
    /// A JWS whose signature the host verified: `alg`, `key_id`, `header` and `payload` (the
    /// claims, JSON text: yours to check). Its `Debug` leaves the payload out.
    pub use tollgate_crypto::Verified;

    /// Verifies `compact` (a signed JWT) against the keys of `jwks` (a JWKS document's text),
    /// with one of `allowed_algs` (RS256/384/512, PS256/384/512, ES256/384, EdDSA). Pass the
    /// same JWKS text on every call: the host keeps it parsed.
    pub fn verify_jws(compact: &str, jwks: &str, allowed_algs: &[&str]) -> Result<Verified, JwsError> {
        let allowed: Vec<String> = allowed_algs.iter().map(|a| (*a).to_owned()).collect();
        #[cfg(target_arch = "wasm32")]
        {
            use crate::tollgate::policy::crypto as host;
            match host::verify_jws(compact, jwks, &allowed) {
                Ok(v) => Ok(Verified { alg: v.alg, key_id: v.key_id, header: v.header, payload: v.payload }),
                Err(host::JwsError::Malformed(m)) => Err(JwsError::Malformed(m)),
                Err(host::JwsError::Algorithm(m)) => Err(JwsError::Algorithm(m)),
                Err(host::JwsError::NoKey(m)) => Err(JwsError::NoKey(m)),
                Err(host::JwsError::BadSignature) => Err(JwsError::BadSignature),
                Err(host::JwsError::Jwks(m)) => Err(JwsError::Jwks(m)),
            }
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            use tollgate_crypto as native;
            let keys = native::KeySet::parse(jwks)?;
            native::verify_jws(compact, &keys, &allowed)
        }
    }

    /// SHA-256 of `data` (at most 1 MiB; more traps, as the host does).
    pub fn sha256(data: &[u8]) -> [u8; 32] {
        #[cfg(target_arch = "wasm32")]
        let digest = crate::tollgate::policy::crypto::sha256(data);
        #[cfg(not(target_arch = "wasm32"))]
        let digest = tollgate_crypto::sha256(data).expect("crypto::sha256 takes at most 1 MiB").to_vec();
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        out
    }

    /// HMAC-SHA-256 of `data` under `key` (at most 1 MiB of each; more traps).
    pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
        #[cfg(target_arch = "wasm32")]
        let mac = crate::tollgate::policy::crypto::hmac_sha256(key, data);
        #[cfg(not(target_arch = "wasm32"))]
        let mac = tollgate_crypto::hmac_sha256(key, data).expect("crypto::hmac_sha256 takes at most 1 MiB").to_vec();
        let mut out = [0u8; 32];
        out.copy_from_slice(&mac);
        out
    }

    /// Whether `a == b`, in time that depends only on their lengths: compare digests of
    /// secrets with this.
    pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        #[cfg(target_arch = "wasm32")]
        {
            crate::tollgate::policy::crypto::constant_time_eq(a, b)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            tollgate_crypto::constant_time_eq(a, b)
        }
    }
}

/// Outbound HTTP through `wasi:http/outgoing-handler`: only to the destinations the plugin's
/// manifest lists in `allowed_outbound_hosts` (anything else fails with `HttpRequestDenied`),
/// never past the plugin's deadline, never in a test vector. Redirects are not followed.
pub mod http {
    /// An answer, read whole.
    #[derive(Debug, Clone)]
    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, Vec<u8>)>,
        pub body: Vec<u8>,
    }

    impl Response {
        /// The first value of header `name` (case-insensitive), as text.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        }
    }

    /// `GET url`.
    pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        send("GET", url, headers, None)
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body.
    pub fn post_form(url: &str, headers: &[(&str, &str)], form: &str) -> Result<Response, String> {
        let mut all = headers.to_vec();
        all.push(("content-type", "application/x-www-form-urlencoded"));
        send("POST", url, &all, Some(form.as_bytes()))
    }

    /// Percent-encodes a form value (`application/x-www-form-urlencoded`).
    pub fn form_encode(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for b in value.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    /// Sends one request; the error says why in one line (never the body).
    pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<Response, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("not an http(s) URL: {url}"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        imp::send(method, https, authority, &path, headers, body)
    }

    #[cfg(target_arch = "wasm32")]
    mod imp {
        use super::Response;
        use wasip2::http::outgoing_handler;
        use wasip2::http::types::{Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
        use wasip2::io::streams::StreamError;

        pub fn send(
            method: &str,
            https: bool,
            authority: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Option<&[u8]>,
        ) -> Result<Response, String> {
            let entries: Vec<(String, Vec<u8>)> =
                headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())).collect();
            let fields = Fields::from_list(&entries).map_err(|e| format!("bad header: {e:?}"))?;
            let request = OutgoingRequest::new(fields);
            let method = match method {
                "GET" => Method::Get,
                "POST" => Method::Post,
                "HEAD" => Method::Head,
                "PUT" => Method::Put,
                "DELETE" => Method::Delete,
                other => Method::Other(other.to_owned()),
            };
            request.set_method(&method).map_err(|()| "bad method".to_string())?;
            request.set_scheme(Some(if https { &Scheme::Https } else { &Scheme::Http })).map_err(|()| "bad scheme")?;
            request.set_authority(Some(authority)).map_err(|()| format!("bad host {authority:?}"))?;
            request.set_path_with_query(Some(path)).map_err(|()| "bad path".to_string())?;
            let outgoing = request.body().map_err(|()| "request body unavailable".to_string())?;
            let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
            if let Some(bytes) = body {
                let stream = outgoing.write().map_err(|()| "request body stream unavailable".to_string())?;
                for chunk in bytes.chunks(4096) {
                    stream.blocking_write_and_flush(chunk).map_err(|e| format!("writing the request: {e:?}"))?;
                }
                drop(stream);
            }
            OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
            let response = loop {
                match future.get() {
                    Some(result) => break result.map_err(|()| "response taken twice".to_string())?,
                    None => future.subscribe().block(),
                }
            }
            .map_err(|e| format!("{e:?}"))?;
            let status = response.status();
            let headers = response.headers().entries();
            let incoming = response.consume().map_err(|()| "response body unavailable".to_string())?;
            let stream = incoming.stream().map_err(|()| "response body stream unavailable".to_string())?;
            let mut body = Vec::new();
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(format!("reading the response: {}", e.to_debug_string()));
                    }
                }
            }
            drop(stream);
            let _ = IncomingBody::finish(incoming);
            Ok(Response { status, headers, body })
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod imp {
        pub fn send(
            method: &str,
            https: bool,
            authority: &str,
            path: &str,
            _headers: &[(&str, &str)],
            _body: Option<&[u8]>,
        ) -> Result<super::Response, String> {
            crate::testing::http(method, https, authority, path)
        }
    }
}
