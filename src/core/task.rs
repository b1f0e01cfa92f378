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
//!
//! Every part is signed by who wrote it, with its node key
//! (core/sign.rs), and checked by every node that receives it
//! ([`TaskEntry::check`]): the spec by its submitter, each state by its
//! writer, each history line by the node it names. So a spec cannot be
//! swapped, a task cannot be submitted, cancelled, moved or finished in
//! another node's name, and a run's start and result come only from the
//! node that ran it (a state `running` or `succeeded` names its writer as
//! its node). What a writer may do beyond that (which node may move a task)
//! rests on the lease, which no node can prove to another: docs/security.md.

use crate::core::ids::{Fence, Millis, NodeId, TaskId};
use crate::core::sign::{Keys, Sig};
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
    /// The writer's signature of the task id, the state and the fields
    /// above.
    pub sig: Sig,
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
    /// `by`'s signature of the task id and the fields above.
    pub sig: Sig,
}

/// The most history lines a task may carry: a few per attempt, with room
/// for moves and a cancel.
pub const MAX_HISTORY: usize = 1024;

/// The replicated state of one task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskEntry {
    spec: TaskSpec,
    /// The submitter's signature of the task id and the spec.
    spec_sig: Sig,
    state: LWWReg<TaskState, TaskMarker>,
    history: GSet<HistoryEvent>,
}

/// What a submitter signs.
#[derive(Serialize)]
struct SignedSpec<'a> {
    domain: &'static str,
    id: &'a TaskId,
    spec: &'a TaskSpec,
}

/// What a state's writer signs: the state and its marker's fields.
#[derive(Serialize)]
struct SignedState<'a> {
    domain: &'static str,
    id: &'a TaskId,
    state: &'a TaskState,
    cancelled: bool,
    fence: Fence,
    rank: u8,
    seq: u64,
    writer: &'a NodeId,
}

/// What a history line's writer signs.
#[derive(Serialize)]
struct SignedEvent<'a> {
    domain: &'static str,
    id: &'a TaskId,
    at: Millis,
    status: TaskStatus,
    node: &'a Option<NodeId>,
    attempt: u32,
    fence: Fence,
    note: &'a str,
    by: &'a NodeId,
}

fn spec_bytes(id: &TaskId, spec: &TaskSpec) -> Vec<u8> {
    let signed = SignedSpec {
        domain: "shoal task spec v1",
        id,
        spec,
    };
    postcard::to_stdvec(&signed).unwrap_or_default()
}

fn state_bytes(id: &TaskId, state: &TaskState, m: &TaskMarker) -> Vec<u8> {
    let signed = SignedState {
        domain: "shoal task state v1",
        id,
        state,
        cancelled: m.cancelled,
        fence: m.fence,
        rank: m.rank,
        seq: m.seq,
        writer: &m.writer,
    };
    postcard::to_stdvec(&signed).unwrap_or_default()
}

fn event_bytes(id: &TaskId, e: &HistoryEvent) -> Vec<u8> {
    let signed = SignedEvent {
        domain: "shoal task event v1",
        id,
        at: e.at,
        status: e.status,
        node: &e.node,
        attempt: e.attempt,
        fence: e.fence,
        note: &e.note,
        by: &e.by,
    };
    postcard::to_stdvec(&signed).unwrap_or_default()
}

