#!/usr/bin/env bash
# Basic transfer benchmark of paramex on loopback, with iperf3 measured in the same run:
#   1. iperf3 single-stream TCP throughput on 127.0.0.1
#   2. push + pull of one 100 MB f32 tensor, 1 worker and 4 workers (BSP, lr 0)
#   3. push + pull round trip of a 1,000-float tensor, 1 worker
# Usage: bench/basic.sh [BUILD_DIR]   (default: build; run scripts/demo.sh or meson first)
# Prints one JSON line per measurement. Ends only processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
server_bin=$build/server/paramex-server
bench_bin=$build/bench/paramex-basic-bench
for b in "$server_bin" "$bench_bin"; do
  [[ -x $b ]] || { echo "bench/basic.sh: $b is missing: build first (meson compile -C $build)" >&2; exit 2; }
done
scripts/deps.sh --bench

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 1. iperf3
port=$(free_port)
iperf3 -s -1 -p "$port" -B 127.0.0.1 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  iperf3 -c 127.0.0.1 -p "$port" -t 4 -J >"$tmp/iperf.json" 2>/dev/null && break
  sleep 0.05
done
python3 - "$tmp/iperf.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bps = d["end"]["sum_received"]["bits_per_second"]
print(json.dumps({"baseline": "iperf3 loopback, 1 stream", "gbps": round(bps / 8e9, 3)}))
PY

# Starts a server with the given flags; sets $addr and appends its PID.
start_server() {
  : >"$tmp/srv.out"
  # --no-compression: these are transport numbers (bench/diff.sh measures compression)
  "$server_bin" --listen 127.0.0.1:0 --log-level warn --no-compression "$@" >"$tmp/srv.out" 2>"$tmp/srv.err" &
  srv_pid=$!
  pids+=("$srv_pid")
  for _ in $(seq 1 400); do
    if grep -q '^paramex-server listening on ' "$tmp/srv.out"; then break; fi
    sleep 0.025
  done
  addr=$(sed -n 's/^paramex-server listening on //p' "$tmp/srv.out")
  [[ -n $addr ]] || { echo "server did not start:" >&2; cat "$tmp/srv.err" >&2; exit 1; }
}
stop_server() { kill -TERM "$srv_pid"; wait "$srv_pid"; }

run_workers() { # WORKERS NUMEL STEPS WARMUP
  local w=$1 numel=$2 steps=$3 warm=$4 wp=()
  start_server --workers "$w" --lr 0
  for ((r = 1; r < w; r++)); do
    "$bench_bin" --server "$addr" --rank "$r" --world "$w" --numel "$numel" --steps "$steps" --warmup "$warm" &
    wp+=($!)
  done
  "$bench_bin" --server "$addr" --rank 0 --world "$w" --numel "$numel" --steps "$steps" --warmup "$warm" |
    sed "s/^{/{\"case\": \"push+pull $numel f32\", \"server_rss_kib\": RSS, /" >"$tmp/line"
  for p in "${wp[@]}"; do wait "$p"; done
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$srv_pid/status")
  sed "s/RSS/$rss/" "$tmp/line"
  stop_server
}

run_workers 1 25000000 10 2
run_workers 4 25000000 10 2
run_workers 1 1000 5000 200
