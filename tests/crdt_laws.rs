//! The CRDT laws for Shoal's replicated state, on random histories.
//!
//! Several replicas each apply random local operations (knowledge puts and
//! deletes under every policy, including concurrent writes to the same key,
//! task submissions, transitions and cancels) and sometimes sync from one
//! another, in full or by anti-entropy. Then merging their states must be
//! commutative, associative and idempotent, the digest must depend only on
//! the state, the digests an engine keeps up to date must equal digests taken
//! from scratch, and an anti-entropy round must bring everything that
//! differs.

use proptest::prelude::*;
use shoal::core::ids::{Millis, NodeId};
use shoal::core::knowledge::Policy;
use shoal::core::member::MemberRecord;
use shoal::core::replica::SubmitRequest;
use shoal::core::replica::{Replica as Engine, ReplicaConfig as EngineConfig};
use shoal::core::state::{Delta, ReplicatedState};
use shoal::core::sync::{differing, SyncIndex, BUCKETS};

#[derive(Clone, Debug)]
enum Op {
    Put {
        replica: usize,
        ns: usize,
        key: usize,
        value: u8,
    },
    Del {
        replica: usize,
        ns: usize,
        key: usize,
    },
    Submit {
        replica: usize,
        key: Option<u8>,
    },
    Cancel {
        replica: usize,
        task: usize,
    },
    Sync {
        from: usize,
        to: usize,
    },
    /// Anti-entropy: `to` asks `from` for what differs, by bucket digests.
    Repair {
        from: usize,
        to: usize,
    },
}

const REPLICAS: usize = 3;
const NAMESPACES: [(&str, Policy); 3] = [("l", Policy::Lww), ("m", Policy::Mv), ("s", Policy::Set)];

fn op() -> impl Strategy<Value = Op> {
    let r = 0..REPLICAS;
    prop_oneof![
        4 => (r.clone(), 0..3usize, 0..3usize, any::<u8>()).prop_map(|(replica, ns, key, value)| Op::Put { replica, ns, key, value }),
        2 => (r.clone(), 0..3usize, 0..3usize).prop_map(|(replica, ns, key)| Op::Del { replica, ns, key }),
        2 => (r.clone(), proptest::option::of(0..3u8)).prop_map(|(replica, key)| Op::Submit { replica, key }),
        1 => (r.clone(), 0..8usize).prop_map(|(replica, task)| Op::Cancel { replica, task }),
        2 => (r.clone(), r.clone()).prop_map(|(from, to)| Op::Sync { from, to }),
        2 => (r.clone(), r).prop_map(|(from, to)| Op::Repair { from, to }),
    ]
}

fn replica(i: usize) -> Engine {
    let node = NodeId::from(format!("node-{i}"));
    let cfg = EngineConfig {
        node: node.clone(),
        record: MemberRecord {
            name: node.to_string(),
            capabilities: vec!["work".into()],
            capacity: 2,
            ..MemberRecord::default()
        },
        handlers: ["work".to_string()].into(),
        claim_ttl_ms: 1000,
        failure: Default::default(),
        keys: shoal::core::sign::Keys::sim(&node),
    };
    let mut e = Engine::new(cfg, ReplicatedState::default(), i as u64);
    e.start(Millis(0));
    for (ns, policy) in NAMESPACES {
        e.set_policy(Millis(0), ns, policy).unwrap();
    }
    e
}

/// Runs a history; returns each replica's state.
fn run(history: &[Op]) -> Vec<ReplicatedState> {
    let mut engines: Vec<Engine> = (0..REPLICAS).map(replica).collect();
    for (step, op) in history.iter().enumerate() {
        let now = Millis(step as u64 + 1);
        match op {
            Op::Put {
                replica,
                ns,
                key,
                value,
            } => {
                let v = serde_json::json!(value % 4);
                engines[*replica]
                    .kv_put(now, NAMESPACES[*ns].0, &format!("k{key}"), &v)
                    .unwrap();
            }
            Op::Del { replica, ns, key } => {
                let _ = engines[*replica].kv_del(now, NAMESPACES[*ns].0, &format!("k{key}"));
            }
            Op::Submit { replica, key } => {
                let req = SubmitRequest {
                    capability: "work".into(),
                    key: key.map(|k| format!("idem-{k}")),
                    ..SubmitRequest::default()
                };
                engines[*replica].submit(now, req).unwrap();
            }
            Op::Cancel { replica, task } => {
                let ids: Vec<_> = engines[*replica].state().tasks.keys().cloned().collect();
                if let Some(id) = ids.get(*task) {
                    let _ = engines[*replica].cancel(now, id);
                }
            }
            Op::Sync { from, to } => {
                let deltas = engines[*from].state().deltas();
                for d in deltas {
                    engines[*to].apply_remote(now, d);
                }
            }
            Op::Repair { from, to } => {
                let theirs = engines[*from].sync_summary();
                let diff = differing(&engines[*to].sync_summary(), &theirs, BUCKETS);
                let leaves = engines[*from].sync_leaves(&diff);
                let cells = engines[*to].sync_differing_cells(&leaves);
                let (taken, have) = engines[*to].sync_have(&cells);
                assert_eq!(taken, cells, "small states fit in one request");
                for d in engines[*from].sync_missing(&cells, &have) {
                    engines[*to].apply_remote(now, d);
                }
                let mut both = engines[*to].state().clone();
                both.merge(engines[*from].state());
                assert_eq!(
                    both.deep_digest(),
                    engines[*to].state().deep_digest(),
                    "after a repair, {to} holds everything {from} holds"
                );
            }
        }
        for e in engines.iter_mut() {
            e.take_effects();
            // The engine's incremental digests equal digests from scratch.
            assert_eq!(e.digest(), e.state().digest());
            assert_eq!(
                e.sync_summary(),
                SyncIndex::new(e.state()).summary(e.state())
            );
        }
    }
    engines.iter().map(|e| e.state().clone()).collect()
}

