//! Typed queries: what callers may ask of the engine, and its answers.
//!
//! The engine answers from its replica; the caller shapes the answer for
//! people (JSON views live in `api/`). Nothing but the engine's own code
//! runs while it answers.

use super::Engine;
use crate::core::error::EngineError;
use crate::core::ids::{Fence, Millis, NodeId, Now, TaskId, Term};
use crate::core::knowledge::{Policy, Version};
use crate::core::member::MemberEntry;
use crate::core::placement::Strategy;
use crate::core::replica::{KvItem, KvPage};
use crate::core::task::{TaskEntry, TaskStatus};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// A question for the engine.
#[derive(Clone, Debug)]
pub enum Query {
    /// Every member, as this node sees it.
    Members,
    /// One task.
    Task(TaskId),
    /// Tasks matching every filter given, oldest first; at most `limit`,
    /// the newest of them (submitted before `before`, when given: the
    /// cursor of the page after, see [`Found::Tasks`]).
    Tasks {
        /// Only this status.
        status: Option<TaskStatus>,
        /// Only tasks placed on this node.
        node: Option<NodeId>,
        /// Only this capability.
        capability: Option<String>,
        /// At most this many.
        limit: usize,
        /// Only tasks older than this one (submission time, then id).
        before: Option<(Millis, TaskId)>,
    },
    /// Tasks assigned or running, with their node and fence.
    Assignments,
    /// A knowledge entry, resolved by its namespace's policy.
    Kv {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// A namespace's entries changed since a version (all, without one).
    KvList {
        /// Namespace.
        ns: String,
        /// Only entries with writes not in this version.
        since: Option<Version>,
        /// Only keys after this one (a page's `next`).
        after: Option<String>,
        /// At most this many keys.
        limit: usize,
    },
    /// Every namespace with its policy and number of entries.
    Namespaces,
    /// Totals, the default strategy, the term and the convergence digest.
    Summary,
}

/// A member as this node sees it.
#[derive(Clone, Debug)]
pub struct MemberView {
    /// The member.
    pub id: NodeId,
    /// Its replicated record.
    pub entry: MemberEntry,
    /// Its status here: the declared one, or `suspect`.
    pub status: &'static str,
    /// Tasks assigned to or running on it.
    pub running: u32,
    /// Milliseconds since this node last heard from it (0 for itself).
    pub last_heard_ms: u64,
    /// True for this node.
    pub local: bool,
}

/// A task placed on a node.
#[derive(Clone, Debug)]
pub struct Assignment {
    /// The task.
    pub task: TaskId,
    /// Where.
    pub node: NodeId,
    /// Under which fence.
    pub fence: Fence,
    /// Assigned or running.
    pub status: TaskStatus,
}

/// Totals of the replica.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Tasks by status (every status present, with 0).
    pub tasks_by_status: BTreeMap<&'static str, usize>,
    /// All tasks.
    pub tasks: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Knowledge entries in all namespaces.
    pub kv_entries: usize,
    /// The default placement strategy.
    pub strategy: Strategy,
    /// The lease term (0 while no lease holder is known).
    pub term: Term,
    /// The lease holder, as this node knows it.
    pub leader: Option<NodeId>,
    /// The voters of this node's control plane, as far as it knows them.
    pub voters: Vec<NodeId>,
    /// The convergence digest (hex).
    pub digest: String,
}

/// The engine's answer to a [`Query`].
#[derive(Clone, Debug)]
pub enum Found {
    /// For [`Query::Members`].
    Members(Vec<MemberView>),
    /// For [`Query::Task`].
    Task(Result<Box<TaskEntry>, EngineError>),
    /// For [`Query::Tasks`]: the tasks kept and how many matched.
    Tasks {
        /// The tasks, oldest first.
        tasks: Vec<(TaskId, TaskEntry)>,
        /// How many matched before the limit (below the cursor too).
        total: usize,
        /// When older tasks match too: the cursor for them (`before` of
        /// the next query), the oldest task kept.
        next: Option<(Millis, TaskId)>,
    },
    /// For [`Query::Assignments`].
    Assignments(Vec<Assignment>),
    /// For [`Query::Kv`].
    Kv(Result<KvItem, EngineError>),
    /// For [`Query::KvList`].
    KvList {
        /// The entries.
        items: Vec<KvItem>,
        /// The namespace's version.
        version: Version,
        /// The namespace's digest (hex).
        digest: String,
        /// Its policy.
        policy: Policy,
        /// When more keys follow: the cursor for them (`after`).
        next: Option<String>,
    },
    /// For [`Query::Namespaces`]: name, policy, entries.
    Namespaces(Vec<(String, Policy, usize)>),
    /// For [`Query::Summary`].
    Summary(Summary),
}

