"""Finding captures (one function for fit, tune and batch) and other devices' files: the
layouts, names, lists, camera presets, the Google capture app's PGM files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edgedp.io import CAMERAS, apply_camera, camera_preset
from edgedp.cli import app
from edgedp.errors import InputError
from edgedp.io import ReadOptions, find_captures, find_pair, read_dp_pair

H, W = 37, 53
runner = CliRunner()


def touch(path, value: int = 30000):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 1000)
    assert cv2.imwrite(str(path), (rng.random((H, W)) * 20000 + value).astype(np.uint16))
    return path


def names_and_pairs(captures):
    return [(c.name, c.left.name, c.right.name) for c in captures]


def test_folder_layouts(tmp_path):
    flat = tmp_path / "flat"
    for stem in ("a", "b"):
        touch(flat / f"{stem}_left.png"), touch(flat / f"{stem}_right.png")
    touch(flat / "c_L.tif"), touch(flat / "c_R.tif")
    touch(flat / "lonely_left.png")
    touch(flat / "notes.png")  # not a view: ignored
    captures, notes = find_captures([flat])
    assert names_and_pairs(captures) == [
        ("a", "a_left.png", "a_right.png"), ("b", "b_left.png", "b_right.png"), ("c", "c_L.tif", "c_R.tif"),
    ]
    assert len(notes) == 1 and "lonely_left.png" in notes[0] and "no right view" in notes[0]


def test_dpdd_google_dataset_app_and_synth_layouts(tmp_path):
    dpdd = tmp_path / "dd_dp_dataset_png"
    for name in ("1P0A1120.png", "1P0A1157.png"):
        touch(dpdd / "test_l" / "source" / name), touch(dpdd / "test_r" / "source" / name)
        touch(dpdd / "test_c" / "source" / name)  # the centre view: not a DP view
    google = tmp_path / "google" / "test"
    for capture in ("20180302_mmmm_0", "20180302_mmmm_1"):
        for pos in ("center", "left"):  # rig positions; "left" must not read as a view tag
            touch(google / "raw_left_pd" / capture / f"result_pd_left_{pos}.png")
            touch(google / "raw_right_pd" / capture / f"result_pd_right_{pos}.png")
    app_dir = tmp_path / "pdcapture"
    for stem in ("20200401_101010_123", "20200401_101011_456"):
        (app_dir).mkdir(exist_ok=True)
        for side in ("left", "right"):
            (app_dir / f"{stem}_{side}.pgm").write_bytes(b"P5 2 2 65535 " + b"\x10\x00" * 4)
    touch(tmp_path / "synth" / "sample" / "left.png"), touch(tmp_path / "synth" / "sample" / "right.png")

    captures, notes = find_captures([dpdd, google.parent, app_dir, tmp_path / "synth"])
    assert notes == []
    got = {c.name: (c.left.relative_to(tmp_path).as_posix(), c.right.relative_to(tmp_path).as_posix()) for c in captures}
    assert got == {
        "1P0A1120": ("dd_dp_dataset_png/test_l/source/1P0A1120.png", "dd_dp_dataset_png/test_r/source/1P0A1120.png"),
        "1P0A1157": ("dd_dp_dataset_png/test_l/source/1P0A1157.png", "dd_dp_dataset_png/test_r/source/1P0A1157.png"),
        "20180302_mmmm_0_result_center": ("google/test/raw_left_pd/20180302_mmmm_0/result_pd_left_center.png",
                                          "google/test/raw_right_pd/20180302_mmmm_0/result_pd_right_center.png"),
        "20180302_mmmm_0_result_left": ("google/test/raw_left_pd/20180302_mmmm_0/result_pd_left_left.png",
                                        "google/test/raw_right_pd/20180302_mmmm_0/result_pd_right_left.png"),
        "20180302_mmmm_1_result_center": ("google/test/raw_left_pd/20180302_mmmm_1/result_pd_left_center.png",
                                          "google/test/raw_right_pd/20180302_mmmm_1/result_pd_right_center.png"),
        "20180302_mmmm_1_result_left": ("google/test/raw_left_pd/20180302_mmmm_1/result_pd_left_left.png",
                                        "google/test/raw_right_pd/20180302_mmmm_1/result_pd_right_left.png"),
        "20200401_101010_123": ("pdcapture/20200401_101010_123_left.pgm", "pdcapture/20200401_101010_123_right.pgm"),
        "20200401_101011_456": ("pdcapture/20200401_101011_456_left.pgm", "pdcapture/20200401_101011_456_right.pgm"),
        "sample": ("synth/sample/left.png", "synth/sample/right.png"),
    }
    # find_pair agrees from either view, in every layout.
    for c in captures:
        assert find_pair(c.left) == (c.left, c.right) == find_pair(c.right)


def test_lists_specs_dedupe_and_name_clashes(tmp_path):
    for d in ("x", "y"):
        touch(tmp_path / d / "scene_left.png"), touch(tmp_path / d / "scene_right.png")
    listing = tmp_path / "list.txt"
    listing.write_text("# my captures\nx\n\n y/scene_left.png,y/scene_right.png  # explicit pair\nx/scene_right.png\n")
    captures, _ = find_captures([listing, tmp_path / "x"])
    assert [(c.name, c.left) for c in captures] == [("x_scene", tmp_path / "x" / "scene_left.png"),
                                                    ("y_scene", tmp_path / "y" / "scene_left.png")]
    with pytest.raises(InputError, match="no such file or folder"):
        find_captures([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DP pairs"):
        find_captures([tmp_path / "empty"])
    (tmp_path / "blank.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="no DP captures found"):
        find_captures([tmp_path / "blank.txt"])


def test_tune_uses_the_same_discovery(tmp_path):
    touch(tmp_path / "c" / "a_L.png"), touch(tmp_path / "c" / "a_R.png")
    touch(tmp_path / "c" / "b_left.png")  # partner missing
    result = runner.invoke(app, ["tune", str(tmp_path / "c"), "-o", str(tmp_path / "p.profile"), "--iterations", "1",
                                 "--camera", "nosuch"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: unknown --camera 'nosuch' (known: pixel4, pdcapture)"


# ---------------------------------------------------------------------------- camera presets


def test_camera_presets_and_precedence():
    assert set(CAMERAS) >= {"pixel4", "pdcapture"}
    pixel = camera_preset("Pixel4")
    assert (pixel.black_level, pixel.white_level, pixel.transfer) == (1024.0, 16383.0, "linear")
    assert apply_camera("pixel4", black_level=None, white_level=None, transfer=None) == {
        "black_level": 1024.0, "white_level": 16383.0, "transfer": "linear"}
    # Explicit flags win, one by one.
    assert apply_camera("pixel4", black_level=1000.0, white_level=None, transfer=None)["black_level"] == 1000.0
    assert apply_camera("pixel4", black_level=None, white_level=4095.0, transfer="auto")["white_level"] == 4095.0
    assert apply_camera(None, black_level=None, white_level=None, transfer=None)["transfer"] == "auto"
    app_preset = camera_preset("pdcapture")
    assert app_preset.black_level == 4096.0 and app_preset.black_level + app_preset.white_level == 65535.0
    for preset in CAMERAS.values():
        assert preset.source  # every preset says where its numbers come from
    with pytest.raises(InputError, match="unknown --camera 'nikon'"):
        camera_preset("nikon")


def _pgm(path, array: np.ndarray) -> None:
    """The capture app's format (PdCaptureActivity.savePgm16): 'P5 W H 65535 ' then big-endian 16-bit."""
    h, w = array.shape
    path.write_bytes(f"P5 {w} {h} 65535 ".encode() + array.astype(">u2").tobytes())


