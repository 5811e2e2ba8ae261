"""Instant on-device prediction for a new DP capture: numpy + ONNX Runtime, no optimization.

Runs on the device: imports only the standard library, numpy and threadpoolctl (onnxruntime lazily, in
:func:`run_instant`); never torch or edgedp.  It is the numpy twin of what ``edgedp fit`` does
after Stage 2, with the fitted G_D replaced by a device profile's G_D (``gd.onnx``):

1. ``gd.onnx`` on the pair -> MPI alphas (L, H, W) -> G_D's compositing weights by the over
   operator ``d_i = a_i * prod_{j > i} (1 - a_j)`` (layer L - 1 on top, ``a_0 = 1``).
2. Stage 1 (edgedp/fit/stage1.py): per layer i the closed-form latent image
   ``X_i = (conj(F_i^L) Y_L + conj(F_i^R) Y_R) / (|F_i^L|^2 + |F_i^R|^2 + lam |G|^2)`` on a
   replicate-padded (``pad`` px, default ``K // 2 + 8``) FFT-friendly grid, ``lam`` from the
   noise (:func:`latent_reg`), and from the same spectra each layer's re-render error
   ``e_i = sum_v (x_i conv f_i^v - y_v)^2`` (``irfft2(X_i F_i^v - Y_v)``: no extra forward FFT).
3. Fusion (edgedp/fit/pipeline.py ``fuse_with_likelihood``): ``d_i ~ max(d_i^GD, 1e-6) * q_i`` normalized
   over layers, ``q = softmax(-box(e) / T)``, ``box`` the ``window`` px mean (border windows
   average only the pixels inside the image), ``T = 0.5 * mean_p min_i box(e)_i + 1e-20``.
4. The final TV deconvolution (edgedp/fit/deconvolution.py): half-quadratic splitting warm-started
   at ``sum_i d_i x_i``: ``tv_iterations`` times, the composite's forward differences are
   soft-thresholded (isotropic, by ``tv / (2 beta)`` with ``tv = 2 lam s^2 / b`` from the views'
   gradients) and every layer with weight solves step 2 again pulled towards them with weight
   ``beta`` (``beta_start * lam``, times ``beta_growth`` per step): streak-free flat regions.
5. ``allinfocus = sum_i d_i x_i``, ``defocus = sum_i d_i r_i`` (signed blur radius, px, > 0
   behind the focal plane).

Conventions (the project's CONVENTIONS.md): views are float32 ``(2, H, W)`` = [left, right] on
the fit's normalized scale (``(raw - black) / white``, unclipped); kernels ``(2, L, K, K)`` =
[left, right] x layers, true-convolution PSFs centred at ``(K // 2, K // 2)``; borders replicate.

A kernel field (a profile's per-cell kernels): ``(Pr, Pc, 2, L, K, K)`` of a ``Pr x Pc`` grid
(row-major from the top-left; cells blended by the bilinear tents of :func:`patch_blend_weights`).
Steps 2 and 4 then blend one closed-form solve per *group* of cells with the same kernels
(:func:`kernel_groups`, :func:`solve_latent_grouped`): each group is solved on the window where its
cells' tents reach, and the latent and the re-render residuals are blended with the tents, so the
cost grows with the groups' area (an estimated field holds a few distinct tilts), not with the 48
cells.  ``kernel_groups`` (default 8) caps the groups (Ward merging) to bound the call's time.
``edgedp fit`` solves the same field patchwise (edgedp.fit.stage3.PatchLatentSolver: a global solve
plus per-cell corrections); the two agree where the kernels are uniform and differ by how the
cells' solutions meet (README "Instant path": the measured difference).
Everything runs in float32 / complex64 (numpy >= 2 computes float32 FFTs natively) and loops over
layers, so the peak memory is about three (L, H, W) float32 stacks (alphas, latent, weights).

Sidecar fields read here (schema: :mod:`edgedp_runtime.schema`; written by ``edgedp export PHONE.profile``)::

    "instant": {"kernels": "kernels.npy",        (2, L, K, K) float32, as above
                "kernel_size": K,
                "pad": int,                        replicate padding of stage 1 (K // 2 + 8)
                "latent_reg": {"gain": 4.0, "floor": 1e-3, "ceil": 0.3},   lam = clamp(gain
                              * sigma^2 / s^2, floor, ceil) (edgedp.physics.noise.default_latent_reg)
                "fuse_window": 15,                 box window (px) of the likelihood, 0 = off
                "weight_floor": 1e-6,              clamp of G_D's weights before the product
                "deconvolution": {"iterations": 0, "beta_start": 0.25, "beta_growth": 2.0,
                                  "min_layer_weight": 1e-3},    step 4 (absent: these defaults;
                                  0 iterations: no TV step, the profile export's default)
                "patch_kernels": "patch_kernels.npy",  only with a kernel field: (Pr, Pc, 2, L, K, K)
                "patch_grid": [Pr, Pc],                float32 (``kernels`` is then their mean)
                "kernel_groups": 8}                    at most this many groups of cells (field only)
    "profile": {"input": {"black_level", "white_level", "flat_field",      input defaults
                          "view_gain": {"model": "exp-poly3", "coefficients": [10]} or null}, ...}
               (view_gain: the right view's gain over the frame measured by edgedp tune,
               applied by the runner after the profile's flat field, :func:`view_gain_map`)
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from . import device_io, schema  # numpy (+ threadpoolctl) only
from .device_io import RunnerError

__all__ = [
    "InstantConfig",
    "InstantExport",
    "box_mean",
    "estimate_noise_sigma",
    "flat_field_gain",
    "deconvolve_layers",
    "describe_kernels",
    "fuse_weights",
    "instant_predict",
    "latent_reg",
    "load_instant",
    "over_weights",
    "run_gd",
    "run_instant",
    "solve_latent",
    "solve_latent_grouped",
    "GroupWindow",
    "group_windows",
    "kernel_groups",
    "kernel_support",
    "trim_kernels",
    "PatchWindow",
    "patch_blend_weights",
    "patch_windows",
    "support_spans",
    "tent_weights",
    "view_gain_applies",
    "sensor_crop",
    "view_gain_map",
]

FLAT_FIELD_BOX = 101  # edgedp.io.images.FLAT_FIELD_BOX: the Pixel 4 protocol's 101 x 101 mean


@dataclass(frozen=True)
class InstantConfig:
    """Settings of the instant path (the sidecar's ``instant`` object; defaults = edgedp fit's).

    gain, floor, ceil: ``lam = clamp(gain * sigma^2 / s^2, floor, ceil)`` (:func:`latent_reg`).
    fuse_window: box window (px) of the per-pixel likelihood; 0 keeps G_D's weights.
    weight_floor: G_D's weights are clamped to at least this before the product with the
        likelihood (so the data can still pick a layer G_D ruled out).
    pad: replicate padding (px) of stage 1; None: ``K // 2 + 8``.
    tv_iterations, tv_beta_start, tv_beta_growth, tv_min_layer_weight: the final TV
        deconvolution (:func:`deconvolve_layers`; edgedp.fit.deconvolution.DeconvolutionConfig's
        ``iterations``, ``beta_start``, ``beta_growth``, ``min_layer_weight``); 0 iterations keep
        the composite.  Default 0: on the instant path the step cost 4.2 s of a 6 s call and moved
        the Pixel 4 dev scenes' mean by -0.13 dB (mean kernels) and -0.02 dB (kernel field)
        (README "Instant path"); ``edgedp fit`` keeps it.
    kernel_groups: with a kernel field, the most groups of cells solved apart
        (:func:`kernel_groups`): the call's cost grows with their summed window area.  Measured
        on the Pixel 4 dev profile (1008 x 1344, 20 layers, 2 CPU cores; README "Instant path"):
        4 groups 1.6 s per call and +1.59 dB, 8 groups 2.1 s and +1.65 dB, all 12 distinct
        kernels +1.65 dB; 8 bounds a calibrated field's 48 distinct cells.
    """

    gain: float = 4.0
    floor: float = 1e-3
    ceil: float = 0.3
    fuse_window: int = 15
    weight_floor: float = 1e-6
    pad: int | None = None
    tv_iterations: int = 0
    tv_beta_start: float = 0.25
    tv_beta_growth: float = 2.0
    tv_min_layer_weight: float = 1e-3
    kernel_groups: int = 8

    @classmethod
    def from_sidecar(cls, entry: dict) -> "InstantConfig":
        """From the sidecar's ``instant`` object (missing keys keep the defaults; the keys are
        :func:`edgedp_runtime.schema.read_instant_settings`')."""
        values = schema.read_instant_settings(entry)
        return cls(**values)


