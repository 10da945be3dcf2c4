"""paramex.Client over real paramex-server processes: parameters bit-exact against an
independent numpy reference of the server's SGD and against the C client (libparamex
through ctypes) pushing beside it, zero-copy pulls, the bf16 view, async operations, GIL
release, the environment, and each error as its exception class with nothing changed."""
import os
import threading

import numpy as np
import pytest

import paramex
from cclient import CClient
from conftest import wait_until

N = 1000


def grad(rank, step, n=N):
    return np.random.default_rng(1000 * step + rank).standard_normal(n).astype(np.float32)


def sgd_reference(p0, world, steps, lr):
    """The server's step (server/backend/optimizer.c): the f32 sum in rank order, divided
    by the worker count, p - lr * g, every operation in f32."""
    p = p0.copy()
    for s in range(steps):
        acc = grad(0, s)
        for r in range(1, world):
            acc = acc + grad(r, s)
        p = p - np.float32(lr) * (acc / np.float32(world))
    return p


def test_push_pull_bit_exact_with_c_client(server):
    srv = server("--workers", "2", "--lr", "0.5")
    steps = 6
    c_out = np.zeros(N, np.float32)
    errors = []

    def c_worker():  # rank 1: libparamex itself
        try:
            cc = CClient(srv.addr, 1, 2)
            t = cc.declare("w", (N,))
            for s in range(steps):
                cc.push_pull(s, t, grad(1, s), c_out)
            cc.close()
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    th = threading.Thread(target=c_worker)
    th.start()
    with paramex.Client(srv.addr, rank=0, world_size=2) as c:
        w = np.zeros(N, np.float32)
        c.declare("w", (N,))
        for s in range(steps):
            assert c.push_pull(s, {"w": grad(0, s)}, {"w": w}) == s + 1
        th.join(120)
        assert not th.is_alive() and not errors, errors
        want = sgd_reference(np.zeros(N, np.float32), 2, steps, 0.5)
        assert w.tobytes() == want.tobytes()
        assert c_out.tobytes() == w.tobytes()
        # a fresh pull of the last version, into a new array: the same bits
        again = np.empty(N, np.float32)
        assert c.pull(steps, {"w": again}) == steps
        assert again.tobytes() == want.tobytes()


def test_push_then_pull_and_initializers(server):
    srv = server("--workers", "1", "--lr", "0.25")
    with paramex.Client(srv.addr, rank=0, world_size=1) as c:
        init = np.arange(12, dtype=np.float32).reshape(3, 4)
        t = c.declare("m", init)
        assert (t.name, t.shape, t.dtype, t.numel, t.nbytes) == ("m", (3, 4), "float32", 12, 48)
        assert c.tensor("m") is t and c.tensors["m"] is t
        assert c.declare("m", init) is t  # again: the same tensor
        n = c.declare("n", 64, init=paramex.normal(0.0, 1.0, seed=7))
        assert n.shape == (64,)
        out = np.empty((3, 4), np.float32)
        assert c.pull(0, {"m": out}) == 0
        assert out.tobytes() == init.tobytes()
        g = np.full((3, 4), 2.0, np.float32)
        c.push(0, {t: g})
        assert c.pull(1, {"m": out}) == 1
        assert out.tobytes() == (init - np.float32(0.25) * g).tobytes()
        # the server's seeded initializer: the same values on a second client
        a = np.empty(64, np.float32)
        c.pull(0, {"n": a})
        with paramex.Client(srv.addr, rank=0, world_size=1) as c2:
            c2.declare("n", 64, init=paramex.normal(0.0, 1.0, seed=7))
            b = np.empty(64, np.float32)
            c2.pull(0, {"n": b})
        assert a.tobytes() == b.tobytes() and a.std() > 0.5
        st = c.stats()
        assert st["push_chunks"] >= 1 and st["pull_raw_bytes"] >= 3 * 48


