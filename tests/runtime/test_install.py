"""``pip install ./export`` into a fresh virtual environment WITHOUT torch gives a working
``edgedp-runtime``: render, refocus, predict and instant on real exports (written here by the
real exporters), each output equal to ONNX Runtime's on the same graph.

The fresh venv is a plain ``python -m venv`` (no ``--system-site-packages``: nothing of this
interpreter's or the system's packages is visible in it), numpy and onnxruntime come from the
package index (pip's cache makes that fast), the runtime from a copy of ``export/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgedp_runtime import device_io  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def fresh_runtime(tmp_path_factory) -> Path:
    """``bin/`` of a fresh venv with ``pip install ./export[ort]`` and nothing else."""
    root = tmp_path_factory.mktemp("fresh")
    src = root / "export"
    shutil.copytree(REPO / "export", src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    base = getattr(sys, "_base_executable", None) or shutil.which("python3")
    sh([base, "-m", "venv", root / "venv"], cwd=root)
    bin_dir = root / "venv" / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    sh([bin_dir / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q", f"{src}[ort]"], env=env, cwd=root)
    return bin_dir


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A scene export (render, refocus, gd) and a profile export (gd + kernels), real exporters."""
    from edgedp.deploy import export_scene
    from edgedp.formats import save_profile
    from edgedp.deploy import export_profile
    from tests.deploy.test_onnx_gd import gd_bundle
    from tests.deploy.test_profile_export import tiny_profile

    root = tmp_path_factory.mktemp("exports")
    bundle = gd_bundle(root / "scene", layers=4)
    export_scene(bundle, root / "scene_export", verify=False)
    export_profile(save_profile(tiny_profile(), root / "PHONE.profile"), root / "profile_export", verify=False)
    return root / "scene_export", root / "profile_export"


@pytest.mark.slow
def test_runtime_without_torch_in_a_fresh_venv(fresh_runtime, exports, tmp_path):
    scene, profile = exports
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = fresh_runtime / "python"
    # really without torch and edgedp, and not this interpreter's site-packages; run from a
    # folder outside the checkout (python puts the working folder on sys.path)
    run_in = {"env": env, "cwd": tmp_path}
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, **run_in)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    probe = subprocess.run([str(python), "-c", "import edgedp"], capture_output=True, text=True, **run_in)
    assert probe.returncode != 0 and "No module named 'edgedp'" in probe.stderr
    where = sh([python, "-c", "import edgedp_runtime, numpy; print(edgedp_runtime.__file__); print(numpy.__file__)"], **run_in)
    assert all(str(fresh_runtime.parent) in line for line in where.stdout.split())
    runtime = fresh_runtime / "edgedp-runtime"
    assert runtime.is_file()
    out = tmp_path / "out"

    proc = sh([runtime, "render", scene, "-o", out / "render", "--npy", "--provider", "cpu"], **run_in)
    assert "provider: render:" in proc.stdout
    sess = ort.InferenceSession(str(scene / "render.onnx"), providers=["CPUExecutionProvider"])
    ref = dict(zip(["left", "right", "allinfocus"], sess.run(None, {"latent": np.load(scene / "render_latent.npy")})))
    for name, value in ref.items():
        assert np.abs(np.load(out / "render" / f"{name}.npy") - value).max() <= 1e-6

    sh([runtime, "refocus", scene, "-o", out / "refocus", "--focus", "1.5", "--aperture", "2", "--npy"], **run_in)
    sess = ort.InferenceSession(str(scene / "refocus.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"image": np.load(scene / "allinfocus.npy"), "focus": np.array(1.5, np.float32), "aperture": np.array(2.0, np.float32)}
    assert np.abs(np.load(out / "refocus" / "refocus_f1.50_a2.00.npy") - sess.run(None, feeds)[0]).max() <= 1e-6

    side = json.loads((scene / "export.json").read_text())
    h, w = side["height"], side["width"]
    rng = np.random.default_rng(0)
    views = [(rng.uniform(0.2, 0.8, (h, w)) * 65535).astype(np.uint16) for _ in range(2)]
    for name, view in zip(("l.png", "r.png"), views):
        (tmp_path / name).write_bytes(device_io.encode_png(view))
    sh([runtime, "predict", scene, tmp_path / "l.png", tmp_path / "r.png", "-o", out / "predict"], **run_in)
    defocus = np.load(out / "predict" / "defocus.npy")
    assert defocus.shape == (1, 1, h, w) and np.isfinite(defocus).all()

    sh([runtime, "instant", profile, tmp_path / "l.png", tmp_path / "r.png", "-o", out / "instant", "--npy"], **run_in)
    aif = np.load(out / "instant" / "allinfocus.npy")
    assert aif.shape == (h, w) and np.isfinite(aif).all()
    from edgedp_runtime import instant

    pair = np.stack(views).astype(np.float32) / 65535
    direct = instant.run_instant(profile, pair)  # this interpreter's runtime on the same input
    assert np.abs(direct["allinfocus"] - aif).max() <= 1e-4
