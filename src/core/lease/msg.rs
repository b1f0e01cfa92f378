//! Raft messages in Shoal's own format.
//!
//! raft-rs speaks protobuf (`eraftpb`), and rust-protobuf 2.x can be
//! crashed by crafted input (RUSTSEC-2024-0437): no peer's bytes ever reach
//! its parser. A peer's message arrives as a [`RaftMsg`] (postcard, inside a
//! sealed and signed datagram), is checked here (only the kinds that cross
//! the network, entries whose payload Shoal understands) and converted to
//! the protobuf structs in memory. Configuration changes travel as
//! [`ConfChange`], never as protobuf bytes; the protobuf bytes raft-rs keeps
//! in a log entry are encoded locally from it.

use super::raft_id;
use crate::core::ids::NodeId;
use protobuf::Message as _;
use raft::eraftpb::{self, EntryType, MessageType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most entries one message may carry.
pub const MAX_ENTRIES: usize = 256;

/// The message kinds that cross the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Log entries for a follower.
    Append,
    /// A follower's answer to [`Kind::Append`].
    AppendResponse,
    /// A vote request.
    RequestVote,
    /// A vote.
    RequestVoteResponse,
    /// A pre-vote request (would you vote for me?).
    RequestPreVote,
    /// A pre-vote.
    RequestPreVoteResponse,
    /// A snapshot (the configuration) for a follower too far behind.
    Snapshot,
    /// The leader's heartbeat.
    Heartbeat,
    /// A follower's answer to a heartbeat.
    HeartbeatResponse,
    /// "Campaign now" (leadership transfer).
    TimeoutNow,
}

impl Kind {
    fn to_pb(self) -> MessageType {
        match self {
            Kind::Append => MessageType::MsgAppend,
            Kind::AppendResponse => MessageType::MsgAppendResponse,
            Kind::RequestVote => MessageType::MsgRequestVote,
            Kind::RequestVoteResponse => MessageType::MsgRequestVoteResponse,
            Kind::RequestPreVote => MessageType::MsgRequestPreVote,
            Kind::RequestPreVoteResponse => MessageType::MsgRequestPreVoteResponse,
            Kind::Snapshot => MessageType::MsgSnapshot,
            Kind::Heartbeat => MessageType::MsgHeartbeat,
            Kind::HeartbeatResponse => MessageType::MsgHeartbeatResponse,
            Kind::TimeoutNow => MessageType::MsgTimeoutNow,
        }
    }

    fn from_pb(t: MessageType) -> Option<Kind> {
        Some(match t {
            MessageType::MsgAppend => Kind::Append,
            MessageType::MsgAppendResponse => Kind::AppendResponse,
            MessageType::MsgRequestVote => Kind::RequestVote,
            MessageType::MsgRequestVoteResponse => Kind::RequestVoteResponse,
            MessageType::MsgRequestPreVote => Kind::RequestPreVote,
            MessageType::MsgRequestPreVoteResponse => Kind::RequestPreVoteResponse,
            MessageType::MsgSnapshot => Kind::Snapshot,
            MessageType::MsgHeartbeat => Kind::Heartbeat,
            MessageType::MsgHeartbeatResponse => Kind::HeartbeatResponse,
            MessageType::MsgTimeoutNow => Kind::TimeoutNow,
            _ => return None,
        })
    }
}

/// What a member does in a configuration change. Members are named by
/// node id (their Raft id is derived from it), so every member of a plane
/// learns whom each Raft id belongs to from the log itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Becomes a voter.
    AddVoter(NodeId),
    /// Becomes a learner (gets the log, does not vote).
    AddLearner(NodeId),
    /// Leaves the configuration.
    Remove(NodeId),
}

impl Change {
    /// The node it is about.
    pub fn node(&self) -> &NodeId {
        match self {
            Change::AddVoter(n) | Change::AddLearner(n) | Change::Remove(n) => n,
        }
    }
}

/// A configuration change (always entered and left automatically).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChange {
    /// The changes, applied together.
    pub changes: Vec<Change>,
}

impl ConfChange {
    /// The protobuf form raft-rs proposes and applies.
    pub fn to_pb(&self) -> eraftpb::ConfChangeV2 {
        let mut cc = eraftpb::ConfChangeV2::default();
        for c in &self.changes {
            let mut s = eraftpb::ConfChangeSingle::default();
            let t = match c {
                Change::AddVoter(_) => eraftpb::ConfChangeType::AddNode,
                Change::AddLearner(_) => eraftpb::ConfChangeType::AddLearnerNode,
                Change::Remove(_) => eraftpb::ConfChangeType::RemoveNode,
            };
            s.set_change_type(t);
            s.node_id = raft_id(c.node());
            cc.mut_changes().push(s);
        }
        cc.set_transition(eraftpb::ConfChangeTransition::Auto);
        cc
    }

