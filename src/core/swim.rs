//! Failure detection with a bounded cost per node: SWIM with Lifeguard's
//! refinements (Das et al. 2002; Dadgar et al. 2017, as in HashiCorp's
//! memberlist).
//!
//! Every probe interval a node probes one member, in a shuffled round-robin
//! order: a direct ping; if no ack comes within the probe timeout, ping
//! requests to `k` other members, which ping the target on its behalf and
//! relay its ack (or send a nack when they heard nothing). No ack by the end
//! of the interval and the target is *suspected*. A suspicion spreads by
//! piggybacking on probe traffic, as do refutations; every node that hears
//! of it runs a suspicion timer, which shrinks from `beta * min` towards
//! `min = alpha * log10(N) * interval` as independent observers confirm it.
//! When a timer runs out the member is *dead*: the replica writes that to
//! its CRDT record, which gossip carries to every node. A suspected node
//! that hears of the suspicion refutes it with a higher incarnation.
//!
//! Lifeguard's local health: a node whose own probes fail, whose relays do
//! not answer with nacks, or that must refute a suspicion about itself, is
//! more likely to be the slow one; its health score (0 to `max_health`)
//! stretches its probe interval and timeouts by `score + 1`, so it accuses
//! others more slowly. Successful probes bring the score back down.
//!
//! The cost per node is bounded: one probe per interval (two messages, or
//! `2 + 4k` when it fails), answering the probes of others (one per interval
//! on average) and relays; piggybacked updates are bounded per message and
//! each is sent `retransmit_mult * log10(N + 1)` times.
//!
//! Pure and deterministic: time comes in as [`Mono`], randomness from the
//! replica's [`Rng`]. The member list is kept in step by the replica from
//! the CRDT records ([`Swim::watch`], [`Swim::forget`]).

use crate::core::ids::{Mono, NodeId};
use crate::core::rng::Rng;
use crate::core::sign::Sig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Largest encoded SWIM packet, bytes.
pub const MAX_PACKET_BYTES: usize = 64 << 10;

/// Failure-detection timing and limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwimConfig {
    /// One probe per interval, ms.
    pub probe_interval_ms: u64,
    /// How long a direct ping may wait for its ack before indirect probes
    /// go out, ms (less than the interval).
    pub probe_timeout_ms: u64,
    /// Members asked to probe indirectly (`k`).
    pub indirect_probes: usize,
    /// Lifeguard's `alpha`: the shortest suspicion lasts
    /// `alpha * max(1, log10 N)` probe intervals.
    pub suspicion_alpha: f64,
    /// Lifeguard's `beta`: an unconfirmed suspicion lasts `beta` times the
    /// shortest.
    pub suspicion_beta: f64,
    /// Each update is piggybacked `retransmit_mult * ceil(log10(N + 1))`
    /// times.
    pub retransmit_mult: u32,
    /// Updates piggybacked on one message at most.
    pub max_piggyback: usize,
    /// Highest local-health score (Lifeguard's `S`).
    pub max_health: u32,
}

impl SwimConfig {
    /// The timing for a probe interval and suspicion multiplier (`alpha`).
    pub fn new(probe_interval_ms: u64, alpha: u32) -> Self {
        SwimConfig {
            probe_interval_ms,
            probe_timeout_ms: (probe_interval_ms / 2).max(1),
            indirect_probes: 3,
            suspicion_alpha: f64::from(alpha.max(1)),
            suspicion_beta: 3.0,
            retransmit_mult: 4,
            max_piggyback: 16,
            max_health: 8,
        }
    }
}

impl Default for SwimConfig {
    /// The `fast` profile.
    fn default() -> Self {
        SwimConfig::new(500, 2)
    }
}

/// A probe message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// "Are you there?"
    Ping {
        /// The prober's sequence number, echoed in the ack.
        seq: u64,
    },
    /// "I am." (Or, relayed: "it is.")
    Ack {
        /// The sequence number of the ping (or ping request) answered.
        seq: u64,
    },
    /// "Ping `target` for me and relay its ack."
    PingReq {
        /// The asker's sequence number.
        seq: u64,
        /// Whom to ping.
        target: NodeId,
    },
    /// "I asked, and heard nothing back in time."
    Nack {
        /// The asker's sequence number.
        seq: u64,
    },
}

