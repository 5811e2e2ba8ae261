"""Stage 3: scene-specific non-uniform DP kernels (METHOD.md "Stage 3", thesis Eq. 12).

Generators
----------
For each view and each side of the focal plane that the layer radii cover (two generators for a
``behind`` stack (r >= 0), four when the radii have both signs) a :class:`KernelGenerator` maps a trainable
random input ``Z (P, 4K, 4K)`` (``4K = 8N + 4``, ``P = Pr * Pc`` patches, ``K = 2N + 1``) through
``Conv(c1, s2), Conv(c1, s1), Conv(c2, s2), Conv(c2, s1), Conv(P, s1)`` (3x3, LeakyReLU(0.2)
between) and a spatial softmax to ``P`` kernels ``K x K``: per patch, the kernel of that view at
the side's largest radius ``R_side``.  The thesis' widths are ``c1 = 4P, c2 = 16P``; ``width``
scales them (default 0.125: ``P, 2P``).  Measured on one core for P = 48, K = 35, one Adam step of
one generator costs ~0.35 s at the literal widths (7.4 M parameters), ~0.05 s at 0.25 and about
half that at 0.125; ``groups = P`` convolutions (independent per-patch generators) are as slow as
the literal widths in PyTorch's CPU kernels, so they are not used.  A layer of signed radius
``r_i`` uses ``resize_kernel(G_side(Z), |r_i| / R_side)`` of its side's generators (``r_i > 0``:
``behind`` the focal plane; ``r_i < 0``: ``in_front``; ``r_i = 0``: a delta; :mod:`edgedp.conventions`), exactly like the
parametric :func:`edgedp.physics.kernels.kernel_pyramid`.  Softmax kernels are non-negative and sum to 1
by construction.  Everything is seeded by ``config.seed`` (same seed, same output).

Warm start: the generators (and Z) are first fitted so that every patch outputs the parametric
kernel of its side's largest radius (KL divergence, Adam, cosine schedule).

What the data can teach (gauge)
-------------------------------
From one DP pair only the *relative* blur of the two views is identifiable: per frequency the
ratio ``K_L / K_R``.  A factor common to both views (``k_v -> k_v conv h``: a common sub-pixel
shift, a symmetric extra blur or sharpening) is absorbed by the latent (``x -> x conv h^-1``) at no
cost in the re-render error, and the latent's gradient prior even rewards kernels that blur
*less* (less to deconvolve).  Left alone, stage 3 drifts along these directions: on a synthetic
scene the kernels shrank and shifted by 0.5 px, on a Pixel 4 crop PSNR dropped by 0.15 dB.  The
fit therefore adds :func:`gauge_penalty`, which keeps the two lowest moments of the common
factor, the pair's mean centroid and mean spread (:func:`pair_moments`), at the warm-started
(parametric) kernels' values.  (Pinning the whole common factor, i.e. the spectrum ``K_L K_R`` of
``k_L conv k_R``, was tried first: when the true kernels' common factor differs from the model's,
the best ratio under that constraint is biased, e.g. 2.08 px of disparity instead of the true
2.27 px on a synthetic scene, against 2.21-2.25 px with the moments.)  How blurred a layer is for
a given disparity is thus the parametric model's choice, not stage 3's.

Fit (CPU-time design)
---------------------
The thesis optimizes G_F, Z and the 18-layer latent map jointly by gradient descent on the Eq. 10
loss.  At 1008 x 1344 one patchwise re-render forward + backward costs ~3 s on two cores, so that
would buy ~60 steps in the stage's budget, most of their work spent on 18 full-resolution latent
layers that have a closed form.  Instead:

- **Closed-form latent, kernel-only gradient steps.**  The latent map is solved exactly, per patch
  with the current kernels (:func:`solve_latent_map_patchwise`, the Stage 1 least squares), before
  the first step and every ``latent_every`` steps; in between only G_F and Z take Adam steps on the
  re-render error with the latent and G_D's weights fixed (re-solving every 1, 10, 25 steps or
  never changed the learned disparity by < 0.02 px on a synthetic scene).
- **Reduced working resolution.**  The kernel steps run on the views, weights and latent
  area-down-scaled by an integer ``s`` (auto: the smallest with at most ``working_pixels`` pixels:
  s = 3 at 1008 x 1344); the generators still output full-resolution kernels, resized by
  ``|r_i| / (R_side s)`` (a linear map, gradients flow back).  On a 336 x 448 Pixel 4 crop, s = 1,
  2 and 3 learned about the same kernels (disparity within 0.3 px) and PSNR (within 0.01 dB) at
  0.57, 0.13 and 0.07 s per step (one core).
- The returned latent map is the closed form at full resolution with the final kernels, i.e. what
  :mod:`edgedp.fit.pipeline` also computes for every RGB channel.

Measured (scene 001, protocol PSNR registered / raw; one core on a shared 2-core machine)
-----------------------------------------------------------------------------------------
Full 1008 x 1344, 18 layers, K = 35, 6 x 8 patches, G_D of the lead's stage 2 (30.228 / 29.455):
defaults (60 steps, s = 3) take ~57 s (warm start 11 s, kernel steps 32 s, latent solves 3 + 8 s)
and give 30.331 / 29.513 (+0.10 / +0.06 dB, SSIM +0.001), but the re-render loss oscillates
instead of falling.  Other settings: lr 1e-4 +0.02; lr 2e-4 with gauge 10 / 1 / 0: +0.06 / +0.12 /
-0.02 dB (the loss falls 6 / 17 / 28 %).  On a 336 x 448 crop (2 x 3 patches) every setting stayed
within -0.07..+0.04 dB, and on the synthetic tests the composite lost 0.1-0.35 dB although the
kernels moved toward the true ones.  The re-render loss is a weak guide to deblurring quality
here; the calibrated Pixel 4 kernels (used only for this comparison) would give +0.7 dB on the
crop with the same weights, mostly through their size per unit disparity, which no DP-only fit
can learn (see "gauge").

Loss (reported per step): the Eq. 10 data term ``2 * mean((render - views)^2)`` at the working
resolution, as in Stage 2.  The latent's smoothness term is not used: the latent is not a
gradient variable here, its closed form carries its own gradient prior.

Conventions: CONVENTIONS.md (views [left, right], kernels ``(Pr, Pc, 2, L, K, K)`` true-convolution
PSFs centred at ``K // 2``, signed radius > 0 behind the focal plane).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from edgedp_runtime.instant import group_windows, kernel_groups, patch_windows

from ..conventions import BEHIND, IN_FRONT
from ..physics.kernels import resize_kernel
from ..physics.fourier import LatentSolver, centred_kernel_spectrum, gradient_operator_spectra, gradient_spectrum
from ..physics.noise import default_latent_reg
from ..physics.blur import patch_blend_weights, render_dual_pixel_patchwise
from ..models.kernel_generators import KernelGenerators


__all__ = ["FIELD_GROUPS", "GroupedLatentSolver", "KernelFitSettings", "fit_patch_kernels", "patch_layer_kernels", "PatchLatentSolver", "solve_latent_map_patchwise", "warm_start"]


ProgressCallback = Callable[[str, int, int, Optional[float]], None]


@dataclass(frozen=True)
class KernelFitSettings:
    """Knobs of Stage 3 beyond :class:`edgedp.fit.config.FitConfig` (which gives the iteration count,
    patch grid, seed and latent regularization).

    Attributes:
        scale: working resolution divisor of the kernel steps; ``None``: the smallest integer with
            ``(H / s) (W / s) <= working_pixels``.
        working_pixels: pixel budget of the automatic ``scale`` (160k: s = 3 at 1008 x 1344, s = 1
            for a 336 x 448 crop; on a Pixel 4 crop s = 1, 2 and 3 learned the same kernels, see
            the module docstring).
        width: multiplier of the generators' hidden widths (1.0 = the thesis' 4P, 16P; 0.125 gives
            P, 2P channels: the warm start of P = 48, K = 35 then costs ~12 s on one core instead of
            ~20 s at 0.25 and minutes at 1.0).
        lr: Adam learning rate of the kernel steps (generators and Z).  2e-3 made the first steps
            jump (data loss up 20 % on a Pixel 4 crop); with P = 48 even 5e-4 makes the loss
            oscillate (see the module docstring for what the settings gave).
        latent_every: re-solve the working-resolution latent map (closed form, current kernels)
            every this many kernel steps (0: only once, before the first step).
        warm_iterations: Adam steps of the warm start (fit to the parametric kernel).
        warm_lr: learning rate of the warm start (1e-2 diverges to a delta for K = 35).
        gauge_weight: weight of :func:`gauge_penalty`, relative to the initial data loss
            (0 lets the kernels drift along the directions the data cannot see: on the Pixel 4
            crop that cost 0.15 dB instead of gaining 0.03).
        latent_margin: context (px) around each patch's support when solving its latent window;
            ``None``: ``K + 8`` (see :func:`solve_latent_map_patchwise`).
    """

    scale: int | None = None
    working_pixels: int = 160_000
    width: float = 0.125
    lr: float = 5e-4
    latent_every: int = 20
    warm_iterations: int = 150
    warm_lr: float = 3e-3
    gauge_weight: float = 100.0
    latent_margin: int | None = None


def patch_layer_kernels(
    side_kernels: dict[str, Tensor],
    side_radius: dict[str, float],
    radii: Tensor,
    grid: tuple[int, int],
    size: int,
    scale: float = 1.0,
) -> Tensor:
    """Per-patch layer kernels from the generators' outputs.

    Args:
        side_kernels: ``{side: (2, P, K, K)}`` kernels at radius ``side_radius[side]``.
        radii: (L,) signed layer radii (px); ``r > 0`` uses ``behind``, ``r < 0`` ``in_front``,
            ``r = 0`` is a delta.
        grid: (Pr, Pc), ``Pr * Pc = P`` (row-major).
        size: output kernel size (odd).
        scale: resolution divisor (kernels for images down-scaled by ``scale``).

    Returns:
        ``(Pr, Pc, 2, L, size, size)``, each kernel non-negative, summing to 1; differentiable.
    """
    radii = torch.as_tensor(radii, dtype=torch.float64).detach().cpu().reshape(-1)
    pr, pc = grid
    any_k = next(iter(side_kernels.values()))
    layers = radii.numel()
    out = any_k.new_zeros(2, any_k.shape[1], layers, size, size)
    delta = torch.zeros(size, size, dtype=any_k.dtype, device=any_k.device)
    delta[size // 2, size // 2] = 1
    zero = radii == 0
    out[:, :, zero] = delta
    for side, sign in ((BEHIND, 1.0), (IN_FRONT, -1.0)):
        idx = torch.nonzero(radii * sign > 0).flatten()
        if idx.numel() == 0:
            continue
        if side not in side_kernels:
            raise ValueError(f"radii need {side} kernels, the generators have {sorted(side_kernels)}")
        s = (radii[idx].abs() / (side_radius[side] * scale)).to(any_k)
        k = resize_kernel(side_kernels[side][:, :, None], s, size)  # (2, P, l, size, size)
        out = out.index_copy(2, idx.to(any_k.device), k)
    return out.reshape(2, pr, pc, layers, size, size).permute(1, 2, 0, 3, 4, 5)


def warm_start(
    generators: KernelGenerators,
    targets: dict[str, Tensor],
    iterations: int,
    lr: float,
    *,
    progress: ProgressCallback | None = None,
    loss_kind: str = "kl",
) -> float:
    """Fit the generators (and Z) to output ``targets[side]`` ``(2, K, K)`` for every patch.

    Loss: relative squared error ``sum (k - t)^2 / sum t^2`` over all outputs.  Returns the final
    max absolute error of any kernel entry (for kernels summing to 1).
    """
    report = progress or (lambda *args: None)
    if iterations > 0:
        opt = torch.optim.Adam(generators.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=lr * 0.05)
        for step in range(iterations):
            opt.zero_grad(set_to_none=True)
            out = generators()
            if loss_kind == "kl":
                # KL(t || k): gradient wrt the logits is k - t, well scaled whatever the kernel size.
                loss = sum(
                    (targets[s][:, None] * (torch.log(targets[s][:, None].clamp_min(1e-30)) - torch.log(out[s].clamp_min(1e-30))))
                    .sum(dim=(-1, -2)).mean()
                    for s in out
                )
            else:
                num = sum(((out[s] - targets[s][:, None]) ** 2).sum() for s in out)
                den = sum((targets[s] ** 2).sum() * out[s].shape[1] for s in out)
                loss = num / den
            loss.backward()
            opt.step()
            sched.step()
            report("stage 3 warm start", step + 1, iterations, float(loss.detach()))
    with torch.no_grad():
        out = generators()
        return max(float((out[s] - targets[s][:, None]).abs().max()) for s in out)


def pair_moments(pairs: Tensor) -> tuple[Tensor, Tensor]:
    """Common centroid and mean spread of kernel pairs ``(2, ..., K, K)`` [left, right].

    Returns ``(centroid (..., 2), spread (...))``: the mean of the left and right centroids
    (``(dy, dx)`` px from the centre) and the mean of their second central moments
    ``var_y + var_x`` (px^2).  Both are changed by a factor common to the two views (a common
    shift; a common extra blur or sharpening) and not by the views' relative blur (their
    disparity, a difference of centroids, or one view blurring more than the other)."""
    k = pairs.shape[-1]
    c = torch.arange(k, device=pairs.device, dtype=pairs.dtype) - k // 2
    total = pairs.sum(dim=(-1, -2))
    rows, cols = pairs.sum(dim=-1) / total[..., None], pairs.sum(dim=-2) / total[..., None]
    cy, cx = (rows * c).sum(-1), (cols * c).sum(-1)
    var = (rows * (c - cy[..., None]) ** 2).sum(-1) + (cols * (c - cx[..., None]) ** 2).sum(-1)
    return torch.stack([cy, cx], dim=-1).mean(0), var.mean(0)


def gauge_penalty(side_kernels: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    """How far the generators moved along the directions the data cannot see, mean over patches
    and sides: ``|c - c0|^2 + ((s - s0) / s0)^2`` with ``(c, s)`` = :func:`pair_moments` of the
    learned pairs ``(2, P, K, K)`` and ``(c0, s0)`` those of ``targets[side]`` (``(2, P, K, K)`` or
    ``(2, K, K)``; the fit uses the warm-started kernels, so the penalty starts at exactly 0 and the
    warm start's residual does not pull the first steps).  px^2 for the common centroid: a 0.1 px
    shift costs as much as a 10 % change of the spread.  See the module docstring ("gauge")."""
    terms = []
    for side, kernels in side_kernels.items():
        c, spread = pair_moments(kernels)
        c0, s0 = pair_moments(targets[side])
        terms.append(((c - c0).square().sum(-1) + ((spread - s0) / s0).square()).mean())
    return sum(terms) / len(terms)


class PatchLatentSolver:
    """Closed-form Stage 1 latent map with per-patch kernels, blended seamlessly; the patchwise twin
    of :class:`edgedp.physics.fourier.LatentSolver` (same :meth:`solve` signature, same optional target
    gradient field ``z`` weighted by ``target_weight``).

    Per patch ``p`` the latent is ``x_p = argmin ||y - x conv k_p||^2 + lam ||grad x||^2 (+
    target_weight ||grad x - z||^2)`` (each layer alone, as :func:`edgedp.fit.stage1.solve_latent_map`),
    and the result is ``sum_p w_p x_p`` with the tents of :func:`edgedp.physics.blur.patch_blend_weights`.

    How: solving each patch on a window around its weight's support with the window's edges
    replicated (the obvious way) moves the badly conditioned layers' solution everywhere, since
    the inverse filter of a large DP kernel reaches far: at 1008 x 1344 with a 6 x 8 grid that
    cost 0.08-0.14 dB of PSNR with *equal* kernels.  Instead each window solves for the
    correction to a global solution ``x_0`` (:class:`edgedp.physics.fourier.LatentSolver` with the patches'
    mean kernels): ``A_p d = r`` with ``A_p = K_p^T K_p + (lam + target_weight) G^T G`` and the
    normal-equation residual ``r = K_p^T y + target_weight G^T z - A_p x_0`` computed on the window
    and zeroed within ``K`` px of the window's edges (where the window's padding, not the data,
    speaks), then ``x_p = x_0 + d``.  Equal kernels give ``r = 0`` in the kept area, so the global
    solution exactly (to float rounding); a patch whose kernels differ gets a correction driven by
    its own data, except within ``K`` px of the image borders, where it keeps ``x_0``.

    Args:
        views: (2, H, W) DP pair [left, right].
        patch_kernels: (Pr, Pc, 2, L, K, K).
        lam: weight of the gradient prior (as in :func:`solve_latent_map`).
        margin: context px around each support (>= K so the support's residual is exact);
            default ``K + 8``.
    """

    def __init__(self, views: Tensor, patch_kernels: Tensor, lam: float, *, margin: int | None = None) -> None:
        if views.dim() != 3 or views.shape[0] != 2:
            raise ValueError(f"views must be (2, H, W), got {tuple(views.shape)}")
        if patch_kernels.dim() != 6 or patch_kernels.shape[2] != 2:
            raise ValueError(f"patch_kernels must be (Pr, Pc, 2, L, K, K), got {tuple(patch_kernels.shape)}")
        self.views = views
        self.patch_kernels = patch_kernels.to(views)
        self.lam = float(lam)
        self.layers = int(patch_kernels.shape[3])
        k = int(patch_kernels.shape[-1])
        self.margin = k + 8 if margin is None else int(margin)
        self.base = LatentSolver(views, self.patch_kernels.mean(dim=(0, 1)), lam)

    def solve(self, target: Tensor | None = None, target_weight: float = 0.0, layers=None) -> Tensor:
        """``(L, H, W)`` latent map, or only ``layers`` of it (see :meth:`LatentSolver.solve`)."""
        views, patch_kernels, lam, m = self.views, self.patch_kernels, self.lam, self.margin
        h, w = views.shape[-2:]
        pr, pc, _, _, k, _ = patch_kernels.shape
        index = list(range(self.layers)) if layers is None else list(layers)
        base = self.base.solve(target, target_weight, index)  # (l, H, W)
        if pr * pc == 1:
            return base
        use_target = target is not None and target_weight > 0
        weight = lam + (target_weight if use_target else 0.0)
        band = k  # support radius of K^T K (2 (K // 2)) + 1 for the gradient prior
        pad = k // 2 + 8
        blend = patch_blend_weights((h, w), (pr, pc), device=views.device, dtype=views.dtype)
        out = views.new_zeros(len(index), h, w)
        grids: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}  # per padded shape: |G|^2, Gx, Gy
        for cell in patch_windows(h, w, (pr, pc), m, pad):
            (i, j), (r0, r1, c0, c1), (a0, a1, b0, b1), (hp, wp) = cell.cell, cell.support, cell.window, cell.padded
            hw, ww = a1 - a0, b1 - b0
            if (hp, wp) not in grids:
                g2 = gradient_spectrum((hp, wp), device=views.device, dtype=views.dtype)
                grids[hp, wp] = (g2, *gradient_operator_spectra((hp, wp), device=views.device, dtype=views.dtype))
            g2, gx, gy = grids[hp, wp]
            lrtb = (pad, wp - ww - pad, pad, hp - hw - pad)
            yf = torch.fft.rfft2(F.pad(views[None, :, a0:a1, b0:b1], lrtb, mode="replicate")[0])
            xg = F.pad(base[None, :, a0:a1, b0:b1], lrtb, mode="replicate")[0]
            kf = centred_kernel_spectrum(patch_kernels[i, j][:, index], (hp, wp))  # (2, l, Hp, Wf)
            # |F_L|^2 + |F_R|^2 + weight |G|^2 (real and imaginary parts: no complex abs)
            den = (kf.real.square() + kf.imag.square()).sum(0).add_(g2, alpha=weight)
            rhs = torch.fft.rfft2(xg).mul_(den).neg_()
            rhs += kf[0].conj() * yf[0]
            rhs += kf[1].conj() * yf[1]
            del kf
            if use_target:
                zf = torch.fft.rfft2(F.pad(target[None, :, a0:a1, b0:b1], lrtb)[0])
                rhs += target_weight * (gx.conj() * zf[0] + gy.conj() * zf[1])
            resid = torch.fft.irfft2(rhs, s=(hp, wp))
            # Keep the residual where the window's data decide it: at least ``band`` px inside
            # the window (the replicated margins of y and x_0 are not a solution pair).
            resid[:, : pad + band] = 0
            resid[:, pad + hw - band :] = 0
            resid[:, :, : pad + band] = 0
            resid[:, :, pad + ww - band :] = 0
            d = torch.fft.irfft2(torch.fft.rfft2(resid).div_(den), s=(hp, wp))
            x = xg[:, pad + r0 - a0 : pad + r1 - a0, pad + c0 - b0 : pad + c1 - b0]
            x = x + d[:, pad + r0 - a0 : pad + r1 - a0, pad + c0 - b0 : pad + c1 - b0]
            out[:, r0:r1, c0:c1] += x * blend[i, j, r0:r1, c0:c1]
        return out


#: The most groups of cells :class:`GroupedLatentSolver` solves apart in a fit (the instant path's
#: default too, edgedp.deploy.profile_export.INSTANT_KERNEL_GROUPS).  An estimated field holds a
#: few distinct tilts; a calibrated one (``--kernels``) 48 distinct cells, which 8 groups bound in
#: time and memory (each group's LatentSolver keeps its window's spectra).  Measured on the Pixel 4
#: dev scenes: README "Restoration quality" (the grouped Stage 1).
FIELD_GROUPS = 8


class GroupedLatentSolver:
    """Closed-form Stage 1 latent map with a kernel field, one solve per group of cells with the
    same kernels (the torch twin of :func:`edgedp_runtime.instant.solve_latent_grouped`; same
    :meth:`solve` signature as :class:`PatchLatentSolver`).

    The cells are grouped by identical kernels (:func:`edgedp_runtime.instant.kernel_groups`,
    Ward merging beyond ``max_groups``); each group's Stage 1 (:class:`LatentSolver` with the mean
    of its cells' kernels) runs on the window its cells' tents reach plus ``margin`` px
    (:func:`edgedp_runtime.instant.group_windows`), and the solutions are blended with the tents.

    Args:
        views: (2, H, W) DP pair [left, right].
        patch_kernels: (Pr, Pc, 2, L, K, K).
        lam: weight of the gradient prior.
        margin: context px around each group's support; default ``K + 8``.
        max_groups: most groups (None: every distinct kernel its own group).
    """

    def __init__(self, views: Tensor, patch_kernels: Tensor, lam: float, *, margin: int | None = None,
                 max_groups: int | None = None) -> None:
        if views.dim() != 3 or views.shape[0] != 2:
            raise ValueError(f"views must be (2, H, W), got {tuple(views.shape)}")
        if patch_kernels.dim() != 6 or patch_kernels.shape[2] != 2:
            raise ValueError(f"patch_kernels must be (Pr, Pc, 2, L, K, K), got {tuple(patch_kernels.shape)}")
        self.views = views
        self.layers = int(patch_kernels.shape[3])
        k = int(patch_kernels.shape[-1])
        m = k + 8 if margin is None else int(margin)
        kernels = patch_kernels.to(views)
        labels = kernel_groups(kernels.detach().cpu().numpy(), max_groups)
        self.parts = []
        for grp in group_windows(views.shape[-2], views.shape[-1], labels, m, k // 2 + 8):
            a0, a1, b0, b1 = grp.window
            mean = kernels[torch.from_numpy(labels == grp.group).to(views.device)].mean(dim=0)
            weight = torch.from_numpy(grp.weight).to(views)
            self.parts.append((grp.support, grp.window, weight, LatentSolver(views[:, a0:a1, b0:b1], mean, lam)))

    def solve(self, target: Tensor | None = None, target_weight: float = 0.0, layers=None) -> Tensor:
        """``(L, H, W)`` latent map, or only ``layers`` of it (see :meth:`LatentSolver.solve`)."""
        h, w = self.views.shape[-2:]
        index = list(range(self.layers)) if layers is None else list(layers)
        out = self.views.new_zeros(len(index), h, w)
        for (r0, r1, c0, c1), (a0, a1, b0, b1), weight, solver in self.parts:
            z = None if target is None else target[:, a0:a1, b0:b1]
            x = solver.solve(z, target_weight, index)
            out[:, r0:r1, c0:c1] += weight * x[:, r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
        return out


def solve_latent_map_patchwise(
    views: Tensor, patch_kernels: Tensor, lam: float, *, margin: int | None = None
) -> Tensor:
    """Closed-form Stage 1 latent map with per-patch kernels (:class:`PatchLatentSolver` without a
    target): (2, H, W) views, (Pr, Pc, 2, L, K, K) kernels -> (L, H, W); device/dtype follow
    ``views``."""
    return PatchLatentSolver(views, patch_kernels, lam, margin=margin).solve()


def _downscale(x: Tensor, s: int) -> Tensor:
    """Area down-scaling of (C, H, W) by an integer factor (replicate-padded to a multiple)."""
    if s == 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = (-h) % s, (-w) % s
    if ph or pw:
        x = F.pad(x[None], (0, pw, 0, ph), mode="replicate")[0]
    return F.avg_pool2d(x[None], s)[0]


def working_scale(shape: tuple[int, int], settings: KernelFitSettings) -> int:
    """The working resolution divisor of the kernel steps (see :class:`KernelFitSettings`)."""
    if settings.scale is not None:
        if settings.scale < 1:
            raise ValueError(f"scale must be >= 1, got {settings.scale}")
        return int(settings.scale)
    h, w = shape
    return max(1, math.ceil(math.sqrt(h * w / settings.working_pixels)))


def fit_patch_kernels(
    views: Tensor,
    latent: Tensor,
    weights: Tensor,
    kernels: Tensor,
    radii: Tensor,
    config: Any,
    *,
    progress: ProgressCallback | None = None,
    settings: KernelFitSettings | None = None,
    info: dict | None = None,
) -> tuple[Tensor, Tensor, list[float]]:
    """Stage 3: learn per-patch DP kernels with G_D's weights fixed.

    Args:
        views: (2, H, W) DP pair [left, right] (the fit channel).
        latent: (L, H, W) Stage 1 latent map (not needed by the closed-form alternation: the
            latent is re-solved with the warm-started kernels; kept for the interface).
        weights: (L, H, W) compositing weights d_i of the fitted G_D (fixed).
        kernels: (2, L, K, K) parametric kernels (the warm start's targets are the layers of the
            largest radius on each side).
        radii: (L,) signed layer radii (px).
        config: :class:`edgedp.fit.config.FitConfig` (``stage3_iterations``, ``patches``, ``seed``,
            ``latent_reg``; ``None`` regularization: :func:`default_latent_reg`).
        progress: ``progress(stage, step, total, loss)`` for ``"stage 3 warm start"`` and
            ``"stage 3"``.
        settings: :class:`KernelFitSettings` (default: its defaults).
        info: optional dict filled with diagnostics (scale, warm start residual, loss before and
            after, seconds per phase).

    Returns:
        ``(patch_kernels (Pr, Pc, 2, L, K, K), latent (L, H, W), losses)``: the learned kernels at
        full resolution, the closed-form latent map with them, and the loss per kernel step.
    """
    settings = settings or KernelFitSettings()
    report = progress or (lambda *args: None)
    diag: dict = info if info is not None else {}
    t_start = time.perf_counter()
    radii = checked_stage3_inputs(views, weights, kernels, radii)
    k = int(kernels.shape[-1])
    grid = (int(config.patches[0]), int(config.patches[1]))
    device, dtype = views.device, views.dtype
    lam = float(config.latent_reg) if getattr(config, "latent_reg", None) is not None else default_latent_reg(views)

    sides, side_radius, targets = warm_start_targets(radii, kernels, device=device, dtype=dtype)
    if not sides:  # everything in focus: nothing to learn
        pk = kernels.to(device=device, dtype=dtype)[None, None].expand(*grid, *kernels.shape).clone()
        return pk, solve_latent_map_patchwise(views, pk, lam, margin=settings.latent_margin), []

    gens = KernelGenerators(tuple(sides), side_radius, grid[0] * grid[1], k, width=settings.width, seed=config.seed).to(
        device=device, dtype=dtype
    )
    t0 = time.perf_counter()
    diag["warm_max_abs_error"] = warm_start(gens, targets, settings.warm_iterations, settings.warm_lr, progress=report)
    diag["warm_seconds"] = time.perf_counter() - t0

    problem = WorkingProblem.of(gens, side_radius, radii, grid, views, weights, lam, k, settings)
    diag.update(scale=problem.scale, working_shape=tuple(problem.views.shape[-2:]), working_kernel=problem.kernel_size,
                lam=lam, lam_working=problem.lam)
    losses = train_kernels(problem, int(config.stage3_iterations), settings, report, diag)

    t0 = time.perf_counter()
    with torch.no_grad():
        patch_kernels = problem.layer_kernels(k, 1.0).contiguous()
        latent_full = solve_latent_map_patchwise(views, patch_kernels, lam, margin=settings.latent_margin)
    diag["latent_full_seconds"] = time.perf_counter() - t0
    diag["seconds"] = time.perf_counter() - t_start
    return patch_kernels, latent_full, losses


def checked_stage3_inputs(views: Tensor, weights: Tensor, kernels: Tensor, radii: Tensor) -> Tensor:
    """The radii (L,) as float64 on the CPU, after checking that ``views`` are (2, H, W) and that
    ``weights`` (L, H, W), ``radii`` and ``kernels`` (2, L, K, K) agree (ValueError)."""
    if views.dim() != 3 or views.shape[0] != 2:
        raise ValueError(f"views must be (2, H, W), got {tuple(views.shape)}")
    radii = torch.as_tensor(radii).detach().cpu().double().reshape(-1)
    layers = int(kernels.shape[1])
    if weights.shape != (layers,) + tuple(views.shape[-2:]) or radii.numel() != layers:
        raise ValueError(
            f"weights {tuple(weights.shape)}, radii {tuple(radii.shape)} and kernels {tuple(kernels.shape)} disagree"
        )
    return radii


def warm_start_targets(radii: Tensor, kernels: Tensor, *, device=None, dtype=None) -> tuple[list[str], dict[str, float], dict[str, Tensor]]:
    """The focus sides present in ``radii`` (``behind``, ``in_front``), each side's largest
    |radius| and its parametric kernel pair (2, K, K) of ``kernels`` (2, L, K, K): the targets of
    the warm start.  No side: everything in focus."""
    sides, side_radius, targets = [], {}, {}
    for side, sign in ((BEHIND, 1.0), (IN_FRONT, -1.0)):
        signed = radii * sign
        if (signed > 0).any():
            idx = int(torch.argmax(signed))
            sides.append(side)
            side_radius[side] = float(signed[idx])
            targets[side] = kernels[:, idx].to(device=device, dtype=dtype)
    return sides, side_radius, targets


@dataclass(frozen=True)
class WorkingProblem:
    """Stage 3's kernel steps at the working resolution: the generators and what turns their
    side kernels into per-patch layer kernels, the views (2, h, w) and weights (L, h, w) down-scaled
    by ``scale`` (:func:`working_scale`), Stage 1's regularization ``lam`` there and the kernel
    size there."""

    gens: KernelGenerators
    side_radius: dict[str, float]
    radii: Tensor
    grid: tuple[int, int]
    views: Tensor
    weights: Tensor
    lam: float
    scale: int
    kernel_size: int
    latent_margin: int | None

    @classmethod
    def of(cls, gens, side_radius: dict[str, float], radii: Tensor, grid: tuple[int, int], views: Tensor, weights: Tensor,
           lam: float, k: int, settings: KernelFitSettings) -> "WorkingProblem":
        """The working problem of full-resolution ``views`` (2, H, W), ``weights``, ``lam`` and
        kernel size ``k``."""
        s = working_scale(tuple(views.shape[-2:]), settings)
        views_s = _downscale(views, s)
        weights_s = _downscale(weights, s)
        lam_s = lam * default_latent_reg(views_s) / default_latent_reg(views) if s > 1 else lam
        ks = 2 * math.ceil((k // 2) / s - 1e-6) + 1 if s > 1 else k
        return cls(gens, side_radius, radii, grid, views_s, weights_s, lam_s, s, ks, settings.latent_margin)

    def layer_kernels(self, size: int, scale: float, side_kernels: dict[str, Tensor] | None = None) -> Tensor:
        """Per-patch layer kernels (Pr, Pc, 2, L, size, size) of the generators' side kernels
        (``side_kernels``, default: the generators' current output) at ``scale``."""
        side_kernels = self.gens() if side_kernels is None else side_kernels
        return patch_layer_kernels(side_kernels, self.side_radius, self.radii, self.grid, size, scale)

    def working_kernels(self, side_kernels: dict[str, Tensor] | None = None) -> Tensor:
        """:meth:`layer_kernels` at the working resolution."""
        return self.layer_kernels(self.kernel_size, self.scale, side_kernels)

    def latent(self) -> Tensor:
        """The closed-form latent map (L, h, w) of the working views with the current kernels."""
        return solve_latent_map_patchwise(self.views, self.working_kernels(), self.lam, margin=self.latent_margin)

    def data_loss(self, latent: Tensor, pk: Tensor) -> Tensor:
        """Twice the mean squared re-render error of the working views with the latent map and
        the patch kernels ``pk``."""
        rendered = render_dual_pixel_patchwise(latent[None], self.weights[None], pk)
        return (rendered[0] - self.views).square().mean() * 2


def train_kernels(problem: WorkingProblem, total: int, settings: KernelFitSettings, report: ProgressCallback,
                  diag: dict) -> list[float]:
    """The kernel steps of Stage 3: ``total`` Adam steps on the generators of the re-render loss
    (:meth:`WorkingProblem.data_loss`) plus the gauge penalty towards the warm start's common
    moments, the latent map re-solved every ``settings.latent_every`` steps; ``diag`` gets the
    loss before and after and the seconds.  Returns the data loss per step."""
    gens = problem.gens
    gauge_scale = None
    with torch.no_grad():
        anchor = gens()  # the warm start: the gauge keeps its common moments
    opt = torch.optim.Adam(gens.parameters(), lr=settings.lr)
    losses: list[float] = []
    latent_s = None
    t_latent = 0.0
    t0 = time.perf_counter()
    for step in range(total):
        if step == 0 or (settings.latent_every > 0 and step % settings.latent_every == 0):
            t1 = time.perf_counter()
            with torch.no_grad():
                latent_s = problem.latent()
            t_latent += time.perf_counter() - t1
            if step == 0:
                with torch.no_grad():
                    diag["loss_before"] = float(problem.data_loss(latent_s, problem.working_kernels()))
                    gauge_scale = diag["loss_before"]
        opt.zero_grad(set_to_none=True)
        side_k = gens()
        data = problem.data_loss(latent_s, problem.working_kernels(side_k))
        loss = data
        if settings.gauge_weight > 0:
            loss = loss + settings.gauge_weight * gauge_scale * gauge_penalty(side_k, anchor)
        loss.backward()
        opt.step()
        losses.append(float(data.detach()))
        report("stage 3", step + 1, total, losses[-1])
    diag["kernel_seconds"] = time.perf_counter() - t0 - t_latent
    diag["latent_working_seconds"] = t_latent
    if total > 0:
        with torch.no_grad():
            latent_s = problem.latent()
            diag["loss_after"] = float(problem.data_loss(latent_s, problem.working_kernels()))
    return losses