fn merged(parts: &[&ReplicatedState]) -> ReplicatedState {
    let mut acc = ReplicatedState::default();
    for p in parts {
        acc.merge(p);
    }
    acc
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn merge_is_commutative_associative_and_idempotent(history in proptest::collection::vec(op(), 1..40)) {
        let states = run(&history);
        let (a, b, c) = (&states[0], &states[1], &states[2]);
        let ab = merged(&[a, b]);
        let ba = merged(&[b, a]);
        prop_assert_eq!(ab.deep_digest(), ba.deep_digest(), "commutative");
        let ab_c = merged(&[&ab, c]);
        let bc = merged(&[b, c]);
        let a_bc = merged(&[a, &bc]);
        prop_assert_eq!(ab_c.deep_digest(), a_bc.deep_digest(), "associative");
        let aa = merged(&[a, a]);
        prop_assert_eq!(aa.deep_digest(), merged(&[a]).deep_digest(), "idempotent");
        let ab_ab = merged(&[&ab, &ab, b]);
        prop_assert_eq!(ab_ab.deep_digest(), ab.deep_digest(), "idempotent after merge");
    }

    #[test]
    fn deltas_in_any_order_converge(history in proptest::collection::vec(op(), 1..30), seed in any::<u64>()) {
        let states = run(&history);
        let all: Vec<Delta> = states.iter().flat_map(|s| s.deltas()).collect();
        let mut forward = ReplicatedState::default();
        for d in all.iter().cloned() {
            forward.apply(d);
        }
        // a shuffled order, with duplicates
        let mut shuffled = all.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        shuffled.extend(all.iter().take(5).cloned());
        let mut backward = ReplicatedState::default();
        for d in shuffled {
            backward.apply(d);
        }
        prop_assert_eq!(forward.deep_digest(), backward.deep_digest());
        prop_assert_eq!(forward.digest(), backward.digest());
    }

    /// What lets anti-entropy and the convergence digest look at a knowledge
    /// entry's version only: two replicas holding the same version of an
    /// entry hold the same entry.
    #[test]
    fn equal_versions_mean_equal_entries(history in proptest::collection::vec(op(), 1..40)) {
        let states = run(&history);
        for (i, a) in states.iter().enumerate() {
            for b in &states[i + 1..] {
                for (ns, na) in &a.namespaces {
                    let Some(nb) = b.namespaces.get(ns) else { continue };
                    for (key, ea) in &na.entries {
                        let Some(eb) = nb.entries.get(key) else { continue };
                        if ea.version() == eb.version() {
                            prop_assert_eq!(ea.digest(), eb.digest(), "{}/{}", ns, key);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn codec_round_trip_preserves_state(history in proptest::collection::vec(op(), 1..30)) {
        let states = run(&history);
        for s in &states {
            let mut copy = ReplicatedState::default();
            for d in s.deltas() {
                let bytes = postcard::to_stdvec(&d).unwrap();
                copy.apply(postcard::from_bytes(&bytes).unwrap());
            }
            prop_assert_eq!(copy.deep_digest(), s.deep_digest());
        }
    }
}

#[test]
fn different_states_have_different_digests() {
    let mut a = replica(0);
    let (before, deep) = (a.digest(), a.state().deep_digest());
    a.kv_put(Millis(1), "l", "k", &serde_json::json!(1))
        .unwrap();
    assert_ne!(before, a.digest());
    assert_ne!(deep, a.state().deep_digest());
}
