"""The server's optimizers and learning-rate schedules over real pushes, each bit for bit
against a numpy reference written from the formulas (PyTorch's; README, Semantics):
--lr-schedule step / cosine with warm-up / linear-warmup (the lr computed in Python
floats and rounded once to float32), --optimizer nesterov with weight decay, adagrad and
rmsprop; the schedule and the optimizer state across a restart from a checkpoint; a
checkpoint of one optimizer's state refused by another; and the start-up errors of bad
flags."""
import math
import subprocess

import numpy as np
import pytest

import paramex
from pxserver import SERVER_BIN, WAIT_S
from conftest import wait_until

N = 257


def grad(rank, step):
    return np.random.default_rng(7000 + 100 * step + rank).standard_normal(N).astype(np.float32)


def lr_at(kind, step, lr, gamma=0.1, step_size=0, total=0, lr_min=0.0, warmup=0):
    if kind == "step":
        v = lr * gamma ** (step // step_size)
    elif kind == "cosine":
        t = min(step, total) / total
        v = lr_min + (lr - lr_min) * (1.0 + math.cos(math.pi * t)) / 2.0
    else:
        v = lr
    if warmup and step + 1 < warmup:
        v = v * (step + 1) / warmup
    return np.float32(v)


def reference(steps, world, **sched):
    """The server's step (server/backend/optimizer.c) with lr(s): every operation in f32."""
    p = np.zeros(N, np.float32)
    for s in range(steps):
        acc = grad(0, s)
        for r in range(1, world):
            acc = acc + grad(r, s)
        p = p - lr_at(step=s, **sched) * (acc / np.float32(world))
    return p


def run(c2, steps, start=0):
    """Both ranks' push_pull per step (rank 1 async, then rank 0); rank 0's parameters."""
    out = np.empty(N, np.float32)
    for s in range(start, steps):
        op = c2[1].push_async(s, {"w": grad(1, s)})
        c2[0].push_pull(s, {"w": grad(0, s)}, {"w": out})
        op.wait()
    return out


def train(srv, steps):
    """Two workers through steps on a fresh server; rank 0's parameters."""
    c2 = [paramex.Client(srv.addr, rank=r, world_size=2) for r in range(2)]
    for c in c2:
        c.declare("w", N)
    got = run(c2, steps)
    for c in c2:
        c.close()
    return got


@pytest.mark.parametrize("flags,sched", [
    (("--lr-schedule", "step", "--lr-step-size", "3", "--lr-gamma", "0.5"),
     dict(kind="step", gamma=0.5, step_size=3)),
    (("--lr-schedule", "cosine", "--lr-total-steps", "6", "--lr-min", "0.01",
      "--lr-warmup-steps", "3"),
     dict(kind="cosine", total=6, lr_min=0.01, warmup=3)),
    (("--lr-schedule", "linear-warmup", "--lr-warmup-steps", "4"),
     dict(kind="linear-warmup", warmup=4)),
])
def test_schedule_bit_exact(server, flags, sched):
    got = train(server("--workers", "2", "--lr", "0.3", *flags), 8)
    want = reference(8, 2, lr=0.3, **sched)
    assert got.tobytes() == want.tobytes()
    # and not what a constant lr gives
    assert got.tobytes() != reference(8, 2, lr=0.3, kind="constant").tobytes()


def crash_after_checkpoint_3(server, args, ckpt):
    """4 steps on a server started with args, the server SIGKILLed once its checkpoint of
    version 3 is complete; then a restart on its port and both workers resumed: their
    clients and the step to go on from."""
    srv = server(*args)
    c2 = [paramex.Client(srv.addr, rank=r, world_size=2) for r in range(2)]
    for c in c2:
        c.declare("w", N)
    run(c2, 4)
    for c in c2:
        c.close(abort=True)
    wait_until((ckpt / "ckpt-00000000000000000003.safetensors").exists, "the checkpoint")
    srv.kill()
    return srv


def resume(server, args, srv):
    srv2 = server(*args, listen=srv.addr)
    c2 = [paramex.Client(srv2.addr, rank=r, world_size=2) for r in range(2)]
    out = np.empty(N, np.float32)
    for c in c2:
        c.declare("w", N)
    steps = [c.resume({"w": out}) for c in c2]
    assert steps == [3, 3]
    return c2, 3


def finish(c2, start, steps):
    got = run(c2, steps, start=start)
    for c in c2:
        c.close()
    return got


def test_schedule_survives_a_restart(server, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ("--workers", "2", "--lr", "0.3", "--lr-schedule", "step", "--lr-step-size", "2",
            "--lr-gamma", "0.5", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "3")
    c2, start = resume(server, args, crash_after_checkpoint_3(server, args, ckpt))
    got = finish(c2, start, 8)
    assert got.tobytes() == reference(8, 2, lr=0.3, kind="step", gamma=0.5,
                                      step_size=2).tobytes()


def test_nesterov_with_weight_decay_and_a_schedule(server):
    """--optimizer nesterov: buf = mu * buf + d (d on the first step), p -= lr(s) * (d + mu *
    buf), d = g + wd * p: PyTorch's SGD(nesterov=True), every operation in f32."""
    got = train(server("--workers", "2", "--lr", "0.2", "--momentum", "0.9", "--weight-decay",
                       "0.01", "--optimizer", "nesterov", "--lr-schedule", "step",
                       "--lr-step-size", "3", "--lr-gamma", "0.5"), 7)
    p, buf = np.zeros(N, np.float32), None
    mu, wd = np.float32(0.9), np.float32(0.01)
    for s in range(7):
        g = (grad(0, s) + grad(1, s)) / np.float32(2)
        d = g + wd * p
        buf = d if buf is None else mu * buf + d
        p = p - lr_at("step", s, 0.2, gamma=0.5, step_size=3) * (d + mu * buf)
    assert got.tobytes() == p.tobytes()


@pytest.mark.parametrize("flags,says", [
    (("--lr-schedule", "exp"), "--lr-schedule: 'exp' is not constant, step, cosine or linear-warmup"),
    (("--lr-schedule", "step"), "--lr-schedule step needs --lr-step-size N (N >= 1)"),
    (("--lr-schedule", "cosine", "--lr-total-steps", "5", "--lr-min", "1"),
     "--lr-min 1: want 0 <= lr-min <= --lr 0.01"),
    (("--optimizer", "nesterov"), "--optimizer nesterov needs --momentum F (F > 0)"),
    (("--optimizer", "adam"),
     "--optimizer: 'adam' is not sgd, momentum, nesterov, adagrad or rmsprop"),
    (("--optimizer", "adagrad", "--momentum", "0.9"),
     "--momentum is for sgd, momentum and nesterov, not --optimizer adagrad"),
])
def test_bad_schedule_flags(flags, says):
    r = subprocess.run([SERVER_BIN, "--listen", "127.0.0.1:0", *flags], capture_output=True,
                       text=True, timeout=WAIT_S)
    assert r.returncode == 2 and r.stderr.strip() == f"paramex-server: {says}"


def adaptive_reference(kind, steps, lr, eps, alpha=0.99, wd=0.0):
    """optimizer.h's adagrad / rmsprop in f32: v = g*g (first) or v + g*g, resp.
    (1-alpha)*(g*g) or alpha*v + (1-alpha)*(g*g); p -= lr * (g / (sqrt(v) + eps))."""
    p, v = np.zeros(N, np.float32), None
    om, a32 = np.float32(1) - np.float32(alpha), np.float32(alpha)
    for s in range(steps):
        g = (grad(0, s) + grad(1, s)) / np.float32(2)
        if wd:
            g = g + np.float32(wd) * p
        sq = g * g
        if kind == "adagrad":
            v = sq if v is None else v + sq
        else:
            v = om * sq if v is None else a32 * v + om * sq
        p = p - np.float32(lr) * (g / (np.sqrt(v) + np.float32(eps)))
    return p


@pytest.mark.parametrize("kind,flags,eps,alpha,wd", [
    ("adagrad", (), 1e-10, 0.99, 0.0),
    ("adagrad", ("--weight-decay", "0.01"), 1e-10, 0.99, 0.01),
    ("rmsprop", ("--alpha", "0.9", "--eps", "1e-6"), 1e-6, 0.9, 0.0),
])
def test_adagrad_rmsprop_bit_exact(server, kind, flags, eps, alpha, wd):
    got = train(server("--workers", "2", "--lr", "0.05", "--optimizer", kind, *flags), 6)
    want = adaptive_reference(kind, 6, 0.05, eps, alpha, wd)
    assert got.tobytes() == want.tobytes()


def test_optimizer_state_restores_and_kinds_do_not_mix(server, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ("--workers", "2", "--lr", "0.05", "--optimizer", "rmsprop",
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "3")
    srv = crash_after_checkpoint_3(server, args, ckpt)
    # a momentum server does not take an rmsprop average for its momentum
    r = subprocess.run([SERVER_BIN, "--listen", "127.0.0.1:0", "--workers", "2", "--momentum",
                        "0.9", "--checkpoint-dir", str(ckpt)], capture_output=True, text=True,
                       timeout=WAIT_S)
    assert r.returncode == 1
    assert "it holds rmsprop state, and this server's optimizer keeps momentum state" in r.stderr
    c2, start = resume(server, args, srv)
    got = finish(c2, start, 7)
    assert got.tobytes() == adaptive_reference("rmsprop", 7, 0.05, 1e-8).tobytes()
