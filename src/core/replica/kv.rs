//! Knowledge-store operations of the engine.

use super::{Effect, Replica};
use crate::core::error::EngineError;
use crate::core::ids::Millis;
use crate::core::knowledge::{canonical_json, changed_since, KvEntry, Policy, Version};
use crate::core::state::{Delta, PolicyMarker};
use crdts::{CvRDT, LWWReg};
use std::sync::Arc;

/// The namespace Shoal keeps its own cluster settings in (the default
/// placement strategy). Users can read it; only the engine writes it.
pub const RESERVED_NS: &str = "_shoal";

/// Longest namespace or key, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// A resolved knowledge entry.
#[derive(Clone, Debug, PartialEq)]
pub struct KvItem {
    /// Namespace.
    pub ns: String,
    /// Key.
    pub key: String,
    /// The namespace's policy.
    pub policy: Policy,
    /// The resolved value (JSON text).
    pub value: String,
    /// Concurrent values (JSON text).
    pub siblings: Vec<String>,
    /// The entry's version vector.
    pub version: Version,
    /// The entry's blake3 digest (hex).
    pub digest: String,
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), EngineError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(EngineError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_LEN} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(EngineError::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// The largest value, task payload or result a client may write: half of
/// what one gossip message carries, so that an entry with its version,
/// siblings and history still travels (larger ones are refused with 413
/// rather than breaking replication and getting the honest sender
/// graylisted by its peers).
pub const MAX_VALUE_BYTES: usize = crate::core::wire::MAX_GOSSIP_BYTES / 2;

/// Refuses a `what` of `len` bytes over [`MAX_VALUE_BYTES`].
pub(crate) fn check_size(what: &str, len: usize) -> Result<(), EngineError> {
    if len > MAX_VALUE_BYTES {
        return Err(EngineError::TooLarge(format!(
            "{what} of {len} bytes (at most {MAX_VALUE_BYTES})"
        )));
    }
    Ok(())
}

fn check_writable(ns: &str, key: &str) -> Result<(), EngineError> {
    check_name("namespace", ns)?;
    check_name("key", key)?;
    if ns == RESERVED_NS {
        return Err(EngineError::Invalid(format!(
            "namespace `{RESERVED_NS}` is reserved for cluster settings"
        )));
    }
    Ok(())
}

impl Replica {
    /// The conflict policy of a namespace (lww when never set).
    pub fn policy(&self, ns: &str) -> Policy {
        self.state
            .namespaces
            .get(ns)
            .map(|n| n.policy())
            .unwrap_or_default()
    }

    /// Sets a namespace's conflict policy.
    pub fn set_policy(&mut self, now: Millis, ns: &str, policy: Policy) -> Result<(), EngineError> {
        check_writable(ns, "policy")?;
        let namespace = self.state.namespace_mut(ns);
        let marker: PolicyMarker = (
            now.max(namespace.policy.marker.0.plus(1)),
            self.cfg.node.clone(),
        );
        namespace.policy.merge(LWWReg {
            val: policy,
            marker,
        });
        let delta = Delta::Policy {
            ns: ns.to_owned(),
            policy: namespace.policy.clone(),
        };
        self.emit(Effect::Changed(delta));
        Ok(())
    }

    /// Writes a value. Returns the entry as written; resolve it with
    /// [`KvWrite::resolve`] (outside the engine's owner, as it hashes).
    pub fn kv_put(
        &mut self,
        now: Millis,
        ns: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<KvWrite, EngineError> {
        check_writable(ns, key)?;
        let value = canonical_json(value);
        check_size("value", value.len())?;
        self.write_entry(now, ns, key, |entry, policy, me, counter| {
            entry.put(policy, value, me, now, counter)
        })
    }

    /// Deletes a key. Deleting a key that does not exist is `NotFound`.
    pub fn kv_del(&mut self, now: Millis, ns: &str, key: &str) -> Result<(), EngineError> {
        check_writable(ns, key)?;
        self.kv_get(ns, key)?;
        let me = self.cfg.node.clone();
        let policy = self.policy(ns);
        let counter = self.next_counter(ns);
        let entry = self.entry_mut(ns, key);
        Arc::make_mut(entry).delete(policy, &me, now, counter);
        let entry = Arc::clone(entry);
        self.note_version(ns, counter);
        self.emit(Effect::Changed(Delta::Kv {
            ns: ns.to_owned(),
            key: key.to_owned(),
            entry,
        }));
        Ok(())
    }

    /// Sets the cluster's default placement strategy.
    pub fn set_default_strategy(
        &mut self,
        now: Millis,
        strategy: crate::core::placement::Strategy,
    ) {
        let value = serde_json::Value::String(strategy.as_str().to_owned());
        // The reserved namespace is written only here, so this cannot fail.
        let _ = self.write_entry(
            now,
            RESERVED_NS,
            "strategy",
            |entry, policy, me, counter| {
                entry.put(policy, canonical_json(&value), me, now, counter)
            },
        );
        self.pending_dirty = true;
    }

    fn next_counter(&self, ns: &str) -> u64 {
        self.state
            .namespaces
            .get(ns)
            .map(|n| n.clock.get(&self.cfg.node))
            .unwrap_or(0)
            + 1
    }

    fn note_version(&mut self, ns: &str, counter: u64) {
        if let Some(n) = self.state.namespaces.get_mut(ns) {
            crdts::CmRDT::apply(
                &mut n.clock,
                crdts::Dot::new(self.cfg.node.clone(), counter),
            );
        }
    }

    /// The entry of `key`, created if missing; `Arc::make_mut` on it copies
    /// the entry only while a commit or a gossip message still holds it.
    fn entry_mut(&mut self, ns: &str, key: &str) -> &mut Arc<KvEntry> {
        let namespace = self.state.namespace_mut(ns);
        namespace.entries.entry(key.to_owned()).or_default()
    }

    fn write_entry(
        &mut self,
        _now: Millis,
        ns: &str,
        key: &str,
        write: impl FnOnce(&mut KvEntry, Policy, &crate::core::ids::NodeId, u64),
    ) -> Result<KvWrite, EngineError> {
        let me = self.cfg.node.clone();
        let policy = self.policy(ns);
        let counter = self.next_counter(ns);
        let entry = self.entry_mut(ns, key);
        write(Arc::make_mut(entry), policy, &me, counter);
        let entry = Arc::clone(entry);
        self.note_version(ns, counter);
        self.emit(Effect::Changed(Delta::Kv {
            ns: ns.to_owned(),
            key: key.to_owned(),
            entry: Arc::clone(&entry),
        }));
        Ok(KvWrite { policy, entry })
    }

    /// Reads a key.
    pub fn kv_get(&self, ns: &str, key: &str) -> Result<KvItem, EngineError> {
        let not_found = || EngineError::NotFound {
            what: "key",
            id: format!("{ns}/{key}"),
        };
        let namespace = self.state.namespaces.get(ns).ok_or_else(not_found)?;
        let entry = namespace.entries.get(key).ok_or_else(not_found)?;
        resolve(ns, key, namespace.policy(), entry).ok_or_else(not_found)
    }

    /// Live entries of a namespace changed since `since` (all when `None`),
    /// one page of them in key order, with the namespace's version vector
    /// and digest.
    pub fn kv_list(&self, ns: &str, since: Option<&Version>, page: KvPage<'_>) -> KvListing {
        let Some(namespace) = self.state.namespaces.get(ns) else {
            return KvListing {
                items: Vec::new(),
                version: Version::new(),
                digest: hex::encode(crate::core::state::Namespace::default().digest().as_bytes()),
                next: None,
            };
        };
        let policy = namespace.policy();
        // One pass, keeping the first `limit` keys after the cursor in a
        // bounded heap: nothing else is collected, sorted or resolved.
        let mut kept: std::collections::BinaryHeap<&str> = std::collections::BinaryHeap::new();
        let mut more = false;
        for (key, entry) in &namespace.entries {
            if page.after.is_some_and(|a| key.as_str() <= a)
                || since.is_some_and(|s| !changed_since(entry.version(), s))
            {
                continue;
            }
            kept.push(key);
            if kept.len() > page.limit {
                kept.pop();
                more = true;
            }
        }
        let keys = kept.into_sorted_vec();
        let next = more.then(|| keys.last().map(|k| (*k).to_owned())).flatten();
        let items = keys
            .iter()
            .filter_map(|k| resolve(ns, k, policy, namespace.entries.get(*k)?))
            .collect();
        KvListing {
            items,
            version: namespace.clock.clone(),
            digest: hex::encode(namespace.digest().as_bytes()),
            next,
        }
    }

    /// Names of the namespaces, with their policies and entry counts.
    pub fn namespaces(&self) -> Vec<(String, Policy, usize)> {
        self.state
            .namespaces
            .iter()
            .map(|(name, n)| (name.clone(), n.policy(), n.entries.len()))
            .collect()
    }
}

/// Which page of a namespace [`Replica::kv_list`] lists.
#[derive(Clone, Copy, Debug)]
pub struct KvPage<'a> {
    /// Only keys after this one (the `next` of the page before).
    pub after: Option<&'a str>,
    /// At most this many keys.
    pub limit: usize,
}

impl KvPage<'_> {
    /// Every key.
    pub const ALL: KvPage<'static> = KvPage {
        after: None,
        limit: usize::MAX,
    };
}

