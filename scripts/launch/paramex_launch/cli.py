"""paramex-launch's command line: the launcher, and the agent mode its backends start."""
import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from . import agent, backends, hub, slurm_submit

OWNED = ("--listen", "--shard", "--shards", "--workers")
USAGE = ("paramex-launch --shards S --workers W [--backend local|mpi|slurm|k8s] [options] "
         "[paramex-server flags...] -- WORKER_COMMAND [args...]")


def usage_error(msg):
    print(f"paramex-launch: {msg}", file=sys.stderr)
    sys.exit(2)


def find_server(given, here):
    for c in (given, os.environ.get("PMX_SERVER_BIN"), os.path.join(here, "paramex-server")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    found = shutil.which("paramex-server")
    if not found:
        usage_error("cannot find paramex-server (give --server-bin PATH or PMX_SERVER_BIN)")
    return found


def parser(doc):
    ap = argparse.ArgumentParser(prog="paramex-launch", description=doc, usage=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, required=True, help="paramex-server shards S")
    ap.add_argument("--workers", type=int, required=True, help="copies W of the worker command")
    ap.add_argument("--backend", choices=["local", "mpi", "slurm", "k8s"], default="local",
                    help="where the processes run (default local: this machine)")
    ap.add_argument("--server-bin", help="paramex-server to run (default: beside this script, "
                    "PMX_SERVER_BIN, or on PATH); the same path on every host")
    ap.add_argument("--name", default="paramex", help="slurm --submit: the job's name (its "
                    "output goes to NAME-JOBID.out); k8s: the Service, StatefulSet and Job "
                    "(default paramex)")
    ap.add_argument("--port", type=int, default=0,
                    help="shard I listens on PORT+I (default 0: an ephemeral port each)")
    ap.add_argument("--rendezvous", metavar="HOST",
                    help="the name or address of this host the agents connect to (mpi, "
                    "slurm; default: this host's name)")
    ap.add_argument("--ready-timeout", type=float, default=60.0,
                    help="seconds for every shard to serve, and then for every worker to "
                    "start (default 60)")
    ap.add_argument("--stop-timeout", type=float, default=120.0,
                    help="seconds a stopped process gets before SIGKILL (default 120)")
    g = ap.add_argument_group("mpi")
    g.add_argument("--hosts", help="mpirun --host list HOST[:SLOTS],... (checked: S + W slots)")
    g.add_argument("--oversubscribe", action="store_true", help="more processes than slots")
    g.add_argument("--mpirun", help="the mpirun to run (default: on PATH)")
    g.add_argument("--mpirun-arg", action="append", default=[], metavar="ARG",
                   help="one more mpirun argument (repeat)")
    g = ap.add_argument_group("slurm")
    g.add_argument("--submit", action="store_true",
                   help="submit a heterogeneous batch job (shards, then workers) with sbatch")
    g.add_argument("--wait", action="store_true", help="with --submit: wait for the job, print "
                   "its output, exit with its status")
    g.add_argument("--dry-run", action="store_true", help="with --submit: print the batch "
                   "script instead of submitting it")
    g.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="one more #SBATCH option for both components, e.g. --time=1:00:00")
    g.add_argument("--srun", help="the srun to run (default: on PATH)")
    g.add_argument("--srun-arg", action="append", default=[], metavar="ARG",
                   help="one more srun argument (repeat)")
    g = ap.add_argument_group("k8s")
    g.add_argument("--image", help="container image with paramex-server, paramex and the "
                   "worker command")
    g.add_argument("--namespace", default="default")
    g.add_argument("--token-secret", metavar="FILE", help="a token file: rendered as a Secret, "
                   "mounted, and given to shards (--token-file) and workers (PMX_TOKEN_FILE)")
    g.add_argument("--storage", default="10Gi", help="with --checkpoint-dir among the server "
                   "flags: each shard's PersistentVolumeClaim size (default 10Gi)")
    g.add_argument("--gpus-per-worker", type=int, default=0, metavar="N",
                   help="nvidia.com/gpu limit of each worker pod")
    g.add_argument("--cli-bin", default="paramex", help="the paramex CLI in the image (the "
                   "workers' init containers wait with 'paramex health --wait')")
    g.add_argument("--wait-timeout", type=float, default=600.0, help="seconds a worker pod "
                   "waits for each shard to serve (default 600)")
    g.add_argument("--jobset", action="store_true", help="workers as a JobSet "
                   "(jobset.x-k8s.io/v1alpha2; default: an Indexed Job)")
    g.add_argument("--max-restarts", type=int, default=0, metavar="N", help="with --jobset: "
                   "how often the JobSet restarts the workers after a failure (default 0)")
    g.add_argument("--output", metavar="DIR", help="write one file per manifest and a "
                   "kustomization.yaml into DIR (default: all to stdout)")
    g.add_argument("--apply", action="store_true", help="kubectl apply the manifests")
    g.add_argument("--kubectl", default="kubectl", help="the kubectl to run (default: on PATH)")
    return ap


