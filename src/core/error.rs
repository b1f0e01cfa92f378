//! Errors of the engine core. Each says what went wrong; none of them left
//! the state changed.

use crate::core::ids::{Fence, TaskId};
use thiserror::Error;

/// An engine operation that was refused. The state is unchanged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The request is malformed or out of range.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No such task, node, namespace or key.
    #[error("{what} `{id}` not found")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The operation conflicts with the current state (for example cancelling
    /// a finished task).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A result or heartbeat came with a fence the task no longer has.
    #[error("stale fence {given} for task {task}: current fence is {current}")]
    StaleFence {
        /// The task.
        task: TaskId,
        /// The fence the caller gave.
        given: Fence,
        /// The task's current fence.
        current: Fence,
    },
    /// A value too large to replicate (gossip carries at most
    /// [`crate::core::wire::MAX_GOSSIP_BYTES`] per message).
    #[error("too large to replicate: {0}")]
    TooLarge(String),
    /// The change could not be made durable, so it was not acknowledged
    /// (the node rebuilds its state from its store).
    #[error("not durable: {0}")]
    NotDurable(String),
}
