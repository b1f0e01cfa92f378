//! Federations of real processes on loopback, joined by bootstrap addresses.

mod common;

use common::{metric_lines, poll_until, poll_until_or, start_env, Proc};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "5e0a1f4c3b2d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

fn node(dir: &Path, name: &str, bootstrap: Option<&Proc>, extra: &[&str]) -> Proc {
    let mut args: Vec<&str> = vec!["--name", name, "--handler", "echo=cat"];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b.p2p.as_str()]);
    }
    args.extend(extra);
    start_env(&dir.join(name), &args, &[("SHOAL_SECRET", SECRET)])
}

fn federation(dir: &Path, n: usize, extra: &[&str]) -> Vec<Proc> {
    let mut nodes: Vec<Proc> = Vec::new();
    for i in 0..n {
        let p = node(dir, &format!("n{i}"), nodes.first(), extra);
        nodes.push(p);
    }
    wait_alive(&nodes, n as u64);
    nodes
}

fn wait_alive(nodes: &[Proc], n: u64) {
    for p in nodes {
        poll_until(
            Duration::from_secs(60),
            &format!("{n} alive members"),
            || (p.count_status("alive") == n).then_some(()),
        );
    }
}

fn wait_converged(nodes: &[&Proc]) -> String {
    poll_until(Duration::from_secs(60), "digests to agree", || {
        let d: Vec<String> = nodes.iter().map(|p| p.digest()).collect();
        d.windows(2).all(|w| w[0] == w[1]).then(|| d[0].clone())
    })
}

#[test]
fn three_nodes_share_knowledge_and_run_each_others_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = federation(dir.path(), 3, &[]);
    let (a, c) = (&nodes[0], &nodes[2]);
    a.put("/v1/kv/notes/x", &json!({"text": "from a"}));
    let v = poll_until(Duration::from_secs(20), "the write on c", || {
        let (code, v) = c.req("GET", "/v1/kv/notes/x", None);
        (code == 200).then_some(v)
    });
    assert_eq!(v["value"], json!({"text": "from a"}));
    a.put("/v1/balance", &json!({"strategy": "round_robin"}));
    poll_until(
        Duration::from_secs(20),
        "the strategy on every node",
        || {
            nodes
                .iter()
                .all(|p| p.get("/v1/balance")["strategy"] == "round_robin")
                .then_some(())
        },
    );
    let ids: Vec<String> = (0..9)
        .map(|i| {
            a.post("/v1/tasks", &json!({"capability": "echo", "payload": i}))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut ran_on = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let t = a.wait_task(id);
        assert_eq!(t["status"], "succeeded");
        assert_eq!(t["result"], json!(i));
        ran_on.insert(t["node"].as_str().unwrap().to_owned());
    }
    let all: BTreeSet<String> = nodes.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ran_on, all, "round robin used every node");
    wait_converged(&nodes.iter().collect::<Vec<_>>());
}

#[test]
fn each_task_runs_once_when_every_node_submits() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let handler = format!("work=echo $SHOAL_TASK_ID >> {}; cat", log.display());
    let nodes = federation(dir.path(), 3, &["--handler", &handler]);
    let mut ids = Vec::new();
    for round in 0..8 {
        for p in &nodes {
            let t = p.post(
                "/v1/tasks",
                &json!({"capability": "work", "payload": round, "strategy": "random"}),
            );
            ids.push(t["id"].as_str().unwrap().to_owned());
        }
    }
    for id in &ids {
        poll_until(
            Duration::from_secs(30),
            "every task to succeed everywhere",
            || {
                nodes
                    .iter()
                    .all(|p| p.get(&format!("/v1/tasks/{id}"))["status"] == "succeeded")
                    .then_some(())
            },
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        *runs.entry(line.trim()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            runs.get(id.as_str()),
            Some(&1),
            "task {id} ran {:?} times",
            runs.get(id.as_str())
        );
    }
}

#[test]
fn a_late_joiner_gets_the_full_state() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = federation(dir.path(), 2, &[]);
    for i in 0..200 {
        nodes[i % 2].put(&format!("/v1/kv/bulk/k{i}"), &json!(i));
    }
    nodes[0].put("/v1/kv/tags", &json!({"policy": "set"}));
    let t = nodes[1].post(
        "/v1/tasks",
        &json!({"capability": "echo", "payload": "early"}),
    );
    nodes[1].wait_task(t["id"].as_str().unwrap());
    let late = node(dir.path(), "late", Some(&nodes[1]), &[]);
    let d = wait_converged(&[&nodes[0], &nodes[1], &late]);
    assert_eq!(late.digest(), d);
    assert_eq!(late.get("/v1/kv/bulk")["count"], 200);
    assert_eq!(
        late.get(&format!("/v1/tasks/{}", t["id"].as_str().unwrap()))["result"],
        "early"
    );
    wait_alive(&[late], 3);
}

