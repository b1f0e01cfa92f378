//! The cloneable handle callers hold: typed commands and typed queries,
//! sent to the node's owner task with a `oneshot` for the answer.

use super::node::{NodeError, NodeInfo};
use crate::core::engine::{Answer, Assignment, Command, Found, MemberView, Query, Summary};
use crate::core::event::{AuditRecord, Event};
use crate::core::ids::{Fence, NodeId, TaskId};
use crate::core::knowledge::Policy;
use crate::core::placement::Strategy;
use crate::core::replica::{Claimed, KvItem, KvWrite, Outcome, SubmitRequest};
use crate::core::task::TaskEntry;
use crate::core::EngineError;
use crate::runtime::metrics::Metrics;
use crate::runtime::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

pub(super) type QueryReply = oneshot::Sender<Result<Found, NodeError>>;

/// What callers send the owner task.
pub(super) enum Request {
    /// A command for the engine, answered with its outcome.
    Command(Command, oneshot::Sender<Result<Answer, NodeError>>),
    /// A query: answered by the engine at once, released once every change
    /// it may have seen is durable.
    Query(Query, QueryReply),
    /// Leave gracefully, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// Who waits for an engine reply.
pub(super) enum Waiter {
    Command(oneshot::Sender<Result<Answer, NodeError>>),
    Query(Box<Found>, QueryReply),
    /// The graceful leave: stop once its changes are durable and spread.
    Leave,
}

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) tx: mpsc::Sender<Request>,
    pub(super) store: Arc<Store>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) work: Arc<Notify>,
    pub(super) info: Arc<NodeInfo>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ready: Arc<AtomicBool>,
    /// Why the node refuses writes, while its store does (a full disk).
    pub(super) read_only: Arc<std::sync::RwLock<Option<String>>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("id", &self.info.id)
            .finish()
    }
}

/// A query answer of an unexpected kind: a bug in the engine's dispatch.
fn unexpected_found(f: Found) -> NodeError {
    NodeError::Engine(EngineError::Conflict(format!(
        "unexpected answer from the engine: {f:?}"
    )))
}

/// An answer of an unexpected kind: a bug in the engine's dispatch.
fn unexpected(a: Answer) -> NodeError {
    NodeError::Engine(EngineError::Conflict(format!(
        "unexpected answer from the engine: {a:?}"
    )))
}

/// One page of a task listing ([`NodeHandle::tasks`]).
#[derive(Debug)]
pub struct TaskPage {
    /// The tasks, oldest first.
    pub tasks: Vec<(TaskId, TaskEntry)>,
    /// How many matched (below the cursor, when one was given).
    pub total: usize,
    /// The cursor of the next (older) page, when there is one.
    pub next: Option<(crate::core::ids::Millis, TaskId)>,
}

impl NodeHandle {
    /// Sends a request carrying a reply channel and waits for the reply.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Request,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(request(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs a command; answers once its changes are on disk.
    pub async fn command(&self, cmd: Command) -> Result<Answer, NodeError> {
        self.ask(|tx| Request::Command(cmd, tx)).await
    }

    async fn done(&self, cmd: Command) -> Result<(), NodeError> {
        self.command(cmd).await.map(|_| ())
    }

