//! The workload, the faults of the safety phase, and the liveness phase
//! with its closing checks.

use super::{Asked, SimEvent, World, NAMESPACES};
use crate::core::engine::Command;
use crate::core::member::MemberStatus;
use crate::core::replica::SubmitRequest;
use crate::core::task::TaskStatus;

/// How often the liveness phase looks for agreement, µs.
const CHECK_EVERY_US: u64 = 100_000;

impl World {
    /// A node that can take a request now: running, not paused, not gone.
    fn pick_active(&mut self) -> Option<usize> {
        for _ in 0..16 {
            let i = self.rng_work.below(self.nodes.len());
            let n = &self.nodes[i];
            if n.running() && n.paused_until <= self.now && !n.gone {
                return Some(i);
            }
        }
        None
    }

    /// One request of the workload, and the next one scheduled.
    pub(super) fn workload(&mut self) {
        let w = &self.scenario.workload;
        let (kv, tasks, keys) = (w.kv_per_sec, w.tasks_per_sec, w.keys);
        let rate = kv + tasks;
        if self.liveness_at.is_some() || rate <= 0.0 {
            return;
        }
        let gap_s = -(1.0 - self.rng_work.next_f64()).ln() / rate;
        self.after((gap_s * 1e6) as u64 + 1, SimEvent::Workload);
        let Some(i) = self.pick_active() else {
            return;
        };
        self.writes += 1;
        let n = self.writes;
        if self.rng_work.next_f64() * rate < kv {
            let ns = NAMESPACES[(n % 3) as usize].0.to_owned();
            let key = format!("k{}", self.rng_work.below(keys));
            let cmd = Command::KvPut {
                ns: ns.clone(),
                key: key.clone(),
                value: serde_json::json!(n),
            };
            self.command(i, n, cmd, Asked::Put { ns, key });
        } else {
            let req = SubmitRequest {
                capability: "work".into(),
                payload: serde_json::json!({ "n": n }),
                max_attempts: Some(3),
                timeout_secs: Some(60),
                strategy: self
                    .scenario
                    .workload
                    .strategy
                    .as_deref()
                    .and_then(|s| s.parse().ok()),
                ..SubmitRequest::default()
            };
            self.command(i, n, Command::Submit(req), Asked::Submit);
        }
    }

    /// Nodes a fault may hit: running ones, not the two bootstrap nodes.
    fn victims(&mut self, k: usize) -> Vec<usize> {
        let mut pool: Vec<usize> = (2..self.nodes.len())
            .filter(|&i| self.nodes[i].running() && !self.nodes[i].gone)
            .collect();
        let mut out = Vec::new();
        while out.len() < k && !pool.is_empty() {
            let j = self.rng_fault.below(pool.len());
            out.push(pool.swap_remove(j));
        }
        out.sort_unstable();
        out
    }

    /// When a fault that lasts `for_ms` (or to the end of the safety
    /// phase) ends, µs.
    fn fault_end(&self, for_ms: Option<u64>) -> u64 {
        let safety = self.scenario.phases.safety_ms * 1_000;
        for_ms.map_or(safety, |ms| (self.now + ms * 1_000).min(safety))
    }

