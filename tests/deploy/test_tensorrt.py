"""Graphs TensorRT 8.5 takes: every op of every exported graph is in the allowlist taken from
onnx-tensorrt's release/8.5-GA operator table, opset 17 in the saved file, no DFT / STFT /
CumProd, every Pad / Resize / Slice / Clip / Reshape parameter a constant and only the Pad /
Resize modes the 8.5 parser takes; edgedp.deploy.tensorrt imports without TensorRT and build_engine
stops with one clear line.  Engine builds (and ``edgedp export --format engine`` end to end) run
against the fake ``tensorrt`` of tests/fakes in its 8.5 and 10.x flavours."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from edgedp.deploy import tensorrt as edtrt  # noqa: E402
from edgedp.cli import app  # noqa: E402
from edgedp.errors import EdgedpError, InputError  # noqa: E402
from edgedp.deploy import export_sources  # noqa: E402
from edgedp.deploy import export_gd_onnx  # noqa: E402
from edgedp.deploy import op_types  # noqa: E402
from edgedp.deploy import TRT85_ONNX_OPS, build_engine, unsupported_trt_ops  # noqa: E402

from tests.deploy.test_onnx_export import make_bundle  # noqa: E402
from tests.deploy.test_onnx_gd import gd_bundle  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FAKES = Path(__file__).resolve().parents[1] / "fakes"
FORBIDDEN = {"DFT", "STFT", "CumProd", "LayerNormalization", "BlackmanWindow", "HannWindow", "HammingWindow"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return gd_bundle(tmp_path_factory.mktemp("trt") / "scene", layers=4)


def check_graph(path: Path) -> None:
    model = onnx.load(str(path))
    assert [i.version for i in model.opset_import if i.domain in ("", "ai.onnx")] == [17]
    assert all(i.domain in ("", "ai.onnx") for i in model.opset_import), list(model.opset_import)
    ops = op_types(path)
    assert ops <= TRT85_ONNX_OPS, sorted(ops - TRT85_ONNX_OPS)
    assert not ops & FORBIDDEN and not any("cum" in op.lower() and op != "CumSum" for op in ops)
    assert unsupported_trt_ops(path) == []


def test_gd_graph_is_trt85(bundle, tmp_path):
    for dynamic in (True, False):
        path = tmp_path / f"gd_{dynamic}.onnx"
        export_gd_onnx(bundle, path, dynamic=dynamic)
        check_graph(path)
        assert {"Conv", "AveragePool", "Resize", "Sigmoid"} <= op_types(path)


@pytest.fixture(scope="module")
def scene_export(bundle, tmp_path_factory):
    """render.onnx / refocus.onnx and gd.onnx through the exporter of edgedp.deploy.onnx_export (an
    import error is a failure, not a skip)."""
    from edgedp.deploy import export_scene

    out = tmp_path_factory.mktemp("scene_export")
    sidecar = export_scene(bundle, out, verify=False)
    return out, sidecar


@pytest.mark.parametrize("graph", export_sources()["scene"].graphs)
def test_exported_scene_graphs_are_trt85(scene_export, graph):
    out, sidecar = scene_export
    graphs = sidecar["graphs"]
    assert sorted(graphs) == sorted(export_sources()["scene"].graphs)  # the table's graphs, all of them
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
        "import edgedp.deploy.tensorrt, edgedp.deploy.trt_rules as t; assert 'tensorrt' in sys.modules and sys.modules['tensorrt'] is None\n"
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


def test_build_engines_script_syntax():
    script = REPO / "export" / "build_engines.sh"
    assert script.is_file()
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    out = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    for flag in ("--minShapes", "--optShapes", "--maxShapes", "--saveEngine", "--fp16", "--memPoolSize=workspace:", "--workspace=",
                 "--precisionConstraints=obey", "--layerPrecisions="):
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
    assert "Shapes" not in lines[0] and "layerPrecisions" not in lines[0]  # static graph: no profile, no pins
    # FP16: gd's standardization pinned to FP32 by node name (the sidecar's fp32_nodes)
    pins = ",".join(f"{n}:fp32" for n in entry["fp32_nodes"])
    assert f"--precisionConstraints=obey --layerPrecisions={pins}" in lines[1] and "/standardize/ReduceMean:fp32" in pins
    # opt = the scene's size rounded up to multiple_of 16, max = 2 x opt, min = 16 x 16
    assert "--minShapes=pair:1x2x16x16 --optShapes=pair:1x2x48x64 --maxShapes=pair:1x2x96x128" in lines[1]
    bad = subprocess.run([bash, script, "--dry-run", "--only", "gd", "--opt", "40x64", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a multiple of 16" in bad.stderr


# --- every exported graph, walked node by node -------------------------------------------------
#: What each graph may contain: the ops of the factored render / refocus and of G_D.
ALLOWED_OPS = {
    "render": {"Pad", "Conv", "Mul", "Add", "Slice", "ReduceSum"},
    "refocus": {"Pad", "Conv", "Mul", "Add", "Sub", "Abs", "Relu", "Clip", "Slice"},
    "gd": {"AveragePool", "ReduceMean", "Sub", "Mul", "Div", "Sqrt", "Clip", "Shape", "Gather", "Cast", "Conv",
           "LeakyRelu", "Resize", "Sigmoid", "Add", "Slice", "Concat", "MaxPool", "Relu", "Reshape", "Unsqueeze"},
}
PARAMETERS = {"Pad": (1, 2, 3), "Resize": (1, 2, 3), "Slice": (1, 2, 3, 4), "Clip": (1, 2), "Reshape": (1,)}


def walk_graph(path: Path, graph: str) -> dict:
    """Assert what TensorRT 8.5's parser needs, node by node, independently of edgedp's checker:
    op types, Pad / Resize attribute values, and that every Pad / Resize / Slice / Clip / Reshape
    parameter is an initializer or a Constant output (no run-time shape arithmetic feeding them).
    Returns the op counts."""
    model = onnx.load(str(path))
    assert [i.version for i in model.opset_import if i.domain in ("", "ai.onnx")] == [17]
    g = model.graph
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    counts: dict = {}
    for node in g.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        assert node.domain in ("", "ai.onnx") and not any(a.HasField("g") for a in node.attribute), node.name
        assert node.op_type in ALLOWED_OPS[graph] | {"Constant"}, (graph, node.op_type)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Pad":
            assert attrs.get("mode", b"constant") in (b"constant", b"reflect", b"edge"), attrs
        if node.op_type == "Resize":
            assert attrs["mode"] == b"linear", attrs
            assert attrs.get("coordinate_transformation_mode", b"half_pixel") in (b"half_pixel", b"pytorch_half_pixel"), attrs
        for index in PARAMETERS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index]:
                assert node.input[index] in constants, f"{graph}: {node.op_type} {node.name} input {index} is computed"
    assert not set(counts) & {"ConstantOfShape", "Transpose", "DFT", "CumSum", "STFT"}, counts
    return counts


@pytest.fixture(scope="module")
def all_exports(bundle, tmp_path_factory):
    """render / refocus / gd of a scene (uniform and patch kernels), gd static, and a profile's gd."""
    from edgedp.deploy import export_scene
    from edgedp.formats import save_profile
    from edgedp.deploy import export_profile
    from tests.deploy.test_profile_export import tiny_profile

    root = tmp_path_factory.mktemp("walk")
    graphs = []
    side = export_scene(bundle, root / "scene", verify=False)
    graphs += [(root / "scene" / g["file"], name) for name, g in side["graphs"].items()]
    patch = make_bundle(root / "pscene", layers=4, patches=(2, 3), seed=3)
    side = export_scene(patch, root / "patch", verify=False, dynamic=False)
    graphs += [(root / "patch" / g["file"], name) for name, g in side["graphs"].items()]
    prof = save_profile(tiny_profile(), root / "PHONE.profile")
    side = export_profile(prof, root / "profile", verify=False)
    graphs.append((root / "profile" / side["graphs"]["gd"]["file"], "gd"))
    return graphs


