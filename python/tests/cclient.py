"""libparamex called directly through ctypes: the C client the extension is compared
with (no code of paramex._paramex runs here)."""
import ctypes

import numpy as np

from conftest import LIBPARAMEX

FROM_ENV = 0xFFFFFFFF


class CClient:
    def __init__(self, addr, rank, world):
        self.lib = lib = ctypes.CDLL(LIBPARAMEX)
        lib.pmx_last_error.restype = ctypes.c_char_p
        self.c = ctypes.c_void_p()
        self.check(lib.pmx_connect(addr.encode(), None, ctypes.byref(self.c)), "connect")
        self.check(lib.pmx_join(self.c, ctypes.c_uint32(rank), ctypes.c_uint32(world), None),
                   "join")

    def check(self, st, what):
        if st != 0:
            raise RuntimeError(f"C client {what}: {st}: {self.lib.pmx_last_error().decode()}")

    def declare(self, name, shape):
        t = ctypes.c_void_p()
        dims = (ctypes.c_uint64 * len(shape))(*shape)
        self.check(self.lib.pmx_declare(self.c, name.encode(), 1, dims, ctypes.c_size_t(len(shape)),
                                        None, None, ctypes.byref(t)), "declare")
        return t

    def push_pull(self, step, t, grad, out):
        assert grad.dtype == np.float32 and out.dtype == np.float32
        ts = (ctypes.c_void_p * 1)(t)
        src = (ctypes.c_void_p * 1)(grad.ctypes.data)
        dst = (ctypes.c_void_p * 1)(out.ctypes.data)
        self.check(self.lib.pmx_push_pull(self.c, ctypes.c_uint64(step), ctypes.c_size_t(1), ts,
                                          src, dst, None), "push_pull")

    def close(self):
        self.lib.pmx_client_destroy(self.c)
