"""Tests for edgedp.io.images: reading/normalizing DP pairs, protocol steps 1-3, errors, atomic writes."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgedp.errors import InputError, OutputError
from edgedp.io import (
    FLAT_FIELD_BOX,
    ReadOptions,
    find_pair,
    parse_size,
    prepare_output_dir,
    read_dp_pair,
    read_image,
    read_normalized,
    to_numpy_image,
    write_json,
    write_npy,
    write_png16,
)

H, W = 37, 53
PIXEL = dict(black_level=1024.0, white_level=16383.0)


def _raw(seed: int, shape: tuple[int, ...] = (H, W)) -> np.ndarray:
    """Pixel-like 14-bit data with black level 1024, as uint16."""
    rng = np.random.default_rng(seed)
    return rng.integers(900, 1024 + 16383, size=shape, dtype=np.uint16)


def _png(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


def _raw_pair(tmp_path: Path, shape: tuple[int, int] = (H, W)) -> tuple[Path, Path]:
    return (
        _png(tmp_path / "scene_left.png", _raw(1, shape)),
        _png(tmp_path / "scene_right.png", _raw(2, shape)),
    )


def _box_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Independent box mean: edge padding + integral image (float64)."""
    r = size // 2
    padded = np.pad(image.astype(np.float64), r, mode="edge")
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))
    integral[1:, 1:] = padded.cumsum(0).cumsum(1)
    h, w = image.shape
    total = (
        integral[size : size + h, size : size + w]
        - integral[:h, size : size + w]
        - integral[size : size + h, :w]
        + integral[:h, :w]
    )
    return total / size**2


def _assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


# ---------------------------------------------------------------------------- round trips


def test_png16_gray_roundtrip_and_quantization(tmp_path):
    image = torch.linspace(-0.1, 1.1, H * W).reshape(1, H, W)
    path = write_png16(tmp_path / "gray.png", image)
    array, bits = read_image(path)
    assert bits == 16 and array.shape == (H, W) and array.dtype == np.uint16
    expected = np.rint(np.clip(image[0].numpy().astype(np.float64), 0, 1) * 65535)
    np.testing.assert_array_equal(array, expected.astype(np.uint16))
    assert array[0, 0] == 0 and array[-1, -1] == 65535


def test_png16_rgb_channel_order(tmp_path):
    red = torch.zeros(3, H, W)
    red[0] = 1.0
    red[2] = 0.25
    path = write_png16(tmp_path / "red.png", red)
    # On disk OpenCV keeps BGR: red must be the last channel there.
    on_disk = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert on_disk[0, 0].tolist() == [16384, 0, 65535]
    array, bits = read_image(path)
    assert bits == 16 and array.shape == (H, W, 3)
    assert array[..., 0].min() == 65535 and array[..., 1].max() == 0
    assert (array[..., 2] == 16384).all()
    other = tmp_path / "red_copy.png"  # the same file as both views is refused (test_faults)
    other.write_bytes(path.read_bytes())
    pair = read_dp_pair(path, other)
    assert pair.left.shape == (3, H, W) and pair.info.kind == "rgb" and pair.info.channels == 3
    assert pair.left[0].min().item() == 1.0 and pair.left[1].max().item() == 0.0
    assert pair.left[2, 0, 0].item() == pytest.approx(16384 / 65535)


