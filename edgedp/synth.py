"""Dual-pixel simulator: sharp texture + defocus map -> DP pair with ground truth.

This is the built-in sample and the source of fast test data.  A scene is

- a sharp all-in-focus image ``x`` (procedural: a "dead leaves" texture, whose scale statistics
  resemble natural images, plus fine grain so flat leaves still carry texture), or one given;
- a signed defocus map ``r`` (blur radius in px, conventions in CONVENTIONS.md: ``r > 0`` behind
  the focal plane, left kernel's mass on the left), layered (piecewise-constant objects) or smooth;
- a DP kernel model (Butterworth, translating disk, or user-supplied kernels), optionally varying
  over the frame on a grid of patches.

Rendering discretizes ``r`` into fine levels (``SynthConfig.level_step`` px, far finer than the
fit's 1 px layers) and blends the two nearest levels per pixel with linear "hat" weights, then uses
the same layered image formation as the method (``physics.render_dual_pixel``, Eq. 9/11):
``y_v = sum_m w_m * (x conv k_m^v)``.  Noise is Gaussian read noise plus signal-dependent shot noise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .conventions import BEHIND, BOTH, fit_focus
from .errors import InputError
from .io.writers import json_ready
from .physics.kernels import ButterworthParams, kernel_disparity, kernel_pyramid, resize_kernel, swap_focus_side
from .physics.blur import render_dual_pixel, render_dual_pixel_patchwise

FocusSide = Literal["behind", "both"]  # edgedp.conventions fit focus (old "front" = "behind")
"""``front``: everything blurred lies behind the focal plane (r >= 0, the thesis' "front focus",
like the Pixel 4 dev scenes); ``both``: objects on both sides (r in [-R, R])."""


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of a simulated DP capture.

    Attributes:
        size: (H, W) of the rendered views.
        focus: ``front`` (r >= 0 only) or ``both`` (signed r in [-max_radius, max_radius]).
        kernel: ``butterworth`` or ``disk`` parametric DP kernels, or ``file`` for
            ``kernel_file`` (user-supplied, e.g. calibrated, kernels).
        max_radius: largest blur radius in the scene (px).
        depth: ``layered`` (piecewise-constant objects at ``num_planes`` depths, occluding each
            other) or ``smooth`` (a tilted plane plus smooth bumps).
        num_planes: number of depth planes of a layered scene (one of them in focus).
        spatially_varying: vary the kernel shape over a ``patch_grid`` (Butterworth order and
            floor, and the blur radius scale by up to +-10%), as a real lens does.
        patch_grid: (rows, cols) of the spatial variation.
        butterworth: parameters of the Butterworth model (centre of the variation).
        noise_std: Gaussian read-noise standard deviation (on the [0, 1] scale).
        shot_noise: shot-noise variance per unit signal (variance = noise_std^2 + shot_noise * y).
        level_step: spacing (px) of the blur levels used to render the continuous defocus map.
        seed: seed of every random choice (texture, depth, noise).
    """

    size: tuple[int, int] = (301, 401)
    focus: FocusSide = "behind"
    kernel: Literal["butterworth", "disk", "file"] = "butterworth"
    max_radius: float = 8.0
    depth: Literal["layered", "smooth"] = "layered"
    num_planes: int = 4
    spatially_varying: bool = False
    patch_grid: tuple[int, int] = (3, 4)
    butterworth: ButterworthParams = field(default_factory=ButterworthParams)
    noise_std: float = 0.002
    shot_noise: float = 2e-5
    level_step: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        h, w = self.size
        if h < 8 or w < 8:
            raise ValueError(f"size must be at least 8x8, got {h}x{w}")
        if self.max_radius < 0:
            raise ValueError("max_radius must be >= 0")
        if fit_focus(self.focus, what="focus") not in (BEHIND, BOTH):
            raise ValueError(f"focus must be 'behind' or 'both', got {self.focus!r}")
        object.__setattr__(self, "focus", fit_focus(self.focus))
        if self.level_step <= 0:
            raise ValueError("level_step must be > 0")