    fn from_pb(cc: &eraftpb::ConfChangeV2, names: &BTreeMap<u64, NodeId>) -> Option<ConfChange> {
        let changes = cc
            .get_changes()
            .iter()
            .map(|s| {
                let n = names.get(&s.node_id)?.clone();
                Some(match s.get_change_type() {
                    eraftpb::ConfChangeType::AddNode => Change::AddVoter(n),
                    eraftpb::ConfChangeType::AddLearnerNode => Change::AddLearner(n),
                    eraftpb::ConfChangeType::RemoveNode => Change::Remove(n),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(ConfChange { changes })
    }
}

/// What a log entry holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Nothing (a new leader's first entry).
    Empty,
    /// A configuration change.
    Conf(ConfChange),
}

/// A log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term it was written in.
    pub term: u64,
    /// Its index.
    pub index: u64,
    /// What it holds.
    pub payload: Payload,
}

impl Entry {
    /// The protobuf entry raft-rs keeps (its conf-change bytes encoded
    /// here, from Shoal's own form).
    pub fn to_pb(&self) -> eraftpb::Entry {
        let mut e = eraftpb::Entry {
            term: self.term,
            index: self.index,
            ..Default::default()
        };
        match &self.payload {
            Payload::Empty => e.set_entry_type(EntryType::EntryNormal),
            Payload::Conf(cc) => {
                e.set_entry_type(EntryType::EntryConfChangeV2);
                e.data = cc.to_pb().write_to_bytes().unwrap_or_default().into();
            }
        }
        e
    }

    /// Shoal's form of an entry raft-rs holds. Its conf-change bytes were
    /// encoded by this process (from Shoal's form); `None` for anything else
    /// (nothing else is ever proposed) or a Raft id `names` lacks.
    pub fn from_pb(e: &eraftpb::Entry, names: &BTreeMap<u64, NodeId>) -> Option<Entry> {
        let payload = match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => Payload::Empty,
            EntryType::EntryConfChangeV2 => {
                let cc = eraftpb::ConfChangeV2::parse_from_bytes(&e.data).ok()?;
                Payload::Conf(ConfChange::from_pb(&cc, names)?)
            }
            _ => return None,
        };
        Some(Entry {
            term: e.term,
            index: e.index,
            payload,
        })
    }
}

/// A configuration: who votes and who learns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conf {
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration (during a joint change).
    pub voters_outgoing: Vec<u64>,
    /// Learners that become so once the joint change ends.
    pub learners_next: Vec<u64>,
    /// Whether the joint change is left automatically.
    pub auto_leave: bool,
}

impl Conf {
    /// The protobuf form.
    pub fn to_pb(&self) -> eraftpb::ConfState {
        eraftpb::ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
            ..Default::default()
        }
    }

    /// From the protobuf form.
    pub fn from_pb(cs: &eraftpb::ConfState) -> Conf {
        Conf {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }

    /// Every member of the configuration, voter or learner.
    pub fn all(&self) -> impl Iterator<Item = u64> + '_ {
        self.voters
            .iter()
            .chain(&self.learners)
            .chain(&self.voters_outgoing)
            .chain(&self.learners_next)
            .copied()
    }
}

/// A snapshot: the configuration at an index (the log holds nothing else).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last index it covers.
    pub index: u64,
    /// That index's term.
    pub term: u64,
    /// The configuration there.
    pub conf: Conf,
    /// The node ids of the configuration's members.
    pub names: Vec<NodeId>,
}

impl Snapshot {
    /// The protobuf form.
    pub fn to_pb(&self) -> eraftpb::Snapshot {
        let mut s = eraftpb::Snapshot::default();
        let meta = s.mut_metadata();
        meta.index = self.index;
        meta.term = self.term;
        meta.set_conf_state(self.conf.to_pb());
        s
    }

    fn from_pb(s: &eraftpb::Snapshot) -> Snapshot {
        let meta = s.get_metadata();
        Snapshot {
            index: meta.index,
            term: meta.term,
            conf: Conf::from_pb(meta.get_conf_state()),
            names: Vec::new(),
        }
    }
}