/// What one member says about another, piggybacked on probes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// `node` is suspected at `incarnation` by `by`.
    Suspect {
        /// The suspect.
        node: NodeId,
        /// Its incarnation the suspicion is about.
        incarnation: u64,
        /// Who suspects it.
        by: NodeId,
    },
    /// `node` is alive at `incarnation` (a refutation, or news of a join),
    /// signed by `node` itself ([`alive_bytes`]): relayed by anyone, written
    /// by the node only, so no member can clear a suspicion of another.
    Alive {
        /// The node.
        node: NodeId,
        /// Its incarnation.
        incarnation: u64,
        /// The node's signature of [`alive_bytes`].
        sig: Sig,
    },
}

/// What a node signs to say it is alive at `incarnation`.
pub fn alive_bytes(node: &NodeId, incarnation: u64) -> Vec<u8> {
    postcard::to_stdvec(&("shoal alive v1", node, incarnation)).unwrap_or_default()
}

impl Update {
    fn node(&self) -> &NodeId {
        match self {
            Update::Suspect { node, .. } | Update::Alive { node, .. } => node,
        }
    }
}

/// One SWIM message: a probe and the updates riding on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    /// The probe.
    pub probe: Probe,
    /// Membership updates.
    pub updates: Vec<Update>,
}

/// What the failure detector asks of the replica.
#[derive(Clone, Debug, PartialEq)]
pub enum SwimOut {
    /// Send a packet to a member.
    Send {
        /// The member.
        to: NodeId,
        /// The packet.
        packet: Packet,
    },
    /// A member is suspected (newly).
    Suspect(NodeId),
    /// A suspected member refuted it.
    Recovered(NodeId),
    /// A suspicion ran out: declare the member dead.
    Dead {
        /// The member.
        node: NodeId,
        /// How long it had been suspected, ms.
        suspected_ms: u64,
        /// Independent confirmations the suspicion had.
        confirmations: usize,
    },
    /// This node is suspected: refute with an incarnation above this one.
    Refute(u64),
    /// Count a probe event (for metrics).
    Count(SwimCounter),
}

/// Failure-detection counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SwimCounter {
    /// A direct probe sent.
    ProbeSent,
    /// A probe that got no ack, direct or relayed.
    ProbeFailed,
    /// Indirect probes asked for.
    IndirectSent,
    /// A suspicion this node raised or heard of first.
    SuspicionRaised,
    /// A suspicion refuted (about another member, or about this node).
    SuspicionRefuted,
}

#[derive(Clone, Debug)]
struct Suspicion {
    incarnation: u64,
    since: Mono,
    confirmers: BTreeSet<NodeId>,
    deadline: Mono,
    /// Whether this node's own probes failed too (and it said so).
    mine: bool,
}

#[derive(Clone, Debug)]
struct Member {
    incarnation: u64,
    suspicion: Option<Suspicion>,
    last_heard: Mono,
}

#[derive(Clone, Debug)]
struct Current {
    target: NodeId,
    seq: u64,
    /// When the direct ping may stop waiting (indirect probes go out).
    timeout: Mono,
    /// When the probe is over.
    end: Mono,
    indirect: bool,
    acked: bool,
    /// Relays asked.
    asked: usize,
    /// Relays that have not answered (ack or nack) yet.
    relays: BTreeSet<NodeId>,
}

#[derive(Clone, Debug)]
struct Relay {
    asker: NodeId,
    asker_seq: u64,
    deadline: Mono,
}

#[derive(Clone, Debug)]
struct Broadcast {
    update: Update,
    sent: u32,
}

/// One node's failure detector.
#[derive(Debug)]
pub struct Swim {
    cfg: SwimConfig,
    me: NodeId,
    incarnation: u64,
    members: BTreeMap<NodeId, Member>,
    order: Vec<NodeId>,
    next: usize,
    next_probe: Mono,
    current: Option<Current>,
    relays: BTreeMap<u64, Relay>,
    seq: u64,
    health: u32,
    broadcasts: VecDeque<Broadcast>,
    /// Every suspicion's deadline, so the next one is found without a walk
    /// over the members (the engine asks after every input).
    deadlines: BTreeSet<(Mono, NodeId)>,
    out: Vec<SwimOut>,
}

