#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECS seconds each (default
# 60; CI runs 30), growing the corpus kept in fuzz/corpus/TARGET. Stable Rust
# only on this machine: cargo-fuzz's nightly flags are allowed with
# RUSTC_BOOTSTRAP=1. A crash stops the run, prints the input's path
# (fuzz/artifacts/TARGET/) and exits non-zero, as does a build error;
# replay an input with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# Installs cargo-fuzz if it is missing. Bounded: SECS per target, plus the
# build.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
for target in $(cargo fuzz list); do
  mkdir -p "fuzz/corpus/$target"
  echo "== fuzz $target for ${secs} s"
  log="$(mktemp)"
  status=0
  # The runtime target needs the node's side of the crate (fuzz/Cargo.toml).
  features=()
  [ "$target" = runtime ] && features=(--features runtime)
  cargo fuzz run "${features[@]}" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  # libFuzzer's chatter stays in the log; the figures and any failure show.
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)|panicked|ERROR|SUMMARY|Test unit written|^error' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz $target failed (exit $status); a failing input is in fuzz/artifacts/$target/"
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
done
