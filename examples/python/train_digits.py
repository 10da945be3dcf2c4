#!/usr/bin/python3
"""Trains a small CNN on scikit-learn's digits (8x8 images of 0-9, shipped with
python3-sklearn: nothing is downloaded) through paramex, as one worker of a job:

    paramex-launch --shards 1 --workers 4 --lr 0.1 -- \\
        /usr/bin/python3 examples/python/train_digits.py --steps 300

Each step takes the next global batch (--batch examples, the same sequence on every
worker), and worker R of W computes the gradient of its slice of it (W slices of equal
size); the server averages the W gradients and applies SGD with its --lr. That is the
gradient of the whole batch, so the run matches --single (the same model, batches and
steps trained in this one process with torch.optim.SGD, no paramex) up to float rounding.
Every worker prints its test accuracy and a checksum of its parameters: two runs with the
same --seed end bit-identical. PMX_SERVERS / PMX_RANK / PMX_WORLD_SIZE (or the job's own
launcher's variables) say where the servers are and which worker this is.
"""
import argparse
import hashlib
import time

import numpy as np
import torch
from sklearn.datasets import load_digits


def model_of(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 10))


def data(seed):
    """The digits, scaled to [0, 1], split 1437 / 360 after a fixed shuffle."""
    d = load_digits()
    x = torch.from_numpy((d.data / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    x, y = x[order], y[order]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def batch(train, step, size, seed):
    """The global batch of step: a fixed sequence of epochs, each a fresh permutation."""
    n = len(train[1])
    per_epoch = n // size
    epoch, k = divmod(step, per_epoch)
    idx = np.random.default_rng([seed, epoch]).permutation(n)[k * size:(k + 1) * size]
    idx = torch.from_numpy(idx)
    return train[0][idx], train[1][idx]


def accuracy(model, test):
    with torch.no_grad():
        return (model(test[0]).argmax(1) == test[1]).float().mean().item()


def checksum(model):
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64, help="global batch (a multiple of W)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--single", action="store_true",
                    help="train in this process alone (the reference), no paramex")
    ap.add_argument("--lr", type=float, default=0.1, help="with --single: SGD's lr (else "
                    "the server's --lr)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    train, test = data(args.seed)
    model = model_of(args.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    if args.single:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        for s in range(args.steps):
            x, y = batch(train, s, args.batch, args.seed)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        print(f"single: final test accuracy {accuracy(model, test):.4f} "
              f"params sha256={checksum(model)}")
        return

    import paramex
    import paramex.torch
    with paramex.Client() as client:
        r, w = client.rank, client.world_size
        if args.batch % w:
            ap.error(f"--batch {args.batch} is not a multiple of the {w} workers")
        share = args.batch // w
        trainer = paramex.torch.DistributedTrainer(model, client)
        step = trainer.resume()
        compute = exchange = 0.0
        while step < args.steps:
            t0 = time.perf_counter()
            x, y = batch(train, step, args.batch, args.seed)
            trainer.zero_grad()
            loss = loss_fn(model(x[r * share:(r + 1) * share]), y[r * share:(r + 1) * share])
            loss.backward()
            t1 = time.perf_counter()
            try:
                trainer.step()
                step += 1
            except paramex.Aborted:  # the server restarted from a checkpoint: go back there
                step = trainer.resume()
            exchange += time.perf_counter() - t1
            compute += t1 - t0
            if r == 0 and step % 50 == 0:
                print(f"step {step}: loss {loss.item():.4f}", flush=True)
        n = max(args.steps, 1)
        print(f"rank {r}: final test accuracy {accuracy(model, test):.4f} "
              f"params sha256={checksum(model)}; per step: compute {1e3 * compute / n:.2f} ms, "
              f"paramex {1e3 * exchange / n:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
