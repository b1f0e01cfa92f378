//! The `shoal` binary: node daemon and command-line client.

use clap::Parser;

fn main() {
    // Before the node allocates (Rust's runtime already has): see the
    // function's docs for why.
    shoal::runtime::memory::disable_transparent_huge_pages();
    let cli = shoal::cli::Cli::parse();
    std::process::exit(shoal::cli::run(cli));
}

// mimalloc: the owner task allocates many small entries that other threads
// free; glibc malloc spent ~30% of the ingest benchmark on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