def load_kernel_file(path: Path | str) -> Tensor:
    """User kernels for :func:`make_scene` from a ``.npy`` file: ``(2, K, K)`` [left, right] or
    ``(2, Pr, Pc, K, K)`` per patch, K odd, finite and non-negative; float32.

    Raises:
        InputError: one line naming the file (missing, unreadable, wrong shape or values).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: kernel file not found")
    try:
        kernels = torch.from_numpy(np.load(path).astype(np.float32))
    except Exception as err:  # numpy raises many kinds for a bad file
        raise InputError(f"{path}: cannot read kernels ({err.__class__.__name__})") from None
    if kernels.dim() not in (3, 5) or kernels.shape[0] != 2 or kernels.shape[-1] % 2 == 0:
        raise InputError(f"{path}: kernels must be (2,K,K) or (2,Pr,Pc,K,K) with odd K, got {tuple(kernels.shape)}")
    if not torch.isfinite(kernels).all() or (kernels < 0).any():
        raise InputError(f"{path}: kernels must be finite and non-negative")
    return kernels

@dataclass
class SynthScene:
    """A rendered DP capture and its ground truth; all tensors (H, W) float32.

    ``defocus`` is the signed blur radius in px; ``disparity`` the DP disparity
    (x_right - x_left, px) of the kernel pair rendered at each pixel.
    """

    left: Tensor
    right: Tensor
    allinfocus: Tensor
    defocus: Tensor
    disparity: Tensor
    params: dict


def dead_leaves(
    size: tuple[int, int],
    *,
    seed: int | torch.Generator = 0,
    min_radius: float = 2.0,
    max_radius: float | None = None,
    coverage: float = 3.0,
    grain: float = 0.06,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A procedural sharp image with natural-image statistics: (H, W) in about [0.03, 0.9].

    Disks with power-law radii (density ~ r^-3 between ``min_radius`` and ``max_radius``, default
    a quarter of the shorter side) and uniform grey values are painted until ``coverage`` times the
    area is covered, then multiplied by a fine multiplicative grain (std ``grain``) so that flat
    leaves still carry texture for the DP views to disagree about.
    """
    gen = _generator(seed)
    h, w = size
    rmax = max_radius if max_radius is not None else max(min_radius + 1.0, min(h, w) / 4)
    canvas = np.full((h, w), 0.5, dtype=np.float64)
    # Inverse-CDF sampling of p(r) ~ r^-3 on [rmin, rmax].
    a, b = min_radius ** -2, rmax ** -2
    painted = 0.0
    yy = np.arange(h)[:, None]
    xx = np.arange(w)[None, :]
    while painted < coverage * h * w:
        u = float(torch.rand((), generator=gen))
        r = (a - u * (a - b)) ** -0.5
        cy = float(torch.rand((), generator=gen)) * (h + 2 * r) - r
        cx = float(torch.rand((), generator=gen)) * (w + 2 * r) - r
        value = 0.05 + 0.8 * float(torch.rand((), generator=gen))
        y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        inside = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2 <= r * r
        canvas[y0:y1, x0:x1][inside] = value
        painted += math.pi * r * r
    image = torch.from_numpy(canvas).to(device=device, dtype=dtype)
    if grain > 0:
        noise = torch.randn((1, 1, h, w), generator=gen, dtype=torch.float64)
        noise = _gaussian_smooth(noise, sigma=0.8)[0, 0]
        noise = noise / noise.std().clamp_min(1e-12)
        image = image * (1.0 + grain * noise.to(device=device, dtype=dtype))
    return image.clamp(0.03, 0.95)