    /// Fault `f` begins.
    pub(super) fn fault(&mut self, f: usize) {
        let spec = self.scenario.faults[f].clone();
        let running = self.nodes.iter().filter(|n| n.running()).count();
        let k = spec.count(running);
        let end = self.fault_end(spec.for_ms);
        if spec.kind == "join" {
            for _ in 0..k {
                let i = self.add_node();
                let delay = self.rng_fault.next_u64() % 100_000;
                self.after(delay, SimEvent::Boot(i));
            }
            return;
        }
        if spec.kind == "recover" {
            let voter = (0..self.nodes.len()).find(|&i| {
                let n = &self.nodes[i];
                n.running()
                    && n.engine
                        .as_ref()
                        .is_some_and(|e| e.voters().contains(&n.id))
            });
            if let Some(i) = voter {
                self.command(
                    i,
                    u64::MAX - i as u64,
                    Command::RecoverControl,
                    Asked::Recover,
                );
            }
            return;
        }
        let hit = if spec.target.as_deref() == Some("voters") {
            let holder = (0..self.nodes.len()).find(|&i| {
                self.nodes[i].running()
                    && self.nodes[i]
                        .engine
                        .as_ref()
                        .is_some_and(|e| e.holds_lease())
            });
            let voters = holder
                .and_then(|h| self.nodes[h].engine.as_ref())
                .map(|e| e.voters())
                .unwrap_or_default();
            let mut hit: Vec<usize> = holder.into_iter().collect();
            hit.extend(
                (0..self.nodes.len())
                    .filter(|&i| Some(i) != holder && voters.contains(&self.nodes[i].id)),
            );
            hit.truncate(k);
            if spec.kind == "crash" && holder.is_some_and(|h| hit.contains(&h)) {
                let term = holder
                    .and_then(|h| self.nodes[h].engine.as_ref()?.lease())
                    .map_or(0, |l| l.term);
                self.failover = Some((self.now, term));
            }
            hit
        } else if spec.target.as_deref() == Some("holder") {
            let holders: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].running())
                .filter(|&i| {
                    self.nodes[i]
                        .engine
                        .as_ref()
                        .is_some_and(|e| e.holds_lease())
                })
                .collect();
            if spec.kind == "crash" {
                let term = holders
                    .first()
                    .and_then(|&i| self.nodes[i].engine.as_ref()?.lease())
                    .map_or(0, |l| l.term);
                self.failover = Some((self.now, term));
            }
            holders
        } else {
            self.victims(k)
        };
        self.fault_nodes[f] = hit.clone();
        if matches!(spec.kind.as_str(), "partition" | "one_way" | "pause") {
            self.cut_off.extend(hit.iter().copied());
        }
        match spec.kind.as_str() {
            "partition" | "one_way" => {
                for &i in &hit {
                    if spec.kind == "partition" {
                        self.net.group[i] = f as u32 + 1;
                    } else {
                        self.net.one_way[i] = true;
                    }
                }
                let timeout = self.scenario.network.conn_timeout_ms * 1_000;
                let cut: Vec<(usize, usize)> = self
                    .net
                    .links()
                    .into_iter()
                    .filter(|&(a, b)| !self.net.both_ways(a, b))
                    .collect();
                for (a, b) in cut {
                    self.after(timeout, SimEvent::CloseIfCut { a, b });
                }
                self.schedule(end, SimEvent::Heal(f));
            }
            "crash" => {
                for &i in &hit {
                    self.stop(i, false);
                    self.schedule(end, SimEvent::Restart(i));
                }
                // Survivors are the nodes still running once all are down.
                let running = self.running_mask();
                let at = self.now;
                for &i in &hit {
                    self.check.crashed(i, at, &running);
                }
            }
            "pause" => {
                for &i in &hit {
                    self.nodes[i].paused_until = end;
                }
            }
            "skew" => {
                for &i in &hit {
                    self.nodes[i].skew_ms = spec.skew_ms;
                }
                self.schedule(end, SimEvent::Heal(f));
            }
            "drain" => {
                for &i in &hit {
                    let me = self.nodes[i].id.clone();
                    self.command(i, u64::MAX - i as u64, Command::Drain(me), Asked::Other);
                }
            }
            "leave" => {
                for &i in &hit {
                    self.command(i, u64::MAX - i as u64, Command::Leave, Asked::Leave);
                }
            }
            _ => {}
        }
    }

    /// Fault `f` ends.
    pub(super) fn heal(&mut self, f: usize) {
        let kind = self.scenario.faults[f].kind.clone();
        for i in std::mem::take(&mut self.fault_nodes[f]) {
            match kind.as_str() {
                "partition" if self.net.group[i] == f as u32 + 1 => self.net.group[i] = 0,
                "one_way" => self.net.one_way[i] = false,
                "skew" => self.nodes[i].skew_ms = 0,
                _ => {}
            }
        }
        self.release_held();
    }

    /// The safety phase ends: every fault is healed, the workload stops,
    /// and the run waits for agreement.
    pub(super) fn liveness(&mut self) {
        self.liveness_at = Some(self.now);
        for f in 0..self.scenario.faults.len() {
            self.heal(f);
        }
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            n.paused_until = n.paused_until.min(self.now);
            n.skew_ms = 0;
            if n.crashed {
                self.restart(i);
            }
        }
        self.net.group.iter_mut().for_each(|g| *g = 0);
        self.net.one_way.iter_mut().for_each(|o| *o = false);
        self.release_held();
        self.after(CHECK_EVERY_US, SimEvent::Check);
    }

    /// True when every running node holds every running node as alive (or
    /// draining). The convergence digest covers tasks and knowledge only, so
    /// membership is compared on its own.
    fn members_agree(&self) -> bool {
        let running: Vec<&crate::core::ids::NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| &n.id)
            .collect();
        self.nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .all(|e| {
                let members = &e.replica().state().members;
                running.iter().all(|id| {
                    members.get(*id).is_some_and(|m| {
                        matches!(
                            m.record().status,
                            MemberStatus::Alive | MemberStatus::Draining
                        )
                    })
                })
            })
    }

    /// During the liveness phase: done once every running node has the same
    /// digest and holds every running node alive; a violation if that takes
    /// longer than the phase.
    pub(super) fn check_convergence(&mut self) {
        let digests: std::collections::BTreeSet<[u8; 32]> = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .map(|e| *e.replica().digest().as_bytes())
            .collect();
        let since = self.now - self.liveness_at.unwrap_or(self.now);
        if digests.len() <= 1 && self.members_agree() {
            self.converged_at = Some(self.now);
            self.closing_checks();
            self.done = true;
        } else if since >= self.scenario.phases.liveness_ms * 1_000 {
            let at = self.now;
            self.check.violate(
                "no_convergence",
                at,
                format!(
                    "{} distinct digests among the running nodes {} ms after the heal{}",
                    digests.len(),
                    since / 1_000,
                    if self.members_agree() {
                        ""
                    } else {
                        "; membership differs"
                    }
                ),
            );
            self.closing_checks();
            self.done = true;
        } else {
            self.after(CHECK_EVERY_US, SimEvent::Check);
        }
    }

    /// After agreement: nothing acknowledged lost, no task succeeded twice,
    /// every running node alive in the others' view. Equal digests mean
    /// equal replicas, so a sample of observers stands for all.
    fn closing_checks(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running())
            .collect();
        let step = (running.len() / 20).max(1);
        let mut found: Vec<(&'static str, String)> = Vec::new();
        for &o in running.iter().step_by(step) {
            let Some(e) = self.nodes[o].engine.as_ref() else {
                continue;
            };
            let state = e.replica().state();
            for ack in &self.check.acks {
                let held = state
                    .namespaces
                    .get(&ack.ns)
                    .and_then(|n| n.entries.get(&ack.key))
                    .is_some_and(|en| en.version() >= &ack.version);
                if !held {
                    found.push((
                        "ack_lost",
                        format!(
                            "node {o} lacks {}/{} acknowledged by node {}",
                            ack.ns, ack.key, ack.node
                        ),
                    ));
                }
            }
            for t in &self.check.submitted {
                if !state.tasks.contains_key(t) {
                    found.push(("ack_lost", format!("node {o} lacks task {t}")));
                }
            }
            for (id, t) in &state.tasks {
                let history = t.history();
                let wins: Vec<_> = history
                    .iter()
                    .filter(|h| h.status == TaskStatus::Succeeded)
                    .collect();
                if wins.len() < 2 {
                    continue;
                }
                // A second success is allowed only from a node that was cut
                // off (or paused) and kept running a task moved meanwhile,
                // under an older fence; the task's result is the newest
                // fence's. Anything else ran a task twice.
                let newest = wins.iter().map(|h| h.fence).max().unwrap_or_default();
                let excused = wins.iter().filter(|h| h.fence != newest).all(|h| {
                    h.node
                        .as_ref()
                        .and_then(|n| self.node_index.get(n))
                        .is_some_and(|j| self.cut_off.contains(j))
                });
                let same_fence = wins.iter().filter(|h| h.fence == newest).count() > 1;
                if same_fence || !excused {
                    found.push((
                        "succeeded_twice",
                        format!(
                            "task {id} has {} successes in its history (seen by node {o}): {}",
                            wins.len(),
                            wins.iter()
                                .map(|h| format!(
                                    "on {} under {} by {} at {}",
                                    h.node.as_ref().map_or("none", |n| n.as_str()),
                                    h.fence,
                                    h.by,
                                    h.at.0
                                ))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    ));
                } else {
                    self.check.reruns.insert(id.clone());
                }
            }
            for &j in &running {
                let status = state
                    .members
                    .get(&self.nodes[j].id)
                    .map(|m| m.record().status);
                if !matches!(status, Some(MemberStatus::Alive | MemberStatus::Draining)) {
                    found.push((
                        "live_member_not_alive",
                        format!("node {o} holds running node {j} as {status:?}"),
                    ));
                }
            }
        }
        found.sort();
        let at = self.now;
        for (kind, detail) in found.into_iter().take(20) {
            self.check.violate(kind, at, detail);
        }
    }
}
