//! Prometheus metrics of a node.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label with one value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    /// The label's value (status, reason, ...).
    pub value: String,
}

impl Label {
    fn of(value: &str) -> Label {
        Label {
            value: value.to_owned(),
        }
    }
}

/// HTTP request labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// All of a node's metrics.
pub struct Metrics {
    /// Locked only to register libp2p's own metrics at start and to encode.
    registry: std::sync::Mutex<Registry>,
    /// Acknowledged mutations (writes, submissions, completions...).
    pub acknowledged: Counter,
    /// Store commits.
    pub commits: Counter,
    /// Failed store commits.
    pub commit_failures: Counter,
    /// 1 while the store takes writes, 0 while the node is read-only after
    /// a failed write (a full disk).
    pub store_writable: Gauge,
    /// Attempts to reopen the store while read-only, by outcome.
    pub store_reopens: Family<Label, Counter>,
    /// Commit latency in seconds.
    pub commit_seconds: Histogram,
    /// Commands per commit.
    pub batch_size: Histogram,
    /// HTTP responses by method and status.
    pub http: Family<HttpLabels, Counter>,
    /// Requests refused before reaching the engine, by reason.
    pub rejected: Family<Label, Counter>,
    /// Task attempts ended, by outcome.
    pub attempts: Family<Label, Counter>,
    /// Events dropped because a subscriber was too slow.
    pub events_lagged: Counter,
    /// Warnings held back as repeats (see `runtime::lograte`; set at scrape).
    pub log_suppressed: Counter,
    /// Tasks by status (set at scrape).
    pub tasks: Family<Label, Gauge>,
    /// Members by status (set at scrape).
    pub members: Family<Label, Gauge>,
    /// Knowledge entries (set at scrape).
    pub kv_entries: Gauge,
    /// Network events by kind (gossip sent/received, sync requests, ...).
    pub network: Family<Label, Counter>,
    /// Messages and connections dropped, by reason. Nothing is dropped silently.
    pub dropped: Family<Label, Counter>,
    /// Connected peers.
    pub peers: Gauge,
    /// Entries merged from peers by state sync.
    pub sync_entries: Counter,
    /// Times anti-entropy found this node diverged from a peer (and repaired it).
    pub divergences: Counter,
    /// Failure detection by kind: probes sent and failed, indirect probes,
    /// suspicions raised and refuted, members declared dead.
    pub detection: Family<Label, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let m = Metrics {
            registry: std::sync::Mutex::new(Registry::default()),
            acknowledged: Counter::default(),
            commits: Counter::default(),
            commit_failures: Counter::default(),
            store_writable: Gauge::default(),
            store_reopens: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            http: Family::default(),
            rejected: Family::default(),
            attempts: Family::default(),
            events_lagged: Counter::default(),
            log_suppressed: Counter::default(),
            tasks: Family::default(),
            members: Family::default(),
            kv_entries: Gauge::default(),
            network: Family::default(),
            dropped: Family::default(),
            peers: Gauge::default(),
            sync_entries: Counter::default(),
            divergences: Counter::default(),
            detection: Family::default(),
        };
        registry.register(
            "acknowledged_writes",
            "Mutations acknowledged after a durable commit",
            m.acknowledged.clone(),
        );
        registry.register("store_commits", "Store commits", m.commits.clone());
        registry.register(
            "store_commit_failures",
            "Store commits that failed (nothing was acknowledged)",
            m.commit_failures.clone(),
        );
        registry.register(
            "store_writable",
            "1 while the store takes writes, 0 while the node is read-only after a failed write",
            m.store_writable.clone(),
        );
        registry.register(
            "store_reopens",
            "Attempts to reopen the store while read-only, by outcome",
            m.store_reopens.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Store commit latency",
            m.commit_seconds.clone(),
        );
        registry.register(
            "store_batch_size",
            "Commands per store commit",
            m.batch_size.clone(),
        );
        registry.register(
            "http_responses",
            "HTTP responses by method and status",
            m.http.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "task_attempts_finished",
            "Task attempts ended, by outcome",
            m.attempts.clone(),
        );
        registry.register(
            "events_lagged",
            "Events a slow subscriber missed",
            m.events_lagged.clone(),
        );
        registry.register(
            "log_warnings_suppressed",
            "Warnings not logged: a repeat within a minute from the same source about the same peer",
            m.log_suppressed.clone(),
        );
        registry.register("tasks", "Tasks by status", m.tasks.clone());
        registry.register("members", "Members by status", m.members.clone());
        registry.register("kv_entries", "Knowledge entries", m.kv_entries.clone());
        registry.register(
            "network_events",
            "Network events by kind",
            m.network.clone(),
        );
        registry.register(
            "dropped",
            "Messages and connections dropped, by reason",
            m.dropped.clone(),
        );
        registry.register("peers", "Connected peers", m.peers.clone());
        registry.register(
            "sync_entries",
            "Entries merged from peers by state sync",
            m.sync_entries.clone(),
        );
        registry.register(
            "divergences_repaired",
            "Divergences from a peer found by anti-entropy and repaired",
            m.divergences.clone(),
        );
        registry.register(
            "failure_detection",
            "Failure detection by kind: probe_sent, probe_failed, indirect_probe, suspicion_raised, suspicion_refuted, probe_malformed",
            m.detection.clone(),
        );
        Metrics {
            registry: std::sync::Mutex::new(registry),
            ..m
        }
    }
}

impl Metrics {
    /// Counts failure-detection events of one kind.
    pub fn detected(&self, kind: &str, n: u64) {
        self.detection.get_or_create(&Label::of(kind)).inc_by(n);
    }

    /// Counts a refused request.
    pub fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&Label::of(reason)).inc();
    }

    /// Counts an attempt to reopen a read-only store (`succeeded`, `failed`).
    pub fn reopened(&self, outcome: &str) {
        self.store_reopens.get_or_create(&Label::of(outcome)).inc();
    }

    /// Counts an ended attempt.
    pub fn attempt(&self, outcome: &str) {
        self.attempts.get_or_create(&Label::of(outcome)).inc();
    }

    /// Counts a network event.
    pub fn net(&self, kind: &str) {
        self.network.get_or_create(&Label::of(kind)).inc();
    }

    /// Counts a drop.
    pub fn drop_reason(&self, reason: &str) {
        self.drop_reason_n(reason, 1);
    }

    /// Counts `n` drops.
    pub fn drop_reason_n(&self, reason: &str, n: u64) {
        self.dropped.get_or_create(&Label::of(reason)).inc_by(n);
    }

    /// Sets a by-status gauge.
    pub fn set_tasks(&self, status: &str, n: i64) {
        self.tasks.get_or_create(&Label::of(status)).set(n);
    }

    /// Sets a by-status gauge.
    pub fn set_members(&self, status: &str, n: i64) {
        self.members.get_or_create(&Label::of(status)).set(n);
    }

    /// Lets `f` register metrics kept by a library (libp2p's gossipsub) under
    /// `shoal_PREFIX_`.
    pub fn register_library<T>(&self, prefix: &str, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(registry.sub_registry_with_prefix(prefix))
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