def test_pull_writes_in_place(server):
    """Zero copy: the pull writes the caller's memory, which a bytearray and a numpy view
    of it both see."""
    srv = server("--workers", "1", "--lr", "1")
    with paramex.Client(srv.addr, rank=0, world_size=1) as c:
        c.declare("w", N, init=paramex.constant(3.0))
        raw = bytearray(4 * N)
        arr = np.frombuffer(raw, np.float32)
        addr = arr.ctypes.data
        c.pull(0, {"w": arr})
        assert arr.ctypes.data == addr
        assert np.frombuffer(bytes(raw), np.float32)[0] == 3.0  # the bytearray itself changed
        mv = memoryview(raw).cast("f")
        c.push(0, {"w": np.ones(N, np.float32)})
        c.pull(1, {"w": mv})
        assert arr[0] == 2.0 and arr[-1] == 2.0  # written through mv into raw, seen by arr


def test_bf16_view(server):
    srv = server("--workers", "1")
    with paramex.Client(srv.addr, rank=0, world_size=1) as c:
        c.declare("w", N, init=paramex.uniform(-3, 3, seed=1))
        f = np.empty(N, np.float32)
        c.pull(0, {"w": f})
        b = np.empty(N, np.uint16)
        assert c.pull(0, {"w": b}, view="bfloat16") == 0
        u = f.view(np.uint32).astype(np.uint64)
        want = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # nearest even
        assert b.tobytes() == want.tobytes()
        with pytest.raises(paramex.InvalidArgument, match="bf16 view"):
            c.pull(0, {"w": f}, view="bfloat16")  # f32 memory for bf16 words
        with pytest.raises(paramex.InvalidArgument, match="view"):
            c.pull(0, {"w": b}, view="int8")


def test_async(server):
    srv = server("--workers", "1", "--lr", "1")
    with paramex.Client(srv.addr, rank=0, world_size=1) as c:
        c.declare("w", N)
        w = np.empty(N, np.float32)
        pull = c.pull_async(1, {"w": w})  # waits on the server for version 1
        push = c.push_async(0, {"w": np.ones(N, np.float32)})
        assert push.wait() is None
        assert pull.wait() == 1 and w[0] == -1.0
        assert pull.wait() == 1  # again: the same result
        # the op holds its arrays: a bytearray cannot be resized under it
        raw = bytearray(4 * N)
        op = c.pull_async(2, {"w": memoryview(raw).cast("f")})
        with pytest.raises(BufferError):
            raw.extend(b"1234")
        c.push(1, {"w": np.ones(N, np.float32)})
        assert op.wait() == 2
        raw.extend(b"1234")  # released after the wait
        del op
        # dropped without a wait: it is waited for, and the array stays valid
        keep = np.empty(N, np.float32)
        c.pull_async(2, {"w": keep})
        assert keep[0] == -2.0


def test_gil_released_during_pull(server):
    """Rank 0's pull waits for rank 1's push, which this thread makes while rank 0's thread
    is inside the pull: possible only when the pull released the GIL."""
    srv = server("--workers", "2")
    c0 = paramex.Client(srv.addr, rank=0, world_size=2, timeout=120)
    c1 = paramex.Client(srv.addr, rank=1, world_size=2)
    for c in (c0, c1):
        c.declare("w", N)
    inside, done, result = threading.Event(), threading.Event(), []

    def puller():
        w = np.empty(N, np.float32)
        c0.push(0, {"w": grad(0, 0)})
        inside.set()
        result.append(c0.pull(1, {"w": w}))
        done.set()

    th = threading.Thread(target=puller)
    th.start()
    wait_until(inside.is_set, "rank 0 to start its pull")
    spins = 0
    while spins < 200000:  # Python work while rank 0 waits in libparamex
        spins += 1
    assert not done.is_set()  # the pull cannot finish before rank 1 pushed
    c1.push(0, {"w": grad(1, 0)})
    th.join(120)
    assert result == [1]
    c0.close()
    c1.close()


