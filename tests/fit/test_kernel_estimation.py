"""The kernel field's estimation from a DP pair alone (edgedp.fit.kernel_estimation)."""

import dataclasses

import pytest
import torch

from edgedp.fit import FitConfig, fit_scene
from edgedp.fit.kernel_estimation import (
    FieldEstimationConfig,
    FieldEvidence,
    estimate_kernel_field,
    tilted_field,
    working_scale,
)
from edgedp.metrics import psnr
from edgedp.physics.kernel_field import spread_ratio
from edgedp.physics.kernels import kernel_centroid, tilted_kernel_pair

SIZE, RADIUS = (121, 181), 5
TRUE_TILTS = (0.6, 0.0, -0.6)  # per column of a 2 x 3 grid: brighter towards the frame's centre


@pytest.fixture(scope="module")
def tilted_scene():
    """121 x 181 behind scene rendered patchwise with a known tilted field (2 x 3 cells, tilt_x
    +0.6 / 0 / -0.6 from left to right, as the Pixel 4 calibration's), layered defocus 1.5 .. 5
    px, noise std 0.003."""
    from tests.physics.test_kernel_field import render_field_scene

    tilts = torch.tensor([[[t, 0.0] for t in TRUE_TILTS]] * 2, dtype=torch.float64)
    field = tilted_field(tilts, float(RADIUS))
    scene = render_field_scene(field, SIZE, RADIUS, [4.5, 1.5, 3.0, 5.0], seed=5, noise=0.003, noise_seed=1,
                               kernel_size=2 * RADIUS + 1)
    return {"views": scene["views"], "sharp": scene["sharp"], "field": field, "radii": scene["radii"], "dpr": scene["dpr"]}


def test_tilted_pair_is_the_parametric_pair_without_tilt_and_asymmetric_with_it():
    from edgedp.physics import dp_kernel_pair, mirror_kernel

    assert torch.allclose(tilted_kernel_pair(6.0, 0.0, 0.0), dp_kernel_pair(6.0), atol=1e-6)
    pair = tilted_kernel_pair(6.0, 0.6, 0.0, size=17, dtype=torch.float64)
    assert float((pair[1] - mirror_kernel(pair[0])).abs().sum()) > 0.1  # not mirror images
    # A positive tilt brightens the right of the aperture: the common centroid moves right, and the
    # left view's kernel (the left half) is spread wider than the right view's.
    assert float(kernel_centroid(pair.sum(0))[1]) > 0.3
    field = tilted_field(torch.tensor([[[0.6, 0.0], [-0.6, 0.0]]]), 6.0)
    ratio = spread_ratio(field)
    assert float(ratio[0, 0]) > 1.05 and float(ratio[0, 1]) < 0.95
    assert float(kernel_centroid(field.pairs.sum(2)).abs().max()) < 1e-3  # recentred
    with pytest.raises(ValueError, match="tilt"):
        tilted_kernel_pair(6.0, 1.0)


def test_estimator_recovers_the_true_tilts_of_a_synthetic_field(tilted_scene):
    """Full resolution (scale 1): the scene is small, the half-resolution default is for camera
    frames; cells alone (no neighbours: on a 2 x 3 grid every cell neighbours most others).  Each
    column's tilt is recovered to one candidate step (0.3), the outer columns' exactly (the middle
    column's cells are blended half with each outer column's by the rendering's tents: measured 0
    and -0.3)."""
    config = FieldEstimationConfig(grid=(2, 3), tilts_x=(-0.6, -0.3, 0.0, 0.3, 0.6), tilts_y=(0.0,), scale=1, neighbour_weight=0.0)
    est = estimate_kernel_field(tilted_scene["views"], tilted_scene["radii"], tilted_scene["dpr"], config)
    truth = torch.tensor([list(TRUE_TILTS)] * 2, dtype=torch.float64)
    assert float((est.tilts[..., 0] - truth).abs().max()) <= 0.3 + 1e-9, est.tilts[..., 0].tolist()
    assert torch.equal(est.tilts[:, [0, 2], 0], truth[:, [0, 2]]), est.tilts[..., 0].tolist()
    assert est.field.source == "estimated" and est.field.grid == (2, 3)
    # The evidence prefers the truth clearly: in every cell the true candidate's normalised residual
    # is below the symmetric candidate's (the mirror-symmetric model) except where they coincide.
    ratio = est.evidence.residual / est.evidence.energy  # (C, 2, 3)
    index = {round(float(c[0]), 2): i for i, c in enumerate(est.evidence.candidates)}
    for col, t in enumerate(TRUE_TILTS):
        if t != 0.0:
            assert bool((ratio[index[t], :, col] < 0.95 * ratio[index[0.0], :, col]).all())


