//! JSON shapes of the API (see CONTRACT.md), built from core values.

use crate::core::ids::{Millis, NodeId, TaskId};
use crate::core::knowledge::Version;
use crate::core::member::MemberEntry;
use crate::core::replica::KvItem;
use crate::core::task::{HistoryEvent, TaskEntry};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A member as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Name.
    pub name: String,
    /// p2p addresses.
    pub addrs: Vec<String>,
    /// API address.
    pub api: Option<String>,
    /// alive, suspect, dead, left or draining.
    pub status: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Task slots.
    pub capacity: u32,
    /// Tasks assigned or running.
    pub running: u32,
    /// CPU use 0..1.
    pub cpu: f32,
    /// Memory use 0..1.
    pub memory: f32,
    /// Disk use 0..1.
    pub disk: f32,
    /// Milliseconds since the node was last heard from.
    pub last_seen_ms: u64,
    /// Incarnation.
    pub incarnation: u64,
    /// True for the node serving this request.
    pub local: bool,
}

impl NodeView {
    /// Builds the view from the engine's answer about a member.
    pub fn of(m: &crate::core::engine::MemberView, now: Millis) -> Self {
        let mut v = Self::new(&m.id, &m.entry, m.running, now, m.local);
        v.status = m.status.to_owned();
        v.last_seen_ms = m.last_heard_ms;
        v
    }

    /// Builds the view; `running` comes from the task index.
    pub fn new(id: &NodeId, m: &MemberEntry, running: u32, now: Millis, local: bool) -> Self {
        let r = m.record();
        NodeView {
            id: id.to_string(),
            name: r.name.clone(),
            addrs: r.addrs.clone(),
            api: r.api.clone(),
            status: r.status.as_str().to_owned(),
            capabilities: r.capabilities.clone(),
            tags: r.tags.clone(),
            capacity: r.capacity,
            running,
            cpu: r.load.cpu,
            memory: r.load.memory,
            disk: r.load.disk,
            last_seen_ms: if local { 0 } else { now.since(r.updated_at) },
            incarnation: r.incarnation,
            local,
        }
    }
}

/// A task as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id.
    pub id: String,
    /// Capability.
    pub capability: String,
    /// Payload.
    pub payload: Value,
    /// Idempotency key.
    pub key: Option<String>,
    /// Status.
    pub status: String,
    /// Node it is placed on.
    pub node: Option<String>,
    /// Attempt.
    pub attempt: u32,
    /// Fence as `TERM.SEQ`.
    pub fence: String,
    /// Result.
    pub result: Option<Value>,
    /// Last error.
    pub error: Option<String>,
    /// Why it is pending.
    pub reason: Option<String>,
    /// Worker holding the claim.
    pub worker: Option<String>,
    /// Strategy override.
    pub strategy: Option<String>,
    /// Affinity key.
    pub affinity: Option<String>,
    /// Max attempts.
    pub max_attempts: u32,
    /// Per-attempt timeout.
    pub timeout_secs: u64,
    /// Submitting node.
    pub submitted_by: String,
    /// Submission time (ms since epoch).
    pub submitted_at: u64,
    /// Last update (ms since epoch).
    pub updated_at: u64,
    /// History, oldest first.
    pub history: Vec<HistoryView>,
}

/// One history line.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryView {
    /// When (ms since epoch).
    pub at: u64,
    /// Status entered.
    pub status: String,
    /// Node.
    pub node: Option<String>,
    /// Attempt.
    pub attempt: u32,
    /// Fence.
    pub fence: String,
    /// Note.
    pub note: String,
    /// Recorded by.
    pub by: String,
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

impl TaskView {
    /// Builds the view of a task.
    pub fn new(id: &TaskId, t: &TaskEntry) -> Self {
        let (spec, st) = (t.spec(), t.state());
        TaskView {
            id: id.to_string(),
            capability: spec.capability.clone(),
            payload: json_of(&spec.payload),
            key: spec.key.clone(),
            status: st.status.as_str().to_owned(),
            node: st.node.as_ref().map(|n| n.to_string()),
            attempt: st.attempt,
            fence: st.fence.to_string(),
            result: st.result.as_deref().map(json_of),
            error: st.error.clone(),
            reason: st.reason.clone(),
            worker: st.worker.clone(),
            strategy: spec.strategy.clone(),
            affinity: spec.affinity.clone(),
            max_attempts: spec.max_attempts,
            timeout_secs: spec.timeout_secs,
            submitted_by: spec.submitted_by.to_string(),
            submitted_at: spec.submitted_at.0,
            updated_at: st.updated_at.0,
            history: t.history().iter().map(HistoryView::new).collect(),
        }
    }
}

impl HistoryView {
    fn new(h: &HistoryEvent) -> Self {
        HistoryView {
            at: h.at.0,
            status: h.status.as_str().to_owned(),
            node: h.node.as_ref().map(|n| n.to_string()),
            attempt: h.attempt,
            fence: h.fence.to_string(),
            note: h.note.clone(),
            by: h.by.to_string(),
        }
    }
}

/// A knowledge entry as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct KvView {
    /// Namespace.
    pub ns: String,
    /// Key.
    pub key: String,
    /// Resolved value.
    pub value: Value,
    /// Concurrent values.
    pub siblings: Vec<Value>,
    /// The namespace's policy.
    pub policy: String,
    /// Version vector: node id to counter.
    pub version: BTreeMap<String, u64>,
    /// blake3 digest of the entry (hex).
    pub digest: String,
}

/// A version vector as JSON.
pub fn version_json(v: &Version) -> BTreeMap<String, u64> {
    v.dots.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// Parses a version vector from `since`: JSON (`{"node": 3}`) or
/// `node:3,node2:5`.
pub fn parse_version(text: &str) -> Result<Version, String> {
    let mut v = Version::new();
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(v);
    }
    let pairs: Vec<(String, u64)> = if trimmed.starts_with('{') {
        let map: BTreeMap<String, u64> = serde_json::from_str(trimmed)
            .map_err(|e| format!("since is not a version vector: {e}"))?;
        map.into_iter().collect()
    } else {
        trimmed
            .split(',')
            .map(|p| {
                let (k, n) = p
                    .rsplit_once(':')
                    .ok_or_else(|| format!("since: `{p}` is not NODE:COUNTER"))?;
                let n = n
                    .parse()
                    .map_err(|_| format!("since: `{n}` is not a counter"))?;
                Ok((k.to_owned(), n))
            })
            .collect::<Result<_, String>>()?
    };
    for (k, n) in pairs {
        v.dots.insert(NodeId::from(k), n);
    }
    Ok(v)
}

impl KvView {
    /// Builds the view of a resolved entry.
    pub fn new(item: &KvItem) -> Self {
        KvView {
            ns: item.ns.clone(),
            key: item.key.clone(),
            value: json_of(&item.value),
            siblings: item.siblings.iter().map(|s| json_of(s)).collect(),
            policy: format!("{:?}", item.policy).to_lowercase(),
            version: version_json(&item.version),
            digest: item.digest.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_both_forms() {
        let a = parse_version("{\"n1\": 3, \"n2\": 1}").unwrap();
        let b = parse_version("n1:3,n2:1").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get(&NodeId::from("n1")), 3);
        assert!(parse_version("n1=3").is_err());
        assert!(parse_version("{bad").is_err());
    }
}
