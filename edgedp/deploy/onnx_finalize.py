"""The last step of every exported graph (render, refocus, gd, the profile's gd): fold constants,
check the opset and what TensorRT 8.5 parses (:mod:`edgedp.deploy.trt_rules`), write the metadata
and save (:mod:`edgedp.deploy.onnx_tools`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import OutputError
from .onnx_tools import default_opset, external_locations, fold_constants, load_model, require_onnx, save_graph
from .trt_rules import unsupported_trt_ops

__all__ = ["finalize_graph"]


def finalize_graph(path: Path | str, props: dict[str, Any], opset: int, *, trt_check: bool = True) -> dict[str, Any]:
    """The last step of every export: load ``path``, fold constants, check the saved opset is
    ``opset``, check what TensorRT 8.5 parses (op types, shape parameters, Pad / Resize modes;
    ``trt_check``), write the metadata ``props`` (values that are not strings are JSON-encoded)
    and producer, run ``onnx.checker`` and save (:func:`save_graph`: a graph past
    :data:`edgedp_runtime.schema.EXTERNAL_DATA_THRESHOLD` with its tensors in one external data
    file).  Returns ``{"folded": n, "external_data": the data file's name or None}``.

    Raises:
        OutputError: the exporter wrote another opset, or a graph TensorRT 8.5 would reject.
    """
    onnx = require_onnx()

    path = Path(path)
    leftovers = external_locations(load_model(path))  # torch.onnx writes one file per tensor past 2 GiB
    model = onnx.load(str(path))
    got = default_opset(model)
    if got != int(opset):
        raise OutputError(f"{path}: the exporter wrote opset {got}, not the requested {opset}")
    folded = fold_constants(model)
    if trt_check:
        bad = unsupported_trt_ops(model)
        if bad:
            raise OutputError(f"{path}: TensorRT 8.5 would not parse the exported graph: {'; '.join(bad)}")
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    model.producer_name = "edgedp"
    model.producer_version = __version__
    data = save_graph(model, path, leftovers=leftovers)
    return {"folded": folded, "external_data": data}
