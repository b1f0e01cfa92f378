//! Cluster routes: status, nodes, leader, stats, balance, audit.

use super::error::{ApiError, Body};
use super::types::NodeView;
use super::AppState;
use crate::core::ids::NodeId;
use crate::core::placement::Strategy;
use crate::runtime::node::now;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Every member's view, from the engine's answer.
async fn views(s: &AppState) -> Result<Vec<NodeView>, ApiError> {
    let t = now();
    Ok(s.node
        .members()
        .await?
        .iter()
        .map(|m| NodeView::of(m, t))
        .collect())
}

fn by_status(nodes: &[NodeView]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> =
        ["alive", "suspect", "dead", "left", "draining", "removed"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
    for n in nodes {
        *out.entry(n.status.clone()).or_default() += 1;
    }
    out
}

pub(super) async fn status(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let info = s.node.info();
    let (id, name, fp, uptime) = (
        info.id.clone(),
        info.name.clone(),
        info.secret_fingerprint.clone(),
        info.started.elapsed().as_secs(),
    );
    let peers = s.node.metrics().peers.get();
    let nodes = views(&s).await?;
    let sum = s.node.summary().await?;
    let counts = by_status(&nodes);
    let total = nodes.len() - counts.get("removed").copied().unwrap_or(0);
    let me = nodes.into_iter().find(|n| n.id == id.as_str());
    let body = json!({
                "node": me,
                "name": name,
                "cluster": {
                    "nodes": total,
                    "alive": counts.get("alive"),
                    "suspect": counts.get("suspect"),
                    "dead": counts.get("dead"),
                    "left": counts.get("left"),
                    "draining": counts.get("draining"),
                    "removed": counts.get("removed"),
                    "tasks": sum.tasks_by_status,
                    "strategy": sum.strategy,
                },
                "store": {
                    "writable": s.node.read_only().is_none(),
                    "error": s.node.read_only(),
                },
                "leader": lease_json(&sum),
                "term": sum.term.0,
                "peers": peers,
                "uptime_secs": uptime,
                "secret_fingerprint": fp,
                "version": env!("CARGO_PKG_VERSION"),
    });
    Ok(Json(body))
}

/// `GET /v1/nodes` filter.
#[derive(Debug, Deserialize)]
pub struct NodesQuery {
    status: Option<String>,
}

pub(super) async fn nodes(
    State(s): State<AppState>,
    Query(q): Query<NodesQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(st) = &q.status {
        if !["alive", "suspect", "dead", "left", "draining", "removed"].contains(&st.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown node status `{st}` (expected alive, suspect, dead, left, draining or removed)"
            )));
        }
    }
    let mut list = views(&s).await?;
    // Removed members are tombstones: listed only when asked for.
    let st = q.status.unwrap_or_default();
    list.retain(|n| n.status == st || (st.is_empty() && n.status != "removed"));
    Ok(Json(json!({"count": list.len(), "nodes": list})))
}

pub(super) async fn node(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    let found = views(&s).await?.into_iter().find(|n| n.id == id);
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found("node not found"))
}

pub(super) async fn drain(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = NodeId::from(id);
    let shown = node.clone();
    s.node.drain(node).await?;
    Ok(Json(json!({"node": shown, "status": "draining"})))
}

pub(super) async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = NodeId::from(id);
    let shown = node.clone();
    s.node.remove(node).await?;
    Ok(Json(
        json!({"node": shown, "status": "removed", "removed": true}),
    ))
}

/// The lease holder as `{"id", "term"}`, or null.
fn lease_json(sum: &crate::core::engine::Summary) -> Value {
    match &sum.leader {
        Some(id) => json!({"id": id, "term": sum.term.0}),
        None => Value::Null,
    }
}

pub(super) async fn leader(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let sum = s.node.summary().await?;
    Ok(Json(json!({
        "leader": lease_json(&sum),
        "term": sum.term.0,
        "voters": sum.voters,
    })))
}

/// `POST /v1/leader/recover`: an operator's recovery from a lost majority
/// of the control plane's voters (docs/lease.md), on a surviving voter.
pub(super) async fn recover(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (term, lost) = s.node.recover_control().await?;
    Ok(Json(json!({
        "recovered": true,
        "leader": {"id": s.node.info().id, "term": term},
        "lost": lost,
    })))
}

pub(super) async fn stats(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let nodes = views(&s).await?;
    let sum = s.node.summary().await?;
    let capacity: u64 = nodes
        .iter()
        .filter(|n| n.status == "alive")
        .map(|n| n.capacity as u64)
        .sum();
    let busy: u64 = nodes
        .iter()
        .filter(|n| n.status == "alive")
        .map(|n| n.running as u64)
        .sum();
    let body = json!({
        "nodes": {"total": nodes.len(), "by_status": by_status(&nodes)},
        "tasks": {"total": sum.tasks, "by_status": sum.tasks_by_status},
        "utilization": {
            "capacity": capacity,
            "busy": busy,
            "ratio": if capacity == 0 { 0.0 } else { busy as f64 / capacity as f64 },
        },
        "knowledge": {"namespaces": sum.namespaces, "entries": sum.kv_entries},
        "strategy": sum.strategy,
        "digest": sum.digest,
    });
    Ok(Json(body))
}

pub(super) async fn balance(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let strategy = s.node.summary().await?.strategy;
    let all: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
    Ok(Json(json!({"strategy": strategy, "available": all})))
}

/// `PUT /v1/balance` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceBody {
    strategy: String,
}

pub(super) async fn set_balance(
    State(s): State<AppState>,
    Body(b): Body<BalanceBody>,
) -> Result<Json<Value>, ApiError> {
    let strategy: Strategy = b.strategy.parse().map_err(ApiError::bad_request)?;
    s.node.set_strategy(strategy).await?;
    Ok(Json(json!({"strategy": strategy})))
}

/// `GET /v1/audit` query.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
}

pub(super) async fn audit(
    State(s): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).min(10_000);
    let records = s.node.audit(limit).await?;
    Ok(Json(json!({"count": records.len(), "records": records})))
}
