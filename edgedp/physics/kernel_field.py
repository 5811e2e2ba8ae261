"""A spatially varying, left/right-asymmetric DP kernel field (issue 16).

Pure tensor code, no I/O (reading calibrated kernels: :func:`edgedp.formats.kernel_grid.load_kernel_grid`).

Representation
--------------
A :class:`KernelField` holds one ``[left, right]`` pair per cell of a ``Pr x Pc`` grid over the
frame (row-major from the top-left, the cells of :func:`edgedp.physics.blur.patch_blend_weights`):
``pairs (Pr, Pc, 2, K, K)``, each kernel non-negative, summing to 1, at one reference defocus
**behind** the focal plane (r > 0: the left kernel's mass on the left, positive disparity).
Unlike the parametric model (:mod:`edgedp.physics.kernels`) the right kernel is *not* the left
one rotated by 180 degrees: real DP optics are asymmetric and vary over the frame.

Recentring
----------
Only the relative position of the two views is physical; a shift common to both is absorbed by
the latent image.  But layer kernels are resized *about the kernel centre*
(:func:`field_layer_kernels`), so a pair whose common centroid is off the centre by ``c`` px
would shift layer ``i``'s latent by ``s_i c`` px, differently per layer (the calibration's pairs
are off by up to 3.5 px, differently per cell).  :func:`recentre_pair` therefore shifts both
kernels of a pair together (bilinear splatting, which moves the centroid exactly) so that the
centroid of ``(L + R) / 2`` sits at ``(K // 2, K // 2)``.  Every :class:`KernelField` is
recentred when built by :func:`uniform_field` or the loader.

Layers
------
A layer of signed radius ``r`` uses each cell's pair resized (:func:`resize_kernel`) so that its
disparity is ``disparity_per_radius * |r|`` (the disparity a parametric layer of radius ``r``
would explain); ``r = 0`` is a delta; for ``r < 0`` (in front of the focal plane) the pupil image
is inverted, so each view's kernel is its behind kernel **rotated by 180 degrees**
(:func:`mirror_kernel`), which for an asymmetric pair is not the left/right swap of the symmetric
model (both coincide for a mirror-symmetric pair).

Shapes and conventions: CONVENTIONS.md (views [left, right], true-convolution PSFs centred at
``K // 2``, signed radius > 0 behind the focal plane, disparity = centroid_x(R) - centroid_x(L)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .kernels import kernel_centroid, kernel_disparity, mirror_kernel, resize_kernel

__all__ = [
    "KernelField",
    "recentre_pair",
    "field_layer_kernels",
    "uniform_field",
    "spread_ratio",
    "horizontal_std",
]

MASS_KEPT = 0.98
"""Fraction of every kernel's mass that the size :func:`field_layer_kernels` chooses (``size=None``)
keeps.  Not 1: the Pixel 4 calibration's kernels carry 1.4 % of their mass in a faint tail 20-30 px
from the centre (98.1 % lies within 16 px), which would double the layer kernels' size (and the
fit's cost) for little of the image."""


def _shift_matrix(size: int, shift: Tensor) -> Tensor:
    """``(..., size, size)`` 1-D bilinear splatting matrices moving mass by ``shift`` (...) px:
    ``S[i, j] = max(0, 1 - |i - j - shift|)`` (column j is the input, row i the output).  Preserves
    the sum and moves the first moment by exactly ``shift`` when nothing leaves the kernel."""
    c = torch.arange(size, device=shift.device, dtype=shift.dtype)
    diff = c[:, None] - c[None, :]  # i - j
    return (1.0 - (diff - shift[..., None, None]).abs()).clamp(min=0.0)


