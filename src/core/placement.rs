//! Placement strategies: which candidate node gets a task.
//!
//! Pure functions over a candidate list. Randomness and the round-robin
//! cursor are passed in by the engine, so a placement is reproducible.

use crate::core::ids::NodeId;
use serde::{Deserialize, Serialize};

/// A placement strategy (see CONTRACT.md).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each candidate in turn.
    RoundRobin,
    /// The lowest combined cpu, memory and slot use.
    #[default]
    LeastLoaded,
    /// The fewest assigned and running tasks.
    LeastTasks,
    /// Uniformly at random.
    Random,
    /// At random, weighted by free slots.
    Weighted,
    /// Rendezvous hashing on the task's affinity key: the same key lands on
    /// the same node while it lives, and a join or leave moves about 1/N of
    /// the keys.
    Hash,
}

impl Strategy {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [Strategy; 6] = [
        Strategy::RoundRobin,
        Strategy::LeastLoaded,
        Strategy::LeastTasks,
        Strategy::Random,
        Strategy::Weighted,
        Strategy::Hash,
    ];

    /// The strategy's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLoaded => "least_loaded",
            Strategy::LeastTasks => "least_tasks",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
            Strategy::Hash => "hash",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown strategy `{s}` (expected one of round_robin, least_loaded, least_tasks, random, weighted, hash)"
                )
            })
    }
}

/// A node that could take the task.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The node.
    pub id: NodeId,
    /// Its slot count.
    pub capacity: u32,
    /// Tasks assigned to or running on it.
    pub running: u32,
    /// CPU use, 0.0 to 1.0.
    pub cpu: f32,
    /// Memory use, 0.0 to 1.0.
    pub memory: f32,
}

impl Candidate {
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.running)
    }

    fn load_score(&self) -> f32 {
        let slots = self.running as f32 / self.capacity.max(1) as f32;
        (slots + self.cpu + self.memory) / 3.0
    }
}

/// What a placement may draw on besides the candidates.
#[derive(Clone, Copy, Debug)]
pub struct Draw<'a> {
    /// The round-robin cursor (the engine advances it per placement).
    pub cursor: u64,
    /// A fresh random number.
    pub random: u64,
    /// The key for `hash` (the affinity key, else the task id).
    pub key: &'a str,
}

/// Picks the index of the candidate that gets the task, or `None` when
/// there are no candidates. Candidates must be sorted by id.
pub fn choose(strategy: Strategy, candidates: &[Candidate], draw: Draw<'_>) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let n = candidates.len();
    let pick = match strategy {
        Strategy::RoundRobin => (draw.cursor % n as u64) as usize,
        Strategy::Random => (draw.random % n as u64) as usize,
        Strategy::LeastTasks => argmin(candidates, |c| c.running as f32),
        Strategy::LeastLoaded => argmin(candidates, Candidate::load_score),
        Strategy::Weighted => weighted(candidates, draw.random),
        Strategy::Hash => rendezvous(candidates, draw.key),
    };
    Some(pick)
}

fn argmin(candidates: &[Candidate], score: impl Fn(&Candidate) -> f32) -> usize {
    let mut best = 0;
    for (i, c) in candidates.iter().enumerate().skip(1) {
        if score(c) < score(&candidates[best]) {
            best = i;
        }
    }
    best
}

fn weighted(candidates: &[Candidate], random: u64) -> usize {
    let total: u64 = candidates.iter().map(|c| c.free() as u64).sum();
    if total == 0 {
        return (random % candidates.len() as u64) as usize;
    }
    let mut ticket = random % total;
    for (i, c) in candidates.iter().enumerate() {
        let w = c.free() as u64;
        if ticket < w {
            return i;
        }
        ticket -= w;
    }
    candidates.len() - 1
}

/// Highest-random-weight hashing: the candidate with the largest
/// `blake3(key, node)` wins.
fn rendezvous(candidates: &[Candidate], key: &str) -> usize {
    let weight = |c: &Candidate| {
        let mut h = blake3::Hasher::new();
        h.update(key.as_bytes());
        h.update(&[0]);
        h.update(c.id.as_str().as_bytes());
        let bytes = h.finalize();
        u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    };
    let mut best = 0;
    let mut best_w = weight(&candidates[0]);
    for (i, c) in candidates.iter().enumerate().skip(1) {
        let w = weight(c);
        if w > best_w {
            best = i;
            best_w = w;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: NodeId::from(format!("node-{i:02}")),
                capacity: 8,
                running: i as u32,
                cpu: 0.1 * i as f32,
                memory: 0.0,
            })
            .collect()
    }

    fn draw(key: &str) -> Draw<'_> {
        Draw {
            cursor: 0,
            random: 0,
            key,
        }
    }

    #[test]
    fn least_tasks_and_least_loaded_pick_the_idlest() {
        let c = cands(4);
        assert_eq!(choose(Strategy::LeastTasks, &c, draw("k")), Some(0));
        assert_eq!(choose(Strategy::LeastLoaded, &c, draw("k")), Some(0));
        assert_eq!(choose(Strategy::LeastLoaded, &[], draw("k")), None);
    }

    #[test]
    fn round_robin_cycles() {
        let c = cands(3);
        let picks: Vec<_> = (0..6)
            .map(|cursor| {
                choose(
                    Strategy::RoundRobin,
                    &c,
                    Draw {
                        cursor,
                        random: 0,
                        key: "",
                    },
                )
                .unwrap()
            })
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_never_picks_a_full_node() {
        let mut c = cands(3);
        c[1].running = 8;
        for random in 0..200 {
            let pick = choose(
                Strategy::Weighted,
                &c,
                Draw {
                    cursor: 0,
                    random,
                    key: "",
                },
            )
            .unwrap();
            assert_ne!(pick, 1);
        }
    }

    #[test]
    fn hash_is_stable_and_moves_about_one_nth_of_keys_on_join() {
        let before = cands(10);
        let after = cands(11);
        let keys: Vec<String> = (0..2000).map(|i| format!("key-{i}")).collect();
        let mut moved = 0;
        for k in &keys {
            let a = &before[choose(Strategy::Hash, &before, draw(k)).unwrap()].id;
            let a2 = &before[choose(Strategy::Hash, &before, draw(k)).unwrap()].id;
            assert_eq!(a, a2);
            let b = &after[choose(Strategy::Hash, &after, draw(k)).unwrap()].id;
            if a != b {
                // a key only ever moves to the new node
                assert_eq!(b.as_str(), "node-10");
                moved += 1;
            }
        }
        // expected 2000/11 ≈ 182; allow a wide band
        assert!((100..300).contains(&moved), "moved {moved}");
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
        }
        assert!("fastest".parse::<Strategy>().is_err());
    }
}
