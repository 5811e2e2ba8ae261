"""The noise of a capture and the regularization weight it implies: the sensor noise estimated from
the data (:func:`estimate_noise_sigma`) and Stage 1's gradient-prior weight
``lam = gain sigma^2 / s^2`` (:func:`default_latent_reg`; why: :mod:`edgedp.fit.stage1`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["default_latent_reg", "estimate_noise_sigma"]


def estimate_noise_sigma(image: Tensor) -> float:
    """Standard deviation of white noise in a (H, W) image (Immerkaer, CVIU 1996).

    Convolves with the Laplacian-difference mask ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (which cancels
    locally linear signal) and uses ``sigma = sqrt(pi/2) / (6 (H-2)(W-2)) * sum |response|``,
    taking the median-based version over tiles to ignore textured regions.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> flat = 0.5 + 0.01 * torch.randn(101, 131, generator=g)
        >>> round(estimate_noise_sigma(flat), 3)
        0.01
    """
    mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=image.dtype, device=image.device)
    resp = F.conv2d(image[None, None], mask[None, None])[0, 0].abs()
    # Per-tile estimates; the lower quartile avoids edges and texture inflating the figure.
    t = 16
    h, w = (resp.shape[0] // t) * t, (resp.shape[1] // t) * t
    if h == 0 or w == 0:
        return float(math.sqrt(math.pi / 2) / 6 * resp.mean())
    tiles = resp[:h, :w].reshape(h // t, t, w // t, t).mean(dim=(1, 3)).flatten()
    return float(math.sqrt(math.pi / 2) / 6 * torch.quantile(tiles, 0.25))


def default_latent_reg(views: Tensor, *, gain: float = 4.0, floor: float = 1e-3, ceil: float = 0.3) -> float:
    """``lam = gain * sigma^2 / s^2`` for views (2, H, W): noise variance over the mean squared
    gradient of the (blurred) views' signal (their gradient energy less the noise's ``2 sigma^2``),
    clamped to ``[floor, ceil]``.

    ``gain`` absorbs that the blurred views' gradients underestimate the sharp image's and that
    the prior should also damp the ringing of kernel-model errors, not only noise.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> views = 0.5 + 0.01 * torch.randn(2, 61, 67, generator=g)
        >>> round(default_latent_reg(views), 4)
        0.3
    """
    mean_view = views.mean(0)
    sigma = estimate_noise_sigma(mean_view)
    gx = mean_view[:, 1:] - mean_view[:, :-1]
    gy = mean_view[1:, :] - mean_view[:-1, :]
    measured = float(0.5 * (gx.square().mean() + gy.square().mean()))
    # A forward difference of white noise has variance 2 sigma^2: remove it to keep the signal's.
    s2 = max(measured - 2 * sigma**2, 0.1 * measured)
    lam = gain * sigma**2 / max(s2, 1e-12)
    return float(min(max(lam, floor), ceil))
