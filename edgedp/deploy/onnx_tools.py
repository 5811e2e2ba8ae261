"""ONNX graph handling shared by every exported graph (render, refocus, gd): the one node walker,
op-type, opset and attribute reader, constant folding, saving (external data), ONNX Runtime
sessions, the comparison with a reference, and the FP16 emulation that verifies ``--half`` engines.
What TensorRT 8.5's parser takes is :mod:`edgedp.deploy.trt_rules`; the last step of every export
(fold, check, metadata, save) is :mod:`edgedp.deploy.onnx_finalize`.

Why constant folding: PyTorch's TorchScript exporter computes e.g. ``Pad`` amounts at run time
(``Constant -> ConstantOfShape -> Concat -> Reshape(-1, 2) -> Slice -> Transpose -> Reshape ->
Cast``), the pattern behind TensorRT 8.4/8.5's "IShuffleLayer applied to shape tensor must have 0
or 1 reshape dimensions" (NVIDIA/TensorRT issues 2088, 2618).  :func:`fold_constants` evaluates
every node whose inputs are all constants with onnx's own reference evaluator
(``onnx.reference``) and stores the result as an initializer, so each such parameter reaches the
parser as a plain constant (by construction, no extra dependency).

Why an own FP16 emulation (:func:`emulate_fp16`): the float16 converters of onnxconverter-common
/ ``onnxruntime.transformers.float16`` keep the shape arithmetic in its original types and ONNX
Runtime's CPU runs ops it has no FP16 kernel for in FP32 behind casts, so they miss what an FP16
placement in TensorRT hits: converted that way, the old ``gd.onnx`` (a Bessel factor from n = 2HW/s^2
= 677,376 > 65,504 at 1008x1344) ran without a NaN, while TensorRT FP16 turns every output into
NaN.  Rounding every float tensor of the graph to FP16 reproduces it (all outputs NaN).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgedp_runtime import schema
from edgedp_runtime.quiet import ort_load

from ..errors import EdgedpError, InputError, OutputError

__all__ = [
    "constant_names",
    "default_opset",
    "emulate_fp16",
    "fold_constants",
    "graph_verification",
    "iter_nodes",
    "load_model",
    "node_attribute",
    "op_types",
    "output_errors",
    "external_locations",
    "require_onnx",
    "save_graph",
]

#: Tensors of at least this many bytes go to a graph's external data file (smaller ones, shape
#: parameters among them, stay in the graph, where TensorRT's parser reads them as constants).
EXTERNAL_TENSOR_MIN_BYTES = 1024



def require_onnx():
    try:
        import onnx  # noqa: PLC0415
    except ImportError:
        raise OutputError("the onnx package is missing: pip install 'edgedp[export]' (CPU) or 'edgedp[gpu]'") from None
    return onnx


def load_model(source) -> Any:
    """An ``onnx.ModelProto`` from a path (InputError when missing) or a model (returned as is)."""
    onnx = require_onnx()
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends: one line, not a traceback
        raise InputError(" ".join(f"{path}: not a readable ONNX graph ({type(err).__name__}: {err})".split())[:300]) from None


def iter_nodes(graph) -> Iterator[Any]:
    """Every node of ``graph`` and of its subgraphs (If / Loop / Scan bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from iter_nodes(sub)


def op_types(source) -> set[str]:
    """Distinct op types of a model or file (``domain::Op`` for non-default domains)."""
    model = load_model(source)
    return {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in iter_nodes(model.graph)}


def default_opset(source) -> int:
    """The default-domain (``ai.onnx``) opset of a model or file; -1 when it has none."""
    model = load_model(source)
    versions = [int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else -1


def constant_names(graph) -> set[str]:
    """Names of the graph's constant tensors: initializers and outputs of Constant nodes."""
    names = {init.name for init in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def node_attribute(node, name: str, default=None):
    """The value of a node's attribute ``name`` (string, int, float or ints), ``default`` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            if attr.type == attr.STRING:
                return attr.s.decode()
            if attr.type == attr.INT:
                return int(attr.i)
            if attr.type == attr.FLOAT:
                return float(attr.f)
            if attr.type == attr.INTS:
                return [int(v) for v in attr.ints]
    return default


# ---------------------------------------------------------------------------------------------
# constant folding


def _evaluate(node, values: dict[str, np.ndarray], opsets) -> list[np.ndarray]:
    """Outputs of one node on constant inputs, with onnx's reference evaluator at the model's
    opset (a one-node model: ReferenceEvaluator picks the op version from its opset imports)."""
    from onnx import helper  # noqa: PLC0415
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

    inputs = [i for i in node.input if i]
    graph = helper.make_graph(
        [node], "fold", [helper.make_empty_tensor_value_info(i) for i in inputs],
        [helper.make_empty_tensor_value_info(o) for o in node.output],
    )
    model = helper.make_model(graph, opset_imports=list(opsets))
    return ReferenceEvaluator(model).run(None, {i: values[i] for i in inputs})


def fold_constants(model) -> int:
    """Fold every node whose inputs are all constants (initializers, Constant outputs, earlier
    folded values) into initializers, in place; Constant nodes become initializers too.  Nodes
    with subgraphs or side effects (random ops) are kept.  Returns the number of nodes removed.
    Expects the nodes in topological order (as exporters write them)."""
    from onnx import numpy_helper  # noqa: PLC0415

    graph = model.graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept, folded = [], {}
    for node in graph.node:
        has_subgraph = any(a.HasField("g") or len(a.graphs) for a in node.attribute)
        inputs = [i for i in node.input if i]
        foldable = (
            node.domain in ("", "ai.onnx")
            and not has_subgraph
            and not node.op_type.startswith("Random")
            and all(i in values for i in inputs)
            and not any(o in outputs for o in node.output)  # keep graph outputs computed
        )
        if foldable:
            results = _evaluate(node, values, model.opset_import)
            for name, value in zip(node.output, results):
                values[name] = np.asarray(value)
                folded[name] = values[name]
            continue
        kept.append(node)
    removed = len(graph.node) - len(kept)
    if not removed:
        return 0
    used = set(outputs)
    for n in kept:
        used.update(n.input)
        for attr in n.attribute:  # names read inside subgraphs
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for inner in iter_nodes(sub):
                    used.update(inner.input)
    initializers = [init for init in graph.initializer if init.name in used]
    have = {init.name for init in initializers}
    for name, value in folded.items():
        if name in used and name not in have:
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.node[:]
    graph.node.extend(kept)
    # value_info of folded tensors would now describe initializers: drop the stale entries
    keep_info = [v for v in graph.value_info if v.name not in folded]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)
    return removed


# ---------------------------------------------------------------------------------------------
# one writer for every exported graph


def _tensors(graph) -> Iterator[Any]:
    """Initializers and Constant values of ``graph`` and of its subgraphs."""
    yield from graph.initializer
    for node in iter_nodes(graph):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from attr.g.initializer
            for sub in attr.graphs:
                yield from sub.initializer


def external_locations(model) -> set[str]:
    """The external data files (paths relative to the graph file) that the tensors of ``model``
    point to."""
    onnx = require_onnx()
    return {
        entry.value
        for tensor in _tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def _serialized_size(model) -> int:
    try:
        return int(model.ByteSize())
    except Exception:  # noqa: BLE001 - some protobuf builds refuse to size a message past 2 GiB
        return 2**31


def save_graph(model, path: Path | str, *, threshold: int | None = None, leftovers: set[str] = frozenset()) -> str | None:
    """Save ``model`` to ``path`` after ``onnx.checker``: as one file below ``threshold`` bytes
    (default :data:`edgedp_runtime.schema.EXTERNAL_DATA_THRESHOLD`, read at the call), else
    with every initializer of at least :data:`EXTERNAL_TENSOR_MIN_BYTES` in one external data file
    beside it (:func:`edgedp_runtime.schema.external_data_file`; onnx's ``save_model(...,
    save_as_external_data=True, all_tensors_to_one_file=True)``) and checked from the path
    (the checker cannot take a model past 2 GiB in memory).  Constant nodes stay in the graph
    (``convert_attribute=False``: the baked weights are initializers after folding, and
    TensorRT's parser reads constants' values from the graph).  A data file of that name left by
    an earlier save is replaced (onnx appends to it), and ``leftovers`` (data files, relative
    to the graph's folder, that the file being replaced used: torch's exporter writes one per
    tensor past 2 GiB) are removed.  Returns the data file's name, or None.

    Raises:
        OutputError: the file cannot be written.
    """
    onnx = require_onnx()
    path = Path(path)
    limit = schema.EXTERNAL_DATA_THRESHOLD if threshold is None else int(threshold)
    data_name = schema.external_data_file(path.name)
    data_path = path.parent / data_name
    external = _serialized_size(model) >= limit
    try:
        data_path.unlink(missing_ok=True)
        if external:
            onnx.save_model(
                model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name,
                size_threshold=EXTERNAL_TENSOR_MIN_BYTES, convert_attribute=False,
            )
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
            onnx.save(model, str(path))
        for name in set(leftovers) - {data_name}:
            (path.parent / name).unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from None
    return data_name if external else None


# ---------------------------------------------------------------------------------------------
# FP16 emulation


def emulate_fp16(source) -> Any:
    """A copy of the model in which every float32 tensor is rounded to FP16: initializers (and
    Constant values) are stored rounded, and every float32 node output passes through
    ``Cast(to=FLOAT16) -> Cast(to=FLOAT)`` before anything reads it.  Arithmetic inside each op
    stays FP32, so this models an FP16 engine whose kernels accumulate in FP32 (what TensorRT's
    FP16 convolutions and reductions do) and that stores every activation in FP16: overflow
    (|x| > 65504 becomes inf) and rounding (relative 2^-11) of each intermediate tensor.  Graph
    inputs and outputs stay float32.  Run it with ONNX Runtime (CPU)."""
    onnx = require_onnx()
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    model = onnx.ModelProto()
    if isinstance(source, onnx.ModelProto):
        model.CopyFrom(source)
    else:  # with the external data: the initializers' values are rounded below
        if not Path(source).is_file():
            raise InputError(f"{source}: no such ONNX file")
        model = onnx.load(str(source))
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as err:  # noqa: BLE001 - onnx raises several types
        raise EdgedpError(f"FP16 emulation: shape inference failed: {err}") from None
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    nodes = []
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    rounded = numpy_helper.to_array(attr.t).astype(np.float16).astype(np.float32)
                    attr.t.CopyFrom(numpy_helper.from_array(rounded))
        nodes.append(node)
        for k, name in enumerate(node.output):
            if not name or types.get(name) != TensorProto.FLOAT:
                continue
            raw, half = f"{name}__fp32_{index}", f"{name}__fp16_{index}"
            node.output[k] = raw
            nodes.append(helper.make_node("Cast", [raw], [half], to=TensorProto.FLOAT16, name=f"{raw}_to_fp16"))
            nodes.append(helper.make_node("Cast", [half], [name], to=TensorProto.FLOAT, name=f"{raw}_to_fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model


def float_nodes(source, prefix: str) -> list[str]:
    """Names of the nodes whose name starts with ``prefix`` and whose outputs are all float32
    (after shape inference): the layers an FP16 engine can be told to keep in FP32."""
    onnx = require_onnx()
    from onnx import TensorProto  # noqa: PLC0415

    model = onnx.shape_inference.infer_shapes(load_model(source))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    return [
        n.name for n in model.graph.node
        if n.name.startswith(prefix) and n.output and all(types.get(o) == TensorProto.FLOAT for o in n.output)
    ]


def ort_session(source, *, threads: int | None = None, fp16: bool = False):
    """An ONNX Runtime CPU session of a model or file; ``fp16``: of its :func:`emulate_fp16` copy."""
    try:
        from edgedp_runtime.quiet import import_onnxruntime  # noqa: PLC0415

        ort = import_onnxruntime()
    except ImportError:
        raise OutputError(
            "onnxruntime is missing: pip install 'edgedp[export]' (CPU) or 'edgedp[gpu]' (onnxruntime-gpu; not both)"
        ) from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if fp16:
        emulated = emulate_fp16(source)
        if _serialized_size(emulated) >= schema.EXTERNAL_DATA_THRESHOLD:  # past protobuf's limit: by a file
            with tempfile.TemporaryDirectory(prefix="edgedp-fp16-") as folder:
                path = Path(folder) / "fp16.onnx"
                save_graph(emulated, path)
                # ORT reads (or maps) the data at session creation; an unlinked mapped file stays valid
                return ort_load(ort, str(path), opts, ["CPUExecutionProvider"], InputError, str(source))
        model = emulated.SerializeToString()
    else:
        # a path: ORT finds an external data file beside the graph
        model = str(source) if not hasattr(source, "SerializeToString") else source.SerializeToString()
    # a file ORT cannot load (garbage, truncated) is one InputError line naming it, not a traceback
    return ort_load(ort, model, opts, ["CPUExecutionProvider"], InputError, str(source) if isinstance(model, str) else "graph")


def output_errors(got, ref, atol: float, rtol: float | None = None) -> dict[str, Any]:
    """Errors of ``got`` against ``ref``: ``max_abs = max |got - ref|``, ``max_rel = max_abs /
    max |ref|`` and ``passed``: finite and ``max_abs <= atol + rtol * max |ref|`` (``rtol`` None:
    atol alone)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    finite = bool(np.isfinite(got).all())
    max_abs = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    if not finite:
        max_abs = float("inf")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    bound = atol + (rtol or 0.0) * scale
    out = {"max_abs": max_abs, "max_rel": max_rel, "atol": float(atol), "passed": finite and max_abs <= bound}
    if rtol is not None:
        out["rtol"] = float(rtol)
    return out


def graph_verification(per_output: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One graph's verification entry from per-output :func:`output_errors` results: the worst output's
    numbers, ``passed`` only if every output passed, and ``outputs`` with each output's errors."""
    key = max(per_output, key=lambda k: per_output[k]["max_rel"])
    entry = dict(per_output[key])
    entry["passed"] = all(r["passed"] for r in per_output.values())
    entry["outputs"] = {k: {"max_abs": r["max_abs"], "max_rel": r["max_rel"]} for k, r in per_output.items()}
    return entry
