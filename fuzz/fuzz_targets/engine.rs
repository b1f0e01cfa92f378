//! A node's engine fed a peer's bytes as every kind of peer input (gossip,
//! a sync request, a sync answer, a probe): it must not panic, and must
//! still acknowledge a write afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::core::engine::{
    Command, Engine, EngineConfig, Input, MsgRef, Output, ProtocolConfig, ReqId, SyncRef,
};
use shoal::core::ids::{NodeId, Now};
use shoal::core::lease::ControlConfig;
use shoal::core::member::MemberRecord;
use shoal::core::replica::ReplicaConfig;
use shoal::core::sign::Keys;
use shoal::core::state::ReplicatedState;

fn engine() -> Engine {
    let me = NodeId::from("a");
    let cfg = EngineConfig {
        replica: ReplicaConfig {
            node: me.clone(),
            record: MemberRecord {
                name: "a".into(),
                capabilities: vec!["echo".into()],
                capacity: 4,
                ..MemberRecord::default()
            },
            handlers: ["echo".to_string()].into(),
            claim_ttl_ms: 1_000,
            failure: Default::default(),
            keys: Keys::sim(&me),
        },
        protocol: ProtocolConfig::default(),
        control: ControlConfig::for_probe_interval(500, 3, 1),
    };
    let mut e = Engine::new(cfg, ReplicatedState::default(), 7);
    e.handle(Now::at(1), Input::Start);
    e
}

/// Confirms every persist at once; returns the other outputs.
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

fuzz_target!(|data: &[u8]| {
    let mut e = engine();
    settle(&mut e, 1);
    let x = NodeId::from("x");
    let inputs = [
        Input::Gossip {
            from: x.clone(),
            msg: MsgRef(1),
            bytes: data.to_vec(),
        },
        Input::SyncRequest {
            from: x.clone(),
            id: SyncRef(1),
            bytes: data.to_vec(),
        },
        Input::SyncResponse {
            from: x.clone(),
            bytes: data.to_vec(),
        },
        Input::Probe {
            from: x,
            bytes: data.to_vec(),
        },
    ];
    for input in inputs {
        e.handle(Now::at(5), input);
        settle(&mut e, 5);
    }
    e.handle(
        Now::at(6),
        Input::Command(
            ReqId(1),
            Command::KvPut {
                ns: "after".into(),
                key: "k".into(),
                value: serde_json::json!(1),
            },
        ),
    );
    let acked = settle(&mut e, 6)
        .iter()
        .any(|o| matches!(o, Output::Reply(ReqId(1), Ok(_))));
    assert!(acked, "the node no longer acknowledges a write");
});
