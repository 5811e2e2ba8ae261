"""A camera-sized fit within a memory budget (issue 11, item 1): a 16 MP synthetic gray pair
fitted by ``edgedp fit --max-memory 3`` in a subprocess is tiled and its peak RSS stays under
the budget.  The pair is tools/bench_memory.py's (one synthetic scene mirror-tiled to the size).
The fast mirror-tiling and frame-size helpers are checked without the fit."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_memory", REPO / "tools" / "bench_memory.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

GIB = 2**30


def test_mirror_tiling_keeps_the_disparity_sign():
    """Rows mirror as they are; at a column mirror the views swap, so the right view stays the
    left one shifted right (disparity > 0) in every copy."""
    rng = np.random.default_rng(0)
    left = rng.random((20, 30)).astype(np.float32)
    right = np.roll(left, 2, axis=1)  # x_right = x_left + 2
    big_left, big_right = bench.mirror_tile(left, right, 50, 75)
    assert big_left.shape == big_right.shape == (50, 75) and big_left.dtype == np.float32
    assert np.array_equal(big_left[:20, :30], left) and np.array_equal(big_left[20:40, :30], left[::-1])
    # in the mirrored column block the right view is the left one moved by +2 px too
    block_l, block_r = big_left[:20, 30:60], big_right[:20, 30:60]
    assert np.array_equal(block_r[:, 4:-4], block_l[:, 2:-6])
    h, w = bench.frame_size(16)
    assert abs(h * w / 1e6 - 16) < 0.05 and abs(w / h - 4 / 3) < 0.01


@pytest.mark.slow
def test_16_megapixel_fit_is_tiled_within_the_budget(tmp_path):
    budget_gib = 3.0
    h, w = bench.frame_size(16)
    left0, right0 = bench.base_scene(seed=1, max_radius=2.0)  # few layers: ~10 min on 2 cores
    views = bench.mirror_tile(left0, right0, h, w)
    np.save(tmp_path / "left.npy", views[0])
    np.save(tmp_path / "right.npy", views[1])
    del views
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgedp", "fit", str(tmp_path / "left.npy"), str(tmp_path / "right.npy"), "-o", str(out),
           "--preset", "fast", "--iterations", "3", "--max-memory", f"{budget_gib:g}"]
    with open(tmp_path / "stderr", "w") as err:
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / "stderr").read_text()[-2000:]
    report = json.loads((out / "report.json").read_text())
    memory = report["memory"]
    assert memory["tiled"] and memory["tiles"] > 1 and memory["budget"]["gib"] == budget_gib
    assert memory["estimate_whole_frame_gib"] > budget_gib  # it had to tile
    assert report["peak_rss_bytes"] < budget_gib * GIB
    assert usage.ru_maxrss * 1024 < budget_gib * GIB  # the child's whole life, writing the outputs too
    for name in ("allinfocus.png", "defocus.npy", "preview.png", "scene/scene.npz", "scene/scene.json"):
        assert (out / name).is_file(), name
    defocus = np.load(out / "defocus.npy", mmap_mode="r")
    assert defocus.shape == (h, w) and np.isfinite(defocus[:: 64, :: 64]).all()
    meta = json.loads((out / "scene" / "scene.json").read_text())
    assert meta["format_version"] == 2 and meta["arrays"]["latent"]["dtype"] == "float16"
    assert meta["arrays"]["latent"]["shape"][-2:] == [h, w]
