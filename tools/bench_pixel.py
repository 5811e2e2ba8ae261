#!/usr/bin/env python
"""Benchmark ``edgedp fit`` on the Pixel 4 dev scenes under the data README's protocol.

For every scene ``NNN`` of ``--data`` (``NNN_left.png``, ``NNN_right.png`` and
``gt_all_in_focus/NNN_gt.png``) the fit runs in a subprocess exactly as issue 3 fixes it::

    edgedp fit DATA/NNN_left.png DATA/NNN_right.png -o OUT/NNN --black-level 1024 \\
        --white-level 16383 --flat-field DATA/calibration/white_sheet_left.png \\
        DATA/calibration/white_sheet_right.png --crop 1008x1344 --preset P --overwrite [EXTRA]

one scene at a time, under a bare Python wrapper that reaps it with ``os.wait4`` and reports its
wall time and peak RSS (``ru_maxrss`` of the fit and the descendants it waited for; the fit's
RSS high-water mark starts from the small wrapper's, not from this process with torch loaded).
A stale ``OUT/NNN/allinfocus.png`` is deleted first.  The fit's stdout and stderr (progress
bars) go to ``OUT/logs/NNN.log`` and, unless ``--quiet``, to stderr.

Scoring (``edgedp.metrics.evaluate``, registered = headline, raw beside it):

* ours: ``OUT/NNN/allinfocus.png`` read with ``read_normalized`` (``png / 65535``);
* input baseline: ``(left + right) / 2`` after protocol steps 1-2 (``read_dp_pair`` with black
  1024, white 16383, the white-sheet flat field and the centred crop);
* ground truth: ``read_normalized(gt)`` (``gt / 65535``), which must have the crop's size.

Prints a markdown table (scene | ours registered PSNR / SSIM / MAE / shift | input registered
PSNR / SSIM / MAE | gain dB | ours raw PSNR / SSIM | input raw PSNR | wall s | peak RSS GiB, a
mean row), the median wall time and max peak RSS, and the issue's targets for the preset with
PASS / FAIL each:

* ``default``: mean registered PSNR >= input mean + 1.0 dB; every scene's registered PSNR and
  SSIM above its input's; median wall <= 600 s; max peak RSS <= 8 GiB.
* ``fast``: every scene's registered PSNR above its input's; median wall <= 120 s.
* ``best`` (the issue sets none): default's quality and memory targets, no time limit.

Writes the same markdown to ``--markdown`` (default ``OUT/bench_pixel_<preset>.md``) and all
numbers to ``--json`` (default ``OUT/bench_pixel_<preset>.json``; written with
``edgedp.io.writers.write_json``, so an infinite PSNR, i.e. an exact copy, is the token ``Infinity``).

``--baseline-only`` runs no fit: it scores the input baseline and prints the data README's
table (registered PSNR / SSIM / MAE / shift, raw PSNR / SSIM), a check of the loading and
scoring path; files ``OUT/bench_pixel_baseline.{md,json}``.

Exit status: 0 done (failed targets are reported, not an error, unless ``--strict``); 1 a fit
failed or wrote no usable ``allinfocus.png`` (its last log lines are shown, later scenes are not
run); 2 bad arguments or data; 3 ``--strict`` and a target failed.

The protocol (scenes, steps 1-2, ground truth, input baseline, scores over scenes) is
:mod:`edgedp.eval.pixel4`; the timed fit subprocess :mod:`edgedp.eval.runs`.

Examples::

    .venv/bin/python tools/bench_pixel.py --data ../shared/data/pixel4 --baseline-only
    .venv/bin/python tools/bench_pixel.py --data ../shared/data/pixel4 --preset fast
    .venv/bin/python tools/bench_pixel.py --data ../shared/data/pixel4 --preset default \\
        --scenes 001,004 --extra "--seed 1" --out out/bench_default_seed1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgedp import __version__
from edgedp.errors import EdgedpError, InputError
from edgedp.eval.pixel4 import (
    BLACK_LEVEL, DEFAULT_CROP, MAX_SHIFT, PRESETS, WHITE_LEVEL, SceneResult, discover_scenes, fit_command,
    input_baseline, read_gt, read_options, read_output, summarize,
)
from edgedp.eval.runs import (
    EXIT_FIT_FAILED, EXIT_OK, EXIT_TARGETS, EXIT_USAGE, FitFailed, exit_on_sigterm, log_tail, run_fit, say,
)
from edgedp.io import parse_size, write_json
from edgedp.metrics import ProtocolScores, Scores, evaluate

# --------------------------------------------------------------------------------------------
# Targets, tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One issue target: what, the measured value against the bound, and the verdict."""

    name: str
    measured: str
    passed: bool


