//! A run's report: what the last line of `shoal-sim run --json` prints.

use super::check::{Spread, Violation};
use super::world::World;
use serde::Serialize;

/// Traffic per node and second, by class.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PerNode {
    /// Every frame.
    pub total: f64,
    /// Gossip messages (publishes, forwards, pulls).
    pub gossip: f64,
    /// Gossipsub control (lazy-gossip ids, grafts).
    pub control: f64,
    /// Anti-entropy (sync requests and answers).
    pub sync: f64,
    /// Failure detection (SWIM pings, acks, ping requests, nacks).
    pub probe: f64,
}

/// What a run did and found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// Nodes at the end (joins included).
    pub nodes_final: usize,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// Wall time of the run, ms (the one field that differs between runs).
    pub wall_ms: u64,
    /// Broken promises (empty when none).
    pub violations: Vec<Violation>,
    /// The command that replays this run.
    pub replay: String,
    /// Messages (frames) sent per node per second.
    pub messages_per_node_per_sec: PerNode,
    /// Bytes sent per node per second.
    pub bytes_per_node_per_sec: PerNode,
    /// Acknowledged write to every node, ms.
    pub convergence_ms: Spread,
    /// Acknowledged writes that never reached every node.
    pub unconverged_writes: usize,
    /// Crash to every survivor suspecting the node, ms.
    pub detection_suspect_ms: Spread,
    /// Crash to every survivor holding the node dead, ms.
    pub detection_dead_ms: Spread,
    /// Suspicions of nodes that were running and reachable.
    pub false_suspicions: u64,
    /// Death verdicts about nodes that were running.
    pub false_deaths: u64,
    /// From the last of the first nodes' start until every running node
    /// listed every other one alive, ms, to 100 ms (null: not within two
    /// minutes).
    pub join_ms: Option<u64>,
    /// From the heal to every node agreeing, ms (null: never).
    pub liveness_ms: Option<u64>,
    /// Acknowledged knowledge writes.
    pub writes_acknowledged: usize,
    /// Acknowledged task submissions.
    pub tasks_submitted: usize,
    /// Gossip frames dropped as duplicates by receivers.
    pub duplicates: u64,
    /// Frames lost (cuts, loss, closed connections).
    pub dropped: u64,
    /// Open connections at the end.
    pub connections: usize,
    /// Events the simulator processed.
    pub events: u64,
    /// Terms in which a node took office as lease holder.
    pub lease_terms: usize,
    /// A lease holder's crash to every running node naming one new holder,
    /// ms.
    pub failover_ms: Spread,
    /// Operator recoveries of the control plane carried out (`recover`
    /// faults that found a voter and were not refused).
    pub lease_recoveries: usize,
    /// Distinct lease holders the running nodes name at the end (1 when
    /// they agree).
    pub lease_holders_at_end: usize,
    /// Running nodes that know no lease holder at the end.
    pub lease_unknown_at_end: usize,
    /// Voters of the plane as its holder knows them at the end (the
    /// autopilot restores them after crashes; 0 with no holder).
    pub lease_voters_at_end: usize,
    /// Tasks run twice because a node cut off kept running a task that was
    /// moved meanwhile (the result recorded is the newer fence's).
    pub reruns_after_cut: usize,
}

fn per_node(v: [u64; 4], nodes: usize, secs: f64) -> PerNode {
    let d = (nodes.max(1) as f64 * secs.max(1e-9)).max(1e-9);
    let r = |x: f64| (x / d * 100.0).round() / 100.0;
    PerNode {
        total: r(v.iter().sum::<u64>() as f64),
        gossip: r(v[0] as f64),
        control: r(v[1] as f64),
        sync: r(v[2] as f64),
        probe: r(v[3] as f64),
    }
}

