"""Reading dual-pixel (DP) pairs and writing results.

Conventions (see CONVENTIONS.md):

* Images come back as float32 tensors ``(C, H, W)``: ``C = 1`` for raw / gray data, ``C = 3`` for
  RGB (channel order R, G, B; OpenCV's BGR is converted on read and write).  A DP pair is
  **left** then **right**.
* Sizes are always ``(H, W)`` (rows, columns); ``parse_size("1008x1344")`` is ``(1008, 1344)``.
* User-caused problems raise :class:`~edgedp.errors.InputError` (reading) or
  :class:`~edgedp.errors.OutputError` (writing) with a one-line message that names the file.

Normalization (``read_dp_pair`` / ``read_normalized``):

* **Raw mode** (``black_level`` or ``white_level`` given): ``v = (raw - black) / white`` with
  ``black`` defaulting to 0 and ``white`` to ``2**bit_depth - 1`` (so a 16-bit file without a
  white level is divided by 65535).  This is exactly the Pixel 4 protocol step 1 when called with
  ``black_level=1024, white_level=16383``.  Values are *not* clipped: noise below the black
  level is real signal statistics; clip only when writing.  Raw mode needs 16-bit integer (or
  float, with an explicit ``white_level``) data; an 8-bit file is an error.
* Otherwise: 16-bit ``/ 65535``, 8-bit ``/ 255`` (with an "8-bit input: precision is lost"
  warning), float (``.npy``, ``.npz``, float TIFF) taken as is (must be finite).

Colour transfer (``ReadOptions.transfer``, :mod:`edgedp.transfer`): after normalization, values
of an sRGB-encoded file are decoded to linear light with the exact IEC 61966-2-1 curve.
``auto`` (the default) decides per file with :func:`detect_transfer`: linear in raw mode and for
float data; sRGB for 8-bit files (JPEG, 8-bit PNG/TIFF: display-referred by construction) and
for 16-bit PNG / TIFF files that declare a colour space (PNG ``sRGB``, ``iCCP`` or an sRGB
``cICP`` chunk; TIFF ICC profile tag 34675); linear otherwise (16-bit files without a tag, e.g.
edgedp's own linear outputs and raw exports).  :attr:`PairInfo.transfer` and
:attr:`PairInfo.transfer_reason` say what was used and why.

Warnings (8-bit input, clipped highlights, an ignored alpha channel, ...) are collected as
one-line strings in :attr:`PairInfo.warnings`; reading a pair issues no Python warning, so the
CLI prints each exactly once as ``warning: ...``.

Flat field (Pixel 4 protocol step 2): with white-sheet frames ``(wl, wr)`` the right view is
multiplied by ``box(wl - black) / box(wr - black)`` where ``box`` is the normalized
:data:`FLAT_FIELD_BOX` x :data:`FLAT_FIELD_BOX` (101 x 101) mean filter with edge-replicated
borders (``cv2.BORDER_REPLICATE``, the project's border convention).  The left view is the
reference.  It is applied at the full frame size *before* cropping, so for the Pixel 4 crop
(offsets 252 and 336 px, more than the 50 px filter radius) the border mode does not matter.

Checks per view (on the region that is returned, i.e. after cropping): finite values, not all
zero after normalization, and not saturated / blank: if at least :data:`SATURATION_FRACTION`
(99 %) of the values equal the view's own maximum it is an error; from
:data:`SATURATION_WARN_FRACTION` (1 %) on it is a warning (clipped highlights).

Writes are atomic (temporary file in the target folder, then ``os.replace``) and refuse to
overwrite an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import json
import math
import os
import re
import uuid
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from edgedp.errors import InputError, OutputError
from edgedp.transfer import AUTO, LINEAR, SRGB, check_transfer, linear_to_srgb, srgb_to_linear

__all__ = [
    "FLAT_FIELD_BOX",
    "IMAGE_EXTENSIONS",
    "SATURATION_FRACTION",
    "SATURATION_WARN_FRACTION",
    "Capture",
    "DPPair",
    "PairInfo",
    "ReadOptions",
    "atomic_writer",
    "detect_transfer",
    "find_captures",
    "find_pair",
    "png_colour_chunks",
    "parse_size",
    "prepare_output_dir",
    "read_dp_pair",
    "read_image",
    "read_normalized",
    "tiff_icc_profile",
    "to_numpy_image",
    "json_ready",
    "write_bytes",
    "write_json",
    "write_npy",
    "write_png16",
    "write_png8",
    "write_srgb_png8",
]

#: Side of the flat-field box (mean) filter, Pixel 4 protocol step 2.
FLAT_FIELD_BOX = 101
#: A view with at least this fraction of values equal to its maximum is saturated or blank: error.
SATURATION_FRACTION = 0.99
#: From this fraction of values at the maximum on, a warning (clipped highlights) is recorded.
SATURATION_WARN_FRACTION = 0.01

#: File extensions read through OpenCV (``.pgm``: the Google dual-pixel capture app's 16-bit
#: big-endian PGM views).
CV2_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pgm")
#: All readable extensions (lower case).
IMAGE_EXTENSIONS = CV2_EXTENSIONS + (".npy", ".npz")

EIGHT_BIT_WARNING = "8-bit input: precision is lost"

#: How a file name says which view it is: (left, right) tags at the end of the stem, compared
#: case-insensitively; the partner's name keeps the case style (``X_L`` <-> ``X_R``,
#: ``X_Left`` <-> ``X_Right``).  Bare ``left`` / ``right`` stems (``edgedp synth``) also count.
VIEW_NAME_SUFFIXES = (("_left", "_right"), ("_l", "_r"))
#: How a folder says which view its files are: (left, right) tags at the end of a parent or
#: grandparent folder's name.  ``_l`` / ``_r``: DPDD (``test_l/source/X.png`` <->
#: ``test_r/source/X.png``); ``left_pd`` / ``right_pd``: Google's 2019 dual-pixel dataset
#: (``raw_left_pd/<id>/result_pd_left_center.png`` <-> ``raw_right_pd/<id>/result_pd_right_center.png``;
#: the ``pd_left`` / ``pd_right`` token of the file name is swapped along).
VIEW_FOLDER_SUFFIXES = (("_l", "_r"), ("left_pd", "right_pd"))
#: View tokens inside a file name that swap along with a folder tag (Google 2019 layout).
VIEW_FILE_TOKENS = (("pd_left", "pd_right"),)


# --------------------------------------------------------------------------------------------
# Options and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    """How :func:`read_dp_pair` normalizes, corrects and crops a pair.

    Attributes:
        black_level: raw sensor black level (e.g. 1024 for Pixel 4).  Giving it (or
            ``white_level``) switches to raw mode: ``v = (raw - black) / white``, unclipped.
        white_level: divisor after black subtraction (16383 for Pixel 4).  Default in raw mode:
            ``2**bit_depth - 1`` of the file (65535 for 16-bit); float data needs it explicitly.
        flat_field: white-sheet frames ``(left, right)``; the right view is multiplied by
            ``box101(wl - black) / box101(wr - black)`` at full size, before the crop.
        crop: ``(H, W)`` of a centred crop at offsets ``((H0 - H) // 2, (W0 - W) // 2)``.
        min_size: smallest allowed H and W of the result (callers pass the largest kernel size).
        transfer: ``auto`` (default: :func:`detect_transfer` per file), ``srgb`` (decode the
            IEC 61966-2-1 curve after normalization) or ``linear`` (values as stored).  Raw mode
            is linear: ``srgb`` with a black/white level is an error.
    """

    black_level: float | None = None
    white_level: float | None = None
    flat_field: tuple[Path, Path] | None = None
    crop: tuple[int, int] | None = None
    min_size: int = 1
    transfer: str = AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "transfer", check_transfer(self.transfer))
        if self.transfer == SRGB and self.raw:
            raise InputError(
                "--transfer srgb: raw sensor data (a black/white level was given) is linear; "
                "use --transfer linear or auto"
            )
        if self.black_level is not None and not math.isfinite(self.black_level):
            raise InputError(f"black level must be a finite number, got {self.black_level}")
        if self.white_level is not None and not (
            math.isfinite(self.white_level) and self.white_level > 0
        ):
            raise InputError(f"white level must be a positive number, got {self.white_level}")
        if self.crop is not None:
            if len(self.crop) != 2 or min(int(self.crop[0]), int(self.crop[1])) < 1:
                raise InputError(f"crop must be two positive sizes (H, W), got {self.crop}")
            object.__setattr__(self, "crop", (int(self.crop[0]), int(self.crop[1])))
        if self.flat_field is not None:
            if len(self.flat_field) != 2:
                raise InputError("flat field needs two frames (left, right)")
            object.__setattr__(
                self, "flat_field", (Path(self.flat_field[0]), Path(self.flat_field[1]))
            )
        if int(self.min_size) < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size}")

    @property
    def raw(self) -> bool:
        """True when a black or white level is given (raw normalization)."""
        return self.black_level is not None or self.white_level is not None


@dataclass
class PairInfo:
    """What :func:`read_dp_pair` read and did.

    Attributes:
        left_path, right_path: the files read (the same ``.npz`` for a pair stored in one file).
        original_size: ``(H0, W0)`` of the frames before cropping.
        size: ``(H, W)`` of the returned views.
        bit_depth: 8 or 16 for integer files, 32 for floating point data.
        channels: C of the returned ``(C, H, W)`` views (1 or 3).
        kind: ``"raw"`` (raw mode), ``"rgb"``, ``"gray"`` (integer files) or ``"float"``.
        raw_min, raw_max: ``(left, right)`` native code values over the whole frame.
        crop_offset: ``(y0, x0)`` of the returned region in the original frame.
        black_level, white_level: the levels used in raw mode (``None`` otherwise).
        flat_field: the white-sheet frames applied, if any.
        flat_gain_range: ``(min, max)`` of the right-view gain over the returned region.
        warnings: human-readable one-line warnings (8-bit input, clipped highlights, ...).
        transfer: ``linear`` or ``srgb``: how the stored values were turned into the returned
            linear ones; ``transfer_requested`` what was asked (``auto``, ``linear``, ``srgb``);
            ``transfer_reason`` why (e.g. ``"8-bit file"``, ``"PNG sRGB chunk"``).
    """

    left_path: Path
    right_path: Path
    original_size: tuple[int, int]
    size: tuple[int, int]
    bit_depth: int
    channels: int
    kind: str
    raw_min: tuple[float, float]
    raw_max: tuple[float, float]
    crop_offset: tuple[int, int] = (0, 0)
    black_level: float | None = None
    white_level: float | None = None
    flat_field: tuple[Path, Path] | None = None
    flat_gain_range: tuple[float, float] | None = None
    warnings: list[str] = field(default_factory=list)
    transfer: str = LINEAR
    transfer_requested: str = AUTO
    transfer_reason: str = ""


@dataclass
class DPPair:
    """A normalized DP pair: ``left`` and ``right`` are float32 ``(C, H, W)`` tensors on the CPU.

    Values are ~[0, 1]; in raw mode they are unclipped (slightly negative noise is kept).
    """

    left: Tensor
    right: Tensor
    info: PairInfo


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _input_error(message: str) -> InputError:
    return InputError(_one_line(message))


def _output_error(message: str) -> OutputError:
    return OutputError(_one_line(message))


def _bit_depth(array: np.ndarray, path: Path, role: str) -> int:
    if array.dtype == np.uint8:
        return 8
    if array.dtype == np.uint16:
        return 16
    if np.issubdtype(array.dtype, np.floating):
        return 32
    raise _input_error(
        f"{role} {path} has unsupported data type {array.dtype} "
        "(expected 8-bit, 16-bit unsigned or floating point)"
    )


def _array_to_hwc(array: np.ndarray, path: Path, role: str) -> np.ndarray:
    """``.npy``/``.npz`` arrays: (H, W), (H, W, C) or (C, H, W) with C in {1, 3} -> (H, W[, 3])."""
    if array.ndim == 2:
        return array
    if array.ndim == 3:
        if array.shape[-1] in (1, 3):
            hwc = array
        elif array.shape[0] in (1, 3):
            hwc = np.moveaxis(array, 0, -1)
        else:
            hwc = None
        if hwc is not None:
            return hwc[..., 0] if hwc.shape[-1] == 1 else hwc
    raise _input_error(
        f"{role} {path} has unsupported array shape {tuple(array.shape)} "
        "(expected (H, W), (H, W, 3) or (3, H, W))"
    )


def _load_npz(path: Path, key: str | None, role: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if key is not None:
                if key in keys:
                    return npz[key]
                if len(keys) == 1:  # a single image stands for either view
                    return npz[keys[0]]
                raise _input_error(
                    f"{role} {path} has no array '{key}' (it holds: {', '.join(keys) or 'nothing'})"
                )
            if len(keys) == 1:
                return npz[keys[0]]
            if "left" in keys and "right" in keys:
                raise _input_error(
                    f"{role} {path} holds a DP pair ('left', 'right'): read it with read_dp_pair"
                )
            raise _input_error(
                f"{role} {path} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); "
                "expected one image or 'left' and 'right'"
            )
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise _input_error(f"cannot read {role} {path}: {err}") from err


def _read(
    path: Path | str, role: str, key: str | None = None, notes: list[str] | None = None
) -> tuple[np.ndarray, int]:
    """Read one file -> ((H, W) or (H, W, 3) RGB array in its native dtype, bit depth).

    A dropped alpha channel is noted in ``notes`` (or, without it, a Python warning)."""
    path = Path(path)
    if not path.exists():
        raise _input_error(f"{role} {path} does not exist")
    if not path.is_file():
        raise _input_error(f"{role} {path} is not a file")
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise _input_error(
            f"{role} {path} has unsupported extension '{path.suffix}' "
            f"(supported: {', '.join(IMAGE_EXTENSIONS)})"
        )
    if ext == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise _input_error(f"cannot read {role} {path}: {err}") from err
        if not isinstance(array, np.ndarray):
            raise _input_error(f"cannot read {role} {path}: not a single array")
        array = _array_to_hwc(array, path, role)
    elif ext == ".npz":
        array = _array_to_hwc(_load_npz(path, key, role), path, role)
    else:
        try:
            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:
            raise _input_error(f"cannot read {role} {path}: {err}") from err
        if array is None:
            raise _input_error(f"cannot read {role} {path}: corrupt or unsupported image data")
        if array.ndim == 3:
            channels = array.shape[2]
            if channels == 1:
                array = array[..., 0]
            elif channels == 2:  # gray + alpha
                _note(notes, f"{role} {path}: alpha channel ignored")
                array = array[..., 0]
            elif channels in (3, 4):
                if channels == 4:
                    _note(notes, f"{role} {path}: alpha channel ignored")
                array = cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB)
            else:
                raise _input_error(f"{role} {path} has {channels} channels (expected 1 or 3)")
    bits = _bit_depth(array, path, role)
    if array.size == 0:
        raise _input_error(f"{role} {path} is empty")
    if bits == 32 and not np.isfinite(array).all():
        raise _input_error(f"{role} {path} contains NaN or infinite values")
    return np.ascontiguousarray(array), bits


def _note(notes: list[str] | None, message: str) -> None:
    if notes is None:
        warnings.warn(message, UserWarning, stacklevel=4)
    else:
        notes.append(message)


def read_image(path: Path | str, *, key: str | None = None) -> tuple[np.ndarray, int]:
    """Read one image file in its native dtype.

    Supports PNG/TIFF/JPEG/BMP (8- or 16-bit, gray or colour, float TIFF) through OpenCV, and
    ``.npy`` / ``.npz`` arrays ((H, W), (H, W, 3) or (3, H, W); an ``.npz`` with one array, or
    the array ``key``).  An alpha channel is dropped.

    Returns:
        ``(array, bit_depth)``: array ``(H, W)`` or ``(H, W, 3)`` in **RGB** order, dtype
        uint8 / uint16 / float; bit depth 8, 16 or 32 (any floating point data).

    Raises:
        InputError: missing, unreadable or corrupt file, unsupported extension, dtype or shape,
            non-finite float values.
    """
    return _read(path, "image", key)


def _normalize(
    array: np.ndarray, bits: int, options: ReadOptions, path: Path, role: str
) -> tuple[np.ndarray, float | None, float | None]:
    """Native array -> float64 normalized values; returns (values, black, white) used."""
    values = array.astype(np.float64)
    if options.raw:
        if bits == 8:
            raise _input_error(
                f"{role} {path} is an 8-bit image where 16-bit raw is expected "
                "(a black/white level was given)"
            )
        black = float(options.black_level or 0.0)
        if options.white_level is not None:
            white = float(options.white_level)
        elif bits == 32:
            raise _input_error(
                f"{role} {path} is floating point: raw mode needs an explicit white level"
            )
        else:
            white = float(2**bits - 1)
        return (values - black) / white, black, white
    if bits == 16:
        return values / 65535.0, None, None
    if bits == 8:
        return values / 255.0, None, None
    return values, None, None


def _crop_offsets(
    size: tuple[int, int], crop: tuple[int, int] | None, path: Path
) -> tuple[int, int, int, int]:
    """Return (y0, x0, H, W) of the centred crop, exactly the protocol's ``(H0 - H) // 2``."""
    h0, w0 = size
    if crop is None:
        return 0, 0, h0, w0
    h, w = crop
    if h > h0 or w > w0:
        raise _input_error(f"crop {h}x{w} is larger than the image {path} ({h0}x{w0}, HxW)")
    return (h0 - h) // 2, (w0 - w) // 2, h, w


def _check_view(
    native: np.ndarray,
    normalized: np.ndarray,
    path: Path,
    role: str,
    black: float | None,
    notes: list[str],
) -> None:
    """All-zero / saturated checks on the returned region (native and normalized values)."""
    if float(normalized.max()) <= 0.0:
        if black is not None:
            raise _input_error(
                f"{role} {path} has no signal: all values are at or below the black level {black:g}"
            )
        raise _input_error(f"{role} {path} is all zero")
    top = native.max()
    fraction = float(np.count_nonzero(native == top)) / native.size
    if fraction >= SATURATION_FRACTION:
        raise _input_error(
            f"{role} {path} is saturated or blank: {fraction:.1%} of its values equal "
            f"its maximum {float(top):g}"
        )
    if fraction >= SATURATION_WARN_FRACTION:
        notes.append(
            f"{role} {path}: {fraction:.1%} of values at the maximum {float(top):g} "
            "(clipped highlights?)"
        )


def _box_mean(image: np.ndarray) -> np.ndarray:
    """Normalized FLAT_FIELD_BOX x FLAT_FIELD_BOX mean, edge-replicated borders, same size."""
    return cv2.blur(
        image, (FLAT_FIELD_BOX, FLAT_FIELD_BOX), borderType=cv2.BORDER_REPLICATE
    )


def _flat_field_gain(
    options: ReadOptions,
    size: tuple[int, int],
    channels: int,
    black: float,
    notes: list[str],
    transfer: str = LINEAR,
) -> np.ndarray:
    """Per-pixel gain for the right view: box(wl - black) / box(wr - black), full size.

    For sRGB input the frames are decoded to linear light first (a gain is a ratio of light)."""
    assert options.flat_field is not None
    means = []
    depths = []
    for frame_path, side in zip(options.flat_field, ("left", "right")):
        role = f"flat-field {side} frame"
        array, bits = _read(frame_path, role, notes=notes)
        if options.raw and bits == 8:
            raise _input_error(
                f"{role} {frame_path} is an 8-bit image where 16-bit raw is expected"
            )
        if array.shape[:2] != size:
            raise _input_error(
                f"{role} {frame_path} is {array.shape[0]}x{array.shape[1]} but the DP pair is "
                f"{size[0]}x{size[1]} (HxW, before cropping)"
            )
        frame_channels = 1 if array.ndim == 2 else array.shape[2]
        if frame_channels != channels:
            raise _input_error(
                f"{role} {frame_path} has {frame_channels} channel(s) "
                f"but the DP pair has {channels}"
            )
        depths.append(bits)
        if depths[0] != bits:
            raise _input_error(
                f"flat-field frames differ in bit depth: {options.flat_field[0]} is "
                f"{depths[0]}-bit, {frame_path} is {bits}-bit"
            )
        # Only the ratio matters, so the white level (or 2**bits - 1) cancels: subtract the
        # black level from native values as the protocol writes it.
        signal = array.astype(np.float64) - black
        _check_view(array, signal, frame_path, role, black if options.raw else None, notes)
        if transfer == SRGB:
            signal = srgb_to_linear(signal / (float(2**bits - 1) if bits < 32 else 1.0))
        mean = _box_mean(signal)
        if not float(mean.min()) > 0.0:
            raise _input_error(
                f"{role} {frame_path} has no signal above the black level in places "
                "(its 101x101 mean is not positive everywhere)"
            )
        means.append(mean)
    return means[0] / means[1]


def _to_tensor(image: np.ndarray) -> Tensor:
    """(H, W) or (H, W, C) float -> float32 (C, H, W) tensor."""
    chw = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))


