"""Tiled restoration (edgedp.fit.tiling): the tiled fit agrees with the whole-frame fit (>= 45 dB, no
seams along the cores' borders), every frame constant is the frame's, the on-disk store, the
plan against a budget, and the pieces (tile grid, the periodic domain of Stage 1, the region
up-sampling of G_D's logits).  The 16 MP fit under a budget is in tests/tools/test_bench_memory.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgedp.io import DiskArray
from edgedp.errors import InputError
from edgedp.fit import FitConfig, fit_scene
from edgedp.physics import LatentSolver
from edgedp.models import upsample_logits, upsample_logits_region
from edgedp.physics import fast_size
from edgedp.synth import SynthConfig, make_scene
from edgedp.fit import (
    TilingConfig,
    fit_within_budget,
    periodic_index,
    plan_fit,
    tile_grid,
)
from edgedp_runtime.memory import GIB, MemoryBudget

# A tiled fit does not estimate the kernel field (README "Large images"): the whole-frame fit it is
# compared with does not either.
CONFIG = FitConfig(stage2_iterations=8, kernel_estimation=None)
TILE = 96


def psnr_between(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def seam_ratio(diff: np.ndarray, tiles) -> float:
    """Mean |diff| on the two pixel rows / columns either side of every interior core border,
    over the mean |diff| two to six pixels away from it: about 1 without seams."""
    h, w = diff.shape
    d = np.abs(diff)
    rows = sorted({t.core[0] for t in tiles} - {0})
    cols = sorted({t.core[2] for t in tiles} - {0})
    at = np.concatenate([d[r - 1 : r + 1].ravel() for r in rows] + [d[:, c - 1 : c + 1].ravel() for c in cols])
    near = np.concatenate([np.concatenate([d[r - 6 : r - 2].ravel(), d[r + 2 : r + 6].ravel()]) for r in rows]
                          + [np.concatenate([d[:, c - 6 : c - 2].ravel(), d[:, c + 2 : c + 6].ravel()]) for c in cols])
    return float(at.mean() / max(near.mean(), 1e-12))


@pytest.fixture(scope="module")
def scene():
    """193 x 257, both sides of focus (negative and positive radii, 9 layers, 9 x 9 kernels)."""
    return make_scene(SynthConfig(size=(193, 257), max_radius=3.0, focus="both", seed=4))


@pytest.fixture(scope="module")
def whole(scene):
    return fit_scene(scene.left[None], scene.right[None], CONFIG)


@pytest.fixture(scope="module")
def tiled(scene):
    stages = []
    result = fit_within_budget(scene.left[None], scene.right[None], CONFIG, TilingConfig(tile=TILE, store="memory"),
                               progress=lambda s, i, n, loss: stages.append((s, i, n)))
    return result, stages


def test_tiled_agrees_with_the_whole_frame(scene, whole, tiled):
    result, stages = tiled
    plan = result.tiling
    assert plan["tiled"] and plan["tiles"] == 9 and plan["grid"] == [3, 3] and plan["core_px"] == TILE
    assert plan["margin_px"] == 72  # 8 kernel sizes of 9 px, rounded up to stage 2's 4 px blocks
    a, b = whole.allinfocus[0].numpy(), result.allinfocus[0].numpy()
    assert psnr_between(a, b) >= 45.0
    from edgedp.fit import tile_grid as grid

    cores = grid(193, 257, TILE, plan["margin_px"], 4)
    assert seam_ratio(b - a, cores) < 1.5
    assert float((whole.defocus - result.defocus).abs().mean()) < 0.01
    assert float((whole.weights - result.weights).abs().mean()) < 1e-3
    torch.testing.assert_close(result.weights.sum(0), torch.ones(193, 257), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.allinfocus, (result.latent * result.weights[None]).sum(1), atol=1e-5, rtol=0)
    # every frame constant is the frame's: lam, the TV weight, the layers
    assert result.config.latent_reg == whole.config.latent_reg
    assert result.config.deconvolution.tv_weight == whole.config.deconvolution.tv_weight
    assert torch.equal(result.radii, whole.radii) and result.focus == whole.focus == "both"
    # the "tiles" progress spans the three passes
    tile_steps = [(i, n) for s, i, n in stages if s == "tiles"]
    assert tile_steps[-1] == (27, 27) and len(tile_steps) == 27
    assert ("stage 2", CONFIG.stage2_iterations, CONFIG.stage2_iterations) in stages


def test_a_frame_within_the_budget_is_the_whole_frame_fit(scene, whole):
    result = fit_within_budget(scene.left[None], scene.right[None], CONFIG, budget=MemoryBudget(8 * GIB, "test"))
    assert result.tiling["tiled"] is False and result.tiling["budget"]["gib"] == 8
    assert torch.equal(result.allinfocus, whole.allinfocus) and torch.equal(result.weights, whole.weights)


def test_disk_store_holds_the_same_as_the_memory_store():
    scene = make_scene(SynthConfig(size=(97, 131), max_radius=2.0, seed=3))
    config = dataclasses.replace(CONFIG, stage2_iterations=4)
    memory = fit_within_budget(scene.left[None], scene.right[None], config, TilingConfig(tile=48, store="memory"))
    disk = fit_within_budget(scene.left[None], scene.right[None], config, TilingConfig(tile=48, store="disk"))
    assert disk.tiling["store"] == "disk" and memory.tiling["store"] == "memory"
    assert isinstance(disk.latent, DiskArray) and disk.latent.dtype == np.float16
    path = disk.latent.path
    assert torch.equal(disk.allinfocus, memory.allinfocus)  # computed in float32 either way
    for name in ("latent", "weights", "alphas"):
        got = np.asarray(getattr(disk, name)).astype(np.float32)
        want = getattr(memory, name).numpy()
        np.testing.assert_allclose(got, want, rtol=2**-10, atol=1e-6, err_msg=name)
    del disk
    import gc

    gc.collect()
    assert not path.exists() and not path.parent.exists()  # the scratch folder goes with the result


def test_rgb_tiled_agrees():
    scene = make_scene(SynthConfig(size=(97, 131), max_radius=2.0, seed=3))
    tint = torch.tensor([0.8, 1.0, 0.6])[:, None, None]
    left, right = scene.left[None] * tint, scene.right[None] * tint
    config = dataclasses.replace(CONFIG, stage2_iterations=4)
    whole = fit_scene(left, right, config)
    tiled = fit_within_budget(left, right, config, TilingConfig(tile=48, store="memory"))
    assert tiled.tiling["tiles"] == 9 and tiled.latent.shape == whole.latent.shape == (3, whole.radii.numel(), 97, 131)
    for c in range(3):
        assert psnr_between(whole.allinfocus[c].numpy(), tiled.allinfocus[c].numpy()) >= 45.0


def test_stage3_is_skipped_with_a_warning():
    scene = make_scene(SynthConfig(size=(61, 83), max_radius=2.0, seed=3))
    said = []
    config = dataclasses.replace(CONFIG, stage2_iterations=1, stage3_iterations=5)
    result = fit_within_budget(scene.left[None], scene.right[None], config, TilingConfig(tile=48), warn=said.append)
    assert result.patch_kernels is None and result.config.stage3_iterations == 0
    assert len(said) == 1 and "stage 3" in said[0] and "\n" not in said[0]
    assert said == result.tiling["notes"][-1:]


def test_plan_against_the_budget():
    config = FitConfig()
    small = plan_fit(1008, 1344, 1, 18, 35, config, budget=MemoryBudget(16 * GIB, "test"))
    assert not small.tiled and "whole frame" in small.reason
    big = plan_fit(4480, 6720, 3, 20, 41, config, budget=MemoryBudget(6 * GIB, "test"))
    assert big.tiled and big.store == "disk" and len(big.tiles) > 1
    assert big.estimate_tiled <= 6 * GIB and big.estimate_whole_frame > 6 * GIB
    assert big.gd_scale > config.gd_scale and big.stage2_block == 2 * big.gd_scale  # 4 blocks per G_D cell, as 2 / 4
    assert any("G_D scale" in note for note in big.notes)
    # a warm start training only G_D's head keeps the scale it was trained at while a coarser block suffices
    warm = plan_fit(4480, 6720, 1, 20, 41, config, budget=MemoryBudget(6 * GIB, "test"), warm_head=True)
    assert warm.gd_scale == config.gd_scale and warm.stage2_block > config.stage2_block
    with pytest.raises(InputError) as err:
        plan_fit(20000, 30000, 3, 40, 81, config, budget=MemoryBudget(GIB, "test"))
    assert "--max-memory" in str(err.value) and "\n" not in str(err.value)


def test_tile_grid_partitions_the_frame():
    tiles = tile_grid(193, 257, 64, 20, 4)
    seen = np.zeros((193, 257), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        seen[y0:y1, x0:x1] += 1
        assert y0 % 4 == 0 and x0 % 4 == 0 and y1 - y0 <= 64 and x1 - x0 <= 64
        sy0, sy1, sx0, sx1 = t.solve
        assert (sy0, sy1, sx0, sx1) == (y0 - 20, y1 + 20, x0 - 20, x1 + 20)
        assert t.outer == (max(0, sy0), min(193, sy1), max(0, sx0), min(257, sx1))
    assert (seen == 1).all()


def test_periodic_index_is_stage1s_padded_domain():
    """Position r of LatentSolver's replicate-padded, periodic FFT domain shows frame row
    periodic_index(r): checked against the padding LatentSolver builds."""
    h, k = 37, 9
    pad = k // 2 + 8
    hp = fast_size(h + 2 * pad)
    rows = torch.arange(h, dtype=torch.float32)
    padded = F.pad(rows[None, None, :, None], (0, 0, pad, hp - h - pad), mode="replicate")[0, 0, :, 0]
    r = torch.arange(-3 * hp, 3 * hp)
    want = padded[torch.remainder(r + pad, hp)]
    assert torch.equal(rows[periodic_index(-3 * hp, 3 * hp, h, pad, hp)], want)


def test_region_solver_reaches_the_whole_frame_solution(scene):
    """Stage 1 of a tile (a corner one: its solve region reaches past two borders of the frame)
    matches the whole frame's over its core, because it sees the frame's padded periodic domain
    there.  What is left is the cut at the margin's far edge, whose effect decays with the
    distance: at margin 96 the layers up to radius 2 agree to float32 rounding (their inverse
    filter is short), the widest ones (radius 4, 3) to ~1e-2, ~5e-4, falling as the margin grows
    (measured 4.9e-2, 1.2e-2, 6.1e-4 at 64, 96, 160).  The tiled fit's output agrees to >= 45 dB
    (test_tiled_agrees_with_the_whole_frame): the widest layers carry little weight and the
    deconvolution re-solves them."""
    from edgedp.fit import layer_radii
    from edgedp.physics import kernel_pyramid
    from edgedp.physics import default_latent_reg
    from edgedp.fit import RegionSolver

    views = torch.stack([scene.left, scene.right])
    _, radii = layer_radii(FitConfig(), -2.0, 2.0, "both")
    assert radii.tolist() == [-4, -3, -2, -1, 0, 1, 2, 3, 4]
    kernels = kernel_pyramid(radii)
    lam = default_latent_reg(views)
    full = LatentSolver(views, kernels, lam).solve()
    errors = {}
    for margin in (64, 96, 160):
        tile = tile_grid(193, 257, 96, margin, 4)[0]  # core 0:64 x 0:84, solve -margin:64+margin x ...
        got = RegionSolver(views, kernels, lam, tile).solve()
        assert tile.core == (0, 64, 0, 84) and got.shape[-2:] == (min(193, 64 + margin), min(257, 84 + margin))
        y0, y1, x0, x1 = tile.core
        errors[margin] = (tile.core_of(got) - full[:, y0:y1, x0:x1]).abs().amax(dim=(1, 2))
    inner = radii.abs() <= 2
    assert float(errors[96][inner].max()) < 1e-5
    assert float(errors[160][~inner].max()) < 1e-3
    for wide in (radii.abs() >= 3).nonzero().flatten().tolist():
        assert errors[64][wide] > 2 * errors[96][wide] > 4 * errors[160][wide], (wide, errors)


def test_upsample_logits_region_is_a_crop_of_the_whole():
    g = torch.Generator().manual_seed(0)
    for scale in (1, 2, 4):
        logits = torch.randn(1, 5, 7, 9, generator=g)
        h, w = 7 * 8 * scale - 5, 9 * 8 * scale - 3
        whole = upsample_logits(logits, (h, w), scale)
        for rows, cols in (((0, h), (0, w)), ((3, 40), (17, 50)), ((h - 9, h), (0, 1)), ((20, 21), (w - 30, w))):
            part = upsample_logits_region(logits, scale, rows, cols)
            torch.testing.assert_close(part, whole[..., rows[0] : rows[1], cols[0] : cols[1]], atol=1e-6, rtol=0)
