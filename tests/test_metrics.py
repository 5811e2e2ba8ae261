"""Tests for edgedp.metrics: agreement with scikit-image and the Pixel 4 protocol baseline."""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from edgedp.metrics import ProtocolScores, Scores, evaluate, mae, psnr, ssim


def _sk_ssim(x: np.ndarray, gt: np.ndarray) -> float:
    return float(
        structural_similarity(
            x, gt, data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    img = ndi.gaussian_filter(rng.random(shape), sigma)
    return (img - img.min()) / (img.max() - img.min())


def _pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1234)
    out = []
    for shape in [(37, 53), (64, 65)]:
        h, w = shape
        a = rng.random(shape)
        out.append((f"uniform{shape}", a, np.clip(a + 0.1 * rng.standard_normal(shape), 0, 1)))
        yy, xx = np.mgrid[0:h, 0:w]
        s = 0.5 + 0.3 * np.sin(xx / 3.0) * np.cos(yy / 5.0) + 0.1 * (xx / w)
        s2 = 0.9 * ndi.gaussian_filter(s, 1.2) + 0.02
        out.append((f"structured{shape}", s2, s))
        c = 0.5 + 1e-4 * rng.standard_normal(shape)
        out.append((f"constantish{shape}", c, np.full(shape, 0.5)))
        g = _smooth(rng, shape, 2.0)
        out.append((f"smooth{shape}", np.clip(g + 0.02 * rng.standard_normal(shape), 0, 1), g))
    return out


@pytest.mark.parametrize("name,x,gt", _pairs(), ids=[p[0] for p in _pairs()])
def test_metrics_match_skimage(name: str, x: np.ndarray, gt: np.ndarray) -> None:
    assert psnr(x, gt) == pytest.approx(peak_signal_noise_ratio(gt, x, data_range=1), abs=1e-4)
    assert ssim(x, gt) == pytest.approx(_sk_ssim(x, gt), abs=1e-4)
    assert mae(x, gt) == pytest.approx(float(np.mean(np.abs(x - gt))), abs=1e-12)


def test_ssim_float32_and_torch_inputs() -> None:
    rng = np.random.default_rng(5)
    gt = _smooth(rng, (37, 53), 1.5)
    x = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1)
    ref = _sk_ssim(x, gt)
    assert ssim(x.astype(np.float32), gt.astype(np.float32)) == pytest.approx(ref, abs=1e-4)
    assert ssim(torch.from_numpy(x), torch.from_numpy(gt)) == pytest.approx(ref, abs=1e-12)
    assert psnr(torch.from_numpy(x), gt) == pytest.approx(psnr(x, gt), abs=1e-12)


def test_identical_images() -> None:
    gt = _smooth(np.random.default_rng(0), (37, 53), 1.0)
    assert psnr(gt, gt) == math.inf
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)
    assert mae(gt, gt) == 0.0
    s = evaluate(gt, gt)
    assert isinstance(s.registered, Scores)
    assert s.registered.shift == (0, 0)
    assert s.registered.psnr == math.inf
    assert s.registered.ssim == pytest.approx(1.0, abs=1e-12)
    assert s.registered.mae == 0.0
    assert s.raw.psnr == math.inf and s.raw.shift == (0, 0)


