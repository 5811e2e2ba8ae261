"""Zero-shot fit of one DP capture: the three stages of METHOD.md.

Stage 1 (:mod:`edgedp.fit.stage1`): per-layer latent map in closed form (Fourier-domain least squares).
Stage 2: the defocus CNN G_D (:mod:`edgedp.models.defocus_net`) predicts MPI alphas; with the latent map
fixed, the re-rendered DP pair is ``y_v = sum_i d_i * B_i^v`` with ``B_i^v = x_i conv f_i^v``
precomputed once, so each iteration costs the CNN plus an element-wise sum.
Stage 3 (:mod:`edgedp.fit.stage3`): scene-specific non-uniform kernels from generator CNNs.

Conventions: CONVENTIONS.md (views left then right, signed radius > 0 behind the focal plane).
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch import Tensor

from ..conventions import BOTH, focus_for_side
from ..physics.disparity import DisparityEstimate, estimate_disparity
from ..errors import InputError
from ..physics.kernels import ButterworthParams, both_radii, behind_radii, kernel_disparity, kernel_pyramid
from ..physics.kernel_field import KernelField, field_layer_kernels, spread_ratio
from .deconvolution import deconvolve_layers, default_tv_weight
from .kernel_estimation import FieldEvidence, estimate_kernel_field
from ..physics.fourier import LatentSolver
from ..physics.noise import default_latent_reg
from ..models.defocus_net import DefocusNet
from .config import FitConfig, FitResult, ProgressCallback, StageReport
from .stage2 import fit_defocus_map, load_gd_state


LUMINANCE = (0.2126, 0.7152, 0.0722)
"""Rec. 709 weights of linear RGB: the channel an RGB fit runs on."""


def fit_inputs(left: Tensor, right: Tensor, config: "FitConfig") -> tuple[Tensor, Tensor, Tensor]:
    """The checked inputs of a fit: ``(left, right, views)``, the pair (C, H, W) as float32 on
    ``config.device`` and the fit channel's views (2, H, W) [left, right]
    (:func:`fit_channel`).  Raises InputError for shapes that differ or are not (C, H, W), and
    for ``cuda`` without CUDA."""
    if left.shape != right.shape or left.dim() != 3:
        raise InputError(f"left {tuple(left.shape)} and right {tuple(right.shape)} must both be (C, H, W)")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    left = left.to(device=device, dtype=torch.float32)
    right = right.to(device=device, dtype=torch.float32)
    return left, right, torch.stack([fit_channel(left, config.channel), fit_channel(right, config.channel)])


def fit_scene(
    left: Tensor,
    right: Tensor,
    config: FitConfig = FitConfig(),
    *,
    kernel_field: KernelField | None = None,
    field_prior: FieldEvidence | None = None,
    gd_init: dict[str, Tensor] | None = None,
    progress: ProgressCallback | None = None,
) -> FitResult:
    """Fit one DP capture.

    Args:
        left, right: (C, H, W) in [0, 1] (C = 1 or 3; with 3 the fit runs on the luminance and
            the fitted defocus map and kernels are applied to every channel).
        config: settings; data-derived fields (``None``) are filled in the result's config.
        kernel_field: a spatially varying DP kernel field (:class:`edgedp.physics.kernel_field.KernelField`)
            instead of the parametric kernels: every stage then uses its per-cell layer kernels
            (:func:`field_kernels`; Stage 1 and the deconvolution :class:`~edgedp.fit.stage3.GroupedLatentSolver`,
            Stage 2 the patchwise blur), ``patch_kernels`` of the result are those, ``kernels``
            their mean over the cells and ``config.patches`` the field's grid.  Stage 3 is not
            combined with a field (``stage3_iterations > 0`` is a one-line InputError).
        field_prior: kernel-field evidence pooled over other captures of the device (a profile's,
            :class:`edgedp.fit.kernel_estimation.FieldEvidence`), added to this capture's own when
            the field is estimated (``config.kernel_estimation``).
        gd_init: G_D weights to start from (warm start); shapes must match.
        progress: optional callback ``(stage, step, total, loss)``.
    """
    if kernel_field is not None and config.stage3_iterations > 0:
        raise InputError("a kernel field (--kernels) replaces stage 3's learned kernels: run it with 0 stage 3 "
                         "iterations (--iterations N,0), or stage 3 without --kernels")
    left, right, views = fit_inputs(left, right, config)  # views (2, H, W)
    report = progress or (lambda *args: None)
    stages: list[StageReport] = []

    # Blur range from the DP disparity (physics, not a constant).
    t0 = time.perf_counter()
    est, config, radii, kernels = fit_layers(views, config)
    if gd_init is not None:  # fail before the long stages, not after
        load_gd_state(DefocusNet(int(radii.numel()), config.gd_width), gd_init)
    config = with_latent_reg(config, views)
    lam = config.latent_reg
    if kernel_field is None and estimates_field(config, radii):
        kernel_field = estimate_fit_field(views, radii, config, field_prior, report, stages)
    cell_kernels, kernels, config = with_kernel_field(kernel_field, views, radii, kernels, config)

    # Stage 1: closed-form latent map on the fit channel.
    solver = _layer_solver(views, kernels, cell_kernels, lam)
    latent = solver.solve()  # (L, H, W)
    report("stage 1", 1, 1, None)
    stages.append(StageReport("stage 1 latent map", time.perf_counter() - t0, 1, None))

    # Stage 2: G_D.
    t0 = time.perf_counter()
    net, alphas, weights, losses = fit_defocus_map(views, latent, kernels if cell_kernels is None else cell_kernels, radii,
                                                   config, gd_init=gd_init, progress=report)
    stages.append(StageReport("stage 2 defocus map", time.perf_counter() - t0, config.stage2_iterations, losses[-1] if losses else None, thin_curve(losses)))

    patch_kernels = cell_kernels
    if config.stage3_iterations > 0:
        from .stage3 import fit_patch_kernels

        t0 = time.perf_counter()
        patch_kernels, latent, losses = fit_patch_kernels(views, latent, weights, kernels, radii, config, progress=report)
        stages.append(StageReport("stage 3 kernels", time.perf_counter() - t0, config.stage3_iterations, losses[-1] if losses else None, thin_curve(losses)))

    # Every channel: its own latent map with the fitted kernels, then the final TV deconvolution
    # of its composite with the fitted weights (edgedp.fit.deconvolution).
    t0 = time.perf_counter()
    config = with_tv_weight(config, views, with_field=kernel_field is not None)
    stage1_solver = solver if patch_kernels is None or kernel_field is not None else None  # Stage 1's kernels still
    latents = restore_channels(left, right, views, latent, weights, kernels, patch_kernels, stage1_solver, config, report)
    allinfocus = (latents * weights[None]).sum(1)
    if config.deconvolution.iterations > 0:
        stages.append(StageReport("stage 4 deconvolution", time.perf_counter() - t0, config.deconvolution.iterations, None))
    defocus = (weights * radii[:, None, None].to(weights)).sum(0)
    return fit_result(
        allinfocus=allinfocus, defocus=defocus, weights=weights, alphas=alphas, latent=latents, radii=radii,
        kernels=kernels, patch_kernels=patch_kernels, net=net, config=config, stages=stages, disparity=est,
        kernel_field=None if kernel_field is None else field_summary(kernel_field, config) | (
            {"prior": "profile" if field_prior is not None else None} if kernel_field.source == "estimated" else {}),
    )


def fit_layers(views: Tensor, config: FitConfig) -> tuple[DisparityEstimate, FitConfig, Tensor, Tensor]:
    """The layers of a fit of ``views`` (2, H, W): the DP disparity estimate, the config with the
    focus, ``max_radius`` and ``layers`` it decides (:func:`layer_radii`) filled in, the signed
    radii (L,) and the parametric kernels (2, L, K, K) on the views' device."""
    est = estimate_disparity(views[0], views[1])
    focus, radii = layer_radii(config, est.low, est.high, est.side)
    config = dataclasses.replace(config, focus=focus, max_radius=float(radii.abs().max()), layers=int(radii.numel()))
    kernels = kernel_pyramid(radii, config.kernel_model, config.butterworth, device=views.device)
    return est, config, radii, kernels


