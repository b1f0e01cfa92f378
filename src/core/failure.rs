//! Failure-detection timing as a profile states it, and the SWIM
//! configuration derived from it (the detector itself is `core::swim`).

use crate::core::swim::SwimConfig;

/// Failure-detection timing, as the engine uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureConfig {
    /// The probe interval, ms: each node probes one member per interval.
    pub heartbeat_interval_ms: u64,
    /// The suspicion multiplier (Lifeguard's `alpha`): a suspicion confirmed
    /// by enough observers lasts `alpha * max(1, log10 N)` probe intervals,
    /// an unconfirmed one three times that.
    pub suspect_after_missed: u32,
    /// How long a dead member's record stays before it is removed, ms.
    pub removed_after_ms: u64,
}

impl FailureConfig {
    /// The preset of a timing profile (`lan`, `fast` or `wan`):
    ///
    /// | profile | probe interval | alpha | removed after |
    /// | --- | --- | --- | --- |
    /// | lan | 1 s | 4 | 30 s |
    /// | fast | 500 ms | 2 | 10 s |
    /// | wan | 5 s | 6 | 120 s |
    ///
    /// lan and wan are memberlist's LAN and WAN values. A probe every 5 s
    /// (the heartbeat of the phi-accrual detector before it) would leave
    /// lan's detection bound of 15 s no room: a member is probed about once
    /// per interval, and the suspicion must last several intervals.
    pub fn profile(name: &str) -> Option<FailureConfig> {
        let (heartbeat_interval_ms, suspect_after_missed, removed_after_ms) = match name {
            "lan" => (1_000, 4, 30_000),
            "fast" => (500, 2, 10_000),
            "wan" => (5_000, 6, 120_000),
            _ => return None,
        };
        Some(FailureConfig {
            heartbeat_interval_ms,
            suspect_after_missed,
            removed_after_ms,
        })
    }

    /// The failure detector's configuration.
    pub fn swim(&self) -> SwimConfig {
        SwimConfig::new(self.heartbeat_interval_ms, self.suspect_after_missed)
    }
}

impl Default for FailureConfig {
    /// The `fast` profile.
    fn default() -> Self {
        FailureConfig {
            heartbeat_interval_ms: 500,
            suspect_after_missed: 2,
            removed_after_ms: 10_000,
        }
    }
}
