#!/usr/bin/env python
"""Peak memory and wall time of ``edgedp fit`` against the image size, under one memory budget.

Synthesizes one DP scene (:func:`edgedp.synth.make_scene`, gray, blur behind the focal plane)
and mirror-tiles it (views swapped at column mirrors) to each size of ``--sizes`` (megapixels, 4:3 frames; mirroring keeps the
views continuous and the DP disparity what it was), writes each pair as float32 ``.npy`` views
into a temporary folder, then runs each ``edgedp fit`` as a user does -- in a subprocess
(``python -m edgedp fit``), with ``--max-memory`` (default 4 GiB), ``--preset fast`` and
``--iterations`` -- and prints one markdown row per size:

* MP, frame size, whether the fit was tiled and into how many tiles (report.json's ``memory``);
* wall s of the whole command (reading, fitting, writing the outputs and the bundle);
* peak RSS GiB of the child: ``ru_maxrss`` from ``os.wait4`` and report.json's ``peak_rss``
  (``VmHWM`` at the end of the fit; the first includes writing the outputs after it);
* the bundle's ``scene.npz`` in MB and MB per megapixel.

The budget must hold with the peak flat in the image size once tiling starts (the tiled fit
keeps only per-pixel outputs and one tile's work in memory; latent / weights go to float16
disk arrays when they do not fit a quarter of the budget).

    .venv/bin/python tools/bench_memory.py --sizes 1,4,16 --max-memory 4 --iterations 40
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def frame_size(megapixels: float) -> tuple[int, int]:
    """A 4:3 frame of about ``megapixels`` MP (height, width), both even."""
    h = int(round(math.sqrt(megapixels * 1e6 * 3 / 4) / 2)) * 2
    return h, int(round(h * 4 / 3 / 2)) * 2


def mirror_tile(left: np.ndarray, right: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The pair (h, w) repeated by mirroring to ``height x width``.  Rows mirror as they are; a
    column mirror also swaps the views (a horizontal flip alone would flip the sign of the DP
    disparity; flipped and swapped, each view's kernel keeps its side, CONVENTIONS.md)."""
    h, w = left.shape
    reps_y, reps_x = math.ceil(height / h), math.ceil(width / w)

    def rows(view: np.ndarray) -> np.ndarray:
        return np.concatenate([view if k % 2 == 0 else view[::-1] for k in range(reps_y)], axis=0)

    lrows, rrows = rows(left), rows(right)
    out_left = np.concatenate([lrows if k % 2 == 0 else rrows[:, ::-1] for k in range(reps_x)], axis=1)
    out_right = np.concatenate([rrows if k % 2 == 0 else lrows[:, ::-1] for k in range(reps_x)], axis=1)
    crop = (slice(0, height), slice(0, width))
    return (np.ascontiguousarray(out_left[crop], dtype=np.float32),
            np.ascontiguousarray(out_right[crop], dtype=np.float32))


def base_scene(seed: int, max_radius: float) -> tuple[np.ndarray, np.ndarray]:
    from edgedp.synth import SynthConfig, make_scene  # noqa: PLC0415

    scene = make_scene(SynthConfig(size=(480, 640), max_radius=max_radius, seed=seed))
    return scene.left.numpy(), scene.right.numpy()


