"""The evaluation protocol of the Pixel 4 data (``../shared/data/pixel4/README.md``) as a library:
the dev scenes of a data folder (:func:`discover_scenes`), protocol steps 1-2 and the crop as read
options (:func:`read_options`: black / white level of :mod:`edgedp.io.cameras`' ``pixel4`` preset,
the white-sheet flat field), the ground truth (:func:`read_gt`, ``gt / 65535``), the input baseline
``(left + right) / 2`` (:func:`input_baseline`), a fit's output on the protocol's scale
(:func:`read_output`), the protocol's ``edgedp fit`` invocation (:func:`fit_command`) and the
scores of scenes with their means (:class:`SceneResult`, :func:`summarize`).  Scoring itself is
:func:`edgedp.metrics.evaluate` (registered within :data:`MAX_SHIFT` px, and raw).

>>> read_options(Path("pixel4"), DEFAULT_CROP).black_level, BLACK_LEVEL, WHITE_LEVEL
(1024, 1024, 16383)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from ..errors import EdgedpError, InputError
from ..io.cameras import camera_preset
from ..io.images import ReadOptions, read_dp_pair, read_normalized
from ..metrics import ProtocolScores, Scores, bead_energy, evaluate, registered_residual, streak_energy
from .runs import FitFailed, FitRun

__all__ = [
    "BLACK_LEVEL", "DEFAULT_CROP", "MAX_SHIFT", "PRESETS", "WHITE_LEVEL",
    "Scene", "SceneResult", "Summary", "difference", "discover_scenes", "fit_command", "flat_field_frames",
    "input_args", "input_baseline", "mean_scores", "single_channel", "read_gt", "read_options", "read_output",
    "residual_artifacts", "scene_references", "summarize",
]

#: Pixel 4 protocol step 1 (data README): the ``pixel4`` camera preset's levels.
BLACK_LEVEL = int(camera_preset("pixel4").black_level)
WHITE_LEVEL = int(camera_preset("pixel4").white_level)
#: The protocol's centred crop (H, W).
DEFAULT_CROP = (1008, 1344)
#: Registered scores: the best integer shift within +-MAX_SHIFT px.
MAX_SHIFT = 4
#: ``edgedp fit --preset`` values.
PRESETS = ("fast", "default", "best")


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


def single_channel(image: Tensor, what: str) -> np.ndarray:
    """``(1, H, W)`` tensor -> ``(H, W)`` float64 array."""
    array = image.detach().cpu().numpy()
    if array.ndim != 3 or array.shape[0] != 1:
        raise InputError(f"{what} must be single-channel, got shape {tuple(array.shape)}")
    return array[0].astype(np.float64)


def read_gt(scene: Scene, crop: tuple[int, int]) -> np.ndarray:
    """``gt / 65535`` as ``(H, W)``; it must already have the crop's size."""
    gt = single_channel(read_normalized(scene.gt), f"ground truth {scene.gt}")
    if gt.shape != crop:
        raise InputError(
            f"ground truth {scene.gt} is {gt.shape[0]}x{gt.shape[1]} but the crop is "
            f"{crop[0]}x{crop[1]} (HxW)"
        )
    return gt


def scene_references(
    scenes: Sequence[Scene], data: Path, crop: tuple[int, int]
) -> tuple[dict[str, np.ndarray], dict[str, ProtocolScores]]:
    """Per scene name: the ground truth (:func:`read_gt`) and the input baseline's protocol scores
    against it (:func:`input_baseline`, :func:`edgedp.metrics.evaluate` with :data:`MAX_SHIFT`)."""
    options = read_options(data, crop)
    gts = {s.name: read_gt(s, crop) for s in scenes}
    inputs = {s.name: evaluate(input_baseline(s, options), gts[s.name], max_shift=MAX_SHIFT) for s in scenes}
    return gts, inputs


