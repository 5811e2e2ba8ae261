"""Final deconvolution: the all-in-focus image under a sparse (TV) gradient prior.

Stage 1 (:mod:`edgedp.fit.stage1`) solves each layer with a *Gaussian* gradient prior
``lam ||grad x||^2``.  Where a layer's DP kernels have near-zeros in their spectrum (large
layers: the first zero of a radius-``r`` disk along the vertical frequency axis lies near
``0.6 / r`` cycles/px) that prior damps little: the solve amplifies whatever the views hold at
those frequencies, by up to ``1 / (2 sqrt(lam) |G|)`` (about 12x for r = 17, lam = 0.03), and
the composite shows it as **horizontal streaks** through flat regions and as beads along strong
edges.  A sparse prior removes exactly such low-amplitude, spatially extended patterns while
keeping edges, so the final image is::

    x = argmin_x  sum_i d_i * E_i(x) + lam ||grad x||^2 + tv_weight ||grad x||_1

with ``E_i`` layer i's DP data term and ``d_i`` the fitted compositing weights: the same
piecewise-uniform model as the composite ``sum_i d_i x_i`` of Stage 1, with the isotropic total
variation added.  It is solved by half-quadratic splitting (Geman & Yang; Krishnan & Fergus,
"Fast image deconvolution using hyper-Laplacian priors", NIPS 2009), warm-started at the
composite:

1. ``z = shrink(grad x, tv_weight / (2 beta))`` (isotropic soft threshold, per pixel);
2. every layer with weight anywhere solves ``||y - K_i x||^2 + lam ||grad x||^2 + beta ||grad x
   - z||^2`` in closed form (:meth:`edgedp.physics.fourier.LatentSolver.solve` with the target ``z``), and
   ``x = sum_i d_i x_i``;
3. ``beta *= growth`` (continuation), repeat.

With ``tv_weight = 0`` the iteration stays at the composite (to float rounding).  The weight
follows the same noise model as Stage 1's ``lam``: ``lam = gain sigma^2 / s^2`` is the MAP
weight of a Gaussian gradient prior of variance ``s^2``; a Laplacian prior of the same data's mean
absolute gradient ``b`` has the MAP weight ``gain 2 sigma^2 / b = 2 lam s^2 / b``
(:func:`default_tv_weight`), so no new constant enters.

Conventions: CONVENTIONS.md.  Gradients are forward differences
(:class:`edgedp.physics.operators.FiniteDifference`), ``g[0][r, c] = x[r, c + 1] - x[r, c]``,
``g[1][r, c] = x[r + 1, c] - x[r, c]``, zero in the last column / row (Neumann, the replicated
border of Stage 1's padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from ..physics.operators import FiniteDifference

__all__ = [
    "DeconvolutionConfig",
    "default_tv_weight",
    "deconvolve_layers",
    "shrink_gradient",
    "used_layers",
]


@dataclass(frozen=True)
class DeconvolutionConfig:
    """Settings of the final TV deconvolution.

    Attributes:
        iterations: half-quadratic splitting steps (0: the Stage 1 composite as it is).  Measured on
            the Pixel 4 dev scenes with the parametric pair, 6 steps remove the streaks; each
            costs one Stage 1 solve of the layers in use.
        tv_weight: weight of the isotropic TV; ``None``: :func:`default_tv_weight` of the views
            and Stage 1's ``lam``.
        beta_start: first splitting weight, relative to ``lam`` (the splitting starts weaker than
            the Gaussian prior, so the first step only removes what the TV clearly calls noise).
        beta_growth: factor of the splitting weight per step.
        min_layer_weight: layers whose weight stays below this everywhere keep their Stage 1
            solution (their share of the image is at most this).
        field_iterations: the steps when the fit uses a kernel field (estimated or given) instead
            of ``iterations`` (None: ``iterations``; 0: no TV step with a field).  With the
            capture's own field the latents carry far weaker flat-region streaks (Pixel 4 001:
            streak energy 1.07x the input's before the step, against 1.49x with the parametric
            pair), so the splitting need not run as far: measured on the four dev scenes
            (README "Kernel field: cost"), 3 steps keep the streaks at 0.88-1.05x the input's
            (6 steps: 0.85-1.09x), leave fewer beads (0.78-1.20x against 0.80-1.42x) and score
            +0.02 to +0.13 dB more, each step being a patchwise solve.
    """

    iterations: int = 6
    tv_weight: float | None = None
    beta_start: float = 0.25
    beta_growth: float = 2.0
    min_layer_weight: float = 1e-3
    field_iterations: int | None = 3

    def __post_init__(self) -> None:
        if self.iterations < 0 or (self.field_iterations is not None and self.field_iterations < 0):
            raise ValueError(f"iterations must be >= 0, got {self.iterations} / field_iterations {self.field_iterations}")
        if self.tv_weight is not None and not self.tv_weight >= 0:
            raise ValueError(f"tv_weight must be >= 0, got {self.tv_weight}")
        if not (self.beta_start > 0 and self.beta_growth >= 1):
            raise ValueError("beta_start must be > 0 and beta_growth >= 1")


def shrink_gradient(g: Tensor, threshold: float) -> Tensor:
    """Isotropic soft threshold of a gradient field ``(..., 2, H, W)``: each pixel's 2-vector is
    shortened by ``threshold`` (to zero if shorter): the proximal map of
    ``threshold * sum_p ||g_p||_2``, i.e. ``argmin_z threshold ||z||_2 + ||z - g||^2 / 2``."""
    magnitude = g.square().sum(dim=-3, keepdim=True).sqrt()
    scale = (1 - threshold / magnitude.clamp_min(1e-30)).clamp_min(0)
    return g * scale


def default_tv_weight(views: Tensor, reg: float) -> float:
    """``2 lam s^2 / b`` for views (2, H, W): Stage 1's ``lam`` carried over to a Laplacian
    gradient prior with the views' mean squared (``s^2``) and mean absolute (``b``) gradient
    magnitude (module docstring)."""
    g = FiniteDifference.A(views.mean(0))[..., :-1, :-1]
    magnitude = g.square().sum(0).sqrt()
    b = float(magnitude.mean())
    s2 = float(magnitude.square().mean()) / 2  # per component, as Stage 1's s^2
    return 2.0 * float(reg) * s2 / max(b, 1e-12)


def used_layers(weights: Tensor, config: DeconvolutionConfig = DeconvolutionConfig()) -> list[int]:
    """The layers the deconvolution solves again: those whose weight (L, H, W) reaches
    ``config.min_layer_weight`` somewhere (the others keep their Stage 1 solution)."""
    return [i for i in range(weights.shape[0]) if float(weights[i].max()) >= config.min_layer_weight]


class LayerSolver(Protocol):
    """What :func:`deconvolve_layers` needs of Stage 1: :class:`edgedp.physics.fourier.LatentSolver`,
    :class:`edgedp.fit.stage3.GroupedLatentSolver` (a kernel field) or
    :class:`edgedp.fit.stage3.PatchLatentSolver` (Stage 3's per-patch kernels)."""

    def solve(self, target: Tensor | None = None, target_weight: float = 0.0, layers=None) -> Tensor: ...


def deconvolve_layers(
    solver: LayerSolver,
    latent: Tensor,
    weights: Tensor,
    reg: float,
    tv_weight: float,
    config: DeconvolutionConfig = DeconvolutionConfig(),
    *,
    progress: Callable[[int, int], None] | None = None,
    layers: Sequence[int] | None = None,
) -> Tensor:
    """TV deconvolution of the composite (module docstring), warm-started at ``sum_i d_i x_i``.

    Args:
        solver: Stage 1 of the views (its ``reg`` must be ``reg``).
        latent: (L, H, W) Stage 1 latent map of the same views (the start).
        weights: (L, H, W) compositing weights d_i (sum to 1 over layers).
        reg: Stage 1's ``lam``; the splitting weight starts at ``config.beta_start * reg``.
        tv_weight: weight of the TV (0: returns ``latent`` unchanged).
        progress: optional ``progress(step, total)``.
        layers: the layers that take part (:func:`used_layers`); None: ``used_layers(weights,
            config)``.  A tile of a frame passes the frame's (:mod:`edgedp.fit.tiling`).

    Returns:
        (L, H, W) latent map whose composite ``sum_i d_i x_i`` is the deconvolved image: the layers
        in use hold their last splitting solve, the others their Stage 1 solution.
    """
    if latent.shape != weights.shape or latent.dim() != 3:
        raise ValueError(f"latent {tuple(latent.shape)} and weights {tuple(weights.shape)} must both be (L, H, W)")
    if config.iterations == 0 or tv_weight <= 0:
        return latent
    used = used_layers(weights, config) if layers is None else [int(i) for i in layers]
    latent = latent.clone()
    x = (latent * weights).sum(0)
    beta = config.beta_start * float(reg)
    for step in range(config.iterations):
        z = shrink_gradient(FiniteDifference.A(x), tv_weight / (2 * beta))
        latent[used] = solver.solve(z, beta, used)
        x = (latent * weights).sum(0)
        beta *= config.beta_growth
        if progress is not None:
            progress(step + 1, config.iterations)
    return latent
