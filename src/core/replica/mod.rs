//! The engine: one node's decisions, with no IO and no clock.
//!
//! The runtime calls the engine's methods with the current time and reads
//! back [`Effect`]s with [`Replica::take_effects`]: deltas to persist (and, in
//! a federation, to publish), tasks to start or abort, events and audit
//! records. The runtime must make every [`Effect::Changed`] durable before it
//! acknowledges the call that produced it.

pub mod kv;
mod tasks;

pub(crate) use kv::check_name;
pub use kv::{KvItem, KvListing, KvPage, KvWrite, MAX_NAME_LEN, RESERVED_NS};
pub use tasks::{Claimed, Migration, Outcome, SubmitRequest, MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT_SECS};

use crate::core::event::{AuditRecord, Event};
use crate::core::ids::{Fence, Millis, Mono, NodeId, Now, TaskId, Term};
use crate::core::member::{MemberEntry, MemberMarker, MemberRecord, MemberStatus};
use crate::core::placement::Strategy;
use crate::core::rng::Rng;
use crate::core::state::{Delta, ReplicatedState};
use crate::core::swim::{Packet, Swim, SwimCounter, SwimOut};
use crate::core::sync::SyncIndex;
use crate::core::task::{TaskEntry, TaskStatus};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// A hash map with a fixed hasher: the same inputs iterate in the same
/// order in every process, so nothing derived from one can differ by run.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// What the engine needs to know about its node.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This node.
    pub node: NodeId,
    /// This node's self-description (incarnation is taken from the state).
    pub record: MemberRecord,
    /// Capabilities this node runs with handlers (embedded or commands); the
    /// rest of `record.capabilities` is served by external workers.
    pub handlers: BTreeSet<String>,
    /// How long a worker's claim lives without a heartbeat, in ms.
    pub claim_ttl_ms: u64,
    /// Failure-detection timing.
    pub failure: crate::core::failure::FailureConfig,
    /// This node's signing key; peers' member records are checked in its
    /// scheme.
    pub keys: crate::core::sign::Keys,
}

/// What the runtime must carry out.
// Deltas are moved, not copied, through the output queue; boxing them would
// add an allocation per change for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Effect {
    /// A change to the replicated state: persist it (before acknowledging)
    /// and spread it.
    Changed(Delta),
    /// An entry's new state after merging a remote delta: persist it (no need
    /// to spread it: it came from the network).
    Merged(Delta),
    /// Spread it, but it need not be durable (heartbeats).
    Gossip(Delta),
    /// Run a task with a handler.
    Start(StartTask),
    /// Stop a running handler: the task was cancelled, timed out or re-fenced.
    Abort {
        /// The task.
        task: TaskId,
        /// The fence of the run to stop.
        fence: Fence,
    },
    /// An event for the stream.
    Event(Event),
    /// A record for the audit log.
    Audit(AuditRecord),
    /// Tasks are waiting for external workers: wake long-polling claims.
    WorkAvailable,
    /// Send a failure-detection packet to a member now (it waits for no
    /// batch: probes carry nothing durable).
    Probe {
        /// The member.
        to: NodeId,
        /// The packet.
        packet: Packet,
    },
    /// Count a failure-detection event.
    Count(SwimCounter),
}

/// A task the runtime should run with a handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartTask {
    /// The task.
    pub id: TaskId,
    /// Which handler.
    pub capability: String,
    /// Payload as JSON text.
    pub payload: String,
    /// The fence to report the outcome under.
    pub fence: Fence,
    /// The attempt number.
    pub attempt: u32,
    /// Timeout in seconds.
    pub timeout_secs: u64,
}

/// A task executing on this node.
#[derive(Clone, Debug)]
struct LocalRun {
    fence: Fence,
    deadline: Mono,
    /// For worker-claimed tasks: the worker and when its claim lapses.
    claim: Option<(String, Mono)>,
}

/// How many probe intervals a restarted node waits to catch up with the
/// lease holder before it starts the tasks its store says are assigned to
/// it anyway (none may be reachable: offline tolerance).
const HOLD_INTERVALS: u64 = 10;

