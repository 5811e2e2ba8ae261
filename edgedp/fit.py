"""Zero-shot fit of one DP capture: the three stages of METHOD.md.

Stage 1 (:mod:`edgedp.latent`): per-layer latent map in closed form (Fourier-domain least squares).
Stage 2: the defocus CNN G_D (:mod:`edgedp.networks`) predicts MPI alphas; with the latent map
fixed, the re-rendered DP pair is ``y_v = sum_i d_i * B_i^v`` with ``B_i^v = x_i conv f_i^v``
precomputed once, so each iteration costs the CNN plus an element-wise sum.
Stage 3 (:mod:`edgedp.kernel_fit`): scene-specific non-uniform kernels from generator CNNs.

Conventions: CONVENTIONS.md (views left then right, signed radius > 0 behind the focal plane).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
from torch import Tensor

from .conventions import BOTH, fit_focus, focus_for_side
from .disparity import estimate_disparity
from .errors import InputError
from .kernels import ButterworthParams, both_radii, front_radii, kernel_disparity, kernel_pyramid
from .deconvolution import DeconvolutionConfig, deconvolve_layers, default_tv_weight
from .latent import LatentSolver, default_latent_reg
from .networks import DefocusNet, alphas_from_logits, gd_input, upsample_logits
from .physics import blur_stack_fft, over_weights

LUMINANCE = (0.2126, 0.7152, 0.0722)
"""Rec. 709 weights of linear RGB: the channel an RGB fit runs on."""

STAGE2_BLOCK = 4
"""Pixels per side of the blocks over which stage 2 takes the compositing weights as constant
(the default of :attr:`FitConfig.stage2_block`)."""

ProgressCallback = Callable[[str, int, int, Optional[float]], None]
"""``progress(stage, step, total, loss)``: called as a stage advances (step 1..total)."""


@dataclass(frozen=True)
class FitConfig:
    """Settings of a fit; ``None`` means "derive from the data" (documented per field).

    Attributes:
        focus: (:mod:`edgedp.conventions`) ``auto`` decides from the DP disparity (blur in front
            of the focal plane present -> ``both``), ``behind`` (all blur behind the focal plane,
            r > 0: radii 0..R) or ``both`` (radii -R..R).  The old name ``front`` (= ``behind``)
            is accepted.
        max_radius: largest blur radius R in px; ``None``: from the disparity estimate,
            ``R = high_disparity / disparity_per_radius`` of the kernel model, so the layer range
            follows the physics of the capture, not a constant.
        layers: number of layers (behind: N + 1, radii spaced evenly in [0, R]; both: 2N + 1 in
            [-R, R]); ``None``: one per pixel of radius (R + 1, or 2R + 1), as in the thesis (18
            layers for 35 x 35 kernels).
        kernel_model, butterworth: parametric DP kernel of stages 1-2 and of stage 3's warm start.
        radius_scale: blur radius per px of *measured* DP disparity relative to the kernel model's
            nominal ``1 / disparity_per_radius`` (1.0 = the model's own; a device profile from
            ``edgedp tune`` sets it, since a DP pair alone cannot separate kernel width from blur).
        latent_reg: weight of the gradient prior of stage 1; ``None``: from the noise level.
        gd_scale: G_D sees the DP pair down-scaled by this factor (its output is 1/8 of its
            input, bilinearly up-sampled to full resolution).
        stage2_block: px per side of the blocks over which stage 2 takes G_D's weights as
            constant (:func:`fit_defocus_map`); a divisor of ``8 * gd_scale``.  A tiled fit of a
            frame too large for the memory budget raises it with ``gd_scale``
            (:mod:`edgedp.tiling`).
        gd_width: channel multiplier of G_D (1.0 = the thesis' Fig. 3.4 widths).
        stage2_iterations, stage3_iterations: optimizer steps (stage 3 off when 0).
        lr: Adam learning rate of stage 2.
        gd_train: which of G_D's weights stage 2 optimizes: ``all``, or ``head`` (the last
            convolution only; the features are computed once, so a step costs a fraction of a full
            one: for a warm start whose features already come from captures of the same device).
        tv_weight: weight of the TV of the defocus image D = sum_i (2 r_i + 1) d_i.
        smooth_weight: weight of the edge-aware smoothness of the all-in-focus image.
        prior_weight: weight of the cross-entropy between G_D's compositing weights and the
            Stage 1 layer posterior ``q_i ~ exp(-e_i / T)`` (``e_i``: re-render error of layer i
            alone, averaged over ``prior_window`` px; ``T``: half the mean best error).  It
            steers G_D quickly to the layers that explain the DP pair; the re-render loss then
            decides.  Loss terms are relative to the mean best single-layer re-render error.
        fuse_window: window (px) of the per-pixel likelihood fused with G_D's weights after
            stage 2 (:func:`fuse_with_likelihood`); 0 keeps G_D's weights as they are.
        patches: (rows, cols) of the stage 3 kernel grid (thesis: 6 x 8).
        deconvolution: the final TV deconvolution of the all-in-focus image
            (:mod:`edgedp.deconvolution`; ``iterations=0`` keeps Stage 1's composite); its
            ``tv_weight`` is filled in from the data.
        seed: seed of every random initialization (same seed, same output).
        device: ``cpu`` or ``cuda``.
        channel: what an RGB fit runs on: ``luminance`` (Rec. 709 weights of linear RGB) or a
            channel index; the fitted defocus map and kernels are applied to every channel.
    """

    focus: Literal["auto", "behind", "both"] = "auto"
    max_radius: float | None = None
    layers: int | None = None
    kernel_model: Literal["butterworth", "disk"] = "butterworth"
    butterworth: ButterworthParams = field(default_factory=ButterworthParams)
    radius_scale: float = 1.0
    latent_reg: float | None = None
    gd_scale: int = 2
    stage2_block: int = STAGE2_BLOCK
    gd_width: float = 0.5
    stage2_iterations: int = 100  # the default preset (edgedp.options.presets)
    stage3_iterations: int = 0
    lr: float = 2e-3
    gd_train: Literal["all", "head"] = "all"
    tv_weight: float = 1e-4
    smooth_weight: float = 1e-3
    prior_weight: float = 0.1
    prior_window: int = 15
    fuse_window: int = 15
    patches: tuple[int, int] = (6, 8)
    deconvolution: DeconvolutionConfig = field(default_factory=DeconvolutionConfig)
    seed: int = 0
    device: str = "cpu"
    channel: str | int = "luminance"

    def __post_init__(self) -> None:
        # Bundles and callers from before edgedp.conventions say "front" for "behind".
        object.__setattr__(self, "focus", fit_focus(self.focus))


@dataclass
class StageReport:
    """What one stage did: name, wall seconds, iterations, final loss, a thinned loss curve."""

    name: str
    seconds: float
    iterations: int
    final_loss: float | None
    losses: list[float] = field(default_factory=list)


@dataclass
class FitResult:
    """Everything a fit produced; tensors on the CPU, float32.

    Attributes:
        allinfocus: (C, H, W) all-in-focus image on the input's scale.
        defocus: (H, W) signed blur radius in px, ``sum_i d_i r_i``.
        weights: (L, H, W) compositing weights d_i (sum to 1 over layers).
        alphas: (L, H, W) MPI alphas (``weights = over_weights(alphas)``, alpha_0 = 1).
        latent: (C, L, H, W) latent map (per layer sharp estimates), per channel; after the final
            deconvolution, so that ``allinfocus == (latent * weights).sum(1)``.
        radii: (L,) signed blur radius of each layer (px).
        kernels: (2, L, K, K) parametric kernels [left, right].
        patch_kernels: (Pr, Pc, 2, L, K, K) stage 3 kernels, or None.
        gd_state: G_D's state dict; gd_config: how to rebuild G_D (:func:`networks.build_gd`).
        focus: ``behind`` or ``both`` (what ``auto`` decided; :mod:`edgedp.conventions`).
        config: the FitConfig used (with data-derived fields filled in).
        stages: per-stage reports.
        disparity: the DP disparity estimate summary (low, median, high, side).
        tiling: how :func:`edgedp.tiling.fit_within_budget` ran the fit (budget, tiles, margin,
            G_D scale; None for a plain :func:`fit_scene`).  A tiled fit too large for its
            budget keeps ``latent``, ``weights`` and ``alphas`` on disk, as float16
            :class:`edgedp.tiling.DiskArray` (``numpy.asarray`` reads one).
    """

    allinfocus: Tensor
    defocus: Tensor
    weights: Tensor
    alphas: Tensor
    latent: Tensor
    radii: Tensor
    kernels: Tensor
    patch_kernels: Tensor | None
    gd_state: dict[str, Tensor]
    gd_config: dict
    focus: str
    config: FitConfig
    stages: list[StageReport]
    disparity: dict
    tiling: dict | None = None


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
    gd_init: dict[str, Tensor] | None = None,
    progress: ProgressCallback | None = None,
) -> FitResult:
    """Fit one DP capture.

    Args:
        left, right: (C, H, W) in [0, 1] (C = 1 or 3; with 3 the fit runs on the luminance and
            the fitted defocus map and kernels are applied to every channel).
        config: settings; data-derived fields (``None``) are filled in the result's config.
        gd_init: G_D weights to start from (warm start); shapes must match.
        progress: optional callback ``(stage, step, total, loss)``.
    """
    left, right, views = fit_inputs(left, right, config)  # views (2, H, W)
    device = views.device
    report = progress or (lambda *args: None)
    stages: list[StageReport] = []

    # Blur range from the DP disparity (physics, not a constant).
    t0 = time.perf_counter()
    est = estimate_disparity(views[0], views[1])
    focus, radii = layer_radii(config, est.low, est.high, est.side)
    config = dataclasses.replace(config, focus=focus, max_radius=float(radii.abs().max()), layers=int(radii.numel()))
    if gd_init is not None:  # fail before the long stages, not after
        load_gd_state(DefocusNet(int(radii.numel()), config.gd_width), gd_init)
    kernels = kernel_pyramid(radii, config.kernel_model, config.butterworth, device=device)
    lam = config.latent_reg if config.latent_reg is not None else default_latent_reg(views)
    config = dataclasses.replace(config, latent_reg=lam)

    # Stage 1: closed-form latent map on the fit channel.
    solver = LatentSolver(views, kernels, lam)
    latent = solver.solve()  # (L, H, W)
    report("stage 1", 1, 1, None)
    stages.append(StageReport("stage 1 latent map", time.perf_counter() - t0, 1, None))

    # Stage 2: G_D.
    t0 = time.perf_counter()
    net, alphas, weights, losses = fit_defocus_map(views, latent, kernels, radii, config, gd_init=gd_init, progress=report)
    stages.append(StageReport("stage 2 defocus map", time.perf_counter() - t0, config.stage2_iterations, losses[-1] if losses else None, thin_curve(losses)))

    patch_kernels = None
    if config.stage3_iterations > 0:
        from .kernel_fit import fit_patch_kernels

        t0 = time.perf_counter()
        patch_kernels, latent, losses = fit_patch_kernels(views, latent, weights, kernels, radii, config, progress=report)
        stages.append(StageReport("stage 3 kernels", time.perf_counter() - t0, config.stage3_iterations, losses[-1] if losses else None, thin_curve(losses)))

    # Every channel: its own latent map with the fitted kernels, then the final TV deconvolution
    # of its composite with the fitted weights (edgedp.deconvolution).
    t0 = time.perf_counter()
    deconv = config.deconvolution
    if deconv.tv_weight is None:
        deconv = dataclasses.replace(deconv, tv_weight=default_tv_weight(views, lam))
        config = dataclasses.replace(config, deconvolution=deconv)
    channels = left.shape[0]
    steps = deconv.iterations * channels

    def channel_result(c: int) -> Tensor:
        if channels == 1:  # the fit channel itself: Stage 1's solver and latent map (or Stage 3's)
            channel_views, channel_latent = views, latent
        else:
            channel_views, channel_latent = torch.stack([left[c], right[c]]), None
        if channels == 1 and patch_kernels is None:
            channel_solver = solver
        else:
            channel_solver = _layer_solver(channel_views, kernels, patch_kernels, lam)
        if channel_latent is None:
            channel_latent = channel_solver.solve()
        tick = lambda step, total: report("deconvolution", c * deconv.iterations + step, steps, None)  # noqa: E731
        return deconvolve_layers(channel_solver, channel_latent, weights, lam, float(deconv.tv_weight), deconv, progress=tick)

    latents = torch.stack([channel_result(c) for c in range(channels)])
    allinfocus = (latents * weights[None]).sum(1)
    if deconv.iterations > 0:
        stages.append(StageReport("stage 4 deconvolution", time.perf_counter() - t0, deconv.iterations, None))
    defocus = (weights * radii[:, None, None].to(weights)).sum(0)
    return FitResult(
        allinfocus=allinfocus.cpu(),
        defocus=defocus.cpu(),
        weights=weights.cpu(),
        alphas=alphas.cpu(),
        latent=latents.cpu(),
        radii=radii.cpu().float(),
        kernels=kernels.cpu(),
        patch_kernels=None if patch_kernels is None else patch_kernels.cpu(),
        gd_state={k: v.detach().cpu() for k, v in net.state_dict().items()},
        gd_config=net.config() | {"input_scale": config.gd_scale},
        focus=focus,
        config=config,
        stages=stages,
        disparity={"low": est.low, "median": est.median, "high": est.high, "side": est.side},
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
        radii = front_radii(radius, max(count, 2))
    return focus, radii


def fit_defocus_map(
    views: Tensor,
    latent: Tensor,
    kernels: Tensor,
    radii: Tensor,
    config: FitConfig,
    *,
    gd_init: dict[str, Tensor] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[DefocusNet, Tensor, Tensor, list[float]]:
    """Stage 2: fit G_D's weights so that ``sum_i d_i (x_i conv f_i^v)`` re-renders the views.

    Loss (Eq. 10 + regularizers), per pixel of the full-resolution image:
    ``sum_v ||y_v - sum_i d_i B_i^v||^2 / (H W)`` (``B_i^v = x_i conv f_i^v``, fixed)
    ``+ smooth_weight * sum_p e(p) ||grad x(p)||^2 / (H W)`` with ``x = sum_i d_i x_i`` and the
    edge-aware weight ``e = exp(-|grad y| / s)`` (small on the input's edges, ``s`` = 3x its mean
    gradient) ``+ tv_weight * TV(D)``, ``D = sum_i (2|r_i| + 1) d_i`` on the block grid.

    Speed: G_D's output is smooth (bilinear up-sampling of a grid 8 * gd_scale px apart), so the
    weights are taken constant over ``block x block`` pixels and both quadratic terms reduce to
    per-block Gram matrices computed once: ``d^T G_b d - 2 c_b^T d + const`` (exact for
    block-constant weights).  An iteration then costs the CNN plus O(L^2) per block instead of
    several passes over (L, H, W) tensors (measured at 1008x1344, 18 layers: 3.5 s -> 0.64 s).

    The steps are :func:`stage2_quadratic_form` (the Gram matrices), :func:`train_defocus_net`
    (the optimization) and :func:`gd_alphas` + :func:`fuse_with_likelihood` (the weights);
    :mod:`edgedp.tiling` runs the same steps tile by tile.

    Returns (G_D, alphas (L, H, W), weights (L, H, W), losses per iteration).
    """
    block = config.stage2_block
    blurred = blur_stack_fft(latent[None], kernels)[0]  # (2, L, H, W): fixed while G_D learns
    form = None
    if config.stage2_iterations > 0:  # a warm start with 0 steps only needs G_D's forward pass and the fusion
        form = stage2_quadratic_form(views, latent, blurred, block, config.smooth_weight)
    net, losses = train_defocus_net(views, form, radii, config, gd_init=gd_init, progress=progress)
    with torch.no_grad():
        alphas = gd_alphas(net, views, config)
        weights = over_weights(alphas)
        if config.fuse_window > 0:
            weights = fuse_with_likelihood(weights, blurred, views, config.fuse_window)
            alphas = alphas_from_weights(weights)
    return net, alphas, weights, losses


def train_defocus_net(
    views: Tensor,
    form: tuple[Tensor, Tensor, Tensor, Tensor] | None,
    radii: Tensor,
    config: FitConfig,
    *,
    gd_init: dict[str, Tensor] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[DefocusNet, list[float]]:
    """Stage 2's optimization (:func:`fit_defocus_map`): build G_D (seeded, or from ``gd_init``)
    and run ``config.stage2_iterations`` Adam steps on the quadratic form ``form`` =
    :func:`stage2_quadratic_form`'s ``(gram, cross, const, layer_error)`` over
    ``config.stage2_block`` px blocks of the (2, H, W) ``views`` (None with 0 iterations).
    Returns (G_D, losses per iteration)."""
    report = progress or (lambda *args: None)
    layers = int(radii.numel())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = DefocusNet(layers, config.gd_width).to(views.device)
    if gd_init is not None:
        load_gd_state(net, gd_init)
    block = config.stage2_block
    inp = gd_input(views[None], config.gd_scale)
    losses: list[float] = []
    total = config.stage2_iterations
    if total > 0:
        if form is None:
            raise ValueError("train_defocus_net needs the quadratic form for stage2_iterations > 0")
        gram, cross, const, layer_error = form
        hb, wb = cross.shape[-2:]
        # Scale of the data term: the mean best single-layer re-render error (per pixel).
        best = layer_error.min(0).values
        scale = float(best.sum()) + 1e-12
        prior = layer_posterior(layer_error, max(1, round(config.prior_window / block)))
        size_weight = (2 * radii.abs() + 1).to(views)[:, None, None]
        if config.gd_train == "head":
            with torch.no_grad():
                features = net.features(inp)
            opt = torch.optim.Adam(net.head.parameters(), lr=config.lr)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        # Cosine decay of the step to a tenth: with a constant rate the loss falls, then climbs
        # back once the weights sit near a minimum (measured on synthetic scenes: 2.1 -> 6.5
        # relative loss between steps 80 and 150, and the image worse than after 10 steps).
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.1 * config.lr)

    def logits() -> Tensor:
        return net.head(features) if config.gd_train == "head" else net(inp)

    for step in range(total):
        opt.zero_grad(set_to_none=True)
        alphas = alphas_from_logits(upsample_logits(logits(), (hb, wb), config.gd_scale, block))
        d = over_weights(alphas)[0]  # (L, hb, wb)
        loss = ((d * torch.einsum("ijhw,jhw->ihw", gram, d)).sum() - 2 * (cross * d).sum() + const) / scale
        if config.tv_weight > 0:
            defocus = (d * size_weight).sum(0)
            loss = loss + config.tv_weight * (defocus.diff(dim=-1).abs().mean() + defocus.diff(dim=-2).abs().mean())
        if config.prior_weight > 0:
            loss = loss - config.prior_weight * (prior * d.clamp_min(1e-8).log()).sum(0).mean()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        report("stage 2", step + 1, total, losses[-1])
    return net, losses


def gd_alphas(net: DefocusNet, views: Tensor, config: FitConfig) -> Tensor:
    """G_D's MPI alphas (L, H, W) at full resolution for views (2, H, W): its logits on the pair
    down-scaled by ``config.gd_scale``, bilinearly up-sampled, the bottom layer opaque
    (``over_weights`` of them are G_D's compositing weights)."""
    h, w = views.shape[-2:]
    return alphas_from_logits(upsample_logits(net(gd_input(views[None], config.gd_scale)), (h, w), config.gd_scale))[0]


FUSE_WEIGHT_FLOOR = 1e-6
"""G_D's weights are clamped to at least this before the product with the likelihood, so the
data can still pick a layer G_D ruled out."""


def fuse_with_likelihood(
    weights: Tensor, blurred: Tensor, views: Tensor, window: int, *, temperature: float | None = None
) -> Tensor:
    """Per-pixel refinement of G_D's weights: ``d_i ~ d_i^GD * q_i`` (normalized over layers)
    with ``q = softmax(-e / T)`` the full-resolution layer likelihood from each layer's
    re-render error ``e_i`` box-averaged over ``window`` px (``T`` half the mean best error).

    G_D's map is smooth at its grid spacing (8 * gd_scale px); the likelihood restores
    pixel-accurate depth edges where the data decides, and defers to G_D where it does not.
    Inputs (L, H, W), (2, L, H, W), (2, H, W); returns (L, H, W).  ``temperature``: ``T`` given
    (a tile of a frame uses the frame's, :func:`posterior_temperature`); None: from these inputs.
    """
    error = rerender_error(blurred, views)  # (L, H, W)
    posterior = layer_posterior(error, window, temperature=temperature) * weights.clamp_min(FUSE_WEIGHT_FLOOR)
    return posterior / posterior.sum(0, keepdim=True)


def alphas_from_weights(weights: Tensor) -> Tensor:
    """Invert the over operator: alphas (L, H, W) whose :func:`over_weights` are ``weights``
    (which sum to 1 over layers): ``a_i = d_i / sum_{j <= i} d_j``, ``a_0 = 1``."""
    below = weights.cumsum(0)
    return (weights / below.clamp_min(1e-12)).clamp(0, 1)


def stage2_quadratic_form(
    views: Tensor,
    latent: Tensor,
    blurred: Tensor,
    block: int,
    smooth_weight: float,
    *,
    grad_scale: float | None = None,
    core: tuple[int, int, int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-block Gram matrices of stage 2's loss for block-constant weights d.

    ``blurred`` (2, L, H, W) is the latent map blurred by each layer's kernels.
    Returns ``gram`` (L, L, hb, wb) = sum over the block's pixels of ``sum_v B_i^v B_j^v +
    smooth_weight * e * grad x_i . grad x_j``, ``cross`` (L, hb, wb) = ``sum_v B_i^v y_v``, the
    scalar ``const = sum_v ||y_v||^2`` and ``layer_error`` (L, hb, wb), each layer's re-render
    error alone; images are zero-padded to whole blocks (padding adds 0).

    A tile of a frame (:mod:`edgedp.tiling`): ``core = (y0, y1, x0, x1)`` is the region of these
    arrays whose blocks are wanted (``y0``, ``x0`` and, unless they end the arrays, ``y1``, ``x1``
    multiples of ``block`` in the frame); the gradients at its last row / column use the pixels
    beyond it.  ``grad_scale``: the frame's mean input-gradient magnitude
    (:func:`input_gradient_magnitude`), which sets the edge weight ``e``; None: these views'.
    """
    h, w = views.shape[-2:]
    y0, y1, x0, x1 = (0, h, 0, w) if core is None else core
    layers = latent.shape[0]
    grad_in = input_gradient_magnitude(views)
    if grad_scale is None:
        grad_scale = grad_in.mean()
    edge = torch.exp(-grad_in / (3 * grad_scale + 1e-12))
    gx = torch.nn.functional.pad(latent.diff(dim=-1), (0, 1))
    gy = torch.nn.functional.pad(latent.diff(dim=-2), (0, 0, 0, 1))
    if core is not None:
        views, blurred, edge = views[..., y0:y1, x0:x1], blurred[..., y0:y1, x0:x1], edge[y0:y1, x0:x1]
        gx, gy = gx[..., y0:y1, x0:x1], gy[..., y0:y1, x0:x1]
        h, w = y1 - y0, x1 - x0
    ph, pw = (-h) % block, (-w) % block

    def pool(x: Tensor) -> Tensor:  # (..., H, W) -> (..., hb, wb) block sums
        x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        lead = x.shape[:-2]
        y = torch.nn.functional.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), block) * (block * block)
        return y.reshape(*lead, *y.shape[-2:])

    hb, wb = (h + ph) // block, (w + pw) // block
    # Every block's Gram matrix is X X^T of its (L, F) feature matrix: the block's pixels of
    # B^L and B^R, and of sqrt(smooth_weight * e) * grad x_i.  One batched matmul per band of
    # block rows (bounded memory) is ~9x faster than L(L+1)/2 full-size products and poolings.
    weight = (smooth_weight * edge).sqrt()
    features = [blurred[0], blurred[1]] + ([gx * weight, gy * weight] if smooth_weight > 0 else [])
    gram = torch.empty(hb, wb, layers, layers, dtype=views.dtype, device=views.device)
    band = max(1, (8 << 20) // max(1, wb * layers * block * block * len(features)))  # ~32 MiB of features
    for r0 in range(0, hb, band):
        r1 = min(hb, r0 + band)
        y0, y1 = r0 * block, min(h, r1 * block)
        parts = []
        for f in features:
            x = torch.nn.functional.pad(f[:, y0:y1], (0, pw, 0, r1 * block - y1))  # (L, rows, Wp)
            x = x.reshape(layers, r1 - r0, block, wb, block).permute(1, 3, 0, 2, 4)
            parts.append(x.reshape((r1 - r0) * wb, layers, block * block))
        feats = torch.cat(parts, dim=2)  # (blocks, L, F)
        gram[r0:r1] = torch.bmm(feats, feats.transpose(1, 2)).reshape(r1 - r0, wb, layers, layers)
    gram = gram.permute(2, 3, 0, 1).contiguous()  # (L, L, hb, wb)
    cross = pool((blurred * views[:, None]).sum(0))
    const = views.square().sum()
    layer_error = pool(rerender_error(blurred, views))  # (L, hb, wb)
    return gram, cross, const, layer_error


def input_gradient_magnitude(views: Tensor) -> Tensor:
    """``|grad y|`` (H, W) of the mean view of (2, H, W) views (forward differences, 0 beyond the
    last row / column): what stage 2's edge-aware smoothness weight is made of."""
    mean_view = views.mean(0)
    gy_in = torch.nn.functional.pad(mean_view.diff(dim=-2), (0, 0, 0, 1))
    gx_in = torch.nn.functional.pad(mean_view.diff(dim=-1), (0, 1))
    return (gx_in.square() + gy_in.square()).sqrt()


def layer_posterior(layer_error: Tensor, window: int, *, temperature: float | None = None) -> Tensor:
    """Soft per-block choice of layer from Stage 1 alone: (L, hb, wb) errors -> (L, hb, wb)
    probabilities ``softmax(-e / T)`` of the box-averaged (``window`` blocks) errors, with ``T``
    half the mean of the best layer's error (a scale-free temperature,
    :func:`posterior_temperature`; or ``temperature`` when given)."""
    e = box_error(layer_error, window)
    if temperature is None:
        temperature = posterior_temperature(float(e.min(0).values.mean()))
    return torch.softmax(-e / temperature, dim=0)


def box_error(layer_error: Tensor, window: int) -> Tensor:
    """(L, h, w) errors box-averaged over ``2 (window // 2) + 1`` px (only the pixels inside the
    image count at its borders); unchanged for ``window <= 1``."""
    if window <= 1:
        return layer_error
    return torch.nn.functional.avg_pool2d(layer_error[None], 2 * (window // 2) + 1, 1, window // 2, count_include_pad=False)[0]


def posterior_temperature(mean_best_error: float) -> float:
    """The likelihood's temperature ``T`` from the mean over the frame of the best layer's
    box-averaged error: half of it (plus 1e-20, so a noise-free scene does not divide by 0)."""
    return 0.5 * float(mean_best_error) + 1e-20


def rerender_error(blurred: Tensor, views: Tensor) -> Tensor:
    """Each layer's re-render error alone, per pixel: ``sum_v (B_i^v - y_v)^2``, (2, L, H, W) and
    (2, H, W) -> (L, H, W)."""
    return (blurred - views[:, None]).square().sum(0)


def load_gd_state(net: DefocusNet, state: dict[str, Tensor]) -> None:
    """Load G_D weights; a missing key or a shape mismatch is a one-line InputError."""
    own = net.state_dict()
    for key, value in own.items():
        if key not in state:
            raise InputError(f"warm start has no G_D parameter {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise InputError(
                f"warm start G_D parameter {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)} "
                f"(other layer count or width?)"
            )
    net.load_state_dict({k: state[k].to(own[k]) for k in own})


def _layer_solver(views: Tensor, kernels: Tensor, patch_kernels: Tensor | None, lam: float):
    """Stage 1 of ``views`` with the uniform kernels or, after Stage 3, the patch kernels."""
    if patch_kernels is None:
        return LatentSolver(views, kernels, lam)
    from .kernel_fit import PatchLatentSolver

    return PatchLatentSolver(views, patch_kernels, lam)


def thin_curve(values: list[float], keep: int = 200) -> list[float]:
    """At most ``keep`` + 1 evenly spaced values of a loss curve (and its last), for reports."""
    if len(values) <= keep:
        return list(values)
    step = len(values) / keep
    return [values[int(i * step)] for i in range(keep)] + [values[-1]]
