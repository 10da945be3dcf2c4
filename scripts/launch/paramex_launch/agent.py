"""The agent: one per shard or worker, wherever the backend started it.

It connects to the launcher's hub (retrying: no scheduler orders the starts), says which
process it is, runs what the hub sends (a paramex-server, or the worker command once
every shard serves), forwards the child's output and exit status, and stops the child
when the hub says so, when the agent is signalled, or when the hub is gone. The child
also gets SIGTERM if the agent itself dies (PR_SET_PDEATHSIG), so nothing outlives it.
"""
import ctypes
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from . import wire

READY = re.compile(r"^paramex-server listening on (\S+):(\d+)$")
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")
PR_SET_PDEATHSIG = 1


def fail(msg):
    print(f"paramex-launch agent: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def world_rank():
    """(rank, variable) from the scheduler's rank variables; fails when none is set."""
    for name in RANK_VARS:
        v = os.environ.get(name)
        if v is not None and v.isdigit():
            return int(v), name
    fail("no rank variable (" + ", ".join(RANK_VARS) + ") is set: was this started by "
         "mpirun or srun?")
    return None


def role_and_index(role, index, offset, split):
    """The agent's (role, index): given, or its world rank less offset, or (role auto)
    server for ranks below split and worker (rank - split) above."""
    if index is not None:
        return role, index
    rank, name = world_rank()
    if role == "auto":
        return ("server", rank) if rank < split else ("worker", rank - split)
    if rank < offset:
        fail(f"{name}={rank} is below this component's first rank {offset}")
    return role, rank - offset


def connect(addr, timeout):
    host, port = wire.split_addr(addr)
    until, pause = time.monotonic() + timeout, 0.05
    while True:
        try:
            s = socket.create_connection((host, port), timeout=10)
            # the timeout was for the connect: the hub may then say nothing for hours (a
            # training run), and a read timing out read as the launcher gone
            s.settimeout(None)
            return s
        except OSError as e:
            if time.monotonic() > until:
                fail(f"cannot reach the launcher at {addr} within {timeout:g} s: {e}")
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _pdeathsig():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the hub's stop still reaches it


class Child:
    """The process the hub asked for; its lines and exit reach the agent's queue."""

    def __init__(self, argv, env, conn, events, role):
        self.conn, self.role = conn, role
        self.p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=_pdeathsig)
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()

        def wait():
            rc = self.p.wait()
            reader.join()  # every line before the exit status
            events.put(("exited", rc))
        threading.Thread(target=wait, daemon=True).start()

    def _read(self):
        advertised = False
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.conn.send({"line": line[:wire.MAX_LINE // 2]})
            m = READY.match(line) if self.role == "server" and not advertised else None
            if m:
                host = m.group(1)
                if host in ("0.0.0.0", "[::]", "::"):
                    host = self.conn.sock.getsockname()[0]  # how the launcher reached us
                self.conn.send({"serving": f"{host}:{m.group(2)}"})
                advertised = True

    def signal(self, sig):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)  # its session: the process and what it started
            except ProcessLookupError:
                pass


def run(join, token, role, index, offset, split, connect_timeout):
    role, index = role_and_index(role, index, offset, split)
    conn = wire.Conn(connect(join, connect_timeout))
    events = queue.Queue()
    conn.send({"hello": token, "role": role, "index": index, "host": socket.gethostname(),
               "pid": os.getpid()})

    def reader():
        while True:
            m = conn.recv()
            events.put(("hub", m))
            if m is None:
                return
    threading.Thread(target=reader, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: events.put(("signal", s)))

    child, kill_at, leaving, status = None, None, None, 0
    while True:
        try:
            kind, m = events.get(timeout=0.2)
        except queue.Empty:
            kind, m = "tick", None
        if kill_at is not None and time.monotonic() > kill_at and child:
            child.signal(signal.SIGKILL)
            kill_at = None
        if kind == "exited":
            status = m
            conn.send({"exit": m})
            child = None
            if leaving is not None:
                break
        elif kind == "hub" and m is not None and "run" in m and child is None:
            env = dict(os.environ, **{k: str(v) for k, v in m.get("env", {}).items()})
            try:
                child = Child(m["run"], env, conn, events, role)
            except OSError as e:
                conn.send({"line": f"paramex-launch agent: cannot run {m['run'][0]}: {e}"})
                conn.send({"exit": 127})
        elif kind == "hub" and m is not None and "stop" in m:
            if child:
                child.signal(signal.SIGTERM)
                kill_at = time.monotonic() + float(m["stop"])
        elif kind in ("signal", "hub") and (m is None or kind == "signal" or "bye" in m):
            leaving = "bye" if kind == "hub" and m is not None else "lost"
            if child is None:
                break
            if leaving == "lost":  # say why, while the launcher may still hear it
                why = f"signal {m}" if kind == "signal" else "the launcher's connection ended"
                conn.send({"line": f"paramex-launch agent: {why}: stopping the {role}"})
            child.signal(signal.SIGTERM)  # then the exit event ends the loop
            if kill_at is None:
                kill_at = time.monotonic() + 30
    conn.close()
    if leaving == "bye":
        return 0  # the status went to the launcher: a non-zero exit would make mpirun or
    return status if status > 0 else 1  # srun tear the others down before they drain
