"""I/O helpers of the device runtime: arrays, PNG files, input normalization, timing.

Runs on the device: imports only the standard library and numpy (OpenCV is used for PNG I/O when
importable, otherwise a tiny built-in zlib/struct PNG codec).  It never imports torch or edgedp.
The layout of the export folder (names, roles, versions) is :mod:`edgedp_runtime.schema`'s.

Conventions (from the project's CONVENTIONS.md): images are float32 in [0, 1], shape
``(1, C, H, W)`` inside the graphs; a DP pair is stacked ``[left, right]``; the defocus map is a
signed blur radius in pixels (``r > 0`` behind the focal plane).

User-caused problems raise :class:`RunnerError` with a one-line message; :func:`main_guard`
turns it into ``error: ...`` on stderr and exit code 2 (the CLI convention of edgedp).
"""

from __future__ import annotations

import os
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import EXIT_USER_ERROR, RunnerError
from .schema import SIDECAR_NAME


# --- shapes ----------------------------------------------------------------------------------
def check_shape(array: np.ndarray, expected: Any, what: str) -> None:
    """Check ``array.shape`` against a sidecar shape (ints fixed, strings/None/-1 free)."""
    if not isinstance(expected, (list, tuple)):
        return
    ok = len(array.shape) == len(expected) and all(
        not isinstance(e, int) or e < 0 or e == s for s, e in zip(array.shape, expected)
    )
    if not ok:
        want = "(" + ", ".join(str(e) for e in expected) + ")"
        raise RunnerError(f"{what}: shape {tuple(array.shape)} does not match the graph input {want}")


