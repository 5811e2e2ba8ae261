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

Colour transfer (``ReadOptions.transfer``, :mod:`edgedp.io.transfer`): after normalization, values
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

import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedp_runtime.quiet import import_cv2

cv2 = import_cv2()  # OpenCV without its own log lines on corrupt files (edgedp_runtime.quiet)
import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, OutputError
from .transfer import AUTO, LINEAR, SRGB, check_transfer, srgb_to_linear


__all__ = ["FLAT_FIELD_BOX", "IMAGE_EXTENSIONS", "SATURATION_FRACTION", "SATURATION_WARN_FRACTION", "DPPair", "PairInfo", "ReadOptions", "detect_transfer", "png_colour_chunks", "parse_size", "read_dp_pair", "read_image", "read_normalized", "tiff_icc_profile"]


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def input_error(message: str) -> InputError:
    """An InputError whose message is one line (whitespace runs, newlines included, become one space)."""
    return InputError(_one_line(message))


def output_error(message: str) -> OutputError:
    """An OutputError whose message is one line."""
    return OutputError(_one_line(message))


def _bit_depth(array: np.ndarray, path: Path, role: str) -> int:
    if array.dtype == np.uint8:
        return 8
    if array.dtype == np.uint16:
        return 16
    if np.issubdtype(array.dtype, np.floating):
        return 32
    raise input_error(
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
    raise input_error(
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
                raise input_error(
                    f"{role} {path} has no array '{key}' (it holds: {', '.join(keys) or 'nothing'})"
                )
            if len(keys) == 1:
                return npz[keys[0]]
            if "left" in keys and "right" in keys:
                raise input_error(
                    f"{role} {path} holds a DP pair ('left', 'right'): read it with read_dp_pair"
                )
            raise input_error(
                f"{role} {path} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); "
                "expected one image or 'left' and 'right'"
            )
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise input_error(f"cannot read {role} {path}: {err}") from err


def _read(
    path: Path | str, role: str, key: str | None = None, notes: list[str] | None = None
) -> tuple[np.ndarray, int]:
    """Read one file -> ((H, W) or (H, W, 3) RGB array in its native dtype, bit depth).

    A dropped alpha channel is noted in ``notes`` (or, without it, a Python warning)."""
    path = Path(path)
    if not path.exists():
        raise input_error(f"{role} {path} does not exist")
    if not path.is_file():
        raise input_error(f"{role} {path} is not a file")
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise input_error(
            f"{role} {path} has unsupported extension '{path.suffix}' "
            f"(supported: {', '.join(IMAGE_EXTENSIONS)})"
        )
    if ext == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise input_error(f"cannot read {role} {path}: {err}") from err
        if not isinstance(array, np.ndarray):
            raise input_error(f"cannot read {role} {path}: not a single array")
        array = _array_to_hwc(array, path, role)
    elif ext == ".npz":
        array = _array_to_hwc(_load_npz(path, key, role), path, role)
    else:
        try:
            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:
            raise input_error(f"cannot read {role} {path}: {err}") from err
        if array is None:
            raise input_error(f"cannot read {role} {path}: corrupt or unsupported image data")
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
                raise input_error(f"{role} {path} has {channels} channels (expected 1 or 3)")
    bits = _bit_depth(array, path, role)
    if array.size == 0:
        raise input_error(f"{role} {path} is empty")
    if bits == 32 and not np.isfinite(array).all():
        raise input_error(f"{role} {path} contains NaN or infinite values")
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
            raise input_error(
                f"{role} {path} is an 8-bit image where 16-bit raw is expected "
                "(a black/white level was given)"
            )
        black = float(options.black_level or 0.0)
        if options.white_level is not None:
            white = float(options.white_level)
        elif bits == 32:
            raise input_error(
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
        raise input_error(f"crop {h}x{w} is larger than the image {path} ({h0}x{w0}, HxW)")
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
            raise input_error(
                f"{role} {path} has no signal: all values are at or below the black level {black:g}"
            )
        raise input_error(f"{role} {path} is all zero")
    top = native.max()
    fraction = float(np.count_nonzero(native == top)) / native.size
    if fraction >= SATURATION_FRACTION:
        raise input_error(
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
            raise input_error(
                f"{role} {frame_path} is an 8-bit image where 16-bit raw is expected"
            )
        if array.shape[:2] != size:
            raise input_error(
                f"{role} {frame_path} is {array.shape[0]}x{array.shape[1]} but the DP pair is "
                f"{size[0]}x{size[1]} (HxW, before cropping)"
            )
        frame_channels = 1 if array.ndim == 2 else array.shape[2]
        if frame_channels != channels:
            raise input_error(
                f"{role} {frame_path} has {frame_channels} channel(s) "
                f"but the DP pair has {channels}"
            )
        depths.append(bits)
        if depths[0] != bits:
            raise input_error(
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
            raise input_error(
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


def check_distinct_views(left: Path | str, right: Path | str) -> None:
    """A one-line InputError when ``left`` and ``right`` are the same file (also through another
    path or a link), except an ``.npz`` holding both views.  Why an error and not a warning: two
    identical views have zero DP disparity everywhere, so a fit silently says "in focus" and
    deblurs nothing; it is always a mistake on the command line (issue 17).

    Example:
        >>> import tempfile
        >>> view = Path(tempfile.mkdtemp()) / "a.png"; _ = view.write_bytes(b"x")
        >>> try:
        ...     check_distinct_views(view, view.parent / "." / "a.png")
        ... except InputError as err:
        ...     print(str(err).split(":")[0])
        left and right are the same file
    """
    left, right = Path(left), Path(right)
    if _view_key(left, "left") is not None and left.suffix.lower() == right.suffix.lower() == ".npz":
        return  # one .npz holding arrays 'left' and 'right'
    try:
        same = os.path.samefile(left, right)
    except OSError:
        return  # a missing file: reading it says so
    if same:
        raise input_error(f"left and right are the same file: {left} and {right} (give the two views of one DP capture)")


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
        raise input_error(f"cannot read {path}: {err.strerror or err}") from err


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
        raise input_error(f"cannot read {path}: {err.strerror or err}") from err
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
    left_raw, right_raw, bits, channels = _read_pair(left, right, notes)
    size = (int(left_raw.shape[0]), int(left_raw.shape[1]))

    left_v, black, white = _normalize(left_raw, bits, options, left, "left view")
    right_v, _, _ = _normalize(right_raw, bits, options, right, "right view")
    if bits == 8:
        notes.append(EIGHT_BIT_WARNING)
    transfer, reason = _pair_transfer(options, left, right, bits, notes)
    if transfer == SRGB:
        left_v, right_v = srgb_to_linear(left_v), srgb_to_linear(right_v)

    y0, x0, h, w = _crop_offsets(size, options.crop, left)
    if h < options.min_size or w < options.min_size:
        raise input_error(
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
    _check_pair(left_raw[region], right_raw[region], left_v, right_v, left, right, black, bits, options, notes)
    info = PairInfo(
        left_path=left,
        right_path=right,
        original_size=size,
        size=(h, w),
        bit_depth=bits,
        channels=channels,
        kind=_pair_kind(options, bits, channels),
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
    check_distinct_views(left, right)  # last: a file's own problem is named first
    return DPPair(left=_to_tensor(left_v), right=_to_tensor(right_v), info=info)


def _read_pair(left: Path, right: Path, notes: list[str]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Both views as read (step 1 of :func:`read_dp_pair`) and their bit depth and channel
    count; InputError unless they agree in size, channels and bit depth."""
    left_raw, left_bits = _read(left, "left view", _view_key(left, "left"), notes)
    right_raw, right_bits = _read(right, "right view", _view_key(right, "right"), notes)
    if left_raw.shape[:2] != right_raw.shape[:2]:
        raise input_error(
            f"left/right size mismatch: {left} is {left_raw.shape[0]}x{left_raw.shape[1]}, "
            f"{right} is {right_raw.shape[0]}x{right_raw.shape[1]} (HxW)"
        )
    left_c = 1 if left_raw.ndim == 2 else left_raw.shape[2]
    right_c = 1 if right_raw.ndim == 2 else right_raw.shape[2]
    if left_c != right_c:
        raise input_error(
            f"left/right channel mismatch: {left} has {left_c} channel(s), {right} has {right_c}"
        )
    if left_bits != right_bits:
        raise input_error(
            f"left/right bit depth mismatch: {left} is {left_bits}-bit, {right} is {right_bits}-bit"
        )
    return left_raw, right_raw, left_bits, left_c


def _check_pair(left_native: np.ndarray, right_native: np.ndarray, left_v: np.ndarray, right_v: np.ndarray,
                left: Path, right: Path, black: float | None, bits: int, options: ReadOptions, notes: list[str]) -> None:
    """Step 5 of :func:`read_dp_pair` on the cropped views (native and normalized): each view
    checked (:func:`_check_view`), and a note when float input lies outside [0, 1]."""
    for native, values, path, role in (
        (left_native, left_v, left, "left view"),
        (right_native, right_v, right, "right view"),
    ):
        _check_view(native, values, path, role, black, notes)
    if bits == 32 and not options.raw:
        lo = min(float(left_v.min()), float(right_v.min()))
        hi = max(float(left_v.max()), float(right_v.max()))
        if lo < 0.0 or hi > 1.0:
            notes.append(f"float input outside [0, 1]: values span {lo:g} .. {hi:g}")


def _pair_kind(options: ReadOptions, bits: int, channels: int) -> str:
    """:attr:`PairInfo.kind`: ``raw``, ``float``, ``rgb`` or ``gray``."""
    if options.raw:
        return "raw"
    if bits == 32:
        return "float"
    return "rgb" if channels == 3 else "gray"


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
        raise input_error(
            f"image {path} is {h}x{w} (HxW) after cropping, smaller than the minimum "
            f"{options.min_size} px per side"
        )
    region = (slice(y0, y0 + h), slice(x0, x0 + w))
    notes: list[str] = []
    _check_view(native[region], values[region], path, "image", black, notes)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return _to_tensor(values[region])


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
        raise input_error(f"invalid {what} '{text}': expected HxW, e.g. 1008x1344")
    h, w = int(match.group(1)), int(match.group(2))
    if h < 1 or w < 1:
        raise input_error(f"invalid {what} '{text}': expected HxW with positive sizes")
    return h, w
