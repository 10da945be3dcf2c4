"""How each backend starts the agents (hub.py drives them once they report).

local: S + W agent processes on this machine, shards on loopback.
mpi:   one `mpirun` MPMD job: `-np S agent(server) : -np W agent(worker)`; an agent's
       index is its MPI world rank less its component's first rank (OMPI_COMM_WORLD_RANK,
       PMIX_RANK or PMI_RANK). Nothing links MPI.
slurm: one `srun` step inside the allocation: in a heterogeneous job, component 0 runs
       the shards and component 1 the workers; otherwise the step's first S tasks are the
       shards. SLURM_PROCID numbers a heterogeneous step's tasks across its components
       (component 0 first), so a worker's index is SLURM_PROCID - S either way.
"""
import os
import subprocess
import sys
import threading


class Usage(Exception):
    """A usage error: the launcher prints it and exits 2, having started nothing."""


def agent_argv(self_path, join, role, offset=None, index=None, split=None):
    argv = [sys.executable, self_path, "--agent", join, "--role", role]
    if index is not None:
        argv += ["--index", str(index)]
    if offset is not None:
        argv += ["--rank-offset", str(offset)]
    if split is not None:
        argv += ["--split", str(split)]
    return argv


def start(name, argv, out, env=None):
    """Runs argv in its own session (Ctrl-C reaches the launcher alone), its output lines
    printed with [name]; returns (name, Popen, tail)."""
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    tail = []

    def read():
        for raw in p.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            del tail[:-50]
            out(f"[{name}] {line}")
    threading.Thread(target=read, daemon=True).start()
    return (name, p, tail)


def slots_of(hosts):
    """Total slots of an mpirun --host list 'a:2,b,c:4' (a host without ':N' has 1)."""
    n = 0
    for h in hosts.split(","):
        name, _, k = h.partition(":")
        if not name or (k and not k.isdigit()):
            raise Usage(f"--hosts: '{h}' is not HOST or HOST:SLOTS")
        n += int(k) if k else 1
    return n


def local(a, self_path, join, out):
    return [start(f"launch agent {role} {i}", agent_argv(self_path, join, role, index=i), out)
            for role, n in (("server", a.shards), ("worker", a.workers)) for i in range(n)]


def mpi(a, self_path, join, out):
    mpirun = a.mpirun or "mpirun"
    need = a.shards + a.workers
    if a.hosts and not a.oversubscribe and slots_of(a.hosts) < need:
        raise Usage(f"--hosts gives {slots_of(a.hosts)} slot(s); {a.shards} shard(s) + "
                    f"{a.workers} worker(s) need {need} (add hosts or slots, or "
                    "--oversubscribe)")
    argv = [mpirun]
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    if a.oversubscribe:
        argv.append("--oversubscribe")
    if a.hosts:
        argv += ["--host", a.hosts]
    argv += a.mpirun_arg
    argv += ["-np", str(a.shards)] + agent_argv(self_path, join, "server", offset=0)
    argv += [":", "-np", str(a.workers)] + agent_argv(self_path, join, "worker",
                                                      offset=a.shards)
    return [start("mpirun", argv, out)]


def het_groups():
    """The number of components of this Slurm job (1 when it is not heterogeneous)."""
    v = os.environ.get("SLURM_HET_SIZE", "")
    return int(v) if v.isdigit() else 1


def _tasks(suffix=""):
    v = os.environ.get("SLURM_NTASKS" + suffix, "")
    return int(v) if v.isdigit() else None


def slurm_nodes(nodelist):
    """scontrol's expansion of a node list ('n[1-3]' -> n1,n2,n3)."""
    if not nodelist:
        return []
    try:
        r = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return [nodelist]
    return r.stdout.split() if r.returncode == 0 else [nodelist]


def slurm(a, self_path, join, out):
    if "SLURM_JOB_ID" not in os.environ:
        raise Usage("--backend slurm runs inside an allocation (sbatch or salloc); give "
                    "--submit to submit one")
    srun = [a.srun or "srun", "--kill-on-bad-exit=0", "--unbuffered"] + a.srun_arg
    if het_groups() >= 2:
        have = (_tasks("_HET_GROUP_0"), _tasks("_HET_GROUP_1"))
        for what, n, want in (("shards", have[0], a.shards), ("workers", have[1], a.workers)):
            if n is not None and n < want:
                comp = 0 if what == "shards" else 1
                raise Usage(f"the job's component {comp} has {n} task(s) "
                            f"(SLURM_NTASKS_HET_GROUP_{comp}); {want} {what} need {want}")
        for comp in (0, 1):
            nodes = slurm_nodes(os.environ.get(f"SLURM_JOB_NODELIST_HET_GROUP_{comp}", ""))
            out(f"[launch] component {comp} ({'shards' if comp == 0 else 'workers'}): "
                f"node(s) {','.join(nodes)}")
        argv = srun + ["--het-group=0", "-n", str(a.shards)] + \
            agent_argv(self_path, join, "server", offset=0)
        argv += [":", "--het-group=1", "-n", str(a.workers)] + \
            agent_argv(self_path, join, "worker", offset=a.shards)
    else:
        need, n = a.shards + a.workers, _tasks()
        if n is not None and n < need:
            raise Usage(f"the allocation has {n} task(s) (SLURM_NTASKS); {a.shards} shard(s) "
                        f"+ {a.workers} worker(s) need {need}")
        nodes = slurm_nodes(os.environ.get("SLURM_JOB_NODELIST", ""))
        out(f"[launch] allocation {os.environ['SLURM_JOB_ID']}: node(s) {','.join(nodes)}")
        argv = srun + ["-n", str(need)] + agent_argv(self_path, join, "auto", split=a.shards)
    return [start("srun", argv, out)]


BACKENDS = {"local": local, "mpi": mpi, "slurm": slurm}
