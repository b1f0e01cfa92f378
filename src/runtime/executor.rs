//! Runs tasks with handlers: functions registered by a program that embeds
//! the node, or shell commands from `--handler NAME=COMMAND`.
//!
//! A command gets the payload JSON on stdin, none of the node's own
//! `SHOAL_*` variables (the cluster secret among them), and `SHOAL_TASK_ID`,
//! `SHOAL_TASK_FENCE`, `SHOAL_TASK_ATTEMPT` and `SHOAL_NODE_ID` in its
//! environment; its stdout (JSON if it parses, else a string) is the result;
//! a non-zero exit or the timeout is a failure. Commands run in their own
//! process group, which is killed on timeout or cancel.

use crate::core::ids::{Fence, NodeId, TaskId};
use crate::core::knowledge::canonical_json;
use crate::core::replica::{Outcome, StartTask};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// What a handler gets.
#[derive(Clone, Debug)]
pub struct TaskContext {
    /// The task.
    pub id: TaskId,
    /// Its capability.
    pub capability: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// The fence of this attempt (make side effects idempotent with it).
    pub fence: Fence,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The node running it.
    pub node: NodeId,
}

/// An embedded handler: an async function from the task to its result.
pub type HandlerFn =
    Arc<dyn Fn(TaskContext) -> BoxFuture<'static, Result<serde_json::Value, String>> + Send + Sync>;

/// How a capability is run on this node.
#[derive(Clone)]
pub enum Handler {
    /// A function of the embedding program.
    Embedded(HandlerFn),
    /// A shell command (`sh -c`).
    Command(String),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handler::Embedded(_) => f.write_str("Embedded(..)"),
            Handler::Command(c) => write!(f, "Command({c:?})"),
        }
    }
}

/// Handlers by capability.
pub type Handlers = BTreeMap<String, Handler>;

/// Largest handler output kept, in bytes.
const MAX_OUTPUT: usize = 1 << 20;

/// Runs one attempt to its outcome, or until `cancel` fires (then the
/// outcome is `None` and the process group is killed).
pub async fn run(
    handler: Handler,
    task: StartTask,
    node: NodeId,
    cancel: oneshot::Receiver<()>,
) -> Option<Outcome> {
    let payload: serde_json::Value =
        serde_json::from_str(&task.payload).unwrap_or(serde_json::Value::Null);
    let ctx = TaskContext {
        id: task.id.clone(),
        capability: task.capability.clone(),
        payload,
        fence: task.fence,
        attempt: task.attempt,
        node,
    };
    let limit = Duration::from_secs(task.timeout_secs);
    match handler {
        Handler::Embedded(f) => {
            tokio::select! {
                r = tokio::time::timeout(limit, f(ctx)) => Some(match r {
                    Ok(Ok(v)) => Outcome::Success(canonical_json(&v)),
                    Ok(Err(e)) => Outcome::Failure(e),
                    Err(_) => Outcome::Failure(format!("timed out after {} s", task.timeout_secs)),
                }),
                _ = cancel => None,
            }
        }
        Handler::Command(cmd) => run_command(&cmd, &task.payload, ctx, limit, cancel).await,
    }
}

/// The binary that runs handler commands under its `handler-guard`
/// subcommand (the `shoal` binary sets itself); without one, commands run
/// directly under `sh -c` (the library used in-process, as the benchmarks
/// do), and a handler can outlive a node killed with -9.
static GUARD: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Runs handler commands under `exe handler-guard` from now on.
pub fn set_guard(exe: std::path::PathBuf) {
    let _ = GUARD.set(exe);
}

/// Kills a handler's process group when the run ends in any way (a
/// dropped future included): nothing it started is left behind.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        kill_group(self.0.take());
    }
}

