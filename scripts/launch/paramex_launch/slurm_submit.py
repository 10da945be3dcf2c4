"""--backend slurm --submit: a heterogeneous batch job (component 0: S tasks for the
shards, component 1: W tasks for the workers) whose batch script runs this launcher again
with --backend slurm, inside the allocation."""
import os
import re
import shlex
import subprocess
import sys

MINE = ("--submit", "--wait", "--dry-run")


def relaunch_argv(argv):
    """The launcher's own arguments without the submission's (--submit, --wait, --dry-run,
    --sbatch-arg X), the worker command untouched."""
    k = argv.index("--")
    out, skip = [], False
    for x in argv[:k]:
        if skip:
            skip = False
        elif x in MINE:
            pass
        elif x == "--sbatch-arg":
            skip = True
        elif not x.startswith("--sbatch-arg="):
            out.append(x)
    return out + argv[k:]


def script(a, self_path, argv, output):
    common = [f"#SBATCH {x}" for x in a.sbatch_arg]
    lines = ["#!/bin/sh", "# paramex: shards in component 0, workers in component 1",
             f"#SBATCH --job-name={a.name}", f"#SBATCH --output={output}",
             f"#SBATCH --ntasks={a.shards}"] + common + \
            ["#SBATCH hetjob", f"#SBATCH --ntasks={a.workers}"] + common
    cmd = [sys.executable, self_path] + relaunch_argv(argv)
    return "\n".join(lines + ["exec " + " ".join(shlex.quote(x) for x in cmd)]) + "\n"


def main(a, self_path, argv):
    output = os.path.join(os.getcwd(), f"{a.name}-%j.out")
    text = script(a, self_path, argv, output)
    if a.dry_run:
        sys.stdout.write(text)
        return 0
    cmd = [os.environ.get("PMX_SBATCH", "sbatch"), "--parsable"] + (["--wait"] if a.wait else [])
    try:
        r = subprocess.run(cmd, input=text, capture_output=True, text=True)
    except OSError as e:
        print(f"paramex-launch: cannot run sbatch: {e}", file=sys.stderr)
        return 2
    m = re.match(r"^(\d+)", r.stdout.strip())
    if not m:
        print(f"paramex-launch: sbatch refused the job: {r.stderr.strip() or r.stdout.strip()}",
              file=sys.stderr)
        return 2 if r.returncode else 1
    job, path = m.group(1), output.replace("%j", m.group(1))
    print(f"[launch] submitted batch job {job} (shards: component 0, workers: component 1); "
          f"output: {path}", flush=True)
    if not a.wait:
        return 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            sys.stdout.write(f.read())
    except OSError as e:
        print(f"[launch] job {job} ended with {r.returncode}; its output {path}: {e.strerror}")
    if r.returncode != 0:
        print(f"[launch] job {job} failed: sbatch --wait exited {r.returncode} "
              f"{r.stderr.strip()}".rstrip(), flush=True)
    return r.returncode
