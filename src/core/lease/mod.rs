//! The control plane: a small Raft group (raft-rs) whose leader is the
//! federation's one lease holder.
//!
//! Most nodes never run Raft. A few members, the *voters* (3 by default),
//! run a `RawNode` inside the engine, driven by the engine's clock and
//! inputs like everything else; their log holds only configuration changes
//! and each new leader's empty entry. What the group provides is a leader
//! elected by a quorum, with a term that only grows: the lease holder, and
//! the term that fences its decisions.
//!
//! - **Founding.** A node that knows no control plane waits
//!   `found_after_ms` and until it sees `bootstrap_expect` healthy members;
//!   then the `bootstrap_expect` lowest node ids found a plane together
//!   (each computes the same set and the same plane id). The others wait to
//!   hear of it.
//! - **Announcing.** The leader gossips a [`LeaseClaim`] when it takes
//!   office and every `announce_every_ms`; every node keeps the latest, so
//!   any node can answer "who holds the lease".
//! - **Joining.** A node that hears of a plane joins it as a bystander; the
//!   leader's autopilot adds healthy bystanders, one configuration change at
//!   a time, first as learners, then as voters once caught up, until the
//!   plane has `voters` voters; it removes voters that are dead or left.
//! - **Two planes that meet** (sites founded apart): the one with more
//!   voters wins, then the lower plane id. The other's members yield: they
//!   drop their Raft state but keep their term, and join the winner.
//!
//! Determinism: raft-rs draws its randomized election timeout from
//! `thread_rng`; every time it resets it, [`Control`] overwrites it with a
//! draw from the engine's seeded RNG, before the next tick can read it.

pub mod msg;

use crate::core::ids::{Mono, NodeId};
use crate::core::rng::Rng;
use crate::core::sign::{Keys, Sig};
use msg::{Change, Conf, ConfChange, Entry, Payload, RaftMsg, Snapshot};
use protobuf::Message as _;
use raft::eraftpb;
use raft::prelude::{Config, RawNode};
use raft::storage::MemStorage;
use raft::{StateRole, Storage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Control-plane timing and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    /// One Raft tick, ms.
    pub tick_ms: u64,
    /// Ticks without a leader before a follower campaigns (the timeout is
    /// drawn between this and twice this).
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Voters the plane aims for (1, 3 or 5).
    pub voters: usize,
    /// Healthy members a node waits to see before founding a plane.
    pub bootstrap_expect: usize,
    /// How long a node that knows no plane waits before founding one, ms.
    pub found_after_ms: u64,
    /// How often the leader announces its lease, ms.
    pub announce_every_ms: u64,
}

impl ControlConfig {
    /// The timing for a failure-detection probe interval: ticks of a fifth
    /// of it (100 ms in the fast profile, etcd's heartbeat), elections after
    /// 10 to 20 ticks (etcd's 1 s in the fast profile), announcements every
    /// 10 ticks.
    pub fn for_probe_interval(probe_ms: u64, voters: usize, bootstrap_expect: usize) -> Self {
        let tick_ms = (probe_ms / 5).max(10);
        ControlConfig {
            tick_ms,
            election_ticks: 10,
            heartbeat_ticks: 2,
            voters: voters.max(1),
            bootstrap_expect: bootstrap_expect.max(1),
            found_after_ms: tick_ms * 30,
            announce_every_ms: tick_ms * 10,
        }
    }

    /// How long an announcement is believed without a newer one.
    fn claim_ttl_ms(&self) -> u64 {
        self.announce_every_ms * 3 + self.tick_ms * self.election_ticks as u64 * 2
    }
}

/// The lease as its holder announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseClaim {
    /// The control plane.
    pub plane: u64,
    /// The holder's Raft term.
    pub term: u64,
    /// The holder.
    pub holder: NodeId,
    /// The plane's voters.
    pub voters: Vec<NodeId>,
    /// The plane's learners (being caught up to become voters).
    pub learners: Vec<NodeId>,
    /// The log index of the configuration named (a member whose own
    /// configuration is older, and which is not in this one, was removed).
    pub conf_index: u64,
    /// The holder's count of its announcements: each is a new gossip
    /// message (gossipsub drops one it has seen, by content, for a minute,
    /// so an unchanged lease announced again would never arrive and every
    /// bystander's view of it would expire), and a relayed copy with a
    /// higher count is fresher news.
    pub seq: u64,
    /// The holder's signature of the fields above (core/sign.rs): relayed
    /// by anyone, written by the holder only.
    pub sig: Sig,
}

impl LeaseClaim {
    fn signed_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&(
            "shoal lease v1",
            self.plane,
            self.term,
            &self.holder,
            &self.voters,
            &self.learners,
            self.conf_index,
            self.seq,
        ))
        .unwrap_or_default()
    }

    /// Signs the claim as its holder.
    pub fn sign(&mut self, keys: &Keys) {
        self.sig = keys.sign(&self.signed_bytes());
    }

    /// Whether the holder signed it, in `keys`' scheme.
    pub fn check(&self, keys: &Keys) -> Result<(), String> {
        if keys.verify(&self.holder, &self.signed_bytes(), &self.sig) {
            Ok(())
        } else {
            Err(format!(
                "a lease announcement not signed by its holder {}",
                self.holder
            ))
        }
    }

    /// The order of planes that meet: more voters first, then the lower id.
    fn beats(&self, plane: u64, voters: usize) -> bool {
        (std::cmp::Reverse(self.voters.len()), self.plane) < (std::cmp::Reverse(voters), plane)
    }
}

/// The lease as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The holder.
    pub holder: NodeId,
    /// Its term.
    pub term: u64,
}

/// The control state a node keeps in its store, written whole (it is
/// small: the log holds configuration changes only and is compacted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlDisk {
    /// The plane this node belongs to (0: none).
    pub plane: u64,
    /// Raft's hard state: term, vote, commit.
    pub term: u64,
    /// The Raft id voted for in `term`.
    pub vote: u64,
    /// The commit index.
    pub commit: u64,
    /// What the compacted log covered.
    pub snapshot: Snapshot,
    /// The log after the snapshot.
    pub entries: Vec<Entry>,
    /// The configuration as of the last applied entry.
    pub conf: Conf,
    /// The last applied index.
    pub applied: u64,
    /// Node ids of the Raft ids this node has met in its plane.
    pub names: Vec<NodeId>,
}

