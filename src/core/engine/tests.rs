//! Engine tests: engines driven by hand through `handle`, no IO.

use super::*;
use crate::core::ids::Now;
use crate::core::member::MemberRecord;
use crate::core::replica::ReplicaConfig;
use crate::core::sync;
use crate::core::wire::SyncRequest;

fn engine(node: &str) -> Engine {
    let cfg = EngineConfig {
        replica: ReplicaConfig {
            node: NodeId::from(node),
            record: MemberRecord {
                name: node.into(),
                addrs: vec![format!("/memory/{node}")],
                capabilities: vec!["echo".into()],
                capacity: 4,
                ..MemberRecord::default()
            },
            handlers: ["echo".to_string()].into(),
            claim_ttl_ms: 1_000,
            failure: Default::default(),
            keys: crate::core::sign::Keys::sim(&NodeId::from(node)),
        },
        protocol: ProtocolConfig::default(),
        control: crate::core::lease::ControlConfig::for_probe_interval(500, 3, 1),
    };
    let mut e = Engine::new(cfg, ReplicatedState::default(), 7);
    e.handle(Now::at(1), Input::Start);
    e
}

/// Drains outputs, confirming every persist at once; returns the rest.
fn settle(e: &mut Engine, at: u64) -> Vec<Output> {
    let mut rest = Vec::new();
    loop {
        let batch: Vec<Output> = e.drain_outputs().collect();
        if batch.is_empty() {
            return rest;
        }
        for o in batch {
            match o {
                Output::Persist(p) => e.handle(Now::at(at), Input::Persisted(p.id)),
                other => rest.push(other),
            }
        }
    }
}

fn put(ns: &str, key: &str, v: i64) -> Command {
    Command::KvPut {
        ns: ns.into(),
        key: key.into(),
        value: serde_json::json!(v),
    }
}

#[test]
fn a_reply_comes_only_after_its_batch_is_persisted() {
    let mut e = engine("a");
    settle(&mut e, 1);
    e.handle(Now::at(10), Input::Command(ReqId(1), put("n", "k", 1)));
    let out: Vec<Output> = e.drain_outputs().collect();
    let persist = out
        .iter()
        .find_map(|o| match o {
            Output::Persist(p) => Some(p.clone()),
            _ => None,
        })
        .expect("the write asks to be persisted");
    assert!(persist.synced, "a local change is synced");
    assert!(
        !out.iter().any(|o| matches!(o, Output::Reply(..))),
        "no reply before the batch is durable"
    );
    // A second write while the first is in flight waits in the next batch.
    e.handle(Now::at(11), Input::Command(ReqId(2), put("n", "k2", 2)));
    assert!(e.drain_outputs().all(|o| !matches!(o, Output::Persist(_))));
    e.handle(Now::at(12), Input::Persisted(persist.id));
    let out: Vec<Output> = e.drain_outputs().collect();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Reply(ReqId(1), Ok(Answer::Written(_))))));
    assert!(out.iter().any(|o| matches!(o, Output::Publish(_))));
    assert!(
        out.iter().any(|o| matches!(o, Output::Persist(_))),
        "the waiting batch goes next"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Reply(ReqId(2), _))));
}

