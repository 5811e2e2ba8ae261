"""The zero-shot fit on small synthetic scenes (kernel model different from the fit's)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from edgedp.errors import InputError
from edgedp.fit import FitConfig, disparity_per_radius, fit_scene, layer_radii, stage2_quadratic_form
from edgedp.physics import behind_radii, kernel_pyramid
from edgedp.fit import solve_latent_map
from edgedp.metrics import psnr
from edgedp.physics import blur_stack_fft
from edgedp.synth import SynthConfig, make_scene

FAST = FitConfig(stage2_iterations=150, stage3_iterations=0, kernel_model="disk")
"""The fit assumes translating-disk kernels; the scenes are rendered with Butterworth kernels."""


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _fit(scene, config=FAST):
    return fit_scene(scene.left[None], scene.right[None], config)


@pytest.fixture(scope="module")
def front_scene():
    # Rendered with Butterworth ("donut") kernels; the fit assumes the translating-disk model.
    return make_scene(SynthConfig(size=(161, 225), max_radius=5.0, kernel="butterworth", depth="smooth", seed=11))


@pytest.fixture(scope="module")
def front_fit(front_scene):
    return _fit(front_scene)


def test_front_scene_gains_3db_and_recovers_defocus(front_scene, front_fit):
    scene, result = front_scene, front_fit
    base = psnr(((scene.left + scene.right) / 2).numpy(), scene.allinfocus.numpy())
    ours = psnr(result.allinfocus[0].clamp(0, 1).numpy(), scene.allinfocus.numpy())
    assert ours >= base + 3.0, (base, ours)
    assert abs(spearman(result.defocus, scene.defocus)) >= 0.8
    assert result.focus == "behind"
    assert result.weights.shape[0] == result.radii.numel()
    assert torch.allclose(result.weights.sum(0), torch.ones(()), atol=1e-5)


def test_both_sides_scene(tmp_path):
    scene = make_scene(SynthConfig(size=(161, 225), max_radius=5.0, focus="both", depth="smooth", kernel="butterworth", seed=4))
    result = _fit(scene)
    assert result.focus == "both"  # decided from the data (auto)
    assert float(result.radii.min()) < 0 < float(result.radii.max())
    base = psnr(((scene.left + scene.right) / 2).numpy(), scene.allinfocus.numpy())
    ours = psnr(result.allinfocus[0].clamp(0, 1).numpy(), scene.allinfocus.numpy())
    assert ours >= base + 3.0, (base, ours)
    assert abs(spearman(result.defocus, scene.defocus)) >= 0.8


def test_same_seed_same_output(front_scene, front_fit):
    again = _fit(front_scene)
    assert torch.equal(again.allinfocus, front_fit.allinfocus)
    assert torch.equal(again.defocus, front_fit.defocus)


def test_blur_range_follows_the_disparity():
    # A measured disparity of 6.45 px means radius 10 under the default Butterworth model.
    per_radius = disparity_per_radius("butterworth", FitConfig().butterworth)
    assert per_radius == pytest.approx(0.645, abs=0.01)
    assert disparity_per_radius("disk", FitConfig().butterworth) == pytest.approx(0.5, abs=0.01)
    focus, radii = layer_radii(FitConfig(), 0.0, 10 * per_radius, "behind")
    assert focus == "behind" and float(radii.max()) == 10 and radii.numel() == 11
    focus, radii = layer_radii(FitConfig(), -3.0, 2.0, "both")
    assert focus == "both" and radii.numel() % 2 == 1 and float(radii.min()) == -float(radii.max())
    focus, radii = layer_radii(FitConfig(), float("nan"), float("nan"), "unknown")
    assert focus == "behind" and float(radii.max()) == 8


def test_radius_scale_scales_the_blur_range():
    # A device whose kernels blur 1.25x more per px of measured disparity (a profile's radius_scale).
    per_radius = disparity_per_radius("butterworth", FitConfig().butterworth)
    _, radii = layer_radii(FitConfig(radius_scale=1.25), 0.0, 8 * per_radius, "behind")
    assert float(radii.max()) == 10 and radii.numel() == 11
    # a fixed layer count (a profile's G_D) spreads over the capture's own range
    _, radii = layer_radii(FitConfig(radius_scale=1.25, layers=6), 0.0, 8 * per_radius, "behind")
    assert radii.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]


def test_warm_start_head_only_and_zero_steps(front_scene, front_fit):
    """``gd_train="head"`` moves only G_D's last convolution; 0 steps keep a warm start's weights
    exactly (and still fuse them with the likelihood into a valid partition of unity)."""
    config = dataclasses.replace(FAST, stage2_iterations=5, gd_train="head")
    head = fit_scene(front_scene.left[None], front_scene.right[None], config, gd_init=front_fit.gd_state)
    for key, value in head.gd_state.items():
        same = torch.equal(value, front_fit.gd_state[key])
        assert same == (not key.startswith("head.")), key
    frozen = fit_scene(front_scene.left[None], front_scene.right[None], dataclasses.replace(FAST, stage2_iterations=0),
                       gd_init=front_fit.gd_state)
    assert all(torch.equal(v, front_fit.gd_state[k]) for k, v in frozen.gd_state.items())
    stage2 = next(s for s in frozen.stages if s.name == "stage 2 defocus map")
    assert stage2.iterations == 0 and stage2.final_loss is None
    torch.testing.assert_close(frozen.weights.sum(0), torch.ones_like(frozen.weights[0]))
    base = psnr(((front_scene.left + front_scene.right) / 2).numpy(), front_scene.allinfocus.numpy())
    assert psnr(frozen.allinfocus[0].clamp(0, 1).numpy(), front_scene.allinfocus.numpy()) >= base + 3.0


def test_stage2_quadratic_form_equals_direct_loss():
    scene = make_scene(SynthConfig(size=(37, 53), max_radius=3.0, seed=2))
    views = torch.stack([scene.left, scene.right]).double()
    radii = behind_radii(3, 4, dtype=torch.float64)
    kernels = kernel_pyramid(radii, dtype=torch.float64)
    latent = solve_latent_map(views, kernels, 0.01)
    blurred = blur_stack_fft(latent[None], kernels)[0]
    gram, cross, const, layer_error = stage2_quadratic_form(views, latent, blurred, 4, 0.0)
    g = torch.Generator().manual_seed(0)
    d = torch.softmax(torch.randn(4, 10, 14, generator=g, dtype=torch.float64), 0)
    quad = (d * torch.einsum("ijhw,jhw->ihw", gram, d)).sum() - 2 * (cross * d).sum() + const
    full = d.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :37, :53]
    direct = ((full[None] * blurred).sum(1) - views).square().sum()
    assert float(quad) == pytest.approx(float(direct), rel=1e-9)
    one_hot_error = ((blurred[:, 2] - views).square()).sum()
    assert float(layer_error[2].sum()) == pytest.approx(float(one_hot_error), rel=1e-9)


def test_rgb_fit_applies_to_every_channel():
    scene = make_scene(SynthConfig(size=(97, 131), max_radius=4.0, seed=3))
    tint = torch.tensor([0.8, 1.0, 0.6])[:, None, None]
    left, right = scene.left[None] * tint, scene.right[None] * tint
    result = fit_scene(left, right, dataclasses.replace(FAST, stage2_iterations=30))
    assert result.allinfocus.shape == (3, 97, 131)
    assert result.latent.shape[:2] == (3, result.radii.numel())
    # Channels are scaled copies: the fitted all-in-focus keeps their ratios.
    ratio = (result.allinfocus[0] / result.allinfocus[1]).median()
    assert float(ratio) == pytest.approx(0.8, abs=0.02)


def test_mismatched_inputs_raise():
    with pytest.raises(InputError):
        fit_scene(torch.rand(1, 37, 53), torch.rand(1, 37, 55), FAST)
