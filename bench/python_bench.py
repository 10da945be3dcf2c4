#!/usr/bin/python3
"""paramex-basic-bench's measurement (bench/basic_bench.c) from Python: one worker declares
one f32 tensor (the same name, so the C run and this one share it) and times
Client.push_pull per step. Prints one JSON line with the medians. Run by bench/python.sh."""
import argparse
import json
import time

import numpy as np

import paramex


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--numel", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    with paramex.Client(a.server, rank=0, world_size=1) as c:
        name = f"bench.x{a.numel}"
        c.declare(name, a.numel, init=paramex.constant(1.0))
        params = np.zeros(a.numel, np.float32)
        grads = [(1e-3 * ((np.arange(a.numel) + g) % 97)).astype(np.float32) for g in range(3)]
        base = c.pull(0, {name: params})  # the tensor's version (the server is reused)
        out = {name: params}
        times = []
        for s in range(a.warmup + a.steps):
            g = {name: grads[s % 3]}
            t0 = time.perf_counter()
            c.push_pull(base + s, g, out)
            times.append(time.perf_counter() - t0)
        t = sorted(times[a.warmup:])
        print(json.dumps({"client": "python", "bytes": a.numel * 4, "steps": a.steps,
                          "step_p50_s": t[len(t) // 2], "step_p90_s": t[int(0.9 * (len(t) - 1))]}))


if __name__ == "__main__":
    main()
