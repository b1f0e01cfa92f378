//! Replica tests: drive engines by hand, no IO.

use super::*;
use crate::core::ids::Now;
use crate::core::knowledge::Policy;
use crate::core::member::MemberRecord;
use crate::core::replica::tasks::Outcome;
use crate::core::EngineError;

fn engine(node: &str, caps: &[&str], handlers: &[&str], capacity: u32) -> Replica {
    let cfg = ReplicaConfig {
        node: NodeId::from(node),
        record: MemberRecord {
            name: node.into(),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            capacity,
            ..MemberRecord::default()
        },
        handlers: handlers.iter().map(|s| s.to_string()).collect(),
        claim_ttl_ms: 1_000,
        failure: Default::default(),
        keys: crate::core::sign::Keys::sim(&NodeId::from(node)),
    };
    let mut e = Replica::new(cfg, ReplicatedState::default(), 7);
    e.start(Millis(1));
    e.take_effects();
    e
}

fn submit(e: &mut Replica, cap: &str, key: Option<&str>) -> TaskId {
    e.set_clock(Now::at(10));
    e.submit(
        Millis(10),
        SubmitRequest {
            capability: cap.into(),
            payload: serde_json::json!({"x": 1}),
            key: key.map(str::to_owned),
            max_attempts: Some(2),
            timeout_secs: Some(5),
            ..SubmitRequest::default()
        },
    )
    .unwrap()
    .0
}

fn starts(outputs: &[Effect]) -> Vec<StartTask> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Effect::Start(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn handler_task_runs_and_succeeds_with_one_durable_delta_per_change() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    let id = submit(&mut e, "echo", None);
    let out = e.take_effects();
    let s = starts(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].id, id);
    assert!(out
        .iter()
        .any(|o| matches!(o, Effect::Changed(Delta::Task(t, _)) if t == &id)));
    assert_eq!(e.state().tasks[&id].state().status, TaskStatus::Running);
    e.complete(Millis(20), &id, s[0].fence, Outcome::Success("42".into()))
        .unwrap();
    let t = &e.state().tasks[&id];
    assert_eq!(t.state().status, TaskStatus::Succeeded);
    assert_eq!(t.state().result.as_deref(), Some("42"));
    let statuses: Vec<_> = t.history().iter().map(|h| h.status).collect();
    assert!(statuses.contains(&TaskStatus::Assigned) && statuses.contains(&TaskStatus::Succeeded));
}

#[test]
fn same_idempotency_key_gives_the_same_task() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    let a = submit(&mut e, "echo", Some("k1"));
    let (b, created) = e
        .submit(
            Millis(11),
            SubmitRequest {
                capability: "echo".into(),
                key: Some("k1".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a, b);
    assert!(!created);
    assert_eq!(e.state().tasks.len(), 1);
}

#[test]
fn task_without_capable_node_waits_pending_with_a_reason() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    let id = submit(&mut e, "gpu", None);
    let st = e.state().tasks[&id].state().clone();
    assert_eq!(st.status, TaskStatus::Pending);
    assert!(st
        .reason
        .unwrap()
        .contains("no alive node offers capability `gpu`"));
}

#[test]
fn failure_retries_with_a_new_fence_until_attempts_run_out() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    let id = submit(&mut e, "echo", None);
    let first = starts(&e.take_effects())[0].clone();
    e.complete(
        Millis(20),
        &id,
        first.fence,
        Outcome::Failure("boom".into()),
    )
    .unwrap();
    let second = starts(&e.take_effects())[0].clone();
    assert!(second.fence > first.fence);
    assert_eq!(second.attempt, 2);
    // the old fence is refused
    let err = e
        .complete(
            Millis(21),
            &id,
            first.fence,
            Outcome::Success("late".into()),
        )
        .unwrap_err();
    assert!(matches!(err, EngineError::StaleFence { .. }));
    e.complete(
        Millis(22),
        &id,
        second.fence,
        Outcome::Failure("boom again".into()),
    )
    .unwrap();
    let st = e.state().tasks[&id].state().clone();
    assert_eq!(st.status, TaskStatus::Failed);
    assert_eq!(st.error.as_deref(), Some("boom again"));
}

#[test]
fn timeout_aborts_and_fails_the_attempt() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    let id = submit(&mut e, "echo", None);
    e.take_effects();
    e.set_clock(Now::at(10 + 5_000));
    e.tick(Millis(10 + 5_000));
    let out = e.take_effects();
    assert!(out
        .iter()
        .any(|o| matches!(o, Effect::Abort { task, .. } if task == &id)));
    let st = e.state().tasks[&id].state().clone();
    assert_eq!(st.attempt, 2);
    assert!(st.error.unwrap().contains("timed out"));
}

