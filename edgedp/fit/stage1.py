"""Stage 1: per-layer latent map in closed form (METHOD.md Eq. 2-4).

For every layer i alone, with the layer's DP kernel pair ``(f_i^L, f_i^R)``::

    x_i = argmin_x  ||y_L - x conv f_i^L||^2 + ||y_R - x conv f_i^R||^2 + lam ||grad x||^2

is linear least squares with a circulant normal matrix on the padded domain, solved exactly in the
Fourier domain::

    X_i = (conj(F_i^L) Y_L + conj(F_i^R) Y_R) / (|F_i^L|^2 + |F_i^R|^2 + lam |G|^2)

(``|G|^2`` = the spectrum of the forward-difference gradient operator).  Because the left and right
kernels are mirrored, only the region whose true blur matches layer i comes out sharp in ``x_i``.

Borders: the views are extended by edge replication (``pad`` px, at least the kernel radius) and
the solution is cropped back, so the circular model wraps only through replicated margins.

Regularization: ``lam`` follows from the noise (Wiener / Gaussian-prior MAP): ``lam = sigma^2 / s^2``
with ``sigma`` the sensor noise (estimated from the data, :func:`estimate_noise_sigma`) and ``s^2``
the variance of the sharp image's gradients, for which the views' own gradient energy is a
(lower-bound) proxy; ``gain`` scales that ratio (:func:`default_latent_reg`).
"""

from __future__ import annotations

from torch import Tensor

from ..physics.fourier import LatentSolver


def solve_latent_map(views: Tensor, kernels: Tensor, reg: float, *, pad: int | None = None) -> Tensor:
    """Closed-form per-layer latent map (:class:`LatentSolver` without a target).

    Args:
        views: (2, H, W) DP pair [left, right] (or (B, 2, H, W)).
        kernels: (2, L, K, K) [left, right] x layers, centred, true-convolution PSFs.
        reg: ``lam``, weight of the gradient prior.
        pad: replicate padding (px); default ``K // 2 + 8``.

    Returns:
        (L, H, W) latent map (or (B, L, H, W)); device/dtype follow ``views``.

    Example:
        >>> import torch
        >>> from edgedp.physics import behind_radii, kernel_pyramid
        >>> kernels = kernel_pyramid(behind_radii(2, 3), 'disk')
        >>> views = torch.rand(2, 37, 53, generator=torch.Generator().manual_seed(0))
        >>> latent = solve_latent_map(views, kernels, reg=1e-3)
        >>> tuple(latent.shape), bool(torch.allclose(latent[0], views.mean(0), atol=1e-2))  # layer 0: sharp
        ((3, 37, 53), True)
    """
    return LatentSolver(views, kernels, reg, pad=pad).solve()
