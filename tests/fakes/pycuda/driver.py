"""Fake ``pycuda.driver``: allocations are bytearrays in MEMORY keyed by a fake device pointer."""

import numpy as np

MEMORY = {}
_next = [4096]


class _Mem:
    def __init__(self, n):
        self.ptr = _next[0]
        _next[0] += n + 256
        MEMORY[self.ptr] = bytearray(n)

    def __int__(self):
        return self.ptr

    def free(self):
        MEMORY.pop(self.ptr, None)


def mem_alloc(n):
    return _Mem(n)


def memcpy_htod_async(ptr, array, stream=None):
    data = np.ascontiguousarray(array).tobytes()
    MEMORY[int(ptr)][: len(data)] = data


def memcpy_dtoh_async(array, ptr, stream=None):
    array[...] = np.frombuffer(bytes(MEMORY[int(ptr)][: array.nbytes]), array.dtype).reshape(array.shape)


class Stream:
    handle = 1

    def synchronize(self):
        pass