#[test]
fn worker_claim_heartbeat_complete_and_expired_claim_is_given_back() {
    let mut e = engine("n1", &["ocr"], &[], 4);
    let id = submit(&mut e, "ocr", None);
    assert!(e
        .take_effects()
        .iter()
        .any(|o| matches!(o, Effect::WorkAvailable)));
    assert!(e
        .claim(Millis(11), "w1", &["other".into()])
        .unwrap()
        .is_none());
    e.set_clock(Now::at(11));
    let c = e.claim(Millis(11), "w1", &["ocr".into()]).unwrap().unwrap();
    assert_eq!(c.id, id);
    e.set_clock(Now::at(900));
    e.heartbeat(Millis(900), &id, c.fence).unwrap();
    // still alive at 1_800 thanks to the heartbeat; expired at 1_901
    e.set_clock(Now::at(1_800));
    e.tick(Millis(1_800));
    assert_eq!(e.state().tasks[&id].state().status, TaskStatus::Running);
    e.set_clock(Now::at(1_901));
    e.tick(Millis(1_901));
    let st = e.state().tasks[&id].state().clone();
    assert_eq!(st.status, TaskStatus::Assigned);
    assert!(st.error.unwrap().contains("stopped heartbeating"));
    // the first worker's late result is refused
    assert!(e
        .complete(Millis(1_902), &id, c.fence, Outcome::Success("1".into()))
        .is_err());
    let c2 = e
        .claim(Millis(1_903), "w2", &["ocr".into()])
        .unwrap()
        .unwrap();
    e.complete(
        Millis(1_904),
        &id,
        c2.fence,
        Outcome::Success("\"ok\"".into()),
    )
    .unwrap();
    assert_eq!(e.state().tasks[&id].state().status, TaskStatus::Succeeded);
}

#[test]
fn cancel_aborts_a_running_task_and_refuses_a_finished_one() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    let id = submit(&mut e, "echo", None);
    let s = starts(&e.take_effects())[0].clone();
    e.cancel(Millis(12), &id).unwrap();
    assert!(e
        .take_effects()
        .iter()
        .any(|o| matches!(o, Effect::Abort { task, .. } if task == &id)));
    assert!(matches!(
        e.cancel(Millis(13), &id),
        Err(EngineError::Conflict(_))
    ));
    assert!(e
        .complete(Millis(14), &id, s.fence, Outcome::Success("1".into()))
        .is_err());
    assert_eq!(e.state().tasks[&id].state().status, TaskStatus::Cancelled);
}

#[test]
fn capacity_limits_running_handlers_and_queue_drains_in_order() {
    let mut e = engine("n1", &["echo"], &["echo"], 1);
    let a = submit(&mut e, "echo", None);
    let b = submit(&mut e, "echo", None);
    let s = starts(&e.take_effects());
    assert_eq!(s.len(), 1);
    assert_eq!(e.state().tasks[&b].state().status, TaskStatus::Pending);
    e.complete(Millis(20), &a, s[0].fence, Outcome::Success("1".into()))
        .unwrap();
    e.tick(Millis(21));
    let s2 = starts(&e.take_effects());
    assert_eq!(s2.len(), 1);
    assert_eq!(s2[0].id, b);
}

#[test]
fn restart_retries_tasks_that_were_running() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    let id = submit(&mut e, "echo", None);
    e.take_effects();
    let state = e.state().clone();
    // Held after the restart (the holder may have moved it meanwhile),
    // then retried once this node has caught up with the holder.
    let mut e2 = Replica::new(e.cfg.clone(), state.clone(), 8);
    e2.set_clock(Now::at(100));
    e2.start(Millis(100));
    assert!(
        starts(&e2.take_effects()).is_empty(),
        "held until caught up"
    );
    assert!(e2.is_holding());
    e2.caught_up(Millis(150));
    let s = starts(&e2.take_effects());
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].attempt, 2);
    assert!(e2.state().members[&NodeId::from("n1")].marker().incarnation >= 2);
    assert_eq!(e2.state().tasks[&id].state().status, TaskStatus::Running);

    // With no holder to catch up with, after ten probe intervals.
    let mut e3 = Replica::new(e.cfg.clone(), state, 9);
    e3.set_clock(Now::at(100));
    e3.start(Millis(100));
    e3.set_clock(Now::at(5_000));
    e3.tick(Millis(5_000));
    assert!(starts(&e3.take_effects()).is_empty(), "4.9 s is not 5");
    e3.set_clock(Now::at(5_100));
    e3.tick(Millis(5_100));
    assert_eq!(starts(&e3.take_effects()).len(), 1);
}

