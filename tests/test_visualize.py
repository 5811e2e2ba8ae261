"""Pictures: colour maps, the legend figure, the preview, and the 8-bit PNG writer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from edgedp.errors import OutputError
from edgedp.io import write_png8
from edgedp.visualize import (
    DIVERGING_CENTRE,
    colorize_defocus,
    defocus_figure,
    defocus_range,
    preview_image,
)

VIRIDIS_FIRST, VIRIDIS_LAST = (68, 1, 84), (253, 231, 37)
COOL_END, WARM_END = (59, 76, 192), (180, 4, 38)


def ramp(lo: float, hi: float, h: int = 37, w: int = 53) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, w, dtype=np.float32), (h, 1))


def test_sequential_map_ends():
    rgb = colorize_defocus(ramp(0.0, 6.0))
    assert rgb.shape == (37, 53, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == VIRIDIS_FIRST
    assert tuple(rgb[0, -1]) == VIRIDIS_LAST


def test_explicit_range_clips():
    rgb = colorize_defocus(ramp(-1.0, 9.0), vmin=1.0, vmax=5.0)
    assert tuple(rgb[0, 0]) == VIRIDIS_FIRST and tuple(rgb[0, -1]) == VIRIDIS_LAST


def test_diverging_map_centred_at_zero():
    d = ramp(-4.0, 4.0)  # 53 columns: column 26 is exactly 0
    assert d[0, 26] == 0.0
    rgb = colorize_defocus(d)
    assert tuple(rgb[0, 26]) == DIVERGING_CENTRE
    assert tuple(rgb[0, 0]) == COOL_END  # in front of the focal plane: blue
    assert tuple(rgb[0, -1]) == WARM_END  # behind it: red


def test_diverging_scale_is_symmetric():
    """|r| gives the same intensity on both sides: -2 on a [-2, 8] map is not the blue end."""
    lo, hi, diverging = defocus_range(ramp(-2.0, 8.0))
    assert (lo, hi, diverging) == (-2.0, 8.0, True)
    rgb = colorize_defocus(ramp(-2.0, 8.0))
    assert tuple(rgb[0, -1]) == WARM_END
    assert tuple(rgb[0, 0]) != COOL_END
    assert int(rgb[0, 0, 2]) > int(rgb[0, 0, 0])  # still blue-ish


def test_tensor_input_and_nan():
    d = torch.zeros(37, 53)
    d[3, 4] = float("nan")
    rgb = colorize_defocus(d)
    assert tuple(rgb[3, 4]) == (0, 0, 0)
    assert tuple(rgb[0, 0]) == VIRIDIS_FIRST


def test_figure_has_a_legend():
    d = ramp(0.0, 7.0, 301, 401)
    fig = defocus_figure(d)
    assert fig.dtype == np.uint8 and fig.ndim == 3 and fig.shape[2] == 3
    assert fig.shape[1] > 401 + 30 and fig.shape[0] > 301  # colour bar on the right, title on top
    # The map sits unchanged inside the figure (left part), the legend's colours on its right.
    rgb = colorize_defocus(d)
    found = cv2.matchTemplate(fig, rgb, cv2.TM_SQDIFF)
    y, x = np.unravel_index(np.argmin(found), found.shape)
    assert np.array_equal(fig[y : y + 301, x : x + 401], rgb)
    right = fig[:, 401 + 10 :]
    assert (np.abs(right.astype(int) - VIRIDIS_LAST).sum(-1) == 0).any()
    assert (right.sum(-1) == 0).any()  # black tick labels


def test_small_map_is_enlarged_for_legibility():
    fig = defocus_figure(ramp(-3.0, 3.0))
    assert fig.shape[0] >= 240 and fig.shape[1] > 53


def test_preview_side_by_side():
    g = torch.Generator().manual_seed(0)
    blurry = 0.05 * torch.rand(1, 37, 53, generator=g)  # dark raw-like data
    sharp = 0.05 * torch.rand(1, 37, 53, generator=g)
    out = preview_image(blurry, sharp, torch.from_numpy(ramp(0.0, 5.0)))
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert out.shape[1] == 3 * 53 + 2 * 2 and out.shape[0] == 37  # too small for labels
    # Normalized by the input's 99.5th percentile, then gamma: dark data is bright on screen.
    assert out[:, :53].mean() > 120
    assert np.array_equal(out[:, -53:], colorize_defocus(ramp(0.0, 5.0)))


def test_preview_rgb_downscaled_and_labelled():
    x = torch.rand(3, 301, 1001, generator=torch.Generator().manual_seed(1))
    out = preview_image(x, x, torch.zeros(301, 1001), vmin=-4.0, vmax=4.0)  # a front+back layer range
    assert out.shape[1] == 2000
    assert out.shape[0] > round(301 * 2000 / (3 * 1001 + 2 * 10))  # a label strip on top
    assert tuple(out[-1, -1]) == DIVERGING_CENTRE  # in focus everywhere
    assert tuple(preview_image(x, x, torch.zeros(301, 1001))[-1, -1]) == VIRIDIS_FIRST


def test_write_png8(tmp_path):
    rgb = colorize_defocus(ramp(0.0, 4.0))
    path = write_png8(tmp_path / "d.png", rgb)
    back = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, rgb)
    with pytest.raises(OutputError, match="exists"):
        write_png8(path, rgb)
    write_png8(path, np.zeros_like(rgb), overwrite=True)
    assert cv2.imread(str(path)).max() == 0
    with pytest.raises(OutputError, match=".png"):
        write_png8(tmp_path / "d.jpg", rgb)
    with pytest.raises(ValueError):
        write_png8(tmp_path / "e.png", rgb.astype(np.uint16))
