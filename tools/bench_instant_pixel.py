#!/usr/bin/env python
"""The instant path on the Pixel 4 dev scenes: quality and per-call time, mean kernels vs the field.

One device profile is tuned on the selected scenes (``edgedp tune``, no ground truth), exported
twice (``edgedp export PHONE.profile``: the kernel field, the default, its cells grouped by kernel;
and with ``--instant-mean-kernels``: the field's mean kernels), and every scene is predicted by both exports with
``python -m edgedp_runtime instant ... --provider cpu --repeat N`` (ONNX Runtime + numpy, no
PyTorch).  Each prediction is scored with the data README's protocol (registered PSNR / SSIM
against ``gt_all_in_focus``; input baseline ``(left + right) / 2``); its time is the per-call
time the runtime prints (``--repeat``: the minimum over the calls after the first; with 1 call,
that call), i.e. G_D + Stage 1 + fusion (+ a TV step if the export asks for one), without start-up or file I/O.  Both
exports run back to back per scene, so their times compare as ratios on a shared machine.

Targets (issue 16): with the profile tuned on the dev scenes, mean gain >= +1.3 dB and <= 3 s
per call.

Usage::

    .venv/bin/python tools/bench_instant_pixel.py --data ../shared/data/pixel4 [--repeat 3]
        [--scenes 001,004] [--out out/bench_instant_pixel] [--reuse-profile]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Sequence

from edgedp.errors import EdgedpError
from edgedp.eval import pixel4, runs
from edgedp.io import parse_size
from edgedp.metrics import evaluate

#: The issue's targets.
GAIN_DB = 1.3
CALL_SECONDS = 3.0
#: The runtime's ``--repeat`` line (edgedp_runtime.device_io.timed).
TIMING = re.compile(r"time instant \(gd \+ latent \+ fuse\): (?:(?P<one>[\d.]+) ms|first [\d.]+ ms, then mean [\d.]+ ms, min (?P<min>[\d.]+) ms)")
EXPORTS = {"mean kernels": ["--instant-mean-kernels"], "field": []}


def call_seconds(log: Path) -> float:
    """The per-call time of an ``instant --repeat`` run from its log."""
    match = TIMING.search(log.read_text(errors="replace"))
    if match is None:
        raise runs.FitFailed(f"no timing line in {log}", runs.log_tail(log))
    return float(match["one"] or match["min"]) / 1000


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--scenes", default="", help="comma-separated scene names (default: all)")
    p.add_argument("--out", type=Path, default=Path("out/bench_instant_pixel"))
    p.add_argument("--crop", default="1008x1344")
    p.add_argument("--repeat", type=int, default=3, help="instant calls per prediction (the minimum after the first is its time)")
    p.add_argument("--tune-preset", default="default", choices=("fast", "default", "best"), help="preset of the G_D fits in tune (as edgedp tune's default)")
    p.add_argument("--edgedp", type=Path, default=Path(sys.executable).with_name("edgedp"))
    p.add_argument("--reuse-profile", action="store_true", help="skip tune where OUT/PHONE.profile exists")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        crop = parse_size(args.crop, what="--crop")
        selected = [s.strip() for s in args.scenes.split(",") if s.strip()]
        scenes = pixel4.discover_scenes(args.data, selected or None)
        gts, inputs = pixel4.scene_references(scenes, args.data, crop)
    except EdgedpError as err:
        runs.say(f"error: {err}")
        return runs.EXIT_USAGE
    protocol = pixel4.input_args(args.data, crop)
    profile = args.out / "PHONE.profile"
    rows = []
    try:
        if not (args.reuse_profile and profile.is_file()):
            runs.say(f"tune on {', '.join(s.name for s in scenes)}")
            tuned = runs.run_step("tune", [str(args.edgedp), "tune", *[f"{s.left},{s.right}" for s in scenes], "-o", str(profile),
                                 "--name", "pixel4-dev", "--preset", args.tune_preset, *protocol, "--overwrite"], args.out, args.quiet)
            runs.say(f"  tune: {tuned.wall_s:.0f} s")
        for kind, flags in EXPORTS.items():
            folder = args.out / f"export-{kind.replace(' ', '-')}"
            runs.run_step(f"export-{kind}", [str(args.edgedp), "export", str(profile), "-o", str(folder), *flags, "--overwrite"], args.out, args.quiet)
        for scene in scenes:
            row = {"scene": scene.name, "input": inputs[scene.name].registered.psnr}
            for kind in EXPORTS:
                tag = kind.replace(" ", "-")
                result = args.out / scene.name / tag
                (result / "allinfocus.png").unlink(missing_ok=True)
                log_name = f"{scene.name}-{tag}"
                runs.run_step(log_name, [sys.executable, "-m", "edgedp_runtime", "instant", str(args.out / f"export-{tag}"),
                               str(scene.left), str(scene.right), *protocol, "-o", str(result), "--provider", "cpu",
                               "--repeat", str(args.repeat), "--overwrite"], args.out, args.quiet)
                scores = evaluate(pixel4.read_output(result / "allinfocus.png", gts[scene.name].shape), gts[scene.name],
                                  max_shift=pixel4.MAX_SHIFT)
                row[kind] = {"psnr": scores.registered.psnr, "ssim": scores.registered.ssim,
                             "seconds": call_seconds(args.out / "logs" / f"{log_name}.log")}
                runs.say(f"{scene.name} {kind}: {row[kind]['psnr'] - row['input']:+.3f} dB, {row[kind]['seconds']:.2f} s per call")
            rows.append(row)
    except runs.FitFailed as err:
        runs.say(f"error: {err}")
        if err.log_tail:
            runs.say(err.log_tail)
        return 1
    lines = ["| scene | input PSNR | " + " | ".join(f"{k} gain dB | {k} SSIM | {k} s/call" for k in EXPORTS) + " |",
             "|---|---|" + "---|---|---|" * len(EXPORTS)]
    for r in rows:
        lines.append(f"| {r['scene']} | {r['input']:.3f} | " + " | ".join(
            f"{r[k]['psnr'] - r['input']:+.3f} | {r[k]['ssim']:.4f} | {r[k]['seconds']:.2f}" for k in EXPORTS) + " |")
    means = {k: sum(r[k]["psnr"] - r["input"] for r in rows) / len(rows) for k in EXPORTS}
    worst = {k: max(r[k]["seconds"] for r in rows) for k in EXPORTS}
    lines.append("| mean | | " + " | ".join(f"{means[k]:+.3f} | | {worst[k]:.2f} (max)" for k in EXPORTS) + " |")
    lines.append("")
    for k in EXPORTS:
        ok = means[k] >= GAIN_DB and worst[k] <= CALL_SECONDS
        lines.append(f"- {'PASS' if ok else 'FAIL'}  {k}: mean gain {means[k]:+.3f} dB (>= +{GAIN_DB}), "
                     f"max {worst[k]:.2f} s per call (<= {CALL_SECONDS:g})")
    report = "\n".join(lines)
    print(report)
    (args.out / "bench_instant_pixel.md").write_text(report + "\n")
    (args.out / "bench_instant_pixel.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
