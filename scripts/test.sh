#!/usr/bin/env bash
# Installs what is missing, builds paramex and runs every test twice:
#   build/       -Dwerror=true --buildtype=debugoptimized
#   build-asan/  the same suite under AddressSanitizer + UndefinedBehaviorSanitizer
# The last line printed is always "N passed, N failed", summed over both runs (skipped
# tests are counted on the line before it); a build that fails counts as one failure.
# Exit status 0 only when nothing failed.
#
# Usage: scripts/test.sh [--quick]     --quick: only the plain build
set -euo pipefail

usage="usage: scripts/test.sh [--quick]"
quick=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "test.sh: unknown argument '$arg' ($usage)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

passed=0 failed=0 skipped=0
summary() {
  ((skipped == 0)) || echo "$skipped skipped (tests that need a GPU exit 77 without one)"
  echo "$passed passed, $failed failed"
}

if ! scripts/deps.sh; then
  echo "test.sh: installing dependencies failed" >&2
  failed=1
  summary
  exit 1
fi

# Adds the results in DIR/meson-logs/testlog.json (one JSON object per test) to the
# counters. Prints "P F S" on stdout; exits non-zero when the log is missing or unreadable.
count_results() {
  python3 - "$1/meson-logs/testlog.json" <<'EOF'
import json, sys
p = f = s = 0
with open(sys.argv[1], encoding="utf-8") as log:
    for line in log:
        if not line.strip():
            continue
        result = json.loads(line).get("result", "ERROR")
        if result in ("OK", "EXPECTEDFAIL"):
            p += 1
        elif result == "SKIP":
            s += 1
        else:  # FAIL, TIMEOUT, ERROR, UNEXPECTEDPASS, ...
            f += 1
print(p, f, s)
EOF
}

# run_suite NAME DIR TIMEOUT_MULTIPLIER MESON_SETUP_ARGS...: configure (or reconfigure),
# build, test, count.
run_suite() {
  local name=$1 dir=$2 timeout_multiplier=$3
  shift 3
  echo "=== $name: $dir ==="
  local setup=(meson setup)
  [[ -f $dir/meson-private/coredata.dat ]] && setup+=(--reconfigure)
  if ! "${setup[@]}" "$dir" "$@" || ! meson compile -C "$dir"; then
    echo "test.sh: $name: build failed" >&2
    failed=$((failed + 1))
    return
  fi
  rm -f "$dir/meson-logs/testlog.json"
  local rc=0 counts p f s
  meson test -C "$dir" --print-errorlogs --timeout-multiplier "$timeout_multiplier" || rc=$?
  if ! counts=$(count_results "$dir"); then
    echo "test.sh: $name: no readable $dir/meson-logs/testlog.json (meson test exit $rc)" >&2
    failed=$((failed + 1))
    return
  fi
  read -r p f s <<<"$counts"
  # A non-zero exit with no failed test in the log (e.g. meson itself failed) still fails.
  if ((rc != 0 && f == 0)); then
    echo "test.sh: $name: meson test exited $rc" >&2
    f=1
  fi
  echo "=== $name: $p passed, $f failed, $s skipped ==="
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

run_suite plain build 1 -Dwerror=true --buildtype=debugoptimized

if ((quick == 0)); then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  # Sanitized code runs a few times slower: give each test's timeout room.
  # -Dcuda=disabled: nvcc compiles device code without sanitizers, and the CUDA runtime's
  # address-space reservations collide with ASan's shadow memory on a GPU machine
  # (cudaErrorMemoryAllocation unless ASAN_OPTIONS=protect_shadow_gap=0). The CUDA code is
  # compiled and its tests run in build/; this build checks the server without it.
  run_suite asan+ubsan build-asan 3 -Db_sanitize=address,undefined -Db_lundef=false \
    -Dwerror=true --buildtype=debugoptimized -Dcuda=disabled
fi
((quick)) || { rm -f build-fuzz/summary; scripts/fuzz.sh 10 || true; [[ $(cat build-fuzz/summary 2>/dev/null) =~ ^fuzz:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]] && passed=$((passed + BASH_REMATCH[1])) failed=$((failed + BASH_REMATCH[2])) || failed=$((failed + 1)); }

summary
((failed == 0))