/// One node's engine.
#[derive(Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    state: ReplicatedState,
    rng: Rng,
    /// Monotonic time of the input being handled (see [`Replica::set_clock`]).
    mono: Mono,
    term: Term,
    cursor: u64,
    seq: u64,
    outputs: Vec<Effect>,
    // Indexes derived from `state`, kept in step by `put_task`.
    keys: HashMap<String, TaskId>,
    active: HashMap<NodeId, u32>,
    pending: BTreeSet<(Millis, TaskId)>,
    queued: BTreeSet<(Millis, TaskId)>,
    local: BTreeMap<TaskId, LocalRun>,
    pending_dirty: bool,
    leaving: bool,
    /// This node holds the lease: it places the pending tasks of
    /// submitters that are gone, and moves tasks off nodes that are.
    holds_lease: bool,
    /// As lease holder: members it has seen dead or left, and since when
    /// (see [`Replica::remove_departed`]); when it last looked.
    departed: BTreeMap<NodeId, Mono>,
    departed_looked: Option<Mono>,
    /// After a restart: tasks this node's store says are assigned to it
    /// wait until it has caught up with a peer (the lease holder may have
    /// moved them meanwhile) or until this deadline.
    hold: Option<Mono>,
    // Failure detection (SWIM): probes, suspicions, local health. Its
    // verdicts of death are written to the member records.
    swim: Swim,
    swim_rng: Rng,
    // Digests for anti-entropy, kept in step by `emit`. Refreshed lazily,
    // also from `&self` readers, hence the cell.
    sync: RefCell<SyncIndex>,
}

/// A verdict one node writes on another's record: the status, and what it
/// tells the user (event) and the audit log.
struct Verdict {
    status: MemberStatus,
    event: Event,
    action: &'static str,
    detail: String,
}

impl Replica {
    /// An engine over `state` (as loaded from disk), seeded with `seed`.
    pub fn new(cfg: ReplicaConfig, state: ReplicatedState, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let swim_rng = rng.fork();
        let swim = Swim::new(cfg.failure.swim(), cfg.node.clone(), 0, Mono(0));
        let mut engine = Replica {
            cfg,
            state: ReplicatedState::default(),
            rng,
            mono: Mono(0),
            term: Term(0),
            cursor: 0,
            seq: 0,
            outputs: Vec::new(),
            keys: HashMap::default(),
            active: HashMap::default(),
            pending: BTreeSet::new(),
            queued: BTreeSet::new(),
            local: BTreeMap::new(),
            pending_dirty: true,
            leaving: false,
            holds_lease: false,
            departed: BTreeMap::new(),
            departed_looked: None,
            hold: None,
            swim,
            swim_rng,
            sync: RefCell::new(SyncIndex::new(&state)),
        };
        engine.state.members = state.members;
        engine.state.namespaces = state.namespaces;
        for (id, entry) in state.tasks {
            engine.index(&id, &entry);
            engine.state.tasks.insert(id, entry);
        }
        engine
    }

    /// Sets the monotonic time of what is being handled now. Methods take
    /// wall time (`now: Millis`) for the timestamps they write; timers,
    /// deadlines and the failure detector run on this clock instead, so a
    /// step of the wall clock never causes a verdict.
    pub fn set_clock(&mut self, now: Now) {
        self.mono = self.mono.max(now.mono);
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.cfg.node
    }

    /// This node's signing key (and the scheme peers' records are checked in).
    pub fn keys(&self) -> &crate::core::sign::Keys {
        &self.cfg.keys
    }

