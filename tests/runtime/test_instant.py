"""export/instant.py (the numpy instant path) against the library's PyTorch code it ports:
Stage 1's latent map and noise-based regularization, the re-render error, the box filters, the
over operator and the likelihood fusion; and the whole instant prediction beating the blurry
input on a synthetic scene with the true compositing weights.  The runner subcommand end to end
is in tests/deploy/test_profile_export.py (it needs a profile export)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from edgedp.fit import alphas_from_weights, fuse_with_likelihood, layer_posterior
from edgedp.physics import kernel_pyramid
from edgedp.fit import FitConfig, solve_latent_map
from edgedp.physics import default_latent_reg, estimate_noise_sigma
from edgedp.metrics import psnr
from edgedp.physics import blur_stack_fft, over_weights
from edgedp.synth import SynthConfig, make_scene

from edgedp_runtime import instant  # noqa: E402  (numpy only)


@pytest.fixture(scope="module")
def scene():
    """A 45x61 synthetic DP capture, layers at radii 0..4, their kernels, lam."""
    sc = make_scene(SynthConfig(size=(45, 61), max_radius=4.0, num_planes=3, seed=3))
    views = torch.stack([sc.left, sc.right])
    radii = torch.arange(5.0)
    kernels = kernel_pyramid(radii)
    return sc, views, radii, kernels, default_latent_reg(views)


def test_latent_map_matches_torch(scene):
    _, views, _, kernels, lam = scene
    ref = solve_latent_map(views, kernels, lam).numpy()
    out, err = instant.solve_latent(views.numpy(), kernels.numpy(), lam)
    assert err is None and out.dtype == np.float32 and out.shape == (5, 45, 61)
    span = float(ref.max() - ref.min())
    assert np.abs(out - ref).max() <= 1e-4 * span
    # another padding and an odd size (37x53): same solve
    v = views[:, :37, :53].contiguous()
    ref = solve_latent_map(v, kernels, 0.01, pad=5).numpy()
    out, _ = instant.solve_latent(v.numpy(), kernels.numpy(), 0.01, pad=5)
    assert np.abs(out - ref).max() <= 1e-4 * float(ref.max() - ref.min())


def test_fast_size_and_gradient_spectrum_match_torch():
    from edgedp.physics import gradient_spectrum
    from edgedp.physics import fast_size

    for n in (1, 11, 37, 97, 1058, 1394):
        assert instant.fast_size(n) == fast_size(n)
        assert instant.fast_size(n, even=True) == fast_size(n, even=True)
    assert np.allclose(instant.gradient_spectrum((36, 50)), gradient_spectrum((36, 50)).numpy(), atol=1e-6)


def test_latent_reg_matches_torch(scene):
    _, views, _, _, lam = scene
    v = views.numpy()
    sigma = instant.estimate_noise_sigma(v.mean(0))
    assert sigma == pytest.approx(estimate_noise_sigma(views.mean(0)), rel=1e-3)
    assert sigma > 0
    assert instant.latent_reg(v) == pytest.approx(lam, rel=1e-3)
    assert instant.latent_reg(v, gain=40.0, floor=1e-4, ceil=1.0) == pytest.approx(
        default_latent_reg(views, gain=40.0, floor=1e-4, ceil=1.0), rel=1e-3
    )
    # smaller than one 16 px tile: the whole-image mean
    small = views[:, :12, :14].contiguous()
    assert instant.latent_reg(small.numpy()) == pytest.approx(default_latent_reg(small), rel=1e-3)


def test_rerender_error_matches_blurred_latent(scene):
    """``irfft2(X_i F_i^v - Y_v)`` is the re-render residual of the library's blur of x_i
    wherever the kernel does not reach the border (there the padded-grid solution is used)."""
    _, views, _, kernels, lam = scene
    latent, err = instant.solve_latent(views.numpy(), kernels.numpy(), lam, error=True)
    blurred = blur_stack_fft(torch.from_numpy(latent)[None], kernels)[0]
    ref = (blurred - views[:, None]).square().sum(0).numpy()
    m = kernels.shape[-1] // 2
    inner = (slice(None), slice(m, -m), slice(m, -m))
    assert np.abs(err[inner] - ref[inner]).max() <= 1e-4 * float(ref.max())
    # and near the border it is no worse on average (the padded-grid latent explains the margins)
    assert float(err.mean()) <= float(ref.mean()) * 1.001


def test_box_filters_match_torch_and_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    e = rng.random((3, 37, 53)).astype(np.float32)
    for window in (3, 15, 60):
        ref = torch.nn.functional.avg_pool2d(
            torch.from_numpy(e)[None], 2 * (window // 2) + 1, 1, window // 2, count_include_pad=False
        )[0].numpy()
        assert np.abs(instant.box_mean(e, window) - ref).max() <= 5e-6  # torch sums in float32
    img = rng.random((120, 150)) * 1000
    ref = cv2.blur(img, (101, 101), borderType=cv2.BORDER_REPLICATE)
    assert np.abs(instant.replicate_box_mean(img, 101) - ref).max() <= 1e-9 * 1000
    ref = cv2.blur(img, (5, 5), borderType=cv2.BORDER_REPLICATE)
    assert np.abs(instant.replicate_box_mean(img, 5) - ref).max() <= 1e-9 * 1000


def test_flat_field_gain_and_errors():
    left = np.full((60, 70), 1100.0) + np.linspace(0, 50, 70)[None]
    right = (left - 100.0) / 2 + 100.0  # half the signal above black 100
    gain = instant.flat_field_gain(left, right, 100.0)
    assert gain.shape == (60, 70) and np.allclose(gain, 2.0)
    with pytest.raises(instant.RunnerError, match="right frame has no signal"):
        instant.flat_field_gain(left, np.full((60, 70), 50.0), 100.0)


def test_over_weights_and_fusion_match_torch(scene):
    _, views, _, kernels, lam = scene
    g = torch.Generator().manual_seed(1)
    alphas = torch.rand(5, 45, 61, generator=g)
    alphas[0] = 1
    w_ref = over_weights(alphas[None])[0]
    w = instant.over_weights(alphas.numpy())
    assert np.abs(w - w_ref.numpy()).max() <= 1e-6
    assert np.allclose(w.sum(0), 1.0, atol=1e-5)
    latent = solve_latent_map(views, kernels, lam)
    blurred = blur_stack_fft(latent[None], kernels)[0]
    error = (blurred - views[:, None]).square().sum(0)
    for window in (1, 15):
        ref = fuse_with_likelihood(w_ref, blurred, views, window).numpy()
        out = instant.fuse_weights(w, error.numpy(), window)
        assert np.abs(out - ref).max() <= 1e-4
        assert np.allclose(out.sum(0), 1.0, atol=1e-5)
    post = layer_posterior(error, 15).numpy()  # G_D uniform: the likelihood alone
    out = instant.fuse_weights(np.full_like(w, 0.2), error.numpy(), 15)
    assert np.abs(out - post).max() <= 1e-4


def test_instant_predict_beats_blurry_input():
    """True compositing weights (hat interpolation of the true defocus between the integer radii
    of the layers) as G_D's output: the instant all-in-focus image is sharper than the input and
    the fused defocus map near the truth; with an uninformed G_D (uniform weights) the per-pixel
    likelihood alone does nearly as well."""
    sc = make_scene(SynthConfig(size=(97, 131), max_radius=5.0, depth="smooth", seed=11))
    radii = torch.arange(6.0)
    d = sc.defocus.clamp(0, 5)
    low = d.floor().long().clamp(0, 4)
    weights = torch.zeros(6, 97, 131)
    weights.scatter_(0, low[None], (1 - (d - low))[None])
    weights.scatter_add_(0, (low + 1)[None], (d - low)[None])
    alphas = alphas_from_weights(weights).numpy()
    views = torch.stack([sc.left, sc.right]).numpy()
    kernels = kernel_pyramid(radii).numpy()
    gt, true_defocus = sc.allinfocus.numpy(), sc.defocus.numpy()
    p_in = psnr(views.mean(0), gt)
    timings: dict = {}
    aif, defocus, fused = instant.instant_predict(views, alphas, kernels, radii.numpy(), timings=timings)
    assert aif.shape == defocus.shape == (97, 131) and fused.shape == (6, 97, 131)
    assert np.allclose(fused.sum(0), 1.0, atol=1e-5)
    assert psnr(np.clip(aif, 0, 1), gt) > p_in + 3.5, (psnr(np.clip(aif, 0, 1), gt), p_in)  # measured +4.1 dB
    assert np.abs(defocus - true_defocus).mean() < 0.3  # measured 0.20 px
    assert set(timings) == {"latent", "fuse", "deconvolution", "latent_reg"} and timings["latent_reg"] > 0
    # fusion off: G_D's weights exactly
    aif0, defocus0, w0 = instant.instant_predict(views, alphas, kernels, radii.numpy(), config=instant.InstantConfig(fuse_window=0))
    assert np.abs(w0 - weights.numpy()).max() <= 1e-5
    assert np.abs(defocus0 - true_defocus).max() <= 1e-4
    assert psnr(np.clip(aif0, 0, 1), gt) > p_in + 3.5
    # uninformed G_D: uniform weights, the likelihood decides
    uniform = alphas_from_weights(torch.full((6, 97, 131), 1 / 6)).numpy()
    aif_u, defocus_u, _ = instant.instant_predict(views, uniform, kernels, radii.numpy())
    assert psnr(np.clip(aif_u, 0, 1), gt) > p_in + 3.5
    assert np.abs(defocus_u - true_defocus).mean() < 0.35  # measured 0.25 px


def test_tv_deconvolution_matches_torch(scene):
    """The numpy half-quadratic splitting (gradient, shrinkage, TV weight, the target solve and
    the whole deconvolution) against edgedp.fit.deconvolution / edgedp.physics.fourier.LatentSolver."""
    from edgedp.fit import DeconvolutionConfig, deconvolve_layers, default_tv_weight, shrink_gradient
    from edgedp.physics import FiniteDifference, LatentSolver

    _, views, _, kernels, lam = scene
    g = torch.Generator().manual_seed(2)
    x = torch.rand(45, 61, generator=g)
    assert np.abs(instant.image_gradient(x.numpy()) - FiniteDifference.A(x).numpy()).max() <= 1e-6
    field = torch.randn(2, 45, 61, generator=g) * 0.1
    assert np.abs(instant.shrink_gradient(field.numpy(), 0.05) - shrink_gradient(field, 0.05).numpy()).max() <= 1e-6
    tv = default_tv_weight(views, lam)
    assert instant.tv_weight(views.numpy(), lam) == pytest.approx(tv, rel=1e-5)
    solver = LatentSolver(views, kernels, lam)
    ref = solver.solve(field, 0.02, [4, 1]).numpy()
    out, _ = instant.solve_latent(views.numpy(), kernels.numpy(), lam, target=field.numpy(), target_weight=0.02, layers=[4, 1])
    assert out.shape == (2, 45, 61) and np.abs(out - ref).max() <= 1e-4 * float(ref.max() - ref.min())
    weights = torch.softmax(torch.randn(5, 45, 61, generator=g) * 3, 0)
    latent = solver.solve()
    config = DeconvolutionConfig()
    ref = (deconvolve_layers(solver, latent, weights, lam, 10 * tv, config) * weights).sum(0).numpy()
    cfg = instant.InstantConfig(tv_iterations=config.iterations)  # the instant path's default: none
    assert (cfg.tv_beta_start, cfg.tv_beta_growth, cfg.tv_min_layer_weight) == (
        config.beta_start, config.beta_growth, config.min_layer_weight)
    got = instant.deconvolve_layers(views.numpy(), kernels.numpy(), latent.numpy().copy(), weights.numpy(), lam, 10 * tv, cfg)
    got = (got * weights.numpy()).sum(0)
    assert np.abs(got - ref).max() <= 1e-4 * float(ref.max() - ref.min())
    assert np.abs(got - (latent * weights).sum(0).numpy()).max() > 1e-3  # it did something
    # the instant path's default config takes no TV step: the latent map comes back unchanged
    kept = instant.deconvolve_layers(views.numpy(), kernels.numpy(), latent.numpy().copy(), weights.numpy(), lam, 10 * tv,
                                     instant.InstantConfig())
    assert np.array_equal(kept, latent.numpy())


def test_instant_predict_rejects_mismatched_shapes(scene):
    _, views, _, kernels, _ = scene
    alphas = np.ones((4, 45, 61), np.float32)
    with pytest.raises(instant.RunnerError, match="alphas"):
        instant.instant_predict(views.numpy(), alphas, kernels.numpy(), np.arange(5.0))
    with pytest.raises(instant.RunnerError, match="views"):
        instant.instant_predict(views.numpy()[:1], alphas, kernels.numpy(), np.arange(4.0))


def test_config_from_sidecar():
    cfg = instant.InstantConfig.from_sidecar(
        {"latent_reg": {"gain": 2.0, "floor": 1e-4, "ceil": 0.5}, "fuse_window": 9, "pad": 30, "weight_floor": 1e-5}
    )
    assert cfg == instant.InstantConfig(gain=2.0, floor=1e-4, ceil=0.5, fuse_window=9, pad=30, weight_floor=1e-5)
    cfg = instant.InstantConfig.from_sidecar({"deconvolution": {"iterations": 0, "beta_start": 0.5, "beta_growth": 3.0, "min_layer_weight": 0.01}})
    assert (cfg.tv_iterations, cfg.tv_beta_start, cfg.tv_beta_growth, cfg.tv_min_layer_weight) == (0, 0.5, 3.0, 0.01)
    assert instant.InstantConfig.from_sidecar({}) == instant.InstantConfig()
    with pytest.raises(instant.RunnerError, match="non-numeric"):
        instant.InstantConfig.from_sidecar({"fuse_window": "wide"})


def test_view_gain_map_matches_torch():
    from edgedp.physics import view_gain_map

    coefficients = (0.17, 0.01, 0.02, -0.02, 0.33, -0.02, -0.08, -0.01, -0.01, -0.23)
    ref = view_gain_map(coefficients, 37, 53).numpy()
    got = instant.view_gain_map(coefficients, 37, 53)
    assert got.shape == (37, 53) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert got[18, 52] > got[18, 0]  # positive u coefficient: brighter gain to the right
    with pytest.raises(instant.RunnerError, match="10 coefficients"):
        instant.view_gain_map(coefficients[:6], 37, 53)


# --- per-cell kernels (a kernel field) ----------------------------------------------------------
def _field_kernels(grid, radii, size=None):
    """Per-cell layer kernels (Pr, Pc, 2, L, K, K) float32 of tests/test_kernel_field.py's
    asymmetric analytic field (split line and stretch vary over the columns, radius over the rows)."""
    from tests.physics.test_kernel_field import analytic_field

    from edgedp.physics import field_layer_kernels

    field = analytic_field(grid, 5.0, 17).to(dtype=torch.float32)
    return field_layer_kernels(field, radii, 0.6, size).float().contiguous()


@pytest.fixture(scope="module")
def patch_case():
    """61x83 random views, radii 0..4, a 2x3 asymmetric field's layer kernels (K = 13), lam."""
    g = torch.Generator().manual_seed(0)
    views = torch.rand(2, 61, 83, generator=g)
    pk = _field_kernels((2, 3), [0.0, 1.0, 2.0, 3.0, 4.0], 13)
    return views, pk, 0.01, g


