//! The simulator: many [`Engine`](crate::core::Engine)s driven through
//! their one interface over a seeded, simulated network and store.
//!
//! A run has two phases, as TigerBeetle's simulator does: a **safety** phase
//! with the scenario's workload and faults (partitions, one-way cuts,
//! crashes that lose what was not persisted, restarts from the store,
//! pauses, clock skew, drains, leaves, joins), then a **liveness** phase
//! with every fault healed and no new work, which ends as soon as every
//! running node holds the same digest. Invariants are checked as the run
//! goes (see [`check`]); a violation prints the command that replays it.
//! Same scenario, seed and size: same report, wall time aside.
//!
//! The network models what lives outside the engine: connections with a
//! latency each (log-normal), cuts, loss and duplication of gossip, and
//! gossipsub's mesh ([`net`]). Each node's store is in memory: a batch is
//! durable once its commit time has passed, and a crash loses the batch in
//! flight, as a real crash does. See docs/simulation.md.

pub mod check;
pub mod net;
pub mod report;
pub mod scenario;
mod world;

pub use report::Report;
pub use scenario::{Scenario, ScenarioError};

/// Runs `scenario` with `seed`; `file` names it in the replay command.
pub fn run(scenario: Scenario, seed: u64, file: &str) -> Report {
    let started = std::time::Instant::now();
    let nodes = scenario.nodes;
    let mut world = world::World::new(scenario, seed);
    world.run();
    Report::of(&world, seed, nodes, file, started.elapsed())
}