#[test]
fn a_fresh_start_holds_nothing() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    assert!(!e.is_holding());
    submit(&mut e, "echo", None);
    assert_eq!(starts(&e.take_effects()).len(), 1);
}

#[test]
fn kv_policies_since_and_reserved_namespace() {
    let mut e = engine("n1", &[], &[], 1);
    e.set_policy(Millis(1), "tags", Policy::Set).unwrap();
    e.kv_put(Millis(2), "tags", "colors", &serde_json::json!(["red"]))
        .unwrap();
    let item = e
        .kv_put(Millis(3), "tags", "colors", &serde_json::json!("blue"))
        .unwrap()
        .resolve("tags", "colors")
        .unwrap();
    assert_eq!(item.value, "[\"blue\",\"red\"]");
    let first = e.kv_list("tags", None, KvPage::ALL);
    e.kv_put(Millis(4), "tags", "shapes", &serde_json::json!("square"))
        .unwrap();
    let later = e.kv_list("tags", Some(&first.version), KvPage::ALL);
    assert_eq!(later.items.len(), 1);
    assert_eq!(later.items[0].key, "shapes");
    assert_ne!(first.digest, later.digest);
    // Paged: one key at a time, in key order, each page naming the next.
    let page = e.kv_list(
        "tags",
        None,
        KvPage {
            after: None,
            limit: 1,
        },
    );
    assert_eq!(page.items[0].key, "colors");
    assert_eq!(page.next.as_deref(), Some("colors"));
    let page = e.kv_list(
        "tags",
        None,
        KvPage {
            after: Some("colors"),
            limit: 1,
        },
    );
    assert_eq!(page.items[0].key, "shapes");
    assert_eq!(page.next, None);
    assert!(matches!(
        e.kv_put(Millis(5), RESERVED_NS, "x", &serde_json::json!(1)),
        Err(EngineError::Invalid(_))
    ));
    assert!(matches!(
        e.kv_get("tags", "nope"),
        Err(EngineError::NotFound { .. })
    ));
    e.kv_del(Millis(6), "tags", "colors").unwrap();
    assert!(e.kv_get("tags", "colors").is_err());
    assert!(e.kv_del(Millis(7), "tags", "colors").is_err());
}

#[test]
fn default_strategy_is_replicated_setting() {
    let mut e = engine("n1", &[], &[], 1);
    assert_eq!(e.default_strategy(), Strategy::LeastLoaded);
    e.set_default_strategy(Millis(2), Strategy::Hash);
    assert_eq!(e.default_strategy(), Strategy::Hash);
    assert!(e
        .take_effects()
        .iter()
        .any(|o| matches!(o, Effect::Changed(Delta::Kv { ns, .. }) if ns == RESERVED_NS)));
}

#[test]
fn two_engines_converge_by_exchanging_deltas() {
    let mut a = engine("a", &["echo"], &["echo"], 4);
    let mut b = engine("b", &["echo"], &["echo"], 4);
    a.kv_put(Millis(5), "notes", "k", &serde_json::json!("from a"))
        .unwrap();
    b.kv_put(Millis(6), "notes", "k", &serde_json::json!("from b"))
        .unwrap();
    submit(&mut a, "echo", None);
    let deltas = |e: &mut Replica| -> Vec<Delta> {
        e.take_effects()
            .into_iter()
            .filter_map(|o| match o {
                Effect::Changed(d) => Some(d),
                _ => None,
            })
            .collect()
    };
    let (da, db) = (deltas(&mut a), deltas(&mut b));
    for d in db {
        a.apply_remote(Millis(7), d);
    }
    for d in da {
        b.apply_remote(Millis(7), d);
    }
    assert_eq!(a.state().digest(), b.state().digest());
    assert_eq!(a.kv_get("notes", "k").unwrap().value, "\"from b\"");
}

