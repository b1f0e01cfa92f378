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
    let mutating = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    );
    if let (true, Some(token)) = (mutating, &state.token) {
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