def layered_defocus(
    size: tuple[int, int],
    radii: list[float],
    *,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A piecewise-constant defocus map (H, W): background at ``radii[0]``, then objects (random
    ellipses and rectangles, painted in order, later ones occluding) at the following radii."""
    gen = _generator(seed)
    h, w = size
    out = torch.full((h, w), float(radii[0]), dtype=torch.float64)
    yy = torch.arange(h, dtype=torch.float64)[:, None]
    xx = torch.arange(w, dtype=torch.float64)[None, :]
    for r in radii[1:]:
        for _ in range(2):
            cy, cx = (torch.rand(2, generator=gen, dtype=torch.float64) * torch.tensor([h, w])).tolist()
            ry, rx = (torch.rand(2, generator=gen, dtype=torch.float64) * 0.22 + 0.08).tolist()
            ry, rx = ry * h, rx * w
            if float(torch.rand((), generator=gen)) < 0.5:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                mask = ((yy - cy).abs() <= ry) & ((xx - cx).abs() <= rx)
            out[mask] = float(r)
    return out.to(device=device, dtype=dtype)


def smooth_defocus(
    size: tuple[int, int],
    low: float,
    high: float,
    *,
    seed: int | torch.Generator = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A smooth defocus map (H, W) spanning [low, high]: a random tilted plane plus a few broad
    Gaussian bumps, rescaled to the range."""
    gen = _generator(seed)
    h, w = size
    yy = torch.linspace(-1, 1, h, dtype=torch.float64)[:, None]
    xx = torch.linspace(-1, 1, w, dtype=torch.float64)[None, :]
    gy, gx = (torch.rand(2, generator=gen, dtype=torch.float64) * 2 - 1).tolist()
    field_ = gy * yy + gx * xx
    for _ in range(3):
        cy, cx, amp = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1).tolist()
        field_ = field_ + amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.3)
    field_ = (field_ - field_.min()) / (field_.max() - field_.min()).clamp_min(1e-12)
    return (low + (high - low) * field_).to(device=device, dtype=dtype)


