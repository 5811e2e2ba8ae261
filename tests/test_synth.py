"""The DP simulator: determinism, sign conventions, in-focus regions, kernel sources."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from edgedp.physics import estimate_disparity
from edgedp.physics import dp_kernel_pair
from edgedp.synth import SynthConfig, dead_leaves, make_scene

SMALL = SynthConfig(size=(97, 131), max_radius=5.0, seed=5)


def test_same_seed_same_scene_and_different_seed_differs():
    a, b = make_scene(SMALL), make_scene(SMALL)
    c = make_scene(dataclasses.replace(SMALL, seed=6))
    for name in ("left", "right", "allinfocus", "defocus"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.left, c.left)


def test_dead_leaves_range_and_texture():
    img = dead_leaves((61, 83), seed=1)
    assert img.shape == (61, 83)
    assert 0.03 <= float(img.min()) and float(img.max()) <= 0.95
    assert float(img.std()) > 0.1  # not flat


def test_front_scene_signs():
    scene = make_scene(SMALL)
    assert float(scene.defocus.min()) >= 0.0
    assert float(scene.defocus.max()) == pytest.approx(5.0)
    blurred = scene.defocus > 1
    assert bool((scene.disparity[blurred] > 0).all())  # behind the focal plane: positive disparity
    lo, hi = scene.params["disparity_range_px"]
    assert 0 <= lo < hi


def test_both_scene_has_both_signs():
    scene = make_scene(dataclasses.replace(SMALL, focus="both", depth="smooth"))
    assert float(scene.defocus.min()) == pytest.approx(-5.0)
    assert float(scene.defocus.max()) == pytest.approx(5.0)
    assert bool((scene.disparity[scene.defocus < -1] < 0).all())
    assert bool((scene.disparity[scene.defocus > 1] > 0).all())


def test_noise_free_in_focus_region_is_sharp():
    cfg = dataclasses.replace(SMALL, noise_std=0.0, shot_noise=0.0, depth="smooth")
    scene = make_scene(cfg)
    # Pixels whose whole neighbourhood is in focus (r < 0.25 px) are reproduced almost exactly.
    sharp_zone = scene.defocus < 0.05
    assert sharp_zone.sum() > 0
    err = (scene.left - scene.allinfocus).abs()[sharp_zone]
    assert float(err.median()) < 0.02
    # while strongly blurred regions are not
    assert float((scene.left - scene.allinfocus).abs()[scene.defocus > 4].mean()) > 0.01


def test_left_right_shift_matches_recorded_disparity():
    cfg = SynthConfig(size=(161, 225), max_radius=8.0, depth="smooth", seed=2)
    scene = make_scene(cfg)
    est = estimate_disparity(scene.left, scene.right)
    true = scene.disparity
    assert est.side == "behind"
    assert abs(est.median - float(true.median())) < 0.6


def test_disk_and_spatially_varying_and_file_kernels_render():
    disk = make_scene(dataclasses.replace(SMALL, kernel="disk"))
    varying = make_scene(dataclasses.replace(SMALL, spatially_varying=True))
    pair = dp_kernel_pair(5.0)  # (2, 11, 11): Butterworth at radius 5 as "user" kernels
    from_file = make_scene(dataclasses.replace(SMALL, kernel="file", noise_std=0.0, shot_noise=0.0), kernels=pair)
    reference = make_scene(dataclasses.replace(SMALL, noise_std=0.0, shot_noise=0.0))
    for scene in (disk, varying, from_file):
        assert torch.isfinite(scene.left).all() and scene.left.shape == (97, 131)
    assert not torch.allclose(disk.left, reference.left, atol=1e-3)
    # User kernels equal to the parametric model reproduce the parametric scene closely
    # (only the resampling of intermediate radii differs).
    assert float((from_file.left - reference.left).abs().mean()) < 0.01


def test_grid_file_kernels():
    pair = dp_kernel_pair(4.0)
    grid = pair[:, None, None].expand(2, 2, 3, 9, 9).contiguous()
    scene = make_scene(dataclasses.replace(SMALL, kernel="file", max_radius=4.0, noise_std=0.0, shot_noise=0.0), kernels=grid)
    single = make_scene(dataclasses.replace(SMALL, kernel="file", max_radius=4.0, noise_std=0.0, shot_noise=0.0), kernels=pair)
    assert torch.allclose(scene.left, single.left, atol=1e-4)


def test_load_kernel_file_refuses_in_one_line(tmp_path):
    import numpy as np

    from edgedp.errors import InputError
    from edgedp.synth import load_kernel_file

    good = np.zeros((2, 5, 5), np.float32)
    good[:, 2, 2] = 1
    np.save(tmp_path / "good.npy", good)
    assert tuple(load_kernel_file(tmp_path / "good.npy").shape) == (2, 5, 5)
    for name, array, words in [("even.npy", np.ones((2, 4, 4), np.float32), "odd K"),
                               ("neg.npy", -good, "non-negative")]:
        np.save(tmp_path / name, array)
        with pytest.raises(InputError, match=words):
            load_kernel_file(tmp_path / name)
    with pytest.raises(InputError, match="not found"):
        load_kernel_file(tmp_path / "missing.npy")


def test_synth_rules_live_in_the_library(tmp_path):
    from edgedp.errors import InputError, OutputError
    from edgedp.synth import SYNTH_FILES, synth_config, synth_transfer, write_synth_capture

    assert synth_transfer(" SRGB ") == "srgb"
    with pytest.raises(InputError, match="synth writes linear or srgb"):
        synth_transfer("auto")
    config, kernels = synth_config(size="33x41", focus=None, transfer="srgb", kernel="disk", max_radius=2.0)
    assert (config.size, config.focus, config.kernel, kernels) == ((33, 41), "both", "disk", None)
    assert synth_config(size="33x41", focus=None, transfer="linear", kernel="disk")[0].focus == "behind"
    with pytest.raises(InputError, match="max_radius"):
        synth_config(size="33x41", focus=None, transfer="linear", kernel="disk", max_radius=-1.0)
    out, scene = write_synth_capture(tmp_path / "s", config, transfer="srgb")
    assert sorted(p.name for p in out.iterdir()) == sorted(SYNTH_FILES)
    assert scene.params["files"] == {"views": "8-bit sRGB", "gt_allinfocus": "16-bit sRGB"}
    with pytest.raises(OutputError, match="use --overwrite"):
        write_synth_capture(out, config, transfer="srgb")
