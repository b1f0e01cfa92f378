//! Scenario files (`simulations/*.toml`): the federation, its network, its
//! workload, and the faults of the safety phase.

use serde::Deserialize;
use std::path::Path;

/// A scenario, as read from its TOML file. Every field has a default, so a
/// file names only what it changes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// What the scenario exercises (shown in reports).
    pub description: String,
    /// Nodes at the start (`--nodes` overrides).
    pub nodes: usize,
    /// Timing profile: `lan`, `fast` or `wan` (as `shoal start --profile`).
    pub profile: String,
    /// Nodes start at random times within this window, ms.
    pub startup_ms: u64,
    /// The network.
    pub network: NetworkSpec,
    /// The workload of the safety phase.
    pub workload: WorkloadSpec,
    /// How long each phase lasts.
    pub phases: PhaseSpec,
    /// Faults of the safety phase, healed when it ends.
    pub faults: Vec<FaultSpec>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            description: String::new(),
            nodes: 20,
            profile: "lan".into(),
            startup_ms: 2_000,
            network: NetworkSpec::default(),
            workload: WorkloadSpec::default(),
            phases: PhaseSpec::default(),
            faults: Vec::new(),
        }
    }
}

/// The simulated network.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// Median one-way latency of a connection, ms. Each connection draws
    /// its own base latency from a log-normal distribution.
    pub latency_median_ms: f64,
    /// Log-normal sigma of the per-connection latency (0 makes every
    /// connection equal).
    pub latency_sigma: f64,
    /// Per-message jitter as a fraction of the connection's latency; above
    /// 0, messages on one connection can overtake each other (reordering).
    pub jitter: f64,
    /// Probability that a gossip frame is lost (gossipsub drops for slow
    /// peers; request-response rides a reliable stream and is not lost).
    pub loss: f64,
    /// Probability that a gossip frame is delivered twice.
    pub duplicate: f64,
    /// Gossipsub mesh degree D (mesh kept between D-1 and 2D).
    pub mesh_degree: usize,
    /// Lazy gossip: every gossipsub heartbeat, message ids of the last
    /// three heartbeats go to `mesh_degree` peers outside the mesh, which
    /// pull what they miss.
    pub lazy_gossip: bool,
    /// Gossipsub heartbeat (mesh upkeep, lazy gossip), ms; Shoal's nodes
    /// use 700.
    pub gossip_heartbeat_ms: u64,
    /// A connection across a cut closes after this long, ms (ping and
    /// keep-alive timeouts).
    pub conn_timeout_ms: u64,
    /// A sync request with no answer fails after this long, ms.
    pub request_timeout_ms: u64,
    /// A synced commit takes this long, ms; a buffered one a tenth of it.
    pub commit_ms: f64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            latency_median_ms: 1.0,
            latency_sigma: 0.5,
            jitter: 0.0,
            loss: 0.0,
            duplicate: 0.0,
            mesh_degree: 6,
            lazy_gossip: true,
            gossip_heartbeat_ms: 700,
            conn_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            commit_ms: 2.0,
        }
    }
}

/// The workload of the safety phase.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadSpec {
    /// When the workload starts, ms (after the join settles, to measure the
    /// steady state).
    pub start_ms: u64,
    /// Knowledge writes per second over the federation, spread evenly over
    /// the namespaces `lww`, `mv` and `set` (each with that policy).
    pub kv_per_sec: f64,
    /// Keys per namespace (fewer keys, more concurrent writes to one key).
    pub keys: usize,
    /// Task submissions per second over the federation.
    pub tasks_per_sec: f64,
    /// A handler takes between these many ms.
    pub task_ms: [u64; 2],
    /// Handler slots per node.
    pub capacity: u32,
    /// The placement strategy tasks ask for (the cluster default when
    /// omitted).
    pub strategy: Option<String>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            start_ms: 0,
            kv_per_sec: 20.0,
            keys: 200,
            tasks_per_sec: 2.0,
            task_ms: [50, 500],
            capacity: 8,
            strategy: None,
        }
    }
}

