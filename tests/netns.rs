//! Nodes on separate network hosts: network namespaces joined by a bridge
//! that lives in its own namespace, created and removed by each test.
//!
//! These tests need root (CI runs as root). Elsewhere they print why they are
//! skipped and pass without checking anything.

mod common;

use common::{first_line, poll_until, sh, shoal_bin};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn must(args: &[&str]) {
    assert!(sh(args), "command failed: {}", args.join(" "));
}

/// Whether this machine can run the test; prints the reason when not.
fn can_run(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !root {
        eprintln!("SKIPPED {test}: network namespaces need root (CI runs as root)");
        return false;
    }
    if !sh(&["ip", "netns", "list"]) {
        eprintln!("SKIPPED {test}: `ip netns` is not available (install iproute2)");
        return false;
    }
    true
}

/// Hosts on one bridge. Everything it creates is removed on drop, also when
/// the test fails.
struct Lab {
    tag: String,
    hosts: Vec<String>,
    nodes: Vec<Child>,
    /// A router host between the two bridges, if the lab has one.
    router: Option<String>,
    /// Each node's log, shown when a test fails.
    logs: Vec<std::path::PathBuf>,
}

impl Lab {
    fn new(n: usize, test: u8) -> Lab {
        let tag = format!("s{}{test}", std::process::id() % 100_000);
        let mut lab = Lab {
            tag: tag.clone(),
            hosts: Vec::new(),
            nodes: Vec::new(),
            router: None,
            logs: Vec::new(),
        };
        let br = lab.ns_bridge();
        must(&["ip", "netns", "add", &br]);
        must(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &br, "link", "add", "br1", "type", "bridge"]);
        must(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        must(&["ip", "-n", &br, "link", "set", "br1", "up"]);
        for i in 0..n {
            let host = format!("{tag}h{i}");
            must(&["ip", "netns", "add", &host]);
            lab.hosts.push(host.clone());
            let (inner, outer) = (format!("{tag}v{i}"), format!("{tag}p{i}"));
            must(&[
                "ip", "link", "add", &inner, "netns", &host, "type", "veth", "peer", "name",
                &outer, "netns", &br,
            ]);
            must(&["ip", "-n", &br, "link", "set", &outer, "master", "br0"]);
            must(&["ip", "-n", &br, "link", "set", &outer, "up"]);
            let addr = format!("10.231.{test}.{}/24", i + 1);
            must(&["ip", "-n", &host, "addr", "add", &addr, "dev", &inner]);
            must(&["ip", "-n", &host, "link", "set", &inner, "up"]);
            must(&["ip", "-n", &host, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Two subnets: hosts `0..split` on br0 (10.231.T.0/24), the rest on br1
    /// (10.232.T.0/24), and a router host with a leg on each (.254) that
    /// forwards between them. Multicast is not routed, so mDNS stays within
    /// a subnet.
    fn routed(n: usize, split: usize, test: u8) -> Lab {
        let mut lab = Lab::new(n, test);
        let br = lab.ns_bridge();
        let router = format!("{}rt", lab.tag);
        must(&["ip", "netns", "add", &router]);
        lab.router = Some(router.clone());
        for (leg, net) in [(0, 231), (1, 232)] {
            let (inner, outer) = (format!("{}r{leg}", lab.tag), format!("{}q{leg}", lab.tag));
            must(&[
                "ip", "link", "add", &inner, "netns", &router, "type", "veth", "peer", "name",
                &outer, "netns", &br,
            ]);
            must(&[
                "ip",
                "-n",
                &br,
                "link",
                "set",
                &outer,
                "master",
                &format!("br{leg}"),
            ]);
            must(&["ip", "-n", &br, "link", "set", &outer, "up"]);
            let addr = format!("10.{net}.{test}.254/24");
            must(&["ip", "-n", &router, "addr", "add", &addr, "dev", &inner]);
            must(&["ip", "-n", &router, "link", "set", &inner, "up"]);
        }
        must(&[
            "ip",
            "netns",
            "exec",
            &router,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        for i in split..n {
            // Move host i to the second subnet.
            lab.attach(i, "br1");
            let (host, dev) = (lab.hosts[i].clone(), format!("{}v{i}", lab.tag));
            must(&["ip", "-n", &host, "addr", "flush", "dev", &dev]);
            let addr = format!("10.232.{test}.{}/24", i + 1);
            must(&["ip", "-n", &host, "addr", "add", &addr, "dev", &dev]);
        }
        for (i, host) in lab.hosts.iter().enumerate() {
            let net = if i < split { 231 } else { 232 };
            let via = format!("10.{net}.{test}.254");
            must(&["ip", "-n", host, "route", "add", "default", "via", &via]);
        }
        lab
    }

    fn ns_bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// Moves host `i`'s bridge port to `bridge` (br0 = together, br1 = cut off).
    fn attach(&self, i: usize, bridge: &str) {
        let port = format!("{}p{i}", self.tag);
        must(&[
            "ip",
            "-n",
            &self.ns_bridge(),
            "link",
            "set",
            &port,
            "master",
            bridge,
        ]);
    }

    /// Starts a node on host `i`; returns its API URL (reachable inside the host only).
    fn start(&mut self, i: usize, dir: &std::path::Path, extra: &[&str]) -> String {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i],
                shoal_bin(),
                "start",
                "--profile",
                "fast",
            ])
            // The default listen addresses: TCP and QUIC on port 7000.
            .args(["--api", "127.0.0.1:7070", "--handler", "echo=cat"])
            .arg("--data-dir")
            .arg(dir.join(format!("h{i}")))
            .args(extra)
            .env("SHOAL_SECRET", "ab".repeat(32))
            .env_remove("SHOAL_API")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("h{i}.log"))).unwrap())
            .spawn()
            .unwrap();
        let line = first_line(&mut child, Duration::from_secs(60));
        self.nodes.push(child);
        self.logs.push(dir.join(format!("h{i}.log")));
        let line = line.expect("node ready");
        assert!(line.contains("ready"), "{line}");
        "http://127.0.0.1:7070".to_owned()
    }

