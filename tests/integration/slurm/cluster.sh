#!/usr/bin/env bash
# A throwaway Slurm cluster of two logical nodes on this machine (Debian's slurm-wlm and
# munge, no systemd, no cgroups), for the launcher's tests.
#   cluster.sh up DIR     writes DIR/slurm.conf, starts munged, slurmctld and two slurmd
#                         (nodes pmxn1, pmxn2 on 127.0.0.1), waits until both are idle;
#                         prints "export SLURM_CONF=DIR/slurm.conf"
#   cluster.sh down DIR   stops the daemons it started (by the PIDs in DIR)
# Run it as root inside a private mount namespace whose /etc/hosts names pmxn1 and pmxn2
# (run-in-ns.sh does both): the node names must resolve for slurmd and inside jobs.
# Exit 77 (skip) with one line when a piece is missing or a daemon does not start.
set -euo pipefail
cmd=${1:?usage: cluster.sh up|down DIR}
dir=${2:?usage: cluster.sh up|down DIR}

skip() { echo "SKIP slurm cluster: $*" >&2; exit 77; }

down() {
  for f in "$dir"/slurmd-pmxn1.pid "$dir"/slurmd-pmxn2.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [[ -s $f ]] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

if [[ $cmd == down ]]; then down; exit 0; fi
[[ $cmd == up ]] || { echo "usage: cluster.sh up|down DIR" >&2; exit 2; }
[[ $(id -u) == 0 ]] || skip "needs root (munged and slurmd run as root here)"
for t in munged slurmctld slurmd sinfo srun sbatch scontrol; do
  command -v "$t" >/dev/null || skip "$t not installed (Debian: slurm-wlm, munge)"
done
getent hosts pmxn1 >/dev/null || skip "pmxn1 does not resolve (run inside run-in-ns.sh)"

mkdir -p "$dir"/state "$dir"/spool/pmxn1 "$dir"/spool/pmxn2 "$dir"/munge
chmod 700 "$dir"/munge
dd if=/dev/urandom of="$dir"/munge/munge.key bs=1024 count=1 status=none
chmod 400 "$dir"/munge/munge.key
sock=$dir/munge/munge.sock
munged --force --socket="$sock" --key-file="$dir"/munge/munge.key \
  --pid-file="$dir"/munged.pid --log-file="$dir"/munged.log --seed-file="$dir"/munge/seed \
  || skip "munged did not start: $(tail -2 "$dir"/munged.log 2>/dev/null)"

ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(3)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])'))
cat > "$dir"/slurm.conf <<CONF
ClusterName=pmxtest
SlurmctldHost=$(hostname)
SlurmctldPort=${ports[0]}
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
SchedulerParameters=bf_interval=1
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
ReturnToService=2
KillWait=5
NodeName=pmxn1 NodeAddr=127.0.0.1 Port=${ports[1]} CPUs=8 State=UNKNOWN
NodeName=pmxn2 NodeAddr=127.0.0.1 Port=${ports[2]} CPUs=8 State=UNKNOWN
PartitionName=debug Nodes=pmxn1,pmxn2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -c -i -f "$SLURM_CONF" || skip "slurmctld did not start: $(tail -3 "$dir"/slurmctld.log)"
for n in pmxn1 pmxn2; do
  slurmd -N "$n" -f "$SLURM_CONF" || skip "slurmd $n did not start: $(tail -3 "$dir"/slurmd-$n.log)"
done
for _ in $(seq 600); do  # normally a few seconds
  idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle$' || true)
  [[ $idle == 2 ]] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 0.1
done
echo "slurm cluster: nodes not idle after 60 s: $(sinfo -N 2>&1)" >&2
down
skip "the nodes did not become idle"
