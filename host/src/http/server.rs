//! The HTTP API (SPEC §5): `fn app(state) -> Router`, separate from how it is served.
//!
//! kube-apiserver's webhook client decides what a good answer is: only 2xx counts, 500/502/504/429
//! and anything with `Retry-After` are retried five times, 503 and other 4xx are not, a clean
//! denial is cached and a `status.error` is not. So: decisions are 200, overload and unavailability
//! are 503 without `Retry-After`, bad requests are 4xx `Status` objects, and nothing is ever 3xx.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::json;

use crate::http::review::{self, Status, TokenReview, User};
use crate::observe::audit::{AuditLine, AuditLog, rfc3339};
use crate::observe::metrics::{LookupLabel, Metrics};
use crate::observe::scrub::Scrubber;
use crate::policy::chain::{Outcome, ReviewInput, Verdict};
use crate::policy::decision_cache::{DecisionCache, Lookup};
use crate::policy::evaluator::Evaluator;
use crate::policy::values::ClientIdentity;
use crate::tenants::registry::Registry;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// `/readyz` answers 503 while any tenant's newest files are refused.
    pub require_all_tenants: bool,
    /// Larger bodies are refused with 413. 64 KiB holds an 8 KiB JWT many times over.
    pub max_body_bytes: usize,
    /// Put the deny reason in `status.error` (makes denials uncacheable; off by default).
    pub deny_reason_in_status: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { max_body_bytes: 64 * 1024, deny_reason_in_status: false, require_all_tenants: false }
    }
}

