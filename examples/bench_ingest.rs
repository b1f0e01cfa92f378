//! Single-node ingest benchmark through the library API, in process.
//!
//! Starts a node on a fresh data dir (durable commits on), then runs
//! `CONCURRENCY` writers for `SECS` seconds each of knowledge writes and of
//! task submissions, and prints acknowledged operations per second and the
//! latency percentiles. Every counted operation was committed to disk before
//! it was acknowledged.
//!
//! Run: `cargo run --release --example bench_ingest [CONCURRENCY] [SECS]`

use shoal::config::ConfigLayer;
use shoal::core::replica::SubmitRequest;
use shoal::runtime::executor::Handlers;
use shoal::Node;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
enum Kind {
    Kv,
    Task,
}

async fn run(
    node: &shoal::NodeHandle,
    kind: Kind,
    concurrency: usize,
    secs: u64,
) -> (f64, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let t0 = Instant::now();
    for w in 0..concurrency {
        let (node, stop) = (node.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let start = Instant::now();
                let r = match kind {
                    Kind::Kv => {
                        let key = format!("w{w}-{i}");
                        node.kv_put("bench", &key, serde_json::json!({"i": i}))
                            .await
                            .map(|_| ())
                    }
                    Kind::Task => {
                        let req = SubmitRequest {
                            capability: "bench".into(),
                            payload: serde_json::json!({"i": i}),
                            ..SubmitRequest::default()
                        };
                        node.submit(req).await.map(|_| ())
                    }
                };
                r.expect("write acknowledged");
                lat.push(start.elapsed());
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    (all.len() as f64 / elapsed, all)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
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
    let concurrency: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigLayer {
        data_dir: Some(dir.path().to_owned()),
        mdns: Some(false),
        api: Some("127.0.0.1:0".into()),
        ..ConfigLayer::default()
    }
    .build()
    .unwrap();
    let node = Node::start(cfg, Handlers::new()).await.unwrap();
    let h = node.handle();
    println!("concurrency {concurrency}, {secs} s per phase, durable commits (fjall journal fsync per batch)");
    for (name, kind) in [
        ("knowledge writes", Kind::Kv),
        ("task submissions", Kind::Task),
    ] {
        let (rate, mut lat) = run(&h, kind, concurrency, secs).await;
        lat.sort();
        println!(
            "{name:<17} {:>9.0} acknowledged/s  n={}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            rate,
            lat.len(),
            pct(&lat, 0.50),
            pct(&lat, 0.99),
            lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
        );
    }
    let commits = h.metrics().commits.get();
    let acked = h.metrics().acknowledged.get();
    println!(
        "store commits {commits}, acknowledged {acked}, mean batch {:.0}",
        acked as f64 / commits.max(1) as f64
    );
    node.shutdown().await.unwrap();
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
