//! What a run promises, checked as it goes, and what it measures.
//!
//! Invariants (each failure is a [`Violation`]):
//! - `ack_not_durable`: a write is acknowledged while the acknowledging
//!   node's store lacks it (checked at every acknowledgement).
//! - `ack_lost_on_restart`: a restarted node's store lacks a write it had
//!   acknowledged (checked at every restart).
//! - `fence_went_back`: a node started a task under a fence not newer than
//!   one it started it under before (checked at every start).
//! - `started_twice`: two nodes started one task under one fence (two
//!   placements at once; checked at every start).
//! - `no_convergence`: the live nodes' digests differ, or their views of
//!   who is alive do, when the liveness phase ends (checked every 100 ms of
//!   the liveness phase).
//! - `ack_lost`: after convergence, a live node lacks an acknowledged
//!   write, or an acknowledged submission.
//! - `succeeded_twice`: after convergence, a task's history records two
//!   successes under one fence, or under two when the older one's node was
//!   never cut off or paused (a cut-off node may keep running a task that
//!   was moved meanwhile: counted in `reruns_after_cut`, not a violation).
//! - `live_member_not_alive`: after convergence, a live node is not
//!   `alive` (or `draining`) in the others' view.

use crate::core::ids::{Fence, NodeId, TaskId};
use crate::core::knowledge::Version;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A broken promise, with when and where.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    /// Which invariant.
    pub kind: String,
    /// Simulated time, ms.
    pub at_ms: u64,
    /// What exactly.
    pub detail: String,
}

/// An acknowledged knowledge write.
#[derive(Clone, Debug)]
pub struct Ack {
    /// Namespace.
    pub ns: String,
    /// Key.
    pub key: String,
    /// The entry's version as written.
    pub version: Version,
    /// Which node acknowledged it.
    pub node: usize,
    /// When, µs.
    pub at_us: u64,
}

/// A write on its way to every node.
#[derive(Debug)]
struct Spreading {
    ack: usize,
    missing: usize,
    have: Vec<bool>,
}

/// Invariant state and measurements of a run.
#[derive(Debug, Default)]
pub struct Checker {
    /// Violations so far.
    pub violations: Vec<Violation>,
    /// Acknowledged writes.
    pub acks: Vec<Ack>,
    /// Acknowledged submissions.
    pub submitted: Vec<TaskId>,
    spreading: HashMap<(String, String), Vec<Spreading>, foldhash::fast::FixedState>,
    /// Time for acknowledged writes to reach every node, ms.
    pub convergence: Vec<f64>,
    /// Writes that never reached every node.
    pub unconverged: usize,
    starts: HashMap<(usize, TaskId), Fence, foldhash::fast::FixedState>,
    /// Where each (task, fence) started: one node only.
    runs: HashMap<(TaskId, Fence), usize, foldhash::fast::FixedState>,
    /// Crashed nodes: when, and who has seen them suspect / dead.
    crashes: BTreeMap<usize, Crash>,
    /// Nodes that crashed and came back.
    recovered: std::collections::BTreeSet<usize>,
    /// Detection: first suspicion and confirmed death at every survivor, ms.
    pub suspect_ms: Vec<f64>,
    /// Crash to every survivor seeing `dead`, ms.
    pub dead_ms: Vec<f64>,
    /// Suspect or dead verdicts about nodes that were running and reachable.
    pub false_suspects: u64,
    /// Dead verdicts about nodes that were running.
    pub false_deads: u64,
    /// Lease holders by control plane and term: who took office in it, and
    /// when.
    pub holders: BTreeMap<(u64, u64), (usize, u64)>,
    /// A lease holder's crash to every running node naming one new
    /// holder, ms.
    pub failover_ms: Vec<f64>,
    /// Operator recoveries of the control plane that were carried out.
    pub recoveries: usize,
    /// Tasks that ran twice because a node cut off kept running a task
    /// moved meanwhile (their result is the newer fence's).
    pub reruns: std::collections::BTreeSet<TaskId>,
}

#[derive(Debug)]
struct Crash {
    at_us: u64,
    survivors: usize,
    suspected: Vec<bool>,
    dead: Vec<bool>,
    suspect_count: usize,
    dead_count: usize,
}

impl Checker {
    /// Node `node` took office as lease holder of control plane `plane` in
    /// `term`: a second holder in one term of one plane violates Raft's
    /// election safety. (Two planes founded apart, sides of a partition at
    /// start with `bootstrap_expect` 1, each have their holder until they
    /// meet and one yields; that their holders never place one task under
    /// one fence is `started_twice`'s check.)
    pub fn took_office(&mut self, node: usize, plane: u64, term: u64, at_us: u64) {
        match self.holders.get(&(plane, term)) {
            Some((other, _)) if *other != node => self.violate(
                "two_lease_holders",
                at_us,
                format!(
                    "nodes {other} and {node} both hold the lease of plane {plane:016x} in term {term}"
                ),
            ),
            Some(_) => {}
            None => {
                self.holders.insert((plane, term), (node, at_us));
            }
        }
    }

    /// Records a violation.
    pub fn violate(&mut self, kind: &str, at_us: u64, detail: String) {
        self.violations.push(Violation {
            kind: kind.into(),
            at_ms: at_us / 1_000,
            detail,
        });
    }

