"""Shared helpers for the device-side runners ``run_onnx.py`` and ``run_trt.py``.

Runs on the device: imports only the standard library and numpy (OpenCV is used for PNG I/O when
importable, otherwise a tiny built-in zlib/struct PNG codec).  It must never import torch or
edgedp.

Everything that knows the layout of the export folder written by ``edgedp export`` lives here
(``load_export`` / ``ExportInfo``): sidecar name, format name and version, graph keys and file
names.  If the exporter changes a name, change it here only.

Conventions (from the project's CONVENTIONS.md): images are float32 in [0, 1], shape
``(1, C, H, W)`` inside the graphs; a DP pair is stacked ``[left, right]``; the defocus map is a
signed blur radius in pixels (``r > 0`` behind the focal plane).

User-caused problems raise :class:`RunnerError` with a one-line message; :func:`main_guard`
turns it into ``error: ...`` on stderr and exit code 2 (the CLI convention of edgedp).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# --- schema of the export folder (keep every name here) -------------------------------------
SIDECAR_NAME = "export.json"
FORMAT_NAME = "edgedp-export"
SUPPORTED_FORMAT_VERSIONS = (1,)
GRAPH_NAMES = ("render", "refocus", "gd")
DEFAULT_FILES = {"render": "render", "refocus": "refocus", "gd": "gd"}  # stem; + .onnx / .engine
DEFAULT_MULTIPLE_OF = 16

EXIT_USER_ERROR = 2


class RunnerError(Exception):
    """A user-caused problem (missing file, bad sidecar, bad input shape, unwritable output)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


# --- sidecar ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphInfo:
    """One graph of the export: ``name`` (render/refocus/gd), ``entry`` (its sidecar dict)."""

    name: str
    entry: dict
    folder: Path

    def file(self, suffix: str) -> Path:
        """Path of the graph's file with ``suffix`` (``.onnx`` or ``.engine``).

        ``.onnx`` uses the sidecar's ``file``; an engine sits beside it with the same stem
        (or the sidecar's ``engine`` key, where the exporter writes one)."""
        onnx_name = str(self.entry.get("file") or DEFAULT_FILES[self.name] + ".onnx")
        if suffix == ".onnx":
            name = onnx_name
        else:
            name = str(self.entry.get("engine") or Path(onnx_name).stem + suffix)
        return self.folder / name

    @property
    def inputs(self) -> dict:
        return dict(self.entry.get("inputs") or {})

    @property
    def outputs(self) -> dict:
        return dict(self.entry.get("outputs") or {})

    @property
    def test_input(self) -> Path | None:
        name = self.entry.get("test_input")
        return self.folder / str(name) if name else None

    @property
    def multiple_of(self) -> int:
        value = self.entry.get("multiple_of", DEFAULT_MULTIPLE_OF)
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise RunnerError(f"{SIDECAR_NAME}: graphs.{self.name}.multiple_of is not an integer: {value!r}")
        if value < 1:
            raise RunnerError(f"{SIDECAR_NAME}: graphs.{self.name}.multiple_of must be >= 1, got {value}")
        return value