def test_tents_match_torch():
    from edgedp.physics import patch_blend_weights, support_spans, tent_weights

    for n, parts in ((61, 2), (83, 3), (7, 7), (5, 1)):
        assert np.array_equal(instant.tent_weights(n, parts), tent_weights(n, parts).numpy())
        assert instant.support_spans(instant.tent_weights(n, parts)) == support_spans(tent_weights(n, parts))
    assert np.array_equal(instant.patch_blend_weights((61, 83), (2, 3)), patch_blend_weights((61, 83), (2, 3)).numpy())
    with pytest.raises(instant.RunnerError, match="cannot split 4 pixels into 5 patches"):
        instant.tent_weights(4, 5)


def whole_frame_solve(views, kernels, lam, layers, target=None, target_weight=0.0):
    """Stage 1 on the whole replicate-padded frame (the uniform solve_latent's algorithm, which
    test_latent_map_matches_torch checks): latent (l, H, W) and per-view residuals (2, l, H, W)."""
    h, w = views.shape[1:]
    p = kernels.shape[-1] // 2 + 8
    hp, wp = instant.fast_size(h + 2 * p), instant.fast_size(w + 2 * p, even=True)
    widths = ((p, hp - h - p), (p, wp - w - p))
    yf = np.fft.rfft2(np.pad(views.astype(np.float64), ((0, 0),) + widths, mode="edge"))
    num0 = 0
    if target is not None:
        zf = np.fft.rfft2(np.pad(target.astype(np.float64), ((0, 0),) + widths))
        gx, gy = instant.gradient_operator_spectra((hp, wp))
        num0 = target_weight * (np.conj(gx) * zf[0] + np.conj(gy) * zf[1])
    g2 = (lam + target_weight) * instant.gradient_spectrum((hp, wp)).astype(np.float64)
    latent, residual = [], []
    for i in layers:
        f = instant.kernel_spectrum(kernels[:, i], (hp, wp)).astype(np.complex128)
        x = (np.conj(f[0]) * yf[0] + np.conj(f[1]) * yf[1] + num0) / ((np.abs(f) ** 2).sum(axis=0) + g2)
        latent.append(np.fft.irfft2(x, s=(hp, wp))[p : p + h, p : p + w])
        residual.append([np.fft.irfft2(x * f[v] - yf[v], s=(hp, wp))[p : p + h, p : p + w] for v in range(2)])
    return np.stack(latent), np.stack(residual, axis=1)


