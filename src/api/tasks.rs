//! Task routes: submit, list, get, cancel, and the external-worker API.

use super::error::{ApiError, Body};
use super::types::TaskView;
use super::AppState;
use crate::core::engine::Query as EngineQuery;
use crate::core::ids::{Fence, Millis, NodeId, TaskId};
use crate::core::knowledge::canonical_json;
use crate::core::placement::Strategy;
use crate::core::replica::{Outcome, SubmitRequest};
use crate::core::task::TaskStatus;
use crate::core::EngineError;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// `POST /v1/tasks` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    capability: String,
    #[serde(default)]
    payload: Value,
    key: Option<String>,
    strategy: Option<String>,
    affinity: Option<String>,
    max_attempts: Option<u32>,
    timeout_secs: Option<u64>,
}

async fn task_view(s: &AppState, id: TaskId) -> Result<TaskView, ApiError> {
    let task = s.node.task(id.clone()).await?;
    Ok(TaskView::new(&id, &task))
}

pub(super) async fn submit(
    State(s): State<AppState>,
    Body(b): Body<SubmitBody>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let strategy = b
        .strategy
        .as_deref()
        .map(str::parse::<Strategy>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let req = SubmitRequest {
        capability: b.capability,
        payload: b.payload,
        key: b.key,
        strategy,
        affinity: b.affinity,
        max_attempts: b.max_attempts,
        timeout_secs: b.timeout_secs,
    };
    let (id, created) = s.node.submit(req).await?;
    let view = task_view(&s, id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// `GET /v1/tasks` filters.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    node: Option<String>,
    capability: Option<String>,
    limit: Option<usize>,
    /// The cursor of an earlier page's `next`: only older tasks.
    before: Option<String>,
}

/// A page cursor: `SUBMITTED_AT.ID` (milliseconds, then the task id).
fn cursor(at: Millis, id: &TaskId) -> String {
    format!("{}.{}", at.0, id.0)
}

fn parse_cursor(text: &str) -> Result<(Millis, TaskId), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "`before` must be the `next` of an earlier page (SUBMITTED_AT.ID), not `{text}`"
        ))
    };
    let (at, id) = text.split_once('.').ok_or_else(bad)?;
    let at = at.parse::<u64>().map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((Millis(at), TaskId(id.to_owned())))
}

pub(super) async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    let before = q.before.as_deref().map(parse_cursor).transpose()?;
    let filter = EngineQuery::Tasks {
        status,
        node: q.node.map(NodeId::from),
        capability: q.capability,
        limit,
        before,
    };
    let page = s.node.tasks(filter).await?;
    let tasks: Vec<TaskView> = page
        .tasks
        .iter()
        .map(|(id, t)| TaskView::new(id, t))
        .collect();
    let next = page.next.map(|(at, id)| cursor(at, &id));
    Ok(Json(
        json!({"tasks": tasks, "count": page.total, "next": next}),
    ))
}

pub(super) async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = TaskId(id);
    let view = task_view(&s, id).await?;
    Ok(Json(view))
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        crate::runtime::NodeError::Engine(e).into()
    }
}

pub(super) async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = TaskId(id);
    s.node.cancel(id.clone()).await?;
    let view = task_view(&s, id).await?;
    Ok(Json(view))
}

/// `POST /v1/work/claim` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    worker: String,
    capabilities: Vec<String>,
    wait_secs: Option<u64>,
}

pub(super) async fn claim(
    State(s): State<AppState>,
    Body(b): Body<ClaimBody>,
) -> Result<Json<Value>, ApiError> {
    if b.capabilities.is_empty() {
        return Err(ApiError::bad_request(
            "capabilities must list at least one capability",
        ));
    }
    let wait = Duration::from_secs(b.wait_secs.unwrap_or(0).min(60));
    let claimed = s.node.claim(b.worker, b.capabilities, wait).await?;
    let task = claimed.map(|c| {
        json!({
            "id": c.id,
            "capability": c.capability,
            "payload": serde_json::from_str::<Value>(&c.payload).unwrap_or(Value::Null),
            "fence": c.fence.to_string(),
            "attempt": c.attempt,
            "claim_ttl_ms": c.claim_ttl_ms,
        })
    });
    Ok(Json(json!({ "task": task })))
}

/// `POST /v1/tasks/{id}/heartbeat` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    fence: String,
}

fn parse_fence(text: &str) -> Result<Fence, ApiError> {
    text.parse().map_err(ApiError::bad_request)
}

pub(super) async fn heartbeat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(b): Body<HeartbeatBody>,
) -> Result<Json<Value>, ApiError> {
    let fence = parse_fence(&b.fence)?;
    let id = TaskId(id);
    let ttl = s.node.heartbeat(id, fence).await?;
    Ok(Json(json!({ "claim_ttl_ms": ttl })))
}

/// `POST /v1/tasks/{id}/complete` body: `result` or `error`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    fence: String,
    result: Option<Value>,
    error: Option<String>,
}

pub(super) async fn complete(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(b): Body<CompleteBody>,
) -> Result<Json<TaskView>, ApiError> {
    let fence = parse_fence(&b.fence)?;
    let outcome = match (b.result, b.error) {
        (Some(r), None) => Outcome::Success(canonical_json(&r)),
        (None, Some(e)) => Outcome::Failure(e),
        _ => return Err(ApiError::bad_request("give exactly one of result or error")),
    };
    let id = TaskId(id);
    s.node.complete(id.clone(), fence, outcome).await?;
    let view = task_view(&s, id).await?;
    Ok(Json(view))
}

pub(super) async fn assignments(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = s
        .node
        .assignments()
        .await?
        .into_iter()
        .map(|a| {
            json!({"task": a.task, "node": a.node, "fence": a.fence.to_string(), "status": a.status.as_str()})
        })
        .collect();
    let n = list.len();
    Ok(Json(json!({"assignments": list, "count": n})))
}
