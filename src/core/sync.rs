//! Anti-entropy: bucketed digests of the replicated state, kept up to date
//! as the state changes, so two nodes can find where they differ and
//! exchange only the entries that differ.
//!
//! Every entry (member, task, knowledge entry, namespace policy) has a 64-bit
//! id, a hash of its key, and falls in one of [`BUCKETS`] buckets by that id.
//! Its digest is a hash of its canonical form, with two exceptions. For
//! members, only the stable part counts: heartbeats and load figures change
//! all the time and spread by gossip; they must not look like divergence.
//! For knowledge entries, the digest covers the key and the entry's version
//! vector only: every change to an entry advances its version, and each
//! node's own state of an entry only grows, so two replicas whose versions
//! of an entry are equal have merged the same writes and hold equal entries
//! (tests/crdt_laws.rs checks this on random histories). Hashing a version
//! costs a fraction of hashing the entry's registers. A bucket's digest is the XOR
//! of its entries' digests, so it does not depend on the order entries were
//! added in and can be updated one entry at a time.
//!
//! Each bucket is split again into [`LEAVES`] leaves by the next byte of the
//! id; a (bucket, leaf) pair is a *cell*. Repair takes three round trips,
//! a two-level hash tree walked on demand:
//!
//! 1. a node asks a peer for its bucket digests (a summary);
//! 2. for the buckets that differ, it asks for their leaf digests (computed
//!    on the fly from the cached entry digests, no hashing);
//! 3. for the cells that differ, it sends the (id, digest) pair of every
//!    entry it holds there, and the peer answers with its entries in those
//!    cells that the node lacks or holds in another state.
//!
//! Under load every bucket differs for a moment (deltas in flight), but only
//! a few cells do, so what a round costs follows the number of entries that
//! differ, not the size of the state. Merging is idempotent, so an entry that
//! only looked different (it changed while the messages were in flight) does
//! no harm.
//!
//! The [`SyncIndex`] is lazy: a change only marks the entry, and its digest
//! is taken again the next time a summary, a diff or the state digest is
//! asked for. A write therefore costs no hashing of the entry's value.

use crate::core::canon;
use crate::core::ids::{NodeId, TaskId};
use crate::core::state::{Delta, ReplicatedState};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Entry ids are uniform hashes already: a map keyed by them needs no
/// further hashing, only the bits that do not name the cell moved low.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.rotate_right(16);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Number of buckets.
pub const BUCKETS: usize = 256;
/// Leaves per bucket.
pub const LEAVES: usize = 256;
/// Most buckets whose leaves a periodic anti-entropy round asks for (a
/// catch-up after a connect asks for every bucket that differs).
pub const MAX_PULL: usize = 64;
/// Most (id, digest) pairs sent in one diff request (about 20 bytes each
/// encoded, so a request stays well under the sync message limit).
pub const MAX_HAVE: usize = 400_000;

/// Names one entry of the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryRef {
    /// A member record.
    Member(NodeId),
    /// A task.
    Task(TaskId),
    /// A knowledge entry.
    Kv {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// A namespace's conflict policy.
    Policy(String),
}

fn id_of(kind: u8, parts: &[&str]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&[kind]);
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

/// A knowledge entry's sync digest: its key and version vector.
fn kv_digest(ns: &str, key: &str, entry: &crate::core::knowledge::KvEntry) -> u128 {
    let mut h = blake3::Hasher::new();
    h.update(b"k");
    canon::hash_str(&mut h, ns);
    canon::hash_str(&mut h, key);
    canon::hash_clock(&mut h, entry.version());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    u128::from_le_bytes(out)
}

/// The bucket of an entry id.
pub fn bucket_of(id: u64) -> usize {
    (id % BUCKETS as u64) as usize
}

/// The cell of an entry id: the bucket in the low byte, the leaf in the
/// high byte.
pub fn cell_of(id: u64) -> u16 {
    (id & 0xFFFF) as u16
}

fn short(d: u128) -> [u8; 8] {
    (d as u64).to_le_bytes()
}

