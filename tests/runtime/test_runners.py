"""The device runtime (``edgedp-runtime``, package ``edgedp_runtime`` in ``export/``) runs without
PyTorch, with ONNX Runtime (``--backend ort``) or TensorRT engines (``--backend trt``).

Tiny hand-built ONNX graphs (``onnx.helper``) mimic the exported graphs' I/O; the runtime runs in
a subprocess whose ``PYTHONPATH`` starts with stubs ``torch`` and ``edgedp`` that raise on import,
so any import of either fails the test.  The TensorRT backend runs against the fakes in
``tests/fakes`` (``tensorrt`` 8.5 / 10.x flavours, ``pycuda``, a broken cuda-python).  A last test
exports a real (tiny) fitted scene with the real exporter and runs the runtime on it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from edgedp_runtime import device_io  # noqa: E402  (numpy only)

REPO = Path(__file__).resolve().parents[2]
FAKES = Path(__file__).resolve().parents[1] / "fakes"

L, H, W = 3, 13, 21
MULT = 8


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _render_graph(path: Path) -> None:
    """left = mean over layers, right = max, allinfocus = min."""
    nodes = [
        helper.make_node("ReduceMean", ["latent"], ["left"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["latent"], ["right"], axes=[1], keepdims=1),
        helper.make_node("ReduceMin", ["latent"], ["allinfocus"], axes=[1], keepdims=1),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "render", [helper.make_tensor_value_info("latent", f, [1, L, H, W])],
        [helper.make_tensor_value_info(n, f, [1, 1, H, W]) for n in ("left", "right", "allinfocus")],
    )
    _save(graph, path)


def _refocus_graph(path: Path) -> None:
    """refocused = image * aperture + 0.01 * focus."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", f, [], [0.01])),
        helper.make_node("Mul", ["image", "aperture"], ["scaled"]),
        helper.make_node("Mul", ["focus", "c"], ["shift"]),
        helper.make_node("Add", ["scaled", "shift"], ["refocused"]),
    ]
    graph = helper.make_graph(
        nodes, "refocus",
        [helper.make_tensor_value_info("image", f, [1, 1, H, W]), helper.make_tensor_value_info("focus", f, []),
         helper.make_tensor_value_info("aperture", f, [])],
        [helper.make_tensor_value_info("refocused", f, [1, 1, H, W])],
    )
    _save(graph, path)


def _gd_graph(path: Path) -> None:
    """Dynamic H, W: defocus = 10 * (left - right), alphas = [left, right, left]."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Split", ["pair"], ["l", "r"], axis=1),
        helper.make_node("Sub", ["l", "r"], ["d"]),
        helper.make_node("Constant", [], ["ten"], value=helper.make_tensor("ten", f, [], [10.0])),
        helper.make_node("Mul", ["d", "ten"], ["defocus"]),
        helper.make_node("Concat", ["l", "r", "l"], ["alphas"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "gd", [helper.make_tensor_value_info("pair", f, [1, 2, "H", "W"])],
        [helper.make_tensor_value_info("alphas", f, [1, L, "H", "W"]),
         helper.make_tensor_value_info("defocus", f, [1, 1, "H", "W"])],
    )
    _save(graph, path)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    _render_graph(out / "render.onnx")
    _refocus_graph(out / "refocus.onnx")
    _gd_graph(out / "gd.onnx")
    rng = np.random.default_rng(0)
    np.save(out / "render_latent.npy", rng.uniform(0, 1, (1, L, H, W)).astype(np.float32))
    np.save(out / "allinfocus.npy", rng.uniform(0.1, 0.8, (1, 1, H, W)).astype(np.float32))
    sidecar = {
        "format": "edgedp-export", "format_version": 1, "edgedp_version": "0.0", "scene_id": "toy",
        "opset": 17, "height": H, "width": W, "layers": L, "kernel_size": 5, "radii": [0.0, 1.0, 2.0],
        "kernel_model": "toy", "input_normalization": "linear [0, 1]",
        "graphs": {
            "render": {"file": "render.onnx", "inputs": {"latent": [1, L, H, W]},
                       "outputs": {n: [1, 1, H, W] for n in ("left", "right", "allinfocus")},
                       "test_input": "render_latent.npy"},
            "refocus": {"file": "refocus.onnx", "inputs": {"image": [1, 1, H, W], "focus": [], "aperture": []},
                        "outputs": {"refocused": [1, 1, H, W]}, "test_input": "allinfocus.npy"},
            "gd": {"file": "gd.onnx", "inputs": {"pair": [1, 2, "H", "W"]},
                   "outputs": {"alphas": [1, L, "H", "W"], "defocus": [1, 1, "H", "W"]},
                   "dynamic": True, "multiple_of": MULT, "input_normalization": "linear [0, 1]"},
        },
        "verification": {},
    }
    (out / "export.json").write_text(json.dumps(sidecar))
    return out


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory) -> dict:
    """Environment in which ``import torch`` and ``import edgedp`` raise ImportError."""
    stubs = tmp_path_factory.mktemp("stubs")
    for name in ("torch", "edgedp"):
        (stubs / name).mkdir()
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported on the device')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(stubs) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(args: list, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m edgedp_runtime ARGS`` (the ``edgedp-runtime`` console script's code)."""
    return subprocess.run(
        [sys.executable, "-m", "edgedp_runtime", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120, cwd=cwd,
    )


def trt(args: list, env: dict) -> subprocess.CompletedProcess:
    return run([*args, "--backend", "trt"], env)


def read16(path: Path) -> np.ndarray:
    img = device_io.decode_png(path.read_bytes(), str(path))
    assert img.dtype == np.uint16
    return img.astype(np.float64) / 65535.0


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[-1], lines[-1]


def test_stub_really_blocks_torch(no_torch_env):
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=no_torch_env)
    assert proc.returncode != 0 and "must not be imported" in proc.stderr


