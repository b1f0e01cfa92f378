//! Events the engine reports: the stream behind `GET /v1/events` and the
//! audit log.

use crate::core::ids::{Fence, Millis, NodeId, TaskId, Term};
use crate::core::task::TaskStatus;
use serde::{Deserialize, Serialize};

/// Something that happened, for the event stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A node joined (or was first seen).
    MemberJoined {
        /// The node.
        node: NodeId,
    },
    /// A node is suspected to have failed.
    MemberSuspect {
        /// The node.
        node: NodeId,
    },
    /// A node was declared failed.
    MemberDead {
        /// The node.
        node: NodeId,
    },
    /// A suspected or dead node is back.
    MemberRecovered {
        /// The node.
        node: NodeId,
    },
    /// A node started draining.
    MemberDraining {
        /// The node.
        node: NodeId,
    },
    /// A node left gracefully.
    MemberLeft {
        /// The node.
        node: NodeId,
    },
    /// A node was removed by an operator.
    MemberRemoved {
        /// The node.
        node: NodeId,
    },
    /// The lease holder changed.
    LeaseChanged {
        /// The new holder, if any.
        holder: Option<NodeId>,
        /// Its term.
        term: Term,
    },
    /// A task was placed on a node.
    TaskPlaced {
        /// The task.
        task: TaskId,
        /// Where.
        node: NodeId,
        /// Under which fence.
        fence: Fence,
    },
    /// A task waits: no node can take it now.
    TaskPending {
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// A task started running.
    TaskStarted {
        /// The task.
        task: TaskId,
        /// Where.
        node: NodeId,
        /// Which attempt.
        attempt: u32,
    },
    /// A task was moved off a failed node.
    TaskMigrated {
        /// The task.
        task: TaskId,
        /// From where.
        from: NodeId,
        /// To where.
        to: NodeId,
        /// The new fence.
        fence: Fence,
    },
    /// A task reached a terminal state.
    TaskFinished {
        /// The task.
        task: TaskId,
        /// How it ended.
        status: TaskStatus,
    },
    /// A knowledge entry changed by a merge from a peer (now durable here).
    KvMerged {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// Something an operator should look at.
    Alert {
        /// A short machine-readable kind.
        kind: String,
        /// What happened.
        message: String,
    },
}

/// A record of the audit log: removals, drains, migrations, lease changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When.
    pub at: Millis,
    /// The node that acted.
    pub by: NodeId,
    /// What kind of action (`node_drained`, `node_removed`, `task_migrated`, `lease_changed`).
    pub action: String,
    /// The node, task or term it concerned.
    pub subject: String,
    /// Details.
    pub detail: String,
}