    /// Writes a knowledge value; returns the entry as written.
    pub async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: serde_json::Value,
    ) -> Result<KvWrite, NodeError> {
        let cmd = Command::KvPut {
            ns: ns.to_owned(),
            key: key.to_owned(),
            value,
        };
        match self.command(cmd).await? {
            Answer::Written(w) => Ok(w),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a knowledge key.
    pub async fn kv_del(&self, ns: &str, key: &str) -> Result<(), NodeError> {
        self.done(Command::KvDel {
            ns: ns.to_owned(),
            key: key.to_owned(),
        })
        .await
    }

    /// Sets a namespace's conflict policy.
    pub async fn set_policy(&self, ns: &str, policy: Policy) -> Result<(), NodeError> {
        self.done(Command::SetPolicy {
            ns: ns.to_owned(),
            policy,
        })
        .await
    }

    /// Sets the cluster's default placement strategy.
    pub async fn set_strategy(&self, strategy: Strategy) -> Result<(), NodeError> {
        self.done(Command::SetStrategy(strategy)).await
    }

    /// Submits a task: its id, and whether it was created (false for a
    /// repeated idempotency key).
    pub async fn submit(&self, req: SubmitRequest) -> Result<(TaskId, bool), NodeError> {
        match self.command(Command::Submit(req)).await? {
            Answer::Submitted { id, created } => Ok((id, created)),
            other => Err(unexpected(other)),
        }
    }

    /// Cancels a task.
    pub async fn cancel(&self, task: TaskId) -> Result<(), NodeError> {
        self.done(Command::Cancel(task)).await
    }

    /// A worker keeps its claim alive; returns the claim's lifetime in ms.
    pub async fn heartbeat(&self, task: TaskId, fence: Fence) -> Result<u64, NodeError> {
        match self.command(Command::Heartbeat { task, fence }).await? {
            Answer::ClaimTtl(ttl) => Ok(ttl),
            other => Err(unexpected(other)),
        }
    }

    /// A worker reports how an attempt ended.
    pub async fn complete(
        &self,
        task: TaskId,
        fence: Fence,
        outcome: Outcome,
    ) -> Result<(), NodeError> {
        self.done(Command::Complete {
            task,
            fence,
            outcome,
        })
        .await
    }

    /// Drains a node.
    pub async fn drain(&self, node: NodeId) -> Result<(), NodeError> {
        self.done(Command::Drain(node)).await
    }

    /// Recovers the control plane from a lost majority of its voters, run
    /// on a surviving voter: the new term and the voters left out.
    pub async fn recover_control(&self) -> Result<(u64, Vec<NodeId>), NodeError> {
        match self.command(Command::RecoverControl).await? {
            Answer::Recovered { term, lost } => Ok((term, lost)),
            other => Err(unexpected(other)),
        }
    }

    /// Force-removes a dead or departed member.
    pub async fn remove(&self, node: NodeId) -> Result<(), NodeError> {
        self.done(Command::Remove(node)).await
    }

    /// Asks the engine; answers once every change the answer may reflect is
    /// durable.
    pub async fn query(&self, q: Query) -> Result<Found, NodeError> {
        self.ask(|tx| Request::Query(q, tx)).await
    }

    /// Every member, as this node sees it.
    pub async fn members(&self) -> Result<Vec<MemberView>, NodeError> {
        match self.query(Query::Members).await? {
            Found::Members(m) => Ok(m),
            other => Err(unexpected_found(other)),
        }
    }

    /// One task.
    pub async fn task(&self, id: TaskId) -> Result<TaskEntry, NodeError> {
        match self.query(Query::Task(id)).await? {
            Found::Task(t) => Ok(*t?),
            other => Err(unexpected_found(other)),
        }
    }

    /// Tasks matching the filters of a [`Query::Tasks`]: the tasks kept and
    /// how many matched.
    pub async fn tasks(&self, q: Query) -> Result<TaskPage, NodeError> {
        match self.query(q).await? {
            Found::Tasks { tasks, total, next } => Ok(TaskPage { tasks, total, next }),
            other => Err(unexpected_found(other)),
        }
    }

    /// Tasks assigned or running.
    pub async fn assignments(&self) -> Result<Vec<Assignment>, NodeError> {
        match self.query(Query::Assignments).await? {
            Found::Assignments(a) => Ok(a),
            other => Err(unexpected_found(other)),
        }
    }

    /// A knowledge entry.
    pub async fn kv_get(&self, ns: &str, key: &str) -> Result<KvItem, NodeError> {
        let q = Query::Kv {
            ns: ns.to_owned(),
            key: key.to_owned(),
        };
        match self.query(q).await? {
            Found::Kv(item) => Ok(item?),
            other => Err(unexpected_found(other)),
        }
    }

    /// Totals, strategy, term and digest.
    pub async fn summary(&self) -> Result<Summary, NodeError> {
        match self.query(Query::Summary).await? {
            Found::Summary(s) => Ok(s),
            other => Err(unexpected_found(other)),
        }
    }

    /// The newest audit records, read from the store (off the owner task).
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, NodeError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.audit(limit))
            .await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Store)
    }

    /// Claims a task for an external worker, waiting up to `wait` for one.
    pub async fn claim(
        &self,
        worker: String,
        caps: Vec<String>,
        wait: Duration,
    ) -> Result<Option<Claimed>, NodeError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cmd = Command::Claim {
                worker: worker.clone(),
                capabilities: caps.clone(),
            };
            match self.command(cmd).await? {
                Answer::Claimed(Some(task)) => return Ok(Some(task)),
                Answer::Claimed(None) => {}
                other => return Err(unexpected(other)),
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Subscribes to the event stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Static facts about the node.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Why the node refuses writes, while a failed write (a full disk)
    /// keeps its store read-only; `None` while it takes writes.
    pub fn read_only(&self) -> Option<String> {
        self.read_only
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True once the store is open and the node has announced itself.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Leaves gracefully: hands tasks back, announces departure, flushes to
    /// disk and stops the owner task.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.ready.store(false, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Shutdown(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }
}
