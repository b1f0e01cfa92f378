//! Cluster routes: status, nodes, leader, stats, balance, audit.

use super::error::{ApiError, Body};
use super::types::NodeView;
use super::AppState;
use crate::core::ids::NodeId;
use crate::core::placement::Strategy;
use crate::core::replica::Replica;
use crate::runtime::node::now;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn views(e: &Replica) -> Vec<NodeView> {
    let t = now();
    e.state()
        .members
        .iter()
        .map(|(id, m)| NodeView::of(e, id, m, t))
        .collect()
}

fn by_status(nodes: &[NodeView]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = ["alive", "suspect", "dead", "left", "draining"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for n in nodes {
        *out.entry(n.status.clone()).or_default() += 1;
    }
    out
}

fn tasks_by_status(e: &Replica) -> BTreeMap<&'static str, usize> {
    let mut out: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in [
        "pending",
        "assigned",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ] {
        out.insert(s, 0);
    }
    for t in e.state().tasks.values() {
        *out.entry(t.state().status.as_str()).or_default() += 1;
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
    let body = s
        .node
        .read(move |e, _| {
            let nodes = views(e);
            let counts = by_status(&nodes);
            let me = nodes.into_iter().find(|n| n.id == id.as_str());
            json!({
                "node": me,
                "name": name,
                "cluster": {
                    "nodes": e.state().members.len(),
                    "alive": counts.get("alive"),
                    "suspect": counts.get("suspect"),
                    "dead": counts.get("dead"),
                    "left": counts.get("left"),
                    "draining": counts.get("draining"),
                    "tasks": tasks_by_status(e),
                    "strategy": e.default_strategy(),
                },
                "leader": Value::Null,
                "term": e.term().0,
                "peers": peers,
                "uptime_secs": uptime,
                "secret_fingerprint": fp,
                "version": env!("CARGO_PKG_VERSION"),
            })
        })
        .await?;
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
        if !["alive", "suspect", "dead", "left", "draining"].contains(&st.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown node status `{st}` (expected alive, suspect, dead, left or draining)"
            )));
        }
    }
    let mut list = s.node.read(|e, _| views(e)).await?;
    if let Some(st) = q.status {
        list.retain(|n| n.status == st);
    }
    Ok(Json(json!({"count": list.len(), "nodes": list})))
}

pub(super) async fn node(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    let found = s
        .node
        .read(move |e, _| views(e).into_iter().find(|n| n.id == id))
        .await?;
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
        json!({"node": shown, "status": "dead", "removed": true}),
    ))
}

pub(super) async fn leader(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    // No lease holder is elected until the federation's Raft group exists.
    let term = s.node.read(|e, _| e.term().0).await?;
    Ok(Json(json!({"leader": Value::Null, "term": term})))
}

pub(super) async fn stats(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let body = s
        .node
        .read(|e, _| {
            let nodes = views(e);
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
            let kv: usize = e.state().namespaces.values().map(|n| n.entries.len()).sum();
            json!({
                "nodes": {"total": nodes.len(), "by_status": by_status(&nodes)},
                "tasks": {"total": e.state().tasks.len(), "by_status": tasks_by_status(e)},
                "utilization": {
                    "capacity": capacity,
                    "busy": busy,
                    "ratio": if capacity == 0 { 0.0 } else { busy as f64 / capacity as f64 },
                },
                "knowledge": {"namespaces": e.state().namespaces.len(), "entries": kv},
                "strategy": e.default_strategy(),
                "digest": e.digest().to_hex().to_string(),
            })
        })
        .await?;
    Ok(Json(body))
}

pub(super) async fn balance(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let strategy = s.node.read(|e, _| e.default_strategy()).await?;
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
    let records = s.node.read(move |_, store| store.audit(limit)).await?;
    let records = records.map_err(crate::runtime::NodeError::Store)?;
    Ok(Json(json!({"count": records.len(), "records": records})))
}
