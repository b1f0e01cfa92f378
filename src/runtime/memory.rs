//! Process-wide memory settings, shared by the `shoal` binary, the
//! benchmarks and programs that embed a node.

/// Turns off transparent huge pages for this process (Linux
/// `prctl(PR_SET_THP_DISABLE)`; the setting is inherited by children).
/// Returns whether the kernel took it; elsewhere it does nothing and returns
/// false.
///
/// mimalloc asks for huge pages on its segments. With them, every fresh
/// 2 MiB page is zeroed whole by the kernel on its first touch, and a page
/// touched at all is resident whole: an idle node was ~31 MB resident with
/// them and ~15 MB without, and under sustained replicated writes the
/// kernel's page zeroing took about a third of all CPU (3 nodes in one
/// process: ~46k writes/s with huge pages, ~62–67k/s without; see
/// docs/benchmarks.md). Call it first thing in `main`, before the runtime
/// starts and the node allocates.
///
/// Rust's runtime has allocated before `main` (the main thread's name), so
/// mimalloc's first arena is already madvised and keeps 4 MiB of huge pages.
/// Building mimalloc with `no_thp` removes them (3 MiB less per node) but
/// was left out: 100-process starts fell into the suspicion storm far more
/// often with it (docs/benchmarks.md, session 16).
pub fn disable_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_thp_disable(true).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_after_the_call() {
        assert!(super::disable_transparent_huge_pages());
        assert!(
            nix::sys::prctl::get_thp_disable().expect("prctl answers"),
            "the kernel reports THP disabled for this process"
        );
    }
}
