#!/usr/bin/env python
"""Side by side: the artifact figures of finished ``tools/bench_pixel.py`` runs on the Pixel 4 dev scenes.

For every scene and every ``--runs`` folder (``OUT`` of a bench_pixel run, holding
``OUT/NNN/allinfocus.png``) it prints the registered PSNR gain over the input and the two
artifact energies of ``tools/study_quality.py``, relative to the input's (1.0 = as the blurry
input; :func:`edgedp.metrics.streak_energy` in flat regions, :func:`edgedp.metrics.bead_energy`
along strong vertical edges).  Nothing is fitted: it reads the outputs.

Usage::

    .venv/bin/python tools/compare_artifacts.py --data ../shared/data/pixel4 --runs out/q_fast out/q_default
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from edgedp.eval import pixel4
from edgedp.io import parse_size
from edgedp.metrics import evaluate


def energies(image, gt) -> tuple[float, float, float]:
    """(registered PSNR, streak energy, bead energy) of ``image`` against ``gt``."""
    s = evaluate(image, gt, max_shift=pixel4.MAX_SHIFT).registered
    return (s.psnr, *pixel4.residual_artifacts(image, gt, s.shift))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="bench_pixel output folders")
    p.add_argument("--scenes", default="", help="comma-separated scene names (default: all)")
    p.add_argument("--crop", default="1008x1344")
    args = p.parse_args(argv)
    crop = parse_size(args.crop, what="--crop")
    selected = [s.strip() for s in args.scenes.split(",") if s.strip()]
    options = pixel4.read_options(args.data, crop)
    print("| scene | run | gain dB | streaks | beads |")
    print("|---|---|---|---|---|")
    for scene in pixel4.discover_scenes(args.data, selected or None):
        gt = pixel4.read_gt(scene, crop)
        psnr_in, streaks_in, beads_in = energies(pixel4.input_baseline(scene, options), gt)
        for run in args.runs:
            path = run / scene.name / "allinfocus.png"
            if not path.is_file():
                print(f"| {scene.name} | {run} | - | - | - |")
                continue
            psnr, streaks, beads = energies(pixel4.read_output(path, gt.shape), gt)
            print(f"| {scene.name} | {run} | {psnr - psnr_in:+.3f} | {streaks / streaks_in:.2f} | {beads / beads_in:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