def with_latent_reg(config: FitConfig, views: Tensor) -> FitConfig:
    """``config`` with Stage 1's ``latent_reg`` filled in from the noise level of ``views``
    (:func:`edgedp.physics.noise.default_latent_reg`) unless given."""
    lam = config.latent_reg if config.latent_reg is not None else default_latent_reg(views)
    return dataclasses.replace(config, latent_reg=lam)


def with_tv_weight(config: FitConfig, views: Tensor, *, with_field: bool = False) -> FitConfig:
    """``config`` with the final deconvolution's TV weight filled in from ``views`` and the
    filled-in ``latent_reg`` (:func:`edgedp.fit.deconvolution.default_tv_weight`) unless given;
    ``with_field`` (a fit with a kernel field): ``deconvolution.field_iterations`` steps, where
    given, instead of ``iterations``."""
    deconv = config.deconvolution
    if with_field and deconv.field_iterations is not None:
        deconv = dataclasses.replace(deconv, iterations=deconv.field_iterations)
        config = dataclasses.replace(config, deconvolution=deconv)
    if deconv.tv_weight is None:
        deconv = dataclasses.replace(deconv, tv_weight=default_tv_weight(views, config.latent_reg))
        config = dataclasses.replace(config, deconvolution=deconv)
    return config


