#!/usr/bin/env bash
# The cost of metrics (issue 16): ResNet-50 with 4 workers on loopback, each round one run
# without and one with --metrics-listen (scraped every second, as a Prometheus would, by
# paramex-bench --metrics on), ROUNDS rounds in one invocation; prints each pair's step
# p50 and the ratio of the medians (goal <= 1.02). Then the scrape time of a server
# holding 10,000 tensors (bench/metrics_scrape.py; goal <= 50 ms). Writes the runs to
# OUT/metrics.json and the plot of the last "on" run to OUT/run_metrics.png.
# Usage: bench/metrics.sh [BUILD_DIR] [ROUNDS] [OUT]   (default: build, 3, bench/results)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
rounds=${2:-3}
out=${3:-bench/results}
mkdir -p "$out"
files=()
for i in $(seq 1 "$rounds"); do
  bench/paramex-bench --build-dir "$build" --model resnet50 --workers 4 --steps 10 --warmup 2 \
    --metrics off,on --scrape-interval 1 --baselines none --name "r$i " \
    --json "$out/metrics-r$i.json" >/dev/null
  files+=("$out/metrics-r$i.json")
done
/usr/bin/python3 - "$out/metrics.json" "${files[@]}" <<'PY'
import json, statistics, sys
runs = [r for f in sys.argv[2:] for r in json.load(open(f))["runs"]]
json.dump({"runs": runs}, open(sys.argv[1], "w"), indent=1)
off = [r["step_p50_s"] for r in runs if not r["metrics"]]
on = [r["step_p50_s"] for r in runs if r["metrics"]]
for a, b in zip(off, on):
    print(json.dumps({"step_p50_off_s": a, "step_p50_on_s": b, "ratio": round(b / a, 4)}))
scr = [r["scrape_p50_s"] for r in runs if r["metrics"] and r.get("scrape_p50_s")]
print(json.dumps({"model": "resnet50", "workers": 4, "rounds": len(off),
                  "median_off_s": statistics.median(off), "median_on_s": statistics.median(on),
                  "ratio_of_medians": round(statistics.median(on) / statistics.median(off), 4),
                  "scrape_p50_during_run_ms": round(statistics.median(scr) * 1e3, 3) if scr else None}))
PY
rm -f "${files[@]}"
plots=$(mktemp -d)
bench/plot "$out/metrics.json" --out "$plots" >/dev/null && cp "$plots/run_metrics.png" "$out/"
rm -rf "$plots"
PYTHONPATH=$PWD/$build/python /usr/bin/python3 bench/metrics_scrape.py --build "$build" --tensors 10000
