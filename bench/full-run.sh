#!/usr/bin/env bash
# The full benchmark run behind bench/README.md: loopback sizes, ResNet-50 and BERT-base
# against MPI_Allreduce and iperf3, the SGD lr sweep and ResNet-50 behind emulated 1 Gbit/s
# links, issue 5's goals (bench/goals), then the plots. ~20 minutes on the 2-vCPU VM;
# --link parts need root.
# Usage: bench/full-run.sh [OUTDIR] [BUILD_DIR]   (default: bench/results, build)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
build=${2:-build}
mkdir -p "$out"
bench() { /usr/bin/env python3 bench/paramex-bench --build-dir "$build" "$@"; }

# 1,000-float round trip
bench --model dense:1K --workers 1 --steps 2000 --warmup 200 --compression on,off \
  --baselines memcpy,mpi --json "$out/small.json" --csv "$out/small.csv"
# throughput against tensor size, 1 worker
bench --model dense:256K,dense:1M,dense:4M,dense:25M --workers 1 --steps 10 --warmup 2 \
  --compression on,off --json "$out/sizes.json" --csv "$out/sizes.csv"
# ResNet-50, 1/2/4 workers, against MPI_Allreduce with as many ranks
bench --model resnet50 --workers 1,2,4 --steps 5 --warmup 2 --compression on,off \
  --json "$out/resnet50.json" --csv "$out/resnet50.csv"
# BERT-base, 1 and 2 workers (440 MB each); 2 warm-up steps: the second one still
# allocates the server's delta history
bench --model bert-base --workers 1,2 --steps 3 --warmup 2 \
  --json "$out/bert-base.json" --csv "$out/bert-base.csv"
# the same with glibc's huge-page malloc for paramex (what MPI gets in its best setting)
bench --model dense:25M,resnet50 --workers 1,4 --steps 5 --warmup 2 --compression off \
  --glibc-hugetlb --baselines mpi --json "$out/hugetlb.json" --csv "$out/hugetlb.csv"
if [[ $EUID -eq 0 ]]; then
  # wire bytes against lr behind a 1 Gbit/s link
  bench --model dense:4M --workers 1 --lr 0.01,0.001,0.0001 --pull-dtype f32,bf16 \
    --steps 6 --warmup 2 --link 1gbit --baselines iperf3 \
    --json "$out/lr-1gbit.json" --csv "$out/lr-1gbit.csv"
  # ResNet-50 behind 1 Gbit/s links: what diff compression and the bf16 view buy
  bench --model resnet50 --workers 2 --pull-dtype f32,bf16 --compression on,off \
    --steps 4 --warmup 2 --link 1gbit --baselines iperf3 \
    --json "$out/resnet50-1gbit.json" --csv "$out/resnet50-1gbit.csv"
fi
# issue 5's five goals, each a ratio measured in one invocation (writes $out/goals.json)
/usr/bin/env python3 bench/goals --build-dir "$build" --out "$out"
/usr/bin/env python3 bench/plot "$out"/[!g]*.json --out "$out"
