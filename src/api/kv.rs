//! Knowledge-store routes.

use super::error::{ApiError, Body};
use super::types::{parse_version, version_json, KvView};
use super::AppState;
use crate::core::engine::{Found, Query as EngineQuery};
use crate::core::knowledge::Policy;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

pub(super) async fn put(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
    Body(value): Body<Value>,
) -> Result<Json<KvView>, ApiError> {
    let (n, k) = (ns.clone(), key.clone());
    let written = s.node.kv_put(&n, &k, value).await?;
    let item = written
        .resolve(&ns, &key)
        .ok_or_else(|| ApiError::bad_request("the write left no value"))?;
    Ok(Json(KvView::new(&item)))
}

pub(super) async fn get(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
) -> Result<Json<KvView>, ApiError> {
    let item = s.node.kv_get(&ns, &key).await?;
    Ok(Json(KvView::new(&item)))
}

pub(super) async fn delete(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.node.kv_del(&ns, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/kv/{ns}` query.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    since: Option<String>,
    /// At most this many entries (default 1000, 1 to 100,000).
    limit: Option<usize>,
    /// Only keys after this one (an earlier page's `next`).
    after: Option<String>,
}

pub(super) async fn list(
    State(s): State<AppState>,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let since = q
        .since
        .as_deref()
        .map(parse_version)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let name = ns.clone();
    let query = EngineQuery::KvList {
        ns,
        since,
        after: q.after,
        limit: q.limit.unwrap_or(1000).clamp(1, 100_000),
    };
    let Found::KvList {
        items,
        version,
        digest,
        policy,
        next,
    } = s.node.query(query).await?
    else {
        return Err(ApiError::internal("unexpected answer from the engine"));
    };
    let entries: Vec<KvView> = items.iter().map(KvView::new).collect();
    Ok(Json(json!({
        "ns": name,
        "policy": policy,
        "entries": entries,
        "count": entries.len(),
        "version": version_json(&version),
        "digest": digest,
        "next": next,
    })))
}

/// `PUT /v1/kv/{ns}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    policy: String,
}

pub(super) async fn set_policy(
    State(s): State<AppState>,
    Path(ns): Path<String>,
    Body(b): Body<PolicyBody>,
) -> Result<Json<Value>, ApiError> {
    let policy: Policy = b.policy.parse().map_err(ApiError::bad_request)?;
    let name = ns.clone();
    s.node.set_policy(&ns, policy).await?;
    Ok(Json(json!({"ns": name, "policy": policy})))
}

pub(super) async fn namespaces(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let Found::Namespaces(list) = s.node.query(EngineQuery::Namespaces).await? else {
        return Err(ApiError::internal("unexpected answer from the engine"));
    };
    let out: Vec<Value> = list
        .into_iter()
        .map(|(ns, policy, entries)| json!({"ns": ns, "policy": policy, "entries": entries}))
        .collect();
    Ok(Json(json!({"namespaces": out, "count": out.len()})))
}