    /// The replicated state (read only).
    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }

    /// The convergence digest of the state (see [`ReplicatedState::digest`]),
    /// from digests kept up to date as the state changes.
    pub fn digest(&self) -> blake3::Hash {
        self.sync.borrow_mut().digest(&self.state)
    }

    /// One digest per anti-entropy bucket.
    pub fn sync_summary(&self) -> Vec<[u8; 8]> {
        self.sync.borrow_mut().summary(&self.state)
    }

    /// The leaf digests of anti-entropy buckets.
    pub fn sync_leaves(&self, buckets: &[u16]) -> Vec<(u16, Vec<[u8; 8]>)> {
        self.sync.borrow_mut().leaves(&self.state, buckets)
    }

    /// The cells where a peer's leaf digests differ from this replica's.
    pub fn sync_differing_cells(&self, theirs: &[(u16, Vec<[u8; 8]>)]) -> Vec<u16> {
        self.sync.borrow_mut().differing_cells(&self.state, theirs)
    }

    /// For a diff request: the cells taken of `cells` and the (id, digest)
    /// pairs of this replica's entries in them.
    pub fn sync_have(&self, cells: &[u16]) -> (Vec<u16>, Vec<(u64, u64)>) {
        self.sync
            .borrow_mut()
            .have(&self.state, cells, crate::core::sync::MAX_HAVE)
    }

    /// For a diff answer: this replica's entries in `cells` that a peer
    /// holding `have` lacks or holds in another state.
    pub fn sync_missing(&self, cells: &[u16], have: &[(u64, u64)]) -> Vec<Delta> {
        self.sync.borrow_mut().missing(&self.state, cells, have)
    }

    /// Takes the outputs produced since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.outputs)
    }

    /// Drains the outputs produced since the last call, keeping the buffer
    /// for the next ones.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.outputs.drain(..)
    }

    fn emit(&mut self, out: Effect) {
        if let Effect::Changed(d) | Effect::Merged(d) | Effect::Gossip(d) = &out {
            self.sync.get_mut().touch(d);
        }
        self.outputs.push(out);
    }

    /// Announces this node: a new incarnation of its membership record.
    /// Tasks that were running here when the node stopped are taken up
    /// again as a new attempt (their handlers died with the process).
    pub fn start(&mut self, now: Millis) {
        let me = self.cfg.node.clone();
        let mut entry = self.state.members.get(&me).cloned().unwrap_or_default();
        let mut record = self.cfg.record.clone();
        record.incarnation = entry.marker().incarnation + 1;
        record.status = MemberStatus::Alive;
        record.updated_at = now;
        let incarnation = record.incarnation;
        entry.write(&me, record, &me, &self.cfg.keys);
        self.put_member(me.clone(), entry);
        self.emit(Effect::Event(Event::MemberJoined { node: me }));
        // Watch every member the store knows in service: those that are
        // gone are found out by probing them.
        self.swim = Swim::new(self.cfg.failure.swim(), self.cfg.node.clone(), 0, self.mono);
        self.announce_incarnation(incarnation);
        for (id, m) in &self.state.members {
            if matches!(
                m.record().status,
                MemberStatus::Alive | MemberStatus::Draining
            ) {
                self.swim
                    .watch(id, m.marker().incarnation, self.mono, &mut self.swim_rng);
            }
        }
        self.drain_swim(now);
        // What the store says is assigned or running here may have moved
        // while this node was down: it is neither started nor retried (the
        // retry would place it anew) until this node has caught up with the
        // lease holder, the one that moves tasks (a peer that restarted with
        // it may be as stale as it is), or for a few probe intervals.
        let assigned_here = self.state.tasks.values().any(|t| {
            matches!(t.state().status, TaskStatus::Assigned | TaskStatus::Running)
                && t.state().node.as_ref() == Some(&self.cfg.node)
        });
        if assigned_here {
            self.hold = Some(
                self.mono.plus(
                    self.cfg
                        .failure
                        .heartbeat_interval_ms
                        .saturating_mul(HOLD_INTERVALS),
                ),
            );
        }
        self.pending_dirty = true;
        self.tick(now);
    }

    /// Whether tasks from before a restart wait for this node to catch up
    /// with the lease holder (see [`Replica::caught_up`]).
    pub fn is_holding(&self) -> bool {
        self.hold.is_some()
    }

    /// This node has caught up with the lease holder (an anti-entropy
    /// session with it ended), or holds the lease itself: it knows every
    /// move the holder made, so the tasks held since the restart may start.
    pub fn caught_up(&mut self, now: Millis) {
        if self.hold.take().is_some() {
            self.release_held(now);
        }
    }

    /// The tasks held since the restart: runs the restart interrupted are
    /// failed and retried, assigned ones start.
    fn release_held(&mut self, now: Millis) {
        self.recover_interrupted(now);
        self.start_queued(now);
    }

    /// Whether tasks from before a restart are still held (see
    /// [`Replica::caught_up`]).
    fn holding(&self) -> bool {
        self.hold.is_some()
    }

    fn put_member(&mut self, id: NodeId, entry: MemberEntry) {
        self.state
            .apply(Delta::Member(id.clone(), Box::new(entry.clone())));
        self.emit(Effect::Changed(Delta::Member(id, Box::new(entry))));
    }

    /// Marks this node as draining: it takes no new tasks and finishes what
    /// it has.
    pub fn drain(&mut self, now: Millis, node: &NodeId) -> Result<(), crate::core::EngineError> {
        let entry = self.state.members.get(node).cloned().ok_or_else(|| {
            crate::core::EngineError::NotFound {
                what: "node",
                id: node.to_string(),
            }
        })?;
        match entry.record().status {
            MemberStatus::Draining => return Ok(()),
            MemberStatus::Alive => {}
            other => {
                return Err(crate::core::EngineError::Conflict(format!(
                    "node {node} is {}; only an alive node can be drained",
                    other.as_str()
                )))
            }
        }
        self.write_verdict(
            now,
            node,
            entry,
            Verdict {
                status: MemberStatus::Draining,
                event: Event::MemberDraining { node: node.clone() },
                action: "node_drained",
                detail: "drain requested".into(),
            },
        );
        Ok(())
    }

    /// Removes a member that left or was declared dead before the removal
    /// timeout: its record becomes a `removed` tombstone (until it rejoins
    /// with a new incarnation).
    pub fn remove_member(
        &mut self,
        now: Millis,
        node: &NodeId,
    ) -> Result<(), crate::core::EngineError> {
        use crate::core::EngineError;
        if node == &self.cfg.node {
            return Err(EngineError::Conflict(
                "cannot remove the local node: drain it or stop it".into(),
            ));
        }
        let entry = self
            .state
            .members
            .get(node)
            .cloned()
            .ok_or_else(|| EngineError::NotFound {
                what: "node",
                id: node.to_string(),
            })?;
        let status = entry.record().status;
        if matches!(status, MemberStatus::Alive | MemberStatus::Draining) {
            return Err(EngineError::Conflict(format!(
                "node {node} is {}; only dead or departed nodes can be removed",
                status.as_str()
            )));
        }
        if status == MemberStatus::Removed {
            return Ok(());
        }
        self.write_verdict(
            now,
            node,
            entry,
            Verdict {
                status: MemberStatus::Removed,
                event: Event::MemberRemoved { node: node.clone() },
                action: "node_removed",
                detail: "removed by an operator".into(),
            },
        );
        Ok(())
    }

    /// As lease holder: removes the members it has seen dead or left for
    /// the removal timeout (by its own monotonic clock, so a new holder
    /// counts afresh and clocks' skew plays no part). Each becomes a
    /// `removed` tombstone (a verdict over its own last version), audited;
    /// it beats the tombstone by coming back with a higher incarnation.
    /// Looks once per probe interval.
    pub fn remove_departed(&mut self, now: Millis) {
        let every = self.cfg.failure.heartbeat_interval_ms;
        if !self.holds_lease
            || self
                .departed_looked
                .is_some_and(|at| self.mono.since(at) < every)
        {
            return;
        }
        self.departed_looked = Some(self.mono);
        let (mono, timeout) = (self.mono, self.cfg.failure.removed_after_ms);
        let mut due = Vec::new();
        let mut seen = BTreeMap::new();
        for (id, m) in &self.state.members {
            let status = m.record().status;
            if !matches!(status, MemberStatus::Dead | MemberStatus::Left) {
                continue;
            }
            let since = self.departed.get(id).copied().unwrap_or(mono);
            if mono.since(since) >= timeout {
                due.push((id.clone(), status));
            } else {
                seen.insert(id.clone(), since);
            }
        }
        self.departed = seen;
        for (id, was) in due {
            let Some(entry) = self.state.members.get(&id).cloned() else {
                continue;
            };
            self.write_verdict(
                now,
                &id,
                entry,
                Verdict {
                    status: MemberStatus::Removed,
                    event: Event::MemberRemoved { node: id.clone() },
                    action: "node_removed",
                    detail: format!(
                        "{} for {} s: removed by the lease holder",
                        was.as_str(),
                        timeout / 1000
                    ),
                },
            );
        }
    }

    /// Leaves gracefully: marks this node `left` and hands its tasks back.
    pub fn leave(&mut self, now: Millis) {
        self.leaving = true;
        let me = self.cfg.node.clone();
        let mut entry = self.state.members.get(&me).cloned().unwrap_or_default();
        let mut record = entry.record().clone();
        record.status = MemberStatus::Left;
        record.updated_at = now;
        entry.write(&me, record, &me, &self.cfg.keys);
        self.put_member(me.clone(), entry);
        self.requeue_local(now);
        self.emit(Effect::Event(Event::MemberLeft { node: me }));
    }

    /// Records this node's current load in its membership record.
    pub fn report_load(&mut self, now: Millis, cpu: f32, memory: f32, disk: f32) {
        let me = self.cfg.node.clone();
        let Some(mut entry) = self.state.members.get(&me).cloned() else {
            return;
        };
        let mut record = entry.record().clone();
        record.load.running = self.active.get(&me).copied().unwrap_or(0);
        record.load.cpu = cpu;
        record.load.memory = memory;
        record.load.disk = disk;
        record.updated_at = now;
        entry.write(&me, record, &me, &self.cfg.keys);
        // A heartbeat: spread, not persisted (load figures are ephemeral, and
        // a restart announces a new incarnation anyway).
        self.state
            .apply(Delta::Member(me.clone(), Box::new(entry.clone())));
        self.emit(Effect::Gossip(Delta::Member(me, Box::new(entry))));
    }

    /// Gossips this node's member record as it is (nothing rewritten).
    pub fn announce(&mut self) {
        let me = self.cfg.node.clone();
        if let Some(entry) = self.state.members.get(&me).cloned() {
            self.emit(Effect::Gossip(Delta::Member(me, Box::new(entry))));
        }
    }

    /// Merges a delta that came from another node (by gossip or sync).
    /// Returns true when it changed this replica (a delta already seen
    /// changes nothing and produces no output).
    pub fn apply_remote(&mut self, now: Millis, delta: Delta) -> bool {
        let changed = match delta {
            Delta::Task(id, entry) => {
                let merged = match self.state.tasks.get(&id) {
                    Some(known) => {
                        let mut merged = known.clone();
                        merged.merge(*entry);
                        if merged.marker() == known.marker()
                            && merged.history().len() == known.history().len()
                        {
                            return false;
                        }
                        merged
                    }
                    None => *entry,
                };
                self.emit(Effect::Merged(Delta::Task(
                    id.clone(),
                    Box::new(merged.clone()),
                )));
                self.put_task(now, id, merged, false);
                true
            }
            Delta::Member(id, entry) => self.merge_member(now, id, entry),
            Delta::Kv { ns, key, entry } => {
                let namespace = self.state.namespace_mut(&ns);
                let Some(merged) = namespace.merge_entry(key.clone(), entry) else {
                    return false;
                };
                let entry = merged.clone();
                self.emit(Effect::Event(Event::KvMerged {
                    ns: ns.clone(),
                    key: key.clone(),
                }));
                self.emit(Effect::Merged(Delta::Kv { ns, key, entry }));
                true
            }
            Delta::Policy { ns, policy } => {
                let namespace = self.state.namespace_mut(&ns);
                let before = namespace.policy.clone();
                crdts::CvRDT::merge(&mut namespace.policy, policy);
                if namespace.policy == before {
                    return false;
                }
                let policy = namespace.policy.clone();
                self.emit(Effect::Merged(Delta::Policy { ns, policy }));
                true
            }
        };
        self.pending_dirty = true;
        changed
    }

    /// Merges a member record; true when the record changed.
    fn merge_member(&mut self, now: Millis, id: NodeId, entry: Box<MemberEntry>) -> bool {
        let before = self.state.members.get(&id).map(|m| m.marker().clone());
        let known = before.is_some();
        let delta = Delta::Member(id.clone(), entry);
        // Any change to the record (not only to its marker) must reach the
        // sync index; touching an unchanged entry is harmless.
        self.sync.get_mut().touch(&delta);
        self.state.apply(delta);
        // Heartbeats come often: look, and copy only what a change needs.
        let current = &self.state.members[&id];
        if before.as_ref() == Some(current.marker()) {
            return false;
        }
        let marker = current.marker().clone();
        let status = current.record().status;
        // Persist only what is not a mere heartbeat.
        let stable = |m: &MemberMarker| (m.incarnation, m.status);
        if before.as_ref().map(stable) != Some(stable(&marker)) || !known {
            let merged = current.clone();
            self.emit(Effect::Merged(Delta::Member(id.clone(), Box::new(merged))));
        }
        if id == self.cfg.node {
            let merged = self.state.members[&id].clone();
            self.refute(now, &merged);
            return true;
        }
        match status {
            MemberStatus::Alive | MemberStatus::Draining => {
                self.swim
                    .watch(&id, marker.incarnation, self.mono, &mut self.swim_rng);
                self.drain_swim(now);
                if !known {
                    self.emit(Effect::Event(Event::MemberJoined { node: id.clone() }));
                } else if before
                    .as_ref()
                    .is_some_and(|b| b.incarnation < marker.incarnation)
                {
                    self.emit(Effect::Event(Event::MemberRecovered { node: id.clone() }));
                }
                if status == MemberStatus::Draining
                    && before
                        .as_ref()
                        .is_some_and(|b| b.status == MemberStatus::Alive)
                {
                    self.emit(Effect::Event(Event::MemberDraining { node: id.clone() }));
                }
            }
            MemberStatus::Left => {
                self.swim.forget(&id);
                self.emit(Effect::Event(Event::MemberLeft { node: id.clone() }));
            }
            MemberStatus::Dead => {
                self.swim.forget(&id);
                self.emit(Effect::Event(Event::MemberDead { node: id.clone() }));
            }
            MemberStatus::Removed => {
                self.swim.forget(&id);
                self.emit(Effect::Event(Event::MemberRemoved { node: id.clone() }));
            }
        }
        true
    }

    /// Another node declared this one dead or departed while it runs: come
    /// back with a higher incarnation, as SWIM does.
    fn refute(&mut self, now: Millis, merged: &MemberEntry) {
        if !merged.record().status.is_gone() || self.leaving {
            return;
        }
        let me = self.cfg.node.clone();
        let mut entry = merged.clone();
        let mut record = self.cfg.record.clone();
        record.incarnation = merged.marker().incarnation + 1;
        record.status = MemberStatus::Alive;
        record.updated_at = now;
        let incarnation = record.incarnation;
        entry.write(&me, record, &me, &self.cfg.keys);
        self.put_member(me, entry);
        self.announce_incarnation(incarnation);
    }

    /// A member suspects this node at `incarnation`: announce a higher one,
    /// keeping the declared status (a draining node stays draining).
    fn refute_suspicion(&mut self, now: Millis, incarnation: u64) {
        if self.leaving || incarnation < self.swim.incarnation() {
            return;
        }
        let me = self.cfg.node.clone();
        let Some(mut entry) = self.state.members.get(&me).cloned() else {
            return;
        };
        let mut record = entry.record().clone();
        record.incarnation = record.incarnation.max(incarnation) + 1;
        record.updated_at = now;
        let incarnation = record.incarnation;
        entry.write(&me, record, &me, &self.cfg.keys);
        self.put_member(me, entry);
        self.announce_incarnation(incarnation);
    }

    /// Tells the failure detector this node's new incarnation, signed, so
    /// that the `alive` it spreads can be checked by every node.
    fn announce_incarnation(&mut self, incarnation: u64) {
        let me = &self.cfg.node;
        let sig = self
            .cfg
            .keys
            .sign(&crate::core::swim::alive_bytes(me, incarnation));
        self.swim.set_incarnation(incarnation, sig);
    }

    /// A failure-detection packet from `from`.
    pub fn probe_received(&mut self, now: Millis, from: &NodeId, packet: Packet) {
        self.swim.receive(from, packet, self.mono);
        self.drain_swim(now);
    }

    /// When the failure detector wants [`Replica::detect`] called next.
    pub fn detect_due(&self) -> Mono {
        self.swim.next_wakeup()
    }

    /// Turns what the failure detector asked for into effects and verdicts.
    fn drain_swim(&mut self, now: Millis) {
        let outs: Vec<SwimOut> = self.swim.drain().collect();
        for o in outs {
            match o {
                SwimOut::Send { to, packet } => self.emit(Effect::Probe { to, packet }),
                SwimOut::Suspect(node) => self.emit(Effect::Event(Event::MemberSuspect { node })),
                SwimOut::Recovered(node) => {
                    self.pending_dirty = true;
                    self.emit(Effect::Event(Event::MemberRecovered { node }));
                }
                SwimOut::Dead {
                    node,
                    suspected_ms,
                    confirmations,
                } => self.declare_dead(
                    now,
                    node,
                    format!(
                        "no answer to direct or indirect probes; suspected for {suspected_ms} ms, confirmed by {confirmations} other members"
                    ),
                ),
                SwimOut::Refute(incarnation) => self.refute_suspicion(now, incarnation),
                SwimOut::Count(c) => self.emit(Effect::Count(c)),
            }
        }
    }

    /// The other members that are alive or draining (the ones to watch and
    /// to stay connected to).
    pub fn other_members_in_service(&self) -> Vec<NodeId> {
        self.state
            .members
            .iter()
            .filter(|(id, m)| {
                **id != self.cfg.node
                    && matches!(
                        m.record().status,
                        MemberStatus::Alive | MemberStatus::Draining
                    )
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A task by id.
    pub fn task(&self, id: &TaskId) -> Result<&TaskEntry, crate::core::EngineError> {
        self.state
            .tasks
            .get(id)
            .ok_or_else(|| crate::core::EngineError::NotFound {
                what: "task",
                id: id.to_string(),
            })
    }

    /// Runs the failure detector: what is due of the probe in flight, the
    /// next probe, suspicions that ran out (a dead verdict is written to the
    /// replicated record, so it spreads to every node).
    pub fn detect(&mut self, now: Millis) {
        self.swim.tick(self.mono, &mut self.swim_rng);
        self.drain_swim(now);
    }

    fn declare_dead(&mut self, now: Millis, id: NodeId, detail: String) {
        let Some(entry) = self.state.members.get(&id).cloned() else {
            return;
        };
        if !matches!(
            entry.record().status,
            MemberStatus::Alive | MemberStatus::Draining
        ) {
            return;
        }
        self.swim.forget(&id);
        self.write_verdict(
            now,
            &id,
            entry,
            Verdict {
                status: MemberStatus::Dead,
                event: Event::MemberDead { node: id.clone() },
                action: "node_declared_dead",
                detail,
            },
        );
        self.pending_dirty = true;
    }

    /// Writes this node's verdict on member `id` (dead, draining, removed)
    /// into `entry`, its current record, signed by this node over the
    /// member's own version (see `MemberEntry::write`), with its event and
    /// audit record.
    fn write_verdict(&mut self, now: Millis, id: &NodeId, mut entry: MemberEntry, v: Verdict) {
        let mut record = entry.record().clone();
        record.status = v.status;
        record.updated_at = now;
        entry.write(id, record, &self.cfg.node, &self.cfg.keys);
        self.put_member(id.clone(), entry);
        self.emit(Effect::Event(v.event));
        self.emit(Effect::Audit(AuditRecord {
            at: now,
            by: self.cfg.node.clone(),
            action: v.action.into(),
            subject: id.to_string(),
            detail: v.detail,
        }));
    }

    /// The status of a member as this node sees it: its declared status, or
    /// `suspect` when the failure detector suspects it.
    pub fn member_status(&self, id: &NodeId) -> &'static str {
        if self.swim.is_suspect(id) {
            return "suspect";
        }
        self.state
            .members
            .get(id)
            .map(|m| m.record().status.as_str())
            .unwrap_or("dead")
    }

    /// Milliseconds since this node last heard from `id` (0 for itself):
    /// by the monotonic clock when the failure detector watches it, else by
    /// the wall time its record was written (`now` is wall time).
    pub fn last_heard_ms(&self, now: Millis, id: &NodeId) -> u64 {
        if id == &self.cfg.node {
            return 0;
        }
        self.swim
            .last_heard(id)
            .map(|t| self.mono.since(t))
            .unwrap_or_else(|| {
                self.state
                    .members
                    .get(id)
                    .map(|m| now.since(m.record().updated_at))
                    .unwrap_or(0)
            })
    }

    /// True when `id` is alive, not draining and not suspected.
    pub(crate) fn can_take_work(&self, id: &NodeId) -> bool {
        !self.swim.is_suspect(id)
            && self
                .state
                .members
                .get(id)
                .is_some_and(|m| m.record().status == MemberStatus::Alive)
    }

    /// Sets this node's p2p addresses in its member record.
    pub fn set_addrs(&mut self, now: Millis, addrs: Vec<String>) {
        self.cfg.record.addrs = addrs.clone();
        let me = self.cfg.node.clone();
        let Some(mut entry) = self.state.members.get(&me).cloned() else {
            return;
        };
        let mut record = entry.record().clone();
        record.addrs = addrs;
        record.updated_at = now;
        entry.write(&me, record, &me, &self.cfg.keys);
        self.put_member(me, entry);
    }

    /// The current lease term (0 while no lease holder exists).
    pub fn term(&self) -> Term {
        self.term
    }

    /// Whether this node holds the lease, and in which term: the holder's
    /// fences carry its term, and it places what no submitter can.
    pub fn set_lease(&mut self, holds: bool, term: Term) {
        if holds != self.holds_lease {
            self.pending_dirty = true;
            self.departed.clear();
            self.departed_looked = None;
        }
        self.holds_lease = holds;
        if holds {
            self.term = self.term.max(term);
        }
    }

    /// Periodic work: expire claims and timeouts, start queued tasks, place
    /// pending ones. (Failure detection runs on its own cadence:
    /// [`Replica::detect`].)
    pub fn tick(&mut self, now: Millis) {
        if self.hold.is_some_and(|until| self.mono >= until) {
            self.hold = None;
            self.release_held(now);
        }
        self.expire_local(now);
        self.start_queued(now);
        if self.pending_dirty {
            self.pending_dirty = false;
            self.place_pending(now);
        }
    }

    /// Tasks assigned to or running on `node`.
    pub fn active_on(&self, node: &NodeId) -> u32 {
        self.active.get(node).copied().unwrap_or(0)
    }

    /// The cluster's default placement strategy.
    pub fn default_strategy(&self) -> Strategy {
        self.kv_get(RESERVED_NS, "strategy")
            .ok()
            .and_then(|item| serde_json::from_str::<Strategy>(&item.value).ok())
            .unwrap_or_default()
    }

    // ---- index upkeep ----------------------------------------------------

    fn index(&mut self, id: &TaskId, entry: &TaskEntry) {
        let st = entry.state();
        if let Some(key) = &entry.spec().key {
            self.keys.entry(key.clone()).or_insert_with(|| id.clone());
        }
        let at = entry.spec().submitted_at;
        match st.status {
            TaskStatus::Pending => {
                self.pending.insert((at, id.clone()));
            }
            TaskStatus::Assigned | TaskStatus::Running => {
                if let Some(node) = &st.node {
                    *self.active.entry(node.clone()).or_default() += 1;
                    if node == &self.cfg.node && st.status == TaskStatus::Assigned {
                        self.queued.insert((at, id.clone()));
                    }
                }
            }
            _ => {}
        }
    }

    fn unindex(&mut self, id: &TaskId, entry: &TaskEntry) {
        let st = entry.state();
        let at = entry.spec().submitted_at;
        match st.status {
            TaskStatus::Pending => {
                self.pending.remove(&(at, id.clone()));
            }
            TaskStatus::Assigned | TaskStatus::Running => {
                if let Some(node) = &st.node {
                    if let Some(n) = self.active.get_mut(node) {
                        *n = n.saturating_sub(1);
                    }
                    self.queued.remove(&(at, id.clone()));
                }
            }
            _ => {}
        }
    }

    /// Stores a task's new entry, keeps the indexes in step, emits the delta
    /// when the change is local, and reacts to what changed for this node.
    fn put_task(&mut self, now: Millis, id: TaskId, entry: TaskEntry, local: bool) {
        if let Some(old) = self.state.tasks.remove(&id) {
            self.unindex(&id, &old);
        }
        self.index(&id, &entry);
        if local {
            self.emit(Effect::Changed(Delta::Task(
                id.clone(),
                Box::new(entry.clone()),
            )));
        }
        let st = entry.state().clone();
        self.state.tasks.insert(id.clone(), entry);
        self.react(now, &id, &st);
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

#[cfg(test)]
mod tests;
