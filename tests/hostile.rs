//! A hostile peer that holds the cluster secret (an insider, or a stolen
//! secret) against a real node process: messages it forges or garbles are
//! dropped and counted, and change nothing.

mod common;

use common::{poll_until, poll_until_or, start_env, Proc};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::request_response;
use libp2p::{Multiaddr, Swarm};
use shoal::core::task::TaskStatus;
use shoal::runtime::identity::ClusterSecret;
use shoal::runtime::net::{SyncCodec, SYNC_PROTOCOL};
use std::time::Duration;

const SECRET: &str = "7a0a1f4c3b2d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

/// A bare gossipsub peer on Shoal's own TCP transport (pnet with the
/// secret, noise, yamux): it gets past the private network, then misbehaves.
fn hostile(
    authenticity: MessageAuthenticity,
    validation: ValidationMode,
) -> Swarm<gossipsub::Behaviour> {
    let cfg = gossipsub::ConfigBuilder::default()
        .validation_mode(validation)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        .build()
        .unwrap();
    on_shoal_transport(gossipsub::Behaviour::new(authenticity, cfg).unwrap())
}

/// A swarm of a fresh identity running `behaviour` on Shoal's own TCP
/// transport, with the federation's secret.
fn on_shoal_transport<B: libp2p::swarm::NetworkBehaviour>(behaviour: B) -> Swarm<B> {
    let secret = ClusterSecret::parse(SECRET, "test").unwrap();
    libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
        .with_tokio()
        .with_other_transport(|key| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(shoal::runtime::net::tcp_transport(
                key, &secret,
            )?)
        })
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Connects to `node`, waits until it has subscribed us to its state topic,
/// then publishes each of `messages` to it.
async fn publish_to(node: &Proc, mut swarm: Swarm<gossipsub::Behaviour>, messages: Vec<Vec<u8>>) {
    let topic = IdentTopic::new(shoal::runtime::net::STATE_TOPIC);
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    let addr: Multiaddr = node.p2p.parse().unwrap();
    swarm.dial(addr).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("the node to subscribe us to its topic within 30 s");
        if let libp2p::swarm::SwarmEvent::Behaviour(gossipsub::Event::Subscribed { .. }) = event {
            break;
        }
    }
    for m in messages {
        swarm.behaviour_mut().publish(topic.clone(), m).unwrap();
    }
    // Keep the connection up while the messages go out.
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::timeout_at(until, swarm.select_next_some())
        .await
        .is_ok()
    {}
}

fn node(dir: &std::path::Path) -> Proc {
    let p = start_env(dir, &["--name", "target"], &[("SHOAL_SECRET", SECRET)]);
    p.put("/v1/kv/facts/a", &serde_json::json!("before"));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_in_another_envelope_is_rejected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = tokio::task::block_in_place(|| node(&dir.path().join("n")));
    let digest = p.digest();
    // Shoal's gossip is anonymous at the gossipsub layer (what it carries
    // is signed by its writers): a message with gossipsub's own source,
    // sequence number and signature, as nodes before it sent, is refused by
    // gossipsub before the node sees it.
    let signed = hostile(
        MessageAuthenticity::Signed(Keypair::generate_ed25519()),
        ValidationMode::Strict,
    );
    let messages = (0..5u8).map(|i| vec![2, i, 0, 0, 0]).collect();
    publish_to(&p, signed, messages).await;
    let rejected = tokio::task::block_in_place(|| {
        poll_until(
            Duration::from_secs(20),
            "the node to count invalid messages",
            || {
                let n = p.metric("shoal_gossipsub_invalid_messages_per_topic_total");
                (n >= 1.0).then_some(n)
            },
        )
    });
    assert!(rejected >= 1.0);
    tokio::task::block_in_place(|| {
        assert_eq!(p.digest(), digest, "a refused message changed the state");
        assert_eq!(
            p.get("/v1/nodes")["count"],
            1,
            "the hostile peer became a member"
        );
        assert_eq!(
            p.metric("shoal_network_events_total{value=\"gossip_received\"}"),
            0.0
        );
    });
}