#[test]
fn a_killed_node_restarts_catches_up_and_is_the_same_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = federation(dir.path(), 3, &[]);
    let c = nodes.pop().unwrap();
    let c_id = c.id.clone();
    c.kill9();
    for i in 0..50 {
        nodes[0].put(&format!("/v1/kv/while-down/k{i}"), &json!(i));
    }
    let c = node(dir.path(), "n2", Some(&nodes[0]), &[]);
    assert_eq!(c.id, c_id);
    wait_converged(&[&nodes[0], &nodes[1], &c]);
    assert_eq!(c.get("/v1/kv/while-down")["count"], 50);
}

#[test]
fn a_dead_node_is_declared_dead_then_removed_everywhere_and_rejoins_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    // A removal timeout of 4 s instead of the fast profile's 10 s.
    let removal = ["--removed-after-ms", "4000"];
    let mut nodes = federation(dir.path(), 3, &removal);
    let c = nodes.pop().unwrap();
    let c_id = c.id.clone();
    let before = nodes[0].get(&format!("/v1/nodes/{c_id}"))["incarnation"]
        .as_u64()
        .unwrap();
    c.kill9();
    for p in &nodes {
        poll_until(
            Duration::from_secs(40),
            "the killed node to be declared dead",
            || {
                let st = p.get(&format!("/v1/nodes/{c_id}"))["status"].clone();
                (st == "dead" || st == "removed").then_some(())
            },
        );
    }
    let audit = nodes[0].get("/v1/audit");
    let by_any = nodes.iter().any(|p| {
        p.get("/v1/audit")["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "node_declared_dead")
    });
    assert!(by_any, "a death verdict is audited: {audit}");

    // The lease holder removes it once dead for the removal timeout: a
    // tombstone, listed only when asked for.
    for p in &nodes {
        poll_until(
            Duration::from_secs(40),
            "the dead node to be removed",
            || (p.get(&format!("/v1/nodes/{c_id}"))["status"] == "removed").then_some(()),
        );
        assert_eq!(
            p.get("/v1/nodes")["count"],
            2,
            "a removed node is not listed"
        );
        assert_eq!(p.count_status("removed"), 1);
        assert_eq!(p.get("/v1/status")["cluster"]["removed"], 1);
    }
    let holder = poll_until_or(
        Duration::from_secs(20),
        "an agreed holder",
        || common::agreed_leader(nodes.iter().map(|p| p.get("/v1/leader"))),
        || {
            nodes
                .iter()
                .map(|p| {
                    let log = std::fs::read_to_string(&p.stderr_path).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    format!(
                        "{}: {} {}\n{}",
                        p.id,
                        p.get("/v1/leader"),
                        p.get("/v1/nodes?status=removed"),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
    .0;
    let record = nodes
        .iter()
        .flat_map(|p| p.get("/v1/audit")["records"].as_array().unwrap().clone())
        .find(|r| r["action"] == "node_removed" && r["subject"] == c_id.as_str())
        .expect("the removal is audited");
    assert_eq!(
        record["by"],
        holder.as_str(),
        "the holder removed it: {record}"
    );

    // It comes back over the tombstone with a higher incarnation.
    let c = node(dir.path(), "n2", Some(&nodes[0]), &removal);
    for p in &nodes {
        poll_until(
            Duration::from_secs(30),
            "the node to be alive again",
            || {
                let v = p.get(&format!("/v1/nodes/{c_id}"));
                (v["status"] == "alive" && v["incarnation"].as_u64().unwrap() > before)
                    .then_some(())
            },
        );
        assert_eq!(p.get("/v1/nodes")["count"], 3);
    }
    drop(c);
}

#[test]
fn a_node_with_another_secret_never_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = federation(dir.path(), 2, &[]);
    let other = "00".repeat(32);
    let intruder = start_env(
        &dir.path().join("intruder"),
        &[
            "--bootstrap",
            nodes[0].p2p.as_str(),
            "--handler",
            "echo=cat",
        ],
        &[("SHOAL_SECRET", other.as_str())],
    );
    poll_until(
        Duration::from_secs(30),
        "the intruder's connection attempts to fail",
        || {
            (intruder.metric("shoal_dropped_total{value=\"connection_failed\"}") >= 2.0)
                .then_some(())
        },
    );
    assert_eq!(
        intruder.get("/v1/nodes")["count"],
        1,
        "the intruder learned about members"
    );
    for p in &nodes {
        assert_eq!(
            p.get("/v1/nodes")["count"],
            2,
            "a member learned about the intruder"
        );
        assert_eq!(p.metric("shoal_peers"), 1.0);
    }
    let (code, _) = nodes[0].req("GET", &format!("/v1/nodes/{}", intruder.id), None);
    assert_eq!(code, 404);
}

/// QUIC has no byte stream for pnet; Shoal's admission handshake (each side
/// proves the cluster secret) stands in for it. Every node here listens on
/// QUIC only, so nothing can fall back to TCP.
#[test]
fn nodes_federate_over_quic_alone_and_another_secret_is_refused_there() {
    let dir = tempfile::tempdir().unwrap();
    let quic = ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"];
    let nodes = federation(dir.path(), 3, &quic);
    for p in &nodes {
        assert!(p.p2p.contains("/quic-v1/"), "{}", p.p2p);
        poll_until(Duration::from_secs(20), "two QUIC peers", || {
            (p.metric("shoal_peers") == 2.0).then_some(())
        });
    }
    nodes[2].put("/v1/kv/q/k", &json!("over quic"));
    poll_until(Duration::from_secs(20), "the write on node 0", || {
        let (code, v) = nodes[0].req("GET", "/v1/kv/q/k", None);
        (code == 200 && v["value"] == json!("over quic")).then_some(())
    });

    let other = "00".repeat(32);
    let intruder = start_env(
        &dir.path().join("intruder"),
        &[&quic[..], &["--bootstrap", nodes[0].p2p.as_str()]].concat(),
        &[("SHOAL_SECRET", other.as_str())],
    );
    poll_until(
        Duration::from_secs(30),
        "both sides to refuse the QUIC connection",
        || {
            let failed = intruder.metric("shoal_dropped_total{value=\"connection_failed\"}");
            let refused = nodes[0].metric("shoal_dropped_total{value=\"connection_refused\"}");
            (failed >= 2.0 && refused >= 2.0).then_some(())
        },
    );
    let log = std::fs::read_to_string(&intruder.stderr_path).unwrap();
    assert!(
        log.contains("did not prove the cluster secret"),
        "the intruder's log says why it was refused"
    );
    assert_eq!(intruder.get("/v1/nodes")["count"], 1);
    assert_eq!(intruder.metric("shoal_peers"), 0.0);
    for p in &nodes {
        assert_eq!(
            p.get("/v1/nodes")["count"],
            3,
            "a member learned about the intruder"
        );
        assert_eq!(p.metric("shoal_peers"), 2.0);
    }
}

#[test]
fn ten_nodes_form_one_federation_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = federation(dir.path(), 10, &[]);
    nodes[9].put("/v1/kv/big/hello", &json!("ten"));
    nodes[4].put("/v1/kv/big/other", &json!(5));
    wait_converged(&nodes.iter().collect::<Vec<_>>());
    for p in &nodes {
        assert_eq!(p.get("/v1/kv/big")["count"], 2);
    }
}

/// Sends `signal` (`STOP`, `CONT`) to a node's process.
fn signal(p: &Proc, signal: &str) {
    let pid = p.pid().to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Whether any node's audit log holds a death verdict about `id`.
fn declared_dead_anywhere(nodes: &[&Proc], id: &str) -> bool {
    nodes.iter().any(|p| {
        p.get("/v1/audit")["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "node_declared_dead" && r["subject"] == id)
    })
}

/// Waits until every node has sent 12 more probes (in the fast profile 6 s,
/// twice the longest suspicion of a small federation: protocol progress to
/// wait on instead of a sleep), then checks that no node declared `id`
/// dead and that each holds it with `status`.
fn no_verdict_after_probes(nodes: &[Proc], id: &str, status: &str, what: &str) {
    let all: Vec<&Proc> = nodes.iter().collect();
    wait_probes(&all, 12.0);
    assert!(
        !declared_dead_anywhere(&all, id),
        "{what} was declared dead"
    );
    for p in nodes {
        let v = p.get(&format!("/v1/nodes/{id}"));
        assert_eq!(v["status"], status, "{v}");
    }
}

/// Waits until every node has sent `n` more probes than now.
fn wait_probes(nodes: &[&Proc], n: f64) {
    let key = "shoal_failure_detection_total{value=\"probe_sent\"}";
    let start: Vec<f64> = nodes.iter().map(|p| p.metric(key)).collect();
    poll_until(Duration::from_secs(60), "probes to go on", || {
        nodes
            .iter()
            .zip(&start)
            .all(|(p, s)| p.metric(key) >= s + n)
            .then_some(())
    });
}

#[test]
fn a_pause_shorter_than_the_suspicion_gives_no_verdict() {
    let dir = tempfile::tempdir().unwrap();
    // A suspicion of at least 5 s (multiplier 10 at a 500 ms interval):
    // the test sees it, wakes the node and the refutation spreads within
    // that window even on a loaded machine. With the fast profile's 1 s a
    // CI run lost the race, a timing test, not a protocol failure.
    let nodes = federation(dir.path(), 4, &["--suspect-after-missed", "10"]);
    let paused = &nodes[3];
    let id = paused.id.clone();
    let before = nodes[0].get(&format!("/v1/nodes/{id}"))["incarnation"]
        .as_u64()
        .unwrap();
    // A pause (a GC pause, a frozen VM) until some member suspects it,
    // then it wakes, and refutes as soon as it hears of the suspicion.
    signal(paused, "STOP");
    let others = &nodes[..3];
    poll_until(
        Duration::from_secs(20),
        "a member to suspect the paused node",
        || {
            others
                .iter()
                .any(|p| p.get(&format!("/v1/nodes/{id}"))["status"] == "suspect")
                .then_some(())
        },
    );
    signal(paused, "CONT");
    for p in &nodes {
        poll_until(
            Duration::from_secs(30),
            "the refutation, a higher incarnation, on every node",
            || {
                let v = p.get(&format!("/v1/nodes/{id}"));
                (v["status"] == "alive" && v["incarnation"].as_u64().unwrap() > before)
                    .then_some(())
            },
        );
    }
    no_verdict_after_probes(&nodes, &id, "alive", "a paused node that came back in time");
}

#[test]
fn a_graceful_stop_is_left_not_dead() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = federation(dir.path(), 3, &[]);
    let leaving = nodes.pop().unwrap();
    let id = leaving.id.clone();
    assert_eq!(leaving.terminate(), Some(0));
    for p in &nodes {
        poll_until(Duration::from_secs(30), "the node to be left", || {
            (p.get(&format!("/v1/nodes/{id}"))["status"] == "left").then_some(())
        });
    }
    no_verdict_after_probes(&nodes, &id, "left", "a leaver");
    for p in &nodes {
        assert_eq!(p.count_status("suspect"), 0);
    }
}

/// The lease holder every node names, once they all name the same one:
/// `(id, term)`.
fn agreed_lease(nodes: &[&Proc]) -> Option<(String, u64)> {
    common::agreed_leader(nodes.iter().map(|p| p.get("/v1/leader")))
}

/// Waits until every node names one lease holder and the autopilot has
/// grown its plane to three voters, all of them among `nodes` (the live
/// ones: a voter killed a moment ago still counts in the holder's
/// configuration until it is seen dead and replaced): the holder, its term
/// and its index.
fn holder_of_three_voters(nodes: &[Proc]) -> (String, u64, usize) {
    poll_until(
        Duration::from_secs(60),
        "one lease holder and three live voters",
        || {
            let (holder, term) = agreed_lease(&nodes.iter().collect::<Vec<_>>())?;
            let at = nodes.iter().position(|p| p.id == holder)?;
            let v = nodes[at].get("/v1/leader");
            let voters = v["voters"].as_array()?;
            let live = voters
                .iter()
                .all(|v| nodes.iter().any(|p| v.as_str() == Some(p.id.as_str())));
            (voters.len() == 3 && live).then_some((holder, term, at))
        },
    )
}

#[test]
fn a_bystander_keeps_naming_an_unchanged_holder() {
    // One voter: the announcement never changes but for its count. Gossip
    // drops a message it has seen (by content), so without the count an
    // unchanged lease announced again never arrived and the bystander's
    // view expired after the claim's lifetime (5 s in the fast profile).
    let dir = tempfile::tempdir().unwrap();
    let nodes = federation(dir.path(), 2, &["--voters", "1"]);
    let all: Vec<&Proc> = nodes.iter().collect();
    let (holder, term) = poll_until(Duration::from_secs(60), "one lease holder", || {
        agreed_lease(&all)
    });
    let bystander = nodes.iter().find(|p| p.id != holder).unwrap();
    // What is under test is a view that holds over time (it expired after
    // the claim's lifetime): so the test looks at it every 250 ms for three
    // lifetimes and wants the holder named at every look. The sleep below
    // is that sampling, not a wait for an event.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < until {
        let seen = bystander.get("/v1/leader");
        assert_eq!(seen["leader"]["id"], holder.as_str(), "{seen}");
        assert_eq!(seen["leader"]["term"], term, "{seen}");
        std::thread::sleep(Duration::from_millis(250)); // sampling interval
    }
}

#[test]
fn one_lease_holder_is_elected_and_another_takes_over_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = federation(dir.path(), 4, &[]);
    let (holder, term, at) = holder_of_three_voters(&nodes);
    let status = nodes[0].get("/v1/status");
    assert_eq!(status["leader"]["id"], holder, "{status}");
    assert_eq!(status["term"], term, "{status}");

    nodes.remove(at).kill9();
    let survivors: Vec<&Proc> = nodes.iter().collect();
    let (next, next_term) = poll_until(
        Duration::from_secs(30),
        "the survivors to name a new lease holder",
        || agreed_lease(&survivors).filter(|(_, t)| *t > term),
    );
    assert_ne!(next, holder);
    let new_holder = nodes.iter().find(|p| p.id == next).unwrap();
    let audit = new_holder.get("/v1/audit");
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "lease_acquired" && r["detail"] == format!("term {next_term}")),
        "{audit}"
    );
    // The dead voter is replaced: three voters again, the old holder not
    // among them.
    poll_until(Duration::from_secs(60), "the dead voter replaced", || {
        let v = new_holder.get("/v1/leader")["voters"].clone();
        let voters: Vec<&str> = v.as_array()?.iter().filter_map(|x| x.as_str()).collect();
        (voters.len() == 3 && !voters.contains(&holder.as_str())).then_some(())
    });
}