#[test]
fn a_failed_persist_fails_its_replies_and_those_built_on_it() {
    let mut e = engine("a");
    settle(&mut e, 1);
    e.handle(Now::at(10), Input::Command(ReqId(1), put("n", "k", 1)));
    let id = e
        .drain_outputs()
        .find_map(|o| match o {
            Output::Persist(p) => Some(p.id),
            _ => None,
        })
        .unwrap();
    e.handle(Now::at(11), Input::Command(ReqId(2), Command::Barrier));
    e.handle(
        Now::at(12),
        Input::PersistFailed {
            batch: id,
            reason: "disk full".into(),
        },
    );
    let failed: Vec<ReqId> = e
        .drain_outputs()
        .filter_map(|o| match o {
            Output::Reply(r, Err(EngineError::NotDurable(_))) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![ReqId(1), ReqId(2)]);
}

#[test]
fn a_refused_command_is_answered_at_once_and_changes_nothing() {
    let mut e = engine("a");
    settle(&mut e, 1);
    let before = e.replica().digest();
    e.handle(Now::at(10), Input::Command(ReqId(9), put("", "k", 1)));
    let out: Vec<Output> = e.drain_outputs().collect();
    assert!(matches!(out.as_slice(), [Output::Reply(ReqId(9), Err(_))]));
    assert_eq!(e.replica().digest(), before);
}

#[test]
fn gossip_from_one_engine_converges_another_and_garbage_is_rejected() {
    let mut a = engine("a");
    let mut b = engine("b");
    settle(&mut a, 1);
    settle(&mut b, 1);
    a.handle(Now::at(10), Input::Command(ReqId(1), put("n", "k", 1)));
    let published: Vec<Vec<u8>> = settle(&mut a, 10)
        .into_iter()
        .filter_map(|o| match o {
            Output::Publish(m) => Some(m),
            _ => None,
        })
        .collect();
    assert!(!published.is_empty());
    for (i, m) in published.into_iter().enumerate() {
        b.handle(
            Now::at(11),
            Input::Gossip {
                from: NodeId::from("a"),
                msg: MsgRef(i as u64),
                bytes: m,
            },
        );
    }
    let out = settle(&mut b, 11);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Verdict { rejected: None, .. })));
    assert!(b.replica().kv_get("n", "k").is_ok());
    let before = b.replica().digest();
    b.handle(
        Now::at(12),
        Input::Gossip {
            from: NodeId::from("x"),
            msg: MsgRef(99),
            bytes: vec![1, 2, 3],
        },
    );
    let out = settle(&mut b, 12);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Verdict {
            msg: MsgRef(99),
            rejected: Some(_),
            ..
        }
    )));
    assert_eq!(b.replica().digest(), before);
}

/// Carries sync messages between two engines until neither sends more.
/// Runs anti-entropy between two engines until neither sends anything;
/// returns the other outputs, each with whether `a` made it.
fn exchange(a: &mut Engine, b: &mut Engine, at: u64) -> Vec<(bool, Output)> {
    exchange_counting(a, b, at).0
}

/// Outputs or sync requests, each with whether `a` made it.
type FromA<T> = Vec<(bool, T)>;

/// [`exchange`], also returning every sync request sent, each with whether
/// `a` sent it.
fn exchange_counting(
    a: &mut Engine,
    b: &mut Engine,
    at: u64,
) -> (FromA<Output>, FromA<SyncRequest>) {
    let (an, bn) = (a.node().clone(), b.node().clone());
    let mut queue: Vec<(bool, Output)> = Vec::new();
    let mut rest = Vec::new();
    let mut requests = Vec::new();
    for _ in 0..100 {
        queue.extend(settle(a, at).into_iter().map(|o| (true, o)));
        queue.extend(settle(b, at).into_iter().map(|o| (false, o)));
        if queue.is_empty() {
            return (rest, requests);
        }
        for (from_a, o) in std::mem::take(&mut queue) {
            let (src, dst) = if from_a {
                (&an, &mut *b)
            } else {
                (&bn, &mut *a)
            };
            match o {
                Output::Send { bytes, .. } => {
                    let req = wire::decode::<SyncRequest>(&bytes, wire::MAX_SYNC_BYTES)
                        .expect("an engine sends sound requests");
                    requests.push((from_a, req));
                    dst.handle(
                        Now::at(at),
                        Input::SyncRequest {
                            from: src.clone(),
                            id: SyncRef(0),
                            bytes,
                        },
                    )
                }
                Output::Respond { bytes, .. } => dst.handle(
                    Now::at(at),
                    Input::SyncResponse {
                        from: src.clone(),
                        bytes,
                    },
                ),
                o => rest.push((from_a, o)),
            }
        }
    }
    panic!("the exchange did not end");
}

