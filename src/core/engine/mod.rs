//! The engine: one node's whole protocol as a deterministic state machine.
//!
//! ```text
//! Engine::handle(now, Input)          the only way in
//! Engine::poll_output() -> Output     what to carry out, in order
//! Engine::poll_timeout() -> (at, token)   when to call again with Input::Timer
//! ```
//!
//! The engine does no IO and reads no clock: time comes with every input
//! ([`Now`]: monotonic for timers and failure detection, wall for
//! timestamps) and randomness from a generator seeded at construction. The
//! caller (the tokio runtime, or the simulator) owns sockets, the store and
//! handler processes, and does nothing but translate.
//!
//! The calling contract:
//! - Feed every input with the current time; then drain [`Engine::poll_output`]
//!   until it returns `None` and carry the outputs out in order.
//! - Answer every [`Output::Persist`] with [`Input::Persisted`] once the batch
//!   is durable (synced if it says so), or [`Input::PersistFailed`]. Replies,
//!   gossip and effects of the batch come out only after that.
//! - Call again with [`Input::Timer`] at the time [`Engine::poll_timeout`]
//!   gives (a stale or early token is ignored, so waking too often is safe).
//!
//! Inside: a [`Replica`] (the replicated state and the decisions about it)
//! and the protocol around it: group commit (`batch.rs`), gossip batching,
//! anti-entropy sessions (`entropy.rs`), redial with backoff and the timers
//! (`timers.rs`).

mod batch;
mod config;
mod control;
mod entropy;
mod io;
mod query;
mod timers;

pub use config::{EngineConfig, ProtocolConfig};
pub use io::{
    Answer, BatchId, Command, Counter, Input, LoadSample, MsgRef, Output, Persist, ReqId, SyncRef,
    TimerKind, Token,
};
pub use query::{Assignment, Found, MemberView, Query, Summary};

use crate::core::error::EngineError;
use crate::core::ids::{Mono, NodeId, Now};
use crate::core::lease::{Control, ControlConfig, ControlDisk, Lease, LeaseClaim};
use crate::core::member::MemberStatus;
use crate::core::replica::{Effect, Outcome, Replica};
use crate::core::rng::Rng;
use crate::core::state::{Delta, ReplicatedState};
use crate::core::swim::{SwimCounter, MAX_PACKET_BYTES};
use crate::core::validate;
use crate::core::wire::{self, Datagram, Gossip};
use batch::{Batches, Released};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use timers::Timers;

/// Committed changes waiting to be gossiped, and when gossip last went out.
#[derive(Debug, Default)]
struct Outbox {
    changed: Vec<Arc<Vec<Delta>>>,
    gossip: Vec<Delta>,
    last: Option<Mono>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.gossip.is_empty()
    }
}

/// How far a load figure (a fraction) must move before it is gossiped again.
const LOAD_THRESHOLD: f32 = 0.1;

/// The addresses a member's record gives (for a datagram to it).
fn addrs_of(replica: &Replica, node: &NodeId) -> Vec<String> {
    replica
        .state()
        .members
        .get(node)
        .map(|m| m.record().addrs.clone())
        .unwrap_or_default()
}

fn counter(c: SwimCounter) -> Counter {
    match c {
        SwimCounter::ProbeSent => Counter::ProbeSent,
        SwimCounter::ProbeFailed => Counter::ProbeFailed,
        SwimCounter::IndirectSent => Counter::IndirectProbe,
        SwimCounter::SuspicionRaised => Counter::SuspicionRaised,
        SwimCounter::SuspicionRefuted => Counter::SuspicionRefuted,
    }
}

/// One node's protocol machine.
#[derive(Debug)]
pub struct Engine {
    replica: Replica,
    cfg: ProtocolConfig,
    seed: u64,
    rng: Rng,
    clock: Now,
    /// Connected peers, in id order (the anti-entropy draw indexes it).
    peers: BTreeSet<NodeId>,
    /// Peers we are catching up with after connecting (what they send is
    /// not divergence).
    catching_up: BTreeSet<NodeId>,
    /// Whether this node's record went out again after its first catch-up
    /// (see `on_sync_response`).
    announced: bool,
    /// Peers this node dialed itself (kept when connections are trimmed).
    dialed: BTreeSet<NodeId>,
    /// Peers to ask for a summary again as soon as a diff is answered,
    /// because not every differing bucket fitted in it.
    resync: BTreeSet<NodeId>,
    /// Back-to-back rounds per peer that brought nothing.
    stalled: std::collections::BTreeMap<NodeId, u32>,
    batches: Batches,
    outbox: Outbox,
    timers: Timers,
    redial_backoff: u32,
    redial_skip: u32,
    load: LoadSample,
    /// The load figures last gossiped, and the running count with them.
    reported: Option<(LoadSample, u32)>,
    started: bool,
    /// The control plane (the lease holder's Raft group).
    control: Control,
    control_cfg: ControlConfig,
    control_seed: u64,
    out: Vec<Output>,
    ready: VecDeque<Output>,
}