def test_environment(server, monkeypatch):
    srv = server("--workers", "2")
    monkeypatch.setenv("PMX_SERVERS", srv.addr)
    monkeypatch.setenv("PMX_RANK", "1")
    monkeypatch.setenv("PMX_WORLD_SIZE", "2")
    assert paramex.env_rank() == (1, 2)
    with paramex.Client() as c:
        assert (c.rank, c.world_size) == (1, 2)
    monkeypatch.delenv("PMX_RANK")
    monkeypatch.delenv("PMX_WORLD_SIZE")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, '
                                    '"task": {"type": "worker", "index": 1}}')
    with pytest.raises(paramex.InvalidArgument, match="1 by TF_CONFIG but 0 by RANK"):
        paramex.env_rank()
    with pytest.raises(paramex.InvalidArgument, match="TF_CONFIG but 0 by RANK"):
        paramex.Client()


def test_argument_errors_change_nothing(server):
    srv = server("--workers", "1", "--lr", "1")
    with paramex.Client(srv.addr, rank=0, world_size=1) as c:
        t = c.declare("w", (4, 8))
        w = np.zeros((4, 8), np.float32)
        cases = [
            ({"w": np.zeros((4, 8), np.float64)}, paramex.InvalidArgument, "'d' elements"),
            ({"w": np.zeros((8, 8), np.float32)[::2]}, paramex.InvalidArgument,
             "not C-contiguous"),
            ({"w": np.zeros((8, 4), np.float32)}, paramex.InvalidArgument, r"shape is \(8, 4\)"),
            ({"w": np.zeros(31, np.float32)}, paramex.InvalidArgument, "or flat, 32 elements"),
            ({"nope": w}, paramex.InvalidArgument, "'nope' was not declared"),
            ({3: w}, TypeError, "named by a str"),
            ({"w": [0.0] * 32}, TypeError, "not an array"),
            ([w], TypeError, "want a dict"),
            ({}, paramex.InvalidArgument, "no tensors"),
        ]
        for grads, exc, says in cases:
            with pytest.raises(exc, match=says):
                c.push(0, grads)
        ro = np.zeros((4, 8), np.float32)
        ro.setflags(write=False)
        with pytest.raises(paramex.InvalidArgument, match="read-only"):
            c.pull(0, {"w": ro})
        with pytest.raises(paramex.InvalidArgument, match="read-only"):
            c.pull(0, {"w": b"\0" * 128})
        with pytest.raises(TypeError, match="a str"):
            c.declare(b"w", 4)
        with pytest.raises(paramex.InvalidArgument, match="'w' is given twice"):
            c.push(0, {"w": w, t: w})
        with pytest.raises(RuntimeError, match="called twice"):
            c.__init__(srv.addr, rank=0, world_size=1)
        with pytest.raises(paramex.FailedPrecondition, match="closed"):
            paramex._paramex.Client.__new__(paramex._paramex.Client).tensors
        with pytest.raises(paramex.InvalidArgument, match="step: want an int"):
            c.push(-1, {"w": w})
        with pytest.raises(paramex.InvalidArgument, match="same tensors"):
            c.declare("v", 8)
            c.push_pull(0, {"w": w}, {"v": np.zeros(8, np.float32)})
        # nothing reached the server: version 0 still holds zeros, and step 0 is open
        out = np.ones((4, 8), np.float32)
        assert c.pull(0, {t: out}) == 0 and not out.any()
        c.push(0, {"w": np.ones((4, 8), np.float32)})
        assert c.pull(1, {"w": out}) == 1 and (out == -1).all()


