"""Tests for edgedp.physics.disparity: sign convention (x_right - x_left), sub-pixel accuracy, DP blur."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from edgedp.physics import DisparityEstimate, decide_side, estimate_disparity
from edgedp.errors import InputError

H, W = 193, 257  # 6 x 8 tiles of 32 px
MARGIN = 24


def _texture(seed: int, shape: tuple[int, int], sigma: float = 1.5) -> np.ndarray:
    img = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return (img - img.min()) / (img.max() - img.min())


def _shifted_pair(d: float) -> tuple[np.ndarray, np.ndarray]:
    """``right(x) = left(x - d)``: the right view is the left one displaced right by ``d`` px
    (Fourier shift along x of a wider texture, cropped away from the wrap-around)."""
    big = _texture(0, (H, W + 2 * MARGIN))
    k = np.fft.fftfreq(big.shape[1])
    shifted = np.real(np.fft.ifft(np.fft.fft(big, axis=1) * np.exp(-2j * np.pi * k * d), axis=1))
    crop = slice(MARGIN, MARGIN + W)
    return big[:, crop], shifted[:, crop]


def _centroid_x(k: np.ndarray) -> float:
    cols = np.arange(k.shape[1]) - k.shape[1] // 2
    return float((k.sum(axis=0) * cols).sum() / k.sum())


@pytest.mark.parametrize("d", [3, -3])
def test_integer_shift_sign(d: int) -> None:
    big = _texture(0, (H, W + 2 * MARGIN))
    left = big[:, MARGIN : MARGIN + W]
    right = big[:, MARGIN - d : MARGIN - d + W]  # right(x) = left(x - d)
    est = estimate_disparity(left, right)
    assert isinstance(est, DisparityEstimate)
    assert est.disparity.shape == est.confidence.shape == (H // 32, W // 32)
    assert est.tile == 32
    assert est.median == pytest.approx(d, abs=0.25)
    assert est.low <= est.median <= est.high
    assert np.isfinite(est.disparity).mean() > 0.9
    assert np.all((est.confidence >= 0) & (est.confidence <= 1))
    assert est.side == ("behind" if d > 0 else "in_front")


@pytest.mark.parametrize("d", [2.5, -1.3])
def test_subpixel_shift(d: float) -> None:
    left, right = _shifted_pair(d)
    est = estimate_disparity(left, right)
    assert est.median == pytest.approx(d, abs=0.3)


def test_dp_blur_pair_and_swap() -> None:
    # Left kernel: horizontal box over the left half incl. the centre; right kernel: its
    # 180-degree rotation (CONVENTIONS: r > 0, behind the focal plane).  True convolution.
    k = 9
    kl = np.zeros((k, k))
    kl[k // 2, : k // 2 + 1] = 1.0
    kl /= kl.sum()
    kr = kl[::-1, ::-1].copy()
    expected = _centroid_x(kr) - _centroid_x(kl)
    assert expected == pytest.approx(4.0)
    tex = _texture(1, (H, W), sigma=1.0)
    left = ndi.convolve(tex, kl, mode="nearest")
    right = ndi.convolve(tex, kr, mode="nearest")

    est = estimate_disparity(torch.from_numpy(left), torch.from_numpy(right))
    assert est.median == pytest.approx(expected, abs=0.5)
    assert est.side == "behind"

    swapped = estimate_disparity(right, left)
    assert swapped.median == pytest.approx(-expected, abs=0.5)
    assert swapped.side == "in_front"


def test_dp_half_disk_kernels() -> None:
    r = 5
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kl = ((xx**2 + yy**2 <= r * r) & (xx <= 0)).astype(np.float64)
    kl /= kl.sum()
    kr = kl[::-1, ::-1].copy()
    expected = _centroid_x(kr) - _centroid_x(kl)
    tex = _texture(2, (H, W), sigma=1.0)
    est = estimate_disparity(ndi.convolve(tex, kl), ndi.convolve(tex, kr))
    assert est.median == pytest.approx(expected, abs=0.5)
    assert est.side == "behind"


def test_flat_image_is_unknown() -> None:
    flat = np.full((H, W), 0.5)
    est = estimate_disparity(flat, flat)
    assert np.all(est.confidence == 0)
    assert np.all(np.isnan(est.disparity))
    assert math.isnan(est.low) and math.isnan(est.high) and math.isnan(est.median)
    assert est.side == "unknown"

    # Faint independent noise: no texture worth trusting either.
    rng = np.random.default_rng(3)
    noisy = estimate_disparity(
        flat + 1e-4 * rng.standard_normal(flat.shape), flat + 1e-4 * rng.standard_normal(flat.shape)
    )
    assert noisy.confidence.max() < 0.05
    assert noisy.side == "unknown"


def test_in_focus_pair() -> None:
    tex = _texture(4, (H, W))
    est = estimate_disparity(tex, tex)
    assert est.median == pytest.approx(0.0, abs=0.1)
    assert est.side == "in_focus"


def test_decide_side_rule() -> None:
    assert decide_side(np.array([])) == "unknown"
    assert decide_side(np.array([0.1, -0.2, 0.4])) == "in_focus"
    assert decide_side(np.array([3.0] * 9 + [0.0] * 90 + [-2.0])) == "in_focus"  # 9 %: below 10 %
    assert decide_side(np.array([3.0] * 20 + [0.0] * 79 + [-2.0])) == "behind"
    assert decide_side(np.array([-3.0] * 20 + [0.0] * 80)) == "in_front"
    assert decide_side(np.array([3.0] * 20 + [-3.0] * 20 + [0.0] * 60)) == "both"


def test_bad_inputs() -> None:
    tex = _texture(5, (64, 64))
    with pytest.raises(InputError):
        estimate_disparity(tex, tex[:, :63])
    with pytest.raises(InputError):
        estimate_disparity(tex[:20], tex[:20])
    bad = tex.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError):
        estimate_disparity(bad, tex)
