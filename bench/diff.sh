#!/usr/bin/env bash
# Diff-compressed pulls on the synthetic SGD workload (weights N(0, 0.02^2), gradients
# N(0, 0.01^2)): wire bytes per pull over raw bytes for f32 pulls and for the bf16 view,
# at lr 1e-2, 1e-3 and 1e-4, end to end (real server, real worker, loopback); then the
# encode (1 and 2 threads) and decode throughput of the frame pipeline.
# Usage: bench/diff.sh [BUILD_DIR] [NUMEL]   (default: build, 4000000 f32 = 16 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
numel=${2:-4000000}
server_bin=$build/server/paramex-server
bench_bin=$build/bench/paramex-basic-bench
codec_bin=$build/bench/paramex-codec-bench
for b in "$server_bin" "$bench_bin" "$codec_bin"; do
  [[ -x $b ]] || { echo "bench/diff.sh: $b is missing: build first (meson compile -C $build)" >&2; exit 2; }
done
tmp=$(mktemp -d)
srv_pid=
cleanup() {
  [[ -n $srv_pid ]] && kill "$srv_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

for lr in 0.01 0.001 0.0001; do
  : >"$tmp/srv.out"
  "$server_bin" --listen 127.0.0.1:0 --workers 1 --lr "$lr" --log-level warn >"$tmp/srv.out" 2>"$tmp/srv.err" &
  srv_pid=$!
  for _ in $(seq 1 400); do grep -q '^paramex-server listening on ' "$tmp/srv.out" && break; sleep 0.025; done
  addr=$(sed -n 's/^paramex-server listening on //p' "$tmp/srv.out")
  [[ -n $addr ]] || { cat "$tmp/srv.err" >&2; exit 1; }
  for view in f32 bf16; do
    "$bench_bin" --server "$addr" --numel "$numel" --steps 8 --warmup 2 --workload sgd --pull-dtype "$view" |
      python3 -c '
import json, sys
d = json.load(sys.stdin)
print(json.dumps({"case": "pull on SGD workload", "lr": float(sys.argv[1]), "pull_dtype": d["pull_dtype"],
                  "numel": int(sys.argv[2]), "wire_over_raw": d["pull_wire_over_raw"],
                  "wire_over_f32_raw": d["pull_wire_over_f32"], "pull_p50_s": d["pull_p50_s"],
                  "checksum_failures": d["checksum_failures"]}))' "$lr" "$numel"
  done
  kill -TERM "$srv_pid"; wait "$srv_pid"; srv_pid=
done
"$codec_bin" --mib 64 --lr 0.001 --threads 2 --view f32
"$codec_bin" --mib 64 --lr 0.001 --threads 2 --view bf16
