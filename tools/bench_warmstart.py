#!/usr/bin/env python
"""Leave-one-out benchmark of device profiles: cold fit, warm fit and instant prediction.

For every left-out scene ``S`` of ``--data`` (the Pixel 4 dev scenes), all in subprocesses,
exactly as a user runs them, one after the other (so the three timings of a scene share the
machine's state and compare as ratios):

1. ``edgedp tune`` on the OTHER scenes -> ``OUT/S/PHONE.profile`` (no ground truth is used;
   tuning time is printed but is not a target: it is paid once per phone);
2. cold: ``edgedp fit S --preset P`` (no profile);
3. warm: ``edgedp fit S --preset P --profile PHONE.profile`` (G_D, kernel shape and
   radius-per-disparity from the profile, the warm preset's stage 2 steps);
4. ``edgedp export PHONE.profile -o OUT/S/export`` (gd.onnx + kernels; not timed as a target);
5. instant: ``python -m edgedp_runtime instant OUT/S/export LEFT RIGHT ... --provider cpu`` (the
   ``edgedp-runtime`` command: ONNX Runtime + numpy, no optimization, no PyTorch).

Every run gets the data README's input settings (black 1024, white 16383, white-sheet flat
field, centred 1008x1344 crop) and is scored with the README's protocol (registered PSNR /
SSIM, ``edgedp.metrics.evaluate``) against ``gt_all_in_focus``; the input baseline is
``(left + right) / 2``.  Wall times are those of the subprocess (python start-up included).

Targets (issue 5), per left-out scene: warm PSNR >= cold PSNR - 0.1 dB and warm wall <= cold
wall / 3; instant PSNR > input PSNR and instant wall <= 10 s.

Prints a markdown table and the targets (PASS / FAIL); writes it to ``OUT/bench_warmstart.md``
and all numbers to ``OUT/bench_warmstart.json``.  Exit status 0 (failed targets are reported,
not an error, unless ``--strict``: then 3), 1 when a run fails, 2 for bad arguments or data.

Example::

    .venv/bin/python tools/bench_warmstart.py --data ../shared/data/pixel4
    .venv/bin/python tools/bench_warmstart.py --data ../shared/data/pixel4 --scenes 001 --preset fast
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgedp.errors import EdgedpError
from edgedp.eval import pixel4, runs  # the Pixel 4 protocol; timed fit subprocesses
from edgedp.io import parse_size, write_json
from edgedp.metrics import ProtocolScores, evaluate

REPO = Path(__file__).resolve().parents[1]
WARM_SPEEDUP = 3.0
WARM_TOLERANCE_DB = 0.1
INSTANT_SECONDS = 10.0


@dataclass(frozen=True)
class Run:
    """One timed, scored subprocess: ``scores`` is None for runs that produce no image."""

    name: str
    wall_s: float
    peak_rss_gib: float
    scores: ProtocolScores | None = None

    @property
    def psnr(self) -> float:
        return float("nan") if self.scores is None else self.scores.registered.psnr


def commands(edgedp: Path, scene: pixel4.Scene, others: Sequence[pixel4.Scene], data: Path, out: Path,
             preset: str, tune_preset: str, crop: tuple[int, int]) -> dict[str, list[str]]:
    """The five commands of one left-out scene (see the module docstring)."""
    inputs = pixel4.input_args(data, crop)
    profile = out / "PHONE.profile"
    pair = [str(scene.left), str(scene.right)]
    return {
        "tune": [str(edgedp), "tune", *[f"{o.left},{o.right}" for o in others], "-o", str(profile),
                 "--name", f"pixel4-without-{scene.name}", "--preset", tune_preset, *inputs, "--overwrite"],
        "cold": [str(edgedp), "fit", *pair, "-o", str(out / "cold"), "--preset", preset, *inputs, "--overwrite"],
        "warm": [str(edgedp), "fit", *pair, "-o", str(out / "warm"), "--preset", preset, "--profile", str(profile),
                 *inputs, "--overwrite"],
        "export": [str(edgedp), "export", str(profile), "-o", str(out / "export"), "--overwrite"],
        "instant": [sys.executable, "-m", "edgedp_runtime", "instant", str(out / "export"), *pair,
                    *inputs, "-o", str(out / "instant"), "--provider", "cpu", "--overwrite"],
    }  # fmt: skip


def _cell(value: float, digits: int = 3) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    header = ["scene", "cold PSNR", "warm PSNR", "instant PSNR", "input PSNR", "cold SSIM", "warm SSIM",
              "instant SSIM", "input SSIM", "cold s", "warm s", "instant s", "warm / cold", "tune s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        runs: dict[str, Run] = r["runs"]
        ssim = {k: (runs[k].scores.registered.ssim if runs[k].scores else float("nan")) for k in ("cold", "warm", "instant")}
        lines.append("| " + " | ".join([
            r["scene"], _cell(runs["cold"].psnr), _cell(runs["warm"].psnr), _cell(runs["instant"].psnr),
            _cell(r["input"].registered.psnr), _cell(ssim["cold"], 4), _cell(ssim["warm"], 4), _cell(ssim["instant"], 4),
            _cell(r["input"].registered.ssim, 4), _cell(runs["cold"].wall_s, 1), _cell(runs["warm"].wall_s, 1),
            _cell(runs["instant"].wall_s, 1), _cell(runs["warm"].wall_s / runs["cold"].wall_s, 2),
            _cell(runs["tune"].wall_s, 0),
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """(name, passed, detail) for each of the issue's targets over all left-out scenes."""
    out = []
    gap = [(r["scene"], r["runs"]["warm"].psnr - r["runs"]["cold"].psnr) for r in rows]
    out.append((f"warm PSNR >= cold - {WARM_TOLERANCE_DB} dB on every scene",
                all(g >= -WARM_TOLERANCE_DB for _, g in gap), ", ".join(f"{s} {g:+.3f}" for s, g in gap)))
    ratio = [(r["scene"], r["runs"]["warm"].wall_s / r["runs"]["cold"].wall_s) for r in rows]
    out.append((f"warm wall <= cold wall / {WARM_SPEEDUP:g} on every scene",
                all(x <= 1 / WARM_SPEEDUP for _, x in ratio), ", ".join(f"{s} {x:.2f}" for s, x in ratio)))
    gain = [(r["scene"], r["runs"]["instant"].psnr - r["input"].registered.psnr) for r in rows]
    out.append(("instant PSNR > input PSNR on every scene", all(g > 0 for _, g in gain),
                ", ".join(f"{s} {g:+.3f}" for s, g in gain)))
    wall = [(r["scene"], r["runs"]["instant"].wall_s) for r in rows]
    out.append((f"instant wall <= {INSTANT_SECONDS:g} s on every scene", all(x <= INSTANT_SECONDS for _, x in wall),
                ", ".join(f"{s} {x:.1f} s" for s, x in wall)))
    return out


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="Pixel 4 data folder (NNN_left/right.png, gt_all_in_focus/)")
    p.add_argument("--scenes", default="", help="left-out scenes, comma-separated (default: all); tuning always uses all others")
    p.add_argument("--preset", default="default", choices=("fast", "default", "best"), help="preset of the cold and warm fits")
    p.add_argument("--tune-preset", default="default", choices=("fast", "default", "best"), help="preset of the G_D fits in tune")
    p.add_argument("--crop", default="1008x1344", help="centred crop HxW (the protocol's)")
    p.add_argument("--out", type=Path, default=Path("out") / "bench_warmstart", help="output folder")
    p.add_argument("--edgedp", type=Path, default=Path(sys.executable).with_name("edgedp"), help="edgedp executable")
    p.add_argument("--reuse-profiles", action="store_true", help="skip tune where OUT/S/PHONE.profile exists")
    p.add_argument("--quiet", action="store_true", help="do not echo the runs' output")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target fails")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        crop = parse_size(args.crop, what="--crop")
        every = pixel4.discover_scenes(args.data)
        selected = [s.strip() for s in args.scenes.split(",") if s.strip()]
        left_out = pixel4.discover_scenes(args.data, selected) if selected else every
        if len(every) < 2:
            raise EdgedpError(f"{args.data}: leave-one-out needs at least 2 scenes")
        gts, inputs = pixel4.scene_references(left_out, args.data, crop)
    except EdgedpError as err:
        runs.say(f"error: {err}")
        return runs.EXIT_USAGE

    rows: list[dict[str, Any]] = []
    for index, scene in enumerate(left_out, 1):
        out = args.out / scene.name
        others = [s for s in every if s.name != scene.name]
        cmds = commands(args.edgedp, scene, others, args.data, out, args.preset, args.tune_preset, crop)
        runs.say(f"[{index}/{len(left_out)}] leave out {scene.name}, tune on {', '.join(o.name for o in others)}")
        done: dict[str, Run] = {}
        try:
            for step in ("tune", "cold", "warm", "export", "instant"):
                if step == "tune" and args.reuse_profiles and (out / "PHONE.profile").is_file():
                    done[step] = Run(step, float("nan"), float("nan"))
                    continue
                image = {"cold": out / "cold", "warm": out / "warm", "instant": out / "instant"}.get(step)
                if image is not None:  # a stale result must not pass for this run's
                    (image / "allinfocus.png").unlink(missing_ok=True)
                run = runs.run_step(step, cmds[step], out, args.quiet)
                scores = None
                if image is not None:
                    output = pixel4.read_output(image / "allinfocus.png", gts[scene.name].shape)
                    scores = evaluate(output, gts[scene.name], max_shift=pixel4.MAX_SHIFT)
                done[step] = Run(step, run.wall_s, run.peak_rss_gib, scores)
                runs.say(f"  {step}: {run.wall_s:.1f} s" + (f", PSNR {scores.registered.psnr:.3f}" if scores else ""))
        except runs.FitFailed as err:
            runs.say(f"\nscene {scene.name}: {err}")
            if err.log_tail:
                runs.say(err.log_tail)
            return runs.EXIT_FIT_FAILED
        rows.append({"scene": scene.name, "input": inputs[scene.name], "runs": done})
        runs.say(table(rows[-1:]))

    checks = targets(rows)
    text = "\n\n".join([
        f"Leave-one-out device profiles on {args.data} (fits --preset {args.preset}, tune --preset {args.tune_preset}; "
        f"registered PSNR dB / SSIM, wall s)",
        table(rows),
        "\n".join(f"- {'PASS' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in checks),
    ])  # fmt: skip
    print(text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_warmstart.md").write_text(text + "\n")
    payload = {
        "settings": {"data": str(args.data), "preset": args.preset, "tune_preset": args.tune_preset, "crop": list(crop)},
        "scenes": [
            {
                "scene": r["scene"],
                "input": {"psnr": r["input"].registered.psnr, "ssim": r["input"].registered.ssim},
                **{k: {"wall_s": v.wall_s, "peak_rss_gib": v.peak_rss_gib,
                       **({"psnr": v.scores.registered.psnr, "ssim": v.scores.registered.ssim,
                           "raw_psnr": v.scores.raw.psnr} if v.scores else {})}
                   for k, v in r["runs"].items()},
            }
            for r in rows
        ],
        "targets": [{"name": n, "passed": ok, "detail": d} for n, ok, d in checks],
    }  # fmt: skip
    write_json(args.out / "bench_warmstart.json", payload, overwrite=True)
    if args.strict and not all(ok for _, ok, _ in checks):
        return runs.EXIT_TARGETS
    return runs.EXIT_OK


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, runs.exit_on_sigterm)
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        runs.say("interrupted")
        raise SystemExit(130) from None