impl Swim {
    /// A detector for `me`, at incarnation `incarnation`, probing from `now`.
    pub fn new(cfg: SwimConfig, me: NodeId, incarnation: u64, now: Mono) -> Self {
        Swim {
            cfg,
            me,
            incarnation,
            members: BTreeMap::new(),
            order: Vec::new(),
            next: 0,
            next_probe: now.plus(cfg.probe_interval_ms),
            current: None,
            relays: BTreeMap::new(),
            seq: 0,
            health: 0,
            broadcasts: VecDeque::new(),
            deadlines: BTreeSet::new(),
            out: Vec::new(),
        }
    }

    /// Drains what the detector asks for.
    pub fn drain(&mut self) -> std::vec::Drain<'_, SwimOut> {
        self.out.drain(..)
    }

    /// This node's incarnation as the detector knows it.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Sets this node's incarnation (after a refutation or a restart) and
    /// tells the others, with `sig`, this node's signature of
    /// [`alive_bytes`] for it.
    pub fn set_incarnation(&mut self, incarnation: u64, sig: Sig) {
        if incarnation > self.incarnation {
            self.incarnation = incarnation;
            let me = self.me.clone();
            self.queue(Update::Alive {
                node: me,
                incarnation,
                sig,
            });
        }
    }

    /// Lifeguard's local-health score.
    pub fn health(&self) -> u32 {
        self.health
    }

    /// Members watched.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when no member is watched.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// True when `node` is suspected.
    pub fn is_suspect(&self, node: &NodeId) -> bool {
        self.members
            .get(node)
            .is_some_and(|m| m.suspicion.is_some())
    }

    /// When this node last heard from `node` (a message of any kind).
    pub fn last_heard(&self, node: &NodeId) -> Option<Mono> {
        self.members.get(node).map(|m| m.last_heard)
    }

    /// Watches a member in service at `incarnation` (from its CRDT record).
    /// A higher incarnation clears a suspicion about an older one.
    pub fn watch(&mut self, node: &NodeId, incarnation: u64, now: Mono, rng: &mut Rng) {
        if node == &self.me {
            return;
        }
        match self.members.get_mut(node) {
            Some(m) => {
                if incarnation > m.incarnation {
                    m.incarnation = incarnation;
                    m.last_heard = now;
                    if let Some(s) = m.suspicion.take() {
                        self.deadlines.remove(&(s.deadline, node.clone()));
                        self.out.push(SwimOut::Recovered(node.clone()));
                    }
                }
            }
            None => {
                self.members.insert(
                    node.clone(),
                    Member {
                        incarnation,
                        suspicion: None,
                        last_heard: now,
                    },
                );
                // A new member goes in at a random place of the round, so it
                // is probed within one round (as memberlist does).
                let at = rng.below(self.order.len() + 1);
                self.order.insert(at, node.clone());
                if at < self.next {
                    self.next += 1;
                }
            }
        }
    }

    /// Stops watching a member (it left, was declared dead or removed).
    pub fn forget(&mut self, node: &NodeId) {
        let Some(m) = self.members.remove(node) else {
            return;
        };
        if let Some(s) = m.suspicion {
            self.deadlines.remove(&(s.deadline, node.clone()));
        }
        if let Some(pos) = self.order.iter().position(|n| n == node) {
            self.order.remove(pos);
            if pos < self.next {
                self.next -= 1;
            }
        }
        self.broadcasts.retain(|b| b.update.node() != node);
    }

    /// The next instant something is due.
    pub fn next_wakeup(&self) -> Mono {
        let mut at = self.next_probe;
        if let Some(c) = &self.current {
            at = at.min(if c.indirect || c.acked {
                c.end
            } else {
                c.timeout
            });
        }
        for r in self.relays.values() {
            at = at.min(r.deadline);
        }
        if let Some((deadline, _)) = self.deadlines.first() {
            at = at.min(*deadline);
        }
        at
    }

    fn scale(&self, ms: u64) -> u64 {
        ms.saturating_mul(u64::from(self.health) + 1)
    }

    fn raise_health(&mut self) {
        self.health = (self.health + 1).min(self.cfg.max_health);
    }

    fn lower_health(&mut self) {
        self.health = self.health.saturating_sub(1);
    }

    /// Does what is due at `now`: ends the probe in flight, sends indirect
    /// probes, nacks for relays that heard nothing, expires suspicions, and
    /// starts the next probe.
    pub fn tick(&mut self, now: Mono, rng: &mut Rng) {
        self.advance_probe(now, rng);
        let expired: Vec<u64> = self
            .relays
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in expired {
            if let Some(r) = self.relays.remove(&s) {
                self.send(r.asker, Probe::Nack { seq: r.asker_seq });
            }
        }
        let dead: Vec<NodeId> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for node in dead {
            if let Some(m) = self.members.get(&node) {
                let s = m.suspicion.as_ref().expect("filtered on suspicion");
                self.out.push(SwimOut::Dead {
                    node: node.clone(),
                    suspected_ms: now.since(s.since),
                    confirmations: s.confirmers.len(),
                });
            }
            self.forget(&node);
        }
        if now >= self.next_probe && self.current.is_none() {
            self.start_probe(now, rng);
        }
    }

    fn advance_probe(&mut self, now: Mono, rng: &mut Rng) {
        let Some(c) = self.current.as_ref() else {
            return;
        };
        if !c.acked && !c.indirect && now >= c.timeout {
            let target = c.target.clone();
            let seq = c.seq;
            let relays = self.pick(self.cfg.indirect_probes, &target, rng);
            for r in &relays {
                self.send(
                    r.clone(),
                    Probe::PingReq {
                        seq,
                        target: target.clone(),
                    },
                );
                self.out.push(SwimOut::Count(SwimCounter::IndirectSent));
            }
            let c = self.current.as_mut().expect("checked above");
            c.indirect = true;
            c.asked = relays.len();
            c.relays = relays.into_iter().collect();
            return;
        }
        if now < c.end {
            return;
        }
        let c = self.current.take().expect("checked above");
        if c.acked {
            self.lower_health();
            return;
        }
        // As memberlist does: every relay that sent neither ack nor nack
        // hints that this node's own links (or its CPU) are the problem;
        // with no relay to ask, the failure itself counts. Nacks from every
        // relay say the target is gone, not this node.
        self.out.push(SwimOut::Count(SwimCounter::ProbeFailed));
        let missing = if c.asked == 0 { 1 } else { c.relays.len() };
        for _ in 0..missing {
            self.raise_health();
        }
        let Some(m) = self.members.get(&c.target) else {
            return;
        };
        let incarnation = m.incarnation;
        let me = self.me.clone();
        self.suspect(&c.target, incarnation, &me, now);
    }

    fn start_probe(&mut self, now: Mono, rng: &mut Rng) {
        let interval = self.scale(self.cfg.probe_interval_ms);
        self.next_probe = now.plus(interval);
        let Some(target) = self.next_target(rng) else {
            return;
        };
        self.seq += 1;
        let seq = self.seq;
        self.current = Some(Current {
            target: target.clone(),
            seq,
            timeout: now.plus(self.scale(self.cfg.probe_timeout_ms)),
            end: now.plus(interval),
            indirect: false,
            acked: false,
            asked: 0,
            relays: BTreeSet::new(),
        });
        self.out.push(SwimOut::Count(SwimCounter::ProbeSent));
        self.send(target, Probe::Ping { seq });
    }

    fn next_target(&mut self, rng: &mut Rng) -> Option<NodeId> {
        if self.order.is_empty() {
            return None;
        }
        if self.next >= self.order.len() {
            // A new round in a new order (Fisher–Yates).
            self.next = 0;
            for i in (1..self.order.len()).rev() {
                let j = rng.below(i + 1);
                self.order.swap(i, j);
            }
        }
        let t = self.order[self.next].clone();
        self.next += 1;
        Some(t)
    }

    /// Up to `k` members other than `except`, at random.
    fn pick(&self, k: usize, except: &NodeId, rng: &mut Rng) -> Vec<NodeId> {
        let mut candidates: Vec<&NodeId> = self
            .members
            .iter()
            .filter(|(id, m)| *id != except && m.suspicion.is_none())
            .map(|(id, _)| id)
            .collect();
        let mut chosen = Vec::new();
        while chosen.len() < k && !candidates.is_empty() {
            let i = rng.below(candidates.len());
            chosen.push(candidates.swap_remove(i).clone());
        }
        chosen
    }

    fn suspicion_bounds(&self) -> (u64, u64) {
        let n = (self.members.len() + 1) as f64;
        let min = self.cfg.suspicion_alpha * n.log10().max(1.0) * self.cfg.probe_interval_ms as f64;
        let max = self.cfg.suspicion_beta * min;
        (min as u64, max as u64)
    }

    /// Lifeguard's suspicion timeout with `c` independent confirmations:
    /// from `max` down to `min` at `k` confirmations, logarithmically.
    fn suspicion_timeout(&self, confirmations: usize) -> u64 {
        let (min, max) = self.suspicion_bounds();
        let k = self
            .cfg
            .indirect_probes
            .min(self.members.len().saturating_sub(1))
            .max(1) as f64;
        let frac = ((confirmations as f64) + 1.0).ln() / (k + 1.0).ln();
        let t = max as f64 - (max - min) as f64 * frac.min(1.0);
        (t as u64).max(min)
    }

    fn suspect(&mut self, node: &NodeId, incarnation: u64, by: &NodeId, now: Mono) {
        let Some(m) = self.members.get(node) else {
            return;
        };
        if incarnation < m.incarnation {
            return;
        }
        let fresh = !matches!(&m.suspicion, Some(s) if s.incarnation >= incarnation);
        if fresh {
            let mut confirmers = BTreeSet::new();
            if by != &self.me {
                confirmers.insert(by.clone());
            }
            let deadline = now.plus(self.suspicion_timeout(confirmers.len()));
            let m = self.members.get_mut(node).expect("looked up above");
            m.incarnation = incarnation;
            let old = m.suspicion.replace(Suspicion {
                incarnation,
                since: now,
                confirmers,
                deadline,
                mine: by == &self.me,
            });
            if let Some(old) = old {
                self.deadlines.remove(&(old.deadline, node.clone()));
            }
            self.deadlines.insert((deadline, node.clone()));
            self.out.push(SwimOut::Suspect(node.clone()));
            self.out.push(SwimOut::Count(SwimCounter::SuspicionRaised));
        } else {
            // A confirmation by another observer shortens the timeout.
            let s = self.members[node].suspicion.as_ref().expect("not fresh");
            if by == &self.me {
                // This node's own probe failed too, after it heard of the
                // suspicion from another: an independent confirmation for
                // the others (as memberlist's `suspectNode` confirms and
                // re-broadcasts it), said once. Its own timer does not
                // count it.
                if s.mine {
                    return;
                }
                let incarnation = s.incarnation;
                if let Some(s) = self
                    .members
                    .get_mut(node)
                    .and_then(|m| m.suspicion.as_mut())
                {
                    s.mine = true;
                }
                self.queue(Update::Suspect {
                    node: node.clone(),
                    incarnation,
                    by: by.clone(),
                });
                return;
            }
            if s.confirmers.contains(by) {
                return;
            }
            let c = s.confirmers.len() + 1;
            let since = s.since;
            let timeout = self.suspicion_timeout(c);
            let s = self
                .members
                .get_mut(node)
                .and_then(|m| m.suspicion.as_mut())
                .expect("not fresh");
            s.confirmers.insert(by.clone());
            let old = std::mem::replace(&mut s.deadline, since.plus(timeout));
            let new = s.deadline;
            self.deadlines.remove(&(old, node.clone()));
            self.deadlines.insert((new, node.clone()));
        }
        self.queue(Update::Suspect {
            node: node.clone(),
            incarnation,
            by: by.clone(),
        });
    }

    fn queue(&mut self, update: Update) {
        // One pending update per node: a newer one replaces the older.
        let node = update.node().clone();
        self.broadcasts.retain(|b| {
            b.update.node() != &node
                || matches!(
                    (&b.update, &update),
                    (Update::Suspect { by: a, .. }, Update::Suspect { by: b2, .. }) if a != b2
                )
        });
        self.broadcasts.push_front(Broadcast { update, sent: 0 });
    }

    fn retransmit_limit(&self) -> u32 {
        let n = (self.members.len() + 2) as f64;
        self.cfg.retransmit_mult * (n.log10().ceil() as u32).max(1)
    }

    fn send(&mut self, to: NodeId, probe: Probe) {
        let limit = self.retransmit_limit();
        let mut updates = Vec::new();
        // Fewest transmissions first: new updates spread before old ones.
        let mut order: Vec<usize> = (0..self.broadcasts.len()).collect();
        order.sort_by_key(|&i| self.broadcasts[i].sent);
        // Lifeguard's buddy system: a suspicion about the receiver goes to
        // it first, so a live suspect refutes at once.
        if let Some(pos) = self
            .broadcasts
            .iter()
            .position(|b| matches!(&b.update, Update::Suspect { node, .. } if *node == to))
        {
            order.retain(|&i| i != pos);
            order.insert(0, pos);
        }
        for i in order.into_iter().take(self.cfg.max_piggyback) {
            let b = &mut self.broadcasts[i];
            b.sent += 1;
            updates.push(b.update.clone());
        }
        self.broadcasts.retain(|b| b.sent < limit);
        self.out.push(SwimOut::Send {
            to,
            packet: Packet { probe, updates },
        });
    }

    /// Handles a packet from `from` at `now`.
    pub fn receive(&mut self, from: &NodeId, packet: Packet, now: Mono) {
        if let Some(m) = self.members.get_mut(from) {
            m.last_heard = now;
        }
        for u in packet.updates {
            self.update(u, now);
        }
        match packet.probe {
            Probe::Ping { seq } => self.send(from.clone(), Probe::Ack { seq }),
            Probe::Ack { seq } => self.on_ack(from, seq),
            Probe::PingReq { seq, target } => {
                if target == self.me {
                    self.send(from.clone(), Probe::Ack { seq });
                    return;
                }
                self.seq += 1;
                let mine = self.seq;
                self.relays.insert(
                    mine,
                    Relay {
                        asker: from.clone(),
                        asker_seq: seq,
                        deadline: now.plus(self.scale(self.cfg.probe_timeout_ms)),
                    },
                );
                self.send(target, Probe::Ping { seq: mine });
            }
            Probe::Nack { seq } => {
                if let Some(c) = self.current.as_mut().filter(|c| c.seq == seq) {
                    c.relays.remove(from);
                }
            }
        }
    }

    fn on_ack(&mut self, from: &NodeId, seq: u64) {
        if let Some(r) = self.relays.remove(&seq) {
            self.send(r.asker, Probe::Ack { seq: r.asker_seq });
            return;
        }
        if let Some(c) = self.current.as_mut().filter(|c| c.seq == seq) {
            c.acked = true;
            c.relays.remove(from);
        }
    }

    fn update(&mut self, u: Update, now: Mono) {
        match u {
            Update::Suspect {
                node,
                incarnation,
                by,
            } => {
                if node == self.me {
                    if incarnation >= self.incarnation {
                        // Being suspected is a sign of being slow: slow down.
                        self.raise_health();
                        self.out.push(SwimOut::Count(SwimCounter::SuspicionRefuted));
                        self.out.push(SwimOut::Refute(incarnation));
                    }
                    return;
                }
                self.suspect(&node, incarnation, &by, now);
            }
            Update::Alive {
                node,
                incarnation,
                sig,
            } => {
                let Some(m) = self.members.get_mut(&node) else {
                    return;
                };
                if incarnation <= m.incarnation {
                    return;
                }
                m.incarnation = incarnation;
                m.last_heard = now;
                if let Some(s) = m.suspicion.take() {
                    self.deadlines.remove(&(s.deadline, node.clone()));
                    self.out.push(SwimOut::Recovered(node.clone()));
                    self.out.push(SwimOut::Count(SwimCounter::SuspicionRefuted));
                }
                self.queue(Update::Alive {
                    node,
                    incarnation,
                    sig,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Swim instances wired together: packets to a node in `down` vanish.
    struct Cluster {
        nodes: Vec<Swim>,
        ids: Vec<NodeId>,
        rng: Rng,
        down: BTreeSet<usize>,
        verdicts: Vec<(usize, SwimOut)>,
    }

    impl Cluster {
        fn new(n: usize, cfg: SwimConfig) -> Self {
            let ids: Vec<NodeId> = (0..n).map(|i| NodeId::from(format!("n{i:02}"))).collect();
            let mut rng = Rng::new(7);
            let mut nodes = Vec::new();
            for id in &ids {
                let mut s = Swim::new(cfg, id.clone(), 1, Mono(0));
                for other in &ids {
                    s.watch(other, 1, Mono(0), &mut rng);
                }
                nodes.push(s);
            }
            Cluster {
                nodes,
                ids,
                rng,
                down: BTreeSet::new(),
                verdicts: Vec::new(),
            }
        }

        fn index(&self, id: &NodeId) -> usize {
            self.ids.iter().position(|i| i == id).unwrap()
        }

        /// Runs every node to `until` in 10 ms steps, delivering packets at
        /// once.
        fn run(&mut self, from: u64, until: u64) {
            let mut t = from;
            while t <= until {
                for i in 0..self.nodes.len() {
                    if self.down.contains(&i) {
                        continue;
                    }
                    self.nodes[i].tick(Mono(t), &mut self.rng);
                    self.flush(i, t);
                }
                t += 10;
            }
        }

        fn flush(&mut self, i: usize, t: u64) {
            let mut queue: VecDeque<(usize, SwimOut)> =
                self.nodes[i].drain().map(|o| (i, o)).collect();
            while let Some((from, out)) = queue.pop_front() {
                match out {
                    SwimOut::Send { to, packet } => {
                        let j = self.index(&to);
                        if self.down.contains(&j) {
                            continue;
                        }
                        let sender = self.ids[from].clone();
                        self.nodes[j].receive(&sender, packet, Mono(t));
                        queue.extend(self.nodes[j].drain().map(|o| (j, o)));
                    }
                    SwimOut::Refute(inc) => {
                        self.nodes[from].set_incarnation(inc + 1, Sig::default());
                        queue.extend(self.nodes[from].drain().map(|o| (from, o)));
                    }
                    SwimOut::Count(_) => {}
                    other => self.verdicts.push((from, other)),
                }
            }
        }

        fn dead_verdicts(&self, about: usize) -> usize {
            self.verdicts
                .iter()
                .filter(
                    |(_, v)| matches!(v, SwimOut::Dead { node, .. } if *node == self.ids[about]),
                )
                .count()
        }
    }

    #[test]
    fn a_healthy_cluster_raises_no_suspicion() {
        let mut c = Cluster::new(8, SwimConfig::new(100, 2));
        c.run(0, 10_000);
        assert!(c.verdicts.is_empty(), "{:?}", c.verdicts);
        assert!(c.nodes.iter().all(|n| n.health() == 0));
    }

    #[test]
    fn a_silent_member_is_suspected_then_declared_dead_with_confirmations() {
        let cfg = SwimConfig::new(100, 2);
        let mut c = Cluster::new(8, cfg);
        c.run(0, 1_000);
        c.down.insert(3);
        c.run(1_010, 10_000);
        let suspects = c
            .verdicts
            .iter()
            .filter(|(_, v)| matches!(v, SwimOut::Suspect(n) if *n == c.ids[3]))
            .count();
        assert_eq!(suspects, 7, "every live node hears of the suspicion");
        assert!(c.dead_verdicts(3) >= 1);
        let (min, max) = c.nodes[0].suspicion_bounds();
        let confirmed = c.verdicts.iter().find_map(|(_, v)| match v {
            SwimOut::Dead {
                suspected_ms,
                confirmations,
                ..
            } => Some((*suspected_ms, *confirmations)),
            _ => None,
        });
        let (ms, confirmations) = confirmed.unwrap();
        assert!(confirmations >= 1, "other observers confirmed it");
        assert!(ms < max && ms >= min, "{ms} ms is within ({min}, {max})");
        // No one else was accused, and nobody's health suffered for a
        // member that was really gone (its relays sent nacks).
        assert!(c
            .verdicts
            .iter()
            .all(|(_, v)| !matches!(v, SwimOut::Suspect(n) if *n != c.ids[3])));
        assert!(c
            .nodes
            .iter()
            .enumerate()
            .all(|(i, n)| i == 3 || n.health() <= 1));
    }

    #[test]
    fn a_suspected_member_that_is_alive_refutes_and_is_not_declared_dead() {
        let cfg = SwimConfig::new(100, 2);
        let mut c = Cluster::new(6, cfg);
        // Node 0 wrongly suspects node 2 (as if its probe had been lost).
        let by = c.ids[0].clone();
        let target = c.ids[2].clone();
        c.nodes[0].suspect(&target, 1, &by, Mono(0));
        c.run(0, 5_000);
        assert_eq!(c.dead_verdicts(2), 0);
        assert!(c.nodes[2].incarnation() > 1, "it refuted");
        assert!(c
            .verdicts
            .iter()
            .any(|(_, v)| matches!(v, SwimOut::Recovered(n) if *n == target)));
        assert!(c.nodes.iter().all(|n| !n.is_suspect(&target)));
    }

    #[test]
    fn the_suspicion_timeout_shrinks_with_confirmations() {
        let s = {
            let mut rng = Rng::new(1);
            let mut s = Swim::new(SwimConfig::new(500, 2), NodeId::from("me"), 1, Mono(0));
            for i in 0..99 {
                s.watch(&NodeId::from(format!("m{i}")), 1, Mono(0), &mut rng);
            }
            s
        };
        let (min, max) = s.suspicion_bounds();
        assert_eq!(
            (min, max),
            (2_000, 6_000),
            "alpha 2 * log10(100) * 500 ms, beta 3"
        );
        let t: Vec<u64> = (0..5).map(|c| s.suspicion_timeout(c)).collect();
        assert_eq!(t[0], max);
        assert!(t.windows(2).all(|w| w[1] <= w[0]), "{t:?}");
        assert_eq!(t[3], min);
        assert_eq!(t[4], min);
    }

    #[test]
    fn a_suspicion_about_the_receiver_rides_first_on_a_packet_to_it() {
        let mut rng = Rng::new(1);
        let mut s = Swim::new(SwimConfig::new(100, 2), NodeId::from("me"), 1, Mono(0));
        let target = NodeId::from("t");
        s.watch(&target, 1, Mono(0), &mut rng);
        for i in 0..20 {
            let n = NodeId::from(format!("x{i}"));
            s.watch(&n, 1, Mono(0), &mut rng);
            s.queue(Update::Alive {
                node: n,
                incarnation: 2,
                sig: Sig::default(),
            });
        }
        let me = NodeId::from("me");
        s.suspect(&target, 1, &me, Mono(0));
        for i in 0..20 {
            s.queue(Update::Alive {
                node: NodeId::from(format!("y{i}")),
                incarnation: 2,
                sig: Sig::default(),
            });
        }
        s.drain().for_each(drop);
        s.send(target.clone(), Probe::Ping { seq: 1 });
        let Some(SwimOut::Send { packet, .. }) = s.drain().next() else {
            panic!("a packet");
        };
        assert!(packet.updates.len() <= s.cfg.max_piggyback);
        assert!(matches!(&packet.updates[0], Update::Suspect { node, .. } if *node == target));
    }

    #[test]
    fn a_node_whose_own_probe_fails_after_it_heard_of_the_suspicion_confirms_it_once() {
        let mut rng = Rng::new(1);
        let (me, other, target) = (NodeId::from("me"), NodeId::from("o"), NodeId::from("t"));
        let mut s = Swim::new(SwimConfig::new(100, 2), me.clone(), 1, Mono(0));
        s.watch(&target, 1, Mono(0), &mut rng);
        s.watch(&other, 1, Mono(0), &mut rng);
        // `other` suspects t first; then this node's own probe of t fails.
        s.suspect(&target, 1, &other, Mono(0));
        s.suspect(&target, 1, &me, Mono(10));
        s.suspect(&target, 1, &me, Mono(20));
        let mine = s
            .broadcasts
            .iter()
            .filter(|b| matches!(&b.update, Update::Suspect { node, by, .. } if *node == target && *by == me))
            .count();
        assert_eq!(mine, 1, "its own suspicion goes out, once");
        let confirmers = &s.members[&target].suspicion.as_ref().unwrap().confirmers;
        assert_eq!(confirmers.len(), 1, "its own timer counts only the others");
    }

    #[test]
    fn a_node_whose_probes_go_unanswered_slows_down() {
        let mut rng = Rng::new(1);
        let cfg = SwimConfig::new(100, 2);
        let mut s = Swim::new(cfg, NodeId::from("me"), 1, Mono(0));
        for i in 0..5 {
            s.watch(&NodeId::from(format!("m{i}")), 1, Mono(0), &mut rng);
        }
        // Nothing ever answers (this node's own links are down): no acks,
        // no nacks.
        let mut t = 0;
        let mut probes = 0;
        while t <= 5_000 {
            s.tick(Mono(t), &mut rng);
            probes += s
                .drain()
                .filter(|o| matches!(o, SwimOut::Count(SwimCounter::ProbeSent)))
                .count();
            t += 10;
        }
        assert_eq!(s.health(), cfg.max_health);
        assert!(
            probes < 50 / 2,
            "{probes} probes in 5 s at a 100 ms interval"
        );
    }
}