@dataclass(frozen=True)
class ExportInfo:
    """The validated sidecar of an export folder."""

    folder: Path
    data: dict
    graphs: dict = field(default_factory=dict)

    @property
    def height(self) -> int | None:
        return _opt_int(self.data.get("height"))

    @property
    def width(self) -> int | None:
        return _opt_int(self.data.get("width"))

    @property
    def layers(self) -> int | None:
        return _opt_int(self.data.get("layers"))

    @property
    def radii(self) -> list[float]:
        radii = self.data.get("radii") or []
        try:
            return [float(r) for r in radii]
        except (TypeError, ValueError):
            raise RunnerError(f"{SIDECAR_NAME}: 'radii' must be a list of numbers")

    @property
    def scene_id(self) -> str:
        return str(self.data.get("scene_id", "?"))

    def graph(self, name: str) -> GraphInfo:
        """The graph ``name``; a one-line error if the export does not contain it."""
        if name not in self.graphs:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise RunnerError(
                f"{self.folder / SIDECAR_NAME}: this export has no '{name}' graph (graphs: {have}); "
                f"re-export with it"
            )
        return self.graphs[name]


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def load_export(folder: str | Path) -> ExportInfo:
    """Read and validate ``folder/export.json``; one-line :class:`RunnerError` on any problem."""
    folder = Path(folder)
    if not folder.exists():
        raise RunnerError(f"{folder}: export folder not found")
    if not folder.is_dir():
        raise RunnerError(f"{folder}: not a folder (pass the folder written by 'edgedp export')")
    path = folder / SIDECAR_NAME
    if not path.is_file():
        raise RunnerError(f"{path}: sidecar not found (is {folder} an 'edgedp export' folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise RunnerError(f"{path}: cannot read: {err}")
    except json.JSONDecodeError as err:
        raise RunnerError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})")
    if not isinstance(data, dict):
        raise RunnerError(f"{path}: expected a JSON object at the top level")
    fmt = data.get("format")
    if fmt != FORMAT_NAME:
        raise RunnerError(f"{path}: format is {fmt!r}, expected {FORMAT_NAME!r}")
    version = data.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise RunnerError(
            f"{path}: format_version {version!r} is not supported by this runner (supported: {supported}); "
            f"use the export/ runners from the same edgedp version"
        )
    graphs_raw = data.get("graphs")
    if not isinstance(graphs_raw, dict):
        raise RunnerError(f"{path}: 'graphs' must be an object")
    graphs = {}
    for name, entry in graphs_raw.items():
        if name not in GRAPH_NAMES or entry is None:
            continue  # unknown graphs from a newer exporter are ignored
        if not isinstance(entry, dict):
            raise RunnerError(f"{path}: graphs.{name} must be an object")
        graphs[name] = GraphInfo(name=name, entry=entry, folder=folder)
    return ExportInfo(folder=folder, data=data, graphs=graphs)


def graph_file(graph: GraphInfo, suffix: str, hint: str) -> Path:
    """The graph's file, which must exist (``hint`` says how to make it)."""
    path = graph.file(suffix)
    if not path.is_file():
        raise RunnerError(f"{path}: {graph.name} {suffix[1:]} file not found; {hint}")
    return path


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
        import cv2  # noqa: PLC0415

        return cv2
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
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
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


# --- the shared command driver (both runners) ---------------------------------------------------
# A backend turns a graph into a callable: ``backend.load(graph) -> Model`` where ``Model`` has
# ``input_names``, ``output_names`` and ``__call__(feeds: dict[str, np.ndarray]) -> dict``.
# Roles map the runner's meaning to the graph's tensor names; names in the sidecar win, the
# defaults below are what ``edgedp export`` writes.
ROLES = {
    "render": {"inputs": (("latent",),), "outputs": (("left",), ("right",), ("allinfocus",))},
    "refocus": {"inputs": (("image",), ("focus",), ("aperture",)), "outputs": (("refocused", "image"),)},
    "gd": {"inputs": (("pair",),), "outputs": (("alphas",), ("defocus",))},
}


def resolve_names(graph: GraphInfo, kind: str, actual: list[str]) -> list[str]:
    """Tensor names for the roles of ``graph`` (``kind`` = inputs/outputs).

    Each role accepts a few names (first found wins); if any role is not found by name the
    graph's tensors are taken in the documented order (so a renamed tensor still works)."""
    roles = ROLES[graph.name][kind]
    found = [next((a for a in aliases if a in actual), None) for aliases in roles]
    if all(found):
        return found
    if len(actual) < len(roles):
        expected = [aliases[0] for aliases in roles]
        raise RunnerError(
            f"{graph.name}: graph has {kind} {actual}, expected {expected}; is this an edgedp export?"
        )
    return list(actual[: len(roles)])


def add_common_args(parser, what: str) -> None:
    parser.add_argument("export", help="export folder written by 'edgedp export' (holds export.json)")
    parser.add_argument("-o", "--out", default="edgedp-run", help="output folder (default: ./edgedp-run)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--repeat", type=int, default=1, help=f"run each {what} call N times and print timings")


