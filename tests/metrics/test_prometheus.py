"""A real Prometheus (Debian's) scraping two paramex shards during a short training run
(the paramex Python client, two workers), queried through its HTTP API; the shipped
rules (deploy/prometheus) loaded into it and checked by promtool; every metric the
rules and the Grafana dashboard (deploy/grafana) use exists on a live server."""
import json
import os
import re
import socket
import subprocess
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest

from conftest import scrape
from pxserver import WAIT_S, wait_until

PROMETHEUS = os.environ.get("PROMETHEUS", "prometheus")
PROMTOOL = os.environ.get("PROMTOOL", "promtool")
DEPLOY = os.environ.get("PMX_DEPLOY", "")
RULES = os.path.join(DEPLOY, "prometheus", "paramex-rules.yml")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, tmp, targets):
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [RULES],
            "scrape_configs": [{"job_name": "paramex",
                                "static_configs": [{"targets": targets}]}]}))
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self.ready, "Prometheus to be ready")

    def ready(self):
        assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, q):
        """The instant vector of q: {shard (or instance): value}."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=WAIT_S) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return {s["metric"].get("shard", s["metric"].get("instance")): float(s["value"][1])
                for s in body["data"]["result"]}

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT_S)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def start(targets):
        p = Prometheus(tmp_path, targets)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def test_prometheus_scrapes_two_shards(server, prometheus):
    import paramex
    shards = [server("--workers", "2", "--shards", "2", "--shard", str(i), "--lr", "1",
                     "--chunk-bytes", "4K", "--metrics-listen", "127.0.0.1:0")
              for i in range(2)]
    prom = prometheus([f"127.0.0.1:{s.metrics_port}" for s in shards])
    # both scraped before the run: version 0
    wait_until(lambda: prom.query("paramex_version == 0") == {"0": 0, "1": 0},
               "the first scrapes of both shards")
    servers = ",".join(s.addr for s in shards)
    n, steps = 64 * 1024, 4  # 64 chunks of 4 KiB: both shards hold some
    clients = [paramex.Client(servers, rank=r, world_size=2) for r in range(2)]
    for c in clients:
        c.declare("w", n)
    out = [np.empty(n, np.float32) for _ in range(2)]
    for step in range(steps):
        threads = [threading.Thread(target=c.push_pull, args=(step, {"w": np.ones(n, np.float32)},
                                                              {"w": o}))
                   for c, o in zip(clients, out)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        # the next step once Prometheus saw this one on both shards: rates get 2+ points
        want = {"0": step + 1.0, "1": step + 1.0}
        wait_until(lambda: prom.query("paramex_version") == want, f"a scrape of version {step + 1}")
    for c in clients:
        c.close()
    assert (out[0] == -steps).all()
    assert prom.query('up{job="paramex"}') == {f"127.0.0.1:{s.metrics_port}": 1 for s in shards}
    assert prom.query("min_over_time(paramex_version[10m])") == {"0": 0, "1": 0}
    rates = prom.query("rate(paramex_push_bytes_total[1m])")
    assert set(rates) == {"0", "1"} and all(v > 0 for v in rates.values()), rates
    # the shipped recording rules run on these series
    wait_until(lambda: len(prom.query("paramex:push_bytes_per_second:rate1m")) == 2,
               "the recording rule paramex:push_bytes_per_second:rate1m")
    # two workers, 4 steps, every element pushed by both: 2 * 4 * n * 4 bytes over both shards
    total = prom.query("sum(paramex_push_bytes_total)")
    assert list(total.values()) == [2 * steps * n * 4.0]


def test_shipped_rules_pass_promtool():
    for args in (["check", "rules", RULES],
                 ["test", "rules", os.path.join(DEPLOY, "prometheus", "paramex-rules.test.yml")],
                 ["check", "config", os.path.join(DEPLOY, "prometheus", "prometheus.yml")]):
        r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=WAIT_S)
        assert r.returncode == 0, r.stdout + r.stderr


def metric_names(exprs):
    """The paramex_* and process_* names a list of PromQL expressions use."""
    names = set()
    for e in exprs:
        names.update(re.findall(r"\b((?:paramex|process)_[a-z0-9_]+)\b", e))
    return names


def test_rules_and_dashboard_use_only_exported_metrics(server):
    srv = server("--workers", "1", "--metrics-listen", "127.0.0.1:0")
    samples, text = scrape(srv)
    exported = {name for name, _ in samples}  # and the families without samples yet
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        exported.add(name)
        if kind == "histogram":
            exported.update(name + s for s in ("_bucket", "_sum", "_count"))
    rules = open(RULES).read()
    exprs = re.findall(r"expr:\s*(?:>\s*)?(.+?)(?=\n\s*(?:for|labels|annotations|- record|- alert|$))",
                       rules, re.S)
    dash = json.load(open(os.path.join(DEPLOY, "grafana", "paramex.json")))
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = metric_names(exprs)
    assert len(used) >= 15, used
    missing = sorted(used - exported)
    assert not missing, f"used by deploy/ but not exported: {missing}"
