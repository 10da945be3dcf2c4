"""The launcher's side: the hub every agent reports to, and the run it drives.

Shards first: each shard's agent is told to run paramex-server; once every shard has
printed its readiness line the workers' agents are told to run the worker command with
PMX_SERVERS, PMX_RANK and PMX_WORLD_SIZE. The first worker that fails (or a shard that
ends while workers run) stops the rest: workers first, then the shards (SIGTERM: they
drain and write their final checkpoint), then every agent is told bye.
"""
import queue
import socket
import threading
import time

from . import wire

TAIL = 12


def describe(rc):
    return f"was killed by signal {-rc}" if rc < 0 else f"exited {rc}"


def status_of(rc):
    return 128 - rc if rc < 0 else rc


class Peer:
    """One agent as the hub sees it."""

    def __init__(self, conn, role, index, host):
        self.conn, self.role, self.index, self.host = conn, role, index, host
        self.tail, self.addr, self.rc, self.gone = [], None, None, False
        self.ran = False  # told what to run: something to stop

    @property
    def name(self):
        return f"{self.role} {self.index}"

    @property
    def ended(self):
        return self.rc is not None or self.gone


class Hub:
    """Accepts agents on bind_host (an ephemeral port); events go to self.events."""

    def __init__(self, bind_host, token, out):
        self.token, self.out, self.events = token, out, queue.Queue()
        self.sock = socket.create_server((bind_host, 0), backlog=1024)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(wire.Conn(s),), daemon=True).start()

    def _serve(self, conn):
        hello = conn.recv()
        if not hello or hello.get("hello") != self.token or hello.get("role") not in (
                "server", "worker") or not isinstance(hello.get("index"), int):
            conn.close()  # another run's agent, or not an agent at all
            return
        peer = Peer(conn, hello["role"], hello["index"], str(hello.get("host", "?")))
        self.events.put(("hello", peer, None))
        while True:
            m = conn.recv()
            if m is None:
                self.events.put(("gone", peer, None))
                return
            if "line" in m:
                line = str(m["line"])
                peer.tail = (peer.tail + [line])[-TAIL:]
                self.out(f"[{peer.name}] {line}")
            elif "serving" in m:
                self.events.put(("serving", peer, str(m["serving"])))
            elif "exit" in m and isinstance(m["exit"], int):
                self.events.put(("exit", peer, m["exit"]))

    def close(self):
        self.sock.close()


