//! Anti-entropy sessions: comparing digests with a peer and pulling what
//! differs (see ARCHITECTURE.md, "Anti-entropy that follows the difference").
//!
//! A session starts when a peer connects (catch-up: rounds run back to back
//! until nothing differs) or on the anti-entropy timer (one round; the next
//! round takes the rest).

use super::io::{Counter, Output, SyncRef};
use super::Engine;
use crate::core::event::Event;
use crate::core::ids::NodeId;
use crate::core::state::Delta;
use crate::core::sync;
use crate::core::validate;
use crate::core::wire::{self, SyncRequest, SyncResponse};

/// Back-to-back anti-entropy rounds with one peer that bring nothing before
/// the session waits for the next periodic round.
const MAX_STALLED_ROUNDS: u32 = 3;

/// Keeps a sync answer under the size limit; what does not fit is sent in a
/// later round (the answer says there is more).
pub(super) fn fit(mut deltas: Vec<Delta>) -> SyncResponse {
    let mut size = 64;
    let mut keep = 0;
    for d in &deltas {
        size += postcard::experimental::serialized_size(d).unwrap_or(0) + 8;
        if size > wire::MAX_SYNC_BYTES {
            break;
        }
        keep += 1;
    }
    let more = keep < deltas.len();
    deltas.truncate(keep);
    SyncResponse::Deltas { deltas, more }
}

impl Engine {
    /// Starts a round with `peer`: ask for its bucket digests.
    pub(super) fn ask_summary(&mut self, peer: NodeId) {
        self.send(peer, &SyncRequest::Summary);
    }

    fn send(&mut self, to: NodeId, req: &SyncRequest) {
        let bytes = wire::encode(req);
        self.out.push(Output::Send { to, bytes });
    }

    /// Answers a peer's sync request.
    pub(super) fn on_sync_request(&mut self, from: NodeId, id: SyncRef, bytes: &[u8]) {
        let answer = match wire::decode::<SyncRequest>(bytes, wire::MAX_SYNC_BYTES) {
            Ok(SyncRequest::Summary) => SyncResponse::Summary(self.replica.sync_summary()),
            Ok(SyncRequest::Leaves(buckets)) => {
                SyncResponse::Leaves(self.replica.sync_leaves(&buckets))
            }
            Ok(SyncRequest::Diff { cells, have }) => fit(self.replica.sync_missing(&cells, &have)),
            Err(e) => {
                self.out.push(Output::Count(Counter::SyncMalformed, 1));
                SyncResponse::Refused(e.to_string())
            }
        };
        let bytes = wire::encode(&answer);
        self.out.push(Output::Respond {
            to: from,
            id,
            bytes,
        });
    }

    /// Takes a peer's answer to our sync request one step further.
    pub(super) fn on_sync_response(&mut self, peer: NodeId, bytes: &[u8]) {
        let from = peer.clone();
        let catching_up = self.catching_up.contains(&peer);
        match wire::decode::<SyncResponse>(bytes, wire::MAX_SYNC_BYTES) {
            Ok(SyncResponse::Summary(theirs)) => self.on_summary(peer, &theirs),
            Ok(SyncResponse::Leaves(theirs)) => self.on_leaves(peer, &theirs),
            Ok(SyncResponse::Deltas { deltas, more }) => self.on_deltas(peer, deltas, more),
            Ok(SyncResponse::Refused(_)) => return self.end_session(&peer),
            Err(_) => {
                self.out.push(Output::Count(Counter::SyncMalformed, 1));
                return self.end_session(&peer);
            }
        }
        if catching_up && !self.catching_up.contains(&from) && !self.announced {
            // The first catch-up after starting is over: by now the peer's
            // gossip subscription has arrived too, so this node's record
            // goes out again. The one it published on starting found
            // nobody subscribed, and only its peers' anti-entropy would
            // pass it on (a round every few seconds, one peer at a time).
            self.announced = true;
            tracing::info!(
                peer = %from,
                members = self.replica.state().members.len(),
                "first catch-up over: announcing this node, dialing members"
            );
            self.replica.announce();
            // The members it learned are dialed now, not at the next
            // redial tick (up to 2 s away): until a joiner has peers of
            // its own, its bootstrap is its only way in and out, and one
            // bootstrap that a hundred joiners dial at once is slow to
            // answer each.
            self.top_up(false);
        }
        if catching_up
            && !self.catching_up.contains(&from)
            && self.lease().is_some_and(|l| l.holder == from)
        {
            // Caught up with the lease holder: tasks held since a restart
            // may start (see `Replica::caught_up`).
            self.replica.caught_up(self.clock.wall);
        }
    }