def _view_key(path: Path, side: str) -> str | None:
    # A pair stored in one .npz: the same file for both views, arrays 'left' and 'right'.
    return side if path.suffix.lower() == ".npz" else None


# --------------------------------------------------------------------------------------------
# Colour transfer of a file: what it declares
# --------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: TIFF tag of an embedded ICC profile (TIFF/EP, "InterColorProfile").
TIFF_ICC_TAG = 34675
#: cICP transfer characteristics (ITU-T H.273) meaning sRGB (13) and linear (8).
CICP_SRGB, CICP_LINEAR = 13, 8


def png_colour_chunks(path: Path | str) -> dict[str, Any]:
    """The colour chunks a PNG file carries before its image data.

    Returns a dict with the keys present among ``sRGB`` (rendering intent, int), ``iCCP``
    (the embedded profile's name, str), ``cICP`` (transfer characteristics code, int) and
    ``gAMA`` (gamma x 100000, int).  Reads only chunk headers and these small chunks, up to the
    first ``IDAT`` (the PNG specification places colour chunks before it).  A file that is not a
    PNG gives ``{}``.

    Raises:
        InputError: the file cannot be opened.
    """
    found: dict[str, Any] = {}
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                return found
            while True:
                header = handle.read(8)
                if len(header) < 8:
                    return found
                length = int.from_bytes(header[:4], "big")
                kind = header[4:8].decode("latin-1")
                if kind in ("IDAT", "IEND"):
                    return found
                if kind in ("sRGB", "cICP", "gAMA") or (kind == "iCCP" and length <= 1 << 20):
                    data = handle.read(length)
                    if kind == "sRGB" and len(data) >= 1:
                        found["sRGB"] = data[0]
                    elif kind == "cICP" and len(data) >= 2:
                        found["cICP"] = data[1]
                    elif kind == "gAMA" and len(data) >= 4:
                        found["gAMA"] = int.from_bytes(data[:4], "big")
                    elif kind == "iCCP":
                        found["iCCP"] = data.split(b"\0", 1)[0].decode("latin-1", "replace")
                    handle.seek(4, os.SEEK_CUR)  # CRC
                else:
                    handle.seek(length + 4, os.SEEK_CUR)
    except OSError as err:
        raise _input_error(f"cannot read {path}: {err.strerror or err}") from err