/// A Raft message between two members of one control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMsg {
    /// The control plane it belongs to.
    pub plane: u64,
    /// Its kind.
    pub kind: Kind,
    /// Receiver's Raft id.
    pub to: u64,
    /// Sender's Raft id.
    pub from: u64,
    /// Sender's term.
    pub term: u64,
    /// Term of the entry before `entries` (appends), or of the last entry
    /// (votes).
    pub log_term: u64,
    /// Index of the entry before `entries`, or the last index.
    pub index: u64,
    /// Entries.
    pub entries: Vec<Entry>,
    /// Leader's commit index.
    pub commit: u64,
    /// Term of the commit index.
    pub commit_term: u64,
    /// A snapshot, for [`Kind::Snapshot`].
    pub snapshot: Option<Snapshot>,
    /// A follower asks for a snapshot at this index.
    pub request_snapshot: u64,
    /// A refusal.
    pub reject: bool,
    /// Where the follower's log ends, on a refusal.
    pub reject_hint: u64,
    /// raft-rs's context (campaign type, read index context).
    pub context: Vec<u8>,
    /// Election priority.
    pub priority: i64,
}

/// Why a peer's Raft message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// Not a kind that crosses the network.
    #[error("message kind {0:?} does not cross the network")]
    Kind(MessageType),
    /// An entry raft-rs produced that Shoal cannot carry.
    #[error("an entry that is neither empty nor a configuration change")]
    Entry,
    /// Too many entries.
    #[error("{0} entries, over the limit")]
    TooManyEntries(usize),
    /// Inconsistent fields.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

impl RaftMsg {
    /// Shoal's form of a message raft-rs wants sent.
    pub fn from_pb(
        plane: u64,
        m: &eraftpb::Message,
        names: &BTreeMap<u64, NodeId>,
    ) -> Result<RaftMsg, MsgError> {
        let kind = Kind::from_pb(m.get_msg_type()).ok_or(MsgError::Kind(m.get_msg_type()))?;
        let entries = m
            .get_entries()
            .iter()
            .map(|e| Entry::from_pb(e, names))
            .collect::<Option<Vec<_>>>()
            .ok_or(MsgError::Entry)?;
        Ok(RaftMsg {
            plane,
            kind,
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries,
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot: m.snapshot.as_ref().map(|s| {
                let mut s = Snapshot::from_pb(s);
                s.names = s
                    .conf
                    .all()
                    .filter_map(|id| names.get(&id).cloned())
                    .collect();
                s
            }),
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context: m.context.to_vec(),
            priority: m.priority,
        })
    }

    /// Checks a peer's message and converts it for raft-rs.
    pub fn to_pb(&self) -> Result<eraftpb::Message, MsgError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(MsgError::TooManyEntries(self.entries.len()));
        }
        if self.to == 0 || self.from == 0 || self.from == self.to {
            return Err(MsgError::Malformed("sender or receiver"));
        }
        if (self.kind == Kind::Snapshot) != self.snapshot.is_some() {
            return Err(MsgError::Malformed("snapshot"));
        }
        if self.context.len() > 64 {
            return Err(MsgError::Malformed("context"));
        }
        if let Some(s) = &self.snapshot {
            let named: Vec<u64> = s.names.iter().map(raft_id).collect();
            if s.conf.all().any(|id| !named.contains(&id)) || s.names.len() > 64 {
                return Err(MsgError::Malformed("snapshot names"));
            }
        }
        // Entries must follow each other from `index + 1`, as raft-rs
        // assumes (it asserts on the storage it appends them to).
        for (i, e) in self.entries.iter().enumerate() {
            if self.index.checked_add(1 + i as u64) != Some(e.index) || e.term > self.term {
                return Err(MsgError::Malformed("entries"));
            }
        }
        let mut m = eraftpb::Message::default();
        m.set_msg_type(self.kind.to_pb());
        m.to = self.to;
        m.from = self.from;
        m.term = self.term;
        m.log_term = self.log_term;
        m.index = self.index;
        m.set_entries(self.entries.iter().map(Entry::to_pb).collect());
        m.commit = self.commit;
        m.commit_term = self.commit_term;
        if let Some(s) = &self.snapshot {
            m.set_snapshot(s.to_pb());
        }
        m.request_snapshot = self.request_snapshot;
        m.reject = self.reject;
        m.reject_hint = self.reject_hint;
        m.context = self.context.clone().into();
        m.priority = self.priority;
        Ok(m)
    }
}
