//! A single node as a real process on loopback: the README flow, durability
//! across kill -9, bad input, auth, workers, the CLI, events.

mod common;

use common::{poll_until, request, start, try_start, Proc};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn digest(p: &Proc) -> String {
    p.get("/v1/cluster/stats")["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn readme_flow_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let init = std::process::Command::new(common::shoal_bin())
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(init.status.success());
    assert!(
        data.join("secret").exists()
            && data.join("identity.key").exists()
            && data.join("config.toml").exists()
    );
    let node = start(&data, &["--handler", "echo=cat"]);
    let (code, out, err) = node.cli(&["kv", "put", "notes", "a", r#"{"text":"x"}"#]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("notes/a"), "{out}");
    let (code, out, _) = node.cli(&["kv", "get", "notes", "a"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), r#"{"text":"x"}"#);
    let (code, out, err) = node.cli(&[
        "--json",
        "task",
        "submit",
        "--capability",
        "echo",
        "--payload",
        r#"{"x":1}"#,
    ]);
    assert_eq!(code, 0, "{err}");
    let task: Value = serde_json::from_str(&out).unwrap();
    let id = task["id"].as_str().unwrap();
    let (code, out, err) = node.cli(&["task", "wait", id, "--timeout", "30"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("succeeded") && out.contains(r#"{"x":1}"#),
        "{out}"
    );
    // failed operations exit 1 with the server's message; bad usage exits 2
    let (code, _, err) = node.cli(&["task", "get", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, _, _) = node.cli(&["task", "submit"]);
    assert_eq!(code, 2);
    let (code, out, _) = node.cli(&["--json", "status"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["node"]["id"], node.id.as_str());
    assert_eq!(status["cluster"]["alive"], 1);
    assert_eq!(node.terminate(), Some(0));
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let node = start(&data, &["--handler", "echo=cat"]);
    let api = node.api.clone();
    let acked_kv = Arc::new(Mutex::new(Vec::new()));
    let acked_tasks = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (api, acked_kv, acked_tasks, stop) = (
            api.clone(),
            acked_kv.clone(),
            acked_tasks.clone(),
            stop.clone(),
        );
        writers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("w{w}-{i}");
                let url = format!("{api}/v1/kv/load/{key}");
                match ureq::put(&url)
                    .timeout(Duration::from_secs(5))
                    .set("Content-Type", "application/json")
                    .send_string(&i.to_string())
                {
                    Ok(r) if r.status() == 200 => acked_kv.lock().unwrap().push((key, i)),
                    _ => break,
                }
                if i % 5 == 0 {
                    let body =
                        json!({"capability": "echo", "payload": i, "key": format!("t{w}-{i}")});
                    match ureq::post(&format!("{api}/v1/tasks"))
                        .set("Content-Type", "application/json")
                        .send_string(&body.to_string())
                    {
                        Ok(r) if r.status() == 201 => {
                            let v: Value = r.into_json().unwrap();
                            acked_tasks
                                .lock()
                                .unwrap()
                                .push(v["id"].as_str().unwrap().to_owned());
                        }
                        _ => break,
                    }
                }
            }
        }));
    }
    poll_until(Duration::from_secs(30), "some acknowledged writes", || {
        (acked_kv.lock().unwrap().len() >= 300).then_some(())
    });
    let id = node.id.clone();
    node.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let node = start(&data, &["--handler", "echo=cat"]);
    assert_eq!(node.id, id, "same data dir, same node");
    let kv = acked_kv.lock().unwrap().clone();
    let listed = node.get("/v1/kv/load?limit=100000");
    assert!(listed["next"].is_null(), "one page holds every key");
    let stored: std::collections::HashMap<String, Value> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["key"].as_str().unwrap().to_owned(), e["value"].clone()))
        .collect();
    for (key, value) in &kv {
        assert_eq!(
            stored.get(key),
            Some(&json!(value)),
            "acknowledged write {key} lost"
        );
    }
    for t in acked_tasks.lock().unwrap().iter() {
        let (code, task) = node.req("GET", &format!("/v1/tasks/{t}"), None);
        assert_eq!(code, 200, "acknowledged task {t} lost");
        // tasks interrupted by the kill are retried and finish
        let done = node.wait_task(t);
        assert_eq!(done["status"], "succeeded", "{task}");
    }
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        &dir.path().join("n1"),
        &["--handler", "echo=cat", "--max-body-bytes", "4096"],
    );
    node.put("/v1/kv/notes/a", &json!(1));
    let before = digest(&node);
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        (
            "POST",
            "/v1/tasks",
            Some("{not json".into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"payload": 1}"#.into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"capability": "echo", "bogus": 1}"#.into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"capability": "echo", "strategy": "fastest"}"#.into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/tasks",
            Some(r#"{"capability": "echo", "max_attempts": 0}"#.into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/tasks",
            Some(format!(
                r#"{{"capability": "echo", "payload": "{}"}}"#,
                "x".repeat(10_000)
            )),
            413,
            "too_large",
        ),
        (
            "PUT",
            "/v1/kv/notes/a",
            Some("{oops".into()),
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/kv/_shoal/strategy",
            Some("1".into()),
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/kv/notes",
            Some(r#"{"policy": "maybe"}"#.into()),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/kv/notes?since=garbage",
            None,
            400,
            "bad_request",
        ),
        ("GET", "/v1/tasks/does-not-exist", None, 404, "not_found"),
        (
            "POST",
            "/v1/tasks/does-not-exist/cancel",
            Some("{}".into()),
            404,
            "not_found",
        ),
        ("GET", "/v1/kv/notes/missing", None, 404, "not_found"),
        ("GET", "/v1/nodes/nobody", None, 404, "not_found"),
        ("GET", "/v1/no/such/route", None, 404, "not_found"),
        ("DELETE", "/v1/tasks", None, 405, "method_not_allowed"),
        (
            "PUT",
            "/v1/balance",
            Some(r#"{"strategy": "fastest"}"#.into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/tasks/x/complete",
            Some(r#"{"fence": "zz"}"#.into()),
            400,
            "bad_request",
        ),
        ("GET", "/v1/tasks?status=sleeping", None, 400, "bad_request"),
        (
            "GET",
            "/v1/tasks?before=yesterday",
            None,
            400,
            "bad_request",
        ),
        ("GET", "/v1/tasks?before=12.", None, 400, "bad_request"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, v) = node.req(method, path, body.as_deref());
        assert_eq!(got, status, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(digest(&node), before, "refused requests changed the state");
    assert_eq!(node.get("/v1/kv/notes/a")["value"], 1);
}

#[test]
fn invalid_config_is_refused_with_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(common::shoal_bin())
            .args(["start", "--no-mdns", "--data-dir"])
            .arg(dir.path().join("n"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--capacity", "0", "--api", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`capacity`"));
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "capacity = 4\nheartbeat = 3\n").unwrap();
    let out = run(&["--config", cfg.to_str().unwrap(), "--api", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat"));
    let out = run(&["--handler", "echo", "--api", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--api", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api_token_file"));
}

#[test]
fn a_damaged_store_is_reported_and_its_journal_preserved() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let node = start(&data, &[]);
    node.put("/v1/kv/notes/a", &json!("precious"));
    assert_eq!(node.terminate(), Some(0));
    let store = data.join("store");
    let journal = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jnl"))
        .expect("a journal file");
    let mut bytes = std::fs::read(&journal).unwrap();
    for b in bytes.iter_mut().take(400).skip(100) {
        *b ^= 0x5A;
    }
    std::fs::write(&journal, &bytes).unwrap();
    for _ in 0..2 {
        let err = try_start(&data, &[])
            .err()
            .expect("a damaged store must not start");
        assert!(err.contains("damaged") && err.contains("store"), "{err}");
    }
    // the journal as it was before fjall's recovery touched it is kept
    let saved = data
        .join("store.journal-before-recovery")
        .join(journal.file_name().unwrap());
    assert!(
        std::fs::read(saved).unwrap() == bytes,
        "the damaged journal was not preserved"
    );
}

#[test]
fn external_worker_claims_heartbeats_and_completes_with_fences() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        &dir.path().join("n1"),
        &["--capability", "ocr", "--claim-timeout-secs", "1"],
    );
    let t = node.post(
        "/v1/tasks",
        &json!({"capability": "ocr", "payload": {"page": 1}, "max_attempts": 3}),
    );
    let id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["status"], "assigned");
    let claim = node.post(
        "/v1/work/claim",
        &json!({"worker": "w1", "capabilities": ["ocr"]}),
    );
    let fence1 = claim["task"]["fence"].as_str().unwrap().to_owned();
    assert_eq!(claim["task"]["id"], id.as_str());
    assert_eq!(claim["task"]["payload"], json!({"page": 1}));
    node.post(
        &format!("/v1/tasks/{id}/heartbeat"),
        &json!({"fence": fence1}),
    );
    // w1 stops heartbeating: the claim is given back with a new fence
    let t = poll_until(
        Duration::from_secs(10),
        "the claim to be given back",
        || {
            let t = node.get(&format!("/v1/tasks/{id}"));
            (t["status"] == "assigned").then_some(t)
        },
    );
    assert!(t["error"]
        .as_str()
        .unwrap()
        .contains("stopped heartbeating"));
    // a long-polling worker gets it
    let claim = node.post(
        "/v1/work/claim",
        &json!({"worker": "w2", "capabilities": ["ocr"], "wait_secs": 5}),
    );
    let fence2 = claim["task"]["fence"].as_str().unwrap().to_owned();
    assert_ne!(fence1, fence2);
    let (code, v) = node.req(
        "POST",
        &format!("/v1/tasks/{id}/complete"),
        Some(&json!({"fence": fence1, "result": 1}).to_string()),
    );
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"]["code"], "stale_fence");
    let done = node.post(
        &format!("/v1/tasks/{id}/complete"),
        &json!({"fence": fence2, "result": {"text": "hi"}}),
    );
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"text": "hi"}));
    // nothing left: a claim without wait returns null at once
    let empty = node.post(
        "/v1/work/claim",
        &json!({"worker": "w2", "capabilities": ["ocr"]}),
    );
    assert!(empty["task"].is_null());
}

