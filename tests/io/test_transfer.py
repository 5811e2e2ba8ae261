"""Colour transfer: the IEC 61966-2-1 curve, what files declare (PNG chunks, TIFF ICC tag), the
auto choice, decoding on read, sRGB outputs, `--transfer` on the CLI."""

from __future__ import annotations

import json
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgedp.cli import app
from edgedp.errors import InputError
from edgedp.io.images import (
    ReadOptions,
    detect_transfer,
    png_colour_chunks,
    read_dp_pair,
    read_normalized,
    tiff_icc_profile,
)
from edgedp.io.writers import png_with_srgb_chunk, write_png16, write_srgb_png8
from edgedp.io import ENCODED_KNEE, LINEAR_KNEE, linear_to_srgb, srgb_to_linear

H, W = 37, 53
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------- the curve


def test_curve_values_from_the_standard():
    # Reference points computed by hand from IEC 61966-2-1's two segments.
    encoded = np.array([0.0, 0.02, ENCODED_KNEE, 0.5, 1.0])
    expected = np.array([0.0, 0.02 / 12.92, ENCODED_KNEE / 12.92, ((0.5 + 0.055) / 1.055) ** 2.4, 1.0])
    np.testing.assert_allclose(srgb_to_linear(encoded), expected, rtol=1e-12, atol=0)
    assert srgb_to_linear(np.array(0.5)) == pytest.approx(0.21404114, abs=1e-8)
    assert linear_to_srgb(np.array(0.5)) == pytest.approx(0.73535698, abs=1e-8)
    # The two segments meet at the knee (continuity within float rounding).
    assert ENCODED_KNEE / 12.92 == pytest.approx(LINEAR_KNEE, rel=1e-4)
    assert linear_to_srgb(np.array(LINEAR_KNEE)) == pytest.approx(ENCODED_KNEE, rel=1e-4)


def test_round_trip_numpy_torch_and_every_8bit_code():
    # The standard's rounded knees (0.04045 / 12.92 = 0.00313080 vs 0.0031308) leave a sliver
    # where the two directions use different segments: inverse to 3e-8 there, 1e-12 elsewhere.
    x = np.linspace(-0.2, 1.2, 4001)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=5e-8)
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=5e-9)
    away = np.abs(np.abs(x) - ENCODED_KNEE) > 1e-4
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x[away])), x[away], atol=1e-12)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(srgb_to_linear(t), torch.from_numpy(srgb_to_linear(t.numpy())), rtol=0, atol=1e-15)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(t)), t, rtol=0, atol=5e-8)
    f32 = torch.rand(5, 7)
    assert srgb_to_linear(f32).dtype == torch.float32 and srgb_to_linear(f32.numpy()).dtype == np.float32
    codes = np.arange(256)
    back = np.rint(linear_to_srgb(srgb_to_linear(codes / 255.0)) * 255).astype(int)
    np.testing.assert_array_equal(back, codes)
    assert np.all(np.diff(srgb_to_linear(codes / 255.0)) > 0)  # strictly increasing


# -------------------------------------------------------------------- what a file declares


def _png_with_chunk(path, image: np.ndarray, kind: bytes, data: bytes):
    ok, buf = cv2.imencode(".png", image)
    png = buf.tobytes()
    end = 8 + 12 + int.from_bytes(png[8:12], "big")
    chunk = len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    path.write_bytes(png[:end] + chunk + png[end:])
    return path


def _icc(description: str) -> bytes:
    """A minimal ICC profile: 128-byte header, a one-entry tag table, a v2 'desc' tag."""
    text = description.encode("latin-1") + b"\0"
    desc = b"desc" + b"\0" * 4 + len(text).to_bytes(4, "big") + text
    offset = 128 + 4 + 12
    body = (1).to_bytes(4, "big") + b"desc" + offset.to_bytes(4, "big") + len(desc).to_bytes(4, "big") + desc
    header = (128 + len(body)).to_bytes(4, "big") + b"\0" * 124
    return header + body


