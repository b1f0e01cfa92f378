//! The simulated world: nodes, each an [`Engine`] with an in-memory store,
//! a seeded network and a time-ordered event queue.
//!
//! Events at the same instant pop in the order they were scheduled (each
//! carries a sequence number), and every random draw comes from streams
//! forked from the run's seed, so a seed replays exactly.

use super::check::{sim_node_id, Ack, Checker};
use super::net::{Frame, GossipState, Network};
use super::scenario::Scenario;
use crate::core::engine::{
    Answer, BatchId, Command, EngineConfig, Input, LoadSample, Output, Persist, ProtocolConfig,
    ReqId, Token,
};
use crate::core::ids::{Fence, Millis, Mono, NodeId, Now, TaskId};
use crate::core::knowledge::Policy;
use crate::core::member::MemberRecord;
use crate::core::replica::{Outcome, ReplicaConfig};
use crate::core::rng::Rng;
use crate::core::state::ReplicatedState;
use crate::core::Engine;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;

mod faults;
mod traffic;

/// True when `have` has seen everything `want` has (`>=` on version
/// vectors, which are partially ordered).
fn contains(
    have: &crate::core::knowledge::Version,
    want: &crate::core::knowledge::Version,
) -> bool {
    have >= want
}

/// Wall-clock origin of a run (any fixed date works).
const EPOCH_MS: u64 = 1_780_000_000_000;
/// Namespaces of the workload, one per policy.
pub const NAMESPACES: [(&str, Policy); 3] = [
    ("lww", Policy::Lww),
    ("mv", Policy::Mv),
    ("set", Policy::Set),
];

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Something that happens at an instant.
#[derive(Debug)]
pub(super) enum SimEvent {
    Boot(usize),
    Deliver {
        to: usize,
        from: usize,
        frame: Frame,
    },
    Timer {
        node: usize,
        life: u32,
        token: Token,
    },
    Persisted {
        node: usize,
        life: u32,
        batch: BatchId,
    },
    HandlerDone {
        node: usize,
        life: u32,
        task: TaskId,
        fence: Fence,
    },
    Connect {
        a: usize,
        b: usize,
    },
    CloseIfCut {
        a: usize,
        b: usize,
    },
    PeerDown {
        node: usize,
        peer: usize,
    },
    SyncTimeout {
        req: u64,
    },
    GossipBeat {
        node: usize,
        life: u32,
    },
    Workload,
    /// Whether every running node lists every other one alive yet.
    JoinCheck,
    Fault(usize),
    Heal(usize),
    Restart(usize),
    Stop {
        node: usize,
        life: u32,
    },
    Liveness,
    Check,
}

/// The event queue: a heap of (time, sequence, slot) over a slab of
/// events, so the heap moves 24-byte keys, not events. Equal times pop in
/// the order they were scheduled.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<SimEvent>>,
    free: Vec<u32>,
}

impl Queue {
    fn push(&mut self, at: u64, seq: u64, event: SimEvent) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(event);
                s
            }
            None => {
                self.slab.push(Some(event));
                (self.slab.len() - 1) as u32
            }
        };
        self.heap.push(Reverse((at, seq, slot)));
    }

    fn pop(&mut self) -> Option<(u64, SimEvent)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        self.slab[slot as usize].take().map(|e| (at, e))
    }
}

/// What a node's request was, to make sense of its reply.
#[derive(Debug)]
enum Asked {
    Put { ns: String, key: String },
    Submit,
    Leave,
    Recover,
    Other,
}

