"""TensorRT side of the export: engine building (what TensorRT 8.5's ONNX parser takes is
:mod:`edgedp.deploy.trt_rules`).

Importable without TensorRT: ``tensorrt`` is imported only by :func:`check_engine_support` and
:func:`build_engine`, which stop with one :class:`~edgedp.errors.EdgedpError` line naming what
is missing (TensorRT itself: JetPack on a Jetson, or ``pip install tensorrt`` from NVIDIA's index
on an x86 machine; or a CUDA GPU).

TensorRT Python API used, checked against the 8.5 and 10.x references (both supported):
``Builder(logger)``; ``create_network(flags)`` with ``1 << EXPLICIT_BATCH`` on 8.x and 0 on 10.x
(where the flag is deprecated and every network is explicit batch); ``OnnxParser(network,
logger).parse_from_file``, ``num_errors``, ``get_error``; ``create_builder_config()``;
``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` (8.4+; ``max_workspace_size`` is
deprecated in 8.x and gone in 10.x); ``set_flag(BuilderFlag.FP16)`` and, for layers pinned to
FP32, ``layer.precision = float32``, ``layer.set_output_type(i, float32)`` with
``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` (8.2+; 10.x keeps it); ``create_optimization_profile``
/ ``set_shape`` / ``add_optimization_profile``; ``build_serialized_network`` (None on failure).

An engine is specific to the GPU, TensorRT version and (for dynamic inputs) optimization profile
it was built with: build it on the device (``export/build_engines.sh`` does the same with
``trtexec``).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import EdgedpError, InputError, OutputError

__all__ = [
    "build_engine",
    "check_engine_support",
    "cuda_device_count",
    "import_tensorrt",
    "tensorrt_major",
]


_TRT_MISSING = (
    "TensorRT is not installed (import tensorrt failed): on a Jetson install JetPack (5.1 = TensorRT 8.5, "
    "6.x = 8.6/10.x) and use its python3; on x86 'pip install tensorrt' from NVIDIA's package index (NVIDIA's TensorRT install guide)"
    ", or build on the device with export/build_engines.sh (trtexec)"
)
_GPU_MISSING = (
    "no CUDA GPU found (libcuda could not be loaded or reports 0 devices): TensorRT engines are built on the "
    "GPU that runs them (a Jetson or an NVIDIA GPU with its driver)"
)

# --------------------------------------------------------------------------------------------
# Engine building (TensorRT Python API)
# --------------------------------------------------------------------------------------------


def import_tensorrt():
    """The ``tensorrt`` module, or one EdgedpError line saying how to get it."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, device-side dependency
    except ImportError:
        raise EdgedpError(_TRT_MISSING) from None
    return trt


def tensorrt_major(trt) -> int:
    """Major version of a ``tensorrt`` module (8 for "8.5.3.1", 10 for "10.3.0"); 0 if unknown."""
    try:
        return int(str(getattr(trt, "__version__", "0")).split(".")[0])
    except ValueError:
        return 0


