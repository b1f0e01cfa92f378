//! `shoal demo`: starts nodes on loopback as child processes and takes a
//! scripted tour through knowledge writes and task execution.

use super::client::Client;
use super::CliError;
use clap::Args;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// `shoal demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many nodes (1 to 20).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the nodes keep their data (default: a fresh temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Stop right after the tour instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
}

struct DemoNode {
    child: Child,
    api: String,
    id: String,
    p2p: String,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(
    dir: &Path,
    i: usize,
    secret: &str,
    bootstrap: Option<&str>,
) -> Result<DemoNode, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find the shoal binary: {e}")))?;
    let data = dir.join(format!("node-{i}"));
    std::fs::create_dir_all(&data)
        .map_err(|e| CliError::failed(format!("{}: {e}", data.display())))?;
    let log = std::fs::File::create(dir.join(format!("node-{i}.log")))
        .map_err(|e| CliError::failed(format!("cannot create a log file: {e}")))?;
    let mut child = std::process::Command::new(exe)
        .args([
            "start",
            "--no-mdns",
            "--profile",
            "fast",
            "--api",
            "127.0.0.1:0",
        ])
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--name",
            &format!("demo-{i}"),
        ])
        .args([
            "--handler",
            "echo=cat",
            "--handler",
            "upper=tr a-z A-Z",
            "--capacity",
            "4",
        ])
        .args(
            bootstrap
                .map(|b| vec!["--bootstrap", b])
                .unwrap_or_default(),
        )
        .arg("--data-dir")
        .arg(&data)
        .env("SHOAL_SECRET", secret)
        .env_remove("SHOAL_API")
        .env_remove("SHOAL_CONFIG")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| CliError::failed(format!("cannot start a node: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CliError::failed("no stdout from node"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
        CliError::failed(format!(
            "node {i} did not become ready; see {}",
            dir.join(format!("node-{i}.log")).display()
        ))
    })?;
    let ready = super::Ready::parse(&line)
        .ok_or_else(|| CliError::failed(format!("unexpected ready line: {line}")))?;
    let (api, id, p2p) = (ready.api, ready.id, ready.p2p);
    Ok(DemoNode {
        child,
        api,
        id,
        p2p,
    })
}