#[test]
fn leave_hands_tasks_back_and_a_restart_takes_them_up() {
    let mut e = engine("n1", &["echo"], &["echo"], 4);
    let id = submit(&mut e, "echo", None);
    let s = starts(&e.take_effects())[0].clone();
    e.leave(Millis(30));
    let out = e.take_effects();
    assert!(out
        .iter()
        .any(|o| matches!(o, Effect::Abort { task, .. } if task == &id)));
    let st = e.state().tasks[&id].state().clone();
    assert_eq!(st.status, TaskStatus::Pending);
    assert!(st.fence > s.fence);
    let mut e2 = Replica::new(e.cfg.clone(), e.state().clone(), 9);
    e2.start(Millis(40));
    let again = starts(&e2.take_effects());
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].attempt, 1,
        "a graceful leave does not use up an attempt"
    );
}

/// A member record for `id` as another node would gossip it.
fn member(id: &str, caps: &[&str], status: MemberStatus) -> Delta {
    let mut entry = crate::core::member::MemberEntry::default();
    let node = NodeId::from(id);
    entry.write(
        &node,
        MemberRecord {
            name: id.into(),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            capacity: 4,
            status,
            incarnation: 1,
            ..MemberRecord::default()
        },
        &node,
        &crate::core::sign::Keys::sim(&node),
    );
    Delta::Member(node, Box::new(entry))
}

/// `id`'s record (alive, with capability `echo`) as `by` declared it dead.
fn declared_dead(id: &str, by: &str) -> Delta {
    let mut d = member(id, &["echo"], MemberStatus::Alive);
    if let Delta::Member(_, e) = &mut d {
        let mut r = e.record().clone();
        r.status = MemberStatus::Dead;
        let by = NodeId::from(by);
        e.write(
            &NodeId::from(id),
            r,
            &by,
            &crate::core::sign::Keys::sim(&by),
        );
    }
    d
}

#[test]
fn the_holder_moves_a_dead_nodes_tasks_once_under_its_term() {
    // The holder runs nothing itself; w takes the task, then dies.
    let mut h = engine("h", &[], &[], 4);
    h.apply_remote(Millis(2), member("w", &["echo"], MemberStatus::Alive));
    let id = submit(&mut h, "echo", None);
    assert_eq!(h.task(&id).unwrap().state().node, Some(NodeId::from("w")));
    assert_eq!(
        h.migrate_orphans(Millis(20), Term(3)).moved,
        0,
        "w is alive"
    );
    h.apply_remote(Millis(21), member("v", &["echo"], MemberStatus::Alive));
    h.apply_remote(Millis(22), declared_dead("w", "h"));
    h.take_effects();

    assert_eq!(h.migrate_orphans(Millis(30), Term(3)).moved, 1);
    let st = h.task(&id).unwrap().state().clone();
    assert_eq!(st.node, Some(NodeId::from("v")));
    assert_eq!(st.status, TaskStatus::Assigned);
    assert_eq!(
        st.fence,
        Fence {
            term: Term(3),
            seq: 2
        }
    );
    assert_eq!(st.attempt, 1, "a task that never started keeps its attempt");
    let out = h.take_effects();
    assert!(out
        .iter()
        .any(|o| matches!(o, Effect::Audit(a) if a.action == "task_migrated")));
    assert!(out
        .iter()
        .any(|o| matches!(o, Effect::Event(Event::TaskMigrated { .. }))));
    assert!(h
        .task(&id)
        .unwrap()
        .history()
        .iter()
        .any(|e| e.note.contains("migrated")));

    // Idempotent: nothing more to move.
    assert_eq!(h.migrate_orphans(Millis(31), Term(3)).moved, 0);
    // A stale holder (an older term) never moves what a newer one fenced.
    h.apply_remote(Millis(32), declared_dead("v", "h"));
    let stale = h.migrate_orphans(Millis(33), Term(2));
    assert_eq!(stale.moved, 0);
    // ... and says which term it would have to pass.
    assert_eq!(stale.fenced_above, Some(Term(3)));
    assert_eq!(h.task(&id).unwrap().state().fence.term, Term(3));
}

#[test]
fn the_holder_leaves_alone_a_task_on_a_node_it_has_not_heard_of() {
    // w's task arrives before w's record (a plane that yields brings both,
    // in no set order): w is not unfit until its record says so.
    let mut w = engine("w", &["echo"], &["echo"], 4);
    let id = submit(&mut w, "echo", None);
    let task = w
        .take_effects()
        .into_iter()
        .find_map(|o| match o {
            Effect::Changed(d @ Delta::Task(..)) => Some(d),
            _ => None,
        })
        .unwrap();
    let mut h = engine("h", &["echo"], &[], 4);
    h.apply_remote(Millis(20), task);
    assert_eq!(h.task(&id).unwrap().state().node, Some(NodeId::from("w")));
    assert_eq!(h.migrate_orphans(Millis(21), Term(3)).moved, 0);
    assert_eq!(h.task(&id).unwrap().state().node, Some(NodeId::from("w")));
    h.apply_remote(Millis(22), declared_dead("w", "v"));
    assert_eq!(h.migrate_orphans(Millis(23), Term(3)).moved, 1);
    assert_eq!(h.task(&id).unwrap().state().node, Some(NodeId::from("h")));
}

