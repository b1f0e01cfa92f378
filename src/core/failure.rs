//! The failure detector: phi accrual over heartbeat arrivals.
//!
//! Heartbeat inter-arrival times are modelled as exponential with the
//! observed mean (the simplification Cassandra and Akka use), so
//! `phi(t) = t / mean * log10(e)`. A node is suspected when phi passes the
//! threshold that corresponds to `suspect_after_missed` mean intervals, and
//! declared dead when nothing was heard for `removed_after`. Pure: the caller
//! passes the time.

use crate::core::ids::Mono;

const LOG10_E: f64 = std::f64::consts::LOG10_E;
/// Intervals kept for the mean.
const WINDOW: usize = 100;

/// Failure-detection timing, as the engine uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureConfig {
    /// Expected heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Missed intervals before suspicion.
    pub suspect_after_missed: u32,
    /// Silence before a node is declared dead, ms.
    pub removed_after_ms: u64,
}

impl Default for FailureConfig {
    /// The `fast` profile.
    fn default() -> Self {
        FailureConfig {
            heartbeat_interval_ms: 500,
            suspect_after_missed: 3,
            removed_after_ms: 10_000,
        }
    }
}

/// What the detector says about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Heartbeats arrive as expected.
    Alive,
    /// Late enough to be suspected.
    Suspect,
    /// Silent for longer than the removal timeout.
    Dead,
}

/// Heartbeat history of one node.
#[derive(Clone, Debug)]
pub struct Detector {
    last: Mono,
    intervals: std::collections::VecDeque<u64>,
    expected_ms: u64,
}

impl Detector {
    /// A detector that heard from the node at `now`, expecting heartbeats
    /// every `expected_ms` until it has observed real intervals.
    pub fn new(now: Mono, expected_ms: u64) -> Self {
        Detector {
            last: now,
            intervals: std::collections::VecDeque::new(),
            expected_ms: expected_ms.max(1),
        }
    }

    /// Records a heartbeat at `now`.
    pub fn heartbeat(&mut self, now: Mono) {
        let gap = now.since(self.last);
        if gap > 0 {
            if self.intervals.len() == WINDOW {
                self.intervals.pop_front();
            }
            self.intervals.push_back(gap);
        }
        self.last = now;
    }

    fn mean(&self) -> f64 {
        // The expected interval counts as one sample, so a burst of fast
        // heartbeats cannot make the detector hair-trigger.
        let sum: u64 = self.intervals.iter().sum::<u64>() + self.expected_ms;
        (sum as f64 / (self.intervals.len() + 1) as f64).max(self.expected_ms as f64 / 2.0)
    }

    /// Phi at `now`.
    pub fn phi(&self, now: Mono) -> f64 {
        now.since(self.last) as f64 / self.mean() * LOG10_E
    }

    /// When the node was last heard from.
    pub fn last_heard(&self) -> Mono {
        self.last
    }

    /// The verdict at `now`.
    pub fn verdict(&self, now: Mono, suspect_after_missed: u32, removed_after_ms: u64) -> Verdict {
        if now.since(self.last) >= removed_after_ms {
            Verdict::Dead
        } else if self.phi(now) >= suspect_after_missed as f64 * LOG10_E {
            Verdict::Suspect
        } else {
            Verdict::Alive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_heartbeats_stay_alive_then_silence_suspects_then_kills() {
        let mut d = Detector::new(Mono(0), 500);
        for i in 1..=20 {
            d.heartbeat(Mono(i * 500));
        }
        let last = 20 * 500;
        assert_eq!(d.verdict(Mono(last + 400), 3, 10_000), Verdict::Alive);
        assert_eq!(d.verdict(Mono(last + 1_400), 3, 10_000), Verdict::Alive);
        assert_eq!(d.verdict(Mono(last + 1_600), 3, 10_000), Verdict::Suspect);
        assert_eq!(d.verdict(Mono(last + 10_000), 3, 10_000), Verdict::Dead);
        assert!(d.phi(Mono(last + 1_000)) < d.phi(Mono(last + 2_000)));
        d.heartbeat(Mono(last + 3_000));
        assert_eq!(d.verdict(Mono(last + 3_100), 3, 10_000), Verdict::Alive);
    }
}