def _every_scene(results: Sequence[SceneResult], key: Callable[[ProtocolScores], float]) -> bool:
    return all(r.ours is not None and key(r.ours) > key(r.input) for r in results)


def _count_above(results: Sequence[SceneResult], key: Callable[[ProtocolScores], float]) -> str:
    above = sum(1 for r in results if r.ours is not None and key(r.ours) > key(r.input))
    below = [r.name for r in results if not (r.ours is not None and key(r.ours) > key(r.input))]
    return f"{above}/{len(results)}" + (f" (not: {', '.join(below)})" if below else "")


def check_targets(preset: str, results: Sequence[SceneResult]) -> list[Target]:
    """Issue 3's targets for ``preset`` (module docstring), evaluated on ``results``."""
    summary = summarize(results)
    targets: list[Target] = []
    if preset in ("default", "best"):
        ours = summary.ours_reg.psnr if summary.ours_reg else math.nan
        bound = summary.input_reg.psnr + 1.0
        targets.append(
            Target(
                "mean registered PSNR >= input mean + 1.0 dB",
                f"{_fmt(ours, 3)} vs {_fmt(bound, 3)} dB",
                ours >= bound,
            )
        )
    psnr_key: Callable[[ProtocolScores], float] = lambda s: s.registered.psnr  # noqa: E731
    ssim_key: Callable[[ProtocolScores], float] = lambda s: s.registered.ssim  # noqa: E731
    targets.append(
        Target(
            "every scene: registered PSNR above its input",
            _count_above(results, psnr_key),
            _every_scene(results, psnr_key),
        )
    )
    if preset in ("default", "best"):
        targets.append(
            Target(
                "every scene: registered SSIM above its input",
                _count_above(results, ssim_key),
                _every_scene(results, ssim_key),
            )
        )
    wall_limit = {"default": 600.0, "fast": 120.0}.get(preset)
    if wall_limit is not None:
        targets.append(
            Target(
                f"median wall time <= {wall_limit:g} s",
                f"{_fmt(summary.median_wall_s, 1)} s",
                summary.median_wall_s <= wall_limit,
            )
        )
    if preset in ("default", "best"):
        targets.append(
            Target(
                "peak RSS <= 8 GiB (max over scenes)",
                f"{_fmt(summary.max_peak_rss_gib, 2)} GiB",
                summary.max_peak_rss_gib <= 8.0,
            )
        )
    return targets