#[test]
fn timeouts_retries_cancel_and_pending_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        &dir.path().join("n1"),
        &[
            "--handler",
            "slow=sleep 30",
            "--handler",
            "fail=echo bad >&2; exit 4",
        ],
    );
    let t = node.post(
        "/v1/tasks",
        &json!({"capability": "slow", "timeout_secs": 1, "max_attempts": 2}),
    );
    let done = node.wait_task(t["id"].as_str().unwrap());
    assert_eq!(done["status"], "failed");
    assert_eq!(done["attempt"], 2);
    assert!(done["error"].as_str().unwrap().contains("timed out"));
    let t = node.post(
        "/v1/tasks",
        &json!({"capability": "fail", "max_attempts": 1}),
    );
    let done = node.wait_task(t["id"].as_str().unwrap());
    assert_eq!(done["error"], "exit code 4: bad");
    let t = node.post(
        "/v1/tasks",
        &json!({"capability": "slow", "timeout_secs": 60}),
    );
    let id = t["id"].as_str().unwrap();
    poll_until(Duration::from_secs(10), "the task to run", || {
        (node.get(&format!("/v1/tasks/{id}"))["status"] == "running").then_some(())
    });
    let c = node.post(&format!("/v1/tasks/{id}/cancel"), &json!({}));
    assert_eq!(c["status"], "cancelled");
    let (code, _) = node.req("POST", &format!("/v1/tasks/{id}/cancel"), Some("{}"));
    assert_eq!(code, 409);
    let t = node.post("/v1/tasks", &json!({"capability": "gpu"}));
    assert_eq!(t["status"], "pending");
    assert!(t["reason"].as_str().unwrap().contains("gpu"));
    let history = node.get(&format!("/v1/tasks/{id}"))["history"]
        .as_array()
        .unwrap()
        .len();
    assert!(history >= 3, "history records each transition");
}

