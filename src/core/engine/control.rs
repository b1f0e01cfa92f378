//! The engine's side of the control plane (`core::lease`): its timer, its
//! datagrams and announcements, and its durable state in the open batch.

use super::{Engine, Output, TimerKind};
use crate::core::event::{AuditRecord, Event};
use crate::core::ids::{NodeId, Term};
use crate::core::lease::msg::RaftMsg;
use crate::core::lease::{ControlOut, LeaseClaim, Roster};
use crate::core::replica::Replica;
use crate::core::wire::{self, Datagram, Gossip};

/// Membership as the control plane needs it.
struct Members<'a>(&'a Replica);

impl Roster for Members<'_> {
    fn healthy(&self, id: &NodeId) -> bool {
        self.0.can_take_work(id)
    }

    fn gone(&self, id: &NodeId) -> bool {
        self.0
            .state()
            .members
            .get(id)
            .is_none_or(|m| m.record().status.is_gone())
    }

    fn lowest_healthy(&self, n: usize) -> Vec<NodeId> {
        self.0
            .state()
            .members
            .keys()
            .filter(|id| self.0.can_take_work(id))
            .take(n)
            .cloned()
            .collect()
    }

    fn healthy_count(&self) -> usize {
        self.0
            .state()
            .members
            .keys()
            .filter(|id| self.0.can_take_work(id))
            .count()
    }
}

impl Engine {
    /// The control plane's timer: a Raft tick for a member of a plane, a
    /// slower look (founding, joining) for the others.
    pub(super) fn control_tick(&mut self) {
        let now = self.clock.mono;
        self.control.tick(now, &Members(&self.replica));
        self.control_outputs();
        let holds = self.control.holds_lease();
        let term = Term(self.control.term());
        self.replica.set_lease(holds, term);
        if holds {
            let done = self.replica.migrate_orphans(self.clock.wall, term);
            self.replica.remove_departed(self.clock.wall);
            if let Some(above) = done.fenced_above {
                // Fenced by a plane that yielded, in a higher term: this
                // holder's term must pass it before it can move the task.
                if self.control.step_past(above.0) {
                    self.control_outputs();
                    let term = Term(self.control.term());
                    self.replica.set_lease(self.control.holds_lease(), term);
                }
            }
        }
        let every = if self.control.is_member() {
            self.control_cfg.tick_ms
        } else {
            self.control_cfg.tick_ms * 5
        };
        self.timers.arm(TimerKind::Control, now.plus(every));
    }

    /// This node leaves: if it holds the lease, it hands it to the voter
    /// most caught up (Raft's leadership transfer), so the plane has a new
    /// holder within a round trip instead of an election timeout.
    pub(super) fn control_hand_over(&mut self) {
        self.control.hand_over(&Members(&self.replica));
        self.control_outputs();
    }

    /// An operator's recovery from a lost majority; its durable state and
    /// audit record go into the open batch, ahead of the reply.
    pub(super) fn control_recover(&mut self) -> Result<(u64, Vec<NodeId>), String> {
        let result = self.control.recover(&Members(&self.replica));
        self.control_outputs();
        if result.is_ok() {
            let term = Term(self.control.term());
            self.replica.set_lease(self.control.holds_lease(), term);
        }
        result
    }

    /// A Raft message arrived in a datagram from `from` (verified by the
    /// runtime's seal and signature).
    pub(super) fn control_receive(&mut self, from: &NodeId, msg: RaftMsg) {
        let now = self.clock.mono;
        if let Err(e) = self.control.receive(now, from, msg) {
            tracing::debug!(peer = %from, error = %e, "refused a raft message");
            self.out
                .push(Output::Count(super::Counter::ProbeMalformed, 1));
        }
        self.control_outputs();
    }

    /// A lease announcement arrived by gossip, or relayed in a probe's ack
    /// (checked by the caller).
    pub(super) fn control_observe(&mut self, claim: LeaseClaim, relayed: bool) {
        let now = self.clock.mono;
        self.control.observe(now, claim, relayed);
        self.control_outputs();
    }

    /// Moves what the control plane asked for into the open batch: its
    /// state to store, and what must wait for it (messages, announcements,
    /// events, audit records).
    pub(super) fn control_outputs(&mut self) {
        for o in self.control.take_outputs() {
            match o {
                ControlOut::Persist(disk) => {
                    let open = &mut self.batches.open;
                    open.synced = true;
                    open.control = Some(Box::new(disk));
                }
                ControlOut::Send { to, msg } => {
                    let addrs = super::addrs_of(&self.replica, &to);
                    let bytes = wire::encode(&Datagram::Raft(Box::new(msg)));
                    self.batches
                        .open
                        .effects
                        .push(Output::Probe { to, addrs, bytes });
                }
                ControlOut::Announce(claim) => {
                    let bytes = wire::encode(&Gossip::Lease(claim));
                    self.batches.open.effects.push(Output::Publish(bytes));
                }
                ControlOut::Changed { holder, term } => {
                    if holder.as_ref() == Some(self.replica.node()) {
                        tracing::info!(term, "this node holds the lease");
                        self.control_audit(
                            "lease_acquired",
                            self.replica.node().to_string(),
                            format!("term {term}"),
                        );
                    }
                    self.batches
                        .open
                        .effects
                        .push(Output::Event(Event::LeaseChanged {
                            holder,
                            term: Term(term),
                        }));
                }
                ControlOut::Audit {
                    action,
                    subject,
                    detail,
                } => self.control_audit(action, subject, detail),
            }
        }
    }

    fn control_audit(&mut self, action: &str, subject: String, detail: String) {
        let open = &mut self.batches.open;
        open.synced = true;
        open.audit.push(AuditRecord {
            at: self.clock.wall,
            by: self.replica.node().clone(),
            action: action.into(),
            subject,
            detail,
        });
    }
}
