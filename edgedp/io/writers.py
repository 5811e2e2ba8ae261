"""Writing outputs: 16-bit / 8-bit PNG (linear or sRGB-encoded), ``.npy``, JSON (``json_ready``: NaN and
infinity as tokens), all atomic (``atomic_writer``: a temporary file renamed into place; never an existing
file unasked), and the output folder (``prepare_output_dir``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import json
import os
import uuid
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import cv2
import numpy as np
from torch import Tensor

from .atomic import atomic_file
from .transfer import LINEAR, SRGB, check_transfer, linear_to_srgb
from .images import PNG_SIGNATURE, output_error


__all__ = ["atomic_writer", "prepare_output_dir", "to_numpy_image", "json_ready", "write_bytes", "write_json", "write_npy", "write_png16", "write_png8", "write_srgb_png8"]


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
    ``os.replace``-d into place (removed on failure), so ``path`` is never half-written
    (:func:`edgedp_runtime.atomic.atomic_file`, the one atomic write of edgedp and the runtime;
    a full disk or a file-size limit is a one-line OutputError and leaves the old file).

    Raises:
        OutputError: ``path`` is a folder, exists (without ``overwrite``), its folder is missing
            or not writable.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise output_error(f"output {path} is a folder")
    if path.exists() and not overwrite:
        raise output_error(f"output {path} exists (use --overwrite)")
    if not folder.is_dir():
        raise output_error(f"output folder {folder} does not exist (for {path.name})")
    try:
        with atomic_file(path) as handle:
            yield handle
    except OSError as err:
        raise output_error(f"cannot write {path} ({err.strerror or err})") from err


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
        raise output_error(f"output {path} must end in .png")
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
        raise output_error(f"cannot encode PNG for {path}")
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
        raise output_error(f"output {path} must end in .png")
    array = to_numpy_image(image)
    if np.isnan(array).any():
        raise ValueError(f"image for {path} contains NaN")
    codes = np.rint(linear_to_srgb(np.clip(array.astype(np.float64), 0.0, 1.0)) * 255.0).astype(np.uint8)
    if codes.ndim == 3:
        codes = cv2.cvtColor(codes, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", codes)
    if not ok:
        raise output_error(f"cannot encode PNG for {path}")
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
        raise output_error(f"output {path} must end in .png")
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"write_png8 needs uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise output_error(f"cannot encode PNG for {path}")
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
        >>> import torch
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
        raise output_error(f"output folder {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(f"cannot create output folder {path} ({err.strerror or err})") from err
    probe = path / f".edgedp-write-test.{uuid.uuid4().hex[:12]}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
    except OSError as err:
        reason = err.strerror or err
        raise output_error(f"output folder {path} is not writable ({reason})") from err
    finally:
        probe.unlink(missing_ok=True)
    return path