#[test]
fn token_guards_mutating_routes() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let node = start(
        &dir.path().join("n1"),
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    let url = node.url("/v1/kv/notes/a");
    let (code, v) = request("PUT", &url, Some("1"), None);
    assert_eq!(code, 401, "{v}");
    let (code, _) = request("PUT", &url, Some("1"), Some("wrong-token-wrong-token"));
    assert_eq!(code, 403);
    let (code, _) = request("PUT", &url, Some("1"), Some("s3cret-token-0123456789"));
    assert_eq!(code, 200);
    let (code, v) = request("GET", &url, None, None);
    assert_eq!((code, v["value"].clone()), (200, json!(1)));
}

#[test]
fn events_stream_and_metrics_report_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("n1"), &["--handler", "echo=cat"]);
    let resp = ureq::get(&node.url("/v1/events")).call().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t = node.post("/v1/tasks", &json!({"capability": "echo", "payload": 5}));
    let id = t["id"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    poll_until(
        Duration::from_secs(20),
        "task_finished on the event stream",
        || {
            while let Ok(line) = rx.try_recv() {
                seen.push(line);
            }
            seen.iter()
                .any(|l| l.contains("task_finished") && l.contains(&id))
                .then_some(())
        },
    );
    assert!(seen.iter().any(|l| l == "event: task_placed"));
    let metrics = ureq::get(&node.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("shoal_acknowledged_writes_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_tasks{value=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert_eq!(node.get("/healthz")["status"], "ok");
    assert_eq!(node.get("/readyz")["status"], "ready");
    let page = ureq::get(&node.url("/"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(page.contains("<title>Shoal</title>"));
}

#[test]
fn drain_audit_balance_and_since_queries() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("n1"), &["--handler", "echo=cat"]);
    assert_eq!(node.get("/v1/balance")["strategy"], "least_loaded");
    node.put("/v1/balance", &json!({"strategy": "hash"}));
    assert_eq!(node.get("/v1/balance")["strategy"], "hash");
    node.put("/v1/kv/notes", &json!({"policy": "mv"}));
    node.put("/v1/kv/notes/a", &json!(1));
    let v1 = node.get("/v1/kv/notes")["version"].clone();
    node.put("/v1/kv/notes/b", &json!(2));
    let since = node.get(&format!(
        "/v1/kv/notes?since={}",
        urlencode(&v1.to_string())
    ));
    assert_eq!(since["count"], 1);
    assert_eq!(since["entries"][0]["key"], "b");
    let entry = node.get("/v1/kv/notes/b");
    assert_eq!(entry["policy"], "mv");
    assert_eq!(entry["digest"].as_str().unwrap().len(), 64);
    node.post(&format!("/v1/nodes/{}/drain", node.id), &json!({}));
    assert_eq!(
        node.get(&format!("/v1/nodes/{}", node.id))["status"],
        "draining"
    );
    let t = node.post("/v1/tasks", &json!({"capability": "echo"}));
    assert_eq!(t["status"], "pending", "a draining node takes no new tasks");
    let audit = node.get("/v1/audit");
    assert_eq!(audit["records"][0]["action"], "node_drained");
    let (code, _) = node.req("DELETE", &format!("/v1/nodes/{}", node.id), None);
    assert_eq!(code, 409, "the local node cannot be removed");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A request with chosen headers; the status and the error code.
fn raw(
    node: &Proc,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut req = ureq::request(method, &node.url(path));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let v: Value = resp.into_json().unwrap_or(Value::Null);
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

#[test]
fn cross_site_requests_and_foreign_hosts_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("n1"), &["--handler", "echo=cat"]);
    let before = digest(&node);
    let task = r#"{"capability": "echo", "payload": 1}"#;
    let json = ("Content-Type", "application/json");
    // A page may POST text/plain anywhere without a preflight: not JSON here.
    assert_eq!(
        raw(
            &node,
            "POST",
            "/v1/tasks",
            &[("Content-Type", "text/plain")],
            task
        ),
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        raw(&node, "PUT", "/v1/kv/notes/a", &[], "1"),
        (415, "unsupported_media_type".into())
    );
    // DNS rebinding: a name of the attacker's that resolves to 127.0.0.1.
    for method in ["GET", "POST"] {
        assert_eq!(
            raw(
                &node,
                method,
                "/v1/tasks",
                &[json, ("Host", "evil.example:7070")],
                task
            ),
            (403, "forbidden_host".into())
        );
    }
    // A page elsewhere sending JSON to the loopback API.
    assert_eq!(
        raw(
            &node,
            "POST",
            "/v1/tasks",
            &[json, ("Origin", "https://evil.example")],
            task
        ),
        (403, "cross_origin".into())
    );
    assert_eq!(digest(&node), before, "a refused request changed the state");
    assert_eq!(node.get("/v1/tasks")["count"], 0);
    // The node's own page (same host), loopback names and plain clients pass.
    let port = node.api.rsplit(':').next().unwrap().to_owned();
    let own = format!("http://127.0.0.1:{port}");
    assert_eq!(
        raw(&node, "POST", "/v1/tasks", &[json, ("Origin", &own)], task).0,
        201
    );
    let local = format!("localhost:{port}");
    assert_eq!(
        raw(&node, "GET", "/v1/status", &[("Host", &local)], "").0,
        200
    );
    assert_eq!(raw(&node, "PUT", "/v1/kv/notes/a", &[json], "1").0, 200);
}

#[test]
fn start_errors_say_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let err = try_start(&dir.path().join("p2p"), &["--listen", &listen])
        .err()
        .expect("a node on a p2p port in use did not start");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&listen) && last.contains("in use"),
        "the error names the address and the cause: {last}"
    );
    let api = format!("127.0.0.1:{port}");
    let out = std::process::Command::new(common::shoal_bin())
        .args([
            "start",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            &api,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("api"))
        .env_remove("SHOAL_API")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a node on an API port in use did not start"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&api) && last.contains("in use"),
        "the error names the address and the cause: {last}"
    );
    // A store another node holds.
    let first = start(&dir.path().join("shared"), &[]);
    let err = try_start(&dir.path().join("shared"), &[])
        .err()
        .expect("a second node on a data dir in use did not start");
    assert!(err.contains("in use by another process"), "{err}");
    drop(first);
    // A data dir that is a file, and an identity key that is empty.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = std::process::Command::new(common::shoal_bin())
        .args(["start", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--api", "127.0.0.1:0", "--data-dir"])
        .arg(&file)
        .env_remove("SHOAL_API")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "started on a file");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "data dir {}: exists and is not a directory",
            file.display()
        )),
        "{err}"
    );
    let empty = dir.path().join("empty-key");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("identity.key"), b"").unwrap();
    let err = try_start(&empty, &[])
        .err()
        .expect("started with an empty key");
    assert!(
        err.contains("identity.key is not a valid identity key: the file is empty"),
        "{err}"
    );
}

