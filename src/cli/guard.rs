//! `shoal handler-guard`: what a node runs its handler commands under, so
//! that no handler outlives its node.
//!
//! The node starts the guard in a process group of its own; the guard asks
//! the kernel for SIGTERM when its parent (the node) dies, then runs the
//! command with `sh -c` in its own group. If the node dies, even by
//! `kill -9`, the guard kills the whole group (the shell and everything it
//! started) and exits; otherwise it exits with the command's status. The
//! node's own timeout and cancel kill the group as before.

/// Runs `cmd` under the guard; returns the exit code. `parent` is the
/// node's pid: if the node is already gone when the guard starts, the
/// command never runs.
pub fn run(parent: u32, cmd: &str) -> i32 {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::signal::Signal;
        if nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM)).is_err() {
            eprintln!("shoal handler-guard: cannot ask for the parent-death signal");
        }
    }
    if std::os::unix::process::parent_id() != parent {
        return 143; // the node died before the prctl: do not run
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal handler-guard: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("shoal handler-guard: {e}");
                return 1;
            }
        };
        // Same process group as the guard, stdin/stdout/stderr inherited.
        let mut child = match tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("shoal handler-guard: cannot start `sh`: {e}");
                return 127;
            }
        };
        tokio::select! {
            status = child.wait() => match status {
                Ok(s) => exit_code(s),
                Err(_) => 1,
            },
            _ = term.recv() => {
                kill_own_group();
                143
            }
        }
    })
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9))
}

/// SIGKILL to the guard's process group: the shell, what it started, and
/// the guard itself.
fn kill_own_group() {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::signal::{killpg, Signal};
        let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
    }
}
