"""Tile-wise dual-pixel disparity estimate (for ``edgedp info`` and choosing the blur range).

Sign convention (CONVENTIONS.md): DP disparity ``d = x_right - x_left`` in pixels, the horizontal
shift of the right view relative to the left one, so ``right(x + d) ~ left(x)``.  ``d > 0``
means the content lies behind the focal plane (signed blur radius ``r > 0``, the thesis' "front
focus"); ``d < 0`` in front of it.  For a pair of blur kernels ``d = centroid_x(right) -
centroid_x(left)``.

Method, per non-overlapping ``tile x tile`` tile (all tiles and all shifts at once, in torch):

1. Both views are smoothed by a Gaussian (sigma 6 px) and differentiated along x (central
   difference).  Only x-structure carries horizontal disparity, and the derivative removes the DC
   level and the vignetting difference of the two views.  The heavy smoothing is deliberate: the
   DP kernels are lopsided (the left kernel's rim on the left is its brightest part), so matching
   sharp edges finds the rim-to-rim displacement (up to ~2x the blur radius), while matching the
   low frequencies finds the shift of the kernels' centres of mass, which is the disparity as
   defined above (measured on simulated scenes: sigma 1 overshot the top of the range by 2-5 px,
   sigma 6 by about 1 px, at tile 32).
2. For every integer shift ``s`` in ``[-max_disparity, max_disparity]`` the zero-mean normalized
   cross-correlation (ZNCC) of ``gl(x)`` and ``gr(x + s)`` is computed over each tile (the views
   differ in blur as well as position, so the per-tile normalization matters).  Outside the image
   the right view is extended by edge replication.
3. The best integer shift is refined by a parabola through the cost ``1 - ZNCC`` at ``s - 1, s,
   s + 1`` (offset clipped to +-0.5).
4. ``confidence = texture * peak * distinctness`` with
   ``texture = e / (e + texture_floor^2)`` (``e`` = geometric mean over the two views of the
   tile's mean squared x-gradient), ``peak = clip(ZNCC_best, 0, 1)`` and
   ``distinctness = clip((ZNCC_best - ZNCC_second) / 0.25, 0, 1)`` where ``ZNCC_second`` is the
   highest *other* local maximum over shifts (-1 if there is none; 0 distinctness for repetitive
   texture).  Tiles whose best shift is at the search limit get confidence 0 (the true
   disparity may lie outside the range).
5. Tiles with ``confidence < min_confidence`` get ``disparity = NaN``.

Tile ``(i, j)`` covers rows ``oy + i*tile : oy + (i+1)*tile`` and columns
``ox + j*tile : ox + (j+1)*tile`` with ``Ty = H // tile``, ``Tx = W // tile``,
``oy = (H % tile) // 2``, ``ox = (W % tile) // 2`` (the tile grid is centred).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import BEHIND, BOTH, IN_FOCUS, IN_FRONT, UNKNOWN
from ..errors import InputError

__all__ = ["DisparityEstimate", "estimate_disparity", "decide_side"]

ArrayLike = np.ndarray | torch.Tensor

#: |d| (px) above which a confident tile counts as defocused in :func:`decide_side`.
SIDE_THRESHOLD_PX = 0.5
#: Minimum fraction of confident tiles on a side for that side to count in :func:`decide_side`.
SIDE_MIN_FRACTION = 0.1
#: Percentiles of confident tiles' disparities reported as ``low`` / ``high``.
RANGE_PERCENTILES = (2.0, 98.0)

_PRESMOOTH_SIGMA = 6.0
_DISTINCT_SCALE = 0.25
_EPS = 1e-20


@dataclass(frozen=True)
class DisparityEstimate:
    """Per-tile DP disparity ``x_right - x_left`` (px) and its summary.

    Attributes:
        disparity: ``(Ty, Tx)`` float64, NaN where unreliable (confidence below threshold).
        confidence: ``(Ty, Tx)`` float64 in [0, 1].
        tile: tile size in pixels (tile grid centred, see module docstring).
        low, high: 2nd / 98th percentile of the reliable tiles' disparities (NaN if none).
        median: median of the reliable tiles' disparities (NaN if none).
        side: a :data:`edgedp.conventions.SIDES` name: ``"behind"`` (``d > 0`` dominates:
            ``r > 0``, the thesis' "front focus"), ``"in_front"`` (``d < 0``: ``r < 0``),
            ``"both"``, ``"in_focus"``, or ``"unknown"`` when no tile is reliable (e.g. a flat
            image).  See :func:`decide_side`.
    """

    disparity: np.ndarray
    confidence: np.ndarray
    tile: int
    low: float
    high: float
    median: float
    side: str


def decide_side(reliable: np.ndarray) -> str:
    """Classify the defocus side from the reliable tiles' disparities (1-D, no NaN).

    Rule: ``p`` / ``n`` = fraction of tiles with ``d > +0.5`` / ``d < -0.5`` px.  No tiles ->
    ``"unknown"``; both ``p, n >= 0.1`` -> ``"both"``; only ``p >= 0.1`` -> ``"behind"`` (r > 0);
    only ``n >= 0.1`` -> ``"in_front"`` (r < 0); neither -> ``"in_focus"``
    (:mod:`edgedp.conventions`).
    """
    d = np.asarray(reliable, dtype=np.float64).ravel()
    if d.size == 0:
        return UNKNOWN
    p = float(np.mean(d > SIDE_THRESHOLD_PX))
    n = float(np.mean(d < -SIDE_THRESHOLD_PX))
    pos, neg = p >= SIDE_MIN_FRACTION, n >= SIDE_MIN_FRACTION
    if pos and neg:
        return BOTH
    if pos:
        return BEHIND
    if neg:
        return IN_FRONT
    return IN_FOCUS


def _to_tensor(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        # Contiguous float32 copy: torch.from_numpy rejects negative strides and some dtypes.
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if t.ndim != 2:
        raise InputError(f"{name} must be a single-channel (H, W) image, got {tuple(t.shape)}")
    t = t.detach().to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contains NaN or infinite values")
    return t


def _x_gradient(img: torch.Tensor) -> torch.Tensor:
    """Gaussian-smoothed (sigma ``_PRESMOOTH_SIGMA``) central x-derivative, replicate borders. ``(H, W) -> (H, W)``."""
    r = int(3 * _PRESMOOTH_SIGMA + 0.5)
    u = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    g = torch.exp(-0.5 * (u / _PRESMOOTH_SIGMA) ** 2)
    g = g / g.sum()
    x = img[None, None]
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    x = F.pad(x, (1, 1, 0, 0), mode="replicate")
    return (0.5 * (x[..., 2:] - x[..., :-2]))[0, 0]


def estimate_disparity(
    left: ArrayLike,
    right: ArrayLike,
    *,
    max_disparity: int = 16,
    tile: int = 32,
    device: torch.device | str | None = None,
    min_confidence: float = 0.3,
    texture_floor: float = 1e-3,
) -> DisparityEstimate:
    """Estimate the per-tile DP disparity ``x_right - x_left`` of a left/right view pair.

    Args:
        left, right: ``(H, W)`` views in [0, 1] (numpy or torch), left first.
        max_disparity: search range ``[-max_disparity, max_disparity]`` px (integer).
        tile: tile size; ``H, W >= tile`` required.
        device: torch device for the computation (default: ``left``'s device if it is a tensor,
            else CPU).  Results are numpy arrays.
        min_confidence: tiles below it get ``disparity = NaN`` and are left out of the summary.
        texture_floor: x-gradient RMS (in image units per px) at which the texture term is 0.5.

    Returns:
        :class:`DisparityEstimate` with ``(Ty, Tx) = (H // tile, W // tile)`` tiles.
        A flat / textureless pair gives confidence 0 everywhere, all-NaN disparity,
        ``low = high = median = NaN`` and ``side == "unknown"``.
    """
    if tile < 3:
        raise ValueError(f"tile must be >= 3, got {tile}")
    if max_disparity < 1:
        raise ValueError(f"max_disparity must be >= 1, got {max_disparity}")
    if device is None:
        device = left.device if isinstance(left, torch.Tensor) else torch.device("cpu")
    dev = torch.device(device)
    lt = _to_tensor(left, "left", dev)
    rt = _to_tensor(right, "right", dev)
    if lt.shape != rt.shape:
        raise InputError(
            f"left and right views differ in size: {tuple(lt.shape)} vs {tuple(rt.shape)}"
        )
    h, w = lt.shape
    if h < tile or w < tile:
        raise InputError(f"image {h}x{w} is smaller than one {tile}x{tile} tile")

    with torch.no_grad():
        ncc, el, er = _tile_ncc(_x_gradient(lt), _x_gradient(rt), tile, int(max_disparity))
        best, c0, disp = _subpixel_peak(ncc, int(max_disparity))
        conf = _confidence(ncc, best, c0, el, er, texture_floor)

    confidence = conf.double().cpu().numpy()
    disparity = disp.double().cpu().numpy()
    disparity[confidence < min_confidence] = np.nan
    reliable = disparity[np.isfinite(disparity)]
    if reliable.size:
        low, high = (float(v) for v in np.percentile(reliable, RANGE_PERCENTILES))
        median = float(np.median(reliable))
    else:
        low = high = median = float("nan")
    return DisparityEstimate(
        disparity=disparity,
        confidence=confidence,
        tile=int(tile),
        low=low,
        high=high,
        median=median,
        side=decide_side(reliable),
    )


def _tile_ncc(gl: torch.Tensor, gr: torch.Tensor, tile: int, dmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per tile, the normalized cross-correlation of the left x-gradient ``gl`` with the right
    one ``gr`` (both (H, W)) shifted by ``s = -dmax .. dmax`` px: ``(ncc (2 dmax + 1, Ty, Tx),
    left energy (Ty, Tx), right energy (Ty, Tx))`` over the centred ``Ty x Tx`` tiles."""
    h, w = gl.shape
    ty, tx = h // tile, w // tile
    oy, ox = (h % tile) // 2, (w % tile) // 2
    rows = slice(oy, oy + ty * tile)
    gl = gl[rows, ox : ox + tx * tile]
    # Right view: same rows, columns extended by max_disparity on each side, so shift s
    # reads band[:, D + s : D + s + Tx*tile].  Beyond the image the gradient is 0 (the image
    # extended by edge replication has no x-structure there).
    band = F.pad(gr[rows], (dmax, dmax))[:, ox : ox + tx * tile + 2 * dmax]

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x[None, None], tile, stride=tile)[0, 0]

    shifts = range(-dmax, dmax + 1)
    width = tx * tile
    ml = pool(gl)
    vl = (pool(gl * gl) - ml * ml).clamp_min(0)
    ncc = torch.empty((len(shifts), ty, tx), dtype=gl.dtype, device=gl.device)
    for k, s in enumerate(shifts):
        gs = band[:, dmax + s : dmax + s + width]
        mr = pool(gs)
        vr = (pool(gs * gs) - mr * mr).clamp_min(0)
        cov = pool(gl * gs) - ml * mr
        ncc[k] = cov / torch.sqrt(vl * vr + _EPS)
    el = pool(gl * gl)
    er = pool(gr[rows, ox : ox + width] ** 2)
    return ncc, el, er


def _subpixel_peak(ncc: torch.Tensor, dmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best shift's index (Ty, Tx), its correlation and the disparity (px) refined by a
    parabola through the cost ``1 - ncc`` at the best shift and its neighbours (offset within
    +-0.5 px)."""
    n_s = ncc.shape[0]
    best = ncc.argmax(dim=0)  # (ty, tx)
    c0 = ncc.gather(0, best[None])[0]
    cm = ncc.gather(0, (best - 1).clamp_min(0)[None])[0]
    cp = ncc.gather(0, (best + 1).clamp_max(n_s - 1)[None])[0]
    # Parabola through the cost 1 - ncc (same vertex as through ncc).
    denom = cm - 2 * c0 + cp
    offset = torch.where(denom < -1e-9, 0.5 * (cm - cp) / denom, torch.zeros_like(denom))
    offset = offset.clamp(-0.5, 0.5)
    return best, c0, best.to(ncc.dtype) - dmax + offset


def _confidence(ncc: torch.Tensor, best: torch.Tensor, c0: torch.Tensor, el: torch.Tensor, er: torch.Tensor,
                texture_floor: float) -> torch.Tensor:
    """Per tile confidence in [0, 1]: texture (gradient energy of both views against
    ``texture_floor``) x peak height x how distinct the peak is from the second-highest local
    maximum; 0 where the best shift is at the search limit."""
    n_s = ncc.shape[0]
    # Second-highest local maximum over shifts, excluding the best and its neighbours.
    floor = torch.full_like(ncc[:1], -2.0)
    pad = torch.cat([floor, ncc, floor], dim=0)
    is_max = (ncc >= pad[:-2]) & (ncc >= pad[2:])
    idx = torch.arange(n_s, device=ncc.device)[:, None, None]
    is_max &= (idx - best[None]).abs() > 1
    second = torch.where(is_max, ncc, torch.full_like(ncc, -1.0)).amax(dim=0)

    energy = torch.sqrt(el * er)
    texture = energy / (energy + texture_floor**2)
    peak = c0.clamp(0, 1)
    distinct = ((c0 - second) / _DISTINCT_SCALE).clamp(0, 1)
    conf = texture * peak * distinct
    at_limit = (best == 0) | (best == n_s - 1)
    return torch.where(at_limit, torch.zeros_like(conf), conf)