def blended_reference(views, pk, lam, labels, layers=None, **solve):
    """What solve_latent_grouped approximates, computed directly: per group the whole-frame solve
    with the mean of its cells' kernels, blended with the sum of its cells' tents
    (patch_blend_weights); the error from the blended per-view residuals."""
    layers = range(pk.shape[3]) if layers is None else layers
    tents = instant.patch_blend_weights(views.shape[1:], labels.shape, np.float64)
    latent = residual = 0
    for g in range(int(labels.max()) + 1):
        weight = tents[labels == g].sum(axis=0)
        x, r = whole_frame_solve(views, pk[labels == g].mean(axis=0), lam, layers, **solve)
        latent, residual = latent + weight * x, residual + weight * r
    return latent, (residual**2).sum(axis=0)


def test_grouped_solver_blends_the_groups_solutions(patch_case):
    """solve_latent_grouped (each group solved on its window, margin K + 8) against the whole-frame
    solves of each group blended by the tents (:func:`blended_reference`), on an odd size with
    six different asymmetric cells; the re-render error blends the groups' residuals the same
    way.  Measured max abs difference of the latent 9.1e-4, of the error 3.2e-4 (latents span
    about 3.8; largest where a window's cut edge or the image border is nearest), asserted < 2e-3
    and < 1e-3; with windows as large as the image (margin 80) 5.1e-7 and 2.3e-7, asserted < 1e-5."""
    views, pk, lam, _ = patch_case
    v, k = views.numpy(), pk.numpy()
    labels = instant.kernel_groups(k)
    assert labels.tolist() == [[0, 1, 2], [3, 4, 5]]  # every cell its own kernels
    latent, err = instant.solve_latent(v, k, lam, error=True)
    assert latent.dtype == err.dtype == np.float32 and latent.shape == err.shape == (5, 61, 83)
    ref, ref_err = blended_reference(v, k, lam, labels)
    assert np.abs(latent - ref).max() < 2e-3
    assert np.abs(err - ref_err).max() < 1e-3
    wide, wide_err = instant.solve_latent_grouped(v, k, lam, labels, margin=80, error=True)
    assert np.abs(wide - ref).max() < 1e-5 and np.abs(wide_err - ref_err).max() < 1e-5
    uniform, _ = instant.solve_latent(v, k.mean(axis=(0, 1)), lam)
    assert np.abs(latent - uniform).max() > 1e-2  # the cells' kernels matter
    # fewer groups: the merged groups' mean kernels, blended the same way
    two = instant.kernel_groups(k, 2)
    assert sorted(np.unique(two).tolist()) == [0, 1]
    merged, _ = instant.solve_latent(v, k, lam, groups=two)
    assert np.abs(merged - blended_reference(v, k, lam, two)[0]).max() < 2e-3
    # one group is the uniform solve with the field's mean kernels, bit for bit
    one, _ = instant.solve_latent(v, k, lam, groups=np.zeros((2, 3), np.int64))
    assert np.array_equal(one, uniform)


