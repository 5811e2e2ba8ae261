#!/usr/bin/env python
"""Where the restoration's error comes from, on the Pixel 4 dev scenes (issue: restoration quality).

For every scene of ``--data`` (read and scored exactly as ``tools/bench_pixel.py``: protocol
steps 1-2, the 1008x1344 crop, registered PSNR / SSIM) it prints one table row per method:

* ``input``: ``(left + right) / 2``;
* the pipeline, from two fits: ``parametric: default pipeline (before)`` (the mirror-symmetric
  Butterworth pair everywhere, ``FitConfig(kernel_estimation=None)``: the fit before the kernel
  field) and the default fit, which estimates the capture's kernel field
  (:mod:`edgedp.fit.kernel_estimation`), ablated: ``estimated field: likelihood`` (Stage 1 with the
  field and the per-pixel layer likelihood alone), ``+ G_D`` (Stage 2's fitted weights fused with
  the likelihood) and ``+ TV deconv (default)`` (the output); ``parametric: likelihood`` is the
  first of these with the parametric pair;
* ceilings, each giving the model one true quantity (kernels alone: Stage 1 patchwise, the
  per-pixel likelihood with a uniform prior over 15 px, no G_D, no TV):
  ``calibrated field, recentred`` (the 6x8 calibrated pairs of ``calibration/``, each recentred so
  that its L+R centroid sits at the kernel centre, resized to every layer's disparity),
  ``calibrated, one uniform mean pair`` (the 48 recentred pairs averaged), ``calibrated, each cell
  symmetrized`` (mirror-averaged per cell), and ``... GT defocus as layer choice`` (the ground-truth
  defocus map picks the layer of the same latent map through the affine map of its values that
  scores best: two numbers chosen with the ground truth, so an honest ceiling of the layer choice);
* ``oracle sel. 15 / 31 (loose)``: the ground truth picks the layer of the estimated field's latent
  map per 15 / 31 px window.  Loose: it picks whichever latent happens to be closest to the ground
  truth, not a layer choice a model could make, so it overstates the headroom.

Per scene it also prints the 6x8 per-cell gain tables (the default, the parametric fit before,
the recentred calibrated field) and the per-cell horizontal spread ratio ``sx_L / sx_R`` of the
estimated field against the calibrated one (Pearson rho; the physical check of the estimate).

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

from edgedp.eval import pixel4 as bp  # noqa: E402  (the Pixel 4 protocol: scenes, steps 1-2, ground truth)

from edgedp.errors import EdgedpError  # noqa: E402
from edgedp.fit import FitConfig, field_kernels, fit_scene, fuse_with_likelihood  # noqa: E402
from edgedp.formats import load_kernel_grid  # noqa: E402
from edgedp.io import read_dp_pair, read_image, write_png8  # noqa: E402
from edgedp.fit import PatchLatentSolver  # noqa: E402
from edgedp.physics import horizontal_std, uniform_field  # noqa: E402
from edgedp.physics import LatentSolver  # noqa: E402
from edgedp.metrics import evaluate  # noqa: E402
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
    streaks, beads = bp.residual_artifacts(image, gt, s.shift)
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


def likelihood_composite(views: torch.Tensor, kernels: torch.Tensor, lam: float, window: int):
    """Kernels alone (the issue's setting: no G_D, no TV): Stage 1 with ``kernels`` ((2, L, K, K)
    uniform or (Pr, Pc, 2, L, K, K) per cell), per-pixel likelihood selection with a uniform prior
    over ``window`` px.  Returns (latent map (L, H, W), weights (L, H, W), composite (H, W))."""
    if kernels.dim() == 6:
        latent = PatchLatentSolver(views, kernels, lam).solve()
        blurred = blur_stack_patchwise(latent[None], kernels)[0]
    else:
        latent = LatentSolver(views, kernels, lam).solve()
        blurred = blur_stack_fft(latent[None], kernels)[0]
    uniform = torch.full_like(latent, 1.0 / latent.shape[0])
    weights = fuse_with_likelihood(uniform, blurred, views, window)
    return latent, weights, (latent * weights).sum(0)


def read_gt_defocus(data: Path, scene: str) -> np.ndarray | None:
    """The data's relative ground-truth defocus map of the crop (8-bit values), or None."""
    path = data / "gt_defocus_map" / f"{scene}_gt.png"
    if not path.is_file():
        return None
    image, _ = read_image(path)
    return np.asarray(image, dtype=np.float64).reshape(image.shape[0], image.shape[1], -1)[..., 0]