def recentre_pair(pairs: Tensor, *, iterations: int = 8, tol: float = 1e-5) -> Tensor:
    """Shift both kernels of each pair together so the centroid of ``(L + R) / 2`` is the centre.

    Args:
        pairs: ``(..., 2, K, K)`` [left, right], non-negative (normalised to sum 1 here).
        iterations: at most this many shift passes (one is exact unless mass is pushed off the
            kernel's edge; the next passes correct what the renormalisation then moved).
        tol: stop once every common centroid is within ``tol`` px of the centre.

    Returns:
        ``(..., 2, K, K)``, each kernel summing to 1, the pair's relative geometry (disparity,
        shapes) unchanged up to the 1-px bilinear smoothing of a fractional shift.  Idempotent
        (a centred pair is returned unchanged to float rounding).  Device/dtype follow ``pairs``.

    Example:
        >>> pair = torch.zeros(2, 7, 7); pair[0, 3, 1] = 1; pair[1, 3, 4] = 1
        >>> out = recentre_pair(pair)
        >>> [round(float(v), 3) for v in kernel_centroid(out.mean(0))], round(float(kernel_disparity(out)), 3)
        ([0.0, 0.0], 3.0)
    """
    if pairs.dim() < 3 or pairs.shape[-3] != 2 or pairs.shape[-1] != pairs.shape[-2] or pairs.shape[-1] % 2 != 1:
        raise ValueError(f"pairs must be (..., 2, K, K) with K odd, got {tuple(pairs.shape)}")
    out = pairs / pairs.sum(dim=(-1, -2), keepdim=True).clamp_min(torch.finfo(pairs.dtype).tiny)
    k = pairs.shape[-1]
    for _ in range(max(1, iterations)):
        c = kernel_centroid(out.mean(dim=-3))  # (..., 2) (dy, dx)
        if float(c.abs().max()) <= tol:
            break
        sy = _shift_matrix(k, -c[..., 0])[..., None, :, :]  # (..., 1, K, K), same for both views
        sx = _shift_matrix(k, -c[..., 1])[..., None, :, :]
        out = sy @ out @ sx.transpose(-1, -2)
        out = out / out.sum(dim=(-1, -2), keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
    return out


def horizontal_std(kernels: Tensor) -> Tensor:
    """Horizontal standard deviation (px) of ``(..., K, K)`` kernels about their own centroid,
    ``(...)``.

    Example:
        >>> k = torch.zeros(5, 5); k[2, 1] = k[2, 3] = 0.5
        >>> float(horizontal_std(k))
        1.0
    """
    k = kernels.shape[-1]
    xs = torch.arange(k, device=kernels.device, dtype=kernels.dtype) - k // 2
    cols = kernels.sum(dim=-2)
    cols = cols / cols.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(kernels.dtype).tiny)
    mean = (cols * xs).sum(-1, keepdim=True)
    return ((cols * (xs - mean) ** 2).sum(-1)).clamp_min(0).sqrt()


