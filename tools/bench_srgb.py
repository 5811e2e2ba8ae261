#!/usr/bin/env python
"""Fit DPDD-like sRGB pairs two ways and print the restoration gain of each, side by side.

Each scene is what ``edgedp synth --transfer srgb`` writes (front+back focus, rendered in linear
light, views stored as 8-bit sRGB, ground truth as sRGB), fitted

* **srgb**: as ``edgedp fit --transfer srgb`` (``auto`` picks it for 8-bit files): the views are
  decoded to linear light (IEC 61966-2-1), fitted, and the all-in-focus image is encoded back;
* **encoded**: as ``edgedp fit --transfer linear``: the encoded values are fitted as if they were
  linear (what edgedp did before issue 11).

Scores: PSNR (data range 1) of each all-in-focus image against the sRGB ground truth, in the
encoded domain where DPDD is scored, minus the input's ((left + right) / 2 of the 8-bit views).
The table lists per scene the input PSNR, both gains and their difference (srgb - encoded), then
the means.  Fits run in this process with the given preset and stage-2 steps.

    .venv/bin/python tools/bench_srgb.py --scenes 4 --size 97x131 --iterations 40
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def compare_scene(folder: Path, iterations: int, preset: str = "fast") -> dict:
    """Fit the pair in ``folder`` (written by ``edgedp synth --transfer srgb``) both ways.

    Returns ``{"input", "srgb", "encoded"}`` PSNRs (dB) against ``gt_allinfocus.png`` in the
    encoded domain."""
    import dataclasses

    from edgedp import fit as fit_module
    from edgedp.fit import preset_config
    from edgedp.io import ReadOptions, read_dp_pair, read_image
    from edgedp.io import linear_to_srgb

    gt_codes, _ = read_image(folder / "gt_allinfocus.png")
    gt = gt_codes / 65535.0
    config = dataclasses.replace(preset_config(preset), stage2_iterations=iterations)
    scores = {}
    encoded = read_dp_pair(folder / "left.png", folder / "right.png", ReadOptions(transfer="linear"))
    scores["input"] = psnr(((encoded.left + encoded.right) / 2)[0].numpy(), gt)
    for name, transfer in (("srgb", "srgb"), ("encoded", "linear")):
        pair = read_dp_pair(folder / "left.png", folder / "right.png", ReadOptions(transfer=transfer))
        result = fit_module.fit_scene(pair.left, pair.right, config)
        out = result.allinfocus[0].clamp(0, 1).numpy().astype(np.float64)
        scores[name] = psnr(linear_to_srgb(out) if transfer == "srgb" else out, gt)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=4, help="number of scenes (seeds 1..N)")
    parser.add_argument("--size", default="97x131", help="scene size HxW")
    parser.add_argument("--max-radius", type=float, default=5.0, help="largest blur radius of the scenes (px)")
    parser.add_argument("--iterations", type=int, default=40, help="stage-2 steps of each fit")
    parser.add_argument("--out", type=Path, default=Path("out/bench_srgb"), help="where the scenes are written")
    args = parser.parse_args(argv)

    import torch
    from typer.testing import CliRunner

    from edgedp.cli import app

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    print("| scene | input dB | srgb gain | encoded gain | srgb - encoded |")
    print("|---|---|---|---|---|")
    for seed in range(1, args.scenes + 1):
        folder = args.out / f"scene{seed}"
        made = CliRunner().invoke(app, ["synth", "-o", str(folder), "--transfer", "srgb", "--size", args.size,
                                        "--seed", str(seed), "--max-radius", str(args.max_radius), "--overwrite"])
        if made.exit_code != 0:
            print(made.output, file=sys.stderr)
            return 2
        s = compare_scene(folder, args.iterations)
        rows.append(s)
        print(f"| {seed} | {s['input']:.2f} | {s['srgb'] - s['input']:+.2f} | {s['encoded'] - s['input']:+.2f} | "
              f"{s['srgb'] - s['encoded']:+.2f} |", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("input", "srgb", "encoded")}
    print(f"| mean | {mean['input']:.2f} | {mean['srgb'] - mean['input']:+.2f} | {mean['encoded'] - mean['input']:+.2f} | "
          f"{mean['srgb'] - mean['encoded']:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