impl EntryRef {
    /// The entry a delta changes.
    pub fn of(d: &Delta) -> EntryRef {
        match d {
            Delta::Member(id, _) => EntryRef::Member(id.clone()),
            Delta::Task(id, _) => EntryRef::Task(id.clone()),
            Delta::Kv { ns, key, .. } => EntryRef::Kv {
                ns: ns.clone(),
                key: key.clone(),
            },
            Delta::Policy { ns, .. } => EntryRef::Policy(ns.clone()),
        }
    }

    /// The entry's 64-bit id: the same on every node.
    pub fn id(&self) -> u64 {
        match self {
            EntryRef::Member(id) => id_of(b'm', &[id.as_str()]),
            EntryRef::Task(id) => id_of(b't', &[id.as_str()]),
            EntryRef::Kv { ns, key } => id_of(b'k', &[ns, key]),
            EntryRef::Policy(ns) => id_of(b'p', &[ns]),
        }
    }

    fn delta_id(d: &Delta) -> u64 {
        match d {
            Delta::Member(id, _) => id_of(b'm', &[id.as_str()]),
            Delta::Task(id, _) => id_of(b't', &[id.as_str()]),
            Delta::Kv { ns, key, .. } => id_of(b'k', &[ns, key]),
            Delta::Policy { ns, .. } => id_of(b'p', &[ns]),
        }
    }

    /// The entry's digest as `state` holds it, or `None` when it is absent.
    pub fn digest(&self, state: &ReplicatedState) -> Option<u128> {
        let mut h = blake3::Hasher::new();
        match self {
            EntryRef::Member(id) => {
                let m = state.members.get(id)?;
                let r = m.record();
                h.update(b"m");
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
            }
            EntryRef::Task(id) => {
                h.update(b"t");
                h.update(state.tasks.get(id)?.digest(id).as_bytes());
            }
            EntryRef::Kv { ns, key } => {
                let entry = state.namespaces.get(ns)?.entries.get(key)?;
                return Some(kv_digest(ns, key, entry));
            }
            EntryRef::Policy(ns) => {
                let n = state.namespaces.get(ns)?;
                h.update(b"p");
                canon::hash_value(&mut h, ns);
                canon::hash_value(&mut h, &n.policy);
            }
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Some(u128::from_le_bytes(out))
    }

    /// The entry's current state as a delta, or `None` when it is absent.
    pub fn delta(&self, state: &ReplicatedState) -> Option<Delta> {
        Some(match self {
            EntryRef::Member(id) => {
                Delta::Member(id.clone(), Box::new(state.members.get(id)?.clone()))
            }
            EntryRef::Task(id) => Delta::Task(id.clone(), Box::new(state.tasks.get(id)?.clone())),
            EntryRef::Kv { ns, key } => Delta::Kv {
                ns: ns.clone(),
                key: key.clone(),
                entry: state.namespaces.get(ns)?.entries.get(key)?.clone(),
            },
            EntryRef::Policy(ns) => Delta::Policy {
                ns: ns.clone(),
                policy: state.namespaces.get(ns)?.policy.clone(),
            },
        })
    }

    fn is_member(&self) -> bool {
        matches!(self, EntryRef::Member(_))
    }
}

#[derive(Debug)]
struct Slot {
    entry: EntryRef,
    /// `None` while the entry has changed since its digest was taken.
    digest: Option<u128>,
}

/// Bucket digests and per-entry digests of a replicated state, kept in step
/// with it: every change to the state must be reported with
/// [`SyncIndex::touch`]. The engine does this for every delta it emits.
#[derive(Debug)]
pub struct SyncIndex {
    /// Per bucket: entry id → entry and digest.
    slots: Vec<IdMap<Slot>>,
    /// Per bucket: XOR of the digests taken.
    buckets: Vec<u128>,
    /// XOR of the digests of tasks, knowledge entries and policies (the
    /// convergence digest leaves members out).
    content: u128,
    /// Entries whose digest must be taken again.
    dirty: Vec<u64>,
    /// Namespaces whose policy is indexed (a namespace comes into being
    /// with its first entry, with the default policy).
    namespaces: HashSet<String>,
}

impl Default for SyncIndex {
    fn default() -> Self {
        SyncIndex {
            slots: (0..BUCKETS).map(|_| IdMap::default()).collect(),
            buckets: vec![0; BUCKETS],
            content: 0,
            dirty: Vec::new(),
            namespaces: HashSet::new(),
        }
    }
}

impl SyncIndex {
    /// An index of every entry of `state`.
    pub fn new(state: &ReplicatedState) -> Self {
        let mut index = SyncIndex::default();
        for id in state.members.keys() {
            index.touch_ref(EntryRef::Member(id.clone()));
        }
        for id in state.tasks.keys() {
            index.touch_ref(EntryRef::Task(id.clone()));
        }
        for (ns, n) in &state.namespaces {
            index.touch_ref(EntryRef::Policy(ns.clone()));
            index.namespaces.insert(ns.clone());
            for key in n.entries.keys() {
                index.touch_ref(EntryRef::Kv {
                    ns: ns.clone(),
                    key: key.clone(),
                });
            }
        }
        index
    }