/// Whether `out` publishes `node`'s member record.
fn publishes_record_of(out: &[(bool, Output)], from_a: bool, node: &str) -> bool {
    out.iter().any(|(a, o)| {
        *a == from_a
            && matches!(o, Output::Publish(bytes) if matches!(
                wire::decode::<Gossip>(bytes, wire::MAX_GOSSIP_BYTES),
                Ok(Gossip::Deltas(ds)) if ds.iter().any(|d| matches!(d, Delta::Member(id, _) if id.as_str() == node))
            ))
    })
}

/// A node's record, published on starting, finds nobody subscribed; it
/// goes out again once, after the first catch-up with a peer.
#[test]
fn a_node_publishes_its_record_again_after_its_first_catch_up_only() {
    let mut a = engine("a");
    let mut b = engine("b");
    settle(&mut a, 1);
    settle(&mut b, 1);
    a.handle(Now::at(20), Input::PeerUp(NodeId::from("b")));
    b.handle(Now::at(20), Input::PeerUp(NodeId::from("a")));
    let out = exchange(&mut a, &mut b, 20);
    assert!(
        publishes_record_of(&out, true, "a"),
        "a announces itself after catching up"
    );
    assert!(publishes_record_of(&out, false, "b"), "b too");
    // A later connection's catch-up does not announce again.
    a.handle(Now::at(30), Input::PeerDown(NodeId::from("b")));
    b.handle(Now::at(30), Input::PeerDown(NodeId::from("a")));
    a.handle(Now::at(40), Input::PeerUp(NodeId::from("b")));
    b.handle(Now::at(40), Input::PeerUp(NodeId::from("a")));
    let out = exchange(&mut a, &mut b, 40);
    assert!(!publishes_record_of(&out, true, "a"), "once only");
}

/// A joiner dials the members it learned from its bootstrap as soon as its
/// first catch-up ends, not at the next redial tick.
#[test]
fn a_joiner_dials_the_members_it_learned_when_its_first_catch_up_ends() {
    let mut a = engine("a");
    let mut b = engine("b");
    let mut c = engine("c");
    settle(&mut a, 1);
    settle(&mut b, 1);
    settle(&mut c, 1);
    // b (the bootstrap) already holds c's record.
    b.handle(Now::at(2), Input::PeerUp(NodeId::from("c")));
    c.handle(Now::at(2), Input::PeerUp(NodeId::from("b")));
    exchange(&mut b, &mut c, 2);
    assert!(b.replica().state().members.contains_key(c.node()));
    // a joins through b; no timer fires.
    a.handle(Now::at(20), Input::PeerUp(NodeId::from("b")));
    b.handle(Now::at(20), Input::PeerUp(NodeId::from("a")));
    let out = exchange(&mut a, &mut b, 20);
    assert!(
        out.iter()
            .any(|(from_a, o)| *from_a
                && matches!(o, Output::Dial { node, .. } if node.as_str() == "c")),
        "a dials c when its catch-up with b ends"
    );
    // A later catch-up (b reconnecting) does not dial again by itself.
    a.handle(Now::at(30), Input::PeerDown(NodeId::from("b")));
    b.handle(Now::at(30), Input::PeerDown(NodeId::from("a")));
    a.handle(Now::at(40), Input::PeerUp(NodeId::from("b")));
    b.handle(Now::at(40), Input::PeerUp(NodeId::from("a")));
    let out = exchange(&mut a, &mut b, 40);
    assert!(
        !out.iter()
            .any(|(from_a, o)| *from_a && matches!(o, Output::Dial { .. })),
        "only the first catch-up dials; the redial tick does the rest"
    );
}

/// Two settled engines, `a` holding `keys` knowledge entries that `b` lacks.
fn apart(keys: u64) -> (Engine, Engine) {
    let mut a = engine("a");
    let mut b = engine("b");
    for i in 0..keys {
        a.handle(
            Now::at(10),
            Input::Command(ReqId(i), put("n", &format!("k{i}"), 1)),
        );
    }
    settle(&mut a, 10);
    settle(&mut b, 10);
    (a, b)
}

