//! The knowledge store's replicated model: one [`KvEntry`] per (namespace, key).
//!
//! Each entry is a small state-based CRDT built from `crdts` parts: an
//! `MVReg` for the `lww` and `mv` policies, an `Orswot` for the `set` policy,
//! and an entry version (`VClock`) that every local mutation advances. The
//! version exists because an `Orswot` remove does not advance the set's clock
//! (rust-crdt issue #160): without it a delete would be invisible to
//! `since` queries and to version comparisons. Entries are merged whole, so a
//! delta is simply the entry's new state; merging is commutative, associative
//! and idempotent and needs no causal delivery order.

use crate::core::canon;
use crate::core::ids::{Millis, NodeId};
use crdts::{CmRDT, CvRDT, MVReg, Orswot, VClock};
use serde::{Deserialize, Serialize};

/// A version vector: per node, how many mutations of an entry it made.
pub type Version = VClock<NodeId>;

/// A namespace's conflict policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Last writer wins: concurrent writes resolve to the one with the latest
    /// timestamp (ties broken by node id).
    #[default]
    Lww,
    /// Multi-value: concurrent writes are all kept as siblings until a write
    /// that has seen them.
    Mv,
    /// Set union: writes add members; concurrent adds are all kept.
    Set,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lww" => Ok(Policy::Lww),
            "mv" => Ok(Policy::Mv),
            "set" => Ok(Policy::Set),
            other => Err(format!(
                "unknown policy `{other}` (expected lww, mv or set)"
            )),
        }
    }
}

/// One write to a register: the value as canonical JSON text (`None` for a
/// delete), when and by whom it was written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Written {
    /// Canonical JSON text, or `None` for a tombstone.
    pub value: Option<String>,
    /// Wall-clock time of the write, used only to pick the `lww` winner.
    pub at: Millis,
    /// The writer.
    pub by: NodeId,
}

/// The replicated state of one knowledge key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KvEntry {
    reg: MVReg<Written, NodeId>,
    #[serde(serialize_with = "crate::core::canon::serialize_orswot")]
    set: Orswot<String, NodeId>,
    version: Version,
}

/// What a read of an entry returns (already resolved by policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRead {
    /// The resolved value as canonical JSON text.
    pub value: String,
    /// All live concurrent values (one for lww, several for mv conflicts,
    /// the members for set).
    pub siblings: Vec<String>,
}

impl KvEntry {
    /// The entry's version vector.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Advances the version to `counter` for `actor`: the namespace-wide
    /// count of `actor`'s writes, so that `since` queries over a namespace
    /// can compare one entry's version with the namespace's.
    fn bump(&mut self, actor: &NodeId, counter: u64) {
        let counter = counter.max(self.version.get(actor) + 1);
        self.version.apply(crdts::Dot::new(actor.clone(), counter));
    }

    /// Writes `value` (canonical JSON) under `policy` as `actor` at `now`;
    /// `counter` is the actor's next write counter in the namespace.
    pub fn put(
        &mut self,
        policy: Policy,
        value: String,
        actor: &NodeId,
        now: Millis,
        counter: u64,
    ) {
        match policy {
            Policy::Lww | Policy::Mv => self.write_reg(Some(value), actor, now),
            Policy::Set => {
                let members = set_members(&value);
                let ctx = self.set.read_ctx().derive_add_ctx(actor.clone());
                let op = self.set.add_all(members, ctx);
                self.set.apply(op);
            }
        }
        self.bump(actor, counter);
    }

    /// Deletes the key (a tombstone for registers, a remove of every observed
    /// member for sets).
    pub fn delete(&mut self, policy: Policy, actor: &NodeId, now: Millis, counter: u64) {
        match policy {
            Policy::Lww | Policy::Mv => self.write_reg(None, actor, now),
            Policy::Set => {
                let read = self.set.read();
                let (members, ctx) = read.split();
                let op = self.set.rm_all(members, ctx.derive_rm_ctx());
                self.set.apply(op);
            }
        }
        self.bump(actor, counter);
    }

    fn write_reg(&mut self, value: Option<String>, actor: &NodeId, now: Millis) {
        let ctx = self.reg.read_ctx().derive_add_ctx(actor.clone());
        let written = Written {
            value,
            at: now,
            by: actor.clone(),
        };
        let op = self.reg.write(written, ctx);
        self.reg.apply(op);
    }

