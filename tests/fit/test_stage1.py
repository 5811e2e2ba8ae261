"""Stage 1 closed form, noise estimate, G_D plumbing."""

from __future__ import annotations

import pytest
import torch

from edgedp.fit import alphas_from_weights, fuse_with_likelihood
from edgedp.physics import behind_radii, kernel_pyramid
from edgedp.fit import solve_latent_map
from edgedp.physics import default_latent_reg, estimate_noise_sigma, gradient_spectrum
from edgedp.models import DefocusNet, alphas_from_logits, build_gd, gd_input, upsample_logits
from edgedp.physics import blur_stack_fft, over_weights
from edgedp.synth import dead_leaves


@pytest.fixture(scope="module")
def uniform_blur():
    x = dead_leaves((61, 83), seed=0).double()
    radii = behind_radii(4, 5, dtype=torch.float64)
    kernels = kernel_pyramid(radii, dtype=torch.float64)
    stack = x[None, None].expand(1, 5, *x.shape).contiguous()
    views = blur_stack_fft(stack, kernels)[0][:, 3]  # (2, H, W): radius 3 everywhere
    return x, kernels, views


def test_matching_layer_reblurs_exactly_and_is_sharpest(uniform_blur):
    x, kernels, views = uniform_blur
    latent = solve_latent_map(views, kernels, 1e-5)
    reblurred = blur_stack_fft(latent[None], kernels)[0]
    inner = (slice(None), slice(12, -12), slice(12, -12))
    errors = [float((reblurred[:, i] - views)[inner].square().mean()) for i in range(5)]
    assert min(range(5), key=errors.__getitem__) == 3
    assert errors[3] < 1e-5 and min(errors[i] for i in (0, 1, 2, 4)) > 10 * errors[3]
    # With a little regularization, layer 3 recovers the sharp image far better than the input.
    err_latent = float((solve_latent_map(views, kernels, 1e-3)[3] - x)[12:-12, 12:-12].square().mean())
    err_input = float((views.mean(0) - x)[12:-12, 12:-12].square().mean())
    assert err_latent < 0.5 * err_input


def test_batched_solution_equals_single(uniform_blur):
    _, kernels, views = uniform_blur
    single = solve_latent_map(views, kernels, 0.01)
    batched = solve_latent_map(torch.stack([views, views]), kernels, 0.01)
    assert torch.allclose(batched[1], single, atol=1e-12)


def test_gradient_spectrum_matches_fft_of_difference_operator():
    shape = (9, 12)
    dx = torch.zeros(shape, dtype=torch.float64)
    dx[0, 0], dx[0, -1] = 1, -1
    dy = torch.zeros(shape, dtype=torch.float64)
    dy[0, 0], dy[-1, 0] = 1, -1
    expected = torch.fft.rfft2(dx).abs() ** 2 + torch.fft.rfft2(dy).abs() ** 2
    assert torch.allclose(gradient_spectrum(shape, dtype=torch.float64), expected, atol=1e-12)


def test_noise_estimate_and_regularization_follow_the_noise():
    g = torch.Generator().manual_seed(1)
    # A smooth image: the estimator cancels locally linear signal, so what remains is the noise.
    yy, xx = torch.meshgrid(torch.arange(193, dtype=torch.float64), torch.arange(257, dtype=torch.float64), indexing="ij")
    clean = 0.5 + 0.2 * torch.sin(2 * torch.pi * yy / 40) * torch.cos(2 * torch.pi * xx / 50)
    for sigma in (0.002, 0.01):
        noisy = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
        assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.2)
    low = default_latent_reg(torch.stack([clean, clean]) + 0.002 * torch.randn(2, 193, 257, generator=g, dtype=torch.float64), floor=0, ceil=1)
    high = default_latent_reg(torch.stack([clean, clean]) + 0.008 * torch.randn(2, 193, 257, generator=g, dtype=torch.float64), floor=0, ceil=1)
    assert high / low == pytest.approx(16, rel=0.35)  # lam ~ sigma^2


def test_gd_shapes_and_uniform_start():
    net = DefocusNet(6, width=0.25)
    views = torch.rand(1, 2, 37, 53)
    inp = gd_input(views, 2)
    assert inp.shape == (1, 2, 24, 32)  # padded to multiples of 16, halved
    logits = net(inp)
    assert logits.shape == (1, 6, 3, 4)
    weights = over_weights(alphas_from_logits(upsample_logits(logits, (37, 53), 2)))
    assert weights.shape == (1, 6, 37, 53)
    assert torch.allclose(weights, torch.full_like(weights, 1 / 6), atol=1e-4)
    rebuilt = build_gd(net.config())
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(rebuilt(inp), logits)


def test_alphas_from_weights_inverts_over_operator():
    g = torch.Generator().manual_seed(0)
    alphas = torch.rand(5, 7, 9, generator=g, dtype=torch.float64)
    alphas[0] = 1
    weights = over_weights(alphas[None])[0]
    assert torch.allclose(alphas_from_weights(weights), alphas, atol=1e-10)


def test_fusion_sharpens_towards_the_layer_that_explains_the_data(uniform_blur):
    _, kernels, views = uniform_blur
    latent = solve_latent_map(views, kernels, 1e-4)
    blurred = blur_stack_fft(latent[None], kernels)[0]
    flat = torch.full((5, *views.shape[-2:]), 0.2, dtype=torch.float64)
    fused = fuse_with_likelihood(flat, blurred, views, 7)
    assert torch.allclose(fused.sum(0), torch.ones((), dtype=torch.float64))
    assert float(fused[3, 15:-15, 15:-15].mean()) > 0.6