#[test]
fn a_connect_catches_up_by_anti_entropy_until_digests_agree() {
    let (mut a, mut b) = apart(50);
    assert_ne!(a.replica().digest(), b.replica().digest());
    a.handle(Now::at(20), Input::PeerUp(NodeId::from("b")));
    b.handle(Now::at(20), Input::PeerUp(NodeId::from("a")));
    exchange(&mut a, &mut b, 20);
    assert_eq!(a.replica().digest(), b.replica().digest());
    assert!(b.replica().kv_get("n", "k49").is_ok());
}

/// A joiner that differs from its bootstrap in every bucket pulls them
/// all in one round (summary, leaves, diff), not `MAX_PULL` buckets a round.
#[test]
fn a_fresh_joiner_catches_up_in_one_round() {
    let (mut a, mut b) = apart(3_000);
    let (ours, theirs) = (b.replica().sync_summary(), a.replica().sync_summary());
    let differ = sync::differing(&ours, &theirs, sync::BUCKETS).len();
    assert!(differ > 4 * sync::MAX_PULL - 8, "{differ} buckets differ");
    a.handle(Now::at(20), Input::PeerUp(NodeId::from("b")));
    b.handle(Now::at(20), Input::PeerUp(NodeId::from("a")));
    let (_, requests) = exchange_counting(&mut a, &mut b, 20);
    assert_eq!(a.replica().digest(), b.replica().digest());
    let leaves_by_b: Vec<usize> = requests
        .iter()
        .filter_map(|(from_a, r)| match r {
            SyncRequest::Leaves(buckets) if !from_a => Some(buckets.len()),
            _ => None,
        })
        .collect();
    assert_eq!(
        leaves_by_b,
        vec![differ],
        "one leaves request for every bucket"
    );
}

#[test]
fn timers_fire_by_token_and_redial_dials_members_not_connected() {
    let mut a = engine("a");
    let mut b = engine("b");
    settle(&mut a, 1);
    // a learns of b (its record, with addresses) through gossip.
    b.handle(Now::at(2), Input::Command(ReqId(1), Command::Barrier));
    let b_record = b.replica().state().members[b.node()].clone();
    a.handle(
        Now::at(3),
        Input::Gossip {
            from: NodeId::from("b"),
            msg: MsgRef(1),
            bytes: wire::gossip_chunks(
                [&Delta::Member(NodeId::from("b"), Box::new(b_record))],
                1 << 20,
            )
            .remove(0),
        },
    );
    settle(&mut a, 3);
    let mut dialed = false;
    for _ in 0..100 {
        let (at, token) = a.poll_timeout().expect("the engine keeps timers armed");
        a.handle(Now::at(at.0), Input::Timer(token));
        // Firing the same token again is stale and does nothing.
        a.handle(Now::at(at.0), Input::Timer(token));
        dialed |= settle(&mut a, at.0).iter().any(
            |o| matches!(o, Output::Dial { node, addrs } if node.as_str() == "b" && addrs == &["/memory/b".to_string()]),
        );
        if dialed {
            break;
        }
    }
    assert!(
        dialed,
        "the redial timer dials a member it is not connected to"
    );
}

fn publishes(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Publish(_)))
        .count()
}

#[test]
fn gossip_goes_out_at_once_after_quiet_and_changes_within_the_window_wait_for_it() {
    let mut e = engine("a");
    settle(&mut e, 1_000);
    e.handle(Now::at(2_000), Input::Command(ReqId(1), put("n", "k1", 1)));
    assert_eq!(
        publishes(&settle(&mut e, 2_000)),
        1,
        "first change after quiet"
    );
    assert!(!e.gossip_waiting());
    e.handle(Now::at(2_001), Input::Command(ReqId(2), put("n", "k2", 1)));
    assert_eq!(publishes(&settle(&mut e, 2_001)), 0, "within the window");
    assert!(e.gossip_waiting());
    // Timers that fell due while time jumped fire first (and re-arm later).
    let (at, token) = loop {
        let (at, token) = e.poll_timeout().unwrap();
        if token.kind == TimerKind::GossipFlush {
            break (at, token);
        }
        e.handle(Now::at(at.0.max(2_001)), Input::Timer(token));
        settle(&mut e, 2_001);
    };
    assert_eq!(at, Mono(2_000 + ProtocolConfig::default().gossip_window_ms));
    assert_eq!(token.kind, TimerKind::GossipFlush);
    e.handle(Now::at(at.0), Input::Timer(token));
    assert_eq!(publishes(&settle(&mut e, at.0)), 1, "the window passed");
    assert!(!e.gossip_waiting());
}

