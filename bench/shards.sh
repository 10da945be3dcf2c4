#!/usr/bin/env bash
# Issue 13's goals: one model over S shards, ResNet-50 x 4 workers (BSP), against
# MPI_Allreduce over the same emulated hosts. ~15 minutes on the 2-vCPU VM; root (the
# emulated hosts are network namespaces). Writes OUTDIR/shards-*.json, .csv, .txt and the
# plots (bench/plot).
#   1, 2. 4 shards colocated with the 4 workers on 1 Gbit/s hosts: plain f32 (compression
#         off) and the defaults (diff-compressed pulls, bf16 view, bf16 pushes), each with
#         pmx_push_pull's pipelined pattern (--overlap) and with push then pull;
#   3.    loopback: S = 1 and 2 (the cost of sharding itself), both patterns, alternated
#         twice (one pair on this VM varies by +-15%);
#   4.    1, 2, 4 shards on hosts of their own (separate), 1 Gbit/s.
# Usage: bench/shards.sh [OUTDIR] [BUILD_DIR]   (default: bench/results, build)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
build=${2:-build}
mkdir -p "$out"
bench() {
  local name=$1
  shift
  /usr/bin/env python3 bench/paramex-bench --build-dir "$build" --model resnet50 --workers 4 \
    --steps 6 --warmup 2 --mpi-hugetlb off "$@" --json "$out/$name.json" --csv "$out/$name.csv" \
    | tee "$out/$name.txt"
}
modes=(--push raw,bf16 --pull-dtype f32,bf16 --compression off,auto)
bench shards-colocated-overlap --shards 4 --hosts colocated --link 1gbit --overlap "${modes[@]}" \
  --baselines iperf3,mpi
bench shards-colocated --shards 4 --hosts colocated --link 1gbit --compression off,auto \
  --baselines none
bench shards-separate --shards 1,2,4 --hosts separate --link 1gbit --compression off \
  --overlap --baselines mpi
bench shards-loopback --shards 1,2,1,2 --compression off --steps 20 --warmup 5 --baselines mpi
bench shards-loopback-overlap --shards 1,2,1,2 --compression off --steps 20 --warmup 5 --overlap \
  --baselines none
/usr/bin/env python3 bench/plot "$out"/shards-*.json --out "$out/shards-plots"
rm -f "$out/shards-plots/step_vs_workers.png" # one worker count: nothing to draw