def estimate_fit_field(views: Tensor, radii: Tensor, config: FitConfig, field_prior: FieldEvidence | None,
                       report: ProgressCallback, stages: list[StageReport]) -> KernelField:
    """The capture's own kernel field (:func:`edgedp.fit.kernel_estimation.estimate_kernel_field`
    with ``config.kernel_estimation``, the profile's ``field_prior`` added), progress as the stage
    ``kernel field``; appends its StageReport to ``stages``."""
    t1 = time.perf_counter()
    tick = lambda step, total: report("kernel field", step, total, None)  # noqa: E731
    field = estimate_kernel_field(
        views, radii, field_disparity_per_radius(config), config.kernel_estimation,
        model=config.kernel_model, params=config.butterworth, prior=field_prior, progress=tick,
    ).field
    stages.append(StageReport("kernel field estimation", time.perf_counter() - t1, len(config.kernel_estimation.candidates), None))
    return field


def with_kernel_field(field: KernelField | None, views: Tensor, radii: Tensor, kernels: Tensor,
                      config: FitConfig) -> tuple[Tensor | None, Tensor, FitConfig]:
    """``(cell_kernels, kernels, config)`` of a fit with ``field``: its per-cell layer kernels
    (:func:`field_kernels`, at least as large as the parametric ``kernels``), their mean over the
    cells and the config with the field's grid as ``patches``; without a field ``(None, kernels,
    config)``."""
    if field is None:
        return None, kernels, config
    cell_kernels = field_kernels(field, radii, config, int(kernels.shape[-1])).to(views)
    return cell_kernels, cell_kernels.mean(dim=(0, 1)), dataclasses.replace(config, patches=field.grid)


def restore_channels(left: Tensor, right: Tensor, views: Tensor, latent: Tensor, weights: Tensor, kernels: Tensor,
                     patch_kernels: Tensor | None, stage1_solver, config: FitConfig, report: ProgressCallback) -> Tensor:
    """The deconvolved latent maps (C, L, H, W) of every channel of the pair ``left``, ``right``
    (C, H, W): each channel's own Stage 1 with the fitted kernels (``patch_kernels`` when given),
    then the final TV deconvolution (:func:`edgedp.fit.deconvolution.deconvolve_layers`) of its
    composite with the fitted ``weights`` (L, H, W).  A single-channel pair reuses the fit
    channel's ``views`` and ``latent`` (Stage 1's or Stage 3's), and ``stage1_solver`` when
    given (the kernels did not change since Stage 1)."""
    lam, deconv = config.latent_reg, config.deconvolution
    channels = left.shape[0]
    steps = deconv.iterations * channels

    def channel_result(c: int) -> Tensor:
        if channels == 1:  # the fit channel itself: Stage 1's solver and latent map (or Stage 3's)
            channel_views, channel_latent = views, latent
        else:
            channel_views, channel_latent = torch.stack([left[c], right[c]]), None
        if channels == 1 and stage1_solver is not None:
            channel_solver = stage1_solver
        else:
            channel_solver = _layer_solver(channel_views, kernels, patch_kernels, lam)
        if channel_latent is None:
            channel_latent = channel_solver.solve()
        tick = lambda step, total: report("deconvolution", c * deconv.iterations + step, steps, None)  # noqa: E731
        return deconvolve_layers(channel_solver, channel_latent, weights, lam, float(deconv.tv_weight), deconv, progress=tick)

    return torch.stack([channel_result(c) for c in range(channels)])