def test_server_errors(server, tmp_path):
    srv = server("--workers", "1")
    with paramex.Client(srv.addr, rank=0, world_size=1, timeout=1) as c:
        c.declare("w", 8)
        with pytest.raises(paramex.FailedPrecondition, match=r"exists as f32 \[8\], not f32 \[9\]") as e:
            c.declare("w", 9)
        assert e.value.status == 9 and e.value.code == "failed precondition"
        with pytest.raises(paramex.OutOfRange, match="ahead of version"):
            c.push(3, {"w": np.zeros(8, np.float32)})
        with pytest.raises(paramex.DeadlineExceeded):
            c.pull(5, {"w": np.zeros(8, np.float32)})  # nobody pushes steps 0..4
    with pytest.raises(paramex.FailedPrecondition, match="world_size 2 does not match the "
                       "server's --workers 1"):
        paramex.Client(srv.addr, rank=0, world_size=2)
    with pytest.raises(paramex.InvalidArgument, match="rank"):
        paramex.Client(srv.addr, rank=-1, world_size=1)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    guarded = server("--workers", "1", "--token-file", str(token))
    with pytest.raises(paramex.Unauthenticated):
        paramex.Client(guarded.addr, rank=0, world_size=1, token="wrong")
    with paramex.Client(guarded.addr, rank=0, world_size=1, token_file=str(token)) as c:
        c.declare("w", 8)
    free = server("--workers", "1")
    port = free.port
    free.stop()
    with pytest.raises(paramex.Unavailable):
        paramex.Client(f"127.0.0.1:{port}", rank=0, world_size=1, connect_timeout=0.5)
    # every status has its class; unknown ones are Error
    for status, cls in paramex._by_status.items():
        assert issubclass(cls, paramex.Error) and cls("m", status).status == status


def test_closed_client(server):
    srv = server("--workers", "1")
    c = paramex.Client(srv.addr, rank=0, world_size=1)
    t = c.declare("w", 8)
    op = c.pull_async(1, {"w": np.zeros(8, np.float32)})
    c.close()
    assert c.closed
    with pytest.raises(paramex.Cancelled, match="closed"):
        op.wait()
    for call in (lambda: c.push(0, {"w": np.zeros(8, np.float32)}),
                 lambda: c.pull(0, {"w": np.zeros(8, np.float32)}),
                 lambda: c.declare("v", 8), c.stats,
                 lambda: t.set_push_compression("zstd")):
        with pytest.raises(paramex.FailedPrecondition, match="closed"):
            call()
    assert t.numel == 8  # its facts stay readable
    c.close()  # twice is harmless


def test_close_waits_for_pushes_and_cancels_pulls(server):
    srv = server("--workers", "1", "--lr", "1")
    c = paramex.Client(srv.addr, rank=0, world_size=1)
    t = c.declare("w", 8)
    push = c.push_async(0, {"w": np.ones(8, np.float32)})
    held = bytearray(32)
    pull = c.pull_async(5, {"w": memoryview(held).cast("f")})  # nobody pushes step 4
    for call, what in ((lambda: c.resume({"w": np.zeros(8, np.float32)}), "resume"),
                       (lambda: t.set_push_compression("zstd"), "set_push_compression")):
        with pytest.raises(paramex.FailedPrecondition, match=what + ": operations of this "
                           "client are in flight"):
            call()
    c.close()
    assert push.wait() is None  # applied: its real result, not Cancelled
    with pytest.raises(paramex.Cancelled, match="closed before the pull was waited for"):
        pull.wait()
    held.extend(b"1234")  # its array was released by the close
    with paramex.Client(srv.addr, rank=0, world_size=1) as d:
        d.declare("w", 8)
        w = np.zeros(8, np.float32)
        assert d.pull(1, {"w": w}) == 1 and (w == -1).all()
    # an abort cancels a pending push too
    e = paramex.Client(srv.addr, rank=0, world_size=1)
    e.declare("w", 8)
    op = e.push_async(1, {"w": np.ones(8, np.float32)})
    e.close(abort=True)
    with pytest.raises(paramex.Cancelled, match="aborted before the push"):
        op.wait()


class Closer(str):
    """A tensor name whose hash runs Python code: it closes the client, or empties the
    dict being read."""
    action = None

    def __hash__(self):
        if Closer.action:
            Closer.action()
        return str.__hash__(self)

    def __eq__(self, other):
        return str.__eq__(self, other)


