"""A fake ``tensorrt`` for tests on machines without a GPU: the subset of the TensorRT Python API
that edgedp's engine builder (edgedp/deploy/tensorrt.py) and the runtime's TensorRT backend
(edgedp_runtime/trt_backend.py) use, modelled on TensorRT 8.5 or 10.x.

The flavour comes from ``FAKE_TENSORRT_VERSION`` (default "8.5.3.1"; e.g. "10.3.0").  The fake is
strict where the two versions differ, so code that takes the wrong branch fails:

- 10.x: ``create_network`` refuses the EXPLICIT_BATCH bit (deprecated and ignored by TensorRT 10;
  a warning there, an error here); ``IBuilderConfig`` has no ``max_workspace_size`` (removed).
- both: workspace via ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)``; ``BuilderFlag``
  FP16 / OBEY_PRECISION_CONSTRAINTS; per-layer ``precision`` and ``set_output_type`` only on
  float layers; a dynamic input without an optimization profile makes ``build_serialized_network``
  return None, as TensorRT does.

Builder side: the ONNX parser reads the file with ``onnx``; inputs / outputs keep the graph's
shapes (-1 for a dynamic dim); every node becomes a layer named after it with its outputs'
dtypes.  ``build_serialized_network`` returns :func:`engine_bytes` of the ONNX model plus a header
recording what was requested (flags, workspace, profile, pinned layers).

Runtime side: ``Runtime.deserialize_cuda_engine`` takes those bytes (None for anything else) and
runs the ONNX model with onnxruntime (CPU) through the name-based I/O API of TensorRT >= 8.5
(``num_io_tensors``, ``get_tensor_name/mode/dtype/shape``, ``set_input_shape``,
``set_tensor_address``, ``get_tensor_shape``, ``execute_async_v3``), with device memory from the
fake ``pycuda.driver`` (a dict).

``RECORD``: every builder call, for in-process assertions.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

__version__ = os.environ.get("FAKE_TENSORRT_VERSION", "8.5.3.1")
MAJOR = int(__version__.split(".")[0])
RECORD: list = []
MAGIC = b"FAKETRT\x01"


class DataType:
    FLOAT = "float32"
    HALF = "float16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"


float32, float16, int32, int64 = DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT64


def nptype(dtype):
    return {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}[dtype]


class Logger:
    ERROR, WARNING, INFO, VERBOSE = 1, 2, 3, 4

    def __init__(self, level=2):
        self.level = level

    def log(self, severity, message):
        RECORD.append(("log", severity, message))


class _Flags:
    def __init__(self, **members):
        self.__dict__.update(members)


NetworkDefinitionCreationFlag = _Flags(EXPLICIT_BATCH=0, STRONGLY_TYPED=1) if MAJOR >= 10 else _Flags(EXPLICIT_BATCH=0)
MemoryPoolType = _Flags(WORKSPACE="WORKSPACE")
BuilderFlag = _Flags(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS", PREFER_PRECISION_CONSTRAINTS="PREFER")
TensorIOMode = _Flags(INPUT="INPUT", OUTPUT="OUTPUT", NONE="NONE")

_ONNX_TYPES = {1: "float32", 10: "float16", 6: "int32", 7: "int64", 9: "bool"}


class _Tensor:
    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class _Layer:
    def __init__(self, name, op, outputs):
        self.name, self.type, self._outputs = name, op, outputs
        self._precision = None
        self.output_types = {}

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_output(self, i):
        return self._outputs[i]

    @property
    def precision(self):
        return self._precision or float32

    @precision.setter
    def precision(self, dtype):
        if any(t.dtype not in (float32, float16) for t in self._outputs):
            raise TypeError(f"fake tensorrt: layer {self.name} has non-float outputs, cannot set precision {dtype}")
        self._precision = dtype

    def set_output_type(self, i, dtype):
        if self._outputs[i].dtype not in (float32, float16):
            raise TypeError(f"fake tensorrt: output {i} of {self.name} is not float")
        self.output_types[i] = dtype


class INetworkDefinition:
    def __init__(self, flags):
        self.flags = flags
        self.inputs, self.outputs, self.layers = [], [], []
        self.model_bytes = b""

    @property
    def num_inputs(self):
        return len(self.inputs)

    @property
    def num_outputs(self):
        return len(self.outputs)

    @property
    def num_layers(self):
        return len(self.layers)

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]

    def get_layer(self, i):
        return self.layers[i]


class OnnxParser:
    def __init__(self, network, logger):
        self.network = network
        self.errors = []

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]

    def parse_from_file(self, path):
        import onnx

        RECORD.append(("parse", os.path.basename(path)))
        model = onnx.load(path)
        if os.environ.get("FAKE_TENSORRT_PARSE_ERROR"):
            self.errors.append(os.environ["FAKE_TENSORRT_PARSE_ERROR"])
            return False
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: _ONNX_TYPES.get(v.type.tensor_type.elem_type, "float32")
                 for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
        inits = {i.name for i in model.graph.initializer}

        def dims(value):
            return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

        net = self.network
        net.inputs = [_Tensor(v.name, dims(v), types.get(v.name, "float32")) for v in model.graph.input if v.name not in inits]
        net.outputs = [_Tensor(v.name, dims(v), types.get(v.name, "float32")) for v in model.graph.output]
        for node in model.graph.node:
            outs = [_Tensor(o, (), types.get(o, "float32")) for o in node.output]
            if MAJOR < 10:  # TensorRT 8.5 has no INT64 tensors: the parser casts them down
                for t in outs:
                    t.dtype = int32 if t.dtype == int64 else t.dtype
            net.layers.append(_Layer(node.name, node.op_type, outs))
        net.model_bytes = model.SerializeToString()
        return True


class IOptimizationProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, mn, opt, mx):
        RECORD.append(("profile", name, tuple(mn), tuple(opt), tuple(mx)))
        self.shapes[name] = [list(mn), list(opt), list(mx)]


class IBuilderConfig:
    def __init__(self):
        self.flags, self.pools, self.profiles = set(), {}, []

    def set_memory_pool_limit(self, pool, size):
        RECORD.append(("workspace", pool, size))
        self.pools[pool] = size

    def set_flag(self, flag):
        RECORD.append(("flag", flag))
        self.flags.add(flag)

    def add_optimization_profile(self, profile):
        RECORD.append(("add_profile",))
        self.profiles.append(profile)
        return len(self.profiles) - 1

    if MAJOR < 10:
        @property
        def max_workspace_size(self):  # deprecated in 8.x, gone in 10.x
            return self.pools.get("WORKSPACE", 0)

        @max_workspace_size.setter
        def max_workspace_size(self, size):
            RECORD.append(("deprecated max_workspace_size", size))
            self.pools["WORKSPACE"] = size


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        RECORD.append(("network", flags))
        if MAJOR >= 10 and flags & (1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
            raise TypeError("fake tensorrt 10: EXPLICIT_BATCH is deprecated (networks are always explicit batch)")
        if MAJOR < 10 and not flags & (1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
            raise TypeError("fake tensorrt 8.5: the ONNX parser needs an explicit-batch network")
        return INetworkDefinition(flags)

    def create_builder_config(self):
        return IBuilderConfig()

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        dynamic = [t.name for t in network.inputs if any(d < 0 for d in t.shape)]
        shapes = {}
        for p in config.profiles:
            shapes.update(p.shapes)
        if any(name not in shapes for name in dynamic):
            return None  # TensorRT: "Network has dynamic or shape inputs, but no optimization profile"
        pinned = [l.name for l in network.layers if l._precision == float32]
        if pinned and "OBEY_PRECISION_CONSTRAINTS" not in config.flags:
            RECORD.append(("warning", "layer precisions set without OBEY/PREFER_PRECISION_CONSTRAINTS are ignored"))
        header = {
            "version": __version__, "flags": sorted(config.flags), "workspace": config.pools.get("WORKSPACE"),
            "profile": shapes, "fp32_layers": pinned,
        }
        RECORD.append(("build", header))
        return engine_bytes(network.model_bytes, header)


def engine_bytes(model_bytes: bytes, header: dict | None = None) -> bytes:
    """A fake serialized engine: magic, header length, JSON header, the ONNX model."""
    head = json.dumps(header or {"version": __version__, "profile": {}}).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + model_bytes


def read_engine(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])[0]
    start = len(MAGIC) + 4
    return json.loads(data[start:start + n]), data[start + n:]


class Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data):
        if not bytes(data[: len(MAGIC)]) == MAGIC:
            return None
        header, model = read_engine(bytes(data))
        return ICudaEngine(header, model)


class ICudaEngine:
    def __init__(self, header, model):
        import onnxruntime as ort

        self.header = header
        self.sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.ins = [i.name for i in self.sess.get_inputs()]
        self.outs = [o.name for o in self.sess.get_outputs()]

    @property
    def num_io_tensors(self):
        return len(self.ins) + len(self.outs)

    def get_tensor_name(self, i):
        return (self.ins + self.outs)[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.ins else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return float32

    def get_tensor_shape(self, name):
        source = self.sess.get_inputs() if name in self.ins else self.sess.get_outputs()
        shape = next(t.shape for t in source if t.name == name)
        return tuple(d if isinstance(d, int) else -1 for d in shape)

    def create_execution_context(self):
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.results = engine, {}, {}, None

    def set_input_shape(self, name, shape):
        profile = self.engine.header.get("profile", {}).get(name)
        fixed = self.engine.get_tensor_shape(name)
        if profile:
            lo, _, hi = profile
            if not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                return False
        elif tuple(shape) != tuple(fixed):
            return False
        self.shapes[name] = tuple(shape)
        self.results = None
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        self.results = None
        return True

    def _run(self):
        from pycuda import driver

        if self.results is None:
            feeds = {}
            for name in self.engine.ins:
                shape = self.shapes[name]
                size = int(np.prod(shape)) * 4
                feeds[name] = np.frombuffer(bytes(driver.MEMORY[self.addresses[name]][:size]), np.float32).reshape(shape)
            self.results = dict(zip(self.engine.outs, self.engine.sess.run(self.engine.outs, feeds)))
        return self.results

    def get_tensor_shape(self, name):
        return self._run()[name].shape

    def execute_async_v3(self, stream_handle):
        from pycuda import driver

        for name, value in self._run().items():
            driver.memcpy_htod_async(self.addresses[name], value.astype(np.float32))
        return True
