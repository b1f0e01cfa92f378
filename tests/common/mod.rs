//! Helpers for tests that run real `shoal` processes on loopback.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn shoal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// Polls `cond` every 20 ms until it returns `Some`, or panics with `what`
/// at the deadline.
pub fn poll_until<T>(deadline: Duration, what: &str, cond: impl FnMut() -> Option<T>) -> T {
    poll_until_or(deadline, what, cond, String::new)
}

/// [`poll_until`], adding what `explain` says to the panic message.
pub fn poll_until_or<T>(
    deadline: Duration,
    what: &str,
    mut cond: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= end {
            panic!(
                "timed out after {deadline:?} waiting for {what}\n{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

/// The lines of `p`'s metrics that contain any of `words`.
pub fn metric_lines(p: &Proc, words: &[&str]) -> String {
    let text = ureq::get(&p.url("/metrics"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && words.iter().any(|w| l.contains(w)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A running node process.
pub struct Proc {
    pub child: Child,
    pub api: String,
    pub id: String,
    pub p2p: String,
    pub data_dir: PathBuf,
    pub stderr_path: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command quietly; true when it succeeded.
pub fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `shoal start` on loopback with `extra` flags; waits for the ready line.
pub fn start(data_dir: &Path, extra: &[&str]) -> Proc {
    try_start(data_dir, extra).unwrap_or_else(|e| panic!("node did not start: {e}"))
}

/// Like [`start`], but returns the stderr text if the process exits first.
pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Proc, String> {
    try_start_env(data_dir, extra, &[])
}

/// Starts a node with extra environment variables (e.g. `SHOAL_SECRET`).
pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    try_start_env(data_dir, extra, env).unwrap_or_else(|e| panic!("node did not start: {e}"))
}

/// The first line a child prints on stdout (its ready line), waiting at most
/// `limit`; the rest of its output is drained in the background so the child
/// never blocks on a full pipe.
pub fn first_line(child: &mut std::process::Child, limit: Duration) -> Option<String> {
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(|l| l.ok()));
        for _ in lines {}
    });
    rx.recv_timeout(limit).ok().flatten()
}

/// Like [`start_env`], but returns the stderr text if the process exits first.
pub fn try_start_env(
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Proc, String> {
    std::fs::create_dir_all(data_dir).unwrap();
    let stderr_path = data_dir.with_extension("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(shoal_bin())
        .args([
            "start",
            "--no-mdns",
            "--profile",
            "fast",
            "--api",
            "127.0.0.1:0",
        ])
        // Loopback TCP unless the caller chose its own listen addresses.
        .args(if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "/ip4/127.0.0.1/tcp/0"][..]
        })
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env_remove("SHOAL_API")
        .env_remove("SHOAL_SECRET")
        .env("SHOAL_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let line = first_line(&mut child, Duration::from_secs(60));
    let Some(line) = line else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::fs::read_to_string(&stderr_path).unwrap_or_default());
    };
    let ready =
        shoal::cli::Ready::parse(&line).unwrap_or_else(|| panic!("not a ready line: {line}"));
    let (api, id, p2p) = (ready.api, ready.id, ready.p2p);
    Ok(Proc {
        child,
        api,
        id,
        p2p,
        data_dir: data_dir.to_owned(),
        stderr_path,
    })
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < end, "node did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    /// The convergence digest.
    pub fn digest(&self) -> String {
        self.get("/v1/cluster/stats")["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// How many members this node sees with `status`.
    pub fn count_status(&self, status: &str) -> u64 {
        self.get(&format!("/v1/nodes?status={status}"))["count"]
            .as_u64()
            .unwrap()
    }

    /// A metric's value (0 if absent).
    pub fn metric(&self, line_prefix: &str) -> f64 {
        let text = ureq::get(&self.url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.api, path)
    }

    /// A request; returns (status, JSON body or Null).
    pub fn req(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        request(method, &self.url(path), body, None)
    }

    pub fn get(&self, path: &str) -> Value {
        let (code, v) = self.req("GET", path, None);
        assert!(code < 300, "GET {path}: {code} {v}");
        v
    }

    /// A GET that may find nothing yet (404, as a node that has not
    /// received the record yet answers): `None` then.
    pub fn get_if_found(&self, path: &str) -> Option<Value> {
        let (code, v) = self.req("GET", path, None);
        if code == 404 {
            return None;
        }
        assert!(code < 300, "GET {path}: {code} {v}");
        Some(v)
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        let (code, v) = self.req("POST", path, Some(&body.to_string()));
        assert!(code < 300, "POST {path}: {code} {v}");
        v
    }

    pub fn put(&self, path: &str, body: &Value) -> Value {
        let (code, v) = self.req("PUT", path, Some(&body.to_string()));
        assert!(code < 300, "PUT {path}: {code} {v}");
        v
    }

    /// Waits until the task reaches a terminal status; returns it.
    pub fn wait_task(&self, id: &str) -> Value {
        poll_until(
            Duration::from_secs(30),
            &format!("task {id} to finish"),
            || {
                let t = self.get(&format!("/v1/tasks/{id}"));
                ["succeeded", "failed", "cancelled"]
                    .contains(&t["status"].as_str()?)
                    .then_some(t)
            },
        )
    }

    /// Runs the CLI against this node; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(shoal_bin())
            .arg("--api")
            .arg(&self.api)
            .args(args)
            .env_remove("SHOAL_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// One HTTP request with an optional bearer token.
pub fn request(method: &str, url: &str, body: Option<&str>, token: Option<&str>) -> (u16, Value) {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let r = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let code = r.status();
    let text = r.into_string().unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The lease holder and term every `/v1/leader` answer names, once they all
/// name the same one.
pub fn agreed_leader(answers: impl IntoIterator<Item = Value>) -> Option<(String, u64)> {
    let seen: Vec<Option<(String, u64)>> = answers
        .into_iter()
        .map(|v| {
            let l = &v["leader"];
            Some((l["id"].as_str()?.to_owned(), l["term"].as_u64()?))
        })
        .collect();
    let first = seen.first()?.clone()?;
    seen.iter()
        .all(|s| s.as_ref() == Some(&first))
        .then_some(first)
}
