//! The HTTP API (v1, JSON), server-sent events, metrics and the dashboard.
//!
//! Invariant: handlers only translate. They parse and check the request,
//! call the node through its [`NodeHandle`], and shape the answer; every
//! decision is the engine's.

mod cluster;
pub mod error;
mod kv;
mod stream;
mod tasks;
pub mod types;

use crate::runtime::NodeHandle;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The node.
    pub node: NodeHandle,
    /// The bearer token mutating routes require, if one is configured.
    pub token: Option<Arc<str>>,
    /// What clients have open now.
    pub open: Arc<Open>,
}

impl AppState {
    /// The state for `node`, with `token` if one is configured.
    pub fn new(node: NodeHandle, token: Option<Arc<str>>) -> AppState {
        AppState {
            node,
            token,
            open: Arc::default(),
        }
    }
}

/// Requests each client has in flight (long polls included), and event
/// streams open: bounded so that no client can hold the API.
#[derive(Debug, Default)]
pub struct Open {
    requests: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    streams: std::sync::atomic::AtomicUsize,
}

/// One request in flight for a client; counted down on drop.
struct InFlight(Arc<Open>, std::net::IpAddr);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.0.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// One event stream open; counted down when the stream ends.
pub(crate) struct StreamSlot(Arc<Open>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Open {
    /// Takes an event-stream slot, if fewer than `max` are open.
    pub(crate) fn stream(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        use std::sync::atomic::Ordering;
        let taken = self
            .streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        taken.ok().map(|_| StreamSlot(self.clone()))
    }

    fn request(self: &Arc<Self>, client: std::net::IpAddr, max: usize) -> Option<InFlight> {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(client).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(InFlight(self.clone(), client))
    }
}

/// A 429 for a client over its limit, counted under `code`.
fn too_many(state: &AppState, code: &'static str, message: String) -> Response {
    state.node.metrics().reject(code);
    let mut resp = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// Each client (by IP address) has at most `max_requests_per_client`
/// requests in flight; more are answered 429 at once. Health probes and
/// metrics are exempt: a monitor must see a node that is being flooded.
async fn per_client(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let exempt = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .filter(|_| !exempt);
    let max = state.node.info().config.max_requests_per_client;
    let _slot = match client {
        Some(ip) => match state.open.request(ip, max) {
            Some(slot) => Some(slot),
            None => {
                return too_many(
                    &state,
                    "too_many_requests",
                    format!("this client has {max} requests in flight already"),
                )
            }
        },
        None => None,
    };
    next.run(req).await
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let limit = state.node.info().config.max_body_bytes;
    Router::new()
        .route("/", get(stream::dashboard))
        .route("/healthz", get(stream::healthz))
        .route("/readyz", get(stream::readyz))
        .route("/metrics", get(stream::metrics))
        .route("/v1/events", get(stream::events))
        .route("/v1/status", get(cluster::status))
        .route("/v1/nodes", get(cluster::nodes))
        .route("/v1/nodes/{id}", get(cluster::node).delete(cluster::remove))
        .route("/v1/nodes/{id}/drain", post(cluster::drain))
        .route("/v1/leader", get(cluster::leader))
        .route("/v1/leader/recover", post(cluster::recover))
        .route("/v1/cluster/stats", get(cluster::stats))
        .route(
            "/v1/balance",
            get(cluster::balance).put(cluster::set_balance),
        )
        .route("/v1/audit", get(cluster::audit))
        .route("/v1/tasks", post(tasks::submit).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/heartbeat", post(tasks::heartbeat))
        .route("/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/v1/work/claim", post(tasks::claim))
        .route("/v1/assignments", get(tasks::assignments))
        .route("/v1/kv", get(kv::namespaces))
        .route("/v1/kv/{ns}", get(kv::list).put(kv::set_policy))
        .route(
            "/v1/kv/{ns}/{key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), same_site))
        .layer(middleware::from_fn_with_state(state.clone(), per_client))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Mutating requests need the bearer token when one is configured.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let (true, Some(token)) = (mutating(req.method()), &state.token) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                state.node.metrics().reject("unauthenticated");
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this route needs Authorization: Bearer TOKEN",
                )
                .into_response();
            }
            Some(t) if !constant_time_eq(t.as_bytes(), token.as_bytes()) => {
                state.node.metrics().reject("bad_token");
                return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "wrong API token")
                    .into_response();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

/// The host part of a `Host` header or an origin's authority
/// (`name:port`, `[v6]:port`), lower-cased.
fn host_of(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_owned();
    }
    a.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(a.clone(), |(host, _)| host.to_owned())
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// No cross-site requests and no DNS rebinding. An API that listens on
/// loopback answers only requests whose `Host` is a loopback name or
/// address (a page that had a name of its own resolve to 127.0.0.1 still
/// sends its own name); a mutating request that a browser marks with an
/// `Origin` must come from the same host it is sent to.
async fn same_site(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(host_of);
    if state.node.info().config.api.ip().is_loopback() {
        if let Some(h) = host.as_deref().filter(|h| !is_loopback_host(h)) {
            return refuse(
                &state,
                "forbidden_host",
                format!("this API listens on loopback and answers only loopback names, not `{h}`"),
            );
        }
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(|o| o.split_once("://").map_or(o, |(_, rest)| rest))
        .map(host_of);
    if let (true, Some(origin)) = (mutating(req.method()), origin) {
        if Some(&origin) != host.as_ref() {
            return refuse(
                &state,
                "cross_origin",
                format!("a request from the page at `{origin}` may not change this node"),
            );
        }
    }
    next.run(req).await
}

/// Routes that change state: they need the token and a same-site origin.
fn mutating(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    )
}

/// A 403 for a request from the wrong place, counted under `code`.
fn refuse(state: &AppState, code: &'static str, message: String) -> Response {
    state.node.metrics().reject(code);
    ApiError::new(StatusCode::FORBIDDEN, code, message).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts responses by method and status.
async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let labels = crate::runtime::metrics::HttpLabels {
        method,
        status: resp.status().as_u16(),
    };
    state.node.metrics().http.get_or_create(&labels).inc();
    resp
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