def build_parser(prog: str, doc: str, backend_args: Callable) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{render,refocus,predict,instant}")
    sub.required = True

    p = sub.add_parser("render", help="re-render the fitted scene: left/right/allinfocus 16-bit PNGs")
    add_common_args(p, "render")
    p.add_argument("--latent", help="latent map .npy (1, L, H, W); default: the export's test input")
    p.add_argument("--npy", action="store_true", help="also write the unclipped float outputs as .npy")
    backend_args(p)

    p = sub.add_parser("refocus", help="synthetic refocus of the all-in-focus image")
    add_common_args(p, "refocus")
    p.add_argument("--focus", type=float, help="focus position: signed blur radius in px that becomes sharp")
    p.add_argument("--aperture", type=float, default=1.0, help="aperture scale (1 = as captured; default 1)")
    p.add_argument("--sweep", type=int, help="write N focus values across the scene's radii range instead of --focus")
    p.add_argument("--image", help="all-in-focus image (.npy or 16-bit PNG); default: the export's test input")
    p.add_argument("--npy", action="store_true", help="also write the unclipped float outputs as .npy")
    backend_args(p)

    p = sub.add_parser("predict", help="predict a defocus map from a new DP pair with G_D")
    add_common_args(p, "predict")
    p.add_argument("left", help="left view: 16-bit PNG or .npy")
    p.add_argument("right", help="right view: 16-bit PNG or .npy")
    p.add_argument("--black-level", type=float, default=0.0, help="raw black level (default 0)")
    p.add_argument(
        "--white-level", type=float, default=None,
        help="v = (raw - black) / white; default: full scale - black (65535 for 16-bit PNG, 1 for .npy)",
    )
    p.add_argument(
        "--fit", choices=("pad", "crop"), default="pad",
        help="make H, W multiples of the graph's multiple_of by edge padding (then cropped back) or central crop",
    )
    p.add_argument("--limit", type=float, default=None, help="radius (px) that saturates defocus.png colours")
    p.add_argument("--save-alphas", action="store_true", help="also write alphas.npy (1, L, H, W)")
    backend_args(p)

    p = sub.add_parser(
        "instant", help="defocus map and quick all-in-focus image of a new DP pair (profile export; instant.py)"
    )
    add_common_args(p, "instant")
    p.add_argument("left", help="left view: 16-bit PNG or .npy")
    p.add_argument("right", help="right view: 16-bit PNG or .npy")
    p.add_argument("--black-level", type=float, default=None, help="raw black level (default: the profile's, else 0)")
    p.add_argument(
        "--white-level", type=float, default=None,
        help="v = (raw - black) / white, unclipped; default: the profile's, else 2**bits - 1 (1 for .npy)",
    )
    p.add_argument(
        "--flat-field", nargs=2, metavar=("WHITE_LEFT", "WHITE_RIGHT"), default=None,
        help="white-sheet frames: right view *= box101(WL - black) / box101(WR - black) (default: the profile's)",
    )
    p.add_argument("--no-flat-field", action="store_true", help="ignore the profile's flat-field frames")
    p.add_argument("--crop", default=None, help="centred crop HxW (e.g. 1008x1344) after the flat field")
    p.add_argument("--limit", type=float, default=None, help="radius (px) that saturates defocus.png colours")
    p.add_argument("--npy", action="store_true", help="also write the unclipped all-in-focus image as allinfocus.npy")
    backend_args(p)
    return parser


def _scalar(value: float) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def cmd_render(args, info: ExportInfo, backend) -> int:
    graph = info.graph("render")
    model = backend.load(graph)
    (latent_name,) = resolve_names(graph, "inputs", model.input_names)
    out_names = resolve_names(graph, "outputs", model.output_names)
    source = Path(args.latent) if args.latent else graph.test_input
    if source is None:
        raise RunnerError("render: the sidecar names no test input; pass --latent FILE.npy")
    latent = load_npy(source, "latent map")
    check_shape(latent, graph.inputs.get(latent_name, graph.inputs.get("latent")), str(source))
    out = Path(args.out)
    targets = [out / f"{role[0]}.png" for role in ROLES["render"]["outputs"]]
    check_targets(targets, args)
    result = timed(lambda: model({latent_name: latent}), args.repeat, "render")
    for name, target in zip(out_names, targets):
        write_result(target, result[name], args)
    return 0