#[test]
fn a_task_fenced_by_a_plane_that_yielded_in_a_higher_term_still_moves() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    std::fs::create_dir_all(&hold).unwrap();
    // `slow` hangs on a node with a hold file, as a long task would.
    let slow = format!(
        "slow=if [ -e {}/$SHOAL_NODE_ID ]; then sleep 300; fi; cat",
        hold.display()
    );
    let mut nodes = federation(dir.path(), 3, &["--handler", &slow]);
    holder_of_three_voters(&nodes);

    // Plane b: one voter (it must lose to a's three when they meet),
    // restarted until its term is well past plane a's (a margin: an
    // election in plane a meanwhile must not catch up).
    let one = ["--voters", "1"];
    let mut b0 = node(dir.path(), "b0", None, &one);
    let b_term = loop {
        let term = poll_until(Duration::from_secs(30), "b0 to hold its lease", || {
            b0.get("/v1/leader")["leader"]["term"].as_u64()
        });
        let (_, a_term, _) = holder_of_three_voters(&nodes);
        if term > a_term + 3 {
            break term;
        }
        b0.kill9();
        b0 = node(dir.path(), "b0", None, &one);
    };
    // Its task runs on b1 (b's only node with `slow`), fenced in b's term.
    let b1 = node(
        dir.path(),
        "b1",
        Some(&b0),
        &["--handler", &slow, "--voters", "1"],
    );
    std::fs::write(hold.join(&b1.id), b"").unwrap();
    poll_until(Duration::from_secs(30), "b0 to see b1", || {
        (b0.count_status("alive") == 2).then_some(())
    });
    let task = b0.post("/v1/tasks", &json!({"capability": "slow", "payload": 1}));
    let id = task["id"].as_str().unwrap().to_owned();
    let fence = poll_until(Duration::from_secs(30), "the task to run on b1", || {
        let t = b0.get(&format!("/v1/tasks/{id}"));
        (t["status"] == "running" && t["node"] == b1.id.as_str())
            .then(|| t["fence"].as_str().unwrap().to_owned())
    });
    assert_eq!(fence_of(&fence).0, b_term, "fenced in b's term: {fence}");

    // A node that knows both planes joins them: the smaller one yields.
    let bridge = node(
        dir.path(),
        "bridge",
        Some(&nodes[0]),
        &["--bootstrap", b0.p2p.as_str()],
    );
    nodes.push(bridge);
    nodes.push(b0);
    let b1_id = b1.id.clone();
    nodes.push(b1);
    wait_alive(&nodes, 6);
    let (holder, term, at) = holder_of_three_voters(&nodes);
    assert!(
        term < b_term,
        "plane a's term {term} is still below b's {b_term}; holder {holder}: {}",
        nodes[at].get("/v1/audit")
    );

    // b1 dies with the task running: the holder must move it, under a
    // fence newer than b's.
    let victim = nodes.iter().position(|p| p.id == b1_id).unwrap();
    nodes.remove(victim).kill9();
    let at = if victim < at { at - 1 } else { at };
    let t = poll_until_or(
        Duration::from_secs(30),
        "the task to finish elsewhere",
        || {
            // The holder may not have received b's task yet.
            let t = nodes[at].get_if_found(&format!("/v1/tasks/{id}"))?;
            (t["status"] == "succeeded").then_some(t)
        },
        || {
            format!(
                "task: {}\nleader: {}\naudit: {}",
                nodes[at]
                    .get_if_found(&format!("/v1/tasks/{id}"))
                    .unwrap_or_default(),
                nodes[at].get("/v1/leader"),
                nodes[at].get("/v1/audit")
            )
        },
    );
    assert!(fence_of(t["fence"].as_str().unwrap()).0 > b_term, "{t}");
    let audit = nodes[at].get("/v1/audit");
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "lease_term_raised" && r["subject"] == holder.as_str()),
        "{audit}"
    );
}