@pytest.mark.parametrize("shift", [(1, 2), (-3, 1), (4, -4), (0, 0)])
def test_evaluate_finds_planted_shift(shift: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    gt = _smooth(rng, (64, 65), 1.5)
    # out[y + dy, x + dx] == gt[y, x]: the output's content sits dy rows down, dx columns right.
    out = np.roll(gt, shift, axis=(0, 1))
    s = evaluate(out, gt)
    assert isinstance(s, ProtocolScores)
    assert s.registered.shift == shift
    assert s.registered.psnr == math.inf  # the interior never touches the wrapped border
    assert s.registered.mae == 0.0
    assert s.registered.ssim == pytest.approx(1.0, abs=1e-12)
    if shift != (0, 0):
        assert s.raw.psnr < 40
    # With noise the shift is still found and the registered score is high but finite.
    noisy = np.clip(out + 0.01 * rng.standard_normal(out.shape), 0, 1)
    n = evaluate(noisy, gt)
    assert n.registered.shift == shift
    assert 35 < n.registered.psnr < 45


def test_evaluate_registered_is_interior_metrics() -> None:
    rng = np.random.default_rng(11)
    gt = _smooth(rng, (37, 53), 1.0)
    out = np.clip(np.roll(gt, (0, 2), axis=(0, 1)) + 0.03 * rng.standard_normal(gt.shape), 0, 1)
    s = evaluate(out, gt, max_shift=3)
    dy, dx = s.registered.shift
    assert (dy, dx) == (0, 2)
    m, (h, w) = 3, gt.shape
    o, g = out[m + dy : h - m + dy, m + dx : w - m + dx], gt[m : h - m, m : w - m]
    assert s.registered.psnr == pytest.approx(peak_signal_noise_ratio(g, o, data_range=1))
    assert s.registered.ssim == pytest.approx(_sk_ssim(o, g), abs=1e-4)
    assert s.registered.mae == pytest.approx(float(np.abs(o - g).mean()))
    assert s.raw.psnr == pytest.approx(peak_signal_noise_ratio(gt, out, data_range=1))
    assert s.raw.ssim == pytest.approx(_sk_ssim(out, gt), abs=1e-4)


def test_evaluate_clips_output() -> None:
    rng = np.random.default_rng(3)
    gt = _smooth(rng, (37, 53), 1.0)
    out = 1.6 * gt - 0.3  # spills below 0 and above 1
    clipped = np.clip(out, 0, 1)
    s = evaluate(torch.from_numpy(out), torch.from_numpy(gt))
    assert s.raw.psnr == pytest.approx(psnr(clipped, gt), abs=1e-12)
    assert s.raw.psnr > psnr(out, gt) + 0.5
    assert s.raw.mae == pytest.approx(mae(clipped, gt), abs=1e-12)
    assert s.raw.ssim == pytest.approx(_sk_ssim(clipped, gt), abs=1e-4)


def _pixel4_root() -> Path:
    env = os.environ.get("EDGEDP_PIXEL4")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "pixel4"


def _read16(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint16, path
    return img.astype(np.float64)


def test_pixel4_scene001_input_baseline() -> None:
    """Reproduce the data README's baseline row for scene 001 (protocol steps 1-5)."""
    root = _pixel4_root()
    names = [
        "001_left.png",
        "001_right.png",
        "calibration/white_sheet_left.png",
        "calibration/white_sheet_right.png",
        "gt_all_in_focus/001_gt.png",
    ]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        pytest.skip(f"Pixel 4 data not found under {root} (set EDGEDP_PIXEL4): {missing}")
    left = (_read16(root / names[0]) - 1024) / 16383
    right = (_read16(root / names[1]) - 1024) / 16383
    # box101 = normalized 101x101 mean filter, cv2.blur with its default border
    # (BORDER_REFLECT_101).  The border mode does not matter: the crop stays >= 252 px away from
    # every edge, beyond the filter's 50 px radius.
    wl = cv2.blur(_read16(root / names[2]) - 1024, (101, 101))
    wr = cv2.blur(_read16(root / names[3]) - 1024, (101, 101))
    right = right * (wl / wr)
    r0, c0 = (1512 - 1008) // 2, (2016 - 1344) // 2
    inp = ((left + right) / 2)[r0 : r0 + 1008, c0 : c0 + 1344]
    gt = _read16(root / names[4]) / 65535
    assert gt.shape == inp.shape == (1008, 1344)

    s = evaluate(inp, gt)
    assert s.registered.shift == (0, 2)
    assert s.registered.psnr == pytest.approx(28.713, abs=1e-3)
    assert s.registered.ssim == pytest.approx(0.8522, abs=1e-4)
    assert s.registered.mae == pytest.approx(0.0210, abs=1e-4)
    assert s.raw.psnr == pytest.approx(28.433, abs=1e-3)
    assert s.raw.ssim == pytest.approx(0.8527, abs=1e-4)


def test_streak_energy_sees_horizontal_streaks_in_flat_regions():
    from edgedp.metrics import streak_energy

    gen = np.random.default_rng(0)
    h, w = 193, 257
    noise = 0.01 * gen.standard_normal((h, w))
    rows = np.arange(h)[:, None]
    streaks = noise + 0.01 * np.sin(2 * np.pi * rows / 9.0) * np.ones((1, w))
    clean = streak_energy(noise)
    assert streak_energy(streaks) > 20 * clean
    # Vertical streaks (coherent along columns) and a smooth brightness ramp across rows do not count.
    vertical = noise + 0.01 * np.sin(2 * np.pi * np.arange(w)[None, :] / 9.0)
    ramp = noise + 0.05 * rows / h
    assert streak_energy(vertical) < 3 * clean and streak_energy(ramp) < 1.5 * clean
    # With a reference, only the flat half of the frame counts: streaks confined to a textured half
    # are not what the measure reports, streaks in the flat half are.
    reference = np.zeros((h, w))
    reference[:, : w // 2] = gen.random((h, w // 2))
    in_texture = noise.copy()
    in_texture[:, : w // 2] = streaks[:, : w // 2]
    in_flat = noise.copy()
    in_flat[:, w // 2 :] = streaks[:, w // 2 :]
    assert streak_energy(in_flat, reference) > 10 * streak_energy(in_texture, reference)
    with pytest.raises(ValueError):
        streak_energy(noise[:, :10])


def test_bead_energy_sees_dotted_vertical_edges():
    from edgedp.metrics import bead_energy

    h, w = 101, 121
    gt = np.zeros((h, w))
    gt[:, 60:] = 0.5  # one strong vertical edge
    gt[0, 0] = 1.0  # a highlight far from it
    clean = np.zeros((h, w))
    beads = np.zeros((h, w))
    beads[::6, 58:62] = 0.2  # dots along the edge
    assert bead_energy(clean, gt) == 0.0
    assert bead_energy(beads, gt) > 0.0
    assert bead_energy(beads, np.zeros((h, w))) == 0.0  # no edges: nothing to measure