def check_targets(targets: list[Path], args) -> None:
    """Refuse (one line) before any work if an output PNG (or its .npy with --npy) exists."""
    for t in targets:
        check_writable(t, args.overwrite)
        if args.npy:
            check_writable(t.with_suffix(".npy"), args.overwrite)


def write_result(target: Path, array, args) -> None:
    """Write one output as a 16-bit PNG, and as .npy (unclipped) with --npy."""
    write_png16(target, array, args.overwrite)
    print(f"wrote {target}")
    if args.npy:
        print(f"wrote {write_npy(target.with_suffix('.npy'), array, args.overwrite)}")


def cmd_refocus(args, info: ExportInfo, backend) -> int:
    graph = info.graph("refocus")
    if (args.focus is None) == (args.sweep is None):
        raise RunnerError("refocus: pass exactly one of --focus F or --sweep N")
    values = [args.focus] if args.sweep is None else sweep_values(info.radii, args.sweep)
    model = backend.load(graph)
    image_name, focus_name, aperture_name = resolve_names(graph, "inputs", model.input_names)
    (out_name,) = resolve_names(graph, "outputs", model.output_names)
    source = Path(args.image) if args.image else graph.test_input
    if source is None:
        raise RunnerError("refocus: the sidecar names no test input; pass --image FILE")
    if source.suffix.lower() == ".png":
        raw, depth = read_image(source, "all-in-focus image")
        image = normalize_raw(raw, 0.0, None, depth)[None, None]
    else:
        image = load_npy(source, "all-in-focus image")
        if image.ndim == 2:
            image = image[None, None]
    check_shape(image, graph.inputs.get(image_name, graph.inputs.get("image")), str(source))
    out = Path(args.out)
    ap = focus_tag(args.aperture)
    if args.sweep is None:
        targets = [out / f"refocus_f{focus_tag(v)}_a{ap}.png" for v in values]
    else:
        targets = [out / f"sweep_{i:02d}_f{focus_tag(v)}_a{ap}.png" for i, v in enumerate(values)]
    check_targets(targets, args)
    for value, target in zip(values, targets):
        feeds = {image_name: image, focus_name: _scalar(value), aperture_name: _scalar(args.aperture)}
        result = timed(lambda: model(feeds), args.repeat, f"refocus focus={value:g} aperture={args.aperture:g}")
        write_result(target, result[out_name], args)
    return 0