/// The process group of process `pid` (field 5 of /proc/PID/stat).
#[cfg(target_os = "linux")]
fn pgrp_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Processes in group `pgrp`.
#[cfg(target_os = "linux")]
fn group_members(pgrp: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| pgrp_of(*pid) == Some(pgrp))
        .collect()
}

/// Kills a process group on drop (a test that fails leaves nothing behind).
struct KillGroup(u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // `--`: procps' kill reads a bare `-PGID` as an option.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_handler_dies_with_its_node_killed_by_9() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("handler.pid");
    let handler = format!("work=echo $$ > {}; sleep 300; cat", pidfile.display());
    let node = start(&dir.path().join("n"), &["--handler", &handler]);
    node.post("/v1/tasks", &json!({"capability": "work", "payload": 1}));
    let sh: u32 = poll_until(Duration::from_secs(30), "the handler to start", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    let pgrp = pgrp_of(sh).expect("the handler runs");
    let _cleanup = KillGroup(pgrp);
    assert!(
        group_members(pgrp).len() >= 2,
        "the guard, the shell and its sleep share a group"
    );
    node.kill9();
    poll_until(
        Duration::from_secs(10),
        "the handler's process group to be gone",
        || group_members(pgrp).is_empty().then_some(()),
    );
}

#[test]
fn event_streams_and_requests_in_flight_are_bounded_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        &dir.path().join("n1"),
        &["--max-event-streams", "2", "--max-requests-per-client", "3"],
    );
    // Two streams open; a third is refused until one closes.
    let a = ureq::get(&node.url("/v1/events")).call().unwrap();
    let b = ureq::get(&node.url("/v1/events")).call().unwrap();
    let (code, v) = request("GET", &node.url("/v1/events"), None, None);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (429, Some("too_many_streams")),
        "{v}"
    );
    drop(a);
    poll_until(
        Duration::from_secs(20),
        "a slot freed by the closed stream",
        || {
            let r = ureq::get(&node.url("/v1/events")).call().ok()?;
            (r.status() == 200).then_some(())
        },
    );
    drop(b);

    // Four long polls from this client at once: three are taken and wait
    // (30 s, for a capability nobody offers); the fourth is answered 429 at
    // once, and the refusal is counted.
    let url = node.url("/v1/work/claim");
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..4 {
        let (url, tx) = (url.clone(), tx.clone());
        std::thread::spawn(move || {
            let body = r#"{"worker": "w", "capabilities": ["never"], "wait_secs": 30}"#;
            let r = ureq::post(&url)
                .set("Content-Type", "application/json")
                .send_string(body);
            let _ = tx.send(match r {
                Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            });
        });
    }
    let (code, body) = rx.recv_timeout(Duration::from_secs(20)).expect("an answer");
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("too_many_requests"), "{body}");
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the three others are still waiting"
    );
    assert!(node.metric("shoal_rejected_requests_total{value=\"too_many_requests\"}") >= 1.0);
}