fn wait_task(c: &Client, id: &str) -> Result<Value, CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = c.call("GET", &format!("/v1/tasks/{id}"), None)?;
        if ["succeeded", "failed", "cancelled"].contains(&t["status"].as_str().unwrap_or("")) {
            return Ok(t);
        }
        if Instant::now() > deadline {
            return Err(CliError::failed(format!(
                "task {id} did not finish in 30 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `shoal demo`.
pub fn demo(args: &DemoArgs) -> Result<(), CliError> {
    if !(1..=20).contains(&args.nodes) {
        return Err(CliError::usage("--nodes must be between 1 and 20"));
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("shoal-demo-")
                .tempdir()
                .map_err(|e| {
                    CliError::failed(format!("cannot create a temporary directory: {e}"))
                })?;
            temp.path().to_owned()
        }
    };
    println!(
        "== starting {} node(s) on loopback (data in {})",
        args.nodes,
        dir.display()
    );
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let boot = nodes.first().map(|n: &DemoNode| n.p2p.clone());
        let n = spawn_node(&dir, i, &secret, boot.as_deref())?;
        println!("   node {i}: {}  api {}  dashboard {}/", n.id, n.api, n.api);
        nodes.push(n);
    }
    let clients = nodes
        .iter()
        .map(|n| Client::new(&n.api, None))
        .collect::<Result<Vec<_>, _>>()?;
    federate(&clients)?;
    tour(&clients)?;
    if !args.exit {
        println!(
            "\nThe node keeps running: open the dashboard above, or try `shoal --api {} status`.",
            nodes[0].api
        );
        println!("Press Ctrl-C to stop.");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::failed(e.to_string()))?;
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    println!("== stopping");
    for n in &mut nodes {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &n.child.id().to_string()])
            .status();
        let _ = n.child.wait();
    }
    Ok(())
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>, CliError>) -> Result<T, CliError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(CliError::failed(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every node sees every other as alive.
fn federate(clients: &[Client]) -> Result<(), CliError> {
    let n = clients.len();
    let t0 = Instant::now();
    for c in clients {
        poll("the federation to form", || {
            let v = c.call("GET", "/v1/nodes?status=alive", None)?;
            Ok((v["count"].as_u64() == Some(n as u64)).then_some(()))
        })?;
    }
    println!(
        "\n== federation: {n} node(s) see each other alive after {:?}",
        t0.elapsed()
    );
    Ok(())
}

fn short_id(v: &Value) -> String {
    v.as_str()
        .map(|n| n[n.len().saturating_sub(8)..].to_owned())
        .unwrap_or_else(|| "-".into())
}

fn tour(clients: &[Client]) -> Result<(), CliError> {
    let c = &clients[0];
    let last = &clients[clients.len() - 1];
    println!(
        "\n== knowledge: written on node 1, read on node {}",
        clients.len()
    );
    c.call(
        "PUT",
        "/v1/kv/notes/hello",
        Some(&json!({"text": "shoal says hi"})),
    )?;
    let t0 = Instant::now();
    let got = poll("the write to reach the last node", || {
        match last.call("GET", "/v1/kv/notes/hello", None) {
            Ok(v) => Ok(Some(v)),
            Err(_) => Ok(None),
        }
    })?;
    println!(
        "   node {} reads notes/hello = {} (after {:?})",
        clients.len(),
        got["value"],
        t0.elapsed()
    );
    c.call("PUT", "/v1/kv/tags", Some(&json!({"policy": "set"})))?;
    c.call("PUT", "/v1/kv/tags/colors", Some(&json!(["red"])))?;
    poll("the set policy to reach the last node", || {
        let v = last.call("GET", "/v1/kv/tags", None)?;
        Ok((v["policy"] == "set" && v["count"] == 1).then_some(()))
    })?;
    last.call("PUT", "/v1/kv/tags/colors", Some(&json!("blue")))?;
    let set = poll("the union on node 1", || {
        let v = c.call("GET", "/v1/kv/tags/colors", None)?;
        Ok((v["siblings"].as_array().map(|a| a.len()) == Some(2)).then_some(v))
    })?;
    println!(
        "   set namespace: red added on node 1, blue on node {} -> {}",
        clients.len(),
        set["value"]
    );

    println!("\n== tasks: submitted on node 1, spread round-robin over the federation");
    c.call(
        "PUT",
        "/v1/balance",
        Some(&json!({"strategy": "round_robin"})),
    )?;
    let mut ids = Vec::new();
    for i in 0..(2 * clients.len()).max(3) {
        let (cap, payload) = if i % 2 == 0 {
            ("echo", json!({"n": i}))
        } else {
            ("upper", json!("make me loud"))
        };
        let t = c.call(
            "POST",
            "/v1/tasks",
            Some(&json!({"capability": cap, "payload": payload})),
        )?;
        ids.push(t["id"].as_str().unwrap_or_default().to_owned());
    }
    for id in &ids {
        let t = wait_task(c, id)?;
        println!(
            "   {id}: {} on {} -> {}",
            t["status"],
            short_id(&t["node"]),
            t["result"]
        );
    }
    let again = c.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"capability": "echo", "payload": 1, "key": "once"})),
    )?;
    let same = c.call(
        "POST",
        "/v1/tasks",
        Some(&json!({"capability": "echo", "payload": 1, "key": "once"})),
    )?;
    println!(
        "   idempotency key `once` twice -> same task: {}",
        again["id"] == same["id"]
    );
    let waiting = c.call("POST", "/v1/tasks", Some(&json!({"capability": "gpu"})))?;
    println!(
        "   a task nobody can run waits: {} ({})",
        waiting["status"],
        waiting["reason"].as_str().unwrap_or("")
    );

    println!("\n== convergence: every node's digest of tasks and knowledge");
    let digests = poll("digests to agree", || {
        let d: Vec<String> = clients
            .iter()
            .map(|c| {
                c.call("GET", "/v1/cluster/stats", None)
                    .map(|s| s["digest"].as_str().unwrap_or("").to_owned())
            })
            .collect::<Result<_, _>>()?;
        Ok(d.windows(2).all(|w| w[0] == w[1]).then_some(d))
    })?;
    for (i, d) in digests.iter().enumerate() {
        println!("   node {}: {}", i + 1, &d[..16]);
    }
    Ok(())
}
