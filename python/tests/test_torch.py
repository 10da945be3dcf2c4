"""paramex.torch over a real server: the model's parameters equal the server's after every
step and the SGD of the averaged gradients bit for bit, CPU parameters are the pulled
buffers themselves (zero copy), state_dict round trips, bad models are refused; and the
shipped digits example over paramex-launch (4 workers) reaches the accuracy of the same
training in one process, two runs ending bit-identical."""
import os
import re
import subprocess
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import paramex  # noqa: E402
import paramex.torch  # noqa: E402

LR = 0.5


def tiny(seed=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def test_parameters_follow_the_server(server):
    srv = server("--workers", "2", "--lr", str(LR))
    steps = 5
    grads = {0: [], 1: []}
    first = {n: p.detach().numpy().copy() for n, p in tiny().named_parameters()}
    errors = []

    models = [tiny(), tiny()]  # here: torch's seed is one for every thread

    def worker(rank):
        try:
            with paramex.Client(srv.addr, rank=rank, world_size=2) as c:
                model = models[rank]
                tr = paramex.torch.DistributedTrainer(model, c, prefix="m.")
                assert tr.resume() == 0
                for q in tr.params:  # zero copy: the parameter's storage is the buffer
                    assert q.in_place and q.p.data_ptr() == q.out.ctypes.data
                x = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank))
                for s in range(steps):
                    tr.zero_grad()
                    model(x[:, :] * (s + 1)).square().mean().backward()
                    grads[rank].append({f"m.{n}": p.grad.numpy().copy()
                                        for n, p in model.named_parameters()})
                    assert tr.step() == s + 1
                    for n, p in model.named_parameters():  # the server's own values
                        fresh = np.empty(tuple(p.shape), np.float32)
                        c.pull(s + 1, {f"m.{n}": fresh})
                        assert fresh.tobytes() == p.detach().numpy().tobytes()
                sd = tr.state_dict()
                assert sd == {"step": steps, "version": steps,
                              "tensors": [f"m.{n}" for n, _ in model.named_parameters()]}
                tr.load_state_dict(sd)
                with pytest.raises(paramex.InvalidArgument, match="other tensors"):
                    tr.load_state_dict({"step": 1, "tensors": ["x"]})
                if rank == 0:
                    final.update({f"m.{n}": p.detach().numpy().copy()
                                  for n, p in model.named_parameters()})
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    final = {}
    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    # the server's SGD of the averaged gradients, in f32, from the initial values
    for n, p0 in first.items():
        p = p0.copy()
        for s in range(steps):
            g = (grads[0][s][f"m.{n}"] + grads[1][s][f"m.{n}"]) / np.float32(2)
            p = p - np.float32(LR) * g
        assert p.tobytes() == final[f"m.{n}"].tobytes(), n


def test_refusals(server):
    srv = server("--workers", "1")
    with paramex.Client(srv.addr, rank=0, world_size=1) as c:
        with pytest.raises(paramex.InvalidArgument, match="float64"):
            paramex.torch.DistributedTrainer(torch.nn.Linear(2, 2).double(), c)
        with pytest.raises(paramex.InvalidArgument, match="no parameters"):
            paramex.torch.DistributedTrainer(torch.nn.ReLU(), c)
        # another worker's model with other initial values: the server's values win
        paramex.torch.DistributedTrainer(tiny(1), c, prefix="a.")
        with pytest.raises(paramex.FailedPrecondition):
            paramex.torch.DistributedTrainer(tiny(2), c, prefix="a.")


def digits(*args, workers=None, server_bin=None):
    """Runs train_digits.py (through paramex-launch when workers); its output."""
    script = os.environ["PMX_DIGITS"]
    if workers:
        cmd = [os.environ["PMX_LAUNCH_BIN"], "--server-bin", server_bin, "--shards", "1",
               "--workers", str(workers), "--lr", "0.1", "--log-level", "warn", "--",
               "/usr/bin/python3", script, *args]
    else:
        cmd = ["/usr/bin/python3", script, "--single", "--lr", "0.1", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def results(out):
    return re.findall(r"final test accuracy ([0-9.]+) params sha256=([0-9a-f]+)", out)


def test_digits_four_workers_like_one_process():
    from pxserver import SERVER_BIN
    steps = ["--steps", "150"]
    single = results(digits(*steps))
    assert len(single) == 1
    runs = [results(digits(*steps, workers=4, server_bin=SERVER_BIN)) for _ in range(2)]
    assert all(len(r) == 4 for r in runs), runs
    assert len(set(runs[0] + runs[1])) == 1, runs  # every worker, both runs: the same bits
    acc, ref = float(runs[0][0][0]), float(single[0][0])
    assert acc >= 0.85, acc
    assert abs(acc - ref) <= 0.005, (acc, ref)