def test_render_without_torch(bundle_dir, no_torch_env, tmp_path):
    out = tmp_path / "r"
    proc = run(["render", bundle_dir, "-o", out, "--provider", "cpu", "--repeat", "2"], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    # the providers that ran the nodes, from ONNX Runtime's profile of the first call
    assert "provider: render: 3 nodes ran on CPUExecutionProvider" in proc.stdout
    assert "time render: first" in proc.stdout
    latent = np.load(bundle_dir / "render_latent.npy")[0].astype(np.float64)
    for name, ref in (("left", latent.mean(0)), ("right", latent.max(0)), ("allinfocus", latent.min(0))):
        got = read16(out / f"{name}.png")
        assert got.shape == (H, W)
        assert np.abs(got - ref).max() <= 0.5 / 65535 + 1e-6
    # no overwrite without --overwrite; with it, fine
    again = run(["render", bundle_dir, "-o", out], no_torch_env)
    assert_one_line_error(again, "--overwrite")
    again = run(["render", bundle_dir, "-o", out, "--overwrite"], no_torch_env)
    assert again.returncode == 0, again.stderr


def test_refocus_focus_and_sweep(bundle_dir, no_torch_env, tmp_path):
    image = np.load(bundle_dir / "allinfocus.npy")[0, 0].astype(np.float64)
    proc = run(["refocus", bundle_dir, "-o", tmp_path, "--focus", 2, "--aperture", 0.5, "--npy"],
               no_torch_env)
    assert proc.returncode == 0, proc.stderr
    npy = np.load(tmp_path / "refocus_f2.00_a0.50.npy")
    assert npy.shape == (1, 1, H, W) and np.allclose(npy[0, 0], 0.5 * image + 0.02, atol=1e-6)
    got = read16(tmp_path / "refocus_f2.00_a0.50.png")
    assert np.abs(got - (0.5 * image + 0.02)).max() < 1e-4
    proc = run(["refocus", bundle_dir, "-o", tmp_path / "s", "--sweep", 3], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["sweep_00_f0.00_a1.00.png", "sweep_01_f1.00_a1.00.png", "sweep_02_f2.00_a1.00.png"]
    assert np.abs(read16(tmp_path / "s" / names[1]) - (image + 0.01)).max() < 1e-4
    bad = run(["refocus", bundle_dir, "-o", tmp_path / "x"], no_torch_env)
    assert_one_line_error(bad, "--focus")


def _png16(path: Path, image: np.ndarray) -> None:
    path.write_bytes(device_io.encode_png(image.astype(np.uint16)))


def test_predict_png_pair_pads_and_crops_back(bundle_dir, no_torch_env, tmp_path):
    rng = np.random.default_rng(1)
    h, w = 19, 30  # not multiples of 8: padded to 24x32, cropped back
    left = rng.integers(1000, 60000, (h, w))
    right = rng.integers(1000, 60000, (h, w))
    _png16(tmp_path / "l.png", left)
    _png16(tmp_path / "r.png", right)
    out = tmp_path / "o"
    args = ["predict", bundle_dir, tmp_path / "l.png", tmp_path / "r.png", "-o", out,
            "--black-level", 1000, "--white-level", 50000, "--save-alphas"]
    proc = run(args, no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert "predict 24x32" in proc.stdout
    defocus = np.load(out / "defocus.npy")
    assert defocus.shape == (1, 1, h, w)
    vl = np.clip((left - 1000) / 50000, 0, 1)
    vr = np.clip((right - 1000) / 50000, 0, 1)
    assert np.abs(defocus[0, 0] - 10 * (vl - vr)).max() < 1e-4
    assert np.load(out / "alphas.npy").shape == (1, L, h, w)
    rgb = device_io.decode_png((out / "defocus.png").read_bytes())
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    # crop mode: central 16x24
    proc = run([*args[:5], tmp_path / "c", "--fit", "crop"], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "c" / "defocus.npy").shape == (1, 1, 16, 24)


def test_predict_npy_and_shape_errors(bundle_dir, no_torch_env, tmp_path):
    a = np.full((16, 16), 0.75, np.float32)
    np.save(tmp_path / "l.npy", a)
    np.save(tmp_path / "r.npy", a * 0.5)
    proc = run(["predict", bundle_dir, tmp_path / "l.npy", tmp_path / "r.npy", "-o", tmp_path / "o"],
               no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert np.allclose(np.load(tmp_path / "o" / "defocus.npy"), 10 * 0.375, atol=1e-5)
    np.save(tmp_path / "r2.npy", np.zeros((16, 8), np.float32))
    bad = run(["predict", bundle_dir, tmp_path / "l.npy", tmp_path / "r2.npy", "-o", tmp_path / "p"],
              no_torch_env)
    assert_one_line_error(bad, "right view")
    np.save(tmp_path / "lat.npy", np.zeros((1, L + 1, H, W), np.float32))
    bad = run(["render", bundle_dir, "--latent", tmp_path / "lat.npy", "-o", tmp_path / "q"], no_torch_env)
    assert_one_line_error(bad, "does not match the graph input")
    bad = run(["predict", bundle_dir, tmp_path / "missing.png", tmp_path / "r.npy"], no_torch_env)
    assert_one_line_error(bad, "left view not found")


def test_bad_sidecar_and_missing_graph(bundle_dir, no_torch_env, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    side = json.loads((broken / "export.json").read_text())
    (broken / "export.json").write_text("{not json")
    assert_one_line_error(run(["render", broken, "-o", tmp_path / "a"], no_torch_env), "not valid JSON")
    (broken / "export.json").write_text(json.dumps({**side, "format_version": 99}))
    assert_one_line_error(run(["render", broken, "-o", tmp_path / "a"], no_torch_env), "format_version 99")
    (broken / "export.json").write_text(json.dumps({**side, "format": "other"}))
    assert_one_line_error(run(["render", broken, "-o", tmp_path / "a"], no_torch_env), "expected 'edgedp-export'")
    del side["graphs"]["gd"]
    (broken / "export.json").write_text(json.dumps(side))
    a = np.zeros((16, 16), np.float32)
    np.save(tmp_path / "v.npy", a)
    proc = run(["predict", broken, tmp_path / "v.npy", tmp_path / "v.npy", "-o", tmp_path / "a"], no_torch_env)
    assert_one_line_error(proc, "no 'gd' graph")
    (broken / "render.onnx").unlink()
    assert_one_line_error(run(["render", broken, "-o", tmp_path / "a"], no_torch_env), "render onnx file not found")
    assert_one_line_error(run(["render", tmp_path / "nowhere"], no_torch_env), "export folder not found")


def test_unwritable_output(bundle_dir, no_torch_env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run(["render", bundle_dir, "-o", blocker / "sub"], no_torch_env)
    assert_one_line_error(proc, "cannot create output folder")


def test_provider_fallback_warning(bundle_dir, no_torch_env, tmp_path):
    """Asking for CUDA / TensorRT on a CPU-only onnxruntime: one warning line each, and the report
    names the provider that really ran the nodes."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA provider present: no fallback to observe")
    for provider, name in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        proc = run(["render", bundle_dir, "-o", tmp_path / provider, "--provider", provider], no_torch_env)
        assert proc.returncode == 0, proc.stderr
        assert "provider: render: 3 nodes ran on CPUExecutionProvider" in proc.stdout
        warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(warnings) == 1 and warnings[0].startswith("warning: ") and name in warnings[0], proc.stderr
    # the TensorRT EP's options only with --provider tensorrt: on a CPU-only ORT it is not even
    # offered, so no engine cache folder is created either
    proc = run(["render", bundle_dir, "-o", tmp_path / "c", "--provider", "tensorrt", "--fp16",
                "--trt-cache", tmp_path / "cache"], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "cache").exists()


def test_placement_report_and_provider_options():
    """The provider list handed to ONNX Runtime (TensorRT EP with engine cache and FP16 options)
    and the report read from a profile trace: compute nodes off the requested provider warn,
    shape ops on the CPU beside CUDA do not."""
    from collections import Counter

    from edgedp_runtime import ort_backend as ob

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers, warning = ob.choose_providers("tensorrt", gpu, fp16=True, trt_cache=Path("/x/cache"))
    assert warning is None
    assert providers[0] == ("TensorrtExecutionProvider", {
        "trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": "/x/cache"})
    assert providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ob.choose_providers("auto", gpu)[0] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ob.choose_providers("auto", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], None)
    line, warning = ob.placement_report("gd", "cuda", "CUDAExecutionProvider",
                                        Counter(CUDAExecutionProvider=40, CPUExecutionProvider=3),
                                        Counter(CUDAExecutionProvider=38))
    assert line.startswith("provider: gd: 40 nodes ran on CUDAExecutionProvider, 3 on CPUExecutionProvider")
    assert warning is None  # only shape bookkeeping on the CPU
    line, warning = ob.placement_report("render", "tensorrt", "TensorrtExecutionProvider",
                                        Counter(TensorrtExecutionProvider=1, CUDAExecutionProvider=5),
                                        Counter(TensorrtExecutionProvider=1, CUDAExecutionProvider=5))
    assert warning.startswith("warning: requested tensorrt") and "5 of 6 compute nodes of render" in warning
    assert "\n" not in warning


def test_every_option_is_validated(bundle_dir, no_torch_env, tmp_path):
    """NaN / inf / out-of-range numbers and options of the other backend end in one line, exit 2,
    before anything is written (the export battery wrote an image for --focus nan)."""
    out = tmp_path / "o"
    a = np.zeros((16, 16), np.float32)
    np.save(tmp_path / "v.npy", a)
    pair = [bundle_dir, tmp_path / "v.npy", tmp_path / "v.npy", "-o", out]
    cases = [
        (["refocus", bundle_dir, "-o", out, "--focus", "nan"], "--focus: must be a finite number"),
        (["refocus", bundle_dir, "-o", out, "--focus", "inf"], "--focus: must be a finite number"),
        (["refocus", bundle_dir, "-o", out, "--focus", "1", "--aperture", "nan"], "--aperture: must be a finite number"),
        (["refocus", bundle_dir, "-o", out, "--focus", "1", "--aperture", "-1"], "--aperture: must be >= 0"),
        (["refocus", bundle_dir, "-o", out, "--sweep", "0"], "--sweep: must be >= 1"),
        (["refocus", bundle_dir, "-o", out, "--focus", "1", "--sweep", "2"], "exactly one of --focus"),
        (["predict", *pair, "--black-level", "nan"], "--black-level: must be a finite number"),
        (["predict", *pair, "--white-level", "0"], "--white-level: must be > 0"),
        (["predict", *pair, "--white-level", "inf"], "--white-level: must be a finite number"),
        (["predict", *pair, "--limit", "-2"], "--limit: must be > 0"),
        (["instant", *pair, "--crop", "10xq"], "expected HxW"),
        (["render", bundle_dir, "-o", out, "--repeat", "0"], "--repeat: must be >= 1"),
        (["render", bundle_dir, "-o", out, "--threads", "0"], "--threads: must be >= 1"),
        (["render", bundle_dir, "-o", out, "--cuda", "pycuda"], "--cuda is an option of --backend trt"),
        (["render", bundle_dir, "-o", out, "--backend", "trt", "--provider", "cpu"], "--provider is an option of --backend ort"),
        (["render", bundle_dir, "-o", out, "--fp16"], "add --provider tensorrt"),
        (["render", bundle_dir, "-o", out, "--trt-cache", tmp_path], "add --provider tensorrt"),
        (["render", bundle_dir, "-o", out, "--provider", "gpu"], "invalid choice"),
    ]
    for args, needle in cases:
        proc = run(args, no_torch_env)
        assert_one_line_error(proc, needle)
        assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr
    assert not out.exists()


def test_trt_runner_help_and_missing_runtime(bundle_dir, no_torch_env, tmp_path):
    for args in (["--help"], ["render", "--help"], ["predict", "--help"]):
        proc = run(args, no_torch_env)
        assert proc.returncode == 0, proc.stderr
        assert "usage: python -m edgedp_runtime" in proc.stdout
    assert "--backend" in run(["render", "--help"], no_torch_env).stdout
    # Probe the runners' own environment (a subprocess): this test process may hold the fake
    # tensorrt module other tests install, which says nothing about what the runner can import.
    probe = subprocess.run([sys.executable, "-c", "import tensorrt"], capture_output=True, text=True, env=no_torch_env)
    if probe.returncode == 0:
        pytest.skip("tensorrt is installed here: the missing-runtime path cannot be observed")
    proc = trt(["render", bundle_dir, "-o", tmp_path], no_torch_env)
    assert_one_line_error(proc, "TensorRT Python bindings not found")
    # sidecar problems are reported before the runtime check
    proc = trt(["render", tmp_path / "nowhere"], no_torch_env)
    assert_one_line_error(proc, "export folder not found")


def test_png_codec_roundtrip_without_cv2(tmp_path):
    """The built-in PNG writer/reader (used where OpenCV is absent), incl. filtered PNGs from OpenCV."""
    rng = np.random.default_rng(2)
    g16 = rng.integers(0, 65536, (7, 11)).astype(np.uint16)
    rgb8 = rng.integers(0, 256, (5, 9, 3)).astype(np.uint8)
    assert np.array_equal(device_io.decode_png(device_io.encode_png(g16)), g16)
    assert np.array_equal(device_io.decode_png(device_io.encode_png(rgb8)), rgb8)
    cv2 = pytest.importorskip("cv2")
    # OpenCV's encoder uses adaptive filters (Sub/Up/Average/Paeth): smooth content triggers them
    yy, xx = np.mgrid[0:23, 0:31]
    smooth = ((np.sin(xx / 3.0) + np.cos(yy / 4.0) + 2) * 16000).astype(np.uint16)
    ok, buf = cv2.imencode(".png", smooth)
    assert ok and np.array_equal(device_io.decode_png(buf.tobytes()), smooth)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR))
    assert ok and np.array_equal(device_io.decode_png(buf.tobytes()), rgb8)
    assert np.array_equal(cv2.imread(str(_write(tmp_path / "a.png", g16)), cv2.IMREAD_UNCHANGED), g16)


def _write(path: Path, array: np.ndarray) -> Path:
    path.write_bytes(device_io.encode_png(array))
    return path


def test_common_helpers():
    x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(1, 2, 5, 7)
    padded, size = device_io.pad_to_multiple(x, 4, "pad")
    assert padded.shape == (1, 2, 8, 8) and size == (5, 7)
    assert np.array_equal(padded[..., :5, :7], x) and np.array_equal(padded[..., 7, :7], x[..., 4, :])
    cropped, size = device_io.pad_to_multiple(x, 4, "crop")
    assert cropped.shape == (1, 2, 4, 4) and size == (4, 4)
    assert device_io.sweep_values([-2.0, 0.0, 4.0], 4) == [-2.0, 0.0, 2.0, 4.0]
    assert device_io.focus_tag(-1.5) == "m1.50"
    raw = np.array([0, 64, 1064, 70000], np.float32)
    assert np.allclose(device_io.normalize_raw(raw, 64, 1000, 16), [0, 0, 1, 1])


@pytest.mark.slow
def test_real_export_runs_without_torch(no_torch_env, tmp_path):
    """A real fitted scene, exported by the real exporter, re-rendered by run_onnx.py without torch."""
    # The checkout's own command (python -m edgedp from REPO), not whatever console script is
    # on PATH: a missing or broken exporter or command fails here instead of being skipped.
    edgedp = [sys.executable, "-m", "edgedp"]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    data, out = tmp_path / "d", tmp_path / "x"

    def sh(cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    sh([*edgedp, "synth", "-o", str(data), "--size", "97x131"])
    sh([*edgedp, "fit", str(data / "left.png"), str(data / "right.png"), "-o", str(data / "fit"),
        "--preset", "fast", "--iterations", "10"])
    sh([*edgedp, "export", str(data / "fit"), "--format", "onnx", "-o", str(out)])
    side = json.loads((out / "export.json").read_text())
    res = tmp_path / "res"
    proc = run(["render", out, "-o", res, "--provider", "cpu"], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    h, w = side["height"], side["width"]
    assert read16(res / "left.png").shape == (h, w)
    # the runner's PNG equals ORT's output (computed here, with the exporter's own test input)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "render.onnx"), providers=["CPUExecutionProvider"])
    ref = sess.run(["left"], {"latent": np.load(out / "render_latent.npy")})[0][0, 0]
    assert np.abs(read16(res / "left.png") - np.clip(ref, 0, 1)).max() <= 0.5 / 65535 + 1e-6
    proc = run(["refocus", out, "-o", res, "--sweep", 2], no_torch_env)
    assert proc.returncode == 0, proc.stderr
    if "gd" in side["graphs"]:
        m = side["graphs"]["gd"]["multiple_of"]
        proc = run(["predict", out, data / "left.png", data / "right.png", "-o", res], no_torch_env)
        assert proc.returncode == 0, proc.stderr
        d = np.load(res / "defocus.npy")
        assert d.shape[-2:] == (97, 131) and np.isfinite(d).all(), m


def test_runner_without_cv2(bundle_dir, no_torch_env, tmp_path):
    """With OpenCV unimportable the built-in PNG codec writes and reads the files."""
    stubs = tmp_path / "stubs"
    (stubs / "cv2").mkdir(parents=True)
    (stubs / "cv2" / "__init__.py").write_text("raise ImportError('no cv2 here')\n")
    env = dict(no_torch_env, PYTHONPATH=str(stubs) + os.pathsep + no_torch_env["PYTHONPATH"])
    rng = np.random.default_rng(3)
    left, right = rng.integers(0, 65536, (2, 16, 16))
    _png16(tmp_path / "l.png", left)
    _png16(tmp_path / "r.png", right)
    proc = run(["predict", bundle_dir, tmp_path / "l.png", tmp_path / "r.png", "-o", tmp_path / "o"], env)
    assert proc.returncode == 0, proc.stderr
    ref = 10 * (left - right) / 65535.0
    assert np.abs(np.load(tmp_path / "o" / "defocus.npy")[0, 0] - ref).max() < 1e-4
    assert device_io.decode_png((tmp_path / "o" / "defocus.png").read_bytes()).shape == (16, 16, 3)


# --- the TensorRT backend against the fakes in tests/fakes ---------------------------------------
# tensorrt (8.5 / 10.x flavours: name-based I/O, engines = ONNX run by onnxruntime), pycuda
# (primary context, "device memory" in a dict) and a cuda-python that is installed but fails.
def fake_env(base: dict, version: str = "8.5.3.1", broken_cuda_python: bool = True) -> dict:
    paths = [str(FAKES)] + ([str(FAKES / "broken_cuda_python")] if broken_cuda_python else [])
    return dict(base, FAKE_TENSORRT_VERSION=version, PYTHONPATH=os.pathsep.join(paths + [base["PYTHONPATH"]]))


@pytest.fixture(scope="module")
def fake_trt_env(no_torch_env) -> dict:
    return fake_env(no_torch_env)


def fake_engine(onnx_path: Path, engine_path: Path, profile: dict | None = None) -> None:
    spec = importlib.util.spec_from_file_location("fake_tensorrt", FAKES / "tensorrt" / "__init__.py")
    fake = importlib.util.module_from_spec(spec)  # tests/fakes/tensorrt, not an installed TensorRT
    spec.loader.exec_module(fake)
    engine_path.write_bytes(fake.engine_bytes(onnx_path.read_bytes(), {"profile": profile or {}}))


@pytest.fixture()
def engine_dir(bundle_dir, tmp_path) -> Path:
    out = tmp_path / "eng"
    shutil.copytree(bundle_dir, out)
    for name in ("render", "refocus"):
        fake_engine(out / f"{name}.onnx", out / f"{name}.engine")
    # gd.engine's optimization profile: up to 64 px wide
    fake_engine(out / "gd.onnx", out / "gd.engine", {"pair": [[1, 2, 8, 8], [1, 2, 16, 24], [1, 2, 64, 64]]})
    return out


def test_trt_runner_with_fake_tensorrt(engine_dir, fake_trt_env, tmp_path):
    latent = np.load(engine_dir / "render_latent.npy")[0].astype(np.float64)
    proc = trt(["render", engine_dir, "-o", tmp_path / "r", "--cuda", "pycuda", "--repeat", 2], fake_trt_env)
    assert proc.returncode == 0, proc.stderr
    assert "tensorrt 8.5.3.1, CUDA binding pycuda" in proc.stdout and "engine: render.engine" in proc.stdout
    assert np.abs(read16(tmp_path / "r" / "left.png") - latent.mean(0)).max() <= 0.5 / 65535 + 1e-6
    image = np.load(engine_dir / "allinfocus.npy")[0, 0].astype(np.float64)
    proc = trt(["refocus", engine_dir, "-o", tmp_path / "f", "--focus", -1, "--aperture", 2], fake_trt_env)
    assert proc.returncode == 0, proc.stderr
    assert np.abs(read16(tmp_path / "f" / "refocus_fm1.00_a2.00.png") - np.clip(2 * image - 0.01, 0, 1)).max() < 1e-4
    a = np.full((16, 24), 0.5, np.float32)
    np.save(tmp_path / "l.npy", a)
    np.save(tmp_path / "r.npy", a * 0.2)
    proc = trt(["predict", engine_dir, tmp_path / "l.npy", tmp_path / "r.npy", "-o", tmp_path / "p"], fake_trt_env)
    assert proc.returncode == 0, proc.stderr
    assert np.allclose(np.load(tmp_path / "p" / "defocus.npy"), 4.0, atol=1e-5)
    # outside the engine's profile (fake max width 64): one-line error naming the rebuild
    np.save(tmp_path / "wide.npy", np.zeros((16, 80), np.float32))
    proc = trt(["predict", engine_dir, tmp_path / "wide.npy", tmp_path / "wide.npy", "-o", tmp_path / "w"], fake_trt_env)
    assert_one_line_error(proc, "outside the engine's profile")
    # an engine TensorRT cannot deserialize, and a missing engine
    (engine_dir / "refocus.engine").write_bytes(b"junk")
    proc = trt(["refocus", engine_dir, "--focus", 0, "-o", tmp_path / "j"], fake_trt_env)
    assert_one_line_error(proc, "cannot deserialize")
    (engine_dir / "render.engine").unlink()
    proc = trt(["render", engine_dir, "-o", tmp_path / "m"], fake_trt_env)
    assert_one_line_error(proc, "build_engines.sh")


@pytest.mark.parametrize("version", ["8.5.3.1", "10.3.0"])
def test_trt_runner_falls_back_to_pycuda(engine_dir, no_torch_env, tmp_path, version):
    """cuda-python installed but unusable (CUDA error at start-up): --cuda auto falls back to
    pycuda (its primary context: the fake has autoprimaryctx and no autoinit); --cuda cuda-python
    stops with one line naming the CUDA error; with neither binding usable the line names both."""
    env = fake_env(no_torch_env, version)
    proc = trt(["render", engine_dir, "-o", tmp_path / "r"], env)
    assert proc.returncode == 0, proc.stderr
    assert f"tensorrt {version}, CUDA binding pycuda" in proc.stdout
    proc = trt(["render", engine_dir, "-o", tmp_path / "s", "--cuda", "cuda-python"], env)
    assert_one_line_error(proc, "cuda-python: CUDA error in cudaStreamCreate")
    no_pycuda = tmp_path / "nopycuda" / "pycuda"
    no_pycuda.mkdir(parents=True)
    (no_pycuda / "__init__.py").write_text("raise ImportError('no pycuda here')\n")
    env = dict(env, PYTHONPATH=os.pathsep.join([str(no_pycuda.parent), env["PYTHONPATH"]]))
    proc = trt(["render", engine_dir, "-o", tmp_path / "t"], env)
    assert_one_line_error(proc, "no usable CUDA Python binding (cuda-python: CUDA error")
    assert "pycuda: no pycuda here" in proc.stderr