    /// The exchange with `peer` is over; a later round or reconnect starts
    /// anew.
    pub(super) fn end_session(&mut self, peer: &NodeId) {
        self.catching_up.remove(peer);
        self.resync.remove(peer);
        self.stalled.remove(peer);
    }

    fn on_summary(&mut self, peer: NodeId, theirs: &[[u8; 8]]) {
        // Catching up after connecting, every bucket that differs is pulled
        // in one round: a fresh joiner differs almost everywhere, and its
        // bootstrap, which every joiner asks at once, answers three
        // requests sooner than six. A periodic round takes at most
        // `MAX_PULL` and leaves the rest to the next round (under load every
        // bucket differs for a moment, and rounds must not run back to
        // back).
        let cap = if self.catching_up.contains(&peer) {
            sync::BUCKETS
        } else {
            sync::MAX_PULL
        };
        let diff = sync::differing(&self.replica.sync_summary(), theirs, cap);
        if diff.is_empty() {
            self.catching_up.remove(&peer);
            return;
        }
        self.send(peer, &SyncRequest::Leaves(diff));
    }

    fn on_leaves(&mut self, peer: NodeId, theirs: &[(u16, Vec<[u8; 8]>)]) {
        let cells = self.replica.sync_differing_cells(theirs);
        if cells.is_empty() {
            // What differed is no longer different (it was in flight).
            if self.resync.remove(&peer) {
                self.ask_summary(peer);
            } else {
                self.catching_up.remove(&peer);
            }
            return;
        }
        let (taken, have) = self.replica.sync_have(&cells);
        if taken.len() < cells.len() && self.catching_up.contains(&peer) {
            self.resync.insert(peer.clone());
        }
        self.send(peer, &SyncRequest::Diff { cells: taken, have });
    }

    fn on_deltas(&mut self, peer: NodeId, deltas: Vec<Delta>, more: bool) {
        self.out
            .push(Output::Count(Counter::SyncEntries, deltas.len() as u64));
        let wall = self.clock.wall;
        let mut changed = 0usize;
        let mut refused = 0u64;
        for d in deltas {
            if validate::remote(&d, self.replica.keys(), self.replica.state()).is_err() {
                refused += 1;
                continue;
            }
            changed += usize::from(self.replica.apply_remote(wall, d));
        }
        if refused > 0 {
            self.out.push(Output::Count(Counter::DeltaRefused, refused));
        }
        // Back-to-back rounds go on only while they bring something: a peer
        // whose answers change nothing (a bug, or state that is newer here)
        // gets a few tries, then waits for the next periodic round.
        let stalled = if changed == 0 {
            let n = self.stalled.entry(peer.clone()).or_default();
            *n += 1;
            *n
        } else {
            self.stalled.remove(&peer);
            0
        };
        let again = (self.resync.remove(&peer) || more) && stalled < MAX_STALLED_ROUNDS;
        let initial = if again {
            self.catching_up.contains(&peer)
        } else {
            self.stalled.remove(&peer);
            self.catching_up.remove(&peer)
        };
        if changed > 0 && !initial {
            // Entries that gossip had not brought: lost, or still in flight
            // when the summaries were taken.
            self.out.push(Output::Count(Counter::DivergenceRepaired, 1));
            self.out.push(Output::Event(Event::Alert {
                kind: "divergence_repaired".into(),
                message: format!(
                    "anti-entropy with peer {peer} brought {changed} entr{} that gossip had not",
                    if changed == 1 { "y" } else { "ies" }
                ),
            }));
        }
        if again {
            self.ask_summary(peer);
        }
    }

    /// An anti-entropy round with a peer drawn from the engine's RNG.
    pub(super) fn anti_entropy_round(&mut self) {
        if self.peers.is_empty() {
            return;
        }
        let i = (self.rng.next_u64() % self.peers.len() as u64) as usize;
        if let Some(peer) = self.peers.iter().nth(i).cloned() {
            self.ask_summary(peer);
        }
    }
}
