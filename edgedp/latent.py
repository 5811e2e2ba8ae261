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

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .physics import _fast_size


def gradient_spectrum(padded_shape: tuple[int, int], *, device=None, dtype=torch.float32) -> Tensor:
    """``|G|^2`` of forward differences in x and y on a circular ``padded_shape`` grid:
    ``(Hp, Wp // 2 + 1)`` real, ``4 sin^2(pi k / Hp) + 4 sin^2(pi l / Wp)``."""
    hp, wp = padded_shape
    ky = torch.arange(hp, device=device, dtype=dtype)
    kx = torch.arange(wp // 2 + 1, device=device, dtype=dtype)
    return 4 * torch.sin(math.pi * ky / hp)[:, None] ** 2 + 4 * torch.sin(math.pi * kx / wp)[None, :] ** 2


def estimate_noise_sigma(image: Tensor) -> float:
    """Standard deviation of white noise in a (H, W) image (Immerkaer, CVIU 1996).

    Convolves with the Laplacian-difference mask ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (which cancels
    locally linear signal) and uses ``sigma = sqrt(pi/2) / (6 (H-2)(W-2)) * sum |response|``,
    taking the median-based version over tiles to ignore textured regions.
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


def centred_kernel_spectrum(kernels: Tensor, shape: tuple[int, int]) -> Tensor:
    """rfft2 of ``(..., K, K)`` kernels centred at index (0, 0) of a circular ``shape`` grid."""
    k = kernels.shape[-1]
    spec = torch.fft.fft(torch.fft.rfft(kernels, n=shape[1], dim=-1), n=shape[0], dim=-2)
    # The kernel sits at [0, K): undo the shift of K // 2 by a phase ramp (no full-size roll).
    fy = torch.fft.fftfreq(shape[0], device=kernels.device, dtype=kernels.dtype)
    fx = torch.fft.rfftfreq(shape[1], device=kernels.device, dtype=kernels.dtype)
    phase = torch.exp(2j * math.pi * (k // 2) * (fy[:, None] + fx[None, :]))
    return spec * phase


def solve_latent_map(views: Tensor, kernels: Tensor, reg: float, *, pad: int | None = None) -> Tensor:
    """Closed-form per-layer latent map.

    Args:
        views: (2, H, W) DP pair [left, right] (or (B, 2, H, W)).
        kernels: (2, L, K, K) [left, right] x layers, centred, true-convolution PSFs.
        reg: ``lam``, weight of the squared-gradient prior.
        pad: replicate padding (px); default ``K // 2 + 8``.

    Returns:
        (L, H, W) latent map (or (B, L, H, W)); device/dtype follow ``views``.
    """
    batched = views.dim() == 4
    v = views if batched else views[None]
    b, _, h, w = v.shape
    k = kernels.shape[-1]
    p = (k // 2 + 8) if pad is None else pad
    hp, wp = _fast_size(h + 2 * p), _fast_size(w + 2 * p, even=True)
    # Replicate to (h + 2p) then keep replicating out to the fast size (all margins are replicated).
    vp = F.pad(v, (p, wp - w - p, p, hp - h - p), mode="replicate")
    yf = torch.fft.rfft2(vp)  # (B, 2, Hp, Wf)
    kf = centred_kernel_spectrum(kernels.to(v), (hp, wp))  # (2, L, Hp, Wf)
    g2 = gradient_spectrum((hp, wp), device=v.device, dtype=v.dtype)
    out = []
    for layer in range(kf.shape[1]):  # per layer keeps the peak memory at a few full-size buffers
        fl, fr = kf[0, layer], kf[1, layer]
        num = fl.conj() * yf[:, 0] + fr.conj() * yf[:, 1]
        den = fl.abs().square() + fr.abs().square() + reg * g2
        x = torch.fft.irfft2(num / den, s=(hp, wp))
        out.append(x[:, p : p + h, p : p + w])
    latent = torch.stack(out, dim=1)
    return latent if batched else latent[0]