/// One simulated node.
pub(super) struct SimNode {
    pub(super) id: NodeId,
    pub(super) engine: Option<Engine>,
    /// Bumped at every boot: events of an earlier life are dropped.
    pub(super) life: u32,
    /// What the store holds (durable).
    pub(super) stored: ReplicatedState,
    /// The control plane's stored state.
    pub(super) control: Option<crate::core::lease::ControlDisk>,
    inflight: Option<Persist>,
    pub(super) skew_ms: i64,
    pub(super) paused_until: u64,
    /// Stopped for good (left).
    pub(super) gone: bool,
    pub(super) crashed: bool,
    pub(super) booted: bool,
    scheduled: Option<(Mono, Token)>,
    pub(super) gossip: GossipState,
    pub(super) peers: std::collections::BTreeSet<usize>,
    asked: FastMap<ReqId, Asked>,
    /// Writes this node acknowledged (indexes into the checker's acks).
    acked: Vec<usize>,
    aborted: std::collections::BTreeSet<(TaskId, Fence)>,
}

impl SimNode {
    fn new(i: usize) -> Self {
        SimNode {
            id: sim_node_id(i),
            engine: None,
            life: 0,
            stored: ReplicatedState::default(),
            control: None,
            inflight: None,
            skew_ms: 0,
            paused_until: 0,
            gone: false,
            crashed: false,
            booted: false,
            scheduled: None,
            gossip: GossipState::default(),
            peers: Default::default(),
            asked: FastMap::default(),
            acked: Vec::new(),
            aborted: Default::default(),
        }
    }

    /// True while the node's process runs.
    pub(super) fn running(&self) -> bool {
        self.engine.is_some()
    }
}

/// Traffic counters: frames and bytes per class (gossip, gossipsub
/// control, sync, probes).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Traffic {
    pub(super) frames: [u64; 4],
    pub(super) bytes: [u64; 4],
    pub(super) duplicates: u64,
    pub(super) dropped: u64,
}

/// The world of one run.
pub(super) struct World {
    pub(super) scenario: Scenario,
    pub(super) nodes: Vec<SimNode>,
    pub(super) net: Network,
    queue: Queue,
    seq: u64,
    /// Now, µs.
    pub(super) now: u64,
    rng_net: Rng,
    rng_work: Rng,
    rng_fault: Rng,
    rng_seed: Rng,
    pub(super) check: Checker,
    pub(super) traffic: Traffic,
    messages: FastMap<u64, Rc<[u8]>>,
    next_msg: u64,
    next_req: u64,
    /// Frames waiting behind a cut, per (from, to) connection.
    held: std::collections::BTreeMap<(usize, usize), Vec<Frame>>,
    /// Outstanding sync requests: id to (asker, asked).
    requests: FastMap<u64, (usize, usize)>,
    writes: u64,
    pub(super) liveness_at: Option<u64>,
    pub(super) converged_at: Option<u64>,
    /// When the last of the first nodes boots, µs.
    pub(super) last_boot: u64,
    /// From the last first node's boot until every running node listed
    /// every other one alive, µs (checked every 100 ms).
    pub(super) joined_in: Option<u64>,
    pub(super) done: bool,
    pub(super) events: u64,
    fault_nodes: Vec<Vec<usize>>,
    /// Nodes ever cut off or paused (a partition, one-way cut or pause hit
    /// them): they may keep running a task that was moved meanwhile.
    pub(super) cut_off: std::collections::BTreeSet<usize>,
    /// A lease holder crashed: when, and the term it held.
    pub(super) failover: Option<(u64, u64)>,
    node_index: FastMap<NodeId, usize>,
}

