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

Examples::

    .venv/bin/python tools/bench_pixel.py --data ../shared/data/pixel4 --baseline-only
    .venv/bin/python tools/bench_pixel.py --data ../shared/data/pixel4 --preset fast
    .venv/bin/python tools/bench_pixel.py --data ../shared/data/pixel4 --preset default \\
        --scenes 001,004 --extra "--seed 1" --out out/bench_default_seed1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgedp import __version__  # noqa: E402
from edgedp.errors import EdgedpError, InputError  # noqa: E402
from edgedp.io import (  # noqa: E402
    ReadOptions,
    parse_size,
    read_dp_pair,
    read_normalized,
    write_json,
)
from edgedp.metrics import ProtocolScores, Scores, evaluate  # noqa: E402

#: Pixel 4 protocol step 1 (data README).
BLACK_LEVEL = 1024
WHITE_LEVEL = 16383
#: The protocol's crop (H, W) of the 1512x2016 frames.
DEFAULT_CROP = (1008, 1344)
#: Registration search radius of the protocol (step 5).
MAX_SHIFT = 4
PRESETS = ("fast", "default", "best")
GIB = 1024**3
#: Log lines shown when a fit fails.
TAIL_LINES = 25

EXIT_OK, EXIT_FIT_FAILED, EXIT_USAGE, EXIT_TARGETS = 0, 1, 2, 3


class FitFailed(Exception):
    """A fit exited non-zero or left no usable output; the message is one line."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """One dev scene: its DP views and all-in-focus ground truth."""

    name: str
    left: Path
    right: Path
    gt: Path


def flat_field_frames(data: Path) -> tuple[Path, Path]:
    """The white-sheet frames ``(left, right)`` of ``data/calibration``."""
    return (
        data / "calibration" / "white_sheet_left.png",
        data / "calibration" / "white_sheet_right.png",
    )


def discover_scenes(data: Path, selected: Sequence[str] | None = None) -> list[Scene]:
    """Scenes ``NNN`` with ``NNN_left.png``, ``NNN_right.png`` and ``gt_all_in_focus/NNN_gt.png``.

    Sorted by name; ``selected`` keeps those names in the order given.

    Raises:
        InputError: ``data`` is not a folder, holds no complete scene, lacks the flat-field
            frames, or a selected scene is missing or incomplete.
    """
    if not data.is_dir():
        raise InputError(f"data folder {data} does not exist")
    for frame in flat_field_frames(data):
        if not frame.is_file():
            raise InputError(f"flat-field frame {frame} is missing")
    found: dict[str, Scene] = {}
    for left in sorted(data.glob("*_left.png")):
        name = left.name[: -len("_left.png")]
        right = data / f"{name}_right.png"
        gt = data / "gt_all_in_focus" / f"{name}_gt.png"
        if right.is_file() and gt.is_file():
            found[name] = Scene(name, left, right, gt)
    if not found:
        raise InputError(
            f"no scenes in {data} "
            "(expected NNN_left.png, NNN_right.png, gt_all_in_focus/NNN_gt.png)"
        )
    if not selected:
        return list(found.values())
    missing = [name for name in selected if name not in found]
    if missing:
        raise InputError(
            f"scene(s) {', '.join(missing)} not found or incomplete in {data} "
            f"(available: {', '.join(found)})"
        )
    return [found[name] for name in dict.fromkeys(selected)]


def read_options(data: Path, crop: tuple[int, int]) -> ReadOptions:
    """Protocol steps 1-2 and the crop as :class:`ReadOptions`."""
    return ReadOptions(
        black_level=BLACK_LEVEL,
        white_level=WHITE_LEVEL,
        flat_field=flat_field_frames(data),
        crop=crop,
    )


def _single_channel(image: Tensor, what: str) -> np.ndarray:
    """``(1, H, W)`` tensor -> ``(H, W)`` float64 array."""
    array = image.detach().cpu().numpy()
    if array.ndim != 3 or array.shape[0] != 1:
        raise InputError(f"{what} must be single-channel, got shape {tuple(array.shape)}")
    return array[0].astype(np.float64)


def read_gt(scene: Scene, crop: tuple[int, int]) -> np.ndarray:
    """``gt / 65535`` as ``(H, W)``; it must already have the crop's size."""
    gt = _single_channel(read_normalized(scene.gt), f"ground truth {scene.gt}")
    if gt.shape != crop:
        raise InputError(
            f"ground truth {scene.gt} is {gt.shape[0]}x{gt.shape[1]} but the crop is "
            f"{crop[0]}x{crop[1]} (HxW)"
        )
    return gt


