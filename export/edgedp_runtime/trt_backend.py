"""TensorRT backend of ``edgedp-runtime`` (``--backend trt``): serialized ``.engine`` files.

Needs numpy, the TensorRT Python bindings (JetPack ships them: ``python3 -c "import tensorrt"``;
TensorRT >= 8.5 for the name-based I/O API: ``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``, the same calls in 10.x) and one
CUDA binding: cuda-python (preferred: ``pip install cuda-python`` matching your CUDA) or pycuda
(its primary context, ``pycuda.autoprimaryctx``, as NVIDIA's samples do; ``autoinit`` would
create a second context beside TensorRT's).  With ``--cuda auto`` a cuda-python that is installed
but unusable (wrong CUDA major version, no driver) falls back to pycuda.

Engines are built on the device itself (an engine is tied to its GPU and TensorRT version) with
``build_engines.sh EXPORT`` (trtexec) or ``edgedp export SCENE --format engine``; they sit beside
the ONNX files: EXPORT/render.engine, EXPORT/refocus.engine, EXPORT/gd.engine.  For gd.engine the
input shape is set per call and must lie inside the engine's optimization profile.
"""

from __future__ import annotations

import numpy as np

from . import schema
from .errors import RunnerError


def _import_trt():
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as err:
        raise RunnerError(
            f"TensorRT Python bindings not found ({err}); on a Jetson they come with JetPack "
            f"(python3-libnvinfer), elsewhere pip install tensorrt; or use --backend ort"
        ) from None
    return trt


# --- CUDA bindings: a tiny common interface (alloc, free, h2d, d2h, stream, sync) ------------
class _CudaPython:
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart  # noqa: PLC0415  (cuda-python >= 12.6)
        except ImportError:
            from cuda import cudart  # noqa: PLC0415
        self.rt = cudart
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result, what):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RunnerError(f"CUDA error in {what}: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def h2d(self, ptr: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self.stream), "memcpy h2d")

    def d2h(self, array: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self.stream), "memcpy d2h")

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def sync(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


class _PyCuda:
    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as cuda  # noqa: PLC0415

        try:
            import pycuda.autoprimaryctx  # noqa: F401, PLC0415  (pycuda >= 2021.1)
        except ImportError as err:
            if getattr(err, "name", None) != "pycuda.autoprimaryctx":
                raise
            raise ImportError("pycuda has no autoprimaryctx (needs pycuda >= 2021.1): pip install -U pycuda") from None

        self.cuda = cuda
        self.stream = cuda.Stream()
        self._allocs: dict[int, object] = {}

    def alloc(self, nbytes: int) -> int:
        mem = self.cuda.mem_alloc(max(nbytes, 1))
        self._allocs[int(mem)] = mem
        return int(mem)

    def free(self, ptr: int) -> None:
        mem = self._allocs.pop(ptr, None)
        if mem is not None:
            mem.free()

    def h2d(self, ptr: int, array: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(ptr, array, self.stream)

    def d2h(self, array: np.ndarray, ptr: int) -> None:
        self.cuda.memcpy_dtoh_async(array, ptr, self.stream)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def sync(self) -> None:
        self.stream.synchronize()


def make_cuda(choice: str):
    """The CUDA binding: cuda-python preferred, then pycuda (``choice`` = auto/cuda-python/pycuda).
    With ``auto`` any failure of cuda-python (not installed, or installed but unusable: a CUDA
    error at start-up, a binding for another CUDA major version) falls through to pycuda; the
    one-line error names why each binding failed."""
    order = {"auto": (_CudaPython, _PyCuda), "cuda-python": (_CudaPython,), "pycuda": (_PyCuda,)}[choice]
    errors = []
    for cls in order:
        try:
            return cls()
        except Exception as err:  # noqa: BLE001 - ImportError, RunnerError (CUDA error), driver failures
            text = str(err).splitlines()[0] if str(err) else ""
            errors.append(f"{cls.name}: {text or type(err).__name__}")
    raise RunnerError(
        "no usable CUDA Python binding (" + "; ".join(errors) + "); pip install cuda-python (the major "
        "version of your CUDA) or pycuda"
    )


class TrtModel:
    """One engine: name-based I/O (TensorRT >= 8.5: set_input_shape / set_tensor_address / execute_async_v3)."""

    def __init__(self, trt, engine, cuda, graph_name: str) -> None:
        self.trt, self.engine, self.cuda, self.graph_name = trt, engine, cuda, graph_name
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RunnerError(f"{graph_name}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) != mode]
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (ptr, nbytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, -1))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.alloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def __call__(self, feeds: dict) -> dict:
        trt, ctx = self.trt, self.context
        for name in self.input_names:
            if name not in feeds:
                raise RunnerError(f"{self.graph_name}: engine input '{name}' not supplied")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            # np.asarray keeps 0-d scalars 0-d (ascontiguousarray makes them (1,): refocus focus / aperture)
            array = np.asarray(feeds[name], dtype=dtype, order="C")
            if not ctx.set_input_shape(name, tuple(array.shape)):
                raise RunnerError(
                    f"{self.graph_name}: input '{name}' shape {tuple(array.shape)} is outside the engine's "
                    f"profile (engine shape {tuple(self.engine.get_tensor_shape(name))}); rebuild the engine "
                    f"with a profile that covers it"
                )
            ptr = self._buffer(name, array.nbytes)
            self.cuda.h2d(ptr, array)
            ctx.set_tensor_address(name, ptr)
            feeds[name] = array  # keep the host array alive until sync
        results = {}
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RunnerError(f"{self.graph_name}: output '{name}' shape {shape} unresolved")
            array = np.empty(shape, dtype=np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))))
            ctx.set_tensor_address(name, self._buffer(name, array.nbytes))
            results[name] = array
        if not ctx.execute_async_v3(self.cuda.stream_handle):
            raise RunnerError(f"{self.graph_name}: TensorRT execution failed")
        for name, array in results.items():
            self.cuda.d2h(array, self._buffers[name][0])
        self.cuda.sync()
        return {k: v.astype(np.float32, copy=False) for k, v in results.items()}


class TrtBackend:
    def __init__(self, cuda_choice: str) -> None:
        self.trt = _import_trt()
        self.cuda = make_cuda(cuda_choice)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        print(f"tensorrt {self.trt.__version__}, CUDA binding {self.cuda.name}")

    def load(self, graph: schema.GraphInfo, input_shape=None) -> TrtModel:
        path = schema.graph_file(
            graph, schema.ENGINE_SUFFIX, "build it on this device: build_engines.sh EXPORT_DIR (or edgedp export --format engine)"
        )
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise RunnerError(
                f"{path}: TensorRT {self.trt.__version__} cannot deserialize it (built with another TensorRT "
                f"version or GPU?); rebuild it on this device"
            )
        if not hasattr(engine, "num_io_tensors"):
            raise RunnerError(f"TensorRT {self.trt.__version__} is too old; edgedp-runtime --backend trt needs >= 8.5")
        print(f"engine: {path.name} ({graph.name})")
        return TrtModel(self.trt, engine, self.cuda, graph.name)
