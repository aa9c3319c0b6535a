//! The ceiling of the end-to-end benchmark: a bare axum server answering the same TokenReview
//! (same JSON in, same JSON out) with the same policy code compiled natively — no sandbox, no
//! evaluation pool, no audit, no metrics. What tollgate adds on top of this is the price of
//! hot-swappable, sandboxed, audited rules.
//!
//! `ceiling [ADDR]` (default 127.0.0.1:0); prints `listening on http://ADDR` when ready.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use tollgate_bench::fixtures;
use tollgate_bench::native::NativeChain;

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    spec: Option<WireSpec>,
}

#[derive(Deserialize)]
struct WireSpec {
    token: Option<String>,
    audiences: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Answer<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'static str,
    status: Status,
}

#[derive(Serialize)]
struct Status {
    authenticated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User>,
}

#[derive(Serialize)]
struct User {
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extra: std::collections::BTreeMap<String, Vec<String>>,
}

async fn authenticate(State(chain): State<Arc<NativeChain>>, body: Bytes) -> Response {
    let Ok(wire) = serde_json::from_slice::<Wire>(&body) else {
        return (StatusCode::BAD_REQUEST, "malformed JSON").into_response();
    };
    let api_version = wire.api_version.unwrap_or_default();
    if wire.kind.as_deref() != Some("TokenReview") {
        return (StatusCode::BAD_REQUEST, "not a TokenReview").into_response();
    }
    let spec = wire.spec.unwrap_or(WireSpec { token: None, audiences: None });
    let token = spec.token.unwrap_or_default();
    let audiences = spec.audiences.unwrap_or_default();
    let user = if token.is_empty() { None } else { chain.review(&token, &audiences) };
    let status = Status {
        authenticated: user.is_some(),
        user: user.map(|u| User {
            username: u.username,
            uid: u.uid,
            groups: u.groups,
            extra: u.extra.into_iter().fold(
                Default::default(),
                |mut m: std::collections::BTreeMap<_, Vec<_>>, (k, v)| {
                    m.entry(k).or_default().extend(v);
                    m
                },
            ),
        }),
    };
    let body =
        serde_json::to_vec(&Answer { api_version: &api_version, kind: "TokenReview", status }).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let chain = Arc::new(NativeChain::new(fixtures::native_config()?));
    let app = Router::new().route("/authenticate", post(authenticate)).with_state(chain);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
