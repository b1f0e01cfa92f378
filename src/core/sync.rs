//! Anti-entropy: bucketed digests of the replicated state, so two nodes can
//! find the parts where they differ and exchange only those.
//!
//! Every entry (member, task, knowledge entry, namespace policy) falls in one
//! of [`BUCKETS`] buckets by a hash of its key. A summary is one digest per
//! bucket; a node pulls the buckets whose digests differ and merges what it
//! gets. Merging is idempotent, so pulling a bucket that only looked different
//! (for example because the peer's heartbeat moved on) is harmless.

use crate::core::canon;
use crate::core::state::{Delta, ReplicatedState};

/// Number of buckets.
pub const BUCKETS: usize = 256;
/// Most buckets asked for in one pull.
pub const MAX_PULL: usize = 64;

fn bucket(kind: u8, parts: &[&str]) -> usize {
    let mut h = blake3::Hasher::new();
    h.update(&[kind]);
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    h.finalize().as_bytes()[0] as usize % BUCKETS
}

fn delta_bucket(d: &Delta) -> usize {
    match d {
        Delta::Member(id, _) => bucket(b'm', &[id.as_str()]),
        Delta::Task(id, _) => bucket(b't', &[id.as_str()]),
        Delta::Kv { ns, key, .. } => bucket(b'k', &[ns, key]),
        Delta::Policy { ns, .. } => bucket(b'p', &[ns]),
    }
}

fn delta_digest(d: &Delta) -> blake3::Hash {
    match d {
        Delta::Task(id, t) => t.digest(id),
        Delta::Kv { ns, key, entry } => {
            let mut h = blake3::Hasher::new();
            canon::hash_value(&mut h, ns);
            canon::hash_value(&mut h, key);
            h.update(entry.digest().as_bytes());
            h.finalize()
        }
        Delta::Member(id, m) => {
            // Only the stable part: heartbeats and load figures change all
            // the time and spread by gossip; they must not look like divergence.
            let r = m.record();
            let mut h = blake3::Hasher::new();
            canon::hash_value(&mut h, id);
            canon::hash_value(
                &mut h,
                &(
                    m.marker().incarnation,
                    r.status,
                    &r.name,
                    &r.addrs,
                    &r.capabilities,
                    &r.tags,
                    r.capacity,
                ),
            );
            h.finalize()
        }
        Delta::Policy { .. } => {
            let mut h = blake3::Hasher::new();
            canon::hash_value(&mut h, d);
            h.finalize()
        }
    }
}

/// One digest per bucket.
pub fn summary(state: &ReplicatedState) -> Vec<[u8; 8]> {
    let mut hashers: Vec<blake3::Hasher> = (0..BUCKETS).map(|_| blake3::Hasher::new()).collect();
    // deltas() walks the state in a fixed order, so each bucket's hasher sees
    // its entries in the same order on every node.
    for d in state.deltas() {
        let b = delta_bucket(&d);
        hashers[b].update(delta_digest(&d).as_bytes());
    }
    hashers
        .into_iter()
        .map(|h| {
            let mut out = [0u8; 8];
            out.copy_from_slice(&h.finalize().as_bytes()[..8]);
            out
        })
        .collect()
}

/// The buckets where `theirs` differs from `ours` (at most [`MAX_PULL`]).
/// A summary of the wrong length is treated as differing everywhere.
pub fn differing(ours: &[[u8; 8]], theirs: &[[u8; 8]]) -> Vec<u16> {
    if theirs.len() != ours.len() {
        return (0..BUCKETS.min(MAX_PULL) as u16).collect();
    }
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i as u16)
        .take(MAX_PULL)
        .collect()
}

/// Every entry in the given buckets.
pub fn entries_in(state: &ReplicatedState, buckets: &[u16]) -> Vec<Delta> {
    let mut wanted = [false; BUCKETS];
    for b in buckets {
        if let Some(w) = wanted.get_mut(*b as usize) {
            *w = true;
        }
    }
    state
        .deltas()
        .into_iter()
        .filter(|d| wanted[delta_bucket(d)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{Millis, NodeId};
    use crate::core::knowledge::{KvEntry, Policy};

    fn kv(state: &mut ReplicatedState, key: &str, v: &str, node: &str) {
        let mut e = KvEntry::default();
        e.put(Policy::Lww, v.into(), &NodeId::from(node), Millis(1), 1);
        state.apply(Delta::Kv {
            ns: "n".into(),
            key: key.into(),
            entry: e,
        });
    }

    #[test]
    fn pulling_differing_buckets_repairs_a_replica() {
        let mut a = ReplicatedState::default();
        let mut b = ReplicatedState::default();
        for i in 0..500 {
            kv(&mut a, &format!("k{i}"), "1", "a");
            kv(&mut b, &format!("k{i}"), "1", "a");
        }
        kv(&mut a, "only-a", "2", "a");
        kv(&mut b, "k7", "3", "b");
        let diff = differing(&summary(&b), &summary(&a));
        assert!(!diff.is_empty() && diff.len() <= 2, "{diff:?}");
        let pulled = entries_in(&a, &diff);
        assert!(pulled.len() < 20, "only the differing buckets are sent");
        for d in pulled {
            b.apply(d);
        }
        // b now has everything a has; a pulls from b the same way
        for d in entries_in(&b, &differing(&summary(&a), &summary(&b))) {
            a.apply(d);
        }
        assert_eq!(a.digest(), b.digest());
        assert!(differing(&summary(&a), &summary(&b)).is_empty());
    }
}
