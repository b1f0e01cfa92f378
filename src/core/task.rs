//! Tasks as replicated records.
//!
//! A [`TaskEntry`] holds the immutable [`TaskSpec`] set at submission, the
//! current [`TaskState`] in a last-writer-wins register, and the history as a
//! grow-only set. The register's marker is
//! `(cancelled, fence, status rank, seq, writer)`:
//!
//! - a cancel beats everything (a user's cancel is final, even when it races
//!   a completion in another partition);
//! - a newer fence beats an older one, so a result reported under a fence
//!   that the lease holder has since replaced can never win;
//! - within a fence, later phases beat earlier ones (`assigned` < `running` <
//!   `succeeded`/`failed`), so a late "running" never undoes a result.
//!
//! Merging is therefore commutative, associative and idempotent, and each
//! task's result is recorded once per fence.

use crate::core::ids::{Fence, Millis, NodeId, TaskId};
use crdts::{CvRDT, GSet, LWWReg};
use serde::{Deserialize, Serialize};

/// A task's lifecycle state.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for a node that can take it (see `reason`).
    #[default]
    Pending,
    /// Placed on a node, waiting to start (or for a worker to claim it).
    Assigned,
    /// Executing.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error after its last attempt.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl TaskStatus {
    /// Rank within one fence: later phases win.
    fn rank(self) -> u8 {
        match self {
            TaskStatus::Pending => 0,
            TaskStatus::Assigned => 1,
            TaskStatus::Running => 2,
            TaskStatus::Succeeded | TaskStatus::Failed => 3,
            TaskStatus::Cancelled => 4,
        }
    }

    /// True for succeeded, failed and cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Assigned => "assigned",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => TaskStatus::Pending,
            "assigned" => TaskStatus::Assigned,
            "running" => TaskStatus::Running,
            "succeeded" => TaskStatus::Succeeded,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            other => return Err(format!("unknown task status `{other}`")),
        })
    }
}

/// What was submitted; never changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The capability a node must offer to run it.
    pub capability: String,
    /// The payload as canonical JSON text.
    pub payload: String,
    /// The idempotency key, if the submitter gave one.
    pub key: Option<String>,
    /// Placement strategy override (else the cluster default).
    pub strategy: Option<String>,
    /// Affinity key for the `hash` strategy.
    pub affinity: Option<String>,
    /// How many attempts before the task fails (at least 1).
    pub max_attempts: u32,
    /// Per-attempt timeout in seconds.
    pub timeout_secs: u64,
    /// The node that accepted the submission.
    pub submitted_by: NodeId,
    /// When it was accepted.
    pub submitted_at: Millis,
}

/// The mutable part of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// Lifecycle state.
    pub status: TaskStatus,
    /// The node it is placed on.
    pub node: Option<NodeId>,
    /// The current attempt, from 1 once placed.
    pub attempt: u32,
    /// The fence of the current assignment.
    pub fence: Fence,
    /// The result as canonical JSON text, once succeeded.
    pub result: Option<String>,
    /// The last error.
    pub error: Option<String>,
    /// Why a pending task waits.
    pub reason: Option<String>,
    /// The external worker that claimed it, if any.
    pub worker: Option<String>,
    /// When the current attempt started running.
    pub started_at: Option<Millis>,
    /// When this state was written.
    pub updated_at: Millis,
}

/// The register marker; see the module docs for the order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskMarker {
    /// Set by a cancel.
    pub cancelled: bool,
    /// The fence of the assignment this state belongs to.
    pub fence: Fence,
    /// Phase rank within the fence.
    pub rank: u8,
    /// One more than the sequence of the state it replaced.
    pub seq: u64,
    /// Who wrote it.
    pub writer: NodeId,
}

/// One line of a task's history.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// When it happened.
    pub at: Millis,
    /// The status entered.
    pub status: TaskStatus,
    /// The node involved.
    pub node: Option<NodeId>,
    /// The attempt.
    pub attempt: u32,
    /// The fence.
    pub fence: Fence,
    /// A short explanation.
    pub note: String,
    /// Who recorded it.
    pub by: NodeId,
}

/// The replicated state of one task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskEntry {
    spec: TaskSpec,
    state: LWWReg<TaskState, TaskMarker>,
    history: GSet<HistoryEvent>,
}

impl TaskEntry {
    /// A new task entry in the pending state.
    pub fn new(spec: TaskSpec) -> Self {
        TaskEntry {
            spec,
            state: LWWReg::default(),
            history: GSet::new(),
        }
    }

    /// The immutable submission.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// The current state.
    pub fn state(&self) -> &TaskState {
        &self.state.val
    }

    /// The current register marker.
    pub fn marker(&self) -> &TaskMarker {
        &self.state.marker
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<HistoryEvent> {
        self.history.read().into_iter().collect()
    }

    /// Writes a new state as `writer` and records it in the history with
    /// `note`. Returns false (and changes nothing) when the write would lose
    /// against the current state, for example a result under an old fence.
    pub fn transition(&mut self, state: TaskState, note: &str, writer: &NodeId) -> bool {
        let marker = TaskMarker {
            cancelled: state.status == TaskStatus::Cancelled,
            fence: state.fence,
            rank: state.status.rank(),
            seq: self.state.marker.seq + 1,
            writer: writer.clone(),
        };
        if marker <= self.state.marker {
            return false;
        }
        self.history.insert(HistoryEvent {
            at: state.updated_at,
            status: state.status,
            node: state.node.clone(),
            attempt: state.attempt,
            fence: state.fence,
            note: note.to_owned(),
            by: writer.clone(),
        });
        self.state.merge(LWWReg { val: state, marker });
        true
    }

    /// Merges another replica's entry of the same task.
    pub fn merge(&mut self, other: TaskEntry) {
        if other.spec < self.spec {
            // Specs never change; only an id collision could make them
            // differ, and then the smaller one wins on every node.
            self.spec = other.spec;
        }
        self.state.merge(other.state);
        self.history.merge(other.history);
    }

    /// The blake3 digest of the entry's canonical form.
    pub fn digest(&self, id: &TaskId) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        crate::core::canon::hash_value(&mut h, id);
        crate::core::canon::hash_value(&mut h, &self.spec);
        crate::core::canon::hash_value(&mut h, &self.state);
        crate::core::canon::hash_value(&mut h, &self.history());
        h.finalize()
    }
}
