//! `shoal-sim`: the simulator (see `shoal::sim`).

fn main() {}