def test_every_exported_graph_walks_clean(all_exports):
    seen = set()
    for path, graph in all_exports:
        counts = walk_graph(path, graph)
        seen.add(graph)
        assert unsupported_trt_ops(path) == [], path
        if graph in ("render", "refocus"):
            assert counts.get("Pad", 0) >= 1 and counts.get("Conv", 0) >= 1
        else:
            assert counts["Resize"] == 1 and counts["ReduceMean"] == 6
    assert seen == {"render", "refocus", "gd"} and len(all_exports) == 7


def test_checker_flags_runtime_shape_parameters_and_modes(tmp_path):
    """The constness and attribute checks fire on what the old export wrote: a Pad whose pads come
    from ConstantOfShape / Concat / Reshape at run time, a 'wrap' pad, a nearest Resize with a
    nearest_mode the 8.5 table lacks; constant folding (by construction) removes the first."""
    from onnx import TensorProto, helper

    from edgedp.deploy import fold_constants

    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Constant", [], ["n"], value=helper.make_tensor("n", i64, [1], [4])),
        helper.make_node("ConstantOfShape", ["n"], ["zeros"], value=helper.make_tensor("v", i64, [1], [1])),
        helper.make_node("Reshape", ["zeros", "shape"], ["pads"]),
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="edge"),
        helper.make_node("Pad", ["p", "const_pads"], ["q"], mode="wrap"),
        helper.make_node("Resize", ["q", "", "scales"], ["y"], mode="nearest", nearest_mode="banker"),
    ]
    inits = [helper.make_tensor("shape", i64, [1], [4]), helper.make_tensor("const_pads", i64, [4], [0, 0, 0, 0]),
             helper.make_tensor("scales", f, [2], [1.0, 1.0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [3, 4])],
                              [helper.make_tensor_value_info("y", f, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bad = unsupported_trt_ops(model)
    assert "Pad(?) input 1 is computed at run time" in bad and "Pad(mode=wrap)" in bad
    assert "Resize(nearest_mode=banker)" in bad and "ConstantOfShape" not in bad  # the op itself parses
    assert fold_constants(model) == 3
    bad = unsupported_trt_ops(model)
    assert not any("computed at run time" in b for b in bad)
    assert [n.op_type for n in model.graph.node] == ["Pad", "Pad", "Resize"]
    import onnxruntime as ort

    model.graph.node[1].attribute[0].s = b"constant"
    model.graph.node[2].attribute[1].s = b"floor"  # (ONNX Runtime refuses the made-up mode too)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(y, np.pad(x, 1, mode="edge"))  # the folded pads are the computed ones


# --- engine builds against the fake tensorrt (8.5 and 10.x) ------------------------------------
def load_fake_tensorrt(monkeypatch, version: str, gpus: int = 1):
    """Install tests/fakes/tensorrt as ``tensorrt`` (flavour ``version``) and pretend ``gpus``
    CUDA devices; restored after the test."""
    monkeypatch.setenv("FAKE_TENSORRT_VERSION", version)
    spec = importlib.util.spec_from_file_location("tensorrt", FAKES / "tensorrt" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(edtrt, "cuda_device_count", lambda: gpus)
    return module


@pytest.mark.parametrize("version", ["8.5.3.1", "10.3.0"])
def test_build_engine_api_calls(bundle, tmp_path, monkeypatch, version):
    """The calls per TensorRT version: explicit-batch network on 8.5 and no flag on 10.x, the
    parser, the workspace pool limit, FP16 with the standardization pinned to FP32 under
    OBEY_PRECISION_CONSTRAINTS, one optimization profile for the dynamic input, engine written."""
    fake = load_fake_tensorrt(monkeypatch, version)
    entry = export_gd_onnx(bundle, tmp_path / "gd.onnx")
    assert entry["fp32_nodes"] and all(n.startswith("/standardize/") for n in entry["fp32_nodes"])
    with pytest.raises(InputError, match="dynamic_shapes"):
        build_engine(tmp_path / "gd.onnx", tmp_path / "gd.engine")
    with pytest.raises(InputError, match="min <= opt <= max"):
        build_engine(tmp_path / "gd.onnx", tmp_path / "gd.engine",
                     dynamic_shapes={"pair": ((1, 2, 64, 64), (1, 2, 32, 32), (1, 2, 128, 128))})
    fake.RECORD.clear()
    shapes = {"pair": ((1, 2, 32, 32), (1, 2, 64, 96), (1, 2, 128, 128))}
    info = build_engine(tmp_path / "gd.onnx", tmp_path / "gd.engine", half=True, workspace_mib=256,
                        dynamic_shapes=shapes, fp32_layers=entry["fp32_nodes"])
    assert info["engine"] == tmp_path / "gd.engine" and info["tensorrt"] == version
    assert ("network", 0 if version.startswith("10") else 1) in fake.RECORD
    assert ("parse", "gd.onnx") in fake.RECORD and ("workspace", "WORKSPACE", 256 << 20) in fake.RECORD
    assert ("flag", "FP16") in fake.RECORD and ("flag", "OBEY_PRECISION_CONSTRAINTS") in fake.RECORD
    assert ("profile", "pair", (1, 2, 32, 32), (1, 2, 64, 96), (1, 2, 128, 128)) in fake.RECORD
    assert not any(c[0].startswith("deprecated") for c in fake.RECORD)
    header, _ = fake.read_engine((tmp_path / "gd.engine").read_bytes())
    # float layers of the standardization pinned; its int shape arithmetic (Shape, Gather) not
    assert set(header["fp32_layers"]) == set(info["fp32_layers"]) and "/standardize/ReduceMean" in header["fp32_layers"]
    assert all(n.startswith("/standardize/") for n in header["fp32_layers"])
    assert set(header["fp32_layers"]) <= set(entry["fp32_nodes"])
    # FP32 build: nothing pinned, no precision flags
    fake.RECORD.clear()
    info = build_engine(tmp_path / "gd.onnx", tmp_path / "gd32.engine", dynamic_shapes=shapes, fp32_layers=entry["fp32_nodes"])
    assert info["fp32_layers"] == [] and not any(c[0] == "flag" for c in fake.RECORD)


def test_build_engine_stops_in_one_line(bundle, tmp_path, monkeypatch):
    path = tmp_path / "gd.onnx"
    export_gd_onnx(bundle, path)
    load_fake_tensorrt(monkeypatch, "8.5.3.1", gpus=0)
    with pytest.raises(EdgedpError, match="no CUDA GPU") as err:
        build_engine(path, tmp_path / "gd.engine")
    assert "\n" not in str(err.value)
    load_fake_tensorrt(monkeypatch, "8.5.3.1")
    monkeypatch.setenv("FAKE_TENSORRT_PARSE_ERROR", "In node 3 (Foo): UNSUPPORTED_NODE\nmore")
    with pytest.raises(EdgedpError, match="ONNX parser failed: In node 3") as err:
        build_engine(path, tmp_path / "bad.engine")
    assert "\n" not in str(err.value) and not (tmp_path / "bad.engine").exists()


def one_line(res, needle: str, progress: bool = False) -> None:
    """Exit 2 and one ``error:`` line (after the progress lines of the work done, if ``progress``)."""
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1] and needle in errors[0], res.output
    assert "Traceback" not in res.output and (progress or len(lines) == 1), res.output


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A fit OUTDIR with a small scene bundle whose G_D is real (input scale 2)."""
    root = tmp_path_factory.mktemp("fitted")
    gd_bundle(root / "fit" / "scene", layers=4)
    return root / "fit"


@pytest.mark.parametrize("version", ["8.5.3.1", "10.3.0"])
def test_export_engine_end_to_end(fitted, tmp_path, monkeypatch, version):
    """``edgedp export --format engine --half`` through the CLI with the fake TensorRT: ONNX files,
    one engine per graph, the sidecar's engine entries and its FP16 verification; then the
    runtime's TensorRT backend runs the engines without torch (the fakes' engines run the ONNX
    graph) and matches ONNX Runtime on the same graph."""
    fake = load_fake_tensorrt(monkeypatch, version)
    out = tmp_path / "engines"
    res = CliRunner().invoke(app, ["export", str(fitted), "-o", str(out), "--format", "engine", "--half",
                                   "--workspace", "512"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["render.onnx", "refocus.onnx", "gd.onnx", "render.engine", "refocus.engine", "gd.engine",
                            "render_latent.npy", "allinfocus.npy", "refocus_bank.npy", "export.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # staging removed
    side = json.loads((out / "export.json").read_text())
    assert side["engine"]["half"] is True and side["engine"]["workspace_mib"] == 512
    assert side["engine"]["tensorrt"] == version and side["engine"]["fp32_layers"] > 0
    assert {g: e["engine"] for g, e in side["graphs"].items()} == {g: f"{g}.engine" for g in ("render", "refocus", "gd")}
    fp16 = side["verification_fp16"]
    assert "FP16" in fp16["method"] and set(fp16) == {"method", "render", "refocus", "gd"}
    for graph in ("render", "refocus", "gd"):
        assert fp16[graph]["passed"] and fp16[graph]["outputs"], fp16[graph]
        # FP16's rounding shows: much larger than the FP32 verification's, still small
        assert side["verification"][graph]["max_abs"] < fp16[graph]["max_abs"] < 1e-2
    assert "fp16     render" in res.output
    headers = {g: fake.read_engine((out / f"{g}.engine").read_bytes())[0] for g in ("render", "refocus", "gd")}
    assert all("FP16" in h["flags"] for h in headers.values()) and all(h["workspace"] == 512 << 20 for h in headers.values())
    assert headers["gd"]["fp32_layers"] and not headers["render"]["fp32_layers"]
    m = side["graphs"]["gd"]["multiple_of"]
    assert headers["gd"]["profile"]["pair"][0] == [1, 2, m, m]
    # the runtime's TensorRT backend on these engines, without torch
    stubs = tmp_path / "stubs"
    for name in ("torch", "edgedp"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported on the device')\n")
    env = dict(os.environ, FAKE_TENSORRT_VERSION=version,
               PYTHONPATH=os.pathsep.join([str(stubs), str(FAKES), str(FAKES / "broken_cuda_python"),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "edgedp_runtime", "render", str(out), "-o", str(tmp_path / "r"),
                           "--backend", "trt", "--npy"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"tensorrt {version}, CUDA binding pycuda" in proc.stdout
    import onnxruntime as ort

    ref = ort.InferenceSession(str(out / "render.onnx"), providers=["CPUExecutionProvider"]).run(
        ["left"], {"latent": np.load(out / "render_latent.npy")})[0]
    assert np.abs(np.load(tmp_path / "r" / "left.npy") - ref).max() <= 1e-6


@pytest.mark.parametrize("version", ["8.5.3.1", "10.3.0"])
def test_graphs_past_the_threshold_keep_their_tensors_in_external_data(fitted, tmp_path, monkeypatch, version):
    """Past schema.EXTERNAL_DATA_THRESHOLD (ONNX's 2 GB; monkeypatched to 4 KiB here) a graph is
    saved with its tensors in ``<graph>.onnx.data`` beside it: the sidecar lists the file, the
    .onnx is small, ONNX Runtime (by path) runs it to the export tolerance of PyTorch and to the
    same outputs as the embedded graph, the FP16 emulation reads the data, the fake TensorRT
    parses it from file (its parser loads the data beside the graph), the runtime refuses a
    graph whose data file is missing in one line; --overwrite below the threshold removes it."""
    import onnxruntime as ort

    from edgedp_runtime import schema

    embedded = tmp_path / "embedded"
    assert CliRunner().invoke(app, ["export", str(fitted), "-o", str(embedded)]).exit_code == 0
    monkeypatch.setattr(schema, "EXTERNAL_DATA_THRESHOLD", 4096)
    fake = load_fake_tensorrt(monkeypatch, version)
    out = tmp_path / "engines"
    res = CliRunner().invoke(app, ["export", str(fitted), "-o", str(out), "--format", "engine", "--half"])
    assert res.exit_code == 0, res.output
    side = json.loads((out / "export.json").read_text())
    for graph in ("render", "refocus"):
        onnx_path, data = out / f"{graph}.onnx", out / f"{graph}.onnx.data"
        assert side["graphs"][graph]["external_data"] == data.name and data.is_file()
        assert onnx_path.stat().st_size < data.stat().st_size
        assert onnx_path.stat().st_size < (embedded / f"{graph}.onnx").stat().st_size / 2
        model = onnx.load(str(onnx_path), load_external_data=False)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        assert "external_data" not in json.loads((embedded / "export.json").read_text())["graphs"][graph]
        verified = side["verification"][graph]
        assert verified["passed"] and verified["max_abs"] <= verified["atol"], verified
        assert side["verification_fp16"][graph]["passed"]
        assert ("parse", f"{graph}.onnx") in fake.RECORD
    latent = np.load(out / "render_latent.npy")
    got = ort.InferenceSession(str(out / "render.onnx"), providers=["CPUExecutionProvider"]).run(None, {"latent": latent})
    want = ort.InferenceSession(str(embedded / "render.onnx"), providers=["CPUExecutionProvider"]).run(None, {"latent": latent})
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    # the runtime (ONNX Runtime backend) loads the graph by path, and names a missing data file
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKES), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "edgedp_runtime", "render", str(out), "-o", str(tmp_path / "r"),
                           "--backend", "ort", "--npy"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(tmp_path / "r" / "left.npy") - want[0]).max() <= 1e-6
    (out / "render.onnx.data").rename(tmp_path / "moved.data")
    proc = subprocess.run([sys.executable, "-m", "edgedp_runtime", "render", str(out), "-o", str(tmp_path / "r2"),
                           "--backend", "ort", "--npy"], capture_output=True, text=True, env=env, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "render.onnx.data" in lines[0] and "Traceback" not in proc.stderr
    # re-exported below the threshold: no data file outlives the graph that used it
    monkeypatch.setattr(schema, "EXTERNAL_DATA_THRESHOLD", 2**31 - 2**26)
    (tmp_path / "moved.data").rename(out / "render.onnx.data")
    res = CliRunner().invoke(app, ["export", str(fitted), "-o", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert not list(out.glob("*.data")) and not list(out.glob("*.engine"))


def test_export_engine_without_tensorrt_or_gpu_writes_nothing(fitted, tmp_path, monkeypatch):
    """No TensorRT (or no GPU, or a failed build): one line, exit 2, OUT not created or left as it
    was, no staging folder left behind (the export battery found a half-finished folder)."""
    out = tmp_path / "x"
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    res = CliRunner().invoke(app, ["export", str(fitted), "-o", str(out), "--format", "engine"])
    one_line(res, "TensorRT is not installed")
    assert not out.exists()
    load_fake_tensorrt(monkeypatch, "10.3.0", gpus=0)
    res = CliRunner().invoke(app, ["export", str(fitted), "-o", str(out), "--format", "engine"])
    one_line(res, "no CUDA GPU")
    assert not out.exists()
    load_fake_tensorrt(monkeypatch, "10.3.0")
    monkeypatch.setenv("FAKE_TENSORRT_PARSE_ERROR", "In node 7 (Pad): shape tensor must have 0 or 1 reshape dimensions")
    out.mkdir()
    (out / "mine.txt").write_text("the user's file")
    res = CliRunner().invoke(app, ["export", str(fitted), "-o", str(out), "--format", "engine"])
    one_line(res, "ONNX parser failed", progress=True)
    assert f"{out}/render.onnx" in res.output and ".partial" not in res.output
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