    /// An acknowledged write that the nodes marked in `lacking` (running,
    /// and without it yet) must receive.
    pub fn acked(&mut self, ack: Ack, lacking: &[bool]) {
        let mut have: Vec<bool> = lacking.iter().map(|l| !l).collect();
        have[ack.node] = true;
        let missing = have.iter().filter(|h| !**h).count();
        let i = self.acks.len();
        if missing > 0 {
            self.spreading
                .entry((ack.ns.clone(), ack.key.clone()))
                .or_default()
                .push(Spreading {
                    ack: i,
                    missing,
                    have,
                });
        } else {
            self.convergence.push(0.0);
        }
        self.acks.push(ack);
    }

    /// Node `node` now holds the entry `ns/key` at `version`: the tracked
    /// writes it contains have reached it.
    pub fn merged(&mut self, node: usize, ns: &str, key: &str, version: &Version, at_us: u64) {
        let k = (ns.to_owned(), key.to_owned());
        let Some(list) = self.spreading.get_mut(&k) else {
            return;
        };
        let acks = &self.acks;
        let convergence = &mut self.convergence;
        list.retain_mut(|s| {
            let holds = version >= &acks[s.ack].version;
            !(holds && reach(s, node, &acks[s.ack], at_us, convergence))
        });
        if list.is_empty() {
            self.spreading.remove(&k);
        }
    }

    /// A node stopped for good (left): writes waiting for it wait no more.
    pub fn gone(&mut self, node: usize, at_us: u64) {
        let acks = &self.acks;
        let convergence = &mut self.convergence;
        self.spreading.retain(|_, list| {
            list.retain_mut(|s| !reach(s, node, &acks[s.ack], at_us, convergence));
            !list.is_empty()
        });
    }

    /// Closes the books on writes still spreading.
    pub fn finish(&mut self) {
        self.unconverged = self.spreading.values().map(Vec::len).sum();
    }

    /// A node starts a task under `fence`.
    pub fn started(&mut self, node: usize, task: &TaskId, fence: Fence, at_us: u64) {
        match self.runs.get(&(task.clone(), fence)) {
            Some(&other) if other != node => self.violate(
                "started_twice",
                at_us,
                format!("task {task} started under {fence} on nodes {other} and {node}"),
            ),
            Some(_) => {}
            None => {
                self.runs.insert((task.clone(), fence), node);
            }
        }
        let k = (node, task.clone());
        if let Some(prev) = self.starts.get(&k) {
            if fence <= *prev {
                self.violate(
                    "fence_went_back",
                    at_us,
                    format!("node {node} started task {task} under {fence} after {prev}"),
                );
            }
        }
        self.starts.insert(k, fence);
    }

    /// Node `node` crashed; `running` says which nodes survive.
    pub fn crashed(&mut self, node: usize, at_us: u64, running: &[bool]) {
        let survivors = running.iter().filter(|r| **r).count();
        self.crashes.insert(
            node,
            Crash {
                at_us,
                survivors,
                suspected: vec![false; running.len()],
                dead: vec![false; running.len()],
                suspect_count: 0,
                dead_count: 0,
            },
        );
    }

    /// Node `node` is back: detection of its crash ends, and verdicts
    /// about it still on their way are neither true nor false.
    pub fn restarted(&mut self, node: usize) {
        if self.crashes.remove(&node).is_some() {
            self.recovered.insert(node);
        }
    }

    /// Observer `by` reports `node` suspect (`dead` false) or dead.
    pub fn verdict(&mut self, by: usize, node: usize, dead: bool, at_us: u64, healthy: bool) {
        let Some(c) = self.crashes.get_mut(&node) else {
            if healthy && !self.recovered.contains(&node) {
                self.false_suspects += u64::from(!dead);
                self.false_deads += u64::from(dead);
            }
            return;
        };
        if by >= c.dead.len() {
            return;
        }
        let elapsed = at_us.saturating_sub(c.at_us) as f64 / 1_000.0;
        if !c.suspected[by] {
            c.suspected[by] = true;
            c.suspect_count += 1;
            if c.suspect_count == c.survivors {
                self.suspect_ms.push(elapsed);
            }
        }
        if dead && !c.dead[by] {
            c.dead[by] = true;
            c.dead_count += 1;
            if c.dead_count == c.survivors {
                self.dead_ms.push(elapsed);
            }
        }
    }
}

/// Marks a spreading write as at `node` (if it was not); true when that was
/// the last node it lacked, and records how long it took.
fn reach(s: &mut Spreading, node: usize, ack: &Ack, at_us: u64, out: &mut Vec<f64>) -> bool {
    if node >= s.have.len() || s.have[node] {
        return false;
    }
    s.have[node] = true;
    s.missing -= 1;
    if s.missing > 0 {
        return false;
    }
    out.push(at_us.saturating_sub(ack.at_us) as f64 / 1_000.0);
    true
}

/// p50, p99 and max of a sample, ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    /// How many.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `xs`.
    pub fn of(xs: &[f64]) -> Spread {
        if xs.is_empty() {
            return Spread::default();
        }
        let mut v = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        let r = |x: f64| (x * 10.0).round() / 10.0;
        Spread {
            count: v.len(),
            p50: r(at(0.5)),
            p99: r(at(0.99)),
            max: r(v[v.len() - 1]),
        }
    }
}

/// The id a node has in the simulation.
pub fn sim_node_id(i: usize) -> NodeId {
    NodeId::from(format!("sim{i:05}"))
}