def tiff_icc_profile(path: Path | str) -> bytes | None:
    """The ICC profile embedded in a TIFF file's first image (tag 34675), or None.

    A small reader of the TIFF header and the first IFD (classic and BigTIFF, either byte
    order); nothing else of the file is read.  A file that is not a TIFF gives None.

    Raises:
        InputError: the file cannot be opened.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            if len(head) < 8 or head[:2] not in (b"II", b"MM"):
                return None
            order = "little" if head[:2] == b"II" else "big"
            magic = int.from_bytes(head[2:4], order)
            if magic == 42:
                offset, count_size, entry_size, value_size = int.from_bytes(head[4:8], order), 2, 12, 4
            elif magic == 43 and len(head) >= 16:
                offset, count_size, entry_size, value_size = int.from_bytes(head[8:16], order), 8, 20, 8
            else:
                return None
            handle.seek(offset)
            count = int.from_bytes(handle.read(count_size), order)
            table = handle.read(count * entry_size)
            for i in range(len(table) // entry_size):
                entry = table[i * entry_size : (i + 1) * entry_size]
                if int.from_bytes(entry[:2], order) != TIFF_ICC_TAG:
                    continue
                size = int.from_bytes(entry[4 : 4 + value_size], order)
                field_ = entry[4 + value_size :]
                if size <= value_size:
                    return field_[:size]
                handle.seek(int.from_bytes(field_, order))
                return handle.read(min(size, 1 << 24))
    except OSError as err:
        raise _input_error(f"cannot read {path}: {err.strerror or err}") from err
    return None


def icc_description(profile: bytes) -> str:
    """The ``desc`` text of an ICC profile (v2 ``desc`` or v4 ``mluc``), or ``""``."""
    try:
        count = int.from_bytes(profile[128:132], "big")
        for i in range(min(count, 256)):
            entry = profile[132 + 12 * i : 144 + 12 * i]
            if entry[:4] != b"desc":
                continue
            start, size = int.from_bytes(entry[4:8], "big"), int.from_bytes(entry[8:12], "big")
            data = profile[start : start + size]
            if data[:4] == b"desc":
                length = int.from_bytes(data[8:12], "big")
                return data[12 : 12 + length].split(b"\0", 1)[0].decode("latin-1", "replace")
            if data[:4] == b"mluc" and int.from_bytes(data[8:12], "big") > 0:
                length, offset = int.from_bytes(data[20:24], "big"), int.from_bytes(data[24:28], "big")
                return data[offset : offset + length].decode("utf-16-be", "replace")
    except (IndexError, ValueError):
        pass
    return ""


def detect_transfer(path: Path | str, bit_depth: int, *, raw: bool = False) -> tuple[str, str]:
    """What ``--transfer auto`` picks for one file: ``(transfer, reason)``.

    * raw mode (a black/white level) or float data: ``linear``;
    * 8-bit data: ``srgb`` (8-bit files are display-referred: JPEGs, 8-bit PNG/TIFF exports);
    * a PNG with an ``sRGB`` chunk, an ``iCCP`` (ICC profile) chunk or a ``cICP`` chunk with
      sRGB transfer: ``srgb`` (``cICP`` with linear transfer: ``linear``);
    * a TIFF with an ICC profile (tag 34675): ``srgb`` (display-referred, e.g. Digital Photo
      Professional's exports; the profile's name is in the reason);
    * anything else (16-bit files without a colour tag): ``linear``.
    """
    path = Path(path)
    if raw:
        return LINEAR, "raw mode (black/white level)"
    if bit_depth == 32:
        return LINEAR, "float data"
    if bit_depth == 8:
        return SRGB, "8-bit file"
    ext = path.suffix.lower()
    if ext == ".png":
        chunks = png_colour_chunks(path)
        if "cICP" in chunks and chunks["cICP"] in (CICP_SRGB, CICP_LINEAR):
            return (SRGB, "PNG cICP chunk: sRGB") if chunks["cICP"] == CICP_SRGB else (LINEAR, "PNG cICP chunk: linear")
        if "sRGB" in chunks:
            return SRGB, "PNG sRGB chunk"
        if "iCCP" in chunks:
            return SRGB, f"PNG ICC profile '{chunks['iCCP']}'"
    elif ext in (".tif", ".tiff"):
        profile = tiff_icc_profile(path)
        if profile is not None:
            name = icc_description(profile)
            return SRGB, f"TIFF ICC profile '{name}'" if name else "TIFF ICC profile"
    return LINEAR, f"{bit_depth}-bit file without a colour tag"


def _resolve_transfer(options: ReadOptions, path: Path, bits: int) -> tuple[str, str]:
    if options.transfer != AUTO:
        return options.transfer, "--transfer " + options.transfer
    return detect_transfer(path, bits, raw=options.raw)


def _pair_transfer(options: ReadOptions, left: Path, right: Path, bits: int, notes: list[str]) -> tuple[str, str]:
    """The transfer of a pair: one for both views (they are one exposure); when ``auto``
    decides differently for the two files, the left view's decision holds, with a warning."""
    transfer, reason = _resolve_transfer(options, left, bits)
    if options.transfer == AUTO and right != left:
        other, other_reason = detect_transfer(right, bits, raw=options.raw)
        if other != transfer:
            notes.append(
                f"left view {left} reads as {transfer} ({reason}) but right view {right} as {other} "
                f"({other_reason}): both are read as {transfer} (set --transfer to choose)"
            )
    return transfer, reason