def residual_artifacts(image: np.ndarray, gt: np.ndarray, shift: tuple[int, int]) -> tuple[float, float]:
    """``(streak energy, bead energy)`` of ``image``'s registered residual at ``shift``
    (:func:`edgedp.metrics.registered_residual` with :data:`MAX_SHIFT`; :func:`edgedp.metrics.streak_energy`
    in the ground truth's flat regions, :func:`edgedp.metrics.bead_energy` along its strong vertical
    edges).  Compare with the input baseline's values (their ratio)."""
    m = MAX_SHIFT
    residual = registered_residual(image, gt, shift, m)
    interior = np.asarray(gt)[m : gt.shape[0] - m, m : gt.shape[1] - m]
    return streak_energy(residual, interior), bead_energy(residual, interior)


def input_baseline(scene: Scene, options: ReadOptions) -> np.ndarray:
    """The protocol's input baseline ``(left + right) / 2`` after steps 1-2 and the crop."""
    pair = read_dp_pair(scene.left, scene.right, options)
    left = single_channel(pair.left, f"left view {scene.left}")
    right = single_channel(pair.right, f"right view {scene.right}")
    return (left + right) / 2.0


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
    return [
        str(edgedp), "fit", str(scene.left), str(scene.right),
        "-o", str(out_dir / scene.name),
        *input_args(data, crop),
        "--preset", preset,
        "--overwrite",
        *extra,
    ]  # fmt: skip


def input_args(data: Path, crop: tuple[int, int]) -> list[str]:
    """Protocol steps 1-2 and the crop as the command-line options of ``edgedp fit`` / ``tune`` and
    ``edgedp-runtime instant``."""
    white_left, white_right = flat_field_frames(data)
    return [
        "--black-level", str(BLACK_LEVEL), "--white-level", str(WHITE_LEVEL),
        "--flat-field", str(white_left), str(white_right), "--crop", f"{crop[0]}x{crop[1]}",
    ]  # fmt: skip


def read_output(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A fit's ``allinfocus.png`` as ``(H, W)`` on the protocol's scale (``png / 65535``)."""
    if not path.is_file():
        raise FitFailed(f"the fit exited 0 but wrote no {path}")
    try:
        image = single_channel(read_normalized(path), f"output {path}")
    except EdgedpError as err:
        raise FitFailed(f"unusable output: {err}") from err
    if image.shape != shape:
        raise FitFailed(
            f"output {path} is {image.shape[0]}x{image.shape[1]}, "
            f"the ground truth {shape[0]}x{shape[1]} (HxW)"
        )
    return image


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
        return difference(self.ours.registered.psnr, self.input.registered.psnr)


def difference(a: float, b: float) -> float:
    """``a - b``, and 0 for two equal infinities (two exact copies: PSNR inf each).

    >>> difference(30.5, 29.0), difference(math.inf, math.inf)
    (1.5, 0.0)
    """
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


def mean_scores(scores: Sequence[Scores]) -> Scores:
    """The mean PSNR / SSIM / MAE of ``scores`` (shift ``(0, 0)``; nan for none)."""
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
        ours_reg = mean_scores([r.ours.registered for r in fitted if r.ours is not None])
        ours_raw = mean_scores([r.ours.raw for r in fitted if r.ours is not None])
    input_reg = mean_scores([r.input.registered for r in results])
    return Summary(
        input_reg=input_reg,
        input_raw=mean_scores([r.input.raw for r in results]),
        ours_reg=ours_reg,
        ours_raw=ours_raw,
        gain_db=difference(ours_reg.psnr, input_reg.psnr) if ours_reg else math.nan,
        mean_wall_s=_mean(walls),
        median_wall_s=statistics.median(walls) if walls else math.nan,
        max_wall_s=max(walls) if walls else math.nan,
        max_peak_rss_gib=max(rss) if rss else math.nan,
        mean_peak_rss_gib=_mean(rss),
    )