    /// Runs the CLI with `--json` inside host `i`.
    fn cli(&self, i: usize, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i],
                shoal_bin(),
                "--api",
                "http://127.0.0.1:7070",
                "--json",
            ])
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn digest(&self, i: usize) -> String {
        self.cli(i, &["stats"])["digest"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("---- {} (last 60 lines)", log.display());
                for l in &lines[lines.len().saturating_sub(60)..] {
                    eprintln!("{l}");
                }
            }
        }
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            let _ = sh(&["ip", "netns", "del", h]);
        }
        if let Some(router) = &self.router {
            let _ = sh(&["ip", "netns", "del", router]);
        }
        let _ = sh(&["ip", "netns", "del", &self.ns_bridge()]);
    }
}

#[test]
fn nodes_on_separate_hosts_find_each_other_by_mdns_alone() {
    if !can_run("mdns") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new(2, 1);
    lab.start(0, dir.path(), &[]);
    lab.start(1, dir.path(), &[]);
    for i in 0..2 {
        poll_until(Duration::from_secs(30), "mDNS discovery", || {
            (lab.cli(i, &["nodes", "--status", "alive"])["count"] == 2).then_some(())
        });
    }
}

#[test]
fn writes_on_both_sides_of_a_cut_converge_after_it_heals() {
    if !can_run("partition") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new(3, 2);
    for i in 0..3 {
        lab.start(
            i,
            dir.path(),
            &["--no-mdns", "--bootstrap", "/ip4/10.231.2.1/tcp/7000"],
        );
    }
    for i in 0..3 {
        poll_until(Duration::from_secs(30), "the federation", || {
            (lab.cli(i, &["nodes", "--status", "alive"])["count"] == 3).then_some(())
        });
    }
    lab.cli(0, &["kv", "policy", "shared", "mv"]);
    poll_until(Duration::from_secs(20), "the policy everywhere", || {
        (0..3)
            .all(|i| lab.cli(i, &["kv", "list", "shared"])["policy"] == "mv")
            .then_some(())
    });
    // cut host 2 off
    lab.attach(2, "br1");
    assert_eq!(
        lab.cli(0, &["kv", "put", "shared", "k", "\"majority\""])["value"],
        "majority"
    );
    assert_eq!(
        lab.cli(2, &["kv", "put", "shared", "k", "\"isolated\""])["value"],
        "isolated"
    );
    lab.cli(2, &["kv", "put", "shared", "only-isolated", "1"]);
    lab.cli(1, &["kv", "put", "shared", "only-majority", "2"]);
    // once the cut-off node suspects the others, its new tasks run on itself
    poll_until(
        Duration::from_secs(20),
        "the isolated node to suspect the others",
        || (lab.cli(2, &["nodes", "--status", "alive"])["count"] == 1).then_some(()),
    );
    let t = lab.cli(
        2,
        &["task", "submit", "--capability", "echo", "--payload", "7"],
    );
    let id = t["id"].as_str().unwrap().to_owned();
    poll_until(
        Duration::from_secs(20),
        "the isolated node to run its own task",
        || (lab.cli(2, &["task", "get", &id])["status"] == "succeeded").then_some(()),
    );
    assert_ne!(lab.digest(0), lab.digest(2));
    // heal
    lab.attach(2, "br0");
    let d = poll_until(
        Duration::from_secs(60),
        "digests to agree after the heal",
        || {
            let d: Vec<String> = (0..3).map(|i| lab.digest(i)).collect();
            (d.iter().all(|x| x == &d[0]) && !d[0].is_empty()).then(|| d[0].clone())
        },
    );
    assert!(!d.is_empty());
    for i in 0..3 {
        let k = lab.cli(i, &["kv", "get", "shared", "k"]);
        let mut sib: Vec<String> = k["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        sib.sort();
        assert_eq!(
            sib,
            vec!["isolated", "majority"],
            "both sides' writes are kept on host {i}"
        );
        assert_eq!(lab.cli(i, &["kv", "list", "shared"])["count"], 3);
        assert_eq!(lab.cli(i, &["task", "get", &id])["result"], 7);
    }
}

/// Two LANs joined by a router: each finds its own members by mDNS, one
/// node knows a bootstrap address on the other LAN, and every node ends up
/// connected to every other, across the router, without being told.
#[test]
fn two_lans_joined_by_one_bootstrap_address_form_one_federation() {
    if !can_run("two-lans") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::routed(4, 2, 3);
    lab.start(0, dir.path(), &[]);
    lab.start(1, dir.path(), &[]);
    lab.start(2, dir.path(), &["--bootstrap", "/ip4/10.231.3.1/tcp/7000"]);
    lab.start(3, dir.path(), &[]);
    for i in 0..4 {
        poll_until(Duration::from_secs(60), "one federation of 4", || {
            (lab.cli(i, &["nodes", "--status", "alive"])["count"] == 4).then_some(())
        });
    }
    // Host 3 was told nothing about the first LAN, and mDNS does not cross
    // the router: it reached hosts 0 and 1 from their member records.
    for i in 0..4 {
        poll_until(
            Duration::from_secs(30),
            "direct links to all 3 others",
            || (lab.cli(i, &["status"])["peers"] == 3).then_some(()),
        );
    }
    lab.cli(3, &["kv", "put", "lans", "from", "\"the second LAN\""]);
    poll_until(
        Duration::from_secs(20),
        "the write on the first LAN",
        || (lab.cli(0, &["kv", "get", "lans", "from"])["value"] == "the second LAN").then_some(()),
    );
}

/// The lease holder every host names, once they all name the same one.
fn agreed_lease(lab: &Lab, hosts: &[usize]) -> Option<(String, u64)> {
    common::agreed_leader(hosts.iter().map(|&i| lab.cli(i, &["leader"])))
}

#[test]
fn a_holder_cut_off_alone_steps_down_and_the_majority_elects_another() {
    if !can_run("holder partition") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::new(3, 4);
    for i in 0..3 {
        lab.start(
            i,
            dir.path(),
            &["--no-mdns", "--bootstrap", "/ip4/10.231.4.1/tcp/7000"],
        );
    }
    let all = [0, 1, 2];
    let (holder, term) = poll_until(Duration::from_secs(60), "one lease holder", || {
        agreed_lease(&lab, &all)
    });
    poll_until(Duration::from_secs(60), "three voters", || {
        let v = lab.cli(0, &["leader"]);
        (v["voters"].as_array().map_or(0, |a| a.len()) == 3).then_some(())
    });
    let h = (0..3)
        .find(|&i| lab.cli(i, &["status"])["node"]["id"] == holder.as_str())
        .unwrap();
    let rest: Vec<usize> = all.into_iter().filter(|&i| i != h).collect();

    // Cut the holder off alone: the two others are a majority of voters.
    lab.attach(h, "br1");
    let (next, next_term) = poll_until(
        Duration::from_secs(30),
        "the majority to elect a new holder",
        || agreed_lease(&lab, &rest).filter(|(_, t)| *t > term),
    );
    assert_ne!(next, holder);
    // The old holder loses its quorum and steps down (check_quorum): it
    // names no holder, and it cannot be elected alone (pre-vote).
    poll_until(
        Duration::from_secs(30),
        "the cut-off holder to step down",
        || lab.cli(h, &["leader"])["leader"].is_null().then_some(()),
    );

    // Heal: the old holder rejoins under the new term and cannot disrupt
    // it (pre-vote): every host names the majority's holder.
    lab.attach(h, "br0");
    let (after, after_term) = poll_until(
        Duration::from_secs(60),
        "every host to name one holder after the heal",
        || agreed_lease(&lab, &all),
    );
    assert!(after_term >= next_term, "{after_term} < {next_term}");
    assert_eq!(after, next, "the majority's holder kept the lease");
}