def read_dp_pair(
    left: Path | str, right: Path | str, options: ReadOptions = ReadOptions()
) -> DPPair:
    """Read, validate, normalize, flat-field correct and crop a DP pair.

    Steps (the Pixel 4 protocol steps 1-2 plus its crop, when given ``black_level=1024,
    white_level=16383``, the white-sheet frames and ``crop=(1008, 1344)``):

    1. read both views (an ``.npz`` holding arrays ``left`` and ``right`` may be passed as both
       ``left`` and ``right``); they must agree in size, channels and bit depth;
    2. normalize (module docstring): raw ``(raw - black) / white`` unclipped, else /65535, /255
       (warning) or float as is; then decode sRGB to linear light when ``options.transfer``
       resolves to ``srgb`` (:func:`detect_transfer` for ``auto``; one decision for both views);
    3. flat field at full size: ``right *= box101(wl - black) / box101(wr - black)``;
    4. centred crop at ``((H0 - H) // 2, (W0 - W) // 2)``;
    5. check each returned view: not all zero, not saturated/blank, at least ``min_size``.

    Returns:
        :class:`DPPair` with float32 ``(C, H, W)`` tensors (C = 1 gray/raw, 3 RGB) and a
        :class:`PairInfo`.

    Raises:
        InputError: with a one-line message naming the file, for every problem above.
    """
    left, right = Path(left), Path(right)
    notes: list[str] = []
    left_raw, left_bits = _read(left, "left view", _view_key(left, "left"), notes)
    right_raw, right_bits = _read(right, "right view", _view_key(right, "right"), notes)

    if left_raw.shape[:2] != right_raw.shape[:2]:
        raise _input_error(
            f"left/right size mismatch: {left} is {left_raw.shape[0]}x{left_raw.shape[1]}, "
            f"{right} is {right_raw.shape[0]}x{right_raw.shape[1]} (HxW)"
        )
    left_c = 1 if left_raw.ndim == 2 else left_raw.shape[2]
    right_c = 1 if right_raw.ndim == 2 else right_raw.shape[2]
    if left_c != right_c:
        raise _input_error(
            f"left/right channel mismatch: {left} has {left_c} channel(s), {right} has {right_c}"
        )
    if left_bits != right_bits:
        raise _input_error(
            f"left/right bit depth mismatch: {left} is {left_bits}-bit, {right} is {right_bits}-bit"
        )
    bits, channels = left_bits, left_c
    size = (int(left_raw.shape[0]), int(left_raw.shape[1]))

    left_v, black, white = _normalize(left_raw, left_bits, options, left, "left view")
    right_v, _, _ = _normalize(right_raw, right_bits, options, right, "right view")
    if bits == 8:
        notes.append(EIGHT_BIT_WARNING)
    transfer, reason = _pair_transfer(options, left, right, bits, notes)
    if transfer == SRGB:
        left_v, right_v = srgb_to_linear(left_v), srgb_to_linear(right_v)

    y0, x0, h, w = _crop_offsets(size, options.crop, left)
    if h < options.min_size or w < options.min_size:
        raise _input_error(
            f"image {left} is {h}x{w} (HxW) after cropping, smaller than the minimum "
            f"{options.min_size} px per side (the largest blur kernel)"
        )
    region = (slice(y0, y0 + h), slice(x0, x0 + w))

    gain_range = None
    if options.flat_field is not None:
        gain = _flat_field_gain(options, size, channels, black or 0.0, notes, transfer)
        right_v = right_v * gain
        gain_region = gain[region]
        gain_range = (float(gain_region.min()), float(gain_region.max()))

    left_v, right_v = left_v[region], right_v[region]
    for native, values, path, role in (
        (left_raw[region], left_v, left, "left view"),
        (right_raw[region], right_v, right, "right view"),
    ):
        _check_view(native, values, path, role, black, notes)
    if bits == 32 and not options.raw:
        lo = min(float(left_v.min()), float(right_v.min()))
        hi = max(float(left_v.max()), float(right_v.max()))
        if lo < 0.0 or hi > 1.0:
            notes.append(f"float input outside [0, 1]: values span {lo:g} .. {hi:g}")

    if options.raw:
        kind = "raw"
    elif bits == 32:
        kind = "float"
    else:
        kind = "rgb" if channels == 3 else "gray"
    info = PairInfo(
        left_path=left,
        right_path=right,
        original_size=size,
        size=(h, w),
        bit_depth=bits,
        channels=channels,
        kind=kind,
        raw_min=(float(left_raw.min()), float(right_raw.min())),
        raw_max=(float(left_raw.max()), float(right_raw.max())),
        crop_offset=(y0, x0),
        black_level=black,
        white_level=white,
        flat_field=options.flat_field,
        flat_gain_range=gain_range,
        warnings=notes,
        transfer=transfer,
        transfer_requested=options.transfer,
        transfer_reason=reason,
    )
    return DPPair(left=_to_tensor(left_v), right=_to_tensor(right_v), info=info)


