"""Tests for tools/bench_pixel.py: a fake ``edgedp`` on a tiny fake Pixel 4 folder, the targets
logic, and (when the data is present) the README baseline of the real scene 001."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import stat
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest

from edgedp.eval import FitRun, SceneResult
from edgedp.metrics import ProtocolScores, Scores, evaluate

REPO = Path(__file__).resolve().parents[2]
FRAME = (64, 80)  # H, W of the fake raw frames
CROP = (48, 64)  # the fake "protocol crop"
SCENES = ("001", "002")


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pixel", REPO / "tools" / "bench_pixel.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_pixel"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _load_tool()


# --------------------------------------------------------------------------------------------
# Fake data and a fake edgedp
# --------------------------------------------------------------------------------------------


def _raw(values: np.ndarray) -> np.ndarray:
    """Normalized values -> 16-bit raw codes with black level 1024, white level 16383."""
    return np.clip(np.rint(1024 + values * 16383), 0, 65535).astype(np.uint16)


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two scenes of 64x80 raw frames, white sheets with vignetting, 48x64 ground truth."""
    root = tmp_path / "pixel4"
    rng = np.random.default_rng(7)
    h, w = FRAME
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    vignette_left = 1.0 - 0.3 * ((xx - 0.4) ** 2 + (yy - 0.5) ** 2)
    vignette_right = 1.0 - 0.5 * ((xx - 0.6) ** 2 + (yy - 0.5) ** 2)
    _write(root / "calibration" / "white_sheet_left.png", _raw(0.5 * vignette_left))
    _write(root / "calibration" / "white_sheet_right.png", _raw(0.5 * vignette_right))
    y0, x0 = (h - CROP[0]) // 2, (w - CROP[1]) // 2
    for name in SCENES:
        sharp = cv2.GaussianBlur(rng.random(FRAME), (0, 0), 1.2)
        sharp = 0.05 + 0.6 * (sharp - sharp.min()) / (sharp.max() - sharp.min())
        blurred = cv2.blur(sharp, (5, 5), borderType=cv2.BORDER_REPLICATE)
        left = np.roll(blurred, -1, axis=1) * vignette_left
        right = np.roll(blurred, 1, axis=1) * vignette_right
        _write(root / f"{name}_left.png", _raw(left))
        _write(root / f"{name}_right.png", _raw(right))
        gt = sharp[y0 : y0 + CROP[0], x0 : x0 + CROP[1]]
        _write(root / "gt_all_in_focus" / f"{name}_gt.png", np.rint(gt * 65535).astype(np.uint16))
    return root


FAKE_EDGEDP = """\
#!{python}
# Fake `edgedp fit`: checks the invocation, records it, writes allinfocus.png per
# FAKE_EDGEDP_MODES ("001=gt,002=input"): gt (copy of the ground truth), input (the protocol's
# (left + right) / 2), worse (input * 0.8), fail (exit 5), nooutput (exit 0, no file).
import json, os, shutil, sys
from pathlib import Path

args = sys.argv[1:]
expected = ["fit", None, None, "-o", None, "--black-level", "1024", "--white-level", "16383",
            "--flat-field", None, None, "--crop", None, "--preset", None, "--overwrite"]
if len(args) < len(expected) or any(e is not None and a != e for a, e in zip(args, expected)):
    print("fake edgedp: unexpected arguments " + repr(args), file=sys.stderr)
    sys.exit(9)
left, right, out, wl, wr, crop = args[1], args[2], Path(args[4]), args[10], args[11], args[13]
scene = Path(left).name.split("_")[0]
modes = dict(item.split("=") for item in os.environ["FAKE_EDGEDP_MODES"].split(","))
mode = modes[scene]
for i in range(3):
    print(f"\\rstage 1: {{i + 1}}/3", end="", file=sys.stderr, flush=True)
print(file=sys.stderr)
ballast = b"x" * (64 << 20)  # touch 64 MiB so the peak RSS is measurable
if mode == "fail":
    print("Traceback (most recent call last):", file=sys.stderr)
    print("RuntimeError: fake failure in stage 2", file=sys.stderr)
    sys.exit(5)
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(args))
if mode == "nooutput":
    sys.exit(0)
if mode == "gt":
    gt = Path(left).parent / "gt_all_in_focus" / (scene + "_gt.png")
    shutil.copyfile(gt, out / "allinfocus.png")
else:
    from edgedp.io import ReadOptions, parse_size, read_dp_pair, write_png16
    options = ReadOptions(black_level=1024, white_level=16383, flat_field=(wl, wr),
                          crop=parse_size(crop))
    pair = read_dp_pair(left, right, options)
    image = (pair.left + pair.right) / 2
    if mode == "worse":
        image = image * 0.8
    write_png16(out / "allinfocus.png", image, overwrite=True)
print("done", file=sys.stderr)
"""


