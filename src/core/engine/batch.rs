//! Group commit: what waits for one durable write.
//!
//! The engine gathers the changes its inputs produce into an open batch,
//! with the replies, gossip and side effects that must wait for them. At
//! most one batch is being persisted at a time; while it is, the next one
//! fills. A batch's replies, gossip and effects are released only once the
//! caller confirms it ([`super::Input::Persisted`]), in order, so a crash
//! before the confirmation loses exactly what a real crash loses: nothing
//! that was acknowledged.

use super::io::{Answer, BatchId, Output, Persist, ReqId};
use crate::core::error::EngineError;
use crate::core::event::AuditRecord;
use crate::core::lease::ControlDisk;
use crate::core::state::Delta;
use std::sync::Arc;

/// Changes and what waits for them.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// True when the batch holds local changes or audit records, which must
    /// be synced before they are acknowledged.
    pub(super) synced: bool,
    /// Local changes: stored, then published.
    pub(super) changed: Vec<Delta>,
    /// Entries merged from peers: stored only.
    pub(super) merged: Vec<Delta>,
    /// Published only, never stored (heartbeats).
    pub(super) gossip: Vec<Delta>,
    pub(super) audit: Vec<AuditRecord>,
    /// The control plane's state, when it changed (the latest wins).
    pub(super) control: Option<Box<ControlDisk>>,
    pub(super) replies: Vec<(ReqId, Result<Answer, EngineError>)>,
    /// Outputs released with the batch (handler starts, events).
    pub(super) effects: Vec<Output>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.changed.is_empty()
            && self.merged.is_empty()
            && self.gossip.is_empty()
            && self.audit.is_empty()
            && self.control.is_none()
            && self.replies.is_empty()
            && self.effects.is_empty()
    }

    fn stores_nothing(&self) -> bool {
        self.changed.is_empty()
            && self.merged.is_empty()
            && self.audit.is_empty()
            && self.control.is_none()
    }
}

/// What a confirmed batch releases.
#[derive(Debug, Default)]
pub(super) struct Released {
    /// Local changes to gossip.
    pub(super) changed: Option<Arc<Vec<Delta>>>,
    /// Heartbeats to gossip.
    pub(super) gossip: Vec<Delta>,
    /// Replies and effects, in order.
    pub(super) outputs: Vec<Output>,
}

/// A batch being persisted: what it releases once confirmed.
#[derive(Debug)]
struct Inflight {
    id: BatchId,
    changed: Arc<Vec<Delta>>,
    gossip: Vec<Delta>,
    replies: Vec<(ReqId, Result<Answer, EngineError>)>,
    effects: Vec<Output>,
}

/// The open batch and the one being persisted.
#[derive(Debug, Default)]
pub(super) struct Batches {
    pub(super) open: Batch,
    inflight: Option<Inflight>,
    next_id: u64,
}

impl Batches {
    /// When no batch is being persisted: a batch that stores nothing is
    /// released at once (returned), one that stores something is handed out
    /// as a [`Persist`] (pushed to `out`) and waits for its confirmation.
    pub(super) fn advance(&mut self, out: &mut Vec<Output>) -> Option<Released> {
        if self.inflight.is_some() || self.open.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.open);
        if batch.stores_nothing() {
            return Some(Released {
                changed: None,
                gossip: batch.gossip,
                outputs: release(batch.replies, batch.effects),
            });
        }
        self.next_id += 1;
        let id = BatchId(self.next_id);
        let changed = Arc::new(batch.changed);
        out.push(Output::Persist(Persist {
            id,
            changed: Arc::clone(&changed),
            merged: batch.merged,
            audit: batch.audit,
            synced: batch.synced,
            control: batch.control,
        }));
        self.inflight = Some(Inflight {
            id,
            changed,
            gossip: batch.gossip,
            replies: batch.replies,
            effects: batch.effects,
        });
        None
    }

    /// The batch `id` is durable: what it releases (nothing for an unknown
    /// or repeated id).
    pub(super) fn persisted(&mut self, id: BatchId) -> Option<Released> {
        if self.inflight.as_ref().map(|b| b.id) != Some(id) {
            return None;
        }
        let b = self.inflight.take()?;
        Some(Released {
            changed: Some(b.changed),
            gossip: b.gossip,
            outputs: release(b.replies, b.effects),
        })
    }

    /// The batch `id` failed: every reply waiting on it, and on the open
    /// batch built on it, fails; nothing else is released.
    pub(super) fn failed(&mut self, id: BatchId, reason: &str) -> Vec<Output> {
        if self.inflight.as_ref().map(|b| b.id) != Some(id) {
            return Vec::new();
        }
        let lost = self.inflight.take().map(|b| b.replies).unwrap_or_default();
        let open = std::mem::take(&mut self.open);
        lost.into_iter()
            .chain(open.replies)
            .map(|(req, r)| {
                let r = r.and(Err(EngineError::NotDurable(reason.to_owned())));
                Output::Reply(req, r)
            })
            .collect()
    }
}

fn release(
    replies: Vec<(ReqId, Result<Answer, EngineError>)>,
    effects: Vec<Output>,
) -> Vec<Output> {
    replies
        .into_iter()
        .map(|(req, r)| Output::Reply(req, r))
        .chain(effects)
        .collect()
}
