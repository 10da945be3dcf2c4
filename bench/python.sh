#!/usr/bin/env bash
# Python overhead (issue 15, goal 1): push + pull round trip through paramex.Client
# (bench/python_bench.py) against the C client (paramex-basic-bench --overlap on: the same
# pmx_push_pull loop) on one server, alternating C and Python runs, for a 1,000-float and
# a 100 MB tensor, 1 worker, lr 0, loopback. Prints one JSON line per run and per size the
# ratio of the medians (goals: <= 1.1 and <= 1.05).
# Usage: bench/python.sh [BUILD_DIR] [ROUNDS]   (default: build, 5). Ends only processes it
# started.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
rounds=${2:-5}
server_bin=$build/server/paramex-server
bench_bin=$build/bench/paramex-basic-bench
for b in "$server_bin" "$bench_bin" "$build/python/paramex/__init__.py"; do
  [[ -e $b ]] || { echo "bench/python.sh: $b is missing: build first (meson compile -C $build)" >&2; exit 2; }
done
export PYTHONPATH=$PWD/$build/python
tmp=$(mktemp -d)
server_pid=""
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

"$server_bin" --listen 127.0.0.1:0 --workers 1 --lr 0 --log-level warn >"$tmp/out" &
server_pid=$!
for _ in $(seq 1 2000); do
  grep -q "listening on" "$tmp/out" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { echo "bench/python.sh: the server exited" >&2; exit 1; }
  sleep 0.01
done
addr=$(sed -n 's/^paramex-server listening on //p' "$tmp/out")
[[ -n $addr ]] || { echo "bench/python.sh: no readiness line from the server" >&2; exit 1; }

for spec in "1000 2000 200" "25000000 12 2"; do
  read -r numel steps warmup <<<"$spec"
  : >"$tmp/c" ; : >"$tmp/py"
  for _ in $(seq 1 "$rounds"); do
    "$bench_bin" --server "$addr" --numel "$numel" --steps "$steps" --warmup "$warmup" \
      --overlap on | tee -a "$tmp/c"
    /usr/bin/python3 bench/python_bench.py --server "$addr" --numel "$numel" --steps "$steps" \
      --warmup "$warmup" | tee -a "$tmp/py"
  done
  /usr/bin/python3 - "$tmp/c" "$tmp/py" "$numel" <<'PY'
import json, statistics, sys
c = [json.loads(l)["step_p50_s"] for l in open(sys.argv[1])]
p = [json.loads(l)["step_p50_s"] for l in open(sys.argv[2])]
mc, mp = statistics.median(c), statistics.median(p)
print(json.dumps({"numel": int(sys.argv[3]), "c_step_p50_s": mc, "python_step_p50_s": mp,
                  "python_over_c": round(mp / mc, 4)}))
PY
done
