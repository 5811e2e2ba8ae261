"""The Fourier closed form of a DP blur: the per-layer regularized least-squares solve
(:class:`LatentSolver`, Stage 1's closed form and the ``pseudo_inverse`` of
:class:`edgedp.physics.operators.DualPixelRender`) and the spectra it is built from.

For every layer i alone, with the layer's DP kernel pair ``(f_i^L, f_i^R)``::

    X_i = (conj(F_i^L) Y_L + conj(F_i^R) Y_R) / (|F_i^L|^2 + |F_i^R|^2 + lam |G|^2)

on the replicate-padded domain (``|G|^2`` the spectrum of the forward-difference gradient, the
operator :class:`edgedp.physics.operators.FiniteDifference`).  Why and how Stage 1 uses it:
:mod:`edgedp.fit.stage1`.  Conventions: CONVENTIONS.md (true convolution, replicated borders).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .blur import complex_dtype, fast_size

__all__ = ["LatentSolver", "centred_kernel_spectrum", "gradient_operator_spectra", "gradient_spectrum"]


def gradient_spectrum(padded_shape: tuple[int, int], *, device=None, dtype=torch.float32) -> Tensor:
    """``|G|^2`` of forward differences in x and y on a circular ``padded_shape`` grid:
    ``(Hp, Wp // 2 + 1)`` real, ``4 sin^2(pi k / Hp) + 4 sin^2(pi l / Wp)``."""
    hp, wp = padded_shape
    ky = torch.arange(hp, device=device, dtype=dtype)
    kx = torch.arange(wp // 2 + 1, device=device, dtype=dtype)
    return 4 * torch.sin(math.pi * ky / hp)[:, None] ** 2 + 4 * torch.sin(math.pi * kx / wp)[None, :] ** 2


def centred_kernel_spectrum(kernels: Tensor, shape: tuple[int, int]) -> Tensor:
    """rfft2 of ``(..., K, K)`` kernels centred at index (0, 0) of a circular ``shape`` grid: tap
    ``(K // 2, K // 2)`` lands on (0, 0), the taps before it wrap to the grid's far ends.
    Complex ``(..., Hp, Wp // 2 + 1)``."""
    k = kernels.shape[-1]
    hp, wp = shape
    # Two small DFT matrices instead of zero-padded FFTs: the kernel has only K x K taps, so
    # ``E_H (Hp x K) @ k @ E_W (K x Wf)`` costs less than transforming (and first zero-filling and
    # transposing) a full-size array, and the centring is built into the matrices' phases.
    taps = torch.arange(k, device=kernels.device, dtype=torch.float64) - k // 2
    fy = torch.fft.fftfreq(hp, device=kernels.device, dtype=torch.float64)
    fx = torch.fft.rfftfreq(wp, device=kernels.device, dtype=torch.float64)
    spectral = complex_dtype(kernels.dtype)
    e_h = torch.polar(torch.ones((), dtype=torch.float64, device=kernels.device), -2 * math.pi * fy[:, None] * taps[None, :])
    e_w = torch.polar(torch.ones((), dtype=torch.float64, device=kernels.device), -2 * math.pi * taps[:, None] * fx[None, :])
    return e_h.to(spectral) @ (kernels.to(spectral) @ e_w.to(spectral))


def gradient_operator_spectra(padded_shape: tuple[int, int], *, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """rfft2 transfer functions ``(Gx, Gy)`` (each ``(Hp, Wp // 2 + 1)`` complex) of the circular
    forward differences ``(Gx x)[r, c] = x[r, c + 1] - x[r, c]`` and ``(Gy x)[r, c] = x[r + 1, c] -
    x[r, c]`` on a ``padded_shape`` grid: ``exp(2 pi i k / N) - 1``.  ``|Gx|^2 + |Gy|^2`` is
    :func:`gradient_spectrum`."""
    hp, wp = padded_shape
    ky = torch.fft.fftfreq(hp, device=device, dtype=dtype)[:, None]
    kx = torch.fft.rfftfreq(wp, device=device, dtype=dtype)[None, :]
    gx = torch.exp(2j * math.pi * kx) - 1
    gy = torch.exp(2j * math.pi * ky) - 1
    return gx.expand(hp, -1), gy.expand(-1, wp // 2 + 1)


class LatentSolver:
    """Stage 1's per-layer closed-form solve with the spectra computed once (a pseudo-inverse of
    each layer's DP blur), optionally pulled towards a target gradient field.

    For every layer i::

        x_i = argmin_x ||y_L - x conv f_i^L||^2 + ||y_R - x conv f_i^R||^2
                       + reg ||grad x||^2 + target_weight ||grad x - z||^2

    ``X_i = (sum_v conj(F_i^v) Y_v + target_weight G^H Z) / (sum_v |F_i^v|^2 + (reg + target_weight)
    |G|^2)`` on the replicate-padded domain (module docstring); ``grad`` is the forward difference
    (:func:`gradient_operator_spectra`).  The target ``z`` lives on the image: ``z[0]`` is the wanted
    ``x[r, c + 1] - x[r, c]``, ``z[1]`` the wanted ``x[r + 1, c] - x[r, c]``; it is zero over the
    padding, where the replicated solution has zero gradient anyway.  Without a target this is
    :func:`edgedp.fit.stage1.solve_latent_map`; the half-quadratic splitting of :mod:`edgedp.fit.deconvolution` calls
    :meth:`solve` with the shrunk gradients of its current image.

    Args:
        views: (2, H, W) DP pair [left, right] (or (B, 2, H, W)).
        kernels: (2, L, K, K) [left, right] x layers, centred, true-convolution PSFs.
        reg: ``lam``, weight of the squared-gradient prior.
        pad: replicate padding (px); default ``K // 2 + 8``.
    """

    def __init__(self, views: Tensor, kernels: Tensor, reg: float, *, pad: int | None = None) -> None:
        self.batched = views.dim() == 4
        v = views if self.batched else views[None]
        _, _, h, w = v.shape
        k = kernels.shape[-1]
        p = (k // 2 + 8) if pad is None else pad
        hp, wp = fast_size(h + 2 * p), fast_size(w + 2 * p, even=True)
        self.shape, self.padded_shape, self.pad, self.reg = (h, w), (hp, wp), p, float(reg)
        self.layers = int(kernels.shape[1])
        # Replicate to (h + 2p) then keep replicating out to the fast size (all margins replicated).
        yf = torch.fft.rfft2(F.pad(v, (p, wp - w - p, p, hp - h - p), mode="replicate"))  # (B, 2, Hp, Wf)
        self.kernel_spectra = centred_kernel_spectrum(kernels.to(v), (hp, wp))  # (2, L, Hp, Wf)
        self.view_spectra = yf
        self.g2 = gradient_spectrum((hp, wp), device=v.device, dtype=v.dtype)

    def solve(self, target: Tensor | None = None, target_weight: float = 0.0, layers=None) -> Tensor:
        """``(L, H, W)`` latent map (``(B, L, H, W)`` for batched views), or only ``layers`` (a
        sequence of layer indices, in that order) of it.  ``target``: ``(2, H, W)`` (or
        ``(B, 2, H, W)``) gradient field, used with ``target_weight > 0``."""
        (h, w), (hp, wp), p = self.shape, self.padded_shape, self.pad
        kf, yf = self.kernel_spectra, self.view_spectra
        extra = None
        if target is not None and target_weight > 0:
            z = target if target.dim() == 4 else target[None]
            if tuple(z.shape[-3:]) != (2, h, w):
                raise ValueError(f"target must be (2, {h}, {w}), got {tuple(target.shape)}")
            zf = torch.fft.rfft2(F.pad(z, (p, wp - w - p, p, hp - h - p)))  # zero outside the image
            gx, gy = gradient_operator_spectra((hp, wp), device=zf.device, dtype=self.g2.dtype)
            extra = target_weight * (gx.conj() * zf[:, 0] + gy.conj() * zf[:, 1])
        weight = self.reg + (target_weight if extra is not None else 0.0)
        out = []
        for layer in range(self.layers) if layers is None else layers:
            # Per layer keeps the peak memory at a few full-size buffers.
            fl, fr = kf[0, layer], kf[1, layer]
            num = fl.conj() * yf[:, 0] + fr.conj() * yf[:, 1]
            if extra is not None:
                num = num + extra
            den = fl.real.square() + fl.imag.square() + fr.real.square() + fr.imag.square() + weight * self.g2
            x = torch.fft.irfft2(num / den, s=(hp, wp))
            out.append(x[:, p : p + h, p : p + w])
        latent = torch.stack(out, dim=1)
        return latent if self.batched else latent[0]