@dataclass(frozen=True)
class KernelField:
    """Per-cell DP kernel pairs over a ``Pr x Pc`` grid of the frame (module docstring).

    Attributes:
        pairs: ``(Pr, Pc, 2, K, K)`` [left, right] at a reference defocus, behind orientation
            (r > 0, positive disparity), each kernel non-negative and summing to 1, recentred
            (:func:`recentre_pair`).  Use :func:`uniform_field` or
            :func:`edgedp.formats.kernel_grid.load_kernel_grid` to build one from raw kernels.
        source: where the kernels come from: ``butterworth``, ``calibration``, ``estimated``, ...

    Example:
        >>> from edgedp.physics.kernels import dp_kernel_pair
        >>> field = uniform_field(dp_kernel_pair(4.0, 'disk'), (2, 3))
        >>> field.grid, field.size, tuple(field.disparity.shape)
        ((2, 3), 9, (2, 3))
    """

    pairs: Tensor
    source: str = "estimated"

    def __post_init__(self) -> None:
        p = self.pairs
        if p.dim() != 5 or p.shape[2] != 2 or p.shape[-1] != p.shape[-2] or p.shape[-1] % 2 != 1:
            raise ValueError(f"KernelField pairs must be (Pr, Pc, 2, K, K) with K odd, got {tuple(p.shape)}")

    @property
    def grid(self) -> tuple[int, int]:
        """``(Pr, Pc)``: rows and columns of cells."""
        return int(self.pairs.shape[0]), int(self.pairs.shape[1])

    @property
    def size(self) -> int:
        """K: the size of the stored kernels."""
        return int(self.pairs.shape[-1])

    @property
    def disparity(self) -> Tensor:
        """``(Pr, Pc)``: each cell's pair disparity ``centroid_x(R) - centroid_x(L)`` (px, > 0)."""
        return kernel_disparity(self.pairs.movedim(2, 0))

    def to(self, device=None, dtype=None) -> "KernelField":
        """The same field on ``device`` / in ``dtype``."""
        return KernelField(self.pairs.to(device=device, dtype=dtype), self.source)

    def symmetrized(self) -> "KernelField":
        """Each cell mirror-averaged: ``L' = (L + rot180(R)) / 2``, ``R' = rot180(L')`` (the
        symmetric DP model's constraint, with the cell's own average shape).

        Example:
            >>> from edgedp.physics.kernels import dp_kernel_pair
            >>> f = uniform_field(dp_kernel_pair(3.0, 'disk'), (1, 2)).symmetrized()
            >>> bool(torch.allclose(f.pairs[:, :, 1], mirror_kernel(f.pairs[:, :, 0])))
            True
        """
        left = (self.pairs[:, :, 0] + mirror_kernel(self.pairs[:, :, 1])) / 2
        return KernelField(torch.stack([left, mirror_kernel(left)], dim=2), self.source)

    def mean_pair(self) -> Tensor:
        """``(2, K, K)``: the mean pair over the cells (centred, since every cell is)."""
        return self.pairs.mean(dim=(0, 1))


def uniform_field(pair: Tensor, grid: tuple[int, int], *, source: str = "butterworth") -> KernelField:
    """A field with the same ``(2, K, K)`` [left, right] behind pair in every cell of ``grid``
    (recentred; device/dtype follow ``pair``).

    Example:
        >>> from edgedp.physics.kernels import dp_kernel_pair
        >>> tuple(uniform_field(dp_kernel_pair(2.0), (6, 8)).pairs.shape)
        (6, 8, 2, 5, 5)
    """
    if pair.dim() != 3 or pair.shape[0] != 2:
        raise ValueError(f"pair must be (2, K, K) [left, right], got {tuple(pair.shape)}")
    pr, pc = (int(g) for g in grid)
    if pr < 1 or pc < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    pairs = recentre_pair(pair)[None, None].expand(pr, pc, *pair.shape).clone()
    return KernelField(pairs, source)


def spread_ratio(field: KernelField) -> Tensor:
    """``(Pr, Pc)``: per cell, the horizontal std of the left kernel over that of the right one
    (1 for a mirror-symmetric pair).

    Example:
        >>> from edgedp.physics.kernels import dp_kernel_pair
        >>> round(float(spread_ratio(uniform_field(dp_kernel_pair(3.0), (1, 1)))[0, 0]), 4)
        1.0
    """
    std = horizontal_std(field.pairs)  # (Pr, Pc, 2)
    return std[..., 0] / std[..., 1].clamp_min(torch.finfo(std.dtype).tiny)


