//! The `shoal` binary: node daemon and command-line client.

use clap::Parser;

fn main() {
    // Transparent huge pages: mimalloc asks for them on its segments, and a
    // 2 MiB page is resident as a whole once one byte of it is touched. An
    // idle node went from ~31 MB to ~15 MB resident without them; HTTP
    // ingest stayed within run-to-run noise. Set before anything allocates.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = shoal::cli::Cli::parse();
    std::process::exit(shoal::cli::run(cli));
}

// mimalloc: the owner task allocates many small entries that other threads
// free; glibc malloc spent ~30% of the ingest benchmark on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
