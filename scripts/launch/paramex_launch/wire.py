"""The launcher's rendezvous protocol: one JSON object per line over TCP.

An agent (one per shard or worker, started by the backend: a local process, an mpirun or
srun rank) connects to the launcher's hub and says hello; the hub answers with what to
run; the agent forwards its child's output lines, a shard's serving address, and the
child's exit status; the hub says stop (SIGTERM the child) and bye (exit).

  agent -> hub: {"hello": TOKEN, "role": "server"|"worker", "index": I, "host": NAME}
                {"line": TEXT}  {"serving": "HOST:PORT"}  {"exit": RC}  (RC < 0: signal)
  hub -> agent: {"run": ARGV, "env": {NAME: VALUE}}  {"stop": SECONDS}  {"bye": true}
"""
import json
import socket
import threading

MAX_LINE = 1 << 20  # one message; a longer output line is cut to fit


class Conn:
    """A connected socket that sends and receives one JSON object per line."""

    def __init__(self, sock):
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.lock = threading.Lock()

    def send(self, obj):
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        with self.lock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False

    def recv(self):
        """The next object, or None at the end of the stream or on a malformed line."""
        try:
            raw = self.rfile.readline(MAX_LINE + 1)
        except OSError:
            return None
        if not raw or len(raw) > MAX_LINE:
            return None
        try:
            obj = json.loads(raw)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def split_addr(addr):
    """'host:port' (or '[v6]:port') into (host, port); ValueError when malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{addr}' is not HOST:PORT")
    return host.strip("[]"), int(port)
