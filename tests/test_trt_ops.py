"""Graphs TensorRT 8.5 takes: every op of every exported graph is in the allowlist taken from
onnx-tensorrt's release/8.5-GA operator table, opset 17 in the saved file, no DFT / STFT /
CumProd; edgedp.tensorrt imports without TensorRT and build_engine stops with one clear line."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from edgedp import tensorrt as edtrt  # noqa: E402
from edgedp.errors import EdgedpError, InputError  # noqa: E402
from edgedp.onnx_gd import export_gd_onnx  # noqa: E402
from edgedp.tensorrt import TRT85_ONNX_OPS, build_engine, onnx_ops, unsupported_trt_ops  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_onnx_gd import gd_bundle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"DFT", "STFT", "CumProd", "LayerNormalization", "BlackmanWindow", "HannWindow", "HammingWindow"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return gd_bundle(tmp_path_factory.mktemp("trt") / "scene", layers=4)


def check_graph(path: Path) -> None:
    model = onnx.load(str(path))
    assert [i.version for i in model.opset_import if i.domain in ("", "ai.onnx")] == [17]
    assert all(i.domain in ("", "ai.onnx") for i in model.opset_import), list(model.opset_import)
    ops = set(onnx_ops(path))
    assert ops <= TRT85_ONNX_OPS, sorted(ops - TRT85_ONNX_OPS)
    assert not ops & FORBIDDEN and not any("cum" in op.lower() and op != "CumSum" for op in ops)
    assert unsupported_trt_ops(path) == []


def test_gd_graph_is_trt85(bundle, tmp_path):
    for dynamic in (True, False):
        path = tmp_path / f"gd_{dynamic}.onnx"
        export_gd_onnx(bundle, path, dynamic=dynamic)
        check_graph(path)
        assert {"Conv", "AveragePool", "Resize", "Sigmoid"} <= set(onnx_ops(path))


@pytest.fixture(scope="module")
def scene_export(bundle, tmp_path_factory):
    """render.onnx / refocus.onnx (and gd.onnx) through the exporter of edgedp.onnx_export."""
    try:
        mod = importlib.import_module("edgedp.onnx_export")
    except ImportError:
        pytest.skip("edgedp.onnx_export (render / refocus export) is not in this checkout yet")
    if not hasattr(mod, "export_scene"):
        pytest.skip("edgedp.onnx_export has no export_scene")
    out = tmp_path_factory.mktemp("scene_export")
    sidecar = mod.export_scene(bundle, out, verify=False)
    return out, sidecar


@pytest.mark.parametrize("graph", ["render", "refocus", "gd"])
def test_exported_scene_graphs_are_trt85(scene_export, graph):
    out, sidecar = scene_export
    graphs = sidecar["graphs"]
    assert graph in graphs, sorted(graphs)
    check_graph(out / graphs[graph]["file"])


def test_checker_flags_what_trt85_cannot_parse(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("LayerNormalization", ["x", "s"], ["a"], axis=-1),
        helper.make_node("Resize", ["a", "", "sc"], ["b"], mode="cubic"),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [4], [1.0] * 4), helper.make_tensor("sc", TensorProto.FLOAT, [2], [1.0, 1.0])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    assert unsupported_trt_ops(path) == ["LayerNormalization", "Resize(mode=cubic)", "opset 18 > 17"]
    with pytest.raises(InputError, match="8.5"):
        unsupported_trt_ops(path, version="10.0")


def test_allowlist_is_the_85_table():
    assert len(TRT85_ONNX_OPS) == 142  # the "Y" rows of the 8.5 table
    assert {"Conv", "Resize", "CumSum", "AveragePool", "Sigmoid", "ReduceMean", "Slice"} <= TRT85_ONNX_OPS
    assert not {"DFT", "STFT", "CumProd", "LayerNormalization", "IsInf", "Hardmax"} & TRT85_ONNX_OPS


def test_imports_without_tensorrt():
    code = (
        "import sys; sys.modules['tensorrt'] = None\n"  # any 'import tensorrt' now fails
        "import edgedp.tensorrt as t; assert 'tensorrt' in sys.modules and sys.modules['tensorrt'] is None\n"
        "print(len(t.TRT85_ONNX_OPS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(TRT85_ONNX_OPS))


def test_build_engine_without_tensorrt_is_one_line(bundle, tmp_path, monkeypatch):
    path = tmp_path / "gd.onnx"
    export_gd_onnx(bundle, path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # also where TensorRT is installed
    with pytest.raises(EdgedpError) as err:
        build_engine(path, tmp_path / "gd.engine")
    msg = str(err.value)
    assert "\n" not in msg and "TensorRT is not installed" in msg and "JetPack" in msg and "pip install tensorrt" in msg
    assert not (tmp_path / "gd.engine").exists()
    with pytest.raises(InputError, match="no such ONNX file"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "x.engine")


class _Rec:
    """A stand-in for the tensorrt module that records the builder calls."""

    def __init__(self, parse_ok: bool = True):
        self.calls: list = []
        rec = self
        E = types.SimpleNamespace

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

            def log(self, *a):
                pass

        class Input:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            num_inputs = 1

            def get_input(self, i):
                return Input("pair", (1, 2, -1, -1))

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, p):
                rec.calls.append(("parse", Path(p).name))
                return parse_ok

            def get_error(self, i):
                return "In node 3 (Foo): UNSUPPORTED_NODE\nmore"

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                rec.calls.append(("profile", name, mn, opt, mx))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.calls.append(("workspace", pool, size))

            def set_flag(self, flag):
                rec.calls.append(("flag", flag))

            def add_optimization_profile(self, p):
                rec.calls.append(("add_profile",))

        class Builder:
            platform_has_fast_fp16 = True

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("network", flags))
                return Network()

            def create_optimization_profile(self):
                return Profile()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return b"ENGINE"

        self.module = types.SimpleNamespace(
            Logger=Logger, Builder=Builder, OnnxParser=Parser,
            NetworkDefinitionCreationFlag=E(EXPLICIT_BATCH=0), MemoryPoolType=E(WORKSPACE="WS"), BuilderFlag=E(FP16="FP16"),
        )


def test_build_engine_api_calls(tmp_path, monkeypatch):
    """The TensorRT calls (no TensorRT here): explicit-batch network, ONNX parser, workspace pool
    limit, FP16 flag, one optimization profile for the dynamic input, engine written."""
    onnx_path = tmp_path / "gd.onnx"
    onnx_path.write_bytes(b"x")
    rec = _Rec()
    monkeypatch.setitem(sys.modules, "tensorrt", rec.module)
    monkeypatch.setattr(edtrt, "_cuda_device_count", lambda: 0)
    with pytest.raises(EdgedpError, match="no CUDA GPU") as err:
        build_engine(onnx_path, tmp_path / "gd.engine")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(edtrt, "_cuda_device_count", lambda: 1)
    with pytest.raises(InputError, match="dynamic_shapes"):
        build_engine(onnx_path, tmp_path / "gd.engine")
    with pytest.raises(InputError, match="min <= opt <= max"):
        build_engine(onnx_path, tmp_path / "gd.engine", dynamic_shapes={"pair": ((1, 2, 64, 64), (1, 2, 32, 32), (1, 2, 128, 128))})
    rec.calls.clear()
    shapes = {"pair": ((1, 2, 32, 32), (1, 2, 64, 96), (1, 2, 128, 128))}
    out = build_engine(onnx_path, tmp_path / "gd.engine", half=True, workspace_mib=256, dynamic_shapes=shapes)
    assert out == tmp_path / "gd.engine" and out.read_bytes() == b"ENGINE"
    assert ("network", 1) in rec.calls and ("parse", "gd.onnx") in rec.calls
    assert ("workspace", "WS", 256 << 20) in rec.calls and ("flag", "FP16") in rec.calls
    assert ("profile", "pair", (1, 2, 32, 32), (1, 2, 64, 96), (1, 2, 128, 128)) in rec.calls
    assert ("add_profile",) in rec.calls
    bad = _Rec(parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", bad.module)
    with pytest.raises(EdgedpError, match="ONNX parser failed: In node 3") as err:
        build_engine(onnx_path, tmp_path / "bad.engine")
    assert "\n" not in str(err.value)


def test_build_engines_script_syntax():
    script = REPO / "export" / "build_engines.sh"
    assert script.is_file()
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    out = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    for flag in ("--minShapes", "--optShapes", "--maxShapes", "--saveEngine", "--fp16", "--memPoolSize=workspace:", "--workspace="):
        assert flag in text, flag


def test_build_engines_script_dry_run(bundle, tmp_path):
    import json

    bash = shutil.which("bash")
    if bash is None or shutil.which("python3") is None:
        pytest.skip("no bash / python3")
    entry = export_gd_onnx(bundle, tmp_path / "gd.onnx")
    (tmp_path / "render.onnx").write_bytes(b"")
    sidecar = {"graphs": {"gd": entry, "render": {"file": "render.onnx", "inputs": {"latent": [1, 4, 37, 53]}}}}
    (tmp_path / "export.json").write_text(json.dumps(sidecar))
    script = str(REPO / "export" / "build_engines.sh")
    out = subprocess.run([bash, script, "--dry-run", "--fp16", "--workspace", "512", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("+ ")]
    assert len(lines) == 2
    assert f"--onnx={tmp_path}/render.onnx" in lines[0] and "--memPoolSize=workspace:512" in lines[0] and "--fp16" in lines[0]
    assert "Shapes" not in lines[0]  # static graph: no profile
    # opt = the scene's size rounded up to multiple_of 16, max = 2 x opt, min = 16 x 16
    assert "--minShapes=pair:1x2x16x16 --optShapes=pair:1x2x48x64 --maxShapes=pair:1x2x96x128" in lines[1]
    bad = subprocess.run([bash, script, "--dry-run", "--only", "gd", "--opt", "40x64", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a multiple of 16" in bad.stderr