def _fmt(value: float | None, digits: int, *, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return ("+inf" if signed else "inf") if value > 0 else "-inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _shift(shift: tuple[int, int]) -> str:
    return f"{shift[0]}, {shift[1]}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def baseline_table(results: Sequence[SceneResult]) -> str:
    """The data README's baseline table for the input of ``results``."""
    header = ["scene", "registered PSNR", "SSIM", "MAE", "shift (dy, dx)", "raw PSNR", "raw SSIM"]
    rows = []
    for r in results:
        reg, raw = r.input.registered, r.input.raw
        rows.append(
            [r.name, _fmt(reg.psnr, 3), _fmt(reg.ssim, 4), _fmt(reg.mae, 4), _shift(reg.shift),
             _fmt(raw.psnr, 3), _fmt(raw.ssim, 4)]
        )  # fmt: skip
    s = summarize(results)
    rows.append(
        ["mean", _fmt(s.input_reg.psnr, 3), _fmt(s.input_reg.ssim, 4), _fmt(s.input_reg.mae, 4),
         "", _fmt(s.input_raw.psnr, 3), _fmt(s.input_raw.ssim, 4)]
    )  # fmt: skip
    return _md_table(header, rows)


def results_table(results: Sequence[SceneResult]) -> str:
    """Ours against the input per scene, then the means (wall and RSS: mean over scenes)."""
    header = [
        "scene", "ours PSNR", "ours SSIM", "ours MAE", "ours shift",
        "input PSNR", "input SSIM", "input MAE", "gain dB",
        "ours raw PSNR", "ours raw SSIM", "input raw PSNR", "wall s", "peak RSS GiB",
    ]  # fmt: skip
    rows = []
    for r in results:
        assert r.ours is not None and r.run is not None
        o, i = r.ours, r.input
        rows.append(
            [r.name, _fmt(o.registered.psnr, 3), _fmt(o.registered.ssim, 4),
             _fmt(o.registered.mae, 4), _shift(o.registered.shift),
             _fmt(i.registered.psnr, 3), _fmt(i.registered.ssim, 4), _fmt(i.registered.mae, 4),
             _fmt(r.gain_db, 3, signed=True),
             _fmt(o.raw.psnr, 3), _fmt(o.raw.ssim, 4), _fmt(i.raw.psnr, 3),
             _fmt(r.run.wall_s, 1), _fmt(r.run.peak_rss_gib, 2)]
        )  # fmt: skip
    s = summarize(results)
    if s.ours_reg is not None and s.ours_raw is not None:
        rows.append(
            ["mean", _fmt(s.ours_reg.psnr, 3), _fmt(s.ours_reg.ssim, 4), _fmt(s.ours_reg.mae, 4),
             "", _fmt(s.input_reg.psnr, 3), _fmt(s.input_reg.ssim, 4), _fmt(s.input_reg.mae, 4),
             _fmt(s.gain_db, 3, signed=True), _fmt(s.ours_raw.psnr, 3),
             _fmt(s.ours_raw.ssim, 4), _fmt(s.input_raw.psnr, 3),
             _fmt(s.mean_wall_s, 1), _fmt(s.mean_peak_rss_gib, 2)]
        )  # fmt: skip
    table = _md_table(header, rows)
    note = (
        f"\nPSNR / SSIM / MAE registered (best shift within +-{MAX_SHIFT} px), raw = no shift. "
        f"Wall time: median {_fmt(s.median_wall_s, 1)} s, max {_fmt(s.max_wall_s, 1)} s; "
        f"peak RSS: max {_fmt(s.max_peak_rss_gib, 2)} GiB."
    )
    return table + "\n" + note


def targets_text(preset: str, targets: Sequence[Target]) -> str:
    lines = [f"Targets for --preset {preset} (issue 3):", ""]
    lines += [f"- {'PASS' if t.passed else 'FAIL'}  {t.name}: {t.measured}" for t in targets]
    missed = sum(1 for t in targets if not t.passed)
    verdict = "PASS" if missed == 0 else f"FAIL ({missed} of {len(targets)} missed)"
    return "\n".join(lines + ["", f"Overall: {verdict}"])


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def _scores_json(scores: Scores) -> dict[str, Any]:
    return {"psnr": scores.psnr, "ssim": scores.ssim, "mae": scores.mae, "shift": scores.shift}


def _protocol_json(scores: ProtocolScores) -> dict[str, Any]:
    return {"registered": _scores_json(scores.registered), "raw": _scores_json(scores.raw)}


def report_json(
    settings: dict[str, Any],
    results: Sequence[SceneResult],
    targets: Sequence[Target] | None,
) -> dict[str, Any]:
    """All numbers: settings, per scene (input, ours, gain, run), means, targets."""
    scenes = []
    for r in results:
        entry: dict[str, Any] = {"scene": r.name, "input": _protocol_json(r.input)}
        if r.ours is not None:
            entry["ours"] = _protocol_json(r.ours)
            entry["gain_db"] = r.gain_db
        if r.run is not None:
            entry["run"] = {
                "command": r.run.command,
                "returncode": r.run.returncode,
                "wall_s": r.run.wall_s,
                "peak_rss_bytes": r.run.peak_rss_bytes,
                "peak_rss_gib": r.run.peak_rss_gib,
                "log": str(r.run.log),
            }
        scenes.append(entry)
    s = summarize(results)
    mean: dict[str, Any] = {
        "input": {"registered": _scores_json(s.input_reg), "raw": _scores_json(s.input_raw)}
    }
    for scores in (mean["input"]["registered"], mean["input"]["raw"]):
        del scores["shift"]
    if s.ours_reg is not None and s.ours_raw is not None:
        mean["ours"] = {"registered": _scores_json(s.ours_reg), "raw": _scores_json(s.ours_raw)}
        for scores in (mean["ours"]["registered"], mean["ours"]["raw"]):
            del scores["shift"]
        mean["gain_db"] = s.gain_db
        mean.update(
            mean_wall_s=s.mean_wall_s,
            median_wall_s=s.median_wall_s,
            max_wall_s=s.max_wall_s,
            mean_peak_rss_gib=s.mean_peak_rss_gib,
            max_peak_rss_gib=s.max_peak_rss_gib,
        )
    out: dict[str, Any] = {"settings": settings, "scenes": scenes, "mean": mean}
    if targets is not None:
        out["targets"] = [
            {"name": t.name, "measured": t.measured, "passed": t.passed} for t in targets
        ]
        out["all_targets_passed"] = all(t.passed for t in targets)
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, required=True, help="Pixel 4 data folder")
    ap.add_argument("--preset", choices=PRESETS, default="default", help="fit preset")
    ap.add_argument("--scenes", default="", help="comma-separated scene names, e.g. 001,004 (all)")
    ap.add_argument(
        "--out", type=Path, default=None,
        help="output folder: fits in OUT/NNN, logs in OUT/logs (default out/bench_pixel/<preset>)",
    )  # fmt: skip
    ap.add_argument("--markdown", type=Path, default=None, help="markdown table file")
    ap.add_argument("--json", type=Path, default=None, help="JSON file with all numbers")
    ap.add_argument(
        "--extra", default="",
        help='extra fit arguments as one string: --extra "--seed 1" (one token: --extra=--x)',
    )  # fmt: skip
    ap.add_argument(
        "--edgedp", type=Path, default=Path(sys.executable).parent / "edgedp",
        help="edgedp executable (default: the one beside this Python)",
    )  # fmt: skip
    ap.add_argument(
        "--crop", default=f"{DEFAULT_CROP[0]}x{DEFAULT_CROP[1]}",
        help="centred crop HxW passed to the fit and used for scoring (protocol: 1008x1344)",
    )  # fmt: skip
    ap.add_argument("--quiet", action="store_true", help="fit output to the log files only")
    ap.add_argument("--baseline-only", action="store_true", help="score the input only, no fit")
    ap.add_argument("--strict", action="store_true", help="exit 3 when a target fails")
    return ap.parse_args(argv)