def cmd_predict(args, info: ExportInfo, backend) -> int:
    graph = info.graph("gd")
    multiple = graph.multiple_of
    views = []
    for path, side in ((args.left, "left view"), (args.right, "right view")):
        raw, depth = read_image(path, side)
        white = args.white_level
        if depth == 0 and white is None:
            white = 1.0 - args.black_level  # .npy: already linear
        views.append(normalize_raw(raw, args.black_level, white, max(depth, 1) if depth else 1))
    if views[0].shape != views[1].shape:
        raise RunnerError(f"{args.right}: right view is {views[1].shape}, left view is {views[0].shape}")
    pair = np.stack(views)[None].astype(np.float32)  # (1, 2, H, W), [left, right]
    pair, (h, w) = pad_to_multiple(pair, multiple, args.fit)
    out = Path(args.out)
    targets = [out / "defocus.npy", out / "defocus.png"] + ([out / "alphas.npy"] if args.save_alphas else [])
    for t in targets:
        check_writable(t, args.overwrite)
    model = backend.load(graph, input_shape=pair.shape)
    (pair_name,) = resolve_names(graph, "inputs", model.input_names)
    alphas_name, defocus_name = resolve_names(graph, "outputs", model.output_names)
    check_shape(pair, graph.inputs.get(pair_name, graph.inputs.get("pair")), "DP pair")
    result = timed(lambda: model({pair_name: pair}), args.repeat, f"predict {pair.shape[2]}x{pair.shape[3]}")
    defocus = np.asarray(result[defocus_name], np.float32)[..., :h, :w]
    write_npy(targets[0], defocus, args.overwrite)
    write_png8_rgb(targets[1], colorize_defocus(defocus[0, 0], args.limit), args.overwrite)
    if args.save_alphas:
        write_npy(targets[2], np.asarray(result[alphas_name], np.float32)[..., :h, :w], args.overwrite)
    print(
        f"defocus: {defocus.shape[2]}x{defocus.shape[3]} px, min {defocus.min():.3f}, "
        f"max {defocus.max():.3f}, mean {defocus.mean():.3f} (signed blur radius, px)"
    )
    for t in targets:
        print(f"wrote {t}")
    return 0


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
    """Centred crop of the last two dims at offsets ``((H0 - H) // 2, (W0 - W) // 2)`` (edgedp.io)."""
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
    (edgedp.io's default) and to 1 for .npy (taken as linear)."""
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


def instant_inputs(args, profile_input: dict, folder: Path) -> tuple[np.ndarray, str]:
    """Read, normalize, flat-field correct and crop the pair of ``instant``; returns views
    (2, H, W) float32 and a one-line description of the settings used.  Flags win over the
    profile's input settings (``export.json`` ``profile.input``)."""
    black = args.black_level if args.black_level is not None else profile_input.get("black_level")
    black = float(black) if black is not None else 0.0
    white = args.white_level if args.white_level is not None else profile_input.get("white_level")
    white = float(white) if white is not None else None
    crop = parse_crop(args.crop) if args.crop else None
    left = read_linear(args.left, "left view", black, white)
    right = read_linear(args.right, "right view", black, white)
    if left.shape != right.shape:
        raise RunnerError(
            f"left/right size mismatch: {args.left} is {left.shape[0]}x{left.shape[1]}, "
            f"{args.right} is {right.shape[0]}x{right.shape[1]} (HxW)"
        )
    frames, origin = None, "flag"
    if args.flat_field:
        frames = [Path(p) for p in args.flat_field]
    elif profile_input.get("flat_field") and not args.no_flat_field:
        # The profile names the frames it was tuned with: as given, else beside the export.
        frames, origin = [], "profile"
        for name in profile_input["flat_field"]:
            p = Path(name)
            frames.append(p if p.is_file() or p.is_absolute() else folder / p.name)
        missing = [p for p in frames if not p.is_file()]
        if missing:
            raise RunnerError(
                f"{missing[0]}: flat-field frame named by the profile not found; pass --flat-field "
                f"WHITE_LEFT WHITE_RIGHT or --no-flat-field"
            )
    if frames is not None:
        import instant  # noqa: PLC0415  (numpy only, beside this file)

        white_frames = []
        for p, side in zip(frames, ("left", "right")):
            raw, _ = read_image(p, f"flat-field {side} frame")
            if raw.shape != left.shape:
                raise RunnerError(
                    f"{p}: flat-field {side} frame is {raw.shape[0]}x{raw.shape[1]} but the DP pair is "
                    f"{left.shape[0]}x{left.shape[1]} (HxW, before cropping)"
                )
            white_frames.append(raw)
        gain = instant.flat_field_gain(white_frames[0], white_frames[1], black)
        right = (right * gain).astype(np.float32)
    views = centre_crop(np.stack([left, right]), crop, str(args.left))
    # The left/right gain edgedp tune measured holds for captures read as it read them: with the
    # profile's own flat field (or none when it had none); another flat field replaces it.
    view_gain = profile_input.get("view_gain")
    profile_frames = profile_input.get("flat_field")
    same_flat = (frames is None and not profile_frames) or origin == "profile" or (
        frames is not None and profile_frames and [str(p) for p in frames] == [str(p) for p in profile_frames]
    )
    gain_note = ""
    if view_gain and same_flat:
        import instant  # noqa: PLC0415

        views[1] *= instant.view_gain_map(view_gain.get("coefficients", []), views.shape[1], views.shape[2])
        gain_note = ", profile view gain"
    text = (
        f"black {black:g}, white {'2**bits-1' if white is None else format(white, 'g')}, flat field "
        f"{'none' if frames is None else ' '.join(str(p) for p in frames) + f' ({origin})'}, "
        f"{views.shape[1]}x{views.shape[2]} px{gain_note}"
    )
    return views, text


def cmd_instant(args, info: ExportInfo, backend) -> int:
    import instant  # noqa: PLC0415  (numpy only, beside this file)

    t0 = time.perf_counter()
    inst = instant.load_instant(info.folder)
    out = Path(args.out)
    targets = {name: out / name for name in ("allinfocus.png", "defocus.npy", "defocus.png")}
    if args.npy:
        targets["allinfocus.npy"] = out / "allinfocus.npy"
    for t in targets.values():
        check_writable(t, args.overwrite)
    views, settings = instant_inputs(args, inst.inputs, info.folder)
    print(f"input: {settings}")
    if (info.height, info.width) != views.shape[1:]:
        print(
            f"note: the profile was tuned on {info.height}x{info.width} captures, this one is "
            f"{views.shape[1]}x{views.shape[2]} (fine for a crop of the same sensor)", file=sys.stderr,
        )
    t1 = time.perf_counter()
    graph = info.graph("gd")
    multiple = graph.multiple_of
    padded_shape = (1, 2) + tuple(-(-s // multiple) * multiple for s in views.shape[1:])
    model = backend.load(graph, input_shape=padded_shape)
    (pair_name,) = resolve_names(graph, "inputs", model.input_names)
    alphas_name, _ = resolve_names(graph, "outputs", model.output_names)
    t2 = time.perf_counter()
    seconds: dict = {}

    def once():
        s0 = time.perf_counter()
        alphas = instant.run_gd(model, views, multiple, (pair_name, alphas_name))
        seconds["gd"] = time.perf_counter() - s0
        return instant.instant_predict(views, alphas, inst.kernels, inst.radii, config=inst.config, timings=seconds)

    aif, defocus, _ = timed(once, args.repeat, "instant (gd + latent + fuse)")
    t3 = time.perf_counter()
    write_png16(targets["allinfocus.png"], aif, args.overwrite)
    write_npy(targets["defocus.npy"], defocus, args.overwrite)
    write_png8_rgb(targets["defocus.png"], colorize_defocus(defocus, args.limit), args.overwrite)
    if args.npy:
        write_npy(targets["allinfocus.npy"], aif, args.overwrite)
    t4 = time.perf_counter()
    print(
        f"time read {1000 * (t1 - t0):.0f} ms, load {1000 * (t2 - t1):.0f} ms, gd {1000 * seconds['gd']:.0f} ms, "
        f"latent {1000 * seconds['latent']:.0f} ms, fuse {1000 * seconds['fuse']:.0f} ms, "
        f"write {1000 * (t4 - t3):.0f} ms, total {1000 * (t4 - t0):.0f} ms (latent reg {seconds['latent_reg']:.3g})"
    )
    print(
        f"defocus: {defocus.shape[0]}x{defocus.shape[1]} px, min {defocus.min():.3f}, max {defocus.max():.3f}, "
        f"mean {defocus.mean():.3f} (signed blur radius, px)"
    )
    for t in targets.values():
        print(f"wrote {t}")
    return 0


COMMANDS = {"render": cmd_render, "refocus": cmd_refocus, "predict": cmd_predict, "instant": cmd_instant}


def run_cli(argv, prog: str, doc: str, backend_args: Callable, make_backend: Callable) -> int:
    """Parse ``argv`` and run the subcommand with the backend from ``make_backend(args)``."""
    parser = build_parser(prog, doc, backend_args)
    args = parser.parse_args(argv)

    def go() -> int:
        info = load_export(args.export)
        print(f"export: {info.folder} (scene {info.scene_id}, {info.width}x{info.height}, {info.layers} layers)")
        backend = make_backend(args)
        return COMMANDS[args.command](args, info, backend)

    return main_guard(go)