def fit_result(*, allinfocus: Tensor, defocus: Tensor, weights, alphas, latent, radii: Tensor, kernels: Tensor,
               patch_kernels: Tensor | None, net: DefocusNet, config: FitConfig, stages: list[StageReport],
               disparity: DisparityEstimate, tiling: dict | None = None, kernel_field: dict | None = None) -> FitResult:
    """The :class:`FitResult` of a fit (whole frame or tiled): tensors moved to the CPU (a tiled
    fit's disk arrays stay as they are), G_D's state and how to rebuild it at ``config.gd_scale``,
    the focus ``config`` decided and the disparity summary (low, median, high, side)."""

    def cpu(x):
        return x.cpu() if isinstance(x, Tensor) else x

    return FitResult(
        allinfocus=allinfocus.cpu(),
        defocus=defocus.cpu(),
        weights=cpu(weights),
        alphas=cpu(alphas),
        latent=cpu(latent),
        radii=radii.cpu().float(),
        kernels=kernels.cpu(),
        patch_kernels=None if patch_kernels is None else patch_kernels.cpu(),
        gd_state={k: v.detach().cpu() for k, v in net.state_dict().items()},
        gd_config=net.config() | {"input_scale": config.gd_scale},
        focus=config.focus,
        config=config,
        stages=stages,
        disparity={"low": disparity.low, "median": disparity.median, "high": disparity.high, "side": disparity.side},
        tiling=tiling,
        kernel_field=kernel_field,
    )


def fit_channel(image: Tensor, channel: str | int = "luminance") -> Tensor:
    """The channel a fit runs on: (C, H, W) -> (H, W): the luminance of linear RGB (or channel 0
    of a single-channel image), or the given channel index.

    Example:
        >>> rgb = torch.ones(3, 4, 5)
        >>> round(float(fit_channel(rgb)[0, 0]), 4), float(fit_channel(rgb * torch.arange(3.)[:, None, None], 1)[0, 0])
        (1.0, 1.0)
    """
    if channel != "luminance":
        index = int(channel)
        if not 0 <= index < image.shape[0]:
            raise InputError(f"channel {index} does not exist in a {image.shape[0]}-channel image")
        return image[index]
    if image.shape[0] == 3:
        w = torch.tensor(LUMINANCE, dtype=image.dtype, device=image.device)
        return (image * w[:, None, None]).sum(0)
    return image[0]


def disparity_per_radius(model: str, params: ButterworthParams) -> float:
    """DP disparity (px) per px of blur radius of the layer kernels (0.645 for the default
    Butterworth model, 0.5 for the disk): maps a measured disparity to a blur radius.

    Example:
        >>> round(disparity_per_radius('butterworth', ButterworthParams()), 3), round(disparity_per_radius('disk', ButterworthParams()), 3)
        (0.645, 0.5)
    """
    radius = 16.0
    pair = kernel_pyramid([radius], model, params, dtype=torch.float64)[:, 0]
    return float(kernel_disparity(pair)) / radius