def read_normalized(
    path: Path | str, options: ReadOptions = ReadOptions(), *, key: str | None = None
) -> Tensor:
    """Read one image with :func:`read_dp_pair`'s normalization, crop and checks (no flat field).

    E.g. the Pixel 4 ground truth: ``read_normalized(gt_path)`` is ``gt / 65535`` as
    ``(1, H, W)``.  The colour transfer is resolved as for a pair (an sRGB file comes back in
    linear light).  A library helper: its warnings go through :func:`warnings.warn`.

    Returns:
        float32 ``(C, H, W)`` tensor.
    """
    if options.flat_field is not None:
        raise ValueError("read_normalized does not apply a flat field; use read_dp_pair")
    path = Path(path)
    native, bits = _read(path, "image", key)
    values, black, _ = _normalize(native, bits, options, path, "image")
    if bits == 8:
        warnings.warn(f"{EIGHT_BIT_WARNING} ({path})", UserWarning, stacklevel=2)
    if _resolve_transfer(options, path, bits)[0] == SRGB:
        values = srgb_to_linear(values)
    y0, x0, h, w = _crop_offsets(native.shape[:2], options.crop, path)
    if h < options.min_size or w < options.min_size:
        raise _input_error(
            f"image {path} is {h}x{w} (HxW) after cropping, smaller than the minimum "
            f"{options.min_size} px per side"
        )
    region = (slice(y0, y0 + h), slice(x0, x0 + w))
    notes: list[str] = []
    _check_view(native[region], values[region], path, "image", black, notes)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return _to_tensor(values[region])