def render_scene(
    sharp: Tensor,
    defocus: Tensor,
    config: SynthConfig,
    *,
    kernels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SynthScene:
    """Render a DP pair from a sharp image (H, W) and a signed defocus map (H, W, px).

    Args:
        sharp: all-in-focus image in [0, 1].
        defocus: signed blur radius per pixel (r > 0 behind the focal plane).
        config: kernel model, spatial variation, noise.
        kernels: user-supplied kernels for ``config.kernel == "file"``: (2, K, K) [left, right] or
            a grid (2, Pr, Pc, K, K); they describe the blur at radius ``(K - 1) / 2`` behind the
            focal plane and are rescaled for other radii (mirrored for r < 0).
        generator: noise generator (default: seeded from ``config.seed``).
    """
    if sharp.shape != defocus.shape or sharp.dim() != 2:
        raise ValueError(f"sharp {tuple(sharp.shape)} and defocus {tuple(defocus.shape)} must be the same (H, W)")
    device, dtype = sharp.device, sharp.dtype
    step = config.level_step
    rmin, rmax = float(defocus.min()), float(defocus.max())
    lo = math.floor(rmin / step) * step
    n_levels = int(math.ceil((rmax - lo) / step)) + 2
    levels = lo + step * torch.arange(n_levels, dtype=torch.float64)
    # Linear "hat" interpolation between the two nearest levels: weights sum to 1 per pixel.
    t = (defocus.double() - lo) / step
    i0 = t.floor().clamp(0, n_levels - 2).long()
    frac = (t - i0).clamp(0, 1)
    weights = torch.zeros((n_levels,) + tuple(defocus.shape), dtype=torch.float64)
    weights.scatter_(0, i0[None], (1 - frac)[None])
    weights.scatter_add_(0, (i0 + 1)[None], frac[None])
    weights = weights.to(device=device, dtype=dtype)[None]  # (1, M, H, W)
    latent = sharp[None, None].expand(1, n_levels, *sharp.shape)

    bank = _kernel_bank(levels, config, kernels, device=device, dtype=dtype)
    if bank.dim() == 4:  # (2, M, K, K): uniform over the frame
        views = render_dual_pixel(latent, weights, bank)
        level_disparity = kernel_disparity(bank)
    else:  # (Pr, Pc, 2, M, K, K)
        views = render_dual_pixel_patchwise(latent, weights, bank)
        level_disparity = kernel_disparity(bank.movedim(2, 0)).mean(dim=(0, 1))
    disparity = (weights[0] * level_disparity.to(dtype)[:, None, None]).sum(0)

    gen = generator if generator is not None else _generator(config.seed + 7919)
    noisy = []
    for v in range(2):
        clean = views[0, v].clamp_min(0)
        std = torch.sqrt(config.noise_std**2 + config.shot_noise * clean)
        noise = torch.randn(clean.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        noisy.append((clean + std * noise).clamp(0, 1))

    disp_np = disparity.detach().cpu().numpy()
    params = {
        "config": json_ready(config),
        "defocus_range_px": [rmin, rmax],
        "disparity_range_px": [float(disp_np.min()), float(disp_np.max())],
        "disparity_percentiles_2_98_px": [float(np.percentile(disp_np, 2)), float(np.percentile(disp_np, 98))],
        "kernel_size": int(bank.shape[-1]),
        "num_levels": n_levels,
        "conventions": "defocus: signed blur radius px (>0 behind focal plane); disparity = x_right - x_left px",
    }
    return SynthScene(noisy[0], noisy[1], sharp, defocus, disparity, params)


def make_scene(
    config: SynthConfig = SynthConfig(),
    *,
    sharp: Tensor | None = None,
    kernels: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SynthScene:
    """Make a complete synthetic scene from ``config`` (same seed, same scene).

    ``sharp`` replaces the procedural texture (it must have ``config.size``); ``kernels`` are the
    user-supplied kernels for ``config.kernel == "file"`` (see :func:`render_scene`).
    """
    gen = _generator(config.seed)
    size = config.size
    if sharp is None:
        sharp = dead_leaves(size, seed=gen, device=device, dtype=dtype)
    elif tuple(sharp.shape) != tuple(size):
        raise ValueError(f"sharp image is {tuple(sharp.shape)}, config.size is {size}")
    low = -config.max_radius if config.focus == BOTH else 0.0
    high = config.max_radius
    if config.depth == "layered":
        planes = torch.linspace(low, high, max(2, config.num_planes), dtype=torch.float64)
        if config.focus == BEHIND:
            order = [float(p) for p in planes.flip(0)]  # far (most blurred) background, nearer objects on top
        else:
            order = [float(p) for p in planes[torch.randperm(len(planes), generator=gen)]]
            if 0.0 not in order:
                order[-1] = 0.0  # something is in focus
        defocus = layered_defocus(size, order, seed=gen, device=sharp.device, dtype=sharp.dtype)
    elif config.depth == "smooth":
        defocus = smooth_defocus(size, low, high, seed=gen, device=sharp.device, dtype=sharp.dtype)
    else:
        raise ValueError(f"unknown depth model {config.depth!r}")
    return render_scene(sharp, defocus, config, kernels=kernels)


#: The files of a simulated capture (:func:`write_synth_capture`).
SYNTH_FILES = ("left.png", "right.png", "gt_allinfocus.png", "gt_defocus.npy", "scene.json")


def synth_transfer(transfer: str) -> str:
    """The transfer a simulated capture is written in: ``linear`` (16-bit linear views) or
    ``srgb`` (8-bit sRGB views); a one-line InputError for anything else."""
    from .io.transfer import SRGB, check_transfer

    transfer = check_transfer(transfer)
    if transfer not in ("linear", SRGB):
        raise InputError(f"--transfer {transfer}: synth writes linear or srgb files")
    return transfer


def synth_config(*, size: str, focus: str | None, transfer: str, kernel: str, kernel_file: Path | str | None = None,
                 **fields) -> tuple[SynthConfig, Tensor | None]:
    """The :class:`SynthConfig` of ``edgedp synth`` and the user kernels of ``kernel_file``
    (:func:`load_kernel_file`, which then replace ``kernel``): ``size`` as ``HxW``, ``focus``
    None: ``both`` for ``srgb`` (DPDD-like pairs), else ``behind``; ``fields``: the other
    SynthConfig fields.  A value SynthConfig refuses is a one-line InputError."""
    from .io.images import parse_size
    from .io.transfer import SRGB

    if focus is None:
        focus = BOTH if transfer == SRGB else BEHIND
    user_kernels = load_kernel_file(kernel_file) if kernel_file is not None else None
    try:
        config = SynthConfig(size=parse_size(size), focus=focus, kernel="file" if user_kernels is not None else kernel,
                             **fields)
    except ValueError as err:
        raise InputError(str(err)) from None
    return config, user_kernels


def write_synth_capture(out: Path | str, config: SynthConfig, *, transfer: str = "linear",
                        kernels: Tensor | None = None, overwrite: bool = False) -> tuple[Path, SynthScene]:
    """Render :func:`make_scene` of ``config`` and write :data:`SYNTH_FILES` into ``out``: the
    views 16-bit linear PNG (``linear``) or 8-bit sRGB PNG (``srgb``), the ground truth
    all-in-focus 16-bit PNG in the same transfer, the signed blur radius ``gt_defocus.npy``
    (float32, px) and ``scene.json`` (the scene's parameters, the transfer and the files'
    formats).  Returns ``(out, scene)``.

    Raises:
        OutputError: a file of the capture exists and ``overwrite`` is False; ``out`` unusable.
    """
    from .errors import OutputError
    from .io.transfer import SRGB
    from .io.writers import prepare_output_dir, write_json, write_npy, write_png16, write_srgb_png8

    out = prepare_output_dir(out)
    existing = [name for name in SYNTH_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{out / existing[0]} exists (use --overwrite)")
    scene = make_scene(config, kernels=kernels)
    scene.params["transfer"] = transfer
    if transfer == SRGB:
        scene.params["files"] = {"views": "8-bit sRGB", "gt_allinfocus": "16-bit sRGB"}
        write_srgb_png8(out / "left.png", scene.left, overwrite=overwrite)
        write_srgb_png8(out / "right.png", scene.right, overwrite=overwrite)
    else:
        scene.params["files"] = {"views": "16-bit linear", "gt_allinfocus": "16-bit linear"}
        write_png16(out / "left.png", scene.left, overwrite=overwrite)
        write_png16(out / "right.png", scene.right, overwrite=overwrite)
    write_png16(out / "gt_allinfocus.png", scene.allinfocus, overwrite=overwrite, transfer=transfer)
    write_npy(out / "gt_defocus.npy", scene.defocus.numpy().astype(np.float32), overwrite=overwrite)
    write_json(out / "scene.json", scene.params, overwrite=overwrite)
    return out, scene


def _kernel_bank(
    levels: Tensor, config: SynthConfig, user_kernels: Tensor | None, *, device, dtype
) -> Tensor:
    """Kernels for every render level: (2, M, K, K), or (Pr, Pc, 2, M, K, K) when they vary."""
    rmax = float(levels.abs().max())
    if config.kernel == "file":
        if user_kernels is None:
            raise ValueError("config.kernel == 'file' needs kernels")
        return _rescale_user_kernels(user_kernels.to(device=device, dtype=dtype), levels)
    if not config.spatially_varying:
        return kernel_pyramid(levels, config.kernel, config.butterworth, device=device, dtype=dtype)
    rows, cols = config.patch_grid
    bank = []
    for i in range(rows):
        row = []
        for j in range(cols):
            u = (j + 0.5) / cols - 0.5  # -0.5..0.5 across the frame
            v = (i + 0.5) / rows - 0.5
            params = dataclasses.replace(
                config.butterworth,
                order=max(1.0, config.butterworth.order * (1 + 1.0 * abs(u))),
                beta=min(1.0, max(0.0, config.butterworth.beta * (1 + 0.5 * v))),
            )
            # Field curvature: blur grows towards the corners by up to ~10%.
            scale = 1.0 + 0.2 * (u * u + v * v)
            size = 2 * math.ceil(rmax * 1.1) + 1
            row.append(kernel_pyramid(levels * scale, config.kernel, params, size=size, device=device, dtype=dtype))
        bank.append(torch.stack(row))
    return torch.stack(bank)


def _rescale_user_kernels(kernels: Tensor, levels: Tensor) -> Tensor:
    """User kernels (2, K, K) or (2, Pr, Pc, K, K), describing radius (K-1)/2 behind the focal
    plane, resampled to every level -> (2, M, K', K') or (Pr, Pc, 2, M, K', K')."""
    if kernels.dim() not in (3, 5) or kernels.shape[0] != 2 or kernels.shape[-1] != kernels.shape[-2]:
        raise ValueError(f"kernels must be (2, K, K) or (2, Pr, Pc, K, K), got {tuple(kernels.shape)}")
    k = kernels.shape[-1]
    radius = (k - 1) / 2
    size = 2 * math.ceil(float(levels.abs().max())) + 1
    out = []
    for r in levels.tolist():
        pair = resize_kernel(kernels, abs(r) / radius, size)
        out.append(swap_focus_side(pair) if r < 0 else pair)
    bank = torch.stack(out, dim=1)  # (2, M, ..., size, size)
    if kernels.dim() == 3:
        return bank
    return bank.permute(2, 3, 0, 1, 4, 5).contiguous()  # (Pr, Pc, 2, M, K, K)


def _gaussian_smooth(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = torch.nn.functional.conv2d(x, g.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(x, g.view(1, 1, -1, 1))


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen
