//! What binding member records to their writers costs: signing a record
//! version and checking one, with real ed25519 keys (a node's) and with the
//! simulator's keyed hash.
//!
//! `cargo run --release --example bench_sign [N]`

use shoal::core::ids::NodeId;
use shoal::core::member::{MemberEntry, MemberRecord, MemberStatus};
use shoal::core::sign::Keys;
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
}
