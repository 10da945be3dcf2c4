#!/usr/bin/env bash
# Installs what is missing, builds paramex, and trains a real model on this machine: one
# paramex-server on an ephemeral loopback port and 4 paramex-train-demo workers (softmax
# regression, 60 BSP steps). Then checks that every worker holds parameters bit-identical
# to the server's and that the server stops cleanly on SIGTERM, and installs the build
# (meson install: the binaries, libparamex and the Python package, for /usr/bin/python3).
#
# Usage: scripts/demo.sh        (no arguments)
set -euo pipefail

readonly WORKERS=4 STEPS=60
readonly READY_TIMEOUT_S=20   # server start until its "listening" line
readonly WORKER_TIMEOUT_S=120 # each worker, start to exit
readonly STOP_TIMEOUT_S=15    # SIGTERM until the server exits (its drain timeout is 5 s)

if (($# > 0)); then
  echo "demo.sh: takes no arguments (got '$1')" >&2
  exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
start_ns=$(date +%s%N)

scripts/deps.sh
if [[ ! -f build/meson-private/coredata.dat ]]; then
  meson setup build --buildtype=debugoptimized
fi
# Only what the demo runs, so the demo never waits for the test programs.
meson compile -C build paramex-server client/paramex:executable paramex-train-demo

server_bin=build/server/paramex-server
cli_bin=build/client/paramex
worker_bin=build/client/paramex-train-demo

tmp=$(mktemp -d "${TMPDIR:-/tmp}/paramex-demo.XXXXXX")
server_pid="" tail_pid=""
worker_pids=()
ok=0

any_alive() {
  local pid
  for pid in "$@"; do
    kill -0 "$pid" 2>/dev/null && return 0
  done
  return 1
}

# Stops PIDs this script started (and only those): SIGTERM, a bounded wait, then SIGKILL.
# (A worker's PID is that of its `timeout`, which passes SIGTERM on and, 5 s later,
# SIGKILL.)
stop_pids() {
  local pid live=() i
  for pid in "$@"; do
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then live+=("$pid"); fi
  done
  ((${#live[@]} > 0)) || return 0
  kill -TERM "${live[@]}" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do
    any_alive "${live[@]}" || break
    sleep 0.1
  done
  kill -KILL "${live[@]}" 2>/dev/null || true
  wait "${live[@]}" 2>/dev/null || true
}

show_logs() {
  local f
  for f in "$tmp"/*.log "$tmp"/server.out; do
    [[ -s $f ]] || continue
    echo "----- ${f##*/} (last 20 lines) -----"
    tail -n 20 "$f"
  done
  echo "logs kept in $tmp"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids "${worker_pids[@]}" "$server_pid" "$tail_pid"
  if ((ok)); then
    rm -rf "$tmp"
  else
    show_logs >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# --- the server, on an ephemeral port; its first stdout line names the address ---
: >"$tmp/server.out" # exists before the first poll below
"$server_bin" --listen 127.0.0.1:0 --workers "$WORKERS" --lr 0.5 --momentum 0.9 \
  >"$tmp/server.out" 2>"$tmp/server.log" &
server_pid=$!

addr=""
for ((i = 0; i < READY_TIMEOUT_S * 20; i++)); do
  # `read` succeeds only on a complete (newline-terminated) line.
  if IFS= read -r line <"$tmp/server.out"; then
    [[ $line =~ ^paramex-server\ listening\ on\ ([^[:space:]]+:[0-9]+)$ ]] ||
      fail "paramex-server's first line is not 'paramex-server listening on HOST:PORT': '$line'"
    addr=${BASH_REMATCH[1]}
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || fail "paramex-server exited before it was ready"
  sleep 0.05
done
[[ -n $addr ]] || fail "paramex-server printed no 'listening' line within ${READY_TIMEOUT_S} s"
echo "paramex-server (pid $server_pid) listening on $addr"

"$cli_bin" health "$addr" --wait 10 || fail "paramex health $addr did not report SERVING"

# --- the workers: rank 0 shows its progress here, the others write logs ---
for ((r = 0; r < WORKERS; r++)); do
  timeout --kill-after=5 "$WORKER_TIMEOUT_S" \
    "$worker_bin" --server "$addr" --rank "$r" --world "$WORKERS" --steps "$STEPS" \
    >"$tmp/worker$r.log" 2>&1 &
  worker_pids+=("$!")
done
# Follows worker 0's log until that worker exits (and its last lines are printed).
tail -n +1 -s 0.1 --pid="${worker_pids[0]}" -f "$tmp/worker0.log" &
tail_pid=$!

# Reap the workers as they finish; on the first failure stop the others at once instead
# of letting them wait for a step that will never complete.
declare -A rank_of=()
for ((r = 0; r < WORKERS; r++)); do rank_of[${worker_pids[r]}]=$r; done
failure=""
while ((${#worker_pids[@]} > 0)); do
  rc=0 done_pid=""
  wait -n -p done_pid "${worker_pids[@]}" || rc=$?
  [[ -n $done_pid ]] || { failure="lost track of the workers (wait: $rc)"; break; }
  left=()
  for pid in "${worker_pids[@]}"; do [[ $pid == "$done_pid" ]] || left+=("$pid"); done
  worker_pids=("${left[@]}")
  if ((rc == 124 || rc == 137)); then
    failure="worker ${rank_of[$done_pid]} timed out after ${WORKER_TIMEOUT_S} s"
  elif ((rc != 0)); then
    failure="worker ${rank_of[$done_pid]} exited with status $rc"
  fi
  [[ -z $failure ]] || break
done
stop_pids "${worker_pids[@]}"
worker_pids=()
wait "$tail_pid" || true
tail_pid=""
[[ -z $failure ]] || fail "$failure"

# --- bit-identity: every worker's checksum equals the server's ---
server_json=$("$cli_bin" stats "$addr" --json) || fail "paramex stats $addr --json failed"
server_dec=$(python3 -c '
import json, sys
stats = json.loads(sys.stdin.read())
for t in stats.get("tensors", []):
    if t.get("name") == "softmax.weight":
        print(int(t["checksum"]))
        break
' <<<"$server_json") || fail "cannot parse the output of paramex stats --json"
[[ $server_dec =~ ^[0-9]+$ ]] || fail "paramex stats --json lists no tensor softmax.weight"
[[ $server_dec != 0 ]] || fail "the server reports no checksum for softmax.weight (checksum 0)"
server_hex=$(printf '%016x' "$server_dec")

for ((r = 0; r < WORKERS; r++)); do
  line=$(grep -E '^final params xxh64=[0-9a-f]{16}$' "$tmp/worker$r.log" | tail -n 1) ||
    fail "worker $r printed no 'final params xxh64=...' line"
  worker_hex=${line#final params xxh64=}
  [[ $worker_hex == "$server_hex" ]] ||
    fail "worker $r holds parameters with xxh64 $worker_hex, the server $server_hex"
done
echo "OK: $WORKERS workers hold parameters bit-identical to the server's (xxh64 $server_hex)"

# --- clean shutdown: SIGTERM, drain, exit 0 ---
kill -TERM "$server_pid"
for ((i = 0; i < STOP_TIMEOUT_S * 20; i++)); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
if kill -0 "$server_pid" 2>/dev/null; then
  fail "paramex-server still running ${STOP_TIMEOUT_S} s after SIGTERM"
fi
rc=0
wait "$server_pid" || rc=$?
server_pid=""
((rc == 0)) || fail "paramex-server exited with status $rc after SIGTERM (expected 0)"

# --- install (binaries, libparamex, the Python package) so that `paramex-launch`,
# `paramex-server` and `/usr/bin/python3 -c 'import paramex'` work from anywhere ---
# (what meson installs, and no test program: the build outputs `meson introspect
# --installed` lists)
mapfile -t install_outputs < <(meson introspect build --installed |
  /usr/bin/python3 -c 'import json, os, sys
for k in json.load(sys.stdin):
    if k.startswith(os.path.abspath("build") + "/"): print(os.path.relpath(k, "build"))')
ninja -C build "${install_outputs[@]}" >"$tmp/compile.log" 2>&1 ||
  fail "building what meson installs (see $tmp/compile.log)"
sudo_=()
((EUID == 0)) || sudo_=(sudo)
"${sudo_[@]}" meson install -C build --no-rebuild --quiet >"$tmp/install.log" 2>&1 ||
  fail "meson install (see $tmp/install.log)"
"${sudo_[@]}" ldconfig 2>/dev/null || true
pyver=$(cd / && /usr/bin/python3 -c 'import paramex; print(paramex.__version__)' 2>&1) ||
  fail "the installed Python package does not import: $pyver"
echo "installed under $(meson introspect build --buildoptions |
  /usr/bin/python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"][0])'):" \
  "paramex-server, paramex-launch, libparamex, Python package paramex $pyver"

accuracy=$(sed -n 's/^final test accuracy //p' "$tmp/worker0.log" | tail -n 1)
elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
printf 'demo: %d workers x %d steps of softmax regression over paramex at %s; ' \
  "$WORKERS" "$STEPS" "$addr"
printf 'test accuracy %s; server stopped cleanly; %d.%01d s in all\n' \
  "${accuracy:-?}" $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100))
ok=1
