//! Canonical forms for digests.
//!
//! Serialized `crdts` state is not canonical: equal states built in different
//! orders serialize differently (`MVReg` keeps a `Vec` in arrival order,
//! `Orswot` uses `HashMap`s). Each function here re-reads the state through a
//! mirror type with ordered collections and hashes that, so equal states give
//! equal digests whatever the order in which their updates arrived.

use crate::core::ids::NodeId;
use crdts::{MVReg, Orswot, VClock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct ClockMirror {
    dots: BTreeMap<NodeId, u64>,
}

#[derive(Deserialize)]
struct MvMirror<V> {
    vals: Vec<(ClockMirror, V)>,
}

#[derive(Deserialize, Serialize)]
struct OrswotMirror<M: Ord> {
    clock: ClockMirror,
    entries: BTreeMap<M, ClockMirror>,
    deferred: Vec<(ClockMirror, Vec<M>)>,
}

/// Feeds a length-prefixed postcard encoding of `value` to the hasher.
pub fn hash_value<T: Serialize>(h: &mut blake3::Hasher, value: &T) {
    let bytes = postcard::to_stdvec(value).unwrap_or_default();
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(&bytes);
}

fn mirror<T: Serialize, U: DeserializeOwned>(value: &T) -> Option<U> {
    let bytes = postcard::to_stdvec(value).ok()?;
    postcard::from_bytes(&bytes).ok()
}

/// Hashes a string, length first, without allocating.
pub fn hash_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// Hashes a vector clock (its dots are already ordered), without
/// allocating: the number of dots, then each node id (length-prefixed) and
/// counter.
pub fn hash_clock(h: &mut blake3::Hasher, clock: &VClock<NodeId>) {
    h.update(&(clock.dots.len() as u64).to_le_bytes());
    for (node, counter) in &clock.dots {
        hash_str(h, node.as_str());
        h.update(&counter.to_le_bytes());
    }
}

/// Hashes a multi-value register with its values sorted by (clock, value).
pub fn hash_mvreg<V>(h: &mut blake3::Hasher, reg: &MVReg<V, NodeId>)
where
    V: Serialize + DeserializeOwned + Ord + Clone + std::fmt::Debug,
{
    let mut vals = mirror::<_, MvMirror<V>>(reg)
        .map(|m| m.vals)
        .unwrap_or_default();
    vals.sort();
    hash_value(h, &vals);
}

/// Serializes an ORSWOT in canonical order (entries and deferred removes
/// sorted), in exactly the layout its own `Serialize` has, so what is on disk
/// and on the wire reads back either way. `crdts` keeps them in `HashMap`s
/// with a per-process random hasher: its own encoding differs from process
/// to process, which a replayed simulation must not.
pub fn serialize_orswot<S, M>(set: &Orswot<M, NodeId>, s: S) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    M: Serialize + DeserializeOwned + Ord + Clone + std::hash::Hash + std::fmt::Debug,
{
    let Some(mut m) = mirror::<_, OrswotMirror<M>>(set) else {
        return Err(serde::ser::Error::custom("an ORSWOT that does not re-read"));
    };
    for (_, ms) in &mut m.deferred {
        ms.sort();
    }
    m.deferred.sort();
    m.serialize(s)
}

/// Hashes an ORSWOT with entries and deferred removes in sorted order.
pub fn hash_orswot<M>(h: &mut blake3::Hasher, set: &Orswot<M, NodeId>)
where
    M: Serialize + DeserializeOwned + Ord + Clone + std::hash::Hash + std::fmt::Debug,
{
    let Some(m) = mirror::<_, OrswotMirror<M>>(set) else {
        return;
    };
    let mut deferred: Vec<(ClockMirror, Vec<M>)> = m
        .deferred
        .into_iter()
        .map(|(c, mut ms)| {
            ms.sort();
            (c, ms)
        })
        .collect();
    deferred.sort();
    hash_value(h, &m.clock);
    hash_value(h, &m.entries);
    hash_value(h, &deferred);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crdts::{CmRDT, CvRDT};

    fn digest_set(s: &Orswot<String, NodeId>) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        hash_orswot(&mut h, s);
        h.finalize()
    }

    #[test]
    fn equal_orswots_built_in_different_orders_hash_equal_though_bytes_differ() {
        let mut a: Orswot<String, NodeId> = Orswot::new();
        let mut b: Orswot<String, NodeId> = Orswot::new();
        let (na, nb) = (NodeId::from("a"), NodeId::from("b"));
        // two writers each add members one by one; every step is a snapshot
        let mut parts = Vec::new();
        let mut replicas = [Orswot::<String, NodeId>::new(), Orswot::new()];
        for i in 0..40 {
            let (r, actor) = if i % 2 == 0 {
                (&mut replicas[0], na.clone())
            } else {
                (&mut replicas[1], nb.clone())
            };
            let ctx = r.read_ctx().derive_add_ctx(actor);
            let op = r.add(format!("m{i}"), ctx);
            r.apply(op);
            parts.push(r.clone());
        }
        for p in parts.iter() {
            a.merge(p.clone());
        }
        for p in parts.iter().rev() {
            b.merge(p.clone());
        }
        assert_eq!(a, b);
        assert_eq!(digest_set(&a), digest_set(&b));
        let other = {
            let mut c = a.clone();
            let ctx = c.read_ctx().derive_add_ctx(na);
            c.apply(c.add("new".to_string(), ctx));
            c
        };
        assert_ne!(digest_set(&a), digest_set(&other));
        // The canonical encoding: equal sets, equal bytes, and it reads back.
        #[derive(Serialize)]
        struct Canonical(#[serde(serialize_with = "serialize_orswot")] Orswot<String, NodeId>);
        let canonical =
            |s: &Orswot<String, NodeId>| postcard::to_stdvec(&Canonical(s.clone())).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        let back: Orswot<String, NodeId> = postcard::from_bytes(&canonical(&a)).unwrap();
        assert_eq!(back, a);
    }
}