impl World {
    pub(super) fn new(scenario: Scenario, seed: u64) -> World {
        let mut root = Rng::new(seed);
        let mut w = World {
            nodes: Vec::new(),
            net: Network::default(),
            queue: Queue::default(),
            seq: 0,
            now: 0,
            rng_net: root.fork(),
            rng_work: root.fork(),
            rng_fault: root.fork(),
            rng_seed: root.fork(),
            check: Checker::default(),
            traffic: Traffic::default(),
            messages: FastMap::default(),
            next_msg: 0,
            next_req: 0,
            requests: FastMap::default(),
            held: Default::default(),
            writes: 0,
            liveness_at: None,
            converged_at: None,
            last_boot: 0,
            joined_in: None,
            done: false,
            events: 0,
            fault_nodes: vec![Vec::new(); scenario.faults.len()],
            cut_off: Default::default(),
            failover: None,
            node_index: FastMap::default(),
            scenario,
        };
        let n = w.scenario.nodes;
        for i in 0..n {
            w.add_node();
            let at = w.rng_fault.next_u64() % (w.scenario.startup_ms.max(1) * 1_000);
            let at = if i == 0 { 0 } else { at };
            w.last_boot = w.last_boot.max(at);
            w.schedule(at, SimEvent::Boot(i));
        }
        let last = w.last_boot;
        w.schedule(last, SimEvent::JoinCheck);
        let starts: Vec<u64> = w.scenario.faults.iter().map(|f| f.at_ms * 1_000).collect();
        for (i, at) in starts.into_iter().enumerate() {
            w.schedule(at, SimEvent::Fault(i));
        }
        let safety = w.scenario.phases.safety_ms * 1_000;
        w.schedule(safety, SimEvent::Liveness);
        let start = w.scenario.workload.start_ms * 1_000;
        w.schedule(start, SimEvent::Workload);
        w
    }

    fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = SimNode::new(i);
        self.node_index.insert(node.id.clone(), i);
        self.nodes.push(node);
        self.net.grow(self.nodes.len());
        i
    }

    fn schedule(&mut self, at: u64, event: SimEvent) {
        self.seq += 1;
        self.queue.push(at, self.seq, event);
    }

    fn after(&mut self, us: u64, event: SimEvent) {
        self.schedule(self.now + us, event);
    }

    /// Runs until the liveness phase ends (or the queue empties).
    pub(super) fn run(&mut self) {
        while !self.done {
            let Some((at, event)) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.events += 1;
            self.step(event);
        }
        self.check.finish();
    }

    fn running_mask(&self) -> Vec<bool> {
        self.nodes.iter().map(|n| n.running()).collect()
    }

    fn clock(&self, i: usize) -> Now {
        let ms = self.now / 1_000;
        let wall = (EPOCH_MS + ms) as i64 + self.nodes[i].skew_ms;
        Now {
            mono: Mono(ms),
            wall: Millis(wall.max(0) as u64),
        }
    }

    /// True when `node` exists in `life` and is not paused; a paused
    /// node's event is put off until it resumes.
    fn ready(&mut self, node: usize, life: u32, event: SimEvent) -> Option<SimEvent> {
        let n = &self.nodes[node];
        if n.life != life || !n.running() {
            return None;
        }
        if n.paused_until > self.now {
            let at = n.paused_until;
            self.schedule(at, event);
            return None;
        }
        Some(event)
    }

    fn step(&mut self, event: SimEvent) {
        match event {
            SimEvent::Boot(i) => self.boot(i),
            SimEvent::Deliver { to, from, frame } => {
                let life = self.nodes[to].life;
                if let Some(SimEvent::Deliver { to, from, frame }) =
                    self.ready(to, life, SimEvent::Deliver { to, from, frame })
                {
                    self.deliver(to, from, frame);
                }
            }
            SimEvent::Timer { node, life, token } => {
                if self
                    .ready(node, life, SimEvent::Timer { node, life, token })
                    .is_some()
                {
                    if self.nodes[node].scheduled.is_some_and(|(_, t)| t == token) {
                        self.nodes[node].scheduled = None;
                    }
                    self.input(node, Input::Timer(token));
                }
            }
            SimEvent::Persisted { node, life, batch } => {
                if self
                    .ready(node, life, SimEvent::Persisted { node, life, batch })
                    .is_some()
                {
                    self.persisted(node, batch);
                }
            }
            SimEvent::HandlerDone {
                node,
                life,
                task,
                fence,
            } => {
                let e = SimEvent::HandlerDone {
                    node,
                    life,
                    task,
                    fence,
                };
                if let Some(SimEvent::HandlerDone { task, fence, .. }) = self.ready(node, life, e) {
                    if !self.nodes[node].aborted.remove(&(task.clone(), fence)) {
                        let outcome = Some(Outcome::Success("\"ok\"".into()));
                        self.input(
                            node,
                            Input::HandlerDone {
                                task,
                                fence,
                                outcome,
                            },
                        );
                    }
                }
            }
            SimEvent::Connect { a, b } => self.connected(a, b),
            SimEvent::CloseIfCut { a, b } => {
                if !self.net.both_ways(a, b) {
                    self.close(a, b);
                }
            }
            SimEvent::PeerDown { node, peer } => {
                if self.nodes[node].peers.remove(&peer) {
                    let id = self.nodes[peer].id.clone();
                    self.input(node, Input::PeerDown(id));
                }
            }
            SimEvent::SyncTimeout { req } => {
                if let Some((asker, asked)) = self.requests.remove(&req) {
                    let from = self.nodes[asked].id.clone();
                    self.input(asker, Input::SyncFailed { from });
                }
            }
            SimEvent::GossipBeat { node, life } => {
                if self
                    .ready(node, life, SimEvent::GossipBeat { node, life })
                    .is_some()
                {
                    self.gossip_beat(node);
                }
            }
            SimEvent::Workload => self.workload(),
            SimEvent::Fault(i) => self.fault(i),
            SimEvent::Heal(i) => self.heal(i),
            SimEvent::Restart(i) => self.restart(i),
            SimEvent::Stop { node, life } => {
                if self.nodes[node].life == life {
                    self.stop(node, true);
                }
            }
            SimEvent::Liveness => self.liveness(),
            SimEvent::Check => self.check_convergence(),
            SimEvent::JoinCheck => self.check_join(),
        }
    }

    /// The join is over when every running node lists every other
    /// running node alive; checked every 100 ms for two minutes at most.
    fn check_join(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running())
            .collect();
        let all = running.iter().all(|&i| {
            let e = self.nodes[i].engine.as_ref().expect("running");
            running
                .iter()
                .all(|&j| i == j || e.replica().member_status(&self.nodes[j].id) == "alive")
        });
        if all {
            self.joined_in = Some(self.now - self.last_boot);
        } else if self.now < self.last_boot + 120_000_000 {
            let at = self.now + 100_000;
            self.schedule(at, SimEvent::JoinCheck);
        }
    }

    // ---- nodes -------------------------------------------------------

    fn engine_config(&self, i: usize) -> EngineConfig {
        let failure = self.scenario.timing();
        let id = self.nodes[i].id.clone();
        EngineConfig {
            replica: ReplicaConfig {
                node: id.clone(),
                record: MemberRecord {
                    name: id.to_string(),
                    addrs: vec![format!("/sim/{i}")],
                    capabilities: vec!["work".into()],
                    capacity: self.scenario.workload.capacity,
                    ..MemberRecord::default()
                },
                handlers: ["work".to_string()].into(),
                claim_ttl_ms: 30_000,
                failure,
                keys: crate::core::sign::Keys::sim(&id),
            },
            protocol: ProtocolConfig::for_heartbeat(failure.heartbeat_interval_ms),
            control: crate::core::lease::ControlConfig::for_probe_interval(
                failure.heartbeat_interval_ms,
                3,
                1,
            ),
        }
    }

    fn boot(&mut self, i: usize) {
        let seed = self.rng_seed.next_u64();
        let cfg = self.engine_config(i);
        let first = !self.nodes[i].booted;
        let n = &mut self.nodes[i];
        n.life += 1;
        n.booted = true;
        n.crashed = false;
        n.scheduled = None;
        n.inflight = None;
        n.gossip.reset();
        n.peers.clear();
        n.engine = Some(Engine::new(cfg, n.stored.clone(), seed).with_control(n.control.clone()));
        let life = n.life;
        self.input(i, Input::Start);
        if first {
            for (k, (ns, policy)) in NAMESPACES.iter().enumerate().skip(1) {
                let cmd = Command::SetPolicy {
                    ns: (*ns).into(),
                    policy: *policy,
                };
                self.command(i, 1_000_000 + k as u64, cmd, Asked::Other);
            }
        }
        let beat = self.scenario.network.gossip_heartbeat_ms * 1_000;
        let jitter = self.rng_net.next_u64() % beat.max(1);
        self.after(jitter, SimEvent::GossipBeat { node: i, life });
    }

    /// Node `i` restarts from what its store holds.
    fn restart(&mut self, i: usize) {
        if self.nodes[i].running() || self.nodes[i].gone {
            return;
        }
        let missing: Vec<String> = self.nodes[i]
            .acked
            .iter()
            .filter_map(|&a| {
                let ack = &self.check.acks[a];
                let held = self.nodes[i]
                    .stored
                    .namespaces
                    .get(&ack.ns)
                    .and_then(|n| n.entries.get(&ack.key))
                    .is_some_and(|e| e.version() >= &ack.version);
                (!held).then(|| format!("{}/{}", ack.ns, ack.key))
            })
            .collect();
        for m in missing {
            let at = self.now;
            self.check.violate(
                "ack_lost_on_restart",
                at,
                format!("node {i} restarted without the write {m} it acknowledged"),
            );
        }
        self.check.restarted(i);
        self.boot(i);
    }

    /// The node's process ends (crash, or the end of a graceful leave):
    /// what was not persisted is lost, its connections close.
    fn stop(&mut self, i: usize, gone: bool) {
        let n = &mut self.nodes[i];
        if n.engine.take().is_none() {
            return;
        }
        n.life += 1;
        n.inflight = None;
        n.asked.clear();
        n.aborted.clear();
        n.gone |= gone;
        n.crashed = !gone;
        let peers: Vec<usize> = std::mem::take(&mut n.peers).into_iter().collect();
        for p in peers {
            self.net.close(i, p);
            for k in [(i, p), (p, i)] {
                if let Some(lost) = self.held.remove(&k) {
                    self.traffic.dropped += lost.len() as u64;
                }
            }
            let lat = self.latency(i, p);
            self.after(lat, SimEvent::PeerDown { node: p, peer: i });
        }
        if gone {
            let at = self.now;
            self.check.gone(i, at);
        }
    }

    // ---- engine IO ---------------------------------------------------

    fn command(&mut self, i: usize, req: u64, cmd: Command, asked: Asked) {
        let req = ReqId(req);
        self.nodes[i].asked.insert(req, asked);
        self.input(i, Input::Command(req, cmd));
    }

    /// Feeds one input to node `i` and carries out what its engine asks.
    fn input(&mut self, i: usize, input: Input) {
        let now = self.clock(i);
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return;
        };
        engine.handle(now, input);
        let outputs: Vec<Output> = engine.drain_outputs().collect();
        let timer = engine.poll_timeout();
        for out in outputs {
            self.output(i, out);
        }
        if let Some((at, token)) = timer {
            let n = &mut self.nodes[i];
            if n.running() && n.scheduled != Some((at, token)) {
                n.scheduled = Some((at, token));
                let life = n.life;
                let when = (at.0 * 1_000).max(self.now);
                self.schedule(
                    when,
                    SimEvent::Timer {
                        node: i,
                        life,
                        token,
                    },
                );
            }
        }
    }

    fn output(&mut self, i: usize, out: Output) {
        match out {
            Output::Reply(req, r) => self.reply(i, req, r),
            Output::Persist(p) => {
                let spec = &self.scenario.network;
                let ms = if p.synced {
                    spec.commit_ms
                } else {
                    spec.commit_ms / 10.0
                };
                let life = self.nodes[i].life;
                let batch = p.id;
                self.nodes[i].inflight = Some(p);
                self.after(
                    (ms * 1_000.0) as u64,
                    SimEvent::Persisted {
                        node: i,
                        life,
                        batch,
                    },
                );
            }
            Output::Publish(bytes) => self.publish(i, bytes),
            Output::Send { to, bytes } => {
                let Some(&j) = self.node_index.get(&to) else {
                    return;
                };
                self.next_req += 1;
                let req = self.next_req;
                self.requests.insert(req, (i, j));
                self.send(i, j, Frame::SyncRequest { req, bytes });
                let t = self.scenario.network.request_timeout_ms * 1_000;
                self.after(t, SimEvent::SyncTimeout { req });
            }
            Output::Probe { to, bytes, .. } => {
                if let Some(&j) = self.node_index.get(&to) {
                    self.datagram(i, j, Frame::Probe(bytes));
                }
            }
            Output::Respond { to, id, bytes } => {
                if let Some(&j) = self.node_index.get(&to) {
                    self.send(i, j, Frame::SyncResponse { req: id.0, bytes });
                }
            }
            Output::Verdict {
                msg,
                from,
                rejected,
            } => {
                if rejected.is_none() {
                    let from = self.node_index.get(&from).copied();
                    self.forward(i, msg.0, from);
                }
            }
            Output::Dial { node, .. } => {
                if let Some(&j) = self.node_index.get(&node) {
                    self.dial(i, j);
                }
            }
            Output::Disconnect(node) => {
                if let Some(&j) = self.node_index.get(&node) {
                    self.close(i, j);
                }
            }
            Output::DialBootstrap => {
                for j in [0, 1] {
                    if j != i && j < self.nodes.len() {
                        self.dial(i, j);
                    }
                }
            }
            Output::Start(t) => {
                let at = self.now;
                self.check.started(i, &t.id, t.fence, at);
                let [lo, hi] = self.scenario.workload.task_ms;
                let ms = lo + self.rng_work.next_u64() % (hi - lo + 1);
                let life = self.nodes[i].life;
                self.after(
                    ms * 1_000,
                    SimEvent::HandlerDone {
                        node: i,
                        life,
                        task: t.id,
                        fence: t.fence,
                    },
                );
            }
            Output::Abort { task, fence } => {
                self.nodes[i].aborted.insert((task, fence));
            }
            Output::Event(e) => self.event(i, e),
            Output::SampleLoad => {
                let sample = LoadSample {
                    cpu: 0.1,
                    memory: 0.2,
                    disk: 0.3,
                };
                self.input(i, Input::Load(sample));
            }
            Output::WorkAvailable | Output::Count(..) => {}
        }
    }

    fn reply(&mut self, i: usize, req: ReqId, r: Result<Answer, crate::core::EngineError>) {
        let Some(asked) = self.nodes[i].asked.remove(&req) else {
            return;
        };
        match (asked, r) {
            (Asked::Put { ns, key }, Ok(Answer::Written(w))) => {
                let version = w.entry.version().clone();
                let durable = self.nodes[i]
                    .stored
                    .namespaces
                    .get(&ns)
                    .and_then(|n| n.entries.get(&key))
                    .is_some_and(|e| e.version() >= &version);
                if !durable {
                    let at = self.now;
                    self.check.violate(
                        "ack_not_durable",
                        at,
                        format!("node {i} acknowledged {ns}/{key} before its store held it"),
                    );
                }
                // Running nodes that lack it must receive it; those that hold
                // it already (anti-entropy can serve a change before its
                // batch is durable) count as reached.
                let lacking: Vec<bool> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        n.engine.as_ref().is_some_and(|e| {
                            e.replica()
                                .state()
                                .namespaces
                                .get(&ns)
                                .and_then(|x| x.entries.get(&key))
                                .is_none_or(|en| !contains(en.version(), &version))
                        })
                    })
                    .collect();
                let ack = Ack {
                    ns,
                    key,
                    version,
                    node: i,
                    at_us: self.now,
                };
                self.nodes[i].acked.push(self.check.acks.len());
                self.check.acked(ack, &lacking);
            }
            (Asked::Submit, Ok(Answer::Submitted { id, created: true })) => {
                self.check.submitted.push(id);
            }
            (Asked::Recover, Ok(Answer::Recovered { .. })) => self.check.recoveries += 1,
            (Asked::Leave, Ok(_)) => {
                let life = self.nodes[i].life;
                self.after(500_000, SimEvent::Stop { node: i, life });
            }
            _ => {}
        }
    }
}