pub struct AppState {
    pub registry: Arc<Registry>,
    pub evaluator: Evaluator,
    /// `--cache-ttl`: off (None) by default.
    pub decisions: Option<DecisionCache>,
    pub metrics: Arc<Metrics>,
    pub audit: AuditLog,
    pub http: HttpSettings,
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/authenticate", post(authenticate_default))
        .route("/authenticate/{tenant}", post(authenticate_tenant))
        .route("/status", get(status))
        .merge(probes())
        .fallback(|| async { AppError::NotFound("no such path".into()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
}

/// The probe and observability routes, also served alone on `--probe-listen`, which no client
/// certificate guards: what they tell is for anyone who can reach the port.
pub fn probes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// `probes()` and the short `/status`: the probe listener's routes. The full `/status` (match
/// prefixes, refusal reasons — text that may hold a tenant's data) is on the main listener only.
pub fn probe_app() -> Router<Arc<AppState>> {
    probes().route("/status", get(status_summary))
}

/// Everything that is not a decision, as Kubernetes answers it: a `Status` object.
#[derive(Debug)]
pub enum AppError {
    BadRequest(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed,
    PayloadTooLarge(usize),
    /// The body did not arrive within [`BODY_TIMEOUT`].
    RequestTimeout,
    UnsupportedMediaType,
    Unavailable(String),
}

impl AppError {
    fn code(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let code = self.code();
        let (reason, message) = match self {
            AppError::BadRequest(m) => ("BadRequest", m),
            AppError::Forbidden(m) => ("Forbidden", m),
            AppError::NotFound(m) => ("NotFound", m),
            AppError::MethodNotAllowed => ("MethodNotAllowed", "the method is not allowed on this path".into()),
            AppError::PayloadTooLarge(max) => ("RequestEntityTooLarge", format!("the body is larger than {max} bytes")),
            AppError::RequestTimeout => ("Timeout", format!("the body did not arrive within {BODY_TIMEOUT:?}")),
            AppError::UnsupportedMediaType => {
                ("UnsupportedMediaType", "the body must be a TokenReview as application/json".into())
            }
            AppError::Unavailable(m) => ("ServiceUnavailable", m),
        };
        json_response(code, review::status_object(code.as_u16(), reason, &message))
    }
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (code, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn authenticate_default(State(state): State<Arc<AppState>>, request: Request) -> Response {
    authenticate(state, String::new(), request).await
}

async fn authenticate_tenant(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    authenticate(state, tenant, request).await
}

async fn authenticate(state: Arc<AppState>, tenant: String, request: Request) -> Response {
    match review_request(&state, &tenant, request).await {
        Ok(response) => response,
        Err(e) => {
            state.metrics.rejected(e.code().as_u16());
            e.into_response()
        }
    }
}

async fn review_request(state: &AppState, tenant: &str, request: Request) -> Result<Response, AppError> {
    let started = Instant::now();
    let identity = request.extensions().get::<ClientIdentity>().cloned();
    let caller = identity.as_ref().map(|c| c.subject.clone());
    let (parts, body) = request.into_parts();
    // The body is read (bounded) before any answer: an HTTP/2 answer sent while the client is
    // still streaming its body ends in a stream reset that some clients report as an error.
    let body = read_body(body, state.http.max_body_bytes).await?;
    let tenant_state = state.registry.get(tenant).ok_or_else(|| AppError::NotFound("no such tenant".into()))?;
    check_content_type(&parts.headers)?;
    let token_review = TokenReview::parse(&body).map_err(|e| AppError::BadRequest(e.0))?;
    drop(body);
    let generation = tenant_state
        .live
        .clone()
        .ok_or_else(|| AppError::Unavailable("this tenant's plugins could not be loaded".into()))?;
    let rules = tenant_state.rules.clone();
    if !rules.admits(identity.as_ref()) {
        return Err(AppError::Forbidden("this caller may not use this tenant".into()));
    }
    // The operator changed what this tenant's plugins may load (secrets, egress, bounds) and
    // they have not been loaded again under the new rules yet: never serve the looser ones.
    if !generation.built_under.same_load_rules(&rules) {
        return Err(AppError::Unavailable("this tenant's plugins are being reloaded under new rules".into()));
    }

    let request_id = new_request_id();
    // An ECDSA token's twin `(r, n - s)` is computed here, once: the token and its twin are one
    // token to the host (one `token_id`, one cache entry: [`ReviewInput::identity`]), and both
    // are scrubbed. Plugins still get the token as it arrived.
    let input = ReviewInput::new(token_review.token, token_review.audiences, caller.clone(), request_id.clone());
    let audiences = input.audiences.clone();
    let identity = input.identity().to_owned();
    let (token_for_scrub, twin) = (input.token.clone(), input.twin.as_ref().map(|t| t.token.clone()));
    let run = state.evaluator.evaluate(&tenant_state.slots, generation.clone(), rules, input);
    let (verdict, lookup) = match &state.decisions {
        Some(cache) => {
            // Everything a plugin sees (the token by its canonical form), and everything its
            // answer was checked against.
            let key = cache.key(tenant, tenant_state.epoch, caller.as_deref(), &identity, &audiences);
            let (verdict, lookup) = cache.get_or_run(key, run).await;
            state.metrics.decision_cache.get_or_create(&LookupLabel { result: lookup.as_str().into() }).inc();
            state.metrics.decision_cache_entries.set(cache.len() as i64);
            (verdict, Some(lookup))
        }
        None => (run.await, None),
    };
    let elapsed = started.elapsed();
    let outcome = verdict.outcome.class();
    state.metrics.record(tenant, &generation.meters, outcome, verdict.rule(), verdict.calls(), elapsed.as_secs_f64());

    let scrubber = Scrubber::new(&token_for_scrub).with_twin(twin.as_deref());
    let api_version = token_review.api_version;
    let (code, body, reason) = render(&verdict, api_version, &request_id, state.http.deny_reason_in_status, &scrubber);
    // Skipped whole with `--audit-log off`: the fingerprint is an HMAC per review.
    if state.audit.enabled() {
        let (username, groups) = match &verdict.outcome {
            Outcome::Authenticated { user, .. } => (Some(user.username.as_str()), Some(user.groups.as_slice())),
            _ => (None, None),
        };
        let error_class = match &verdict.outcome {
            Outcome::Failed { class, .. } => Some(*class),
            Outcome::Denied { rule: Some(rule), .. } => Some(*rule),
            _ => None,
        };
        state.audit.write(&AuditLine {
            token_id: state.audit.fingerprints.token_id(&identity),
            time: rfc3339(SystemTime::now()),
            request_id: &request_id,
            tenant,
            generation: generation.number,
            api_version: api_version.as_str(),
            audiences: &audiences,
            caller: caller.as_deref(),
            authenticated: matches!(verdict.outcome, Outcome::Authenticated { .. }),
            username,
            groups,
            plugin: verdict.decided_by.as_ref().map(|(n, _)| n.as_str()),
            digest: verdict.decided_by.as_ref().map(|(_, d)| d.as_str()),
            result: verdict.outcome.class(),
            error_class,
            reason: reason.as_deref(),
            cache: lookup.map(Lookup::as_str),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
        });
    }
    Ok(json_response(code, body))
}

/// The answer for a verdict (status code and body), and the reason for the audit line
/// (scrubbed). The HTTP handler and `tollgate review` both answer through it.
pub fn render(
    verdict: &Verdict,
    api_version: review::ApiVersion,
    request_id: &str,
    deny_reason_in_status: bool,
    scrubber: &Scrubber,
) -> (StatusCode, Vec<u8>, Option<String>) {
    let clean = |s: &str| scrubber.clean(s, crate::plugins::sandbox::REASON_BYTES);
    let ok = |status: Status| (StatusCode::OK, review::answer(api_version, &status));
    let unavailable = |message: String| {
        let code = StatusCode::SERVICE_UNAVAILABLE;
        (code, review::status_object(code.as_u16(), "ServiceUnavailable", &message))
    };
    let ((code, body), reason) = match &verdict.outcome {
        Outcome::Authenticated { user, audiences, .. } => {
            let status = Status {
                authenticated: true,
                user: Some(User::from(user.clone())),
                audiences: audiences.clone(),
                error: None,
            };
            (ok(status), None)
        }
        Outcome::Denied { reason, .. } => {
            let reason = clean(reason);
            let error = deny_reason_in_status.then(|| reason.clone());
            (ok(Status { error, ..Default::default() }), Some(reason))
        }
        Outcome::Failed { plugin, message, .. } => {
            let message = clean(message);
            tracing::warn!(request_id, plugin = %plugin, "plugin failed: {message}");
            let error = format!("plugin {plugin} failed (ref {request_id})");
            (ok(Status { error: Some(error), ..Default::default() }), Some(message))
        }
        Outcome::Internal => {
            let error = format!("internal error (ref {request_id})");
            (ok(Status { error: Some(error), ..Default::default() }), None)
        }
        Outcome::Unavailable { reason } => {
            let message = format!("the token's issuer cannot be reached now (ref {request_id})");
            (unavailable(message), Some(clean(reason)))
        }
        Outcome::Deadline => (unavailable(format!("the review ran past its deadline (ref {request_id})")), None),
        Outcome::Overloaded => (unavailable(format!("tollgate is overloaded (ref {request_id})")), None),
    };
    (code, body, reason)
}

fn check_content_type(headers: &HeaderMap) -> Result<(), AppError> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    match essence {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(AppError::UnsupportedMediaType),
    }
}

/// A TokenReview is a few KiB sent at once: a body that trickles in (a byte a second) is cut
/// here, on HTTP/1.1 and HTTP/2 alike, instead of holding a connection and a buffer.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn read_body(body: Body, max: usize) -> Result<bytes::Bytes, AppError> {
    let limited = http_body_util::Limited::new(body, max);
    let Ok(collected) = tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await else {
        return Err(AppError::RequestTimeout);
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(AppError::PayloadTooLarge(max)),
        Err(_) => Err(AppError::BadRequest("the body could not be read".into())),
    }
}

/// 16 hex characters: unique enough to find a review's log lines, short enough to quote.
pub fn new_request_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.registry.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the first load is not done").into_response();
    }
    if state.http.require_all_tenants {
        let refused: Vec<String> =
            state.registry.snapshot().values().filter(|t| t.refused_now).map(|t| format!("{:?}", t.name)).collect();
        if !refused.is_empty() {
            let message = format!("tenants refused: {}", refused.join(", "));
            return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
        }
    }
    (StatusCode::OK, "ok").into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Per tenant: served or not, refused now or not, the live generation and its plugin digests
/// (so an operator can see replicas converge), and when the last refusal was; never why.
async fn status_summary(State(state): State<Arc<AppState>>) -> Response {
    let tenants: Vec<_> = state
        .registry
        .snapshot()
        .values()
        .map(|t| {
            json!({
                "tenant": t.name,
                "served": t.live.is_some(),
                "refused_now": t.refused_now,
                "generation": t.live.as_ref().map(|g| g.number),
                "digests": t.live.as_ref().map(|g| g.plugins.iter().map(|p| p.digest()).collect::<Vec<_>>()),
                "last_refusal_at": t.refusal.as_ref().map(|r| rfc3339(r.at)),
            })
        })
        .collect();
    let tenants_file_refused_at = state.registry.tenants_file_error().map(|r| rfc3339(r.at));
    let body = json!({ "tenants": tenants, "tenants_file_refused_at": tenants_file_refused_at,
        "full_view": "GET /status on the main listener" });
    json_response(StatusCode::OK, serde_json::to_vec_pretty(&body).unwrap_or_default())
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    let tenants: Vec<_> = state
        .registry
        .snapshot()
        .values()
        .map(|t| {
            let live = t.live.as_ref().map(|g| {
                json!({
                    "generation": g.number,
                    "loaded_at": rfc3339(g.loaded_at),
                    "plugins": g.plugins.iter().map(|p| json!({
                        "name": p.name,
                        "role": p.role.as_str(),
                        "digest": p.digest(),
                        "match": p.matcher.as_ref().map(|m| json!({"token_prefix": m.token_prefix, "jwt_issuer": m.jwt_issuer})),
                        "timeout_ms": p.env.timeout.as_millis() as u64,
                        "memory_mib": p.env.memory_bytes >> 20,
                        "vectors": p.tests.len(),
                    })).collect::<Vec<_>>(),
                })
            });
            json!({
                "tenant": t.name,
                "served": live.is_some(),
                "refused_now": t.refused_now,
                "live": live,
                "last_refusal": t.refusal.as_ref().map(|r| json!({"at": rfc3339(r.at), "reason": r.reason})),
            })
        })
        .collect();
    let tenants_file =
        state.registry.tenants_file_error().map(|r| json!({"last_refusal": {"at": rfc3339(r.at), "reason": r.reason}}));
    let body = json!({ "tenants": tenants, "tenants_file": tenants_file });
    json_response(StatusCode::OK, serde_json::to_vec_pretty(&body).unwrap_or_default())
}