    /// Merges another replica's state of the same key into this one.
    pub fn merge(&mut self, other: KvEntry) {
        self.reg.merge(other.reg);
        self.set.merge(other.set);
        self.version.merge(other.version);
    }

    /// Resolves the entry under `policy`; `None` when deleted or never written.
    pub fn read(&self, policy: Policy) -> Option<KvRead> {
        match policy {
            Policy::Lww | Policy::Mv => {
                let mut vals = self.reg.read().val;
                vals.sort_by(|a, b| (b.at, &b.by).cmp(&(a.at, &a.by)));
                let winner = vals.first()?.value.clone()?;
                let siblings = match policy {
                    Policy::Mv => {
                        let mut live: Vec<String> =
                            vals.into_iter().filter_map(|w| w.value).collect();
                        live.sort();
                        live.dedup();
                        live
                    }
                    _ => vec![winner.clone()],
                };
                Some(KvRead {
                    value: winner,
                    siblings,
                })
            }
            Policy::Set => {
                let mut members: Vec<String> = self.set.read().val.into_iter().collect();
                if members.is_empty() {
                    return None;
                }
                members.sort();
                let value = format!("[{}]", members.join(","));
                Some(KvRead {
                    value,
                    siblings: members,
                })
            }
        }
    }

    /// The blake3 digest of the entry's canonical form.
    pub fn digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        canon::hash_mvreg(&mut h, &self.reg);
        canon::hash_orswot(&mut h, &self.set);
        canon::hash_clock(&mut h, &self.version);
        h.finalize()
    }
}

/// The members a `set` write adds: each element of a JSON array, or the value
/// itself.
fn set_members(value: &str) -> Vec<String> {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Array(items)) => items.iter().map(canonical_json).collect(),
        _ => vec![value.to_owned()],
    }
}

/// Canonical JSON text of a value (object keys sorted, no whitespace).
pub fn canonical_json(value: &serde_json::Value) -> String {
    // serde_json's default map is ordered by key, so this is canonical.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// True when `version` has changes that `since` has not seen.
pub fn changed_since(version: &Version, since: &Version) -> bool {
    !matches!(
        version.partial_cmp(since),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::from(s)
    }

    #[test]
    fn lww_picks_latest_write_and_mv_keeps_concurrent_siblings() {
        let mut a = KvEntry::default();
        let mut b = KvEntry::default();
        a.put(Policy::Mv, "1".into(), &n("a"), Millis(10), 1);
        b.put(Policy::Mv, "2".into(), &n("b"), Millis(20), 1);
        a.merge(b.clone());
        let read = a.read(Policy::Mv).unwrap();
        assert_eq!(read.siblings, vec!["1".to_string(), "2".to_string()]);
        assert_eq!(a.read(Policy::Lww).unwrap().value, "2");
        // a write that has seen both collapses them
        a.put(Policy::Mv, "3".into(), &n("a"), Millis(5), 2);
        assert_eq!(a.read(Policy::Mv).unwrap().siblings, vec!["3".to_string()]);
    }

    #[test]
    fn set_union_and_delete_advances_the_version() {
        let mut a = KvEntry::default();
        let mut b = KvEntry::default();
        a.put(Policy::Set, "[\"x\"]".into(), &n("a"), Millis(1), 1);
        b.put(Policy::Set, "\"y\"".into(), &n("b"), Millis(1), 1);
        a.merge(b);
        assert_eq!(a.read(Policy::Set).unwrap().value, "[\"x\",\"y\"]");
        let before = a.version().clone();
        a.delete(Policy::Set, &n("a"), Millis(2), 2);
        assert!(a.read(Policy::Set).is_none());
        // rust-crdt #160: the Orswot remove alone would leave the clock as it was
        assert!(changed_since(a.version(), &before));
    }

    #[test]
    fn register_delete_is_a_tombstone_that_merges() {
        let mut a = KvEntry::default();
        a.put(Policy::Lww, "1".into(), &n("a"), Millis(1), 1);
        let mut b = a.clone();
        b.delete(Policy::Lww, &n("b"), Millis(2), 1);
        a.merge(b);
        assert!(a.read(Policy::Lww).is_none());
    }
}