@pytest.fixture
def fake_edgedp(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "edgedp"
    path.parent.mkdir()
    path.write_text(FAKE_EDGEDP.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _protocol_baseline(data: Path, name: str) -> np.ndarray:
    """(left + right) / 2 after protocol steps 1-2 and the crop, written out independently."""
    def load(path: Path) -> np.ndarray:
        return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.blur(x, (101, 101), borderType=cv2.BORDER_REPLICATE)

    left = (load(data / f"{name}_left.png") - 1024) / 16383
    right = (load(data / f"{name}_right.png") - 1024) / 16383
    gain = box(load(data / "calibration" / "white_sheet_left.png") - 1024) / box(
        load(data / "calibration" / "white_sheet_right.png") - 1024
    )
    mean = (left + right * gain) / 2
    y0, x0 = (FRAME[0] - CROP[0]) // 2, (FRAME[1] - CROP[1]) // 2
    return mean[y0 : y0 + CROP[0], x0 : x0 + CROP[1]]


def _gt(data: Path, name: str) -> np.ndarray:
    path = data / "gt_all_in_focus" / f"{name}_gt.png"
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535


def _run(
    data: Path,
    tmp_path: Path,
    edgedp: Path,
    modes: str,
    monkeypatch: pytest.MonkeyPatch,
    *extra: str,
) -> tuple[int, Path]:
    monkeypatch.setenv("FAKE_EDGEDP_MODES", modes)
    out = tmp_path / "bench"
    argv = ["--data", str(data), "--crop", f"{CROP[0]}x{CROP[1]}", "--edgedp", str(edgedp),
            "--out", str(out), "--quiet", *extra]  # fmt: skip
    return bench.main(argv), out


# --------------------------------------------------------------------------------------------
# End to end with the fake fit
# --------------------------------------------------------------------------------------------


def test_fake_fit_table_markdown_json(
    data: Path, tmp_path: Path, fake_edgedp: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    rc, out = _run(
        data, tmp_path, fake_edgedp, "001=gt,002=input", monkeypatch,
        "--preset", "fast", "--extra", "--seed 7 --layers 3",
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out

    # The exact invocation of issue 3, --extra appended.
    argv = json.loads((out / "001" / "argv.json").read_text())
    assert argv == [
        "fit", str(data / "001_left.png"), str(data / "001_right.png"), "-o", str(out / "001"),
        "--black-level", "1024", "--white-level", "16383", "--flat-field",
        str(data / "calibration" / "white_sheet_left.png"),
        str(data / "calibration" / "white_sheet_right.png"),
        "--crop", "48x64", "--preset", "fast", "--overwrite", "--seed", "7", "--layers", "3",
    ]  # fmt: skip

    report = json.loads((out / "bench_pixel_fast.json").read_text())
    scenes = {s["scene"]: s for s in report["scenes"]}
    assert list(scenes) == list(SCENES)
    for name in SCENES:
        expected = evaluate(_protocol_baseline(data, name), _gt(data, name))
        got = scenes[name]["input"]
        # read_dp_pair works in float32: agreement to ~1e-7 dB.
        assert got["registered"]["psnr"] == pytest.approx(expected.registered.psnr, abs=1e-5)
        assert got["registered"]["ssim"] == pytest.approx(expected.registered.ssim, abs=1e-6)
        assert got["registered"]["mae"] == pytest.approx(expected.registered.mae, abs=1e-8)
        assert tuple(got["registered"]["shift"]) == expected.registered.shift
        assert got["raw"]["psnr"] == pytest.approx(expected.raw.psnr, abs=1e-5)
        run = scenes[name]["run"]
        assert run["returncode"] == 0
        assert 0 < run["wall_s"] < 120
        assert run["peak_rss_bytes"] >= 64 << 20  # the fake's 64 MiB ballast
        assert run["peak_rss_gib"] == pytest.approx(run["peak_rss_bytes"] / 2**30)
        assert Path(run["log"]).read_text().rstrip().endswith("done")

    # Scene 001 is the ground truth itself: exact.
    gt_copy = scenes["001"]
    # Its fake imports no torch: its RSS must not include this process's (torch loaded).
    assert gt_copy["run"]["peak_rss_bytes"] < 128 << 20
    assert gt_copy["ours"]["registered"]["psnr"] == math.inf
    assert gt_copy["ours"]["raw"]["psnr"] == math.inf
    assert gt_copy["ours"]["registered"]["ssim"] == pytest.approx(1.0)
    assert gt_copy["ours"]["registered"]["mae"] == 0.0
    assert gt_copy["gain_db"] == math.inf
    # Scene 002 is the input baseline (16-bit quantized): the input's scores, no gain.
    copy = scenes["002"]
    for kind in ("registered", "raw"):
        for metric, tol in (("psnr", 1e-3), ("ssim", 1e-5), ("mae", 1e-5)):
            assert copy["ours"][kind][metric] == pytest.approx(copy["input"][kind][metric], abs=tol)
    assert copy["gain_db"] == pytest.approx(
        copy["ours"]["registered"]["psnr"] - copy["input"]["registered"]["psnr"]
    )
    assert abs(copy["gain_db"]) < 1e-3

    mean = report["mean"]
    inputs = [scenes[n]["input"]["registered"]["psnr"] for n in SCENES]
    assert mean["input"]["registered"]["psnr"] == pytest.approx(sum(inputs) / 2)
    assert mean["ours"]["registered"]["psnr"] == math.inf
    walls = [scenes[n]["run"]["wall_s"] for n in SCENES]
    assert mean["median_wall_s"] == pytest.approx(sum(walls) / 2)

    # Fast targets: every scene above its input (002 is a copy: passes only if quantization
    # happened to raise its PSNR), median wall <= 120 s.
    targets = {t["name"]: t["passed"] for t in report["targets"]}
    above = copy["ours"]["registered"]["psnr"] > copy["input"]["registered"]["psnr"]
    assert targets == {
        "every scene: registered PSNR above its input": above,
        "median wall time <= 120 s": True,
    }
    assert report["all_targets_passed"] is above

    # Table: printed and written as markdown, the same text.
    markdown = (out / "bench_pixel_fast.md").read_text()
    assert markdown.strip() == printed.strip()
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    rows = {line.split("|")[1].strip(): line for line in lines}
    cells = [c.strip() for c in rows["001"].split("|")[1:-1]]
    assert cells[1] == "inf" and cells[8] == "+inf"
    assert cells[5] == f"{scenes['001']['input']['registered']['psnr']:.3f}"
    assert "mean" in rows
    assert "PASS  median wall time <= 120 s" in markdown


def test_strict_and_target_verdicts(
    data: Path, tmp_path: Path, fake_edgedp: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    rc, out = _run(data, tmp_path, fake_edgedp, "001=gt,002=worse", monkeypatch, "--preset",
                   "fast", "--strict")  # fmt: skip
    assert rc == bench.EXIT_TARGETS
    printed = capsys.readouterr().out
    assert "FAIL  every scene: registered PSNR above its input: 1/2 (not: 002)" in printed
    assert "Overall: FAIL (1 of 2 missed)" in printed
    report = json.loads((out / "bench_pixel_fast.json").read_text())
    assert report["scenes"][1]["gain_db"] < -1.0

    # Without --strict a missed target is reported, not an error.
    rc, _ = _run(data, tmp_path, fake_edgedp, "001=gt,002=worse", monkeypatch, "--preset", "fast")
    assert rc == 0

    rc, _ = _run(data, tmp_path, fake_edgedp, "001=gt,002=gt", monkeypatch, "--preset", "fast",
                 "--strict", "--markdown", str(tmp_path / "t.md"))  # fmt: skip
    assert rc == 0
    assert "Overall: PASS" in (tmp_path / "t.md").read_text()


def test_failed_fit_shows_its_log(
    data: Path, tmp_path: Path, fake_edgedp: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    rc, out = _run(data, tmp_path, fake_edgedp, "001=gt,002=fail", monkeypatch)
    assert rc == bench.EXIT_FIT_FAILED
    err = capsys.readouterr().err
    assert "fit of scene 002 failed: exit status 5" in err
    assert "RuntimeError: fake failure in stage 2" in err
    assert "stage 1: 3/3" in err  # progress redraws collapsed to the last one
    assert "| 001 |" in err  # the scene finished before the failure

    rc, _ = _run(data, tmp_path, fake_edgedp, "001=nooutput,002=gt", monkeypatch)
    assert rc == bench.EXIT_FIT_FAILED
    assert "wrote no" in capsys.readouterr().err


def test_bad_arguments(data: Path, tmp_path: Path, fake_edgedp: Path,
                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = _run(data, tmp_path, fake_edgedp, "001=gt", monkeypatch, "--scenes", "001,003")
    assert rc == bench.EXIT_USAGE
    assert "scene(s) 003 not found" in capsys.readouterr().err
    rc, _ = _run(data, tmp_path, tmp_path / "no-edgedp", "001=gt", monkeypatch)
    assert rc == bench.EXIT_USAGE
    assert "not executable" in capsys.readouterr().err
    # The default crop (1008x1344) does not fit the fake ground truth.
    rc = bench.main(["--data", str(data), "--baseline-only", "--out", str(tmp_path / "b")])
    assert rc == bench.EXIT_USAGE
    assert "error:" in capsys.readouterr().err


def test_baseline_only_fake(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "base"
    rc = bench.main(["--data", str(data), "--crop", "48x64", "--baseline-only", "--out", str(out),
                     "--scenes", "002"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    expected = evaluate(_protocol_baseline(data, "002"), _gt(data, "002"))
    reg = expected.registered
    row = (
        f"| 002 | {reg.psnr:.3f} | {reg.ssim:.4f} | {reg.mae:.4f} | {reg.shift[0]}, {reg.shift[1]} "
        f"| {expected.raw.psnr:.3f} | {expected.raw.ssim:.4f} |"
    )
    assert row in printed
    assert (out / "bench_pixel_baseline.md").read_text().strip() == printed.strip()
    report = json.loads((out / "bench_pixel_baseline.json").read_text())
    assert report["scenes"][0]["input"]["registered"]["psnr"] == pytest.approx(reg.psnr)
    assert "targets" not in report


# --------------------------------------------------------------------------------------------
# Targets logic
# --------------------------------------------------------------------------------------------


def _result(name: str, psnr_in: float, psnr_out: float, ssim_in: float, ssim_out: float,
            wall: float, rss_gib: float) -> Any:  # fmt: skip
    def scores(psnr: float, ssim: float) -> ProtocolScores:
        s = Scores(psnr=psnr, ssim=ssim, mae=0.01, shift=(0, 2))
        return ProtocolScores(registered=s, raw=s)

    run = FitRun(command=[], returncode=0, wall_s=wall,
                       peak_rss_bytes=int(rss_gib * 2**30), log=Path("x.log"))  # fmt: skip
    return SceneResult(name, scores(psnr_in, ssim_in), scores(psnr_out, ssim_out), run)


def _verdicts(preset: str, results: list[Any]) -> dict[str, bool]:
    return {t.name: t.passed for t in bench.check_targets(preset, results)}


def test_default_targets() -> None:
    good = [
        _result("001", 28.7, 29.9, 0.85, 0.87, 400.0, 5.0),
        _result("004", 25.9, 26.8, 0.80, 0.82, 500.0, 6.0),
        _result("007", 37.8, 38.9, 0.957, 0.96, 700.0, 7.9),
    ]
    verdicts = _verdicts("default", good)
    assert verdicts == {
        "mean registered PSNR >= input mean + 1.0 dB": True,  # gain 1.0667
        "every scene: registered PSNR above its input": True,
        "every scene: registered SSIM above its input": True,
        "median wall time <= 600 s": True,  # median 500 although one scene took 700
        "peak RSS <= 8 GiB (max over scenes)": True,
    }
    bad = [
        _result("001", 28.7, 31.0, 0.85, 0.84, 400.0, 5.0),  # SSIM below
        _result("004", 25.9, 25.8, 0.80, 0.82, 650.0, 8.5),  # PSNR below, RSS over
        _result("007", 37.8, 38.0, 0.957, 0.96, 700.0, 7.0),
    ]
    verdicts = _verdicts("default", bad)
    assert verdicts == {
        "mean registered PSNR >= input mean + 1.0 dB": False,  # gain 0.8
        "every scene: registered PSNR above its input": False,
        "every scene: registered SSIM above its input": False,
        "median wall time <= 600 s": False,  # median 650
        "peak RSS <= 8 GiB (max over scenes)": False,
    }
    targets = {t.name: t for t in bench.check_targets("default", bad)}
    assert targets["every scene: registered PSNR above its input"].measured == "2/3 (not: 004)"
    assert targets["mean registered PSNR >= input mean + 1.0 dB"].measured == "31.600 vs 31.800 dB"
    # Equal is not above.
    tie = [_result("001", 28.7, 28.7, 0.85, 0.86, 10.0, 1.0)]
    assert _verdicts("fast", tie) == {
        "every scene: registered PSNR above its input": False,
        "median wall time <= 120 s": True,
    }
    slow = [_result("001", 28.7, 29.0, 0.85, 0.84, 130.0, 9.0)]
    assert _verdicts("fast", slow) == {
        "every scene: registered PSNR above its input": True,  # fast checks no SSIM / RSS
        "median wall time <= 120 s": False,
    }
    assert "median wall time <= 600 s" not in _verdicts("best", slow)


# --------------------------------------------------------------------------------------------
# Real data: the README baseline
# --------------------------------------------------------------------------------------------


def _pixel4() -> Path | None:
    env = os.environ.get("EDGEDP_PIXEL4")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data" / "pixel4"
    return path if (path / "001_left.png").is_file() else None


def test_baseline_only_reproduces_readme(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _pixel4()
    if data is None:
        pytest.skip("Pixel 4 data not found (EDGEDP_PIXEL4 or ../shared/data/pixel4)")
    rc = bench.main(["--data", str(data), "--baseline-only", "--scenes", "001", "--out",
                     str(tmp_path)])  # fmt: skip
    assert rc == 0
    assert "| 001 | 28.713 | 0.8522 | 0.0210 | 0, 2 | 28.433 | 0.8527 |" in capsys.readouterr().out
    report = json.loads((tmp_path / "bench_pixel_baseline.json").read_text())
    assert report["scenes"][0]["input"]["registered"]["psnr"] == pytest.approx(28.713, abs=5e-4)


# --------------------------------------------------------------------------------------------
# The protocol library (edgedp.eval.pixel4, edgedp.eval.runs) on the fake folder
# --------------------------------------------------------------------------------------------


def test_protocol_scenes_options_gt_and_baseline(data: Path) -> None:
    from edgedp.errors import InputError
    from edgedp.eval import BLACK_LEVEL, WHITE_LEVEL, discover_scenes, input_baseline, read_gt, read_options
    from edgedp.io import camera_preset

    scenes = discover_scenes(data)
    assert [s.name for s in scenes] == list(SCENES)
    assert [s.name for s in discover_scenes(data, ["002", "001", "002"])] == ["002", "001"]
    assert (BLACK_LEVEL, WHITE_LEVEL) == (camera_preset("pixel4").black_level, camera_preset("pixel4").white_level)
    options = read_options(data, CROP)
    assert options.flat_field == (data / "calibration" / "white_sheet_left.png", data / "calibration" / "white_sheet_right.png")
    gt = read_gt(scenes[0], CROP)
    baseline = input_baseline(scenes[0], options)
    assert gt.shape == baseline.shape == CROP and gt.dtype == baseline.dtype == np.float64
    assert 0.05 < float(baseline.mean()) < 0.7
    with pytest.raises(InputError, match="ground truth .* is 48x64 but the crop is 40x64"):
        read_gt(scenes[0], (40, 64))
    with pytest.raises(InputError, match=r"scene\(s\) 009 not found"):
        discover_scenes(data, ["009"])
    with pytest.raises(InputError, match="does not exist"):
        discover_scenes(data / "nowhere")


def test_timed_run_reports_status_wall_and_log(tmp_path: Path) -> None:
    from edgedp.eval import FitFailed, log_tail, read_output, run_fit

    run = run_fit([sys.executable, "-c", "print('stage 1'); import sys; sys.exit(3)"], tmp_path / "logs" / "x.log", quiet=True)
    assert run.returncode == 3 and run.wall_s > 0 and run.peak_rss_bytes > 0
    assert log_tail(run.log) == "stage 1"
    with pytest.raises(FitFailed, match="wrote no"):
        read_output(tmp_path / "allinfocus.png", CROP)
