//! The replicated state of a node: membership, tasks and knowledge.
//!
//! Every change is a [`Delta`]: the new state of one member, task, knowledge
//! entry or namespace policy. Applying a delta merges it into the local entry
//! with that entry's CRDT merge, so deltas may arrive in any order, twice, or
//! be replaced by a later delta of the same entry, and replicas that have seen
//! the same deltas are equal. This is how Shoal works around the absence of
//! delta-state CRDTs in `crdts` (rust-crdt #50): the deltas are small state
//! fragments (one entry), never whole maps.

use crate::core::canon;
use crate::core::ids::{Millis, NodeId, TaskId};
use crate::core::knowledge::{KvEntry, Policy};
use crate::core::member::MemberEntry;
use crate::core::task::TaskEntry;
use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Marker of a namespace policy: when it was set and by whom.
pub type PolicyMarker = (Millis, NodeId);

/// A namespace's entries by key. A hash map: writes and merges look a key
/// up on every change, and hashing the key once is cheaper than the string
/// comparisons down a large B-tree. What needs key order (listings, the
/// namespace digest) sorts.
pub type Entries = HashMap<String, Arc<KvEntry>, foldhash::fast::FixedState>;

/// One namespace of the knowledge store.
#[derive(Clone, Debug, Default)]
pub struct Namespace {
    /// The conflict policy (last setter wins).
    pub policy: LWWReg<Policy, PolicyMarker>,
    /// Entries by key. Shared: a change hands the entry to the store and to
    /// gossip without copying it, and the next write to the key copies it
    /// only if they still hold it.
    pub entries: Entries,
    /// The merge of every entry's version: per node, its latest write
    /// counter in this namespace. Derived from `entries`.
    pub clock: crate::core::knowledge::Version,
}

impl Namespace {
    /// The namespace's conflict policy.
    pub fn policy(&self) -> Policy {
        self.policy.val
    }

    /// Merges an entry's new state in, keeping the namespace clock in step;
    /// returns the merged entry when it changed. An entry whose version is
    /// not newer than the local one's is already contained in it (every
    /// change advances the version, and a node's own state of an entry only
    /// grows), so it is not merged at all.
    pub fn merge_entry(&mut self, key: String, entry: Arc<KvEntry>) -> Option<&Arc<KvEntry>> {
        for (node, counter) in &entry.version().dots {
            if self.clock.get(node) < *counter {
                crdts::CmRDT::apply(&mut self.clock, crdts::Dot::new(node.clone(), *counter));
            }
        }
        match self.entries.entry(key) {
            // Merging into an empty entry gives the entry itself.
            std::collections::hash_map::Entry::Vacant(v) => Some(v.insert(entry)),
            std::collections::hash_map::Entry::Occupied(o) => {
                let local = o.into_mut();
                if entry.version() <= local.version() {
                    return None;
                }
                Arc::make_mut(local).merge(Arc::unwrap_or_clone(entry));
                Some(local)
            }
        }
    }

    /// The digest over the policy and every entry, in key order.
    pub fn digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        canon::hash_value(&mut h, &self.policy);
        let mut sorted: Vec<_> = self.entries.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (key, entry) in sorted {
            canon::hash_value(&mut h, key);
            h.update(entry.digest().as_bytes());
        }
        h.finalize()
    }
}

/// A change to the replicated state: the new state of one entry.
///
/// Deltas are moved through queues by value, so the large records are boxed:
/// a knowledge write (the common change) then moves 64 bytes, not 400. The
/// boxes do not change the encoding.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Delta {
    /// A membership record.
    Member(NodeId, Box<MemberEntry>),
    /// A task.
    Task(TaskId, Box<TaskEntry>),
    /// A knowledge entry.
    Kv {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// The entry's state.
        entry: Arc<KvEntry>,
    },
    /// A namespace's conflict policy.
    Policy {
        /// Namespace.
        ns: String,
        /// The policy register.
        policy: LWWReg<Policy, PolicyMarker>,
    },
}

/// Membership, tasks and knowledge.
#[derive(Clone, Debug, Default)]
pub struct ReplicatedState {
    /// Members by node id.
    pub members: BTreeMap<NodeId, MemberEntry>,
    /// Tasks by id.
    pub tasks: BTreeMap<TaskId, TaskEntry>,
    /// Knowledge namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
}

impl ReplicatedState {
    /// A namespace, created (with the default policy) if it does not exist;
    /// the name is copied only then.
    pub fn namespace_mut(&mut self, ns: &str) -> &mut Namespace {
        if !self.namespaces.contains_key(ns) {
            self.namespaces.insert(ns.to_owned(), Namespace::default());
        }
        self.namespaces.get_mut(ns).expect("inserted above")
    }

    /// Merges a delta into the state.
    pub fn apply(&mut self, delta: Delta) {
        match delta {
            Delta::Member(id, entry) => self.members.entry(id).or_default().merge(*entry),
            Delta::Task(id, entry) => match self.tasks.get_mut(&id) {
                Some(existing) => existing.merge(*entry),
                None => {
                    self.tasks.insert(id, *entry);
                }
            },
            Delta::Kv { ns, key, entry } => {
                self.namespaces
                    .entry(ns)
                    .or_default()
                    .merge_entry(key, entry);
            }
            Delta::Policy { ns, policy } => {
                self.namespaces.entry(ns).or_default().policy.merge(policy)
            }
        }
    }

    /// Every entry as a delta: what a replica with nothing needs.
    pub fn deltas(&self) -> Vec<Delta> {
        let mut out = Vec::new();
        for (id, m) in &self.members {
            out.push(Delta::Member(id.clone(), Box::new(m.clone())));
        }
        for (id, t) in &self.tasks {
            out.push(Delta::Task(id.clone(), Box::new(t.clone())));
        }
        for (ns, n) in &self.namespaces {
            out.push(Delta::Policy {
                ns: ns.clone(),
                policy: n.policy.clone(),
            });
            for (key, entry) in &n.entries {
                out.push(Delta::Kv {
                    ns: ns.clone(),
                    key: key.clone(),
                    entry: entry.clone(),
                });
            }
        }
        out
    }

    /// Merges a whole other replica into this one.
    pub fn merge(&mut self, other: &ReplicatedState) {
        for d in other.deltas() {
            self.apply(d);
        }
    }

    /// The convergence digest: tasks and knowledge (membership load figures
    /// are ephemeral and left out). Equal on two replicas exactly when their
    /// tasks and knowledge are equal, whatever order updates arrived in.
    /// Computed from scratch; the engine keeps it up to date incrementally
    /// (`Engine::digest`), with the same result.
    pub fn digest(&self) -> blake3::Hash {
        crate::core::sync::SyncIndex::new(self).digest(self)
    }

    /// A digest over the canonical form of every task and knowledge entry
    /// (registers, sets and versions), in key order. Slower than
    /// [`ReplicatedState::digest`], which trusts entry versions; tests use it
    /// to check the merge laws on the entries' full contents.
    pub fn deep_digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for (id, t) in &self.tasks {
            h.update(t.digest(id).as_bytes());
        }
        for (ns, n) in &self.namespaces {
            canon::hash_value(&mut h, ns);
            h.update(n.digest().as_bytes());
        }
        h.finalize()
    }
}
