"""End to end on a real Pixel 4 dev scene: `edgedp fit` on a central crop beats the blurry input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgedp.cli import app
from edgedp.io import ReadOptions, read_dp_pair, read_normalized
from edgedp.metrics import evaluate

CROP = (336, 448)  # central crop of the protocol's 1008x1344 region, same centre


@pytest.mark.slow
def test_fit_beats_input_on_pixel4_crop(pixel4, tmp_path):
    white = (pixel4 / "calibration/white_sheet_left.png", pixel4 / "calibration/white_sheet_right.png")
    args = [
        "fit", str(pixel4 / "001_left.png"), str(pixel4 / "001_right.png"), "-o", str(tmp_path / "out"),
        "--black-level", "1024", "--white-level", "16383", "--flat-field", str(white[0]), str(white[1]),
        "--crop", f"{CROP[0]}x{CROP[1]}", "--preset", "fast",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ours = read_normalized(tmp_path / "out/allinfocus.png")[0].numpy()
    pair = read_dp_pair(args[1], args[2], ReadOptions(black_level=1024, white_level=16383, flat_field=white, crop=CROP))
    blurry = ((pair.left + pair.right) / 2)[0].numpy()
    gt = read_normalized(pixel4 / "gt_all_in_focus/001_gt.png")[0].numpy()
    y0, x0 = (1008 - CROP[0]) // 2, (1344 - CROP[1]) // 2
    gt = gt[y0 : y0 + CROP[0], x0 : x0 + CROP[1]]
    base, fitted = evaluate(blurry, gt), evaluate(ours, gt)
    assert fitted.registered.psnr > base.registered.psnr + 0.5, (base, fitted)
    assert fitted.registered.ssim > base.registered.ssim