#[test]
fn an_operator_recovers_a_plane_that_lost_its_majority() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = federation(dir.path(), 5, &[]);
    let (holder, term, at) = holder_of_three_voters(&nodes);
    let voters: Vec<String> = nodes[at].get("/v1/leader")["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let bystander = nodes.iter().position(|p| !voters.contains(&p.id)).unwrap();
    let survivor = nodes
        .iter()
        .position(|p| voters.contains(&p.id) && p.id != holder)
        .unwrap();

    // Refused while the plane has a holder, and on a node that is not a
    // voter: nothing changes.
    let (code, _, err) = nodes[survivor].cli(&["leader", "recover"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has a lease holder"), "{err}");
    let (code, _, err) = nodes[bystander].cli(&["leader", "recover"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a voter"), "{err}");

    // Two of the three voters die, the holder among them: no majority, no
    // holder.
    let survivor_id = nodes[survivor].id.clone();
    let lost: Vec<String> = voters
        .iter()
        .filter(|v| **v != survivor_id)
        .cloned()
        .collect();
    for id in &lost {
        let i = nodes.iter().position(|p| p.id == *id).unwrap();
        nodes.remove(i).kill9();
    }
    let s = nodes.iter().position(|p| p.id == survivor_id).unwrap();
    poll_until(
        Duration::from_secs(30),
        "the survivor to hold no lease",
        || nodes[s].get("/v1/leader")["leader"].is_null().then_some(()),
    );
    // The recovery is refused while the survivor still counts a majority
    // healthy: it waits until it suspects the two it lost.
    poll_until(Duration::from_secs(30), "the lost voters suspected", || {
        lost.iter()
            .all(|id| nodes[s].get(&format!("/v1/nodes/{id}"))["status"] != "alive")
            .then_some(())
    });

    let (code, out, err) = nodes[s].cli(&["leader", "recover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{survivor_id} holds the lease")),
        "{out}"
    );
    for id in &lost {
        assert!(
            out.contains(id.as_str()),
            "names the lost voter {id}: {out}"
        );
    }
    let survivors: Vec<&Proc> = nodes.iter().collect();
    let (now_holder, now_term) = poll_until(
        Duration::from_secs(30),
        "every survivor to name the recovered holder",
        || agreed_lease(&survivors),
    );
    assert_eq!(now_holder, survivor_id);
    assert!(now_term > term + 999, "term {now_term} after {term}");
    let audit = nodes[s].get("/v1/audit");
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "control_plane_recovered"),
        "{audit}"
    );
    // The autopilot adds the two bystanders back as voters.
    poll_until(Duration::from_secs(60), "three voters again", || {
        let v = nodes[s].get("/v1/leader")["voters"].clone();
        let voters: Vec<&str> = v.as_array()?.iter().filter_map(|x| x.as_str()).collect();
        (voters.len() == 3 && lost.iter().all(|l| !voters.contains(&l.as_str()))).then_some(())
    });
}

#[test]
fn a_holder_that_stops_hands_the_lease_to_a_voter_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = federation(dir.path(), 4, &[]);
    let (_, term, at) = holder_of_three_voters(&nodes);
    let leaving = nodes.remove(at);
    let log = leaving.stderr_path.clone();
    assert_eq!(leaving.terminate(), Some(0));
    let survivors: Vec<&Proc> = nodes.iter().collect();
    let (next, _) = poll_until(
        Duration::from_secs(30),
        "the others to name a new lease holder",
        || agreed_lease(&survivors).filter(|(_, t)| *t > term),
    );
    // Raft's leadership transfer, not an election after a timeout: the new
    // holder is the voter the old one handed the lease to.
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("handing the lease over"))
        .unwrap_or_else(|| panic!("no hand-over in the leaving holder's log:\n{text}"));
    assert!(
        line.contains(&next),
        "handed to another than {next}: {line}"
    );
}