def input_baseline(scene: Scene, options: ReadOptions) -> np.ndarray:
    """The protocol's input baseline ``(left + right) / 2`` after steps 1-2 and the crop."""
    pair = read_dp_pair(scene.left, scene.right, options)
    left = _single_channel(pair.left, f"left view {scene.left}")
    right = _single_channel(pair.right, f"right view {scene.right}")
    return (left + right) / 2.0


# --------------------------------------------------------------------------------------------
# Running a fit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitRun:
    """One finished fit subprocess."""

    command: list[str]
    returncode: int
    wall_s: float
    #: ``ru_maxrss`` of the child (and the descendants it waited for), bytes.
    peak_rss_bytes: int
    log: Path

    @property
    def peak_rss_gib(self) -> float:
        return self.peak_rss_bytes / GIB


def fit_command(
    edgedp: Path,
    scene: Scene,
    data: Path,
    out_dir: Path,
    preset: str,
    crop: tuple[int, int],
    extra: Sequence[str] = (),
) -> list[str]:
    """The issue's invocation for ``scene`` (``--extra`` arguments appended)."""
    white_left, white_right = flat_field_frames(data)
    return [
        str(edgedp), "fit", str(scene.left), str(scene.right),
        "-o", str(out_dir / scene.name),
        "--black-level", str(BLACK_LEVEL), "--white-level", str(WHITE_LEVEL),
        "--flat-field", str(white_left), str(white_right),
        "--crop", f"{crop[0]}x{crop[1]}",
        "--preset", preset,
        "--overwrite",
        *extra,
    ]  # fmt: skip


# Runs the fit and reports its own rusage.  A child's ru_maxrss starts from the RSS of the
# process it was forked / vforked from (Linux carries the old mm's high-water mark over exec), so
# waiting on the fit directly from this process (torch and the images loaded) would add our own
# few hundred MiB.  The wrapper is a bare interpreter (-I -S: no site, no imports beyond the
# builtins), which bounds that bias to its ~10 MiB.
_WRAPPER = r"""
import json, os, sys, time
report, command = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
try:
    pid = os.posix_spawnp(command[0], command, os.environ)
except OSError as err:
    print(f"cannot run {command[0]}: {err}", file=sys.stderr)
    sys.exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as handle:
    json.dump({"returncode": code, "wall_s": wall, "maxrss_kib": usage.ru_maxrss}, handle)
sys.exit(code if code >= 0 else 128 - code)
"""


def _pump(source: BinaryIO, log: BinaryIO, echo: BinaryIO | None) -> None:
    """Copy the child's output to the log (and the terminal) as it comes, ``\\r`` included."""
    fd = source.fileno()
    while chunk := os.read(fd, 65536):
        log.write(chunk)
        log.flush()
        if echo is not None:
            echo.write(chunk)
            echo.flush()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the wrapper's process group (the wrapper and the fit) and reap the wrapper."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_fit(command: list[str], log_path: Path, *, quiet: bool = False) -> FitRun:
    """Run ``command``, stream its output, and measure its wall time and peak RSS.

    The fit runs under a bare Python wrapper (see ``_WRAPPER``) that reaps it with
    ``os.wait4`` and reports its wall time and ``ru_maxrss`` (KiB on Linux): the peak RSS of
    the fit and the descendants it waited for.  stdout and stderr go, merged, to ``log_path``
    and (unless ``quiet``) to our stderr.  The wrapper gets its own process group, so Ctrl-C
    here kills the fit too.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = log_path.with_suffix(".rusage.json")
    usage_path.unlink(missing_ok=True)
    echo = None if quiet else sys.stderr.buffer
    wrapper = [sys.executable, "-I", "-S", "-c", _WRAPPER, str(usage_path), *command]
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            wrapper,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, echo), daemon=True)
        pump.start()
        try:
            returncode = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        outer_wall = time.perf_counter() - start
        # A grandchild of the fit may still hold the pipe: do not wait for it forever.
        pump.join(timeout=10.0)
        if not pump.is_alive():
            proc.stdout.close()
    try:
        usage = json.loads(usage_path.read_text())
    except (OSError, ValueError):
        # The wrapper died before reporting (killed); keep what we know.
        usage = {"returncode": returncode, "wall_s": outer_wall, "maxrss_kib": 0}
    return FitRun(
        command=command,
        returncode=int(usage["returncode"]),
        wall_s=float(usage["wall_s"]),
        peak_rss_bytes=int(usage["maxrss_kib"]) * 1024,
        log=log_path,
    )


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, progress-bar redraws (``\\r``) collapsed."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""
    rows = [row.rsplit("\r", 1)[-1] for row in text.replace("\r\n", "\n").split("\n")]
    rows = [row for row in rows if row.strip()]
    return "\n".join(rows[-lines:])


def read_output(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A fit's ``allinfocus.png`` as ``(H, W)`` on the protocol's scale (``png / 65535``)."""
    if not path.is_file():
        raise FitFailed(f"the fit exited 0 but wrote no {path}")
    try:
        image = _single_channel(read_normalized(path), f"output {path}")
    except EdgedpError as err:
        raise FitFailed(f"unusable output: {err}") from err
    if image.shape != shape:
        raise FitFailed(
            f"output {path} is {image.shape[0]}x{image.shape[1]}, "
            f"the ground truth {shape[0]}x{shape[1]} (HxW)"
        )
    return image