#[test]
fn queries_answer_from_the_replica_with_filters_and_limits() {
    let mut e = engine("a");
    for i in 0..5u64 {
        let req = crate::core::replica::SubmitRequest {
            capability: if i % 2 == 0 { "echo" } else { "none" }.into(),
            ..Default::default()
        };
        e.handle(
            Now::at(10 + i),
            Input::Command(ReqId(i), Command::Submit(req)),
        );
    }
    settle(&mut e, 20);
    let now = Now::at(20);
    let page = |before| {
        let Found::Tasks { tasks, total, next } = e.query(
            now,
            &Query::Tasks {
                status: None,
                node: None,
                capability: Some("echo".into()),
                limit: 2,
                before,
            },
        ) else {
            panic!("a task list");
        };
        (tasks, total, next)
    };
    let (tasks, total, next) = page(None);
    assert_eq!(total, 3, "three echo tasks match");
    assert_eq!(tasks.len(), 2, "the limit keeps the newest two");
    assert!(tasks[0].1.spec().submitted_at <= tasks[1].1.spec().submitted_at);
    // The cursor is the oldest task kept; the next page holds the rest.
    let cursor = next.expect("an older task remains");
    assert_eq!(cursor, (tasks[0].1.spec().submitted_at, tasks[0].0.clone()));
    let (older, total, next) = page(Some(cursor));
    assert_eq!((older.len(), total, next), (1, 1, None));
    assert!(older[0].1.spec().submitted_at <= tasks[0].1.spec().submitted_at);
    assert!(!tasks.iter().any(|(id, _)| *id == older[0].0));
    let Found::Summary(s) = e.query(now, &Query::Summary) else {
        panic!("a summary");
    };
    assert_eq!(s.tasks, 5);
    assert_eq!(s.digest, e.replica().digest().to_hex().to_string());
    let Found::Members(m) = e.query(now, &Query::Members) else {
        panic!("members");
    };
    assert_eq!(m.len(), 1);
    assert!(m[0].local && m[0].status == "alive");
    assert!(matches!(
        e.query(now, &Query::Task(crate::core::ids::TaskId("nope".into()))),
        Found::Task(Err(EngineError::NotFound { .. }))
    ));
}

#[test]
fn a_gossip_message_with_one_unsound_delta_is_rejected_whole_and_changes_nothing() {
    let mut a = engine("a");
    settle(&mut a, 1);
    let before = a.replica().digest();
    let good = Delta::Kv {
        ns: "n".into(),
        key: "k".into(),
        entry: Default::default(),
    };
    // A policy for the empty namespace: a well-formed message that once
    // crashed the store commit on every node it reached.
    let bad = Delta::Policy {
        ns: String::new(),
        policy: crdts::LWWReg {
            val: crate::core::knowledge::Policy::Mv,
            marker: (crate::core::ids::Millis(5), NodeId::from("x")),
        },
    };
    let bytes = wire::gossip_chunks([&good, &bad], 1 << 20).remove(0);
    a.handle(
        Now::at(2),
        Input::Gossip {
            from: NodeId::from("x"),
            msg: MsgRef(7),
            bytes,
        },
    );
    let out = settle(&mut a, 2);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Verdict { msg: MsgRef(7), rejected: Some(why), .. } if why.contains("namespace")
    )));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Count(Counter::DeltaRefused, 1))));
    assert_eq!(
        a.replica().digest(),
        before,
        "the sound delta beside it was not applied either"
    );
    assert!(a.replica().kv_get("n", "k").is_err());
}