class Run:
    """One launch: S shards and W workers through the hub, whatever started the agents."""

    def __init__(self, hub, out, shards, workers, server_argv, command, ready_timeout,
                 stop_timeout):
        self.hub, self.out, self.S, self.W = hub, out, shards, workers
        self.server_argv, self.command = server_argv, command
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.peers = {}  # (role, index) -> Peer
        self.servers = None  # PMX_SERVERS once every shard serves
        self.starters = []  # (name, Popen, tail list): what the backend started

    def _count(self, role):
        return self.S if role == "server" else self.W

    def _hello(self, p):
        key = (p.role, p.index)
        if not 0 <= p.index < self._count(p.role) or key in self.peers:
            why = "twice" if key in self.peers else "out of range"
            self.out(f"[launch] an agent says it is {p.name} ({why}; from {p.host}): refused")
            p.conn.send({"bye": True})
            return
        self.peers[key] = p
        if p.role == "server":
            p.conn.send({"run": self.server_argv(p.index), "env": {}})
            p.ran = True
        elif self.servers:
            self._start_worker(p)

    def _start_worker(self, p):
        p.conn.send({"run": self.command, "env": {
            "PMX_SERVERS": self.servers, "PMX_RANK": p.index, "PMX_WORLD_SIZE": self.W}})
        p.ran = True

    def _missing(self, role):
        return [i for i in range(self._count(role)) if (role, i) not in self.peers]

    def _explain_timeout(self):
        for i in range(self.S):
            p = self.peers.get(("server", i))
            if p is None:
                self.out(f"[launch] shard {i} never started within {self.ready_timeout:g} s "
                         "(its agent did not reach the launcher)")
            elif not p.addr:
                self.out(f"[launch] shard {i} (on {p.host}) printed no readiness line within "
                         f"{self.ready_timeout:g} s; its last lines:")
                for line in p.tail:
                    self.out(f"[launch]   {line}")
        missing = self._missing("worker")
        if self.servers and missing:
            self.out(f"[launch] worker(s) {','.join(map(str, missing[:16]))} never started "
                     f"within {self.ready_timeout:g} s (their agents did not reach the launcher)")
        for name, _p, tail in self.starters:
            if tail:
                self.out(f"[launch] {name}'s last lines:")
                for line in tail[-TAIL:]:
                    self.out(f"[launch]   {line}")

    def wait(self, interrupted):
        """Drives the run to its end; returns the launcher's exit status."""
        until = time.monotonic() + self.ready_timeout
        done = set()
        while len(done) < self.W:
            try:
                kind, p, arg = self.hub.events.get(timeout=0.1)
            except queue.Empty:
                kind, p, arg = "tick", None, None
            if interrupted:
                return self.stop(128 + interrupted[0], "interrupted")
            waiting = not self.servers or self._missing("worker")
            if kind == "tick" and waiting and time.monotonic() > until:
                self._explain_timeout()
                return self.stop(1)
            if kind == "tick" and waiting:
                ended = [s for s in self.starters if s[1].poll() is not None]
                if ended:
                    name, sp, _tail = ended[0]
                    self.out(f"[launch] {name} {describe(sp.returncode)} before every process "
                             "reached the launcher")
                    self._explain_timeout()
                    return self.stop(1)
            if kind == "hello":
                self._hello(p)
            elif kind == "serving" and p.role == "server":
                p.addr = arg
                if all(("server", i) in self.peers and self.peers[("server", i)].addr
                       for i in range(self.S)):
                    self.servers = ",".join(self.peers[("server", i)].addr for i in range(self.S))
                    self.out(f"[launch] {self.S} shard(s) serving: PMX_SERVERS={self.servers}; "
                             f"starting {self.W} worker(s)")
                    until = time.monotonic() + self.ready_timeout  # for the workers' agents
                    for (role, _i), q in sorted(self.peers.items()):
                        if role == "worker":
                            self._start_worker(q)
            elif kind in ("exit", "gone") and self.peers.get((p.role, p.index)) is p:
                if kind == "exit":
                    p.rc = arg
                elif p.rc is None:
                    p.gone = True
                how = describe(p.rc) if p.rc is not None else \
                    "was lost (its agent ended without a status: killed?)"
                if p.role == "server":
                    if not self.servers:
                        self.out(f"[launch] shard {p.index} {how}; its last lines:")
                        for line in p.tail:
                            self.out(f"[launch]   {line}")
                        return self.stop(2 if p.rc == 2 else 1)  # 2: its flags were bad
                    self.out(f"[launch] shard {p.index} {how} while workers ran: stopping the rest")
                    return self.stop(1)
                if p.rc != 0:
                    self.out(f"[launch] worker {p.index} {how}: stopping the rest")
                    return self.stop(status_of(p.rc) if p.rc is not None else 1)
                done.add(p.index)
        return self.stop(0)

    def _stop_group(self, role):
        # an agent that was never told to run has nothing to stop (bye ends it)
        group = [p for (r, _i), p in self.peers.items() if r == role and p.ran and not p.ended]
        for p in group:
            p.conn.send({"stop": self.stop_timeout})
        until = time.monotonic() + self.stop_timeout + 10  # the agent kills at stop_timeout
        while any(not p.ended for p in group) and time.monotonic() < until:
            try:
                kind, p, arg = self.hub.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == "hello":
                p.conn.send({"bye": True})  # a latecomer: nothing to run any more
            elif kind == "exit" and p.rc is None:
                p.rc = arg
            elif kind == "gone" and p.rc is None:
                p.gone = True

    def stop(self, status, why=None):
        """Stops workers, then shards; says bye; returns the final exit status."""
        self._stop_group("worker")
        self._stop_group("server")
        for p in self.peers.values():
            p.conn.send({"bye": True})
        if why:
            self.out(f"[launch] {why}: stopped every process it started")
        for s in sorted(self.peers.values(), key=lambda p: p.index):
            if s.role == "server" and s.rc not in (0, None) and status == 0:
                self.out(f"[launch] shard {s.index} {describe(s.rc)} when stopped (see its "
                         "lines above)")
                status = 1
            elif s.role == "server" and s.gone and status == 0:
                self.out(f"[launch] shard {s.index} was lost when stopped")
                status = 1
        return status