@pytest.mark.slow
def test_fit_with_the_estimated_field_beats_the_symmetric_fit(tilted_scene):
    """Measured (torch 2.13 CPU, 40 Stage-2 steps): the symmetric parametric fit 19.23 dB, the fit
    with the estimated field 19.36 (+0.13), with the true field 19.55 (+0.32)."""
    views, sharp = tilted_scene["views"], tilted_scene["sharp"]
    base = FitConfig(max_radius=float(RADIUS), stage2_iterations=40, patches=(2, 3))
    estimated = dataclasses.replace(base, kernel_estimation=FieldEstimationConfig(grid=(2, 3), scale=1, neighbour_weight=0.0))
    sym = fit_scene(views[0:1], views[1:2], dataclasses.replace(base, kernel_estimation=None))
    est = fit_scene(views[0:1], views[1:2], estimated)
    true = fit_scene(views[0:1], views[1:2], base, kernel_field=tilted_scene["field"])
    p_sym, p_est, p_true = (psnr(r.allinfocus[0], sharp) for r in (sym, est, true))
    assert p_est > p_sym + 0.08, (p_sym, p_est, p_true)
    assert p_true > p_est > p_true - 0.3, (p_sym, p_est, p_true)  # between the symmetric fit and knowing the field
    assert est.kernel_field["source"] == "estimated" and sym.kernel_field is None
    assert any(s.name == "kernel field estimation" for s in est.stages)


def test_evidence_pooling_normalising_and_neighbours():
    cands = torch.tensor([[-0.5, 0.0], [0.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
    # Cell (0, 0) is textureless (no energy); its neighbours prefer candidate 2.
    residual = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.5], [0.5, 0.5]], [[0.0, 0.1], [0.1, 0.1]]], dtype=torch.float64)
    energy = torch.ones(3, 2, 2, dtype=torch.float64)
    energy[:, 0, 0] = 0
    ev = FieldEvidence(cands, residual, energy)
    assert ev.choose(0.5)[0, 0].tolist() == [0.5, 0.0]  # follows its neighbours
    assert ev.choose(0.5)[1, 1].tolist() == [0.5, 0.0]
    n = ev.normalised()
    assert torch.isclose(n.energy.sum(), torch.tensor(3.0, dtype=torch.float64))
    both = ev.combined(ev, 2.0)
    assert torch.allclose(both.residual, 3 * residual) and torch.allclose(both.energy, 3 * energy)
    with pytest.raises(ValueError, match="different"):
        ev.combined(FieldEvidence(cands[:2], residual[:2], energy[:2]))


def test_working_scale_keeps_the_largest_layers():
    views = torch.rand(2, 37, 53, generator=torch.Generator().manual_seed(0))
    small, radii = working_scale(views, torch.arange(0.0, 9.0), 2)
    assert small.shape == (2, 18, 26)
    assert radii.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # 8, 6, 4, 2 and the in-focus 0, halved
    same, r1 = working_scale(views, torch.arange(0.0, 3.0), 1)
    assert same is views and r1.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("bad", [dict(grid=(0, 2)), dict(tilts_x=(1.0,)), dict(tilts_y=()), dict(scale=0), dict(neighbour_weight=-1)])
def test_estimation_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        FieldEstimationConfig(**bad)


def test_tv_step_with_a_field_follows_field_iterations(tilted_scene):
    """DeconvolutionConfig.field_iterations: a fit with a field runs that many TV steps (3 by
    default) and none with ``field_iterations=0`` (recording 0 iterations); without a field it
    runs ``iterations`` (6)."""
    from edgedp.fit import DeconvolutionConfig

    views = tilted_scene["views"]
    base = FitConfig(max_radius=float(RADIUS), stage2_iterations=2, patches=(2, 3))
    field_cfg = dataclasses.replace(base, kernel_estimation=FieldEstimationConfig(grid=(2, 3), scale=1, tilts_y=(0.0,)))
    asked = fit_scene(views[0:1], views[1:2], field_cfg)
    skipped = fit_scene(views[0:1], views[1:2], dataclasses.replace(field_cfg, deconvolution=DeconvolutionConfig(field_iterations=0)))
    plain = fit_scene(views[0:1], views[1:2], dataclasses.replace(base, kernel_estimation=None))
    names = [[s.name for s in r.stages] for r in (skipped, asked, plain)]
    assert "stage 4 deconvolution" not in names[0] and skipped.config.deconvolution.iterations == 0
    assert "stage 4 deconvolution" in names[1] and asked.config.deconvolution.iterations == 3
    assert "stage 4 deconvolution" in names[2] and plain.kernel_field is None
    assert plain.config.deconvolution.iterations == 6 and plain.stages[-1].iterations == 6
    # Without the step the output is Stage 1's composite with the fitted weights.
    from edgedp.fit import FIELD_GROUPS, GroupedLatentSolver

    latent = GroupedLatentSolver(views, skipped.patch_kernels, float(skipped.config.latent_reg), max_groups=FIELD_GROUPS).solve()
    torch.testing.assert_close(skipped.allinfocus[0], (latent * skipped.weights).sum(0), atol=1e-5, rtol=0)
