//! Server-sent events, metrics, health probes and the dashboard.

use super::error::ApiError;
use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::stream::Stream;
use serde_json::json;
use std::convert::Infallible;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

pub(super) async fn events(
    State(s): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Response> {
    let max = s.node.info().config.max_event_streams;
    let Some(slot) = s.open.stream(max) else {
        return Err(super::too_many(
            &s,
            "too_many_streams",
            format!("{max} event streams are open on this node already"),
        ));
    };
    let node = s.node.clone();
    let stream = BroadcastStream::new(s.node.subscribe()).map(move |item| {
        // The slot is freed when the stream is dropped (the client left).
        let _open = &slot;
        let event = match item {
            Ok(e) => {
                // Each event carries `at`: the node's wall clock (ms since
                // the epoch) when the stream took it, so that a watcher can
                // time events without its own scheduling in the figure.
                let mut value = serde_json::to_value(&e).unwrap_or_default();
                let kind = value
                    .get("type")
                    .and_then(|t| t.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| "event".into());
                if let Some(obj) = value.as_object_mut() {
                    obj.insert("at".into(), json!(crate::runtime::node::now().0));
                }
                SseEvent::default().event(kind).data(value.to_string())
            }
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                node.metrics().events_lagged.inc_by(n);
                SseEvent::default()
                    .event("alert")
                    .data(json!({"type": "alert", "kind": "events_lagged", "message": format!("this subscriber missed {n} events")}).to_string())
            }
        };
        Ok(event)
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub(super) async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let sum = s.node.summary().await?;
    let members = s.node.members().await?;
    let m = s.node.metrics();
    for (st, n) in &sum.tasks_by_status {
        m.set_tasks(st, *n as i64);
    }
    let mut by_status = std::collections::BTreeMap::new();
    for mem in &members {
        *by_status
            .entry(mem.entry.record().status.as_str())
            .or_insert(0i64) += 1;
    }
    for (st, n) in by_status {
        m.set_members(st, n);
    }
    m.kv_entries.set(sum.kv_entries as i64);
    let suppressed = crate::runtime::lograte::SUPPRESSED.load(std::sync::atomic::Ordering::Relaxed);
    m.log_suppressed
        .inc_by(suppressed.saturating_sub(m.log_suppressed.get()));
    let body = s.node.metrics().encode();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

pub(super) async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

pub(super) async fn readyz(State(s): State<AppState>) -> Response {
    let engine_answers = s.node.summary().await.is_ok();
    if let Some(why) = s.node.read_only() {
        // Reads go on, but a balancer should send writes elsewhere.
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_read_only", why)
            .into_response();
    }
    if s.node.is_ready() && engine_answers {
        axum::Json(json!({"status": "ready", "store": "open"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the node is starting or stopping",
        )
        .into_response()
    }
}

pub(super) async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
