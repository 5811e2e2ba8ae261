"""Image-quality metrics and the Pixel 4 evaluation protocol.

Implements exactly steps 3-5 of ``shared/data/pixel4/README.md``:

* PSNR with data range 1,
* SSIM identical to ``skimage.metrics.structural_similarity(x, gt, data_range=1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` (Gaussian window with
  sigma 1.5 truncated at 3.5 sigma, i.e. 11 taps, ``reflect`` borders, the 5-pixel border of the
  SSIM map cropped before averaging),
* MAE = mean absolute error,
* the output clipped to [0, 1] first,
* registration: the integer shift ``(dy, dx)`` within ``+-max_shift`` that minimizes the MSE of
  ``out[m+dy : h-m+dy, m+dx : w-m+dx]`` against ``gt[m:h-m, m:w-m]`` (``m = max_shift``).

Shift convention: ``shift = (dy, dx)`` means ``out[y + dy, x + dx]`` is compared with
``gt[y, x]``, i.e. the output's content lies ``dy`` rows below and ``dx`` columns right of the
ground truth's (``out = np.roll(gt, (1, 2), axis=(0, 1))`` scores ``shift == (1, 2)``).

Inputs are single-channel ``(H, W)`` numpy arrays or torch tensors with values in [0, 1]; all
computations run in float64 numpy (torch tensors are detached and moved to the CPU).

Identical images have MSE 0 and therefore ``psnr == inf`` (no epsilon is added, as in
scikit-image); SSIM is then 1 and MAE 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

__all__ = ["psnr", "ssim", "mae", "Scores", "ProtocolScores", "evaluate"]

ArrayLike = np.ndarray | torch.Tensor

# SSIM constants (Wang et al. 2004 / scikit-image defaults).
_K1 = 0.01
_K2 = 0.03
_SIGMA = 1.5
_TRUNCATE = 3.5
_RADIUS = int(_TRUNCATE * _SIGMA + 0.5)  # 5, as scipy.ndimage computes it
_WIN = 2 * _RADIUS + 1  # 11


def _as_f64(x: ArrayLike, name: str) -> np.ndarray:
    """Return ``x`` as a 2-D float64 numpy array (torch tensors detached, moved to CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    # Contiguous: cv2 rejects negative / column strides (e.g. ``img[:, ::-1]``).
    arr = np.ascontiguousarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a single-channel (H, W) image, got shape {arr.shape}")
    return arr


def _pair(x: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = _as_f64(x, "x")
    b = _as_f64(gt, "gt")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: x {a.shape} vs gt {b.shape}")
    return a, b


def _psnr_from_mse(mse: float, data_range: float) -> float:
    if mse == 0.0:
        return math.inf
    return float(10.0 * math.log10(data_range * data_range / mse))


def psnr(x: ArrayLike, gt: ArrayLike, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``.

    ``x``, ``gt``: ``(H, W)``.  Returns ``inf`` for identical images.  No clipping here.

    Example:
        >>> gt = np.full((37, 53), 0.5)
        >>> round(psnr(gt + 0.01, gt), 2), psnr(gt, gt)
        (40.0, inf)
    """
    a, b = _pair(x, gt)
    return _psnr_from_mse(float(np.mean((a - b) ** 2)), data_range)


def _gaussian_kernel() -> np.ndarray:
    # Same taps as scipy.ndimage.gaussian_filter(sigma=1.5, truncate=3.5).
    u = np.arange(-_RADIUS, _RADIUS + 1, dtype=np.float64)
    k = np.exp(-0.5 * (u / _SIGMA) ** 2)
    return k / k.sum()


_GAUSS = _gaussian_kernel()


def _gauss_filter(img: np.ndarray) -> np.ndarray:
    # cv2.BORDER_REFLECT (fedcba|abcdef) == scipy.ndimage mode="reflect", used by scikit-image.
    # The kernel is symmetric, so correlation == convolution.
    return cv2.sepFilter2D(img, cv2.CV_64F, _GAUSS, _GAUSS, borderType=cv2.BORDER_REFLECT)


def ssim(x: ArrayLike, gt: ArrayLike, data_range: float = 1.0) -> float:
    """Mean SSIM, equal to scikit-image's Gaussian-weighted, population-covariance SSIM.

    Matches ``structural_similarity(x, gt, data_range=data_range, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``: Gaussian window sigma 1.5, 11 taps, ``reflect``
    borders, the SSIM map's 5-pixel border is cropped before the mean.
    ``x``, ``gt``: ``(H, W)`` with ``H, W >= 11``.

    Example:
        >>> gt = np.random.default_rng(0).random((37, 53))
        >>> ssim(gt, gt), round(ssim(np.clip(gt + 0.1, 0, 1), gt), 3)
        (1.0, 0.983)
    """
    a, b = _pair(x, gt)
    if min(a.shape) < _WIN:
        raise ValueError(f"SSIM needs images of at least {_WIN}x{_WIN}, got {a.shape}")
    ux = _gauss_filter(a)
    uy = _gauss_filter(b)
    uxx = _gauss_filter(a * a)
    uyy = _gauss_filter(b * b)
    uxy = _gauss_filter(a * b)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    r = _RADIUS
    return float(s[r:-r, r:-r].mean(dtype=np.float64))


def mae(x: ArrayLike, gt: ArrayLike) -> float:
    """Mean absolute error over all pixels of ``(H, W)`` images.

    Example:
        >>> round(mae(np.zeros((3, 4)), np.full((3, 4), 0.25)), 4)
        0.25
    """
    a, b = _pair(x, gt)
    return float(np.mean(np.abs(a - b)))


@dataclass(frozen=True)
class Scores:
    """Metrics of one comparison.

    ``shift = (dy, dx)``: the output pixel ``(y + dy, x + dx)`` was compared with ground-truth
    pixel ``(y, x)``; ``(0, 0)`` for raw scores.  ``psnr`` may be ``inf`` (identical images).
    """

    psnr: float
    ssim: float
    mae: float
    shift: tuple[int, int]


@dataclass(frozen=True)
class ProtocolScores:
    """README protocol result: ``registered`` (headline, best integer shift, interior crop)
    and ``raw`` (no shift, whole image)."""

    registered: Scores
    raw: Scores


def _scores(a: np.ndarray, b: np.ndarray, shift: tuple[int, int]) -> Scores:
    mse = float(np.mean((a - b) ** 2))
    return Scores(
        psnr=_psnr_from_mse(mse, 1.0),
        ssim=ssim(a, b),
        mae=float(np.mean(np.abs(a - b))),
        shift=shift,
    )


def _best_shift(out: np.ndarray, gt: np.ndarray, m: int) -> tuple[int, int]:
    """Integer shift in ``[-m, m]^2`` minimizing the MSE on the common interior.

    Ties (e.g. constant images) go to the smallest ``|dy| + |dx|``, then row-major order.
    """
    h, w = gt.shape
    ref = gt[m : h - m, m : w - m]
    best: tuple[float, int, int, int] | None = None
    diff = np.empty_like(ref)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            np.subtract(out[m + dy : h - m + dy, m + dx : w - m + dx], ref, out=diff)
            # einsum: sum of squares without a temporary (and much faster than BLAS vdot on a
            # busy machine); float64 accumulation.
            sse = float(np.einsum("ij,ij->", diff, diff))
            key = (sse, abs(dy) + abs(dx), dy, dx)
            if best is None or key < best:
                best = key
    assert best is not None
    return best[2], best[3]


def evaluate(output: ArrayLike, gt: ArrayLike, *, max_shift: int = 4) -> ProtocolScores:
    """Score ``output`` against ``gt`` with the Pixel 4 protocol (data README steps 3-5).

    ``output``, ``gt``: ``(H, W)`` in [0, 1]; ``output`` is clipped to [0, 1] first.
    ``registered``: best integer shift ``(dy, dx)`` within ``+-max_shift`` by MSE, metrics on
    ``out[m+dy : h-m+dy, m+dx : w-m+dx]`` vs ``gt[m:h-m, m:w-m]`` with ``m = max_shift``.
    ``raw``: no shift, whole image.
    """
    out, ref = _pair(output, gt)
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    out = np.clip(out, 0.0, 1.0)
    m = int(max_shift)
    h, w = ref.shape
    if min(h, w) - 2 * m < _WIN:
        raise ValueError(f"image {ref.shape} too small for max_shift={m}")
    dy, dx = _best_shift(out, ref, m)
    registered = _scores(
        out[m + dy : h - m + dy, m + dx : w - m + dx], ref[m : h - m, m : w - m], (dy, dx)
    )
    raw = _scores(out, ref, (0, 0))
    return ProtocolScores(registered=registered, raw=raw)


# ---------------------------------------------------------------------------------------------
# artifact measures (the restoration study, tools/study_quality.py)


def registered_residual(output: ArrayLike, gt: ArrayLike, shift: tuple[int, int], max_shift: int = 4) -> np.ndarray:
    """``clip(output) - gt`` on the protocol's registered interior for ``shift`` (dy, dx):
    ``out[m+dy : h-m+dy, m+dx : w-m+dx] - gt[m:h-m, m:w-m]``, ``m = max_shift``."""
    out, ref = _pair(output, gt)
    out = np.clip(out, 0.0, 1.0)
    m = int(max_shift)
    dy, dx = (int(s) for s in shift)
    if max(abs(dy), abs(dx)) > m:
        raise ValueError(f"shift {shift} exceeds max_shift {m}")
    h, w = ref.shape
    return out[m + dy : h - m + dy, m + dx : w - m + dx] - ref[m : h - m, m : w - m]


def _box_rows(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size``-row window (edge-replicated) along axis 0."""
    half = size // 2
    padded = np.pad(x, ((half, half), (0, 0)), mode="edge")
    c = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)
    return (c[size:] - c[:-size]) / size


def streak_energy(
    residual: ArrayLike, reference: ArrayLike | None = None, *, segment: int = 64, smooth: int = 15, flat: float = 0.5
) -> float:
    """Energy of **horizontal streaks** in a residual image ``(H, W)``: the residual averaged along
    each row over ``segment``-px runs (a streak is coherent along its row; noise and texture
    average out), high-passed across rows (minus a ``smooth``-row box mean, so that slowly varying
    brightness errors do not count), mean square.  With a ``reference`` (the ground truth, same
    shape) only the flattest ``flat`` fraction of the runs counts (by the reference's mean absolute
    gradient over the run and the ``smooth`` rows around it): streaks show in flat regions, where
    texture does not hide them.  Compare a restoration's value with the input's (their ratio:
    below 1 the output carries less streak energy than the blurry input's residual)."""
    r = _as_f64(residual, "residual")
    w = (r.shape[1] // segment) * segment
    if w == 0:
        raise ValueError(f"residual {r.shape} is narrower than one segment of {segment} px")
    runs = r[:, :w].reshape(r.shape[0], w // segment, segment).mean(axis=2)  # (H, W / segment)
    energy = (runs - _box_rows(runs, smooth)) ** 2
    if reference is None:
        return float(np.mean(energy))
    g = _as_f64(reference, "reference")
    if g.shape != r.shape:
        raise ValueError(f"residual {r.shape} and reference {g.shape} must have the same shape")
    texture = np.abs(np.diff(g, axis=1, append=g[:, -1:])) + np.abs(np.diff(g, axis=0, append=g[-1:, :]))
    texture = _box_rows(texture[:, :w].reshape(g.shape[0], w // segment, segment).mean(axis=2), smooth)
    keep = texture <= np.quantile(texture, flat)
    return float(np.mean(energy[keep]))


def bead_energy(residual: ArrayLike, gt: ArrayLike, *, quantile: float = 0.98) -> float:
    """Energy of **beads** along strong vertical edges: mean square (the largest 2% trimmed) of
    the residual's vertical derivative at the pixels where the reference ``gt`` (same shape as ``residual``) has its strongest mostly-vertical edges
    (horizontal gradient above its ``quantile`` and twice the vertical one).  A beaded (dotted) edge varies along the edge, i.e. vertically; a clean one
    does not.  Compare with the input's value."""
    r = _as_f64(residual, "residual")
    g = _as_f64(gt, "gt")
    if r.shape != g.shape:
        raise ValueError(f"residual {r.shape} and gt {g.shape} must have the same shape")
    gx = np.abs(np.diff(g, axis=1))[:-1, :]
    gy = np.abs(np.diff(g, axis=0))[:, :-1]
    edges = (gx > np.quantile(gx, quantile)) & (gx > 2 * gy)
    if not edges.any():
        return 0.0
    ry2 = np.diff(r, axis=0)[:, :-1][edges] ** 2
    # Trimmed: the largest 2% go (clipped highlights, whose residual is the clipping's; a few
    # of them would otherwise decide the figure), beads are a pattern along many edge pixels.
    return float(np.mean(np.sort(ry2)[: max(1, int(np.ceil(0.98 * ry2.size)))]))
