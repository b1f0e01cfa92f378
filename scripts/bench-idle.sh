#!/usr/bin/env bash
# Idle cost of a node: N release nodes (fast profile, heartbeats every 500 ms)
# on loopback, measured over 10 s after they settle: CPU % per node and RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
cargo build --release --quiet
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
export SHOAL_SECRET=$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')
start() {
  ./target/release/shoal start --no-mdns --profile fast --api 127.0.0.1:0 --listen /ip4/127.0.0.1/tcp/0 \
    --data-dir "$dir/n$1" "${@:2}" > "$dir/r$1" 2> "$dir/e$1" &
  pids+=($!)
  for _ in $(seq 100); do grep -q api= "$dir/r$1" 2>/dev/null && break; sleep 0.1; done
}
start 0
boot=$(grep -o 'p2p=[^ ,]*' "$dir/r0" | cut -d= -f2)
for i in $(seq 1 $((n - 1))); do start "$i" --bootstrap "$boot"; done
sleep 10
ticks=$(getconf CLK_TCK)
declare -A before
for p in "${pids[@]}"; do before[$p]=$(awk '{print $14+$15}' /proc/$p/stat); done
sleep 10
for p in "${pids[@]}"; do
  after=$(awk '{print $14+$15}' /proc/$p/stat)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$p/status)
  echo "pid $p: cpu $(echo "scale=2; ($after - ${before[$p]}) * 100 / $ticks / 10" | bc)%  rss $((rss / 1024)) MiB"
done