/// Handler process groups a test saw start (from their log lines); killed
/// on drop, since a node killed with -9 leaves its handlers running.
struct Handlers(std::path::PathBuf);

impl Drop for Handlers {
    fn drop(&mut self) {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        for line in text.lines().filter(|l| l.starts_with("start ")) {
            // Only a handler's own process group (its shell is the leader):
            // never 0, 1 or this test's own.
            let pgid = line
                .split_whitespace()
                .nth(4)
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pgid) = pgid.filter(|p| *p > 1 && *p != std::process::id()) {
                // `--`: without it, procps' kill reads `-PGID` as an
                // option and signals every process (kill(-1)).
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pgid}")])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

#[test]
fn tasks_of_a_node_killed_with_9_finish_elsewhere_under_a_new_fence() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let hold = dir.path().join("hold");
    std::fs::create_dir_all(&hold).unwrap();
    // Each run logs its start (with its process group) and its end; on a
    // node with a hold file it hangs, as a long task would.
    let handler = format!(
        "work=echo \"start $SHOAL_TASK_ID $SHOAL_TASK_FENCE $SHOAL_NODE_ID $$\" >> {log}; \
         if [ -e {hold}/$SHOAL_NODE_ID ]; then sleep 300; fi; \
         echo \"done $SHOAL_TASK_ID $SHOAL_TASK_FENCE $SHOAL_NODE_ID\" >> {log}; cat",
        log = log.display(),
        hold = hold.display()
    );
    let _handlers = Handlers(log.clone());
    let mut nodes = federation(dir.path(), 4, &["--handler", &handler]);
    let all: Vec<&Proc> = nodes.iter().collect();
    let (holder, _) = poll_until(
        Duration::from_secs(60),
        "every node to name one lease holder",
        || agreed_lease(&all),
    );
    let at = (nodes.iter().position(|p| p.id != holder)).unwrap();
    let victim_id = nodes[at].id.clone();
    std::fs::write(hold.join(&victim_id), b"").unwrap();
    let ids: Vec<String> = (0..8)
        .map(|i| {
            let t = nodes[0].post(
                "/v1/tasks",
                &json!({"capability": "work", "payload": i, "strategy": "round_robin"}),
            );
            t["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let on_victim: Vec<String> = poll_until(
        Duration::from_secs(30),
        "the victim to run its tasks, and the others to finish theirs",
        || {
            let mut mine = Vec::new();
            for id in &ids {
                let t = nodes[0].get(&format!("/v1/tasks/{id}"));
                match (t["status"].as_str()?, t["node"].as_str()?) {
                    ("running", n) if n == victim_id => mine.push(id.clone()),
                    ("succeeded", n) if n != victim_id => {}
                    _ => return None,
                }
            }
            (!mine.is_empty()).then_some(mine)
        },
    );
    nodes.remove(at).kill9();
    let holder_proc = nodes.iter().find(|p| p.id == holder).unwrap();
    for id in &on_victim {
        let t = poll_until_or(
            Duration::from_secs(30),
            "the killed node's task to finish elsewhere",
            || {
                let t = holder_proc.get_if_found(&format!("/v1/tasks/{id}"))?;
                (t["status"] == "succeeded").then_some(t)
            },
            || {
                format!(
                    "task: {}\nleader: {}\nnodes: {}\nmetrics: {}",
                    holder_proc
                        .get_if_found(&format!("/v1/tasks/{id}"))
                        .unwrap_or_default(),
                    holder_proc.get("/v1/leader"),
                    holder_proc.get("/v1/nodes"),
                    metric_lines(holder_proc, &["refused", "rejected", "malformed"])
                )
            },
        );
        assert_ne!(t["node"], victim_id.as_str(), "{t}");
        let term: u64 = t["fence"]
            .as_str()
            .and_then(|f| f.split('.').next()?.parse().ok())
            .unwrap_or(0);
        assert!(term > 0, "moved under the holder's term: {t}");
    }
    let audit = holder_proc.get("/v1/audit");
    let migrations = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "task_migrated")
        .count();
    assert!(migrations >= on_victim.len(), "{audit}");
    // Each task finished exactly once.
    let text = std::fs::read_to_string(&log).unwrap();
    for id in &ids {
        let done = text
            .lines()
            .filter(|l| l.starts_with(&format!("done {id} ")))
            .count();
        assert_eq!(done, 1, "task {id} finished {done} times:\n{text}");
    }
}

#[test]
fn saturated_nodes_run_each_pending_task_once() {
    // Issue 11's report: nodes of one slot each, tasks submitted round-robin
    // on all of them; most wait pending, and before one authority per
    // placement two nodes could place one pending task at once and both
    // targets ran it.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let handler = format!(
        "work=echo \"start $SHOAL_TASK_ID $SHOAL_TASK_FENCE $SHOAL_NODE_ID\" >> {}; sleep 0.05; cat",
        log.display()
    );
    let nodes = federation(dir.path(), 6, &["--handler", &handler, "--capacity", "1"]);
    let mut ids = Vec::new();
    for round in 0..10 {
        for p in &nodes {
            let t = p.post(
                "/v1/tasks",
                &json!({"capability": "work", "payload": round, "strategy": "round_robin"}),
            );
            ids.push(t["id"].as_str().unwrap().to_owned());
        }
    }
    for id in &ids {
        poll_until(Duration::from_secs(60), "every task to succeed", || {
            (nodes[0].get(&format!("/v1/tasks/{id}"))["status"] == "succeeded").then_some(())
        });
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        let id = line.split_whitespace().nth(1).unwrap_or_default();
        *runs.entry(id).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            runs.get(id.as_str()),
            Some(&1),
            "task {id} ran {:?} times:\n{text}",
            runs.get(id.as_str())
        );
    }
}