async fn run_command(
    cmd: &str,
    payload: &str,
    ctx: TaskContext,
    limit: Duration,
    cancel: oneshot::Receiver<()>,
) -> Option<Outcome> {
    let mut command = match GUARD.get() {
        Some(exe) => {
            let mut c = tokio::process::Command::new(exe);
            c.arg("handler-guard")
                .arg("--parent")
                .arg(std::process::id().to_string())
                .arg("--")
                .arg(cmd);
            c
        }
        None => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(cmd);
            c
        }
    };
    // A handler sees none of the node's own settings: SHOAL_SECRET above
    // all (the cluster secret), nor SHOAL_API_TOKEN and the rest.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHOAL_") {
            command.env_remove(&key);
        }
    }
    command
        .env("SHOAL_TASK_ID", ctx.id.as_str())
        .env("SHOAL_TASK_FENCE", ctx.fence.to_string())
        .env("SHOAL_TASK_ATTEMPT", ctx.attempt.to_string())
        .env("SHOAL_NODE_ID", ctx.node.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Some(Outcome::Failure(format!(
                "cannot start handler `{cmd}`: {e}"
            )))
        }
    };
    let pid = child.id();
    let mut group = GroupKill(pid);
    if let Some(mut stdin) = child.stdin.take() {
        let bytes = payload.as_bytes().to_vec();
        tokio::spawn(async move {
            // A handler that does not read its stdin is fine.
            let _ = stdin.write_all(&bytes).await;
        });
    }
    // Both pipes are read while the command runs, each kept up to
    // MAX_OUTPUT and the rest read and dropped: a handler that writes
    // without end costs the node a bounded buffer, not its memory.
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (stdout, stderr, status) =
            tokio::join!(read_bounded(stdout), read_bounded(stderr), child.wait());
        Ok::<_, std::io::Error>(std::process::Output {
            status: status?,
            stdout,
            stderr,
        })
    };
    let outcome = tokio::select! {
        out = tokio::time::timeout(limit, run) => match out {
            Ok(Ok(output)) => {
                // It ended by itself; what it left running in its group
                // (background jobs) is its own business.
                group.0 = None;
                Some(outcome_of(output))
            }
            Ok(Err(e)) => Some(Outcome::Failure(format!("handler failed: {e}"))),
            Err(_) => {
                kill_group(pid);
                Some(Outcome::Failure(format!("timed out after {} s", limit.as_secs())))
            }
        },
        _ = cancel => {
            kill_group(pid);
            None
        }
    };
    outcome
}

/// Reads a pipe to its end, keeping the first [`MAX_OUTPUT`] bytes.
async fn read_bounded<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

fn outcome_of(output: std::process::Output) -> Outcome {
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .trim()
            .chars()
            .rev()
            .take(500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let code = output
            .status
            .code()
            .map(|c| format!("exit code {c}"))
            .unwrap_or_else(|| "killed by a signal".into());
        return Outcome::Failure(if tail.is_empty() {
            code
        } else {
            format!("{code}: {tail}")
        });
    }
    let mut stdout = output.stdout;
    stdout.truncate(MAX_OUTPUT);
    let text = String::from_utf8_lossy(&stdout);
    let trimmed = text.trim();
    let value = serde_json::from_str::<serde_json::Value>(trimmed)
        .unwrap_or_else(|_| serde_json::Value::String(trimmed.to_owned()));
    Outcome::Success(canonical_json(&value))
}

/// Kills a handler's whole process group (the shell and what it started).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::Term;

    fn task(payload: &str, timeout_secs: u64) -> StartTask {
        StartTask {
            id: TaskId("t1".into()),
            capability: "c".into(),
            payload: payload.into(),
            fence: Fence {
                term: Term(0),
                seq: 3,
            },
            attempt: 2,
            timeout_secs,
        }
    }

    async fn go(cmd: &str, t: StartTask) -> Option<Outcome> {
        let (_tx, rx) = oneshot::channel();
        run(Handler::Command(cmd.into()), t, NodeId::from("n1"), rx).await
    }

    #[tokio::test]
    async fn command_gets_payload_and_environment() {
        let out = go("cat", task("{\"x\":1}", 5)).await;
        assert_eq!(out, Some(Outcome::Success("{\"x\":1}".into())));
        let out = go(
            "echo $SHOAL_TASK_ID $SHOAL_TASK_FENCE $SHOAL_TASK_ATTEMPT $SHOAL_NODE_ID",
            task("{}", 5),
        )
        .await;
        assert_eq!(out, Some(Outcome::Success("\"t1 0.3 2 n1\"".into())));
    }

    #[tokio::test]
    async fn nonzero_exit_and_timeout_are_failures() {
        let out = go("echo oops >&2; exit 3", task("{}", 5)).await.unwrap();
        assert_eq!(out, Outcome::Failure("exit code 3: oops".into()));
        let out = go("sleep 30", task("{}", 1)).await.unwrap();
        assert!(matches!(out, Outcome::Failure(m) if m.contains("timed out")));
    }

    #[tokio::test]
    async fn endless_output_is_read_and_bounded_while_it_runs() {
        // 64 MiB on stdout and stderr: the run ends (the pipes are drained,
        // so the writer never blocks) with at most MAX_OUTPUT kept of each.
        let out = go(
            "head -c 67108864 /dev/zero | tr '\\0' a; head -c 67108864 /dev/zero >&2",
            task("{}", 30),
        )
        .await
        .unwrap();
        match out {
            Outcome::Success(text) => assert!(text.len() <= MAX_OUTPUT + 2, "{}", text.len()),
            other => panic!("{other:?}"),
        }
    }
}