# --- Stage 1 in numpy ---------------------------------------------------------------------------
def fast_size(n: int, *, even: bool = False) -> int:
    """Smallest ``m >= n`` whose prime factors are all in {2, 3, 5, 7} (and even if asked): the
    FFT grid sizes of the library's Stage 1 and blur too (``edgedp.physics.blur`` imports it), so
    the numpy and torch padded grids agree.

    Example:
        >>> fast_size(37), fast_size(101), fast_size(101, even=True)
        (40, 105, 108)
    """
    m = max(int(n), 1)
    while True:
        if not (even and m % 2):
            r = m
            for f in (2, 3, 5, 7):
                while r % f == 0:
                    r //= f
            if r == 1:
                return m
        m += 1


def gradient_spectrum(shape: tuple[int, int]) -> np.ndarray:
    """``|G|^2`` of forward differences on a circular ``shape`` grid: (Hp, Wp // 2 + 1) float32,
    ``4 sin^2(pi k / Hp) + 4 sin^2(pi l / Wp)``."""
    hp, wp = shape
    ky = 4 * np.sin(np.pi * np.arange(hp) / hp) ** 2
    kx = 4 * np.sin(np.pi * np.arange(wp // 2 + 1) / wp) ** 2
    return (ky[:, None] + kx[None, :]).astype(np.float32)


def kernel_spectrum(kernels: np.ndarray, shape: tuple[int, int], dft: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """rfft2 of ``(..., K, K)`` kernels centred at index (0, 0) of a circular ``shape`` grid:
    (..., Hp, Wp // 2 + 1) complex64.  ``dft``: :func:`centred_dft` of ``shape`` and K (reused
    across layers and cells)."""
    e_h, e_w = centred_dft(shape, kernels.shape[-1]) if dft is None else dft
    return e_h @ (kernels.astype(np.complex64) @ e_w)


def centred_dft(shape: tuple[int, int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The two DFT matrices of :func:`kernel_spectrum` (edgedp.physics.fourier.centred_kernel_spectrum):
    ``E_H`` (Hp, K) and ``E_W`` (K, Wp // 2 + 1), complex64, with tap K // 2 at frequency origin's
    phase 0.  Only K x K taps are non-zero, so two small matrix products cost less than zero-filled
    FFTs of the full grid, and the centring is built into the phases."""
    taps = np.arange(k) - k // 2
    e_h = np.exp(-2j * np.pi * np.fft.fftfreq(shape[0])[:, None] * taps[None, :])
    e_w = np.exp(-2j * np.pi * taps[:, None] * np.fft.rfftfreq(shape[1])[None, :])
    return e_h.astype(np.complex64), e_w.astype(np.complex64)


def gradient_operator_spectra(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """rfft2 transfer functions ``(Gx, Gy)`` of circular forward differences on a ``shape`` grid
    (edgedp.physics.fourier.gradient_operator_spectra): ``exp(2 pi i k / N) - 1``, complex64."""
    hp, wp = shape
    gx = np.exp(2j * np.pi * np.fft.rfftfreq(wp))[None, :] - 1
    gy = np.exp(2j * np.pi * np.fft.fftfreq(hp))[:, None] - 1
    return np.broadcast_to(gx, (hp, wp // 2 + 1)).astype(np.complex64), np.broadcast_to(gy, (hp, wp // 2 + 1)).astype(np.complex64)


def solve_latent(
    views: np.ndarray,
    kernels: np.ndarray,
    reg: float,
    *,
    pad: int | None = None,
    error: bool = False,
    target: np.ndarray | None = None,
    target_weight: float = 0.0,
    layers=None,
    groups: np.ndarray | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Closed-form per-layer latent map (numpy port of edgedp.physics.fourier.LatentSolver.solve; with
    per-cell kernels :func:`solve_latent_grouped`).

    Args:
        views: (2, H, W) float32 [left, right].
        kernels: (2, L, K, K) [left, right] x layers, centred true-convolution PSFs; or per cell
            of a kernel field (Pr, Pc, 2, L, K, K).
        reg: ``lam``, weight of the squared-gradient prior.
        pad: replicate padding (px); default ``K // 2 + 8``.
        error: also return each layer's re-render error ``sum_v (x_i conv f_i^v - y_v)^2``,
            computed on the padded grid from the same spectra (``irfft2(X_i F_i^v - Y_v)``).
        target, target_weight: a gradient field (2, H, W) the solution's forward differences are
            pulled towards with ``target_weight * ||grad x - target||^2`` (zero over the padding).
        layers: the layer indices to solve (default: all), in that order.
        groups: with per-cell kernels, the cells' groups (:func:`kernel_groups`; None: exact).
        threads: layers solved at once (:func:`solve_windows`; None: the CPU count).

    Returns:
        ``(latent (l, H, W) float32, error (l, H, W) float32 or None)``.
    """
    views = np.asarray(views, np.float32)
    kernels = np.asarray(kernels, np.float32)
    if kernels.ndim == 6:
        return solve_latent_grouped(views, kernels, reg, groups, pad=pad, error=error, target=target,
                                    target_weight=target_weight, layers=layers, threads=threads)
    _, h, w = views.shape
    k = kernels.shape[-1]
    index = list(range(kernels.shape[1])) if layers is None else list(layers)
    p = (k // 2 + 8) if pad is None else int(pad)
    hp, wp = fast_size(h + 2 * p), fast_size(w + 2 * p, even=True)
    # Replicate to (h + 2p), then on out to the fast size: every margin is replicated.
    window = FourierWindow.of(views, target, target_weight, reg, kernels, (0, h, 0, w), (0, h, 0, w),
                              ((p, hp - h - p), (p, wp - w - p)))
    return solve_windows([window], (h, w), index, error=error, threads=threads)


@dataclass
class FourierWindow:
    """One FFT grid of a closed-form solve: the views (and a TV target) cut to ``window`` and
    replicated out, their spectra, and where its solution goes.

    support: ``(r0, r1, c0, c1)``, the image pixels it writes; keep: the same pixels on its padded
    grid; weight: ``(r1 - r0, c1 - c0)`` float32 it is blended with (None: 1); kernels: its
    ``(2, L, K, K)`` layer kernels.  yf: ``(2, Hp, Wf)`` complex64 spectra of the views; extra:
    the TV target's term of the numerator (or None); g2: ``(lam + target_weight) |G|^2``.
    """

    support: tuple[int, int, int, int]
    keep: tuple[slice, slice]
    weight: np.ndarray | None
    kernels: np.ndarray
    yf: np.ndarray
    extra: np.ndarray | None
    g2: np.ndarray
    dfts: dict

    @property
    def shape(self) -> tuple[int, int]:
        return self.yf.shape[-2], 2 * (self.yf.shape[-1] - 1)

    @classmethod
    def of(cls, views, target, target_weight, reg, kernels, support, window, widths, weight=None) -> "FourierWindow":
        """Views (2, H, W) cut to ``window`` ``(a0, a1, b0, b1)`` and edge-replicated by ``widths``
        ``((top, bottom), (left, right))``; ``support`` must lie inside ``window``."""
        (a0, a1, b0, b1), (r0, r1, c0, c1) = window, support
        hp, wp = a1 - a0 + sum(widths[0]), b1 - b0 + sum(widths[1])
        yf = np.fft.rfft2(np.pad(views[:, a0:a1, b0:b1], ((0, 0),) + tuple(widths), mode="edge"))  # (2, Hp, Wf)
        extra = None
        weight_sum = float(reg)
        if target is not None and target_weight > 0:
            zf = np.fft.rfft2(np.pad(np.asarray(target, np.float32)[:, a0:a1, b0:b1], ((0, 0),) + tuple(widths)))
            gx, gy = gradient_operator_spectra((hp, wp))
            extra = np.complex64(target_weight) * (np.conj(gx) * zf[0] + np.conj(gy) * zf[1])
            weight_sum += float(target_weight)
        top, left = widths[0][0], widths[1][0]
        keep = (slice(top + r0 - a0, top + r1 - a0), slice(left + c0 - b0, left + c1 - b0))
        return cls(support, keep, weight, kernels, yf, extra, np.float32(weight_sum) * gradient_spectrum((hp, wp)), {})

    def spectra(self, layer: int) -> np.ndarray:
        """``(2, Hp, Wf)`` spectra of its layer kernels, trimmed to their support first (a small
        layer's zero taps cost nothing)."""
        pair = trim_kernels(self.kernels[:, layer])
        size = pair.shape[-1]
        if size not in self.dfts:
            self.dfts[size] = centred_dft(self.shape, size)
        return kernel_spectrum(pair, self.shape, self.dfts[size])


def map_layers(work, count: int, threads: int | None = None, *, blas_threads: int | None = None) -> None:
    """``work(n)`` for ``n`` in ``range(count)`` on ``threads`` threads (None: the CPUs this process
    may use; 1 or one item: in this thread), with ``blas_threads`` BLAS threads per worker meanwhile (None: as
    they are).  Each ``n`` must write only its own outputs; results do not depend on ``threads``."""
    if not threads:  # the CPUs this process may run on (a container's share, not the host's count)
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(int(threads), count))
    if workers == 1:
        for n in range(count):
            work(n)
        return
    with contextlib.ExitStack() as stack:
        if blas_threads is not None:
            stack.enter_context(threadpool_limits(limits=int(blas_threads), user_api="blas"))
        pool = stack.enter_context(ThreadPoolExecutor(workers))
        for _ in pool.map(work, range(count)):  # re-raises a worker's exception
            pass


def solve_windows(windows: list[FourierWindow], image: tuple[int, int], index: list[int], *, error: bool,
                  threads: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The closed-form solve of every window for the layers ``index``, blended (module docstring,
    step 2): per window and layer ``X = (conj(F_L) Y_L + conj(F_R) Y_R + extra) / (|F_L|^2 + |F_R|^2
    + g2)``, the latent ``sum_w weight_w irfft2(X)`` and, with ``error``, the re-render error
    ``sum_v (sum_w weight_w irfft2(X F_v - Y_v))^2``.

    Layers run on ``threads`` threads (None: the CPU count; numpy's FFTs and array arithmetic
    release the GIL), with the BLAS of the kernel spectra's matrix products held to one thread
    meanwhile (threadpoolctl): its own worker threads would otherwise spin against them.
    """
    h, w = image
    latent = np.zeros((len(index), h, w), np.float32)
    err = np.empty((len(index), h, w), np.float32) if error else None

    def one_layer(n: int) -> None:
        residual = np.zeros((2, h, w), np.float32) if error else None
        for win in windows:
            fl, fr = win.spectra(index[n])
            r0, r1, c0, c1 = win.support
            den = (fl.real**2 + fl.imag**2) + (fr.real**2 + fr.imag**2) + win.g2
            num = np.conj(fl) * win.yf[0] + np.conj(fr) * win.yf[1]
            if win.extra is not None:
                num += win.extra
            x = num / den
            part = np.fft.irfft2(x, s=win.shape)[win.keep]
            latent[n, r0:r1, c0:c1] += part if win.weight is None else win.weight * part
            if residual is not None:
                for v, f in enumerate((fl, fr)):
                    part = np.fft.irfft2(x * f - win.yf[v], s=win.shape)[win.keep]
                    residual[v, r0:r1, c0:c1] += part if win.weight is None else win.weight * part
        if err is not None:
            err[n] = residual[0] * residual[0] + residual[1] * residual[1]

    map_layers(one_layer, len(index), threads, blas_threads=1)
    return latent, err


# --- per-cell kernels (a kernel field): tents, cell windows, grouped Stage 1 ---------------------
def tent_weights(n: int, parts: int) -> np.ndarray:
    """1-D bilinear tent weights ``(parts, n)`` float64 centred on ``parts`` equal cells (centre of
    cell ``r`` at ``(r + 1/2) n / parts - 1/2``), each reaching zero at the neighbouring centres and
    flat (clamped) beyond the first / last centre; columns sum to 1.  The one definition of
    edgedp.physics.blur.tent_weights (which wraps it as a tensor).

    Example:
        >>> tent_weights(6, 2).round(4).tolist()
        [[1.0, 1.0, 0.6667, 0.3333, 0.0, 0.0], [0.0, 0.0, 0.3333, 0.6667, 1.0, 1.0]]
    """
    if not 1 <= parts <= n:
        raise RunnerError(f"cannot split {n} pixels into {parts} patches")
    if parts == 1:
        return np.ones((1, n), np.float64)
    step = n / parts
    t = np.clip((np.arange(n, dtype=np.float64) - (0.5 * step - 0.5)) / step, 0, parts - 1)
    i = np.minimum(np.floor(t), parts - 2).astype(np.int64)
    f = t - i
    out = np.zeros((parts, n), np.float64)
    cols = np.arange(n)
    out[i, cols] = 1 - f
    out[i + 1, cols] += f
    return out


def patch_blend_weights(image_shape: tuple[int, int], grid: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """Seamless blending weights ``(Pr, Pc, H, W)`` of a ``Pr x Pc`` grid: ``w[r, c] = a_r(y) b_c(x)``
    with the tents of :func:`tent_weights` (computed in float64, then ``dtype``); a partition of
    unity (edgedp.physics.blur.patch_blend_weights).  The solver and the blur below use the two
    1-D tables instead (this array is ``Pr Pc`` frames large).

    Example:
        >>> w = patch_blend_weights((37, 53), (2, 3))
        >>> w.shape, bool(np.allclose(w.sum(axis=(0, 1)), 1))
        ((2, 3, 37, 53), True)
    """
    a, b = tent_weights(int(image_shape[0]), int(grid[0])), tent_weights(int(image_shape[1]), int(grid[1]))
    return (a[:, None, :, None] * b[None, :, None, :]).astype(dtype)


def support_spans(weights_1d) -> list[tuple[int, int]]:
    """``[start, stop)`` of the non-zero entries of each row of a 1-D tent table ``(parts, n)``
    (edgedp.physics.blur.support_spans).

    Example:
        >>> support_spans(tent_weights(6, 2))
        [(0, 4), (2, 6)]
    """
    out = []
    for row in np.asarray(weights_1d):
        nz = np.flatnonzero(row > 0)
        out.append((int(nz[0]), int(nz[-1]) + 1))
    return out


@dataclass(frozen=True)
class PatchWindow:
    """Where one cell of a patchwise solve works (rows then columns, ``[start, stop)``).

    cell: ``(i, j)`` in the grid.  support: ``(r0, r1, c0, c1)``, the cell's tent support, where
    its solution is blended in.  window: ``(a0, a1, b0, b1)``, the support widened by the margin and
    clipped to the image: the data the cell's correction is solved from.  padded: ``(Hp, Wp)``, the
    FFT grid of the window replicated out by ``pad`` px on every side (fast sizes, ``Wp`` even).
    """

    cell: tuple[int, int]
    support: tuple[int, int, int, int]
    window: tuple[int, int, int, int]
    padded: tuple[int, int]


def patch_windows(h: int, w: int, grid: tuple[int, int], margin: int, pad: int) -> list[PatchWindow]:
    """The cells' windows of a patchwise solve over ``h x w`` (edgedp.fit.stage3.PatchLatentSolver),
    row-major.

    Example:
        >>> [(p.cell, p.support, p.window) for p in patch_windows(6, 4, (2, 1), 1, 2)]
        [((0, 0), (0, 4, 0, 4), (0, 5, 0, 4)), ((1, 0), (2, 6, 0, 4), (1, 6, 0, 4))]
    """
    _, _, rspans, cspans = _cell_geometry(h, w, grid)
    out = []
    for i, (r0, r1) in enumerate(rspans):
        for j, (c0, c1) in enumerate(cspans):
            a0, a1 = max(0, r0 - margin), min(h, r1 + margin)
            b0, b1 = max(0, c0 - margin), min(w, c1 + margin)
            padded = (fast_size(a1 - a0 + 2 * pad), fast_size(b1 - b0 + 2 * pad, even=True))
            out.append(PatchWindow((i, j), (r0, r1, c0, c1), (a0, a1, b0, b1), padded))
    return out


def _cell_geometry(h: int, w: int, grid: tuple[int, int]):
    """Row / column tents (float64) and their support spans of a ``grid`` over ``h x w``."""
    rows, cols = tent_weights(h, grid[0]), tent_weights(w, grid[1])
    return rows, cols, support_spans(rows), support_spans(cols)


def _check_patch_kernels(kernels: np.ndarray, layers: int | None = None) -> None:
    shape = kernels.shape
    if kernels.ndim != 6 or shape[2] != 2 or shape[-1] != shape[-2] or shape[-1] % 2 == 0:
        raise RunnerError(f"patch kernels must be (Pr, Pc, 2, L, K, K) with K odd, got {shape}")
    if layers is not None and shape[3] != layers:
        raise RunnerError(f"patch kernels have {shape[3]} layers, expected {layers}")


def kernel_groups(kernels: np.ndarray, max_groups: int | None = None) -> np.ndarray:
    """Group a kernel field's cells by their kernels: ``(Pr, Pc)`` int64 labels ``0 .. G - 1``
    (numbered by each group's first cell in row-major order).

    Cells with identical kernels (all layers, both views) share a group, so ``max_groups=None``
    (or at least the number of distinct cells) keeps the field exact; an estimated field holds
    one of a few candidate tilts per cell (edgedp.fit.kernel_estimation), i.e. few groups.  Beyond
    ``max_groups`` the groups are merged by Ward's rule: each step joins the two whose union adds
    the least squared deviation ``n_a n_b / (n_a + n_b) |mu_a - mu_b|^2`` of the cells' kernels
    from their group's mean (:func:`solve_latent_grouped` then solves with that mean).
    Deterministic (ties: the lower labels).

    Example:
        >>> k = np.zeros((2, 3, 2, 1, 3, 3), np.float32); k[..., 1, 1] = 1
        >>> k[:, 2, 0, 0, 1, 0] = 0.5; k[1, 0, 0, 0, 1, 2] = 0.01
        >>> kernel_groups(k).tolist(), kernel_groups(k, 2).tolist()
        ([[0, 0, 1], [2, 0, 1]], [[0, 0, 1], [0, 0, 1]])
    """
    _check_patch_kernels(kernels)
    pr, pc = kernels.shape[:2]
    flat = np.ascontiguousarray(kernels.reshape(pr * pc, -1))
    same: dict[bytes, list[int]] = {}  # identical cells by their bytes (np.unique(axis=0) sorts: slow)
    for cell in range(pr * pc):
        same.setdefault(flat[cell].tobytes(), []).append(cell)
    members = list(same.values())  # in order of first cell
    limit = len(members) if max_groups is None else max(1, int(max_groups))
    if len(members) > limit:
        sums = np.stack([flat[m].astype(np.float64).sum(axis=0) for m in members])
        gram = sums @ sums.T  # Gram matrix of the groups' kernel sums, updated as groups merge
        counts = np.array([len(m) for m in members], np.float64)
        while len(members) > limit:
            d = np.diag(gram)
            dist = d[:, None] / counts[:, None] ** 2 + d[None, :] / counts[None, :] ** 2 - 2 * gram / np.outer(counts, counts)
            cost = np.outer(counts, counts) / (counts[:, None] + counts[None, :]) * np.maximum(dist, 0)
            cost[np.tril_indices(len(members))] = np.inf
            a, b = np.unravel_index(int(np.argmin(cost)), cost.shape)
            gram[a, :] += gram[b, :]
            gram[:, a] += gram[:, b]
            gram = np.delete(np.delete(gram, b, axis=0), b, axis=1)
            counts[a] += counts[b]
            counts = np.delete(counts, b)
            members[a] = sorted(members[a] + members[b])
            del members[b]
    labels = np.empty(pr * pc, np.int64)
    for g, cells in enumerate(sorted(members, key=min)):
        labels[cells] = g
    return labels.reshape(pr, pc)


@dataclass(frozen=True)
class GroupWindow:
    """Where one group of a grouped solve works (rows then columns, ``[start, stop)``).

    group: its label (:func:`kernel_groups`; a group in several places has a window per place).
    support: ``(r0, r1, c0, c1)``, the bounding box of its blend weight's support.  window: ``(a0, a1, b0, b1)``, the support widened by the margin
    and clipped to the image: the data it is solved from.  padded: ``(Hp, Wp)``, the FFT grid of
    the window replicated out by ``pad`` px on every side (fast sizes, ``Wp`` even).  weight:
    ``(r1 - r0, c1 - c0)`` float32, the sum of its cells' bilinear tents over the support
    (:func:`patch_blend_weights`; the groups' weights are a partition of unity).
    """

    group: int
    support: tuple[int, int, int, int]
    window: tuple[int, int, int, int]
    padded: tuple[int, int]
    weight: np.ndarray


def group_windows(h: int, w: int, labels: np.ndarray, margin: int, pad: int) -> list[GroupWindow]:
    """The windows of a grouped solve over an ``h x w`` image for ``labels`` (Pr, Pc)
    (:func:`kernel_groups`): one per connected part of each group (cells touching by a side or a
    corner, whose tents overlap), so a group in two places of the frame costs two small windows,
    not one spanning both.  In order of group, then of each part's first cell.

    Example:
        >>> [(g.group, g.support, g.window) for g in group_windows(6, 8, np.array([[0, 0, 1, 1]]), 1, 2)]
        [(0, (0, 6, 0, 5), (0, 6, 0, 6)), (1, (0, 6, 3, 8), (0, 6, 2, 8))]
        >>> [g.support for g in group_windows(6, 8, np.array([[0, 1, 1, 0]]), 1, 2)]
        [(0, 6, 0, 3), (0, 6, 5, 8), (0, 6, 1, 7)]
    """
    labels = np.asarray(labels)
    pr, pc = labels.shape
    rows, cols, _, _ = _cell_geometry(h, w, labels.shape)
    out = []
    for g in range(int(labels.max()) + 1):
        seen = np.zeros(labels.shape, bool)
        for start in zip(*np.nonzero(labels == g)):
            if seen[start]:
                continue
            part, todo = np.zeros(labels.shape), [start]  # flood fill over the 8 neighbours
            seen[start] = True
            while todo:
                i, j = todo.pop()
                part[i, j] = 1
                for a in range(max(0, i - 1), min(pr, i + 2)):
                    for b in range(max(0, j - 1), min(pc, j + 2)):
                        if labels[a, b] == g and not seen[a, b]:
                            seen[a, b] = True
                            todo.append((a, b))
            weight = rows.T @ part @ cols  # (h, w): the part's cells' tents summed
            ys, xs = np.flatnonzero(weight.any(axis=1)), np.flatnonzero(weight.any(axis=0))
            r0, r1, c0, c1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
            a0, a1 = max(0, r0 - margin), min(h, r1 + margin)
            b0, b1 = max(0, c0 - margin), min(w, c1 + margin)
            padded = (fast_size(a1 - a0 + 2 * pad), fast_size(b1 - b0 + 2 * pad, even=True))
            out.append(GroupWindow(g, (r0, r1, c0, c1), (a0, a1, b0, b1), padded, weight[r0:r1, c0:c1].astype(np.float32)))
    return out


def kernel_support(kernels: np.ndarray) -> int:
    """The smallest odd size ``S <= K`` whose centred ``S x S`` square holds every non-zero tap of
    ``(..., K, K)`` centred kernels (1 for all-zero ones): a small layer's kernels padded to the
    largest layer's size cost their full size in :func:`kernel_spectrum` otherwise.

    Example:
        >>> k = np.zeros((2, 9, 9)); k[0, 4, 2] = 1
        >>> kernel_support(k), trim_kernels(k).shape
        (5, (2, 5, 5))
    """
    k = kernels.shape[-1]
    taps = np.abs(np.asarray(kernels)).reshape(-1, k, k).max(axis=0) > 0
    if not taps.any():
        return 1
    ys, xs = np.nonzero(taps)
    c = k // 2
    return 2 * int(max(np.abs(ys - c).max(), np.abs(xs - c).max())) + 1


def trim_kernels(kernels: np.ndarray) -> np.ndarray:
    """``(..., K, K)`` centred kernels cut to their centred :func:`kernel_support` (same spectra)."""
    k = kernels.shape[-1]
    r = kernel_support(kernels) // 2
    return kernels[..., k // 2 - r : k // 2 + r + 1, k // 2 - r : k // 2 + r + 1]


def solve_latent_grouped(
    views: np.ndarray,
    kernels: np.ndarray,
    reg: float,
    labels: np.ndarray | None = None,
    *,
    pad: int | None = None,
    margin: int | None = None,
    error: bool = False,
    target: np.ndarray | None = None,
    target_weight: float = 0.0,
    layers=None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Closed-form latent map with a kernel field: the blend of one closed-form solve per group of
    cells (:func:`kernel_groups`), each on its group's window.

    Per group ``g`` (kernels: the mean of its cells' kernels) and layer ``i`` the Stage-1 solution
    ``x_g`` of :func:`solve_latent` is computed on the group's window (its weight's support plus
    ``margin`` px, replicated out by ``K // 2 + 8`` px to an FFT-friendly size), and the layer's
    latent is ``x = sum_g W_g x_g`` with ``W_g`` the sum of the group's cells' bilinear tents
    (:func:`group_windows`): per pixel, the blend of the solutions of the cells around it, as the
    field's kernels are blended (edgedp.physics.blur.blur_stack_patchwise).  The re-render error
    blends the groups' residuals the same way, ``e = sum_v (sum_g W_g (x_g conv f_g^v - y_v))^2``.
    Identical kernels in every cell give :func:`solve_latent`'s uniform solve (up to the border
    padding's extent); the cost grows with the groups' summed window area, not with the cells.

    Args:
        views: (2, H, W) float32 [left, right].
        kernels: (Pr, Pc, 2, L, K, K) per cell (row-major from the top-left), centred
            true-convolution PSFs.
        reg: ``lam``.
        labels: (Pr, Pc) groups of :func:`kernel_groups`; None: the field's distinct kernels.
        pad: replicate padding of a one-group (uniform) solve (default ``K // 2 + 8``).
        margin: context px around each group's support; default ``K + 8``.
        error, target, target_weight, layers, threads: as :func:`solve_latent`.

    Returns:
        ``(latent (l, H, W) float32, error (l, H, W) float32 or None)``.
    """
    views = np.asarray(views, np.float32)
    kernels = np.asarray(kernels, np.float32)
    _check_patch_kernels(kernels)
    _, h, w = views.shape
    pr, pc, _, nl, k, _ = kernels.shape
    labels = kernel_groups(kernels) if labels is None else np.asarray(labels)
    if labels.shape != (pr, pc) or labels.min() < 0 or set(np.unique(labels).tolist()) != set(range(int(labels.max()) + 1)):
        raise RunnerError(f"labels must be ({pr}, {pc}) groups numbered 0 .. G - 1, got {labels.shape}")
    index = list(range(nl)) if layers is None else list(layers)
    if int(labels.max()) == 0:
        return solve_latent(views, kernels.mean(axis=(0, 1)), reg, pad=pad, error=error, target=target,
                            target_weight=target_weight, layers=index, threads=threads)
    m = k + 8 if margin is None else int(margin)
    wpad = k // 2 + 8
    windows = []
    for grp in group_windows(h, w, labels, m, wpad):  # per group: the window's spectra, once for every layer
        (a0, a1, b0, b1), (hp, wp) = grp.window, grp.padded
        widths = ((wpad, hp - (a1 - a0) - wpad), (wpad, wp - (b1 - b0) - wpad))
        windows.append(FourierWindow.of(views, target, target_weight, reg, kernels[labels == grp.group].mean(axis=0),
                                        grp.support, grp.window, widths, grp.weight))
    return solve_windows(windows, (h, w), index, error=error, threads=threads)


# --- the final TV deconvolution (edgedp.fit.deconvolution) -----------------------------------------
def image_gradient(x: np.ndarray) -> np.ndarray:
    """Forward differences of (H, W) -> (2, H, W), zero in the last column / row
    (edgedp.physics.operators.FiniteDifference.A)."""
    g = np.zeros((2,) + x.shape, np.float32)
    g[0, :, :-1] = x[:, 1:] - x[:, :-1]
    g[1, :-1, :] = x[1:, :] - x[:-1, :]
    return g


def shrink_gradient(g: np.ndarray, threshold: float) -> np.ndarray:
    """Isotropic soft threshold of a (2, H, W) gradient field (edgedp.fit.deconvolution.shrink_gradient)."""
    magnitude = np.sqrt(g[0] * g[0] + g[1] * g[1])
    scale = np.maximum(1 - np.float32(threshold) / np.maximum(magnitude, np.float32(1e-30)), 0)
    return (g * scale[None]).astype(np.float32)


def tv_weight(views: np.ndarray, reg: float) -> float:
    """``2 lam s^2 / b`` of the views (edgedp.fit.deconvolution.default_tv_weight)."""
    g = image_gradient(np.asarray(views, np.float32).mean(axis=0))[:, :-1, :-1].astype(np.float64)
    magnitude = np.sqrt(g[0] ** 2 + g[1] ** 2)
    b = float(magnitude.mean())
    s2 = float((magnitude**2).mean()) / 2
    return 2.0 * float(reg) * s2 / max(b, 1e-12)


def deconvolve_layers(
    views: np.ndarray, kernels: np.ndarray, latent: np.ndarray, weights: np.ndarray, reg: float, tv: float,
    config: "InstantConfig", groups: np.ndarray | None = None, threads: int | None = None,
) -> np.ndarray:
    """The TV deconvolution of the composite ``sum_i d_i x_i`` by half-quadratic splitting (numpy
    port of edgedp.fit.deconvolution.deconvolve_layers): returns the (L, H, W) latent map whose
    composite is the deconvolved image (``latent`` is updated in place).  ``kernels``: (2, L, K, K)
    or per cell (Pr, Pc, 2, L, K, K) with their ``groups`` (each step then :func:`solve_latent_grouped`)."""
    if config.tv_iterations <= 0 or tv <= 0:
        return latent
    used = [i for i in range(latent.shape[0]) if float(weights[i].max()) >= config.tv_min_layer_weight]
    x = (latent * weights).sum(axis=0)
    beta = config.tv_beta_start * float(reg)
    for _ in range(config.tv_iterations):
        z = shrink_gradient(image_gradient(x), tv / (2 * beta))
        solved, _ = solve_latent(views, kernels, reg, pad=config.pad, target=z, target_weight=beta, layers=used, groups=groups, threads=threads)
        latent[used] = solved
        x = (latent * weights).sum(axis=0)
        beta *= config.tv_beta_growth
    return latent


def estimate_noise_sigma(image: np.ndarray) -> float:
    """White-noise std of a (H, W) image (Immerkaer 1996; edgedp.physics.noise.estimate_noise_sigma):
    ``sqrt(pi / 2) / 6`` times the lower quartile of the 16 x 16 px tile means of the absolute
    response to ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]`` (the quartile ignores edges/texture)."""
    x = np.asarray(image, np.float32)
    resp = (
        x[:-2, :-2] - 2 * x[:-2, 1:-1] + x[:-2, 2:]
        - 2 * x[1:-1, :-2] + 4 * x[1:-1, 1:-1] - 2 * x[1:-1, 2:]
        + x[2:, :-2] - 2 * x[2:, 1:-1] + x[2:, 2:]
    )
    resp = np.abs(resp)
    t = 16
    h, w = (resp.shape[0] // t) * t, (resp.shape[1] // t) * t
    c = math.sqrt(math.pi / 2) / 6
    if h == 0 or w == 0:
        return float(c * resp.mean())
    tiles = resp[:h, :w].reshape(h // t, t, w // t, t).mean(axis=(1, 3), dtype=np.float64)
    return float(c * np.quantile(tiles, 0.25))


def latent_reg(views: np.ndarray, *, gain: float = 4.0, floor: float = 1e-3, ceil: float = 0.3) -> float:
    """``lam = clamp(gain * sigma^2 / s^2, floor, ceil)`` for views (2, H, W)
    (edgedp.physics.noise.default_latent_reg): ``sigma`` the noise of the mean view, ``s^2`` its mean
    squared forward difference less the noise's ``2 sigma^2`` (at least a tenth of it)."""
    mean_view = np.asarray(views, np.float32).mean(axis=0)
    sigma = estimate_noise_sigma(mean_view)
    gx = np.diff(mean_view, axis=1)
    gy = np.diff(mean_view, axis=0)
    measured = 0.5 * (float(np.mean(gx * gx, dtype=np.float64)) + float(np.mean(gy * gy, dtype=np.float64)))
    s2 = max(measured - 2 * sigma**2, 0.1 * measured)
    lam = gain * sigma**2 / max(s2, 1e-12)
    return float(min(max(lam, floor), ceil))


# --- box filters, fusion ------------------------------------------------------------------------
def _box_sums(x: np.ndarray, radius: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums over ``[j - radius, j + radius]`` clipped to the array along ``axis`` (float64 running
    sums: float32 ones lose the small errors next to large ones), and the clipped counts."""
    n = x.shape[axis]
    x = np.moveaxis(np.asarray(x), axis, 0)
    c = np.empty((n + 1,) + x.shape[1:], np.float64)
    c[0] = 0
    np.cumsum(x, axis=0, dtype=np.float64, out=c[1:])
    j = np.arange(n)
    hi, lo = np.minimum(j + radius + 1, n), np.maximum(j - radius, 0)
    out = np.empty((n,) + x.shape[1:], np.float64)
    r = min(radius, n - 1)
    # Slices, not fancy indexing: the interior is c[j + r + 1] - c[j - r]; the clipped ends apart.
    head, tail = min(r, n), max(n - r - 1, r)
    np.subtract(c[hi[:head]], c[0], out=out[:head])
    if tail > head:
        np.subtract(c[head + r + 1 : tail + r + 1], c[head - r : tail - r], out=out[head:tail])
    out[tail:] = c[hi[tail:]] - c[lo[tail:]]
    return np.moveaxis(out, 0, axis), (hi - lo).astype(np.float64)


def box_mean(image: np.ndarray, window: int) -> np.ndarray:
    """Mean over a ``2 (window // 2) + 1`` square around each pixel of (..., H, W), taking only
    the pixels inside the image (torch ``avg_pool2d(k, 1, window // 2, count_include_pad=False)``,
    as edgedp.fit.stage2.layer_posterior).  Returns float32 of the same shape."""
    r = window // 2
    rows, nr = _box_sums(np.asarray(image), r, -2)
    both, nc = _box_sums(rows, r, -1)
    return (both / (nr[:, None] * nc[None, :])).astype(np.float32)


def replicate_box_mean(image: np.ndarray, size: int = FLAT_FIELD_BOX) -> np.ndarray:
    """``size`` x ``size`` mean of (H, W) with edge-replicated borders (OpenCV's ``cv2.blur`` with
    ``BORDER_REPLICATE``, what edgedp.io.images uses for the flat field).  Returns float64."""
    r = size // 2
    padded = np.pad(np.asarray(image, np.float64), r, mode="edge")
    h, w = image.shape
    rows, _ = _box_sums(padded, r, 0)
    both, _ = _box_sums(rows, r, 1)
    return both[r : r + h, r : r + w] / float((2 * r + 1) ** 2)


def flat_field_gain(white_left: np.ndarray, white_right: np.ndarray, black: float) -> np.ndarray:
    """Right-view gain ``box101(wl - black) / box101(wr - black)`` (H0, W0) float64 (the Pixel 4
    protocol step 2, edgedp.io.images): the right view is multiplied by it at full size."""
    means = []
    for frame, side in ((white_left, "left"), (white_right, "right")):
        mean = replicate_box_mean(np.asarray(frame, np.float64) - black)
        if not float(mean.min()) > 0.0:
            raise RunnerError(
                f"flat-field {side} frame has no signal above the black level {black:g} in places "
                f"(its {FLAT_FIELD_BOX}x{FLAT_FIELD_BOX} mean is not positive everywhere)"
            )
        means.append(mean)
    return means[0] / means[1]


VIEW_GAIN_MODEL = "exp-poly3"  # edgedp.physics.view_gain.VIEW_GAIN_MODEL


def sensor_crop(sensor: tuple[int, int], frame: tuple[int, int], device: str = "?") -> tuple[int, int]:
    """Where a ``frame`` (H, W) lies on a profile's ``sensor`` (H, W): the offsets ``((H0 - H) // 2,
    (W0 - W) // 2)`` of a centred crop, what ``--crop`` cuts.  The one rule of ``edgedp fit
    --profile`` and ``edgedp-runtime instant`` (issue 17): a capture of the sensor's size or a
    centred crop of it is accepted (G_D is convolutional; the view gain is the sensor's gain cut
    at the same place, :func:`view_gain_map`'s ``sensor``), a frame larger than the sensor in
    either dimension is another sensor: one-line :class:`RunnerError`.

    >>> sensor_crop((1008, 1344), (1008, 1344)), sensor_crop((1008, 1344), (600, 800))
    ((0, 0), (204, 272))
    """
    (h0, w0), (h, w) = (int(sensor[0]), int(sensor[1])), (int(frame[0]), int(frame[1]))
    if h > h0 or w > w0:
        raise RunnerError(
            f"profile '{device}' was tuned on {h0}x{w0} captures, this capture is {h}x{w}: larger than that "
            "sensor (another sensor?); a capture must be the sensor's size or a centred crop of it (--crop)"
        )
    return (h0 - h) // 2, (w0 - w) // 2


def view_gain_map(coefficients, height: int, width: int, sensor: tuple[int, int] | None = None) -> np.ndarray:
    """The right view's gain (H, W) float32 of edgedp.physics.view_gain.view_gain_map: ``exp(sum_k c_k
    u^i v^j)`` over ``i + j <= 3`` (i = 0..3, j = 0..3 - i), ``u``, ``v`` in [-1, 1] across the
    columns / rows of the ``sensor`` (H0, W0; default the frame itself), cut at the centred crop
    of ``height x width`` (:func:`sensor_crop`)."""
    c = np.asarray(coefficients, np.float64).reshape(-1)
    if c.size != 10:
        raise RunnerError(f"view_gain needs 10 coefficients ({VIEW_GAIN_MODEL}), got {c.size}")
    h0, w0 = (height, width) if sensor is None else (int(sensor[0]), int(sensor[1]))
    y0, x0 = sensor_crop((h0, w0), (height, width))
    u = np.linspace(-1.0, 1.0, w0)[None, x0:x0 + width]
    v = np.linspace(-1.0, 1.0, h0)[y0:y0 + height, None]
    terms = [(i, j) for i in range(4) for j in range(4 - i)]
    log_gain = sum(ck * (u**i) * (v**j) for ck, (i, j) in zip(c, terms))
    return np.exp(np.broadcast_to(log_gain, (height, width))).astype(np.float32)


def view_gain_applies(flat_field, profile_flat_field, *, from_profile: bool = False) -> bool:
    """Whether a profile's view gain applies to a capture read with ``flat_field``.

    ``edgedp tune`` measures the left/right gain of captures read as it read them: after the
    profile's own flat field, or none when it had none.  So the gain applies when the capture
    is read the same way (``from_profile``: the frames were taken from the profile, or the same
    frames by name) and another flat field replaces it.  The one definition of this rule:
    ``edgedp fit --profile`` (edgedp.formats.profile.DeviceProfile.view_gain_for) and
    ``edgedp-runtime instant`` both call it.

    >>> view_gain_applies(None, None), view_gain_applies(["w_l.png", "w_r.png"], ("w_l.png", "w_r.png"))
    (True, True)
    >>> view_gain_applies(["a.png", "b.png"], None), view_gain_applies(None, ["w_l.png", "w_r.png"])
    (False, False)
    """
    if from_profile or (not flat_field and not profile_flat_field):
        return True
    return bool(flat_field) and bool(profile_flat_field) and (
        [str(p) for p in flat_field] == [str(p) for p in profile_flat_field])


def over_weights(alphas: np.ndarray) -> np.ndarray:
    """Over-compositing weights ``d_i = a_i * prod_{j > i} (1 - a_j)`` of alphas (L, H, W)
    (layer L - 1 on top; ``a_0 = 1`` makes them a partition of unity).  float32 (L, H, W)."""
    alphas = np.asarray(alphas, np.float32)
    out = np.empty_like(alphas)
    above = np.ones(alphas.shape[1:], np.float32)  # prod_{j > i} (1 - a_j)
    for i in range(alphas.shape[0] - 1, -1, -1):
        np.multiply(alphas[i], above, out=out[i])
        above -= out[i]  # above (1 - a_i) = above - a_i above
    return out


def fuse_weights(weights: np.ndarray, error: np.ndarray, window: int, *, floor: float = 1e-6, out: np.ndarray | None = None,
                 threads: int | None = None) -> np.ndarray:
    """G_D's weights (L, H, W) times the per-pixel layer likelihood, normalized over layers
    (edgedp.fit.stage2.fuse_with_likelihood with its ``layer_posterior``): ``d_i ~ max(w_i, floor) *
    exp(-(e_i - min_j e_j) / T)`` with ``e = box_mean(error, window)`` (window > 1) and
    ``T = 0.5 * mean_p min_j e_j + 1e-20``.  ``error`` (L, H, W) is each layer's re-render error.
    ``out`` may be ``error`` itself (in place, saving one stack); ``threads``: layers box-filtered
    at once (None: the CPU count).  Returns float32 (L, H, W)."""
    layers = error.shape[0]
    out = np.empty(error.shape, np.float32) if out is None else out

    def smooth(i: int) -> None:
        out[i] = box_mean(error[i], window) if window > 1 else error[i]

    map_layers(smooth, layers, threads)
    best = out[0].copy()
    for i in range(1, layers):
        np.minimum(best, out[i], out=best)
    scale = np.float32(-1.0 / (0.5 * float(best.mean(dtype=np.float64)) + 1e-20))
    total = np.zeros(best.shape, np.float32)
    for i in range(layers):
        out[i] = np.exp((out[i] - best) * scale) * np.maximum(weights[i], np.float32(floor))
        total += out[i]
    out /= total
    return out


# --- the instant prediction ---------------------------------------------------------------------
def instant_predict(
    views: np.ndarray,
    alphas: np.ndarray,
    kernels: np.ndarray,
    radii,
    *,
    config: InstantConfig = InstantConfig(),
    reg: float | None = None,
    timings: dict | None = None,
    threads: int | None = None,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-in-focus image and defocus map of a DP pair from G_D's alphas (module docstring).

    Args:
        views: (2, H, W) float32 [left, right], normalized (unclipped) linear values.
        alphas: (L, H, W) MPI alphas from gd.onnx (layer L - 1 on top, alphas[0] = 1).
        kernels: (2, L, K, K) [left, right] x layers, or per cell of a kernel field
            (Pr, Pc, 2, L, K, K): Stage 1, its re-render error and the deconvolution then blend one
            solve per group of cells (:func:`kernel_groups` with ``config.kernel_groups``,
            :func:`solve_latent_grouped`).
        radii: (L,) signed blur radius (px) per layer.
        config: regularization, fusion window, weight floor, padding.
        reg: ``lam``; None: :func:`latent_reg` of the views with ``config``'s gain/floor/ceil.
        timings: filled with seconds ``latent`` (reg + stage 1 + errors), ``fuse`` and
            ``deconvolution`` (the final TV deconvolution).
        threads: CPU threads of the layer loops (None: the CPU count; results do not depend on it).
        groups: with a kernel field, its cells' groups (Pr, Pc); None: ``kernel_groups(kernels,
            config.kernel_groups)`` (:attr:`InstantExport.groups` computes them once per export).

    Returns:
        ``(allinfocus (H, W), defocus (H, W), weights (L, H, W))`` float32; ``defocus`` is the
        signed blur radius (px, > 0 behind the focal plane), ``weights`` the fused compositing
        weights (sum 1 over layers).
    """
    views = np.asarray(views, np.float32)
    alphas = np.asarray(alphas, np.float32)
    radii = np.asarray(radii, np.float32).reshape(-1)
    layers = radii.size
    if views.ndim != 3 or views.shape[0] != 2:
        raise RunnerError(f"views must be (2, H, W) [left, right], got {views.shape}")
    if alphas.shape != (layers,) + views.shape[1:]:
        raise RunnerError(f"alphas {alphas.shape} do not match {layers} layers of a {views.shape[1]}x{views.shape[2]} pair")
    if not ((kernels.ndim == 4 and kernels.shape[:2] == (2, layers))
            or (kernels.ndim == 6 and kernels.shape[2:4] == (2, layers))):
        raise RunnerError(f"kernels must be (2, {layers}, K, K) or per cell (Pr, Pc, 2, {layers}, K, K), got {kernels.shape}")
    t0 = time.perf_counter()
    lam = latent_reg(views, gain=config.gain, floor=config.floor, ceil=config.ceil) if reg is None else float(reg)
    if kernels.ndim == 6 and groups is None:
        groups = kernel_groups(kernels, config.kernel_groups)
    latent, error = solve_latent(views, kernels, lam, pad=config.pad, error=config.fuse_window > 0, groups=groups, threads=threads)
    t1 = time.perf_counter()
    weights = over_weights(alphas)
    if error is not None:
        weights = fuse_weights(weights, error, config.fuse_window, floor=config.weight_floor, out=error, threads=threads)
    t2 = time.perf_counter()
    latent = deconvolve_layers(views, kernels, latent, weights, lam, tv_weight(views, lam), config, groups, threads)
    t3 = time.perf_counter()
    allinfocus = np.zeros(views.shape[1:], np.float32)
    defocus = np.zeros(views.shape[1:], np.float32)
    for i in range(layers):
        allinfocus += weights[i] * latent[i]
        defocus += weights[i] * radii[i]
    if timings is not None:
        timings.update(latent=t1 - t0, fuse=t2 - t1, deconvolution=t3 - t2, latent_reg=lam)
    return allinfocus, defocus, weights


# --- memory ------------------------------------------------------------------------------------
#: Estimated peak bytes of the instant path per pixel and layer (the alphas, weights, latent and
#: error stacks in float32, the deconvolution's per-layer temporaries) and per pixel besides the
#: layers (views, outputs, one layer's padded complex64 spectra, ONNX Runtime's activations of
#: gd.onnx).  Measured (``edgedp-runtime instant``'s ``ru_maxrss``, 12 layers, G_D width 0.5,
#: 2 threads): 0.79 GiB at 1008x1344 and 1.96 GiB at 1600x2400, i.e. 507 B/px + 160 MB; the
#: estimate gives 0.87 and 2.11 GiB (the split between the two constants is not measured).
INSTANT_BYTES_PER_PIXEL_LAYER = 28.0
INSTANT_BYTES_PER_PIXEL = 200.0
#: Resident set of the runner before the frame (Python, numpy, onnxruntime).
INSTANT_BASE_BYTES = 200 * 2**20


def instant_bytes(height: int, width: int, layers: int) -> int:
    """Estimated peak bytes of the instant path on a ``height x width`` frame of ``layers`` layers."""
    return int(INSTANT_BASE_BYTES + height * width * (INSTANT_BYTES_PER_PIXEL_LAYER * layers + INSTANT_BYTES_PER_PIXEL))


def check_budget(height: int, width: int, layers: int, budget) -> None:
    """Refuse a frame whose instant path would not fit ``budget`` (a
    :class:`edgedp_runtime.memory.MemoryBudget`) with one line naming the size and ``--max-memory``.
    The instant path runs on the whole frame (it is not tiled: its G_D, Stage 1 and deconvolution
    see the whole frame at once); a larger frame needs a crop or a larger budget."""
    need = instant_bytes(height, width, layers)
    if need > budget.bytes:
        gib = 2**30
        raise RunnerError(
            f"a {height}x{width} frame with {layers} layers needs about {need / gib:.1f} GiB on the instant path, "
            f"over the memory budget of {budget.gib:.1f} GiB ({budget.source}): raise --max-memory or --crop the frame"
        )


# --- export folder, G_D, the plain API ----------------------------------------------------------
@dataclass(frozen=True)
class InstantExport:
    """What the instant path needs from an export folder (``edgedp export PHONE.profile``)."""

    info: Any  # device_io.ExportInfo
    kernels: np.ndarray  # (2, L, K, K) float32
    radii: np.ndarray  # (L,) float32
    config: InstantConfig
    patch_kernels: np.ndarray | None = None  # (Pr, Pc, 2, L, K, K) float32 of a kernel field, or None

    @functools.cached_property
    def groups(self) -> np.ndarray | None:
        """The kernel field's cell groups (:func:`kernel_groups` with ``config.kernel_groups``),
        made once per export rather than per call (132 ms for a calibrated 48-cell field), or
        None without a field."""
        return None if self.patch_kernels is None else kernel_groups(self.patch_kernels, self.config.kernel_groups)

    @property
    def predict_kernels(self) -> np.ndarray:
        """What :func:`instant_predict` takes: the per-cell kernels when the export has a kernel
        field, else the uniform ones."""
        return self.kernels if self.patch_kernels is None else self.patch_kernels

    @property
    def inputs(self) -> dict:
        """The profile's input settings (``black_level``, ``white_level``, ``flat_field``; None
        where the profile leaves the default)."""
        return dict((self.info.data.get("profile") or {}).get("input") or {})


def load_instant(folder) -> InstantExport:
    """Read the sidecar, the kernels (and a kernel field's per-cell ``patch_kernels``) and the
    instant settings; one-line RunnerError if the export has none (a scene export) or they
    disagree with the layers, the kernel size or the recorded ``patch_grid``."""
    info = schema.load_export(folder)
    entry = info.data.get("instant")
    side = info.folder / schema.SIDECAR_NAME
    if not isinstance(entry, dict):
        raise RunnerError(
            f"{side}: this export has no 'instant' data (kernels); export a device profile with "
            f"'edgedp export PHONE.profile -o OUT'"
        )
    info.graph("gd")
    kernels = device_io.load_npy(info.folder / str(entry.get("kernels", "kernels.npy")), "instant kernels")
    radii = np.asarray(info.radii, np.float32)
    if kernels.ndim != 4 or kernels.shape[0] != 2 or kernels.shape[1] != radii.size or kernels.shape[2] != kernels.shape[3]:
        raise RunnerError(f"{side}: kernels {kernels.shape} do not match (2, {radii.size}, K, K) for its {radii.size} radii")
    patch = None
    if entry.get("patch_kernels") is not None:
        name = str(entry["patch_kernels"])
        patch = device_io.load_npy(info.folder / name, "instant patch kernels")
        grid = entry.get("patch_grid")
        if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and g >= 1 for g in grid)):
            raise RunnerError(f"{side}: 'instant' names {name} without a valid \"patch_grid\": [rows, cols] (got {grid!r})")
        want = (grid[0], grid[1], 2, radii.size) + kernels.shape[2:]
        if patch.shape != want:
            raise RunnerError(f"{side}: {name} is {patch.shape}, expected (Pr, Pc, 2, L, K, K) = {want} "
                              f"for its {grid[0]}x{grid[1]} grid, {radii.size} radii and K = {kernels.shape[-1]}")
    return InstantExport(info=info, kernels=kernels, radii=radii, config=InstantConfig.from_sidecar(entry), patch_kernels=patch)


def describe_kernels(inst: InstantExport) -> str:
    """One line on the kernels an instant export predicts with, e.g. ``kernel field 2x3 cells
    (patch_kernels.npy), 6 layers, K 11`` or ``uniform, 6 layers, K 11``."""
    k = inst.kernels
    if inst.patch_kernels is None:
        return f"uniform, {k.shape[1]} layers, K {k.shape[-1]}"
    pr, pc = inst.patch_kernels.shape[:2]
    name = inst.info.data["instant"].get("patch_kernels")
    return f"kernel field {pr}x{pc} cells ({name}), {k.shape[1]} layers, K {k.shape[-1]}"


def run_gd(model, views: np.ndarray, multiple_of: int, names: tuple[str, str] = ("pair", "alphas")) -> np.ndarray:
    """G_D's alphas (L, H, W) for views (2, H, W): the pair is padded by edge replication to
    multiples of ``multiple_of`` (gd.onnx does not pad), the alphas cropped back.  ``model`` is
    a callable ``feeds -> {name: array}`` (a runner backend's model)."""
    pair, (h, w) = device_io.pad_to_multiple(np.asarray(views, np.float32)[None], multiple_of, "pad")
    out = model({names[0]: pair})[names[1]]
    return np.ascontiguousarray(np.asarray(out, np.float32)[0, :, :h, :w])


class _OrtCpu:
    """gd.onnx in ONNX Runtime on the CPU (the plain API; the runners use their backends)."""

    def __init__(self, path: Path, threads: int | None) -> None:
        try:
            from .quiet import import_onnxruntime  # noqa: PLC0415

            ort = import_onnxruntime()
        except ImportError as err:
            raise RunnerError(f"onnxruntime is not installed ({err}); pip install onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        # Without the arena ORT hands G_D's full-size intermediates back after the call instead
        # of keeping ~0.5 GB (1008x1344, 18 layers) while the numpy part runs; same speed.
        options.enable_cpu_mem_arena = False
        from .quiet import ort_load  # noqa: PLC0415

        self.session = ort_load(ort, str(path), options, ["CPUExecutionProvider"], RunnerError, str(path))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, feeds: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


def run_instant(export_folder, views: np.ndarray, threads: int | None = None) -> dict:
    """The whole instant path on normalized views (2, H, W) float32 (no file I/O but loading
    the export): gd.onnx in ONNX Runtime (CPU, ``threads`` intra-op threads), then
    :func:`instant_predict` (on ``threads`` threads).  Returns ``{"allinfocus": (H, W), "defocus": (H, W), "weights":
    (L, H, W), "latent_reg": lam, "seconds": {"load", "gd", "latent", "fuse", "total"}}``."""
    t0 = time.perf_counter()
    inst = load_instant(export_folder)
    graph = inst.info.graph("gd")
    model = _OrtCpu(schema.graph_file(graph, ".onnx", "re-export with 'edgedp export PHONE.profile'"), threads)
    t1 = time.perf_counter()
    alphas = run_gd(model, views, graph.multiple_of)
    t2 = time.perf_counter()
    timings: dict = {}
    aif, defocus, weights = instant_predict(views, alphas, inst.predict_kernels, inst.radii, config=inst.config, timings=timings,
                                            threads=threads, groups=inst.groups)
    seconds = {"load": t1 - t0, "gd": t2 - t1, "latent": timings["latent"], "fuse": timings["fuse"]}
    seconds["total"] = time.perf_counter() - t0
    return {"allinfocus": aif, "defocus": defocus, "weights": weights, "latent_reg": timings["latent_reg"], "seconds": seconds}