    /// Records that the entry `d` is about has changed; `d` must carry the
    /// entry's new state.
    pub fn touch(&mut self, d: &Delta) {
        if let Delta::Kv { ns, .. } = d {
            if !self.namespaces.contains(ns) {
                self.namespaces.insert(ns.clone());
                self.touch_ref(EntryRef::Policy(ns.clone()));
            }
        }
        // A knowledge entry's digest needs only the delta at hand (which is
        // the entry's new state): take it now rather than look the entry up
        // in the state later. Other entries are digested lazily.
        let digest = match d {
            Delta::Kv { ns, key, entry } => Some(kv_digest(ns, key, entry)),
            _ => None,
        };
        self.touch_id(EntryRef::delta_id(d), || EntryRef::of(d), digest);
    }

    fn touch_ref(&mut self, entry: EntryRef) {
        let id = entry.id();
        self.touch_id(id, || entry, None);
    }

    /// Replaces an entry's digest with `digest`, or marks the entry for
    /// [`SyncIndex::refresh`] when it is `None`.
    fn touch_id(&mut self, id: u64, entry: impl FnOnce() -> EntryRef, digest: Option<u128>) {
        let b = bucket_of(id);
        let (slot, listed) = match self.slots[b].entry(id) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let slot = o.into_mut();
                // A slot without a digest is already on the dirty list.
                let listed = slot.digest.is_none();
                (slot, listed)
            }
            std::collections::hash_map::Entry::Vacant(v) => (
                v.insert(Slot {
                    entry: entry(),
                    digest: None,
                }),
                false,
            ),
        };
        let counts = !slot.entry.is_member();
        if let Some(old) = slot.digest.take() {
            self.buckets[b] ^= old;
            if counts {
                self.content ^= old;
            }
        }
        match digest {
            Some(new) => {
                slot.digest = Some(new);
                self.buckets[b] ^= new;
                if counts {
                    self.content ^= new;
                }
            }
            None if !listed => self.dirty.push(id),
            None => {}
        }
    }

    /// Takes the digests of the entries that changed.
    pub fn refresh(&mut self, state: &ReplicatedState) {
        for id in std::mem::take(&mut self.dirty) {
            let b = bucket_of(id);
            let Some(slot) = self.slots[b].get_mut(&id) else {
                continue;
            };
            if slot.digest.is_some() {
                continue;
            }
            match slot.entry.digest(state) {
                Some(d) => {
                    slot.digest = Some(d);
                    self.buckets[b] ^= d;
                    if !slot.entry.is_member() {
                        self.content ^= d;
                    }
                }
                None => {
                    self.slots[b].remove(&id);
                }
            }
        }
    }

    /// One 8-byte digest per bucket.
    pub fn summary(&mut self, state: &ReplicatedState) -> Vec<[u8; 8]> {
        self.refresh(state);
        self.buckets.iter().map(|d| short(*d)).collect()
    }

    /// The convergence digest: tasks and knowledge (membership load figures
    /// are ephemeral and left out). Equal on two replicas exactly when their
    /// tasks and knowledge are equal, whatever order updates arrived in.
    pub fn digest(&mut self, state: &ReplicatedState) -> blake3::Hash {
        self.refresh(state);
        let mut h = blake3::Hasher::new();
        h.update(b"shoal-state-v2");
        h.update(&self.content.to_le_bytes());
        h.finalize()
    }

    /// The leaf digests of each of `buckets` (at most [`BUCKETS`] of them;
    /// numbers out of range are skipped). All [`BUCKETS`] encode to 512 KiB before
    /// compression, well under the sync message limit.
    pub fn leaves(&mut self, state: &ReplicatedState, buckets: &[u16]) -> Vec<(u16, Vec<[u8; 8]>)> {
        self.refresh(state);
        buckets
            .iter()
            .filter(|b| (**b as usize) < BUCKETS)
            .take(BUCKETS)
            .map(|&b| {
                let mut acc = vec![0u128; LEAVES];
                for (id, slot) in &self.slots[b as usize] {
                    if let Some(d) = slot.digest {
                        acc[(cell_of(*id) >> 8) as usize] ^= d;
                    }
                }
                (b, acc.into_iter().map(short).collect())
            })
            .collect()
    }

    /// The cells where a peer's leaf digests differ from ours.
    pub fn differing_cells(
        &mut self,
        state: &ReplicatedState,
        theirs: &[(u16, Vec<[u8; 8]>)],
    ) -> Vec<u16> {
        let buckets: Vec<u16> = theirs.iter().map(|(b, _)| *b).collect();
        let ours: HashMap<u16, Vec<[u8; 8]>> = self.leaves(state, &buckets).into_iter().collect();
        let mut cells = Vec::new();
        for (b, leaves) in theirs {
            let Some(mine) = ours.get(b) else { continue };
            if leaves.len() != LEAVES {
                cells.extend((0..LEAVES as u16).map(|l| *b | (l << 8)));
                continue;
            }
            for (l, (a, z)) in mine.iter().zip(leaves).enumerate() {
                if a != z {
                    cells.push(*b | ((l as u16) << 8));
                }
            }
        }
        cells
    }

    /// Entries (id and slot) in `cells`, grouped by cell in the given order
    /// (a cell named twice is listed once).
    fn in_cells(&self, cells: &[u16]) -> Vec<(u16, Vec<(u64, &Slot)>)> {
        let mut index: HashMap<u16, usize, BuildHasherDefault<IdHasher>> = HashMap::default();
        let mut out: Vec<(u16, Vec<(u64, &Slot)>)> = Vec::new();
        for c in cells {
            index.entry(*c).or_insert_with(|| {
                out.push((*c, Vec::new()));
                out.len() - 1
            });
        }
        let mut buckets: Vec<u16> = cells.iter().map(|c| c & 0xFF).collect();
        buckets.sort_unstable();
        buckets.dedup();
        for b in buckets {
            for (id, slot) in &self.slots[b as usize] {
                if let Some(i) = index.get(&cell_of(*id)) {
                    out[*i].1.push((*id, slot));
                }
            }
        }
        out
    }

    /// The (id, digest) pairs of every entry in `cells`, for a diff request.
    /// Cells are taken in order while the pairs fit in `limit` (the first is
    /// always taken); the first value is the cells taken.
    pub fn have(
        &mut self,
        state: &ReplicatedState,
        cells: &[u16],
        limit: usize,
    ) -> (Vec<u16>, Vec<(u64, u64)>) {
        self.refresh(state);
        let mut taken = Vec::new();
        let mut pairs = Vec::new();
        for (cell, entries) in self.in_cells(cells) {
            if !taken.is_empty() && pairs.len() + entries.len() > limit {
                break;
            }
            taken.push(cell);
            pairs.extend(
                entries
                    .into_iter()
                    .filter_map(|(id, s)| Some((id, s.digest? as u64))),
            );
        }
        (taken, pairs)
    }

    /// This replica's entries in `cells` that a peer holding `have` lacks or
    /// holds in another state.
    pub fn missing(
        &mut self,
        state: &ReplicatedState,
        cells: &[u16],
        have: &[(u64, u64)],
    ) -> Vec<Delta> {
        self.refresh(state);
        let have: IdMap<u64> = have.iter().copied().collect();
        let mut out = Vec::new();
        for (_, entries) in self.in_cells(cells) {
            for (id, slot) in entries {
                let ours = slot.digest.map(|d| d as u64);
                if ours.is_some() && have.get(&id).copied() != ours {
                    out.extend(slot.entry.delta(state));
                }
            }
        }
        out
    }
}

