"""Estimate a capture's spatially varying, asymmetric DP kernel field from its DP pair alone.

Why: the symmetric parametric pair (:func:`edgedp.physics.kernels.dp_kernel_pair`) misses what
the Pixel 4 calibration shows: off the optical axis the full-aperture PSF is brighter on the side
nearer the axis, so the left and right kernels are not mirror images and their asymmetry changes
across the frame (and between captures, with the focus distance).  The model here is the
parametric pair with a per-cell *pupil tilt* ``(tilt_x, tilt_y)``
(:func:`edgedp.physics.kernels.tilted_kernel_pair`), on a ``grid`` of cells.

How it is identified (what the latent cannot absorb): for a region at one depth,
``y_L = x conv k_L`` and ``y_R = x conv k_R``, so ``y_L conv k_R = y_R conv k_L`` whatever the
sharp image ``x`` (the *cross-convolution* relation; it holds for any filter applied to both views,
and the horizontal derivative is used so that flat regions and the mean do not count).  A re-render
error with a free latent does not identify the asymmetry, since the latent absorbs kernel error;
the cross-convolution residual has no latent.  Per candidate tilt and per layer ``i`` (the layer's
kernels are the candidate pair resized to the layer's disparity) the residual
``e_i = box(|g_L conv k_R,i - g_R conv k_L,i|^2)`` is normalised by the energy of its two terms
``n_i = box(|g_L conv k_R,i|^2 + |g_R conv k_L,i|^2)``, so that a blurrier pair does not win by
attenuating both; each pixel takes its best layer (the smallest ``e_i / n_i``, the depth
there), and a cell's evidence for the candidate is ``sum e / sum n`` over its pixels.  Cells with
little texture borrow evidence from their neighbours (``neighbour_weight``), since the pupil tilt
varies smoothly over the frame.  Measured on Pixel 4 scene 001 against the calibration's kernels:
README "Restoration quality".

Conventions: CONVENTIONS.md (views left then right; kernels centred, true convolution; ``r > 0``
behind the focal plane, where the left kernel's mass is on the left; in front (``r < 0``) each
kernel is rotated by 180 degrees: the pupil image is inverted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..physics.blur import fast_size
from ..physics.kernel_field import KernelField, field_layer_kernels, recentre_pair
from ..physics.kernels import ButterworthParams, tilted_kernel_pair
from ..physics.fourier import centred_kernel_spectrum


@dataclass(frozen=True)
class FieldEstimationConfig:
    """Settings of :func:`estimate_kernel_field`.

    Attributes:
        grid: (rows, cols) of cells (the kernel field's grid; the thesis' Stage 3 uses 6 x 8).
        tilts_x, tilts_y: candidate pupil tilts per cell (:func:`tilted_kernel_pair`); 0 in both
            keeps the symmetric pair.  The Pixel 4 calibration's kernels fit tilts of about
            +-0.6 horizontally and +-0.4 vertically at the frame's edges.
        window: box (px) over which the per-pixel layer choice of the residual is made (as the
            fit's likelihood, :attr:`edgedp.fit.FitConfig.fuse_window`).
        neighbour_weight: weight of each of a cell's 8 neighbours' evidence added to its own
            (0: cells alone).  A smooth pupil tilt makes neighbours informative; textureless cells
            then follow their neighbours instead of noise.
        scale: the evidence is computed on the views down-scaled by this factor (box average),
            with the layer radii divided by it and every ``scale``-th layer (the largest kept):
            ``scale**3`` times fewer operations.  The tilt is a shape across the whole disk, so it
            survives the down-scaling where the blur is large, which is where it matters.
    """

    grid: tuple[int, int] = (6, 8)
    tilts_x: tuple[float, ...] = (-0.6, -0.3, 0.0, 0.3, 0.6)
    tilts_y: tuple[float, ...] = (-0.4, 0.0, 0.4)
    window: int = 15
    neighbour_weight: float = 0.5
    scale: int = 2

    def __post_init__(self) -> None:
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be two positive ints, got {self.grid}")
        for t in (*self.tilts_x, *self.tilts_y):
            if not abs(t) < 1:
                raise ValueError(f"tilts must lie in (-1, 1), got {t}")
        if not self.tilts_x or not self.tilts_y:
            raise ValueError("tilts_x and tilts_y need at least one value each")
        if self.window < 1 or self.neighbour_weight < 0 or self.scale < 1:
            raise ValueError("window and scale must be >= 1 and neighbour_weight >= 0")

    @property
    def candidates(self) -> list[tuple[float, float]]:
        """Every (tilt_x, tilt_y) pair tried, tilt_y varying fastest."""
        return [(float(a), float(b)) for a in self.tilts_x for b in self.tilts_y]


@dataclass
class FieldEvidence:
    """Cross-convolution evidence of a capture (or of several, :meth:`combined`) for each
    candidate tilt in each cell.

    Attributes:
        candidates: (C, 2) candidate (tilt_x, tilt_y).
        residual: (C, Pr, Pc) the cell's summed residual ``sum e`` at its pixels' best layers.
        energy: (C, Pr, Pc) the summed normaliser ``sum n`` at the same layers.
    """

    candidates: Tensor
    residual: Tensor
    energy: Tensor

    def normalised(self) -> "FieldEvidence":
        """The same evidence scaled so that the capture's total energy is 1: each capture
        weighs the same in :meth:`combined`, whatever its size and contrast."""
        scale = float(self.energy.sum()) / self.energy.shape[0]
        scale = scale if scale > 0 else 1.0
        return FieldEvidence(self.candidates, self.residual / scale, self.energy / scale)

    def combined(self, other: "FieldEvidence", weight: float = 1.0) -> "FieldEvidence":
        """This evidence plus ``weight`` x ``other``'s (same candidates and grid): pooled over
        captures (a device profile's prior) or a prior added to one capture."""
        if other.residual.shape != self.residual.shape or not torch.allclose(other.candidates, self.candidates):
            raise ValueError("evidence of different candidates or grids cannot be combined")
        return FieldEvidence(self.candidates, self.residual + weight * other.residual, self.energy + weight * other.energy)

    def choose(self, neighbour_weight: float = 0.5) -> Tensor:
        """(Pr, Pc, 2) tilt per cell: the candidate of least ``sum e / sum n`` after adding
        ``neighbour_weight`` x each of the 8 neighbours' sums."""
        pool = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=self.residual.dtype) * neighbour_weight
        pool[1, 1] = 1.0

        def spread(x: Tensor) -> Tensor:
            return F.conv2d(x[:, None], pool[None, None], padding=1)[:, 0]

        ratio = spread(self.residual) / spread(self.energy).clamp_min(1e-30)
        best = ratio.argmin(0)  # (Pr, Pc)
        return self.candidates[best]


@dataclass
class FieldEstimate:
    """What :func:`estimate_kernel_field` found.

    Attributes:
        tilts: (Pr, Pc, 2) chosen (tilt_x, tilt_y) per cell.
        field: the :class:`KernelField` of those tilts (source ``estimated``): behind-orientation
            pairs at ``radius``, recentred.
        radius: px, the radius the pairs are drawn at (the fit's largest |r|).
        evidence: the per-candidate evidence the choice came from.
    """

    tilts: Tensor
    field: KernelField
    radius: float
    evidence: FieldEvidence


def cell_sums(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(..., H, W)`` -> ``(..., Pr, Pc)``: sums over the grid's equal cells (cell ``(i, j)``
    holds rows ``[i H // Pr, (i + 1) H // Pr)``, the same for columns)."""
    h, w = x.shape[-2:]
    pr, pc = grid
    rows = [(i * h // pr, (i + 1) * h // pr) for i in range(pr)]
    cols = [(j * w // pc, (j + 1) * w // pc) for j in range(pc)]
    return torch.stack([torch.stack([x[..., r0:r1, c0:c1].sum((-1, -2)) for c0, c1 in cols], -1) for r0, r1 in rows], -2)


def cross_convolution_evidence(views: Tensor, layer_pairs: Tensor, grid: tuple[int, int], window: int) -> tuple[Tensor, Tensor]:
    """Evidence of one uniform candidate: ``(2, H, W)`` views and its ``(2, L, K, K)`` layer
    kernels [left, right] -> ``(residual, energy)``, each ``(Pr, Pc)`` (module docstring)."""
    g = views[:, :, 1:] - views[:, :, :-1]  # horizontal derivative, (2, H, W - 1)
    h, w = g.shape[-2:]
    k = layer_pairs.shape[-1]
    p = k // 2 + 4
    hp, wp = fast_size(h + 2 * p), fast_size(w + 2 * p, even=True)
    yf = torch.fft.rfft2(F.pad(g[None], (p, wp - w - p, p, hp - h - p), mode="replicate")[0])  # (2, Hp, Wf)
    half = window // 2
    best_ratio = best_e = best_n = None
    for i in range(layer_pairs.shape[1]):
        kf = centred_kernel_spectrum(layer_pairs[:, i].to(g), (hp, wp))  # (2, Hp, Wf)
        both = torch.fft.irfft2(torch.stack([yf[0] * kf[1], yf[1] * kf[0]]), s=(hp, wp))[:, p : p + h, p : p + w]
        e = (both[0] - both[1]).square()
        n = both.square().sum(0)
        en = F.avg_pool2d(torch.stack([e, n])[None], 2 * half + 1, 1, half, count_include_pad=False)[0]
        ratio = en[0] / en[1].clamp_min(1e-30)
        if best_ratio is None:
            best_ratio, best_e, best_n = ratio, en[0], en[1]
        else:
            better = ratio < best_ratio
            best_ratio = torch.where(better, ratio, best_ratio)
            best_e = torch.where(better, en[0], best_e)
            best_n = torch.where(better, en[1], best_n)
    both = cell_sums(torch.stack([best_e, best_n]), grid)
    return both[0], both[1]


def working_scale(views: Tensor, radii: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    """The ``(2, H, W)`` views box-averaged by ``scale`` and the radii for them: divided by
    ``scale``, every ``scale``-th layer counted from the largest |r| on each side (so the largest
    layers, where the tilt shows, are kept)."""
    if scale == 1:
        return views, radii
    h, w = views.shape[-2:]
    small = F.avg_pool2d(views[None, :, : h - h % scale, : w - w % scale], scale)[0]
    order = torch.argsort(radii)
    keep = set()
    for side in (radii > 0, radii < 0):
        idx = [int(i) for i in order if side[i]]
        keep.update(idx[::-1][::scale])
    keep.update(int(i) for i in torch.nonzero(radii == 0).flatten())
    chosen = sorted(keep, key=lambda i: float(radii[i]))
    return small, radii[chosen] / scale


def pair_size(radius: float) -> int:
    """Kernel size of a field's pairs at ``radius`` px: ``2 ceil(radius) + 5``, two px more on
    each side than the disk needs, so recentring (a tilt moves the centroid by up to ~0.15 r)
    shifts no mass out of the window."""
    return 2 * math.ceil(float(radius) - 1e-6) + 5


def recentred_tilted_pair(
    radius: float, tilt: tuple[float, float], *, model: str = "butterworth", params: ButterworthParams = ButterworthParams()
) -> Tensor:
    """The ``(2, K, K)`` float64 pair of one candidate tilt at ``radius`` px, recentred
    (``K = pair_size(radius)``): what a cell of an estimated field holds."""
    return recentre_pair(tilted_kernel_pair(radius, tilt[0], tilt[1], model, params, size=pair_size(radius), dtype=torch.float64))


def field_evidence(
    views: Tensor,
    radii: Tensor,
    disparity_per_radius: float,
    config: FieldEstimationConfig = FieldEstimationConfig(),
    *,
    model: str = "butterworth",
    params: ButterworthParams = ButterworthParams(),
    progress=None,
) -> FieldEvidence:
    """The cross-convolution evidence of every candidate tilt of ``config`` in every cell of the
    ``(2, H, W)`` views [left, right] for the fit's layer ``radii`` (L,) (module docstring).
    ``progress(step, total)`` is called after each candidate."""
    radii = torch.as_tensor(radii, dtype=torch.float64).reshape(-1)
    if float(radii.abs().max()) <= 0:
        raise ValueError("a kernel field needs a layer with blur (max |radius| > 0)")
    views, radii = working_scale(views, radii, config.scale)
    big = float(radii.abs().max())
    cands = config.candidates
    residual, energy = [], []
    layer_size = 2 * math.ceil(big - 1e-6) + 1  # the fit's kernel size
    for step, (tx, ty) in enumerate(cands, 1):
        pair = recentred_tilted_pair(big, (tx, ty), model=model, params=params)
        layers = field_layer_kernels(KernelField(pair[None, None]), radii, disparity_per_radius, layer_size)[0, 0]
        e, n = cross_convolution_evidence(views, layers.to(views.dtype), config.grid, config.window)
        residual.append(e)
        energy.append(n)
        if progress is not None:
            progress(step, len(cands))
    return FieldEvidence(torch.tensor(cands, dtype=torch.float64), torch.stack(residual).double().cpu(), torch.stack(energy).double().cpu())


def tilted_field(
    tilts: Tensor, radius: float, *, model: str = "butterworth", params: ButterworthParams = ButterworthParams(),
    dtype=torch.float32, source: str = "estimated",
) -> KernelField:
    """``(Pr, Pc, 2)`` tilts -> the :class:`KernelField` of recentred behind-orientation pairs at
    ``radius`` px (``(Pr, Pc, 2, K, K)``, ``K = 2 ceil(radius) + 5``: :func:`pair_size`)."""
    size = pair_size(radius)
    cache: dict[tuple[float, float], Tensor] = {}
    pr, pc, _ = tilts.shape
    out = []
    for t in tilts.reshape(-1, 2).tolist():
        key = (round(t[0], 6), round(t[1], 6))
        if key not in cache:
            cache[key] = recentred_tilted_pair(radius, key, model=model, params=params)
        out.append(cache[key])
    return KernelField(torch.stack(out).reshape(pr, pc, 2, size, size).to(dtype), source)


def estimate_kernel_field(
    views: Tensor,
    radii: Tensor,
    disparity_per_radius: float,
    config: FieldEstimationConfig = FieldEstimationConfig(),
    *,
    model: str = "butterworth",
    params: ButterworthParams = ButterworthParams(),
    prior: FieldEvidence | None = None,
    prior_weight: float = 1.0,
    progress=None,
) -> FieldEstimate:
    """Estimate the capture's kernel field from its DP pair alone (module docstring).

    Args:
        views: (2, H, W) [left, right], on the fit's scale.
        radii: (L,) the fit's signed layer radii (px).
        disparity_per_radius: DP disparity per px of radius of the fit's layers.
        config: candidates, grid, window, neighbour weight.
        model, params: the parametric kernel the tilt is applied to.
        prior: evidence pooled over other captures of the same device (a profile's), added with
            ``prior_weight`` after normalising both, so a capture with little texture in a cell
            follows the device.
        progress: ``progress(step, total)`` per candidate.

    Returns:
        :class:`FieldEstimate` (tilts, the field of recentred pairs at the largest |radius|, evidence).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 61, 83, generator=g), 3, 1, 1)[0, 0]
        >>> from edgedp.physics.kernels import kernel_disparity
        >>> pair = recentre_pair(tilted_kernel_pair(3.0, 0.6, size=11))
        >>> views = torch.stack([torch.nn.functional.conv2d(x[None, None], pair[v].flip(-1, -2)[None, None], padding=5)[0, 0] for v in range(2)])
        >>> from edgedp.physics import behind_radii
        >>> cfg = FieldEstimationConfig(grid=(1, 1), tilts_x=(-0.6, 0.0, 0.6), tilts_y=(0.0,), scale=1)
        >>> est = estimate_kernel_field(views, behind_radii(3, 4), float(kernel_disparity(pair)) / 3, cfg)
        >>> est.tilts[0, 0].tolist()
        [0.6, 0.0]
    """
    radii = torch.as_tensor(radii, dtype=torch.float64).reshape(-1)
    evidence = field_evidence(views, radii, disparity_per_radius, config, model=model, params=params, progress=progress)
    chosen = evidence.normalised()
    if prior is not None:
        chosen = chosen.combined(prior.normalised(), prior_weight)
    tilts = chosen.choose(config.neighbour_weight)
    radius = float(radii.abs().max())
    field = tilted_field(tilts, radius, model=model, params=params, dtype=views.dtype)
    return FieldEstimate(tilts=tilts, field=field, radius=radius, evidence=evidence)
