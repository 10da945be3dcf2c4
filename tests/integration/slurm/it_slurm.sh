#!/usr/bin/env bash
# integration_slurm (issue 14): paramex-launch --backend slurm on a real Slurm cluster of
# two logical nodes (cluster.sh), set up and torn down here, inside a private mount
# namespace whose /etc/hosts names the nodes:
#   - a heterogeneous batch job (--submit --wait: shards in component 0 on pmxn1, workers
#     in component 1 on pmxn2) of 2 shards + 4 workers ends with the checksum of the same
#     demo over 1 shard run by the local backend;
#   - the same from inside a plain allocation (sbatch -n 6 running the launcher);
#   - workers killed by Slurm (scancel of their component): the launcher exits non-zero
#     and names a worker;
#   - an allocation with fewer tasks than shards + workers: exit 2 and one line;
#   - after each, no process it started is left (the binaries run under this test's own
#     paths, so a look at the process list finds only ours).
# Skipped (exit 77) with one line where the cluster cannot start (not root, no Slurm).
set -uo pipefail
: "${PMX_LAUNCH_BIN:?meson sets it}" "${PMX_SERVER_BIN:?}" "${PMX_DEMO_BIN:?}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ -z ${PMX_IT_SLURM_DIR:-} ]]; then
  [[ $(id -u) == 0 ]] || { echo "SKIP: the Slurm test needs root (munged, slurmd)"; exit 77; }
  command -v unshare >/dev/null || { echo "SKIP: no unshare"; exit 77; }
  command -v slurmctld >/dev/null || { echo "SKIP: Slurm is not installed (slurm-wlm)"; exit 77; }
  tmp=$(mktemp -d /tmp/pmx-slurm.XXXXXX)
  cp /etc/hosts "$tmp/hosts" && echo "127.0.0.1 pmxn1 pmxn2" >> "$tmp/hosts"
  PMX_IT_SLURM_DIR=$tmp unshare -m bash -c 'mount --bind "$1/hosts" /etc/hosts && exec "$2"' \
    _ "$tmp" "${BASH_SOURCE[0]}"
  rc=$?
  rm -rf "$tmp"
  exit $rc
fi

tmp=$PMX_IT_SLURM_DIR
cd "$tmp" || exit 1
trap '"$here/cluster.sh" down "$tmp/c"' EXIT
env_line=$("$here/cluster.sh" up "$tmp/c") || exit $?
eval "$env_line"
mkdir -p bin
ln -sf "$PMX_LAUNCH_BIN" bin/paramex-launch
ln -sf "$PMX_SERVER_BIN" bin/paramex-server
L=$tmp/bin/paramex-launch
export PMX_SERVER_BIN=$tmp/bin/paramex-server
passed=0 failed=0
ok() { echo "ok - $1"; passed=$((passed + 1)); }
bad() { echo "not ok - $1"; failed=$((failed + 1)); }

# every process started through our paths has ended (bounded: Slurm's KillWait is 5 s)
none_left() {
  local i
  for i in $(seq 600); do
    pgrep -f "$tmp/bin/" >/dev/null || return 0
    sleep 0.1
  done
  echo "# left running:"; pgrep -af "$tmp/bin/"
  return 1
}

checksums() {  # the distinct "final params" hashes of workers 0..3, one per line
  for r in 0 1 2 3; do
    grep -o "^\[worker $r\] final params xxh64=[0-9a-f]*" "$1" | sed 's/.*=//' || echo "none($r)"
  done | sort -u
}

"$L" --shards 1 --workers 4 -- "$PMX_DEMO_BIN" --steps 20 > one.out 2>&1
want=$(checksums one.out)
[[ $want =~ ^[0-9a-f]{16}$ ]] || { echo "# 1-shard local run: no checksum"; cat one.out; exit 1; }

# 1. heterogeneous job
"$L" --backend slurm --submit --wait --shards 2 --workers 4 --log-level warn -- \
  "$PMX_DEMO_BIN" --steps 20 > het.out 2>&1
rc=$?
got=$(checksums het.out)
if [[ $rc == 0 && $got == "$want" ]] && grep -q "^\[launch\] component 1 (workers): node(s) pmxn2" het.out; then
  ok "hetjob: 2 shards + 4 workers end with the 1-shard checksum $want"
else
  bad "hetjob: exit $rc, checksums '$got', want $want"; cat het.out
fi
none_left && ok "hetjob: nothing left running" || bad "hetjob: processes left"

# 2. inside a plain allocation of 6 tasks over both nodes
sbatch --wait -N 2 -n 6 -o plain.out --wrap "$L --backend slurm --shards 2 --workers 4 -- $PMX_DEMO_BIN --steps 20" > /dev/null 2>&1
rc=$?
got=$(checksums plain.out)
if [[ $rc == 0 && $got == "$want" ]]; then
  ok "allocation: 2 shards + 4 workers end with the 1-shard checksum"
else
  bad "allocation: exit $rc, checksums '$got', want $want"; cat plain.out
fi
none_left && ok "allocation: nothing left running" || bad "allocation: processes left"

# 3. Slurm kills the workers (worker 2 asks it to cancel the workers' component)
kill_cmd='if [ "$PMX_RANK" = 2 ]; then scancel --signal=KILL "$SLURM_JOB_ID_HET_GROUP_1"; sleep 600; fi; exec "$0" --steps 1000000'
"$L" --backend slurm --submit --wait --shards 2 --workers 4 -- /bin/sh -c "$kill_cmd" \
  "$PMX_DEMO_BIN" > killed.out 2>&1
rc=$?
if [[ $rc != 0 ]] && grep -Eq "^\[launch\] worker [0-3] (was killed by signal|was lost|exited)" killed.out; then
  ok "killed by Slurm: exit $rc, $(grep -Eo '^\[launch\] worker [0-3] [a-z]+( [a-z]+){0,4}' killed.out | head -1)"
else
  bad "killed by Slurm: exit $rc, no worker named"; cat killed.out
fi
none_left && ok "killed by Slurm: nothing left running" || bad "killed: processes left"

# 4. fewer tasks than shards + workers
sbatch --wait -n 3 -o few.out --wrap "$L --backend slurm --shards 2 --workers 4 -- $PMX_DEMO_BIN" > /dev/null 2>&1
rc=$?
if [[ $rc == 2 ]] && grep -q "the allocation has 3 task(s) (SLURM_NTASKS); 2 shard(s) + 4 worker(s) need 6" few.out; then
  ok "fewer tasks: exit 2 with the counts"
else
  bad "fewer tasks: exit $rc"; cat few.out
fi

echo "slurm: $passed passed, $failed failed"
((failed == 0))