def test_npy_npz_tiff_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    left = rng.random((H, W), dtype=np.float32)
    right = rng.random((H, W), dtype=np.float32)
    npy = write_npy(tmp_path / "a.npy", torch.from_numpy(left))
    array, bits = read_image(npy)
    assert bits == 32 and array.dtype == np.float32
    np.testing.assert_array_equal(array, left)

    np.savez(tmp_path / "pair.npz", left=left, right=right)
    assert find_pair(tmp_path / "pair.npz") == (tmp_path / "pair.npz", tmp_path / "pair.npz")
    pair = read_dp_pair(tmp_path / "pair.npz", tmp_path / "pair.npz")
    assert pair.info.kind == "float" and pair.info.bit_depth == 32
    np.testing.assert_array_equal(pair.left[0].numpy(), left)
    np.testing.assert_array_equal(pair.right[0].numpy(), right)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "pair.npz")
    _assert_one_line(err, "pair.npz", "DP pair")

    np.savez(tmp_path / "single.npz", image=left)
    np.testing.assert_array_equal(read_image(tmp_path / "single.npz")[0], left)
    # Channel-first (3, H, W) arrays come back channel-last RGB.
    rgb = rng.random((3, H, W)).astype(np.float32)
    np.save(tmp_path / "rgb.npy", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.npy")[0], np.moveaxis(rgb, 0, -1))

    assert cv2.imwrite(str(tmp_path / "f.tiff"), left)
    tiff, bits = read_image(tmp_path / "f.tiff")
    assert bits == 32
    np.testing.assert_array_equal(tiff, left)
    raw16 = _raw(3)
    _png(tmp_path / "r.tif", raw16)
    tif16, bits = read_image(tmp_path / "r.tif")
    assert bits == 16
    np.testing.assert_array_equal(tif16, raw16)


def test_to_numpy_image_shapes():
    assert to_numpy_image(torch.zeros(1, 5, 7)).shape == (5, 7)
    assert to_numpy_image(torch.zeros(3, 5, 7)).shape == (5, 7, 3)
    assert to_numpy_image(torch.zeros(1, 3, 5, 7)).shape == (5, 7, 3)
    assert to_numpy_image(np.zeros((5, 7), np.uint16)).dtype == np.float32
    with pytest.raises(ValueError):
        to_numpy_image(np.zeros(5))


def test_write_json_and_npy_overwrite(tmp_path):
    report = {"p": Path("a/b"), "x": np.float32(0.5), "t": torch.ones(2)}
    path = write_json(tmp_path / "r.json", report)
    assert json.loads(path.read_text()) == {"p": "a/b", "x": 0.5, "t": [1.0, 1.0]}
    with pytest.raises(OutputError) as err:
        write_json(path, {"y": 1})
    _assert_one_line(err, "r.json", "exists", "--overwrite")
    assert json.loads(path.read_text())["x"] == 0.5  # untouched
    write_json(path, {"y": 1}, overwrite=True)
    assert json.loads(path.read_text()) == {"y": 1}
    npy = write_npy(tmp_path / "k.npy", np.arange(6).reshape(2, 3))
    with pytest.raises(OutputError):
        write_npy(npy, np.zeros(1))
    write_png16(tmp_path / "i.png", torch.zeros(5, 7))
    with pytest.raises(OutputError) as err:
        write_png16(tmp_path / "i.png", torch.ones(5, 7))
    _assert_one_line(err, "i.png", "exists")
    assert read_image(tmp_path / "i.png")[0].max() == 0
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.png", "k.npy", "r.json"]


def test_write_errors(tmp_path):
    with pytest.raises(OutputError) as err:
        write_png16(tmp_path / "missing" / "x.png", torch.zeros(5, 7))
    _assert_one_line(err, "missing", "does not exist")
    with pytest.raises(OutputError) as err:
        write_png16(tmp_path / "x.jpg", torch.zeros(5, 7))
    _assert_one_line(err, "x.jpg", ".png")
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(OutputError) as err:
                write_npy(locked / "x.npy", np.zeros(3))
            _assert_one_line(err, "locked")
            with pytest.raises(OutputError) as err:
                prepare_output_dir(locked / "sub")
            _assert_one_line(err, "sub")
            assert list(locked.iterdir()) == []
        finally:
            locked.chmod(0o700)


def test_write_failures_leave_no_temp_files(tmp_path, monkeypatch):
    # Simulate an unwritable folder (tests may run as root, where chmod does not stop writes).
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", denied)
        with pytest.raises(OutputError) as err:
            write_png16(tmp_path / "x.png", torch.zeros(5, 7))
        _assert_one_line(err, str(tmp_path), "Permission denied")
    # A failure after the temporary file was written removes it and keeps the old file.
    write_npy(tmp_path / "y.npy", np.zeros(3))
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", denied)
        with pytest.raises(OutputError) as err:
            write_npy(tmp_path / "y.npy", np.ones(3), overwrite=True)
        _assert_one_line(err, "y.npy")
    assert [p.name for p in tmp_path.iterdir()] == ["y.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.zeros(3))


def test_prepare_output_dir(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []
    assert prepare_output_dir(out) == out
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError) as err:
        prepare_output_dir(tmp_path / "file")
    _assert_one_line(err, "file", "not a folder")
    with pytest.raises(OutputError) as err:
        prepare_output_dir(tmp_path / "file" / "sub")
    _assert_one_line(err, "sub", "cannot create")


# ---------------------------------------------------------------------------- protocol


def test_pixel_raw_normalization_exact(tmp_path):
    left, right = _raw_pair(tmp_path)
    pair = read_dp_pair(left, right, ReadOptions(**PIXEL))
    for tensor, seed in ((pair.left, 1), (pair.right, 2)):
        expected = ((_raw(seed).astype(np.float64) - 1024) / 16383).astype(np.float32)
        assert tensor.dtype == torch.float32 and tensor.shape == (1, H, W)
        np.testing.assert_array_equal(tensor[0].numpy(), expected)
    # Below-black noise is kept, not clipped.
    assert pair.left.min().item() < 0
    info = pair.info
    assert info.kind == "raw" and info.bit_depth == 16 and info.channels == 1
    assert info.original_size == (H, W) and info.size == (H, W) and info.crop_offset == (0, 0)
    assert info.raw_min == (float(_raw(1).min()), float(_raw(2).min()))
    assert info.raw_max == (float(_raw(1).max()), float(_raw(2).max()))
    assert info.white_level == 16383 and info.black_level == 1024 and info.warnings == []


def test_default_normalization_16bit_and_default_white(tmp_path):
    left, right = _raw_pair(tmp_path)
    plain = read_dp_pair(left, right)
    np.testing.assert_allclose(plain.left[0].numpy(), _raw(1) / 65535, rtol=1e-7)
    assert plain.info.kind == "gray" and plain.info.white_level is None
    raw = read_dp_pair(left, right, ReadOptions(black_level=1024))
    assert raw.info.white_level == 65535
    np.testing.assert_allclose(raw.left[0].numpy(), (_raw(1) - 1024.0) / 65535, rtol=1e-6)


def test_crop_offsets_match_protocol(tmp_path):
    # Scaled-down analogue of 1512x2016 -> 1008x1344: offsets (H0 - H) // 2, (W0 - W) // 2.
    h0, w0, h, w = 151, 203, 100, 134
    rows, cols = np.mgrid[:h0, :w0]
    code = (1024 + rows * 64 + cols).astype(np.uint16)  # encodes (row, col)
    left = _png(tmp_path / "c_L.png", code)
    right = _png(tmp_path / "c_R.png", code[::-1].copy())
    pair = read_dp_pair(left, right, ReadOptions(**PIXEL, crop=(h, w)))
    y0, x0 = (h0 - h) // 2, (w0 - w) // 2
    assert (y0, x0) == (25, 34) and pair.info.crop_offset == (y0, x0)
    assert pair.left.shape == (1, h, w) and pair.info.size == (h, w)
    assert pair.info.original_size == (h0, w0)
    expected = (code[y0 : y0 + h, x0 : x0 + w] - 1024.0) / 16383
    np.testing.assert_allclose(pair.left[0].numpy(), expected, rtol=1e-6)


def test_flat_field_protocol_before_crop(tmp_path):
    h0, w0, h, w = 121, 151, 41, 57
    rows, cols = np.mgrid[:h0, :w0]
    rng = np.random.default_rng(5)
    wl = (3000 + 8 * cols + 5 * rows + rng.integers(0, 200, (h0, w0))).astype(np.uint16)
    wr = (2500 + 3 * cols + 9 * rows + rng.integers(0, 200, (h0, w0))).astype(np.uint16)
    flat = (
        _png(tmp_path / "white_sheet_left.png", wl),
        _png(tmp_path / "white_sheet_right.png", wr),
    )
    left, right = _raw_pair(tmp_path, (h0, w0))
    pair = read_dp_pair(left, right, ReadOptions(**PIXEL, flat_field=flat, crop=(h, w)))

    gain = _box_reference(wl - 1024.0, FLAT_FIELD_BOX) / _box_reference(wr - 1024.0, FLAT_FIELD_BOX)
    full_right = (_raw(2, (h0, w0)) - 1024.0) / 16383 * gain
    y0, x0 = (h0 - h) // 2, (w0 - w) // 2
    expected = full_right[y0 : y0 + h, x0 : x0 + w]
    np.testing.assert_allclose(pair.right[0].numpy(), expected, rtol=1e-6, atol=1e-7)
    # Left is the reference: untouched.
    expected_left = (_raw(1, (h0, w0))[y0 : y0 + h, x0 : x0 + w] - 1024.0) / 16383
    np.testing.assert_allclose(pair.left[0].numpy(), expected_left, rtol=1e-6)
    # Applying the flat field after the crop would give clearly different numbers.
    window = (slice(y0, y0 + h), slice(x0, x0 + w))
    crop_gain = _box_reference(wl[window] - 1024.0, FLAT_FIELD_BOX) / _box_reference(
        wr[window] - 1024.0, FLAT_FIELD_BOX
    )
    assert np.abs(crop_gain - gain[y0 : y0 + h, x0 : x0 + w]).max() > 1e-3
    lo, hi = pair.info.flat_gain_range
    assert lo == pytest.approx(gain[y0 : y0 + h, x0 : x0 + w].min())
    assert hi == pytest.approx(gain[y0 : y0 + h, x0 : x0 + w].max())


def test_eight_bit_warning_is_recorded_once_not_raised(tmp_path):
    rng = np.random.default_rng(7)
    left = _png(tmp_path / "x_left.png", rng.integers(0, 200, (H, W, 3), dtype=np.uint8))
    right = _png(tmp_path / "x_right.png", rng.integers(0, 200, (H, W, 3), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading a pair issues no Python warning
        pair = read_dp_pair(left, right, ReadOptions(transfer="linear"))
    assert pair.info.warnings.count("8-bit input: precision is lost") == 1
    assert pair.info.bit_depth == 8 and pair.info.kind == "rgb"
    assert (pair.info.transfer, pair.info.transfer_reason) == ("linear", "--transfer linear")
    bgr = cv2.imread(str(left), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(pair.left[0].numpy(), bgr[..., 2] / 255, rtol=1e-6)


# ---------------------------------------------------------------------------- names, sizes


def test_find_pair(tmp_path):
    for left_name, right_name in (
        ("a_L.png", "a_R.png"),
        ("b_left.png", "b_right.png"),
        ("c_Left.tif", "c_Right.tif"),
        ("D_LEFT.npy", "D_RIGHT.npy"),
        ("left.png", "right.png"),
    ):
        left, right = tmp_path / left_name, tmp_path / right_name
        left.write_bytes(b"")
        right.write_bytes(b"")
        assert find_pair(left) == (left, right)
        assert find_pair(right) == (left, right)
    (tmp_path / "d_L.png").write_bytes(b"")
    with pytest.raises(InputError) as err:
        find_pair(tmp_path / "d_L.png")
    _assert_one_line(err, "d_R.png", "missing")
    (tmp_path / "plain.png").write_bytes(b"")
    with pytest.raises(InputError) as err:
        find_pair(tmp_path / "plain.png")
    _assert_one_line(err, "plain.png", "_L/_R")
    with pytest.raises(InputError) as err:
        find_pair(tmp_path / "nope_L.png")
    _assert_one_line(err, "nope_L.png", "does not exist")
    # DPDD folder layout: test_l/source/X.png <-> test_r/source/X.png
    for side in ("test_l", "test_r"):
        (tmp_path / side / "source").mkdir(parents=True)
        (tmp_path / side / "source" / "1P0A.png").write_bytes(b"")
    expected = (tmp_path / "test_l/source/1P0A.png", tmp_path / "test_r/source/1P0A.png")
    assert find_pair(tmp_path / "test_r/source/1P0A.png") == expected


def test_parse_size():
    assert parse_size("1008x1344") == (1008, 1344)
    assert parse_size(" 5 X 7 ") == (5, 7)
    for bad in ("1008", "axb", "0x5", "10x-3", ""):
        with pytest.raises(InputError) as err:
            parse_size(bad, what="--crop")
        _assert_one_line(err, "--crop", "HxW")


# ---------------------------------------------------------------------------- input errors


def test_read_errors_missing_corrupt_extension(tmp_path):
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "none.png")
    _assert_one_line(err, "none.png", "does not exist")
    (tmp_path / "bad.png").write_bytes(b"not a png\nat all")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "bad.png")
    _assert_one_line(err, "bad.png", "cannot read")
    (tmp_path / "bad.npy").write_bytes(b"garbage\n")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "bad.npy")
    _assert_one_line(err, "bad.npy", "cannot read")
    (tmp_path / "img.gif").write_bytes(b"GIF89a")
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "img.gif")
    _assert_one_line(err, "img.gif", "unsupported extension")
    np.save(tmp_path / "i32.npy", np.ones((H, W), np.int32))
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "i32.npy")
    _assert_one_line(err, "i32.npy", "int32")