def field_layer_kernels(
    field: KernelField,
    radii: Sequence[float] | Tensor,
    disparity_per_radius: float,
    size: int | None = None,
    *,
    refine: int = 2,
) -> Tensor:
    """Per-cell layer kernels of a field: ``(Pr, Pc, 2, L, size, size)``.

    Layer ``i`` of signed radius ``r_i``: each cell's pair resized by
    ``s = disparity_per_radius * |r_i| / disparity(cell)`` (:func:`resize_kernel`, about the
    centre) so that its disparity is ``disparity_per_radius * |r_i|``; ``r_i = 0`` a delta pair;
    ``r_i < 0`` each view's kernel rotated by 180 degrees (disparity ``-disparity_per_radius
    |r_i|``; module docstring).  Down-scaling moves centroids exactly by ``s``; up-scaling
    (bilinear) and cropping only approximately, so the scale is corrected ``refine`` times by the
    ratio of asked to measured disparity.

    Args:
        field: the :class:`KernelField` (every cell's disparity must be > 0).
        radii: (L,) signed layer radii (px).
        disparity_per_radius: DP disparity (px) per px of radius the layers explain
            (:func:`edgedp.fit.pipeline.disparity_per_radius` of the fit's kernel model).
        size: output K (odd); None: the smallest odd size holding :data:`MASS_KEPT` of every
            layer's kernel.

    Returns:
        ``(Pr, Pc, 2, L, size, size)`` [left, right], each kernel non-negative summing to 1;
        device/dtype follow ``field.pairs``.

    Example:
        >>> from edgedp.physics.kernels import dp_kernel_pair
        >>> field = uniform_field(dp_kernel_pair(6.0, 'disk'), (2, 2))
        >>> pk = field_layer_kernels(field, [-2.0, 0.0, 2.0], 0.5, 9)
        >>> tuple(pk.shape), [round(float(d), 3) for d in kernel_disparity(pk[0, 0])]
        ((2, 2, 2, 3, 9, 9), [-1.0, 0.0, 1.0])
    """
    pairs = field.pairs
    r = torch.as_tensor(radii, dtype=torch.float64).detach().cpu().reshape(-1)
    if r.numel() == 0 or not torch.isfinite(r).all():
        raise ValueError("radii must be a non-empty finite 1-D sequence")
    if not (disparity_per_radius > 0 and math.isfinite(disparity_per_radius)):
        raise ValueError(f"disparity_per_radius must be > 0, got {disparity_per_radius}")
    base = field.disparity.to(torch.float64).cpu()  # (Pr, Pc)
    if not bool((base > 0).all()):
        raise ValueError(f"every cell's pair must have a positive (behind) disparity, got min {float(base.min()):.3f} px")
    pr, pc, _, k, _ = pairs.shape
    scales = disparity_per_radius * r.abs()[None, None, :] / base[..., None]  # (Pr, Pc, L)
    if size is None:
        size = _holding_size(pairs, float(scales.max()))
    if int(size) != size or size < 1 or size % 2 != 1:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    src = pairs[:, :, :, None]  # (Pr, Pc, 2, 1, K, K)
    s = scales.to(device=pairs.device, dtype=pairs.dtype)
    for _ in range(max(0, refine)):
        trial = resize_kernel(src, s[:, :, None], size)  # (Pr, Pc, 2, L, size, size)
        got = kernel_disparity(trial.movedim(2, 0)).to(torch.float64).cpu()  # (Pr, Pc, L)
        want = disparity_per_radius * r.abs()[None, None, :]
        fix = torch.where(got > 1e-9, want / got.clamp_min(1e-9), torch.ones_like(got))
        s = s * fix.to(s)
    out = resize_kernel(src, s[:, :, None], size)
    front = (r < 0).to(device=out.device)[None, None, None, :, None, None]
    out = torch.where(front, mirror_kernel(out), out)
    zero = (r == 0).to(device=out.device)
    if bool(zero.any()):
        delta = torch.zeros(size, size, device=out.device, dtype=out.dtype)
        delta[size // 2, size // 2] = 1
        out[:, :, :, zero] = delta
    return out


def _holding_size(pairs: Tensor, scale: float) -> int:
    """Smallest odd K whose centred box holds at least :data:`MASS_KEPT` of every kernel of
    ``pairs`` (..., K, K) once scaled by ``scale`` about the centre (+1 px of bilinear footprint)."""
    k = pairs.shape[-1]
    flat = pairs.reshape(-1, k, k)
    flat = flat / flat.sum(dim=(-1, -2), keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
    half = k // 2
    for e in range(half + 1):
        if float(flat[:, half - e : half + e + 1, half - e : half + e + 1].sum(dim=(-1, -2)).min()) >= MASS_KEPT:
            break
    return 2 * (math.ceil(e * max(scale, 0.0) - 1e-6) + 1) + 1
