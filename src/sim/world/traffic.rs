//! Moving bytes: connections, frames, the gossipsub model, and what the
//! store makes durable.

use super::{SimEvent, World};
use crate::core::engine::{Input, MsgRef, SyncRef};
use crate::core::event::Event;
use crate::sim::net::Frame;
use std::rc::Rc;

impl World {
    /// A batch is durable: the store holds it, and the engine is told.
    pub(super) fn persisted(&mut self, i: usize, batch: crate::core::engine::BatchId) {
        let n = &mut self.nodes[i];
        let Some(p) = n.inflight.take_if(|p| p.id == batch) else {
            return;
        };
        for d in p.changed.iter().chain(&p.merged) {
            n.stored.apply(d.clone());
        }
        if let Some(c) = p.control {
            n.control = Some(*c);
        }
        self.input(i, Input::Persisted(batch));
    }

    /// One-way latency between two nodes, µs.
    pub(super) fn latency(&self, a: usize, b: usize) -> u64 {
        self.net
            .link(a, b)
            .map(|l| l.latency_us)
            .unwrap_or((self.scenario.network.latency_median_ms * 1_000.0) as u64)
            .max(1)
    }

    /// Sends a frame over the connection between `from` and `to`; it is
    /// lost if there is none, if a cut is between them, or (gossip only) by
    /// chance.
    pub(super) fn send(&mut self, from: usize, to: usize, frame: Frame) {
        let spec = &self.scenario.network;
        let (loss, dup, jitter) = (spec.loss, spec.duplicate, spec.jitter);
        let Some(link) = self.net.link(from, to) else {
            self.traffic.dropped += 1;
            return;
        };
        let class = frame.class();
        self.traffic.frames[class] += 1;
        self.traffic.bytes[class] += frame.size();
        if !self.net.reachable(from, to) {
            // A stream does not lose what it carries: across a cut it waits,
            // and arrives if the cut heals before the connection times out.
            self.held.entry((from, to)).or_default().push(frame);
            return;
        }
        if frame.is_gossip() && self.rng_net.chance(loss) {
            self.traffic.dropped += 1;
            return;
        }
        // A message the receiver already has is dropped there on arrival:
        // it is counted as sent, and spared the trip through the queue.
        if let Frame::Gossip { id, .. } = &frame {
            if self.nodes[to].gossip.has_seen(*id) {
                self.traffic.duplicates += 1;
                return;
            }
        }
        let mut lat = link.latency_us as f64;
        if jitter > 0.0 {
            lat *= 1.0 + jitter * (2.0 * self.rng_net.next_f64() - 1.0);
        }
        let lat = (lat as u64).max(1);
        if frame.is_gossip() && self.rng_net.chance(dup) {
            let copy = frame.clone();
            self.after(
                lat * 2,
                SimEvent::Deliver {
                    to,
                    from,
                    frame: copy,
                },
            );
        }
        self.after(lat, SimEvent::Deliver { to, from, frame });
    }

    /// Sends a failure-detection packet: it reaches a running node it is not
    /// cut off from, after the latency of their connection (or a typical
    /// one), unless lost by chance.
    pub(super) fn datagram(&mut self, from: usize, to: usize, frame: Frame) {
        let class = frame.class();
        self.traffic.frames[class] += 1;
        self.traffic.bytes[class] += frame.size();
        if !self.nodes[to].running()
            || !self.net.reachable(from, to)
            || self.rng_net.chance(self.scenario.network.loss)
        {
            self.traffic.dropped += 1;
            return;
        }
        let lat = self.latency(from, to);
        self.after(lat, SimEvent::Deliver { to, from, frame });
    }

    /// A frame arrives at a running, unpaused node.
    pub(super) fn deliver(&mut self, to: usize, from: usize, frame: Frame) {
        let from_id = self.nodes[from].id.clone();
        if let Frame::Probe(bytes) = frame {
            self.input(
                to,
                Input::Probe {
                    from: from_id,
                    bytes,
                },
            );
            return;
        }
        if self.net.link(from, to).is_none() {
            self.traffic.dropped += 1;
            return;
        }
        match frame {
            Frame::Gossip { id, bytes } => {
                if !self.nodes[to].gossip.see(id) {
                    self.traffic.duplicates += 1;
                    return;
                }
                let input = Input::Gossip {
                    from: from_id,
                    msg: MsgRef(id),
                    bytes: bytes.to_vec(),
                };
                self.input(to, input);
            }
            Frame::IHave(ids) => {
                let g = &self.nodes[to].gossip;
                let want: Vec<u64> = ids.into_iter().filter(|id| !g.has_seen(*id)).collect();
                if !want.is_empty() {
                    self.send(to, from, Frame::IWant(want));
                }
            }
            Frame::IWant(ids) => {
                for id in ids {
                    if let Some(bytes) = self.messages.get(&id).cloned() {
                        self.send(to, from, Frame::Gossip { id, bytes });
                    }
                }
            }
            Frame::SyncRequest { req, bytes } => {
                let input = Input::SyncRequest {
                    from: from_id,
                    id: SyncRef(req),
                    bytes,
                };
                self.input(to, input);
            }
            Frame::SyncResponse { req, bytes } => {
                if self.requests.remove(&req).is_some() {
                    self.input(
                        to,
                        Input::SyncResponse {
                            from: from_id,
                            bytes,
                        },
                    );
                }
            }
            Frame::Graft => {
                let d = self.scenario.network.mesh_degree;
                let g = &mut self.nodes[to].gossip;
                if g.mesh.len() < 2 * d {
                    g.mesh.insert(from);
                } else if !g.mesh.contains(&from) {
                    self.send(to, from, Frame::Prune);
                }
            }
            Frame::Prune => {
                self.nodes[to].gossip.mesh.remove(&from);
            }
            Frame::Probe(_) => unreachable!("handled above"),
        }
    }

