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
    /// How many nodes (federation across nodes arrives with the libp2p layer; until then 1).
    #[arg(long, default_value_t = 1)]
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
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(dir: &Path, i: usize) -> Result<DemoNode, CliError> {
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
        .arg("--data-dir")
        .arg(&data)
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
    let api = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .ok_or_else(|| CliError::failed(format!("unexpected ready line: {line}")))?
        .to_owned();
    let id = line.split_whitespace().nth(2).unwrap_or("?").to_owned();
    Ok(DemoNode { child, api, id })
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
    if args.nodes != 1 {
        return Err(CliError::usage(
            "this build runs single-node demos only (--nodes 1): federation between nodes is not built yet",
        ));
    }
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
        let n = spawn_node(&dir, i)?;
        println!("   node {i}: {}  api {}  dashboard {}/", n.id, n.api, n.api);
        nodes.push(n);
    }
    let c = Client::new(&nodes[0].api, None)?;
    tour(&c)?;
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

fn tour(c: &Client) -> Result<(), CliError> {
    println!("\n== knowledge: write, read, and a multi-value namespace");
    let put = c.call(
        "PUT",
        "/v1/kv/notes/hello",
        Some(&json!({"text": "shoal says hi"})),
    )?;
    println!("   put notes/hello -> version {}", put["version"]);
    let got = c.call("GET", "/v1/kv/notes/hello", None)?;
    println!("   get notes/hello -> {}", got["value"]);
    c.call("PUT", "/v1/kv/tags", Some(&json!({"policy": "set"})))?;
    c.call("PUT", "/v1/kv/tags/colors", Some(&json!(["red"])))?;
    let set = c.call("PUT", "/v1/kv/tags/colors", Some(&json!("blue")))?;
    println!("   set namespace tags/colors -> {}", set["value"]);

    println!("\n== tasks: submit, run by handlers, results");
    let mut ids = Vec::new();
    for (cap, payload) in [
        ("echo", json!({"n": 1})),
        ("upper", json!("make me loud")),
        ("echo", json!({"n": 3})),
    ] {
        let t = c.call(
            "POST",
            "/v1/tasks",
            Some(&json!({"capability": cap, "payload": payload})),
        )?;
        println!(
            "   submitted {} ({cap}) -> {}",
            t["id"].as_str().unwrap_or("?"),
            t["status"]
        );
        ids.push(t["id"].as_str().unwrap_or_default().to_owned());
    }
    for id in &ids {
        let t = wait_task(c, id)?;
        println!(
            "   {id}: {} on {} -> {}",
            t["status"],
            t["node"]
                .as_str()
                .map(|n| &n[n.len().saturating_sub(8)..])
                .unwrap_or("-"),
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

    println!("\n== cluster");
    let stats = c.call("GET", "/v1/cluster/stats", None)?;
    println!("   tasks by status: {}", stats["tasks"]["by_status"]);
    println!(
        "   convergence digest: {}",
        stats["digest"].as_str().unwrap_or("?")
    );
    Ok(())
}
