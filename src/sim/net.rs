//! The simulated network: connections with their own latency, cuts
//! (partitions, one-way), loss and duplication, and gossipsub's mesh.
//!
//! Gossipsub is modelled because it lives outside the engine (the engine
//! only says `Publish`): each node keeps a mesh of up to 2D peers (grafting
//! up to D when below D-1 at every gossipsub heartbeat), a message goes to
//! the mesh hop by hop, each node forwards it once (duplicates are dropped
//! by message id, as gossipsub does), only after the engine accepted it;
//! with lazy gossip on, every heartbeat a node sends the ids of the messages
//! of its last three heartbeats to D peers outside its mesh, which pull
//! those they lack.

use crate::core::rng::Rng;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;

/// What travels between two nodes.
#[derive(Clone, Debug)]
pub enum Frame {
    /// A gossip message (publisher's id and bytes).
    Gossip {
        /// Message id.
        id: u64,
        /// The bytes.
        bytes: Rc<[u8]>,
    },
    /// Lazy gossip: ids the sender has.
    IHave(Vec<u64>),
    /// Lazy gossip: ids the sender wants.
    IWant(Vec<u64>),
    /// A sync request.
    SyncRequest {
        /// Request id.
        req: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A sync answer.
    SyncResponse {
        /// Request id.
        req: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Gossipsub GRAFT: the sender added the receiver to its mesh.
    Graft,
    /// Gossipsub PRUNE: the receiver's GRAFT was refused (the sender's mesh
    /// is full); it takes the sender out of its mesh again.
    Prune,
    /// A failure-detection packet. It needs no open connection (the node
    /// dials on demand and the connection is short-lived), so it is
    /// modelled as a datagram: lost by chance, dropped by a cut.
    Probe(Vec<u8>),
}

impl Frame {
    /// Bytes on the wire, roughly (payload plus a frame header).
    pub fn size(&self) -> u64 {
        const HEAD: u64 = 24;
        HEAD + match self {
            Frame::Gossip { bytes, .. } => bytes.len() as u64 + 64, // signature, ids
            Frame::IHave(ids) | Frame::IWant(ids) => 20 * ids.len() as u64,
            Frame::SyncRequest { bytes, .. } | Frame::SyncResponse { bytes, .. } => {
                bytes.len() as u64
            }
            Frame::Graft | Frame::Prune => 8,
            Frame::Probe(bytes) => bytes.len() as u64,
        }
    }

    /// Gossipsub traffic (subject to loss and duplication), as opposed to
    /// request-response on a reliable stream.
    pub fn is_gossip(&self) -> bool {
        matches!(
            self,
            Frame::Gossip { .. } | Frame::IHave(_) | Frame::IWant(_)
        )
    }

    /// The traffic class, for the report.
    pub fn class(&self) -> usize {
        match self {
            Frame::Gossip { .. } => 0,
            Frame::IHave(_) | Frame::IWant(_) | Frame::Graft | Frame::Prune => 1,
            Frame::SyncRequest { .. } | Frame::SyncResponse { .. } => 2,
            Frame::Probe(_) => 3,
        }
    }
}

/// A connection's lasting properties.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// One-way base latency, µs.
    pub latency_us: u64,
}

/// Connections and cuts.
#[derive(Debug, Default)]
pub struct Network {
    /// Open connections, by (lower, higher) node index. A hash map with a
    /// fixed hasher: looked up on every frame; what iterates it sorts.
    links: std::collections::HashMap<(usize, usize), Link, foldhash::fast::FixedState>,
    /// Each node's partition group (0 unless cut off).
    pub group: Vec<u32>,
    /// Nodes whose messages to nodes outside the flag are dropped.
    pub one_way: Vec<bool>,
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Network {
    /// Room for `n` nodes.
    pub fn grow(&mut self, n: usize) {
        self.group.resize(n, 0);
        self.one_way.resize(n, false);
    }

    /// True when a message from `a` reaches `b` (no cut between them).
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b] && (!self.one_way[a] || self.one_way[b])
    }

    /// True when both directions are open.
    pub fn both_ways(&self, a: usize, b: usize) -> bool {
        self.reachable(a, b) && self.reachable(b, a)
    }

    /// The connection between `a` and `b`, if any.
    pub fn link(&self, a: usize, b: usize) -> Option<Link> {
        self.links.get(&key(a, b)).copied()
    }

    /// Opens a connection with a latency drawn from a log-normal
    /// distribution around `median_ms`.
    pub fn connect(&mut self, a: usize, b: usize, median_ms: f64, sigma: f64, rng: &mut Rng) {
        let ms = median_ms * (sigma * rng.normal()).exp();
        let latency_us = (ms * 1_000.0).clamp(10.0, 10_000_000.0) as u64;
        self.links.insert(key(a, b), Link { latency_us });
    }

    /// Closes a connection; true when there was one.
    pub fn close(&mut self, a: usize, b: usize) -> bool {
        self.links.remove(&key(a, b)).is_some()
    }

    /// Every open connection, in order.
    pub fn links(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<(usize, usize)> = self.links.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Open connections.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }
}

/// One node's gossipsub state.
#[derive(Debug, Default)]
pub struct GossipState {
    /// Mesh peers.
    pub mesh: BTreeSet<usize>,
    /// Message ids seen (received or published).
    seen: std::collections::HashSet<u64, foldhash::fast::FixedState>,
    /// Message ids of the last heartbeats, for lazy gossip: (heartbeat, id).
    recent: VecDeque<(u64, u64)>,
    /// Heartbeats so far.
    beat: u64,
}

impl GossipState {
    /// Records a message id; false when it was seen before (a duplicate).
    pub fn see(&mut self, id: u64) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.recent.push_back((self.beat, id));
        true
    }

    /// True when `id` was seen.
    pub fn has_seen(&self, id: u64) -> bool {
        self.seen.contains(&id)
    }

    /// A gossipsub heartbeat: drops ids older than three heartbeats from
    /// the lazy-gossip window and returns the window.
    pub fn heartbeat(&mut self) -> Vec<u64> {
        self.beat += 1;
        while self.recent.front().is_some_and(|(b, _)| b + 3 <= self.beat) {
            self.recent.pop_front();
        }
        self.recent.iter().map(|(_, id)| *id).collect()
    }

    /// Forgets everything (a crash).
    pub fn reset(&mut self) {
        *self = GossipState::default();
    }
}