#[test]
fn a_handler_never_sees_the_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = federation(
        dir.path(),
        1,
        &[
            "--handler",
            "env=printenv | grep '^SHOAL_' | cut -d= -f1 | sort | tr '\\n' ' '",
        ],
    );
    let t = nodes[0].post("/v1/tasks", &json!({"capability": "env", "payload": 0}));
    let done = nodes[0].wait_task(t["id"].as_str().unwrap());
    assert_eq!(done["status"], "succeeded", "{done}");
    let seen = done["result"].as_str().unwrap_or_default().to_owned();
    assert!(!seen.contains("SHOAL_SECRET"), "the handler saw: {seen}");
    assert!(
        seen.contains("SHOAL_TASK_ID") && seen.contains("SHOAL_NODE_ID"),
        "the handler saw: {seen}"
    );
}

/// A fence as the API and `SHOAL_TASK_FENCE` spell it (`term.seq`).
fn fence_of(text: &str) -> (u64, u64) {
    let (t, s) = text.split_once('.').unwrap_or(("0", "0"));
    (t.parse().unwrap_or(0), s.parse().unwrap_or(0))
}

/// Reads a log of `start|done TASK FENCE NODE ...` lines, in the order the
/// handlers wrote them, and flags every result reported under a fence lower
/// than one already seen for its task (a run that outlived its move).
fn results_under_older_fences(text: &str) -> Vec<String> {
    let mut newest: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut flagged = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [kind, task, fence, ..] = w[..] else {
            continue;
        };
        let f = fence_of(fence);
        let seen = newest.entry(task).or_insert(f);
        if kind == "done" && f < *seen {
            flagged.push(line.to_owned());
        }
        *seen = (*seen).max(f);
    }
    flagged
}

