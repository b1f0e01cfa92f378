//! The protocol's cadences and limits, with the unit and range of each.

use crate::core::lease::ControlConfig;
use crate::core::replica::ReplicaConfig;

/// Everything the engine needs to know: the replica's configuration (who
/// this node is, what it runs, failure-detection timing) and the cadences of
/// the protocol around it.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The node and its replica.
    pub replica: ReplicaConfig,
    /// Cadences and limits.
    pub protocol: ProtocolConfig,
    /// The control plane's timing and size.
    pub control: ControlConfig,
}

/// Cadences and limits of the protocol. Every duration is in milliseconds.
/// [`ProtocolConfig::for_heartbeat`] derives the values of a timing profile
/// from its heartbeat interval; [`ProtocolConfig::validate`] checks ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// How often deadlines, claims and queued and pending tasks are looked
    /// at. 10 to 1,000 ms; 100 in every profile.
    pub tick_ms: u64,
    /// How often this node looks at its load figures; they are gossiped
    /// (in its member record) only when they changed by more than a
    /// threshold. 50 to 60,000 ms; five probe intervals, kept within 1 to
    /// 30 s (lan 5,000, fast 2,500, wan 25,000).
    pub load_ms: u64,
    /// How often an anti-entropy round starts with a random peer. 100 to
    /// 300,000 ms; 4 heartbeats, kept within 1 to 30 s (lan 20,000, fast
    /// 2,000, wan 30,000).
    pub anti_entropy_ms: u64,
    /// How often this node tops up its connections to `max_peers` (and
    /// tries one member declared dead, which finds a healed partition).
    /// 100 to 60,000 ms; 2,000 in every profile.
    pub redial_ms: u64,
    /// Connections this node keeps on its own: it dials members until it
    /// has this many (gossipsub's mesh is drawn from them). Probes need
    /// none (they are datagrams). 1 to 1,000; 8 in every profile.
    pub max_peers: usize,
    /// Most connections a node keeps, its own and those others opened to
    /// it (bootstrap joins, Kademlia queries, other nodes' `max_peers`);
    /// each redial round closes the excess, sparing the ones it dialed
    /// itself and those still catching up. `max_peers` to 10,000; three
    /// times `max_peers` (24) in every profile, so that the inbound
    /// connections of a random graph of degree 8 rarely reach it.
    pub max_connections: usize,
    /// While a node has no peer at all, redials back off by doubling up to
    /// this many redial intervals. 1 to 64; 16 (32 s) in every profile.
    pub redial_backoff_max: u32,
    /// How long committed changes may wait to share a gossip message with
    /// the next commits' changes. 0 to 1,000 ms; 5 in every profile. A change
    /// made when nothing was published for this long goes out at once.
    pub gossip_window_ms: u64,
}

impl ProtocolConfig {
    /// The cadences of a profile whose probe (heartbeat) interval is
    /// `heartbeat_ms`.
    pub fn for_heartbeat(heartbeat_ms: u64) -> Self {
        ProtocolConfig {
            tick_ms: 100,
            load_ms: heartbeat_ms.saturating_mul(5).clamp(1_000, 30_000),
            anti_entropy_ms: heartbeat_ms.saturating_mul(4).clamp(1_000, 30_000),
            redial_ms: 2_000,
            max_peers: 8,
            max_connections: 24,
            redial_backoff_max: 16,
            gossip_window_ms: 5,
        }
    }

    /// Checks every field against its range; names the first one outside.
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v} is outside {lo}..={hi}"))
            }
        };
        check("tick_ms", self.tick_ms, 10, 1_000)?;
        check("load_ms", self.load_ms, 50, 60_000)?;
        check("max_peers", self.max_peers as u64, 1, 1_000)?;
        check(
            "max_connections",
            self.max_connections as u64,
            self.max_peers as u64,
            10_000,
        )?;
        check("anti_entropy_ms", self.anti_entropy_ms, 100, 300_000)?;
        check("redial_ms", self.redial_ms, 100, 60_000)?;
        check(
            "redial_backoff_max",
            u64::from(self.redial_backoff_max),
            1,
            64,
        )?;
        check("gossip_window_ms", self.gossip_window_ms, 0, 1_000)
    }
}

impl Default for ProtocolConfig {
    /// The `fast` profile's cadences.
    fn default() -> Self {
        ProtocolConfig::for_heartbeat(500)
    }
}
