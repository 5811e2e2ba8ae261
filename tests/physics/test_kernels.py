"""Tests for edgedp.physics.kernels: parametric DP kernels, pyramids and kernel resampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgedp.physics import (
    ButterworthParams,
    both_radii,
    dp_kernel_pair,
    behind_radii,
    kernel_centroid,
    kernel_disparity,
    kernel_pyramid,
    mirror_kernel,
    resize_kernel,
    swap_focus_side,
)

MODELS = ["butterworth", "disk"]


def _pad_to(k: torch.Tensor, size: int) -> torch.Tensor:
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p))


def _rms_radius(k: torch.Tensor) -> float:
    """sqrt of the second moment about the centre pixel, of one (K, K) kernel."""
    c = torch.arange(k.shape[-1], dtype=k.dtype) - k.shape[-1] // 2
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    return float(((k * r2).sum() / k.sum()).sqrt())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("radius", [0.3, 1.0, 2.5, 7.0, -4.0])
def test_pair_nonnegative_normalised_and_mirrored(model, radius):
    pair = dp_kernel_pair(radius, model)
    assert pair.dtype == torch.float32
    assert (pair >= 0).all()
    torch.testing.assert_close(pair.sum(dim=(-2, -1)), torch.ones(2), atol=1e-6, rtol=0)
    # Symmetric DP model: right is the left kernel rotated by 180 degrees.
    torch.testing.assert_close(pair[1], mirror_kernel(pair[0]), atol=1e-7, rtol=0)
    assert not torch.allclose(pair[0], pair[1], atol=1e-3)


def test_float64_and_device_follow_arguments():
    pair = dp_kernel_pair(3.3, dtype=torch.float64, device="cpu")
    assert pair.dtype == torch.float64 and pair.device.type == "cpu"
    torch.testing.assert_close(pair.sum(dim=(-2, -1)), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
    pyr = kernel_pyramid([0, 1, 2], dtype=torch.float64, device=torch.device("cpu"))
    assert pyr.dtype == torch.float64 and pyr.device.type == "cpu"
    half = dp_kernel_pair(2.0, dtype=torch.float16)
    assert half.dtype == torch.float16
    k = dp_kernel_pair(4.0, dtype=torch.float64)
    assert resize_kernel(k, 0.5, 5).dtype == torch.float64
    assert behind_radii(3, 4, dtype=torch.float64).dtype == torch.float64
    assert both_radii(3, 3, dtype=torch.float64).dtype == torch.float64


def test_front_back_flip_swaps():
    front, back = dp_kernel_pair(5.0), dp_kernel_pair(-5.0)
    torch.testing.assert_close(back, swap_focus_side(front), atol=0, rtol=0)
    torch.testing.assert_close(back[0], front[1], atol=0, rtol=0)
    torch.testing.assert_close(swap_focus_side(swap_focus_side(front)), front, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("radius", "size"), [(0.0, 1), (0.2, 3), (1.0, 3), (1.01, 5), (2.5, 7), (17.0, 35), (-3.4, 9)]
)
def test_default_size(radius, size):
    assert dp_kernel_pair(radius).shape == (2, size, size)


def test_size_override_and_validation():
    small = dp_kernel_pair(2.0)
    big = dp_kernel_pair(2.0, size=11)
    assert big.shape == (2, 11, 11)
    torch.testing.assert_close(big, _pad_to(small, 11), atol=1e-7, rtol=0)
    for bad in (10, 4, 3):  # even, even, too small for radius 2
        with pytest.raises(ValueError):
            dp_kernel_pair(2.0, size=bad)
    with pytest.raises(ValueError):
        kernel_pyramid([0, 1, 2], size=8)
    with pytest.raises(ValueError):
        resize_kernel(small, 0.5, 6)
    with pytest.raises(ValueError):
        resize_kernel(small, -0.5, 5)
    with pytest.raises(ValueError):
        dp_kernel_pair(2.0, "gauss")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ButterworthParams(beta=1.5)


def test_radius_zero_is_delta():
    pair = dp_kernel_pair(0.0)
    assert pair.shape == (2, 1, 1) and pair.sum().item() == 2.0
    padded = dp_kernel_pair(0.0, size=5)
    assert padded[:, 2, 2].tolist() == [1.0, 1.0] and padded.sum().item() == 2.0


@pytest.mark.parametrize("model", MODELS)
def test_centroid_side_and_disparity_monotone(model):
    radii = [0.25, 0.5, 1, 2, 3, 5, 8, 12, 17]
    disp = []
    for r in radii:
        front = kernel_centroid(dp_kernel_pair(r, model))[..., 1]  # dx of [left, right]
        back = kernel_centroid(dp_kernel_pair(-r, model))[..., 1]
        assert front[0] < 0 < front[1], (r, front)
        assert back[0] > 0 > back[1], (r, back)
        d = float(kernel_disparity(dp_kernel_pair(r, model)))
        assert float(kernel_disparity(dp_kernel_pair(-r, model))) == pytest.approx(-d, abs=1e-6)
        disp.append(d)
    assert all(b > a for a, b in zip(disp, disp[1:])), disp
    if model == "disk":
        # Linear ramp over a uniform disk: centroid at -r/4, so disparity r/2.
        assert disp == pytest.approx([r / 2 for r in radii], rel=1e-3)
    else:
        # Rim brighter than the centre pushes the centroid further out than the flat disk (for
        # radii below ~0.5 px the smoothing flattens the donut and it is r / 2 to 1%).
        assert disp[-1] == pytest.approx(10.961, abs=0.01)
        assert disp[0] == pytest.approx(radii[0] / 2, rel=0.01)
        assert all(d > 1.1 * r / 2 for d, r in zip(disp, radii) if r >= 1)


def test_kernel_centroid_values():
    k = torch.zeros(2, 5, 5)
    k[0, 1, 4] = 1.0  # dy = -1, dx = +2
    k[1, 2, 0] = 3.0  # unnormalised, dx = -2
    assert kernel_centroid(k).tolist() == [[-1.0, 2.0], [0.0, -2.0]]
    assert kernel_disparity(k).item() == -4.0


def test_disk_model_is_flat_butterworth():
    flat = ButterworthParams(beta=1.0)
    torch.testing.assert_close(dp_kernel_pair(4.5, "butterworth", flat), dp_kernel_pair(4.5, "disk"))


def test_butterworth_donut_rim_brighter_than_centre():
    k = dp_kernel_pair(8.0, params=ButterworthParams(beta=0.2))[0]
    column = k[:, 8]  # vertical centre line: the ramp is constant (1/2) there
    centre, rim = float(column[8]), float(column[1])  # row 1: 7 px up, inside the rim
    assert rim > 2.5 * centre
    flat = dp_kernel_pair(8.0, "disk")[0][:, 8]
    assert float(flat[1]) == pytest.approx(float(flat[8]), rel=1e-3)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("radius", [0.0, 0.004, 0.3, 0.995, 1.0, 2.0, 4.5, 10.0, 16.995])
def test_continuity_in_radius(model, radius):
    a, b = dp_kernel_pair(radius, model), dp_kernel_pair(radius + 0.01, model)
    size = b.shape[-1]
    l1 = (_pad_to(a, size) - b).abs().sum(dim=(-2, -1))
    assert float(l1.max()) < 0.05


def test_tiny_radius_tends_to_delta():
    for r, bound in [(1e-4, 1e-3), (0.05, 0.1)]:
        pair = dp_kernel_pair(r)
        assert float(pair[:, 1, 1].min()) > 1 - bound


def test_radii_helpers():
    assert behind_radii(17, 18).tolist() == list(range(18))
    b = both_radii(3, 3)
    assert b.tolist() == [-3, -2, -1, 0, 1, 2, 3]
    assert both_radii(2.5, 2).tolist() == [-2.5, -1.25, 0.0, 1.25, 2.5]


def test_pyramid_shape_last_layer_and_signs():
    radii = behind_radii(6, 7)
    pyr = kernel_pyramid(radii)
    assert pyr.shape == (2, 7, 13, 13)
    torch.testing.assert_close(pyr[:, -1], dp_kernel_pair(6.0), atol=1e-7, rtol=0)
    assert pyr[:, 0, 6, 6].tolist() == [1.0, 1.0]  # layer 0: delta
    torch.testing.assert_close(pyr.sum(dim=(-2, -1)), torch.ones(2, 7), atol=1e-6, rtol=0)
    disp = kernel_disparity(pyr)
    # Resizing preserves the centroid exactly: disparities proportional to the radius.
    torch.testing.assert_close(disp, disp[-1] * radii / 6, atol=1e-4, rtol=0)

    both = kernel_pyramid(both_radii(2.5, 2))
    assert both.shape == (2, 5, 7, 7)
    torch.testing.assert_close(both[:, 0], swap_focus_side(both[:, 4]), atol=0, rtol=0)
    torch.testing.assert_close(both[:, -1], dp_kernel_pair(2.5), atol=1e-7, rtol=0)
    d = kernel_disparity(both)
    assert d[0] < d[1] < d[2] == 0 < d[3] < d[4]
    assert kernel_pyramid([0.0, 2.0], size=9).shape == (2, 2, 9, 9)
    assert torch.equal(kernel_pyramid([0.0]), torch.ones(2, 1, 1, 1))


def test_resize_identity_and_delta():
    pair = dp_kernel_pair(3.0, "disk")
    torch.testing.assert_close(resize_kernel(pair, 1.0, 7), pair, atol=1e-7, rtol=0)
    delta = resize_kernel(pair, 0.0, 5)
    assert delta[:, 2, 2].tolist() == [1.0, 1.0] and delta.sum().item() == 2.0
    # scale -> 0 continuously approaches the delta
    assert float(resize_kernel(pair, 1e-3, 5)[:, 2, 2].min()) > 0.99


def test_resize_scales_second_moment_and_centroid():
    k = dp_kernel_pair(8.0, "disk")
    sym = 0.5 * (k[0] + k[1])
    half = resize_kernel(sym, 0.5, 17)
    assert _rms_radius(half) / _rms_radius(sym) == pytest.approx(0.5, rel=0.1)
    third = resize_kernel(k, 1 / 3.0, 7)  # non-integer, strong down-scaling
    assert third.shape == (2, 7, 7)
    torch.testing.assert_close(third.sum(dim=(-2, -1)), torch.ones(2), atol=1e-6, rtol=0)
    assert float(kernel_disparity(third)) == pytest.approx(float(kernel_disparity(k)) / 3, rel=1e-4)
    up = resize_kernel(dp_kernel_pair(2.0, "disk"), 2.3, 11)
    assert (up >= 0).all() and float(kernel_disparity(up)) == pytest.approx(2.3 * 1.0, rel=0.1)
    # Anti-aliasing: down-scaling a one-pixel-period checkerboard gives an almost flat kernel
    # (bare point sampling would keep only one colour).
    idx = torch.arange(9)
    checker = ((idx[:, None] + idx[None, :]) % 2).double() + 1e-3
    flat = resize_kernel(checker, 0.35, 3)
    assert float(flat.max() / flat.min()) < 2.5


def test_resize_per_kernel_scales_broadcast():
    k = dp_kernel_pair(4.0)  # (2, 9, 9)
    scales = torch.tensor([0.0, 0.5, 1.0])
    out = resize_kernel(k[:, None], scales, 9)
    assert out.shape == (2, 3, 9, 9)
    torch.testing.assert_close(out[:, 1], resize_kernel(k, 0.5, 9))
    torch.testing.assert_close(out[:, 2], k, atol=1e-7, rtol=0)


def test_resize_gradcheck():
    gen = torch.Generator().manual_seed(0)
    k = (torch.rand(2, 3, 3, generator=gen, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: resize_kernel(x, 0.6, 3), (k,))
    assert torch.autograd.gradcheck(lambda x: resize_kernel(x, 1.7, 5), (k,))
    learned = torch.rand(3, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    resize_kernel(learned.softmax(-1), 0.5, 3).pow(2).sum().backward()
    assert learned.grad is not None and torch.isfinite(learned.grad).all()
    assert math.isfinite(float(learned.grad.abs().sum()))