def test_grouped_solver_with_a_target_and_threads(patch_case):
    """The TV step's target term in the grouped solve, against the blended reference (asserted as
    the solve without it); the layer threads do not change the result (bit for bit)."""
    views, pk, lam, g = patch_case
    v, k = views.numpy(), pk.numpy()
    labels = instant.kernel_groups(k)
    z = (torch.randn(2, 61, 83, generator=g) * 0.1).numpy()
    out, _ = instant.solve_latent(v, k, lam, target=z, target_weight=0.02, layers=[4, 1])
    ref, _ = blended_reference(v, k, lam, labels, target=z, target_weight=0.02, layers=[4, 1])
    assert out.shape == (2, 61, 83) and np.abs(out - ref).max() < 2e-3
    one, err1 = instant.solve_latent(v, k, lam, error=True, threads=1)
    three, err3 = instant.solve_latent(v, k, lam, error=True, threads=3)
    assert np.array_equal(one, three) and np.array_equal(err1, err3)


def test_kernel_groups_merge_the_closest_cells():
    """Identical cells share a group; beyond max_groups Ward merging joins the closest kernels
    first; labels are numbered by first cell; bad labels are one RunnerError."""
    base = _field_kernels((1, 3), [0.0, 2.0], 9).numpy()  # three different cells
    near = base[0, 0] + 1e-3 * (base[0, 1] - base[0, 0])  # almost cell 0
    pk = np.stack([np.stack([base[0, 2], near, base[0, 0], base[0, 1]]), np.stack([base[0, 2]] * 2 + [base[0, 0]] * 2)])
    assert instant.kernel_groups(pk).tolist() == [[0, 1, 2, 3], [0, 0, 2, 2]]
    assert instant.kernel_groups(pk, 4).tolist() == [[0, 1, 2, 3], [0, 0, 2, 2]]
    assert instant.kernel_groups(pk, 3).tolist() == [[0, 1, 1, 2], [0, 0, 1, 1]]  # `near` joins cell 0's kernels
    assert instant.kernel_groups(pk, 1).tolist() == [[0] * 4] * 2
    views = np.random.default_rng(0).random((2, 23, 31)).astype(np.float32)
    with pytest.raises(instant.RunnerError, match="labels must be"):
        instant.solve_latent_grouped(views, pk, 0.01, np.array([[0, 2, 2, 2], [0, 0, 0, 0]]))