def _tiff16(path, image: np.ndarray, icc: bytes | None, order: str = "<"):
    """A baseline 16-bit gray TIFF (one strip), optionally with an ICC profile (tag 34675)."""
    h, w = image.shape
    pixels = image.astype(order + "u2").tobytes()
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, None), (277, 3, 1, 1), (278, 3, 1, h), (279, 4, 1, len(pixels))]
    if icc is not None:
        entries.append((34675, 7, len(icc), None))
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    icc_at = data_at + len(pixels)
    ifd = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = data_at
        if tag == 34675:
            value = icc_at
        if kind == 3:
            ifd += struct.pack(order + "HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack(order + "HHII", tag, kind, count, value)
    ifd += struct.pack(order + "I", 0)
    magic = b"II" if order == "<" else b"MM"
    path.write_bytes(magic + struct.pack(order + "HI", 42, 8) + ifd + pixels + (icc or b""))
    return path


def test_png_chunks_and_auto_choice(tmp_path):
    img16 = (np.random.default_rng(0).random((H, W)) * 60000).astype(np.uint16)
    plain = tmp_path / "plain.png"
    cv2.imwrite(str(plain), img16)
    assert png_colour_chunks(plain) == {}
    assert detect_transfer(plain, 16) == ("linear", "16-bit file without a colour tag")
    assert detect_transfer(plain, 16, raw=True)[0] == "linear"

    tagged = tmp_path / "tagged.png"
    tagged.write_bytes(png_with_srgb_chunk(plain.read_bytes()))
    assert png_colour_chunks(tagged) == {"sRGB": 0}
    assert detect_transfer(tagged, 16) == ("srgb", "PNG sRGB chunk")
    assert detect_transfer(tagged, 16, raw=True)[0] == "linear"  # raw mode is linear whatever the tag
    np.testing.assert_array_equal(cv2.imread(str(tagged), cv2.IMREAD_UNCHANGED), img16)  # still a valid PNG

    icc = _png_with_chunk(tmp_path / "icc.png", img16, b"iCCP", b"Display P3\0\0" + zlib.compress(b"x" * 40))
    assert detect_transfer(icc, 16) == ("srgb", "PNG ICC profile 'Display P3'")
    cicp_linear = _png_with_chunk(tmp_path / "cicp.png", img16, b"cICP", bytes([1, 8, 0, 1]))
    assert detect_transfer(cicp_linear, 16) == ("linear", "PNG cICP chunk: linear")
    cicp_srgb = _png_with_chunk(tmp_path / "cicp2.png", img16, b"cICP", bytes([1, 13, 0, 1]))
    assert detect_transfer(cicp_srgb, 16)[0] == "srgb"

    eight = tmp_path / "eight.png"
    cv2.imwrite(str(eight), (img16 >> 8).astype(np.uint8))
    assert detect_transfer(eight, 8) == ("srgb", "8-bit file")
    assert detect_transfer(tmp_path / "x.npy", 32) == ("linear", "float data")


@pytest.mark.parametrize("order", ["<", ">"])
def test_tiff_icc_tag(tmp_path, order):
    img = (np.random.default_rng(1).random((H, W)) * 60000).astype(np.uint16)
    with_icc = _tiff16(tmp_path / "dpp.tif", img, _icc("sRGB IEC61966-2.1"), order)
    without = _tiff16(tmp_path / "raw.tif", img, None, order)
    np.testing.assert_array_equal(cv2.imread(str(with_icc), cv2.IMREAD_UNCHANGED), img)  # a real TIFF
    assert tiff_icc_profile(with_icc) == _icc("sRGB IEC61966-2.1")
    assert tiff_icc_profile(without) is None
    assert detect_transfer(with_icc, 16) == ("srgb", "TIFF ICC profile 'sRGB IEC61966-2.1'")
    assert detect_transfer(without, 16)[0] == "linear"
    assert tiff_icc_profile(tmp_path / "dpp.tif") is not None
    (tmp_path / "not.tif").write_bytes(b"hello world, not a tiff")
    assert tiff_icc_profile(tmp_path / "not.tif") is None


# ------------------------------------------------------------------------- reading, writing


def _eight_bit_pair(tmp_path, seed=3):
    rng = np.random.default_rng(seed)
    codes = rng.integers(20, 240, (H, W), dtype=np.uint8)
    left, right = tmp_path / "s_left.png", tmp_path / "s_right.png"
    cv2.imwrite(str(left), codes)
    cv2.imwrite(str(right), np.roll(codes, 1, axis=1))
    return left, right, codes


def test_read_decodes_srgb_and_reports_why(tmp_path):
    left, right, codes = _eight_bit_pair(tmp_path)
    auto = read_dp_pair(left, right)
    assert (auto.info.transfer, auto.info.transfer_requested, auto.info.transfer_reason) == ("srgb", "auto", "8-bit file")
    np.testing.assert_allclose(auto.left[0].numpy(), srgb_to_linear(codes / 255.0), rtol=1e-6, atol=1e-7)
    linear = read_dp_pair(left, right, ReadOptions(transfer="linear"))
    np.testing.assert_allclose(linear.left[0].numpy(), codes / 255.0, rtol=1e-6)
    forced = read_dp_pair(left, right, ReadOptions(transfer="SRGB"))
    assert forced.info.transfer == "srgb" and forced.info.transfer_reason == "--transfer srgb"
    with pytest.raises(InputError, match="raw sensor data"):
        ReadOptions(black_level=64, transfer="srgb")
    with pytest.raises(InputError, match="--transfer 'gamma'"):
        ReadOptions(transfer="gamma")


def test_views_that_disagree_are_read_alike_with_one_warning(tmp_path):
    img = (np.random.default_rng(2).random((H, W)) * 60000 + 1000).astype(np.uint16)
    left, right = tmp_path / "a_left.png", tmp_path / "a_right.png"
    write_png16(left, img / 65535.0, transfer="srgb")  # tagged
    cv2.imwrite(str(right), img)  # untagged
    pair = read_dp_pair(left, right)
    assert pair.info.transfer == "srgb"
    assert len([w for w in pair.info.warnings if "reads as srgb" in w]) == 1


def test_srgb_outputs_round_trip(tmp_path):
    x = torch.linspace(0, 1, H * W).reshape(1, H, W)
    path = write_png16(tmp_path / "out.png", x, transfer="srgb")
    assert png_colour_chunks(path) == {"sRGB": 0}
    codes = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(codes, np.rint(linear_to_srgb(x[0].double().numpy()) * 65535).astype(np.uint16))
    back = read_normalized(path)  # auto: tagged -> decoded to linear
    np.testing.assert_allclose(back[0].numpy(), x[0].numpy(), atol=2e-4)
    eight = write_srgb_png8(tmp_path / "v.png", x)
    assert png_colour_chunks(eight) == {"sRGB": 0}
    np.testing.assert_allclose(srgb_to_linear(cv2.imread(str(eight), cv2.IMREAD_UNCHANGED) / 255.0), x[0].numpy(), atol=0.02)


# ---------------------------------------------------------------------------------- the CLI


def test_info_reports_the_transfer(tmp_path):
    left, right, _ = _eight_bit_pair(tmp_path)
    result = run("info", left, right, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["transfer"] == {"requested": "auto", "used": "srgb", "reason": "8-bit file"}
    text = run("info", left, right)
    assert "transfer      srgb (auto: 8-bit file)" in text.stdout
    assert text.stderr.strip().splitlines() == ["warning: 8-bit input: precision is lost"]
    lin = json.loads(run("info", left, right, "--transfer", "linear", "--json").stdout)
    assert lin["transfer"]["used"] == "linear" and lin["value_range"]["left"][1] > report["value_range"]["left"][1]


@pytest.mark.parametrize("flags, words", [(("--transfer", "gamma"), ("--transfer", "gamma")),
                                          (("--black-level", "64", "--transfer", "srgb"), ("--transfer srgb", "linear"))])
def test_bad_transfer_is_one_line(tmp_path, flags, words):
    left, right, _ = _eight_bit_pair(tmp_path)
    if "--black-level" in flags:  # raw mode needs 16-bit data: use a 16-bit pair
        for p in (left, right):
            cv2.imwrite(str(p), (np.random.default_rng(0).random((H, W)) * 60000).astype(np.uint16))
    result = run("info", left, right, *flags)
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err
    for word in words:
        assert word in err


def test_synth_srgb_writes_dpdd_like_pairs(tmp_path):
    result = run("synth", "-o", tmp_path, "--transfer", "srgb", "--size", "45x61", "--max-radius", 4)
    assert result.exit_code == 0, result.output
    left = cv2.imread(str(tmp_path / "left.png"), cv2.IMREAD_UNCHANGED)
    gt = cv2.imread(str(tmp_path / "gt_allinfocus.png"), cv2.IMREAD_UNCHANGED)
    assert left.dtype == np.uint8 and gt.dtype == np.uint16
    assert png_colour_chunks(tmp_path / "left.png") == {"sRGB": 0} and png_colour_chunks(tmp_path / "gt_allinfocus.png") == {"sRGB": 0}
    params = json.loads((tmp_path / "scene.json").read_text())
    assert params["transfer"] == "srgb" and params["config"]["focus"] == "both"  # front+back by default
    defocus = np.load(tmp_path / "gt_defocus.npy")
    assert defocus.min() < -1 and defocus.max() > 1
    # The views are the simulator's linear rendering, encoded: decoding gives back linear light.
    pair = read_dp_pair(tmp_path / "left.png", tmp_path / "right.png")
    assert pair.info.transfer == "srgb"
    truth = srgb_to_linear(gt / 65535.0)
    assert abs(float(pair.left.mean()) - truth.mean()) < 0.05
    assert run("synth", "-o", tmp_path / "x", "--transfer", "auto").exit_code == 2


# ------------------------------------------------------------------- why: the blur model


def psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def test_blur_model_holds_in_linear_light_only():
    """The DP views of an sRGB capture (8-bit, encoded after the optics blurred linear light)
    are explained by the blur model only after decoding: re-rendering the true scene in linear
    light and encoding matches the stored views to 8-bit quantization, while the same blur of
    the *encoded* sharp image (what fitting the encoded values assumes) misses them by far more
    at the depth of field's edges."""
    from edgedp.synth import SynthConfig, make_scene, render_scene

    config = SynthConfig(size=(61, 83), focus="both", max_radius=5.0, seed=1, noise_std=0.0, shot_noise=0.0)
    scene = make_scene(config)
    stored = np.rint(linear_to_srgb(scene.left.clamp(0, 1).double().numpy()) * 255) / 255  # synth --transfer srgb
    linear_model = linear_to_srgb(scene.left.clamp(0, 1).double().numpy())
    encoded_model = render_scene(linear_to_srgb(scene.allinfocus), scene.defocus, config).left.double().numpy()
    assert psnr(stored, linear_model) > 55  # quantization only
    assert psnr(stored, encoded_model) < 45
    assert psnr(stored, linear_model) - psnr(stored, encoded_model) > 15


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 11's target, not met by today's restoration: srgb - encoded gain -0.01 dB on average (-0.16 .. "
    "+0.19 per scene, tools/bench_srgb.py --scenes 4 --size 97x131 --iterations 40); its own errors (~20-22 dB PSNR) dwarf the blur-model error "
    "of fitting encoded values (35.6 dB). Strict: when the restoration rewrite makes it pass, drop this marker.",
)
def test_srgb_path_gains_1db_more_than_fitting_encoded_values(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_srgb", Path(__file__).resolve().parents[2] / "tools" / "bench_srgb.py")
    bench_srgb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_srgb)
    compare_scene = bench_srgb.compare_scene

    diffs = []
    for seed in (1, 2):
        folder = tmp_path / f"s{seed}"
        assert run("synth", "-o", folder, "--transfer", "srgb", "--size", "97x131", "--seed", seed, "--max-radius", 5).exit_code == 0
        scores = compare_scene(folder, iterations=40)
        diffs.append((scores["srgb"] - scores["input"]) - (scores["encoded"] - scores["input"]))
    assert float(np.mean(diffs)) >= 1.0, diffs


def test_fit_of_an_8bit_pair_prints_each_warning_once_without_source_lines(tmp_path):
    """As a user runs it (a real process, Python's default warning filters): one `warning:` line
    per condition on stderr, no `UserWarning` with a source line, and the transfer it chose."""
    import subprocess
    import sys
    from pathlib import Path

    left, right, _ = _eight_bit_pair(tmp_path)
    edgedp = str(Path(sys.executable).with_name("edgedp"))
    proc = subprocess.run([edgedp, "fit", str(left), str(right), "-o", str(tmp_path / "out"), "--iterations", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert proc.returncode == 0, proc.stderr
    warnings_ = [line for line in proc.stderr.splitlines() if "warn" in line.lower()]
    assert warnings_ == ["warning: 8-bit input: precision is lost"], proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr
    assert "input    transfer srgb (auto: 8-bit file)" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input"]["transfer"] == {"requested": "auto", "used": "srgb", "reason": "8-bit file"}
    # The all-in-focus image is encoded back to sRGB (and says so); the bundle stays linear.
    assert png_colour_chunks(tmp_path / "out" / "allinfocus.png") == {"sRGB": 0}
    from edgedp.formats import load_bundle

    bundle = load_bundle(tmp_path / "out" / "scene")
    written = cv2.imread(str(tmp_path / "out" / "allinfocus.png"), cv2.IMREAD_UNCHANGED) / 65535.0
    np.testing.assert_allclose(written, linear_to_srgb(bundle.allinfocus[0].clamp(0, 1).double().numpy()), atol=1e-4)
    assert bundle.meta["input"]["transfer"]["used"] == "srgb"
