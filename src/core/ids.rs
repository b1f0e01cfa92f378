//! Identifier newtypes: node ids, task ids, terms, fences and timestamps.
//!
//! Ids are plain strings on the wire and in JSON so that operators can read
//! them; the newtypes keep them from being mixed up in code.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's identity: the textual libp2p peer id derived from its ed25519 key.
///
/// Shared, not copied: every vector clock, register and record names nodes,
/// so a clone is a reference-count increment rather than a 52-byte copy.
#[derive(Clone, Debug, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(std::sync::Arc<str>);

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for NodeId {
    /// Clones of one id share their text: comparing the pointers first
    /// spares the string compare in the common case.
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Default for NodeId {
    fn default() -> Self {
        NodeId::from("")
    }
}

impl NodeId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for logs and tables: the last eight characters.
    pub fn short(&self) -> &str {
        let s: &str = &self.0;
        &s[s.len().saturating_sub(8)..]
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.into())
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(s.into())
    }
}

/// A task's identity, unique across the federation (random 64 bits plus the
/// submitting node's sequence number).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub String);

impl TaskId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lease-holder term. Term 0 means "no lease holder was involved" (the
/// placement was made by the submitting node itself).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(pub u64);

/// A fence: the term under which a task was (re)assigned and a sequence
/// number that grows with every assignment of that task. Results reported
/// under a fence older than the task's current one are refused.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Fence {
    /// The lease-holder term of the assignment.
    pub term: Term,
    /// Assignment sequence number of the task, starting at 1.
    pub seq: u64,
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.term.0, self.seq)
    }
}

impl std::str::FromStr for Fence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, q) = s
            .split_once('.')
            .ok_or_else(|| format!("fence `{s}` is not TERM.SEQ"))?;
        let term = t.parse().map_err(|_| format!("bad term in fence `{s}`"))?;
        let seq = q
            .parse()
            .map_err(|_| format!("bad sequence in fence `{s}`"))?;
        Ok(Fence {
            term: Term(term),
            seq,
        })
    }
}

/// Milliseconds since the Unix epoch. The core never reads a clock: the
/// runtime (or the simulator) passes `Millis` in.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds elapsed from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Monotonic time in milliseconds since an arbitrary origin (the process
/// start, or the simulator's zero). It never goes back, and a step of the
/// wall clock (NTP) does not move it: timers, the failure detector and
/// deadlines run on it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Mono(pub u64);

impl Mono {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Mono {
        Mono(self.0.saturating_add(ms))
    }

    /// Milliseconds elapsed from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Mono) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// The two clocks that enter the engine with every input: monotonic time
/// for timers and failure detection, wall time for last-writer-wins
/// timestamps and display.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub mono: Mono,
    /// Wall-clock time (Unix ms).
    pub wall: Millis,
}

impl Now {
    /// Both clocks at `ms` (tests and examples, where the two agree).
    pub fn at(ms: u64) -> Now {
        Now {
            mono: Mono(ms),
            wall: Millis(ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_round_trips_through_text_and_orders_by_term_first() {
        let f: Fence = "3.7".parse().unwrap();
        assert_eq!(f.to_string(), "3.7");
        let older = Fence {
            term: Term(2),
            seq: 99,
        };
        assert!(older < f);
        assert!("3".parse::<Fence>().is_err());
        assert!("x.1".parse::<Fence>().is_err());
    }

    #[test]
    fn short_node_id_is_the_tail() {
        assert_eq!(NodeId::from("12D3KooWabcdefgh").short(), "abcdefgh");
        assert_eq!(NodeId::from("ab").short(), "ab");
    }
}