impl TaskEntry {
    /// A new task `id`, submitted by this node (`spec.submitted_by`, whose
    /// keys are `keys`), with no state yet: the submitter writes the first
    /// one with [`TaskEntry::transition`].
    pub fn new(id: &TaskId, spec: TaskSpec, keys: &Keys) -> Self {
        let spec_sig = keys.sign(&spec_bytes(id, &spec));
        TaskEntry {
            spec,
            spec_sig,
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

    /// Writes a new state of task `id` as `writer` (signed with `keys`,
    /// `writer`'s) and records it in the history with `note`. Returns false
    /// (and changes nothing) when the write would lose against the current
    /// state, for example a result under an old fence.
    pub fn transition(
        &mut self,
        id: &TaskId,
        state: TaskState,
        note: &str,
        writer: &NodeId,
        keys: &Keys,
    ) -> bool {
        let mut marker = TaskMarker {
            cancelled: state.status == TaskStatus::Cancelled,
            fence: state.fence,
            rank: state.status.rank(),
            seq: self.state.marker.seq.saturating_add(1),
            writer: writer.clone(),
            sig: Sig::default(),
        };
        if marker <= self.state.marker {
            return false;
        }
        marker.sig = keys.sign(&state_bytes(id, &state, &marker));
        let mut event = HistoryEvent {
            at: state.updated_at,
            status: state.status,
            node: state.node.clone(),
            attempt: state.attempt,
            fence: state.fence,
            note: note.to_owned(),
            by: writer.clone(),
            sig: Sig::default(),
        };
        event.sig = keys.sign(&event_bytes(id, &event));
        self.history.insert(event);
        self.state.merge(LWWReg { val: state, marker });
        true
    }

    /// Merges another replica's entry of the same task.
    pub fn merge(&mut self, other: TaskEntry) {
        if (&other.spec, &other.spec_sig) < (&self.spec, &self.spec_sig) {
            // A spec never changes: two can differ only when the submitter
            // signed two for one id, and then the smaller one wins on
            // every node.
            self.spec = other.spec;
            self.spec_sig = other.spec_sig;
        }
        self.state.merge(other.state);
        self.history.merge(other.history);
    }

    /// Checks that every part of this entry of task `id` was written by who
    /// may write it, in `keys`' scheme: the spec signed by its submitter;
    /// the state signed by its writer, its marker agreeing with it, and a
    /// run's start or result (`running`, `succeeded`) written by the node
    /// it names; every history line signed by the node it names. `known` is
    /// this node's entry of the task, if any: what it holds was checked
    /// when it came, so only what differs is checked again.
    pub fn check(&self, id: &TaskId, keys: &Keys, known: Option<&TaskEntry>) -> Result<(), String> {
        let spec_known = known.is_some_and(|k| k.spec == self.spec && k.spec_sig == self.spec_sig);
        if !spec_known
            && !keys.verify(
                &self.spec.submitted_by,
                &spec_bytes(id, &self.spec),
                &self.spec_sig,
            )
        {
            return Err(format!(
                "task {id}: spec not signed by its submitter {}",
                self.spec.submitted_by
            ));
        }
        let (st, m) = (&self.state.val, &self.state.marker);
        if m.seq == 0 {
            return Err(format!("task {id}: no state"));
        }
        if m.fence != st.fence
            || m.rank != st.status.rank()
            || m.cancelled != (st.status == TaskStatus::Cancelled)
        {
            return Err(format!("task {id}: marker and state disagree"));
        }
        if matches!(st.status, TaskStatus::Running | TaskStatus::Succeeded)
            && st.node.as_ref() != Some(&m.writer)
        {
            return Err(format!(
                "task {id}: {} wrote a run on {}",
                m.writer,
                st.node.as_ref().map_or("no node", |n| n.as_str())
            ));
        }
        let state_known = known.is_some_and(|k| k.state.marker == *m && k.state.val == *st);
        if !state_known && !keys.verify(&m.writer, &state_bytes(id, st, m), &m.sig) {
            return Err(format!(
                "task {id}: state not signed by its writer {}",
                m.writer
            ));
        }
        for e in self.history.read() {
            if known.is_some_and(|k| k.history.contains(&e)) {
                continue;
            }
            if !keys.verify(&e.by, &event_bytes(id, &e), &e.sig) {
                return Err(format!("task {id}: a history line not signed by {}", e.by));
            }
        }
        Ok(())
    }

    /// The longest signature the entry holds (for the shape check, before
    /// any is verified).
    pub fn longest_signature(&self) -> usize {
        self.history
            .read()
            .iter()
            .map(|e| e.sig.0.len())
            .chain([self.spec_sig.0.len(), self.state.marker.sig.0.len()])
            .max()
            .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(i: usize) -> (NodeId, Keys) {
        let id = NodeId::from(format!("n{i}"));
        let keys = Keys::sim(&id);
        (id, keys)
    }

    fn spec(by: &NodeId) -> TaskSpec {
        TaskSpec {
            capability: "echo".into(),
            payload: "{}".into(),
            max_attempts: 3,
            timeout_secs: 10,
            submitted_by: by.clone(),
            ..TaskSpec::default()
        }
    }

    fn state(status: TaskStatus, node: Option<&NodeId>, seq: u64) -> TaskState {
        TaskState {
            status,
            node: node.cloned(),
            attempt: 1,
            fence: Fence {
                term: crate::core::ids::Term(0),
                seq,
            },
            result: (status == TaskStatus::Succeeded).then(|| "42".into()),
            updated_at: Millis(seq),
            ..TaskState::default()
        }
    }

    /// Submitted by n0, placed on n1, run and finished by n1.
    fn honest() -> (TaskId, TaskEntry) {
        let id = TaskId("t".into());
        let ((s, sk), (a, ak)) = (node(0), node(1));
        let mut e = TaskEntry::new(&id, spec(&s), &sk);
        assert!(e.transition(
            &id,
            state(TaskStatus::Assigned, Some(&a), 1),
            "placed",
            &s,
            &sk
        ));
        assert!(e.transition(
            &id,
            state(TaskStatus::Running, Some(&a), 1),
            "started",
            &a,
            &ak
        ));
        let done = state(TaskStatus::Succeeded, Some(&a), 1);
        assert!(e.transition(&id, done, "succeeded", &a, &ak));
        (id, e)
    }

    #[test]
    fn an_honest_task_passes_whole_and_against_what_is_known() {
        let (id, e) = honest();
        let keys = node(9).1;
        assert_eq!(e.check(&id, &keys, None), Ok(()));
        assert_eq!(e.check(&id, &keys, Some(&e)), Ok(()));
        // Under another id, every signature fails.
        assert!(e.check(&TaskId("u".into()), &keys, None).is_err());
    }

    #[test]
    fn a_swapped_spec_a_state_in_another_name_and_a_forged_result_are_refused() {
        let (id, honest) = honest();
        let keys = node(9).1;
        let (f, fk) = node(5);
        // The payload swapped under the submitter's signature.
        let mut e = honest.clone();
        e.spec.payload = "{\"rm\":true}".into();
        let err = e.check(&id, &keys, Some(&honest)).unwrap_err();
        assert!(err.contains("spec not signed"), "{err}");
        // A cancel written in the submitter's name, signed by f.
        let mut e = honest.clone();
        let s = node(0).0;
        let cancel = state(TaskStatus::Cancelled, None, 1);
        assert!(e.transition(&id, cancel, "cancelled", &s, &fk));
        let err = e.check(&id, &keys, Some(&honest)).unwrap_err();
        assert!(err.contains("not signed by its writer"), "{err}");
        // f, as itself, writing a result for n1's run under a newer fence.
        let mut e = honest.clone();
        let a = node(1).0;
        assert!(e.transition(&id, state(TaskStatus::Succeeded, Some(&a), 2), "x", &f, &fk));
        let err = e.check(&id, &keys, Some(&honest)).unwrap_err();
        assert!(err.contains("wrote a run on"), "{err}");
        // f's own cancel, signed by f: attributable, so it passes.
        let mut e = honest.clone();
        assert!(e.transition(&id, state(TaskStatus::Cancelled, None, 1), "c", &f, &fk));
        assert_eq!(e.check(&id, &keys, Some(&honest)), Ok(()));
        // A history line changed after it was signed.
        let mut e = honest.clone();
        let mut lines = e.history.read();
        let mut line = lines.pop_first().unwrap();
        line.note = "rewritten".into();
        e.history.insert(line);
        let err = e.check(&id, &keys, Some(&honest)).unwrap_err();
        assert!(err.contains("history line"), "{err}");
    }

    proptest! {
        /// For random histories of writes, each signed by a random node in a
        /// random node's name, about random nodes: an entry passes exactly
        /// when every part was signed by who it names, and a run's state
        /// names its writer.
        #[test]
        fn a_task_passes_only_when_every_writer_rule_holds(
            steps in prop::collection::vec((0..3usize, 0..3usize, 0..5u8, 0..3usize), 1..6),
            spec_signer in 0..3usize,
        ) {
            let id = TaskId("t".into());
            let keys = node(9).1;
            let mut e = TaskEntry::new(&id, spec(&node(0).0), &node(spec_signer).1);
            let mut sound = spec_signer == 0;
            let mut last = None;
            for (i, (writer, signer, status, on_i)) in steps.into_iter().enumerate() {
                let status = [
                    TaskStatus::Pending,
                    TaskStatus::Assigned,
                    TaskStatus::Running,
                    TaskStatus::Succeeded,
                    TaskStatus::Failed,
                ][usize::from(status)];
                let (w, on) = (node(writer).0, node(on_i).0);
                let st = state(status, Some(&on), i as u64 + 1);
                if e.transition(&id, st, "step", &w, &node(signer).1) {
                    sound &= writer == signer;
                    last = Some((status, writer == on_i));
                }
            }
            if let Some((status, writes_own_run)) = last {
                if matches!(status, TaskStatus::Running | TaskStatus::Succeeded) {
                    sound &= writes_own_run;
                }
                prop_assert_eq!(e.check(&id, &keys, None).is_ok(), sound);
            }
        }
    }
}
