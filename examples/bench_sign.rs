//! What binding records to their writers costs: signing a member record
//! version and checking one, and a task's life (submitted, placed, started,
//! finished: each step signed) and checking it whole or one step at a time,
//! with real ed25519 keys (a node's) and with the simulator's keyed hash.
//!
//! `cargo run --release --example bench_sign [N]`

use shoal::core::ids::{Fence, Millis, NodeId, TaskId, Term};
use shoal::core::member::{MemberEntry, MemberRecord, MemberStatus};
use shoal::core::sign::Keys;
use shoal::core::task::{TaskEntry, TaskSpec, TaskState, TaskStatus};
use std::time::Instant;

fn record(i: u64) -> MemberRecord {
    MemberRecord {
        name: format!("node-{i}"),
        addrs: vec![
            "/ip4/127.0.0.1/tcp/7000".into(),
            "/ip4/127.0.0.1/udp/7000/quic-v1".into(),
        ],
        api: Some("127.0.0.1:7070".into()),
        capabilities: vec!["echo".into(), "shell".into()],
        capacity: 4,
        incarnation: 1 + i,
        ..Default::default()
    }
}

fn run(what: &str, (id, keys): (NodeId, Keys), (x, x_keys): (NodeId, Keys), n: u64) {
    let t = Instant::now();
    let mut entries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut e = MemberEntry::default();
        e.write(&id, record(i), &id, &keys);
        entries.push(e);
    }
    let sign = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for e in &entries {
        assert!(e.check(&id, &keys).is_ok());
    }
    let check = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    // A verdict carries two signatures to check.
    let mut verdicts = entries.clone();
    for e in &mut verdicts {
        let mut r = e.record().clone();
        r.status = MemberStatus::Dead;
        e.write(&id, r, &x, &x_keys);
    }
    let t = Instant::now();
    let ok = verdicts
        .iter()
        .filter(|e| e.check(&id, &keys).is_ok())
        .count();
    let verdict = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "{what}: write (sign) {sign:.1} µs, check own {check:.1} µs, check verdict {verdict:.1} µs ({ok} of {n} verdicts checked)"
    );
}

/// A task's life: submitted by `s` and placed on `a` (one step, as a
/// submitter that places at once does), started and finished by `a`. Prints
/// the signing cost per task, and the check of a whole new task and of one
/// new step against the entry a node already holds.
fn tasks(what: &str, (s, sk): (NodeId, Keys), (a, ak): (NodeId, Keys), n: u64) {
    let step = |status, seq| TaskState {
        status,
        node: Some(a.clone()),
        attempt: 1,
        fence: Fence { term: Term(1), seq },
        updated_at: Millis(seq),
        ..TaskState::default()
    };
    let t = Instant::now();
    let mut lives = Vec::with_capacity(n as usize);
    for i in 0..n {
        let id = TaskId(format!("{i:022x}"));
        let spec = TaskSpec {
            capability: "echo".into(),
            payload: format!("{{\"n\":{i}}}"),
            max_attempts: 3,
            timeout_secs: 30,
            submitted_by: s.clone(),
            submitted_at: Millis(i),
            ..TaskSpec::default()
        };
        let mut e = TaskEntry::new(&id, spec, &sk);
        e.transition(&id, step(TaskStatus::Assigned, 1), "submitted", &s, &sk);
        let placed = e.clone();
        e.transition(&id, step(TaskStatus::Running, 1), "started", &a, &ak);
        e.transition(&id, step(TaskStatus::Succeeded, 1), "succeeded", &a, &ak);
        lives.push((id, placed, e));
    }
    let sign = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for (id, placed, _) in &lives {
        assert!(placed.check(id, &sk, None).is_ok());
    }
    let whole = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for (id, placed, done) in &lives {
        assert!(done.check(id, &sk, Some(placed)).is_ok());
    }
    let steps = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "{what} tasks: a life of three writes signed {sign:.1} µs, a new task checked {whole:.1} µs, two new steps checked against the known entry {steps:.1} µs"
    );
}

/// A real node: an ed25519 key and its peer id (as libp2p derives it).
fn real(secret: [u8; 32]) -> (NodeId, Keys) {
    let public = ed25519_dalek::SigningKey::from_bytes(&secret)
        .verifying_key()
        .to_bytes();
    let mut mh = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    mh.extend_from_slice(&public);
    (
        NodeId::from(bs58::encode(mh).into_string()),
        Keys::ed25519(secret),
    )
}

fn sim(id: &str) -> (NodeId, Keys) {
    let id = NodeId::from(id);
    let keys = Keys::sim(&id);
    (id, keys)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    run("ed25519", real([7; 32]), real([8; 32]), n);
    run("simulator", sim("sim00001"), sim("sim00002"), n);
    tasks("ed25519", real([7; 32]), real([8; 32]), n);
    tasks("simulator", sim("sim00001"), sim("sim00002"), n);
}