def cuda_device_count() -> int:
    """CUDA devices reported by the driver API (libcuda), without torch (a Jetson's pip torch may
    be a CPU build while the GPU is there)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except AttributeError:
            return 0
    return 0


def check_engine_support():
    """Stop (one EdgedpError line) unless TensorRT imports and a CUDA GPU is present; returns the
    ``tensorrt`` module.  ``edgedp export --format engine`` calls it before writing anything."""
    trt = import_tensorrt()
    if cuda_device_count() < 1:
        raise EdgedpError(_GPU_MISSING)
    major = tensorrt_major(trt)
    if 0 < major < 8:
        raise EdgedpError(f"TensorRT {trt.__version__} is too old: edgedp builds engines with TensorRT 8.5 or newer")
    return trt


def _dims(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def _check_profile(name: str, net_shape: tuple[int, ...], prof) -> tuple[tuple[int, ...], ...]:
    try:
        mn, opt, mx = (tuple(int(d) for d in s) for s in prof)
    except (TypeError, ValueError) as err:
        raise InputError(f"dynamic_shapes[{name!r}] must be (min, opt, max) shapes, got {prof!r}") from err
    for s in (mn, opt, mx):
        if len(s) != len(net_shape):
            raise InputError(f"dynamic_shapes[{name!r}]: shape {s} has rank {len(s)}, input {name} {net_shape}")
        for d, n in zip(s, net_shape):
            if n >= 0 and d != n:
                raise InputError(f"dynamic_shapes[{name!r}]: {s} does not match the fixed dims of {net_shape}")
    if not all(a <= b <= c for a, b, c in zip(mn, opt, mx)) or min(mn) < 1:
        raise InputError(f"dynamic_shapes[{name!r}]: need 1 <= min <= opt <= max per dim, got {mn} {opt} {mx}")
    return mn, opt, mx


def pin_fp32(trt, network, names: Sequence[str]) -> list[str]:
    """Set ``precision`` and every output type to float32 on the layers whose name starts with
    one of ``names`` (ONNX node names: the parser names a node's layer after it) and whose
    outputs are all float32 (shape arithmetic on int tensors is left alone).  Returns the names
    of the pinned layers."""
    pinned = []
    prefixes = tuple(str(n) for n in names)
    if not prefixes:
        return pinned
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not str(layer.name).startswith(prefixes):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(t.dtype != trt.float32 for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(str(layer.name))
    return pinned


def build_engine(
    onnx_path,
    engine_path,
    *,
    half: bool = False,
    workspace_mib: int = 1024,
    dynamic_shapes: Mapping[str, Sequence[Sequence[int]]] | None = None,
    fp32_layers: Sequence[str] = (),
) -> dict:
    """Build a serialized TensorRT engine from ``onnx_path`` and write it to ``engine_path``.

    ``half``: also allow FP16 kernels (``BuilderFlag.FP16``; inputs / outputs stay float32);
    ``fp32_layers``: ONNX node names (prefixes) whose layers an FP16 build keeps in FP32
    (:func:`pin_fp32`, with ``OBEY_PRECISION_CONSTRAINTS``; the gd graph's standardization).
    ``workspace_mib``: limit of the builder's scratch memory pool.  ``dynamic_shapes``: ``{input
    name: (min, opt, max)}`` full shapes for every input with a dynamic dim (``gd.onnx``'s
    ``pair``: e.g. ``{"pair": ((1, 2, 256, 256), (1, 2, 1008, 1344), (1, 2, 2016, 2688))}``,
    multiples of the sidecar's ``multiple_of``); one optimization profile is built from them.

    Raises :class:`EdgedpError` (one line) when TensorRT or a CUDA GPU is missing, when the ONNX
    parser rejects the graph, or when the build fails; :class:`InputError` for bad arguments.
    Returns ``{"engine": path, "tensorrt": version, "fp32_layers": pinned layer names}``.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such ONNX file")
    if int(workspace_mib) < 1:
        raise InputError(f"workspace_mib must be >= 1, got {workspace_mib}")
    trt = check_engine_support()
    if not engine_path.parent.is_dir():
        raise OutputError(f"{engine_path.parent}: output folder does not exist")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise EdgedpError("TensorRT could not create a builder (no usable CUDA GPU or driver mismatch)")
    major = tensorrt_major(trt)
    # 8.x: the ONNX parser needs an explicit-batch network; 10.x: always explicit, flag deprecated.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors)]
        raise EdgedpError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    limit = int(workspace_mib) << 20
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT >= 8.4
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, limit)
    else:  # pragma: no cover - TensorRT < 8.4 (refused by check_engine_support below 8)
        config.max_workspace_size = limit
    pinned: list[str] = []
    if half:
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = pin_fp32(trt, network, fp32_layers)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    dynamic_shapes = dict(dynamic_shapes or {})
    inputs = {network.get_input(i).name: _dims(network.get_input(i).shape) for i in range(network.num_inputs)}
    unknown = sorted(set(dynamic_shapes) - set(inputs))
    if unknown:
        raise InputError(f"dynamic_shapes names {unknown}, the graph's inputs are {sorted(inputs)}")
    dyn = {name: shape for name, shape in inputs.items() if any(d < 0 for d in shape)}
    if dyn:
        missing = sorted(set(dyn) - set(dynamic_shapes))
        if missing:
            raise InputError(
                f"{onnx_path}: input(s) {missing} have dynamic dims {[dyn[n] for n in missing]}: pass dynamic_shapes"
                " {name: (min, opt, max)}"
            )
        profile = builder.create_optimization_profile()
        for name, shape in dyn.items():
            profile.set_shape(name, *_check_profile(name, shape, dynamic_shapes[name]))
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgedpError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    fd, tmp = tempfile.mkstemp(prefix=engine_path.name + ".", suffix=".tmp", dir=engine_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(serialized))
        os.replace(tmp, engine_path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{engine_path}: cannot write: {err.strerror or err}") from err
    return {"engine": engine_path, "tensorrt": str(getattr(trt, "__version__", "?")), "fp32_layers": pinned}