/// The first Chromium on the PATH, or None (printing why the test skips).
fn chromium(test: &str) -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: no headless Chromium here (.ci/run installs the `chromium` package)"
        );
    }
    found
}

#[test]
fn the_dashboard_shows_hostile_values_as_text() {
    let Some(browser) = chromium("dashboard escaping") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = start(&dir.path().join("n1"), &[]);
    // A capability is any text a client chooses; nobody runs this one, so
    // the task stays in the table.
    let hostile = r#"<img src=x onerror="document.title='pwned'"><b id='bold'>x</b>"#;
    let t = node.post("/v1/tasks", &json!({"capability": hostile, "payload": 1}));
    assert!(t["id"].is_string(), "{t}");
    let profile = dir.path().join("chromium");
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(node.url("/?snapshot"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<tbody id=\"tasks\"><tr>"),
        "the dashboard filled its task table: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The value is in the page as text, not as markup.
    assert!(dom.contains("&lt;img src=x onerror="), "{dom}");
    assert!(
        !dom.contains("<img"),
        "an element was made from the value: {dom}"
    );
    assert!(!dom.contains("id=\"bold\""), "{dom}");
    assert!(
        !dom.contains("<title>pwned"),
        "the value's script ran: {dom}"
    );
}

#[test]
fn values_too_large_to_replicate_are_refused_with_413_even_under_the_body_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Bodies of up to 4 MiB are accepted; a value over 512 KiB still cannot
    // travel in one gossip message, so it is refused before it is written.
    let node = start(&dir.path().join("n1"), &["--max-body-bytes", "4194304"]);
    let big = serde_json::Value::String("x".repeat(600 << 10)).to_string();
    for (method, path, body) in [
        ("PUT", "/v1/kv/notes/big", big.clone()),
        (
            "POST",
            "/v1/tasks",
            format!(r#"{{"capability": "echo", "payload": {big}}}"#),
        ),
    ] {
        let (code, v) = request(method, &node.url(path), Some(&body), None);
        assert_eq!(code, 413, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "too_large", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large to replicate"));
    }
    let (code, _) = request("GET", &node.url("/v1/kv/notes/big"), None, None);
    assert_eq!(code, 404, "nothing was written");
    let small = serde_json::Value::String("x".repeat(400 << 10)).to_string();
    let (code, _) = request("PUT", &node.url("/v1/kv/notes/ok"), Some(&small), None);
    assert_eq!(code, 200, "a value under the limit is taken");
}

#[test]
fn task_listings_page_from_the_newest_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let t = node.post("/v1/tasks", &json!({"capability": "echo", "payload": i}));
            t["id"].as_str().unwrap().to_owned()
        })
        .collect();
    // Pages of two, newest first across pages, oldest first within one.
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/v1/tasks?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = node.get(&path);
        pages += 1;
        let mut got: Vec<String> = page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(got.len() <= 2, "{page}");
        assert_eq!(
            page["count"],
            5 - seen.len(),
            "matching below the cursor: {page}"
        );
        got.extend(seen);
        seen = got;
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/tasks?limit=2&before={next}"),
            None => break,
        }
        assert!(pages < 5, "the pages end");
    }
    assert_eq!(pages, 3);
    // Every task once, ordered by submission time, then id (two tasks
    // submitted in the same millisecond go by id).
    let mut sorted = ids.clone();
    sorted.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, sorted, "every task once");
    let keys: Vec<(u64, String)> = seen
        .iter()
        .map(|id| {
            let t = node.get(&format!("/v1/tasks/{id}"));
            (t["submitted_at"].as_u64().unwrap(), id.clone())
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    // The CLI prints the cursor of the next page.
    let (code, out, err) = node.cli(&["task", "list", "--limit", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 of 5 shown; older ones: --before "), "{out}");
}

#[test]
fn knowledge_listings_page_in_key_order_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &[]);
    for k in ["e", "b", "d", "a", "c"] {
        node.put(&format!("/v1/kv/notes/{k}"), &json!(k));
    }
    node.req("DELETE", "/v1/kv/notes/c", None);
    let mut keys: Vec<String> = Vec::new();
    let mut path = "/v1/kv/notes?limit=2".to_owned();
    for _ in 0..5 {
        let page = node.get(&path);
        keys.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["key"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/kv/notes?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(keys, ["a", "b", "d", "e"], "every live key once, in order");
    let (code, out, err) = node.cli(&["kv", "list", "notes", "--limit", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("more keys follow: --after a"), "{out}");
}
