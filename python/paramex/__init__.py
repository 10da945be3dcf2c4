"""paramex for Python: trainers push gradients and pull parameters from Python.

A thin layer over libparamex (the C client, through the ``paramex._paramex`` extension):
the protocol, retries, diff pulls and compression are the C library's. Arrays are numpy
arrays or anything with the buffer protocol, C-contiguous; they are read (pushes) and
written (pulls) in place, never copied in Python. Every network wait releases the GIL.

    import numpy as np, paramex
    with paramex.Client("127.0.0.1:50051", rank=0, world_size=1) as c:
        w = np.zeros(1000, np.float32)
        g = np.ones(1000, np.float32)
        c.declare("w", w)                       # or c.declare("w", (1000,), init=...)
        step = c.resume({"w": w})               # where the job is (0 at its start)
        while step < 10:
            c.push_pull(step, {"w": g}, {"w": w})   # version step + 1 is now in w
            step += 1

Errors raise :class:`Error` subclasses named after the status (``paramex.Aborted`` when
the server restarted from a checkpoint: call :meth:`Client.resume`).
"""

from . import _paramex

__all__ = [
    "Client", "Tensor", "Op", "Error", "env_rank", "zeros", "constant", "normal", "uniform",
    "__version__",
]

__version__ = _paramex.library_version

Tensor = _paramex.Tensor
Op = _paramex.Op


# ---- errors ---------------------------------------------------------------------------

