"""Parametric dual-pixel (DP) blur kernels and kernel resampling.

Pure tensor functions, no I/O.  Conventions (see ``CONVENTIONS.md``):

- A kernel is ``(K, K)`` with K odd, centred at ``(K // 2, K // 2)`` (row, col), non-negative,
  summing to 1.  It is the point-spread function of a **true convolution**: mass at negative
  column offsets shifts the image to the left.
- A DP pair is stacked ``[left, right]`` on the first dimension: ``(2, K, K)``; a pyramid is
  ``(2, L, K, K)``.
- Signed blur radius ``r`` (px): ``r > 0`` behind the focal plane (the thesis' "front focus"),
  ``r < 0`` in front of it, ``r = 0`` in focus (delta pair).  For ``r > 0`` the left kernel's
  centre of mass is at a negative column offset and the right kernel is the left one rotated by
  180 degrees; for ``r < 0`` the two are swapped.  DP disparity of a pair is
  ``centroid_x(right) - centroid_x(left)`` and has the sign of ``r``.

How a parametric kernel is rendered (both models)
-------------------------------------------------
The continuous PSF is defined in coordinates normalised by the radius (``u = p / |r|``, the unit
disk) and sampled on a fixed fine grid of ``(2N+1)^2`` points covering ``[-1, 1]^2``
(``N = max(128, ceil(4 |r|))``, i.e. at most 1/4 px apart for ``|r| <= 32``).  Each sample carries
the PSF value times its (anti-aliased) disk coverage and is placed at ``p = |r| u`` px and
*bilinearly splatted* onto the pixel grid (weights ``max(0, 1 - |dx|) * max(0, 1 - |dy|)``, i.e.
the continuous PSF blurred by a 1-px box and integrated over each pixel's area).  Consequences
that other modules may rely on:

- the kernel is an exactly continuous function of ``r`` (for ``|r| <= 32``, where N is fixed),
  and ``r -> 0`` tends to the delta;
- all samples lie within ``|dx|, |dy| <= |r|`` px, so the splatted kernel fits inside
  ``K = 2 ceil(|r|) + 1``: nothing is ever cut off by the kernel size;
- splatting preserves first moments exactly, so the centroid (and the DP disparity) is exactly
  the one of the continuous PSF: proportional to ``|r|`` up to the (radius-dependent, px-sized)
  smoothing of the Butterworth profile.  With default :class:`ButterworthParams` the pair's
  disparity (``kernel_disparity(dp_kernel_pair(r))``) is 0.562, 1.210, 1.868, 2.525, 3.179 px for
  r = 1..5, 6.430 for r = 10 and 10.961 for r = 17 (about ``0.647 r - 0.04`` for r >= 5); for the
  ``"disk"`` model it is ``r / 2`` (to 1e-4 relative).  :func:`kernel_pyramid` layers, being
  resized copies of the largest kernel, have exactly proportional disparities
  (``0.6448 r`` with R = 17 and default parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "tilted_kernel_pair",
    "ButterworthParams",
    "KernelModel",
    "dp_kernel_pair",
    "kernel_pyramid",
    "resize_kernel",
    "behind_radii",
    "both_radii",
    "kernel_centroid",
    "kernel_disparity",
    "swap_focus_side",
    "mirror_kernel",
]

KernelModel = Literal["butterworth", "disk"]
_MODELS = ("butterworth", "disk")

# Radii within this much above an integer count as that integer when choosing K, so that float
# noise (e.g. 17.000001 from a linspace) does not grow K by 2; the mass such a kernel would put
# one pixel further out is below 1e-6 and is dropped by the renormalisation.
_SIZE_TOL = 1e-6
# Samples of the normalised PSF per unit radius (fixed up to |r| = 32 px so that kernels are an
# exactly continuous function of r there; finer beyond so samples stay <= 1/4 px apart).
_MIN_SAMPLES_PER_RADIUS = 128
# Gauss-Hermite rule used for the 1-D Gaussian smoothing of the radial Butterworth profile.
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite.hermgauss(16)


@dataclass(frozen=True)
class ButterworthParams:
    """Parameters of the Butterworth DP kernel model (Abuolaim et al., "Learning to Reduce Defocus
    Blur by Realistically Modeling Dual-Pixel Data", ICCV 2021).

    For a kernel of radius ``r_c`` (k = 2 r_c + 1) the radial profile inside the disk of radius
    ``r_c`` is the Butterworth high-pass ``B(rho) = q / (1 + q)``, ``q = (rho^2 / D0^2)^n``,
    ``D0 = (k - 1) / cutoff``, rescaled so that it runs from ``beta`` (centre) to 1 (disk edge):
    a "donut" whose rim is brighter than its centre (optical aberration).

    Attributes:
        order: ``n``, the Butterworth order; larger is a sharper centre/rim transition.
            The thesis uses n in {3, 6, 9}.  Must be > 0.
        cutoff: ``D0 = (k - 1) / cutoff`` (= ``2 r_c / cutoff``): larger is a wider bright rim.
            The thesis uses {2, 2.5}.  Must be > 0.
        beta: profile value at the centre after rescaling to ``[beta, 1]``; ``beta = 1`` is a
            flat disk.  The thesis uses {0.1, 0.2}.  Must be in [0, 1].
        smooth_sigma: standard deviation (px) of the light Gaussian smoothing of the profile.
            It is applied along the radius to the rescaled Butterworth profile (so the kernel
            keeps its support and stays continuous in r); the disk edge itself is anti-aliased by
            the pixel integration (see the module docstring).  Must be >= 0.
    """

    order: float = 3.0
    cutoff: float = 2.5
    beta: float = 0.2
    smooth_sigma: float = 0.5

    def __post_init__(self) -> None:
        if not (self.order > 0 and math.isfinite(self.order)):
            raise ValueError(f"ButterworthParams.order must be > 0, got {self.order}")
        if not (self.cutoff > 0 and math.isfinite(self.cutoff)):
            raise ValueError(f"ButterworthParams.cutoff must be > 0, got {self.cutoff}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"ButterworthParams.beta must be in [0, 1], got {self.beta}")
        if not (self.smooth_sigma >= 0 and math.isfinite(self.smooth_sigma)):
            raise ValueError(f"ButterworthParams.smooth_sigma must be >= 0, got {self.smooth_sigma}")


def _min_size(radius: float) -> int:
    """Smallest kernel size holding a kernel of radius ``|radius|``: ``2 ceil(|radius|) + 1``."""
    return 2 * max(0, math.ceil(abs(radius) - _SIZE_TOL)) + 1


def _check_model(model: str) -> None:
    if model not in _MODELS:
        raise ValueError(f"unknown kernel model {model!r}; expected one of {_MODELS}")


def _check_size(size: int | None, radius: float) -> int:
    need = _min_size(radius)
    if size is None:
        return need
    if int(size) != size or size % 2 != 1:
        raise ValueError(f"kernel size must be an odd integer, got {size}")
    if size < need:
        raise ValueError(f"kernel size {size} is too small for radius {radius} (needs >= {need})")
    return int(size)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Render in float64 when asked for it, otherwise in float32 (also for half precision).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _delta(size: int, *, device, dtype) -> Tensor:
    k = torch.zeros(size, size, device=device, dtype=dtype)
    k[size // 2, size // 2] = 1
    return k


def _profile(rho: Tensor, radius: float, model: str, params: ButterworthParams) -> Tensor:
    """Radial PSF profile at distance ``rho`` (px) from the centre, for a disk of ``radius`` px.

    ``"disk"``: 1.  ``"butterworth"``: ``beta + (1 - beta) B(rho) / B(radius)``, with ``B``
    evaluated at ``min(rho, radius)`` (flat continuation outside the disk, so smoothing does not
    darken or brighten the rim), Gaussian-smoothed along the radius by ``smooth_sigma`` px.
    """
    if model == "disk" or params.beta >= 1.0:
        return torch.ones_like(rho)
    n, c, beta = params.order, params.cutoff, params.beta
    # r^2 / D0^2 with D0 = (k - 1) / cutoff = 2 radius / cutoff, in terms of t = rho / radius.
    scale = c * c / 4.0
    b_edge = scale**n / (1.0 + scale**n)

    def rescaled(x: Tensor) -> Tensor:
        t = (x.abs() / radius).clamp(max=1.0)
        q = (t * t * scale) ** n
        return beta + (1.0 - beta) * (q / (1.0 + q)) / b_edge

    sigma = params.smooth_sigma
    if sigma == 0:
        return rescaled(rho)
    out = torch.zeros_like(rho)
    for x, w in zip(_GH_NODES, _GH_WEIGHTS):
        # The profile is even in rho, so |rho + offset| implements the reflection at the centre.
        out = out + float(w) * rescaled(rho + float(math.sqrt(2.0) * sigma * x))
    return out / float(_GH_WEIGHTS.sum())


def _radial_profile_on(ur: Tensor, radius: float, model: str, params: ButterworthParams) -> Tensor:
    """:func:`_profile` at normalised radii ``ur`` (``rho = ur * radius``), via a fine 1-D table.

    The profile is radial, so it is evaluated once on 2049 radii in [0, max(ur)] and linearly
    interpolated, instead of on every sample of the 2-D grid (16 Gauss-Hermite evaluations each):
    ~50x faster, with an interpolation error far below float32 resolution of the kernel.
    """
    top = float(ur.max())
    n = 2048
    table = _profile(torch.linspace(0.0, top, n + 1, device=ur.device, dtype=ur.dtype) * radius, radius, model, params)
    pos = ur / top * n
    i0 = pos.floor().clamp(0, n - 1)
    frac = pos - i0
    i0 = i0.long()
    return table[i0] * (1 - frac) + table[i0 + 1] * frac


def _splat_matrix(size: int, positions: Tensor) -> Tensor:
    """(size, P) bilinear splatting weights of 1-D ``positions`` (px, relative to the centre)."""
    centres = torch.arange(size, device=positions.device, dtype=positions.dtype) - size // 2
    return (1.0 - (centres[:, None] - positions[None, :]).abs()).clamp(min=0.0)


def _half_aperture_kernels(
    radius: float, model: str, params: ButterworthParams, size: int, device, dtype, tilt: tuple[float, float] = (0.0, 0.0),
    views: tuple[int, ...] = (0, 1),
) -> Tensor:
    """``(len(views), size, size)`` kernels for ``radius > 0`` (view 0 left, 1 right), each normalised.

    The full-aperture PSF ``S`` (disk x radial profile x the pupil tilt ``1 + tx u_x + ty u_y``,
    clipped at 0) is split between the views by the horizontal linear ramp: left ``S (1 - u_x) / 2``
    (1 at the disk's left edge, 0 at its right edge), right ``S (1 + u_x) / 2``.  Without tilt the
    right kernel is the left one rotated by 180 degrees."""
    n = max(_MIN_SAMPLES_PER_RADIUS, math.ceil(4.0 * radius))
    u = torch.arange(-n, n + 1, device=device, dtype=dtype) / n  # normalised coordinate, [-1, 1]
    uy, ux = u[:, None], u[None, :]
    ur = torch.sqrt(uy * uy + ux * ux)
    # Disk coverage of each sample's cell (1/n wide), anti-aliased over one cell at the edge.
    coverage = ((1.0 - ur) * n + 0.5).clamp(0.0, 1.0)
    full = coverage * _radial_profile_on(ur, radius, model, params)
    if tilt != (0.0, 0.0):
        full = full * (1.0 + float(tilt[0]) * ux + float(tilt[1]) * uy).clamp(min=0.0)
    splat = _splat_matrix(size, u * radius)  # same for rows and columns
    ramps = ((1.0 - ux) / 2.0, (1.0 + ux) / 2.0)  # the left view's share, the right view's
    out = torch.stack([splat @ (full * ramps[v]) @ splat.T for v in views])
    return out / out.sum(dim=(-2, -1), keepdim=True)


def _left_kernel(radius: float, model: str, params: ButterworthParams, size: int, device, dtype) -> Tensor:
    """Left kernel for ``radius > 0`` (mass on the left), (size, size), normalised."""
    return _half_aperture_kernels(radius, model, params, size, device, dtype, views=(0,))[0]


def tilted_kernel_pair(
    radius: float,
    tilt_x: float,
    tilt_y: float = 0.0,
    model: KernelModel = "butterworth",
    params: ButterworthParams = ButterworthParams(),
    *,
    size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """An asymmetric DP pair behind the focal plane: :func:`dp_kernel_pair` with a pupil tilt.

    Off the optical axis the full-aperture PSF is not uniform: light through the side of the
    aperture nearer the axis arrives brighter (Pixel 4 calibration: the left/right horizontal
    spread ratio runs from 1.16 at the frame's left edge to 0.85 at its right edge).  The model
    multiplies the full-aperture PSF by ``1 + tilt_x u_x + tilt_y u_y`` (``u`` the position in
    the disk normalised to [-1, 1], x to the right, y down; clipped at 0) before the linear ramp
    splits it between the views, so the right kernel is no longer the left one rotated: the pair
    is not mirror-symmetric.  ``tilt_x = tilt_y = 0`` is :func:`dp_kernel_pair` exactly.  The
    tilt moves the pair's common centroid; :func:`edgedp.physics.kernel_field.recentre_pair`
    puts it back before a pair is used as a layer kernel.

    Args:
        radius: blur radius in px, ``> 0`` (orientation ``behind``: the left kernel's mass on
            the left; rotate each kernel by 180 degrees for ``in_front``).
        tilt_x, tilt_y: pupil tilt, in ``(-1, 1)``.
        model, params, size, device, dtype: as :func:`dp_kernel_pair`.

    Returns:
        ``(2, K, K)`` [left, right], each non-negative and summing to 1.

    Example:
        >>> pair = tilted_kernel_pair(5.0, 0.5)
        >>> bool(torch.allclose(tilted_kernel_pair(5.0, 0.0), dp_kernel_pair(5.0), atol=1e-6))
        True
        >>> bool(torch.allclose(pair[1], mirror_kernel(pair[0]), atol=1e-3))  # no longer mirrored
        False
    """
    _check_model(model)
    radius = float(radius)
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be finite and > 0, got {radius}")
    if not (abs(tilt_x) < 1 and abs(tilt_y) < 1):
        raise ValueError(f"tilt must lie in (-1, 1), got ({tilt_x}, {tilt_y})")
    k = _check_size(size, radius)
    work = _work_dtype(dtype)
    return _half_aperture_kernels(radius, model, params, k, device, work, (float(tilt_x), float(tilt_y))).to(dtype)


def dp_kernel_pair(
    radius: float,
    model: KernelModel = "butterworth",
    params: ButterworthParams = ButterworthParams(),
    *,
    size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Parametric DP kernel pair for a signed blur radius.

    Args:
        radius: signed blur radius in px (may be non-integer).  ``r > 0`` behind the focal
            plane: the left kernel's mass is on the left (negative column offset).  ``r < 0``:
            left and right swapped.  ``r = 0``: a delta pair.
        model: ``"butterworth"`` (Abuolaim et al., ICCV 2021) or ``"disk"`` (translating disk,
            Punnappurath et al., ICCP 2020):

            - ``"butterworth"``: disk of radius ``|r|`` times the radial profile of
              :class:`ButterworthParams` (``beta`` at the centre rising to 1 at the rim,
              Gaussian-smoothed along the radius by ``smooth_sigma`` px), times the horizontal
              linear ramp below.
            - ``"disk"``: a uniform disk of radius ``|r|`` times the same ramp, i.e. the weight
              at column offset ``x`` is proportional to the distance ``|r| - x`` from the
              tangent at the disk's far (right) edge; identical to ``"butterworth"`` with
              ``beta = 1``.  Its disparity is ``r / 2`` (to 1e-4 relative).

            Ramp (left kernel, ``r > 0``): ``(|r| - x) / (2 |r|)``, 1 at the left edge of the
            disk, 0 at its right edge.  The right kernel is the left one rotated by 180 degrees.
            Each kernel is rendered by anti-aliased pixel integration (module docstring) and
            normalised to sum 1.
        params: Butterworth parameters (ignored by ``"disk"``).
        size: kernel size K (odd, >= ``2 ceil(|r|) + 1``); default ``2 ceil(|r|) + 1``.  Larger
            sizes only zero-pad.
        device, dtype: of the result.

    Returns:
        ``(2, K, K)``: ``[left, right]``, each non-negative and summing to 1.

    Raises:
        ValueError: unknown model, non-finite radius, even or too small ``size``.

    Example:
        >>> pair = dp_kernel_pair(4.0, 'butterworth')
        >>> tuple(pair.shape), [round(float(s), 4) for s in pair.sum((-1, -2))]
        ((2, 9, 9), [1.0, 1.0])
        >>> float(kernel_disparity(pair)) > 0  # r > 0: the right kernel's mass lies right
        True
    """
    _check_model(model)
    radius = float(radius)
    if not math.isfinite(radius):
        raise ValueError(f"radius must be finite, got {radius}")
    k = _check_size(size, radius)
    work = _work_dtype(dtype)
    if radius == 0.0:
        delta = _delta(k, device=device, dtype=work)
        return torch.stack([delta, delta.clone()]).to(dtype)
    left = _left_kernel(abs(radius), model, params, k, device, work)
    pair = torch.stack([left, mirror_kernel(left)])
    if radius < 0:
        pair = swap_focus_side(pair)
    return pair.to(dtype)


def kernel_pyramid(
    radii: Sequence[float] | Tensor,
    model: KernelModel = "butterworth",
    params: ButterworthParams = ButterworthParams(),
    *,
    size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DP kernel pairs for a stack of layers, all zero-padded to one size.

    As in the thesis (METHOD.md), the kernel of the largest radius ``R = max |r_i|`` is built
    analytically (:func:`dp_kernel_pair`) and every layer's kernel is that one resized to radius
    ``|r_i|`` with :func:`resize_kernel` (scale ``|r_i| / R``, so a layer with ``|r_i| = R`` is
    exactly ``dp_kernel_pair(R)``, and ``r_i = 0`` is a delta); layers with ``r_i < 0`` have
    left and right swapped.

    Args:
        radii: sequence or 1-D tensor of L signed radii (px, may be non-integer), e.g.
            :func:`behind_radii` or :func:`both_radii`.
        model, params: see :func:`dp_kernel_pair`.
        size: K (odd, >= ``2 ceil(R) + 1``); default ``2 ceil(R) + 1``.
        device, dtype: of the result (a tensor ``radii`` does not set them).

    Returns:
        ``(2, L, K, K)``: ``[left, right]`` x layers.

    Example:
        >>> k = kernel_pyramid(behind_radii(3, 4), 'disk')
        >>> tuple(k.shape), float(k[0, 0, 3, 3])  # layer 0 (r = 0) is a delta
        ((2, 4, 7, 7), 1.0)
    """
    r = torch.as_tensor(radii, dtype=torch.float64).detach().cpu().reshape(-1)
    if r.dim() != 1 or r.numel() == 0:
        raise ValueError("radii must be a non-empty 1-D sequence")
    if not torch.isfinite(r).all():
        raise ValueError("radii must be finite")
    big = float(r.abs().max())
    k = _check_size(size, big)
    work = _work_dtype(dtype)
    if big == 0.0:
        delta = _delta(k, device=device, dtype=work)
        return delta.expand(2, r.numel(), k, k).clone().to(dtype)
    base = dp_kernel_pair(big, model, params, size=k, device=device, dtype=work)  # (2, K, K)
    scales = (r.abs() / big).to(device=device, dtype=work)
    layers = resize_kernel(base[:, None], scales, k)  # (2, L, K, K)
    back = (r < 0).to(device=layers.device)[None, :, None, None]
    return torch.where(back, swap_focus_side(layers), layers).to(dtype)


def resize_kernel(kernels: Tensor, scale: float | Tensor, size: int) -> Tensor:
    """Spatially rescale centred kernels about their centre.

    An image of radius R becomes one of radius ``scale * R``; the result is zero-padded/cropped to
    ``size`` and renormalised to sum 1.  Implemented separably as a linear map per axis: with
    centred coordinates ``i`` (output) and ``j`` (input) the weight is
    ``max(0, 1 - |i - s j| / m) / m`` with ``m = max(s, 1)``:

    - ``s <= 1`` (down-scaling): every input pixel is splatted bilinearly at ``s j``, which is
      the adjoint of bilinear interpolation, i.e. anti-aliased triangle-filter down-sampling
      whose footprint grows as ``1 / s`` input pixels; it preserves the sum and the centroid
      (scaled by ``s``) exactly when nothing is cropped;
    - ``s >= 1`` (up-scaling): bilinear interpolation at ``i / s``;
    - both are the identity at ``s = 1`` (so ``size == K`` returns the input, up to the float
      rounding of the renormalisation), continuous in ``s``, and ``s -> 0`` gives a delta.

    Linear in the kernel values, hence differentiable w.r.t. them (and piecewise w.r.t. a tensor
    ``scale``).

    Args:
        kernels: ``(..., K, K)``, K odd, centred, non-negative.
        scale: float, or tensor broadcastable to ``kernels.shape[:-2]`` (one scale per kernel);
            must be >= 0.
        size: output size (odd).

    Returns:
        ``(..., size, size)`` (leading dims broadcast with ``scale``), each summing to 1; device
        and dtype follow ``kernels``.

    Example:
        >>> k = dp_kernel_pair(4.0, 'disk')  # (2, 9, 9)
        >>> small = resize_kernel(k[:, None], 0.5, 5)
        >>> tuple(small.shape), [round(float(s), 4) for s in small.sum((-1, -2)).flatten()]
        ((2, 1, 5, 5), [1.0, 1.0])
    """
    if kernels.dim() < 2 or kernels.shape[-1] != kernels.shape[-2] or kernels.shape[-1] % 2 != 1:
        raise ValueError(f"kernels must be (..., K, K) with K odd, got {tuple(kernels.shape)}")
    if int(size) != size or size < 1 or size % 2 != 1:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    k = kernels.shape[-1]
    s = torch.as_tensor(scale, device=kernels.device, dtype=kernels.dtype)
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("scale must be finite and >= 0")
    out_c = torch.arange(size, device=kernels.device, dtype=kernels.dtype) - size // 2
    in_c = torch.arange(k, device=kernels.device, dtype=kernels.dtype) - k // 2
    s = s[..., None, None]
    m = s.clamp(min=1.0)
    a = (1.0 - (out_c[:, None] - s * in_c[None, :]).abs() / m).clamp(min=0.0) / m  # (..., size, K)
    out = a @ kernels @ a.transpose(-1, -2)
    total = out.sum(dim=(-2, -1), keepdim=True)
    return out / total.clamp(min=torch.finfo(out.dtype).tiny)


def behind_radii(
    max_radius: float, num_layers: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Layer radii for a ``behind`` stack (r >= 0, edgedp.conventions; "front" is the thesis name): ``linspace(0, R, L)``, (L,).

    ``behind_radii(17, 18)`` is ``0, 1, ..., 17`` (layer 0 in focus).

    Example:
        >>> behind_radii(3, 4).tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not max_radius >= 0:
        raise ValueError(f"max_radius must be >= 0, got {max_radius}")
    return torch.linspace(0.0, float(max_radius), int(num_layers), device=device, dtype=dtype)


def both_radii(
    max_radius: float,
    num_layers_per_side: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Layer radii for a ``both`` stack: ``linspace(-R, R, 2N + 1)``, increasing, with 0 in the
    middle (index N), (2N + 1,).

    Example:
        >>> both_radii(3, 3).tolist()
        [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    """
    if num_layers_per_side < 0:
        raise ValueError(f"num_layers_per_side must be >= 0, got {num_layers_per_side}")
    if not max_radius >= 0:
        raise ValueError(f"max_radius must be >= 0, got {max_radius}")
    n = int(num_layers_per_side)
    r = torch.linspace(-float(max_radius), float(max_radius), 2 * n + 1, device=device, dtype=dtype)
    r[n] = 0.0  # exact zero for the in-focus layer whatever the float rounding
    return r


def kernel_centroid(kernels: Tensor) -> Tensor:
    """Centre of mass of ``(..., K, K)`` kernels relative to the centre pixel ``(K//2, K//2)``:
    ``(..., 2)`` as ``(dy, dx)`` in px (negative dx: mass on the left).  Kernels need not be
    normalised (the sum is divided out)."""
    kh, kw = kernels.shape[-2:]
    ys = torch.arange(kh, device=kernels.device, dtype=kernels.dtype) - kh // 2
    xs = torch.arange(kw, device=kernels.device, dtype=kernels.dtype) - kw // 2
    total = kernels.sum(dim=(-2, -1))
    dy = (kernels.sum(dim=-1) * ys).sum(dim=-1) / total
    dx = (kernels.sum(dim=-2) * xs).sum(dim=-1) / total
    return torch.stack([dy, dx], dim=-1)


def kernel_disparity(pair: Tensor) -> Tensor:
    """DP disparity of kernel pairs ``(2, ..., K, K)`` -> ``(...)``:
    ``centroid_x(right) - centroid_x(left)`` in px (positive behind the focal plane).

    Example:
        >>> pair = dp_kernel_pair(6.0, 'disk')
        >>> round(float(kernel_disparity(pair)), 3), round(float(kernel_disparity(swap_focus_side(pair))), 3)
        (3.0, -3.0)
    """
    if pair.shape[0] != 2:
        raise ValueError(f"pair must be (2, ..., K, K) [left, right], got {tuple(pair.shape)}")
    c = kernel_centroid(pair)[..., 1]
    return c[1] - c[0]


def swap_focus_side(pair: Tensor) -> Tensor:
    """Swap left and right of ``(2, ...)`` pairs: the front/back (behind / in front of the focal
    plane) flip of a symmetric DP pair."""
    if pair.shape[0] != 2:
        raise ValueError(f"pair must be (2, ...) [left, right], got {tuple(pair.shape)}")
    return pair.flip(0)


def mirror_kernel(kernels: Tensor) -> Tensor:
    """Rotate ``(..., K, K)`` kernels by 180 degrees (about the centre pixel)."""
    return kernels.flip(-2, -1)