def test_capture_app_pgm_reads_with_its_preset(tmp_path):
    rng = np.random.default_rng(4)
    raw = (rng.integers(64, 1023, (H, W)) * (65535 / 1023)).astype(np.uint16)  # 10-bit scaled, as the app does
    _pgm(tmp_path / "20200401_101010_123_left.pgm", raw)
    _pgm(tmp_path / "20200401_101010_123_right.pgm", np.roll(raw, 2, axis=1))
    left, right = find_pair(tmp_path / "20200401_101010_123_right.pgm")
    result = runner.invoke(app, ["info", str(left), str(right), "--camera", "pdcapture", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "raw" and report["bit_depth"] == 16 and report["size_hw"] == [H, W]
    assert report["transfer"]["used"] == "linear" and report["black_level"] == 4096.0
    pair = read_dp_pair(left, right, ReadOptions(black_level=4096, white_level=61439))
    np.testing.assert_allclose(pair.left[0].numpy(), (raw.astype(np.float64) - 4096) / 61439, rtol=1e-6, atol=1e-7)
    lo, hi = report["value_range"]["left"]
    assert lo == pytest.approx(float(pair.left.min()), abs=1e-6) and hi == pytest.approx(float(pair.left.max()), abs=1e-6)
    # An explicit flag wins over the preset.
    explicit = json.loads(runner.invoke(app, ["info", str(left), str(right), "--camera", "pdcapture", "--black-level", "4000",
                                              "--json"]).stdout)
    assert explicit["black_level"] == 4000.0
    bad = runner.invoke(app, ["info", str(left), str(right), "--camera", "canon5d"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: unknown --camera 'canon5d'") and bad.stderr.count("\n") == 1


def test_tune_prints_a_shared_warning_once(tmp_path):
    g = np.random.default_rng(5)
    for name in ("a", "b"):
        base = (g.random((H, W)) * 200 + 20).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"{name}_left.png"), base)
        cv2.imwrite(str(tmp_path / f"{name}_right.png"), np.roll(base, 1, axis=1))
    result = runner.invoke(app, ["tune", str(tmp_path), "-o", str(tmp_path / "p.profile"), "--iterations", "1"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("warning")] == [
        "warning: 8-bit input: precision is lost"]