def run_fit(left: Path, right: Path, out: Path, args) -> dict:
    cmd = [sys.executable, "-m", "edgedp", "fit", str(left), str(right), "-o", str(out), "--preset", args.preset,
           "--max-memory", f"{args.max_memory:g}", "--overwrite"]
    if args.iterations:
        cmd += ["--iterations", str(args.iterations)]
    out.mkdir(parents=True, exist_ok=True)
    log_out, log_err = out.parent / "fit.stdout", out.parent / "fit.stderr"
    t0 = time.perf_counter()
    with open(log_out, "w") as so, open(log_err, "w") as se:
        child = subprocess.Popen(cmd, stdout=so, stderr=se)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage (ru_maxrss), not all children's
    wall = time.perf_counter() - t0
    child.returncode = rc = os.waitstatus_to_exitcode(status)
    stdout, stderr = log_out.read_text(), log_err.read_text()
    row = {"rc": rc, "wall_s": wall, "stderr": stderr.strip().splitlines()[-1:] if rc else []}
    if usage.ru_maxrss:
        row["ru_maxrss_gib"] = usage.ru_maxrss * 1024 / GIB  # KiB on Linux
    report_path = out / "report.json"
    if rc == 0 and report_path.is_file():
        report = json.loads(report_path.read_text())
        memory = report.get("memory") or {}
        row.update(
            tiled=bool(memory.get("tiled")), tiles=int(memory.get("tiles", 1) or 1),
            peak_rss_gib=report["peak_rss_bytes"] / GIB, fit_s=report["seconds"]["total"],
            bundle_mb=(out / "scene" / "scene.npz").stat().st_size / 1e6,
        )
    row["stdout"] = stdout
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.1,1,4,16,30", help="comma-separated megapixels (0.1: the smallest frames, where the fixed base dominates)")
    parser.add_argument("--max-memory", type=float, default=4.0, help="the fits' --max-memory (GiB)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--iterations", default=None, help="the fits' --iterations (default: the preset's)")
    parser.add_argument("--max-radius", type=float, default=4.0, help="largest blur radius of the scene (px)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the pairs and outputs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the pairs and outputs")
    args = parser.parse_args(argv)
    try:
        sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print(f"error: --sizes {args.sizes!r}: expected comma-separated megapixels, e.g. 1,4,16", file=sys.stderr)
        return 2
    if not sizes or any(s <= 0 for s in sizes):
        print("error: --sizes must list positive megapixels", file=sys.stderr)
        return 2

    scratch = Path(tempfile.mkdtemp(prefix="edgedp-bench-memory-", dir=args.scratch))
    left0, right0 = base_scene(args.seed, args.max_radius)
    print(f"edgedp fit --preset {args.preset} --max-memory {args.max_memory:g}"
          f"{' --iterations ' + args.iterations if args.iterations else ''}; gray, max radius {args.max_radius:g} px, "
          f"{os.cpu_count()} cores, torch threads default")
    print()
    print("| MP | frame | tiled | tiles | wall s | fit s | peak RSS GiB (ru_maxrss) | peak RSS GiB (report) | bundle MB | MB/MP |")
    print("|---:|---|:---:|---:|---:|---:|---:|---:|---:|---:|")
    failed = False
    try:
        for mp in sizes:
            h, w = frame_size(mp)
            folder = scratch / f"{mp:g}mp"
            folder.mkdir()
            left, right = folder / "left.npy", folder / "right.npy"
            views = mirror_tile(left0, right0, h, w)
            np.save(left, views[0])
            np.save(right, views[1])
            del views
            row = run_fit(left, right, folder / "out", args)
            real_mp = h * w / 1e6
            if row["rc"] != 0:
                failed = True
                print(f"| {real_mp:.1f} | {h}x{w} | failed (exit {row['rc']}): {' '.join(row['stderr'])} |")
                continue
            print(f"| {real_mp:.1f} | {h}x{w} | {'yes' if row['tiled'] else 'no'} | {row['tiles']} | {row['wall_s']:.0f} "
                  f"| {row['fit_s']:.0f} | {row.get('ru_maxrss_gib', float('nan')):.2f} | {row['peak_rss_gib']:.2f} "
                  f"| {row['bundle_mb']:.0f} | {row['bundle_mb'] / real_mp:.1f} |", flush=True)
            left.unlink()
            right.unlink()
            if not args.keep:
                import shutil  # noqa: PLC0415

                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.keep:
            import shutil  # noqa: PLC0415

            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"\nkept {scratch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
