#!/usr/bin/env bash
# Builds paramex with the cuda backend and checks it on a machine with a GPU:
#   1. build-gpu/ with -Dcuda=enabled -Dwerror=true -Dtests=enabled (a failed build stops
#      here: nothing else can run)
#   2. the backend conformance suite on cuda (must run: a missing GPU is a failure here,
#      not a skip), the --device integration test, and the cpu suite for comparison
#   3. paramex-server --device cuda must start, print its listening line and stop cleanly
#      on SIGTERM (the integration test also accepts a refusal, for machines without GPU)
#   4. paramex-gpu-kernel-bench (kernel GB/s against the device's memory bandwidth; goal
#      >= 0.7x on an H100), and paramex-backend-bench (tests/perf/) on cpu and on cuda
#   5. bench/paramex-bench, ResNet-50 and BERT-base, 4 workers, with the server on
#      --device cpu and --device cuda (a few steps each)
# Every check after the build runs even when an earlier one failed (this runs where nobody
# can debug interactively, so one run must gather everything); the summary at the end
# lists the failures. Exits non-zero when the build or any check failed.
#
# Usage: scripts/gpu-check.sh [--steps N]     (paramex-bench steps, default 10)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

steps=10
while (($#)); do
  case $1 in
    --steps) steps=${2:?--steps needs a number}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

dir=build-gpu
out=$dir/gpu-check
failed=()

# check NAME CMD...: runs CMD, records NAME as failed when it exits non-zero.
check() {
  local name=$1 rc=0
  shift
  echo
  echo "=== $name ==="
  "$@" || rc=$?
  if ((rc == 0)); then
    echo "--- $name: ok"
  else
    echo "--- $name: FAILED (exit $rc)" >&2
    failed+=("$name (exit $rc)")
  fi
}

die() {
  echo "gpu-check.sh: FAILED: $*" >&2
  exit 1
}

# NCCL's own warnings (to stdout) name the cause when it fails; respect a caller's choice.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

echo "=== devices ==="
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -L || echo "gpu-check.sh: nvidia-smi -L failed (the checks below will say more)" >&2
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
else
  echo "gpu-check.sh: nvidia-smi not found" >&2
fi

echo "=== build ($dir) ==="
opts=(-Dcuda=enabled -Dwerror=true -Dtests=enabled --buildtype=debugoptimized)
if [[ -f $dir/meson-private/coredata.dat ]]; then
  meson setup --reconfigure "$dir" "${opts[@]}" || meson setup --wipe "$dir" "${opts[@]}" ||
    die "meson setup $dir"
else
  meson setup "$dir" "${opts[@]}" || die "meson setup $dir"
fi
meson compile -C "$dir" || die "meson compile -C $dir"
mkdir -p "$out" || die "mkdir $out"

# The GPU tests: PMX_TEST_REQUIRE_GPU=1 turns unit-cuda's "no GPU" skip into a failure.
# The timeouts are stretched: NCCL's start-up takes a while and the cuda suite starts
# several servers per scenario.
check "tests: backend conformance (cpu, cuda), --device integration" \
  env PMX_TEST_REQUIRE_GPU=1 meson test -C "$dir" --no-rebuild --print-errorlogs \
  --timeout-multiplier 5 unit-cpu unit-cuda integration_device

# paramex-server --device cuda starts (prints its listening line), then stops with exit 0
# on SIGTERM.
server_starts() {
  local log=$out/server-cuda.log pid line="" rc=0
  "$dir/server/paramex-server" --device cuda --listen 127.0.0.1:0 --workers 1 \
    >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do
    line=$(grep -m1 'listening on' "$log" || true)
    [[ -n $line ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if [[ -z $line ]]; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid"
    echo "paramex-server --device cuda did not start; its output:" >&2
    cat "$log" >&2
    return 1
  fi
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  cat "$log"
  ((rc == 0)) || echo "paramex-server --device cuda exited $rc after SIGTERM" >&2
  return "$rc"
}
check "paramex-server --device cuda starts and stops" server_starts

check "paramex-gpu-kernel-bench" "$dir/server/paramex-gpu-kernel-bench" --mb 256
check "paramex-backend-bench --device cpu" \
  "$dir/tests/perf/paramex-backend-bench" --device cpu --mb 256 --workers 4 --steps 5
check "paramex-backend-bench --device cuda" \
  "$dir/tests/perf/paramex-backend-bench" --device cuda --mb 256 --workers 4 --steps 5

for model in resnet50 bert-base; do
  for dev in cpu cuda; do
    check "paramex-bench $model, server --device $dev" \
      python3 bench/paramex-bench --build-dir "$dir" --model "$model" --workers 4 \
      --steps "$steps" --warmup 2 --baselines none --server-arg="--device=$dev" \
      --json "$out/$model-$dev.json"
  done
done

echo
if ((${#failed[@]})); then
  echo "gpu-check.sh: FAILED: ${#failed[@]} check(s):" >&2
  printf '  %s\n' "${failed[@]}" >&2
  echo "test logs: $dir/meson-logs/testlog.txt; other output: $out/" >&2
  exit 1
fi
echo "gpu-check.sh: all checks passed; JSON results in $out/"
