//! `shoal-sim`: runs simulation scenarios (`simulations/*.toml`) against the
//! engine core. Builds without the runtime (`--no-default-features`).
//!
//! ```text
//! shoal-sim run FILE [--seed N] [--nodes N] [--json]
//! shoal-sim explore FILE --seeds K [--nodes N] [--from S]
//! ```

use shoal::sim::{self, Scenario};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage:
  shoal-sim run FILE [--seed N] [--nodes N] [--json]
  shoal-sim explore FILE --seeds K [--nodes N] [--from S]";

struct Args {
    cmd: String,
    file: String,
    seed: u64,
    nodes: Option<usize>,
    json: bool,
    seeds: u64,
    from: u64,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut it = argv.iter();
    let cmd = it.next().ok_or("missing command")?.clone();
    if cmd != "run" && cmd != "explore" {
        return Err(format!("unknown command `{cmd}`"));
    }
    let file = it.next().ok_or("missing scenario FILE")?.clone();
    let mut a = Args {
        cmd,
        file,
        seed: 1,
        nodes: None,
        json: false,
        seeds: 0,
        from: 1,
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--seed" => a.seed = value("--seed")?,
            "--nodes" => a.nodes = Some(value("--nodes")? as usize),
            "--seeds" => a.seeds = value("--seeds")?,
            "--from" => a.from = value("--from")?,
            "--json" => a.json = true,
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    if a.cmd == "explore" && a.seeds == 0 {
        return Err("explore needs --seeds K".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shoal-sim: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut scenario = match Scenario::load(Path::new(&args.file)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal-sim: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(n) = args.nodes {
        scenario.nodes = n.max(1);
    }
    if args.cmd == "run" {
        let report = sim::run(scenario, args.seed, &args.file);
        print!("{}", report.summary());
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a report serialises")
            );
        }
        return if report.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let mut failed = 0;
    for seed in args.from..args.from + args.seeds {
        let report = sim::run(scenario.clone(), seed, &args.file);
        if !report.violations.is_empty() {
            failed += 1;
            let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
            for v in &report.violations {
                *kinds.entry(v.kind.as_str()).or_default() += 1;
            }
            let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            println!(
                "seed {seed} FAILED ({}): {}",
                kinds.join(", "),
                report.replay
            );
        }
    }
    println!(
        "{} seed(s): {} passed, {failed} failed",
        args.seeds,
        args.seeds - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