    /// The engine of `i` publishes: gossipsub's flood publishing sends a
    /// node's own message to every connected peer of the topic (libp2p's
    /// default, which Shoal keeps); the mesh forwards it from there.
    pub(super) fn publish(&mut self, i: usize, bytes: Vec<u8>) {
        self.next_msg += 1;
        let id = self.next_msg;
        let bytes: Rc<[u8]> = bytes.into();
        self.messages.insert(id, bytes.clone());
        self.nodes[i].gossip.see(id);
        let targets: Vec<usize> = self.nodes[i].peers.iter().copied().collect();
        for t in targets {
            self.send(
                i,
                t,
                Frame::Gossip {
                    id,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Node `i` accepted message `id`: it forwards it to its mesh.
    pub(super) fn forward(&mut self, i: usize, id: u64, from: Option<usize>) {
        let Some(bytes) = self.messages.get(&id).cloned() else {
            return;
        };
        let mesh: Vec<usize> = self.nodes[i].gossip.mesh.iter().copied().collect();
        for t in mesh {
            if Some(t) != from {
                self.send(
                    i,
                    t,
                    Frame::Gossip {
                        id,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }

    /// Up to `k` of `from`, drawn from the network's stream.
    fn pick(&mut self, mut from: Vec<usize>, k: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(k.min(from.len()));
        while out.len() < k && !from.is_empty() {
            let j = self.rng_net.below(from.len());
            out.push(from.swap_remove(j));
        }
        out
    }

    /// Node `i`'s connected peers that are not in its mesh.
    fn outside_mesh(&self, i: usize) -> Vec<usize> {
        let n = &self.nodes[i];
        n.peers
            .iter()
            .filter(|p| !n.gossip.mesh.contains(p))
            .copied()
            .collect()
    }

    /// Gossipsub's heartbeat at node `i`: mesh upkeep and lazy gossip.
    pub(super) fn gossip_beat(&mut self, i: usize) {
        let spec = &self.scenario.network;
        let (d, lazy) = (spec.mesh_degree, spec.lazy_gossip);
        let beat = spec.gossip_heartbeat_ms * 1_000;
        let life = self.nodes[i].life;
        self.after(beat, SimEvent::GossipBeat { node: i, life });
        let n = &mut self.nodes[i];
        let peers = &n.peers;
        n.gossip.mesh.retain(|p| peers.contains(p));
        if n.gossip.mesh.len() + 1 < d {
            let free = self.outside_mesh(i);
            let want = d - self.nodes[i].gossip.mesh.len();
            for p in self.pick(free, want) {
                self.nodes[i].gossip.mesh.insert(p);
                self.send(i, p, Frame::Graft);
            }
        }
        let window = self.nodes[i].gossip.heartbeat();
        if lazy && !window.is_empty() {
            let others = self.outside_mesh(i);
            // Gossipsub sends IHAVE to max(D, a quarter of the peers outside
            // the mesh). All of them are counted; D of them, drawn at
            // random, are delivered (what the others would pull is what the
            // D pull: the model's one shortcut, for speed at scale).
            let all = d.max(others.len() / 4).min(others.len());
            let frame = Frame::IHave(window.clone());
            let extra = all.saturating_sub(d) as u64;
            self.traffic.frames[frame.class()] += extra;
            self.traffic.bytes[frame.class()] += extra * frame.size();
            for p in self.pick(others, d) {
                self.send(i, p, Frame::IHave(window.clone()));
            }
        }
    }

    /// `a` dials `b`: a connection forms after a round trip if both run and
    /// nothing cuts them apart.
    pub(super) fn dial(&mut self, a: usize, b: usize) {
        if a == b
            || !self.nodes[b].running()
            || self.net.link(a, b).is_some()
            || !self.net.both_ways(a, b)
        {
            return;
        }
        let rtt = 2 * self.latency(a, b);
        self.after(rtt, SimEvent::Connect { a, b });
    }

    /// A dial completes.
    pub(super) fn connected(&mut self, a: usize, b: usize) {
        if !self.nodes[a].running()
            || !self.nodes[b].running()
            || self.net.link(a, b).is_some()
            || !self.net.both_ways(a, b)
        {
            return;
        }
        let spec = &self.scenario.network;
        let (median, sigma) = (spec.latency_median_ms, spec.latency_sigma);
        self.net.connect(a, b, median, sigma, &mut self.rng_net);
        let d = self.scenario.network.mesh_degree;
        for (x, y) in [(a, b), (b, a)] {
            self.nodes[x].peers.insert(y);
            // A new peer of the topic joins the mesh at once while it is
            // below D-1 (gossipsub grafts on subscription); the GRAFT makes
            // the other side add it too, or prune it when its mesh is full.
            if self.nodes[x].gossip.mesh.len() + 1 < d && self.nodes[x].gossip.mesh.insert(y) {
                self.send(x, y, Frame::Graft);
            }
            let id = self.nodes[y].id.clone();
            self.input(x, Input::PeerUp(id));
        }
    }

    /// Frames held up by cuts that are gone go on their way, in order.
    pub(super) fn release_held(&mut self) {
        let ready: Vec<(usize, usize)> = self
            .held
            .keys()
            .filter(|&&(a, b)| self.net.reachable(a, b))
            .copied()
            .collect();
        for (from, to) in ready {
            let frames = self.held.remove(&(from, to)).unwrap_or_default();
            if self.net.link(from, to).is_none() {
                self.traffic.dropped += frames.len() as u64;
                continue;
            }
            let lat = self.latency(from, to);
            for frame in frames {
                self.after(lat, SimEvent::Deliver { to, from, frame });
            }
        }
    }

    /// Closes the connection between `a` and `b` (both sides are told);
    /// what it held is lost.
    pub(super) fn close(&mut self, a: usize, b: usize) {
        if !self.net.close(a, b) {
            return;
        }
        for k in [(a, b), (b, a)] {
            if let Some(lost) = self.held.remove(&k) {
                self.traffic.dropped += lost.len() as u64;
            }
        }
        for (x, y) in [(a, b), (b, a)] {
            self.nodes[x].gossip.mesh.remove(&y);
            if self.nodes[x].peers.remove(&y) {
                let id = self.nodes[y].id.clone();
                self.input(x, Input::PeerDown(id));
            }
        }
    }

    /// What a node's engine reported: convergence and detection are
    /// measured from these.
    pub(super) fn event(&mut self, i: usize, e: Event) {
        match e {
            Event::KvMerged { ns, key } => {
                let version = self.nodes[i].engine.as_ref().and_then(|e| {
                    let entry = e.replica().state().namespaces.get(&ns)?.entries.get(&key)?;
                    Some(entry.version().clone())
                });
                if let Some(v) = version {
                    let at = self.now;
                    self.check.merged(i, &ns, &key, &v, at);
                }
            }
            Event::MemberSuspect { node }
            | Event::MemberDead { node }
            | Event::MemberRemoved { node } => {
                // A member removed counts as dead (a node that missed the
                // verdict may learn of the tombstone first).
                let dead = self.nodes[i].engine.as_ref().is_some_and(|e| {
                    matches!(e.replica().member_status(&node), "dead" | "removed")
                });
                let Some(&j) = self.node_index.get(&node) else {
                    return;
                };
                let healthy = self.nodes[j].running()
                    && self.nodes[j].paused_until <= self.now
                    && self.net.both_ways(i, j);
                let at = self.now;
                self.check.verdict(i, j, dead, at, healthy);
            }
            Event::LeaseChanged { holder, term } => {
                let at = self.now;
                if holder.as_ref() == Some(&self.nodes[i].id) {
                    let plane = self.nodes[i]
                        .engine
                        .as_ref()
                        .map_or(0, |e| e.control_plane());
                    self.check.took_office(i, plane, term.0, at);
                }
                if let Some((since, old)) = self.failover {
                    let named: std::collections::BTreeSet<_> = self
                        .nodes
                        .iter()
                        .filter(|n| n.running())
                        .map(|n| n.engine.as_ref().and_then(|e| e.lease()))
                        .map(|l| l.filter(|l| l.term > old).map(|l| l.holder))
                        .collect();
                    if named.len() == 1 && named.iter().all(|h| h.is_some()) {
                        self.check.failover_ms.push((at - since) as f64 / 1_000.0);
                        self.failover = None;
                    }
                }
            }
            _ => {}
        }
    }
}