impl Engine {
    /// An engine over `state` (as loaded from the store), seeded with
    /// `seed`: every random choice it makes comes from that seed. Feed it
    /// [`Input::Start`] first.
    pub fn new(cfg: EngineConfig, state: ReplicatedState, seed: u64) -> Self {
        // Two streams from one seed: the replica's (task ids, placement) and
        // the protocol's (peer choice).
        let mut root = Rng::new(seed);
        let replica = Replica::new(cfg.replica, state, root.next_u64());
        let rng = Rng::new(root.next_u64());
        let control_seed = root.next_u64();
        let control = Control::new(
            replica.node().clone(),
            replica.keys().clone(),
            cfg.control,
            None,
            Rng::new(control_seed),
        );
        Engine {
            control,
            control_seed,
            control_cfg: cfg.control,
            replica,
            cfg: cfg.protocol,
            seed,
            rng,
            clock: Now::default(),
            peers: BTreeSet::new(),
            catching_up: BTreeSet::new(),
            announced: false,
            dialed: BTreeSet::new(),
            resync: BTreeSet::new(),
            stalled: Default::default(),
            batches: Batches::default(),
            outbox: Outbox::default(),
            timers: Timers::default(),
            redial_backoff: 1,
            redial_skip: 0,
            load: LoadSample::default(),
            reported: None,
            started: false,
            out: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// The engine with its control plane's stored state (call before
    /// [`Input::Start`]).
    pub fn with_control(mut self, disk: Option<ControlDisk>) -> Self {
        self.control = Control::new(
            self.replica.node().clone(),
            self.replica.keys().clone(),
            self.control_cfg,
            disk,
            Rng::new(self.control_seed),
        );
        self
    }

    /// The lease as this node knows it (never a holder it holds dead or
    /// departed).
    pub fn lease(&self) -> Option<Lease> {
        self.control.lease().filter(|l| {
            self.replica
                .state()
                .members
                .get(&l.holder)
                .is_some_and(|m| {
                    matches!(
                        m.record().status,
                        MemberStatus::Alive | MemberStatus::Draining
                    )
                })
        })
    }

    /// Whether this node holds the lease (it is its plane's Raft leader).
    pub fn holds_lease(&self) -> bool {
        self.control.holds_lease()
    }

    /// This node's control plane (0: none yet).
    pub fn control_plane(&self) -> u64 {
        self.control.plane()
    }

    /// The voters of this node's control plane, as far as it knows them.
    pub fn voters(&self) -> Vec<NodeId> {
        self.control.voters()
    }

    /// The seed this engine was built with (log it: it replays the run).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        self.replica.node()
    }

    /// The replica, for queries. It reflects every input handled so far,
    /// including changes not yet durable: a reader that must not see those
    /// waits for a [`Command::Barrier`].
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Connected peers, as the engine was told.
    pub fn peers(&self) -> &BTreeSet<NodeId> {
        &self.peers
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    /// Drains every output waiting, in order.
    pub fn drain_outputs(&mut self) -> std::collections::vec_deque::Drain<'_, Output> {
        self.ready.drain(..)
    }

    /// When the engine wants to be called with [`Input::Timer`], and the
    /// token to call it with.
    pub fn poll_timeout(&self) -> Option<(Mono, Token)> {
        self.timers.next()
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Now, input: Input) {
        self.handle_all(now, std::iter::once(input));
    }

    /// Handles inputs that arrived together at `now`, in order. Their
    /// changes share one batch (one commit), which is how a busy node
    /// amortises its fsyncs.
    pub fn handle_all(&mut self, now: Now, inputs: impl IntoIterator<Item = Input>) {
        self.clock = Now {
            mono: self.clock.mono.max(now.mono),
            wall: now.wall,
        };
        self.replica.set_clock(self.clock);
        for input in inputs {
            self.dispatch(input);
            self.collect();
        }
        if let Some(released) = self.batches.advance(&mut self.out) {
            self.release(released);
            self.collect();
        }
        if self.started {
            let due = self.replica.detect_due();
            if self.timers.armed_at(TimerKind::Detect) != Some(due) {
                self.timers.arm(TimerKind::Detect, due);
            }
        }
        self.ready.extend(self.out.drain(..));
    }

    fn dispatch(&mut self, input: Input) {
        match input {
            Input::Start => self.start(),
            Input::Command(req, cmd) => self.command(req, cmd),
            Input::Gossip { from, msg, bytes } => self.on_gossip(from, msg, &bytes),
            Input::SyncRequest { from, id, bytes } => self.on_sync_request(from, id, &bytes),
            Input::SyncResponse { from, bytes } => self.on_sync_response(from, &bytes),
            Input::Probe { from, bytes } => self.on_probe(&from, &bytes),
            Input::SyncFailed { from } => self.end_session(&from),
            Input::PeerUp(peer) => self.peer_up(peer),
            Input::PeerDown(peer) => self.peer_down(&peer),
            Input::Timer(token) => self.on_timer(token),
            Input::HandlerDone {
                task,
                fence,
                outcome,
            } => self.handler_done(task, fence, outcome),
            Input::Persisted(id) => {
                if let Some(released) = self.batches.persisted(id) {
                    self.release(released);
                }
            }
            Input::PersistFailed { batch, reason } => {
                let failed = self.batches.failed(batch, &reason);
                self.out.extend(failed);
            }
            Input::Load(sample) => self.load = sample,
        }
    }

    fn start(&mut self) {
        self.started = true;
        let now = self.clock;
        self.replica.start(now.wall);
        let p = self.cfg;
        self.timers.arm(TimerKind::Tick, now.mono.plus(p.tick_ms));
        // The first load figures go out with the start's record; the next
        // look is an interval later.
        self.timers.arm(TimerKind::Load, now.mono.plus(p.load_ms));
        self.timers
            .arm(TimerKind::AntiEntropy, now.mono.plus(p.anti_entropy_ms));
        self.timers
            .arm(TimerKind::Redial, now.mono.plus(p.redial_ms));
        self.timers
            .arm(TimerKind::Control, now.mono.plus(self.control_cfg.tick_ms));
        self.out.push(Output::SampleLoad);
        if self.peers.is_empty() {
            self.out.push(Output::DialBootstrap);
        }
    }

    fn command(&mut self, req: ReqId, cmd: crate::core::engine::Command) {
        let wall = self.clock.wall;
        let leave = matches!(cmd, Command::Leave);
        if matches!(cmd, Command::RecoverControl) {
            let result = self
                .control_recover()
                .map(|(term, lost)| Answer::Recovered { term, lost })
                .map_err(EngineError::Conflict);
            self.reply(req, result);
            return;
        }
        let r = &mut self.replica;
        let result = match cmd {
            Command::KvPut { ns, key, value } => {
                r.kv_put(wall, &ns, &key, &value).map(Answer::Written)
            }
            Command::KvDel { ns, key } => r.kv_del(wall, &ns, &key).map(|()| Answer::Done),
            Command::SetPolicy { ns, policy } => {
                r.set_policy(wall, &ns, policy).map(|()| Answer::Done)
            }
            Command::SetStrategy(s) => {
                r.set_default_strategy(wall, s);
                Ok(Answer::Done)
            }
            Command::Submit(sub) => r
                .submit(wall, sub)
                .map(|(id, created)| Answer::Submitted { id, created }),
            Command::Cancel(id) => r.cancel(wall, &id).map(|()| Answer::Done),
            Command::Claim {
                worker,
                capabilities,
            } => r.claim(wall, &worker, &capabilities).map(Answer::Claimed),
            Command::Heartbeat { task, fence } => {
                r.heartbeat(wall, &task, fence).map(Answer::ClaimTtl)
            }
            Command::Complete {
                task,
                fence,
                outcome,
            } => r
                .complete(wall, &task, fence, outcome)
                .map(|()| Answer::Done),
            Command::Drain(node) => r.drain(wall, &node).map(|()| Answer::Done),
            Command::Remove(node) => r.remove_member(wall, &node).map(|()| Answer::Done),
            Command::Barrier => Ok(Answer::Done),
            Command::Leave => {
                r.leave(wall);
                Ok(Answer::Done)
            }
            Command::RecoverControl => unreachable!("answered above"),
        };
        self.reply(req, result);
        if leave {
            self.control_hand_over();
        }
    }

    /// A refusal changed nothing and is answered at once; a success waits
    /// for the batch that holds its changes.
    fn reply(&mut self, req: ReqId, result: Result<Answer, EngineError>) {
        match result {
            Err(e) => self.out.push(Output::Reply(req, Err(e))),
            Ok(a) => {
                // The changes it made are in the replica's effects: collect
                // them first, so the reply lands in their batch.
                self.collect();
                self.batches.open.replies.push((req, Ok(a)));
            }
        }
    }

    fn on_gossip(&mut self, from: NodeId, msg: MsgRef, bytes: &[u8]) {
        match wire::decode::<Gossip>(bytes, wire::MAX_GOSSIP_BYTES) {
            Ok(Gossip::Deltas(deltas)) => {
                // One unsound delta and the whole message is refused: applied
                // nowhere, forwarded nowhere.
                let (keys, known) = (self.replica.keys(), self.replica.state());
                if let Some(why) = deltas
                    .iter()
                    .find_map(|d| validate::remote(d, keys, known).err())
                {
                    self.out.push(Output::Count(Counter::DeltaRefused, 1));
                    self.out.push(Output::Verdict {
                        msg,
                        from,
                        rejected: Some(format!("refused delta: {why}")),
                    });
                    return;
                }
                self.out.push(Output::Verdict {
                    msg,
                    from,
                    rejected: None,
                });
                let wall = self.clock.wall;
                for d in deltas {
                    self.replica.apply_remote(wall, d);
                }
            }
            Ok(Gossip::Lease(claim)) => {
                let rejected = validate::claim(&claim, self.replica.keys()).err();
                let ok = rejected.is_none();
                self.out.push(Output::Verdict {
                    msg,
                    from,
                    rejected,
                });
                if ok {
                    self.control_observe(claim, false);
                }
            }
            Err(e) => self.out.push(Output::Verdict {
                msg,
                from,
                rejected: Some(e.to_string()),
            }),
        }
    }

    /// After a restart, while tasks are held (see `Replica::caught_up`):
    /// catch up with the lease holder, dialing it if need be; holding the
    /// lease itself, this node knows every move already.
    fn catch_up_with_holder(&mut self) {
        if !self.replica.is_holding() {
            return;
        }
        let Some(lease) = self.lease() else { return };
        let holder = lease.holder;
        if &holder == self.replica.node() {
            self.replica.caught_up(self.clock.wall);
        } else if self.peers.contains(&holder) {
            if self.catching_up.insert(holder.clone()) {
                self.ask_summary(holder);
            }
        } else if self.dialed.insert(holder.clone()) {
            let addrs = addrs_of(&self.replica, &holder);
            self.out.push(Output::Dial {
                node: holder,
                addrs,
            });
        }
    }

    fn peer_up(&mut self, peer: NodeId) {
        if &peer == self.replica.node() || !self.peers.insert(peer.clone()) {
            return;
        }
        self.catching_up.insert(peer.clone());
        self.ask_summary(peer);
    }

    fn peer_down(&mut self, peer: &NodeId) {
        self.peers.remove(peer);
        self.dialed.remove(peer);
        self.end_session(peer);
    }

    fn handler_done(
        &mut self,
        task: crate::core::ids::TaskId,
        fence: crate::core::ids::Fence,
        outcome: Option<Outcome>,
    ) {
        let Some(outcome) = outcome else { return };
        // A result too large to replicate fails the attempt (a worker
        // reporting one over the API gets 413 instead).
        let max = crate::core::replica::kv::MAX_VALUE_BYTES;
        let outcome = match outcome {
            Outcome::Success(r) if r.len() > max => Outcome::Failure(format!(
                "the handler's result of {} bytes is over the limit of {max}",
                r.len()
            )),
            o => o,
        };
        let label = if matches!(outcome, Outcome::Success(_)) {
            Counter::AttemptSucceeded
        } else {
            Counter::AttemptFailed
        };
        let counted = match self
            .replica
            .complete(self.clock.wall, &task, fence, outcome)
        {
            Ok(()) => label,
            Err(_) => Counter::AttemptRefused,
        };
        self.out.push(Output::Count(counted, 1));
    }

    fn on_timer(&mut self, token: Token) {
        let now = self.clock.mono;
        if !self.timers.fire(token, now) {
            return;
        }
        let p = self.cfg;
        match token.kind {
            TimerKind::Tick => {
                self.catch_up_with_holder();
                self.replica.tick(self.clock.wall);
                self.timers.arm(TimerKind::Tick, now.plus(p.tick_ms));
            }
            // Re-armed by `handle_all` for whatever the detector wants next.
            TimerKind::Detect => self.replica.detect(self.clock.wall),
            TimerKind::Load => {
                self.report_load();
                self.out.push(Output::SampleLoad);
                self.timers.arm(TimerKind::Load, now.plus(p.load_ms));
            }
            TimerKind::AntiEntropy => {
                self.anti_entropy_round();
                self.timers
                    .arm(TimerKind::AntiEntropy, now.plus(p.anti_entropy_ms));
            }
            TimerKind::Redial => {
                self.redial();
                self.timers.arm(TimerKind::Redial, now.plus(p.redial_ms));
            }
            TimerKind::GossipFlush => self.flush_gossip(),
            TimerKind::Control => self.control_tick(),
        }
    }

    /// Dials bootstrap peers when alone (backing off while it stays
    /// alone); tops up the connections to `max_peers` with members in
    /// service chosen at random; and tries one member declared dead, so
    /// that the sides of a healed partition find each other again (as
    /// Serf's reconnect does).
    fn redial(&mut self) {
        if self.redial_skip > 0 {
            self.redial_skip -= 1;
            return;
        }
        let alone = self.peers.is_empty();
        if alone {
            self.out.push(Output::DialBootstrap);
        }
        self.trim_connections();
        self.top_up(true);
        self.redial_backoff = if alone {
            (self.redial_backoff * 2).min(self.cfg.redial_backoff_max.max(1))
        } else {
            1
        };
        self.redial_skip = self.redial_backoff - 1;
    }

    /// Dials members in service chosen at random, up to `max_peers`
    /// connections, and (with `dead_too`) one member declared dead.
    pub(super) fn top_up(&mut self, dead_too: bool) {
        let me = self.replica.node().clone();
        let (mut candidates, mut dead): (Vec<&NodeId>, Vec<&NodeId>) = (Vec::new(), Vec::new());
        for (id, m) in &self.replica.state().members {
            if *id == me || self.peers.contains(id) || m.record().addrs.is_empty() {
                continue;
            }
            match m.record().status {
                MemberStatus::Alive | MemberStatus::Draining => candidates.push(id),
                // A removed member may be one cut off for longer than the
                // removal timeout: dialing it now and then heals the split.
                MemberStatus::Dead | MemberStatus::Removed => dead.push(id),
                MemberStatus::Left => {}
            }
        }
        let want = self.cfg.max_peers.saturating_sub(self.peers.len());
        let mut chosen = Vec::new();
        while chosen.len() < want && !candidates.is_empty() {
            let i = self.rng.below(candidates.len());
            chosen.push(candidates.swap_remove(i).clone());
        }
        if dead_too && !dead.is_empty() {
            let i = self.rng.below(dead.len());
            chosen.push(dead[i].clone());
        }
        for id in chosen {
            let addrs = self.replica.state().members[&id].record().addrs.clone();
            self.dialed.insert(id.clone());
            self.out.push(Output::Dial { node: id, addrs });
        }
    }

    /// Closes connections beyond `max_connections`, drawn at random among
    /// those this node did not dial and that are not catching up: what
    /// others opened to it (a bootstrap node is dialed by every joiner,
    /// Kademlia's queries connect to many) would otherwise stay open for
    /// good, since gossipsub keeps every connection with a stream alive.
    fn trim_connections(&mut self) {
        self.dialed.retain(|p| self.peers.contains(p));
        let excess = self.peers.len().saturating_sub(self.cfg.max_connections);
        if excess == 0 {
            return;
        }
        let mut candidates: Vec<&NodeId> = self
            .peers
            .iter()
            .filter(|p| !self.dialed.contains(*p) && !self.catching_up.contains(*p))
            .collect();
        let mut closing = Vec::new();
        while closing.len() < excess && !candidates.is_empty() {
            let i = self.rng.below(candidates.len());
            closing.push(candidates.swap_remove(i).clone());
        }
        for peer in closing {
            self.out.push(Output::Disconnect(peer));
        }
    }

    /// Gossips this node's load figures when they moved by more than a
    /// threshold since they were last gossiped (or its running count
    /// changed): placement needs the trend, not every sample.
    fn report_load(&mut self) {
        let l = self.load;
        let running = self.replica.active_on(self.replica.node());
        let moved = match self.reported {
            None => true,
            Some((r, n)) => {
                n != running
                    || (l.cpu - r.cpu).abs() > LOAD_THRESHOLD
                    || (l.memory - r.memory).abs() > LOAD_THRESHOLD
                    || (l.disk - r.disk).abs() > LOAD_THRESHOLD
            }
        };
        if moved {
            self.reported = Some((l, running));
            self.replica
                .report_load(self.clock.wall, l.cpu, l.memory, l.disk);
        }
    }

    /// A failure-detection packet: decoded and checked, then handed to the
    /// detector.
    fn on_probe(&mut self, from: &NodeId, bytes: &[u8]) {
        let packet = match wire::decode::<Datagram>(bytes, MAX_PACKET_BYTES) {
            Ok(Datagram::Swim { packet, lease }) => {
                // Most acks relay the announcement this node already holds:
                // its signature was checked once, when it first came.
                let keys = self.replica.keys();
                let sound = |c: &LeaseClaim| {
                    self.control.holds_claim(c) || validate::claim(c, keys).is_ok()
                };
                if let Some(claim) = lease.filter(sound) {
                    self.control_observe(claim, true);
                }
                packet
            }
            Ok(Datagram::Raft(m)) => return self.control_receive(from, *m),
            Err(_) => {
                self.out.push(Output::Count(Counter::ProbeMalformed, 1));
                return;
            }
        };
        if let Err(why) = validate::packet(&packet, self.replica.keys()) {
            tracing::debug!(peer = %from, %why, "refused a probe packet");
            self.out.push(Output::Count(Counter::ProbeMalformed, 1));
            return;
        }
        self.replica.probe_received(self.clock.wall, from, packet);
    }

    /// Moves what the replica produced into the open batch.
    fn collect(&mut self) {
        let open = &mut self.batches.open;
        for effect in self.replica.take_effects() {
            match effect {
                Effect::Changed(d) => {
                    open.synced = true;
                    open.changed.push(d);
                }
                Effect::Merged(d) => open.merged.push(d),
                Effect::Gossip(d) => open.gossip.push(d),
                Effect::Audit(a) => {
                    open.synced = true;
                    open.audit.push(a);
                }
                Effect::Start(t) => open.effects.push(Output::Start(t)),
                Effect::Abort { task, fence } => open.effects.push(Output::Abort { task, fence }),
                Effect::Event(e) => open.effects.push(Output::Event(e)),
                Effect::WorkAvailable => open.effects.push(Output::WorkAvailable),
                // Probes carry nothing durable: they go at once.
                Effect::Probe { to, packet } => {
                    let addrs = addrs_of(&self.replica, &to);
                    let lease = match packet.probe {
                        crate::core::swim::Probe::Ack { .. } => self.control.claim(),
                        _ => None,
                    };
                    let bytes = wire::encode(&Datagram::Swim { packet, lease });
                    self.out.push(Output::Probe { to, addrs, bytes });
                }
                Effect::Count(c) => self.out.push(Output::Count(counter(c), 1)),
            }
        }
    }

    /// Carries out what a durable (or store-free) batch releases: its
    /// replies and effects, and its changes into the gossip outbox.
    fn release(&mut self, released: Released) {
        self.out.extend(released.outputs);
        if let Some(changed) = released.changed.filter(|c| !c.is_empty()) {
            self.outbox.changed.push(changed);
        }
        self.outbox.gossip.extend(released.gossip);
        if self.outbox.is_empty() {
            return;
        }
        let due = self
            .outbox
            .last
            .map_or(self.clock.mono, |t| t.plus(self.cfg.gossip_window_ms));
        if due <= self.clock.mono {
            self.flush_gossip();
        } else {
            self.timers.arm_by(TimerKind::GossipFlush, due);
        }
    }

    /// Publishes every change waiting in the outbox.
    fn flush_gossip(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let deltas = self
            .outbox
            .changed
            .iter()
            .flat_map(|c| c.iter())
            .chain(&self.outbox.gossip);
        for m in wire::gossip_chunks(deltas, wire::MAX_GOSSIP_BYTES) {
            self.out.push(Output::Publish(m));
        }
        self.outbox.changed.clear();
        self.outbox.gossip.clear();
        self.outbox.last = Some(self.clock.mono);
    }

    /// True when the gossip flush timer is armed (changes wait in the window).
    pub fn gossip_waiting(&self) -> bool {
        self.timers.is_armed(TimerKind::GossipFlush)
    }
}

#[cfg(test)]
mod tests;
