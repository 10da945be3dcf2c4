"""Real paramex-server processes for the Python-driven tests (python/tests, tests/metrics):
started on ephemeral loopback ports (their readiness lines give the ports), stopped by PID.
PMX_SERVER_BIN names the binary (meson sets it)."""
import os
import re
import signal
import subprocess
import time

import pytest

SERVER_BIN = os.environ.get("PMX_SERVER_BIN", "")
WAIT_S = 120  # a server normally starts in well under a second


class Server:
    """A paramex-server started with args; addr is 127.0.0.1:PORT."""

    def __init__(self, *args, listen="127.0.0.1:0"):
        if not SERVER_BIN:
            pytest.fail("PMX_SERVER_BIN is not set (run through meson test)")
        self.args = list(args)
        self.proc = subprocess.Popen([SERVER_BIN, "--listen", listen, "--log-level", "warn"]
                                     + self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self._readiness()
        m = re.match(r"paramex-server listening on 127\.0\.0\.1:(\d+)$", line)
        if not m:
            self.kill()
            pytest.fail(f"the server's first line: {line!r}; stderr: {self.proc.stderr.read()}")
        self.port = int(m.group(1))
        self.addr = f"127.0.0.1:{self.port}"
        self.metrics_url = None  # with --metrics-listen: its second readiness line
        if any(a == "--metrics-listen" or a.startswith("--metrics-listen=") for a in args):
            line = self._readiness()
            m = re.match(r"paramex-server metrics on (https?://\S+:(\d+)/metrics)$", line)
            if not m:
                self.kill()
                pytest.fail(f"the server's second line: {line!r}")
            self.metrics_url, self.metrics_port = m.group(1), int(m.group(2))

    def _readiness(self):
        # readline blocks until the line (or EOF when the server exits); the deadline is
        # the test's own timeout
        return self.proc.stdout.readline().rstrip("\n")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)


def servers():
    """The body of a `server` fixture: yields start(*args, listen=...), which starts a
    paramex-server; every one started is stopped when the test ends."""
    started = []

    def start(*args, listen="127.0.0.1:0"):
        s = Server(*args, listen=listen)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def wait_until(cond, what, timeout=WAIT_S):
    """Polls cond() (an event the test waits for) every 10 ms, failing after timeout."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)
