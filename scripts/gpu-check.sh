#!/usr/bin/env bash
# Builds paramex with the cuda backend and checks it on a machine with a GPU:
#   1. build-gpu/ with -Dcuda=enabled -Dwerror=true
#   2. the backend conformance suite on cuda (must run: a missing GPU is a failure here,
#      not a skip), the --device integration test, and the cpu suite for comparison
#   3. paramex-backend-bench on cpu and on cuda (kernel GB/s against the device's memory
#      bandwidth; goal >= 0.7x on an H100)
#   4. bench/paramex-bench, ResNet-50 and BERT-base, 4 workers, with the server on
#      --device cpu and --device cuda (a few steps each)
# Prints every result; exits non-zero when a build, a test or a benchmark failed.
#
# Usage: scripts/gpu-check.sh [--steps N]     (paramex-bench steps, default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

steps=10
while (($#)); do
  case $1 in
    --steps) steps=${2:?--steps needs a number}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "gpu-check.sh: nvidia-smi not found"

dir=build-gpu
setup=(meson setup)
[[ -f $dir/meson-private/coredata.dat ]] && setup+=(--reconfigure)
"${setup[@]}" "$dir" -Dcuda=enabled -Dwerror=true --buildtype=debugoptimized
meson compile -C "$dir"

echo "=== tests: backend conformance (cpu and cuda), --device integration ==="
PMX_TEST_REQUIRE_GPU=1 meson test -C "$dir" --print-errorlogs \
  unit-backend-cpu unit-backend-cuda integration_device

echo "=== paramex-backend-bench ==="
"$dir/bench/paramex-backend-bench" --device cpu --mb 256 --workers 4 --steps 5
"$dir/bench/paramex-backend-bench" --device cuda --mb 256 --workers 4 --steps 5

echo "=== paramex-bench: end-to-end steps, server on cpu vs cuda ==="
out=$dir/gpu-check
mkdir -p "$out"
for model in resnet50 bert-base; do
  for dev in cpu cuda; do
    echo "--- $model, --device $dev ---"
    python3 bench/paramex-bench --build-dir "$dir" --model "$model" --workers 4 \
      --steps "$steps" --warmup 2 --baselines none --server-arg="--device=$dev" \
      --json "$out/$model-$dev.json"
  done
done
echo "gpu-check.sh: done; JSON results in $out/"
