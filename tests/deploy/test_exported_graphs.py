"""Every exported graph, parametrized over the exporter's own tables (edgedp.deploy.exporter's
export_formats() and export_sources()): each graph of each source is written, described in the
sidecar, carries its metadata, parses as TensorRT 8.5 would, and passes its numerical check."""

from __future__ import annotations

import json

import pytest

onnx = pytest.importorskip("onnx")  # the export extra; CI installs it
pytest.importorskip("onnxruntime")

from edgedp.deploy import export_formats, export_sources, run_export  # noqa: E402
from edgedp.formats import save_profile  # noqa: E402
from edgedp.deploy import unsupported_trt_ops  # noqa: E402

from tests.deploy.test_onnx_export import make_bundle  # noqa: E402
from tests.deploy.test_profile_export import tiny_profile  # noqa: E402

#: The formats that need no TensorRT here (engine formats: tests/deploy/test_tensorrt.py with fake modules).
ONNX_FORMATS = [f.argument for f in export_formats() if not f.engines]
CASES = [(fmt, kind, graph) for fmt in ONNX_FORMATS for kind, source in export_sources().items() for graph in source.graphs]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``{(format, source kind): (folder, sidecar)}``: one export per format and source."""
    root = tmp_path_factory.mktemp("graphs")
    make_bundle(root / "fit" / "scene")
    sources = {"scene": root / "fit", "profile": save_profile(tiny_profile(), root / "PHONE.profile")}
    assert set(sources) == set(export_sources())  # a new source kind needs a case here
    done = {}
    for fmt in ONNX_FORMATS:
        for kind, path in sources.items():
            out = root / f"{fmt}_{kind}"
            done[fmt, kind] = out, run_export(path, out, fmt)
    return done


def test_cases_cover_the_tables():
    assert ONNX_FORMATS == ["onnx"]
    assert {(k, g) for _, k, g in CASES} == {("scene", "render"), ("scene", "refocus"), ("scene", "gd"), ("profile", "gd")}


@pytest.mark.parametrize("fmt, kind, graph", CASES)
def test_every_exported_graph(exports, fmt, kind, graph):
    out, side = exports[fmt, kind]
    assert sorted(side["graphs"]) == sorted(export_sources()[kind].graphs)
    entry = side["graphs"][graph]
    path = out / entry["file"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgedp_version"] and meta["opset"] == str(side["opset"]) == "17"
    assert json.loads(meta["inputs"]) == entry["inputs"] and json.loads(meta["outputs"]) == entry["outputs"]
    assert [i.name for i in model.graph.input] == list(entry["inputs"])
    assert [o.name for o in model.graph.output] == list(entry["outputs"])
    assert unsupported_trt_ops(path) == []
    check = side["verification"][graph]
    assert check["passed"] and check["max_abs"] <= check["atol"], check