#[test]
fn forged_member_records_and_lease_claims_are_refused_and_change_nothing() {
    // b's engine writes and announces signed records; a accepts them. The
    // same records re-signed by x are refused.
    let mut a = engine("a");
    settle(&mut a, 1);
    let mut b = engine("b");
    settle(&mut b, 1);
    let b_id = NodeId::from("b");
    let b_entry = b.replica().state().members[&b_id].clone();
    let x_keys = crate::core::sign::Keys::sim(&NodeId::from("x"));

    let mut forged = b_entry.clone();
    let mut r = forged.record().clone();
    r.status = crate::core::member::MemberStatus::Dead;
    forged.write(&b_id, r, &b_id, &x_keys);
    let mut claim = crate::core::lease::LeaseClaim {
        plane: 9,
        term: 7,
        holder: b_id.clone(),
        voters: vec![b_id.clone()],
        learners: Vec::new(),
        conf_index: 1,
        seq: 0,
        sig: Default::default(),
    };
    claim.sign(&x_keys);
    let forgeries = [
        wire::gossip_chunks([&Delta::Member(b_id.clone(), Box::new(forged))], 1 << 20).remove(0),
        wire::encode(&crate::core::wire::Gossip::Lease(claim.clone())),
    ];
    for (i, bytes) in forgeries.into_iter().enumerate() {
        a.handle(
            Now::at(2),
            Input::Gossip {
                from: NodeId::from("x"),
                msg: MsgRef(i as u64),
                bytes,
            },
        );
        let out = settle(&mut a, 2);
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Verdict { rejected: Some(why), .. } if why.contains("not signed by")
            )),
            "forgery {i} refused: {out:?}"
        );
    }
    assert!(!a.replica().state().members.contains_key(&b_id));
    assert!(a.lease().is_none());

    // The genuine ones are taken.
    claim.sign(&crate::core::sign::Keys::sim(&b_id));
    for (i, bytes) in [
        wire::gossip_chunks([&Delta::Member(b_id.clone(), Box::new(b_entry))], 1 << 20).remove(0),
        wire::encode(&crate::core::wire::Gossip::Lease(claim)),
    ]
    .into_iter()
    .enumerate()
    {
        a.handle(
            Now::at(3),
            Input::Gossip {
                from: NodeId::from("b"),
                msg: MsgRef(10 + i as u64),
                bytes,
            },
        );
        let out = settle(&mut a, 3);
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Verdict { rejected: None, .. })));
    }
    assert!(a.replica().state().members.contains_key(&b_id));
}

/// Real peer messages (gossip, sync requests and answers) from an engine
/// that wrote knowledge, a policy and a task, caught up a fresh peer, and
/// has a member record: the seeds the property below mangles.
fn peer_messages() -> Vec<Vec<u8>> {
    let mut b = engine("b");
    let mut c = engine("c");
    settle(&mut b, 1);
    settle(&mut c, 1);
    let mut seeds = Vec::new();
    b.handle(
        Now::at(10),
        Input::Command(
            ReqId(1),
            Command::SetPolicy {
                ns: "tags".into(),
                policy: crate::core::knowledge::Policy::Set,
            },
        ),
    );
    for i in 0..5 {
        b.handle(
            Now::at(10),
            Input::Command(ReqId(2 + i), put("n", &format!("k{i}"), 1)),
        );
    }
    b.handle(
        Now::at(10),
        Input::Command(
            ReqId(9),
            Command::Submit(crate::core::replica::SubmitRequest {
                capability: "echo".into(),
                payload: serde_json::json!({"x": 1}),
                ..Default::default()
            }),
        ),
    );
    for o in settle(&mut b, 10) {
        if let Output::Publish(m) = o {
            seeds.push(m);
        }
    }
    b.handle(Now::at(20), Input::PeerUp(NodeId::from("c")));
    c.handle(Now::at(20), Input::PeerUp(NodeId::from("b")));
    for _ in 0..20 {
        let mut moved = false;
        let out_b = settle(&mut b, 20);
        let out_c = settle(&mut c, 20);
        for (outs, from, dst) in [(out_b, "b", &mut c), (out_c, "c", &mut b)] {
            for o in outs {
                let from = NodeId::from(from);
                match o {
                    Output::Send { bytes, .. } => {
                        seeds.push(bytes.clone());
                        moved = true;
                        dst.handle(
                            Now::at(20),
                            Input::SyncRequest {
                                from,
                                id: SyncRef(0),
                                bytes,
                            },
                        );
                    }
                    Output::Respond { bytes, .. } => {
                        seeds.push(bytes.clone());
                        moved = true;
                        dst.handle(Now::at(20), Input::SyncResponse { from, bytes });
                    }
                    Output::Probe { bytes, .. } => seeds.push(bytes),
                    _ => {}
                }
            }
        }
        if !moved {
            break;
        }
    }
    seeds
}