def layer_radii(config: FitConfig, low: float, high: float, side: str) -> tuple[str, Tensor]:
    """Decide the focus side and the layers' signed radii (L,) from the disparity range.

    ``auto``: :func:`edgedp.conventions.focus_for_side`: ``both`` when the disparity has both
    signs or only negative ones (content in front of the focal plane), else ``behind``.  R = max |disparity| / disparity_per_radius, rounded up,
    clamped to [2, 40] px (8 px when the disparity is unknown, e.g. a textureless image);
    ``config.radius_scale`` multiplies the radius per px of disparity.

    Example:
        >>> focus, radii = layer_radii(FitConfig(), -1.0, 3.2, 'behind')
        >>> focus, radii.tolist()
        ('behind', [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
        >>> layer_radii(FitConfig(max_radius=2.0), 0.0, 0.0, 'in_front')[1].tolist()
        [-2.0, -1.0, 0.0, 1.0, 2.0]
    """
    focus = config.focus
    if focus == "auto":
        focus = focus_for_side(side)
    if config.max_radius is not None:
        radius = float(config.max_radius)
    else:
        extent = max(abs(low), abs(high)) if focus == BOTH else high
        if not math.isfinite(extent):
            radius = 8.0
        else:
            nominal = extent / disparity_per_radius(config.kernel_model, config.butterworth)
            radius = float(min(max(math.ceil(nominal * config.radius_scale), 2), 40))
    if focus == BOTH:
        total = config.layers if config.layers is not None else 2 * int(math.ceil(radius)) + 1
        radii = both_radii(radius, max((total - 1) // 2, 1))
    else:
        count = config.layers if config.layers is not None else int(math.ceil(radius)) + 1
        radii = behind_radii(radius, max(count, 2))
    return focus, radii


def estimates_field(config: FitConfig, radii: Tensor) -> bool:
    """Whether a fit estimates its kernel field (:attr:`FitConfig.kernel_estimation`): asked
    for, no Stage 3 (which learns its own kernels) and some layer with blur."""
    return config.kernel_estimation is not None and config.stage3_iterations == 0 and float(radii.abs().max()) > 0


def field_disparity_per_radius(config: FitConfig) -> float:
    """DP disparity (px) per px of layer radius that a kernel field's layers are given in a fit:
    ``disparity_per_radius(model) / radius_scale``.  :func:`layer_radii` maps a measured disparity
    ``d`` to the radius ``d / disparity_per_radius * radius_scale``, so dividing here makes the
    field's layer of that radius explain exactly ``d``: the layers span the measured disparity
    whatever ``radius_scale`` (which for the parametric model also widens its kernels; a field
    brings its own width per disparity).

    Example:
        >>> round(field_disparity_per_radius(FitConfig(radius_scale=2.0)), 4)
        0.3223
    """
    return disparity_per_radius(config.kernel_model, config.butterworth) / float(config.radius_scale)


def field_kernels(field: KernelField, radii: Tensor, config: FitConfig, size: int) -> Tensor:
    """The per-cell layer kernels ``(Pr, Pc, 2, L, K, K)`` a fit uses for ``field``:
    :func:`edgedp.physics.kernel_field.field_layer_kernels` at :func:`field_disparity_per_radius`,
    zero-padded to at least ``size`` (the parametric pyramid's K), larger when the field's kernels
    need it (their size per disparity is their own).

    Example:
        >>> from edgedp.physics.kernel_field import uniform_field
        >>> from edgedp.physics.kernels import dp_kernel_pair
        >>> pk = field_kernels(uniform_field(dp_kernel_pair(4.0), (2, 2)), behind_radii(3, 4), FitConfig(), 7)
        >>> tuple(pk.shape)
        (2, 2, 2, 4, 11, 11)
    """
    pk = field_layer_kernels(field, radii, field_disparity_per_radius(config))
    extra = (int(size) - pk.shape[-1]) // 2
    if extra > 0:
        pk = torch.nn.functional.pad(pk, (extra, extra, extra, extra))
    return pk.contiguous()


def field_summary(field: KernelField, config: FitConfig) -> dict:
    """What report.json and the bundle record of a fit's kernel field: source, grid, size of the
    stored pairs, the disparity per px of radius its layers were given, and the range of the cells'
    disparities and spread ratios."""
    disparity = field.disparity
    ratio = spread_ratio(field)
    return {
        "source": field.source,
        "grid": list(field.grid),
        "size": field.size,
        "disparity_per_radius": field_disparity_per_radius(config),
        "cell_disparity_px": [float(disparity.min()), float(disparity.max())],
        "spread_ratio": [float(ratio.min()), float(ratio.max())],
    }


def _layer_solver(views: Tensor, kernels: Tensor, patch_kernels: Tensor | None, lam: float):
    """Stage 1 of ``views`` with the uniform kernels or the patch kernels (Stage 3's, a field's):
    with patch kernels one solve per group of cells (:class:`~edgedp.fit.stage3.GroupedLatentSolver`)."""
    if patch_kernels is None:
        return LatentSolver(views, kernels, lam)
    from .stage3 import FIELD_GROUPS, GroupedLatentSolver

    return GroupedLatentSolver(views, patch_kernels, lam, max_groups=FIELD_GROUPS)


def thin_curve(values: list[float], keep: int = 200) -> list[float]:
    """At most ``keep`` + 1 evenly spaced values of a loss curve (and its last), for reports."""
    if len(values) <= keep:
        return list(values)
    step = len(values) / keep
    return [values[int(i * step)] for i in range(keep)] + [values[-1]]
