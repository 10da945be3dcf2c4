"""Fixtures of the metrics tests: paramex-server processes (python/tests/pxserver.py), the
exposition format parsed by prometheus_client (Debian's python3-prometheus-client), and
HTTP(S) requests by the standard library. Run by meson (`meson test -C build
integration_metrics`), which sets PMX_SERVER_BIN, PMX_DEMO_BIN, PROMTOOL, PROMETHEUS and
PYTHONPATH (the build's paramex package and python/tests)."""
import http.client
import os
import ssl
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pxserver import servers, wait_until, WAIT_S  # noqa: F401 (the tests import them here)

DEMO_BIN = os.environ.get("PMX_DEMO_BIN", "")
PROMTOOL = os.environ.get("PROMTOOL", "promtool")


@pytest.fixture
def server():
    """server(*args) starts a paramex-server; every one is stopped at the test's end."""
    yield from servers()


def get(port, path="/metrics", method="GET", headers=None, tls_ca=None, body=None):
    """(status, headers dict, body text) of one request to 127.0.0.1:port."""
    if tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT_S, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def scrape(srv, **kw):
    """The server's samples: {(name, frozenset of labels without shard): value}."""
    status, headers, text = get(srv.metrics_port, **kw)
    assert status == 200, text
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "shard"}
            out[(s.name, frozenset(labels.items()))] = s.value
    return out, text


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def promtool_check(text):
    """promtool check metrics on the page: its lint findings, '' when clean."""
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=WAIT_S)
    return (r.stdout + r.stderr).strip() if r.returncode else ""


def train(addr, world, steps, *extra):
    """paramex-train-demo as every rank of world, to the end; their outputs."""
    procs = [subprocess.Popen([DEMO_BIN, "--server", addr, "--rank", str(r), "--world",
                               str(world), "--steps", str(steps), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    outs = [p.communicate(timeout=WAIT_S)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o
    return outs