impl Report {
    pub(super) fn of(
        w: &World,
        seed: u64,
        nodes: usize,
        file: &str,
        wall: std::time::Duration,
    ) -> Report {
        let secs = w.now as f64 / 1e6;
        let n = w.nodes.len();
        let t = w.traffic;
        Report {
            seed,
            nodes,
            nodes_final: n,
            sim_ms: w.now / 1_000,
            wall_ms: wall.as_millis() as u64,
            violations: w.check.violations.clone(),
            replay: format!("shoal-sim run {file} --seed {seed} --nodes {nodes}"),
            messages_per_node_per_sec: per_node(t.frames, n, secs),
            bytes_per_node_per_sec: per_node(t.bytes, n, secs),
            convergence_ms: Spread::of(&w.check.convergence),
            unconverged_writes: w.check.unconverged,
            detection_suspect_ms: Spread::of(&w.check.suspect_ms),
            detection_dead_ms: Spread::of(&w.check.dead_ms),
            false_suspicions: w.check.false_suspects,
            false_deaths: w.check.false_deads,
            join_ms: w.joined_in.map(|us| us / 1_000),
            liveness_ms: match (w.liveness_at, w.converged_at) {
                (Some(l), Some(c)) => Some((c - l) / 1_000),
                _ => None,
            },
            writes_acknowledged: w.check.acks.len(),
            tasks_submitted: w.check.submitted.len(),
            duplicates: t.duplicates,
            dropped: t.dropped,
            connections: w.net.link_count(),
            events: w.events,
            lease_terms: w.check.holders.len(),
            reruns_after_cut: w.check.reruns.len(),
            failover_ms: Spread::of(&w.check.failover_ms),
            lease_recoveries: w.check.recoveries,
            lease_holders_at_end: {
                let named: std::collections::BTreeSet<_> = w
                    .nodes
                    .iter()
                    .filter(|n| n.running())
                    .filter_map(|n| n.engine.as_ref()?.lease())
                    .map(|l| l.holder)
                    .collect();
                named.len()
            },
            lease_voters_at_end: w
                .nodes
                .iter()
                .filter(|n| n.running())
                .filter_map(|n| n.engine.as_ref())
                .find(|e| e.lease().is_some_and(|l| l.holder == *e.node()))
                .map_or(0, |e| e.voters().len()),
            lease_unknown_at_end: w
                .nodes
                .iter()
                .filter(|n| n.running())
                .filter(|n| n.engine.as_ref().is_some_and(|e| e.lease().is_none()))
                .count(),
        }
    }

    /// The report with its wall time zeroed: equal for two runs of one seed.
    pub fn without_wall_time(&self) -> Report {
        Report {
            wall_ms: 0,
            ..self.clone()
        }
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "seed {} · {} nodes ({} at the end) · {} ms simulated in {} ms\n",
            self.seed, self.nodes, self.nodes_final, self.sim_ms, self.wall_ms
        );
        let m = &self.messages_per_node_per_sec;
        let b = &self.bytes_per_node_per_sec;
        s += &format!(
            "traffic per node: {:.1} msg/s (gossip {:.1}, control {:.1}, sync {:.1}, probe {:.1}), {:.0} B/s\n",
            m.total, m.gossip, m.control, m.sync, m.probe, b.total
        );
        s += &match self.join_ms {
            Some(ms) => format!(
                "join: every node lists every other alive {ms} ms after the last one started\n"
            ),
            None => "join: not every node listed every other alive within two minutes\n".into(),
        };
        let c = &self.convergence_ms;
        s += &format!(
            "writes to every node: p50 {} ms, p99 {} ms, max {} ms ({} writes, {} never)\n",
            c.p50, c.p99, c.max, c.count, self.unconverged_writes
        );
        let d = &self.detection_dead_ms;
        s += &format!(
            "detection: dead at every survivor p50 {} ms, max {} ms ({} crashes); false suspicions {}, false deaths {}\n",
            d.p50, d.max, d.count, self.false_suspicions, self.false_deaths
        );
        s += &format!(
            "lease: {} terms with a holder; failover p50 {} ms, max {} ms ({}); at the end {} holder(s) named, {} node(s) knowing none, {} voters\n",
            self.lease_terms,
            self.failover_ms.p50,
            self.failover_ms.max,
            self.failover_ms.count,
            self.lease_holders_at_end,
            self.lease_unknown_at_end,
            self.lease_voters_at_end
        );
        if self.lease_recoveries > 0 {
            s += &format!(
                "control plane recovered by an operator {} time(s)\n",
                self.lease_recoveries
            );
        }
        if self.reruns_after_cut > 0 {
            s += &format!(
                "tasks run twice by a node cut off while they were moved: {}\n",
                self.reruns_after_cut
            );
        }
        s += &match self.liveness_ms {
            Some(ms) => format!("agreement {ms} ms after the heal\n"),
            None => "no agreement after the heal\n".into(),
        };
        if self.violations.is_empty() {
            s += "0 violations\n";
        } else {
            s += &format!("{} violation(s):\n", self.violations.len());
            for v in &self.violations {
                s += &format!("  {} at {} ms: {}\n", v.kind, v.at_ms, v.detail);
            }
            s += &format!("replay: {}\n", self.replay);
        }
        s
    }
}