def _swap_case(found: str, other: str) -> str:
    """``other`` in the case style of ``found``: L -> R, Left -> Right, left -> right."""
    letters = found.lstrip("_")
    if letters.isupper():
        return other.upper()
    if letters[:1].isupper():
        head = other[: len(other) - len(other.lstrip("_"))]
        body = other.lstrip("_")
        return head + body[:1].upper() + body[1:]
    return other


def _ends_with_tag(text: str, tag: str) -> bool:
    """``text`` ends in ``tag`` (case-insensitive); a ``_``-tag needs something before it."""
    return text.lower().endswith(tag) and len(text) > len(tag) - (0 if tag.startswith("_") else 1)


def _partner_name(stem: str, suffix: str) -> tuple[str, str] | None:
    """For a stem naming a view, return (left_name, right_name) keeping its case.

    ``X_L``/``X_R``, ``X_left``/``X_right`` (:data:`VIEW_NAME_SUFFIXES`) and bare
    ``left``/``right`` (``edgedp synth`` output).
    """
    lower = stem.lower()
    for left_tag, right_tag in VIEW_NAME_SUFFIXES + (("left", "right"),):
        for tag, other in ((left_tag, right_tag), (right_tag, left_tag)):
            bare = not tag.startswith("_")
            if (lower == tag) if bare else _ends_with_tag(stem, tag):
                found = stem[len(stem) - len(tag):]
                base = stem[: len(stem) - len(tag)]
                names = (base + found + suffix, base + _swap_case(found, other) + suffix)
                return names if tag == left_tag else (names[1], names[0])
    return None


def _swap_file_token(name: str, side: str) -> str | None:
    """The partner's file name for a folder-tagged view: its ``pd_left`` / ``pd_right`` token
    (:data:`VIEW_FILE_TOKENS`) swapped; unchanged without one; None when the name carries the
    other side's token (a mislabelled file)."""
    lower = name.lower()
    for left_token, right_token in VIEW_FILE_TOKENS:
        own, other = (left_token, right_token) if side == "left" else (right_token, left_token)
        if other in lower:
            return None
        at = lower.find(own)
        if at >= 0:
            return name[:at] + _swap_case(name[at : at + len(own)], other) + name[at + len(own):]
    return name


def _partner_folder(path: Path) -> tuple[Path, Path] | None:
    """Folder layouts (:data:`VIEW_FOLDER_SUFFIXES`): DPDD ``test_l/source/X.png`` <->
    ``test_r/source/X.png``; Google 2019 ``raw_left_pd/<id>/result_pd_left_center.png`` <->
    ``raw_right_pd/<id>/result_pd_right_center.png``.  Only the parent and grandparent folders
    are looked at."""
    parts = path.parts
    for index in range(len(parts) - 2, max(len(parts) - 4, -1), -1):
        part = parts[index]
        for left_tag, right_tag in VIEW_FOLDER_SUFFIXES:
            for tag, other, side in ((left_tag, right_tag, "left"), (right_tag, left_tag, "right")):
                if not _ends_with_tag(part, tag):
                    continue
                swapped = part[: -len(tag)] + _swap_case(part[-len(tag):], other)
                name = _swap_file_token(parts[-1], side)
                if name is None:
                    return None
                partner = Path(*parts[:index], swapped, *parts[index + 1 : -1], name)
                return (path, partner) if side == "left" else (partner, path)
    return None


