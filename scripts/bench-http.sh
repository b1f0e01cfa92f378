#!/usr/bin/env bash
# HTTP ingest benchmark: one node (release build) on loopback, wrk as the load
# generator on the same machine. Results go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || apt-get install -y wrk
cargo build --release --quiet
dir=$(mktemp -d)
trap 'kill %1 2>/dev/null; wait; rm -rf "$dir"' EXIT
./target/release/shoal start --no-mdns --profile fast --api 127.0.0.1:0 \
  --listen /ip4/127.0.0.1/tcp/0 --data-dir "$dir/n1" > "$dir/ready" 2> "$dir/log" &
for _ in $(seq 100); do grep -q api= "$dir/ready" 2>/dev/null && break; sleep 0.1; done
api=$(grep -o 'api=[^ ]*' "$dir/ready" | cut -d= -f2)
for script in kv_put task_submit; do
  echo "== $script (wrk -t2 -c${CONNS:-256} -d${SECS:-10}s)"
  wrk -t2 -c"${CONNS:-256}" -d"${SECS:-10}s" --latency -s "benches/http/$script.lua" "$api" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx|errors"
done