/// One page of a namespace, in key order.
#[derive(Clone, Debug)]
pub struct KvListing {
    /// The entries (a deleted key is left out, so a page may hold fewer
    /// than its limit).
    pub items: Vec<KvItem>,
    /// The namespace's version when listed.
    pub version: Version,
    /// The namespace's digest (hex).
    pub digest: String,
    /// When more keys follow: the last key of this page, the cursor for
    /// the next.
    pub next: Option<String>,
}

/// An entry as a write left it.
#[derive(Clone, Debug)]
pub struct KvWrite {
    /// The namespace's policy.
    pub policy: Policy,
    /// The entry's new state.
    pub entry: Arc<KvEntry>,
}

impl KvWrite {
    /// Resolves the written entry for display (hashes it for its digest).
    pub fn resolve(&self, ns: &str, key: &str) -> Option<KvItem> {
        resolve(ns, key, self.policy, &self.entry)
    }
}

fn resolve(ns: &str, key: &str, policy: Policy, entry: &KvEntry) -> Option<KvItem> {
    let read = entry.read(policy)?;
    Some(KvItem {
        ns: ns.to_owned(),
        key: key.to_owned(),
        policy,
        value: read.value,
        siblings: read.siblings,
        version: entry.version().clone(),
        digest: hex::encode(entry.digest().as_bytes()),
    })
}
