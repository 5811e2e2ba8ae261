#!/usr/bin/env python
"""Where the restoration's error comes from, on the Pixel 4 dev scenes (issue: restoration quality).

For every scene of ``--data`` (read and scored exactly as ``tools/bench_pixel.py``: protocol
steps 1-2, the 1008x1344 crop, registered PSNR / SSIM) it prints one table row per method:

* ``input``: ``(left + right) / 2``;
* ablation of the pipeline, all from one fit with the default settings:
  ``likelihood`` (Stage 1 and the per-pixel layer likelihood alone, no G_D: what the instant
  path computes when G_D adds nothing), ``+ G_D`` (Stage 2's fitted weights fused with the
  likelihood, composite of Stage 1's L2 latent map: the pipeline before this study),
  ``+ TV deconv`` (the final TV deconvolution, :mod:`edgedp.fit.deconvolution`: the default now),
  and with ``--stage3`` ``+ stage 3`` (``--preset best``'s learned kernels, then the deconvolution);
* ceilings, each changing one part and keeping the rest:
  ``oracle sel. 15 / 31`` (the ground truth picks the layer of Stage 1's latent map per 15 / 31 px
  window: how much is selection), ``calibrated k.`` (the fit rerun with the calibrated 6x8
  kernels of ``calibration/`` as if known, the Xin et al. setting, each cell's kernel pair resized
  to every layer's disparity, likelihood selection, TV deconvolution: how much is kernels),
  ``calib. symmetrized`` (the same kernels made mirror-symmetric: what the symmetric DP model
  can reach), and the ``L2 prior`` row above against ``+ TV`` (how much is the prior).

Besides PSNR / SSIM every row carries two artifact figures, relative to the input's (1.0 = as
the input; :func:`edgedp.metrics.streak_energy`, :func:`edgedp.metrics.bead_energy`): the
residual's energy in long horizontal runs (streaks) and its vertical variation along strong
vertical edges (beads); and ``local dB``, the PSNR when every 96 px tile may take its own
integer shift within +-4 px (a diagnostic of how much the ground truth's local misregistration
costs; not the protocol).  It writes crops (input | + G_D | + TV deconv | ground truth) of the
regions where the artifacts were reported, as PNG (display gamma 1/2.2), to ``--out`` and the
tables as markdown (``--out/study_quality.md``).

Usage::

    .venv/bin/python tools/study_quality.py --data ../shared/data/pixel4 [--scenes 001,010] \\
        [--out out/study] [--stage3] [--crops-to docs/quality]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pixel as bp  # noqa: E402

from edgedp.fit import deconvolve_layers  # noqa: E402
from edgedp.errors import EdgedpError  # noqa: E402
from edgedp.fit import FitConfig, disparity_per_radius, fit_scene, fuse_with_likelihood  # noqa: E402
from edgedp.io import read_dp_pair, write_png8  # noqa: E402
from edgedp.fit import PatchLatentSolver  # noqa: E402
from edgedp.physics import kernel_disparity, resize_kernel  # noqa: E402
from edgedp.fit import LatentSolver  # noqa: E402
from edgedp.metrics import bead_energy, evaluate, registered_residual, streak_energy  # noqa: E402
from edgedp.physics import blur_stack_fft, blur_stack_patchwise  # noqa: E402

#: Regions (rows, cols of the crop) where the issue reported streaks, soft large blur and beads.
CROPS = {
    "001": {"top background": (0, 160, 0, 330), "book covers": (500, 660, 100, 430), "table": (880, 1008, 0, 330)},
    "004": {"left background": (150, 400, 0, 330)},
    "007": {"lettering": (150, 300, 20, 260)},
    "010": {"lettering": (250, 450, 1000, 1330), "foliage": (0, 200, 0, 330)},
}
TILE = 96


@dataclass
class Row:
    method: str
    psnr: float
    ssim: float
    streaks: float
    beads: float
    local: float


def local_psnr(output: np.ndarray, gt: np.ndarray, m: int = 4, tile: int = TILE) -> float:
    """PSNR when every ``tile`` px tile of the interior takes its own best integer shift."""
    h, w = gt.shape
    out = np.clip(output, 0, 1)
    total, count = 0.0, 0
    for y in range(m, h - m - tile + 1, tile):
        for x in range(m, w - m - tile + 1, tile):
            ref = gt[y : y + tile, x : x + tile]
            best = min(
                float(np.mean((out[y + dy : y + dy + tile, x + dx : x + dx + tile] - ref) ** 2))
                for dy in range(-m, m + 1)
                for dx in range(-m, m + 1)
            )
            total, count = total + best * ref.size, count + ref.size
    return float(10 * np.log10(1.0 / max(total / count, 1e-20)))


def score(method: str, image: np.ndarray, gt: np.ndarray, reference: tuple[float, float] | None) -> Row:
    """Protocol scores plus artifact energies (relative to ``reference``: the input's)."""
    s = evaluate(image, gt).registered
    # Every method is measured against the same registration (the input's own best shift would
    # also do): the residual at its own best shift.
    r = registered_residual(image, gt, s.shift)
    g = gt[4 + 0 : gt.shape[0] - 4, 4 : gt.shape[1] - 4]
    streaks, beads = streak_energy(r, g), bead_energy(r, g)
    if reference is not None:
        streaks, beads = streaks / reference[0], beads / reference[1]
    return Row(method, s.psnr, s.ssim, streaks, beads, local_psnr(image, gt))


def oracle_selection(latent: torch.Tensor, gt: np.ndarray, shift: tuple[int, int], window: int) -> np.ndarray:
    """The ground truth picks, per ``window`` px box, the layer whose latent is closest."""
    dy, dx = shift
    g = torch.from_numpy(gt).to(latent)
    # Shift the ground truth onto the output's frame (registered interior, replicated margin).
    aligned = torch.roll(g, (dy, dx), dims=(0, 1))
    err = (latent - aligned[None]).square()
    err = F.avg_pool2d(err[None], window, 1, window // 2, count_include_pad=False)[0]
    index = err.argmin(0, keepdim=True)
    return torch.gather(latent, 0, index)[0].numpy()


def calibrated_pyramid(kernels: np.ndarray, disparities: torch.Tensor, size: int, symmetric: bool) -> torch.Tensor:
    """(2, 48, 61, 61) calibrated pairs on a 6x8 grid -> (6, 8, 2, L, K, K): each cell's pair
    resized to every layer's disparity (layer 0: a delta), optionally made mirror-symmetric."""
    pair = torch.from_numpy(kernels).double()
    pair = pair / pair.sum(dim=(-1, -2), keepdim=True)
    if symmetric:
        left = (pair[0] + pair[1].flip(-1, -2)) / 2
        pair = torch.stack([left, left.flip(-1, -2)])
    cells = pair.shape[1]
    native = kernel_disparity(pair)  # (48,)
    scales = (disparities.double()[None, :] / native[:, None]).clamp_min(0)  # (48, L)
    layers = resize_kernel(pair.permute(1, 0, 2, 3)[:, :, None], scales[:, None, :], size)  # (48, 2, L, K, K)
    grid = (6, 8) if cells == 48 else (1, cells)
    return layers.float().reshape(*grid, 2, disparities.numel(), size, size)


def study_scene(scene: bp.Scene, data: Path, out: Path, stage3: bool, log) -> list[Row]:
    options = bp.read_options(data, bp.DEFAULT_CROP)
    pair = read_dp_pair(scene.left, scene.right, options)
    gt = bp.read_gt(scene, bp.DEFAULT_CROP)
    left, right = pair.left, pair.right
    views = torch.stack([left[0], right[0]])
    rows: list[Row] = []
    inp = views.mean(0).numpy()
    s_in = evaluate(inp, gt).registered
    r_in = registered_residual(inp, gt, s_in.shift)
    g_int = gt[4:-4, 4:-4]
    reference = (streak_energy(r_in, g_int), bead_energy(r_in, g_int))
    rows.append(score("input", inp, gt, reference))

    t0 = time.perf_counter()
    result = fit_scene(left, right, FitConfig(stage2_iterations=100))
    log(f"{scene.name}: default fit {time.perf_counter() - t0:.0f} s")
    cfg = result.config
    kernels, weights, lam = result.kernels, result.weights, float(cfg.latent_reg)
    solver = LatentSolver(views, kernels, lam)
    latent = solver.solve()
    blurred = blur_stack_fft(latent[None], kernels)[0]
    uniform = torch.full_like(weights, 1.0 / weights.shape[0])
    lik = fuse_with_likelihood(uniform, blurred, views, cfg.fuse_window)
    del blurred
    lik_image = (latent * lik).sum(0).numpy()
    composite = (latent * weights).sum(0).numpy()
    final = result.allinfocus[0].numpy()
    rows.append(score("likelihood", lik_image, gt, reference))
    rows.append(score("+ G_D (L2 prior)", composite, gt, reference))
    rows.append(score("+ TV deconv (default)", final, gt, reference))
    if stage3:
        t0 = time.perf_counter()
        best = fit_scene(left, right, FitConfig(stage2_iterations=150, stage3_iterations=60))
        log(f"{scene.name}: best fit {time.perf_counter() - t0:.0f} s")
        rows.append(score("+ stage 3", best.allinfocus[0].numpy(), gt, reference))

    shift = evaluate(composite, gt).registered.shift
    for window in (15, 31):
        rows.append(score(f"oracle sel. {window}", oracle_selection(latent, gt, shift, window), gt, reference))

    cal = data / "calibration"
    files = (cal / "blur_kernels_left.npy", cal / "blur_kernels_right.npy")
    if all(f.is_file() for f in files):
        kernels_cal = np.stack([np.load(f) for f in files])
        disparities = result.radii.abs() * disparity_per_radius(cfg.kernel_model, cfg.butterworth) * cfg.radius_scale
        for symmetric, name in ((False, "calibrated k."), (True, "calib. symmetrized")):
            t0 = time.perf_counter()
            pk = calibrated_pyramid(kernels_cal, disparities, kernels_cal.shape[-1], symmetric)
            patch_solver = PatchLatentSolver(views, pk, lam)
            latent_cal = patch_solver.solve()
            blurred = blur_stack_patchwise(latent_cal[None], pk)[0]
            w_cal = fuse_with_likelihood(uniform, blurred, views, cfg.fuse_window)
            del blurred
            tv = float(cfg.deconvolution.tv_weight)
            latent_cal = deconvolve_layers(patch_solver, latent_cal, w_cal, lam, tv, cfg.deconvolution)
            rows.append(score(name, (latent_cal * w_cal).sum(0).numpy(), gt, reference))
            log(f"{scene.name}: {name} {time.perf_counter() - t0:.0f} s")

    for region, (y0, y1, x0, x1) in CROPS.get(scene.name, {}).items():
        norm = 1.3 * float(np.percentile(gt[y0:y1, x0:x1], 90)) or 1.0  # bright highlights may clip
        tiles = [np.clip(img[y0:y1, x0:x1] / norm, 0, 1) ** (1 / 2.2) for img in (inp, composite, final, gt)]
        gap = np.ones((y1 - y0, 4))
        strip = np.concatenate([np.concatenate([t, gap], axis=1) for t in tiles], axis=1)[:, :-4]
        path = out / f"crop_{scene.name}_{region.replace(' ', '_')}.png"
        write_png8(path, np.round(strip * 255).astype(np.uint8), overwrite=True)
    return rows


def table(name: str, rows: list[Row]) -> str:
    base = rows[0]
    head = "| method | PSNR | SSIM | gain dB | streaks | beads | local dB |\n|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {r.method} | {r.psnr:.3f} | {r.ssim:.4f} | {r.psnr - base.psnr:+.2f} | {r.streaks:.2f} | {r.beads:.2f} | {r.local:.2f} |"
        for r in rows
    ]
    return f"**{name}**\n\n" + head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--scenes", default=None, help="comma-separated scene names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("out/study"))
    parser.add_argument("--stage3", action="store_true", help="also fit --preset best (about a minute more per scene)")
    parser.add_argument("--crops-to", type=Path, default=None, help="also copy the crops here (e.g. docs/quality)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        scenes = bp.discover_scenes(args.data, args.scenes.split(",") if args.scenes else None)
        args.out.mkdir(parents=True, exist_ok=True)
    except (EdgedpError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    report = []
    means: dict[str, list[Row]] = {}
    for scene in scenes:
        rows = study_scene(scene, args.data, args.out, args.stage3, log)
        text = table(scene.name, rows)
        print(text, flush=True)
        report.append(text)
        for r in rows:
            means.setdefault(r.method, []).append(r)
    mean_rows = [
        Row(m, float(np.mean([r.psnr for r in rs])), float(np.mean([r.ssim for r in rs])),
            float(np.mean([r.streaks for r in rs])), float(np.mean([r.beads for r in rs])), float(np.mean([r.local for r in rs])))
        for m, rs in means.items() if len(rs) == len(scenes)
    ]
    text = table(f"mean of {len(scenes)} scenes", mean_rows)
    print(text)
    report.append(text)
    (args.out / "study_quality.md").write_text("\n".join(report))
    if args.crops_to is not None:
        args.crops_to.mkdir(parents=True, exist_ok=True)
        for crop in sorted(args.out.glob("crop_*.png")):
            (args.crops_to / crop.name).write_bytes(crop.read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