/// What the control plane asks of the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum ControlOut {
    /// Send a Raft message (a datagram) once what was staged is durable.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: RaftMsg,
    },
    /// Gossip the lease.
    Announce(LeaseClaim),
    /// Store the control state (synced, in the open batch).
    Persist(ControlDisk),
    /// The lease changed hands (or was lost: `holder` none).
    Changed {
        /// The new holder.
        holder: Option<NodeId>,
        /// Its term.
        term: u64,
    },
    /// Something for the audit log.
    Audit {
        /// What happened (`voter_added`, ...).
        action: &'static str,
        /// About whom.
        subject: String,
        /// Details.
        detail: String,
    },
}

/// What the control plane needs to know of membership.
pub trait Roster {
    /// Alive, not draining, not suspected.
    fn healthy(&self, id: &NodeId) -> bool;
    /// Dead or left (or never known).
    fn gone(&self, id: &NodeId) -> bool;
    /// The `n` lowest ids among healthy members (this node included when
    /// healthy), sorted.
    fn lowest_healthy(&self, n: usize) -> Vec<NodeId>;
    /// How many members are healthy.
    fn healthy_count(&self) -> usize;
}

/// Why a heartbeat is refused that commits past this node's log.
const LOG_BEHIND: &str = "commit past this node's log (the leader counts entries it lost)";

/// A message that contradicts this node's log in a way raft-rs does not
/// survive (it ends the node with `fatal!`): a heartbeat committing past
/// the last entry (`commit_to` out of range), sent by a leader that counts
/// entries this node lost (it left the plane and came back). Refused
/// before raft-rs sees it: the leader gets no answer and counts this node
/// as unresponsive. (Entries that would overwrite committed ones, raft-rs's
/// other such check, never reach it: it answers an append below its
/// commit index with that index and goes no further.)
fn contradicts_log(raw: &RawNode<MemStorage>, m: &eraftpb::Message) -> Result<(), &'static str> {
    let behind = m.get_msg_type() == eraftpb::MessageType::MsgHeartbeat
        && m.commit > raw.raft.raft_log.last_index();
    if behind {
        Err(LOG_BEHIND)
    } else {
        Ok(())
    }
}

/// A node's Raft id: 8 bytes of a hash of its node id (never 0, Raft's
/// "nobody").
pub fn raft_id(node: &NodeId) -> u64 {
    let h = blake3::hash(node.as_str().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b).max(1)
}

/// The id of a plane founded by `voters` (sorted): the same on each of them.
fn plane_id(voters: &[NodeId]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"shoal control plane");
    for v in voters {
        h.update(v.as_str().as_bytes());
        h.update(&[0]);
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b).max(1)
}

/// One node's part in the control plane.
pub struct Control {
    me: NodeId,
    keys: Keys,
    id: u64,
    cfg: ControlConfig,
    rng: Rng,
    logger: slog::Logger,
    plane: u64,
    raw: Option<RawNode<MemStorage>>,
    /// The term to keep when Raft state is dropped (yielding to another
    /// plane) and made again, so terms never go back.
    kept_term: u64,
    names: BTreeMap<u64, NodeId>,
    /// The latest announcement heard, and when.
    claim: Option<(LeaseClaim, Mono)>,
    started: Option<Mono>,
    last_announce: Option<Mono>,
    /// Announcements made so far (each claim's `seq`).
    announced: u64,
    /// The lease as last reported (to report changes once).
    reported: Option<Lease>,
    /// A learner being caught up, and since when.
    catching_up: Option<(u64, Mono)>,
    /// When each member of the plane was last heard from (any Raft
    /// message), and the term this node leads, since when: a leader
    /// replaces a voter it has not heard from in a long while.
    heard: BTreeMap<u64, Mono>,
    leading: Option<(u64, Mono)>,
    out: Vec<ControlOut>,
    now: Mono,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("me", &self.me)
            .field("plane", &self.plane)
            .field("voting", &self.raw.is_some())
            .finish()
    }
}

impl Control {
    /// The control plane of node `me` (signing its announcements with
    /// `keys`), from its stored state.
    pub fn new(
        me: NodeId,
        keys: Keys,
        cfg: ControlConfig,
        disk: Option<ControlDisk>,
        rng: Rng,
    ) -> Control {
        let id = raft_id(&me);
        let mut c = Control {
            me: me.clone(),
            keys,
            id,
            cfg,
            rng,
            logger: slog::Logger::root(TracingDrain, slog::o!()),
            plane: 0,
            raw: None,
            kept_term: 0,
            names: BTreeMap::from([(id, me)]),
            claim: None,
            started: None,
            last_announce: None,
            announced: 0,
            reported: None,
            catching_up: None,
            heard: BTreeMap::new(),
            leading: None,
            out: Vec::new(),
            now: Mono(0),
        };
        if let Some(d) = disk {
            c.restore(d);
        }
        c
    }

    fn restore(&mut self, d: ControlDisk) {
        self.plane = d.plane;
        self.kept_term = d.term;
        for n in d.names {
            self.names.insert(raft_id(&n), n);
        }
        let has_raft = !d.conf.voters.is_empty() || !d.conf.learners.is_empty();
        if self.plane == 0 || !has_raft {
            return;
        }
        let storage = MemStorage::new();
        {
            let mut w = storage.wl();
            if d.snapshot.index > 0 {
                let _ = w.apply_snapshot(d.snapshot.to_pb());
            }
            let entries: Vec<eraftpb::Entry> = d.entries.iter().map(Entry::to_pb).collect();
            let _ = w.append(&entries);
            w.set_hardstate(eraftpb::HardState {
                term: d.term,
                vote: d.vote,
                commit: d.commit,
                ..Default::default()
            });
            w.set_conf_state(d.conf.to_pb());
        }
        self.raw = self.make_raw(storage, d.applied);
    }

    fn raft_config(&self, applied: u64) -> Config {
        Config {
            id: self.id,
            election_tick: self.cfg.election_ticks,
            heartbeat_tick: self.cfg.heartbeat_ticks,
            // One apart: raft-rs's own draw is then fixed, and replaced by
            // the engine's (see `reseed_timeout`).
            min_election_tick: self.cfg.election_ticks,
            max_election_tick: self.cfg.election_ticks * 2,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 16 * 1024,
            max_inflight_msgs: 16,
            ..Default::default()
        }
    }

    fn make_raw(&mut self, storage: MemStorage, applied: u64) -> Option<RawNode<MemStorage>> {
        let cfg = self.raft_config(applied);
        match RawNode::new(&cfg, storage, &self.logger) {
            Ok(mut raw) => {
                self.reseed_timeout(&mut raw, true);
                Some(raw)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the control plane's Raft node");
                None
            }
        }
    }

    /// Replaces raft-rs's randomized election timeout (drawn from
    /// `thread_rng`) with one from the engine's RNG whenever raft-rs has
    /// just reset it (`election_elapsed` back at 0).
    fn reseed_timeout(&mut self, raw: &mut RawNode<MemStorage>, force: bool) {
        let r = &mut raw.raft;
        if force || r.election_elapsed == 0 {
            let e = self.cfg.election_ticks;
            let t = e + self.rng.below(e);
            r.set_randomized_election_timeout(t);
        }
    }

    /// This node's plane (0: none).
    pub fn plane(&self) -> u64 {
        self.plane
    }

    /// Whether this node runs Raft (a voter or learner of its plane).
    pub fn is_member(&self) -> bool {
        self.raw.is_some()
    }

    /// Whether the engine should tick the control plane.
    pub fn wants_ticks(&self) -> bool {
        true
    }

    /// The lease holder's term as this node knows it (0: none).
    pub fn term(&self) -> u64 {
        self.lease().map_or(0, |l| l.term)
    }

    /// Whether this node holds the lease.
    pub fn holds_lease(&self) -> bool {
        self.raw
            .as_ref()
            .is_some_and(|r| r.raft.state == StateRole::Leader)
    }

    /// The lease as this node knows it: its own Raft view when it is a
    /// member, else the latest announcement while it is fresh.
    pub fn lease(&self) -> Option<Lease> {
        if let Some(raw) = &self.raw {
            let r = &raw.raft;
            if r.leader_id != raft::INVALID_ID {
                if let Some(holder) = self.names.get(&r.leader_id) {
                    return Some(Lease {
                        holder: holder.clone(),
                        term: r.term,
                    });
                }
            }
        }
        let (claim, at) = self.claim.as_ref()?;
        if self.now.since(*at) > self.cfg.claim_ttl_ms() {
            return None;
        }
        if claim.holder == self.me {
            // Its own last announcement, from before it stepped down (it
            // lost its quorum): it holds nothing now.
            return None;
        }
        Some(Lease {
            holder: claim.holder.clone(),
            term: claim.term,
        })
    }

    /// Whether `claim` is the announcement this node holds (so its
    /// signature was checked when it first came).
    pub fn holds_claim(&self, claim: &LeaseClaim) -> bool {
        self.claim.as_ref().is_some_and(|(c, _)| c == claim)
    }

    /// The latest announcement while it is fresh, to pass on.
    pub fn claim(&self) -> Option<LeaseClaim> {
        let (claim, at) = self.claim.as_ref()?;
        (self.now.since(*at) <= self.cfg.claim_ttl_ms()).then(|| claim.clone())
    }

    /// The voters of this node's plane, as far as it knows them.
    pub fn voters(&self) -> Vec<NodeId> {
        if let Some(raw) = &self.raw {
            let conf = raw.raft.prs().conf().to_conf_state();
            return conf
                .voters
                .iter()
                .filter_map(|v| self.names.get(v).cloned())
                .collect();
        }
        self.claim
            .as_ref()
            .map(|(c, _)| c.voters.clone())
            .unwrap_or_default()
    }

    /// Takes what the control plane asked for.
    pub fn take_outputs(&mut self) -> Vec<ControlOut> {
        std::mem::take(&mut self.out)
    }

    /// One Raft tick: elections, heartbeats, founding, autopilot.
    pub fn tick(&mut self, now: Mono, roster: &dyn Roster) {
        self.now = now;
        let started = *self.started.get_or_insert(now);
        if let Some(mut raw) = self.raw.take() {
            raw.tick();
            self.reseed_timeout(&mut raw, false);
            self.raw = Some(raw);
            self.ready();
            if self.holds_lease() {
                self.announce(false);
                self.autopilot(roster);
            }
        } else {
            self.maybe_found(started, roster);
        }
        self.report();
    }

