//! Federation benchmark: N nodes in one process on loopback (real libp2p
//! sockets, shared tokio runtime on the machine's cores).
//!
//! 1. Propagation: writes on node 0, one every 20 ms; for each, the time until
//!    each other node has merged it durably (its `kv_merged` event), and until
//!    all have.
//! 2. Sustained replicated writes (with `--load`): concurrent writers on node 0
//!    for a few seconds; acknowledged writes/s, then the time until every
//!    node's digest equals node 0's after the load stops; gossip payload bytes
//!    per update.
//!
//! Run: `cargo run --release --example bench_federation -- NODES [WRITES] [--load]`

use shoal::config::ConfigLayer;
use shoal::core::event::Event;
use shoal::runtime::executor::Handlers;
use shoal::{Node, NodeHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn start(i: usize, dir: &std::path::Path, bootstrap: Option<String>) -> Node {
    let cfg = ConfigLayer {
        data_dir: Some(dir.join(format!("n{i}"))),
        mdns: Some(false),
        api: Some("127.0.0.1:0".into()),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".into()]),
        bootstrap: bootstrap.map(|b| vec![b]),
        profile: Some(shoal::config::Profile::Fast),
        ..ConfigLayer::default()
    }
    .build()
    .unwrap();
    Node::start(cfg, Handlers::new()).await.unwrap()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn alive(h: &NodeHandle) -> usize {
    h.members()
        .await
        .unwrap()
        .iter()
        .filter(|m| m.status == "alive")
        .count()
}

/// CPU seconds this process has used (user and system, all threads), from
/// `/proc/self/stat`: unlike wall time, it does not count time the VM was
/// not scheduled (steal).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 12th and 13th of them, in clock ticks.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let ticks: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // USER_HZ, which Linux fixes at 100 for user space.
    ticks.iter().sum::<f64>() / 100.0
}

async fn digest(h: &NodeHandle) -> String {
    h.summary().await.unwrap().digest
}

fn main() {
    // The same memory setting as the `shoal` binary, so the benchmark
    // measures what ships.
    shoal::runtime::memory::disable_transparent_huge_pages();
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(bench());
}

async fn bench() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let writes: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let load = args.iter().any(|a| a == "--load");
    // Concurrent writers on node 0 during `--load` (`--writers=N`, default 256).
    let writers: u64 = args
        .iter()
        .find_map(|a| a.strip_prefix("--writers=")?.parse().ok())
        .unwrap_or(256);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    std::env::set_var("SHOAL_SECRET", "42".repeat(32));
    let dir = tempfile::tempdir().unwrap();
    let first = start(0, dir.path(), None).await;
    let boot = first.handle().info().p2p_addrs[0].clone();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start(i, dir.path(), Some(boot.clone())).await);
    }
    let handles: Vec<NodeHandle> = nodes.iter().map(|n| n.handle()).collect();
    let t0 = Instant::now();
    for h in &handles {
        while alive(h).await < n {
            tokio::time::sleep(Duration::from_millis(20)).await; // poll until formed
        }
    }
    println!("{n} nodes formed a federation in {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await; // let the gossip mesh settle

    let mut per_node = Vec::new();
    let mut all_nodes = Vec::new();
    let mut subs: Vec<_> = handles[1..].iter().map(|h| h.subscribe()).collect();
    for i in 0..writes {
        let key = format!("p{i}");
        let k = key.clone();
        let start = Instant::now();
        handles[0]
            .kv_put("prop", &k, serde_json::json!(i))
            .await
            .unwrap();
        let mut slowest = 0.0f64;
        for sub in subs.iter_mut() {
            let got = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match sub.recv().await {
                        Ok(Event::KvMerged { key: k, .. }) if k == key => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
            .await;
            assert!(got.is_ok(), "write {key} did not propagate in 10 s");
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            per_node.push(ms);
            slowest = slowest.max(ms);
        }
        all_nodes.push(slowest);
        tokio::time::sleep(Duration::from_millis(20)).await; // pacing between writes
    }
    println!(
        "propagation over {writes} writes: per node p50 {:.2} ms p99 {:.2} ms; all nodes p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        pct(&mut per_node, 0.5),
        pct(&mut per_node, 0.99),
        pct(&mut all_nodes, 0.5),
        pct(&mut all_nodes, 0.99),
        pct(&mut all_nodes, 1.0)
    );
    drop(subs);

    if load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let t0 = Instant::now();
        let cpu0 = cpu_seconds();
        for w in 0..writers {
            let (h, stop) = (handles[0].clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("w{w}-{i}");
                    h.kv_put("load", &key, serde_json::json!(i)).await.unwrap();
                }
                i
            }));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for w in workers {
            total += w.await.unwrap();
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let stopped = Instant::now();
        let target = digest(&handles[0]).await;
        let mut converged = false;
        while stopped.elapsed() < Duration::from_secs(120) {
            let mut all = true;
            for h in &handles[1..] {
                if digest(h).await != target {
                    all = false;
                    break;
                }
            }
            if all {
                converged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // poll until converged
        }
        println!(
            "CPU: {:.1} s used in {secs:.1} s of load = {:.1} µs per replicated write (all {n} nodes and the writers)",
            cpu,
            cpu / total as f64 * 1e6
        );
        let published = |what: &str| {
            let text = handles[0].metrics().encode();
            text.lines()
                .find(|l| l.contains(what))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let bytes = published("\"gossip_bytes_published\"");
        let messages = published("\"gossip_published\"");
        println!(
            "sustained: {total} writes in {secs:.1} s = {:.0} acknowledged/s on node 0; all {n} digests equal {} {:?} after the load stopped",
            total as f64 / secs,
            if converged { "after" } else { "NOT within" },
            stopped.elapsed()
        );
        println!(
            "gossip payload: {:.0} bytes per update (compressed postcard deltas, before noise/yamux framing)",
            bytes / (total as f64 + writes as f64)
        );
        println!(
            "gossip messages: {messages:.0} published by node 0, {:.0} updates per message",
            (total as f64 + writes as f64) / messages
        );
        let pulled: f64 = handles
            .iter()
            .filter_map(|h| {
                let text = h.metrics().encode();
                let line = text
                    .lines()
                    .find(|l| l.starts_with("shoal_sync_entries"))?
                    .to_owned();
                line.rsplit(' ').next()?.parse::<f64>().ok()
            })
            .sum();
        println!("anti-entropy brought {pulled:.0} entries in all (the rest came by gossip)");
        for (i, h) in handles.iter().enumerate() {
            let text = h.metrics().encode();
            let value = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let commits = value("shoal_store_commit_seconds_count");
            println!(
                "node {i}: {commits:.0} commits, mean {:.2} ms, mean batch {:.0} entries",
                value("shoal_store_commit_seconds_sum") / commits * 1000.0,
                value("shoal_store_batch_size_sum") / commits
            );
        }
    }
    for n in nodes {
        let _ = n.shutdown().await;
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
