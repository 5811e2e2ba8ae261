"""The CLI: version, synth -> info round trip, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgedp import __version__
from edgedp.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err, f"error message spans lines: {err!r}"
    assert "Traceback" not in result.output
    for word in words:
        assert word.lower() in err.lower(), (word, err)


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"edgedp {__version__}"


@pytest.mark.parametrize("command", ["info", "synth"])
def test_every_command_has_help_with_examples(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    result = run("synth", "-o", out, "--seed", 3, "--size", "193x257", "--max-radius", 7)
    assert result.exit_code == 0, result.output
    return out


def test_synth_writes_all_files(sample):
    for name in ("left.png", "right.png", "gt_allinfocus.png", "gt_defocus.npy", "scene.json"):
        assert (sample / name).is_file(), name
    defocus = np.load(sample / "gt_defocus.npy")
    assert defocus.shape == (193, 257)
    assert defocus.min() >= 0 and defocus.max() == pytest.approx(7.0)
    params = json.loads((sample / "scene.json").read_text())
    assert params["config"]["seed"] == 3


def test_synth_refuses_to_overwrite(sample):
    before = (sample / "left.png").read_bytes()
    result = run("synth", "-o", sample, "--seed", 4, "--size", "193x257")
    assert_one_line_error(result, "exists", "--overwrite")
    assert (sample / "left.png").read_bytes() == before


def test_synth_overwrite_replaces(tmp_path):
    assert run("synth", "-o", tmp_path, "--size", "65x81", "--seed", 1).exit_code == 0
    first = (tmp_path / "left.png").read_bytes()
    result = run("synth", "-o", tmp_path, "--size", "65x81", "--seed", 2, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "left.png").read_bytes() != first


def test_info_reports_the_simulated_disparity_range(sample):
    result = run("info", sample / "left.png", sample / "right.png", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    truth = json.loads((sample / "scene.json").read_text())
    true_lo, true_hi = truth["disparity_range_px"]
    assert report["size_hw"] == [193, 257]
    assert report["bit_depth"] == 16
    assert report["focus_side"] == "behind"
    # The estimate is per 32 px tile (tiles straddling two depths blur the top end by about 1 px);
    # it must land within the simulated range, spanning most of it.
    assert true_lo - 0.5 <= report["disparity_px"]["low"] <= report["disparity_px"]["high"] <= true_hi + 1.5
    assert report["disparity_px"]["high"] >= 0.8 * true_hi


def test_info_text_output(sample):
    result = run("info", sample / "left.png", sample / "right.png")
    assert result.exit_code == 0, result.output
    assert "193 x 257" in result.stdout
    assert "behind the focal plane" in result.stdout


def test_info_back_focus_when_views_swapped(sample):
    result = run("info", sample / "right.png", sample / "left.png", "--json")
    assert json.loads(result.stdout)["focus_side"] == "in_front"


def test_missing_file(tmp_path, sample):
    assert_one_line_error(run("info", tmp_path / "nope.png", sample / "right.png"), "nope.png")


def test_size_mismatch(tmp_path, sample):
    import cv2

    cv2.imwrite(str(tmp_path / "small.png"), np.full((37, 53), 30000, np.uint16))
    assert_one_line_error(run("info", sample / "left.png", tmp_path / "small.png"), "size")


def test_8bit_in_raw_mode(tmp_path):
    import cv2

    img = (np.random.default_rng(0).random((37, 53)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "l.png"), img)
    cv2.imwrite(str(tmp_path / "r.png"), img)
    assert_one_line_error(run("info", tmp_path / "l.png", tmp_path / "r.png", "--black-level", "64"), "8-bit")


def test_nan_input(tmp_path):
    img = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    np.save(tmp_path / "l.npy", img)
    img[3, 4] = np.nan
    np.save(tmp_path / "r.npy", img)
    assert_one_line_error(run("info", tmp_path / "l.npy", tmp_path / "r.npy"), "nan")


def test_bad_crop_text(sample):
    assert_one_line_error(run("info", sample / "left.png", sample / "right.png", "--crop", "big"), "big")


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert_one_line_error(run("synth", "-o", blocker / "sub", "--size", "37x53"), "file.txt")


def test_bad_kernel_file(tmp_path):
    np.save(tmp_path / "k.npy", np.ones((3, 4, 4), np.float32))
    assert_one_line_error(run("synth", "-o", tmp_path / "o", "--kernel-file", tmp_path / "k.npy"), "k.npy")
