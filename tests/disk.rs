//! A node whose disk fills up: its data dir on a small tmpfs that the test
//! mounts, fills with a file of its own, and frees again.
//!
//! Mounting needs root (CI runs as root). Elsewhere the test prints why it
//! is skipped and passes without checking anything.

mod common;

use common::{poll_until, sh, start, Proc};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted on a directory of the test's own; unmounted on drop,
/// also when the test fails.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot.
    fn mount(dir: &Path, mib: u32) -> Result<Tmpfs, String> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        if !root {
            return Err("mounting a tmpfs needs root (CI runs as root)".into());
        }
        std::fs::create_dir_all(dir).unwrap();
        let size = format!("size={mib}m");
        let target = dir.to_str().unwrap();
        if !sh(&["mount", "-t", "tmpfs", "-o", &size, "tmpfs", target]) {
            return Err(format!("`mount -t tmpfs` failed on {target}"));
        }
        Ok(Tmpfs {
            dir: dir.to_owned(),
        })
    }

    /// Fills the file system with `filler` until it refuses another byte.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        // Down to the last bytes, so the node's next journal write fails.
        let small = [0xA5u8; 512];
        while f.write_all(&small).is_ok() && f.flush().is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = self.dir.to_str().unwrap();
        if !sh(&["umount", target]) {
            sh(&["umount", "-l", target]);
        }
    }
}

#[test]
fn a_full_disk_refuses_writes_serves_reads_and_recovers_when_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&tmp.path().join("disk"), 32) {
        Ok(d) => d,
        Err(why) => {
            eprintln!(
                "SKIPPED a_full_disk_refuses_writes_serves_reads_and_recovers_when_freed: {why}"
            );
            return;
        }
    };
    // The data dir is the mount itself; the node's log goes beside it, off
    // the full disk.
    let node: Proc = start(&disk.dir, &[]);
    let mut acked = Vec::new();
    for i in 0..20 {
        let (code, _) = node.req(
            "PUT",
            &format!("/v1/kv/disk/k{i}"),
            Some(&json!(i).to_string()),
        );
        assert_eq!(code, 200);
        acked.push(i);
    }
    let filler = disk.fill();

    // Writes until one is refused: a few may still fit in the last pages.
    let value = json!("x".repeat(4096)).to_string();
    let refused = (20..2_000)
        .find_map(|i| {
            let (code, body) = node.req("PUT", &format!("/v1/kv/disk/k{i}"), Some(&value));
            match code {
                200 => {
                    acked.push(i);
                    None
                }
                _ => Some((code, body)),
            }
        })
        .expect("a write on a full disk was refused");
    assert_eq!(refused.0, 507, "{}", refused.1);
    assert_eq!(
        refused.1["error"]["code"], "insufficient_storage",
        "{}",
        refused.1
    );
    let message = refused.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("disk is full"), "{message}");

    // Read-only: every acknowledged write reads back, writes are refused
    // at once, and the node says why.
    for i in &acked {
        let (code, v) = node.req("GET", &format!("/v1/kv/disk/k{i}"), None);
        assert_eq!(
            code, 200,
            "acknowledged k{i} unreadable on a full disk: {v}"
        );
    }
    let status = node.get("/v1/status");
    assert_eq!(status["store"]["writable"], false, "{status}");
    let (code, v) = node.req("GET", "/readyz", None);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (503, Some("store_read_only")),
        "{v}"
    );
    let (code, _) = node.req(
        "POST",
        "/v1/tasks",
        Some(&json!({"capability": "x"}).to_string()),
    );
    assert_eq!(code, 507);
    assert_eq!(node.metric("shoal_store_writable"), 0.0);

    // While the disk stays full, its tries to reopen fail and it stays
    // read-only, serving reads.
    poll_until(
        Duration::from_secs(30),
        "a failed reopen on the full disk",
        || {
            let failed = node.metric("shoal_store_reopens_total{value=\"failed\"}");
            (failed >= 1.0).then_some(())
        },
    );
    assert_eq!(node.req("PUT", "/v1/kv/disk/still", Some("1")).0, 507);
    assert_eq!(node.req("GET", "/v1/kv/disk/k0", None).0, 200);

    // Space comes back: the node reopens its store by itself.
    std::fs::remove_file(&filler).unwrap();
    poll_until(
        Duration::from_secs(60),
        "a write to succeed after space was freed",
        || {
            let (code, _) = node.req("PUT", "/v1/kv/disk/after", Some("\"freed\""));
            (code == 200).then_some(())
        },
    );
    assert_eq!(node.get("/v1/status")["store"]["writable"], true);
    assert_eq!(node.req("GET", "/readyz", None).0, 200);
    assert!(node.metric("shoal_store_reopens_total{value=\"succeeded\"}") >= 1.0);
    for i in &acked {
        assert_eq!(node.req("GET", &format!("/v1/kv/disk/k{i}"), None).0, 200);
    }

    // And a restart finds every acknowledged write.
    assert_eq!(node.terminate(), Some(0));
    let node = start(&disk.dir, &[]);
    for i in &acked {
        let (code, v) = node.req("GET", &format!("/v1/kv/disk/k{i}"), None);
        assert_eq!(code, 200, "k{i} lost after the restart: {v}");
    }
    assert_eq!(node.get("/v1/kv/disk/after")["value"], "freed");
    drop(node);
}