def parse(argv, doc):
    if "--" not in argv:
        if "-h" in argv or "--help" in argv:
            parser(doc).print_help()
            sys.exit(0)
        usage_error("no worker command: give it after '--' (see --help)")
    k = argv.index("--")
    mine, command = argv[:k], argv[k + 1:]
    a, server_flags = parser(doc).parse_known_args(mine)
    if not 1 <= a.shards <= 256:
        usage_error(f"--shards must be 1..256, not {a.shards}")
    if not 1 <= a.workers <= 65536:
        usage_error(f"--workers must be 1..65536, not {a.workers}")
    if not 0 <= a.port <= 65535 - a.shards:
        usage_error(f"--port must leave room for {a.shards} port(s) below 65536, not {a.port}")
    for f in server_flags:
        if f.split("=")[0] in OWNED:
            usage_error(f"{f.split('=')[0]} is set by the launcher (--listen, --shard, --shards "
                        "and --workers of each shard)")
    if not command:
        usage_error("no worker command after '--'")
    if a.backend in ("local", "mpi") or (a.backend == "slurm" and not a.submit):
        if shutil.which(command[0]) is None:
            usage_error(f"worker command '{command[0]}' not found (or not executable)")
    for flag, tool in (("mpi", a.mpirun or "mpirun"), ("slurm", a.srun or "srun")):
        if a.backend == flag and not a.submit and shutil.which(tool) is None:
            usage_error(f"--backend {flag}: '{tool}' not found")
    return a, server_flags, command


def agent_main(argv):
    ap = argparse.ArgumentParser(prog="paramex-launch --agent")
    ap.add_argument("join", help="HOST:PORT/TOKEN of the launcher's hub")
    ap.add_argument("--role", choices=["server", "worker", "auto"], required=True)
    ap.add_argument("--index", type=int)
    ap.add_argument("--rank-offset", type=int, default=0)
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    a = ap.parse_args(argv)
    addr, _, token = a.join.partition("/")
    return agent.run(addr, token, a.role, a.index, a.rank_offset, a.split, a.connect_timeout)


def main(argv, self_path, doc):
    if argv[:1] == ["--agent"]:
        return agent_main(argv[1:])
    a, server_flags, command = parse(argv, doc)
    here = os.path.dirname(os.path.abspath(self_path))
    if a.backend == "k8s":
        from . import k8s
        return k8s.main(a, server_flags, command)
    if a.backend == "slurm" and a.submit:
        return slurm_submit.main(a, self_path, argv)
    if a.submit or a.dry_run or a.wait:
        usage_error("--submit, --wait and --dry-run are for --backend slurm")
    server = find_server(a.server_bin, here)
    lock = threading.Lock()

    def out(line):
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    local = a.backend == "local"
    token = secrets.token_hex(16)
    h = hub.Hub("127.0.0.1" if local else "0.0.0.0", token, out)
    host = "127.0.0.1" if local else (a.rendezvous or socket.gethostname())
    bind = "127.0.0.1" if local else "0.0.0.0"

    def server_argv(i):
        return [server, "--listen", f"{bind}:{a.port + i if a.port else 0}", "--shard", str(i),
                "--shards", str(a.shards), "--workers", str(a.workers)] + server_flags

    run = hub.Run(h, out, a.shards, a.workers, server_argv, command, a.ready_timeout,
                  a.stop_timeout)
    interrupted = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: interrupted.append(s))
    try:
        run.starters = backends.BACKENDS[a.backend](a, os.path.abspath(self_path),
                                                    f"{host}:{h.port}/{token}", out)
    except backends.Usage as e:
        usage_error(str(e))
    status = run.wait(interrupted)
    end_starters(run.starters, a.stop_timeout, out)
    h.close()
    return status


def end_starters(starters, timeout, out):
    """Waits for what the backend started (its agents were told bye); SIGTERM, then
    SIGKILL, to its own process group when it does not end by itself."""
    until = time.monotonic() + min(timeout, 30)
    for name, p, _tail in starters:
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                if sig == signal.SIGKILL:
                    out(f"[launch] {name} did not end after SIGTERM: SIGKILL")
                try:
                    os.killpg(p.pid, sig)  # the session it was started in: ours alone
                except ProcessLookupError:
                    break
            try:
                p.wait(max(0.5, until - time.monotonic()) if sig is None else 10)
                break
            except subprocess.TimeoutExpired:
                continue