def load_npy(path: str | Path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise RunnerError(f"{path}: {what} not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise RunnerError(f"{path}: cannot read {what} as .npy: {err}")
    if not np.issubdtype(array.dtype, np.number):
        raise RunnerError(f"{path}: {what} is not numeric (dtype {array.dtype})")
    return np.ascontiguousarray(array, dtype=np.float32)


def pad_to_multiple(image: np.ndarray, multiple: int, mode: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Make the last two dims of ``image`` multiples of ``multiple``.

    ``mode='pad'`` extends by edge replication (the project's border convention) and returns
    the original ``(H, W)`` to crop back to; ``mode='crop'`` crops centrally.
    """
    h, w = image.shape[-2:]
    if mode == "crop":
        nh, nw = (h // multiple) * multiple, (w // multiple) * multiple
        if nh == 0 or nw == 0:
            raise RunnerError(f"input {h}x{w} is smaller than one {multiple}x{multiple} block; use --fit pad")
        return centre_crop(image, (nh, nw), "input"), (nh, nw)
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
        image = np.pad(image, pad, mode="edge")
    return np.ascontiguousarray(image), (h, w)


def normalize_raw(raw: np.ndarray, black: float, white: float | None, bit_depth: int) -> np.ndarray:
    """Raw codes to linear [0, 1]: ``v = (raw - black) / white``, clipped.

    ``white`` defaults to the container's full scale minus the black level
    (``2**bit_depth - 1 - black``), so a plain 16-bit PNG maps to ``raw / 65535``.
    """
    if white is None:
        white = float(2**bit_depth - 1) - black
    if white <= 0:
        raise RunnerError(f"--white-level must be > 0 (got {white})")
    return np.clip((raw.astype(np.float32) - np.float32(black)) / np.float32(white), 0.0, 1.0)


# --- PNG I/O ----------------------------------------------------------------------------------
def _cv2():
    if os.environ.get("EDGEDP_NO_CV2"):
        return None
    try:
        from .quiet import import_cv2  # noqa: PLC0415  (no OpenCV log lines before our error line)

        return import_cv2()
    except Exception:  # noqa: BLE001 - any broken OpenCV install falls back to the built-in codec
        return None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(array: np.ndarray) -> bytes:
    """Encode uint8/uint16 ``(H, W)`` grey or ``(H, W, 3)`` RGB as PNG (filter 0, zlib)."""
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16, got {array.dtype}")
    if array.ndim == 2:
        colour = 0
        channels = 1
    elif array.ndim == 3 and array.shape[2] == 3:
        colour = 2
        channels = 3
    else:
        raise ValueError(f"PNG needs (H, W) or (H, W, 3), got {array.shape}")
    h, w = array.shape[:2]
    depth = 16 if array.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(array.astype(">u2" if depth == 16 else np.uint8)).reshape(h, w * channels)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows.view(np.uint8).reshape(h, -1)], axis=1)
    header = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _paeth_row(line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    out = line.astype(np.int32)
    up = prev.astype(np.int32)
    for i in range(len(out)):
        a = out[i - bpp] if i >= bpp else 0
        b = up[i]
        c = up[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
        out[i] = (out[i] + pred) & 0xFF
    return out.astype(np.uint8)


def decode_png(data: bytes, name: str = "PNG") -> np.ndarray:
    """Decode a non-interlaced grey / grey+alpha / RGB / RGBA PNG of depth 8 or 16.

    Returns uint8 or uint16, ``(H, W)`` or ``(H, W, C)``.  Used only where OpenCV is absent.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise RunnerError(f"{name}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise RunnerError(f"{name}: PNG without IHDR")
    w, h, depth, colour, _, _, interlace = header
    channels = {0: 1, 4: 2, 2: 3, 6: 4}.get(colour)
    if channels is None or depth not in (8, 16) or interlace:
        raise RunnerError(
            f"{name}: unsupported PNG (colour type {colour}, depth {depth}, interlace {interlace}); "
            f"install OpenCV (pip install opencv-python-headless) to read it"
        )
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    except zlib.error as err:
        raise RunnerError(f"{name}: corrupt PNG data: {err}")
    bpp = channels * depth // 8
    stride = w * bpp
    if raw.size != h * (stride + 1):
        raise RunnerError(f"{name}: truncated PNG data")
    raw = raw.reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        ftype, line = raw[y, 0], raw[y, 1:]
        if ftype == 0:
            cur = line.copy()
        elif ftype == 1:  # Sub: running sum per byte lane, mod 256
            lanes = line.reshape(-1, bpp).astype(np.uint32)
            cur = (np.cumsum(lanes, axis=0) & 0xFF).astype(np.uint8).reshape(-1)
        elif ftype == 2:
            cur = (line.astype(np.uint16) + prev).astype(np.uint8)
        elif ftype == 3:  # Average: sequential
            cur = line.astype(np.int32)
            up = prev.astype(np.int32)
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                cur[i] = (cur[i] + ((a + up[i]) >> 1)) & 0xFF
            cur = cur.astype(np.uint8)
        elif ftype == 4:
            cur = _paeth_row(line, prev, bpp)
        else:
            raise RunnerError(f"{name}: bad PNG filter type {ftype}")
        out[y] = cur
        prev = cur
    if depth == 16:
        img = out.view(">u2").astype(np.uint16).reshape(h, w, channels)
    else:
        img = out.reshape(h, w, channels)
    return img[..., 0] if channels == 1 else img


def read_image(path: str | Path, what: str) -> tuple[np.ndarray, int]:
    """Read a single-channel image (PNG 8/16-bit, or .npy) as float32 ``(H, W)`` raw codes.

    Returns ``(image, bit_depth)``; ``bit_depth`` is 16/8 for PNGs and 0 for .npy (already
    float: no container scale; values taken as they are unless --white-level is given).
    Colour PNGs are reduced to their mean channel (DP pairs are single-channel raw views).
    """
    path = Path(path)
    if not path.is_file():
        raise RunnerError(f"{path}: {what} not found")
    if path.suffix.lower() == ".npy":
        array = load_npy(path, what)
        array = np.squeeze(array)
        if array.ndim != 2:
            raise RunnerError(f"{path}: {what} must be a single (H, W) image, got shape {tuple(np.load(path).shape)}")
        return array, 0
    if path.suffix.lower() != ".png":
        raise RunnerError(f"{path}: {what} must be a .png or .npy file")
    cv2 = _cv2()
    if cv2 is not None:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise RunnerError(f"{path}: cannot read {what} as PNG")
    else:
        try:
            array = decode_png(path.read_bytes(), str(path))
        except OSError as err:
            raise RunnerError(f"{path}: cannot read {what}: {err}")
    depth = 16 if array.dtype == np.uint16 else 8
    if array.ndim == 3:
        colour = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
        array = colour.astype(np.float32).mean(axis=2)
    return array.astype(np.float32), depth


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Refuse to overwrite without ``--overwrite``; the folder must exist or be creatable."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RunnerError(f"{path}: exists; pass --overwrite to replace it")
    if path.exists() and path.is_dir():
        raise RunnerError(f"{path}: is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunnerError(f"{path.parent}: cannot create output folder: {err.strerror or err}")
    if not os.access(path.parent, os.W_OK):
        raise RunnerError(f"{path.parent}: output folder is not writable")
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    """All or nothing (:func:`edgedp_runtime.atomic.atomic_write_bytes`, edgedp's writer too)."""
    from .atomic import atomic_write_bytes  # noqa: PLC0415

    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise RunnerError(f"{path}: cannot write: {err.strerror or err}")


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] → uint16 codes (clipped, rounded)."""
    return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 65535.0).astype(np.uint16)


def write_png16(path: str | Path, image: np.ndarray, overwrite: bool) -> Path:
    """Write a float [0, 1] image ``(H, W)`` (leading singleton dims dropped) as a 16-bit PNG."""
    image = np.asarray(image)
    image = image.reshape(image.shape[-2:]) if image.size == image.shape[-2] * image.shape[-1] else image
    if image.ndim != 2:
        raise RunnerError(f"{path}: expected a single-channel image, got shape {image.shape}")
    path = check_writable(path, overwrite)
    _write_bytes(path, _encode(to_uint16(image)))
    return path


def write_png8_rgb(path: str | Path, rgb: np.ndarray, overwrite: bool) -> Path:
    path = check_writable(path, overwrite)
    _write_bytes(path, _encode(np.asarray(rgb, np.uint8)))
    return path


def _encode(array: np.ndarray) -> bytes:
    cv2 = _cv2()
    if cv2 is not None:
        if array.ndim == 3:
            array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
        ok, buffer = cv2.imencode(".png", array)
        if ok:
            return buffer.tobytes()
    return encode_png(array)


def write_npy(path: str | Path, array: np.ndarray, overwrite: bool) -> Path:
    path = check_writable(path, overwrite)
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32))
    _write_bytes(path, buffer.getvalue())
    return path


def colorize_defocus(defocus: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Signed defocus ``(H, W)`` → RGB uint8 with a diverging map (blue < 0, white 0, red > 0).

    ``limit`` is the radius that saturates the colours (default: max |defocus|).
    """
    d = np.asarray(defocus, np.float32)
    if limit is None or limit <= 0:
        limit = float(np.max(np.abs(d))) or 1.0
    t = np.clip(d / limit, -1.0, 1.0)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    r = 1.0 - neg * 0.8
    g = 1.0 - 0.8 * (pos + neg)
    b = 1.0 - pos * 0.8
    rgb = np.stack([r, g, b], axis=-1)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


# --- timing and CLI glue ------------------------------------------------------------------------
def timed(fn: Callable[[], Any], repeat: int, label: str) -> Any:
    """Call ``fn`` ``repeat`` times (>= 1), print per-call times, return the last result."""
    if repeat < 1:
        raise RunnerError(f"--repeat must be >= 1 (got {repeat})")
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    ms = [t * 1000 for t in times]
    if repeat == 1:
        print(f"time {label}: {ms[0]:.1f} ms")
    else:
        rest = ms[1:]
        print(
            f"time {label}: first {ms[0]:.1f} ms, then mean {sum(rest) / len(rest):.1f} ms, "
            f"min {min(rest):.1f} ms over {len(rest)} calls"
        )
    return result


def sweep_values(radii: list[float], n: int) -> list[float]:
    """``n`` focus positions spread evenly across the scene's radii range."""
    if n < 1:
        raise RunnerError(f"--sweep must be >= 1 (got {n})")
    if not radii:
        raise RunnerError(f"{SIDECAR_NAME}: no 'radii' in the sidecar; pass --focus instead of --sweep")
    lo, hi = min(radii), max(radii)
    if n == 1:
        return [(lo + hi) / 2.0]
    return [float(v) for v in np.linspace(lo, hi, n)]


def focus_tag(value: float) -> str:
    """File-name-safe text for a focus value (``-1.5`` → ``m1.50``)."""
    return ("m" if value < 0 else "") + f"{abs(value):.2f}"


def main_guard(fn: Callable[[], int]) -> int:
    """Run ``fn``; turn :class:`RunnerError` into ``error: ...`` on stderr and exit code 2."""
    try:
        return fn()
    except RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def parse_crop(text: str) -> tuple[int, int]:
    """``"HxW"`` -> ``(H, W)``, both positive."""
    parts = str(text).lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise RunnerError(f"--crop {text!r}: expected HxW, e.g. 1008x1344")
    if h < 1 or w < 1:
        raise RunnerError(f"--crop {text}: both sides must be >= 1")
    return h, w


def centre_crop(image: np.ndarray, size: tuple[int, int] | None, what: str) -> np.ndarray:
    """Centred crop of the last two dims at offsets ``((H0 - H) // 2, (W0 - W) // 2)`` (edgedp.io.images)."""
    if size is None:
        return image
    h0, w0 = image.shape[-2:]
    h, w = size
    if h > h0 or w > w0:
        raise RunnerError(f"--crop {h}x{w} is larger than {what} ({h0}x{w0}, HxW)")
    y0, x0 = (h0 - h) // 2, (w0 - w) // 2
    return np.ascontiguousarray(image[..., y0 : y0 + h, x0 : x0 + w])


def read_linear(path, what: str, black: float, white: float | None) -> np.ndarray:
    """One view as float32 ``(raw - black) / white``, UNCLIPPED (edgedp's raw mode: noise below
    the black level is real signal statistics).  ``white`` defaults to ``2**bits - 1`` of a PNG
    (edgedp.io.images's default) and to 1 for .npy (taken as linear)."""
    raw, depth = read_image(path, what)
    if depth == 8 and (black > 0 or white is not None):
        # edgedp's raw mode: levels such as 1024 / 16383 only make sense for 16-bit sensor data
        raise RunnerError(f"{path}: {what} is an 8-bit image where 16-bit raw is expected (black/white levels given)")
    if not np.isfinite(raw).all():
        raise RunnerError(f"{path}: {what} holds NaN or infinite values")
    if white is None:
        white = float(2**depth - 1) if depth else 1.0
    if white <= 0:
        raise RunnerError(f"--white-level must be > 0 (got {white})")
    return (raw - np.float32(black)) / np.float32(white)
