//! Membership records: what each node says about itself, replicated.
//!
//! A record is a last-writer-wins register whose marker is
//! `(incarnation, status rank, seq, writer)`. A node that comes back after
//! being declared dead bumps its incarnation and so wins over the verdict, as
//! in SWIM. Load figures ride along but are ephemeral: they are left out of
//! the convergence digest.

use crate::core::ids::{Millis, NodeId};
use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A member's declared state. `suspect` is never declared: it is a local
/// verdict of the failure detector, shown in views only.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Up and taking work.
    #[default]
    Alive,
    /// Up, finishing its work, taking no new tasks.
    Draining,
    /// Left gracefully.
    Left,
    /// Declared failed and removed from the federation.
    Dead,
}

impl MemberStatus {
    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Draining => "draining",
            MemberStatus::Left => "left",
            MemberStatus::Dead => "dead",
        }
    }
}

/// Resource usage a node reports about itself (ephemeral).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Tasks assigned to or running on the node.
    pub running: u32,
    /// CPU use, 0.0 to 1.0.
    pub cpu: f32,
    /// Memory use, 0.0 to 1.0.
    pub memory: f32,
    /// Disk use of the data dir's file system, 0.0 to 1.0.
    pub disk: f32,
}

/// What a node says about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Human-readable name.
    pub name: String,
    /// p2p addresses (multiaddrs as text).
    pub addrs: Vec<String>,
    /// API address, if it serves one.
    pub api: Option<String>,
    /// Capabilities (task kinds) the node runs.
    pub capabilities: Vec<String>,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
    /// How many tasks it runs at once.
    pub capacity: u32,
    /// Declared state.
    pub status: MemberStatus,
    /// Bumped each time the node (re)starts or refutes a verdict about it.
    pub incarnation: u64,
    /// Latest reported load.
    pub load: Load,
    /// When the record was written.
    pub updated_at: Millis,
}

/// Orders record versions: incarnation, then status, then a per-record
/// sequence number, then the writer (so markers are unique).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberMarker {
    /// The record's incarnation.
    pub incarnation: u64,
    /// The declared status (later states win within an incarnation).
    pub status: MemberStatus,
    /// One more than the sequence of the version it replaced.
    pub seq: u64,
    /// Who wrote this version.
    pub writer: NodeId,
}

/// The replicated membership entry of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberEntry {
    reg: LWWReg<MemberRecord, MemberMarker>,
}

impl MemberEntry {
    /// The current record.
    pub fn record(&self) -> &MemberRecord {
        &self.reg.val
    }

    /// The current marker.
    pub fn marker(&self) -> &MemberMarker {
        &self.reg.marker
    }

    /// Writes a new version of the record as `writer`.
    pub fn write(&mut self, record: MemberRecord, writer: &NodeId) {
        let marker = MemberMarker {
            incarnation: record.incarnation,
            status: record.status,
            seq: self.reg.marker.seq + 1,
            writer: writer.clone(),
        };
        self.reg.merge(LWWReg {
            val: record,
            marker,
        });
    }

    /// Merges another replica's entry.
    pub fn merge(&mut self, other: MemberEntry) {
        self.reg.merge(other.reg);
    }
}