def _write_outputs(text: str, payload: dict[str, Any], markdown: Path, json_path: Path) -> None:
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text + "\n", encoding="utf-8")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, payload, overwrite=True)
    say(f"wrote {markdown} and {json_path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    tag = "baseline" if args.baseline_only else args.preset
    out_dir: Path = args.out if args.out is not None else Path("out") / "bench_pixel" / tag
    markdown: Path = args.markdown or out_dir / f"bench_pixel_{tag}.md"
    json_path: Path = args.json or out_dir / f"bench_pixel_{tag}.json"
    try:
        crop = parse_size(args.crop, what="--crop")
        selected = [s.strip() for s in args.scenes.split(",") if s.strip()]
        scenes = discover_scenes(args.data, selected)
        extra = shlex.split(args.extra)
        options = read_options(args.data, crop)
        if not args.baseline_only and not os.access(args.edgedp, os.X_OK):
            raise InputError(f"edgedp executable {args.edgedp} is missing or not executable")
        # Score every input first: a data problem shows before any minutes-long fit.
        gts: dict[str, np.ndarray] = {}
        inputs: dict[str, ProtocolScores] = {}
        for scene in scenes:
            gts[scene.name] = read_gt(scene, crop)
            inputs[scene.name] = evaluate(
                input_baseline(scene, options), gts[scene.name], max_shift=MAX_SHIFT
            )
    except EdgedpError as err:
        say(f"error: {err}")
        return EXIT_USAGE

    settings: dict[str, Any] = {
        "data": str(args.data),
        "scenes": [s.name for s in scenes],
        "crop": list(crop),
        "black_level": BLACK_LEVEL,
        "white_level": WHITE_LEVEL,
        "max_shift": MAX_SHIFT,
        "edgedp_version": __version__,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    if args.baseline_only:
        results = [SceneResult(s.name, inputs[s.name]) for s in scenes]
        title = f"Input baseline ((left + right) / 2 after protocol steps 1-2), {args.data}"
        text = f"{title}\n\n{baseline_table(results)}"
        print(text, flush=True)
        settings["mode"] = "baseline-only"
        _write_outputs(text, report_json(settings, results, None), markdown, json_path)
        return EXIT_OK

    settings.update(mode="fit", preset=args.preset, extra=extra, edgedp=str(args.edgedp))
    results = []
    for index, scene in enumerate(scenes, 1):
        command = fit_command(args.edgedp, scene, args.data, out_dir, args.preset, crop, extra)
        log = out_dir / "logs" / f"{scene.name}.log"
        output_path = out_dir / scene.name / "allinfocus.png"
        # A stale result must not pass for this run's when the fit writes none.
        output_path.unlink(missing_ok=True)
        say(f"[{index}/{len(scenes)}] scene {scene.name}: {shlex.join(command)}")
        try:
            run = run_fit(command, log, quiet=args.quiet)
            if run.returncode != 0:
                raise FitFailed(f"exit status {run.returncode}", log_tail(run.log))
            output = read_output(output_path, gts[scene.name].shape)
        except FitFailed as err:
            say(f"\nfit of scene {scene.name} failed: {err} (log: {log})")
            if err.log_tail:
                say(f"--- last lines of {log} ---\n{err.log_tail}\n---")
            if results:
                say("scenes finished before the failure:\n" + results_table(results))
            return EXIT_FIT_FAILED
        ours = evaluate(output, gts[scene.name], max_shift=MAX_SHIFT)
        result = SceneResult(scene.name, inputs[scene.name], ours, run)
        results.append(result)
        say(
            f"[{index}/{len(scenes)}] scene {scene.name}: {run.wall_s:.1f} s, peak RSS "
            f"{run.peak_rss_gib:.2f} GiB, registered PSNR {_fmt(ours.registered.psnr, 3)} "
            f"(input {_fmt(result.input.registered.psnr, 3)}, "
            f"gain {_fmt(result.gain_db, 3, signed=True)} dB)"
        )

    targets = check_targets(args.preset, results)
    title = f"edgedp fit --preset {args.preset} on {args.data}" + (
        f" (extra: {shlex.join(extra)})" if extra else ""
    )
    text = "\n\n".join([title, results_table(results), targets_text(args.preset, targets)])
    print(text, flush=True)
    _write_outputs(text, report_json(settings, results, targets), markdown, json_path)
    if args.strict and not all(t.passed for t in targets):
        return EXIT_TARGETS
    return EXIT_OK


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        say("interrupted")
        raise SystemExit(130) from None