/// Feeds `bytes` to `e` as peer `x` would send them, as each kind of
/// input a peer can cause.
fn feed_as_peer(e: &mut Engine, at: u64, bytes: &[u8]) {
    let x = NodeId::from("x");
    e.handle(
        Now::at(at),
        Input::Gossip {
            from: x.clone(),
            msg: MsgRef(at),
            bytes: bytes.to_vec(),
        },
    );
    e.handle(
        Now::at(at),
        Input::SyncRequest {
            from: x.clone(),
            id: SyncRef(at),
            bytes: bytes.to_vec(),
        },
    );
    e.handle(
        Now::at(at),
        Input::SyncResponse {
            from: x.clone(),
            bytes: bytes.to_vec(),
        },
    );
    e.handle(
        Now::at(at),
        Input::Probe {
            from: x,
            bytes: bytes.to_vec(),
        },
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// The engine's share of fuzzing, on stable Rust and in every test run:
    /// real peer messages with bytes flipped, cut short or spliced with
    /// another, fed as every kind of peer input. Nothing panics, and the
    /// node still takes and acknowledges a write afterwards.
    #[test]
    fn mangled_peer_messages_never_panic_and_the_node_keeps_working(
        pick in 0usize..1000,
        other in 0usize..1000,
        flips in proptest::collection::vec((0usize..100_000, 1u8..=255), 0..6),
        cut in proptest::option::of(0usize..100_000),
        splice in proptest::bool::ANY,
    ) {
        thread_local! {
            static SEEDS: Vec<Vec<u8>> = peer_messages();
        }
        let mut bytes = SEEDS.with(|s| s[pick % s.len()].clone());
        if splice {
            let tail = SEEDS.with(|s| s[other % s.len()].clone());
            let at = other % (bytes.len() + 1);
            bytes.truncate(at);
            bytes.extend_from_slice(&tail[tail.len() / 2..]);
        }
        for (at, mask) in flips {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= mask;
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let mut a = engine("a");
        settle(&mut a, 1);
        feed_as_peer(&mut a, 5, &bytes);
        settle(&mut a, 5);
        a.handle(Now::at(6), Input::Command(ReqId(77), put("after", "k", 1)));
        let out = settle(&mut a, 6);
        proptest::prop_assert!(
            out.iter().any(|o| matches!(o, Output::Reply(ReqId(77), Ok(_)))),
            "the node no longer acknowledges a write"
        );
    }
}

#[test]
fn the_mangling_seeds_hold_every_kind_of_peer_message() {
    let seeds = peer_messages();
    let lim = usize::MAX;
    let gossip = seeds
        .iter()
        .filter(|b| wire::decode::<wire::Gossip>(b, lim).is_ok())
        .count();
    let requests = seeds
        .iter()
        .filter(|b| wire::decode::<wire::SyncRequest>(b, lim).is_ok())
        .count();
    let answers = seeds
        .iter()
        .filter(|b| wire::decode::<wire::SyncResponse>(b, lim).is_ok())
        .count();
    assert!(
        gossip >= 1 && requests >= 2 && answers >= 2,
        "{gossip} gossip, {requests} requests, {answers} answers of {}",
        seeds.len()
    );
}