def test_python_code_in_the_arguments(server):
    srv = server("--workers", "1", "--lr", "1")
    c = paramex.Client(srv.addr, rank=0, world_size=1)
    c.declare("w", 8)
    w = np.zeros(8, np.float32)
    grads = {Closer("w"): np.ones(8, np.float32)}
    Closer.action = grads.clear  # the call reads a snapshot of the dict
    c.push(0, grads)
    assert c.pull(1, {"w": w}) == 1 and (w == -1).all()
    c.close()
    # a name's hash closes the client after the method's first check: refused, not a crash
    calls = (lambda c: c.push(1, {Closer("w"): w}), lambda c: c.pull(1, {Closer("w"): w}),
             lambda c: c.push_pull(1, {"w": w}, {Closer("w"): w}),
             lambda c: c.push_async(1, {Closer("w"): w}),
             lambda c: c.pull_async(1, {Closer("w"): w}),
             lambda c: c.resume({Closer("w"): w}))
    for call in calls:
        c = paramex.Client(srv.addr, rank=0, world_size=1)
        c.declare("w", 8)
        Closer.action = c.close
        with pytest.raises(paramex.FailedPrecondition, match="the client (was|is) closed"):
            call(c)
        Closer.action = None
        assert c.closed
    c = paramex.Client(srv.addr, rank=0, world_size=1)
    c.declare("w", 8)
    assert c.pull(1, {"w": w}) == 1 and (w == -1).all()  # none of them pushed
    c.close()


def test_initializer_range(server):
    srv = server("--workers", "1")
    with paramex.Client(srv.addr, rank=0, world_size=1) as c:
        for init, says in (((7, 0.0, 0.0, 0), "not a paramex initializer"),
                           ((1, 1e39, 0.0, 0), "not a paramex initializer"),
                           ((2, 0.0, float("nan"), 0), "not a paramex initializer"),
                           ((2, 0.0, 1.0, -1), "seed is an int in 0..2\\*\\*64-1"),
                           ((2, 0.0, 1.0, 2**64), "seed is an int"),
                           ((2, 0.0, 1.0, 1.5), "seed is an int")):
            with pytest.raises(paramex.InvalidArgument, match=says):
                c.declare("w", 8, init=init)
        assert c.tensors == {}  # nothing declared
        c.declare("w", 8, init=paramex.normal(0.0, 1.0, seed=2**64 - 1))


def test_aborted_after_restart_and_resume(server, tmp_path):
    """A server killed and restarted from its checkpoint: the next step raises Aborted
    naming the version; resume() pulls it and returns the step to compute next."""
    ckpt = tmp_path / "ckpt"
    args = ("--workers", "1", "--lr", "1", "--checkpoint-dir", str(ckpt),
            "--checkpoint-every", "2")
    srv = server(*args)
    with paramex.Client(srv.addr, rank=0, world_size=1, retry_timeout=60) as c:
        c.declare("w", 8)
        w = np.empty(8, np.float32)
        for s in range(3):
            c.push_pull(s, {"w": np.ones(8, np.float32)}, {"w": w})
        assert w[0] == -3.0
        done = ckpt / "ckpt-00000000000000000002.safetensors"  # renamed when complete
        wait_until(done.exists, "the checkpoint of version 2")
        srv.kill()
        server(*args, listen=srv.addr)
        with pytest.raises(paramex.Aborted) as e:
            c.push_pull(3, {"w": np.ones(8, np.float32)}, {"w": w})
        assert e.value.status == 10
        assert e.value.version == 2, str(e.value)  # the server's message names it
        step = c.resume({"w": w})
        assert step == 2 and w[0] == -2.0
        c.push_pull(step, {"w": np.ones(8, np.float32)}, {"w": w})
        assert w[0] == -3.0


def test_version():
    assert paramex.__version__.count(".") == 2
    assert os.path.basename(paramex._paramex.__file__).startswith("_paramex")
