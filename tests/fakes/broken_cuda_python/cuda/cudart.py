"""Fake ``cuda.cudart`` (pre-12.6 cuda-python layout): calls return (error, value) tuples."""


class cudaError_t(int):
    def __repr__(self):
        return "cudaError_t.cudaErrorInsufficientDriver"

    __str__ = __repr__


def cudaStreamCreate():
    return (cudaError_t(35), None)