def test_group_windows_cover_the_image():
    """The windows' weights are a partition of unity over the image, each inside its support; a
    group in two places of the frame gets a window per place (cells touching by a corner are one
    place)."""
    for labels, groups in (([[0, 0, 1], [2, 1, 1]], [0, 1, 2]), ([[0, 1, 0, 2], [1, 1, 1, 0]], [0, 0, 1, 2])):
        total = np.zeros((37, 53))
        windows = instant.group_windows(37, 53, np.array(labels), 4, 3)
        assert [grp.group for grp in windows] == groups
        for grp in windows:
            r0, r1, c0, c1 = grp.support
            a0, a1, b0, b1 = grp.window
            assert a0 <= r0 and r1 <= a1 and b0 <= c0 and c1 <= b1 and grp.weight.shape == (r1 - r0, c1 - c0)
            assert grp.padded[0] >= a1 - a0 + 6 and grp.padded[1] % 2 == 0
            total[r0:r1, c0:c1] += grp.weight
        assert np.allclose(total, 1, atol=1e-6)


def test_kernel_support_trims_only_zero_taps():
    k = np.zeros((2, 4, 13, 13), np.float32)
    k[0, 0, 6, 6] = 1
    k[1, 1, 6, 3] = k[1, 1, 9, 6] = 0.5
    assert [instant.kernel_support(k[:, i]) for i in range(4)] == [1, 7, 1, 1]
    shape = (40, 54)
    for i in range(2):
        t = instant.trim_kernels(k[:, i])
        assert t.sum() == k[:, i].sum()
        full = instant.kernel_spectrum(k[:, i], shape)
        assert np.abs(instant.kernel_spectrum(t, shape) - full).max() < 1e-5


