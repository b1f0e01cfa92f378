//! The `shoal` binary: node daemon and command-line client.

use clap::Parser;

fn main() {
    let cli = shoal::cli::Cli::parse();
    std::process::exit(shoal::cli::run(cli));
}
