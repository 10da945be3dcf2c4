#!/usr/bin/python3
"""Scrape time of /metrics on a server holding many tensors (issue 16's goal: <= 50 ms at
10,000 tensors): starts paramex-server --metrics-listen, declares N tensors through the
paramex Python package (one worker; a push of step 0 gives every chunk a version), then
times SCRAPES GETs of /metrics and prints one JSON line (p50, p90, max, page bytes).

    PYTHONPATH=build/python bench/metrics_scrape.py [--build build] [--tensors 10000]
"""
import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np

import paramex


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--tensors", type=int, default=10000)
    ap.add_argument("--numel", type=int, default=256, help="elements per tensor")
    ap.add_argument("--scrapes", type=int, default=50)
    a = ap.parse_args()
    srv = subprocess.Popen([f"{a.build}/server/paramex-server", "--listen", "127.0.0.1:0",
                            "--workers", "1", "--metrics-listen", "127.0.0.1:0",
                            "--log-level", "warn"], stdout=subprocess.PIPE, text=True)
    try:
        addr = srv.stdout.readline().split()[-1]
        url = srv.stdout.readline().split()[-1]
        if not re.match(r"http://127\.0\.0\.1:\d+/metrics$", url):
            sys.exit(f"metrics_scrape: no metrics readiness line ({url!r})")
        with paramex.Client(addr, rank=0, world_size=1) as c:
            names = [f"layer{i}.weight" for i in range(a.tensors)]
            for n in names:
                c.declare(n, a.numel)
            g = np.ones(a.numel, np.float32)
            c.push(0, {n: g for n in names})
            times, size = [], 0
            for _ in range(a.scrapes):
                t = time.perf_counter()
                with urllib.request.urlopen(url, timeout=60) as r:
                    size = len(r.read())
                times.append(time.perf_counter() - t)
        times.sort()
        print(json.dumps({"tensors": a.tensors, "scrapes": a.scrapes, "page_bytes": size,
                          "p50_ms": round(times[len(times) // 2] * 1e3, 3),
                          "p90_ms": round(times[int(len(times) * 0.9)] * 1e3, 3),
                          "max_ms": round(times[-1] * 1e3, 3)}))
    finally:
        srv.terminate()
        srv.wait(60)


if __name__ == "__main__":
    main()