/// Phase lengths.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhaseSpec {
    /// The safety phase: workload and faults, ms.
    pub safety_ms: u64,
    /// The liveness phase: faults healed, no new work; it ends as soon as
    /// every live node agrees, and fails if they do not within this, ms.
    pub liveness_ms: u64,
}

impl Default for PhaseSpec {
    fn default() -> Self {
        PhaseSpec {
            safety_ms: 10_000,
            liveness_ms: 60_000,
        }
    }
}

/// One fault of the safety phase.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// When it starts, ms from the start of the run.
    pub at_ms: u64,
    /// `partition` (a group cut off both ways), `one_way` (the group's
    /// messages to the rest are dropped), `crash`, `pause`, `skew` (the
    /// group's wall clocks jump), `drain`, `leave`, `join` (new nodes) or
    /// `recover` (an operator's recovery of the control plane from a lost
    /// majority, on one running voter).
    pub kind: String,
    /// How many nodes: a fraction of the nodes when below 1, else a count;
    /// at least one.
    #[serde(default = "one")]
    pub nodes: f64,
    /// How long it lasts, ms (partition, one_way, pause; for crash, the
    /// time until restart). Omitted: until the safety phase ends.
    #[serde(default)]
    pub for_ms: Option<u64>,
    /// The wall-clock jump of `skew`, ms (negative goes back).
    #[serde(default)]
    pub skew_ms: i64,
    /// Whom it hits: `holder` is the lease holder of the moment (`nodes`
    /// is then ignored); `voters`, `nodes` of the control plane's voters
    /// (the holder first); omitted, nodes drawn at random.
    #[serde(default)]
    pub target: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl FaultSpec {
    /// How many of `n` nodes it affects.
    pub fn count(&self, n: usize) -> usize {
        let k = if self.nodes < 1.0 {
            (self.nodes * n as f64).round() as usize
        } else {
            self.nodes as usize
        };
        k.max(1)
    }
}

/// A scenario file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not a valid scenario.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let s: Scenario = toml::from_str(&text).map_err(|e| ScenarioError::Invalid {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        s.validate()
            .map_err(|reason| ScenarioError::Invalid { path: p, reason })?;
        Ok(s)
    }

    /// Checks the values a run depends on.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 {
            return Err("nodes must be at least 1".into());
        }
        if !["lan", "fast", "wan"].contains(&self.profile.as_str()) {
            return Err(format!(
                "profile `{}`: expected lan, fast or wan",
                self.profile
            ));
        }
        let n = &self.network;
        for (name, p) in [("loss", n.loss), ("duplicate", n.duplicate)] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("network.{name} must be in [0, 1)"));
            }
        }
        if n.mesh_degree == 0 || n.latency_median_ms < 0.0 || n.jitter < 0.0 {
            return Err(
                "network: mesh_degree must be positive, latency and jitter not negative".into(),
            );
        }
        if self.workload.task_ms[0] > self.workload.task_ms[1] || self.workload.keys == 0 {
            return Err("workload: task_ms must be [min, max] and keys positive".into());
        }
        const KINDS: [&str; 9] = [
            "partition",
            "one_way",
            "crash",
            "pause",
            "skew",
            "drain",
            "leave",
            "join",
            "recover",
        ];
        for f in &self.faults {
            if !KINDS.contains(&f.kind.as_str()) {
                return Err(format!(
                    "fault kind `{}`: expected one of {}",
                    f.kind,
                    KINDS.join(", ")
                ));
            }
            if !matches!(f.target.as_deref(), None | Some("holder") | Some("voters")) {
                return Err(format!(
                    "fault target `{}`: expected holder or voters",
                    f.target.as_deref().unwrap_or_default()
                ));
            }
            if f.at_ms >= self.phases.safety_ms {
                return Err(format!(
                    "a `{}` fault at {} ms is after the safety phase ({} ms)",
                    f.kind, f.at_ms, self.phases.safety_ms
                ));
            }
        }
        Ok(())
    }

    /// Failure-detection timing of the profile (lan when it names none
    /// that exists).
    pub fn timing(&self) -> crate::core::failure::FailureConfig {
        let f = crate::core::failure::FailureConfig::profile;
        f(&self.profile)
            .or_else(|| f("lan"))
            .expect("lan is a profile")
    }
}