/// The buckets where `theirs` differs from `ours`, at most `cap` of them
/// (a catch-up after a connect asks for every bucket at once, a periodic
/// round for at most [`MAX_PULL`]). A summary of the wrong length is
/// treated as differing everywhere.
pub fn differing(ours: &[[u8; 8]], theirs: &[[u8; 8]], cap: usize) -> Vec<u16> {
    let cap = cap.min(BUCKETS);
    if theirs.len() != ours.len() {
        return (0..cap as u16).collect();
    }
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i as u16)
        .take(cap)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Millis;
    use crate::core::knowledge::{KvEntry, Policy};

    fn kv(state: &mut ReplicatedState, index: &mut SyncIndex, key: &str, v: &str, node: &str) {
        let mut e = KvEntry::default();
        e.put(Policy::Lww, v.into(), &NodeId::from(node), Millis(1), 1);
        apply(
            state,
            index,
            Delta::Kv {
                ns: "n".into(),
                key: key.into(),
                entry: e.into(),
            },
        );
    }

    /// Merges `d` and tells the index, with the entry's new state (as the
    /// engine does).
    fn apply(state: &mut ReplicatedState, index: &mut SyncIndex, d: Delta) {
        let entry = EntryRef::of(&d);
        state.apply(d);
        index.touch(&entry.delta(state).unwrap());
    }

    /// One round of repair: `to` pulls what differs from `from`.
    fn pull(to: &mut ReplicatedState, ti: &mut SyncIndex, from: &ReplicatedState) -> usize {
        let mut fi = SyncIndex::new(from);
        let diff = differing(&ti.summary(to), &fi.summary(from), BUCKETS);
        let cells = ti.differing_cells(to, &fi.leaves(from, &diff));
        assert!(cells.len() <= 2, "{cells:?}");
        let (cells, have) = ti.have(to, &cells, MAX_HAVE);
        assert!(have.len() < 10, "only the differing cells are listed");
        let got = fi.missing(from, &cells, &have);
        let n = got.len();
        for d in got {
            apply(to, ti, d);
        }
        n
    }

    #[test]
    fn a_diff_sends_only_the_entries_that_differ() {
        let (mut a, mut ai) = (ReplicatedState::default(), SyncIndex::default());
        let (mut b, mut bi) = (ReplicatedState::default(), SyncIndex::default());
        for i in 0..2000 {
            kv(&mut a, &mut ai, &format!("k{i}"), "1", "a");
            kv(&mut b, &mut bi, &format!("k{i}"), "1", "a");
        }
        assert_eq!(ai.digest(&a), bi.digest(&b));
        kv(&mut a, &mut ai, "only-a", "2", "a");
        kv(&mut b, &mut bi, "k7", "3", "b");
        assert_ne!(ai.digest(&a), bi.digest(&b));
        // b lacks only-a and holds k7 in another state: exactly two entries
        assert_eq!(pull(&mut b, &mut bi, &a), 2);
        assert_eq!(pull(&mut a, &mut ai, &b), 1, "a lacks b's write to k7");
        assert_eq!(ai.digest(&a), bi.digest(&b));
        assert_eq!(ai.digest(&a), a.digest(), "incremental equals from scratch");
        assert!(differing(&ai.summary(&a), &bi.summary(&b), BUCKETS).is_empty());
        assert_eq!(pull(&mut b, &mut bi, &a), 0);
    }

    #[test]
    fn a_large_have_list_is_cut_at_whole_cells() {
        let (mut a, mut ai) = (ReplicatedState::default(), SyncIndex::default());
        for i in 0..4000 {
            kv(&mut a, &mut ai, &format!("k{i}"), "1", "a");
        }
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let (taken, pairs) = ai.have(&a, &all, 1000);
        assert!(pairs.len() <= 1000 && !taken.is_empty());
        assert!(taken.len() < all.len(), "cut before the last cell");
        let expected = ai
            .in_cells(&taken)
            .iter()
            .map(|(_, e)| e.len())
            .sum::<usize>();
        assert_eq!(pairs.len(), expected, "whole cells only");
    }
}