def test_pair_mismatch_errors(tmp_path):
    left = _png(tmp_path / "l.png", _raw(1))
    small = _png(tmp_path / "s.png", _raw(2, (H, W - 1)))
    with pytest.raises(InputError) as err:
        read_dp_pair(left, small)
    _assert_one_line(err, "size mismatch", "l.png", "s.png", f"{H}x{W}", f"{H}x{W - 1}")
    rgb = _png(tmp_path / "rgb.png", _raw(3, (H, W, 3)))
    with pytest.raises(InputError) as err:
        read_dp_pair(left, rgb)
    _assert_one_line(err, "channel mismatch", "rgb.png")


def test_value_errors(tmp_path):
    good = _png(tmp_path / "good.png", _raw(1))
    nan = np.random.default_rng(0).random((H, W)).astype(np.float32)
    nan[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(InputError) as err:
        read_dp_pair(tmp_path / "nan.npy", tmp_path / "nan.npy")
    _assert_one_line(err, "nan.npy", "NaN")
    inf = np.ones((H, W), np.float32)
    inf[0, 0] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "inf.npy")
    _assert_one_line(err, "inf.npy", "infinite")

    zero = _png(tmp_path / "zero.png", np.zeros((H, W), np.uint16))
    with pytest.raises(InputError) as err:
        read_dp_pair(good, zero)
    _assert_one_line(err, "zero.png", "all zero")
    dark = _png(tmp_path / "dark.png", np.full((H, W), 1000, np.uint16))
    with pytest.raises(InputError) as err:
        read_dp_pair(dark, good, ReadOptions(**PIXEL))
    _assert_one_line(err, "dark.png", "black level")

    saturated = np.full((H, W), 65535, np.uint16)
    saturated[0, :5] = 100  # 99.7 % at the maximum
    _png(tmp_path / "sat.png", saturated)
    with pytest.raises(InputError) as err:
        read_dp_pair(good, tmp_path / "sat.png")
    _assert_one_line(err, "sat.png", "saturated")
    # A few percent clipped is only a warning.
    clipped = _raw(2)
    clipped[:2] = 65535
    _png(tmp_path / "clip.png", clipped)
    pair = read_dp_pair(good, tmp_path / "clip.png")
    assert any("clip.png" in note and "maximum 65535" in note for note in pair.info.warnings)

    eight_bit = np.full((H, W), 100, np.uint8) + np.eye(H, W, dtype=np.uint8)
    eight = _png(tmp_path / "eight.png", eight_bit)
    with pytest.raises(InputError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_dp_pair(eight, eight, ReadOptions(**PIXEL))
    _assert_one_line(err, "eight.png", "8-bit", "16-bit raw")
    np.save(tmp_path / "f.npy", np.random.default_rng(1).random((H, W)).astype(np.float32))
    with pytest.raises(InputError) as err:
        read_dp_pair(tmp_path / "f.npy", tmp_path / "f.npy", ReadOptions(black_level=0.1))
    _assert_one_line(err, "f.npy", "white level")


def test_size_errors(tmp_path):
    left, right = _raw_pair(tmp_path)
    with pytest.raises(InputError) as err:
        read_dp_pair(left, right, ReadOptions(**PIXEL, crop=(H + 1, W)))
    _assert_one_line(err, "crop", "larger", "scene_left.png", f"{H}x{W}")
    with pytest.raises(InputError) as err:
        read_dp_pair(left, right, ReadOptions(**PIXEL, crop=(20, 30), min_size=25))
    _assert_one_line(err, "scene_left.png", "20x30", "25")
    with pytest.raises(InputError) as err:
        read_dp_pair(left, right, ReadOptions(min_size=W + 2))
    _assert_one_line(err, "smaller than the minimum")
    with pytest.raises(InputError):
        ReadOptions(white_level=0)
    with pytest.raises(InputError):
        ReadOptions(crop=(0, 5))


def test_flat_field_errors(tmp_path):
    left, right = _raw_pair(tmp_path)
    wl = _png(tmp_path / "wl.png", _raw(3) + 500)
    small = _png(tmp_path / "wr_small.png", _raw(4, (H - 2, W)))
    with pytest.raises(InputError) as err:
        read_dp_pair(left, right, ReadOptions(**PIXEL, flat_field=(wl, small)))
    _assert_one_line(err, "wr_small.png", f"{H - 2}x{W}", f"{H}x{W}")
    with pytest.raises(InputError) as err:
        read_dp_pair(left, right, ReadOptions(**PIXEL, flat_field=(wl, tmp_path / "absent.png")))
    _assert_one_line(err, "absent.png", "does not exist")
    dark = _png(tmp_path / "wr_dark.png", np.full((H, W), 1000, np.uint16))
    with pytest.raises(InputError) as err:
        read_dp_pair(left, right, ReadOptions(**PIXEL, flat_field=(wl, dark)))
    _assert_one_line(err, "wr_dark.png", "black level")
    eight = _png(tmp_path / "wr_8.png", (_raw(4) // 256).astype(np.uint8))
    with pytest.raises(InputError) as err:
        read_dp_pair(left, right, ReadOptions(flat_field=(wl, eight)))
    _assert_one_line(err, "wr_8.png", "bit depth")
    blank = _png(tmp_path / "wr_blank.png", np.full((H, W), 9000, np.uint16))
    with pytest.raises(InputError) as err:
        read_dp_pair(left, right, ReadOptions(**PIXEL, flat_field=(wl, blank)))
    _assert_one_line(err, "wr_blank.png", "saturated or blank")


# ---------------------------------------------------------------------------- real data


def test_pixel4_scene_001_protocol(pixel4):
    """Protocol steps 1-3 on real data reproduce the README's raw input PSNR of scene 001."""
    calibration = pixel4 / "calibration"
    options = ReadOptions(
        **PIXEL,
        flat_field=(calibration / "white_sheet_left.png", calibration / "white_sheet_right.png"),
        crop=(1008, 1344),
        min_size=61,
    )
    pair = read_dp_pair(*find_pair(pixel4 / "001_left.png"), options)
    assert pair.left.shape == (1, 1008, 1344) and pair.right.shape == (1, 1008, 1344)
    assert pair.info.original_size == (1512, 2016)
    assert pair.info.crop_offset == ((1512 - 1008) // 2, (2016 - 1344) // 2)
    assert 0.1 < pair.left.mean().item() < 0.3
    # After vignetting correction both views have nearly the same brightness.
    assert pair.right.mean().item() == pytest.approx(pair.left.mean().item(), rel=0.02)
    gt = read_normalized(pixel4 / "gt_all_in_focus" / "001_gt.png")
    assert gt.shape == (1, 1008, 1344)
    mse = (((pair.left + pair.right) / 2).clamp(0, 1) - gt).double().pow(2).mean().item()
    assert 10 * np.log10(1 / mse) == pytest.approx(28.433, abs=5e-4)