/// The sum of every series of a metric (all label sets).
fn metric_sum(p: &Proc, name: &str) -> f64 {
    let text = ureq::get(&p.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_forgeries_are_dropped_as_malformed_not_forwarded_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (p, q) = tokio::task::block_in_place(|| {
        let p = node(&dir.path().join("n"));
        let q = start_env(
            &dir.path().join("q"),
            &["--name", "honest", "--bootstrap", p.p2p.as_str()],
            &[("SHOAL_SECRET", SECRET)],
        );
        // q in p's gossip mesh: what p forwards, q gets.
        poll_until(Duration::from_secs(30), "q in p's gossip mesh", || {
            (metric_sum(&p, "shoal_gossipsub_mesh_peer_counts") >= 1.0).then_some(())
        });
        (p, q)
    });
    // A task no node can run: it stays pending on p.
    let task = tokio::task::block_in_place(|| {
        p.post(
            "/v1/tasks",
            &serde_json::json!({"capability": "nobody", "payload": {"n": 1}}),
        )["id"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let digest = tokio::task::block_in_place(|| wait_equal_digests(&p, &q));
    let q_before = tokio::task::block_in_place(|| p.get(&format!("/v1/nodes/{}", q.id)));
    assert_eq!(q_before["status"], "alive");
    let task_before = tokio::task::block_in_place(|| p.get(&format!("/v1/tasks/{task}")));
    let messages: Vec<Vec<u8>> = vec![
        b"not a shoal message".to_vec(),
        vec![1, 0, 0, 0],                // an old wire version
        vec![2, 0xff, 0xff, 0xff, 0x7f], // announces a huge decompressed size
        vec![2, 8, 0, 0, 0, 1, 2, 3, 4], // truncated LZ4
        // A sound envelope around bytes that are no Gossip message.
        [
            &[shoal::core::wire::WIRE_VERSION][..],
            &lz4_flex::block::compress_prepend_size(&[0xff; 40]),
        ]
        .concat(),
        // Well-formed messages with an unsound delta: a policy for the empty
        // namespace (this one made the store commit panic on every node it
        // reached), and a knowledge entry with an empty key.
        unsound(shoal::core::state::Delta::Policy {
            ns: String::new(),
            policy: crdts::LWWReg {
                val: shoal::core::knowledge::Policy::Mv,
                marker: (
                    shoal::core::ids::Millis(1),
                    shoal::core::ids::NodeId::from("x"),
                ),
            },
        }),
        unsound(shoal::core::state::Delta::Kv {
            ns: "facts".into(),
            key: String::new(),
            entry: Default::default(),
        }),
        // Member records in another node's name (writer binding): q's own
        // record declaring it dead at the highest incarnation, signed by
        // the sender; and a "verdict" on q that rewrites its addresses and
        // capabilities, signed by the sender as itself.
        forged_member(&q.id, false, |r| {
            r.status = shoal::core::member::MemberStatus::Dead;
            r.incarnation = u64::MAX - 1;
        }),
        forged_member(&q.id, true, |r| {
            r.status = shoal::core::member::MemberStatus::Dead;
            r.addrs = vec!["/ip4/127.0.0.1/tcp/1".into()];
            r.capabilities = vec!["shell".into()];
        }),
        // Tasks (writer binding): p's task with its payload swapped, in
        // p's name; a result of a task of the sender's own that names p as
        // the node that ran it; a cancel of it written in p's name.
        forged_task(&task, &p.id, &p.id, TaskStatus::Pending, None),
        forged_task("f0000001", "", "", TaskStatus::Succeeded, Some(&p.id)),
        forged_task("f0000002", "", &p.id, TaskStatus::Cancelled, None),
    ];
    let sent = messages.len() as f64;
    // One hostile identity per message: the first rejected message graylists
    // its sender, and gossipsub then ignores what else it sends.
    for m in messages {
        let peer = hostile(MessageAuthenticity::Anonymous, ValidationMode::Anonymous);
        publish_to(&p, peer, vec![m]).await;
    }
    tokio::task::block_in_place(|| {
        poll_until(
            Duration::from_secs(20),
            "every message to be dropped as malformed",
            || (p.metric("shoal_dropped_total{value=\"gossip_malformed\"}") == sent).then_some(()),
        );
        assert_eq!(
            metric_sum(&p, "shoal_gossipsub_rejected_messages_per_topic"),
            sent,
            "each was reported to gossipsub as rejected (which scores its sender)"
        );
        assert_eq!(p.digest(), digest, "a malformed message changed the state");
        let q_after = p.get(&format!("/v1/nodes/{}", q.id));
        assert_eq!(q_after["status"], "alive", "a forged verdict was applied");
        assert_eq!(q_after["capabilities"], q_before["capabilities"]);
        assert_eq!(q_after["addrs"], q_before["addrs"]);
        assert_eq!(p.get("/v1/kv/facts/a")["value"], "before");
        assert_eq!(p.get(&format!("/v1/tasks/{task}")), task_before);
        for forged in ["f0000001", "f0000002"] {
            assert_eq!(p.req("GET", &format!("/v1/tasks/{forged}"), None).0, 404);
        }
        let log = std::fs::read_to_string(&p.stderr_path).unwrap();
        assert_eq!(
            log.matches("dropped a malformed gossip message").count(),
            sent as usize,
            "logged once per peer, with its reason"
        );
        // A barrier: p's next change reaches q on the same gossip stream as
        // anything p forwarded before it.
        p.put("/v1/kv/facts/b", &serde_json::json!("after"));
        poll_until(Duration::from_secs(20), "p's new write on q", || {
            let (code, v) = q.req("GET", "/v1/kv/facts/b", None);
            (code == 200 && v["value"] == "after").then_some(())
        });
        assert_eq!(
            q.metric("shoal_dropped_total{value=\"gossip_malformed\"}"),
            0.0,
            "p forwarded malformed messages to q"
        );
    });
}

/// A gossip message carrying node `victim`'s member record, changed by
/// `edit` and signed by a hostile identity: written in the victim's name,
/// or (`as_itself`) as the hostile node's verdict.
fn forged_member(
    victim: &str,
    as_itself: bool,
    edit: impl FnOnce(&mut shoal::core::member::MemberRecord),
) -> Vec<u8> {
    use shoal::core::ids::NodeId;
    let hostile = Keypair::ed25519_from_bytes([9; 32]).unwrap();
    let hostile = NodeId::from(hostile.public().to_peer_id().to_string());
    let victim = NodeId::from(victim);
    let writer = if as_itself { hostile } else { victim.clone() };
    let mut record = shoal::core::member::MemberRecord {
        name: "honest".into(),
        incarnation: 1,
        ..Default::default()
    };
    edit(&mut record);
    let mut entry = shoal::core::member::MemberEntry::default();
    let keys = shoal::core::sign::Keys::ed25519([9; 32]);
    entry.write(&victim, record, &writer, &keys);
    unsound(shoal::core::state::Delta::Member(victim, Box::new(entry)))
}

/// A gossip message carrying a task `id` with a swapped payload: submitted
/// by `submitter`, its state written by `writer` (the hostile node itself
/// for ""), everything signed by the hostile node.
fn forged_task(
    id: &str,
    submitter: &str,
    writer: &str,
    status: TaskStatus,
    node: Option<&str>,
) -> Vec<u8> {
    use shoal::core::ids::{Millis, NodeId, TaskId};
    let hostile = Keypair::ed25519_from_bytes([9; 32]).unwrap();
    let hostile = NodeId::from(hostile.public().to_peer_id().to_string());
    let named = |s: &str| {
        if s.is_empty() {
            hostile.clone()
        } else {
            NodeId::from(s)
        }
    };
    let keys = shoal::core::sign::Keys::ed25519([9; 32]);
    let id = TaskId(id.into());
    let spec = shoal::core::task::TaskSpec {
        capability: "nobody".into(),
        payload: "{\"rm\":\"-rf\"}".into(),
        max_attempts: 1,
        timeout_secs: 10,
        submitted_by: named(submitter),
        submitted_at: Millis(1),
        ..Default::default()
    };
    let mut entry = shoal::core::task::TaskEntry::new(&id, spec, &keys);
    let state = shoal::core::task::TaskState {
        status,
        node: node.map(NodeId::from),
        result: (status == TaskStatus::Succeeded).then(|| "\"forged\"".into()),
        updated_at: Millis(2),
        ..Default::default()
    };
    assert!(entry.transition(&id, state, "forged", &named(writer), &keys));
    unsound(shoal::core::state::Delta::Task(id, Box::new(entry)))
}

/// A well-formed gossip message carrying one delta.
fn unsound(d: shoal::core::state::Delta) -> Vec<u8> {
    shoal::core::wire::gossip_chunks([&d], shoal::core::wire::MAX_GOSSIP_BYTES).remove(0)
}

fn wait_equal_digests(p: &Proc, q: &Proc) -> String {
    poll_until_or(
        Duration::from_secs(30),
        "equal digests",
        || {
            let d = p.digest();
            (d == q.digest()).then_some(d)
        },
        || {
            let show = |n: &Proc| {
                let log = std::fs::read_to_string(&n.stderr_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "{}: metrics {}\nstats {}\nnodes {}\ntasks {}\nlog (last lines, newest first):\n{}",
                    n.id,
                    common::metric_lines(n, &["sync", "refused", "divergence", "drop", "peers", "malformed"]),
                    n.get("/v1/cluster/stats"),
                    n.get("/v1/nodes"),
                    n.get("/v1/tasks"),
                    tail.join("\n")
                )
            };
            format!("{}\n\n{}", show(p), show(q))
        },
    )
}

/// A bare client of Shoal's anti-entropy protocol on its own transport.
fn sync_client() -> Swarm<request_response::Behaviour<SyncCodec>> {
    on_shoal_transport(request_response::Behaviour::with_codec(
        SyncCodec::default(),
        [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_sync_requests_is_held_to_its_rate_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = tokio::task::block_in_place(|| node(&dir.path().join("n")));
    let digest = p.digest();
    let mut swarm = sync_client();
    let addr: Multiaddr = p.p2p.parse().unwrap();
    let target = p.id.parse::<libp2p::PeerId>().unwrap();
    swarm.dial(addr).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("a connection within 30 s");
        if let libp2p::swarm::SwarmEvent::ConnectionEstablished { .. } = event {
            break;
        }
    }
    // Far more than the burst (100), in much less than the seconds the
    // rate (50 a second) would need.
    const SENT: usize = 300;
    let summary = shoal::core::wire::encode(&shoal::core::wire::SyncRequest::Summary);
    for _ in 0..SENT {
        swarm.behaviour_mut().send_request(&target, summary.clone());
    }
    let started = std::time::Instant::now();
    let (mut answered, mut failed) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered + failed < SENT {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .expect("every request answered or failed within 60 s");
        match event {
            libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            }) => answered += 1,
            libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                ..
            }) => failed += 1,
            _ => {}
        }
    }
    // The burst, and the rate over the time it took (a margin for the
    // clock's granularity); the rest failed (refused by the limit, or past
    // libp2p's 100 concurrent streams per connection).
    let allowed = 100 + (50.0 * started.elapsed().as_secs_f64()) as usize + 5;
    assert!(
        (50..=allowed).contains(&answered),
        "{answered} answered, {allowed} allowed"
    );
    tokio::task::block_in_place(|| {
        let limited = p.metric("shoal_dropped_total{value=\"sync_rate_limited\"}");
        assert!(limited >= 1.0, "{limited} counted, {failed} failed");
        // The node still serves, its state unchanged.
        assert_eq!(p.digest(), digest);
        assert_eq!(p.get("/v1/kv/facts/a")["value"], "before");
    });
}