def gt_defocus_choice(latent: torch.Tensor, gt_defocus: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The layer choice from the ground-truth defocus map: layer ``round(a g + b)`` per pixel, with
    the affine map ``(a, b)`` of the map's values that scores best (2 numbers chosen with the
    ground truth, not one per window: an honest ceiling of the layer choice).  Returns the
    composite and ``(a, b)``."""
    layers = latent.shape[0]
    g = torch.from_numpy(gt_defocus).to(latent)
    lo, hi = float(np.percentile(gt_defocus, 1)), float(np.percentile(gt_defocus, 99))
    best = None
    ends = np.linspace(-0.2, 1.2, 8) * (layers - 1)  # layer index at the map's 1st / 99th percentile
    for low in ends:
        for top in ends:  # either orientation: the map's values need not grow with the blur
            a = (top - low) / max(hi - lo, 1e-9)
            index = (a * (g - lo) + low).round().clamp(0, layers - 1).long()
            image = torch.gather(latent, 0, index[None])[0].numpy()
            psnr = evaluate(image, gt).registered.psnr
            if best is None or psnr > best[0]:
                best = (psnr, image, (float(a), float(low - a * lo)))
    return best[1], best[2]


def cell_gains(image: np.ndarray, inp: np.ndarray, gt: np.ndarray, grid: tuple[int, int] = (6, 8)) -> np.ndarray:
    """(Pr, Pc) PSNR gain over the input per cell of the registered interior (the input's shift)."""
    dy, dx = evaluate(inp, gt).registered.shift
    h, w = gt.shape
    out = np.clip(image, 0, 1)[4 + dy : h - 4 + dy, 4 + dx : w - 4 + dx]
    base = np.clip(inp, 0, 1)[4 + dy : h - 4 + dy, 4 + dx : w - 4 + dx]
    ref = gt[4 : h - 4, 4 : w - 4]
    hh, ww = ref.shape
    gains = np.zeros(grid)
    for r in range(grid[0]):
        for c in range(grid[1]):
            sl = (slice(r * hh // grid[0], (r + 1) * hh // grid[0]), slice(c * ww // grid[1], (c + 1) * ww // grid[1]))
            gains[r, c] = 10 * np.log10(np.mean((base[sl] - ref[sl]) ** 2) / max(np.mean((out[sl] - ref[sl]) ** 2), 1e-20))
    return gains


def spread_ratios(patch_kernels: torch.Tensor) -> np.ndarray:
    """(Pr, Pc) horizontal std of the left kernel over the right's, at the largest layer."""
    std = horizontal_std(patch_kernels[:, :, :, -1].double())
    return (std[..., 0] / std[..., 1]).numpy()


@dataclass
class SceneStudy:
    rows: list[Row]
    cells: dict[str, np.ndarray]
    notes: list[str]


def study_scene(scene: bp.Scene, data: Path, out: Path, stage3: bool, log) -> SceneStudy:
    options = bp.read_options(data, bp.DEFAULT_CROP)
    pair = read_dp_pair(scene.left, scene.right, options)
    gt = bp.read_gt(scene, bp.DEFAULT_CROP)
    left, right = pair.left, pair.right
    views = torch.stack([left[0], right[0]])
    rows: list[Row] = []
    cells: dict[str, np.ndarray] = {}
    notes: list[str] = []
    inp = views.mean(0).numpy()
    s_in = evaluate(inp, gt).registered
    reference = bp.residual_artifacts(inp, gt, s_in.shift)
    rows.append(score("input", inp, gt, reference))

    t0 = time.perf_counter()
    before = fit_scene(left, right, FitConfig(kernel_estimation=None))
    log(f"{scene.name}: parametric fit (before) {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    result = fit_scene(left, right, FitConfig())
    log(f"{scene.name}: default fit {time.perf_counter() - t0:.0f} s")
    cfg = result.config
    lam, window = float(cfg.latent_reg), cfg.fuse_window
    parametric = before.kernels
    _, _, lik_param = likelihood_composite(views, parametric, lam, window)
    latent, _, lik_field = likelihood_composite(views, result.patch_kernels, lam, window)
    composite = (latent * result.weights).sum(0).numpy()
    final = result.allinfocus[0].numpy()
    rows.append(score("parametric: likelihood", lik_param.numpy(), gt, reference))
    rows.append(score("parametric: default pipeline (before)", before.allinfocus[0].numpy(), gt, reference))
    rows.append(score("estimated field: likelihood", lik_field.numpy(), gt, reference))
    rows.append(score("estimated field: + G_D", composite, gt, reference))
    rows.append(score("estimated field: + TV deconv (default)", final, gt, reference))
    cells["default (estimated field)"] = cell_gains(final, inp, gt)
    cells["before (parametric)"] = cell_gains(before.allinfocus[0].numpy(), inp, gt)
    if stage3:
        t0 = time.perf_counter()
        best = fit_scene(left, right, FitConfig(stage2_iterations=150, stage3_iterations=60))
        log(f"{scene.name}: best fit {time.perf_counter() - t0:.0f} s")
        rows.append(score("+ stage 3 (parametric start)", best.allinfocus[0].numpy(), gt, reference))

    gt_defocus = read_gt_defocus(data, scene.name)
    if gt_defocus is not None:
        latent_p = LatentSolver(views, parametric, lam).solve()
        image, _ = gt_defocus_choice(latent_p, gt_defocus, gt)
        rows.append(score("parametric: GT defocus as layer choice", image, gt, reference))
        image, _ = gt_defocus_choice(latent, gt_defocus, gt)
        rows.append(score("estimated field: GT defocus as layer choice", image, gt, reference))
    shift = evaluate(composite, gt).registered.shift
    for w in (15, 31):
        rows.append(score(f"oracle sel. {w} (loose: GT picks per window)", oracle_selection(latent, gt, shift, w), gt, reference))

    cal = data / "calibration"
    files = (cal / "blur_kernels_left.npy", cal / "blur_kernels_right.npy")
    if all(f.is_file() for f in files):
        field = load_kernel_grid(files[0], files[1], (6, 8))
        size = int(parametric.shape[-1])
        variants = (
            ("calibrated field, recentred", field),
            ("calibrated, one uniform mean pair", uniform_field(field.mean_pair(), field.grid, source="calibration")),
            ("calibrated, each cell symmetrized", field.symmetrized()),
        )
        for name, f in variants:
            t0 = time.perf_counter()
            pk = field_kernels(f, result.radii, cfg, size)
            latent_c, _, image = likelihood_composite(views, pk, lam, window)
            rows.append(score(name, image.numpy(), gt, reference))
            if f is field:
                cells["calibrated field, recentred"] = cell_gains(image.numpy(), inp, gt)
                if gt_defocus is not None:
                    image_gt, _ = gt_defocus_choice(latent_c, gt_defocus, gt)
                    rows.append(score("calibrated field: GT defocus as layer choice", image_gt, gt, reference))
                est_ratio, cal_ratio = spread_ratios(result.patch_kernels), spread_ratios(pk)
                rho = float(np.corrcoef(est_ratio.ravel(), cal_ratio.ravel())[0, 1])
                notes.append(f"spread ratio sx_L / sx_R per cell, estimated vs calibrated: Pearson rho {rho:.3f} "
                             f"(estimated {est_ratio.min():.2f}..{est_ratio.max():.2f}, calibrated {cal_ratio.min():.2f}..{cal_ratio.max():.2f})")
            log(f"{scene.name}: {name} {time.perf_counter() - t0:.0f} s")

    for region, (y0, y1, x0, x1) in CROPS.get(scene.name, {}).items():
        norm = 1.3 * float(np.percentile(gt[y0:y1, x0:x1], 90)) or 1.0  # bright highlights may clip
        tiles = [np.clip(img[y0:y1, x0:x1] / norm, 0, 1) ** (1 / 2.2) for img in (inp, before.allinfocus[0].numpy(), final, gt)]
        gap = np.ones((y1 - y0, 4))
        strip = np.concatenate([np.concatenate([t, gap], axis=1) for t in tiles], axis=1)[:, :-4]
        path = out / f"crop_{scene.name}_{region.replace(' ', '_')}.png"
        write_png8(path, np.round(strip * 255).astype(np.uint8), overwrite=True)
    return SceneStudy(rows, cells, notes)


def cell_table(name: str, gains: np.ndarray) -> str:
    head = "| row \\ col | " + " | ".join(str(c) for c in range(gains.shape[1])) + " |\n|---|" + "---|" * gains.shape[1] + "\n"
    lines = [f"| {r} | " + " | ".join(f"{g:+.2f}" for g in gains[r]) + " |" for r in range(gains.shape[0])]
    return f"*{name}: gain dB per cell over the input*\n\n" + head + "\n".join(lines) + "\n"


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
        study = study_scene(scene, args.data, args.out, args.stage3, log)
        rows = study.rows
        text = table(scene.name, rows) + "".join("\n" + cell_table(k, v) for k, v in study.cells.items())
        text += "".join(f"\n{note}\n" for note in study.notes)
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
