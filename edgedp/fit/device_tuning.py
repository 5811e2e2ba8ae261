"""Calibration-free device tuning (issue 5): learn what captures of one phone share.

:func:`tune_device` (``edgedp tune``) turns several DP captures of one device into what a
device profile holds (:class:`TunedDevice`; :mod:`edgedp.run.profile_tuning` writes it as a
:class:`edgedp.formats.profile.DeviceProfile`):

1. the left/right gain over the frame (:func:`estimate_view_gain`): DP vignetting measured from
   the captures themselves, no white sheet (after any flat field the captures were read with);
2. optionally (``search=True``, ``edgedp tune --search``) the Butterworth kernel shape by a
   regularization-free cross-view residual (:func:`search_kernels`) and the blur radius per
   measured disparity (:func:`estimate_radius_scale`);
3. one G_D fitted over the captures in turn (sequential warm start) on layer radii shared by all
   captures, so that layer i means the same blur everywhere.

Why the kernel search is off by default (measured on the Pixel 4 dev scenes, README "Device
profiles"): on a simulated device the cross-view residual recovers beta and the order (within one
grid step), but on real captures the two self-consistency scores available without ground truth
disagree (the cross-view residual ranks beta 0.1 first, the Stage-1 re-render error beta 0.5) and
the restoration barely depends on the shape (likelihood-only all-in-focus PSNR over the grid within
+-0.1 dB of the default on the mean, the cross-view winner 0.08 dB below it), so the literature
default (order 3, cut-off 2.5, beta 0.2) is kept unless asked.

Nothing here uses ground truth: kernel choice, gain and G_D come from the DP views alone.
Stage-3 spatial variation of the kernels over the frame is not estimated (Stage 3 gains ~0.1 dB
for about a minute per capture, METHOD.md / README).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..conventions import BEHIND, BOTH, UNKNOWN, focus_for_side
from ..physics.disparity import estimate_disparity
from ..errors import InputError
from .config import STAGE2_BLOCK, CaptureInfo, FitConfig
from .pipeline import disparity_per_radius, fit_channel, layer_radii
from .stage2 import fit_defocus_map, train_defocus_net
from ..physics.kernels import ButterworthParams, both_radii, behind_radii, kernel_pyramid
from .kernel_estimation import field_evidence, tilted_field
from ..physics.noise import default_latent_reg
from .stage1 import solve_latent_map
from ..physics.blur import blur_stack_fft
from ..physics.view_gain import VIEW_GAIN_TERMS, view_gain_basis, view_gain_map
from .tiling import TilingConfig, plan_fit, tiled_quadratic_form


if TYPE_CHECKING:
    from edgedp_runtime.memory import MemoryBudget

#: Default search grid (the thesis' Butterworth grid plus a flatter floor 0.5).
ORDERS = (3.0, 6.0, 9.0)
CUTOFFS = (2.0, 2.5)
BETAS = (0.1, 0.2, 0.5)
RADIUS_SCALES = (0.8, 1.0, 1.25)

TuneProgress = Callable[[str, int, int, "float | None"], None]


@dataclass(frozen=True)
class KernelScore:
    """One kernel-shape setting and its score (mean over captures of the best-layer error, each
    capture's error divided by its smallest error over the grid; 1 = best everywhere).
    ``radius_scale`` is the estimated scale for the winner (first entry), 1 for the others."""

    params: ButterworthParams
    radius_scale: float
    score: float
    errors: tuple[float, ...]


@dataclass(frozen=True)
class TunedDevice:
    """What :func:`tune_device` learned about one device: the fields of a device profile
    (:class:`edgedp.formats.profile.DeviceProfile`, same names and meanings) that come from the
    captures, and the kernel search's ``scores`` (best first; empty when not searched).  The input
    settings (black / white level, flat field) are the caller's; :mod:`edgedp.run.profile_tuning`
    adds them and writes the profile."""

    device: str
    height: int
    width: int
    kernel_model: str
    butterworth: ButterworthParams
    radius_scale: float
    layers: int
    gd_width: float
    gd_scale: int
    gd_state: dict[str, Tensor]
    focus: str
    radii: tuple[float, ...]
    captures: tuple[CaptureInfo, ...]
    view_gain: tuple[float, ...] | None
    asymmetry: float | None
    kernel_field: object = None  # edgedp.physics.kernel_field.KernelField (tuned) or None
    field_evidence: object = None  # edgedp.fit.kernel_estimation.FieldEvidence pooled over the captures, or None
    scores: tuple[KernelScore, ...] = ()


@dataclass(frozen=True)
class _Capture:
    views: Tensor  # (2, H, W)
    low: float
    high: float
    side: str
    lam: float
    path: str | None


def stage1_error(views: Tensor, radii: Tensor, model: str, params: ButterworthParams, lam: float, block: int = STAGE2_BLOCK) -> float:
    """Mean over ``block x block`` blocks of the best single layer's Stage-1 re-render error.

    views (2, H, W); radii (L,).  Per layer i: ``x_i`` = closed-form latent map, error
    ``sum_v ||x_i conv f_i^v - y_v||^2`` summed over the block; min over layers; mean over blocks.
    """
    kernels = kernel_pyramid(radii, model, params, device=views.device)
    latent = solve_latent_map(views, kernels, lam)  # (L, H, W)
    blurred = blur_stack_fft(latent[None], kernels)[0]  # (2, L, H, W)
    err = (blurred - views[:, None]).square().sum(0)  # (L, H, W)
    err = torch.nn.functional.avg_pool2d(err[None], block, block, ceil_mode=True)[0]
    return float(err.min(0).values.mean())


def cross_error_map(views: Tensor, radii: Tensor, model: str, params: ButterworthParams, block: int = STAGE2_BLOCK) -> Tensor:
    """Per-block, per-layer cross-view residual (L, hb, wb), regularization-free.

    A region at layer i has ``y_L = x conv f_i^L`` and ``y_R = x conv f_i^R``, hence
    ``y_L conv f_i^R - y_R conv f_i^L = 0`` whatever the sharp image x.  The squared residual is
    divided by ``||f_i^L||^2 + ||f_i^R||^2`` (its white-noise variance per pixel) so that a
    blurrier kernel is not favoured for merely shrinking noise; then averaged over blocks.
    """
    kernels = kernel_pyramid(radii, model, params, device=views.device)  # (2, L, K, K)
    layers = kernels.shape[1]
    stack = views[:, None].expand(2, layers, *views.shape[-2:])  # (2 views, L, H, W)
    blurred = blur_stack_fft(stack, kernels)  # (2 inputs, 2 kernel views, L, H, W)
    res = (blurred[0, 1] - blurred[1, 0]).square()  # y_L conv f^R - y_R conv f^L: (L, H, W)
    res = res / kernels.square().sum((0, 2, 3))[:, None, None]
    return torch.nn.functional.avg_pool2d(res[None], block, block, ceil_mode=True)[0]


def cross_error(views: Tensor, radii: Tensor, model: str, params: ButterworthParams, lam: float = 0.0, block: int = STAGE2_BLOCK) -> float:
    """Mean over blocks of the best layer's :func:`cross_error_map` (``lam`` unused: same
    signature as :func:`stage1_error`)."""
    return float(cross_error_map(views, radii, model, params, block).min(0).values.mean())


def _radii_for(focus: str, radius: float, layers: int) -> Tensor:
    if focus == BOTH:
        return both_radii(radius, max((layers - 1) // 2, 1))
    return behind_radii(radius, max(layers, 2))


def _extent(c: _Capture, focus: str) -> float:
    e = max(abs(c.low), abs(c.high)) if focus == BOTH else c.high
    return e if math.isfinite(e) and e > 0 else float("nan")


def search_kernels(
    captures: Sequence[_Capture],
    config: FitConfig,
    focus: str,
    *,
    orders: Sequence[float] = ORDERS,
    cutoffs: Sequence[float] = CUTOFFS,
    betas: Sequence[float] = BETAS,
    layer_density: float = 2.0,
    block: int = 8,
    error: str = "cross",
    progress: TuneProgress | None = None,
) -> list[KernelScore]:
    """Score every kernel-shape setting on every capture; returns scores sorted best first
    (``radius_scale`` of each is 1: the scale is estimated afterwards, :func:`estimate_radius_scale`).

    Each setting gets a generous radius range, ``1.5 x extent / disparity_per_radius(params)``,
    with ``layer_density`` layers per px (finer than a fit's, so the score measures the kernel
    shape rather than the rounding of a continuous defocus to a layer) and the best layer per
    ``block x block`` block is kept.  ``error``: ``cross`` (default, :func:`cross_error`:
    regularization-free) or ``stage1`` (:func:`stage1_error`, the closed-form latent map's
    re-render error, which in our synthetic tests was biased towards low beta by the latent
    regularizer).
    """
    report = progress or (lambda *a: None)
    scorer = {"cross": cross_error, "stage1": stage1_error}[error]
    grid = [
        ButterworthParams(order=o, cutoff=c, beta=b, smooth_sigma=config.butterworth.smooth_sigma)
        for o, c, b in itertools.product(orders, cutoffs, betas)
    ]
    nominal = disparity_per_radius(config.kernel_model, config.butterworth)
    errors = torch.zeros(len(grid), len(captures), dtype=torch.float64)
    total = len(grid) * len(captures)
    step = 0
    for j, cap in enumerate(captures):
        extent = _extent(cap, focus)
        if not math.isfinite(extent):
            extent = 8.0 * nominal
        for i, params in enumerate(grid):
            radius = min(max(1.5 * extent / disparity_per_radius(config.kernel_model, params), 2.0), 40.0)
            n = int(math.ceil(layer_density * radius)) + 1
            radii = _radii_for(focus, radius, n if focus == BEHIND else 2 * n - 1)
            errors[i, j] = scorer(cap.views, radii, config.kernel_model, params, cap.lam, block)
            step += 1
            report("tune kernels", step, total, float(errors[i, j]))
    rel = errors / errors.min(0).values.clamp_min(1e-30)
    scores = rel.mean(1)
    out = [KernelScore(grid[i], 1.0, float(scores[i]), tuple(float(e) for e in errors[i])) for i in range(len(grid))]
    return sorted(out, key=lambda k: k.score)


def estimate_radius_scale(
    captures: Sequence[_Capture],
    config: FitConfig,
    params: ButterworthParams,
    focus: str,
    *,
    scales: Sequence[float] = RADIUS_SCALES,
    layer_density: float = 2.0,
    block: int = 8,
    quantile: float = 0.95,
) -> float:
    """Blur radius per disparity relative to the kernel model's nominal value, snapped to
    ``scales``: per capture, the ``quantile`` of the best layer's |radius| over confidently
    decided blocks (best error < half the median over layers: textured) divided by the nominal
    radius of the measured disparity extent; the median over captures."""
    dpr = disparity_per_radius(config.kernel_model, params)
    ratios = []
    for cap in captures:
        extent = _extent(cap, focus)
        if not math.isfinite(extent):
            continue
        radius = min(max(1.5 * extent / dpr, 2.0), 40.0)
        n = int(math.ceil(layer_density * radius)) + 1
        radii = _radii_for(focus, radius, n if focus == BEHIND else 2 * n - 1).to(cap.views.device)
        emap = cross_error_map(cap.views, radii, config.kernel_model, params, block)
        best, arg = emap.min(0)
        sure = best < 0.5 * emap.median(0).values
        if int(sure.sum()) < 4:
            continue
        r = radii.abs()[arg[sure]]
        ratios.append(float(torch.quantile(r, quantile)) / (extent / dpr))
    if not ratios:
        return 1.0
    ratio = sorted(ratios)[len(ratios) // 2]
    return float(min(scales, key=lambda s: abs(math.log(s / ratio))))


def estimate_view_gain(views: Sequence[Tensor], *, block: int = 16, saturation: float = 0.95) -> tuple[float, ...] | None:
    """Left/right gain over the frame from the captures themselves (no white sheet).

    Both DP views see the same scene through the two halves of the aperture, so their means over
    a block differ by the views' vignetting (a smooth property of sensor + lens) and, near edges,
    by the DP disparity, whose effect changes sign from one side of an edge to the other and so
    averages out over a frame and over captures.  Per capture ``views`` (2, H, W): means over
    ``block`` px blocks, ``log(mean_L / mean_R)`` per block; one weighted least-squares fit of
    :data:`edgedp.physics.view_gain.VIEW_GAIN_MODEL` over all captures' blocks (weight: the darker view's
    mean, so dark blocks, whose ratio is mostly noise, count little; blocks with a pixel above
    ``saturation`` are left out).  The right view times :func:`edgedp.physics.view_gain.view_gain_map` of
    the returned coefficients matches the left.

    Returns None when there is nothing to correct: too few usable blocks, or (two or more
    captures) a gain whose RMS departure from 1 over the frame is within twice its standard error
    (the scatter of the captures' own fits over sqrt(n)); a correction that is mostly noise would
    only perturb what is tuned after it.

    Measured on the Pixel 4 dev scenes (three captures, no flat field): the estimated gain is within
    1.2% (mean) of the white-sheet flat field, whose own gain spans 1.01-1.40 over the crop.
    """
    systems = []
    pooled: dict[tuple[int, int], Tensor] = {}  # block means of the basis, per capture size
    for v in views:
        h, w = v.shape[-2:]
        hb, wb = h // block, w // block
        if hb < 2 or wb < 2:
            continue
        v = v.to(torch.float64)[:, None, : hb * block, : wb * block]
        means = F.avg_pool2d(v, block)[:, 0]  # (2, hb, wb)
        peak = F.max_pool2d(v, block)[:, 0].amax(0)
        ok = (means.amin(0) > 1e-4) & (peak < saturation)
        if (h, w) not in pooled:
            full = view_gain_basis(h, w, dtype=torch.float64)[:, None, : hb * block, : wb * block]
            pooled[h, w] = F.avg_pool2d(full, block)[:, 0]
        basis = pooled[h, w]
        weight = means.amin(0)[ok].sqrt()
        systems.append((basis[:, ok].T * weight[:, None], (means[0] / means[1]).log()[ok] * weight))

    def solve(parts) -> Tensor | None:
        if not parts or sum(int(a.shape[0]) for a, _ in parts) < 4 * VIEW_GAIN_TERMS:
            return None
        a, b = torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
        return torch.linalg.lstsq(a, b[:, None]).solution[:, 0]

    coef = solve(systems)
    if coef is None:
        return None
    if len(systems) >= 2:
        basis = view_gain_basis(64, 64, dtype=torch.float64).reshape(VIEW_GAIN_TERMS, -1)
        each = [c @ basis for c in (solve([s]) for s in systems) if c is not None]
        if len(each) >= 2:
            logs = torch.stack(each)
            departure = float((coef @ basis).square().mean().sqrt())
            standard_error = float((logs.std(0) / math.sqrt(logs.shape[0])).square().mean().sqrt())
            if departure <= 2 * standard_error:
                return None
    return tuple(float(c) for c in coef)


def tune_device(
    captures: Sequence[tuple[Tensor, Tensor]],
    config: FitConfig = FitConfig(),
    *,
    device_name: str = "device",
    paths: Sequence[str | None] | None = None,
    search: bool = False,
    rounds: int = 1,
    progress: TuneProgress | None = None,
    grid: dict | None = None,
    estimate_gain: bool = True,
    budget: "MemoryBudget | None" = None,
    plan_report: dict | None = None,
) -> TunedDevice:
    """Tune one device from several DP captures (left, right), each (C, H, W) of one size.

    (a) kernel search (:func:`search_kernels`) when ``search`` is True (otherwise
    ``config.butterworth`` and ``config.radius_scale``); (b) one G_D fitted on all captures in turn (``rounds``
    passes, each capture's Stage 2 warm-started from the previous), with layer radii shared by all
    captures (the largest capture's range) so that a layer means the same blur everywhere.
    ``estimate_gain``: estimate the left/right gain over the frame (:func:`estimate_view_gain`)
    and correct the right view with it first (after any flat field the captures were read with).
    ``grid``: optional overrides of the search grid (``orders``, ``cutoffs``, ``betas``,
    ``radius_scales``, ``layer_density``, ``block``, ``error``).
    ``budget``: the memory budget of each capture's G_D fit (:func:`edgedp.fit.tiling.plan_fit`; None:
    the default); captures too large for it get Stage 1 and Stage 2's Gram matrices tile by tile
    (:func:`edgedp.fit.tiling.tiled_quadratic_form`), with G_D's scale raised if Stage 2 itself would
    not fit (then the profile records that scale).  ``plan_report``: filled with the plan's
    :meth:`~edgedp.fit.tiling.TilePlan.report`.  (The kernel search, ``search=True``, runs on whole
    frames.)
    Returns what a device profile holds (:class:`TunedDevice`, with the grid scores, best first;
    empty when not searched).
    """
    report = progress or (lambda *a: None)
    caps, shape = tuning_captures(captures, config, paths)
    # Left/right gain (vignetting) from the captures; corrected before anything else is tuned.
    gain = estimate_view_gain([c.views for c in caps]) if estimate_gain else None  # None: nothing significant
    if gain is not None:
        caps = correct_view_gain(caps, gain, shape)
    focus = device_focus(config.focus, caps)
    params, scale, scores = config.butterworth, config.radius_scale, []
    if search:
        params, scale, scores = search_kernel_shape(caps, config, focus, grid, report)
    cfg, radii, dpr = shared_layers(caps, dataclasses.replace(config, butterworth=params, radius_scale=scale, focus=focus))
    kernels = kernel_pyramid(radii, cfg.kernel_model, params, device=radii.device)
    plan = plan_fit(shape[0], shape[1], 1, int(radii.numel()), int(kernels.shape[-1]), cfg, TilingConfig(), budget=budget)
    cfg = dataclasses.replace(cfg, gd_scale=plan.gd_scale, stage2_block=plan.stage2_block)
    if plan_report is not None:
        plan_report.update(plan.report())
    evidence = pooled_field_evidence(caps, radii, dpr, cfg, report) if cfg.kernel_estimation is not None else None
    state, infos = fit_shared_gd(caps, kernels, radii, cfg, plan, rounds, report)
    return TunedDevice(
        device=device_name,
        height=int(shape[0]),
        width=int(shape[1]),
        kernel_model=cfg.kernel_model,
        butterworth=params,
        radius_scale=float(scale),
        layers=int(radii.numel()),
        gd_width=float(cfg.gd_width),
        gd_scale=int(cfg.gd_scale),
        gd_state=state,
        focus=focus,
        radii=tuple(float(x) for x in radii.cpu()),
        captures=tuple(infos),
        view_gain=gain,
        asymmetry=None if gain is None else float(math.exp(gain[0])),
        kernel_field=None if evidence is None else tilted_field(
            evidence.choose(cfg.kernel_estimation.neighbour_weight), float(radii.abs().max()),
            model=cfg.kernel_model, params=params, source="tuned"),
        field_evidence=evidence,
        scores=tuple(scores),
    )


def tuning_captures(captures: Sequence[tuple[Tensor, Tensor]], config: FitConfig,
                    paths: Sequence[str | None] | None = None) -> tuple[list[_Capture], tuple[int, int]]:
    """The checked captures of :func:`tune_device`: each pair's fit-channel views (2, H, W) on
    ``config.device``, its DP disparity range and Stage 1 ``lam``; and the sensor size (H, W).
    Raises InputError for no capture, a pair that is not two (C, H, W) of one shape, or captures
    of different sizes (one device, one sensor)."""
    if not captures:
        raise InputError("tune needs at least one capture")
    dev = torch.device(config.device)
    shape = tuple(captures[0][0].shape[-2:])
    caps: list[_Capture] = []
    for n, (left, right) in enumerate(captures):
        name = paths[n] if paths else None
        if left.shape != right.shape or left.dim() != 3:
            raise InputError(f"capture {name or n}: left {tuple(left.shape)} and right {tuple(right.shape)} must both be (C, H, W)")
        if tuple(left.shape[-2:]) != shape:
            raise InputError(f"capture {name or n} is {left.shape[-2]}x{left.shape[-1]}, the first is {shape[0]}x{shape[1]}: one device, one sensor size")
        views = torch.stack([fit_channel(left.to(dev, torch.float32), config.channel),
                             fit_channel(right.to(dev, torch.float32), config.channel)])
        est = estimate_disparity(views[0], views[1])
        lam = config.latent_reg if config.latent_reg is not None else default_latent_reg(views)
        caps.append(_Capture(views, est.low, est.high, est.side, lam, name))
    return caps, shape


def correct_view_gain(caps: Sequence[_Capture], gain: tuple[float, ...], shape: tuple[int, int]) -> list[_Capture]:
    """The captures with their right view times the gain map of ``gain``
    (:func:`edgedp.physics.view_gain.view_gain_map`, coefficients of :func:`estimate_view_gain`)."""
    g = view_gain_map(gain, *shape, device=caps[0].views.device)
    return [dataclasses.replace(c, views=torch.stack([c.views[0], c.views[1] * g])) for c in caps]


def device_focus(focus: str, caps: Sequence[_Capture]) -> str:
    """One focus side for the device's G_D (its layer count depends on it): ``focus`` unless
    ``auto``, then ``both`` when any capture needs it (:func:`edgedp.conventions.focus_for_side`),
    else ``behind``."""
    if focus == "auto":
        focus = BOTH if any(focus_for_side(c.side) == BOTH for c in caps) else BEHIND
    return focus


def search_kernel_shape(caps: Sequence[_Capture], config: FitConfig, focus: str, grid: dict | None,
                        report: TuneProgress) -> tuple[ButterworthParams, float, list[KernelScore]]:
    """The searched kernel shape, its radius scale and the grid's scores (best first, the winner
    with that scale): :func:`search_kernels` then :func:`estimate_radius_scale`; ``grid``: overrides
    of the search grid as for :func:`tune_device`."""
    grid = dict(grid or {})
    scales = grid.pop("radius_scales", RADIUS_SCALES)
    scores = search_kernels(caps, config, focus, progress=report, **grid)
    params = scores[0].params
    scale = estimate_radius_scale(caps, config, params, focus, scales=scales)
    return params, scale, [dataclasses.replace(k, radius_scale=scale) if k is scores[0] else k for k in scores]


def shared_layers(caps: Sequence[_Capture], cfg: FitConfig) -> tuple[FitConfig, Tensor, float]:
    """Layer radii shared by all captures: the widest capture's range with the config's kernel
    model and radius scale (``cfg.focus`` decided, not ``auto``; ``cfg.max_radius`` when given).
    Returns ``(cfg with max_radius and layers, radii (L,) on cfg.device, disparity per px of radius)``."""
    dpr = disparity_per_radius(cfg.kernel_model, cfg.butterworth) / cfg.radius_scale  # disparity per px of radius
    extents = [_extent(c, cfg.focus) for c in caps]
    finite = [e for e in extents if math.isfinite(e)]
    radius = min(max(math.ceil(max(finite) / dpr), 2), 40) if finite else 8.0
    radius = float(cfg.max_radius) if cfg.max_radius is not None else float(radius)
    # cfg.focus is decided (not auto), so layer_radii does not look at the side.
    _, radii = layer_radii(dataclasses.replace(cfg, max_radius=radius), 0.0, 0.0, UNKNOWN)
    radii = radii.to(torch.device(cfg.device))
    return dataclasses.replace(cfg, max_radius=radius, layers=int(radii.numel())), radii, dpr


def pooled_field_evidence(caps: Sequence[_Capture], radii: Tensor, dpr: float, cfg: FitConfig, report: TuneProgress):
    """The device's kernel-field evidence (:class:`edgedp.fit.kernel_estimation.FieldEvidence`): each
    capture's cross-convolution evidence, normalised so each capture weighs the same, pooled; a
    capture with little texture in a cell then follows the device (edgedp.fit.kernel_estimation)."""
    evidence = None
    for n, cap in enumerate(caps):
        tick = lambda i, t, n=n: report(f"tune kernel field {n + 1}/{len(caps)}", i, t, None)  # noqa: E731
        ev = field_evidence(cap.views, radii, dpr, cfg.kernel_estimation, model=cfg.kernel_model, params=cfg.butterworth, progress=tick)
        evidence = ev.normalised() if evidence is None else evidence.combined(ev.normalised())
    return evidence


def fit_shared_gd(caps: Sequence[_Capture], kernels: Tensor, radii: Tensor, cfg: FitConfig, plan, rounds: int,
                  report: TuneProgress) -> tuple[dict[str, Tensor], list[CaptureInfo]]:
    """One G_D fitted on all captures in turn (``rounds`` passes, each capture's Stage 2 warm-started
    from the previous), whole frame or, when ``plan`` (:class:`edgedp.fit.tiling.TilePlan`) is tiled,
    with Stage 1 and the Gram matrices tile by tile.  Returns ``(G_D's state dict on the CPU, one
    CaptureInfo per capture of the last round)``."""
    height, width = (int(s) for s in caps[0].views.shape[-2:])
    state: dict[str, Tensor] | None = None
    infos: list[CaptureInfo] = []
    for r in range(max(1, rounds)):
        infos = []
        for n, cap in enumerate(caps):
            t0 = time.perf_counter()
            tag = f"tune G_D {n + 1}/{len(caps)}" + (f" round {r + 1}" if rounds > 1 else "")
            tick = lambda s, i, t, l, tag=tag: report(tag, i, t, l)  # noqa: E731
            if plan.tiled:
                form, _ = tiled_quadratic_form(cap.views, kernels, cap.lam, plan.tiles, cfg.stage2_block,
                                               cfg.smooth_weight, form=cfg.stage2_iterations > 0)
                net, losses = train_defocus_net(cap.views, form, radii, cfg, gd_init=state, progress=tick)
                del form
            else:
                latent = solve_latent_map(cap.views, kernels, cap.lam)
                net, _, _, losses = fit_defocus_map(cap.views, latent, kernels, radii, cfg, gd_init=state, progress=tick)
            state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            infos.append(CaptureInfo(cap.path, height, width, float(cap.low), float(cap.high),
                                     time.perf_counter() - t0, losses[-1] if losses else None))
    assert state is not None
    return state, infos