const STATUSES: [TaskStatus; 6] = [
    TaskStatus::Pending,
    TaskStatus::Assigned,
    TaskStatus::Running,
    TaskStatus::Succeeded,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

impl Engine {
    /// Answers a query at `now` from the replica as it is.
    pub fn query(&self, now: Now, q: &Query) -> Found {
        let r = &self.replica;
        match q {
            Query::Members => Found::Members(self.members(now)),
            Query::Task(id) => Found::Task(r.task(id).map(|t| Box::new(t.clone()))),
            Query::Tasks {
                status,
                node,
                capability,
                limit,
                before,
            } => {
                // One pass, keeping the newest `limit` in a bounded heap:
                // nothing is collected or sorted in full (the engine answers
                // no other input meanwhile).
                let mut kept: BinaryHeap<Reverse<(Millis, &TaskId)>> = BinaryHeap::new();
                let mut total = 0;
                let below =
                    |key: (Millis, &TaskId)| before.as_ref().is_none_or(|(at, id)| key < (*at, id));
                for (id, t) in &r.state().tasks {
                    let matches = status.is_none_or(|s| t.state().status == s)
                        && (node.is_none() || t.state().node.as_ref() == node.as_ref())
                        && capability
                            .as_ref()
                            .is_none_or(|c| &t.spec().capability == c);
                    let key = (t.spec().submitted_at, id);
                    if !matches || !below(key) {
                        continue;
                    }
                    total += 1;
                    kept.push(Reverse(key));
                    if kept.len() > *limit {
                        kept.pop();
                    }
                }
                let keys = kept.into_sorted_vec();
                // Sorted by `Reverse`: newest first; the page goes oldest first.
                let next = (total > keys.len())
                    .then(|| keys.last().map(|Reverse((at, id))| (*at, (*id).clone())))
                    .flatten();
                let tasks = keys
                    .iter()
                    .rev()
                    .filter_map(|Reverse((_, id))| {
                        let t = r.state().tasks.get(*id)?;
                        Some(((*id).clone(), t.clone()))
                    })
                    .collect();
                Found::Tasks { tasks, total, next }
            }
            Query::Assignments => Found::Assignments(
                r.state()
                    .tasks
                    .iter()
                    .filter_map(|(id, t)| {
                        let st = t.state();
                        let node = st.node.clone()?;
                        matches!(st.status, TaskStatus::Assigned | TaskStatus::Running).then(|| {
                            Assignment {
                                task: id.clone(),
                                node,
                                fence: st.fence,
                                status: st.status,
                            }
                        })
                    })
                    .collect(),
            ),
            Query::Kv { ns, key } => Found::Kv(r.kv_get(ns, key)),
            Query::KvList {
                ns,
                since,
                after,
                limit,
            } => {
                let page = KvPage {
                    after: after.as_deref(),
                    limit: *limit,
                };
                let l = r.kv_list(ns, since.as_ref(), page);
                Found::KvList {
                    items: l.items,
                    version: l.version,
                    digest: l.digest,
                    policy: r.policy(ns),
                    next: l.next,
                }
            }
            Query::Namespaces => Found::Namespaces(r.namespaces()),
            Query::Summary => Found::Summary(self.summary()),
        }
    }

    fn members(&self, now: Now) -> Vec<MemberView> {
        let r = &self.replica;
        r.state()
            .members
            .iter()
            .map(|(id, m)| MemberView {
                id: id.clone(),
                entry: m.clone(),
                status: r.member_status(id),
                running: r.active_on(id),
                last_heard_ms: r.last_heard_ms(now.wall, id),
                local: id == r.node(),
            })
            .collect()
    }

    fn summary(&self) -> Summary {
        let r = &self.replica;
        let state = r.state();
        let mut tasks_by_status: BTreeMap<&'static str, usize> =
            STATUSES.iter().map(|s| (s.as_str(), 0)).collect();
        for t in state.tasks.values() {
            *tasks_by_status
                .entry(t.state().status.as_str())
                .or_default() += 1;
        }
        Summary {
            tasks_by_status,
            tasks: state.tasks.len(),
            namespaces: state.namespaces.len(),
            kv_entries: state.namespaces.values().map(|n| n.entries.len()).sum(),
            strategy: r.default_strategy(),
            term: self.lease().map_or(r.term(), |l| Term(l.term)),
            leader: self.lease().map(|l| l.holder),
            voters: self.voters(),
            digest: r.digest().to_hex().to_string(),
        }
    }
}