# --------------------------------------------------------------------------------------------
# Results, targets, tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneResult:
    """Scores of one scene; ``ours`` and ``run`` are ``None`` with ``--baseline-only``."""

    name: str
    input: ProtocolScores
    ours: ProtocolScores | None = None
    run: FitRun | None = None

    @property
    def gain_db(self) -> float:
        """Registered PSNR of ours minus the input's (``nan`` without a fit)."""
        if self.ours is None:
            return math.nan
        return _difference(self.ours.registered.psnr, self.input.registered.psnr)


def _difference(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b) and a == b:
        return 0.0
    return a - b


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


@dataclass(frozen=True)
class Summary:
    """Means over the scenes (``ours_*`` are ``None`` unless every scene has a fit)."""

    input_reg: Scores
    input_raw: Scores
    ours_reg: Scores | None
    ours_raw: Scores | None
    gain_db: float
    mean_wall_s: float
    median_wall_s: float
    max_wall_s: float
    max_peak_rss_gib: float
    mean_peak_rss_gib: float


def _mean_scores(scores: Sequence[Scores]) -> Scores:
    return Scores(
        psnr=_mean([s.psnr for s in scores]),
        ssim=_mean([s.ssim for s in scores]),
        mae=_mean([s.mae for s in scores]),
        shift=(0, 0),
    )


def summarize(results: Sequence[SceneResult]) -> Summary:
    """Means of every metric; median / max wall time and max peak RSS over the fits."""
    fitted = [r for r in results if r.ours is not None and r.run is not None]
    walls = [r.run.wall_s for r in fitted if r.run is not None]
    rss = [r.run.peak_rss_gib for r in fitted if r.run is not None]
    ours_reg = ours_raw = None
    if fitted and len(fitted) == len(results):
        ours_reg = _mean_scores([r.ours.registered for r in fitted if r.ours is not None])
        ours_raw = _mean_scores([r.ours.raw for r in fitted if r.ours is not None])
    input_reg = _mean_scores([r.input.registered for r in results])
    return Summary(
        input_reg=input_reg,
        input_raw=_mean_scores([r.input.raw for r in results]),
        ours_reg=ours_reg,
        ours_raw=ours_raw,
        gain_db=_difference(ours_reg.psnr, input_reg.psnr) if ours_reg else math.nan,
        mean_wall_s=_mean(walls),
        median_wall_s=statistics.median(walls) if walls else math.nan,
        max_wall_s=max(walls) if walls else math.nan,
        max_peak_rss_gib=max(rss) if rss else math.nan,
        mean_peak_rss_gib=_mean(rss),
    )


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


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_outputs(text: str, payload: dict[str, Any], markdown: Path, json_path: Path) -> None:
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text + "\n", encoding="utf-8")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, payload, overwrite=True)
    _say(f"wrote {markdown} and {json_path}")


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
        _say(f"error: {err}")
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
        _say(f"[{index}/{len(scenes)}] scene {scene.name}: {shlex.join(command)}")
        try:
            run = run_fit(command, log, quiet=args.quiet)
            if run.returncode != 0:
                raise FitFailed(f"exit status {run.returncode}", log_tail(run.log))
            output = read_output(output_path, gts[scene.name].shape)
        except FitFailed as err:
            _say(f"\nfit of scene {scene.name} failed: {err} (log: {log})")
            if err.log_tail:
                _say(f"--- last lines of {log} ---\n{err.log_tail}\n---")
            if results:
                _say("scenes finished before the failure:\n" + results_table(results))
            return EXIT_FIT_FAILED
        ours = evaluate(output, gts[scene.name], max_shift=MAX_SHIFT)
        result = SceneResult(scene.name, inputs[scene.name], ours, run)
        results.append(result)
        _say(
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


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through run_fit, which then kills the fit's process group.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        _say("interrupted")
        raise SystemExit(130) from None