    /// A Raft message from `from` (the datagram's verified sender).
    pub fn receive(&mut self, now: Mono, from: &NodeId, msg: RaftMsg) -> Result<(), msg::MsgError> {
        self.now = now;
        if msg.from != raft_id(from) || msg.to != self.id {
            return Err(msg::MsgError::Malformed("sender or receiver id"));
        }
        let pb = msg.to_pb()?;
        let from_leader = matches!(
            msg.kind,
            msg::Kind::Append | msg::Kind::Snapshot | msg::Kind::Heartbeat
        );
        if self.plane == 0 && self.raw.is_none() && from_leader && msg.plane != 0 {
            // A bystander that has not heard an announcement yet: the
            // leader that added it tells it which plane it is in.
            self.plane = msg.plane;
        }
        if msg.plane != self.plane {
            // Another plane: ignored (announcements decide who yields).
            return Ok(());
        }
        self.names.insert(msg.from, from.clone());
        self.heard.insert(msg.from, now);
        for e in &msg.entries {
            if let Payload::Conf(cc) = &e.payload {
                self.learn_names(cc);
            }
        }
        if let Some(s) = &msg.snapshot {
            for n in &s.names {
                self.names.insert(raft_id(n), n.clone());
            }
        }
        if self.raw.is_none() {
            // A bystander the leader added: start from nothing (the leader
            // sends the log or a snapshot), keeping the term.
            if !from_leader {
                return Ok(());
            }
            if pb.get_msg_type() == eraftpb::MessageType::MsgHeartbeat && pb.commit > 0 {
                // A leader that counts entries this node does not hold (it
                // was a member, left the plane and came back): a member
                // newly added is sent commit 0 until it holds the log.
                return Err(msg::MsgError::Malformed(LOG_BEHIND));
            }
            let storage = MemStorage::new();
            storage.wl().set_hardstate(eraftpb::HardState {
                term: self.kept_term,
                ..Default::default()
            });
            self.raw = self.make_raw(storage, 0);
        }
        if let Some(mut raw) = self.raw.take() {
            if let Err(why) = contradicts_log(&raw, &pb) {
                self.raw = Some(raw);
                return Err(msg::MsgError::Malformed(why));
            }
            // raft-rs ends a node (`fatal!` panics) over a message that
            // contradicts its log; the known ones are refused above, and
            // any other leaves this node out of the plane rather than
            // stopping it.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let r = raw.step(pb);
                (raw, r)
            }));
            let Ok((mut raw, r)) = stepped else {
                tracing::warn!(
                    peer = %from,
                    "a raft message made raft-rs fail: this node leaves the control plane's Raft state and waits to be added again"
                );
                self.out.push(ControlOut::Audit {
                    action: "control_plane_state_dropped",
                    subject: self.me.to_string(),
                    detail: format!("a raft message from {from} made raft-rs fail"),
                });
                self.persist();
                self.report();
                return Err(msg::MsgError::Malformed("raft-rs failed on it"));
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "raft step refused a message");
            }
            self.reseed_timeout(&mut raw, false);
            self.raw = Some(raw);
            self.ready();
        }
        self.report();
        Ok(())
    }

    /// Whether this node holds the control plane's Raft log.
    #[cfg(test)]
    fn last_index(&self) -> Option<u64> {
        self.raw.as_ref().map(|r| r.raft.raft_log.last_index())
    }

    /// A lease announcement: from its holder by gossip, or `relayed` by
    /// another member in a probe's ack. A relayed claim never makes the
    /// one held look fresher (else a dead holder's claim would live on,
    /// passed around); it is taken only when it is news.
    pub fn observe(&mut self, now: Mono, claim: LeaseClaim, relayed: bool) {
        self.now = now;
        if claim.plane == 0 || claim.voters.is_empty() {
            return;
        }
        for n in &claim.voters {
            self.names.insert(raft_id(n), n.clone());
        }
        if self.plane == 0 {
            self.plane = claim.plane;
            self.persist();
        } else if claim.plane == self.plane {
            self.removed_by(&claim);
        } else if claim.plane != self.plane {
            let mine = self.voters().len().max(1);
            if !claim.beats(self.plane, mine) {
                return; // ours wins; theirs yields when it hears ours
            }
            tracing::info!(
                from = self.plane,
                to = claim.plane,
                "joining a larger control plane"
            );
            self.out.push(ControlOut::Audit {
                action: "control_plane_joined",
                subject: self.me.to_string(),
                detail: format!("plane {:016x} yields to {:016x}", self.plane, claim.plane),
            });
            if let Some(raw) = self.raw.take() {
                self.kept_term = self.kept_term.max(raw.raft.term);
            }
            self.plane = claim.plane;
            self.catching_up = None;
            self.persist();
        }
        let newer = self.claim.as_ref().is_none_or(|(c, _)| {
            c.plane != claim.plane
                || c.term < claim.term
                || (c.term == claim.term
                    && (!relayed || (c.holder == claim.holder && c.seq < claim.seq)))
        });
        if newer {
            self.claim = Some((claim, now));
        }
        self.report();
    }

    /// A member of the plane that the leader's newer configuration leaves
    /// out was removed while it could not hear of it (it was down or cut
    /// off): it drops its Raft state, keeping its term, and is a bystander
    /// again (the autopilot adds it back if voters are short).
    fn removed_by(&mut self, claim: &LeaseClaim) {
        let Some(raw) = &self.raw else {
            return;
        };
        let applied = raw.raft.raft_log.applied;
        let named = claim.voters.contains(&self.me) || claim.learners.contains(&self.me);
        if named || claim.conf_index <= applied || claim.holder == self.me {
            return;
        }
        tracing::info!(
            plane = format!("{:016x}", self.plane),
            "removed from the control plane while away"
        );
        self.kept_term = self.kept_term.max(raw.raft.term);
        self.raw = None;
        self.persist();
    }

    fn maybe_found(&mut self, started: Mono, roster: &dyn Roster) {
        if self.plane != 0 {
            // Waiting to be added; if the plane went silent for good (all
            // its voters gone), found anew.
            let silent = self
                .claim
                .as_ref()
                .is_none_or(|(_, at)| self.now.since(*at) > self.cfg.claim_ttl_ms() * 4);
            let voters_gone = self
                .claim
                .as_ref()
                .is_some_and(|(c, _)| c.voters.iter().all(|v| roster.gone(v)));
            if !(silent && (voters_gone || self.claim.is_none())) {
                return;
            }
            if self.now.since(started) < self.cfg.claim_ttl_ms() * 4 {
                return;
            }
            self.plane = 0;
            self.claim = None;
        }
        if self.now.since(started) < self.cfg.found_after_ms {
            return;
        }
        let n = self.cfg.bootstrap_expect;
        if roster.healthy_count() < n {
            return;
        }
        let voters = roster.lowest_healthy(n);
        if voters.len() < n || !voters.contains(&self.me) {
            return;
        }
        self.found(voters);
    }

    fn found(&mut self, voters: Vec<NodeId>) {
        self.plane = plane_id(&voters);
        let ids: Vec<u64> = voters.iter().map(raft_id).collect();
        for v in &voters {
            self.names.insert(raft_id(v), v.clone());
        }
        // The founding configuration is a snapshot at index 1, not the
        // initial state of an empty log: a node added later starts with an
        // empty log and must be sent that snapshot to learn who the voters
        // are (a log from index 1 would hand it configuration changes on
        // top of an empty configuration).
        let storage = founding_storage(ids, 1, self.kept_term.max(1));
        tracing::info!(
            plane = format!("{:016x}", self.plane),
            voters = voters.len(),
            "founding a control plane"
        );
        self.out.push(ControlOut::Audit {
            action: "control_plane_founded",
            subject: format!("{:016x}", self.plane),
            detail: format!(
                "voters: {}",
                voters
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        self.raw = self.make_raw(storage, 0);
        if voters.len() == 1 {
            if let Some(raw) = self.raw.as_mut() {
                let _ = raw.campaign();
            }
        }
        self.persist();
        self.ready();
    }

    /// Handles what raft-rs has ready: stages the durable part (the whole
    /// control state), queues messages (sent after the stage is durable),
    /// applies committed configuration changes.
    fn ready(&mut self) {
        let Some(mut raw) = self.raw.take() else {
            return;
        };
        if !raw.has_ready() {
            self.raw = Some(raw);
            return;
        }
        let store = raw.raft.raft_log.store.clone();
        let mut rd = raw.ready();
        let mut dirty = false;
        let mut sends = rd.take_messages();
        if *rd.snapshot() != eraftpb::Snapshot::default() {
            let _ = store.wl().apply_snapshot(rd.snapshot().clone());
            dirty = true;
        }
        let committed = rd.take_committed_entries();
        dirty |= self.apply(&mut raw, &store, committed);
        if !rd.entries().is_empty() {
            let _ = store.wl().append(rd.entries());
            dirty = true;
        }
        if let Some(hs) = rd.hs() {
            store.wl().set_hardstate(hs.clone());
            dirty = true;
        }
        sends.extend(rd.take_persisted_messages());
        let mut light = raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            store.wl().mut_hard_state().set_commit(commit);
            dirty = true;
        }
        sends.extend(light.take_messages());
        let committed = light.take_committed_entries();
        dirty |= self.apply(&mut raw, &store, committed);
        raw.advance_apply();
        self.compact(&raw, &store);
        self.raw = Some(raw);
        if dirty {
            self.persist();
        }
        for m in sends {
            self.send(m);
        }
    }

    fn apply(
        &mut self,
        raw: &mut RawNode<MemStorage>,
        store: &MemStorage,
        entries: Vec<eraftpb::Entry>,
    ) -> bool {
        let mut any = false;
        for e in entries {
            if e.get_entry_type() != eraftpb::EntryType::EntryConfChangeV2 {
                continue;
            }
            let Ok(cc) = eraftpb::ConfChangeV2::parse_from_bytes(&e.data) else {
                continue;
            };
            match raw.apply_conf_change(&cc) {
                Ok(cs) => {
                    store.wl().set_conf_state(cs);
                    any = true;
                    for c in cc.get_changes() {
                        let subject = self
                            .names
                            .get(&c.node_id)
                            .map_or_else(|| format!("{:016x}", c.node_id), |n| n.to_string());
                        let action = match c.get_change_type() {
                            eraftpb::ConfChangeType::AddNode => "voter_added",
                            eraftpb::ConfChangeType::AddLearnerNode => "learner_added",
                            eraftpb::ConfChangeType::RemoveNode => "voter_removed",
                        };
                        if raw.raft.state == StateRole::Leader {
                            tracing::info!(
                                change = action,
                                node = %subject,
                                term = raw.raft.term,
                                "control plane configuration changed"
                            );
                            self.out.push(ControlOut::Audit {
                                action,
                                subject,
                                detail: format!("term {}", raw.raft.term),
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot apply a configuration change"),
            }
        }
        any
    }

    /// Compacts the log once it holds more than 64 applied entries.
    fn compact(&self, raw: &RawNode<MemStorage>, store: &MemStorage) {
        let applied = raw.raft.raft_log.applied;
        let first = store.first_index().unwrap_or(1);
        if applied > first + 64 {
            let _ = store.wl().compact(applied);
        }
    }

    fn send(&mut self, m: eraftpb::Message) {
        let Some(to) = self.names.get(&m.to).cloned() else {
            return;
        };
        match RaftMsg::from_pb(self.plane, &m, &self.names) {
            Ok(msg) => self.out.push(ControlOut::Send { to, msg }),
            Err(e) => tracing::debug!(error = %e, "raft message not sent"),
        }
    }

    /// The whole control state, staged for the store.
    fn persist(&mut self) {
        self.out.push(ControlOut::Persist(self.disk()));
    }

    /// The control state as stored.
    pub fn disk(&self) -> ControlDisk {
        let mut d = ControlDisk {
            plane: self.plane,
            term: self.kept_term,
            names: self.names.values().cloned().collect(),
            ..Default::default()
        };
        if let Some(raw) = &self.raw {
            let store = raw.raft.raft_log.store.clone();
            let r = store.rl();
            let hs = r.hard_state();
            d.term = hs.term;
            d.vote = hs.vote;
            d.commit = hs.commit;
            drop(r);
            let first = store.first_index().unwrap_or(1);
            let last = store.last_index().unwrap_or(0);
            let prior = first.saturating_sub(1);
            d.conf = store
                .initial_state()
                .map(|s| Conf::from_pb(&s.conf_state))
                .unwrap_or_default();
            d.applied = raw.raft.raft_log.applied;
            // The log holds configuration changes only, and is compacted
            // up to what is applied: the configuration applied is the
            // snapshot's.
            d.snapshot = Snapshot {
                index: prior,
                term: store.term(prior).unwrap_or(0),
                conf: d.conf.clone(),
                names: Vec::new(),
            };
            if last >= first {
                if let Ok(es) =
                    store.entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
                {
                    d.entries = es
                        .iter()
                        .filter_map(|e| Entry::from_pb(e, &self.names))
                        .collect();
                }
            }
        }
        d
    }

    fn learn_names(&mut self, cc: &ConfChange) {
        for c in &cc.changes {
            self.names.insert(raft_id(c.node()), c.node().clone());
        }
    }

    fn announce(&mut self, force: bool) {
        let due = self
            .last_announce
            .is_none_or(|t| self.now.since(t) >= self.cfg.announce_every_ms);
        if !(force || due) {
            return;
        }
        let Some(raw) = &self.raw else {
            return;
        };
        self.last_announce = Some(self.now);
        let cs = raw.raft.prs().conf().to_conf_state();
        let learners = cs
            .learners
            .iter()
            .filter_map(|id| self.names.get(id).cloned())
            .collect();
        let mut claim = LeaseClaim {
            plane: self.plane,
            term: raw.raft.term,
            holder: self.me.clone(),
            voters: self.voters(),
            learners,
            conf_index: raw.raft.raft_log.applied.min(self.conf_index(raw)),
            seq: self.announced,
            sig: Sig::default(),
        };
        self.announced += 1;
        claim.sign(&self.keys);
        self.claim = Some((claim.clone(), self.now));
        self.out.push(ControlOut::Announce(claim));
    }

    /// Reports a change of the lease once.
    fn report(&mut self) {
        let now = self.lease();
        if now == self.reported {
            return;
        }
        if self.holds_lease() {
            self.announce(true);
        }
        self.out.push(ControlOut::Changed {
            holder: now.as_ref().map(|l| l.holder.clone()),
            term: now.as_ref().map_or(0, |l| l.term),
        });
        self.reported = now;
    }

    /// This node is leaving: if it leads, it transfers leadership to the
    /// healthy voter whose log matches most (it campaigns at once, without
    /// waiting for an election timeout).
    pub fn hand_over(&mut self, roster: &dyn Roster) {
        let Some(raw) = self.raw.as_mut() else {
            return;
        };
        if raw.raft.state != StateRole::Leader {
            return;
        }
        let cs = raw.raft.prs().conf().to_conf_state();
        let to = cs
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .filter(|v| self.names.get(v).is_some_and(|n| roster.healthy(n)))
            .max_by_key(|v| (raw.raft.prs().get(**v).map_or(0, |p| p.matched), **v));
        if let Some(&to) = to {
            tracing::info!(
                to = %self.names[&to],
                term = raw.raft.term,
                "leaving: handing the lease over"
            );
            raw.transfer_leader(to);
            self.ready();
        }
    }

    /// The lease holder found a task to move fenced in `term`, above its
    /// own: a plane that yielded to this one had fenced it in a higher term.
    /// Its fences must order after that one, so it steps to `term` and
    /// campaigns past it at once, as in a leadership transfer (the voters
    /// grant the vote though they hear from it: its log is the newest). A
    /// term more than [`MAX_TERM_STEP`] ahead is not followed (no plane
    /// gets there; a forged fence could). Returns whether it stepped.
    pub fn step_past(&mut self, term: u64) -> bool {
        let Some(raw) = self.raw.as_mut() else {
            return false;
        };
        let r = &mut raw.raft;
        if r.state != StateRole::Leader || term < r.term || term - r.term > MAX_TERM_STEP {
            return false;
        }
        tracing::info!(
            from = r.term,
            to = term + 1,
            "a task is fenced above this term: campaigning past it"
        );
        self.out.push(ControlOut::Audit {
            action: "lease_term_raised",
            subject: self.me.to_string(),
            detail: format!(
                "from term {} past {term}, the fence of a task a yielded plane had moved",
                r.term
            ),
        });
        r.become_follower(term, raft::INVALID_ID);
        r.campaign(raft::CAMPAIGN_TRANSFER);
        self.kept_term = self.kept_term.max(r.term);
        self.ready();
        true
    }

    /// An operator's recovery from a lost majority (etcd's
    /// `--force-new-cluster`, Consul's `peers.json`), run on a surviving
    /// voter: this node becomes the only voter of its plane, under a newer
    /// term (by [`RECOVERY_TERM_GAP`]) and from a log index past anything
    /// the lost voters can hold,
    /// takes the lease at once, and its autopilot adds voters back. A lost
    /// voter that comes back hears the announcement of a configuration
    /// newer than its own that leaves it out, drops its Raft state and
    /// rejoins as a bystander. Refused while the plane has a holder, while
    /// a majority of its voters is healthy (an election will do), and on a
    /// node that is not a voter. Returns the term and the voters left out.
    pub fn recover(&mut self, roster: &dyn Roster) -> Result<(u64, Vec<NodeId>), String> {
        let Some(raw) = self.raw.as_ref() else {
            let voters = self.voters();
            return Err(if voters.is_empty() {
                "this node knows no control plane to recover".to_owned()
            } else {
                format!(
                    "this node is not a voter of the control plane; run this on a surviving voter ({})",
                    voters.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
                )
            });
        };
        let r = &raw.raft;
        let conf = r.prs().conf().to_conf_state();
        if !conf.voters.contains(&self.id) {
            return Err("this node is a learner, not a voter, of the control plane".into());
        }
        if r.leader_id != raft::INVALID_ID {
            let holder = self
                .names
                .get(&r.leader_id)
                .map_or_else(|| format!("{:016x}", r.leader_id), |n| n.to_string());
            return Err(format!(
                "the control plane has a lease holder ({holder}, term {}): nothing to recover",
                r.term
            ));
        }
        let voters: Vec<NodeId> = conf
            .voters
            .iter()
            .map(|v| {
                self.names
                    .get(v)
                    .cloned()
                    .unwrap_or_else(|| NodeId::from(format!("{v:016x}").as_str()))
            })
            .collect();
        let healthy = voters
            .iter()
            .filter(|v| **v == self.me || roster.healthy(v))
            .count();
        if healthy * 2 > voters.len() {
            return Err(format!(
                "{healthy} of the {} voters are healthy, a majority: wait for them to elect a holder",
                voters.len()
            ));
        }
        let lost: Vec<NodeId> = voters.into_iter().filter(|v| *v != self.me).collect();
        // Past any index or term the lost voters may have reached among
        // themselves without this node.
        let index = r.raft_log.last_index().max(r.raft_log.committed) + RECOVERY_INDEX_GAP;
        let term = r.term.max(self.kept_term) + RECOVERY_TERM_GAP;
        let storage = founding_storage(vec![self.id], index, term);
        tracing::warn!(
            plane = format!("{:016x}", self.plane),
            term,
            lost = lost.len(),
            "control plane recovered by an operator: this node is its only voter"
        );
        self.out.push(ControlOut::Audit {
            action: "control_plane_recovered",
            subject: format!("{:016x}", self.plane),
            detail: format!(
                "by an operator: {} left out as lost; {} the only voter from index {index}, term {term}",
                lost.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "),
                self.me
            ),
        });
        self.kept_term = term;
        self.catching_up = None;
        self.raw = self.make_raw(storage, index);
        if let Some(raw) = self.raw.as_mut() {
            let _ = raw.campaign();
        }
        self.persist();
        self.ready();
        Ok((term, lost))
    }

    /// The leader keeps the voter set whole: one change at a time, it
    /// removes members that are gone, promotes a caught-up learner, or adds
    /// a healthy bystander as a learner while voters are short.
    fn autopilot(&mut self, roster: &dyn Roster) {
        let Some(raw) = self.raw.as_mut() else {
            return;
        };
        let r = &raw.raft;
        if r.has_pending_conf() || !r.prs().conf().to_conf_state().voters_outgoing.is_empty() {
            return;
        }
        let cs = r.prs().conf().to_conf_state();
        let name = |id: u64| self.names.get(&id).cloned();
        // Gone members leave first (never this node).
        for id in cs.voters.iter().chain(&cs.learners) {
            if *id == self.id {
                continue;
            }
            if let Some(n) = name(*id) {
                if roster.gone(&n) {
                    let cc = ConfChange {
                        changes: vec![Change::Remove(n)],
                    };
                    let _ = raw.propose_conf_change(Vec::new(), cc.to_pb());
                    return self.after_propose();
                }
            }
        }
        // A voter that answers nothing though it is alive leaves, to be
        // added back as a learner from an empty log: it lost the log the
        // leader counts (it left the plane and came back, and refuses the
        // leader's heartbeats), or it cannot reach the leader.
        let term = r.term;
        let since = match self.leading {
            Some((t, at)) if t == term => at,
            _ => {
                self.leading = Some((term, self.now));
                self.now
            }
        };
        let silent_ms = self.cfg.tick_ms * self.cfg.election_ticks as u64 * 5;
        let silent = cs.voters.iter().filter(|v| **v != self.id).find_map(|v| {
            let heard = self.heard.get(v).copied().unwrap_or(since).max(since);
            let n = name(*v)?;
            (self.now.since(heard) > silent_ms && roster.healthy(&n)).then_some(n)
        });
        if let Some(n) = silent {
            tracing::info!(voter = %n, "a voter silent for {silent_ms} ms leaves the control plane");
            let cc = ConfChange {
                changes: vec![Change::Remove(n)],
            };
            let _ = raw.propose_conf_change(Vec::new(), cc.to_pb());
            return self.after_propose();
        }
        // Voters beyond the plane's size leave again: an unhealthy one
        // first, else the highest id (never this node).
        let size = target_voters(self.cfg.voters, usize::MAX);
        if cs.voters.len() > size {
            let surplus = cs
                .voters
                .iter()
                .filter(|v| **v != self.id)
                .filter_map(|v| name(*v))
                .max_by_key(|n| (!roster.healthy(n), n.clone()));
            if let Some(n) = surplus {
                let cc = ConfChange {
                    changes: vec![Change::Remove(n)],
                };
                let _ = raw.propose_conf_change(Vec::new(), cc.to_pb());
                return self.after_propose();
            }
        }
        // A learner that caught up becomes a voter.
        let last = r.raft_log.last_index();
        for id in &cs.learners {
            let caught_up = r.prs().get(*id).is_some_and(|p| p.matched + 1 >= last);
            if let (true, Some(n)) = (caught_up, name(*id)) {
                if roster.healthy(&n) {
                    let cc = ConfChange {
                        changes: vec![Change::AddVoter(n)],
                    };
                    let _ = raw.propose_conf_change(Vec::new(), cc.to_pb());
                    self.catching_up = None;
                    return self.after_propose();
                }
            }
        }
        // A learner that does not catch up (it belongs to another plane, or
        // is unreachable) is dropped after a while.
        if let Some((id, since)) = self.catching_up {
            let wait = self.cfg.tick_ms * self.cfg.election_ticks as u64 * 5;
            if self.now.since(since) > wait && cs.learners.contains(&id) {
                if let Some(n) = name(id) {
                    let cc = ConfChange {
                        changes: vec![Change::Remove(n)],
                    };
                    let _ = raw.propose_conf_change(Vec::new(), cc.to_pb());
                    self.catching_up = None;
                    return self.after_propose();
                }
            }
            if cs.learners.contains(&id) {
                return;
            }
            self.catching_up = None;
        }
        // Voters short: add the lowest healthy bystander as a learner. A
        // voter only suspected still counts: it is replaced once it is
        // declared dead (and removed above), not while it may come back.
        let healthy = roster.healthy_count();
        let want = target_voters(self.cfg.voters, healthy);
        let voting = cs
            .voters
            .iter()
            .filter(|v| name(**v).is_some_and(|n| !roster.gone(&n)))
            .count();
        if voting >= want || !cs.learners.is_empty() {
            return;
        }
        let members: Vec<u64> = cs.voters.iter().chain(&cs.learners).copied().collect();
        let candidate = roster
            .lowest_healthy(members.len() + want + 4)
            .into_iter()
            .find(|n| !members.contains(&raft_id(n)));
        if let Some(n) = candidate {
            let id = raft_id(&n);
            self.names.insert(id, n.clone());
            let cc = ConfChange {
                changes: vec![Change::AddLearner(n)],
            };
            let _ = raw.propose_conf_change(Vec::new(), cc.to_pb());
            self.catching_up = Some((id, self.now));
            self.after_propose();
        }
    }

    /// The log index of the last configuration change applied.
    fn conf_index(&self, raw: &RawNode<MemStorage>) -> u64 {
        let store = &raw.raft.raft_log.store;
        let first = store.first_index().unwrap_or(1);
        let applied = raw.raft.raft_log.applied;
        if applied < first {
            return applied;
        }
        store
            .entries(
                first,
                applied + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .ok()
            .and_then(|es| {
                es.iter()
                    .rev()
                    .find(|e| e.get_entry_type() == eraftpb::EntryType::EntryConfChangeV2)
                    .map(|e| e.index)
            })
            .unwrap_or(first.saturating_sub(1))
    }

    fn after_propose(&mut self) {
        self.ready();
    }
}

/// A Raft log that starts with `voters` as a snapshot at `index` in `term`,
/// committed: how a plane is founded, and recovered.
fn founding_storage(voters: Vec<u64>, index: u64, term: u64) -> MemStorage {
    let storage = MemStorage::new();
    {
        let mut w = storage.wl();
        let mut snap = eraftpb::Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        *meta.mut_conf_state() = eraftpb::ConfState::from((voters, Vec::<u64>::new()));
        let _ = w.apply_snapshot(snap);
        w.set_hardstate(eraftpb::HardState {
            term,
            commit: index,
            ..Default::default()
        });
    }
    storage
}

/// How far past its own log a recovered plane starts: further than a
/// lost majority can have gone without this node (its log holds only
/// configuration changes and one entry per new leader).
const RECOVERY_INDEX_GAP: u64 = 1 << 20;

/// How far past its own term a recovered plane starts: a lost voter that
/// comes back and, with another, elects a leader before it hears that it
/// was left out does so in a term below the recovered holder's (never in
/// one already held), and the fences of that term lose to the holder's.
const RECOVERY_TERM_GAP: u64 = 1_000;

/// How far past its own term a holder follows a task's fence
/// ([`Control::step_past`]): far beyond any plane's term (a recovery adds
/// [`RECOVERY_TERM_GAP`]), far below the end of the range.
pub const MAX_TERM_STEP: u64 = 1 << 32;

/// The largest odd number of voters up to `wanted` that `healthy` members
/// can fill (an even count tolerates no more failures than one less).
fn target_voters(wanted: usize, healthy: usize) -> usize {
    let n = wanted.min(healthy).max(1);
    if n.is_multiple_of(2) {
        n - 1
    } else {
        n
    }
}

/// Forwards raft-rs's slog records to `tracing` (at debug: the control
/// plane reports what matters itself, at info).
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::warn!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(name: &str) -> Control {
        let me = NodeId::from(name);
        Control::new(
            me.clone(),
            Keys::sim(&me),
            ControlConfig::for_probe_interval(500, 3, 1),
            None,
            Rng::new(raft_id(&me)),
        )
    }

    fn heartbeat(from: &NodeId, to: &Control, plane: u64, term: u64, commit: u64) -> RaftMsg {
        RaftMsg {
            plane,
            kind: msg::Kind::Heartbeat,
            to: to.id,
            from: raft_id(from),
            term,
            log_term: 0,
            index: 0,
            entries: Vec::new(),
            commit,
            commit_term: 0,
            snapshot: None,
            request_snapshot: 0,
            reject: false,
            reject_hint: 0,
            context: Vec::new(),
            priority: 0,
        }
    }

    /// Measured with 100 processes starting at once: a node that had been
    /// a member of a plane, yielded to another and came back empty got a
    /// heartbeat committing index 4, and raft-rs's `commit_to` panicked,
    /// stopping the node.
    #[test]
    fn a_heartbeat_committing_past_the_log_is_refused_not_a_crash() {
        let leader = NodeId::from("a");
        // A bystander (no Raft state yet).
        let mut b = control("b");
        let r = b.receive(Mono(10), &leader, heartbeat(&leader, &b, 7, 3, 4));
        assert_eq!(r, Err(msg::MsgError::Malformed(LOG_BEHIND)));
        assert!(!b.is_member(), "no Raft state made up from a bad heartbeat");
        // A newly added member is sent commit 0 until it holds the log.
        b.receive(Mono(11), &leader, heartbeat(&leader, &b, 7, 3, 0))
            .expect("a new member's first heartbeat");
        assert_eq!(b.last_index(), Some(0));

        // A member holding the log up to its founding snapshot (index 1).
        let mut c = control("c");
        c.found(vec![leader.clone(), NodeId::from("c")]);
        let plane = c.plane();
        assert_eq!(c.last_index(), Some(1));
        let r = c.receive(Mono(10), &leader, heartbeat(&leader, &c, plane, 5, 9));
        assert_eq!(r, Err(msg::MsgError::Malformed(LOG_BEHIND)));
        assert!(c.is_member(), "still a member");
        c.receive(Mono(11), &leader, heartbeat(&leader, &c, plane, 5, 1))
            .expect("a heartbeat within the log");
        let answered = c.take_outputs().into_iter().any(|o| {
            matches!(o, ControlOut::Send { ref to, ref msg } if *to == leader && msg.kind == msg::Kind::HeartbeatResponse)
        });
        assert!(answered, "a sound heartbeat is answered");
    }

    struct AllHealthy(Vec<NodeId>);

    impl Roster for AllHealthy {
        fn healthy(&self, id: &NodeId) -> bool {
            self.0.contains(id)
        }
        fn gone(&self, id: &NodeId) -> bool {
            !self.0.contains(id)
        }
        fn lowest_healthy(&self, n: usize) -> Vec<NodeId> {
            let mut v = self.0.clone();
            v.sort();
            v.truncate(n);
            v
        }
        fn healthy_count(&self) -> usize {
            self.0.len()
        }
    }

    /// Delivers every message the controls want sent, until none is left.
    fn pump(nodes: &mut [Control], now: Mono) {
        loop {
            let mut sent = Vec::new();
            for c in nodes.iter_mut() {
                for o in c.take_outputs() {
                    if let ControlOut::Send { to, msg } = o {
                        sent.push((c.me.clone(), to, msg));
                    }
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, to, msg) in sent {
                if let Some(c) = nodes.iter_mut().find(|c| c.me == to) {
                    let _ = c.receive(now, &from, msg);
                }
            }
        }
    }

    /// A voter that lost the plane's log (it refuses the leader's
    /// heartbeats) is removed by the leader's autopilot, then added back
    /// from an empty log and caught up.
    #[test]
    fn a_voter_that_lost_the_log_is_replaced_and_caught_up_again() {
        let names: Vec<NodeId> = ["a", "b", "c"].iter().map(|n| NodeId::from(*n)).collect();
        let roster = AllHealthy(names.clone());
        let mut nodes: Vec<Control> = ["a", "b", "c"].iter().map(|n| control(n)).collect();
        for c in nodes.iter_mut() {
            c.found(names.clone());
        }
        let plane = nodes[0].plane();
        let tick = nodes[0].cfg.tick_ms;
        let mut now = Mono(0);
        let run = |nodes: &mut Vec<Control>, ms: u64, now: &mut Mono| {
            for _ in 0..ms / tick {
                *now = now.plus(tick);
                for c in nodes.iter_mut() {
                    c.tick(*now, &roster);
                }
                pump(nodes, *now);
            }
        };
        run(&mut nodes, 5_000, &mut now);
        let leader = nodes
            .iter()
            .position(|c| c.holds_lease())
            .expect("a leader");
        // A follower loses its Raft state and hears of the plane again.
        let lost = (leader + 1) % 3;
        let name = nodes[lost].me.clone();
        nodes[lost] = control(name.as_str());
        nodes[lost].plane = plane;
        run(&mut nodes, 3_000, &mut now);
        assert!(!nodes[lost].is_member(), "its heartbeats are refused");
        run(&mut nodes, 30_000, &mut now);
        let l = &nodes[leader];
        assert!(l.holds_lease(), "the leader kept the lease");
        assert!(
            nodes[lost].is_member(),
            "added back and given the log: {:?}",
            nodes[lost]
        );
        let voters = l.voters();
        assert!(voters.contains(&name), "a voter again: {voters:?}");
        assert_eq!(
            nodes[lost].last_index(),
            l.last_index(),
            "caught up with the leader"
        );
    }

    #[test]
    fn entries_whose_indices_overflow_are_malformed() {
        let mut m = heartbeat(&NodeId::from("a"), &control("b"), 7, 3, 0);
        m.kind = msg::Kind::Append;
        m.index = u64::MAX;
        m.entries = vec![Entry {
            index: 0,
            term: 1,
            payload: Payload::Empty,
        }];
        assert_eq!(m.to_pb().err(), Some(msg::MsgError::Malformed("entries")));
    }
}