class Error(Exception):
    """A failed paramex call: ``status`` (the code, equal to gRPC's where it is one),
    ``code`` (its name, e.g. ``'invalid argument'``) and ``message`` (the server's or the
    library's one-line message, also ``str(error)``)."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = _paramex.strerror(status)


def _error(name, status, doc, *bases):
    cls = type(name, (Error,) + bases, {"__doc__": doc, "__module__": __name__})
    _by_status[status] = cls
    return cls


_by_status = {}
Cancelled = _error("Cancelled", 1, "The call was cancelled (e.g. the client was closed).")
Unknown = _error("Unknown", 2, "An error the server did not classify.")
InvalidArgument = _error("InvalidArgument", 3, "A bad argument: shape, dtype, length, name, a "
                         "read-only or non-contiguous array (also a ValueError).", ValueError)
DeadlineExceeded = _error("DeadlineExceeded", 4, "The timeout ran out.", TimeoutError)
NotFound = _error("NotFound", 5, "An unknown tensor.", KeyError)
AlreadyExists = _error("AlreadyExists", 6, "Already exists.")
PermissionDenied = _error("PermissionDenied", 7, "Permission denied.")
ResourceExhausted = _error("ResourceExhausted", 8, "A server limit was reached.")
FailedPrecondition = _error("FailedPrecondition", 9, "Not joined, a stale incarnation, a "
                            "shape conflict, a closed client...")
OutOfRange = _error("OutOfRange", 11, "E.g. a step ahead of the server's version.")
Unimplemented = _error("Unimplemented", 12, "Not implemented by this server.")
Internal = _error("Internal", 13, "An internal error.")
Unavailable = _error("Unavailable", 14, "The server cannot be reached or is shutting down.",
                     ConnectionError)
DataLoss = _error("DataLoss", 15, "A checksum did not match.")
Unauthenticated = _error("Unauthenticated", 16, "A missing or wrong token or certificate.")
NoMemory = _error("NoMemory", 100, "Out of memory.", MemoryError)
ProtocolError = _error("ProtocolError", 101, "The server sent something malformed.")


class Aborted(Error):
    """The server restarted (from a checkpoint at ``version``, when its message names it,
    else ``None``): call :meth:`Client.resume`, which returns the step to compute next, and
    go on from there (steps pushed before are acknowledged as duplicates)."""

    def __init__(self, message, status=10):
        super().__init__(message, status)
        import re
        m = re.search(r"at version (\d+)", message)
        self.version = int(m.group(1)) if m else None


_by_status[10] = Aborted
_paramex._set_errors(Error, _by_status)


# ---- initializers and dtypes -------------------------------------------------------------

def zeros():
    """The initializer of zeros (the default)."""
    return (0, 0.0, 0.0, 0)


def constant(value):
    """Every element ``value``."""
    return (1, float(value), 0.0, 0)


def normal(mean=0.0, std=1.0, seed=0):
    """Normal(mean, std), generated on the server from ``seed`` (the same on every run)."""
    return (2, float(mean), float(std), int(seed))


def uniform(low=0.0, high=1.0, seed=0):
    """Uniform on [low, high), generated on the server from ``seed``."""
    return (3, float(low), float(high), int(seed))


_dtypes = {"float32": _paramex.FLOAT32, "f32": _paramex.FLOAT32,
           "bfloat16": _paramex.BFLOAT16, "bf16": _paramex.BFLOAT16,
           "float16": _paramex.FLOAT16, "f16": _paramex.FLOAT16}


def _dtype(d):
    if d is None:
        return 0
    name = d if isinstance(d, str) else str(getattr(d, "name", d)).replace("torch.", "")
    try:
        return _dtypes[name]
    except KeyError:
        raise InvalidArgument(f"dtype {d!r} is not float32, bfloat16 or float16", 3) from None


def env_rank():
    """``(rank, world_size)`` as the environment gives them (``PMX_RANK`` /
    ``PMX_WORLD_SIZE``, else the job's launcher: ps-lite ``DMLC_*``, ``TF_CONFIG``, torchrun
    ``RANK``/``WORLD_SIZE``, MPI, Slurm, a Kubernetes Indexed Job), each ``None`` where
    nothing says. Two conventions that disagree raise :class:`InvalidArgument`."""
    return _paramex.env_rank()


# ---- the client --------------------------------------------------------------------------

class Client(_paramex.Client):
    """A worker's connection to paramex, joined as ``rank`` of ``world_size``.

    ``servers``: ``"HOST:PORT"``, a list of shard addresses in shard order, or ``None``
    for ``PMX_SERVERS`` (what ``paramex-launch`` sets) or ``TF_CONFIG``'s ``cluster.ps``.
    ``rank`` / ``world_size`` ``None``: from the environment (:func:`env_rank`).
    Options (keyword only): ``timeout`` (seconds per call, pull waits included; default
    60), ``connect_timeout`` (how long joining waits for the server; 30),
    ``retry_timeout`` (how long a call retries while the server is unavailable; 120),
    ``compression`` (``'auto'``, ``'on'``, ``'off'``: diff pulls), ``tls_ca``,
    ``tls_cert``, ``tls_key``, ``tls_server_name``, ``token``, ``token_file`` (each
    ``None`` falls back to its ``PMX_*`` variable, as in the C library).

    Joining waits for the server (without the GIL). ``close()`` (or leaving a ``with``
    block, or dropping the last reference) says Leave to the server: the worker is
    reported finished. ``close(abort=True)`` does not: it is reported dead after the
    server's ``--worker-timeout``. A close waits for the pushes still pending (their
    ``Op.wait()`` then returns their real result) and cancels the pending pulls
    (``Cancelled``); an abort cancels both. ``set_push_compression`` and ``resume`` refuse
    (``FailedPrecondition``) while an ``Op`` is pending or another thread is in a call.
    """

    def __init__(self, servers=None, rank=None, world_size=None, **options):
        super().__init__(servers, rank, world_size, **options)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(abort=exc_type is not None and not issubclass(exc_type, Error))
        return False

    def __repr__(self):
        state = "closed" if self.closed else f"rank {self.rank} of {self.world_size}"
        return f"<paramex.Client {state}, {len(self.tensors)} tensor(s)>"

    def declare(self, name, array_or_shape, dtype=None, init=None):
        """Declares tensor ``name`` (a str) and returns its :class:`Tensor`.

        ``array_or_shape``: an array of initial values (float32, float16, or uint16 words
        with ``dtype='bfloat16'``; its shape is the tensor's), or a shape (an int or a
        tuple) with ``dtype`` (default ``'float32'``) and ``init`` (:func:`zeros`,
        :func:`constant`, :func:`normal`, :func:`uniform`; generated on the server). The
        first declaration creates the tensor; later ones, from any worker, must agree and
        get the same tensor."""
        return super().declare(name, array_or_shape, _dtype(dtype), init=init)

    # push, pull, push_pull, push_async, pull_async, resume, stats, tensor and close are the
    # extension's own methods (no Python frame on the data path), documented there.