def _npz_holds_pair(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "left" in npz.files and "right" in npz.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _input_error(f"cannot read DP view {path}: {err}") from err


def view_pair(path: Path | str) -> tuple[Path, Path] | None:
    """The ``(left, right)`` paths that ``path``'s name or folders make it part of, without
    looking at the disk (None when they do not say which view it is)."""
    path = Path(path)
    # A pd_left / pd_right token names the view before any suffix does: Google's rig positions
    # give names like result_pd_left_left.png (left DP view of the left phone).
    if _file_token(path.stem) is not None:
        pair = _partner_folder(path)
        if pair is not None:
            return pair
    names = _partner_name(path.stem, path.suffix)
    if names is not None:
        return path.with_name(names[0]), path.with_name(names[1])
    return _partner_folder(path)


def _file_token(stem: str) -> str | None:
    lower = stem.lower()
    return next((t for pair in VIEW_FILE_TOKENS for t in pair if t in lower), None)


def find_pair(path: Path | str) -> tuple[Path, Path]:
    """Given one view, return ``(left, right)`` paths of its DP pair.

    Recognized names (case kept): ``X_L.ext`` / ``X_R.ext`` (DPDD style), ``X_left.ext`` /
    ``X_right.ext`` (also the Google capture app's ``X_left.pgm`` / ``X_right.pgm``),
    ``left.ext`` / ``right.ext`` (``edgedp synth`` output); else the folder layouts of DPDD
    (``<split>_l/source/X.ext`` / ``<split>_r/source/X.ext``) and of Google's 2019 dual-pixel
    dataset (``raw_left_pd/<id>/result_pd_left_<pos>.png`` / ``raw_right_pd/...``).  An
    ``.npz`` holding arrays ``left`` and ``right`` is its own partner: ``(path, path)``.

    Raises:
        InputError: the file does not exist, the name does not say which view it is, or the
            partner is missing.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ('001_left.png', '001_right.png'): _ = (folder / name).write_bytes(b'')
        >>> [p.name for p in find_pair(folder / '001_left.png')]
        ['001_left.png', '001_right.png']
    """
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise _input_error(f"DP view {path} {state}")
    if path.suffix.lower() == ".npz" and _npz_holds_pair(path):
        return path, path
    pair = view_pair(path)
    if pair is None:
        raise _input_error(
            f"cannot tell which DP view {path} is: expected a name ending in _L/_R or "
            "_left/_right, a <split>_l/<split>_r or left_pd/right_pd folder (or an .npz with "
            "arrays 'left' and 'right')"
        )
    for view, side in zip(pair, ("left", "right")):
        if not view.is_file():
            raise _input_error(f"the {side} view {view} for {path} is missing")
    return pair


@dataclass(frozen=True)
class Capture:
    """One DP capture to fit: a name (unique among the captures found together, usable as a
    folder name) and its two views (the same ``.npz`` twice for a pair stored in one file)."""

    name: str
    left: Path
    right: Path


#: Text files that list captures (one spec a line) for :func:`find_captures`.
LIST_EXTENSIONS = (".txt", ".lst")
#: Folder names that say nothing about a capture (left out of its name).
_GENERIC_FOLDERS = frozenset({"source", "", "."})


def find_captures(specs: Sequence[str | Path]) -> tuple[list[Capture], list[str]]:
    """Every DP capture that ``specs`` name, in order, each once: ``(captures, warnings)``.

    A spec is ``LEFT,RIGHT`` (two files; not checked here, reading them is), one view file
    (:func:`find_pair`), a folder (searched recursively, hidden folders skipped: every file
    that :func:`find_pair` recognizes as a left view with its partner present; the layouts are
    ``*_left``/``*_right`` and ``*_L``/``*_R`` files, ``left``/``right`` (``edgedp synth``),
    DPDD's ``<split>_l/source`` + ``<split>_r/source``, Google's capture app
    ``*_left.pgm``/``*_right.pgm`` and 2019 dataset ``raw_left_pd/`` + ``raw_right_pd/``), or
    a ``.txt`` file listing specs one a line (``#`` comments; relative paths are relative to
    the list's folder).  A view without its partner in a folder is skipped with a warning.

    Names (:func:`capture_names`): the left file's stem without its view tag, prefixed with
    parent folders only where that is needed to tell captures apart.

    Raises:
        InputError: a spec that is none of these, or no capture at all.
    """
    pairs: list[tuple[Path, Path]] = []
    notes: list[str] = []
    for spec in specs:
        _expand_spec(str(spec), None, pairs, notes, depth=0)
    unique = list(dict.fromkeys(pairs))
    if not unique:
        shown = ", ".join(str(s) for s in specs) or "(nothing given)"
        raise _input_error(
            f"no DP captures found in {shown}: expected LEFT,RIGHT pairs, folders of "
            "*_left/*_right (or *_L/*_R) files, DPDD or Google dual-pixel layouts, or a .txt list"
        )
    return [Capture(n, l, r) for n, (l, r) in zip(capture_names(unique), unique)], notes


def _expand_spec(spec: str, base: Path | None, pairs: list, notes: list[str], depth: int) -> None:
    def resolve(text: str) -> Path:
        p = Path(text.strip()).expanduser()
        return p if base is None or p.is_absolute() else base / p

    path = resolve(spec)
    if "," in spec and not path.exists():
        left, right = (resolve(p) for p in spec.split(",", 1))
        pairs.append((left, right))
        return
    if path.is_dir():
        found = _pairs_in_folder(path, notes)
        if not found:
            raise _input_error(
                f"capture folder {path}: no DP pairs (*_left/*_right or *_L/*_R files, "
                "<split>_l/<split>_r or left_pd/right_pd folders)"
            )
        pairs.extend(found)
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        if depth >= 4:
            raise _input_error(f"capture list {path}: lists nested more than 4 deep")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise _input_error(f"cannot read capture list {path}: {err}") from err
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line:
                _expand_spec(line, path.parent, pairs, notes, depth + 1)
    elif path.is_file():
        pairs.append(find_pair(path))
    else:
        raise _input_error(
            f"capture '{spec}': no such file or folder (give LEFT,RIGHT, a view, a folder of "
            "pairs or a .txt list of them)"
        )


def _pairs_in_folder(folder: Path, notes: list[str]) -> list[tuple[Path, Path]]:
    found: list[tuple[Path, Path]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS or name.startswith("."):
                continue
            if path.suffix.lower() == ".npz" and _npz_holds_pair(path):
                found.append((path, path))
                continue
            pair = view_pair(path)
            if pair is None:
                continue
            left, right = pair
            other = right if path == left else left
            if other.is_file():
                if path == left:
                    found.append(pair)
            else:
                side = "right" if path == left else "left"
                notes.append(f"{path}: no {side} view {other} beside it, skipped")
    return found


def _name_parts(left: Path) -> list[str]:
    """The words a capture's name may be built from, nearest first: the left file's stem
    without view tags, then its folders without view tags (generic ones left out)."""
    stem = left.stem
    token = _file_token(stem)
    if token is not None and _partner_folder(left) is not None:
        at = stem.lower().find(token)
        stem = stem[:at] + stem[at + len(token):]
    elif stem.lower() in ("left", "right"):
        stem = ""
    else:
        tag = next((t for pair in VIEW_NAME_SUFFIXES for t in pair if _ends_with_tag(stem, t)), None)
        if tag is not None:
            stem = stem[: -len(tag)]
    parts = [stem]
    for folder in reversed(left.parent.parts[-6:]):
        for left_tag, _ in VIEW_FOLDER_SUFFIXES:
            if _ends_with_tag(folder, left_tag):
                folder = folder[: -len(left_tag)]
                break
        parts.append(folder)
    cleaned = [_safe_name(p) for p in parts]
    return [p for p in cleaned if p and p.lower() not in _GENERIC_FOLDERS]


def _safe_name(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    text = re.sub(r"_{2,}", "_", text)
    return text.strip("_-.")


def capture_names(pairs: Sequence[tuple[Path, Path]]) -> list[str]:
    """Unique folder names for captures: the left view's stem without its view tag (``scene``
    for ``scene_left.png``; the folder for ``left.png``), prefixed with as many parent folders
    as it takes to tell captures apart (``<id>_result_center`` in Google's layout), then
    numbered (``-2``, ``-3``) if still equal.  Deterministic for the same list."""
    parts = [_name_parts(Path(left)) or ["capture"] for left, _ in pairs]
    depth = [1] * len(parts)

    def name(i: int) -> str:
        return "_".join(reversed(parts[i][: depth[i]]))

    while True:
        groups: dict[str, list[int]] = {}
        for i in range(len(parts)):
            groups.setdefault(name(i), []).append(i)
        grew = False
        for members in groups.values():
            if len(members) > 1:
                for i in members:
                    if depth[i] < len(parts[i]):
                        depth[i] += 1
                        grew = True
        if not grew:
            break
    seen: dict[str, int] = {}
    out = []
    for i in range(len(parts)):
        base = name(i)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×,]\s*(\d+)\s*$")


def parse_size(text: str, *, what: str = "size") -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``"1008x1344"`` -> ``(1008, 1344)``); also ``"H,W"``.

    Raises:
        InputError: not two positive integers; the message names ``what`` (e.g. "--crop").

    Example:
        >>> parse_size('1008x1344'), parse_size('37 X 53')
        ((1008, 1344), (37, 53))
    """
    match = _SIZE_RE.match(str(text))
    if match is None:
        raise _input_error(f"invalid {what} '{text}': expected HxW, e.g. 1008x1344")
    h, w = int(match.group(1)), int(match.group(2))
    if h < 1 or w < 1:
        raise _input_error(f"invalid {what} '{text}': expected HxW with positive sizes")
    return h, w


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def to_numpy_image(image: Tensor | np.ndarray) -> np.ndarray:
    """Tensor/array ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` -> ``(H, W)`` or ``(H, W, C)``.

    ``C = 1`` gives ``(H, W)``.  Tensors are detached and moved to the CPU.  The result is
    float (float32 unless the input was float64).
    """
    if isinstance(image, Tensor):
        array = image.detach().cpu().numpy()
    else:
        array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    elif array.ndim != 2:
        raise ValueError(f"expected an image (H, W) or (C, H, W), got shape {tuple(array.shape)}")
    if array.dtype != np.float64:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array)


@contextlib.contextmanager
def atomic_writer(path: Path | str, *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """A binary file handle whose content becomes ``path`` only when the ``with`` block ends
    without an exception: written to a temporary file beside ``path``, flushed to disk, then
    ``os.replace``-d into place (removed on failure), so ``path`` is never half-written.

    Raises:
        OutputError: ``path`` is a folder, exists (without ``overwrite``), its folder is missing
            or not writable.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise _output_error(f"output {path} is a folder")
    if path.exists() and not overwrite:
        raise _output_error(f"output {path} exists (use --overwrite)")
    if not folder.is_dir():
        raise _output_error(f"output folder {folder} does not exist (for {path.name})")
    temp = folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        # os.open with mode 0o666 lets the umask decide permissions, as for a plain open().
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise _output_error(f"cannot write to folder {folder} ({err.strerror or err})") from err
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise _output_error(f"cannot write {path} ({err.strerror or err})") from err
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _atomic_write(path: Path | str, data: bytes, overwrite: bool) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_writer`)."""
    with atomic_writer(path, overwrite=overwrite) as handle:
        handle.write(data)
    return Path(path)


def write_png16(
    path: Path | str, image: Tensor | np.ndarray, *, overwrite: bool = False, transfer: str = LINEAR
) -> Path:
    """Write a 16-bit PNG: ``value = round(clip(x, 0, 1) * 65535)``, linear by default.

    Args:
        path: target, must end in ``.png``.
        image: ``(H, W)``, ``(1, H, W)`` gray or ``(3, H, W)`` RGB (tensor or array, [0, 1]),
            linear light.
        overwrite: replace an existing file; otherwise an existing file is an OutputError.
        transfer: ``linear`` (values as given, no colour chunk) or ``srgb`` (encoded with the
            IEC 61966-2-1 curve after clipping, and tagged with an ``sRGB`` chunk so viewers and
            ``--transfer auto`` read it as sRGB).

    Raises:
        OutputError: the file exists, the folder is missing or not writable, wrong extension.
        ValueError: the image has NaNs or an unsupported shape (a programming error).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise _output_error(f"output {path} must end in .png")
    array = to_numpy_image(image)
    if array.ndim == 3 and array.shape[2] != 3:
        raise ValueError(f"write_png16 needs 1 or 3 channels, got {array.shape[2]}")
    if np.isnan(array).any():
        raise ValueError(f"image for {path} contains NaN")
    values = np.clip(array.astype(np.float64), 0.0, 1.0)
    if check_transfer(transfer, "transfer") == SRGB:
        values = linear_to_srgb(values)
    elif transfer != LINEAR:
        raise ValueError(f"write_png16 writes linear or srgb, not {transfer!r}")
    codes = np.rint(values * 65535.0).astype(np.uint16)
    if codes.ndim == 3:
        codes = cv2.cvtColor(codes, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", codes)
    if not ok:
        raise _output_error(f"cannot encode PNG for {path}")
    data = buffer.tobytes()
    if transfer == SRGB:
        data = png_with_srgb_chunk(data)
    return _atomic_write(path, data, overwrite)


def write_srgb_png8(path: Path | str, image: Tensor | np.ndarray, *, overwrite: bool = False) -> Path:
    """Write linear light as an 8-bit sRGB PNG (what cameras and DPDD store): ``code =
    round(255 * srgb(clip(x, 0, 1)))`` with the IEC 61966-2-1 curve, tagged with an ``sRGB``
    chunk.  ``image`` as for :func:`write_png16`."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise _output_error(f"output {path} must end in .png")
    array = to_numpy_image(image)
    if np.isnan(array).any():
        raise ValueError(f"image for {path} contains NaN")
    codes = np.rint(linear_to_srgb(np.clip(array.astype(np.float64), 0.0, 1.0)) * 255.0).astype(np.uint8)
    if codes.ndim == 3:
        codes = cv2.cvtColor(codes, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", codes)
    if not ok:
        raise _output_error(f"cannot encode PNG for {path}")
    return _atomic_write(path, png_with_srgb_chunk(buffer.tobytes()), overwrite)


def png_with_srgb_chunk(png: bytes, intent: int = 0) -> bytes:
    """``png`` with an ``sRGB`` chunk (rendering intent ``intent``, 0 = perceptual) right after
    its ``IHDR`` chunk, where the PNG specification wants colour chunks (before ``PLTE`` and
    ``IDAT``)."""
    if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("not a PNG stream starting with IHDR")
    end = 8 + 12 + int.from_bytes(png[8:12], "big")  # signature + length/type/CRC + IHDR data
    body = b"sRGB" + bytes([intent])
    chunk = (1).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return png[:end] + chunk + png[end:]


def write_png8(path: Path | str, rgb: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write an 8-bit PNG for display (figures, previews), atomically.

    Args:
        path: target, must end in ``.png``.
        rgb: ``uint8`` array ``(H, W, 3)`` in **RGB** order, or ``(H, W)`` gray.
        overwrite: replace an existing file; otherwise an existing file is an OutputError.

    Raises:
        OutputError: the file exists, the folder is missing or not writable, wrong extension.
        ValueError: not a uint8 ``(H, W)`` / ``(H, W, 3)`` array (a programming error).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise _output_error(f"output {path} must end in .png")
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"write_png8 needs uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise _output_error(f"cannot encode PNG for {path}")
    return _atomic_write(path, buffer.tobytes(), overwrite)


def write_npy(path: Path | str, array: Tensor | np.ndarray, *, overwrite: bool = False) -> Path:
    """Write an array (tensors are detached, moved to CPU) as ``.npy``, atomically.

    The file is written exactly at ``path`` (no ``.npy`` is appended).
    """
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    buffer = _io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return _atomic_write(path, buffer.getvalue(), overwrite)


def json_ready(obj: Any) -> Any:
    """``obj`` as plain JSON types, recursively: dataclasses -> dicts (keys as strings), tuples and
    sets -> lists, Paths -> strings, tensors/arrays -> lists, numpy scalars -> numbers.  Anything
    else is returned as is (``json.dumps`` rejects what it cannot write).

    Example:
        >>> import math
        >>> json_ready({'radii': torch.tensor([0.0, 1.5]), 'path': Path('a/b.png'), 'nan': math.nan})
        {'radii': [0.0, 1.5], 'path': 'a/b.png', 'nan': nan}
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_ready(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(json_ready(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Tensor):
        return json_ready(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_bytes(path: Path | str, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file beside it, then ``os.replace``);
    an existing file is an OutputError unless ``overwrite``."""
    return _atomic_write(path, data, overwrite)


def write_json(path: Path | str, obj: Any, *, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, atomically.

    Paths become strings, dataclasses dicts, arrays/tensors lists, numpy scalars numbers.
    Non-finite floats are written as ``NaN`` / ``Infinity`` (Python's json extension).
    """
    text = json.dumps(json_ready(obj), indent=2, ensure_ascii=False) + "\n"
    return _atomic_write(path, text.encode("utf-8"), overwrite)


def prepare_output_dir(path: Path | str) -> Path:
    """Create ``path`` (with parents) if needed and check that a file can be written into it.

    Raises:
        OutputError: it exists as a file, cannot be created, or is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise _output_error(f"output folder {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _output_error(f"cannot create output folder {path} ({err.strerror or err})") from err
    probe = path / f".edgedp-write-test.{uuid.uuid4().hex[:12]}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
    except OSError as err:
        reason = err.strerror or err
        raise _output_error(f"output folder {path} is not writable ({reason})") from err
    finally:
        probe.unlink(missing_ok=True)
    return path
