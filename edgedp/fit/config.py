"""A fit's settings and results: :class:`FitConfig` (``FitConfig()`` is the ``default`` preset of
:mod:`edgedp.fit.options`), :class:`StageReport`, :class:`FitResult` and the progress callback.

Conventions: CONVENTIONS.md (views left then right, signed radius > 0 behind the focal plane).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from torch import Tensor

from ..conventions import fit_focus
from ..physics.kernels import ButterworthParams
from .deconvolution import DeconvolutionConfig
from .kernel_estimation import FieldEstimationConfig


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
            (:mod:`edgedp.fit.tiling`).
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
        kernel_estimation: the capture's own asymmetric kernel field, estimated from its DP pair
            (:mod:`edgedp.fit.kernel_estimation`: a pupil tilt per cell, chosen by the latent-free
            cross-convolution residual) and used by every stage instead of the mirror-symmetric
            parametric pair; ``None`` keeps the parametric pair.  Not estimated when a field is
            given (``--kernels``, a profile's), with Stage 3 (which learns its own kernels), or in
            a tiled fit (a ``warning:`` line says so).
        deconvolution: the final TV deconvolution of the all-in-focus image
            (:mod:`edgedp.fit.deconvolution`; ``iterations=0`` keeps Stage 1's composite); its
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
    stage2_iterations: int = 60  # the default preset (edgedp.fit.options.presets)
    stage3_iterations: int = 0
    lr: float = 2e-3
    gd_train: Literal["all", "head"] = "all"
    tv_weight: float = 1e-4
    smooth_weight: float = 1e-3
    prior_weight: float = 0.1
    prior_window: int = 15
    fuse_window: int = 15
    patches: tuple[int, int] = (6, 8)
    kernel_estimation: FieldEstimationConfig | None = field(default_factory=FieldEstimationConfig)
    deconvolution: DeconvolutionConfig = field(default_factory=DeconvolutionConfig)
    seed: int = 0
    device: str = "cpu"
    channel: str | int = "luminance"

    def __post_init__(self) -> None:
        # Bundles and callers from before edgedp.conventions say "front" for "behind".
        object.__setattr__(self, "focus", fit_focus(self.focus))


@dataclass(frozen=True)
class CaptureInfo:
    """One capture a device was tuned on (no ground truth; :func:`edgedp.fit.device_tuning.tune_device`, stored in
    a device profile): its path, size, DP disparity range, the seconds and last loss of its G_D fit."""

    path: str | None
    height: int
    width: int
    disparity_low: float
    disparity_high: float
    seconds: float | None = None
    loss: float | None = None


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
        patch_kernels: (Pr, Pc, 2, L, K, K) stage 3 kernels, or a kernel field's layer kernels
            (``kernels`` then their mean over the cells), or None.
        gd_state: G_D's state dict; gd_config: how to rebuild G_D (:func:`networks.build_gd`).
        focus: ``behind`` or ``both`` (what ``auto`` decided; :mod:`edgedp.conventions`).
        config: the FitConfig used (with data-derived fields filled in).
        stages: per-stage reports.
        disparity: the DP disparity estimate summary (low, median, high, side).
        tiling: how :func:`edgedp.fit.tiling.fit_within_budget` ran the fit (budget, tiles, margin,
            G_D scale; None for a plain :func:`fit_scene`).  A tiled fit too large for its
            budget keeps ``latent``, ``weights`` and ``alphas`` on disk, as float16
            :class:`edgedp.fit.tiling.DiskArray` (``numpy.asarray`` reads one).
        kernel_field: the kernel field the fit used (:func:`edgedp.fit.pipeline.field_summary`:
            source, grid, size, ...), None for the parametric kernels.
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
    kernel_field: dict | None = None