#[test]
fn tasks_survive_repeated_kills_and_no_result_comes_under_an_older_fence() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    // Each run takes 2 s and logs its start and its end with its fence.
    let handler = format!(
        "work=echo \"start $SHOAL_TASK_ID $SHOAL_TASK_FENCE $SHOAL_NODE_ID $$\" >> {log}; \
         sleep 2; echo \"done $SHOAL_TASK_ID $SHOAL_TASK_FENCE $SHOAL_NODE_ID\" >> {log}; cat",
        log = log.display()
    );
    let _handlers = Handlers(log.clone());
    let mut nodes = federation(dir.path(), 5, &["--handler", &handler]);
    let mut ids: Vec<String> = Vec::new();
    // Kill a node running tasks, then the lease holder, each while a batch
    // of tasks runs.
    for round in 0..2 {
        // A plane of three voters loses at most one to each kill.
        let (holder, _, _) = holder_of_three_voters(&nodes);
        // Submitted to and watched from a node that stays.
        let api = nodes.iter().position(|p| p.id != holder).unwrap();
        let batch: Vec<String> = (0..8)
            .map(|i| {
                let t = nodes[api].post(
                    "/v1/tasks",
                    &json!({"capability": "work", "payload": [round, i], "strategy": "round_robin"}),
                );
                t["id"].as_str().unwrap().to_owned()
            })
            .collect();
        let victim = poll_until(Duration::from_secs(30), "a victim running a task", || {
            batch.iter().find_map(|id| {
                let t = nodes[api].get(&format!("/v1/tasks/{id}"));
                let node = t["node"].as_str()?;
                let wanted = if round == 0 {
                    node != holder && node != nodes[api].id
                } else {
                    node == holder
                };
                (t["status"] == "running" && wanted).then(|| node.to_owned())
            })
        });
        let at = nodes.iter().position(|p| p.id == victim).unwrap();
        nodes.remove(at).kill9();
        ids.extend(batch);
    }
    for id in &ids {
        let t = poll_until_or(
            Duration::from_secs(60),
            "every task to succeed after the kills",
            || {
                let t = nodes[0].get(&format!("/v1/tasks/{id}"));
                (t["status"] == "succeeded").then_some(t)
            },
            || {
                let leader = nodes[0].get("/v1/leader");
                let holder = leader["leader"]["id"].as_str().unwrap_or_default();
                let seen = nodes.iter().find(|p| p.id == holder).unwrap_or(&nodes[0]);
                let views: Vec<String> = nodes
                    .iter()
                    .map(|p| {
                        let log = std::fs::read_to_string(&p.stderr_path).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(40).collect();
                        format!(
                            "{}: leader {} nodes {}\n{}",
                            p.id,
                            p.get("/v1/leader"),
                            p.get("/v1/nodes"),
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                format!(
                    "task: {}\nleader: {leader}\nholder's view of the task: {}\n\
                     holder's audit: {}\n{}",
                    nodes[0].get(&format!("/v1/tasks/{id}")),
                    seen.get(&format!("/v1/tasks/{id}")),
                    seen.get("/v1/audit"),
                    views.join("\n\n"),
                )
            },
        );
        // The result recorded is the newest fence's run.
        let text = std::fs::read_to_string(&log).unwrap();
        let newest = text
            .lines()
            .filter(|l| l.starts_with("start ") && l.contains(id.as_str()))
            .filter_map(|l| l.split_whitespace().nth(2).map(fence_of))
            .max()
            .unwrap();
        assert_eq!(
            fence_of(t["fence"].as_str().unwrap()),
            newest,
            "{t}\n{text}"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let flagged = results_under_older_fences(&text);
    assert!(
        flagged.is_empty(),
        "results under older fences: {flagged:?}\n{text}"
    );
    // One run ended under each task's final fence (a run on a killed node
    // died with it; one that ended just before the kill ended under an
    // older fence, before the newer run started, which the check above
    // allows).
    for id in &ids {
        let t = nodes[0].get(&format!("/v1/tasks/{id}"));
        let fence = t["fence"].as_str().unwrap();
        let done = text
            .lines()
            .filter(|l| l.starts_with(&format!("done {id} {fence} ")))
            .count();
        assert_eq!(
            done, 1,
            "task {id} ended {done} times under {fence}:\n{text}"
        );
    }
}

#[test]
fn the_fence_log_checker_flags_a_result_under_an_older_fence() {
    let ok = "start t 1.1 a 9\nstart t 2.2 b 8\ndone t 2.2 b\n";
    assert!(results_under_older_fences(ok).is_empty());
    let stale = "start t 1.1 a 9\nstart t 2.2 b 8\ndone t 1.1 a\ndone t 2.2 b\n";
    assert_eq!(results_under_older_fences(stale), vec!["done t 1.1 a"]);
    // Fences compare as numbers, term first.
    assert!(fence_of("10.1") > fence_of("9.5"));
}
