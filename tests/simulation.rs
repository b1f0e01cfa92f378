//! The simulator in CI: every scenario under `simulations/` at a small size
//! over a fixed set of seeds, with no violation; a seed replays to the same
//! report; and the checker does report what breaks.

use shoal::sim::{self, Scenario};
use std::path::Path;

const SCENARIOS: [&str; 11] = [
    "failover",
    "saturated",
    "holder-partition",
    "loss",
    "steady",
    "idle",
    "partition-heal",
    "crash-restart",
    "detect",
    "lossy",
    "churn",
];
const SEEDS: [u64; 3] = [1, 2, 3];
const NODES: usize = 12;

fn scenario(name: &str) -> (Scenario, String) {
    let file = format!("simulations/{name}.toml");
    let mut s = Scenario::load(Path::new(&file)).expect("the scenario file loads");
    s.nodes = NODES;
    (s, file)
}

#[test]
fn every_scenario_passes_at_a_small_size_over_fixed_seeds() {
    let mut failures = Vec::new();
    for name in SCENARIOS {
        for seed in SEEDS {
            let (s, file) = scenario(name);
            let report = sim::run(s, seed, &file);
            if !report.violations.is_empty() {
                failures.push(format!("{}\n{}", report.replay, report.summary()));
            }
            assert!(
                report.writes_acknowledged > 0 || name == "idle",
                "{name} seed {seed}: the workload ran"
            );
            assert!(
                report.liveness_ms.is_some(),
                "{name} seed {seed}: agreement after the heal"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "failing runs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_lease_holder_fails_over_with_one_holder_per_term_over_many_seeds() {
    // Raft's election safety is checked at every lease change (a second
    // holder in a term is a violation); here, over 60 seeds, the holder is
    // killed twice and every node ends naming one holder, or it is cut off
    // alone and the two sides end agreeing; either way the plane ends with
    // three voters again (crashed voters replaced through learners).
    let mut failures = Vec::new();
    for seed in 1..=60 {
        for name in ["failover", "holder-partition"] {
            let (s, file) = scenario(name);
            let r = sim::run(s, seed, &file);
            let bad = !r.violations.is_empty()
                || r.lease_holders_at_end != 1
                || r.lease_unknown_at_end != 0
                || r.lease_terms < 2
                || r.lease_voters_at_end != 3
                || (name == "failover" && r.failover_ms.count != 2);
            if bad {
                failures.push(format!("{}\n{}", r.replay, r.summary()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failing runs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_lost_majority_has_no_holder_until_an_operator_recovers_the_plane() {
    // Two of three voters (the holder first) crash at 8 s for the rest of
    // the safety phase; an operator recovers the plane on the survivor at
    // 16 s. The failover is measured from the crash, so no holder before
    // the recovery means at least 8 s. The lost voters come back with
    // their old state at 30 s: one holder per term must still hold.
    let mut failures = Vec::new();
    for seed in 1..=30 {
        let (s, file) = scenario("lost-majority");
        let r = sim::run(s, seed, &file);
        let bad = !r.violations.is_empty()
            || r.lease_recoveries != 1
            || r.failover_ms.count != 1
            || r.failover_ms.p50 < 7_900.0
            || r.failover_ms.p50 > 9_000.0
            || r.lease_holders_at_end != 1
            || r.lease_voters_at_end != 3;
        if bad {
            failures.push(format!("{}\n{}", r.replay, r.summary()));
        }
    }
    assert!(
        failures.is_empty(),
        "failing runs:\n{}",
        failures.join("\n")
    );

    // Without the operator, nothing takes the lease until the lost voters
    // come back when the run heals (22 s after the crash).
    let (mut s, file) = scenario("lost-majority");
    s.faults.retain(|f| f.kind != "recover");
    let r = sim::run(s, 1, &file);
    assert_eq!(r.lease_recoveries, 0);
    assert!(
        r.failover_ms.count == 0 || r.failover_ms.p50 >= 22_000.0,
        "a holder without a majority:\n{}",
        r.summary()
    );
}

#[test]
fn a_seed_replays_to_the_same_report() {
    for name in ["crash-restart", "lossy", "failover"] {
        let (s, file) = scenario(name);
        let a = sim::run(s.clone(), 42, &file).without_wall_time();
        let b = sim::run(s, 42, &file).without_wall_time();
        assert_eq!(a, b, "{name}: same seed, same report");
        let (s, file) = scenario(name);
        let c = sim::run(s, 43, &file).without_wall_time();
        assert_ne!(a.events, c.events, "{name}: another seed, another run");
    }
}

#[test]
fn random_loss_of_five_percent_gives_no_false_death_verdict() {
    // Probes are lost as often as gossip: the indirect probes and the
    // suspicion with refutation must absorb it.
    for seed in SEEDS {
        let (mut s, file) = scenario("loss");
        s.nodes = 40;
        let r = sim::run(s, seed, &file);
        assert!(r.violations.is_empty(), "{}", r.summary());
        assert_eq!(r.false_deaths, 0, "seed {seed}: {}", r.summary());
        assert!(r.messages_per_node_per_sec.probe > 0.0, "probes ran");
    }
}

#[test]
fn a_crash_is_detected_by_every_survivor_and_measured() {
    let (s, file) = scenario("crash-restart");
    let r = sim::run(s, 5, &file);
    assert!(r.violations.is_empty(), "{}", r.summary());
    assert!(
        r.detection_dead_ms.count >= 1,
        "the node that stays down is declared dead everywhere: {}",
        r.summary()
    );
    assert!(r.detection_dead_ms.max > 0.0);
}

#[test]
fn agreement_that_does_not_come_in_time_is_a_violation_with_a_replay_command() {
    // A partition that outlasts the connections, and no time at all to
    // repair it: the checker must say so.
    let (mut s, file) = scenario("partition-heal");
    s.faults[0].for_ms = None;
    s.phases.liveness_ms = 0;
    let r = sim::run(s, 1, &file);
    assert!(
        r.violations.iter().any(|v| v.kind == "no_convergence"),
        "{}",
        r.summary()
    );
    assert!(r
        .summary()
        .contains("replay: shoal-sim run simulations/partition-heal.toml --seed 1 --nodes 12"));
}

#[test]
fn a_scenario_with_an_unknown_fault_is_refused_with_its_name() {
    let dir = std::env::temp_dir().join(format!("shoal-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "nodes = 3\n[[faults]]\nat_ms = 10\nkind = \"meteor\"\n",
    )
    .unwrap();
    let err = Scenario::load(&file).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("meteor"), "{err}");
}
