"""The left/right gain over the frame of a DP capture (vignetting): the model
(:data:`VIEW_GAIN_MODEL`), its basis images and the gain map of a set of coefficients.

``edgedp tune`` estimates the coefficients from the captures themselves
(:func:`edgedp.fit.device_tuning.estimate_view_gain`), a device profile stores them
(:mod:`edgedp.formats.profile`), and the right view times :func:`view_gain_map` matches the left.
Pure tensor functions, no I/O.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["VIEW_GAIN_MODEL", "VIEW_GAIN_TERMS", "view_gain_basis", "view_gain_map"]

VIEW_GAIN_MODEL = "exp-poly3"
"""The right view's gain over the frame: ``g(x, y) = exp(sum_k c_k b_k(u, v))`` over the 10
monomials ``b = u^i v^j`` with ``i + j <= 3`` (ordered i = 0..3, then j = 0..3 - i:
1, v, v^2, v^3, u, u v, u v^2, u^2, u^2 v, u^3) of ``u = (2 x - (W - 1)) / (W - 1)``,
``v = (2 y - (H - 1)) / (H - 1)`` in [-1, 1] over the capture (x column, y row).  Multiplying the
right view by ``g`` matches its brightness to the left view's, as the white-sheet flat field of
the Pixel protocol does.  Degree 3 because DP vignetting is smooth but lopsided: on the Pixel 4
white sheets (gain 1.01-1.40 over the crop) a cubic fits to 0.4% mean error, a quadratic to 3.4%."""
VIEW_GAIN_TERMS = 10


def view_gain_basis(height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The basis images (10, H, W) of :data:`VIEW_GAIN_MODEL`."""
    u = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)[None, :].expand(height, width)
    v = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)[:, None].expand(height, width)
    return torch.stack([u**i * v**j for i in range(4) for j in range(4 - i)])


def view_gain_map(coefficients: Sequence[float], height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The right view's gain (H, W) from :data:`VIEW_GAIN_MODEL` coefficients.

    >>> gain = view_gain_map([0.1] + [0.0] * 9, 5, 7)  # a constant log-gain of 0.1
    >>> tuple(gain.shape), round(float(gain[2, 3]), 4)
    ((5, 7), 1.1052)
    """
    c = torch.as_tensor([float(x) for x in coefficients], device=device, dtype=torch.float64)
    basis = view_gain_basis(height, width, device=device, dtype=torch.float64)
    return torch.exp(torch.einsum("k,khw->hw", c, basis)).to(dtype)