#[test]
fn the_holder_removes_a_member_gone_for_the_removal_timeout_and_it_comes_back_over_the_tombstone() {
    let mut h = engine("h", &[], &[], 4);
    h.apply_remote(Millis(2), member("w", &["echo"], MemberStatus::Alive));
    h.apply_remote(Millis(3), declared_dead("w", "h"));
    let w = NodeId::from("w");
    let status = |h: &Replica| h.state().members[&w].record().status;
    let at = |h: &mut Replica, ms: u64| {
        h.set_clock(Now::at(ms));
        h.remove_departed(Millis(ms));
    };

    // Not the holder: it never removes.
    at(&mut h, 1_000);
    at(&mut h, 60_000);
    assert_eq!(status(&h), MemberStatus::Dead);

    // The holder counts from when it saw it gone: 10 s in the fast profile.
    h.set_lease(true, Term(2));
    at(&mut h, 61_000);
    at(&mut h, 70_000);
    assert_eq!(status(&h), MemberStatus::Dead, "9 s is not 10");
    h.take_effects();
    at(&mut h, 71_000);
    assert_eq!(status(&h), MemberStatus::Removed);
    assert_eq!(h.member_status(&w), "removed");
    let out = h.take_effects();
    assert!(out
        .iter()
        .any(|o| matches!(o, Effect::Audit(a) if a.action == "node_removed" && a.subject == "w")));
    assert!(out
        .iter()
        .any(|o| matches!(o, Effect::Event(Event::MemberRemoved { node }) if *node == w)));
    // The tombstone is a verdict any node can check.
    let entry = h.state().members[&w].clone();
    assert_eq!(entry.check(&w, h.keys()), Ok(()));
    assert_eq!(entry.marker().writer, NodeId::from("h"));
    // Once is enough.
    at(&mut h, 90_000);
    assert!(h.take_effects().is_empty());

    // w restarts with its store: a higher incarnation beats the tombstone,
    // here and on w itself (it refutes when it hears of it).
    let mut w_node = engine("w", &["echo"], &["echo"], 4);
    w_node.apply_remote(Millis(91_000), Delta::Member(w.clone(), Box::new(entry)));
    let back = w_node.state().members[&w].clone();
    assert_eq!(back.record().status, MemberStatus::Alive);
    assert!(back.marker().incarnation > 1);
    h.apply_remote(Millis(91_001), Delta::Member(w.clone(), Box::new(back)));
    assert_eq!(status(&h), MemberStatus::Alive);
}

#[test]
fn a_member_that_comes_back_before_the_timeout_is_not_removed() {
    let mut h = engine("h", &[], &[], 4);
    let w = NodeId::from("w");
    h.apply_remote(Millis(2), member("w", &["echo"], MemberStatus::Alive));
    h.apply_remote(Millis(3), declared_dead("w", "h"));
    h.set_lease(true, Term(2));
    h.set_clock(Now::at(1_000));
    h.remove_departed(Millis(1_000));
    // Back at a higher incarnation after 5 s, dead again after 8 s: the
    // count starts over.
    let mut back = member("w", &["echo"], MemberStatus::Alive);
    if let Delta::Member(_, e) = &mut back {
        let mut r = e.record().clone();
        r.incarnation = 2;
        e.write(&w, r, &w, &crate::core::sign::Keys::sim(&w));
    }
    h.apply_remote(Millis(6_000), back.clone());
    h.set_clock(Now::at(6_000));
    h.remove_departed(Millis(6_000));
    if let Delta::Member(_, e) = &mut back {
        let mut r = e.record().clone();
        r.status = MemberStatus::Dead;
        e.write(&w, r, &NodeId::from("h"), h.keys());
    }
    h.apply_remote(Millis(8_000), back);
    for ms in [8_000, 12_000, 17_000] {
        h.set_clock(Now::at(ms));
        h.remove_departed(Millis(ms));
    }
    assert_eq!(h.state().members[&w].record().status, MemberStatus::Dead);
    h.set_clock(Now::at(18_000));
    h.remove_departed(Millis(18_000));
    assert_eq!(h.state().members[&w].record().status, MemberStatus::Removed);
}