def _elliptic_pair(rx: float, ry: float, split: float, size: int, supersample: int = 8) -> torch.Tensor:
    """A behind pair (2, size, size): an ellipse of semi-axes ``rx``, ``ry`` px cut by the line
    ``x = split``, left view the part left of it, right view the rest (asymmetric unless split = 0)."""
    u = (torch.arange(size * supersample, dtype=torch.float64) + 0.5) / supersample - size / 2
    y, x = u[:, None], u[None, :]
    inside = (x / rx) ** 2 + (y / ry) ** 2 <= 1
    out = []
    for keep in (x < split, x > split):
        k = (inside & keep).double().reshape(size, supersample, size, supersample).sum((1, 3))
        out.append(k / k.sum())
    return torch.stack(out)


def test_instant_predict_with_a_field_beats_its_mean_kernels():
    """A 161x215 scene rendered patchwise with a known asymmetric 2x3 field whose vertical spread
    runs from 0.35 to 1.8 times the horizontal one across the columns (split line +-1.5 px over
    the rows), true compositing weights as G_D's output: the instant path with the field's
    per-cell kernels beats the same with their mean.  Measured: +3.46 dB over the input with the
    field (its six cells solved apart and blended), +2.18 dB with the mean kernels."""
    from edgedp.fit.pipeline import disparity_per_radius
    from edgedp.physics import KernelField, field_layer_kernels, behind_radii, recentre_pair, render_dual_pixel_patchwise
    from edgedp.synth import dead_leaves, layered_defocus

    size, radius = (161, 215), 4
    sharp = dead_leaves(size, seed=3)
    defocus = layered_defocus(size, [3.5, 0.5, 2.0, 4.0], seed=3)
    radii = behind_radii(radius, radius + 1)
    weights = (1 - (defocus[None] - radii[:, None, None]).abs()).clamp(min=0)
    weights = weights / weights.sum(0, keepdim=True)
    pairs = torch.stack([torch.stack([_elliptic_pair(6.0, 6.0 * ry, 1.5 * sign, 17) for ry in (0.35, 1.0, 1.8)])
                         for sign in (1, -1)])
    field = KernelField(recentre_pair(pairs), "analytic").to(dtype=torch.float32)
    pk = field_layer_kernels(field, radii, disparity_per_radius("butterworth", FitConfig().butterworth))
    views = render_dual_pixel_patchwise(sharp.expand(1, radius + 1, *size).contiguous(), weights[None], pk)[0]
    views = (views + 0.005 * torch.randn(views.shape, generator=torch.Generator().manual_seed(0))).numpy()
    gt = sharp.reshape(size).numpy()
    alphas = alphas_from_weights(weights).numpy()
    p_in = psnr(views.mean(0), gt)
    gains = {}
    for name, kernels in (("field", pk.numpy()), ("mean", pk.mean((0, 1)).numpy())):
        aif, est, fused = instant.instant_predict(views, alphas, kernels, radii.numpy())
        assert np.allclose(fused.sum(0), 1.0, atol=1e-5)
        gains[name] = psnr(np.clip(aif, 0, 1), gt) - p_in
        assert np.abs(est - defocus.numpy()).mean() < 0.3  # measured 0.18 (field), 0.12 (mean) px
    assert gains["field"] > gains["mean"] + 0.8, gains
    with pytest.raises(instant.RunnerError, match=r"per cell \(Pr, Pc, 2, 5, K, K\)"):
        instant.instant_predict(views, alphas, pk[:, :, :, :4].numpy(), radii.numpy())
