"""A fit of any image size within a memory budget: the restoration of :func:`edgedp.fit.pipeline.fit_scene`,
run tile by tile where the whole frame does not fit (issue 11, item 1).

:func:`fit_within_budget` estimates what the whole-frame fit needs (:func:`whole_frame_bytes`);
within the budget it is :func:`~edgedp.fit.pipeline.fit_scene`, unchanged.  Beyond it, the frame is cut
into tiles: cores that partition the frame (aligned to Stage 2's blocks), each processed with a
``margin`` of real neighbouring pixels around it, of which only the core is kept (no blending
needed: every output pixel comes from the one tile whose core holds it, computed with at least
``margin`` px of context; the margin is chosen so that the cut does not show, below).  The
restoration's math is not changed; what changes is where each piece runs:

- **per frame, once** (as the whole-frame fit computes them): the DP disparity and the layer
  radii, Stage 1's ``lam`` (:func:`edgedp.physics.noise.default_latent_reg`), the TV weight
  (:func:`edgedp.fit.deconvolution.default_tv_weight`), Stage 2's edge-weight scale (the frame's
  mean input gradient), the likelihood temperature ``T`` (half the frame's mean best
  box-averaged error: :func:`edgedp.fit.stage2.posterior_temperature`; a tile's own would differ) and
  the deconvolution's layer set (:func:`edgedp.fit.deconvolution.used_layers` of the frame's fused
  weights).  G_D sees the whole frame at its scale: Stage 2's per-block Gram matrices are summed
  tile by tile into the frame's block grid (:func:`edgedp.fit.stage2.stage2_quadratic_form` of each
  core), G_D is trained on them as before (:func:`edgedp.fit.stage2.train_defocus_net`) and its logits
  are computed once for the frame, then up-sampled per tile
  (:func:`edgedp.models.defocus_net.upsample_logits_region`).
- **per tile**: Stage 1 (:class:`edgedp.physics.fourier.LatentSolver` of the tile), the per-pixel
  likelihood fusion (:func:`edgedp.fit.stage2.fuse_with_likelihood` with the frame's ``T``) and the final
  TV deconvolution (:func:`edgedp.fit.deconvolution.deconvolve_layers` with the frame's ``lam``, TV
  weight and layers), for every channel.

Three passes over the tiles: (1) Stage 1, the Gram matrices and the temperature's sum, (2) after
Stage 2, the fused weights' maximum per layer (the deconvolution's layer set), (3) the restoration
and the outputs.  Stage 1 runs in each pass again (it is one FFT solve per layer, a seventh of
the deconvolution's six), rather than keeping (L, H, W) maps of the frame.

Why cores with a margin instead of blending: each tile's result converges to the whole-frame
result away from its border, as the regularized inverse filter of Stage 1 and of the
deconvolution decays; the margin is where it has not yet converged.  Measured on synthetic
scenes (README "Large images"), the tiled result matches the whole-frame one to 45 dB and more
with the default :attr:`TilingConfig.margin_kernels` of the largest kernel, and the difference
image shows no grid.

Stage 2 is bounded too: its Gram matrices (L, L, H/b, W/b) and G_D's activations grow with the
frame, so when they do not fit the budget, G_D's scale ``gd_scale`` and the block ``b`` are raised
together (G_D's grid stays 4 blocks per cell) and recorded in the result's config; with a warm
start whose G_D trains its head only, the block is raised first (G_D keeps the scale it was
trained at).  Stage 3 (learned kernels) needs the whole frame; a tiled fit skips it with a
warning.

Outputs: ``allinfocus`` and ``defocus`` are tensors; ``latent``, ``weights`` and ``alphas`` are
tensors when they fit a quarter of the budget, else float16 :class:`~edgedp.io.diskarray.DiskArray`
files in a scratch folder (what the scene bundle stores anyway, :mod:`edgedp.formats.bundle`), so that
the peak memory does not grow with the image once tiling starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor
from edgedp_runtime.memory import GIB, MemoryBudget, memory_budget

from . import pipeline as fit_module
from .deconvolution import deconvolve_layers
from ..io.diskarray import DiskArray, scratch_folder
from ..errors import InputError
from .config import FitConfig, FitResult, ProgressCallback, StageReport
from .stage2 import (
    alphas_from_weights,
    box_error,
    fuse_with_likelihood,
    input_gradient_magnitude,
    load_gd_state,
    posterior_temperature,
    rerender_error,
    stage2_quadratic_form,
    train_defocus_net,
)
from .pipeline import fit_inputs, fit_layers, fit_result, thin_curve, with_latent_reg, with_tv_weight
from ..physics.kernel_field import KernelField
from ..physics.fourier import LatentSolver
from ..models.defocus_net import DefocusNet, alphas_from_logits, gd_input, upsample_logits_region
from ..physics.blur import blur_stack_fft, fast_size, over_weights


__all__ = [
    "RegionSolver",
    "TiledFrame",
    "deconvolution_layers",
    "note_tiled_fit",
    "restore_tiles",
    "Tile",
    "TilingConfig",
    "TilePlan",
    "fit_within_budget",
    "plan_fit",
    "stage2_bytes",
    "tile_bytes",
    "tile_grid",
    "frame_gradient_scale",
    "periodic_index",
    "tiled_quadratic_form",
    "whole_frame_bytes",
]


@dataclass(frozen=True)
class TilingConfig:
    """How :func:`fit_within_budget` may tile.

    Attributes:
        max_memory: the budget in bytes; None: :func:`edgedp_runtime.memory.default_budget`
            (``min(0.6 x available, 16 GiB)``).
        tile: side (px) of the tiles' cores; given, the fit is tiled whatever the budget (tests,
            comparisons); None: tile only beyond the budget, with the largest cores it allows.
        margin: px of context around each core; None: ``margin_kernels`` times the largest
            kernel size K (at least 16 px), rounded up to Stage 2's block.
        margin_kernels: the margin in kernel sizes (measured, module docstring).
        store: where a tiled fit keeps latent / weights / alphas: ``memory`` (float32 tensors),
            ``disk`` (float16 :class:`~edgedp.io.diskarray.DiskArray`) or ``auto`` (memory when they
            take at most a quarter of the budget).
        scratch: folder for the disk arrays (default: the system's temporary folder).
    """

    max_memory: int | None = None
    tile: int | None = None
    margin: int | None = None
    margin_kernels: float = 8.0
    store: Literal["auto", "memory", "disk"] = "auto"
    scratch: Path | None = None

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile < 16:
            raise ValueError(f"tile must be >= 16 px, got {self.tile}")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.store not in ("auto", "memory", "disk"):
            raise ValueError(f"store must be auto, memory or disk, got {self.store!r}")


@dataclass(frozen=True)
class Tile:
    """One tile: its ``core`` (the output pixels it owns), ``outer`` (core plus margin, clipped
    to the frame) and ``solve`` (core plus margin, not clipped: where it reaches past the frame's
    border, Stage 1 sees what the whole-frame solve sees there, :class:`RegionSolver`); each
    ``(y0, y1, x0, x1)`` in frame pixels."""

    index: int
    core: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]
    solve: tuple[int, int, int, int]

    @property
    def local_core(self) -> tuple[int, int, int, int]:
        """The core in the outer region's coordinates."""
        y0, y1, x0, x1 = self.core
        oy, _, ox, _ = self.outer
        return y0 - oy, y1 - oy, x0 - ox, x1 - ox

    def crop(self, x: Tensor) -> Tensor:
        """``x[..., outer]`` of a frame-sized (..., H, W) tensor."""
        y0, y1, x0, x1 = self.outer
        return x[..., y0:y1, x0:x1]

    def core_of(self, x: Tensor) -> Tensor:
        """The core of an outer-sized (..., h, w) tensor."""
        y0, y1, x0, x1 = self.local_core
        return x[..., y0:y1, x0:x1]


def tile_grid(height: int, width: int, core: int, margin: int, align: int = 1) -> list[Tile]:
    """Tiles whose cores partition an ``height x width`` frame into a grid of cores of at most
    ``core`` px (about equal, boundaries at multiples of ``align``), each with ``margin`` px of
    context (clipped to the frame for ``outer``).  Row-major order."""

    def cuts(n: int) -> list[int]:
        parts = max(1, math.ceil(n / core))
        bounds = [0]
        for k in range(1, parts):
            b = int(round(k * n / parts / align)) * align
            if bounds[-1] < b < n:
                bounds.append(b)
        return bounds + [n]

    rows, cols = cuts(height), cuts(width)
    tiles = []
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            y0, y1, x0, x1 = rows[i], rows[i + 1], cols[j], cols[j + 1]
            solve = (y0 - margin, y1 + margin, x0 - margin, x1 + margin)
            outer = (max(0, solve[0]), min(height, solve[1]), max(0, solve[2]), min(width, solve[3]))
            tiles.append(Tile(len(tiles), (y0, y1, x0, x1), outer, solve))
    return tiles


def periodic_index(start: int, stop: int, size: int, pad: int, period: int, *, device=None) -> Tensor:
    """Frame rows (or columns) seen at positions ``start .. stop - 1`` (which may lie outside
    ``[0, size)``) of Stage 1's padded periodic domain: :class:`edgedp.physics.fourier.LatentSolver` pads a
    frame of ``size`` by edge replication, ``pad`` before it and up to ``period`` (its FFT size)
    after it, and its FFT treats that as periodic; so position ``r`` shows frame index
    ``clamp(((r + pad) mod period) - pad, 0, size - 1)``."""
    r = torch.arange(start, stop, device=device)
    return (torch.remainder(r + pad, period) - pad).clamp(0, size - 1)


class RegionSolver:
    """Stage 1 (:class:`edgedp.physics.fourier.LatentSolver`) of a tile's ``outer`` region as the whole
    frame's solve sees it: the solver runs on the tile's ``solve`` region, whose parts beyond the
    frame's border hold what the frame's replicate-padded periodic FFT domain holds there
    (:func:`periodic_index`: the replicated border, and past the padding the opposite border),
    so that the whole frame's border effects -- the regularized inverse filter reaches far past
    the padding -- are reproduced; results are cropped to ``outer``.  A gradient target on
    ``outer`` is zero elsewhere (the frame's target is zero over its padding; over the opposite
    border's pixels the frame's would not be, the one approximation here besides the margin).

    Same :meth:`solve` as LatentSolver (a :class:`edgedp.fit.deconvolution.LayerSolver`).

    Args:
        views: (2, H, W) frame views (of the channel being solved).
        kernels, reg: as for LatentSolver.
        tile: the tile.
    """

    def __init__(self, views: Tensor, kernels: Tensor, reg: float, tile: Tile) -> None:
        h, w = views.shape[-2:]
        k = kernels.shape[-1]
        pad = k // 2 + 8  # LatentSolver's default padding, and its FFT size: the frame's period
        hp, wp = fast_size(h + 2 * pad), fast_size(w + 2 * pad, even=True)
        sy0, sy1, sx0, sx1 = tile.solve
        rows = periodic_index(sy0, sy1, h, pad, hp, device=views.device)
        cols = periodic_index(sx0, sx1, w, pad, wp, device=views.device)
        region = views.index_select(-2, rows).index_select(-1, cols)
        self.solver = LatentSolver(region, kernels, reg)
        oy0, oy1, ox0, ox1 = tile.outer
        self.crop = (oy0 - sy0, oy1 - sy0, ox0 - sx0, ox1 - sx0)
        self.solve_shape = (sy1 - sy0, sx1 - sx0)

    def solve(self, target: Tensor | None = None, target_weight: float = 0.0, layers=None) -> Tensor:
        y0, y1, x0, x1 = self.crop
        if target is not None and target_weight > 0:
            full = target.new_zeros(target.shape[:-2] + self.solve_shape)
            full[..., y0:y1, x0:x1] = target
            target = full
        return self.solver.solve(target, target_weight, layers)[..., y0:y1, x0:x1]


# ---------------------------------------------------------------------------------------------
# memory model (bytes), measured with tools/bench_memory.py --calibrate


#: The fixed part of a fit's peak (bytes): the Python process with torch and edgedp imported
#: (measured 239 MiB) plus what any fit adds whatever the frame (thread pools, FFT plans, the
#: allocator's arenas, G_D).  Measured (issue 17, ``tools/bench_memory.py --sizes 0.1`` and a
#: 97x129 fit with 11 layers, 21x21 kernels): peak 385 MiB at 97x129, of which the per-pixel terms
#: below are 15 MiB; 430 MiB at 274x366 (model: 452-468).  It was 400 MiB, which with the plan's
#: FILL left nothing of the documented minimum budget (0.5 GiB x 0.8 = 410 MiB) for the frame.
BASE_BYTES = 370 * 2**20
#: Bytes per pixel and layer of the whole-frame fit's peak (Stage 1 spectra, the blurred stack,
#: Stage 2's features, the fusion's and the deconvolution's (L, H, W) temporaries), float32.
#: Measured (1.6 MP synthetic, 6 and 11 layers): 548 and 757 B/px in all; the model gives 599
#: and 873.
WHOLE_FRAME_PER_LAYER = 42.0
#: Bytes per pixel of the whole-frame fit besides the per-layer ones and G_D (views, outputs).
WHOLE_FRAME_PER_PIXEL = 20.0
#: Bytes per pixel and layer of one tile's work (its heaviest pass), per pixel of its solve
#: region padded to the FFT size: measured 45-50 at 11 layers (1.3 and 1.9 MP tiles).
TILE_PER_LAYER = 48.0
#: Bytes per padded pixel of one tile besides the per-layer ones.
TILE_PER_PIXEL = 48.0
#: Bytes per frame pixel that stay for the whole tiled fit: both views of the input as read
#: (4 C each), the two fit-channel views (8), the all-in-focus image (4 C) and the defocus map (4).
RESIDENT_PER_PIXEL_FIXED = 12.0
RESIDENT_PER_PIXEL_CHANNEL = 12.0
#: G_D's training activations per pixel of its input (width 0.5; all of its weights trained):
#: measured 1100-1270 at a 1 MP input; and of its no-grad forward pass.
GD_TRAIN_PER_INPUT_PIXEL = 1200.0
GD_FORWARD_PER_INPUT_PIXEL = 200.0
#: Copies of the Gram matrices alive at once in Stage 2 (the form, einsum's and autograd's).
GRAM_COPIES = 3.0
#: Stage 2's (L, H/b, W/b) tensors alive at once (weights, their up-sampling, over-compositing
#: and autograd's saved tensors), float32.
STAGE2_BLOCK_TENSORS = 24.0
#: Share of the budget the plan fills (the rest absorbs the estimate's error and the allocator).
FILL = 0.8


def whole_frame_bytes(height: int, width: int, channels: int, layers: int, kernel_size: int, gd_scale: int = 2,
                      train: str = "all") -> int:
    """Estimated peak bytes of :func:`~edgedp.fit.pipeline.fit_scene` on a whole frame."""
    pixels = height * width
    pad = _padding_ratio(height, width, kernel_size)
    per_pixel = (WHOLE_FRAME_PER_LAYER * layers * pad + WHOLE_FRAME_PER_PIXEL + 8.0 * max(channels - 1, 0) * layers
                 + 4.0 * GRAM_COPIES * layers * layers / 16)
    per_input = GD_TRAIN_PER_INPUT_PIXEL if train == "all" else GD_FORWARD_PER_INPUT_PIXEL
    return int(BASE_BYTES + per_pixel * pixels + per_input * pixels / (gd_scale * gd_scale))


def tile_bytes(outer_h: int, outer_w: int, channels: int, layers: int, kernel_size: int) -> int:
    """Estimated peak bytes of one tile's work (outer region ``outer_h x outer_w``)."""
    padded = fast_size(outer_h + 2 * (kernel_size // 2 + 8)) * fast_size(outer_w + 2 * (kernel_size // 2 + 8), even=True)
    return int(padded * (TILE_PER_LAYER * layers + TILE_PER_PIXEL) + 8.0 * channels * outer_h * outer_w)


def stage2_bytes(height: int, width: int, layers: int, gd_scale: int, block: int, train: str) -> int:
    """Estimated peak bytes of Stage 2 on the frame's block grid (Gram matrices, G_D)."""
    blocks = math.ceil(height / block) * math.ceil(width / block)
    gd_pixels = math.ceil(height / gd_scale) * math.ceil(width / gd_scale)
    per_input = GD_TRAIN_PER_INPUT_PIXEL if train == "all" else GD_FORWARD_PER_INPUT_PIXEL
    return int(4.0 * blocks * (GRAM_COPIES * layers * layers + STAGE2_BLOCK_TENSORS * layers) + per_input * gd_pixels)


def resident_bytes(height: int, width: int, channels: int, layers: int, store: str) -> int:
    """Bytes a tiled fit keeps for the whole frame: inputs, views, outputs and (``store`` memory)
    the float32 latent / weights / alphas."""
    pixels = height * width
    per_pixel = RESIDENT_PER_PIXEL_FIXED + RESIDENT_PER_PIXEL_CHANNEL * channels
    if store == "memory":
        per_pixel += 4.0 * layers * (channels + 2)
    return int(BASE_BYTES + per_pixel * pixels)


def _padding_ratio(height: int, width: int, kernel_size: int) -> float:
    pad = kernel_size // 2 + 8
    return fast_size(height + 2 * pad) * fast_size(width + 2 * pad, even=True) / max(1, height * width)


@dataclass
class TilePlan:
    """What :func:`plan_fit` decided: whether to tile, the tiles, the store, Stage 2's scale."""

    budget: MemoryBudget
    tiled: bool
    reason: str
    estimate_whole_frame: int
    gd_scale: int
    stage2_block: int
    store: str = "memory"
    core: int = 0
    margin: int = 0
    tiles: list[Tile] = dataclasses.field(default_factory=list)
    estimate_tiled: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    def report(self) -> dict:
        """JSON-ready summary (report.json's ``memory``)."""
        rows = len({t.core[0] for t in self.tiles}) if self.tiles else 0
        out = {
            "budget": self.budget.report(),
            "estimate_whole_frame_gib": round(self.estimate_whole_frame / GIB, 3),
            "tiled": self.tiled,
            "reason": self.reason,
        }
        if self.tiled:
            out.update({
                "tiles": len(self.tiles),
                "grid": [rows, len(self.tiles) // max(rows, 1)],
                "core_px": self.core,
                "margin_px": self.margin,
                "store": self.store,
                "estimate_tiled_gib": round(self.estimate_tiled / GIB, 3),
                "gd_scale": self.gd_scale,
                "stage2_block": self.stage2_block,
                "notes": list(self.notes),
            })
        return out


def _stage2_candidates(config: FitConfig, warm_head: bool) -> list[tuple[int, int]]:
    """(gd_scale, block) in the order a plan tries them: as configured, then coarser."""
    s0, b0 = int(config.gd_scale), int(config.stage2_block)
    out = [(s0, b0)]
    if warm_head:  # keep the scale G_D was trained at as long as a coarser block suffices
        b = b0
        while 2 * b <= 8 * s0:
            b *= 2
            out.append((s0, b))
    s = s0
    while s < 64:
        s *= 2
        out.append((s, max(out[-1][1], b0 * s // s0)))
    return out


def plan_fit(
    height: int,
    width: int,
    channels: int,
    layers: int,
    kernel_size: int,
    config: FitConfig,
    tiling: TilingConfig = TilingConfig(),
    *,
    budget: MemoryBudget | None = None,
    warm_head: bool = False,
) -> TilePlan:
    """Decide how a fit of a ``height x width`` frame runs within the budget.

    Raises:
        InputError: the frame cannot be fitted within the budget even with tiles (one line
            with the budget it would need).
    """
    if budget is None:
        budget = memory_budget(None) if tiling.max_memory is None else MemoryBudget(tiling.max_memory, "given")
    limit = FILL * budget.bytes
    whole = whole_frame_bytes(height, width, channels, layers, kernel_size, int(config.gd_scale),
                              "head" if warm_head else "all")
    plan = TilePlan(budget, False, "", whole, int(config.gd_scale), int(config.stage2_block))
    if tiling.tile is None and whole <= limit:
        plan.reason = f"whole frame: estimated {whole / GIB:.2f} GiB within {FILL:g} x the budget"
        return plan
    plan.tiled = True
    plan.reason = (f"tile size {tiling.tile} px given" if tiling.tile is not None
                   else f"whole frame estimated at {whole / GIB:.2f} GiB, over {FILL:g} x the {budget.gib:.2f} GiB budget")
    store = tiling.store
    if store == "auto":
        in_memory = 4.0 * layers * (channels + 2) * height * width
        store = "memory" if in_memory <= 0.25 * budget.bytes else "disk"
    plan.store = store
    resident = resident_bytes(height, width, channels, layers, store)
    train = "head" if warm_head else "all"
    for scale, block in _stage2_candidates(config, warm_head):
        # Stage 2 alone within the budget, and its Gram matrices (alive through pass 1) leaving
        # most of the room to the tiles.
        grams = 4.0 * layers * layers * math.ceil(height / block) * math.ceil(width / block)
        if resident + stage2_bytes(height, width, layers, scale, block, train) <= limit and grams <= 0.35 * (limit - resident):
            break
    else:
        need = resident + stage2_bytes(height, width, layers, scale, block, train)
        raise InputError(f"a {height}x{width} frame with {layers} layers needs about {need / FILL / GIB:.1f} GiB even when "
                         f"tiled (budget {budget.gib:.2f} GiB): raise --max-memory")
    if (scale, block) != (config.gd_scale, config.stage2_block):
        plan.notes.append(f"G_D scale {config.gd_scale} -> {scale}, stage 2 block {config.stage2_block} -> {block} px "
                          f"(stage 2 of the whole frame within the budget)")
    plan.gd_scale, plan.stage2_block = scale, block
    margin = tiling.margin
    if margin is None:
        margin = max(16, int(math.ceil(tiling.margin_kernels * kernel_size)))
    margin = int(math.ceil(margin / block) * block)
    if tiling.tile is not None:
        core = int(math.ceil(tiling.tile / block) * block)
    else:
        room = limit - resident - grams
        core = block
        while True:  # the largest core whose tile fits
            nxt = core * 2 if core < 256 else core + 256
            side = nxt + 2 * margin
            if nxt >= max(height, width) or tile_bytes(side, side, channels, layers, kernel_size) > room:
                break
            core = nxt
        if core < max(4 * block, margin // 2):
            need = resident + grams + tile_bytes(margin + 2 * margin, 3 * margin, channels, layers, kernel_size)
            raise InputError(f"a {height}x{width} frame with {layers} layers and {kernel_size}x{kernel_size} kernels needs "
                             f"about {need / FILL / GIB:.1f} GiB even when tiled (budget {budget.gib:.2f} GiB): raise --max-memory")
    plan.core, plan.margin = core, margin
    plan.tiles = tile_grid(height, width, core, margin, block)
    side = min(core, max(height, width)) + 2 * margin
    plan.estimate_tiled = int(resident + max(grams + tile_bytes(side, side, channels, layers, kernel_size),
                                             stage2_bytes(height, width, layers, scale, block, train)))
    return plan


# ---------------------------------------------------------------------------------------------
# stores of the per-layer outputs


class _Store:
    """The tiled fit's (C, L, H, W) latent and (L, H, W) weights / alphas: float32 tensors, or
    float16 disk arrays in a scratch folder."""

    def __init__(self, kind: str, channels: int, layers: int, height: int, width: int, scratch: Path | None, device) -> None:
        self.kind = kind
        shapes = {"latent": (channels, layers, height, width), "weights": (layers, height, width), "alphas": (layers, height, width)}
        if kind == "memory":
            self.arrays = {name: torch.empty(shape, dtype=torch.float32, device=device) for name, shape in shapes.items()}
        else:
            folder = scratch_folder(scratch)
            self.arrays = {}
            for n, (name, shape) in enumerate(shapes.items()):
                # the first array owns the folder: it goes when the last of them does (finalizers run in reverse order)
                self.arrays[name] = DiskArray(folder / f"{name}.npy", shape, np.float16, owns_folder=folder if n == 0 else None)

    def put(self, name: str, tile: Tile, value: Tensor, lead: tuple[int, ...] = ()) -> None:
        """The core of ``value`` (outer-sized) into the frame's array ``name`` at ``lead``."""
        y0, y1, x0, x1 = tile.core
        core = tile.core_of(value)
        target = self.arrays[name]
        if self.kind == "memory":
            target[lead][..., y0:y1, x0:x1] = core
        else:
            target.write((y0, y1), (x0, x1), core.detach().to("cpu", torch.float32).numpy(), lead)


# ---------------------------------------------------------------------------------------------
# the tiled passes


def frame_gradient_scale(views: Tensor, rows: int = 512) -> float:
    """The frame's mean input-gradient magnitude (:func:`~edgedp.fit.stage2.input_gradient_magnitude`)
    of views (2, H, W): Stage 2's edge-weight scale, summed in bands of rows (each band with one
    row of the next for its last forward difference) so no full-frame temporaries are made."""
    h = views.shape[-2]
    total = 0.0
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        g = input_gradient_magnitude(views[..., r0 : min(h, r1 + 1), :])[: r1 - r0]
        total += float(g.sum(dtype=torch.float64))
    return total / (views.shape[-2] * views.shape[-1])


def tiled_quadratic_form(
    views: Tensor,
    kernels: Tensor,
    lam: float,
    tiles: list[Tile],
    block: int,
    smooth_weight: float,
    *,
    form: bool = True,
    fuse_window: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor] | None, float | None]:
    """Pass 1: Stage 1 per tile, Stage 2's quadratic form of the frame (as
    :func:`~edgedp.fit.stage2.stage2_quadratic_form` of the whole frame, each core's blocks from its
    tile; ``form``) and the likelihood temperature of the frame (``fuse_window > 0``:
    :func:`~edgedp.fit.stage2.posterior_temperature` of the mean over the frame of the best layer's
    box-averaged re-render error).  views (2, H, W), kernels (2, L, K, K).
    Returns ``((gram, cross, const, layer_error) or None, T or None)``."""
    h, w = views.shape[-2:]
    layers = kernels.shape[1]
    hb, wb = math.ceil(h / block), math.ceil(w / block)
    grad_scale = frame_gradient_scale(views) if form else None
    if form:
        gram = torch.zeros(layers, layers, hb, wb, dtype=views.dtype, device=views.device)
        cross = torch.zeros(layers, hb, wb, dtype=views.dtype, device=views.device)
        layer_error = torch.zeros(layers, hb, wb, dtype=views.dtype, device=views.device)
    const, best_sum = 0.0, 0.0
    for tile in tiles:
        tv = tile.crop(views)
        latent = RegionSolver(views, kernels, lam, tile).solve()
        blurred = blur_stack_fft(latent[None], kernels)[0]
        if form:
            g, c, k, e = stage2_quadratic_form(tv, latent, blurred, block, smooth_weight, grad_scale=grad_scale,
                                               core=tile.local_core)
            by, bx = tile.core[0] // block, tile.core[2] // block
            gram[..., by : by + g.shape[-2], bx : bx + g.shape[-1]] = g
            cross[..., by : by + c.shape[-2], bx : bx + c.shape[-1]] = c
            layer_error[..., by : by + e.shape[-2], bx : bx + e.shape[-1]] = e
            const += float(k)
            del g, c, e
        del latent
        if fuse_window > 0:
            best = box_error(rerender_error(blurred, tv), fuse_window).min(0).values
            best_sum += float(tile.core_of(best).sum(dtype=torch.float64))
            del best
        del blurred
        if progress is not None:
            progress(tile.index)
    temperature = posterior_temperature(best_sum / (h * w)) if fuse_window > 0 else None
    quad = (gram, cross, torch.tensor(const, dtype=views.dtype, device=views.device), layer_error) if form else None
    return quad, temperature


def _gd_logits(net: DefocusNet, views: Tensor, scale: int) -> Tensor:
    with torch.no_grad():
        return net(gd_input(views[None], scale))


def _tile_weights(tile: Tile, views_t: Tensor, blurred: Tensor | None, logits: Tensor, config: FitConfig,
                  temperature: float | None) -> tuple[Tensor, Tensor]:
    """(alphas, weights) (L, h, w) of the tile's outer region: G_D's, fused with the tile's
    likelihood at the frame's temperature (as :func:`~edgedp.fit.stage2.fit_defocus_map`)."""
    y0, y1, x0, x1 = tile.outer
    alphas = alphas_from_logits(upsample_logits_region(logits, config.gd_scale, (y0, y1), (x0, x1)))[0]
    weights = over_weights(alphas)
    if config.fuse_window > 0:
        weights = fuse_with_likelihood(weights, blurred, views_t, config.fuse_window, temperature=temperature)
        alphas = alphas_from_weights(weights)
    return alphas, weights


def fit_within_budget(
    left: Tensor,
    right: Tensor,
    config: FitConfig = FitConfig(),
    tiling: TilingConfig = TilingConfig(),
    *,
    budget: MemoryBudget | None = None,
    kernel_field: KernelField | None = None,
    field_prior=None,
    gd_init: dict[str, Tensor] | None = None,
    progress: ProgressCallback | None = None,
    warn: Callable[[str], None] | None = None,
) -> FitResult:
    """:func:`~edgedp.fit.pipeline.fit_scene` of a frame of any size within a memory budget (module
    docstring): the whole frame when it fits, else tile by tile.

    Args:
        left, right: (C, H, W) in [0, 1], as for :func:`~edgedp.fit.pipeline.fit_scene`.
        config: the fit's settings.
        tiling: budget (unless ``budget`` is given), forced tile size, margin, store.
        budget: the memory budget (:func:`edgedp_runtime.memory.memory_budget`); None: from
            ``tiling.max_memory`` or the default.
        field_prior: a profile's kernel-field evidence for :func:`~edgedp.fit.pipeline.fit_scene`.
        kernel_field: a kernel field for :func:`~edgedp.fit.pipeline.fit_scene`; a fit that
            would be tiled refuses one (one-line InputError naming ``--max-memory``): its
            per-tile cells are not implemented.
        gd_init: G_D weights to start from (warm start).
        progress: ``(stage, step, total, loss)``; a tiled fit adds the stage ``tiles`` (every
            tile of the three passes).
        warn: called with one line per condition worth a ``warning:`` (Stage 3 skipped).

    Returns:
        The :class:`~edgedp.fit.config.FitResult`, its ``tiling`` the plan's report
        (:meth:`TilePlan.report`).
    """
    report = progress or (lambda *args: None)
    t0 = time.perf_counter()
    left, right, views = fit_inputs(left, right, config)
    channels, h, w = (int(s) for s in left.shape)
    requested = config
    est, config, radii, kernels = fit_layers(views, config)
    layers, k = int(radii.numel()), int(kernels.shape[-1])
    warm_head = gd_init is not None and config.gd_train == "head"
    plan = plan_fit(h, w, channels, layers, k, config, tiling, budget=budget, warm_head=warm_head)
    if not plan.tiled:
        del views, kernels
        # through the module, so that what replaces edgedp.fit.pipeline.fit_scene (tests) is what runs
        result = fit_module.fit_scene(left, right, requested, kernel_field=kernel_field, field_prior=field_prior,
                                      gd_init=gd_init, progress=progress)
        result.tiling = plan.report()
        return result
    if kernel_field is not None:
        raise InputError(f"a kernel field (--kernels) needs the whole {h}x{w} frame in memory and this fit would be tiled: "
                         f"--max-memory above {plan.estimate_whole_frame / GIB / 0.8:.1f} GiB runs it")

    if gd_init is not None:  # fail before the long stages, not after
        load_gd_state(DefocusNet(layers, config.gd_width), gd_init)
    note_tiled_fit(config, plan, h, w, warn)
    config = dataclasses.replace(config, gd_scale=plan.gd_scale, stage2_block=plan.stage2_block, stage3_iterations=0)
    config = with_tv_weight(with_latent_reg(config, views), views)
    lam, deconv, tiles = config.latent_reg, config.deconvolution, plan.tiles
    deconvolving = deconv.iterations > 0 and float(deconv.tv_weight) > 0
    total, done = (3 if deconvolving else 2) * len(tiles), itertools.count(1)
    tick = lambda _index: report("tiles", next(done), total, None)  # noqa: E731

    stages: list[StageReport] = []
    form, temperature = tiled_quadratic_form(
        views, kernels, lam, tiles, config.stage2_block, config.smooth_weight, form=config.stage2_iterations > 0,
        fuse_window=config.fuse_window, progress=tick,
    )
    report("stage 1", 1, 1, None)
    stages.append(StageReport("stage 1 latent map", time.perf_counter() - t0, 1, None))

    t0 = time.perf_counter()
    net, losses = train_defocus_net(views, form, radii, config, gd_init=gd_init, progress=report)
    del form
    logits = _gd_logits(net, views, config.gd_scale)
    stages.append(StageReport("stage 2 defocus map", time.perf_counter() - t0, config.stage2_iterations,
                              losses[-1] if losses else None, thin_curve(losses)))

    t0 = time.perf_counter()
    frame = TiledFrame(views, kernels, config, logits, temperature)
    used = deconvolution_layers(frame, tiles, progress=tick) if deconvolving else None  # pass 2
    store = _Store(plan.store, channels, layers, h, w, tiling.scratch, views.device)
    allinfocus, defocus = restore_tiles(left, right, frame, radii, tiles, store, used, progress=tick)  # pass 3
    if deconvolving:
        stages.append(StageReport("stage 4 deconvolution", time.perf_counter() - t0, deconv.iterations, None))
    arrays = store.arrays
    return fit_result(
        allinfocus=allinfocus, defocus=defocus, weights=arrays["weights"], alphas=arrays["alphas"],
        latent=arrays["latent"], radii=radii, kernels=kernels, patch_kernels=None, net=net, config=config,
        stages=stages, disparity=est, tiling=plan.report(),
    )


def note_tiled_fit(config: FitConfig, plan: TilePlan, height: int, width: int,
                   warn: Callable[[str], None] | None = None) -> list[str]:
    """What a tiled fit of a ``height x width`` frame leaves out that ``config`` asks for, one
    line each, appended to ``plan.notes`` and passed to ``warn``: the kernel field's estimation
    and Stage 3, which need the whole frame in memory.  Returns the lines."""
    above = f"--max-memory above {plan.estimate_whole_frame / GIB / 0.8:.1f} GiB"
    notes = []
    if config.kernel_estimation is not None and config.stage3_iterations == 0:
        notes.append(f"the kernel field is not estimated in a tiled fit of {height}x{width}: parametric kernels "
                     f"({above} estimates it)")
    if config.stage3_iterations > 0:
        notes.append(f"stage 3 (learned kernels) needs the whole {height}x{width} frame in memory: skipped in this tiled fit "
                     f"({above} runs it)")
    for message in notes:
        plan.notes.append(message)
        if warn is not None:
            warn(message)
    return notes


@dataclass(frozen=True)
class TiledFrame:
    """What the passes after Stage 2 share over the tiles of a frame: the fit channel's views
    (2, H, W), the parametric kernels (2, L, K, K), the filled-in config (``latent_reg``, the
    deconvolution's TV weight, ``fuse_window``, ``gd_scale``), G_D's logits of the frame and the
    frame's likelihood temperature (:func:`tiled_quadratic_form`)."""

    views: Tensor
    kernels: Tensor
    config: FitConfig
    logits: Tensor
    temperature: float | None

    def tile_weights(self, tile: Tile, latent: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(alphas, weights) (L, h, w) of the tile's outer region: G_D's, fused with the tile's
        likelihood at the frame's temperature when ``fuse_window > 0`` (re-rendered from the tile's
        Stage 1 ``latent``, solved here when not given)."""
        blurred = None
        if self.config.fuse_window > 0:
            if latent is None:
                latent = RegionSolver(self.views, self.kernels, self.config.latent_reg, tile).solve()
            blurred = blur_stack_fft(latent[None], self.kernels)[0]
        return _tile_weights(tile, tile.crop(self.views), blurred, self.logits, self.config, self.temperature)


def deconvolution_layers(frame: TiledFrame, tiles: list[Tile], *, progress: Callable[[int], None] | None = None) -> list[int]:
    """Pass 2: the frame's layer set of the deconvolution (:func:`edgedp.fit.deconvolution.used_layers`
    of the frame's fused weights): the layers whose weight reaches ``min_layer_weight`` somewhere
    in a tile's core."""
    layers = int(frame.kernels.shape[1])
    peak = torch.zeros(layers, dtype=torch.float32, device=frame.views.device)
    for tile in tiles:
        _, weights = frame.tile_weights(tile)
        peak = torch.maximum(peak, tile.core_of(weights).amax(dim=(1, 2)))
        del weights
        if progress is not None:
            progress(tile.index)
    return [i for i in range(layers) if float(peak[i]) >= frame.config.deconvolution.min_layer_weight]


def restore_tiles(left: Tensor, right: Tensor, frame: TiledFrame, radii: Tensor, tiles: list[Tile], store: _Store,
                  used: list[int] | None, *, progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """Pass 3, the restoration: per tile, Stage 1, the fused weights and, for every channel of
    ``left``, ``right`` (C, H, W), its own Stage 1 and (``used``: the deconvolution's layer set,
    None: no deconvolution) the final TV deconvolution; each core's latent maps, weights and
    alphas go into ``store``.  Returns the frame's ``(allinfocus (C, H, W), defocus (H, W))``."""
    views, kernels, lam, deconv = frame.views, frame.kernels, frame.config.latent_reg, frame.config.deconvolution
    channels, h, w = (int(s) for s in left.shape)
    device = views.device
    allinfocus = torch.empty(channels, h, w, dtype=torch.float32, device=device)
    defocus = torch.empty(h, w, dtype=torch.float32, device=device)
    r = radii.to(device=device, dtype=torch.float32)[:, None, None]
    for tile in tiles:
        solver = RegionSolver(views, kernels, lam, tile)
        latent = solver.solve()
        alphas, weights = frame.tile_weights(tile, latent)
        if channels > 1:  # every channel gets its own solve: the fit channel's is done
            del solver, latent
            solver = latent = None
        y0, y1, x0, x1 = tile.core
        composite = torch.zeros(channels, *weights.shape[-2:], dtype=torch.float32, device=device)
        for c in range(channels):
            if channels == 1:
                channel_solver, channel_latent = solver, latent
            else:
                channel_solver = RegionSolver(torch.stack([left[c], right[c]]), kernels, lam, tile)
                channel_latent = channel_solver.solve()
            if used is not None:
                channel_latent = deconvolve_layers(channel_solver, channel_latent, weights, lam, float(deconv.tv_weight),
                                                   deconv, layers=used)
            composite[c] = (channel_latent * weights).sum(0)
            store.put("latent", tile, channel_latent, (c,))
            del channel_solver, channel_latent
        allinfocus[:, y0:y1, x0:x1] = tile.core_of(composite)
        defocus[y0:y1, x0:x1] = tile.core_of((weights * r).sum(0))
        store.put("weights", tile, weights)
        store.put("alphas", tile, alphas)
        del solver, latent, alphas, weights, composite
        if progress is not None:
            progress(tile.index)
    return allinfocus, defocus
